#!/usr/bin/env bash
# Configure the libvirt build directory with meson, only when needed (an
# unchanged configuration keeps its incremental state).
set -euo pipefail
obj=$1 src=$2
shift 2
args="$*"
if [ -f "$obj/build.ninja" ] && [ "$(cat "$obj/.mc-configure" 2>/dev/null)" = "$args" ]; then
    exit 0
fi
echo "configure-libvirt: configuring $obj"
rm -rf "$obj"
meson setup "$obj" "$src" "$@"
echo "$args" > "$obj/.mc-configure"
