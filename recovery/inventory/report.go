package inventory

import (
	"crypto/x509"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/util/duration"

	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// ReportAPIVersion versions the json/yaml schema of `kubecpr check`
// (docs/schema.md). Fields are only ever added within a version.
const ReportAPIVersion = "kubecpr.io/v1alpha1"

// Report is the machine-readable form of an inventory.
type Report struct {
	APIVersion  string        `json:"apiVersion" yaml:"apiVersion"`
	Kind        string        `json:"kind" yaml:"kind"`
	Now         time.Time     `json:"now" yaml:"now"`
	Root        string        `json:"root" yaml:"root"`
	Cluster     *node.Cluster `json:"cluster,omitempty" yaml:"cluster,omitempty"`
	Certs       []CertReport  `json:"certificates" yaml:"certificates"`
	CAs         []CertReport  `json:"certificateAuthorities" yaml:"certificateAuthorities"`
	SAProblems  []string      `json:"serviceAccountKeyProblems,omitempty" yaml:"serviceAccountKeyProblems,omitempty"`
	Notes       []string      `json:"notes,omitempty" yaml:"notes,omitempty"`
	Worst       pki.Status    `json:"worstStatus" yaml:"worstStatus"`
	ExitCode    int           `json:"exitCode" yaml:"exitCode"`
	WarnSeconds int64         `json:"warnSeconds" yaml:"warnSeconds"`
}

// CertReport is one certificate (or CA) in a Report.
type CertReport struct {
	Name              string     `json:"name" yaml:"name"`
	Kind              string     `json:"kind" yaml:"kind"`
	Path              string     `json:"path" yaml:"path"`
	KeyPath           string     `json:"keyPath,omitempty" yaml:"keyPath,omitempty"`
	Status            pki.Status `json:"status" yaml:"status"`
	NotBefore         *time.Time `json:"notBefore,omitempty" yaml:"notBefore,omitempty"`
	Expires           *time.Time `json:"expires,omitempty" yaml:"expires,omitempty"`
	ResidualSeconds   int64      `json:"residualSeconds" yaml:"residualSeconds"`
	Residual          string     `json:"residual" yaml:"residual"`
	CA                string     `json:"certificateAuthority,omitempty" yaml:"certificateAuthority,omitempty"`
	ExternallyManaged bool       `json:"externallyManaged" yaml:"externallyManaged"`
	Serial            string     `json:"serial,omitempty" yaml:"serial,omitempty"`
	CommonName        string     `json:"commonName,omitempty" yaml:"commonName,omitempty"`
	Organizations     []string   `json:"organizations,omitempty" yaml:"organizations,omitempty"`
	DNSNames          []string   `json:"dnsNames,omitempty" yaml:"dnsNames,omitempty"`
	IPAddresses       []string   `json:"ipAddresses,omitempty" yaml:"ipAddresses,omitempty"`
	KeyType           string     `json:"keyType,omitempty" yaml:"keyType,omitempty"`
	Problems          []string   `json:"problems,omitempty" yaml:"problems,omitempty"`
}

// ExitCode maps the worst status to check's exit code: 0 ok, 1 expiring,
// 2 expired or invalid.
func (inv *Inventory) ExitCode() int { return inv.Worst().Severity() }

// Report builds the machine-readable report.
func (inv *Inventory) Report() *Report {
	r := &Report{APIVersion: ReportAPIVersion, Kind: "CheckReport", Now: inv.Now.UTC(), Root: inv.Node.Root,
		Cluster: inv.Cluster, SAProblems: inv.SAProblems, Notes: inv.Notes, Worst: inv.Worst(), ExitCode: inv.ExitCode(),
		WarnSeconds: int64(inv.Warn / time.Second)}
	r.Certs = []CertReport{}
	r.CAs = []CertReport{}
	for _, it := range inv.Sorted() {
		cr := CertReport{Name: it.Name, Kind: string(it.Kind), Path: it.Path, KeyPath: it.KeyPath, Status: it.Status,
			CA: it.CAName, ExternallyManaged: it.External, Problems: it.Problems}
		fillCert(&cr, it.Cert, inv.Now)
		r.Certs = append(r.Certs, cr)
	}
	for _, c := range inv.CAs {
		cr := CertReport{Name: c.Name, Kind: "certificate-authority", Path: c.CertPath, KeyPath: c.KeyPath, Status: c.Status,
			ExternallyManaged: c.External(), Problems: c.Problems}
		if c.CA != nil {
			fillCert(&cr, c.CA.Cert, inv.Now)
		}
		r.CAs = append(r.CAs, cr)
	}
	return r
}

func fillCert(cr *CertReport, cert *x509.Certificate, now time.Time) {
	if cert == nil {
		return
	}
	nb, na := cert.NotBefore.UTC(), cert.NotAfter.UTC()
	cr.NotBefore, cr.Expires = &nb, &na
	cr.ResidualSeconds = int64(cert.NotAfter.Sub(now) / time.Second)
	cr.Residual = Residual(cert.NotAfter, now)
	cr.Serial = cert.SerialNumber.String()
	cr.CommonName = cert.Subject.CommonName
	cr.Organizations = cert.Subject.Organization
	cr.DNSNames = cert.DNSNames
	for _, ip := range cert.IPAddresses {
		cr.IPAddresses = append(cr.IPAddresses, ip.String())
	}
	cr.KeyType = pki.KeyDescription(cert.PublicKey)
}

// Residual formats the time left the way kubeadm does ("364d", "9y",
// "<invalid>" once expired).
func Residual(notAfter, now time.Time) string {
	d := notAfter.Sub(now)
	if d < 0 {
		return "<invalid>"
	}
	return duration.ShortHumanDuration(d)
}

// ExpiresFormat is kubeadm's check-expiration time format.
const ExpiresFormat = "Jan 02, 2006 15:04 MST"

// WriteTable prints the kubeadm-style tables plus STATUS.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 10, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "CERTIFICATE\tEXPIRES\tRESIDUAL TIME\tCERTIFICATE AUTHORITY\tEXTERNALLY MANAGED\tSTATUS")
	for _, c := range r.Certs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, expires(c), c.Residual, c.CA, yesNo(c.ExternallyManaged), c.Status)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "CERTIFICATE AUTHORITY\tEXPIRES\tRESIDUAL TIME\tEXTERNALLY MANAGED\tSTATUS")
	for _, c := range r.CAs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Name, expires(c), c.Residual, yesNo(c.ExternallyManaged), c.Status)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var probs []string
	for _, c := range append(append([]CertReport{}, r.Certs...), r.CAs...) {
		probs = append(probs, c.Problems...)
	}
	probs = append(probs, r.SAProblems...)
	if len(r.Notes) > 0 {
		fmt.Fprintln(w, "\nNOTES")
		for _, n := range r.Notes {
			fmt.Fprintln(w, "  - "+n)
		}
	}
	if len(probs) > 0 {
		fmt.Fprintln(w, "\nPROBLEMS")
		for _, p := range probs {
			fmt.Fprintln(w, "  - "+p)
		}
	}
	return nil
}

func expires(c CertReport) string {
	if c.Expires == nil {
		return "-"
	}
	return c.Expires.UTC().Format(ExpiresFormat)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// Summary is one line for progress output: "12 certificates: 9 expired, 3 ok".
func (inv *Inventory) Summary() string {
	counts := map[pki.Status]int{}
	for _, it := range inv.Items {
		counts[it.Status]++
	}
	var parts []string
	for _, s := range []pki.Status{pki.StatusExpired, pki.StatusNotYetValid, pki.StatusInvalid, pki.StatusMissing, pki.StatusExpiring, pki.StatusOK} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	return fmt.Sprintf("%d certificates: %s", len(inv.Items), strings.Join(parts, ", "))
}
