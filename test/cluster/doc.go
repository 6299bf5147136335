// Package cluster makes kubecpr's tests meet the real programs: real
// kubeadm lays out a control-plane node under a temporary root, and real
// etcd, kube-apiserver and kube-controller-manager run as processes from
// the flags in the static pod manifests kubeadm generated.
//
// # Binaries
//
// Binaries(t) is $KUBECPR_TESTBIN_DIR, else the cache of
// hack/testbin/build.sh (~/.cache/kubecpr/testbin/k8s-v1.33.13-etcd-v3.5.21/bin):
// kubeadm, kube-apiserver, kube-controller-manager v1.33.13, etcd and
// etcdctl v3.5.21. A missing binary fails the test with "run `make
// testbin`"; nothing is ever skipped.
//
// # Laying out a node (Kubeadm)
//
// A kubeadm config (InitConfiguration + ClusterConfiguration,
// kubeadm.k8s.io/v1beta4) names the node, pins kubernetesVersion (so kubeadm
// never asks the internet for "stable"), sets controlPlaneEndpoint
// 127.0.0.1:<apiserver port>, certSANs 127.0.0.1 and localhost, service
// subnet 10.96.0.0/12, and advertiseAddress 10.255.0.1: kubeadm refuses a
// loopback advertise address ("unable to select an IP from lo network
// interface"), and 10.255.0.1 is never contacted. Then real kubeadm runs
//
//	kubeadm init phase certs all | kubeconfig all | [kubelet-start] | control-plane all | etcd local
//
// with --rootfs <root> (kubeadm chroots, so every path it writes is the
// node path under the root; the config is copied into the root as
// /tmp/kubeadm.yaml for the run and removed afterwards) and in a new, empty
// network namespace (CLONE_NEWNET): whatever a phase tried, no packet could
// leave. kubelet-start is opt-in (Options.KubeletConfig): it writes
// /var/lib/kubelet/config.yaml and kubeadm-flags.env and, finding no init
// system inside the chroot, starts nothing. Options.ExternalCA moves ca.key
// out of the tree afterwards (kubeadm's external-CA layout); the key is kept
// for ClusterCA and Expire.
//
// Node.Kubeadm(t, args...) runs any other kubeadm command on the node the
// same way (--rootfs, --config when the command takes one, no network), e.g.
// `certs check-expiration`.
//
// # Rewriting to loopback
//
// Every kubeconfig server (kubeadm points controller-manager.conf,
// scheduler.conf and kubelet.conf at the advertise address) becomes
// https://127.0.0.1:<apiserver port>. In the manifests every advertise,
// listen and peer URL, probe host and kubeadm annotation becomes 127.0.0.1
// with the node's ports (etcd client, peer and metrics; the apiserver's
// --secure-port is the chosen port already; the controller-manager and
// scheduler get their own --secure-port; the apiserver gets
// --bind-address=127.0.0.1, kubeadm leaves it listening on all interfaces).
// The edit is textual, keeping kubeadm's bytes otherwise, and is checked on
// the parsed pods. NonLoopback then scans every text file of the tree and
// the layout fails if any non-loopback address is left: 10.255.0.1 remains
// only inside certificate SANs.
//
// Ports are chosen below the kernel's ephemeral range, so the many outgoing
// loopback connections of the tests can never occupy a node's port while
// its process is stopped, and are reserved machine-wide for the test's
// lifetime with an abstract unix socket, so parallel test binaries do not
// collide.
//
// # Three control-plane nodes (ControlPlanes)
//
// ControlPlanes(t, 3, o) lays out cp-1, cp-2, cp-3 of one stacked-etcd
// cluster, node i at 127.0.0.i (Node.Address; 127.0.0.1-3 only): node 1 as
// above; nodes 2 and 3 first get node 1's ca, front-proxy-ca, etcd/ca
// (certificates and keys) and sa.key/pub, then run the same phases
// concurrently with their own name, controlPlaneEndpoint 127.0.0.i:<port>,
// apiServer certSANs [127.0.0.i, localhost] and etcd server/peer certSANs
// [127.0.0.i], so each leaf names its own node (as `kubeadm join
// --control-plane` makes them). kubeadm's advertise address is then
// 127.0.0.i: the apiserver binds and advertises it (own port), every
// kubeconfig of node i points at it; etcd advertises and peers on
// 127.0.0.i and listens for clients on 127.0.0.1 and 127.0.0.i (kubeadm's
// pair), metrics on 127.0.0.1; --etcd-servers stays kubeadm's
// https://127.0.0.1:<own client port>, the local member; the controller
// manager and scheduler bind 127.0.0.1 as kubeadm writes. Every etcd
// manifest gets --initial-cluster=cp-1=https://127.0.0.1:P1,... and
// --initial-cluster-state=new (Node.EtcdInitialCluster, Node.Peers).
//
// StartControlPlanes runs them as real nodes run them: one real containerd
// per node (ctrd), images named as in the manifests holding the test
// binaries, and the kubelet stand-in (staticpods) per node keeping one
// container per manifest (host network). RunningNode.Socket is the node's
// --cri-socket, KubeletRestartCommand its --kubelet-restart-command (it
// records the call outside the tree; the stand-in needs no restart).
// RunOptions.Controllers also runs the controller managers and schedulers;
// without it their manifests are moved out (RunningNode.IdleManifests).
// Restart/RestartAll stop containers through containerd and wait for the
// stand-in's new ones. EtcdHealthy asks a member's /health on its client
// URL with the node's healthcheck-client certificate (as kubecpr does);
// EtcdRaftHealth asks /health on the plain-HTTP metrics URL (etcd's own
// verdict, whatever the certificates); MemberList and EtcdClusterHealth
// run the real etcdctl. ExpireAll expires every node (workers included).
//
// Worker lays out a kubeadm worker's tree joined to a control-plane node:
// kubelet-start's config.yaml, ca.crt, the kubelet's bootstrapped client
// certificate (ECDSA P-256, system:node:NAME / system:nodes, a dated pem
// and kubelet-client-current.pem linking to it), its self-signed serving
// pair and the kubelet.conf the kubelet writes. WhoAmI (SelfSubjectReview)
// and RenewNodeLease prove what a node credential authenticates as.
//
// # Running the programs
//
// StartEtcd, StartAPIServer and StartControllerManager take command and
// args from the manifest (k8s.io/api Pod), move node paths (/etc/kubernetes,
// /var/lib/...) under the root (etcd's data dir is <root>/var/lib/etcd),
// and run the binary in its own process group with stdout and stderr in
// <root>/var/log/<component>.log. Stop (registered with t.Cleanup) sends
// SIGTERM to the group, SIGKILL after 10 s, and kills whatever is left;
// Proc.Log/LogTail show one run's output.
//
//   - etcd: waits for the manifest's readiness probe (plain HTTP /readyz on
//     the metrics port); Etcdctl runs real etcdctl with the
//     healthcheck-client certificate.
//   - kube-apiserver: waits only until the port accepts connections (an
//     apiserver on expired certificates never gets ready); WaitAPIServer
//     polls /readyz through client-go with a node kubeconfig.
//   - kube-controller-manager: waits for its /healthz probe.
//
// Client and RESTConfig read a node kubeconfig and resolve the files it
// references (kubelet-client-current.pem and its symlink) under the root.
// admin.conf carries O=kubeadm:cluster-admins, which `kubeadm init` binds
// to cluster-admin once the apiserver is up; kubeadm never talks to the
// apiserver here, so GrantClusterAdmins creates that binding with
// super-admin.conf.
//
// # Expiring
//
// Expire(t, ago) re-signs every leaf (pki leaves, client certificates
// embedded in the kubeconfigs, the kubelet's current pem) with the node's
// CAs through fixture.ResignWithCA — same subjects, SANs, usages and keys —
// valid for the year that ended ago before now. The CAs are untouched.
//
// # What really happens (asserted by the tests)
//
// Fresh node: etcd ready ~0.4-1 s after start, kube-apiserver ready
// ~2.4-2.7 s after start, kubeadm layout ~0.9-1.3 s (2 cores); client-go
// with admin.conf is Forbidden until kubeadm:cluster-admins is bound, then
// lists default and kube-system; the apiserver serves kubeadm's certificate
// chaining to ca.crt for 127.0.0.1 and localhost; `kubeadm certs
// check-expiration` reads the node (364d left on 11 certificates, 9y on 3
// CAs). kube-controller-manager takes its lease and creates
// default/default ~5 s after start.
//
// Expired 48 h ago: check-expiration shows every leaf <invalid>; etcd
// starts and is ready but refuses every client certificate (etcdctl
// fails; etcd logs "x509: certificate has expired or is not yet valid");
// kube-apiserver opens its port but never completes a TLS handshake while
// it cannot build its storage (its log: "authentication handshake failed:
// ... x509: certificate has expired or is not yet valid" against etcd), so
// client-go times out rather than seeing an x509 error; ~20 s after start
// the apiserver exits 255 ("Error creating leases: error creating storage
// factory: context deadline exceeded") and clients get "connection
// refused" — in production the kubelet restarts it in a loop.
//
// Three nodes, one etcd cluster (TestThreeControlPlanesQuorum, ~35 s on 2
// busy cores: layout 4.5-8 s, containerd start to all healthy ~15 s): every
// member lists the three with peer URLs on 127.0.0.1/2/3, each apiserver
// serves its own certificate (its address, no other node's). Every leaf
// expired and every node restarted: the members reject each other's peer
// certificates ("x509: certificate has expired or is not yet valid" in
// each etcd's prober), etcd's metrics /health says RAFT NO LEADER, and the
// client URL serves nothing at all (a restarted member serves clients only
// once it has published itself through raft, which needs quorum), so
// /health with a client certificate times out; no apiserver gets ready.
// Node 1 alone renewed and restarted: the same — its etcd on valid
// certificates has no quorum, /health on its client URL times out, its
// apiserver never gets ready (the trap of issue 10: `kubecpr run` on one
// node waits for etcd until its component timeout).
//
// An external-CA node (ca.key absent) whose leaves expired makes real
// `kubeadm certs check-expiration` fail outright: "Error checking external
// CA condition for ca certificate authority: ... x509: certificate has
// expired or is not yet valid".
package cluster
