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

// createServingAction re-creates a missing kubelet.crt and kubelet.key the
// way the kubelet makes them when it starts without them (client-go's
// GenerateSelfSignedCertKey for the node name: a new RSA 2048 key, a
// throwaway CA "<host>-ca@<unix>" signing "<host>@<unix>", one year).
func createServingAction(d pipeline.Data, it *inventory.Item) (pipeline.Action, error) {
	host := ""
	if c := d.Cluster(); c != nil {
		host = c.NodeName
	}
	if host == "" {
		return pipeline.Action{}, fmt.Errorf("%s is missing and the node name is unknown: pass --config with nodeRegistration.name", it.Path)
	}
	store := it.Store.(*inventory.PairStore)
	return pipeline.Action{
		ID:      "kubeconfigs/kubelet.crt",
		Summary: fmt.Sprintf("create the kubelet's self-signed serving certificate (%s, missing) for %s: one year, new RSA 2048 key (%s)", it.Path, host, store.KeyPath),
		Paths:   store.Paths(),
		Files: func(ctx context.Context) ([]node.FileOp, error) {
			key, err := pki.NewLeafKey(nil) // RSA 2048, as the kubelet makes
			if err != nil {
				return nil, err
			}
			chain, _, err := pki.SelfSignedServing(pki.KubeletServingTemplate(host), key, host, d.Now())
			if err != nil {
				return nil, err
			}
			kpem, err := pki.EncodeKey(key)
			if err != nil {
				return nil, err
			}
			return []node.FileOp{
				{Path: store.KeyPath, Data: kpem, Mode: 0o600, Secret: true},
				{Path: store.CertPath, Data: chain, Mode: 0o644},
			}, nil
		},
	}, nil
}

var _ = certs.Want
