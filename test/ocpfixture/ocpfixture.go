// Package ocpfixture writes OpenShift 4 shaped node trees for tests: the
// paths and file names the operators write on a node, with throwaway
// certificates in chosen validity windows (expired by default). Nothing is
// invented: every path comes from the operators' public code, named in
// docs/openshift.md —
//
//   - the kubelet's files from openshift/machine-config-operator
//     (templates/*/01-*-kubelet: kubelet.service flags and
//     /etc/kubernetes/kubelet.conf; pkg/server: the bootstrap kubeconfig
//     /etc/kubernetes/kubeconfig with cluster "local", user and context
//     "kubelet" and the node-bootstrapper token), and what the kubelet
//     itself writes after bootstrapping (/var/lib/kubelet/kubeconfig with
//     "default-cluster", "default-auth", "default-context" pointing at
//     /var/lib/kubelet/pki/kubelet-client-current.pem; the rotating
//     kubelet-{client,server}-<time>.pem with their -current.pem links);
//   - the control-plane files from openshift/library-go's static pod
//     installer (static-pod-resources/<pod>-N/{configmaps,secrets}/NAME/KEY,
//     <pod>.yaml in the revision and in /etc/kubernetes/manifests with the
//     "revision" label) and openshift/cluster-kube-apiserver-operator
//     (pkg/operator/starter.go RevisionSecrets and CertSecrets; bindata
//     pod.yaml volumes, kubeconfig-cm.yaml, node-kubeconfigs.yaml).
//
// Keys are ECDSA P-256 (the kubelet's own choice; the operators use RSA,
// which only makes generation slower). Expired fixtures are generated,
// never committed.
package ocpfixture

import (
	"crypto"
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
	"path"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Window is a validity period.
type Window struct{ NotBefore, NotAfter time.Time }

// Options shape a node.
type Options struct {
	NodeName string // default "master-0" (a worker: "worker-0")
	// Master lays out a control-plane node: the kube-apiserver's static
	// pod resources and manifest besides the kubelet's files.
	Master bool
	// Revision is the current kube-apiserver revision (default 7); the one
	// before it is installed too, as on a real node.
	Revision int
	Now      time.Time // default time.Now()
	// Leaf is the validity of every leaf certificate (default: expired
	// three days before Now, issued a year before that).
	Leaf Window
	// Signer is the validity of the signers (default Now-1y .. Now+9y).
	Signer Window
	// Recovery is the validity of the localhost-recovery serving
	// certificate and of the system:admin client certificate in the node
	// kubeconfigs (default Leaf; OpenShift gives them ten years).
	Recovery *Window
	// Server is the API URL of the bootstrap and kubelet kubeconfigs
	// (default https://127.0.0.1:6443: fixtures never name a real host).
	Server string
	// BootstrapToken is the node-bootstrapper token in the bootstrap
	// kubeconfig (default a fixed throwaway string).
	BootstrapToken string
	// BootstrapCA is the CA bundle of the bootstrap kubeconfig (default
	// the generated kube-apiserver serving signers).
	BootstrapCA []byte
	// RecoveryKubeconfig replaces the generated localhost-recovery
	// kubeconfig (a test pointing it at a real API server).
	RecoveryKubeconfig []byte
	// KubeletNodeAddress is the node's IP in the kubelet serving
	// certificate (default 127.0.0.1).
	KubeletNodeAddress string
}

// Node is a generated node.
type Node struct {
	Root    string
	Options Options
	// Signers by their operator names (kubelet-signer,
	// kube-apiserver-to-kubelet-signer, ...).
	Signers map[string]*CA
}

// CA is a signer held in memory.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Path maps a node path to the host path under Root.
func (n *Node) Path(nodePath string) string {
	return filepath.Join(n.Root, filepath.FromSlash(nodePath))
}

// Paths every generated node has, and the control-plane ones.
const (
	BootstrapKubeconfig         = "/etc/kubernetes/kubeconfig"
	KubeletConfig               = "/etc/kubernetes/kubelet.conf"
	KubeletCA                   = "/etc/kubernetes/kubelet-ca.crt"
	KubeletKubeconfig           = "/var/lib/kubelet/kubeconfig"
	KubeletPKI                  = "/var/lib/kubelet/pki"
	KubeletClientCurrent        = KubeletPKI + "/kubelet-client-current.pem"
	KubeletServerCurrent        = KubeletPKI + "/kubelet-server-current.pem"
	StaticPodResources          = "/etc/kubernetes/static-pod-resources"
	KubeAPIServerCerts          = StaticPodResources + "/kube-apiserver-certs"
	LocalhostRecoveryKubeconfig = KubeAPIServerCerts + "/secrets/node-kubeconfigs/localhost-recovery.kubeconfig"
	KubeAPIServerManifest       = "/etc/kubernetes/manifests/kube-apiserver-pod.yaml"
)

// RevisionDir is the node path of a kube-apiserver revision.
func RevisionDir(n int) string {
	return StaticPodResources + "/kube-apiserver-pod-" + strconv.Itoa(n)
}

// leaf is one certificate secret the operator syncs onto a node.
type leaf struct {
	secret string // secret name: the directory under secrets/
	signer string
	cn     string
	org    []string
	dns    []string
	ips    []string
	server bool
}

// certSecrets are the kube-apiserver's unrevisioned certificate secrets
// (cluster-kube-apiserver-operator starter.go CertSecrets, the ones that
// hold a certificate), synced to kube-apiserver-certs/secrets/NAME/tls.*.
var certSecrets = []leaf{
	{secret: "aggregator-client", signer: "aggregator-client-signer", cn: "system:openshift-aggregator"},
	{secret: "localhost-serving-cert-certkey", signer: "localhost-serving-signer", cn: "127.0.0.1", dns: []string{"localhost"}, ips: []string{"127.0.0.1", "::1"}, server: true},
	{secret: "service-network-serving-certkey", signer: "service-network-serving-signer", cn: "172.30.0.1",
		dns: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "openshift", "openshift.default", "openshift.default.svc", "openshift.default.svc.cluster.local"},
		ips: []string{"172.30.0.1"}, server: true},
	{secret: "external-loadbalancer-serving-certkey", signer: "loadbalancer-serving-signer", cn: "api.ocp.example", dns: []string{"api.ocp.example"}, server: true},
	{secret: "internal-loadbalancer-serving-certkey", signer: "loadbalancer-serving-signer", cn: "api-int.ocp.example", dns: []string{"api-int.ocp.example"}, server: true},
	{secret: "control-plane-node-admin-client-cert-key", signer: "kube-control-plane-signer", cn: "system:control-plane-node-admin", org: []string{"system:masters"}},
	{secret: "check-endpoints-client-cert-key", signer: "kube-control-plane-signer", cn: "system:serviceaccount:openshift-kube-apiserver:check-endpoints"},
	{secret: "kubelet-client", signer: "kube-apiserver-to-kubelet-signer", cn: "system:kube-apiserver", org: []string{"kube-master"}},
}

// revisionSecrets are the revisioned certificate secrets (starter.go
// RevisionSecrets), in kube-apiserver-pod-N/secrets/NAME/tls.*.
var revisionSecrets = []leaf{
	{secret: "etcd-client", signer: "etcd-signer", cn: "etcd", org: []string{"etcd"}},
	{secret: "localhost-recovery-serving-certkey", signer: "localhost-recovery-serving-signer", cn: "localhost-recovery", dns: []string{"localhost-recovery"}, server: true},
}

// CertSecretNames are the kube-apiserver-certs secrets with a certificate.
func CertSecretNames() []string {
	var out []string
	for _, l := range certSecrets {
		out = append(out, l.secret)
	}
	return out
}

// RevisionSecretNames are the revisioned secrets with a certificate.
func RevisionSecretNames() []string {
	var out []string
	for _, l := range revisionSecrets {
		out = append(out, l.secret)
	}
	return out
}

var signerNames = []string{
	"kubelet-signer", "kube-apiserver-to-kubelet-signer", "aggregator-client-signer", "localhost-serving-signer",
	"service-network-serving-signer", "loadbalancer-serving-signer", "kube-control-plane-signer", "etcd-signer",
	"localhost-recovery-serving-signer", "admin-kubeconfig-signer",
}

func (o *Options) defaults() {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.NodeName == "" {
		o.NodeName = "worker-0"
		if o.Master {
			o.NodeName = "master-0"
		}
	}
	if o.Revision == 0 {
		o.Revision = 7
	}
	if o.Leaf.NotAfter.IsZero() {
		o.Leaf = Window{NotBefore: o.Now.AddDate(-1, 0, -3), NotAfter: o.Now.AddDate(0, 0, -3)}
	}
	if o.Signer.NotAfter.IsZero() {
		o.Signer = Window{NotBefore: o.Now.AddDate(-1, 0, -4), NotAfter: o.Now.AddDate(9, 0, 0)}
	}
	if o.Recovery == nil {
		w := o.Leaf
		o.Recovery = &w
	}
	if o.Server == "" {
		o.Server = "https://127.0.0.1:6443"
	}
	if o.BootstrapToken == "" {
		o.BootstrapToken = "throwaway-node-bootstrapper-token-for-tests"
	}
	if o.KubeletNodeAddress == "" {
		o.KubeletNodeAddress = "127.0.0.1"
	}
}

type gen struct {
	root string
	o    Options
	cas  map[string]*CA
}

// Generate writes the node tree under root.
func Generate(root string, o Options) (*Node, error) {
	o.defaults()
	g := &gen{root: root, o: o, cas: map[string]*CA{}}
	for _, name := range signerNames {
		ca, err := newCA(name, o.Signer)
		if err != nil {
			return nil, err
		}
		g.cas[name] = ca
	}
	if err := g.kubelet(); err != nil {
		return nil, err
	}
	if o.Master {
		if err := g.master(); err != nil {
			return nil, err
		}
	}
	return &Node{Root: root, Options: o, Signers: g.cas}, nil
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n.Add(n, big.NewInt(1))
}

func newCA(cn string, w Window) (*CA, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	// library-go names its signers "<namespace>_<name>@<unix time>".
	tmpl := &x509.Certificate{SerialNumber: serial(),
		Subject:   pkix.Name{CommonName: fmt.Sprintf("openshift-kube-apiserver-operator_%s@%d", cn, w.NotBefore.Unix())},
		NotBefore: w.NotBefore, NotAfter: w.NotAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: c, Key: key}, nil
}

func sign(ca *CA, l leaf, w Window) (*x509.Certificate, crypto.Signer, error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: l.cn, Organization: l.org},
		NotBefore: w.NotBefore, NotAfter: w.NotAfter, DNSNames: l.dns, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, BasicConstraintsValid: true}
	if l.server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	for _, s := range l.ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(s))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func keyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k.(*ecdsa.PrivateKey))
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

func (g *gen) write(nodePath string, data []byte, mode os.FileMode) error {
	p := filepath.Join(g.root, filepath.FromSlash(nodePath))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		return err
	}
	return os.Chmod(p, mode)
}

// secret writes a kubernetes.io/tls secret the way the installer does:
// one 0600 file per key.
func (g *gen) tlsSecret(dir string, c *x509.Certificate, k crypto.Signer) error {
	kp, err := keyPEM(k)
	if err != nil {
		return err
	}
	if err := g.write(dir+"/tls.crt", certPEM(c), 0o600); err != nil {
		return err
	}
	return g.write(dir+"/tls.key", kp, 0o600)
}

func (g *gen) kubeconfig(cluster, user, ctx, server, tlsServerName string, caData []byte, ai *clientcmdapi.AuthInfo) ([]byte, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[cluster] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caData, TLSServerName: tlsServerName}
	cfg.AuthInfos[user] = ai
	cfg.Contexts[ctx] = &clientcmdapi.Context{Cluster: cluster, AuthInfo: user}
	cfg.CurrentContext = ctx
	return clientcmd.Write(*cfg)
}

// kubeletPEMName is the kubelet's name for a rotated pem.
func kubeletPEMName(kind string, t time.Time) string {
	return "kubelet-" + kind + "-" + t.UTC().Format("2006-01-02-15-04-05") + ".pem"
}

func (g *gen) kubelet() error {
	o := g.o
	// /etc/kubernetes/kubelet.conf: the KubeletConfiguration (MCO).
	kc := fmt.Sprintf(`kind: KubeletConfiguration
apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  x509:
    clientCAFile: %s
  anonymous:
    enabled: false
cgroupDriver: systemd
clusterDomain: cluster.local
rotateCertificates: true
serverTLSBootstrap: true
staticPodPath: /etc/kubernetes/manifests
`, KubeletCA)
	if err := g.write(KubeletConfig, []byte(kc), 0o644); err != nil {
		return err
	}
	if err := g.write(KubeletCA, certPEM(g.cas["kube-apiserver-to-kubelet-signer"].Cert), 0o644); err != nil {
		return err
	}
	// The bootstrap kubeconfig (MCS: cluster "local", user/context
	// "kubelet", the node-bootstrapper token).
	bca := o.BootstrapCA
	if bca == nil {
		for _, s := range []string{"localhost-serving-signer", "service-network-serving-signer", "loadbalancer-serving-signer"} {
			bca = append(bca, certPEM(g.cas[s].Cert)...)
		}
	}
	boot, err := g.kubeconfig("local", "kubelet", "kubelet", o.Server, "", bca, &clientcmdapi.AuthInfo{Token: o.BootstrapToken})
	if err != nil {
		return err
	}
	// Mode 0644: the machine-config server's appendFileToIgnition writes
	// every file it appends with mode 420.
	if err := g.write(BootstrapKubeconfig, boot, 0o644); err != nil {
		return err
	}
	// What the kubelet wrote after bootstrapping.
	kk, err := g.kubeconfig("default-cluster", "default-auth", "default-context", o.Server, "", bca,
		&clientcmdapi.AuthInfo{ClientCertificate: KubeletClientCurrent, ClientKey: KubeletClientCurrent})
	if err != nil {
		return err
	}
	if err := g.write(KubeletKubeconfig, kk, 0o600); err != nil {
		return err
	}
	signer := g.cas["kubelet-signer"]
	client := leaf{cn: "system:node:" + o.NodeName, org: []string{"system:nodes"}}
	server := leaf{cn: "system:node:" + o.NodeName, org: []string{"system:nodes"}, dns: []string{o.NodeName}, ips: []string{o.KubeletNodeAddress}, server: true}
	for _, p := range []struct {
		kind string
		l    leaf
	}{{"client", client}, {"server", server}} {
		c, k, err := sign(signer, p.l, o.Leaf)
		if err != nil {
			return err
		}
		kp, err := keyPEM(k)
		if err != nil {
			return err
		}
		name := kubeletPEMName(p.kind, o.Leaf.NotBefore)
		if err := g.write(path.Join(KubeletPKI, name), append(certPEM(c), kp...), 0o600); err != nil {
			return err
		}
		link := filepath.Join(g.root, filepath.FromSlash(path.Join(KubeletPKI, "kubelet-"+p.kind+"-current.pem")))
		if err := os.Symlink(path.Join(KubeletPKI, name), link); err != nil {
			return err
		}
	}
	return nil
}

func (g *gen) master() error {
	o := g.o
	for _, l := range certSecrets {
		c, k, err := sign(g.cas[l.signer], l, o.Leaf)
		if err != nil {
			return err
		}
		if err := g.tlsSecret(KubeAPIServerCerts+"/secrets/"+l.secret, c, k); err != nil {
			return err
		}
	}
	// configmaps/client-ca: the bundle the API server verifies clients with.
	var clientCA []byte
	for _, s := range []string{"kubelet-signer", "kube-control-plane-signer", "admin-kubeconfig-signer"} {
		clientCA = append(clientCA, certPEM(g.cas[s].Cert)...)
	}
	if err := g.write(KubeAPIServerCerts+"/configmaps/client-ca/ca-bundle.crt", clientCA, 0o644); err != nil {
		return err
	}
	if err := g.write(KubeAPIServerCerts+"/configmaps/aggregator-client-ca/ca-bundle.crt", certPEM(g.cas["aggregator-client-signer"].Cert), 0o644); err != nil {
		return err
	}
	// node-kubeconfigs: system:admin for each way into the API server.
	admin, adminKey, err := sign(g.cas["admin-kubeconfig-signer"], leaf{cn: "system:admin", org: []string{"system:masters"}}, *o.Recovery)
	if err != nil {
		return err
	}
	akp, err := keyPEM(adminKey)
	if err != nil {
		return err
	}
	serving := append(certPEM(g.cas["localhost-serving-signer"].Cert), certPEM(g.cas["localhost-recovery-serving-signer"].Cert)...)
	for _, nk := range []struct{ file, cluster, server, sni string }{
		{"localhost.kubeconfig", "localhost", "https://localhost:6443", ""},
		{"localhost-recovery.kubeconfig", "localhost-recovery", "https://localhost:6443", "localhost-recovery"},
		{"lb-ext.kubeconfig", "lb-ext", "https://api.ocp.example:6443", ""},
		{"lb-int.kubeconfig", "lb-int", "https://api-int.ocp.example:6443", ""},
	} {
		data, err := g.kubeconfig(nk.cluster, "system:admin", "system:admin", nk.server, nk.sni, serving,
			&clientcmdapi.AuthInfo{ClientCertificateData: certPEM(admin), ClientKeyData: akp})
		if err != nil {
			return err
		}
		if nk.file == "localhost-recovery.kubeconfig" && o.RecoveryKubeconfig != nil {
			data = o.RecoveryKubeconfig
		}
		if err := g.write(KubeAPIServerCerts+"/secrets/node-kubeconfigs/"+nk.file, data, 0o600); err != nil {
			return err
		}
	}
	// Two revisions, the current one last.
	for _, rev := range []int{o.Revision - 1, o.Revision} {
		if err := g.revision(rev); err != nil {
			return err
		}
	}
	return g.write(KubeAPIServerManifest, podManifest(o.Revision), 0o644)
}

func (g *gen) revision(rev int) error {
	o := g.o
	dir := RevisionDir(rev)
	for _, l := range revisionSecrets {
		w := o.Leaf
		if l.secret == "localhost-recovery-serving-certkey" {
			w = *o.Recovery
		}
		c, k, err := sign(g.cas[l.signer], l, w)
		if err != nil {
			return err
		}
		if err := g.tlsSecret(dir+"/secrets/"+l.secret, c, k); err != nil {
			return err
		}
	}
	// The cert syncer's token (a service account token secret).
	for file, data := range map[string][]byte{"token": []byte("throwaway-localhost-recovery-client-token"),
		"namespace": []byte("openshift-kube-apiserver"), "ca.crt": certPEM(g.cas["service-network-serving-signer"].Cert)} {
		if err := g.write(dir+"/secrets/localhost-recovery-client-token/"+file, data, 0o600); err != nil {
			return err
		}
	}
	if err := g.write(dir+"/configmaps/kube-apiserver-server-ca/ca-bundle.crt",
		append(certPEM(g.cas["localhost-serving-signer"].Cert), certPEM(g.cas["localhost-recovery-serving-signer"].Cert)...), 0o644); err != nil {
		return err
	}
	syncer, err := certSyncerKubeconfig()
	if err != nil {
		return err
	}
	if err := g.write(dir+"/configmaps/kube-apiserver-cert-syncer-kubeconfig/kubeconfig", syncer, 0o644); err != nil {
		return err
	}
	if err := g.write(dir+"/configmaps/config/config.yaml", []byte("apiVersion: kubecontrolplane.config.openshift.io/v1\nkind: KubeAPIServerConfig\n"), 0o644); err != nil {
		return err
	}
	return g.write(dir+"/kube-apiserver-pod.yaml", podManifest(rev), 0o644)
}

// certSyncerKubeconfig is the cert syncer's kubeconfig (kubeconfig-cm.yaml):
// a CA file and a token file of the revision (paths as mounted in the
// pod), localhost-recovery SNI.
func certSyncerKubeconfig() ([]byte, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["loopback"] = &clientcmdapi.Cluster{Server: "https://localhost:6443", TLSServerName: "localhost-recovery",
		CertificateAuthority: StaticPodResources + "/configmaps/kube-apiserver-server-ca/ca-bundle.crt"}
	cfg.AuthInfos["kube-apiserver-cert-syncer"] = &clientcmdapi.AuthInfo{TokenFile: StaticPodResources + "/secrets/localhost-recovery-client-token/token"}
	cfg.Contexts["kube-apiserver-cert-syncer"] = &clientcmdapi.Context{Cluster: "loopback", AuthInfo: "kube-apiserver-cert-syncer"}
	cfg.CurrentContext = "kube-apiserver-cert-syncer"
	return clientcmd.Write(*cfg)
}

// podManifest is the kube-apiserver static pod as the installer writes it
// for a revision: the label and the two hostPath volumes that matter on a
// node (the revision's resource dir, the unrevisioned cert dir).
func podManifest(rev int) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: kube-apiserver
  namespace: openshift-kube-apiserver
  labels:
    app: openshift-kube-apiserver
    apiserver: "true"
    revision: "%d"
spec:
  hostNetwork: true
  containers:
  - name: kube-apiserver
    image: quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0000000000000000000000000000000000000000000000000000000000000000
    volumeMounts:
    - mountPath: /etc/kubernetes/static-pod-resources
      name: resource-dir
    - mountPath: /etc/kubernetes/static-pod-certs
      name: cert-dir
  volumes:
  - hostPath:
      path: /etc/kubernetes/static-pod-resources/kube-apiserver-pod-%d
    name: resource-dir
  - hostPath:
      path: /etc/kubernetes/static-pod-resources/kube-apiserver-certs
    name: cert-dir
`, rev, rev))
}
