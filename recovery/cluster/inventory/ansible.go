package inventory

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Kubespray group names, current and older.
var (
	controlPlaneGroups = []string{"kube_control_plane", "kube-master"}
	workerGroups       = []string{"kube_node", "kube-node"}
	etcdGroups         = []string{"etcd"}
)

// group is an Ansible group, merged over every place the file defines it.
type group struct {
	hosts    map[string]bool
	children []string // to link each child once
	parents  []string
	vars     map[string]*yaml.Node
	depth    int // longest path from the all group; -1 until computed
}

// ansible reads an Ansible YAML inventory.
type ansible struct {
	file   string
	groups map[string]*group
	hosts  map[string]map[string]*yaml.Node // host vars
	order  []string                         // hosts in the order of the file
	parsed map[parsedKey]bool               // group definitions already read
}

type parsedKey struct {
	name string
	node *yaml.Node
}

func parseAnsible(path string, top *yaml.Node) (*Inventory, error) {
	a := &ansible{
		file:   path,
		groups: map[string]*group{},
		hosts:  map[string]map[string]*yaml.Node{},
		parsed: map[parsedKey]bool{},
	}
	a.group("all")
	for i := 0; i+1 < len(top.Content); i += 2 {
		name := top.Content[i].Value
		if err := a.parseGroup(name, top.Content[i+1]); err != nil {
			return nil, err
		}
		if name != "all" {
			a.link("all", name)
		}
	}
	if err := a.computeDepths(); err != nil {
		return nil, err
	}
	return a.inventory()
}

func (a *ansible) errorf(n *yaml.Node, format string, args ...any) error {
	return fmt.Errorf("%s: line %d: %s", a.file, n.Line, fmt.Sprintf(format, args...))
}

func (a *ansible) group(name string) *group {
	g := a.groups[name]
	if g == nil {
		g = &group{hosts: map[string]bool{}, vars: map[string]*yaml.Node{}, depth: -1}
		a.groups[name] = g
	}
	return g
}

func (a *ansible) link(parent, child string) {
	p, c := a.group(parent), a.group(child)
	if !contains(p.children, child) {
		p.children = append(p.children, child)
		c.parents = append(c.parents, parent)
	}
}

// parseGroup reads one group definition: hosts, children and vars.
func (a *ansible) parseGroup(name string, n *yaml.Node) error {
	g := a.group(name)
	n = deref(n)
	if isNull(n) || a.parsed[parsedKey{name, n}] {
		return nil
	}
	a.parsed[parsedKey{name, n}] = true
	if n.Kind != yaml.MappingNode {
		return a.errorf(n, "group %s is %s; an Ansible group is a mapping with hosts, children or vars",
			name, describe(n))
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		var err error
		switch key.Value {
		case "hosts":
			err = a.parseHosts(name, g, val)
		case "children":
			err = a.parseChildren(name, val)
		case "vars":
			err = a.parseVars(g.vars, "vars of group "+name, val)
		default:
			err = a.errorf(key, "group %s has key %q; an Ansible group holds only hosts, children and vars "+
				"(is a host or group indented wrongly?)", name, key.Value)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (a *ansible) parseHosts(groupName string, g *group, n *yaml.Node) error {
	n, err := a.mapping(n, "hosts of group "+groupName)
	if err != nil || n == nil {
		return err
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key := n.Content[i]
		host := key.Value
		if strings.ContainsAny(host, "[]") {
			return a.errorf(key, "host pattern %s is not expanded by kubecpr: run "+
				"`ansible-inventory -i %s --list -y > hosts.yaml`, which lists every host, and pass hosts.yaml",
				host, a.file)
		}
		g.hosts[host] = true
		if a.hosts[host] == nil {
			a.hosts[host] = map[string]*yaml.Node{}
			a.order = append(a.order, host)
		}
		if err := a.parseVars(a.hosts[host], "host "+host, n.Content[i+1]); err != nil {
			return err
		}
	}
	return nil
}

func (a *ansible) parseChildren(parent string, n *yaml.Node) error {
	n, err := a.mapping(n, "children of group "+parent)
	if err != nil || n == nil {
		return err
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		child := n.Content[i].Value
		a.link(parent, child)
		if err := a.parseGroup(child, n.Content[i+1]); err != nil {
			return err
		}
	}
	return nil
}

func (a *ansible) parseVars(dst map[string]*yaml.Node, what string, n *yaml.Node) error {
	n, err := a.mapping(n, what)
	if err != nil || n == nil {
		return err
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		dst[n.Content[i].Value] = deref(n.Content[i+1])
	}
	return nil
}

// mapping returns n as a mapping, nil for an empty value, or an error.
func (a *ansible) mapping(n *yaml.Node, what string) (*yaml.Node, error) {
	n = deref(n)
	if isNull(n) {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, a.errorf(n, "%s is %s; expected a mapping", what, describe(n))
	}
	return n, nil
}

// computeDepths sets each group's depth (longest path from all), which
// orders the merging of vars, and refuses cycles as Ansible does.
func (a *ansible) computeDepths() error {
	names := sortedKeys(a.groups)
	for _, name := range names {
		if _, err := a.depth(name, nil); err != nil {
			return err
		}
	}
	return nil
}

func (a *ansible) depth(name string, path []string) (int, error) {
	g := a.groups[name]
	if contains(path, name) {
		cycle := strings.Join(append(path[indexOf(path, name):], name), " → ")
		return 0, fmt.Errorf("%s: group %s is its own descendant (%s): remove one of these children", a.file, name, cycle)
	}
	if g.depth >= 0 {
		return g.depth, nil
	}
	d := 0
	for _, p := range g.parents {
		pd, err := a.depth(p, append(path, name))
		if err != nil {
			return 0, err
		}
		d = max(d, pd+1)
	}
	g.depth = d
	return d, nil
}

// groupsOf returns every group a host belongs to, directly or through
// children, sorted as Ansible merges their vars: by depth, then name.
func (a *ansible) groupsOf(host string) []string {
	seen := map[string]bool{}
	var walk func(string)
	walk = func(name string) {
		if seen[name] {
			return
		}
		seen[name] = true
		for _, p := range a.groups[name].parents {
			walk(p)
		}
	}
	for name, g := range a.groups {
		if g.hosts[host] {
			walk(name)
		}
	}
	walk("all")
	out := sortedKeys(seen)
	sort.SliceStable(out, func(i, j int) bool { return a.groups[out[i]].depth < a.groups[out[j]].depth })
	return out
}

// vars merges a host's variables: its groups' (shallow first), then its own.
func (a *ansible) vars(host string, groups []string) map[string]*yaml.Node {
	out := map[string]*yaml.Node{}
	for _, name := range groups {
		for k, v := range a.groups[name].vars {
			out[k] = v
		}
	}
	for k, v := range a.hosts[host] {
		out[k] = v
	}
	return out
}

func (a *ansible) inventory() (*Inventory, error) {
	inv := &Inventory{Source: a.file}
	var problems errs
	for _, host := range a.order {
		n, ok, err := a.node(host)
		if err != nil {
			problems = append(problems, err)
		}
		if ok {
			inv.Nodes = append(inv.Nodes, n)
		}
	}
	if err := problems.join(); err != nil {
		return nil, err
	}
	return inv, nil
}

// node turns a host into a node; ok is false for hosts that are not
// Kubernetes nodes (bastion, calico_rr, ...).
func (a *ansible) node(host string) (Node, bool, error) {
	groups := a.groupsOf(host)
	cp, worker, etcd := hasAny(groups, controlPlaneGroups), hasAny(groups, workerGroups), hasAny(groups, etcdGroups)
	if etcd && !cp {
		return Node{}, false, fmt.Errorf("%s: host %s is in the etcd group but not in kube_control_plane: "+
			"that is an external etcd cluster, and kubecpr supports stacked etcd only "+
			"(an etcd member on every control-plane node, as kubeadm sets it up)", a.file, host)
	}
	if !cp && !worker {
		return Node{}, false, nil
	}
	n := Node{Name: host, Role: Worker}
	if cp {
		n.Role = ControlPlane
	}
	v := hostVars{a: a, host: host, vars: a.vars(host, groups)}
	n.Address = v.str("ip", "access_ip", "ansible_host", "ansible_ssh_host")
	n.SSH = v.ssh()
	return n, true, v.err()
}

// hostVars reads the variables kubecpr uses, collecting problems (each
// variable's once).
type hostVars struct {
	a        *ansible
	host     string
	vars     map[string]*yaml.Node
	problems errs
	reported map[string]bool
}

func (v *hostVars) err() error { return v.problems.join() }

func (v *hostVars) ssh() *SSH {
	s := &SSH{
		Host: firstNonEmpty(v.str("ansible_host", "ansible_ssh_host"), v.host),
		User: firstNonEmpty(v.str("ansible_user", "ansible_ssh_user"), "root"),
		Port: v.port("ansible_port", "ansible_ssh_port"),
	}
	key := v.str("ansible_ssh_private_key_file", "ansible_private_key_file")
	if key != "" {
		var err error
		// Relative to the working directory, as ssh run by Ansible takes it.
		if s.IdentityFile, err = resolvePath(".", key); err != nil {
			v.problems.addf("%s: host %s: %w", v.a.file, v.host, err)
		}
	}
	s.Agent = key == ""
	s.Sudo = s.User != "root" || v.boolean("ansible_become")
	return s
}

// lookup returns the first of the named variables that is set.
func (v *hostVars) lookup(names ...string) (name string, n *yaml.Node) {
	for _, name := range names {
		if n := v.vars[name]; n != nil && !isNull(n) {
			return name, n
		}
	}
	return "", nil
}

// str returns the value of the first of the named variables that is set.
func (v *hostVars) str(names ...string) string {
	name, n := v.lookup(names...)
	switch {
	case n == nil:
		return ""
	case n.Kind != yaml.ScalarNode:
		v.report(name, n, "%s is %s; expected a single value", name, describe(n))
		return ""
	case strings.Contains(n.Value, "{{"):
		v.report(name, n, "%s is the Jinja template %q, which kubecpr does not evaluate: write the value itself",
			name, n.Value)
		return ""
	}
	return n.Value
}

func (v *hostVars) report(name string, n *yaml.Node, format string, args ...any) {
	if v.reported[name] {
		return
	}
	if v.reported == nil {
		v.reported = map[string]bool{}
	}
	v.reported[name] = true
	v.problems = append(v.problems, v.a.errorf(n, "host %s: %s", v.host, fmt.Sprintf(format, args...)))
}

func (v *hostVars) port(names ...string) int {
	s := v.str(names...)
	if s == "" {
		return DefaultSSHPort
	}
	p, err := strconv.Atoi(s)
	if err != nil {
		name, n := v.lookup(names...)
		v.report(name, n, "%s %q is not a number: give the SSH port, such as 22", name, s)
	}
	return p
}

// boolean reads an Ansible boolean (true, yes, on, 1, in any case).
func (v *hostVars) boolean(name string) bool {
	switch strings.ToLower(v.str(name)) {
	case "true", "yes", "on", "1", "y", "t":
		return true
	}
	return false
}

func hasAny(set, names []string) bool {
	for _, n := range names {
		if contains(set, n) {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool { return indexOf(list, s) >= 0 }

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
