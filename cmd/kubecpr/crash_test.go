package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/test/kubecprbin"
)

// copyNode clones a generated node so every kill point starts from the same
// bytes (cp -a keeps modes, owners and symlinks verbatim).
func copyNode(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "node")
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v %s", err, out)
	}
	return dst
}

// completedRun copies template and runs on the copy the offline recovery
// the crash and power-loss tests interrupt (`run --until kubeconfigs
// --update-user-kubeconfigs`), to its end; it returns the copy.
func completedRun(t *testing.T, template string) string {
	t.Helper()
	root := copyNode(t, template)
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...); r.code != 0 {
		t.Fatalf("uninterrupted run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	return root
}

func journalRecords(t *testing.T, root string) []journal.Record {
	t.Helper()
	cur, err := os.ReadFile(filepath.Join(root, "var/lib/kubecpr/current"))
	if err != nil {
		t.Fatal(err)
	}
	recs, err := journal.ReadFile(filepath.Join(root, "var/lib/kubecpr/runs", strings.TrimSpace(string(cur)), "journal.log"))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestCrashAtEveryJournalRecord kills a real kubecpr process with SIGKILL
// right after each journal record in turn. After every kill, `resume`
// must reach the same end state as an uninterrupted run, and `rollback`
// (from the crashed state, and after the resume) must restore every file
// byte for byte.
func TestCrashAtEveryJournalRecord(t *testing.T) {
	t.Parallel() // processes and trees of its own
	template := expiredNode(t)
	original := snapshot(t, template)

	clean := completedRun(t, template)
	total := len(journalRecords(t, clean))
	wantIDs := identities(t, clean, false)
	wantFiles := fileSet(snapshot(t, clean))
	if total < 10 {
		t.Fatalf("only %d journal records in a full run", total)
	}

	var exercised atomic.Int32
	t.Run("kills", func(t *testing.T) {
		for k := 1; k <= total; k++ {
			t.Run(fmt.Sprintf("kill-after-record-%02d", k), func(t *testing.T) {
				t.Parallel() // each kill point has trees of its own
				crashAt(t, k, template, original, wantIDs, wantFiles, &exercised)
			})
		}
	})
	t.Logf("kill points exercised: %d of %d journal records (each: resume+rollback and rollback alone)", exercised.Load(), total)
}

// crashAt kills a run right after journal record k, then requires resume
// to reach the clean run's end state and rollback (after that resume, and
// straight after a second such kill) the original bytes.
func crashAt(t *testing.T, k int, template string, original map[string]string, wantIDs map[string]certIdentity, wantFiles map[string]string, exercised *atomic.Int32) {
	crash := func() string {
		root := copyNode(t, template)
		r := kubecpr(t, []string{fmt.Sprintf("KUBECPR_CRASH_AFTER_RECORD=%d", k)}, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...)
		if !r.killed {
			t.Fatalf("process was not killed at record %d (exit %d)\n%s%s", k, r.code, r.stdout, r.stderr)
		}
		return root
	}

	// crash → resume → same end state as the clean run → rollback → original bytes
	root := crash()
	if _, err := os.Stat(filepath.Join(root, "var/lib/kubecpr/current")); os.IsNotExist(err) {
		// Killed after the run-start record, before the run became
		// current: nothing was changed and there is nothing to resume.
		if diff := diffSnapshots(original, snapshot(t, root)); diff != "" {
			t.Fatalf("killed before the run became current, yet the node changed:\n%s", diff)
		}
		if r := kubecpr(t, nil, rootArgs(root, "resume")...); r.code != 0 || !strings.Contains(r.stdout, "nothing to resume") {
			t.Fatalf("resume: exit %d, want 'nothing to resume'\n%s%s", r.code, r.stdout, r.stderr)
		}
		exercised.Add(1)
		return
	}
	// The crashed tree, copied before resume touches it: the state a
	// second kill at record k leaves (cp -a keeps modes, links and times).
	crashed := copyNode(t, root)
	if r := kubecpr(t, nil, rootArgs(root, "resume", "--update-user-kubeconfigs")...); r.code != 0 {
		t.Fatalf("resume: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
		t.Fatalf("check after resume: exit %d\n%s", r.code, r.stdout)
	}
	if diff := cmp.Diff(wantIDs, identities(t, root, false)); diff != "" {
		t.Errorf("identities after resume differ from a clean run (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantFiles, fileSet(snapshot(t, root))); diff != "" {
		t.Errorf("file set after resume differs from a clean run (-want +got):\n%s", diff)
	}
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback after resume: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if diff := diffSnapshots(original, snapshot(t, root)); diff != "" {
		t.Fatalf("rollback after resume not byte-identical:\n%s", diff)
	}

	// crash → rollback → original bytes
	root = crashed
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback after crash: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if diff := diffSnapshots(original, snapshot(t, root)); diff != "" {
		t.Fatalf("rollback after crash not byte-identical:\n%s", diff)
	}
	exercised.Add(1)
}

// fileSet is the list of paths with their kind and mode (content differs
// between runs: new serials).
func fileSet(s map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range s {
		f := strings.Fields(v)
		desc := f[0]
		if i := strings.Index(v, " -> "); i >= 0 {
			desc += v[i:]
		}
		out[k] = desc
	}
	return out
}

// The shipped binary has no crash seam: built as `make build` builds it
// (no kubecpr_crashtest tag), it carries none of the seam's environment
// variable names, and a run with them set completes instead of dying.
func TestShippedBinaryHasNoCrashSeam(t *testing.T) {
	t.Parallel() // processes and trees of its own
	bin := kubecprbin.Release(t)
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"KUBECPR_CRASH_AT", "KUBECPR_CRASH_AFTER_RECORD", "KUBECPR_CLUSTER_CRASH_AFTER_RECORD"} {
		if strings.Contains(string(b), name) {
			t.Errorf("the shipped binary contains %s: the crash seam must be compiled only with -tags kubecpr_crashtest", name)
		}
	}
	// The test build does contain it (else this test proves nothing).
	tb, err := os.ReadFile(kubecprBin(t))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(tb), "KUBECPR_CRASH_AFTER_RECORD") {
		t.Error("the test build lacks the crash seam: crash tests would not crash")
	}

	root := copyNode(t, expiredNode(t))
	run := exec.Command(bin, "--root", root, "run", "--until", "kubeconfigs")
	run.Env = append(os.Environ(), "KUBECPR_CRASH_AFTER_RECORD=1", "KUBECPR_CRASH_AT=backup")
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("shipped binary with the crash variables set: %v\n%s", err, out)
	}
	// --until kubeconfigs: the run stops, open, after its last stage
	if recs := journalRecords(t, root); len(recs) < 10 || recs[len(recs)-1].Kind != journal.KindStageEnd || recs[len(recs)-1].Stage != "kubeconfigs" {
		t.Errorf("run did not get through kubeconfigs: %d records, last %+v", len(recs), recs[len(recs)-1])
	}
}

// Ctrl-C in the middle of a run (SIGINT after a record of the certs stage,
// and between stages) stops it with exit 130 and a message that says the run
// stays open with everything journaled and names the commands that go on
// from there; resume then ends where an uninterrupted run ends.
func TestInterruptSaysWhatToDo(t *testing.T) {
	template := expiredNode(t)
	clean := copyNode(t, template)
	if r := kubecpr(t, nil, rootArgs(clean, "run", "--until", "kubeconfigs")...); r.code != 0 {
		t.Fatalf("uninterrupted run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	want := identities(t, clean, false)
	recs := journalRecords(t, clean)
	between := 0 // the backup stage's stage-end
	for i, rec := range recs {
		if rec.Kind == journal.KindStageEnd && rec.Stage == "backup" {
			between = i + 1
			break
		}
	}
	if between == 0 {
		t.Fatal("no stage-end for the backup stage in a clean run")
	}
	for _, n := range []int{between, between + 4} {
		t.Run(fmt.Sprintf("after-record-%d", n), func(t *testing.T) {
			root := copyNode(t, template)
			r := kubecpr(t, []string{fmt.Sprintf("KUBECPR_INTERRUPT_AFTER_RECORD=%d", n)}, rootArgs(root, "run", "--until", "kubeconfigs")...)
			if r.code != 130 {
				t.Fatalf("interrupted run: exit %d, want 130\n%s%s", r.code, r.stdout, r.stderr)
			}
			id := strings.TrimSpace(readFile(t, filepath.Join(root, "var/lib/kubecpr/current")))
			for _, s := range []string{"interrupted: run " + id + " stays open", "every change so far is journaled", "kubecpr status", "kubecpr resume", "kubecpr rollback"} {
				if !strings.Contains(r.stderr, s) {
					t.Errorf("interrupt message lacks %q:\n%s", s, r.stderr)
				}
			}
			if strings.Contains(r.stderr, "context canceled") {
				t.Errorf("interrupt message is Go's, not the operator's:\n%s", r.stderr)
			}
			if r := kubecpr(t, nil, rootArgs(root, "resume")...); r.code != 0 {
				t.Fatalf("resume after Ctrl-C: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			if diff := cmp.Diff(want, identities(t, root, false)); diff != "" {
				t.Errorf("after resume (-clean +resumed):\n%s", diff)
			}
		})
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
