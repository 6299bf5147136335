package main

import (
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/phases/diagnose"
)

func diagnoseCommand() *cli.Command {
	return &cli.Command{
		Name:  "diagnose",
		Usage: "inventory plus symptoms (API reachability, kubelet log lines, clock), each with the next command to run",
		Description: "Reads only. Probes the API endpoint named in admin.conf (TLS handshake and /readyz) unless\n" +
			"--offline, and reads the kubelet's log from journald (live node) or --kubelet-log FILE.\n" +
			"Exit codes as for check.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "offline", Usage: "do not probe the API endpoint"},
			&cli.StringFlag{Name: "kubelet-log", Usage: "file with kubelet log lines (default: journalctl -u kubelet on a live node)"},
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Second, Usage: "timeout of each network probe"},
		},
		Action: func(c *cli.Context) error {
			e, err := setup(c)
			if err != nil {
				return err
			}
			inv, err := e.inventory()
			if err != nil {
				return err
			}
			rep := diagnose.Diagnose(c.Context, e.node, inv, diagnose.Options{
				Offline: c.Bool("offline"), KubeletLog: c.String("kubelet-log"), Timeout: c.Duration("timeout")})
			return report(e, rep.WriteText, rep, inv.ExitCode())
		},
	}
}
