package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
)

func rehearseCommand() *cli.Command {
	return &cli.Command{
		Name:  "rehearse",
		Usage: "staging drill: copy this node's credentials into a sandbox and run the whole pipeline there",
		Description: "Never writes to the node. Copies /etc/kubernetes, /var/lib/kubelet/pki, the kubelet config and\n" +
			"users' kubeconfigs into a sandbox root, runs every stage there with the clock at --now\n" +
			"(default: one day after the earliest leaf expiry) and reports what each stage did and how long\n" +
			"it took. Stages that need live processes say what they would have done.",
		Flags: append(renewFlags(),
			&cli.StringFlag{Name: "sandbox", Usage: "sandbox directory (default: a new temporary directory)"},
			&cli.BoolFlag{Name: "keep", Usage: "keep the sandbox afterwards"},
		),
		Action: func(c *cli.Context) error {
			e, err := setup(c)
			if err != nil {
				return err
			}
			sandbox, own, err := prepareSandbox(c.String("sandbox"), e.node.Root)
			if err != nil {
				return err
			}
			se := *e
			var copied map[string]bool
			if !c.Bool("keep") {
				// kubecpr removes only what it created: what it copied, its
				// state, and what the rehearsal's journal changed.
				defer func() {
					var recs []journal.Record
					if se.state != "" {
						_, _, recs, _ = pipeline.CurrentRun(se.state)
					}
					if kept := cleanSandbox(sandbox, own, copied, se.state, recs); len(kept) > 0 {
						fmt.Fprintf(c.App.ErrWriter, "kubecpr: the sandbox %s keeps %d file(s) that kubecpr did not create, e.g. %s: remove them yourself when done\n", sandbox, len(kept), kept[0])
					}
				}()
			}
			sources := append([]string{node.KubernetesDir, node.KubeletPKIDir, node.KubeletConfig}, e.node.UserKubeconfigs()...)
			if err := copyNodeFiles(e.node, sandbox, sources); err != nil {
				copied = sandboxFiles(sandbox)
				return withCode(ExitFailed, err)
			}
			copied = sandboxFiles(sandbox)
			sn, err := node.New(sandbox)
			if err != nil {
				return err
			}
			se.node = sn
			se.state = ""
			// The rehearsal's lock, journal and backups live in the sandbox.
			if err := se.resolveState(c); err != nil {
				return err
			}
			if c.String("now") == "" {
				inv, err := inventory.Build(sn, e.cluster, e.now, e.warn)
				if err != nil {
					return withCode(ExitFailed, err)
				}
				se.now = earliestLeafExpiry(inv).Add(24 * time.Hour)
			}
			fmt.Fprintf(e.out, "rehearsal in %s with the clock at %s (the node itself is not touched)\n", sandbox, se.now.UTC().Format(time.RFC3339))
			start := time.Now()
			err = runPipeline(c, &se, options(c), pipeline.Selection{}, false, true)
			fmt.Fprintf(e.out, "rehearsal took %s\n", time.Since(start).Round(time.Millisecond))
			if c.Bool("keep") {
				fmt.Fprintf(e.out, "sandbox kept: kubecpr --root %s --now %s check\n", sandbox, se.now.UTC().Format(time.RFC3339))
			}
			return err
		},
	}
}

func earliestLeafExpiry(inv *inventory.Inventory) time.Time {
	var t time.Time
	for _, it := range inv.Items {
		if it.Cert != nil && (t.IsZero() || it.Cert.NotAfter.Before(t)) {
			t = it.Cert.NotAfter
		}
	}
	if t.IsZero() {
		return inv.Now
	}
	return t
}

// prepareSandbox makes sure the sandbox holds nothing but what the
// rehearsal will put there, and returns it with whether kubecpr made the
// directory itself. A directory given with --sandbox must be empty (or not
// exist yet) and must not overlap the node.
func prepareSandbox(dir, root string) (string, bool, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", "kubecpr-rehearsal-")
		if err != nil {
			return "", false, withCode(ExitFailed, fmt.Errorf("creating a sandbox: %w", err))
		}
		return d, true, nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", false, withCode(ExitFailed, fmt.Errorf("--sandbox %s: %w", dir, err))
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	realRoot := root
	if r, err := filepath.EvalSymlinks(root); err == nil {
		realRoot = r
	}
	if inside(abs, realRoot) && realRoot != "/" || inside(realRoot, abs) {
		return "", false, withCode(ExitPrecondition, fmt.Errorf("--sandbox %s overlaps the node root %s: choose a directory outside it (or leave --sandbox out for a temporary one)", dir, root))
	}
	for _, s := range []string{node.KubernetesDir, node.KubeletDir, node.DefaultState} {
		if realRoot == "/" && inside(abs, s) {
			return "", false, withCode(ExitPrecondition, fmt.Errorf("--sandbox %s is inside the node's %s: choose a directory outside it", dir, s))
		}
	}
	ents, err := os.ReadDir(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(abs, 0o700); err != nil {
			return "", false, withCode(ExitFailed, fmt.Errorf("--sandbox %s: %w", dir, err))
		}
		return abs, true, nil
	case err != nil:
		return "", false, withCode(ExitPrecondition, fmt.Errorf("--sandbox %s: %w", dir, err))
	case len(ents) > 0:
		return "", false, withCode(ExitPrecondition, fmt.Errorf("--sandbox %s is not empty (%d entries, e.g. %s): kubecpr only rehearses in an empty or new directory, and never deletes what it did not create", dir, len(ents), ents[0].Name()))
	}
	return abs, false, nil
}

// sandboxFiles is every path under the sandbox (not the sandbox itself):
// taken right after the copy, it is what kubecpr put there.
func sandboxFiles(dir string) map[string]bool {
	seen := map[string]bool{}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != dir {
			seen[p] = true
		}
		return nil
	})
	return seen
}

// cleanSandbox removes what kubecpr created in the sandbox and nothing
// else: what the copy put there (copied), the rehearsal's state directory
// (lock, journal, backups), and every path the rehearsal's journal says it
// changed. A file someone else wrote into the sandbox meanwhile stays, with
// the directories that hold it, and is named. The sandbox directory itself
// goes only when kubecpr made it and it is empty.
func cleanSandbox(dir string, own bool, copied map[string]bool, stateDir string, recs []journal.Record) (kept []string) {
	removable := map[string]bool{}
	for p := range copied {
		removable[p] = true
	}
	for _, r := range recs {
		for _, ch := range r.Changes {
			removable[filepath.Join(dir, filepath.FromSlash(path.Clean("/"+ch.Path)))] = true
		}
	}
	// The directories holding them were made for them (the sandbox was
	// empty), the state directory's included.
	for p := range removable {
		for d := filepath.Dir(p); inside(d, dir) && d != dir; d = filepath.Dir(d) {
			removable[d] = true
		}
	}
	for d := stateDir; stateDir != "" && inside(d, dir) && d != dir; d = filepath.Dir(d) {
		removable[d] = true
	}
	mine := func(p string) bool { return removable[p] || stateDir != "" && inside(p, stateDir) }
	var all []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != dir {
			all = append(all, p)
		}
		return nil
	})
	// Deepest first, so a directory is looked at after what it holds.
	sort.Slice(all, func(i, j int) bool {
		return strings.Count(all[i], "/") > strings.Count(all[j], "/") || strings.Count(all[i], "/") == strings.Count(all[j], "/") && all[i] > all[j]
	})
	keptDir := map[string]bool{}
	for _, p := range all {
		info, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if info.IsDir() {
			if keptDir[p] || !mine(p) {
				keptDir[filepath.Dir(p)] = true
				continue
			}
			if err := os.Remove(p); err != nil {
				keptDir[filepath.Dir(p)] = true
			}
			continue
		}
		if mine(p) || strings.Contains(filepath.Base(p), ".kubecpr-") {
			if err := os.Remove(p); err == nil {
				continue
			}
		}
		kept = append(kept, p)
		keptDir[filepath.Dir(p)] = true
	}
	if own && len(kept) == 0 {
		_ = os.Remove(dir)
	}
	sort.Strings(kept)
	return kept
}

func inside(p, base string) bool {
	return p == base || strings.HasPrefix(p, strings.TrimSuffix(base, "/")+"/")
}

// copyNodeFiles copies node paths (trees, files, symlinks) from n into the
// same node paths under sandbox. Symlinks are copied verbatim and what they
// point to (inside the node's root) is copied too, so that the sandbox
// resolves them as the node does: /etc/kubernetes/pki -> /srv/pki brings
// /srv/pki along. Nothing outside the node's root is read.
func copyNodeFiles(n *node.Node, sandbox string, sources []string) error {
	done := map[string]bool{}
	queue := append([]string(nil), sources...)
	for len(queue) > 0 {
		np := path.Clean("/" + queue[0])
		queue = queue[1:]
		if done[np] {
			continue
		}
		done[np] = true
		// The parents of np as the node resolves them: a linked parent
		// is copied as a link, and its target queued.
		for dir := path.Dir(np); dir != "/"; dir = path.Dir(dir) {
			if _, err := n.ReadLink(dir); err == nil {
				if err := copyEntry(n, sandbox, dir, &queue); err != nil {
					return err
				}
			}
		}
		src := n.Path(np)
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) && p == src {
					return nil
				}
				return err
			}
			rel, _ := filepath.Rel(src, p)
			return copyEntry(n, sandbox, path.Join(np, filepath.ToSlash(rel)), &queue)
		})
		if err != nil {
			return fmt.Errorf("copying %s into the sandbox: %w", np, err)
		}
	}
	return nil
}

// copyEntry copies one node path (not following it) into the sandbox.
func copyEntry(n *node.Node, sandbox, np string, queue *[]string) error {
	host := n.Path(np)
	out := filepath.Join(sandbox, filepath.FromSlash(np))
	info, err := os.Lstat(host)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(out); err == nil {
		return nil // already copied (a link target reached twice)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	switch {
	case info.Mode()&fs.ModeSymlink != 0:
		t, err := os.Readlink(host)
		if err != nil {
			return err
		}
		*queue = append(*queue, n.Resolve(np, false))
		return os.Symlink(t, out)
	case info.IsDir():
		return os.MkdirAll(out, info.Mode().Perm())
	case info.Mode().IsRegular():
		b, err := node.ReadRegular(host, np)
		if err != nil {
			return err
		}
		return os.WriteFile(out, b, info.Mode().Perm())
	}
	return nil // devices, FIFOs and sockets are not credentials
}
