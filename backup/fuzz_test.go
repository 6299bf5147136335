package backup_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/kubecpr/kubecpr/test/fuzzseed"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/kubecpr/kubecpr/backup"
)

// FuzzLoadManifest: Load reads manifest.json from a backup directory that
// may be damaged or hand-edited. Fuzzed, it must never panic, must return
// in bounded time and memory, and what it accepts must keep a restore
// inside its places: every entry a clean absolute node path, every file's
// copy under the backup's files/, the etcd snapshot at etcd/snapshot.db.
// An accepted manifest survives a save and a reload unchanged, and a dry-run
// restore (with prune) and Differences read it without changing anything.
// Seeds: testdata/fuzz-seeds/backup-manifest and
// testdata/fuzz/FuzzLoadManifest at the top of the module.
func FuzzLoadManifest(f *testing.F) {
	fuzzseed.AddSeeds(f, "backup-manifest")
	base := f.TempDir()
	dir := filepath.Join(base, "backups", "20261122T030000Z-eb62d1")
	again := filepath.Join(base, "again")
	root := filepath.Join(base, "root")
	for _, d := range []string{dir, again} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			f.Fatal(err)
		}
	}
	// a small node for the dry run to look at
	for p, content := range map[string]string{
		"etc/kubernetes/admin.conf":              "apiVersion: v1\n",
		"etc/kubernetes/pki/ca.crt":              "not really a certificate\n",
		"var/lib/kubelet/config.yaml":            "kind: KubeletConfiguration\n",
		"var/lib/kubelet/pki/kubelet.crt":        "x\n",
		"root/.kube/config":                      "apiVersion: v1\n",
		"etc/kubernetes/manifests/etcd.yaml":     "kind: Pod\n",
		"var/lib/kubelet/pki/kubelet-client.pem": "x\n",
	} {
		h := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(h), 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(h, []byte(content), 0o600); err != nil {
			f.Fatal(err)
		}
	}
	if err := os.Symlink("/var/lib/kubelet/pki/kubelet-client.pem", filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem")); err != nil {
		f.Fatal(err)
	}
	rootBefore := tree(f, root)

	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, "manifest.json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		var m *backup.Manifest
		var err error
		fuzzseed.Bounded(t, "Load", func() { m, err = backup.Load(dir) })
		if err != nil {
			if m != nil {
				t.Errorf("Load returned a manifest with error %v", err)
			}
			if errors.Is(err, backup.ErrIncomplete) {
				t.Errorf("a manifest.json that exists is reported missing: %v", err)
			}
			return
		}
		checkManifest(t, m, dir)

		// save and reload: the same manifest
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("an accepted manifest does not marshal: %v", err)
		}
		if err := os.WriteFile(filepath.Join(again, "manifest.json"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		m2, err := backup.Load(again)
		if err != nil {
			t.Fatalf("an accepted manifest, saved, does not load: %v", err)
		}
		if diff := cmp.Diff(m, m2, cmpopts.IgnoreUnexported(backup.Manifest{}), cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("the manifest changed through a save and a reload (-loaded +reloaded):\n%s", diff)
		}

		// read-only users of the manifest: nothing changes
		dirBefore := tree(t, dir)
		fuzzseed.Bounded(t, "Verify", func() { _ = backup.Verify(dir) })
		fuzzseed.Bounded(t, "Differences", func() { _, _ = backup.Differences(root, dir) })
		fuzzseed.Bounded(t, "Restore (dry run)", func() {
			changed, _ := backup.Restore(root, dir, backup.RestoreOptions{DryRun: true, Prune: true})
			for _, p := range changed {
				if !path.IsAbs(p) || path.Clean(p) != p {
					t.Errorf("dry-run restore lists %q: not a clean absolute node path", p)
				}
				// what is not an entry is pruned: only below a source
				if _, ok := m.Lookup(p); !ok && !underSource(p, m.Sources) {
					t.Errorf("dry-run restore would prune %s, outside the backup's sources %v", p, m.Sources)
				}
			}
		})
		if diff := cmp.Diff(rootBefore, tree(t, root)); diff != "" {
			t.Fatalf("a dry run, Verify or Differences changed the node (-before +after):\n%s", diff)
		}
		if diff := cmp.Diff(dirBefore, tree(t, dir)); diff != "" {
			t.Fatalf("a dry run, Verify or Differences changed the backup (-before +after):\n%s", diff)
		}
	})
}

// checkManifest: what Load promises of an accepted manifest.
func checkManifest(t *testing.T, m *backup.Manifest, dir string) {
	t.Helper()
	if m.Version < 1 || m.Version > backup.ManifestVersion {
		t.Errorf("accepted version %d", m.Version)
	}
	files := filepath.Join(dir, "files") + string(filepath.Separator)
	for _, e := range m.Entries {
		if !path.IsAbs(e.Path) || path.Clean(e.Path) != e.Path {
			t.Errorf("accepted entry path %q: not a clean absolute node path", e.Path)
		}
		switch e.Type {
		case backup.TypeFile:
			if blob := filepath.Join(dir, filepath.FromSlash(e.Blob)); !strings.HasPrefix(blob, files) {
				t.Errorf("entry %s: blob %q is outside the backup's files/", e.Path, e.Blob)
			}
			if len(e.SHA256) != 64 {
				t.Errorf("entry %s: accepted without a sha256", e.Path)
			}
		case backup.TypeSymlink:
			if e.Link == "" {
				t.Errorf("entry %s: accepted a symlink without a target", e.Path)
			}
		case backup.TypeDir:
		default:
			t.Errorf("entry %s: accepted type %q", e.Path, e.Type)
		}
		if got, ok := m.Lookup(e.Path); !ok || got.Path != e.Path {
			t.Errorf("Lookup(%q) does not find its entry", e.Path)
		}
	}
	if s := m.EtcdSnapshot; s != nil && filepath.Join(dir, filepath.FromSlash(s.Blob)) != filepath.Join(dir, "etcd", "snapshot.db") {
		t.Errorf("accepted etcd snapshot blob %q", s.Blob)
	}
}

func underSource(p string, sources []string) bool {
	for _, src := range sources {
		src = path.Clean("/" + src)
		if p == src || src == "/" || strings.HasPrefix(p, src+"/") {
			return true
		}
	}
	return false
}

// tree lists every path under dir with its type, mode, size and link
// target (a change of content changes the size or is caught by the mode:
// the dry run must not touch anything, so this is enough and cheap).
func tree(tb testing.TB, dir string) map[string]string {
	tb.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		desc := fmt.Sprintf("%v %d %v", info.Mode(), info.Size(), info.ModTime().UnixNano())
		if info.IsDir() {
			desc = fmt.Sprintf("%v", info.Mode()) // a read does not change it; the atime is not compared
		}
		if info.Mode()&fs.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			desc += " -> " + l
		}
		out[p] = desc
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// TestRestorePrunesOnlyAbsentSources: a manifest's absent list is the
// sources that did not exist when the backup was taken, so a restore with
// prune removes nothing else, whatever a damaged or hand-edited
// manifest.json says ("absent": ["/etc"] with sources ["/etc/kubernetes"]
// must not remove the node's /etc). Seed:
// testdata/fuzz-seeds/backup-manifest/absent-outside-sources.json.
func TestRestorePrunesOnlyAbsentSources(t *testing.T) {
	seed, err := os.ReadFile(filepath.Join(fuzzseed.ModuleTestdata(t), "fuzz-seeds", "backup-manifest", "absent-outside-sources.json"))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	keep := filepath.Join(root, "etc", "ssh", "sshd_config")
	if err := os.MkdirAll(filepath.Dir(keep), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keep, []byte("Port 22\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "var", "lib", "kubecpr", "backups", "20261122T030000Z-eb62d1")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), seed, 0o600); err != nil {
		t.Fatal(err)
	}
	changed, err := backup.Restore(root, dir, backup.RestoreOptions{Prune: true})
	if _, statErr := os.Stat(keep); statErr != nil {
		t.Fatalf("restore --prune removed %v, outside the backup's sources (restore: %v, %v)", changed, err, statErr)
	}
}
