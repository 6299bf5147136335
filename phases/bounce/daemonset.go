package bounce

import (
	"context"
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kubecpr/kubecpr/recovery/kube"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
)

// restartDaemonSet rolls a DaemonSet's pods the way `kubectl rollout
// restart` does (a new kubectl.kubernetes.io/restartedAt annotation on the
// pod template), for workloads that hold client certificates of their own
// (Anthos' etcd-defrag, seed 000). It uses the renewed admin.conf.
func restartDaemonSet(ctx context.Context, d pipeline.Data, nsName string) (map[string]string, error) {
	ns, name, ok := strings.Cut(nsName, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("--restart-daemonset %q: want NAMESPACE/NAME", nsName)
	}
	cfg, err := d.Node().RESTConfig(node.KubernetesDir + "/admin.conf")
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 30 * time.Second
	cs, err := kube.New(cfg)
	if err != nil {
		return nil, err
	}
	at := time.Now().UTC().Format(time.RFC3339)
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, at)
	if err := cs.PatchDaemonSet(ctx, ns, name, types.StrategicMergePatchType, []byte(patch), metav1PatchOptions()); err != nil {
		return nil, fmt.Errorf("restarting DaemonSet %s: %w", nsName, err)
	}
	fmt.Fprintf(d.Out(), "      DaemonSet %s restarted (restartedAt %s)\n", nsName, at)
	return map[string]string{"restartedAt": at}, nil
}

func metav1PatchOptions() metav1.PatchOptions { return metav1.PatchOptions{FieldManager: "kubecpr"} }
