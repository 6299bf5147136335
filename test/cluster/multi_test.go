package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/test/fixture"
)

// observeNoQuorum watches the nodes' etcd members for window: etcd's own
// verdict (EtcdRaftHealth) must never be healthy and must end on "RAFT NO
// LEADER", EtcdHealthy (the node's own certificates, as kubecpr asks) must
// never pass, and the apiserver of every node in apis must never answer
// /readyz with its admin.conf. It reports what it saw per node.
func observeNoQuorum(t *testing.T, r *Running, etcds, apis []*Node, window time.Duration) {
	t.Helper()
	var wg sync.WaitGroup
	for _, n := range etcds {
		wg.Add(1)
		go func(n *Node) {
			defer wg.Done()
			// the member runs: its metrics URL answers
			up := time.Now().Add(30 * time.Second)
			for {
				if _, err := EtcdRaftHealth(t, n); err == nil || !strings.Contains(err.Error(), "connect") {
					break
				}
				if time.Now().After(up) {
					t.Errorf("%s: etcd did not come up after the restart\n%s", n.Name, r.Node(n).PodLogTail("etcd", 10))
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			end := time.Now().Add(window)
			var raft string
			var own error
			for time.Now().Before(end) {
				body, err := EtcdRaftHealth(t, n)
				if err == nil {
					t.Errorf("%s: etcd healthy (%s): there is a quorum", n.Name, body)
					return
				}
				raft = body
				if own = EtcdHealthy(t, n); own == nil {
					t.Errorf("%s: EtcdHealthy passed without quorum", n.Name)
					return
				}
				time.Sleep(300 * time.Millisecond)
			}
			if !strings.Contains(raft, "RAFT NO LEADER") {
				t.Errorf("%s: etcd says %q, want RAFT NO LEADER", n.Name, raft)
			}
			t.Logf("%s for %s: etcd's own /health %s; with the node's certificates: %v", n.Name, window, raft, own)
		}(n)
	}
	for _, n := range apis {
		wg.Add(1)
		go func(n *Node) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), window)
			defer cancel()
			err := n.WaitAPIServer(ctx, AdminConf)
			if err == nil {
				t.Errorf("%s: kube-apiserver ready without etcd quorum", n.Name)
				return
			}
			t.Logf("%s: kube-apiserver not ready: %v", n.Name, err)
		}(n)
	}
	wg.Wait()
}

// waitPodLog waits up to 10 s for the newest container of comp on the node
// to log want (etcd's peer prober logs every 5 s).
func waitPodLog(t *testing.T, rn *RunningNode, comp, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(rn.PodLog(comp), want) {
		if time.Now().After(deadline) {
			t.Errorf("%s: %s log lacks %q:\n%s", rn.Name, comp, want, rn.PodLogTail(comp, 10))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Three control-plane nodes laid out by real kubeadm with the shared CAs
// and each its own names and address (127.0.0.1-3), their static pods in
// three real containerd daemons through the kubelet stand-in:
//
//	(a) one 3-member etcd, every member healthy, every member lists the
//	    three with their peer URLs on 127.0.0.1/2/3; every apiserver
//	    answers client-go with its node's admin.conf and serves its own
//	    certificate, which names its address and no other node's; a worker
//	    tree's kubelet certificate authenticates as system:node:<name>,
//	    and once expired gets 401;
//	(b) every leaf expired and every node restarted: no quorum (peers
//	    reject each other's expired certificates), etcd says RAFT NO
//	    LEADER, no apiserver gets ready — the production failure;
//	(c) [in test/kubeadmbed TestKubeadmBed, with kubecpr, on a kubeadm-built cluster] the production trap: node 1 alone renewed (fixture re-sign, valid
//	    window) and restarted: its etcd, on valid certificates, still has
//	    no quorum (its peers' certificates are expired), and its apiserver
//	    never gets ready.
func TestThreeControlPlanesQuorum(t *testing.T) {
	start := time.Now()
	var timings []string
	lap := func(what string, since time.Time) {
		timings = append(timings, fmt.Sprintf("%s %s", what, time.Since(since).Round(time.Millisecond)))
	}
	defer func() {
		t.Logf("timings: %s; total before cleanup %s", strings.Join(timings, ", "), time.Since(start).Round(time.Millisecond))
	}()

	nodes := ControlPlanes(t, 3, Options{})
	lap("layout", start)
	var peerURLs []string
	for i, n := range nodes {
		addr := NodeAddress(i + 1)
		if n.Name != fmt.Sprintf("cp-%d", i+1) || n.Address != addr || len(n.Peers) != 3 {
			t.Fatalf("node %d: name %s address %s peers %d", i+1, n.Name, n.Address, len(n.Peers))
		}
		peerURLs = append(peerURLs, fmt.Sprintf("https://%s:%d", addr, n.EtcdPeerPort))
		if leaks := n.NonLoopbackAddresses(t); len(leaks) > 0 {
			t.Errorf("%s: non-loopback addresses:\n%s", n.Name, strings.Join(leaks, "\n"))
		}
		want := fmt.Sprintf("https://%s:%d", addr, n.APIServerPort)
		for _, kc := range []string{"admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"} {
			cfg, err := clientcmd.LoadFromFile(n.Path("/etc/kubernetes/" + kc))
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range cfg.Clusters {
				if c.Server != want {
					t.Errorf("%s %s: server %s, want its own apiserver %s", n.Name, kc, c.Server, want)
				}
			}
		}
		api := n.Manifest(t, "kube-apiserver")
		for _, f := range []string{"--advertise-address=" + addr, "--bind-address=" + addr, fmt.Sprintf("--etcd-servers=https://127.0.0.1:%d", n.EtcdClientPort)} {
			if !contains(api, f) {
				t.Errorf("%s kube-apiserver: no %s in %v", n.Name, f, api)
			}
		}
	}
	for _, n := range nodes {
		etcd := n.Manifest(t, "etcd")
		for _, f := range []string{"--initial-cluster=" + nodes[0].EtcdInitialCluster, "--initial-cluster-state=new", "--name=" + n.Name,
			fmt.Sprintf("--listen-peer-urls=https://%s:%d", n.Address, n.EtcdPeerPort), "--data-dir=/var/lib/etcd"} {
			if !contains(etcd, f) {
				t.Errorf("%s etcd: no %s in %v", n.Name, f, etcd)
			}
		}
	}

	t0 := time.Now()
	r := StartControlPlanes(t, nodes, RunOptions{})
	lap("start in containerd (to all healthy)", t0)

	// (a) one healthy 3-member cluster, each node with its own names
	t0 = time.Now()
	for _, n := range nodes {
		ms, err := MemberList(t, n)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, m := range ms {
			if len(m.PeerURLs) != 1 || m.IsLearner {
				t.Errorf("%s: member %+v", n.Name, m)
				continue
			}
			got[m.Name] = m.PeerURLs[0]
		}
		for i, p := range nodes {
			if got[p.Name] != peerURLs[i] {
				t.Errorf("member list from %s: %s has %q, want %s (all: %+v)", n.Name, p.Name, got[p.Name], peerURLs[i], ms)
			}
		}
		if len(ms) != 3 {
			t.Errorf("member list from %s: %d members", n.Name, len(ms))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, n := range nodes {
		var nss []string
		var err error
		for ctx.Err() == nil { // each apiserver's RBAC cache sees the binding within a moment
			if nss, err = n.ListNamespaces(ctx, t, AdminConf); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil || !contains(nss, "kube-system") {
			t.Fatalf("%s: client-go with its admin.conf: %v %v\n%s", n.Name, nss, err, r.Diagnostics())
		}
		// the served certificate is the node's own: verified against
		// ca.crt for its address, and naming no other node's
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(n.Address, strconv.Itoa(n.APIServerPort)),
			&tls.Config{RootCAs: certPool(t, n.Path("/etc/kubernetes/pki/ca.crt")), ServerName: n.Address})
		if err != nil {
			t.Fatalf("%s: TLS to its apiserver verified for %s: %v", n.Name, n.Address, err)
		}
		served := conn.ConnectionState().PeerCertificates[0]
		conn.Close()
		disk, _ := fixture.ReadCert(n.Path("/etc/kubernetes/pki/apiserver.crt"))
		if served.SerialNumber.Cmp(disk.SerialNumber) != 0 {
			t.Errorf("%s serves serial %s, its apiserver.crt has %s", n.Name, served.SerialNumber, disk.SerialNumber)
		}
		var ips []string
		for _, ip := range served.IPAddresses {
			ips = append(ips, ip.String())
		}
		for j := range nodes {
			if has := contains(ips, NodeAddress(j+1)); has != (i == j) {
				t.Errorf("%s serves a certificate with IP SANs %v: has %s = %v", n.Name, ips, NodeAddress(j+1), has)
			}
		}
		if !contains(served.DNSNames, n.Name) {
			t.Errorf("%s serves a certificate with DNS SANs %v", n.Name, served.DNSNames)
		}
	}
	// a worker of the cluster authenticates with its kubelet certificate
	w := Worker(t, nodes[1], "worker-1", "127.0.0.2")
	if user, err := w.WhoAmI(ctx, KubeletConf); err != nil || user != "system:node:worker-1" {
		t.Errorf("worker-1 with its kubelet certificate: %q %v, want system:node:worker-1", user, err)
	}
	if err := w.RenewNodeLease(ctx); err != nil {
		t.Errorf("worker-1 renewing its lease: %v", err)
	}
	w.Expire(t, time.Hour)
	if user, err := w.WhoAmI(ctx, KubeletConf); !apierrors.IsUnauthorized(err) {
		t.Errorf("worker-1 with its expired kubelet certificate: %q %v, want 401 Unauthorized", user, err)
	}
	lap("(a) checks", t0)

	// (b) everything expired and restarted: no quorum anywhere
	t0 = time.Now()
	ExpireAll(t, nodes, 48*time.Hour)
	r.RestartAll(t)
	observeNoQuorum(t, r, nodes, nodes, 3*time.Second)
	for _, rn := range r.Nodes {
		waitPodLog(t, rn, "etcd", expiredMsg)
	}
	lap("(b) all expired, restarted, observed", t0)
	if t.Failed() {
		t.Fatalf("(b) failed\n%s", r.Diagnostics())
	}

	// (c), node 1 alone renewed and restarted, is proven with kubecpr
	// itself in test/kubeadmbed TestKubeadmBed (exit 6, no quorum).
	if t.Failed() {
		t.Logf("%s", r.Diagnostics())
	}
}
