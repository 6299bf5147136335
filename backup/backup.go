package backup

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubecpr/kubecpr/recovery/atomicfile"
)

// EntryType of a manifest entry.
type EntryType string

const (
	TypeFile    EntryType = "file"
	TypeDir     EntryType = "dir"
	TypeSymlink EntryType = "symlink"
)

// Entry is one backed-up path.
type Entry struct {
	Path    string    `json:"path"`
	Type    EntryType `json:"type"`
	Mode    uint32    `json:"mode"`
	UID     int       `json:"uid"`
	GID     int       `json:"gid"`
	Link    string    `json:"link,omitempty"`
	Size    int64     `json:"size"`
	SHA256  string    `json:"sha256,omitempty"`
	ModTime time.Time `json:"mtime"`
	Blob    string    `json:"blob,omitempty"`
}

// Manifest describes one complete backup.
type Manifest struct {
	Version      int       `json:"version"`
	RunID        string    `json:"runID"`
	Created      time.Time `json:"created"`
	Root         string    `json:"root"`
	Sources      []string  `json:"sources"`
	Absent       []string  `json:"absent,omitempty"`
	Skipped      []string  `json:"skipped,omitempty"`
	Entries      []Entry   `json:"entries"`
	EtcdSnapshot *Entry    `json:"etcdSnapshot,omitempty"`

	index map[string]int
}

const manifestName = "manifest.json"

// ErrIncomplete is returned for a backup directory without a manifest.
var ErrIncomplete = errors.New("incomplete backup: no manifest.json (the backup was interrupted; it cannot be restored from)")

// SpaceError: not enough free space for the backup.
type SpaceError struct {
	Dir        string
	Need, Free uint64
}

func (e *SpaceError) Error() string {
	return fmt.Sprintf("not enough space for the backup in %s: need %d bytes (with margin), %d free; "+
		"free some space there or point --state-dir at a filesystem with room", e.Dir, e.Need, e.Free)
}

func hostPath(root, nodePath string) string {
	return filepath.Join(root, filepath.FromSlash(path.Clean("/"+nodePath)))
}

// Size adds up the bytes of the regular files under the sources.
func Size(root string, sources []string) (uint64, error) {
	var total uint64
	for _, s := range sources {
		err := filepath.WalkDir(hostPath(root, s), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if d.Type().IsRegular() {
				info, err := d.Info()
				if err != nil {
					return err
				}
				total += uint64(info.Size()) + 4096
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return total, nil
}

// CheckSpace fails with a SpaceError when dir's filesystem has less than
// need bytes free plus a margin (10%, at least 16 MiB).
func CheckSpace(dir string, need uint64) error {
	probe := dir
	for {
		if _, err := os.Stat(probe); err == nil {
			break
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			break
		}
		probe = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(probe, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", probe, err)
	}
	free := st.Bavail * uint64(st.Bsize)
	margin := need / 10
	if margin < 16<<20 {
		margin = 16 << 20
	}
	if need+margin > free {
		return &SpaceError{Dir: probe, Need: need + margin, Free: free}
	}
	return nil
}

// Create copies the sources (node paths under root) into dir and writes the
// manifest last. On any error the partial backup is removed.
func Create(root, dir string, sources []string, now time.Time) (m *Manifest, err error) {
	if _, err := os.Stat(filepath.Join(dir, manifestName)); err == nil {
		return nil, fmt.Errorf("backup %s already exists; refusing to overwrite it", dir)
	}
	need, err := Size(root, sources)
	if err != nil {
		return nil, err
	}
	if err := CheckSpace(dir, need); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("backup dir %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	m = &Manifest{Version: 1, RunID: filepath.Base(dir), Created: now.UTC(), Root: root, Sources: sources}
	seen := map[string]bool{}
	dirsToSync := map[string]bool{}
	for _, src := range sources {
		src = path.Clean("/" + src)
		if _, err := os.Lstat(hostPath(root, src)); errors.Is(err, fs.ErrNotExist) {
			m.Absent = append(m.Absent, src)
			continue
		}
		err := filepath.WalkDir(hostPath(root, src), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			np := "/" + filepath.ToSlash(rel)
			if seen[np] {
				return nil
			}
			seen[np] = true
			e, err := entryOf(p, np)
			if err != nil {
				return err
			}
			switch e.Type {
			case "":
				m.Skipped = append(m.Skipped, np)
				return nil
			case TypeFile:
				e.Blob = "files" + np
				sum, err := copyBlob(p, filepath.Join(dir, filepath.FromSlash(e.Blob)))
				if err != nil {
					return err
				}
				e.SHA256 = sum
				dirsToSync[filepath.Dir(filepath.Join(dir, filepath.FromSlash(e.Blob)))] = true
			}
			m.Entries = append(m.Entries, e)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("backing up %s: %w", src, err)
		}
	}
	for d := range dirsToSync {
		if err := atomicfile.SyncDir(d); err != nil {
			return nil, err
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, manifestName), b, atomicfile.Options{Mode: 0o600, ForceMode: true}); err != nil {
		return nil, err
	}
	m.buildIndex()
	return m, nil
}

func entryOf(p, np string) (Entry, error) {
	info, err := os.Lstat(p)
	if err != nil {
		return Entry{}, err
	}
	e := Entry{Path: np, Mode: uint32(info.Mode().Perm()), Size: info.Size(), ModTime: info.ModTime().UTC()}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		e.UID, e.GID = int(st.Uid), int(st.Gid)
	}
	switch {
	case info.Mode()&fs.ModeSymlink != 0:
		e.Type = TypeSymlink
		if e.Link, err = os.Readlink(p); err != nil {
			return e, err
		}
	case info.IsDir():
		e.Type = TypeDir
		e.Size = 0
	case info.Mode().IsRegular():
		e.Type = TypeFile
	}
	return e, nil
}

func copyBlob(src, dst string) (string, error) {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return "", err
	}
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), in); err != nil {
		out.Close()
		return "", fmt.Errorf("copying %s: %w", src, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return "", fmt.Errorf("fsync %s: %w", dst, err)
	}
	if err := out.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (m *Manifest) buildIndex() {
	m.index = make(map[string]int, len(m.Entries))
	for i, e := range m.Entries {
		m.index[e.Path] = i
	}
}

// Load reads dir/manifest.json.
func Load(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrIncomplete)
	}
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: manifest does not parse: %w", filepath.Join(dir, manifestName), err)
	}
	m.buildIndex()
	return &m, nil
}

// Lookup finds the entry of a node path.
func (m *Manifest) Lookup(nodePath string) (Entry, bool) {
	if m.index == nil {
		m.buildIndex()
	}
	i, ok := m.index[path.Clean("/"+nodePath)]
	if !ok {
		return Entry{}, false
	}
	return m.Entries[i], true
}

// Verify re-hashes every blob against the manifest.
func Verify(dir string) error {
	m, err := Load(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range m.Entries {
		if e.Type != TypeFile {
			continue
		}
		p := filepath.Join(dir, filepath.FromSlash(e.Blob))
		b, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s (backup of %s): %w", p, e.Path, err))
			continue
		}
		s := sha256.Sum256(b)
		if hex.EncodeToString(s[:]) != e.SHA256 {
			errs = append(errs, fmt.Errorf("%s (backup of %s): sha256 mismatch: the backup copy is damaged", p, e.Path))
		}
	}
	return errors.Join(errs...)
}

// RestoreOptions narrow a restore.
type RestoreOptions struct {
	Only   []string // node paths; empty = every entry
	Prune  bool     // remove files under backed-up directories that the backup does not have
	DryRun bool
}

// Restore puts every entry back under root; it is idempotent and returns
// the node paths it changed.
func Restore(root, dir string, opt RestoreOptions) ([]string, error) {
	m, err := Load(dir)
	if err != nil {
		return nil, err
	}
	only := map[string]bool{}
	for _, p := range opt.Only {
		only[path.Clean("/"+p)] = true
	}
	var changed []string
	var errs []error
	// directories first (parents before children), then files and links
	entries := append([]Entry(nil), m.Entries...)
	sort.SliceStable(entries, func(i, j int) bool {
		return (entries[i].Type == TypeDir) && (entries[j].Type != TypeDir)
	})
	for _, e := range entries {
		if len(only) > 0 && !only[e.Path] {
			continue
		}
		same, err := matches(root, dir, e)
		if err == nil && same {
			continue
		}
		changed = append(changed, e.Path)
		if opt.DryRun {
			continue
		}
		if err := RestoreEntry(root, dir, e); err != nil {
			errs = append(errs, err)
		}
	}
	if opt.Prune && len(only) == 0 {
		pruned, err := prune(root, m, opt.DryRun)
		changed = append(changed, pruned...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return changed, errors.Join(errs...)
}

// matches reports whether the node already has entry e exactly.
func matches(root, dir string, e Entry) (bool, error) {
	got, err := entryOf(hostPath(root, e.Path), e.Path)
	if err != nil {
		return false, err
	}
	if got.Type != e.Type || got.Mode != e.Mode || got.UID != e.UID || got.GID != e.GID || got.Link != e.Link {
		return false, nil
	}
	if e.Type == TypeFile {
		b, err := os.ReadFile(hostPath(root, e.Path))
		if err != nil {
			return false, err
		}
		s := sha256.Sum256(b)
		return hex.EncodeToString(s[:]) == e.SHA256, nil
	}
	return true, nil
}

// RestoreEntry puts one entry back byte for byte, with mode, owner and
// symlink target.
func RestoreEntry(root, dir string, e Entry) error {
	hp := hostPath(root, e.Path)
	switch e.Type {
	case TypeDir:
		if err := os.MkdirAll(hp, fs.FileMode(e.Mode)); err != nil {
			return fmt.Errorf("restoring %s: %w", e.Path, err)
		}
		if err := os.Chmod(hp, fs.FileMode(e.Mode)); err != nil {
			return err
		}
		return atomicfile.Chown(hp, e.UID, e.GID)
	case TypeSymlink:
		if info, err := os.Lstat(hp); err == nil && info.Mode()&fs.ModeSymlink == 0 {
			if err := removeNonLink(hp, info); err != nil {
				return fmt.Errorf("restoring %s: %w", e.Path, err)
			}
		}
		if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
			return err
		}
		if err := atomicfile.ReplaceSymlink(hp, e.Link); err != nil {
			return fmt.Errorf("restoring %s: %w", e.Path, err)
		}
		return atomicfile.Chown(hp, e.UID, e.GID)
	case TypeFile:
		blob := filepath.Join(dir, filepath.FromSlash(e.Blob))
		b, err := os.ReadFile(blob)
		if err != nil {
			return fmt.Errorf("restoring %s: backup copy %s: %w", e.Path, blob, err)
		}
		s := sha256.Sum256(b)
		if hex.EncodeToString(s[:]) != e.SHA256 {
			return fmt.Errorf("restoring %s: backup copy %s is damaged (sha256 mismatch); refusing to restore it", e.Path, blob)
		}
		if info, err := os.Lstat(hp); err == nil && !info.Mode().IsRegular() {
			if err := removeNonLink(hp, info); err != nil {
				return fmt.Errorf("restoring %s: %w", e.Path, err)
			}
		}
		if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
			return err
		}
		if err := atomicfile.WriteFile(hp, b, atomicfile.Options{Mode: fs.FileMode(e.Mode), ForceMode: true}); err != nil {
			return fmt.Errorf("restoring %s: %w", e.Path, err)
		}
		if err := atomicfile.Chown(hp, e.UID, e.GID); err != nil {
			return err
		}
		// the write kept the current owner; force the recorded one and mtime
		return os.Chtimes(hp, e.ModTime, e.ModTime)
	}
	return fmt.Errorf("restoring %s: unknown entry type %q", e.Path, e.Type)
}

func removeNonLink(hp string, info fs.FileInfo) error {
	if info.IsDir() {
		return fmt.Errorf("%s is now a directory; remove it by hand if that is intended", hp)
	}
	return os.Remove(hp)
}

// prune removes what appeared under backed-up directories after the backup.
func prune(root string, m *Manifest, dryRun bool) ([]string, error) {
	var removed []string
	var errs []error
	check := func(np string) {
		if _, ok := m.Lookup(np); ok {
			return
		}
		removed = append(removed, np)
		if !dryRun {
			if err := os.RemoveAll(hostPath(root, np)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, e := range m.Entries {
		if e.Type != TypeDir {
			continue
		}
		ents, err := os.ReadDir(hostPath(root, e.Path))
		if err != nil {
			continue
		}
		for _, d := range ents {
			check(path.Join(e.Path, d.Name()))
		}
	}
	for _, a := range m.Absent {
		if _, err := os.Lstat(hostPath(root, a)); err == nil {
			removed = append(removed, a)
			if !dryRun {
				if err := os.RemoveAll(hostPath(root, a)); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	sort.Strings(removed)
	return removed, errors.Join(errs...)
}
