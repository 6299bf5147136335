package pipeline

import "github.com/kubecpr/kubecpr/recovery/crashpoint"

// CrashPoint passes a named crash-test point (see package crashpoint; a
// no-op in production binaries).
func CrashPoint(name string) { crashpoint.At(name) }
