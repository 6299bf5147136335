// Package kubelet runs the real kubelet (built by hack/testbin from
// k8s.io/kubernetes/cmd/kubelet) for a test, against a real containerd,
// on a kubeadm node laid out by test/cluster.
//
// The kubelet and containerd share one private mount namespace
// (ctrd.Options.Binds) in which the node's directories under Root are
// bind-mounted at their node paths (/etc/kubernetes, /var/lib/kubelet,
// /var/lib/etcd, /var/log/pods, /var/log/containers): the kubelet reads
// /etc/kubernetes/kubelet.conf and the static pod manifests exactly where
// kubeadm put them, and the hostPath volumes it hands to containerd resolve
// to the node's files. kubecpr, outside the namespace, works on the same
// files through --root. /etc, /usr and /var get a private writable overlay
// in the namespace (ctrd.Options.Overlays), so the mount points and the
// DirectoryOrCreate hostPaths of kubeadm's manifests
// (/usr/libexec/kubernetes/...) never appear on the host.
//
// Where this machine differs from a node, the kubelet configuration says
// so and nothing else changes: cgroupfs without QoS cgroups or node
// allocatable enforcement (systemd is not PID 1), protectKernelDefaults
// with the three sysctl values it checks bind-mounted in the namespace
// (the host's are left alone), its ports on free loopback ports. The
// kubelet refuses 127.0.0.1 as node IP, so --node-ip is this machine's
// first non-loopback address (NodeIP): given explicitly, the kubelet never
// looks its name up. It only lands in the Node's status and nothing in
// these tests contacts it. In the namespace /etc/resolv.conf names
// 127.0.0.1 and /etc/hosts maps the node name to NodeIP, so no lookup can
// leave the machine either.
//
// Like systemd with Restart=always, a supervisor restarts the kubelet one
// second after it exits; RestartCommand is the shell line that plays
// `systemctl restart kubelet` for kubecpr's --kubelet-restart-command.
package kubelet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/ctrd"
	"github.com/kubecpr/kubecpr/test/ociimage"
)

// Kubelet is a supervised real kubelet.
type Kubelet struct {
	Node *cluster.Node
	// Name is the node's name (Node.Name, or Supervise's name).
	Name string
	D    *ctrd.Daemon
	// Port and HealthzPort are the kubelet's ports on 127.0.0.1.
	Port, HealthzPort int
	// LogPath collects the output of every kubelet start, each headed by a
	// "=== kubelet start N" line.
	LogPath string
	// PIDFile holds the pid of the running kubelet.
	PIDFile string

	mu     sync.Mutex
	starts int
	cmd    *exec.Cmd
	quit   chan struct{}
	done   chan struct{}
}

// Overlays are the host directories given a private writable layer in the
// namespace.
var Overlays = []string{"/etc", "/usr", "/var"}

// Binds returns the bind mounts the namespace needs for node n, the
// sysctl files among them (made under dir).
func Binds(t testing.TB, n *cluster.Node, dir string) []ctrd.Bind {
	t.Helper()
	var out []ctrd.Bind
	for _, p := range []string{"/etc/kubernetes", "/var/lib/kubelet", "/var/lib/etcd", "/var/log/pods", "/var/log/containers"} {
		if err := os.MkdirAll(n.Path(p), 0o755); err != nil {
			t.Fatal(err)
		}
		out = append(out, ctrd.Bind{Source: n.Path(p), Target: p})
	}
	out = append(out, SysctlBinds(t, dir)...)
	ip := NodeIP(t)
	for _, f := range []struct{ name, body string }{
		{"resolv.conf", "nameserver 127.0.0.1\n"},
		{"hosts", fmt.Sprintf("127.0.0.1 localhost\n%s %s\n", ip, n.Name)},
	} {
		src := filepath.Join(dir, "etc", f.name)
		if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(src, []byte(f.body), 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, ctrd.Bind{Source: src, Target: "/etc/" + f.name})
	}
	return out
}

// SysctlBinds are the three kernel settings protectKernelDefaults checks,
// as files (under dir) bind-mounted over /proc/sys in the namespace: on
// this machine they differ from what the kubelet wants, and the host's
// must not change (they are not per network namespace).
func SysctlBinds(t testing.TB, dir string) []ctrd.Bind {
	t.Helper()
	var out []ctrd.Bind
	for _, s := range []struct{ file, val string }{
		{"vm/overcommit_memory", "1"}, {"kernel/panic", "10"}, {"kernel/panic_on_oops", "1"},
	} {
		src := filepath.Join(dir, "sysctl", strings.ReplaceAll(s.file, "/", "_"))
		if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(src, []byte(s.val+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, ctrd.Bind{Source: src, Target: "/proc/sys/" + s.file})
	}
	return out
}

// NodeIP is the first non-loopback IPv4 address of this machine's
// interfaces.
func NodeIP(t testing.TB) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
			return ipn.IP.String()
		}
	}
	t.Fatal("kubelet: no non-loopback IPv4 address on this machine for --node-ip (the kubelet refuses 127.0.0.1)")
	return ""
}

// PauseImage builds the sandbox image from test/kubelet/pause.
func PauseImage(t testing.TB, name string) ociimage.Image {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pause")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/kubecpr/kubecpr/test/kubelet/pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the pause program: %v\n%s", err, out)
	}
	return ociimage.Image{Name: name, Entrypoint: []string{"/pause"},
		Files: []ociimage.File{{Path: "/pause", Mode: 0o755, SourcePath: bin}}}
}

// Configure edits /var/lib/kubelet/config.yaml (written by `kubeadm init
// phase kubelet-start`) for this machine and the daemon d, and picks the
// kubelet's ports.
func Configure(t testing.TB, n *cluster.Node, socket string) (port, healthz int) {
	t.Helper()
	p := n.Path("/var/lib/kubelet/config.yaml")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("kubelet config (run cluster.Kubeadm with KubeletConfig): %v", err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	port, healthz = cluster.FreePort(t), cluster.FreePort(t)
	for k, v := range map[string]any{
		"address":                     "127.0.0.1",
		"port":                        port,
		"readOnlyPort":                0,
		"healthzBindAddress":          "127.0.0.1",
		"healthzPort":                 healthz,
		"containerRuntimeEndpoint":    "unix://" + socket,
		"cgroupDriver":                "cgroupfs",
		"cgroupsPerQOS":               false,
		"enforceNodeAllocatable":      []string{},
		"failSwapOn":                  false,
		"protectKernelDefaults":       true,
		"staticPodPath":               "/etc/kubernetes/manifests",
		"fileCheckFrequency":          "1s",
		"syncFrequency":               "5s",
		"evictionHard":                map[string]string{"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"resolvConf":                  "/etc/resolv.conf",
	} {
		cfg[k] = v
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return port, healthz
}

// Start runs the kubelet in d's mount namespace, supervised, until the
// test ends. The node must have been configured with Configure for d.
func Start(t testing.TB, n *cluster.Node, d *ctrd.Daemon, port, healthz int) *Kubelet {
	t.Helper()
	return start(t, n, d, port, healthz)
}

// StartWorker runs the real kubelet of the worker w (laid out by
// cluster.Worker) against a containerd of its own, in that daemon's mount
// namespace, as kubeadm's systemd drop-in starts it on a joined node:
// --kubeconfig /etc/kubernetes/kubelet.conf and --bootstrap-kubeconfig
// /etc/kubernetes/bootstrap-kubelet.conf (which kubeadm join removed after
// the TLS bootstrap). So it behaves as on a real worker: with a valid
// client certificate it registers its Node and renews its Lease; with an
// expired one and no bootstrap kubeconfig it exits at once ("unable to
// load bootstrap kubeconfig") and the supervisor restarts it every second
// (systemd's crash loop); with a bootstrap kubeconfig it files its own
// client CSR and, once that is signed, stores the certificate as
// kubelet-client-<date>.pem, re-points kubelet-client-current.pem and
// rewrites kubelet.conf to use it. No static pods: the manifests
// directory is empty.
func StartWorker(t testing.TB, w *cluster.Node) *Kubelet {
	t.Helper()
	if !w.IsWorker {
		t.Fatalf("StartWorker: %s is not a worker", w.Name)
	}
	d := ctrd.StartWith(t, ctrd.Options{Overlays: Overlays, Binds: Binds(t, w, t.TempDir())})
	port, healthz := Configure(t, w, d.Socket)
	return start(t, w, d, port, healthz, "--bootstrap-kubeconfig="+cluster.BootstrapKubeconfig)
}

func start(t testing.TB, n *cluster.Node, d *ctrd.Daemon, port, healthz int, extra ...string) *Kubelet {
	t.Helper()
	bin := filepath.Join(n.Bin, "kubelet")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("kubelet binary missing in %s: run `make testbin`", n.Bin)
	}
	argv := []string{"--mount=" + d.MountNamespace(), "--", bin,
		"--config=/var/lib/kubelet/config.yaml",
		"--kubeconfig=/etc/kubernetes/kubelet.conf",
		"--hostname-override=" + n.Name,
		"--node-ip=" + NodeIP(t),
		"--v=2",
	}
	argv = append(argv, extra...)
	k := &Kubelet{Node: n, D: d, Port: port, HealthzPort: healthz}
	k.supervise(t, argv)
	return k
}

// Supervise runs `nsenter argv...` (argv: nsenter's namespace flags, "--",
// and the kubelet's command line) as systemd runs a kubelet unit with
// Restart=always and RestartSec=1, until the test ends: for nodes whose
// namespaces and kubelet command line are made elsewhere (a test bed's
// node, where the command line is kubeadm's drop-in's). Node is nil; Name
// names it in messages. Port and HealthzPort are unknown (0): the kubelet
// answers in its node's network namespace.
func Supervise(t testing.TB, name string, d *ctrd.Daemon, argv []string) *Kubelet {
	t.Helper()
	k := &Kubelet{Name: name, D: d}
	k.supervise(t, argv)
	return k
}

func (k *Kubelet) supervise(t testing.TB, argv []string) {
	t.Helper()
	if k.Name == "" && k.Node != nil {
		k.Name = k.Node.Name
	}
	dir := t.TempDir()
	k.LogPath, k.PIDFile = filepath.Join(dir, "kubelet.log"), filepath.Join(dir, "kubelet.pid")
	k.quit, k.done = make(chan struct{}), make(chan struct{})
	logf, err := os.OpenFile(k.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(k.done)
		defer logf.Close()
		for {
			k.mu.Lock()
			k.starts++
			fmt.Fprintf(logf, "=== kubelet start %d at %s\n", k.starts, time.Now().UTC().Format(time.RFC3339Nano))
			cmd := exec.Command("nsenter", argv...)
			cmd.Stdout, cmd.Stderr = logf, logf
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
			err := cmd.Start()
			if err == nil {
				k.cmd = cmd
				os.WriteFile(k.PIDFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
			}
			k.mu.Unlock()
			if err != nil {
				fmt.Fprintf(logf, "=== kubelet did not start: %v\n", err)
			} else {
				err = cmd.Wait()
				fmt.Fprintf(logf, "=== kubelet exited: %v\n", err)
			}
			select {
			case <-k.quit:
				return
			case <-time.After(time.Second): // RestartSec
			}
		}
	}()
	t.Cleanup(k.stop)
}

// RestartCommand is a shell line that restarts the kubelet the way
// `systemctl restart kubelet` does here: it stops it, the supervisor
// starts a new one. Like systemctl, it succeeds when the kubelet had
// already exited (a crash-looping kubelet between two starts).
func (k *Kubelet) RestartCommand() string {
	return fmt.Sprintf("kill -TERM $(cat %s) 2>/dev/null; true", k.PIDFile)
}

// Starts is how many times the kubelet has been started.
func (k *Kubelet) Starts() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.starts
}

// Healthy reports whether the kubelet's /healthz answers ok.
func (k *Kubelet) Healthy() bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", k.HealthzPort))
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode == 200 && strings.TrimSpace(string(b)) == "ok"
}

// WaitHealthy waits for /healthz.
func (k *Kubelet) WaitHealthy(ctx context.Context) error {
	for !k.Healthy() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubelet not healthy on 127.0.0.1:%d: %w\n%s", k.HealthzPort, ctx.Err(), k.LogTail(30))
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// Log is everything the kubelet has written.
func (k *Kubelet) Log() string {
	b, _ := os.ReadFile(k.LogPath)
	return string(b)
}

// LastStartLog is what the running (newest) kubelet has written.
func (k *Kubelet) LastStartLog() string {
	l := k.Log()
	if i := strings.LastIndex(l, "=== kubelet start "); i >= 0 {
		return l[i:]
	}
	return l
}

// LogTail is the last n lines of the log.
func (k *Kubelet) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(k.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stop ends the supervisor and the kubelet (before the daemon's cleanup,
// which was registered earlier, so no pod is recreated while it runs).
func (k *Kubelet) stop() {
	close(k.quit)
	k.mu.Lock()
	if k.cmd != nil && k.cmd.Process != nil {
		_ = syscall.Kill(-k.cmd.Process.Pid, syscall.SIGTERM)
	}
	k.mu.Unlock()
	select {
	case <-k.done:
	case <-time.After(10 * time.Second):
		k.mu.Lock()
		if k.cmd != nil && k.cmd.Process != nil {
			_ = syscall.Kill(-k.cmd.Process.Pid, syscall.SIGKILL)
		}
		k.mu.Unlock()
		<-k.done
	}
}
