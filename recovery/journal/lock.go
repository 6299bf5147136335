package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubecpr/kubecpr/recovery/fsys"
)

// Lock is the node lock: two kubecpr runs never proceed at once.
type Lock struct {
	f    fsys.File
	path string
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
	f, err := fsy.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", p, err)
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
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	err := l.f.Close()
	l.f = nil
	return err
}
