package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/fixture"
)

// The kubelet's blind spots and what kubeadm would create: a deleted
// /var/lib/kubelet/pki, a missing certificate or kubeconfig, and the API
// server certificate of a node that needs more SANs.

// readPair reads a certificate (first of a chain) and its key from host paths.
func readPair(t *testing.T, certFile, keyFile string) (*x509.Certificate, []*x509.Certificate, any) {
	t.Helper()
	cb, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCertificates(cb)
	if err != nil {
		t.Fatalf("%s: %v", certFile, err)
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.ParsePrivateKey(kb)
	if err != nil {
		t.Fatalf("%s: %v", keyFile, err)
	}
	if !pki.KeyMatches(certs[0].PublicKey, key) {
		t.Errorf("%s does not match %s", keyFile, certFile)
	}
	return certs[0], certs, key
}

// chainsTo verifies cert against the CA certificate in caFile for usage.
func chainsTo(t *testing.T, cert *x509.Certificate, caFile string, usage x509.ExtKeyUsage) {
	t.Helper()
	cb, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.ParseCertificate(cb)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		t.Errorf("%s does not chain to %s at %s: %v", cert.Subject.CommonName, caFile, now, err)
	}
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode()
}

func checkReport(t *testing.T, root string, extra ...string) (inventory.Report, result) {
	t.Helper()
	r := kubecpr(t, nil, rootArgs(root, append(append([]string{"-o", "json"}, extra...), "check")...)...)
	var rep inventory.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("check -o json: %v\n%s%s", err, r.stdout, r.stderr)
	}
	return rep, r
}

func certReport(rep inventory.Report, name string) *inventory.CertReport {
	for i := range rep.Certs {
		if rep.Certs[i].Name == name {
			return &rep.Certs[i]
		}
	}
	return nil
}

// A deleted /var/lib/kubelet/pki (a step of the OpenShift procedure and of
// many forum answers): kubelet.conf points at a pem that is gone. check
// and diagnose say so; run issues the kubelet a new client certificate
// from the cluster CA in the kubelet's own layout and re-creates its
// self-signed serving pair; rollback removes them and the directory.
func TestDeletedKubeletPKI(t *testing.T) {
	root := expiredNode(t)
	if err := os.RemoveAll(filepath.Join(root, "var/lib/kubelet/pki")); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, root)

	rep, r := checkReport(t, root)
	if r.code != ExitExpired {
		t.Fatalf("check: exit %d, want %d\n%s", r.code, ExitExpired, r.stderr)
	}
	type seen struct {
		Status   pki.Status
		Problems []string
	}
	want := map[string]seen{
		"kubelet-client-current.pem": {pki.StatusMissing, []string{"/etc/kubernetes/kubelet.conf refers to /var/lib/kubelet/pki/kubelet-client-current.pem, which is missing " +
			"(was /var/lib/kubelet/pki deleted?): the kubelet cannot authenticate; kubecpr run issues it a new client certificate from the cluster CA"}},
		"kubelet.crt": {pki.StatusMissing, []string{"/var/lib/kubelet/pki/kubelet.crt is missing: the kubelet serves with this self-signed certificate " +
			"and makes one only when it starts; kubecpr run re-creates it"}},
	}
	got := map[string]seen{}
	for name := range want {
		if c := certReport(rep, name); c != nil {
			got[name] = seen{c.Status, c.Problems}
		}
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("check on a node without /var/lib/kubelet/pki (-want +got):\n%s", d)
	}
	dg := kubecpr(t, nil, rootArgs(root, "diagnose", "--offline")...)
	if !strings.Contains(dg.stdout, "kubelet.conf refers to /var/lib/kubelet/pki/kubelet-client-current.pem, which is missing") {
		t.Errorf("diagnose does not report the missing kubelet client certificate (exit %d):\n%s%s", dg.code, dg.stdout, dg.stderr)
	}

	r = kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...)
	if r.code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, w := range []string{"create directory /var/lib/kubelet/pki (missing)", "create kubelet-client-current.pem (/var/lib/kubelet/pki/kubelet-client-current.pem, missing)",
		"create the kubelet's self-signed serving certificate (/var/lib/kubelet/pki/kubelet.crt, missing)"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("run output lacks %q:\n%s", w, r.stdout)
		}
	}
	if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
		t.Fatalf("check after run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// The kubelet's layout: a dated pem (0600, certificate then key) and
	// kubelet-client-current.pem linking to it; the directory 0755.
	pkiDir := filepath.Join(root, "var/lib/kubelet/pki")
	if m := mode(t, pkiDir); m.Perm() != 0o755 || !m.IsDir() {
		t.Errorf("%s: mode %v, want drwxr-xr-x", pkiDir, m)
	}
	link := filepath.Join(pkiDir, "kubelet-client-current.pem")
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatalf("kubelet-client-current.pem is not a symlink: %v", err)
	}
	if want := "/var/lib/kubelet/pki/" + fixture.KubeletPEMName(now); target != want {
		t.Errorf("kubelet-client-current.pem -> %s, want -> %s", target, want)
	}
	dated := filepath.Join(root, target)
	if m := mode(t, dated); m.Perm() != 0o600 || !m.IsRegular() {
		t.Errorf("%s: mode %v, want -rw-------", target, m)
	}
	cert, _, key := readPair(t, dated, dated)
	chainsTo(t, cert, filepath.Join(root, "etc/kubernetes/pki/ca.crt"), x509.ExtKeyUsageClientAuth)
	type ident struct {
		CN, Curve string
		O         []string
		ExtUsage  []x509.ExtKeyUsage
	}
	gotID := ident{CN: cert.Subject.CommonName, O: cert.Subject.Organization, ExtUsage: cert.ExtKeyUsage}
	if k, ok := key.(*ecdsa.PrivateKey); ok {
		gotID.Curve = k.Curve.Params().Name
	}
	if d := cmp.Diff(ident{CN: "system:node:cp-1", Curve: elliptic.P256().Params().Name, O: []string{"system:nodes"},
		ExtUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, gotID); d != "" {
		t.Errorf("new kubelet client certificate (-want +got):\n%s", d)
	}

	// The self-signed serving pair, the kubelet's way.
	srv, chain, skey := readPair(t, filepath.Join(pkiDir, "kubelet.crt"), filepath.Join(pkiDir, "kubelet.key"))
	if m := mode(t, filepath.Join(pkiDir, "kubelet.key")); m.Perm() != 0o600 {
		t.Errorf("kubelet.key: mode %v, want 0600", m)
	}
	if len(chain) != 2 {
		t.Fatalf("kubelet.crt holds %d certificates, want the certificate and its CA", len(chain))
	}
	roots := x509.NewCertPool()
	roots.AddCert(chain[1])
	if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, DNSName: "cp-1", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("kubelet.crt does not verify for cp-1 against its own CA: %v", err)
	}
	if k, ok := skey.(*rsa.PrivateKey); !ok || k.N.BitLen() != 2048 {
		t.Errorf("kubelet.key: %T, want RSA 2048", skey)
	}
	if !strings.HasPrefix(srv.Subject.CommonName, "cp-1@") || !strings.HasPrefix(chain[1].Subject.CommonName, "cp-1-ca@") {
		t.Errorf("kubelet.crt subjects %q / %q, want cp-1@<unix> / cp-1-ca@<unix>", srv.Subject.CommonName, chain[1].Subject.CommonName)
	}

	// Rollback removes what was created, the directory included.
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if d := cmp.Diff(before, snapshot(t, root)); d != "" {
		t.Errorf("after rollback the node differs from before the run (-before +after):\n%s", d)
	}
	if _, err := os.Lstat(pkiDir); !os.IsNotExist(err) {
		t.Errorf("%s after rollback: %v, want it gone again", pkiDir, err)
	}
}

// sanSet is a certificate's SANs as sets (sorted, each once), for
// comparison: kubeadm sorts and de-duplicates, the fixture generator
// keeps its order and a repeated 127.0.0.1.
type sanSet struct {
	DNS, IPs []string
}

func sansOf(c *x509.Certificate) sanSet {
	var ips []string
	for _, ip := range c.IPAddresses {
		ips = append(ips, ip.String())
	}
	return sanSet{DNS: set(c.DNSNames), IPs: set(ips)}
}

func set(in []string) []string {
	var out []string
	for _, s := range in {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// profileOf is what kubeadm's profile fixes about a certificate.
type profileOf struct {
	Subject  string
	SANs     sanSet
	KeyUsage x509.KeyUsage
	ExtUsage []x509.ExtKeyUsage
	Key      string
}

func profile(c *x509.Certificate) profileOf {
	return profileOf{Subject: c.Subject.String(), SANs: sansOf(c), KeyUsage: c.KeyUsage, ExtUsage: c.ExtKeyUsage, Key: pki.KeyDescription(c.PublicKey)}
}

// reference generates another node with the same options: its files are
// kubeadm's profiles computed by the fixture generator, independently of
// kubecpr's code.
func reference(t *testing.T, opts ...func(*fixture.Options)) string {
	t.Helper()
	return expiredNode(t, opts...)
}

// A missing apiserver.crt/.key (moved away, as in the blog seed) is
// created from the cluster CA with kubeadm's profile for this node.
func TestRunCreatesMissingAPIServerCert(t *testing.T) {
	root := expiredNode(t)
	for _, f := range []string{"apiserver.crt", "apiserver.key"} {
		if err := os.Remove(filepath.Join(root, "etc/kubernetes/pki", f)); err != nil {
			t.Fatal(err)
		}
	}
	before := snapshot(t, root)
	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...)
	if r.code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "create apiserver (/etc/kubernetes/pki/apiserver.crt, missing)") {
		t.Errorf("the plan does not say it creates apiserver:\n%s", r.stdout)
	}
	if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
		t.Fatalf("check after run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	pkiDir := filepath.Join(root, "etc/kubernetes/pki")
	got, _, _ := readPair(t, filepath.Join(pkiDir, "apiserver.crt"), filepath.Join(pkiDir, "apiserver.key"))
	chainsTo(t, got, filepath.Join(pkiDir, "ca.crt"), x509.ExtKeyUsageServerAuth)
	if m := mode(t, filepath.Join(pkiDir, "apiserver.key")); m.Perm() != 0o600 {
		t.Errorf("apiserver.key: mode %v, want 0600", m)
	}
	if m := mode(t, filepath.Join(pkiDir, "apiserver.crt")); m.Perm() != 0o644 {
		t.Errorf("apiserver.crt: mode %v, want 0644", m)
	}
	ref := reference(t)
	wantCert, _, _ := readPair(t, filepath.Join(ref, "etc/kubernetes/pki/apiserver.crt"), filepath.Join(ref, "etc/kubernetes/pki/apiserver.key"))
	if d := cmp.Diff(profile(wantCert), profile(got)); d != "" {
		t.Errorf("created apiserver certificate vs kubeadm's profile for cp-1 (-want +got):\n%s", d)
	}
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if d := cmp.Diff(before, snapshot(t, root)); d != "" {
		t.Errorf("after rollback (-before +after):\n%s", d)
	}
}

// Every other missing pki leaf is created with its kubeadm profile (etcd
// server and peer name this node).
func TestRunCreatesMissingEtcdAndClientCerts(t *testing.T) {
	root := expiredNode(t)
	gone := []string{"etcd/server", "etcd/peer", "etcd/healthcheck-client", "apiserver-etcd-client", "apiserver-kubelet-client", "front-proxy-client"}
	for _, b := range gone {
		for _, ext := range []string{".crt", ".key"} {
			if err := os.Remove(filepath.Join(root, "etc/kubernetes/pki", b+ext)); err != nil {
				t.Fatal(err)
			}
		}
	}
	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "certs")...)
	if r.code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	ref := reference(t)
	want, got := map[string]profileOf{}, map[string]profileOf{}
	for _, b := range gone {
		w, _, _ := readPair(t, filepath.Join(ref, "etc/kubernetes/pki", b+".crt"), filepath.Join(ref, "etc/kubernetes/pki", b+".key"))
		g, _, _ := readPair(t, filepath.Join(root, "etc/kubernetes/pki", b+".crt"), filepath.Join(root, "etc/kubernetes/pki", b+".key"))
		want[b], got[b] = profile(w), profile(g)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("created leaves vs kubeadm's profiles (-want +got):\n%s", d)
	}
}

// A missing admin.conf is written the way `kubeadm init phase kubeconfig
// admin` writes it: usable against the API (server, CA, client
// certificate of kubernetes-admin in kubeadm:cluster-admins).
func TestRunCreatesMissingAdminConf(t *testing.T) {
	root := expiredNode(t)
	if err := os.Remove(filepath.Join(root, "etc/kubernetes/admin.conf")); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, root)
	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...)
	if r.code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "create admin.conf (/etc/kubernetes/admin.conf, missing)") {
		t.Errorf("the plan does not say it creates admin.conf:\n%s", r.stdout)
	}
	if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
		t.Fatalf("check after run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	p := filepath.Join(root, "etc/kubernetes/admin.conf")
	if m := mode(t, p); m.Perm() != 0o600 {
		t.Errorf("admin.conf: mode %v, want 0600", m)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	ref := reference(t)
	refData, err := os.ReadFile(filepath.Join(ref, "etc/kubernetes/admin.conf"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(root, "etc/kubernetes/pki/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	// The shape of a kubeadm admin.conf, compared with the reference one
	// (its CA replaced by this node's).
	type shape struct {
		CurrentContext, Cluster, User, Server string
		CA                                    string
		Profile                               profileOf
	}
	shapeOf := func(data []byte, ca string) shape {
		t.Helper()
		cfg, err := clientcmd.Load(data)
		if err != nil {
			t.Fatal(err)
		}
		ctx := cfg.Contexts[cfg.CurrentContext]
		if ctx == nil {
			t.Fatalf("current context %q undefined", cfg.CurrentContext)
		}
		s := shape{CurrentContext: cfg.CurrentContext, Cluster: ctx.Cluster, User: ctx.AuthInfo, CA: "not the node's CA"}
		if cl := cfg.Clusters[ctx.Cluster]; cl != nil {
			s.Server = cl.Server
			if string(cl.CertificateAuthorityData) == ca {
				s.CA = "the node's ca.crt"
			}
		}
		if ai := cfg.AuthInfos[ctx.AuthInfo]; ai != nil {
			if c, err := pki.ParseCertificate(ai.ClientCertificateData); err == nil {
				s.Profile = profile(c)
			}
		}
		return s
	}
	refCA, _ := os.ReadFile(filepath.Join(ref, "etc/kubernetes/pki/ca.crt"))
	if d := cmp.Diff(shapeOf(refData, string(refCA)), shapeOf(data, string(caPEM))); d != "" {
		t.Errorf("created admin.conf vs kubeadm's (-want +got):\n%s", d)
	}
	// Usable by client-go: TLS client credentials that chain to the CA.
	rc, err := clientcmd.RESTConfigFromKubeConfig(data)
	if err != nil {
		t.Fatalf("client-go cannot use the created admin.conf: %v", err)
	}
	if rc.Host != "https://127.0.0.1:6443" || len(rc.CAData) == 0 || len(rc.CertData) == 0 || len(rc.KeyData) == 0 {
		t.Errorf("client-go config: host %q, CA %d, cert %d, key %d bytes", rc.Host, len(rc.CAData), len(rc.CertData), len(rc.KeyData))
	}
	cert, err := pki.ParseCertificate(rc.CertData)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.ParsePrivateKey(rc.KeyData)
	if err != nil || !pki.KeyMatches(cert.PublicKey, key) {
		t.Errorf("admin.conf: client key does not match its certificate (%v)", err)
	}
	chainsTo(t, cert, filepath.Join(root, "etc/kubernetes/pki/ca.crt"), x509.ExtKeyUsageClientAuth)
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if d := cmp.Diff(before, snapshot(t, root)); d != "" {
		t.Errorf("after rollback (-before +after):\n%s", d)
	}
}

// Added SANs: the kubeadm config's apiServer.certSANs (--config) and
// --apiserver-cert-extra-sans re-issue the API server certificate with
// them added to what it had (the node reached at a new address).
func TestAPIServerExtraSANs(t *testing.T) {
	extra := []string{"10.20.30.40", "api.example.test"}
	wantSANs := func(t *testing.T) sanSet {
		// kubeadm's profile for cp-1 with those certSANs, by the fixture.
		ref := reference(t, func(o *fixture.Options) { o.CertSANs = extra })
		c, _, _ := readPair(t, filepath.Join(ref, "etc/kubernetes/pki/apiserver.crt"), filepath.Join(ref, "etc/kubernetes/pki/apiserver.key"))
		return sansOf(c)
	}(t)
	for _, tc := range []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"config certSANs", func(t *testing.T) []string {
			cfg := filepath.Join(t.TempDir(), "kubeadm.yaml")
			doc := "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\napiServer:\n  certSANs:\n  - " + strings.Join(extra, "\n  - ") + "\n"
			if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
				t.Fatal(err)
			}
			return []string{"--config", cfg, "run", "--until", "certs"}
		}},
		{"flag", func(t *testing.T) []string {
			return []string{"run", "--until", "certs", "--apiserver-cert-extra-sans", strings.Join(extra, ",")}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := expiredNode(t)
			crt := filepath.Join(root, "etc/kubernetes/pki/apiserver.crt")
			old, _, _ := readPair(t, crt, filepath.Join(root, "etc/kubernetes/pki/apiserver.key"))
			r := kubecpr(t, nil, rootArgs(root, tc.args(t)...)...)
			if r.code != 0 {
				t.Fatalf("run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout, "SANs added: api.example.test, 10.20.30.40") {
				t.Errorf("the plan does not list the added SANs:\n%s", r.stdout)
			}
			got, _, _ := readPair(t, crt, filepath.Join(root, "etc/kubernetes/pki/apiserver.key"))
			if d := cmp.Diff(wantSANs, sansOf(got)); d != "" {
				t.Errorf("apiserver SANs (-want +got):\n%s", d)
			}
			if !pki.KeyMatches(got.PublicKey, mustKey(t, filepath.Join(root, "etc/kubernetes/pki/apiserver.key"))) || old.Subject.String() != got.Subject.String() {
				t.Errorf("the re-issued certificate changed its subject or key")
			}
			if err := got.VerifyHostname("10.20.30.40"); err != nil {
				t.Error(err)
			}
		})
	}
	// Something that is neither an IP nor a DNS name stops before any change.
	root := expiredNode(t)
	before := snapshot(t, root)
	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "certs", "--apiserver-cert-extra-sans", "not a name!")...)
	if r.code == 0 || !strings.Contains(r.stderr, `"not a name!": not an IP address or an RFC 1123 DNS name`) {
		t.Errorf("a bad SAN: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if d := cmp.Diff(before, snapshot(t, root)); d != "" {
		t.Errorf("a refused run changed the node:\n%s", d)
	}
}

func mustKey(t *testing.T, p string) crypto.Signer {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	k, err := pki.ParsePrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A run that re-creates a deleted /var/lib/kubelet/pki, killed right after
// each journal record of its kubeconfigs stage (where the directory and
// the files in it are created): resume reaches the clean run's end state
// and rollback, after the resume or straight after the crash, leaves the
// node as it was — without the directory.
func TestCrashWhileRecreatingKubeletPKI(t *testing.T) {
	t.Parallel() // processes and trees of its own
	template := expiredNode(t)
	if err := os.RemoveAll(filepath.Join(template, "var/lib/kubelet/pki")); err != nil {
		t.Fatal(err)
	}
	original := snapshot(t, template)
	args := []string{"run", "--until", "kubeconfigs", "--update-user-kubeconfigs"}

	clean := copyNode(t, template)
	if r := kubecpr(t, nil, rootArgs(clean, args...)...); r.code != 0 {
		t.Fatalf("uninterrupted run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	recs := journalRecords(t, clean)
	first := 0
	for i, rec := range recs {
		if rec.Stage == "kubeconfigs" && first == 0 {
			first = i + 1
		}
	}
	if first == 0 {
		t.Fatal("no kubeconfigs stage in the journal")
	}
	wantFiles := fileSet(snapshot(t, clean))

	for k := first; k <= len(recs); k++ {
		t.Run(fmt.Sprintf("kill-after-record-%02d", k), func(t *testing.T) {
			t.Parallel() // each kill point has trees of its own
			crash := func() string {
				root := copyNode(t, template)
				r := kubecpr(t, []string{fmt.Sprintf("KUBECPR_CRASH_AFTER_RECORD=%d", k)}, rootArgs(root, args...)...)
				if !r.killed {
					t.Fatalf("not killed at record %d (exit %d)\n%s%s", k, r.code, r.stdout, r.stderr)
				}
				return root
			}
			root := crash()
			crashed := copyNode(t, root) // the state a second kill at record k leaves
			if r := kubecpr(t, nil, rootArgs(root, "resume")...); r.code != 0 {
				t.Fatalf("resume: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
				t.Fatalf("check after resume: exit %d\n%s", r.code, r.stdout)
			}
			if d := cmp.Diff(wantFiles, fileSet(snapshot(t, root))); d != "" {
				t.Errorf("files after resume differ from a clean run (-want +got):\n%s", d)
			}
			if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
				t.Fatalf("rollback after resume: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			if d := cmp.Diff(original, snapshot(t, root)); d != "" {
				t.Fatalf("rollback after resume (-original +after):\n%s", d)
			}
			root = crashed
			if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
				t.Fatalf("rollback after crash: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			if d := cmp.Diff(original, snapshot(t, root)); d != "" {
				t.Fatalf("rollback after crash (-original +after):\n%s", d)
			}
		})
	}
}

// The dated pem deleted, kubelet-client-current.pem left dangling: the
// credential is missing (not a corrupt file to restore), and run issues a
// new one, repointing the link.
func TestDanglingKubeletClientLink(t *testing.T) {
	root := expiredNode(t)
	link := filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem")
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, target)); err != nil {
		t.Fatal(err)
	}
	rep, r := checkReport(t, root)
	c := certReport(rep, "kubelet-client-current.pem")
	if r.code != ExitExpired || c == nil || c.Status != pki.StatusMissing || len(c.Problems) != 1 || !strings.Contains(c.Problems[0], "symlink points at "+target+", which does not exist") {
		t.Fatalf("check: exit %d, %+v", r.code, c)
	}
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
		t.Fatalf("check after run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if got, _ := os.Readlink(link); got == target || !strings.HasPrefix(got, "/var/lib/kubelet/pki/kubelet-client-") {
		t.Errorf("kubelet-client-current.pem -> %s (was -> %s), want a new dated pem", got, target)
	}
}
