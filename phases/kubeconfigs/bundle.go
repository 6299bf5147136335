package kubeconfigs

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// bundleAction installs a kubelet client certificate signed elsewhere
// (--kubelet-client-bundle): a worker has no CA key, so `kubecpr cluster`
// signs on a control-plane node and hands the bundle over. The bundle is
// checked before any change: it chains to this node's cluster CA, names
// this node (CN system:node:NAME, O system:nodes), is a client
// certificate valid now, and its key matches.
func bundleAction(d pipeline.Data, inv *inventory.Inventory, it *inventory.Item) (pipeline.Action, error) {
	file := d.Options().KubeletClientBundle
	data, err := node.ReadRegular(file, file)
	if err != nil {
		return pipeline.Action{}, fmt.Errorf("--kubelet-client-bundle: %w", err)
	}
	cert, err := pki.ParseCertificate(data)
	if err != nil {
		return pipeline.Action{}, fmt.Errorf("--kubelet-client-bundle %s: %w", file, err)
	}
	key, err := pki.ParsePrivateKey(data)
	if err != nil {
		return pipeline.Action{}, fmt.Errorf("--kubelet-client-bundle %s: %w", file, err)
	}
	if !pki.KeyMatches(cert.PublicKey, key) {
		return pipeline.Action{}, fmt.Errorf("--kubelet-client-bundle %s: the key does not match the certificate", file)
	}
	ca := inv.CA("ca")
	if ca == nil || ca.CA == nil {
		return pipeline.Action{}, fmt.Errorf("--kubelet-client-bundle %s: this node has no readable cluster CA certificate to check it against", file)
	}
	if err := ca.CA.Verify(cert); err != nil {
		return pipeline.Action{}, fmt.Errorf("--kubelet-client-bundle %s is not signed by this node's cluster CA (%s): %v; it was made for another cluster", file, ca.CertPath, err)
	}
	name := ""
	if c := d.Cluster(); c != nil {
		name = c.NodeName
	}
	want := "system:node:" + name
	if name == "" && it.Cert != nil {
		want = it.Cert.Subject.CommonName
	}
	if cert.Subject.CommonName != want || !slices.Equal(cert.Subject.Organization, []string{"system:nodes"}) {
		return pipeline.Action{}, fmt.Errorf("--kubelet-client-bundle %s is for %q %v, this node is %q [system:nodes]: it belongs to another node", file, cert.Subject.CommonName, cert.Subject.Organization, want)
	}
	if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return pipeline.Action{}, fmt.Errorf("--kubelet-client-bundle %s is not a client certificate (no clientAuth usage)", file)
	}
	if st := pki.StatusAt(cert, d.Now(), 0); st != pki.StatusOK {
		return pipeline.Action{}, fmt.Errorf("--kubelet-client-bundle %s is %s at %s", file, st, d.Now().UTC().Format("2006-01-02T15:04:05Z"))
	}
	store := it.Store
	paths := store.Paths()
	if ks, ok := store.(*inventory.KubeletPEMStore); ok {
		paths = append(paths, ks.NextDated(d.Now()))
	}
	was := "missing"
	if it.Cert != nil {
		was = fmt.Sprintf("%s %s", it.Status, it.Cert.NotAfter.UTC().Format("2006-01-02"))
	}
	return pipeline.Action{
		ID:      "kubeconfigs/kubelet-client-bundle",
		Summary: fmt.Sprintf("install the kubelet client certificate signed on a control-plane node (%s): %s → until %s", it.Path, was, cert.NotAfter.UTC().Format("2006-01-02")),
		Paths:   paths,
		Files: func(ctx context.Context) ([]node.FileOp, error) {
			return store.Render(cert, key, d.Now())
		},
	}, nil
}
