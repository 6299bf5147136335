package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path"
	"strconv"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RESTConfig is the client-go configuration of one of the node's
// kubeconfigs (a node path such as /etc/kubernetes/admin.conf): the
// server, CA and client credential of its current context, with any file
// it references (client-certificate, client-key, certificate-authority,
// symlinks like kubelet-client-current.pem) resolved under Root the way
// the node would resolve it. Requests time out after 5 s.
func (n *Node) RESTConfig(kubeconfig string) (*rest.Config, error) {
	cfg, err := clientcmd.LoadFromFile(n.Path(kubeconfig))
	if err != nil {
		return nil, err
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil {
		return nil, fmt.Errorf("%s: no current context", kubeconfig)
	}
	cl, ai := cfg.Clusters[ctx.Cluster], cfg.AuthInfos[ctx.AuthInfo]
	if cl == nil || ai == nil {
		return nil, fmt.Errorf("%s: context %s lacks its cluster or user", kubeconfig, cfg.CurrentContext)
	}
	read := func(data []byte, file string) ([]byte, error) {
		if len(data) > 0 || file == "" {
			return data, nil
		}
		return os.ReadFile(n.resolve(file))
	}
	rc := &rest.Config{Host: cl.Server, Timeout: 5 * time.Second}
	if rc.CAData, err = read(cl.CertificateAuthorityData, cl.CertificateAuthority); err != nil {
		return nil, err
	}
	if rc.CertData, err = read(ai.ClientCertificateData, ai.ClientCertificate); err != nil {
		return nil, err
	}
	if rc.KeyData, err = read(ai.ClientKeyData, ai.ClientKey); err != nil {
		return nil, err
	}
	rc.BearerToken = ai.Token
	return rc, nil
}

// resolve maps a node path under Root following symlinks inside the node
// (an absolute link target is a node path too).
func (n *Node) resolve(nodePath string) string {
	p := nodePath
	for i := 0; i < 16; i++ {
		target, err := os.Readlink(n.Path(p))
		if err != nil {
			break
		}
		if path.IsAbs(target) {
			p = target
		} else {
			p = path.Join(path.Dir(p), target)
		}
	}
	return n.Path(p)
}

// Client returns a client-go clientset for one of the node's kubeconfigs
// (node path), see RESTConfig.
func (n *Node) Client(t testing.TB, kubeconfig string) *kubernetes.Clientset {
	t.Helper()
	cs, err := n.clientset(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func (n *Node) clientset(kubeconfig string) (*kubernetes.Clientset, error) {
	rc, err := n.RESTConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(rc)
}

// WaitAPIServer polls GET /readyz with a kubeconfig of the node (node
// path) until it answers "ok", the context ends, or the kube-apiserver
// this node started has exited. The error carries the last failure.
func (n *Node) WaitAPIServer(ctx context.Context, kubeconfig string) error {
	cs, err := n.clientset(kubeconfig)
	if err != nil {
		return err
	}
	start := time.Now()
	var last error
	for {
		b, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && bytes.Equal(bytes.TrimSpace(b), []byte("ok")) {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("/readyz: %s", bytes.TrimSpace(b))
		}
		last = err
		if p := n.proc("kube-apiserver"); p != nil && p.Exited() {
			return fmt.Errorf("kube-apiserver exited (%v); last /readyz error: %v", p.Err(), last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready after %s: %v; last /readyz error: %v", time.Since(start).Round(time.Millisecond), ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// WaitReady is WaitAPIServer that also gives up when p (if not nil) has
// exited.
func (n *Node) WaitReady(ctx context.Context, t testing.TB, kubeconfig string, p *Proc) error {
	t.Helper()
	if p == nil {
		return n.WaitAPIServer(ctx, kubeconfig)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	err := n.WaitAPIServer(ctx, kubeconfig)
	if err != nil && p.Exited() {
		return fmt.Errorf("%s exited (%v): %w", p.Name, p.Err(), err)
	}
	return err
}

// ListNamespaces lists namespace names with a kubeconfig of the node.
func (n *Node) ListNamespaces(ctx context.Context, t testing.TB, kubeconfig string) ([]string, error) {
	t.Helper()
	list, err := n.Client(t, kubeconfig).CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ns := range list.Items {
		out = append(out, ns.Name)
	}
	return out, nil
}

// ServedCertificate returns the leaf certificate served on a loopback port
// (unverified: the caller checks what it needs).
func ServedCertificate(port int) (*x509.Certificate, error) {
	chain, err := ServedChain(port)
	if err != nil {
		return nil, err
	}
	return chain[0], nil
}

// ServedChain returns the certificates served on a loopback port, leaf
// first, unverified.
func ServedChain(port int) ([]*x509.Certificate, error) {
	return ServedChainAt("127.0.0.1", port)
}

// ServedChainAt returns the certificates served on host:port (a loopback
// address, e.g. a ControlPlanes node's Address), leaf first, unverified.
func ServedChainAt(host string, port int) ([]*x509.Certificate, error) {
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("%s is not a loopback address", host)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp",
		net.JoinHostPort(host, strconv.Itoa(port)), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates, nil
}

// GrantClusterAdmins creates the ClusterRoleBinding that `kubeadm init`
// creates (kubeadm:cluster-admins → cluster-admin), with super-admin.conf,
// so admin.conf has its real rights. Idempotent. (kubeadm itself would
// need to reach the apiserver for this, which the harness never lets it.)
func (n *Node) GrantClusterAdmins(ctx context.Context, t testing.TB) error {
	t.Helper()
	cs := n.Client(t, "/etc/kubernetes/super-admin.conf")
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:cluster-admins"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: "Group", Name: "kubeadm:cluster-admins", APIGroup: "rbac.authorization.k8s.io"}},
	}
	_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	// The API server authorizes from its informer's cache: the binding
	// takes effect a moment after it is created (seen under load: the
	// next request as kubernetes-admin was forbidden). Wait until it has.
	admin := n.Client(t, "/etc/kubernetes/admin.conf")
	for {
		_, err := admin.CoreV1().Namespaces().List(ctx, metav1.ListOptions{Limit: 1})
		if err == nil || !apierrors.IsForbidden(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubeadm:cluster-admins bound, but admin.conf is still forbidden: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// KubeletBootstrapped converts kubeadm's kubelet.conf (client certificate
// embedded, as `kubeadm init phase kubeconfig` writes it) into the layout of
// a node whose kubelet has rotated its certificate: the cert and key in
// /var/lib/kubelet/pki/kubelet-client-<time>.pem, kubelet-client-current.pem
// linking to it, and kubelet.conf pointing at that file (what kubeadm's
// kubelet-finalize phase does).
func (n *Node) KubeletBootstrapped(t testing.TB) {
	t.Helper()
	kc := n.Path("/etc/kubernetes/kubelet.conf")
	cfg, err := clientcmd.LoadFromFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	ai := cfg.AuthInfos[ctx.AuthInfo]
	dated := "/var/lib/kubelet/pki/kubelet-client-" + time.Now().UTC().Format("2006-01-02-15-04-05") + ".pem"
	if err := os.MkdirAll(n.Path("/var/lib/kubelet/pki"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.Path(dated), append(append([]byte{}, ai.ClientCertificateData...), ai.ClientKeyData...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dated, n.Path("/var/lib/kubelet/pki/kubelet-client-current.pem")); err != nil {
		t.Fatal(err)
	}
	ai.ClientCertificateData, ai.ClientKeyData = nil, nil
	ai.ClientCertificate = "/var/lib/kubelet/pki/kubelet-client-current.pem"
	ai.ClientKey = "/var/lib/kubelet/pki/kubelet-client-current.pem"
	if err := clientcmd.WriteToFile(*cfg, kc); err != nil {
		t.Fatal(err)
	}
}

// KubeletClient is a client-go clientset with the kubelet's credential
// (kubelet.conf, its certificate embedded or in the file it points at).
func (n *Node) KubeletClient(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	return n.Client(t, "/etc/kubernetes/kubelet.conf")
}

// KubeadmJoin lays out a second control-plane node of the same cluster:
// the CAs and service-account key of first are copied in before real
// kubeadm generates the node's own leaves, as `kubeadm join
// --control-plane` does with the certificates it downloads.
func KubeadmJoin(t testing.TB, first *Node, o Options) *Node {
	t.Helper()
	root := t.TempDir()
	if err := copySharedCA(first, root); err != nil {
		t.Fatal(err)
	}
	return kubeadmAt(t, root, o)
}
