package journal

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kubecpr/kubecpr/recovery/fsys"
)

// Kind of a record.
type Kind string

const (
	KindRunStart   Kind = "run-start"
	KindOptions    Kind = "options" // live options given anew when an open run continues
	KindStageStart Kind = "stage-start"
	KindIntent     Kind = "intent"
	KindDone       Kind = "done"
	KindFailed     Kind = "failed"
	KindUndoIntent Kind = "undo-intent"
	KindUndone     Kind = "undone"
	KindStageEnd   Kind = "stage-end"
	KindRunEnd     Kind = "run-end"
)

// Record is one journal entry. What a record carries besides its header
// depends on its kind, and is typed where resume and rollback rely on it:
//
//	run-start  Start and Options (a node run), or Cluster (a cluster run)
//	options    Options: live options given anew when an open run continues
//	intent     Changes, for a file action (nil for an action that runs something)
//
// Data holds the free-form rest: an action's facts on done, the error of
// failed, a stage's duration, a run's end status.
type Record struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	RunID  string    `json:"run"`
	Kind   Kind      `json:"kind"`
	Stage  string    `json:"stage,omitempty"`
	Action string    `json:"action,omitempty"`
	// Start: a node run's root, clock and stage selection (run-start).
	Start *Start `json:"start,omitempty"`
	// Options: every option of a node run by flag name, as the run saw
	// them (run-start), or the live options given anew (options).
	Options map[string]string `json:"options,omitempty"`
	// Cluster: what a cluster run was started with (its run-start).
	Cluster *ClusterStart `json:"cluster,omitempty"`
	// Changes: every file a file action changes, in order (its intent).
	// Set, possibly empty, exactly on a file action's intent: "changes":[]
	// is written for an action with no file (omitzero keeps nil apart).
	Changes []Change          `json:"changes,omitzero"`
	Data    map[string]string `json:"data,omitempty"`
}

// ErrCorrupt means the journal is damaged somewhere other than its last
// record: not a crash artefact, so nothing is repaired automatically.
var ErrCorrupt = errors.New("journal is corrupt")

// ErrSecret is returned by Append for a record that holds key material.
var ErrSecret = errors.New("refusing to journal key material")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Repair describes a torn tail cut off by Open.
type Repair struct {
	Truncated  bool
	BrokenCopy string
	Offset     int64 // the journal's new length
}

// Journal is an open, append-only journal file.
type Journal struct {
	mu      sync.Mutex
	path    string
	fsys    fsys.FS
	f       fsys.File
	records []Record
	repair  *Repair
	dirty   bool // records written since the last fsync
	now     func() time.Time
}

// Open opens (creating if needed, 0600 in a 0700 directory) the journal at
// path, validates every record and cuts a torn last record.
func Open(path string) (*Journal, error) { return OpenWithClock(path, time.Now) }

// OpenWithClock is Open with the clock used to stamp records.
func OpenWithClock(path string, now func() time.Time) (*Journal, error) {
	return OpenOn(fsys.OS, path, now)
}

// OpenOn is OpenWithClock writing through fsy (the run's filesystem).
func OpenOn(fsy fsys.FS, path string, now func() time.Time) (*Journal, error) {
	fsy = fsys.Or(fsy)
	dir := filepath.Dir(path)
	if err := fsys.MkdirAll(fsy, dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal directory %s: %w", dir, err)
	}
	_, statErr := os.Stat(path)
	f, err := fsy.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	if errors.Is(statErr, os.ErrNotExist) {
		if err := fsy.SyncDir(dir); err != nil {
			f.Close()
			return nil, err
		}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	recs, good, err := decode(data)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	j := &Journal{path: path, fsys: fsy, f: f, records: recs, now: now}
	if good < int64(len(data)) {
		broken := fmt.Sprintf("%s.broken-%d", path, time.Now().UnixNano())
		if err := writeSynced(fsy, broken, data); err != nil {
			f.Close()
			return nil, fmt.Errorf("journal %s: keeping a copy of the torn tail: %w", path, err)
		}
		if err := f.Truncate(good); err != nil {
			f.Close()
			return nil, fmt.Errorf("journal %s: cutting the torn tail: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, err
		}
		j.repair = &Repair{Truncated: true, BrokenCopy: broken, Offset: good}
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return j, nil
}

// decode parses data and returns the valid records, the byte length they
// occupy, and ErrCorrupt for damage that is not a torn tail.
func decode(data []byte) ([]Record, int64, error) {
	var recs []Record
	var off int64
	line := 0
	for off < int64(len(data)) {
		line++
		rest := data[off:]
		nl := bytes.IndexByte(rest, '\n')
		if nl < 0 {
			return recs, off, nil // torn: no newline
		}
		rec, err := decodeLine(rest[:nl])
		var invalid *invalidError
		if errors.As(err, &invalid) {
			return nil, 0, fmt.Errorf("%w: line %d (byte offset %d): %v; this kubecpr cannot read the record: "+
				"if a newer kubecpr wrote the journal, resume or roll back the run with that version; otherwise restore the node "+
				"from the run's backup with `kubecpr backup restore RUN-ID`", ErrCorrupt, line, off, err)
		}
		if err == nil && rec.Seq != uint64(len(recs))+1 {
			err = fmt.Errorf("sequence %d where %d was expected", rec.Seq, len(recs)+1)
		}
		if err != nil {
			if off+int64(nl)+1 == int64(len(data)) && !strings.HasPrefix(err.Error(), "sequence") {
				return recs, off, nil // torn last record
			}
			return nil, 0, fmt.Errorf("%w: line %d (byte offset %d): %v; the journal is damaged before its last record: "+
				"inspect it, then restore the node with `kubecpr backup restore RUN-ID` from the run's backup", ErrCorrupt, line, off, err)
		}
		recs = append(recs, rec)
		off += int64(nl) + 1
	}
	return recs, off, nil
}

// invalidError is a record whose checksum holds but whose content this
// kubecpr cannot use (an unknown change state, an old-format record that
// does not convert): written whole, so never a torn tail to cut.
type invalidError struct{ err error }

func (e *invalidError) Error() string { return e.err.Error() }
func (e *invalidError) Unwrap() error { return e.err }

func decodeLine(b []byte) (Record, error) {
	var rec Record
	if len(b) < 10 || b[8] != ' ' {
		return rec, errors.New("malformed record")
	}
	var sum uint32
	if _, err := fmt.Sscanf(string(b[:8]), "%08x", &sum); err != nil {
		return rec, errors.New("malformed checksum")
	}
	body := b[9:]
	if crc32.Checksum(body, castagnoli) != sum {
		return rec, errors.New("checksum mismatch")
	}
	if err := json.Unmarshal(body, &rec); err != nil {
		var unknown *UnknownStateError
		if errors.As(err, &unknown) {
			return rec, &invalidError{fmt.Errorf("%s record of %q: %w", rec.Kind, rec.Action, err)}
		}
		return rec, fmt.Errorf("bad JSON: %v", err)
	}
	if err := upgrade(&rec); err != nil {
		return rec, &invalidError{fmt.Errorf("record %d (%s %s): %w", rec.Seq, rec.Kind, rec.Action, err)}
	}
	return rec, nil
}

func encode(rec Record) ([]byte, error) {
	body, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	if containsSecret(body) {
		return nil, ErrSecret
	}
	return append([]byte(fmt.Sprintf("%08x ", crc32.Checksum(body, castagnoli))), append(body, '\n')...), nil
}

// ReadFile decodes a journal read-only (for status): a torn tail is ignored,
// not cut. A missing file has no records.
func ReadFile(path string) ([]Record, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	recs, _, err := decode(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return recs, nil
}

// Records returns a copy of every valid record, in order.
func (j *Journal) Records() []Record {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]Record(nil), j.records...)
}

// Repaired reports a torn tail cut by Open, or nil.
func (j *Journal) Repaired() *Repair { return j.repair }

// Path is the journal's file path.
func (j *Journal) Path() string { return j.path }

// containsSecret checks a record's encoded JSON, so that every field,
// typed or free-form, is covered: PEM armour or the words PRIVATE KEY
// anywhere (JSON escapes neither).
func containsSecret(body []byte) bool {
	return bytes.Contains(body, []byte("PRIVATE KEY")) || bytes.Contains(body, []byte("-----BEGIN"))
}

// Append stamps, encodes and durably writes a record (write + fsync)
// before returning it; records appended lazily before it become durable
// with it.
func (j *Journal) Append(r Record) (Record, error) { return j.append(r, true) }

// AppendLazy writes a record without its own fsync: it becomes durable
// with the next Append, Sync or Close. For records whose loss a power cut
// may cause without harm (an action's done record: resume verifies the
// files, rollback restores them).
func (j *Journal) AppendLazy(r Record) (Record, error) { return j.append(r, false) }

// Sync makes the records appended lazily durable.
func (j *Journal) Sync() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.syncLocked()
}

func (j *Journal) syncLocked() error {
	if j.f == nil || !j.dirty {
		return nil
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("journal %s: fsync: %w", j.path, err)
	}
	j.dirty = false
	return nil
}

func (j *Journal) append(r Record, durable bool) (Record, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return Record{}, errors.New("journal is closed")
	}
	r.Seq = uint64(len(j.records)) + 1
	r.Time = j.now().UTC()
	line, err := encode(r)
	if err != nil {
		return Record{}, err // ErrSecret: nothing written
	}
	if _, err := j.f.Write(line); err != nil {
		return Record{}, fmt.Errorf("journal %s: write: %w", j.path, err)
	}
	j.dirty = true
	if durable {
		if err := j.syncLocked(); err != nil {
			return Record{}, err
		}
	}
	j.records = append(j.records, r)
	return r, nil
}

// Close closes the journal file.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	serr := j.syncLocked()
	err := j.f.Close()
	j.f = nil
	return errors.Join(serr, err)
}

// writeSynced writes a new file (0600) and makes it and its directory
// entry durable.
func writeSynced(fsy fsys.FS, path string, data []byte) error {
	f, err := fsy.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return fsy.SyncDir(filepath.Dir(path))
}
