package certs_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/phases"
	"github.com/kubecpr/kubecpr/phases/certs"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/fixture"
)

var (
	now  = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	keys = fixture.NewKeyPool(24)
)

func expiredNode(t *testing.T, edit func(root string)) (pipeline.Data, *inventory.Inventory) {
	t.Helper()
	return nodeWith(t, edit, pipeline.Options{})
}

func nodeWith(t *testing.T, edit func(root string), o pipeline.Options) (pipeline.Data, *inventory.Inventory) {
	t.Helper()
	root := t.TempDir()
	w := fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)}
	if _, err := fixture.Generate(root, fixture.Options{Now: now, Keys: keys, Leaf: w, KubeletClient: w}); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(root)
	}
	n, err := node.New(root)
	if err != nil {
		t.Fatal(err)
	}
	c, err := n.Discover("")
	if err != nil {
		t.Fatal(err)
	}
	r := &pipeline.Runner{Node: n, Cluster: c, Clock: now, Out: io.Discard, StateDir: n.Path("/var/lib/kubecpr"), Opts: o, Stages: phases.All()}
	d := r.Data()
	inv, err := d.Inventory()
	if err != nil {
		t.Fatal(err)
	}
	return d, inv
}

// apiserverPlan plans the API server certificate alone and returns the
// certificate its action would write.
func apiserverPlan(t *testing.T, d pipeline.Data, inv *inventory.Inventory) (pipeline.Action, []string, error) {
	t.Helper()
	acts, err := certs.PlanItems(d, inv, []*inventory.Item{inv.Find(pki.LeafAPIServer)}, "certs")
	if err != nil {
		return pipeline.Action{}, nil, err
	}
	if len(acts) != 1 {
		t.Fatalf("%d actions, want 1", len(acts))
	}
	ops, err := acts[0].Files(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range ops {
		if strings.HasSuffix(op.Path, ".crt") {
			c, err := pki.ParseCertificate(op.Data)
			if err != nil {
				t.Fatal(err)
			}
			sans := append([]string{}, c.DNSNames...)
			for _, ip := range c.IPAddresses {
				sans = append(sans, ip.String())
			}
			return acts[0], sans, nil
		}
	}
	t.Fatal("no certificate written")
	return pipeline.Action{}, nil, nil
}

// Options.APIServerCertExtraSANs (--apiserver-cert-extra-sans) adds SANs
// to the re-issued API server certificate.
func TestExtraSANsOption(t *testing.T) {
	d, inv := nodeWith(t, nil, pipeline.Options{APIServerCertExtraSANs: []string{"api.example.test", "10.20.30.40", "127.0.0.1"}})
	a, sans, err := apiserverPlan(t, d, inv)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(a.Summary, "SANs added: api.example.test, 10.20.30.40") {
		t.Errorf("summary %q does not list the added SANs (127.0.0.1 is there already)", a.Summary)
	}
	want := []string{"cp-1", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "api.example.test",
		"10.96.0.1", "127.0.0.1", "10.20.30.40"}
	if d := cmp.Diff(want, sans); d != "" {
		t.Errorf("SANs (-want +got):\n%s", d)
	}
}

// The node's address changed (its manifest says 127.0.0.5, the API server
// certificate names 127.0.0.1): refused with the way out; with the new
// address as an extra SAN the certificate is re-issued and names the node.
func TestAddressChanged(t *testing.T) {
	moved := func(root string) {
		p := filepath.Join(root, "etc/kubernetes/manifests/kube-apiserver.yaml")
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(b), "--advertise-address=127.0.0.1", "--advertise-address=127.0.0.5")), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d, inv := expiredNode(t, moved)
	if it := inv.Find(pki.LeafAPIServer); it.Status != pki.StatusInvalid {
		t.Fatalf("apiserver: %s %v, want invalid", it.Status, it.Problems)
	}
	if _, _, err := apiserverPlan(t, d, inv); err == nil || !strings.Contains(err.Error(), "pass --apiserver-cert-extra-sans") {
		t.Fatalf("plan without the new address: %v", err)
	}
	d, inv = nodeWith(t, moved, pipeline.Options{APIServerCertExtraSANs: []string{"127.0.0.5"}})
	_, sans, err := apiserverPlan(t, d, inv)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(sans, ","), "127.0.0.1,127.0.0.5") {
		t.Errorf("SANs %v lack the new address", sans)
	}
}

// A missing leaf whose CA key is elsewhere cannot be created: said, with
// what to do, before any change.
func TestMissingWithExternalCA(t *testing.T) {
	d, inv := expiredNode(t, func(root string) {
		for _, f := range []string{"ca.key", "apiserver.crt", "apiserver.key"} {
			os.Remove(filepath.Join(root, "etc/kubernetes/pki", f))
		}
	})
	_, _, err := apiserverPlan(t, d, inv)
	if err == nil || !strings.Contains(err.Error(), "the ca CA key is not on this node") {
		t.Errorf("missing apiserver under an external CA: %v", err)
	}
}

// A bad extra SAN stops the plan.
func TestBadExtraSAN(t *testing.T) {
	d, inv := nodeWith(t, nil, pipeline.Options{APIServerCertExtraSANs: []string{"under_score"}})
	if _, _, err := apiserverPlan(t, d, inv); err == nil || !strings.Contains(err.Error(), `"under_score"`) {
		t.Errorf("bad SAN: %v", err)
	}
}
