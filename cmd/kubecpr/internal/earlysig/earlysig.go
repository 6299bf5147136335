// Package earlysig catches SIGINT and SIGTERM while the program starts.
//
// Go runs every imported package's initialisation before main, and
// kubecpr's (the container runtime's and etcd's clients, client-go's
// schemes) take tens of milliseconds: a Ctrl-C then killed the process by
// signal instead of the documented exit 130. This package imports nothing
// but the standard library, so it is initialised before those (Go
// initialises ready packages in import-path order, and the heavy ones
// wait for their own dependencies). main takes over with Stop.
package earlysig

import (
	"os"
	"os/signal"
	"syscall"
)

var ch = make(chan os.Signal, 1)

func init() { signal.Notify(ch, os.Interrupt, syscall.SIGTERM) }

// Stop ends the early catch (main has its own handler by then) and
// reports whether a signal came during start-up.
func Stop() bool {
	signal.Stop(ch)
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
