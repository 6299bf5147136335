package e2e

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/fixture"
	"github.com/kubecpr/kubecpr/test/treesnap"
)

func expireAll(t *testing.T, n *cluster.Node, ca *fixture.CA) {
	t.Helper()
	w := fixture.Window{NotBefore: time.Now().AddDate(-1, 0, -2), NotAfter: time.Now().AddDate(0, 0, -2)}
	if err := fixture.ResignWithCA(n.Root, w, nil, ca); err != nil {
		t.Fatal(err)
	}
}

// whoami asks the real apiserver who a clientset authenticates as.
func whoami(ctx context.Context, t *testing.T, n *cluster.Node, kubelet bool, kubeconfig string) (string, error) {
	t.Helper()
	cs := n.Client(t, "/etc/kubernetes/admin.conf")
	if kubelet {
		cs = n.KubeletClient(t)
	} else if kubeconfig != "" {
		cs = n.Client(t, kubeconfig)
	}
	r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return r.Status.UserInfo.Username, nil
}

// Seed 001 (the kubelet's client certificate expired too) is
// TestRealKubeletRecovery: the real kubelet authenticates with the
// re-issued credential and renews its lease; the kubelet's way of storing
// it (a new dated file, the link repointed, the old file kept) is
// cmd/kubecpr's TestRunUntilKubeconfigsThenRollback.

// Seed 002, external CA: ca.crt without ca.key. kubecpr writes CSRs and
// stops (exit 8) before any change; the CA, kept aside, signs them; the
// second run installs them; the real apiserver accepts the result.
func TestScenarioExternalCA(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n := cluster.Kubeadm(t, cluster.Options{})
	caCert, err := fixture.ReadCert(n.Path("/etc/kubernetes/pki/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := os.ReadFile(n.Path("/etc/kubernetes/pki/ca.key"))
	blk, _ := pem.Decode(keyPEM)
	caKey, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ca := &fixture.CA{Cert: caCert, Key: caKey}
	os.Remove(n.Path("/etc/kubernetes/pki/ca.key")) // the external CA keeps it
	expireAll(t, n, ca)
	before := snapshot(t, n.Root)

	csrDir := filepath.Join(t.TempDir(), "csr")
	r := kubecpr(t, n, "run", "--csr-dir", csrDir)
	if r.code != 8 || !strings.Contains(r.stderr, "external CA") || !strings.Contains(r.stderr, csrDir) {
		t.Fatalf("first run: exit %d, want 8\n%s%s", r.code, r.stdout, r.stderr)
	}
	if d := diffMaps(before, snapshot(t, n.Root)); d != "" {
		t.Fatalf("external-CA run changed the node before the CSRs were signed:\n%s", d)
	}
	csrs, _ := filepath.Glob(filepath.Join(csrDir, "*.csr"))
	if len(csrs) < 6 {
		t.Fatalf("only %d CSRs written: %v", len(csrs), csrs)
	}
	for _, f := range csrs {
		if st, _ := os.Stat(strings.TrimSuffix(f, ".csr") + ".key"); st == nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: key missing or not 0600", f)
		}
		signCSR(t, ca, f)
	}
	if r := kubecpr(t, n, "run", "--csr-dir", csrDir); r.code != 0 {
		t.Fatalf("second run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := kubecpr(t, n, "check"); r.code != 0 {
		t.Fatalf("check: exit %d\n%s", r.code, r.stdout)
	}
	etcd := n.StartEtcd(t)
	api := n.StartAPIServer(t)
	defer etcd.Stop()
	defer api.Stop()
	if err := n.WaitReady(ctx, t, "/etc/kubernetes/admin.conf", api); err != nil {
		t.Fatalf("%v\n%s", err, api.LogTail(20))
	}
	if user, err := whoami(ctx, t, n, false, "/etc/kubernetes/super-admin.conf"); err != nil || user != "kubernetes-super-admin" {
		t.Fatalf("super-admin.conf: %q %v", user, err)
	}
}

// signCSR plays the external CA: signs <name>.csr into <name>.crt for a
// year, server auth for the apiserver, client auth for the rest.
func signCSR(t *testing.T, ca *fixture.CA, csrFile string) {
	t.Helper()
	b, _ := os.ReadFile(csrFile)
	blk, _ := pem.Decode(b)
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		t.Fatalf("%s: %v", csrFile, err)
	}
	usage := x509.ExtKeyUsageClientAuth
	if filepath.Base(csrFile) == "apiserver.csr" {
		usage = x509.ExtKeyUsageServerAuth
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: csr.Subject, DNSNames: csr.DNSNames, IPAddresses: csr.IPAddresses,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().AddDate(1, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(strings.TrimSuffix(csrFile, ".csr")+".crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// Two control-plane nodes made by real kubeadm share CAs, each with its own
// apiserver/etcd SANs. A certificate copied from the other node is caught.
func TestScenarioTwoControlPlaneNodes(t *testing.T) {
	t.Parallel()
	n1 := cluster.Kubeadm(t, cluster.Options{NodeName: "cp-1"})
	n2 := cluster.KubeadmJoin(t, n1, cluster.Options{NodeName: "cp-2"})
	a, _ := os.ReadFile(n1.Path("/etc/kubernetes/pki/ca.crt"))
	b, _ := os.ReadFile(n2.Path("/etc/kubernetes/pki/ca.crt"))
	if string(a) != string(b) {
		t.Fatal("CAs differ")
	}
	if r := kubecpr(t, n2, "check"); r.code != 0 {
		t.Fatalf("cp-2: exit %d\n%s", r.code, r.stdout)
	}
	for _, f := range []string{"apiserver.crt", "apiserver.key", "etcd/server.crt", "etcd/server.key"} {
		data, _ := os.ReadFile(n1.Path("/etc/kubernetes/pki/" + f))
		os.WriteFile(n2.Path("/etc/kubernetes/pki/"+f), data, 0o600)
	}
	r := kubecpr(t, n2, "check")
	if r.code != 2 {
		t.Fatalf("copied certs: exit %d, want 2\n%s", r.code, r.stdout)
	}
	for _, want := range []string{"/etc/kubernetes/pki/apiserver.crt: SANs do not include this node's name \"cp-2\"", "/etc/kubernetes/pki/etcd/server.crt: SANs do not include this node's name \"cp-2\""} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("check output lacks %q:\n%s", want, r.stdout)
		}
	}
	// and run refuses to renew another node's certificate
	if r := kubecpr(t, n2, "run"); r.code != 7 {
		t.Errorf("run with another node's certs: exit %d, want 7\n%s", r.code, r.stderr)
	}
}

// Staging rehearsal a month before expiry: --now moves the clock; the node
// itself is untouched; the drill reports every stage.
func TestScenarioRehearsalWithClockAhead(t *testing.T) {
	t.Parallel()
	n := cluster.Kubeadm(t, cluster.Options{})
	before := snapshot(t, n.Root)
	if r := kubecpr(t, n, "check"); r.code != 0 {
		t.Fatalf("today: exit %d", r.code)
	}
	later := time.Now().AddDate(1, 0, 2).UTC().Format(time.RFC3339)
	if r := kubecpr(t, n, "--now", later, "check"); r.code != 2 {
		t.Fatalf("in a year and two days: exit %d, want 2", r.code)
	}
	r := kubecpr(t, n, "--now", later, "rehearse")
	if r.code != 0 {
		t.Fatalf("rehearse: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"renew apiserver", "certs done in", "kubeconfigs done in", "verify done in", "finished on this copy", "left to do on the live node"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("rehearsal lacks %q:\n%s", want, r.stdout)
		}
	}
	if d := diffMaps(before, snapshot(t, n.Root)); d != "" {
		t.Fatalf("rehearsal touched the node:\n%s", d)
	}
}

func diffMaps(a, b map[string]string) string { return treesnap.Diff(a, b) }
