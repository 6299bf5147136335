package bounce

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/node"
)

func kubeletNode(t *testing.T, config string) *node.Node {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "var/lib/kubelet")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if config != "" {
		if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n, err := node.New(root)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The kubelet's healthz as its config says (kubeadm writes
// healthzBindAddress: 127.0.0.1, healthzPort: 10248), 0 turning it off.
func TestKubeletHealthzFromConfig(t *testing.T) {
	for _, tc := range []struct{ config, want string }{
		{"", "127.0.0.1:10248"},
		{"healthzBindAddress: 127.0.0.1\nhealthzPort: 10248\n", "127.0.0.1:10248"},
		{"healthzBindAddress: 0.0.0.0\nhealthzPort: 31000\n", "127.0.0.1:31000"},
		{"healthzBindAddress: 127.0.0.7\n", "127.0.0.7:10248"},
		{"healthzPort: 0\n", ""},
	} {
		if got := kubeletHealthz(kubeletNode(t, tc.config)); got != tc.want {
			t.Errorf("config %q: healthz %q, want %q", tc.config, got, tc.want)
		}
	}
}

// A rollback asks the restarted kubelet's /healthz before waiting for
// it to recreate containers: up answers at once, down says why after
// the wait (a kubeadm kubelet whose restored certificate is expired
// exits at start, and nothing would recreate a container).
func TestKubeletDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") })}
	go srv.Serve(l)
	defer srv.Close()
	port := l.Addr().(*net.TCPAddr).Port
	up := kubeletNode(t, fmt.Sprintf("healthzBindAddress: 127.0.0.1\nhealthzPort: %d\n", port))
	if why := kubeletDown(context.Background(), up, time.Second); why != "" {
		t.Errorf("a kubelet that answers ok is down: %s", why)
	}
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	cport := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	down := kubeletNode(t, fmt.Sprintf("healthzBindAddress: 127.0.0.1\nhealthzPort: %d\n", cport))
	why := kubeletDown(context.Background(), down, time.Second)
	if why == "" || !strings.Contains(why, fmt.Sprintf("127.0.0.1:%d", cport)) {
		t.Errorf("a kubelet that does not answer: %q", why)
	}
}
