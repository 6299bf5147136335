package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubecpr/kubecpr/recovery/runtime"
	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/ctrd"
	"github.com/kubecpr/kubecpr/test/fixture"
	"github.com/kubecpr/kubecpr/test/kubecprbin"
	realkubelet "github.com/kubecpr/kubecpr/test/kubelet"
	"github.com/kubecpr/kubecpr/test/ociimage"
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
	imgs := []ociimage.Image{realkubelet.PauseImage(t, ctrd.DefaultSandboxImage)}
	for _, comp := range components {
		imgs = append(imgs, ociimage.Image{Name: imageName(t, n, comp), Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
			Files: []ociimage.File{{Path: "/usr/local/bin/" + comp, Mode: 0o755, SourcePath: filepath.Join(n.Bin, comp)}}})
	}
	tarPath := filepath.Join(t.TempDir(), "images.tar")
	if err := ociimage.WriteFile(tarPath, imgs...); err != nil {
		t.Fatal(err)
	}
	d.Import(t, runtime.Namespace, tarPath)
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
	kn := startKubeletNode(t)
	cs := kn.Client(t, "/etc/kubernetes/admin.conf")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
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
	time.Sleep(3 * time.Second)
	if _, err := kn.ListNamespaces(ctx, t, "/etc/kubernetes/admin.conf"); err == nil {
		t.Fatal("the expired control plane still answers")
	} else {
		t.Logf("symptom: %v", err)
	}
	t.Logf("kubelet on expired files:\n%s", kn.k.LogTail(30))

	start := time.Now()
	starts := kn.k.Starts()
	r := kubecprbin.Run(t, nil, "--root", kn.Root, "run", "--cri-socket", kn.d.Socket, "--restart-method", "containerd",
		"--kubelet-restart-command", kn.k.RestartCommand(), "--component-timeout", "3m")
	if r.Code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s\nkubelet:\n%s", r.Code, r.Stdout, r.Stderr, kn.k.LogTail(60))
	}
	t.Logf("kubecpr run with the real kubelet: %s\n%s", time.Since(start).Round(time.Millisecond), r.Stdout)
	if kn.k.Starts() <= starts {
		t.Error("kubecpr did not restart the kubelet")
	}
	cs = kn.Client(t, "/etc/kubernetes/admin.conf")
	if _, err := kn.ListNamespaces(ctx, t, "/etc/kubernetes/admin.conf"); err != nil {
		t.Fatalf("client-go with the new admin.conf: %v", err)
	}
	for _, c := range []struct {
		port int
		file string
	}{{kn.APIServerPort, "/etc/kubernetes/pki/apiserver.crt"}, {kn.EtcdClientPort, "/etc/kubernetes/pki/etcd/server.crt"}} {
		served, err := cluster.ServedCertificate(c.port)
		if err != nil {
			t.Fatal(err)
		}
		disk, _ := fixture.ReadCert(kn.Path(c.file))
		if served.SerialNumber.Cmp(disk.SerialNumber) != 0 || !time.Now().Before(served.NotAfter) {
			t.Errorf("port %d serves serial %s (until %s), disk %s has %s", c.port, served.SerialNumber, served.NotAfter, c.file, disk.SerialNumber)
		}
	}
	assertLeasesRenewed(ctx, t, cs, "kube-system", "kube-controller-manager", "kube-scheduler")
	assertLeasesRenewed(ctx, t, cs, "kube-node-lease", kn.Name)
}
