package bounce

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/kubecpr/kubecpr/recovery/node"
)

// kubeletSettle is how long a restarted kubelet may take to answer its
// /healthz before a rollback calls it down.
var kubeletSettle = 20 * time.Second

// kubeletGone is how long a kubelet told to restart is given to exit
// before its healthz is asked: it stops within a fraction of a second of
// SIGTERM, and until then it may still answer ok for itself.
var kubeletGone = 2 * time.Second

// kubeletHealthz is the kubelet's healthz address from its config
// (healthzBindAddress, healthzPort; kubelet defaults 127.0.0.1:10248), ""
// when the config turns it off (healthzPort: 0).
func kubeletHealthz(n *node.Node) string {
	addr, port := "127.0.0.1", 10248
	if b, err := n.ReadFile(node.KubeletDir + "/config.yaml"); err == nil {
		var kc struct {
			HealthzBindAddress string `json:"healthzBindAddress"`
			HealthzPort        *int   `json:"healthzPort"`
		}
		if yaml.Unmarshal(b, &kc) == nil {
			if kc.HealthzBindAddress != "" && kc.HealthzBindAddress != "0.0.0.0" && kc.HealthzBindAddress != "::" {
				addr = kc.HealthzBindAddress
			}
			if kc.HealthzPort != nil {
				port = *kc.HealthzPort
			}
		}
	}
	if port == 0 {
		return ""
	}
	return net.JoinHostPort(addr, strconv.Itoa(port))
}

// kubeletDown asks the kubelet's /healthz for up to d and says why it
// is down, or "" when it answers ok (or has no healthz to ask).
func kubeletDown(ctx context.Context, n *node.Node, d time.Duration) string {
	addr := kubeletHealthz(n)
	if addr == "" {
		return ""
	}
	// The kubelet just told to restart may answer a last time before it
	// exits; its successor is asked.
	select {
	case <-ctx.Done():
		return ""
	case <-time.After(kubeletGone):
	}
	cl := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(d)
	last := ""
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
		resp, err := cl.Do(req)
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
			resp.Body.Close()
			if resp.StatusCode == 200 && strings.TrimSpace(string(b)) == "ok" {
				return ""
			}
			last = fmt.Sprintf("/healthz on %s answered %d", addr, resp.StatusCode)
		} else {
			last = fmt.Sprintf("no answer on %s/healthz within %s", addr, d)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return last
		}
		time.Sleep(500 * time.Millisecond)
	}
}
