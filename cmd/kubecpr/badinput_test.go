package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/test/fixture"
)

// Every bad input stops `kubecpr run` before any change, with exit code
// and a message that names the file and says what to do.
func TestBadInputStopsBeforeAnyChange(t *testing.T) {
	t.Parallel() // processes and trees of its own
	for _, tc := range []struct {
		name     string
		setup    func(t *testing.T, root string) []string // returns extra args
		wantCode int
		wantMsg  []string
		notMsg   []string
	}{
		{
			name: "expired CA",
			setup: func(t *testing.T, root string) []string {
				// clock eleven years on: the CA (8 years left) is expired
				return []string{"--now", now.AddDate(11, 0, 0).Format("2006-01-02T15:04:05Z")}
			},
			wantCode: ExitPrecondition,
			wantMsg:  []string{"CA", "/etc/kubernetes/pki/ca.crt", "is not valid", "docs/expired-ca.md", "--renew-ca", "nothing was changed"},
		},
		{
			name: "missing CA key",
			setup: func(t *testing.T, root string) []string {
				rm(t, root, "etc/kubernetes/pki/ca.key")
				return nil
			},
			wantCode: ExitPrecondition,
			wantMsg:  []string{"external CA", "--csr-dir"},
		},
		{
			// Issue 19 item 14: a key that is there but cannot be read is
			// not an external CA (that has no key file at all).
			name: "CA key is a directory",
			setup: func(t *testing.T, root string) []string {
				rm(t, root, "etc/kubernetes/pki/ca.key")
				if err := os.Mkdir(filepath.Join(root, "etc/kubernetes/pki/ca.key"), 0o700); err != nil {
					t.Fatal(err)
				}
				return nil
			},
			wantCode: ExitPrecondition,
			wantMsg:  []string{"/etc/kubernetes/pki/ca.key", "a directory", "its ca CA cannot sign", "restore it from a backup"},
			notMsg:   []string{"--csr-dir", "external CA"},
		},
		{
			name: "CA key of another certificate",
			setup: func(t *testing.T, root string) []string {
				other, err := os.ReadFile(filepath.Join(root, "etc/kubernetes/pki/front-proxy-ca.key"))
				if err != nil {
					t.Fatal(err)
				}
				os.WriteFile(filepath.Join(root, "etc/kubernetes/pki/ca.key"), other, 0o600)
				return nil
			},
			wantCode: ExitPrecondition,
			wantMsg:  []string{"ca.key does not match", "its ca CA cannot sign"},
			notMsg:   []string{"--csr-dir"},
		},
		{
			name: "corrupt PEM",
			setup: func(t *testing.T, root string) []string {
				os.WriteFile(filepath.Join(root, "etc/kubernetes/pki/apiserver.crt"), []byte("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"), 0o644)
				return nil
			},
			wantCode: ExitPrecondition,
			wantMsg:  []string{"/etc/kubernetes/pki/apiserver.crt"},
		},
		{
			name: "key does not match",
			setup: func(t *testing.T, root string) []string {
				b, _ := os.ReadFile(filepath.Join(root, "etc/kubernetes/pki/front-proxy-client.key"))
				os.WriteFile(filepath.Join(root, "etc/kubernetes/pki/apiserver.key"), b, 0o600)
				return nil
			},
			wantCode: ExitPrecondition,
			wantMsg:  []string{"/etc/kubernetes/pki/apiserver.key", "does not match", "--rotate-keys"},
		},
		{
			name: "unknown layout",
			setup: func(t *testing.T, root string) []string {
				rm(t, root, "etc/kubernetes/pki")
				return nil
			},
			wantCode: ExitFailed,
			wantMsg:  []string{"ca.crt", "unknown layout", "--root"},
		},
		{
			name: "lock held",
			setup: func(t *testing.T, root string) []string {
				l, err := journal.Acquire(filepath.Join(root, "var/lib/kubecpr"), now)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { l.Release() })
				return nil
			},
			wantCode: ExitLocked,
			wantMsg:  []string{"another kubecpr run holds", "pid"},
		},
		{
			name: "backup disk full",
			setup: func(t *testing.T, root string) []string {
				// the state dir on a 64 KiB tmpfs: the backup cannot fit
				dir := filepath.Join(root, "var/lib/kubecpr")
				os.MkdirAll(dir, 0o700)
				mount(t, "tmpfs", dir, "-t", "tmpfs", "-o", "size=64k")
				return nil
			},
			wantCode: ExitPrecondition,
			wantMsg:  []string{"not enough space for the backup", "--state-dir"},
		},
		{
			name: "read-only root",
			setup: func(t *testing.T, root string) []string {
				// a read-only bind mount of the node's /etc/kubernetes
				dir := filepath.Join(root, "etc/kubernetes")
				mount(t, dir, dir, "--bind")
				mount(t, "", dir, "-o", "remount,ro,bind")
				return nil
			},
			wantCode: ExitPrecondition,
			wantMsg:  []string{"/etc/kubernetes", "not writable", "read-only"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := expiredNode(t)
			extra := tc.setup(t, root)
			before := snapshot(t, root)
			args := append([]string{"--root", root, "--now", now.Format("2006-01-02T15:04:05Z")}, extra...)
			r := kubecpr(t, nil, append(args, "run", "--update-user-kubeconfigs")...)
			if r.code != tc.wantCode {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tc.wantCode, r.stdout, r.stderr)
			}
			for _, m := range tc.notMsg {
				if strings.Contains(r.stderr, m) {
					t.Errorf("message sends the operator the wrong way (%q):\n%s", m, r.stderr)
				}
			}
			for _, m := range tc.wantMsg {
				if !strings.Contains(r.stderr, m) {
					t.Errorf("message lacks %q:\n%s", m, r.stderr)
				}
			}
			if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
				t.Fatalf("files changed:\n%s", diff)
			}
			if runs, _ := filepath.Glob(filepath.Join(root, "var/lib/kubecpr/backups/*")); len(runs) != 0 {
				t.Errorf("a backup was started: %v", runs)
			}
		})
	}
}

func rm(t *testing.T, root, rel string) {
	t.Helper()
	if err := os.RemoveAll(filepath.Join(root, rel)); err != nil {
		t.Fatal(err)
	}
}

func mount(t *testing.T, src, dst string, opts ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this case mounts a filesystem and needs root (CI runs as root)")
	}
	args := append(opts, src, dst)
	if src == "" {
		args = append(opts, dst)
	}
	if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
		t.Fatalf("mount %v: %v %s", args, err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dst).Run() })
}

// check names the file for each kind of bad input (and exits 2).
func TestCheckNamesBadFiles(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(root string)
		want  []string
	}{
		{"corrupt PEM", func(root string) {
			os.WriteFile(filepath.Join(root, "etc/kubernetes/pki/etcd/server.crt"), []byte("garbage"), 0o644)
		}, []string{"/etc/kubernetes/pki/etcd/server.crt", "not PEM"}},
		{"key mismatch", func(root string) {
			b, _ := os.ReadFile(filepath.Join(root, "etc/kubernetes/pki/apiserver.key"))
			os.WriteFile(filepath.Join(root, "etc/kubernetes/pki/apiserver-etcd-client.key"), b, 0o600)
		}, []string{"/etc/kubernetes/pki/apiserver-etcd-client.key", "does not match"}},
		{"missing CA", func(root string) {
			os.Remove(filepath.Join(root, "etc/kubernetes/pki/front-proxy-ca.crt"))
		}, []string{"/etc/kubernetes/pki/front-proxy-ca.crt is missing", "signing CA front-proxy-ca is missing"}},
		{"unreadable file", func(root string) {
			p := filepath.Join(root, "etc/kubernetes/pki/apiserver.crt")
			os.Remove(p)
			os.Mkdir(p, 0o755) // a directory where a file should be: read fails even for root
		}, []string{"/etc/kubernetes/pki/apiserver.crt"}},
		{"certificate of another node", func(root string) {
			other := t.TempDir()
			fixture.Generate(other, fixture.Options{NodeName: "cp-2", AdvertiseIP: "127.0.0.12", Now: now, Keys: keys})
			for _, f := range []string{"etcd/server.crt", "etcd/server.key"} {
				b, _ := os.ReadFile(filepath.Join(other, "etc/kubernetes/pki", f))
				os.WriteFile(filepath.Join(root, "etc/kubernetes/pki", f), b, 0o600)
			}
		}, []string{"/etc/kubernetes/pki/etcd/server.crt", "cp-1", "another control-plane node"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := expiredNode(t)
			tc.setup(root)
			r := kubecpr(t, nil, rootArgs(root, "check")...)
			if r.code != ExitExpired {
				t.Fatalf("exit %d, want 2\n%s%s", r.code, r.stdout, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stdout+r.stderr, w) {
					t.Errorf("output lacks %q:\n%s%s", w, r.stdout, r.stderr)
				}
			}
		})
	}
	// A root that is not a kubeadm node at all: exit 3, saying so.
	r := kubecpr(t, nil, rootArgs(t.TempDir(), "check")...)
	if r.code != ExitFailed || !strings.Contains(r.stderr, "unknown layout") && !strings.Contains(r.stderr, "could not determine") {
		t.Fatalf("empty root: exit %d\n%s", r.code, r.stderr)
	}
}

// Values no run can mean are refused before anything is read, exit 3,
// naming the flag (issue 19 item 16: --now 0001-01-01, --warn -1h and
// --only "" were accepted).
func TestNonsenseGlobalValuesRefused(t *testing.T) {
	root := expiredNode(t)
	before := snapshot(t, root)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--now", "0001-01-01T00:00:00Z", "check"}, "--now 0001-01-01T00:00:00Z: the year 1"},
		{[]string{"--now", "9999-01-01T00:00:00Z", "run", "--until", "kubeconfigs"}, "the year 9999"},
		{[]string{"--warn", "-1h", "check"}, "--warn -1h0m0s: must not be negative"},
		{[]string{"run", "--only", ""}, `--only "" names no stage`},
		{[]string{"run", "--only", " , "}, `names no stage`},
	} {
		r := kubecpr(t, nil, rootArgs(root, tc.args...)...)
		if r.code != ExitFailed || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, want %d and %q\n%s", tc.args, r.code, ExitFailed, tc.want, r.stderr)
		}
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Errorf("a refused command changed the node:\n%s", d)
	}
}
