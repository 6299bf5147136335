package runtime

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
)

// Namespace is the containerd namespace the kubelet's CRI uses.
const Namespace = "k8s.io"

// Containerd is the Runtime on a containerd socket.
type Containerd struct {
	socket  string
	client  *containerd.Client
	timeout time.Duration
}

var _ Runtime = (*Containerd)(nil)

// NewContainerd connects to containerd. The error names the socket and
// what to check.
func NewContainerd(socket string, timeout time.Duration) (*Containerd, error) {
	socket = strings.TrimPrefix(socket, "unix://")
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	c, err := containerd.New(socket, containerd.WithTimeout(timeout), containerd.WithDefaultNamespace(Namespace))
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		_, err = c.Version(ctx)
		cancel()
		if err != nil {
			c.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cannot reach containerd at %s: %v; check that containerd runs (systemctl status containerd, crictl info) "+
			"or pass --cri-socket, or use --restart-method=manifests", socket, err)
	}
	return &Containerd{socket: socket, client: c, timeout: timeout}, nil
}

func (r *Containerd) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx = namespaces.WithNamespace(ctx, Namespace)
	return context.WithTimeout(ctx, r.timeout)
}

// ControlPlane lists kube-system containers by the kubelet's labels.
func (r *Containerd) ControlPlane(ctx context.Context) ([]Container, error) {
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	list, err := r.client.Containers(cctx, fmt.Sprintf(`labels.%q==kube-system`, LabelPodNamespace))
	if err != nil {
		return nil, fmt.Errorf("listing containers on %s: %w", r.socket, err)
	}
	var out []Container
	for _, c := range list {
		info, err := c.Info(cctx)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if k, ok := info.Labels[LabelKind]; ok && k != "container" {
			continue // a pod sandbox
		}
		ct := Container{ID: info.ID, Name: info.Labels[LabelContainerName], Pod: info.Labels[LabelPodName],
			Namespace: info.Labels[LabelPodNamespace], Image: info.Image, Created: info.CreatedAt}
		if task, err := c.Task(cctx, nil); err == nil {
			if st, err := task.Status(cctx); err == nil && st.Status == containerd.Running {
				ct.Running = true
			}
		}
		out = append(out, ct)
	}
	return out, nil
}

// Stop stops a container's task: SIGTERM, then SIGKILL after grace.
func (r *Containerd) Stop(ctx context.Context, id string, grace time.Duration) error {
	cctx, cancel := context.WithTimeout(namespaces.WithNamespace(ctx, Namespace), grace+r.timeout)
	defer cancel()
	c, err := r.client.LoadContainer(cctx, id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	task, err := c.Task(cctx, nil)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	exit, err := task.Wait(cctx)
	if err != nil {
		return err
	}
	if err := task.Kill(cctx, syscall.SIGTERM); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("SIGTERM to %s: %w", id, err)
	}
	select {
	case <-exit:
		return nil
	case <-time.After(grace):
	}
	if err := task.Kill(cctx, syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("SIGKILL to %s: %w", id, err)
	}
	select {
	case <-exit:
		return nil
	case <-cctx.Done():
		return fmt.Errorf("container %s did not stop: %w", id, cctx.Err())
	}
}

// Remove deletes the task and container.
func (r *Containerd) Remove(ctx context.Context, id string) error {
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	c, err := r.client.LoadContainer(cctx, id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if task, err := c.Task(cctx, nil); err == nil {
		if _, err := task.Delete(cctx); err != nil && !errdefs.IsNotFound(err) {
			return err
		}
	}
	if err := c.Delete(cctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return nil
}

// Close closes the connection.
func (r *Containerd) Close() error { return r.client.Close() }
