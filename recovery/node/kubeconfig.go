package node

import (
	"fmt"
	"path"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubecpr/kubecpr/recovery/parsecache"
)

// Kubeconfig is a kubeconfig read from a node with its current context
// looked up: kubecpr's one kubeconfig reader.
type Kubeconfig struct {
	Path    string // node path
	Config  *clientcmdapi.Config
	Context *clientcmdapi.Context
	Cluster *clientcmdapi.Cluster  // nil when the context names none
	User    *clientcmdapi.AuthInfo // nil when the context names none
}

// kubeconfigs remembers decoded kubeconfigs by content: decoding through
// client-go's codec is the costliest read of a run, and each stage reads
// the same files again.
var kubeconfigs parsecache.Cache[*clientcmdapi.Config]

// LoadKubeconfig decodes a kubeconfig (clientcmd.Load) and returns a copy
// of its own to the caller.
func LoadKubeconfig(data []byte) (*clientcmdapi.Config, error) {
	cfg, err := kubeconfigs.Get(data, clientcmd.Load)
	if err != nil {
		return nil, err
	}
	return cfg.DeepCopy(), nil
}

// ParseKubeconfig parses data read from node path p.
func ParseKubeconfig(p string, data []byte) (*Kubeconfig, error) {
	cfg, err := LoadKubeconfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: not a kubeconfig: %w", p, err)
	}
	k := &Kubeconfig{Path: p, Config: cfg}
	ctx, ok := cfg.Contexts[cfg.CurrentContext]
	if !ok {
		return k, fmt.Errorf("%s: current-context %q is not defined", p, cfg.CurrentContext)
	}
	k.Context = ctx
	k.Cluster = cfg.Clusters[ctx.Cluster]
	k.User = cfg.AuthInfos[ctx.AuthInfo]
	return k, nil
}

// Kubeconfig reads the kubeconfig at node path p (inside Root).
func (n *Node) Kubeconfig(p string) (*Kubeconfig, error) {
	data, err := n.ReadFile(p)
	if err != nil {
		return nil, err
	}
	return ParseKubeconfig(p, data)
}

// Server is the current context's server URL ("" when none).
func (k *Kubeconfig) Server() string {
	if k.Cluster == nil {
		return ""
	}
	return strings.TrimSpace(k.Cluster.Server)
}

// Ref resolves a file a kubeconfig refers to (client-certificate:,
// client-key:, certificate-authority:) to a node path: a relative path is
// taken from the kubeconfig's own directory, as kubectl does.
func (k *Kubeconfig) Ref(p string) string {
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	return path.Join(path.Dir(k.Path), p)
}

// RESTConfig builds a client config from the kubeconfig at node path p.
// Files it refers to are read through the node (inside Root) and embedded,
// so client-go never opens a host path of its own.
func (n *Node) RESTConfig(p string) (*rest.Config, error) {
	k, err := n.Kubeconfig(p)
	if err != nil {
		return nil, err
	}
	cfg := k.Config.DeepCopy()
	ctx := cfg.Contexts[cfg.CurrentContext]
	if u := cfg.AuthInfos[ctx.AuthInfo]; u != nil {
		if err := n.embed(k, &u.ClientCertificate, &u.ClientCertificateData); err != nil {
			return nil, err
		}
		if err := n.embed(k, &u.ClientKey, &u.ClientKeyData); err != nil {
			return nil, err
		}
		if u.TokenFile != "" && u.Token == "" {
			b, err := n.ReadFile(k.Ref(u.TokenFile))
			if err != nil {
				return nil, fmt.Errorf("%s refers to %s: %w", k.Path, u.TokenFile, err)
			}
			u.Token = strings.TrimSpace(string(b))
		}
		u.TokenFile = ""
	}
	if c := cfg.Clusters[ctx.Cluster]; c != nil {
		if err := n.embed(k, &c.CertificateAuthority, &c.CertificateAuthorityData); err != nil {
			return nil, err
		}
	}
	rc, err := clientcmd.NewNonInteractiveClientConfig(*cfg, cfg.CurrentContext, &clientcmd.ConfigOverrides{}, nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return rc, nil
}

func (n *Node) embed(k *Kubeconfig, file *string, data *[]byte) error {
	if *file == "" || len(*data) > 0 {
		*file = ""
		return nil
	}
	b, err := n.ReadFile(k.Ref(*file))
	if err != nil {
		return fmt.Errorf("%s refers to %s: %w", k.Path, *file, err)
	}
	*file, *data = "", b
	return nil
}
