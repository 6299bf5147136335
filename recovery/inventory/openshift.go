package inventory

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/kubecpr/kubecpr/recovery/distro"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// OpenShift's certificate secrets on a control-plane node, by the
// cluster-kube-apiserver-operator's own names (pkg/operator/starter.go):
// the unrevisioned CertSecrets synced to kube-apiserver-certs/secrets, and
// the revisioned RevisionSecrets of the current kube-apiserver-pod-N.
// Only the secrets that hold a tls.crt are listed; optional ones
// (user-serving-cert-NNN) are listed when present.
var (
	openshiftCertSecrets = []string{
		"aggregator-client", "localhost-serving-cert-certkey", "service-network-serving-certkey",
		"external-loadbalancer-serving-certkey", "internal-loadbalancer-serving-certkey",
		"control-plane-node-admin-client-cert-key", "check-endpoints-client-cert-key", "kubelet-client",
		"user-serving-cert", "user-serving-cert-000", "user-serving-cert-001", "user-serving-cert-002",
		"user-serving-cert-003", "user-serving-cert-004", "user-serving-cert-005", "user-serving-cert-006",
		"user-serving-cert-007", "user-serving-cert-008", "user-serving-cert-009",
	}
	openshiftRevisionSecrets = []string{"etcd-client", "localhost-recovery-serving-certkey"}
	// The kube-controller-manager's, by its operator's names
	// (openshift/cluster-kube-controller-manager-operator
	// pkg/operator/starter.go): CertSecrets in
	// kube-controller-manager-certs/secrets (its client certificate, and
	// csr-signer, the signer of the CSRs it approves:
	// --cluster-signing-cert-file), and the revisioned serving-cert, from
	// the service CA and optional there (--tls-cert-file,
	// targetconfigcontroller).
	kcmCertSecrets     = []string{"kube-controller-manager-client-cert-key", "csr-signer"}
	kcmRevisionSecrets = []string{"serving-cert"}
	// etcd's certificates of a member in etcd-all-certs
	// (openshift/cluster-etcd-operator bindata/etcd/pod.yaml).
	etcdMemberCerts   = []string{"etcd-peer", "etcd-serving", "etcd-serving-metrics"}
	openshiftOptional = map[string]bool{
		"user-serving-cert": true, "user-serving-cert-000": true, "user-serving-cert-001": true, "user-serving-cert-002": true,
		"user-serving-cert-003": true, "user-serving-cert-004": true, "user-serving-cert-005": true, "user-serving-cert-006": true,
		"user-serving-cert-007": true, "user-serving-cert-008": true, "user-serving-cert-009": true,
	}
)

// operatorNote is what every operator-managed item says when it is not ok.
const operatorNote = "they belong to the cluster operators and kubecpr does not renew them: since OpenShift 4.2 the " +
	"cert-regeneration controllers in the kube-apiserver and kube-controller-manager static pods regenerate expired ones once the kubelet runs the pods " +
	"(watch with `oc --kubeconfig " + distro.LocalhostRecoveryKubeconfig + " get clusteroperators kube-apiserver kube-controller-manager`); " +
	"etcd's peer, serving and metrics certificates are issued by the cluster-etcd-operator's cert signer through the API, " +
	"not by a controller on the node (`oc get clusteroperator etcd`)"

// BuildOpenShift reads and judges the credentials of an OpenShift 4 node:
// the kubelet's client and serving certificates, its kubeconfig, the
// bootstrap kubeconfig, the kubelet's client CA bundle and, on a
// control-plane node, the localhost-recovery kubeconfig and the
// kube-apiserver's certificates of the current revision.
func BuildOpenShift(n *node.Node, c *node.Cluster, now time.Time, warn time.Duration) (*Inventory, error) {
	inv := &Inventory{Node: n, Cluster: c, Now: now, Warn: warn, OpenShift: true}
	cas := map[string]*CAItem{}
	inv.Worker = !n.Exists(distro.StaticPodResources)

	// The CA bundle the kubelet verifies its clients with (the API
	// server's kubelet-client certificate): listed, never renewed.
	if n.Exists(distro.OpenShiftKubeletCA) {
		ci := &CAItem{Name: "kubelet-ca", CertPath: distro.OpenShiftKubeletCA}
		inv.CAs = append(inv.CAs, ci)
		if data, err := n.ReadFile(ci.CertPath); err != nil {
			ci.Status, ci.Problems = pki.StatusInvalid, []string{err.Error()}
		} else if cert, err := soonestCert(data); err != nil {
			ci.Status, ci.Problems = pki.StatusInvalid, []string{ci.CertPath + ": " + err.Error()}
		} else {
			ci.CA = &pki.CA{Name: ci.Name, Cert: cert}
			ci.Status = pki.StatusAt(cert, now, warn)
			if ci.Status == pki.StatusExpired {
				ci.Problems = append(ci.Problems, fmt.Sprintf("%s (the soonest-expiring certificate of the bundle) expired on %s: the kubelet "+
					"refuses the API server's kubelet client certificate; the seed's recovery copies the kube-apiserver-to-kubelet-client-ca "+
					"config map here: `oc get configmap kube-apiserver-to-kubelet-client-ca -n openshift-kube-apiserver-operator "+
					"--template='{{ index .data \"ca-bundle.crt\" }}' > %s`", ci.CertPath, cert.NotAfter.UTC().Format(time.RFC3339), ci.CertPath))
			}
		}
	}

	// The kubelet: its kubeconfig refers to kubelet-client-current.pem.
	kk := &Item{Name: "kubelet kubeconfig", Kind: KindKubeconfig, Path: distro.OpenShiftKubeletKubeconfig}
	kk.Store = &KubeconfigStore{Node: n, Path: kk.Path}
	if n.Exists(kk.Path) {
		inv.add(kk, cas)
		if ref := referencedCert(kk.Store.(*KubeconfigStore)); kk.Status != pki.StatusOK && ref == node.KubeletCurrent {
			kk.Problems = []string{fmt.Sprintf("%s is %s: it uses %s (below)", kk.Path, kk.Status, node.KubeletCurrent)}
		} else if kk.Status != pki.StatusOK {
			kk.Problems = append(kk.Problems, openshiftKubeletClientFix(kk))
		}
	}
	if _, err := n.Lstat(node.KubeletCurrent); err == nil || n.Exists(distro.OpenShiftKubeletKubeconfig) {
		it := &Item{Name: "kubelet-client-current.pem", Kind: KindKubeletClient, Path: node.KubeletCurrent}
		it.Store = &KubeletPEMStore{Node: n, Link: node.KubeletCurrent}
		inv.add(it, cas)
		if it.Status != pki.StatusOK {
			it.Problems = append(it.Problems, openshiftKubeletClientFix(it))
		}
	}
	inv.addKubeletServer("", cas, "`kubecpr openshift-node` restarts the kubelet and approves that CSR after checking the node's "+
		"names and addresses (or `oc get csr` and `oc adm certificate approve NAME`)")
	if !servingBootstrap(n, distro.OpenShiftKubeletConfig) && !n.Exists(KubeletServerCurrent) {
		inv.Notes = append(inv.Notes, distro.OpenShiftKubeletConfig+" does not set serverTLSBootstrap: the kubelet serves with a certificate kubecpr does not list")
	}

	inv.addBootstrapKubeconfig()

	if !inv.Worker {
		rk := &Item{Name: "localhost-recovery kubeconfig", Kind: KindKubeconfig, Path: distro.LocalhostRecoveryKubeconfig}
		rk.Store = &KubeconfigStore{Node: n, Path: rk.Path}
		inv.add(rk, cas)
		if rk.Status != pki.StatusOK {
			rk.Problems = append(rk.Problems, rk.Path+" is "+string(rk.Status)+": this is how kubecpr (and the cert-regeneration controllers) reach the local API server "+
				"while the other certificates are expired; it comes from the node-kubeconfigs secret of openshift-kube-apiserver: "+
				"kubecpr openshift-node needs another kubeconfig then (--kubeconfig)")
		}
		for _, s := range openshiftCertSecrets {
			inv.addOperatorPair("kube-apiserver-certs/"+s, path.Join(distro.KubeAPIServerCerts, "secrets", s), openshiftOptional[s], cas)
		}
		rev, ok, err := distro.CurrentRevision(n, distro.KubeAPIServerPodPrefix)
		if err != nil {
			return nil, err
		}
		if ok {
			for _, s := range openshiftRevisionSecrets {
				inv.addOperatorPair(fmt.Sprintf("%s-%d/%s", distro.KubeAPIServerPodPrefix, rev.N, s), path.Join(rev.Dir, "secrets", s), false, cas)
			}
		} else {
			inv.Notes = append(inv.Notes, fmt.Sprintf("no %s-N revision under %s: the kube-apiserver's revisioned certificates are not listed",
				distro.KubeAPIServerPodPrefix, distro.StaticPodResources))
		}
		if err := inv.addKubeControllerManager(cas); err != nil {
			return nil, err
		}
		if err := inv.addEtcd(cas); err != nil {
			return nil, err
		}
		inv.noteOperatorManaged()
	}
	return inv, nil
}

// addKubeControllerManager lists the kube-controller-manager's
// certificates: the unrevisioned ones, and the current revision's serving
// certificate. A node without its static pod resources has none listed,
// with a note.
func (inv *Inventory) addKubeControllerManager(cas map[string]*CAItem) error {
	n := inv.Node
	if !n.Exists(distro.KubeControllerManagerCerts) {
		inv.Notes = append(inv.Notes, fmt.Sprintf("no %s: the kube-controller-manager's certificates are not listed", distro.KubeControllerManagerCerts))
		return nil
	}
	for _, s := range kcmCertSecrets {
		inv.addOperatorPair("kube-controller-manager-certs/"+s, path.Join(distro.KubeControllerManagerCerts, "secrets", s), false, cas)
	}
	rev, ok, err := distro.CurrentRevision(n, distro.KubeControllerManagerPodPrefix)
	if err != nil {
		return err
	}
	if !ok {
		inv.Notes = append(inv.Notes, fmt.Sprintf("no %s-N revision under %s: the kube-controller-manager's serving certificate is not listed",
			distro.KubeControllerManagerPodPrefix, distro.StaticPodResources))
		return nil
	}
	for _, s := range kcmRevisionSecrets {
		inv.addOperatorPair(fmt.Sprintf("%s-%d/%s", distro.KubeControllerManagerPodPrefix, rev.N, s), path.Join(rev.Dir, "secrets", s), true, cas)
	}
	return nil
}

// addEtcd lists this member's etcd certificates in etcd-all-certs (the
// other members' are there too, for their own pods: not this node's).
// Without the node's name every member's are listed.
func (inv *Inventory) addEtcd(cas map[string]*CAItem) error {
	n := inv.Node
	if !n.Exists(distro.EtcdAllCerts) {
		inv.Notes = append(inv.Notes, fmt.Sprintf("no %s: etcd's certificates are not listed", distro.EtcdAllCerts))
		return nil
	}
	var names []string
	if c := inv.Cluster; c != nil && c.NodeName != "" {
		for _, kind := range etcdMemberCerts {
			names = append(names, kind+"-"+c.NodeName)
		}
	} else {
		ents, err := os.ReadDir(n.Path(distro.EtcdAllCerts))
		if err != nil {
			return fmt.Errorf("%s: %w", distro.EtcdAllCerts, err)
		}
		for _, e := range ents {
			if name, ok := strings.CutSuffix(e.Name(), ".crt"); ok {
				names = append(names, name)
			}
		}
	}
	for _, name := range names {
		inv.addOperatorFiles("etcd-certs/etcd-all-certs/"+name, path.Join(distro.EtcdAllCerts, name+".crt"), path.Join(distro.EtcdAllCerts, name+".key"), false, cas)
	}
	return nil
}

// openshiftKubeletClientFix says how the kubelet's client certificate
// comes back on OpenShift.
func openshiftKubeletClientFix(it *Item) string {
	return fmt.Sprintf("%s is %s: the kubelet gets a new client certificate through the bootstrap kubeconfig %s "+
		"(the node-bootstrapper service account) once it restarts without a usable one and its CSR is approved: "+
		"`kubecpr openshift-node` restarts the kubelet (setting an unusable certificate aside first) and approves the CSR "+
		"(by hand: stop the kubelet, remove /var/lib/kubelet/pki and %s, start it, `oc adm certificate approve NAME`)",
		it.Path, it.Status, distro.OpenShiftBootstrapKubeconfig, distro.OpenShiftKubeletKubeconfig)
}

// addOperatorPair lists one tls.crt/tls.key secret the operator synced.
// What is wrong with it goes into one note for all of them
// (noteOperatorManaged), not a problem each.
func (inv *Inventory) addOperatorPair(name, dir string, optional bool, cas map[string]*CAItem) {
	inv.addOperatorFiles(name, path.Join(dir, "tls.crt"), path.Join(dir, "tls.key"), optional, cas)
}

// addOperatorFiles lists one operator-managed certificate and its key.
func (inv *Inventory) addOperatorFiles(name, crt, key string, optional bool, cas map[string]*CAItem) {
	it := &Item{Name: name, Kind: KindOperatorManaged, Path: crt, KeyPath: key, Optional: optional, External: true}
	it.Store = &PairStore{Node: inv.Node, CertPath: it.Path, KeyPath: it.KeyPath}
	inv.add(it, cas)
	it.External = true // no CA key on the node: the operator's signers live in the cluster
}

// noteOperatorManaged says once what happens to the operator-managed
// certificates that are not ok.
func (inv *Inventory) noteOperatorManaged() {
	bad := map[pki.Status][]string{}
	var order []pki.Status
	for _, it := range inv.Items {
		if it.Kind != KindOperatorManaged || it.Status == pki.StatusOK {
			continue
		}
		if len(bad[it.Status]) == 0 {
			order = append(order, it.Status)
		}
		bad[it.Status] = append(bad[it.Status], it.Name)
	}
	if len(order) == 0 {
		return
	}
	var parts []string
	for _, st := range order {
		parts = append(parts, fmt.Sprintf("%d %s (%s)", len(bad[st]), st, strings.Join(bad[st], ", ")))
	}
	inv.Notes = append(inv.Notes, fmt.Sprintf("operator-managed certificates under %s: %s; %s",
		distro.StaticPodResources, strings.Join(parts, "; "), operatorNote))
}

// addBootstrapKubeconfig lists the kubelet's bootstrap kubeconfig. It
// authenticates with the node-bootstrapper service account's token; what
// can expire is that token (when it is a bound token with an exp claim)
// and the CA bundle it trusts the API server with: the item's certificate
// is the bundle's soonest-expiring one.
func (inv *Inventory) addBootstrapKubeconfig() {
	n := inv.Node
	p := distro.OpenShiftBootstrapKubeconfig
	it := &Item{Name: "bootstrap kubeconfig", Kind: KindBootstrapKubeconfig, Path: p, External: true}
	inv.Items = append(inv.Items, it)
	if !n.Exists(p) {
		it.Status = pki.StatusMissing
		it.Problems = []string{p + " is missing: the kubelet cannot request a new client certificate; the seed's recovery " +
			"writes it with `recover-kubeconfig.sh > " + p + "` on a master, or copy it from another node of the same pool"}
		return
	}
	k, err := n.Kubeconfig(p)
	if err != nil || k.Config == nil {
		it.Status = pki.StatusInvalid
		it.Problems = []string{fmt.Sprintf("%s: %v (restore it from a backup or another node of the same pool)", p, err)}
		return
	}
	ai := k.User
	if ai == nil || (ai.Token == "" && ai.TokenFile == "") {
		it.Status = pki.StatusInvalid
		it.Problems = []string{p + ": the current user has no token: the kubelet cannot bootstrap with it (the machine-config server " +
			"writes it with the node-bootstrapper service account's token)"}
		return
	}
	if k.Cluster == nil || len(k.Cluster.CertificateAuthorityData) == 0 && k.Cluster.CertificateAuthority == "" {
		it.Status = pki.StatusInvalid
		it.Problems = []string{p + ": no certificate-authority-data: the kubelet cannot verify the API server"}
		return
	}
	caData := k.Cluster.CertificateAuthorityData
	if len(caData) == 0 {
		if caData, err = n.ReadFile(k.Ref(k.Cluster.CertificateAuthority)); err != nil {
			it.Status = pki.StatusInvalid
			it.Problems = []string{fmt.Sprintf("%s: certificate-authority %s: %v", p, k.Cluster.CertificateAuthority, err)}
			return
		}
	}
	cert, err := soonestCert(caData)
	if err != nil {
		it.Status = pki.StatusInvalid
		it.Problems = []string{p + ": certificate-authority-data: " + err.Error()}
		return
	}
	it.Cert = cert
	it.Status = pki.StatusAt(cert, inv.Now, inv.Warn)
	if it.Status == pki.StatusExpired {
		it.Problems = append(it.Problems, fmt.Sprintf("%s: a certificate of the CA bundle it trusts the API server with expired on %s: "+
			"write it anew from a working cluster with `recover-kubeconfig.sh > %s` (seed step 9)", p, cert.NotAfter.UTC().Format(time.RFC3339), p))
	}
	if exp, ok := tokenExpiry(ai.Token); ok {
		switch {
		case !inv.Now.Before(exp):
			it.Status = pki.StatusExpired
			it.Problems = append(it.Problems, fmt.Sprintf("%s: its token expired on %s: the kubelet cannot bootstrap with it; "+
				"write it anew with `recover-kubeconfig.sh > %s`", p, exp.UTC().Format(time.RFC3339), p))
		case exp.Sub(inv.Now) < inv.Warn && it.Status == pki.StatusOK:
			it.Status = pki.StatusExpiring
		}
	}
}

// tokenExpiry reads the exp claim of a JWT bearer token without verifying
// it (only the node-bootstrapper's own token is ever read here).
func tokenExpiry(tok string) (time.Time, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == 0 {
		return time.Time{}, false
	}
	return time.Unix(claims.Exp, 0), true
}

// soonestCert is the certificate of a PEM bundle that expires first.
func soonestCert(data []byte) (*x509.Certificate, error) {
	certs, err := pki.ParseCertificates(data)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, pki.ErrNoCertificate
	}
	sort.SliceStable(certs, func(i, j int) bool { return certs[i].NotAfter.Before(certs[j].NotAfter) })
	return certs[0], nil
}
