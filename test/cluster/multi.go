package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/test/fixture"
)

// AdminConf is the node path of kubeadm's admin kubeconfig.
const AdminConf = "/etc/kubernetes/admin.conf"

// MaxControlPlanes is how many control-plane nodes ControlPlanes lays out
// at most: node i lives at 127.0.0.i, and the tests use 127.0.0.1,
// 127.0.0.2 and 127.0.0.3 only.
const MaxControlPlanes = 3

// NodeAddress is the loopback address of control-plane node i (1-based)
// of ControlPlanes.
func NodeAddress(i int) string { return fmt.Sprintf("127.0.0.%d", i) }

// sharedCA are the files `kubeadm join --control-plane` downloads (or an
// operator copies) before kubeadm generates the node's own leaves.
var sharedCA = []string{"ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key", "etcd/ca.crt", "etcd/ca.key", "sa.key", "sa.pub"}

// copySharedCA copies first's CAs and service-account key pair into the
// pki directory of the tree at root.
func copySharedCA(first *Node, root string) error {
	for _, f := range sharedCA {
		src := first.Path("/etc/kubernetes/pki/" + f)
		if f == "ca.key" && first.ExternalCAKey != "" {
			src = first.ExternalCAKey
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		dst := filepath.Join(root, "etc/kubernetes/pki", f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(f, ".key") {
			mode = 0o600
		}
		if err := os.WriteFile(dst, b, mode); err != nil {
			return err
		}
	}
	return nil
}

// ControlPlanes lays out the count control-plane nodes (1 to
// MaxControlPlanes) of one kubeadm cluster with stacked etcd, each with real
// kubeadm under its own t.TempDir():
//
//   - node i is named cp-i and lives at 127.0.0.i: kubeadm is given
//     controlPlaneEndpoint 127.0.0.i:<its apiserver port>, apiServer
//     certSANs [127.0.0.i, localhost] and etcd server and peer certSANs
//     [127.0.0.i] (kubeadm itself adds 127.0.0.1 and localhost to the etcd
//     certificates of every node, and the advertise address NeverContacted
//     to all);
//   - node 1 is laid out as Kubeadm does; nodes 2..count first receive
//     copies of node 1's ca.crt/key, front-proxy-ca.crt/key,
//     etcd/ca.crt/key and sa.key/pub, then run the same kubeadm phases
//     (concurrently) with their own name and address, so every leaf
//     certificate carries that node's own name and address, as `kubeadm
//     join --control-plane` makes them;
//   - the addresses and ports kubeadm wrote are rewritten to the node's own
//     (see rewriteToLoopback): the apiserver binds and advertises 127.0.0.i
//     on its own port, every kubeconfig of node i points at it; etcd
//     listens for clients on 127.0.0.1 and 127.0.0.i (kubeadm's pair:
//     127.0.0.1 and the advertise address) and advertises 127.0.0.i, its
//     peer URL is 127.0.0.i, its metrics 127.0.0.1, each on the node's own
//     ports; the apiserver's --etcd-servers is kubeadm's
//     https://127.0.0.1:<the node's client port>, i.e. its local member;
//     the controller manager and scheduler bind 127.0.0.1 (as kubeadm
//     writes) on their own ports;
//   - the etcd manifests become one cluster: on every node
//     --initial-cluster=cp-1=https://127.0.0.1:P1,cp-2=https://127.0.0.2:P2,...
//     and --initial-cluster-state=new, each member with its data dir
//     /var/lib/etcd under its own root.
//
// o applies to every node except NodeName (the nodes are cp-1..cp-count).
// Every node's Peers is the returned slice. No non-loopback address is
// left in any tree (NonLoopback), except inside certificates.
func ControlPlanes(t testing.TB, count int, o Options) []*Node {
	t.Helper()
	if count < 1 || count > MaxControlPlanes {
		t.Fatalf("ControlPlanes(%d): want 1 to %d nodes (node i lives at 127.0.0.i)", count, MaxControlPlanes)
	}
	if o.NodeName != "" {
		t.Fatalf("ControlPlanes names its nodes cp-1..cp-%d: leave Options.NodeName empty", count)
	}
	start := time.Now()
	nodes := make([]*Node, count)
	opts := make([]Options, count)
	for i := range nodes {
		opts[i] = o
		opts[i].NodeName = fmt.Sprintf("cp-%d", i+1)
		nodes[i] = prepareNode(t, t.TempDir(), &opts[i], NodeAddress(i+1))
	}
	// Node 1 makes the shared CAs, the others then run concurrently.
	if err := nodes[0].runPhases(t, opts[0]); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes[1:] {
		if err := copySharedCA(nodes[0], n.Root); err != nil {
			t.Fatalf("copying node 1's CAs to %s: %v", n.Name, err)
		}
	}
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i := 1; i < count; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = nodes[i].runPhases(t, opts[i])
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var members []string
	for _, n := range nodes {
		members = append(members, fmt.Sprintf("%s=https://%s:%d", n.Name, n.addr(), n.EtcdPeerPort))
	}
	initialCluster := strings.Join(members, ",")
	for i, n := range nodes {
		n.finishLayout(t, opts[i], start)
		n.Peers = nodes
		if count > 1 {
			if err := n.setEtcdCluster(initialCluster); err != nil {
				t.Fatalf("node %s: %v", n.Name, err)
			}
		}
	}
	// the shared CAs are the same on every node, each leaf names its node
	for _, n := range nodes[1:] {
		for _, f := range []string{"ca.crt", "etcd/ca.crt", "front-proxy-ca.crt", "sa.pub"} {
			a, _ := os.ReadFile(nodes[0].Path("/etc/kubernetes/pki/" + f))
			b, _ := os.ReadFile(n.Path("/etc/kubernetes/pki/" + f))
			if len(a) == 0 || string(a) != string(b) {
				t.Fatalf("node %s: %s differs from node 1's", n.Name, f)
			}
		}
	}
	for _, n := range nodes {
		if err := n.checkOwnNames(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("cluster: %d control-plane nodes laid out in %s (etcd --initial-cluster=%s)", count, time.Since(start).Round(time.Millisecond), initialCluster)
	return nodes
}

// setEtcdCluster makes the node's etcd a member of the cluster
// initialCluster (--initial-cluster, --initial-cluster-state=new) and
// checks the manifest again.
func (n *Node) setEtcdCluster(initialCluster string) error {
	f := n.Path("/etc/kubernetes/manifests/etcd.yaml")
	if err := editFile(f, func(s string) string {
		lines := strings.Split(s, "\n")
		lines = setFlag(lines, "etcd", "initial-cluster", initialCluster)
		lines = setFlag(lines, "etcd", "initial-cluster-state", "new")
		return strings.Join(lines, "\n")
	}); err != nil {
		return err
	}
	n.EtcdInitialCluster = initialCluster
	if err := n.checkManifest("etcd"); err != nil {
		return err
	}
	pod, err := n.Pod("etcd")
	if err != nil {
		return err
	}
	if !contains(pod.Spec.Containers[0].Command, "--initial-cluster-state=new") {
		return fmt.Errorf("etcd manifest: no --initial-cluster-state=new after rewriting")
	}
	return nil
}

// checkOwnNames verifies that the node's serving and peer certificates
// carry its own name and address and no other control-plane node's
// address.
func (n *Node) checkOwnNames() error {
	for _, f := range []string{"apiserver.crt", "etcd/server.crt", "etcd/peer.crt"} {
		c, err := fixture.ReadCert(n.Path("/etc/kubernetes/pki/" + f))
		if err != nil {
			return err
		}
		ips := map[string]bool{}
		for _, ip := range c.IPAddresses {
			ips[ip.String()] = true
		}
		if !contains(c.DNSNames, n.Name) || !ips[n.addr()] {
			return fmt.Errorf("node %s: %s SANs %v %v lack its name or address %s", n.Name, f, c.DNSNames, c.IPAddresses, n.addr())
		}
		for _, p := range n.Peers {
			// kubeadm puts 127.0.0.1 in every etcd certificate
			if p != n && ips[p.addr()] && !(p.addr() == "127.0.0.1" && strings.HasPrefix(f, "etcd/")) {
				return fmt.Errorf("node %s: %s carries node %s's address %s", n.Name, f, p.Name, p.addr())
			}
		}
	}
	return nil
}

// ExpireAll re-signs every leaf certificate of every node (Node.Expire:
// pki leaves, kubeconfig client certificates, the kubelet's current pem;
// on a Worker its kubelet client certificate) so that it expired ago, with
// each node's own subjects and SANs; the CAs are kept.
func ExpireAll(t testing.TB, nodes []*Node, ago time.Duration) {
	t.Helper()
	for _, n := range nodes {
		n.Expire(t, ago)
	}
}

// etcdGet GETs path on the node's etcd client URL with a client
// certificate, verifying etcd's serving certificate against etcd/ca.crt.
func etcdGet(n *Node, pair tls.Certificate, path string) (string, error) {
	pool := x509.NewCertPool()
	b, err := os.ReadFile(n.Path("/etc/kubernetes/pki/etcd/ca.crt"))
	if err != nil {
		return "", err
	}
	pool.AppendCertsFromPEM(b)
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool}
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: cfg}}
	defer hc.CloseIdleConnections()
	url := "https://" + net.JoinHostPort(n.addr(), strconv.Itoa(n.EtcdClientPort)) + path
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ = io.ReadAll(io.LimitReader(resp.Body, 4096))
	body := strings.TrimSpace(string(b))
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return body, nil
}

func healthTrue(body string) error {
	var h struct{ Health, Reason string }
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		return fmt.Errorf("etcd /health: %q: %v", body, err)
	}
	if h.Health != "true" {
		return fmt.Errorf("etcd /health: %s", body)
	}
	return nil
}

// EtcdHealthy asks the node's etcd member GET /health on its client URL
// (https://<node address>:<client port>) with the node's own
// healthcheck-client certificate, verifying etcd's serving certificate
// against etcd/ca.crt — what kubeadm's tooling and kubecpr's bounce stage
// do. nil when it answers {"health":"true"}; else the TLS error (an
// expired certificate on either side) or etcd's answer, e.g.
// {"health":"false","reason":"RAFT NO LEADER"} without quorum.
func EtcdHealthy(t testing.TB, n *Node) error {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(n.Path("/etc/kubernetes/pki/etcd/healthcheck-client.crt"), n.Path("/etc/kubernetes/pki/etcd/healthcheck-client.key"))
	if err != nil {
		return err
	}
	body, err := etcdGet(n, pair, "/health")
	if err != nil {
		return err
	}
	return healthTrue(body)
}

// EtcdRaftHealth is etcd's own verdict on the member, whatever the
// certificates: GET /health on the member's metrics URL (plain HTTP on
// 127.0.0.1:<metrics port>, served from the start, no certificate
// involved). It returns etcd's answer, e.g. {"health":"false","reason":"RAFT
// NO LEADER"}; the error is nil only for {"health":"true"}.
//
// A restarted member without quorum serves nothing on its client URL (it
// serves clients only once it has published itself through raft), so
// EtcdHealthy then times out; this still answers.
func EtcdRaftHealth(t testing.TB, n *Node) (string, error) {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/health", n.EtcdMetricsPort))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	body := strings.TrimSpace(string(b))
	return body, healthTrue(body)
}

// EtcdClusterHealth runs the real `etcdctl endpoint health --cluster` from
// the node (its healthcheck-client certificate): every member's client URL
// from the member list, each asked for its health. The error is etcdctl's
// (it exits non-zero when a member is unhealthy or the list fails).
func EtcdClusterHealth(t testing.TB, n *Node) (string, error) {
	t.Helper()
	return n.Etcdctl(t, "endpoint", "health", "--cluster")
}

// Member is one etcd member as `etcdctl member list -w json` shows it.
type Member struct {
	ID         uint64   `json:"ID"`
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
	IsLearner  bool     `json:"isLearner"`
}

// MemberList is the etcd member list as the node's member answers it,
// through the real etcdctl with the node's healthcheck-client certificate
// (`etcdctl member list -w json`; linearizable, so it needs quorum).
func MemberList(t testing.TB, n *Node) ([]Member, error) {
	t.Helper()
	out, err := n.Etcdctl(t, "member", "list", "-w", "json")
	if err != nil {
		return nil, fmt.Errorf("etcdctl member list on %s: %v\n%s", n.Name, err, out)
	}
	var resp struct {
		Members []Member `json:"members"`
	}
	i := strings.IndexByte(out, '{')
	if i < 0 {
		return nil, fmt.Errorf("etcdctl member list on %s: no JSON: %s", n.Name, out)
	}
	if err := json.Unmarshal([]byte(out[i:]), &resp); err != nil {
		return nil, fmt.Errorf("etcdctl member list on %s: %v: %s", n.Name, err, out)
	}
	return resp.Members, nil
}
