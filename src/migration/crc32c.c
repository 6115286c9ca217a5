/*
 * crc32c.c - CRC-32C for the migration stream (crc32c.h): the SSE4.2
 * crc32 instruction when the CPU offers it, slicing-by-8 tables otherwise.
 *
 * The choice is made once, in a constructor (before main() and before any
 * thread), so the hot path is a predictable branch on a constant and no
 * locking is needed.  The instruction is reached through the target
 * attribute, so the rest of godwit is still built for baseline x86-64 and
 * runs on CPUs without SSE4.2.
 *
 * An emulated CPU may offer the instruction and run it slower than the
 * tables: under QEMU's TCG (tier 2's emulated host, docs/testing.md) it
 * ran at 63 MiB/s where the tables ran at 171 MiB/s, and the per-page CRC
 * was half of a migration destination's time there.  So the constructor
 * times both on a few KiB (~10 us on hardware) and takes the instruction
 * unless the tables are clearly faster.
 */
#include <string.h>
#include <time.h>

#include "godwit/crc32c.h"

#define CRC32C_POLY 0x82f63b78u   /* 0x1edc6f41 reflected */

static uint32_t crc32c_table[8][256];
static bool crc32c_use_hw;
#if defined(__x86_64__)
static bool crc32c_hw_faster(void);
#endif

__attribute__((constructor)) static void crc32c_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
		crc32c_table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc32c_table[t][i] = (crc32c_table[t - 1][i] >> 8) ^
				crc32c_table[0][crc32c_table[t - 1][i] & 0xff];
#if defined(__x86_64__)
	__builtin_cpu_init();
	crc32c_use_hw = __builtin_cpu_supports("sse4.2") && crc32c_hw_faster();
#endif
}

bool crc32c_hw(void)
{
	return crc32c_use_hw;
}

static inline uint64_t load64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return v;
}

/* Slicing-by-8 on the inverted CRC (little-endian hosts: x86). */
static uint32_t sw_update(uint32_t c, const uint8_t *p, size_t n)
{
	while (n && ((uintptr_t)p & 7)) {
		c = (c >> 8) ^ crc32c_table[0][(c ^ *p++) & 0xff];
		n--;
	}
	while (n >= 8) {
		uint64_t v = load64(p) ^ c;

		c = crc32c_table[7][v & 0xff] ^ crc32c_table[6][(v >> 8) & 0xff] ^
		    crc32c_table[5][(v >> 16) & 0xff] ^ crc32c_table[4][(v >> 24) & 0xff] ^
		    crc32c_table[3][(v >> 32) & 0xff] ^ crc32c_table[2][(v >> 40) & 0xff] ^
		    crc32c_table[1][(v >> 48) & 0xff] ^ crc32c_table[0][v >> 56];
		p += 8;
		n -= 8;
	}
	while (n--)
		c = (c >> 8) ^ crc32c_table[0][(c ^ *p++) & 0xff];
	return c;
}

uint32_t crc32c_sw(uint32_t crc, const void *p, size_t len)
{
	return ~sw_update(~crc, p, len);
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t hw_update(uint32_t c, const uint8_t *p, size_t n)
{
	uint64_t c64;

	while (n && ((uintptr_t)p & 7)) {
		c = __builtin_ia32_crc32qi(c, *p++);
		n--;
	}
	c64 = c;
	while (n >= 32) {
		c64 = __builtin_ia32_crc32di(c64, load64(p));
		c64 = __builtin_ia32_crc32di(c64, load64(p + 8));
		c64 = __builtin_ia32_crc32di(c64, load64(p + 16));
		c64 = __builtin_ia32_crc32di(c64, load64(p + 24));
		p += 32;
		n -= 32;
	}
	while (n >= 8) {
		c64 = __builtin_ia32_crc32di(c64, load64(p));
		p += 8;
		n -= 8;
	}
	c = (uint32_t)c64;
	while (n--)
		c = __builtin_ia32_crc32qi(c, *p++);
	return c;
}

__attribute__((target("sse4.2")))
static uint32_t hw_copy(uint32_t c, uint8_t *d, const uint8_t *s, size_t n)
{
	uint64_t c64 = c;

	while (n >= 8) {
		uint64_t v = load64(s);

		/* The CRC covers v, the value stored: one load per word. */
		c64 = __builtin_ia32_crc32di(c64, v);
		memcpy(d, &v, 8);
		s += 8;
		d += 8;
		n -= 8;
	}
	c = (uint32_t)c64;
	while (n--) {
		uint8_t b = *s++;

		c = __builtin_ia32_crc32qi(c, b);
		*d++ = b;
	}
	return c;
}

static double crc32c_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/*
 * The best of three timings of each over 4 KiB (a page): true unless the
 * tables took under 3/4 of the instruction's time.  Called once, by the
 * constructor, on a CPU that has SSE4.2.
 */
static bool crc32c_hw_faster(void)
{
	static uint8_t buf[4096];
	double hw = 1e18, sw = 1e18;
	volatile uint32_t sink = 0;

	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 131 + 7);
	for (int k = 0; k < 3; k++) {
		double t0 = crc32c_ns(), t1, t2;

		sink ^= hw_update(~0u, buf, sizeof(buf));
		t1 = crc32c_ns();
		sink ^= sw_update(~0u, buf, sizeof(buf));
		t2 = crc32c_ns();
		hw = MIN(hw, t1 - t0);
		sw = MIN(sw, t2 - t1);
	}
	(void)sink;
	return !(sw < hw * 0.75);
}
#endif

uint32_t crc32c(uint32_t crc, const void *p, size_t len)
{
#if defined(__x86_64__)
	if (crc32c_use_hw)
		return ~hw_update(~crc, p, len);
#endif
	return ~sw_update(~crc, p, len);
}

uint32_t crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len)
{
	uint8_t *d = dst;
	const uint8_t *s = src;
	uint32_t c = ~crc;

#if defined(__x86_64__)
	if (crc32c_use_hw)
		return ~hw_copy(c, d, s, len);
#endif
	/* Copy in small blocks, then checksum the copy while it is in L1. */
	while (len) {
		size_t n = MIN(len, (size_t)1024);

		memcpy(d, s, n);
		c = sw_update(c, d, n);
		d += n;
		s += n;
		len -= n;
	}
	return ~c;
}
