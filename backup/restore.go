package backup

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubecpr/kubecpr/recovery/atomicfile"
	"github.com/kubecpr/kubecpr/recovery/fsys"
)

// RestoreOptions narrow a restore.
type RestoreOptions struct {
	// Only restores these node paths and everything below them; empty
	// means every entry. A path the backup knows nothing about (not an
	// entry, not below a backed-up directory, not an absent source) is an
	// error.
	Only []string
	// Prune removes what appeared after the backup: paths under a backed-up
	// directory that the manifest does not list (e.g. a new
	// kubelet-client-<ts>.pem), absent sources that now exist, and a
	// directory standing where the backup had a file or symlink.
	Prune bool
	// DryRun changes nothing and reports what would change.
	DryRun bool
}

// Restore puts the backup in dir back under root: every file byte for byte
// with its mode, owner and mtime, every symlink with its verbatim target,
// every directory with its mode and owner. Entries that already match are
// left alone, so Restore is idempotent: a second call changes nothing and
// returns no paths. It returns the node paths it changed (or would change
// with DryRun), restored ones first, then pruned ones. It carries on past
// a failing entry and joins the errors.
func Restore(root, dir string, opt RestoreOptions) ([]string, error) {
	m, err := Load(dir)
	if err != nil {
		return nil, err
	}
	var only []string
	for _, p := range opt.Only {
		only = append(only, cleanNode(p))
	}
	inScope := func(p string) bool {
		if len(only) == 0 {
			return true
		}
		for _, o := range only {
			if within(p, o) {
				return true
			}
		}
		return false
	}
	if err := checkOnly(m, only); err != nil {
		return nil, err
	}
	backupHost, _ := filepath.Abs(dir)

	// Directories first, parents before children; then files and links in
	// manifest order.
	var dirs, rest []Entry
	for _, e := range m.Entries {
		if !inScope(e.Path) {
			continue
		}
		if e.Type == TypeDir {
			dirs = append(dirs, e)
		} else {
			rest = append(rest, e)
		}
	}
	sort.SliceStable(dirs, func(i, j int) bool { return depth(dirs[i].Path) < depth(dirs[j].Path) })

	var changed []string
	var errs []error
	for _, e := range append(dirs, rest...) {
		same, err := matches(root, e)
		if err == nil && same {
			continue
		}
		changed = append(changed, e.Path)
		if opt.DryRun {
			continue
		}
		if opt.Prune && e.Type != TypeDir {
			// a directory made where the backup had a file or link
			if err := removeDirAt(root, e.Path, backupHost); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if err := RestoreEntry(root, dir, e); err != nil {
			errs = append(errs, err)
		}
	}
	if opt.Prune {
		pruned, err := prune(root, m, inScope, only, backupHost, opt.DryRun)
		changed = append(changed, pruned...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if !opt.DryRun && len(changed) > 0 {
		// restoring children changed the directories' mtimes: put them back,
		// deepest first.
		for i := len(dirs) - 1; i >= 0; i-- {
			if _, host, err := resolve(root, dirs[i].Path, true); err == nil {
				_ = os.Chtimes(host, dirs[i].ModTime, dirs[i].ModTime)
			}
		}
	}
	return changed, errors.Join(errs...)
}

// sameTime compares mtimes to the second, so a filesystem with coarser
// timestamps than the one backed up does not make Restore rewrite a file
// on every call.
func sameTime(a, b time.Time) bool {
	d := a.Sub(b)
	return d < time.Second && d > -time.Second
}

func depth(p string) int { return strings.Count(p, "/") }

// checkOnly refuses Only paths the backup cannot say anything about.
func checkOnly(m *Manifest, only []string) error {
	var unknown []string
	for _, o := range only {
		known := false
		for _, e := range m.Entries {
			if within(e.Path, o) || (e.Type == TypeDir && within(o, e.Path)) {
				known = true
				break
			}
		}
		for _, a := range m.Absent {
			if within(a, o) || within(o, a) {
				known = true
			}
		}
		if !known {
			unknown = append(unknown, o)
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("not covered by backup %s: %s", m.RunID, strings.Join(unknown, ", "))
	}
	return nil
}

// matches reports whether the node already has entry e exactly: type,
// mode, owner (when running as root, the only user who can set it), link
// target, content, and the mtime of files and symlinks. Directory mtimes
// are not compared: Restore resets them after it changed anything.
func matches(root string, e Entry) (bool, error) {
	_, host, err := resolve(root, e.Path, e.Type == TypeDir)
	if err != nil {
		return false, err
	}
	info, err := os.Lstat(host)
	if err != nil {
		return false, err
	}
	got := entryOf(e.Path, info)
	if got.Type != e.Type || got.Mode != e.Mode {
		return false, nil
	}
	if os.Geteuid() == 0 && (got.UID != e.UID || got.GID != e.GID) {
		return false, nil
	}
	if e.Type != TypeDir && !sameTime(got.ModTime, e.ModTime) {
		return false, nil
	}
	switch e.Type {
	case TypeSymlink:
		link, err := os.Readlink(host)
		return err == nil && link == e.Link, err
	case TypeFile:
		sum, n, err := hashFile(host)
		return err == nil && sum == e.SHA256 && n == e.Size, err
	}
	return true, nil
}

// RestoreEntry puts one entry back under root: a file byte for byte with
// its mode, owner and mtime (atomically, from a blob whose sha256 is
// checked first; a damaged blob is never written), a symlink with its
// verbatim target and owner, a directory with its mode and owner. Missing
// parent directories are created 0755. A symlink or other non-directory in
// the way is replaced; a directory in the way is refused (Restore with
// Prune removes it first). An entry the node already has exactly (a write
// that never happened: the disk filled up first) is left untouched, so a
// rollback on a full disk does not need space for what it did not change.
func RestoreEntry(root, dir string, e Entry) error { return RestoreEntryOn(nil, root, dir, e) }

// RestoreEntryOn is RestoreEntry making its changes through fsy (the run's
// filesystem: the power-loss tests record a rollback through it; nil is
// the real one).
func RestoreEntryOn(fsy fsys.FS, root, dir string, e Entry) error {
	if err := validEntry(e); err != nil {
		return fmt.Errorf("restoring: %w", err)
	}
	if same, err := matches(root, e); err == nil && same {
		return nil
	}
	if err := restoreEntry(fsys.Or(fsy), root, dir, e); err != nil {
		return fmt.Errorf("restoring %s: %w", e.Path, err)
	}
	return nil
}

func restoreEntry(fsy fsys.FS, root, dir string, e Entry) error {
	af := atomicfile.On(fsy)
	mode := fs.FileMode(e.Mode) & KeptModeBits
	if e.Type == TypeDir {
		_, host, err := resolve(root, e.Path, true)
		if err != nil {
			return err
		}
		if info, err := os.Lstat(host); err == nil && !info.IsDir() {
			if err := af.Remove(host); err != nil {
				return err
			}
		}
		if err := fsys.MkdirAll(fsy, filepath.Dir(host), 0o755); err != nil {
			return err
		}
		if err := fsy.Mkdir(host, mode); err == nil {
			if err := af.SyncDir(filepath.Dir(host)); err != nil {
				return err
			}
		} else if !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := af.Chown(host, e.UID, e.GID); err != nil {
			return err
		}
		return fsy.Chmod(host, mode) // after chown, and past the umask
	}

	_, host, err := resolve(root, e.Path, false)
	if err != nil {
		return err
	}
	info, statErr := os.Lstat(host)
	if statErr == nil && info.IsDir() {
		return fmt.Errorf("%s is a directory now; remove it (or restore with --prune) to put the backed-up %s back", host, e.Type)
	}
	if err := fsys.MkdirAll(fsy, filepath.Dir(host), 0o755); err != nil {
		return err
	}

	switch e.Type {
	case TypeSymlink:
		if statErr == nil && info.Mode()&fs.ModeSymlink == 0 {
			if err := af.Remove(host); err != nil {
				return err
			}
		}
		if err := af.ReplaceSymlink(host, e.Link); err != nil {
			return err
		}
		if err := af.Chown(host, e.UID, e.GID); err != nil {
			return err
		}
		return lutimes(host, e)

	case TypeFile:
		blob := filepath.Join(dir, filepath.FromSlash(e.Blob))
		b, err := readBlob(blob, e)
		if err != nil {
			return err
		}
		if statErr == nil && !info.Mode().IsRegular() {
			if err := af.Remove(host); err != nil {
				return err
			}
		} else if statErr == nil {
			// WriteFile keeps an existing file's owner: give it the recorded
			// one first, so the restored bytes are never readable by an
			// owner they did not have.
			if err := af.Chown(host, e.UID, e.GID); err != nil {
				return err
			}
		}
		opt := atomicfile.Options{Mode: mode, ForceMode: true, Owner: true, UID: e.UID, GID: e.GID}
		if err := af.WriteFile(host, b, opt); err != nil {
			return err
		}
		if err := af.Chown(host, e.UID, e.GID); err != nil {
			return err
		}
		// chown clears setuid and setgid: the mode goes on after it.
		if err := fsy.Chmod(host, mode); err != nil {
			return err
		}
		return os.Chtimes(host, e.ModTime, e.ModTime)
	}
	return fmt.Errorf("unknown entry type %q", e.Type)
}

// readBlob reads a blob and checks it against its entry.
func readBlob(blob string, e Entry) ([]byte, error) {
	f, err := os.OpenFile(blob, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("backup copy %s: %w", blob, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("backup copy %s: %w", blob, err)
	}
	s := sha256.Sum256(b)
	if hex.EncodeToString(s[:]) != e.SHA256 || int64(len(b)) != e.Size {
		return nil, fmt.Errorf("backup copy %s is damaged (sha256 mismatch); refusing to restore from it", blob)
	}
	return b, nil
}

func lutimes(host string, e Entry) error {
	ts := unix.NsecToTimespec(e.ModTime.UnixNano())
	return unix.UtimesNanoAt(unix.AT_FDCWD, host, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

// removeDirAt removes a directory standing at node path np (where the
// backup has a file or symlink). Anything else there is left for
// RestoreEntry.
func removeDirAt(root, np, backupHost string) error {
	_, host, err := resolve(root, np, false)
	if err != nil {
		return err
	}
	info, err := os.Lstat(host)
	if err != nil || !info.IsDir() {
		return nil
	}
	if contains(host, backupHost) {
		return fmt.Errorf("restoring %s: it is a directory holding the backup itself; not removing it", np)
	}
	if err := os.RemoveAll(host); err != nil {
		return fmt.Errorf("restoring %s: %w", np, err)
	}
	return atomicfile.SyncDir(filepath.Dir(host))
}

// contains reports whether host path p is outer or below it.
func contains(outer, p string) bool {
	return p == outer || strings.HasPrefix(p, strings.TrimSuffix(outer, string(filepath.Separator))+string(filepath.Separator))
}

// prune removes (or, with dryRun, lists) what appeared after the backup:
// children of backed-up directories the manifest does not list and absent
// sources that exist now. It never removes the backup itself.
func prune(root string, m *Manifest, inScope func(string) bool, only []string, backupHost string, dryRun bool) ([]string, error) {
	var removed []string
	var errs []error
	// Only what the backup covered is ever pruned: a path below one of its
	// sources (a damaged or hand-edited manifest listing "/etc" as absent
	// must not remove the node's /etc).
	inSources := func(np string) bool {
		for _, src := range m.Sources {
			if within(np, cleanNode(src)) && (np != "/" || cleanNode(src) == "/") {
				return true
			}
		}
		return false
	}
	remove := func(np string) {
		if !inSources(np) {
			errs = append(errs, fmt.Errorf("refusing to prune %s: it is outside the backup's sources %s (the manifest is damaged)", np, strings.Join(m.Sources, ", ")))
			return
		}
		_, host, err := resolve(root, np, false)
		if err != nil {
			errs = append(errs, err)
			return
		}
		if _, err := os.Lstat(host); err != nil {
			return
		}
		if contains(host, backupHost) {
			return // the backup lives there (a state dir under a backed-up directory)
		}
		if slices.Contains(removed, np) {
			return
		}
		removed = append(removed, np)
		if dryRun {
			return
		}
		if err := os.RemoveAll(host); err != nil {
			errs = append(errs, fmt.Errorf("pruning %s: %w", np, err))
			return
		}
		if err := atomicfile.SyncDir(filepath.Dir(host)); err != nil {
			errs = append(errs, err)
		}
	}
	for _, e := range m.Entries {
		if e.Type != TypeDir {
			continue
		}
		_, host, err := resolve(root, e.Path, true)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ents, err := os.ReadDir(host)
		if err != nil {
			continue // gone or not a directory: the restore pass reported it
		}
		for _, d := range ents {
			np := path.Join(e.Path, d.Name())
			if _, ok := m.Lookup(np); !ok && inScope(np) && !slices.Contains(m.Skipped, np) {
				remove(np)
			}
		}
	}
	for _, a := range m.Absent {
		if len(only) == 0 {
			remove(a)
			continue
		}
		for _, o := range only {
			switch {
			case within(a, o):
				remove(a)
			case within(o, a):
				remove(o)
			}
		}
	}
	sort.Strings(removed)
	return removed, errors.Join(errs...)
}

// Differences lists the node paths whose content differs from the backup
// in dir: type, mode, owner (as root), symlink target or bytes. Times are
// not compared (a process may rewrite a file with the same bytes). It is
// how a rollback proves its result instead of trusting its journal.
func Differences(root, dir string) ([]string, error) {
	m, err := Load(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range m.Entries {
		_, host, err := resolve(root, e.Path, e.Type == TypeDir)
		if err != nil {
			out = append(out, e.Path+" (unresolvable: "+err.Error()+")")
			continue
		}
		info, err := os.Lstat(host)
		if err != nil {
			out = append(out, e.Path+" (missing)")
			continue
		}
		got := entryOf(e.Path, info)
		switch {
		case got.Type != e.Type:
			out = append(out, fmt.Sprintf("%s (%s, was %s)", e.Path, got.Type, e.Type))
		case got.Mode != e.Mode:
			out = append(out, fmt.Sprintf("%s (mode %s, was %s)", e.Path, UnixMode(got.Mode), UnixMode(e.Mode)))
		case os.Geteuid() == 0 && (got.UID != e.UID || got.GID != e.GID):
			out = append(out, fmt.Sprintf("%s (owner %d:%d, was %d:%d)", e.Path, got.UID, got.GID, e.UID, e.GID))
		case e.Type == TypeSymlink:
			if link, err := os.Readlink(host); err != nil || link != e.Link && !sameLinkContent(root, m, e, host) {
				out = append(out, fmt.Sprintf("%s (-> %s, was -> %s)", e.Path, link, e.Link))
			}
		case e.Type == TypeFile:
			if sum, n, err := hashFile(host); err != nil || sum != e.SHA256 || n != e.Size {
				out = append(out, e.Path+" (content differs)")
			}
		}
	}
	return out, nil
}

// UnixMode is a recorded mode as chmod spells it: 0755, 4755 (setuid),
// 2755 (setgid), 1777 (sticky).
func UnixMode(m uint32) string { return fmt.Sprintf("%04o", fsys.UnixMode(fs.FileMode(m))) }

// sameLinkContent reports whether a symlink that now points elsewhere still
// leads to the same bytes as in the backup: the kubelet re-writes its
// restored credential as a new dated kubelet-client-<time>.pem with the
// same content and repoints kubelet-client-current.pem at it.
func sameLinkContent(root string, m *Manifest, e Entry, host string) bool {
	target := e.Link
	if !path.IsAbs(target) {
		target = path.Join(path.Dir(e.Path), target)
	}
	was, ok := m.Lookup(target)
	if !ok || was.Type != TypeFile {
		return false
	}
	_, now, err := resolve(root, e.Path, true)
	if err != nil {
		return false
	}
	sum, n, err := hashFile(now)
	return err == nil && sum == was.SHA256 && n == was.Size
}
