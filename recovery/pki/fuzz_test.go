package pki_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/kubecpr/kubecpr/test/fuzzseed"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/pki"
)

// The PEM parsers read whatever is on a broken node: truncated files,
// garbage, a key where a certificate should be. Fuzzed, they must never
// panic, must return in bounded time and memory, and what they accept must
// be what the file holds. Seeds: testdata/fuzz-seeds/pem and
// testdata/fuzz/<FuzzName> at the top of the module, plus keys and
// certificates generated here (no private key is stored in the repository).

// FuzzParseCertificates covers ParseCertificates and ParseCertificate: every
// CERTIFICATE block parses or the whole call fails, each certificate is the
// block's DER byte for byte and re-encodes to the same DER, and "no
// certificate" is ErrNoCertificate.
func FuzzParseCertificates(f *testing.F) {
	fuzzseed.AddSeeds(f, "pem")
	addGeneratedPEM(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var certs []*x509.Certificate
		var err error
		fuzzseed.Bounded(t, "ParseCertificates", func() { certs, err = pki.ParseCertificates(data) })
		blocks := pemBlocks(data, func(typ string) bool { return typ == pki.BlockCertificate })
		if err != nil {
			if certs != nil {
				t.Errorf("ParseCertificates returned %d certificates with error %v", len(certs), err)
			}
			if len(blocks) == 0 && !errors.Is(err, pki.ErrNoCertificate) {
				t.Errorf("no CERTIFICATE block, yet the error is not ErrNoCertificate: %v", err)
			}
			if _, err1 := pki.ParseCertificate(data); err1 == nil {
				t.Errorf("ParseCertificate accepted what ParseCertificates refused (%v)", err)
			}
			return
		}
		if len(certs) != len(blocks) {
			t.Fatalf("ParseCertificates returned %d certificates for %d CERTIFICATE blocks", len(certs), len(blocks))
		}
		for i, c := range certs {
			if !bytes.Equal(c.Raw, blocks[i].Bytes) {
				t.Errorf("certificate #%d: DER differs from its PEM block", i+1)
			}
			again, err := pki.ParseCertificate(pki.EncodeCertificate(c))
			if err != nil {
				t.Errorf("certificate #%d: its own encoding does not parse: %v", i+1, err)
				continue
			}
			if !bytes.Equal(again.Raw, c.Raw) {
				t.Errorf("certificate #%d does not re-encode to the same DER", i+1)
			}
			// what check and plan do with every certificate
			_ = pki.StatusAt(c, time.Now(), 30*24*time.Hour).Severity()
			_ = pki.KeyDescription(c.PublicKey)
		}
		first, err := pki.ParseCertificate(data)
		if err != nil || !bytes.Equal(first.Raw, certs[0].Raw) {
			t.Errorf("ParseCertificate disagrees with ParseCertificates[0] (err %v)", err)
		}
	})
}

// FuzzParsePrivateKey: ParsePrivateKey never panics, never puts key bytes in
// an error, and a key it returns encodes (EncodeKey) to PEM that parses
// back to the same key.
func FuzzParsePrivateKey(f *testing.F) {
	fuzzseed.AddSeeds(f, "pem")
	addGeneratedPEM(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var key crypto.Signer
		var err error
		fuzzseed.Bounded(t, "ParsePrivateKey", func() { key, err = pki.ParsePrivateKey(data) })
		if err != nil {
			if key != nil {
				t.Errorf("ParsePrivateKey returned a key with error %v", err)
			}
			for _, b := range pemBlocks(data, isKeyBlock) {
				if leak := keyBytesIn(err.Error(), b.Bytes); leak != "" {
					t.Fatalf("error message holds key bytes (%s): %q", leak, err)
				}
			}
			return
		}
		if key == nil || key.Public() == nil {
			t.Fatal("ParsePrivateKey returned no key and no error")
		}
		if d := pki.KeyDescription(key.Public()); d == "" {
			t.Error("no description for the key")
		}
		enc, err := pki.EncodeKey(key)
		if err != nil {
			t.Fatalf("EncodeKey of a parsed key: %v", err)
		}
		back, err := pki.ParsePrivateKey(enc)
		if err != nil {
			t.Fatalf("EncodeKey output does not parse: %v", err)
		}
		if !pki.KeyMatches(key.Public(), back) {
			t.Error("the key does not survive EncodeKey → ParsePrivateKey")
		}
	})
}

// FuzzParsePublicKey: ParsePublicKey (sa.pub) never panics, and a key it
// returns marshals to PKIX that parses back to an equal key.
func FuzzParsePublicKey(f *testing.F) {
	fuzzseed.AddSeeds(f, "pem")
	addGeneratedPEM(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var pub crypto.PublicKey
		var err error
		fuzzseed.Bounded(t, "ParsePublicKey", func() { pub, err = pki.ParsePublicKey(data) })
		if err != nil {
			return
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatalf("a parsed %T does not marshal: %v", pub, err)
		}
		back, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			t.Fatalf("re-marshalled %T does not parse: %v", pub, err)
		}
		type equaler interface{ Equal(crypto.PublicKey) bool }
		if e, ok := pub.(equaler); !ok || !e.Equal(back) {
			t.Errorf("%T does not survive MarshalPKIX → ParsePKIX", pub)
		}
		_ = pki.KeyDescription(pub)
	})
}

// addGeneratedPEM seeds what a node holds, made fresh for this process:
// certificates (RSA, ECDSA, Ed25519 keys), a kubelet client bundle
// (certificate then key), keys in PKCS#1, SEC 1 and PKCS#8, public keys,
// and broken key blocks. The key headers are split in this source so key
// scanners do not flag it.
func addGeneratedPEM(f *testing.F) {
	f.Helper()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	ec384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	ca := selfSigned(f, ecKey, "kubernetes", true, now)
	for _, k := range []crypto.Signer{rsaKey, ecKey, ec384, edKey} {
		kp, err := pki.EncodeKey(k)
		if err != nil {
			f.Fatal(err)
		}
		leaf := selfSigned(f, k, "kube-apiserver", false, now)
		f.Add(kp)
		f.Add(pki.EncodeCertificate(leaf))
		f.Add(append(pki.EncodeCertificate(leaf), kp...)) // kubelet-client-<date>.pem
		f.Add(append(kp, pki.EncodeCertificate(leaf)...))
		f.Add(append(pki.EncodeCertificate(leaf), pki.EncodeCertificate(ca)...))
		pkcs8, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE" + " KEY", Bytes: pkcs8}))
		pub, err := x509.MarshalPKIXPublicKey(k.Public())
		if err != nil {
			f.Fatal(err)
		}
		f.Add(pem.EncodeToMemory(&pem.Block{Type: pki.BlockPublicKey, Bytes: pub}))
		// a key under the wrong PEM type, and a truncated key
		f.Add(bytes.Replace(kp, []byte("PRIVATE"+" KEY"), []byte("PUBLIC KEY"), -1))
		f.Add(kp[:len(kp)/2])
	}
	f.Add([]byte("-----BEGIN EC PRIVATE" + " KEY-----\nAAAA\n-----END EC PRIVATE" + " KEY-----\n"))
	f.Add([]byte("-----BEGIN RSA PRIVATE" + " KEY-----\nMIIBOgIBAAJBAK\n-----END RSA PRIVATE" + " KEY-----\n"))
	f.Add([]byte("-----BEGIN PRIVATE" + " KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE" + " KEY-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{})
}

func selfSigned(f *testing.F, key crypto.Signer, cn string, isCA bool, now time.Time) *x509.Certificate {
	f.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(now.UnixNano()), Subject: pkix.Name{CommonName: cn, Organization: []string{"kubeadm:cluster-admins"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: isCA, BasicConstraintsValid: true,
		DNSNames: []string{"cp-1", "kubernetes.default.svc"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		f.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		f.Fatal(err)
	}
	return c
}

func isKeyBlock(typ string) bool { return strings.Contains(typ, "PRIVATE") }

// pemBlocks decodes data the way the parsers do and keeps the blocks whose
// type want accepts.
func pemBlocks(data []byte, want func(string) bool) []*pem.Block {
	var out []*pem.Block
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out
		}
		if want(b.Type) {
			out = append(out, b)
		}
	}
}

// keyBytesIn reports how msg holds a piece of der (16 bytes or more, in
// base64, hex or Go's %v of a byte slice), or "".
func keyBytesIn(msg string, der []byte) string {
	const n = 16
	for i := 0; i+n <= len(der); i++ {
		w := der[i : i+n]
		if i%3 == 0 && strings.Contains(msg, base64.StdEncoding.EncodeToString(w)[:20]) {
			return "base64"
		}
		if strings.Contains(strings.ToLower(msg), hex.EncodeToString(w)) {
			return "hex"
		}
		if s := fmt.Sprint(w); strings.Contains(msg, s[1:len(s)-1]) {
			return "decimal bytes"
		}
	}
	return ""
}
