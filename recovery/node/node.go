// Package node is kubecpr's view of one control-plane node on disk. Every
// path the tool reads or writes is a node path ("/etc/kubernetes/admin.conf")
// resolved under Root, so a rehearsal on a copy of a node runs exactly the
// code of the real run.
package node

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
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
	// The live node is a filesystem identity, not a spelling: a link to /
	// or a bind mount of it is the host's root, and every guard of the
	// live node (--now against the real clock, restarts, the recovery
	// server) must see it as such.
	if hostRoot, err := os.Stat("/"); err == nil && os.SameFile(st, hostRoot) {
		abs = "/"
	}
	return &Node{Root: abs}, nil
}

// Path maps a node path to its host path under Root, as the node's kernel
// would see it if Root were "/": every symlink in the directory components
// is followed with absolute targets and ".." clamped inside Root, so the
// result never leads outside Root. The last component is not followed: the
// result is the place to lstat, replace, rename or remove. To read a file,
// use ReadFile (which follows the last component inside Root too).
func (n *Node) Path(nodePath string) string {
	_, host, _ := ResolveIn(n.Root, nodePath, false)
	return host
}

// HostPath is Path with the last component followed as well: the host path
// of what a read of nodePath reaches.
func (n *Node) HostPath(nodePath string) string {
	_, host, _ := ResolveIn(n.Root, nodePath, true)
	return host
}

// NodePath maps a host path under Root back to its node path.
func (n *Node) NodePath(hostPath string) (string, error) {
	rel, err := filepath.Rel(n.Root, hostPath)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("%s is outside --root %s", hostPath, n.Root)
	}
	return "/" + filepath.ToSlash(rel), nil
}

// MaxFileSize bounds every file kubecpr reads from a node: certificates,
// keys, kubeconfigs and manifests are kilobytes. A link to /dev/zero or a
// huge file is refused instead of read until memory runs out.
const MaxFileSize = 16 << 20

// ReadFile reads a regular file at a node path, following symlinks inside
// Root. Anything else (a FIFO, a device, a directory) is refused without
// blocking, and so is a file over MaxFileSize.
func (n *Node) ReadFile(nodePath string) ([]byte, error) {
	return ReadRegular(n.HostPath(nodePath), nodePath)
}

// ReadRegular reads the regular file at host path p (already resolved:
// a symlink is not followed), naming it name in errors.
func ReadRegular(p, name string) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO must not wait for a writer.
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s: too many levels of symbolic links", name)
		}
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s): kubecpr reads certificates, keys and kubeconfigs only from regular files; replace it with the real file", name, describeMode(st.Mode()))
	}
	if st.Size() > MaxFileSize {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d a certificate, key or kubeconfig can be: check what it is", name, st.Size(), MaxFileSize)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("%s grew past %d bytes while being read", name, MaxFileSize)
	}
	return b, nil
}

func describeMode(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeDevice != 0, m&fs.ModeCharDevice != 0:
		return "a device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m.IsDir():
		return "a directory"
	}
	return m.String()
}

// Lstat stats a node path without following a final symlink.
func (n *Node) Lstat(nodePath string) (fs.FileInfo, error) {
	return os.Lstat(n.Path(nodePath))
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
	np, _, err := ResolveIn(n.Root, nodePath, !keepLast)
	if err != nil {
		return path.Clean("/" + nodePath)
	}
	return np
}

// ResolveIn is kubecpr's one path resolver: it maps node path np to a host
// path under root the way the node itself would if root were "/". Symlinks
// are followed (the last component only with followLast), absolute targets
// are taken relative to root and ".." never climbs above it — a chroot's
// view, computed by github.com/cyphar/filepath-securejoin as runc and
// containerd do for container roots (Go's os.Root refuses absolute links
// instead of clamping them, and kubeadm nodes are full of them:
// kubelet-client-current.pem, a /var/lib/kubelet on another disk).
// Components that do not exist are kept verbatim (the caller may be about
// to create them). It returns the resolved node path and its host path.
func ResolveIn(root, np string, followLast bool) (nodePath, host string, err error) {
	clean := path.Clean("/" + filepath.ToSlash(np))
	dir, base := clean, ""
	if !followLast && clean != "/" {
		dir, base = path.Dir(clean), path.Base(clean)
	}
	h, err := securejoin.SecureJoin(root, dir)
	if err != nil {
		lexical := filepath.Join(root, filepath.FromSlash(clean))
		return clean, lexical, fmt.Errorf("%s under %s: %w", clean, root, err)
	}
	if base != "" {
		h = filepath.Join(h, base)
	}
	rel, err := filepath.Rel(root, h)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return clean, filepath.Join(root, filepath.FromSlash(clean)), fmt.Errorf("%s resolves outside %s", clean, root)
	}
	nodePath = "/" + filepath.ToSlash(rel)
	if rel == "." {
		nodePath = "/"
	}
	return nodePath, h, nil
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
	homes, _ := os.ReadDir(n.HostPath("/home"))
	for _, h := range homes {
		if p := "/home/" + h.Name() + "/.kube/config"; n.Exists(p) {
			out = append(out, p)
		}
	}
	return out
}
