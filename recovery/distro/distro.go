// Package distro tells, from the files of a node tree alone, which
// Kubernetes distribution laid the node out: kubeadm (what kubecpr
// recovers), k3s and RKE2 (which renew their own certificates and are
// refused, with their own command), or OpenShift 4 (where kubecpr's part is
// limited to the node). Nothing is run and nothing is written: a copy of a
// node under --root is recognised exactly like the live node.
package distro

import (
	"fmt"
	"strings"

	"github.com/kubecpr/kubecpr/recovery/node"
)

// Kind names a distribution.
type Kind string

const (
	Kubeadm   Kind = "kubeadm"
	K3s       Kind = "k3s"
	RKE2      Kind = "rke2"
	OpenShift Kind = "openshift"
	Unknown   Kind = "unknown"
)

// Distro is what the node tree says about itself.
type Distro struct {
	Kind Kind
	// Server is true for a k3s/RKE2 server (it holds server/tls), false
	// for an agent; unused for the other kinds.
	Server bool
	// Evidence lists the node paths that decided Kind, in the order they
	// were looked for.
	Evidence []string
	// Leftovers lists node paths of another distribution also found (a
	// /var/lib/rancher/k3s beside a complete kubeadm node): reported, not
	// acted on.
	Leftovers []string
}

// What each distribution leaves on a node. Directories are enough: each is
// created by the product's installer or first start and by nothing else.
var (
	// kubeadm: `kubeadm init/join` writes these; any one is a kubeadm node
	// (a worker has only kubelet.conf and pki/ca.crt).
	kubeadmPaths = []string{
		"/etc/kubernetes/pki/ca.crt",
		"/etc/kubernetes/manifests/kube-apiserver.yaml",
		"/etc/kubernetes/admin.conf",
		"/etc/kubernetes/kubelet.conf",
	}
	// k3s: config dir (k3s.yaml, config.yaml), the server's CA and
	// certificates, the agent's certificates (a server has an agent too).
	k3sConfig = []string{"/etc/rancher/k3s"}
	k3sServer = []string{"/var/lib/rancher/k3s/server/tls"}
	k3sAgent  = []string{"/var/lib/rancher/k3s/agent"}
	// RKE2: the same layout under its own name.
	rke2Config = []string{"/etc/rancher/rke2"}
	rke2Server = []string{"/var/lib/rancher/rke2/server/tls"}
	rke2Agent  = []string{"/var/lib/rancher/rke2/agent"}
	// OpenShift 4: the revisioned static pod resources of a control-plane
	// node (kube-apiserver-pod-N, ...) decide alone; on a worker, the
	// bootstrap kubeconfig together with the kubelet's own kubeconfig
	// (kubeadm names them bootstrap-kubelet.conf and kubelet.conf).
	openshiftControlPlane = StaticPodResources
	openshiftNode         = []string{OpenShiftBootstrapKubeconfig, OpenShiftKubeletKubeconfig}
)

// Detect reads the node tree under n.Root and names its distribution. The
// error is an *UnsupportedError for k3s and RKE2, whose certificates only
// their own tools may renew; Distro is filled in either way.
//
// Order of precedence: the OpenShift control-plane directory; then a
// kubeadm file (a complete kubeadm node is what kubecpr recovers, whatever
// another product left beside it: those paths go to Leftovers); then RKE2
// and k3s; then the OpenShift worker pair; else Unknown.
func Detect(n *node.Node) (Distro, error) {
	k3s := found(n, k3sConfig, k3sServer, k3sAgent)
	rke2 := found(n, rke2Config, rke2Server, rke2Agent)
	kubeadm := found(n, kubeadmPaths)
	// OpenShift keeps a KubeletConfiguration where kubeadm keeps the
	// kubelet's kubeconfig: that file alone is no kubeadm evidence.
	if len(kubeadm) == 1 && kubeadm[0] == "/etc/kubernetes/kubelet.conf" && isKubeletConfiguration(n, kubeadm[0]) {
		kubeadm = nil
	}

	if n.Exists(openshiftControlPlane) {
		d := Distro{Kind: OpenShift, Evidence: []string{openshiftControlPlane}}
		for _, p := range openshiftNode {
			if n.Exists(p) {
				d.Evidence = append(d.Evidence, p)
			}
		}
		d.Leftovers = append(append(d.Leftovers, rke2...), k3s...)
		return d, nil
	}
	if len(kubeadm) > 0 {
		return Distro{Kind: Kubeadm, Evidence: kubeadm, Leftovers: append(rke2, k3s...)}, nil
	}
	// RKE2 before k3s: RKE2 embeds k3s, and a node that ran both keeps
	// the product whose server directory is there.
	if len(rke2) > 0 {
		d := Distro{Kind: RKE2, Server: len(found(n, rke2Server)) > 0, Evidence: rke2, Leftovers: k3s}
		return d, &UnsupportedError{Distro: d}
	}
	if len(k3s) > 0 {
		d := Distro{Kind: K3s, Server: len(found(n, k3sServer)) > 0, Evidence: k3s}
		return d, &UnsupportedError{Distro: d}
	}
	if ev := found(n, openshiftNode); len(ev) == len(openshiftNode) {
		return Distro{Kind: OpenShift, Evidence: ev}, nil
	}
	return Distro{Kind: Unknown}, nil
}

func found(n *node.Node, lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		for _, p := range l {
			if n.Exists(p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// Notice is what an operator must read before kubecpr goes on: OpenShift's
// limits, and another product's files beside a kubeadm node. Empty when
// there is nothing to say.
func (d Distro) Notice() string {
	var parts []string
	if d.Kind == OpenShift {
		parts = append(parts, openshiftNotice(d))
	}
	if len(d.Leftovers) > 0 {
		parts = append(parts, fmt.Sprintf("found %s beside this %s node: kubecpr works on the %s files only and leaves those alone",
			strings.Join(d.Leftovers, ", "), d.Kind, d.Kind))
	}
	return strings.Join(parts, "; ")
}

// openshiftNotice says what kubecpr does on an OpenShift 4 node and what to
// run instead for the rest, in one message.
func openshiftNotice(d Distro) string { return OpenShiftDoesNot(d.Evidence) }

// UnsupportedError refuses a node whose certificates belong to another
// product's own tooling. kubecpr changed nothing when it is returned.
type UnsupportedError struct {
	Distro Distro
}

// Product is the product's name as its documentation writes it.
func (e *UnsupportedError) Product() string {
	if e.Distro.Kind == RKE2 {
		return "RKE2"
	}
	return "k3s"
}

// Commands are what to run instead, on this node, in order.
func (e *UnsupportedError) Commands() []string {
	bin, svc := string(e.Distro.Kind), string(e.Distro.Kind)
	if e.Distro.Kind == RKE2 {
		svc = "rke2-server"
	}
	if !e.Distro.Server {
		return []string{"systemctl restart " + bin + "-agent"}
	}
	return []string{"systemctl stop " + svc, bin + " certificate rotate", "systemctl start " + svc}
}

func (e *UnsupportedError) Error() string {
	d := e.Distro
	bin, svc := string(d.Kind), string(d.Kind)
	if d.Kind == RKE2 {
		svc = "rke2-server"
	}
	role := "agent"
	if d.Server {
		role = "server"
	}
	msg := fmt.Sprintf("this is a %s %s (found %s), not a kubeadm node: %s issues and renews its own certificates, "+
		"and kubecpr changed nothing. ", e.Product(), role, strings.Join(d.Evidence, ", "), e.Product())
	if d.Server {
		msg += fmt.Sprintf("On each %s server, one at a time: `%s` (expired certificates and those close to expiry are "+
			"renewed whenever %s starts; `%s certificate rotate` also renews the others); then restart the agents with "+
			"`systemctl restart %s-agent`, which renew theirs on every start",
			e.Product(), strings.Join(e.Commands(), " && "), svc, bin, bin)
	} else {
		msg += fmt.Sprintf("On this agent: `%s` (%s agents renew their certificates on every start); "+
			"on the servers first: `systemctl stop %s && %s certificate rotate && systemctl start %s`",
			strings.Join(e.Commands(), " && "), e.Product(), svc, bin, svc)
	}
	return msg
}
