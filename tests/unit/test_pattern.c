/*
 * test_pattern.c - guest/pattern.h, the page pattern that the freestanding
 * test guest (guest/memtest.c, guest/disk.c) and the Linux guest's memtest
 * (guest/linux/memtest.c) both write and check: a fill/check round trip,
 * detection of a flipped bit anywhere and of a wrong header, the
 * bad-word count, and golden values (taken from the two guests' own copies
 * before they were merged) so that a change of the format is noticed: the
 * guests, tests/kvm/t-disk.sh's image checker and old disk images agree
 * on these bytes.
 */
#include <stdint.h>
#include <string.h>

#include "unit.h"
#include "../../guest/pattern.h"

static uint64_t page[PATTERN_WORDS];

/* FNV-1a over the page's words: one number for all 4096 bytes. */
static uint64_t page_hash(const uint64_t *p)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (unsigned int i = 0; i < PATTERN_WORDS; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

TEST(pattern_layout)
{
	CHECK_EQ(PATTERN_WORDS * sizeof(uint64_t), 4096);
	CHECK_EQ(PATTERN_PAGE_SIZE, 4096);
	/* The magic reads "GDWITPG!" in memory (little-endian words). */
	pattern_fill(page, 3, 9, PATTERN_MEM_MAGIC);
	CHECK(!memcmp(&page[PATTERN_W_MAGIC], "GDWITPG!", 8));
	CHECK(page[PATTERN_W_INDEX] == 3);
	CHECK(page[PATTERN_W_GEN] == 9);
}

TEST(pattern_golden)
{
	static const struct {
		uint64_t idx, gen, csum, w4, w5, w511, hash;
	} g[] = {
		{ 0, 1, 0xd28c541ea82bd431ULL, 0x3a9187d9dd0acaaeULL, 0x3a9187d9e28ad56eULL,
		  0x0ff495066dada8f7ULL, 0x09eb988c79261a7dULL },
		{ 1, 1, 0xf898ec40542e150dULL, 0x7274658bcb6f4838ULL, 0x7274658bf4ef57f8ULL,
		  0xdb62934db3035cc1ULL, 0x20b276371681ba1eULL },
		{ 12345, 7, 0x42d55089387d1b2bULL, 0x3c177405442d1577ULL, 0x3c1774057bad0ab7ULL,
		  0x6ada33d0f374dd7eULL, 0x7f19153331fd059cULL },
	};

	for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
		memset(page, 0xa5, sizeof(page));
		pattern_fill(page, g[i].idx, g[i].gen, PATTERN_MEM_MAGIC);
		CHECK(page[PATTERN_W_INDEX] == g[i].idx);
		CHECK(page[PATTERN_W_GEN] == g[i].gen);
		CHECK(page[PATTERN_W_CSUM] == g[i].csum);
		CHECK(page[PATTERN_W_MAGIC] == PATTERN_MEM_MAGIC);
		CHECK(page[4] == g[i].w4);
		CHECK(page[5] == g[i].w5);
		CHECK(page[511] == g[i].w511);
		CHECK(page_hash(page) == g[i].hash);
	}
}

TEST(pattern_round_trip)
{
	unsigned int bad = 99;
	uint64_t h;

	for (uint64_t idx = 0; idx < 64; idx += 7) {
		for (uint64_t gen = 0; gen < 4; gen++) {
			pattern_fill(page, idx, gen, PATTERN_MEM_MAGIC);
			CHECK(pattern_check(page, idx, gen, PATTERN_MEM_MAGIC, NULL));
			CHECK(pattern_check(page, idx, gen, PATTERN_MEM_MAGIC, &bad));
			CHECK_EQ(bad, 0);
			/* Another page, generation or magic is not this page. */
			CHECK(!pattern_check(page, idx + 1, gen, PATTERN_MEM_MAGIC, NULL));
			CHECK(!pattern_check(page, idx, gen + 1, PATTERN_MEM_MAGIC, NULL));
			CHECK(!pattern_check(page, idx, gen, PATTERN_MEM_MAGIC ^ 1, NULL));
		}
	}
	/* Different (index, generation) give different bodies. */
	pattern_fill(page, 5, 1, 0);
	h = page_hash(page);
	pattern_fill(page, 5, 2, 0);
	CHECK(page_hash(page) != h);
	pattern_fill(page, 6, 1, 0);
	CHECK(page_hash(page) != h);
}

/* Any single flipped bit, in the header or the body, is caught. */
TEST(pattern_flipped_bit)
{
	unsigned int bad, missed = 0;

	for (unsigned int w = 0; w < PATTERN_WORDS; w++) {
		for (unsigned int bit = 0; bit < 64; bit += 9) {
			pattern_fill(page, 42, 3, PATTERN_MEM_MAGIC);
			page[w] ^= 1ULL << bit;
			bad = 99;
			if (pattern_check(page, 42, 3, PATTERN_MEM_MAGIC, &bad))
				missed++;
			CHECK_EQ(bad, w >= PATTERN_HDR_WORDS ? 1 : 0);
		}
	}
	CHECK_EQ(missed, 0);

	/* The bad-word count: three body words changed, the header intact. */
	pattern_fill(page, 42, 3, PATTERN_MEM_MAGIC);
	page[4] = 0;
	page[100] ^= 0xff;
	page[511] = ~page[511];
	CHECK(!pattern_check(page, 42, 3, PATTERN_MEM_MAGIC, &bad));
	CHECK_EQ(bad, 3);
	/* A whole older generation: every body word differs, the page is stale. */
	pattern_fill(page, 42, 2, PATTERN_MEM_MAGIC);
	CHECK(!pattern_check(page, 42, 3, PATTERN_MEM_MAGIC, &bad));
	CHECK_EQ(bad, PATTERN_WORDS - PATTERN_HDR_WORDS);
	CHECK(pattern_check(page, 42, 2, PATTERN_MEM_MAGIC, NULL));
}

/* The memtests' ERROR line: content=stale/newer/corrupt, found gen/index, bad_words. */
TEST(pattern_diagnose_kinds)
{
	struct pattern_found f;

	/* A lost write: the page still holds generation 2 where 3 is expected. */
	pattern_fill(page, 42, 2, PATTERN_MEM_MAGIC);
	f = pattern_diagnose(page, 42, 3, PATTERN_MEM_MAGIC);
	CHECK_STR(f.what, "stale");
	CHECK(f.gen == 2 && f.idx == 42);
	CHECK_EQ(f.bad_words, PATTERN_WORDS - PATTERN_HDR_WORDS);

	pattern_fill(page, 42, 4, PATTERN_MEM_MAGIC);
	f = pattern_diagnose(page, 42, 3, PATTERN_MEM_MAGIC);
	CHECK_STR(f.what, "newer");
	CHECK(f.gen == 4);

	/* One flipped bit in the body of the right generation. */
	pattern_fill(page, 42, 3, PATTERN_MEM_MAGIC);
	page[300] ^= 1ULL << 17;
	f = pattern_diagnose(page, 42, 3, PATTERN_MEM_MAGIC);
	CHECK_STR(f.what, "corrupt");
	CHECK(f.gen == 3 && f.idx == 42);
	CHECK_EQ(f.bad_words, 1);

	/* An older generation with a flipped bit is corrupt, not stale. */
	pattern_fill(page, 42, 2, PATTERN_MEM_MAGIC);
	page[7] ^= 1;
	CHECK_STR(pattern_diagnose(page, 42, 3, PATTERN_MEM_MAGIC).what, "corrupt");

	/* Another page's intact contents (e.g. a page mapped at the wrong place). */
	pattern_fill(page, 41, 3, PATTERN_MEM_MAGIC);
	f = pattern_diagnose(page, 42, 3, PATTERN_MEM_MAGIC);
	CHECK_STR(f.what, "corrupt");
	CHECK(f.idx == 41);

	/* A zeroed page. */
	memset(page, 0, sizeof(page));
	CHECK_STR(pattern_diagnose(page, 42, 3, PATTERN_MEM_MAGIC).what, "corrupt");
}
