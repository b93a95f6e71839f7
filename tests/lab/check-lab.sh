# make check-lab, run in /lab: every functional test that applies with
# KVM guests (run.py patterns in $LAB_TESTS), with KVM's dirty bitmap,
# then the ones that depend on the harvest with its dirty ring.
# mc-delay 0 with a disk writer starves the guest in the lab (every
# instruction emulated: a record every few seconds): the disk variants
# run at mc-delay 10 and 100 only.
export MC_UDP_DISK_DELAYS=10 MC_REL_DELAYS=10,100
set -o pipefail
rc=0
echo "mc-lab: accel kvm"
MC_TEST_ACCEL=kvm python3 tests/mc/run.py --suite functional $LAB_TESTS || rc=1
echo "mc-lab: accel kvm,dirty-ring-size=4096"
MC_TEST_ACCEL=kvm,dirty-ring-size=4096 python3 tests/mc/run.py \
    --suite functional test_consistency test_udp test_net_failover \
    test_disk_kill_primary_records test_pipeline test_throttle \
    test_reliability || rc=1
# the qtest cases (upstream's migration framework and its guest), both
# harvests; the TLS cases run too
for accel in kvm kvm,dirty-ring-size=4096; do
    echo "mc-lab: mc-test, accel $accel"
    QTEST_QEMU_BINARY=/lab/build/qemu/qemu-system-x86_64 \
    QTEST_MIGRATION_ACCEL=$accel \
        build/qemu/tests/qtest/mc-test --tap -k | grep -E '^(ok|not ok|#)' ||
        rc=1
done
exit $rc
