package node

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// StateEntries are the names kubecpr itself creates in its state
// directory. None of them, nor anything one level inside the directories
// among them, may be a symbolic link: kubecpr writes its lock, journal and
// backups (copies of private keys) there and never through a link.
var StateEntries = []string{"lock", "current", "runs", "backups", "cluster", "recovery-server"}

// StateDirError is a state directory kubecpr refuses to use.
type StateDirError struct{ Msg string }

func (e *StateDirError) Error() string { return e.Msg }

// StateDir resolves the node path of kubecpr's state directory (--state-dir)
// to its host path under Root, following every symlink in it — the last
// component included — as the node's kernel would, with absolute targets
// and ".." clamped inside Root. A state directory that is a link to
// /elsewhere on a copy of a node is therefore ROOT/elsewhere, never the
// host's /elsewhere: two trees never share a state, and the backups of
// their keys never leave them.
//
// It refuses (before anything is written) a state directory that is not a
// directory, one that is or holds /etc/kubernetes or /var/lib/kubelet (the
// backup would copy into what it backs up), and one in which an entry
// kubecpr writes is a symbolic link.
func (n *Node) StateDir(nodePath string) (string, error) {
	if nodePath == "" {
		nodePath = DefaultState
	}
	np, host, err := ResolveIn(n.Root, nodePath, true)
	if err != nil {
		return "", &StateDirError{fmt.Sprintf("--state-dir %s: %v: give a --state-dir inside --root %s", nodePath, err, n.Root)}
	}
	for _, d := range []string{KubernetesDir, KubeletDir} {
		if np == d || strings.HasPrefix(np, d+"/") || strings.HasPrefix(d, strings.TrimSuffix(np, "/")+"/") {
			return "", &StateDirError{fmt.Sprintf("--state-dir %s (%s on the node) is or holds %s, which kubecpr backs up and changes: "+
				"give a directory of kubecpr's own, such as the default %s", nodePath, np, d, DefaultState)}
		}
	}
	if st, err := os.Lstat(host); err == nil && !st.IsDir() {
		return "", &StateDirError{fmt.Sprintf("--state-dir %s: %s is %s, not a directory: move it away or give another --state-dir", nodePath, host, describeEntry(st.Mode()))}
	} else if err != nil && !os.IsNotExist(err) {
		return "", &StateDirError{fmt.Sprintf("--state-dir %s: %v", nodePath, err)}
	}
	if err := checkStateLinks(host, np); err != nil {
		return "", err
	}
	return host, nil
}

// checkStateLinks refuses a symbolic link among the entries kubecpr writes
// in the state directory at host (node path np), and one level inside its
// directories (runs/ID, backups/ID, cluster/ID).
func checkStateLinks(host, np string) error {
	refuse := func(p string) error {
		target, _ := os.Readlink(p)
		rel, _ := filepath.Rel(host, p)
		return &StateDirError{fmt.Sprintf("%s is a symbolic link (to %s) in kubecpr's state directory %s: kubecpr writes its lock, "+
			"journal and backups there and never through a link, which would overwrite or copy keys to wherever it points; "+
			"remove the link (rm %s) or give another --state-dir", path.Join(np, filepath.ToSlash(rel)), target, np, p)}
	}
	for _, name := range StateEntries {
		p := filepath.Join(host, name)
		st, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if st.Mode()&fs.ModeSymlink != 0 {
			return refuse(p)
		}
		if !st.IsDir() {
			continue
		}
		ents, err := os.ReadDir(p)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.Type()&fs.ModeSymlink != 0 {
				return refuse(filepath.Join(p, e.Name()))
			}
		}
	}
	return nil
}

func describeEntry(m fs.FileMode) string {
	if m&fs.ModeSymlink != 0 {
		return "a symbolic link"
	}
	if m.IsRegular() {
		return "a regular file"
	}
	return describeMode(m)
}
