#!/usr/bin/env bash
# Build Debian 12 binary packages of libvirt 9.0 with the MC patch queue,
# through Debian's own packaging: the source package Debian ships
# (apt-get source, fetched by prepare-libvirt.sh), its debian/ directory
# and rules unchanged, our series appended to debian/patches under mc/.
#
# The result is the same set of packages as Debian's (libvirt0,
# libvirt-clients, libvirt-daemon, libvirt-daemon-driver-qemu,
# libvirt-daemon-system, ...), with the version
# <Debian's version>+mc<commits>, e.g. 9.0.0-4+deb12u2+mc240.  It sorts
# after Debian's, so `apt install ./*.deb` upgrades Debian's libvirt in
# place, and every package that depends on libvirt0 keeps working; going
# back is `apt install libvirt0=<Debian's version> ...` (see
# docs/system/micro-checkpointing-libvirt.rst).
#
# Build dependencies: Debian's Build-Depends are installed with apt,
# except qemu-system-common.  On an MC host, qemu-system-data comes from
# bookworm-backports (QEMU 10's firmware for the fork) and breaks
# bookworm's qemu-system-common; libvirt's build only looks for
# qemu-bridge-helper in it and falls back to the default path.  So the
# package is built with dpkg-buildpackage -d once every other build
# dependency is checked to be there.
#
# Usage: build-libvirt-debs.sh OUTDIR
# Environment: MC_LIBVIRT_DEBS_CHECK=1 runs Debian's unit tests too.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: build-libvirt-debs.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=${MC_BUILD_DIR:-$top/build}
work=$build/libvirt-deb
ours=$top/libvirt/patches

if [ "$(id -u)" != 0 ]; then
    echo "build-libvirt-debs: must run as root (apt-get install of the build dependencies)" >&2
    exit 1
fi

dsc=$(bash "$top/scripts/prepare-libvirt.sh" --fetch-only)
debver=$(sed -n 's/^Version: //p' "$dsc")
count=$(git -C "$top" rev-list --count HEAD 2>/dev/null || echo 0)
commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)
version=${MC_DEB_VERSION:-$debver+mc$count}

rm -rf "$work"
mkdir -p "$work" "$out"
# Debian's own tree with Debian's patches applied (format 3.0 (quilt))
dpkg-source --no-check -x "$dsc" "$work/libvirt" >/dev/null
cd "$work/libvirt"

# Ours after Debian's, in their own folder: no name can clash.
mkdir -p debian/patches/mc
while read -r p; do
    case "$p" in ''|'#'*) continue ;; esac
    cp "$ours/$p" "debian/patches/mc/$p"
    echo "mc/$p" >> debian/patches/series
done < "$ours/series"
if ! QUILT_PATCHES=debian/patches quilt --quiltrc=/dev/null push -a -q --fuzz=0 >/dev/null; then
    echo "build-libvirt-debs: our series does not apply to Debian's $debver" >&2
    exit 1
fi

# The version names the base and MC.
{
    echo "libvirt ($version) bookworm; urgency=medium"
    echo
    echo "  * Micro-checkpointing (MC) patch queue of the QEMU MC fork,"
    echo "    commit $commit: $(grep -cv '^#' "$ours/series") patches in debian/patches/mc."
    echo
    echo " -- QEMU MC fork maintainers <qemu-mc@localhost>  $(date -R)"
    echo
    cat debian/changelog
} > debian/changelog.new
mv debian/changelog.new debian/changelog

# Build dependencies, from Debian's control file.
deps=$(sed -n '/^Build-Depends:/,/^[A-Z][A-Za-z-]*:/{/^Build-Depends:/d;/^[A-Z]/d;p}' debian/control |
       sed 's/^ *//; s/,$//; s/ *\[[^]]*\]//; s/ *([^)]*)//; s/:native//' |
       grep -v '^qemu-system-common$' | grep .)
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
if ! dpkg-checkbuilddeps -d "$(echo $deps | sed 's/ /, /g')" /dev/null 2>/dev/null; then
    echo "build-libvirt-debs: installing libvirt's build dependencies (apt-get)"
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $deps >/dev/null
fi
# Everything but qemu-system-common must be there now.
unmet=$({ dpkg-checkbuilddeps 2>&1 || true; } |
        sed -n 's/.*Unmet build dependencies: //p' |
        sed 's/qemu-system-common[^ ]*//; s/^ *//; s/ *$//')
if [ -n "$unmet" ]; then
    echo "build-libvirt-debs: unmet build dependencies: $unmet" >&2
    exit 1
fi

opts="parallel=$(nproc)"
[ "${MC_LIBVIRT_DEBS_CHECK:-0}" = 1 ] || opts="$opts nocheck"
echo "build-libvirt-debs: building libvirt $version (dpkg-buildpackage, $opts)"
start=$(date +%s)
if ! DEB_BUILD_OPTIONS="$opts" dpkg-buildpackage -b -uc -us -d \
        > "$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    echo "build-libvirt-debs: dpkg-buildpackage failed; log in $work/build.log" >&2
    exit 1
fi
rm -f "$out"/*.deb
mv "$work"/*.deb "$out"/
echo "build-libvirt-debs: $(ls "$out"/*.deb | wc -l) packages in $out," \
     "built in $(( $(date +%s) - start )) s"
