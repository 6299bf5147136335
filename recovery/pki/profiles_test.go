package pki_test

import (
	"crypto/x509"
	"net"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/fixture"
)

// profileView is what a kubeadm profile fixes, SANs as sets.
type profileView struct {
	CN       string
	O        []string
	DNS, IPs []string
	Usages   []x509.ExtKeyUsage
}

func view(cn string, o []string, dns []string, ips []net.IP, usages []x509.ExtKeyUsage) profileView {
	v := profileView{CN: cn, O: o, Usages: usages}
	for _, d := range dns {
		if !slices.Contains(v.DNS, d) {
			v.DNS = append(v.DNS, d)
		}
	}
	for _, ip := range ips {
		if s := ip.String(); !slices.Contains(v.IPs, s) {
			v.IPs = append(v.IPs, s)
		}
	}
	sort.Strings(v.DNS)
	sort.Strings(v.IPs)
	return v
}

// The profiles match the fixture generator's (written independently from
// kubeadm v1.33's certlist) for several node shapes.
func TestLeafProfilesMatchKubeadm(t *testing.T) {
	names := map[string]string{ // kubeadm name → fixture base
		pki.LeafAPIServer: "apiserver", pki.LeafAPIServerKubeletClient: "apiserver-kubelet-client",
		pki.LeafAPIServerEtcdClient: "apiserver-etcd-client", pki.LeafFrontProxyClient: "front-proxy-client",
		pki.LeafEtcdServer: "etcd/server", pki.LeafEtcdPeer: "etcd/peer", pki.LeafEtcdHealthcheckClient: "etcd/healthcheck-client",
	}
	for _, o := range []fixture.Options{
		{},
		{NodeName: "master-a", AdvertiseIP: "127.0.0.7", ControlPlaneEndpoint: "api.example.test:8443", DNSDomain: "corp.local"},
		{NodeName: "cp-3", AdvertiseIP: "::1", APIServerPort: 443, ServiceCIDR: "fd00:10:96::/108", CertSANs: []string{"10.1.2.3", "lb.example.test", "*.apps.example.test"}},
		{NodeName: "cp-4", ControlPlaneEndpoint: "10.0.0.100:6443", ServiceCIDR: "10.112.0.0/12"},
	} {
		ref := fixture.Leaves(o)
		id := identityOf(o)
		t.Run(id.NodeName+"/"+id.AdvertiseAddress, func(t *testing.T) {
			for name, base := range names {
				tmpl, err := pki.LeafProfile(name, id)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				p := ref[base].Profile
				want := view(p.CN, p.Orgs, p.DNS, p.IPs, p.Usages)
				got := view(tmpl.Subject.CommonName, tmpl.Subject.Organization, tmpl.DNSNames, tmpl.IPAddresses, tmpl.ExtKeyUsage)
				if d := cmp.Diff(want, got); d != "" {
					t.Errorf("%s (-fixture +kubecpr):\n%s", name, d)
				}
				if tmpl.KeyUsage != x509.KeyUsageKeyEncipherment|x509.KeyUsageDigitalSignature {
					t.Errorf("%s: key usage %v", name, tmpl.KeyUsage)
				}
			}
			for file, p := range fixture.KubeconfigProfiles(id.NodeName) {
				user, tmpl, _, err := pki.KubeconfigProfile(file, id.NodeName)
				if err != nil {
					t.Fatal(err)
				}
				if d := cmp.Diff(view(p.User, p.Profile.Orgs, nil, nil, p.Profile.Usages),
					view(user, tmpl.Subject.Organization, nil, nil, tmpl.ExtKeyUsage)); d != "" || tmpl.Subject.CommonName != user {
					t.Errorf("%s (-fixture +kubecpr):\n%s", file, d)
				}
			}
		})
	}
}

func identityOf(o fixture.Options) pki.Identity {
	def := func(s, d string) string {
		if s == "" {
			return d
		}
		return s
	}
	id := pki.Identity{NodeName: def(o.NodeName, "cp-1"), AdvertiseAddress: def(o.AdvertiseIP, "127.0.0.1"), APIServerPort: o.APIServerPort,
		ControlPlaneEndpoint: o.ControlPlaneEndpoint, ServiceCIDR: def(o.ServiceCIDR, "10.96.0.0/12"), DNSDomain: def(o.DNSDomain, "cluster.local"), CertSANs: o.CertSANs}
	return id
}

// kubeadm sorts the DNS names and keeps IPs in order, each once.
func TestAPIServerAltNamesOrder(t *testing.T) {
	dns, ips, err := pki.APIServerAltNames(pki.Identity{NodeName: "cp-1", AdvertiseAddress: "192.168.10.190", ServiceCIDR: "10.96.0.0/12,fd00::/108",
		DNSDomain: "cluster.local", ControlPlaneEndpoint: "192.168.10.190:6443", CertSANs: []string{"192.168.10.190", "kubernetes", "10.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ip := range ips {
		got = append(got, ip.String())
	}
	if d := cmp.Diff([]string{"cp-1", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}, dns); d != "" {
		t.Errorf("DNS names:\n%s", d)
	}
	if d := cmp.Diff([]string{"10.96.0.1", "192.168.10.190", "10.0.0.1"}, got); d != "" {
		t.Errorf("IPs:\n%s", d)
	}
}

// What the profiles cannot know is said, not guessed.
func TestProfilesNameWhatIsUnknown(t *testing.T) {
	for _, tc := range []struct {
		id   pki.Identity
		want string
	}{
		{pki.Identity{NodeName: "cp-1", AdvertiseAddress: "127.0.0.1", DNSDomain: "cluster.local"}, "service subnet"},
		{pki.Identity{NodeName: "cp-1", AdvertiseAddress: "127.0.0.1", ServiceCIDR: "10.96.0.0/12"}, "DNS domain"},
		{pki.Identity{NodeName: "cp-1", ServiceCIDR: "10.96.0.0/12", DNSDomain: "cluster.local"}, "advertise address is unknown"},
		{pki.Identity{NodeName: "cp-1", AdvertiseAddress: "127.0.0.1", ServiceCIDR: "10.96.0.0/12", DNSDomain: "cluster.local", CertSANs: []string{"bad name"}}, `"bad name": not an IP address or an RFC 1123 DNS name`},
	} {
		if _, err := pki.LeafProfile(pki.LeafAPIServer, tc.id); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want it to mention %q", tc.id, err, tc.want)
		}
	}
}

func TestAPIServerURLs(t *testing.T) {
	for _, tc := range []struct {
		id        pki.Identity
		cp, local string
	}{
		{pki.Identity{AdvertiseAddress: "10.0.0.5"}, "https://10.0.0.5:6443", "https://10.0.0.5:6443"},
		{pki.Identity{AdvertiseAddress: "10.0.0.5", APIServerPort: 443, ControlPlaneEndpoint: "api.example.test"}, "https://api.example.test:443", "https://10.0.0.5:443"},
		{pki.Identity{AdvertiseAddress: "fd00::5", ControlPlaneEndpoint: "[fd00::1]:8443"}, "https://[fd00::1]:8443", "https://[fd00::5]:6443"},
	} {
		cp, local, err := pki.APIServerURLs(tc.id)
		if err != nil || cp != tc.cp || local != tc.local {
			t.Errorf("%+v: %q %q %v, want %q %q", tc.id, cp, local, err, tc.cp, tc.local)
		}
	}
}

func TestWithSANs(t *testing.T) {
	c := &x509.Certificate{DNSNames: []string{"cp-1", "Kubernetes"}, IPAddresses: []net.IP{net.ParseIP("10.96.0.1")}}
	miss, err := pki.MissingSANs(c, []string{"kubernetes", "10.96.0.1", "192.168.1.9", "api.example.test"})
	if err != nil || !slices.Equal(miss, []string{"api.example.test", "192.168.1.9"}) {
		t.Errorf("MissingSANs: %v %v", miss, err)
	}
	n, err := pki.WithSANs(c, miss)
	if err != nil || len(n.DNSNames) != 3 || len(n.IPAddresses) != 2 || len(c.DNSNames) != 2 {
		t.Errorf("WithSANs: %v %v %v (original %v)", n.DNSNames, n.IPAddresses, err, c.DNSNames)
	}
}
