package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/runtime"
	"github.com/kubecpr/kubecpr/test/ociimage"
	"github.com/kubecpr/kubecpr/test/staticpods"
)

// helloImage holds test/ctrd's static program (prints its arguments,
// waits for SIGTERM): a pod's long-running process.
func helloImage(t *testing.T, name string) ociimage.Image {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hello")
	cmd := exec.Command("go", "build", "-o", bin, "../ctrd/testdata/hello")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build hello: %v\n%s", err, b)
	}
	return ociimage.Image{Name: name, Entrypoint: []string{"/hello"}, Files: []ociimage.File{{Path: "/hello", Mode: 0o755, SourcePath: bin}}}
}

// mountedByKey lists the running containers by NAMESPACE/POD/CONTAINER.
func (cn *containerNode) mountedByKey(t *testing.T) map[string]runtime.Mounted {
	t.Helper()
	rt, err := runtime.NewContainerd(cn.d.Socket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	cs, err := rt.Mounted(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]runtime.Mounted{}
	for _, c := range cs {
		out[c.Namespace+"/"+c.Pod+"/"+c.Name] = c
	}
	return out
}

func processAlive(pid uint32) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] != 'Z'
}

// Seed 000: etcd-defrag reads apiserver-etcd-client from a hostPath mount of
// the PKI directory. A run on an expired node whose control plane runs in a
// real containerd restarts it — found by its mount, not its name — after
// the four static pods, and leaves alone a pod that mounts nothing renewed.
func TestRunRestartsContainersThatMountRenewedFiles(t *testing.T) {
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
	r := cn.kubecpr(t, nil, append([]string{"run"}, cn.liveArgs("containerd")...)...)
	if r.code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s\nstand-in: %s", r.code, r.stdout, r.stderr, cn.sp.Errs())
	}
	t.Logf("kubecpr run: %s", time.Since(start).Round(time.Millisecond))
	cn.assertServesNewCerts(t)
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
}
