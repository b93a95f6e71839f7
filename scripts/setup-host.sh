#!/usr/bin/env bash
# Install everything the MC fork needs to build, test and run its demo on a
# Debian 12 host.  Idempotent; run as root.  Extra suites (bookworm-backports
# for meson >= 1.5 and pycotap, trixie source entries for the QEMU 10.0
# source package, bookworm source entries for libvirt 9.0) are derived from the machine's own apt sources, so no
# archive host is written in this repository.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "setup-host: must run as root (apt-get install)" >&2
    exit 1
fi

stamp=/var/lib/qemu-mc-setup.stamp
pkgs_file=$(dirname "$0")/host-packages.txt
want=$(sha256sum "$pkgs_file" "$0" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "setup-host: host already set up"
    exit 0
fi

# Find the main Debian archive URI from existing apt configuration: the
# deb822 file first, then one-line sources.
find_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '
            /^$/ { if (u && s ~ /(^| )bookworm( |$)/) { print u; done = 1; exit } u=""; s="" }
            /^URIs:/ { u=$2 }
            /^Suites:/ { $1=""; s=$0 }
            END { if (!done && u && s ~ /(^| )bookworm( |$)/) print u }' "$f")
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk '$1 == "deb" && $0 ~ / bookworm / { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f")
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
}

mirror=$(find_mirror)
if [ -z "$mirror" ]; then
    echo "setup-host: no bookworm entry found in the apt sources" >&2
    exit 1
fi

extra=/etc/apt/sources.list.d/qemu-mc.sources
cat > "$extra.new" <<SRC
# Added by qemu-mc scripts/setup-host.sh
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: $mirror
Suites: trixie bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
if ! cmp -s "$extra.new" "$extra" 2>/dev/null; then
    mv "$extra.new" "$extra"
else
    rm -f "$extra.new"
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
mapfile -t main_pkgs < <(grep -v '^#' "$pkgs_file" | awk '$2 == "" {print $1}' | grep .)
mapfile -t bp_pkgs < <(grep -v '^#' "$pkgs_file" | awk '$2 == "backports" {print $1}')
apt-get install -y -q --no-install-recommends "${main_pkgs[@]}"
apt-get install -y -q --no-install-recommends -t bookworm-backports "${bp_pkgs[@]}"
echo "$want" > "$stamp"
echo "setup-host: done"
