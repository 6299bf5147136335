package csr

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubecpr/kubecpr/recovery/pki"
)

// SignMode says when kubecpr signs approved CSRs itself.
type SignMode string

const (
	SignAuto   SignMode = "auto"   // when no controller-manager issued the certificate within SignGrace
	SignAlways SignMode = "always" // immediately
	SignNever  SignMode = "never"  // approve only
)

// Approver processes pending CSRs through one API server.
type Approver struct {
	Client    kubernetes.Interface
	Policy    Policy
	CA        *pki.CA
	Sign      SignMode
	SignGrace time.Duration // auto: how long to wait for the controller-manager (default 3s)
	Now       func() time.Time
	Out       io.Writer
	DryRun    bool

	seen map[string]bool // CSRs already reported
}

// Result of one pass.
type Result struct {
	Approved, Signed, Refused []Decision
}

func pending(c *certificatesv1.CertificateSigningRequest) bool {
	for _, cond := range c.Status.Conditions {
		if cond.Type == certificatesv1.CertificateApproved || cond.Type == certificatesv1.CertificateDenied || cond.Type == certificatesv1.CertificateFailed {
			return false
		}
	}
	return true
}

func approvedByUs(c *certificatesv1.CertificateSigningRequest) bool {
	for _, cond := range c.Status.Conditions {
		if cond.Type == certificatesv1.CertificateApproved && cond.Reason == "KubecprApproved" {
			return true
		}
	}
	return false
}

// NodesFromAPI adds the cluster's Node objects (names and addresses) to a
// policy's node list.
func NodesFromAPI(ctx context.Context, cs kubernetes.Interface, into map[string]Node) error {
	list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, n := range list.Items {
		nd := into[n.Name]
		nd.Name = n.Name
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP || a.Type == corev1.NodeHostName || a.Type == corev1.NodeInternalDNS {
				nd.Addresses = append(nd.Addresses, a.Address)
			}
		}
		into[n.Name] = nd
	}
	return nil
}

// Pass lists the CSRs once: approves the pending ones the policy allows,
// signs approved ones that have no certificate, and reports the rest.
func (a *Approver) Pass(ctx context.Context) (Result, error) {
	if a.seen == nil {
		a.seen = map[string]bool{}
	}
	if a.Now == nil {
		a.Now = time.Now
	}
	var res Result
	list, err := a.Client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		return res, fmt.Errorf("listing CSRs: %w", err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	var toSign []*certificatesv1.CertificateSigningRequest
	for i := range list.Items {
		c := &list.Items[i]
		switch {
		case pending(c):
			d := a.Policy.Evaluate(c)
			if !d.Approve {
				res.Refused = append(res.Refused, d)
				if !a.seen[c.Name] && a.Out != nil {
					fmt.Fprintf(a.Out, "      refused %s (%s): %s\n", c.Name, c.Spec.SignerName, d.Reason)
				}
				a.seen[c.Name] = true
				continue
			}
			if a.DryRun {
				res.Approved = append(res.Approved, d)
				continue
			}
			c.Status.Conditions = append(c.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
				Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "KubecprApproved",
				Message: "approved by kubecpr: " + d.Reason, LastUpdateTime: metav1.Now()})
			updated, err := a.Client.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, c.Name, c, metav1.UpdateOptions{})
			if err != nil {
				return res, fmt.Errorf("approving %s: %w", c.Name, err)
			}
			if a.Out != nil {
				fmt.Fprintf(a.Out, "      approved %s for node %s: %s\n", c.Name, d.Node, d.Reason)
			}
			res.Approved = append(res.Approved, d)
			toSign = append(toSign, updated)
		case approvedByUs(c) && len(c.Status.Certificate) == 0:
			toSign = append(toSign, c)
		}
	}
	if a.Sign == SignNever || a.DryRun || len(toSign) == 0 {
		return res, nil
	}
	if a.Sign == SignAuto {
		grace := a.SignGrace
		if grace == 0 {
			grace = 3 * time.Second
		}
		toSign = a.waitForControllerManager(ctx, toSign, grace)
	}
	for _, c := range toSign {
		certPEM, err := Sign(a.CA, c, a.Now(), a.Policy.MaxLifetime)
		if err != nil {
			return res, fmt.Errorf("signing %s: %w", c.Name, err)
		}
		c.Status.Certificate = certPEM
		if _, err := a.Client.CertificatesV1().CertificateSigningRequests().UpdateStatus(ctx, c, metav1.UpdateOptions{}); err != nil {
			return res, fmt.Errorf("writing the certificate of %s: %w", c.Name, err)
		}
		if a.Out != nil {
			fmt.Fprintf(a.Out, "      signed %s with the cluster CA (no controller-manager issued it)\n", c.Name)
		}
		res.Signed = append(res.Signed, Decision{Name: c.Name, Signer: c.Spec.SignerName})
	}
	return res, nil
}

// waitForControllerManager returns the CSRs that still have no
// certificate after grace.
func (a *Approver) waitForControllerManager(ctx context.Context, cs []*certificatesv1.CertificateSigningRequest, grace time.Duration) []*certificatesv1.CertificateSigningRequest {
	deadline := time.Now().Add(grace)
	for {
		var left []*certificatesv1.CertificateSigningRequest
		for _, c := range cs {
			got, err := a.Client.CertificatesV1().CertificateSigningRequests().Get(ctx, c.Name, metav1.GetOptions{})
			if err != nil || len(got.Status.Certificate) == 0 {
				if err == nil {
					c = got
				}
				left = append(left, c)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		cs = left
		time.Sleep(250 * time.Millisecond)
	}
}
