package ctrd_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kubecpr/kubecpr/test/ctrd"
	"github.com/kubecpr/kubecpr/test/ociimage"
)

const imageName = "registry.k8s.io/kubecpr-hello:test"

var (
	helloDir   string
	helloOnce  sync.Once
	helloBin   string
	helloBuild error
)

// TestMain removes the test program built by image.
func TestMain(m *testing.M) {
	code := m.Run()
	if helloDir != "" {
		os.RemoveAll(helloDir)
	}
	os.Exit(code)
}

// image writes a one-file image holding the static test program, built
// once (CGO_ENABLED=0) on first use.
func image(t *testing.T) string {
	t.Helper()
	helloOnce.Do(func() {
		if helloDir, helloBuild = os.MkdirTemp("", "ctrd-hello"); helloBuild != nil {
			return
		}
		helloBin = filepath.Join(helloDir, "hello")
		cmd := exec.Command("go", "build", "-o", helloBin, "./testdata/hello")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			helloBuild = fmt.Errorf("go build ./testdata/hello: %v\n%s", err, b)
		}
	})
	if helloBuild != nil {
		t.Fatal(helloBuild)
	}
	p := filepath.Join(t.TempDir(), "img.tar")
	if err := ociimage.WriteFile(p, ociimage.Image{Name: imageName, Entrypoint: []string{"/hello"},
		Files: []ociimage.File{{Path: "/hello", Mode: 0o755, SourcePath: helloBin}}}); err != nil {
		t.Fatal(err)
	}
	return p
}

// leftovers reports what of a stopped daemon is still there: processes
// naming its socket, mounts under its dir, its cgroups, its dir.
func leftovers(dir, sock string, pids []int) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && strings.Contains(string(b), sock) {
			out = append(out, fmt.Sprintf("process %s: %q", e.Name(), b))
		}
	}
	for _, p := range pids {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p)); err == nil {
			if i := strings.LastIndexByte(string(b), ')'); i > 0 && b[i+2] != 'Z' {
				out = append(out, fmt.Sprintf("process %d still alive: %s", p, b))
			}
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, "mount: "+line)
		}
	}
	cgs, _ := filepath.Glob("/sys/fs/cgroup/*/" + filepath.Base(dir))
	more, _ := filepath.Glob("/sys/fs/cgroup/" + filepath.Base(dir))
	for _, cg := range append(cgs, more...) {
		out = append(out, "cgroup: "+cg)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		out = append(out, "dir: "+dir)
	}
	return out
}

// The brief's flow with the plain client API: a real runc container from a
// locally built image, in namespace k8s.io, with host networking; its stdout
// through cio to a file; SIGTERM; wait; delete.
func TestRealContainer(t *testing.T) {
	start := time.Now()
	d := ctrd.Start(t)
	t.Logf("containerd %s answering after %s (snapshotter %s)", d.Version, time.Since(start).Round(time.Millisecond), d.Snapshotter)
	imgs := d.Import(t, "k8s.io", image(t))
	if len(imgs) != 1 || imgs[0].Name != imageName {
		t.Fatalf("imported %+v", imgs)
	}
	c := d.Client(t)
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	img, err := c.GetImage(ctx, imageName)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := img.IsUnpacked(ctx, d.Snapshotter); err != nil || !ok {
		t.Fatalf("image not unpacked for %s (%v)", d.Snapshotter, err)
	}
	start = time.Now()
	ctr, err := c.NewContainer(ctx, "hello", d.Runtime(), containerd.WithSnapshotter(d.Snapshotter),
		containerd.WithNewSnapshot("hello-snap", img),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithHostNamespace(specs.NetworkNamespace),
			oci.WithProcessArgs("/hello", "a", "b"), d.Cgroup()))
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "out.log")
	task, err := ctr.NewTask(ctx, cio.LogFile(logPath))
	if err != nil {
		t.Fatal(err)
	}
	exit, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var out []byte
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(string(out), "hello from container") && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		out, _ = os.ReadFile(logPath)
	}
	t.Logf("container created, started and printed after %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(string(out), "hello from container [a b]") {
		t.Fatalf("container output %q", out)
	}
	// host networking: the container sees the host's network namespace
	hostNet, _ := os.Readlink("/proc/self/ns/net")
	ctrNet, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", task.Pid()))
	if err != nil || ctrNet != hostNet {
		t.Errorf("container net ns %s (%v), host %s", ctrNet, err, hostNet)
	}
	// its cgroup is the daemon's, not the shared /k8s.io
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", task.Pid()))
	if want := "/" + filepath.Base(d.Dir) + "/k8s.io/hello"; !strings.Contains(string(cg), want) {
		t.Errorf("container cgroups %s, want %s", cg, want)
	}
	if _, err := os.Stat(filepath.Join(d.State, "runc", "k8s.io", "hello")); err != nil {
		t.Errorf("runc state not under the daemon's state dir: %v", err)
	}
	if err := task.Kill(ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-exit:
		if st.ExitCode() != 0 {
			t.Errorf("exit code %d", st.ExitCode())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("container did not stop on SIGTERM")
	}
	if out, _ := os.ReadFile(logPath); !strings.Contains(string(out), "bye") {
		t.Errorf("no goodbye after SIGTERM: %q", out)
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		t.Fatal(err)
	}
	if m := ctrd.Mounts(d.Dir); len(m) != 0 {
		t.Errorf("mounts after delete: %v", m)
	}
}

// The daemon keeps the kubelet's labels and filters on them the way
// kubecpr asks for the control-plane containers.
func TestLabelFilters(t *testing.T) {
	d := ctrd.Start(t)
	d.Import(t, "k8s.io", image(t))
	pod := func(name string) map[string]string {
		return map[string]string{"io.kubernetes.container.name": name, "io.kubernetes.pod.namespace": "kube-system",
			"io.kubernetes.pod.name": name + "-node1", "io.cri-containerd.kind": "container"}
	}
	etcd := d.Run(t, "k8s.io", ctrd.Spec{ID: "etcd-1", Image: imageName, Labels: pod("etcd"), Args: []string{"/hello", "etcd"}})
	d.Run(t, "k8s.io", ctrd.Spec{ID: "apiserver-1", Image: imageName, Labels: pod("kube-apiserver")})
	other := map[string]string{"io.kubernetes.container.name": "etcd", "io.kubernetes.pod.namespace": "default", "io.cri-containerd.kind": "container"}
	d.Run(t, "k8s.io", ctrd.Spec{ID: "user-etcd", Image: imageName, Labels: other})
	etcd.WaitOutput(t, "hello from container [etcd]", 10*time.Second)

	c := d.Client(t)
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	ids := func(filters ...string) string {
		t.Helper()
		cs, err := c.Containers(ctx, filters...)
		if err != nil {
			t.Fatalf("filter %q: %v", filters, err)
		}
		var out []string
		for _, c := range cs {
			out = append(out, c.ID())
		}
		sort.Strings(out)
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		filters []string
		want    string
	}{
		{[]string{`labels."io.kubernetes.container.name"==etcd`}, "etcd-1,user-etcd"},
		// filters in one string are ANDed, separate strings ORed
		{[]string{`labels."io.kubernetes.container.name"==etcd,labels."io.kubernetes.pod.namespace"==kube-system`}, "etcd-1"},
		{[]string{`labels."io.kubernetes.pod.namespace"==kube-system`}, "apiserver-1,etcd-1"},
		{[]string{`labels."io.kubernetes.container.name"==kube-apiserver`, `labels."io.kubernetes.pod.namespace"==default`}, "apiserver-1,user-etcd"},
		{[]string{`labels."io.cri-containerd.kind"==sandbox`}, ""},
	} {
		if got := ids(tc.filters...); got != tc.want {
			t.Errorf("filter %q: got %q, want %q", tc.filters, got, tc.want)
		}
	}
	// another namespace sees none of them
	if cs, err := c.Containers(namespaces.WithNamespace(context.Background(), "default")); err != nil || len(cs) != 0 {
		t.Errorf("namespace default: %d containers (%v)", len(cs), err)
	}
	info, err := etcd.Container.Info(ctx)
	if err != nil || info.Labels["io.kubernetes.pod.name"] != "etcd-node1" || info.Image != imageName {
		t.Errorf("info %+v (%v)", info, err)
	}
}

// A daemon stopped with containers still running leaves nothing: no shim,
// no container process, no mount, no cgroup, no directory; also when the
// daemon died first and only its shims and containers remain.
func TestCleanupLeavesNothing(t *testing.T) {
	for _, killDaemon := range []bool{false, true} {
		var dir, sock string
		var pids []int
		t.Run(fmt.Sprintf("daemon killed first %v", killDaemon), func(t *testing.T) {
			d := ctrd.Start(t)
			dir, sock = d.Dir, d.Socket
			d.Import(t, "k8s.io", image(t))
			for _, id := range []string{"left-1", "left-2"} {
				r := d.Run(t, "k8s.io", ctrd.Spec{ID: id, Image: imageName})
				r.WaitOutput(t, "hello from container", 10*time.Second)
				pids = append(pids, int(r.Task.Pid()))
			}
			pids = append(pids, d.Processes()...)
			if len(d.Processes()) < 4 {
				t.Errorf("processes of the daemon: %v, want 2 shims and 2 containers at least", d.Processes())
			}
			if len(ctrd.Mounts(dir)) < 2 {
				t.Errorf("two running containers and mounts %v", ctrd.Mounts(dir))
			}
			if len(d.CgroupDirs()) == 0 {
				t.Error("no cgroup for the daemon's containers")
			}
			if killDaemon {
				d.Cmd.Process.Kill()
				select {
				case <-d.Done():
				case <-time.After(10 * time.Second):
					t.Fatal("containerd did not die on SIGKILL")
				}
			}
		})
		if left := leftovers(dir, sock, pids); len(left) > 0 {
			t.Errorf("left after cleanup:\n%s", strings.Join(left, "\n"))
		}
	}
}

// The CRI plugin loads with this config (cgroupfs, restrict_oom_score_adj);
// the only plugins allowed to fail are the ones this machine cannot have.
func TestPlugins(t *testing.T) {
	d := ctrd.Start(t)
	plugins := d.Plugins(t)
	for p, e := range plugins {
		if e != "" {
			t.Logf("plugin %s did not load: %s", p, e)
		}
	}
	for _, p := range []string{"io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1." + d.Snapshotter,
		"io.containerd.runtime.v2.task", "io.containerd.monitor.v1.cgroups"} {
		if e, ok := plugins[p]; !ok || e != "" {
			t.Errorf("plugin %s: present %v, error %q", p, ok, e)
		}
	}
	for _, p := range []string{"io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.btrfs"} {
		if _, ok := plugins[p]; ok {
			t.Errorf("plugin %s not disabled", p)
		}
	}
	if _, err := os.Stat(filepath.Join(d.Dir, "opt")); err != nil {
		t.Errorf("the opt plugin does not use the daemon's dir: %v", err)
	}
}

// The native snapshotter, the fallback where overlay mounts are not
// possible, runs the same container.
func TestNativeSnapshotter(t *testing.T) {
	t.Setenv("KUBECPR_CTRD_SNAPSHOTTER", "native")
	d := ctrd.Start(t)
	if d.Snapshotter != "native" {
		t.Fatalf("snapshotter %s", d.Snapshotter)
	}
	d.Import(t, "k8s.io", image(t))
	r := d.Run(t, "k8s.io", ctrd.Spec{ID: "native", Image: imageName, Args: []string{"/hello", "native"}})
	r.WaitOutput(t, "hello from container [native]", 10*time.Second)
	for _, m := range ctrd.Mounts(d.Dir) {
		if strings.Contains(m, "overlay") {
			t.Errorf("overlay mount with native: %s", m)
		}
	}
}

// Start and container start, measured.
func BenchmarkStart(b *testing.B) {
	for i := 0; i < b.N; i++ {
		ctrd.Start(b)
	}
}
