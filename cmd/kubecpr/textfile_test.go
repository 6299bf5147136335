package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kubecpr/kubecpr/recovery/metrics"
)

const textfileDir = "/var/lib/node_exporter/textfile_collector"

func TestCheckTextfile(t *testing.T) {
	root := expiredNode(t)
	dir := filepath.Join(root, textfileDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, root)
	r := kubecpr(t, nil, rootArgs(root, "check", "--textfile", textfileDir)...)
	if r.code != ExitExpired {
		t.Fatalf("exit %d, want %d: --textfile must not change check's exit code\n%s%s", r.code, ExitExpired, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "CERTIFICATE") {
		t.Errorf("the table is still printed:\n%s", r.stdout)
	}
	after := snapshot(t, root)
	rel := strings.TrimPrefix(textfileDir, "/") + "/" + metrics.FileName
	if _, ok := after[rel]; !ok {
		t.Fatalf("no %s under --root", rel)
	}
	delete(after, rel)
	if diff := diffSnapshots(before, after); diff != "" {
		t.Errorf("check --textfile wrote more than its file:\n%s", diff)
	}
	if diff := cmp.Diff([]string{metrics.FileName}, listDir(t, dir)); diff != "" {
		t.Errorf("textfile dir (-want +got), no temporary file may stay:\n%s", diff)
	}
	p := filepath.Join(dir, metrics.FileName)
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", st.Mode().Perm())
	}
	data, _ := os.ReadFile(p)
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("node_exporter's parser refuses the file: %v\n%s", err, data)
	}
	// The apiserver's series carries its certificate's NotAfter, read here
	// from the file itself.
	pemData, err := os.ReadFile(filepath.Join(root, "etc/kubernetes/pki/apiserver.crt"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(pemData)
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range fams[metrics.NotAfter].GetMetric() {
		l := map[string]string{}
		for _, lp := range m.GetLabel() {
			l[lp.GetName()] = lp.GetValue()
		}
		if l["name"] != "apiserver" {
			continue
		}
		found = true
		if got := m.GetGauge().GetValue(); got != float64(cert.NotAfter.Unix()) {
			t.Errorf("apiserver x509_cert_not_after %v, want %d", got, cert.NotAfter.Unix())
		}
		want := map[string]string{"name": "apiserver", "kind": "certificate", "filepath": "/etc/kubernetes/pki/apiserver.crt",
			"subject_CN": cert.Subject.CommonName, "issuer_CN": cert.Issuer.CommonName, "serial_number": cert.SerialNumber.String()}
		if diff := cmp.Diff(want, l); diff != "" {
			t.Errorf("apiserver labels (-want +got):\n%s", diff)
		}
	}
	if !found {
		t.Errorf("no apiserver series:\n%s", data)
	}
}

func TestCheckTextfileRefusals(t *testing.T) {
	root := expiredNode(t)
	for _, tc := range []struct {
		name, dir, want string
	}{
		{"missing directory", "/var/lib/node_exporter/nowhere", "collector.textfile.directory"},
		{"relative path", "var/lib/node_exporter", "absolute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot(t, root)
			r := kubecpr(t, nil, rootArgs(root, "check", "--textfile", tc.dir)...)
			if r.code != ExitFailed || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, want %d with %q\n%s", r.code, ExitFailed, tc.want, r.stderr)
			}
			if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
				t.Errorf("the node changed:\n%s", diff)
			}
		})
	}
}
