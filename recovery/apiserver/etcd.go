package apiserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kubecpr/kubecpr/recovery/atomicfile"
	"github.com/kubecpr/kubecpr/recovery/node"
)

// etcdMarker in the environment marks the etcd kubecpr started, so a
// later Reap never kills the node's own etcd after a pid was reused.
const etcdMarker = "KUBECPR_RECOVERY_ETCD"

// Etcd is an etcd kubecpr started for the duration of the csr stage,
// because the node's own is down (the kubelet cannot start static pods).
type Etcd struct {
	PID  int
	cmd  *exec.Cmd
	done chan struct{}
	dir  string
}

// etcdHealth asks etcd's /health on its loopback client URL with the
// healthcheck client certificate.
func etcdHealth(ctx context.Context, n *node.Node, pkiDir string, flags map[string]string) error {
	addr := ""
	for _, u := range strings.Split(flags["listen-client-urls"], ",") {
		if pu, err := url.Parse(strings.TrimSpace(u)); err == nil {
			if ip := net.ParseIP(pu.Hostname()); ip != nil && ip.IsLoopback() {
				addr = pu.Host
				break
			}
		}
	}
	if addr == "" {
		addr = "127.0.0.1:2379"
	}
	caPEM, err := n.ReadFile(path.Join(pkiDir, "etcd/ca.crt"))
	if err != nil {
		return err
	}
	certPEM, err := n.ReadFile(path.Join(pkiDir, "etcd/healthcheck-client.crt"))
	if err != nil {
		return err
	}
	keyPEM, err := n.ReadFile(path.Join(pkiDir, "etcd/healthcheck-client.key"))
	if err != nil {
		return err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cl := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/health", nil)
	resp, err := cl.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("etcd /health answered %d", resp.StatusCode)
	}
	return nil
}

// etcdSettle is how long the node's own etcd may go without answering
// before kubecpr calls it down.
var etcdSettle = 30 * time.Second

// waitEtcdHealth asks until etcd answers or d has passed.
func waitEtcdHealth(ctx context.Context, n *node.Node, pkiDir string, flags map[string]string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		err := etcdHealth(ctx, n, pkiDir, flags)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// EnsureEtcd returns nil when the node's etcd answers; otherwise, with a
// binary, it starts etcd from the node's manifest (its flags, its data dir,
// its renewed certificates) and waits for health. The caller stops it.
func EnsureEtcd(ctx context.Context, n *node.Node, binary, stateDir, pkiDir string) (*Etcd, error) {
	if pkiDir == "" {
		pkiDir = node.DefaultPKIDir
	}
	m, err := n.ReadManifest(path.Join(node.ManifestsDir, "etcd.yaml"))
	if err != nil {
		return nil, nil // external etcd: nothing kubecpr can start
	}
	// The kubelet runs etcd: on a loaded node one answer can take longer
	// than a try, and the kubelet may be restarting it after a failed
	// probe. It is down only when it has not answered for etcdSettle.
	if waitEtcdHealth(ctx, n, pkiDir, m.Flags, etcdSettle) == nil {
		return nil, nil
	}
	if binary == "" {
		return nil, fmt.Errorf("the node's etcd does not answer: start it (its certificates are renewed now) or pass --etcd-binary PATH so kubecpr runs it for the duration of the csr stage")
	}
	dir := filepath.Join(stateDir, DirName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var args []string
	for _, a := range m.Command[1:] {
		if k, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(v, "/") && (strings.HasPrefix(v, "/etc/") || strings.HasPrefix(v, "/var/")) {
			a = k + "=" + n.Path(v)
		}
		args = append(args, a)
	}
	logf, err := os.OpenFile(filepath.Join(dir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), etcdMarker+"="+stateDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", binary, err)
	}
	e := &Etcd{PID: cmd.Process.Pid, cmd: cmd, done: make(chan struct{}), dir: dir}
	go func() { cmd.Wait(); logf.Close(); close(e.done) }()
	if err := atomicfile.WriteFile(filepath.Join(dir, "etcd-pid"), []byte(fmt.Sprintf("%d\n", e.PID)), atomicfile.Options{Mode: 0o600}); err != nil {
		e.Stop()
		return nil, err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		if etcdHealth(ctx, n, pkiDir, m.Flags) == nil {
			return e, nil
		}
		select {
		case <-e.done:
			return nil, fmt.Errorf("etcd exited; see %s", filepath.Join(dir, "etcd.log"))
		default:
		}
		if time.Now().After(deadline) {
			e.Stop()
			return nil, fmt.Errorf("etcd started from its manifest did not become healthy within a minute")
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// Stop ends the etcd kubecpr started.
func (e *Etcd) Stop() {
	if e == nil {
		return
	}
	stopGroup(e.PID, e.done, 15*time.Second)
	os.Remove(filepath.Join(e.dir, "etcd-pid"))
	if _, err := os.Stat(filepath.Join(e.dir, "pid")); os.IsNotExist(err) {
		os.RemoveAll(e.dir) // the recovery server is gone too: no credentials left
	}
}
