#!/bin/sh
# Installs what the test suite drives and nobody on this team wrote: Kamailio (a real SIP server
# and the sipcapture HEP receiver), sngrep (HEP receiver that checks the auth key), tshark
# (decryption checks), Prometheus and promtool, systemd-analyze (checks the systemd unit; works
# without systemd running), headless Chromium and its driver (the API docs pages, the status page, a
# WebRTC phone), and the npm packages hep-js and JsSIP (the WebRTC phone's SIP stack).
# Usage: scripts/install-test-deps.sh VENV_DIR
# sip-tester is SIPp: the local SIP clients of tests/hardening/test_shared_trunk.py.
set -eu
venv=${1:-.venv}
apt_pkgs="kamailio kamailio-sqlite-modules kamailio-tls-modules sqlite3 sngrep tshark prometheus openssl systemd chromium chromium-driver sip-tester"

missing=""
for cmd in kamailio sqlite3 sngrep tshark prometheus promtool openssl systemd-analyze chromium chromedriver sipp; do
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
# the sqlite and tls modules of kamailio are separate packages
for mod in db_sqlite tls; do
    ls /usr/lib/*/kamailio/modules/$mod.so >/dev/null 2>&1 || missing="$missing kamailio:$mod"
done

if [ -n "$missing" ]; then
    echo "install-test-deps: missing:$missing; installing Debian packages: $apt_pkgs"
    if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
        echo "install-test-deps: not root and no sudo: install as root: apt-get install $apt_pkgs" >&2
        exit 1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $apt_pkgs >/dev/null
fi

# Debian starts the services it installs; the tests start their own instances.
for svc in kamailio prometheus; do
    if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
done

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "install-test-deps: node and npm are needed for hep-js and JsSIP" >&2
    exit 1
fi
if [ ! -f "$venv/npm/node_modules/hep-js/package.json" ]; then
    mkdir -p "$venv/npm"
    npm install --silent --no-audit --no-fund --prefix "$venv/npm" hep-js@1.0.22 >/dev/null
fi
if [ ! -f "$venv/npm/node_modules/jssip/package.json" ]; then
    mkdir -p "$venv/npm"
    npm install --silent --no-audit --no-fund --prefix "$venv/npm" jssip@3.10.1 >/dev/null
fi
