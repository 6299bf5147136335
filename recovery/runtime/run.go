package runtime

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Mount is a bind mount of a host path into a container.
type Mount struct {
	Source, Destination string
	ReadOnly            bool
}

// RunSpec describes a container kubecpr runs itself (the recovery API
// server): never with the kubelet's io.kubernetes.* labels, so the kubelet
// leaves it alone.
type RunSpec struct {
	ID      string
	Image   string
	Args    []string
	Labels  map[string]string
	Mounts  []Mount
	LogPath string
}

// Run creates and starts a host-network container from an image already
// in the node's containerd, and returns its task's host pid.
func (r *Containerd) Run(ctx context.Context, s RunSpec) (int, error) {
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	img, err := r.client.GetImage(cctx, s.Image)
	if errdefs.IsNotFound(err) {
		return 0, fmt.Errorf("image %s is not in containerd's %s namespace (on %s): pass --apiserver-binary PATH to run the binary instead", s.Image, Namespace, r.socket)
	}
	if err != nil {
		return 0, err
	}
	var mounts []specs.Mount
	for _, m := range s.Mounts {
		opts := []string{"rbind", "rw"}
		if m.ReadOnly {
			opts = []string{"rbind", "ro"}
		}
		mounts = append(mounts, specs.Mount{Source: m.Source, Destination: m.Destination, Type: "bind", Options: opts})
	}
	ctr, err := r.client.NewContainer(cctx, s.ID, containerd.WithNewSnapshot(s.ID, img), containerd.WithContainerLabels(s.Labels),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithHostNamespace(specs.NetworkNamespace),
			oci.WithProcessArgs(s.Args...), oci.WithMounts(mounts), oci.WithHostHostsFile, oci.WithHostResolvconf))
	if err != nil {
		return 0, fmt.Errorf("creating container %s: %w", s.ID, err)
	}
	if err := os.MkdirAll(filepath.Dir(s.LogPath), 0o700); err != nil {
		return 0, err
	}
	task, err := ctr.NewTask(cctx, cio.LogFile(s.LogPath))
	if err != nil {
		ctr.Delete(cctx, containerd.WithSnapshotCleanup)
		return 0, fmt.Errorf("creating the task of %s: %w", s.ID, err)
	}
	if err := task.Start(cctx); err != nil {
		task.Delete(cctx)
		ctr.Delete(cctx, containerd.WithSnapshotCleanup)
		return 0, fmt.Errorf("starting %s: %w", s.ID, err)
	}
	return int(task.Pid()), nil
}

// Running reports whether a container's task runs.
func (r *Containerd) Running(ctx context.Context, id string) bool {
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	c, err := r.client.LoadContainer(cctx, id)
	if err != nil {
		return false
	}
	task, err := c.Task(cctx, nil)
	if err != nil {
		return false
	}
	st, err := task.Status(cctx)
	return err == nil && st.Status == containerd.Running
}
