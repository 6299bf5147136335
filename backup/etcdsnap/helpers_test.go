package etcdsnap

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/pki"
)

// testCA is a throwaway CA for the tests.
type testCA struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
	keyPEM  []byte
}

var serialMu sync.Mutex
var nextSerial int64 = 1000

func serial() *big.Int {
	serialMu.Lock()
	defer serialMu.Unlock()
	nextSerial++
	return big.NewInt(nextSerial)
}

func newTestCA(t testing.TB, cn string, notBefore, notAfter time.Time) *testCA {
	t.Helper()
	return newSubCA(t, nil, cn, notBefore, notAfter)
}

// newSubCA makes a CA signed by parent (self-signed when parent is nil).
func newSubCA(t testing.TB, parent *testCA, cn string, notBefore, notAfter time.Time) *testCA {
	t.Helper()
	key, err := pki.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, key.Public(), signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, certPEM: pki.EncodeCertificate(cert), keyPEM: keyPEM}
}

// leaf issues a certificate for a new key.
func (ca *testCA) leaf(t testing.TB, cn string, eku x509.ExtKeyUsage, ips []net.IP, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	key, err := pki.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{eku},
		IPAddresses:  ips,
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// secretNeedles are byte strings that betray a private key: the body
// lines of its PEM encodings (the ones given and the usual ones), those
// PEM texts base64-encoded (as kubeconfigs embed keys), its DER forms and
// their base64, its raw secret numbers. Each needle is specific to this
// key (TestFindSecretsSeesKeys checks another key matches none).
func secretNeedles(t testing.TB, key crypto.Signer, pems ...[]byte) [][]byte {
	t.Helper()
	var out [][]byte
	addPEM := func(b []byte) {
		// The PEM itself base64-encoded (a kubeconfig's client-key-data),
		// at any alignment inside a longer encoded text.
		for shift := 0; shift < 3 && shift < len(b); shift++ {
			if enc := base64.StdEncoding.EncodeToString(b[shift:]); len(enc) > 16 {
				out = append(out, []byte(enc[4:len(enc)-4]))
			}
		}
		for rest := b; ; {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				break
			}
			out = append(out, blk.Bytes, []byte(base64.StdEncoding.EncodeToString(blk.Bytes)))
		}
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); len(line) >= 32 && !strings.HasPrefix(line, "-----") {
				out = append(out, []byte(line))
			}
		}
	}
	for _, p := range pems {
		addPEM(p)
	}
	if der, err := x509.MarshalPKCS8PrivateKey(key); err == nil {
		addPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}
	if b, err := pki.EncodeKey(key); err == nil {
		addPEM(b)
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		if d, err := k.Bytes(); err == nil {
			out = append(out, d)
		}
	case *rsa.PrivateKey:
		out = append(out, k.D.Bytes())
		for _, p := range k.Primes {
			out = append(out, p.Bytes())
		}
	}
	return out
}

// assertNoSecret fails when any needle appears in any file under dirs or
// in any of the texts.
func assertNoSecret(t testing.TB, needles [][]byte, dirs []string, texts ...string) {
	t.Helper()
	assertNoSecretExcept(t, needles, dirs, nil, texts...)
}

// assertNoSecretExcept is assertNoSecret skipping the trees in skip.
func assertNoSecretExcept(t testing.TB, needles [][]byte, dirs, skip []string, texts ...string) {
	t.Helper()
	found, err := findSecrets(needles, dirs, skip, texts...)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range found {
		t.Errorf("private key material found in %s", f)
	}
}

// findSecrets lists the files under dirs (but skip) and the texts (as
// "text #i") where a needle appears.
func findSecrets(needles [][]byte, dirs, skip []string, texts ...string) ([]string, error) {
	var found []string
	hit := func(b []byte) bool {
		for _, n := range needles {
			if bytes.Contains(b, n) {
				return true
			}
		}
		return false
	}
	for _, d := range dirs {
		err := filepath.Walk(d, func(p string, info os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			if info.IsDir() && slices.Contains(skip, p) {
				return filepath.SkipDir
			}
			if !info.Mode().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if hit(b) {
				found = append(found, p)
			}
			return nil
		})
		if err != nil {
			return found, err
		}
	}
	for i, s := range texts {
		if hit([]byte(s)) {
			found = append(found, fmt.Sprintf("text #%d", i))
		}
	}
	return found, nil
}

func pemOf(c tls.Certificate) []byte { return pki.EncodeCertificate(c.Leaf) }

func pkiEncode(t testing.TB, c tls.Certificate) ([]byte, error) {
	t.Helper()
	b, err := pki.EncodeKey(c.PrivateKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	return b, nil
}

// resign re-issues ca's certificate with its own key and subject for a new
// validity period.
func resign(t testing.TB, ca *testCA, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	tmpl := *ca.cert
	tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = serial(), notBefore, notAfter
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, ca.key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}
