package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubecpr/kubecpr/test/treesnap"
)

// The data-loss items of issue 19: kubecpr's own state directory — lock,
// journal, backups of private keys — resolved inside --root like every
// other path, and never written through a link.

func readOrFatal(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLockThatIsALinkIsRefusedAndTruncatesNothing(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "host-file")
	if err := os.WriteFile(outside, []byte("a host file kubecpr must not touch\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		make func(t *testing.T, root, lock string)
	}{
		{"relative link to ca.key", func(t *testing.T, root, lock string) {
			must(t, os.Symlink("../../../etc/kubernetes/pki/ca.key", lock))
		}},
		{"absolute link to a host file", func(t *testing.T, root, lock string) {
			must(t, os.Symlink(outside, lock))
		}},
		{"hard link to ca.key", func(t *testing.T, root, lock string) {
			must(t, os.Link(filepath.Join(root, "etc/kubernetes/pki/ca.key"), lock))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := expiredNode(t)
			caKey := filepath.Join(root, "etc/kubernetes/pki/ca.key")
			keyBefore, hostBefore := readOrFatal(t, caKey), readOrFatal(t, outside)
			before := snapshot(t, root)
			state := filepath.Join(root, "var/lib/kubecpr")
			must(t, os.MkdirAll(state, 0o700))
			tc.make(t, root, filepath.Join(state, "lock"))

			r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...)
			if r.code != ExitPrecondition || !strings.Contains(r.stderr, "lock") {
				t.Errorf("exit %d, want %d (refused before any change) naming the lock\n%s", r.code, ExitPrecondition, r.stderr)
			}
			if got := readOrFatal(t, caKey); !bytes.Equal(got, keyBefore) {
				t.Fatalf("ca.key changed through the lock: now %d bytes, was %d", len(got), len(keyBefore))
			}
			if got := readOrFatal(t, outside); !bytes.Equal(got, hostBefore) {
				t.Fatalf("the host file the lock named changed: %q", got)
			}
			if d := diffSnapshots(before, snapshot(t, root)); d != "" {
				t.Fatalf("the refused run changed the node:\n%s", d)
			}
		})
	}
}

func TestStateDirLinkStaysInsideRoot(t *testing.T) {
	elsewhere := t.TempDir() // a host directory, outside both trees
	a, b := expiredNode(t), expiredNode(t)
	for _, root := range []string{a, b} {
		must(t, os.MkdirAll(filepath.Join(root, "var/lib"), 0o755))
		must(t, os.Symlink(elsewhere, filepath.Join(root, "var/lib/kubecpr")))
	}
	if r := kubecpr(t, nil, rootArgs(a, "run", "--until", "kubeconfigs")...); r.code != 0 {
		t.Fatalf("run on tree A: exit %d\n%s", r.code, r.stderr)
	}
	if ents, err := os.ReadDir(elsewhere); err != nil || len(ents) != 0 {
		t.Fatalf("the host directory the state dir's link names got %d entries (%v): the backups of A's keys left the root", len(ents), err)
	}
	// The link is read as the node would read it: ROOT/<target>.
	inRoot := filepath.Join(a, elsewhere)
	ids, err := os.ReadDir(filepath.Join(inRoot, "backups"))
	if err != nil || len(ids) != 1 {
		t.Fatalf("tree A's backups at %s: %v %v; want one", inRoot, ids, err)
	}
	if _, err := os.Stat(filepath.Join(inRoot, "backups", ids[0].Name(), "files/etc/kubernetes/pki/ca.key")); err != nil {
		t.Errorf("tree A's backup holds no ca.key: %v", err)
	}
	// Tree B shares nothing with A: its status knows no run.
	if _, err := os.Stat(filepath.Join(b, elsewhere, "runs")); !os.IsNotExist(err) {
		t.Fatalf("tree B has runs before it ran: %v", err)
	}
	// B's state dir is B/<elsewhere>: its first component is kubecpr's.
	stateB := strings.Split(strings.TrimPrefix(elsewhere, "/"), "/")[0]
	if _, err := os.Stat(filepath.Join(b, stateB)); !os.IsNotExist(err) {
		t.Fatalf("fixture has %s already", stateB)
	}
	beforeB := treesnap.Take(t, b, "var/lib/kubecpr", stateB)
	r := kubecpr(t, nil, rootArgs(b, "rollback")...)
	if d := diffSnapshots(beforeB, treesnap.Take(t, b, "var/lib/kubecpr", stateB)); d != "" {
		t.Fatalf("rollback on tree B changed it (A's run?), exit %d:\n%s\n%s", r.code, d, r.stderr)
	}
}

func TestLinkInsideStateDirRefused(t *testing.T) {
	root := expiredNode(t)
	before := snapshot(t, root)
	state := filepath.Join(root, "var/lib/kubecpr")
	must(t, os.MkdirAll(state, 0o700))
	target := t.TempDir()
	must(t, os.Symlink(target, filepath.Join(state, "backups")))
	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...)
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "symbolic link") {
		t.Errorf("backups/ a link: exit %d, want %d and 'symbolic link'\n%s", r.code, ExitPrecondition, r.stderr)
	}
	if ents, _ := os.ReadDir(target); len(ents) != 0 {
		t.Fatalf("backups written through the link: %d entries", len(ents))
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Fatalf("the refused run changed the node:\n%s", d)
	}
}

func TestStateDirInsideWhatIsBackedUpRefused(t *testing.T) {
	root := expiredNode(t)
	before := snapshot(t, root)
	for _, dir := range []string{"/etc/kubernetes", "/etc/kubernetes/kubecpr", "/var/lib/kubelet/x", "/", "/var"} {
		r := kubecpr(t, nil, rootArgs(root, "--state-dir", dir, "run", "--until", "kubeconfigs")...)
		if r.code != ExitPrecondition || !strings.Contains(r.stderr, "is or holds") {
			t.Errorf("--state-dir %s: exit %d, want %d and 'is or holds'\n%s", dir, r.code, ExitPrecondition, r.stderr)
		}
	}
	if d := diffSnapshots(before, treeOf(t, root)); d != "" {
		t.Fatalf("refused runs changed the node:\n%s", d)
	}
}

func TestBackupIDIsAnIDNotAPath(t *testing.T) {
	root := expiredNode(t)
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
	}
	ids, err := os.ReadDir(filepath.Join(root, "var/lib/kubecpr/backups"))
	if err != nil || len(ids) != 1 {
		t.Fatalf("backups: %v %v", ids, err)
	}
	id := ids[0].Name()
	// A copy of the backup outside the state dir, reached by ../
	outside := filepath.Join(root, "srv", "x")
	must(t, os.MkdirAll(filepath.Dir(outside), 0o755))
	must(t, os.Rename(filepath.Join(root, "var/lib/kubecpr/backups", id), outside))
	must(t, os.MkdirAll(filepath.Join(root, "var/lib/kubecpr/backups", id), 0o700))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"backup", "verify", "../../../../../srv/x"}, "not a run id"},
		{[]string{"backup", "restore", "--dry-run", "../../../../../srv/x"}, "not a run id"},
		{[]string{"backup", "verify", "NOPE"}, "no backup NOPE"},
		{[]string{"backup", "verify", id, "extra"}, "one RUN-ID, not 2 arguments"},
	} {
		r := kubecpr(t, nil, rootArgs(root, tc.args...)...)
		if r.code != ExitFailed || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, want %d and %q\n%s", tc.args, r.code, ExitFailed, tc.want, r.stderr)
		}
		if strings.Contains(r.stdout, "would restore") || strings.Contains(r.stdout, "matches") {
			t.Errorf("%v acted on a backup outside the state dir:\n%s", tc.args, r.stdout)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
