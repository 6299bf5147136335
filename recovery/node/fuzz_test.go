package node_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/kubecpr/kubecpr/test/fuzzseed"
	"math/big"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubecpr/kubecpr/recovery/node"
)

// The kubeconfig and static-pod-manifest readers take whatever a broken
// node holds. Fuzzed, they must never panic, must return in bounded time
// and memory, and must keep their promises: a kubeconfig that parses has
// its current context looked up, or an error naming it. Seeds:
// testdata/fuzz-seeds/{kubeconfig,manifest} and testdata/fuzz/<FuzzName>
// at the top of the module, plus kubeconfigs with freshly generated keys
// (no private key is stored in the repository).

const adminConf = node.KubernetesDir + "/admin.conf"

// FuzzParseKubeconfig covers ParseKubeconfig and the same bytes read
// through a Node (Kubeconfig, RESTConfig).
func FuzzParseKubeconfig(f *testing.F) {
	fuzzseed.AddSeeds(f, "kubeconfig")
	addGeneratedKubeconfigs(f)
	root := f.TempDir()
	n, err := node.New(root)
	if err != nil {
		f.Fatal(err)
	}
	// files a kubeconfig may refer to, inside the root
	cert := selfSignedPEM(f)
	for _, p := range []string{"/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/admin.crt", "/var/lib/kubelet/pki/kubelet-client-current.pem"} {
		writeNodeFile(f, root, p, cert)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var k *node.Kubeconfig
		var err error
		fuzzseed.Bounded(t, "ParseKubeconfig", func() { k, err = node.ParseKubeconfig(adminConf, data) })
		if err != nil {
			if !strings.Contains(err.Error(), adminConf) {
				t.Errorf("the error does not name the file: %v", err)
			}
			if k != nil {
				checkUndefinedContext(t, k, err)
			}
		} else {
			checkContext(t, k)
		}

		// The same bytes on a node: the same answer, and a client config
		// built from files inside the root only.
		writeNodeFile(t, root, adminConf, data)
		var nk *node.Kubeconfig
		var nerr error
		fuzzseed.Bounded(t, "Node.Kubeconfig", func() { nk, nerr = n.Kubeconfig(adminConf) })
		if (err == nil) != (nerr == nil) || (err != nil && err.Error() != nerr.Error()) || (k == nil) != (nk == nil) {
			t.Fatalf("Node.Kubeconfig disagrees with ParseKubeconfig: %v / %v", nerr, err)
		}
		if err != nil {
			return
		}
		fuzzseed.Bounded(t, "Node.RESTConfig", func() {
			rc, err := n.RESTConfig(adminConf)
			if err != nil {
				return
			}
			// every file was read through the node and embedded: nothing
			// is left for client-go to open on the host, now or later
			if rc.CAFile != "" || rc.CertFile != "" || rc.KeyFile != "" || rc.BearerTokenFile != "" {
				t.Errorf("RESTConfig leaves host paths to client-go: ca %q cert %q key %q token %q", rc.CAFile, rc.CertFile, rc.KeyFile, rc.BearerTokenFile)
			}
		})
	})
}

// checkContext: a kubeconfig that parses has its current context, and the
// cluster and user that context names.
func checkContext(t *testing.T, k *node.Kubeconfig) {
	t.Helper()
	if k == nil || k.Config == nil {
		t.Fatal("ParseKubeconfig returned neither a kubeconfig nor an error")
	}
	if k.Path != adminConf {
		t.Errorf("Path %q, want %q", k.Path, adminConf)
	}
	ctx, ok := k.Config.Contexts[k.Config.CurrentContext]
	if !ok || k.Context == nil || k.Context != ctx {
		t.Fatalf("parsed without error, but current-context %q is not its Context", k.Config.CurrentContext)
	}
	if k.Cluster != k.Config.Clusters[k.Context.Cluster] {
		t.Errorf("Cluster is not the one context %q names (%q)", k.Config.CurrentContext, k.Context.Cluster)
	}
	if k.User != k.Config.AuthInfos[k.Context.AuthInfo] {
		t.Errorf("User is not the one context %q names (%q)", k.Config.CurrentContext, k.Context.AuthInfo)
	}
	if s := k.Server(); s != strings.TrimSpace(s) {
		t.Errorf("Server() %q is not trimmed", s)
	}
	var refs []string
	if k.User != nil {
		refs = append(refs, k.User.ClientCertificate, k.User.ClientKey)
	}
	if k.Cluster != nil {
		refs = append(refs, k.Cluster.CertificateAuthority)
	}
	for _, r := range refs {
		if r == "" {
			continue
		}
		if got := k.Ref(r); !path.IsAbs(got) || path.Clean(got) != got {
			t.Errorf("Ref(%q) = %q: not a clean absolute node path", r, got)
		}
	}
}

// checkUndefinedContext: the one error that comes with a kubeconfig is a
// current-context that is not defined, and it names that context.
func checkUndefinedContext(t *testing.T, k *node.Kubeconfig, err error) {
	t.Helper()
	if k.Config == nil {
		t.Fatalf("a Kubeconfig without Config returned with %v", err)
	}
	cur := k.Config.CurrentContext
	if _, ok := k.Config.Contexts[cur]; ok {
		t.Errorf("error %q, yet current-context %q is defined", err, cur)
	}
	if !strings.Contains(err.Error(), strconv.Quote(cur)) {
		t.Errorf("error %q does not name current-context %q", err, cur)
	}
	if k.Context != nil || k.Cluster != nil || k.User != nil {
		t.Error("a kubeconfig without its current context has a Context, Cluster or User")
	}
}

// FuzzReadManifest covers (*Node).ReadManifest on a static pod manifest
// written into a node root, and Discover, which reads the flags of the API
// server's and etcd's manifests.
func FuzzReadManifest(f *testing.F) {
	fuzzseed.AddSeeds(f, "manifest")
	root := f.TempDir()
	n, err := node.New(root)
	if err != nil {
		f.Fatal(err)
	}
	api := path.Join(node.ManifestsDir, "kube-apiserver.yaml")
	etcd := path.Join(node.ManifestsDir, "etcd.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		writeNodeFile(t, root, api, data)
		writeNodeFile(t, root, etcd, data)
		var m *node.Manifest
		var err error
		fuzzseed.Bounded(t, "ReadManifest", func() { m, err = n.ReadManifest(api) })
		if err != nil {
			if m != nil {
				t.Errorf("ReadManifest returned a manifest with error %v", err)
			}
			if !strings.Contains(err.Error(), api) {
				t.Errorf("the error does not name the manifest: %v", err)
			}
		} else {
			checkManifest(t, m, api)
		}
		fuzzseed.Bounded(t, "Discover", func() {
			c, err := n.Discover("")
			var unknown *node.UnknownError
			if err != nil && !errors.As(err, &unknown) && m != nil {
				t.Errorf("Discover failed on a manifest ReadManifest accepts: %v", err)
			}
			if c != nil && c.Source == nil {
				t.Error("Discover returned a cluster without sources")
			}
		})
	})
}

// checkManifest: every flag ReadManifest reports is an argument of the
// first container, "--name=value" or a bare "--name" for "".
func checkManifest(t *testing.T, m *node.Manifest, p string) {
	t.Helper()
	if m.Path != p {
		t.Errorf("Path %q, want %q", m.Path, p)
	}
	if m.Flags == nil {
		t.Fatal("Flags is nil")
	}
	args := map[string]bool{}
	for _, a := range m.Command {
		args[a] = true
	}
	for k, v := range m.Flags {
		if !args["--"+k+"="+v] && !(v == "" && args["--"+k]) {
			t.Errorf("flag %q=%q is not an argument of the container", k, v)
		}
	}
	for _, a := range m.Command {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		if k, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "="); !hasKey(m.Flags, k) {
			t.Errorf("argument %q missing from Flags", a)
		}
	}
}

func hasKey(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}

// TestRESTConfigReadsTokenFileInsideRoot: a kubeconfig's tokenFile is a
// node path like every other file it names, so RESTConfig reads it inside
// the root (or refuses it), never from the host: a rehearsal on a copy of
// a node must not pick up the host's token, and /dev/zero or a FIFO
// there must not hang or exhaust memory (see ReadFile).
func TestRESTConfigReadsTokenFileInsideRoot(t *testing.T) {
	root := t.TempDir()
	outside := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(outside, []byte("host-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	writeNodeFile(t, root, outside, []byte("node-token"))
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- {name: k, cluster: {server: "https://127.0.0.1:6443"}}
contexts:
- {name: k, context: {cluster: k, user: u}}
current-context: k
users:
- {name: u, user: {tokenFile: %q}}
`, outside)
	writeNodeFile(t, root, adminConf, []byte(kc))
	n, err := node.New(root)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := n.RESTConfig(adminConf)
	if err != nil {
		return // refused: fine
	}
	if rc.BearerToken == "host-token" {
		t.Fatalf("RESTConfig read tokenFile %s from the host, outside --root %s", outside, root)
	}
	if rc.BearerToken != "node-token" {
		t.Errorf("bearer token %q, want the node's %q", rc.BearerToken, "node-token")
	}
}

// addGeneratedKubeconfigs seeds kubeadm-style kubeconfigs with a client
// certificate and key embedded (made fresh, never stored), as admin.conf,
// super-admin.conf, controller-manager.conf and scheduler.conf are.
func addGeneratedKubeconfigs(f *testing.F) {
	f.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		f.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE" + " KEY", Bytes: der})
	cert := certPEM(f, key)
	for _, user := range []string{"kubernetes-admin", "kubernetes-super-admin", "system:kube-controller-manager", "system:kube-scheduler"} {
		cfg := clientcmdapi.NewConfig()
		cfg.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: "https://10.0.0.11:6443", CertificateAuthorityData: cert}
		ctx := user + "@kubernetes"
		cfg.Contexts[ctx] = &clientcmdapi.Context{Cluster: "kubernetes", AuthInfo: user}
		cfg.CurrentContext = ctx
		cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: keyPEM}
		b, err := clientcmd.Write(*cfg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
		f.Add(bytes.Replace(b, []byte("current-context: "+ctx), []byte("current-context: other"), 1))
	}
}

func selfSignedPEM(f *testing.F) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	return certPEM(f, key)
}

func certPEM(f *testing.F, key crypto.Signer) []byte {
	f.Helper()
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes-admin", Organization: []string{"kubeadm:cluster-admins"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		f.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// writeNodeFile writes data at node path p under root (no link in root).
func writeNodeFile(tb testing.TB, root, p string, data []byte) {
	tb.Helper()
	host := filepath.Join(root, filepath.FromSlash(p))
	if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(host, data, 0o600); err != nil {
		tb.Fatal(err)
	}
}
