// Package metrics writes a check report in the Prometheus text exposition
// format for node_exporter's textfile collector: one series per credential,
// named as the community's x509-certificate-exporter names them
// (x509_cert_not_after, x509_cert_not_before, x509_cert_expired), so that
// existing dashboards and alerts work unchanged, plus kubecpr's own status
// of each credential. The file is replaced atomically: node_exporter never
// reads half a file.
package metrics

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kubecpr/kubecpr/recovery/atomicfile"
	"github.com/kubecpr/kubecpr/recovery/inventory"
)

// FileName is the file written in the textfile collector's directory
// (node_exporter reads *.prom).
const FileName = "kubecpr.prom"

// Mode of the file: node_exporter usually runs as its own user.
const Mode = 0o644

// Metric names.
const (
	NotAfter       = "x509_cert_not_after"
	NotBefore      = "x509_cert_not_before"
	Expired        = "x509_cert_expired"
	Status         = "kubecpr_cert_status"
	CheckTimestamp = "kubecpr_check_timestamp_seconds"
	CheckExitCode  = "kubecpr_check_exit_code"
)

// Write renders r and atomically replaces dir/kubecpr.prom with it, mode
// 0644. dir is a host path and must exist (it is node_exporter's
// --collector.textfile.directory).
func Write(dir string, r *inventory.Report) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("--textfile %s: %w (create it, or point --textfile at node_exporter's --collector.textfile.directory)", dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("--textfile %s: not a directory", dir)
	}
	return atomicfile.WriteFile(filepath.Join(dir, FileName), Render(r), atomicfile.Options{Mode: Mode, ForceMode: true})
}

// Render returns the report in the text exposition format.
//
// Every credential whose certificate could be read gets the three x509_*
// series, labelled name, kind, filepath (node path), subject_CN, issuer_CN
// and serial_number (decimal); issuer_CN is the common name of the CA
// kubecpr checked the certificate against, empty where the report names
// none (the CAs themselves, the kubelet's self-signed kubelet.crt). Every
// credential, readable or not, gets one kubecpr_cert_status{name,status}
// series of value 1. Values are seconds since the epoch.
func Render(r *inventory.Report) []byte {
	issuers := map[string]string{}
	for _, ca := range r.CAs {
		issuers[ca.Name] = ca.CommonName
	}
	all := append(append([]inventory.CertReport{}, r.Certs...), r.CAs...)

	var notAfter, notBefore, expired, status family
	for _, c := range all {
		status.add(labels{{"name", c.Name}, {"status", string(c.Status)}}, "1")
		if c.Expires == nil || c.NotBefore == nil {
			continue
		}
		l := labels{{"name", c.Name}, {"kind", c.Kind}, {"filepath", c.Path}, {"subject_CN", c.CommonName},
			{"issuer_CN", issuers[c.CA]}, {"serial_number", c.Serial}}
		notAfter.add(l, seconds(*c.Expires))
		notBefore.add(l, seconds(*c.NotBefore))
		exp := "0"
		if !r.Now.Before(*c.Expires) {
			exp = "1"
		}
		expired.add(l, exp)
	}

	var b bytes.Buffer
	notAfter.write(&b, NotAfter, "The certificate's NotAfter (expiry) in seconds since the epoch: alert on x509_cert_not_after - time().")
	notBefore.write(&b, NotBefore, "The certificate's NotBefore in seconds since the epoch.")
	expired.write(&b, Expired, "1 if the certificate had expired when kubecpr check ran, else 0.")
	status.write(&b, Status, "kubecpr's status of the credential (ok, expiring, expired, not-yet-valid, missing, invalid); always 1.")
	var when family
	when.add(nil, seconds(r.Now))
	when.write(&b, CheckTimestamp, "When kubecpr check ran (its clock), in seconds since the epoch.")
	var code family
	code.add(nil, strconv.Itoa(r.ExitCode))
	code.write(&b, CheckExitCode, "The exit code of kubecpr check: 0 ok, 1 expiring, 2 expired, missing or invalid.")
	return b.Bytes()
}

type label struct{ name, value string }

type labels []label

// family is the series of one metric, in order, each label set once:
// node_exporter rejects a whole file that repeats a series.
type family struct {
	lines []string
	seen  map[string]bool
}

func (f *family) add(l labels, value string) {
	var b strings.Builder
	if len(l) > 0 {
		b.WriteByte('{')
		for i, kv := range l {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(kv.name)
			b.WriteString(`="`)
			b.WriteString(escape(kv.value))
			b.WriteByte('"')
		}
		b.WriteByte('}')
	}
	key := b.String()
	if f.seen == nil {
		f.seen = map[string]bool{}
	}
	if f.seen[key] {
		return
	}
	f.seen[key] = true
	f.lines = append(f.lines, key+" "+value)
}

func (f *family) write(b *bytes.Buffer, name, help string) {
	if len(f.lines) == 0 {
		return
	}
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
	for _, l := range f.lines {
		b.WriteString(name)
		b.WriteString(l)
		b.WriteByte('\n')
	}
}

// escape makes s a valid label value: UTF-8 (a certificate's CN need not
// be), with backslash, double quote and line feed escaped as the format
// requires.
func escape(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

func seconds(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }
