// Package certs is the certs stage: re-issue every expired or expiring leaf
// certificate of the node's PKI from the CA on disk, keeping subject, SANs,
// usages and (by default) the key. External-CA mode writes CSRs instead.
package certs

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kubecpr/kubecpr/recovery/atomicfile"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// Stage is the certs stage.
var Stage = pipeline.Stage{
	Name:    "certs",
	Short:   "re-issue expired or expiring leaf certificates from the CA on disk",
	Mutates: true,
	// each action renews one credential from the CA: grouped fsyncs
	Independent: true,
	Plan:        Plan,
	Undo:        UndoDir,
}

// Plan lists one action per leaf certificate to renew.
func Plan(ctx context.Context, d pipeline.Data) ([]pipeline.Action, error) {
	inv, err := d.Inventory()
	if err != nil {
		return nil, err
	}
	if len(inv.SAProblems) > 0 {
		// Not a certificate, but a recovery that restarts the API server on
		// a broken service-account key pair leaves every token unverifiable.
		return nil, &pipeline.PreconditionError{Stage: "certs", Err: fmt.Errorf("the service-account key pair is broken: %s; "+
			"restore sa.key and sa.pub from a backup (or another control-plane node, where they are identical) before recovering",
			strings.Join(inv.SAProblems, "; "))}
	}
	caActs, err := planCAs(d, inv)
	if err != nil {
		return nil, err
	}
	if len(caActs) > 0 {
		// Judged again against the CA certificates as they will be.
		if inv, err = d.Inventory(); err != nil {
			return nil, err
		}
	}
	var items []*inventory.Item
	for _, it := range inv.Sorted() {
		if it.Kind == inventory.KindCert {
			items = append(items, it)
		}
	}
	acts, err := PlanItems(d, inv, items, "certs")
	if err != nil {
		return nil, err
	}
	return EnsureDirs(d, "certs", append(caActs, acts...)), nil
}

// Want reports whether an item is due for renewal under the options.
func Want(it *inventory.Item, now time.Time, o pipeline.Options) bool {
	if it.Cert == nil {
		return false
	}
	if o.RenewWithin == 0 {
		return true
	}
	return pki.StatusAt(it.Cert, now, o.RenewWithin) != pki.StatusOK
}

// PlanItems plans renewal of the given items (shared with kubeconfigs).
// Bad input stops here, before any change.
func PlanItems(d pipeline.Data, inv *inventory.Inventory, items []*inventory.Item, stage string) ([]pipeline.Action, error) {
	o := d.Options()
	extra := ExtraSANs(d)
	if _, _, err := pki.SplitSANs(extra); err != nil {
		return nil, &pipeline.PreconditionError{Stage: stage, Err: fmt.Errorf("extra API server SANs (--apiserver-cert-extra-sans, certSANs of --config): %v", err)}
	}
	var bad []string
	var external []*inventory.Item
	var acts []pipeline.Action
	for _, it := range items {
		if it.Status == pki.StatusMissing {
			// Created from its CA with kubeadm's profile, as `kubeadm init
			// phase certs/kubeconfig` would.
			ca := inv.CA(it.CAName)
			switch {
			case ca == nil || ca.CA == nil:
				bad = append(bad, fmt.Sprintf("%s is missing and its CA %s is missing or unreadable: nothing to create it from", it.Path, it.CAName))
			case ca.Status == pki.StatusExpired || ca.Status == pki.StatusNotYetValid:
				return nil, &pipeline.PreconditionError{Stage: stage, Err: expiredCA(ca, d.Now())}
			case ca.External():
				hint := "kubeadm init phase certs --csr-only makes a CSR for your CA to sign"
				if it.Kind == inventory.KindKubeletClient {
					hint = "pass --kubelet-client-bundle with one signed on a control-plane node (`kubecpr cluster` makes it)"
				}
				bad = append(bad, fmt.Sprintf("%s is missing and the %s CA key is not on this node, so it cannot be created here: %s", it.Path, it.CAName, hint))
			default:
				a, err := createAction(d, it, ca.CA, stage)
				if err != nil {
					bad = append(bad, err.Error())
					continue
				}
				acts = append(acts, a)
			}
			continue
		}
		if it.Cert == nil {
			bad = append(bad, strings.Join(it.Problems, "; "))
			continue
		}
		addSANs := apiserverNeedsSANs(it, extra)
		if !Want(it, d.Now(), o) && !addSANs {
			continue
		}
		if it.Status == pki.StatusInvalid {
			identityOnly, fits := sansFit(inv, it, extra)
			switch {
			case keyOnly(it) && o.RotateKeys:
				// a broken key is replaced by --rotate-keys
			case identityOnly && fits:
				// the node's address or name changed: the extra SANs name it
			case identityOnly:
				bad = append(bad, strings.Join(it.Problems, "; ")+"; if this node's address or name changed, "+
					"pass --apiserver-cert-extra-sans with the new ones: the certificate is re-issued with them added")
				continue
			default:
				bad = append(bad, strings.Join(it.Problems, "; "))
				continue
			}
		}
		ca := inv.CA(it.CAName)
		if ca == nil || ca.CA == nil {
			bad = append(bad, fmt.Sprintf("%s: its CA %s is missing or unreadable", it.Path, it.CAName))
			continue
		}
		if ca.Status == pki.StatusExpired || ca.Status == pki.StatusNotYetValid {
			return nil, &pipeline.PreconditionError{Stage: stage, Err: expiredCA(ca, d.Now())}
		}
		if ca.Status == pki.StatusInvalid {
			// An unreadable key, a key of another certificate: nothing
			// signed with it would verify.
			bad = append(bad, fmt.Sprintf("%s: its %s CA cannot sign: %s", it.Path, it.CAName, strings.Join(ca.Problems, "; ")))
			continue
		}
		if ca.External() {
			external = append(external, it)
			continue
		}
		acts = append(acts, renewAction(d, it, ca.CA, stage))
	}
	if len(bad) > 0 {
		return nil, &pipeline.PreconditionError{Stage: stage, Err: errors.New(strings.Join(bad, "\n  "))}
	}
	if len(external) > 0 {
		ext, err := externalActions(d, inv, external, stage)
		if err != nil {
			return nil, err
		}
		acts = append(acts, ext...)
	}
	return acts, nil
}

// apiserverNeedsSANs reports whether the API server certificate lacks
// some of the extra SANs (it is then re-issued whatever its expiry).
func apiserverNeedsSANs(it *inventory.Item, extra []string) bool {
	if it.Name != pki.LeafAPIServer || it.Kind != inventory.KindCert || it.Cert == nil || len(extra) == 0 {
		return false
	}
	miss, err := pki.MissingSANs(it.Cert, extra)
	return err == nil && len(miss) > 0
}

func keyOnly(it *inventory.Item) bool {
	for _, p := range it.Problems {
		if !strings.Contains(p, "private key") && !strings.Contains(p, ".key") {
			return false
		}
	}
	return it.Cert != nil
}

func expiredCA(ca *inventory.CAItem, now time.Time) error {
	return fmt.Errorf("the %s CA (%s) is not valid at %s (valid %s to %s): certificates signed by it would not be trusted. "+
		"Options: (1) if the clock is wrong, fix it (or pass --now); (2) re-issue the CA certificate with its own key: "+
		"add --renew-ca (every expired CA) or --renew-ca=%[1]s, which keeps every signature it made valid (docs/expired-ca.md; "+
		"on a cluster, `kubecpr cluster run --renew-ca` also gives the new certificate to every node); (3) rebuild the PKI with a new CA "+
		"and redistribute it to every node and client",
		ca.Name, ca.CertPath, now.UTC().Format(time.RFC3339),
		ca.CA.Cert.NotBefore.UTC().Format(time.RFC3339), ca.CA.Cert.NotAfter.UTC().Format(time.RFC3339))
}

func renewAction(d pipeline.Data, it *inventory.Item, ca *pki.CA, stage string) pipeline.Action {
	o := d.Options()
	validity, _ := leafLifetime(d)
	keyNote := "key kept"
	switch {
	case it.Kind == inventory.KindKubeletClient:
		keyNote = "new ECDSA P-256 key, as the kubelet makes" // whatever the old one was
	case o.RotateKeys && encryptionAlgorithm(d) != "":
		keyNote = "new " + pki.AlgorithmDescription(encryptionAlgorithm(d)) + " key (encryptionAlgorithm)"
	case o.RotateKeys:
		keyNote = "new " + pki.KeyDescription(it.Cert.PublicKey) + " key"
	}
	until, lifeNote := lifetimeNote(d, ca)
	summary := fmt.Sprintf("renew %s (%s): %s %s → until %s, %s; %s", it.Name, it.Path, it.Status,
		it.Cert.NotAfter.UTC().Format("2006-01-02"), until.Format("2006-01-02"), keyNote, lifeNote)
	var extra []string
	if it.Name == pki.LeafAPIServer && it.Kind == inventory.KindCert {
		extra = ExtraSANs(d)
		if add, _ := pki.MissingSANs(it.Cert, extra); len(add) > 0 {
			summary += "; SANs added: " + strings.Join(add, ", ")
		}
	}
	if o.MigrateOrganizations {
		if m := migrateOrganization(it.Name, it.Cert); strings.Join(m.Subject.Organization, ",") != strings.Join(it.Cert.Subject.Organization, ",") {
			summary += fmt.Sprintf("; organisation %v → %v (kubeadm 1.29+: admin.conf needs the ClusterRoleBinding kubeadm:cluster-admins that kubeadm creates on init/upgrade)",
				it.Cert.Subject.Organization, m.Subject.Organization)
		}
	}
	store := it.Store
	return pipeline.Action{
		ID:      actionID(stage, it),
		Summary: summary,
		Paths:   renderPaths(d, it),
		Files: func(ctx context.Context) ([]node.FileOp, error) {
			// Re-read at apply time: resume may find a half-finished pair.
			old, key, err := store.Load()
			if err != nil && old == nil {
				return nil, err
			}
			if key == nil || o.RotateKeys || it.Kind == inventory.KindKubeletClient || !pki.KeyMatches(old.PublicKey, key) {
				if it.Kind == inventory.KindKubeletClient {
					key, err = pki.NewECKey()
				} else if a := encryptionAlgorithm(d); a != "" {
					key, err = pki.NewKeyForAlgorithm(a)
				} else {
					key, err = pki.NewKeyLike(old.PublicKey)
				}
				if err != nil {
					return nil, err
				}
			}
			subject := old
			if o.MigrateOrganizations {
				subject = migrateOrganization(it.Name, old)
			}
			if len(extra) > 0 {
				if subject, err = pki.WithSANs(subject, extra); err != nil {
					return nil, err
				}
			}
			cert, err := pki.Renew(subject, key.Public(), ca, pki.RenewOptions{Now: d.Now(), Validity: validity})
			if err != nil {
				return nil, err
			}
			return store.Render(cert, key, d.Now())
		},
	}
}

// renderPaths are the node paths an item's renewal may write.
func renderPaths(d pipeline.Data, it *inventory.Item) []string {
	ps := it.Store.Paths()
	if ks, ok := it.Store.(*inventory.KubeletPEMStore); ok {
		ps = append(ps, ks.NextDated(d.Now()))
	}
	return ps
}

// migrateOrganization applies the kubeadm 1.29 split of admin credentials:
// admin.conf gets O=kubeadm:cluster-admins, super-admin.conf O=system:masters.
func migrateOrganization(name string, old *x509.Certificate) *x509.Certificate {
	c := *old
	switch name {
	case "admin.conf":
		c.Subject.Organization = []string{"kubeadm:cluster-admins"}
	case "super-admin.conf":
		c.Subject.Organization = []string{"system:masters"}
	}
	return &c
}

// externalActions handle leaves whose CA key is not on the node: when a
// signed certificate waits in --csr-dir it is installed; otherwise a CSR
// (and key, 0600) is written there and the run stops with instructions.
func externalActions(d pipeline.Data, inv *inventory.Inventory, items []*inventory.Item, stage string) ([]pipeline.Action, error) {
	o := d.Options()
	if o.CSRDir == "" {
		return nil, &pipeline.PreconditionError{Stage: stage, Err: fmt.Errorf(
			"%d certificates are signed by a CA whose key is not on this node (external CA mode): "+
				"pass --csr-dir DIR to write certificate signing requests for your CA to sign", len(items))}
	}
	var acts []pipeline.Action
	var wrote []string
	for _, it := range items {
		base := strings.ReplaceAll(it.Name, "/", "-")
		csrPath := filepath.Join(o.CSRDir, base+".csr")
		keyPath := filepath.Join(o.CSRDir, base+".key")
		crtPath := filepath.Join(o.CSRDir, base+".crt")
		if signed, err := os.ReadFile(crtPath); err == nil {
			a, err := installSigned(d, inv, it, signed, crtPath, keyPath, stage)
			if err != nil {
				return nil, &pipeline.PreconditionError{Stage: stage, Err: err}
			}
			acts = append(acts, a)
			continue
		}
		if o.DryRun {
			wrote = append(wrote, csrPath)
			continue
		}
		var extra []string
		if it.Name == pki.LeafAPIServer {
			extra = ExtraSANs(d)
		}
		if err := writeCSR(it, csrPath, keyPath, o.RotateKeys, extra); err != nil {
			return nil, err
		}
		wrote = append(wrote, csrPath)
	}
	if len(wrote) > 0 {
		return nil, &pipeline.ExternalCAError{CSRDir: o.CSRDir, CSRs: wrote}
	}
	return acts, nil
}

func writeCSR(it *inventory.Item, csrPath, keyPath string, rotate bool, extra []string) error {
	if err := os.MkdirAll(filepath.Dir(csrPath), 0o700); err != nil {
		return fmt.Errorf("--csr-dir %s: %w", filepath.Dir(csrPath), err)
	}
	var key crypto.Signer = it.Key
	var err error
	if key == nil || rotate {
		if key, err = pki.NewKeyLike(it.Cert.PublicKey); err != nil {
			return err
		}
	}
	sans, err := pki.WithSANs(it.Cert, extra)
	if err != nil {
		return err
	}
	tmpl := &x509.CertificateRequest{Subject: it.Cert.Subject, DNSNames: sans.DNSNames,
		IPAddresses: sans.IPAddresses, URIs: it.Cert.URIs, EmailAddresses: it.Cert.EmailAddresses}
	tmpl.Subject.ExtraNames = nil
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return fmt.Errorf("%s: creating CSR: %w", csrPath, err)
	}
	kpem, err := pki.EncodeKey(key)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(keyPath, kpem, atomicfile.Options{Mode: 0o600, ForceMode: true}); err != nil {
		return err
	}
	return atomicfile.WriteFile(csrPath, pem.EncodeToMemory(&pem.Block{Type: pki.BlockCSR, Bytes: der}),
		atomicfile.Options{Mode: 0o644})
}

// installSigned checks a certificate returned by the external CA (chains to
// the CA on the node, same subject and SANs as the old one, key matches)
// and plans its installation.
func installSigned(d pipeline.Data, inv *inventory.Inventory, it *inventory.Item, signed []byte, crtPath, keyPath, stage string) (pipeline.Action, error) {
	cert, err := pki.ParseCertificate(signed)
	if err != nil {
		return pipeline.Action{}, fmt.Errorf("%s: %w", crtPath, err)
	}
	ca := inv.CA(it.CAName)
	if err := ca.CA.Verify(cert); err != nil {
		return pipeline.Action{}, fmt.Errorf("%s: %w; have it signed by the CA in %s", crtPath, err, ca.CertPath)
	}
	if cert.Subject.String() != it.Cert.Subject.String() {
		return pipeline.Action{}, fmt.Errorf("%s: subject %q differs from the certificate it replaces (%q)", crtPath, cert.Subject, it.Cert.Subject)
	}
	if st := pki.StatusAt(cert, d.Now(), 0); st != pki.StatusOK {
		return pipeline.Action{}, fmt.Errorf("%s: the signed certificate is %s at %s", crtPath, st, d.Now().UTC().Format(time.RFC3339))
	}
	key := it.Key
	if kb, err := os.ReadFile(keyPath); err == nil {
		if key, err = pki.ParsePrivateKey(kb); err != nil {
			return pipeline.Action{}, fmt.Errorf("%s: %w", keyPath, err)
		}
	}
	if key == nil || !pki.KeyMatches(cert.PublicKey, key) {
		return pipeline.Action{}, fmt.Errorf("%s: the signed certificate does not match the key in %s or %s", crtPath, keyPath, it.KeyPath)
	}
	store := it.Store
	return pipeline.Action{
		ID:      actionID(stage, it),
		Summary: fmt.Sprintf("install externally signed %s (%s) valid until %s", it.Name, it.Path, cert.NotAfter.UTC().Format("2006-01-02")),
		Paths:   renderPaths(d, it),
		Files: func(ctx context.Context) ([]node.FileOp, error) {
			return store.Render(cert, key, d.Now())
		},
	}, nil
}

// actionID is the stable journal id of an item's renewal.
func actionID(stage string, it *inventory.Item) string {
	if it.Kind == inventory.KindUserKubeconfig {
		return stage + "/user:" + it.Path
	}
	return stage + "/" + it.Name
}
