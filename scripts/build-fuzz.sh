#!/bin/bash
# Build the libFuzzer target on what an MC standby parses from the wire
# (tests/mc/fuzz/mc-standby-fuzz.c) with clang, AddressSanitizer,
# LeakSanitizer and UndefinedBehaviorSanitizer.  The MC files come from
# the prepared source tree; the rest of QEMU they need (Error) from the
# build's libqemuutil.a.  Usage: build-fuzz.sh BUILD_DIR
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
src=$build/src
obj=$build/qemu
out=$build/fuzz
mkdir -p "$out"
for f in "$obj/libqemuutil.a" "$obj/config-host.h"; do
    [ -e "$f" ] || { echo "build-fuzz: $f missing: run make build" >&2; exit 1; }
done
command -v clang >/dev/null || { echo "build-fuzz: clang missing: run make setup" >&2; exit 1; }
flags=(-g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64
       -I"$obj" -I"$obj/qapi" -I"$obj/trace"
       -iquote "$obj" -iquote "$src" -iquote "$src/include"
       -iquote "$src/host/include/x86_64" -iquote "$src/host/include/generic"
       -iquote "$src/migration" -iquote "$top/tests/mc/fuzz"
       -isystem "$src/linux-headers"
       $(pkg-config --cflags glib-2.0))
clang "${flags[@]}" -o "$out/mc-standby-fuzz.new" \
    "$src/migration/mc-wire.c" "$src/migration/mc-verify.c" \
    "$top/tests/mc/fuzz/mc-standby-fuzz.c" \
    "$obj/libqemuutil.a" $(pkg-config --libs glib-2.0) -lz -lm
mv "$out/mc-standby-fuzz.new" "$out/mc-standby-fuzz"
echo "build-fuzz: $out/mc-standby-fuzz"
