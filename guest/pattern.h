/*
 * pattern.h - the self-checking 4 KiB page pattern of the memory and disk
 * workloads, in one place for every program that writes or checks it: the
 * freestanding test guest (guest/memtest.c, guest/disk.c), the Linux test
 * guest's static memtest (guest/linux/memtest.c) and the unit test
 * (tests/unit/test_pattern.c, with golden values).  The two guests run
 * "the same workload", so their pages must be the same bytes.
 *
 * Plain C on <stdbool.h>, <stddef.h> and <stdint.h> only (freestanding
 * headers): no libc, no guest runtime, no floating point, so it builds
 * with -ffreestanding -mgeneral-regs-only as well as for a hosted program.
 *
 * A page is PATTERN_WORDS 64-bit words:
 *   word 0: index   word 1: generation   word 2: checksum of words 4..511
 *   word 3: magic   words 4..511: two interleaved xorshift64 streams
 *                                 seeded from (index, generation)
 * The checksum folds the two streams' sums; the magic tells the user apart
 * (PATTERN_MEM_MAGIC for the memory workload, the disk workload its own).
 */
#ifndef GODWIT_GUEST_PATTERN_H
#define GODWIT_GUEST_PATTERN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PATTERN_PAGE_SIZE	4096
#define PATTERN_WORDS		(PATTERN_PAGE_SIZE / 8)
#define PATTERN_HDR_WORDS	4
/* Header word indices. */
#define PATTERN_W_INDEX		0
#define PATTERN_W_GEN		1
#define PATTERN_W_CSUM		2
#define PATTERN_W_MAGIC		3

#define PATTERN_MEM_MAGIC	0x2147505449574447ULL	/* "GDWITPG!": the memory workload */

/* splitmix64's finaliser: spreads (index, generation) over the seed. */
static inline uint64_t pattern_mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static inline uint64_t pattern_xorshift(uint64_t x)
{
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return x;
}

/* The first stream's seed (never 0, xorshift's fixed point); the second's is its complement. */
static inline uint64_t pattern_seed(uint64_t idx, uint64_t gen)
{
	uint64_t s = pattern_mix64(idx * 0x9e3779b97f4a7c15ULL + gen);

	return s ? s : 1;
}

static inline uint64_t pattern_csum_fold(uint64_t s1, uint64_t s2)
{
	return s1 ^ ((s2 << 1) | (s2 >> 63));
}

/* Write page (idx, gen) with `magic` into p (PATTERN_WORDS words). */
static inline void pattern_fill(uint64_t *p, uint64_t idx, uint64_t gen, uint64_t magic)
{
	uint64_t x = pattern_seed(idx, gen), y = ~x, s1 = 0, s2 = 0;

	for (unsigned int i = PATTERN_HDR_WORDS; i < PATTERN_WORDS; i += 2) {
		x = pattern_xorshift(x);
		y = pattern_xorshift(y);
		p[i] = x;
		p[i + 1] = y;
		s1 += x;
		s2 += y;
	}
	p[PATTERN_W_INDEX] = idx;
	p[PATTERN_W_GEN] = gen;
	p[PATTERN_W_CSUM] = pattern_csum_fold(s1, s2);
	p[PATTERN_W_MAGIC] = magic;
}

/*
 * True if p holds exactly page (idx, gen) with `magic`; *bad_words (if
 * bad_words is not NULL) counts the body words that differ.
 */
static inline bool pattern_check(const uint64_t *p, uint64_t idx, uint64_t gen, uint64_t magic,
				 unsigned int *bad_words)
{
	uint64_t x = pattern_seed(idx, gen), y = ~x, s1 = 0, s2 = 0, diff = 0;

	for (unsigned int i = PATTERN_HDR_WORDS; i < PATTERN_WORDS; i += 2) {
		x = pattern_xorshift(x);
		y = pattern_xorshift(y);
		diff |= (p[i] ^ x) | (p[i + 1] ^ y);
		s1 += p[i];
		s2 += p[i + 1];
	}
	if (bad_words) {
		unsigned int n = 0;

		x = pattern_seed(idx, gen);
		y = ~x;
		for (unsigned int i = PATTERN_HDR_WORDS; i < PATTERN_WORDS; i += 2) {
			x = pattern_xorshift(x);
			y = pattern_xorshift(y);
			n += (p[i] != x) + (p[i + 1] != y);
		}
		*bad_words = n;
	}
	return !diff && p[PATTERN_W_INDEX] == idx && p[PATTERN_W_GEN] == gen &&
	       p[PATTERN_W_MAGIC] == magic && p[PATTERN_W_CSUM] == pattern_csum_fold(s1, s2);
}

/* What a page that failed its check holds instead (pattern_diagnose). */
struct pattern_found {
	uint64_t idx, gen;		/* its header's index and generation */
	unsigned int bad_words;		/* body words that differ from the expected page */
	const char *what;		/* "stale", "newer" or "corrupt" */
};

/*
 * Diagnose p, expected to be page (idx, gen) with `magic`: "stale" if it
 * is intact page idx of an older generation (a lost write, e.g. a dirty
 * page a migration did not send again), "newer" of a later one, otherwise
 * "corrupt".  The header is read once: the result describes one snapshot.
 */
static inline struct pattern_found pattern_diagnose(const uint64_t *p, uint64_t idx, uint64_t gen,
						    uint64_t magic)
{
	struct pattern_found f = {
		.idx = p[PATTERN_W_INDEX],
		.gen = p[PATTERN_W_GEN],
	};

	pattern_check(p, idx, gen, magic, &f.bad_words);
	if (f.idx == idx && pattern_check(p, idx, f.gen, magic, NULL))
		f.what = f.gen < gen ? "stale" : "newer";
	else
		f.what = "corrupt";
	return f;
}

#endif
