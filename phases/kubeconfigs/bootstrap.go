package kubeconfigs

import (
	"context"
	"fmt"
	"path"

	"github.com/kubecpr/kubecpr/recovery/bootstraptoken"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
)

// BootstrapKubeconfig is where a kubeadm node's kubelet finds its
// bootstrap kubeconfig (--bootstrap-kubeconfig in kubeadm's drop-in).
const BootstrapKubeconfig = node.KubernetesDir + "/bootstrap-kubelet.conf"

// bootstrapAction lets the kubelet re-bootstrap instead of installing a
// certificate (--kubelet-bootstrap-token-file, `kubecpr cluster --workers
// bootstrap`): a worker has no CA key, the control plane made a
// short-lived bootstrap token, and this writes bootstrap-kubelet.conf with
// it, for the API server and CA the kubelet's kubelet.conf already uses.
// The kubelet, restarted by the bounce stage, finds its client certificate
// expired and requests a new one with the token; the driving node approves
// it. The file is written through the journal (rollback restores or
// removes it) and holds a secret: 0600, never printed.
func bootstrapAction(d pipeline.Data, inv *inventory.Inventory, it *inventory.Item) (pipeline.Action, error) {
	file := d.Options().KubeletBootstrapTokenFile
	data, err := node.ReadRegular(file, file)
	if err != nil {
		return pipeline.Action{}, fmt.Errorf("--kubelet-bootstrap-token-file: %w", err)
	}
	tok, err := bootstraptoken.Parse(string(data))
	if err != nil {
		return pipeline.Action{}, fmt.Errorf("--kubelet-bootstrap-token-file %s: %w", file, err)
	}
	kc := path.Join(node.KubernetesDir, "kubelet.conf")
	k, err := d.Node().Kubeconfig(kc)
	if err != nil {
		return pipeline.Action{}, fmt.Errorf("the bootstrap kubeconfig takes its API server and CA from %s: %w", kc, err)
	}
	server := k.Server()
	if server == "" {
		return pipeline.Action{}, fmt.Errorf("%s names no API server: the kubelet's bootstrap kubeconfig cannot be made from it; fix %s or use --workers bundle", kc, kc)
	}
	caPEM := k.Cluster.CertificateAuthorityData
	if len(caPEM) == 0 && k.Cluster.CertificateAuthority != "" {
		if caPEM, err = d.Node().ReadFile(k.Ref(k.Cluster.CertificateAuthority)); err != nil {
			return pipeline.Action{}, fmt.Errorf("%s refers to its CA %s: %w", kc, k.Cluster.CertificateAuthority, err)
		}
	}
	if len(caPEM) == 0 {
		ca := inv.CA("ca")
		if ca == nil || ca.CA == nil {
			return pipeline.Action{}, fmt.Errorf("%s has no CA and this node has no readable cluster CA certificate: the bootstrap kubeconfig cannot be made", kc)
		}
		if caPEM, err = d.Node().ReadFile(ca.CertPath); err != nil {
			return pipeline.Action{}, err
		}
	}
	// The CA as this run leaves it (--renew-ca, --ca-certificate), not an
	// older copy kubelet.conf still holds.
	for _, c := range inv.CAs {
		if c.CA == nil {
			continue
		}
		if swapped, _ := inventory.ReplaceTrust(caPEM, c.CA.Cert); swapped != nil {
			caPEM = swapped
		}
	}
	out, err := bootstraptoken.Kubeconfig(server, caPEM, tok)
	if err != nil {
		return pipeline.Action{}, err
	}
	was := "missing"
	if it.Cert != nil {
		was = fmt.Sprintf("%s %s", it.Status, it.Cert.NotAfter.UTC().Format("2006-01-02"))
	}
	return pipeline.Action{
		ID: "kubeconfigs/kubelet-bootstrap-kubeconfig",
		Summary: fmt.Sprintf("write %s (0600) with bootstrap token %s for %s: the restarted kubelet requests a new client certificate (%s is %s)",
			BootstrapKubeconfig, tok.ID, server, it.Path, was),
		Paths: []string{BootstrapKubeconfig},
		Files: func(ctx context.Context) ([]node.FileOp, error) {
			return []node.FileOp{{Path: BootstrapKubeconfig, Data: out, Mode: 0o600, Secret: true}}, nil
		},
	}, nil
}
