/*
 * fuzz_stream.c - libFuzzer target for the stream reader (stream.c): any
 * bytes must load or be refused with a message, never read or write out of
 * bounds, leak, or write guest memory outside the RAM the lookup gives.
 *
 * The first byte selects the mode: bit 0 set = checksums are ignored (the
 * build defines FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION), so mutations get
 * past the CRCs and reach the config decoder, the RAM run checks and the
 * EOF record; bit 1 = RAM is only checked, not written; bit 2 = unknown
 * optional sections are reported (and skipped by the next call); bit 3 =
 * payloads are skipped, not read; bit 4 = data pages go through a placer
 * (stream_reader_set_placer) that checks what it is given (whole pages, at
 * most 256 KiB, at the lookup's address, not past the input's end); bit 5 = that
 * placer fails its first call.  The rest is the stream.  Seeds: the .gws files in tests/data, with each mode byte
 * (tests/fuzz/run.sh).
 *   make fuzz && build-fuzz/fuzz-stream -max_total_time=60 build-fuzz/corpus-stream
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <linux/kvm.h>

#include "godwit/state.h"
#include "godwit/stream.h"

extern bool stream_fuzz_ignore_crc;

#define FUZZ_RAM (1u << 20)     /* the destination: 1 MiB, mapped twice (low, 4 GiB) */

static uint8_t *fuzz_ram;

/* Guest memory: [0, 1 MiB) and [4 GiB, 4 GiB + 1 MiB), both onto fuzz_ram. */
static void *fuzz_lookup(void *opaque, uint64_t gpa, uint64_t len)
{
	(void)opaque;
	if (gpa >= 0x100000000ull)
		gpa -= 0x100000000ull;
	if (gpa > FUZZ_RAM || len > FUZZ_RAM - gpa)
		return NULL;
	return fuzz_ram + gpa;
}

struct fuzz_placer {
	const uint8_t *in;
	size_t len;
	bool fail;
};

static int fuzz_place(void *opaque, uint64_t gpa, void *host, const void *src, size_t len)
{
	struct fuzz_placer *fp = opaque;
	const uint8_t *s = src;

	/* Plain runs are staged in the input itself; decompressed ones anywhere (memcpy reads them). */
	if (!len || len % STREAM_PAGE_SIZE || len > 256u * 1024 || host != fuzz_lookup(NULL, gpa, len) ||
	    (s >= fp->in && s < fp->in + fp->len && s + len > fp->in + fp->len))
		abort();
	if (fp->fail) {
		fp->fail = false;
		return -EIO;
	}
	memcpy(host, src, len);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct stream_reader *r;
	const struct stream_config *cfg;
	struct stream_section s;
	struct stream_ram_stats st = { 0 };
	static struct stream_config local;
	static struct kvm_cpuid2 *sup;
	char err[256];
	struct fuzz_placer fp;
	uint8_t *copy;
	int ret;

	if (size < 1)
		return 0;
	if (!fuzz_ram) {
		fuzz_ram = calloc(1, FUZZ_RAM);
		sup = calloc(1, sizeof(*sup) + 2 * sizeof(struct kvm_cpuid_entry2));
		sup->nent = 2;
		sup->entries[0] = (struct kvm_cpuid_entry2){ .function = 0, .ebx = 0x756e6547,
			.edx = 0x49656e69, .ecx = 0x6c65746e };
		sup->entries[1] = (struct kvm_cpuid_entry2){ .function = 1, .ecx = 0xffffffff,
			.edx = 0xffffffff };
		stream_config_init(&local);
		local.ncpus = 2;
		if (stream_config_add_region(&local, 0, 32768) ||
		    stream_config_add_region(&local, 0x100000000ull, 16384))
			abort();
	}
	stream_fuzz_ignore_crc = data[0] & 1;
	/* an exact copy, so a read past the end is an ASan report */
	copy = malloc(size - 1 ? size - 1 : 1);
	memcpy(copy, data + 1, size - 1);
	if (stream_reader_new_mem(copy, size - 1, &r))
		abort();
	stream_reader_report_unknown(r, data[0] & 4);
	fp = (struct fuzz_placer){ copy, size - 1, data[0] & 32 };
	if (data[0] & 16)
		stream_reader_set_placer(r, fuzz_place, &fp);
	ret = stream_read_header(r, &cfg);
	if (!ret) {
		/* the compatibility checks read every field of a decoded config */
		(void)stream_config_compat(&local, cfg, err, sizeof(err));
		(void)stream_cpuid_check(cfg, sup, err, sizeof(err));
		if (cfg->nr_regions < 1 || cfg->ncpus < 1 || cfg->page_size != STREAM_PAGE_SIZE)
			abort();        /* the reader promised a checked config */
	}
	while (!ret && (ret = stream_next_section(r, &s)) > 0) {
		const uint8_t *p;

		if (s.type == STREAM_RAM) {
			ret = stream_read_ram(r, data[0] & 2 ? NULL : fuzz_lookup, NULL, &st);
		} else if (data[0] & 8) {
			ret = stream_skip(r);
		} else {
			ret = stream_read_payload(r, &p);
			if (!ret && s.type == STREAM_DISK) {
				uint64_t off, len, dsize = cfg->nr_disks ? cfg->disks[0].size : 1 << 20;
				const uint8_t *d;

				/* a parsed extent lies in the disk and its data in the payload */
				if (!stream_disk_parse(p, s.len, dsize, &off, &len, &d, err, sizeof(err)) &&
				    (off + len > dsize || (d && (d < p || d + len > p + s.len))))
					abort();
			} else if (!ret) {
				struct state_in in;
				struct state_field f;
				volatile uint8_t sink = 0;

				state_in_init(&in, p, s.len);
				while (state_next(&in, &f) > 0)
					if (f.len)
						sink ^= f.val[f.len - 1];
				(void)sink;
			}
		}
	}
	/* a failure always says why */
	if (ret < 0 && !stream_reader_error(r)[0])
		abort();
	stream_reader_free(r);
	free(copy);
	return 0;
}
