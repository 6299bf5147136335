package inventory

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"

	"k8s.io/client-go/tools/clientcmd"
)

// staleCopy reports whether c is an older certificate of the CA ca: the
// same subject and key, other bytes, and an earlier end (what --renew-ca
// leaves behind wherever the old certificate was copied).
func staleCopy(c, ca *x509.Certificate) bool {
	return !bytes.Equal(c.Raw, ca.Raw) && bytes.Equal(c.RawSubject, ca.RawSubject) &&
		bytes.Equal(c.RawSubjectPublicKeyInfo, ca.RawSubjectPublicKeyInfo) && c.NotAfter.Before(ca.NotAfter)
}

// ReplaceTrust returns b with every stale copy of the CA certificate ca
// replaced by ca, and what was replaced; nil when b holds none. b is a PEM
// file (a ca.crt copy, a bundle) or a kubeconfig, whose
// certificate-authority-data (base64 of PEM) is replaced as base64 in
// place, so that nothing else of the file changes.
func ReplaceTrust(b []byte, ca *x509.Certificate) ([]byte, string) {
	if out := replacePEM(b, ca); out != nil {
		return out, "a PEM copy"
	}
	if !bytes.Contains(b, []byte("certificate-authority-data")) {
		return nil, ""
	}
	cfg, err := clientcmd.Load(b)
	if err != nil {
		return nil, ""
	}
	out, n := b, 0
	for _, cl := range cfg.Clusters {
		swapped := replacePEM(cl.CertificateAuthorityData, ca)
		if swapped == nil {
			continue
		}
		was := []byte(base64.StdEncoding.EncodeToString(cl.CertificateAuthorityData))
		if !bytes.Contains(out, was) {
			continue // not one base64 string in the file: left as it is (check reports it)
		}
		out = bytes.ReplaceAll(out, was, []byte(base64.StdEncoding.EncodeToString(swapped)))
		n++
	}
	if n == 0 {
		return nil, ""
	}
	return out, "certificate-authority-data"
}

// replacePEM replaces, in PEM data b, each stale copy of ca written as Go
// (and kubeadm, and openssl) write PEM; nil when there is none.
func replacePEM(b []byte, ca *x509.Certificate) []byte {
	out, changed := b, false
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil || !staleCopy(c, ca) {
			continue
		}
		enc := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: blk.Bytes})
		if bytes.Contains(out, enc) {
			out = bytes.ReplaceAll(out, enc, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}))
			changed = true
		}
	}
	if !changed {
		return nil
	}
	return out
}
