// Package node is kubecpr's view of one control-plane node on disk. Every
// path the tool reads or writes is a node path ("/etc/kubernetes/admin.conf")
// resolved under Root, so a rehearsal on a copy of a node runs exactly the
// code of the real run.
package node

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Well-known node paths of a kubeadm node.
const (
	KubernetesDir  = "/etc/kubernetes"
	DefaultPKIDir  = "/etc/kubernetes/pki"
	ManifestsDir   = "/etc/kubernetes/manifests"
	KubeletDir     = "/var/lib/kubelet"
	KubeletPKIDir  = "/var/lib/kubelet/pki"
	KubeletConfig  = "/var/lib/kubelet/config.yaml"
	KubeletFlags   = "/var/lib/kubelet/kubeadm-flags.env"
	DefaultState   = "/var/lib/kubecpr"
	KubeletCurrent = "/var/lib/kubelet/pki/kubelet-client-current.pem"
)

// Node is a node tree under Root ("/" for the live node).
type Node struct {
	Root string
}

// New returns a node rooted at root; root must be an existing directory.
func New(root string) (*Node, error) {
	if root == "" {
		root = "/"
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("--root %s: %w", root, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("--root %s: %w", root, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("--root %s: not a directory", root)
	}
	return &Node{Root: abs}, nil
}

// Path maps a node path to the host path under Root. Relative node paths
// are taken from the node's "/". The result never escapes Root.
func (n *Node) Path(nodePath string) string {
	clean := path.Clean("/" + nodePath)
	return filepath.Join(n.Root, filepath.FromSlash(clean))
}

// NodePath maps a host path under Root back to its node path.
func (n *Node) NodePath(hostPath string) (string, error) {
	rel, err := filepath.Rel(n.Root, hostPath)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("%s is outside --root %s", hostPath, n.Root)
	}
	return "/" + filepath.ToSlash(rel), nil
}

// ReadFile reads a node path.
func (n *Node) ReadFile(nodePath string) ([]byte, error) {
	return os.ReadFile(n.Path(nodePath))
}

// Lstat stats a node path without following a final symlink.
func (n *Node) Lstat(nodePath string) (fs.FileInfo, error) {
	return os.Lstat(n.Path(n.Resolve(nodePath, true)))
}

// Exists reports whether the node path exists (a dangling symlink counts).
func (n *Node) Exists(nodePath string) bool {
	_, err := os.Lstat(n.Path(nodePath))
	return err == nil
}

// Resolve follows symlinks in a node path the way the node's kernel would,
// with absolute link targets taken relative to Root (the kubelet writes
// kubelet-client-current.pem -> /var/lib/kubelet/pki/kubelet-client-....pem).
// With keepLast the final component is not followed.
func (n *Node) Resolve(nodePath string, keepLast bool) string {
	p := path.Clean("/" + nodePath)
	for i := 0; i < 40; i++ {
		changed := false
		parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
		cur := "/"
		for j, part := range parts {
			next := path.Join(cur, part)
			if keepLast && j == len(parts)-1 {
				cur = next
				break
			}
			target, err := os.Readlink(n.Path(next))
			if err != nil {
				cur = next
				continue
			}
			if !path.IsAbs(target) {
				target = path.Join(cur, target)
			}
			p = path.Clean(path.Join(append([]string{target}, parts[j+1:]...)...))
			changed = true
			break
		}
		if !changed {
			return cur
		}
	}
	return p
}

// ReadLink returns the verbatim target of a symlink at a node path.
func (n *Node) ReadLink(nodePath string) (string, error) {
	return os.Readlink(n.Path(nodePath))
}

// UserKubeconfigs lists the node paths of users' kubeconfigs that exist:
// /root/.kube/config and /home/*/.kube/config.
func (n *Node) UserKubeconfigs() []string {
	var out []string
	if n.Exists("/root/.kube/config") {
		out = append(out, "/root/.kube/config")
	}
	homes, _ := filepath.Glob(n.Path("/home/*/.kube/config"))
	for _, h := range homes {
		if p, err := n.NodePath(h); err == nil {
			out = append(out, p)
		}
	}
	return out
}
