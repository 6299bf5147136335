package inventory

import (
	"fmt"
	"net/netip"
	"net/url"
	"strings"
)

// DefaultEtcdManifest is where kubeadm writes the etcd static pod manifest.
const DefaultEtcdManifest = "/etc/kubernetes/manifests/etcd.yaml"

// ClusterFacts is what the first node knows about the cluster offline.
type ClusterFacts struct {
	// EtcdMembers maps member name to peer URL, from etcd's --initial-cluster
	// (see ParseInitialCluster). Empty when unknown: the etcd checks are
	// skipped.
	EtcdMembers map[string]string
	// EtcdManifest is the file EtcdMembers was read from, named in errors;
	// DefaultEtcdManifest when empty.
	EtcdManifest string
	// EtcdSource, when set, says that EtcdMembers is etcd's own membership
	// and where it was read ("cp-1: /var/lib/etcd/member/snap/db"); when
	// empty, EtcdMembers came from --initial-cluster (EtcdManifest).
	EtcdSource string
	// NodeNames are node names seen in certificates; may be empty.
	NodeNames []string
}

// CrossCheck holds the inventory against what the cluster knows: every etcd
// member is a control-plane node of the inventory (kubeadm names members
// after their nodes), every control-plane node is an etcd member (stacked
// etcd), a member's peer URL IP is its node's address (when both are IPs),
// and every node name seen in certificates is in the inventory. All
// mismatches are returned together, each naming the node and the files.
func CrossCheck(inv *Inventory, known ClusterFacts) error {
	if inv == nil {
		return fmt.Errorf("no inventory to cross-check: pass --inventory FILE")
	}
	var problems errs
	if len(known.EtcdMembers) > 0 {
		problems = append(problems, checkMembers(inv, known)...)
		problems = append(problems, checkControlPlanes(inv, known)...)
	}
	for _, name := range known.NodeNames {
		if _, ok := inv.Find(name); !ok {
			problems.addf("%s: certificates on this node name node %q, which the inventory does not list: "+
				"add it, or fix the node names in the inventory (they must be the Kubernetes node names)",
				inv.source(), name)
		}
	}
	return problems.join()
}

// where says where the membership was read, for messages.
func where(known ClusterFacts) string {
	if known.EtcdSource != "" {
		return "etcd's own membership (" + known.EtcdSource + ")"
	}
	return "etcd's --initial-cluster in " + manifest(known)
}

func manifest(known ClusterFacts) string {
	if known.EtcdManifest == "" {
		return DefaultEtcdManifest
	}
	return known.EtcdManifest
}

// checkMembers: every etcd member is a control-plane node at its address.
func checkMembers(inv *Inventory, known ClusterFacts) errs {
	var problems errs
	for _, name := range sortedKeys(known.EtcdMembers) {
		peer := known.EtcdMembers[name]
		n, ok := inv.Find(name)
		switch {
		case !ok:
			problems.addf("%s: %s has member %q (%s), which the inventory does not list: "+
				"add node %s with role control-plane, or check that the inventory is for this cluster",
				inv.source(), where(known), name, peer, name)
		case n.Role != ControlPlane:
			problems.addf("%s: node %q is a %s in the inventory, but %s has it as a member: "+
				"make it role control-plane (kubecpr supports stacked etcd only)",
				inv.source(), name, n.Role, where(known))
		case !addressMatches(n.Address, peer):
			problems.addf("%s: node %q has address %s, but %s gives its peer URL as %s: "+
				"fix the node's address (the IP its certificates and etcd use)",
				inv.source(), name, n.Address, where(known), peer)
		}
	}
	return problems
}

// checkControlPlanes: every control-plane node is an etcd member.
func checkControlPlanes(inv *Inventory, known ClusterFacts) errs {
	var problems errs
	members := strings.Join(sortedKeys(known.EtcdMembers), ",")
	for _, n := range inv.ControlPlanes() {
		if _, ok := known.EtcdMembers[n.Name]; !ok {
			problems.addf("%s: inventory names control-plane node %q but %s has members %s: "+
				"fix the inventory (kubecpr supports stacked etcd: one member on each control-plane node, "+
				"named after it), or read the manifest of a node of this cluster",
				inv.source(), n.Name, where(known), members)
		}
	}
	return problems
}

// addressMatches reports whether a node's address agrees with its peer
// URLs. It can only tell when the address and a URL host are both IPs; a
// host name is not resolved (the check is offline).
func addressMatches(address, peerURLs string) bool {
	addr, err := netip.ParseAddr(address)
	if err != nil {
		return true
	}
	compared := false
	for _, u := range strings.Split(peerURLs, ",") {
		pu, err := url.Parse(u)
		if err != nil {
			continue
		}
		ip, err := netip.ParseAddr(pu.Hostname())
		if err != nil {
			continue
		}
		if ip.Unmap() == addr.Unmap() {
			return true
		}
		compared = true
	}
	return !compared
}

// ParseInitialCluster parses the value of etcd's --initial-cluster flag
// ("a=https://127.0.0.1:2380,b=https://127.0.0.2:2380"; a leading
// "--initial-cluster=" is accepted) into member name → peer URL. A member
// listed with several peer URLs, as etcd allows, gets them joined by commas.
func ParseInitialCluster(s string) (map[string]string, error) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "--initial-cluster=")
	if s == "" {
		return nil, fmt.Errorf("etcd --initial-cluster is empty: expected NAME=PEER-URL,... as kubeadm writes it")
	}
	out := map[string]string{}
	for _, entry := range strings.Split(s, ",") {
		name, peer, err := parseMember(strings.TrimSpace(entry))
		if err != nil {
			return nil, fmt.Errorf("etcd --initial-cluster %q: %w", s, err)
		}
		if out[name] != "" {
			peer = out[name] + "," + peer
		}
		out[name] = peer
	}
	return out, nil
}

func parseMember(entry string) (name, peer string, err error) {
	name, peer, ok := strings.Cut(entry, "=")
	if !ok || name == "" {
		return "", "", fmt.Errorf("entry %q is not NAME=PEER-URL", entry)
	}
	u, err := url.Parse(peer)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return "", "", fmt.Errorf("member %s: peer URL %q is not an http(s)://HOST:PORT URL", name, peer)
	}
	return name, peer, nil
}
