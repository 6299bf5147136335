package kube_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubecpr/kubecpr/recovery/kube"
	"github.com/kubecpr/kubecpr/recovery/kube/kubetest"
)

// request is what the API server sees of one request.
type request struct {
	Method, Path, Query, Accept, ContentType, UserAgent string
	Body                                                string
}

// recorder is an API server that records every request and answers it
// with an object of the kind the path names (JSON), a 404 Status for a
// name "missing", a 409 for "conflicting".
type recorder struct {
	mu   sync.Mutex
	reqs []request
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.reqs = append(r.reqs, request{req.Method, req.URL.Path, req.URL.RawQuery, req.Header.Get("Accept"),
		req.Header.Get("Content-Type"), req.Header.Get("User-Agent"), string(body)})
	r.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	status := func(code int, reason string) {
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"secrets \"x\" %s","reason":%q,"code":%d}`, reason, reason, code)
	}
	p := req.URL.Path
	switch {
	case strings.Contains(p, "/missing"):
		status(http.StatusNotFound, string(metav1.StatusReasonNotFound))
	case strings.Contains(p, "/conflicting"):
		status(http.StatusConflict, string(metav1.StatusReasonConflict))
	case p == "/readyz":
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, "ok")
	case p == "/version":
		fmt.Fprint(w, `{"major":"1","minor":"33","gitVersion":"v1.33.1"}`)
	case strings.HasSuffix(p, "/secrets"), strings.Contains(p, "/secrets/"):
		fmt.Fprint(w, `{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s","resourceVersion":"7"}}`)
	case strings.Contains(p, "/namespaces/"):
		fmt.Fprint(w, `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"ns"}}`)
	case strings.HasSuffix(p, "/nodes"):
		fmt.Fprint(w, `{"kind":"NodeList","apiVersion":"v1","items":[{"metadata":{"name":"n1"}}]}`)
	case strings.HasSuffix(p, "/certificatesigningrequests"):
		fmt.Fprint(w, `{"kind":"CertificateSigningRequestList","apiVersion":"certificates.k8s.io/v1","metadata":{"continue":"c2"},"items":[{"metadata":{"name":"csr-1"}}]}`)
	case strings.Contains(p, "/certificatesigningrequests/"):
		fmt.Fprint(w, `{"kind":"CertificateSigningRequest","apiVersion":"certificates.k8s.io/v1","metadata":{"name":"csr-1","resourceVersion":"9"}}`)
	case strings.HasSuffix(p, "/selfsubjectreviews"):
		fmt.Fprint(w, `{"kind":"SelfSubjectReview","apiVersion":"authentication.k8s.io/v1","status":{"userInfo":{"username":"system:node:n1"}}}`)
	case strings.Contains(p, "/daemonsets/"):
		fmt.Fprint(w, `{"kind":"DaemonSet","apiVersion":"apps/v1","metadata":{"name":"d"}}`)
	default:
		status(http.StatusNotFound, string(metav1.StatusReasonNotFound))
	}
}

func (r *recorder) take() []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	reqs := r.reqs
	r.reqs = nil
	return reqs
}

// call is one request of kube.Interface; it returns what it read, as text.
type call struct {
	name string
	do   func(ctx context.Context, c kube.Interface) (string, error)
}

var csr1 = &certificatesv1.CertificateSigningRequest{ObjectMeta: metav1.ObjectMeta{Name: "csr-1", ResourceVersion: "8"},
	Status: certificatesv1.CertificateSigningRequestStatus{Certificate: []byte("PEM"), Conditions: []certificatesv1.CertificateSigningRequestCondition{
		{Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "KubecprApproved"}}}}

var calls = []call{
	{"CreateSecret", func(ctx context.Context, c kube.Interface) (string, error) {
		s, err := c.CreateSecret(ctx, "kube-system", &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-abcdef", Namespace: "kube-system"},
			Type: "bootstrap.kubernetes.io/token", StringData: map[string]string{"token-id": "abcdef"}}, metav1.CreateOptions{FieldManager: "kubecpr"})
		return s.Name + "@" + s.ResourceVersion, err
	}},
	{"GetSecret", func(ctx context.Context, c kube.Interface) (string, error) {
		s, err := c.GetSecret(ctx, "ns", "s")
		return s.Name, err
	}},
	{"GetSecret/missing", func(ctx context.Context, c kube.Interface) (string, error) {
		_, err := c.GetSecret(ctx, "ns", "missing")
		return fmt.Sprint(apierrors.IsNotFound(err)), err
	}},
	{"UpdateSecret", func(ctx context.Context, c kube.Interface) (string, error) {
		s, err := c.UpdateSecret(ctx, "ns", &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s", ResourceVersion: "6"},
			Data: map[string][]byte{"value": []byte("kubeconfig")}}, metav1.UpdateOptions{FieldManager: "kubecpr"})
		return s.ResourceVersion, err
	}},
	{"UpdateSecret/conflicting", func(ctx context.Context, c kube.Interface) (string, error) {
		_, err := c.UpdateSecret(ctx, "ns", &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "conflicting"}}, metav1.UpdateOptions{})
		return fmt.Sprint(apierrors.IsConflict(err)), err
	}},
	{"DeleteSecret", func(ctx context.Context, c kube.Interface) (string, error) {
		return "", c.DeleteSecret(ctx, "kube-system", "bootstrap-token-abcdef")
	}},
	{"DeleteSecret/missing", func(ctx context.Context, c kube.Interface) (string, error) {
		err := c.DeleteSecret(ctx, "kube-system", "missing")
		return fmt.Sprint(apierrors.IsNotFound(err)), err
	}},
	{"GetNamespace", func(ctx context.Context, c kube.Interface) (string, error) {
		ns, err := c.GetNamespace(ctx, "ns")
		return ns.Name, err
	}},
	{"ListNodes", func(ctx context.Context, c kube.Interface) (string, error) {
		l, err := c.ListNodes(ctx, metav1.ListOptions{})
		return fmt.Sprint(len(l.Items), l.Items[0].Name), err
	}},
	{"ListCSRs", func(ctx context.Context, c kube.Interface) (string, error) {
		l, err := c.ListCSRs(ctx, metav1.ListOptions{Limit: 5000, Continue: "c1"})
		return fmt.Sprint(len(l.Items), l.Items[0].Name, l.Continue), err
	}},
	{"GetCSR", func(ctx context.Context, c kube.Interface) (string, error) {
		r, err := c.GetCSR(ctx, "csr-1")
		return r.Name + "@" + r.ResourceVersion, err
	}},
	{"UpdateCSRApproval", func(ctx context.Context, c kube.Interface) (string, error) {
		r, err := c.UpdateCSRApproval(ctx, csr1, metav1.UpdateOptions{})
		return r.ResourceVersion, err
	}},
	{"UpdateCSRStatus", func(ctx context.Context, c kube.Interface) (string, error) {
		r, err := c.UpdateCSRStatus(ctx, csr1, metav1.UpdateOptions{})
		return r.ResourceVersion, err
	}},
	{"UpdateCSRStatus/conflicting", func(ctx context.Context, c kube.Interface) (string, error) {
		_, err := c.UpdateCSRStatus(ctx, &certificatesv1.CertificateSigningRequest{ObjectMeta: metav1.ObjectMeta{Name: "conflicting"}}, metav1.UpdateOptions{})
		return fmt.Sprint(apierrors.IsConflict(err)), err
	}},
	{"CreateSelfSubjectReview", func(ctx context.Context, c kube.Interface) (string, error) {
		r, err := c.CreateSelfSubjectReview(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		return r.Status.UserInfo.Username, err
	}},
	{"PatchDaemonSet", func(ctx context.Context, c kube.Interface) (string, error) {
		return "", c.PatchDaemonSet(ctx, "kube-system", "d", types.StrategicMergePatchType,
			[]byte(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"now"}}}}}`), metav1.PatchOptions{FieldManager: "kubecpr"})
	}},
	{"PatchDaemonSet/missing", func(ctx context.Context, c kube.Interface) (string, error) {
		err := c.PatchDaemonSet(ctx, "kube-system", "missing", types.StrategicMergePatchType, []byte(`{}`), metav1.PatchOptions{})
		return fmt.Sprint(apierrors.IsNotFound(err)), err
	}},
	{"Readyz", func(ctx context.Context, c kube.Interface) (string, error) {
		b, err := c.Readyz(ctx)
		return string(b), err
	}},
	{"ServerVersion", func(ctx context.Context, c kube.Interface) (string, error) {
		v, err := c.ServerVersion(ctx)
		return v.String(), err
	}},
}

// Every request is the one client-go's clientset sends for the same call
// (method, path, query, content negotiation, user agent, body: byte for
// byte, protobuf by default and as the csr stage configures it), and it
// reads the same answer and returns the same error.
func TestRequestsAreTheClientsets(t *testing.T) {
	rec := &recorder{}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	configs := map[string]func() *rest.Config{
		"default": func() *rest.Config { return &rest.Config{Host: srv.URL} },
		"protobuf": func() *rest.Config {
			return &rest.Config{Host: srv.URL, QPS: 1000, Burst: 2500, ContentConfig: rest.ContentConfig{
				ContentType: runtime.ContentTypeProtobuf, AcceptContentTypes: runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON}}
		},
	}
	ctx := context.Background()
	for cname, cfg := range configs {
		ours, err := kube.New(cfg())
		if err != nil {
			t.Fatal(err)
		}
		cs, err := kubernetes.NewForConfig(cfg())
		if err != nil {
			t.Fatal(err)
		}
		theirs := kubetest.New(cs)
		for _, c := range calls {
			t.Run(cname+"/"+c.name, func(t *testing.T) {
				wantOut, wantErr := c.do(ctx, theirs)
				want := rec.take()
				gotOut, gotErr := c.do(ctx, ours)
				got := rec.take()
				if len(want) != 1 {
					t.Fatalf("the clientset sent %d requests, want 1: %+v", len(want), want)
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("request (-clientset +kube):\n%s", diff)
				}
				if gotOut != wantOut || fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
					t.Errorf("got %q, %v; the clientset: %q, %v", gotOut, gotErr, wantOut, wantErr)
				}
				if strings.Contains(c.name, "/") && wantOut != "true" {
					t.Errorf("the error is not the kind the name says: %v", wantErr)
				}
			})
		}
	}
}
