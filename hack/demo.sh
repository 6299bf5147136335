#!/usr/bin/env bash
# demo.sh: recover a generated, fully expired kubeadm node end to end, offline,
# and prove rollback is byte for byte. Everything happens under a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
kubecpr=$PWD/bin/kubecpr
work=$(mktemp -d /tmp/kubecpr-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/node
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
hashes() { (cd "$root" && find . -path ./var/lib/kubecpr -prune -o \( -type f -o -type l \) -print0 | sort -z |
	xargs -0 -I{} sh -c 'if [ -L "{}" ]; then printf "%s link %s\n" "{}" "$(readlink "{}")"; else printf "%s %s %s\n" "{}" "$(stat -c %a:%u:%g "{}")" "$(sha256sum < "{}" | cut -c1-64)"; fi'); }

step "generate a kubeadm node whose leaf certificates expired 3 days ago"
go run ./test/fixture/cmd/mkfixture -root "$root" -node cp-1 -expired-days 3 -now "$now"

step "BEFORE: kubecpr diagnose (exit code 2 = something expired)"
set +e; "$kubecpr" --root "$root" --now "$now" diagnose --offline; rc=$?; set -e
echo "exit code: $rc"
[ "$rc" = 2 ] || { echo "demo: expected exit 2 before recovery" >&2; exit 1; }

hashes > "$work/before.txt"

step "plan (dry run: nothing changes)"
"$kubecpr" --root "$root" --now "$now" plan --until kubeconfigs --update-user-kubeconfigs

step "run: backup, certs, kubeconfigs (journaled)"
"$kubecpr" --root "$root" --now "$now" run --until kubeconfigs --update-user-kubeconfigs

step "AFTER: kubecpr check (exit code 0 = all ok)"
"$kubecpr" --root "$root" --now "$now" check
echo "exit code: 0"

step "status: the journal of the run"
"$kubecpr" --root "$root" --now "$now" status

step "rollback: every file back byte for byte"
"$kubecpr" --root "$root" --now "$now" rollback
hashes > "$work/after-rollback.txt"
if diff -u "$work/before.txt" "$work/after-rollback.txt"; then
	echo "byte-identical: $(wc -l < "$work/before.txt") files and links (content sha256, mode, owner, link target) match the expired tree"
else
	echo "demo: rollback is not byte-identical" >&2; exit 1
fi
set +e; "$kubecpr" --root "$root" --now "$now" check >/dev/null; rc=$?; set -e
echo "check after rollback: exit code $rc (expired again, as before)"

step "live stages (bounce, csr) on a generated node: what they would do"
"$kubecpr" --root "$root" --now "$now" plan --from bounce --until csr
echo "(the live stages act only on the real node, or with --cri-socket / --apiserver-binary)"

# The whole pipeline, live stages included, on a real kubeadm node: needs
# root, containerd/runc and the test binaries that `make test` builds.
bindir=${KUBECPR_TESTBIN_DIR:-${KUBECPR_TESTBIN:-$HOME/.cache/kubecpr/testbin}/k8s-v1.33.13-etcd-v3.5.21/bin}
missing=""
[ "$(id -u)" = 0 ] || missing="$missing root"
for b in containerd runc; do PATH=$PATH:/usr/sbin:/sbin command -v $b >/dev/null || missing="$missing $b"; done
for b in kubeadm kubelet kube-apiserver kube-controller-manager kube-scheduler etcd; do [ -x "$bindir/$b" ] || missing="$missing $b"; done
if [ -z "$missing" ]; then
	step "live: a real kubeadm node whose control plane the real kubelet runs in real containerd, expired, recovered end to end"
	echo "(test/e2e TestRealKubeletRecovery; kubelet log lines left out)"
	KUBECPR_TESTBIN_DIR=$bindir go test -count=1 -run 'TestRealKubeletRecovery$' -v ./test/e2e 2>&1 |
		grep -v -E '^ +[IEW][0-9]{4} |^=== (RUN|PAUSE|CONT)' | sed 's/^    kubelet_test.go:[0-9]*: //'
	[ "${PIPESTATUS[0]}" = 0 ] || { echo "demo: the live recovery failed" >&2; exit 1; }
else
	echo
	echo "skipped the live recovery (bounce through containerd with the real kubelet, csr):"
	echo "missing:$missing. Run as root after \`make test\` (it installs containerd and builds the binaries)."
fi
