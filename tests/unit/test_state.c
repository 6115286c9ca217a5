/*
 * test_state.c - the tagged-field encoding (state.h): exact little-endian
 * bytes, round trips of every type, and a reader that survives truncation
 * at every byte, random bit flips and hostile lengths.  Every decode runs
 * on a heap copy of exactly the bytes given, so under ASan (`make asan`) a
 * read one byte past the end is a crash, not a silent pass.
 */
#include <errno.h>
#include <stdlib.h>

#include "unit.h"
#include "godwit/state.h"

/* A copy of p[0..len) in a heap block of exactly len bytes (len 0: NULL). */
static uint8_t *exact_copy(const void *p, size_t len)
{
	uint8_t *c;

	if (!len)
		return NULL;
	c = malloc(len);
	if (c)
		memcpy(c, p, len);
	return c;
}

/* A field as the test expects it back. */
struct want {
	uint16_t tag;
	uint32_t len;
	const uint8_t *val;
};

static uint8_t big[70000];
#define SAMPLE_BIG 1500     /* the sample's large field; every cut of it is tried */

/* An encoding holding each type, extremes, an empty field and a large one. */
static size_t build_sample(struct state_out *o, struct want *w)
{
	static const uint8_t b3[3] = { 0xde, 0xad, 0x00 };
	size_t n = 0;

	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 7 + 3);
	state_put_u8(o, 1, 0xa5);
	state_put_u16(o, 2, 0xbeef);
	state_put_u32(o, 3, 0xdeadbeefu);
	state_put_u64(o, 4, 0x0123456789abcdefull);
	state_put_u8(o, 0xffff, 0);
	state_put_bytes(o, 0, NULL, 0);
	state_put_bytes(o, 7, b3, sizeof(b3));
	state_put_u64(o, 8, UINT64_MAX);
	state_put_bytes(o, 9, big, SAMPLE_BIG);
	/* expected (tag, len); values are checked by the round-trip test */
	w[n++] = (struct want){ 1, 1, NULL };
	w[n++] = (struct want){ 2, 2, NULL };
	w[n++] = (struct want){ 3, 4, NULL };
	w[n++] = (struct want){ 4, 8, NULL };
	w[n++] = (struct want){ 0xffff, 1, NULL };
	w[n++] = (struct want){ 0, 0, NULL };
	w[n++] = (struct want){ 7, 3, b3 };
	w[n++] = (struct want){ 8, 8, NULL };
	w[n++] = (struct want){ 9, SAMPLE_BIG, big };
	return n;
}

TEST(state_le_bytes)
{
	static const uint8_t want[] = {
		0x34, 0x12, 0x01, 0, 0, 0, 0xab,                         /* u8 */
		0x02, 0x00, 0x02, 0, 0, 0, 0x22, 0x11,                   /* u16 */
		0x03, 0x00, 0x04, 0, 0, 0, 0x44, 0x33, 0x22, 0x11,       /* u32 */
		0x04, 0x00, 0x08, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
		0x05, 0x00, 0x02, 0, 0, 0, 'h', 'i',                     /* bytes */
		0x06, 0x00, 0x00, 0, 0, 0,                               /* empty */
	};
	struct state_out o;

	state_out_init(&o);
	state_put_u8(&o, 0x1234, 0xab);
	state_put_u16(&o, 2, 0x1122);
	state_put_u32(&o, 3, 0x11223344u);
	state_put_u64(&o, 4, 0x1122334455667788ull);
	state_put_bytes(&o, 5, "hi", 2);
	state_put_bytes(&o, 6, NULL, 0);
	CHECK_EQ(o.err, 0);
	CHECK_EQ(o.len, sizeof(want));
	CHECK(o.len == sizeof(want) && !memcmp(o.buf, want, sizeof(want)));
	state_out_free(&o);
	CHECK(o.buf == NULL && o.len == 0 && o.cap == 0 && o.err == 0);
}

TEST(state_roundtrip_every_type)
{
	struct state_out o;
	struct state_in in;
	struct state_field f;
	struct want w[16];
	size_t n, i = 0;
	uint8_t *copy, b3[3];
	uint8_t u8;
	uint16_t u16;
	uint32_t u32;
	uint64_t u64;
	int ret;

	state_out_init(&o);
	n = build_sample(&o, w);
	CHECK_EQ(o.err, 0);
	copy = exact_copy(o.buf, o.len);
	state_in_init(&in, copy, o.len);
	while ((ret = state_next(&in, &f)) > 0 && i < n) {
		CHECK_EQ(f.tag, w[i].tag);
		CHECK_EQ(f.len, w[i].len);
		switch (f.tag) {
		case 1: CHECK_EQ(state_get_u8(&f, &u8), 0); CHECK_EQ(u8, 0xa5); break;
		case 2: CHECK_EQ(state_get_u16(&f, &u16), 0); CHECK_EQ(u16, 0xbeef); break;
		case 3: CHECK_EQ(state_get_u32(&f, &u32), 0); CHECK_EQ(u32, 0xdeadbeefu); break;
		case 4:
			CHECK_EQ(state_get_u64(&f, &u64), 0);
			CHECK(u64 == 0x0123456789abcdefull);
			break;
		case 0xffff: CHECK_EQ(state_get_u8(&f, &u8), 0); CHECK_EQ(u8, 0); break;
		case 0: CHECK_EQ(state_get_bytes(&f, NULL, 0), 0); break;
		case 7:
			CHECK_EQ(state_get_bytes(&f, b3, 3), 0);
			CHECK(!memcmp(b3, w[i].val, 3));
			break;
		case 8: CHECK_EQ(state_get_u64(&f, &u64), 0); CHECK(u64 == UINT64_MAX); break;
		case 9: CHECK(!memcmp(f.val, big, SAMPLE_BIG)); break;
		}
		i++;
	}
	CHECK_EQ(ret, 0);
	CHECK_EQ(i, n);
	CHECK_EQ(in.off, o.len);
	/* At the end it stays at the end. */
	CHECK_EQ(state_next(&in, &f), 0);
	free(copy);
	state_out_free(&o);
}

TEST(state_getters_check_length)
{
	struct state_out o;
	struct state_in in;
	struct state_field f;
	uint8_t u8 = 0x11, buf[8];
	uint16_t u16 = 0x2222;
	uint32_t u32 = 0x33333333;
	uint64_t u64 = 0x4444444444444444ull;

	state_out_init(&o);
	state_put_u16(&o, 1, 7);
	state_in_init(&in, o.buf, o.len);
	CHECK_EQ(state_next(&in, &f), 1);
	CHECK_EQ(state_get_u8(&f, &u8), -EBADMSG);
	CHECK_EQ(state_get_u32(&f, &u32), -EBADMSG);
	CHECK_EQ(state_get_u64(&f, &u64), -EBADMSG);
	CHECK_EQ(state_get_bytes(&f, buf, 1), -EBADMSG);
	CHECK_EQ(state_get_bytes(&f, buf, 3), -EBADMSG);
	/* A failed get leaves the destination alone. */
	CHECK_EQ(u8, 0x11);
	CHECK_EQ(u32, 0x33333333);
	CHECK(u64 == 0x4444444444444444ull);
	CHECK_EQ(state_get_u16(&f, &u16), 0);
	CHECK_EQ(u16, 7);
	CHECK_EQ(state_get_bytes(&f, buf, 2), 0);
	CHECK(buf[0] == 7 && buf[1] == 0);
	state_out_free(&o);
}

TEST(state_zero_length_fields)
{
	struct state_out o;
	struct state_in in;
	struct state_field f;
	uint8_t u8;
	uint8_t *copy;

	state_out_init(&o);
	state_put_bytes(&o, 5, NULL, 0);
	state_put_bytes(&o, 6, "x", 0);
	state_put_u8(&o, 7, 9);
	CHECK_EQ(o.err, 0);
	CHECK_EQ(o.len, 6 + 6 + 7);
	copy = exact_copy(o.buf, o.len);
	state_in_init(&in, copy, o.len);
	CHECK_EQ(state_next(&in, &f), 1);
	CHECK_EQ(f.tag, 5);
	CHECK_EQ(f.len, 0);
	CHECK_EQ(state_get_u8(&f, &u8), -EBADMSG);
	CHECK_EQ(state_get_bytes(&f, NULL, 0), 0);
	CHECK_EQ(state_next(&in, &f), 1);
	CHECK_EQ(f.tag, 6);
	CHECK_EQ(f.len, 0);
	CHECK_EQ(state_next(&in, &f), 1);
	CHECK_EQ(f.tag, 7);
	CHECK_EQ(state_next(&in, &f), 0);
	free(copy);
	/* An empty encoding is valid and has no fields; so is a NULL one. */
	state_in_init(&in, o.buf, 0);
	CHECK_EQ(state_next(&in, &f), 0);
	state_in_init(&in, NULL, 0);
	CHECK_EQ(state_next(&in, &f), 0);
	state_out_free(&o);
}

/*
 * A loader's view: it picks the tags it knows and skips the rest, including
 * fields it has never heard of that sit between, before and after them.
 */
TEST(state_unknown_tags_skipped)
{
	struct state_out o;
	struct state_in in;
	struct state_field f;
	uint32_t a = 0, b = 0;
	int ret, known = 0, unknown = 0;

	state_out_init(&o);
	state_put_bytes(&o, 0x7001, "future", 6);
	state_put_u32(&o, 1, 111);
	state_put_u64(&o, 0x7002, 5);
	state_put_bytes(&o, 0x7003, NULL, 0);
	state_put_u32(&o, 2, 222);
	state_put_bytes(&o, 0xffff, big, 1000);
	state_in_init(&in, o.buf, o.len);
	while ((ret = state_next(&in, &f)) > 0) {
		switch (f.tag) {
		case 1: CHECK_EQ(state_get_u32(&f, &a), 0); known++; break;
		case 2: CHECK_EQ(state_get_u32(&f, &b), 0); known++; break;
		default: unknown++; break;
		}
	}
	CHECK_EQ(ret, 0);
	CHECK_EQ(a, 111);
	CHECK_EQ(b, 222);
	CHECK_EQ(known, 2);
	CHECK_EQ(unknown, 4);
	state_out_free(&o);
}

/*
 * Cut a valid encoding at every byte: the reader returns exactly the
 * fields that fit whole, identical to the originals, then 0 if the cut is
 * on a field boundary and -EBADMSG otherwise.
 */
TEST(state_truncation_every_byte)
{
	struct state_out o;
	struct want w[16];
	size_t n, boundaries[17], nb = 0, off = 0;

	state_out_init(&o);
	n = build_sample(&o, w);
	CHECK_EQ(o.err, 0);
	boundaries[nb++] = 0;
	for (size_t i = 0; i < n; i++) {
		off += 6 + w[i].len;
		boundaries[nb++] = off;
	}
	CHECK_EQ(off, o.len);
	for (size_t cut = 0; cut <= o.len; cut++) {
		uint8_t *copy = exact_copy(o.buf, cut);
		struct state_in in;
		struct state_field f;
		size_t got = 0, whole = 0;
		bool on_boundary = false;
		int ret;

		for (size_t i = 0; i < nb; i++) {
			if (boundaries[i] <= cut)
				whole = i;
			on_boundary |= boundaries[i] == cut;
		}
		state_in_init(&in, copy, cut);
		while ((ret = state_next(&in, &f)) > 0) {
			if (got >= n || f.tag != w[got].tag || f.len != w[got].len ||
			    f.val < copy || f.val + f.len > copy + cut ||
			    memcmp(f.val, o.buf + (f.val - copy), f.len)) {
				unit_fail(__FILE__, __LINE__, "cut %zu: field %zu differs", cut, got);
				break;
			}
			got++;
		}
		if (ret != (on_boundary ? 0 : -EBADMSG) || got != whole)
			unit_fail(__FILE__, __LINE__, "cut %zu: ret %d after %zu fields, want %d after %zu",
				  cut, ret, got, on_boundary ? 0 : -EBADMSG, whole);
		/* An error is sticky: the reader does not move past it. */
		if (ret < 0 && state_next(&in, &f) != -EBADMSG)
			unit_fail(__FILE__, __LINE__, "cut %zu: error not sticky", cut);
		free(copy);
	}
	state_out_free(&o);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/*
 * Flip 1-4 random bits, many times: the walk ends (0 or -EBADMSG) within
 * the buffer, every field it returns lies inside it, and the typed getters
 * either read exactly the field or refuse.
 */
TEST(state_random_bit_flips)
{
	struct state_out o;
	unsigned int errors = 0, clean = 0;

	state_out_init(&o);
	state_put_u8(&o, 1, 0xa5);
	state_put_u16(&o, 2, 0xbeef);
	state_put_u32(&o, 3, 0xdeadbeefu);
	state_put_u64(&o, 4, 1);
	state_put_bytes(&o, 5, "hello, world", 12);
	state_put_bytes(&o, 6, NULL, 0);
	state_put_u32(&o, 7, 0);
	CHECK_EQ(o.err, 0);
	for (int iter = 0; iter < 20000; iter++) {
		uint8_t *copy = exact_copy(o.buf, o.len);
		struct state_in in;
		struct state_field f;
		unsigned int flips = 1 + (unsigned int)(rng() % 4), fields = 0;
		uint8_t sink[64];
		uint64_t u64;
		int ret;

		for (unsigned int i = 0; i < flips; i++) {
			uint64_t bit = rng() % (o.len * 8);

			copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		}
		state_in_init(&in, copy, o.len);
		while ((ret = state_next(&in, &f)) > 0) {
			if (f.val < copy || f.len > o.len || f.val + f.len > copy + o.len) {
				unit_fail(__FILE__, __LINE__, "iter %d: field outside the buffer", iter);
				break;
			}
			if (f.len <= sizeof(sink) && state_get_bytes(&f, sink, f.len))
				unit_fail(__FILE__, __LINE__, "iter %d: get_bytes of exact len", iter);
			if (state_get_u64(&f, &u64) != (f.len == 8 ? 0 : -EBADMSG))
				unit_fail(__FILE__, __LINE__, "iter %d: get_u64 len check", iter);
			if (++fields > o.len / 6) {
				unit_fail(__FILE__, __LINE__, "iter %d: more fields than bytes allow", iter);
				break;
			}
		}
		if (ret != 0 && ret != -EBADMSG)
			unit_fail(__FILE__, __LINE__, "iter %d: ret %d", iter, ret);
		if (ret)
			errors++;
		else
			clean++;
		free(copy);
	}
	/* Both outcomes happen: flips in values read clean, flips in lengths do not. */
	CHECK(errors > 0);
	CHECK(clean > 0);
	state_out_free(&o);
}

/* Hand-made headers whose length claims more than is there. */
TEST(state_hostile_lengths)
{
	static const uint8_t huge[] = { 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4 };
	static const uint8_t one_over[] = { 0x01, 0x00, 0x05, 0x00, 0x00, 0x00, 1, 2, 3, 4 };
	static const uint8_t exact[] = { 0x01, 0x00, 0x04, 0x00, 0x00, 0x00, 1, 2, 3, 4 };
	static const uint8_t then_huge[] = { 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 9,
					     0x02, 0x00, 0xff, 0xff, 0xff, 0xff };
	static const uint8_t short_hdr[] = { 0x01, 0x00, 0x00, 0x00, 0x00 };
	struct state_in in;
	struct state_field f = { 0 };
	uint8_t *c;
	uint32_t u32;

	c = exact_copy(huge, sizeof(huge));
	state_in_init(&in, c, sizeof(huge));
	CHECK_EQ(state_next(&in, &f), -EBADMSG);
	CHECK_EQ(in.off, 0);
	CHECK_EQ(state_next(&in, &f), -EBADMSG);
	free(c);

	c = exact_copy(one_over, sizeof(one_over));
	state_in_init(&in, c, sizeof(one_over));
	CHECK_EQ(state_next(&in, &f), -EBADMSG);
	free(c);

	c = exact_copy(exact, sizeof(exact));
	state_in_init(&in, c, sizeof(exact));
	CHECK_EQ(state_next(&in, &f), 1);
	CHECK_EQ(state_get_u32(&f, &u32), 0);
	CHECK_EQ(u32, 0x04030201);
	CHECK_EQ(state_next(&in, &f), 0);
	free(c);

	c = exact_copy(then_huge, sizeof(then_huge));
	state_in_init(&in, c, sizeof(then_huge));
	CHECK_EQ(state_next(&in, &f), 1);
	CHECK_EQ(f.tag, 1);
	CHECK_EQ(state_next(&in, &f), -EBADMSG);
	CHECK_EQ(in.off, 7);
	free(c);

	c = exact_copy(short_hdr, sizeof(short_hdr));
	state_in_init(&in, c, sizeof(short_hdr));
	CHECK_EQ(state_next(&in, &f), -EBADMSG);
	free(c);
}

/* The first error sticks: later puts do nothing, the buffer is what it was. */
TEST(state_sticky_error)
{
	struct state_out o;
	size_t len;

	state_out_init(&o);
	state_put_u32(&o, 1, 5);
	len = o.len;
	state_put_bytes(&o, 2, NULL, 4);       /* no source for 4 bytes */
	CHECK_EQ(o.err, -EINVAL);
	state_put_u8(&o, 3, 1);
	state_put_u64(&o, 4, 1);
	state_put_bytes(&o, 5, "abc", 3);
	CHECK_EQ(o.err, -EINVAL);
	CHECK_EQ(o.len, len);
	state_out_free(&o);
	CHECK_EQ(o.err, 0);
}

/* Growth keeps earlier fields intact (many small puts, then one large). */
TEST(state_growth)
{
	struct state_out o;
	struct state_in in;
	struct state_field f;
	uint32_t v;
	int ret, i = 0;

	state_out_init(&o);
	for (uint32_t k = 0; k < 5000; k++)
		state_put_u32(&o, (uint16_t)k, k * 2654435761u);
	state_put_bytes(&o, 0xfffe, big, sizeof(big));
	CHECK_EQ(o.err, 0);
	CHECK(o.cap >= o.len);
	state_in_init(&in, o.buf, o.len);
	while ((ret = state_next(&in, &f)) > 0 && i < 5000) {
		if (f.tag != (uint16_t)i || state_get_u32(&f, &v) || v != (uint32_t)i * 2654435761u) {
			unit_fail(__FILE__, __LINE__, "field %d", i);
			break;
		}
		i++;
	}
	CHECK_EQ(i, 5000);
	CHECK_EQ(ret, 1);
	CHECK_EQ(f.tag, 0xfffe);
	CHECK(f.len == sizeof(big) && !memcmp(f.val, big, sizeof(big)));
	CHECK_EQ(state_next(&in, &f), 0);
	state_out_free(&o);
}

/* ---- described state (struct state_desc) and records (struct state_rec) ---- */

struct img {
	uint8_t a;
	uint16_t b;
	uint32_t c;
	uint64_t d;
	struct state_bytes blob, opt;
	unsigned int each;          /* EACH fields seen on load */
	uint32_t each_sum;
};

static int img_put_each(struct state_out *o, uint16_t tag, const void *p)
{
	const struct img *im = p;

	for (unsigned int i = 0; i < im->each; i++)
		state_put_u32(o, tag, 100 + i);
	return o->err;
}

static int img_get_each(void *p, const struct state_field *f)
{
	struct img *im = p;
	uint32_t v;

	if (state_get_u32(f, &v))
		return -EBADMSG;
	if (v == 0xdead)
		return -EPERM;          /* the callback's own error comes back as it is */
	im->each++;
	im->each_sum += v;
	return 0;
}

#define IMG struct img
static const struct state_desc img_fields[] = {
	STATE_INT(1, IMG, a, 9, 1),
	STATE_INT(2, IMG, b, STATE_ANY, 1),
	STATE_INT(3, IMG, c, STATE_ANY, 2),        /* required from version 2 */
	STATE_INT(4, IMG, d, STATE_ANY, 1),
	STATE_BYTES(5, IMG, blob, 2, 8, 1),
	STATE_BYTES(6, IMG, opt, 4, 4, STATE_OPT),
	STATE_EACH(7, img_put_each, img_get_each, STATE_OPT, "each"),
};
#undef IMG

/* Load o's fields into im from a heap copy of exactly its bytes; *keep gets the copy. */
static int img_load_keep(const struct state_out *o, struct img *im, uint16_t version,
			 uint8_t **keep)
{
	uint8_t *c = exact_copy(o->buf, o->len);
	struct state_in in;
	int ret;

	memset(im, 0, sizeof(*im));
	state_in_init(&in, c, o->len);
	ret = state_load_fields(&in, img_fields, ARRAY_SIZE(img_fields), im, version);
	*keep = c;
	return ret;
}

static int img_load(const struct state_out *o, struct img *im, uint16_t version)
{
	uint8_t *c;
	int ret = img_load_keep(o, im, version, &c);

	free(c);
	return ret;
}

/* The version-1 fields, valid, but the one tagged skip. */
static void img_valid(struct state_out *o, uint16_t skip)
{
	static const uint8_t blob[2] = { 7, 7 };

	if (skip != 1)
		state_put_u8(o, 1, 1);
	if (skip != 2)
		state_put_u16(o, 2, 2);
	if (skip != 4)
		state_put_u64(o, 4, 4);
	if (skip != 5)
		state_put_bytes(o, 5, blob, 2);
}

TEST(state_desc_roundtrip)
{
	static const uint8_t blob[5] = { 1, 2, 3, 4, 5 };
	struct img a = { .a = 9, .b = 0xbeef, .c = 0x12345678, .d = UINT64_MAX,
			 .blob = { blob, 5 }, .each = 3 }, b;
	struct state_out o;
	struct state_in in;
	struct state_field f;
	unsigned int n = 0;
	uint8_t *keep;

	state_out_init(&o);
	CHECK_EQ(state_save_fields(&o, img_fields, ARRAY_SIZE(img_fields), &a), 0);
	/* Table order; the optional bytes field without a source is left out. */
	state_in_init(&in, o.buf, o.len);
	while (state_next(&in, &f) > 0) {
		static const uint16_t order[] = { 1, 2, 3, 4, 5, 7, 7, 7 };

		CHECK(n < ARRAY_SIZE(order) && f.tag == order[n]);
		n++;
	}
	CHECK_EQ(n, 8);
	CHECK_EQ(img_load_keep(&o, &b, 2, &keep), 0);
	CHECK_EQ(b.a, 9);
	CHECK_EQ(b.b, 0xbeef);
	CHECK_EQ(b.c, 0x12345678u);
	CHECK_EQ(b.d, UINT64_MAX);
	CHECK_EQ(b.blob.len, 5);
	CHECK(b.blob.p && !memcmp(b.blob.p, blob, 5));
	CHECK(b.opt.p == NULL);
	CHECK_EQ(b.each, 3);
	CHECK_EQ(b.each_sum, 100 + 101 + 102);
	free(keep);
	state_out_free(&o);
}

TEST(state_desc_refusals)
{
	static const uint8_t zeros[16];
	struct state_out o;
	struct img b;

	/* A required field missing: c is required only from version 2. */
	state_out_init(&o);
	img_valid(&o, 0);
	CHECK_EQ(img_load(&o, &b, 1), 0);
	CHECK_EQ(img_load(&o, &b, 2), -EBADMSG);
	/* Unknown tags are skipped; a duplicate is refused. */
	state_put_u32(&o, 99, 5);
	CHECK_EQ(img_load(&o, &b, 1), 0);
	state_put_u8(&o, 1, 1);
	CHECK_EQ(img_load(&o, &b, 1), -EBADMSG);
	state_out_free(&o);
	/* Each field missing in turn. */
	for (uint16_t t = 1; t <= 5; t++) {
		if (t == 3)
			continue;
		state_out_init(&o);
		img_valid(&o, t);
		CHECK_EQ(img_load(&o, &b, 1), -EBADMSG);
		state_out_free(&o);
	}

	/* Bounds, widths, lengths, and the callback's own error. */
	struct { uint16_t tag; uint8_t width; uint64_t v; uint32_t blen; int want; } cases[] = {
		{ 1, 1, 10, 0, -EINVAL },        /* a > 9 */
		{ 1, 2, 1, 0, -EBADMSG },        /* a of 2 bytes */
		{ 5, 0, 0, 1, -EBADMSG },        /* blob shorter than 2 */
		{ 5, 0, 0, 9, -EINVAL },         /* blob longer than 8 */
		{ 6, 0, 0, 3, -EBADMSG },        /* opt not exactly 4 */
		{ 7, 4, 0xdead, 0, -EPERM },
		{ 7, 2, 1, 0, -EBADMSG },
	};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		state_out_init(&o);
		img_valid(&o, cases[i].tag);
		if (cases[i].width == 1)
			state_put_u8(&o, cases[i].tag, (uint8_t)cases[i].v);
		else if (cases[i].width == 2)
			state_put_u16(&o, cases[i].tag, (uint16_t)cases[i].v);
		else if (cases[i].width == 4)
			state_put_u32(&o, cases[i].tag, (uint32_t)cases[i].v);
		else
			state_put_bytes(&o, cases[i].tag, zeros, cases[i].blen);
		CHECK_EQ(img_load(&o, &b, 1), cases[i].want);
		state_out_free(&o);
	}
}

struct rec_inner { uint16_t x; uint8_t pad; uint32_t y; };
struct rec_outer { uint8_t a; uint64_t arr[3]; struct rec_inner in[2]; uint32_t z; };
#define T struct rec_inner
static const struct state_rec inner_rec[] = { STATE_REC(T, x), STATE_REC(T, y) };
#undef T
#define T struct rec_outer
static const struct state_rec outer_rec[] = {
	STATE_REC(T, a), STATE_REC_ARRAY(T, arr, 3), STATE_REC_SUB_ARRAY(T, in, 2, inner_rec),
	STATE_REC(T, z),
};
#undef T

TEST(state_rec_layout)
{
	struct rec_outer a = { .a = 0x11, .arr = { 1, 2, 0x0102030405060708ULL },
			       .in = { { 0xaabb, 0x55, 0xccddeeff }, { 7, 0x66, 8 } }, .z = 0x99 }, b;
	uint8_t buf[64];
	size_t len = state_rec_len(outer_rec, ARRAY_SIZE(outer_rec));

	/* 1 + 3*8 + 2*(2+4) + 4: no padding, the pad member not saved. */
	CHECK_EQ(len, 41);
	memset(buf, 0xee, sizeof(buf));
	state_rec_put(buf, outer_rec, ARRAY_SIZE(outer_rec), &a);
	CHECK_EQ(buf[0], 0x11);
	CHECK_EQ(buf[17], 0x08);                 /* arr[2], little-endian */
	CHECK_EQ(buf[25], 0xbb);                 /* in[0].x */
	CHECK_EQ(buf[27], 0xff);                 /* in[0].y */
	CHECK_EQ(buf[40], 0x00);                 /* z's last byte */
	CHECK_EQ(buf[41], 0xee);                 /* nothing past the record */
	memset(&b, 0, sizeof(b));
	state_rec_get(buf, outer_rec, ARRAY_SIZE(outer_rec), &b);
	CHECK_EQ(b.a, a.a);
	CHECK_EQ(b.arr[2], a.arr[2]);
	CHECK_EQ(b.in[0].x, a.in[0].x);
	CHECK_EQ(b.in[1].y, a.in[1].y);
	CHECK_EQ(b.in[0].pad, 0);                /* not in the record: untouched */
	CHECK_EQ(b.z, a.z);
}
