package main

import (
	"fmt"
	"path"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/metrics"
)

// textfileFlag is check's --textfile. DIR is a node path, resolved under
// --root like every other, so a rehearsal writes into its copy of the node.
func textfileFlag() cli.Flag {
	return &cli.StringFlag{Name: "textfile", Usage: "also write the report as Prometheus metrics to `DIR`/" + metrics.FileName +
		" (atomically, 0644) for node_exporter's textfile collector, e.g. /var/lib/node_exporter/textfile_collector (docs/metrics.md)"}
}

// writeTextfile writes rep for node_exporter when check was given
// --textfile; it does nothing otherwise. The report's own exit code is
// unchanged: a failure to write is exit 3, the tool could not do its job.
func writeTextfile(c *cli.Context, e *env, rep *inventory.Report) error {
	dir := c.String("textfile")
	if dir == "" {
		return nil
	}
	if !path.IsAbs(dir) {
		return withCode(ExitFailed, fmt.Errorf("--textfile %q: want an absolute node path, like /var/lib/node_exporter/textfile_collector", dir))
	}
	if err := metrics.Write(e.node.HostPath(dir), rep); err != nil {
		return withCode(ExitFailed, err)
	}
	return nil
}
