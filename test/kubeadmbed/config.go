package kubeadmbed

import (
	"fmt"
	"strings"
)

// KubernetesVersion is pinned in every kubeadm config: kubeadm never asks
// the internet which version "stable" is.
const KubernetesVersion = "v1.33.13"

// CRISocket is the containerd socket inside every node (the node's own
// /run is bind-mounted from Node.Root/run, so the same file is
// Node.Socket on the host).
const CRISocket = "unix:///run/containerd/containerd.sock"

// clusterName is the kubeadm clusterName of every bed.
const clusterName = "kubeadmbed"

// kubeletConfiguration is what differs between these nodes and a real
// host, given to kubeadm as its KubeletConfiguration document (kubeadm
// writes it to every node's /var/lib/kubelet/config.yaml, the joined ones
// through the kubelet-config ConfigMap), as kind does; never by editing
// kubeadm's files afterwards:
//   - cgroupfs, no QoS cgroups, no node allocatable enforcement ("none"):
//     systemd is not PID 1 here, and the kubelets of five nodes share the
//     machine's cgroup hierarchies;
//   - protectKernelDefaults: the three sysctls it checks are files
//     bind-mounted in each node (kubelet.SysctlBinds), so the kubelet
//     never writes the host's, which are not per network namespace;
//   - no swap check, eviction and image GC thresholds at the floor: the
//     machine's disk and memory are shared with other tests;
//   - fileCheckFrequency 1 s and syncFrequency 5 s: a static pod manifest
//     written by kubeadm or kubecpr is seen within a second.
const kubeletConfiguration = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: ["none"]
protectKernelDefaults: true
failSwapOn: false
fileCheckFrequency: 1s
syncFrequency: 5s
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: /etc/resolv.conf
`

// nodeRegistration is the node's name, its CRI socket and its address for
// the kubelet (kubeadm writes --node-ip into kubeadm-flags.env).
func nodeRegistration(n *Node) string {
	var b strings.Builder
	fmt.Fprintf(&b, "nodeRegistration:\n  name: %s\n  criSocket: %s\n", n.Name, CRISocket)
	fmt.Fprintf(&b, "  kubeletExtraArgs:\n  - name: node-ip\n    value: %s\n", n.Address)
	return b.String()
}

// initConfig is the config of `kubeadm init` on the first control plane.
//
// controlPlaneEndpoint is the first control plane's address: the simplest
// honest endpoint for three API servers without a load balancer (every
// kubeconfig kubeadm writes, and the joins, go through cp-1's API server;
// a load balancer or kube-vip address is a later scenario).
//
// etcd gets longer heartbeat and election timeouts than its defaults
// (100 ms / 1 s) through kubeadm's extraArgs: three members on two shared
// cores otherwise lose their leader whenever the machine is busy.
func initConfig(cp1 *Node) string {
	return fmt.Sprintf(`apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: %[1]s
  bindPort: 6443
%[2]s---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
clusterName: %[3]s
kubernetesVersion: %[4]s
controlPlaneEndpoint: %[1]s:6443
networking:
  serviceSubnet: 10.96.0.0/16
  podSubnet: 10.244.0.0/16
dns:
  disabled: true
proxy:
  disabled: true
etcd:
  local:
    extraArgs:
    - name: heartbeat-interval
      value: "500"
    - name: election-timeout
      value: "5000"
---
%[5]s`, cp1.Address, nodeRegistration(cp1), clusterName, KubernetesVersion, kubeletConfiguration)
}

// joinInfo is what `kubeadm init` printed for the joins.
type joinInfo struct {
	Endpoint, Token, CACertHash, CertificateKey string
}

// joinConfig is the config of `kubeadm join` on n, with the token, CA
// hash and (for a control plane) the certificate key init printed.
func joinConfig(n *Node, j joinInfo) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: %s
    token: %s
    caCertHashes:
    - %s
`, j.Endpoint, j.Token, j.CACertHash)
	b.WriteString(nodeRegistration(n))
	if n.Role == ControlPlane {
		fmt.Fprintf(&b, "controlPlane:\n  localAPIEndpoint:\n    advertiseAddress: %s\n    bindPort: 6443\n  certificateKey: %s\n", n.Address, j.CertificateKey)
	}
	return b.String()
}
