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
