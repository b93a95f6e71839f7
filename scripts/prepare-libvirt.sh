#!/usr/bin/env bash
# Lay out the libvirt source tree the fork builds, like prepare-base.sh
# does for QEMU:
#   1. fetch Debian 12's libvirt 9.0 source package once (cached),
#   2. unpack the upstream tarball and apply Debian's own patch series
#      (so the result behaves like Debian 12's libvirt),
#   3. apply our quilt series in libvirt/patches/ with no fuzz.
# With --fetch-only: step 1 alone, and print the .dsc's path.
# Incremental: Debian's tree is unpacked once per package version; a
# changed series of ours is re-applied in place.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${MC_BUILD_DIR:-$top/build}
dl=$build/libvirt-download
src=$build/libvirt-src
ours=$top/libvirt/patches

mkdir -p "$dl"
dsc=$(ls "$dl"/libvirt_9.0.*.dsc 2>/dev/null | head -n 1 || true)
if [ -z "$dsc" ]; then
    echo "prepare-libvirt: fetching the libvirt source package (apt-get source)" >&2
    (cd "$dl" && apt-get source --download-only -q libvirt/bookworm >&2) || {
        echo "prepare-libvirt: apt-get source failed; run scripts/setup-host.sh first" >&2
        exit 1
    }
    dsc=$(ls "$dl"/libvirt_*.dsc 2>/dev/null | head -n 1 || true)
fi
debver=$(sed -n 's/^Version: //p' "$dsc")
case "$debver" in
    9.0.0-*) ;;
    *) echo "prepare-libvirt: expected libvirt 9.0.0 from Debian 12, got $debver" >&2
       rm -f "$dl"/libvirt_*
       exit 1 ;;
esac
orig=$dl/libvirt_9.0.0.orig.tar.xz
debtar=$dl/libvirt_$debver.debian.tar.xz
for f in "$orig" "$debtar"; do
    [ -f "$f" ] || { echo "prepare-libvirt: $f is missing" >&2; exit 1; }
done

# build-libvirt-debs.sh needs the package only.
if [ "${1:-}" = --fetch-only ]; then
    echo "$dsc"
    exit 0
fi

# Debian's tree: unpacked and patched only when the package changes.
if [ ! -f "$src/.mc-libvirt-base" ] || [ "$(cat "$src/.mc-libvirt-base")" != "$debver" ]; then
    echo "prepare-libvirt: unpacking libvirt $debver"
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xJf "$orig" -C "$src.tmp" --strip-components=1
    tar -xJf "$debtar" -C "$src.tmp"
    (cd "$src.tmp" && QUILT_PATCHES=debian/patches QUILT_PC=.pc-debian \
        quilt --quiltrc=/dev/null push -a -q --fuzz=0 >/dev/null) || {
        echo "prepare-libvirt: Debian's series does not apply" >&2
        exit 1
    }
    mv "$src.tmp" "$src"
    echo "$debver" > "$src/.mc-libvirt-base"
fi

# Ours, in place: only the files a changed series touches are rebuilt.
bash "$top/scripts/apply-series.sh" "$src" "$ours" .mc-libvirt-series prepare-libvirt
