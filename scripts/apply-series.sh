#!/usr/bin/env bash
# Apply one of our quilt series to a source tree, in place and only when
# the series changed: the old series is popped (quilt restores the files
# its patches touched) and the new one pushed with no fuzz, and the
# restored files are touched afterwards (quilt gives them back their old
# mtimes, which ninja would take as up to date), so only they rebuild.
# Shared by prepare-base.sh (QEMU) and prepare-libvirt.sh.
#
# Usage: apply-series.sh SRC PATCHES_DIR STAMP_NAME LABEL
set -euo pipefail
src=$1 patches=$2 stamp=$3 label=$4

sum=$(cd "$patches" && cat series $(ls *.patch 2>/dev/null) | sha256sum | cut -d' ' -f1)
if [ -f "$src/$stamp" ] && [ "$(cat "$src/$stamp")" = "$sum" ]; then
    exit 0
fi

export QUILT_PATCHES=$patches QUILT_PC=.pc
touched=""
if [ -d "$src/.pc" ]; then
    touched=$(cd "$src/.pc" && find . -mindepth 2 -type f ! -name '.*' | cut -d/ -f3- | sort -u)
    (cd "$src" && quilt --quiltrc=/dev/null pop -a -f -q >/dev/null) || true
fi
rm -f "$src/$stamp"
if [ -s "$patches/series" ]; then
    echo "$label: applying $patches/series"
    (cd "$src" && quilt --quiltrc=/dev/null push -a -q --fuzz=0) || {
        echo "$label: a patch in $patches/series does not apply with no fuzz" >&2
        exit 1
    }
fi
for f in $touched; do
    [ -e "$src/$f" ] && touch "$src/$f"
done
echo "$sum" > "$src/$stamp"
