package journal

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
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

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// line is a journal line holding body verbatim: what another version of
// kubecpr wrote.
func line(body string) string {
	return fmt.Sprintf("%08x %s\n", crc32.Checksum([]byte(body), castagnoli), body)
}

// v1 is a fixture written by kubecpr before records were typed (see
// testdata/journal-v1/README.md).
func v1(t *testing.T, name string) string {
	t.Helper()
	return filepath.Join(fuzzseed.ModuleTestdata(t), "journal-v1", name)
}

// rawRecord is a line of a journal read without this package: the JSON as
// it is on disk.
type rawRecord struct {
	Seq    uint64            `json:"seq"`
	Kind   Kind              `json:"kind"`
	Action string            `json:"action"`
	Data   map[string]string `json:"data"`
}

func rawRecords(t *testing.T, path string) []rawRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []rawRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r rawRecord
		if err := json.Unmarshal(sc.Bytes()[9:], &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// A journal written by the previous kubecpr (an open run: killed in the
// certs stage, resumed with a live option given anew, killed again with
// the kubelet's client pem in flight) reads as typed records: every
// path.N/old.N/new.N of an intent becomes its Changes in order, the
// run-start's root/now/selection and JSON-in-a-string options become Start
// and Options, the options record's become Options; the free-form facts
// stay in Data and nothing of the old keys is left there.
func TestV1JournalReadsAsTypedRecords(t *testing.T) {
	p := v1(t, "interrupted-resume.log")
	raw := rawRecords(t, p)
	recs, err := ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(raw) || len(recs) != 39 {
		t.Fatalf("%d records read, %d lines in the fixture (want 39)", len(recs), len(raw))
	}
	converted := 0
	for i, rec := range recs {
		r := raw[i]
		if rec.Seq != r.Seq || rec.Kind != r.Kind || rec.Action != r.Action {
			t.Fatalf("record %d: %d %s %s, on disk %d %s %s", i, rec.Seq, rec.Kind, rec.Action, r.Seq, r.Kind, r.Action)
		}
		for k := range rec.Data {
			if k == "files" || k == "root" || k == "now" || k == "selection" || k == "options" ||
				strings.HasPrefix(k, "path.") || strings.HasPrefix(k, "old.") || strings.HasPrefix(k, "new.") {
				t.Errorf("record %d keeps the old key %q in Data", rec.Seq, k)
			}
		}
		for k, v := range rec.Data {
			if r.Data[k] != v {
				t.Errorf("record %d: Data[%q] = %q, on disk %q", rec.Seq, k, v, r.Data[k])
			}
		}
		n, isFile := r.Data["files"]
		if !isFile {
			if rec.Changes != nil {
				t.Errorf("record %d (%s %s) has changes, none on disk", rec.Seq, rec.Kind, rec.Action)
			}
			continue
		}
		converted++
		if !rec.FileIntent() || fmt.Sprint(len(rec.Changes)) != n {
			t.Fatalf("record %d: %d changes, files=%s on disk", rec.Seq, len(rec.Changes), n)
		}
		for j, c := range rec.Changes {
			k := fmt.Sprint(j)
			if c.Path != r.Data["path."+k] || c.Old.String() != r.Data["old."+k] || c.New.String() != r.Data["new."+k] {
				t.Errorf("record %d change %d: %s %s → %s, on disk %s %s → %s", rec.Seq, j, c.Path, c.Old, c.New,
					r.Data["path."+k], r.Data["old."+k], r.Data["new."+k])
			}
		}
	}
	if converted != 11 {
		t.Errorf("%d file intents converted, want 11", converted)
	}

	wantStart := &Start{Root: "/tmp/node-v1", Now: time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC), Selection: "from=;until=kubeconfigs"}
	if diff := cmp.Diff(wantStart, recs[0].Start); diff != "" {
		t.Errorf("run-start (-want +got):\n%s", diff)
	}
	if o := recs[0].Options; o["validity"] != "48h0m0s" || o["update-user-kubeconfigs"] != "true" || o["now"] != "2026-11-22T03:00:00Z" || len(o) < 20 {
		t.Errorf("run-start options: %v", o)
	}
	if diff := cmp.Diff(map[string]string{"component-timeout": "6m0s"}, recs[20].Options); recs[20].Kind != KindOptions || diff != "" {
		t.Errorf("record 21 (%s): options (-want +got):\n%s", recs[20].Kind, diff)
	}
	last := recs[len(recs)-1]
	wantLast := []Change{
		{Path: "/var/lib/kubelet/pki/kubelet-client-2026-11-22-03-00-00.pem", Old: Absent(),
			New: FileSum("3ac23806215a543c6b8875d27a96956076e45d85c2398d38d935d142bcab4697")},
		{Path: "/var/lib/kubelet/pki/kubelet-client-current.pem", Old: LinkTo("/var/lib/kubelet/pki/kubelet-client-2025-11-19-03-00-00.pem"),
			New: LinkTo("/var/lib/kubelet/pki/kubelet-client-2026-11-22-03-00-00.pem")},
	}
	if diff := cmp.Diff(wantLast, last.Changes); last.Action != "kubeconfigs/kubelet-client-current.pem" || diff != "" {
		t.Errorf("in-flight intent %s (-want +got):\n%s", last.Action, diff)
	}

	// The run goes on in the new shape after the old records, which stay
	// as they were written; the mixed journal reads back the same.
	cp := filepath.Join(t.TempDir(), "journal.log")
	before, _ := os.ReadFile(p)
	os.WriteFile(cp, before, 0o600)
	j, err := Open(cp)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(recs, j.Records()); diff != "" {
		t.Fatalf("Open and ReadFile differ (-ReadFile +Open):\n%s", diff)
	}
	done, err := j.Append(Record{RunID: last.RunID, Kind: KindIntent, Stage: "kubeconfigs", Action: last.Action, Changes: last.Changes})
	if err != nil {
		t.Fatal(err)
	}
	j.Close()
	after, _ := os.ReadFile(cp)
	if !bytes.HasPrefix(after, before) {
		t.Fatal("appending changed the old records")
	}
	if tail := string(after[len(before):]); !strings.Contains(tail, `"changes":[{"path":"/var/lib/kubelet/pki/kubelet-client-2026-11-22-03-00-00.pem","old":"absent","new":"sha256:3ac2`) {
		t.Errorf("new record not in the typed shape: %s", tail)
	}
	again, err := ReadFile(cp)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(append(recs, done), again); diff != "" {
		t.Errorf("mixed journal (-want +got):\n%s", diff)
	}
}

// The previous kubecpr's cluster journal kept its start record as a JSON
// string in Data["options"]: it reads as the typed Cluster record.
func TestV1ClusterJournalReadsAsTypedRecords(t *testing.T) {
	recs, err := ReadFile(v1(t, "cluster-interrupted.log"))
	if err != nil {
		t.Fatal(err)
	}
	want := &ClusterStart{Inventory: "/tmp/cluster-v1/inventory.yaml",
		InventorySHA256: "db6548f3f2678115e65370870fb1ba5a79e9cd397a28811a4edb7178584d5eb2",
		GlobalArgs:      []string{"--now", "2026-11-22T03:00:00Z"}, RunArgs: []string{"--update-user-kubeconfigs=true"},
		Workers: "bundle", CAFrom: "cp-1", Parallel: 10}
	if len(recs) != 3 || recs[0].Kind != KindRunStart || recs[0].Data != nil || recs[0].Start != nil || recs[0].Options != nil {
		t.Fatalf("records: %+v", recs)
	}
	if diff := cmp.Diff(want, recs[0].Cluster); diff != "" {
		t.Errorf("cluster run-start (-want +got):\n%s", diff)
	}
}

// A record whose checksum holds but which holds a change state this
// kubecpr does not know (a journal from a newer kubecpr, or edited) is
// refused with a message that says so, never guessed at and never cut off
// as a torn tail, in the new shape and the old alike.
func TestUnknownChangeStateIsRefused(t *testing.T) {
	const head = `{"seq":3,"time":"2026-11-22T03:00:03Z","run":"r1","kind":"intent","stage":"certs","action":"certs/x",`
	cases := map[string]struct {
		body string
		want string
	}{
		"unknown kind": {head + `"changes":[{"path":"/a","old":"absent","new":"blake3:abcd"}]}`, `unknown file state "blake3:abcd"`},
		"bad sha256":   {head + `"changes":[{"path":"/a","old":"sha256:xyz","new":"absent"}]}`, `unknown file state "sha256:xyz"`},
		"upper hex":    {head + `"changes":[{"path":"/a","old":"sha256:` + strings.ToUpper(sum("a")) + `","new":"absent"}]}`, "unknown file state"},
		"empty state":  {head + `"changes":[{"path":"/a","old":"","new":"absent"}]}`, `unknown file state ""`},
		"link nowhere": {head + `"changes":[{"path":"/a","old":"absent","new":"link:"}]}`, `unknown file state "link:"`},
		"old format":   {head + `"data":{"files":"1","path.0":"/a","old.0":"absent","new.0":"md5:abcd"}}`, `unknown file state "md5:abcd"`},
		"old, missing": {head + `"data":{"files":"2","path.0":"/a","old.0":"absent","new.0":"absent","path.1":"/b","old.1":"absent"}}`, "file 1 of 2 lacks"},
		"old, count":   {head + `"data":{"files":"x","path.0":"/a","old.0":"absent","new.0":"absent"}}`, `files "x"`},
	}
	for name, tc := range cases {
		for _, where := range []string{"last", "middle"} {
			t.Run(name+"/"+where, func(t *testing.T) {
				dir := t.TempDir()
				p := filepath.Join(dir, "journal.log")
				fill(t, p, 2)
				data, _ := os.ReadFile(p)
				data = append(data, line(tc.body)...)
				if where == "middle" {
					data = append(data, line(`{"seq":4,"time":"2026-11-22T03:00:04Z","run":"r1","kind":"done","action":"certs/x"}`)...)
				}
				os.WriteFile(p, data, 0o600)
				_, err := Open(p)
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "line 3") {
					t.Fatalf("Open: %v; want ErrCorrupt naming line 3 and %q", err, tc.want)
				}
				if _, err := ReadFile(p); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("ReadFile: %v", err)
				}
				after, _ := os.ReadFile(p)
				broken, _ := filepath.Glob(p + ".broken-*")
				if !bytes.Equal(after, data) || len(broken) > 0 {
					t.Fatal("the refused record was cut off as a torn tail")
				}
			})
		}
	}
}

// An intent cannot be journaled without what it promises: the zero State
// is refused and nothing is written.
func TestZeroStateIsNotJournaled(t *testing.T) {
	p := filepath.Join(t.TempDir(), "journal.log")
	fill(t, p, 1)
	before, _ := os.ReadFile(p)
	j, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, err := j.Append(Record{Kind: KindIntent, Changes: []Change{{Path: "/a", Old: Absent()}}}); err == nil {
		t.Fatal("an intent without its new state was journaled")
	}
	if r, err := j.Append(Record{Kind: KindDone}); err != nil || r.Seq != 2 {
		t.Fatalf("next append: seq %d, %v", r.Seq, err)
	}
	after, _ := os.ReadFile(p)
	if n := bytes.Count(after[len(before):], []byte("\n")); n != 1 {
		t.Fatalf("%d records written after the refused one, want 1", n)
	}
}

// A file action's intent without files (Changes empty, not nil) stays one
// when read back; an action that runs something has no Changes.
func TestFileIntentSurvivesTheJournal(t *testing.T) {
	p := filepath.Join(t.TempDir(), "journal.log")
	j, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	changes := []Change{
		{Path: "/etc/kubernetes/pki/apiserver.crt", Old: FileSum(sum("old")), New: FileSum(sum("new"))},
		{Path: "/var/lib/kubelet/pki/kubelet-client-current.pem", Old: LinkTo("a.pem"), New: LinkTo("/b:c.pem")},
		{Path: "/var/lib/kubelet/pki/new.pem", Old: Absent(), New: FileSum(sum("x"))},
		{Path: "/etc/kubernetes/odd", Old: OtherMode(os.ModeDir | 0o755), New: FileSum(sum("y"))},
	}
	for _, r := range []Record{
		{Kind: KindIntent, Action: "files/none", Changes: []Change{}},
		{Kind: KindIntent, Action: "run/restart"},
		{Kind: KindIntent, Action: "files/four", Changes: changes},
	} {
		if _, err := j.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	recs, err := ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !recs[0].FileIntent() || recs[0].Changes == nil || len(recs[0].Changes) != 0 {
		t.Errorf("file intent without files read back as %+v", recs[0])
	}
	if recs[1].FileIntent() {
		t.Errorf("run action's intent read back as a file intent: %+v", recs[1])
	}
	if diff := cmp.Diff(changes, recs[2].Changes); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	if got := recs[2].Changes[3].Old.String(); got != "other:drwxr-xr-x" {
		t.Errorf("other state written as %q", got)
	}
}

func TestParseState(t *testing.T) {
	for _, s := range []string{"absent", "sha256:" + sum("a"), "link:/x/y", "link:relative:with:colons", "other:drwxr-xr-x", "other:prw-------"} {
		st, err := ParseState(s)
		if err != nil || st.String() != s {
			t.Errorf("ParseState(%q) = %v, %v", s, st, err)
		}
	}
	for _, s := range []string{"", "absent:", "Absent", "sha256:", "sha256:" + sum("a")[:63], "sha256:" + sum("a") + "0", "link:", "other:", "file:/x", "none"} {
		var unknown *UnknownStateError
		if _, err := ParseState(s); !errors.As(err, &unknown) {
			t.Errorf("ParseState(%q): %v, want an UnknownStateError", s, err)
		}
	}
}
