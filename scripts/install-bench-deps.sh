#!/bin/sh
# Installs HAProxy (Debian's package), the baseline `make bench` measures tlstrace against.
# Without it the benchmark still runs, but cannot give the ratios to HAProxy.
set -eu
command -v haproxy >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "install-bench-deps: not root and no sudo: install HAProxy as root (apt-get install haproxy)" >&2
    exit 0
fi
echo "install-bench-deps: installing Debian's haproxy (the benchmark's baseline)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends haproxy >/dev/null
# Debian starts the service it installs; the benchmark starts its own instances
if command -v systemctl >/dev/null 2>&1; then $sudo systemctl stop haproxy >/dev/null 2>&1 || true; fi
