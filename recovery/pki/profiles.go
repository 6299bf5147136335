package pki

// kubeadm's certificate profiles (kubeadm v1.33, cmd/kubeadm/app/phases/certs
// certlist.go, util/pkiutil GetAPIServerAltNames/getAltNames, and
// phases/kubeconfig getKubeConfigSpecsBase), for creating a certificate
// that is missing from a node — what `kubeadm init phase certs` and
// `kubeadm init phase kubeconfig` do. Renewal never uses them: it keeps
// what the old certificate says.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Identity is what kubeadm's profiles take from the node and the cluster
// configuration.
type Identity struct {
	NodeName         string // nodeRegistration.name
	AdvertiseAddress string // localAPIEndpoint.advertiseAddress
	APIServerPort    int    // localAPIEndpoint.bindPort (default 6443)
	// ControlPlaneEndpoint is "host" or "host:port" ("" when none: the
	// advertise address and port are used, as kubeadm does).
	ControlPlaneEndpoint string
	ServiceCIDR          string // networking.serviceSubnet (the first of a dual-stack pair is used)
	DNSDomain            string // networking.dnsDomain
	// CertSANs are the API server certificate's extra SANs:
	// apiServer.certSANs and --apiserver-cert-extra-sans.
	CertSANs []string
}

// Leaf names, as kubeadm prints them.
const (
	LeafAPIServer              = "apiserver"
	LeafAPIServerKubeletClient = "apiserver-kubelet-client"
	LeafAPIServerEtcdClient    = "apiserver-etcd-client"
	LeafFrontProxyClient       = "front-proxy-client"
	LeafEtcdServer             = "etcd-server"
	LeafEtcdPeer               = "etcd-peer"
	LeafEtcdHealthcheckClient  = "etcd-healthcheck-client"
)

// kubeadm's key usages for every leaf it signs (pkiutil.NewSignedCert).
const leafKeyUsage = x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature

var (
	serverAuth = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	clientAuth = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	bothAuth   = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
)

// ClusterAdminsGroup is kubeadm's (1.29+) group for admin.conf and the API
// server's kubelet client, bound to cluster-admin by `kubeadm init`.
const ClusterAdminsGroup = "kubeadm:cluster-admins"

func template(cn string, orgs []string, usages []x509.ExtKeyUsage) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn, Organization: orgs},
		KeyUsage:              leafKeyUsage,
		ExtKeyUsage:           usages,
		BasicConstraintsValid: true,
	}
}

// LeafProfile returns the template (subject, SANs, usages) kubeadm uses for
// the pki leaf name (LeafAPIServer, ...) on the node id describes.
func LeafProfile(name string, id Identity) (*x509.Certificate, error) {
	switch name {
	case LeafAPIServer:
		dns, ips, err := APIServerAltNames(id)
		if err != nil {
			return nil, err
		}
		t := template("kube-apiserver", nil, serverAuth)
		t.DNSNames, t.IPAddresses = dns, ips
		return t, nil
	case LeafAPIServerKubeletClient:
		return template("kube-apiserver-kubelet-client", []string{ClusterAdminsGroup}, clientAuth), nil
	case LeafAPIServerEtcdClient:
		return template("kube-apiserver-etcd-client", nil, clientAuth), nil
	case LeafFrontProxyClient:
		return template("front-proxy-client", nil, clientAuth), nil
	case LeafEtcdHealthcheckClient:
		return template("kube-etcd-healthcheck-client", nil, clientAuth), nil
	case LeafEtcdServer, LeafEtcdPeer:
		if id.NodeName == "" {
			return nil, errors.New("the node name is unknown")
		}
		adv, err := advertiseIP(id)
		if err != nil {
			return nil, err
		}
		t := template(id.NodeName, nil, bothAuth)
		t.DNSNames, t.IPAddresses = dedup([]string{id.NodeName, "localhost"}, []net.IP{adv, net.IPv4(127, 0, 0, 1), net.IPv6loopback})
		return t, nil
	}
	return nil, fmt.Errorf("no kubeadm profile for %q", name)
}

func advertiseIP(id Identity) (net.IP, error) {
	ip := net.ParseIP(id.AdvertiseAddress)
	if ip == nil {
		if id.AdvertiseAddress == "" {
			return nil, errors.New("the advertise address is unknown (kube-apiserver --advertise-address)")
		}
		return nil, fmt.Errorf("the advertise address %q is not an IP address", id.AdvertiseAddress)
	}
	return ip, nil
}

// APIServerAltNames are kubeadm's SANs for the API server's serving
// certificate: the node name, kubernetes, kubernetes.default,
// kubernetes.default.svc, kubernetes.default.svc.<dnsDomain>, the first
// IP of the service subnet, the advertise address, the control-plane
// endpoint's host and the extra SANs — DNS names sorted and IPs in that
// order without duplicates, as kubeadm writes them.
func APIServerAltNames(id Identity) ([]string, []net.IP, error) {
	var missing []string
	if id.NodeName == "" {
		missing = append(missing, "the node name")
	}
	if id.ServiceCIDR == "" {
		missing = append(missing, "the service subnet (kube-apiserver --service-cluster-ip-range, or networking.serviceSubnet)")
	}
	if id.DNSDomain == "" {
		missing = append(missing, "the cluster DNS domain (the kubelet's clusterDomain, or networking.dnsDomain)")
	}
	if len(missing) > 0 {
		return nil, nil, fmt.Errorf("%s unknown", strings.Join(missing, ", "))
	}
	adv, err := advertiseIP(id)
	if err != nil {
		return nil, nil, err
	}
	svc, err := ServiceIP(id.ServiceCIDR)
	if err != nil {
		return nil, nil, err
	}
	dns := []string{id.NodeName, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + id.DNSDomain}
	ips := []net.IP{svc, adv}
	if id.ControlPlaneEndpoint != "" {
		host := id.ControlPlaneEndpoint
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if ip := net.ParseIP(host); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, host)
		}
	}
	xdns, xips, err := SplitSANs(id.CertSANs)
	if err != nil {
		return nil, nil, err
	}
	dns, ips = dedup(append(dns, xdns...), append(ips, xips...))
	return dns, ips, nil
}

// dedup sorts and de-duplicates DNS names and de-duplicates IPs keeping
// their order (kubeadm's RemoveDuplicateAltNames).
func dedup(dns []string, ips []net.IP) ([]string, []net.IP) {
	seen := map[string]bool{}
	var d []string
	for _, n := range dns {
		if !seen[n] {
			seen[n] = true
			d = append(d, n)
		}
	}
	sort.Strings(d)
	seenIP := map[string]bool{}
	var out []net.IP
	for _, ip := range ips {
		if !seenIP[ip.String()] {
			seenIP[ip.String()] = true
			out = append(out, ip)
		}
	}
	return d, out
}

// ServiceIP is the first address of the (first) service subnet: the
// ClusterIP of the kubernetes Service.
func ServiceIP(serviceCIDR string) (net.IP, error) {
	first := strings.TrimSpace(strings.Split(serviceCIDR, ",")[0])
	_, n, err := net.ParseCIDR(first)
	if err != nil {
		return nil, fmt.Errorf("service subnet %q: %w", serviceCIDR, err)
	}
	ip := make(net.IP, len(n.IP))
	copy(ip, n.IP)
	for i := len(ip) - 1; i >= 0; i-- {
		ip[i]++
		if ip[i] != 0 {
			break
		}
	}
	if !n.Contains(ip) {
		return nil, fmt.Errorf("service subnet %q has no first address", serviceCIDR)
	}
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	return ip, nil
}

// SplitSANs parses extra SANs the way kubeadm's --apiserver-cert-extra-sans
// and certSANs are read: IP addresses, DNS-1123 names and wildcard names.
// Anything else is an error (kubeadm only warns and drops it; a recovery
// that silently serves without a SAN the operator asked for is worse).
func SplitSANs(sans []string) ([]string, []net.IP, error) {
	var dns []string
	var ips []net.IP
	var bad []string
	for _, s := range sans {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		switch {
		case net.ParseIP(s) != nil:
			ip := net.ParseIP(s)
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			ips = append(ips, ip)
		case len(validation.IsDNS1123Subdomain(s)) == 0, len(validation.IsWildcardDNS1123Subdomain(s)) == 0:
			dns = append(dns, s)
		default:
			bad = append(bad, strconv.Quote(s))
		}
	}
	if len(bad) > 0 {
		return nil, nil, fmt.Errorf("%s: not an IP address or an RFC 1123 DNS name", strings.Join(bad, ", "))
	}
	return dns, ips, nil
}

// MissingSANs lists the SANs of sans that cert does not carry yet.
func MissingSANs(cert *x509.Certificate, sans []string) ([]string, error) {
	dns, ips, err := SplitSANs(sans)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range dns {
		found := false
		for _, have := range cert.DNSNames {
			if strings.EqualFold(have, d) {
				found = true
			}
		}
		if !found {
			out = append(out, d)
		}
	}
	for _, ip := range ips {
		found := false
		for _, have := range cert.IPAddresses {
			if have.Equal(ip) {
				found = true
			}
		}
		if !found {
			out = append(out, ip.String())
		}
	}
	return out, nil
}

// WithSANs returns a copy of cert's template with sans added to its SANs
// (those it already has are not repeated).
func WithSANs(cert *x509.Certificate, sans []string) (*x509.Certificate, error) {
	add, err := MissingSANs(cert, sans)
	if err != nil {
		return nil, err
	}
	dns, ips, _ := SplitSANs(add)
	c := *cert
	c.DNSNames = append(append([]string{}, cert.DNSNames...), dns...)
	c.IPAddresses = append(append([]net.IP{}, cert.IPAddresses...), ips...)
	return &c, nil
}

// Kubeconfig files kubeadm writes.
const (
	KubeconfigAdmin             = "admin.conf"
	KubeconfigSuperAdmin        = "super-admin.conf"
	KubeconfigControllerManager = "controller-manager.conf"
	KubeconfigScheduler         = "scheduler.conf"
	KubeconfigKubelet           = "kubelet.conf"
)

// KubeconfigProfile is kubeadm's client identity for a kubeconfig file:
// the user name (also the certificate's CN), the certificate template, and
// whether its server is the local API endpoint (controller-manager.conf
// and scheduler.conf) rather than the control-plane endpoint.
func KubeconfigProfile(file, nodeName string) (user string, tmpl *x509.Certificate, local bool, err error) {
	switch file {
	case KubeconfigAdmin:
		return "kubernetes-admin", template("kubernetes-admin", []string{ClusterAdminsGroup}, clientAuth), false, nil
	case KubeconfigSuperAdmin:
		return "kubernetes-super-admin", template("kubernetes-super-admin", []string{"system:masters"}, clientAuth), false, nil
	case KubeconfigControllerManager:
		return "system:kube-controller-manager", template("system:kube-controller-manager", nil, clientAuth), true, nil
	case KubeconfigScheduler:
		return "system:kube-scheduler", template("system:kube-scheduler", nil, clientAuth), true, nil
	case KubeconfigKubelet:
		if nodeName == "" {
			return "", nil, false, errors.New("the node name is unknown")
		}
		u := "system:node:" + nodeName
		return u, template(u, []string{"system:nodes"}, clientAuth), false, nil
	}
	return "", nil, false, fmt.Errorf("no kubeadm profile for kubeconfig %q", file)
}

// APIServerURLs are kubeadm's server URLs: the control-plane endpoint
// (its port defaulting to the API server's) and the local API endpoint
// (advertise address and port).
func APIServerURLs(id Identity) (controlPlane, local string, err error) {
	adv, err := advertiseIP(id)
	if err != nil {
		return "", "", err
	}
	port := id.APIServerPort
	if port == 0 {
		port = 6443
	}
	local = "https://" + net.JoinHostPort(adv.String(), strconv.Itoa(port))
	controlPlane = local
	if ep := id.ControlPlaneEndpoint; ep != "" {
		host, p, err := net.SplitHostPort(ep)
		if err != nil {
			host, p = strings.Trim(ep, "[]"), strconv.Itoa(port)
		}
		controlPlane = "https://" + net.JoinHostPort(host, p)
	}
	return controlPlane, local, nil
}

// NewLeafKey makes the key of a leaf signed by a CA with public key caPub:
// ECDSA P-256 under an ECDSA CA (kubeadm's encryptionAlgorithm
// ECDSA-P256 makes both), RSA 2048 otherwise (kubeadm's default).
func NewLeafKey(caPub crypto.PublicKey) (crypto.Signer, error) {
	if _, ok := caPub.(*ecdsa.PublicKey); ok {
		return NewECKey()
	}
	return rsa.GenerateKey(rand.Reader, 2048)
}

// KubeletServingTemplate is the profile of the kubelet's self-signed
// serving certificate for host (client-go's GenerateSelfSignedCertKey, as
// the kubelet calls it): server auth, host as a DNS name or IP address.
func KubeletServingTemplate(host string) *x509.Certificate {
	t := &x509.Certificate{KeyUsage: leafKeyUsage, ExtKeyUsage: serverAuth, BasicConstraintsValid: true}
	if ip := net.ParseIP(host); ip != nil {
		t.IPAddresses = []net.IP{ip}
	} else {
		t.DNSNames = []string{host}
	}
	return t
}
