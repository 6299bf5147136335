package node

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestStateDir(t *testing.T) {
	root := t.TempDir()
	n, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	host := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "var/lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	// An absolute link is the node's: ROOT/<target>, never the host's.
	if err := os.Symlink(host, filepath.Join(root, "var/lib/kubecpr")); err != nil {
		t.Fatal(err)
	}
	got, err := n.StateDir(DefaultState)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, host); got != want {
		t.Errorf("StateDir = %s, want %s (the link's target inside the root)", got, want)
	}
	for _, bad := range []string{"/etc/kubernetes", "/etc/kubernetes/pki/x", "/var/lib/kubelet", "/", "/etc", "/var/lib"} {
		var se *StateDirError
		if _, err := n.StateDir(bad); !errors.As(err, &se) {
			t.Errorf("StateDir(%s): %v, want a StateDirError", bad, err)
		}
	}
	if _, err := n.StateDir("/var/lib/kubecpr2"); err != nil {
		t.Errorf("a fresh state dir: %v", err)
	}
	// A link among kubecpr's own entries, or one level inside runs/.
	state := filepath.Join(root, host)
	if err := os.MkdirAll(filepath.Join(state, "runs"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(state, "runs", "20261207T000000Z-abcdef")); err != nil {
		t.Fatal(err)
	}
	var se *StateDirError
	if _, err := n.StateDir(DefaultState); !errors.As(err, &se) {
		t.Errorf("runs/ID a link: %v, want a StateDirError", err)
	}
}
