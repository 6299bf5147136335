// Package kubeconfigs is the kubeconfigs stage: re-issue the client
// certificates embedded in admin.conf, super-admin.conf,
// controller-manager.conf and scheduler.conf, and the kubelet's client
// credential (embedded in kubelet.conf or its rotating pem), keeping every
// other field. Users' kubeconfigs that trust this cluster are refreshed
// only when asked.
package kubeconfigs

import (
	"context"
	"fmt"

	"github.com/kubecpr/kubecpr/phases/certs"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// Stage is the kubeconfigs stage.
var Stage = pipeline.Stage{
	Name:    "kubeconfigs",
	Short:   "re-embed fresh client certificates in the kubeconfigs and the kubelet's client credential",
	Mutates: true,
	// each action renews one credential from the CA: grouped fsyncs
	Independent: true,
	Plan:        Plan,
	Undo:        certs.UndoDir,
}

// Plan lists one action per kubeconfig credential to renew.
func Plan(ctx context.Context, d pipeline.Data) ([]pipeline.Action, error) {
	inv, err := d.Inventory()
	if err != nil {
		return nil, err
	}
	o := d.Options()
	var items []*inventory.Item
	var extra []pipeline.Action
	for _, it := range inv.Sorted() {
		switch it.Kind {
		case inventory.KindKubeconfig:
			items = append(items, it)
		case inventory.KindKubeletClient:
			if o.KubeletClientBundle != "" {
				a, err := bundleAction(d, inv, it)
				if err != nil {
					return nil, &pipeline.PreconditionError{Stage: "kubeconfigs", Err: err}
				}
				extra = append(extra, a)
				continue
			}
			if o.KubeletBootstrapTokenFile != "" {
				if it.Status == pki.StatusOK && !(o.RenewWithin > 0 && certs.Want(it, d.Now(), o)) {
					continue // valid: the kubelet would not re-bootstrap, nor need to
				}
				a, err := bootstrapAction(d, inv, it)
				if err != nil {
					return nil, &pipeline.PreconditionError{Stage: "kubeconfigs", Err: err}
				}
				extra = append(extra, a)
				continue
			}
			// The kubelet rotates this itself while it can reach the API;
			// renew it when it is no longer valid (or within --renew-within),
			// and issue a new one when it is gone (a deleted pki dir).
			// A credential that is there but unreadable (a directory, a
			// broken file) goes to PlanItems too, which refuses it naming
			// the problem: silence would leave the kubelet without one.
			if it.Status == pki.StatusMissing || it.Cert == nil || it.Status != pki.StatusOK || (o.RenewWithin > 0 && certs.Want(it, d.Now(), o)) {
				items = append(items, it)
			}
		case inventory.KindKubeletServing:
			if it.Status == pki.StatusMissing {
				a, err := createServingAction(d, it)
				if err != nil {
					return nil, &pipeline.PreconditionError{Stage: "kubeconfigs", Err: err}
				}
				extra = append(extra, a)
				continue
			}
			if it.Cert != nil && (it.Status != pki.StatusOK || (o.RenewWithin > 0 && certs.Want(it, d.Now(), o))) {
				a, err := servingAction(d, it)
				if err != nil {
					return nil, err
				}
				extra = append(extra, a)
			}
		case inventory.KindUserKubeconfig:
			if o.UpdateUserKubeconfigs {
				items = append(items, it)
			} else if it.Status != pki.StatusOK {
				if ks, ok := it.Store.(*inventory.KubeconfigStore); ok && ks.Context != "" {
					// Copying admin.conf over it would wipe its other clusters.
					fmt.Fprintf(d.Out(), "      note: %s has this cluster as context %q, whose user is %s; pass --update-user-kubeconfigs to renew that user (its other clusters are left as they are)\n", it.Path, ks.Context, it.Status)
				} else {
					fmt.Fprintf(d.Out(), "      note: %s trusts this cluster and is %s; pass --update-user-kubeconfigs to refresh it, or copy /etc/kubernetes/admin.conf over it after the run\n", it.Path, it.Status)
				}
			}
		}
	}
	acts, err := certs.PlanItems(d, inv, items, "kubeconfigs")
	if err != nil {
		return nil, err
	}
	acts = append(acts, extra...)
	// Older copies of a CA certificate (--renew-ca) in every file no
	// action above rewrites: those replace them as they render.
	written := map[string]bool{}
	for _, a := range acts {
		for _, p := range a.Paths {
			written[p] = true
		}
	}
	acts = append(acts, certs.TrustActions(d, inv, "kubeconfigs", written)...)
	return certs.EnsureDirs(d, "kubeconfigs", acts), nil
}
