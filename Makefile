# godwit - one non-recursive Makefile.  `make V=1` shows full commands,
# `make WERROR=0` stops treating warnings as errors, `make asan` builds
# build-asan/ with AddressSanitizer and UBSan.

BUILD   ?= build
CC      ?= gcc
PREFIX  ?= /usr/local
WERROR  ?= 1
V       ?= 0

ifeq ($(V),0)
Q := @
quiet = @printf '  %-6s %s\n' $(1) $(2);
else
Q :=
quiet =
endif

PKGS     := libmicrohttpd jansson libcurl openssl libseccomp libcap-ng libzstd
CPPFLAGS += -Iinclude -D_GNU_SOURCE -MMD -MP
CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Wshadow -Wno-unused-parameter -Wformat=2 \
	    -Wmissing-prototypes -Wstrict-prototypes -fno-strict-aliasing
ifeq ($(WERROR),1)
CFLAGS   += -Werror
endif
CFLAGS   += $(EXTRA_CFLAGS)
LDLIBS   += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm

# The VMM.  One object per line.
OBJS += src/vmm/log.o
OBJS += src/vmm/util.o
OBJS += src/vmm/devspec.o
OBJS += src/vmm/loop.o
OBJS += src/vmm/vm.o
OBJS += src/vmm/vcpu.o
OBJS += src/vmm/irq.o
OBJS += src/vmm/api.o
OBJS += src/vmm/api_vm.o
OBJS += src/vmm/api_metrics.o
OBJS += src/vmm/sandbox.o
OBJS += src/arch/x86/cpuid.o
OBJS += src/arch/x86/acpi.o
OBJS += src/arch/x86/boot.o
OBJS += src/arch/x86/regs.o
OBJS += src/arch/x86/cpu_state.o
OBJS += src/arch/x86/vm_state.o
OBJS += src/arch/x86/msr.o
OBJS += src/devices/serial.o
OBJS += src/devices/rtc.o
OBJS += src/devices/i8042.o
OBJS += src/devices/pci.o
OBJS += src/devices/acpi_pm.o
OBJS += src/devices/platform.o
OBJS += src/devices/dev.o
OBJS += src/devices/virtio/core.o
OBJS += src/devices/virtio/pci.o
OBJS += src/devices/virtio/blk.o
OBJS += src/devices/virtio/net.o
OBJS += src/devices/virtio/rng.o
OBJS += src/net/tap.o
OBJS += src/lib/state.o
OBJS += src/lib/prom.o
OBJS += src/lib/timeline.o
OBJS += src/migration/crc32c.o
OBJS += src/migration/stream.o
OBJS += src/migration/stream_config.o
OBJS += src/migration/stream_writer.o
OBJS += src/migration/stream_file.o
OBJS += src/migration/stream_reader.o
OBJS += src/migration/snapshot.o
OBJS += src/migration/handoff.o
OBJS += src/migration/migrate.o
OBJS += src/migration/throttle.o
OBJS += src/migration/postcopy.o
OBJS += src/migration/postcopy_wire.o
OBJS += src/migration/ram_place.o
OBJS += src/migration/migrate_addr.o
OBJS += src/migration/conn.o
OBJS += src/migration/tls.o
OBJS += src/migration/incoming.o
OBJS += src/migration/disk.o
OBJS += src/migration/channel_out.o
OBJS += src/migration/channel_in.o
OBJS += src/migration/dirty_walk.o
OBJS += src/fleet/etcd.o
OBJS += src/fleet/fleet.o
OBJS += src/fleet/guard.o
OBJS += src/cmd/stream_dump.o
OBJS += src/cmd/run.o
OBJS += src/cmd/restore.o
OBJS += src/cmd/run_incoming.o
OBJS += src/cmd/client.o
OBJS += src/cmd/snapshot.o
OBJS += src/cmd/migrate.o
OBJS += src/cmd/report.o
OBJS += src/cmd/progress.o
# godwit fleet: placement (pure), the command
OBJS += src/fleet/place.o
OBJS += src/cmd/fleet.o
OBJS += src/cmd/fleet_ops.o
OBJS += src/cmd/fleet_args.o
MAIN_OBJ := src/main.o
# godwitd, the host agent (docs/fleet.md): its own main(), and the objects above.
AGENT_OBJS += src/agent/main.o
AGENT_OBJS += src/agent/host.o
AGENT_OBJS += src/agent/agent.o
AGENT_OBJS += src/agent/vms.o
AGENT_OBJS += src/agent/migrate.o
AGENT_OBJS += src/agent/peer.o
AGENT_OBJS += src/agent/http.o
AGENT_OBJS += src/agent/web.o
AGENT_OBJS += src/agent/web_json.o

UNIT_SRCS := $(sort $(wildcard tests/unit/*.c))

OBJS_B      := $(addprefix $(BUILD)/obj/,$(OBJS))
MAIN_OBJ_B  := $(BUILD)/obj/$(MAIN_OBJ)
AGENT_OBJS_B := $(addprefix $(BUILD)/obj/,$(AGENT_OBJS))
UNIT_OBJS_B := $(addprefix $(BUILD)/obj/,$(UNIT_SRCS:.c=.o))
# tests/kvm/state_test.c: vCPU/VM state save-load against /dev/kvm (t-state.sh runs it).
STATE_TEST_OBJ_B := $(BUILD)/obj/tests/kvm/state_test.o
# tests/kvm/etcd_test.c: the etcd client against a real etcd (t-etcd.sh runs it).
ETCD_TEST_OBJ_B := $(BUILD)/obj/tests/kvm/etcd_test.o
# godwit with the test hooks (sandbox.h: sandbox_test_hook): t-sandbox.sh makes it call a
# forbidden system call.  Only sandbox.c differs from godwit.
SANDBOX_OBJ_B := $(BUILD)/obj/src/vmm/sandbox.o
HOOKS_OBJ_B   := $(BUILD)/obj/src/vmm/sandbox-hooks.o

.PHONY: all
all: $(BUILD)/godwit $(BUILD)/godwitd guest

$(BUILD)/godwit: $(MAIN_OBJ_B) $(OBJS_B)
	$(call quiet,LINK,$@)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/godwitd: $(AGENT_OBJS_B) $(OBJS_B)
	$(call quiet,LINK,$@)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/unit-tests: $(UNIT_OBJS_B) $(OBJS_B)
	@mkdir -p $(dir $@)
	$(call quiet,LINK,$@)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/state-test: $(STATE_TEST_OBJ_B) $(OBJS_B)
	@mkdir -p $(dir $@)
	$(call quiet,LINK,$@)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/etcd-test: $(ETCD_TEST_OBJ_B) $(OBJS_B)
	@mkdir -p $(dir $@)
	$(call quiet,LINK,$@)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/godwit-hooks: $(MAIN_OBJ_B) $(filter-out $(SANDBOX_OBJ_B),$(OBJS_B)) $(HOOKS_OBJ_B)
	@mkdir -p $(dir $@)
	$(call quiet,LINK,$@)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(HOOKS_OBJ_B): src/vmm/sandbox.c
	@mkdir -p $(dir $@)
	$(call quiet,CC,$<)$(CC) $(CPPFLAGS) $(CFLAGS) -DGODWIT_TEST_HOOKS -c -o $@ $<

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(call quiet,CC,$<)$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

# The test guest (freestanding; its own flags).
include guest/guest.mk

.PHONY: unit
unit: $(BUILD)/tests/unit-tests $(BUILD)/tests/state-test $(BUILD)/tests/godwit-hooks \
	$(BUILD)/tests/etcd-test

.PHONY: deps
deps:
	$(Q)bash scripts/install-deps.sh

.PHONY: asan
asan:
	$(Q)$(MAKE) --no-print-directory BUILD=build-asan \
		EXTRA_CFLAGS="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
		LDFLAGS="-fsanitize=address,undefined" all unit

.PHONY: linux-guest
linux-guest: deps
	$(Q)bash scripts/linux-guest.sh $(BUILD)/linux

# Tests: `make test` installs what is missing and runs everything; the
# sub-targets run one tier.
.PHONY: test test-unit test-kvm test-hwhost
test: deps
	$(Q)$(MAKE) --no-print-directory all unit
	$(Q)$(MAKE) --no-print-directory asan fuzz
	$(Q)$(MAKE) --no-print-directory linux-guest
	$(Q)bash tests/run.sh all
test-unit: all unit asan fuzz
	$(Q)bash tests/run.sh unit
test-kvm: all unit asan
	$(Q)bash tests/run.sh kvm
test-hwhost: all linux-guest
	$(Q)bash tests/run.sh hwhost

GUEST ?= auto
.PHONY: demo
demo: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)bash scripts/demo.sh $(GUEST)

# A fleet on this machine: three hosts in network namespaces, etcd, the agents;
# a drain moves VMs live (docs/fleet.md, "Running it").  Needs root.
.PHONY: fleet-demo
fleet-demo: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)bash scripts/fleet-demo.sh

.PHONY: bench-boot
bench-boot: all linux-guest
	$(Q)bash bench/boot/run.sh

.PHONY: bench-snapshot
bench-snapshot: all
	$(Q)bash bench/snapshot/run.sh

.PHONY: bench-migrate
bench-migrate: all
	$(Q)bash bench/migrate/run.sh
# Tier 2 (tests/hwhost): the Linux guest migrated inside the emulated SVM host, godwit
# beside QEMU tuned; BENCH_RUNS alternating runs (default 5), ~2 min a run here.
.PHONY: bench-migrate-tier2
bench-migrate-tier2: all linux-guest
	$(Q)rm -f build/bench/migrate-tier2.txt
	$(Q)rc=0; HW_BENCH_RUNS=$${BENCH_RUNS:-5} HWHOST_TEST_TIMEOUT=$${HWHOST_TEST_TIMEOUT:-2400} \
		bash tests/hwhost/run.sh bench/migrate/tier2.sh >/dev/null || rc=1; \
		cat build/bench/migrate-tier2.txt 2>/dev/null || echo "no result (see build/hwhost/run/)"; \
		exit $$rc
.PHONY: bench-converge
bench-converge: all
	$(Q)bash bench/converge/run.sh
.PHONY: bench-line-rate
bench-line-rate: all
	$(Q)BENCH_RUNS=$${BENCH_RUNS:-5} bash bench/migrate/run.sh line-rate --out build/bench/line-rate.json
.PHONY: bench-compress
bench-compress: all
	$(Q)BENCH_FILLS="text random" bash bench/converge/run.sh
.PHONY: bench-fleet
bench-fleet: all
	$(Q)bash bench/fleet/gate.sh

.PHONY: bench-devices
bench-devices: all linux-guest
	$(Q)bash bench/devices/run.sh

# make install [PREFIX=/usr/local] [DESTDIR=...]: the binaries, the test guest, man pages,
# bash completion, docs, the systemd unit and (unless one exists) /etc/default/godwitd.
# make deb: build/godwit_VERSION-1_amd64.deb (scripts/mkdeb.sh; README.md, "Installing").
BINDIR      ?= $(PREFIX)/bin
DATADIR     ?= $(PREFIX)/share
# The test guest: a guest image for x86-64, so under lib/, not share/.
GUESTDIR    ?= $(PREFIX)/lib/godwit
MANDIR      ?= $(DATADIR)/man
DOCDIR      ?= $(DATADIR)/doc/godwit
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR  ?= /etc
# man/: one page per command; those that share a page are links to it (NAME lists them).
MAN1       := godwit godwit-run godwit-status godwit-snapshot godwit-restore godwit-migrate \
	      godwit-fleet godwit-stream-dump godwit-report
MAN1_LINKS := godwit-pause:godwit-status godwit-resume:godwit-status \
	      godwit-shutdown:godwit-status godwit-migrate-status:godwit-migrate \
	      godwit-migrate-cancel:godwit-migrate godwit-migrate-resolve:godwit-migrate \
	      godwit-migrate-commit:godwit-migrate godwit-migrate-resume:godwit-migrate
MAN8       := godwitd
DOCS       := README.md $(wildcard docs/*.md)

.PHONY: install uninstall deb
install: $(BUILD)/godwit $(BUILD)/godwitd $(GUEST_ELF)
	install -D -m 0755 $(BUILD)/godwit $(DESTDIR)$(BINDIR)/godwit
	install -D -m 0755 $(BUILD)/godwitd $(DESTDIR)$(BINDIR)/godwitd
	install -D -m 0644 $(GUEST_ELF) $(DESTDIR)$(GUESTDIR)/godwit-guest.elf
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(DOCDIR)
	install -m 0644 $(patsubst %,man/%.1,$(MAN1)) $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 $(patsubst %,man/%.8,$(MAN8)) $(DESTDIR)$(MANDIR)/man8/
	$(foreach l,$(MAN1_LINKS),ln -sf $(word 2,$(subst :, ,$(l))).1 \
		$(DESTDIR)$(MANDIR)/man1/$(word 1,$(subst :, ,$(l))).1 &&) true
	install -D -m 0644 contrib/bash-completion/godwit $(DESTDIR)$(BASHCOMPDIR)/godwit
	ln -sf godwit $(DESTDIR)$(BASHCOMPDIR)/godwitd
	install -m 0644 $(DOCS) $(DESTDIR)$(DOCDIR)/
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's|/usr/local/bin/|$(BINDIR)/|g' -e 's|/etc/default/|$(SYSCONFDIR)/default/|g' \
		-e 's|file:///usr/local/share/doc/godwit/|file://$(DOCDIR)/|g' \
		contrib/godwitd.service >$(DESTDIR)$(UNITDIR)/godwitd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/godwitd.service
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/default/godwitd ]; then \
		echo "install: keeping $(DESTDIR)$(SYSCONFDIR)/default/godwitd"; \
	else \
		echo "install -D -m 0644 contrib/godwitd.default $(DESTDIR)$(SYSCONFDIR)/default/godwitd"; \
		install -D -m 0644 contrib/godwitd.default $(DESTDIR)$(SYSCONFDIR)/default/godwitd; \
	fi

# Leaves $(SYSCONFDIR)/default/godwitd: it is the administrator's.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/godwit $(DESTDIR)$(BINDIR)/godwitd
	rm -f $(DESTDIR)$(GUESTDIR)/godwit-guest.elf
	-rmdir $(DESTDIR)$(GUESTDIR)
	rm -f $(patsubst %,$(DESTDIR)$(MANDIR)/man1/%.1,$(MAN1) $(foreach l,$(MAN1_LINKS),$(word 1,$(subst :, ,$(l)))))
	rm -f $(patsubst %,$(DESTDIR)$(MANDIR)/man8/%.8,$(MAN8))
	rm -f $(DESTDIR)$(BASHCOMPDIR)/godwit $(DESTDIR)$(BASHCOMPDIR)/godwitd
	rm -f $(patsubst %,$(DESTDIR)$(DOCDIR)/%,$(notdir $(DOCS)))
	-rmdir $(DESTDIR)$(DOCDIR)
	rm -f $(DESTDIR)$(UNITDIR)/godwitd.service

deb: all
	$(Q)bash scripts/mkdeb.sh $(BUILD)

.PHONY: clean
clean:
	rm -rf build build-asan build-fuzz

-include $(OBJS_B:.o=.d) $(MAIN_OBJ_B:.o=.d) $(UNIT_OBJS_B:.o=.d) $(STATE_TEST_OBJ_B:.o=.d) \
	$(HOOKS_OBJ_B:.o=.d) $(ETCD_TEST_OBJ_B:.o=.d)
-include $(AGENT_OBJS_B:.o=.d)
# The fleet page's files are taken into web.o as they are (.incbin): rebuild it when they change.
WEB_FILES := $(wildcard src/agent/web/*)
$(BUILD)/obj/src/agent/web.o build-fuzz/obj/src/agent/web.o: $(WEB_FILES)

# libFuzzer targets (clang).  `make fuzz`, then e.g.
#   build-fuzz/fuzz-boot -max_total_time=60 build-fuzz/corpus-boot
# `make fuzz-long FUZZ_SECONDS=600` runs every target (or FUZZ_TARGETS="pci api") until it
# has had that many CPU seconds, one after another under nice, and prints each one's
# figures (docs/testing.md).
FUZZ_CFLAGS := -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -D_GNU_SOURCE
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?=
.PHONY: fuzz fuzz-long
fuzz: build-fuzz/fuzz-boot build-fuzz/fuzz-virtq build-fuzz/fuzz-stream build-fuzz/fuzz-handoff \
	build-fuzz/fuzz-devspec build-fuzz/fuzz-restore build-fuzz/fuzz-virtio-blk build-fuzz/fuzz-pci \
	build-fuzz/fuzz-api build-fuzz/fuzz-etcd build-fuzz/fuzz-agent build-fuzz/fuzz-timeline
fuzz-long: fuzz
	$(Q)FUZZ_LONG=1 nice -n 10 bash tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)
# The targets that need most of godwit link its objects built for fuzzing (instrumented,
# ASan/UBSan, the stream's checksums optional): everything but src/cmd and main.
FUZZ_OBJ_CFLAGS := -std=gnu11 -g -O1 -fsanitize=fuzzer-no-link,address,undefined -Iinclude \
	-D_GNU_SOURCE -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION -MMD -MP \
	-Wno-gnu-variable-sized-type-not-at-end
FUZZ_OBJS := $(addprefix build-fuzz/obj/,$(filter-out src/cmd/%,$(OBJS)))
FUZZ_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm
build-fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(call quiet,FUZZCC,$<)clang $(FUZZ_OBJ_CFLAGS) -c -o $@ $<
-include $(FUZZ_OBJS:.o=.d)
build-fuzz/fuzz-restore: tests/fuzz/fuzz_restore.c $(FUZZ_OBJS)
	$(call quiet,FUZZ,$@)clang $(FUZZ_CFLAGS) -o $@ $^ $(FUZZ_LIBS)
build-fuzz/fuzz-virtio-blk: tests/fuzz/fuzz_virtio_blk.c $(FUZZ_OBJS)
	$(call quiet,FUZZ,$@)clang $(FUZZ_CFLAGS) -o $@ $^ $(FUZZ_LIBS)
build-fuzz/fuzz-pci: tests/fuzz/fuzz_pci.c $(FUZZ_OBJS)
	$(call quiet,FUZZ,$@)clang $(FUZZ_CFLAGS) -o $@ $^ $(FUZZ_LIBS)
# The API's two handlers that act outside the process are cut at the link (fuzz_api.c).
build-fuzz/fuzz-api: tests/fuzz/fuzz_api.c $(FUZZ_OBJS)
	$(call quiet,FUZZ,$@)clang $(FUZZ_CFLAGS) -Wl,--wrap=snapshot_file_create \
		-Wl,--wrap=migrate_start -o $@ $^ $(FUZZ_LIBS)
# godwitd's parsers (fuzz_agent.c): the agent's objects and all of godwit's (src/cmd too:
# the agent calls the API client); main.c's main() renamed, the fuzzer has its own.
FUZZ_AGENT_OBJS := $(addprefix build-fuzz/obj/,$(AGENT_OBJS) $(filter src/cmd/%,$(OBJS)))
-include $(FUZZ_AGENT_OBJS:.o=.d)
build-fuzz/obj/src/agent/main.o: src/agent/main.c
	@mkdir -p $(dir $@)
	$(call quiet,FUZZCC,$<)clang $(FUZZ_OBJ_CFLAGS) -Dmain=godwitd_main -c -o $@ $<
build-fuzz/fuzz-agent: tests/fuzz/fuzz_agent.c $(FUZZ_AGENT_OBJS) $(FUZZ_OBJS)
	$(call quiet,FUZZ,$@)clang $(FUZZ_CFLAGS) -o $@ $^ $(FUZZ_LIBS)
build-fuzz/fuzz-boot: tests/fuzz/fuzz_boot.c src/arch/x86/boot.c include/godwit/boot.h
	@mkdir -p $(dir $@)
	$(call quiet,FUZZ,$@)clang $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_boot.c src/arch/x86/boot.c
# The stream reader, with its checksums optional (the target's first byte decides).
FUZZ_STREAM_SRCS := tests/fuzz/fuzz_stream.c src/migration/stream.c src/migration/stream_config.c \
	src/migration/stream_writer.c src/migration/stream_file.c src/migration/stream_reader.c src/migration/crc32c.c \
	src/lib/state.c src/arch/x86/cpuid.c src/vmm/util.c src/vmm/log.c src/migration/tls.c
build-fuzz/fuzz-stream: $(FUZZ_STREAM_SRCS) include/godwit/stream.h include/godwit/crc32c.h include/godwit/state.h
	@mkdir -p $(dir $@)
	$(call quiet,FUZZ,$@)clang $(FUZZ_CFLAGS) -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION -o $@ $(FUZZ_STREAM_SRCS) -lssl -lcrypto -lzstd
# The control messages and both sides' hand-off (the first byte: side and failures),
# and post-copy's frames and missing set (the first byte's bit 7).
FUZZ_HANDOFF_SRCS := tests/fuzz/fuzz_handoff.c src/migration/handoff.c src/migration/crc32c.c \
	src/vmm/log.c src/vmm/util.c src/migration/conn.c src/migration/tls.c \
	src/migration/postcopy_wire.c
build-fuzz/fuzz-handoff: $(FUZZ_HANDOFF_SRCS) include/godwit/handoff.h include/godwit/postcopy.h
	@mkdir -p $(dir $@)
	$(call quiet,FUZZ,$@)clang $(FUZZ_CFLAGS) -o $@ $(FUZZ_HANDOFF_SRCS) -lssl -lcrypto
# The --disk/--net parser (a restore rebuilds device specs from a stream's options).
FUZZ_DEVSPEC_SRCS := tests/fuzz/fuzz_devspec.c src/vmm/devspec.c src/net/tap.c src/vmm/log.c
build-fuzz/fuzz-devspec: $(FUZZ_DEVSPEC_SRCS) include/godwit/devspec.h include/godwit/tap.h
	@mkdir -p $(dir $@)
	$(call quiet,FUZZ,$@)clang $(FUZZ_CFLAGS) -o $@ $(FUZZ_DEVSPEC_SRCS)
# The etcd client's reply parsers (src/fleet/etcd.c; the requests themselves are not run).
build-fuzz/fuzz-etcd: tests/fuzz/fuzz_etcd.c src/fleet/etcd.c include/godwit/etcd.h
	@mkdir -p $(dir $@)
	$(call quiet,FUZZ,$@)clang $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_etcd.c src/fleet/etcd.c \
		$(shell pkg-config --libs jansson libcurl 2>/dev/null) -lpthread
# The migration report's checks and its SVG timeline (src/lib/timeline.c).
build-fuzz/fuzz-timeline: tests/fuzz/fuzz_timeline.c src/lib/timeline.c include/godwit/timeline.h \
		tests/unit/xml_check.h
	@mkdir -p $(dir $@)
	$(call quiet,FUZZ,$@)clang $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_timeline.c src/lib/timeline.c \
		$(shell pkg-config --libs jansson 2>/dev/null) -lm
build-fuzz/fuzz-virtq: tests/fuzz/fuzz_virtq.c src/devices/virtio/core.c src/vmm/log.c include/godwit/virtio.h include/godwit/vm.h
	@mkdir -p $(dir $@)
	$(call quiet,FUZZ,$@)clang $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_virtq.c src/devices/virtio/core.c src/vmm/log.c -lpthread
