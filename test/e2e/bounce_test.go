package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/kubecpr/kubecpr/backup"
	"github.com/kubecpr/kubecpr/recovery/runtime"
	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/ctrd"
	"github.com/kubecpr/kubecpr/test/fixture"
	"github.com/kubecpr/kubecpr/test/kubecprbin"
	"github.com/kubecpr/kubecpr/test/ociimage"
	"github.com/kubecpr/kubecpr/test/staticpods"
)

// containerNode is a kubeadm node whose control plane runs as real runc
// containers in a real containerd, kept alive by the static-pod stand-in.
type containerNode struct {
	*cluster.Node
	d  *ctrd.Daemon
	sp *staticpods.Runner
}

func imageName(t *testing.T, n *cluster.Node, comp string) string {
	b, err := os.ReadFile(n.Path("/etc/kubernetes/manifests/" + comp + ".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if s := strings.TrimSpace(line); strings.HasPrefix(s, "image: ") {
			return strings.TrimPrefix(s, "image: ")
		}
	}
	t.Fatalf("%s: no image", comp)
	return ""
}

// controlPlaneImages are the images of the four static pods, named as in
// their manifests, each holding the test binary of the same name.
func controlPlaneImages(t *testing.T, n *cluster.Node) []ociimage.Image {
	var imgs []ociimage.Image
	for _, comp := range components {
		imgs = append(imgs, ociimage.Image{Name: imageName(t, n, comp), Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
			Files: []ociimage.File{{Path: "/usr/local/bin/" + comp, Mode: 0o755, SourcePath: filepath.Join(n.Bin, comp)}}})
	}
	return imgs
}

// importImages writes the images into one tarball and imports it into
// the kubelet's namespace.
func importImages(t *testing.T, d *ctrd.Daemon, imgs ...ociimage.Image) {
	t.Helper()
	tarPath := filepath.Join(t.TempDir(), "images.tar")
	if err := ociimage.WriteFile(tarPath, imgs...); err != nil {
		t.Fatal(err)
	}
	d.Import(t, runtime.Namespace, tarPath)
}

func startContainerNode(t *testing.T) *containerNode {
	t.Helper()
	n := cluster.Kubeadm(t, cluster.Options{})
	d := ctrd.Start(t)
	importImages(t, d, controlPlaneImages(t, n)...)
	sp := staticpods.Start(t, n.Root, n.Name, d.Socket)
	t.Cleanup(func() {
		if t.Failed() {
			for _, c := range components {
				t.Logf("stand-in kubelet: %s containers created: %v", c, sp.Containers(c))
			}
			t.Logf("stand-in kubelet errors: %s", sp.Errs())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := n.WaitReady(ctx, t, "/etc/kubernetes/admin.conf", nil); err != nil {
		t.Fatalf("control plane in containers not ready: %v\nstand-in errors: %s", err, sp.Errs())
	}
	if err := n.GrantClusterAdmins(ctx, t); err != nil {
		t.Fatal(err)
	}
	return &containerNode{Node: n, d: d, sp: sp}
}

// expireAndRestart makes every leaf expired and restarts the containers so
// they run on the expired files: the node fails like production.
func (cn *containerNode) expireAndRestart(t *testing.T) {
	t.Helper()
	w := fixture.Window{NotBefore: time.Now().AddDate(-1, 0, -2), NotAfter: time.Now().AddDate(0, 0, -2)}
	if err := fixture.Resign(cn.Root, w, nil); err != nil {
		t.Fatal(err)
	}
	rt, err := runtime.NewContainerd(cn.d.Socket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	ctx := context.Background()
	cs, _ := rt.ControlPlane(ctx)
	for _, c := range cs {
		if err := rt.Stop(ctx, c.ID, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// wait for the replacements
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if len(cn.sp.Containers("kube-apiserver")) >= 2 && len(cn.sp.Containers("etcd")) >= 2 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	if _, err := cn.ListNamespaces(ctx, t, "/etc/kubernetes/admin.conf"); err == nil {
		t.Fatal("the expired control plane still answers")
	}
}

func (cn *containerNode) kubecpr(t *testing.T, env []string, args ...string) result {
	t.Helper()
	base := []string{"--root", cn.Root}
	r := kubecprbin.Run(t, env, append(base, args...)...)
	return result{code: r.Code, stdout: r.Stdout, stderr: r.Stderr}
}

func (cn *containerNode) liveArgs(method string) []string {
	return []string{"--cri-socket", cn.d.Socket, "--restart-method", method,
		"--kubelet-restart-command", "touch " + cn.Path("/kubelet-restarted"), "--component-timeout", "5m"}
}

// assertServesNewCerts checks on the wire that the apiserver and etcd serve
// the certificates on disk, client-go works with the new admin.conf, all
// four manifests are in place and the controller manager and scheduler are
// back on their new certificates.
func (cn *containerNode) assertServesNewCerts(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	assertServesDiskCerts(ctx, t, cn.Node)
	if parked, _ := os.ReadDir(cn.Path("/etc/kubernetes/manifests.kubecpr-out")); len(parked) > 0 {
		t.Errorf("manifests left outside the static pod directory: %v", parked)
	}
	cn.assertLeadersActive(ctx, t)
}

// assertServesDiskCerts: client-go lists namespaces with the new
// admin.conf; the apiserver and etcd serve, on the wire, the certificates
// now on disk, and those are valid; every static pod manifest is in place.
func assertServesDiskCerts(ctx context.Context, t *testing.T, n *cluster.Node) {
	t.Helper()
	if _, err := n.ListNamespaces(ctx, t, "/etc/kubernetes/admin.conf"); err != nil {
		t.Fatalf("client-go with the new admin.conf: %v", err)
	}
	for _, c := range []struct {
		port int
		file string
	}{{n.APIServerPort, "/etc/kubernetes/pki/apiserver.crt"}, {n.EtcdClientPort, "/etc/kubernetes/pki/etcd/server.crt"}} {
		served, err := cluster.ServedCertificate(c.port)
		if err != nil {
			t.Fatal(err)
		}
		disk, _ := fixture.ReadCert(n.Path(c.file))
		if served.SerialNumber.Cmp(disk.SerialNumber) != 0 || !time.Now().Before(served.NotAfter) {
			t.Errorf("port %d serves serial %s (until %s), disk %s has %s", c.port, served.SerialNumber, served.NotAfter, c.file, disk.SerialNumber)
		}
	}
	for _, m := range components {
		if _, err := os.Stat(n.Path("/etc/kubernetes/manifests/" + m + ".yaml")); err != nil {
			t.Errorf("manifest %s: %v", m, err)
		}
	}
}

// components are the four static pods of a kubeadm control plane.
var components = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// assertLeadersActive proves kube-controller-manager and kube-scheduler are
// back and talk to the apiserver with their new client certificates.
func (cn *containerNode) assertLeadersActive(ctx context.Context, t *testing.T) {
	t.Helper()
	assertLeasesRenewed(ctx, t, cn.Client(t, "/etc/kubernetes/admin.conf"), "kube-system", "kube-controller-manager", "kube-scheduler")
}

// assertLeasesRenewed waits until each named Lease was renewed within the
// last 10 s: its holder authenticates to the apiserver now (a client on
// an expired certificate gets 401 and cannot). Leader leases renew every
// 2 s, node leases every 10 s / 4.
func assertLeasesRenewed(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns string, names ...string) {
	t.Helper()
	for _, name := range names {
		last := "not found"
		for {
			lease, err := cs.CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{})
			if err == nil && lease.Spec.RenewTime != nil && time.Since(lease.Spec.RenewTime.Time) < 10*time.Second {
				break
			}
			if err != nil {
				last = err.Error()
			} else if lease.Spec.RenewTime != nil {
				last = "last renewed " + lease.Spec.RenewTime.Time.Format(time.RFC3339)
			}
			if ctx.Err() != nil {
				t.Errorf("lease %s/%s is not renewed (%s): its holder is not back on a valid certificate", ns, name, last)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

// The whole recovery with the control plane in real containers: kubecpr
// renews, restarts the kubelet and each component through containerd, and
// the new certificates are served on the wire.
//
// Seed 000 on the same node: an etcd-defrag pod reads
// apiserver-etcd-client from a hostPath mount of the PKI directory. The
// plan names it and why; the run restarts it — found by its mount, not its
// name — after the four static pods, and leaves alone a pod that mounts
// nothing renewed. An etcd-defrag-style DaemonSet named with
// --restart-daemonset gets its rollout restart through the API.
func TestBounceThroughContainerd(t *testing.T) {
	t.Parallel()
	cn := startContainerNode(t)
	const image = "registry.k8s.io/kubecpr-pod:test"
	importImages(t, cn.d, helloImage(t, image))
	defrag := staticpods.Pod{Namespace: "kube-system", Name: "etcd-defrag-" + cn.Name, UID: "uid-etcd-defrag", Container: "etcd-defrag",
		Image: image, Args: []string{"/hello", "etcd-defrag"},
		Mounts: []staticpods.Mount{{Source: cn.Path("/etc/kubernetes/pki"), Destination: "/etc/kubernetes/pki", ReadOnly: true}}}
	exporter := staticpods.Pod{Namespace: "monitoring", Name: "node-exporter-" + cn.Name, UID: "uid-node-exporter", Container: "node-exporter",
		Image: image, Args: []string{"/hello", "node-exporter"},
		Mounts: []staticpods.Mount{{Source: cn.Path("/var/log"), Destination: "/host/var/log", ReadOnly: true}}}
	os.MkdirAll(cn.Path("/var/log"), 0o755)
	cn.sp.AddPod(defrag)
	cn.sp.AddPod(exporter)
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "etcd-defrag", Namespace: "kube-system"},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "etcd-defrag"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "etcd-defrag"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "defrag", Image: "registry.k8s.io/etcd:3.5.21-0"}}}}}}
	if _, err := cn.Client(t, "/etc/kubernetes/admin.conf").AppsV1().DaemonSets("kube-system").Create(context.Background(), ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cn.expireAndRestart(t)
	var before map[string]runtime.Mounted
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		before = cn.mountedByKey(t)
		if before[defrag.Key()].ID != "" && before[exporter.Key()].ID != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pods are not running: %v\nstand-in: %s", before, cn.sp.Errs())
		}
	}

	plan := cn.kubecpr(t, nil, append([]string{"plan"}, cn.liveArgs("containerd")...)...)
	if plan.code != 0 {
		t.Fatalf("plan: exit %d\n%s\n%s", plan.code, plan.stdout, plan.stderr)
	}
	want := "restart container etcd-defrag of pod kube-system/etcd-defrag-" + cn.Name + ": it mounts /etc/kubernetes/pki → /etc/kubernetes/pki (read-only)"
	if !strings.Contains(plan.stdout, want) || strings.Contains(plan.stdout, "node-exporter") {
		t.Errorf("the plan does not restart etcd-defrag for its mount alone:\n%s", plan.stdout)
	}
	if after := cn.mountedByKey(t); after[defrag.Key()].ID != before[defrag.Key()].ID {
		t.Error("plan restarted etcd-defrag")
	}

	start := time.Now()
	r := cn.kubecpr(t, nil, append([]string{"run", "--restart-daemonset", "kube-system/etcd-defrag"}, cn.liveArgs("containerd")...)...)
	if r.code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s\nstand-in: %s", r.code, r.stdout, r.stderr, cn.sp.Errs())
	}
	t.Logf("kubecpr run with bounce: %s\n%s", time.Since(start).Round(time.Millisecond), r.stdout)
	cn.assertServesNewCerts(t)
	if _, err := os.Stat(cn.Path("/kubelet-restarted")); err != nil {
		t.Error("the kubelet was not restarted")
	}
	after := cn.mountedByKey(t)
	old, nw := before[defrag.Key()], after[defrag.Key()]
	if nw.ID == "" || nw.ID == old.ID || nw.Pid == old.Pid || !processAlive(nw.Pid) || processAlive(old.Pid) {
		t.Errorf("etcd-defrag: before %s pid %d, after %s pid %d: want a new running container and the old process gone", old.ID, old.Pid, nw.ID, nw.Pid)
	}
	if !strings.Contains(r.stdout, defrag.Key()+": container") || !strings.Contains(r.stdout, "replaced by") {
		t.Errorf("the run does not report the restart:\n%s", r.stdout)
	}
	// after the static pods: its line follows kube-scheduler's
	if i, j := strings.Index(r.stdout, "kube-scheduler healthy"), strings.Index(r.stdout, defrag.Key()+": container"); i < 0 || j < i {
		t.Errorf("etcd-defrag not restarted after the static pods:\n%s", r.stdout)
	}
	if b, a := before[exporter.Key()], after[exporter.Key()]; a.ID != b.ID || a.Pid != b.Pid || !processAlive(a.Pid) {
		t.Errorf("node-exporter: before %s pid %d, after %s pid %d: want it untouched", b.ID, b.Pid, a.ID, a.Pid)
	}
	if got := cn.sp.Containers(exporter.Key()); len(got) != 1 {
		t.Errorf("node-exporter containers %v, want one", got)
	}
	// The backup holds an etcd snapshot taken from the running etcd (on its
	// expired certificates), recorded with its sha256; etcd's own etcdctl
	// reads it.
	backups, _ := filepath.Glob(cn.Path("/var/lib/kubecpr/backups/*"))
	if len(backups) != 1 {
		t.Fatalf("backups: %v", backups)
	}
	m, err := backup.Load(backups[0])
	if err != nil || m.EtcdSnapshot == nil {
		t.Fatalf("no etcd snapshot in the backup (%v)\n%s", err, r.stdout)
	}
	if err := backup.Verify(backups[0]); err != nil {
		t.Errorf("backup with the snapshot does not verify: %v", err)
	}
	snap := filepath.Join(backups[0], filepath.FromSlash(m.EtcdSnapshot.Blob))
	out, err := exec.Command(filepath.Join(cluster.Binaries(t), "etcdctl"), "snapshot", "status", snap, "-w", "json").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "totalKey") {
		t.Errorf("etcdctl snapshot status %s: %v\n%s", snap, err, out)
	}
	got, err := cn.Client(t, "/etc/kubernetes/admin.conf").AppsV1().DaemonSets("kube-system").Get(context.Background(), "etcd-defrag", metav1.GetOptions{})
	if err != nil || got.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] == "" {
		t.Errorf("DaemonSet not restarted: %v %v", err, got.Spec.Template.Annotations)
	}
	// the journal shows each restart with its duration
	st := cn.kubecpr(t, nil, "-o", "json", "status")
	var rs struct {
		Actions []struct{ Action, State, Duration string }
	}
	json.Unmarshal([]byte(st.stdout), &rs)
	seen := map[string]string{}
	for _, a := range rs.Actions {
		seen[a.Action] = a.State + " " + a.Duration
	}
	for _, a := range []string{"bounce/kubelet", "bounce/etcd", "bounce/kube-apiserver", "bounce/kube-controller-manager", "bounce/kube-scheduler"} {
		if !strings.HasPrefix(seen[a], "done ") || len(seen[a]) < 7 {
			t.Errorf("status: %s = %q", a, seen[a])
		}
	}
}

// kill -9 during the bounce (containerd method). Then rollback: every file
// back, every manifest in place, the components restarted on the old files.
// Then a new run killed at the same point, and resume: all healthy on the
// new certificates.
func TestBounceKilledThenRollbackOrResume(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ method, crashAt string }{
		{"containerd", "bounce-stopped-kube-apiserver"},
		// The manifests method killed mid-bounce, rolled back and resumed
		// is TestRealKubeletKilledMidBounce, with the real kubelet.
	} {
		t.Run(tc.method, func(t *testing.T) {
			t.Parallel()
			cn := startContainerNode(t)
			cn.expireAndRestart(t)
			expired := snapshot(t, cn.Root)
			killedRun := func() {
				t.Helper()
				r := kubecprbin.Run(t, []string{"KUBECPR_CRASH_AT=" + tc.crashAt}, append([]string{"--root", cn.Root, "run"}, cn.liveArgs(tc.method)...)...)
				if !r.Killed {
					t.Fatalf("run was not killed at %s: exit %d\n%s%s", tc.crashAt, r.Code, r.Stdout, r.Stderr)
				}
			}

			killedRun()
			// No live flags: the rollback takes the run's own
			// (--cri-socket, --kubelet-restart-command, ...) from its
			// journal; without them it would restart nothing and etcd
			// would go on serving the new certificate (checked below).
			r := cn.kubecpr(t, nil, "rollback")
			if r.code != 0 {
				t.Fatalf("rollback: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
			}
			if d := diffMaps(expired, snapshot(t, cn.Root)); d != "" {
				t.Fatalf("rollback not byte-identical:\n%s", d)
			}
			for _, m := range components {
				if _, err := os.Stat(cn.Path("/etc/kubernetes/manifests/" + m + ".yaml")); err != nil {
					t.Errorf("after rollback, manifest %s: %v", m, err)
				}
			}
			// restarted on the old files: etcd serves the restored (expired) certificate
			served, err := cluster.ServedCertificate(cn.EtcdClientPort)
			if err != nil {
				t.Fatal(err)
			}
			disk, _ := fixture.ReadCert(cn.Path("/etc/kubernetes/pki/etcd/server.crt"))
			if served.SerialNumber.Cmp(disk.SerialNumber) != 0 || time.Now().Before(served.NotAfter) {
				t.Errorf("after rollback etcd serves %s (until %s), disk has %s", served.SerialNumber, served.NotAfter, disk.SerialNumber)
			}

			killedRun()
			r = cn.kubecpr(t, nil, append([]string{"resume"}, cn.liveArgs(tc.method)...)...)
			if r.code != 0 {
				t.Fatalf("resume: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
			}
			cn.assertServesNewCerts(t)
		})
	}
}

// One control plane in containerd for two scenarios (a node costs a
// minute of CPU to bring up): the recovery API server in containerd mode,
// then a component that does not come back.
//
// The recovery API server in containerd mode: the kube-apiserver image of
// the node's manifest, host network, kubecpr's labels (not the kubelet's,
// so the kubelet leaves it alone); usable with its kubeconfig; gone after
// stop.
//
// A component that does not come back stops the run, saying which, what
// its log said, and the ways on.
func TestContainerdRecoveryServerAndBrokenComponent(t *testing.T) {
	t.Parallel()
	cn := startContainerNode(t)
	t.Run("recovery server in containerd", func(t *testing.T) {
		r := cn.kubecpr(t, nil, "recovery-server", "start", "--cri-socket", cn.d.Socket, "--recovery-ttl", "30m")
		if r.code != 0 {
			t.Fatalf("start: %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		c := cn.d.Client(t)
		ctx := namespaces.WithNamespace(context.Background(), runtime.Namespace)
		// One per state directory: its id is the prefix and a hash of the path.
		ctrs, err := c.Containers(ctx, `labels."io.kubecpr.role"==recovery-apiserver`)
		if err != nil || len(ctrs) != 1 {
			t.Fatalf("want one recovery container, have %d (%v)", len(ctrs), err)
		}
		ctr := ctrs[0]
		if !strings.HasPrefix(ctr.ID(), "kubecpr-recovery-apiserver-") {
			t.Errorf("container id %s", ctr.ID())
		}
		info, _ := ctr.Info(ctx)
		if info.Labels["io.kubecpr.role"] != "recovery-apiserver" || info.Labels[runtime.LabelPodNamespace] != "" {
			t.Errorf("labels %v", info.Labels)
		}
		if info.Image != imageName(t, cn.Node, "kube-apiserver") {
			t.Errorf("image %s", info.Image)
		}
		kc := strings.TrimSpace(cn.kubecpr(t, nil, "recovery-server", "kubeconfig").stdout)
		cfg, err := clientcmd.BuildConfigFromFlags("", kc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{}); err != nil {
			t.Errorf("using the recovery server: %v", err)
		}
		if r := cn.kubecpr(t, nil, "recovery-server", "stop"); r.code != 0 {
			t.Fatalf("stop: %d %s", r.code, r.stderr)
		}
		if _, err := c.LoadContainer(ctx, ctr.ID()); err == nil {
			t.Error("the recovery container is still there after stop")
		}
		if _, err := os.Stat(kc); !os.IsNotExist(err) {
			t.Errorf("credentials left: %v", err)
		}
	})
	t.Run("component does not come back", func(t *testing.T) {
		cn.expireAndRestart(t)
		// Break the apiserver's manifest the way a bad edit would.
		p := cn.Path("/etc/kubernetes/manifests/kube-apiserver.yaml")
		b, _ := os.ReadFile(p)
		os.WriteFile(p, []byte(strings.Replace(string(b), "    - --allow-privileged=true\n", "    - --allow-privileged=true\n    - --no-such-flag=1\n", 1)), 0o600)
		args := append([]string{"run"}, cn.liveArgs("containerd")...)
		args[len(args)-1] = "60s" // long enough for the kubelet stand-in to start the broken container under load
		r := cn.kubecpr(t, nil, args...)
		if r.code != 6 {
			t.Fatalf("exit %d, want 6\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		for _, want := range []string{"kube-apiserver did not come back", "unknown flag: --no-such-flag", "kubecpr rollback", "kubecpr resume"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("message lacks %q:\n%s", want, r.stderr)
			}
		}
	})
}
