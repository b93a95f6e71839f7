#!/usr/bin/env bash
# Build Debian 12 binary packages of the fork from the build tree:
#   qemu-mc-system-x86  the emulator, /usr/bin/qemu-mc-system-x86_64
#   qemu-mc-utils       qemu-img, /usr/bin/qemu-mc-img
#   qemu-mc-cluster     the Pacemaker resource agent ocf:qemu-mc:mc-domain
#                       (cluster/ocf/mc-domain) and its alert agent
#                       (cluster/alerts), architecture all
# They install beside Debian's qemu-system-x86 and qemu-utils (no shared
# file, no diversion): the programs live in /usr/lib/qemu-mc/bin and the
# commands in /usr/bin carry the qemu-mc- prefix.  No data file is needed
# at run time (no VNC keymaps in this build; trace-events-all is only
# read by the trace tools).  Firmware is not bundled: the emulator searches
# Debian's seabios, ipxe-qemu and qemu-system-data directories
# (--firmwarepath in the Makefile), and the package depends on them.
#
# Version: <Debian's QEMU version>+mc<commits>, e.g. 10.0.13+ds-0+deb13u1+mc212:
# it names the base, and a later commit of this repository sorts later, so
# `dpkg -i`/`apt install` of a newer build is a clean upgrade.
#
# Usage: build-debs.sh OBJDIR OUTDIR
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
obj=$1 out=$2
build=${MC_BUILD_DIR:-$top/build}

for f in "$obj/qemu-system-x86_64" "$obj/qemu-img"; do
    if [ ! -x "$f" ]; then
        echo "build-debs: $f is missing (run make build)" >&2
        exit 1
    fi
done
prefix=$(sed -n 's/.*--prefix=\([^ ]*\).*/\1/p' "$obj/.mc-configure")
if [ "$prefix" != /usr ]; then
    echo "build-debs: $obj is configured for prefix '$prefix', not /usr" >&2
    exit 1
fi
base=$(sed 's/^1://' "$build/base-version")
count=$(git -C "$top" rev-list --count HEAD 2>/dev/null || echo 0)
version=${MC_DEB_VERSION:-$base+mc$count}
commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)
arch=$(dpkg --print-architecture)
maint="QEMU MC fork maintainers <qemu-mc@localhost>"

stage=$out/stage
rm -rf "$stage"
mkdir -p "$out"

# A control file dpkg-shlibdeps can read: it computes the library
# dependencies of each package's ELF files from the installed system.
mkdir -p "$stage/debian"
cat > "$stage/debian/control" <<EOF
Source: qemu-mc
Maintainer: $maint

Package: qemu-mc-system-x86
Architecture: $arch

Package: qemu-mc-utils
Architecture: $arch
EOF

docs() {
    local pkg=$1 root=$2 d
    d=$root/usr/share/doc/$pkg
    mkdir -p "$d"
    cat > "$d/copyright" <<EOF
$pkg: QEMU $base with the micro-checkpointing (MC) fork's changes.

QEMU is free software, mostly under the GNU General Public License,
version 2 or later (/usr/share/common-licenses/GPL-2); some parts are
under other free licenses, as stated in the headers of the source files
of the QEMU release named above.  The fork's changes (the quilt series
and the new files of its repository) are under GPL-2.0-or-later.
EOF
    {
        echo "qemu-mc ($version) unstable; urgency=medium"
        echo
        echo "  * Built from the fork at commit $commit on QEMU $base."
        echo
        echo " -- $maint  $(date -R)"
    } | gzip -9n > "$d/changelog.Debian.gz"
}

# pkg, description, depends-extra, then src:dest pairs under /usr/lib/qemu-mc/bin
build_pkg() {
    local pkg=$1 desc=$2 extra=$3 root shlibs depends size
    root=$stage/$pkg
    shift 3
    mkdir -p "$root/DEBIAN" "$root/usr/lib/qemu-mc/bin" "$root/usr/bin"
    local pair bin link
    for pair in "$@"; do
        bin=${pair%%:*} link=${pair#*:}
        install -m 0755 "$obj/$bin" "$root/usr/lib/qemu-mc/bin/$bin"
        strip --strip-unneeded --remove-section=.comment \
            "$root/usr/lib/qemu-mc/bin/$bin"
        ln -s "../lib/qemu-mc/bin/$bin" "$root/usr/bin/$link"
    done
    docs "$pkg" "$root"
    shlibs=$(cd "$stage" && dpkg-shlibdeps -O \
        "$root"/usr/lib/qemu-mc/bin/* 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
    depends=$shlibs${extra:+, $extra}
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    cat > "$root/DEBIAN/control" <<EOF
Package: $pkg
Source: qemu-mc
Version: $version
Architecture: $arch
Maintainer: $maint
Installed-Size: $size
Depends: $depends
Section: otherosfs
Priority: optional
Homepage: https://www.qemu.org/
Description: $desc
 QEMU $base with micro-checkpointing (MC): a primary VM checkpointed
 every few milliseconds to a standby QEMU that takes over when the
 primary fails, with guest network output held until the standby has
 the checkpoint that produced it.  Installs beside Debian's QEMU
 packages: the commands are named qemu-mc-*.
EOF
    pack "$pkg" "$root" "$arch"
}

# pkg, staging root, architecture: md5sums, then the .deb
pack() {
    local pkg=$1 root=$2 a=$3
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -print0 |
        sort -z | xargs -0 md5sum | sed 's| \./| |') > "$root/DEBIAN/md5sums"
    dpkg-deb --root-owner-group -Zxz --build "$root" \
        "$out/${pkg}_${version}_$a.deb" >/dev/null
    echo "build-debs: $out/${pkg}_${version}_$a.deb"
}

build_pkg qemu-mc-system-x86 \
    "QEMU x86_64 system emulator with micro-checkpointing (MC)" \
    "seabios, ipxe-qemu, qemu-system-data" \
    qemu-system-x86_64:qemu-mc-system-x86_64
build_pkg qemu-mc-utils \
    "QEMU disk image utility (qemu-img) of the MC fork" "" \
    qemu-img:qemu-mc-img
# The resource agent: a script, no ELF file, no shlibs.
agent_pkg() {
    local pkg=qemu-mc-cluster root size
    root=$stage/$pkg
    mkdir -p "$root/DEBIAN" "$root/usr/lib/ocf/resource.d/qemu-mc" \
        "$root/usr/share/qemu-mc/alerts"
    install -m 0755 "$top/cluster/ocf/mc-domain" \
        "$root/usr/lib/ocf/resource.d/qemu-mc/mc-domain"
    install -m 0755 "$top/cluster/alerts/mc-protection-alert" \
        "$root/usr/share/qemu-mc/alerts/mc-protection-alert"
    docs "$pkg" "$root"
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    cat > "$root/DEBIAN/control" <<EOF
Package: $pkg
Source: qemu-mc
Version: $version
Architecture: all
Maintainer: $maint
Installed-Size: $size
Depends: resource-agents, pacemaker-cli-utils
Recommends: pacemaker, corosync, libvirt-clients
Section: admin
Priority: optional
Homepage: https://www.qemu.org/
Description: Pacemaker resource agent for micro-checkpointed libvirt domains
 ocf:qemu-mc:mc-domain runs a libvirt domain protected by the QEMU MC
 fork's micro-checkpointing as a promotable clone: Pacemaker decides
 which node runs it, takes over from the standby when the primary's
 node fails and protects the domain again on another node.  Needs the
 MC fork's QEMU and libvirt on every node, and fencing.
EOF
    pack "$pkg" "$root" all
}
agent_pkg
rm -rf "$stage"
