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
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubecpr/kubecpr/recovery/atomicfile"
	"github.com/kubecpr/kubecpr/recovery/fsys"
)

// EntryType of a manifest entry.
type EntryType string

// KeptModeBits are the mode bits a backup records and a restore puts back.
const KeptModeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// Entry types.
const (
	TypeFile    EntryType = "file"
	TypeDir     EntryType = "dir"
	TypeSymlink EntryType = "symlink"
)

// Entry is one backed-up path.
type Entry struct {
	// Path is the node path, absolute, as on the node
	// ("/etc/kubernetes/pki/ca.crt"), without the --root prefix.
	Path string    `json:"path"`
	Type EntryType `json:"type"`
	// Mode holds the permission bits and setuid, setgid and sticky
	// (KeptModeBits of fs.FileMode).
	Mode uint32 `json:"mode"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
	// Link is a symlink's target, verbatim (never resolved).
	Link string `json:"link,omitempty"`
	// Size is the byte count of a file (the target's length for a symlink,
	// 0 for a directory).
	Size    int64     `json:"size"`
	SHA256  string    `json:"sha256,omitempty"`
	ModTime time.Time `json:"mtime"`
	// Blob is the copy's path inside the backup directory ("files/<Path>").
	Blob string `json:"blob,omitempty"`
}

// ManifestVersion is the manifest format this package writes.
const ManifestVersion = 1

// Manifest describes one complete backup.
type Manifest struct {
	Version int       `json:"version"`
	RunID   string    `json:"runID"`
	Created time.Time `json:"created"`
	// Root is the node root the backup was taken from.
	Root string `json:"root"`
	// Sources are the node paths asked for, cleaned.
	Sources []string `json:"sources"`
	// Absent lists sources that did not exist: a restore with Prune
	// removes them if they appeared since.
	Absent []string `json:"absent,omitempty"`
	// Skipped lists node paths that were not copied: sockets, devices and
	// FIFOs, and kubecpr's state dir (the one holding backups/<run-id>)
	// when a source contains it. Restore and Prune leave them alone.
	Skipped []string `json:"skipped,omitempty"`
	// Resolved maps a source that is a symlink to a directory onto the node
	// path of that directory: its tree is recorded under the source's path,
	// the way the run reaches it.
	Resolved map[string]string `json:"resolved,omitempty"`
	Entries  []Entry           `json:"entries"`
	// EtcdSnapshot is optional, attached by AddEtcdSnapshot after Create.
	EtcdSnapshot *Entry `json:"etcd_snapshot,omitempty"`

	index map[string]int
}

const (
	manifestName = "manifest.json"
	filesDir     = "files"
	etcdBlob     = "etcd/snapshot.db"
)

// ErrIncomplete is returned for a backup directory without a manifest.
var ErrIncomplete = errors.New("incomplete backup: no manifest.json (the backup was interrupted before it finished; it cannot be restored from)")

// ErrExists is returned by Create when dir already holds a different
// complete backup.
var ErrExists = errors.New("a different backup already exists there")

// SpaceError reports that the backup does not fit on the state directory's
// filesystem.
type SpaceError struct {
	Dir        string
	Need, Free uint64
}

func (e *SpaceError) Error() string {
	return fmt.Sprintf("not enough space for the backup in %s: need %s (%d bytes, with a safety margin), %s (%d bytes) free; "+
		"free some space on that filesystem or point --state-dir at a filesystem with room",
		e.Dir, human(e.Need), e.Need, human(e.Free), e.Free)
}

func human(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// spaceMargin is kept free beyond what the backup needs: 10%, at least
// 16 MiB.
func spaceMargin(need uint64) uint64 {
	return max(need/10, 16<<20)
}

// CheckSpace fails with a SpaceError when dir's filesystem (dir need not
// exist yet: its nearest existing ancestor is measured) has less than need
// bytes plus a margin (10%, at least 16 MiB) available to unprivileged
// writers.
func CheckSpace(dir string, need uint64) error {
	probe := filepath.Clean(dir)
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
	bsize := uint64(st.Frsize)
	if bsize == 0 {
		bsize = uint64(st.Bsize)
	}
	free := st.Bavail * bsize
	total := need + spaceMargin(need)
	if total < need || total > free { // total < need: overflow
		if total < need {
			total = ^uint64(0)
		}
		return &SpaceError{Dir: probe, Need: total, Free: free}
	}
	return nil
}

// Size estimates the bytes a backup of sources takes: every regular file
// rounded up to 4 KiB, plus 4 KiB of metadata (manifest line, blob
// directories) per entry.
func Size(root string, sources []string) (uint64, error) {
	var total uint64
	for _, src := range sources {
		_, err := walkSource(root, src, "", func(v visit) error {
			total += 4096
			if v.info.Mode().IsRegular() {
				total += (uint64(v.info.Size()) + 4095) &^ 4095
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return total, nil
}

// visit is one path met while walking a source.
type visit struct {
	np   string // node path, as the run addresses it
	host string // host path, resolved inside root
	info fs.FileInfo
	skip bool // the backup directory itself
}

type sourceResult struct {
	absent   bool
	resolved string // node path a symlinked directory source resolves to
}

// walkSource calls fn for src and, if it is a directory, everything below
// it, without following symlinks. Directory components of src are resolved
// inside root; a src that is itself a symlink to a directory is followed
// (its tree is recorded under src's own path). skipHost, when set, is a
// host path that is reported with skip set and not descended into.
func walkSource(root, src, skipHost string, fn func(visit) error) (sourceResult, error) {
	var res sourceResult
	src = cleanNode(src)
	_, host, err := resolve(root, src, false)
	if err != nil {
		return res, err
	}
	info, err := os.Lstat(host)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		res.absent = true
		return res, nil
	}
	if err != nil {
		return res, err
	}
	if info.Mode()&fs.ModeSymlink != 0 {
		rnp, rhost, err := resolve(root, src, true)
		if err != nil {
			return res, err
		}
		if st, err := os.Lstat(rhost); err == nil && st.IsDir() {
			res.resolved, host = rnp, rhost
		}
	}
	err = filepath.WalkDir(host, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(host, p)
		if err != nil {
			return err
		}
		np := src
		if rel != "." {
			np = path.Join(src, filepath.ToSlash(rel))
		}
		if skipHost != "" && p == skipHost {
			if err := fn(visit{np: np, host: p, skip: true}); err != nil {
				return err
			}
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		return fn(visit{np: np, host: p, info: info})
	})
	return res, err
}

// Create copies the sources (node paths under root) into dir and writes the
// manifest last, so a manifest means a complete backup.
//
// Before the first write it checks that the copy fits (CheckSpace with
// Size), so a full disk stops the run with a SpaceError and nothing
// written. On any error everything Create made is removed again.
//
// Create is idempotent: if dir already holds a complete backup of the same
// root and sources it returns that backup untouched (a resumed run must
// keep the copy taken before its first change, never a newer one); a
// complete backup of something else is refused with ErrExists. A dir left
// by an interrupted Create (no manifest, nothing but Create's own files) is
// cleared and the backup taken again.
func Create(root, dir string, sources []string, now time.Time) (m *Manifest, err error) {
	return CreateOn(fsys.OS, root, dir, sources, now)
}

// CreateOn is Create writing through fsy (the run's filesystem).
func CreateOn(fsy fsys.FS, root, dir string, sources []string, now time.Time) (m *Manifest, err error) {
	fsy = fsys.Or(fsy)
	if root, err = filepath.Abs(root); err != nil {
		return nil, err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	clean := make([]string, 0, len(sources))
	for _, s := range sources {
		if s = cleanNode(s); !slices.Contains(clean, s) {
			clean = append(clean, s)
		}
	}
	if old, err := Load(dir); err == nil {
		if old.Root == root && slices.Equal(old.Sources, clean) {
			return old, nil
		}
		return nil, fmt.Errorf("backup %s (root %s, sources %s): %w; refusing to overwrite it",
			dir, old.Root, strings.Join(old.Sources, ", "), ErrExists)
	} else if !errors.Is(err, ErrIncomplete) {
		return nil, err
	}
	if err := clearPartial(fsy, dir); err != nil {
		return nil, err
	}

	need, err := Size(root, clean)
	if err != nil {
		return nil, fmt.Errorf("sizing the backup: %w", err)
	}
	if err := CheckSpace(dir, need); err != nil {
		return nil, err
	}

	top, err := mkdirAll(fsy, dir, 0o700)
	if err != nil {
		return nil, fmt.Errorf("backup dir %s: %w", dir, err)
	}
	defer func() {
		if err != nil && top != "" {
			fsy.RemoveAll(top)
		}
	}()
	if err := fsy.Chmod(dir, 0o700); err != nil {
		return nil, err
	}

	// kubecpr's own state is never node state to back up (or, later, to
	// restore or prune): skip the state dir when dir is
	// <state-dir>/backups/<run-id>, else what Create itself made.
	skip := dir
	if filepath.Base(filepath.Dir(dir)) == "backups" {
		skip = filepath.Dir(filepath.Dir(dir))
	} else if top != "" {
		skip = top
	}
	m = &Manifest{Version: ManifestVersion, RunID: filepath.Base(dir), Created: now.UTC(), Root: root, Sources: clean}
	// The copies are fsynced together once all are written (one journal
	// commit for all of them rather than one each); nothing refers to the
	// backup before its manifest, written after.
	var blobs []fsys.File
	defer func() {
		for _, b := range blobs {
			b.Close()
		}
	}()
	syncBlobs := func() error {
		err := fsys.Parallel(len(blobs), func(i int) error {
			if err := blobs[i].Sync(); err != nil {
				return fmt.Errorf("fsync %s: %w", blobs[i].Name(), err)
			}
			return nil
		})
		for _, b := range blobs {
			b.Close()
		}
		blobs = blobs[:0]
		return err
	}
	seen := map[string]bool{}
	for _, src := range clean {
		res, err := walkSource(root, src, skip, func(v visit) error {
			if seen[v.np] {
				return nil
			}
			seen[v.np] = true
			if v.skip {
				m.Skipped = append(m.Skipped, v.np)
				return nil
			}
			e := entryOf(v.np, v.info)
			switch e.Type {
			case "":
				m.Skipped = append(m.Skipped, v.np)
				return nil
			case TypeSymlink:
				var err error
				if e.Link, err = os.Readlink(v.host); err != nil {
					return err
				}
			case TypeFile:
				e.Blob = filesDir + e.Path
				out, err := copyBlob(fsy, v.host, filepath.Join(dir, filepath.FromSlash(e.Blob)), &e)
				if err != nil {
					return err
				}
				if blobs = append(blobs, out); len(blobs) == maxOpenBlobs {
					return syncBlobs() // bound the open files on a large tree
				}
			}
			m.Entries = append(m.Entries, e)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("backing up %s: %w", src, err)
		}
		if res.absent {
			m.Absent = append(m.Absent, src)
		}
		if res.resolved != "" {
			if m.Resolved == nil {
				m.Resolved = map[string]string{}
			}
			m.Resolved[src] = res.resolved
		}
	}
	if err := syncBlobs(); err != nil {
		return nil, err
	}
	if err := syncTree(fsy, filepath.Join(dir, filesDir)); err != nil {
		return nil, err
	}
	if err := m.saveOn(fsy, dir); err != nil {
		return nil, err
	}
	// make the backup directory's own entry durable
	if err := fsy.SyncDir(filepath.Dir(dir)); err != nil {
		return nil, err
	}
	if top != dir {
		if err := fsy.SyncDir(filepath.Dir(top)); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// clearPartial removes what an interrupted Create left in dir; anything
// else in dir is refused rather than deleted.
func clearPartial(fsy fsys.FS, dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, d := range ents {
		n := d.Name()
		if n != filesDir && !strings.HasPrefix(n, "."+manifestName+".") {
			return fmt.Errorf("%s has no manifest but holds %q, which a backup does not write; "+
				"refusing to delete it: move it away or choose another --state-dir", dir, n)
		}
	}
	return fsy.RemoveAll(dir)
}

// mkdirAll is os.MkdirAll that also returns the top-most directory it
// created ("" when dir existed).
func mkdirAll(fsy fsys.FS, dir string, perm fs.FileMode) (string, error) {
	top := ""
	for p := dir; ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		}
		top = p
		if filepath.Dir(p) == p {
			break
		}
	}
	return top, fsy.MkdirAll(dir, perm)
}

func syncTree(fsy fsys.FS, dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return err
	})
	if err != nil {
		return err
	}
	return fsys.Parallel(len(dirs), func(i int) error { return fsy.SyncDir(dirs[i]) })
}

// entryOf describes info; Type stays empty for what a backup skips
// (sockets, devices, FIFOs).
func entryOf(np string, info fs.FileInfo) Entry {
	e := Entry{Path: np, Mode: uint32(info.Mode() & KeptModeBits), Size: info.Size(), ModTime: info.ModTime().UTC()}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		e.UID, e.GID = int(st.Uid), int(st.Gid)
	}
	switch {
	case info.Mode()&fs.ModeSymlink != 0:
		e.Type = TypeSymlink
	case info.IsDir():
		e.Type = TypeDir
		e.Size = 0
	case info.Mode().IsRegular():
		e.Type = TypeFile
	}
	return e
}

// maxOpenBlobs bounds how many copies CreateOn keeps open for their
// common fsync.
const maxOpenBlobs = 256

// copyBlob copies the regular file src to dst (0600) and fills e's hash,
// size and metadata from the very file it copied. It returns dst still
// open, for the caller to fsync with the other copies.
func copyBlob(fsy fsys.FS, src, dst string, e *Entry) (fsys.File, error) {
	if err := fsy.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return nil, err
	}
	in, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%s changed into a %v while being backed up", src, info.Mode().Type())
	}
	out, err := fsy.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), in)
	if err != nil {
		out.Close()
		return nil, fmt.Errorf("copying %s: %w", src, err)
	}
	meta := entryOf(e.Path, info)
	e.Mode, e.UID, e.GID, e.ModTime = meta.Mode, meta.UID, meta.GID, meta.ModTime
	e.Size = n
	e.SHA256 = hex.EncodeToString(h.Sum(nil))
	return out, nil
}

func (m *Manifest) buildIndex() {
	m.index = make(map[string]int, len(m.Entries))
	for i, e := range m.Entries {
		m.index[e.Path] = i
	}
}

// Save writes m as dir/manifest.json atomically (0600).
func (m *Manifest) Save(dir string) error { return m.saveOn(fsys.OS, dir) }

func (m *Manifest) saveOn(fsy fsys.FS, dir string) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := atomicfile.On(fsy).WriteFile(filepath.Join(dir, manifestName), b, atomicfile.Options{Mode: 0o600, ForceMode: true}); err != nil {
		return err
	}
	m.buildIndex()
	return nil
}

// AddEtcdSnapshot copies the etcd snapshot file src (a host path, e.g.
// written by "etcdctl snapshot save") into dir as etcd/snapshot.db (0600,
// fsynced), records it as m.EtcdSnapshot and saves the manifest. The
// entry's Path is src, for information; restoring etcd is not this
// package's job.
func (m *Manifest) AddEtcdSnapshot(dir, src string) error {
	info, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := CheckSpace(dir, uint64(info.Size())); err != nil {
		return err
	}
	e := Entry{Path: src, Type: TypeFile, Blob: etcdBlob}
	dst := filepath.Join(dir, filepath.FromSlash(etcdBlob))
	out, err := copyBlob(fsys.OS, src, dst, &e)
	if err != nil {
		os.Remove(dst)
		return err
	}
	err = out.Sync()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return fmt.Errorf("fsync %s: %w", dst, err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(dst)); err != nil {
		return err
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return err
	}
	m.EtcdSnapshot = &e
	return m.Save(dir)
}

// Load reads dir/manifest.json. A directory without one is an interrupted
// backup: the error wraps ErrIncomplete.
func Load(dir string) (*Manifest, error) {
	p := filepath.Join(dir, manifestName)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrIncomplete)
	}
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: manifest does not parse: %w", p, err)
	}
	if m.Version < 1 || m.Version > ManifestVersion {
		return nil, fmt.Errorf("%s: manifest version %d; this kubecpr reads version %d", p, m.Version, ManifestVersion)
	}
	for _, e := range m.Entries {
		if err := validEntry(e); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	if s := m.EtcdSnapshot; s != nil && s.Blob != etcdBlob {
		return nil, fmt.Errorf("%s: etcd snapshot blob %q is not %q", p, s.Blob, etcdBlob)
	}
	m.buildIndex()
	return &m, nil
}

// validEntry refuses entries that would make a restore read or write
// outside its places (a hand-edited or damaged manifest).
func validEntry(e Entry) error {
	if e.Path == "" || cleanNode(e.Path) != e.Path {
		return fmt.Errorf("entry path %q is not a clean absolute node path", e.Path)
	}
	switch e.Type {
	case TypeFile:
		if e.Blob != filesDir+e.Path {
			return fmt.Errorf("entry %s: blob %q is not %q", e.Path, e.Blob, filesDir+e.Path)
		}
		if len(e.SHA256) != sha256.Size*2 {
			return fmt.Errorf("entry %s: no sha256", e.Path)
		}
	case TypeDir:
	case TypeSymlink:
		if e.Link == "" {
			return fmt.Errorf("entry %s: symlink without a target", e.Path)
		}
	default:
		return fmt.Errorf("entry %s: unknown type %q", e.Path, e.Type)
	}
	return nil
}

// Lookup finds the entry of a node path.
func (m *Manifest) Lookup(nodePath string) (Entry, bool) {
	np := cleanNode(nodePath)
	if i, ok := m.index[np]; ok && i < len(m.Entries) && m.Entries[i].Path == np {
		return m.Entries[i], true
	}
	for _, e := range m.Entries { // index missing or stale
		if e.Path == np {
			return e, true
		}
	}
	return Entry{}, false
}

// Verify re-hashes every blob (and the etcd snapshot, if any) against the
// manifest. The error joins one error per missing or damaged blob, each
// naming the node path and the blob.
func Verify(dir string) error {
	m, err := Load(dir)
	if err != nil {
		return err
	}
	var errs []error
	check := func(e Entry) {
		p := filepath.Join(dir, filepath.FromSlash(e.Blob))
		sum, n, err := hashFile(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			errs = append(errs, fmt.Errorf("%s: backup copy %s is missing", e.Path, p))
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: backup copy %s: %w", e.Path, p, err))
		case sum != e.SHA256 || n != e.Size:
			errs = append(errs, fmt.Errorf("%s: backup copy %s is damaged (sha256 mismatch)", e.Path, p))
		}
	}
	for _, e := range m.Entries {
		if e.Type == TypeFile {
			check(e)
		}
	}
	if m.EtcdSnapshot != nil {
		check(*m.EtcdSnapshot)
	}
	return errors.Join(errs...)
}

// hashFile returns the hex sha256 and length of a regular file, never
// following a symlink.
func hashFile(p string) (string, int64, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return "", 0, err
	} else if !st.Mode().IsRegular() {
		return "", 0, fmt.Errorf("not a regular file")
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
