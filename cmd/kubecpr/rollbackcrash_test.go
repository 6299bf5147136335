package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/kubecpr/kubecpr/recovery/fsys/powerloss"
	"github.com/kubecpr/kubecpr/recovery/journal"
)

// An operator's rollback can be killed or lose power too: rollback again
// must still end byte-identical. A run (`run --until kubeconfigs
// --update-user-kubeconfigs`) completes; then its rollback is killed right
// after each journal record it writes, in turn, and a second rollback must
// restore the original bytes and close the run.
func TestCrashDuringRollback(t *testing.T) {
	t.Parallel() // processes and trees of its own
	template := expiredNode(t)
	original := snapshot(t, template)
	ran := completedRun(t, template)
	before := len(journalRecords(t, ran))
	probe := copyNode(t, ran)
	if r := kubecpr(t, nil, rootArgs(probe, "rollback")...); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	written := countRecords(t, probe, before)
	if written < 5 {
		t.Fatalf("the rollback wrote only %d journal records", written)
	}
	for k := 1; k <= written; k++ {
		t.Run(fmt.Sprintf("kill-after-record-%02d", k), func(t *testing.T) {
			t.Parallel()
			root := copyNode(t, ran)
			r := kubecpr(t, []string{fmt.Sprintf("KUBECPR_CRASH_AFTER_RECORD=%d", k)}, rootArgs(root, "rollback")...)
			if !r.killed {
				t.Fatalf("rollback not killed after record %d (exit %d)\n%s%s", k, r.code, r.stdout, r.stderr)
			}
			if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
				t.Fatalf("rollback after the killed one: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			if diff := diffSnapshots(original, snapshot(t, root)); diff != "" {
				t.Fatalf("not byte-identical after a rollback killed at record %d and a second one:\n%s", k, diff)
			}
			if r := kubecpr(t, nil, rootArgs(root, "resume")...); r.code != 0 {
				t.Fatalf("resume after the rollback: exit %d (want 'nothing to resume')\n%s%s", r.code, r.stdout, r.stderr)
			}
			if diff := diffSnapshots(original, snapshot(t, root)); diff != "" {
				t.Fatalf("resume after the rollback changed the node:\n%s", diff)
			}
		})
	}
}

// countRecords is how many records the one run journal at root has beyond
// the first n (the run is closed by its rollback, so not "current").
func countRecords(t *testing.T, root string, n int) int {
	t.Helper()
	journals, _ := filepath.Glob(filepath.Join(root, "var/lib/kubecpr/runs/*/journal.log"))
	if len(journals) != 1 {
		t.Fatalf("journals: %v", journals)
	}
	recs, err := journal.ReadFile(journals[0])
	if err != nil {
		t.Fatal(err)
	}
	return len(recs) - n
}

// A power cut during rollback: the rollback runs through the power-loss
// filesystem, and on every durable state it can leave, a second rollback
// must end byte-identical.
func TestPowerLossDuringRollback(t *testing.T) {
	template := expiredNode(t)
	original := snapshot(t, template)
	ran := completedRun(t, template)
	root := copyNode(t, ran)
	pl, err := powerloss.New(root)
	if err != nil {
		t.Fatal(err)
	}
	runFS = pl
	app := newApp()
	devnull, _ := os.Open(os.DevNull)
	app.Writer, app.ErrWriter = devnull, devnull
	args := append([]string{"kubecpr"}, rootArgs(root, "rollback")...)
	err = app.RunContext(context.Background(), completionArgs(app, args))
	runFS = nil
	devnull.Close()
	if err != nil {
		t.Fatalf("recorded rollback: %v", err)
	}
	if diff := diffSnapshots(original, snapshot(t, root)); diff != "" {
		t.Fatalf("the recorded rollback is not byte-identical:\n%s", diff)
	}
	if out := pl.Outside(); len(out) > 0 {
		t.Fatalf("the rollback changed paths outside --root: %v", out)
	}
	if diff := pl.Diff(); len(diff) > 0 {
		t.Fatalf("changes made behind the run's filesystem: %v", diff)
	}
	views := pl.Views()
	t.Logf("%d distinct power-loss states during rollback", len(views))
	for i, v := range views {
		t.Run(fmt.Sprintf("state-%03d", i), func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "node")
			if err := v.Materialize(dir); err != nil {
				t.Fatal(err)
			}
			if r := kubecpr(t, nil, rootArgs(dir, "rollback")...); r.code != 0 {
				t.Fatalf("rollback after a power cut during rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			if diff := diffSnapshots(original, snapshot(t, dir)); diff != "" {
				t.Fatalf("not byte-identical:\n%s", diff)
			}
		})
	}
}
