// Package health proves a control-plane component on the wire: its health
// endpoint answers, and every TLS port it has serves the certificate that
// is on disk (so the process really loaded the renewed one). The bounce
// stage waits with it after a restart; the verify stage asks once more.
package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// endpoint is what to probe for one component.
type endpoint struct {
	addr     string // host:port on loopback
	healthz  string // path
	caFile   string // node path; "" = do not verify (self-signed)
	certFile string // client certificate (node path)
	keyFile  string
	certPEM  []byte // client certificate from a kubeconfig
	keyPEM   []byte
	served   string // node path of the certificate it must serve; "" = no check
	extra    []servedCheck
}

type servedCheck struct {
	addr, cert, clientCert, clientKey, ca string
}

// ManifestsDir is the node's static pod directory.
func ManifestsDir(d pipeline.Data) string {
	if c := d.Cluster(); c != nil && c.StaticPodPath != "" {
		return c.StaticPodPath
	}
	return node.ManifestsDir
}

func flagsOf(d pipeline.Data, comp string) map[string]string {
	m, err := d.Node().ReadManifest(path.Join(ManifestsDir(d), comp+".yaml"))
	if err != nil {
		return map[string]string{}
	}
	return m.Flags
}

// localAddr is where the node reaches a listener of its own, from its
// comma-separated URL list: a loopback URL, else the first URL's address.
func localAddr(urls, fallbackPort string) string {
	for _, u := range strings.Split(urls, ",") {
		pu, err := url.Parse(strings.TrimSpace(u))
		if err != nil {
			continue
		}
		if ip := net.ParseIP(pu.Hostname()); ip != nil && ip.IsLoopback() {
			return pu.Host
		}
	}
	// No loopback URL (kubeadm's etcd listens for peers on the node's
	// own address only: --listen-peer-urls=https://ADDRESS:2380): the
	// node's own address it is, reached from the node itself. A wildcard
	// listener answers on loopback.
	for _, u := range strings.Split(urls, ",") {
		pu, err := url.Parse(strings.TrimSpace(u))
		if err != nil || pu.Port() == "" {
			continue
		}
		if ip := net.ParseIP(pu.Hostname()); ip != nil && !ip.IsUnspecified() {
			return pu.Host
		}
		return net.JoinHostPort("127.0.0.1", pu.Port())
	}
	return net.JoinHostPort("127.0.0.1", fallbackPort)
}

func endpointOf(d pipeline.Data, comp string) (endpoint, error) {
	f := flagsOf(d, comp)
	pkiDir := node.DefaultPKIDir
	if c := d.Cluster(); c != nil && c.PKIDir != "" {
		pkiDir = c.PKIDir
	}
	switch comp {
	case "etcd":
		e := endpoint{addr: localAddr(f["listen-client-urls"], "2379"), healthz: "/health",
			caFile: f["trusted-ca-file"], certFile: path.Join(pkiDir, "etcd/healthcheck-client.crt"),
			keyFile: path.Join(pkiDir, "etcd/healthcheck-client.key"), served: f["cert-file"]}
		if e.caFile == "" {
			e.caFile = path.Join(pkiDir, "etcd/ca.crt")
		}
		if p := f["listen-peer-urls"]; p != "" && f["peer-cert-file"] != "" {
			e.extra = append(e.extra, servedCheck{addr: localAddr(p, "2380"), cert: f["peer-cert-file"],
				clientCert: f["peer-cert-file"], clientKey: f["peer-key-file"], ca: f["peer-trusted-ca-file"]})
		}
		return e, nil
	case "kube-apiserver":
		port := f["secure-port"]
		if port == "" {
			port = "6443"
		}
		e := endpoint{addr: net.JoinHostPort(apiserverHost(f), port), healthz: "/readyz", caFile: f["client-ca-file"], served: f["tls-cert-file"]}
		k, err := d.Node().Kubeconfig(node.KubernetesDir + "/admin.conf")
		if err != nil {
			return e, err
		}
		if k.User != nil {
			e.certPEM, e.keyPEM = k.User.ClientCertificateData, k.User.ClientKeyData
		}
		return e, nil
	case "kube-controller-manager":
		return endpoint{addr: net.JoinHostPort("127.0.0.1", orDefault(f["secure-port"], "10257")), healthz: "/healthz"}, nil
	case "kube-scheduler":
		return endpoint{addr: net.JoinHostPort("127.0.0.1", orDefault(f["secure-port"], "10259")), healthz: "/healthz"}, nil
	}
	return endpoint{}, fmt.Errorf("unknown component %s", comp)
}

// LocalAPIServer is the URL of this node's own kube-apiserver, from its
// manifest, reached as kubeadm's probes reach it; ok is false on a node
// without one (a worker).
func LocalAPIServer(d pipeline.Data) (string, bool) {
	f := flagsOf(d, "kube-apiserver")
	if len(f) == 0 {
		return "", false
	}
	return "https://" + net.JoinHostPort(apiserverHost(f), orDefault(f["secure-port"], "6443")), true
}

// apiserverHost is where to reach kube-apiserver from its node as kubeadm's
// own probes do: its --bind-address when specific, else its
// --advertise-address (kubeadm's serving certificate names that address,
// and 127.0.0.1 only when it is the advertise address), else loopback.
func apiserverHost(f map[string]string) string {
	if ip := net.ParseIP(f["bind-address"]); ip != nil && !ip.IsUnspecified() {
		return ip.String()
	}
	if ip := net.ParseIP(f["advertise-address"]); ip != nil && !ip.IsUnspecified() {
		return ip.String()
	}
	return "127.0.0.1"
}

func orDefault(v, d string) string {
	if v == "" || v == "0" {
		return d
	}
	return v
}

func (e endpoint) tlsConfig(n *node.Node) (*tls.Config, error) {
	cfg := &tls.Config{}
	if e.caFile != "" {
		pool := x509.NewCertPool()
		b, err := n.ReadFile(e.caFile)
		if err != nil {
			return nil, err
		}
		pool.AppendCertsFromPEM(b)
		cfg.RootCAs = pool
	} else {
		cfg.InsecureSkipVerify = true // kube-controller-manager/scheduler serve self-signed certificates
	}
	certPEM, keyPEM := e.certPEM, e.keyPEM
	if e.certFile != "" {
		var err error
		if certPEM, err = n.ReadFile(e.certFile); err != nil {
			return nil, err
		}
		if keyPEM, err = n.ReadFile(e.keyFile); err != nil {
			return nil, err
		}
	}
	if len(certPEM) > 0 {
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}

// Wait polls the component's health endpoint until it answers ok (or ctx
// ends), then checks that every TLS port serves the certificate on disk.
// It returns the served serial.
func Wait(ctx context.Context, d pipeline.Data, comp string) (string, error) {
	return wait(ctx, d, comp, 5*time.Second, true)
}

// Check is one round of Wait: the health endpoint asked once (answering
// within timeout), then the served certificates. It returns the served
// serial, or why the component is not proven.
func Check(ctx context.Context, d pipeline.Data, comp string, timeout time.Duration) (string, error) {
	return wait(ctx, d, comp, timeout, false)
}

func wait(ctx context.Context, d pipeline.Data, comp string, timeout time.Duration, poll bool) (string, error) {
	e, err := endpointOf(d, comp)
	if err != nil {
		return "", err
	}
	n := d.Node()
	tcfg, err := e.tlsConfig(n)
	if err != nil {
		return "", fmt.Errorf("%s health check credentials: %w", comp, err)
	}
	tr := &http.Transport{TLSClientConfig: tcfg, DialContext: (&net.Dialer{Timeout: min(2*time.Second, timeout)}).DialContext}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: timeout}
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+e.addr+e.healthz, nil)
		resp, err := cl.Do(req)
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
			last = fmt.Sprintf("%s%s answered %d: %s", e.addr, e.healthz, resp.StatusCode, strings.TrimSpace(string(b)))
		} else {
			last = err.Error()
		}
		if !poll {
			return "", fmt.Errorf("not healthy (%s)", last)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("not healthy within the timeout (last: %s)", last)
		case <-time.After(300 * time.Millisecond):
		}
	}
	serial := ""
	checks := e.extra
	if e.served != "" {
		checks = append([]servedCheck{{addr: e.addr, cert: e.served}}, checks...)
	}
	for i, sc := range checks {
		s, err := checkServed(n, sc, tcfg)
		if err != nil {
			return "", err
		}
		if i == 0 {
			serial = s
		}
	}
	return serial, nil
}

// checkServed compares the certificate served on a port with the one on disk.
func checkServed(n *node.Node, sc servedCheck, base *tls.Config) (string, error) {
	b, err := n.ReadFile(sc.cert)
	if err != nil {
		return "", err
	}
	want, err := pki.ParseCertificate(b)
	if err != nil {
		return "", fmt.Errorf("%s: %w", sc.cert, err)
	}
	cfg := &tls.Config{InsecureSkipVerify: true, Certificates: base.Certificates} // we compare the certificate itself
	if sc.clientCert != "" {
		cb, err1 := n.ReadFile(sc.clientCert)
		kb, err2 := n.ReadFile(sc.clientKey)
		if err1 == nil && err2 == nil {
			if c, err := tls.X509KeyPair(cb, kb); err == nil {
				cfg.Certificates = []tls.Certificate{c}
			}
		}
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", sc.addr, cfg)
	if err != nil {
		return "", fmt.Errorf("TLS to %s: %w", sc.addr, err)
	}
	defer conn.Close()
	got := conn.ConnectionState().PeerCertificates[0]
	if got.SerialNumber.Cmp(want.SerialNumber) != 0 {
		return "", fmt.Errorf("%s still serves serial %s (expires %s), but %s has serial %s: the process did not reload the renewed certificate",
			sc.addr, got.SerialNumber, got.NotAfter.UTC().Format(time.RFC3339), sc.cert, want.SerialNumber)
	}
	return got.SerialNumber.String(), nil
}
