package backup

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/kubecpr/kubecpr/recovery/atomicfile"
)

var (
	t0    = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	mtime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
)

var defaultSources = []string{"/etc/kubernetes", "/var/lib/kubelet/pki", "/var/lib/kubelet/config.yaml", "/root/.kube/config"}

const otherUID, otherGID = 4321, 8765

func host(root, np string) string { return filepath.Join(root, filepath.FromSlash(np)) }

func put(t *testing.T, root, np, content string, mode fs.FileMode) {
	t.Helper()
	p := host(root, np)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	must(t, os.Chmod(p, mode))
	must(t, os.Chtimes(p, mtime, mtime))
}

func link(t *testing.T, root, np, target string) {
	t.Helper()
	p := host(root, np)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Remove(p)
	must(t, os.Symlink(target, p))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func asRoot() bool { return os.Geteuid() == 0 }

// tree builds a small control-plane node under a fresh root.
func tree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	put(t, root, "/etc/kubernetes/admin.conf", "admin kubeconfig", 0o600)
	put(t, root, "/etc/kubernetes/kubelet.conf", "kubelet kubeconfig", 0o600)
	put(t, root, "/etc/kubernetes/manifests/kube-apiserver.yaml", "apiserver manifest", 0o644)
	put(t, root, "/etc/kubernetes/pki/ca.crt", "ca cert", 0o644)
	put(t, root, "/etc/kubernetes/pki/ca.key", "ca key", 0o600)
	put(t, root, "/etc/kubernetes/pki/etcd/server.crt", "etcd server cert", 0o644)
	put(t, root, "/etc/kubernetes/pki/etcd/server.key", "etcd server key", 0o600)
	must(t, os.Chmod(host(root, "/etc/kubernetes/pki/etcd"), 0o700))
	put(t, root, "/var/lib/kubelet/pki/kubelet-client-2026.pem", "kubelet client pem", 0o600)
	put(t, root, "/var/lib/kubelet/pki/kubelet.crt", "kubelet serving cert", 0o644)
	put(t, root, "/var/lib/kubelet/pki/kubelet.key", "kubelet serving key", 0o600)
	link(t, root, "/var/lib/kubelet/pki/kubelet-client-current.pem", "/var/lib/kubelet/pki/kubelet-client-2026.pem")
	link(t, root, "/etc/kubernetes/pki/relative-link", "../admin.conf")
	put(t, root, "/root/.kube/config", "user kubeconfig", 0o600)
	if asRoot() {
		must(t, os.Lchown(host(root, "/etc/kubernetes/pki/ca.crt"), otherUID, otherGID))
		must(t, os.Lchown(host(root, "/root/.kube/config"), otherUID, otherGID))
		must(t, os.Lchown(host(root, "/etc/kubernetes/pki/relative-link"), otherUID, otherGID))
		must(t, os.Lchown(host(root, "/etc/kubernetes/manifests"), otherUID, otherGID))
	}
	return root
}

// node is what a snapshot records of one path.
type node struct {
	Type   string
	Mode   fs.FileMode
	UID    uint32
	GID    uint32
	Link   string
	SHA256 string
	MTime  time.Time // files and symlinks only
}

// snapshot walks root (without following symlinks) and records every path.
func snapshot(t *testing.T, root string) map[string]node {
	t.Helper()
	out := map[string]node{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		n := node{Type: info.Mode().Type().String(), Mode: info.Mode().Perm(), UID: st.Uid, GID: st.Gid}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			if n.Link, err = os.Readlink(p); err != nil {
				return err
			}
			n.MTime = info.ModTime().UTC()
		case info.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s := sha256.Sum256(b)
			n.SHA256 = hex.EncodeToString(s[:])
			n.MTime = info.ModTime().UTC()
		}
		out["/"+filepath.ToSlash(rel)] = n
		return nil
	})
	must(t, err)
	return out
}

func newBackup(t *testing.T, root string, sources []string) (string, *Manifest) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "backups", "run-1")
	m, err := Create(root, dir, sources, t0)
	if err != nil {
		t.Fatal(err)
	}
	return dir, m
}

// Every kind of change a run (or an operator) can make is undone by a
// Restore with Prune, to the byte, mode, owner, link target and mtime.
func TestRestoreUndoesEveryChange(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rootOnly bool
		mutate   func(t *testing.T, root string)
		want     []string // changed paths Restore reports
	}{
		{
			name:   "content",
			mutate: func(t *testing.T, root string) { put(t, root, "/etc/kubernetes/admin.conf", "renewed", 0o600) },
			want:   []string{"/etc/kubernetes/admin.conf"},
		},
		{
			name: "same content, new mtime",
			mutate: func(t *testing.T, root string) {
				put(t, root, "/etc/kubernetes/admin.conf", "renewed", 0o600)
				put(t, root, "/etc/kubernetes/admin.conf", "admin kubeconfig", 0o600)
				must(t, os.Chtimes(host(root, "/etc/kubernetes/admin.conf"), t0, t0))
			},
			want: []string{"/etc/kubernetes/admin.conf"},
		},
		{
			name: "mode of a file and of a directory",
			mutate: func(t *testing.T, root string) {
				must(t, os.Chmod(host(root, "/etc/kubernetes/pki/ca.key"), 0o644))
				must(t, os.Chmod(host(root, "/etc/kubernetes/pki/etcd"), 0o755))
			},
			want: []string{"/etc/kubernetes/pki/etcd", "/etc/kubernetes/pki/ca.key"},
		},
		{
			name:     "owner of a file, a directory and a symlink",
			rootOnly: true,
			mutate: func(t *testing.T, root string) {
				must(t, os.Lchown(host(root, "/etc/kubernetes/pki/ca.crt"), 0, 0))
				must(t, os.Lchown(host(root, "/etc/kubernetes/manifests"), 0, 0))
				must(t, os.Lchown(host(root, "/etc/kubernetes/pki/relative-link"), 0, 0))
				must(t, os.Lchown(host(root, "/etc/kubernetes/admin.conf"), otherUID, otherGID))
			},
			want: []string{"/etc/kubernetes/manifests", "/etc/kubernetes/admin.conf", "/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/relative-link"},
		},
		{
			name: "kubelet rotation: new pem, link retargeted",
			mutate: func(t *testing.T, root string) {
				put(t, root, "/var/lib/kubelet/pki/kubelet-client-2027.pem", "new pem", 0o600)
				link(t, root, "/var/lib/kubelet/pki/kubelet-client-current.pem", "/var/lib/kubelet/pki/kubelet-client-2027.pem")
			},
			want: []string{"/var/lib/kubelet/pki/kubelet-client-current.pem", "/var/lib/kubelet/pki/kubelet-client-2027.pem"},
		},
		{
			name:   "file deleted",
			mutate: func(t *testing.T, root string) { must(t, os.Remove(host(root, "/etc/kubernetes/pki/ca.key"))) },
			want:   []string{"/etc/kubernetes/pki/ca.key"},
		},
		{
			name:   "whole directory deleted",
			mutate: func(t *testing.T, root string) { must(t, os.RemoveAll(host(root, "/etc/kubernetes/pki"))) },
			want: []string{"/etc/kubernetes/pki", "/etc/kubernetes/pki/etcd",
				"/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/ca.key",
				"/etc/kubernetes/pki/etcd/server.crt", "/etc/kubernetes/pki/etcd/server.key", "/etc/kubernetes/pki/relative-link"},
		},
		{
			name: "new file and new directory under backed-up directories",
			mutate: func(t *testing.T, root string) {
				put(t, root, "/etc/kubernetes/pki/apiserver.crt.kubecpr-new", "x", 0o600)
				put(t, root, "/etc/kubernetes/tmp/a/b", "x", 0o600)
			},
			want: []string{"/etc/kubernetes/pki/apiserver.crt.kubecpr-new", "/etc/kubernetes/tmp"},
		},
		{
			name:   "absent source appeared",
			mutate: func(t *testing.T, root string) { put(t, root, "/var/lib/kubelet/config.yaml", "new", 0o644) },
			want:   []string{"/var/lib/kubelet/config.yaml"},
		},
		{
			name: "symlink replaced by a file, file replaced by a symlink",
			mutate: func(t *testing.T, root string) {
				must(t, os.Remove(host(root, "/var/lib/kubelet/pki/kubelet-client-current.pem")))
				put(t, root, "/var/lib/kubelet/pki/kubelet-client-current.pem", "flat", 0o600)
				link(t, root, "/etc/kubernetes/kubelet.conf", "/var/lib/kubelet/pki/kubelet-client-current.pem")
			},
			want: []string{"/etc/kubernetes/kubelet.conf", "/var/lib/kubelet/pki/kubelet-client-current.pem"},
		},
		{
			name: "directory where a file was",
			mutate: func(t *testing.T, root string) {
				must(t, os.Remove(host(root, "/etc/kubernetes/admin.conf")))
				put(t, root, "/etc/kubernetes/admin.conf/inside", "x", 0o600)
			},
			want: []string{"/etc/kubernetes/admin.conf"},
		},
		{
			name:     "everything at once",
			rootOnly: true,
			mutate: func(t *testing.T, root string) {
				put(t, root, "/etc/kubernetes/admin.conf", "renewed", 0o600)
				must(t, os.Chmod(host(root, "/etc/kubernetes/pki/etcd/server.crt"), 0o666))
				must(t, os.Lchown(host(root, "/etc/kubernetes/pki/ca.crt"), 0, 0))
				put(t, root, "/var/lib/kubelet/pki/kubelet-client-2027.pem", "new pem", 0o600)
				link(t, root, "/var/lib/kubelet/pki/kubelet-client-current.pem", "/var/lib/kubelet/pki/kubelet-client-2027.pem")
				must(t, os.Remove(host(root, "/etc/kubernetes/pki/ca.key")))
				put(t, root, "/var/lib/kubelet/config.yaml", "new", 0o644)
				put(t, root, "/root/.kube/config", "user renewed", 0o644)
			},
			want: []string{
				"/etc/kubernetes/admin.conf", "/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/ca.key",
				"/etc/kubernetes/pki/etcd/server.crt", "/var/lib/kubelet/pki/kubelet-client-current.pem", "/root/.kube/config",
				"/var/lib/kubelet/config.yaml", "/var/lib/kubelet/pki/kubelet-client-2027.pem",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.rootOnly && !asRoot() {
				t.Skip("changes owners: needs root")
			}
			root := tree(t)
			before := snapshot(t, root)
			dir, _ := newBackup(t, root, defaultSources)
			if diff := cmp.Diff(before, snapshot(t, root)); diff != "" {
				t.Fatalf("Create changed the node:\n%s", diff)
			}

			tc.mutate(t, root)
			mutated := snapshot(t, root)
			if cmp.Diff(before, mutated) == "" {
				t.Fatal("the mutation did nothing")
			}

			dry, err := Restore(root, dir, RestoreOptions{Prune: true, DryRun: true})
			must(t, err)
			if diff := cmp.Diff(mutated, snapshot(t, root)); diff != "" {
				t.Fatalf("DryRun changed the node:\n%s", diff)
			}

			changed, err := Restore(root, dir, RestoreOptions{Prune: true})
			must(t, err)
			sortedEq := cmp.Transformer("sort", func(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s })
			if diff := cmp.Diff(tc.want, changed, sortedEq); diff != "" {
				t.Errorf("changed paths (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(changed, dry, sortedEq); diff != "" {
				t.Errorf("DryRun reported other paths than Restore changed (-restore +dry):\n%s", diff)
			}
			if diff := cmp.Diff(before, snapshot(t, root)); diff != "" {
				t.Fatalf("not identical after restore (-before +after):\n%s", diff)
			}

			again, err := Restore(root, dir, RestoreOptions{Prune: true})
			if err != nil || len(again) != 0 {
				t.Fatalf("second restore changed %v (%v)", again, err)
			}
			must(t, Verify(dir))
		})
	}
}

func TestCreateLayoutAndManifest(t *testing.T) {
	root := tree(t)
	must(t, unix.Mkfifo(host(root, "/etc/kubernetes/fifo"), 0o600))
	sources := append(slices.Clone(defaultSources), "/etc/kubernetes/pki", "etc/kubernetes/../kubernetes/admin.conf")
	dir, m := newBackup(t, root, sources)

	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("backup dir: %v %v, want mode 0700", st.Mode().Perm(), err)
	}
	err := filepath.WalkDir(filepath.Join(dir, "files"), func(p string, d fs.DirEntry, err error) error {
		must(t, err)
		info, _ := d.Info()
		if d.IsDir() && info.Mode().Perm() != 0o700 || !d.IsDir() && info.Mode() != 0o600 {
			t.Errorf("%s: mode %v, want a 0700 directory or a 0600 regular file", p, info.Mode())
		}
		return nil
	})
	must(t, err)
	if st, err := os.Stat(filepath.Join(dir, "manifest.json")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("manifest: %v %v", st, err)
	}

	want := map[string]Entry{
		"/etc/kubernetes/pki/ca.key": {Type: TypeFile, Mode: 0o600, Size: 6, Blob: "files/etc/kubernetes/pki/ca.key", SHA256: sum("ca key")},
		"/etc/kubernetes/pki/etcd":   {Type: TypeDir, Mode: 0o700},
		"/var/lib/kubelet/pki/kubelet-client-current.pem": {Type: TypeSymlink, Mode: 0o777,
			Link: "/var/lib/kubelet/pki/kubelet-client-2026.pem", Size: int64(len("/var/lib/kubelet/pki/kubelet-client-2026.pem"))},
		"/etc/kubernetes/pki/relative-link": {Type: TypeSymlink, Mode: 0o777, Link: "../admin.conf", Size: 13},
	}
	if asRoot() {
		w := want["/etc/kubernetes/pki/relative-link"]
		w.UID, w.GID = otherUID, otherGID
		want["/etc/kubernetes/pki/relative-link"] = w
	}
	for p, w := range want {
		got, ok := m.Lookup(p)
		if !ok {
			t.Errorf("%s not in the manifest", p)
			continue
		}
		w.Path = p
		if w.UID == 0 && w.GID == 0 { // made by this process
			w.UID, w.GID = os.Geteuid(), os.Getegid()
		}
		if w.Type == TypeFile {
			w.ModTime = mtime
		} else {
			w.ModTime = got.ModTime
		}
		if diff := cmp.Diff(w, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", p, diff)
		}
	}
	if e, _ := m.Lookup("/etc/kubernetes/pki/ca.crt"); asRoot() && (e.UID != otherUID || e.GID != otherGID) {
		t.Errorf("ca.crt owner %d:%d", e.UID, e.GID)
	}
	if diff := cmp.Diff([]string{"/var/lib/kubelet/config.yaml"}, m.Absent); diff != "" {
		t.Errorf("absent: %s", diff)
	}
	if diff := cmp.Diff([]string{"/etc/kubernetes/fifo"}, m.Skipped); diff != "" {
		t.Errorf("skipped: %s", diff)
	}
	wantSources := append(slices.Clone(defaultSources), "/etc/kubernetes/pki", "/etc/kubernetes/admin.conf")
	if diff := cmp.Diff(wantSources, m.Sources); diff != "" {
		t.Errorf("sources: %s", diff)
	}
	count := map[string]int{}
	for _, e := range m.Entries {
		count[e.Path]++
	}
	for p, n := range count {
		if n > 1 {
			t.Errorf("%s recorded %d times", p, n)
		}
	}

	// What Load reads is what Create returned.
	loaded, err := Load(dir)
	must(t, err)
	if diff := cmp.Diff(m, loaded, cmp.AllowUnexported(Manifest{})); diff != "" {
		t.Errorf("Load (-created +loaded):\n%s", diff)
	}
	if m.RunID != "run-1" || !m.Created.Equal(t0) || m.Version != ManifestVersion {
		t.Errorf("header %q %v %d", m.RunID, m.Created, m.Version)
	}

	// A FIFO is left alone by Restore with Prune.
	changed, err := Restore(root, dir, RestoreOptions{Prune: true})
	if err != nil || len(changed) != 0 {
		t.Fatalf("restore of an unchanged node: %v %v", changed, err)
	}
	if _, err := os.Lstat(host(root, "/etc/kubernetes/fifo")); err != nil {
		t.Error("the FIFO was pruned")
	}
}

// On a rehearsal copy, absolute symlinks resolve inside the root: a
// /var/lib/kubelet -> /data/kubelet link or a whole /etc/kubernetes that is
// a link never reach the real node's files.
func TestSymlinkedDirectoriesStayInsideRoot(t *testing.T) {
	root := t.TempDir()
	put(t, root, "/data/kubelet/pki/kubelet.key", "key inside the root", 0o600)
	link(t, root, "/var/lib/kubelet", "/data/kubelet")
	put(t, root, "/srv/k8s/pki/ca.crt", "ca inside the root", 0o644)
	link(t, root, "/etc/kubernetes", "/srv/k8s")
	link(t, root, "/etc/kubernetes-link-to-file", "/srv/k8s/pki/ca.crt")
	before := snapshot(t, root)

	dir, m := newBackup(t, root, []string{"/etc/kubernetes", "/var/lib/kubelet/pki", "/etc/kubernetes-link-to-file"})
	key, ok := m.Lookup("/var/lib/kubelet/pki/kubelet.key")
	if !ok || key.SHA256 != sum("key inside the root") {
		t.Fatalf("kubelet.key through /var/lib/kubelet -> /data/kubelet: %+v %v", key, ok)
	}
	if e, ok := m.Lookup("/etc/kubernetes/pki/ca.crt"); !ok || e.Type != TypeFile {
		t.Fatalf("ca.crt through /etc/kubernetes -> /srv/k8s: %+v %v", e, ok)
	}
	if e, ok := m.Lookup("/etc/kubernetes"); !ok || e.Type != TypeDir {
		t.Errorf("/etc/kubernetes: %+v", e)
	}
	if e, ok := m.Lookup("/etc/kubernetes-link-to-file"); !ok || e.Type != TypeSymlink || e.Link != "/srv/k8s/pki/ca.crt" {
		t.Errorf("a source linking to a file is kept as a link: %+v", e)
	}
	if diff := cmp.Diff(map[string]string{"/etc/kubernetes": "/srv/k8s"}, m.Resolved); diff != "" {
		t.Errorf("resolved: %s", diff)
	}

	put(t, root, "/data/kubelet/pki/kubelet.key", "changed", 0o644)
	put(t, root, "/srv/k8s/pki/new", "new", 0o644)
	must(t, os.Remove(host(root, "/srv/k8s/pki/ca.crt")))
	changed, err := Restore(root, dir, RestoreOptions{Prune: true})
	must(t, err)
	if diff := cmp.Diff(before, snapshot(t, root)); diff != "" {
		t.Fatalf("not identical after restore (%v):\n%s", changed, diff)
	}
}

func TestRestoreOnly(t *testing.T) {
	root := tree(t)
	dir, _ := newBackup(t, root, defaultSources)
	put(t, root, "/etc/kubernetes/admin.conf", "renewed", 0o600)
	put(t, root, "/etc/kubernetes/pki/ca.crt", "renewed", 0o644)
	put(t, root, "/etc/kubernetes/pki/new.crt", "new", 0o644)
	put(t, root, "/var/lib/kubelet/config.yaml", "new", 0o644)

	for _, tc := range []struct {
		only, want []string
		wantErr    string
	}{
		{only: []string{"/etc/kubernetes/admin.conf"}, want: []string{"/etc/kubernetes/admin.conf"}},
		{only: []string{"/etc/kubernetes/pki"}, want: []string{"/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/new.crt"}},
		{only: []string{"/var/lib/kubelet/config.yaml"}, want: []string{"/var/lib/kubelet/config.yaml"}},
		{only: []string{"/etc/ssl/certs", "/etc/kubernetes/admin.conf"}, wantErr: "/etc/ssl/certs"},
	} {
		t.Run(strings.Join(tc.only, ","), func(t *testing.T) {
			got, err := Restore(root, dir, RestoreOptions{Only: tc.only, Prune: true, DryRun: true})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			must(t, err)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	changed, err := Restore(root, dir, RestoreOptions{Only: []string{"/etc/kubernetes/admin.conf"}})
	must(t, err)
	if diff := cmp.Diff([]string{"/etc/kubernetes/admin.conf"}, changed); diff != "" {
		t.Error(diff)
	}
	if b, _ := os.ReadFile(host(root, "/etc/kubernetes/pki/ca.crt")); string(b) != "renewed" {
		t.Error("a path outside Only was restored")
	}
}

// RestoreEntry alone (what rollback uses) restores one entry, with its
// owner, onto a missing path and over a newer file.
func TestRestoreEntry(t *testing.T) {
	root := tree(t)
	before := snapshot(t, root)
	dir, m := newBackup(t, root, defaultSources)
	for _, p := range []string{"/etc/kubernetes/pki/ca.crt", "/root/.kube/config", "/var/lib/kubelet/pki/kubelet-client-current.pem"} {
		must(t, os.Remove(host(root, p)))
		e, ok := m.Lookup(p)
		if !ok {
			t.Fatalf("%s not found", p)
		}
		must(t, RestoreEntry(root, dir, e))
		must(t, RestoreEntry(root, dir, e)) // idempotent
	}
	put(t, root, "/etc/kubernetes/admin.conf", "renewed", 0o644)
	e, _ := m.Lookup("/etc/kubernetes/admin.conf")
	must(t, RestoreEntry(root, dir, e))
	if diff := cmp.Diff(before, snapshot(t, root)); diff != "" {
		t.Fatalf("(-before +after):\n%s", diff)
	}
	if err := RestoreEntry(root, dir, Entry{Path: "/etc/x", Type: TypeFile, Blob: "../../../etc/shadow", SHA256: strings.Repeat("0", 64)}); err == nil {
		t.Error("an entry whose blob leaves the backup was accepted")
	}
}

func TestVerifyNamesDamagedBlobs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   []string
	}{
		{name: "intact"},
		{
			name: "flipped byte",
			damage: func(t *testing.T, dir string) {
				f := filepath.Join(dir, "files/etc/kubernetes/pki/ca.crt")
				b, err := os.ReadFile(f)
				must(t, err)
				b[0] ^= 1
				must(t, os.WriteFile(f, b, 0o600))
			},
			want: []string{"/etc/kubernetes/pki/ca.crt", "damaged"},
		},
		{
			name: "missing blob",
			damage: func(t *testing.T, dir string) {
				must(t, os.Remove(filepath.Join(dir, "files/etc/kubernetes/admin.conf")))
			},
			want: []string{"/etc/kubernetes/admin.conf", "missing"},
		},
		{
			name: "both, and a truncated one",
			damage: func(t *testing.T, dir string) {
				f := filepath.Join(dir, "files/etc/kubernetes/pki/ca.crt")
				b, _ := os.ReadFile(f)
				b[len(b)-1] ^= 0x80
				must(t, os.WriteFile(f, b, 0o600))
				must(t, os.Remove(filepath.Join(dir, "files/etc/kubernetes/admin.conf")))
				must(t, os.Truncate(filepath.Join(dir, "files/var/lib/kubelet/pki/kubelet.key"), 0))
			},
			want: []string{"/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/admin.conf", "/var/lib/kubelet/pki/kubelet.key"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := tree(t)
			dir, m := newBackup(t, root, defaultSources)
			if tc.damage == nil {
				must(t, Verify(dir))
				return
			}
			tc.damage(t, dir)
			err := Verify(dir)
			if err == nil {
				t.Fatal("Verify passed a damaged backup")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Verify error lacks %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), "ca key") || strings.Contains(err.Error(), "admin kubeconfig") {
				t.Errorf("file contents in an error: %v", err)
			}
			// A damaged blob is never restored.
			if strings.Contains(tc.name, "flipped") {
				put(t, root, "/etc/kubernetes/pki/ca.crt", "renewed", 0o644)
				e, _ := m.Lookup("/etc/kubernetes/pki/ca.crt")
				if err := RestoreEntry(root, dir, e); err == nil || !strings.Contains(err.Error(), "damaged") {
					t.Fatalf("restored from a damaged blob: %v", err)
				}
				if b, _ := os.ReadFile(host(root, "/etc/kubernetes/pki/ca.crt")); string(b) != "renewed" {
					t.Fatal("the node file was touched")
				}
			}
		})
	}
}

func TestLoad(t *testing.T) {
	for _, tc := range []struct {
		name     string
		manifest func(m map[string]any)
		want     string
	}{
		{name: "no manifest", want: "incomplete backup"},
		{name: "not json", manifest: func(map[string]any) {}, want: "does not parse"},
		{name: "future version", manifest: func(m map[string]any) { m["version"] = 99 }, want: "version 99"},
		{name: "blob outside the backup", manifest: func(m map[string]any) {
			m["entries"] = []map[string]any{{"path": "/etc/x", "type": "file", "blob": "../../etc/shadow", "sha256": strings.Repeat("0", 64)}}
		}, want: "blob"},
		{name: "relative path", manifest: func(m map[string]any) {
			m["entries"] = []map[string]any{{"path": "etc/../../x", "type": "dir"}}
		}, want: "clean absolute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.manifest != nil {
				m := map[string]any{"version": 1, "runID": "r"}
				tc.manifest(m)
				b, _ := json.Marshal(m)
				if tc.name == "not json" {
					b = []byte("{")
				}
				must(t, os.WriteFile(filepath.Join(dir, "manifest.json"), b, 0o600))
			}
			_, err := Load(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if tc.manifest == nil && !errors.Is(err, ErrIncomplete) {
				t.Fatalf("err = %v, want ErrIncomplete", err)
			}
		})
	}
}

// Create is idempotent for a resumed run and never overwrites a backup
// taken before the first change.
func TestCreateAgain(t *testing.T) {
	root := tree(t)
	dir, m := newBackup(t, root, defaultSources)
	put(t, root, "/etc/kubernetes/admin.conf", "renewed", 0o600)

	again, err := Create(root, dir, defaultSources, t0.Add(time.Hour))
	must(t, err)
	if diff := cmp.Diff(m, again, cmp.AllowUnexported(Manifest{})); diff != "" {
		t.Fatalf("second Create rewrote the backup:\n%s", diff)
	}
	must(t, Verify(dir))
	if b, _ := os.ReadFile(filepath.Join(dir, "files/etc/kubernetes/admin.conf")); string(b) != "admin kubeconfig" {
		t.Fatal("the blob was overwritten with the changed file")
	}

	_, err = Create(root, dir, []string{"/etc/kubernetes"}, t0)
	if !errors.Is(err, ErrExists) {
		t.Fatalf("other sources: err = %v, want ErrExists", err)
	}

	// A dir left by an interrupted Create is taken again from scratch.
	partial := filepath.Join(t.TempDir(), "run-2")
	put(t, partial, "/files/etc/kubernetes/stale", "stale", 0o600)
	put(t, partial, "/.manifest.json.kubecpr-123", "{", 0o600)
	m2, err := Create(root, partial, defaultSources, t0)
	must(t, err)
	if _, err := os.Lstat(filepath.Join(partial, "files/etc/kubernetes/stale")); err == nil {
		t.Error("a stale blob survived")
	}
	if _, ok := m2.Lookup("/etc/kubernetes/admin.conf"); !ok {
		t.Error("new backup incomplete")
	}

	// Something that is not a backup is refused, not deleted.
	foreign := filepath.Join(t.TempDir(), "run-3")
	put(t, foreign, "/precious", "x", 0o600)
	if _, err := Create(root, foreign, defaultSources, t0); err == nil || !strings.Contains(err.Error(), "precious") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Lstat(filepath.Join(foreign, "precious")); err != nil {
		t.Fatal("a foreign file was deleted")
	}
}

func TestCheckSpace(t *testing.T) {
	for _, tc := range []struct {
		name string
		dir  string
		need uint64
		ok   bool
	}{
		{name: "small", dir: t.TempDir(), need: 1 << 10, ok: true},
		{name: "dir not created yet", dir: filepath.Join(t.TempDir(), "a/b/c"), need: 1 << 10, ok: true},
		{name: "huge", dir: t.TempDir(), need: 1 << 62},
		{name: "overflowing", dir: t.TempDir(), need: ^uint64(0) - 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckSpace(tc.dir, tc.need)
			if tc.ok {
				must(t, err)
				return
			}
			var se *SpaceError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want a SpaceError", err)
			}
			if se.Need < tc.need || se.Free == 0 {
				t.Errorf("%+v", se)
			}
			for _, w := range []string{"not enough space for the backup", "need", "free", "--state-dir"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message lacks %q: %v", w, err)
				}
			}
		})
	}
}

func TestSize(t *testing.T) {
	root := tree(t)
	got, err := Size(root, defaultSources)
	must(t, err)
	_, m := newBackup(t, root, defaultSources)
	var bytes uint64
	for _, e := range m.Entries {
		if e.Type == TypeFile {
			bytes += uint64(e.Size)
		}
	}
	if got < bytes || got < uint64(len(m.Entries))*4096 {
		t.Errorf("Size %d for %d entries, %d bytes", got, len(m.Entries), bytes)
	}
}

// mountTmpfs mounts a small tmpfs on a fresh directory (root only).
func mountTmpfs(t *testing.T, opts string) string {
	t.Helper()
	if !asRoot() {
		t.Skip("needs root to mount a tmpfs (run the tests as root to cover a real full disk)")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("root, but mount -t tmpfs failed (no CAP_SYS_ADMIN in this container?): %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", mnt, err, out)
		}
	})
	return mnt
}

// A real full disk: the backup dir on a 1 MiB tmpfs, 4 MiB to copy. Create
// stops before writing anything.
func TestFullDiskStopsBeforeWriting(t *testing.T) {
	mnt := mountTmpfs(t, "size=1m")
	root := tree(t)
	put(t, root, "/etc/kubernetes/big", strings.Repeat("x", 4<<20), 0o600)
	before := snapshot(t, root)
	_, err := Create(root, filepath.Join(mnt, "backups", "run"), defaultSources, t0)
	var se *SpaceError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want SpaceError", err)
	}
	if se.Free > 1<<20 || se.Need < 4<<20 {
		t.Errorf("%+v", se)
	}
	if ents, _ := os.ReadDir(mnt); len(ents) != 0 {
		t.Fatalf("something was written to the full disk: %v", ents)
	}
	if diff := cmp.Diff(before, snapshot(t, root)); diff != "" {
		t.Fatalf("the node changed:\n%s", diff)
	}
}

// Running out of inodes in the middle of the copy (the space check passed)
// leaves no partial backup behind.
func TestFailureMidCopyLeavesNothing(t *testing.T) {
	mnt := mountTmpfs(t, "size=64m,nr_inodes=12")
	root := tree(t)
	_, err := Create(root, filepath.Join(mnt, "backups", "run"), defaultSources, t0)
	if err == nil || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("err = %v, want ENOSPC", err)
	}
	if ents, _ := os.ReadDir(mnt); len(ents) != 0 {
		t.Fatalf("a partial backup was left: %v", ents)
	}
}

func TestEtcdSnapshot(t *testing.T) {
	root := tree(t)
	dir, m := newBackup(t, root, defaultSources)
	snap := filepath.Join(t.TempDir(), "snapshot.db")
	must(t, os.WriteFile(snap, []byte("etcd snapshot bytes"), 0o644))
	must(t, m.AddEtcdSnapshot(dir, snap))
	loaded, err := Load(dir)
	must(t, err)
	if loaded.EtcdSnapshot == nil || loaded.EtcdSnapshot.Blob != "etcd/snapshot.db" || loaded.EtcdSnapshot.Size != 19 {
		t.Fatalf("etcd snapshot entry: %+v", loaded.EtcdSnapshot)
	}
	if st, _ := os.Stat(filepath.Join(dir, "etcd/snapshot.db")); st.Mode().Perm() != 0o600 {
		t.Errorf("snapshot blob mode %v", st.Mode().Perm())
	}
	must(t, Verify(dir))
	must(t, os.WriteFile(filepath.Join(dir, "etcd/snapshot.db"), []byte("etcd snapshot bytez"), 0o600))
	if err := Verify(dir); err == nil || !strings.Contains(err.Error(), snap) {
		t.Fatalf("Verify of a damaged snapshot: %v", err)
	}
}

// The restored bytes carry the recorded owner from the moment they exist:
// the temporary file is already chowned before it is renamed into place,
// whether the target is missing or owned by someone else now.
func TestRestoredBytesNeverHaveAnotherOwner(t *testing.T) {
	if !asRoot() {
		t.Skip("changes owners: needs root")
	}
	root := tree(t)
	dir, _ := newBackup(t, root, defaultSources)
	must(t, os.Lchown(host(root, "/etc/kubernetes/pki/ca.key"), otherUID, otherGID)) // recorded: root
	put(t, root, "/etc/kubernetes/pki/ca.key", "renewed key", 0o600)
	must(t, os.Remove(host(root, "/root/.kube/config"))) // recorded: otherUID

	want := map[string]uint32{"/etc/kubernetes/pki/ca.key": 0, "/root/.kube/config": otherUID}
	seen := map[string]bool{}
	atomicfile.Syncer = func(step, p string) error {
		if step != "rename" {
			return nil
		}
		np := "/" + filepath.ToSlash(strings.TrimPrefix(p, root+"/"))
		uid, ok := want[np]
		if !ok {
			return nil
		}
		tmps, _ := filepath.Glob(filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".kubecpr-*"))
		if len(tmps) != 1 {
			t.Errorf("%s: temporary files %v", np, tmps)
			return nil
		}
		st, err := os.Lstat(tmps[0])
		must(t, err)
		if got := st.Sys().(*syscall.Stat_t).Uid; got != uid {
			t.Errorf("%s: the restored bytes were owned by uid %d before the rename, want %d", np, got, uid)
		}
		seen[np] = true
		return nil
	}
	t.Cleanup(func() { atomicfile.Syncer = nil })
	_, err := Restore(root, dir, RestoreOptions{})
	must(t, err)
	if len(seen) != len(want) {
		t.Errorf("checked %v, want %v", seen, want)
	}
}

// A state dir inside a backed-up tree: the backup does not copy itself and
// Restore with Prune does not delete it.
func TestBackupInsideASource(t *testing.T) {
	root := tree(t)
	before := snapshot(t, root)
	dir := host(root, "/var/lib/kubecpr/backups/run-1")
	m, err := Create(root, dir, []string{"/var/lib", "/etc/kubernetes"}, t0)
	must(t, err)
	if diff := cmp.Diff([]string{"/var/lib/kubecpr"}, m.Skipped); diff != "" {
		t.Errorf("skipped: %s", diff)
	}
	for _, e := range m.Entries {
		if strings.HasPrefix(e.Path, "/var/lib/kubecpr") {
			t.Errorf("the backup copied its own directory: %s", e.Path)
		}
	}
	put(t, root, "/var/lib/kubelet/pki/kubelet-client-2027.pem", "new pem", 0o600)
	changed, err := Restore(root, dir, RestoreOptions{Prune: true})
	must(t, err)
	if diff := cmp.Diff([]string{"/var/lib/kubelet/pki/kubelet-client-2027.pem"}, changed); diff != "" {
		t.Errorf("changed: %s", diff)
	}
	must(t, Verify(dir))
	after := snapshot(t, root)
	for p := range after {
		if strings.HasPrefix(p, "/var/lib/kubecpr") {
			delete(after, p)
		}
	}
	if diff := cmp.Diff(before, after); diff != "" {
		t.Fatalf("(-before +after):\n%s", diff)
	}
}
