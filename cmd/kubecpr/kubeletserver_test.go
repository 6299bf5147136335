package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubecpr/kubecpr/test/fixture"
)

// A kubeadm node whose kubelet serves with serverTLSBootstrap: its expired
// kubelet-server-current.pem is listed by check with its expiry and what
// brings a new one; a run on a copy renews everything else, leaves the pem
// to the kubelet (kubecpr never writes it) and still completes.
func TestKubeletServerCurrentOnKubeadm(t *testing.T) {
	root := t.TempDir()
	leaf := fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)}
	fn, err := fixture.Generate(root, fixture.Options{NodeName: "cp-1", Now: now, Keys: keys,
		CA: fixture.Window{NotBefore: now.AddDate(-2, 0, 0), NotAfter: now.AddDate(8, 0, 0)}, Leaf: leaf, KubeletClient: leaf})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(9),
		Subject:   pkix.Name{CommonName: "system:node:cp-1", Organization: []string{"system:nodes"}},
		NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, DNSNames: []string{"cp-1"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, fn.CA.Cert, key.Public(), fn.CA.Key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	dated := "/var/lib/kubelet/pki/kubelet-server-2025-11-19-03-00-00.pem"
	if err := os.WriteFile(filepath.Join(root, dated), append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dated, filepath.Join(root, "var/lib/kubelet/pki/kubelet-server-current.pem")); err != nil {
		t.Fatal(err)
	}

	r := kubecpr(t, nil, rootArgs(root, "check")...)
	line := lineWith(r.stdout, "kubelet-server-current.pem ")
	if r.code != 2 || !strings.Contains(line, "Nov 19, 2026 03:00 UTC") || !strings.Contains(line, "expired") ||
		!strings.Contains(r.stdout, "requests a new one itself when it restarts") || !strings.Contains(r.stdout, "csr stage approves the kubelet-serving CSR") {
		t.Fatalf("check: exit %d\n%s", r.code, r.stdout)
	}
	before, _ := os.ReadFile(filepath.Join(root, dated))
	r = kubecpr(t, nil, rootArgs(root, "run")...)
	if r.code != 0 || !strings.Contains(r.stdout, "kubelet-server-current.pem is still expired: the kubelet requests a new one") {
		t.Fatalf("run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if after, _ := os.ReadFile(filepath.Join(root, dated)); string(after) != string(before) {
		t.Error("kubecpr wrote the kubelet's serving pem")
	}
}
