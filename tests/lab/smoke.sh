# One part of the lab's smoke (make check, tests/mc/test_lab.py, runs
# udp and memory; kills is for make check-lab and by hand), run in
# /lab: smoke.sh ACCEL PART, ACCEL kvm (KVM's dirty bitmap) or
# kvm,dirty-ring-size=N (its dirty ring), PART one of
#   udp      the exactly-once UDP check across kill -9 of the primary at
#            mc-delay 100, 10 and 0, and with a disk writer (it also fails
#            on a checkpoint that polled the main loop after its output
#            barrier)
#   memory   the standby's memory against the primary's, page by page;
#            with the ring, a guest dirtying faster than the buffer held
#            by the ring's bound (test_dirty_bound)
#   kills    kill -9 of the primary under a disk writer, a TCP stream and
#            mc-dirty's check mode (reliability.py's primary-kill)
#   rdma     MC over soft-RoCE: the memory check and the kill of the
#            primary under a TCP stream (test_rdma's others are for make
#            check-lab: in two clean-clone runs of make check, one of them
#            failed each time, a different one, see docs/devel/mc-kvm-lab.rst)
# mc-delay 0 with a disk writer starves the guest in the lab (every
# instruction emulated: a record every few seconds): the disk variants
# run at mc-delay 10 and 100 only.
export MC_UDP_DISK_DELAYS=10 MC_REL_DELAYS=10,100
export MC_TEST_ACCEL=$1
echo "mc-lab: accel $1, $2"
case "$2" in
udp) exec python3 tests/mc/run.py --suite functional test_udp_failover ;;
memory) exec python3 tests/mc/run.py --suite functional test_consistency \
           test_dirty_bound ;;
kills) exec python3 tests/mc/reliability.py --cases primary-kill --runs 2 ;;
rdma) exec python3 tests/mc/run.py --suite functional test_rdma_memory \
           test_rdma_failover_kill_primary ;;
*) echo "smoke.sh: no part $2"; exit 2 ;;
esac
