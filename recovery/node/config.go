package node

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Cluster is what kubecpr knows about the cluster and this node, worked out
// offline from the files on the node or from a kubeadm config file. Source
// says, for each field, where its value came from.
type Cluster struct {
	NodeName             string   `json:"nodeName"`
	AdvertiseAddress     string   `json:"advertiseAddress"`
	APIServerPort        int      `json:"apiServerPort"`
	ControlPlaneEndpoint string   `json:"controlPlaneEndpoint"`
	ServiceCIDR          string   `json:"serviceCIDR"`
	DNSDomain            string   `json:"dnsDomain"`
	EtcdEndpoints        []string `json:"etcdEndpoints"`
	PKIDir               string   `json:"pkiDir"`
	KubernetesVersion    string   `json:"kubernetesVersion,omitempty"`
	CertSANs             []string `json:"certSANs,omitempty"`
	StaticPodPath        string   `json:"staticPodPath"`
	CRISocket            string   `json:"criSocket,omitempty"`

	// From a v1beta4 ClusterConfiguration: the lifetimes kubeadm gives
	// leaves and CAs, and the key type of keys it makes. Zero or empty when
	// no config said so (kubeadm's defaults apply: 8760h, 87600h, RSA-2048).
	CertificateValidity   time.Duration `json:"certificateValidityPeriod,omitempty"`
	CACertificateValidity time.Duration `json:"caCertificateValidityPeriod,omitempty"`
	EncryptionAlgorithm   string        `json:"encryptionAlgorithm,omitempty"`

	Source map[string]string `json:"source"`
}

// UnknownError lists what could not be determined and how to supply it.
type UnknownError struct {
	Fields []string
}

func (e *UnknownError) Error() string {
	return fmt.Sprintf("could not determine %s from the files on this node; "+
		"pass a kubeadm config with --config FILE (InitConfiguration/ClusterConfiguration, as given to kubeadm init)",
		strings.Join(e.Fields, ", "))
}

// Manifest is the part of a static pod manifest kubecpr reads.
type Manifest struct {
	Path        string
	Name        string
	Annotations map[string]string
	Image       string
	Command     []string
	Flags       map[string]string
}

// ReadManifest parses the static pod manifest at a node path.
func (n *Node) ReadManifest(nodePath string) (*Manifest, error) {
	data, err := n.ReadFile(nodePath)
	if err != nil {
		return nil, err
	}
	var pod struct {
		Metadata struct {
			Name        string            `yaml:"name"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"metadata"`
		Spec struct {
			Containers []struct {
				Image   string   `yaml:"image"`
				Command []string `yaml:"command"`
				Args    []string `yaml:"args"`
			} `yaml:"containers"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(data, &pod); err != nil {
		return nil, fmt.Errorf("%s: not a valid static pod manifest: %w", nodePath, err)
	}
	if len(pod.Spec.Containers) == 0 {
		return nil, fmt.Errorf("%s: static pod manifest has no containers", nodePath)
	}
	c := pod.Spec.Containers[0]
	m := &Manifest{Path: nodePath, Name: pod.Metadata.Name, Annotations: pod.Metadata.Annotations,
		Image: c.Image, Command: append(append([]string{}, c.Command...), c.Args...), Flags: map[string]string{}}
	for _, a := range m.Command {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		m.Flags[k] = v
	}
	return m, nil
}

// kubeadm configuration documents (the subset kubecpr needs).
type kubeadmDoc struct {
	Kind             string `yaml:"kind"`
	NodeRegistration struct {
		Name      string `yaml:"name"`
		CRISocket string `yaml:"criSocket"`
	} `yaml:"nodeRegistration"`
	LocalAPIEndpoint struct {
		AdvertiseAddress string `yaml:"advertiseAddress"`
		BindPort         int    `yaml:"bindPort"`
	} `yaml:"localAPIEndpoint"`
	ControlPlaneEndpoint        string          `yaml:"controlPlaneEndpoint"`
	CertificateValidityPeriod   string          `yaml:"certificateValidityPeriod"`
	CACertificateValidityPeriod string          `yaml:"caCertificateValidityPeriod"`
	EncryptionAlgorithm         string          `yaml:"encryptionAlgorithm"`
	FeatureGates                map[string]bool `yaml:"featureGates"`
	KubernetesVersion           string          `yaml:"kubernetesVersion"`
	CertificatesDir             string          `yaml:"certificatesDir"`
	Networking                  struct {
		ServiceSubnet string `yaml:"serviceSubnet"`
		DNSDomain     string `yaml:"dnsDomain"`
	} `yaml:"networking"`
	APIServer struct {
		CertSANs []string `yaml:"certSANs"`
	} `yaml:"apiServer"`
	Etcd struct {
		External *struct {
			Endpoints []string `yaml:"endpoints"`
		} `yaml:"external"`
	} `yaml:"etcd"`
}

// Discover works out the cluster configuration. configFile, when not empty,
// is a kubeadm config whose values win: a node path under Root, or, where
// no such node path exists but the host path does, a host path (Source
// "config" says which was read).
func (n *Node) Discover(configFile string) (*Cluster, error) {
	return n.DiscoverWith(DiscoverOptions{Config: configFile})
}

// DiscoverOptions says where Discover finds kubeadm's configuration.
type DiscoverOptions struct {
	// Config is --config: a node path (or a host path where only that
	// exists). Empty: the ClusterConfiguration kubeadm keeps in etcd.
	Config string
	// EtcdKubeadmConfig, when set, reads the ClusterConfiguration document
	// of the kubeadm-config ConfigMap out of an etcd member's bbolt file
	// (a host path), offline. Nil: not read from etcd, kubeadm's defaults
	// for the certificate settings apply.
	EtcdKubeadmConfig func(dbHostPath string) ([]byte, error)
}

// Kubeadm's defaults for the v1beta4 certificate settings.
const (
	DefaultCertificateValidity   = 365 * 24 * time.Hour
	DefaultCACertificateValidity = 10 * 365 * 24 * time.Hour
	DefaultEncryptionAlgorithm   = "RSA-2048"
)

// CAValidity is how long a renewed CA lives: the config's
// caCertificateValidityPeriod, else kubeadm's default of ten years.
func (c *Cluster) CAValidity() time.Duration {
	if c.CACertificateValidity != 0 {
		return c.CACertificateValidity
	}
	return DefaultCACertificateValidity
}

// ConfigNote is a line for the output when kubeadm's configuration was read
// from somewhere the user may not expect (a host path, etcd's data), or "".
func (c *Cluster) ConfigNote() string {
	// Nothing to say when there was simply no config anywhere: kubeadm's
	// defaults apply, as on most nodes (a read that failed is said).
	s := c.Source["config"]
	switch {
	case s == "" || strings.HasSuffix(s, "(node path under the root)") || strings.HasPrefix(s, "none (no --config"):
		return ""
	case strings.HasPrefix(s, "none ("):
		return "kubeadm's defaults apply: " + strings.TrimSuffix(strings.TrimPrefix(s, "none ("), ")")
	}
	return "kubeadm config read from " + s
}

// DiscoverWith is Discover with the sources of kubeadm's configuration
// spelled out.
func (n *Node) DiscoverWith(o DiscoverOptions) (*Cluster, error) {
	configFile := o.Config
	c := &Cluster{Source: map[string]string{}}
	set := func(field string, dst *string, v, src string) {
		if v != "" && *dst == "" {
			*dst = v
			c.Source[field] = src
		}
	}

	if configFile != "" {
		if err := c.fromKubeadmConfig(n, configFile, set); err != nil {
			return nil, err
		}
	} else if err := n.kubeadmConfigFromEtcd(c, o.EtcdKubeadmConfig, set); err != nil {
		return nil, err
	}

	// The API server manifest has most of it.
	apiPath := path.Join(ManifestsDir, "kube-apiserver.yaml")
	if m, err := n.ReadManifest(apiPath); err == nil {
		set("advertiseAddress", &c.AdvertiseAddress, m.Flags["advertise-address"], apiPath+" --advertise-address")
		set("serviceCIDR", &c.ServiceCIDR, m.Flags["service-cluster-ip-range"], apiPath+" --service-cluster-ip-range")
		if ca := m.Flags["client-ca-file"]; ca != "" {
			set("pkiDir", &c.PKIDir, path.Dir(ca), apiPath+" --client-ca-file")
		}
		if p := m.Flags["secure-port"]; p != "" && c.APIServerPort == 0 {
			if v, err := strconv.Atoi(p); err == nil {
				c.APIServerPort = v
				c.Source["apiServerPort"] = apiPath + " --secure-port"
			}
		}
		if e := m.Flags["etcd-servers"]; e != "" && len(c.EtcdEndpoints) == 0 {
			c.EtcdEndpoints = strings.Split(e, ",")
			c.Source["etcdEndpoints"] = apiPath + " --etcd-servers"
		}
		if i := strings.LastIndex(m.Image, ":"); i > 0 {
			set("kubernetesVersion", &c.KubernetesVersion, m.Image[i+1:], apiPath+" image")
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	etcdPath := path.Join(ManifestsDir, "etcd.yaml")
	if m, err := n.ReadManifest(etcdPath); err == nil {
		set("nodeName", &c.NodeName, m.Flags["name"], etcdPath+" --name")
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}

	// kubelet: static pod path, cluster domain, runtime endpoint.
	if data, err := n.ReadFile(KubeletConfig); err == nil {
		var kc struct {
			StaticPodPath            string `yaml:"staticPodPath"`
			ClusterDomain            string `yaml:"clusterDomain"`
			ContainerRuntimeEndpoint string `yaml:"containerRuntimeEndpoint"`
		}
		if err := yaml.Unmarshal(data, &kc); err != nil {
			return nil, fmt.Errorf("%s: not valid YAML: %w", KubeletConfig, err)
		}
		set("staticPodPath", &c.StaticPodPath, kc.StaticPodPath, KubeletConfig+" staticPodPath")
		set("dnsDomain", &c.DNSDomain, kc.ClusterDomain, KubeletConfig+" clusterDomain")
		set("criSocket", &c.CRISocket, kc.ContainerRuntimeEndpoint, KubeletConfig+" containerRuntimeEndpoint")
	}

	// The node name is also in the kubelet's client certificate.
	if c.NodeName == "" {
		if name, src := n.nodeNameFromKubelet(); name != "" {
			set("nodeName", &c.NodeName, name, src)
		}
	}
	// admin.conf tells the control-plane endpoint clients use.
	if k, err := n.Kubeconfig(KubernetesDir + "/admin.conf"); err == nil && k.Server() != "" {
		if u, err := url.Parse(k.Server()); err == nil {
			set("controlPlaneEndpoint", &c.ControlPlaneEndpoint, u.Host, KubernetesDir+"/admin.conf server")
		}
	}

	if c.PKIDir == "" && n.Exists(DefaultPKIDir) {
		c.PKIDir, c.Source["pkiDir"] = DefaultPKIDir, "default location (exists)"
	}
	if c.StaticPodPath == "" && n.Exists(ManifestsDir) {
		c.StaticPodPath, c.Source["staticPodPath"] = ManifestsDir, "default location (exists)"
	}
	if c.APIServerPort == 0 && c.AdvertiseAddress != "" {
		if _, p, err := net.SplitHostPort(c.ControlPlaneEndpoint); err == nil {
			c.APIServerPort, _ = strconv.Atoi(p)
			c.Source["apiServerPort"] = c.Source["controlPlaneEndpoint"]
		}
	}

	for field, def := range map[string]string{
		"certificateValidityPeriod":   "8760h (1 year)",
		"caCertificateValidityPeriod": "87600h (10 years)",
		"encryptionAlgorithm":         DefaultEncryptionAlgorithm + " (new keys like the CA's)",
	} {
		if c.Source[field] == "" {
			c.Source[field] = "kubeadm's default " + def + ": " + c.configAbsence()
		}
	}

	var missing []string
	for _, f := range []struct {
		name string
		ok   bool
	}{
		{"the node name (etcd --name, kubelet client certificate CN, or nodeRegistration.name)", c.NodeName != ""},
		{"the PKI directory (kube-apiserver --client-ca-file, or certificatesDir)", c.PKIDir != ""},
	} {
		if !f.ok {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return c, &UnknownError{Fields: missing}
	}
	return c, nil
}

func (c *Cluster) fromKubeadmConfig(n *Node, file string, set func(string, *string, string, string)) error {
	data, err := n.readConfig(file, c)
	if err != nil {
		return err
	}
	return c.parseKubeadmConfig(data, "--config "+file, file, set)
}

// parseKubeadmConfig reads kubeadm's InitConfiguration, JoinConfiguration
// and ClusterConfiguration documents (v1beta3 and v1beta4; the fields
// kubecpr reads are the same in both, except the v1beta4-only certificate
// settings). what names the input in errors, from in Source.
func (c *Cluster) parseKubeadmConfig(data []byte, what, from string, set func(string, *string, string, string)) error {
	file := from
	dec := yaml.NewDecoder(bytes.NewReader(data))
	found := false
	for {
		var d kubeadmDoc
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: not valid YAML: %w", what, err)
		}
		src := file + " (" + d.Kind + ")"
		switch d.Kind {
		case "InitConfiguration", "JoinConfiguration":
			found = true
			set("nodeName", &c.NodeName, d.NodeRegistration.Name, src)
			set("criSocket", &c.CRISocket, d.NodeRegistration.CRISocket, src)
			set("advertiseAddress", &c.AdvertiseAddress, d.LocalAPIEndpoint.AdvertiseAddress, src)
			if d.LocalAPIEndpoint.BindPort != 0 && c.APIServerPort == 0 {
				c.APIServerPort = d.LocalAPIEndpoint.BindPort
				c.Source["apiServerPort"] = src
			}
		case "ClusterConfiguration":
			found = true
			set("controlPlaneEndpoint", &c.ControlPlaneEndpoint, d.ControlPlaneEndpoint, src)
			set("kubernetesVersion", &c.KubernetesVersion, d.KubernetesVersion, src)
			set("pkiDir", &c.PKIDir, d.CertificatesDir, src)
			set("serviceCIDR", &c.ServiceCIDR, d.Networking.ServiceSubnet, src)
			set("dnsDomain", &c.DNSDomain, d.Networking.DNSDomain, src)
			if len(d.APIServer.CertSANs) > 0 {
				c.CertSANs = d.APIServer.CertSANs
				c.Source["certSANs"] = src
			}
			if err := c.certificateSettings(&d, what, src); err != nil {
				return err
			}
			if d.Etcd.External != nil && len(d.Etcd.External.Endpoints) > 0 {
				c.EtcdEndpoints = d.Etcd.External.Endpoints
				c.Source["etcdEndpoints"] = src
			}
		}
	}
	if !found {
		return fmt.Errorf("%s: no InitConfiguration or ClusterConfiguration document in it (kubeadm's config, apiVersion kubeadm.k8s.io/v1beta3 or v1beta4)", what)
	}
	return nil
}

// kubeadmConfigFromEtcd reads the ClusterConfiguration of the
// kubeadm-config ConfigMap from this node's etcd member data, offline.
// A node that is not an etcd member, no reader, or data it cannot read is
// not an error: the Source then says that kubeadm's defaults apply, and why.
func (n *Node) kubeadmConfigFromEtcd(c *Cluster, read func(string) ([]byte, error), set func(string, *string, string, string)) error {
	dataDir := "/var/lib/etcd"
	if m, err := n.ReadManifest(path.Join(ManifestsDir, "etcd.yaml")); err == nil && m.Flags["data-dir"] != "" {
		dataDir = m.Flags["data-dir"]
	}
	db := path.Join(dataDir, "member", "snap", "db")
	switch {
	case read == nil:
		c.Source["config"] = "none (no --config; reading the kubeadm-config ConfigMap from etcd's data is not available in this build)"
		return nil
	case !n.Exists(db):
		c.Source["config"] = "none (no --config, and no etcd member data at " + db + ")"
		return nil
	}
	data, err := read(n.Path(db))
	if err != nil {
		// Not fatal: the recovery goes on with kubeadm's defaults, and the
		// Source of each setting says why.
		c.Source["config"] = fmt.Sprintf("none (the kubeadm-config ConfigMap in %s could not be read: %v; pass --config FILE if the cluster's settings differ from kubeadm's defaults)", db, err)
		return nil
	}
	from := "kubeadm-config ConfigMap in " + db
	c.Source["config"] = from
	return c.parseKubeadmConfig(data, from, from, set)
}

func (c *Cluster) configAbsence() string {
	s := c.Source["config"]
	if s == "" || strings.HasPrefix(s, "none") {
		return "no kubeadm config read"
	}
	return "not set in " + s
}

// readConfig reads --config: the node path under Root first; a host path
// only where the node path does not exist and the host path does.
func (n *Node) readConfig(file string, c *Cluster) ([]byte, error) {
	data, err := n.ReadFile(file)
	if err == nil {
		c.Source["config"] = file + " (node path under the root)"
		return data, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("--config %s: %w", file, err)
	}
	if fi, herr := os.Stat(file); herr == nil && fi.Mode().IsRegular() && n.Root != "/" && n.Root != "" {
		data, herr := os.ReadFile(file)
		if herr != nil {
			return nil, fmt.Errorf("--config %s (host path): %w", file, herr)
		}
		c.Source["config"] = file + " (host path: no such file under the root)"
		return data, nil
	}
	return nil, fmt.Errorf("--config %s: no such file under the root %s (nor on the host): "+
		"pass the kubeadm config's path on the node, e.g. /etc/kubernetes/kubeadm.yaml", file, n.Root)
}

// Encryption algorithms a v1beta4 ClusterConfiguration may name (kubeadm
// v1.33 knows the first four; ECDSA-P384 is accepted for newer versions).
var encryptionAlgorithms = []string{"RSA-2048", "RSA-3072", "RSA-4096", "ECDSA-P256", "ECDSA-P384"}

// certificateSettings reads the v1beta4 fields that change certificates.
// v1beta3 has none of them (kubeadm's defaults then apply).
func (c *Cluster) certificateSettings(d *kubeadmDoc, what, src string) error {
	for _, f := range []struct {
		field string
		v     string
		dst   *time.Duration
	}{
		{"certificateValidityPeriod", d.CertificateValidityPeriod, &c.CertificateValidity},
		{"caCertificateValidityPeriod", d.CACertificateValidityPeriod, &c.CACertificateValidity},
	} {
		if f.v == "" || *f.dst != 0 {
			continue
		}
		v, err := time.ParseDuration(f.v)
		if err != nil || v <= 0 {
			return fmt.Errorf("%s: %s %q is not a positive duration (kubeadm writes e.g. 8760h0m0s): fix it", what, f.field, f.v)
		}
		*f.dst = v
		c.Source[f.field] = src
	}
	if a := d.EncryptionAlgorithm; a != "" && c.EncryptionAlgorithm == "" {
		if !contains(encryptionAlgorithms, a) {
			return fmt.Errorf("%s: encryptionAlgorithm %q is not one kubeadm knows (%s): fix it",
				what, a, strings.Join(encryptionAlgorithms, ", "))
		}
		c.EncryptionAlgorithm = a
		c.Source["encryptionAlgorithm"] = src
	}
	// Before encryptionAlgorithm (v1beta3, kubeadm 1.19 to 1.30) the
	// PublicKeysECDSA feature gate made ECDSA P-256 keys.
	if d.FeatureGates["PublicKeysECDSA"] && c.EncryptionAlgorithm == "" {
		c.EncryptionAlgorithm = "ECDSA-P256"
		c.Source["encryptionAlgorithm"] = src + " featureGates.PublicKeysECDSA"
	}
	return nil
}

func (n *Node) nodeNameFromKubelet() (string, string) {
	candidates := []string{KubeletCurrent}
	for _, p := range candidates {
		data, err := n.ReadFile(n.Resolve(p, false))
		if err != nil {
			continue
		}
		if name := nodeFromCN(data); name != "" {
			return name, p + " subject CN"
		}
	}
	if k, err := n.Kubeconfig(KubernetesDir + "/kubelet.conf"); k != nil && (err == nil || k.Config != nil) {
		cfg := k.Config
		keys := make([]string, 0, len(cfg.AuthInfos))
		for k := range cfg.AuthInfos {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if name := nodeFromCN(cfg.AuthInfos[k].ClientCertificateData); name != "" {
				return name, KubernetesDir + "/kubelet.conf client certificate CN"
			}
		}
	}
	return "", ""
}

func nodeFromCN(pemData []byte) string {
	if len(pemData) == 0 {
		return ""
	}
	rest := pemData
	for {
		var name string
		cert, r, ok := nextCert(rest)
		if !ok {
			return ""
		}
		rest = r
		if cn := cert.Subject.CommonName; strings.HasPrefix(cn, "system:node:") {
			name = strings.TrimPrefix(cn, "system:node:")
			return name
		}
	}
}

// NodeSANsFit checks that a certificate meant for this node names it.
func (c *Cluster) NodeSANsFit(cert *x509.Certificate) []string {
	var problems []string
	if c.NodeName != "" && !contains(cert.DNSNames, c.NodeName) {
		problems = append(problems, fmt.Sprintf("SANs do not include this node's name %q (copied from another control-plane node?)", c.NodeName))
	}
	if ip := net.ParseIP(c.AdvertiseAddress); ip != nil {
		found := false
		for _, a := range cert.IPAddresses {
			if a.Equal(ip) {
				found = true
			}
		}
		if !found {
			problems = append(problems, fmt.Sprintf("SANs do not include this node's advertise address %s (copied from another control-plane node?)", c.AdvertiseAddress))
		}
	}
	return problems
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
