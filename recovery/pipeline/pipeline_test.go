package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/phases"
	"github.com/kubecpr/kubecpr/recovery/atomicfile"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/test/fixture"
	"github.com/kubecpr/kubecpr/test/treesnap"
)

var (
	now  = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	keys = fixture.NewKeyPool(24)
)

func expired(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	w := fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)}
	if _, err := fixture.Generate(root, fixture.Options{Now: now, Keys: keys, Leaf: w, KubeletClient: w}); err != nil {
		t.Fatal(err)
	}
	return root
}

func tree(t *testing.T, root string) map[string]string {
	return treesnap.Take(t, root, "var/lib/kubecpr")
}

func runner(t *testing.T, root string) *pipeline.Runner {
	t.Helper()
	n, err := node.New(root)
	if err != nil {
		t.Fatal(err)
	}
	c, err := n.Discover("")
	if err != nil {
		t.Fatal(err)
	}
	return &pipeline.Runner{Node: n, Cluster: c, Clock: now, Out: io.Discard, StateDir: n.Path("/var/lib/kubecpr"),
		Opts: pipeline.Options{UpdateUserKubeconfigs: true}, Stages: phases.All()}
}

// run runs the pipeline until kubeconfigs in-process.
func run(t *testing.T, root string) error {
	t.Helper()
	r := runner(t, root)
	defer r.Close()
	stages, err := pipeline.Select(phases.All(), pipeline.Selection{Until: "kubeconfigs"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Prepare(false); err != nil {
		return err
	}
	planned, err := r.Plan(context.Background(), stages)
	if err != nil {
		return err
	}
	if err := r.Preflight(planned); err != nil {
		return err
	}
	if _, err := r.Open(false); err != nil {
		return err
	}
	return r.Apply(context.Background(), planned, "until=kubeconfigs")
}

func rollback(t *testing.T, root string) {
	t.Helper()
	r := runner(t, root)
	defer r.Close()
	if _, err := r.Open(false); err != nil {
		t.Fatal(err)
	}
	if err := r.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func allOK(t *testing.T, root string) {
	t.Helper()
	n, _ := node.New(root)
	c, _ := n.Discover("")
	inv, err := inventory.Build(n, c, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	if inv.ExitCode() != 0 {
		for _, it := range inv.Items {
			if it.Status != "ok" {
				t.Errorf("%s: %s %v", it.Name, it.Status, it.Problems)
			}
		}
	}
}

func TestApplyAndRollbackInProcess(t *testing.T) {
	root := expired(t)
	before := tree(t, root)
	if err := run(t, root); err != nil {
		t.Fatal(err)
	}
	allOK(t, root)
	rollback(t, root)
	if diff := cmp.Diff(before, tree(t, root)); diff != "" {
		t.Fatalf("rollback (-before +after):\n%s", diff)
	}
}

// A write that fails at its sync or rename step (a full disk, an I/O
// error) at every write of the run, in turn: the run stops with a stage
// error, a new run resumes it to completion, and rollback restores the
// original bytes.
func TestFailureAtEveryWrite(t *testing.T) {
	// count the durable steps of a clean run
	writes := map[string]int{}
	atomicfile.Syncer = func(step, p string) error {
		writes[step]++
		return nil
	}
	if err := run(t, expired(t)); err != nil {
		t.Fatal(err)
	}
	atomicfile.Syncer = nil
	t.Cleanup(func() { atomicfile.Syncer = nil })
	if writes["rename"] < 15 {
		t.Fatalf("only %d writes counted", writes["rename"])
	}
	for _, step := range []string{"sync", "rename"} {
		for k := 1; k <= writes[step]; k++ {
			t.Run(fmt.Sprintf("%s-%02d", step, k), func(t *testing.T) {
				root := expired(t)
				before := tree(t, root)
				seen := 0
				boom := errors.New("injected I/O error")
				atomicfile.Syncer = func(s, p string) error {
					if s == step {
						seen++
						if seen == k {
							return boom
						}
					}
					return nil
				}
				err := run(t, root)
				atomicfile.Syncer = nil
				if k == 1 && errors.Is(err, boom) {
					// the first write is kubecpr's own state file: nothing
					// on the node was touched
					if diff := cmp.Diff(before, tree(t, root)); diff != "" {
						t.Fatalf("node changed:\n%s", diff)
					}
					return
				}
				var se *pipeline.StageError
				if !errors.Is(err, boom) || !errors.As(err, &se) {
					t.Fatalf("err = %v, want the injected error as a StageError", err)
				}
				if !strings.Contains(err.Error(), "kubecpr resume") {
					t.Errorf("error does not say the way on: %v", err)
				}
				if err := run(t, root); err != nil {
					t.Fatalf("resume: %v", err)
				}
				allOK(t, root)
				rollback(t, root)
				if diff := cmp.Diff(before, tree(t, root)); diff != "" {
					t.Fatalf("rollback (-before +after):\n%s", diff)
				}
			})
		}
	}
}

func TestSelect(t *testing.T) {
	all := phases.All()
	names := func(s []pipeline.Stage) string {
		var n []string
		for _, x := range s {
			n = append(n, x.Name)
		}
		return strings.Join(n, ",")
	}
	for _, tc := range []struct {
		sel     pipeline.Selection
		want    string
		wantErr string
	}{
		{pipeline.Selection{}, "diagnose,backup,certs,kubeconfigs,bounce,csr,verify", ""},
		{pipeline.Selection{Until: "certs"}, "diagnose,backup,certs", ""},
		{pipeline.Selection{From: "kubeconfigs"}, "kubeconfigs,bounce,csr,verify", ""},
		{pipeline.Selection{Only: []string{"verify", "certs"}}, "certs,verify", ""},
		{pipeline.Selection{Only: []string{"bogus"}}, "", `unknown stage "bogus" (stages: diagnose, backup, certs, kubeconfigs, bounce, csr, verify)`},
		{pipeline.Selection{From: "verify", Until: "certs"}, "", "comes after"},
	} {
		got, err := pipeline.Select(all, tc.sel)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%+v: err %v, want %q", tc.sel, err, tc.wantErr)
			}
			continue
		}
		if err != nil || names(got) != tc.want {
			t.Errorf("%+v: %s %v, want %s", tc.sel, names(got), err, tc.want)
		}
	}
	only, _ := pipeline.Select(all, pipeline.Selection{Only: []string{"certs"}})
	if got := names(pipeline.WithBackup(all, only)); got != "backup,certs" {
		t.Errorf("WithBackup: %s", got)
	}
}
