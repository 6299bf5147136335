package inventory

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// Store is one place a certificate lives: a pki .crt/.key pair, a client
// certificate embedded in a kubeconfig, the kubelet's rotating pem. Every
// store reads the same way and renders its replacement as file operations,
// which the pipeline journals and writes atomically.
type Store interface {
	// Load returns the certificate and its key (key may be nil when the
	// key file is absent). A missing certificate is an fs.ErrNotExist.
	Load() (*x509.Certificate, crypto.Signer, error)
	// Render returns the file operations that install cert and key.
	Render(cert *x509.Certificate, key crypto.Signer, now time.Time) ([]node.FileOp, error)
	// Paths lists the node paths this store reads or may write.
	Paths() []string
}

// PairStore is a kubeadm pki pair: NAME.crt (0644) and NAME.key (0600).
type PairStore struct {
	Node     *node.Node
	CertPath string
	KeyPath  string
}

var _ Store = (*PairStore)(nil)

// Paths are the files themselves: a certificate or key that is a symlink
// (apiserver.crt -> apiserver-2025.crt) is changed at its target, inside
// the root, as docs/journal.md says, never replaced by a regular file.
func (s *PairStore) Paths() []string {
	return []string{s.Node.Resolve(s.CertPath, false), s.Node.Resolve(s.KeyPath, false)}
}

func (s *PairStore) Load() (*x509.Certificate, crypto.Signer, error) {
	data, err := s.Node.ReadFile(s.CertPath)
	if err != nil {
		return nil, nil, err
	}
	cert, err := pki.ParseCertificate(data)
	if err != nil {
		return nil, nil, &FileError{Path: s.CertPath, Err: err, Hint: "restore it from a backup, or re-create it with kubeadm init phase certs"}
	}
	kdata, err := s.Node.ReadFile(s.KeyPath)
	if errors.Is(err, fs.ErrNotExist) {
		return cert, nil, nil
	}
	if err != nil {
		return cert, nil, &FileError{Path: s.KeyPath, Err: err}
	}
	key, err := pki.ParsePrivateKey(kdata)
	if err != nil {
		return cert, nil, &FileError{Path: s.KeyPath, Err: err, Hint: "the key is unreadable; renew with --rotate-keys to make a new one"}
	}
	return cert, key, nil
}

func (s *PairStore) Render(cert *x509.Certificate, key crypto.Signer, _ time.Time) ([]node.FileOp, error) {
	ops := []node.FileOp{}
	if key != nil {
		kpem, err := pki.EncodeKey(key)
		if err != nil {
			return nil, err
		}
		ops = append(ops, node.FileOp{Path: s.Node.Resolve(s.KeyPath, false), Data: kpem, Mode: 0o600, Secret: true})
	}
	ops = append(ops, node.FileOp{Path: s.Node.Resolve(s.CertPath, false), Data: pki.EncodeCertificate(cert), Mode: 0o644})
	return ops, nil
}

// KubeconfigStore is the client certificate of the user that a kubeconfig's
// current context uses, embedded (client-certificate-data) or referenced
// (client-certificate: path).
type KubeconfigStore struct {
	Node *node.Node
	Path string
	// Trust are the node's CA certificates as the run leaves them: Render
	// replaces older copies of them in certificate-authority-data
	// (--renew-ca). Nil: none.
	Trust func() []*x509.Certificate
	// Context is the kubeconfig context whose user is this store's
	// certificate; "" is the current context. A user's kubeconfig whose
	// current context is another cluster has this cluster's elsewhere.
	Context string
}

// auth is the user of the store's context.
func (s *KubeconfigStore) auth(cfg *clientcmdapi.Config) (*clientcmdapi.AuthInfo, string, error) {
	if s.Context == "" {
		return currentAuth(cfg)
	}
	ctx, ok := cfg.Contexts[s.Context]
	if !ok {
		return nil, "", fmt.Errorf("context %q is not defined", s.Context)
	}
	ai, ok := cfg.AuthInfos[ctx.AuthInfo]
	if !ok {
		return nil, "", fmt.Errorf("user %q of context %q is not defined", ctx.AuthInfo, s.Context)
	}
	return ai, ctx.AuthInfo, nil
}

// swapTrust replaces older copies of the node's CAs in every cluster of cfg.
func (s *KubeconfigStore) swapTrust(cfg *clientcmdapi.Config) {
	if s.Trust == nil {
		return
	}
	for _, ca := range s.Trust() {
		for _, cl := range cfg.Clusters {
			if out := replacePEM(cl.CertificateAuthorityData, ca); out != nil {
				cl.CertificateAuthorityData = out
			}
		}
	}
}

var _ Store = (*KubeconfigStore)(nil)

func (s *KubeconfigStore) Paths() []string {
	p := []string{s.Node.Resolve(s.Path, false)}
	if cfg, err := s.config(); err == nil {
		if ai, _, err := s.auth(cfg); err == nil {
			if ai.ClientCertificate != "" {
				p = append(p, s.ref(ai.ClientCertificate))
			}
			if ai.ClientKey != "" && ai.ClientKey != ai.ClientCertificate {
				p = append(p, s.ref(ai.ClientKey))
			}
		}
	}
	return p
}

// ref is the node path of a file the kubeconfig names: a relative one is
// relative to the kubeconfig's own directory, as kubectl reads it (never
// to / or to kubecpr's working directory).
func (s *KubeconfigStore) ref(p string) string {
	if p == "" || path.IsAbs(p) {
		return path.Clean(p)
	}
	return path.Join(path.Dir(s.Path), p)
}

func (s *KubeconfigStore) config() (*clientcmdapi.Config, error) {
	data, err := s.Node.ReadFile(s.Path)
	if err != nil {
		return nil, err
	}
	cfg, err := node.LoadKubeconfig(data)
	if err != nil {
		return nil, &FileError{Path: s.Path, Err: err, Hint: "the kubeconfig does not parse; restore it from a backup or regenerate it with kubeadm init phase kubeconfig"}
	}
	return cfg, nil
}

// Config returns the parsed kubeconfig.
func (s *KubeconfigStore) Config() (*clientcmdapi.Config, error) { return s.config() }

func currentAuth(cfg *clientcmdapi.Config) (*clientcmdapi.AuthInfo, string, error) {
	ctx, ok := cfg.Contexts[cfg.CurrentContext]
	if !ok {
		if len(cfg.AuthInfos) == 1 {
			for name, ai := range cfg.AuthInfos {
				return ai, name, nil
			}
		}
		return nil, "", fmt.Errorf("current-context %q is not defined", cfg.CurrentContext)
	}
	ai, ok := cfg.AuthInfos[ctx.AuthInfo]
	if !ok {
		return nil, "", fmt.Errorf("user %q of context %q is not defined", ctx.AuthInfo, cfg.CurrentContext)
	}
	return ai, ctx.AuthInfo, nil
}

func (s *KubeconfigStore) Load() (*x509.Certificate, crypto.Signer, error) {
	cfg, err := s.config()
	if err != nil {
		return nil, nil, err
	}
	ai, _, err := s.auth(cfg)
	if err != nil {
		return nil, nil, &FileError{Path: s.Path, Err: err}
	}
	certPEM, keyPEM := ai.ClientCertificateData, ai.ClientKeyData
	certFrom, keyFrom := s.Path, s.Path
	if len(certPEM) == 0 && ai.ClientCertificate != "" {
		certFrom = s.ref(ai.ClientCertificate)
		if certPEM, err = s.Node.ReadFile(s.Node.Resolve(certFrom, false)); err != nil {
			return nil, nil, &FileError{Path: certFrom, Err: err, Hint: "referenced by " + s.Path}
		}
	}
	if len(keyPEM) == 0 && ai.ClientKey != "" {
		keyFrom = s.ref(ai.ClientKey)
		if keyPEM, err = s.Node.ReadFile(s.Node.Resolve(keyFrom, false)); err != nil {
			return nil, nil, &FileError{Path: keyFrom, Err: err, Hint: "referenced by " + s.Path}
		}
	}
	if len(certPEM) == 0 {
		return nil, nil, &FileError{Path: s.Path, Err: errors.New("the current user has no client certificate (token or exec auth?)")}
	}
	cert, err := pki.ParseCertificate(certPEM)
	if err != nil {
		return nil, nil, &FileError{Path: certFrom, Err: err}
	}
	var key crypto.Signer
	if len(keyPEM) > 0 {
		if key, err = pki.ParsePrivateKey(keyPEM); err != nil {
			return cert, nil, &FileError{Path: keyFrom, Err: err}
		}
	}
	return cert, key, nil
}

// Render replaces the client certificate of the current user. Embedded
// data is re-embedded; referenced files are rewritten in place.
func (s *KubeconfigStore) Render(cert *x509.Certificate, key crypto.Signer, _ time.Time) ([]node.FileOp, error) {
	cfg, err := s.config()
	if err != nil {
		return nil, err
	}
	ai, _, err := s.auth(cfg)
	if err != nil {
		return nil, &FileError{Path: s.Path, Err: err}
	}
	kpem, err := pki.EncodeKey(key)
	if err != nil {
		return nil, err
	}
	cpem := pki.EncodeCertificate(cert)
	if len(ai.ClientCertificateData) == 0 && ai.ClientCertificate != "" {
		// Referenced files: write them, leave the kubeconfig as it is.
		certPath := s.Node.Resolve(s.ref(ai.ClientCertificate), false)
		ops := []node.FileOp{}
		if ai.ClientKey == ai.ClientCertificate {
			ops = append(ops, node.FileOp{Path: certPath, Data: append(cpem, kpem...), Mode: 0o600, Secret: true})
		} else {
			if ai.ClientKey != "" {
				ops = append(ops, node.FileOp{Path: s.Node.Resolve(s.ref(ai.ClientKey), false), Data: kpem, Mode: 0o600, Secret: true})
			}
			ops = append(ops, node.FileOp{Path: certPath, Data: cpem, Mode: 0o644})
		}
		// The kubeconfig itself changes only where it holds an older
		// copy of a CA certificate (--renew-ca).
		if s.Trust != nil {
			raw, err := s.Node.ReadFile(s.Path)
			if err != nil {
				return nil, err
			}
			changed := false
			for _, ca := range s.Trust() {
				if out, _ := ReplaceTrust(raw, ca); out != nil {
					raw, changed = out, true
				}
			}
			if changed {
				ops = append(ops, node.FileOp{Path: s.Node.Resolve(s.Path, false), Data: raw, Mode: 0o600, Secret: true})
			}
		}
		return ops, nil
	}
	s.swapTrust(cfg)
	ai.ClientCertificateData = cpem
	ai.ClientKeyData = kpem
	out, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: serialising kubeconfig: %w", s.Path, err)
	}
	return []node.FileOp{{Path: s.Node.Resolve(s.Path, false), Data: out, Mode: 0o600, Secret: true}}, nil
}

// KubeletPEMStore is the kubelet's rotating client certificate:
// kubelet-client-current.pem, a symlink to kubelet-client-<time>.pem that
// holds certificate and key. Render writes a new dated file and repoints
// the symlink, the way the kubelet itself rotates.
type KubeletPEMStore struct {
	Node *node.Node
	Link string // node path of kubelet-client-current.pem
}

var _ Store = (*KubeletPEMStore)(nil)

func (s *KubeletPEMStore) Paths() []string {
	p := []string{s.Link}
	if t := s.Node.Resolve(s.Link, false); t != s.Link {
		p = append(p, t)
	}
	return p
}

func (s *KubeletPEMStore) Load() (*x509.Certificate, crypto.Signer, error) {
	target := s.Node.Resolve(s.Link, false)
	data, err := s.Node.ReadFile(target)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && s.Node.Exists(s.Link) {
			return nil, nil, &FileError{Path: s.Link, Err: danglingLink(target),
				Hint: "the kubelet must re-bootstrap: kubecpr run re-issues its client certificate"}
		}
		return nil, nil, err
	}
	cert, err := pki.ParseCertificate(data)
	if err != nil {
		return nil, nil, &FileError{Path: target, Err: err}
	}
	key, err := pki.ParsePrivateKey(data)
	if err != nil {
		return cert, nil, &FileError{Path: target, Err: err}
	}
	return cert, key, nil
}

// KubeletPEMName is the dated file name the kubelet uses.
func KubeletPEMName(now time.Time) string {
	return "kubelet-client-" + now.UTC().Format("2006-01-02-15-04-05") + ".pem"
}

// NextDated is the node path of the next rotated pem: the kubelet's name
// for now, or the next second that names no existing file (so the current
// pem is never overwritten, even when it was written in the same second).
func (s *KubeletPEMStore) NextDated(now time.Time) string {
	for i := 0; ; i++ {
		p := path.Join(path.Dir(s.Link), KubeletPEMName(now.Add(time.Duration(i)*time.Second)))
		if !s.Node.Exists(p) {
			return p
		}
	}
}

func (s *KubeletPEMStore) Render(cert *x509.Certificate, key crypto.Signer, now time.Time) ([]node.FileOp, error) {
	kpem, err := pki.EncodeKey(key)
	if err != nil {
		return nil, err
	}
	pemData := append(pki.EncodeCertificate(cert), kpem...)
	if st, err := s.Node.Lstat(s.Link); err == nil && st.Mode().IsRegular() {
		// A regular file where the kubelet keeps a link (after `cp -L`,
		// or a restore that followed links): replaced in place, as a
		// regular file; the kubelet reads either.
		return []node.FileOp{{Path: s.Link, Data: pemData, Mode: 0o600, Secret: true}}, nil
	}
	dated := s.NextDated(now)
	return []node.FileOp{
		{Path: dated, Data: pemData, Mode: 0o600, Secret: true},
		{Path: s.Link, Link: dated},
	}, nil
}

// FileError names the file, what is wrong with it and what to do next.
type FileError struct {
	Path string
	Err  error
	Hint string
}

func (e *FileError) Error() string {
	msg := e.Path + ": " + e.Err.Error()
	if e.Hint != "" {
		msg += " (" + e.Hint + ")"
	}
	return msg
}

func (e *FileError) Unwrap() error { return e.Err }

// danglingLink is a symlink whose target is gone: the credential is
// missing (fs.ErrNotExist), and the message says which file.
type danglingLink string

func (t danglingLink) Error() string {
	return "symlink points at " + string(t) + ", which does not exist"
}
func (t danglingLink) Is(target error) bool { return target == fs.ErrNotExist }

func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, os.ErrNotExist)
}
