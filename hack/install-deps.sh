#!/usr/bin/env bash
# install-deps.sh: the Debian packages the tests use as real parts —
# containerd and runc (real containers) and openssh-server (the cluster
# transport's tests start a real sshd on loopback). Idempotent: each package
# is installed only when its program is missing; a no-op when all are present.
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1; }

missing=()
have containerd || missing+=(containerd)
have runc || missing+=(runc)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi

if [ "$(id -u)" != 0 ]; then
	echo "install-deps: ${missing[*]} missing and not root: run 'sudo apt-get install -y ${missing[*]}'" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]} from Debian" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "${missing[@]}" >/dev/null
