// Package staticpods is a test-only stand-in for the kubelet's static pod
// manager — a real kubelet cannot run in these tests. It plays exactly the
// part kubecpr relies on: every manifest in the node's manifests directory
// has a running container in a real containerd (namespace k8s.io, the
// kubelet's labels, host network, the node's /etc/kubernetes and
// /var/lib/etcd bind-mounted at their node paths); a container that stops is
// replaced by a new one; a container whose manifest is gone is stopped and
// removed. Logs go to /var/log/pods under the node root, as the kubelet's do.
package staticpods

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
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

	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/runtime"
)

// Runner is the stand-in kubelet.
type Runner struct {
	Root     string
	NodeName string
	client   *containerd.Client
	cancel   context.CancelFunc
	done     chan struct{}

	mu      sync.Mutex
	n       int
	Created map[string][]string // component → container ids, in order
	Errors  []string
	pods    []Pod // other pods the stand-in keeps running (pods.go)
}

type manifest struct {
	name, image string
	command     []string
}

// readManifests reads the static pod manifests under root with kubecpr's
// own manifest reader (name, image, command and args of the first
// container, as the kubelet would run them).
func readManifests(root string) (map[string]manifest, error) {
	n, err := node.New(root)
	if err != nil {
		return nil, err
	}
	files, err := filepath.Glob(n.Path(path.Join(node.ManifestsDir, "*.yaml")))
	if err != nil {
		return nil, err
	}
	out := map[string]manifest{}
	for _, f := range files {
		m, err := n.ReadManifest(path.Join(node.ManifestsDir, filepath.Base(f)))
		if err != nil {
			continue // being moved, or not a pod
		}
		out[m.Name] = manifest{name: m.Name, image: m.Image, command: m.Command}
	}
	return out, nil
}

// Start runs the stand-in against the containerd at socket until cleanup.
func Start(t testing.TB, root, nodeName, socket string) *Runner {
	t.Helper()
	c, err := containerd.New(socket, containerd.WithTimeout(5*time.Second), containerd.WithDefaultNamespace(runtime.Namespace))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), runtime.Namespace))
	r := &Runner{Root: root, NodeName: nodeName, client: c, cancel: cancel, done: make(chan struct{}), Created: map[string][]string{}}
	stopHealthz := r.serveHealthz(t)
	go r.loop(ctx)
	t.Cleanup(func() {
		cancel()
		<-r.done
		r.stopAll()
		stopHealthz()
		c.Close()
	})
	return r
}

// serveHealthz answers the kubelet's /healthz, as the real kubelet does,
// on a free loopback port written into the node's kubelet config
// (healthzBindAddress, healthzPort): kubecpr asks it whether the kubelet
// runs before waiting for it to recreate a container.
func (r *Runner) serveHealthz(t testing.TB) func() {
	t.Helper()
	cfg := filepath.Join(r.Root, "var/lib/kubelet/config.yaml")
	b, err := os.ReadFile(cfg)
	if err != nil {
		return func() {}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	var lines []string
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if !strings.HasPrefix(line, "healthzPort:") && !strings.HasPrefix(line, "healthzBindAddress:") {
			lines = append(lines, line)
		}
	}
	lines = append(lines, "healthzBindAddress: 127.0.0.1", fmt.Sprintf("healthzPort: %d", port))
	if err := os.WriteFile(cfg, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") })}
	go srv.Serve(l)
	return func() { srv.Close() }
}

func (r *Runner) loop(ctx context.Context) {
	defer close(r.done)
	for {
		// One pass may not hang the stand-in: a containerd call that does
		// not return (a loaded machine) is given up and retried.
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := r.sync(sctx)
		if perr := r.syncPods(sctx); err == nil {
			err = perr
		}
		cancel()
		if err != nil && ctx.Err() == nil {
			r.mu.Lock()
			if len(r.Errors) < 50 {
				r.Errors = append(r.Errors, err.Error())
			}
			r.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (r *Runner) sync(ctx context.Context) error {
	want, err := readManifests(r.Root)
	if err != nil {
		return err
	}
	list, err := r.client.Containers(ctx, fmt.Sprintf(`labels.%q==kube-system`, runtime.LabelPodNamespace))
	if err != nil {
		return err
	}
	running := map[string]bool{}
	for _, c := range list {
		info, err := c.Info(ctx)
		if err != nil {
			continue
		}
		if info.Labels[podLabel] != "" {
			continue // one of the other pods (pods.go)
		}
		name := info.Labels[runtime.LabelContainerName]
		alive := false
		if task, err := c.Task(ctx, nil); err == nil {
			if st, err := task.Status(ctx); err == nil && st.Status == containerd.Running {
				alive = true
			}
		}
		_, wanted := want[name]
		switch {
		case alive && wanted:
			running[name] = true
		case alive && !wanted:
			r.stop(ctx, c) // manifest removed: the kubelet kills the pod
		default:
			r.remove(ctx, c) // exited: the kubelet starts a new container
		}
	}
	for name, m := range want {
		if !running[name] {
			if err := r.create(ctx, m); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	return nil
}

func (r *Runner) create(ctx context.Context, m manifest) error {
	img, err := r.client.GetImage(ctx, m.image)
	if err != nil {
		return fmt.Errorf("image %s: %w", m.image, err)
	}
	r.mu.Lock()
	r.n++
	attempt := len(r.Created[m.name])
	id := fmt.Sprintf("%s-%d-%d", m.name, time.Now().UnixNano(), r.n)
	r.mu.Unlock()
	pod := m.name + "-" + r.NodeName
	uid := "uid-" + m.name
	labels := map[string]string{runtime.LabelContainerName: m.name, runtime.LabelPodName: pod,
		runtime.LabelPodNamespace: "kube-system", runtime.LabelPodUID: uid, runtime.LabelKind: "container"}
	var mounts []specs.Mount
	for _, p := range []string{"/etc/kubernetes", "/var/lib/etcd"} {
		src := filepath.Join(r.Root, p)
		os.MkdirAll(src, 0o755)
		mounts = append(mounts, specs.Mount{Destination: p, Type: "bind", Source: src, Options: []string{"rbind", "rw"}})
	}
	ctr, err := r.client.NewContainer(ctx, id, containerd.WithNewSnapshot(id, img), containerd.WithContainerLabels(labels),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithHostNamespace(specs.NetworkNamespace),
			oci.WithProcessArgs(m.command...), oci.WithMounts(mounts), oci.WithHostHostsFile, oci.WithHostResolvconf))
	if err != nil {
		return err
	}
	logPath := filepath.Join(r.Root, "var/log/pods", "kube-system_"+pod+"_"+uid, m.name, fmt.Sprintf("%d.log", attempt))
	return r.startTask(ctx, ctr, logPath, m.name, id)
}

// startTask starts the container's task with its log at logPath (as the
// kubelet lays out /var/log/pods) and records id as created for key; a
// container whose task cannot start is deleted again.
func (r *Runner) startTask(ctx context.Context, ctr containerd.Container, logPath, key, id string) error {
	os.MkdirAll(filepath.Dir(logPath), 0o755)
	task, err := ctr.NewTask(ctx, cio.LogFile(logPath))
	if err != nil {
		ctr.Delete(ctx, containerd.WithSnapshotCleanup)
		return err
	}
	if err := task.Start(ctx); err != nil {
		task.Delete(ctx)
		ctr.Delete(ctx, containerd.WithSnapshotCleanup)
		return err
	}
	r.mu.Lock()
	r.Created[key] = append(r.Created[key], id)
	r.mu.Unlock()
	return nil
}

func (r *Runner) stop(ctx context.Context, c containerd.Container) {
	if task, err := c.Task(ctx, nil); err == nil {
		exit, err := task.Wait(ctx)
		if err != nil {
			exit = nil // waited below with a timeout only: a nil channel never delivers
		}
		task.Kill(ctx, syscall.SIGTERM)
		select {
		case <-exit:
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
			task.Kill(ctx, syscall.SIGKILL)
			select {
			case <-exit:
			case <-ctx.Done():
			case <-time.After(10 * time.Second):
			}
		}
	}
	r.remove(ctx, c)
}

func (r *Runner) remove(ctx context.Context, c containerd.Container) {
	if task, err := c.Task(ctx, nil); err == nil {
		task.Delete(ctx, containerd.WithProcessKill)
	}
	c.Delete(ctx, containerd.WithSnapshotCleanup)
}

func (r *Runner) stopAll() {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), runtime.Namespace), 30*time.Second)
	defer cancel()
	list, _ := r.client.Containers(ctx)
	for _, c := range list {
		r.stop(ctx, c)
	}
}

// Containers returns the ids created for a component so far.
func (r *Runner) Containers(name string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.Created[name]...)
}

// Errs returns sync errors seen so far.
func (r *Runner) Errs() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.Errors, "\n")
}
