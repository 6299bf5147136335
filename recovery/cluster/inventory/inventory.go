package inventory

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Role of a node in the cluster.
type Role string

const (
	// ControlPlane nodes run the API server, controller-manager, scheduler
	// and a stacked etcd member.
	ControlPlane Role = "control-plane"
	// Worker nodes run only the kubelet (and their pods).
	Worker Role = "worker"
)

// Inventory is the list of nodes of one cluster.
type Inventory struct {
	Nodes []Node
	// Source is the file the inventory was read from, named in every error.
	Source string
}

// Node is one node of the cluster and how to reach it: exactly one of SSH
// and Root is set.
type Node struct {
	Name string
	Role Role
	// Address is the IP (or host name) the node is known by in the cluster:
	// the one in its certificates' SANs and in etcd's peer URLs.
	Address string
	SSH     *SSH
	// Root is an absolute local directory holding the node's filesystem tree.
	Root string
	// Args are extra kubecpr flags for this node's own runs (kubecpr's
	// format only), e.g. --kubelet-restart-command or --cri-socket.
	Args []string
}

// SSH says how to reach a node over SSH.
type SSH struct {
	User         string
	Host         string
	Port         int
	IdentityFile string // private key file; "" for none
	Agent        bool   // also use the keys of the SSH agent
	KnownHosts   string // known_hosts file; "" for the transport's default
	Sudo         bool   // run kubecpr with sudo on the node
}

// ControlPlanes returns the control-plane nodes, in inventory order.
func (inv *Inventory) ControlPlanes() []Node { return inv.withRole(ControlPlane) }

// Workers returns the worker nodes, in inventory order.
func (inv *Inventory) Workers() []Node { return inv.withRole(Worker) }

func (inv *Inventory) withRole(r Role) []Node {
	var out []Node
	for _, n := range inv.Nodes {
		if n.Role == r {
			out = append(out, n)
		}
	}
	return out
}

// Find returns the node with the given name.
func (inv *Inventory) Find(name string) (Node, bool) {
	for _, n := range inv.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// Load reads an inventory in kubecpr's own format or an Ansible/kubespray
// YAML inventory (told apart by content) and validates it.
func Load(path string) (*Inventory, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	inv, err := parse(path, data)
	if err != nil {
		return nil, err
	}
	if err := inv.Validate(); err != nil {
		return nil, err
	}
	return inv, nil
}

func readFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read the inventory: %w", err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("inventory %s is a directory: pass the inventory file itself "+
			"(for kubespray, inventory/NAME/hosts.yaml)", path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read the inventory: %w", err)
	}
	return data, nil
}

// parse reads either format from data; path names the file in errors and
// anchors relative paths.
func parse(path string, data []byte) (*Inventory, error) {
	if looksINI(data) {
		return nil, iniError(path)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s is not valid YAML (%v): kubecpr reads its own inventory format "+
			"(apiVersion: %s) or an Ansible YAML inventory", path, err, APIVersion)
	}
	if len(doc.Content) == 0 {
		return nil, fmt.Errorf("%s is empty: list the cluster's nodes in it", path)
	}
	top := deref(doc.Content[0])
	if top.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: line %d: expected a mapping (apiVersion, kind and nodes, "+
			"or Ansible groups such as all:), found %s", path, top.Line, describe(top))
	}
	if isKubecpr(top) {
		return parseKubecpr(path, data)
	}
	return parseAnsible(path, top)
}

func isKubecpr(top *yaml.Node) bool {
	for i := 0; i+1 < len(top.Content); i += 2 {
		switch top.Content[i].Value {
		case "apiVersion", "kind", "nodes":
			return true
		}
	}
	return false
}

var (
	iniSection = regexp.MustCompile(`^\[[A-Za-z0-9_.:-]+\]\s*$`)
	iniHost    = regexp.MustCompile(`^[^\s:#\[\]{}\-][^\s:#\[\]{}]*(\s+[A-Za-z_][A-Za-z0-9_]*=\S*)+\s*$`)
)

// looksINI reports whether data is an Ansible INI inventory: a [group]
// header or a "host var=value" line at the start of a line, neither of which
// can start a line of a YAML mapping.
func looksINI(data []byte) bool {
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r")
		if iniSection.MatchString(line) || iniHost.MatchString(line) {
			return true
		}
	}
	return false
}

func iniError(path string) error {
	return fmt.Errorf("%s is an INI inventory, which kubecpr does not read: convert it with "+
		"`ansible-inventory -i %s --list -y > hosts.yaml` and pass hosts.yaml, "+
		"or write kubecpr's own format (apiVersion: %s, kind: Inventory)", path, path, APIVersion)
}

// deref follows YAML aliases (*anchor) to the node they name.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	if n == nil || n.Kind == yaml.AliasNode {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null"}
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.DocumentNode:
		return "a document"
	}
	if isNull(n) {
		return "nothing"
	}
	return fmt.Sprintf("%q", n.Value)
}

// resolvePath makes p absolute: "~/" from the home directory, other relative
// paths from dir. An empty p stays empty.
func resolvePath(dir, p string) (string, error) {
	switch {
	case p == "":
		return "", nil
	case p == "~" || strings.HasPrefix(p, "~/"):
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("cannot expand %s: %w", p, err)
		}
		p = filepath.Join(home, strings.TrimPrefix(p, "~"))
	case !filepath.IsAbs(p):
		p = filepath.Join(dir, p)
	}
	return filepath.Abs(p)
}

// errs collects problems so that the operator sees all of them at once.
type errs []error

func (e *errs) addf(format string, args ...any) {
	*e = append(*e, fmt.Errorf(format, args...))
}

func (e errs) join() error { return errors.Join(e...) }
