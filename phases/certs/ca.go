package certs

import (
	"context"
	"fmt"
	"io/fs"
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
	if !o.Enabled {
		return nil, nil
	}
	for _, n := range o.Names {
		if inv.CA(n) == nil || inv.CA(n).CA == nil {
			return nil, &pipeline.PreconditionError{Stage: "certs", Err: fmt.Errorf("--renew-ca=%s: this node has no readable %s CA certificate", n, n)}
		}
	}
	validity, src := caLifetime(d)
	var acts []pipeline.Action
	for _, c := range inv.CAs {
		if c.CA == nil || !o.Wants(c.Name, caDue(c)) {
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
		filepath.WalkDir(n.Path(dir), func(p string, e fs.DirEntry, err error) error {
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
