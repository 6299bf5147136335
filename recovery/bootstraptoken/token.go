// Package bootstraptoken makes the short-lived bootstrap tokens a kubelet
// uses to request a new client certificate (TLS bootstrap): a
// bootstrap-token-<id> Secret in kube-system, as `kubeadm token create`
// makes it, and the bootstrap-kubelet.conf that carries it.
//
// The token's secret half is never printed: Token's String shows the id
// only. It lives in the API (until it expires or is deleted) and in the
// 0600 files it is written to.
package bootstraptoken

import (
	"context"
	"crypto/rand"
	"fmt"
	"math/big"
	"regexp"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// NodeGroup is the extra group kubeadm's RBAC lets file node CSRs
// (system:bootstrappers:kubeadm:default-node-token).
const NodeGroup = "system:bootstrappers:kubeadm:default-node-token"

// Namespace and Secret type of bootstrap tokens.
const (
	Namespace  = "kube-system"
	SecretType = "bootstrap.kubernetes.io/token"
)

// Secrets is what Create and Delete ask of the API server (a
// *kube.Client does it).
type Secrets interface {
	CreateSecret(ctx context.Context, namespace string, s *corev1.Secret, opts metav1.CreateOptions) (*corev1.Secret, error)
	DeleteSecret(ctx context.Context, namespace, name string) error
}

// Token is a bootstrap token: ID is public (it names the Secret and the
// user system:bootstrap:<id>), Secret is not.
type Token struct {
	ID, Secret string
	Expires    time.Time
}

var format = regexp.MustCompile(`^([a-z0-9]{6})\.([a-z0-9]{16})$`)

// String shows the id only: the secret never reaches a log.
func (t Token) String() string { return t.ID + ".<secret>" }

// GoString is String, for %#v.
func (t Token) GoString() string { return t.String() }

// Value is the token as a kubelet presents it: "<id>.<secret>".
func (t Token) Value() string { return t.ID + "." + t.Secret }

// User is the user the API server authenticates the token as.
func (t Token) User() string { return "system:bootstrap:" + t.ID }

// Parse reads "<id>.<secret>" (surrounding space ignored).
func Parse(s string) (Token, error) {
	m := format.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return Token{}, fmt.Errorf("not a bootstrap token: want [a-z0-9]{6}.[a-z0-9]{16}")
	}
	return Token{ID: m[1], Secret: m[2]}, nil
}

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

// Generate makes a new random token expiring at expires.
func Generate(expires time.Time) (Token, error) {
	id, err := randomString(6)
	if err != nil {
		return Token{}, err
	}
	secret, err := randomString(16)
	if err != nil {
		return Token{}, err
	}
	return Token{ID: id, Secret: secret, Expires: expires.UTC().Truncate(time.Second)}, nil
}

// Create generates a token valid for ttl from now and creates its Secret:
// usable for authentication only, in kubeadm's node-token group, expiring
// (the API server refuses it afterwards; the token cleaner deletes it).
func Create(ctx context.Context, cs Secrets, now time.Time, ttl time.Duration, description string) (Token, error) {
	if ttl <= 0 {
		return Token{}, fmt.Errorf("bootstrap token lifetime %s: want a positive duration", ttl)
	}
	t, err := Generate(now.Add(ttl))
	if err != nil {
		return Token{}, err
	}
	_, err = cs.CreateSecret(ctx, Namespace, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-" + t.ID, Namespace: Namespace},
		Type:       SecretType,
		StringData: map[string]string{
			"token-id": t.ID, "token-secret": t.Secret,
			"usage-bootstrap-authentication": "true",
			"auth-extra-groups":              NodeGroup,
			"expiration":                     t.Expires.Format(time.RFC3339),
			"description":                    description,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return Token{}, fmt.Errorf("creating bootstrap token Secret %s/bootstrap-token-%s: %w", Namespace, t.ID, err)
	}
	return t, nil
}

// Delete removes the token's Secret: the token stops authenticating at
// once. An already deleted Secret is not an error.
func Delete(ctx context.Context, cs Secrets, id string) error {
	err := cs.DeleteSecret(ctx, Namespace, "bootstrap-token-"+id)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting bootstrap token Secret %s/bootstrap-token-%s: %w", Namespace, id, err)
	}
	return nil
}

// Kubeconfig renders a bootstrap-kubelet.conf as kubeadm writes it: the
// cluster's API server and CA, user tls-bootstrap-token-user with the
// token. It holds a secret: write it 0600.
func Kubeconfig(server string, caPEM []byte, t Token) ([]byte, error) {
	if server == "" || len(caPEM) == 0 {
		return nil, fmt.Errorf("a bootstrap kubeconfig needs the API server URL and the cluster CA")
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["tls-bootstrap-token-user"] = &clientcmdapi.AuthInfo{Token: t.Value()}
	cfg.Contexts["tls-bootstrap-token-user@kubernetes"] = &clientcmdapi.Context{Cluster: "kubernetes", AuthInfo: "tls-bootstrap-token-user"}
	cfg.CurrentContext = "tls-bootstrap-token-user@kubernetes"
	return clientcmd.Write(*cfg)
}
