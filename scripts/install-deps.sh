#!/bin/sh
# Installs the Debian packages moestream needs to build and test, if any are missing.
# Run as root (or via sudo) on Debian 12; `make test` calls it. Prints nothing when all is there.
set -eu
need=""
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in gcc make libc6-dev; do
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
