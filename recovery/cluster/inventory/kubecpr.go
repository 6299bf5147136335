package inventory

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// APIVersion and Kind of kubecpr's own inventory format.
const (
	APIVersion = "kubecpr.io/v1alpha1"
	Kind       = "Inventory"
)

// DefaultSSHPort is used when an inventory gives no port.
const DefaultSSHPort = 22

type fileV1 struct {
	APIVersion string   `yaml:"apiVersion"`
	Kind       string   `yaml:"kind"`
	Nodes      []nodeV1 `yaml:"nodes"`
}

type nodeV1 struct {
	Name    string `yaml:"name"`
	Role    Role   `yaml:"role"`
	Address string `yaml:"address"`
	SSH     *sshV1 `yaml:"ssh"`
	Root    string `yaml:"root"`
	// Args are extra node-level kubecpr flags for this node only (e.g.
	// --kubelet-restart-command where systemd is not PID 1).
	Args []string `yaml:"args"`
}

type sshV1 struct {
	User         string `yaml:"user"`
	Host         string `yaml:"host"`
	Port         *int   `yaml:"port"`
	IdentityFile string `yaml:"identityFile"`
	Agent        bool   `yaml:"agent"`
	KnownHosts   string `yaml:"knownHosts"`
	Sudo         *bool  `yaml:"sudo"`
}

func parseKubecpr(path string, data []byte) (*Inventory, error) {
	var f fileV1
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, decodeError(path, err)
	}
	if f.APIVersion != APIVersion || f.Kind != Kind {
		return nil, fmt.Errorf("%s: apiVersion %q, kind %q: this kubecpr reads apiVersion: %s, kind: %s",
			path, f.APIVersion, f.Kind, APIVersion, Kind)
	}
	dir := filepath.Dir(path)
	inv := &Inventory{Source: path}
	var problems errs
	for _, fn := range f.Nodes {
		n, err := fn.node(dir)
		if err != nil {
			problems.addf("%s: node %q: %w", path, fn.Name, err)
		}
		inv.Nodes = append(inv.Nodes, n)
	}
	if err := problems.join(); err != nil {
		return nil, err
	}
	return inv, nil
}

func (fn nodeV1) node(dir string) (Node, error) {
	n := Node{Name: fn.Name, Role: fn.Role, Address: fn.Address, Args: fn.Args}
	var err, err2 error
	n.Root, err = resolvePath(dir, fn.Root)
	if fn.SSH != nil && fn.Root != "" {
		n.Root = fn.Root // a directory on the remote node: taken as written
	}
	if fn.SSH != nil {
		n.SSH, err2 = fn.SSH.ssh(dir, fn.Address, fn.Name)
	}
	return n, errors.Join(err, err2)
}

func (s *sshV1) ssh(dir, address, name string) (*SSH, error) {
	out := &SSH{
		User:  s.User,
		Host:  firstNonEmpty(s.Host, address, name),
		Port:  DefaultSSHPort,
		Agent: s.Agent,
	}
	if out.User == "" {
		out.User = "root"
	}
	if s.Port != nil {
		out.Port = *s.Port
	}
	out.Sudo = out.User != "root"
	if s.Sudo != nil {
		out.Sudo = *s.Sudo
	}
	var err, err2 error
	out.IdentityFile, err = resolvePath(dir, s.IdentityFile)
	out.KnownHosts, err2 = resolvePath(dir, s.KnownHosts)
	return out, errors.Join(err, err2)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

var unknownField = regexp.MustCompile(`^line (\d+): field (\S+) not found in type \S+\.(\w+)$`)

// fieldsOf lists the fields of each part of the format, for error messages.
var fieldsOf = map[string]string{
	"fileV1": "at the top level (known: apiVersion, kind, nodes)",
	"nodeV1": "in a node (known: name, role, address, ssh, root)",
	"sshV1":  "in ssh (known: user, host, port, identityFile, agent, knownHosts, sudo)",
}

// decodeError rewrites yaml.v3's errors in the terms of the format.
func decodeError(path string, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("%s: %v", path, err)
	}
	var problems errs
	for _, msg := range te.Errors {
		if m := unknownField.FindStringSubmatch(msg); m != nil && fieldsOf[m[3]] != "" {
			msg = fmt.Sprintf("line %s: unknown field %q %s", m[1], m[2], fieldsOf[m[3]])
		}
		problems.addf("%s: %s", path, strings.TrimPrefix(msg, "yaml: "))
	}
	return problems.join()
}
