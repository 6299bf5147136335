package cluster

import (
	"bytes"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"
)

// Versions the harness is pinned to (hack/testbin/build.sh builds them).
const (
	KubernetesVersion = "v1.33.13"
	EtcdVersion       = "v3.5.21"
	// NeverContacted is the advertise address kubeadm is given (it refuses
	// a loopback one). Nothing ever connects to it: after the layout it
	// remains only inside certificate SANs.
	NeverContacted = "10.255.0.1"
	// ConfigInRoot is where the kubeadm config is while kubeadm runs
	// (kubeadm chroots into the root, so the file must be inside it). It is
	// removed after every run, so the node tree holds no copy of it.
	ConfigInRoot = "/tmp/kubeadm.yaml"
	// ServiceSubnet is the node's service network (never routed anywhere:
	// there is no kube-proxy).
	ServiceSubnet = "10.96.0.0/12"
)

// binaries are the programs the harness runs.
var binaries = []string{"kubeadm", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "etcdctl"}

// Binaries returns the directory with kubeadm, kube-apiserver,
// kube-controller-manager, kube-scheduler, etcd and etcdctl: $KUBECPR_TESTBIN_DIR, else the
// default cache path of hack/testbin/build.sh. It fails the test (never
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
	for _, b := range binaries {
		st, err := os.Stat(filepath.Join(dir, b))
		if err != nil || st.IsDir() || st.Mode().Perm()&0o111 == 0 {
			t.Fatalf("test binary %s missing in %s: run `make testbin` (hack/testbin/build.sh builds kubeadm, kube-apiserver, kube-controller-manager, kube-scheduler %s and etcd, etcdctl %s from their Go modules)",
				b, dir, KubernetesVersion, EtcdVersion)
		}
	}
	return dir
}

// Options for a node.
type Options struct {
	// NodeName is nodeRegistration.name (default "cp-1").
	NodeName string
	// KubernetesVersion is always written into the kubeadm config (default
	// v1.33.13, the binaries' version): without it kubeadm would ask the
	// internet for "stable". It must be an exact version, never a label.
	KubernetesVersion string
	// ExternalCA makes the node an external-CA node as kubeadm knows it:
	// after the layout ca.key is moved out of the tree (to
	// Node.ExternalCAKey); ca.crt and every leaf stay. Expire and ClusterCA
	// still use the key from where it is kept.
	ExternalCA bool
	// KubeletConfig also runs `kubeadm init phase kubelet-start`, which
	// writes /var/lib/kubelet/config.yaml and kubeadm-flags.env. Inside the
	// chroot it finds no init system, so it starts nothing (and it runs in
	// an empty network namespace like every kubeadm run).
	KubeletConfig bool
}

// Node is a kubeadm-made control-plane node under Root. Every node path
// (/etc/kubernetes/..., /var/lib/etcd, /var/lib/kubelet/...) lives under Root.
type Node struct {
	Root string
	Name string
	Bin  string
	// Address is the node's own loopback address: 127.0.0.1 for a node made
	// by Kubeadm or KubeadmJoin, 127.0.0.i for node i of ControlPlanes (its
	// API server binds it, its etcd member advertises it). Worker nodes
	// (Worker) have the address they were given.
	Address string
	// Peers are all the control-plane nodes of a ControlPlanes cluster, in
	// order, this one included (nil for a lone node).
	Peers []*Node
	// EtcdInitialCluster is --initial-cluster of the node's etcd manifest
	// ("" for a lone node: its single member).
	EtcdInitialCluster string
	// IsWorker marks a kubeadm-worker-shaped tree made by Worker: no
	// manifests, no CA key; Resign and Expire re-sign only the kubelet's
	// client certificate, with the control plane's CA key kept outside the
	// tree (caKey).
	IsWorker bool
	caKey    string
	// KubernetesVersion is the version written into the kubeadm config.
	KubernetesVersion string
	// Free loopback ports chosen by the harness (all distinct).
	APIServerPort, EtcdClientPort, EtcdPeerPort, EtcdMetricsPort int
	ControllerManagerPort, SchedulerPort                         int
	// ConfigPath is the kubeadm config on the host, outside the root. It is
	// copied to ConfigInRoot for each kubeadm run and removed afterwards.
	ConfigPath string
	// ExternalCAKey is where ca.key is kept, outside the tree, on an
	// ExternalCA node ("" otherwise).
	ExternalCAKey string

	kubeadmMu sync.Mutex
	procMu    sync.Mutex
	procs     map[string]*Proc // newest process started per component
}

// Path maps a node path under Root.
func (n *Node) Path(nodePath string) string {
	return filepath.Join(n.Root, filepath.FromSlash(filepath.Clean("/"+nodePath)))
}

// FreePort returns a free TCP port on 127.0.0.1, reserved for the test
// (see freePorts).
func FreePort(t testing.TB) int {
	t.Helper()
	return freePorts(t, 1)[0]
}

// Ports are taken below the kernel's ephemeral range (read from
// /proc/sys/net/ipv4/ip_local_port_range), so no outgoing connection —
// and the tests make many on loopback — can sit on a node's port while
// its process is stopped or restarting. Each port is reserved until the
// test ends by holding the abstract unix socket "@kubecpr-test-port-<port>"
// (exclusive machine-wide, released by the kernel when the test process
// ends, no file left), which parallel test binaries using this harness
// respect; a port is only taken if it can be bound right now.
const portLo = 20000

var (
	portMu    sync.Mutex
	portRand  = rand.New(rand.NewSource(time.Now().UnixNano() ^ int64(os.Getpid())<<20))
	portsHeld = map[int]bool{}
)

func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if lo, err := strconv.Atoi(f[0]); err == nil {
				return lo
			}
		}
	}
	return 32768
}

// freePorts returns k distinct free loopback ports, reserved until the
// test's cleanup.
func freePorts(t testing.TB, k int) []int {
	t.Helper()
	hi := ephemeralLow() - 1
	if hi-portLo < 1000 {
		t.Fatalf("ephemeral port range starts at %d: no room below it for test ports", hi+1)
	}
	portMu.Lock()
	defer portMu.Unlock()
	var ports []int
	for tries := 0; len(ports) < k; tries++ {
		if tries > 10000 {
			t.Fatalf("no free loopback port in %d-%d", portLo, hi)
		}
		p := portLo + portRand.Intn(hi-portLo+1)
		if portsHeld[p] {
			continue
		}
		lock, err := net.Listen("unix", fmt.Sprintf("@kubecpr-test-port-%d", p))
		if err != nil {
			continue // another test process holds it
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			lock.Close()
			continue
		}
		l.Close()
		portsHeld[p] = true
		ports = append(ports, p)
		t.Cleanup(func() {
			portMu.Lock()
			delete(portsHeld, p)
			portMu.Unlock()
			lock.Close() // releases the reservation
		})
	}
	return ports
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
controlPlaneEndpoint: %[6]s:%[3]d
apiServer:
  certSANs: [%[6]s, localhost]
networking:
  serviceSubnet: %[5]s
  dnsDomain: cluster.local
%[7]s`

// etcdSANs is the ClusterConfiguration part of a node whose address is not
// 127.0.0.1 (kubeadm always puts 127.0.0.1 and localhost in the etcd
// server and peer certificates, and the advertise address it was given,
// which is never the node's loopback address here).
const etcdSANs = `etcd:
  local:
    serverCertSANs: [%[1]s]
    peerCertSANs: [%[1]s]
`

// addr is the node's loopback address (127.0.0.1 unless set).
func (n *Node) addr() string {
	if n.Address == "" {
		return "127.0.0.1"
	}
	return n.Address
}

var exactVersion = regexp.MustCompile(`^v\d+\.\d+\.\d+$`)

// Kubeadm lays out a control-plane node with real kubeadm — `kubeadm init
// phase certs all`, `kubeconfig all`, `control-plane all`, `etcd local`
// (and `kubelet-start` with Options.KubeletConfig), chrooted into a new
// t.TempDir() with --rootfs and run in an empty network namespace — then
// rewrites every address and port a client or server would use to
// 127.0.0.1 and free ports. It fails the test if a non-loopback address
// remains anywhere but inside certificates.
func Kubeadm(t testing.TB, o Options) *Node {
	t.Helper()
	return kubeadmAt(t, t.TempDir(), o)
}

func kubeadmAt(t testing.TB, root string, o Options) *Node {
	t.Helper()
	n := prepareNode(t, root, &o, "127.0.0.1")
	start := time.Now()
	if err := n.runPhases(t, o); err != nil {
		t.Fatal(err)
	}
	n.finishLayout(t, o, start)
	return n
}

// prepareNode checks the options, picks the node's ports and writes its
// kubeadm config (outside the root). addr is the node's loopback address.
func prepareNode(t testing.TB, root string, o *Options, addr string) *Node {
	t.Helper()
	if o.NodeName == "" {
		o.NodeName = "cp-1"
	}
	if o.KubernetesVersion == "" {
		o.KubernetesVersion = KubernetesVersion
	}
	if !exactVersion.MatchString(o.KubernetesVersion) {
		t.Fatalf("KubernetesVersion %q: want an exact version like %s (a label would make kubeadm ask the internet)", o.KubernetesVersion, KubernetesVersion)
	}
	if ip := net.ParseIP(addr); ip == nil || ip.To4() == nil || !ip.IsLoopback() {
		t.Fatalf("node address %q: want a loopback IPv4 address", addr)
	}
	ports := freePorts(t, 6)
	n := &Node{Root: root, Name: o.NodeName, Bin: Binaries(t), KubernetesVersion: o.KubernetesVersion, Address: addr,
		APIServerPort: ports[0], EtcdClientPort: ports[1], EtcdPeerPort: ports[2], EtcdMetricsPort: ports[3],
		ControllerManagerPort: ports[4], SchedulerPort: ports[5]}
	n.ConfigPath = filepath.Join(t.TempDir(), "kubeadm.yaml")
	etcd := ""
	if addr != "127.0.0.1" {
		etcd = fmt.Sprintf(etcdSANs, addr)
	}
	cfg := fmt.Sprintf(kubeadmConfig, o.NodeName, NeverContacted, n.APIServerPort, o.KubernetesVersion, ServiceSubnet, addr, etcd)
	if err := os.WriteFile(n.ConfigPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return n
}

// runPhases runs the kubeadm init phases of the layout. It only returns
// errors (no t.Fatal), so nodes can be laid out concurrently.
func (n *Node) runPhases(t testing.TB, o Options) error {
	phases := [][]string{{"certs", "all"}, {"kubeconfig", "all"}}
	if o.KubeletConfig {
		phases = append(phases, []string{"kubelet-start"})
	}
	phases = append(phases, []string{"control-plane", "all"}, []string{"etcd", "local"})
	for _, phase := range phases {
		args := append([]string{"init", "phase"}, phase...)
		if out, err := n.Kubeadm(t, args...); err != nil {
			return fmt.Errorf("node %s: kubeadm %s: %v\n%s", n.Name, strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// finishLayout rewrites the node to loopback, checks that no other
// address is left, and moves ca.key out on an ExternalCA node.
func (n *Node) finishLayout(t testing.TB, o Options, start time.Time) {
	t.Helper()
	if err := n.rewriteToLoopback(); err != nil {
		t.Fatalf("rewriting the kubeadm node %s to loopback: %v", n.Name, err)
	}
	if leaks, err := NonLoopback(n.Root); err != nil || len(leaks) > 0 {
		t.Fatalf("non-loopback addresses left after rewriting node %s (err %v):\n%s", n.Name, err, strings.Join(leaks, "\n"))
	}
	if o.ExternalCA {
		n.ExternalCAKey = filepath.Join(t.TempDir(), "ca.key")
		if err := os.Rename(n.Path("/etc/kubernetes/pki/ca.key"), n.ExternalCAKey); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("cluster: kubeadm laid out node %s in %s (apiserver %s:%d, etcd %s:%d)",
		n.Name, time.Since(start).Round(time.Millisecond), n.addr(), n.APIServerPort, n.addr(), n.EtcdClientPort)
}

// Kubeadm runs the real kubeadm on this node: always with --rootfs Root
// (kubeadm chroots, so /etc/kubernetes/pki, the kubeconfig dir and the
// manifests are the node's), with --config ConfigInRoot when the command
// accepts --config and none is given (so it never falls back to asking a
// cluster or the internet for its configuration), in a new, empty network
// namespace: whatever a command tries, no packet leaves (a command that
// needs the network fails instead). Returns the combined output.
func (n *Node) Kubeadm(t testing.TB, args ...string) (string, error) {
	t.Helper()
	n.kubeadmMu.Lock()
	defer n.kubeadmMu.Unlock()
	kubeadm := filepath.Join(n.Bin, "kubeadm")
	if !hasFlag(args, "--rootfs") {
		args = append(args, "--rootfs", n.Root)
	}
	if !hasFlag(args, "--config") && acceptsFlag(kubeadm, args, "config") {
		args = append(args, "--config", ConfigInRoot)
	}
	cfg, err := os.ReadFile(n.ConfigPath)
	if err != nil {
		return "", err
	}
	tmpDir := n.Path(filepath.Dir(ConfigInRoot))
	_, statErr := os.Stat(tmpDir)
	if err := os.MkdirAll(tmpDir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(n.Path(ConfigInRoot), cfg, 0o600); err != nil {
		return "", err
	}
	defer func() {
		os.Remove(n.Path(ConfigInRoot))
		if os.IsNotExist(statErr) {
			os.Remove(tmpDir) // only if empty
		}
	}()
	cmd := exec.Command(kubeadm, args...)
	cmd.Dir = "/"
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func hasFlag(args []string, flag string) bool {
	for _, a := range args {
		if a == flag || strings.HasPrefix(a, flag+"=") {
			return true
		}
	}
	return false
}

var (
	helpMu    sync.Mutex
	helpCache = map[string]string{}
)

// acceptsFlag reports whether the kubeadm command named by the leading
// non-flag args lists --flag in its help.
func acceptsFlag(kubeadm string, args []string, flag string) bool {
	var sub []string
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			break
		}
		sub = append(sub, a)
	}
	key := strings.Join(sub, " ")
	helpMu.Lock()
	defer helpMu.Unlock()
	help, ok := helpCache[key]
	if !ok {
		cmd := exec.Command(kubeadm, append(sub, "--help")...)
		cmd.Env = childEnv()
		out, _ := cmd.CombinedOutput()
		help = string(out)
		helpCache[key] = help
	}
	return strings.Contains(help, "--"+flag+" string")
}

// childEnv is the environment of every child: no proxy variables (gRPC and
// Go's HTTP client honour them), loopback exempt anyway.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "NO_PROXY=127.0.0.1,localhost", "no_proxy=127.0.0.1,localhost")
}

// rewriteToLoopback points every kubeconfig at the apiserver on
// 127.0.0.1:APIServerPort and makes every listen/advertise address, URL,
// probe and kubeadm annotation in the manifests 127.0.0.1 with the node's
// ports. The manifests are edited as text (kubeadm's bytes are otherwise
// kept) and then checked parsed.
func (n *Node) rewriteToLoopback() error {
	a := n.addr()
	confs, _ := filepath.Glob(n.Path("/etc/kubernetes/*.conf"))
	for _, f := range confs {
		if err := editFile(f, func(s string) string { return strings.ReplaceAll(s, NeverContacted, a) }); err != nil {
			return err
		}
		cfg, err := clientcmd.LoadFromFile(f)
		if err != nil {
			return err
		}
		want := fmt.Sprintf("https://%s:%d", a, n.APIServerPort)
		for name, c := range cfg.Clusters {
			if c.Server != want {
				return fmt.Errorf("%s: cluster %s server %s, want %s", filepath.Base(f), name, c.Server, want)
			}
		}
	}
	if f := n.Path("/var/lib/kubelet/config.yaml"); exists(f) {
		if err := editFile(f, func(s string) string { return strings.ReplaceAll(s, NeverContacted, a) }); err != nil {
			return err
		}
	}
	manifests, _ := filepath.Glob(n.Path("/etc/kubernetes/manifests/*.yaml"))
	for _, f := range manifests {
		comp := strings.TrimSuffix(filepath.Base(f), ".yaml")
		if err := editFile(f, func(s string) string { return n.rewriteManifest(comp, s) }); err != nil {
			return err
		}
		if err := n.checkManifest(comp); err != nil {
			return err
		}
	}
	return nil
}

var (
	loopbackURLPort = regexp.MustCompile(`://(127\.\d{1,3}\.\d{1,3}\.\d{1,3}):(\d+)\b`)
	probePort       = regexp.MustCompile(`^(\s+port: )(\d+)$`)
	urlListFlag     = regexp.MustCompile(`^(\s*- --(?:listen-client-urls|listen-peer-urls|advertise-client-urls|initial-advertise-peer-urls|etcd-servers)=)(.*)$`)
)

func (n *Node) rewriteManifest(comp, s string) string {
	s = strings.ReplaceAll(s, NeverContacted, n.addr())
	urlPorts := map[string]int{"2379": n.EtcdClientPort, "2380": n.EtcdPeerPort, "2381": n.EtcdMetricsPort}
	s = loopbackURLPort.ReplaceAllStringFunc(s, func(m string) string {
		sub := loopbackURLPort.FindStringSubmatch(m)
		if p, ok := urlPorts[sub[2]]; ok {
			return fmt.Sprintf("://%s:%d", sub[1], p)
		}
		return m
	})
	probePorts := map[string]int{"2381": n.EtcdMetricsPort, "10257": n.ControllerManagerPort, "10259": n.SchedulerPort}
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if m := probePort.FindStringSubmatch(l); m != nil {
			if p, ok := probePorts[m[2]]; ok {
				lines[i] = m[1] + strconv.Itoa(p)
			}
		}
		// https://127.0.0.1:P,https://10.255.0.1:P became the same URL twice
		if m := urlListFlag.FindStringSubmatch(l); m != nil {
			var uniq []string
			for _, u := range strings.Split(m[2], ",") {
				if !contains(uniq, u) {
					uniq = append(uniq, u)
				}
			}
			lines[i] = m[1] + strings.Join(uniq, ",")
		}
	}
	switch comp {
	case "kube-apiserver":
		// kubeadm sets no --bind-address (0.0.0.0): listen on the node's
		// loopback address only
		lines = setFlag(lines, comp, "bind-address", n.addr())
	case "kube-controller-manager":
		// default 10257 is fixed: one port per node, so tests run in parallel
		lines = setFlag(lines, comp, "secure-port", strconv.Itoa(n.ControllerManagerPort))
	case "kube-scheduler":
		lines = setFlag(lines, comp, "secure-port", strconv.Itoa(n.SchedulerPort))
	}
	return strings.Join(lines, "\n")
}

// setFlag sets --flag=value in the command of a kubeadm manifest, in
// kubeadm's sorted order if it is new.
func setFlag(lines []string, comp, flag, value string) []string {
	cmdAt := -1
	for i, l := range lines {
		if strings.TrimSpace(l) == "- "+comp {
			cmdAt = i
			break
		}
	}
	if cmdAt < 0 {
		return lines
	}
	indent := lines[cmdAt][:strings.Index(lines[cmdAt], "- ")]
	newLine := indent + "- --" + flag + "=" + value
	insertAt := cmdAt + 1
	for i := cmdAt + 1; i < len(lines) && strings.HasPrefix(lines[i], indent+"- --"); i++ {
		name, _, _ := strings.Cut(strings.TrimPrefix(lines[i], indent+"- --"), "=")
		if name == flag {
			lines[i] = newLine
			return lines
		}
		if name < flag {
			insertAt = i + 1
		}
	}
	return append(lines[:insertAt], append([]string{newLine}, lines[insertAt:]...)...)
}

// checkManifest verifies, on the parsed pod, what the rewrite promises.
func (n *Node) checkManifest(comp string) error {
	pod, err := n.Pod(comp)
	if err != nil {
		return err
	}
	flags := map[string]string{}
	for _, a := range pod.Spec.Containers[0].Command[1:] {
		k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		flags[k] = v
	}
	a := n.addr()
	// kubeadm's etcd listens for clients on 127.0.0.1 and the advertise
	// address (one URL when they are the same)
	listenClient := fmt.Sprintf("https://127.0.0.1:%d", n.EtcdClientPort)
	if a != "127.0.0.1" {
		listenClient += fmt.Sprintf(",https://%s:%d", a, n.EtcdClientPort)
	}
	initialCluster := n.EtcdInitialCluster
	if initialCluster == "" {
		initialCluster = fmt.Sprintf("%s=https://%s:%d", n.Name, a, n.EtcdPeerPort)
	}
	want := map[string]map[string]string{
		"etcd": {
			"listen-client-urls":          listenClient,
			"advertise-client-urls":       fmt.Sprintf("https://%s:%d", a, n.EtcdClientPort),
			"listen-peer-urls":            fmt.Sprintf("https://%s:%d", a, n.EtcdPeerPort),
			"initial-advertise-peer-urls": fmt.Sprintf("https://%s:%d", a, n.EtcdPeerPort),
			"initial-cluster":             initialCluster,
			"listen-metrics-urls":         fmt.Sprintf("http://127.0.0.1:%d", n.EtcdMetricsPort),
		},
		"kube-apiserver": {
			"advertise-address": a,
			"bind-address":      a,
			"secure-port":       strconv.Itoa(n.APIServerPort),
			"etcd-servers":      fmt.Sprintf("https://127.0.0.1:%d", n.EtcdClientPort),
		},
		"kube-controller-manager": {"bind-address": "127.0.0.1", "secure-port": strconv.Itoa(n.ControllerManagerPort)},
		"kube-scheduler":          {"bind-address": "127.0.0.1", "secure-port": strconv.Itoa(n.SchedulerPort)},
	}[comp]
	for k, v := range want {
		if flags[k] != v {
			return fmt.Errorf("%s: --%s=%q after rewriting, want %q", comp, k, flags[k], v)
		}
	}
	c := pod.Spec.Containers[0]
	for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
		if p == nil || p.HTTPGet == nil {
			continue
		}
		if ip := net.ParseIP(p.HTTPGet.Host); ip == nil || !ip.IsLoopback() || comp == "kube-apiserver" && p.HTTPGet.Host != a {
			return fmt.Errorf("%s: probe host %q", comp, p.HTTPGet.Host)
		}
	}
	return nil
}

// Pod parses a static pod manifest of the node (component: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler).
func (n *Node) Pod(comp string) (*corev1.Pod, error) {
	b, err := os.ReadFile(n.Path("/etc/kubernetes/manifests/" + comp + ".yaml"))
	if err != nil {
		return nil, err
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(b, &pod); err != nil {
		return nil, fmt.Errorf("%s manifest: %w", comp, err)
	}
	if len(pod.Spec.Containers) != 1 || len(pod.Spec.Containers[0].Command) == 0 {
		return nil, fmt.Errorf("%s manifest: want one container with a command", comp)
	}
	return &pod, nil
}

// Manifest returns the command line (command + args) of a static pod
// manifest.
func (n *Node) Manifest(t testing.TB, comp string) []string {
	t.Helper()
	pod, err := n.Pod(comp)
	if err != nil {
		t.Fatal(err)
	}
	c := pod.Spec.Containers[0]
	return append(append([]string{}, c.Command...), c.Args...)
}

// NonLoopbackAddresses lists every non-loopback IPv4 address left in the
// node's text files (see NonLoopback). Empty on a node made by Kubeadm.
func (n *Node) NonLoopbackAddresses(t testing.TB) []string {
	t.Helper()
	leaks, err := NonLoopback(n.Root)
	if err != nil {
		t.Fatal(err)
	}
	return leaks
}

var ipv4 = regexp.MustCompile(`\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}`)

// NonLoopback scans every text file of a node tree (kubeconfigs,
// manifests, kubelet files, anything else) for IPv4 addresses that are not
// loopback and reports them as "path:line: text". Not reported: network
// prefixes (an address followed by /len, e.g. --service-cluster-ip-range),
// addresses in the service subnet (clusterDNS: nothing routes there),
// PEM files and embedded base64 (certificate SANs may and do hold the
// advertise address), binary files, and the harness's own directories:
// /var/log (process logs) and /var/lib/etcd (etcd's data).
func NonLoopback(root string) ([]string, error) {
	_, services, _ := net.ParseCIDR(ServiceSubnet)
	var out []string
	err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if info.IsDir() {
			if rel == filepath.Join("var", "log") || rel == filepath.Join("var", "lib", "etcd") {
				return filepath.SkipDir
			}
			return nil
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.IndexByte(b, 0) >= 0 || !utf8.Valid(b) || bytes.HasPrefix(bytes.TrimSpace(b), []byte("-----BEGIN")) {
			return nil
		}
		for i, line := range strings.Split(string(b), "\n") {
			for _, loc := range ipv4.FindAllStringIndex(line, -1) {
				before, after := byte(' '), byte(' ')
				if loc[0] > 0 {
					before = line[loc[0]-1]
				}
				if loc[1] < len(line) {
					after = line[loc[1]]
				}
				if isDigit(before) || before == '.' || isDigit(after) || after == '.' || after == '/' {
					continue // part of a longer token, or a prefix
				}
				ip := net.ParseIP(line[loc[0]:loc[1]])
				if ip == nil || ip.IsLoopback() || services.Contains(ip) {
					continue
				}
				out = append(out, fmt.Sprintf("/%s:%d: %s", filepath.ToSlash(rel), i+1, strings.TrimSpace(line)))
			}
		}
		return nil
	})
	return out, err
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// editFile rewrites a file in place keeping its mode.
func editFile(f string, edit func(string) string) error {
	b, err := os.ReadFile(f)
	if err != nil {
		return err
	}
	st, err := os.Stat(f)
	if err != nil {
		return err
	}
	s := edit(string(b))
	if s == string(b) {
		return nil
	}
	return os.WriteFile(f, []byte(s), st.Mode().Perm())
}
