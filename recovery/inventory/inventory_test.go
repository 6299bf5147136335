package inventory_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/fixture"
)

var (
	now  = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	keys = fixture.NewKeyPool(24)
)

func build(t *testing.T, root string) *inventory.Inventory {
	t.Helper()
	n, err := node.New(root)
	if err != nil {
		t.Fatal(err)
	}
	c, err := n.Discover("")
	if err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.Build(n, c, now, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

func gen(t *testing.T, o fixture.Options) (string, *fixture.Node) {
	t.Helper()
	root := t.TempDir()
	o.Now, o.Keys = now, keys
	fn, err := fixture.Generate(root, o)
	if err != nil {
		t.Fatal(err)
	}
	return root, fn
}

func statuses(inv *inventory.Inventory) map[string]string {
	out := map[string]string{}
	for _, it := range inv.Items {
		out[it.Name] = string(it.Kind) + " " + string(it.Status) + " " + it.CAName
	}
	for _, c := range inv.CAs {
		out["CA "+c.Name] = string(c.Status)
	}
	return out
}

func TestInventoryOfAFreshNode(t *testing.T) {
	root, _ := gen(t, fixture.Options{})
	inv := build(t, root)
	want := map[string]string{
		"/root/.kube/config":         "user-kubeconfig ok ca",
		"admin.conf":                 "kubeconfig ok ca",
		"apiserver":                  "certificate ok ca",
		"apiserver-etcd-client":      "certificate ok etcd-ca",
		"apiserver-kubelet-client":   "certificate ok ca",
		"controller-manager.conf":    "kubeconfig ok ca",
		"etcd-healthcheck-client":    "certificate ok etcd-ca",
		"etcd-peer":                  "certificate ok etcd-ca",
		"etcd-server":                "certificate ok etcd-ca",
		"front-proxy-client":         "certificate ok front-proxy-ca",
		"kubelet-client-current.pem": "kubelet-client ok ca",
		"kubelet.crt":                "kubelet-serving ok ",
		"scheduler.conf":             "kubeconfig ok ca",
		"super-admin.conf":           "kubeconfig ok ca",
		"CA ca":                      "ok",
		"CA etcd-ca":                 "ok",
		"CA front-proxy-ca":          "ok",
	}
	if diff := cmp.Diff(want, statuses(inv)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if inv.ExitCode() != 0 || len(inv.SAProblems) != 0 {
		t.Errorf("exit %d, sa problems %v", inv.ExitCode(), inv.SAProblems)
	}
}

func TestInventoryStatuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		leaf fixture.Window
		want pki.Status
		code int
	}{
		{"expiring", fixture.Window{NotBefore: now.AddDate(-1, 0, 0), NotAfter: now.AddDate(0, 0, 10)}, pki.StatusExpiring, 1},
		{"expired", fixture.Window{NotBefore: now.AddDate(-1, 0, 0), NotAfter: now.AddDate(0, 0, -1)}, pki.StatusExpired, 2},
		{"not yet valid", fixture.Window{NotBefore: now.AddDate(0, 0, 1), NotAfter: now.AddDate(1, 0, 0)}, pki.StatusNotYetValid, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, _ := gen(t, fixture.Options{Leaf: tc.leaf})
			inv := build(t, root)
			for _, it := range inv.Items {
				if it.Status != tc.want {
					t.Errorf("%s: %s, want %s", it.Name, it.Status, tc.want)
				}
			}
			if inv.ExitCode() != tc.code {
				t.Errorf("exit %d, want %d", inv.ExitCode(), tc.code)
			}
		})
	}
}

func TestExternalCA(t *testing.T) {
	root, _ := gen(t, fixture.Options{ExternalCA: true})
	inv := build(t, root)
	if !inv.CA("ca").External() || inv.CA("etcd-ca").External() {
		t.Fatalf("external: ca %v etcd-ca %v", inv.CA("ca").External(), inv.CA("etcd-ca").External())
	}
	for _, it := range inv.Items {
		if it.CAName == "ca" && !it.External {
			t.Errorf("%s not marked externally managed", it.Name)
		}
	}
}

// Two control-plane nodes share CAs; each has its own etcd/apiserver SANs.
// A certificate copied from the other node is detected.
func TestTwoControlPlaneNodes(t *testing.T) {
	root1, n1 := gen(t, fixture.Options{NodeName: "cp-1", AdvertiseIP: "127.0.0.11"})
	root2, _ := gen(t, fixture.Options{NodeName: "cp-2", AdvertiseIP: "127.0.0.12", CAFrom: n1})
	a, _ := os.ReadFile(filepath.Join(root1, "etc/kubernetes/pki/ca.crt"))
	b, _ := os.ReadFile(filepath.Join(root2, "etc/kubernetes/pki/ca.crt"))
	if string(a) != string(b) {
		t.Fatal("CAs not shared")
	}
	if inv := build(t, root2); inv.ExitCode() != 0 {
		t.Fatalf("cp-2 alone: %v", statuses(inv))
	}
	for _, f := range []string{"apiserver.crt", "apiserver.key", "etcd/peer.crt", "etcd/peer.key"} {
		data, _ := os.ReadFile(filepath.Join(root1, "etc/kubernetes/pki", f))
		os.WriteFile(filepath.Join(root2, "etc/kubernetes/pki", f), data, 0o600)
	}
	inv := build(t, root2)
	for _, name := range []string{"apiserver", "etcd-peer"} {
		it := inv.Find(name)
		if it.Status != pki.StatusInvalid || !strings.Contains(strings.Join(it.Problems, " "), `"cp-2"`) {
			t.Errorf("%s copied from cp-1: status %s, problems %v", name, it.Status, it.Problems)
		}
	}
	if it := inv.Find("etcd-server"); it.Status != pki.StatusOK {
		t.Errorf("etcd-server (own): %s %v", it.Status, it.Problems)
	}
}

func TestKubeletConfEmbedded(t *testing.T) {
	root, _ := gen(t, fixture.Options{KubeletConfEmbedded: true})
	inv := build(t, root)
	it := inv.Find("kubelet.conf")
	if it == nil || it.Status != pki.StatusOK || it.Cert.Subject.CommonName != "system:node:cp-1" {
		t.Fatalf("kubelet.conf: %+v", it)
	}
}

func TestReportTableMatchesKubeadmFormat(t *testing.T) {
	root, _ := gen(t, fixture.Options{Leaf: fixture.Window{NotBefore: now.AddDate(-1, 0, 0), NotAfter: now.AddDate(0, 0, -2)}})
	var b strings.Builder
	if err := build(t, root).Report().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"CERTIFICATE                  EXPIRES                  RESIDUAL TIME   CERTIFICATE AUTHORITY   EXTERNALLY MANAGED   STATUS",
		"apiserver                    Nov 20, 2026 03:00 UTC   <invalid>       ca                      no                   expired",
		"ca                      Nov 22, 2036 03:00 UTC   10y             no                   ok",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks line %q:\n%s", want, out)
		}
	}
}
