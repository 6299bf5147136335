// Package csr is the csr stage: approve the pending node CSRs that pass the
// checks kube-controller-manager applies to kubelet client certificates and
// kubelet-csr-approver applies to kubelet serving certificates, list every
// other one with the reason it was refused, and sign the approved ones with
// the cluster CA when no controller-manager is signing.
package csr

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
)

// Signers kubecpr handles.
const (
	SignerClientKubelet  = "kubernetes.io/kube-apiserver-client-kubelet"
	SignerKubeletServing = "kubernetes.io/kubelet-serving"
)

// OpenShift 4's kubelet bootstrap identity: the machine-config server
// writes the node-bootstrapper service account's token into every node's
// /etc/kubernetes/kubeconfig, and the kubelet files its client CSR with it
// (openshift/cluster-machine-approver README, "Node Client CSR Approval
// Workflow": the same user and groups).
const (
	OpenShiftNodeBootstrapper      = "system:serviceaccount:openshift-machine-config-operator:node-bootstrapper"
	OpenShiftNodeBootstrapperGroup = "system:serviceaccounts:openshift-machine-config-operator"
)

// Node is what the approver knows of one node of this cluster.
type Node struct {
	Name      string
	Addresses []string // IPs and host names from the Node's status (and, for this node, its advertise address)
}

// Policy is the approver's configuration.
type Policy struct {
	Nodes       map[string]Node
	MaxLifetime time.Duration // longest expirationSeconds accepted (default 1 year)
	// OnlyNode, when set, restricts approval to that node (--approve-node).
	OnlyNode string
	// AllowedNodes, when not nil, restricts approval to these node names
	// (kubecpr cluster --workers bootstrap: the inventory's workers): a CSR
	// for any other name is refused, even one of a Node the API knows.
	AllowedNodes map[string]bool
}

// Decision is the verdict on one CSR.
type Decision struct {
	Name    string
	Node    string
	Signer  string
	Approve bool
	Reason  string // why it was refused, or what was checked
}

func usageSet(us []certificatesv1.KeyUsage) string {
	s := make([]string, len(us))
	for i, u := range us {
		s[i] = string(u)
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}

func allowed(got string, sets ...[]certificatesv1.KeyUsage) bool {
	for _, set := range sets {
		if got == usageSet(set) {
			return true
		}
	}
	return false
}

var (
	clientUsages = [][]certificatesv1.KeyUsage{
		{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
		{certificatesv1.UsageKeyEncipherment, certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
	}
	servingUsages = [][]certificatesv1.KeyUsage{
		{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth},
		{certificatesv1.UsageKeyEncipherment, certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth},
	}
)

func has(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Evaluate decides one CSR. It never approves what it does not understand.
func (p Policy) Evaluate(c *certificatesv1.CertificateSigningRequest) Decision {
	d := Decision{Name: c.Name, Signer: c.Spec.SignerName}
	refuse := func(format string, a ...any) Decision {
		d.Approve, d.Reason = false, fmt.Sprintf(format, a...)
		return d
	}
	if c.Spec.SignerName != SignerClientKubelet && c.Spec.SignerName != SignerKubeletServing {
		return refuse("signer %q is not a kubelet signer", c.Spec.SignerName)
	}
	blk, _ := pem.Decode(c.Spec.Request)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return refuse("spec.request is not a PEM certificate request")
	}
	req, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return refuse("spec.request does not parse: %v", err)
	}
	if err := req.CheckSignature(); err != nil {
		return refuse("the request's signature is invalid: %v", err)
	}
	cn := req.Subject.CommonName
	if !strings.HasPrefix(cn, "system:node:") {
		return refuse("CN %q is not system:node:<name>", cn)
	}
	nodeName := strings.TrimPrefix(cn, "system:node:")
	d.Node = nodeName
	node, known := p.Nodes[nodeName]
	if !known {
		return refuse("CN names node %q, which is not a node of this cluster", nodeName)
	}
	if p.AllowedNodes != nil && !p.AllowedNodes[nodeName] {
		return refuse("node %q is not one of the nodes this pass may approve (the inventory's workers)", nodeName)
	}
	if p.OnlyNode != "" && nodeName != p.OnlyNode {
		return refuse("node %q is not the one --approve-node allows (%s)", nodeName, p.OnlyNode)
	}
	if len(req.Subject.Organization) != 1 || req.Subject.Organization[0] != "system:nodes" {
		return refuse("organization %v, want exactly [system:nodes]", req.Subject.Organization)
	}
	if len(req.Subject.OrganizationalUnit) > 0 || len(req.Subject.Country) > 0 || len(req.Subject.Locality) > 0 {
		return refuse("subject has fields beyond CN and O")
	}
	max := p.MaxLifetime
	if max == 0 {
		max = 365 * 24 * time.Hour
	}
	if c.Spec.ExpirationSeconds != nil && time.Duration(*c.Spec.ExpirationSeconds)*time.Second > max {
		return refuse("requested lifetime %s exceeds the policy's %s", time.Duration(*c.Spec.ExpirationSeconds)*time.Second, max)
	}
	user, groups := c.Spec.Username, c.Spec.Groups
	switch c.Spec.SignerName {
	case SignerClientKubelet:
		if !allowed(usageSet(c.Spec.Usages), clientUsages...) {
			return refuse("usages [%s] are not a kubelet client certificate's", usageSet(c.Spec.Usages))
		}
		if len(req.DNSNames)+len(req.IPAddresses)+len(req.EmailAddresses)+len(req.URIs) > 0 {
			return refuse("a kubelet client certificate request must have no SANs")
		}
		switch {
		case user == cn:
			d.Reason = "node client certificate renewal requested by the node itself"
		case has(groups, "system:bootstrappers") && strings.HasPrefix(user, "system:bootstrap:"):
			d.Reason = "node client certificate requested with a bootstrap token of this cluster (" + user + ")"
		case user == OpenShiftNodeBootstrapper && has(groups, OpenShiftNodeBootstrapperGroup) && has(groups, "system:serviceaccounts"):
			// Only for a node this cluster knows (checked above), with a
			// client certificate's usages, subject and no SANs.
			d.Reason = "node client certificate requested through OpenShift's node-bootstrapper service account (the kubelet's bootstrap kubeconfig)"
		default:
			return refuse("requester %q is neither node %q nor a bootstrap token nor OpenShift's node-bootstrapper", user, nodeName)
		}
	case SignerKubeletServing:
		if !allowed(usageSet(c.Spec.Usages), servingUsages...) {
			return refuse("usages [%s] are not a kubelet serving certificate's", usageSet(c.Spec.Usages))
		}
		if user != cn || !has(groups, "system:nodes") {
			return refuse("a serving certificate must be requested by the node itself (requester %q, groups %v)", user, groups)
		}
		if len(req.EmailAddresses)+len(req.URIs) > 0 {
			return refuse("email or URI SANs are not allowed")
		}
		if len(req.DNSNames)+len(req.IPAddresses) == 0 {
			return refuse("a serving certificate request must name at least one DNS name or IP")
		}
		addrs := map[string]bool{nodeName: true}
		for _, a := range node.Addresses {
			if ip := net.ParseIP(a); ip != nil {
				addrs[ip.String()] = true
			} else {
				addrs[strings.ToLower(a)] = true
			}
		}
		for _, dns := range req.DNSNames {
			if !addrs[strings.ToLower(dns)] {
				return refuse("DNS name %q is not a host name of node %s", dns, nodeName)
			}
		}
		for _, ip := range req.IPAddresses {
			if !addrs[ip.String()] {
				return refuse("IP %s is not an address of node %s", ip, nodeName)
			}
		}
		d.Reason = "kubelet serving certificate for the node's own names and addresses"
	}
	d.Approve = true
	return d
}
