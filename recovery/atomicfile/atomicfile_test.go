package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestWriteFileKeepsModeAndOwner(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "admin.conf")
	if err := os.WriteFile(p, []byte("old"), 0o640); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(p, 1234, 5678); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteFile(p, []byte("new"), Options{Mode: 0o600}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	if string(got) != "new" {
		t.Fatalf("content %q", got)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640 kept", st.Mode().Perm())
	}
	if os.Geteuid() == 0 {
		sys := st.Sys().(*syscall.Stat_t)
		if sys.Uid != 1234 || sys.Gid != 5678 {
			t.Errorf("owner %d:%d, want 1234:5678 kept", sys.Uid, sys.Gid)
		}
	}
	if err := WriteFile(p, []byte("newer"), Options{Mode: 0o600, ForceMode: true}); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Errorf("ForceMode: mode %v, want 0600", st.Mode().Perm())
	}
	assertNoTemp(t, dir)
}

func TestWriteFileNewDefaultsTo0600(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k.key")
	if err := WriteFile(p, []byte("secret"), Options{}); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
}

func TestWriteFileRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "current.pem")
	if err := os.Symlink("/nowhere", link); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(link, []byte("x"), Options{}); err == nil {
		t.Fatal("replaced a symlink with a file")
	}
	if err := WriteFile(dir, []byte("x"), Options{}); err == nil {
		t.Fatal("replaced a directory")
	}
	if tgt, _ := os.Readlink(link); tgt != "/nowhere" {
		t.Fatalf("symlink changed to %q", tgt)
	}
}

// A failure at any durable step leaves the old content and no temp file.
func TestWriteFileCrashLeavesOldOrNew(t *testing.T) {
	for _, step := range []string{"sync", "rename"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "f")
			os.WriteFile(p, []byte("old"), 0o600)
			boom := errors.New("injected")
			Syncer = func(s, _ string) error {
				if s == step {
					return boom
				}
				return nil
			}
			defer func() { Syncer = nil }()
			if err := WriteFile(p, []byte("new"), Options{}); !errors.Is(err, boom) {
				t.Fatalf("err = %v", err)
			}
			got, _ := os.ReadFile(p)
			if string(got) != "old" {
				t.Fatalf("content %q after failed write, want old", got)
			}
			assertNoTemp(t, dir)
		})
	}
}

func TestReplaceSymlink(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "kubelet-client-current.pem")
	if err := ReplaceSymlink(link, "/var/lib/kubelet/pki/a.pem"); err != nil {
		t.Fatal(err)
	}
	if err := ReplaceSymlink(link, "/var/lib/kubelet/pki/b.pem"); err != nil {
		t.Fatal(err)
	}
	if tgt, _ := os.Readlink(link); tgt != "/var/lib/kubelet/pki/b.pem" {
		t.Fatalf("target %q", tgt)
	}
	reg := filepath.Join(dir, "regular")
	os.WriteFile(reg, nil, 0o600)
	if err := ReplaceSymlink(reg, "x"); err == nil {
		t.Fatal("replaced a regular file with a symlink")
	}
	assertNoTemp(t, dir)
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if len(e.Name()) > 0 && e.Name()[0] == '.' {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}

// A batch changes no target until Flush; a failure at any file's fsync or
// rename leaves the targets not yet renamed with their old bytes and no
// temporary file; Discard removes what an unflushed batch prepared.
func TestBatchAllOrOldAndNoTemps(t *testing.T) {
	for _, step := range []string{"sync", "rename"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			names := []string{"a.crt", "b.crt", "c.crt"}
			for _, n := range names {
				os.WriteFile(filepath.Join(dir, n), []byte("old "+n), 0o644)
			}
			boom := errors.New("injected")
			seen := 0
			Syncer = func(s, _ string) error {
				if s == step {
					if seen++; seen == 2 {
						return boom
					}
				}
				return nil
			}
			defer func() { Syncer = nil }()
			b := On(nil).Batch()
			for _, n := range names {
				if err := b.WriteFile(filepath.Join(dir, n), []byte("new "+n), Options{}); err != nil {
					t.Fatal(err)
				}
			}
			for _, n := range names {
				if got, _ := os.ReadFile(filepath.Join(dir, n)); string(got) != "old "+n {
					t.Fatalf("%s changed before Flush: %q", n, got)
				}
			}
			if err := b.Flush(); !errors.Is(err, boom) {
				t.Fatalf("Flush: %v, want the injected error", err)
			}
			for i, n := range names {
				got, _ := os.ReadFile(filepath.Join(dir, n))
				want := "old " + n
				if step == "rename" && i == 0 {
					want = "new " + n // renamed before the failing one
				}
				if string(got) != want {
					t.Errorf("%s = %q after a failed %s, want %q", n, got, step, want)
				}
			}
			assertNoTemp(t, dir)
		})
	}
	t.Run("discard", func(t *testing.T) {
		dir := t.TempDir()
		p := filepath.Join(dir, "kubelet.conf")
		os.WriteFile(p, []byte("old"), 0o600)
		b := On(nil).Batch()
		if err := b.WriteFile(p, []byte("new"), Options{}); err != nil {
			t.Fatal(err)
		}
		if err := b.ReplaceSymlink(filepath.Join(dir, "current.pem"), "/x.pem"); err != nil {
			t.Fatal(err)
		}
		b.Discard()
		if got, _ := os.ReadFile(p); string(got) != "old" {
			t.Errorf("target changed by a discarded batch: %q", got)
		}
		if _, err := os.Lstat(filepath.Join(dir, "current.pem")); err == nil {
			t.Error("a discarded batch made its symlink")
		}
		assertNoTemp(t, dir)
		if err := b.Flush(); err != nil {
			t.Errorf("Flush after Discard: %v", err)
		}
	})
	t.Run("order", func(t *testing.T) {
		dir := t.TempDir()
		b := On(nil).Batch()
		pem := filepath.Join(dir, "kubelet-client-2026.pem")
		link := filepath.Join(dir, "kubelet-client-current.pem")
		var renamed []string
		Syncer = func(s, p string) error {
			if s == "rename" {
				renamed = append(renamed, filepath.Base(p))
			}
			return nil
		}
		defer func() { Syncer = nil }()
		if err := b.WriteFile(pem, []byte("pair"), Options{}); err != nil {
			t.Fatal(err)
		}
		if err := b.ReplaceSymlink(link, pem); err != nil {
			t.Fatal(err)
		}
		if err := b.Flush(); err != nil {
			t.Fatal(err)
		}
		if len(renamed) != 2 || renamed[0] != filepath.Base(pem) || renamed[1] != filepath.Base(link) {
			t.Errorf("renames %v: the file must be in place before the link that points at it", renamed)
		}
		if got, _ := os.ReadFile(link); string(got) != "pair" {
			t.Errorf("link reads %q", got)
		}
		assertNoTemp(t, dir)
	})
}
