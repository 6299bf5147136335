package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/backup"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
)

func backupCommand() *cli.Command {
	dirOf := func(c *cli.Context, e *env) (string, string, error) {
		return backupDirOf(c, e.stateDir(c))
	}
	return &cli.Command{
		Name:  "backup",
		Usage: "list, verify or restore the backups kubecpr made before each run",
		Subcommands: []*cli.Command{
			{
				Name:  "list",
				Usage: "list backups with their creation time and size",
				Action: func(c *cli.Context) error {
					e, err := setup(c)
					if err != nil {
						return err
					}
					base := filepath.Join(e.stateDir(c), "backups")
					ents, err := os.ReadDir(base)
					if err != nil && !os.IsNotExist(err) {
						return err
					}
					var names []string
					for _, d := range ents {
						names = append(names, d.Name())
					}
					sort.Strings(names)
					list := BackupList{TypeMeta: typeMeta(kindBackupList), Dir: base, Backups: []BackupEntry{}}
					for _, n := range names {
						b := BackupEntry{RunID: n, Dir: filepath.Join(base, n), Sources: []string{}}
						m, err := backup.Load(b.Dir)
						if err != nil {
							b.Error = err.Error()
							list.Backups = append(list.Backups, b)
							if !e.machine() {
								fmt.Fprintf(e.out, "%s\tINCOMPLETE: %v\n", n, err)
							}
							continue
						}
						created := m.Created.UTC()
						b.Complete, b.Created, b.Entries, b.EtcdSnapshot = true, &created, len(m.Entries), m.EtcdSnapshot != nil
						b.Sources = append(b.Sources, m.Sources...)
						for _, en := range m.Entries {
							b.Bytes += en.Size
						}
						list.Backups = append(list.Backups, b)
						if !e.machine() {
							fmt.Fprintf(e.out, "%s\t%s\t%d entries\t%d bytes\n", n, created.Format("2006-01-02T15:04:05Z"), b.Entries, b.Bytes)
						}
					}
					if e.machine() {
						return emitOrFail(e, list)
					}
					return nil
				},
			},
			{
				Name:      "verify",
				Usage:     "re-hash every file of a backup against its manifest",
				ArgsUsage: "RUN-ID",
				Action: func(c *cli.Context) error {
					e, err := setup(c)
					if err != nil {
						return err
					}
					id, dir, err := dirOf(c, e)
					if err != nil {
						return err
					}
					if err := backup.Verify(dir); err != nil {
						return withCode(ExitFailed, fmt.Errorf("backup %s: %w", id, err))
					}
					fmt.Fprintf(e.out, "backup %s: every file matches its sha256\n", id)
					return nil
				},
			},
			{
				Name:      "restore",
				Usage:     "restore a backup onto the node, outside the journal (for when the journal itself is lost)",
				ArgsUsage: "RUN-ID",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "prune", Usage: "also remove files created after the backup under the backed-up directories"},
					&cli.BoolFlag{Name: "dry-run", Usage: "list what would change"},
				},
				Action: locked(func(c *cli.Context, e *env) error {
					id, dir, err := dirOf(c, e)
					if err != nil {
						return err
					}
					if err := backup.Verify(dir); err != nil {
						return withCode(ExitFailed, fmt.Errorf("backup %s does not verify, refusing to restore from it: %w", id, err))
					}
					changed, err := backup.Restore(e.node.Root, dir, backup.RestoreOptions{Prune: c.Bool("prune"), DryRun: c.Bool("dry-run")})
					verb := "restored"
					if c.Bool("dry-run") {
						verb = "would restore"
					}
					for _, p := range changed {
						fmt.Fprintf(e.out, "%s %s\n", verb, p)
					}
					if err != nil {
						return withCode(ExitStageFailed, err)
					}
					if c.Bool("dry-run") {
						fmt.Fprintf(e.out, "backup %s: %d paths would be restored (dry run: nothing changed)\n", id, len(changed))
						return nil
					}
					// Proven, not trusted: every backed-up path is compared with
					// the backup (type, mode with setuid/setgid/sticky, owner,
					// link target, bytes), and the run stays open if one differs.
					diffs, err := backup.Differences(e.node.Root, dir)
					if err != nil {
						return withCode(ExitStageFailed, fmt.Errorf("checking the restore against backup %s: %w", id, err))
					}
					if len(diffs) > 0 {
						return withCode(ExitStageFailed, fmt.Errorf("backup %s: the restore wrote %d paths, but %d still differ from the backup: %s; "+
							"nothing else was changed: look at them, then run `kubecpr backup restore %s` again", id, len(changed), len(diffs), strings.Join(diffs, ", "), id))
					}
					fmt.Fprintf(e.out, "backup %s: %d paths restored, every backed-up path checked against the backup\n", id, len(changed))
					closed, err := pipeline.CloseRestored(e.stateDir(c), id)
					if err != nil {
						return withCode(ExitJournal, fmt.Errorf("the node is restored, but closing run %s failed: %w", id, err))
					}
					if closed {
						fmt.Fprintf(e.out, "run %s is closed (restored from its backup); kubecpr can start a new run\n", id)
					}
					return nil
				}),
			},
		},
	}
}

// backupDirOf takes the one RUN-ID argument of backup verify|restore and
// returns it with the host path of its backup. The id is an id, never a
// path: a name of one component that kubecpr could have made, naming a
// directory (not a link) that exists in the state dir's backups/.
func backupDirOf(c *cli.Context, stateDir string) (string, string, error) {
	base := filepath.Join(stateDir, "backups")
	switch c.Args().Len() {
	case 0:
		return "", "", withCode(ExitFailed, fmt.Errorf("give a RUN-ID (kubecpr backup list shows them)"))
	case 1:
	default:
		return "", "", withCode(ExitFailed, fmt.Errorf("one RUN-ID, not %d arguments (%s): kubecpr backup list shows the ids",
			c.Args().Len(), strings.Join(c.Args().Slice(), " ")))
	}
	id := c.Args().First()
	if !runIDPattern.MatchString(id) || id == "." || id == ".." {
		return "", "", withCode(ExitFailed, fmt.Errorf("%q is not a run id (ids look like 20261207T031500Z-a1b2c3, a name, not a path): "+
			"kubecpr backup list shows the backups in %s", id, base))
	}
	dir := filepath.Join(base, id)
	st, err := os.Lstat(dir)
	switch {
	case os.IsNotExist(err):
		return "", "", withCode(ExitFailed, fmt.Errorf("no backup %s in %s: kubecpr backup list shows the ids there (with --root and --state-dir as given here)", id, base))
	case err != nil:
		return "", "", withCode(ExitFailed, fmt.Errorf("backup %s: %w", id, err))
	case !st.IsDir():
		return "", "", withCode(ExitPrecondition, fmt.Errorf("%s is not a directory (%s): a backup is a directory kubecpr made; check what it is", dir, st.Mode().Type()))
	}
	return id, dir, nil
}

// runIDPattern is what a run id can be: one path component.
var runIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
