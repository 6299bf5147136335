package journal

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/kubecpr/kubecpr/test/fuzzseed"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var t0 = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)

func clock() func() time.Time {
	n := 0
	return func() time.Time { n++; return t0.Add(time.Duration(n) * time.Second) }
}

func fill(t *testing.T, path string, n int) []Record {
	t.Helper()
	j, err := OpenWithClock(path, clock())
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var out []Record
	for i := 0; i < n; i++ {
		r, err := j.Append(Record{RunID: "r1", Kind: KindIntent, Stage: "certs", Action: fmt.Sprintf("certs/a%d", i),
			Changes: []Change{{Path: "/etc/kubernetes/pki/apiserver.crt", Old: FileSum(sum("old")), New: FileSum(sum("new"))}}})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func TestRoundTripAndSequence(t *testing.T) {
	p := filepath.Join(t.TempDir(), "j", "journal.log")
	want := fill(t, p, 5)
	j, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, j.Records()); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	r, err := j.Append(Record{Kind: KindDone})
	if err != nil || r.Seq != 6 {
		t.Fatalf("append after reopen: seq %d err %v", r.Seq, err)
	}
	j.Close()
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Errorf("journal mode %v", st.Mode().Perm())
	}
	if st, _ := os.Stat(filepath.Dir(p)); st.Mode().Perm() != 0o700 {
		t.Errorf("journal dir mode %v", st.Mode().Perm())
	}
}

// Cutting the file anywhere inside its last record is what a crash during
// an append leaves: Open recovers exactly the records before it.
func TestTornTailAtEveryOffset(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "journal.log")
	want := fill(t, p, 4)
	full, _ := os.ReadFile(p)
	lastStart := bytes.LastIndexByte(full[:len(full)-1], '\n') + 1
	for cut := lastStart + 1; cut < len(full); cut++ {
		cp := filepath.Join(dir, fmt.Sprintf("cut-%d.log", cut))
		os.WriteFile(cp, full[:cut], 0o600)
		j, err := Open(cp)
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		if diff := cmp.Diff(want[:3], j.Records()); diff != "" {
			t.Fatalf("cut at %d (-want +got):\n%s", cut, diff)
		}
		rep := j.Repaired()
		if rep == nil || !rep.Truncated || rep.Offset != int64(lastStart) {
			t.Fatalf("cut at %d: repair %+v", cut, rep)
		}
		if b, _ := os.ReadFile(rep.BrokenCopy); !bytes.Equal(b, full[:cut]) {
			t.Fatalf("cut at %d: .broken copy differs from the original", cut)
		}
		if r, err := j.Append(Record{Kind: KindDone}); err != nil || r.Seq != 4 {
			t.Fatalf("cut at %d: append %v seq %d", cut, err, r.Seq)
		}
		j.Close()
		if recs, err := ReadFile(cp); err != nil || len(recs) != 4 {
			t.Fatalf("cut at %d: after repair+append: %d records, %v", cut, len(recs), err)
		}
	}
	// a flipped byte in the last record (complete line) is also torn
	flipped := append([]byte(nil), full...)
	flipped[len(flipped)-5] ^= 0x20
	fp := filepath.Join(dir, "flip-last.log")
	os.WriteFile(fp, flipped, 0o600)
	if j, err := Open(fp); err != nil || len(j.Records()) != 3 {
		t.Fatalf("flipped last record: %v", err)
	}
}

func TestCorruptionBeforeTheEnd(t *testing.T) {
	p := filepath.Join(t.TempDir(), "journal.log")
	fill(t, p, 4)
	data, _ := os.ReadFile(p)
	data[20] ^= 0x01 // inside record 1
	os.WriteFile(p, data, 0o600)
	_, err := Open(p)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}
	after, _ := os.ReadFile(p)
	if !bytes.Equal(after, data) {
		t.Fatal("Open changed a corrupt journal")
	}
	if _, err := ReadFile(p); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ReadFile err = %v", err)
	}
}

func TestSequenceGapIsCorrupt(t *testing.T) {
	p := filepath.Join(t.TempDir(), "journal.log")
	fill(t, p, 3)
	data, _ := os.ReadFile(p)
	lines := bytes.SplitAfter(data, []byte("\n"))
	// drop record 2: 1, 3 remain plus an empty tail
	os.WriteFile(p, append(append([]byte{}, lines[0]...), lines[2]...), 0o600)
	if _, err := Open(p); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}
}

func TestSecretsRefused(t *testing.T) {
	p := filepath.Join(t.TempDir(), "journal.log")
	fill(t, p, 1)
	before, _ := os.ReadFile(p)
	j, _ := Open(p)
	defer j.Close()
	// Every field a record has, typed or free-form.
	fields := map[string]func(v string) Record{
		"data value": func(v string) Record { return Record{Kind: KindDone, Data: map[string]string{"x": v}} },
		"data key":   func(v string) Record { return Record{Kind: KindDone, Data: map[string]string{v: "x"}} },
		"action":     func(v string) Record { return Record{Kind: KindIntent, Action: v} },
		"change path": func(v string) Record {
			return Record{Kind: KindIntent, Changes: []Change{{Path: v, Old: Absent(), New: FileSum(sum("x"))}}}
		},
		"change link": func(v string) Record {
			return Record{Kind: KindIntent, Changes: []Change{{Path: "/a", Old: Absent(), New: LinkTo(v)}}}
		},
		"option value": func(v string) Record { return Record{Kind: KindOptions, Options: map[string]string{"csr-dir": v}} },
		"option name":  func(v string) Record { return Record{Kind: KindOptions, Options: map[string]string{v: "x"}} },
		"start root":   func(v string) Record { return Record{Kind: KindRunStart, Start: &Start{Root: v}} },
		"start sel":    func(v string) Record { return Record{Kind: KindRunStart, Start: &Start{Selection: v}} },
		"cluster args": func(v string) Record {
			return Record{Kind: KindRunStart, Cluster: &ClusterStart{RunArgs: []string{"--x", v}}}
		},
		"cluster source": func(v string) Record { return Record{Kind: KindRunStart, Cluster: &ClusterStart{Inventory: v}} },
	}
	for name, rec := range fields {
		for _, v := range []string{"-----BEGIN EC PRIVATE" + " KEY-----\nMHcCAQEE\n-----END EC PRIVATE" + " KEY-----", "RSA PRIVATE KEY", "-----BEGIN CERTIFICATE-----"} {
			if _, err := j.Append(rec(v)); !errors.Is(err, ErrSecret) {
				t.Errorf("%s %.20q: err = %v, want ErrSecret", name, v, err)
			}
		}
	}
	after, _ := os.ReadFile(p)
	if !bytes.Equal(before, after) {
		t.Fatal("a refused record changed the file")
	}
}

func TestLockHeldAndReleased(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(dir, t0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Acquire(dir, t0)
	var held *HeldError
	if !errors.As(err, &held) || held.PID != os.Getpid() || !held.Started.Equal(t0) {
		t.Fatalf("second Acquire: %v (%+v)", err, held)
	}
	l.Release()
	l2, err := Acquire(dir, t0)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	l2.Release()
}

// A holder killed with SIGKILL leaves its lock file, not its lock.
func TestLockFreedWhenHolderIsKilled(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLockHolder$")
	cmd.Env = append(os.Environ(), "JOURNAL_LOCK_DIR="+dir)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := stdout.Read(buf); err != nil || string(buf[:6]) != "locked" {
		t.Fatalf("helper did not lock: %q %v", buf, err)
	}
	if _, err := Acquire(dir, t0); err == nil {
		t.Fatal("acquired a lock held by a live process")
	}
	cmd.Process.Kill()
	cmd.Wait()
	l, err := Acquire(dir, t0)
	if err != nil {
		t.Fatalf("lock not freed by the holder's death: %v", err)
	}
	l.Release()
}

func TestHelperLockHolder(t *testing.T) {
	dir := os.Getenv("JOURNAL_LOCK_DIR")
	if dir == "" {
		return // only meaningful as the child of TestLockFreedWhenHolderIsKilled
	}
	if _, err := Acquire(dir, t0); err != nil {
		os.Exit(3)
	}
	os.Stdout.WriteString("locked")
	time.Sleep(time.Minute)
}

func FuzzDecode(f *testing.F) {
	dir := f.TempDir()
	p := filepath.Join(dir, "seed.log")
	j, _ := Open(p)
	for i := 0; i < 3; i++ {
		j.Append(Record{Kind: KindIntent, Action: fmt.Sprint(i), Data: map[string]string{"k": "v"}})
	}
	j.Close()
	good, _ := os.ReadFile(p)
	f.Add(good)
	f.Add(good[:len(good)-7])
	f.Add([]byte("00000000 {}\n"))
	fuzzseed.AddSeeds(f, "journal") // real runs' journals, torn and damaged ones
	f.Fuzz(func(t *testing.T, data []byte) {
		var recs []Record
		var n int64
		var err error
		fuzzseed.Bounded(t, "decode", func() { recs, n, err = decode(data) })
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode error is not ErrCorrupt: %v", err)
			}
			return
		}
		if n > int64(len(data)) {
			t.Fatalf("valid length %d > input %d", n, len(data))
		}
		for i, r := range recs {
			if r.Seq != uint64(i+1) {
				t.Fatalf("record %d has seq %d", i, r.Seq)
			}
		}
		// What Open keeps (the first n bytes) decodes to the same records
		// with nothing cut: a repaired journal is a clean one.
		again, n2, err := decode(data[:n])
		if err != nil || n2 != n || len(again) != len(recs) {
			t.Fatalf("the valid prefix does not decode to itself: %d records, %d bytes, %v (want %d, %d)", len(again), n2, err, len(recs), n)
		}
		// Every record read back re-encodes to a journal that decodes to
		// the same records.
		var enc []byte
		for _, r := range recs {
			line, err := encode(r)
			if err != nil {
				t.Fatalf("record %d does not re-encode: %v", r.Seq, err)
			}
			enc = append(enc, line...)
		}
		back, n3, err := decode(enc)
		if err != nil || n3 != int64(len(enc)) {
			t.Fatalf("re-encoded records do not decode: %v (%d of %d bytes)", err, n3, len(enc))
		}
		if diff := cmp.Diff(recs, back, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("records change through encode/decode (-read +re-read):\n%s", diff)
		}
	})
}
