package csr

import (
	"crypto/x509/pkix"
	"strings"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
)

// OpenShift's requesters run through the same hostile corpus: the
// node-bootstrapper service account may obtain a node client certificate
// only for a node of this cluster, with a client certificate's subject,
// usages and no SANs; never a serving certificate, never for a node it
// does not know, and no other service account may.
func TestPolicyOpenShiftRequesters(t *testing.T) {
	sa := []string{"system:serviceaccounts", OpenShiftNodeBootstrapperGroup, "system:authenticated"}
	nodeGroups := []string{"system:nodes", "system:authenticated"}
	for _, tc := range []struct {
		name    string
		csr     *certificatesv1.CertificateSigningRequest
		approve bool
		reason  string
	}{
		{"node-bootstrapper client CSR", csr("ok-ocp-client", SignerClientKubelet, OpenShiftNodeBootstrapper, sa, client, request(t, nodeSubj, nil, nil), nil), true, "node-bootstrapper"},
		{"node-bootstrapper with key encipherment", csr("ok-ocp-client-ke", SignerClientKubelet, OpenShiftNodeBootstrapper, sa,
			[]certificatesv1.KeyUsage{certificatesv1.UsageKeyEncipherment, certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}, request(t, nodeSubj, nil, nil), nil), true, "node-bootstrapper"},
		{"renewal by the node", csr("ok-ocp-renew", SignerClientKubelet, "system:node:cp-1", nodeGroups, client, request(t, nodeSubj, nil, nil), nil), true, "by the node itself"},
		{"serving by the node", csr("ok-ocp-serving", SignerKubeletServing, "system:node:cp-1", nodeGroups, serving, request(t, nodeSubj, []string{"cp-1"}, []string{"127.0.0.1"}), nil), true, "own names"},

		{"node-bootstrapper, unknown node", csr("bad-ocp-unknown", SignerClientKubelet, OpenShiftNodeBootstrapper, sa, client,
			request(t, pkix.Name{CommonName: "system:node:intruder", Organization: []string{"system:nodes"}}, nil, nil), nil), false, "not a node of this cluster"},
		{"node-bootstrapper, wrong CN", csr("bad-ocp-cn", SignerClientKubelet, OpenShiftNodeBootstrapper, sa, client,
			request(t, pkix.Name{CommonName: "system:admin", Organization: []string{"system:nodes"}}, nil, nil), nil), false, "is not system:node:<name>"},
		{"node-bootstrapper, masters organization", csr("bad-ocp-o", SignerClientKubelet, OpenShiftNodeBootstrapper, sa, client,
			request(t, pkix.Name{CommonName: "system:node:cp-1", Organization: []string{"system:nodes", "system:masters"}}, nil, nil), nil), false, "organization"},
		{"node-bootstrapper, server usages", csr("bad-ocp-usage", SignerClientKubelet, OpenShiftNodeBootstrapper, sa,
			[]certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth}, request(t, nodeSubj, nil, nil), nil), false, "usages"},
		{"node-bootstrapper, SANs on a client cert", csr("bad-ocp-san", SignerClientKubelet, OpenShiftNodeBootstrapper, sa, client,
			request(t, nodeSubj, []string{"kubernetes.default"}, nil), nil), false, "no SANs"},
		{"node-bootstrapper asks for a serving certificate", csr("bad-ocp-serving", SignerKubeletServing, OpenShiftNodeBootstrapper, sa, serving,
			request(t, nodeSubj, []string{"cp-1"}, []string{"127.0.0.1"}), nil), false, "requested by the node itself"},
		{"node-bootstrapper, another signer", csr("bad-ocp-signer", "kubernetes.io/kube-apiserver-client", OpenShiftNodeBootstrapper, sa, client,
			request(t, nodeSubj, nil, nil), nil), false, "not a kubelet signer"},
		{"node-bootstrapper name without its groups", csr("bad-ocp-groups", SignerClientKubelet, OpenShiftNodeBootstrapper, []string{"system:authenticated"}, client,
			request(t, nodeSubj, nil, nil), nil), false, "neither node"},
		{"another namespace's node-bootstrapper", csr("bad-ocp-ns", SignerClientKubelet, "system:serviceaccount:default:node-bootstrapper",
			[]string{"system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"}, client, request(t, nodeSubj, nil, nil), nil), false, "neither node"},
		{"another MCO service account", csr("bad-ocp-sa", SignerClientKubelet, "system:serviceaccount:openshift-machine-config-operator:machine-config-daemon", sa, client,
			request(t, nodeSubj, nil, nil), nil), false, "neither node"},
		{"node renews another node's client cert", csr("bad-ocp-other", SignerClientKubelet, "system:node:cp-1", nodeGroups, client,
			request(t, pkix.Name{CommonName: "system:node:cp-2", Organization: []string{"system:nodes"}}, nil, nil), nil), false, "neither node"},
		{"node asks for another node's serving cert", csr("bad-ocp-other-serving", SignerKubeletServing, "system:node:cp-1", nodeGroups, serving,
			request(t, pkix.Name{CommonName: "system:node:cp-2", Organization: []string{"system:nodes"}}, []string{"cp-2"}, nil), nil), false, "requested by the node itself"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := policy.Evaluate(tc.csr)
			if d.Approve != tc.approve || !strings.Contains(d.Reason, tc.reason) {
				t.Fatalf("approve=%v reason=%q, want approve=%v reason containing %q", d.Approve, d.Reason, tc.approve, tc.reason)
			}
		})
	}
	// --approve-node narrows the bootstrapper too.
	only := policy
	only.OnlyNode = "cp-2"
	if d := only.Evaluate(csr("x", SignerClientKubelet, OpenShiftNodeBootstrapper, sa, client, request(t, nodeSubj, nil, nil), nil)); d.Approve || !strings.Contains(d.Reason, "--approve-node") {
		t.Fatalf("--approve-node: %+v", d)
	}
}
