// Package inventory lists every credential on a kubeadm control-plane node
// and judges each one: expiry, signing CA, key match, and whether it names
// this node.
package inventory

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"path"
	"sort"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/kubecpr/kubecpr/recovery/distro"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// Kind of a credential.
type Kind string

const (
	KindCert           Kind = "certificate"     // pki .crt/.key pair
	KindKubeconfig     Kind = "kubeconfig"      // client cert in a kubeadm kubeconfig
	KindKubeletClient  Kind = "kubelet-client"  // kubelet-client-current.pem
	KindKubeletServing Kind = "kubelet-serving" // kubelet.crt (self-signed by the kubelet)
	KindUserKubeconfig Kind = "user-kubeconfig" // ~/.kube/config that trusts this cluster
	// KindKubeletServer is kubelet-server-current.pem, the serving
	// certificate a kubelet with serverTLSBootstrap requests through a
	// kubelet-serving CSR. kubecpr never writes it: the kubelet requests a
	// new one when it starts, and the csr stage approves that CSR.
	KindKubeletServer Kind = "kubelet-server"
	// OpenShift 4 (BuildOpenShift): the bootstrap kubeconfig (a token; its
	// CA bundle is what expires) and the certificates the cluster
	// operators sync onto a control-plane node, which kubecpr lists and
	// never renews.
	KindBootstrapKubeconfig Kind = "bootstrap-kubeconfig"
	KindOperatorManaged     Kind = "operator-managed"
)

// Item is one certificate on the node.
type Item struct {
	Name     string
	Kind     Kind
	Path     string // node path of the certificate (or kubeconfig)
	KeyPath  string // node path of the key, when separate
	CAName   string // "ca", "front-proxy-ca", "etcd-ca", or "" for self-signed
	Optional bool   // absent is fine (super-admin.conf before 1.29, ...)

	Cert     *x509.Certificate
	Key      crypto.Signer
	Status   pki.Status
	Problems []string
	// External is true when the signing CA has no key on the node.
	External bool
	Store    Store
}

// CAItem is one certificate authority.
type CAItem struct {
	Name     string
	CertPath string
	KeyPath  string
	CA       *pki.CA
	Status   pki.Status
	Problems []string
}

// External reports whether the CA key is absent from the node.
func (c *CAItem) External() bool { return c.CA == nil || c.CA.Key == nil }

// Inventory is the judged list of credentials on a node at a moment.
type Inventory struct {
	Node    *node.Node
	Cluster *node.Cluster
	Now     time.Time
	Warn    time.Duration
	Items   []*Item
	CAs     []*CAItem
	// ServiceAccount problems (sa.key / sa.pub), empty when fine.
	SAProblems []string
	// Notes are things seen and deliberately left alone (a user
	// kubeconfig that authenticates with a token or an exec plugin).
	Notes []string
	// Worker is true for a kubeadm worker node: no control-plane static
	// pods and no cluster CA key, so its only credentials are the kubelet's.
	// On OpenShift: a node without static pod resources.
	Worker bool
	// OpenShift is true for an OpenShift 4 node (BuildOpenShift): its
	// control-plane certificates belong to the cluster operators, and
	// kubecpr's kubeadm pipeline must not act on it.
	OpenShift bool
}

// IsWorker reports whether the node under n is a kubeadm worker: it has
// the cluster CA certificate and a kubelet credential, but neither the CA
// key nor a kube-apiserver manifest nor any control-plane leaf.
func IsWorker(n *node.Node, pkiDir, manifestsDir string) bool {
	for _, p := range []string{
		path.Join(pkiDir, "ca.key"), path.Join(pkiDir, "apiserver.crt"),
		path.Join(manifestsDir, "kube-apiserver.yaml"), path.Join(node.KubernetesDir, "admin.conf"),
	} {
		if n.Exists(p) {
			return false
		}
	}
	return n.Exists(path.Join(node.KubernetesDir, "kubelet.conf"))
}

// leaf describes one kubeadm pki leaf: name as kubeadm prints it, base
// path under the pki dir, signing CA.
type leaf struct{ name, base, ca string }

var kubeadmLeaves = []leaf{
	{"apiserver", "apiserver", "ca"},
	{"apiserver-etcd-client", "apiserver-etcd-client", "etcd-ca"},
	{"apiserver-kubelet-client", "apiserver-kubelet-client", "ca"},
	{"etcd-healthcheck-client", "etcd/healthcheck-client", "etcd-ca"},
	{"etcd-peer", "etcd/peer", "etcd-ca"},
	{"etcd-server", "etcd/server", "etcd-ca"},
	{"front-proxy-client", "front-proxy-client", "front-proxy-ca"},
}

var kubeadmCAs = []leaf{
	{"ca", "ca", ""},
	{"etcd-ca", "etcd/ca", ""},
	{"front-proxy-ca", "front-proxy-ca", ""},
}

// KubeconfigNames are the kubeconfigs kubeadm writes, in its order.
var KubeconfigNames = []string{"admin.conf", "controller-manager.conf", "kubelet.conf", "scheduler.conf", "super-admin.conf"}

// ErrUnknownLayout is returned when the node does not look like kubeadm's.
var ErrUnknownLayout = errors.New("unknown layout")

// Build reads and judges every credential on the node.
func Build(n *node.Node, c *node.Cluster, now time.Time, warn time.Duration) (*Inventory, error) {
	if d, _ := distro.Detect(n); d.Kind == distro.OpenShift {
		return BuildOpenShift(n, c, now, warn)
	}
	inv := &Inventory{Node: n, Cluster: c, Now: now, Warn: warn}
	pkiDir := ""
	if c != nil {
		pkiDir = c.PKIDir
	}
	if pkiDir == "" {
		pkiDir = node.DefaultPKIDir
	}
	if !n.Exists(path.Join(pkiDir, "ca.crt")) {
		return nil, fmt.Errorf("%s: %w: no %s/ca.crt under --root %s; this does not look like a kubeadm control-plane node "+
			"(pass --root for a copy of a node, or --config with certificatesDir if the PKI lives elsewhere)",
			n.Path(path.Join(pkiDir, "ca.crt")), ErrUnknownLayout, pkiDir, n.Root)
	}

	manifests := node.ManifestsDir
	if c != nil && c.StaticPodPath != "" {
		manifests = c.StaticPodPath
	}
	inv.Worker = IsWorker(n, pkiDir, manifests)
	cas := map[string]*CAItem{}
	for _, l := range kubeadmCAs {
		if inv.Worker && l.name != "ca" {
			continue // a worker has the cluster CA certificate only
		}
		ci := &CAItem{Name: l.name, CertPath: path.Join(pkiDir, l.base+".crt"), KeyPath: path.Join(pkiDir, l.base+".key")}
		inv.CAs = append(inv.CAs, ci)
		cas[l.name] = ci
		store := &PairStore{Node: n, CertPath: ci.CertPath, KeyPath: ci.KeyPath}
		cert, key, err := store.Load()
		switch {
		case isNotExist(err):
			ci.Status = pki.StatusMissing
			ci.Problems = append(ci.Problems, ci.CertPath+" is missing")
			continue
		case err != nil && cert == nil:
			ci.Status = pki.StatusInvalid
			ci.Problems = append(ci.Problems, err.Error())
			continue
		case err != nil:
			// The key is there but cannot be used: not "external CA mode"
			// (no key file at all), which would send the operator to
			// --csr-dir for a CA whose key is on the node.
			ci.Problems = append(ci.Problems, err.Error()+"; the CA key is needed to sign: fix its type or permissions, or restore it from a backup "+
				"(a CA managed outside the cluster has no key file on the node at all)")
		}
		ci.CA = &pki.CA{Name: l.name, Cert: cert, Key: key}
		ci.Status = pki.StatusAt(cert, now, warn)
		if err != nil {
			ci.Status = pki.StatusInvalid
		}
		if !cert.IsCA {
			ci.Status = pki.StatusInvalid
			ci.Problems = append(ci.Problems, ci.CertPath+" is not a CA certificate (basicConstraints CA:FALSE)")
		}
		if key != nil && !pki.KeyMatches(cert.PublicKey, key) {
			ci.Status = pki.StatusInvalid
			ci.Problems = append(ci.Problems, ci.KeyPath+" does not match "+ci.CertPath)
		}
		if ci.Status == pki.StatusExpired {
			ci.Problems = append(ci.Problems, fmt.Sprintf("the %s CA expired on %s: every certificate it signed is untrusted; "+
				"kubecpr renews leaves from it only after re-issuing it with its own key: --renew-ca (see docs/expired-ca.md)", l.name, cert.NotAfter.UTC().Format(time.RFC3339)))
		}
	}

	for _, l := range kubeadmLeaves {
		if inv.Worker {
			break
		}
		it := &Item{Name: l.name, Kind: KindCert, Path: path.Join(pkiDir, l.base+".crt"),
			KeyPath: path.Join(pkiDir, l.base+".key"), CAName: l.ca}
		it.Store = &PairStore{Node: n, CertPath: it.Path, KeyPath: it.KeyPath}
		inv.add(it, cas)
	}
	kubeletRef := "" // the rotating pem kubelet.conf refers to, if it does
	for _, name := range KubeconfigNames {
		if inv.Worker && name != "kubelet.conf" {
			continue
		}
		p := path.Join(node.KubernetesDir, name)
		it := &Item{Name: name, Kind: KindKubeconfig, Path: p, CAName: "ca", Optional: name == "super-admin.conf"}
		it.Store = &KubeconfigStore{Node: n, Path: p, Trust: inv.caCerts}
		if name == "kubelet.conf" {
			// kubelet.conf usually points at the rotating pem: then the pem
			// is the credential, listed on its own below — also when it is
			// gone (a deleted /var/lib/kubelet/pki).
			if ks, ok := it.Store.(*KubeconfigStore); ok && refersToFile(ks) {
				if kubeletRef = referencedCert(ks); kubeletRef == node.KubeletCurrent || n.Exists(kubeletRef) {
					continue
				}
			}
		}
		inv.add(it, cas)
	}
	if n.Exists(node.KubeletCurrent) || kubeletRef == node.KubeletCurrent {
		it := &Item{Name: "kubelet-client-current.pem", Kind: KindKubeletClient, Path: node.KubeletCurrent, CAName: "ca"}
		it.Store = &KubeletPEMStore{Node: n, Link: node.KubeletCurrent}
		inv.add(it, cas)
		if it.Status == pki.StatusMissing && !n.Exists(node.KubeletCurrent) {
			it.Problems = []string{fmt.Sprintf("%s refers to %s, which is missing (was /var/lib/kubelet/pki deleted?): "+
				"the kubelet cannot authenticate; kubecpr run issues it a new client certificate from the cluster CA",
				path.Join(node.KubernetesDir, "kubelet.conf"), node.KubeletCurrent)}
		}
	}
	inv.addKubeletServer("ca", cas, "`kubecpr run` restarts the kubelet (bounce stage) and its csr stage approves the kubelet-serving CSR "+
		"after checking the node's names and addresses")
	servingPath := path.Join(node.KubeletPKIDir, "kubelet.crt")
	// A kubelet that has bootstrapped (kubelet.conf refers to its rotating
	// pem, or only the pem is left) serves with the self-signed kubelet.crt
	// it made at its first start, unless it serves with a bootstrapped or
	// given certificate: listed as missing when gone (a deleted pki dir).
	bootstrapped := kubeletRef == node.KubeletCurrent || !n.Exists(path.Join(node.KubernetesDir, "kubelet.conf")) && n.Exists(node.KubeletCurrent)
	if n.Exists(servingPath) || bootstrapped && selfSignedServing(n) {
		it := &Item{Name: "kubelet.crt", Kind: KindKubeletServing, Path: servingPath,
			KeyPath: path.Join(node.KubeletPKIDir, "kubelet.key")}
		it.Store = &PairStore{Node: n, CertPath: it.Path, KeyPath: it.KeyPath}
		inv.add(it, cas)
		if it.Status == pki.StatusMissing {
			it.Problems = []string{servingPath + " is missing: the kubelet serves with this self-signed certificate and makes one only when it starts; " +
				"kubecpr run re-creates it"}
		}
	}
	for _, p := range n.UserKubeconfigs() {
		ks := &KubeconfigStore{Node: n, Path: p, Trust: inv.caCerts}
		if cas["ca"].CA == nil || !trustsCA(ks, cas["ca"].CA.Cert) {
			continue
		}
		// The context of this cluster: the current one when it is, else
		// the first (by name) whose cluster trusts this CA. Only its user
		// is renewed; the other clusters' entries are left as they are.
		if ctxName, current := contextOf(ks, cas["ca"].CA.Cert); !current && ctxName != "" {
			ks.Context = ctxName
			inv.Notes = append(inv.Notes, fmt.Sprintf("%s: its current context is another cluster; context %q is this cluster's, and only its user is checked and renewed", p, ctxName))
		}
		if how := nonCertAuth(ks); how != "" {
			inv.Notes = append(inv.Notes, fmt.Sprintf("%s authenticates with %s, not a client certificate: kubecpr leaves it alone", p, how))
			continue
		}
		it := &Item{Name: p, Kind: KindUserKubeconfig, Path: p, CAName: "ca", Store: ks}
		inv.add(it, cas)
	}
	if !inv.Worker {
		inv.checkSA(pkiDir)
	}
	return inv, nil
}

// KubeletServerCurrent is the kubelet's rotating serving certificate with
// serverTLSBootstrap: a link to kubelet-server-<time>.pem (certificate and
// key), as kubelet-client-current.pem is for the client certificate.
const KubeletServerCurrent = node.KubeletPKIDir + "/kubelet-server-current.pem"

// addKubeletServer lists kubelet-server-current.pem when the kubelet has
// one (or a link to one that is gone). recovery says what brings a new one
// on this kind of node.
func (inv *Inventory) addKubeletServer(caName string, cas map[string]*CAItem, recovery string) {
	n := inv.Node
	if _, err := n.Lstat(KubeletServerCurrent); err != nil {
		if servingBootstrap(n, node.KubeletConfig) {
			inv.Notes = append(inv.Notes, fmt.Sprintf("%s has serverTLSBootstrap but there is no %s yet: the kubelet requests it "+
				"with a kubelet-serving CSR when it starts; %s", node.KubeletConfig, KubeletServerCurrent, recovery))
		}
		return
	}
	it := &Item{Name: "kubelet-server-current.pem", Kind: KindKubeletServer, Path: KubeletServerCurrent, CAName: caName}
	it.Store = &KubeletPEMStore{Node: n, Link: KubeletServerCurrent}
	inv.add(it, cas)
	what := "the kubelet serves its API (logs, exec, metrics, probes through the API server) with it"
	renew := "with serverTLSBootstrap the kubelet requests a new one itself when it restarts (a kubelet-serving CSR), and it is " +
		"issued once that CSR is approved: " + recovery
	switch it.Status {
	case pki.StatusMissing:
		it.Problems = []string{fmt.Sprintf("%s points at a file that is gone: %s; %s", KubeletServerCurrent, what, renew)}
	case pki.StatusExpired:
		it.Problems = append(it.Problems, fmt.Sprintf("%s expired on %s: %s; %s", KubeletServerCurrent,
			it.Cert.NotAfter.UTC().Format(time.RFC3339), what, renew))
	case pki.StatusExpiring:
		it.Problems = append(it.Problems, fmt.Sprintf("%s expires on %s: a kubelet that can reach the API server rotates it by itself; "+
			"if it cannot, %s", KubeletServerCurrent, it.Cert.NotAfter.UTC().Format(time.RFC3339), renew))
	}
}

// servingBootstrap reports whether the kubelet configuration at p sets
// serverTLSBootstrap.
func servingBootstrap(n *node.Node, p string) bool {
	data, err := n.ReadFile(p)
	if err != nil {
		return false
	}
	var kc struct {
		ServerTLSBootstrap bool `json:"serverTLSBootstrap"`
	}
	return yaml.Unmarshal(data, &kc) == nil && kc.ServerTLSBootstrap
}

// nonCertAuth names how a kubeconfig's current user authenticates when it
// is not with a client certificate ("" when it is, or when unreadable: the
// inventory then reports the problem).
func nonCertAuth(ks *KubeconfigStore) string {
	cfg, err := ks.Config()
	if err != nil {
		return ""
	}
	ai, _, err := ks.auth(cfg)
	if err != nil || len(ai.ClientCertificateData) > 0 || ai.ClientCertificate != "" {
		return ""
	}
	switch {
	case ai.Exec != nil:
		return "an exec credential plugin (" + ai.Exec.Command + ")"
	case ai.AuthProvider != nil:
		return "the auth provider " + ai.AuthProvider.Name
	case ai.Token != "" || ai.TokenFile != "":
		return "a bearer token"
	case ai.Username != "":
		return "a username and password"
	}
	return ""
}

// referencedCert is the node path of the client certificate file a
// kubeconfig's current user refers to (relative to the kubeconfig's
// directory, as kubectl reads it).
func referencedCert(ks *KubeconfigStore) string {
	cfg, err := ks.Config()
	if err != nil {
		return ""
	}
	ai, _, err := ks.auth(cfg)
	if err != nil || ai.ClientCertificate == "" {
		return ""
	}
	return ks.ref(ai.ClientCertificate)
}

// selfSignedServing reports whether the kubelet serves with the
// self-signed kubelet.crt it makes itself: no serverTLSBootstrap and no
// tlsCertFile in its configuration.
func selfSignedServing(n *node.Node) bool {
	data, err := n.ReadFile(node.KubeletConfig)
	if err != nil {
		return true
	}
	var kc struct {
		ServerTLSBootstrap bool   `json:"serverTLSBootstrap"`
		TLSCertFile        string `json:"tlsCertFile"`
	}
	if err := yaml.Unmarshal(data, &kc); err != nil {
		return true
	}
	return !kc.ServerTLSBootstrap && kc.TLSCertFile == ""
}

func refersToFile(ks *KubeconfigStore) bool {
	cfg, err := ks.Config()
	if err != nil {
		return false
	}
	ai, _, err := ks.auth(cfg)
	return err == nil && len(ai.ClientCertificateData) == 0 && ai.ClientCertificate != ""
}

// contextOf is the kubeconfig's context whose cluster trusts ca: the
// current one (current true) when it does, else the first by name.
func contextOf(ks *KubeconfigStore, ca *x509.Certificate) (string, bool) {
	cfg, err := ks.Config()
	if err != nil {
		return "", false
	}
	trusts := func(ctxName string) bool {
		c, ok := cfg.Contexts[ctxName]
		if !ok {
			return false
		}
		cl, ok := cfg.Clusters[c.Cluster]
		return ok && clusterTrusts(cl.CertificateAuthorityData, ca)
	}
	if trusts(cfg.CurrentContext) {
		return cfg.CurrentContext, true
	}
	if _, ok := cfg.Contexts[cfg.CurrentContext]; !ok && len(cfg.AuthInfos) == 1 {
		return "", true // currentAuth's single-user fallback
	}
	names := make([]string, 0, len(cfg.Contexts))
	for name := range cfg.Contexts {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if trusts(name) {
			return name, false
		}
	}
	return "", false
}

// clusterTrusts reports whether CA data holds ca or a certificate of the
// same CA (same subject and key: --renew-ca).
func clusterTrusts(data []byte, ca *x509.Certificate) bool {
	if bytes.Contains(data, bytes.TrimSpace(pki.EncodeCertificate(ca))) {
		return true
	}
	certs, _ := pki.ParseCertificates(data)
	for _, c := range certs {
		if bytes.Equal(c.RawSubject, ca.RawSubject) && bytes.Equal(c.RawSubjectPublicKeyInfo, ca.RawSubjectPublicKeyInfo) {
			return true
		}
	}
	return false
}

func trustsCA(ks *KubeconfigStore, ca *x509.Certificate) bool {
	cfg, err := ks.Config()
	if err != nil {
		return false
	}
	caPEM := pki.EncodeCertificate(ca)
	for _, cl := range cfg.Clusters {
		if bytes.Contains(cl.CertificateAuthorityData, bytes.TrimSpace(caPEM)) {
			return true
		}
		// The same CA re-issued (--renew-ca: same subject, same key)
		// is the same trust.
		certs, _ := pki.ParseCertificates(cl.CertificateAuthorityData)
		for _, c := range certs {
			if bytes.Equal(c.RawSubject, ca.RawSubject) && bytes.Equal(c.RawSubjectPublicKeyInfo, ca.RawSubjectPublicKeyInfo) {
				return true
			}
		}
	}
	return false
}

func (inv *Inventory) add(it *Item, cas map[string]*CAItem) {
	cert, key, err := it.Store.Load()
	switch {
	case isNotExist(err):
		if it.Optional {
			return
		}
		it.Status = pki.StatusMissing
		msg := it.Path + " is missing"
		var fe *FileError
		if errors.As(err, &fe) {
			msg = fe.Error() // a file it refers to is missing: name that one
		}
		it.Problems = append(it.Problems, msg)
		inv.Items = append(inv.Items, it)
		return
	case err != nil && cert == nil:
		it.Status = pki.StatusInvalid
		it.Problems = append(it.Problems, err.Error())
		inv.Items = append(inv.Items, it)
		return
	case err != nil:
		it.Status = pki.StatusInvalid
		it.Problems = append(it.Problems, err.Error())
	}
	it.Cert, it.Key = cert, key
	st := pki.StatusAt(cert, inv.Now, inv.Warn)
	if it.Status == "" {
		it.Status = st
	}
	if key == nil && err == nil {
		it.Status = pki.StatusInvalid
		kp := it.KeyPath
		if kp == "" {
			kp = it.Path
		}
		it.Problems = append(it.Problems, kp+": private key is missing")
	}
	if key != nil && !pki.KeyMatches(cert.PublicKey, key) {
		it.Status = pki.StatusInvalid
		kp := it.KeyPath
		if kp == "" {
			kp = it.Path
		}
		it.Problems = append(it.Problems, fmt.Sprintf("%s: private key does not match the certificate in %s (restore the pair from a backup, or renew with --rotate-keys)", kp, it.Path))
	}
	if ca := cas[it.CAName]; it.CAName != "" {
		switch {
		case ca == nil || ca.CA == nil:
			it.Problems = append(it.Problems, fmt.Sprintf("signing CA %s is missing or unreadable", it.CAName))
			it.Status = pki.StatusInvalid
		default:
			it.External = ca.CA.Key == nil
			if err := ca.CA.Verify(cert); err != nil {
				it.Status = pki.StatusInvalid
				it.Problems = append(it.Problems, it.Path+": "+err.Error())
			}
		}
	}
	inv.checkIdentity(it)
	inv.Items = append(inv.Items, it)
}

// checkIdentity flags certificates meant for another node.
func (inv *Inventory) checkIdentity(it *Item) {
	c := inv.Cluster
	if c == nil || it.Cert == nil {
		return
	}
	var probs []string
	switch it.Name {
	case "apiserver", "etcd-server", "etcd-peer":
		probs = c.NodeSANsFit(it.Cert)
	case "kubelet-client-current.pem", "kubelet.conf", "kubelet-server-current.pem", "kubelet kubeconfig":
		want := "system:node:" + c.NodeName
		if c.NodeName != "" && it.Cert.Subject.CommonName != want {
			probs = append(probs, fmt.Sprintf("CN is %q, want %q (a kubelet credential of another node?)", it.Cert.Subject.CommonName, want))
		}
	}
	if len(probs) > 0 {
		it.Status = pki.StatusInvalid
		for _, p := range probs {
			it.Problems = append(it.Problems, it.Path+": "+p)
		}
	}
}

func (inv *Inventory) checkSA(pkiDir string) {
	keyPath, pubPath := path.Join(pkiDir, "sa.key"), path.Join(pkiDir, "sa.pub")
	kdata, kerr := inv.Node.ReadFile(keyPath)
	pdata, perr := inv.Node.ReadFile(pubPath)
	if kerr != nil {
		inv.SAProblems = append(inv.SAProblems, keyPath+": "+kerr.Error())
	}
	if perr != nil {
		inv.SAProblems = append(inv.SAProblems, pubPath+": "+perr.Error())
	}
	if kerr != nil || perr != nil {
		return
	}
	key, err := pki.ParsePrivateKey(kdata)
	if err != nil {
		inv.SAProblems = append(inv.SAProblems, keyPath+": "+err.Error())
		return
	}
	pub, err := pki.ParsePublicKey(pdata)
	if err != nil {
		inv.SAProblems = append(inv.SAProblems, pubPath+": "+err.Error())
		return
	}
	if !pki.KeyMatches(pub, key) {
		inv.SAProblems = append(inv.SAProblems, pubPath+" does not match "+keyPath+": service account tokens would not verify")
	}
}

// Find returns the item with the given name.
func (inv *Inventory) Find(name string) *Item {
	for _, it := range inv.Items {
		if it.Name == name {
			return it
		}
	}
	return nil
}

// CA returns the CA with the given name.
func (inv *Inventory) CA(name string) *CAItem {
	for _, c := range inv.CAs {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Worst returns the most severe status over items and CAs.
func (inv *Inventory) Worst() pki.Status {
	worst := pki.StatusOK
	for _, it := range inv.Items {
		if it.Status.Severity() > worst.Severity() {
			worst = it.Status
		}
	}
	for _, c := range inv.CAs {
		if c.Status == pki.StatusMissing && c.Name != "ca" {
			continue
		}
		if c.Status.Severity() > worst.Severity() {
			worst = c.Status
		}
	}
	if len(inv.SAProblems) > 0 && worst.Severity() < 2 {
		worst = pki.StatusInvalid
	}
	return worst
}

// Sorted returns items sorted by name, the way kubeadm prints them.
func (inv *Inventory) Sorted() []*Item {
	out := append([]*Item(nil), inv.Items...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ServerOf returns the server URL of a kubeconfig's current context.
func ServerOf(n *node.Node, p string) (string, error) {
	k, err := n.Kubeconfig(p)
	if err != nil {
		return "", err
	}
	if k.Cluster == nil {
		return "", fmt.Errorf("%s: cluster %q not defined", p, k.Context.Cluster)
	}
	return k.Server(), nil
}

// caCerts are the CA certificates of the inventory, as UseCA leaves them.
func (inv *Inventory) caCerts() []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range inv.CAs {
		if c.CA != nil && c.CA.Cert != nil {
			out = append(out, c.CA.Cert)
		}
	}
	return out
}

// UseCA judges the inventory against ca as the CA named name: the CA
// certificate a run is about to write in place of the one on disk (same
// key). The CA's own status is then that of the new certificate.
func (inv *Inventory) UseCA(name string, ca *pki.CA) {
	for _, c := range inv.CAs {
		if c.Name == name {
			c.CA = ca
			c.Status = pki.StatusAt(ca.Cert, inv.Now, inv.Warn)
			c.Problems = nil
		}
	}
}
