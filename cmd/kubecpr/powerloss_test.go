package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/fsys/powerloss"
)

// recordRun runs `run --until kubeconfigs --update-user-kubeconfigs` in
// this process on root, through the power-loss filesystem (skip names the
// fsync sites taken as removed), and returns it.
func recordRun(t *testing.T, root string, skip func(string) bool) *powerloss.FS {
	t.Helper()
	pl, err := powerloss.New(root)
	if err != nil {
		t.Fatal(err)
	}
	pl.Skip = skip
	runFS = pl
	defer func() { runFS = nil }()
	app := newApp()
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	app.Writer, app.ErrWriter = devnull, devnull
	args := append([]string{"kubecpr"}, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...)
	if err := app.RunContext(context.Background(), completionArgs(app, args)); err != nil {
		t.Fatalf("recorded run: %v", err)
	}
	if out := pl.Outside(); len(out) > 0 {
		t.Fatalf("the run changed paths outside --root: %v", out)
	}
	return pl
}

// powerLossCase is what every durable state must satisfy.
type powerLossCase struct {
	original  map[string]string
	wantIDs   map[string]certIdentity
	wantFiles map[string]string
}

// check materializes view (twice) and returns what went wrong: resume must
// reach the clean run's end state, rollback the original bytes; before the
// run is current, nothing on the node may have changed.
func (c powerLossCase) check(t *testing.T, view powerloss.View) string {
	dir := t.TempDir()
	mat := func(name string) string {
		root := filepath.Join(dir, name)
		if err := view.Materialize(root); err != nil {
			t.Fatal(err)
		}
		return root
	}
	root := mat("resume")
	if _, ok := view["var/lib/kubecpr/current"]; !ok {
		if diff := diffSnapshots(c.original, snapshot(t, root)); diff != "" {
			return "no run is current after the power loss, yet the node changed:\n" + diff
		}
		if r := kubecpr(t, nil, rootArgs(root, "resume")...); r.code != 0 || !strings.Contains(r.stdout, "nothing to resume") {
			return fmt.Sprintf("resume: exit %d, want 'nothing to resume'\n%s%s", r.code, r.stdout, r.stderr)
		}
		return ""
	}
	if r := kubecpr(t, nil, rootArgs(root, "resume")...); r.code != 0 {
		return fmt.Sprintf("resume: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
		return fmt.Sprintf("check after resume: exit %d\n%s", r.code, r.stdout)
	}
	if diff := cmp.Diff(c.wantIDs, identities(t, root, false)); diff != "" {
		return "identities after resume differ from a clean run (-want +got):\n" + diff
	}
	if diff := cmp.Diff(c.wantFiles, fileSet(snapshot(t, root))); diff != "" {
		return "file set after resume differs from a clean run (-want +got):\n" + diff
	}
	root = mat("rollback")
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		return fmt.Sprintf("rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if diff := diffSnapshots(c.original, snapshot(t, root)); diff != "" {
		return "rollback not byte-identical:\n" + diff
	}
	return ""
}

func newPowerLossCase(t *testing.T) (string, powerLossCase) {
	template := expiredNode(t)
	clean := completedRun(t, template)
	return template, powerLossCase{
		original:  snapshot(t, template),
		wantIDs:   identities(t, clean, false),
		wantFiles: fileSet(snapshot(t, clean)),
	}
}

// TestPowerLossAtEveryFsync cuts the power, in the model of package
// powerloss, at every fsync of a run: each distinct state a crash can
// leave (only what was fsynced survives, files and directory entries
// alike) is laid out as a node of its own, and both resume and rollback
// must succeed on it. Every change the run makes goes through the run's
// filesystem (the model and the disk agree at the end).
func TestPowerLossAtEveryFsync(t *testing.T) {
	template, c := newPowerLossCase(t)
	root := copyNode(t, template)
	pl := recordRun(t, root, nil)
	if diff := pl.Diff(); len(diff) > 0 {
		t.Fatalf("changes made behind the run's filesystem:\n  %s", strings.Join(diff, "\n  "))
	}
	views := pl.Views()
	sites := pl.Sites()
	total := 0
	for _, n := range sites {
		total += n
	}
	t.Logf("%d fsyncs at %d call sites, %d distinct power-loss states", total, len(sites), len(views))
	for i, v := range views {
		t.Run(fmt.Sprintf("state-%03d", i), func(t *testing.T) {
			t.Parallel() // each state is a tree of its own
			if problem := c.check(t, v); problem != "" {
				t.Fatal(problem)
			}
		})
	}
}

// TestEveryFsyncIsNeeded removes, one call site at a time, the fsyncs of a
// run (in the model: the call still happens, its durability does not) and
// demands that some power-loss state then breaks resume or rollback. A
// site whose removal breaks nothing is an fsync the run does not need.
func TestEveryFsyncIsNeeded(t *testing.T) {
	if testing.Short() {
		t.Skip("one recorded run and up to every state per fsync site")
	}
	template, c := newPowerLossCase(t)
	base := recordRun(t, copyNode(t, template), nil)
	var sites []string
	for s := range base.Sites() {
		sites = append(sites, s)
	}
	sort.Strings(sites)
	for _, site := range sites {
		t.Run(site, func(t *testing.T) {
			pl := recordRun(t, copyNode(t, template), func(s string) bool { return s == site })
			views := pl.Views()
			// the last states first: a missing fsync shows where the
			// run goes on as if it had been made
			for i := len(views) - 1; i >= 0; i-- {
				if problem := c.check(t, views[i]); problem != "" {
					first, _, _ := strings.Cut(problem, "\n")
					t.Logf("without this fsync, state %d of %d breaks: %s", i, len(views), first)
					return
				}
			}
			t.Errorf("fsync at %s (%d calls) can be removed and no power-loss state breaks resume or rollback", site, base.Sites()[site])
		})
	}
}

// TestRunSyncsByStageNotByFile holds the offline run to the write-ahead
// protocol's grouped shape (issue 11's speed goal rests on it): the
// journal is fsynced a bounded number of times — not once per action —
// and a key that a renewal keeps is neither rewritten nor journaled.
func TestRunSyncsByStageNotByFile(t *testing.T) {
	template := expiredNode(t)
	root := copyNode(t, template)
	keyBefore, err := os.ReadFile(filepath.Join(root, "etc/kubernetes/pki/apiserver.key"))
	if err != nil {
		t.Fatal(err)
	}
	keyInfo, _ := os.Stat(filepath.Join(root, "etc/kubernetes/pki/apiserver.key"))
	pl := recordRun(t, root, nil)
	journalSyncs := 0
	for site, n := range pl.Sites() {
		if strings.HasPrefix(site, "journal.") {
			journalSyncs += n
		}
	}
	recs := journalRecords(t, root)
	actions := 0
	for _, r := range recs {
		if r.Kind == "intent" {
			actions++
		}
		for _, c := range r.Changes {
			if strings.HasSuffix(c.Path, ".key") {
				t.Errorf("%s journaled (%s → %s) though the run keeps keys", c.Path, c.Old, c.New)
			}
		}
	}
	// Here 10 (the journal's fsyncs and its directories' when they are
	// made) for 16 intents; one per action was 27.
	if journalSyncs == 0 || journalSyncs > 10 || journalSyncs >= actions {
		t.Errorf("%d journal fsyncs for %d intents: want at most 10, fewer than one per action (sites: %v)", journalSyncs, actions, pl.Sites())
	}
	keyAfter, _ := os.ReadFile(filepath.Join(root, "etc/kubernetes/pki/apiserver.key"))
	info, _ := os.Stat(filepath.Join(root, "etc/kubernetes/pki/apiserver.key"))
	if !bytes.Equal(keyBefore, keyAfter) || !info.ModTime().Equal(keyInfo.ModTime()) {
		t.Error("apiserver.key was rewritten though its key is kept")
	}
	t.Logf("%d journal fsyncs for %d intents", journalSyncs, actions)
}
