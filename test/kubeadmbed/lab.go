package kubeadmbed

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The lab's private range: the bridge has .1, node i (from 1) has .10+i.
// Used only inside the lab's network namespace, which has no interface to
// the host.
const (
	labPrefix = "10.250.0."
	labMask   = "/24"
	bridge    = "kbbr0"
)

var labNet = func() *net.IPNet { _, n, _ := net.ParseCIDR(labPrefix + "0" + labMask); return n }()

// cleanEnv is the environment of every command run in the lab or a node:
// a fixed PATH, HOME, and nothing else (no proxy variable reaches kubeadm).
var cleanEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C"}

// holder is a process that holds namespaces: unshare's new namespaces,
// then a shell script (mounts, addresses), then `sleep infinity` in the
// same process. Every process of a node enters its namespaces through
// /proc/PID/ns/*; they end when the holder and everything that entered
// them have exited.
type holder struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func (h *holder) pid() int              { return h.cmd.Process.Pid }
func (h *holder) ns(kind string) string { return fmt.Sprintf("/proc/%d/ns/%s", h.pid(), kind) }

// startHolder runs `unshare FLAGS -- sh -c SCRIPT sh sleep infinity` and
// waits until the script has exec'ed sleep. It is killed in cleanup.
func startHolder(t testing.TB, name, logFile string, unshareFlags []string, script string) *holder {
	t.Helper()
	args := append(append([]string{}, unshareFlags...), "--", "sh", "-c", script, "sh", "sleep", "infinity")
	h := &holder{name: name, cmd: exec.Command("unshare", args...), done: make(chan struct{}), log: logFile}
	h.cmd.Env = cleanEnv
	f, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	h.cmd.Stdout, h.cmd.Stderr = f, f
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("kubeadmbed: %s: unshare: %v", name, err)
	}
	go func() { h.cmd.Wait(); f.Close(); close(h.done) }()
	t.Cleanup(h.stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", h.pid()))
		if strings.HasPrefix(string(b), "sleep\x00") {
			return h
		}
		select {
		case <-h.done:
			out, _ := os.ReadFile(logFile)
			t.Fatalf("kubeadmbed: %s: the namespace holder exited (%v):\n%s", name, h.cmd.ProcessState, out)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubeadmbed: %s: the namespace holder did not get ready in 20 s", name)
		}
	}
}

func (h *holder) stop() {
	select {
	case <-h.done:
		return
	default:
	}
	_ = syscall.Kill(h.pid(), syscall.SIGKILL)
	<-h.done
}

// run runs argv with nsenter's namespace flags ns, the clean environment,
// and returns its combined output.
func run(ctx context.Context, ns []string, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append(append(append([]string{}, ns...), "--"), argv...)...)
	cmd.Env = cleanEnv
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out), nil
}

// lab is the lab's network namespace: loopback, and a bridge that every
// node's veth joins. No interface of it, and no route, leads to the host.
type lab struct {
	h  *holder
	fd int // an open /proc/PID/ns/net of the lab, for Dial
}

const labScript = `set -e
ip link set lo up
ip link add ` + bridge + ` type bridge
ip addr add ` + labPrefix + "1" + labMask + ` dev ` + bridge + `
ip link set ` + bridge + ` up
exec "$@"
`

func startLab(t testing.TB, dir string) *lab {
	t.Helper()
	l := &lab{h: startHolder(t, "lab", dir+"/lab.log", []string{"--net"}, labScript)}
	fd, err := unix.Open(l.h.ns("net"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("kubeadmbed: opening the lab's network namespace: %v", err)
	}
	l.fd = fd
	t.Cleanup(func() { unix.Close(fd) })
	return l
}

// nsenter flags that enter the lab's network namespace only.
func (l *lab) enter() []string { return []string{"--net=" + l.h.ns("net")} }

// plug connects the node holder h to the bridge: a veth pair made in the
// lab (never in the host's namespace), one end moved into the node as eth0
// with addr, the other enslaved to the bridge.
func (l *lab) plug(ctx context.Context, h *holder, index int, addr string) error {
	veth := "kbv" + strconv.Itoa(index)
	if _, err := run(ctx, l.enter(), "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", strconv.Itoa(h.pid())); err != nil {
		return err
	}
	if _, err := run(ctx, l.enter(), "ip", "link", "set", veth, "master", bridge, "up"); err != nil {
		return err
	}
	node := []string{"--net=" + h.ns("net")}
	if _, err := run(ctx, node, "ip", "addr", "add", addr+labMask, "dev", "eth0"); err != nil {
		return err
	}
	_, err := run(ctx, node, "ip", "link", "set", "eth0", "up")
	return err
}

// Dial opens a connection from inside the lab's network namespace, to a
// lab address only: the socket is made on a thread moved into the lab for
// the call (a socket belongs to the namespace it was made in), then the
// thread goes back. Anything but a lab address is refused before a packet
// is sent.
func (l *lab) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(host)
	if ip == nil || !labNet.Contains(ip) {
		return nil, fmt.Errorf("kubeadmbed: %s is not a lab address: refused", address)
	}
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(l.fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("entering the lab: %w", err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, address)
		// The thread goes back; if it cannot, it stays locked and dies
		// with this goroutine rather than serve others in the lab.
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
