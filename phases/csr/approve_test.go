package csr

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kubecpr/kubecpr/recovery/kube/kubetest"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

var csrResource = schema.GroupResource{Group: "certificates.k8s.io", Resource: "certificatesigningrequests"}

func testCA(t *testing.T) *pki.CA {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, SubjectKeyId: []byte{1}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &pki.CA{Name: "ca", Cert: c, Key: k}
}

// corpus returns good CSRs (kubelet client, bootstrap token, node cp-1)
// and hostile ones (a node this cluster does not know), in a shuffled
// order, each set of names sorted.
func corpus(t *testing.T, good, bad int) (objs []runtime.Object, goodNames, badNames []string) {
	t.Helper()
	boot := []string{"system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token", "system:authenticated"}
	req := request(t, nodeSubj, nil, nil)
	evil := request(t, pkix.Name{CommonName: "system:node:evil", Organization: []string{"system:nodes"}}, nil, nil)
	for i, n := range mrand.Perm(good + bad) {
		name := fmt.Sprintf("csr-%04d", n)
		if i < good {
			objs = append(objs, csr(name, SignerClientKubelet, "system:bootstrap:abcdef", boot, client, req, nil))
			goodNames = append(goodNames, name)
		} else {
			objs = append(objs, csr(name, SignerClientKubelet, "system:bootstrap:abcdef", boot, client, evil, nil))
			badNames = append(badNames, name)
		}
	}
	sort.Strings(goodNames)
	sort.Strings(badNames)
	return objs, goodNames, badNames
}

func names(ds []Decision) []string {
	var s []string
	for _, d := range ds {
		s = append(s, d.Name)
	}
	return s
}

// slowClient delays every CSR write and records how many are in flight at
// once. (The fake clientset serializes its reactors under one lock, so
// concurrency is measured out here, around it.)
type slowClient struct {
	API
	delay         time.Duration
	inFlight, max *atomic.Int32
}

func newSlow(cs kubernetes.Interface, delay time.Duration) slowClient {
	return slowClient{API: kubetest.New(cs), delay: delay, inFlight: new(atomic.Int32), max: new(atomic.Int32)}
}

func (c slowClient) write() func() {
	n := c.inFlight.Add(1)
	for m := c.max.Load(); n > m && !c.max.CompareAndSwap(m, n); m = c.max.Load() {
	}
	time.Sleep(c.delay)
	return func() { c.inFlight.Add(-1) }
}

func (c slowClient) UpdateCSRApproval(ctx context.Context, r *certificatesv1.CertificateSigningRequest, o metav1.UpdateOptions) (*certificatesv1.CertificateSigningRequest, error) {
	defer c.write()()
	return c.API.UpdateCSRApproval(ctx, r, o)
}

func (c slowClient) UpdateCSRStatus(ctx context.Context, r *certificatesv1.CertificateSigningRequest, o metav1.UpdateOptions) (*certificatesv1.CertificateSigningRequest, error) {
	defer c.write()()
	return c.API.UpdateCSRStatus(ctx, r, o)
}

func countActions(f *fake.Clientset, verb, sub string) int {
	n := 0
	for _, a := range f.Actions() {
		if a.GetVerb() == verb && a.GetSubresource() == sub {
			n++
		}
	}
	return n
}

// 150 CSRs, 100 good and 50 hostile, through a bounded pool: never more
// writes in flight than Workers, every good one approved and signed with
// a certificate that chains to the CA, every hostile one refused with its
// reason, one list and no per-CSR reads, and the output and result exactly
// those of one write at a time, in name order.
func TestPassConcurrentBoundedAndDeterministic(t *testing.T) {
	ca := testCA(t)
	objs, good, bad := corpus(t, 100, 50)
	run := func(workers int) (*fake.Clientset, slowClient, Result, string) {
		f := fake.NewClientset(objs...)
		slow := newSlow(f, time.Millisecond)
		var out bytes.Buffer
		a := &Approver{Client: slow, Policy: policy, CA: ca, Sign: SignAlways, Out: &out, Workers: workers}
		res, err := a.Pass(context.Background())
		if err != nil {
			t.Fatalf("workers %d: %v", workers, err)
		}
		return f, slow, res, out.String()
	}
	f, slow, res, out := run(8)
	if m := slow.max.Load(); m > 8 || m < 2 {
		t.Errorf("at most %d writes in flight, want 2..8", m)
	}
	if got := names(res.Approved); strings.Join(got, ",") != strings.Join(good, ",") {
		t.Errorf("approved (in this order): %v\nwant %v", got, good)
	}
	if got := names(res.Signed); strings.Join(got, ",") != strings.Join(good, ",") {
		t.Errorf("signed (in this order): %v\nwant %v", got, good)
	}
	if got := names(res.Refused); strings.Join(got, ",") != strings.Join(bad, ",") {
		t.Errorf("refused (in this order): %v\nwant %v", got, bad)
	}
	for _, d := range res.Refused {
		if d.Approve || !strings.Contains(d.Reason, "not a node of this cluster") {
			t.Errorf("refusal %+v", d)
		}
		if !strings.Contains(out, "refused "+d.Name+" ("+SignerClientKubelet+"): CN names node \"evil\"") {
			t.Errorf("output lacks the refusal of %s", d.Name)
		}
	}
	if len(res.Failed) != 0 {
		t.Errorf("failed: %v", res.Failed)
	}
	if n := countActions(f, "list", ""); n != 1 {
		t.Errorf("%d lists, want 1", n)
	}
	if n := countActions(f, "get", ""); n != 0 {
		t.Errorf("%d gets, want none (no conflicts)", n)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for _, name := range good {
		c, err := f.CertificatesV1().CertificateSigningRequests().Get(context.Background(), name, metav1.GetOptions{})
		if err != nil || !approvedByUs(c) {
			t.Fatalf("%s: not approved (%v)", name, err)
		}
		blk, _ := pem.Decode(c.Status.Certificate)
		if blk == nil {
			t.Fatalf("%s: no certificate", name)
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil || cert.Subject.CommonName != "system:node:cp-1" {
			t.Errorf("%s: certificate %q does not chain: %v", name, cert.Subject.CommonName, err)
		}
	}
	for _, name := range bad {
		c, _ := f.CertificatesV1().CertificateSigningRequests().Get(context.Background(), name, metav1.GetOptions{})
		if !pending(c) || len(c.Status.Certificate) > 0 {
			t.Errorf("hostile %s was touched: %+v", name, c.Status)
		}
	}
	// Lines in name order: the output of 64 in flight and of one at a
	// time are the same text.
	_, _, res1, out1 := run(1)
	_, _, res64, out64 := run(64)
	if out != out1 || out64 != out1 {
		t.Errorf("output depends on the number of workers:\n--- 1\n%s\n--- 8\n%s", out1, out)
	}
	if fmt.Sprint(res1.Refused) != fmt.Sprint(res.Refused) || fmt.Sprint(res64.Refused) != fmt.Sprint(res.Refused) {
		t.Error("refusals depend on the number of workers")
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.Contains(l, "approved ") || strings.Contains(l, "refused ") {
			lines = append(lines, strings.Fields(l)[1])
		}
	}
	if !sort.StringsAreSorted(lines) || len(lines) != 150 {
		t.Errorf("approval and refusal lines not one per CSR in name order: %d lines", len(lines))
	}
}

// With SignAlways a CSR's certificate is written by the worker that
// approved it, right after its approval (on the object the approval
// returned, no read), not after the last approval of the pass: signing
// overlaps the writes in flight.
func TestPassSignsAsApprovalsReturn(t *testing.T) {
	ca := testCA(t)
	objs, good, _ := corpus(t, 40, 0)
	f := fake.NewClientset(objs...)
	var mu sync.Mutex
	var order []string // "approval NAME" / "status NAME", as the server sees them
	f.PrependReactor("update", "certificatesigningrequests", func(action k8stesting.Action) (bool, runtime.Object, error) {
		u := action.(k8stesting.UpdateAction)
		mu.Lock()
		order = append(order, u.GetSubresource()+" "+u.GetObject().(*certificatesv1.CertificateSigningRequest).Name)
		mu.Unlock()
		return false, nil, nil
	})
	res, err := (&Approver{Client: newSlow(f, time.Millisecond), Policy: policy, CA: ca, Sign: SignAlways, Workers: 4}).Pass(context.Background())
	if err != nil || len(res.Signed) != len(good) {
		t.Fatalf("%v: signed %d of %d", err, len(res.Signed), len(good))
	}
	firstStatus, lastApproval := -1, -1
	for i, o := range order {
		if strings.HasPrefix(o, "status ") && firstStatus < 0 {
			firstStatus = i
		}
		if strings.HasPrefix(o, "approval ") {
			lastApproval = i
		}
	}
	if firstStatus < 0 || firstStatus > lastApproval {
		t.Errorf("the first certificate was written at write %d, after the last approval (%d): signing waited for every approval", firstStatus, lastApproval)
	}
	if n := countActions(f, "get", ""); n != 0 {
		t.Errorf("%d gets, want none", n)
	}
}

// A CSR changed meanwhile (409 Conflict) is read again and written again;
// one that someone else approved or signed meanwhile is left alone, not
// counted as kubecpr's and not a failure.
func TestPassRetriesConflicts(t *testing.T) {
	ca := testCA(t)
	objs, good, _ := corpus(t, 6, 0)
	f := fake.NewClientset(objs...)
	conflicted := map[string]bool{}
	var mu sync.Mutex
	once := func(key string) bool {
		mu.Lock()
		defer mu.Unlock()
		if conflicted[key] {
			return false
		}
		conflicted[key] = true
		return true
	}
	tracker := f.Tracker()
	gvr := certificatesv1.SchemeGroupVersion.WithResource("certificatesigningrequests")
	f.PrependReactor("update", "certificatesigningrequests", func(action k8stesting.Action) (bool, runtime.Object, error) {
		u := action.(k8stesting.UpdateAction)
		c := u.GetObject().(*certificatesv1.CertificateSigningRequest)
		sub := u.GetSubresource()
		switch {
		case sub == "approval" && (c.Name == good[0] || c.Name == good[1]) && once(sub+c.Name):
			// plain conflict: someone touched it (a label), still pending
			cur, _ := tracker.Get(gvr, "", c.Name)
			cc := cur.(*certificatesv1.CertificateSigningRequest).DeepCopy()
			cc.Labels = map[string]string{"touched": "yes"}
			_ = tracker.Update(gvr, cc, "")
			return true, nil, apierrors.NewConflict(csrResource, c.Name, errors.New("the object has been modified"))
		case sub == "approval" && c.Name == good[2] && once(sub+c.Name):
			// another approver got there first
			cur, _ := tracker.Get(gvr, "", c.Name)
			cc := cur.(*certificatesv1.CertificateSigningRequest).DeepCopy()
			cc.Status.Conditions = append(cc.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
				Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "AutoApproved"})
			_ = tracker.Update(gvr, cc, "")
			return true, nil, apierrors.NewConflict(csrResource, c.Name, errors.New("the object has been modified"))
		case sub == "status" && c.Name == good[3] && once(sub+c.Name):
			return true, nil, apierrors.NewConflict(csrResource, c.Name, errors.New("the object has been modified"))
		case sub == "status" && c.Name == good[4] && once(sub+c.Name):
			// the controller-manager signed it meanwhile
			cur, _ := tracker.Get(gvr, "", c.Name)
			cc := cur.(*certificatesv1.CertificateSigningRequest).DeepCopy()
			cc.Status.Certificate = []byte("issued by kube-controller-manager")
			_ = tracker.Update(gvr, cc, "")
			return true, nil, apierrors.NewConflict(csrResource, c.Name, errors.New("the object has been modified"))
		}
		return false, nil, nil
	})
	var out bytes.Buffer
	a := &Approver{Client: kubetest.New(f), Policy: policy, CA: ca, Sign: SignAlways, Out: &out, Workers: 4}
	res, err := a.Pass(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{good[0], good[1], good[3], good[4], good[5]}
	sort.Strings(want)
	if got := names(res.Approved); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("approved %v, want %v", got, want)
	}
	want = []string{good[0], good[1], good[3], good[5]}
	sort.Strings(want)
	if got := names(res.Signed); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("signed %v, want %v", got, want)
	}
	if len(res.Failed) != 0 {
		t.Errorf("failed: %v", res.Failed)
	}
	if !strings.Contains(out.String(), good[2]+": approved or denied by someone else meanwhile") ||
		!strings.Contains(out.String(), good[4]+": its certificate was issued by someone else meanwhile") {
		t.Errorf("output:\n%s", out.String())
	}
	for _, name := range []string{good[0], good[1], good[3]} {
		c, _ := f.CertificatesV1().CertificateSigningRequests().Get(context.Background(), name, metav1.GetOptions{})
		if !approvedByUs(c) || len(c.Status.Certificate) == 0 {
			t.Errorf("%s not approved and signed after a conflict", name)
		}
	}
	c, _ := f.CertificatesV1().CertificateSigningRequests().Get(context.Background(), good[4], metav1.GetOptions{})
	if string(c.Status.Certificate) != "issued by kube-controller-manager" {
		t.Errorf("kubecpr overwrote the certificate issued meanwhile: %q", c.Status.Certificate)
	}
}

// A CSR whose write fails does not stop the others: each failure is in
// the result and the error, in name order, and everything else is done.
func TestPassCollectsErrorsPerCSR(t *testing.T) {
	ca := testCA(t)
	objs, good, bad := corpus(t, 20, 3)
	f := fake.NewClientset(objs...)
	failApprove := map[string]bool{good[7]: true, good[2]: true}
	failSign := good[11]
	f.PrependReactor("update", "certificatesigningrequests", func(action k8stesting.Action) (bool, runtime.Object, error) {
		u := action.(k8stesting.UpdateAction)
		c := u.GetObject().(*certificatesv1.CertificateSigningRequest)
		if (u.GetSubresource() == "approval" && failApprove[c.Name]) || (u.GetSubresource() == "status" && c.Name == failSign) {
			return true, nil, apierrors.NewInternalError(errors.New("etcdserver: request timed out"))
		}
		return false, nil, nil
	})
	var out bytes.Buffer
	a := &Approver{Client: kubetest.New(f), Policy: policy, CA: ca, Sign: SignAlways, Out: &out, Workers: 5}
	res, err := a.Pass(context.Background())
	var pe *PassError
	if !errors.As(err, &pe) || len(pe.Failures) != 3 {
		t.Fatalf("error %v, want a PassError of 3", err)
	}
	if !apierrors.IsInternalError(err) {
		t.Errorf("the API errors are not reachable with errors.As/Is: %v", err)
	}
	var got []string
	for _, fl := range res.Failed {
		got = append(got, fl.Step+" "+fl.Name)
	}
	want := []string{"approving " + good[2], "approving " + good[7], "signing " + good[11]}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("failed %v, want %v", got, want)
	}
	if len(res.Approved) != 18 || len(res.Signed) != 17 || len(res.Refused) != len(bad) {
		t.Errorf("approved %d, signed %d, refused %d; want 18, 17, %d", len(res.Approved), len(res.Signed), len(res.Refused), len(bad))
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w+": ") {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if !strings.Contains(out.String(), "could not approve "+good[2]+": ") || !strings.Contains(out.String(), "could not sign "+good[11]+": ") {
		t.Errorf("output:\n%s", out.String())
	}
}

// The sign modes are what they were: never approves only; auto leaves to
// the controller-manager what it signs within the grace and signs the
// rest; a dry run writes nothing.
func TestPassSignModes(t *testing.T) {
	ca := testCA(t)
	objs, good, _ := corpus(t, 4, 1)

	f := fake.NewClientset(objs...)
	res, err := (&Approver{Client: kubetest.New(f), Policy: policy, CA: ca, Sign: SignNever}).Pass(context.Background())
	if err != nil || len(res.Approved) != 4 || len(res.Signed) != 0 || countActions(f, "update", "status") != 0 {
		t.Errorf("never: %v, approved %d, signed %d, status writes %d", err, len(res.Approved), len(res.Signed), countActions(f, "update", "status"))
	}
	// a second pass: nothing pending, nothing to sign in never mode
	res, err = (&Approver{Client: kubetest.New(f), Policy: policy, CA: ca, Sign: SignNever}).Pass(context.Background())
	if err != nil || len(res.Approved)+len(res.Signed) != 0 {
		t.Errorf("never, second pass: %v %+v", err, res)
	}
	// ...and always signs what kubecpr approved before
	res, err = (&Approver{Client: kubetest.New(f), Policy: policy, CA: ca, Sign: SignAlways}).Pass(context.Background())
	if err != nil || len(res.Approved) != 0 || fmt.Sprint(names(res.Signed)) != fmt.Sprint(good) {
		t.Errorf("always after never: %v, approved %d, signed %v", err, len(res.Approved), names(res.Signed))
	}

	f = fake.NewClientset(objs...)
	res, err = (&Approver{Client: kubetest.New(f), Policy: policy, CA: ca, Sign: SignAlways, DryRun: true}).Pass(context.Background())
	if err != nil || len(res.Approved) != 4 || len(res.Signed) != 0 || len(res.Refused) != 1 || countActions(f, "update", "approval")+countActions(f, "update", "status") != 0 {
		t.Errorf("dry run: %v %+v", err, res)
	}

	// auto: a controller-manager signs good[1] once it is approved
	f = fake.NewClientset(objs...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			c, err := f.CertificatesV1().CertificateSigningRequests().Get(ctx, good[1], metav1.GetOptions{})
			if err == nil && approvedByUs(c) {
				c.Status.Certificate = []byte("issued by kube-controller-manager")
				if _, err := f.CertificatesV1().CertificateSigningRequests().UpdateStatus(ctx, c, metav1.UpdateOptions{}); err == nil {
					return
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	var out bytes.Buffer
	start := time.Now()
	res, err = (&Approver{Client: kubetest.New(f), Policy: policy, CA: ca, Sign: SignAuto, SignGrace: 600 * time.Millisecond, Out: &out}).Pass(ctx)
	want := []string{good[0], good[2], good[3]}
	if err != nil || fmt.Sprint(names(res.Signed)) != fmt.Sprint(want) {
		t.Errorf("auto: %v, signed %v, want %v\n%s", err, names(res.Signed), want, out.String())
	}
	if d := time.Since(start); d < 600*time.Millisecond {
		t.Errorf("auto signed after %s, before the grace", d)
	}
	c, _ := f.CertificatesV1().CertificateSigningRequests().Get(ctx, good[1], metav1.GetOptions{})
	if string(c.Status.Certificate) != "issued by kube-controller-manager" {
		t.Errorf("auto overwrote the controller-manager's certificate")
	}

	// no CA key (external CA): one clear error, the approvals stand
	f = fake.NewClientset(objs...)
	res, err = (&Approver{Client: kubetest.New(f), Policy: policy, CA: &pki.CA{Name: "ca", Cert: ca.Cert}, Sign: SignAlways}).Pass(context.Background())
	if err == nil || !strings.Contains(err.Error(), "external CA") || len(res.Approved) != 4 {
		t.Errorf("external CA: %v, approved %d", err, len(res.Approved))
	}
}

func TestForEachBoundedEveryIndexOnce(t *testing.T) {
	const n, workers = 500, 7
	var inFlight, max atomic.Int32
	seen := make([]atomic.Int32, n)
	forEach(context.Background(), n, workers, func(i int) {
		v := inFlight.Add(1)
		for m := max.Load(); v > m && !max.CompareAndSwap(m, v); m = max.Load() {
		}
		time.Sleep(100 * time.Microsecond)
		seen[i].Add(1)
		inFlight.Add(-1)
	})
	if m := max.Load(); m > workers || m < 2 {
		t.Errorf("%d in flight at most, want 2..%d", m, workers)
	}
	for i := range seen {
		if seen[i].Load() != 1 {
			t.Fatalf("index %d ran %d times", i, seen[i].Load())
		}
	}
	// a cancelled context starts nothing more
	ctx, cancel := context.WithCancel(context.Background())
	var ran atomic.Int32
	forEach(ctx, n, workers, func(i int) {
		if ran.Add(1) == 10 {
			cancel()
		}
	})
	if r := ran.Load(); r >= n || r < 10 {
		t.Errorf("after cancel %d of %d ran", r, n)
	}
	forEach(context.Background(), 0, workers, func(int) { t.Error("called for n=0") })
}
