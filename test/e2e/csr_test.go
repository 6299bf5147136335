package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/fixture"
	"github.com/kubecpr/kubecpr/test/kubecprbin"
)

const tokenID, tokenSecret = "abcdef", "0123456789abcdef"

// prepareBootstrap makes the cluster accept a bootstrap token for CSRs, as
// kubeadm init does, and registers the Node object.
func prepareBootstrap(ctx context.Context, t testing.TB, n *cluster.Node) {
	t.Helper()
	cs := n.Client(t, "/etc/kubernetes/super-admin.conf")
	_, err := cs.CoreV1().Secrets("kube-system").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-" + tokenID, Namespace: "kube-system"},
		Type:       "bootstrap.kubernetes.io/token",
		StringData: map[string]string{"token-id": tokenID, "token-secret": tokenSecret, "usage-bootstrap-authentication": "true",
			"auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token", "expiration": time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:kubelet-bootstrap"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:node-bootstrapper"},
		Subjects:   []rbacv1.Subject{{Kind: "Group", Name: "system:bootstrappers:kubeadm:default-node-token", APIGroup: "rbac.authorization.k8s.io"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// kubelet plays the kubelet's TLS bootstrap: a client CSR with the
// bootstrap token, then a serving CSR with the client certificate it got.
type kubelet struct {
	server string
	ca     []byte
	key    *ecdsa.PrivateKey
}

func (k *kubelet) client(token string, certPEM []byte) *kubernetes.Clientset {
	cfg := &rest.Config{Host: k.server, BearerToken: token, Timeout: 10 * time.Second, TLSClientConfig: rest.TLSClientConfig{CAData: k.ca}}
	if certPEM != nil {
		kb, _ := x509.MarshalECPrivateKey(k.key)
		cfg.BearerToken = ""
		cfg.CertData, cfg.KeyData = certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	}
	return kubernetes.NewForConfigOrDie(cfg)
}

func csrPEM(key *ecdsa.PrivateKey, cn string, dns []string, ips []net.IP) []byte {
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: cn, Organization: []string{"system:nodes"}}, DNSNames: dns, IPAddresses: ips}, key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func fileCSR(ctx context.Context, cs *kubernetes.Clientset, name, signer string, req []byte, usages []certificatesv1.KeyUsage) ([]byte, error) {
	// Like the kubelet, retry while the server warms up (its token cache
	// may not be synced yet: Unauthorized).
	for {
		_, err := cs.CertificatesV1().CertificateSigningRequests().Create(ctx, &certificatesv1.CertificateSigningRequest{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       certificatesv1.CertificateSigningRequestSpec{SignerName: signer, Request: req, Usages: usages}}, metav1.CreateOptions{})
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("creating %s: %v", name, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
	for {
		got, err := cs.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
		if err == nil && len(got.Status.Certificate) > 0 {
			return got.Status.Certificate, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: no certificate: %w", name, ctx.Err())
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// The node's apiserver is down and its certificates expired: kubecpr
// renews, starts its own recovery API server, approves and signs the
// kubelet's client and serving CSRs (refusing a hostile one), and leaves
// nothing behind; the certificates work against the real apiserver.
func TestRecoveryServerApprovesKubeletCSRs(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	n := cluster.Kubeadm(t, cluster.Options{})
	etcd := n.StartEtcd(t)
	api := n.StartAPIServer(t)
	if err := n.WaitReady(ctx, t, "/etc/kubernetes/admin.conf", api); err != nil {
		t.Fatal(err)
	}
	prepareBootstrap(ctx, t, n)
	api.Stop()
	etcd.Stop()

	w := fixture.Window{NotBefore: time.Now().AddDate(-1, 0, -2), NotAfter: time.Now().AddDate(0, 0, -2)}
	if err := fixture.Resign(n.Root, w, nil); err != nil {
		t.Fatal(err)
	}
	if r := kubecpr(t, n, "run", "--until", "kubeconfigs"); r.code != 0 {
		t.Fatalf("renewal: %d\n%s", r.code, r.stderr)
	}
	// etcd and the apiserver stay down: kubecpr brings etcd up for the
	// duration and its own recovery API server.

	stateDir := n.Path("/var/lib/kubecpr")
	ca, _ := os.ReadFile(n.Path("/etc/kubernetes/pki/ca.crt"))
	k := &kubelet{ca: ca}
	k.key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var wg sync.WaitGroup
	var clientCert, servingCert []byte
	var kerr error
	var servedTTL time.Duration
	wg.Add(1)
	go func() {
		defer wg.Done()
		// wait for the bootstrap kubeconfig kubecpr writes, as the kubelet would
		var bcfg *clientcmdapi.Config
		for bcfg == nil {
			if c, err := clientcmd.LoadFromFile(n.Path("/etc/kubernetes/bootstrap-kubelet.conf")); err == nil {
				bcfg = c
				break
			}
			select {
			case <-ctx.Done():
				kerr = ctx.Err()
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
		bctx := bcfg.Contexts[bcfg.CurrentContext]
		k.server = bcfg.Clusters[bctx.Cluster].Server
		token := bcfg.AuthInfos[bctx.AuthInfo].Token
		if u, err := url.Parse(k.server); err == nil {
			p, _ := strconv.Atoi(u.Port())
			if c, err := cluster.ServedCertificate(p); err == nil {
				servedTTL = time.Until(c.NotAfter)
			}
		}
		boot := k.client(token, nil)
		// a hostile request first: another node's name
		evil, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		hctx, hcancel := context.WithTimeout(ctx, 60*time.Second)
		go func() {
			defer hcancel()
			fileCSR(hctx, boot, "csr-hostile", "kubernetes.io/kube-apiserver-client-kubelet",
				csrPEM(evil, "system:node:intruder", nil, nil), []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth})
		}()
		clientCert, kerr = fileCSR(ctx, boot, "csr-client", "kubernetes.io/kube-apiserver-client-kubelet",
			csrPEM(k.key, "system:node:"+n.Name, nil, nil), []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth})
		if kerr != nil {
			return
		}
		skey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		servingCert, kerr = fileCSR(ctx, k.client("", clientCert), "csr-serving", "kubernetes.io/kubelet-serving",
			csrPEM(skey, "system:node:"+n.Name, []string{n.Name}, []net.IP{net.ParseIP("127.0.0.1")}),
			[]certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageKeyEncipherment, certificatesv1.UsageServerAuth})
	}()

	bin := filepath.Join(n.Bin, "kube-apiserver")
	r := kubecpr(t, n, "run", "--from", "csr", "--apiserver-binary", bin, "--etcd-binary", filepath.Join(n.Bin, "etcd"),
		"--bootstrap-token", "1h", "--csr-wait", "2m")
	wg.Wait()
	if r.code != 0 {
		t.Fatalf("kubecpr run --from csr: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if kerr != nil {
		t.Fatalf("simulated kubelet: %v\n%s", kerr, r.stdout)
	}
	t.Logf("kubecpr output:\n%s", r.stdout)
	for _, want := range []string{"started it from its manifest", "etcd started by kubecpr stopped", "bootstrap-kubelet.conf (0600): bootstrap token",
		"recovery API server on https://127.0.0.1:", "approved csr-client", "approved csr-serving",
		"refused csr-hostile", "not a node of this cluster", "signed csr-client", "recovery API server stopped"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if servedTTL <= 0 || servedTTL > 2*time.Hour {
		t.Errorf("recovery server credentials live %s, want at most 2h", servedTTL)
	}

	// The certificates chain to the cluster CA...
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	for name, p := range map[string][]byte{"client": clientCert, "serving": servingCert} {
		blk, _ := pem.Decode(p)
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s certificate does not chain: %v", name, err)
		}
	}
	// ...nothing of the recovery server is left...
	if _, err := os.Stat(filepath.Join(stateDir, "recovery-server")); !os.IsNotExist(err) {
		t.Errorf("recovery server directory (credentials) left: %v", err)
	}
	if port := recoveryPort(r.stdout); port != "" {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second); err == nil {
			c.Close()
			t.Errorf("something still listens on the recovery port %s", port)
		}
	}
	if strings.Contains(r.stdout+r.stderr, tokenSecretFrom(t, n)) {
		t.Error("the bootstrap token secret was printed")
	}
	// ...and the client certificate works against the node's real apiserver.
	etcd = n.StartEtcd(t)
	api = n.StartAPIServer(t)
	if err := n.WaitReady(ctx, t, "/etc/kubernetes/admin.conf", api); err != nil {
		t.Fatal(err)
	}
	k.server = fmt.Sprintf("https://127.0.0.1:%d", n.APIServerPort)
	review, err := k.client("", clientCert).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	who := ""
	if err == nil {
		who = review.Status.UserInfo.Username
	}
	if err != nil || who != "system:node:"+n.Name {
		t.Fatalf("the approved client certificate: user %q, err %v", who, err)
	}
	api.Stop()
	etcd.Stop()
}

func recoveryPort(out string) string {
	i := strings.Index(out, "recovery API server on https://127.0.0.1:")
	if i < 0 {
		return ""
	}
	rest := out[i+len("recovery API server on https://127.0.0.1:"):]
	return strings.Fields(rest)[0]
}

// kill -9 of kubecpr while its recovery server runs: the server is left
// running (the kernel does not kill a separate process group), and the
// next kubecpr command tears it down: no process, no port, no credentials.
func TestRecoveryServerReapedAfterKill(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n := cluster.Kubeadm(t, cluster.Options{})
	etcd := n.StartEtcd(t)
	defer etcd.Stop()
	stateDir := n.Path("/var/lib/kubecpr")
	bin := filepath.Join(n.Bin, "kube-apiserver")
	r := kubecprbin.Run(t, []string{"KUBECPR_CRASH_AT=csr-recovery-server-ready"}, "--root", n.Root, "run", "--from", "csr", "--apiserver-binary", bin)
	if !r.Killed {
		t.Fatalf("kubecpr was not killed: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	b, err := os.ReadFile(filepath.Join(stateDir, "recovery-server", "pid"))
	if err != nil {
		t.Fatalf("no recovery server recorded: %v", err)
	}
	var pid, port int
	fmt.Sscan(string(b), &pid, &port)
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
		t.Fatalf("the recovery server (pid %d) is not running after the kill", pid)
	}
	st := kubecprbin.Run(t, nil, "--root", n.Root, "recovery-server", "status")
	if !strings.Contains(st.Stdout, fmt.Sprintf("pid %d", pid)) {
		t.Errorf("status: %s", st.Stdout)
	}
	rb := kubecprbin.Run(t, nil, "--root", n.Root, "rollback")
	if rb.Code != 0 || !strings.Contains(rb.Stdout, "tearing down the recovery API server") {
		t.Fatalf("rollback: %d\n%s%s", rb.Code, rb.Stdout, rb.Stderr)
	}
	for i := 0; i < 50; i++ {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err != nil || strings.Fields(string(b))[2] == "Z" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Fields(string(b))[2] != "Z" {
		t.Errorf("recovery server pid %d still running", pid)
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		c.Close()
		t.Errorf("port %d still listening", port)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "recovery-server")); !os.IsNotExist(err) {
		t.Errorf("credentials left: %v", err)
	}

	// By hand: start one for kubectl work, use it, stop it.
	st = kubecprbin.Run(t, nil, "--root", n.Root, "recovery-server", "start", "--apiserver-binary", bin, "--recovery-ttl", "1h")
	if st.Code != 0 {
		t.Fatalf("recovery-server start: %d\n%s%s", st.Code, st.Stdout, st.Stderr)
	}
	kc := strings.TrimSpace(kubecprbin.Run(t, nil, "--root", n.Root, "recovery-server", "kubeconfig").Stdout)
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	if _, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("kubectl-style use of the recovery server: %v", err)
	}
	if st := kubecprbin.Run(t, nil, "--root", n.Root, "recovery-server", "stop"); st.Code != 0 {
		t.Fatalf("stop: %d %s", st.Code, st.Stderr)
	}
	if _, err := os.Stat(kc); !os.IsNotExist(err) {
		t.Errorf("kubeconfig left after stop: %v", err)
	}
}

func tokenSecretFrom(t *testing.T, n *cluster.Node) string {
	c, err := clientcmd.LoadFromFile(n.Path("/etc/kubernetes/bootstrap-kubelet.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ai := range c.AuthInfos {
		if _, secret, ok := strings.Cut(ai.Token, "."); ok {
			return secret
		}
	}
	t.Fatal("no token in the bootstrap kubeconfig")
	return ""
}
