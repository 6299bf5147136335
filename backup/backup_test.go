package backup

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/test/treesnap"
)

var t0 = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)

func put(t *testing.T, root, np, content string, mode fs.FileMode) {
	t.Helper()
	p := filepath.Join(root, np)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
}

func tree(t *testing.T) string {
	root := t.TempDir()
	put(t, root, "etc/kubernetes/admin.conf", "admin", 0o600)
	put(t, root, "etc/kubernetes/pki/ca.crt", "ca", 0o644)
	put(t, root, "etc/kubernetes/pki/ca.key", "key", 0o600)
	put(t, root, "etc/kubernetes/pki/etcd/server.crt", "srv", 0o644)
	put(t, root, "var/lib/kubelet/pki/kubelet-client-2026.pem", "pem", 0o600)
	os.Symlink("/var/lib/kubelet/pki/kubelet-client-2026.pem", filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem"))
	if os.Geteuid() == 0 {
		os.Chown(filepath.Join(root, "etc/kubernetes/pki/ca.crt"), 4321, 8765)
	}
	return root
}

func walk(t *testing.T, root string) map[string]string { return treesnap.Take(t, root) }

func TestCreateMutateRestoreIsByteIdentical(t *testing.T) {
	root := tree(t)
	sources := []string{"/etc/kubernetes", "/var/lib/kubelet/pki", "/var/lib/kubelet/config.yaml"}
	before := walk(t, root)
	dir := filepath.Join(t.TempDir(), "backups", "run-1")
	m, err := Create(root, dir, sources, t0)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("backup dir mode %v, want 0700", st.Mode().Perm())
	}
	if e, ok := m.Lookup("/etc/kubernetes/pki/ca.key"); !ok || e.Mode != 0o600 || e.SHA256 == "" {
		t.Errorf("ca.key entry %+v", e)
	}
	if blob, _ := os.Stat(filepath.Join(dir, "files/etc/kubernetes/pki/ca.crt")); blob.Mode().Perm() != 0o600 {
		t.Errorf("blob mode %v, want 0600", blob.Mode().Perm())
	}
	if cmp.Diff([]string{"/var/lib/kubelet/config.yaml"}, m.Absent) != "" {
		t.Errorf("absent = %v", m.Absent)
	}

	// Mutate: content, mode, owner, link target, delete, add, add an absent source.
	put(t, root, "etc/kubernetes/admin.conf", "renewed", 0o600)
	os.Chmod(filepath.Join(root, "etc/kubernetes/pki/etcd/server.crt"), 0o666)
	os.Chown(filepath.Join(root, "etc/kubernetes/pki/ca.crt"), 0, 0)
	os.Remove(filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem"))
	os.Symlink("/var/lib/kubelet/pki/kubelet-client-2027.pem", filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem"))
	put(t, root, "var/lib/kubelet/pki/kubelet-client-2027.pem", "new", 0o600)
	os.Remove(filepath.Join(root, "etc/kubernetes/pki/ca.key"))
	put(t, root, "var/lib/kubelet/config.yaml", "new", 0o644)
	if diff := cmp.Diff(before, walk(t, root)); diff == "" {
		t.Fatal("mutation did nothing")
	}

	changed, err := Restore(root, dir, RestoreOptions{Prune: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) < 6 {
		t.Errorf("changed %v", changed)
	}
	if diff := cmp.Diff(before, walk(t, root)); diff != "" {
		t.Fatalf("not byte-identical after restore (-before +after):\n%s", diff)
	}
	// Idempotent.
	changed, err = Restore(root, dir, RestoreOptions{Prune: true})
	if err != nil || len(changed) != 0 {
		t.Fatalf("second restore changed %v (%v)", changed, err)
	}
	if err := Verify(dir); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyNamesDamagedBlobs(t *testing.T) {
	root := tree(t)
	dir := filepath.Join(t.TempDir(), "b")
	if _, err := Create(root, dir, []string{"/etc/kubernetes"}, t0); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "files/etc/kubernetes/pki/ca.crt")
	b, _ := os.ReadFile(f)
	b[0] ^= 1
	os.WriteFile(f, b, 0o600)
	os.Remove(filepath.Join(dir, "files/etc/kubernetes/admin.conf"))
	err := Verify(dir)
	if err == nil || !strings.Contains(err.Error(), "/etc/kubernetes/pki/ca.crt") || !strings.Contains(err.Error(), "/etc/kubernetes/admin.conf") {
		t.Fatalf("Verify: %v", err)
	}
	// A damaged blob is never restored.
	if err := RestoreEntry(root, dir, mustLookup(t, dir, "/etc/kubernetes/pki/ca.crt")); err == nil {
		t.Fatal("restored a damaged blob")
	}
}

func mustLookup(t *testing.T, dir, p string) Entry {
	m, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := m.Lookup(p)
	if !ok {
		t.Fatalf("%s not in backup", p)
	}
	return e
}

func TestLoadIncomplete(t *testing.T) {
	_, err := Load(t.TempDir())
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("err = %v", err)
	}
}

func TestCheckSpace(t *testing.T) {
	err := CheckSpace(t.TempDir(), 1<<62)
	var se *SpaceError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "--state-dir") {
		t.Fatalf("err = %v", err)
	}
}

// A real full disk: the backup dir on a 1 MiB tmpfs, a 4 MiB file to copy.
func TestFullDiskStopsBeforeWriting(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a tmpfs and needs root (CI runs as root)")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	root := tree(t)
	put(t, root, "etc/kubernetes/big", strings.Repeat("x", 4<<20), 0o600)
	dir := filepath.Join(mnt, "backups", "run")
	_, err := Create(root, dir, []string{"/etc/kubernetes"}, t0)
	var se *SpaceError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want SpaceError", err)
	}
	if ents, _ := os.ReadDir(mnt); len(ents) != 0 {
		t.Fatalf("something was written to the full disk: %v", ents)
	}
}
