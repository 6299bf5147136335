package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/recovery/inventory"
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
			sandbox := c.String("sandbox")
			if sandbox == "" {
				if sandbox, err = os.MkdirTemp("", "kubecpr-rehearsal-"); err != nil {
					return err
				}
			}
			if !c.Bool("keep") {
				defer os.RemoveAll(sandbox)
			}
			sources := append([]string{node.KubernetesDir, node.KubeletPKIDir, node.KubeletConfig}, e.node.UserKubeconfigs()...)
			for _, s := range sources {
				if err := copyTree(e.node.Path(s), filepath.Join(sandbox, filepath.FromSlash(s))); err != nil {
					return withCode(ExitFailed, fmt.Errorf("copying %s into the sandbox: %w", s, err))
				}
			}
			sn, err := node.New(sandbox)
			if err != nil {
				return err
			}
			se := *e
			se.node = sn
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

// copyTree copies a file, symlink or directory tree, keeping modes and
// symlink targets verbatim. A missing source is skipped.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == src {
				return nil
			}
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return err
			}
			return os.Symlink(t, out)
		case info.IsDir():
			return os.MkdirAll(out, info.Mode().Perm())
		case info.Mode().IsRegular():
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return err
			}
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, info.Mode().Perm())
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, in); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		}
		return nil
	})
}
