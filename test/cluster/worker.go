package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"

	"github.com/kubecpr/kubecpr/test/fixture"
)

// Node paths of a kubeadm worker's kubelet credentials.
const (
	KubeletConf       = "/etc/kubernetes/kubelet.conf"
	KubeletPKIDir     = "/var/lib/kubelet/pki"
	KubeletClientPEM  = KubeletPKIDir + "/kubelet-client-current.pem"
	KubeletServingCrt = KubeletPKIDir + "/kubelet.crt"
	KubeletServingKey = KubeletPKIDir + "/kubelet.key"
)

// workerConfig is what `kubeadm init phase kubelet-start` needs to write
// the kubelet's files (kubeadm join downloads the same KubeletConfiguration
// from the kubelet-config ConfigMap that init made from these defaults).
const workerConfig = `apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
nodeRegistration:
  name: %[1]s
  criSocket: unix:///run/containerd/containerd.sock
localAPIEndpoint:
  advertiseAddress: %[2]s
  bindPort: %[3]d
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: %[4]s
controlPlaneEndpoint: %[5]s
networking:
  serviceSubnet: %[6]s
  dnsDomain: cluster.local
`

// Worker lays out the tree of a kubeadm worker node named name at the
// loopback address addr (127.0.0.1, .2 or .3) that has joined cp's
// cluster and whose kubelet has bootstrapped, under its own t.TempDir():
//
//   - /var/lib/kubelet/config.yaml and kubeadm-flags.env, written by real
//     `kubeadm init phase kubelet-start` (offline, chrooted, no network;
//     join would download the same KubeletConfiguration, which init makes
//     from the same defaults);
//   - /etc/kubernetes/pki/ca.crt (the cluster CA, no key) and no manifests;
//   - the kubelet's client certificate as the kubelet keeps it after TLS
//     bootstrap: ECDSA P-256 key, CN system:node:<name>, O system:nodes,
//     client auth, signed by cp's cluster CA for a year, certificate and
//     key in /var/lib/kubelet/pki/kubelet-client-<date>.pem (0600) and
//     kubelet-client-current.pem a symlink to it (absolute target);
//   - kubelet.crt/kubelet.key: the self-signed serving pair the kubelet
//     makes for itself (client-go's GenerateSelfSignedCertKey(name), as
//     the kubelet calls it);
//   - /etc/kubernetes/kubelet.conf as the kubelet writes it after
//     bootstrap: default-cluster (cp's apiserver https://<cp
//     address>:<port>, CA embedded), default-auth (client-certificate and
//     client-key the current pem), default-context.
//
// The returned Node has IsWorker set; its Expire and Resign re-sign the
// kubelet client certificate with cp's CA key (kept outside the tree), so
// ExpireAll takes workers too. WhoAmI(ctx, KubeletConf) shows whom the
// current certificate authenticates as.
func Worker(t testing.TB, cp *Node, name, addr string) *Node {
	t.Helper()
	if cp == nil || cp.IsWorker {
		t.Fatal("Worker: want a control-plane node")
	}
	switch addr {
	case "127.0.0.1", "127.0.0.2", "127.0.0.3":
	default:
		t.Fatalf("Worker %s: address %q, want 127.0.0.1, 127.0.0.2 or 127.0.0.3", name, addr)
	}
	if name == "" || strings.ContainsAny(name, "/ ") {
		t.Fatalf("Worker: bad node name %q", name)
	}
	start := time.Now()
	w := &Node{Root: t.TempDir(), Name: name, Bin: Binaries(t), KubernetesVersion: cp.KubernetesVersion,
		Address: addr, IsWorker: true, caKey: cp.Path("/etc/kubernetes/pki/ca.key")}
	if cp.ExternalCAKey != "" {
		w.caKey = cp.ExternalCAKey
	}
	if cp.caKey != "" {
		w.caKey = cp.caKey
	}
	server := fmt.Sprintf("https://%s", net.JoinHostPort(cp.addr(), fmt.Sprint(cp.APIServerPort)))
	w.ConfigPath = filepath.Join(t.TempDir(), "kubeadm.yaml")
	cfg := fmt.Sprintf(workerConfig, name, NeverContacted, cp.APIServerPort, cp.KubernetesVersion,
		net.JoinHostPort(cp.addr(), fmt.Sprint(cp.APIServerPort)), ServiceSubnet)
	if err := os.WriteFile(w.ConfigPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := w.Kubeadm(t, "init", "phase", "kubelet-start"); err != nil {
		t.Fatalf("worker %s: kubeadm init phase kubelet-start: %v\n%s", name, err, out)
	}
	if err := editFile(w.Path("/var/lib/kubelet/config.yaml"), func(s string) string { return strings.ReplaceAll(s, NeverContacted, addr) }); err != nil {
		t.Fatal(err)
	}

	caPEM, err := os.ReadFile(cp.Path("/etc/kubernetes/pki/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(w.Path("/etc/kubernetes/pki"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.Path("/etc/kubernetes/pki/ca.crt"), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(w.Path("/etc/kubernetes/manifests"), 0o755); err != nil { // kubeadm join makes it, empty
		t.Fatal(err)
	}

	// The kubelet's client certificate after TLS bootstrap.
	ca := w.ClusterCA(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}},
		NotBefore:    now.Add(-5 * time.Minute), // the signer backdates 5 min
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pemData := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...)
	if err := os.MkdirAll(w.Path(KubeletPKIDir), 0o755); err != nil {
		t.Fatal(err)
	}
	dated := KubeletPKIDir + "/" + fixture.KubeletPEMName(now)
	if err := os.WriteFile(w.Path(dated), pemData, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dated, w.Path(KubeletClientPEM)); err != nil {
		t.Fatal(err)
	}

	// The serving pair the kubelet makes for itself when none is given.
	crt, k, err := certutil.GenerateSelfSignedCertKey(name, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.Path(KubeletServingCrt), crt, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.Path(KubeletServingKey), k, 0o600); err != nil {
		t.Fatal(err)
	}

	kc := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"default-cluster": {Server: server, CertificateAuthorityData: caPEM}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"default-auth": {ClientCertificate: KubeletClientPEM, ClientKey: KubeletClientPEM}},
		Contexts:       map[string]*clientcmdapi.Context{"default-context": {Cluster: "default-cluster", AuthInfo: "default-auth", Namespace: "default"}},
		CurrentContext: "default-context",
	}
	if err := clientcmd.WriteToFile(kc, w.Path(KubeletConf)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(w.Path(KubeletConf), 0o600); err != nil {
		t.Fatal(err)
	}
	if leaks, err := NonLoopback(w.Root); err != nil || len(leaks) > 0 {
		t.Fatalf("worker %s: non-loopback addresses (err %v):\n%s", name, err, strings.Join(leaks, "\n"))
	}
	t.Logf("cluster: worker %s (%s) laid out in %s, kubelet.conf → %s", name, addr, time.Since(start).Round(time.Millisecond), server)
	return w
}

func newSerial() *big.Int {
	s, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return s
}

// resignWorker re-signs the certificate in the target of the worker's
// kubelet-client-current.pem into w with the cluster CA, keeping its
// subject, usages and key (the key block stays as it is).
func (n *Node) resignWorker(ca *fixture.CA, w fixture.Window, only func(string) bool) error {
	if only != nil && !only(KubeletClientPEM) {
		return nil
	}
	file := n.resolve(KubeletClientPEM)
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var keyPart []byte
	var old *x509.Certificate
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		switch {
		case blk.Type == "CERTIFICATE" && old == nil:
			if old, err = x509.ParseCertificate(blk.Bytes); err != nil {
				return fmt.Errorf("%s: %w", KubeletClientPEM, err)
			}
		case strings.Contains(blk.Type, "PRIVATE KEY"):
			keyPart = append(keyPart, pem.EncodeToMemory(blk)...)
		}
	}
	if old == nil {
		return fmt.Errorf("%s: no certificate", KubeletClientPEM)
	}
	tmpl := *old
	tmpl.SerialNumber = newSerial()
	tmpl.NotBefore, tmpl.NotAfter = w.NotBefore.UTC(), w.NotAfter.UTC()
	tmpl.Raw, tmpl.RawTBSCertificate, tmpl.Signature = nil, nil, nil
	tmpl.Subject.ExtraNames = nil
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.Cert, old.PublicKey, ca.Key)
	if err != nil {
		return err
	}
	st, err := os.Stat(file)
	if err != nil {
		return err
	}
	return os.WriteFile(file, append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPart...), st.Mode().Perm())
}

// WhoAmI asks the API server a kubeconfig of the node points at whom its
// credential authenticates as (a SelfSubjectReview, what `kubectl auth
// whoami` does; every authenticated user may create one), reading the
// certificate files it references now — e.g. a worker's KubeletConf with
// its current kubelet client certificate. It returns the username
// ("system:node:<name>"); an expired or unknown certificate gets
// 401 Unauthorized (apierrors.IsUnauthorized).
func (n *Node) WhoAmI(ctx context.Context, kubeconfig string) (string, error) {
	cs, err := n.clientset(kubeconfig)
	if err != nil {
		return "", err
	}
	r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return r.Status.UserInfo.Username, nil
}

// RenewNodeLease does what a kubelet does every 10 s, with the node's
// KubeletConf and its current certificate: it creates or renews the Lease
// kube-node-lease/<name>, held by <name>, renewTime now. The Node and
// NodeRestriction admission let a node write only its own lease, so
// success proves the apiserver took the credential as system:node:<name>.
func (n *Node) RenewNodeLease(ctx context.Context) error {
	cs, err := n.clientset(KubeletConf)
	if err != nil {
		return err
	}
	leases := cs.CoordinationV1().Leases("kube-node-lease")
	now := metav1.NewMicroTime(time.Now())
	holder, dur := n.Name, int32(40)
	l, err := leases.Get(ctx, n.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Namespace: "kube-node-lease"},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur, RenewTime: &now}}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &holder, &dur, &now
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

// NodeLease reads the Lease kube-node-lease/name with the node's kubeconfig
// (e.g. AdminConf of a control plane): its holder and when it was last
// renewed. A kubelet renews its own every 10 s once it authenticates; the
// Node authorizer lets it write no other.
func (n *Node) NodeLease(ctx context.Context, kubeconfig, name string) (holder string, renewed time.Time, err error) {
	cs, err := n.clientset(kubeconfig)
	if err != nil {
		return "", time.Time{}, err
	}
	l, err := cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", time.Time{}, err
	}
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	if l.Spec.RenewTime != nil {
		renewed = l.Spec.RenewTime.Time
	}
	return holder, renewed, nil
}

// WaitNodeLeaseRenewed waits until the Lease of node name, read through
// n's kubeconfig, is held by name and was renewed after since.
func (n *Node) WaitNodeLeaseRenewed(ctx context.Context, kubeconfig, name string, since time.Time) error {
	var holder string
	var renewed time.Time
	var err error
	for {
		holder, renewed, err = n.NodeLease(ctx, kubeconfig, name)
		if err == nil && holder == name && renewed.After(since) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the Lease kube-node-lease/%s was not renewed by its kubelet after %s (holder %q, last renewed %s, err %v)",
				name, since.Format(time.RFC3339), holder, renewed.Format(time.RFC3339), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// FileNodeCSR files, with the credential of the node's kubeconfig (a
// bootstrap-kubelet.conf), a kubelet client CSR for the node name as the
// kubelet's TLS bootstrap does, and returns its name: what someone holding
// a leaked bootstrap token can do.
func (n *Node) FileNodeCSR(ctx context.Context, kubeconfig, name string) (string, error) {
	cs, err := n.clientset(kubeconfig)
	if err != nil {
		return "", err
	}
	csrName, _, _, err := fileNodeCSR(ctx, cs, name)
	return csrName, err
}
