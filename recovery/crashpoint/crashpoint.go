// Package crashpoint names the instants at which kubecpr's crash tests stop
// the process (SIGKILL, as a power cut would): right after a journal record
// is durable, with a manifest parked outside the static-pod directory, with
// a container stopped but not yet replaced.
//
// Production binaries never stop anywhere: Hook is nil in them. It is set
// only by cmd/kubecpr/crashseam.go, which is compiled in with the build tag
// kubecpr_crashtest that the test builds use (test/kubecprbin). `make
// build` and `go build ./cmd/kubecpr` leave it out, and a test proves the
// shipped binary does not even contain the environment variables' names.
package crashpoint

// Hook, when set, is called at every named point.
var Hook func(point string)

// Names of the points that carry a count.
const (
	// Record is passed after each node-journal record this process made
	// durable.
	Record = "record"
	// ClusterRecord is passed after each cluster-journal record.
	ClusterRecord = "cluster-record"
)

// At passes the point name (a no-op in production).
func At(point string) {
	if Hook != nil {
		Hook(point)
	}
}
