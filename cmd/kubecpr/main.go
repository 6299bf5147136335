// Command kubecpr recovers a Kubernetes control-plane node whose
// certificates have expired. See docs/cli.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
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
