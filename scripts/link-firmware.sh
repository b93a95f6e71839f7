#!/usr/bin/env bash
# Make a binary run from the build tree find Debian's firmware with no -L.
# Run from the build tree, QEMU maps its configured firmware path into
# <builddir>/qemu-bundle/, so point those directories at the real ones.
set -euo pipefail
obj=$1
for d in /usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu; do
    link=$obj/qemu-bundle$d
    if [ ! -e "$link" ]; then
        mkdir -p "$(dirname "$link")"
        ln -sfn "$d" "$link"
    fi
done
