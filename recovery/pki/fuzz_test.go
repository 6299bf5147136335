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
	"math/big"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strconv"
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
	addTopLevelSeeds(f, "pem")
	addGeneratedPEM(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var certs []*x509.Certificate
		var err error
		bounded(t, "ParseCertificates", func() { certs, err = pki.ParseCertificates(data) })
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
	addTopLevelSeeds(f, "pem")
	addGeneratedPEM(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var key crypto.Signer
		var err error
		bounded(t, "ParsePrivateKey", func() { key, err = pki.ParsePrivateKey(data) })
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
	addTopLevelSeeds(f, "pem")
	addGeneratedPEM(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var pub crypto.PublicKey
		var err error
		bounded(t, "ParsePublicKey", func() { pub, err = pki.ParsePublicKey(data) })
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

// bounded runs fn and fails when it allocates without bound; when fn does
// not return within a time limit, the process panics (a hang has no other
// way out), which the fuzzer reports as a crash with the input. Cheap
// enough to run on every input: one timer and two reads of a runtime
// metric.
func bounded(t *testing.T, what string, fn func()) {
	t.Helper()
	const limit = 10 * time.Second
	const maxAlloc = 256 << 20
	timer := time.AfterFunc(limit, func() { panic(fmt.Sprintf("%s did not return within %v", what, limit)) })
	before := heapAllocated()
	fn()
	timer.Stop()
	if n := heapAllocated() - before; n > maxAlloc {
		t.Fatalf("%s allocated %d MiB", what, n>>20)
	}
}

// heapAllocated is the cumulative count of bytes allocated on the heap.
func heapAllocated() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// addTopLevelSeeds seeds f from the module's top-level testdata (the
// layout the project keeps its corpora in; Go itself only reads the
// package's own testdata/fuzz): every file of testdata/fuzz-seeds/<kind>/
// as it is, and every entry of testdata/fuzz/<FuzzName>/ in Go's corpus
// format. "@KEY@" in a seed stands for "PRIVATE KEY" (broken key blocks are
// stored that way so secret scanners stay quiet). A missing seed directory
// fails the test: a fuzz target that lost its corpus should say so.
func addTopLevelSeeds(f *testing.F, kind string) {
	f.Helper()
	td := moduleTestdata(f)
	add := func(b []byte) {
		f.Add(bytes.ReplaceAll(b, []byte("@KEY@"), []byte("PRIVATE"+" KEY")))
	}
	seeds, err := filepath.Glob(filepath.Join(td, "fuzz-seeds", kind, "*"))
	if err != nil {
		f.Fatal(err)
	}
	n := 0
	for _, p := range seeds {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		add(b)
		n++
	}
	if n == 0 {
		f.Fatalf("no seeds in %s", filepath.Join(td, "fuzz-seeds", kind))
	}
	corpus, _ := filepath.Glob(filepath.Join(td, "fuzz", f.Name(), "*"))
	for _, p := range corpus {
		raw, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		b, err := parseCorpusEntry(raw)
		if err != nil {
			f.Fatalf("%s: %v", p, err)
		}
		add(b)
	}
}

// parseCorpusEntry decodes a one-value []byte entry in Go's corpus format.
func parseCorpusEntry(raw []byte) ([]byte, error) {
	var lines []string
	for _, l := range strings.Split(string(raw), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 2 || lines[0] != "go test fuzz v1" {
		return nil, errors.New(`not a Go fuzz corpus entry ("go test fuzz v1" and one value)`)
	}
	v := lines[1]
	if !strings.HasPrefix(v, "[]byte(") || !strings.HasSuffix(v, ")") {
		return nil, fmt.Errorf("value %.40q is not []byte(...)", v)
	}
	s, err := strconv.Unquote(v[len("[]byte(") : len(v)-1])
	if err != nil {
		return nil, fmt.Errorf("value: %w", err)
	}
	return []byte(s), nil
}

// moduleTestdata is the module's top-level testdata directory: go test runs
// in the package directory, so walk up to go.mod.
func moduleTestdata(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "testdata")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("no go.mod above the package directory")
		}
		dir = parent
	}
}
