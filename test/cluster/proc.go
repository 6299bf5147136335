package cluster

import (
	"context"
	"crypto/tls"
	"errors"
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

	corev1 "k8s.io/api/core/v1"
)

// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
const StopGrace = 10 * time.Second

// Proc is a control-plane program running as a child process in its own
// process group, its stdout and stderr in LogPath.
type Proc struct {
	Name    string
	Cmd     *exec.Cmd
	LogPath string
	Started time.Time

	logOffset int64 // where this run's output starts in LogPath
	done      chan struct{}
	waitErr   error
	stopOnce  sync.Once
	stopErr   error
}

// Stop ends the process group: SIGTERM, wait up to StopGrace, then SIGKILL;
// whatever is left in the group is killed too. Idempotent; registered with
// t.Cleanup when the process starts. It returns an error only if the
// process had already failed on its own (its exit status) or would not die.
func (p *Proc) Stop() error {
	if p == nil || p.Cmd == nil || p.Cmd.Process == nil {
		return nil
	}
	p.stopOnce.Do(func() {
		pgid := p.Cmd.Process.Pid
		select {
		case <-p.done:
			p.stopErr = p.waitErr
			if p.stopErr != nil {
				p.stopErr = fmt.Errorf("%s had exited on its own: %w", p.Name, p.stopErr)
			}
		default:
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(StopGrace):
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				select {
				case <-p.done:
				case <-time.After(10 * time.Second):
					p.stopErr = fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, pgid)
				}
			}
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL) // stragglers in the group; ESRCH when none
	})
	return p.stopErr
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

// Done is closed when the process has ended.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's exit error once it has ended (nil while running).
func (p *Proc) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.waitErr
}

// Log returns this run's output (a log file may hold earlier runs).
func (p *Proc) Log() string {
	f, err := os.Open(p.LogPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(p.logOffset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// LogTail returns the last n lines of this run's output.
func (p *Proc) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Command returns the command line of a static pod manifest as the harness
// runs it: node paths (/etc/kubernetes/..., /var/lib/...) moved under Root,
// everything else exactly as kubeadm wrote it.
func (n *Node) Command(t testing.TB, comp string) []string {
	t.Helper()
	argv := n.Manifest(t, comp)
	for i := 1; i < len(argv); i++ {
		k, v, ok := strings.Cut(argv[i], "=")
		if !ok {
			continue
		}
		for _, prefix := range []string{"/etc/kubernetes/", "/var/lib/"} {
			if strings.HasPrefix(v, prefix) {
				argv[i] = k + "=" + n.Path(v)
				break
			}
		}
	}
	return argv
}

// start runs a manifest's command as a process group, logging to
// Root/var/log/<comp>.log.
func (n *Node) start(t testing.TB, comp string, extra ...string) *Proc {
	t.Helper()
	argv := append(n.Command(t, comp), extra...)
	logPath := n.Path("/var/log/" + comp + ".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	off, _ := logf.Seek(0, io.SeekEnd)
	cmd := exec.Command(filepath.Join(n.Bin, argv[0]), argv[1:]...)
	cmd.Dir = n.Root
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("starting %s: %v", comp, err)
	}
	p := &Proc{Name: comp, Cmd: cmd, LogPath: logPath, Started: time.Now(), logOffset: off, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() { _ = p.Stop() })
	n.procMu.Lock()
	if n.procs == nil {
		n.procs = map[string]*Proc{}
	}
	n.procs[comp] = p
	n.procMu.Unlock()
	return p
}

// proc is the newest process started for a component (nil if none).
func (n *Node) proc(comp string) *Proc {
	n.procMu.Lock()
	defer n.procMu.Unlock()
	return n.procs[comp]
}

// StartEtcd runs etcd from its manifest (data dir Root/var/lib/etcd) and
// waits, up to 30 s, until the manifest's readiness probe (GET /readyz on
// the metrics port, plain HTTP on 127.0.0.1) answers 200. etcd with
// expired certificates still gets ready: the probe uses no TLS.
func (n *Node) StartEtcd(t testing.TB) *Proc {
	t.Helper()
	if err := os.MkdirAll(n.Path("/var/lib/etcd"), 0o700); err != nil {
		t.Fatal(err)
	}
	p := n.start(t, "etcd")
	if err := n.waitProbe(p, 30*time.Second); err != nil {
		t.Fatalf("etcd did not become ready: %v\n%s", err, p.LogTail(20))
	}
	t.Logf("cluster: etcd ready in %s", time.Since(p.Started).Round(time.Millisecond))
	return p
}

// StartAPIServer runs kube-apiserver from its manifest and waits, up to
// 30 s, until its port accepts connections — not for readiness, because
// an apiserver on expired certificates never gets ready; use
// WaitAPIServer for that.
func (n *Node) StartAPIServer(t testing.TB) *Proc {
	t.Helper()
	p := n.start(t, "kube-apiserver")
	addr := net.JoinHostPort(n.addr(), strconv.Itoa(n.APIServerPort))
	if err := waitFor(30*time.Second, p, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}); err != nil {
		t.Fatalf("kube-apiserver did not listen on %s: %v\n%s", addr, err, p.LogTail(30))
	}
	t.Logf("cluster: kube-apiserver listening in %s", time.Since(p.Started).Round(time.Millisecond))
	return p
}

// StartControllerManager runs kube-controller-manager from its manifest
// (its own secure port, see Node.ControllerManagerPort) and waits, up to
// 30 s, for the manifest's probe (GET /healthz over HTTPS on 127.0.0.1).
// Start the apiserver first.
//
// kube-controller-manager creates its flex volume directory when missing
// (default /usr/libexec/kubernetes/kubelet-plugins/volume/exec, the
// manifest's hostPath): the harness points it under Root so the host is
// left alone.
func (n *Node) StartControllerManager(t testing.TB) *Proc {
	t.Helper()
	return n.startProbed(t, "kube-controller-manager",
		"--flex-volume-plugin-dir="+n.Path("/usr/libexec/kubernetes/kubelet-plugins/volume/exec"))
}

// StartScheduler runs kube-scheduler from its manifest (its own secure
// port, see Node.SchedulerPort) and waits, up to 30 s, for the manifest's
// probe (GET /healthz over HTTPS on 127.0.0.1). Start the apiserver first.
func (n *Node) StartScheduler(t testing.TB) *Proc {
	t.Helper()
	return n.startProbed(t, "kube-scheduler")
}

func (n *Node) startProbed(t testing.TB, comp string, extra ...string) *Proc {
	t.Helper()
	p := n.start(t, comp, extra...)
	if err := n.waitProbe(p, 30*time.Second); err != nil {
		t.Fatalf("%s did not become healthy: %v\n%s", comp, err, p.LogTail(30))
	}
	t.Logf("cluster: %s healthy in %s", comp, time.Since(p.Started).Round(time.Millisecond))
	return p
}

// waitProbe polls the HTTP probe of p's manifest (readiness, else startup,
// else liveness) the way the kubelet would: 127.0.0.1, TLS unverified.
func (n *Node) waitProbe(p *Proc, timeout time.Duration) error {
	pod, err := n.Pod(p.Name)
	if err != nil {
		return err
	}
	c := pod.Spec.Containers[0]
	var get *corev1.HTTPGetAction
	for _, pr := range []*corev1.Probe{c.ReadinessProbe, c.StartupProbe, c.LivenessProbe} {
		if pr != nil && pr.HTTPGet != nil {
			get = pr.HTTPGet
			break
		}
	}
	if get == nil {
		return fmt.Errorf("%s manifest has no HTTP probe", p.Name)
	}
	url := fmt.Sprintf("%s://%s:%s%s", strings.ToLower(string(get.Scheme)), get.Host, get.Port.String(), get.Path)
	if ip := net.ParseIP(get.Host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s probe %s is not on loopback", p.Name, url)
	}
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		Proxy: nil, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	var last string
	err = waitFor(timeout, p, func() bool {
		resp, err := hc.Get(url)
		if err != nil {
			last = err.Error()
			return false
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		last = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		return resp.StatusCode == http.StatusOK
	})
	if err != nil {
		return fmt.Errorf("%s: %v (last: %s)", url, err, last)
	}
	return nil
}

func waitFor(timeout time.Duration, p *Proc, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("%s exited: %v", p.Name, p.waitErr)
		}
		if ok() {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("timed out after %s", timeout)
}

// Etcdctl runs the real etcdctl against the node's etcd with the
// healthcheck-client certificate (as kubeadm's tooling does), e.g.
// Etcdctl(t, "endpoint", "health"). Dial timeout 2 s, command timeout 5 s.
func (n *Node) Etcdctl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	base := []string{
		fmt.Sprintf("--endpoints=https://%s:%d", n.addr(), n.EtcdClientPort),
		"--cacert=" + n.Path("/etc/kubernetes/pki/etcd/ca.crt"),
		"--cert=" + n.Path("/etc/kubernetes/pki/etcd/healthcheck-client.crt"),
		"--key=" + n.Path("/etc/kubernetes/pki/etcd/healthcheck-client.key"),
		"--dial-timeout=2s", "--command-timeout=5s",
	}
	cmd := exec.CommandContext(ctx, filepath.Join(n.Bin, "etcdctl"), append(base, args...)...)
	cmd.Env = append(childEnv(), "ETCDCTL_API=3")
	out, err := cmd.CombinedOutput()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("etcdctl %v: %w", args, ctx.Err())
	}
	return string(out), err
}
