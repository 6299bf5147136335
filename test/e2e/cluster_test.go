package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/kubecprbin"
	"github.com/kubecpr/kubecpr/test/treesnap"
)

// credentials is what a node's recovery may change and its rollback must
// restore: /etc/kubernetes and /var/lib/kubelet (not etcd's data, logs, or
// kubecpr's own state).
func credentials(t *testing.T, n *cluster.Node) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range []string{"etc/kubernetes", "var/lib/kubelet"} {
		if _, err := os.Stat(filepath.Join(n.Root, d)); os.IsNotExist(err) {
			continue
		}
		for k, v := range treesnap.Take(t, filepath.Join(n.Root, d)) {
			out[d+"/"+k] = v
		}
	}
	return out
}

// TestClusterRecoversQuorum: three control planes (stacked etcd on
// 127.0.0.1-3, real kubeadm layouts with their own names, real etcd and
// kube-apiserver in three real containerd daemons) and two workers, every
// certificate expired.
//
//  1. The production failure: nothing is healthy, and `kubecpr run` on node
//     1 alone renews it but cannot bring etcd back (its peers still present
//     expired certificates: no quorum) — exit 6 naming etcd. Rolled back.
//  2. `kubecpr cluster run` recovers it: every member healthy, every API
//     server ready on its new serving certificate (new serial on the wire),
//     every worker's kubelet authenticating with its new certificate.
//  3. `kubecpr cluster rollback` puts every node's credentials back byte for
//     byte.
func TestClusterRecoversQuorum(t *testing.T) {
	t.Parallel() // its own containerd daemons, ports and trees; mostly waiting
	start := time.Now()
	lap := func(what string) { t.Logf("%s at %s", what, time.Since(start).Round(100*time.Millisecond)) }
	nodes := cluster.ControlPlanes(t, 3, cluster.Options{})
	workers := []*cluster.Node{
		cluster.Worker(t, nodes[0], "worker-1", "127.0.0.1"),
		cluster.Worker(t, nodes[1], "worker-2", "127.0.0.2"),
	}
	run := cluster.StartControlPlanes(t, nodes, cluster.RunOptions{})
	lap("cluster up")
	cluster.ExpireAll(t, append(append([]*cluster.Node{}, nodes...), workers...), 48*time.Hour)
	run.RestartAll(t)
	before := map[string]map[string]string{}
	for _, n := range append(append([]*cluster.Node{}, nodes...), workers...) {
		before[n.Name] = credentials(t, n)
	}
	lap("expired and restarted")

	nodeArgs := func(n *cluster.Node) []string {
		rn := run.Node(n)
		return []string{"--cri-socket", rn.Socket, "--kubelet-restart-command", rn.KubeletRestartCommand}
	}
	// 1. One node alone: renewed, but no quorum.
	r := kubecpr(t, nodes[0], append([]string{"run", "--component-timeout", "15s"}, nodeArgs(nodes[0])...)...)
	if r.code != 6 || !strings.Contains(r.stderr, "etcd did not come back") {
		t.Fatalf("kubecpr run on node 1 alone: exit %d, want 6 and etcd not coming back\n%s%s", r.code, r.stdout, r.stderr)
	}
	if err := cluster.EtcdHealthy(t, nodes[0]); err == nil {
		t.Fatal("etcd on node 1 is healthy after renewing node 1 alone: the trap did not reproduce")
	}
	if r := kubecpr(t, nodes[0], append([]string{"rollback"}, nodeArgs(nodes[0])...)...); r.code != 0 {
		t.Fatalf("rollback of node 1: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if d := treesnap.Diff(before[nodes[0].Name], credentials(t, nodes[0])); d != "" {
		t.Fatalf("node 1 rollback not byte-identical:\n%s", d)
	}
	lap("single-node trap reproduced and rolled back")

	// 2. The whole cluster.
	dir := t.TempDir()
	var inv strings.Builder
	inv.WriteString("apiVersion: kubecpr.io/v1alpha1\nkind: Inventory\nnodes:\n")
	for _, n := range nodes {
		fmt.Fprintf(&inv, "  - name: %s\n    role: control-plane\n    address: %s\n    root: %s\n    args: [%s]\n",
			n.Name, n.Address, n.Root, quoteArgs(nodeArgs(n)))
	}
	for _, w := range workers {
		fmt.Fprintf(&inv, "  - name: %s\n    role: worker\n    root: %s\n    args: [--kubelet-restart-command, 'true']\n", w.Name, w.Root)
	}
	invFile := filepath.Join(dir, "inventory.yaml")
	if err := os.WriteFile(invFile, []byte(inv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	driver := filepath.Join(dir, "driver")
	if err := os.MkdirAll(driver, 0o755); err != nil {
		t.Fatal(err)
	}
	res := kubecprbin.Run(t, nil, "--root", driver, "cluster", "run", "--inventory", invFile, "--ca-from", "cp-1", "--component-timeout", "3m")
	if res.Code != 0 {
		t.Fatalf("kubecpr cluster run: exit %d\n%s%s\n%s", res.Code, res.Stdout, res.Stderr, run.Diagnostics())
	}
	lap("cluster run")
	if i := strings.Index(res.Stdout, "NODE "); i >= 0 {
		t.Logf("kubecpr cluster run summary:\n%s", res.Stdout[i:])
	}
	for _, want := range []string{"== restart: cp-1, cp-2, cp-3", "NODE", "worker-2", "kubelet authenticates as system:node:worker-1"} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("cluster run output lacks %q", want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	members, err := cluster.MemberList(t, nodes[0])
	if err != nil || len(members) != 3 {
		t.Errorf("etcd member list: %v %v", members, err)
	}
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func(n *cluster.Node) {
			defer wg.Done()
			if err := cluster.EtcdHealthy(t, n); err != nil {
				t.Errorf("%s: etcd not healthy after the cluster run: %v", n.Name, err)
			}
			if err := n.WaitAPIServer(ctx, cluster.AdminConf); err != nil {
				t.Errorf("%s: the API server does not answer its renewed admin.conf: %v", n.Name, err)
				return
			}
			chain, err := cluster.ServedChainAt(n.Address, n.APIServerPort)
			if err != nil {
				t.Errorf("%s: %v", n.Name, err)
				return
			}
			disk, err := os.ReadFile(n.Path("/etc/kubernetes/pki/apiserver.crt"))
			if err != nil {
				t.Error(err)
				return
			}
			want, err := pki.ParseCertificate(disk)
			if err != nil {
				t.Error(err)
				return
			}
			if chain[0].SerialNumber.Cmp(want.SerialNumber) != 0 || !chain[0].NotAfter.After(time.Now().Add(300*24*time.Hour)) {
				t.Errorf("%s: the API server serves serial %s until %s, disk has %s", n.Name, chain[0].SerialNumber, chain[0].NotAfter, want.SerialNumber)
			}
		}(n)
	}
	wg.Wait()
	for _, w := range workers {
		user, err := w.WhoAmI(ctx, "/etc/kubernetes/kubelet.conf")
		if err != nil || user != "system:node:"+w.Name {
			t.Errorf("%s: the kubelet authenticates as %q (%v), want system:node:%s", w.Name, user, err, w.Name)
		}
	}
	lap("cluster proven")

	// 3. Rollback: every node back byte for byte, processes restarted on
	// the old files.
	res = kubecprbin.Run(t, nil, "--root", driver, "cluster", "rollback")
	if res.Code != 0 {
		t.Fatalf("kubecpr cluster rollback: exit %d\n%s%s", res.Code, res.Stdout, res.Stderr)
	}
	for _, n := range append(append([]*cluster.Node{}, nodes...), workers...) {
		if d := treesnap.Diff(before[n.Name], credentials(t, n)); d != "" {
			t.Errorf("%s: cluster rollback not byte-identical:\n%s", n.Name, d)
		}
	}
	lap("cluster rolled back")
}

func quoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", "''") + "'"
	}
	return strings.Join(q, ", ")
}
