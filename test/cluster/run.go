package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/kubecpr/kubecpr/recovery/runtime"
	"github.com/kubecpr/kubecpr/test/ctrd"
	"github.com/kubecpr/kubecpr/test/ociimage"
	"github.com/kubecpr/kubecpr/test/staticpods"
)

// RunOptions for StartControlPlanes.
type RunOptions struct {
	// Controllers also runs kube-controller-manager and kube-scheduler.
	// Without it their manifests are moved out of every node (to
	// RunningNode.IdleManifests, outside the tree) before the stand-in
	// starts, so only etcd and kube-apiserver run: faster, and kubecpr's
	// bounce stage restarts only the components whose manifests it finds.
	Controllers bool
	// Timeout for every etcd member to be healthy and every apiserver
	// ready (default 2 min).
	Timeout time.Duration
}

// Running is a ControlPlanes cluster whose static pods run in real
// containerd daemons, one per node, as on real nodes.
type Running struct {
	Nodes []*RunningNode
}

// RunningNode is one node of a Running cluster.
type RunningNode struct {
	*Node
	// D is the node's own containerd; Socket its socket (kubecpr's
	// --cri-socket for this node).
	D      *ctrd.Daemon
	Socket string
	// Pods is the kubelet stand-in running the node's static pods in D.
	Pods *staticpods.Runner
	// KubeletRestartCommand is a shell line usable as kubecpr's
	// --kubelet-restart-command for this node. The stand-in needs no
	// restart (it reads the manifests every 200 ms and uses no
	// credential), so the command only records that it ran: one line
	// appended to KubeletRestartLog, outside the node tree.
	KubeletRestartCommand string
	KubeletRestartLog     string
	// IdleManifests holds the kube-controller-manager and kube-scheduler
	// manifests moved out of the node when RunOptions.Controllers is off
	// ("" otherwise).
	IdleManifests string
}

// Node returns the running node of n (nil if n is not part of r).
func (r *Running) Node(n *Node) *RunningNode {
	for _, rn := range r.Nodes {
		if rn.Node == n {
			return rn
		}
	}
	return nil
}

// KubeletRestarts is how many times KubeletRestartCommand has run.
func (rn *RunningNode) KubeletRestarts() int {
	b, _ := os.ReadFile(rn.KubeletRestartLog)
	return strings.Count(string(b), "\n")
}

// PodLog returns the output of the newest container the stand-in started
// for a component (its log under <root>/var/log/pods, as the kubelet's).
func (rn *RunningNode) PodLog(comp string) string {
	dir := rn.Path(fmt.Sprintf("/var/log/pods/kube-system_%s-%s_uid-%s/%s", comp, rn.Name, comp, comp))
	ents, _ := os.ReadDir(dir)
	newest, name := -1, ""
	for _, e := range ents {
		if i, err := strconv.Atoi(strings.TrimSuffix(e.Name(), ".log")); err == nil && i > newest {
			newest, name = i, e.Name()
		}
	}
	if name == "" {
		return ""
	}
	b, _ := os.ReadFile(filepath.Join(dir, name))
	return string(b)
}

// PodLogTail is the last n lines of PodLog.
func (rn *RunningNode) PodLogTail(comp string, n int) string {
	lines := strings.Split(strings.TrimRight(rn.PodLog(comp), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Components are the static pods running on the node (manifests present).
func (rn *RunningNode) Components() []string {
	var out []string
	for _, c := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if exists(rn.Path("/etc/kubernetes/manifests/" + c + ".yaml")) {
			out = append(out, c)
		}
	}
	return out
}

// diagnostics is what a failure message shows of the node: stand-in
// errors and the tails of its pods' logs.
func (rn *RunningNode) diagnostics() string {
	var b strings.Builder
	fmt.Fprintf(&b, "--- node %s (%s, containerd %s)\n", rn.Name, rn.addr(), rn.Socket)
	if e := rn.Pods.Errs(); e != "" {
		fmt.Fprintf(&b, "stand-in errors:\n%s\n", e)
	}
	for _, c := range rn.Components() {
		fmt.Fprintf(&b, "%s (%d containers so far), last log lines:\n%s\n", c, len(rn.Pods.Containers(c)), rn.PodLogTail(c, 8))
	}
	return b.String()
}

// Diagnostics of every node (for failure messages).
func (r *Running) Diagnostics() string {
	var parts []string
	for _, rn := range r.Nodes {
		parts = append(parts, rn.diagnostics())
	}
	return strings.Join(parts, "")
}

// imageOf returns the image of a node's static pod manifest.
func imageOf(n *Node, comp string) (string, error) {
	pod, err := n.Pod(comp)
	if err != nil {
		return "", err
	}
	return pod.Spec.Containers[0].Image, nil
}

// StartControlPlanes runs the static pods of the nodes (made by
// ControlPlanes) the way real nodes run them: one real containerd per
// node (ctrd.Start: own root, state and socket), images named as in the
// manifests holding the test binaries (built once, imported into every
// daemon concurrently), and the kubelet stand-in (staticpods) on each node
// starting a container, host network, the kubelet's labels, per manifest,
// and a new one whenever a container stops. Host networking lets node i
// bind 127.0.0.i.
//
// It waits until every member is healthy (EtcdHealthy on each node, then
// the real `etcdctl endpoint health --cluster`) and every apiserver
// answers /readyz "ok" with the node's admin.conf, creates the
// kubeadm:cluster-admins binding (GrantClusterAdmins) and logs the
// timings. Everything stops in cleanup: the stand-ins first, then the
// daemons with every container.
func StartControlPlanes(t testing.TB, nodes []*Node, o RunOptions) *Running {
	t.Helper()
	if len(nodes) == 0 {
		t.Fatal("StartControlPlanes: no node")
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
	start := time.Now()
	r := &Running{}
	for _, n := range nodes {
		if n.IsWorker {
			t.Fatalf("StartControlPlanes: %s is a worker", n.Name)
		}
		rn := &RunningNode{Node: n}
		dir := t.TempDir()
		rn.KubeletRestartLog = filepath.Join(dir, "kubelet-restarts")
		rn.KubeletRestartCommand = "echo restarted >> " + shellQuote(rn.KubeletRestartLog)
		if !o.Controllers {
			rn.IdleManifests = filepath.Join(dir, "idle-manifests")
			if err := os.MkdirAll(rn.IdleManifests, 0o700); err != nil {
				t.Fatal(err)
			}
			for _, c := range []string{"kube-controller-manager", "kube-scheduler"} {
				src := n.Path("/etc/kubernetes/manifests/" + c + ".yaml")
				if exists(src) {
					if err := os.Rename(src, filepath.Join(rn.IdleManifests, c+".yaml")); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		r.Nodes = append(r.Nodes, rn)
	}

	// One image per component, the same on every node (one version).
	var imgs []ociimage.Image
	seen := map[string]bool{}
	for _, rn := range r.Nodes {
		for _, c := range rn.Components() {
			name, err := imageOf(rn.Node, c)
			if err != nil {
				t.Fatal(err)
			}
			if seen[name] {
				continue
			}
			seen[name] = true
			imgs = append(imgs, ociimage.Image{Name: name, Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
				Files: []ociimage.File{{Path: "/usr/local/bin/" + c, Mode: 0o755, SourcePath: filepath.Join(rn.Bin, c)}}})
		}
	}
	tarPath := filepath.Join(t.TempDir(), "images.tar")
	if err := ociimage.WriteFile(tarPath, imgs...); err != nil {
		t.Fatal(err)
	}
	imagesBuilt := time.Since(start)

	for _, rn := range r.Nodes {
		rn.D = ctrd.Start(t)
		rn.Socket = rn.D.Socket
	}
	daemonsUp := time.Since(start)
	errs := make([]error, len(r.Nodes))
	var wg sync.WaitGroup
	for i, rn := range r.Nodes {
		wg.Add(1)
		go func(i int, rn *RunningNode) {
			defer wg.Done()
			errs[i] = importImages(rn.D, tarPath)
		}(i, rn)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("node %s: importing the control-plane images: %v", r.Nodes[i].Name, err)
		}
	}
	os.Remove(tarPath)
	imported := time.Since(start)

	for _, rn := range r.Nodes {
		rn.Pods = staticpods.Start(t, rn.Root, rn.Name, rn.Socket)
	}
	// Runs before the stand-ins' own cleanup, which stops containers one
	// by one with SIGTERM and up to 10 s each (an apiserver waiting for
	// etcd takes all of it).
	t.Cleanup(r.killAll)
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	defer cancel()
	if err := r.WaitHealthy(ctx, t); err != nil {
		t.Fatalf("control planes did not come up: %v\n%s", err, r.Diagnostics())
	}
	healthy := time.Since(start)
	if err := r.Nodes[0].GrantClusterAdmins(ctx, t); err != nil {
		t.Fatalf("kubeadm:cluster-admins: %v", err)
	}
	t.Logf("cluster: %d control planes running in containerd in %s (images built %s, %d daemons up %s, images imported %s, etcd healthy and apiservers ready %s)",
		len(r.Nodes), time.Since(start).Round(time.Millisecond), imagesBuilt.Round(time.Millisecond), len(r.Nodes),
		daemonsUp.Round(time.Millisecond), imported.Round(time.Millisecond), healthy.Round(time.Millisecond))
	return r
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// importImages loads an OCI image tar into the kubelet's namespace of the
// daemon and unpacks it for the daemon's snapshotter (ctrd.Daemon.Import
// without the testing.TB, so daemons import concurrently).
func importImages(d *ctrd.Daemon, tarPath string) error {
	c, err := containerd.New(d.Socket, containerd.WithTimeout(5*time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := namespaces.WithNamespace(context.Background(), runtime.Namespace)
	f, err := os.Open(tarPath)
	if err != nil {
		return err
	}
	defer f.Close()
	imgs, err := c.Import(ctx, f)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		if err := containerd.NewImage(c, img).Unpack(ctx, d.Snapshotter); err != nil {
			return fmt.Errorf("unpack %s: %w", img.Name, err)
		}
	}
	return nil
}

// WaitHealthy waits until every node's etcd member is healthy (EtcdHealthy,
// with the node's own certificates), the real `etcdctl endpoint health
// --cluster` passes from the first node, and every apiserver answers
// /readyz "ok" with its admin.conf. The error names what was last seen on
// each node that was not.
func (r *Running) WaitHealthy(ctx context.Context, t testing.TB) error {
	t.Helper()
	var mu sync.Mutex
	last := map[string]string{}
	var wg sync.WaitGroup
	for _, rn := range r.Nodes {
		wg.Add(1)
		go func(rn *RunningNode) {
			defer wg.Done()
			for {
				err := EtcdHealthy(t, rn.Node)
				if err == nil {
					break
				}
				mu.Lock()
				last[rn.Name+" etcd"] = err.Error()
				mu.Unlock()
				select {
				case <-ctx.Done():
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
			mu.Lock()
			delete(last, rn.Name+" etcd")
			mu.Unlock()
			if err := rn.WaitAPIServer(ctx, AdminConf); err != nil {
				mu.Lock()
				last[rn.Name+" kube-apiserver"] = err.Error()
				mu.Unlock()
			}
		}(rn)
	}
	wg.Wait()
	if len(last) > 0 {
		var keys []string
		for k := range last {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&b, "\n  %s: %s", k, last[k])
		}
		return fmt.Errorf("not healthy after waiting (%v):%s", ctx.Err(), b.String())
	}
	if out, err := EtcdClusterHealth(t, r.Nodes[0].Node); err != nil || strings.Count(out, "is healthy") != len(r.Nodes) {
		return fmt.Errorf("etcdctl endpoint health --cluster: %v\n%s", err, out)
	}
	return nil
}

// Restart restarts every control-plane container of the node the way a
// kubelet-managed node restarts: each container is stopped through the
// node's containerd (SIGTERM, SIGKILL after 1 s, as kubecpr's containerd
// method does) and the stand-in starts a new one from the manifest. It
// returns when every component has a new running container (not when it
// is healthy).
func (rn *RunningNode) Restart(t testing.TB) {
	t.Helper()
	if err := rn.restart(); err != nil {
		t.Fatalf("restarting node %s: %v\n%s", rn.Name, err, rn.diagnostics())
	}
}

func (rn *RunningNode) restart() error {
	rt, err := runtime.NewContainerd(rn.Socket, 10*time.Second)
	if err != nil {
		return err
	}
	defer rt.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	comps := rn.Components()
	before := map[string]int{}
	for _, c := range comps {
		before[c] = len(rn.Pods.Containers(c))
	}
	cs, err := rt.ControlPlane(ctx)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(cs))
	for i, c := range cs {
		if !c.Running {
			continue
		}
		wg.Add(1)
		go func(i int, id string) {
			defer wg.Done()
			errs[i] = rt.Stop(ctx, id, time.Second)
		}(i, c.ID)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	for {
		cs, err := rt.ControlPlane(ctx)
		if err != nil {
			return err
		}
		done := true
		for _, c := range comps {
			newest, ok := runtime.Newest(cs, c)
			if len(rn.Pods.Containers(c)) <= before[c] || !ok || !newest.Running {
				done = false
			}
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no new running container for every component of %v: %w", comps, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// RestartAll restarts every node (Restart) at once.
func (r *Running) RestartAll(t testing.TB) {
	t.Helper()
	errs := make([]error, len(r.Nodes))
	var wg sync.WaitGroup
	for i, rn := range r.Nodes {
		wg.Add(1)
		go func(i int, rn *RunningNode) {
			defer wg.Done()
			errs[i] = rn.restart()
		}(i, rn)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("restarting node %s: %v\n%s", r.Nodes[i].Name, err, r.Diagnostics())
		}
	}
}

// killAll ends the test's control planes fast, every node at once: the
// static pod directory is moved aside (so the stand-in starts nothing new)
// and every container is killed with SIGKILL.
func (r *Running) killAll() {
	var wg sync.WaitGroup
	for _, rn := range r.Nodes {
		wg.Add(1)
		go func(rn *RunningNode) {
			defer wg.Done()
			_ = os.Rename(rn.Path("/etc/kubernetes/manifests"), rn.Path("/etc/kubernetes/manifests.stopped-by-harness"))
			rt, err := runtime.NewContainerd(rn.Socket, 5*time.Second)
			if err != nil {
				return
			}
			defer rt.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cs, _ := rt.ControlPlane(ctx)
			var cwg sync.WaitGroup
			for _, c := range cs {
				cwg.Add(1)
				go func(id string) {
					defer cwg.Done()
					_ = rt.Stop(ctx, id, 0)
				}(c.ID)
			}
			cwg.Wait()
		}(rn)
	}
	wg.Wait()
}
