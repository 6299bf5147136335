package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/test/fixture"
)

// The tests drive the real kubecpr binary as a child process, the way an
// engineer (or a crash) does.

var (
	binOnce sync.Once
	binPath string
	binErr  error
	keys    = fixture.NewKeyPool(24)
)

// now is the fixed clock of the CLI tests: leaves expired 3 days before.
var now = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)

func kubecprBin(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kubecpr-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "kubecpr")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

type result struct {
	code           int
	stdout, stderr string
	killed         bool
}

func kubecpr(t testing.TB, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(kubecprBin(t), args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	cmd.Env = append(os.Environ(), env...)
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			r.killed = true
		}
	} else if err != nil {
		t.Fatalf("kubecpr %v: %v", args, err)
	}
	return r
}

// expiredNode generates a kubeadm-shaped node whose leaf certificates (and
// the kubelet's client certificate) expired three days before now.
func expiredNode(t testing.TB, opts ...func(*fixture.Options)) string {
	t.Helper()
	root := t.TempDir()
	o := fixture.Options{
		NodeName: "cp-1", Now: now, Keys: keys,
		CA:            fixture.Window{NotBefore: now.AddDate(-2, 0, 0), NotAfter: now.AddDate(8, 0, 0)},
		Leaf:          fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)},
		KubeletClient: fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)},
	}
	for _, f := range opts {
		f(&o)
	}
	if _, err := fixture.Generate(root, o); err != nil {
		t.Fatal(err)
	}
	return root
}

// snapshot records every file and link under root (but kubecpr's own state
// dir): type, mode, owner, link target, sha256.
func snapshot(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "var/lib/kubecpr" {
			return filepath.SkipDir
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v %d:%d", info.Mode(), st.Uid, st.Gid)
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			tgt, _ := os.Readlink(p)
			desc += " -> " + tgt
		case info.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s := sha256.Sum256(b)
			desc += " " + hex.EncodeToString(s[:])
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diffSnapshots(want, got map[string]string) string {
	var lines []string
	for k, v := range want {
		if g, ok := got[k]; !ok {
			lines = append(lines, "- "+k+" "+v)
		} else if g != v {
			lines = append(lines, "~ "+k+": "+v+" => "+g)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			lines = append(lines, "+ "+k+" "+v)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func rootArgs(root string, args ...string) []string {
	return append([]string{"--root", root, "--now", now.Format(time.RFC3339)}, args...)
}
