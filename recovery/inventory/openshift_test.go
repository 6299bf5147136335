package inventory_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/fixture"
	"github.com/kubecpr/kubecpr/test/ocpfixture"
	"github.com/kubecpr/kubecpr/test/treesnap"
)

// servingPEM writes what the kubelet writes after a kubelet-serving CSR:
// kubelet-server-<time>.pem (certificate and key) and the
// kubelet-server-current.pem link to it, signed by ca.
func servingPEM(t *testing.T, root string, ca *fixture.CA, nodeName string, w fixture.Window) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(77), Subject: pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
		NotBefore: w.NotBefore, NotAfter: w.NotAfter, DNSNames: []string{nodeName}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	data := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})...)
	dated := "/var/lib/kubelet/pki/kubelet-server-2025-11-19-03-00-00.pem"
	if err := os.WriteFile(filepath.Join(root, dated), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dated, filepath.Join(root, "var/lib/kubelet/pki/kubelet-server-current.pem")); err != nil {
		t.Fatal(err)
	}
}

// kubelet-server-current.pem (serverTLSBootstrap) is listed with its
// expiry, and when expired it says what brings a new one: the kubelet
// requests it when it restarts, and the csr stage approves the CSR.
func TestKubeletServerCurrentListed(t *testing.T) {
	expired := fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)}
	for _, tc := range []struct {
		name   string
		window fixture.Window
		want   pki.Status
		says   []string
	}{
		{"expired", expired, pki.StatusExpired, []string{"expired on 2026-11-19", "requests a new one itself when it restarts",
			"kubelet-serving CSR", "csr stage approves"}},
		{"ok", fixture.Window{NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0)}, pki.StatusOK, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, fn := gen(t, fixture.Options{NodeName: "cp-1"})
			servingPEM(t, root, fn.CA, "cp-1", tc.window)
			inv := build(t, root)
			it := inv.Find("kubelet-server-current.pem")
			if it == nil {
				t.Fatalf("kubelet-server-current.pem not listed: %v", statuses(inv))
			}
			if it.Kind != inventory.KindKubeletServer || it.Status != tc.want || it.Cert == nil || !it.Cert.NotAfter.Equal(tc.window.NotAfter.Truncate(time.Second)) {
				t.Fatalf("kind %s status %s cert %v, want %s %s until %s", it.Kind, it.Status, it.Cert != nil, inventory.KindKubeletServer, tc.want, tc.window.NotAfter)
			}
			msg := strings.Join(it.Problems, "\n")
			for _, s := range tc.says {
				if !strings.Contains(msg, s) {
					t.Errorf("problems lack %q:\n%s", s, msg)
				}
			}
			if tc.says == nil && msg != "" {
				t.Errorf("problems on a valid certificate: %s", msg)
			}
			// The report's row carries the expiry.
			var row *inventory.CertReport
			rep := inv.Report()
			for i := range rep.Certs {
				if rep.Certs[i].Name == "kubelet-server-current.pem" {
					row = &rep.Certs[i]
				}
			}
			if row == nil || row.Expires == nil || !row.Expires.Equal(tc.window.NotAfter.UTC().Truncate(time.Second)) || row.Kind != "kubelet-server" {
				t.Fatalf("report row %+v", row)
			}
		})
	}
	t.Run("dangling link", func(t *testing.T) {
		root, _ := gen(t, fixture.Options{NodeName: "cp-1"})
		if err := os.Symlink("/var/lib/kubelet/pki/kubelet-server-gone.pem", filepath.Join(root, "var/lib/kubelet/pki/kubelet-server-current.pem")); err != nil {
			t.Fatal(err)
		}
		it := build(t, root).Find("kubelet-server-current.pem")
		if it == nil || it.Status != pki.StatusMissing || !strings.Contains(strings.Join(it.Problems, " "), "requests a new one itself when it restarts") {
			t.Fatalf("%+v", it)
		}
	})
}

func ocpNode(t *testing.T, o ocpfixture.Options) (string, *ocpfixture.Node) {
	t.Helper()
	root := t.TempDir()
	o.Now = now
	fn, err := ocpfixture.Generate(root, o)
	if err != nil {
		t.Fatal(err)
	}
	return root, fn
}

// An OpenShift master generated from the operators' layout, every leaf
// expired: each credential is listed with its expiry and status, the
// operator-managed ones as such, and nothing is written.
func TestOpenShiftInventory(t *testing.T) {
	root, _ := ocpNode(t, ocpfixture.Options{Master: true, NodeName: "master-0", Revision: 7, KCMRevision: 5, EtcdRevision: 3,
		OtherMasters: []string{"master-1", "master-2"}})
	before := treesnap.Take(t, root)
	n, err := node.New(root)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := n.Discover("") // no kubeadm PKI dir: the node name is what it finds
	if c == nil || c.NodeName != "master-0" {
		t.Fatalf("Discover: %+v", c)
	}
	inv, err := inventory.Build(n, c, now, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !inv.OpenShift || inv.Worker {
		t.Fatalf("OpenShift %v Worker %v", inv.OpenShift, inv.Worker)
	}
	got := map[string]string{}
	for _, it := range inv.Items {
		got[it.Name] = string(it.Kind) + " " + string(it.Status) + " " + it.Path
	}
	want := map[string]string{
		"kubelet kubeconfig":            "kubeconfig expired /var/lib/kubelet/kubeconfig",
		"kubelet-client-current.pem":    "kubelet-client expired /var/lib/kubelet/pki/kubelet-client-current.pem",
		"kubelet-server-current.pem":    "kubelet-server expired /var/lib/kubelet/pki/kubelet-server-current.pem",
		"bootstrap kubeconfig":          "bootstrap-kubeconfig ok /etc/kubernetes/kubeconfig",
		"localhost-recovery kubeconfig": "kubeconfig expired " + ocpfixture.LocalhostRecoveryKubeconfig,
	}
	for _, s := range ocpfixture.CertSecretNames() {
		want["kube-apiserver-certs/"+s] = "operator-managed expired " + ocpfixture.KubeAPIServerCerts + "/secrets/" + s + "/tls.crt"
	}
	for _, s := range ocpfixture.RevisionSecretNames() {
		want["kube-apiserver-pod-7/"+s] = "operator-managed expired " + ocpfixture.RevisionDir(7) + "/secrets/" + s + "/tls.crt"
	}
	// The kube-controller-manager's and this member's etcd certificates,
	// not the other members' (etcd-all-certs holds theirs too).
	for _, s := range ocpfixture.KCMCertSecretNames() {
		want["kube-controller-manager-certs/"+s] = "operator-managed expired " + ocpfixture.KCMCerts + "/secrets/" + s + "/tls.crt"
	}
	for _, s := range ocpfixture.KCMRevisionSecretNames() {
		want["kube-controller-manager-pod-5/"+s] = "operator-managed expired " + ocpfixture.KCMRevisionDir(5) + "/secrets/" + s + "/tls.crt"
	}
	for _, s := range ocpfixture.EtcdCertNames("master-0") {
		want["etcd-certs/etcd-all-certs/"+s] = "operator-managed expired " + ocpfixture.EtcdAllCerts + "/" + s + ".crt"
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("items (-want +got):\n%s", diff)
	}
	if len(inv.CAs) != 1 || inv.CAs[0].Name != "kubelet-ca" || inv.CAs[0].Status != pki.StatusOK {
		t.Errorf("CAs: %+v", inv.CAs)
	}
	for _, it := range inv.Items {
		msg := strings.Join(it.Problems, " ")
		switch it.Kind {
		case inventory.KindOperatorManaged:
			if !it.External || msg != "" {
				t.Errorf("%s: external %v, problems %q (the operator note says it once)", it.Name, it.External, msg)
			}
		case inventory.KindKubeletClient:
			if !strings.Contains(msg, "bootstrap kubeconfig /etc/kubernetes/kubeconfig") || !strings.Contains(msg, "kubecpr openshift-node") {
				t.Errorf("%s: %q", it.Name, msg)
			}
		case inventory.KindKubeletServer:
			if !strings.Contains(msg, "kubelet-serving CSR") || !strings.Contains(msg, "oc adm certificate approve") {
				t.Errorf("%s: %q", it.Name, msg)
			}
		}
		if it.Kind != inventory.KindBootstrapKubeconfig && it.Cert == nil {
			t.Errorf("%s: no certificate read", it.Name)
		}
	}
	notes := strings.Join(inv.Notes, "\n")
	if strings.Count(notes, "kubecpr does not renew them") != 1 || !strings.Contains(notes, "16 expired (kube-apiserver-certs/aggregator-client") ||
		!strings.Contains(notes, "kube-apiserver-pod-7/localhost-recovery-serving-certkey") || !strings.Contains(notes, "since OpenShift 4.2") ||
		!strings.Contains(notes, "kube-controller-manager-certs/csr-signer") || !strings.Contains(notes, "etcd-certs/etcd-all-certs/etcd-peer-master-0") ||
		!strings.Contains(notes, "cluster-etcd-operator") {
		t.Errorf("operator-managed note:\n%s", notes)
	}
	if inv.Worst() != pki.StatusExpired || inv.ExitCode() != 2 {
		t.Errorf("worst %s exit %d", inv.Worst(), inv.ExitCode())
	}
	if diff := treesnap.Diff(before, treesnap.Take(t, root)); diff != "" {
		t.Errorf("the inventory changed the tree:\n%s", diff)
	}
}

// The current revision is the one the manifest runs, not the highest
// directory (an installer that wrote N+1 and was interrupted).
func TestOpenShiftCurrentRevision(t *testing.T) {
	root, _ := ocpNode(t, ocpfixture.Options{Master: true, Revision: 4})
	// A stray, newer revision directory that the manifest does not run.
	if err := os.MkdirAll(filepath.Join(root, ocpfixture.RevisionDir(9), "secrets"), 0o755); err != nil {
		t.Fatal(err)
	}
	inv := build0(t, root)
	if inv.Find("kube-apiserver-pod-4/etcd-client") == nil || inv.Find("kube-apiserver-pod-9/etcd-client") != nil {
		t.Fatalf("items: %v", statuses(inv))
	}
}

// The kube-controller-manager's revision is its own manifest's, not the
// kube-apiserver's nor its highest directory; its serving certificate is
// optional there (the service CA issues it after install); without the
// node's name every etcd member's certificates are listed.
func TestOpenShiftControllerManagerAndEtcd(t *testing.T) {
	root, _ := ocpNode(t, ocpfixture.Options{Master: true, NodeName: "master-1", Revision: 9, KCMRevision: 4, OtherMasters: []string{"master-0"}})
	if err := os.MkdirAll(filepath.Join(root, ocpfixture.KCMRevisionDir(8), "secrets", "serving-cert"), 0o755); err != nil {
		t.Fatal(err)
	}
	inv := build0(t, root)
	if inv.Find("kube-controller-manager-pod-4/serving-cert") == nil || inv.Find("kube-controller-manager-pod-8/serving-cert") != nil ||
		inv.Find("kube-controller-manager-pod-9/serving-cert") != nil {
		t.Fatalf("items: %v", statuses(inv))
	}
	if it := inv.Find("kube-controller-manager-certs/csr-signer"); it == nil || it.Cert == nil || !it.Cert.IsCA || !it.External {
		t.Errorf("csr-signer: %+v", it)
	}
	for _, name := range []string{"etcd-peer-master-1", "etcd-serving-master-1", "etcd-serving-metrics-master-1"} {
		it := inv.Find("etcd-certs/etcd-all-certs/" + name)
		if it == nil || it.Status != pki.StatusExpired || it.Key == nil {
			t.Errorf("%s: %+v", name, it)
		}
	}
	if inv.Find("etcd-certs/etcd-all-certs/etcd-peer-master-0") != nil {
		t.Errorf("another member's etcd certificate is listed: %v", statuses(inv))
	}

	// Without its serving certificate in the current revision: not
	// missing, only not listed.
	if err := os.RemoveAll(filepath.Join(root, ocpfixture.KCMRevisionDir(4), "secrets", "serving-cert")); err != nil {
		t.Fatal(err)
	}
	if it := build0(t, root).Find("kube-controller-manager-pod-4/serving-cert"); it != nil {
		t.Errorf("an absent optional serving-cert: %+v", it)
	}

	// The node's name unknown (no kubelet client certificate): every
	// member's etcd certificates, none missing.
	if err := os.Remove(filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem")); err != nil {
		t.Fatal(err)
	}
	n, err := node.New(root)
	if err != nil {
		t.Fatal(err)
	}
	inv, err = inventory.Build(n, &node.Cluster{}, now, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var etcd []string
	for _, it := range inv.Sorted() {
		if strings.HasPrefix(it.Name, "etcd-certs/") {
			etcd = append(etcd, strings.TrimPrefix(it.Name, "etcd-certs/etcd-all-certs/")+" "+string(it.Status))
		}
	}
	want := []string{"etcd-peer-master-0 expired", "etcd-peer-master-1 expired", "etcd-serving-master-0 expired", "etcd-serving-master-1 expired",
		"etcd-serving-metrics-master-0 expired", "etcd-serving-metrics-master-1 expired"}
	if diff := cmp.Diff(want, etcd); diff != "" {
		t.Errorf("etcd certificates without the node's name (-want +got):\n%s", diff)
	}
}

// A worker: the kubelet's credentials and the bootstrap kubeconfig, no
// control-plane items; a bootstrap kubeconfig whose token expired says so.
func TestOpenShiftWorker(t *testing.T) {
	root, _ := ocpNode(t, ocpfixture.Options{NodeName: "worker-3",
		BootstrapToken: "eyJhbGciOiJSUzI1NiJ9." + b64(`{"exp":1700000000,"sub":"system:serviceaccount:openshift-machine-config-operator:node-bootstrapper"}`) + ".c2ln"})
	inv := build0(t, root)
	if !inv.OpenShift || !inv.Worker {
		t.Fatalf("OpenShift %v Worker %v", inv.OpenShift, inv.Worker)
	}
	var names []string
	for _, it := range inv.Sorted() {
		names = append(names, it.Name)
	}
	if diff := cmp.Diff([]string{"bootstrap kubeconfig", "kubelet kubeconfig", "kubelet-client-current.pem", "kubelet-server-current.pem"}, names); diff != "" {
		t.Errorf("worker items (-want +got):\n%s", diff)
	}
	b := inv.Find("bootstrap kubeconfig")
	if b.Status != pki.StatusExpired || !strings.Contains(strings.Join(b.Problems, " "), "its token expired on 2023-11-14") {
		t.Errorf("bootstrap kubeconfig: %s %v", b.Status, b.Problems)
	}
	for _, it := range inv.Items {
		if it.Name == "kubelet-client-current.pem" && (it.Cert == nil || it.Cert.Subject.CommonName != "system:node:worker-3") {
			t.Errorf("kubelet client cert: %+v", it.Cert)
		}
	}
}

func build0(t *testing.T, root string) *inventory.Inventory {
	t.Helper()
	n, err := node.New(root)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := n.Discover("")
	inv, err := inventory.Build(n, c, now, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
