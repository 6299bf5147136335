package node

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func write(t *testing.T, root, nodePath, content string) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(nodePath))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

const apiManifest = `apiVersion: v1
kind: Pod
metadata:
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - name: kube-apiserver
    image: registry.k8s.io/kube-apiserver:v1.33.13
    command:
    - kube-apiserver
    - --advertise-address=127.0.0.11
    - --client-ca-file=/etc/kubernetes/pki/ca.crt
    - --etcd-servers=https://127.0.0.1:2379
    - --secure-port=6443
    - --service-cluster-ip-range=10.96.0.0/12
`

const etcdManifest = `apiVersion: v1
kind: Pod
metadata:
  name: etcd
spec:
  containers:
  - name: etcd
    image: registry.k8s.io/etcd:3.5.21-0
    command:
    - etcd
    - --name=cp-1
`

func TestDiscoverFromManifests(t *testing.T) {
	root := t.TempDir()
	write(t, root, "/etc/kubernetes/manifests/kube-apiserver.yaml", apiManifest)
	write(t, root, "/etc/kubernetes/manifests/etcd.yaml", etcdManifest)
	write(t, root, "/var/lib/kubelet/config.yaml", "clusterDomain: cluster.local\nstaticPodPath: /etc/kubernetes/manifests\ncontainerRuntimeEndpoint: unix:///run/containerd/containerd.sock\n")
	n, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	c, err := n.Discover("")
	if err != nil {
		t.Fatal(err)
	}
	c.Source = nil
	want := &Cluster{NodeName: "cp-1", AdvertiseAddress: "127.0.0.11", APIServerPort: 6443, ServiceCIDR: "10.96.0.0/12",
		DNSDomain: "cluster.local", EtcdEndpoints: []string{"https://127.0.0.1:2379"}, PKIDir: "/etc/kubernetes/pki",
		KubernetesVersion: "v1.33.13", StaticPodPath: "/etc/kubernetes/manifests", CRISocket: "unix:///run/containerd/containerd.sock"}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestDiscoverConfigWins(t *testing.T) {
	root := t.TempDir()
	write(t, root, "/etc/kubernetes/manifests/kube-apiserver.yaml", apiManifest)
	cfg := filepath.Join(t.TempDir(), "kubeadm.yaml")
	os.WriteFile(cfg, []byte(`apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
nodeRegistration:
  name: cp-9
localAPIEndpoint:
  advertiseAddress: 127.0.0.19
  bindPort: 7443
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
controlPlaneEndpoint: 127.0.0.1:7443
certificatesDir: /etc/kubernetes/pki
networking:
  serviceSubnet: 10.100.0.0/16
  dnsDomain: corp.local
`), 0o600)
	n, _ := New(root)
	c, err := n.Discover(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "cp-9" || c.AdvertiseAddress != "127.0.0.19" || c.APIServerPort != 7443 || c.ServiceCIDR != "10.100.0.0/16" || c.DNSDomain != "corp.local" {
		t.Errorf("config did not win: %+v", c)
	}
	if !strings.Contains(c.Source["nodeName"], "InitConfiguration") {
		t.Errorf("source of nodeName = %q", c.Source["nodeName"])
	}
}

func TestDiscoverUnknownSaysWhatAndHow(t *testing.T) {
	n, _ := New(t.TempDir())
	_, err := n.Discover("")
	var ue *UnknownError
	if !errors.As(err, &ue) {
		t.Fatalf("err = %v, want UnknownError", err)
	}
	if !strings.Contains(err.Error(), "node name") || !strings.Contains(err.Error(), "--config") {
		t.Errorf("message does not say what and how: %v", err)
	}
}

func TestDiscoverBadConfig(t *testing.T) {
	n, _ := New(t.TempDir())
	cfg := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(cfg, []byte("kind: Something\n"), 0o600)
	if _, err := n.Discover(cfg); err == nil || !strings.Contains(err.Error(), cfg) {
		t.Fatalf("err = %v, want an error naming %s", err, cfg)
	}
}

func TestPathNeverEscapesRoot(t *testing.T) {
	n := &Node{Root: "/sandbox"}
	for in, want := range map[string]string{
		"/etc/kubernetes":         "/sandbox/etc/kubernetes",
		"../../etc/passwd":        "/sandbox/etc/passwd",
		"/var/../../../etc/hosts": "/sandbox/etc/hosts",
	} {
		if got := n.Path(in); got != want {
			t.Errorf("Path(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestResolveAbsoluteLinkUnderRoot(t *testing.T) {
	root := t.TempDir()
	write(t, root, "/var/lib/kubelet/pki/kubelet-client-2026.pem", "x")
	os.Symlink("/var/lib/kubelet/pki/kubelet-client-2026.pem", filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem"))
	n, _ := New(root)
	if got := n.Resolve(KubeletCurrent, false); got != "/var/lib/kubelet/pki/kubelet-client-2026.pem" {
		t.Fatalf("Resolve = %q", got)
	}
	if got := n.Resolve(KubeletCurrent, true); got != KubeletCurrent {
		t.Fatalf("Resolve keepLast = %q", got)
	}
}
