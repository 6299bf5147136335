package journal

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLockRefusesWhatIsNotItsOwn(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(lock, victim string) error
	}{
		{"symlink", func(lock, victim string) error { return os.Symlink(victim, lock) }},
		{"hard link", func(lock, victim string) error { return os.Link(victim, lock) }},
		{"directory", func(lock, victim string) error { return os.Mkdir(lock, 0o700) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			victim := filepath.Join(t.TempDir(), "ca.key")
			if err := os.WriteFile(victim, []byte("KEY BYTES"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := tc.make(filepath.Join(dir, "lock"), victim); err != nil {
				t.Fatal(err)
			}
			l, err := Acquire(dir, time.Now())
			if err == nil {
				l.Release()
				t.Fatal("lock taken")
			}
			var no *NotOwnLockError
			if tc.name != "directory" && !errors.As(err, &no) {
				t.Errorf("err = %v, want a NotOwnLockError", err)
			}
			if b, _ := os.ReadFile(victim); string(b) != "KEY BYTES" {
				t.Fatalf("the linked file was changed: %q", b)
			}
		})
	}
}
