// Package kubecprbin builds the real kubecpr binary once per test process
// and runs it as a child process, the way an engineer (or a crash) does.
package kubecprbin

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
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

	releaseOnce sync.Once
	releasePath string
	releaseErr  error
)

// CrashTag is the build tag that compiles the crash-test seam into the
// binary (cmd/kubecpr/crashseam.go): the tests' binary can be stopped at a
// point named in its environment; the shipped one cannot.
const CrashTag = "kubecpr_crashtest"

// Path returns the kubecpr binary built with CrashTag: the one named by
// $KUBECPR_TEST_BINARY when set (`make test` builds it once for every test
// package), else built once per test process (see build). (It was a new
// temporary directory per process, never removed: 80 MB left in /tmp by
// every test run.)
func Path(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		if p := os.Getenv("KUBECPR_TEST_BINARY"); p != "" {
			if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
				binErr = fmt.Errorf("$KUBECPR_TEST_BINARY=%s: not a built binary (%v): unset it or run make test", p, err)
				return
			}
			binPath = p
			return
		}
		// -s -w: no symbol table or DWARF (pclntab stays: panics still
		// name functions and lines); links in about half the time.
		binPath, binErr = build("test-binary", nil, "-tags", CrashTag, "-ldflags", "-s -w")
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// Release returns kubecpr built as `make build` builds it (-trimpath
// -ldflags '-s -w', CGO_ENABLED=0, no crash seam): the binary an operator
// copies to their nodes. Built once per test process (see build).
func Release(t testing.TB) string {
	t.Helper()
	releaseOnce.Do(func() {
		releasePath, releaseErr = build("release", []string{"CGO_ENABLED=0"}, "-trimpath", "-ldflags", "-s -w")
	})
	if releaseErr != nil {
		t.Fatal(releaseErr)
	}
	return releasePath
}

// build links github.com/kubecpr/kubecpr/cmd/kubecpr with flags into the
// user's cache directory (kubecpr/<kind>/): one file per package directory
// of the test process (two worktrees never share one), replaced
// atomically, so that test processes of the same tree running at once
// each link theirs and rename it into place, and nothing piles up.
func build(kind string, env []string, flags ...string) (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "kubecpr", kind)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, ".kubecpr-*")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	args := append(append([]string{"build"}, flags...), "-o", tmp.Name(), "github.com/kubecpr/kubecpr/cmd/kubecpr")
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %v: %v\n%s", args, err, out)
	}
	sum := sha256.Sum256([]byte(wd))
	path := filepath.Join(dir, "kubecpr-"+hex.EncodeToString(sum[:6]))
	return path, os.Rename(tmp.Name(), path)
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
