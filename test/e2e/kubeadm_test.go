package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/fixture"
	"github.com/kubecpr/kubecpr/test/treesnap"
)

// On a tree made by real kubeadm, kubecpr check lists every certificate
// kubeadm lists, with the same expiry to the minute, and exits 0; once the
// leaves are re-signed into the past it exits 2 with every leaf expired.
func TestCheckAgreesWithKubeadm(t *testing.T) {
	t.Parallel()
	n := cluster.Kubeadm(t, cluster.Options{})
	exp := kubeadmCheck(t, n)
	r := kubecpr(t, n, "-o", "json", "check")
	if r.code != 0 {
		t.Fatalf("check on a fresh kubeadm node: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	var rep inventory.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	ours := map[string]inventory.CertReport{}
	for _, c := range append(rep.Certs, rep.CAs...) {
		ours[c.Name] = c
	}
	want, got := map[string]string{}, map[string]string{}
	for _, c := range exp.Certificates {
		want[c.Name] = c.ExpirationDate.UTC().Format("2006-01-02T15:04") + " " + c.CAName
		if o, ok := ours[c.Name]; ok && o.Expires != nil {
			got[c.Name] = o.Expires.UTC().Format("2006-01-02T15:04") + " " + o.CA
		}
	}
	for _, c := range exp.CertificateAuthorities {
		want[c.Name] = c.ExpirationDate.UTC().Format("2006-01-02T15:04")
		if o, ok := ours[c.Name]; ok && o.Expires != nil {
			got[c.Name] = o.Expires.UTC().Format("2006-01-02T15:04")
		}
	}
	if len(want) < 14 {
		t.Fatalf("kubeadm listed only %d certificates", len(want))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("kubecpr vs kubeadm check-expiration (-kubeadm +kubecpr):\n%s", diff)
	}

	if err := fixture.Resign(n.Root, fixture.Window{NotBefore: time.Now().AddDate(-1, 0, -2), NotAfter: time.Now().AddDate(0, 0, -2)}, nil); err != nil {
		t.Fatal(err)
	}
	r = kubecpr(t, n, "-o", "json", "check")
	if r.code != 2 {
		t.Fatalf("check on the expired node: exit %d, want 2\n%s", r.code, r.stderr)
	}
	rep = inventory.Report{}
	json.Unmarshal([]byte(r.stdout), &rep)
	for _, c := range rep.Certs {
		if c.Status != pki.StatusExpired {
			t.Errorf("%s: %s, want expired", c.Name, c.Status)
		}
	}
}

// The whole offline recovery against the real programs: a kubeadm node
// serves; its leaves expire and the real apiserver fails the way it does in
// production; kubecpr renews; the real apiserver serves the new certificate
// and client-go works with the new admin.conf; kubeadm agrees; rollback
// returns the expired tree byte for byte.
func TestRecoverRealKubeadmNode(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n := cluster.Kubeadm(t, cluster.Options{})

	// 1. It works.
	start := time.Now()
	etcd := n.StartEtcd(t)
	api := n.StartAPIServer(t)
	if err := n.WaitReady(ctx, t, "/etc/kubernetes/admin.conf", api); err != nil {
		t.Fatalf("fresh node: %v\n%s", err, api.LogTail(30))
	}
	t.Logf("fresh kubeadm node: etcd + apiserver ready in %s", time.Since(start).Round(time.Millisecond))
	if err := n.GrantClusterAdmins(ctx, t); err != nil {
		t.Fatal(err)
	}
	if _, err := n.ListNamespaces(ctx, t, "/etc/kubernetes/admin.conf"); err != nil {
		t.Fatal(err)
	}
	api.Stop()
	etcd.Stop()

	// 2. Everything expired two days ago: the real failure.
	if err := fixture.Resign(n.Root, fixture.Window{NotBefore: time.Now().AddDate(-1, 0, -2), NotAfter: time.Now().AddDate(0, 0, -2)}, nil); err != nil {
		t.Fatal(err)
	}
	expired := snapshot(t, n.Root)
	etcd = n.StartEtcd(t)
	api = n.StartAPIServer(t)
	// As in production: etcd rejects the apiserver's expired client
	// certificate (and the apiserver etcd's expired serving certificate),
	// so the apiserver never serves and clients time out.
	if _, err := n.ListNamespaces(ctx, t, "/etc/kubernetes/admin.conf"); err == nil {
		t.Fatal("expired node: client-go listed namespaces")
	} else {
		t.Logf("expired node, client-go: %v", err)
	}
	const expiredMsg = "x509: certificate has expired or is not yet valid"
	if !strings.Contains(readFile(t, etcd.LogPath), expiredMsg) {
		t.Errorf("etcd log lacks %q:\n%s", expiredMsg, etcd.LogTail(10))
	}
	if !strings.Contains(readFile(t, api.LogPath), "authentication handshake failed") {
		t.Errorf("apiserver log lacks the failed etcd handshake:\n%s", api.LogTail(10))
	}
	if d := kubecpr(t, n, "diagnose", "--timeout", "2s"); d.code != 2 || !strings.Contains(d.stdout, "certificates have expired") || !strings.Contains(d.stdout, "api-") && !strings.Contains(d.stdout, "API") {
		t.Errorf("diagnose on the expired node: exit %d\n%s", d.code, d.stdout)
	}
	api.Stop()
	etcd.Stop()

	// 3. kubecpr renews.
	r := kubecpr(t, n, "run", "--until", "kubeconfigs")
	if r.code != 0 {
		t.Fatalf("kubecpr run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	exp := kubeadmCheck(t, n)
	for _, c := range exp.Certificates {
		if d := time.Duration(c.ResidualTime) * time.Second; d < 364*24*time.Hour || c.Missing {
			t.Errorf("kubeadm check-expiration after kubecpr: %s residual %s (missing %v), want ~1y", c.Name, d, c.Missing)
		}
	}

	// 4. The real programs run on the new files.
	start = time.Now()
	etcd = n.StartEtcd(t)
	api = n.StartAPIServer(t)
	if err := n.WaitReady(ctx, t, "/etc/kubernetes/admin.conf", api); err != nil {
		t.Fatalf("after recovery: %v\n%s", err, api.LogTail(30))
	}
	t.Logf("recovered node: etcd + apiserver ready in %s", time.Since(start).Round(time.Millisecond))
	nss, err := n.ListNamespaces(ctx, t, "/etc/kubernetes/admin.conf")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(nss)
	for _, want := range []string{"default", "kube-system"} {
		if sort.SearchStrings(nss, want) == len(nss) || nss[sort.SearchStrings(nss, want)] != want {
			t.Errorf("namespaces %v lack %s", nss, want)
		}
	}
	served, err := cluster.ServedCertificate(n.APIServerPort)
	if err != nil {
		t.Fatal(err)
	}
	onDisk, err := fixture.ReadCert(n.Path("/etc/kubernetes/pki/apiserver.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if served.SerialNumber.Cmp(onDisk.SerialNumber) != 0 {
		t.Errorf("apiserver serves serial %s, disk has %s", served.SerialNumber, onDisk.SerialNumber)
	}
	// every client kubeconfig works against the real apiserver
	for _, kc := range []string{"/etc/kubernetes/super-admin.conf", "/etc/kubernetes/controller-manager.conf", "/etc/kubernetes/scheduler.conf"} {
		if _, err := n.Client(t, kc).Discovery().ServerVersion(); err != nil {
			t.Errorf("%s: %v", kc, err)
		}
	}

	// 4b. verify asks the cluster and fails when the cluster does not
	// confirm the recovery: kube-controller-manager and kube-scheduler
	// have manifests on this node but do not run in this test, so they
	// never answer /healthz; etcd and the kube-apiserver do, on the
	// renewed serials. (A stale serial cannot be staged with these real
	// processes: etcd and the kube-apiserver both reload their serving
	// certificates from disk — seen here when apiserver.crt was re-issued
	// behind the running kube-apiserver's back.)
	v := kubecpr(t, n, "run", "--from", "verify", "--kubelet-restart-command", "true", "--component-timeout", "3s")
	out := v.stdout + v.stderr
	if v.code != 6 || !strings.Contains(out, "the cluster does not confirm the recovery") ||
		!strings.Contains(out, "kube-controller-manager: not healthy within the timeout") || !strings.Contains(out, "kube-scheduler: not healthy within the timeout") ||
		!strings.Contains(v.stdout, "kube-apiserver healthy, serving serial "+onDisk.SerialNumber.String()) || !strings.Contains(v.stdout, "etcd healthy, serving serial") {
		t.Errorf("verify with kube-controller-manager and kube-scheduler down: exit %d, want 6 naming both, etcd and the kube-apiserver confirmed\n%s", v.code, out)
	}
	api.Stop()
	etcd.Stop()

	// 5. Rollback: the expired tree, byte for byte.
	if r := kubecpr(t, n, "rollback"); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s", r.code, r.stderr)
	}
	if diff := cmp.Diff(expired, snapshot(t, n.Root)); diff != "" {
		t.Fatalf("rollback not byte-identical (-expired +after):\n%s", diff)
	}
	if leaks := n.NonLoopbackAddresses(t); len(leaks) > 0 {
		t.Fatalf("non-loopback addresses: %v", leaks)
	}
}

// snapshot covers the node's /etc/kubernetes and /var/lib/kubelet.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, top := range []string{"etc/kubernetes", "var/lib/kubelet"} {
		if _, err := os.Stat(filepath.Join(root, top)); err != nil {
			continue
		}
		for k, v := range treesnap.Take(t, filepath.Join(root, top)) {
			out[filepath.Join(top, k)] = v
		}
	}
	return out
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
