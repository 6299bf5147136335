package etcdsnap

import (
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kubecpr/kubecpr/recovery/pki"
)

// ClientCommonName is the subject CN of the client certificate Save mints.
// It shows in etcd's logs; with etcd authentication enabled it is also the
// etcd user the snapshot is asked as.
const ClientCommonName = "kubecpr-etcd-snapshot"

// Validity of the minted client certificate, on the real clock (see
// mintClient).
const (
	clientBackdate = 5 * time.Minute
	clientLifetime = 10 * time.Minute
)

// ErrCAExpired is wrapped by Save's error when the etcd CA is expired (or
// not yet valid) on the machine's real clock: etcd then refuses every client
// certificate the CA signs, so no snapshot can be taken over the network.
var ErrCAExpired = errors.New("the etcd CA is not valid on this machine's clock")

// etcdCA is the etcd CA as Save uses it: every certificate of the bundle
// is trusted to identify the etcd server; signer/key sign the client
// certificate.
type etcdCA struct {
	certs  []*x509.Certificate
	roots  *x509.CertPool
	signer *x509.Certificate
	key    crypto.Signer
}

// parseCA reads the etcd CA certificate(s) and key. Errors never quote the
// key.
func parseCA(certPEM, keyPEM []byte) (*etcdCA, error) {
	if len(certPEM) == 0 {
		return nil, errors.New("no etcd CA certificate given: pass the content of /etc/kubernetes/pki/etcd/ca.crt (the etcd manifest's --trusted-ca-file)")
	}
	if len(keyPEM) == 0 {
		return nil, errors.New("no etcd CA key given: pass the content of /etc/kubernetes/pki/etcd/ca.key " +
			"(without it kubecpr cannot sign a client certificate etcd accepts; on an external-CA node take the snapshot with etcdctl and a client certificate you have)")
	}
	certs, err := pki.ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("etcd CA certificate: %w", err)
	}
	key, err := pki.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("etcd CA key: %w", err)
	}
	ca := &etcdCA{certs: certs, roots: x509.NewCertPool(), key: key}
	for _, c := range certs {
		ca.roots.AddCert(c)
		if ca.signer == nil && pki.KeyMatches(c.PublicKey, key) {
			ca.signer = c
		}
	}
	if ca.signer == nil {
		return nil, errors.New("the etcd CA key does not belong to the etcd CA certificate: pass ca.crt and ca.key from the same directory (/etc/kubernetes/pki/etcd)")
	}
	if !ca.signer.IsCA || ca.signer.KeyUsage != 0 && ca.signer.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("the etcd CA certificate (CN %q) is not a CA certificate (no CA basic constraint or no certSign usage): pass /etc/kubernetes/pki/etcd/ca.crt",
			ca.signer.Subject.CommonName)
	}
	return ca, nil
}

// mintClient signs, in memory, a client certificate for a fresh ECDSA P-256
// key with the etcd CA. Neither the key nor the certificate is ever written
// anywhere; they live as long as the returned value.
//
// The validity is taken from the machine's real clock, never from the run's
// clock (Options.Now): etcd checks a client certificate against its own
// clock, the machine's, so a certificate dated at a rehearsal's --now a year
// ahead would be "not yet valid" to it. NotBefore is backdated a few minutes
// for small clock differences; NotAfter is ten minutes ahead, capped at the
// CA's own NotAfter: long enough to take the snapshot (TLS checks the
// certificate once, at the handshake, so a long download is not cut short),
// short enough that a copy, if one could ever be made, is worthless soon.
func mintClient(ca *etcdCA, realNow time.Time) (tls.Certificate, error) {
	if realNow.After(ca.signer.NotAfter) || realNow.Before(ca.signer.NotBefore) {
		return tls.Certificate{}, fmt.Errorf("%w: the etcd CA (CN %q) is valid from %s to %s and the clock says %s; "+
			"etcd refuses every client certificate it signs, so no snapshot can be taken over the network. "+
			"Check the clock (date, timedatectl), else see docs/expired-ca.md",
			ErrCAExpired, ca.signer.Subject.CommonName, ca.signer.NotBefore.UTC().Format(time.RFC3339),
			ca.signer.NotAfter.UTC().Format(time.RFC3339), realNow.UTC().Format(time.RFC3339))
	}
	key, err := pki.NewECKey()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating the snapshot client key: %w", err)
	}
	serial, err := pki.NewSerial()
	if err != nil {
		return tls.Certificate{}, err
	}
	notAfter := realNow.Add(clientLifetime)
	if notAfter.After(ca.signer.NotAfter) {
		notAfter = ca.signer.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: ClientCommonName},
		NotBefore:      realNow.Add(-clientBackdate).UTC(),
		NotAfter:       notAfter.UTC(),
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		AuthorityKeyId: ca.signer.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.signer, key.Public(), ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("signing the snapshot client certificate with the etcd CA: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	c := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	if onMint != nil {
		onMint(c)
	}
	return c, nil
}

// onMint, when set (by this package's tests only), sees each client
// certificate minted, so the tests can prove its key is written nowhere.
var onMint func(tls.Certificate)

// serverVerifier checks etcd's serving certificate. It records the last
// failure, so that an error gRPC reports only as "deadline exceeded" can
// still be explained.
type serverVerifier struct {
	ca       *etcdCA
	host     string // the loopback IP dialled: the certificate must name it
	endpoint string // for messages
	now      func() time.Time

	mu   sync.Mutex
	last error
}

// verifyConnection is the tls.Config.VerifyConnection of Save's client.
//
// Go's own verification is switched off (InsecureSkipVerify) because it
// would refuse the very case kubecpr exists for: etcd serving on a
// certificate that has expired. This check replaces it and keeps all of it
// but time: the certificate must have been signed by the etcd CA given
// (directly, as kubeadm does, or through intermediates the server sends),
// must name the loopback IP dialled, and must allow server authentication.
// The signature is the proof that the etcd CA's key issued it; validity
// dates prove nothing about who is on the other end, and on an expired
// node they are wrong by definition — even the CA certificate may be
// younger than the server certificate, when it was re-signed with its own
// key (docs/expired-ca.md). The client certificate is sent only after this
// check passes (in TLS 1.3 and 1.2 alike the client checks the server
// first), so it never reaches a server the etcd CA did not vouch for.
func (v *serverVerifier) verifyConnection(cs tls.ConnectionState) error {
	err := v.verify(cs.PeerCertificates)
	if err != nil {
		v.mu.Lock()
		v.last = err
		v.mu.Unlock()
	}
	return err
}

func (v *serverVerifier) where() string {
	if v.endpoint != "" {
		return v.endpoint
	}
	return v.host
}

func (v *serverVerifier) lastError() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.last
}

func (v *serverVerifier) verify(certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return fmt.Errorf("the server at %s presented no certificate", v.where())
	}
	leaf := certs[0]
	err := v.verifyDirect(leaf)
	if errors.Is(err, errNotDirect) {
		err = v.verifyChain(leaf, certs[1:])
	}
	if err == nil {
		return nil
	}
	what := "does not verify against the etcd CA given"
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		what = "is not signed by the etcd CA given"
	case errors.As(err, &hn):
		what = "is not valid for " + v.host
	case errors.As(err, &ci) && ci.Reason == x509.IncompatibleUsage:
		what = "is not a server certificate (no serverAuth usage)"
	}
	return &ServerCertError{Endpoint: v.where(), Subject: leaf.Subject.String(), Issuer: leaf.Issuer.String(), What: what, Err: err}
}

var errNotDirect = errors.New("not signed directly by the etcd CA")

// verifyDirect accepts a leaf signed by one of the etcd CA certificates
// (kubeadm's layout), whatever the dates of either. A CA with name
// constraints is left to verifyChain, which enforces them.
func (v *serverVerifier) verifyDirect(leaf *x509.Certificate) error {
	for _, ca := range v.ca.certs {
		if hasNameConstraints(ca) || leaf.CheckSignatureFrom(ca) != nil {
			continue
		}
		if err := leaf.VerifyHostname(v.host); err != nil {
			return err
		}
		if !serverUsage(leaf) {
			return x509.CertificateInvalidError{Cert: leaf, Reason: x509.IncompatibleUsage}
		}
		return nil
	}
	return errNotDirect
}

// verifyChain runs Go's full verification, through the intermediates the
// server sent, at an instant inside the leaf's validity period: the real
// clock when it is valid, else its NotAfter (expired) or NotBefore (not
// yet valid).
func (v *serverVerifier) verifyChain(leaf *x509.Certificate, rest []*x509.Certificate) error {
	inter := x509.NewCertPool()
	for _, c := range rest {
		inter.AddCert(c)
	}
	at := v.now()
	if at.After(leaf.NotAfter) {
		at = leaf.NotAfter
	}
	if at.Before(leaf.NotBefore) {
		at = leaf.NotBefore
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         v.ca.roots,
		Intermediates: inter,
		CurrentTime:   at,
		DNSName:       v.host,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}

func hasNameConstraints(c *x509.Certificate) bool {
	return len(c.PermittedDNSDomains)+len(c.ExcludedDNSDomains)+len(c.PermittedIPRanges)+len(c.ExcludedIPRanges)+
		len(c.PermittedEmailAddresses)+len(c.ExcludedEmailAddresses)+len(c.PermittedURIDomains)+len(c.ExcludedURIDomains) > 0
}

// serverUsage reports whether the certificate may authenticate a TLS
// server (no extended key usage at all means any, as in Go's verifier).
func serverUsage(c *x509.Certificate) bool {
	if len(c.ExtKeyUsage) == 0 && len(c.UnknownExtKeyUsage) == 0 {
		return true
	}
	for _, u := range c.ExtKeyUsage {
		if u == x509.ExtKeyUsageServerAuth || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

// ServerCertError reports that the server on the etcd endpoint could not
// prove it is etcd: its certificate does not chain to the etcd CA given
// (expiry aside). No client certificate was sent to it.
type ServerCertError struct {
	Endpoint        string
	Subject, Issuer string
	What            string
	Err             error
}

func (e *ServerCertError) Error() string {
	return fmt.Sprintf("the server at %s is not the etcd this CA vouches for: its certificate (subject %q, issuer %q) %s (%v); "+
		"check that the etcd CA given is the file named by the etcd manifest's --trusted-ca-file (normally /etc/kubernetes/pki/etcd/ca.crt) "+
		"and that the endpoint is this node's etcd; no client certificate was sent",
		e.Endpoint, e.Subject, e.Issuer, e.What, e.Err)
}

func (e *ServerCertError) Unwrap() error { return e.Err }

// tlsConfig is the client TLS configuration for one loopback endpoint.
func tlsConfig(client tls.Certificate, v *serverVerifier) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{client},
		// Go's verification is replaced by VerifyConnection, which checks
		// the chain to the etcd CA and ignores only the validity period of
		// the server's certificate: see serverVerifier.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection:   v.verifyConnection,
	}
}
