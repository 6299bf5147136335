package distro

import (
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/kubecpr/kubecpr/recovery/node"
)

// The OpenShift 4 node layout, as the operators write it (docs/openshift.md
// names the source of each path):
//
//   - openshift/machine-config-operator, templates/*/01-*-kubelet: the
//     kubelet runs with --bootstrap-kubeconfig=/etc/kubernetes/kubeconfig,
//     --kubeconfig=/var/lib/kubelet/kubeconfig and
//     --config=/etc/kubernetes/kubelet.conf (a KubeletConfiguration with
//     rotateCertificates and serverTLSBootstrap, clientCAFile
//     /etc/kubernetes/kubelet-ca.crt); its rotating certificates live in
//     /var/lib/kubelet/pki as kubelet-client-current.pem and
//     kubelet-server-current.pem. The machine-config server writes the
//     bootstrap kubeconfig (pkg/server: defaultMachineKubeConfPath) with the
//     node-bootstrapper service account's token.
//   - openshift/library-go, staticpod/installerpod: each revision N of a
//     static pod is installed into
//     /etc/kubernetes/static-pod-resources/<pod>-N/{configmaps,secrets}/NAME/KEY
//     plus <pod>.yaml, which is also written to /etc/kubernetes/manifests;
//     the unrevisioned certificates go to
//     /etc/kubernetes/static-pod-resources/<component>-certs/{configmaps,secrets}.
//   - openshift/cluster-kube-apiserver-operator, bindata (pod.yaml) and
//     pkg/operator/starter.go (RevisionSecrets, CertSecrets).
const (
	// OpenShiftBootstrapKubeconfig is the kubelet's --bootstrap-kubeconfig:
	// the node-bootstrapper service account's token.
	OpenShiftBootstrapKubeconfig = "/etc/kubernetes/kubeconfig"
	// OpenShiftKubeletKubeconfig is the kubelet's --kubeconfig, written by
	// the kubelet itself after bootstrapping; it refers to
	// kubelet-client-current.pem.
	OpenShiftKubeletKubeconfig = "/var/lib/kubelet/kubeconfig"
	// OpenShiftKubeletConfig is the KubeletConfiguration (not a kubeconfig,
	// unlike kubeadm's file of the same name).
	OpenShiftKubeletConfig = "/etc/kubernetes/kubelet.conf"
	// OpenShiftKubeletCA is the CA bundle the kubelet trusts for clients
	// (the API server's kubelet client certificate).
	OpenShiftKubeletCA = "/etc/kubernetes/kubelet-ca.crt"
	// StaticPodResources holds the revisioned static pod resources.
	StaticPodResources = "/etc/kubernetes/static-pod-resources"
	// KubeAPIServerCerts is the kube-apiserver's unrevisioned cert dir
	// (the pod's cert-dir volume, mounted at /etc/kubernetes/static-pod-certs).
	KubeAPIServerCerts = StaticPodResources + "/kube-apiserver-certs"
	// LocalhostRecoveryKubeconfig is the system:admin kubeconfig for
	// https://localhost:6443 with the localhost-recovery SNI name, synced
	// from the node-kubeconfigs secret: the way into a control-plane node's
	// own API server while its other certificates are expired.
	LocalhostRecoveryKubeconfig = KubeAPIServerCerts + "/secrets/node-kubeconfigs/localhost-recovery.kubeconfig"
	// KubeAPIServerPodPrefix names the revision directories
	// (kube-apiserver-pod-N) and the manifest (kube-apiserver-pod.yaml).
	KubeAPIServerPodPrefix = "kube-apiserver-pod"
	// KubeControllerManagerCerts is the kube-controller-manager's
	// unrevisioned cert dir (openshift/cluster-kube-controller-manager-operator
	// bindata assets/kube-controller-manager/pod.yaml: cert-dir), its
	// revisions kube-controller-manager-pod-N (resource-dir).
	KubeControllerManagerCerts     = StaticPodResources + "/kube-controller-manager-certs"
	KubeControllerManagerPodPrefix = "kube-controller-manager-pod"
	// EtcdAllCerts is the secret of etcd's unrevisioned cert dir that holds
	// every member's peer, serving and metrics certificates as
	// etcd-{peer,serving,serving-metrics}-NODE.{crt,key}: the copy the pod
	// uses (openshift/cluster-etcd-operator bindata/etcd/pod.yaml,
	// docs/etcd-tls-assets.md).
	EtcdCerts     = StaticPodResources + "/etcd-certs"
	EtcdAllCerts  = EtcdCerts + "/secrets/etcd-all-certs"
	EtcdPodPrefix = "etcd-pod"
)

// isKubeletConfiguration reports whether the file at p is a
// KubeletConfiguration rather than a kubeconfig: OpenShift keeps its
// kubelet configuration at /etc/kubernetes/kubelet.conf, the path where
// kubeadm keeps the kubelet's kubeconfig.
func isKubeletConfiguration(n *node.Node, p string) bool {
	data, err := n.ReadFile(p)
	if err != nil {
		return false
	}
	var doc struct {
		Kind string `json:"kind"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return false
	}
	return doc.Kind == "KubeletConfiguration"
}

// Revision is one installed revision of a static pod.
type Revision struct {
	Pod string // "kube-apiserver-pod"
	N   int
	Dir string // node path of static-pod-resources/<pod>-N
	// Current is true for the revision the manifest in
	// /etc/kubernetes/manifests runs (its "revision" label); when the
	// manifest is unreadable, the highest installed revision.
	Current bool
}

// Revisions lists the installed revisions of a static pod (pod is the
// installer's PodConfigMapNamePrefix, such as "kube-apiserver-pod"),
// lowest first, and marks the current one.
func Revisions(n *node.Node, pod string) ([]Revision, error) {
	entries, err := os.ReadDir(n.Path(StaticPodResources))
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("%s: %w", StaticPodResources, err)
	}
	var revs []Revision
	for _, e := range entries {
		num, ok := strings.CutPrefix(e.Name(), pod+"-")
		if !ok || !e.IsDir() {
			continue
		}
		v, err := strconv.Atoi(num)
		if err != nil || v < 0 {
			continue
		}
		revs = append(revs, Revision{Pod: pod, N: v, Dir: path.Join(StaticPodResources, e.Name())})
	}
	sort.Slice(revs, func(i, j int) bool { return revs[i].N < revs[j].N })
	if len(revs) == 0 {
		return nil, nil
	}
	cur := manifestRevision(n, path.Join(node.ManifestsDir, pod+".yaml"))
	found := false
	for i := range revs {
		if revs[i].N == cur {
			revs[i].Current, found = true, true
		}
	}
	if !found {
		revs[len(revs)-1].Current = true
	}
	return revs, nil
}

// CurrentRevision is the current revision of a static pod, or false when
// none is installed.
func CurrentRevision(n *node.Node, pod string) (Revision, bool, error) {
	revs, err := Revisions(n, pod)
	if err != nil {
		return Revision{}, false, err
	}
	for _, r := range revs {
		if r.Current {
			return r, true, nil
		}
	}
	return Revision{}, false, nil
}

// manifestRevision reads the "revision" label of a static pod manifest the
// installer wrote (-1 when there is none).
func manifestRevision(n *node.Node, p string) int {
	data, err := n.ReadFile(p)
	if err != nil {
		return -1
	}
	var pod struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(data, &pod); err != nil {
		return -1
	}
	v, err := strconv.Atoi(pod.Metadata.Labels["revision"])
	if err != nil {
		return -1
	}
	return v
}

// OpenShiftDoesNot is the one message kubecpr gives on an OpenShift 4
// node: what it does there, what it leaves to OpenShift, and the commands
// to run instead (OpenShift 4 "Recovering from expired control plane
// certificates"; openshift/enhancements auto-cert-recovery.md).
func OpenShiftDoesNot(evidence []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "this is an OpenShift 4 node (found %s).\n", strings.Join(evidence, ", "))
	b.WriteString("  kubecpr's part is limited to the node part: list the node's credentials (check, diagnose); recover the kubelet's client certificate " +
		"through the bootstrap kubeconfig and restart the kubelet; approve the node CSRs (node-bootstrapper client CSRs, " +
		"the nodes' renewals and kubelet-serving CSRs) with its careful checks: `kubecpr openshift-node`.\n")
	b.WriteString("  kubecpr does NOT here: renew or regenerate the control-plane certificates under " + StaticPodResources +
		" (kube-apiserver, kube-controller-manager, etcd): the cluster operators own them, and since OpenShift 4.2 the " +
		"cert-regeneration controllers in the kube-apiserver and kube-controller-manager static pods recover expired ones by themselves " +
		"once the kubelet runs them (etcd's are issued by the cluster-etcd-operator); `kubecpr run` refuses this node.\n")
	b.WriteString("  Instead: wait for the control plane to come back (`oc --kubeconfig " + LocalhostRecoveryKubeconfig +
		" get clusteroperators kube-apiserver kube-controller-manager`), then `oc get csr`, `oc describe csr NAME` and " +
		"`oc adm certificate approve NAME` for each valid pending node-bootstrapper and node CSR (or `kubecpr openshift-node`). " +
		"On OpenShift before 4.2 follow the documented recovery: `podman run ... cluster-kube-apiserver-operator recovery-apiserver create`, " +
		"`... regenerate-certificates`, `oc patch kubeapiserver cluster` (and kubecontrollermanager, kubescheduler) with a new " +
		"spec.forceRedeploymentReason, `recover-kubeconfig.sh > " + OpenShiftBootstrapKubeconfig + "` on every master, " +
		"restart each kubelet without /var/lib/kubelet/pki and " + OpenShiftKubeletKubeconfig + ", approve the CSRs, then " +
		"`... recovery-apiserver destroy`")
	return b.String()
}
