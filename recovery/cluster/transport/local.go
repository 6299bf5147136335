package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kubecpr/kubecpr/recovery/atomicfile"
)

// localStopGrace is how long a locally run command has, after SIGTERM on
// cancellation, before it is killed and its output pipes are closed.
const localStopGrace = 10 * time.Second

// Local is the transport of a node given as a local tree (`root:` in the
// inventory): commands run on this machine with os/exec, and uploads are
// local atomic writes. The cluster driver runs the local kubecpr binary with
// --root set to the node's directory through it, so a rehearsal on copies
// runs the same code as a run over SSH.
type Local struct {
	name string
}

var _ Transport = (*Local)(nil)

// NewLocal returns the local transport of the node called name.
func NewLocal(name string) *Local { return &Local{name: name} }

// Name returns the node's name.
func (l *Local) Name() string { return l.name }

// Run runs argv with os/exec (no shell). Cancelling ctx sends SIGTERM, and
// SIGKILL if the command is still running 10 s later.
func (l *Local) Run(ctx context.Context, argv []string, stdout, stderr io.Writer) error {
	if len(argv) == 0 {
		return fmt.Errorf("%s: run: empty command", l.name)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %s: %w", l.name, describeArgv(argv), err)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	// A driver that dies (kill -9) stops its local commands too, as a
	// dropped SSH connection stops the remote ones: nothing it started
	// goes on holding a node's lock unseen.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	cmd.WaitDelay = localStopGrace
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %s: stopped: %w", l.name, describeArgv(argv), ctx.Err())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return &ExitError{Node: l.name, Code: code}
	}
	return fmt.Errorf("%s: %w", l.name, err)
}

// Upload reads data completely, then replaces path with it atomically
// (recovery/atomicfile: temp in the same directory, fsync, rename, fsync the
// directory) with exactly mode. A read error leaves the target untouched.
// An existing target keeps its owner.
func (l *Local) Upload(ctx context.Context, data io.Reader, path string, mode os.FileMode) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%s: upload: %q is not an absolute path", l.name, path)
	}
	b, err := io.ReadAll(data)
	if err != nil {
		return fmt.Errorf("%s: upload %s: reading the data: %w", l.name, path, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: upload %s: %w", l.name, path, err)
	}
	if mode == 0 {
		mode = 0o600
	}
	if err := atomicfile.WriteFile(path, b, atomicfile.Options{Mode: mode, ForceMode: true}); err != nil {
		return fmt.Errorf("%s: upload: %w", l.name, err)
	}
	return nil
}

// Close does nothing: a local node holds no connection.
func (l *Local) Close() error { return nil }
