// Package kubeadmbed builds a Kubernetes cluster the way users build one:
// unmodified `kubeadm init` on the first control plane, `kubeadm join
// --control-plane` on the others with the token and certificate key init
// printed, `kubeadm join` on the workers, each node running the real
// kubelet against a real containerd, as kind's nodes do.
//
// Every node is a little host of its own, made of namespaces:
//
//   - network: its own namespace with loopback and eth0, a veth whose
//     other end is on a bridge in the lab's network namespace; the lab is
//     a namespace the bed creates, with no interface and no route to the
//     host's, so no packet of the cluster can leave it. Addresses are in
//     10.250.0.0/24, used only there. Tests reach node addresses through
//     Bed.Dial (a socket made inside the lab) or by running a command in a
//     node (Node.Run).
//   - UTS: its hostname is its node name.
//   - mount: a private copy of the host's, with a writable overlay on /etc,
//     /usr and /var (what kubeadm and the kubelet create there stays in
//     the node), and /etc/kubernetes, /var/lib/kubelet, /var/lib/etcd,
//     /var/log/pods, /var/log/containers and /run bind-mounted from
//     Node.Root on the host: kubecpr works on the same files with
//     --root Node.Root. kubelet and kubeadm are at /usr/bin as on a node;
//     /etc/resolv.conf names only 127.0.0.1 and /etc/hosts the lab's nodes.
//   - its own containerd (test/ctrd, entered into those namespaces; socket
//     at /run/containerd/containerd.sock in the node, Node.Socket on the
//     host) and the real kubelet started as kubeadm's systemd drop-in
//     starts it (kubeadm-flags.env sourced), supervised like systemd's
//     Restart=always (test/kubelet.Supervise). Node.KubeletRestartCommand
//     plays `systemctl restart kubelet`.
//
// No registry is reachable: the images kubeadm asks for (`kubeadm config
// images list`: kube-apiserver, kube-controller-manager, kube-scheduler,
// etcd, pause) are built from the static binaries of hack/testbin
// (test/ociimage) and imported into each node's containerd under exactly
// those names. etcd's image is tagged as kubeadm v1.33.13 asks
// (etcd:3.5.24-0) and holds the etcd v3.5.21 the tests build. kube-proxy
// and CoreDNS are addons: the bed disables them in the ClusterConfiguration
// and skips their phases (there are no images for them, and nothing here
// needs them).
//
// What a namespace cannot satisfy is said where it is done: the kubelet
// configuration (config.go), the preflight errors ignored (preflightIgnored).
package kubeadmbed

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/ctrd"
	"github.com/kubecpr/kubecpr/test/kubelet"
	"github.com/kubecpr/kubecpr/test/ociimage"
)

// Role of a node.
type Role string

// Roles.
const (
	ControlPlane Role = "control-plane"
	Worker       Role = "worker"
)

// Options for New.
type Options struct {
	ControlPlanes, Workers int
	// Timeout for the whole bring-up (default 12 min).
	Timeout time.Duration
}

// Bed is a running cluster made by kubeadm.
type Bed struct {
	// Dir holds every node's tree and the bed's files; removed in cleanup.
	Dir string
	// Bin holds the real binaries (hack/testbin).
	Bin   string
	Nodes []*Node
	// Endpoint is the controlPlaneEndpoint: cp-1's address, port 6443.
	Endpoint string
	// Up is how long New took; Phases what each step took.
	Up     time.Duration
	Phases []Phase
	// InitOutput is what `kubeadm init` printed.
	InitOutput string

	lab *lab
	mu  sync.Mutex
}

// Phase is one timed step of New.
type Phase struct {
	Name string
	Took time.Duration
}

// Node is one node of the bed.
type Node struct {
	Name    string
	Role    Role
	Address string
	// Root is the node's tree on the host: etc/kubernetes, var/lib/kubelet,
	// var/lib/etcd, var/log/pods, var/log/containers and run are the
	// node's /etc/kubernetes, ... (kubecpr's --root).
	Root string
	// Socket is the node's containerd socket on the host (kubecpr's
	// --cri-socket for --root Root).
	Socket  string
	D       *ctrd.Daemon
	Kubelet *kubelet.Kubelet

	index int
	dir   string // the node's own files outside its tree
	h     *holder
}

// Path is node path p on the host.
func (n *Node) Path(p string) string { return filepath.Join(n.Root, filepath.FromSlash(p)) }

// Enter is nsenter's flags for the node's namespaces (mount, network, UTS).
func (n *Node) Enter() []string {
	return []string{"--target", strconv.Itoa(n.h.pid()), "--mount", "--net", "--uts"}
}

// Command is argv run inside the node (its mount, network and UTS
// namespaces), with a clean environment.
func (n *Node) Command(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append(append(n.Enter(), "--"), argv...)...)
	cmd.Env = cleanEnv
	return cmd
}

// Run runs argv inside the node and returns its combined output.
func (n *Node) Run(ctx context.Context, argv ...string) (string, error) {
	return run(ctx, n.Enter(), argv...)
}

// KubeletRestartCommand is the shell line that restarts the node's kubelet
// as `systemctl restart kubelet` does (kubecpr's --kubelet-restart-command).
func (n *Node) KubeletRestartCommand() string { return n.Kubelet.RestartCommand() }

// ControlPlanes are the control-plane nodes, cp-1 first.
func (b *Bed) ControlPlanes() []*Node { return b.role(ControlPlane) }

// Workers are the worker nodes.
func (b *Bed) Workers() []*Node { return b.role(Worker) }

func (b *Bed) role(r Role) []*Node {
	var out []*Node
	for _, n := range b.Nodes {
		if n.Role == r {
			out = append(out, n)
		}
	}
	return out
}

// Lab is nsenter's flag for the lab's network namespace: a command run
// with it reaches every node's address (and nothing else).
func (b *Bed) Lab() []string { return b.lab.enter() }

// Dial connects to a node's address from inside the lab (client-go's and
// etcd's dialer); any other address is refused.
func (b *Bed) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	return b.lab.Dial(ctx, network, address)
}

func (b *Bed) phase(name string, start time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.Phases = append(b.Phases, Phase{name, time.Since(start)})
}

// preflightIgnored are the preflight checks of kubeadm init and join that
// a node made of namespaces cannot pass, each with why. Nothing else is
// ignored.
var preflightIgnored = []struct{ check, why string }{
	// kubeadm reads the kernel's config (/proc/config.gz or
	// /boot/config-*) and the cgroup controllers of a real host; the
	// nodes share this machine's kernel, which may have neither file.
	{"SystemVerification", "the nodes share the machine's kernel, whose config kubeadm cannot read"},
}

func ignoreFlag() string {
	var names []string
	for _, p := range preflightIgnored {
		names = append(names, p.check)
	}
	return "--ignore-preflight-errors=" + strings.Join(names, ",")
}

// skippedPhases of kubeadm init: the addons, which need images that are
// not built here (kube-proxy, CoreDNS) and nothing in these tests needs.
const skippedPhases = "--skip-phases=addon/kube-proxy,addon/coredns"

// New builds and starts the bed: opts.ControlPlanes control planes (cp-1
// ... by kubeadm init and join --control-plane) and opts.Workers workers
// (worker-1 ... by kubeadm join). Everything stops, and every namespace,
// mount, process and directory goes, in cleanup, also on failure.
func New(t testing.TB, o Options) *Bed {
	t.Helper()
	if o.ControlPlanes < 1 {
		t.Fatal("kubeadmbed: at least one control plane")
	}
	if o.Timeout == 0 {
		o.Timeout = 12 * time.Minute
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	defer cancel()
	dir, err := os.MkdirTemp("/tmp", "kb") // short: socket paths live under it
	if err != nil {
		t.Fatal(err)
	}
	b := &Bed{Dir: dir, Bin: cluster.Binaries(t)}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("kubeadmbed: removing %s: %v", dir, err)
		}
	})
	for _, f := range []string{"kubelet", "kubeadm"} {
		if _, err := os.Stat(filepath.Join(b.Bin, f)); err != nil {
			t.Fatalf("kubeadmbed: %s missing in %s: run `make testbin`", f, b.Bin)
		}
	}
	for i := 0; i < o.ControlPlanes; i++ {
		b.Nodes = append(b.Nodes, &Node{Name: fmt.Sprintf("cp-%d", i+1), Role: ControlPlane})
	}
	for i := 0; i < o.Workers; i++ {
		b.Nodes = append(b.Nodes, &Node{Name: fmt.Sprintf("worker-%d", i+1), Role: Worker})
	}
	for i, n := range b.Nodes {
		n.index = i + 1
		n.Address = labPrefix + strconv.Itoa(10+n.index)
		n.dir = filepath.Join(dir, n.Name)
		n.Root = filepath.Join(n.dir, "root")
		n.Socket = n.Path("/run/containerd/containerd.sock")
	}
	b.Endpoint = b.Nodes[0].Address + ":6443"

	t0 := time.Now()
	b.lab = startLab(t, dir)
	for _, n := range b.Nodes {
		b.startNode(ctx, t, n)
	}
	b.phase("namespaces", t0)

	t0 = time.Now()
	cpTar, workerTar := b.images(t)
	for _, n := range b.Nodes {
		n.D = ctrd.StartWith(t, ctrd.Options{Enter: n.Enter(), Socket: n.Socket})
	}
	var wg sync.WaitGroup
	errs := make([]error, len(b.Nodes))
	for i, n := range b.Nodes {
		tarPath := workerTar
		if n.Role == ControlPlane {
			tarPath = cpTar
		}
		wg.Add(1)
		go func(i int, n *Node) {
			defer wg.Done()
			errs[i] = importImages(ctx, n.D, tarPath)
		}(i, n)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("kubeadmbed: %s: importing the images: %v", b.Nodes[i].Name, err)
		}
	}
	b.phase("containerd and images", t0)

	// Each kubelet is started before its node's kubeadm, as on a host where
	// the kubelet unit is enabled: it exits until kubeadm has written its
	// configuration and the supervisor starts it again a second later.
	cp1 := b.Nodes[0]
	t0 = time.Now()
	b.startKubelet(t, cp1)
	out, err := b.kubeadm(ctx, cp1, initConfig(cp1), "init", "--upload-certs", skippedPhases)
	b.InitOutput = out
	if err != nil {
		t.Fatalf("kubeadmbed: kubeadm init on %s: %v\nkubelet:\n%s", cp1.Name, err, cp1.Kubelet.LogTail(40))
	}
	b.phase("kubeadm init", t0)
	j, err := parseJoin(out)
	if err != nil {
		t.Fatalf("kubeadmbed: %v\n%s", err, out)
	}

	// Control planes join one after the other (etcd takes one learner at
	// a time), the workers meanwhile.
	t0 = time.Now()
	for _, n := range b.Nodes[1:] {
		b.startKubelet(t, n)
	}
	joinErrs := map[string]error{}
	var mu sync.Mutex
	join := func(n *Node) {
		t1 := time.Now()
		_, err := b.kubeadm(ctx, n, joinConfig(n, j), "join")
		mu.Lock()
		joinErrs[n.Name] = err
		mu.Unlock()
		b.phase("kubeadm join "+n.Name, t1)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, n := range b.ControlPlanes()[1:] {
			join(n)
			if joinErrs[n.Name] != nil {
				return
			}
		}
	}()
	for _, n := range b.Workers() {
		wg.Add(1)
		go func(n *Node) { defer wg.Done(); join(n) }(n)
	}
	wg.Wait()
	for _, n := range b.Nodes[1:] {
		if err := joinErrs[n.Name]; err != nil {
			t.Fatalf("kubeadmbed: kubeadm join on %s: %v\nkubelet:\n%s", n.Name, err, n.Kubelet.LogTail(40))
		}
	}
	b.phase("kubeadm join (all)", t0)
	b.Up = time.Since(start)
	return b
}

// startNode makes the node's directories and files, its namespaces (the
// holder), and plugs it into the lab.
func (b *Bed) startNode(ctx context.Context, t testing.TB, n *Node) {
	t.Helper()
	for _, p := range []string{"/etc/kubernetes", "/var/lib/kubelet", "/var/lib/etcd", "/var/log/pods", "/var/log/containers", "/run"} {
		if err := os.MkdirAll(n.Path(p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var hosts strings.Builder
	hosts.WriteString("127.0.0.1 localhost\n")
	for _, m := range b.Nodes {
		fmt.Fprintf(&hosts, "%s %s\n", m.Address, m.Name)
	}
	files := filepath.Join(n.dir, "files")
	for name, body := range map[string]string{"resolv.conf": "nameserver 127.0.0.1\n", "hosts": hosts.String(), "hostname": n.Name + "\n"} {
		if err := os.MkdirAll(files, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(files, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var binds []ctrd.Bind
	for _, p := range []string{"/etc/kubernetes", "/var/lib/kubelet", "/var/lib/etcd", "/var/log/pods", "/var/log/containers", "/run"} {
		binds = append(binds, ctrd.Bind{Source: n.Path(p), Target: p})
	}
	for _, f := range []string{"resolv.conf", "hosts", "hostname"} {
		binds = append(binds, ctrd.Bind{Source: filepath.Join(files, f), Target: "/etc/" + f})
	}
	binds = append(binds, kubelet.SysctlBinds(t, files)...)
	for _, f := range []string{"kubelet", "kubeadm"} {
		binds = append(binds, ctrd.Bind{Source: filepath.Join(b.Bin, f), Target: "/usr/bin/" + f})
	}
	mounts, err := ctrd.BindScript(filepath.Join(n.dir, "ns"), kubelet.Overlays, binds)
	if err != nil {
		t.Fatal(err)
	}
	// In the node's own network namespace: loopback up, and IPv4
	// forwarding on as on any Kubernetes node (kubeadm's preflight wants
	// it; the setting is the namespace's, not the host's).
	script := fmt.Sprintf("set -e\nhostname %s\nip link set lo up\necho 1 > /proc/sys/net/ipv4/ip_forward\n%s", n.Name, mounts)
	n.h = startHolder(t, n.Name, filepath.Join(n.dir, "holder.log"),
		[]string{"--mount", "--uts", "--net", "--propagation", "private"}, script)
	if err := b.lab.plug(ctx, n.h, n.index, n.Address); err != nil {
		t.Fatalf("kubeadmbed: %s: %v", n.Name, err)
	}
}

// The kubelet's command line as kubeadm's systemd drop-in
// (10-kubeadm.conf) makes it: the kubeconfigs, the config kubeadm wrote,
// and $KUBELET_KUBEADM_ARGS from kubeadm-flags.env.
const kubeletDropIn = `KUBELET_KUBEADM_ARGS=
[ -f /var/lib/kubelet/kubeadm-flags.env ] && . /var/lib/kubelet/kubeadm-flags.env
exec /usr/bin/kubelet --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf --config=/var/lib/kubelet/config.yaml $KUBELET_KUBEADM_ARGS --v=2`

func (b *Bed) startKubelet(t testing.TB, n *Node) {
	t.Helper()
	n.Kubelet = kubelet.Supervise(t, n.Name, n.D, append(append(n.Enter(), "--"), "env", "-i", cleanEnv[0], "sh", "-c", kubeletDropIn))
}

// kubeadm runs `kubeadm ARGS --config FILE` inside node n (config written
// to the node's own files) and returns what it printed.
func (b *Bed) kubeadm(ctx context.Context, n *Node, config string, args ...string) (string, error) {
	file := filepath.Join(n.dir, "kubeadm-"+args[0]+".yaml")
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		return "", err
	}
	argv := append([]string{"/usr/bin/kubeadm"}, args...)
	argv = append(argv, "--config", file, ignoreFlag(), "--v=1")
	cmd := n.Command(ctx, argv...)
	logf, err := os.Create(filepath.Join(n.dir, "kubeadm-"+args[0]+".log"))
	if err != nil {
		return "", err
	}
	defer logf.Close()
	var stdout strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, logf
	err = cmd.Run()
	fmt.Fprintf(logf, "--- stdout\n%s", stdout.String())
	if err != nil {
		b, _ := os.ReadFile(logf.Name())
		return stdout.String(), fmt.Errorf("%w\n%s", err, tailString(string(b), 60))
	}
	return stdout.String(), nil
}

var (
	reToken    = regexp.MustCompile(`--token (\S+)`)
	reHash     = regexp.MustCompile(`--discovery-token-ca-cert-hash (sha256:[0-9a-f]+)`)
	reCertKey  = regexp.MustCompile(`--certificate-key ([0-9a-f]+)`)
	reEndpoint = regexp.MustCompile(`kubeadm join (\S+:\d+)`)
)

// parseJoin reads the join command kubeadm init printed.
func parseJoin(out string) (joinInfo, error) {
	var j joinInfo
	for _, f := range []struct {
		re  *regexp.Regexp
		dst *string
	}{{reEndpoint, &j.Endpoint}, {reToken, &j.Token}, {reHash, &j.CACertHash}, {reCertKey, &j.CertificateKey}} {
		m := f.re.FindStringSubmatch(out)
		if m == nil {
			return j, fmt.Errorf("kubeadm init did not print %s", f.re)
		}
		*f.dst = m[1]
	}
	return j, nil
}

// images writes two image tarballs: every image `kubeadm config images
// list` names for the bed's config (for the control planes), and the pause
// image alone (for the workers, which run no static pod).
func (b *Bed) images(t testing.TB) (cp, worker string) {
	t.Helper()
	cfg := filepath.Join(b.Dir, "images.yaml")
	if err := os.WriteFile(cfg, []byte(initConfig(b.Nodes[0])), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(b.Bin, "kubeadm"), "config", "images", "list", "--config", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("kubeadmbed: kubeadm config images list: %v\n%s", err, out)
	}
	var cpImgs []ociimage.Image
	var pause ociimage.Image
	for _, name := range strings.Fields(string(out)) {
		repo := name[:strings.LastIndex(name, ":")]
		comp := repo[strings.LastIndex(repo, "/")+1:]
		switch comp {
		case "kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd":
			cpImgs = append(cpImgs, ociimage.Image{Name: name, Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
				Files: []ociimage.File{{Path: "/usr/local/bin/" + comp, Mode: 0o755, SourcePath: filepath.Join(b.Bin, comp)}}})
		case "pause":
			pause = kubelet.PauseImage(t, name)
			cpImgs = append(cpImgs, pause)
		default:
			t.Fatalf("kubeadmbed: kubeadm asks for %s, which the bed does not build", name)
		}
	}
	if pause.Name == "" {
		t.Fatalf("kubeadmbed: kubeadm asks for no pause image:\n%s", out)
	}
	if pause.Name != ctrd.DefaultSandboxImage {
		t.Fatalf("kubeadmbed: kubeadm's pause image %s is not containerd's sandbox image %s", pause.Name, ctrd.DefaultSandboxImage)
	}
	cp, worker = filepath.Join(b.Dir, "images-cp.tar"), filepath.Join(b.Dir, "images-worker.tar")
	if err := ociimage.WriteFile(cp, cpImgs...); err != nil {
		t.Fatal(err)
	}
	if err := ociimage.WriteFile(worker, pause); err != nil {
		t.Fatal(err)
	}
	return cp, worker
}

// importImages imports a tarball into the daemon's k8s.io namespace (the
// CRI's) and unpacks it for the daemon's snapshotter.
func importImages(ctx context.Context, d *ctrd.Daemon, tarPath string) error {
	c, err := containerd.New(d.Socket, containerd.WithTimeout(5*time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx = namespaces.WithNamespace(ctx, "k8s.io")
	f, err := os.Open(tarPath)
	if err != nil {
		return err
	}
	defer f.Close()
	imgs, err := c.Import(ctx, f)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		if err := containerd.NewImage(c, img).Unpack(ctx, d.Snapshotter); err != nil {
			return fmt.Errorf("unpacking %s: %w", img.Name, err)
		}
	}
	return nil
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
