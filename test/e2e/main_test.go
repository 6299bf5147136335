// Package e2e recovers nodes made by real kubeadm, served by real etcd and
// kube-apiserver processes, with the real kubecpr binary.
package e2e

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/kubecprbin"
)

type result struct {
	code           int
	stdout, stderr string
}

func kubecpr(t testing.TB, n *cluster.Node, args ...string) result {
	t.Helper()
	r := kubecprbin.Run(t, nil, append([]string{"--root", n.Root}, args...)...)
	return result{code: r.Code, stdout: r.Stdout, stderr: r.Stderr}
}

// kubeadmExpiration is `kubeadm certs check-expiration -o json`.
type kubeadmExpiration struct {
	Certificates []struct {
		Name           string    `json:"name"`
		ExpirationDate time.Time `json:"expirationDate"`
		ResidualTime   int64     `json:"residualTime"`
		CAName         string    `json:"caName"`
		Missing        bool      `json:"missing"`
	} `json:"certificates"`
	CertificateAuthorities []struct {
		Name           string    `json:"name"`
		ExpirationDate time.Time `json:"expirationDate"`
	} `json:"certificateAuthorities"`
}

func kubeadmCheck(t *testing.T, n *cluster.Node) kubeadmExpiration {
	t.Helper()
	out, err := n.Kubeadm(t, "certs", "check-expiration", "--config", "/tmp/kubeadm.yaml", "-o", "json")
	if err != nil {
		t.Fatalf("kubeadm certs check-expiration: %v\n%s", err, out)
	}
	var exp kubeadmExpiration
	if err := json.Unmarshal([]byte(out[bytes.IndexByte([]byte(out), '{'):]), &exp); err != nil {
		t.Fatalf("kubeadm json: %v\n%s", err, out)
	}
	return exp
}
