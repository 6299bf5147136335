package staticpods

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kubecpr/kubecpr/recovery/runtime"
)

// Pod is a pod the stand-in keeps running besides the static pods — a
// DaemonSet's pod (Anthos' etcd-defrag) as far as the runtime sees it: the
// kubelet's labels, host network, the hostPath volumes as bind mounts. A
// container that stops is replaced by a new one in the same pod (same
// name and UID), as the kubelet does under restartPolicy Always.
type Pod struct {
	Namespace, Name, UID string
	Container, Image     string
	Args                 []string
	Mounts               []Mount
}

// Mount is a hostPath volume: Source is a host path.
type Mount struct {
	Source, Destination string
	ReadOnly            bool
}

// Key is NAMESPACE/POD/CONTAINER, as Runner.Containers takes it.
func (p Pod) Key() string { return p.Namespace + "/" + p.Name + "/" + p.Container }

// podLabel marks the containers of these pods, so the static pod sync
// leaves them alone (the real kubelet keeps both kinds apart by source).
const podLabel = "io.kubecpr.test/standin-pod"

// AddPod has the stand-in run p from now on; its containers are listed by
// Containers(p.Key()).
func (r *Runner) AddPod(p Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pods = append(r.pods, p)
}

func (r *Runner) syncPods(ctx context.Context) error {
	r.mu.Lock()
	pods := append([]Pod(nil), r.pods...)
	r.mu.Unlock()
	if len(pods) == 0 {
		return nil
	}
	list, err := r.client.Containers(ctx)
	if err != nil {
		return err
	}
	running := map[string]bool{}
	for _, c := range list {
		info, err := c.Info(ctx)
		if err != nil || info.Labels[podLabel] == "" {
			continue
		}
		alive := false
		if task, err := c.Task(ctx, nil); err == nil {
			if st, err := task.Status(ctx); err == nil && st.Status == containerd.Running {
				alive = true
			}
		}
		if alive {
			running[info.Labels[podLabel]] = true
		} else {
			r.remove(ctx, c) // exited: a new container takes its place
		}
	}
	for _, p := range pods {
		if !running[p.Key()] {
			if err := r.createPod(ctx, p); err != nil {
				return fmt.Errorf("pod %s: %w", p.Key(), err)
			}
		}
	}
	return nil
}

func (r *Runner) createPod(ctx context.Context, p Pod) error {
	img, err := r.client.GetImage(ctx, p.Image)
	if err != nil {
		return fmt.Errorf("image %s: %w", p.Image, err)
	}
	r.mu.Lock()
	r.n++
	attempt := len(r.Created[p.Key()])
	id := fmt.Sprintf("%s-%d-%d", p.Container, time.Now().UnixNano(), r.n)
	r.mu.Unlock()
	labels := map[string]string{runtime.LabelContainerName: p.Container, runtime.LabelPodName: p.Name,
		runtime.LabelPodNamespace: p.Namespace, runtime.LabelPodUID: p.UID, runtime.LabelKind: "container", podLabel: p.Key()}
	var mounts []specs.Mount
	for _, m := range p.Mounts {
		opts := []string{"rbind", "rprivate", "rw"}
		if m.ReadOnly {
			opts = []string{"rbind", "rprivate", "ro"}
		}
		mounts = append(mounts, specs.Mount{Destination: m.Destination, Type: "bind", Source: m.Source, Options: opts})
	}
	specOpts := []oci.SpecOpts{oci.WithImageConfig(img), oci.WithHostNamespace(specs.NetworkNamespace), oci.WithMounts(mounts),
		oci.WithHostHostsFile, oci.WithHostResolvconf}
	if len(p.Args) > 0 {
		specOpts = append(specOpts, oci.WithProcessArgs(p.Args...))
	}
	ctr, err := r.client.NewContainer(ctx, id, containerd.WithNewSnapshot(id, img), containerd.WithContainerLabels(labels),
		containerd.WithNewSpec(specOpts...))
	if err != nil {
		return err
	}
	logPath := filepath.Join(r.Root, "var/log/pods", p.Namespace+"_"+p.Name+"_"+p.UID, p.Container, fmt.Sprintf("%d.log", attempt))
	return r.startTask(ctx, ctr, logPath, p.Key(), id)
}
