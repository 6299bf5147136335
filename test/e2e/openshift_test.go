package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/phases/csr"
	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/kubecprbin"
	"github.com/kubecpr/kubecpr/test/ocpfixture"
)

const (
	mcoNamespace = "openshift-machine-config-operator"
	mcoBootSA    = "node-bootstrapper"
)

// nodeBootstrapper creates OpenShift's kubelet bootstrap identity in a
// real API server, as the machine-config operator does: the
// node-bootstrapper service account of openshift-machine-config-operator
// bound to the system:node-bootstrapper cluster role (create and get
// CSRs), and returns a token of it.
func nodeBootstrapper(ctx context.Context, t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: mcoNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(mcoNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: mcoBootSA}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "system-bootstrap-node-bootstrapper"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:node-bootstrapper"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: mcoBootSA, Namespace: mcoNamespace}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	exp := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(mcoNamespace).CreateToken(ctx, mcoBootSA,
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func registerNode(ctx context.Context, t *testing.T, cs kubernetes.Interface, name, ip string) {
	t.Helper()
	addrs := []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}}
	nd, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Addresses: addrs}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nd.Status.Addresses) == 0 {
		nd.Status.Addresses = addrs
		if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, nd, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// createCSR files one CSR with the requester's credentials, retrying while
// the server warms up (a fresh token may be Unauthorized for a moment).
func createCSR(ctx context.Context, cs kubernetes.Interface, name, signer string, req []byte, usages []certificatesv1.KeyUsage) error {
	var last error
	for {
		_, err := cs.CertificatesV1().CertificateSigningRequests().Create(ctx, &certificatesv1.CertificateSigningRequest{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       certificatesv1.CertificateSigningRequestSpec{SignerName: signer, Request: req, Usages: usages}}, metav1.CreateOptions{})
		if err == nil {
			return nil
		}
		if apierrors.IsInvalid(err) || apierrors.IsAlreadyExists(err) || apierrors.IsForbidden(err) {
			return err
		}
		if ctx.Err() == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("creating %s: %v (before: %v)", name, err, last)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func waitCertificate(ctx context.Context, cs kubernetes.Interface, name string) ([]byte, error) {
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

var (
	clientUsages  = []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}
	servingUsages = []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageKeyEncipherment, certificatesv1.UsageServerAuth}
)

// The OpenShift node part against a real kube-apiserver, etcd and
// kube-controller-manager (the signer, as on OpenShift): an OpenShift-shaped
// node tree whose kubelet certificates expired, its bootstrap kubeconfig
// holding a real token of the node-bootstrapper service account and its
// localhost-recovery kubeconfig reaching the real API server. kubecpr
// openshift-node restarts the kubelet through the service interface (here
// --kubelet-restart-command; the kubelet is played by this test with
// client-go, filing real CSRs with that token as the kubelet does), then
// approves the bootstrapper's client CSR and the node's serving CSR and
// refuses every hostile one with its reason.
func TestOpenShiftNodeBootstrapperCSRs(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n := cluster.Kubeadm(t, cluster.Options{NodeName: "master-0"})
	n.StartEtcd(t)
	api := n.StartAPIServer(t)
	if err := n.WaitReady(ctx, t, "/etc/kubernetes/admin.conf", api); err != nil {
		t.Fatal(err)
	}
	kcm := n.StartControllerManager(t)
	cs := n.Client(t, "/etc/kubernetes/super-admin.conf")
	token := nodeBootstrapper(ctx, t, cs)
	registerNode(ctx, t, cs, n.Name, "127.0.0.1")
	registerNode(ctx, t, cs, "master-1", "127.0.0.2")

	// The localhost-recovery kubeconfig is system:admin in system:masters
	// (node-kubeconfigs.yaml): super-admin.conf is kubeadm's equivalent.
	adminConf, err := os.ReadFile(n.Path("/etc/kubernetes/super-admin.conf"))
	if err != nil {
		t.Fatal(err)
	}
	acfg, err := clientcmd.Load(adminConf)
	if err != nil {
		t.Fatal(err)
	}
	server := acfg.Clusters[acfg.Contexts[acfg.CurrentContext].Cluster].Server
	ca, err := os.ReadFile(n.Path("/etc/kubernetes/pki/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if _, err := ocpfixture.Generate(root, ocpfixture.Options{Master: true, NodeName: n.Name, Server: server,
		BootstrapToken: token, BootstrapCA: ca, RecoveryKubeconfig: adminConf}); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(t.TempDir(), "kubelet-restarted")

	// The kubelet: once restarted, it reads its bootstrap kubeconfig and
	// files its client CSR as the node-bootstrapper; with the certificate
	// it gets, its serving CSR as the node. The hostile ones go in with the
	// same identities.
	type kubeletResult struct {
		client, serving, key []byte
		otherRefused         string
		err                  error
	}
	done := make(chan kubeletResult, 1)
	go func() {
		var res kubeletResult
		defer func() { done <- res }()
		for {
			if _, err := os.Stat(marker); err == nil {
				break
			}
			select {
			case <-ctx.Done():
				res.err = fmt.Errorf("the kubelet was never restarted: %w", ctx.Err())
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		boot, err := clientcmd.BuildConfigFromFlags("", filepath.Join(root, "etc/kubernetes/kubeconfig"))
		if err != nil {
			res.err = err
			return
		}
		bcs := kubernetes.NewForConfigOrDie(boot)
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		for _, c := range []struct {
			name, signer string
			req          []byte
			usages       []certificatesv1.KeyUsage
		}{
			{"csr-bootstrapper-other-node", csr.SignerClientKubelet, csrPEM(other, "system:node:master-1", nil, nil), clientUsages},
			{"csr-bootstrapper-unknown-node", csr.SignerClientKubelet, csrPEM(other, "system:node:intruder", nil, nil), clientUsages},
			{"csr-bootstrapper-wrong-cn", csr.SignerClientKubelet, csrPEM(other, "system:admin", nil, nil), clientUsages},
			{"csr-bootstrapper-wrong-usages", csr.SignerClientKubelet, csrPEM(other, "system:node:"+n.Name, nil, nil),
				[]certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageServerAuth}},
			{"csr-bootstrapper-serving", csr.SignerKubeletServing, csrPEM(other, "system:node:"+n.Name, []string{n.Name}, []net.IP{net.ParseIP("127.0.0.1")}), servingUsages},
			{"csr-client", csr.SignerClientKubelet, csrPEM(key, "system:node:"+n.Name, nil, nil), clientUsages},
		} {
			if err := createCSR(ctx, bcs, c.name, c.signer, c.req, c.usages); err != nil {
				res.err = err
				return
			}
		}
		if res.client, res.err = waitCertificate(ctx, bcs, "csr-client"); res.err != nil {
			return
		}
		kb, _ := x509.MarshalECPrivateKey(key)
		res.key = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
		ncfg := *boot
		ncfg.BearerToken = ""
		ncfg.CertData, ncfg.KeyData = res.client, res.key
		ncs := kubernetes.NewForConfigOrDie(&ncfg)
		skey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		// A node asking for another node's serving certificate: the real
		// API server's NodeRestriction refuses to even store it (the
		// approver's own refusal of it is in phases/csr's corpus).
		err = createCSR(ctx, ncs, "csr-node-other-serving", csr.SignerKubeletServing,
			csrPEM(skey, "system:node:master-1", []string{"master-1"}, []net.IP{net.ParseIP("127.0.0.2")}), servingUsages)
		if !apierrors.IsForbidden(err) {
			res.err = fmt.Errorf("a node filing another node's CSR: %v, want Forbidden from the API server", err)
			return
		}
		res.otherRefused = err.Error()
		for _, c := range []struct {
			name string
			req  []byte
		}{
			{"csr-node-foreign-ip", csrPEM(skey, "system:node:"+n.Name, []string{n.Name}, []net.IP{net.ParseIP("10.1.2.3")})},
			{"csr-serving", csrPEM(skey, "system:node:"+n.Name, []string{n.Name}, []net.IP{net.ParseIP("127.0.0.1")})},
		} {
			if err := createCSR(ctx, ncs, c.name, csr.SignerKubeletServing, c.req, servingUsages); err != nil {
				res.err = err
				return
			}
		}
		res.serving, res.err = waitCertificate(ctx, ncs, "csr-serving")
	}()

	start := time.Now()
	r := kubecprbin.Run(t, nil, "--root", root, "openshift-node", "--kubelet-restart-command", "touch "+marker, "--csr-wait", "2m")
	took := time.Since(start)
	if r.Code != 0 {
		cancel() // the played kubelet stops waiting
	}
	kr := <-done
	if r.Code != 0 {
		t.Fatalf("kubecpr openshift-node: exit %d\n%s\n%s\nkube-controller-manager:\n%s", r.Code, r.Stdout, r.Stderr, kcm.LogTail(20))
	}
	if kr.err != nil {
		t.Fatalf("the kubelet: %v\n%s", kr.err, r.Stdout)
	}
	t.Logf("kubecpr openshift-node took %s:\n%s", took.Round(time.Millisecond), r.Stdout)

	// The output says what was approved and why the others were refused.
	for _, want := range []string{
		"kubelet restarted (command: touch",
		"approved csr-client for node " + n.Name + ": node client certificate requested through OpenShift's node-bootstrapper",
		"approved csr-serving for node " + n.Name,
		"refused csr-bootstrapper-other-node (kubernetes.io/kube-apiserver-client-kubelet): node \"master-1\" is not the one",
		"refused csr-bootstrapper-unknown-node (kubernetes.io/kube-apiserver-client-kubelet): CN names node \"intruder\", which is not a node of this cluster",
		"refused csr-bootstrapper-wrong-cn (kubernetes.io/kube-apiserver-client-kubelet): CN \"system:admin\" is not system:node:<name>",
		"refused csr-bootstrapper-wrong-usages (kubernetes.io/kube-apiserver-client-kubelet): usages [client auth,digital signature,server auth] are not a kubelet client certificate's",
		"refused csr-bootstrapper-serving (kubernetes.io/kubelet-serving): a serving certificate must be requested by the node itself",
		"refused csr-node-foreign-ip (kubernetes.io/kubelet-serving): IP 10.1.2.3 is not an address of node " + n.Name,
	} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("output lacks %q", want)
		}
	}

	// In the API: the good CSRs were filed by the node-bootstrapper and by
	// the node, approved by kubecpr, signed by the controller-manager;
	// the hostile ones are neither approved nor signed.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	list, err := cs.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, c := range list.Items {
		approvedBy := ""
		for _, cond := range c.Status.Conditions {
			if cond.Type == certificatesv1.CertificateApproved {
				approvedBy = cond.Reason
			}
		}
		switch c.Name {
		case "csr-client", "csr-serving":
			seen++
			wantUser := csr.OpenShiftNodeBootstrapper
			if c.Name == "csr-serving" {
				wantUser = "system:node:" + n.Name
			}
			if c.Spec.Username != wantUser {
				t.Errorf("%s filed by %q, want %q", c.Name, c.Spec.Username, wantUser)
			}
			if c.Name == "csr-client" && !contains(c.Spec.Groups, csr.OpenShiftNodeBootstrapperGroup) {
				t.Errorf("%s groups %v lack %s", c.Name, c.Spec.Groups, csr.OpenShiftNodeBootstrapperGroup)
			}
			if approvedBy != "KubecprApproved" {
				t.Errorf("%s approved by %q, want kubecpr", c.Name, approvedBy)
			}
			blk, _ := pem.Decode(c.Status.Certificate)
			if blk == nil {
				t.Errorf("%s has no certificate", c.Name)
				continue
			}
			cert, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil || cert.Subject.CommonName != "system:node:"+n.Name {
				t.Errorf("%s: CN %q, chain %v", c.Name, cert.Subject.CommonName, err)
			}
		default:
			if !strings.HasPrefix(c.Name, "csr-bootstrapper-") && !strings.HasPrefix(c.Name, "csr-node-") {
				continue
			}
			seen++
			if approvedBy != "" || len(c.Status.Certificate) > 0 {
				t.Errorf("hostile %s: approved by %q, certificate %d bytes", c.Name, approvedBy, len(c.Status.Certificate))
			}
		}
	}
	if seen != 8 {
		t.Errorf("saw %d of the 8 CSRs filed", seen)
	}
	t.Logf("the API server itself refused a node's CSR for another node: %s", kr.otherRefused)

	// The new client certificate authenticates as the node.
	ncfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(root, "etc/kubernetes/kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	ncfg.BearerToken, ncfg.CertData, ncfg.KeyData = "", kr.client, kr.key
	who, err := kubernetes.NewForConfigOrDie(ncfg).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil || who.Status.UserInfo.Username != "system:node:"+n.Name || !contains(who.Status.UserInfo.Groups, "system:nodes") {
		t.Errorf("the new client certificate authenticates as %+v (%v), want system:node:%s in system:nodes", who, err, n.Name)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the kubelet restart command never ran: %v", err)
	}
	// The run is journaled and complete.
	if !strings.Contains(r.Stdout, "complete in") {
		t.Errorf("run not complete:\n%s", r.Stdout)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
