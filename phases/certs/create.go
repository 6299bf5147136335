package certs

// Creating what is missing: a certificate or kubeconfig that kubeadm would
// create (`kubeadm init phase certs` / `kubeadm init phase kubeconfig`) is
// made from the CA on the node with kubeadm's profile and this node's
// identity, and the kubelet's client certificate that a deleted
// /var/lib/kubelet/pki took away is issued again. Every file is a FileOp
// the runner journals ("absent" before) and rollback removes; a missing
// directory is created by a journaled action that rollback removes too.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubecpr/kubecpr/recovery/fsys"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// Identity is this node's identity for kubeadm's profiles, from what
// discovery found (node.Cluster) and the extra API server SANs.
func Identity(d pipeline.Data) pki.Identity {
	id := pki.Identity{CertSANs: ExtraSANs(d)}
	if c := d.Cluster(); c != nil {
		id.NodeName, id.AdvertiseAddress, id.APIServerPort = c.NodeName, c.AdvertiseAddress, c.APIServerPort
		id.ControlPlaneEndpoint, id.ServiceCIDR, id.DNSDomain = c.ControlPlaneEndpoint, c.ServiceCIDR, c.DNSDomain
	}
	return id
}

// ExtraSANs are the SANs the API server certificate must carry beyond what
// it has: the kubeadm config's apiServer.certSANs (--config) and
// --apiserver-cert-extra-sans.
func ExtraSANs(d pipeline.Data) []string {
	var out []string
	if c := d.Cluster(); c != nil {
		out = append(out, c.CertSANs...)
	}
	return append(out, d.Options().APIServerCertExtraSANs...)
}

// newKeyFor is the key of a created leaf: kubeadm's algorithm (the CA's
// family), or the kubelet's ECDSA P-256 for its client certificate.
func newKeyFor(d pipeline.Data, it *inventory.Item, ca *pki.CA) (crypto.Signer, error) {
	if it.Kind == inventory.KindKubeletClient {
		return pki.NewECKey()
	}
	if a := encryptionAlgorithm(d); a != "" {
		return pki.NewKeyForAlgorithm(a)
	}
	return pki.NewLeafKey(ca.Cert.PublicKey)
}

// encryptionAlgorithm is the kubeadm config's encryptionAlgorithm, or "".
func encryptionAlgorithm(d pipeline.Data) string {
	if c := d.Cluster(); c != nil {
		return c.EncryptionAlgorithm
	}
	return ""
}

// leafLifetime is how long a renewed or new leaf lives, and where that came
// from: --validity, the kubeadm config's certificateValidityPeriod, or
// kubeadm's default of one year.
func leafLifetime(d pipeline.Data) (time.Duration, string) {
	if v := d.Options().Validity; v != 0 {
		return v, "--validity"
	}
	if c := d.Cluster(); c != nil && c.CertificateValidity != 0 {
		return c.CertificateValidity, "certificateValidityPeriod in " + c.Source["certificateValidityPeriod"]
	}
	return 365 * 24 * time.Hour, "kubeadm's default, 1 year"
}

// lifetimeNote says how long a leaf will live and why, including when the
// CA's own expiry cuts it short (kubeadm v1.33 does not cap: its leaf then
// outlives the CA that vouches for it).
func lifetimeNote(d pipeline.Data, ca *pki.CA) (time.Time, string) {
	validity, src := leafLifetime(d)
	until := d.Now().Add(validity).UTC()
	note := fmt.Sprintf("lifetime %s from %s", validity, src)
	if until.After(ca.Cert.NotAfter) {
		until = ca.Cert.NotAfter.UTC()
		note += fmt.Sprintf("; capped at the CA's expiry %s (the CA expires before the lifetime ends: renew the CA, see docs/expired-ca.md)",
			until.Format(time.RFC3339))
	}
	return until, note
}

func keyNoteFor(d pipeline.Data, it *inventory.Item, ca *pki.CA) string {
	switch {
	case it.Kind == inventory.KindKubeletClient:
		return "new ECDSA P-256 key, as the kubelet makes"
	case encryptionAlgorithm(d) != "":
		return "new " + pki.AlgorithmDescription(encryptionAlgorithm(d)) + " key (encryptionAlgorithm)"
	case isECDSA(ca.Cert.PublicKey):
		return "new ECDSA P-256 key"
	}
	return "new RSA 2048 key"
}

func isECDSA(pub crypto.PublicKey) bool {
	_, ok := pub.(*ecdsa.PublicKey)
	return ok
}

// createAction plans the creation of a missing item from its kubeadm
// profile, signed by ca. Missing identity (no node name, no advertise
// address...) is an error before any change.
func createAction(d pipeline.Data, it *inventory.Item, ca *pki.CA, stage string) (pipeline.Action, error) {
	validity, _ := leafLifetime(d)
	until, lifeNote := lifetimeNote(d, ca)
	id := Identity(d)
	ropts := pki.RenewOptions{Now: d.Now(), Validity: validity}
	n := d.Node()
	summary := func(what string) string {
		return fmt.Sprintf("create %s (%s, missing) valid until %s (%s): %s", it.Name, it.Path, until.Format("2006-01-02"), lifeNote, what)
	}
	switch it.Kind {
	case inventory.KindCert:
		tmpl, err := pki.LeafProfile(it.Name, id)
		if err != nil {
			return pipeline.Action{}, fmt.Errorf("%s is missing and cannot be created with kubeadm's profile: %v; pass --config with the kubeadm configuration", it.Path, err)
		}
		store, ok := it.Store.(*inventory.PairStore)
		if !ok {
			return pipeline.Action{}, fmt.Errorf("%s: unexpected store %T", it.Path, it.Store)
		}
		what := "kubeadm profile " + describeProfile(tmpl) + ", " + keyNoteFor(d, it, ca)
		if k := existingKey(n, store.KeyPath); k != nil {
			what = "kubeadm profile " + describeProfile(tmpl) + ", key kept (" + store.KeyPath + ")"
		}
		return pipeline.Action{
			ID:      actionID(stage, it),
			Summary: summary(what),
			Paths:   store.Paths(),
			Files: func(ctx context.Context) ([]node.FileOp, error) {
				// A key left on disk (or written by an interrupted attempt
				// of this action) is kept; else a new one.
				key := existingKey(n, store.KeyPath)
				write := key == nil
				if key == nil {
					var err error
					if key, err = newKeyFor(d, it, ca); err != nil {
						return nil, err
					}
				}
				cert, err := pki.Renew(tmpl, key.Public(), ca, ropts)
				if err != nil {
					return nil, err
				}
				if !write {
					return store.Render(cert, nil, d.Now())
				}
				return store.Render(cert, key, d.Now())
			},
		}, nil

	case inventory.KindKubeletClient:
		if id.NodeName == "" {
			return pipeline.Action{}, fmt.Errorf("%s is missing and the node name is unknown: pass --config with nodeRegistration.name", it.Path)
		}
		tmpl := pki.KubeletClientTemplate(id.NodeName)
		return pipeline.Action{
			ID:      actionID(stage, it),
			Summary: summary(fmt.Sprintf("kubelet client certificate %s [system:nodes] from the cluster CA in the kubelet's layout (dated pem, kubelet-client-current.pem linking to it), %s", tmpl.Subject.CommonName, keyNoteFor(d, it, ca))),
			Paths:   renderPaths(d, it),
			Files: func(ctx context.Context) ([]node.FileOp, error) {
				key, err := pki.NewECKey()
				if err != nil {
					return nil, err
				}
				cert, err := pki.Renew(tmpl, key.Public(), ca, ropts)
				if err != nil {
					return nil, err
				}
				return it.Store.Render(cert, key, d.Now())
			},
		}, nil

	case inventory.KindKubeconfig:
		user, tmpl, local, err := pki.KubeconfigProfile(it.Name, id.NodeName)
		if err != nil {
			return pipeline.Action{}, fmt.Errorf("%s is missing and cannot be created with kubeadm's profile: %v", it.Path, err)
		}
		ks, ok := it.Store.(*inventory.KubeconfigStore)
		if !ok {
			return pipeline.Action{}, fmt.Errorf("%s: unexpected store %T", it.Path, it.Store)
		}
		if n.Exists(it.Path) {
			// The kubeconfig is there; the certificate file it refers to
			// is not: issue one and write it where it points.
			return pipeline.Action{
				ID:      actionID(stage, it),
				Summary: fmt.Sprintf("create the client certificate %s refers to (missing) valid until %s: %s, %s", it.Path, until.Format("2006-01-02"), describeProfile(tmpl), keyNoteFor(d, it, ca)),
				Paths:   ks.Paths(),
				Files: func(ctx context.Context) ([]node.FileOp, error) {
					key, err := newKeyFor(d, it, ca)
					if err != nil {
						return nil, err
					}
					cert, err := pki.Renew(tmpl, key.Public(), ca, ropts)
					if err != nil {
						return nil, err
					}
					return ks.Render(cert, key, d.Now())
				},
			}, nil
		}
		cpURL, localURL, err := pki.APIServerURLs(id)
		if err != nil {
			return pipeline.Action{}, fmt.Errorf("%s is missing and its server is unknown: %v; pass --config with the kubeadm configuration", it.Path, err)
		}
		server := cpURL
		if local {
			server = localURL
		}
		cluster := clusterName(n)
		if it.Name == pki.KubeconfigKubelet && n.Exists(node.KubeletCurrent) {
			// The kubelet has bootstrapped: its kubelet.conf points at the
			// rotating pem (what kubeadm's kubelet-finalize phase writes).
			return pipeline.Action{
				ID:      actionID(stage, it),
				Summary: fmt.Sprintf("create %s (missing): server %s, user %s with the kubelet's rotating certificate %s", it.Path, server, user, node.KubeletCurrent),
				Paths:   []string{it.Path},
				Files: func(ctx context.Context) ([]node.FileOp, error) {
					data, err := kubeconfigData(cluster, server, user, ca.Cert, func(ai *clientcmdapi.AuthInfo) {
						ai.ClientCertificate, ai.ClientKey = node.KubeletCurrent, node.KubeletCurrent
					})
					if err != nil {
						return nil, err
					}
					return []node.FileOp{{Path: it.Path, Data: data, Mode: 0o600, Secret: true}}, nil
				},
			}, nil
		}
		return pipeline.Action{
			ID:      actionID(stage, it),
			Summary: summary(fmt.Sprintf("kubeadm kubeconfig for %s %v, server %s, CA embedded, %s", user, tmpl.Subject.Organization, server, keyNoteFor(d, it, ca))),
			Paths:   []string{it.Path},
			Files: func(ctx context.Context) ([]node.FileOp, error) {
				key, err := newKeyFor(d, it, ca)
				if err != nil {
					return nil, err
				}
				cert, err := pki.Renew(tmpl, key.Public(), ca, ropts)
				if err != nil {
					return nil, err
				}
				kpem, err := pki.EncodeKey(key)
				if err != nil {
					return nil, err
				}
				data, err := kubeconfigData(cluster, server, user, ca.Cert, func(ai *clientcmdapi.AuthInfo) {
					ai.ClientCertificateData, ai.ClientKeyData = pki.EncodeCertificate(cert), kpem
				})
				if err != nil {
					return nil, err
				}
				return []node.FileOp{{Path: it.Path, Data: data, Mode: 0o600, Secret: true}}, nil
			},
		}, nil
	}
	return pipeline.Action{}, fmt.Errorf("%s is missing: kubecpr cannot create a %s", it.Path, it.Kind)
}

// existingKey is the parsed private key at a node path, or nil.
func existingKey(n *node.Node, p string) crypto.Signer {
	data, err := n.ReadFile(p)
	if err != nil {
		return nil
	}
	k, err := pki.ParsePrivateKey(data)
	if err != nil {
		return nil
	}
	return k
}

func describeProfile(t *x509.Certificate) string {
	s := "CN " + t.Subject.CommonName
	if len(t.Subject.Organization) > 0 {
		s += " O " + strings.Join(t.Subject.Organization, ",")
	}
	var sans []string
	sans = append(sans, t.DNSNames...)
	for _, ip := range t.IPAddresses {
		sans = append(sans, ip.String())
	}
	if len(sans) > 0 {
		s += " SANs " + strings.Join(sans, ",")
	}
	return s
}

// clusterName is the cluster name of the node's kubeadm kubeconfigs
// (kubeadm's clusterName, "kubernetes" by default).
func clusterName(n *node.Node) string {
	for _, f := range inventory.KubeconfigNames {
		k, err := n.Kubeconfig(path.Join(node.KubernetesDir, f))
		if err == nil && k.Context != nil && k.Context.Cluster != "" {
			return k.Context.Cluster
		}
	}
	return "kubernetes"
}

// kubeconfigData writes a kubeconfig the way kubeadm does: one cluster
// with the CA embedded, one user, context USER@CLUSTER.
func kubeconfigData(cluster, server, user string, ca *x509.Certificate, auth func(*clientcmdapi.AuthInfo)) ([]byte, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[cluster] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: pki.EncodeCertificate(ca)}
	ctx := user + "@" + cluster
	cfg.Contexts[ctx] = &clientcmdapi.Context{Cluster: cluster, AuthInfo: user}
	cfg.CurrentContext = ctx
	ai := &clientcmdapi.AuthInfo{}
	auth(ai)
	cfg.AuthInfos[user] = ai
	return clientcmd.Write(*cfg)
}

// mkdirPrefix is the action id prefix of a directory created by a stage.
const mkdirPrefix = "/mkdir:"

// EnsureDirs puts before acts one journaled action per directory that the
// file actions would write into and that does not exist (a deleted
// /var/lib/kubelet/pki): the runner writes files atomically into existing
// directories only. Rollback removes each directory again (UndoDir), after
// the files in it are gone.
func EnsureDirs(d pipeline.Data, stage string, acts []pipeline.Action) []pipeline.Action {
	n := d.Node()
	seen := map[string]bool{}
	var dirs []string
	for _, a := range acts {
		if a.Files == nil {
			continue
		}
		for _, p := range a.Paths {
			for dir := path.Dir(n.Resolve(p, true)); dir != "/" && !seen[dir]; dir = path.Dir(dir) {
				seen[dir] = true
				if _, err := n.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
					break
				}
				dirs = append(dirs, dir)
			}
		}
	}
	if len(dirs) == 0 {
		return acts
	}
	sort.Strings(dirs) // parents first
	var out []pipeline.Action
	for _, dir := range dirs {
		out = append(out, mkdirAction(d.FS(), n, stage, dir))
	}
	return append(out, acts...)
}

func mkdirAction(fsy fsys.FS, n *node.Node, stage, dir string) pipeline.Action {
	return pipeline.Action{
		ID:      stage + mkdirPrefix + dir,
		Summary: fmt.Sprintf("create directory %s (missing), mode 0755", dir),
		Paths:   []string{dir},
		Run: func(ctx context.Context) (map[string]string, error) {
			host := n.Path(dir)
			err := fsy.Mkdir(host, 0o755)
			if errors.Is(err, fs.ErrExist) {
				if st, serr := os.Lstat(host); serr == nil && st.IsDir() {
					// Made by someone else since the plan: not ours to remove.
					return map[string]string{"dir": dir, "created": "false"}, nil
				}
			}
			if err != nil {
				return nil, fmt.Errorf("creating %s: %w", dir, err)
			}
			if err := fsy.Chmod(host, 0o755); err != nil { // whatever the umask
				return nil, err
			}
			if err := fsy.SyncDir(filepath.Dir(host)); err != nil {
				return nil, err
			}
			return map[string]string{"dir": dir, "created": "true"}, nil
		},
		Applied: func(ctx context.Context, _ map[string]string) bool {
			st, err := n.Lstat(dir)
			return err == nil && st.IsDir()
		},
	}
}

// UndoDir is a stage's Undo for the directories EnsureDirs created: it
// removes the directory, which rollback has emptied by then. A directory
// that holds files kubecpr did not put there is left, with an error.
func UndoDir(ctx context.Context, d pipeline.Data, actionID string, facts map[string]string) error {
	i := strings.Index(actionID, mkdirPrefix)
	if i < 0 {
		return nil
	}
	if facts["created"] == "false" {
		return nil
	}
	dir := actionID[i+len(mkdirPrefix):]
	host := d.Node().Path(dir)
	if err := d.FS().Remove(host); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("removing %s, created by this run: %w (it holds files kubecpr did not create: left in place)", dir, err)
	}
	return d.FS().SyncDir(filepath.Dir(host))
}

// sansFit reports, for an API server certificate judged invalid only
// because its SANs do not name this node, whether the extra SANs make it
// fit (the node's address or name changed: the blog seed's case).
func sansFit(inv *inventory.Inventory, it *inventory.Item, extra []string) (identityOnly, fits bool) {
	c := inv.Cluster
	if c == nil || it.Cert == nil || it.Name != pki.LeafAPIServer {
		return false, false
	}
	probs := c.NodeSANsFit(it.Cert)
	if len(probs) == 0 || len(probs) != len(it.Problems) {
		return false, false
	}
	t, err := pki.WithSANs(it.Cert, extra)
	if err != nil {
		return true, false
	}
	return true, len(c.NodeSANsFit(t)) == 0
}
