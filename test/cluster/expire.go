package cluster

import (
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/test/fixture"
)

// ClusterCA returns the cluster CA (ca.crt and its key) of the node; on an
// ExternalCA node or a Worker the key comes from where it is kept outside
// the tree.
func (n *Node) ClusterCA(t testing.TB) *fixture.CA {
	t.Helper()
	crt, err := fixture.ReadCert(n.Path("/etc/kubernetes/pki/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	keyFile := n.Path("/etc/kubernetes/pki/ca.key")
	if n.ExternalCAKey != "" {
		keyFile = n.ExternalCAKey
	}
	if n.caKey != "" {
		keyFile = n.caKey
	}
	key, err := fixture.ReadKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture.CA{Cert: crt, Key: key}
}

// Resign re-signs leaves of the node into the window w with the node's own
// CAs (fixture.ResignWithCA: pki leaves, kubeconfig-embedded client
// certificates, the kubelet's current pem; same subjects, SANs, usages and
// keys). only (nil: all) filters by node path. On a Worker only the
// kubelet's client certificate (the target of kubelet-client-current.pem)
// is re-signed, with the cluster CA key kept outside its tree.
func (n *Node) Resign(t testing.TB, w fixture.Window, only func(nodePath string) bool) {
	t.Helper()
	if n.IsWorker {
		if err := n.resignWorker(n.ClusterCA(t), w, only); err != nil {
			t.Fatalf("re-signing worker %s's kubelet client certificate: %v", n.Name, err)
		}
		return
	}
	var ca *fixture.CA
	if n.ExternalCAKey != "" {
		ca = n.ClusterCA(t)
	}
	if err := fixture.ResignWithCA(n.Root, w, only, ca); err != nil {
		t.Fatalf("re-signing the node's leaves: %v", err)
	}
}

// Expire re-signs every leaf of the node so that it expired ago: valid
// from ago+1y before now until ago before now (a year-long certificate
// that ran out, as on a node nobody upgraded). The CAs are left alone.
func (n *Node) Expire(t testing.TB, ago time.Duration) {
	t.Helper()
	if ago <= 0 {
		t.Fatalf("Expire(%s): want a positive duration", ago)
	}
	now := time.Now()
	n.Resign(t, fixture.Window{NotBefore: now.Add(-ago).AddDate(-1, 0, 0), NotAfter: now.Add(-ago)}, nil)
}
