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
func WriteFile(path string, data []byte, opt Options) (err error) {
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
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".kubecpr-*")
	if err != nil {
		return fmt.Errorf("%s: creating a temporary file beside it: %w", path, err)
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmpName)
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
	if err = os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("%s: rename into place: %w", path, err)
	}
	return SyncDir(dir)
}

// ReplaceSymlink atomically points the symlink at path to target: a new link
// is made beside it and renamed over the old one. Refuses to replace a
// regular file or directory.
func ReplaceSymlink(path, target string) error {
	if st, err := os.Lstat(path); err == nil && st.Mode()&fs.ModeSymlink == 0 {
		return fmt.Errorf("%s: refusing to replace a %s with a symlink", path, describe(st.Mode()))
	}
	dir := filepath.Dir(path)
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.kubecpr-link-%d", filepath.Base(path), os.Getpid()))
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("%s: creating symlink: %w", path, err)
	}
	if err := hook("rename", path); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("%s: rename symlink into place: %w", path, err)
	}
	return SyncDir(dir)
}

// Rename moves oldpath to newpath (same filesystem) and makes it durable by
// syncing both directories.
func Rename(oldpath, newpath string) error {
	if err := os.Rename(oldpath, newpath); err != nil {
		return err
	}
	if err := SyncDir(filepath.Dir(newpath)); err != nil {
		return err
	}
	if filepath.Dir(oldpath) != filepath.Dir(newpath) {
		return SyncDir(filepath.Dir(oldpath))
	}
	return nil
}

// Remove deletes path (missing is fine) and syncs its directory.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir fsyncs a directory so that renames and creations in it survive a
// power loss.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("%s: open directory for fsync: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("%s: fsync directory: %w", dir, err)
	}
	return nil
}

// Chown sets owner of a path without following symlinks (root only; a no-op
// for other users, who cannot give files away).
func Chown(path string, uid, gid int) error {
	if os.Geteuid() != 0 {
		return nil
	}
	return os.Lchown(path, uid, gid)
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

// SweepTemps removes the regular files a killed write left beside path
// (TempPrefix(path) followed by anything; never path itself) and returns
// the ones it removed.
func SweepTemps(path string) []string {
	pattern := filepath.Join(filepath.Dir(path), globEscape(TempPrefix(path))+"*")
	matches, _ := filepath.Glob(pattern)
	var removed []string
	for _, m := range matches {
		if st, err := os.Lstat(m); err == nil && st.Mode().IsRegular() && os.Remove(m) == nil {
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
