package inventory_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/cluster/inventory"
)

// testdata is the module's testdata/inventory, seen from this package.
const testdata = "../../../testdata/inventory"

func sample(t testing.TB, name string) string {
	t.Helper()
	return filepath.Join(testdata, name)
}

func abs(t testing.TB, elem ...string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join(elem...))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// lines splits an error (errors.Join puts one problem on each line).
func lines(err error) []string {
	if err == nil {
		return nil
	}
	return strings.Split(err.Error(), "\n")
}

// write puts an inventory in a fresh directory and returns its path.
func write(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func load(t *testing.T, path string) *inventory.Inventory {
	t.Helper()
	inv, err := inventory.Load(path)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	return inv
}

func TestLoadKubecpr(t *testing.T) {
	path := sample(t, "kubecpr.yaml")
	key, knownHosts := abs(t, testdata, "keys/id_ed25519"), abs(t, testdata, "known_hosts")
	want := &inventory.Inventory{
		Source: path,
		Nodes: []inventory.Node{
			{Name: "cp1", Role: inventory.ControlPlane, Address: "127.0.0.1", SSH: &inventory.SSH{
				User: "root", Host: "127.0.0.1", Port: 2201, IdentityFile: key, KnownHosts: knownHosts}},
			{Name: "cp2", Role: inventory.ControlPlane, Address: "127.0.0.2", SSH: &inventory.SSH{
				User: "admin", Host: "127.0.0.2", Port: 2202, Agent: true, KnownHosts: knownHosts, Sudo: true}},
			{Name: "cp3", Role: inventory.ControlPlane, Address: "127.0.0.3", SSH: &inventory.SSH{
				User: "kubecpr", Host: "127.0.0.3", Port: 2203, Agent: true, KnownHosts: knownHosts}},
			{Name: "w1", Role: inventory.Worker, Address: "127.0.0.4", SSH: &inventory.SSH{
				User: "root", Host: "127.0.0.4", Port: 22, IdentityFile: key, KnownHosts: knownHosts}},
			{Name: "w2", Role: inventory.Worker, Address: "127.0.0.5", SSH: &inventory.SSH{
				User: "root", Host: "127.0.0.5", Port: 22, IdentityFile: key, KnownHosts: knownHosts, Sudo: true}},
		},
	}
	if diff := cmp.Diff(want, load(t, path)); diff != "" {
		t.Errorf("Load(%s) (-want +got):\n%s", path, diff)
	}
}

func TestLoadRehearsal(t *testing.T) {
	path := sample(t, "rehearsal.yaml")
	node := func(name string, role inventory.Role, addr string) inventory.Node {
		return inventory.Node{Name: name, Role: role, Address: addr, Root: abs(t, testdata, "nodes", name)}
	}
	want := &inventory.Inventory{
		Source: path,
		Nodes: []inventory.Node{
			node("cp1", inventory.ControlPlane, "127.0.0.1"),
			node("cp2", inventory.ControlPlane, "127.0.0.2"),
			node("cp3", inventory.ControlPlane, "127.0.0.3"),
			node("w1", inventory.Worker, "127.0.0.4"),
			node("w2", inventory.Worker, "127.0.0.5"),
		},
	}
	if diff := cmp.Diff(want, load(t, path)); diff != "" {
		t.Errorf("Load(%s) (-want +got):\n%s", path, diff)
	}
}

func TestLoadKubespray(t *testing.T) {
	path := sample(t, "kubespray.yaml")
	node := func(name string, role inventory.Role, addr string) inventory.Node {
		return inventory.Node{Name: name, Role: role, Address: addr,
			SSH: &inventory.SSH{User: "root", Host: addr, Port: 22, Agent: true}}
	}
	want := &inventory.Inventory{
		Source: path,
		Nodes: []inventory.Node{
			node("node1", inventory.ControlPlane, "127.0.0.1"),
			node("node2", inventory.ControlPlane, "127.0.0.2"),
			node("node3", inventory.ControlPlane, "127.0.0.3"),
			node("node4", inventory.Worker, "127.0.0.4"),
			node("node5", inventory.Worker, "127.0.0.5"),
		},
	}
	if diff := cmp.Diff(want, load(t, path)); diff != "" {
		t.Errorf("Load(%s) (-want +got):\n%s", path, diff)
	}
}

// TestLoadKubesprayNested: older group names, children of children, group
// vars overridden by deeper groups and by hosts, anchors, and a host whose
// vars come from several places.
func TestLoadKubesprayNested(t *testing.T) {
	path := sample(t, "kubespray-nested.yaml")
	const key = "/home/ops/.ssh/cluster"
	want := &inventory.Inventory{
		Source: path,
		Nodes: []inventory.Node{
			{Name: "master-a", Role: inventory.ControlPlane, Address: "127.0.0.1", SSH: &inventory.SSH{
				User: "ubuntu", Host: "127.0.0.1", Port: 2222, IdentityFile: key, Sudo: true}},
			{Name: "master-b", Role: inventory.ControlPlane, Address: "127.0.0.2", SSH: &inventory.SSH{
				User: "ubuntu", Host: "master-b", Port: 2222, IdentityFile: key, Sudo: true}},
			{Name: "master-c", Role: inventory.ControlPlane, Address: "127.0.0.3", SSH: &inventory.SSH{
				User: "ubuntu", Host: "127.0.0.3", Port: 2223, IdentityFile: key, Sudo: true}},
			{Name: "worker-1", Role: inventory.Worker, Address: "127.0.0.4", SSH: &inventory.SSH{
				User: "root", Host: "127.0.0.4", Port: 22, IdentityFile: key, Sudo: true}},
		},
	}
	if diff := cmp.Diff(want, load(t, path)); diff != "" {
		t.Errorf("Load(%s) (-want +got):\n%s", path, diff)
	}
}

// TestLoadFormatsAgree: the same cluster in both formats gives the same
// names, roles and addresses.
func TestLoadFormatsAgree(t *testing.T) {
	summary := func(inv *inventory.Inventory) []string {
		var out []string
		for _, n := range inv.Nodes {
			out = append(out, string(n.Role)+" "+n.Address)
		}
		return out
	}
	a, b := load(t, sample(t, "kubecpr.yaml")), load(t, sample(t, "kubespray.yaml"))
	if diff := cmp.Diff(summary(a), summary(b)); diff != "" {
		t.Errorf("kubecpr.yaml vs kubespray.yaml (-kubecpr +kubespray):\n%s", diff)
	}
}

func TestHelpers(t *testing.T) {
	inv := load(t, sample(t, "rehearsal.yaml"))
	names := func(nodes []inventory.Node) []string {
		var out []string
		for _, n := range nodes {
			out = append(out, n.Name)
		}
		return out
	}
	if diff := cmp.Diff([]string{"cp1", "cp2", "cp3"}, names(inv.ControlPlanes())); diff != "" {
		t.Errorf("ControlPlanes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"w1", "w2"}, names(inv.Workers())); diff != "" {
		t.Errorf("Workers (-want +got):\n%s", diff)
	}
	if n, ok := inv.Find("w2"); !ok || n.Address != "127.0.0.5" {
		t.Errorf("Find(w2) = %+v, %v; want the node at 127.0.0.5", n, ok)
	}
	if n, ok := inv.Find("cp4"); ok {
		t.Errorf("Find(cp4) = %+v, true; want not found", n)
	}
}

func TestLoadINI(t *testing.T) {
	path := sample(t, "hosts.ini")
	_, err := inventory.Load(path)
	want := []string{path + " is an INI inventory, which kubecpr does not read: convert it with " +
		"`ansible-inventory -i " + path + " --list -y > hosts.yaml` and pass hosts.yaml, " +
		"or write kubecpr's own format (apiVersion: kubecpr.io/v1alpha1, kind: Inventory)"}
	if diff := cmp.Diff(want, lines(err)); diff != "" {
		t.Errorf("Load(%s) error (-want +got):\n%s", path, diff)
	}
}

func TestLoadDirectory(t *testing.T) {
	_, err := inventory.Load(testdata)
	want := []string{"inventory " + testdata + " is a directory: pass the inventory file itself " +
		"(for kubespray, inventory/NAME/hosts.yaml)"}
	if diff := cmp.Diff(want, lines(err)); diff != "" {
		t.Errorf("Load(%s) error (-want +got):\n%s", testdata, diff)
	}
}

func TestLoadMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hosts.yaml")
	_, err := inventory.Load(path)
	want := []string{"cannot read the inventory: stat " + path + ": no such file or directory"}
	if diff := cmp.Diff(want, lines(err)); diff != "" {
		t.Errorf("Load(%s) error (-want +got):\n%s", path, diff)
	}
}
