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

	"github.com/kubecpr/kubecpr/test/fuzzseed"
)

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
// for what names this node's bytes: the same two interruptions are made
// here by this version on a generated node (keys are never committed), and
// the fixture's run id, root and sha256 states are replaced by this node's
// — record by record, path by path, so the two must line up — and every
// line's checksum recomputed. The journal installed is in the old shape.
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

	// The in-flight pem: a power cut kept its bytes, not the link's change
	// (the redo removes it and writes it again; rollback removes it).
	const pem = "/var/lib/kubelet/pki/kubelet-client-2026-11-22-03-00-00.pem"
	kept := []byte("the interrupted attempt's new pem, as the disk kept it\n")

	interrupted := func(t *testing.T) string {
		t.Helper()
		root := copyNode(t, template)
		if r := kubecpr(t, []string{"KUBECPR_CRASH_AFTER_RECORD=20"}, rootArgs(root, runArgs...)...); !r.killed {
			t.Fatalf("run not killed: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if r := kubecpr(t, []string{"KUBECPR_CRASH_AFTER_RECORD=19"}, rootArgs(root, "resume", "--component-timeout", "6m")...); !r.killed {
			t.Fatalf("resume not killed: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		jp := filepath.Join(root, "var/lib/kubecpr/runs", currentRun(t, root), "journal.log")
		if err := os.WriteFile(jp, v1JournalFor(t, fixture, root, map[string][]byte{pem: kept}), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, pem), kept, 0o600); err != nil {
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

// v1JournalFor is the fixture made to describe the node at root: its run
// id, root and sha256 states replaced by those of the journal this version
// wrote there, which must have the same records, actions and paths; a
// path in override gets the sha256 of its bytes as its new state.
func v1JournalFor(t *testing.T, fixture []byte, root string, override map[string][]byte) []byte {
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
	if len(lines) != len(mine) {
		t.Fatalf("the fixture has %d records, this version wrote %d for the same interruptions: "+
			"the runs no longer line up (regenerate testdata/journal-v1 as its README says, or make the interruptions match)", len(lines), len(mine))
	}
	subst := map[string]string{}
	set := func(from, to string) {
		if prev, ok := subst[from]; ok && prev != to {
			t.Fatalf("fixture state %s stands for both %s and %s on this node", from, prev, to)
		}
		subst[from] = to
	}
	for i, l := range lines {
		var old v1Record
		if err := json.Unmarshal([]byte(l[9:]), &old); err != nil {
			t.Fatalf("fixture line %d: %v", i+1, err)
		}
		rec := mine[i]
		if string(rec.Kind) != old.Kind || rec.Stage != old.Stage || rec.Action != old.Action {
			t.Fatalf("record %d: this version wrote %s %s %s, the fixture %s %s %s", i+1, rec.Kind, rec.Stage, rec.Action, old.Kind, old.Stage, old.Action)
		}
		set(old.Run, rec.RunID)
		if old.Kind == "run-start" {
			set(old.Data["root"], root)
		}
		if _, files := old.Data["files"]; !files {
			continue
		}
		if fmt.Sprint(len(rec.Changes)) != old.Data["files"] {
			t.Fatalf("record %d (%s): %d changes, the fixture's files=%s", i+1, rec.Action, len(rec.Changes), old.Data["files"])
		}
		for j, c := range rec.Changes {
			k := fmt.Sprint(j)
			if old.Data["path."+k] != c.Path {
				t.Fatalf("record %d change %d: path %s, the fixture's %s", i+1, j, c.Path, old.Data["path."+k])
			}
			for _, st := range [][2]string{{old.Data["old."+k], c.Old.String()}, {old.Data["new."+k], c.New.String()}} {
				if strings.HasPrefix(st[0], "sha256:") {
					set(st[0], st[1])
				} else if st[0] != st[1] {
					t.Fatalf("record %d %s: state %s, the fixture's %s", i+1, c.Path, st[1], st[0])
				}
			}
			if b, ok := override[c.Path]; ok {
				s := sha256.Sum256(b)
				subst[old.Data["new."+k]] = "sha256:" + hex.EncodeToString(s[:])
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
