// Package powerloss is the power-loss test filesystem: an fsys.FS that
// performs every call on the real disk and keeps, beside it, a model of
// what a power cut would leave of the directory tree it watches.
//
// The model is the strict one that a correct program must survive (POSIX
// promises no more; ext4, XFS and btrfs may keep more, never less):
//
//   - a file's contents (and mode and owner) are durable as of its last
//     fsync; a file created and never fsynced comes back empty;
//   - a directory's entries (files created, renamed in or out, removed,
//     subdirectories and symlinks made) are durable as of that directory's
//     last fsync; a symlink's target is durable with its entry.
//
// After each fsync the durable view of the whole tree is recorded (once
// per distinct view). Tests materialize every recorded view as a tree of
// its own — the node as a power cut at that instant would leave it — and
// run resume and rollback on it.
//
// Skip simulates removing fsync calls from the code: a sync whose call
// site it names is performed but not modelled as durable. A test that
// skips any one site must then see some view that resume or rollback
// cannot handle: that is the proof that every fsync is needed.
package powerloss

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/kubecpr/kubecpr/recovery/fsys"
)

type kind byte

const (
	kFile kind = 'f'
	kDir  kind = 'd'
	kLink kind = 'l'
)

type inode struct {
	kind           kind
	data, durData  []byte
	mode, durMode  fs.FileMode
	uid, gid       int
	durUID, durGID int
	target         string
	ents, durEnts  map[string]*inode
}

// Entry is one path of a durable view.
type Entry struct {
	Kind     byte // 'f', 'd', 'l'
	Mode     fs.FileMode
	UID, GID int
	Data     []byte
	Target   string
}

// View is a durable state of the tree: relative path → entry.
type View map[string]Entry

// FS is the power-loss filesystem over the tree at Base.
type FS struct {
	Base string
	// Skip, when set, names the fsync call sites (see Sites) whose syncs
	// are not modelled as durable.
	Skip func(site string) bool

	mu      sync.Mutex
	root    *inode
	views   []View
	seen    map[[32]byte]bool
	sites   map[string]int
	outside []string
}

var _ fsys.FS = (*FS)(nil)

// New models the tree at base as it is now, all of it durable.
func New(base string) (*FS, error) {
	base, err := filepath.Abs(base)
	if err != nil {
		return nil, err
	}
	root, err := load(base)
	if err != nil {
		return nil, err
	}
	f := &FS{Base: base, root: root, seen: map[[32]byte]bool{}, sites: map[string]int{}}
	f.record()
	return f, nil
}

func load(p string) (*inode, error) {
	st, err := os.Lstat(p)
	if err != nil {
		return nil, err
	}
	ino := &inode{mode: st.Mode(), durMode: st.Mode()}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		ino.uid, ino.gid = int(s.Uid), int(s.Gid)
		ino.durUID, ino.durGID = ino.uid, ino.gid
	}
	switch {
	case st.IsDir():
		ino.kind = kDir
		ino.ents = map[string]*inode{}
		ents, err := os.ReadDir(p)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			c, err := load(filepath.Join(p, e.Name()))
			if err != nil {
				return nil, err
			}
			ino.ents[e.Name()] = c
		}
		ino.durEnts = clone(ino.ents)
	case st.Mode()&fs.ModeSymlink != 0:
		ino.kind = kLink
		if ino.target, err = os.Readlink(p); err != nil {
			return nil, err
		}
	case st.Mode().IsRegular():
		ino.kind = kFile
		if ino.data, err = os.ReadFile(p); err != nil {
			return nil, err
		}
		ino.durData = bytes.Clone(ino.data)
	default:
		return nil, fmt.Errorf("powerloss: %s is a %v, which the model does not hold", p, st.Mode().Type())
	}
	return ino, nil
}

func clone(m map[string]*inode) map[string]*inode {
	out := make(map[string]*inode, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// rel returns the components of p under Base, or ok=false when p is
// outside it.
func (f *FS) rel(p string) ([]string, bool) {
	p = filepath.Clean(p)
	if p == f.Base {
		return nil, true
	}
	if !strings.HasPrefix(p, f.Base+"/") {
		return nil, false
	}
	return strings.Split(p[len(f.Base)+1:], "/"), true
}

// lookup walks the volatile tree; a symlink in a parent is an error (the
// callers hand resolved host paths).
func (f *FS) lookup(parts []string) (*inode, error) {
	cur := f.root
	for i, name := range parts {
		if cur.kind != kDir {
			return nil, fmt.Errorf("powerloss: %s is not a directory in the model", strings.Join(parts[:i], "/"))
		}
		next, ok := cur.ents[name]
		if !ok {
			return nil, nil
		}
		cur = next
	}
	return cur, nil
}

func (f *FS) parent(p string) (*inode, string, bool, error) {
	parts, ok := f.rel(p)
	if !ok || len(parts) == 0 {
		return nil, "", ok, nil
	}
	dir, err := f.lookup(parts[:len(parts)-1])
	if err != nil {
		return nil, "", true, err
	}
	if dir == nil || dir.kind != kDir {
		return nil, "", true, fmt.Errorf("powerloss: parent of %s missing from the model", p)
	}
	return dir, parts[len(parts)-1], true, nil
}

// fresh makes the inode for a path just created on the real disk.
func fresh(p string, k kind) *inode {
	ino := &inode{kind: k}
	if st, err := os.Lstat(p); err == nil {
		ino.mode = st.Mode()
		if s, ok := st.Sys().(*syscall.Stat_t); ok {
			ino.uid, ino.gid = int(s.Uid), int(s.Gid)
		}
	}
	ino.durMode, ino.durUID, ino.durGID = ino.mode, ino.uid, ino.gid
	if k == kDir {
		ino.ents, ino.durEnts = map[string]*inode{}, map[string]*inode{}
	}
	if k == kLink {
		ino.target, _ = os.Readlink(p)
	}
	return ino
}

// model applies fn under the lock, noting a path outside Base.
func (f *FS) model(p string, fn func() error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.rel(p); !ok {
		f.outside = append(f.outside, p)
		return nil
	}
	return fn()
}

// Outside lists the paths changed outside Base (a run must have none).
func (f *FS) Outside() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.outside...)
}

type file struct {
	f      *os.File
	fs     *FS
	ino    *inode // nil outside Base
	append bool
}

func (f *FS) open(p string, of *os.File, flag int) (fsys.File, error) {
	h := &file{f: of, fs: f, append: flag&os.O_APPEND != 0}
	err := f.model(p, func() error {
		dir, name, _, err := f.parent(p)
		if err != nil {
			return err
		}
		if dir == nil {
			h.ino = f.root
			return nil
		}
		ino := dir.ents[name]
		if ino == nil {
			ino = fresh(p, kFile)
			dir.ents[name] = ino
		}
		if flag&os.O_TRUNC != 0 {
			ino.data = nil
		}
		h.ino = ino
		return nil
	})
	if err != nil {
		of.Close()
		return nil, err
	}
	return h, nil
}

// OpenFile opens name on the real disk and in the model.
func (f *FS) OpenFile(name string, flag int, perm fs.FileMode) (fsys.File, error) {
	of, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return f.open(filepath.Clean(name), of, flag)
}

// CreateTemp creates a temporary file as os.CreateTemp does.
func (f *FS) CreateTemp(dir, pattern string) (fsys.File, error) {
	of, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return f.open(of.Name(), of, os.O_CREATE|os.O_EXCL)
}

func (h *file) write(p []byte, off int64) {
	if h.ino == nil {
		return
	}
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if h.append {
		off = int64(len(h.ino.data))
	}
	if end := off + int64(len(p)); end > int64(len(h.ino.data)) {
		h.ino.data = append(h.ino.data, make([]byte, end-int64(len(h.ino.data)))...)
	}
	copy(h.ino.data[off:], p)
}

func (h *file) Write(p []byte) (int, error) {
	off, err := h.f.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, err
	}
	n, err := h.f.Write(p)
	h.write(p[:n], off)
	return n, err
}

func (h *file) WriteAt(p []byte, off int64) (int, error) {
	n, err := h.f.WriteAt(p, off)
	h.write(p[:n], off)
	return n, err
}

func (h *file) Truncate(size int64) error {
	if err := h.f.Truncate(size); err != nil {
		return err
	}
	if h.ino != nil {
		h.fs.mu.Lock()
		if size <= int64(len(h.ino.data)) {
			h.ino.data = h.ino.data[:size]
		} else {
			h.ino.data = append(h.ino.data, make([]byte, size-int64(len(h.ino.data)))...)
		}
		h.fs.mu.Unlock()
	}
	return nil
}

func (h *file) Sync() error {
	if err := h.f.Sync(); err != nil {
		return err
	}
	if h.ino == nil {
		return nil
	}
	site := caller("file")
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	h.fs.sites[site]++
	if h.fs.Skip != nil && h.fs.Skip(site) {
		return nil
	}
	h.ino.durData = bytes.Clone(h.ino.data)
	h.ino.durMode, h.ino.durUID, h.ino.durGID = h.ino.mode, h.ino.uid, h.ino.gid
	h.fs.recordLocked()
	return nil
}

func (h *file) Chmod(mode fs.FileMode) error {
	if err := h.f.Chmod(mode); err != nil {
		return err
	}
	h.restat()
	return nil
}

func (h *file) Chown(uid, gid int) error {
	if err := h.f.Chown(uid, gid); err != nil {
		return err
	}
	h.restat()
	return nil
}

func (h *file) restat() {
	if h.ino == nil {
		return
	}
	st, err := h.f.Stat()
	if err != nil {
		return
	}
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	h.ino.mode = st.Mode()
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		h.ino.uid, h.ino.gid = int(s.Uid), int(s.Gid)
	}
}

func (h *file) Read(p []byte) (int, error)                { return h.f.Read(p) }
func (h *file) Seek(off int64, whence int) (int64, error) { return h.f.Seek(off, whence) }
func (h *file) Close() error                              { return h.f.Close() }
func (h *file) Name() string                              { return h.f.Name() }
func (h *file) Stat() (fs.FileInfo, error)                { return h.f.Stat() }
func (h *file) Fd() uintptr                               { return h.f.Fd() }

// Rename renames on the real disk and moves the entry in the model.
func (f *FS) Rename(oldpath, newpath string) error {
	if err := os.Rename(oldpath, newpath); err != nil {
		return err
	}
	oldpath, newpath = filepath.Clean(oldpath), filepath.Clean(newpath)
	_, inOld := f.rel(oldpath)
	return f.model(newpath, func() error {
		if !inOld {
			f.outside = append(f.outside, oldpath)
			return nil
		}
		od, on, _, err := f.parent(oldpath)
		if err != nil {
			return err
		}
		nd, nn, _, err := f.parent(newpath)
		if err != nil {
			return err
		}
		ino := od.ents[on]
		if ino == nil {
			return fmt.Errorf("powerloss: rename of %s, unknown to the model", oldpath)
		}
		delete(od.ents, on)
		nd.ents[nn] = ino
		return nil
	})
}

func (f *FS) drop(p string) error {
	return f.model(p, func() error {
		dir, name, _, err := f.parent(p)
		if err != nil || dir == nil {
			return err
		}
		delete(dir.ents, name)
		return nil
	})
}

// Remove removes on the real disk and in the model.
func (f *FS) Remove(name string) error {
	if err := os.Remove(name); err != nil {
		return err
	}
	return f.drop(filepath.Clean(name))
}

// RemoveAll removes on the real disk and in the model.
func (f *FS) RemoveAll(name string) error {
	if err := os.RemoveAll(name); err != nil {
		return err
	}
	return f.drop(filepath.Clean(name))
}

func (f *FS) add(p string, k kind) error {
	return f.model(p, func() error {
		dir, name, _, err := f.parent(p)
		if err != nil || dir == nil {
			return err
		}
		if _, ok := dir.ents[name]; !ok {
			dir.ents[name] = fresh(p, k)
		}
		return nil
	})
}

// Mkdir makes a directory on the real disk and in the model.
func (f *FS) Mkdir(name string, perm fs.FileMode) error {
	if err := os.Mkdir(name, perm); err != nil {
		return err
	}
	return f.add(filepath.Clean(name), kDir)
}

// MkdirAll makes the missing directories on the real disk and in the model.
func (f *FS) MkdirAll(name string, perm fs.FileMode) error {
	name = filepath.Clean(name)
	var missing []string
	for p := name; ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil || filepath.Dir(p) == p {
			break
		}
		missing = append(missing, p)
	}
	if err := os.MkdirAll(name, perm); err != nil {
		return err
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := f.add(missing[i], kDir); err != nil {
			return err
		}
	}
	return nil
}

// Symlink makes a symlink on the real disk and in the model.
func (f *FS) Symlink(target, name string) error {
	if err := os.Symlink(target, name); err != nil {
		return err
	}
	return f.add(filepath.Clean(name), kLink)
}

func (f *FS) restat(p string) error {
	return f.model(p, func() error {
		parts, _ := f.rel(p)
		ino, err := f.lookup(parts)
		if err != nil || ino == nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		ino.mode = st.Mode()
		if s, ok := st.Sys().(*syscall.Stat_t); ok {
			ino.uid, ino.gid = int(s.Uid), int(s.Gid)
		}
		return nil
	})
}

// Chmod changes the mode on the real disk and in the model (durable with
// the next fsync of the file, or of the directory itself).
func (f *FS) Chmod(name string, mode fs.FileMode) error {
	if err := os.Chmod(name, mode); err != nil {
		return err
	}
	return f.restat(filepath.Clean(name))
}

// Lchown changes the owner on the real disk and in the model.
func (f *FS) Lchown(name string, uid, gid int) error {
	if err := os.Lchown(name, uid, gid); err != nil {
		return err
	}
	return f.restat(filepath.Clean(name))
}

// SyncDir fsyncs the directory: its entries become durable.
func (f *FS) SyncDir(dir string) error {
	if err := fsys.OS.SyncDir(dir); err != nil {
		return err
	}
	dir = filepath.Clean(dir)
	site := caller("dir")
	return f.model(dir, func() error {
		f.sites[site]++
		if f.Skip != nil && f.Skip(site) {
			return nil
		}
		parts, _ := f.rel(dir)
		ino, err := f.lookup(parts)
		if err != nil {
			return err
		}
		if ino == nil || ino.kind != kDir {
			return fmt.Errorf("powerloss: fsync of directory %s, unknown to the model", dir)
		}
		ino.durEnts = clone(ino.ents)
		ino.durMode, ino.durUID, ino.durGID = ino.mode, ino.uid, ino.gid
		f.recordLocked()
		return nil
	})
}

// caller names the fsync's call site: the first function outside this
// package, package fsys and atomicfile's SyncDir wrapper, with its line.
func caller(what string) string {
	pcs := make([]uintptr, 16)
	n := runtime.Callers(3, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	for {
		fr, more := frames.Next()
		fn := fr.Function
		if !strings.Contains(fn, "/fsys/powerloss.") && !strings.Contains(fn, "/recovery/fsys.") &&
			!strings.HasSuffix(fn, "atomicfile.Files.SyncDir") {
			if i := strings.LastIndex(fn, "/"); i >= 0 {
				fn = fn[i+1:]
			}
			return fmt.Sprintf("%s:%d (%s)", fn, fr.Line, what)
		}
		if !more {
			return "unknown (" + what + ")"
		}
	}
}

// Sites counts the fsyncs made so far, by call site.
func (f *FS) Sites() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for k, v := range f.sites {
		out[k] = v
	}
	return out
}

func (f *FS) record() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.recordLocked()
}

// recordLocked keeps the durable view if it is new.
func (f *FS) recordLocked() {
	v := View{}
	durable(f.root, "", v)
	h := v.hash()
	if f.seen[h] {
		return
	}
	f.seen[h] = true
	f.views = append(f.views, v)
}

func durable(ino *inode, p string, v View) {
	e := Entry{Kind: byte(ino.kind), Mode: ino.durMode, UID: ino.durUID, GID: ino.durGID}
	switch ino.kind {
	case kFile:
		e.Data = ino.durData
	case kLink:
		e.Target = ino.target
	}
	if p != "" {
		v[p] = e
	}
	if ino.kind == kDir {
		for name, c := range ino.durEnts {
			durable(c, path(p, name), v)
		}
	}
}

func path(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func (v View) hash() [32]byte {
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		e := v[k]
		fmt.Fprintf(h, "%s\x00%c%o %d %d %s\x00%d\x00", k, e.Kind, e.Mode, e.UID, e.GID, e.Target, len(e.Data))
		h.Write(e.Data)
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// Views returns the distinct durable views recorded, oldest first: the
// first is the tree as New found it.
func (f *FS) Views() []View {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]View(nil), f.views...)
}

// Materialize writes the view as a new tree at dst (which must not exist).
func (v View) Materialize(dst string) error {
	if err := os.Mkdir(dst, 0o755); err != nil {
		return err
	}
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys) // parents first
	var dirs []string
	for _, k := range keys {
		e, p := v[k], filepath.Join(dst, k)
		var err error
		switch kind(e.Kind) {
		case kDir:
			err = os.Mkdir(p, 0o700)
			dirs = append(dirs, k)
		case kLink:
			err = os.Symlink(e.Target, p)
		case kFile:
			err = os.WriteFile(p, e.Data, 0o600)
			if err == nil {
				err = os.Chmod(p, e.Mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
			}
		}
		if err != nil {
			return err
		}
		if os.Geteuid() == 0 {
			if err := os.Lchown(p, e.UID, e.GID); err != nil {
				return err
			}
		}
	}
	for _, k := range dirs { // modes last: a 0500 directory still gets its files
		if err := os.Chmod(filepath.Join(dst, k), v[k].Mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			return err
		}
	}
	return nil
}

// Diff compares the model's current (volatile) tree with the real disk
// under Base: any difference is a change made behind the FS's back.
func (f *FS) Diff() []string {
	f.mu.Lock()
	model := View{}
	volatile(f.root, "", model)
	f.mu.Unlock()
	real, err := load(f.Base)
	if err != nil {
		return []string{err.Error()}
	}
	disk := View{}
	volatile(real, "", disk)
	var out []string
	for k, m := range model {
		d, ok := disk[k]
		switch {
		case !ok:
			out = append(out, k+": in the model, not on disk")
		case m.Kind != d.Kind || m.Mode != d.Mode || m.Target != d.Target || !bytes.Equal(m.Data, d.Data):
			out = append(out, fmt.Sprintf("%s: model %c %v %d bytes, disk %c %v %d bytes", k, m.Kind, m.Mode, len(m.Data), d.Kind, d.Mode, len(d.Data)))
		}
	}
	for k := range disk {
		if _, ok := model[k]; !ok {
			out = append(out, k+": on disk, not in the model (written behind the FS's back)")
		}
	}
	sort.Strings(out)
	return out
}

func volatile(ino *inode, p string, v View) {
	e := Entry{Kind: byte(ino.kind), Mode: ino.mode, UID: ino.uid, GID: ino.gid, Data: ino.data, Target: ino.target}
	if p != "" {
		v[p] = e
	}
	if ino.kind == kDir {
		for name, c := range ino.ents {
			volatile(c, path(p, name), v)
		}
	}
}
