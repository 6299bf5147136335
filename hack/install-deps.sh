#!/usr/bin/env bash
# install-deps.sh: containerd and runc from Debian's packages, for the tests
# that run real containers. Idempotent; a no-op when both are present.
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
if have containerd && have runc; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
	echo "install-deps: containerd/runc missing and not root: run 'sudo apt-get install -y containerd runc'" >&2
	exit 1
fi
echo "install-deps: installing containerd and runc from Debian" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq containerd runc >/dev/null
