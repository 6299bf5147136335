// Package cluster makes kubecpr's tests meet the real programs: real kubeadm
// lays out a control-plane node under a temporary root, and real etcd and
// kube-apiserver (and kube-controller-manager) run as processes from the
// flags in the generated static pod manifests, on loopback ports chosen
// free. kubeadm refuses a loopback advertise address, so it is given
// 10.255.0.1, an address that is never contacted: every server URL in the
// kubeconfigs and every listen/advertise address in the manifests is then
// rewritten to 127.0.0.1 (the address stays only inside certificate SANs).
package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Versions the harness is pinned to (hack/testbin/build.sh builds them).
const (
	KubernetesVersion = "v1.33.13"
	EtcdVersion       = "v3.5.21"
	// NeverContacted is the advertise address kubeadm is given.
	NeverContacted = "10.255.0.1"
)

// Binaries returns the directory with kubeadm, kube-apiserver,
// kube-controller-manager, etcd and etcdctl. It fails the test (never
// skips) when one is missing.
func Binaries(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("KUBECPR_TESTBIN_DIR")
	if dir == "" {
		cache := os.Getenv("KUBECPR_TESTBIN")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache", "kubecpr", "testbin")
		}
		dir = filepath.Join(cache, "k8s-"+KubernetesVersion+"-etcd-"+EtcdVersion, "bin")
	}
	for _, b := range []string{"kubeadm", "kube-apiserver", "kube-controller-manager", "etcd", "etcdctl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("test binary %s missing in %s: run `make testbin` (builds them from their Go modules)", b, dir)
		}
	}
	return dir
}

// Options for a node.
type Options struct {
	NodeName string // default "cp-1"
}

// Node is a kubeadm-made node under Root.
type Node struct {
	Root                                                         string
	Name                                                         string
	Bin                                                          string
	APIServerPort, EtcdClientPort, EtcdPeerPort, EtcdMetricsPort int
	ControllerManagerPort, SchedulerPort                         int
	ConfigPath                                                   string // kubeadm config, host path
	configInRoot                                                 string // same, as seen from inside the root
}

// Path maps a node path under Root.
func (n *Node) Path(nodePath string) string {
	return filepath.Join(n.Root, filepath.FromSlash(filepath.Clean("/"+nodePath)))
}

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

const kubeadmConfig = `apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
nodeRegistration:
  name: %[1]s
  criSocket: unix:///run/containerd/containerd.sock
localAPIEndpoint:
  advertiseAddress: %[2]s
  bindPort: %[3]d
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: %[4]s
controlPlaneEndpoint: 127.0.0.1:%[3]d
apiServer:
  certSANs: [127.0.0.1, localhost]
networking:
  serviceSubnet: 10.96.0.0/12
  dnsDomain: cluster.local
`

// Kubeadm lays out a control-plane node with real kubeadm (certs,
// kubeconfigs, control-plane manifests, local etcd manifest) and rewrites
// every address a client or server would use to loopback.
func Kubeadm(t testing.TB, o Options) *Node {
	t.Helper()
	return kubeadmAt(t, t.TempDir(), o)
}

func kubeadmAt(t testing.TB, root string, o Options) *Node {
	t.Helper()
	if o.NodeName == "" {
		o.NodeName = "cp-1"
	}
	n := &Node{Root: root, Name: o.NodeName, Bin: Binaries(t),
		APIServerPort: FreePort(t), EtcdClientPort: FreePort(t), EtcdPeerPort: FreePort(t), EtcdMetricsPort: FreePort(t),
		ControllerManagerPort: FreePort(t), SchedulerPort: FreePort(t)}
	n.configInRoot = "/tmp/kubeadm.yaml"
	n.ConfigPath = n.Path(n.configInRoot)
	os.MkdirAll(filepath.Dir(n.ConfigPath), 0o755)
	cfg := fmt.Sprintf(kubeadmConfig, o.NodeName, NeverContacted, n.APIServerPort, KubernetesVersion)
	if err := os.WriteFile(n.ConfigPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, phase := range [][]string{{"certs", "all"}, {"kubeconfig", "all"}, {"control-plane", "all"}, {"etcd", "local"}} {
		args := append([]string{"init", "phase"}, phase...)
		if out, err := n.Kubeadm(t, append(args, "--config", n.configInRoot)...); err != nil {
			t.Fatalf("kubeadm %v: %v\n%s", args, err, out)
		}
	}
	n.rewriteToLoopback(t)
	return n
}

// Kubeadm runs real kubeadm chrooted into the node root.
func (n *Node) Kubeadm(t testing.TB, args ...string) (string, error) {
	t.Helper()
	args = append(args, "--rootfs", n.Root)
	cmd := exec.Command(filepath.Join(n.Bin, "kubeadm"), args...)
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (n *Node) rewriteToLoopback(t testing.TB) {
	t.Helper()
	ports := map[string]string{
		":2379": fmt.Sprintf(":%d", n.EtcdClientPort),
		":2380": fmt.Sprintf(":%d", n.EtcdPeerPort),
		":2381": fmt.Sprintf(":%d", n.EtcdMetricsPort),
	}
	files, _ := filepath.Glob(n.Path("/etc/kubernetes/*.conf"))
	manifests, _ := filepath.Glob(n.Path("/etc/kubernetes/manifests/*.yaml"))
	for _, f := range append(files, manifests...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s := strings.ReplaceAll(string(b), NeverContacted, "127.0.0.1")
		if strings.HasSuffix(f, ".yaml") {
			for from, to := range ports {
				s = strings.ReplaceAll(s, from, to)
			}
			// the controller-manager and scheduler serve on fixed default
			// ports: give each node its own, so tests can run in parallel
			for comp, port := range map[string]int{"kube-controller-manager": n.ControllerManagerPort, "kube-scheduler": n.SchedulerPort} {
				s = strings.Replace(s, "    - "+comp+"\n", fmt.Sprintf("    - %s\n    - --secure-port=%d\n", comp, port), 1)
			}
			s = strings.ReplaceAll(s, "port: 10257", fmt.Sprintf("port: %d", n.ControllerManagerPort))
			s = strings.ReplaceAll(s, "port: 10259", fmt.Sprintf("port: %d", n.SchedulerPort))
		}
		st, _ := os.Stat(f)
		if err := os.WriteFile(f, []byte(s), st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	if leaks := n.NonLoopbackAddresses(t); len(leaks) > 0 {
		t.Fatalf("non-loopback addresses left after rewriting: %v", leaks)
	}
}

var ipInURL = regexp.MustCompile(`(?:https?://|address[=:] ?|host: )(\d+\.\d+\.\d+\.\d+)`)

// NonLoopbackAddresses lists every IPv4 address a client or server would use
// (in URLs, address flags, probe hosts) that is not loopback, in the node's
// kubeconfigs and manifests.
func (n *Node) NonLoopbackAddresses(t testing.TB) []string {
	t.Helper()
	var out []string
	files, _ := filepath.Glob(n.Path("/etc/kubernetes/*.conf"))
	manifests, _ := filepath.Glob(n.Path("/etc/kubernetes/manifests/*.yaml"))
	for _, f := range append(files, manifests...) {
		b, _ := os.ReadFile(f)
		for _, m := range ipInURL.FindAllStringSubmatch(string(b), -1) {
			if ip := net.ParseIP(m[1]); ip == nil || !ip.IsLoopback() {
				out = append(out, filepath.Base(f)+": "+m[0])
			}
		}
	}
	return out
}

// Proc is a running control-plane process.
type Proc struct {
	Name    string
	Cmd     *exec.Cmd
	LogPath string
	done    chan struct{}
}

// Stop terminates the process group: SIGTERM, then SIGKILL after 10 s.
// Idempotent.
func (p *Proc) Stop() {
	if p == nil || p.Cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// LogTail returns the last n lines of the process log.
func (p *Proc) LogTail(n int) string {
	b, _ := os.ReadFile(p.LogPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Manifest reads the command line of a static pod manifest.
func (n *Node) Manifest(t testing.TB, name string) []string {
	t.Helper()
	b, err := os.ReadFile(n.Path("/etc/kubernetes/manifests/" + name + ".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pod struct {
		Spec struct {
			Containers []struct {
				Command []string `yaml:"command"`
				Args    []string `yaml:"args"`
			} `yaml:"containers"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(b, &pod); err != nil {
		t.Fatal(err)
	}
	c := pod.Spec.Containers[0]
	return append(append([]string{}, c.Command...), c.Args...)
}

// start runs a manifest's command as a process with node paths under Root.
func (n *Node) start(t testing.TB, name string, extra ...string) *Proc {
	t.Helper()
	argv := n.Manifest(t, name)
	for i, a := range argv[1:] {
		for _, prefix := range []string{"/etc/kubernetes/", "/var/lib/etcd"} {
			if k, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(v, prefix) {
				argv[i+1] = k + "=" + n.Path(v)
			}
		}
	}
	argv = append(argv, extra...)
	logPath := n.Path("/var/log/" + name + ".log")
	os.MkdirAll(filepath.Dir(logPath), 0o755)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(n.Bin, argv[0]), argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, LogPath: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(p.Stop)
	return p
}

// StartEtcd runs etcd from its manifest and waits for /health on the
// metrics port.
func (n *Node) StartEtcd(t testing.TB) *Proc {
	t.Helper()
	os.MkdirAll(n.Path("/var/lib/etcd"), 0o700)
	p := n.start(t, "etcd")
	url := fmt.Sprintf("http://127.0.0.1:%d/health", n.EtcdMetricsPort)
	if err := waitFor(60*time.Second, p, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}); err != nil {
		t.Fatalf("etcd did not become healthy: %v\n%s", err, p.LogTail(20))
	}
	return p
}

// StartAPIServer runs kube-apiserver from its manifest and waits until its
// port accepts connections (not for readiness: an expired node never gets
// ready; use WaitReady for that).
func (n *Node) StartAPIServer(t testing.TB) *Proc {
	t.Helper()
	p := n.start(t, "kube-apiserver")
	addr := fmt.Sprintf("127.0.0.1:%d", n.APIServerPort)
	if err := waitFor(60*time.Second, p, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}); err != nil {
		t.Fatalf("kube-apiserver did not listen: %v\n%s", err, p.LogTail(30))
	}
	return p
}

// StartControllerManager runs kube-controller-manager from its manifest.
func (n *Node) StartControllerManager(t testing.TB) *Proc {
	t.Helper()
	return n.start(t, "kube-controller-manager", "--secure-port=0")
}

func waitFor(timeout time.Duration, p *Proc, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("%s exited", p.Name)
		}
		if ok() {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("timed out after %s", timeout)
}

// Client returns a client-go clientset for a kubeconfig (node path).
func (n *Node) Client(t testing.TB, kubeconfig string) *kubernetes.Clientset {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", n.Path(kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Timeout = 5 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// WaitReady polls /readyz with the kubeconfig until it answers ok.
func (n *Node) WaitReady(ctx context.Context, t testing.TB, kubeconfig string, p *Proc) error {
	cs := n.Client(t, kubeconfig)
	var last error
	for {
		b, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && bytes.Equal(bytes.TrimSpace(b), []byte("ok")) {
			return nil
		}
		last = err
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited: %v", p.Name, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready: %v (last error %v)", ctx.Err(), last)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// ListNamespaces lists namespace names with a kubeconfig.
func (n *Node) ListNamespaces(ctx context.Context, t testing.TB, kubeconfig string) ([]string, error) {
	list, err := n.Client(t, kubeconfig).CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ns := range list.Items {
		out = append(out, ns.Name)
	}
	return out, nil
}

// ServedCertificate returns the leaf certificate served on a loopback port.
func ServedCertificate(port int) (*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp",
		fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// GrantClusterAdmins creates the ClusterRoleBinding that `kubeadm init`
// creates (kubeadm:cluster-admins → cluster-admin), with super-admin.conf,
// so admin.conf has its real rights. Idempotent.
func (n *Node) GrantClusterAdmins(ctx context.Context, t testing.TB) error {
	cs := n.Client(t, "/etc/kubernetes/super-admin.conf")
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:cluster-admins"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: "Group", Name: "kubeadm:cluster-admins", APIGroup: "rbac.authorization.k8s.io"}},
	}
	_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// KubeletBootstrapped converts kubeadm's kubelet.conf (client certificate
// embedded, as `kubeadm init phase kubeconfig` writes it) into the layout of
// a node whose kubelet has rotated its certificate: the cert and key in
// /var/lib/kubelet/pki/kubelet-client-<time>.pem, kubelet-client-current.pem
// linking to it, and kubelet.conf pointing at that file (what kubeadm's
// kubelet-finalize phase does).
func (n *Node) KubeletBootstrapped(t testing.TB) {
	t.Helper()
	kc := n.Path("/etc/kubernetes/kubelet.conf")
	cfg, err := clientcmd.LoadFromFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	ai := cfg.AuthInfos[ctx.AuthInfo]
	dated := "/var/lib/kubelet/pki/kubelet-client-" + time.Now().UTC().Format("2006-01-02-15-04-05") + ".pem"
	if err := os.MkdirAll(n.Path("/var/lib/kubelet/pki"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.Path(dated), append(append([]byte{}, ai.ClientCertificateData...), ai.ClientKeyData...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dated, n.Path("/var/lib/kubelet/pki/kubelet-client-current.pem")); err != nil {
		t.Fatal(err)
	}
	ai.ClientCertificateData, ai.ClientKeyData = nil, nil
	ai.ClientCertificate = "/var/lib/kubelet/pki/kubelet-client-current.pem"
	ai.ClientKey = "/var/lib/kubelet/pki/kubelet-client-current.pem"
	if err := clientcmd.WriteToFile(*cfg, kc); err != nil {
		t.Fatal(err)
	}
}

// KubeletClient is a client-go clientset with the kubelet's credential:
// kubelet.conf's server and CA, and its client certificate (embedded, or
// the file it points at, resolved under Root like the node would).
func (n *Node) KubeletClient(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(n.Path("/etc/kubernetes/kubelet.conf"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	cl, ai := cfg.Clusters[ctx.Cluster], cfg.AuthInfos[ctx.AuthInfo]
	certPEM, keyPEM := ai.ClientCertificateData, ai.ClientKeyData
	if len(certPEM) == 0 {
		p := ai.ClientCertificate
		if target, err := os.Readlink(n.Path(p)); err == nil {
			p = target
		}
		if certPEM, err = os.ReadFile(n.Path(p)); err != nil {
			t.Fatal(err)
		}
		keyPEM = certPEM
	}
	rc := &rest.Config{Host: cl.Server, Timeout: 5 * time.Second,
		TLSClientConfig: rest.TLSClientConfig{CAData: cl.CertificateAuthorityData, CertData: certPEM, KeyData: keyPEM}}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// KubeadmJoin lays out a second control-plane node of the same cluster:
// the CAs and service-account key of first are copied in before real
// kubeadm generates the node's own leaves, as `kubeadm join
// --control-plane` does with the certificates it downloads.
func KubeadmJoin(t testing.TB, first *Node, o Options) *Node {
	t.Helper()
	root := t.TempDir()
	for _, f := range []string{"ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key", "etcd/ca.crt", "etcd/ca.key", "sa.key", "sa.pub"} {
		b, err := os.ReadFile(first.Path("/etc/kubernetes/pki/" + f))
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(root, "etc/kubernetes/pki", f)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		mode := os.FileMode(0o644)
		if strings.HasSuffix(f, ".key") {
			mode = 0o600
		}
		if err := os.WriteFile(dst, b, mode); err != nil {
			t.Fatal(err)
		}
	}
	return kubeadmAt(t, root, o)
}
