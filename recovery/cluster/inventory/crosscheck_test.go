package inventory_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/cluster/inventory"
)

// members is etcd's --initial-cluster of the rehearsal cluster, as kubeadm
// writes it on cp3 (the last member to join).
const members = "cp1=https://127.0.0.1:2380,cp2=https://127.0.0.2:2380,cp3=https://127.0.0.3:2380"

func initialCluster(t *testing.T, s string) map[string]string {
	t.Helper()
	m, err := inventory.ParseInitialCluster(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCrossCheck(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(inv *inventory.Inventory)
		facts inventory.ClusterFacts
		want  []string // <FILE> is the inventory, <MANIFEST> the default etcd manifest
	}{{
		name:  "agrees",
		facts: inventory.ClusterFacts{EtcdMembers: initialCluster(t, members), NodeNames: []string{"cp1", "w2"}},
	}, {
		name:  "nothing known",
		facts: inventory.ClusterFacts{},
	}, {
		name:  "host name addresses are not resolved",
		edit:  func(inv *inventory.Inventory) { inv.Nodes[0].Address = "cp1.cluster.example" },
		facts: inventory.ClusterFacts{EtcdMembers: initialCluster(t, members)},
	}, {
		name:  "peer URL by host name is not compared",
		facts: inventory.ClusterFacts{EtcdMembers: initialCluster(t, strings.Replace(members, "127.0.0.1", "cp1", 1))},
	}, {
		name:  "member with several peer URLs",
		facts: inventory.ClusterFacts{EtcdMembers: initialCluster(t, "cp1=https://127.0.0.5:2380,"+members)},
	}, {
		name:  "member not in the inventory",
		facts: inventory.ClusterFacts{EtcdMembers: initialCluster(t, members+",cp4=https://127.0.0.4:2380")},
		want: []string{`<FILE>: etcd's --initial-cluster in <MANIFEST> has member "cp4" (https://127.0.0.4:2380), ` +
			"which the inventory does not list: add node cp4 with role control-plane, " +
			"or check that the inventory is for this cluster"},
	}, {
		name: "control plane not a member",
		facts: inventory.ClusterFacts{
			EtcdMembers:  initialCluster(t, "cp1=https://127.0.0.1:2380,cp2=https://127.0.0.2:2380"),
			EtcdManifest: "/srv/copies/cp1/etc/kubernetes/manifests/etcd.yaml",
		},
		want: []string{`<FILE>: inventory names control-plane node "cp3" but etcd's --initial-cluster in ` +
			"/srv/copies/cp1/etc/kubernetes/manifests/etcd.yaml has members cp1,cp2: fix the inventory " +
			"(kubecpr supports stacked etcd: one member on each control-plane node, named after it), " +
			"or read the manifest of a node of this cluster"},
	}, {
		name:  "member is a worker",
		edit:  func(inv *inventory.Inventory) { inv.Nodes[2].Role = inventory.Worker },
		facts: inventory.ClusterFacts{EtcdMembers: initialCluster(t, members)},
		want: []string{`<FILE>: node "cp3" is a worker in the inventory, but etcd's --initial-cluster in <MANIFEST> ` +
			"has it as a member: make it role control-plane (kubecpr supports stacked etcd only)"},
	}, {
		name: "addresses differ",
		edit: func(inv *inventory.Inventory) {
			inv.Nodes[1].Address, inv.Nodes[2].Address = inv.Nodes[2].Address, inv.Nodes[1].Address
		},
		facts: inventory.ClusterFacts{EtcdMembers: initialCluster(t, members)},
		want: []string{
			`<FILE>: node "cp2" has address 127.0.0.3, but etcd's --initial-cluster in <MANIFEST> gives its peer URL ` +
				"as https://127.0.0.2:2380: fix the node's address (the IP its certificates and etcd use)",
			`<FILE>: node "cp3" has address 127.0.0.2, but etcd's --initial-cluster in <MANIFEST> gives its peer URL ` +
				"as https://127.0.0.3:2380: fix the node's address (the IP its certificates and etcd use)",
		},
	}, {
		name:  "node names from certificates",
		facts: inventory.ClusterFacts{NodeNames: []string{"cp1", "master-1"}},
		want: []string{`<FILE>: certificates on this node name node "master-1", which the inventory does not list: ` +
			"add it, or fix the node names in the inventory (they must be the Kubernetes node names)"},
	}, {
		name:  "renamed inventory: every mismatch at once",
		edit:  func(inv *inventory.Inventory) { inv.Nodes[0].Name = "master-1" },
		facts: inventory.ClusterFacts{EtcdMembers: initialCluster(t, members), NodeNames: []string{"cp1"}},
		want: []string{
			`<FILE>: etcd's --initial-cluster in <MANIFEST> has member "cp1" (https://127.0.0.1:2380), ` +
				"which the inventory does not list: add node cp1 with role control-plane, " +
				"or check that the inventory is for this cluster",
			`<FILE>: inventory names control-plane node "master-1" but etcd's --initial-cluster in <MANIFEST> ` +
				"has members cp1,cp2,cp3: fix the inventory (kubecpr supports stacked etcd: one member on each " +
				"control-plane node, named after it), or read the manifest of a node of this cluster",
			`<FILE>: certificates on this node name node "cp1", which the inventory does not list: ` +
				"add it, or fix the node names in the inventory (they must be the Kubernetes node names)",
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			path := sample(t, "rehearsal.yaml")
			inv := load(t, path)
			if tc.edit != nil {
				tc.edit(inv)
			}
			r := strings.NewReplacer("<FILE>", path, "<MANIFEST>", inventory.DefaultEtcdManifest)
			var want []string
			for _, w := range tc.want {
				want = append(want, r.Replace(w))
			}
			if diff := cmp.Diff(want, lines(inventory.CrossCheck(inv, tc.facts))); diff != "" {
				t.Errorf("CrossCheck (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCrossCheckKubespray(t *testing.T) {
	inv := load(t, sample(t, "kubespray.yaml"))
	facts := inventory.ClusterFacts{EtcdMembers: initialCluster(t, strings.NewReplacer("cp", "node").Replace(members))}
	if err := inventory.CrossCheck(inv, facts); err != nil {
		t.Errorf("CrossCheck: %v", err)
	}
}

func TestCrossCheckNil(t *testing.T) {
	want := []string{"no inventory to cross-check: pass --inventory FILE"}
	if diff := cmp.Diff(want, lines(inventory.CrossCheck(nil, inventory.ClusterFacts{}))); diff != "" {
		t.Errorf("CrossCheck(nil) (-want +got):\n%s", diff)
	}
}

func TestParseInitialCluster(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    map[string]string
		wantErr string
	}{{
		in: members,
		want: map[string]string{
			"cp1": "https://127.0.0.1:2380", "cp2": "https://127.0.0.2:2380", "cp3": "https://127.0.0.3:2380",
		},
	}, {
		in:   "--initial-cluster=cp1=https://127.0.0.1:2380",
		want: map[string]string{"cp1": "https://127.0.0.1:2380"},
	}, {
		in:   " cp1=http://127.0.0.1:2380 , cp1=https://127.0.0.2:2380 ",
		want: map[string]string{"cp1": "http://127.0.0.1:2380,https://127.0.0.2:2380"},
	}, {
		in:      "",
		wantErr: "etcd --initial-cluster is empty: expected NAME=PEER-URL,... as kubeadm writes it",
	}, {
		in:      "cp1=https://127.0.0.1:2380,cp2",
		wantErr: `etcd --initial-cluster "cp1=https://127.0.0.1:2380,cp2": entry "cp2" is not NAME=PEER-URL`,
	}, {
		in:      "=https://127.0.0.1:2380",
		wantErr: `etcd --initial-cluster "=https://127.0.0.1:2380": entry "=https://127.0.0.1:2380" is not NAME=PEER-URL`,
	}, {
		in:      "cp1=127.0.0.1:2380",
		wantErr: `etcd --initial-cluster "cp1=127.0.0.1:2380": member cp1: peer URL "127.0.0.1:2380" is not an http(s)://HOST:PORT URL`,
	}, {
		in:      "cp1=https://:2380",
		wantErr: `etcd --initial-cluster "cp1=https://:2380": member cp1: peer URL "https://:2380" is not an http(s)://HOST:PORT URL`,
	}} {
		got, err := inventory.ParseInitialCluster(tc.in)
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ParseInitialCluster(%q) (-want +got):\n%s", tc.in, diff)
		}
		if gotErr != tc.wantErr {
			t.Errorf("ParseInitialCluster(%q) error = %q, want %q", tc.in, gotErr, tc.wantErr)
		}
	}
}
