package runtime

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
)

// Mounted is a running container of the namespace with the host paths its
// OCI spec bind-mounts: what the bounce stage reads to find every container
// that uses renewed files, whatever its name.
type Mounted struct {
	Container
	PodUID string
	Labels map[string]string
	Mounts []Mount
	Pid    uint32
}

// Managed reports whether the kubelet runs the container (it carries the
// kubelet's io.kubernetes.* labels), so that a stopped task is replaced.
func (m Mounted) Managed() bool {
	return m.Labels[LabelPodName] != "" && m.Labels[LabelPodNamespace] != "" && m.Labels[LabelContainerName] != ""
}

// MountLister lists every running container with its mounts. An optional
// ability of a Runtime, found by type assertion: fakes that do not need it
// leave it out.
type MountLister interface {
	Mounted(ctx context.Context) ([]Mounted, error)
}

var _ MountLister = (*Containerd)(nil)

// Mounted lists the running containers (not sandboxes) of the k8s.io
// namespace, whoever made them, with the bind mounts of their OCI specs.
// A container that goes away while it is read is left out.
func (r *Containerd) Mounted(ctx context.Context) ([]Mounted, error) {
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	list, err := r.client.Containers(cctx)
	if err != nil {
		return nil, fmt.Errorf("listing containers on %s: %w", r.socket, err)
	}
	var out []Mounted
	for _, c := range list {
		info, err := c.Info(cctx)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading container %s on %s: %w", c.ID(), r.socket, err)
		}
		if k, ok := info.Labels[LabelKind]; ok && k != "container" {
			continue // a pod sandbox
		}
		task, err := c.Task(cctx, nil)
		if err != nil {
			continue // no task: nothing runs on the files
		}
		st, err := task.Status(cctx)
		if err != nil || st.Status != containerd.Running {
			continue
		}
		spec, err := c.Spec(cctx)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading the OCI spec of container %s on %s: %w", c.ID(), r.socket, err)
		}
		m := Mounted{
			Container: Container{ID: info.ID, Name: info.Labels[LabelContainerName], Pod: info.Labels[LabelPodName],
				Namespace: info.Labels[LabelPodNamespace], Image: info.Image, Created: info.CreatedAt, Running: true},
			PodUID: info.Labels[LabelPodUID], Labels: info.Labels, Pid: task.Pid(),
		}
		for _, sm := range spec.Mounts {
			if !isBind(sm.Type, sm.Options) || sm.Source == "" {
				continue
			}
			m.Mounts = append(m.Mounts, Mount{Source: filepath.Clean(sm.Source), Destination: sm.Destination, ReadOnly: hasOption(sm.Options, "ro")})
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// isBind: the CRI writes a hostPath volume as type "bind" with rbind;
// older runtimes leave the type empty and say it in the options.
func isBind(typ string, opts []string) bool {
	return typ == "bind" || hasOption(opts, "bind") || hasOption(opts, "rbind")
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}
