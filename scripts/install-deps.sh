#!/bin/sh
# Installs the Debian packages moestream needs to build and test, if any are missing.
# Run as root (or via sudo) on Debian 12; `make test` calls it. Prints nothing when all is there.
# With the argument `fuzz` (as `make fuzz` calls it): also clang and its libFuzzer runtime.
set -eu
need=""
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# libjansson-dev: JSON (chat templates, server); libmicrohttpd-dev: HTTP server; libedit-dev: chat
# line editing; pkg-config: their flags. python3: the test drivers for the server and the chat.
pkgs="gcc make libc6-dev pkg-config libjansson-dev libmicrohttpd-dev libedit-dev python3"
[ "${1:-}" = fuzz ] && pkgs="$pkgs clang libclang-rt-dev"
for pkg in $pkgs; do
    have_pkg "$pkg" || need="$need $pkg"
done
[ -z "$need" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "moestream needs these Debian packages:$need (run: sudo apt-get install$need)" >&2
    exit 1
fi
echo "installing:$need" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2 && apt-get install -y -qq $need >&2
