package csr

import (
	"context"
	"fmt"
	"time"

	"github.com/kubecpr/kubecpr/recovery/bootstraptoken"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
)

// BootstrapKubeconfig is where the kubelet looks for its bootstrap
// kubeconfig on a kubeadm node (--bootstrap-kubeconfig).
const BootstrapKubeconfig = "/etc/kubernetes/bootstrap-kubelet.conf"

// createBootstrapToken creates a short-lived bootstrap token (the kubeadm
// node-token group, so kubeadm's RBAC lets it file CSRs) and writes a
// bootstrap kubeconfig (0600) pointing at server. The token secret is
// never printed or journaled: it lives only in that file and in the API.
func createBootstrapToken(ctx context.Context, d pipeline.Data, cs bootstraptoken.Secrets, server string, caPEM []byte, ttl time.Duration) (map[string]string, error) {
	tok, err := bootstraptoken.Create(ctx, cs, time.Now(), ttl, "created by kubecpr for a kubelet that must re-bootstrap")
	if err != nil {
		return nil, err
	}
	out, err := bootstraptoken.Kubeconfig(server, caPEM, tok)
	if err != nil {
		return nil, err
	}
	// Through the journal: backed up (or recorded absent), intent, atomic
	// write, done — rollback restores or removes it like any other file.
	op := node.FileOp{Path: BootstrapKubeconfig, Data: out, Mode: 0o600, Secret: true}
	if err := d.ApplyFiles(ctx, "csr", "csr/bootstrap-kubeconfig", []node.FileOp{op}); err != nil {
		return nil, err
	}
	fmt.Fprintf(d.Out(), "      wrote %s (0600): bootstrap token %s, valid until %s, for %s\n", BootstrapKubeconfig, tok.ID, tok.Expires.Format(time.RFC3339), server)
	return map[string]string{"bootstrap_token_id": tok.ID, "bootstrap_kubeconfig": BootstrapKubeconfig}, nil
}

// Undo has nothing left to do for the bootstrap kubeconfig: it was written
// as its own journaled file action (csr/bootstrap-kubeconfig), which
// rollback restores from the backup or removes. The token itself expires.
func Undo(ctx context.Context, d pipeline.Data, actionID string, facts map[string]string) error {
	return nil
}
