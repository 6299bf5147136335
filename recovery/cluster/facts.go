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

	cinv "github.com/kubecpr/kubecpr/recovery/cluster/inventory"
	"github.com/kubecpr/kubecpr/recovery/etcddata"
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
	// CAIdentity is the sha256 of the cluster CA's subject and public key:
	// the same on every node of one cluster, also while a re-issued CA
	// certificate (--renew-ca) is on some nodes and not yet on others.
	CAIdentity string `json:"caIdentity,omitempty"`
	// EtcdName and EtcdInitialCluster come from the etcd manifest of a
	// stacked control-plane node.
	EtcdName           string `json:"etcdName,omitempty"`
	EtcdInitialCluster string `json:"etcdInitialCluster,omitempty"`
	// EtcdMembership is etcd's own membership, read offline from this
	// member's data (EtcdDB, a node path): --initial-cluster is only what a
	// member was started with (a kubeadm init node's names itself alone).
	// EtcdDBError says why it could not be read.
	EtcdMembership *etcddata.Membership `json:"etcdMembership,omitempty"`
	EtcdDB         string               `json:"etcdDB,omitempty"`
	EtcdDBError    string               `json:"etcdDBError,omitempty"`
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
	id := sha256.Sum256(append(append([]byte{}, ca.CA.Cert.RawSubject...), ca.CA.Cert.RawSubjectPublicKeyInfo...))
	f.CAIdentity = hex.EncodeToString(id[:])
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
			dataDir := m.Flags["data-dir"]
			if dataDir == "" {
				dataDir = "/var/lib/etcd"
			}
			f.EtcdDB = path.Join(dataDir, "member/snap/db")
			if n.Exists(f.EtcdDB) {
				if ms, err := etcddata.ReadMembership(n.HostPath(f.EtcdDB)); err != nil {
					f.EtcdDBError = err.Error()
				} else {
					f.EtcdMembership = ms
				}
			} else {
				f.EtcdDBError = f.EtcdDB + " does not exist"
			}
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

// EtcdMembership is the membership the inventory is held against: etcd's
// own, from the control plane whose data is the most recent (highest
// consistent index), else the union of every control plane's
// --initial-cluster — a fallback, said so in source. kubeadm join leaves
// the init node's manifest naming itself alone, so no single manifest is
// the membership.
func EtcdMembership(cps []string, facts map[string]*Facts) (members map[string]string, source string, fallback bool, err error) {
	var best *Facts
	var bestNode string
	for _, name := range cps {
		f := facts[name]
		if f == nil || f.EtcdMembership == nil {
			continue
		}
		if best == nil || f.EtcdMembership.ConsistentIndex > best.EtcdMembership.ConsistentIndex {
			best, bestNode = f, name
		}
	}
	if best != nil {
		members = map[string]string{}
		for _, m := range best.EtcdMembership.Members {
			name := m.Name
			if name == "" {
				// Added but never started (kubeadm join stopped half-way):
				// it has no name yet; keyed by its id.
				name = "(unstarted member " + m.ID + ")"
			}
			members[name] = strings.Join(m.PeerURLs, ",")
		}
		return members, bestNode + ": " + best.EtcdDB, false, nil
	}
	members = map[string]string{}
	var from []string
	for _, name := range cps {
		f := facts[name]
		if f == nil || f.EtcdInitialCluster == "" {
			continue
		}
		ms, err := cinv.ParseInitialCluster(f.EtcdInitialCluster)
		if err != nil {
			return nil, "", true, fmt.Errorf("node %s: %w", name, err)
		}
		for k, v := range ms {
			members[k] = v
		}
		from = append(from, name)
	}
	if len(members) == 0 {
		return nil, "", true, nil
	}
	return members, "the union of --initial-cluster on " + strings.Join(from, ", "), true, nil
}
