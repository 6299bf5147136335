package main

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/cluster/transport/sshtest"
)

// benchWorkers is the number of workers of the cluster benchmarks
// (KUBECPR_BENCH_WORKERS, default 100).
func benchWorkers() int {
	if n, err := strconv.Atoi(os.Getenv("KUBECPR_BENCH_WORKERS")); err == nil && n > 0 {
		return n
	}
	return 100
}

// BenchmarkClusterWorkersLocal: one control plane and N expired workers as
// local root: trees, recovered end to end by `kubecpr cluster run`
// (--parallel 10): wall time per whole cluster.
func BenchmarkClusterWorkersLocal(b *testing.B) {
	benchCluster(b, false)
}

// BenchmarkClusterWorkersSSH: the same through one real sshd on loopback
// (kubecpr copied to every node, every node run over its own session).
func BenchmarkClusterWorkersSSH(b *testing.B) {
	benchCluster(b, true)
}

func benchCluster(b *testing.B, overSSH bool) {
	n := benchWorkers()
	kubecprBin(b)
	var srv *sshtest.Server
	if overSSH {
		srv = sshtest.Start(b)
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		inv, _ := expiredClusterOf(b, dir, 1, n)
		if overSSH {
			inv = sshInventory(b, inv, srv, srv.KnownHostsFile)
		}
		driver := filepath.Join(dir, "driver")
		if err := os.MkdirAll(driver, 0o755); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		r := kubecpr(b, nil, "cluster", "run", "--inventory", inv, "--ca-from", "cp-1", "--parallel", "10",
			"--root", filepath.Join(dir, "cp-1"), "--now", now.Format(time.RFC3339))
		b.StopTimer()
		if r.code != 0 {
			b.Fatalf("cluster run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/cluster")
		b.ReportMetric(float64(n), "workers")
	}
}
