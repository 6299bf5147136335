package cluster

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// kubeadm's discovery document: a kubeconfig holding the cluster CA, which
// `kubeadm join` fetches anonymously and checks against
// --discovery-token-ca-cert-hash (the key's hash, unchanged by --renew-ca).
const (
	clusterInfoNamespace = "kube-public"
	clusterInfoName      = "cluster-info"
	clusterInfoKey       = "kubeconfig"
	// ActionClusterInfo is the cluster journal's action for it.
	ActionClusterInfo = "api/cluster-info"
)

// refreshClusterInfo puts the re-issued cluster CA in kube-public/
// cluster-info once the API is back: with the old, expired certificate
// there, every later `kubeadm join` fails to verify the API server. The
// old document goes into the cluster journal (it holds no secret: anyone
// may read it), and cluster rollback puts it back.
func (d *Driver) refreshClusterInfo(ctx context.Context) error {
	b := d.o.CACerts["ca"]
	if b == nil || d.done(ActionClusterInfo) {
		return nil
	}
	live := false
	for _, n := range d.o.Inventory.ControlPlanes() {
		live = live || d.live(n)
	}
	if !live {
		return nil // copies of nodes: no API server runs
	}
	ca, err := pki.ParseCertificate(b)
	if err != nil {
		return err
	}
	cs, host, err := d.adminClient()
	if err != nil {
		fmt.Fprintf(d.o.Out, "note: %s was not refreshed (%v): `kubeadm init phase bootstrap-token` on a control plane rewrites it, or `kubeadm join` fails on its expired CA\n", clusterInfoNamespace+"/"+clusterInfoName, err)
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cm, err := cs.GetConfigMap(cctx, clusterInfoNamespace, clusterInfoName)
	if apierrors.IsNotFound(err) {
		fmt.Fprintf(d.o.Out, "note: no %s/%s in this cluster (not made by kubeadm init): nothing to refresh for kubeadm join\n", clusterInfoNamespace, clusterInfoName)
		return nil
	}
	if err != nil {
		fmt.Fprintf(d.o.Out, "note: %s/%s could not be read through %s (%v): it still holds the old CA certificate; `kubeadm init phase bootstrap-token` on a control plane rewrites it\n",
			clusterInfoNamespace, clusterInfoName, host, err)
		return nil
	}
	old := cm.Data[clusterInfoKey]
	swapped, _ := inventory.ReplaceTrust([]byte(old), ca)
	if swapped == nil {
		return nil // already the new certificate (or another CA: left alone)
	}
	if err := d.append(journal.Record{Kind: journal.KindIntent, Stage: "api", Action: ActionClusterInfo, Data: map[string]string{"old": old}}); err != nil {
		return err
	}
	cm.Data[clusterInfoKey] = string(swapped)
	if _, err := cs.UpdateConfigMap(cctx, clusterInfoNamespace, cm, metav1.UpdateOptions{}); err != nil {
		_ = d.append(journal.Record{Kind: journal.KindFailed, Stage: "api", Action: ActionClusterInfo, Data: map[string]string{"error": err.Error()}})
		fmt.Fprintf(d.o.Out, "note: %s/%s could not be updated through %s (%v): it still holds the old CA certificate; `kubeadm init phase bootstrap-token` on a control plane rewrites it\n",
			clusterInfoNamespace, clusterInfoName, host, err)
		return nil
	}
	fmt.Fprintf(d.o.Out, "%s/%s now holds the re-issued CA certificate: kubeadm join works with the same --discovery-token-ca-cert-hash\n", clusterInfoNamespace, clusterInfoName)
	return d.append(journal.Record{Kind: journal.KindDone, Stage: "api", Action: ActionClusterInfo})
}

// restoreClusterInfo puts back the cluster-info document the run replaced,
// before the control planes are rolled back (after that the API may not
// answer).
func (d *Driver) restoreClusterInfo(ctx context.Context) error {
	old, ok := "", false
	d.mu.Lock()
	for _, r := range d.records {
		if r.Kind == journal.KindIntent && r.Action == ActionClusterInfo {
			old, ok = r.Data["old"], true
		}
	}
	d.mu.Unlock()
	if !ok || d.undone(ActionClusterInfo) {
		return nil
	}
	cs, host, err := d.adminClient()
	if err != nil {
		return fmt.Errorf("restoring %s/%s: %w", clusterInfoNamespace, clusterInfoName, err)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cm, err := cs.GetConfigMap(cctx, clusterInfoNamespace, clusterInfoName)
	if err != nil {
		return fmt.Errorf("restoring %s/%s through %s: %w", clusterInfoNamespace, clusterInfoName, host, err)
	}
	if cm.Data[clusterInfoKey] != old {
		cm.Data[clusterInfoKey] = old
		if _, err := cs.UpdateConfigMap(cctx, clusterInfoNamespace, cm, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("restoring %s/%s through %s: %w", clusterInfoNamespace, clusterInfoName, host, err)
		}
	}
	fmt.Fprintf(d.o.Out, "%s/%s restored\n", clusterInfoNamespace, clusterInfoName)
	return d.append(journal.Record{Kind: journal.KindUndone, Stage: "api", Action: ActionClusterInfo})
}

// undone reports whether the cluster journal says action was undone.
func (d *Driver) undone(action string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.records {
		if r.Kind == journal.KindUndone && r.Action == action {
			return true
		}
	}
	return false
}
