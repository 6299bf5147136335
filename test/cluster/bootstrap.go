package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	certutil "k8s.io/client-go/util/cert"
	csrutil "k8s.io/client-go/util/certificate/csr"

	"github.com/kubecpr/kubecpr/test/fixture"
)

// BootstrapKubeconfig is where kubeadm's drop-in points the kubelet's
// --bootstrap-kubeconfig.
const BootstrapKubeconfig = "/etc/kubernetes/bootstrap-kubelet.conf"

// GrantNodeBootstrappers creates the ClusterRoleBinding `kubeadm init
// phase bootstrap-token` makes (kubeadm:kubelet-bootstrap): kubeadm's
// node-token group may file CSRs (ClusterRole system:node-bootstrapper).
// kubeadm never talks to the apiserver in these tests, so a test that
// bootstraps kubelets creates it with super-admin.conf. kubeadm's
// auto-approval binding (kubeadm:node-autoapprove-bootstrap) is not made:
// no controller-manager runs, approval is kubecpr's.
func (n *Node) GrantNodeBootstrappers(ctx context.Context, t testing.TB) error {
	t.Helper()
	cs, err := n.clientset("/etc/kubernetes/super-admin.conf")
	if err != nil {
		return err
	}
	_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:kubelet-bootstrap"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:node-bootstrapper"},
		Subjects:   []rbacv1.Subject{{Kind: "Group", APIGroup: "rbac.authorization.k8s.io", Name: "system:bootstrappers:kubeadm:default-node-token"}},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// BootstrapKubelet is a stand-in for the kubelet of a worker, for what the
// kubelet does with its client credential when it starts: where the real
// kubelet cannot run cheaply (many workers, no cgroups to spare), it runs
// the same TLS bootstrap through the same client-go calls.
//
// RestartCommand is the worker's --kubelet-restart-command: it records a
// restart outside the tree, and the stand-in then "starts" as the kubelet
// does (pkg/kubelet/certificate/bootstrap): if the client certificate
// kubelet.conf refers to is still valid, nothing; else, with the bootstrap
// kubeconfig, it makes an ECDSA P-256 key, files a CSR named
// node-csr-<digest> (CN system:node:NAME, O system:nodes, signer
// kubernetes.io/kube-apiserver-client-kubelet, usages digital signature
// and client auth) authenticated as system:bootstrap:<token id>, waits
// for the certificate (csr.RequestCertificate, csr.WaitForCertificate,
// as the kubelet calls them), and installs it as the kubelet's file store
// does: a new kubelet-client-<date>.pem (0600) and kubelet-client-current.pem
// pointing at it.
type BootstrapKubelet struct {
	Node           *Node
	RestartCommand string
	// Intruder, when set, is a node name the stand-in also files a client
	// CSR for with the same bootstrap token on its first bootstrap (what a
	// leaked token would do): an approver must refuse it.
	Intruder string

	mu       sync.Mutex
	csrs     []string // CSRs filed, in order (the intruder's too)
	errs     []error
	restarts int
}

// StartBootstrapKubelet starts the stand-in for worker w until the test ends.
func StartBootstrapKubelet(t testing.TB, w *Node, intruder string) *BootstrapKubelet {
	t.Helper()
	if !w.IsWorker {
		t.Fatalf("StartBootstrapKubelet: %s is not a worker", w.Name)
	}
	marker := filepath.Join(t.TempDir(), "kubelet-restarts")
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	k := &BootstrapKubelet{Node: w, Intruder: intruder, RestartCommand: "echo restart >> " + shellQuote(marker)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		seen := 0
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			b, _ := os.ReadFile(marker)
			n := strings.Count(string(b), "restart\n")
			for ; seen < n; seen++ {
				k.mu.Lock()
				k.restarts++
				k.mu.Unlock()
				if err := k.start(ctx); err != nil && ctx.Err() == nil {
					k.mu.Lock()
					k.errs = append(k.errs, err)
					k.mu.Unlock()
					t.Logf("stand-in kubelet %s: %v", w.Name, err)
				}
			}
		}
	}()
	return k
}

// CSRs are the names of the CSRs the stand-in filed.
func (k *BootstrapKubelet) CSRs() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string{}, k.csrs...)
}

// Errors are what went wrong in the stand-in's starts.
func (k *BootstrapKubelet) Errors() []error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]error{}, k.errs...)
}

// Restarts counts the restarts recorded.
func (k *BootstrapKubelet) Restarts() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.restarts
}

// start is one kubelet start: bootstrap when the client certificate is no
// longer valid.
func (k *BootstrapKubelet) start(ctx context.Context) error {
	w := k.Node
	if valid, err := w.clientCertValid(); err != nil {
		return err
	} else if valid {
		return nil
	}
	if _, err := os.Stat(w.Path(BootstrapKubeconfig)); err != nil {
		return fmt.Errorf("client certificate expired and no bootstrap kubeconfig: %w", err)
	}
	cfg, err := w.RESTConfig(BootstrapKubeconfig)
	if err != nil {
		return err
	}
	cfg.Timeout = 30 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if k.Intruder != "" {
		name, _, _, err := fileNodeCSR(ctx, cs, k.Intruder)
		if err != nil {
			return fmt.Errorf("filing the intruder's CSR: %w", err)
		}
		k.mu.Lock()
		k.csrs = append(k.csrs, name)
		k.Intruder = ""
		k.mu.Unlock()
	}
	name, uid, key, err := fileNodeCSR(ctx, cs, w.Name)
	if err != nil {
		return err
	}
	k.mu.Lock()
	k.csrs = append(k.csrs, name)
	k.mu.Unlock()
	certPEM, err := csrutil.WaitForCertificate(ctx, cs, name, uid)
	if err != nil {
		return fmt.Errorf("waiting for CSR %s: %w", name, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	// As the kubelet's certificate file store: a new dated pem, then the
	// current link moved to it.
	now := time.Now()
	dated := KubeletPKIDir + "/" + fixture.KubeletPEMName(now)
	data := append(append([]byte{}, certPEM...), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...)
	if err := os.WriteFile(w.Path(dated), data, 0o600); err != nil {
		return err
	}
	tmp := w.Path(KubeletClientPEM) + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(dated, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, w.Path(KubeletClientPEM))
}

// clientCertValid reports whether the certificate kubelet.conf refers to
// is valid now (the kubelet's isClientConfigStillValid).
func (n *Node) clientCertValid() (bool, error) {
	cfg, err := n.RESTConfig(KubeletConf)
	if err != nil {
		return false, err
	}
	for rest := cfg.CertData; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return false, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return false, nil
		}
		now := time.Now()
		return now.After(c.NotBefore) && now.Before(c.NotAfter), nil
	}
}

// fileNodeCSR files a kubelet client CSR for node name as the kubelet's
// TLS bootstrap does.
func fileNodeCSR(ctx context.Context, cs kubernetes.Interface, name string) (string, types.UID, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	subject := &pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}}
	der, err := certutil.MakeCSR(key, subject, nil, nil)
	if err != nil {
		return "", "", nil, err
	}
	usages := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", "", nil, err
	}
	h := sha512.New512_256()
	h.Write(pub)
	fmt.Fprintf(h, "%s|%v|%v", subject.CommonName, subject.Organization, usages)
	csrName := "node-csr-" + base64.RawURLEncoding.EncodeToString(h.Sum(nil))
	reqName, uid, err := csrutil.RequestCertificateWithContext(ctx, cs, der, csrName, certificatesv1.KubeAPIServerClientKubeletSignerName, nil, usages, key)
	if err != nil {
		return "", "", nil, fmt.Errorf("filing CSR for %s: %w", name, err)
	}
	return reqName, uid, key, nil
}
