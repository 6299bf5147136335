package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// A disk that fills up in the middle of a run (issue 11 item 12): the
// node's /etc/kubernetes on a tmpfs with a few pages to spare, so renewals
// fail with ENOSPC part way (a stage's renewals are written together, all
// or none: the spare pages are as many as let an earlier stage through). Rollback, with the disk still full, restores
// only what changed and ends byte-identical; once space is freed, resume
// ends where an uninterrupted run ends.
func TestDiskFullMidRun(t *testing.T) {
	t.Parallel() // processes and trees of its own
	template := expiredNode(t)
	clean := copyNode(t, template)
	if r := kubecpr(t, nil, rootArgs(clean, "run", "--until", "kubeconfigs")...); r.code != 0 {
		t.Fatalf("uninterrupted run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	want := identities(t, clean, false)

	fill := func(t *testing.T, spare uint64) (root, etc string) {
		root = copyNode(t, template)
		etc = filepath.Join(root, "etc/kubernetes")
		saved := filepath.Join(t.TempDir(), "etc-kubernetes")
		if out, err := exec.Command("cp", "-a", etc, saved).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
		mount(t, "tmpfs", etc, "-t", "tmpfs", "-o", "size=16m,mode=0755")
		if out, err := exec.Command("cp", "-a", saved+"/.", etc).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(etc, &st); err != nil {
			t.Fatal(err)
		}
		used := st.Blocks - st.Bfree
		mount(t, "", etc, "-o", fmt.Sprintf("remount,size=%dk", (used+spare)*uint64(st.Bsize)/1024))
		return root, etc
	}
	original := snapshot(t, template)

	t.Run("rollback on the full disk", func(t *testing.T) {
		var root string
		for spare := uint64(1); ; spare++ {
			root, _ = fill(t, spare)
			r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...)
			if r.code == 0 {
				t.Fatalf("the run fit in %d spare pages before any stage changed something: the test proves nothing\n%s", spare, r.stdout)
			}
			if !strings.Contains(r.stderr+r.stdout, "no space left on device") {
				t.Fatalf("exit %d without ENOSPC:\n%s%s", r.code, r.stdout, r.stderr)
			}
			if diff := diffSnapshots(original, snapshot(t, root)); diff != "" {
				t.Logf("with %d spare pages the disk filled after a change", spare)
				break
			}
		}
		if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
			t.Fatalf("rollback on the full disk: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if diff := diffSnapshots(original, snapshot(t, root)); diff != "" {
			t.Fatalf("rollback after ENOSPC not byte-identical:\n%s", diff)
		}
	})
	t.Run("resume once space is freed", func(t *testing.T) {
		root, etc := fill(t, 1)
		if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...); r.code == 0 {
			t.Fatal("the run fit in one spare page")
		}
		mount(t, "", etc, "-o", "remount,size=16m")
		if r := kubecpr(t, nil, rootArgs(root, "resume")...); r.code != 0 {
			t.Fatalf("resume after freeing space: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if diff := cmp.Diff(want, identities(t, root, false)); diff != "" {
			t.Errorf("after resume (-clean +resumed):\n%s", diff)
		}
	})
}
