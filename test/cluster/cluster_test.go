package cluster

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubecpr/kubecpr/test/fixture"
)

const (
	admin      = "/etc/kubernetes/admin.conf"
	expiredMsg = "x509: certificate has expired or is not yet valid"
)

// What `kubeadm certs check-expiration` lists on a kubeadm v1.33 control
// plane node (no kubelet client certificate: the kubelet rotates its own).
var (
	kubeadmLeaves = []string{"admin.conf", "apiserver", "apiserver-etcd-client", "apiserver-kubelet-client",
		"controller-manager.conf", "etcd-healthcheck-client", "etcd-peer", "etcd-server", "front-proxy-client",
		"scheduler.conf", "super-admin.conf"}
	kubeadmCAs = []string{"ca", "etcd-ca", "front-proxy-ca"}
)

type expRow struct{ name, expires, residual, ca, external string }

var expLine = regexp.MustCompile(`^(\S+)\s+([A-Z][a-z]{2} \d{2}, \d{4} \d{2}:\d{2} UTC)\s+(\S+)\s+(?:(\S+)\s+)?(yes|no)\s*$`)

// checkExpiration runs the real `kubeadm certs check-expiration` on the
// node and parses its two tables (what an administrator reads).
func checkExpiration(t *testing.T, n *Node) (leaves, cas map[string]expRow) {
	t.Helper()
	out, err := n.Kubeadm(t, "certs", "check-expiration")
	if err != nil {
		t.Fatalf("kubeadm certs check-expiration: %v\n%s", err, out)
	}
	leaves, cas = map[string]expRow{}, map[string]expRow{}
	table := leaves
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "CERTIFICATE AUTHORITY") {
			table = cas
			continue
		}
		if m := expLine.FindStringSubmatch(l); m != nil {
			table[m[1]] = expRow{m[1], m[2], m[3], m[4], m[5]}
		}
	}
	if got := keys(leaves); strings.Join(got, ",") != strings.Join(kubeadmLeaves, ",") {
		t.Fatalf("kubeadm check-expiration lists %v, want %v\n%s", got, kubeadmLeaves, out)
	}
	if got := keys(cas); strings.Join(got, ",") != strings.Join(kubeadmCAs, ",") {
		t.Fatalf("kubeadm check-expiration lists CAs %v, want %v\n%s", got, kubeadmCAs, out)
	}
	t.Logf("kubeadm certs check-expiration:\n%s", out)
	return leaves, cas
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// textFilesContaining lists the files of the tree (outside the harness's
// log and etcd data directories) whose bytes contain s.
func textFilesContaining(t *testing.T, root, s string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if info.IsDir() && (rel == "var/log" || rel == "var/lib/etcd") {
			return filepath.SkipDir
		}
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if bytes.Contains(b, []byte(s)) {
				out = append(out, "/"+rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func certPool(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("%s: no certificate", file)
	}
	return pool
}

// groupGone reports whether no process of p's process group is left.
func groupGone(p *Proc) bool {
	return errors.Is(syscall.Kill(-p.Cmd.Process.Pid, 0), syscall.ESRCH)
}

// A node laid out by real kubeadm, rewritten to loopback, serves: real etcd
// and kube-apiserver run from its manifests, client-go lists namespaces
// with admin.conf (Forbidden until the kubeadm:cluster-admins binding
// exists, as on a real node before `kubeadm init` creates it), the
// apiserver serves kubeadm's certificate, which chains to ca.crt for
// 127.0.0.1 and localhost, and real kubeadm reads the node and reports
// ~1y left on every certificate.
func TestKubeadmNodeServes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()

	start := time.Now()
	n := Kubeadm(t, Options{})
	layout := time.Since(start)

	// Loopback only: nothing but certificates holds the advertise address.
	if leaks := n.NonLoopbackAddresses(t); len(leaks) > 0 {
		t.Errorf("non-loopback addresses in the node:\n%s", strings.Join(leaks, "\n"))
	}
	if files := textFilesContaining(t, n.Root, NeverContacted); len(files) > 0 {
		t.Errorf("%s left in %v", NeverContacted, files)
	}
	apiCrt, err := fixture.ReadCert(n.Path("/etc/kubernetes/pki/apiserver.crt"))
	if err != nil {
		t.Fatal(err)
	}
	var sans []string
	for _, ip := range apiCrt.IPAddresses {
		sans = append(sans, ip.String())
	}
	if !contains(sans, NeverContacted) || !contains(sans, "127.0.0.1") || !contains(apiCrt.DNSNames, "localhost") {
		t.Errorf("apiserver.crt SANs %v %v: want kubeadm's %s plus 127.0.0.1 and localhost", sans, apiCrt.DNSNames, NeverContacted)
	}
	if _, err := os.Stat(n.Path(ConfigInRoot)); !os.IsNotExist(err) {
		t.Errorf("the kubeadm config was left in the tree (%v)", err)
	}

	// kubeadm runs without a network: asked to work out its configuration
	// from the host instead of the config file, it finds no interface.
	if out, err := n.Kubeadm(t, "config", "images", "list", "--config="); err == nil || !strings.Contains(out, "no acceptable interface") {
		t.Errorf("kubeadm without a config in its namespace: err %v, want no interface found\n%s", err, out)
	}

	// Real kubeadm reads this node: every certificate, ~1y left.
	leaves, cas := checkExpiration(t, n)
	for _, r := range leaves {
		if r.residual != "364d" && r.residual != "365d" || r.external != "no" {
			t.Errorf("%s: residual %s, externally managed %s; want ~1y, no", r.name, r.residual, r.external)
		}
	}
	for _, r := range cas {
		if r.residual != "9y" && r.residual != "10y" {
			t.Errorf("CA %s: residual %s, want ~10y", r.name, r.residual)
		}
	}

	// Real etcd and kube-apiserver from the manifests.
	etcd := n.StartEtcd(t)
	etcdReady := time.Since(etcd.Started)
	if out, err := n.Etcdctl(t, "endpoint", "health"); err != nil || !strings.Contains(out, "is healthy") {
		t.Fatalf("etcdctl endpoint health: %v\n%s", err, out)
	}
	api := n.StartAPIServer(t)
	if err := n.WaitAPIServer(ctx, admin); err != nil {
		t.Fatalf("%v\n%s", err, api.LogTail(30))
	}
	apiReady := time.Since(api.Started)
	t.Logf("timings: kubeadm layout %s, etcd ready %s, kube-apiserver ready %s",
		layout.Round(time.Millisecond), etcdReady.Round(time.Millisecond), apiReady.Round(time.Millisecond))

	// admin.conf is O=kubeadm:cluster-admins: RBAC forbids it until the
	// binding kubeadm init creates exists.
	if _, err := n.ListNamespaces(ctx, t, admin); !apierrors.IsForbidden(err) {
		t.Errorf("admin.conf before kubeadm:cluster-admins is bound: %v, want Forbidden", err)
	}
	if err := n.GrantClusterAdmins(ctx, t); err != nil {
		t.Fatal(err)
	}
	var nss []string
	for ctx.Err() == nil { // the RBAC authorizer sees the new binding within a moment
		if nss, err = n.ListNamespaces(ctx, t, admin); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("client-go with admin.conf: %v", err)
	}
	if !contains(nss, "default") || !contains(nss, "kube-system") {
		t.Errorf("namespaces %v lack default or kube-system", nss)
	}

	// The served certificate is kubeadm's and chains to ca.crt.
	for _, name := range []string{"127.0.0.1", "localhost"} {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp",
			fmt.Sprintf("127.0.0.1:%d", n.APIServerPort),
			&tls.Config{RootCAs: certPool(t, n.Path("/etc/kubernetes/pki/ca.crt")), ServerName: name})
		if err != nil {
			t.Fatalf("TLS to the apiserver verified against ca.crt as %s: %v", name, err)
		}
		served := conn.ConnectionState().PeerCertificates[0]
		conn.Close()
		if served.SerialNumber.Cmp(apiCrt.SerialNumber) != 0 {
			t.Errorf("apiserver serves serial %s, apiserver.crt has %s", served.SerialNumber, apiCrt.SerialNumber)
		}
	}
	// etcd serves its own server.crt, chaining to the etcd CA.
	hc, err := tls.LoadX509KeyPair(n.Path("/etc/kubernetes/pki/etcd/healthcheck-client.crt"), n.Path("/etc/kubernetes/pki/etcd/healthcheck-client.key"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", n.EtcdClientPort),
		&tls.Config{RootCAs: certPool(t, n.Path("/etc/kubernetes/pki/etcd/ca.crt")), ServerName: "127.0.0.1", Certificates: []tls.Certificate{hc}})
	if err != nil {
		t.Fatalf("TLS to etcd verified against etcd/ca.crt: %v", err)
	}
	conn.Close()

	// Stop ends each process group.
	for _, p := range []*Proc{api, etcd} {
		if err := p.Stop(); err != nil {
			t.Errorf("stopping %s: %v", p.Name, err)
		}
		if !p.Exited() || !groupGone(p) {
			t.Errorf("%s: process group still there after Stop", p.Name)
		}
		if err := p.Stop(); err != nil {
			t.Errorf("second Stop of %s: %v", p.Name, err)
		}
	}
}

// All leaves of a real kubeadm node expired two days ago, CAs fine. What
// really happens, as on a production node (where the kubelet then restarts
// the apiserver in a loop):
//   - kubeadm check-expiration shows every leaf <invalid>;
//   - etcd starts and is ready (its readiness probe is plain HTTP on the
//     metrics port), but refuses every client: etcdctl with the expired
//     healthcheck-client certificate fails, and etcd logs the apiserver's
//     expired client certificate ("x509: certificate has expired or is not
//     yet valid");
//   - kube-apiserver opens its port at once but never completes a TLS
//     handshake (it is still building its storage, which needs etcd), so
//     client-go with admin.conf times out — it never gets as far as seeing
//     the apiserver's own expired certificate; the apiserver logs the etcd
//     handshake failing on etcd's expired serving certificate, and after
//     ~20 s exits ("error creating storage factory"), after which clients
//     get "connection refused".
func TestExpiredNodeFailsLikeProduction(t *testing.T) {
	n := Kubeadm(t, Options{})
	n.Expire(t, 48*time.Hour)

	leaves, cas := checkExpiration(t, n)
	wantExpiry := time.Now().Add(-48 * time.Hour).UTC()
	for _, r := range leaves {
		if r.residual != "<invalid>" {
			t.Errorf("%s: residual %s, want <invalid>", r.name, r.residual)
		}
		exp, err := time.Parse("Jan 02, 2006 15:04 MST", r.expires)
		if err != nil || exp.Sub(wantExpiry).Abs() > 2*time.Minute {
			t.Errorf("%s expires %s, want ~%s", r.name, r.expires, wantExpiry.Format(time.RFC3339))
		}
	}
	for _, r := range cas {
		if r.residual == "<invalid>" {
			t.Errorf("CA %s expired too: Expire must leave the CAs alone", r.name)
		}
	}

	etcd := n.StartEtcd(t)
	if out, err := n.Etcdctl(t, "endpoint", "health"); err == nil || strings.Contains(out, "is healthy") {
		t.Errorf("etcdctl with the expired healthcheck-client certificate: err %v\n%s", err, out)
	}

	api := n.StartAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
	err := n.WaitAPIServer(ctx, admin)
	cancel()
	if err == nil {
		t.Fatal("kube-apiserver got ready on expired certificates")
	}
	t.Logf("WaitAPIServer: %v", err)
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	_, err = n.ListNamespaces(ctx, t, admin)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "deadline exceeded") && !strings.Contains(err.Error(), "Timeout") {
		t.Errorf("client-go with admin.conf while the apiserver waits for etcd: %v, want a timeout", err)
	}
	t.Logf("client-go while the apiserver hangs: %v", err)

	select {
	case <-api.Done():
		t.Logf("kube-apiserver exited %s after start: %v", time.Since(api.Started).Round(time.Second), api.Err())
	case <-time.After(40 * time.Second):
		t.Fatalf("kube-apiserver still running 40 s after start on an expired node\n%s", api.LogTail(10))
	}
	if api.Err() == nil {
		t.Errorf("kube-apiserver exited 0")
	}
	apiLog := api.Log()
	for _, want := range []string{"authentication handshake failed", expiredMsg, "error creating storage factory"} {
		if !strings.Contains(apiLog, want) {
			t.Errorf("kube-apiserver log lacks %q:\n%s", want, api.LogTail(10))
		}
	}
	if !strings.Contains(etcd.Log(), expiredMsg) {
		t.Errorf("etcd log lacks %q:\n%s", expiredMsg, etcd.LogTail(10))
	}
	_, err = n.ListNamespaces(context.Background(), t, admin)
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("client-go after the apiserver exited: %v, want connection refused", err)
	}
	if err := api.Stop(); err == nil {
		t.Errorf("Stop of the crashed apiserver reports no error")
	}
	if etcd.Exited() {
		t.Errorf("etcd exited: %v\n%s", etcd.Err(), etcd.LogTail(10))
	}
}

// An external-CA node as kubeadm knows it: ca.key is not in the tree
// (kept aside), kubeadm reports the ca-signed certificates as externally
// managed, and Expire still re-signs them with the kept key — after which
// real kubeadm refuses the node: `certs check-expiration` exits 1 with
// "Error checking external CA condition ... x509: certificate has expired
// or is not yet valid".
func TestExternalCANode(t *testing.T) {
	n := Kubeadm(t, Options{ExternalCA: true, NodeName: "cp-ext", KubeletConfig: true})
	// kubelet-start wrote the kubelet's files (and started nothing)
	for _, f := range []string{"/var/lib/kubelet/config.yaml", "/var/lib/kubelet/kubeadm-flags.env"} {
		if _, err := os.Stat(n.Path(f)); err != nil {
			t.Errorf("KubeletConfig: %v", err)
		}
	}
	if _, err := os.Stat(n.Path("/etc/kubernetes/pki/ca.key")); !os.IsNotExist(err) {
		t.Fatalf("ca.key in the tree of an external-CA node (%v)", err)
	}
	ca := n.ClusterCA(t)
	if !ca.Cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(ca.Key.Public()) {
		t.Fatal("the kept key is not ca.crt's")
	}
	leaves, cas := checkExpiration(t, n)
	for _, r := range leaves {
		if want := map[bool]string{true: "yes", false: "no"}[r.ca == "ca"]; r.external != want {
			t.Errorf("%s (CA %s): externally managed %s, want %s", r.name, r.ca, r.external, want)
		}
	}
	if cas["ca"].external != "yes" {
		t.Errorf("ca: externally managed %s, want yes", cas["ca"].external)
	}
	// Expired, the node no longer passes kubeadm's external-CA validation
	// (it verifies apiserver.crt against ca.crt, validity included), so
	// check-expiration itself fails: what an operator of such a node sees.
	n.Expire(t, time.Hour)
	out, err := n.Kubeadm(t, "certs", "check-expiration")
	if err == nil || !strings.Contains(out, "external CA") || !strings.Contains(out, expiredMsg) {
		t.Errorf("kubeadm check-expiration on the expired external-CA node: %v, want the external CA check failing on %q\n%s", err, expiredMsg, out)
	}
	crt, _ := fixture.ReadCert(n.Path("/etc/kubernetes/pki/apiserver.crt"))
	if err := crt.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("re-signed apiserver.crt does not chain to ca.crt: %v", err)
	}
	if crt.Subject.CommonName != "kube-apiserver" {
		t.Errorf("re-signed apiserver.crt CN %q", crt.Subject.CommonName)
	}
}

// kube-controller-manager and kube-scheduler run from their manifests
// against the node's apiserver (controller-manager.conf and scheduler.conf
// rewritten to loopback): each gets healthy on its own port and takes its
// leader lease, and the controllers act (the service-account controller
// creates default/default).
func TestControllerManagerAndSchedulerRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const flexDir = "/usr/libexec/kubernetes"
	if _, err := os.Stat(flexDir); os.IsNotExist(err) {
		// the controller manager makes its flex volume dir: under Root only
		defer func() {
			if _, err := os.Stat(flexDir); err == nil {
				t.Errorf("%s was created on the host", flexDir)
			}
		}()
	}
	n := Kubeadm(t, Options{NodeName: "cp-kcm"})
	n.StartEtcd(t)
	api := n.StartAPIServer(t)
	if err := n.WaitAPIServer(ctx, admin); err != nil {
		t.Fatalf("%v\n%s", err, api.LogTail(30))
	}
	kcm := n.StartControllerManager(t)
	sched := n.StartScheduler(t)
	cs := n.Client(t, "/etc/kubernetes/super-admin.conf")
	holders := map[string]string{}
	for ctx.Err() == nil {
		for _, name := range []string{"kube-controller-manager", "kube-scheduler"} {
			lease, err := cs.CoordinationV1().Leases("kube-system").Get(ctx, name, metav1.GetOptions{})
			if err == nil && lease.Spec.HolderIdentity != nil {
				holders[name] = *lease.Spec.HolderIdentity
			}
		}
		if len(holders) == 2 {
			if _, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err == nil {
				break
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if ctx.Err() != nil {
		t.Fatalf("lease holders %v, or no default service account\nkube-controller-manager:\n%s\nkube-scheduler:\n%s", holders, kcm.LogTail(20), sched.LogTail(20))
	}
	t.Logf("leaders %v; default/default exists %s after the controller manager started", holders, time.Since(kcm.Started).Round(time.Millisecond))
}

// The scanner behind the loopback promise catches what it must and only
// that.
func TestNonLoopbackScanner(t *testing.T) {
	root := t.TempDir()
	write := func(rel, s string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/kubernetes/admin.conf", "    server: https://10.1.2.3:6443\n")
	write("etc/kubernetes/manifests/kube-apiserver.yaml", "    - --advertise-address=192.168.0.4\n    - --service-cluster-ip-range=10.96.0.0/12\n    - --etcd-servers=https://127.0.0.1:2379\n        host: 10.255.0.1\n")
	write("var/lib/kubelet/config.yaml", "clusterDNS:\n- 10.96.0.10\naddress: 0.0.0.0\nversion: 1.2.3.4.5\n")
	write("etc/kubernetes/pki/apiserver.crt", "-----BEGIN CERTIFICATE-----\n10.255.0.1\n-----END CERTIFICATE-----\n")
	write("var/log/kube-apiserver.log", "dial tcp 10.0.0.1:443\n")
	got, err := NonLoopback(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/etc/kubernetes/admin.conf:1: server: https://10.1.2.3:6443",
		"/etc/kubernetes/manifests/kube-apiserver.yaml:1: - --advertise-address=192.168.0.4",
		"/etc/kubernetes/manifests/kube-apiserver.yaml:4: host: 10.255.0.1",
		"/var/lib/kubelet/config.yaml:3: address: 0.0.0.0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("NonLoopback:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Ports are distinct, below the ephemeral range (no outgoing connection
// can take them), and reserved machine-wide while the test runs.
func TestFreePortsReserved(t *testing.T) {
	ports := freePorts(t, 50)
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] || p < portLo || p >= ephemeralLow() {
			t.Errorf("port %d: duplicate or outside %d-%d", p, portLo, ephemeralLow()-1)
		}
		seen[p] = true
		if l, err := net.Listen("unix", fmt.Sprintf("@kubecpr-test-port-%d", p)); err == nil {
			l.Close()
			t.Errorf("port %d is not reserved", p)
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Errorf("reserved port %d cannot be bound: %v", p, err)
			continue
		}
		l.Close()
	}
}
