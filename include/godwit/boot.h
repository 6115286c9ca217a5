/*
 * boot.h - x86 guest boot: the memory map (e820), and loading a Linux
 * bzImage (64-bit boot protocol) or an ELF with a PVH entry note into guest
 * memory, with the boot data each protocol wants.
 */
#ifndef GODWIT_BOOT_H
#define GODWIT_BOOT_H

#include "godwit/common.h"

#define E820_RAM      1
#define E820_RESERVED 2
#define E820_ACPI     3
#define E820_MAX      16

struct e820_entry {
	uint64_t addr, size;
	uint32_t type;
};

/*
 * mem_split - how mem_size bytes of RAM are placed: low bytes at 0 up to
 * the MMIO hole, high bytes from 4 GiB.
 */
void mem_split(uint64_t mem_size, uint64_t *low, uint64_t *high);

/* e820_build - the guest's memory map; returns the number of entries. */
unsigned int e820_build(uint64_t mem_size, struct e820_entry *e, unsigned int max);

enum kernel_format {
	KERNEL_BZIMAGE,
	KERNEL_PVH_ELF,
};

/* Where and how the boot vCPU starts. */
struct boot_entry {
	enum kernel_format fmt;
	uint64_t rip;
	uint64_t arg;   /* RSI (zero page) for bzImage, RBX (start info) for PVH */
};

/* Guest memory accessor: host pointer for [gpa, gpa+len) or NULL. */
typedef void *(*gpa_xlate_fn)(void *opaque, uint64_t gpa, uint64_t len);

struct boot_config {
	const uint8_t *kernel;  size_t kernel_size;
	const uint8_t *initrd;  size_t initrd_size;   /* NULL/0: none */
	const char *cmdline;                          /* "" for none */
	uint64_t mem_size;
	uint64_t rsdp_gpa;                            /* 0: none */
	gpa_xlate_fn xlate;
	void *opaque;
};

/* boot_probe - the format of a kernel image, or -ENOEXEC with a reason. */
int boot_probe(const uint8_t *data, size_t size, enum kernel_format *fmt,
	       char *err, size_t errlen) __must_check;

/*
 * boot_load - load the kernel, initrd and command line, and write the boot
 * data (zero page + e820 + identity page tables and GDT for bzImage;
 * hvm_start_info + memmap + module list for PVH).
 *   cfg:  what to load, and how to reach guest memory
 *   out:  the boot vCPU's entry
 *   err:  a message of up to errlen bytes on failure
 * Returns 0, or -ENOEXEC (bad image), -E2BIG (does not fit), -EINVAL.
 */
int boot_load(const struct boot_config *cfg, struct boot_entry *out,
	      char *err, size_t errlen) __must_check;

/* Fixed boot GDT selectors (Linux's __BOOT_CS/__BOOT_DS). */
#define BOOT_GDT_CS 0x10
#define BOOT_GDT_DS 0x18

#endif
