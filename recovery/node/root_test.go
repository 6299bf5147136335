package node

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// A --root that reaches the host's / by another name (a symlink, a bind
// mount) is the live node: New says "/", so every guard of the live node
// (the --now clock check, restarts) applies. Before, `--root
// /srv/rootlink --now <a month ahead> run` wrote not-yet-valid
// certificates into the live /etc/kubernetes.
func TestRootIsTheLiveNodeByIdentity(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "rootlink")
	if err := os.Symlink("/", link); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{"/", link, link + "/", filepath.Join(dir, "..", "..", "..", "..", "..", "..")} {
		n, err := New(root)
		if err != nil {
			t.Fatal(err)
		}
		if n.Root != "/" {
			t.Errorf("New(%q).Root = %q, want / (the same directory as the host's root)", root, n.Root)
		}
	}
	if os.Geteuid() == 0 {
		mnt := filepath.Join(dir, "bind")
		os.Mkdir(mnt, 0o755)
		if out, err := exec.Command("mount", "--bind", "/", mnt).CombinedOutput(); err != nil {
			t.Fatalf("mount --bind / %s: %v %s", mnt, err, out)
		}
		defer exec.Command("umount", "-l", mnt).Run()
		n, err := New(mnt)
		if err != nil {
			t.Fatal(err)
		}
		if n.Root != "/" {
			t.Errorf("a bind mount of / is %q, want /", n.Root)
		}
	}
	// A copy is not the live node.
	n, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n.Root != dir {
		t.Errorf("New(%q).Root = %q", dir, n.Root)
	}
}
