package kubeconfigs

import (
	"context"
	"fmt"
	"strings"

	"github.com/kubecpr/kubecpr/phases/certs"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// servingAction re-creates the kubelet's self-signed serving certificate
// (kubelet.crt), keeping kubelet.key. The kubelet itself only makes one
// when the files are missing, so an expired one stays expired until
// someone replaces it.
func servingAction(d pipeline.Data, it *inventory.Item) (pipeline.Action, error) {
	if it.Key == nil || !pki.KeyMatches(it.Cert.PublicKey, it.Key) {
		return pipeline.Action{}, &pipeline.PreconditionError{Stage: "kubeconfigs", Err: fmt.Errorf("%s", strings.Join(it.Problems, "; "))}
	}
	host := d.Cluster().NodeName
	if host == "" {
		host = strings.SplitN(it.Cert.Subject.CommonName, "@", 2)[0]
	}
	store := it.Store.(*inventory.PairStore)
	return pipeline.Action{
		ID:      "kubeconfigs/kubelet.crt",
		Summary: fmt.Sprintf("re-create the kubelet's self-signed serving certificate (%s): %s %s → one year, key kept", it.Path, it.Status, it.Cert.NotAfter.UTC().Format("2006-01-02")),
		Paths:   []string{store.CertPath},
		Files: func(ctx context.Context) ([]node.FileOp, error) {
			old, key, err := store.Load()
			if err != nil {
				return nil, err
			}
			chain, _, err := pki.SelfSignedServing(old, key, host, d.Now())
			if err != nil {
				return nil, err
			}
			return []node.FileOp{{Path: store.CertPath, Data: chain, Mode: 0o644}}, nil
		},
	}, nil
}

var _ = certs.Want
