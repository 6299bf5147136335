// Package cluster drives kubecpr's node pipeline on every node of a
// cluster, in the order that brings a fully expired cluster back: every
// control-plane node offline first, then etcd and the control plane on all
// of them at once (quorum), then the workers. Each node keeps its own
// journal; the driving node keeps a cluster journal of which node finished
// which phase, so that `kubecpr cluster resume` and `rollback` work at both
// levels.
package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"path"
	"strings"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/kube"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// Facts is what one node says about itself, offline (`kubecpr facts`):
// enough for the driver to refuse a wrong inventory before any change.
type Facts struct {
	NodeName string `json:"nodeName"`
	Role     string `json:"role"` // control-plane or worker
	// CASHA256 is the sha256 of the cluster CA certificate (DER): every
	// node of one cluster has the same.
	CASHA256 string `json:"caSHA256"`
	// EtcdName and EtcdInitialCluster come from the etcd manifest of a
	// stacked control-plane node.
	EtcdName           string `json:"etcdName,omitempty"`
	EtcdInitialCluster string `json:"etcdInitialCluster,omitempty"`
	// Where this control plane serves, from its manifests (cluster
	// verify dials them): etcd's advertised client and peer URLs, the API
	// server's advertise address and secure port (host:port).
	EtcdClientURL string `json:"etcdClientURL,omitempty"`
	EtcdPeerURL   string `json:"etcdPeerURL,omitempty"`
	APIServer     string `json:"apiServer,omitempty"`
	// Serials of the serving certificates on disk (hex): apiserver,
	// etcd-server, etcd-peer. Cluster verify expects them on the wire.
	Serials map[string]string `json:"serials,omitempty"`
}

// Role names.
const (
	RoleControlPlane = "control-plane"
	RoleWorker       = "worker"
)

// ReadFacts reads a node's facts from its files.
func ReadFacts(n *node.Node, c *node.Cluster, inv *inventory.Inventory) (*Facts, error) {
	f := &Facts{Role: RoleControlPlane}
	if c != nil {
		f.NodeName = c.NodeName
	}
	if inv.Worker {
		f.Role = RoleWorker
	}
	ca := inv.CA("ca")
	if ca == nil || ca.CA == nil {
		return nil, fmt.Errorf("%s: no readable cluster CA certificate", n.Path(node.DefaultPKIDir+"/ca.crt"))
	}
	sum := sha256.Sum256(ca.CA.Cert.Raw)
	f.CASHA256 = hex.EncodeToString(sum[:])
	if !inv.Worker {
		dir := node.ManifestsDir
		if c != nil && c.StaticPodPath != "" {
			dir = c.StaticPodPath
		}
		if m, err := n.ReadManifest(path.Join(dir, "etcd.yaml")); err == nil {
			f.EtcdName = m.Flags["name"]
			f.EtcdInitialCluster = m.Flags["initial-cluster"]
			f.EtcdClientURL = firstURL(m.Flags["advertise-client-urls"])
			f.EtcdPeerURL = firstURL(m.Flags["initial-advertise-peer-urls"])
		}
		if m, err := n.ReadManifest(path.Join(dir, "kube-apiserver.yaml")); err == nil && m.Flags["advertise-address"] != "" {
			port := m.Flags["secure-port"]
			if port == "" {
				port = "6443"
			}
			f.APIServer = net.JoinHostPort(m.Flags["advertise-address"], port)
		}
		pkiDir := node.DefaultPKIDir
		if c != nil && c.PKIDir != "" {
			pkiDir = c.PKIDir
		}
		f.Serials = map[string]string{}
		for name, file := range map[string]string{"apiserver": "apiserver.crt", "etcd-server": "etcd/server.crt", "etcd-peer": "etcd/peer.crt"} {
			if b, err := n.ReadFile(path.Join(pkiDir, file)); err == nil {
				if crt, err := pki.ParseCertificate(b); err == nil {
					f.Serials[name] = crt.SerialNumber.Text(16)
				}
			}
		}
	}
	return f, nil
}

func firstURL(list string) string {
	first, _, _ := strings.Cut(list, ",")
	return strings.TrimSpace(first)
}

// KubeletIdentity proves that the kubelet's current client credential
// (kubelet.conf, or the pem it points at) authenticates against the API
// server it names: a SelfSubjectReview, answered with the user the API
// server sees ("system:node:NAME"). It reads only through the node.
func KubeletIdentity(ctx context.Context, n *node.Node) (string, error) {
	cfg, err := n.RESTConfig(node.KubernetesDir + "/kubelet.conf")
	if err != nil {
		return "", err
	}
	cfg.Timeout = 10 * time.Second
	cs, err := kube.New(cfg)
	if err != nil {
		return "", err
	}
	r, err := cs.CreateSelfSubjectReview(ctx, &authv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("the kubelet's credential (%s) does not authenticate at %s: %w", node.KubernetesDir+"/kubelet.conf", cfg.Host, err)
	}
	if r.Status.UserInfo.Username == "" {
		return "", errors.New("the API server answered the SelfSubjectReview without a user")
	}
	return r.Status.UserInfo.Username, nil
}
