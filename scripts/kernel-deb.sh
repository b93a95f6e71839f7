#!/usr/bin/env bash
# Print the path of the kernel package a Debian meta-package points at
# (e.g. linux-image-amd64), downloaded once into DIR.
# Usage: kernel-deb.sh META-PACKAGE DIR
set -euo pipefail
meta=$1 dl=$2
kpkg=$( (apt-cache depends "$meta" 2>/dev/null || true) |
       awk '/Depends: linux-image-/ { print $2; exit }')
if [ -z "$kpkg" ]; then
    echo "kernel-deb: cannot resolve $meta (apt-get update?)" >&2
    exit 1
fi
deb=$(ls "$dl/${kpkg}"_*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$deb" ]; then
    (cd "$dl" && apt-get download -q "$kpkg") >&2
    deb=$(ls "$dl/${kpkg}"_*.deb | head -n 1)
fi
echo "$deb"
