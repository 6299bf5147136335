// Package kubecprbin builds the real kubecpr binary once per test process
// and runs it as a child process, the way an engineer (or a crash) does.
package kubecprbin

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

var (
	once    sync.Once
	binPath string
	binErr  error
)

// CrashTag is the build tag that compiles the crash-test seam into the
// binary (cmd/kubecpr/crashseam.go): the tests' binary can be stopped at a
// point named in its environment; the shipped one cannot.
const CrashTag = "kubecpr_crashtest"

// Path builds github.com/kubecpr/kubecpr/cmd/kubecpr (once) with CrashTag
// and returns it.
func Path(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		dir, err := os.MkdirTemp("", "kubecpr-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "kubecpr")
		out, err := exec.Command("go", "build", "-tags", CrashTag, "-o", binPath, "github.com/kubecpr/kubecpr/cmd/kubecpr").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// Result of one run.
type Result struct {
	Code           int
	Stdout, Stderr string
	Killed         bool // ended by SIGKILL
}

// Run runs kubecpr with extra environment and args.
func Run(t testing.TB, env []string, args ...string) Result {
	t.Helper()
	cmd := exec.Command(Path(t), args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	cmd.Env = append(os.Environ(), env...)
	err := cmd.Run()
	r := Result{Stdout: so.String(), Stderr: se.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.Code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			r.Killed = true
		}
	} else if err != nil {
		t.Fatalf("kubecpr %v: %v", args, err)
	}
	return r
}
