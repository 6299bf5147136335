package metrics_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/metrics"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/fixture"
)

var (
	now  = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	keys = fixture.NewKeyPool(24)
)

// report generates a kubeadm node whose leaves expired three days ago and
// returns its check report and node.
func report(t *testing.T) (*inventory.Report, *node.Node) {
	t.Helper()
	root := t.TempDir()
	_, err := fixture.Generate(root, fixture.Options{NodeName: "cp-1", Now: now, Keys: keys,
		CA:   fixture.Window{NotBefore: now.AddDate(-2, 0, 0), NotAfter: now.AddDate(8, 0, 0)},
		Leaf: fixture.Window{NotBefore: now.AddDate(-1, 0, -3), NotAfter: now.AddDate(0, 0, -3)},
		// One kubelet credential still valid: both values of x509_cert_expired.
		KubeletClient: fixture.Window{NotBefore: now.AddDate(0, 0, -10), NotAfter: now.AddDate(1, 0, 0)},
	})
	if err != nil {
		t.Fatal(err)
	}
	n, err := node.New(root)
	if err != nil {
		t.Fatal(err)
	}
	c, err := n.Discover("")
	if err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.Build(n, c, now, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return inv.Report(), n
}

// parse reads a textfile the way node_exporter does: the Prometheus text
// parser with the classic (legacy) name validation.
func parse(t *testing.T, data []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("the Prometheus text parser refuses the file: %v\n%s", err, data)
	}
	return fams
}

func labelMap(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

// certAt reads the certificate a series names from the node itself,
// independently of the inventory: the first CERTIFICATE block of a PEM
// file, or the client certificate of a kubeconfig's current context.
func certAt(t *testing.T, n *node.Node, nodePath string) *x509.Certificate {
	t.Helper()
	data, err := n.ReadFile(nodePath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte("-----BEGIN CERTIFICATE-----")) {
		cfg, err := clientcmd.Load(data)
		if err != nil {
			t.Fatalf("%s: %v", nodePath, err)
		}
		ctx := cfg.Contexts[cfg.CurrentContext]
		data = cfg.AuthInfos[ctx.AuthInfo].ClientCertificateData
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			t.Fatalf("%s: no certificate", nodePath)
		}
		if b.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
	}
}

func TestWriteParsesAndMatchesTheCertificates(t *testing.T) {
	rep, n := report(t)
	dir := t.TempDir()
	if err := metrics.Write(dir, rep); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, metrics.FileName))
	if err != nil {
		t.Fatal(err)
	}
	fams := parse(t, data)

	var names []string
	for name, f := range fams {
		names = append(names, name)
		if f.GetType() != dto.MetricType_GAUGE {
			t.Errorf("%s: type %v, want gauge", name, f.GetType())
		}
		if f.GetHelp() == "" {
			t.Errorf("%s: no HELP", name)
		}
	}
	sort.Strings(names)
	want := []string{metrics.CheckExitCode, metrics.Status, metrics.CheckTimestamp, metrics.Expired, metrics.NotAfter, metrics.NotBefore}
	sort.Strings(want)
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("metric families (-want +got):\n%s", diff)
	}

	// One series per credential, each value the certificate's own.
	caCN := map[string]string{}
	for _, ca := range rep.CAs {
		caCN[ca.Name] = certAt(t, n, ca.Path).Subject.CommonName
	}
	byName := map[string]inventory.CertReport{}
	for _, c := range append(append([]inventory.CertReport{}, rep.Certs...), rep.CAs...) {
		byName[c.Name] = c
	}
	for _, fam := range []string{metrics.NotAfter, metrics.NotBefore, metrics.Expired} {
		if got, want := len(fams[fam].GetMetric()), len(byName); got != want {
			t.Errorf("%s: %d series, want %d (one per credential)", fam, got, want)
		}
	}
	expiredSeen := map[float64]bool{}
	for _, m := range fams[metrics.NotAfter].GetMetric() {
		l := labelMap(m)
		c, ok := byName[l["name"]]
		if !ok {
			t.Errorf("series for unknown credential %q", l["name"])
			continue
		}
		cert := certAt(t, n, l["filepath"])
		wantIssuer := caCN[c.CA]
		if c.Kind == "certificate-authority" {
			wantIssuer = ""
		}
		wantLabels := map[string]string{"name": c.Name, "kind": c.Kind, "filepath": c.Path,
			"subject_CN": cert.Subject.CommonName, "issuer_CN": wantIssuer, "serial_number": cert.SerialNumber.String()}
		if diff := cmp.Diff(wantLabels, l); diff != "" {
			t.Errorf("%s labels (-want +got):\n%s", c.Name, diff)
		}
		if c.CA != "" && cert.Issuer.CommonName != wantIssuer {
			t.Errorf("%s: issuer_CN %q, but the certificate's issuer is %q", c.Name, wantIssuer, cert.Issuer.CommonName)
		}
		if got, want := m.GetGauge().GetValue(), float64(cert.NotAfter.Unix()); got != want {
			t.Errorf("%s: x509_cert_not_after %v, want %v (%s)", c.Name, got, want, cert.NotAfter)
		}
		nb := find(t, fams[metrics.NotBefore], l)
		if got, want := nb.GetGauge().GetValue(), float64(cert.NotBefore.Unix()); got != want {
			t.Errorf("%s: x509_cert_not_before %v, want %v", c.Name, got, want)
		}
		exp := find(t, fams[metrics.Expired], l).GetGauge().GetValue()
		wantExp := 0.0
		if !now.Before(cert.NotAfter) {
			wantExp = 1
		}
		if exp != wantExp {
			t.Errorf("%s: x509_cert_expired %v, want %v", c.Name, exp, wantExp)
		}
		expiredSeen[exp] = true
	}
	if !expiredSeen[0] || !expiredSeen[1] {
		t.Errorf("fixture should give both expired and valid certificates, saw %v", expiredSeen)
	}

	// Status: one series per credential, value 1, the report's status.
	gotStatus := map[string]string{}
	for _, m := range fams[metrics.Status].GetMetric() {
		l := labelMap(m)
		if m.GetGauge().GetValue() != 1 {
			t.Errorf("%v: value %v, want 1", l, m.GetGauge().GetValue())
		}
		if _, dup := gotStatus[l["name"]]; dup {
			t.Errorf("two status series for %s", l["name"])
		}
		gotStatus[l["name"]] = l["status"]
	}
	wantStatus := map[string]string{}
	for name, c := range byName {
		wantStatus[name] = string(c.Status)
	}
	if diff := cmp.Diff(wantStatus, gotStatus); diff != "" {
		t.Errorf("kubecpr_cert_status (-want +got):\n%s", diff)
	}
	if gotStatus["apiserver"] != string(pki.StatusExpired) || gotStatus["kubelet-client-current.pem"] != string(pki.StatusOK) {
		t.Errorf("fixture statuses: %v", gotStatus)
	}
	if got := fams[metrics.CheckTimestamp].GetMetric()[0].GetGauge().GetValue(); got != float64(now.Unix()) {
		t.Errorf("check timestamp %v, want %v", got, now.Unix())
	}
	if got := fams[metrics.CheckExitCode].GetMetric()[0].GetGauge().GetValue(); got != float64(rep.ExitCode) || got != 2 {
		t.Errorf("check exit code %v, want 2", got)
	}
}

func find(t *testing.T, f *dto.MetricFamily, l map[string]string) *dto.Metric {
	t.Helper()
	for _, m := range f.GetMetric() {
		if cmp.Equal(labelMap(m), l) {
			return m
		}
	}
	t.Fatalf("%s: no series %v", f.GetName(), l)
	return nil
}

func TestWriteIsAtomicAndWorldReadable(t *testing.T) {
	rep, _ := report(t)
	dir := t.TempDir()
	p := filepath.Join(dir, metrics.FileName)
	// An earlier file with another mode and other content is replaced.
	if err := os.WriteFile(p, []byte("stale 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(p)
	if err := metrics.Write(dir, rep); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644 (node_exporter runs as its own user)", st.Mode().Perm())
	}
	if os.SameFile(before, st) {
		t.Errorf("the file was rewritten in place, not replaced by a rename")
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if diff := cmp.Diff([]string{metrics.FileName}, left); diff != "" {
		t.Errorf("directory after the write (-want +got), no temporary file may stay:\n%s", diff)
	}
	data, _ := os.ReadFile(p)
	if bytes.Contains(data, []byte("stale")) {
		t.Errorf("old content left:\n%s", data)
	}
	parse(t, data)
}

func TestWriteFailureLeavesTheOldFile(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root writes into a read-only directory")
	}
	rep, _ := report(t)
	dir := t.TempDir()
	p := filepath.Join(dir, metrics.FileName)
	if err := os.WriteFile(p, []byte("old 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o755)
	if err := metrics.Write(dir, rep); err == nil {
		t.Fatal("write into a read-only directory succeeded")
	}
	if data, _ := os.ReadFile(p); string(data) != "old 1\n" {
		t.Errorf("old file changed: %q", data)
	}
}

func TestWriteRefusesAMissingDirectory(t *testing.T) {
	rep := &inventory.Report{Now: now}
	dir := filepath.Join(t.TempDir(), "textfile_collector")
	err := metrics.Write(dir, rep)
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "collector.textfile.directory") {
		t.Fatalf("error %v, want one naming %s and node_exporter's flag", err, dir)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("%s was created", dir)
	}
}

// Label values come from certificates and file names: whatever they hold,
// the file must parse and give the values back.
func TestRenderEscapesHostileLabels(t *testing.T) {
	na, nb := now.Add(time.Hour), now.Add(-time.Hour)
	hostile := []string{`quo"te`, `back\slash`, "new\nline", "tab\tand space", "bad utf8 \xff\xfe", "{}=,", "ünïcödé", ""}
	rep := &inventory.Report{Now: now, ExitCode: 0}
	for i, s := range hostile {
		rep.Certs = append(rep.Certs, inventory.CertReport{Name: "n" + string(rune('a'+i)) + s, Kind: "certificate",
			Path: "/home/" + s + "/.kube/config", Status: pki.StatusOK, NotBefore: &nb, Expires: &na, CommonName: s, Serial: "1"})
	}
	// A duplicate must not reach the file: node_exporter drops a whole
	// file that repeats a series.
	rep.Certs = append(rep.Certs, rep.Certs[0])
	fams := parse(t, metrics.Render(rep))
	got := map[string]bool{}
	for _, m := range fams[metrics.NotAfter].GetMetric() {
		l := labelMap(m)
		got[l["subject_CN"]] = true
	}
	for _, s := range hostile {
		want := strings.ToValidUTF8(s, "\uFFFD")
		if !got[want] && want != "" {
			t.Errorf("subject_CN %q lost; got %v", want, got)
		}
	}
	if n := len(fams[metrics.NotAfter].GetMetric()); n != len(hostile) {
		t.Errorf("%d series, want %d (duplicate dropped)", n, len(hostile))
	}
	if n := len(fams[metrics.Status].GetMetric()); n != len(hostile) {
		t.Errorf("%d status series, want %d (duplicate dropped)", n, len(hostile))
	}
}

// A credential that could not be read has no dates: status only.
func TestRenderMissingCertificate(t *testing.T) {
	rep := &inventory.Report{Now: now, ExitCode: 2, Certs: []inventory.CertReport{
		{Name: "apiserver", Kind: "certificate", Path: "/etc/kubernetes/pki/apiserver.crt", Status: pki.StatusMissing},
	}}
	fams := parse(t, metrics.Render(rep))
	if _, ok := fams[metrics.NotAfter]; ok {
		t.Errorf("x509_cert_not_after for a missing certificate")
	}
	m := fams[metrics.Status].GetMetric()
	if len(m) != 1 || labelMap(m[0])["status"] != "missing" {
		t.Errorf("status series %v", m)
	}
}

func FuzzRender(f *testing.F) {
	for _, s := range []string{"", "kube-apiserver", `a"b`, "a\\b", "a\nb", "\xff"} {
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, cn, path string) {
		na := now.Add(time.Hour)
		rep := &inventory.Report{Now: now, Certs: []inventory.CertReport{{Name: path, Kind: "certificate", Path: path,
			Status: pki.StatusOK, NotBefore: &now, Expires: &na, CommonName: cn, Serial: "7"}}}
		p := expfmt.NewTextParser(model.LegacyValidation)
		if _, err := p.TextToMetricFamilies(bytes.NewReader(metrics.Render(rep))); err != nil {
			t.Fatalf("cn %q path %q: %v\n%s", cn, path, err, metrics.Render(rep))
		}
	})
}
