package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/cluster/transport/sshtest"
	"github.com/kubecpr/kubecpr/test/kubecprbin"
)

// benchWorkers is the number of workers of the cluster benchmarks
// (KUBECPR_BENCH_WORKERS, default 100).
func benchWorkers() int {
	if n, err := strconv.Atoi(os.Getenv("KUBECPR_BENCH_WORKERS")); err == nil && n > 0 {
		return n
	}
	return 100
}

// benchParallel is the cluster benchmarks' --parallel
// (KUBECPR_BENCH_PARALLEL, default 10, the flag's default).
func benchParallel() int {
	if n, err := strconv.Atoi(os.Getenv("KUBECPR_BENCH_PARALLEL")); err == nil && n > 0 {
		return n
	}
	return 10
}

// BenchmarkClusterWorkersLocal: one control plane and N expired workers as
// local root: trees, recovered end to end by `kubecpr cluster run`
// (--parallel 10): wall time per whole cluster, and of each phase
// (s/prepare: connecting, copying kubecpr, reading every node's facts).
//
// Minutes for 100 workers over SSH: not part of `make test` (benchmarks
// run only with -bench); run one with, for example,
//
//	KUBECPR_BENCH_WORKERS=100 go test -run '^$' -bench BenchmarkClusterWorkersSSHRelease -benchtime 1x ./cmd/kubecpr/
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
	benchCluster(b, true, kubecprbin.Release(b))
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
		args := []string{"--inventory", inv, "--ca-from", "cp-1", "--parallel", strconv.Itoa(benchParallel()),
			"--root", filepath.Join(dir, "cp-1"), "--now", now.Format(time.RFC3339)}
		load := loadAvg()
		sshd0 := sshdCPU(b, srv)
		clock := &phaseClock{start: time.Now()}
		b.StartTimer()
		code, out, driverCPU := runBinTo(b, clock, bin, append([]string{"cluster", "run"}, args...)...)
		took := time.Since(clock.start)
		b.StopTimer()
		if code != 0 {
			b.Fatalf("cluster run: exit %d\n%s", code, out)
		}
		// The driver's CPU includes the node runs of local nodes (its
		// children); over SSH the node side (sshd, the shells, the nodes'
		// kubecpr) is sshd's, its sessions reaped once the driver is gone.
		b.ReportMetric(driverCPU.Seconds(), "driver-cpu-s")
		if overSSH {
			time.Sleep(time.Second)
			b.ReportMetric((sshdCPU(b, srv) - sshd0).Seconds(), "sshd-side-cpu-s")
		}
		if i := strings.Index(out, "\nNODE "); i >= 0 && n <= 10 {
			b.Logf("cluster run in %s:%s", took.Round(time.Millisecond), out[i:])
		}
		phases := clock.phases(took)
		b.Logf("%d workers: cluster run %s (%s); %s at the start, %s at the end",
			n, took.Round(100*time.Millisecond), phases, load, loadAvg())
		b.ReportMetric(took.Seconds(), "s/cluster")
		for _, p := range clock.marks {
			b.ReportMetric(p.took.Seconds(), "s/"+p.name)
		}
		b.ReportMetric(float64(n), "workers")
		b.ReportMetric(float64(st.Size())/(1<<20), "MiB-binary")
		if overSSH {
			// The same binary is on every node now: a plan (connect, facts,
			// the inventory checked) copies nothing.
			start := time.Now()
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
	code, out, _ := runBinTo(t, nil, bin, args...)
	return code, out
}

// runBinTo is runBin with the output also written to w as it comes; it
// also returns the CPU time the process and the children it waited for
// used.
func runBinTo(t testing.TB, w io.Writer, bin string, args ...string) (int, string, time.Duration) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if w != nil {
		cmd.Stdout, cmd.Stderr = io.MultiWriter(&out, w), io.MultiWriter(&out, w)
	}
	err := cmd.Run()
	var cpu time.Duration
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), cpu
	case err != nil:
		t.Fatal(err)
	}
	return 0, out.String(), cpu
}

// sshdCPU is the CPU time of the test sshd and of the sessions it has
// reaped (0 without a server).
func sshdCPU(t testing.TB, srv *sshtest.Server) time.Duration {
	if srv == nil {
		return 0
	}
	pid, err := os.ReadFile(filepath.Join(srv.Dir, "sshd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
		v, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// phaseClock notes when the cluster run's output starts each phase (its
// "== PHASE: nodes" lines), so a benchmark can say where the time went:
// prepare (connect, copy kubecpr, facts) is what comes before the first.
type phaseClock struct {
	start time.Time
	mu    sync.Mutex
	buf   []byte
	seen  []phaseMark // phase starts, in order
	marks []phaseMark // phase durations, set by phases
}

type phaseMark struct {
	name string
	at   time.Duration // since start
	took time.Duration
}

func (c *phaseClock) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, p...)
	for {
		i := bytes.IndexByte(c.buf, '\n')
		if i < 0 {
			break
		}
		line := string(c.buf[:i])
		c.buf = c.buf[i+1:]
		if name, _, ok := strings.Cut(strings.TrimPrefix(line, "== "), ":"); ok && strings.HasPrefix(line, "== ") {
			c.seen = append(c.seen, phaseMark{name: name, at: time.Since(c.start)})
		}
	}
	return len(p), nil
}

// phases sets marks (prepare, then each phase seen, until total) and
// returns them as text.
func (c *phaseClock) phases(total time.Duration) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	marks := append([]phaseMark{{name: "prepare"}}, c.seen...)
	var parts []string
	for i := range marks {
		end := total
		if i+1 < len(marks) {
			end = marks[i+1].at
		}
		marks[i].took = end - marks[i].at
		parts = append(parts, fmt.Sprintf("%s %s", marks[i].name, marks[i].took.Round(100*time.Millisecond)))
	}
	c.marks = marks
	return strings.Join(parts, ", ")
}

// loadAvg is the machine's load average as uptime prints it.
func loadAvg() string {
	s, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(s)); err == nil && len(f) >= 3 {
		return "load average " + strings.Join(f[:3], " ")
	}
	return "load average unknown"
}
