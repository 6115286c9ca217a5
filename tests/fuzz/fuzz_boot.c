/*
 * fuzz_boot.c - libFuzzer target for the kernel image loaders (boot.c): any
 * bytes given as a kernel (the first 2 bytes pick the initrd size and
 * command line) must load or be refused, never read or write out of bounds.
 *   make fuzz && build-fuzz/fuzz-boot -max_total_time=60 tests/fuzz/corpus-boot
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/boot.h"

#define FUZZ_RAM (48ULL << 20)

static uint8_t *fuzz_ram;

static void *fuzz_xlate(void *opaque, uint64_t gpa, uint64_t len)
{
	(void)opaque;
	if (gpa > FUZZ_RAM || len > FUZZ_RAM - gpa)
		return NULL;
	return fuzz_ram + gpa;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const cmdlines[] = { "", "console=ttyS0", "workload=mem mem=8" };
	static uint8_t initrd[4096];
	struct boot_entry e;
	char err[128];

	if (size < 2)
		return 0;
	if (!fuzz_ram)
		fuzz_ram = malloc(FUZZ_RAM);
	struct boot_config bc = {
		.kernel = data + 2,
		.kernel_size = size - 2,
		.initrd = initrd,
		.initrd_size = data[0] % 2 ? (size_t)data[1] * 16 : 0,
		.cmdline = cmdlines[data[1] % 3],
		.mem_size = FUZZ_RAM,
		.rsdp_gpa = 0xe0000,
		.xlate = fuzz_xlate,
	};
	if (boot_load(&bc, &e, err, sizeof(err)) == 0) {
		/* A loaded image's entry must lie in guest RAM. */
		if (!fuzz_xlate(NULL, e.rip, 1))
			abort();
	}
	return 0;
}
