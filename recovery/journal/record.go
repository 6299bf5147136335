package journal

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"
)

// Change is one file of a file action's intent: the node path, what it
// held before the action and what the action makes it hold.
type Change struct {
	Path string `json:"path"`
	Old  State  `json:"old"`
	New  State  `json:"new"`
}

// StateKind says what a path holds.
type StateKind uint8

const (
	// StateAbsent: nothing at the path.
	StateAbsent StateKind = iota + 1
	// StateFile: a regular file, known by the sha256 of its bytes.
	StateFile
	// StateLink: a symbolic link, known by its target.
	StateLink
	// StateOther: something kubecpr never writes (a directory, a device),
	// known by its mode; only ever an old state.
	StateOther
)

// State is what a node path holds, as an intent records it (never the
// content: a file is known by its sha256). Two states are equal when the
// path holds the same thing; the zero State is no state and is refused
// when journaled.
//
// In the journal a state is one string: `absent`, `sha256:<hex>`,
// `link:<target>` or `other:<mode>`.
type State struct {
	Kind   StateKind
	SHA256 string // StateFile: 64 lowercase hex digits
	Target string // StateLink
	Mode   string // StateOther: the fs.FileMode string
}

// Absent is the state of a path with nothing at it.
func Absent() State { return State{Kind: StateAbsent} }

// FileSum is the state of a regular file whose sha256 (hex) is sum.
func FileSum(sum string) State { return State{Kind: StateFile, SHA256: sum} }

// LinkTo is the state of a symbolic link to target.
func LinkTo(target string) State { return State{Kind: StateLink, Target: target} }

// OtherMode is the state of something that is neither a regular file nor
// a link (a directory, a device).
func OtherMode(m fs.FileMode) State { return State{Kind: StateOther, Mode: m.String()} }

// IsAbsent reports whether nothing is at the path.
func (s State) IsAbsent() bool { return s.Kind == StateAbsent }

// IsLink reports whether the path holds a symbolic link.
func (s State) IsLink() bool { return s.Kind == StateLink }

// String is the state as the journal writes it.
func (s State) String() string {
	switch s.Kind {
	case StateAbsent:
		return "absent"
	case StateFile:
		return "sha256:" + s.SHA256
	case StateLink:
		return "link:" + s.Target
	case StateOther:
		return "other:" + s.Mode
	}
	return fmt.Sprintf("invalid state %d", s.Kind)
}

// UnknownStateError is a change state this kubecpr does not know: a
// journal written by a newer kubecpr, or edited. Such a record is refused,
// never guessed at, and never taken for a torn write.
type UnknownStateError struct{ State string }

func (e *UnknownStateError) Error() string {
	return fmt.Sprintf("unknown file state %q (this kubecpr knows absent, sha256:<64 hex digits>, link:<target> and other:<mode>)", e.State)
}

// ParseState reads a state as the journal writes it.
func ParseState(s string) (State, error) {
	kind, val, _ := strings.Cut(s, ":")
	switch {
	case s == "absent":
		return Absent(), nil
	case kind == "sha256" && len(val) == 64 && isLowerHex(val):
		return FileSum(val), nil
	case kind == "link" && val != "":
		return LinkTo(val), nil
	case kind == "other" && val != "":
		return State{Kind: StateOther, Mode: val}, nil
	}
	return State{}, &UnknownStateError{State: s}
}

func isLowerHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// MarshalText writes the state; the zero State is refused, so an intent
// can never be journaled without what it promises.
func (s State) MarshalText() ([]byte, error) {
	if _, err := ParseState(s.String()); err != nil {
		return nil, fmt.Errorf("journaling a change: %w", err)
	}
	return []byte(s.String()), nil
}

// UnmarshalText reads a state; an unknown one is an *UnknownStateError.
func (s *State) UnmarshalText(b []byte) error {
	st, err := ParseState(string(b))
	if err != nil {
		return err
	}
	*s = st
	return nil
}

// Start is what a node run's run-start record keeps besides its options:
// the node's root, the run's clock and its stage selection.
type Start struct {
	Root      string    `json:"root"`
	Now       time.Time `json:"now"`
	Selection string    `json:"selection"` // "only=..." or "from=...;until=..."
}

// ClusterStart is what a cluster run's run-start record keeps: resume and
// rollback of the cluster run work with exactly these.
type ClusterStart struct {
	Inventory       string   `json:"inventory"`
	InventorySHA256 string   `json:"inventorySHA256"`
	GlobalArgs      []string `json:"globalArgs"`
	RunArgs         []string `json:"runArgs"`
	LiveArgs        []string `json:"liveArgs"`
	Workers         string   `json:"workers"`
	CAFrom          string   `json:"caFrom,omitempty"`
	Parallel        int      `json:"parallel,omitempty"`
}

// FileIntent reports whether r is the intent of a file action (its
// Changes are set, possibly empty), as opposed to an action that runs
// something (a restart, the backup).
func (r Record) FileIntent() bool { return r.Kind == KindIntent && r.Changes != nil }

// Journals written before the records were typed (kubecpr before
// fb02d0a) kept everything in Data, as strings:
//
//	run-start (node)     root, now (RFC 3339), selection, options (JSON: flag → value)
//	run-start (cluster)  options (JSON of ClusterStart)
//	options              options (JSON: flag → value)
//	intent (file action) files (N), and for i < N: path.i, old.i, new.i
//
// upgrade converts such a record on read into the typed fields, so that
// an operator who upgrades kubecpr in the middle of an incident resumes or
// rolls back the open run. Records are never rewritten on disk: the new
// ones are appended in the new shape beside the old.
func upgrade(r *Record) error {
	if len(r.Data) == 0 {
		return nil
	}
	take := func(k string) (string, bool) {
		v, ok := r.Data[k]
		delete(r.Data, k)
		return v, ok
	}
	defer func() {
		if len(r.Data) == 0 {
			r.Data = nil
		}
	}()
	switch r.Kind {
	case KindIntent:
		n, ok := r.Data["files"]
		if !ok {
			return nil
		}
		if r.Changes != nil {
			return errors.New("a file intent with both changes and the old files/path.N fields")
		}
		count, err := strconv.Atoi(n)
		if err != nil || count < 0 || count > len(r.Data) {
			return fmt.Errorf("old-format file intent: files %q", n)
		}
		take("files")
		r.Changes = make([]Change, 0, count)
		for i := 0; i < count; i++ {
			k := strconv.Itoa(i)
			p, okP := take("path." + k)
			o, okO := take("old." + k)
			nw, okN := take("new." + k)
			if !okP || !okO || !okN || p == "" {
				return fmt.Errorf("old-format file intent: file %d of %d lacks path.%s, old.%s or new.%s", i, count, k, k, k)
			}
			c := Change{Path: p}
			if c.Old, err = ParseState(o); err != nil {
				return fmt.Errorf("%s: old: %w", p, err)
			}
			if c.New, err = ParseState(nw); err != nil {
				return fmt.Errorf("%s: new: %w", p, err)
			}
			r.Changes = append(r.Changes, c)
		}
	case KindRunStart:
		opts, hasOpts := r.Data["options"]
		_, hasRoot := r.Data["root"]
		_, hasNow := r.Data["now"]
		_, hasSel := r.Data["selection"]
		if hasRoot || hasNow || hasSel {
			if r.Start != nil {
				return errors.New("a run-start with both start and the old root/now/selection fields")
			}
			root, _ := take("root")
			now, _ := take("now")
			sel, _ := take("selection")
			st := &Start{Root: root, Selection: sel}
			if now != "" {
				t, err := time.Parse(time.RFC3339, now)
				if err != nil {
					return fmt.Errorf("old-format run-start: now %q: %v", now, err)
				}
				st.Now = t
			}
			r.Start = st
			if hasOpts {
				take("options")
				if err := upgradeOptions(r, opts); err != nil {
					return fmt.Errorf("old-format run-start: options: %v", err)
				}
			}
		} else if hasOpts {
			// The cluster journal's run-start held only its options.
			if r.Cluster != nil {
				return errors.New("a cluster run-start with both cluster and the old options field")
			}
			take("options")
			var cs ClusterStart
			if err := json.Unmarshal([]byte(opts), &cs); err != nil {
				return fmt.Errorf("old-format cluster run-start: options: %v", err)
			}
			r.Cluster = &cs
		}
	case KindOptions:
		if opts, ok := take("options"); ok {
			if err := upgradeOptions(r, opts); err != nil {
				return fmt.Errorf("old-format options record: %v", err)
			}
		}
	}
	return nil
}

func upgradeOptions(r *Record, js string) error {
	if r.Options != nil {
		return errors.New("both options and the old options field")
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(js), &m); err != nil {
		return err
	}
	r.Options = m
	return nil
}
