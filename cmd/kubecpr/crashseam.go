//go:build kubecpr_crashtest

package main

// Compiled only into test builds (go build -tags kubecpr_crashtest, as
// test/kubecprbin does): the crash tests stop the process with SIGKILL at a
// point named in the environment. Shipped binaries contain none of this.
//
//	KUBECPR_CRASH_AFTER_RECORD=N          after the Nth node-journal record
//	KUBECPR_CLUSTER_CRASH_AFTER_RECORD=N  after the Nth cluster-journal record
//	KUBECPR_CRASH_AT=NAME                 at the named point (bounce, csr)
//	KUBECPR_INTERRUPT_AFTER_RECORD=N      SIGINT (Ctrl-C), not SIGKILL, after
//	                                      the Nth node-journal record
//	KUBECPR_SHELL_AFTER_RECORD=N          run $KUBECPR_SHELL (sh -c) and wait
//	                                      for it after the Nth node-journal
//	                                      record: someone else acting meanwhile

import (
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"

	"github.com/kubecpr/kubecpr/recovery/crashpoint"
)

func init() {
	at := os.Getenv("KUBECPR_CRASH_AT")
	after := map[string]int{}
	after[crashpoint.Record], _ = strconv.Atoi(os.Getenv("KUBECPR_CRASH_AFTER_RECORD"))
	after[crashpoint.ClusterRecord], _ = strconv.Atoi(os.Getenv("KUBECPR_CLUSTER_CRASH_AFTER_RECORD"))
	interrupt, _ := strconv.Atoi(os.Getenv("KUBECPR_INTERRUPT_AFTER_RECORD"))
	shellAt, _ := strconv.Atoi(os.Getenv("KUBECPR_SHELL_AFTER_RECORD"))
	if at == "" && after[crashpoint.Record] == 0 && after[crashpoint.ClusterRecord] == 0 && interrupt == 0 && shellAt == 0 {
		return
	}
	var mu sync.Mutex
	seen := map[string]int{}
	crashpoint.Hook = func(point string) {
		mu.Lock()
		seen[point]++
		n := seen[point]
		mu.Unlock()
		if point == crashpoint.Record && n == shellAt {
			_ = exec.Command("sh", "-c", os.Getenv("KUBECPR_SHELL")).Run()
			return
		}
		if point == crashpoint.Record && n == interrupt {
			_ = syscall.Kill(os.Getpid(), syscall.SIGINT) // as Ctrl-C: the run goes on until it notices
			return
		}
		if point == at || (after[point] > 0 && n == after[point]) {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
}
