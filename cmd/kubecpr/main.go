// Command kubecpr recovers a Kubernetes control-plane node whose
// certificates have expired. See docs/cli.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kubecpr/kubecpr/cmd/kubecpr/internal/earlysig"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if earlysig.Stop() {
		fmt.Fprintln(os.Stderr, "kubecpr: interrupted while starting: nothing was done")
		os.Exit(ExitInterrupted)
	}
	app := newApp()
	err := app.RunContext(ctx, completionArgs(app, os.Args))
	stop()
	code := exitCode(err)
	if err != nil && code != 0 {
		if _, silent := err.(*silentExit); !silent {
			fmt.Fprintln(os.Stderr, "kubecpr: "+err.Error())
		}
	}
	os.Exit(code)
}
