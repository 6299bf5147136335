package certs

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// caDue reports whether a CA is expired, not yet valid or expiring within
// the run's warning window.
func caDue(c *inventory.CAItem) bool {
	return c.Status == pki.StatusExpired || c.Status == pki.StatusNotYetValid || c.Status == pki.StatusExpiring
}

// caLifetime is how long a renewed CA lives and why.
func caLifetime(d pipeline.Data) (time.Duration, string) {
	if c := d.Cluster(); c != nil && c.CACertificateValidity != 0 {
		return c.CACertificateValidity, "caCertificateValidityPeriod in " + c.Source["caCertificateValidityPeriod"]
	}
	return node.DefaultCACertificateValidity, "kubeadm's default, 10 years"
}

// planCAs plans --renew-ca: each chosen CA certificate re-issued with its
// own key (pki.RenewCA), written over its file, and announced to the run
// (Data.PlanCA) so that every leaf is planned against the new certificate.
// Leaves it signed stay valid; they are renewed as usual when due.
func planCAs(d pipeline.Data, inv *inventory.Inventory) ([]pipeline.Action, error) {
	o := d.Options().RenewCA
	installed, err := installCAs(d, inv)
	if err != nil || !o.Enabled {
		return installed, err
	}
	for _, n := range o.Names {
		if inv.CA(n) == nil || inv.CA(n).CA == nil {
			return nil, &pipeline.PreconditionError{Stage: "certs", Err: fmt.Errorf("--renew-ca=%s: this node has no readable %s CA certificate", n, n)}
		}
	}
	validity, src := caLifetime(d)
	acts := installed
	for _, c := range inv.CAs {
		if c.CA == nil || !o.Wants(c.Name, caDue(c)) || planned(installed, c.Name) {
			continue
		}
		if c.External() {
			return nil, &pipeline.PreconditionError{Stage: "certs", Err: fmt.Errorf(
				"--renew-ca: the %s CA key (%s) is not on this node, so its certificate cannot be re-issued here: run on the control plane that holds the key "+
					"(`kubecpr cluster run --renew-ca` does), or have the CA's owner re-issue %s", c.Name, c.KeyPath, c.CertPath)}
		}
		renewed, err := pki.RenewCA(c.CA, pki.RenewOptions{Now: d.Now(), Validity: validity})
		if err != nil {
			return nil, &pipeline.PreconditionError{Stage: "certs", Err: fmt.Errorf("%s: %w", c.CertPath, err)}
		}
		old := c.CA.Cert
		data := pki.EncodeCertificate(renewed)
		path, status := c.CertPath, c.Status
		acts = append(acts, pipeline.Action{
			ID: "certs/ca:" + c.Name,
			Summary: fmt.Sprintf("re-issue the %s CA certificate (%s) with its own key: %s %s → until %s, same subject, key id and discovery hash %s; lifetime %s from %s",
				c.Name, path, status, old.NotAfter.UTC().Format("2006-01-02"), renewed.NotAfter.UTC().Format("2006-01-02"),
				shortPin(pki.PublicKeyPin(renewed)), validity, src),
			Paths: []string{path},
			Files: func(context.Context) ([]node.FileOp, error) {
				return []node.FileOp{{Path: path, Data: data, Mode: 0o644}}, nil
			},
		})
		d.PlanCA(c.Name, &pki.CA{Name: c.CA.Name, Cert: renewed, Key: c.CA.Key})
	}
	return acts, nil
}

func planned(acts []pipeline.Action, name string) bool {
	for _, a := range acts {
		if a.ID == "certs/ca:"+name {
			return true
		}
	}
	return false
}

// installCAs plans --ca-certificate: each file is a CA certificate
// re-issued elsewhere for this cluster; it must have the subject and key
// of one of the node's CAs, and be valid, and it replaces that CA's file
// (the node's key, where it has one, stays). A node that already holds
// exactly it needs nothing.
func installCAs(d pipeline.Data, inv *inventory.Inventory) ([]pipeline.Action, error) {
	var acts []pipeline.Action
	for _, f := range d.Options().CACertificates {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, &pipeline.PreconditionError{Stage: "certs", Err: fmt.Errorf("--ca-certificate %s: %w", f, err)}
		}
		cert, err := pki.ParseCertificate(b)
		if err != nil {
			return nil, &pipeline.PreconditionError{Stage: "certs", Err: fmt.Errorf("--ca-certificate %s: %w", f, err)}
		}
		var match *inventory.CAItem
		for _, c := range inv.CAs {
			if c.CA != nil && bytes.Equal(c.CA.Cert.RawSubject, cert.RawSubject) && bytes.Equal(c.CA.Cert.RawSubjectPublicKeyInfo, cert.RawSubjectPublicKeyInfo) {
				match = c
			}
		}
		if match == nil {
			return nil, &pipeline.PreconditionError{Stage: "certs", Err: fmt.Errorf("--ca-certificate %s (%s) is not a certificate of any CA of this node (none has its subject and key): "+
				"it belongs to another cluster, or this node's CA was replaced", f, cert.Subject.CommonName)}
		}
		if !cert.IsCA || cert.CheckSignatureFrom(cert) != nil {
			return nil, &pipeline.PreconditionError{Stage: "certs", Err: fmt.Errorf("--ca-certificate %s is not a self-signed CA certificate", f)}
		}
		if st := pki.StatusAt(cert, d.Now(), 0); st != pki.StatusOK {
			return nil, &pipeline.PreconditionError{Stage: "certs", Err: fmt.Errorf("--ca-certificate %s is %s at %s", f, st, d.Now().UTC().Format(time.RFC3339))}
		}
		if bytes.Equal(match.CA.Cert.Raw, cert.Raw) {
			continue // already installed (a resumed run, a node done before)
		}
		path, data := match.CertPath, pki.EncodeCertificate(cert)
		acts = append(acts, pipeline.Action{
			ID: "certs/ca:" + match.Name,
			Summary: fmt.Sprintf("install the %s CA certificate re-issued for the cluster (%s) over %s: %s %s → until %s, same subject and key",
				match.Name, f, path, match.Status, match.CA.Cert.NotAfter.UTC().Format("2006-01-02"), cert.NotAfter.UTC().Format("2006-01-02")),
			Paths: []string{path},
			Files: func(context.Context) ([]node.FileOp, error) {
				return []node.FileOp{{Path: path, Data: data, Mode: 0o644}}, nil
			},
		})
		d.PlanCA(match.Name, &pki.CA{Name: match.CA.Name, Cert: cert, Key: match.CA.Key})
	}
	return acts, nil
}

func shortPin(p string) string {
	if len(p) > 19 {
		return p[:19] + "…"
	}
	return p
}

// trustDirs are where a node keeps copies of its cluster's CA besides the
// CA files: kubeconfigs and ca.crt copies under /etc/kubernetes (workers'
// pki/ca.crt, kubelet.conf), CNI plugins' kubeconfigs.
var trustDirs = []string{node.KubernetesDir, "/etc/cni/net.d"}

// TrustActions put each CA certificate of the inventory (as this run
// leaves it: re-issued by --renew-ca, or already on disk) wherever the
// node still holds an older certificate of the same CA (same subject and
// key): kubeconfigs' certificate-authority-data, ca.crt copies, bundles,
// under trustDirs and in users' kubeconfigs. Files in skip are left to the
// actions that write them (they replace the copies themselves).
func TrustActions(d pipeline.Data, inv *inventory.Inventory, stage string, skip map[string]bool) []pipeline.Action {
	n := d.Node()
	own := map[string]bool{}
	for _, c := range inv.CAs {
		own[c.CertPath] = true
	}
	var files []string
	for _, dir := range trustDirs {
		// HostPath: the directory itself may be a link (inside the root).
		filepath.WalkDir(n.HostPath(dir), func(p string, e fs.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return nil
			}
			if np, err := n.NodePath(p); err == nil && !own[np] && !skip[np] {
				files = append(files, np)
			}
			return nil
		})
	}
	for _, u := range n.UserKubeconfigs() {
		if !slices.Contains(files, u) && !skip[u] {
			files = append(files, u)
		}
	}
	sort.Strings(files)
	var acts []pipeline.Action
	for _, f := range files {
		b, err := n.ReadFile(f)
		if err != nil {
			continue
		}
		var names []string
		for _, c := range inv.CAs {
			if c.CA == nil {
				continue
			}
			if out, _ := inventory.ReplaceTrust(b, c.CA.Cert); out != nil {
				b = out
				names = append(names, c.Name)
			}
		}
		if len(names) == 0 {
			continue
		}
		st, _ := n.Lstat(f)
		mode := fs.FileMode(0o644)
		if st != nil {
			mode = st.Mode().Perm()
		}
		path, data := f, b
		acts = append(acts, pipeline.Action{
			ID:      stage + "/ca-trust:" + f,
			Summary: fmt.Sprintf("put the current %s CA certificate in %s in place of its older copy", strings.Join(names, " and "), f),
			Paths:   []string{f},
			Files: func(context.Context) ([]node.FileOp, error) {
				return []node.FileOp{{Path: path, Data: data, Mode: mode, Secret: mode&0o077 == 0}}, nil
			},
		})
	}
	return acts
}
