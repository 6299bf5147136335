// Package pki reads, checks and re-issues the certificates of a kubeadm node
// with Go's crypto/x509 and the profiles kubeadm uses. Renewal re-issues from
// the old certificate (subject, SANs, usages), never from configuration.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"
	"time"

	"github.com/kubecpr/kubecpr/recovery/parsecache"
)

// PEM block types.
const (
	BlockCertificate = "CERTIFICATE"
	BlockRSAKey      = "RSA PRIVATE KEY"
	BlockECKey       = "EC PRIVATE KEY"
	BlockPKCS8Key    = "PRIVATE KEY"
	BlockPublicKey   = "PUBLIC KEY"
	BlockCSR         = "CERTIFICATE REQUEST"
)

// ErrNoCertificate is returned when PEM data holds no certificate block.
var ErrNoCertificate = errors.New("no CERTIFICATE PEM block found")

// ErrNoKey is returned when PEM data holds no private key block.
var ErrNoKey = errors.New("no private key PEM block found")

// ParseCertificates decodes every CERTIFICATE block in data, in order.
// Other block types (a key in a combined kubelet pem) are ignored.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != BlockCertificate {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate #%d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		if len(bytes.TrimSpace(data)) > 0 && !bytes.Contains(data, []byte("-----BEGIN")) {
			return nil, fmt.Errorf("%w (the file is not PEM: corrupt or truncated?)", ErrNoCertificate)
		}
		return nil, ErrNoCertificate
	}
	return certs, nil
}

// ParseCertificate returns the first certificate in data.
func ParseCertificate(data []byte) (*x509.Certificate, error) {
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// keys remembers parsed private keys by content (validating and
// precomputing an RSA key costs about a millisecond; a run reads each key
// several times).
var keys parsecache.Cache[crypto.Signer]

// ParsePrivateKey decodes the first private key block in data (PKCS#1,
// SEC 1 or PKCS#8). Errors never include key bytes. The key returned may
// be shared with other callers that parsed the same bytes: it is never
// to be changed.
func ParsePrivateKey(data []byte) (crypto.Signer, error) { return keys.Get(data, parsePrivateKey) }

func parsePrivateKey(data []byte) (crypto.Signer, error) {
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, ErrNoKey
		}
		switch b.Type {
		case BlockRSAKey:
			k, err := x509.ParsePKCS1PrivateKey(b.Bytes)
			if err != nil {
				return nil, errors.New("RSA private key block does not parse (corrupt?)")
			}
			return k, nil
		case BlockECKey:
			k, err := x509.ParseECPrivateKey(b.Bytes)
			if err != nil {
				return nil, errors.New("EC private key block does not parse (corrupt?)")
			}
			return k, nil
		case BlockPKCS8Key:
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, errors.New("PKCS#8 private key block does not parse (corrupt?)")
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("unsupported private key type %T", k)
			}
			return s, nil
		}
	}
}

// EncodeCertificate returns the PEM encoding of cert.
func EncodeCertificate(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: BlockCertificate, Bytes: cert.Raw})
}

// EncodeKey returns the PEM encoding of key in the form kubeadm and the
// kubelet write: PKCS#1 for RSA, SEC 1 for ECDSA, PKCS#8 otherwise.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: BlockRSAKey, Bytes: x509.MarshalPKCS1PrivateKey(k)}), nil
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: BlockECKey, Bytes: der}), nil
	default:
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: BlockPKCS8Key, Bytes: der}), nil
	}
}

// KeyMatches reports whether key is the private half of pub.
func KeyMatches(pub crypto.PublicKey, key crypto.Signer) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := key.Public().(equaler)
	return ok && e.Equal(pub)
}

// NewKeyLike generates a fresh key of the same algorithm and size as pub.
func NewKeyLike(pub crypto.PublicKey) (crypto.Signer, error) {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		return rsa.GenerateKey(rand.Reader, p.N.BitLen())
	case *ecdsa.PublicKey:
		return ecdsa.GenerateKey(p.Curve, rand.Reader)
	case ed25519.PublicKey:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("unsupported public key type %T", pub)
}

// NewECKey returns a P-256 key, the kubelet's client key type.
func NewECKey() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

// KeyDescription is "RSA 2048", "ECDSA P-256", ... for reports.
func KeyDescription(pub crypto.PublicKey) string {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", p.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA " + p.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// CA is a certificate authority loaded from disk. Key is nil for an
// externally managed CA (certificate without key).
type CA struct {
	Name string
	Cert *x509.Certificate
	Key  crypto.Signer
}

// External reports whether the CA key is absent.
func (ca *CA) External() bool { return ca.Key == nil }

// Verify checks that cert was signed by this CA (signature and issuer).
// Validity periods are not checked here: expiry is reported separately.
func (ca *CA) Verify(cert *x509.Certificate) error {
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		return fmt.Errorf("not signed by %s CA (%s): %w", ca.Name, ca.Cert.Subject.CommonName, err)
	}
	return nil
}

// RenewOptions select the validity of a re-issued certificate.
type RenewOptions struct {
	Now      time.Time
	Validity time.Duration // default 365 days
	Backdate time.Duration // NotBefore = Now - Backdate; default 5 minutes
}

// Renew issues a new certificate for pub with the subject, SANs, key usages,
// extended key usages and basic constraints of old, signed by ca, valid from
// Now-Backdate for Validity (capped at the CA's own NotAfter, as a CA cannot
// vouch past its own life). It returns the parsed certificate.
func Renew(old *x509.Certificate, pub crypto.PublicKey, ca *CA, o RenewOptions) (*x509.Certificate, error) {
	if ca.Key == nil {
		return nil, fmt.Errorf("the %s CA key is not on this node (external CA): cannot sign", ca.Name)
	}
	if o.Validity == 0 {
		o.Validity = 365 * 24 * time.Hour
	}
	if o.Backdate == 0 {
		o.Backdate = 5 * time.Minute
	}
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	notAfter := o.Now.Add(o.Validity).UTC()
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               old.Subject,
		NotBefore:             o.Now.Add(-o.Backdate).UTC(),
		NotAfter:              notAfter,
		KeyUsage:              old.KeyUsage,
		ExtKeyUsage:           old.ExtKeyUsage,
		UnknownExtKeyUsage:    old.UnknownExtKeyUsage,
		BasicConstraintsValid: old.BasicConstraintsValid,
		IsCA:                  false,
		DNSNames:              old.DNSNames,
		IPAddresses:           old.IPAddresses,
		EmailAddresses:        old.EmailAddresses,
		URIs:                  old.URIs,
		AuthorityKeyId:        ca.Cert.SubjectKeyId,
	}
	// Do not carry the old Subject's raw encoding: Subject is re-encoded
	// from the parsed names, the way kubeadm's renewal does.
	tmpl.Subject.ExtraNames = nil
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("signing with the %s CA: %w", ca.Name, err)
	}
	return x509.ParseCertificate(der)
}

// NewSerial returns a random positive serial below 2^63, as kubeadm does.
func NewSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).SetInt64(math.MaxInt64-1))
	if err != nil {
		return nil, err
	}
	return n.Add(n, big.NewInt(1)), nil
}

// SHA256 returns the hex sha256 of data.
func SHA256(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// Status of a certificate at a given time.
type Status string

const (
	StatusOK          Status = "ok"
	StatusExpiring    Status = "expiring"
	StatusExpired     Status = "expired"
	StatusNotYetValid Status = "not-yet-valid"
	StatusMissing     Status = "missing"
	StatusInvalid     Status = "invalid"
)

// Severity orders statuses for exit codes: 0 ok, 1 expiring, 2 bad.
func (s Status) Severity() int {
	switch s {
	case StatusOK:
		return 0
	case StatusExpiring:
		return 1
	}
	return 2
}

// StatusAt classifies cert at now with a warning window.
func StatusAt(cert *x509.Certificate, now time.Time, warn time.Duration) Status {
	switch {
	case now.Before(cert.NotBefore):
		return StatusNotYetValid
	case !now.Before(cert.NotAfter):
		return StatusExpired
	case cert.NotAfter.Sub(now) <= warn:
		return StatusExpiring
	}
	return StatusOK
}

// ParsePublicKey decodes a PEM "PUBLIC KEY" (PKIX), as kubeadm writes sa.pub.
func ParsePublicKey(data []byte) (crypto.PublicKey, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != BlockPublicKey {
		return nil, errors.New("no PUBLIC KEY PEM block found")
	}
	return x509.ParsePKIXPublicKey(b.Bytes)
}

// SelfSignedServing re-creates the kubelet's self-signed serving
// certificate the way the kubelet makes it when serverTLSBootstrap is off:
// a throwaway CA "<host>-ca@<unix>" signs "<host>@<unix>" for the existing
// key, with the SANs of the old certificate, valid one year. It returns the
// PEM chain (certificate, then CA) the kubelet writes to kubelet.crt.
//
// The throwaway CA's key is ECDSA P-256 where the kubelet makes an RSA
// 2048 one: it signs this one certificate and is then dropped (never
// written anywhere), nobody verifies against it, and generating an RSA
// 2048 key costs ~100 ms — a third of an offline run — where P-256 costs
// microseconds (and is stronger). The leaf keeps the node's key.
func SelfSignedServing(old *x509.Certificate, key crypto.Signer, host string, now time.Time) ([]byte, *x509.Certificate, error) {
	caKey, err := NewECKey()
	if err != nil {
		return nil, nil, err
	}
	stamp := now.Unix()
	notBefore, notAfter := now.Add(-5*time.Minute).UTC(), now.Add(365*24*time.Hour).UTC()
	caSerial, err := NewSerial()
	if err != nil {
		return nil, nil, err
	}
	caTmpl := &x509.Certificate{SerialNumber: caSerial, Subject: pkix.Name{CommonName: fmt.Sprintf("%s-ca@%d", host, stamp)},
		NotBefore: notBefore, NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, err
	}
	serial, err := NewSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: fmt.Sprintf("%s@%d", host, stamp)},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: old.KeyUsage, ExtKeyUsage: old.ExtKeyUsage,
		BasicConstraintsValid: true, DNSNames: old.DNSNames, IPAddresses: old.IPAddresses}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return append(EncodeCertificate(cert), EncodeCertificate(caCert)...), cert, nil
}

// KubeletClientTemplate is the subject and usages of a kubelet's client
// certificate for node name, as the kubelet requests it and the
// kube-controller-manager signs it: CN system:node:NAME, O system:nodes,
// digital signature, client auth.
func KubeletClientTemplate(nodeName string) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// KubeletClientBundle signs a new kubelet client certificate for nodeName
// with a new ECDSA P-256 key (what the kubelet itself makes) and returns
// them as one PEM bundle, certificate first: the layout of the kubelet's
// kubelet-client-<date>.pem. The bundle holds a private key: write it 0600.
func KubeletClientBundle(ca *CA, nodeName string, o RenewOptions) ([]byte, *x509.Certificate, error) {
	key, err := NewECKey()
	if err != nil {
		return nil, nil, err
	}
	cert, err := Renew(KubeletClientTemplate(nodeName), key.Public(), ca, o)
	if err != nil {
		return nil, nil, err
	}
	kp, err := EncodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return append(EncodeCertificate(cert), kp...), cert, nil
}

// NewKeyForAlgorithm makes a key of one of kubeadm's encryptionAlgorithm
// values (RSA-2048, RSA-3072, RSA-4096, ECDSA-P256, ECDSA-P384).
func NewKeyForAlgorithm(algorithm string) (crypto.Signer, error) {
	switch algorithm {
	case "RSA-2048":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "RSA-3072":
		return rsa.GenerateKey(rand.Reader, 3072)
	case "RSA-4096":
		return rsa.GenerateKey(rand.Reader, 4096)
	case "ECDSA-P256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ECDSA-P384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	}
	return nil, fmt.Errorf("encryptionAlgorithm %q is not one kubeadm knows (RSA-2048, RSA-3072, RSA-4096, ECDSA-P256, ECDSA-P384)", algorithm)
}

// AlgorithmDescription says what NewKeyForAlgorithm makes, for plans.
func AlgorithmDescription(algorithm string) string {
	if a, ok := strings.CutPrefix(algorithm, "ECDSA-"); ok {
		return "ECDSA " + a[:1] + "-" + a[1:]
	}
	return strings.Replace(algorithm, "-", " ", 1)
}

// CAValidity is kubeadm's default CA lifetime (caCertificateValidityPeriod:
// 87600h, ten years).
const CAValidity = 10 * 365 * 24 * time.Hour

// RenewCA re-issues the CA certificate of ca, self-signed with its own
// key: the same subject (byte for byte, so every certificate it signed
// still names it as issuer), subject key id, key usages, basic
// constraints and path length; a new serial; valid from Now-Backdate for
// Validity (default CAValidity). Every certificate signed by the old one
// verifies against the new one, and the hash of its public key (kubeadm's
// --discovery-token-ca-cert-hash) is unchanged.
func RenewCA(ca *CA, o RenewOptions) (*x509.Certificate, error) {
	if ca.Key == nil {
		return nil, fmt.Errorf("the %s CA key is not on this node (external CA): its certificate cannot be renewed here", ca.Name)
	}
	old := ca.Cert
	if !old.IsCA {
		return nil, fmt.Errorf("the %s CA certificate (%s) is not a CA (basic constraints)", ca.Name, old.Subject.CommonName)
	}
	if !KeyMatches(old.PublicKey, ca.Key) {
		return nil, fmt.Errorf("the %s CA key does not match its certificate (%s)", ca.Name, old.Subject.CommonName)
	}
	if o.Validity == 0 {
		o.Validity = CAValidity
	}
	if o.Backdate == 0 {
		o.Backdate = 5 * time.Minute
	}
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	skid := old.SubjectKeyId
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		RawSubject:            old.RawSubject,
		NotBefore:             o.Now.Add(-o.Backdate).UTC(),
		NotAfter:              o.Now.Add(o.Validity).UTC(),
		KeyUsage:              old.KeyUsage,
		ExtKeyUsage:           old.ExtKeyUsage,
		UnknownExtKeyUsage:    old.UnknownExtKeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            old.MaxPathLen,
		MaxPathLenZero:        old.MaxPathLenZero,
		SubjectKeyId:          skid,
		DNSNames:              old.DNSNames,
	}
	// (An old certificate without a subject key id gets one computed from
	// the key: leaves without an authority key id verify either way.)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, ca.Key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("re-issuing the %s CA certificate: %w", ca.Name, err)
	}
	return x509.ParseCertificate(der)
}

// PublicKeyPin is kubeadm's --discovery-token-ca-cert-hash of a
// certificate: "sha256:" and the hex sha256 of its SubjectPublicKeyInfo.
func PublicKeyPin(cert *x509.Certificate) string {
	s := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(s[:])
}
