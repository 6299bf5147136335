package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/kubecprbin"
)

// BenchmarkControlPlaneRecovery: a kubeadm control plane of 1 and of 3
// nodes (stacked etcd on 127.0.0.1-3, etcd and kube-apiserver of each node
// in its own real containerd, as the harness lays them out),
// every certificate expired and every component restarted on the expired
// files, then recovered by `kubecpr cluster run`: the time from the
// expired cluster to every API server ready on its new certificate (the
// end of the restart phase) and to the end of the run (verify included).
// Both sizes are measured the same way, so their ratio is the cost of
// the cluster (the goal: 3 nodes within 1.5× of 1). "node-run" is the
// single-node pipeline (`kubecpr run`) on the 1-node layout, for
// reference.
//
// The layout and start of each cluster is outside the timer and takes
// 20–40 s; run it with -benchtime 1x and -count N
// (KUBECPR_BENCH_OUTPUT_DIR=DIR keeps each run's whole output in DIR):
//
//	go test -run '^$' -bench BenchmarkControlPlaneRecovery -benchtime 1x -count 3 ./test/e2e/
func BenchmarkControlPlaneRecovery(b *testing.B) {
	b.Run("node-run", func(b *testing.B) { benchControlPlanes(b, 1, false) })
	b.Run("cluster-1", func(b *testing.B) { benchControlPlanes(b, 1, true) })
	b.Run("cluster-3", func(b *testing.B) { benchControlPlanes(b, 3, true) })
}

func benchControlPlanes(b *testing.B, count int, viaCluster bool) {
	kubecprbin.Path(b) // built once per process, outside the timer
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		nodes := cluster.ControlPlanes(b, count, cluster.Options{})
		run := cluster.StartControlPlanes(b, nodes, cluster.RunOptions{})
		cluster.ExpireAll(b, nodes, 48*time.Hour)
		run.RestartAll(b)
		nodeArgs := func(n *cluster.Node) []string {
			rn := run.Node(n)
			return []string{"--cri-socket", rn.Socket, "--kubelet-restart-command", rn.KubeletRestartCommand}
		}
		var args []string
		if viaCluster {
			dir := b.TempDir()
			var inv strings.Builder
			inv.WriteString("apiVersion: kubecpr.io/v1alpha1\nkind: Inventory\nnodes:\n")
			for _, n := range nodes {
				fmt.Fprintf(&inv, "  - name: %s\n    role: control-plane\n    address: %s\n    root: %s\n    args: [%s]\n",
					n.Name, n.Address, n.Root, yamlQuoted(nodeArgs(n)))
			}
			invFile := filepath.Join(dir, "inventory.yaml")
			if err := os.WriteFile(invFile, []byte(inv.String()), 0o600); err != nil {
				b.Fatal(err)
			}
			driver := filepath.Join(dir, "driver")
			if err := os.MkdirAll(driver, 0o755); err != nil {
				b.Fatal(err)
			}
			args = []string{"--root", driver, "cluster", "run", "--inventory", invFile, "--ca-from", "cp-1", "--component-timeout", "3m"}
		} else {
			args = append([]string{"--root", nodes[0].Root, "run", "--component-timeout", "3m"}, nodeArgs(nodes[0])...)
		}
		load := loadAvg()
		busy0, total0 := machineCPU(b)
		b.StartTimer()
		start := time.Now()
		res := kubecprbin.Run(b, nil, args...)
		took := time.Since(start)
		b.StopTimer()
		busy1, total1 := machineCPU(b)
		busy := float64(busy1-busy0) / float64(total1-total0)
		if res.Code != 0 {
			b.Fatalf("kubecpr %s: exit %d\n%s%s\n%s", args[2], res.Code, res.Stdout, res.Stderr, run.Diagnostics())
		}
		b.ReportMetric(took.Seconds(), "s/run")
		b.ReportMetric(100*busy, "%machine-cpu-busy")
		if d := longestAfter(res.Stdout, "kube-apiserver healthy on the new files after "); d > 0 {
			b.ReportMetric(d.Seconds(), "s/apiserver-restart")
		}
		if viaCluster {
			restart := phaseTime(b, res.Stdout, "restart")
			b.ReportMetric(restart.Seconds(), "s/restart-phase")
			b.Logf("%d control plane(s): cluster run %s (restart phase, to every API server ready: %s); the machine's CPUs %.0f%% busy; %s at the start, %s at the end",
				count, took.Round(100*time.Millisecond), restart.Round(100*time.Millisecond), 100*busy, load, loadAvg())
			if i := strings.Index(res.Stdout, "\nNODE "); i >= 0 {
				b.Logf("summary:%s", res.Stdout[i:])
			}
		} else {
			b.Logf("kubecpr run on the node: %s; the machine's CPUs %.0f%% busy; %s at the start, %s at the end", took.Round(100*time.Millisecond), 100*busy, load, loadAvg())
		}
		if dir := os.Getenv("KUBECPR_BENCH_OUTPUT_DIR"); dir != "" {
			// The benchmark log keeps 10 lines: the whole output goes to a file.
			f := filepath.Join(dir, fmt.Sprintf("%s-%s.txt", strings.ReplaceAll(b.Name(), "/", "_"), time.Now().Format("150405")))
			if err := os.WriteFile(f, []byte(res.Stdout+res.Stderr), 0o644); err != nil {
				b.Error(err)
			}
		}
	}
}

// phaseTime is the longest TIME of a phase's rows in the cluster run's
// summary table (its nodes run at once: the phase's wall time).
func phaseTime(b *testing.B, out, phase string) time.Duration {
	var longest time.Duration
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) != 5 || f[2] != phase || f[3] != "ok" {
			continue
		}
		d, err := time.ParseDuration(f[4])
		if err != nil {
			b.Fatalf("summary row %q: %v", l, err)
		}
		longest = max(longest, d)
	}
	if longest == 0 {
		b.Fatalf("no %s rows in the summary:\n%s", phase, out)
	}
	return longest
}

// yamlQuoted is args as a YAML flow sequence of single-quoted strings.
func yamlQuoted(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", "''") + "'"
	}
	return strings.Join(q, ", ")
}

// machineCPU is the machine's busy and total CPU time so far (clock
// ticks, all CPUs, from /proc/stat): how busy the machine was during a
// run, whoever kept it busy.
func machineCPU(b *testing.B) (busy, total int64) {
	s, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(s), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseInt(f, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// longestAfter is the longest duration printed right after prefix in the
// output (each node's "kube-apiserver healthy on the new files after
// 5.1s"): the apiserver restarts run at once, so this is that step's wall
// time. 0 when no line has it.
func longestAfter(out, prefix string) time.Duration {
	var longest time.Duration
	for _, l := range strings.Split(out, "\n") {
		_, rest, ok := strings.Cut(l, prefix)
		if !ok {
			continue
		}
		word, _, _ := strings.Cut(rest, ",")
		if d, err := time.ParseDuration(strings.TrimSpace(word)); err == nil {
			longest = max(longest, d)
		}
	}
	return longest
}
