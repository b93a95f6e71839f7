#!/usr/bin/env bash
# Build (and cache) the small Linux test guest: Debian's cloud kernel and a
# busybox-static initramfs with virtio-net, virtio-blk and virtio-scsi
# modules (ext4 is built into that kernel) and our test programs
# (guest/).  Output: build/guest/vmlinuz and build/guest/initrd.img.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${MC_BUILD_DIR:-$top/build}
dl=$build/download
out=$build/guest
mkdir -p "$dl" "$out"

want=$(cat "$0" "$top"/guest/* | sha256sum | cut -d' ' -f1)
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$want" ] &&
   [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ]; then
    exit 0
fi

# The kernel: whatever linux-image-cloud-amd64 points at, downloaded once.
deb=$(bash "$top/scripts/kernel-deb.sh" linux-image-cloud-amd64 "$dl")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/k"
kver=$(ls "$work/k/lib/modules" | head -n 1)
cp "$work/k/boot/vmlinuz-$kver" "$out/vmlinuz"

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
cp /bin/busybox "$root/bin/busybox"
for app in $("$root/bin/busybox" --list); do
    [ "$app" = busybox ] || ln -s busybox "$root/bin/$app"
done
for m in drivers/virtio/virtio_ring drivers/virtio/virtio \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci net/core/failover drivers/net/net_failover \
         drivers/net/virtio_net drivers/block/virtio_blk \
         drivers/scsi/scsi_common drivers/scsi/scsi_mod drivers/scsi/sd_mod \
         drivers/scsi/virtio_scsi; do
    cp "$work/k/lib/modules/$kver/kernel/$m.ko" "$root/lib/modules/"
done
for p in mc-dirty mc-tcpserv mc-diskwriter mc-diskbench mc-udpseq; do
    gcc -O2 -static -Wall -o "$root/bin/$p" "$top/guest/$p.c"
done
install -m 755 "$top/guest/init" "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.img"
echo "$want" > "$out/.stamp"
echo "build-guest: kernel $kver, initrd $(du -h "$out/initrd.img" | cut -f1)"
