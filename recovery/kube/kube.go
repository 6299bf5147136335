// Package kube is kubecpr's Kubernetes API client: exactly the requests
// kubecpr makes (Secrets, Namespaces, Nodes, CSRs, SelfSubjectReviews, a
// DaemonSet patch, /readyz and /version) over client-go's REST client,
// with a scheme that knows only the API groups they use.
//
// It exists for start-up time: client-go's typed clientset
// (k8s.io/client-go/kubernetes) links every API group, its apply
// configurations and their OpenAPI models — about half of the binary and
// a fifth of the time `kubecpr --version` takes, for the handful of calls
// here. The requests are the ones the clientset makes: same paths, query
// parameters and bodies, protobuf preferred for the built-in types (the
// clientset's default too; a rest.Config with a ContentType overrides
// it), the same rate limits and timeouts, and the same
// k8s.io/apimachinery/pkg/api/errors errors (IsNotFound, IsConflict, ...).
//
// Test code may keep using the clientset and its fake through
// recovery/kube/kubetest, which implements Interface over it.
package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

// Interface is every request kubecpr makes of an API server. Consumers
// take the part they use as an interface of their own; *Client and
// kubetest's adapter implement all of it.
type Interface interface {
	CreateSecret(ctx context.Context, namespace string, s *corev1.Secret, opts metav1.CreateOptions) (*corev1.Secret, error)
	GetSecret(ctx context.Context, namespace, name string) (*corev1.Secret, error)
	UpdateSecret(ctx context.Context, namespace string, s *corev1.Secret, opts metav1.UpdateOptions) (*corev1.Secret, error)
	DeleteSecret(ctx context.Context, namespace, name string) error
	GetNamespace(ctx context.Context, name string) (*corev1.Namespace, error)
	ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error)

	ListCSRs(ctx context.Context, opts metav1.ListOptions) (*certificatesv1.CertificateSigningRequestList, error)
	GetCSR(ctx context.Context, name string) (*certificatesv1.CertificateSigningRequest, error)
	UpdateCSRApproval(ctx context.Context, c *certificatesv1.CertificateSigningRequest, opts metav1.UpdateOptions) (*certificatesv1.CertificateSigningRequest, error)
	UpdateCSRStatus(ctx context.Context, c *certificatesv1.CertificateSigningRequest, opts metav1.UpdateOptions) (*certificatesv1.CertificateSigningRequest, error)

	CreateSelfSubjectReview(ctx context.Context, r *authenticationv1.SelfSubjectReview, opts metav1.CreateOptions) (*authenticationv1.SelfSubjectReview, error)

	PatchDaemonSet(ctx context.Context, namespace, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions) error

	Readyz(ctx context.Context) ([]byte, error)
	ServerVersion(ctx context.Context) (*version.Info, error)
}

var _ Interface = (*Client)(nil)

// appsV1 is apps/v1, of which only a patch is sent: no types are
// registered for it (the response is not decoded), only the options.
var appsV1 = schema.GroupVersion{Group: "apps", Version: "v1"}

// scheme holds the types of the API groups the requests use and the
// options of every group they go to, as client-go's scheme registers them.
var (
	scheme         = runtime.NewScheme()
	codecs         = serializer.NewCodecFactory(scheme)
	parameterCodec = runtime.NewParameterCodec(scheme)
)

func init() {
	utilruntime.Must(corev1.AddToScheme(scheme))
	utilruntime.Must(certificatesv1.AddToScheme(scheme))
	utilruntime.Must(authenticationv1.AddToScheme(scheme))
	metav1.AddToGroupVersion(scheme, appsV1)
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
}

// Client is an API client for the requests of Interface. Build it with
// New; it is safe for concurrent use.
type Client struct {
	core, certificates, authentication, apps *rest.RESTClient
	raw                                      *rest.RESTClient // unversioned: /readyz, /version
}

// New builds a client from cfg as kubernetes.NewForConfig builds a
// clientset: one transport shared by every API group and, when cfg sets a
// QPS and no RateLimiter, one token bucket shared by them all.
func New(cfg *rest.Config) (*Client, error) {
	c := *cfg
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	httpClient, err := rest.HTTPClientFor(&c)
	if err != nil {
		return nil, err
	}
	if c.RateLimiter == nil && c.QPS > 0 {
		if c.Burst <= 0 {
			return nil, fmt.Errorf("burst is required to be greater than 0 when RateLimiter is not set and QPS is set to greater than 0")
		}
		c.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(c.QPS, c.Burst)
	}
	group := func(gv schema.GroupVersion, apiPath string) (*rest.RESTClient, error) {
		g := c
		g.GroupVersion = &gv
		g.APIPath = apiPath
		g.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(scheme, codecs).WithoutConversion()
		return rest.RESTClientForConfigAndClient(&g, httpClient)
	}
	var k Client
	if k.core, err = group(corev1.SchemeGroupVersion, "/api"); err != nil {
		return nil, err
	}
	if k.certificates, err = group(certificatesv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	if k.authentication, err = group(authenticationv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	if k.apps, err = group(appsV1, "/apis"); err != nil {
		return nil, err
	}
	// As client-go's discovery client sets itself up.
	r := c
	r.APIPath, r.GroupVersion = "", nil
	if r.Timeout == 0 {
		r.Timeout = 32 * time.Second
	}
	if r.Burst == 0 {
		r.Burst = 300
	}
	r.NegotiatedSerializer = serializer.NegotiatedSerializerWrapper(runtime.SerializerInfo{Serializer: runtime.NoopEncoder{Decoder: codecs.UniversalDecoder()}})
	if k.raw, err = rest.UnversionedRESTClientForConfigAndClient(&r, httpClient); err != nil {
		return nil, err
	}
	return &k, nil
}

// CreateSecret creates a Secret in namespace.
func (k *Client) CreateSecret(ctx context.Context, namespace string, s *corev1.Secret, opts metav1.CreateOptions) (*corev1.Secret, error) {
	out := &corev1.Secret{}
	err := k.core.Post().UseProtobufAsDefault().Namespace(namespace).Resource("secrets").
		VersionedParams(&opts, parameterCodec).Body(s).Do(ctx).Into(out)
	return out, err
}

// GetSecret reads a Secret.
func (k *Client) GetSecret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	out := &corev1.Secret{}
	err := k.core.Get().UseProtobufAsDefault().Namespace(namespace).Resource("secrets").Name(name).
		VersionedParams(&metav1.GetOptions{}, parameterCodec).Do(ctx).Into(out)
	return out, err
}

// UpdateSecret replaces a Secret (optimistically: s carries the
// resourceVersion it was read at).
func (k *Client) UpdateSecret(ctx context.Context, namespace string, s *corev1.Secret, opts metav1.UpdateOptions) (*corev1.Secret, error) {
	out := &corev1.Secret{}
	err := k.core.Put().UseProtobufAsDefault().Namespace(namespace).Resource("secrets").Name(s.Name).
		VersionedParams(&opts, parameterCodec).Body(s).Do(ctx).Into(out)
	return out, err
}

// DeleteSecret deletes a Secret.
func (k *Client) DeleteSecret(ctx context.Context, namespace, name string) error {
	return k.core.Delete().UseProtobufAsDefault().Namespace(namespace).Resource("secrets").Name(name).
		Body(&metav1.DeleteOptions{}).Do(ctx).Error()
}

// GetConfigMap reads a ConfigMap.
func (k *Client) GetConfigMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error) {
	out := &corev1.ConfigMap{}
	err := k.core.Get().UseProtobufAsDefault().Namespace(namespace).Resource("configmaps").Name(name).
		VersionedParams(&metav1.GetOptions{}, parameterCodec).Do(ctx).Into(out)
	return out, err
}

// UpdateConfigMap replaces a ConfigMap (optimistically: c carries the
// resourceVersion it was read at).
func (k *Client) UpdateConfigMap(ctx context.Context, namespace string, c *corev1.ConfigMap, opts metav1.UpdateOptions) (*corev1.ConfigMap, error) {
	out := &corev1.ConfigMap{}
	err := k.core.Put().UseProtobufAsDefault().Namespace(namespace).Resource("configmaps").Name(c.Name).
		VersionedParams(&opts, parameterCodec).Body(c).Do(ctx).Into(out)
	return out, err
}

// GetNamespace reads a Namespace.
func (k *Client) GetNamespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	out := &corev1.Namespace{}
	err := k.core.Get().UseProtobufAsDefault().Resource("namespaces").Name(name).
		VersionedParams(&metav1.GetOptions{}, parameterCodec).Do(ctx).Into(out)
	return out, err
}

// ListNodes lists Nodes.
func (k *Client) ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	out := &corev1.NodeList{}
	err := k.core.Get().UseProtobufAsDefault().Resource("nodes").
		VersionedParams(&opts, parameterCodec).Timeout(listTimeout(opts)).Do(ctx).Into(out)
	return out, err
}

// ListCSRs lists CertificateSigningRequests (one page of opts.Limit).
func (k *Client) ListCSRs(ctx context.Context, opts metav1.ListOptions) (*certificatesv1.CertificateSigningRequestList, error) {
	out := &certificatesv1.CertificateSigningRequestList{}
	err := k.certificates.Get().UseProtobufAsDefault().Resource("certificatesigningrequests").
		VersionedParams(&opts, parameterCodec).Timeout(listTimeout(opts)).Do(ctx).Into(out)
	return out, err
}

// GetCSR reads a CertificateSigningRequest.
func (k *Client) GetCSR(ctx context.Context, name string) (*certificatesv1.CertificateSigningRequest, error) {
	out := &certificatesv1.CertificateSigningRequest{}
	err := k.certificates.Get().UseProtobufAsDefault().Resource("certificatesigningrequests").Name(name).
		VersionedParams(&metav1.GetOptions{}, parameterCodec).Do(ctx).Into(out)
	return out, err
}

// UpdateCSRApproval writes c's conditions (the approval subresource).
func (k *Client) UpdateCSRApproval(ctx context.Context, c *certificatesv1.CertificateSigningRequest, opts metav1.UpdateOptions) (*certificatesv1.CertificateSigningRequest, error) {
	return k.updateCSR(ctx, c, "approval", opts)
}

// UpdateCSRStatus writes c's status: its certificate.
func (k *Client) UpdateCSRStatus(ctx context.Context, c *certificatesv1.CertificateSigningRequest, opts metav1.UpdateOptions) (*certificatesv1.CertificateSigningRequest, error) {
	return k.updateCSR(ctx, c, "status", opts)
}

func (k *Client) updateCSR(ctx context.Context, c *certificatesv1.CertificateSigningRequest, sub string, opts metav1.UpdateOptions) (*certificatesv1.CertificateSigningRequest, error) {
	out := &certificatesv1.CertificateSigningRequest{}
	err := k.certificates.Put().UseProtobufAsDefault().Resource("certificatesigningrequests").Name(c.Name).SubResource(sub).
		VersionedParams(&opts, parameterCodec).Body(c).Do(ctx).Into(out)
	return out, err
}

// CreateSelfSubjectReview asks who the client's credential authenticates as.
func (k *Client) CreateSelfSubjectReview(ctx context.Context, r *authenticationv1.SelfSubjectReview, opts metav1.CreateOptions) (*authenticationv1.SelfSubjectReview, error) {
	out := &authenticationv1.SelfSubjectReview{}
	err := k.authentication.Post().UseProtobufAsDefault().Resource("selfsubjectreviews").
		VersionedParams(&opts, parameterCodec).Body(r).Do(ctx).Into(out)
	return out, err
}

// PatchDaemonSet patches a DaemonSet. The patched object is not decoded
// (kubecpr does not link the apps/v1 types): only the error is returned.
func (k *Client) PatchDaemonSet(ctx context.Context, namespace, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions) error {
	return k.apps.Patch(pt).UseProtobufAsDefault().Namespace(namespace).Resource("daemonsets").Name(name).
		VersionedParams(&opts, parameterCodec).Body(data).Do(ctx).Error()
}

// Readyz is the body of GET /readyz ("ok" when the server is ready).
func (k *Client) Readyz(ctx context.Context) ([]byte, error) {
	return k.raw.Get().AbsPath("/readyz").DoRaw(ctx)
}

// ServerVersion is GET /version, as client-go's discovery client reads it.
func (k *Client) ServerVersion(ctx context.Context) (*version.Info, error) {
	body, err := k.raw.Get().AbsPath("/version").Do(ctx).Raw()
	if err != nil {
		return nil, err
	}
	var info version.Info
	if err := json.Unmarshal(body, &info); err != nil {
		return nil, fmt.Errorf("unable to parse the server version: %v", err)
	}
	return &info, nil
}

func listTimeout(opts metav1.ListOptions) time.Duration {
	if opts.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*opts.TimeoutSeconds) * time.Second
}
