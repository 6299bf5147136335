package ctrd_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// buildHello builds the static test program.
func buildHello(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "hello")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/hello")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build hello: %v\n%s", err, b)
	}
	return out
}

// A real container from a locally built image, in namespace k8s.io, with
// host networking and the labels the kubelet sets: it runs, is found by
// label, stops on SIGTERM, and leaves no process or mount behind.
func TestRealContainer(t *testing.T) {
	start := time.Now()
	d := ctrd.Start(t)
	t.Logf("containerd answering after %s", time.Since(start).Round(time.Millisecond))
	tarPath := filepath.Join(t.TempDir(), "img.tar")
	if err := ociimage.WriteFile(tarPath, ociimage.Image{Name: "registry.k8s.io/kubecpr-hello:test",
		Files: []ociimage.File{{Path: "/hello", Mode: 0o755, SourcePath: buildHello(t)}}, Entrypoint: []string{"/hello"}}); err != nil {
		t.Fatal(err)
	}
	imgs := d.Import(t, "k8s.io", tarPath)
	if len(imgs) != 1 || imgs[0].Name != "registry.k8s.io/kubecpr-hello:test" {
		t.Fatalf("imported %+v", imgs)
	}
	c := d.Client(t)
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	img, err := c.GetImage(ctx, imgs[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"io.kubernetes.container.name": "etcd", "io.kubernetes.pod.namespace": "kube-system", "io.cri-containerd.kind": "container"}
	start = time.Now()
	ctr, err := c.NewContainer(ctx, "etcd-test", containerd.WithNewSnapshot("etcd-test-snap", img),
		containerd.WithContainerLabels(labels),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithHostNamespace(specs.NetworkNamespace), oci.WithProcessArgs("/hello", "etcd")))
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "out.log")
	task, err := ctr.NewTask(ctx, cio.LogFile(logPath))
	if err != nil {
		t.Fatal(err)
	}
	exit, _ := task.Wait(ctx)
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var out []byte
	for i := 0; i < 100 && !strings.Contains(string(out), "hello from container"); i++ {
		time.Sleep(50 * time.Millisecond)
		out, _ = os.ReadFile(logPath)
	}
	t.Logf("container started and printed after %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(string(out), "hello from container [etcd]") {
		t.Fatalf("container output %q", out)
	}
	found, err := c.Containers(ctx, `labels."io.kubernetes.container.name"==etcd`, `labels."io.kubernetes.pod.namespace"==kube-system`)
	if err != nil || len(found) != 1 || found[0].ID() != "etcd-test" {
		t.Fatalf("label filter found %v (%v)", found, err)
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
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		t.Fatal(err)
	}
}

// After a daemon is stopped nothing of it remains: no shim, no mount.
func TestCleanupLeavesNothing(t *testing.T) {
	var dir, sock string
	t.Run("daemon with a running container", func(t *testing.T) {
		d := ctrd.Start(t)
		dir, sock = d.Dir, d.Socket
		tarPath := filepath.Join(t.TempDir(), "img.tar")
		ociimage.WriteFile(tarPath, ociimage.Image{Name: "registry.k8s.io/kubecpr-hello:test",
			Files: []ociimage.File{{Path: "/hello", Mode: 0o755, SourcePath: buildHello(t)}}, Entrypoint: []string{"/hello"}})
		imgs := d.Import(t, "k8s.io", tarPath)
		c := d.Client(t)
		ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
		img, _ := c.GetImage(ctx, imgs[0].Name)
		ctr, err := c.NewContainer(ctx, "left-running", containerd.WithNewSnapshot("left-running", img),
			containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithHostNamespace(specs.NetworkNamespace)))
		if err != nil {
			t.Fatal(err)
		}
		task, err := ctr.NewTask(ctx, cio.NullIO)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if len(ctrd.Mounts(dir)) == 0 {
			t.Fatal("a running container has no rootfs mount?")
		}
	})
	if m := ctrd.Mounts(dir); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
	if out, _ := exec.Command("pgrep", "-f", sock).Output(); len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("processes left: %s", out)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s not removed", dir)
	}
}
