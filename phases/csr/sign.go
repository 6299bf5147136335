package csr

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"

	"github.com/kubecpr/kubecpr/recovery/pki"
)

var extUsage = map[certificatesv1.KeyUsage]x509.ExtKeyUsage{
	certificatesv1.UsageClientAuth: x509.ExtKeyUsageClientAuth,
	certificatesv1.UsageServerAuth: x509.ExtKeyUsageServerAuth,
}

var keyUsage = map[certificatesv1.KeyUsage]x509.KeyUsage{
	certificatesv1.UsageDigitalSignature: x509.KeyUsageDigitalSignature,
	certificatesv1.UsageKeyEncipherment:  x509.KeyUsageKeyEncipherment,
}

// Sign issues the certificate an approved CSR asks for, the way
// kube-controller-manager's signer does: subject and SANs from the request,
// usages from the spec, lifetime the smaller of expirationSeconds and max,
// capped at the CA's own expiry.
func Sign(ca *pki.CA, c *certificatesv1.CertificateSigningRequest, now time.Time, max time.Duration) ([]byte, error) {
	if ca == nil || ca.Key == nil {
		return nil, errors.New("the cluster CA key is not on this node: kubecpr cannot sign (external CA)")
	}
	blk, _ := pem.Decode(c.Spec.Request)
	if blk == nil {
		return nil, errors.New("spec.request is not PEM")
	}
	req, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, err
	}
	if max == 0 {
		max = 365 * 24 * time.Hour
	}
	life := max
	if c.Spec.ExpirationSeconds != nil {
		if d := time.Duration(*c.Spec.ExpirationSeconds) * time.Second; d < life {
			life = d
		}
	}
	notAfter := now.Add(life)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	serial, err := pki.NewSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: req.Subject, DNSNames: req.DNSNames, IPAddresses: req.IPAddresses,
		NotBefore: now.Add(-5 * time.Minute), NotAfter: notAfter, BasicConstraintsValid: true, AuthorityKeyId: ca.Cert.SubjectKeyId}
	tmpl.Subject.ExtraNames = nil
	for _, u := range c.Spec.Usages {
		if e, ok := extUsage[u]; ok {
			tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, e)
		}
		tmpl.KeyUsage |= keyUsage[u]
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, req.PublicKey, ca.Key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}
