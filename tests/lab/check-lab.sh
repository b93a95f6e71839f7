#!/usr/bin/env bash
# make check-lab, on the host: every functional test that applies with
# KVM guests ($LAB_TESTS, run.py patterns) with KVM's dirty bitmap, the
# ones that depend on the harvest ($LAB_RING_TESTS) with its dirty ring,
# and each mc-test qtest case with both; each in a boot of the lab of
# its own (tests/lab/lab.py --each), booted again when the lab's own
# kernel panicked (docs/devel/mc-kvm-lab.rst).  Ends with one summary
# line; exits non-zero if anything failed.
set -u
cd "$(dirname "$0")/../.."
lab="/usr/bin/python3 tests/lab/lab.py --panic-retries 2 --timeout 1500"
ring=kvm,dirty-ring-size=4096
out=$(mktemp)
trap 'rm -f "$out"' EXIT

$lab --each --accel kvm $LAB_TESTS | tee -a "$out"
$lab --each --accel $ring $LAB_RING_TESTS | tee -a "$out"
for accel in kvm $ring; do
    name="kills-${accel//[,=]/-}"
    if $lab --name "$name" --shell "bash tests/lab/smoke.sh $accel kills"; then
        v=PASS
    else
        v=FAIL
    fi
    echo "$v lab $accel primary-kill x2" | tee -a "$out"
done
for accel in kvm $ring; do
    for t in $(QTEST_QEMU_BINARY=build/qemu/qemu-system-x86_64 \
             build/qemu/tests/qtest/mc-test -l | grep '^/'); do
        name="mc-test-${accel//[,=]/-}${t//\//-}"
        # QTEST_LOG: QEMU's stderr (a KVM internal error's dump) is kept
        # and shown on a failure, beside the test's own lines
        if $lab --name "$name" --shell "
            QTEST_LOG=1 QTEST_QEMU_BINARY=/lab/build/qemu/qemu-system-x86_64 \
            QTEST_MIGRATION_ACCEL=$accel \
            build/qemu/tests/qtest/mc-test --tap -k -p $t > /tmp/qtest.log 2>&1
            rc=\$?
            grep -E '^(ok|not ok)' /tmp/qtest.log
            if [ \$rc != 0 ] || grep -q '^not ok' /tmp/qtest.log; then
                grep -avE '^(\\[|\\{|<<<|>>>)' /tmp/qtest.log | tail -60
                exit 1
            fi" > "$out.one"; then
            v=PASS
            grep -q '# SKIP' "build/lab/logs/$name.log" && v=SKIP
        else
            v=FAIL
        fi
        echo "$v lab $accel mc-test $t" | tee -a "$out"
    done
done
rm -f "$out.one"
pass=$(grep -c '^PASS ' "$out")
fail=$(grep -c '^FAIL ' "$out")
skip=$(grep -c '^SKIP ' "$out")
echo "check-lab: $pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
