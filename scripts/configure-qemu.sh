#!/usr/bin/env bash
# Configure the QEMU build directory, only when needed: a build directory
# configured with the same arguments is left alone (its incremental state
# is precious: a full build takes many minutes on 2 cores).
set -euo pipefail
obj=$1 src=$2
shift 2
args="$*"
if [ -f "$obj/build.ninja" ] && [ "$(cat "$obj/.mc-configure" 2>/dev/null)" = "$args" ]; then
    exit 0
fi
echo "configure-qemu: configuring $obj"
rm -rf "$obj"
mkdir -p "$obj"
cd "$obj"
"$src/configure" "$@"
echo "$args" > "$obj/.mc-configure"
