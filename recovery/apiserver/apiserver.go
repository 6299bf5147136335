// Package apiserver runs kubecpr's temporary recovery API server: the
// node's own kube-apiserver binary with the flags of its static pod
// manifest, bound to 127.0.0.1 on a free port, with a fresh serving
// certificate, etcd client certificate and admin client certificate that
// live for hours (--recovery-ttl), in a 0700 directory under the state dir.
// It never goes through the kubelet, never reconciles the kubernetes
// Service endpoints, and is torn down on success, failure and interrupt —
// and, after a crash, by the next kubecpr start (see Reap).
package apiserver

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubecpr/kubecpr/recovery/atomicfile"
	"github.com/kubecpr/kubecpr/recovery/kube"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/recovery/runtime"
)

// DirName is the recovery server's directory under the state dir.
const DirName = "recovery-server"

// Options for Start.
type Options struct {
	Binary string // kube-apiserver binary (host path); empty: containerd mode
	// CRISocket runs the server in containerd from the image of the
	// kube-apiserver manifest when Binary is empty.
	CRISocket string
	TTL       time.Duration // credential lifetime (default 2h)
	Port      int           // 0: 7443 when free, else any free port; <0: any free port
	Now       time.Time     // the certificates' clock
	StateDir  string        // host path
	PKIDir    string        // node path of the cluster PKI
	Timeout   time.Duration // until /readyz (default 2m)
}

// Server is a running recovery API server.
type Server struct {
	Dir        string
	Port       int
	Kubeconfig string // host path, 0600
	PID        int
	Expires    time.Time
	cmd        *exec.Cmd
	done       chan struct{}
	rt         *runtime.Containerd // containerd mode
	id         string              // its container id in containerd mode
}

// freePort is preferred when it is free (0: 7443), else any free port
// (preferred < 0: any).
func freePort(preferred int) (int, error) {
	if preferred == 0 {
		preferred = 7443
	}
	if preferred > 0 {
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", preferred)); err == nil {
			l.Close()
			return preferred, nil
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

type issued struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func issue(ca *pki.CA, cn string, orgs []string, usage x509.ExtKeyUsage, sans bool, now time.Time, ttl time.Duration) (issued, error) {
	key, err := pki.NewECKey()
	if err != nil {
		return issued{}, err
	}
	serial, err := pki.NewSerial()
	if err != nil {
		return issued{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(ttl), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage}, BasicConstraintsValid: true}
	if sans {
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return issued{}, fmt.Errorf("signing %s with the %s CA: %w", cn, ca.Name, err)
	}
	c, err := x509.ParseCertificate(der)
	return issued{c, key}, err
}

func loadCA(n *node.Node, pkiDir, base, name string) (*pki.CA, error) {
	cb, err := n.ReadFile(path.Join(pkiDir, base+".crt"))
	if err != nil {
		return nil, err
	}
	cert, err := pki.ParseCertificate(cb)
	if err != nil {
		return nil, err
	}
	kb, err := n.ReadFile(path.Join(pkiDir, base+".key"))
	if err != nil {
		return nil, fmt.Errorf("the recovery server needs the %s CA key (%s): %w", name, path.Join(pkiDir, base+".key"), err)
	}
	key, err := pki.ParsePrivateKey(kb)
	if err != nil {
		return nil, err
	}
	return &pki.CA{Name: name, Cert: cert, Key: key}, nil
}

func writePair(dir, name string, is issued) (string, string, error) {
	kp, err := pki.EncodeKey(is.key)
	if err != nil {
		return "", "", err
	}
	crt, key := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := atomicfile.WriteFile(key, kp, atomicfile.Options{Mode: 0o600, ForceMode: true}); err != nil {
		return "", "", err
	}
	return crt, key, atomicfile.WriteFile(crt, pki.EncodeCertificate(is.cert), atomicfile.Options{Mode: 0o644, ForceMode: true})
}

// Start launches the recovery server and waits until it is ready.
func Start(ctx context.Context, n *node.Node, o Options) (*Server, error) {
	for attempt := 1; ; attempt++ {
		s, err := start(ctx, n, o)
		// The port was free when chosen and taken before the server bound
		// it (another recovery server starting at the same moment): choose
		// another, when the port is kubecpr's choice.
		if err == nil || o.Port > 0 || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return s, err
		}
		o.Port = -1
	}
}

func start(ctx context.Context, n *node.Node, o Options) (s *Server, err error) {
	if o.TTL == 0 {
		o.TTL = 2 * time.Hour
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.PKIDir == "" {
		o.PKIDir = node.DefaultPKIDir
	}
	if o.Binary == "" && o.CRISocket == "" {
		return nil, errors.New("no way to run a recovery API server: pass --apiserver-binary PATH, or --cri-socket to run the kube-apiserver image in containerd")
	}
	m, err := n.ReadManifest(path.Join(node.ManifestsDir, "kube-apiserver.yaml"))
	if err != nil {
		return nil, fmt.Errorf("the recovery server takes its flags from the kube-apiserver manifest: %w", err)
	}
	// Callers Reap a previous server (and etcd) before starting: Start must
	// not, or it would kill the etcd EnsureEtcd just started.
	dir := filepath.Join(o.StateDir, DirName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			for _, f := range []string{"serving.crt", "serving.key", "etcd-client.crt", "etcd-client.key", "kubeconfig", "pid"} {
				os.Remove(filepath.Join(dir, f))
			}
		}
	}()
	ca, err := loadCA(n, o.PKIDir, "ca", "ca")
	if err != nil {
		return nil, err
	}
	etcdCA, err := loadCA(n, o.PKIDir, "etcd/ca", "etcd-ca")
	if err != nil {
		return nil, err
	}
	serving, err := issue(ca, "kubecpr-recovery-apiserver", nil, x509.ExtKeyUsageServerAuth, true, o.Now, o.TTL)
	if err != nil {
		return nil, err
	}
	etcdClient, err := issue(etcdCA, "kubecpr-recovery-etcd-client", nil, x509.ExtKeyUsageClientAuth, false, o.Now, o.TTL)
	if err != nil {
		return nil, err
	}
	admin, err := issue(ca, "kubecpr-recovery-admin", []string{"system:masters"}, x509.ExtKeyUsageClientAuth, false, o.Now, o.TTL)
	if err != nil {
		return nil, err
	}
	servCrt, servKey, err := writePair(dir, "serving", serving)
	if err != nil {
		return nil, err
	}
	etcdCrt, etcdKey, err := writePair(dir, "etcd-client", etcdClient)
	if err != nil {
		return nil, err
	}
	port, err := freePort(o.Port)
	if err != nil {
		return nil, err
	}
	adminKey, _ := pki.EncodeKey(admin.key)
	kc := clientcmdapi.NewConfig()
	kc.Clusters["recovery"] = &clientcmdapi.Cluster{Server: fmt.Sprintf("https://127.0.0.1:%d", port), CertificateAuthorityData: pki.EncodeCertificate(ca.Cert)}
	kc.AuthInfos["kubecpr-recovery-admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: pki.EncodeCertificate(admin.cert), ClientKeyData: adminKey}
	kc.Contexts["recovery"] = &clientcmdapi.Context{Cluster: "recovery", AuthInfo: "kubecpr-recovery-admin"}
	kc.CurrentContext = "recovery"
	kcBytes, err := clientcmd.Write(*kc)
	if err != nil {
		return nil, err
	}
	kcPath := filepath.Join(dir, "kubeconfig")
	if err := atomicfile.WriteFile(kcPath, kcBytes, atomicfile.Options{Mode: 0o600, ForceMode: true}); err != nil {
		return nil, err
	}

	override := map[string]string{
		"secure-port": strconv.Itoa(port), "bind-address": "127.0.0.1", "advertise-address": "127.0.0.1",
		"tls-cert-file": servCrt, "tls-private-key-file": servKey,
		"etcd-certfile": etcdCrt, "etcd-keyfile": etcdKey,
		// never rewrite the kubernetes Service endpoints to this loopback server
		"endpoint-reconciler-type": "none",
	}
	args := []string{}
	for _, a := range m.Command[1:] {
		k, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !ok || !strings.HasPrefix(a, "--") {
			args = append(args, a)
			continue
		}
		if nv, ok := override[k]; ok {
			v = nv
			delete(override, k)
		} else if o.Binary != "" && strings.HasPrefix(v, "/") && (strings.HasPrefix(v, "/etc/") || strings.HasPrefix(v, "/var/")) {
			v = n.Path(v) // node paths, under --root (a container sees them mounted at their node paths)
		}
		args = append(args, "--"+k+"="+v)
	}
	for k, v := range override {
		args = append(args, "--"+k+"="+v)
	}
	logf, err := os.OpenFile(filepath.Join(dir, "apiserver.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	if o.Binary == "" {
		logf.Close()
		return startContainer(ctx, n, o, m.Image, args, dir, port, kcPath)
	}
	cmd := exec.Command(o.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", o.Binary, err)
	}
	s = &Server{Dir: dir, Port: port, Kubeconfig: kcPath, PID: cmd.Process.Pid, Expires: o.Now.Add(o.TTL), cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(s.done) }()
	pidInfo := fmt.Sprintf("%d %d %s\n", s.PID, port, s.Expires.UTC().Format(time.RFC3339))
	if err := atomicfile.WriteFile(filepath.Join(dir, "pid"), []byte(pidInfo), atomicfile.Options{Mode: 0o600}); err != nil {
		s.Stop()
		return nil, err
	}
	if err := s.waitReady(ctx, o.Timeout); err != nil {
		tail := s.LogTail(15)
		s.Stop()
		return nil, fmt.Errorf("the recovery API server did not become ready: %v\nlast lines of its log:\n%s", err, tail)
	}
	return s, nil
}

// Client returns a client with the recovery admin credentials.
func (s *Server) Client() (*kube.Client, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 30 * time.Second
	cfg.QPS, cfg.Burst = 200, 400
	return kube.New(cfg)
}

func (s *Server) waitReady(ctx context.Context, timeout time.Duration) error {
	cs, err := s.Client()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if s.rt != nil && !s.rt.Running(ctx, s.id) {
			return errors.New("the container exited")
		}
		select {
		case <-s.done:
			return errors.New("the process exited")
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		b, err := cs.Readyz(ctx)
		if err == nil && strings.TrimSpace(string(b)) == "ok" {
			return nil
		}
		last = err
		time.Sleep(300 * time.Millisecond)
	}
	return fmt.Errorf("timed out after %s (last: %v)", timeout, last)
}

// LogTail returns the last lines of the server's log.
func (s *Server) LogTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "apiserver.log"))
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// Stop tears the server down: SIGTERM to its process group, SIGKILL after
// 10 s, then its credentials are deleted. Idempotent.
func (s *Server) Stop() error {
	if s == nil {
		return nil
	}
	if s.rt != nil {
		ctx := context.Background()
		_ = s.rt.Stop(ctx, s.id, 10*time.Second)
		_ = s.rt.Remove(ctx, s.id)
		_ = s.rt.Close()
		s.rt = nil
		close(s.done)
	}
	stopGroup(s.PID, s.done, 10*time.Second)
	for i := 0; i < 50 && listening(s.Port); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	// The directory goes unless an etcd kubecpr started still records itself there.
	for _, f := range []string{"serving.crt", "serving.key", "etcd-client.crt", "etcd-client.key", "kubeconfig", "pid", "apiserver.log"} {
		os.Remove(filepath.Join(s.Dir, f))
	}
	if _, err := os.Stat(filepath.Join(s.Dir, "etcd-pid")); err == nil {
		return nil
	}
	return os.RemoveAll(s.Dir)
}

// stopGroup ends a child's process group: SIGTERM, SIGKILL after grace,
// and returns once done (closed when the child was waited for) is closed.
func stopGroup(pid int, done <-chan struct{}, grace time.Duration) {
	select {
	case <-done:
		return
	default:
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-done
	}
}

// Reap tears down a recovery server left by a kubecpr that died (its pid
// file is still there): the process group is killed if it is still the
// recovery server, and the credentials are deleted.
func Reap(stateDir string) error {
	dir := filepath.Join(stateDir, DirName)
	if b, err := os.ReadFile(filepath.Join(dir, "etcd-pid")); err == nil {
		var epid int
		fmt.Sscan(string(b), &epid)
		if epid > 0 && hasEnv(epid, etcdMarker+"="+stateDir) {
			_ = syscall.Kill(-epid, syscall.SIGTERM)
			for i := 0; i < 100 && alive(epid); i++ {
				time.Sleep(100 * time.Millisecond)
			}
			_ = syscall.Kill(-epid, syscall.SIGKILL)
		}
		os.Remove(filepath.Join(dir, "etcd-pid"))
	}
	b, err := os.ReadFile(filepath.Join(dir, "pid"))
	if errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(dir); err == nil {
			return os.RemoveAll(dir)
		}
		return nil
	}
	if err != nil {
		return err
	}
	var pid, port int
	var expires, socket string
	fmt.Sscan(string(b), &pid, &port, &expires, &socket)
	if socket != "" {
		if rt, err := runtime.NewContainerd(socket, 10*time.Second); err == nil {
			_ = rt.Stop(context.Background(), containerID(dir), time.Second)
			_ = rt.Remove(context.Background(), containerID(dir))
			rt.Close()
		}
	} else if pid > 0 && isRecoveryServer(pid, dir) {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		// A killed multi-threaded process shows as a zombie before its last
		// thread has closed its files: wait for the port too.
		for i := 0; i < 100 && (alive(pid) || listening(port)); i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	return os.RemoveAll(dir)
}

func listening(port int) bool {
	if port == 0 {
		return false
	}
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// hasEnv reports whether pid's environment holds kv.
func hasEnv(pid int, kv string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	for _, e := range strings.Split(string(b), "\x00") {
		if e == kv {
			return true
		}
	}
	return false
}

func isRecoveryServer(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), dir)
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}

// Running reports the recorded recovery server, if one is recorded.
func Running(stateDir string) (pid, port int, expires string, ok bool) {
	b, err := os.ReadFile(filepath.Join(stateDir, DirName, "pid"))
	if err != nil {
		return 0, 0, "", false
	}
	fmt.Sscan(string(b), &pid, &port, &expires)
	return pid, port, expires, pid > 0 && alive(pid)
}

// ContainerID is the prefix of the recovery server's container id in
// containerd mode.
const ContainerID = "kubecpr-recovery-apiserver"

// containerID names the recovery server of the state whose server
// directory is dir: one id per state directory, so a leftover of a killed
// run is found and removed by the next run on the same state, and two
// trees on one host (rehearsals, tests) never claim the same id. Without
// runtime options a task's runc state lives under the host's
// /run/containerd/runc/<namespace> whichever containerd started it, so a
// shared id collides there ("container with given ID already exists").
func containerID(dir string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(dir)))
	return ContainerID + "-" + hex.EncodeToString(sum[:4])
}

// startContainer runs the recovery server from the kube-apiserver
// manifest's image in containerd (namespace k8s.io), host network, the
// node's /etc/kubernetes mounted read-only at its node path, its own
// credentials read-only at their host path, and kubecpr's labels — not the
// kubelet's, so the kubelet leaves it alone.
func startContainer(ctx context.Context, n *node.Node, o Options, image string, args []string, dir string, port int, kcPath string) (*Server, error) {
	rt, err := runtime.NewContainerd(o.CRISocket, 10*time.Second)
	if err != nil {
		return nil, err
	}
	id := containerID(dir)
	_ = rt.Stop(ctx, id, time.Second)
	_ = rt.Remove(ctx, id)
	pid, err := rt.Run(ctx, runtime.RunSpec{ID: id, Image: image, Args: append([]string{"kube-apiserver"}, args...),
		Labels:  map[string]string{"io.kubecpr.role": "recovery-apiserver", "io.kubecpr.expires": o.Now.Add(o.TTL).UTC().Format(time.RFC3339)},
		Mounts:  []runtime.Mount{{Source: n.Path(node.KubernetesDir), Destination: node.KubernetesDir, ReadOnly: true}, {Source: dir, Destination: dir, ReadOnly: true}},
		LogPath: filepath.Join(dir, "apiserver.log")})
	if err != nil {
		rt.Close()
		return nil, err
	}
	s := &Server{Dir: dir, Port: port, Kubeconfig: kcPath, PID: pid, Expires: o.Now.Add(o.TTL), done: make(chan struct{}), rt: rt, id: id}
	info := fmt.Sprintf("%d %d %s %s\n", pid, port, s.Expires.UTC().Format(time.RFC3339), strings.TrimPrefix(o.CRISocket, "unix://"))
	if err := atomicfile.WriteFile(filepath.Join(dir, "pid"), []byte(info), atomicfile.Options{Mode: 0o600}); err != nil {
		s.Stop()
		return nil, err
	}
	if err := s.waitReady(ctx, o.Timeout); err != nil {
		tail := s.LogTail(15)
		s.Stop()
		return nil, fmt.Errorf("the recovery API server container did not become ready: %v\nlast lines of its log:\n%s", err, tail)
	}
	return s, nil
}
