package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/fixture"
)

const kubeadm90Days = `apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
certificatesDir: /etc/kubernetes/pki
certificateValidityPeriod: 2160h0m0s
caCertificateValidityPeriod: 87600h0m0s
encryptionAlgorithm: ECDSA-P256
`

func readCertAt(t *testing.T, root, nodePath string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(nodePath)))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestRunHonoursKubeadmCertificateSettings: a v1beta4 config under --root
// saying certificateValidityPeriod 2160h and ECDSA-P256 gives 90-day leaves,
// keeps the keys kubecpr keeps, and makes a missing key ECDSA P-256; with a
// CA that expires in 30 days the leaves end with it and the plan says so.
func TestRunHonoursKubeadmCertificateSettings(t *testing.T) {
	for _, tc := range []struct {
		name     string
		caEnds   time.Time
		wantEnd  time.Time
		wantNote string
	}{
		{"90 days from the config", now.AddDate(8, 0, 0), now.Add(2160 * time.Hour), "lifetime 2160h0m0s from certificateValidityPeriod in /etc/kubernetes/kubeadm.yaml"},
		{"capped at the CA", now.AddDate(0, 0, 30), now.AddDate(0, 0, 30), "capped at the CA's expiry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := expiredNode(t, func(o *fixture.Options) { o.CA.NotAfter = tc.caEnds })
			if err := os.WriteFile(filepath.Join(root, "etc/kubernetes/kubeadm.yaml"), []byte(kubeadm90Days), 0o600); err != nil {
				t.Fatal(err)
			}
			pkiDir := "/etc/kubernetes/pki"
			keptKey := readCertAt(t, root, pkiDir+"/apiserver.key")
			for _, f := range []string{"apiserver-kubelet-client.crt", "apiserver-kubelet-client.key"} {
				if err := os.Remove(filepath.Join(root, "etc/kubernetes/pki", f)); err != nil {
					t.Fatal(err)
				}
			}

			r := kubecpr(t, nil, rootArgs(root, "--config", "/etc/kubernetes/kubeadm.yaml", "run", "--until", "kubeconfigs")...)
			if r.code != 0 {
				t.Fatalf("run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout, tc.wantNote) {
				t.Errorf("output does not say %q:\n%s", tc.wantNote, r.stdout)
			}
			for _, leaf := range []string{"apiserver.crt", "apiserver-etcd-client.crt", "front-proxy-client.crt", "apiserver-kubelet-client.crt"} {
				cert, err := pki.ParseCertificate(readCertAt(t, root, pkiDir+"/"+leaf))
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(tc.wantEnd.UTC(), cert.NotAfter.UTC()); diff != "" {
					t.Errorf("%s NotAfter (-want +got):\n%s", leaf, diff)
				}
			}
			if !bytes.Equal(keptKey, readCertAt(t, root, pkiDir+"/apiserver.key")) {
				t.Errorf("apiserver.key changed: a renewal keeps the key, as kubeadm certs renew does")
			}
			key, err := pki.ParsePrivateKey(readCertAt(t, root, pkiDir+"/apiserver-kubelet-client.key"))
			if err != nil {
				t.Fatal(err)
			}
			if k, ok := key.Public().(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
				t.Errorf("new apiserver-kubelet-client.key is %s, want ECDSA P-256 (encryptionAlgorithm)", pki.KeyDescription(key.Public()))
			}
		})
	}
}
