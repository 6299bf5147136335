package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/cluster/transport/sshtest"
)

// transports returns the local transport and an SSH transport to a real
// sshd on loopback, both "on" this machine, so one test checks both.
func transports(t *testing.T) []Transport { return benchTransports(t) }

func benchTransports(t testing.TB) []Transport {
	t.Helper()
	srv := sshtest.Start(t)
	s, err := DialSSH(context.Background(), SSHConfig{
		Node: "ssh-node", User: srv.User, Host: srv.Host, Port: srv.Port,
		IdentityFile: srv.IdentityFile, KnownHostsFiles: []string{srv.KnownHostsFile},
		Timeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatalf("DialSSH: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return []Transport{NewLocal("local-node"), s}
}

func TestRun(t *testing.T) {
	tests := []struct {
		name             string
		argv             []string
		wantOut, wantErr string
		wantCode         int // 0: success
	}{
		{"success", []string{"sh", "-c", "echo out; echo err >&2"}, "out\n", "err\n", 0},
		{"exit status", []string{"sh", "-c", "echo out; echo err >&2; exit 3"}, "out\n", "err\n", 3},
		{"killed by a signal", []string{"sh", "-c", "kill -KILL $$"}, "", "", 128 + 9},
		{"no stdin: reads EOF", []string{"cat"}, "", "", 0},
		{"command not found", []string{"sh", "-c", "kubecpr-no-such-command"}, "", "*", 127},
	}
	for _, tr := range transports(t) {
		for _, tt := range tests {
			t.Run(tr.Name()+"/"+tt.name, func(t *testing.T) {
				var stdout, stderr bytes.Buffer
				err := tr.Run(context.Background(), tt.argv, &stdout, &stderr)
				if diff := cmp.Diff(tt.wantOut, stdout.String()); diff != "" {
					t.Errorf("stdout (-want +got):\n%s", diff)
				}
				if tt.wantErr != "*" {
					if diff := cmp.Diff(tt.wantErr, stderr.String()); diff != "" {
						t.Errorf("stderr (-want +got):\n%s", diff)
					}
				}
				if tt.wantCode == 0 {
					if err != nil {
						t.Fatalf("Run: %v", err)
					}
					return
				}
				var exit *ExitError
				if !errors.As(err, &exit) {
					t.Fatalf("Run error = %v (%T), want *ExitError", err, err)
				}
				if diff := cmp.Diff(&ExitError{Node: tr.Name(), Code: tt.wantCode}, exit); diff != "" {
					t.Errorf("ExitError (-want +got):\n%s", diff)
				}
				if msg := err.Error(); !strings.Contains(msg, tr.Name()) || !strings.Contains(msg, strconv.Itoa(tt.wantCode)) {
					t.Errorf("error %q does not name the node and the code", msg)
				}
			})
		}
	}
}

func TestRunEmptyCommand(t *testing.T) {
	for _, tr := range transports(t) {
		if err := tr.Run(context.Background(), nil, nil, nil); err == nil || !strings.Contains(err.Error(), "empty command") {
			t.Errorf("%s: Run(nil) = %v, want an empty-command error", tr.Name(), err)
		}
	}
}

// TestRunArgvVerbatim: every argument reaches the program byte for byte,
// whatever a shell would make of it.
func TestRunArgvVerbatim(t *testing.T) {
	args := []string{
		"plain", "two words", "it's", `"double"`, `'single'`, "$HOME", "${HOME}", "$(id -u)", "`id`",
		"a;b", "a && b", "a|b", ">redirect", "<in", "*", "?", "[a]", "~", "~root", "{a,b}", "!", "#comment",
		"", " ", "\ttab", "line1\nline2", `back\slash`, `\'`, "a=b", "-n", "--", "ünï ©ode", "%s%d",
	}
	for _, tr := range transports(t) {
		t.Run(tr.Name(), func(t *testing.T) {
			// printf's format ends each argument with \036 (record
			// separator), which none of them holds.
			argv := append([]string{"printf", `%s\036`}, args...)
			var stdout, stderr bytes.Buffer
			if err := tr.Run(context.Background(), argv, &stdout, &stderr); err != nil {
				t.Fatalf("Run: %v (stderr %q)", err, stderr.String())
			}
			got := strings.Split(strings.TrimSuffix(stdout.String(), "\036"), "\036")
			if diff := cmp.Diff(args, got); diff != "" {
				t.Errorf("arguments as the program saw them (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRunCancel: cancelling the context stops the command itself (not only
// our wait for it), quickly.
func TestRunCancel(t *testing.T) {
	for _, tr := range transports(t) {
		t.Run(tr.Name(), func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "pid")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				errc <- tr.Run(ctx, []string{"sh", "-c", `echo $$ > "$1"; exec sleep 30`, "sh", pidFile}, nil, nil)
			}()
			pid := waitPid(t, pidFile)
			start := time.Now()
			cancel()
			select {
			case err := <-errc:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run after cancel = %v, want context.Canceled", err)
				}
				if !strings.Contains(err.Error(), tr.Name()) {
					t.Errorf("error %q does not name the node", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return within 10s of cancel")
			}
			for syscall.Kill(pid, 0) == nil {
				if time.Since(start) > 5*time.Second {
					t.Fatalf("sleep (pid %d) still running 5s after cancel", pid)
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("stopped in %v", time.Since(start).Round(time.Millisecond))
		})
	}
}

func waitPid(t *testing.T, file string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(file)
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("the command did not write its pid to %s", file)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRunCancelledBeforeStart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tr := range transports(t) {
		if err := tr.Run(ctx, []string{"true"}, nil, nil); !errors.Is(err, context.Canceled) {
			t.Errorf("%s: Run with a cancelled context = %v, want context.Canceled", tr.Name(), err)
		}
	}
}

func TestUpload(t *testing.T) {
	random := make([]byte, 300<<10+7)
	rand.Read(random)
	tests := []struct {
		name     string
		existing *fileState // nil: no file there before
		data     []byte
		mode     os.FileMode
		want     fileState
	}{
		{"new file", nil, random, 0o640, fileState{random, 0o640}},
		{"executable", nil, []byte("#!/bin/sh\n"), 0o755, fileState{[]byte("#!/bin/sh\n"), 0o755}},
		{"replace, mode changed", &fileState{[]byte("old"), 0o644}, []byte("new\x00bytes\n"), 0o600, fileState{[]byte("new\x00bytes\n"), 0o600}},
		{"empty", &fileState{[]byte("old"), 0o600}, nil, 0o600, fileState{[]byte{}, 0o600}},
		{"mode 0 is 0600", nil, []byte("k"), 0, fileState{[]byte("k"), 0o600}},
	}
	for _, tr := range transports(t) {
		for _, tt := range tests {
			t.Run(tr.Name()+"/"+tt.name, func(t *testing.T) {
				dir := t.TempDir()
				path := filepath.Join(dir, "target file") // a space: quoting matters
				if tt.existing != nil {
					writeState(t, path, *tt.existing)
				}
				if err := tr.Upload(context.Background(), bytes.NewReader(tt.data), path, tt.mode); err != nil {
					t.Fatalf("Upload: %v", err)
				}
				if diff := cmp.Diff(tt.want, readState(t, path)); diff != "" {
					t.Errorf("file (-want +got):\n%s", diff)
				}
				noLeftovers(t, dir)
			})
		}
	}
}

func TestUploadRefused(t *testing.T) {
	old := fileState{[]byte("old content"), 0o600}
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string) string // returns the target path
		data    io.Reader
		wantErr string
	}{
		{"relative path", func(*testing.T, string) string { return "relative/file" }, strings.NewReader("x"), "not an absolute path"},
		{"missing directory", func(_ *testing.T, dir string) string { return filepath.Join(dir, "no-such-dir", "f") }, strings.NewReader("x"), "no-such-dir"},
		{"target is a directory", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "d")
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			return p
		}, strings.NewReader("x"), "refusing to replace"},
		{"target is a symlink", func(t *testing.T, dir string) string {
			writeState(t, filepath.Join(dir, "real"), old)
			p := filepath.Join(dir, "link")
			if err := os.Symlink("real", p); err != nil {
				t.Fatal(err)
			}
			return p
		}, strings.NewReader("x"), "symlink"},
		{"data read error midway", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "f")
			writeState(t, p, old)
			return p
		}, io.MultiReader(strings.NewReader(strings.Repeat("partial", 1000)), iotestErrReader{}), "reading the data"},
	}
	for _, tr := range transports(t) {
		for _, tt := range tests {
			t.Run(tr.Name()+"/"+tt.name, func(t *testing.T) {
				dir := t.TempDir()
				path := tt.setup(t, dir)
				before := snapshot(t, dir)
				err := tr.Upload(context.Background(), tt.data, path, 0o644)
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), tr.Name()) {
					t.Fatalf("Upload error = %v, want one naming the node and containing %q", err, tt.wantErr)
				}
				if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
					t.Errorf("directory changed by a refused upload (-before +after):\n%s", diff)
				}
			})
		}
	}
}

type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

type fileState struct {
	Data []byte
	Mode os.FileMode
}

func writeState(t *testing.T, path string, s fileState) {
	t.Helper()
	if err := os.WriteFile(path, s.Data, s.Mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, s.Mode); err != nil {
		t.Fatal(err)
	}
}

func readState(t *testing.T, path string) fileState {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if b == nil {
		b = []byte{}
	}
	return fileState{b, st.Mode()}
}

// snapshot lists a directory tree: path → mode and content (or link target).
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		v := info.Mode().String()
		switch {
		case info.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			v += " -> " + target
		case info.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			v += " " + string(b)
		}
		out[rel] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func noLeftovers(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".kubecpr-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}

func TestShellQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "''"},
		{"plain", "plain"},
		{"/usr/local/bin/kubecpr", "/usr/local/bin/kubecpr"},
		{"--root=/x", "'--root=/x'"},
		{"a=b", "'a=b'"},
		{"two words", "'two words'"},
		{"it's", `'it'\''s'`},
		{"$HOME", "'$HOME'"},
		{"~", "'~'"},
		{"a\nb", "'a\nb'"},
	}
	for _, tt := range tests {
		if got := ShellQuote(tt.in); got != tt.want {
			t.Errorf("ShellQuote(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got, want := ShellJoin([]string{"echo", "a b", ""}), "echo 'a b' ''"; got != want {
		t.Errorf("ShellJoin = %q, want %q", got, want)
	}
}

func TestSudoCommandLine(t *testing.T) {
	s := &SSH{cfg: SSHConfig{Sudo: true}}
	if got, want := s.command([]string{"kubecpr", "--root", "/a b"}), "sudo -n -- kubecpr --root '/a b'"; got != want {
		t.Errorf("command = %q, want %q", got, want)
	}
	s.cfg.Sudo = false
	if got, want := s.command([]string{"kubecpr"}), "kubecpr"; got != want {
		t.Errorf("command = %q, want %q", got, want)
	}
}

// TestUploadCancel: cancelling an upload in the middle leaves the target as
// it was and no temporary file behind, promptly.
func TestUploadCancel(t *testing.T) {
	for _, tr := range transports(t) {
		t.Run(tr.Name(), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			writeState(t, path, fileState{[]byte("old"), 0o600})
			before := snapshot(t, dir)
			ctx, cancel := context.WithCancel(context.Background())
			r := &stallingReader{ctx: ctx, first: bytes.Repeat([]byte("x"), 4096), started: make(chan struct{})}
			errc := make(chan error, 1)
			go func() { errc <- tr.Upload(ctx, r, path, 0o644) }()
			<-r.started
			cancel()
			// The reader stalls for ever: returning at all proves the
			// upload stopped on the cancel (the bound only catches a hang;
			// on a loaded 2-core CI machine the SSH teardown took 3.2 s).
			select {
			case err := <-errc:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Upload after cancel = %v, want context.Canceled", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Upload did not return within 30s of cancel: it waits for the stalled reader")
			}
			if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
				t.Errorf("directory changed by a cancelled upload (-before +after):\n%s", diff)
			}
		})
	}
}

// stallingReader returns first, then blocks until ctx is done.
type stallingReader struct {
	ctx     context.Context
	first   []byte
	started chan struct{}
}

func (r *stallingReader) Read(p []byte) (int, error) {
	if len(r.first) > 0 {
		n := copy(p, r.first)
		r.first = r.first[n:]
		return n, nil
	}
	select {
	case <-r.started:
	default:
		close(r.started)
	}
	<-r.ctx.Done()
	return 0, r.ctx.Err()
}
