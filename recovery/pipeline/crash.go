package pipeline

import (
	"os"
	"syscall"
)

// CrashPoint is a test seam: when KUBECPR_CRASH_AT names this point, the
// process kills itself with SIGKILL, as a power cut would, so crash tests
// can stop kubecpr in the middle of an action (a manifest parked outside
// the static pod directory, a container stopped but not yet replaced).
func CrashPoint(name string) {
	if v := os.Getenv("KUBECPR_CRASH_AT"); v != "" && v == name {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}
