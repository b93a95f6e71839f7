# QEMU micro-checkpointing (MC) fork: top-level driver.
#
#   make check   set up the host, build, and run every test (what CI runs)
#   make build   fetch + patch + overlay the QEMU base and build it
#   make guest   build the small Linux test guest
#   make demo    set up, build, run a protected VM pair and fail it over
#   make bench   set up, build, measure (docs/benchmarks.md, docs/bench/)
#   make check-disk-long  build, then 20 kill -9 runs of the disk replication test
#   make check-reliability  build, then the long reliability runs (about an
#                hour): prints the table and writes docs/reliability.md
#   make check-asan  build with ASan/LSan, then the 200,000-checkpoint soak
#   make lab     the KVM lab image (a VM run under TCG with nested SVM)
#   make check-lab  build, then every KVM test inside the lab
#   make lab-bench  MC's pause under KVM against stop+cont, in the lab
#   make lab-bench-rdma  MC over RDMA (soft-RoCE) against TCP, in the lab
#   make bench-switchover  mc-switchover's downtime against a migration's
#   make bench-migration-modes  a guest precopy cannot move: precopy,
#                auto-converge, postcopy, MC + mc-switchover
#   make check-cluster  every Pacemaker scenario 10 times (docs/bench/cluster.md)
#   make debs    build, then Debian packages in build/debs (qemu-mc-*)
#   make libvirt fetch + patch libvirt 9.0 and build it (build/libvirt)
#   make libvirt-debs  Debian's libvirt packages with our series (build/libvirt-debs)
#
# Layout: build/download (cached source package), build/src (base +
# patches/ + overlay), build/qemu (meson build directory), build/guest.

TOP := $(abspath .)
BUILD := $(TOP)/build
SRC := $(BUILD)/src
OBJ := $(BUILD)/qemu
JOBS ?= $(shell nproc)

# Where the packages (make debs) put things, beside Debian's QEMU: programs
# in /usr/lib/qemu-mc/bin, data in /usr/share/qemu-mc, config in
# /etc/qemu-mc.  The build tree runs the same binaries (qemu-bundle/).
QEMU_LAYOUT := --prefix=/usr --bindir=lib/qemu-mc/bin \
	--libexecdir=lib/qemu-mc/libexec --with-suffix=qemu-mc \
	--sysconfdir=/etc --localstatedir=/var

# A lean x86_64 build with what MC and its peers need: TCG and KVM, slirp,
# RDMA, upstream COLO (replication + colo-proxy), TLS, fdt, qemu-img, tests.
QEMU_CONFIGURE := --target-list=x86_64-softmmu --without-default-features \
	--enable-tcg --enable-kvm --enable-slirp --enable-rdma --enable-fdt=system \
	--enable-replication --enable-colo-proxy --enable-gnutls --enable-nettle \
	--enable-tools --enable-attr --enable-cap-ng --enable-linux-aio \
	--disable-docs --disable-install-blobs --disable-werror \
	--python=/usr/bin/python3 \
	--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
	$(QEMU_LAYOUT)

# libvirt 9.0 (Debian 12's source package + Debian's patches + ours in
# libvirt/patches): the QEMU and remote drivers, libvirtd/virtqemud and
# virsh, laid out like Debian's (paths, legacy libvirtd mode), with the
# unit tests of the areas our patches touch, and the documentation
# (Debian's package builds it: its scripts check every API's version).
LIBVIRT_SRC := $(BUILD)/libvirt-src
LIBVIRT_OBJ := $(BUILD)/libvirt
LIBVIRT_CONFIGURE := --prefix=/usr --sysconfdir=/etc --localstatedir=/var \
	--libexecdir=/usr/lib/libvirt -Drunstatedir=/run -Dsystem=true \
	-Dremote_default_mode=legacy -Dwerror=true \
	-Ddriver_qemu=enabled -Ddriver_remote=enabled -Ddriver_libvirtd=enabled \
	-Ddriver_test=enabled -Dtests=enabled -Dexpensive_tests=disabled \
	-Dqemu_user=root -Dqemu_group=root \
	-Ddriver_bhyve=disabled -Ddriver_ch=disabled -Ddriver_esx=disabled \
	-Ddriver_hyperv=disabled -Ddriver_interface=disabled \
	-Ddriver_libxl=disabled -Ddriver_lxc=disabled -Ddriver_network=disabled \
	-Ddriver_openvz=disabled -Ddriver_secrets=disabled \
	-Ddriver_vbox=disabled -Ddriver_vmware=disabled -Ddriver_vz=disabled \
	-Dstorage_dir=disabled -Dstorage_disk=disabled -Dstorage_fs=disabled \
	-Dstorage_gluster=disabled -Dstorage_iscsi=disabled \
	-Dstorage_iscsi_direct=disabled -Dstorage_lvm=disabled \
	-Dstorage_mpath=disabled -Dstorage_rbd=disabled -Dstorage_scsi=disabled \
	-Dstorage_vstorage=disabled -Dstorage_zfs=disabled \
	-Ddocs=enabled -Dnls=disabled -Ddtrace=disabled \
	-Dwireshark_dissector=disabled -Dnss=disabled -Dlogin_shell=disabled \
	-Dhost_validate=disabled -Dsasl=disabled -Dlibssh=disabled \
	-Dlibssh2=disabled -Dpolkit=disabled -Dfirewalld=disabled \
	-Dfirewalld_zone=disabled -Dsanlock=disabled -Dglusterfs=disabled \
	-Dlibiscsi=disabled -Dopenwsman=disabled -Dcurl=disabled \
	-Dnetcf=disabled -Dbash_completion=disabled -Dudev=disabled \
	-Dpciaccess=disabled -Dnumactl=disabled -Dnumad=disabled \
	-Dfuse=disabled -Dlibpcap=disabled -Dblkid=disabled -Daudit=disabled \
	-Dinit_script=none -Dsysctl_config=disabled -Dpm_utils=disabled \
	-Dapparmor=disabled -Dselinux=disabled -Dyajl=enabled

# Our unit tests and qtests are named test-mc-* / mc-*: add each one here.
NINJA_TARGETS := qemu-system-x86_64 qemu-img tests/qtest/migration-test \
	tests/unit/test-mc-wire tests/unit/test-mc-staging tests/unit/test-mc-verify \
	tests/qtest/mc-test

.PHONY: all setup base configure build build-asan check-asan guest check test check-disk-long demo bench debs \
	check-reliability build-fuzz check-fuzz lab check-lab lab-bench lab-bench-rdma bench-switchover bench-migration-modes check-cluster \
	libvirt libvirt-debs \
	clean distclean

all: build

setup:
	@bash scripts/setup-host.sh

base:
	@bash scripts/prepare-base.sh

configure: base
	@bash scripts/configure-once.sh $(OBJ) $(SRC)/configure $(QEMU_CONFIGURE) \
		--with-pkgversion="$$(sed 's/^1://' $(BUILD)/base-version)-mc"

# The same QEMU with AddressSanitizer and LeakSanitizer, for the soak
# (make check-asan); only the emulator is built.
ASAN_OBJ := $(BUILD)/qemu-asan
build-asan: base
	@bash scripts/configure-once.sh $(ASAN_OBJ) $(SRC)/configure $(QEMU_CONFIGURE) \
		--enable-asan --with-pkgversion="$$(sed 's/^1://' $(BUILD)/base-version)-mc-asan"
	ninja -C $(ASAN_OBJ) -j$(JOBS) qemu-system-x86_64
	@bash scripts/link-firmware.sh $(ASAN_OBJ)

# The soak: 200,000 checkpoints at mc-delay 0 with a dirtying guest and
# traffic under ASan/LSan, RSS slopes of both QEMUs (tests/mc/soak.py).
check-asan: build-asan guest
	@/usr/bin/python3 tests/mc/soak.py --checkpoints $(or $(MC_SOAK_CHECKPOINTS),200000)

# The fuzzer on what an MC standby parses from the wire (libFuzzer with
# ASan, LSan and UBSan; tests/mc/fuzz.py).  make check runs it 90 s.
build-fuzz: build
	@bash scripts/build-fuzz.sh $(BUILD)

check-fuzz: build guest
	@/usr/bin/python3 tests/mc/fuzz.py --rerecord --seconds $(or $(FUZZ_SECONDS),1800)

build: configure
	ninja -C $(OBJ) -j$(JOBS) $(NINJA_TARGETS)
	@bash scripts/link-firmware.sh $(OBJ)
	@$(OBJ)/qemu-system-x86_64 --version | head -n 1

guest:
	@bash scripts/build-guest.sh

test: build guest libvirt lab
	@/usr/bin/python3 tests/mc/run.py

check: setup
	@$(MAKE) --no-print-directory test

# Disk replication, at length: kill -9 of the primary 20 times (about
# 10 s each), each run's records and file system checked on the standby.
check-disk-long: build guest
	@MC_DISK_KILLS=20 MC_TEST_TIMEOUT=3600 /usr/bin/python3 tests/mc/run.py \
		--suite functional test_disk_kill_primary_records

# Failures injected hundreds of times (tests/mc/reliability.py; its short
# form is in make check).  RELIABILITY_ARGS: e.g. --cases primary-kill
# --runs 10 --seed 1 (then the table is printed, docs/ left alone).
RELIABILITY_ARGS ?= --long --table docs/reliability.md
check-reliability: build guest
	@/usr/bin/python3 tests/mc/reliability.py $(RELIABILITY_ARGS)

# Pacemaker deciding failover and re-protecting (cluster/ocf/mc-domain):
# every scenario of tests/mc/test_cluster.py (make check runs each once)
# 10 times, each on a fresh three-node cluster of namespaces; the table
# goes to docs/bench/cluster.md, part of docs/benchmarks.md.  About 10
# minutes a scenario.  CLUSTER_ARGS: e.g. --runs 2 planned-move (then
# the table is printed, docs/ left alone).
CLUSTER_ARGS ?= --runs 10 --table docs/bench/cluster.md
check-cluster: setup
	@$(MAKE) --no-print-directory build guest libvirt
	@/usr/bin/python3 tests/mc/cluster_runs.py $(CLUSTER_ARGS)

# The KVM lab: a Linux VM run under TCG with AMD SVM and nested paging,
# in which KVM works (tests/lab/lab.py, docs/devel/mc-kvm-lab.rst).
# make check runs a smoke of it (tests/mc/test_lab.py); check-lab runs
# every functional test that applies with KVM guests (LAB_TESTS, run.py
# patterns) with KVM's dirty bitmap, those that depend on the harvest
# (LAB_RING_TESTS) with its dirty ring, and the mc-test qtest cases
# with both, each in a boot of its own (tests/lab/check-lab.sh).
# Not test_throttle: a nested KVM guest dirties too slowly to outgrow
# the buffer, and the test skips itself then.
LAB_TESTS ?= test_consistency test_udp test_net test_pipeline \
	test_precopy_smoke test_disk test_reliability test_rdma test_switchover
LAB_RING_TESTS ?= test_consistency test_udp test_net_failover \
	test_disk_kill_primary_records test_pipeline test_reliability \
	test_dirty_bound test_rdma_memory test_rdma_failover test_switchover_tcp
lab: build guest
	@bash scripts/build-lab.sh

check-lab: setup
	@$(MAKE) --no-print-directory lab
	@LAB_TESTS="$(LAB_TESTS)" LAB_RING_TESTS="$(LAB_RING_TESTS)" \
		bash tests/lab/check-lab.sh

# MC's pause with KVM guests against stop+cont, in the lab (nested:
# ratios only): docs/bench/kvm-lab.md, part of docs/benchmarks.md.
lab-bench: setup
	@$(MAKE) --no-print-directory lab
	@/usr/bin/python3 tests/lab/lab.py --name labbench --timeout 1800 \
		--shell 'python3 bench/labbench.py'
	@/usr/bin/python3 bench/labbench.py --from-log $(BUILD)/lab/logs/labbench.log

# MC over RDMA (soft-RoCE) against MC over TCP, in the lab (nested:
# ratios only): docs/bench/rdma-lab.md, part of docs/benchmarks.md.
lab-bench-rdma: setup
	@$(MAKE) --no-print-directory lab
	@/usr/bin/python3 tests/lab/lab.py --name rdmabench --timeout 1800 \
		--shell 'MC_TEST_ACCEL=kvm python3 bench/rdmabench.py'
	@/usr/bin/python3 bench/rdmabench.py --from-log $(BUILD)/lab/logs/rdmabench.log

# mc-switchover's downtime against a plain live migration's, on this
# host: docs/bench/switchover.md, part of docs/benchmarks.md.
bench-switchover: setup
	@$(MAKE) --no-print-directory build guest
	@/usr/bin/python3 bench/switchbench.py

# Checkpoint-mode migration: a guest that dirties memory faster than
# the link, moved by precopy, auto-converge, postcopy and MC +
# mc-switchover: docs/bench/migration-modes.md, part of
# docs/benchmarks.md.
bench-migration-modes: setup
	@$(MAKE) --no-print-directory build guest
	@/usr/bin/python3 bench/cpmbench.py

# Debian 12 packages of the fork, installable beside Debian's QEMU.
debs: setup
	@$(MAKE) --no-print-directory build
	@bash scripts/build-debs.sh $(OBJ) $(BUILD)/debs

# libvirt with our patches, built in build/libvirt (run from the tree).
libvirt:
	@bash scripts/prepare-libvirt.sh
	@bash scripts/configure-once.sh $(LIBVIRT_OBJ) meson setup . $(LIBVIRT_SRC) \
		$(LIBVIRT_CONFIGURE)
	ninja -C $(LIBVIRT_OBJ) -j$(JOBS)

# Debian 12's libvirt packages, built by Debian's packaging with our
# series appended; they upgrade Debian's libvirt in place.  Then checked
# in a scratch root: installed over Debian's, run, and Debian's back.
libvirt-debs: setup build guest
	@bash scripts/build-libvirt-debs.sh $(BUILD)/libvirt-debs
	@/usr/bin/python3 tests/mc/check_libvirt_debs.py $(BUILD)/libvirt-debs

# The main job: a protected VM pair, the primary killed, the standby on.
demo: setup
	@$(MAKE) --no-print-directory build guest
	@/usr/bin/python3 scripts/mc-demo.py

# The SPEC 5 figures, side by side with upstream COLO and plain precopy.
bench: setup
	@$(MAKE) --no-print-directory build guest
	@/usr/bin/python3 bench/run.py

clean:
	rm -rf $(OBJ) $(BUILD)/guest $(BUILD)/test-logs $(BUILD)/lab

distclean:
	rm -rf $(BUILD)
