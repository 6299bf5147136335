// Package sshtest starts a real OpenSSH sshd on loopback for tests: a
// per-test host key, a per-test authorized key for root, and a known_hosts
// file holding the host key, all in the test's temporary directory, which
// is also the sessions' HOME (the machine's root dotfiles are not run).
//
// It needs root (sshd's privilege separation, and logging in as root) and
// /usr/sbin/sshd (Debian's openssh-server, installed by hack/install-deps.sh);
// without either, Start skips the test, naming what is missing.
package sshtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHD is the sshd binary Start runs.
const SSHD = "/usr/sbin/sshd"

// privsepDir is the directory sshd insists on for privilege separation.
const privsepDir = "/run/sshd"

// Server is a running sshd, stopped when the test ends.
type Server struct {
	Addr string // 127.0.0.1:PORT
	Host string // 127.0.0.1
	Port int
	User string // the user IdentityFile logs in as: root

	// HostKey is the server's public host key, and HostKeyLine its
	// known_hosts line ([127.0.0.1]:PORT form).
	HostKey     ssh.PublicKey
	HostKeyLine string
	// KnownHostsFile holds HostKeyLine.
	KnownHostsFile string
	// IdentityFile is an ed25519 private key (OpenSSH format, mode 0600)
	// authorized for User; ClientKey is the same key.
	IdentityFile string
	ClientKey    ed25519.PrivateKey
	// AuthorizedKeysFile is the server's authorized_keys: append a line to
	// authorize another key.
	AuthorizedKeysFile string
	// Dir is the temporary directory holding all of the above.
	Dir string

	cmd  *exec.Cmd
	logs string // sshd's log file
	opts Options
}

// Options place sshd somewhere else than this namespace's loopback: inside
// a test node's namespaces, on the node's own address.
type Options struct {
	// Enter is nsenter's flags for the namespaces sshd runs in (it must
	// include the mount namespace when sshd's privilege separation
	// directory is to be made there).
	Enter []string
	// Host and Port sshd listens on (default 127.0.0.1 and a free port).
	Host string
	Port int
	// Dial reaches Host:Port for the readiness check (default: a dial
	// from this process's namespace).
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// Start starts sshd on a free loopback port and waits until it answers. It
// skips the test when not root or when sshd is not installed.
func Start(t testing.TB) *Server { t.Helper(); return StartWith(t, Options{}) }

// StartWith starts sshd as o says and waits until it answers.
func StartWith(t testing.TB, o Options) *Server {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("sshtest: a real sshd needs root (privilege separation, root login); not root")
	}
	if _, err := os.Stat(SSHD); err != nil {
		t.Skipf("sshtest: %s not installed (openssh-server; hack/install-deps.sh installs it)", SSHD)
	}
	if len(o.Enter) > 0 {
		if out, err := exec.Command("nsenter", append(append(append([]string{}, o.Enter...), "--"), "mkdir", "-p", privsepDir)...).CombinedOutput(); err != nil {
			t.Fatalf("sshtest: creating sshd's privilege separation directory in %v: %v\n%s", o.Enter, err, out)
		}
	} else if err := os.MkdirAll(privsepDir, 0o755); err != nil {
		t.Fatalf("sshtest: creating sshd's privilege separation directory: %v", err)
	}

	dir := t.TempDir()
	s := &Server{Host: "127.0.0.1", User: "root", Dir: dir, opts: o}
	if o.Host != "" {
		s.Host = o.Host
	}

	hostPub, hostKeyFile := writeKey(t, dir, "ssh_host_ed25519_key")
	hostKey, err := ssh.NewPublicKey(hostPub)
	if err != nil {
		t.Fatal(err)
	}
	s.HostKey = hostKey
	clientPub, clientKeyFile := writeKey(t, dir, "id_ed25519")
	s.IdentityFile = clientKeyFile
	s.ClientKey = readKey(t, clientKeyFile)
	clientKey, err := ssh.NewPublicKey(clientPub)
	if err != nil {
		t.Fatal(err)
	}
	s.AuthorizedKeysFile = filepath.Join(dir, "authorized_keys")
	writeFile(t, s.AuthorizedKeysFile, ssh.MarshalAuthorizedKey(clientKey), 0o600)

	// A free port can be taken by someone else between finding it and
	// sshd binding it: try a few.
	for attempt := 1; ; attempt++ {
		s.Port = o.Port
		if s.Port == 0 {
			s.Port = freePort(t)
		}
		s.Addr = net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
		err := s.start(t, hostKeyFile)
		if err == nil {
			break
		}
		if attempt == 5 || o.Port != 0 || !strings.Contains(s.Logs(), "Bind to port") {
			t.Fatalf("sshtest: starting sshd: %v\nsshd output:\n%s", err, s.Logs())
		}
	}

	s.HostKeyLine = knownhosts.Line([]string{knownhosts.Normalize(s.Addr)}, hostKey)
	s.KnownHostsFile = filepath.Join(dir, "known_hosts")
	writeFile(t, s.KnownHostsFile, []byte(s.HostKeyLine+"\n"), 0o600)
	return s
}

// start runs sshd with a config for port s.Port and waits for its banner.
func (s *Server) start(t testing.TB, hostKeyFile string) error {
	config := filepath.Join(s.Dir, fmt.Sprintf("sshd_config.%d", s.Port))
	writeFile(t, config, []byte(strings.Join([]string{
		"Port " + strconv.Itoa(s.Port),
		"ListenAddress " + s.Host,
		"HostKey " + hostKeyFile,
		"PidFile " + filepath.Join(s.Dir, "sshd.pid"),
		"AuthorizedKeysFile " + s.AuthorizedKeysFile,
		"StrictModes no",
		"UsePAM no",
		"PermitRootLogin prohibit-password",
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PrintMotd no",
		"PrintLastLog no",
		"UseDNS no",
		"MaxStartups 200",
		"MaxSessions 64",
		"LogLevel INFO",
		// Sessions run with HOME in the test's directory, not this
		// machine's /root: a command over SSH runs through root's login
		// shell, and bash started by sshd reads ~/.bashrc. The project
		// machine's runs `pyenv init` (2–5 s a session at load
		// averages 5–15): every SSH command of a test paid it, and the
		// cluster benchmarks measured the workstation's dotfiles, not
		// kubecpr. A node's root shell reads no such thing.
		"SetEnv HOME=" + s.Dir,
		"",
	}, "\n")), 0o600)

	// sshd logs to a file, not a pipe: the per-connection processes
	// inherit it, and a pipe would keep exec's Wait waiting for them.
	s.logs = filepath.Join(s.Dir, fmt.Sprintf("sshd.%d.log", s.Port))
	logFile, err := os.OpenFile(s.logs, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(SSHD, "-D", "-e", "-f", config)
	if len(s.opts.Enter) > 0 {
		// nsenter enters the namespaces and execs sshd (no fork without
		// --pid): the process is sshd itself.
		cmd = exec.Command("nsenter", append(append(append([]string{}, s.opts.Enter...), "--", SSHD), "-D", "-e", "-f", config)...)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// stop ends the listener and the per-connection processes it forked
	// (they call setsid, so they are not in its process group): a client a
	// test forgot to close must not keep a session alive. Commands still
	// running in such a session see their channel close.
	stop := func() {
		pids := append(children(cmd.Process.Pid), cmd.Process.Pid)
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGTERM)
		}
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			<-exited
		}
	}

	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("sshd exited: %v", err)
		default:
		}
		if banner(s.opts.Dial, s.Addr) {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("sshd did not answer on %s within 15s", s.Addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.cmd = cmd
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("sshd output:\n%s", s.Logs())
		}
	})
	return nil
}

// Logs returns what sshd has logged so far.
func (s *Server) Logs() string {
	b, _ := os.ReadFile(s.logs)
	return string(b)
}

// children lists the processes whose parent is pid (from /proc).
func children(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so parse after
		// its closing parenthesis.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// banner reports whether an SSH server answers on addr.
func banner(dial func(context.Context, string, string) (net.Conn, error), addr string) bool {
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "SSH-2.0-")
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sshtest: finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// NewKey returns a fresh ed25519 key in OpenSSH private key format, and its
// public half.
func NewKey(t testing.TB) (ed25519.PublicKey, []byte) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return pub, pem.EncodeToMemory(block)
}

func writeKey(t testing.TB, dir, name string) (ed25519.PublicKey, string) {
	pub, pemBytes := NewKey(t)
	path := filepath.Join(dir, name)
	writeFile(t, path, pemBytes, 0o600)
	return pub, path
}

func readKey(t testing.TB, path string) ed25519.PrivateKey {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	switch k := k.(type) {
	case ed25519.PrivateKey:
		return k
	case *ed25519.PrivateKey:
		return *k
	}
	t.Fatalf("sshtest: %s: not an ed25519 key (%T)", path, k)
	return nil
}

func writeFile(t testing.TB, path string, data []byte, mode os.FileMode) {
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
}
