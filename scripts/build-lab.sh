#!/usr/bin/env bash
# Build (and cache) the KVM lab: a Linux VM that the host runs under TCG
# with AMD SVM and nested paging emulated, in which KVM (and soft-RoCE)
# work, so that MC can be tested with KVM guests on machines that have
# no hardware virtualization.  See docs/devel/mc-kvm-lab.rst.
#
# Output in build/lab/: vmlinuz (Debian 12's generic kernel, which has
# kvm_amd and rdma_rxe as modules) and lab.cpio, an uncompressed
# initramfs that is the lab's whole root: busybox, Python, iproute2,
# kmod, e2fsprogs, the build tree's QEMU and qemu-img with their
# libraries and firmware, the test guest and tests/mc, laid out as the
# host has them (merged /usr) so that the tests run unchanged under
# /lab.  Rebuilt when this script, tests/mc, tests/lab, the QEMU binaries or
# the test guest change.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build=${MC_BUILD_DIR:-$top/build}
dl=$build/download
out=$build/lab
obj=$build/qemu
mkdir -p "$dl" "$out"

for f in "$obj/qemu-system-x86_64" "$obj/qemu-img" "$obj/tests/qtest/mc-test" \
         "$build/guest/vmlinuz"; do
    if [ ! -e "$f" ]; then
        echo "build-lab: $f is missing (make build guest)" >&2
        exit 1
    fi
done

want=$( (cat "$0" "$top"/tests/lab/* "$top"/tests/mc/*.py \
         "$obj/qemu-system-x86_64" "$obj/qemu-img" \
         "$obj/tests/qtest/mc-test" "$top"/bench/*.py \
         "$build/guest/vmlinuz" "$build/guest/initrd.img") | sha256sum |
       cut -d' ' -f1)
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$want" ] &&
   [ -f "$out/vmlinuz" ] && [ -f "$out/lab.cpio" ]; then
    exit 0
fi

# The kernel: whatever linux-image-amd64 points at, downloaded once.
deb=$(bash "$top/scripts/kernel-deb.sh" linux-image-amd64 "$dl")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/k"
kver=$(ls "$work/k/lib/modules" | head -n 1)
depmod -b "$work/k" "$kver"

root=$work/root
mkdir -p "$root"/usr/{bin,sbin,lib,lib64} "$root"/{dev,proc,sys,tmp,run,etc,root}
# merged /usr, as on the host: a library found at /lib/... is /usr/lib/...
for d in bin sbin lib lib64; do
    ln -s usr/$d "$root/$d"
done

# A file and, for an ELF program or library, every library it loads
# (ldd's answer, at the path the host has it).
add_file() {
    local f=$1 real
    real=$(readlink -f "$f")
    mkdir -p "$root$(dirname "$f")"
    [ -e "$root$f" ] || cp -L "$real" "$root$f"
}
add_libs() {
    local f lib
    for f in "$@"; do
        for lib in $(ldd "$f" 2>/dev/null |
                     awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }'); do
            add_file "$lib"
        done
    done
}
add_elf() {
    local f
    for f in "$@"; do
        add_file "$f"
    done
    add_libs "$@"
}

# Programs the tests and the init use, by the names they call.
add_elf /usr/bin/python3.11 /usr/sbin/ip /usr/sbin/tc /usr/sbin/bridge \
        /usr/sbin/mkfs.ext4 /usr/sbin/e2fsck /usr/sbin/debugfs \
        /usr/bin/kmod /usr/bin/socat /usr/bin/bash /usr/bin/certtool
ln -s python3.11 "$root/usr/bin/python3"
for t in modprobe insmod lsmod rmmod depmod modinfo; do
    ln -sf ../bin/kmod "$root/usr/sbin/$t"
done
# RDMA over soft-RoCE: iproute2's rdma, and libibverbs' rxe provider,
# which it finds through its driver file
add_elf /usr/bin/rdma /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so
add_file /etc/libibverbs.d/rxe.driver
# tc finds its qdisc modules and distribution tables there
[ -d /usr/lib/x86_64-linux-gnu/tc ] &&
    cp -a /usr/lib/x86_64-linux-gnu/tc "$root/usr/lib/x86_64-linux-gnu/"
# busybox for everything else (never over a real program)
cp /bin/busybox "$root/usr/bin/busybox"
for app in $("$root/usr/bin/busybox" --list); do
    [ -e "$root/usr/bin/$app" ] || [ -e "$root/usr/sbin/$app" ] ||
        ln -s busybox "$root/usr/bin/$app"
done

# Python's standard library, without what no test imports
py=/usr/lib/python3.11
mkdir -p "$root$py"
(cd "$py" && tar -c --exclude=./test --exclude=./idlelib --exclude=./tkinter \
     --exclude=./turtledemo --exclude=./ensurepip --exclude=./lib2to3 \
     --exclude=./pydoc_data --exclude='./config-*' --exclude=./site-packages \
     --exclude=./dist-packages . ) | (cd "$root$py" && tar -x)
add_elf "$py"/lib-dynload/*.so

# The kernel's modules for KVM, the test network and (issue 23) RDMA,
# with what they depend on, then their index.
mods="kvm_amd tun bridge veth dummy sch_tbf qemu_fw_cfg rdma_rxe ib_uverbs rdma_ucm
      crc32_generic"
for m in $mods; do
    modprobe -d "$work/k" -S "$kver" --show-depends "$m" |
        awk '$1 == "insmod" { print $2 }'
done | sort -u | while read -r ko; do
    rel=${ko#"$work/k"}
    mkdir -p "$root$(dirname "$rel")"
    cp "$ko" "$root$rel"
done
mkdir -p "$root/lib/modules/$kver"
cp "$work/k/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} \
   "$root/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$root" "$kver"
cp "$work/k/boot/vmlinuz-$kver" "$out/vmlinuz.new"

# The fork: the build tree's QEMU with its firmware (qemu-bundle links to
# Debian's firmware directories, copied to the same paths), the test
# guest, the tests.  /lab is the tests' top directory.
lab=$root/lab
mkdir -p "$lab/build/qemu" "$lab/build/guest" "$lab/tests"
add_libs "$obj/qemu-system-x86_64" "$obj/qemu-img" "$obj/tests/qtest/mc-test"
cp "$obj/qemu-system-x86_64" "$obj/qemu-img" "$lab/build/qemu/"
mkdir -p "$lab/build/qemu/tests/qtest"
cp "$obj/tests/qtest/mc-test" "$lab/build/qemu/tests/qtest/"
strip -g "$lab/build/qemu/qemu-system-x86_64" "$lab/build/qemu/qemu-img" \
    "$lab/build/qemu/tests/qtest/mc-test"
cp -a "$obj/qemu-bundle" "$lab/build/qemu/"
for d in /usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu; do
    mkdir -p "$root$(dirname "$d")"
    cp -rL "$d" "$root$d"
done
cp "$build/guest/vmlinuz" "$build/guest/initrd.img" "$lab/build/guest/"
mkdir -p "$lab/tests/mc" "$lab/tests/lab"
cp -a "$top"/tests/mc/*.py "$lab/tests/mc/"
cp -a "$top"/tests/lab/*.sh "$lab/tests/lab/"
mkdir -p "$lab/bench"
cp -a "$top"/bench/*.py "$lab/bench/"
install -m 755 "$top/tests/lab/init" "$root/init"
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
echo "127.0.0.1 localhost" > "$root/etc/hosts"

(cd "$root" && find . | cpio -o -H newc --quiet) > "$out/lab.cpio.new"
mv "$out/vmlinuz.new" "$out/vmlinuz"
mv "$out/lab.cpio.new" "$out/lab.cpio"
echo "$want" > "$out/.stamp"
echo "build-lab: kernel $kver, root $(du -h "$out/lab.cpio" | cut -f1)"
