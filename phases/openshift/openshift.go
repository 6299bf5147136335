// Package openshift is kubecpr's part on an OpenShift 4 node: the node
// part of OpenShift's documented recovery from expired certificates. The
// control-plane certificates belong to the cluster operators (and recover
// by themselves since 4.2); what is left is the kubelet:
//
//   - kubelet: the kubelet gets a new client certificate through its
//     bootstrap kubeconfig (/etc/kubernetes/kubeconfig, the
//     node-bootstrapper service account): a kubelet whose client
//     certificate has expired bootstraps again by itself when it starts
//     (the kubelet's certificate/bootstrap code: "part of the existing
//     bootstrap client certificate is expired"); one whose certificate is
//     unusable otherwise (another node's, a broken key) has it set aside
//     first, as the seed's `rm -rf /var/lib/kubelet/pki` does, but
//     journaled and reversible. Then the kubelet is restarted through the
//     same service interface the kubeadm bounce stage uses.
//   - csr: the kubelet's CSRs — the node-bootstrapper's client CSR, then
//     the node's kubelet-serving CSR — are approved by the csr stage's
//     careful approver, through the node's localhost-recovery kubeconfig
//     (or a kubeconfig given), never signed by kubecpr: the
//     kube-controller-manager signs them on OpenShift.
package openshift

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/phases/csr"
	"github.com/kubecpr/kubecpr/recovery/distro"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/kube"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// Options of the OpenShift node stages.
type Options struct {
	// Kubeconfig is a host path of a kubeconfig to approve CSRs with
	// (default: the node's localhost-recovery kubeconfig).
	Kubeconfig string
	// ApproveNode restricts approval to one node (default: this node);
	// AllNodes approves for every node the cluster knows.
	ApproveNode string
	AllNodes    bool
	// Wait is how long to wait for this node's client and serving CSRs
	// (0: one pass over what is pending).
	Wait time.Duration
	// MaxLifetime is the longest certificate lifetime the approver
	// accepts (default one year).
	MaxLifetime time.Duration
}

// SetAsideTarget is where kubelet-client-current.pem points once set
// aside: a file that does not exist, so the kubelet finds no client
// certificate and bootstraps; the dated pem it pointed at stays on disk.
const SetAsideTarget = node.KubeletPKIDir + "/kubelet-client-set-aside-by-kubecpr.pem"

// Stages returns the OpenShift node stages, in order, configured by o.
func Stages(o Options) []pipeline.Stage {
	return []pipeline.Stage{
		{
			Name:    "openshift-kubelet",
			Short:   "make the kubelet request a new client certificate through its bootstrap kubeconfig, and restart it",
			Mutates: true,
			Live:    true,
			Plan:    planKubelet,
			Undo:    undoKubelet,
		},
		{
			Name:  "openshift-csr",
			Short: "approve the node-bootstrapper's and the nodes' CSRs that pass validation, through the localhost-recovery kubeconfig",
			Live:  true,
			Plan:  func(ctx context.Context, d pipeline.Data) ([]pipeline.Action, error) { return planCSR(d, o) },
		},
	}
}

func openshiftInventory(d pipeline.Data, stage string) (*inventory.Inventory, error) {
	inv, err := d.Inventory()
	if err != nil {
		return nil, err
	}
	if !inv.OpenShift {
		return nil, &pipeline.PreconditionError{Stage: stage, Err: fmt.Errorf("%s is not an OpenShift 4 node (no %s, no %s): use `kubecpr run`",
			d.Node().Root, distro.StaticPodResources, distro.OpenShiftBootstrapKubeconfig)}
	}
	return inv, nil
}

func planKubelet(ctx context.Context, d pipeline.Data) ([]pipeline.Action, error) {
	inv, err := openshiftInventory(d, "openshift-kubelet")
	if err != nil {
		return nil, err
	}
	pem := inv.Find("kubelet-client-current.pem")
	kc := inv.Find("kubelet kubeconfig")
	switch {
	case pem != nil && pem.Status == pki.StatusOK && (kc == nil || kc.Status == pki.StatusOK):
		fmt.Fprintf(d.Out(), "      the kubelet's client certificate is valid until %s: nothing to recover\n", pem.Cert.NotAfter.UTC().Format(time.RFC3339))
		return nil, nil
	case pem != nil && pem.Status == pki.StatusExpiring:
		fmt.Fprintf(d.Out(), "      the kubelet's client certificate expires on %s: a running kubelet rotates it by itself\n", pem.Cert.NotAfter.UTC().Format(time.RFC3339))
		return nil, nil
	}
	// The kubelet can only come back through its bootstrap kubeconfig.
	if b := inv.Find("bootstrap kubeconfig"); b == nil || b.Status.Severity() >= 2 {
		why := distro.OpenShiftBootstrapKubeconfig + " is missing"
		if b != nil {
			why = strings.Join(b.Problems, "; ")
		}
		return nil, &pipeline.PreconditionError{Stage: "openshift-kubelet", Err: fmt.Errorf("the kubelet's client certificate must be renewed "+
			"through its bootstrap kubeconfig, which is not usable: %s", why)}
	}
	var acts []pipeline.Action
	why := "no client certificate"
	if pem != nil {
		why = fmt.Sprintf("%s is %s", pem.Path, pem.Status)
	}
	if kc != nil && kc.Status != pki.StatusOK && (pem == nil || pem.Status == pki.StatusOK) {
		why = fmt.Sprintf("%s is %s", kc.Path, kc.Status)
	}
	// An expired or missing certificate makes the kubelet bootstrap by
	// itself. Anything else (another node's, a broken key, not yet valid:
	// the kubelet only checks expiry) is set aside first.
	if pem != nil && pem.Status != pki.StatusExpired && pem.Status != pki.StatusMissing {
		acts = append(acts, pipeline.Action{
			ID:      "openshift-kubelet/set-aside",
			Summary: fmt.Sprintf("point %s at %s (which does not exist) so the kubelet bootstraps: %s", node.KubeletCurrent, SetAsideTarget, why),
			Paths:   []string{node.KubeletCurrent},
			Files: func(ctx context.Context) ([]node.FileOp, error) {
				return []node.FileOp{{Path: node.KubeletCurrent, Link: SetAsideTarget}}, nil
			},
		})
	}
	acts = append(acts, pipeline.Action{
		ID: "openshift-kubelet/restart",
		Summary: fmt.Sprintf("restart the kubelet (%s): it requests a new client certificate as %s through %s",
			why, csr.OpenShiftNodeBootstrapper, distro.OpenShiftBootstrapKubeconfig),
		Run: func(ctx context.Context) (map[string]string, error) {
			lv := d.Live()
			if lv == nil || lv.Services == nil {
				fmt.Fprintf(d.Out(), "      not the live node: restart the kubelet there (`systemctl restart kubelet`)\n")
				return map[string]string{"skipped": "not live"}, nil
			}
			if d.Options().DryRun {
				return map[string]string{"dry_run": "true"}, nil
			}
			if err := lv.Services.Restart(ctx, "kubelet"); err != nil {
				return nil, err
			}
			fmt.Fprintf(d.Out(), "      kubelet restarted (%s)\n", lv.Services.Describe())
			return map[string]string{"restarted": "kubelet", "how": lv.Services.Describe()}, nil
		},
	})
	return acts, nil
}

// undoKubelet restarts the kubelet again once rollback has restored its
// files (when the run that restarted it is rolled back with these stages).
func undoKubelet(ctx context.Context, d pipeline.Data, actionID string, facts map[string]string) error {
	if actionID != "openshift-kubelet/restart" || facts["restarted"] == "" {
		return nil
	}
	lv := d.Live()
	if lv == nil || lv.Services == nil {
		return nil
	}
	return lv.Services.Restart(ctx, "kubelet")
}

func planCSR(d pipeline.Data, o Options) ([]pipeline.Action, error) {
	if _, err := openshiftInventory(d, "openshift-csr"); err != nil {
		return nil, err
	}
	if d.Live() == nil && o.Kubeconfig == "" {
		return []pipeline.Action{{
			ID:      "openshift-csr/skipped",
			Summary: "would approve the node's pending CSRs (not the live node: pass --kubeconfig to approve through a reachable API server)",
			Run: func(ctx context.Context) (map[string]string, error) {
				return map[string]string{"skipped": "not live"}, nil
			},
		}}, nil
	}
	via := distro.LocalhostRecoveryKubeconfig
	if o.Kubeconfig != "" {
		via = o.Kubeconfig
	}
	return []pipeline.Action{{
		ID:      "openshift-csr/approve",
		Summary: fmt.Sprintf("approve pending node CSRs that pass validation through %s (wait up to %s; the kube-controller-manager signs them)", via, o.Wait),
		Run: func(ctx context.Context) (map[string]string, error) {
			return approve(ctx, d, o)
		},
	}}, nil
}

// Client is the API client the csr stage uses on OpenShift: a kubeconfig
// given on the host, else the node's localhost-recovery kubeconfig (read
// inside the node root).
func Client(n *node.Node, kubeconfig string) (*kube.Client, string, error) {
	var cfg *rest.Config
	var err error
	via := kubeconfig
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		via = distro.LocalhostRecoveryKubeconfig
		cfg, err = n.RESTConfig(via)
	}
	if err != nil {
		return nil, via, fmt.Errorf("%s: %w (pass --kubeconfig with a kubeconfig that reaches this cluster's API server)", via, err)
	}
	cfg.Timeout = 30 * time.Second
	cs, err := kube.New(csr.TuneClient(cfg))
	return cs, via, err
}

func approve(ctx context.Context, d pipeline.Data, o Options) (map[string]string, error) {
	cs, via, err := Client(d.Node(), o.Kubeconfig)
	if err != nil {
		return nil, err
	}
	this := ""
	if c := d.Cluster(); c != nil {
		this = c.NodeName
	}
	only := o.ApproveNode
	if only == "" && !o.AllNodes {
		only = this
	}
	if only == "" && !o.AllNodes {
		return nil, errors.New("this node's name is unknown (no kubelet client certificate to read it from): pass --approve-node NAME or --all-nodes")
	}
	nodes := map[string]csr.Node{}
	if this != "" {
		nodes[this] = csr.Node{Name: this}
	}
	if err := csr.NodesFromAPI(ctx, cs, nodes); err != nil {
		return nil, fmt.Errorf("listing Node objects through %s: %w (is the API server up? `oc --kubeconfig %s get nodes`)", via, err, via)
	}
	fmt.Fprintf(d.Out(), "      approving through %s for %s\n", via, orAll(only))
	a := &csr.Approver{Client: cs, Sign: csr.SignNever, Out: d.Out(), DryRun: d.Options().DryRun,
		Policy: csr.Policy{Nodes: nodes, MaxLifetime: o.MaxLifetime, OnlyNode: only}}
	deadline := time.Now().Add(o.Wait)
	approved, refused := map[string]bool{}, map[string]bool{}
	rounds := map[string]bool{}
	want := only
	if want == "" {
		want = this
	}
	for {
		res, err := a.Pass(ctx)
		if err != nil {
			return nil, err
		}
		for _, dc := range res.Approved {
			approved[dc.Name] = true
			if dc.Node == want {
				rounds[dc.Signer] = true
			}
		}
		for _, r := range res.Refused {
			refused[r.Name] = true
		}
		if o.Wait == 0 || rounds[csr.SignerClientKubelet] && rounds[csr.SignerKubeletServing] || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	fmt.Fprintf(d.Out(), "      %d approved, %d refused\n", len(approved), len(refused))
	if o.Wait > 0 && !(rounds[csr.SignerClientKubelet] && rounds[csr.SignerKubeletServing]) {
		fmt.Fprintf(d.Out(), "      note: within %s node %s did not file both a client and a serving CSR (client: %v, serving: %v): "+
			"`oc get csr` shows what is pending\n", o.Wait, want, rounds[csr.SignerClientKubelet], rounds[csr.SignerKubeletServing])
	}
	return map[string]string{"approved": strconv.Itoa(len(approved)), "refused": strconv.Itoa(len(refused)), "via": via}, nil
}

func orAll(n string) string {
	if n == "" {
		return "every node of the cluster"
	}
	return "node " + n
}
