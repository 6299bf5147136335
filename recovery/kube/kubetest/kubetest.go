// Package kubetest adapts client-go's typed clientset, real or fake
// (k8s.io/client-go/kubernetes/fake), to kube.Interface, for tests.
//
// It imports the clientset that recovery/kube exists to keep out of the
// kubecpr binary: import it from _test.go files and test/ only.
package kubetest

import (
	"context"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/kubernetes"

	"github.com/kubecpr/kubecpr/recovery/kube"
)

// Clientset is kube.Interface over a clientset.
type Clientset struct{ kubernetes.Interface }

var _ kube.Interface = Clientset{}

// New adapts cs.
func New(cs kubernetes.Interface) Clientset { return Clientset{cs} }

func (c Clientset) CreateSecret(ctx context.Context, namespace string, s *corev1.Secret, opts metav1.CreateOptions) (*corev1.Secret, error) {
	return c.CoreV1().Secrets(namespace).Create(ctx, s, opts)
}

func (c Clientset) GetSecret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	return c.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (c Clientset) UpdateSecret(ctx context.Context, namespace string, s *corev1.Secret, opts metav1.UpdateOptions) (*corev1.Secret, error) {
	return c.CoreV1().Secrets(namespace).Update(ctx, s, opts)
}

func (c Clientset) DeleteSecret(ctx context.Context, namespace, name string) error {
	return c.CoreV1().Secrets(namespace).Delete(ctx, name, metav1.DeleteOptions{})
}

func (c Clientset) GetNamespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	return c.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
}

func (c Clientset) ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	return c.CoreV1().Nodes().List(ctx, opts)
}

func (c Clientset) ListCSRs(ctx context.Context, opts metav1.ListOptions) (*certificatesv1.CertificateSigningRequestList, error) {
	return c.CertificatesV1().CertificateSigningRequests().List(ctx, opts)
}

func (c Clientset) GetCSR(ctx context.Context, name string) (*certificatesv1.CertificateSigningRequest, error) {
	return c.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
}

func (c Clientset) UpdateCSRApproval(ctx context.Context, r *certificatesv1.CertificateSigningRequest, opts metav1.UpdateOptions) (*certificatesv1.CertificateSigningRequest, error) {
	return c.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, r.Name, r, opts)
}

func (c Clientset) UpdateCSRStatus(ctx context.Context, r *certificatesv1.CertificateSigningRequest, opts metav1.UpdateOptions) (*certificatesv1.CertificateSigningRequest, error) {
	return c.CertificatesV1().CertificateSigningRequests().UpdateStatus(ctx, r, opts)
}

func (c Clientset) CreateSelfSubjectReview(ctx context.Context, r *authenticationv1.SelfSubjectReview, opts metav1.CreateOptions) (*authenticationv1.SelfSubjectReview, error) {
	return c.AuthenticationV1().SelfSubjectReviews().Create(ctx, r, opts)
}

func (c Clientset) PatchDaemonSet(ctx context.Context, namespace, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions) error {
	_, err := c.AppsV1().DaemonSets(namespace).Patch(ctx, name, pt, data, opts)
	return err
}

// Readyz is "ok" for a fake clientset (its discovery has no REST client).
func (c Clientset) Readyz(ctx context.Context) ([]byte, error) {
	rc := c.Discovery().RESTClient()
	if rc == nil {
		return []byte("ok"), nil
	}
	return rc.Get().AbsPath("/readyz").DoRaw(ctx)
}

func (c Clientset) ServerVersion(ctx context.Context) (*version.Info, error) {
	return c.Discovery().ServerVersion()
}
