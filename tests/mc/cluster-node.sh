#!/bin/bash
#
# PID 1 of a cluster test node (tests/mc/mccluster.py), run in the
# node's own network, mount, UTS, IPC and PID namespaces: its own /run,
# /dev/shm and hostname, its persistent directories bound from ROOT,
# the cluster's agent, test fencing device and virsh overlaid on the
# host's /usr; then corosync, pacemaker and libvirtd.  Killing this
# process kills the node.
#
# usage: cluster-node.sh ROOT NAME
# environment: MC_NODE_DIRS, MC_FENCE_DIR, MC_AGENT, MC_FENCE,
#              MC_LIBVIRT_RUN, MC_LIBVIRTD, MC_VIRSH
set -eu
root=$1
name=$2

hostname "$name"
mount --make-rprivate /
mount -t tmpfs -o mode=755 run /run
mount -t tmpfs -o mode=1777 shm /dev/shm
mkdir -p /run/libvirt /run/resource-agents /run/lock /run/mc-fence
for d in $MC_NODE_DIRS; do
    mount --bind "$root$d" "$d"
done
mount --bind "$root/hosts" /etc/hosts
mount --bind "$MC_FENCE_DIR" /run/mc-fence

ov=/run/mc-overlay
overlay() {
    mkdir -p "$ov/$1/up" "$ov/$1/work"
    mount -t overlay "mc-$1" -o \
        "lowerdir=$2,upperdir=$ov/$1/up,workdir=$ov/$1/work" "$2"
}
mkdir -p "$ov/sbin/up" "$ov/ocf/up/qemu-mc" "$ov/bin/up"
install -m 755 "$MC_FENCE" "$ov/sbin/up/fence_mc_test"
install -m 755 "$MC_AGENT" "$ov/ocf/up/qemu-mc/mc-domain"
printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$MC_LIBVIRT_RUN" "$MC_VIRSH" \
    > "$ov/bin/up/virsh"
chmod 755 "$ov/bin/up/virsh"
overlay sbin /usr/sbin
overlay ocf /usr/lib/ocf/resource.d
overlay bin /usr/bin

ip link set lo up
corosync -f > /var/log/corosync/corosync.out 2>&1 &
for _ in $(seq 100); do
    corosync-cfgtool -s > /dev/null 2>&1 && break
    sleep 0.1
done
PCMK_logfile=/var/log/pacemaker/pacemaker.log \
    pacemakerd > /var/log/pacemaker/pacemakerd.out 2>&1 &
"$MC_LIBVIRT_RUN" "$MC_LIBVIRTD" --listen \
    --pid-file /run/libvirt/libvirtd.pid \
    >> /var/log/libvirt/libvirtd.out 2>&1 &
echo "node $name up"

# as PID 1: reap whatever ends up here
set +e
while :; do
    wait -n 2> /dev/null || sleep 1
done
