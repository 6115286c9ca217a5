# guest/guest.mk - the test guest (included by the top-level Makefile):
# a freestanding 64-bit ELF with a PVH note, built with its own flags
# under $(BUILD)/guest/.  `make guest` builds only this.

GUEST_ELF := $(BUILD)/guest/godwit-guest.elf

GUEST_SRCS += guest/entry.S
GUEST_SRCS += guest/main.c
GUEST_SRCS += guest/lib.c
GUEST_SRCS += guest/acpi.c
GUEST_SRCS += guest/platform.c
GUEST_SRCS += guest/memtest.c
GUEST_SRCS += guest/trap.c
GUEST_SRCS += guest/pci.c
GUEST_SRCS += guest/virtio.c
GUEST_SRCS += guest/devices.c
GUEST_SRCS += guest/disk.c
GUEST_SRCS += guest/rng.c
GUEST_SRCS += guest/net.c

GUEST_OBJS := $(patsubst guest/%,$(BUILD)/guest/%.o,$(basename $(GUEST_SRCS)))
GUEST_LDS  := $(BUILD)/guest/guest.ld

# -mgeneral-regs-only: no SSE/x87 state to set up or save; -mno-red-zone:
# interrupts taken in ring 0 push onto the current stack.
GUEST_CFLAGS := -std=gnu11 -O2 -g -m64 -ffreestanding -fno-builtin-printf -nostdlib \
	-fno-pic -fno-pie -mcmodel=small -mno-red-zone -mgeneral-regs-only \
	-fno-stack-protector -fno-asynchronous-unwind-tables -fno-unwind-tables \
	-fcf-protection=none \
	-Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
ifeq ($(WERROR),1)
GUEST_CFLAGS += -Werror
endif
GUEST_CPPFLAGS := -Iguest -MMD -MP
GUEST_LDFLAGS := -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-z,max-page-size=4096 \
	-Wl,-z,noexecstack -Wl,--no-warn-rwx-segments

.PHONY: guest
guest: $(GUEST_ELF)

$(GUEST_ELF): $(GUEST_OBJS) $(GUEST_LDS)
	$(call quiet,LINK,$@)$(CC) $(GUEST_LDFLAGS) -Wl,-T,$(GUEST_LDS) -o $@ $(GUEST_OBJS)

$(BUILD)/guest/%.o: guest/%.c
	@mkdir -p $(dir $@)
	$(call quiet,CC,$<)$(CC) $(GUEST_CPPFLAGS) $(GUEST_CFLAGS) -c -o $@ $<

$(BUILD)/guest/%.o: guest/%.S
	@mkdir -p $(dir $@)
	$(call quiet,AS,$<)$(CC) $(GUEST_CPPFLAGS) -m64 -D__ASSEMBLY__ -c -o $@ $<

# cpp for layout.h; -undef so that "linux" and friends stay words.
$(GUEST_LDS): guest/guest.ld.S guest/layout.h
	@mkdir -p $(dir $@)
	$(call quiet,CPP,$<)$(CC) -E -P -undef -x c -D__ASSEMBLY__ -Iguest -o $@ $<

-include $(GUEST_OBJS:.o=.d)
