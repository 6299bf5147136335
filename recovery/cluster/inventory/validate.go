package inventory

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// dns1123Subdomain is Kubernetes' rule for node names.
var dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// hostname is a host name as it may appear in an address (any case).
var hostname = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$`)

// Validate checks that the inventory can drive a recovery: every node named
// (DNS-1123 subdomain, unique), with a role, a unique address, and exactly one
// way to reach it (ssh with a host, a user, a key file or the agent and a
// port in 1..65535, or root, an existing directory); at least one
// control-plane node. All problems are returned
// together (errors.Join), each naming the file and the node.
func (inv *Inventory) Validate() error {
	var problems errs
	if len(inv.Nodes) == 0 {
		problems.addf("%s lists no nodes: list every control-plane node and worker of the cluster", inv.source())
		return problems.join()
	}
	for _, n := range inv.Nodes {
		for _, msg := range n.problems() {
			problems.addf("%s: node %q: %s", inv.source(), n.Name, msg)
		}
	}
	problems = append(problems, inv.duplicates()...)
	if len(inv.ControlPlanes()) == 0 {
		problems.addf("%s has no control-plane node: give every control-plane node role: control-plane "+
			"(in a kubespray inventory, list them in the kube_control_plane group)", inv.source())
	}
	return problems.join()
}

func (inv *Inventory) source() string {
	if inv.Source == "" {
		return "inventory"
	}
	return inv.Source
}

// problems lists what is wrong with one node, each with what to do.
func (n Node) problems() []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	switch {
	case n.Name == "":
		add("has no name: give the node's Kubernetes name (kubectl get nodes)")
	case len(n.Name) > 253 || !dns1123Subdomain.MatchString(n.Name):
		add("name is not a valid Kubernetes node name (lower-case letters, digits, '-' and '.', " +
			"at most 253 characters): give the node's name as kubectl get nodes shows it")
	}
	switch n.Role {
	case ControlPlane, Worker:
	case "":
		add("has no role: set role: control-plane or role: worker")
	default:
		add("role %q is not control-plane or worker", n.Role)
	}
	if n.Address != "" && !validAddress(n.Address) {
		add("address %q is not an IP or a host name: give the address the node has in the cluster, "+
			"without scheme or port", n.Address)
	}
	return append(out, n.reachProblems()...)
}

func (n Node) reachProblems() []string {
	switch {
	case n.SSH != nil && n.Root != "":
		// A copy of the tree on the remote node: kubecpr runs there with
		// --root ROOT (a rehearsal over SSH). Not checked from here.
		probs := n.SSH.problems()
		if !filepath.IsAbs(n.Root) {
			probs = append(probs, fmt.Sprintf("root %s with ssh is a directory on the remote node and must be absolute", n.Root))
		}
		return probs
	case n.SSH == nil && n.Root == "":
		return []string{"has neither ssh nor root: say how to reach the node (ssh: {host, user, ...}) " +
			"or where a copy of its tree is (root: DIR)"}
	case n.SSH != nil:
		return n.SSH.problems()
	}
	return rootProblems(n.Root)
}

func (s *SSH) problems() []string {
	var out []string
	if s.Host == "" {
		out = append(out, "ssh has no host: set ssh.host (or the node's address)")
	}
	if s.User == "" {
		out = append(out, "ssh has no user: set ssh.user")
	}
	if s.IdentityFile == "" && !s.Agent {
		out = append(out, "ssh has neither identityFile nor agent: set ssh.identityFile to the private key, "+
			"or agent: true to use the keys of $SSH_AUTH_SOCK")
	}
	if s.Port < 1 || s.Port > 65535 {
		out = append(out, fmt.Sprintf("ssh port %d is not in 1..65535: set ssh.port "+
			"(ansible_port in an Ansible inventory) to the node's SSH port, or leave it out for 22", s.Port))
	}
	return out
}

func rootProblems(root string) []string {
	fi, err := os.Stat(root)
	switch {
	case os.IsNotExist(err):
		return []string{fmt.Sprintf("root %s does not exist: point root at a copy of the node's filesystem "+
			"(the directory that holds etc/kubernetes)", root)}
	case err != nil:
		return []string{fmt.Sprintf("root %s cannot be read (%v): fix its permissions or point root elsewhere", root, err)}
	case !fi.IsDir():
		return []string{fmt.Sprintf("root %s is not a directory: point root at a copy of the node's filesystem "+
			"(the directory that holds etc/kubernetes)", root)}
	}
	return nil
}

func validAddress(a string) bool {
	if _, err := netip.ParseAddr(a); err == nil {
		return true
	}
	return len(a) <= 253 && hostname.MatchString(a)
}

// duplicates reports node names and addresses used more than once.
func (inv *Inventory) duplicates() errs {
	var problems errs
	names, addrs := map[string]bool{}, map[string]string{}
	for _, n := range inv.Nodes {
		if names[n.Name] && n.Name != "" {
			problems.addf("%s: node %q is listed more than once: list each node once", inv.source(), n.Name)
			continue
		}
		names[n.Name] = true
		if n.Address == "" {
			continue
		}
		key := canonicalAddress(n.Address)
		if first, ok := addrs[key]; ok {
			problems.addf("%s: nodes %q and %q have the same address %s: give each node its own address",
				inv.source(), first, n.Name, n.Address)
			continue
		}
		addrs[key] = n.Name
	}
	return problems
}

// canonicalAddress makes equal addresses compare equal: 127.0.0.1 and
// ::ffff:127.0.0.1, or NODE1 and node1.
func canonicalAddress(a string) string {
	if ip, err := netip.ParseAddr(a); err == nil {
		return ip.Unmap().String()
	}
	return strings.ToLower(a)
}
