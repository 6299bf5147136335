package kubeadmbed

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
)

func size(t *testing.T, env string, def int) int {
	if v := os.Getenv(env); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	return def
}

func load() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// TestKubeadmBed builds 3 control planes and 2 workers with unmodified
// kubeadm init and join (addons kube-proxy and CoreDNS skipped:
// --skip-phases=addon/kube-proxy,addon/coredns) and proves what runs:
//   - etcd's member list (etcdctl, etcd's own client, inside cp-1) has
//     cp-1, cp-2 and cp-3, none a learner;
//   - the five Nodes are registered, and each node's Lease is renewed
//     (its renewTime moves);
//   - every joined node's kubelet got its client certificate through a
//     CSR filed with the bootstrap token and approved by the
//     controller-manager, and kubelet-client-current.pem is a link to the
//     file holding exactly that certificate; cp-1's (whose first
//     certificate kubeadm init wrote) is a link to a dated file too;
//   - no node's resolv.conf names anything but 127.0.0.1.
//
// Then every certificate expires (Expire), and the cluster fails as users
// see it: the API server does not answer with admin.conf, the workers'
// kubelets cannot authenticate. Then the operator's recovery from cp-1:
// kubecpr cluster run over SSH to every node, proven from outside
// (assertRecovered); cluster rollback, byte for byte; cluster run again.
func TestKubeadmBed(t *testing.T) {
	// In make test (./test/...). KUBECPR_TESTBED=0 leaves it out of a
	// quick local run; `make testbed` runs it alone, verbose.
	if os.Getenv("KUBECPR_TESTBED") == "0" {
		t.Skip("KUBECPR_TESTBED=0: the kubeadm test bed is left out of this run")
	}
	b := New(t, Options{ControlPlanes: size(t, "KUBEADMBED_CP", 3), Workers: size(t, "KUBEADMBED_WORKERS", 2)})
	t.Logf("bed up in %s (load %s)", b.Up.Round(100*time.Millisecond), load())
	for _, p := range b.Phases {
		t.Logf("  %s: %s", p.Name, p.Took.Round(100*time.Millisecond))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	for _, n := range b.Nodes {
		out, err := n.Run(ctx, "cat", "/etc/resolv.conf")
		if err != nil || strings.TrimSpace(out) != "nameserver 127.0.0.1" {
			t.Errorf("%s: /etc/resolv.conf is %q (%v), want only 127.0.0.1", n.Name, out, err)
		}
	}

	members, err := b.EtcdMembers(ctx, b.Nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range members {
		names = append(names, m.Name)
		if m.IsLearner {
			t.Errorf("etcd member %s is still a learner", m.Name)
		}
	}
	if len(members) != len(b.ControlPlanes()) {
		t.Errorf("etcd members %v, want one per control plane", names)
	}
	t.Logf("etcd members: %v", names)

	c := b.Client(t)
	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != len(b.Nodes) {
		t.Errorf("%d Nodes registered, want %d", len(nodes.Items), len(b.Nodes))
	}
	// A joined node's Lease appears a few seconds after its Node: the
	// first renewTime seen is the zero time until then.
	first := map[string]time.Time{}
	for _, n := range b.Nodes {
		if l, err := c.CoordinationV1().Leases("kube-node-lease").Get(ctx, n.Name, metav1.GetOptions{}); err == nil && l.Spec.RenewTime != nil {
			first[n.Name] = l.Spec.RenewTime.Time
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for _, n := range b.Nodes {
		for {
			l, err := c.CoordinationV1().Leases("kube-node-lease").Get(ctx, n.Name, metav1.GetOptions{})
			if err == nil && l.Spec.RenewTime != nil && l.Spec.RenewTime.Time.After(first[n.Name]) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the Lease was not renewed after %s (%v)\n%s", n.Name, first[n.Name], err, n.Kubelet.LogTail(20))
			}
			time.Sleep(time.Second)
		}
	}

	csrs, err := c.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range b.Nodes {
		link, err := os.Readlink(n.Path(KubeletClientPEM))
		if err != nil || !strings.HasPrefix(filepath.Base(link), "kubelet-client-2") {
			t.Errorf("%s: %s is not a link to a dated file: %q %v", n.Name, KubeletClientPEM, link, err)
			continue
		}
		if i == 0 {
			continue
		}
		pemBytes, err := os.ReadFile(n.resolve(KubeletClientPEM))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(pemBytes)
		found := false
		for _, r := range csrs.Items {
			if !strings.HasPrefix(r.Spec.Username, "system:bootstrap:") || len(r.Status.Certificate) == 0 {
				continue
			}
			issued, _ := pem.Decode(r.Status.Certificate)
			if issued != nil && blk != nil && bytes.Equal(issued.Bytes, blk.Bytes) && approved(&r) {
				found = true
				t.Logf("%s: client certificate from CSR %s, filed by %s, approved", n.Name, r.Name, r.Spec.Username)
			}
		}
		if !found {
			t.Errorf("%s: no approved bootstrap CSR issued the certificate in %s", n.Name, link)
		}
	}
	t.Logf("cluster proven at load %s", load())

	t0 := time.Now()
	b.Expire(t, 48*time.Hour)
	if _, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil {
		// the old connection may still be up: a new client must fail
		t.Logf("the old client still answered right after the expiry")
	}
	deadline = time.Now().Add(2 * time.Minute)
	var apiErr error
	for {
		_, apiErr = b.Client(t).CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		// An API server still up serves its expired certificate; one
		// restarted on the expired files exits (etcd has no quorum) and
		// refuses connections: both are what users meet.
		if apiErr != nil && (strings.Contains(apiErr.Error(), "certificate has expired") || strings.Contains(apiErr.Error(), "connection refused")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API server still answers admin.conf after the expiry: %v", apiErr)
		}
		time.Sleep(2 * time.Second)
	}
	t.Logf("client-go with admin.conf: %v", apiErr)
	for _, w := range b.Workers() {
		for deadline = time.Now().Add(2 * time.Minute); ; time.Sleep(2 * time.Second) {
			l := w.Kubelet.LastStartLog()
			if strings.Contains(l, "Unauthorized") || strings.Contains(l, "unable to load bootstrap kubeconfig") || strings.Contains(l, "is expired") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the kubelet did not fail on its expired certificate:\n%s", w.Name, w.Kubelet.LogTail(20))
			}
		}
	}
	t.Logf("expired and failing as users see it in %s (load %s)", time.Since(t0).Round(100*time.Millisecond), load())

	// The recovery, as the operator does it: logged in on cp-1, one
	// command for the whole cluster, every node (cp-1 too) over SSH.
	inv := b.StartSSH(t)
	expired := map[string]map[string]string{}
	for _, n := range b.Nodes {
		expired[n.Name] = credentials(t, n)
	}
	recoverCluster := func(what string) {
		t.Helper()
		t0 := time.Now()
		out, err := driver(t, b, "cluster", "run", "--inventory", inv)
		if err != nil {
			t.Fatalf("%s: cluster run: %v\n%s", what, err, out)
		}
		t.Logf("%s: cluster run in %s (load %s)", what, time.Since(t0).Round(100*time.Millisecond), load())
		assertRecovered(ctx, t, b, t0)
		t.Logf("%s: proven recovered %s after the run began", what, time.Since(t0).Round(100*time.Millisecond))
	}
	// The production failure first: `kubecpr run` on cp-1 alone renews
	// it, but its etcd cannot get a quorum while its peers present expired
	// certificates. It stops at the bounce naming etcd (exit 6), and the
	// rollback puts cp-1 back byte for byte.
	cp1 := b.Nodes[0]
	out, err := driver(t, b, "run", "--kubelet-restart-command", cp1.KubeletRestartCommand(), "--component-timeout", "40s")
	if code := exitCode(err); code != 6 || !strings.Contains(out, "etcd did not come back") {
		t.Fatalf("kubecpr run on cp-1 alone: exit %d, want 6 naming etcd\n%s", code, tailString(out, 40))
	}
	t.Logf("cp-1 alone: %s", firstLine(out, "etcd did not come back"))
	if out, err := driver(t, b, "rollback"); err != nil {
		t.Fatalf("rollback on cp-1: %v\n%s", err, out)
	}
	if d := credentialDiff(expired[cp1.Name], credentials(t, cp1)); d != "" {
		t.Fatalf("cp-1 not byte-identical after its rollback:\n%s", d)
	}

	recoverCluster("first run")

	t0 = time.Now()
	out, err = driver(t, b, "cluster", "rollback")
	if err != nil {
		t.Fatalf("cluster rollback: %v\n%s", err, out)
	}
	t.Logf("cluster rollback in %s", time.Since(t0).Round(100*time.Millisecond))
	for _, n := range b.Nodes {
		if d := credentialDiff(expired[n.Name], credentials(t, n)); d != "" {
			t.Errorf("%s: not byte-identical after the rollback:\n%s", n.Name, d)
		}
	}
	recoverCluster("after the rollback")

	// Ten years on: the CAs themselves expire, with every leaf. Without
	// --renew-ca the run is refused before any change and says to add
	// it; with it, each CA is re-issued once with its own key on cp-1 and
	// every node gets that certificate.
	oldCA, err := fixtureCert(b.Nodes[0].Path("/etc/kubernetes/pki/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	b.ExpireCAs(t, 48*time.Hour)
	b.Expire(t, 48*time.Hour)
	out, err = driver(t, b, "cluster", "run", "--inventory", inv)
	if err == nil || !strings.Contains(out, "--renew-ca") {
		t.Fatalf("cluster run on expired CAs without --renew-ca: %v, want a refusal naming --renew-ca\n%s", err, out)
	}
	if out, err := driver(t, b, "cluster", "rollback"); err != nil {
		t.Fatalf("closing the refused cluster run: %v\n%s", err, out)
	}
	expiredCAs := map[string]map[string]string{}
	for _, n := range b.Nodes {
		expiredCAs[n.Name] = credentials(t, n)
	}
	t0 = time.Now()
	out, err = driver(t, b, "cluster", "run", "--renew-ca", "--inventory", inv)
	if err != nil {
		t.Fatalf("cluster run --renew-ca: %v\n%s", err, out)
	}
	t.Logf("expired CAs: cluster run --renew-ca in %s (load %s)", time.Since(t0).Round(100*time.Millisecond), load())
	assertRecovered(ctx, t, b, t0)
	newCA, err := fixtureCert(b.Nodes[0].Path("/etc/kubernetes/pki/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(newCA.RawSubjectPublicKeyInfo, oldCA.RawSubjectPublicKeyInfo) || !time.Now().Before(newCA.NotAfter) {
		t.Errorf("the re-issued CA: key kept %v, until %s", bytes.Equal(newCA.RawSubjectPublicKeyInfo, oldCA.RawSubjectPublicKeyInfo), newCA.NotAfter)
	}
	for _, n := range b.Nodes {
		got, err := os.ReadFile(n.Path("/etc/kubernetes/pki/ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: newCA.Raw})) {
			t.Errorf("%s: pki/ca.crt is not the cluster's re-issued CA certificate", n.Name)
		}
	}
	t.Logf("proven recovered with the re-issued CAs %s after the run began", time.Since(t0).Round(100*time.Millisecond))
	// kubeadm join's discovery document holds the re-issued CA too, with
	// the same key (the join command's --discovery-token-ca-cert-hash).
	ci, err := b.Client(t).CoreV1().ConfigMaps("kube-public").Get(ctx, "cluster-info", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load([]byte(ci.Data["kubeconfig"]))
	if err != nil {
		t.Fatal(err)
	}
	for name, cl := range cfg.Clusters {
		if !bytes.Equal(cl.CertificateAuthorityData, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: newCA.Raw})) {
			t.Errorf("kube-public/cluster-info cluster %q does not hold the re-issued CA certificate: a new kubeadm join would fail", name)
		}
	}

	// And back: the old cluster-info first (while the API answers), then
	// every node byte for byte, the expired CAs included.
	out, err = driver(t, b, "cluster", "rollback")
	if err != nil || !strings.Contains(out, "kube-public/cluster-info restored") {
		t.Fatalf("cluster rollback of the --renew-ca run: %v, want cluster-info restored\n%s", err, out)
	}
	for _, n := range b.Nodes {
		if d := credentialDiff(expiredCAs[n.Name], credentials(t, n)); d != "" {
			t.Errorf("%s: not byte-identical after rolling back --renew-ca:\n%s", n.Name, d)
		}
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func firstLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

func fixtureCert(p string) (*x509.Certificate, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM", p)
	}
	return x509.ParseCertificate(blk.Bytes)
}

func approved(r *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range r.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved {
			return true
		}
	}
	return false
}
