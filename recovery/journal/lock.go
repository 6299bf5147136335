package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubecpr/kubecpr/recovery/fsys"
)

// Lock is the node lock: two kubecpr runs never proceed at once.
type Lock struct {
	f    fsys.File
	path string
	tree *os.File // the node's tree, held too (AlsoTree)
}

// TreeHeldError is a node tree that another kubecpr run holds: one started
// with another --state-dir (each state dir has a lock of its own).
type TreeHeldError struct{ Dir string }

func (e *TreeHeldError) Error() string {
	return fmt.Sprintf("another kubecpr run holds this node's %s (it was started with another --state-dir, whose lock says who): "+
		"wait for it to end; two runs on one node would write the same files", e.Dir)
}

// AlsoTree holds the node's tree as well (an flock on the directory dir,
// its /etc/kubernetes, which writes nothing): a second run with another
// --state-dir, which has a lock file of its own, is refused too.
func (l *Lock) AlsoTree(dir string) error {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil // no tree to hold (an unknown layout is said elsewhere)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return &TreeHeldError{Dir: dir}
		}
		return fmt.Errorf("lock %s: %w", dir, err)
	}
	l.tree = f
	return nil
}

// HeldError says who holds the lock.
type HeldError struct {
	Path    string
	PID     int
	Started time.Time
	Cmd     string
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("another kubecpr run holds %s (pid %d, started %s: %s): wait for it to finish; "+
		"the lock is released automatically when that process exits, even if it is killed",
		e.Path, e.PID, e.Started.UTC().Format(time.RFC3339), e.Cmd)
}

// Acquire takes the exclusive lock dir/lock without waiting.
func Acquire(dir string, now time.Time) (*Lock, error) { return AcquireOn(fsys.OS, dir, now) }

// AcquireOn is Acquire creating the lock file through fsy.
func AcquireOn(fsy fsys.FS, dir string, now time.Time) (*Lock, error) {
	fsy = fsys.Or(fsy)
	if err := fsys.MkdirAll(fsy, dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", dir, err)
	}
	p := filepath.Join(dir, "lock")
	// O_NOFOLLOW: the lock is kubecpr's own file, written (truncated, then
	// its holder's pid) once taken. A lock that is a link, or a hard link
	// to another file, would have that file truncated — a link to ca.key
	// lost the key this way. Refused before anything is written.
	f, err := fsy.OpenFile(p, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			target, _ := os.Readlink(p)
			return nil, &NotOwnLockError{Path: p, What: "a symbolic link to " + target}
		}
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	if st, err := f.Stat(); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", p, err)
	} else if !st.Mode().IsRegular() {
		f.Close()
		return nil, &NotOwnLockError{Path: p, What: "not a regular file (" + st.Mode().String() + ")"}
	} else if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Nlink > 1 {
		f.Close()
		return nil, &NotOwnLockError{Path: p, What: fmt.Sprintf("a file with %d hard links (another name shares its bytes)", sys.Nlink)}
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, readHolder(p)
		}
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	info := fmt.Sprintf("pid=%d\nstarted=%s\ncmd=%s\n", os.Getpid(), now.UTC().Format(time.RFC3339), strings.Join(os.Args, " "))
	// Who holds the lock is for the message of a second run, which reads it
	// while the holder lives: no fsync (the flock itself never survives a
	// reboot, and TestEveryFsyncIsNeeded found this one unneeded).
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(info), 0)
	}
	return &Lock{f: f, path: p}, nil
}

// NotOwnLockError is a lock path that is not a plain file of kubecpr's
// own: nothing was written to it.
type NotOwnLockError struct {
	Path string
	What string
}

func (e *NotOwnLockError) Error() string {
	return fmt.Sprintf("lock %s is %s: kubecpr writes its lock file and would overwrite what it shares bytes with; "+
		"nothing was written to it. Check what it is, remove the lock path (rm %s: the lock holds no data) and run again",
		e.Path, e.What, e.Path)
}

func readHolder(p string) error {
	e := &HeldError{Path: p}
	b, _ := os.ReadFile(p)
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "pid":
			e.PID, _ = strconv.Atoi(v)
		case "started":
			e.Started, _ = time.Parse(time.RFC3339, v)
		case "cmd":
			e.Cmd = v
		}
	}
	return e
}

// Release drops the lock.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	if l.tree != nil {
		_ = unix.Flock(int(l.tree.Fd()), unix.LOCK_UN)
		_ = l.tree.Close()
		l.tree = nil
	}
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	err := l.f.Close()
	l.f = nil
	return err
}
