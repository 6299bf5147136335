package main

import (
	"github.com/urfave/cli/v2"
)

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:    "check",
		Aliases: []string{"check-expiration"},
		Usage:   "list every credential on the node with its expiry and status",
		Description: "Lists what `kubeadm certs check-expiration` lists, plus kubelet.conf, the kubelet's\n" +
			"client and serving certificates and users' kubeconfigs that trust this cluster, with a\n" +
			"STATUS column (ok, expiring, expired, not-yet-valid, missing, invalid).\n" +
			"Exit codes: 0 all ok, 1 something expiring within --warn, 2 something expired or invalid,\n" +
			"3 the tool could not run.",
		Flags: []cli.Flag{textfileFlag()},
		Action: func(c *cli.Context) error {
			e, err := setup(c)
			if err != nil {
				return err
			}
			inv, err := e.inventory()
			if err != nil {
				return err
			}
			rep := inv.Report()
			if err := writeTextfile(c, e, rep); err != nil {
				return err
			}
			return report(e, rep.WriteTable, rep, inv.ExitCode())
		},
	}
}
