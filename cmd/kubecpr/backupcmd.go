package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/backup"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
)

func backupCommand() *cli.Command {
	dirOf := func(c *cli.Context, e *env) (string, string, error) {
		id := c.Args().First()
		if id == "" {
			return "", "", withCode(ExitFailed, fmt.Errorf("give a RUN-ID (kubecpr backup list shows them)"))
		}
		return id, filepath.Join(e.stateDir(c), "backups", id), nil
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
					fmt.Fprintf(e.out, "backup %s: %d paths restored\n", id, len(changed))
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
