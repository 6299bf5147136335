// Package diagnose reads the symptoms of a node with expired credentials:
// inventory problems, API reachability (and which side's certificate is at
// fault), the kubelet's known log lines, clock sanity and external-CA mode.
// Each symptom comes with the next command to run. It changes nothing.
package diagnose

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"time"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// Severity of a symptom.
type Severity string

const (
	Info     Severity = "info"
	Warning  Severity = "warning"
	Critical Severity = "critical"
)

// Symptom is one finding with what to do next.
type Symptom struct {
	ID       string   `json:"id" yaml:"id"`
	Severity Severity `json:"severity" yaml:"severity"`
	Message  string   `json:"message" yaml:"message"`
	Evidence []string `json:"evidence,omitempty" yaml:"evidence,omitempty"`
	Next     string   `json:"next,omitempty" yaml:"next,omitempty"`
}

// Options for Diagnose.
type Options struct {
	// Offline skips every network probe.
	Offline bool
	// KubeletLog is a host file with kubelet log lines; when empty and the
	// root is "/", journalctl -u kubelet is read if present.
	KubeletLog string
	// Timeout per network probe.
	Timeout time.Duration
	// RealNow is the wall clock (file times are compared with it).
	RealNow time.Time
}

// Report is inventory plus symptoms.
type Report struct {
	*inventory.Report `json:",inline" yaml:",inline"`
	Symptoms          []Symptom `json:"symptoms" yaml:"symptoms"`
}

// KnownLogLines are kubelet log lines that point at expired credentials
// (Pattern is a regular expression).
var KnownLogLines = []struct {
	Pattern, ID, Message, Next string
}{
	{`(?i)part of the existing bootstrap client certificate( in \S+)? is expired`, "kubelet-client-expired",
		"the kubelet's client certificate has expired and it cannot re-bootstrap",
		"kubecpr run (re-issues kubelet-client-current.pem and restarts the kubelet)"},
	{`x509: certificate has expired or is not yet valid`, "x509-expired",
		"a TLS peer presented an expired (or not yet valid) certificate",
		"kubecpr check to see which, then kubecpr run"},
	{`\bUnauthorized\b`, "unauthorized",
		"the API server rejected a client certificate (expired client certs are treated as anonymous)",
		"kubecpr run --until kubeconfigs, then restart the kubelet and control plane"},
	{`"Current certificate is expired"`, "kubelet-rotation-expired",
		"the kubelet's certificate manager holds an expired client certificate and cannot rotate it (kubelet 1.2x+ log line)",
		"kubecpr run (re-issues kubelet-client-current.pem and restarts the kubelet)"},
	{`unable to load bootstrap kubeconfig`, "bootstrap-kubeconfig",
		"the kubelet has neither a valid client certificate nor a bootstrap kubeconfig",
		"kubecpr run (re-issues the kubelet client certificate)"},
}

// Diagnose builds the report.
func Diagnose(ctx context.Context, n *node.Node, inv *inventory.Inventory, o Options) *Report {
	if o.Timeout == 0 {
		o.Timeout = 3 * time.Second
	}
	if o.RealNow.IsZero() {
		o.RealNow = time.Now()
	}
	r := &Report{Report: inv.Report(), Symptoms: []Symptom{}}
	r.Kind = "DiagnoseReport"
	r.inventorySymptoms(inv)
	r.clockSymptoms(n, inv, o)
	if !o.Offline {
		r.apiSymptoms(ctx, n, inv, o)
	}
	r.kubeletSymptoms(ctx, n, o)
	return r
}

func (r *Report) add(s Symptom) { r.Symptoms = append(r.Symptoms, s) }

func (r *Report) inventorySymptoms(inv *inventory.Inventory) {
	var expired, expiring []string
	for _, it := range inv.Sorted() {
		switch it.Status {
		case pki.StatusExpired:
			expired = append(expired, it.Name)
		case pki.StatusExpiring:
			expiring = append(expiring, it.Name)
		}
	}
	if len(expired) > 0 {
		r.add(Symptom{ID: "certs-expired", Severity: Critical,
			Message:  fmt.Sprintf("%d certificates have expired", len(expired)),
			Evidence: expired, Next: "kubecpr plan, then kubecpr run"})
	}
	if len(expiring) > 0 {
		r.add(Symptom{ID: "certs-expiring", Severity: Warning,
			Message:  fmt.Sprintf("%d certificates expire within %s", len(expiring), inv.Warn),
			Evidence: expiring, Next: "kubecpr rehearse, then kubecpr run in a maintenance window"})
	}
	for _, c := range inv.CAs {
		switch {
		case c.CA == nil:
			continue
		case c.Status == pki.StatusExpired:
			r.add(Symptom{ID: "ca-expired", Severity: Critical,
				Message: fmt.Sprintf("the %s CA (%s) has expired: leaves cannot be renewed from it", c.Name, c.CertPath),
				Next:    "read docs/expired-ca.md: renew the CA with its existing key, or rebuild the PKI"})
		case c.Status == pki.StatusExpiring:
			r.add(Symptom{ID: "ca-expiring", Severity: Warning,
				Message: fmt.Sprintf("the %s CA (%s) expires on %s", c.Name, c.CertPath, c.CA.Cert.NotAfter.UTC().Format(time.RFC3339)),
				Next:    "plan a CA rotation (kubeadm docs: manual rotation of CA certificates)"})
		}
		if c.External() {
			r.add(Symptom{ID: "external-ca", Severity: Info,
				Message: fmt.Sprintf("the %s CA key (%s) is not on this node: external CA mode", c.Name, c.KeyPath),
				Next:    "kubecpr run --csr-dir DIR writes CSRs for your CA to sign"})
		}
	}
	var invalid []string
	for _, it := range inv.Sorted() {
		if it.Status == pki.StatusInvalid || it.Status == pki.StatusMissing {
			invalid = append(invalid, it.Problems...)
		}
	}
	invalid = append(invalid, inv.SAProblems...)
	if len(invalid) > 0 {
		r.add(Symptom{ID: "invalid-credentials", Severity: Critical,
			Message: "some credentials are missing, corrupt, mismatched or belong to another node", Evidence: invalid,
			Next: "missing files: kubecpr run creates them from the CA with kubeadm's profiles; corrupt, mismatched or foreign ones: fix or restore them first (kubecpr run refuses to renew from bad input)"})
	}
}

func (r *Report) clockSymptoms(n *node.Node, inv *inventory.Inventory, o Options) {
	var future []string
	for _, it := range inv.Sorted() {
		if it.Status == pki.StatusNotYetValid {
			future = append(future, fmt.Sprintf("%s is valid only from %s", it.Name, it.Cert.NotBefore.UTC().Format(time.RFC3339)))
		}
	}
	if len(future) > 0 {
		r.add(Symptom{ID: "clock-behind", Severity: Critical,
			Message: "certificates are not yet valid: the clock is probably behind", Evidence: future,
			Next: "check `date` and NTP (timedatectl, chronyc tracking) before renewing anything"})
	}
	limit := o.RealNow.Add(5 * time.Minute)
	var touched []string
	_ = filepath.WalkDir(n.HostPath(node.KubernetesDir), func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return nil
		}
		if info, err := de.Info(); err == nil && info.ModTime().After(limit) {
			np, _ := n.NodePath(p)
			touched = append(touched, fmt.Sprintf("%s modified %s", np, info.ModTime().UTC().Format(time.RFC3339)))
		}
		return nil
	})
	if len(touched) > 0 {
		r.add(Symptom{ID: "file-times-future", Severity: Warning,
			Message: "files have modification times in the future: the clock may have jumped back", Evidence: touched,
			Next: "check `date` and NTP before renewing"})
	}
}

// apiSymptoms probes the API endpoint of admin.conf: refused connection,
// expired serving certificate, or rejected client certificate.
func (r *Report) apiSymptoms(ctx context.Context, n *node.Node, inv *inventory.Inventory, o Options) {
	kc := filepath.ToSlash(filepath.Join(node.KubernetesDir, "admin.conf"))
	k, err := n.Kubeconfig(kc)
	if err != nil {
		return
	}
	cfg := k.Config
	server, err := inventory.ServerOf(n, kc)
	if err != nil {
		return
	}
	u, err := url.Parse(server)
	if err != nil || u.Host == "" {
		return
	}
	res := Probe(ctx, u.Host, cfg, o.Timeout)
	ev := []string{"endpoint " + server + " (from " + kc + ")"}
	switch {
	case res.Refused:
		r.add(Symptom{ID: "api-refused", Severity: Critical, Message: "nothing listens on the API endpoint: kube-apiserver is not running",
			Evidence: append(ev, res.Err), Next: "kubecpr run (renews, then the bounce stage restarts the static pods); meanwhile `crictl ps -a --name kube-apiserver` and its logs"})
	case res.Err != "" && res.ServingCert == nil:
		r.add(Symptom{ID: "api-unreachable", Severity: Critical, Message: "the API endpoint could not be reached",
			Evidence: append(ev, res.Err), Next: "check the address and the network; kubecpr diagnose --offline skips this probe"})
	case res.ServingCert != nil && !o.RealNow.Before(res.ServingCert.NotAfter):
		r.add(Symptom{ID: "api-serving-expired", Severity: Critical,
			Message:  "the API server serves an expired certificate: clients fail with `x509: certificate has expired or is not yet valid`",
			Evidence: append(ev, fmt.Sprintf("served serial %s expired %s", res.ServingCert.SerialNumber, res.ServingCert.NotAfter.UTC().Format(time.RFC3339))),
			Next:     "kubecpr run (the API server must be restarted after renewal to serve the new certificate)"})
	case res.Status == http.StatusUnauthorized:
		r.add(Symptom{ID: "api-unauthorized", Severity: Critical,
			Message:  "the API server answers but rejects admin.conf's client certificate (Unauthorized): it has expired",
			Evidence: ev, Next: "kubecpr run --until kubeconfigs"})
	case res.Err != "":
		r.add(Symptom{ID: "api-error", Severity: Warning, Message: "the API server answered with an error", Evidence: append(ev, res.Err)})
	default:
		r.add(Symptom{ID: "api-ok", Severity: Info, Message: fmt.Sprintf("the API server answers /readyz with %d", res.Status), Evidence: ev})
	}
}

// ProbeResult is what one TLS probe of an endpoint found.
type ProbeResult struct {
	Refused     bool
	ServingCert *x509.Certificate
	Status      int
	Err         string
}

// Probe connects to host:port, records the served certificate, and asks
// /readyz with the kubeconfig's client certificate. It never verifies
// expiry itself (so an expired serving cert can be reported, not hidden).
func Probe(ctx context.Context, hostport string, cfg *clientcmdapi.Config, timeout time.Duration) ProbeResult {
	var res ProbeResult
	var clientCert []tls.Certificate
	if cert, ok := clientCertOf(cfg); ok {
		clientCert = []tls.Certificate{cert}
	}
	tcfg := &tls.Config{
		InsecureSkipVerify: true, // we inspect the chain ourselves, and only report
		Certificates:       clientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) > 0 {
				res.ServingCert = cs.PeerCertificates[0]
			}
			return nil
		},
	}
	dialer := &net.Dialer{Timeout: timeout}
	tr := &http.Transport{TLSClientConfig: tcfg, DialContext: dialer.DialContext, TLSHandshakeTimeout: timeout}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: timeout}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+hostport+"/readyz", nil)
	resp, err := cl.Do(req)
	if err != nil {
		res.Err = err.Error()
		res.Refused = errors.Is(err, syscall.ECONNREFUSED)
		return res
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	res.Status = resp.StatusCode
	if resp.StatusCode >= 400 && resp.StatusCode != http.StatusUnauthorized {
		res.Err = resp.Status
	}
	return res
}

func clientCertOf(cfg *clientcmdapi.Config) (tls.Certificate, bool) {
	if cfg == nil {
		return tls.Certificate{}, false
	}
	ctx, ok := cfg.Contexts[cfg.CurrentContext]
	if !ok {
		return tls.Certificate{}, false
	}
	ai, ok := cfg.AuthInfos[ctx.AuthInfo]
	if !ok || len(ai.ClientCertificateData) == 0 {
		return tls.Certificate{}, false
	}
	c, err := tls.X509KeyPair(ai.ClientCertificateData, ai.ClientKeyData)
	return c, err == nil
}

func (r *Report) kubeletSymptoms(ctx context.Context, n *node.Node, o Options) {
	var logs []byte
	src := ""
	switch {
	case o.KubeletLog != "":
		b, err := os.ReadFile(o.KubeletLog)
		if err != nil {
			r.add(Symptom{ID: "kubelet-log-unreadable", Severity: Warning, Message: "--kubelet-log: " + err.Error()})
			return
		}
		logs, src = b, o.KubeletLog
	case n.Root == "/":
		if _, err := exec.LookPath("journalctl"); err != nil {
			return
		}
		cctx, cancel := context.WithTimeout(ctx, o.Timeout)
		defer cancel()
		out, err := exec.CommandContext(cctx, "journalctl", "-u", "kubelet", "-n", "300", "--no-pager", "-o", "cat").Output()
		if err != nil {
			return
		}
		logs, src = out, "journalctl -u kubelet"
	default:
		return
	}
	found := map[string][]string{}
	res := make([]*regexp.Regexp, len(KnownLogLines))
	for i, k := range KnownLogLines {
		res[i] = regexp.MustCompile(k.Pattern)
	}
	sc := bufio.NewScanner(bytes.NewReader(logs))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		for i, k := range KnownLogLines {
			if res[i].MatchString(line) && len(found[k.ID]) < 3 {
				found[k.ID] = append(found[k.ID], truncate(line, 240))
			}
		}
	}
	for _, k := range KnownLogLines {
		if ev := found[k.ID]; len(ev) > 0 {
			r.add(Symptom{ID: "kubelet-" + k.ID, Severity: Critical, Message: "kubelet log (" + src + "): " + k.Message, Evidence: ev, Next: k.Next})
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// WriteText prints the symptoms after the inventory tables.
func (r *Report) WriteText(w io.Writer) error {
	if err := r.Report.WriteTable(w); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nSYMPTOMS")
	if len(r.Symptoms) == 0 {
		fmt.Fprintln(w, "  none found")
	}
	for _, s := range r.Symptoms {
		fmt.Fprintf(w, "  [%s] %s\n", s.Severity, s.Message)
		for _, e := range s.Evidence {
			fmt.Fprintf(w, "      %s\n", e)
		}
		if s.Next != "" {
			fmt.Fprintf(w, "      next: %s\n", s.Next)
		}
	}
	return nil
}

// Stage is diagnose as the first, read-only stage of the pipeline.
var Stage = pipeline.Stage{
	Name:  "diagnose",
	Short: "inventory every credential and say what is expired",
	Plan: func(ctx context.Context, d pipeline.Data) ([]pipeline.Action, error) {
		return []pipeline.Action{{
			ID:      "diagnose/inventory",
			Summary: "read every credential on the node",
			Run: func(ctx context.Context) (map[string]string, error) {
				inv, err := d.Inventory()
				if err != nil {
					return nil, err
				}
				fmt.Fprintf(d.Out(), "      %s\n", inv.Summary())
				return map[string]string{"summary": inv.Summary()}, nil
			},
		}}, nil
	},
}
