// Package e2e recovers nodes made by real kubeadm, served by real etcd and
// kube-apiserver processes, with the real kubecpr binary.
package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/test/cluster"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

func kubecprBin(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kubecpr-e2e-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "kubecpr")
		out, err := exec.Command("go", "build", "-o", binPath, "../../cmd/kubecpr").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

type result struct {
	code           int
	stdout, stderr string
}

func kubecpr(t testing.TB, n *cluster.Node, args ...string) result {
	t.Helper()
	cmd := exec.Command(kubecprBin(t), append([]string{"--root", n.Root}, args...)...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
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
