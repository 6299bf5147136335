package node

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type certSettings struct {
	Leaf, CA  time.Duration
	Algorithm string
}

func TestKubeadmCertificateSettings(t *testing.T) {
	for _, tc := range []struct {
		name, config string
		want         certSettings
		wantErr      string
	}{
		{"v1beta4 all set", `apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
certificateValidityPeriod: 2160h0m0s
caCertificateValidityPeriod: 43800h
encryptionAlgorithm: ECDSA-P256
`, certSettings{90 * 24 * time.Hour, 5 * 365 * 24 * time.Hour, "ECDSA-P256"}, ""},
		{"v1beta4 defaults", "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n", certSettings{}, ""},
		{"v1beta4 RSA-4096", "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nencryptionAlgorithm: RSA-4096\n", certSettings{Algorithm: "RSA-4096"}, ""},
		{"v1beta3 ECDSA gate", "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nfeatureGates:\n  PublicKeysECDSA: true\n", certSettings{Algorithm: "ECDSA-P256"}, ""},
		{"v1beta3 plain", "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\ncertificatesDir: /etc/kubernetes/pki\n", certSettings{}, ""},
		{"bad duration", "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\ncertificateValidityPeriod: 90d\n", certSettings{}, "certificateValidityPeriod \"90d\""},
		{"bad algorithm", "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nencryptionAlgorithm: DSA\n", certSettings{}, "encryptionAlgorithm \"DSA\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			write(t, root, "/etc/kubernetes/manifests/kube-apiserver.yaml", apiManifest)
			write(t, root, "/etc/kubernetes/kubeadm.yaml", tc.config)
			n, _ := New(root)
			c, err := n.Discover("/etc/kubernetes/kubeadm.yaml")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "/etc/kubernetes/kubeadm.yaml") {
					t.Fatalf("err = %v, want one naming the file and %s", err, tc.wantErr)
				}
				return
			}
			var ue *UnknownError
			if err != nil && !errors.As(err, &ue) {
				t.Fatal(err)
			}
			got := certSettings{c.CertificateValidity, c.CACertificateValidity, c.EncryptionAlgorithm}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("settings (-want +got):\n%s", diff)
			}
			if got.Leaf == 0 && !strings.HasPrefix(c.Source["certificateValidityPeriod"], "kubeadm's default 8760h") {
				t.Errorf("source of certificateValidityPeriod = %q, want kubeadm's default", c.Source["certificateValidityPeriod"])
			}
			wantCA := tc.want.CA
			if wantCA == 0 {
				wantCA = 87600 * time.Hour
			}
			if c.CAValidity() != wantCA {
				t.Errorf("CAValidity() = %s, want %s", c.CAValidity(), wantCA)
			}
		})
	}
}

func TestDiscoverConfigNodePathFirst(t *testing.T) {
	root := t.TempDir()
	write(t, root, "/etc/kubernetes/manifests/kube-apiserver.yaml", apiManifest)
	write(t, root, "/etc/kubernetes/kubeadm.yaml", "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\ncertificateValidityPeriod: 2160h\n")
	host := filepath.Join(t.TempDir(), "host.yaml")
	os.WriteFile(host, []byte("apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\ncertificateValidityPeriod: 720h\n"), 0o600)
	n, _ := New(root)

	for _, tc := range []struct {
		name, config string
		want         time.Duration
		wantNote     string
		wantErr      string
	}{
		{"node path", "/etc/kubernetes/kubeadm.yaml", 2160 * time.Hour, "", ""},
		{"host path where no node path", host, 720 * time.Hour, "(host path", ""},
		{"neither", "/etc/kubernetes/nothing.yaml", 0, "", "--config /etc/kubernetes/nothing.yaml: no such file under the root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := n.Discover(tc.config)
			var ue *UnknownError
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil && !errors.As(err, &ue) {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, c.CertificateValidity); diff != "" {
				t.Errorf("certificateValidityPeriod (-want +got):\n%s", diff)
			}
			if note := c.ConfigNote(); (tc.wantNote == "") != (note == "") || !strings.Contains(note, tc.wantNote) {
				t.Errorf("ConfigNote() = %q, want one containing %q", note, tc.wantNote)
			}
		})
	}
}

func TestDiscoverKubeadmConfigFromEtcd(t *testing.T) {
	root := t.TempDir()
	write(t, root, "/etc/kubernetes/manifests/kube-apiserver.yaml", apiManifest)
	write(t, root, "/var/lib/etcd/member/snap/db", "bbolt")
	n, _ := New(root)
	var gotPath string
	c, err := n.DiscoverWith(DiscoverOptions{EtcdKubeadmConfig: func(db string) ([]byte, error) {
		gotPath = db
		return []byte("apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\ncertificateValidityPeriod: 2160h\n"), nil
	}})
	var ue *UnknownError
	if err != nil && !errors.As(err, &ue) {
		t.Fatal(err)
	}
	if want := n.Path("/var/lib/etcd/member/snap/db"); gotPath != want {
		t.Errorf("read %q, want %q", gotPath, want)
	}
	if c.CertificateValidity != 2160*time.Hour || !strings.Contains(c.Source["certificateValidityPeriod"], "kubeadm-config ConfigMap") {
		t.Errorf("validity %s from %q, want 2160h from the ConfigMap", c.CertificateValidity, c.Source["certificateValidityPeriod"])
	}
}

// etcd's data without a kubeadm-config ConfigMap (or unreadable): the note
// says that kubeadm's defaults apply and why, not "read from none".
func TestConfigNoteWhenEtcdHasNoKubeadmConfig(t *testing.T) {
	root := t.TempDir()
	write(t, root, "/etc/kubernetes/manifests/kube-apiserver.yaml", apiManifest)
	write(t, root, "/var/lib/etcd/member/snap/db", "bbolt")
	n, _ := New(root)
	c, err := n.DiscoverWith(DiscoverOptions{EtcdKubeadmConfig: func(db string) ([]byte, error) {
		return nil, errors.New("key not found in etcd's data")
	}})
	var ue *UnknownError
	if err != nil && !errors.As(err, &ue) {
		t.Fatal(err)
	}
	note := c.ConfigNote()
	if !strings.HasPrefix(note, "kubeadm's defaults apply: the kubeadm-config ConfigMap in /var/lib/etcd/member/snap/db could not be read: key not found") || strings.Contains(note, "none (") {
		t.Errorf("ConfigNote() = %q", note)
	}
}
