package bounce

// Every container that uses the renewed files, not only the four static
// pods: Anthos' etcd-defrag (seed 000) reads apiserver-etcd-client from a
// hostPath mount of the PKI directory and keeps the old certificate until
// it is restarted. Such containers are found by what their OCI specs
// bind-mount, whatever they are called.

import (
	"context"
	"fmt"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/runtime"
)

// kubeadmKubeconfigs are the kubeconfigs the kubeconfigs stage renews in
// /etc/kubernetes; any other *.conf there counts too.
var kubeadmKubeconfigs = []string{"admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"}

// Targets are the node paths whose contents a run renews, as a container
// may mount them.
type Targets struct {
	KubernetesDir string   // /etc/kubernetes: a mount of it exposes both below
	PKIDir        string   // /etc/kubernetes/pki (the cluster's certificatesDir)
	Kubeconfigs   []string // /etc/kubernetes/*.conf
}

// RenewedTargets are the renewed files of the node d runs on.
func RenewedTargets(d pipeline.Data) Targets {
	t := Targets{KubernetesDir: node.KubernetesDir, PKIDir: node.DefaultPKIDir}
	if cl := d.Cluster(); cl != nil && cl.PKIDir != "" {
		t.PKIDir = cl.PKIDir
	}
	seen := map[string]bool{}
	for _, f := range kubeadmKubeconfigs {
		p := path.Join(node.KubernetesDir, f)
		seen[p] = true
		t.Kubeconfigs = append(t.Kubeconfigs, p)
	}
	matches, _ := filepath.Glob(filepath.Join(d.Node().Path(node.KubernetesDir), "*.conf"))
	for _, m := range matches {
		if p := path.Join(node.KubernetesDir, filepath.Base(m)); !seen[p] {
			seen[p] = true
			t.Kubeconfigs = append(t.Kubeconfigs, p)
		}
	}
	sort.Strings(t.Kubeconfigs)
	return t
}

// MountUse is one mount of a container that exposes renewed files.
type MountUse struct {
	Source      string // node path of the mount's source
	Destination string // path inside the container
	ReadOnly    bool
}

func (u MountUse) String() string {
	s := u.Source + " → " + u.Destination
	if u.ReadOnly {
		s += " (read-only)"
	}
	return s
}

// User is a running container that mounts renewed files.
type User struct {
	runtime.Mounted
	Uses []MountUse
}

// Key names the container the way the kubelet keeps it across restarts:
// NAMESPACE/POD/CONTAINER.
func (u User) Key() string { return u.Namespace + "/" + u.Pod + "/" + u.Name }

// hostForms are the paths a mount source may use for node path p: its
// host path under the root as written (the kubelet passes a hostPath on as
// given) and with its links followed inside the root; and the node path
// itself, which is what a runtime serving a node under --root sees when it
// runs in a mount namespace where the node's files are at their node paths
// (the real-kubelet tests run containerd so).
func hostForms(n *node.Node, p string) []string {
	var out []string
	for _, f := range []string{n.Path(p), n.HostPath(p), p} {
		f = filepath.Clean(f)
		dup := false
		for _, o := range out {
			dup = dup || o == f
		}
		if !dup {
			out = append(out, f)
		}
	}
	return out
}

func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// MountedSource returns the node path of a mount source that exposes
// renewed files, and false for any other: the PKI directory or anything in
// it, a renewed kubeconfig, or /etc/kubernetes itself (it holds both).
// Broader host mounts (/, /etc: node exporters, log shippers) do not count:
// they do not read the cluster's credentials.
func (t Targets) MountedSource(n *node.Node, source string) (string, bool) {
	src := filepath.Clean(source)
	nodePath := func(host, np, hostDir string) string {
		rel, err := filepath.Rel(hostDir, host)
		if err != nil || rel == "." {
			return np
		}
		return path.Join(np, filepath.ToSlash(rel))
	}
	for _, h := range hostForms(n, t.KubernetesDir) {
		if src == h {
			return t.KubernetesDir, true
		}
	}
	for _, h := range hostForms(n, t.PKIDir) {
		if within(src, h) {
			return nodePath(src, t.PKIDir, h), true
		}
	}
	for _, k := range t.Kubeconfigs {
		for _, h := range hostForms(n, k) {
			if src == h {
				return k, true
			}
		}
	}
	return "", false
}

// FindUsers returns the running containers that mount renewed files,
// leaving out the static pods restarted on their own (the components in
// handled, in kube-system) and kubecpr's own recovery API server, in a
// stable order.
func FindUsers(n *node.Node, t Targets, cs []runtime.Mounted, handled []string) []User {
	skip := map[string]bool{}
	for _, c := range handled {
		skip[c] = true
	}
	var out []User
	for _, c := range cs {
		if c.Labels["io.kubecpr.role"] != "" {
			continue // kubecpr's own recovery API server: torn down by the csr stage
		}
		if c.Namespace == "kube-system" && skip[c.Name] {
			continue
		}
		var uses []MountUse
		for _, m := range c.Mounts {
			if np, ok := t.MountedSource(n, m.Source); ok {
				uses = append(uses, MountUse{Source: np, Destination: m.Destination, ReadOnly: m.ReadOnly})
			}
		}
		if len(uses) > 0 {
			out = append(out, User{Mounted: c, Uses: uses})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Managed() != out[j].Managed() {
			return out[i].Managed()
		}
		if out[i].Key() != out[j].Key() {
			return out[i].Key() < out[j].Key()
		}
		return out[i].ID < out[j].ID
	})
	return out
}

func usesText(uses []MountUse) string {
	var s []string
	for _, u := range uses {
		s = append(s, u.String())
	}
	return strings.Join(s, ", ")
}

// mountActions plans one restart per kubelet-managed container that
// mounts renewed files (after the static pods: the API server is back when
// they reconnect), and one notice per container nobody would restart.
//
// A dry run (plan) has no Runtime, only Inspect: it lists the containers
// and says which it would restart; a runtime it cannot reach is a note in
// the plan, not a failure, as the plan never needed it before.
func mountActions(ctx context.Context, d pipeline.Data, live *pipeline.Live, handled []string) ([]pipeline.Action, error) {
	dial, dry := live.Runtime, false
	if dial == nil {
		dial, dry = live.Inspect, true
	}
	if dial == nil {
		return nil, nil
	}
	rt, err := dial()
	var ml runtime.MountLister
	if err == nil {
		var ok bool
		if ml, ok = rt.(runtime.MountLister); !ok {
			return nil, nil
		}
	}
	var cs []runtime.Mounted
	if err == nil {
		cs, err = ml.Mounted(ctx)
	}
	if err != nil && dry {
		return []pipeline.Action{{ID: "bounce/mounts-unknown",
			Summary: fmt.Sprintf("restart every container that mounts renewed files (could not list them now: %v)", err),
			Run:     func(context.Context) (map[string]string, error) { return map[string]string{"skipped": "dry run"}, nil }}}, nil
	}
	if err != nil && len(handled) == 0 {
		// No static pod here (a worker): the run never needed the runtime
		// before, and a kubelet restarted through its service manager is
		// what recovers a worker. Say what was not checked, and go on.
		return []pipeline.Action{{ID: "bounce/mounts-unknown",
			Summary: fmt.Sprintf("containers that mount renewed files not checked: the container runtime could not be reached (%v); if any pod mounts /etc/kubernetes or its pki, restart it once the node is back (crictl stop ID)", err),
			Run: func(context.Context) (map[string]string, error) {
				return map[string]string{"skipped": "container runtime unreachable"}, nil
			}}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("finding the containers that mount renewed files: %w", err)
	}
	var acts []pipeline.Action
	seen := map[string]bool{}
	for _, u := range FindUsers(d.Node(), RenewedTargets(d), cs, handled) {
		u := u
		if !u.Managed() {
			acts = append(acts, pipeline.Action{
				ID: "bounce/unmanaged/" + u.ID,
				Summary: fmt.Sprintf("leave container %s alone although it mounts %s: it has no io.kubernetes.* labels, so no kubelet would start it again; restart it yourself (crictl/ctr/nerdctl)",
					u.ID, usesText(u.Uses)),
				Run: func(ctx context.Context) (map[string]string, error) {
					return map[string]string{"skipped": "not managed by the kubelet", "container": u.ID}, nil
				},
			})
			continue
		}
		if seen[u.Key()] {
			continue // an older instance still running beside its replacement
		}
		seen[u.Key()] = true
		key := u.Key()
		acts = append(acts, pipeline.Action{
			ID: "bounce/mounts/" + key,
			Summary: fmt.Sprintf("restart container %s of pod %s/%s: it mounts %s; stop its task, the kubelet starts a new one",
				u.Name, u.Namespace, u.Pod, usesText(u.Uses)),
			Run: func(ctx context.Context) (map[string]string, error) {
				return restartUser(ctx, d, key)
			},
		})
	}
	return acts, nil
}

// undoMount restarts the container again once rollback restored the files.
func undoMount(ctx context.Context, d pipeline.Data, name string) error {
	_, err := restartUser(ctx, d, strings.TrimPrefix(name, "mounts/"))
	return err
}

func splitKey(key string) (ns, pod, name string) {
	parts := strings.SplitN(key, "/", 3)
	for len(parts) < 3 {
		parts = append(parts, "")
	}
	return parts[0], parts[1], parts[2]
}

// findRunning returns the newest running container with that key.
func findRunning(ctx context.Context, ml runtime.MountLister, key string) (runtime.Mounted, bool, error) {
	cs, err := ml.Mounted(ctx)
	if err != nil {
		return runtime.Mounted{}, false, err
	}
	var best runtime.Mounted
	found := false
	for _, c := range cs {
		u := User{Mounted: c}
		if u.Managed() && u.Key() == key && (!found || c.Created.After(best.Created)) {
			best, found = c, true
		}
	}
	return best, found, nil
}

// restartUser stops the running container of key (NAMESPACE/POD/CONTAINER)
// and proves that the kubelet replaced it: a new container id with a task
// running under a new pid.
func restartUser(ctx context.Context, d pipeline.Data, key string) (map[string]string, error) {
	live := d.Live()
	if live == nil || live.Runtime == nil {
		return nil, fmt.Errorf("%s: no container runtime configured (pass --cri-socket)", key)
	}
	rt, err := live.Runtime()
	if err != nil {
		return nil, err
	}
	ml, ok := rt.(runtime.MountLister)
	if !ok {
		return nil, fmt.Errorf("%s: the container runtime cannot list mounts", key)
	}
	start := time.Now()
	timeout := live.ComponentTimeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	old, running, err := findRunning(cctx, ml, key)
	if err != nil {
		return nil, err
	}
	facts := map[string]string{"container": key}
	if running {
		facts["old_container"], facts["old_pid"] = old.ID, fmt.Sprint(old.Pid)
		if err := rt.Stop(cctx, old.ID, stopGrace(live, timeout)); err != nil {
			return nil, fmt.Errorf("stopping container %s (%s): %w", old.ID, key, err)
		}
	} else {
		fmt.Fprintf(d.Out(), "      %s is not running now: waiting for the kubelet to start it\n", key)
	}
	for {
		cur, ok, err := findRunning(cctx, ml, key)
		if err == nil && ok && cur.ID != old.ID && (old.Pid == 0 || cur.Pid != old.Pid) {
			facts["new_container"], facts["new_pid"] = cur.ID, fmt.Sprint(cur.Pid)
			dur := time.Since(start).Round(time.Millisecond)
			facts["duration"] = dur.String()
			fmt.Fprintf(d.Out(), "      %s: container %.12s (pid %d) replaced by %.12s (pid %d) after %s\n", key, old.ID, old.Pid, cur.ID, cur.Pid, dur)
			return facts, nil
		}
		select {
		case <-cctx.Done():
			ns, pod, name := splitKey(key)
			return nil, fmt.Errorf("the kubelet did not start a new %s container within %s after container %.12s was stopped: "+
				"check the pod (kubectl -n %s describe pod %s; crictl ps -a --name %s); a pod with restartPolicy Never is not restarted; "+
				"`kubecpr resume` waits again", key, timeout, old.ID, ns, pod, name)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
