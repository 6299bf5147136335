package health

import "testing"

// kubeadm's etcd listens for clients on loopback and the node address,
// for peers on the node address only: the served-certificate check must
// dial the address etcd listens on (found on a kubeadm-built cluster:
// "TLS to 127.0.0.1:2380: connection refused" for a healthy etcd).
func TestLocalAddrIsWhereTheListenerIs(t *testing.T) {
	for _, tc := range []struct{ urls, fallback, want string }{
		{"https://127.0.0.1:2379,https://10.250.0.11:2379", "2379", "127.0.0.1:2379"},
		{"https://10.250.0.11:2379,https://127.0.0.1:2379", "2379", "127.0.0.1:2379"},
		{"https://10.250.0.11:2380", "2380", "10.250.0.11:2380"},
		{"https://[fd00::11]:2380", "2380", "[fd00::11]:2380"},
		{"https://0.0.0.0:2380", "2380", "127.0.0.1:2380"},
		{"", "2380", "127.0.0.1:2380"},
	} {
		if got := localAddr(tc.urls, tc.fallback); got != tc.want {
			t.Errorf("localAddr(%q) = %s, want %s", tc.urls, got, tc.want)
		}
	}
}

// kubeadm's serving certificate for kube-apiserver names 127.0.0.1 only
// when that is the advertise address; the health check goes where
// kubeadm's own probes go (found on a kubeadm-built cluster: "certificate
// is valid for 10.96.0.1, 10.250.0.11, not 127.0.0.1").
func TestAPIServerHostAsKubeadmProbes(t *testing.T) {
	for _, tc := range []struct {
		flags map[string]string
		want  string
	}{
		{map[string]string{"advertise-address": "10.250.0.11"}, "10.250.0.11"},
		{map[string]string{"advertise-address": "10.250.0.11", "bind-address": "0.0.0.0"}, "10.250.0.11"},
		{map[string]string{"advertise-address": "10.250.0.11", "bind-address": "10.250.0.11"}, "10.250.0.11"},
		{map[string]string{"advertise-address": "127.0.0.1"}, "127.0.0.1"},
		{map[string]string{"bind-address": "127.0.0.2"}, "127.0.0.2"},
		{map[string]string{}, "127.0.0.1"},
	} {
		if got := apiserverHost(tc.flags); got != tc.want {
			t.Errorf("apiserverHost(%v) = %s, want %s", tc.flags, got, tc.want)
		}
	}
}
