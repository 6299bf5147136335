package csr

import (
	"context"
	"crypto/rand"
	"fmt"
	"math/big"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
)

// BootstrapKubeconfig is where the kubelet looks for its bootstrap
// kubeconfig on a kubeadm node (--bootstrap-kubeconfig).
const BootstrapKubeconfig = "/etc/kubernetes/bootstrap-kubelet.conf"

func randomString(n int) (string, error) {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	for i := range b {
		v, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			return "", err
		}
		b[i] = alphabet[v.Int64()]
	}
	return string(b), nil
}

// createBootstrapToken creates a short-lived bootstrap token (the kubeadm
// node-token group, so kubeadm's RBAC lets it file CSRs) and writes a
// bootstrap kubeconfig (0600) pointing at server. The token secret is
// never printed or journaled: it lives only in that file and in the API.
func createBootstrapToken(ctx context.Context, d pipeline.Data, cs kubernetes.Interface, server string, caPEM []byte, ttl time.Duration) (map[string]string, error) {
	id, err := randomString(6)
	if err != nil {
		return nil, err
	}
	secret, err := randomString(16)
	if err != nil {
		return nil, err
	}
	expires := time.Now().Add(ttl).UTC()
	_, err = cs.CoreV1().Secrets("kube-system").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-" + id, Namespace: "kube-system"},
		Type:       "bootstrap.kubernetes.io/token",
		StringData: map[string]string{"token-id": id, "token-secret": secret, "usage-bootstrap-authentication": "true",
			"auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token", "expiration": expires.Format(time.RFC3339),
			"description": "created by kubecpr for a kubelet that must re-bootstrap"},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating a bootstrap token: %w", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["tls-bootstrap-token-user"] = &clientcmdapi.AuthInfo{Token: id + "." + secret}
	cfg.Contexts["tls-bootstrap-token-user@kubernetes"] = &clientcmdapi.Context{Cluster: "kubernetes", AuthInfo: "tls-bootstrap-token-user"}
	cfg.CurrentContext = "tls-bootstrap-token-user@kubernetes"
	out, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, err
	}
	// Through the journal: backed up (or recorded absent), intent, atomic
	// write, done — rollback restores or removes it like any other file.
	op := node.FileOp{Path: BootstrapKubeconfig, Data: out, Mode: 0o600, Secret: true}
	if err := d.ApplyFiles(ctx, "csr", "csr/bootstrap-kubeconfig", []node.FileOp{op}); err != nil {
		return nil, err
	}
	fmt.Fprintf(d.Out(), "      wrote %s (0600): bootstrap token %s, valid until %s, for %s\n", BootstrapKubeconfig, id, expires.Format(time.RFC3339), server)
	return map[string]string{"bootstrap_token_id": id, "bootstrap_kubeconfig": BootstrapKubeconfig}, nil
}

// Undo has nothing left to do for the bootstrap kubeconfig: it was written
// as its own journaled file action (csr/bootstrap-kubeconfig), which
// rollback restores from the backup or removes. The token itself expires.
func Undo(ctx context.Context, d pipeline.Data, actionID string, facts map[string]string) error {
	return nil
}
