package pki

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"runtime"
	"sync"
	"testing"
	"time"
)

func benchCA(b *testing.B) *CA {
	b.Helper()
	// kubeadm's cluster CA is RSA 2048: signing with it is the cost.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		b.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{Name: "ca", Cert: cert, Key: key}
}

// BenchmarkKubeletClientBundles5000: the driving node signs the kubelet
// client bundles of 5,000 workers (`kubecpr cluster`, --workers bundle):
// one op is all 5,000.
func BenchmarkKubeletClientBundles5000(b *testing.B) {
	ca := benchCA(b)
	now := time.Now()
	for i := 0; i < b.N; i++ {
		// As the driver does: workers in parallel (one signer per core).
		work := make(chan int)
		var wg sync.WaitGroup
		for g := 0; g < runtime.GOMAXPROCS(0); g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for w := range work {
					if _, _, err := KubeletClientBundle(ca, fmt.Sprintf("worker-%d", w), RenewOptions{Now: now}); err != nil {
						b.Error(err)
					}
				}
			}()
		}
		for w := 0; w < 5000; w++ {
			work <- w
		}
		close(work)
		wg.Wait()
	}
}
