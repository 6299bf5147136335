package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/recovery/runtime"
	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/ctrd"
	"github.com/kubecpr/kubecpr/test/fixture"
	"github.com/kubecpr/kubecpr/test/kubecprbin"
	realkubelet "github.com/kubecpr/kubecpr/test/kubelet"
	"github.com/kubecpr/kubecpr/test/treesnap"
)

// kubeletNode is a kubeadm node whose control plane the real kubelet runs
// as static pods in a real containerd.
type kubeletNode struct {
	*cluster.Node
	d *ctrd.Daemon
	k *realkubelet.Kubelet
}

func startKubeletNode(t *testing.T) *kubeletNode {
	t.Helper()
	n := cluster.Kubeadm(t, cluster.Options{KubeletConfig: true})
	d := ctrd.StartWith(t, ctrd.Options{Overlays: realkubelet.Overlays, Binds: realkubelet.Binds(t, n, t.TempDir())})
	port, healthz := realkubelet.Configure(t, n, d.Socket)
	importImages(t, d, append(controlPlaneImages(t, n), realkubelet.PauseImage(t, ctrd.DefaultSandboxImage))...)
	k := realkubelet.Start(t, n, d, port, healthz)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := k.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx, t, "/etc/kubernetes/super-admin.conf", nil); err != nil {
		t.Fatalf("the kubelet's static pods: apiserver not ready: %v\nkubelet:\n%s", err, k.LogTail(60))
	}
	if err := n.GrantClusterAdmins(ctx, t); err != nil {
		t.Fatal(err)
	}
	return &kubeletNode{Node: n, d: d, k: k}
}

// running is the IDs of the running control-plane containers, by name.
func (kn *kubeletNode) running(t *testing.T) map[string]string {
	t.Helper()
	rt, err := runtime.NewContainerd(kn.d.Socket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	cs, err := rt.ControlPlane(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, c := range cs {
		if c.Running {
			out[c.Name] = c.ID
		}
	}
	return out
}

// expire re-signs every leaf (kubeconfigs and the kubelet's client
// certificate included) into the past, restarts the kubelet, and stops
// every control-plane container so the real kubelet recreates each on the
// expired files: the node fails like production.
func (kn *kubeletNode) expire(t *testing.T) {
	t.Helper()
	w := fixture.Window{NotBefore: time.Now().AddDate(-1, 0, -2), NotAfter: time.Now().AddDate(0, 0, -2)}
	if err := fixture.Resign(kn.Root, w, nil); err != nil {
		t.Fatal(err)
	}
	before := kn.running(t)
	starts := kn.k.Starts()
	if out, err := exec.Command("sh", "-c", kn.k.RestartCommand()).CombinedOutput(); err != nil {
		t.Fatalf("restarting the kubelet: %v %s", err, out)
	}
	rt, err := runtime.NewContainerd(kn.d.Socket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	for _, id := range before {
		if err := rt.Stop(context.Background(), id, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		now := kn.running(t)
		fresh := 0
		for _, comp := range components {
			if id := now[comp]; id != "" && id != before[comp] {
				fresh++
			}
		}
		if fresh == len(components) && kn.k.Starts() > starts {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kubelet did not recreate the control plane on the expired files: %v (was %v)\n%s", now, before, kn.k.LogTail(40))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// The whole recovery with the real kubelet running the control plane as
// static pods in real containerd: every leaf and the kubelet's own client
// certificate expired, the API refuses clients and the kubelet cannot
// authenticate; `kubecpr run` renews, restarts the kubelet (through the
// restart command, as systemctl would) and stops each component's
// container, the real kubelet recreates each from its manifest, and the
// new certificates are served on the wire. The kubelet itself is back on
// its renewed credential: it renews its node lease again.
func TestRealKubeletRecovery(t *testing.T) {
	t.Parallel()
	kn := startKubeletNode(t)
	cs := kn.Client(t, "/etc/kubernetes/admin.conf")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// the kubelet made the mirror pods: it is the real one, talking to the API
	for _, comp := range components {
		name := comp + "-" + kn.Name
		for {
			_, err := cs.CoreV1().Pods("kube-system").Get(ctx, name, metav1.GetOptions{})
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("mirror pod %s: %v\n%s", name, err, kn.k.LogTail(60))
			}
			time.Sleep(500 * time.Millisecond)
		}
	}

	kn.expire(t)
	// The real symptoms: the API refuses clients, and the kubelet's own log
	// says its client certificate expired. (What it says of the apiserver
	// depends on timing: `x509: certificate has expired` while the expired
	// apiserver serves, `connection refused` while it restarts, as it does
	// when it cannot reach etcd on an expired client certificate.)
	symptoms := []string{"Current certificate is expired"}
	deadline := time.Now().Add(time.Minute)
	for {
		last, seen := kn.k.LastStartLog(), 0
		for _, s := range symptoms {
			if strings.Contains(last, s) {
				seen++
			}
		}
		if seen == len(symptoms) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kubelet on expired files does not log %q:\n%s", symptoms, kn.k.LogTail(40))
		}
		time.Sleep(500 * time.Millisecond)
	}
	apiErr := func() error {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := kn.ListNamespaces(c, t, "/etc/kubernetes/admin.conf")
		return err
	}()
	if apiErr == nil {
		t.Fatal("the expired control plane still answers")
	}
	t.Logf("BEFORE: client-go with admin.conf: %v", apiErr)
	for _, l := range strings.Split(kn.k.LastStartLog(), "\n") {
		if strings.Contains(l, symptoms[0]) {
			t.Logf("BEFORE: the kubelet logs: %s", l)
			break
		}
	}
	// kubecpr diagnose reads those lines from the real kubelet's log.
	logFile := filepath.Join(t.TempDir(), "kubelet.log")
	if err := os.WriteFile(logFile, []byte(kn.k.LastStartLog()), 0o600); err != nil {
		t.Fatal(err)
	}
	dg := kubecprbin.Run(t, nil, "--root", kn.Root, "-o", "json", "diagnose", "--offline", "--kubelet-log", logFile)
	if dg.Code != 2 {
		t.Errorf("diagnose: exit %d, want 2\n%s", dg.Code, dg.Stderr)
	}
	for _, id := range []string{"kubelet-kubelet-rotation-expired", "certs-expired"} {
		if !strings.Contains(dg.Stdout, `"`+id+`"`) {
			t.Errorf("diagnose on the real kubelet's log lacks symptom %s:\n%s", id, dg.Stdout)
		}
	}

	start := time.Now()
	starts := kn.k.Starts()
	r := kubecprbin.Run(t, nil, append([]string{"--root", kn.Root, "run"}, kn.liveArgs("containerd")...)...)
	if r.Code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s\nkubelet:\n%s", r.Code, r.Stdout, r.Stderr, kn.k.LogTail(60))
	}
	t.Logf("kubecpr run with the real kubelet: %s\n%s", time.Since(start).Round(time.Millisecond), r.Stdout)
	if kn.k.Starts() <= starts {
		t.Error("kubecpr did not restart the kubelet")
	}
	if !strings.Contains(r.Stdout, "renew kubelet-client-current.pem") || !strings.Contains(r.Stdout, "new ECDSA P-256 key") {
		t.Errorf("the run does not report the kubelet client renewal with its new key:\n%s", r.Stdout)
	}
	kn.assertRecovered(ctx, t)
	if ns, err := kn.ListNamespaces(ctx, t, "/etc/kubernetes/admin.conf"); err == nil {
		served, _ := cluster.ServedCertificate(kn.APIServerPort)
		t.Logf("AFTER: client-go with the new admin.conf lists namespaces %v; kube-apiserver serves serial %s, valid until %s; the kubelet renews its node lease",
			ns, served.SerialNumber, served.NotAfter.UTC().Format(time.RFC3339))
	}
}

func (kn *kubeletNode) liveArgs(method string) []string {
	return []string{"--cri-socket", kn.d.Socket, "--restart-method", method,
		"--kubelet-restart-command", kn.k.RestartCommand(), "--component-timeout", "5m", "--manifest-wait", "5s"}
}

// assertRecovered: client-go works with the new admin.conf; the apiserver
// and etcd serve the certificates on disk; all four manifests are in
// place; the controller manager, the scheduler and the kubelet renew their
// leases (each authenticates with its new certificate); the kubelet's
// client certificate is an ECDSA P-256 system:node:<name> chained to the
// CA, and the running kubelet's certificate manager took it.
func (kn *kubeletNode) assertRecovered(ctx context.Context, t *testing.T) {
	t.Helper()
	// The real kubelet may still act on a static pod manifest kubecpr
	// moved out and back (the manifests method with a short
	// --manifest-wait, on a loaded machine it notices the removal late and
	// recreates the pod once more): give the API up to a minute to answer
	// before the checks, and say so when it needed it.
	start := time.Now()
	for {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := kn.ListNamespaces(wctx, t, "/etc/kubernetes/admin.conf")
		cancel()
		if err == nil {
			break
		}
		if time.Since(start) > time.Minute {
			t.Fatalf("the API does not answer with the new admin.conf a minute after the run: %v\nkubelet:\n%s", err, kn.k.LogTail(40))
		}
		time.Sleep(time.Second)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Logf("the API answered %s after the run ended (a static pod the kubelet restarted once more, or a loaded machine)", d.Round(time.Second))
	}
	assertServesDiskCerts(ctx, t, kn.Node)
	cs := kn.Client(t, "/etc/kubernetes/admin.conf")
	assertLeasesRenewed(ctx, t, cs, "kube-system", "kube-controller-manager", "kube-scheduler")
	assertLeasesRenewed(ctx, t, cs, "kube-node-lease", kn.Name)

	kc, err := fixture.ReadCert(kn.kubeletClientPEM(t))
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := fixture.ReadCert(kn.Path("/etc/kubernetes/pki/ca.crt"))
	if _, ok := kc.PublicKey.(*ecdsa.PublicKey); !ok || kc.Subject.CommonName != "system:node:"+kn.Name ||
		len(kc.Subject.Organization) != 1 || kc.Subject.Organization[0] != "system:nodes" || kc.CheckSignatureFrom(ca) != nil || !time.Now().Before(kc.NotAfter) {
		t.Errorf("kubelet client certificate: key %T, subject %s, until %s, chains to ca: %v", kc.PublicKey, kc.Subject, kc.NotAfter, kc.CheckSignatureFrom(ca))
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		last := kn.k.LastStartLog()
		if strings.Contains(last, "Waiting for next certificate rotation") && !strings.Contains(last, "Current certificate is expired") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted kubelet did not take its renewed certificate:\n%s", kn.k.LogTail(40))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// kubeletClientPEM resolves kubelet-client-current.pem under Root (the
// kubelet links it with an absolute node path).
func (kn *kubeletNode) kubeletClientPEM(t *testing.T) string {
	p := kn.Path("/var/lib/kubelet/pki/kubelet-client-current.pem")
	if target, err := os.Readlink(p); err == nil {
		if filepath.IsAbs(target) {
			return kn.Path(target)
		}
		return filepath.Join(filepath.Dir(p), target)
	}
	return p
}

// ownedSnapshot hashes what kubecpr may touch: /etc/kubernetes, the
// kubelet's pki and config.yaml. (The rest of /var/lib/kubelet — pod
// directories, checkpoints, plugin sockets — is the running kubelet's.)
func (kn *kubeletNode) ownedSnapshot(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, top := range []string{"etc/kubernetes", "var/lib/kubelet/pki"} {
		for k, v := range treesnap.Take(t, filepath.Join(kn.Root, top)) {
			out[filepath.Join(top, k)] = v
		}
	}
	b, err := os.ReadFile(kn.Path("/var/lib/kubelet/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out["var/lib/kubelet/config.yaml"] = string(b)
	return out
}

// afterKubeletRewrite is ownedSnapshot, taking into account what the real
// kubelet itself writes once rollback restarted it: finding its restored
// client certificate expired, it stores the one embedded in kubelet.conf
// again as a new kubelet-client-<time>.pem and re-points
// kubelet-client-current.pem (it did the same when the node was expired,
// which is where the `want` link points). Such a new file is accepted
// only when its bytes equal those of the file `want` links to, and the
// link then counts as pointing there; everything else must be
// byte-identical.
//
// While the killed run had the renewed credential in place, the kubelet
// may also have stored that one again under a name of its own (it does so
// on a start that finds the pair it loaded not in its own store's form).
// Rollback cannot take that file back (kubecpr did not write it, so no
// journal names it), and it is harmless once the link points at the
// restored credential again. Such a file is accepted when kubecpr never
// wrote that path (no journal of the node names it), its certificate is
// one that was on the node when the run was killed (duringRun: the DER
// sha256 of every kubelet client certificate then), and the link is
// restored; any other extra file fails the comparison.
func (kn *kubeletNode) afterKubeletRewrite(t *testing.T, want map[string]string, duringRun map[string]bool) map[string]string {
	t.Helper()
	got := kn.ownedSnapshot(t)
	const dir, link = "var/lib/kubelet/pki/", "var/lib/kubelet/pki/kubelet-client-current.pem"
	wantTarget := ""
	if i := strings.Index(want[link], "-> /"); i >= 0 {
		wantTarget = strings.TrimPrefix(strings.TrimSpace(want[link][i+3:]), "/")
	}
	if wantTarget == "" || want[wantTarget] == "" {
		return got
	}
	contentOf := func(desc string) string { // "mode uid:gid sha" → "sha"
		f := strings.Fields(desc)
		return f[len(f)-1]
	}
	for p, desc := range got {
		if _, old := want[p]; old || !strings.HasPrefix(p, dir+"kubelet-client-") || p == link {
			continue
		}
		if contentOf(desc) == contentOf(want[wantTarget]) && strings.HasSuffix(got[link], "-> /"+p) {
			t.Logf("the restarted kubelet re-wrote its restored credential as %s (same bytes as %s)", p, wantTarget)
			delete(got, p)
			got[link] = want[link]
		}
	}
	written := kn.pathsWritten(t)
	for p := range got {
		if _, old := want[p]; old || !strings.HasPrefix(p, dir+"kubelet-client-") || p == link || got[link] != want[link] || written[p] {
			continue
		}
		if der := clientCertDER(t, kn.Path("/"+p)); der != "" && duringRun[der] {
			t.Logf("the kubelet stored a credential it had during the killed run again as %s (kubecpr never wrote that path); the link is restored", p)
			delete(got, p)
		}
	}
	return got
}

// kubeletClientCerts is the DER sha256 of the certificate in every
// kubelet-client-*.pem on the node now.
func (kn *kubeletNode) kubeletClientCerts(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	pems, _ := filepath.Glob(kn.Path("/var/lib/kubelet/pki/kubelet-client-*.pem"))
	for _, p := range pems {
		if der := clientCertDER(t, p); der != "" {
			out[der] = true
		}
	}
	return out
}

// clientCertDER is the sha256 of the first certificate's DER in the pem
// file at host path p ("" when it holds none).
func clientCertDER(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return ""
		}
		if blk.Type == "CERTIFICATE" {
			s := sha256.Sum256(blk.Bytes)
			return hex.EncodeToString(s[:])
		}
	}
}

// pathsWritten is every node path a run of this node journaled a change
// of (kubecpr's own writes).
func (kn *kubeletNode) pathsWritten(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	journals, _ := filepath.Glob(kn.Path("/var/lib/kubecpr/runs/*/journal.log"))
	for _, j := range journals {
		recs, err := journal.ReadFile(j)
		if err != nil {
			t.Fatalf("%s: %v", j, err)
		}
		for _, r := range recs {
			for _, c := range r.Changes {
				out[strings.TrimPrefix(c.Path, "/")] = true
			}
		}
	}
	return out
}

// kill -9 in the middle of the bounce with the manifests method — the
// kubelet has stopped the apiserver because its manifest is parked — then
// rollback: every file byte-identical, every manifest back, the real
// kubelet runs etcd on the old certificate again. Then a run killed at the
// same point, and resume: all four healthy on the new certificates.
func TestRealKubeletKilledMidBounce(t *testing.T) {
	t.Parallel()
	kn := startKubeletNode(t)
	kn.expire(t)
	expired := kn.ownedSnapshot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	const crashAt = "bounce-manifest-out-kube-apiserver"
	killedRun := func() {
		t.Helper()
		r := kubecprbin.Run(t, []string{"KUBECPR_CRASH_AT=" + crashAt}, append([]string{"--root", kn.Root, "run"}, kn.liveArgs("manifests")...)...)
		if !r.Killed {
			t.Fatalf("run was not killed at %s: exit %d\n%s%s", crashAt, r.Code, r.Stdout, r.Stderr)
		}
		if _, err := os.Stat(kn.Path("/etc/kubernetes/manifests.kubecpr-out/kube-apiserver.yaml")); err != nil {
			t.Fatalf("the kill did not leave the manifest parked: %v", err)
		}
	}

	killedRun()
	duringRun := kn.kubeletClientCerts(t)
	r := kubecprbin.Run(t, nil, append([]string{"--root", kn.Root, "rollback"}, kn.liveArgs("manifests")...)...)
	if r.Code != 0 {
		t.Fatalf("rollback: exit %d\n%s\n%s\nkubelet:\n%s", r.Code, r.Stdout, r.Stderr, kn.k.LogTail(40))
	}
	if d := diffMaps(expired, kn.afterKubeletRewrite(t, expired, duringRun)); d != "" {
		t.Fatalf("rollback not byte-identical:\n%s", d)
	}
	served, err := cluster.ServedCertificate(kn.EtcdClientPort)
	if err != nil {
		t.Fatal(err)
	}
	disk, _ := fixture.ReadCert(kn.Path("/etc/kubernetes/pki/etcd/server.crt"))
	if served.SerialNumber.Cmp(disk.SerialNumber) != 0 || time.Now().Before(served.NotAfter) {
		t.Errorf("after rollback etcd serves %s (until %s), disk has %s", served.SerialNumber, served.NotAfter, disk.SerialNumber)
	}

	killedRun()
	r = kubecprbin.Run(t, nil, append([]string{"--root", kn.Root, "resume"}, kn.liveArgs("manifests")...)...)
	if r.Code != 0 {
		t.Fatalf("resume: exit %d\n%s\n%s\nkubelet:\n%s", r.Code, r.Stdout, r.Stderr, kn.k.LogTail(40))
	}
	kn.assertRecovered(ctx, t)
}
