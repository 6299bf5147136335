package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/test/fixture"
	"github.com/kubecpr/kubecpr/test/kubecprbin"
	"github.com/kubecpr/kubecpr/test/treesnap"
)

// The tests drive the real kubecpr binary as a child process, the way an
// engineer (or a crash) does.

var keys = fixture.NewKeyPool(24)

// now is the fixed clock of the CLI tests: leaves expired 3 days before.
var now = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)

func kubecprBin(t testing.TB) string { return kubecprbin.Path(t) }

type result struct {
	code           int
	stdout, stderr string
	killed         bool
}

func kubecpr(t testing.TB, env []string, args ...string) result {
	t.Helper()
	r := kubecprbin.Run(t, env, args...)
	return result{code: r.Code, stdout: r.Stdout, stderr: r.Stderr, killed: r.Killed}
}

// expiredNode generates a kubeadm-shaped node whose leaf certificates (and
// the kubelet's client certificate) expired three days before now.
func expiredNode(t testing.TB, opts ...func(*fixture.Options)) string {
	t.Helper()
	root := t.TempDir()
	o := fixture.Options{
		NodeName: "cp-1", Now: now, Keys: keys,
		CA:            fixture.Window{NotBefore: now.AddDate(-2, 0, 0), NotAfter: now.AddDate(8, 0, 0)},
		Leaf:          fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)},
		KubeletClient: fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)},
	}
	for _, f := range opts {
		f(&o)
	}
	if _, err := fixture.Generate(root, o); err != nil {
		t.Fatal(err)
	}
	return root
}

// snapshot records the node tree but kubecpr's own state dir.
func snapshot(t testing.TB, root string) map[string]string {
	return treesnap.Take(t, root, "var/lib/kubecpr")
}

func diffSnapshots(want, got map[string]string) string { return treesnap.Diff(want, got) }

func rootArgs(root string, args ...string) []string {
	return append([]string{"--root", root, "--now", now.Format(time.RFC3339)}, args...)
}

// linkKubernetesDir moves the node's /etc/kubernetes to /srv-kubernetes and
// leaves an absolute symlink in its place, as an operator who moved it to
// another disk has it (resolved inside the root).
func linkKubernetesDir(t testing.TB, root string) {
	t.Helper()
	if err := os.Rename(filepath.Join(root, "etc/kubernetes"), filepath.Join(root, "srv-kubernetes")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/srv-kubernetes", filepath.Join(root, "etc/kubernetes")); err != nil {
		t.Fatal(err)
	}
}
