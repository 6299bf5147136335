package cluster

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	cinv "github.com/kubecpr/kubecpr/recovery/cluster/inventory"
	"github.com/kubecpr/kubecpr/recovery/etcddata"
)

// kubeadm init + join --control-plane leave each etcd manifest naming the
// members that existed when that member started: the init node names
// itself alone.
func kubeadmFacts(withData bool) map[string]*Facts {
	f := map[string]*Facts{
		"cp1": {EtcdInitialCluster: "cp1=https://127.0.0.1:2380", EtcdDB: "/var/lib/etcd/member/snap/db"},
		"cp2": {EtcdInitialCluster: "cp1=https://127.0.0.1:2380,cp2=https://127.0.0.2:2380", EtcdDB: "/var/lib/etcd/member/snap/db"},
		"cp3": {EtcdInitialCluster: "cp1=https://127.0.0.1:2380,cp2=https://127.0.0.2:2380,cp3=https://127.0.0.3:2380", EtcdDB: "/var/lib/etcd/member/snap/db"},
	}
	if withData {
		all := []etcddata.Member{
			{ID: "a1", Name: "cp1", PeerURLs: []string{"https://127.0.0.1:2380"}},
			{ID: "b2", Name: "cp2", PeerURLs: []string{"https://127.0.0.2:2380"}},
			{ID: "c3", Name: "cp3", PeerURLs: []string{"https://127.0.0.3:2380"}},
		}
		// cp1's data is the most recent; cp3's is older and still thinks
		// cp2 is not there (it cannot be: but the ranking must pick cp1).
		f["cp1"].EtcdMembership = &etcddata.Membership{Members: all, ConsistentIndex: 900}
		f["cp3"].EtcdMembership = &etcddata.Membership{Members: []etcddata.Member{all[0], all[2]}, ConsistentIndex: 100}
	}
	return f
}

func TestEtcdMembershipKubeadmJoinLayout(t *testing.T) {
	inv, err := cinv.Load("../../testdata/inventory/rehearsal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"cp1": "https://127.0.0.1:2380", "cp2": "https://127.0.0.2:2380", "cp3": "https://127.0.0.3:2380"}
	for _, tc := range []struct {
		name         string
		data         bool
		wantSource   string
		wantFallback bool
	}{
		{"etcd's own membership", true, "cp1: /var/lib/etcd/member/snap/db", false},
		{"no member data: the union of --initial-cluster", false, "the union of --initial-cluster on cp1, cp2, cp3", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Every order of the control planes, the init node first too.
			for _, order := range [][]string{{"cp1", "cp2", "cp3"}, {"cp2", "cp1", "cp3"}, {"cp3", "cp2", "cp1"}} {
				members, source, fallback, err := EtcdMembership(order, kubeadmFacts(tc.data))
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(want, members); diff != "" {
					t.Errorf("%v: members (-want +got):\n%s", order, diff)
				}
				if tc.data && source != tc.wantSource || fallback != tc.wantFallback {
					t.Errorf("%v: source %q fallback %v, want %q %v", order, source, fallback, tc.wantSource, tc.wantFallback)
				}
				known := cinv.ClusterFacts{EtcdMembers: members}
				if !fallback {
					known.EtcdSource = source
				}
				if err := cinv.CrossCheck(inv, known); err != nil {
					t.Errorf("%v: a right inventory refused: %v", order, err)
				}
			}
		})
	}
	// The manifest of the init node alone (what main used) refuses it.
	only, _ := cinv.ParseInitialCluster(kubeadmFacts(false)["cp1"].EtcdInitialCluster)
	if err := cinv.CrossCheck(inv, cinv.ClusterFacts{EtcdMembers: only}); err == nil {
		t.Fatal("the init node's --initial-cluster alone accepted cp2 and cp3: the test proves nothing")
	}
	// A wrong inventory is still refused, naming the membership read.
	members, source, _, _ := EtcdMembership([]string{"cp1", "cp2", "cp3"}, kubeadmFacts(true))
	delete(members, "cp3")
	err = cinv.CrossCheck(inv, cinv.ClusterFacts{EtcdMembers: members, EtcdSource: source})
	if err == nil || !strings.Contains(err.Error(), `control-plane node "cp3"`) || !strings.Contains(err.Error(), "etcd's own membership (cp1: /var/lib/etcd/member/snap/db)") {
		t.Errorf("cp3 not a member: %v; want it refused naming etcd's own membership and where it was read", err)
	}
}
