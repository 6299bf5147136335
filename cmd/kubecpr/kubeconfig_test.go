package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/fixture"
)

// freshNode is a fixture node on the real clock (a workstation kubeconfig
// is signed on the system clock; --now is refused).
func freshNode(t *testing.T, opts ...func(*fixture.Options)) string {
	t.Helper()
	root := t.TempDir()
	n := time.Now()
	o := fixture.Options{NodeName: "cp-1", Now: n, Keys: keys,
		CA: fixture.Window{NotBefore: n.AddDate(-1, 0, 0), NotAfter: n.AddDate(9, 0, 0)}}
	for _, f := range opts {
		f(&o)
	}
	if _, err := fixture.Generate(root, o); err != nil {
		t.Fatal(err)
	}
	return root
}

// exported is a kubeconfig written by `kubeconfig export`, read back.
type exported struct {
	server string
	caPEM  []byte
	cert   *x509.Certificate
	keyPEM []byte
	raw    []byte
}

func readExported(t *testing.T, file string) exported {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(raw)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.Clusters[ctx.Cluster] == nil || cfg.AuthInfos[ctx.AuthInfo] == nil {
		t.Fatalf("%s: current context %q incomplete", file, cfg.CurrentContext)
	}
	u := cfg.AuthInfos[ctx.AuthInfo]
	cert, err := pki.ParseCertificate(u.ClientCertificateData)
	if err != nil {
		t.Fatal(err)
	}
	return exported{server: cfg.Clusters[ctx.Cluster].Server, caPEM: cfg.Clusters[ctx.Cluster].CertificateAuthorityData,
		cert: cert, keyPEM: u.ClientKeyData, raw: raw}
}

// checkChain: the certificate chains to caFile's CA for client auth now,
// and the embedded key is its key.
func (x exported) checkChain(t *testing.T, caFile string) {
	t.Helper()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(caPEM, x.caPEM) {
		t.Errorf("certificate-authority-data is not %s", caFile)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	if _, err := x.cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the client certificate does not chain to %s for client auth: %v", caFile, err)
	}
	key, err := pki.ParsePrivateKey(x.keyPEM)
	if err != nil || !pki.KeyMatches(x.cert.PublicKey, key) {
		t.Errorf("client-key-data is not the certificate's key (%v)", err)
	}
}

func TestKubeconfigExport(t *testing.T) {
	root := freshNode(t)
	out := filepath.Join(t.TempDir(), "bmctl-workspace", "c1", "c1-kubeconfig")
	start := time.Now()
	r := kubecpr(t, nil, "--root", root, "kubeconfig", "export", "--out", out, "--cluster", "c1")
	if r.code != 0 {
		t.Fatalf("export: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	st, err := os.Stat(out)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v, want mode 0600", out, st, err)
	}
	x := readExported(t, out)
	x.checkChain(t, filepath.Join(root, "etc/kubernetes/pki/ca.crt"))
	if x.cert.Subject.CommonName != "kubernetes-admin" || strings.Join(x.cert.Subject.Organization, ",") != pki.ClusterAdminsGroup {
		t.Errorf("subject %s, want CN=kubernetes-admin O=%s (the node's admin.conf, kubeadm 1.29+)", x.cert.Subject, pki.ClusterAdminsGroup)
	}
	if got := x.cert.NotAfter.Sub(x.cert.NotBefore); got < 365*24*time.Hour || got > 365*24*time.Hour+10*time.Minute {
		t.Errorf("validity %s, want one year (+ the 5 min backdate)", got)
	}
	if x.cert.NotBefore.After(start) || x.cert.NotBefore.Before(start.Add(-10*time.Minute)) {
		t.Errorf("NotBefore %s: not signed on the system clock (%s)", x.cert.NotBefore, start)
	}
	adminConf, _ := clientcmd.LoadFromFile(filepath.Join(root, "etc/kubernetes/admin.conf"))
	if want := adminConf.Clusters[adminConf.Contexts[adminConf.CurrentContext].Cluster].Server; x.server != want {
		t.Errorf("server %q, want admin.conf's %q", x.server, want)
	}
	if len(x.cert.ExtKeyUsage) != 1 || x.cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || x.cert.IsCA {
		t.Errorf("usages %v CA=%v: want a client certificate", x.cert.ExtKeyUsage, x.cert.IsCA)
	}
	// What is printed: the secret update command, never a key.
	wantCmd := "kubectl --kubeconfig ADMIN_KUBECONFIG -n cluster-c1 create secret generic c1-kubeconfig --type=cluster.x-k8s.io/secret --from-file=value=" + out +
		" --dry-run=client -o yaml | kubectl --kubeconfig ADMIN_KUBECONFIG apply -f -"
	if !strings.Contains(r.stdout, wantCmd) || !strings.Contains(r.stdout, "bmctl-workspace/c1/c1-kubeconfig") {
		t.Errorf("the output does not give the secret command %q:\n%s", wantCmd, r.stdout)
	}
	caKey, _ := os.ReadFile(filepath.Join(root, "etc/kubernetes/pki/ca.key"))
	for _, s := range []string{r.stdout, r.stderr} {
		if strings.Contains(s, "PRIVATE KEY") || bytes.Contains([]byte(s), bytes.TrimSpace(caKey)[40:80]) || strings.Contains(s, string(x.keyPEM[40:80])) {
			t.Errorf("key material in the output:\n%s", s)
		}
	}

	// An existing file is kept unless --force; --force replaces it at 0600
	// whatever mode it had.
	r = kubecpr(t, nil, "--root", root, "kubeconfig", "export", "--out", out)
	if r.code != ExitFailed || !strings.Contains(r.stderr, "--force") {
		t.Errorf("export over an existing file: exit %d, want %d naming --force\n%s", r.code, ExitFailed, r.stderr)
	}
	if again := readExported(t, out); again.cert.SerialNumber.Cmp(x.cert.SerialNumber) != 0 {
		t.Error("the existing kubeconfig was replaced without --force")
	}
	os.Chmod(out, 0o644)
	r = kubecpr(t, nil, "--root", root, "kubeconfig", "export", "--out", out, "--force", "--user", "alice",
		"--group", "dev-team", "--group", "sre", "--validity", "24h", "--server", "https://127.0.0.1:16443")
	if r.code != 0 {
		t.Fatalf("export --force: exit %d\n%s", r.code, r.stderr)
	}
	y := readExported(t, out)
	if st, _ := os.Stat(out); st.Mode().Perm() != 0o600 {
		t.Errorf("replaced with mode %v, want 0600", st.Mode().Perm())
	}
	if y.cert.SerialNumber.Cmp(x.cert.SerialNumber) == 0 || y.cert.Subject.CommonName != "alice" ||
		!containsString(y.cert.Subject.Organization, "dev-team") || !containsString(y.cert.Subject.Organization, "sre") || len(y.cert.Subject.Organization) != 2 || y.server != "https://127.0.0.1:16443" {
		t.Errorf("after --force: serial %s subject %s server %s", y.cert.SerialNumber, y.cert.Subject, y.server)
	}
	if got := y.cert.NotAfter.Sub(y.cert.NotBefore); got != 24*time.Hour+5*time.Minute {
		t.Errorf("--validity 24h: lifetime %s", got)
	}
	y.checkChain(t, filepath.Join(root, "etc/kubernetes/pki/ca.crt"))
}

// -o json|yaml: a KubeconfigExport document on stdout says what was
// written (the path, the certificate's user, groups, validity, serial,
// server, CA) and what to do with the admin cluster's secret, and holds
// nothing of the key or the kubeconfig; the text goes to stderr.
func TestKubeconfigExportDocument(t *testing.T) {
	root := freshNode(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "bmctl-workspace", "c1", "c1-kubeconfig")
	r := kubecpr(t, nil, "--root", root, "kubeconfig", "export", "--out", out, "--cluster", "c1", "-o", "json")
	if r.code != 0 {
		t.Fatalf("export -o json: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	var doc docKubeconfigExport
	decodeDoc(t, "json", r.stdout, "KubeconfigExport", &doc)
	x := readExported(t, out)
	ca := certOnDisk(t, root, "/etc/kubernetes/pki/ca.crt")
	wantCmd := "kubectl --kubeconfig ADMIN_KUBECONFIG -n cluster-c1 create secret generic c1-kubeconfig --type=cluster.x-k8s.io/secret --from-file=value=" + out +
		" --dry-run=client -o yaml | kubectl --kubeconfig ADMIN_KUBECONFIG apply -f -"
	want := docKubeconfigExport{DocMeta: DocMeta{APIVersion: "kubecpr.io/v1alpha1", Kind: "KubeconfigExport"}, Path: out,
		User: "kubernetes-admin", Groups: []string{pki.ClusterAdminsGroup}, GroupsFrom: "admin.conf",
		NotBefore: x.cert.NotBefore, NotAfter: x.cert.NotAfter, Serial: x.cert.SerialNumber.String(), Server: x.server, SignedBy: ca.Subject.CommonName}
	want.Secret.Action, want.Secret.Namespace, want.Secret.Name, want.Secret.Command = "printed", "cluster-c1", "c1-kubeconfig", wantCmd
	if d := cmp.Diff(want, doc); d != "" {
		t.Errorf("document (-want +got):\n%s", d)
	}
	if !strings.Contains(r.stderr, "wrote "+out) || !strings.Contains(r.stderr, wantCmd) {
		t.Errorf("the text report is not on stderr:\n%s", r.stderr)
	}
	caKey, _ := os.ReadFile(filepath.Join(root, "etc/kubernetes/pki/ca.key"))
	for _, secret := range [][]byte{x.keyPEM[40:80], bytes.TrimSpace(caKey)[40:80], x.raw[len(x.raw)/2 : len(x.raw)/2+40]} {
		if strings.Contains(r.stdout, string(secret)) {
			t.Errorf("the document holds key or kubeconfig material %q:\n%s", secret, r.stdout)
		}
	}

	// yaml, groups from --group, no --cluster: the secret's command has
	// placeholders and the document names no secret.
	r = kubecpr(t, nil, "--root", root, "-o", "yaml", "kubeconfig", "export", "--out", out, "--force", "--user", "alice",
		"--group", "dev-team", "--validity", "2h", "--server", "https://127.0.0.1:16443")
	if r.code != 0 {
		t.Fatalf("export -o yaml: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	doc = docKubeconfigExport{}
	decodeDoc(t, "yaml", r.stdout, "KubeconfigExport", &doc)
	y := readExported(t, out)
	if doc.User != "alice" || !cmp.Equal(doc.Groups, []string{"dev-team"}) || doc.GroupsFrom != "flag" || doc.Server != "https://127.0.0.1:16443" ||
		!doc.NotAfter.Equal(y.cert.NotAfter) || doc.NotAfter.Sub(doc.NotBefore) != 2*time.Hour+5*time.Minute || doc.Serial != y.cert.SerialNumber.String() ||
		doc.Secret.Action != "printed" || doc.Secret.Namespace != "" || doc.Secret.Name != "" || !strings.Contains(doc.Secret.Command, "cluster-CLUSTER_NAME") {
		t.Errorf("export -o yaml: %+v", doc)
	}
}

func TestKubeconfigExportRefusals(t *testing.T) {
	root := freshNode(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no --out", nil, ExitFailed, "--out FILE is required"},
		{"short validity", []string{"--out", filepath.Join(dir, "a"), "--validity", "30m"}, ExitFailed, "at least an hour"},
		{"--now", []string{"--out", filepath.Join(dir, "b")}, ExitFailed, "system clock"},
		{"secret without the admin kubeconfig", []string{"--out", filepath.Join(dir, "c"), "--update-admin-cluster-secret", "--cluster", "c1"}, ExitFailed, "--admin-kubeconfig"},
		{"bad cluster name", []string{"--out", filepath.Join(dir, "d"), "--cluster", "Not_A_Name"}, ExitFailed, "--cluster"},
		{"http server", []string{"--out", filepath.Join(dir, "e"), "--server", "http://127.0.0.1:6443"}, ExitFailed, "https://"},
		{"a directory", []string{"--out", dir}, ExitFailed, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"--root", root}
			if tc.name == "--now" {
				args = append(args, "--now", time.Now().Format(time.RFC3339))
			}
			r := kubecpr(t, nil, append(append(args, "kubeconfig", "export"), tc.args...)...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, want %d with %q\n%s", r.code, tc.code, tc.want, r.stderr)
			}
		})
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("refused exports left files: %v", ents)
	}
	// External CA: no ca.key, refused before anything is written.
	ext := freshNode(t, func(o *fixture.Options) { o.ExternalCA = true })
	r := kubecpr(t, nil, "--root", ext, "kubeconfig", "export", "--out", filepath.Join(dir, "ext"))
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "ca.key is not on this node") {
		t.Errorf("external CA: exit %d, want %d\n%s", r.code, ExitPrecondition, r.stderr)
	}
	// Before kubeadm 1.29 admin.conf was O=system:masters: the default
	// follows the node, with a note.
	old := freshNode(t, func(o *fixture.Options) { o.PreKubeadm129 = true })
	out := filepath.Join(dir, "old")
	r = kubecpr(t, nil, "--root", old, "kubeconfig", "export", "--out", out)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if x := readExported(t, out); strings.Join(x.cert.Subject.Organization, ",") != "system:masters" || !strings.Contains(r.stderr, "bypasses RBAC") {
		t.Errorf("pre-1.29 node: O=%v, stderr %q", x.cert.Subject.Organization, r.stderr)
	}
}

// The exported kubeconfig against a real kube-apiserver (real etcd) laid
// out by real kubeadm: the API server authenticates the user and groups
// the certificate names and RBAC applies to them; the Anthos admin
// cluster's secret is created, then updated in place, through client-go.
func TestKubeconfigExportAgainstRealAPIServer(t *testing.T) {
	t.Parallel() // processes and trees of its own
	n := cluster.Kubeadm(t, cluster.Options{})
	n.StartEtcd(t)
	n.StartAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := n.WaitAPIServer(ctx, "/etc/kubernetes/super-admin.conf"); err != nil {
		t.Fatal(err)
	}
	if err := n.GrantClusterAdmins(ctx, t); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	admin := filepath.Join(dir, "admin-kubeconfig")
	r := kubecpr(t, nil, "--root", n.Root, "kubeconfig", "export", "--out", admin)
	if r.code != 0 {
		t.Fatalf("export: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	x := readExported(t, admin)
	x.checkChain(t, n.Path("/etc/kubernetes/pki/ca.crt"))
	whoami := func(file string) (*kubernetes.Clientset, *authnv1.UserInfo) {
		t.Helper()
		cfg, err := clientcmd.BuildConfigFromFlags("", file)
		if err != nil {
			t.Fatal(err)
		}
		cs := kubernetes.NewForConfigOrDie(cfg)
		rev, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("%s: SelfSubjectReview: %v", file, err)
		}
		return cs, &rev.Status.UserInfo
	}
	cs, ui := whoami(admin)
	if ui.Username != "kubernetes-admin" || !containsString(ui.Groups, pki.ClusterAdminsGroup) {
		t.Errorf("the API server sees %q in %v", ui.Username, ui.Groups)
	}
	if _, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("the exported admin kubeconfig cannot list namespaces: %v", err)
	}
	// Another user and group: authenticated as named, and RBAC applies.
	dev := filepath.Join(dir, "dev")
	if r := kubecpr(t, nil, "--root", n.Root, "kubeconfig", "export", "--out", dev, "--user", "alice", "--group", "dev-team", "--validity", "2h"); r.code != 0 {
		t.Fatalf("export alice: exit %d\n%s", r.code, r.stderr)
	}
	devCS, ui := whoami(dev)
	if ui.Username != "alice" || !containsString(ui.Groups, "dev-team") || containsString(ui.Groups, pki.ClusterAdminsGroup) {
		t.Errorf("alice: the API server sees %q in %v", ui.Username, ui.Groups)
	}
	if _, err := devCS.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("alice in dev-team listing namespaces: %v, want Forbidden", err)
	}

	// The admin cluster's secret (the admin cluster is this same API
	// server): its namespace first, as Anthos makes it.
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cluster-c1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ws := filepath.Join(dir, "bmctl-workspace", "c1", "c1-kubeconfig")
	secretArgs := []string{"--root", n.Root, "kubeconfig", "export", "--out", ws, "--cluster", "c1",
		"--admin-kubeconfig", admin, "--update-admin-cluster-secret"}
	r = kubecpr(t, nil, secretArgs...)
	if r.code != 0 || !strings.Contains(r.stdout, "created secret cluster-c1/c1-kubeconfig") {
		t.Fatalf("export with the secret: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	sec, err := cs.CoreV1().Secrets("cluster-c1").Get(ctx, "c1-kubeconfig", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	file, _ := os.ReadFile(ws)
	if !bytes.Equal(sec.Data["value"], file) || sec.Type != "cluster.x-k8s.io/secret" || sec.Labels["cluster.x-k8s.io/cluster-name"] != "c1" {
		t.Errorf("secret: type %s labels %v, value equal to the file: %v", sec.Type, sec.Labels, bytes.Equal(sec.Data["value"], file))
	}
	// What the seed does with it: the kubeconfig read back from the secret works.
	fromSecret := filepath.Join(dir, "new_kubeconfig.conf")
	os.WriteFile(fromSecret, sec.Data["value"], 0o600)
	if _, ui := whoami(fromSecret); ui.Username != "kubernetes-admin" {
		t.Errorf("the secret's kubeconfig authenticates as %q", ui.Username)
	}
	// Updated in place: what the controllers put on it stays.
	sec.Annotations = map[string]string{"baremetal.cluster.gke.io/kept": "yes"}
	sec.Data["other"] = []byte("kept")
	if _, err := cs.CoreV1().Secrets("cluster-c1").Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r = kubecpr(t, nil, append(secretArgs, "--force", "-o", "json")...)
	if r.code != 0 || !strings.Contains(r.stderr, "updated secret cluster-c1/c1-kubeconfig") {
		t.Fatalf("second export: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	sec2, err := cs.CoreV1().Secrets("cluster-c1").Get(ctx, "c1-kubeconfig", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Its document says the secret was updated, to which version.
	var doc docKubeconfigExport
	decodeDoc(t, "json", r.stdout, "KubeconfigExport", &doc)
	if abs, _ := filepath.Abs(admin); doc.Secret.Action != "updated" || doc.Secret.ResourceVersion != sec2.ResourceVersion || doc.Secret.Command != "" ||
		doc.Secret.Namespace != "cluster-c1" || doc.Secret.Name != "c1-kubeconfig" || doc.Secret.AdminKubeconfig != abs || doc.Path != ws {
		t.Errorf("the update's document: %+v, want updated to resourceVersion %s", doc, sec2.ResourceVersion)
	}
	file2, _ := os.ReadFile(ws)
	if bytes.Equal(file2, file) || !bytes.Equal(sec2.Data["value"], file2) || string(sec2.Data["other"]) != "kept" ||
		sec2.Annotations["baremetal.cluster.gke.io/kept"] != "yes" || sec2.Labels["cluster.x-k8s.io/cluster-name"] != "c1" {
		t.Errorf("after the update: value is the new file %v, other %q, annotations %v, labels %v",
			bytes.Equal(sec2.Data["value"], file2), sec2.Data["other"], sec2.Annotations, sec2.Labels)
	}
	// A cluster name whose namespace does not exist: refused, named.
	r = kubecpr(t, nil, "--root", n.Root, "kubeconfig", "export", "--out", filepath.Join(dir, "nope"), "--cluster", "nope",
		"--admin-kubeconfig", admin, "--update-admin-cluster-secret")
	if r.code != ExitFailed || !strings.Contains(r.stderr, "namespace cluster-nope does not exist") {
		t.Errorf("unknown cluster: exit %d\n%s", r.code, r.stderr)
	}
}
