#!/usr/bin/env bash
# Configure a build directory, only when needed: OBJ configured by the
# same command line is left alone (its incremental state is precious: a
# full QEMU build takes many minutes on 2 cores); otherwise OBJ is made
# afresh and CMD runs in it.  Used for QEMU (its configure) and libvirt
# (meson setup).
#
# Usage: configure-once.sh OBJ CMD [ARG...]
set -euo pipefail
obj=$1
shift
args="$*"
if [ -f "$obj/build.ninja" ] && [ "$(cat "$obj/.mc-configure" 2>/dev/null)" = "$args" ]; then
    exit 0
fi
echo "configure-once: configuring $obj"
rm -rf "$obj"
mkdir -p "$obj"
cd "$obj"
"$@"
echo "$args" > .mc-configure
