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
//     pod.yaml volumes, kubeconfig-cm.yaml, node-kubeconfigs.yaml);
//   - the kube-controller-manager's from
//     openshift/cluster-kube-controller-manager-operator
//     (pkg/operator/starter.go deploymentSecrets and CertSecrets; bindata
//     assets/kube-controller-manager/pod.yaml volumes; assets/config/
//     defaultconfig.yaml cluster-signing-cert-file; targetconfigcontroller
//     --tls-cert-file of the revision's serving-cert);
//   - etcd's from openshift/cluster-etcd-operator (bindata/etcd/pod.yaml:
//     the cert dir etcd-certs and its secrets/etcd-all-certs/
//     etcd-{peer,serving,serving-metrics}-NODE.{crt,key}; docs/
//     etcd-tls-assets.md: the subjects, signers and SANs).
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
	"strings"
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
	// KCMRevision and EtcdRevision are the current kube-controller-manager
	// and etcd revisions (default 5 and 3: each operator counts its own).
	KCMRevision, EtcdRevision int
	// OtherMasters are the other control-plane nodes: etcd-all-certs holds
	// their etcd certificates too (every member's, on every member).
	OtherMasters []string
	Now          time.Time // default time.Now()
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
	// The kube-controller-manager's unrevisioned cert dir and manifest.
	KCMCerts    = StaticPodResources + "/kube-controller-manager-certs"
	KCMManifest = "/etc/kubernetes/manifests/kube-controller-manager-pod.yaml"
	// etcd's unrevisioned cert dir (the pod's cert-dir), the secret that
	// holds every member's certificates, and its manifest.
	EtcdCerts    = StaticPodResources + "/etcd-certs"
	EtcdAllCerts = EtcdCerts + "/secrets/etcd-all-certs"
	EtcdManifest = "/etc/kubernetes/manifests/etcd-pod.yaml"
)

// RevisionDir is the node path of a kube-apiserver revision.
func RevisionDir(n int) string {
	return StaticPodResources + "/kube-apiserver-pod-" + strconv.Itoa(n)
}

// KCMRevisionDir is the node path of a kube-controller-manager revision.
func KCMRevisionDir(n int) string {
	return StaticPodResources + "/kube-controller-manager-pod-" + strconv.Itoa(n)
}

// EtcdRevisionDir is the node path of an etcd revision.
func EtcdRevisionDir(n int) string {
	return StaticPodResources + "/etcd-pod-" + strconv.Itoa(n)
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
	both   bool // client and server usages (etcd's peer and serving certificates)
	ca     bool // a signer itself (the kube-controller-manager's csr-signer)
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

// kcmCertSecrets are the kube-controller-manager's unrevisioned certificate
// secrets (cluster-kube-controller-manager-operator starter.go
// CertSecrets): its client certificate, which its kubeconfig uses, and
// csr-signer, the signer it signs approved CSRs with
// (--cluster-signing-cert-file, defaultconfig.yaml), in
// kube-controller-manager-certs/secrets/NAME/tls.*.
var kcmCertSecrets = []leaf{
	{secret: "kube-controller-manager-client-cert-key", signer: "kube-control-plane-signer", cn: "system:kube-controller-manager"},
	{secret: "csr-signer", signer: "csr-signer-signer", cn: "kube-csr-signer_@TIME", ca: true},
}

// kcmRevisionSecrets are its revisioned certificate secrets (starter.go
// deploymentSecrets): serving-cert, from the service CA, which the
// targetconfigcontroller passes as --tls-cert-file.
var kcmRevisionSecrets = []leaf{
	{secret: "serving-cert", signer: "service-serving-signer", cn: "kube-controller-manager.openshift-kube-controller-manager.svc",
		dns: []string{"kube-controller-manager.openshift-kube-controller-manager.svc", "kube-controller-manager.openshift-kube-controller-manager.svc.cluster.local"}, server: true},
}

// etcdLeaves are a member's certificates in etcd-all-certs, by the key
// prefix (cluster-etcd-operator docs/etcd-tls-assets.md): peer and serving
// from etcd-signer, serving-metrics from etcd-metric-signer.
func etcdLeaves(nodeName, ip string) []leaf {
	return []leaf{
		{secret: "etcd-peer-" + nodeName, signer: "etcd-signer", cn: "system:etcd-peer:etcd-client", org: []string{"system:etcd-peers"},
			dns: []string{"localhost", ip}, ips: []string{ip}, both: true},
		{secret: "etcd-serving-" + nodeName, signer: "etcd-signer", cn: "system:etcd-server:etcd-client", org: []string{"system:etcd-servers"},
			dns: []string{"etcd.kube-system.svc", "etcd.kube-system.svc.cluster.local", "etcd.openshift-etcd.svc", "etcd.openshift-etcd.svc.cluster.local", "localhost", ip},
			ips: []string{"127.0.0.1", "::1", ip}, both: true},
		{secret: "etcd-serving-metrics-" + nodeName, signer: "etcd-metric-signer", cn: "system:etcd-metric:etcd-client", org: []string{"system:etcd-metrics"},
			dns: []string{"etcd.kube-system.svc", "etcd.kube-system.svc.cluster.local", "etcd.openshift-etcd.svc", "etcd.openshift-etcd.svc.cluster.local", "localhost", ip},
			ips: []string{"127.0.0.1", "::1", ip}, both: true},
	}
}

// KCMCertSecretNames are the kube-controller-manager-certs secrets with a
// certificate.
func KCMCertSecretNames() []string { return secretNames(kcmCertSecrets) }

// KCMRevisionSecretNames are its revisioned secrets with a certificate.
func KCMRevisionSecretNames() []string { return secretNames(kcmRevisionSecrets) }

// EtcdCertNames are the etcd-all-certs certificates of one member (each a
// NAME.crt and NAME.key).
func EtcdCertNames(nodeName string) []string { return secretNames(etcdLeaves(nodeName, "")) }

func secretNames(ls []leaf) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.secret)
	}
	return out
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
	"csr-signer-signer", "service-serving-signer", "etcd-metric-signer",
}

// signerCN names the signers that do not belong to the kube-apiserver
// operator as their own operators do (etcd-tls-assets.md shows
// "CN = etcd-signer" and "CN = etcd-metric-signer"; the service CA is
// "openshift-service-serving-signer@TIME").
var signerCN = map[string]string{
	"csr-signer-signer":      "openshift-kube-controller-manager-operator_csr-signer-signer@%d",
	"service-serving-signer": "openshift-service-serving-signer@%d",
	"etcd-signer":            "etcd-signer",
	"etcd-metric-signer":     "etcd-metric-signer",
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
	if o.KCMRevision == 0 {
		o.KCMRevision = 5
	}
	if o.EtcdRevision == 0 {
		o.EtcdRevision = 3
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

func newCA(name string, w Window) (*CA, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	// library-go names its signers "<namespace>_<name>@<unix time>".
	cn := fmt.Sprintf("openshift-kube-apiserver-operator_%s@%d", name, w.NotBefore.Unix())
	if f, ok := signerCN[name]; ok {
		cn = f
		if strings.Contains(f, "%d") {
			cn = fmt.Sprintf(f, w.NotBefore.Unix())
		}
	}
	tmpl := &x509.Certificate{SerialNumber: serial(),
		Subject:   pkix.Name{CommonName: cn},
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
	switch {
	case l.ca:
		tmpl.IsCA, tmpl.ExtKeyUsage = true, nil
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	case l.both:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	case l.server:
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
	if err := g.write(KubeAPIServerManifest, podManifest(o.Revision), 0o644); err != nil {
		return err
	}
	if err := g.kubeControllerManager(); err != nil {
		return err
	}
	return g.etcd()
}

// kubeControllerManager lays out the kube-controller-manager's static pod
// resources as its installer does: the unrevisioned cert dir, two
// revisions with the current one's manifest.
func (g *gen) kubeControllerManager() error {
	o := g.o
	for _, l := range kcmCertSecrets {
		if l.ca {
			l.cn = fmt.Sprintf("kube-csr-signer_@%d", o.Leaf.NotBefore.Unix())
		}
		c, k, err := sign(g.cas[l.signer], l, o.Leaf)
		if err != nil {
			return err
		}
		if err := g.tlsSecret(KCMCerts+"/secrets/"+l.secret, c, k); err != nil {
			return err
		}
	}
	for _, cm := range []struct{ name, signer string }{{"client-ca", "kube-control-plane-signer"}, {"aggregator-client-ca", "aggregator-client-signer"}} {
		if err := g.write(KCMCerts+"/configmaps/"+cm.name+"/ca-bundle.crt", certPEM(g.cas[cm.signer].Cert), 0o644); err != nil {
			return err
		}
	}
	for _, rev := range []int{o.KCMRevision - 1, o.KCMRevision} {
		dir := KCMRevisionDir(rev)
		for _, l := range kcmRevisionSecrets {
			c, k, err := sign(g.cas[l.signer], l, o.Leaf)
			if err != nil {
				return err
			}
			if err := g.tlsSecret(dir+"/secrets/"+l.secret, c, k); err != nil {
				return err
			}
		}
		// The service account signing key: a key, no certificate.
		sa, err := newKey()
		if err != nil {
			return err
		}
		sak, err := keyPEM(sa)
		if err != nil {
			return err
		}
		if err := g.write(dir+"/secrets/service-account-private-key/service-account.key", sak, 0o600); err != nil {
			return err
		}
		// Its kubeconfig (kubeconfig-cm.yaml): the client certificate of
		// the cert dir, as mounted in the pod.
		cfg := clientcmdapi.NewConfig()
		cfg.Clusters["lb-int"] = &clientcmdapi.Cluster{Server: "https://api-int.ocp.example:6443",
			CertificateAuthority: "/etc/kubernetes/static-pod-resources/configmaps/serviceaccount-ca/ca-bundle.crt"}
		cfg.AuthInfos["kube-controller-manager"] = &clientcmdapi.AuthInfo{
			ClientCertificate: "/etc/kubernetes/static-pod-certs/secrets/kube-controller-manager-client-cert-key/tls.crt",
			ClientKey:         "/etc/kubernetes/static-pod-certs/secrets/kube-controller-manager-client-cert-key/tls.key"}
		cfg.Contexts["kube-controller-manager"] = &clientcmdapi.Context{Cluster: "lb-int", AuthInfo: "kube-controller-manager"}
		cfg.CurrentContext = "kube-controller-manager"
		kc, err := clientcmd.Write(*cfg)
		if err != nil {
			return err
		}
		if err := g.write(dir+"/configmaps/controller-manager-kubeconfig/kubeconfig", kc, 0o644); err != nil {
			return err
		}
		if err := g.write(dir+"/kube-controller-manager-pod.yaml", staticPodManifest("kube-controller-manager", "openshift-kube-controller-manager", rev), 0o644); err != nil {
			return err
		}
	}
	return g.write(KCMManifest, staticPodManifest("kube-controller-manager", "openshift-kube-controller-manager", o.KCMRevision), 0o644)
}

// etcd lays out etcd's static pod resources: etcd-all-certs with every
// member's certificates in the unrevisioned cert dir (the copy the pod
// uses) and in the current revision, the CA bundles, the manifest.
func (g *gen) etcd() error {
	o := g.o
	files := map[string][]byte{}
	for i, name := range append([]string{o.NodeName}, o.OtherMasters...) {
		ip := o.KubeletNodeAddress
		if i > 0 {
			ip = fmt.Sprintf("192.0.2.%d", 10+i) // documentation addresses: never a real host
		}
		for _, l := range etcdLeaves(name, ip) {
			c, k, err := sign(g.cas[l.signer], l, o.Leaf)
			if err != nil {
				return err
			}
			kp, err := keyPEM(k)
			if err != nil {
				return err
			}
			files[l.secret+".crt"], files[l.secret+".key"] = certPEM(c), kp
		}
	}
	for _, dir := range []string{EtcdAllCerts, EtcdRevisionDir(o.EtcdRevision) + "/secrets/etcd-all-certs"} {
		for f, data := range files {
			if err := g.write(dir+"/"+f, data, 0o600); err != nil {
				return err
			}
		}
	}
	for _, cm := range []struct{ name, signer string }{{"etcd-serving-ca", "etcd-signer"}, {"etcd-peer-client-ca", "etcd-signer"},
		{"etcd-metrics-proxy-serving-ca", "etcd-metric-signer"}, {"etcd-metrics-proxy-client-ca", "etcd-metric-signer"}} {
		for _, dir := range []string{EtcdCerts, EtcdRevisionDir(o.EtcdRevision)} {
			if err := g.write(dir+"/configmaps/"+cm.name+"/ca-bundle.crt", certPEM(g.cas[cm.signer].Cert), 0o644); err != nil {
				return err
			}
		}
	}
	if err := g.write(EtcdRevisionDir(o.EtcdRevision)+"/etcd-pod.yaml", staticPodManifest("etcd", "openshift-etcd", o.EtcdRevision), 0o644); err != nil {
		return err
	}
	return g.write(EtcdManifest, staticPodManifest("etcd", "openshift-etcd", o.EtcdRevision), 0o644)
}

// staticPodManifest is another operator's static pod as its installer
// writes it: the revision label and the two hostPath volumes
// (bindata pod.yaml: resource-dir NAME-pod-REVISION, cert-dir NAME-certs).
func staticPodManifest(name, namespace string, rev int) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  namespace: %[2]s
  labels:
    app: %[1]s
    %[1]s: "true"
    revision: "%[3]d"
spec:
  hostNetwork: true
  containers:
  - name: %[1]s
    image: quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0000000000000000000000000000000000000000000000000000000000000000
    volumeMounts:
    - mountPath: /etc/kubernetes/static-pod-resources
      name: resource-dir
    - mountPath: /etc/kubernetes/static-pod-certs
      name: cert-dir
  volumes:
  - hostPath:
      path: /etc/kubernetes/static-pod-resources/%[1]s-pod-%[3]d
    name: resource-dir
  - hostPath:
      path: /etc/kubernetes/static-pod-resources/%[1]s-certs
    name: cert-dir
`, name, namespace, rev))
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
