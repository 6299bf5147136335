package csr

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"strings"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func request(t *testing.T, subj pkix.Name, dns []string, ips []string) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.CertificateRequest{Subject: subj, DNSNames: dns}
	for _, s := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(s))
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

var (
	nodeSubj = pkix.Name{CommonName: "system:node:cp-1", Organization: []string{"system:nodes"}}
	client   = []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}
	serving  = []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageKeyEncipherment, certificatesv1.UsageServerAuth}
	policy   = Policy{Nodes: map[string]Node{
		"cp-1": {Name: "cp-1", Addresses: []string{"127.0.0.1", "cp-1.example"}},
		"cp-2": {Name: "cp-2", Addresses: []string{"127.0.0.12"}},
	}}
)

func csr(name, signer, user string, groups []string, usages []certificatesv1.KeyUsage, req []byte, lifetime *int32) *certificatesv1.CertificateSigningRequest {
	return &certificatesv1.CertificateSigningRequest{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: certificatesv1.CertificateSigningRequestSpec{SignerName: signer, Username: user, Groups: groups, Usages: usages, Request: req, ExpirationSeconds: lifetime}}
}

func i32(v int32) *int32 { return &v }

// The hostile corpus: every CSR that must not be approved, each with the
// reason it is refused; and the two that must be.
func TestPolicy(t *testing.T) {
	boot := []string{"system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token", "system:authenticated"}
	nodeGroups := []string{"system:nodes", "system:authenticated"}
	for _, tc := range []struct {
		name    string
		csr     *certificatesv1.CertificateSigningRequest
		approve bool
		reason  string
	}{
		{"client via bootstrap token", csr("ok-client", SignerClientKubelet, "system:bootstrap:abcdef", boot, client, request(t, nodeSubj, nil, nil), nil), true, "bootstrap token"},
		{"client renewal by the node", csr("ok-renew", SignerClientKubelet, "system:node:cp-1", nodeGroups, client, request(t, nodeSubj, nil, nil), nil), true, "by the node itself"},
		{"serving by the node", csr("ok-serving", SignerKubeletServing, "system:node:cp-1", nodeGroups, serving, request(t, nodeSubj, []string{"cp-1", "cp-1.example"}, []string{"127.0.0.1"}), i32(86400)), true, "own names"},

		{"wrong CN", csr("bad-cn", SignerClientKubelet, "system:bootstrap:abcdef", boot, client, request(t, pkix.Name{CommonName: "admin", Organization: []string{"system:nodes"}}, nil, nil), nil), false, "is not system:node:<name>"},
		{"CN of an unknown node", csr("bad-unknown", SignerClientKubelet, "system:bootstrap:abcdef", boot, client, request(t, pkix.Name{CommonName: "system:node:evil", Organization: []string{"system:nodes"}}, nil, nil), nil), false, "not a node of this cluster"},
		{"CN of another node, requested by cp-1", csr("bad-other", SignerClientKubelet, "system:node:cp-1", nodeGroups, client, request(t, pkix.Name{CommonName: "system:node:cp-2", Organization: []string{"system:nodes"}}, nil, nil), nil), false, "neither node"},
		{"masters organization", csr("bad-o", SignerClientKubelet, "system:bootstrap:abcdef", boot, client, request(t, pkix.Name{CommonName: "system:node:cp-1", Organization: []string{"system:masters"}}, nil, nil), nil), false, "organization"},
		{"extra SANs on a client cert", csr("bad-san", SignerClientKubelet, "system:bootstrap:abcdef", boot, client, request(t, nodeSubj, []string{"cp-1"}, nil), nil), false, "no SANs"},
		{"serving IP not of the node", csr("bad-ip", SignerKubeletServing, "system:node:cp-1", nodeGroups, serving, request(t, nodeSubj, []string{"cp-1"}, []string{"8.8.8.8"}), nil), false, "IP 8.8.8.8 is not an address"},
		{"serving DNS not of the node", csr("bad-dns", SignerKubeletServing, "system:node:cp-1", nodeGroups, serving, request(t, nodeSubj, []string{"kubernetes.default"}, nil), nil), false, "is not a host name"},
		{"wrong usages", csr("bad-usage", SignerClientKubelet, "system:bootstrap:abcdef", boot, []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageServerAuth}, request(t, nodeSubj, nil, nil), nil), false, "usages"},
		{"wrong signer", csr("bad-signer", "kubernetes.io/kube-apiserver-client", "system:bootstrap:abcdef", boot, client, request(t, nodeSubj, nil, nil), nil), false, "not a kubelet signer"},
		{"wrong requester", csr("bad-requester", SignerClientKubelet, "mallory", []string{"system:authenticated"}, client, request(t, nodeSubj, nil, nil), nil), false, "neither node"},
		{"serving requested by a bootstrap token", csr("bad-serving-req", SignerKubeletServing, "system:bootstrap:abcdef", boot, serving, request(t, nodeSubj, []string{"cp-1"}, nil), nil), false, "requested by the node itself"},
		{"10-year lifetime", csr("bad-lifetime", SignerClientKubelet, "system:bootstrap:abcdef", boot, client, request(t, nodeSubj, nil, nil), i32(10*365*86400)), false, "exceeds the policy"},
		{"garbage request", csr("bad-pem", SignerClientKubelet, "system:bootstrap:abcdef", boot, client, []byte("not pem"), nil), false, "not a PEM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := policy.Evaluate(tc.csr)
			if d.Approve != tc.approve || !strings.Contains(d.Reason, tc.reason) {
				t.Fatalf("approve=%v reason=%q, want approve=%v reason containing %q", d.Approve, d.Reason, tc.approve, tc.reason)
			}
		})
	}
	only := policy
	only.OnlyNode = "cp-2"
	if d := only.Evaluate(csr("x", SignerClientKubelet, "system:bootstrap:abcdef", boot, client, request(t, nodeSubj, nil, nil), nil)); d.Approve || !strings.Contains(d.Reason, "--approve-node") {
		t.Fatalf("--approve-node: %+v", d)
	}
}
