package main

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/test/fixture"
)

// expiredCluster generates three control-plane nodes (cp-1..3 on
// 127.0.0.1..3, one shared CA, each with its own names) and two workers,
// all expired three days before now, and an inventory of root: nodes.
func expiredCluster(t testing.TB, dir string) (inv string, roots map[string]string) {
	t.Helper()
	return expiredClusterOf(t, dir, 3, 2)
}

// expiredClusterOf is expiredCluster with cps control planes (cp-1..) and
// workers workers (w-1..).
func expiredClusterOf(t testing.TB, dir string, cps, workers int, opts ...func(*fixture.Options)) (inv string, roots map[string]string) {
	t.Helper()
	roots = map[string]string{}
	var first *fixture.Node
	gen := func(name, ip string) *fixture.Node {
		root := filepath.Join(dir, name)
		o := fixture.Options{NodeName: name, AdvertiseIP: ip, Now: now, Keys: keys, CAFrom: first,
			CA:            fixture.Window{NotBefore: now.AddDate(-2, 0, 0), NotAfter: now.AddDate(8, 0, 0)},
			Leaf:          fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)},
			KubeletClient: fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)},
		}
		for _, f := range opts {
			f(&o)
		}
		n, err := fixture.Generate(root, o)
		if err != nil {
			t.Fatal(err)
		}
		roots[name] = root
		return n
	}
	var cpNames, wNames, members []string
	for i := 1; i <= cps; i++ {
		name := fmt.Sprintf("cp-%d", i)
		n := gen(name, fmt.Sprintf("127.0.0.%d", i))
		if first == nil {
			first = n
		}
		cpNames = append(cpNames, name)
		members = append(members, fmt.Sprintf("%s=https://127.0.0.%d:2380", name, i))
	}
	// One etcd cluster of stacked members, as kubeadm join writes it.
	for _, cp := range cpNames {
		m := filepath.Join(roots[cp], "etc/kubernetes/manifests/etcd.yaml")
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		for i, l := range lines {
			if k, _, ok := strings.Cut(l, "--initial-cluster="); ok {
				lines[i] = k + "--initial-cluster=" + strings.Join(members, ",")
			}
		}
		if err := os.WriteFile(m, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= workers; i++ {
		w := fmt.Sprintf("w-%d", i)
		gen(w, fmt.Sprintf("127.0.0.%d", cps+i))
		workerize(t, roots[w])
		wNames = append(wNames, w)
	}
	var b strings.Builder
	b.WriteString("apiVersion: kubecpr.io/v1alpha1\nkind: Inventory\nnodes:\n")
	for i, name := range append(cpNames, wNames...) {
		role := "control-plane"
		if strings.HasPrefix(name, "w-") {
			role = "worker"
		}
		fmt.Fprintf(&b, "  - {name: %s, role: %s, address: 127.0.0.%d, root: %s}\n", name, role, i+1, roots[name])
	}
	inv = filepath.Join(dir, "inventory.yaml")
	if err := os.WriteFile(inv, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return inv, roots
}

// workerize strips a generated node down to what kubeadm join leaves on a
// worker: kubelet.conf, the cluster CA certificate, the kubelet's files.
func workerize(t testing.TB, root string) {
	t.Helper()
	k := filepath.Join(root, "etc/kubernetes")
	for _, f := range []string{"manifests", "admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf", "../../root/.kube"} {
		if err := os.RemoveAll(filepath.Join(k, f)); err != nil {
			t.Fatal(err)
		}
	}
	pkiDir := filepath.Join(k, "pki")
	ca, err := os.ReadFile(filepath.Join(pkiDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(pkiDir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(pkiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkiDir, "ca.crt"), ca, 0o644); err != nil {
		t.Fatal(err)
	}
}

func checkClusterRecovered(t *testing.T, roots map[string]string) {
	t.Helper()
	for name, root := range roots {
		if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
			t.Errorf("%s: check after the cluster run: exit %d\n%s", name, r.code, r.stdout)
		}
		n, _ := node.New(root)
		c, _ := n.Discover("")
		inv, err := inventory.Build(n, c, now, 0)
		if err != nil {
			t.Fatal(err)
		}
		ca := inv.CA("ca").CA.Cert
		pool := x509.NewCertPool()
		pool.AddCert(ca)
		for _, it := range inv.Items {
			switch {
			case it.Kind == inventory.KindKubeletClient:
				if it.Cert.Subject.CommonName != "system:node:"+name {
					t.Errorf("%s: kubelet client certificate for %q", name, it.Cert.Subject.CommonName)
				}
				if _, err := it.Cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
					t.Errorf("%s: kubelet client certificate does not chain to the cluster CA: %v", name, err)
				}
			case it.Name == "apiserver":
				// Each control plane keeps its own address, not another's.
				var ips []string
				for _, ip := range it.Cert.IPAddresses {
					ips = append(ips, ip.String())
				}
				want := "127.0.0." + strings.TrimPrefix(name, "cp-")
				if !strings.Contains(strings.Join(ips, ","), want) {
					t.Errorf("%s: apiserver SANs %v lack the node's own %s", name, ips, want)
				}
			}
		}
		if inv.Worker != strings.HasPrefix(name, "w-") {
			t.Errorf("%s: worker = %v", name, inv.Worker)
		}
	}
}

func TestClusterRunOnCopies(t *testing.T) {
	dir := t.TempDir()
	invFile, roots := expiredCluster(t, dir)
	driver := filepath.Join(dir, "driver")
	if err := os.MkdirAll(driver, 0o755); err != nil {
		t.Fatal(err)
	}
	before := map[string]map[string]string{}
	for name, root := range roots {
		before[name] = snapshot(t, root)
	}

	// The plan checks the inventory against the nodes and changes nothing.
	r := kubecpr(t, nil, "cluster", "plan", "--inventory", invFile, "--ca-from", "cp-1", "--root", driver, "--now", now.Format(time.RFC3339))
	if r.code != 0 || !strings.Contains(r.stdout, "every node matches the inventory") {
		t.Fatalf("cluster plan: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for name, root := range roots {
		if d := diffSnapshots(before[name], snapshot(t, root)); d != "" {
			t.Fatalf("cluster plan changed %s:\n%s", name, d)
		}
	}
	// Not even a lock on the driving node (issue 19 item 16).
	if ents, err := os.ReadDir(driver); err != nil || len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("cluster plan wrote into the driver's root: %v %v", names, err)
	}

	r = kubecpr(t, nil, "cluster", "run", "--inventory", invFile, "--ca-from", "cp-1", "--update-user-kubeconfigs",
		"--root", driver, "--now", now.Format(time.RFC3339))
	if r.code != 0 {
		t.Fatalf("cluster run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"[cp-2] ", "[w-1] ", "NODE", "complete"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("cluster run output lacks %q:\n%s", want, r.stdout)
		}
	}
	checkClusterRecovered(t, roots)
	for name, root := range roots {
		if _, err := os.Stat(filepath.Join(root, "var/lib/kubecpr/incoming/kubelet-client.pem")); err == nil {
			t.Errorf("%s: the kubelet bundle (a private key) was left behind", name)
		}
	}
	if r := kubecpr(t, nil, "cluster", "status", "--root", driver); r.code != 0 || !strings.Contains(r.stdout, "complete") {
		t.Errorf("cluster status: exit %d\n%s", r.code, r.stdout)
	}

	r = kubecpr(t, nil, "cluster", "rollback", "--root", driver, "--now", now.Format(time.RFC3339))
	if r.code != 0 {
		t.Fatalf("cluster rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for name, root := range roots {
		if d := diffSnapshots(before[name], snapshot(t, root)); d != "" {
			t.Errorf("cluster rollback: %s not byte-identical:\n%s", name, d)
		}
	}
}

// TestClusterBadInventory: each wrong inventory is refused before any
// change anywhere, naming the node.
func TestClusterBadInventory(t *testing.T) {
	dir := t.TempDir()
	invFile, roots := expiredCluster(t, dir)
	good, err := os.ReadFile(invFile)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "other")
	// Its own keys (not the test process's key pool): another cluster's
	// CA has another key, which is how the driver tells clusters apart
	// (a re-issued CA certificate of the same key is the same cluster).
	if _, err := fixture.Generate(other, fixture.Options{NodeName: "cp-3", AdvertiseIP: "127.0.0.3", Now: now}); err != nil {
		t.Fatal(err)
	}
	before := map[string]map[string]string{}
	for name, root := range roots {
		before[name] = snapshot(t, root)
	}
	for _, tc := range []struct {
		name, edit, want string
		args             []string
	}{
		{"unknown node", "name: cp-3", "cp-3", nil},
		{"another cluster's CA", "root: " + roots["cp-3"], "another cluster CA", nil},
		{"worker called control plane", "name: w-1, role: worker", "w-1", nil},
		{"worker not kubeadm-shaped", "", "w-2", nil},
		// --workers bootstrap needs kubelets that request certificates:
		// copies of nodes have none.
		{"bootstrap workers on copies", "", "w-1, w-2 of", []string{"--workers", "bootstrap"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := string(good)
			switch tc.name {
			case "unknown node":
				s = strings.Replace(s, "name: cp-3", "name: cp-9", 1)
			case "another cluster's CA":
				s = strings.Replace(s, "root: "+roots["cp-3"], "root: "+other, 1)
			case "worker called control plane":
				s = strings.Replace(s, "name: w-1, role: worker", "name: w-1, role: control-plane", 1)
			case "worker not kubeadm-shaped":
				empty := t.TempDir()
				if err := os.MkdirAll(filepath.Join(empty, "etc/rancher/k3s"), 0o755); err != nil {
					t.Fatal(err)
				}
				s = strings.Replace(s, "root: "+roots["w-2"], "root: "+empty, 1)
			}
			f := filepath.Join(t.TempDir(), "inv.yaml")
			if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
				t.Fatal(err)
			}
			r := kubecpr(t, nil, append([]string{"cluster", "run", "--inventory", f, "--ca-from", "cp-1", "--root", t.TempDir(), "--now", now.Format(time.RFC3339)}, tc.args...)...)
			if r.code != ExitPrecondition || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, want %d naming %q\n%s%s", r.code, ExitPrecondition, tc.want, r.stdout, r.stderr)
			}
			for name, root := range roots {
				if d := diffSnapshots(before[name], snapshot(t, root)); d != "" {
					t.Fatalf("a refused cluster run changed %s:\n%s", name, d)
				}
			}
		})
	}
}
