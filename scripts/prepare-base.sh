#!/usr/bin/env bash
# Lay out the QEMU source tree the fork builds from:
#   1. fetch Debian 13's QEMU 10.0.x source package once (cached),
#   2. unpack the upstream tarball (Debian's own patches are not used),
#   3. apply our quilt series in patches/ with no fuzz,
#   4. copy our overlay files (new files at QEMU paths) over it.
# Re-running is cheap and incremental: an unchanged series is not re-applied
# and overlay files are copied only when they changed, keeping mtimes so that
# ninja rebuilds only what depends on them.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${MC_BUILD_DIR:-$top/build}
dl=$build/download
src=$build/src
overlay_dirs="accel backends block chardev crypto docs hw include io migration monitor net qapi qom system tests ui util"

mkdir -p "$dl"

# 1. Fetch (download only) the source package, cached across rebuilds.
orig=$(ls "$dl"/qemu_10.0.*.orig.tar.xz 2>/dev/null | head -n 1 || true)
if [ -z "$orig" ]; then
    echo "prepare-base: fetching the QEMU source package (apt-get source)"
    (cd "$dl" && apt-get source --download-only -q qemu) || {
        echo "prepare-base: apt-get source failed; run scripts/setup-host.sh first" >&2
        exit 1
    }
    orig=$(ls "$dl"/qemu_*.orig.tar.xz 2>/dev/null | head -n 1 || true)
fi
dsc=$(ls "$dl"/qemu_*.dsc 2>/dev/null | head -n 1 || true)
if [ -z "$orig" ] || [ -z "$dsc" ]; then
    echo "prepare-base: no QEMU source package in $dl" >&2
    exit 1
fi
debver=$(sed -n 's/^Version: //p' "$dsc")
case "$debver" in
    1:10.0.*) ;;
    *) echo "prepare-base: expected a QEMU 10.0.x source package, got $debver" >&2
       rm -f "$dl"/qemu_*
       exit 1 ;;
esac
upver=${debver#1:}
upver=${upver%%+*}

# 2. + 3. Unpack and patch.  The tree is rebuilt from scratch only when the
# tarball changes; a changed series is re-applied in place (quilt restores the
# files the old patches touched, so only those are rebuilt).
if [ ! -f "$src/.mc-base" ] || [ "$(cat "$src/.mc-base")" != "$debver" ]; then
    echo "prepare-base: unpacking QEMU $upver (Debian $debver)"
    rm -rf "$src" "$build/src.tmp"
    mkdir -p "$build/src.tmp"
    tar -xJf "$orig" -C "$build/src.tmp" --strip-components=1
    if [ "$(cat "$build/src.tmp/VERSION")" != "$upver" ]; then
        echo "prepare-base: tarball VERSION does not match $upver" >&2
        exit 1
    fi
    mv "$build/src.tmp" "$src"
    echo "$debver" > "$src/.mc-base"
fi

bash "$top/scripts/apply-series.sh" "$src" "$top/patches" .mc-series prepare-base

# 4. Overlay.  Files that left the overlay since the last run are removed.
new_list=$(mktemp)
(cd "$top" && for d in $overlay_dirs; do if [ -d "$d" ]; then find "$d" -type f; fi; done | sort) > "$new_list"
if [ -f "$src/.mc-overlay" ]; then
    comm -23 "$src/.mc-overlay" "$new_list" | while read -r f; do
        rm -f "$src/$f"
    done
fi
while read -r f; do
    if ! cmp -s "$top/$f" "$src/$f"; then
        mkdir -p "$(dirname "$src/$f")"
        cp "$top/$f" "$src/$f"
    fi
done < "$new_list"
mv "$new_list" "$src/.mc-overlay"

echo "$debver" > "$build/base-version"
echo "prepare-base: QEMU $upver (Debian source $debver), $(grep -c . "$top/patches/series" || true) patches, $(wc -l < "$src/.mc-overlay") overlay files"
