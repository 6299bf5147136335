package csr

import (
	"crypto/x509/pkix"
	"strings"
	"testing"
)

// AllowedNodes narrows approval to a list of names (kubecpr cluster
// --workers bootstrap: the inventory's workers): a CSR for a node the
// API knows but the list does not name is refused and says why; one the
// list names passes the other checks as before.
func TestAllowedNodes(t *testing.T) {
	boot := []string{"system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token", "system:authenticated"}
	p := policy
	p.AllowedNodes = map[string]bool{"cp-1": true}
	ok := p.Evaluate(csr("in", SignerClientKubelet, "system:bootstrap:abcdef", boot, client, request(t, nodeSubj, nil, nil), nil))
	if !ok.Approve {
		t.Errorf("CSR of an allowed node refused: %s", ok.Reason)
	}
	other := pkix.Name{CommonName: "system:node:cp-2", Organization: []string{"system:nodes"}}
	no := p.Evaluate(csr("out", SignerClientKubelet, "system:bootstrap:abcdef", boot, client, request(t, other, nil, nil), nil))
	if no.Approve || no.Node != "cp-2" || !strings.Contains(no.Reason, "not one of the nodes") {
		t.Errorf("CSR of a node outside AllowedNodes: approve %v node %q reason %q", no.Approve, no.Node, no.Reason)
	}
	// Without the list the same CSR is approved (cp-2 is a known node).
	if d := policy.Evaluate(csr("out", SignerClientKubelet, "system:bootstrap:abcdef", boot, client, request(t, other, nil, nil), nil)); !d.Approve {
		t.Errorf("without AllowedNodes: refused %s", d.Reason)
	}
}
