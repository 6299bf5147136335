package diagnose_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/phases/diagnose"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/test/fixture"
)

var now = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)

func ids(r *diagnose.Report) string {
	var out []string
	for _, s := range r.Symptoms {
		out = append(out, s.ID)
	}
	return strings.Join(out, ",")
}

func setup(t *testing.T, o fixture.Options) (*node.Node, *inventory.Inventory) {
	t.Helper()
	root := t.TempDir()
	o.Now = now
	if _, err := fixture.Generate(root, o); err != nil {
		t.Fatal(err)
	}
	n, _ := node.New(root)
	c, _ := n.Discover("")
	inv, err := inventory.Build(n, c, now, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return n, inv
}

// pointAdminAt rewrites admin.conf's server to a test server on loopback.
func pointAdminAt(t *testing.T, n *node.Node, server string) {
	p := n.Path("/etc/kubernetes/admin.conf")
	cfg, err := clientcmd.LoadFromFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cfg.Clusters {
		c.Server = server
	}
	if err := clientcmd.WriteToFile(*cfg, p); err != nil {
		t.Fatal(err)
	}
}

func TestSymptoms(t *testing.T) {
	expired := fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)}
	n, inv := setup(t, fixture.Options{Leaf: expired, KubeletClient: expired, ExternalCA: true})

	log := filepath.Join(t.TempDir(), "kubelet.log")
	os.WriteFile(log, []byte(`E1122 bootstrap.go:266] part of the existing bootstrap client certificate in /etc/kubernetes/kubelet.conf is expired: 2026-11-19 03:00:00 +0000 UTC
E1122 run.go:72] "command failed" err="failed to run Kubelet: unable to load bootstrap kubeconfig: stat /etc/kubernetes/bootstrap-kubelet.conf: no such file or directory"
`), 0o600)

	// an API endpoint that refuses: a port that was just closed
	l := httptest.NewUnstartedServer(http.NotFoundHandler())
	addr := l.Listener.Addr().String()
	l.Listener.Close()
	pointAdminAt(t, n, "https://"+addr)

	r := diagnose.Diagnose(context.Background(), n, inv, diagnose.Options{KubeletLog: log, Timeout: time.Second, RealNow: time.Now()})
	got := ids(r)
	for _, want := range []string{"certs-expired", "external-ca", "api-refused", "kubelet-kubelet-client-expired", "kubelet-bootstrap-kubeconfig"} {
		if !strings.Contains(got, want) {
			t.Errorf("symptoms %s lack %s", got, want)
		}
	}
	for _, s := range r.Symptoms {
		if s.Severity != diagnose.Info && s.Next == "" {
			t.Errorf("%s has no next step", s.ID)
		}
	}
}

// The API answers with an expired serving certificate: reported as such,
// not hidden behind a TLS verification error.
func TestExpiredServingCertificate(t *testing.T) {
	expired := fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)}
	n, inv := setup(t, fixture.Options{Leaf: expired})
	cert, err := tls.LoadX509KeyPair(n.Path("/etc/kubernetes/pki/apiserver.crt"), n.Path("/etc/kubernetes/pki/apiserver.key"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	pointAdminAt(t, n, "https://"+u.Host)
	r := diagnose.Diagnose(context.Background(), n, inv, diagnose.Options{Timeout: 2 * time.Second, RealNow: time.Now()})
	if got := ids(r); !strings.Contains(got, "api-serving-expired") {
		t.Fatalf("symptoms %s lack api-serving-expired", got)
	}
}

func TestUnauthorizedClient(t *testing.T) {
	n, inv := setup(t, fixture.Options{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	pointAdminAt(t, n, "https://"+u.Host)
	r := diagnose.Diagnose(context.Background(), n, inv, diagnose.Options{Timeout: 2 * time.Second, RealNow: time.Now()})
	if got := ids(r); !strings.Contains(got, "api-unauthorized") {
		t.Fatalf("symptoms %s lack api-unauthorized", got)
	}
	if r := diagnose.Diagnose(context.Background(), n, inv, diagnose.Options{Offline: true}); strings.Contains(ids(r), "api-") {
		t.Fatalf("offline probed the API: %s", ids(r))
	}
}
