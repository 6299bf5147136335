package distro

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/test/fixture"
	"github.com/kubecpr/kubecpr/test/treesnap"
)

// Node trees are generated: the files a product writes, with throwaway
// certificates where the product keeps certificates. Nothing is committed.

var (
	now  = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	keys = fixture.NewKeyPool(8)
)

// certPEM is a throwaway self-signed ECDSA certificate (k3s and RKE2 use
// P-256 keys), expired three days before now.
func certPEM(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func write(t *testing.T, root, nodePath string, data []byte) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(nodePath))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// rancherTree lays out a k3s or RKE2 node the way the product does:
// product is "k3s" or "rke2".
func rancherTree(t *testing.T, root, product string, server bool) {
	t.Helper()
	data := "/var/lib/rancher/" + product
	if server {
		write(t, root, "/etc/rancher/"+product+"/"+product+".yaml", []byte("apiVersion: v1\nkind: Config\n"))
		for _, f := range []string{"server-ca", "client-ca", "request-header-ca", "client-admin", "serving-kube-apiserver", "client-kube-apiserver"} {
			write(t, root, data+"/server/tls/"+f+".crt", certPEM(t, product+"-"+f))
		}
		write(t, root, data+"/server/tls/etcd/server-client.crt", certPEM(t, "etcd-server"))
	}
	write(t, root, data+"/agent/client-kubelet.crt", certPEM(t, "system:node:n1"))
	write(t, root, data+"/agent/serving-kubelet.crt", certPEM(t, "n1"))
}

func kubeadmTree(t *testing.T, root string) {
	t.Helper()
	_, err := fixture.Generate(root, fixture.Options{NodeName: "cp-1", Now: now, Keys: keys,
		Leaf: fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)}})
	if err != nil {
		t.Fatal(err)
	}
}

// openshiftTree lays out the paths of an OpenShift 4 node: a master has
// revisioned static pod resources, every node the bootstrap kubeconfig
// and the kubelet's kubeconfig.
func openshiftTree(t *testing.T, root string, master bool) {
	t.Helper()
	if master {
		write(t, root, "/etc/kubernetes/static-pod-resources/kube-apiserver-pod-3/kube-apiserver-pod.yaml", []byte("kind: Pod\n"))
		write(t, root, "/etc/kubernetes/static-pod-resources/kube-apiserver-certs/secrets/localhost-recovery-serving-certkey/tls.crt", certPEM(t, "localhost-recovery"))
		write(t, root, "/etc/kubernetes/manifests/kube-apiserver-pod.yaml", []byte("kind: Pod\n"))
	}
	write(t, root, "/etc/kubernetes/kubeconfig", []byte("apiVersion: v1\nkind: Config\n"))
	write(t, root, "/var/lib/kubelet/kubeconfig", []byte("apiVersion: v1\nkind: Config\n"))
	write(t, root, "/var/lib/kubelet/pki/kubelet-client-current.pem", certPEM(t, "system:node:master-0"))
}

func TestDetect(t *testing.T) {
	for _, tc := range []struct {
		name    string
		build   func(t *testing.T, root string)
		want    Distro
		wantErr []string // substrings of the refusal; nil: no error
	}{
		{
			name:  "kubeadm",
			build: kubeadmTree,
			want: Distro{Kind: Kubeadm, Evidence: []string{"/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/manifests/kube-apiserver.yaml",
				"/etc/kubernetes/admin.conf", "/etc/kubernetes/kubelet.conf"}},
		},
		{
			name:  "k3s server",
			build: func(t *testing.T, root string) { rancherTree(t, root, "k3s", true) },
			want: Distro{Kind: K3s, Server: true, Evidence: []string{"/etc/rancher/k3s", "/var/lib/rancher/k3s/server/tls",
				"/var/lib/rancher/k3s/agent"}},
			wantErr: []string{"k3s server", "/var/lib/rancher/k3s/server/tls", "kubecpr changed nothing",
				"`systemctl stop k3s && k3s certificate rotate && systemctl start k3s`", "systemctl restart k3s-agent"},
		},
		{
			name:    "k3s agent",
			build:   func(t *testing.T, root string) { rancherTree(t, root, "k3s", false) },
			want:    Distro{Kind: K3s, Evidence: []string{"/var/lib/rancher/k3s/agent"}},
			wantErr: []string{"k3s agent", "`systemctl restart k3s-agent`", "k3s certificate rotate"},
		},
		{
			name:  "rke2 server",
			build: func(t *testing.T, root string) { rancherTree(t, root, "rke2", true) },
			want: Distro{Kind: RKE2, Server: true, Evidence: []string{"/etc/rancher/rke2", "/var/lib/rancher/rke2/server/tls",
				"/var/lib/rancher/rke2/agent"}},
			wantErr: []string{"RKE2 server", "kubecpr changed nothing",
				"`systemctl stop rke2-server && rke2 certificate rotate && systemctl start rke2-server`", "systemctl restart rke2-agent"},
		},
		{
			name:    "rke2 agent",
			build:   func(t *testing.T, root string) { rancherTree(t, root, "rke2", false) },
			want:    Distro{Kind: RKE2, Evidence: []string{"/var/lib/rancher/rke2/agent"}},
			wantErr: []string{"RKE2 agent", "`systemctl restart rke2-agent`"},
		},
		{
			name: "rke2 with a k3s leftover",
			build: func(t *testing.T, root string) {
				rancherTree(t, root, "rke2", true)
				write(t, root, "/etc/rancher/k3s/registries.yaml", []byte("mirrors: {}\n"))
			},
			want: Distro{Kind: RKE2, Server: true, Evidence: []string{"/etc/rancher/rke2", "/var/lib/rancher/rke2/server/tls",
				"/var/lib/rancher/rke2/agent"}, Leftovers: []string{"/etc/rancher/k3s"}},
			wantErr: []string{"rke2 certificate rotate"},
		},
		{
			name: "kubeadm with a k3s leftover",
			build: func(t *testing.T, root string) {
				kubeadmTree(t, root)
				rancherTree(t, root, "k3s", false)
			},
			want: Distro{Kind: Kubeadm, Evidence: []string{"/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/manifests/kube-apiserver.yaml",
				"/etc/kubernetes/admin.conf", "/etc/kubernetes/kubelet.conf"}, Leftovers: []string{"/var/lib/rancher/k3s/agent"}},
		},
		{
			name:  "openshift master",
			build: func(t *testing.T, root string) { openshiftTree(t, root, true) },
			want: Distro{Kind: OpenShift, Evidence: []string{"/etc/kubernetes/static-pod-resources", "/etc/kubernetes/kubeconfig",
				"/var/lib/kubelet/kubeconfig"}},
		},
		{
			name:  "openshift worker",
			build: func(t *testing.T, root string) { openshiftTree(t, root, false) },
			want:  Distro{Kind: OpenShift, Evidence: []string{"/etc/kubernetes/kubeconfig", "/var/lib/kubelet/kubeconfig"}},
		},
		{
			name: "bootstrap kubeconfig alone is not OpenShift",
			build: func(t *testing.T, root string) {
				write(t, root, "/etc/kubernetes/kubeconfig", []byte("apiVersion: v1\nkind: Config\n"))
			},
			want: Distro{Kind: Unknown},
		},
		{
			name:  "empty",
			build: func(t *testing.T, root string) {},
			want:  Distro{Kind: Unknown},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tc.build(t, root)
			n, err := node.New(root)
			if err != nil {
				t.Fatal(err)
			}
			before := treesnap.Take(t, root)
			got, err := Detect(n)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Detect (-want +got):\n%s", diff)
			}
			if diff := treesnap.Diff(before, treesnap.Take(t, root)); diff != "" {
				t.Errorf("Detect changed the tree:\n%s", diff)
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var ue *UnsupportedError
			if !errors.As(err, &ue) {
				t.Fatalf("error %v (%T), want *UnsupportedError", err, err)
			}
			for _, s := range tc.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("refusal lacks %q:\n%s", s, err)
				}
			}
		})
	}
}

func TestNotice(t *testing.T) {
	msg := Distro{Kind: OpenShift, Evidence: []string{"/etc/kubernetes/static-pod-resources"}}.Notice()
	for _, s := range []string{"OpenShift 4", "limited to the node part", "/etc/kubernetes/static-pod-resources",
		"recovery-apiserver create", "regenerate-certificates", "oc patch kubeapiserver cluster", "forceRedeploymentReason",
		"oc adm certificate approve", "recovery-apiserver destroy"} {
		if !strings.Contains(msg, s) {
			t.Errorf("OpenShift notice lacks %q:\n%s", s, msg)
		}
	}
	if got := (Distro{Kind: Kubeadm}).Notice(); got != "" {
		t.Errorf("kubeadm notice %q, want none", got)
	}
	left := Distro{Kind: Kubeadm, Leftovers: []string{"/var/lib/rancher/k3s/agent"}}.Notice()
	if !strings.Contains(left, "/var/lib/rancher/k3s/agent") || !strings.Contains(left, "leaves those alone") {
		t.Errorf("leftover notice %q", left)
	}
}
