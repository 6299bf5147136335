package etcdsnap

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// kubeadmEtcd is the shape of the etcd manifest kubeadm v1.33 writes (the
// real one is read in the real-etcd test).
const kubeadmEtcd = `apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls=https://10.0.0.5:2379
    - --cert-file=/etc/kubernetes/pki/etcd/server.crt
    - --client-cert-auth=true
    - --data-dir=/var/lib/etcd
    - --listen-client-urls=https://127.0.0.1:2379,https://10.0.0.5:2379
    - --listen-metrics-urls=http://127.0.0.1:2381
    - --trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
    image: registry.k8s.io/etcd:3.5.21-0
    name: etcd
`

func TestEndpointsFromManifest(t *testing.T) {
	got, err := EndpointsFromManifest([]byte(kubeadmEtcd))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"https://127.0.0.1:2379"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("kubeadm manifest: got %v, want %v", got, want)
	}

	// args instead of command, "--flag value" form, another container first
	argsForm := `spec:
  containers:
  - name: sidecar
    command: [sleep, "3600"]
  - name: etcd
    command: [etcd]
    args: ["--listen-client-urls", "https://0.0.0.0:2379,https://LOCALHOST:2378,https://[::1]:2377,http://127.0.0.1:2376", "--advertise-client-urls=https://127.0.0.2:2379"]
`
	got, err = EndpointsFromManifest([]byte(argsForm))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"https://[::1]:2377", "https://127.0.0.2:2379", "https://127.0.0.1:2379", "https://127.0.0.1:2378"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v (IP loopbacks first, wildcard and localhost mapped to 127.0.0.1, http dropped)", got, want)
	}
}

func TestEndpointsNoLoopback(t *testing.T) {
	for name, flags := range map[string]map[string]string{
		"none":      {},
		"external":  {"listen-client-urls": "https://10.0.0.5:2379", "advertise-client-urls": "https://10.0.0.5:2379"},
		"http only": {"listen-client-urls": "http://127.0.0.1:2379"},
		"name":      {"listen-client-urls": "https://etcd.example:2379"},
	} {
		_, err := EndpointsFromFlags(flags)
		if !errors.Is(err, ErrNoLoopback) {
			t.Errorf("%s: err %v, want ErrNoLoopback", name, err)
		}
	}
	if _, err := EndpointsFromManifest([]byte("spec: [")); err == nil || errors.Is(err, ErrNoLoopback) {
		t.Errorf("broken YAML: err %v", err)
	}
	if _, err := EndpointsFromManifest([]byte("kind: Pod\n")); err == nil || !strings.Contains(err.Error(), "no containers") {
		t.Errorf("no containers: err %v", err)
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, ep := range []string{"https://10.0.0.5:2379", "https://localhost:2379", "http://127.0.0.1:2379",
		"https://127.0.0.1", "127.0.0.1:2379", "https://0.0.0.0:2379", "https://127.0.0.1:2379/x"} {
		if _, _, err := loopbackHostPort(ep); err == nil {
			t.Errorf("%s accepted", ep)
		}
	}
	for _, ep := range []string{"https://127.0.0.1:2379", "https://[::1]:2379", "https://127.1.2.3:2379/"} {
		if _, _, err := loopbackHostPort(ep); err != nil {
			t.Errorf("%s: %v", ep, err)
		}
	}
}

func TestMetricsFromManifest(t *testing.T) {
	for name, c := range map[string]struct{ manifest, want string }{
		"kubeadm":          {kubeadmEtcd, "http://127.0.0.1:2381"},
		"wildcard first":   {strings.Replace(kubeadmEtcd, "http://127.0.0.1:2381", "https://127.0.0.1:2382,http://0.0.0.0:2381", 1), "http://127.0.0.1:2381"},
		"not on loopback":  {strings.Replace(kubeadmEtcd, "http://127.0.0.1:2381", "http://10.0.0.5:2381", 1), ""},
		"no metrics flag":  {strings.Replace(kubeadmEtcd, "    - --listen-metrics-urls=http://127.0.0.1:2381\n", "", 1), ""},
		"not a manifest":   {"{", ""},
		"localhost, no ip": {strings.Replace(kubeadmEtcd, "http://127.0.0.1:2381", "http://localhost:2391", 1), "http://127.0.0.1:2391"},
	} {
		if got := MetricsFromManifest([]byte(c.manifest)); got != c.want {
			t.Errorf("%s: %q, want %q", name, got, c.want)
		}
	}
}
