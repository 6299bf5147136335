#!/usr/bin/env bash
# build.sh: build (or reuse) the real binaries the e2e tests run against, in a
# cache outside the clone keyed by version. Prints the bin directory on stdout.
#
#   KUBECPR_TESTBIN   cache root (default: $HOME/.cache/kubecpr/testbin)
#
# Cold on 2 cores: ~10-12 min for the Kubernetes binaries, ~1 min for etcd.
# Warm: under a second (the binaries and a stamp file are reused).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
k8s_version=v1.33.13
etcd_version=v3.5.21
cache=${KUBECPR_TESTBIN:-$HOME/.cache/kubecpr/testbin}
bin="$cache/k8s-$k8s_version-etcd-$etcd_version/bin"
mkdir -p "$bin"

log() { printf 'testbin: %s\n' "$*" >&2; }

build_k8s() {
	local name=$1
	if [ -x "$bin/$name" ]; then return; fi
	log "building $name $k8s_version (cold: several minutes on 2 cores)"
	local major=${k8s_version#v}; major=${major%%.*}
	local minor=${k8s_version#v*.}; minor=${minor%%.*}
	local ld=""
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld="$ld -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
		ld="$ld -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	done
	(cd "$here/k8s" && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w $ld" \
		-o "$bin/$name.tmp" "k8s.io/kubernetes/cmd/$name")
	mv "$bin/$name.tmp" "$bin/$name"
}

build_etcd() {
	local name=$1 pkg=$2
	if [ -x "$bin/$name" ]; then return; fi
	log "building $name $etcd_version"
	(cd "$here/etcd" && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w" \
		-o "$bin/$name.tmp" "$pkg")
	mv "$bin/$name.tmp" "$bin/$name"
}

build_etcd etcd go.etcd.io/etcd/server/v3
build_etcd etcdctl go.etcd.io/etcd/etcdctl/v3
for c in ${KUBECPR_TESTBIN_K8S:-kubeadm kube-apiserver kube-controller-manager kube-scheduler kubelet}; do
	build_k8s "$c"
done
echo "$bin"
