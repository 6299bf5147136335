package bounce

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/runtime"
	"github.com/kubecpr/kubecpr/recovery/service"
	"github.com/kubecpr/kubecpr/test/ctrd"
	"github.com/kubecpr/kubecpr/test/ociimage"
	"github.com/kubecpr/kubecpr/test/staticpods"
)

// mountNode is a node tree with the files a run renews.
func mountNode(t *testing.T) *node.Node {
	t.Helper()
	root := t.TempDir()
	for _, f := range []string{"etc/kubernetes/pki/ca.crt", "etc/kubernetes/pki/apiserver-etcd-client.crt", "etc/kubernetes/pki/etcd/ca.crt",
		"etc/kubernetes/admin.conf", "etc/kubernetes/kubelet.conf", "etc/kubernetes/extra.conf", "etc/kubernetes/manifests/kube-apiserver.yaml",
		"var/lib/etcd/member/x", "var/log/syslog", "data/pki/ca.crt"} {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	n, err := node.New(root)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestMountedSource(t *testing.T) {
	n := mountNode(t)
	// a PKI directory kept elsewhere and linked, as some installers do
	if err := os.Symlink("/data/pki", filepath.Join(n.Root, "etc/kubernetes/pki-linked")); err != nil {
		t.Fatal(err)
	}
	d := &data{n: n}
	tg := RenewedTargets(d)
	if !strings.Contains(strings.Join(tg.Kubeconfigs, " "), "/etc/kubernetes/extra.conf") {
		t.Errorf("kubeconfigs on disk not all targets: %v", tg.Kubeconfigs)
	}
	linked := Targets{KubernetesDir: tg.KubernetesDir, PKIDir: "/etc/kubernetes/pki-linked", Kubeconfigs: tg.Kubeconfigs}
	r := func(p string) string { return filepath.Join(n.Root, p) }
	for _, tc := range []struct {
		tg     Targets
		source string
		want   string // "" = does not use renewed files
	}{
		{tg, r("etc/kubernetes/pki"), "/etc/kubernetes/pki"},
		{tg, r("etc/kubernetes/pki/"), "/etc/kubernetes/pki"},
		{tg, r("etc/kubernetes/pki/etcd"), "/etc/kubernetes/pki/etcd"},
		{tg, r("etc/kubernetes/pki/apiserver-etcd-client.crt"), "/etc/kubernetes/pki/apiserver-etcd-client.crt"},
		{tg, r("etc/kubernetes"), "/etc/kubernetes"},
		{tg, r("etc/kubernetes/admin.conf"), "/etc/kubernetes/admin.conf"},
		{tg, r("etc/kubernetes/extra.conf"), "/etc/kubernetes/extra.conf"},
		{tg, r("etc/kubernetes/super-admin.conf"), "/etc/kubernetes/super-admin.conf"},
		{tg, r("etc/kubernetes/manifests"), ""},
		{tg, r("etc/kubernetes/pkix"), ""},
		{tg, r("etc"), ""},
		{tg, n.Root, ""},
		{tg, "/", ""},
		{tg, r("var/lib/etcd"), ""},
		{tg, r("var/log"), ""},
		// node paths as such: a runtime in a mount namespace where the
		// node's files are at their node paths (the real-kubelet tests)
		{tg, "/etc/kubernetes/pki", "/etc/kubernetes/pki"},
		{tg, "/etc/kubernetes/pki/etcd/ca.crt", "/etc/kubernetes/pki/etcd/ca.crt"},
		{tg, "/etc/kubernetes/admin.conf", "/etc/kubernetes/admin.conf"},
		{tg, "/etc/kubernetes/manifests", ""},
		{linked, r("data/pki"), "/etc/kubernetes/pki-linked"},
		{linked, r("data/pki/ca.crt"), "/etc/kubernetes/pki-linked/ca.crt"},
		{linked, r("etc/kubernetes/pki-linked"), "/etc/kubernetes/pki-linked"},
	} {
		got, ok := tc.tg.MountedSource(n, tc.source)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("MountedSource(%s, pki %s) = %q, %v; want %q", tc.source, tc.tg.PKIDir, got, ok, tc.want)
		}
	}
}

func TestFindUsers(t *testing.T) {
	n := mountNode(t)
	pki := runtime.Mount{Source: filepath.Join(n.Root, "etc/kubernetes/pki"), Destination: "/etc/kubernetes/pki", ReadOnly: true}
	kdir := runtime.Mount{Source: filepath.Join(n.Root, "etc/kubernetes"), Destination: "/etc/kubernetes"}
	logs := runtime.Mount{Source: filepath.Join(n.Root, "var/log"), Destination: "/var/log"}
	pod := func(id, ns, pod, name string, ms ...runtime.Mount) runtime.Mounted {
		m := runtime.Mounted{Container: runtime.Container{ID: id, Name: name, Pod: pod, Namespace: ns, Running: true}, Mounts: ms,
			Labels: map[string]string{}}
		if pod != "" {
			m.Labels = map[string]string{runtime.LabelPodName: pod, runtime.LabelPodNamespace: ns, runtime.LabelContainerName: name}
		}
		return m
	}
	recovery := pod("recovery", "", "", "", pki)
	recovery.Labels["io.kubecpr.role"] = "recovery-apiserver"
	cs := []runtime.Mounted{
		pod("a1", "kube-system", "kube-apiserver-cp-1", "kube-apiserver", kdir),
		pod("b2", "kube-system", "etcd-defrag-x7k2p", "etcd-defrag", pki, logs),
		pod("c3", "kube-system", "node-exporter-abcde", "node-exporter", logs),
		pod("d4", "", "", "", pki),
		pod("e5", "monitoring", "cert-exporter-1", "exporter", kdir),
		pod("f6", "kube-system", "etcd-cp-1", "etcd", kdir), // etcd not a static pod here (external etcd)
		recovery,
	}
	var got []string
	for _, u := range FindUsers(n, RenewedTargets(&data{n: n}), cs, []string{"kube-apiserver"}) {
		got = append(got, fmt.Sprintf("%s %s managed=%v %s", u.ID, u.Key(), u.Managed(), usesText(u.Uses)))
	}
	want := []string{
		"f6 kube-system/etcd-cp-1/etcd managed=true /etc/kubernetes → /etc/kubernetes",
		"b2 kube-system/etcd-defrag-x7k2p/etcd-defrag managed=true /etc/kubernetes/pki → /etc/kubernetes/pki (read-only)",
		"e5 monitoring/cert-exporter-1/exporter managed=true /etc/kubernetes → /etc/kubernetes",
		"d4 // managed=false /etc/kubernetes/pki → /etc/kubernetes/pki (read-only)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("FindUsers:\n got %q\nwant %q", got, want)
	}
}

// liveData is data on a live node.
type liveData struct {
	*data
	live    *pipeline.Live
	cluster *node.Cluster
}

func (d *liveData) Live() *pipeline.Live   { return d.live }
func (d *liveData) Cluster() *node.Cluster { return d.cluster }

var (
	helloOnce sync.Once
	helloBin  string
	helloErr  error
)

// helloImage is an image holding test/ctrd's static program (prints, waits
// for SIGTERM), imported into the kubelet's namespace.
func helloImage(t *testing.T, d *ctrd.Daemon, name string) {
	t.Helper()
	helloOnce.Do(func() {
		dir, err := os.MkdirTemp("", "bounce-hello")
		if err != nil {
			helloErr = err
			return
		}
		helloBin = filepath.Join(dir, "hello")
		cmd := exec.Command("go", "build", "-o", helloBin, "../../test/ctrd/testdata/hello")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			helloErr = fmt.Errorf("go build hello: %v\n%s", err, b)
		}
	})
	if helloErr != nil {
		t.Fatal(helloErr)
	}
	tarPath := filepath.Join(t.TempDir(), "img.tar")
	if err := ociimage.WriteFile(tarPath, ociimage.Image{Name: name, Entrypoint: []string{"/hello"},
		Files: []ociimage.File{{Path: "/hello", Mode: 0o755, SourcePath: helloBin}}}); err != nil {
		t.Fatal(err)
	}
	d.Import(t, runtime.Namespace, tarPath)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if helloBin != "" {
		os.RemoveAll(filepath.Dir(helloBin))
	}
	os.Exit(code)
}

func alive(pid uint32) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] != 'Z'
}

// A real containerd, the kubelet stand-in running an etcd-defrag-style pod
// that bind-mounts the PKI directory, a node-exporter-style pod that
// mounts /var/log only, a kube-apiserver container (a static pod, restarted
// on its own) and a container no kubelet manages that mounts the PKI
// directory. The bounce plan restarts etcd-defrag alone, proven by a new
// container and a new pid while the old process is gone; the others keep
// their container and process.
func TestRestartsContainersThatMountRenewedFiles(t *testing.T) {
	n := mountNode(t)
	d := ctrd.Start(t)
	const image = "registry.k8s.io/kubecpr-mounts:test"
	helloImage(t, d, image)
	sp := staticpods.Start(t, n.Root, "cp-1", d.Socket)
	defrag := staticpods.Pod{Namespace: "kube-system", Name: "etcd-defrag-x7k2p", UID: "uid-defrag", Container: "etcd-defrag", Image: image,
		Args:   []string{"/hello", "defrag"},
		Mounts: []staticpods.Mount{{Source: n.Path("/etc/kubernetes/pki"), Destination: "/etc/kubernetes/pki", ReadOnly: true}}}
	exporter := staticpods.Pod{Namespace: "kube-system", Name: "node-exporter-abcde", UID: "uid-exporter", Container: "node-exporter", Image: image,
		Args:   []string{"/hello", "exporter"},
		Mounts: []staticpods.Mount{{Source: n.Path("/var/log"), Destination: "/host/var/log", ReadOnly: true}}}
	apiserver := staticpods.Pod{Namespace: "kube-system", Name: "kube-apiserver-cp-1", UID: "uid-apiserver", Container: "kube-apiserver", Image: image,
		Args:   []string{"/hello", "apiserver"},
		Mounts: []staticpods.Mount{{Source: n.Path("/etc/kubernetes/pki"), Destination: "/etc/kubernetes/pki", ReadOnly: true}}}
	for _, p := range []staticpods.Pod{defrag, exporter, apiserver} {
		sp.AddPod(p)
	}
	// A container nobody would start again: made with ctr, no kubelet labels.
	c := d.Client(t)
	ctx := namespaces.WithNamespace(context.Background(), runtime.Namespace)
	img, err := c.GetImage(ctx, image)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewContainer(ctx, "hand-made", containerd.WithNewSnapshot("hand-made", img), containerd.WithNewSpec(oci.WithImageConfig(img),
		oci.WithProcessArgs("/hello", "hand-made"), oci.WithMounts([]specs.Mount{{Source: n.Path("/etc/kubernetes/pki"), Destination: "/pki",
			Type: "bind", Options: []string{"rbind", "ro"}}}))); err != nil {
		t.Fatal(err)
	}
	ctr, _ := c.LoadContainer(ctx, "hand-made")
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}

	rt, err := runtime.NewContainerd(d.Socket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	before := map[string]runtime.Mounted{}
	deadline := time.Now().Add(time.Minute)
	for len(before) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("pods not running after a minute: %v\nstand-in: %s", before, sp.Errs())
		}
		time.Sleep(200 * time.Millisecond)
		cs, err := rt.Mounted(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		before = map[string]runtime.Mounted{}
		for _, m := range cs {
			before[User{Mounted: m}.Key()] = m
		}
	}

	live := &pipeline.Live{Runtime: func() (runtime.Runtime, error) { return rt, nil }, Services: &service.Fake{StateValue: "active"},
		RestartMethod: "containerd", ComponentTimeout: time.Minute, Grace: 5 * time.Second}
	ld := &liveData{data: &data{n: n}, live: live, cluster: &node.Cluster{PKIDir: node.DefaultPKIDir}}
	// The plan: the kubelet, the kube-apiserver static pod (its manifest is
	// present), etcd-defrag through its mounts, the hand-made container
	// left alone; nothing for node-exporter.
	acts, err := Plan(context.Background(), ld)
	if err != nil {
		t.Fatal(err)
	}
	var ids, summaries []string
	for _, a := range acts {
		ids = append(ids, a.ID)
		summaries = append(summaries, a.Summary)
	}
	want := []string{"bounce/kubelet", "bounce/kube-apiserver", "bounce/mounts/kube-system/etcd-defrag-x7k2p/etcd-defrag", "bounce/unmanaged/hand-made"}
	if strings.Join(ids, " ") != strings.Join(want, " ") {
		t.Fatalf("plan actions:\n got %v\nwant %v\n%s", ids, want, strings.Join(summaries, "\n"))
	}
	t.Logf("plan:\n  %s", strings.Join(summaries, "\n  "))
	if s := acts[2].Summary; !strings.Contains(s, "it mounts /etc/kubernetes/pki → /etc/kubernetes/pki (read-only)") || !strings.Contains(s, "kube-system/etcd-defrag-x7k2p") {
		t.Errorf("the plan does not say why etcd-defrag is restarted: %s", s)
	}
	if s := acts[3].Summary; !strings.Contains(s, "no io.kubernetes.* labels") || !strings.Contains(s, "/etc/kubernetes/pki → /pki") {
		t.Errorf("the plan does not say why the hand-made container is left alone: %s", s)
	}

	// plan (a dry run) lists the same through Inspect, stopping nothing.
	dry := &pipeline.Live{Inspect: live.Runtime, Services: live.Services, RestartMethod: "containerd"}
	dacts, err := Plan(context.Background(), &liveData{data: ld.data, live: dry, cluster: ld.cluster})
	if err != nil {
		t.Fatal(err)
	}
	if len(dacts) != len(acts) || dacts[2].Summary != acts[2].Summary || dacts[3].ID != acts[3].ID {
		t.Errorf("the dry run's plan differs: %d actions", len(dacts))
	}

	start := time.Now()
	for _, a := range acts[2:] {
		facts, err := a.Run(context.Background())
		if err != nil {
			t.Fatalf("%s: %v\nstand-in: %s", a.ID, err, sp.Errs())
		}
		t.Logf("%s: %v", a.ID, facts)
	}
	t.Logf("etcd-defrag restarted and proven in %s", time.Since(start).Round(time.Millisecond))
	old := before[defrag.Key()]
	cs, err := rt.Mounted(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	after := map[string]runtime.Mounted{}
	for _, m := range cs {
		after[User{Mounted: m}.Key()] = m
	}
	nw := after[defrag.Key()]
	if nw.ID == "" || nw.ID == old.ID || nw.Pid == old.Pid || !alive(nw.Pid) {
		t.Errorf("etcd-defrag: before %s pid %d, after %s pid %d (alive %v): want a new running container", old.ID, old.Pid, nw.ID, nw.Pid, alive(nw.Pid))
	}
	if alive(old.Pid) {
		t.Errorf("etcd-defrag's old process %d still runs", old.Pid)
	}
	if got := sp.Containers(defrag.Key()); len(got) != 2 || got[1] != nw.ID {
		t.Errorf("the stand-in created %v for etcd-defrag, want the first and %s", got, nw.ID)
	}
	for _, k := range []string{exporter.Key(), apiserver.Key(), "//"} {
		if b, a := before[k], after[k]; b.ID == "" || b.ID != a.ID || b.Pid != a.Pid || !alive(a.Pid) {
			t.Errorf("%s: before %s pid %d, after %s pid %d: want it untouched and running", k, b.ID, b.Pid, a.ID, a.Pid)
		}
	}
	for _, k := range []string{exporter.Key(), apiserver.Key()} {
		if got := sp.Containers(k); len(got) != 1 {
			t.Errorf("%s: containers %v, want the first only", k, got)
		}
	}
	// Rollback's undo restarts it once more (on the restored files).
	if err := Undo(context.Background(), ld, "bounce/mounts/"+defrag.Key(), nil); err != nil {
		t.Fatal(err)
	}
	if got := sp.Containers(defrag.Key()); len(got) != 3 {
		t.Errorf("after undo: containers %v, want a third", got)
	}
	if err := Undo(context.Background(), ld, "bounce/unmanaged/hand-made", nil); err != nil {
		t.Errorf("undo of a notice: %v", err)
	}
	if b, a := before["//"], after["//"]; !alive(a.Pid) || b.Pid != a.Pid {
		t.Errorf("the hand-made container was touched")
	}
}

// A plan whose runtime cannot be reached says so for the mount users and
// still plans (a dry run never needed the runtime); a run stops.
func TestPlanWithoutRuntime(t *testing.T) {
	n := mountNode(t)
	down := func() (runtime.Runtime, error) { return nil, fmt.Errorf("cannot reach containerd at /nowhere.sock") }
	d := &liveData{data: &data{n: n}, live: &pipeline.Live{Inspect: down, Services: &service.Fake{}, RestartMethod: "containerd"}}
	acts, err := Plan(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	last := acts[len(acts)-1]
	if last.ID != "bounce/mounts-unknown" || !strings.Contains(last.Summary, "/nowhere.sock") {
		t.Errorf("last action %s: %s", last.ID, last.Summary)
	}
	d.live = &pipeline.Live{Runtime: down, Services: &service.Fake{}, RestartMethod: "containerd"}
	if _, err := Plan(context.Background(), d); err == nil || !strings.Contains(err.Error(), "/nowhere.sock") {
		t.Errorf("a run's plan with no runtime: %v", err)
	}
}
