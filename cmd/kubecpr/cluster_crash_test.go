package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/cluster"
)

// TestClusterCrashAtEveryRecord kills the driving kubecpr (SIGKILL) right
// after each cluster-journal record in turn. After every kill, `cluster
// resume` must end with every node recovered, and `cluster rollback` —
// after the resume, and straight from the crash — must leave every node
// byte-identical to before. Two control planes (so a kill can land while
// the other node's run is still going) and one worker.
func TestClusterCrashAtEveryRecord(t *testing.T) {
	template := t.TempDir()
	invFile, roots := expiredClusterOf(t, template, 2, 1)
	original := map[string]map[string]string{}
	for name, root := range roots {
		original[name] = snapshot(t, root)
	}
	args := func(dir string, extra ...string) []string {
		return append([]string{"--root", filepath.Join(dir, "driver"), "--now", now.Format(time.RFC3339)}, extra...)
	}
	// A copy of the whole cluster (the inventory names absolute roots: the
	// copy gets its own inventory).
	clone := func(t *testing.T) (string, string) {
		dir := filepath.Join(t.TempDir(), "c")
		if out, err := exec.Command("cp", "-a", template, dir).CombinedOutput(); err != nil {
			t.Fatalf("cp -a: %v %s", err, out)
		}
		b, err := os.ReadFile(invFile)
		if err != nil {
			t.Fatal(err)
		}
		inv := filepath.Join(dir, "inventory.yaml")
		if err := os.WriteFile(inv, []byte(strings.ReplaceAll(string(b), template, dir)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, "driver"), 0o755); err != nil {
			t.Fatal(err)
		}
		return dir, inv
	}
	clean, cleanInv := clone(t)
	if r := kubecpr(t, nil, args(clean, "cluster", "run", "--inventory", cleanInv, "--ca-from", "cp-1", "--update-user-kubeconfigs")...); r.code != 0 {
		t.Fatalf("uninterrupted cluster run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	_, recs, err := cluster.CurrentRun(filepath.Join(clean, "driver/var/lib/kubecpr"))
	if err != nil {
		t.Fatal(err)
	}
	total := len(recs)
	if total < 15 {
		t.Fatalf("only %d cluster journal records", total)
	}
	sameAsOriginal := func(t *testing.T, dir, when string) {
		t.Helper()
		for name := range roots {
			if d := diffSnapshots(original[name], snapshot(t, filepath.Join(dir, name))); d != "" {
				t.Errorf("%s: %s not byte-identical:\n%s", when, name, d)
			}
		}
	}
	for k := 1; k <= total; k++ {
		t.Run(fmt.Sprintf("kill-after-record-%02d", k), func(t *testing.T) {
			t.Parallel()
			crash := func() (string, string) {
				dir, inv := clone(t)
				r := kubecpr(t, []string{fmt.Sprintf("KUBECPR_CLUSTER_CRASH_AFTER_RECORD=%d", k)},
					args(dir, "cluster", "run", "--inventory", inv, "--ca-from", "cp-1", "--update-user-kubeconfigs")...)
				if !r.killed {
					t.Fatalf("the driver was not killed at record %d (exit %d)\n%s%s", k, r.code, r.stdout, r.stderr)
				}
				return dir, inv
			}
			dir, _ := crash()
			if _, err := os.Stat(filepath.Join(dir, "driver/var/lib/kubecpr/cluster/current")); os.IsNotExist(err) {
				// Killed after run-start, before the run became current:
				// nothing was done anywhere, there is nothing to resume.
				if r := kubecpr(t, nil, args(dir, "cluster", "resume")...); r.code != 0 || !strings.Contains(r.stdout, "nothing to resume") {
					t.Fatalf("cluster resume: exit %d, want 'nothing to resume'\n%s%s", r.code, r.stdout, r.stderr)
				}
				sameAsOriginal(t, dir, "killed before the run became current")
				return
			}
			r := kubecpr(t, nil, args(dir, "cluster", "resume")...)
			if r.code != 0 {
				t.Fatalf("cluster resume: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			for name := range roots {
				if r := kubecpr(t, nil, "--root", filepath.Join(dir, name), "--now", now.Format(time.RFC3339), "check"); r.code != 0 {
					t.Errorf("%s after resume: check exit %d\n%s", name, r.code, r.stdout)
				}
			}
			resumed := r.stdout
			if r = kubecpr(t, nil, args(dir, "cluster", "rollback")...); r.code != 0 {
				t.Fatalf("cluster rollback after resume: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			sameAsOriginal(t, dir, "rollback after resume")
			if t.Failed() {
				t.Logf("resume:\n%s\nrollback:\n%s", resumed, r.stdout)
			}

			dir, _ = crash()
			if r := kubecpr(t, nil, args(dir, "cluster", "rollback")...); r.code != 0 {
				t.Fatalf("cluster rollback after the crash: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			sameAsOriginal(t, dir, "rollback after the crash")
		})
	}
}
