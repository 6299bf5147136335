//go:build kubecpr_crashtest

package earlysig

import "os"

// The test build says when the early catch is in place
// (KUBECPR_EARLYSIG_READY: a file created then), so that a test can send
// a signal during the rest of the start-up, not before the catch.
// Files initialise in name order: earlysig.go's Notify comes first.
func init() {
	if p := os.Getenv("KUBECPR_EARLYSIG_READY"); p != "" {
		if f, err := os.Create(p); err == nil {
			f.Close()
		}
	}
}
