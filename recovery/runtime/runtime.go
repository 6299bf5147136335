// Package runtime is the small set of container verbs kubecpr needs to
// restart a control plane, with our own types in and out. The containerd
// implementation talks to the node's containerd in namespace k8s.io; tests
// use the same implementation against a real containerd of their own.
package runtime

import (
	"context"
	"time"
)

// Kubelet labels kubecpr finds control-plane containers by.
const (
	LabelContainerName = "io.kubernetes.container.name"
	LabelPodName       = "io.kubernetes.pod.name"
	LabelPodNamespace  = "io.kubernetes.pod.namespace"
	LabelPodUID        = "io.kubernetes.pod.uid"
	LabelKind          = "io.cri-containerd.kind"
)

// Container is one container as kubecpr sees it.
type Container struct {
	ID        string
	Name      string // io.kubernetes.container.name: "etcd", "kube-apiserver", ...
	Pod       string
	Namespace string
	Image     string
	Running   bool
	Created   time.Time
}

// Runtime is what the bounce stage needs from a container runtime.
type Runtime interface {
	// ControlPlane lists the kube-system containers (not sandboxes).
	ControlPlane(ctx context.Context) ([]Container, error)
	// Stop sends SIGTERM, waits up to grace, then SIGKILL. A container or
	// task that is already gone is not an error.
	Stop(ctx context.Context, id string, grace time.Duration) error
	// Remove deletes a stopped container. Not found is not an error.
	Remove(ctx context.Context, id string) error
	Close() error
}

// Newest returns the most recently created container with that name.
func Newest(cs []Container, name string) (Container, bool) {
	var best Container
	found := false
	for _, c := range cs {
		if c.Name == name && (!found || c.Created.After(best.Created)) {
			best, found = c, true
		}
	}
	return best, found
}
