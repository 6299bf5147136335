// Package fsys is the seam through which kubecpr changes files: every
// create, write, fsync, rename, removal and directory fsync of a run (the
// journal, the backup, the node's files) goes through an FS.
//
// OS is the real one. The power-loss test filesystem (package
// fsys/powerloss) is the second implementation: it performs each call on
// the real disk and keeps a model of what a power cut would leave (only
// what was fsynced: file contents at their last fsync, directory entries
// at their directory's last fsync), so tests can prove that resume and
// rollback succeed from every state a crash can leave, and that removing
// any fsync breaks that.
//
// Reads do not go through FS: they are the same on both.
package fsys

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// File is an open file being written.
type File interface {
	io.Reader
	io.Writer
	io.WriterAt
	io.Seeker
	io.Closer
	Name() string
	Sync() error
	Chmod(mode fs.FileMode) error
	Chown(uid, gid int) error
	Truncate(size int64) error
	Stat() (fs.FileInfo, error)
	Fd() uintptr
}

// FS changes files. Paths are host paths (already resolved inside the
// node's root by the caller).
type FS interface {
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	CreateTemp(dir, pattern string) (File, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	RemoveAll(name string) error
	Mkdir(name string, perm fs.FileMode) error
	MkdirAll(name string, perm fs.FileMode) error
	Symlink(target, name string) error
	Chmod(name string, mode fs.FileMode) error
	Lchown(name string, uid, gid int) error
	// SyncDir fsyncs a directory, making the creations, renames and
	// removals in it durable.
	SyncDir(dir string) error
}

// OS is the real filesystem.
var OS FS = osFS{}

// Or returns f, or OS when f is nil.
func Or(f FS) FS {
	if f == nil {
		return OS
	}
	return f
}

type osFS struct{}

func (osFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (osFS) CreateTemp(dir, pattern string) (File, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (osFS) Rename(o, n string) error                     { return os.Rename(o, n) }
func (osFS) Remove(name string) error                     { return os.Remove(name) }
func (osFS) RemoveAll(name string) error                  { return os.RemoveAll(name) }
func (osFS) Mkdir(name string, perm fs.FileMode) error    { return os.Mkdir(name, perm) }
func (osFS) MkdirAll(name string, perm fs.FileMode) error { return os.MkdirAll(name, perm) }
func (osFS) Symlink(target, name string) error            { return os.Symlink(target, name) }
func (osFS) Chmod(name string, mode fs.FileMode) error    { return os.Chmod(name, mode) }
func (osFS) Lchown(name string, uid, gid int) error       { return os.Lchown(name, uid, gid) }

func (osFS) SyncDir(dir string) error {
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

// MkdirAll creates dir and its missing parents through f and makes each
// new directory's entry durable (fsync of its parent), so that what is
// later written inside cannot outlive, after a power loss, the directories
// that hold it.
func MkdirAll(f FS, dir string, perm fs.FileMode) error {
	f = Or(f)
	var missing []string
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil || filepath.Dir(p) == p {
			break
		}
		missing = append(missing, p)
	}
	if len(missing) == 0 {
		return nil
	}
	if err := f.MkdirAll(dir, perm); err != nil {
		return err
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := f.SyncDir(filepath.Dir(missing[i])); err != nil {
			return err
		}
	}
	return nil
}

// Parallel calls fn(0) … fn(n-1), at most 16 at a time, and returns the
// first error. Independent fsyncs issued together cost about one journal
// commit on ext4 and XFS instead of one each: a batch of writes syncs its
// files, then its directories, this way.
func Parallel(n int, fn func(i int) error) error {
	if n == 1 {
		return fn(0)
	}
	errs := make([]error, n)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			errs[i] = fn(i)
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// UnixMode is m as chmod's octal digits, setuid (04000), setgid (02000)
// and sticky (01000) included: what a message or a remote chmod shows,
// where Go's FileMode bits would print as 8389101.
func UnixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}
