package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"os"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/phases/csr"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/cluster"
)

// BenchmarkApproveAndSign1000NodeCSRs: 1,000 pending kubelet client CSRs
// (filed with a bootstrap token) approved and signed by kubecpr's approver
// through a real kube-apiserver. Filing them is outside the timer.
func BenchmarkApproveAndSign1000NodeCSRs(b *testing.B) {
	ctx := context.Background()
	n := cluster.Kubeadm(b, cluster.Options{})
	n.StartEtcd(b)
	api := n.StartAPIServer(b)
	if err := n.WaitReady(ctx, b, "/etc/kubernetes/admin.conf", api); err != nil {
		b.Fatal(err)
	}
	prepareBootstrap(ctx, b, n)
	ca, _ := os.ReadFile(n.Path("/etc/kubernetes/pki/ca.crt"))
	fast := func(cfg *rest.Config) *kubernetes.Clientset {
		cfg.QPS, cfg.Burst, cfg.Timeout = 1000, 2000, 30*time.Second
		return kubernetes.NewForConfigOrDie(cfg)
	}
	boot := fast(&rest.Config{Host: fmt.Sprintf("https://127.0.0.1:%d", n.APIServerPort), BearerToken: tokenID + "." + tokenSecret,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca}})
	adminCfg, _ := clientcmd.BuildConfigFromFlags("", n.Path("/etc/kubernetes/super-admin.conf"))
	admin := fast(adminCfg)
	caCert, _ := pki.ParseCertificate(ca)
	kb, _ := os.ReadFile(n.Path("/etc/kubernetes/pki/ca.key"))
	caKey, _ := pki.ParsePrivateKey(kb)
	const count = 1000
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for j := 0; j < count; j++ {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			_, err := boot.CertificatesV1().CertificateSigningRequests().Create(ctx, &certificatesv1.CertificateSigningRequest{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bench-%d-%d", i, j)},
				Spec: certificatesv1.CertificateSigningRequestSpec{SignerName: csr.SignerClientKubelet, Request: csrPEM(key, "system:node:"+n.Name, nil, nil),
					Usages: []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}}}, metav1.CreateOptions{})
			if err != nil {
				b.Fatal(err)
			}
		}
		a := &csr.Approver{Client: admin, CA: &pki.CA{Name: "ca", Cert: caCert, Key: caKey}, Sign: csr.SignAlways,
			Policy: csr.Policy{Nodes: map[string]csr.Node{n.Name: {Name: n.Name}}}}
		b.StartTimer()
		res, err := a.Pass(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if len(res.Approved) != count || len(res.Signed) != count {
			b.Fatalf("approved %d, signed %d, want %d", len(res.Approved), len(res.Signed), count)
		}
		b.StopTimer()
		if err := admin.CertificatesV1().CertificateSigningRequests().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(count), "csrs/op")
}
