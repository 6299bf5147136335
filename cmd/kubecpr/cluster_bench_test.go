package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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
	benchCluster(b, false, kubecprBin(b))
}

// BenchmarkClusterWorkersSSH: the same through one real sshd on loopback
// (kubecpr copied to every node, every node run over its own session),
// driven by the tests' build of kubecpr (unstripped, with the crash-test
// seam).
func BenchmarkClusterWorkersSSH(b *testing.B) {
	benchCluster(b, true, kubecprBin(b))
}

// BenchmarkClusterWorkersSSHRelease: the same driven by kubecpr built as
// `make build` builds it (-trimpath -ldflags '-s -w', CGO_ENABLED=0): the
// binary an operator copies to their nodes.
func BenchmarkClusterWorkersSSHRelease(b *testing.B) {
	benchCluster(b, true, releaseBin(b))
}

var (
	releaseOnce sync.Once
	releasePath string
	releaseErr  error
)

// releaseBin builds kubecpr as the Makefile's build target does (once).
func releaseBin(t testing.TB) string {
	t.Helper()
	releaseOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kubecpr-release-")
		if err != nil {
			releaseErr = err
			return
		}
		releasePath = filepath.Join(dir, "kubecpr")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", releasePath, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			releaseErr = errors.New("go build: " + err.Error() + "\n" + string(out))
		}
	})
	if releaseErr != nil {
		t.Fatal(releaseErr)
	}
	return releasePath
}

func benchCluster(b *testing.B, overSSH bool, bin string) {
	n := benchWorkers()
	var srv *sshtest.Server
	if overSSH {
		srv = sshtest.Start(b)
	}
	st, err := os.Stat(bin)
	if err != nil {
		b.Fatal(err)
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
		args := []string{"--inventory", inv, "--ca-from", "cp-1", "--parallel", "10",
			"--root", filepath.Join(dir, "cp-1"), "--now", now.Format(time.RFC3339)}
		b.StartTimer()
		start := time.Now()
		code, out := runBin(b, bin, append([]string{"cluster", "run"}, args...)...)
		took := time.Since(start)
		b.StopTimer()
		if code != 0 {
			b.Fatalf("cluster run: exit %d\n%s", code, out)
		}
		if i := strings.Index(out, "\nNODE "); i >= 0 && n <= 10 {
			b.Logf("cluster run in %s:%s", took.Round(time.Millisecond), out[i:])
		}
		b.ReportMetric(took.Seconds(), "s/cluster")
		b.ReportMetric(float64(n), "workers")
		b.ReportMetric(float64(st.Size())/(1<<20), "MiB-binary")
		if overSSH {
			// The same binary is on every node now: a plan (connect, facts,
			// the inventory checked) copies nothing.
			start = time.Now()
			code, out = runBin(b, bin, append([]string{"cluster", "plan"}, args...)...)
			if code != 0 || strings.Count(out, "kubecpr already at") != n+1 {
				b.Fatalf("cluster plan after the run: exit %d, %d nodes not copied, want %d\n%s", code, strings.Count(out, "kubecpr already at"), n+1, out)
			}
			b.ReportMetric(time.Since(start).Seconds(), "s/plan-binary-present")
		}
	}
}

func runBin(t testing.TB, bin string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String()
	case err != nil:
		t.Fatal(err)
	}
	return 0, out.String()
}
