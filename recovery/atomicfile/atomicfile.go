// Package atomicfile is kubecpr's one way to change a file on a node.
//
// Every replacement follows the same order: a temporary file in the target's
// own directory, write, fsync, close, chmod/chown to the mode and owner to
// keep, rename over the target, fsync the directory. A crash at any instant
// leaves either the old file or the new one, never a mix, and the rename is
// made durable by the directory fsync (the step most implementations forget).
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/kubecpr/kubecpr/recovery/fsys"
)

// Options control the metadata of the file written.
type Options struct {
	// Mode is used when the target does not exist yet (default 0600).
	// An existing target keeps its own mode unless ForceMode is set.
	Mode      fs.FileMode
	ForceMode bool
	// UID/GID are used when the target does not exist yet and Owner is set.
	// An existing target keeps its owner.
	Owner    bool
	UID, GID int
}

// Files changes files through one fsys.FS: the run's (the real disk, or
// the power-loss test filesystem in tests). The package-level functions
// are Files on fsys.OS.
type Files struct {
	FS    fsys.FS
	batch *batch
}

// batch holds the writes whose fsync, rename and directory fsync a batch
// put off until Flush.
type batch struct {
	dirs    []string
	pending []pending
}

// pending is one write of a batch: a temporary file written (not yet
// fsynced), or a symlink to make, renamed over path at Flush.
type pending struct {
	path    string
	tmp     fsys.File // nil for a symlink
	tmpName string
	link    string
}

// Batch returns Files whose WriteFile and ReplaceSymlink only prepare the
// write (a temporary file beside the target, written and closed to
// others); Flush then fsyncs every temporary file at once, renames each
// over its target in the order written, and fsyncs, once each and at
// once, the directories. A group of files costs about one fsync round
// trip, not one per file and directory. Until Flush returns, no target is
// changed or known to be durable; Discard removes what a batch prepared
// and did not flush.
func (a Files) Batch() Files {
	a.batch = &batch{}
	return a
}

// Flush completes the batch's writes (see Batch). On error the targets
// not yet renamed keep their old content and their temporary files are
// removed.
func (a Files) Flush() (err error) {
	if a.batch == nil {
		return nil
	}
	b := a.batch
	defer func() {
		if err != nil {
			a.Discard()
		}
	}()
	var files []int
	for i, p := range b.pending {
		if p.tmp == nil {
			continue
		}
		if err := hook("sync", p.path); err != nil {
			return err
		}
		files = append(files, i)
	}
	if err := fsys.Parallel(len(files), func(i int) error {
		p := b.pending[files[i]]
		if err := p.tmp.Sync(); err != nil {
			return fmt.Errorf("%s: fsync: %w", p.path, err)
		}
		return nil
	}); err != nil {
		return err
	}
	for len(b.pending) > 0 {
		p := b.pending[0]
		if p.tmp != nil {
			if err := p.tmp.Close(); err != nil {
				return fmt.Errorf("%s: close: %w", p.path, err)
			}
			b.pending[0].tmp = nil
			if err := hook("rename", p.path); err != nil {
				return err
			}
			if err := a.FS.Rename(p.tmpName, p.path); err != nil {
				return fmt.Errorf("%s: rename into place: %w", p.path, err)
			}
		} else if err := a.replaceSymlink(p.path, p.link); err != nil {
			return err
		}
		b.pending = b.pending[1:]
	}
	dirs := b.dirs
	b.dirs = nil
	return fsys.Parallel(len(dirs), func(i int) error { return a.FS.SyncDir(dirs[i]) })
}

// Discard removes the temporary files of the batch's writes that Flush
// did not rename (their targets are unchanged); a no-op after a
// successful Flush.
func (a Files) Discard() {
	if a.batch == nil {
		return
	}
	for _, p := range a.batch.pending {
		if p.tmp != nil {
			p.tmp.Close()
			a.FS.Remove(p.tmpName)
		} else if p.tmpName != "" {
			a.FS.Remove(p.tmpName)
		}
	}
	a.batch.pending = nil
	a.batch.dirs = nil
}

// syncDirOf fsyncs dir now, or at Flush in a batch.
func (a Files) syncDirOf(dir string) error {
	if a.batch == nil {
		return a.FS.SyncDir(dir)
	}
	for _, d := range a.batch.dirs {
		if d == dir {
			return nil
		}
	}
	a.batch.dirs = append(a.batch.dirs, dir)
	return nil
}

// On returns the Files that write through f (fsys.OS when f is nil).
func On(f fsys.FS) Files { return Files{FS: fsys.Or(f)} }

var onOS = Files{FS: fsys.OS}

// WriteFile is On(fsys.OS).WriteFile.
func WriteFile(path string, data []byte, opt Options) error { return onOS.WriteFile(path, data, opt) }

// ReplaceSymlink is On(fsys.OS).ReplaceSymlink.
func ReplaceSymlink(path, target string) error { return onOS.ReplaceSymlink(path, target) }

// Rename is On(fsys.OS).Rename.
func Rename(oldpath, newpath string) error { return onOS.Rename(oldpath, newpath) }

// Remove is On(fsys.OS).Remove.
func Remove(path string) error { return onOS.Remove(path) }

// SyncDir is On(fsys.OS).SyncDir.
func SyncDir(dir string) error { return onOS.SyncDir(dir) }

// Chown is On(fsys.OS).Chown.
func Chown(path string, uid, gid int) error { return onOS.Chown(path, uid, gid) }

// Syncer is the seam crash tests use: it is called at each durable step so a
// test can fail or stop the write there. Production code leaves it nil.
var Syncer func(step string, path string) error

func hook(step, path string) error {
	if Syncer == nil {
		return nil
	}
	return Syncer(step, path)
}

// WriteFile atomically replaces path with data. It refuses to replace
// anything that is not a regular file (a directory, a device, a symlink):
// symlinks are changed with ReplaceSymlink, on purpose.
func (a Files) WriteFile(path string, data []byte, opt Options) (err error) {
	mode := opt.Mode
	if mode == 0 {
		mode = 0o600
	}
	uid, gid, chown := opt.UID, opt.GID, opt.Owner
	if st, err := os.Lstat(path); err == nil {
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s: refusing to replace a %s with a regular file", path, describe(st.Mode()))
		}
		if !opt.ForceMode {
			mode = st.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			uid, gid, chown = int(sys.Uid), int(sys.Gid), true
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", path, err)
	}

	dir := filepath.Dir(path)
	tmp, err := a.FS.CreateTemp(dir, TempPrefix(path)+"*")
	if err != nil {
		return fmt.Errorf("%s: creating a temporary file beside it: %w", path, err)
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			tmp.Close()
			a.FS.Remove(tmpName)
		}
	}()
	// Restrict before writing, so key material is never readable by others
	// (the temp file is created 0600); chown before chmod, as chown clears
	// setuid and setgid.
	if chown && os.Geteuid() == 0 {
		if err = tmp.Chown(uid, gid); err != nil {
			return fmt.Errorf("%s: chown temporary file: %w", path, err)
		}
	}
	if err = tmp.Chmod(mode); err != nil {
		return fmt.Errorf("%s: chmod temporary file: %w", path, err)
	}
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("%s: writing: %w", path, err)
	}
	if a.batch != nil {
		// fsync, rename and the directory's fsync at Flush
		a.batch.pending = append(a.batch.pending, pending{path: path, tmp: tmp, tmpName: tmpName})
		return a.syncDirOf(dir)
	}
	if err = hook("sync", path); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("%s: fsync: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("%s: close: %w", path, err)
	}
	if err = hook("rename", path); err != nil {
		return err
	}
	if err = a.FS.Rename(tmpName, path); err != nil {
		return fmt.Errorf("%s: rename into place: %w", path, err)
	}
	return a.syncDirOf(dir)
}

// ReplaceSymlink atomically points the symlink at path to target: a new link
// is made beside it and renamed over the old one. Refuses to replace a
// regular file or directory.
func (a Files) ReplaceSymlink(path, target string) error {
	if st, err := os.Lstat(path); err == nil && st.Mode()&fs.ModeSymlink == 0 {
		return fmt.Errorf("%s: refusing to replace a %s with a symlink", path, describe(st.Mode()))
	}
	if a.batch != nil {
		// made and renamed at Flush, after the files written before it
		a.batch.pending = append(a.batch.pending, pending{path: path, link: target})
		return a.syncDirOf(filepath.Dir(path))
	}
	if err := a.replaceSymlink(path, target); err != nil {
		return err
	}
	return a.syncDirOf(filepath.Dir(path))
}

// replaceSymlink makes the new link beside path and renames it over path.
func (a Files) replaceSymlink(path, target string) error {
	dir := filepath.Dir(path)
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.kubecpr-link-%d", filepath.Base(path), os.Getpid()))
	a.FS.Remove(tmp)
	if err := a.FS.Symlink(target, tmp); err != nil {
		return fmt.Errorf("%s: creating symlink: %w", path, err)
	}
	if err := hook("rename", path); err != nil {
		a.FS.Remove(tmp)
		return err
	}
	if err := a.FS.Rename(tmp, path); err != nil {
		a.FS.Remove(tmp)
		return fmt.Errorf("%s: rename symlink into place: %w", path, err)
	}
	return nil
}

// Rename moves oldpath to newpath (same filesystem) and makes it durable by
// syncing both directories.
func (a Files) Rename(oldpath, newpath string) error {
	if err := a.FS.Rename(oldpath, newpath); err != nil {
		return err
	}
	if err := a.SyncDir(filepath.Dir(newpath)); err != nil {
		return err
	}
	if filepath.Dir(oldpath) != filepath.Dir(newpath) {
		return a.SyncDir(filepath.Dir(oldpath))
	}
	return nil
}

// Remove deletes path (missing is fine) and syncs its directory.
func (a Files) Remove(path string) error {
	if err := a.FS.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return a.SyncDir(filepath.Dir(path))
}

// SyncDir fsyncs a directory so that renames and creations in it survive a
// power loss.
func (a Files) SyncDir(dir string) error { return a.FS.SyncDir(dir) }

// Chown sets owner of a path without following symlinks (root only; a no-op
// for other users, who cannot give files away).
func (a Files) Chown(path string, uid, gid int) error {
	if os.Geteuid() != 0 {
		return nil
	}
	return a.FS.Lchown(path, uid, gid)
}

func describe(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeDevice != 0:
		return "device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "non-regular file"
}

// TempPrefix is the name prefix of the temporary files WriteFile (and
// other writers that follow its protocol) create beside path.
func TempPrefix(path string) string { return "." + filepath.Base(path) + ".kubecpr-" }

// SweepTemps removes the temporary files and links a killed write left
// beside path (TempPrefix(path) followed by anything: WriteFile's
// ".NAME.kubecpr-N" files and ReplaceSymlink's ".NAME.kubecpr-link-N"
// links; never path itself, never a directory) and returns the ones it
// removed.
func SweepTemps(path string) []string { return onOS.SweepTemps(path) }

// SweepTemps removes the stray temporary files beside path (see the
// package-level SweepTemps).
func (a Files) SweepTemps(path string) []string {
	pattern := filepath.Join(filepath.Dir(path), globEscape(TempPrefix(path))+"*")
	matches, _ := filepath.Glob(pattern)
	var removed []string
	for _, m := range matches {
		if st, err := os.Lstat(m); err == nil && (st.Mode().IsRegular() || st.Mode()&fs.ModeSymlink != 0) && a.FS.Remove(m) == nil {
			removed = append(removed, m)
		}
	}
	return removed
}

// globEscape quotes the glob metacharacters of a literal file name.
func globEscape(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', '\\':
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return string(b)
}
