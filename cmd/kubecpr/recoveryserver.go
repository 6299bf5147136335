package main

import (
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/recovery/apiserver"
	"github.com/kubecpr/kubecpr/recovery/journal"
)

func recoveryServerCommand() *cli.Command {
	return &cli.Command{
		Name:  "recovery-server",
		Usage: "show or tear down kubecpr's temporary recovery API server",
		Subcommands: []*cli.Command{
			{
				Name:  "status",
				Usage: "is a recovery server running, on which port, until when do its credentials last",
				Action: func(c *cli.Context) error {
					e, err := setup(c)
					if err != nil {
						return err
					}
					pid, port, expires, ok := apiserver.Running(e.stateDir(c))
					if !ok {
						fmt.Fprintln(e.out, "no recovery API server is running")
						return nil
					}
					fmt.Fprintf(e.out, "recovery API server: pid %d, https://127.0.0.1:%d, credentials valid until %s\nkubeconfig (0600): %s\n",
						pid, port, expires, filepath.Join(e.stateDir(c), apiserver.DirName, "kubeconfig"))
					return nil
				},
			},
			{
				Name:  "stop",
				Usage: "kill a recovery server and delete its credentials",
				Action: func(c *cli.Context) error {
					e, err := setup(c)
					if err != nil {
						return err
					}
					lock, err := journal.Acquire(e.stateDir(c), e.now)
					if err != nil {
						return err
					}
					defer lock.Release()
					if err := apiserver.Reap(e.stateDir(c)); err != nil {
						return err
					}
					fmt.Fprintln(e.out, "no recovery API server is left")
					return nil
				},
			},
		},
	}
}
