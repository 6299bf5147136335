package kubeadmbed

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// AdminConf is cp-1's /etc/kubernetes/admin.conf on the host (its server
// is the controlPlaneEndpoint, a lab address).
func (b *Bed) AdminConf() string { return b.Nodes[0].Path("/etc/kubernetes/admin.conf") }

// RESTConfig is a client config from the kubeconfig at host path file,
// its connections made inside the lab (Bed.Dial).
func (b *Bed) RESTConfig(file string) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", file)
	if err != nil {
		return nil, err
	}
	cfg.Dial = b.Dial
	cfg.Proxy = nil
	return cfg, nil
}

// Client is a clientset from cp-1's admin.conf, usable from the test
// process: it dials inside the lab.
func (b *Bed) Client(t testing.TB) kubernetes.Interface {
	t.Helper()
	cfg, err := b.RESTConfig(b.AdminConf())
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Member is one etcd member as `etcdctl member list -w json` prints it.
type Member struct {
	ID         uint64   `json:"ID"`
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
	IsLearner  bool     `json:"isLearner"`
}

// EtcdMembers asks etcd itself, through etcd's own client (etcdctl) run
// inside control plane n against its local member, with the healthcheck
// client certificate kubeadm made.
func (b *Bed) EtcdMembers(ctx context.Context, n *Node) ([]Member, error) {
	out, err := n.Run(ctx, filepath.Join(b.Bin, "etcdctl"), "--endpoints=https://127.0.0.1:2379",
		"--cacert=/etc/kubernetes/pki/etcd/ca.crt", "--cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt",
		"--key=/etc/kubernetes/pki/etcd/healthcheck-client.key", "--command-timeout=10s", "member", "list", "-w", "json")
	if err != nil {
		return nil, err
	}
	var resp struct {
		Members []Member `json:"members"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		return nil, fmt.Errorf("etcdctl member list: %w\n%s", err, out)
	}
	return resp.Members, nil
}
