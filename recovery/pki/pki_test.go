package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var t0 = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)

func newCA(t testing.TB, name string, notBefore, notAfter time.Time) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: notBefore, NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &CA{Name: name, Cert: c, Key: key}
}

func newLeaf(t testing.TB, ca *CA, key crypto.Signer, tmpl *x509.Certificate) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// identity is what renewal must keep.
type identity struct {
	Subject     string
	DNSNames    []string
	IPs         []string
	KeyUsage    x509.KeyUsage
	ExtKeyUsage []x509.ExtKeyUsage
	IsCA        bool
}

func identityOf(c *x509.Certificate) identity {
	id := identity{Subject: c.Subject.String(), DNSNames: c.DNSNames, KeyUsage: c.KeyUsage, ExtKeyUsage: c.ExtKeyUsage, IsCA: c.IsCA}
	for _, ip := range c.IPAddresses {
		id.IPs = append(id.IPs, ip.String())
	}
	return id
}

func TestRenewKeepsIdentityAndChains(t *testing.T) {
	ca := newCA(t, "kubernetes", t0.Add(-24*time.Hour), t0.Add(10*365*24*time.Hour))
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	old := newLeaf(t, ca, key, &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: "kube-apiserver", Organization: []string{"o1", "o2"}},
		NotBefore:    t0.Add(-400 * 24 * time.Hour), NotAfter: t0.Add(-48 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"cp-1", "kubernetes", "kubernetes.default"},
		IPAddresses: []net.IP{net.ParseIP("10.96.0.1"), net.ParseIP("127.0.0.1")},
	})
	if got := StatusAt(old, t0, time.Hour); got != StatusExpired {
		t.Fatalf("fixture: old status %s, want expired", got)
	}
	renewed, err := Renew(old, key.Public(), ca, RenewOptions{Now: t0, Validity: 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(identityOf(old), identityOf(renewed)); diff != "" {
		t.Errorf("identity changed (-want +got):\n%s", diff)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := renewed.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, DNSName: "cp-1"}); err != nil {
		t.Errorf("renewed cert does not verify: %v", err)
	}
	if !renewed.NotBefore.Equal(t0.Add(-5 * time.Minute)) {
		t.Errorf("NotBefore %s, want backdated 5m", renewed.NotBefore)
	}
	if !renewed.NotAfter.Equal(t0.Add(365 * 24 * time.Hour)) {
		t.Errorf("NotAfter %s, want now+1y", renewed.NotAfter)
	}
	if renewed.SerialNumber.Cmp(old.SerialNumber) == 0 {
		t.Error("serial not changed")
	}
	if !KeyMatches(renewed.PublicKey, key) {
		t.Error("key not kept")
	}
}

func TestRenewCappedAtCAExpiry(t *testing.T) {
	caEnd := t0.Add(30 * 24 * time.Hour)
	ca := newCA(t, "ca", t0.Add(-time.Hour), caEnd)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	old := newLeaf(t, ca, key, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "x"},
		NotBefore: t0.Add(-time.Hour), NotAfter: t0, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	c, err := Renew(old, key.Public(), ca, RenewOptions{Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	if !c.NotAfter.Equal(caEnd) {
		t.Errorf("NotAfter %s, want capped at CA expiry %s", c.NotAfter, caEnd)
	}
}

func TestRenewExternalCARefused(t *testing.T) {
	ca := newCA(t, "ca", t0.Add(-time.Hour), t0.Add(time.Hour))
	ca.Key = nil
	_, err := Renew(ca.Cert, ca.Cert.PublicKey, ca, RenewOptions{Now: t0})
	if err == nil || !strings.Contains(err.Error(), "external CA") {
		t.Fatalf("err = %v, want external CA error", err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     error
	}{
		{"empty", "", ErrNoCertificate},
		{"not pem", "garbage bytes", ErrNoCertificate},
		{"key only", "-----BEGIN EC PRIVATE" + " KEY-----\nAAAA\n-----END EC PRIVATE" + " KEY-----\n", ErrNoCertificate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseCertificate([]byte(tc.in)); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	// A truncated certificate body is an error, not a silent skip.
	ca := newCA(t, "ca", t0, t0.Add(time.Hour))
	p := EncodeCertificate(ca.Cert)
	cut := strings.Replace(string(p), string(p[40:80]), "", 1)
	if _, err := ParseCertificate([]byte(cut)); err == nil {
		t.Fatal("truncated certificate parsed")
	}
}

func TestKeysRoundTripAndNewKeyLike(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, k := range []crypto.Signer{rsaKey, ecKey} {
		pemBytes, err := EncodeKey(k)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParsePrivateKey(pemBytes)
		if err != nil {
			t.Fatal(err)
		}
		if !KeyMatches(k.Public(), back) {
			t.Errorf("%T does not round-trip", k)
		}
		fresh, err := NewKeyLike(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		if KeyDescription(fresh.Public()) != KeyDescription(k.Public()) {
			t.Errorf("NewKeyLike: %s, want %s", KeyDescription(fresh.Public()), KeyDescription(k.Public()))
		}
		if KeyMatches(k.Public(), fresh) {
			t.Error("NewKeyLike returned the same key")
		}
	}
	if _, err := ParsePrivateKey([]byte("-----BEGIN RSA PRIVATE" + " KEY-----\nAAAA\n-----END RSA PRIVATE" + " KEY-----\n")); err == nil || strings.Contains(err.Error(), "AAAA") {
		t.Fatalf("corrupt key: err = %v (must fail and never echo key bytes)", err)
	}
}

func TestStatusAt(t *testing.T) {
	c := &x509.Certificate{NotBefore: t0, NotAfter: t0.Add(10 * 24 * time.Hour)}
	for _, tc := range []struct {
		at   time.Time
		want Status
	}{
		{t0.Add(-time.Second), StatusNotYetValid},
		{t0.Add(time.Hour), StatusExpiring},
		{t0.Add(10 * 24 * time.Hour), StatusExpired},
	} {
		if got := StatusAt(c, tc.at, 30*24*time.Hour); got != tc.want {
			t.Errorf("StatusAt(%s) = %s, want %s", tc.at, got, tc.want)
		}
	}
	if got := StatusAt(c, t0.Add(time.Hour), 24*time.Hour); got != StatusOK {
		t.Errorf("with 1d warn: %s, want ok", got)
	}
}

// The kubelet's self-signed serving pair: the node's RSA key kept, the
// chain verifies (leaf signed by the throwaway CA that follows it), the
// names and usages of the old certificate, a year from now; the
// throwaway CA's key is P-256, so no RSA key is generated.
func TestSelfSignedServingKeepsKeyAndChains(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	old := &x509.Certificate{DNSNames: []string{"node-1"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	chain, leaf, err := SelfSignedServing(old, key, "node-1", t0)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ParseCertificates(chain)
	if err != nil || len(certs) != 2 {
		t.Fatalf("chain: %d certificates, %v", len(certs), err)
	}
	if !certs[0].Equal(leaf) || !KeyMatches(leaf.PublicKey, key) {
		t.Fatal("the leaf is not first, or not for the node's key")
	}
	if _, ok := certs[1].PublicKey.(*ecdsa.PublicKey); !ok || !certs[1].IsCA {
		t.Errorf("throwaway CA: %T, CA %v", certs[1].PublicKey, certs[1].IsCA)
	}
	roots := x509.NewCertPool()
	roots.AddCert(certs[1])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "node-1", CurrentTime: t0.Add(time.Hour),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("the leaf does not chain to its CA: %v", err)
	}
	if leaf.Subject.CommonName != "node-1@"+strconv.FormatInt(t0.Unix(), 10) || !leaf.NotAfter.Equal(t0.Add(365*24*time.Hour)) {
		t.Errorf("leaf %q until %s", leaf.Subject.CommonName, leaf.NotAfter)
	}
}

// Issue 18: a CA expired after ten years, re-issued with its own key.
// Leaves it signed before (valid ones and expired ones renewed from the
// old certificate) verify against the new certificate; the subject, key
// id, usages and kubeadm's discovery hash are the same; the serial is new.
func TestRenewCAKeepsEverySignatureValid(t *testing.T) {
	ca := newCA(t, "kubernetes", t0.AddDate(-10, 0, -3), t0.AddDate(0, 0, -3))
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := newLeaf(t, ca, key, &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "system:node:w-1", Organization: []string{"system:nodes"}},
		NotBefore: t0.AddDate(0, -6, 0), NotAfter: t0.AddDate(0, 6, 0), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, AuthorityKeyId: ca.Cert.SubjectKeyId})
	oldPool := x509.NewCertPool()
	oldPool.AddCert(ca.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: oldPool, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Fatal("fixture: the leaf verifies against the expired CA")
	}
	renewed, err := RenewCA(ca, RenewOptions{Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(renewed)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("a leaf of the old CA certificate does not verify against the renewed one: %v", err)
	}
	if string(renewed.RawSubject) != string(ca.Cert.RawSubject) || string(renewed.SubjectKeyId) != string(ca.Cert.SubjectKeyId) {
		t.Error("subject or subject key id changed")
	}
	if renewed.KeyUsage != ca.Cert.KeyUsage || !renewed.IsCA || renewed.MaxPathLen != ca.Cert.MaxPathLen {
		t.Errorf("usages or constraints changed: %v IsCA=%v pathlen %d", renewed.KeyUsage, renewed.IsCA, renewed.MaxPathLen)
	}
	if PublicKeyPin(renewed) != PublicKeyPin(ca.Cert) {
		t.Error("the discovery hash changed: existing join commands would break")
	}
	if renewed.SerialNumber.Cmp(ca.Cert.SerialNumber) == 0 {
		t.Error("serial not changed")
	}
	if !renewed.NotBefore.Equal(t0.Add(-5*time.Minute)) || !renewed.NotAfter.Equal(t0.Add(CAValidity)) {
		t.Errorf("validity %s – %s, want backdated 5m, ten years", renewed.NotBefore, renewed.NotAfter)
	}
	if err := renewed.CheckSignatureFrom(renewed); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	// A leaf renewed from the renewed CA carries its key id as authority.
	fresh, err := Renew(leaf, key.Public(), &CA{Name: "ca", Cert: renewed, Key: ca.Key}, RenewOptions{Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("a leaf of the renewed CA: %v", err)
	}
	other := newCA(t, "kubernetes", t0.AddDate(-1, 0, 0), t0.AddDate(1, 0, 0))
	if _, err := RenewCA(&CA{Name: "ca", Cert: ca.Cert, Key: other.Key}, RenewOptions{Now: t0}); err == nil {
		t.Error("a key that is not the CA's was accepted")
	}
	if _, err := RenewCA(&CA{Name: "ca", Cert: ca.Cert}, RenewOptions{Now: t0}); err == nil {
		t.Error("an external CA (no key) was accepted")
	}
}
