# QEMU micro-checkpointing (MC) fork: top-level driver.
#
#   make check   set up the host, build, and run every test (what CI runs)
#   make build   fetch + patch + overlay the QEMU base and build it
#   make guest   build the small Linux test guest
#
# Layout: build/download (cached source package), build/src (base +
# patches/ + overlay), build/qemu (meson build directory), build/guest.

TOP := $(abspath .)
BUILD := $(TOP)/build
SRC := $(BUILD)/src
OBJ := $(BUILD)/qemu
JOBS ?= $(shell nproc)

# A lean x86_64 build with what MC and its peers need: TCG and KVM, slirp,
# RDMA, upstream COLO (replication + colo-proxy), TLS, fdt, qemu-img, tests.
QEMU_CONFIGURE := --target-list=x86_64-softmmu --without-default-features \
	--enable-tcg --enable-kvm --enable-slirp --enable-rdma --enable-fdt=system \
	--enable-replication --enable-colo-proxy --enable-gnutls --enable-nettle \
	--enable-tools --enable-attr --enable-cap-ng --enable-linux-aio \
	--disable-docs --disable-install-blobs --disable-werror \
	--python=/usr/bin/python3 \
	--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu

NINJA_TARGETS := qemu-system-x86_64 qemu-img tests/qtest/migration-test

.PHONY: all setup base configure build guest check test demo clean distclean

all: build

setup:
	@bash scripts/setup-host.sh

base:
	@bash scripts/prepare-base.sh

$(OBJ)/build.ninja: scripts/prepare-base.sh Makefile
	@bash scripts/prepare-base.sh
	rm -rf $(OBJ) && mkdir -p $(OBJ)
	cd $(OBJ) && $(SRC)/configure $(QEMU_CONFIGURE) \
		--with-pkgversion="$$(sed 's/^1://' $(BUILD)/base-version)-mc"

configure: $(OBJ)/build.ninja

build: $(OBJ)/build.ninja
	@bash scripts/prepare-base.sh
	ninja -C $(OBJ) -j$(JOBS) $(NINJA_TARGETS)
	@bash scripts/link-firmware.sh $(OBJ)
	@$(OBJ)/qemu-system-x86_64 --version | head -n 1

guest:
	@bash scripts/build-guest.sh

test: build guest
	@bash scripts/run-tests.sh

check: setup
	@$(MAKE) --no-print-directory test

clean:
	rm -rf $(OBJ) $(BUILD)/guest $(BUILD)/test-logs

distclean:
	rm -rf $(BUILD)
