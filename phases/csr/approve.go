package csr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/kubecpr/kubecpr/recovery/pki"
)

// SignMode says when kubecpr signs approved CSRs itself.
type SignMode string

const (
	SignAuto   SignMode = "auto"   // when no controller-manager issued the certificate within SignGrace
	SignAlways SignMode = "always" // immediately
	SignNever  SignMode = "never"  // approve only
)

// API is what the approver asks of the API server (a *kube.Client does
// it).
type API interface {
	ListCSRs(ctx context.Context, opts metav1.ListOptions) (*certificatesv1.CertificateSigningRequestList, error)
	GetCSR(ctx context.Context, name string) (*certificatesv1.CertificateSigningRequest, error)
	UpdateCSRApproval(ctx context.Context, c *certificatesv1.CertificateSigningRequest, opts metav1.UpdateOptions) (*certificatesv1.CertificateSigningRequest, error)
	UpdateCSRStatus(ctx context.Context, c *certificatesv1.CertificateSigningRequest, opts metav1.UpdateOptions) (*certificatesv1.CertificateSigningRequest, error)
}

// NodeLister lists the cluster's Node objects (a *kube.Client does it).
type NodeLister interface {
	ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error)
}

// Approver processes pending CSRs through one API server.
type Approver struct {
	Client    API
	Policy    Policy
	CA        *pki.CA
	Sign      SignMode
	SignGrace time.Duration // auto: how long to wait for the controller-manager (default 3s)
	Now       func() time.Time
	Out       io.Writer
	DryRun    bool
	// Workers bounds the approvals and certificate writes in flight
	// (default DefaultWorkers). Whatever it is, output and Result are in
	// CSR name order.
	Workers int

	seen map[string]bool // CSRs already reported
}

// Result of one pass.
type Result struct {
	Approved, Signed, Refused []Decision
	Failed                    []Failure // could not be approved or signed (the others still were)
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
func NodesFromAPI(ctx context.Context, cs NodeLister, into map[string]Node) error {
	list, err := cs.ListNodes(ctx, metav1.ListOptions{})
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

// listCSRs lists every CSR, in pages of listPage (one request for up to
// that many, never one per CSR), sorted by name.
func (a *Approver) listCSRs(ctx context.Context) ([]certificatesv1.CertificateSigningRequest, error) {
	var items []certificatesv1.CertificateSigningRequest
	opts := metav1.ListOptions{Limit: listPage}
	for {
		list, err := a.Client.ListCSRs(ctx, opts)
		if err != nil {
			return nil, err
		}
		items = append(items, list.Items...)
		if list.Continue == "" {
			break
		}
		opts.Continue = list.Continue
	}
	sort.Slice(items, func(i, j int) bool { return items[i].Name < items[j].Name })
	return items, nil
}

// listPage: one List request for a pass of thousands of CSRs (a whole
// cluster's workers re-bootstrapping at once), in memory a few MiB (a
// kubelet CSR is ~1.5 KiB). Paging at all keeps a runaway number of CSRs
// from becoming one giant response.
const listPage = 5000

// errDecided: after a conflict, the CSR turned out to be approved, denied
// or failed by someone else meanwhile. errIssued: it got its certificate
// from someone else meanwhile. Neither is a failure: kubecpr leaves it.
var (
	errDecided = errors.New("approved or denied by someone else meanwhile: left alone")
	errIssued  = errors.New("its certificate was issued by someone else meanwhile: left alone")
)

// Failure is a CSR that could not be approved or signed.
type Failure struct {
	Name string
	Step string // "approving" or "signing"
	Err  error
}

func (f Failure) Error() string { return fmt.Sprintf("%s %s: %v", f.Step, f.Name, f.Err) }

// PassError is returned by Pass when some CSRs failed; every other CSR was
// still processed. Failures are sorted by name.
type PassError struct{ Failures []Failure }

func (e *PassError) Error() string {
	const shown = 5
	var b strings.Builder
	fmt.Fprintf(&b, "%d CSR(s) failed: ", len(e.Failures))
	for i, f := range e.Failures {
		if i == shown {
			fmt.Fprintf(&b, "; and %d more", len(e.Failures)-shown)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(f.Error())
	}
	return b.String()
}

// Unwrap gives errors.Is/As every failure's error.
func (e *PassError) Unwrap() []error {
	errs := make([]error, len(e.Failures))
	for i, f := range e.Failures {
		errs[i] = f.Err
	}
	return errs
}

// approve writes the approval of one CSR, re-reading it and trying again
// when it changed meanwhile (a conflict), as long as it is still pending.
func (a *Approver) approve(ctx context.Context, c *certificatesv1.CertificateSigningRequest, d Decision) (*certificatesv1.CertificateSigningRequest, error) {
	cur := c
	var updated *certificatesv1.CertificateSigningRequest
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if !pending(cur) {
			return errDecided
		}
		u := cur.DeepCopy()
		u.Status.Conditions = append(u.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
			Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "KubecprApproved",
			Message: "approved by kubecpr: " + d.Reason, LastUpdateTime: metav1.Now()})
		var err error
		updated, err = a.Client.UpdateCSRApproval(ctx, u, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			fresh, gerr := a.Client.GetCSR(ctx, c.Name)
			if gerr != nil {
				return gerr
			}
			cur = fresh
		}
		return err
	})
	return updated, err
}

// writeCertificate writes one signed certificate into the CSR's status,
// re-reading it and trying again on a conflict, as long as it is still
// approved by kubecpr and has no certificate.
func (a *Approver) writeCertificate(ctx context.Context, c *certificatesv1.CertificateSigningRequest, certPEM []byte) error {
	cur := c
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if len(cur.Status.Certificate) > 0 {
			return errIssued
		}
		if !approvedByUs(cur) {
			return errDecided
		}
		u := cur.DeepCopy()
		u.Status.Certificate = certPEM
		_, err := a.Client.UpdateCSRStatus(ctx, u, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			fresh, gerr := a.Client.GetCSR(ctx, c.Name)
			if gerr != nil {
				return gerr
			}
			cur = fresh
		}
		return err
	})
}

// Pass lists the CSRs once: approves the pending ones the policy allows,
// signs approved ones that have no certificate, and reports the rest.
//
// The writes run concurrently (Workers in flight); what is printed and
// returned is in CSR name order all the same. A CSR that cannot be
// approved or signed does not stop the others: each one is listed in
// Result.Failed and the error is a *PassError naming them.
func (a *Approver) Pass(ctx context.Context) (Result, error) {
	if a.seen == nil {
		a.seen = map[string]bool{}
	}
	if a.Now == nil {
		a.Now = time.Now
	}
	var res Result
	items, err := a.listCSRs(ctx)
	if err != nil {
		return res, fmt.Errorf("listing CSRs: %w", err)
	}

	// Decide every CSR (no writes), in name order. The checks verify each
	// request's signature: spread over the cores.
	decisions := make([]Decision, len(items))
	forEach(ctx, len(items), runtime.GOMAXPROCS(0), func(i int) {
		if pending(&items[i]) {
			decisions[i] = a.Policy.Evaluate(&items[i])
		}
	})
	if err := ctx.Err(); err != nil {
		return res, err
	}
	// With SignAlways, a CSR is signed and its certificate written by the
	// worker that approved it, as soon as the approval is back: kubecpr's
	// signatures (CPU) overlap the API server's writes in flight instead
	// of starting after the last approval, and the certificate goes on the
	// object the approval returned (no read in between).
	pipelined := a.Sign == SignAlways && !a.DryRun && a.CA != nil && a.CA.Key != nil
	type entry struct {
		c        *certificatesv1.CertificateSigningRequest
		d        Decision
		approve  bool // pending and allowed: to be approved
		sign     bool // already approved by kubecpr, no certificate yet
		refused  bool
		updated  *certificatesv1.CertificateSigningRequest
		err      error
		finished bool
		signed   signing // pipelined only
	}
	entries := make([]entry, 0, len(items))
	var jobs []int // indexes into entries of the CSRs to write
	for i := range items {
		c := &items[i]
		switch {
		case pending(c):
			d := decisions[i]
			e := entry{c: c, d: d, refused: !d.Approve, approve: d.Approve}
			if e.approve && !a.DryRun {
				jobs = append(jobs, len(entries))
			}
			entries = append(entries, e)
		case approvedByUs(c) && len(c.Status.Certificate) == 0:
			if pipelined {
				jobs = append(jobs, len(entries))
			}
			entries = append(entries, entry{c: c, sign: true})
		}
	}

	now := a.Now()
	forEach(ctx, len(jobs), a.Workers, func(k int) {
		e := &entries[jobs[k]]
		c := e.c
		if e.approve {
			e.updated, e.err = a.approve(ctx, e.c, e.d)
			e.finished = true
			if e.err != nil || !pipelined {
				return
			}
			c = e.updated
		}
		e.signed = signing{c: c, err: a.signAndWrite(ctx, c, now), done: true}
	})

	// Report in name order.
	var toSign []signing
	for i := range entries {
		e := &entries[i]
		name := e.c.Name
		switch {
		case e.refused:
			res.Refused = append(res.Refused, e.d)
			if !a.seen[name] && a.Out != nil {
				fmt.Fprintf(a.Out, "      refused %s (%s): %s\n", name, e.c.Spec.SignerName, e.d.Reason)
			}
			a.seen[name] = true
		case e.approve && a.DryRun:
			res.Approved = append(res.Approved, e.d)
		case e.approve && !e.finished:
			// ctx ended before this one was written: reported below.
		case e.approve && errors.Is(e.err, errDecided):
			if !a.seen[name] && a.Out != nil {
				fmt.Fprintf(a.Out, "      %s: %v\n", name, e.err)
			}
			a.seen[name] = true
		case e.approve && e.err != nil:
			res.Failed = append(res.Failed, Failure{Name: name, Step: "approving", Err: e.err})
			if a.Out != nil {
				fmt.Fprintf(a.Out, "      could not approve %s: %v\n", name, e.err)
			}
		case e.approve:
			if a.Out != nil {
				fmt.Fprintf(a.Out, "      approved %s for node %s: %s\n", name, e.d.Node, e.d.Reason)
			}
			res.Approved = append(res.Approved, e.d)
			toSign = append(toSign, e.signed)
			if !pipelined {
				toSign[len(toSign)-1].c = e.updated
			}
		case e.sign:
			toSign = append(toSign, e.signed)
			if !pipelined {
				toSign[len(toSign)-1].c = e.c
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if !pipelined {
		if a.Sign == SignNever || a.DryRun || len(toSign) == 0 {
			return res, a.failed(res)
		}
		cs := make([]*certificatesv1.CertificateSigningRequest, len(toSign))
		for i := range toSign {
			cs[i] = toSign[i].c
		}
		if a.Sign == SignAuto {
			grace := a.SignGrace
			if grace == 0 {
				grace = 3 * time.Second
			}
			if cs = a.waitForControllerManager(ctx, cs, grace); len(cs) == 0 {
				return res, a.failed(res)
			}
		}
		if a.CA == nil || a.CA.Key == nil {
			_, err := Sign(a.CA, cs[0], a.Now(), a.Policy.MaxLifetime)
			return res, errors.Join(fmt.Errorf("signing %d approved CSR(s) (%s first): %w", len(cs), cs[0].Name, err), a.failed(res))
		}
		toSign = make([]signing, len(cs))
		now := a.Now()
		forEach(ctx, len(cs), a.Workers, func(i int) {
			toSign[i] = signing{c: cs[i], err: a.signAndWrite(ctx, cs[i], now), done: true}
		})
	}
	for _, s := range toSign {
		switch err := s.err; {
		case !s.done:
		case errors.Is(err, errIssued) || errors.Is(err, errDecided):
			if a.Out != nil {
				fmt.Fprintf(a.Out, "      %s: %v\n", s.c.Name, err)
			}
		case err != nil:
			res.Failed = append(res.Failed, Failure{Name: s.c.Name, Step: "signing", Err: err})
			if a.Out != nil {
				fmt.Fprintf(a.Out, "      could not sign %s: %v\n", s.c.Name, err)
			}
		default:
			if a.Out != nil {
				fmt.Fprintf(a.Out, "      signed %s with the cluster CA (no controller-manager issued it)\n", s.c.Name)
			}
			res.Signed = append(res.Signed, Decision{Name: s.c.Name, Signer: s.c.Spec.SignerName})
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, a.failed(res)
}

// signing is one CSR's certificate: signed and written (done), or not
// reached before the context ended.
type signing struct {
	c    *certificatesv1.CertificateSigningRequest
	err  error
	done bool
}

// signAndWrite signs an approved CSR with the cluster CA and writes the
// certificate into its status.
func (a *Approver) signAndWrite(ctx context.Context, c *certificatesv1.CertificateSigningRequest, now time.Time) error {
	certPEM, err := Sign(a.CA, c, now, a.Policy.MaxLifetime)
	if err != nil {
		return err
	}
	return a.writeCertificate(ctx, c, certPEM)
}

// failed is the error of a pass whose result lists failures (nil if none).
func (a *Approver) failed(res Result) error {
	if len(res.Failed) == 0 {
		return nil
	}
	f := append([]Failure(nil), res.Failed...)
	sort.SliceStable(f, func(i, j int) bool { return f[i].Name < f[j].Name })
	return &PassError{Failures: f}
}

// waitForControllerManager returns the CSRs that still have no
// certificate after grace, as last read. It lists the CSRs (one request a
// round) rather than reading them one by one.
func (a *Approver) waitForControllerManager(ctx context.Context, cs []*certificatesv1.CertificateSigningRequest, grace time.Duration) []*certificatesv1.CertificateSigningRequest {
	deadline := time.Now().Add(grace)
	for {
		select {
		case <-ctx.Done():
			return cs
		case <-time.After(250 * time.Millisecond):
		}
		items, err := a.listCSRs(ctx)
		if err == nil {
			byName := make(map[string]*certificatesv1.CertificateSigningRequest, len(items))
			for i := range items {
				byName[items[i].Name] = &items[i]
			}
			var left []*certificatesv1.CertificateSigningRequest
			for _, c := range cs {
				got, ok := byName[c.Name]
				if !ok {
					left = append(left, c) // gone: signing it will say so
					continue
				}
				if len(got.Status.Certificate) == 0 {
					left = append(left, got)
				}
			}
			cs = left
		}
		if len(cs) == 0 || time.Now().After(deadline) {
			return cs
		}
	}
}
