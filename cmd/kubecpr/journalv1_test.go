package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/test/fuzzseed"
)

// fileStateOf is a path's state as journals write it: absent, sha256:HEX
// of a regular file's bytes, link:TARGET.
func fileStateOf(p string) (string, error) {
	st, err := os.Lstat(p)
	switch {
	case os.IsNotExist(err):
		return journal.Absent().String(), nil
	case err != nil:
		return "", err
	case st.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(p)
		return journal.LinkTo(target).String(), err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return journal.FileSum(hex.EncodeToString(s[:])).String(), nil
}

// copyPath puts src's file or symlink at dst (mode kept), replacing it.
func copyPath(t *testing.T, src, dst string) {
	t.Helper()
	st, err := os.Lstat(src)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(dst)
	if st.Mode()&os.ModeSymlink != 0 {
		target, err := os.Readlink(src)
		if err == nil {
			err = os.Symlink(target, dst)
		}
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	b, err := os.ReadFile(src)
	if err == nil {
		err = os.WriteFile(dst, b, st.Mode().Perm())
	}
	if err != nil {
		t.Fatal(err)
	}
}

// An operator who upgrades kubecpr in the middle of an incident resumes or
// rolls back the run the previous kubecpr left open: its journal, whose
// intents are string maps (path.N, old.N, new.N) and whose options are JSON
// in a string, is read by this version.
//
// testdata/journal-v1/interrupted-resume.log is such a journal, written by
// the previous kubecpr (see the README there): `run --until kubeconfigs
// --update-user-kubeconfigs --validity 48h` killed after record 20, then
// `resume --component-timeout 6m` killed after its 19th record, with the
// kubelet's client pem in flight. Its records are kept byte for byte but
// for what names this node's bytes. The node is laid out as the fixture
// says it was (this version journals and groups differently, so the same
// kill points would not stop it at the same place): this version's run of
// the same options, stopped right after its backup, gives the run id, the
// root and the backup; every file of an action the fixture journaled done
// holds what an uninterrupted run of this version wrote there, the pem in
// flight holds what a power cut kept, the rest is as before the run. The
// fixture's run id, root and sha256 states are replaced by this node's,
// path by path, and every line's checksum recomputed. The journal
// installed is in the old shape.
func TestJournalOfThePreviousVersion(t *testing.T) {
	fixture, err := os.ReadFile(filepath.Join(fuzzseed.ModuleTestdata(t), "journal-v1", "interrupted-resume.log"))
	if err != nil {
		t.Fatal(err)
	}
	template := expiredNode(t)
	original := snapshot(t, template)
	runArgs := []string{"run", "--until", "kubeconfigs", "--update-user-kubeconfigs", "--validity", "48h"}
	clean := copyNode(t, template)
	if r := kubecpr(t, nil, rootArgs(clean, runArgs...)...); r.code != 0 {
		t.Fatalf("uninterrupted run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	wantIDs, wantFiles := identities(t, clean, false), fileSet(snapshot(t, clean))
	afterBackup := 0
	for i, rec := range journalRecords(t, clean) {
		if rec.Kind == journal.KindDone && rec.Action == "backup/node" {
			afterBackup = i + 1
		}
	}
	if afterBackup == 0 {
		t.Fatal("the uninterrupted run journaled no backup")
	}

	// The in-flight pem: a power cut kept its bytes, not the link's change
	// (the redo removes it and writes it again; rollback removes it).
	const pem = "/var/lib/kubelet/pki/kubelet-client-2026-11-22-03-00-00.pem"
	kept := []byte("the interrupted attempt's new pem, as the disk kept it\n")

	interrupted := func(t *testing.T) string {
		t.Helper()
		root := copyNode(t, template)
		if r := kubecpr(t, []string{fmt.Sprintf("KUBECPR_CRASH_AFTER_RECORD=%d", afterBackup)}, rootArgs(root, runArgs...)...); !r.killed {
			t.Fatalf("run not killed: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		jp := filepath.Join(root, "var/lib/kubecpr/runs", currentRun(t, root), "journal.log")
		if err := os.WriteFile(jp, v1JournalFor(t, fixture, root, template, clean, map[string][]byte{pem: kept}), 0o600); err != nil {
			t.Fatal(err)
		}
		return root
	}

	t.Run("resume-then-rollback", func(t *testing.T) {
		root := interrupted(t)
		r := kubecpr(t, nil, rootArgs(root, "resume")...)
		if r.code != 0 {
			t.Fatalf("resume: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stdout, "removed "+pem+", left by the interrupted attempt") {
			t.Errorf("resume did not remove the pem the interrupted attempt created:\n%s", r.stdout)
		}
		// The old run-start's options are the run's: 48-hour certificates.
		for name, life := range lifetimes(t, root) {
			if life != 48*time.Hour {
				t.Errorf("%s: lifetime %s after resume, want the run's 48h", name, life)
			}
		}
		if diff := cmp.Diff(wantIDs, identities(t, root, false)); diff != "" {
			t.Errorf("identities after resume differ from an uninterrupted run (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(wantFiles, fileSet(snapshot(t, root))); diff != "" {
			t.Errorf("file set after resume differs from an uninterrupted run (-want +got):\n%s", diff)
		}
		// One journal, both shapes: the previous version's records as they
		// were written, this version's after them.
		jp := filepath.Join(root, "var/lib/kubecpr/runs", currentRun(t, root), "journal.log")
		j, _ := os.ReadFile(jp)
		if !bytes.Contains(j, []byte(`"path.0":`)) || !bytes.Contains(j, []byte(`"changes":[{"path":`)) {
			t.Errorf("journal after resume is not the old records followed by typed ones:\n%s", j)
		}
		if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
			t.Fatalf("rollback after resume: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if diff := diffSnapshots(original, snapshot(t, root)); diff != "" {
			t.Fatalf("rollback after resume not byte-identical:\n%s", diff)
		}
	})

	t.Run("rollback", func(t *testing.T) {
		root := interrupted(t)
		if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
			t.Fatalf("rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if diff := diffSnapshots(original, snapshot(t, root)); diff != "" {
			t.Fatalf("rollback not byte-identical:\n%s", diff)
		}
	})

	// A state this kubecpr does not know (a journal from a newer one, or
	// edited) stops resume and rollback before any change, with exit 5 and
	// a message that names the state and the way out.
	t.Run("unknown-state", func(t *testing.T) {
		root := interrupted(t)
		jp := filepath.Join(root, "var/lib/kubecpr/runs", currentRun(t, root), "journal.log")
		j, _ := os.ReadFile(jp)
		lines := bytes.SplitAfter(bytes.TrimSuffix(j, []byte("\n")), []byte("\n"))
		last := string(lines[len(lines)-1])
		lines[len(lines)-1] = []byte(withChecksum(strings.Replace(last[9:], `"old.0":"absent"`, `"old.0":"blake3:0f1e2d"`, 1)) + "\n")
		if string(lines[len(lines)-1]) == last {
			t.Fatal("the in-flight intent has no old.0 absent")
		}
		os.WriteFile(jp, bytes.Join(lines, nil), 0o600)
		before := snapshot(t, root)
		for _, cmd := range []string{"resume", "rollback"} {
			r := kubecpr(t, nil, rootArgs(root, cmd)...)
			if r.code != ExitJournal || !strings.Contains(r.stderr, `unknown file state "blake3:0f1e2d"`) || !strings.Contains(r.stderr, "newer kubecpr") {
				t.Errorf("%s: exit %d, want %d naming the unknown state\n%s%s", cmd, r.code, ExitJournal, r.stdout, r.stderr)
			}
		}
		if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
			t.Errorf("refused commands changed the node:\n%s", diff)
		}
		if after, _ := os.ReadFile(jp); !bytes.Equal(after, bytes.Join(lines, nil)) {
			t.Error("the journal was changed (cut as a torn tail?)")
		}
	})
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func withChecksum(body string) string {
	return fmt.Sprintf("%08x %s", crc32.Checksum([]byte(body), castagnoli), body)
}

// v1JournalFor is the fixture made to describe the node at root, and the
// node at root laid out as the fixture describes it: the run id and root
// of the run this version started there; for each path of an intent, the
// old sha256 state is the file's in template (before any run); the new
// one is that of the file an uninterrupted run wrote in clean, copied into
// root when the fixture journaled the action done; a path in override
// gets its bytes instead, written into root.
func v1JournalFor(t *testing.T, fixture []byte, root, template, clean string, override map[string][]byte) []byte {
	t.Helper()
	mine := journalRecords(t, root)
	type v1Record struct {
		Run    string            `json:"run"`
		Kind   string            `json:"kind"`
		Stage  string            `json:"stage"`
		Action string            `json:"action"`
		Data   map[string]string `json:"data"`
	}
	lines := strings.SplitAfter(strings.TrimSuffix(string(fixture), "\n"), "\n")
	recs := make([]v1Record, len(lines))
	done := map[string]bool{}
	for i, l := range lines {
		if err := json.Unmarshal([]byte(l[9:]), &recs[i]); err != nil {
			t.Fatalf("fixture line %d: %v", i+1, err)
		}
		if recs[i].Kind == "done" {
			done[recs[i].Action] = true
		}
	}
	subst := map[string]string{}
	set := func(from, to string) {
		if prev, ok := subst[from]; ok && prev != to {
			t.Fatalf("fixture state %s stands for both %s and %s on this node", from, prev, to)
		}
		subst[from] = to
	}
	stateOf := func(dir, p string) string {
		st, err := fileStateOf(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	for i, old := range recs {
		set(old.Run, mine[0].RunID)
		if old.Kind == "run-start" {
			set(old.Data["root"], root)
		}
		if _, files := old.Data["files"]; !files {
			continue
		}
		for j := 0; old.Data[fmt.Sprint("path.", j)] != ""; j++ {
			k := fmt.Sprint(j)
			p := old.Data["path."+k]
			if o := old.Data["old."+k]; strings.HasPrefix(o, "sha256:") {
				set(o, stateOf(template, p))
			} else if o != stateOf(template, p) {
				t.Fatalf("record %d %s: the fixture's old state %s, this node's %s", i+1, p, o, stateOf(template, p))
			}
			n := old.Data["new."+k]
			switch b, ok := override[p]; {
			case ok:
				s := sha256.Sum256(b)
				subst[n] = "sha256:" + hex.EncodeToString(s[:]) // each attempt's new pem is the one kept
				if err := os.WriteFile(filepath.Join(root, p), b, 0o600); err != nil {
					t.Fatal(err)
				}
			case strings.HasPrefix(n, "sha256:"):
				set(n, stateOf(clean, p))
				if done[old.Action] {
					copyPath(t, filepath.Join(clean, p), filepath.Join(root, p))
				}
			default:
				if n != stateOf(clean, p) {
					t.Fatalf("record %d %s: the fixture's new state %s, this version's %s", i+1, p, n, stateOf(clean, p))
				}
				if done[old.Action] {
					copyPath(t, filepath.Join(clean, p), filepath.Join(root, p))
				}
			}
		}
	}
	var out strings.Builder
	for _, l := range lines {
		body := strings.TrimSuffix(l[9:], "\n")
		for from, to := range subst {
			body = strings.ReplaceAll(body, from, to)
		}
		out.WriteString(withChecksum(body) + "\n")
	}
	if !strings.Contains(out.String(), `"path.0":`) || strings.Contains(out.String(), `"changes"`) {
		t.Fatal("the journal made from the fixture is not in the previous version's shape")
	}
	return []byte(out.String())
}
