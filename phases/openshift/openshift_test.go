package openshift_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/phases"
	"github.com/kubecpr/kubecpr/phases/openshift"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/service"
	"github.com/kubecpr/kubecpr/test/ocpfixture"
	"github.com/kubecpr/kubecpr/test/treesnap"
)

var now = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)

type rig struct {
	root   string
	fake   *service.Fake
	out    bytes.Buffer
	stages []pipeline.Stage
}

func newRig(t *testing.T, o ocpfixture.Options) *rig {
	t.Helper()
	g := &rig{root: t.TempDir(), fake: &service.Fake{}}
	o.Now = now
	if _, err := ocpfixture.Generate(g.root, o); err != nil {
		t.Fatal(err)
	}
	// Only the kubelet stage: the CSR stage needs an API server (test/e2e).
	g.stages = []pipeline.Stage{phases.Backup, openshift.Stages(openshift.Options{})[0]}
	return g
}

func (g *rig) runner(t *testing.T) *pipeline.Runner {
	t.Helper()
	n, err := node.New(g.root)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := n.Discover("") // no kubeadm PKI dir on OpenShift: the node name is enough
	return &pipeline.Runner{Node: n, Cluster: c, Clock: now, Warn: 30 * 24 * time.Hour, Out: &g.out,
		StateDir: n.Path("/var/lib/kubecpr"), Stages: g.stages, LiveNode: &pipeline.Live{Services: g.fake}}
}

func (g *rig) run(t *testing.T) ([]pipeline.PlannedStage, error) {
	t.Helper()
	r := g.runner(t)
	defer r.Close()
	if _, err := r.Prepare(false); err != nil {
		return nil, err
	}
	planned, err := r.Plan(context.Background(), g.stages)
	if err != nil {
		return nil, err
	}
	if err := r.Preflight(planned); err != nil {
		return planned, err
	}
	if _, err := r.Open(false); err != nil {
		return planned, err
	}
	return planned, r.Apply(context.Background(), planned, "openshift-node")
}

func actionIDs(planned []pipeline.PlannedStage) []string {
	var ids []string
	for _, ps := range planned {
		for _, a := range ps.Actions {
			ids = append(ids, a.ID)
		}
	}
	return ids
}

// An expired kubelet client certificate: the kubelet bootstraps again by
// itself, so the stage only restarts it, through the service interface;
// no file of the node changes.
func TestExpiredClientCertRestartsTheKubelet(t *testing.T) {
	g := newRig(t, ocpfixture.Options{Master: true})
	before := treesnap.Take(t, g.root, "var/lib/kubecpr")
	planned, err := g.run(t)
	if err != nil {
		t.Fatalf("%v\n%s", err, g.out.String())
	}
	if diff := cmp.Diff([]string{"backup/node", "openshift-kubelet/restart"}, actionIDs(planned)); diff != "" {
		t.Errorf("actions (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"kubelet"}, g.fake.Restarts); diff != "" {
		t.Errorf("restarts (-want +got):\n%s", diff)
	}
	if diff := treesnap.Diff(before, treesnap.Take(t, g.root, "var/lib/kubecpr")); diff != "" {
		t.Errorf("the node changed:\n%s", diff)
	}
	for _, s := range []string{"kubelet restarted (fake)", "node-bootstrapper", "/etc/kubernetes/kubeconfig"} {
		if !strings.Contains(g.out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, g.out.String())
		}
	}
}

// A client certificate the kubelet would keep using although it cannot
// authenticate with it (its key does not match): set aside through the
// journal, so the kubelet bootstraps; rollback puts it back and restarts
// the kubelet on it again.
func TestUnusableClientCertIsSetAsideAndRolledBack(t *testing.T) {
	g := newRig(t, ocpfixture.Options{Master: true,
		Leaf: ocpfixture.Window{NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0)}})
	link := filepath.Join(g.root, "var/lib/kubelet/pki/kubelet-client-current.pem")
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}
	// Replace the key in the dated pem with another one.
	dated := filepath.Join(g.root, filepath.FromSlash(target))
	data, _ := os.ReadFile(dated)
	blk, _ := pem.Decode(data)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(other)
	bad := append(pem.EncodeToMemory(blk), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})...)
	if err := os.WriteFile(dated, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	before := treesnap.Take(t, g.root, "var/lib/kubecpr")

	planned, err := g.run(t)
	if err != nil {
		t.Fatalf("%v\n%s", err, g.out.String())
	}
	if diff := cmp.Diff([]string{"backup/node", "openshift-kubelet/set-aside", "openshift-kubelet/restart"}, actionIDs(planned)); diff != "" {
		t.Errorf("actions (-want +got):\n%s", diff)
	}
	if got, _ := os.Readlink(link); got != openshift.SetAsideTarget {
		t.Errorf("kubelet-client-current.pem -> %q, want %q", got, openshift.SetAsideTarget)
	}
	if _, err := os.Stat(link); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the kubelet still finds a client certificate: %v", err)
	}
	if got, _ := os.ReadFile(dated); !bytes.Equal(got, bad) {
		t.Error("the dated pem was changed: set aside must not delete or rewrite it")
	}
	if diff := cmp.Diff([]string{"kubelet"}, g.fake.Restarts); diff != "" {
		t.Errorf("restarts (-want +got):\n%s", diff)
	}

	r := g.runner(t)
	if _, err := r.Open(false); err != nil {
		t.Fatal(err)
	}
	if err := r.Rollback(context.Background()); err != nil {
		t.Fatalf("rollback: %v\n%s", err, g.out.String())
	}
	r.Close()
	if diff := treesnap.Diff(before, treesnap.Take(t, g.root, "var/lib/kubecpr")); diff != "" {
		t.Errorf("after rollback the node differs:\n%s", diff)
	}
	if diff := cmp.Diff([]string{"kubelet", "kubelet"}, g.fake.Restarts); diff != "" {
		t.Errorf("restarts after rollback (-want +got):\n%s", diff)
	}
}

// Without a usable bootstrap kubeconfig the kubelet could not come back:
// refused before any change, saying why.
func TestNoBootstrapKubeconfigIsRefused(t *testing.T) {
	g := newRig(t, ocpfixture.Options{})
	if err := os.Remove(filepath.Join(g.root, "etc/kubernetes/kubeconfig")); err != nil {
		t.Fatal(err)
	}
	// Still an OpenShift worker? Not without the bootstrap kubeconfig:
	// the refusal then says this is not OpenShift. With an empty one it is.
	if err := os.WriteFile(filepath.Join(g.root, "etc/kubernetes/kubeconfig"), []byte("apiVersion: v1\nkind: Config\nclusters: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := treesnap.Take(t, g.root)
	_, err := g.run(t)
	var pe *pipeline.PreconditionError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "bootstrap kubeconfig") || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("error %v, want a precondition naming the bootstrap kubeconfig", err)
	}
	if len(g.fake.Restarts) != 0 {
		t.Errorf("restarted: %v", g.fake.Restarts)
	}
	if diff := treesnap.Diff(before, treesnap.Take(t, g.root)); diff != "" {
		t.Errorf("the node changed:\n%s", diff)
	}
}

// A valid client certificate: nothing to do, the kubelet is left alone.
func TestValidClientCertLeftAlone(t *testing.T) {
	g := newRig(t, ocpfixture.Options{Leaf: ocpfixture.Window{NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0)}})
	planned, err := g.run(t)
	if err != nil {
		t.Fatal(err)
	}
	if ids := actionIDs(planned); len(ids) != 1 || ids[0] != "backup/node" {
		t.Errorf("actions %v, want only the backup", ids)
	}
	if len(g.fake.Restarts) != 0 {
		t.Errorf("restarted: %v", g.fake.Restarts)
	}
}
