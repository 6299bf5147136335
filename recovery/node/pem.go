package node

import (
	"crypto/x509"
	"encoding/pem"
)

func nextCert(data []byte) (*x509.Certificate, []byte, bool) {
	for {
		b, rest := pem.Decode(data)
		if b == nil {
			return nil, nil, false
		}
		data = rest
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			continue
		}
		return c, rest, true
	}
}
