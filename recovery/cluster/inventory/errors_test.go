package inventory_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/cluster/inventory"
)

const header = "apiVersion: kubecpr.io/v1alpha1\nkind: Inventory\n"

// cp1 is a valid control-plane node, so that each case has one problem.
const cp1 = "  - {name: cp1, role: control-plane, address: 127.0.0.1, ssh: {host: 127.0.0.1, agent: true}}\n"

// TestLoadErrors: each bad inventory is refused with errors that name the
// file (<FILE>), the node and what to do. <DIR> is the file's directory.
func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		file    string // name of the file, default inventory.yaml
		content string
		setup   func(t *testing.T, dir string)
		want    []string
	}{{
		name:    "empty file",
		content: "# nothing yet\n",
		want:    []string{"<FILE> is empty: list the cluster's nodes in it"},
	}, {
		name:    "not YAML",
		content: "nodes: [cp1\n",
		want: []string{"<FILE> is not valid YAML (yaml: line 1: did not find expected ',' or ']'): " +
			"kubecpr reads its own inventory format (apiVersion: kubecpr.io/v1alpha1) or an Ansible YAML inventory"},
	}, {
		name:    "a list at the top",
		content: "- cp1\n- cp2\n",
		want: []string{"<FILE>: line 1: expected a mapping (apiVersion, kind and nodes, " +
			"or Ansible groups such as all:), found a list"},
	}, {
		name:    "INI without sections",
		file:    "hosts",
		content: "node1 ansible_host=127.0.0.1\n",
		want: []string{"<FILE> is an INI inventory, which kubecpr does not read: convert it with " +
			"`ansible-inventory -i <FILE> --list -y > hosts.yaml` and pass hosts.yaml, " +
			"or write kubecpr's own format (apiVersion: kubecpr.io/v1alpha1, kind: Inventory)"},
	}, {
		name:    "wrong apiVersion",
		content: "apiVersion: kubecpr.io/v2\nkind: Inventory\nnodes:\n" + cp1,
		want: []string{`<FILE>: apiVersion "kubecpr.io/v2", kind "Inventory": ` +
			"this kubecpr reads apiVersion: kubecpr.io/v1alpha1, kind: Inventory"},
	}, {
		name:    "missing kind",
		content: "apiVersion: kubecpr.io/v1alpha1\nnodes:\n" + cp1,
		want: []string{`<FILE>: apiVersion "kubecpr.io/v1alpha1", kind "": ` +
			"this kubecpr reads apiVersion: kubecpr.io/v1alpha1, kind: Inventory"},
	}, {
		name: "unknown fields",
		content: header + "cluster: prod\nnodes:\n" +
			"  - {name: cp1, role: control-plane, adress: 127.0.0.1, ssh: {host: 127.0.0.1, key: id}}\n",
		want: []string{
			`<FILE>: line 3: unknown field "cluster" at the top level (known: apiVersion, kind, nodes)`,
			`<FILE>: line 5: unknown field "adress" in a node (known: name, role, address, ssh, root)`,
			`<FILE>: line 5: unknown field "key" in ssh (known: user, host, port, identityFile, agent, knownHosts, sudo)`,
		},
	}, {
		name:    "wrong type",
		content: header + "nodes:\n  - {name: cp1, role: control-plane, ssh: {port: twenty-two}}\n",
		want:    []string{"<FILE>: line 4: cannot unmarshal !!str `twenty-two` into int"},
	}, {
		name:    "no nodes",
		content: header + "nodes: []\n",
		want:    []string{"<FILE> lists no nodes: list every control-plane node and worker of the cluster"},
	}, {
		name:    "no name",
		content: header + "nodes:\n" + cp1 + "  - {role: worker, ssh: {host: 127.0.0.4, agent: true}}\n",
		want:    []string{`<FILE>: node "": has no name: give the node's Kubernetes name (kubectl get nodes)`},
	}, {
		name:    "name not DNS-1123",
		content: header + "nodes:\n" + cp1 + "  - {name: Worker_1, role: worker, ssh: {host: 127.0.0.4, agent: true}}\n",
		want: []string{`<FILE>: node "Worker_1": name is not a valid Kubernetes node name ` +
			"(lower-case letters, digits, '-' and '.', at most 253 characters): " +
			"give the node's name as kubectl get nodes shows it"},
	}, {
		name:    "name too long",
		content: header + "nodes:\n" + cp1 + "  - {name: " + strings.Repeat("a.", 127) + "a, role: worker, ssh: {host: 127.0.0.4, agent: true}}\n",
		want: []string{`<FILE>: node "` + strings.Repeat("a.", 127) + `a": name is not a valid Kubernetes node name ` +
			"(lower-case letters, digits, '-' and '.', at most 253 characters): " +
			"give the node's name as kubectl get nodes shows it"},
	}, {
		name:    "no role",
		content: header + "nodes:\n" + cp1 + "  - {name: w1, ssh: {host: 127.0.0.4, agent: true}}\n",
		want:    []string{`<FILE>: node "w1": has no role: set role: control-plane or role: worker`},
	}, {
		name:    "bad role",
		content: header + "nodes:\n" + cp1 + "  - {name: w1, role: master, ssh: {host: 127.0.0.4, agent: true}}\n",
		want:    []string{`<FILE>: node "w1": role "master" is not control-plane or worker`},
	}, {
		name:    "bad address",
		content: header + "nodes:\n" + cp1 + "  - {name: w1, role: worker, address: 'https://127.0.0.4:6443', ssh: {agent: true}}\n",
		want: []string{
			`<FILE>: node "w1": address "https://127.0.0.4:6443" is not an IP or a host name: ` +
				"give the address the node has in the cluster, without scheme or port",
		},
	}, {
		name:    "ssh with a relative remote root",
		content: header + "nodes:\n" + cp1 + "  - {name: w1, role: worker, ssh: {host: 127.0.0.4, agent: true}, root: w1}\n",
		setup:   mkdir("w1"),
		want:    []string{`<FILE>: node "w1": root w1 with ssh is a directory on the remote node and must be absolute`},
	}, {
		name:    "neither ssh nor root",
		content: header + "nodes:\n" + cp1 + "  - {name: w1, role: worker, address: 127.0.0.4}\n",
		want: []string{`<FILE>: node "w1": has neither ssh nor root: ` +
			"say how to reach the node (ssh: {host, user, ...}) or where a copy of its tree is (root: DIR)"},
	}, {
		name:    "empty ssh",
		content: header + "nodes:\n" + cp1 + "  - {name: w1, role: worker, ssh: }\n",
		want: []string{`<FILE>: node "w1": has neither ssh nor root: ` +
			"say how to reach the node (ssh: {host, user, ...}) or where a copy of its tree is (root: DIR)"},
	}, {
		name:    "no SSH key",
		content: header + "nodes:\n" + cp1 + "  - {name: w1, role: worker, ssh: {host: 127.0.0.4, knownHosts: known_hosts}}\n",
		want: []string{`<FILE>: node "w1": ssh has neither identityFile nor agent: ` +
			"set ssh.identityFile to the private key, or agent: true to use the keys of $SSH_AUTH_SOCK"},
	}, {
		name: "ssh port out of range",
		content: header + "nodes:\n" + cp1 +
			"  - {name: w1, role: worker, ssh: {host: 127.0.0.4, port: 0, agent: true}}\n" +
			"  - {name: w2, role: worker, ssh: {host: 127.0.0.5, port: 65536, agent: true}}\n",
		want: []string{
			`<FILE>: node "w1": ssh port 0 is not in 1..65535: set ssh.port (ansible_port in an Ansible inventory) to the node's SSH port, or leave it out for 22`,
			`<FILE>: node "w2": ssh port 65536 is not in 1..65535: set ssh.port (ansible_port in an Ansible inventory) to the node's SSH port, or leave it out for 22`,
		},
	}, {
		name:    "root does not exist",
		content: header + "nodes:\n" + cp1 + "  - {name: w1, role: worker, root: trees/w1}\n",
		want: []string{`<FILE>: node "w1": root <DIR>/trees/w1 does not exist: ` +
			"point root at a copy of the node's filesystem (the directory that holds etc/kubernetes)"},
	}, {
		name:    "root is a file",
		content: header + "nodes:\n" + cp1 + "  - {name: w1, role: worker, root: w1.tar}\n",
		setup: func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "w1.tar"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		},
		want: []string{`<FILE>: node "w1": root <DIR>/w1.tar is not a directory: ` +
			"point root at a copy of the node's filesystem (the directory that holds etc/kubernetes)"},
	}, {
		name: "duplicate names and addresses",
		content: header + "nodes:\n" + cp1 +
			"  - {name: cp1, role: control-plane, address: 127.0.0.2, ssh: {agent: true}}\n" +
			"  - {name: w1, role: worker, address: 127.0.0.1, ssh: {agent: true}}\n" +
			"  - {name: w2, role: worker, address: '::ffff:127.0.0.1', ssh: {agent: true}}\n",
		want: []string{
			`<FILE>: node "cp1" is listed more than once: list each node once`,
			`<FILE>: nodes "cp1" and "w1" have the same address 127.0.0.1: give each node its own address`,
			`<FILE>: nodes "cp1" and "w2" have the same address ::ffff:127.0.0.1: give each node its own address`,
		},
	}, {
		name:    "no control plane",
		content: header + "nodes:\n  - {name: w1, role: worker, ssh: {host: 127.0.0.4, agent: true}}\n",
		want: []string{"<FILE> has no control-plane node: give every control-plane node role: control-plane " +
			"(in a kubespray inventory, list them in the kube_control_plane group)"},
	}, {
		name: "every problem at once",
		content: header + "nodes:\n" +
			"  - {name: W1, role: worker, ssh: {port: -1, agent: true}, root: w1}\n" +
			"  - {name: w2, address: 127.0.0.5, ssh: {host: 127.0.0.5, agent: true}}\n" +
			"  - {name: w3, role: worker, address: 127.0.0.5, root: nowhere}\n",
		setup: mkdir("w1"),
		want: []string{
			`<FILE>: node "W1": name is not a valid Kubernetes node name ` +
				"(lower-case letters, digits, '-' and '.', at most 253 characters): " +
				"give the node's name as kubectl get nodes shows it",
			`<FILE>: node "W1": ssh port -1 is not in 1..65535: set ssh.port ` +
				"(ansible_port in an Ansible inventory) to the node's SSH port, or leave it out for 22",
			`<FILE>: node "W1": root w1 with ssh is a directory on the remote node and must be absolute`,
			`<FILE>: node "w2": has no role: set role: control-plane or role: worker`,
			`<FILE>: node "w3": root <DIR>/nowhere does not exist: ` +
				"point root at a copy of the node's filesystem (the directory that holds etc/kubernetes)",
			`<FILE>: nodes "w2" and "w3" have the same address 127.0.0.5: give each node its own address`,
			"<FILE> has no control-plane node: give every control-plane node role: control-plane " +
				"(in a kubespray inventory, list them in the kube_control_plane group)",
		},
	}, {
		name: "kubespray: external etcd",
		content: "all:\n  hosts:\n    node1: {ip: 127.0.0.1}\n    etcd1: {ip: 127.0.0.2}\n    etcd2: {ip: 127.0.0.3}\n" +
			"  children:\n    kube_control_plane: {hosts: {node1: }}\n    etcd: {hosts: {etcd1: , etcd2: }}\n",
		want: []string{
			"<FILE>: host etcd1 is in the etcd group but not in kube_control_plane: that is an external etcd cluster, " +
				"and kubecpr supports stacked etcd only (an etcd member on every control-plane node, as kubeadm sets it up)",
			"<FILE>: host etcd2 is in the etcd group but not in kube_control_plane: that is an external etcd cluster, " +
				"and kubecpr supports stacked etcd only (an etcd member on every control-plane node, as kubeadm sets it up)",
		},
	}, {
		name:    "kubespray: no control plane",
		content: "all:\n  children:\n    kube_node:\n      hosts:\n        node4: {ansible_host: 127.0.0.4}\n",
		want: []string{"<FILE> has no control-plane node: give every control-plane node role: control-plane " +
			"(in a kubespray inventory, list them in the kube_control_plane group)"},
	}, {
		name:    "kubespray: no Kubernetes hosts",
		content: "all:\n  hosts:\n    bastion: {ansible_host: 127.0.0.5}\n",
		want:    []string{"<FILE> lists no nodes: list every control-plane node and worker of the cluster"},
	}, {
		name: "kubespray: group cycle",
		content: "all:\n  children:\n    kube_control_plane:\n      hosts: {node1: }\n      children:\n" +
			"        zone_a:\n          children:\n            kube_control_plane:\n",
		want: []string{"<FILE>: group kube_control_plane is its own descendant " +
			"(kube_control_plane → zone_a → kube_control_plane): remove one of these children"},
	}, {
		name:    "kubespray: host range",
		content: "all:\n  children:\n    kube_control_plane:\n      hosts:\n        node[1:3]:\n",
		want: []string{"<FILE>: line 5: host pattern node[1:3] is not expanded by kubecpr: run " +
			"`ansible-inventory -i <FILE> --list -y > hosts.yaml`, which lists every host, and pass hosts.yaml"},
	}, {
		name:    "kubespray: group is a list",
		content: "all:\n  children:\n    kube_control_plane:\n      - node1\n",
		want: []string{"<FILE>: line 4: group kube_control_plane is a list; " +
			"an Ansible group is a mapping with hosts, children or vars"},
	}, {
		name:    "kubespray: hosts is a list",
		content: "all:\n  children:\n    kube_control_plane:\n      hosts: [node1]\n",
		want:    []string{"<FILE>: line 4: hosts of group kube_control_plane is a list; expected a mapping"},
	}, {
		name:    "kubespray: host misindented",
		content: "all:\n  children:\n    kube_control_plane:\n      hosts:\n      node1:\n",
		want: []string{`<FILE>: line 5: group kube_control_plane has key "node1"; an Ansible group holds only ` +
			"hosts, children and vars (is a host or group indented wrongly?)"},
	}, {
		name: "kubespray: bad vars",
		content: "all:\n  vars:\n    ansible_user: '{{ lookup(\"env\", \"USER\") }}'\n" +
			"  children:\n    kube_control_plane:\n      hosts:\n" +
			"        node1: {ansible_port: ssh, ip: 127.0.0.1}\n        node2: {ansible_host: [127.0.0.2]}\n",
		want: []string{
			`<FILE>: line 3: host node1: ansible_user is the Jinja template "{{ lookup(\"env\", \"USER\") }}", ` +
				"which kubecpr does not evaluate: write the value itself",
			`<FILE>: line 7: host node1: ansible_port "ssh" is not a number: give the SSH port, such as 22`,
			"<FILE>: line 8: host node2: ansible_host is a list; expected a single value",
			`<FILE>: line 3: host node2: ansible_user is the Jinja template "{{ lookup(\"env\", \"USER\") }}", ` +
				"which kubecpr does not evaluate: write the value itself",
		},
	}, {
		name:    "kubespray: port out of range",
		content: "all:\n  children:\n    kube_control_plane:\n      hosts:\n        node1: {ansible_port: 70000}\n",
		want: []string{`<FILE>: node "node1": ssh port 70000 is not in 1..65535: ` +
			"set ssh.port (ansible_port in an Ansible inventory) to the node's SSH port, or leave it out for 22"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			file := tc.file
			if file == "" {
				file = "inventory.yaml"
			}
			path := write(t, file, tc.content)
			dir := filepath.Dir(path)
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			inv, err := inventory.Load(path)
			if inv != nil {
				t.Errorf("Load returned an inventory with its error: %+v", inv)
			}
			r := strings.NewReplacer("<FILE>", path, "<DIR>", dir)
			var want []string
			for _, w := range tc.want {
				want = append(want, r.Replace(w))
			}
			if diff := cmp.Diff(want, lines(err)); diff != "" {
				t.Errorf("Load error (-want +got):\n%s", diff)
			}
		})
	}
}

func mkdir(name string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestValidateBuiltInCode: an inventory built in code (no Source) is named
// "inventory" in errors; ssh fields the loaders default are checked too.
func TestValidateBuiltInCode(t *testing.T) {
	inv := &inventory.Inventory{Nodes: []inventory.Node{
		{Name: "cp1", Role: inventory.ControlPlane, SSH: &inventory.SSH{Port: 22}},
	}}
	want := []string{
		`inventory: node "cp1": ssh has no host: set ssh.host (or the node's address)`,
		`inventory: node "cp1": ssh has no user: set ssh.user`,
		`inventory: node "cp1": ssh has neither identityFile nor agent: set ssh.identityFile to the private key, ` +
			"or agent: true to use the keys of $SSH_AUTH_SOCK",
	}
	if diff := cmp.Diff(want, lines(inv.Validate())); diff != "" {
		t.Errorf("Validate (-want +got):\n%s", diff)
	}
}
