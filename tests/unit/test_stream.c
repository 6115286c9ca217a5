/*
 * test_stream.c - the migration stream (stream.c, crc32c.c): CRC values,
 * write -> read round trips through a file, a pipe and memory, every
 * truncation and bit flip of a small stream refused cleanly, unknown
 * sections skipped or refused by name, RAM runs outside the layout or
 * with lying lengths refused, lost/reordered sections caught by the EOF
 * chain, the writer's own checks, configuration and CPUID compatibility,
 * the golden streams in tests/data/, and a throughput figure.
 *
 * Decodes from memory run on heap copies of exactly the bytes given, so
 * under ASan (`make asan`) a read past the end is a crash, not a pass.
 * Hostile variants are made by editing a good stream and restamping its
 * checksums with restamp(), an independent walker of the format, so the
 * reader's semantic checks are reached, not only its CRC check.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#include <zstd.h>

#include "unit.h"
#include "godwit/cmd.h"
#include "godwit/crc32c.h"
#include "godwit/dev.h"
#include "godwit/state.h"
#include "godwit/stream.h"
#include "godwit/vm.h"

#define PAGE      4096u
#define GB_GPA    0x100000000ull       /* region B: at 4 GiB, as above the MMIO hole */

/* ---- a fake guest: region A at 0, region B at 4 GiB --------------------------- */

struct guest {
	unsigned int n;
	uint64_t gpa[2], size[2];
	uint8_t *host[2];
};

static void guest_alloc(struct guest *g, uint64_t pages_a, uint64_t pages_b)
{
	memset(g, 0, sizeof(*g));
	g->n = pages_b ? 2 : 1;
	g->gpa[0] = 0;
	g->size[0] = pages_a * PAGE;
	g->gpa[1] = GB_GPA;
	g->size[1] = pages_b * PAGE;
	for (unsigned int i = 0; i < g->n; i++) {
		g->host[i] = aligned_alloc(PAGE, g->size[i]);
		if (g->host[i])
			memset(g->host[i], 0, g->size[i]);
	}
}

static void guest_free(struct guest *g)
{
	for (unsigned int i = 0; i < 2; i++)
		free(g->host[i]);
	memset(g, 0, sizeof(*g));
}

static void *guest_lookup(void *opaque, uint64_t gpa, uint64_t len)
{
	struct guest *g = opaque;

	for (unsigned int i = 0; i < g->n; i++)
		if (gpa >= g->gpa[i] && gpa - g->gpa[i] <= g->size[i] &&
		    len <= g->size[i] - (gpa - g->gpa[i]))
			return g->host[i] + (gpa - g->gpa[i]);
	return NULL;
}

static bool guest_equal(const struct guest *a, const struct guest *b)
{
	for (unsigned int i = 0; i < a->n; i++)
		if (a->size[i] != b->size[i] || memcmp(a->host[i], b->host[i], a->size[i]))
			return false;
	return a->n == b->n;
}

/* A deterministic non-zero page for (gpa, pass). */
static void fill_page(uint8_t *p, uint64_t gpa, unsigned int pass)
{
	uint64_t x = (gpa >> 12) * 0x9e3779b97f4a7c15ull + pass * 0x632be59bd9b4e019ull + 1;

	for (unsigned int i = 0; i < PAGE; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, 8);
	}
}

static void guest_config(const struct guest *g, struct stream_config *c)
{
	static const struct stream_cpuid_entry leaves[] = {
		/* leaf 0: max 0xd, "GenuineIntel" */
		{ 0x0, 0, 0, 0xd, 0x756e6547, 0x6c65746e, 0x49656e69 },
		{ 0x1, 0, 0, 0x000306c3, 0x00010800, 0x80202001, 0x078bfbff },
		{ 0x7, 0, 1, 0, 0x00000009, 0, 0 },
		{ 0x80000001, 0, 0, 0, 0, 0x1, 0x2c100800 },
	};

	stream_config_init(c);
	c->ncpus = 2;
	snprintf(c->name, sizeof(c->name), "golden");
	for (unsigned int i = 0; i < 16; i++)
		c->uuid[i] = (uint8_t)(0xa0 + i);
	snprintf(c->cpu_model, sizeof(c->cpu_model), "x86-64-v2");
	snprintf(c->cpu_vendor, sizeof(c->cpu_vendor), "GenuineIntel");
	c->tsc_khz = 2400000;
	for (unsigned int i = 0; i < g->n; i++)
		if (stream_config_add_region(c, g->gpa[i], g->size[i]))
			abort();
	c->nr_cpuid = ARRAY_SIZE(leaves);
	memcpy(c->cpuid, leaves, sizeof(leaves));
	if (stream_config_add_device(c, "test-uart", 0, 2, "") ||
	    stream_config_add_device(c, "test-blk", 0, 1, "serial=disk0,readonly=off"))
		abort();
}

/* ---- the sample stream (frozen: it wrote tests/data/golden-0.1.0-dev.gws) ----- */

/*
 * Payload k of the sample's non-RAM sections, and their headers.  Frozen
 * like golden_v1_write(): the golden test compares the file against these.
 */
static const struct {
	uint8_t type;
	const char *id;
	uint16_t version;
	uint32_t instance;
} sample_sections[] = {
	{ STREAM_CPU,    "test-cpu",     1, 0 },
	{ STREAM_CPU,    "test-cpu",     1, 1 },
	{ STREAM_VM,     "test-irqchip", 1, 0 },
	{ STREAM_DEVICE, "test-uart",    2, 0 },
	{ STREAM_DEVICE, "test-blk",     1, 0 },
};

static void sample_payload(unsigned int k, struct state_out *o)
{
	uint8_t b[3000];

	for (unsigned int i = 0; i < sizeof(b); i++)
		b[i] = (uint8_t)(i * 13 + k);
	state_put_u32(o, 1, 0x1000 + k);
	state_put_u64(o, 2, 0x0123456789abcdefull ^ k);
	state_put_bytes(o, 3, b, k == 4 ? 3000 : 40 + k);
	if (k == 3)
		state_put_bytes(o, 4, NULL, 0);
}

/* Extras, never used for the golden stream. */
#define SAMPLE_OPTIONAL  0x1    /* an unknown optional section (type 0x70) */
#define SAMPLE_REQUIRED  0x2    /* an unknown required section (type 0x71) */
#define SAMPLE_NO_PASS2  0x4    /* stop after the device sections */

/*
 * golden_v1_write - the sample stream for guest g (its memory is set as it
 * goes): the configuration; pass 1 = every page (page i of a region is
 * zero if i % 4 == 1, else fill_page(gpa, 1)); the sections of
 * sample_sections[]; pass 2 = region A's first page zeroed and its second
 * filled (sent through a dirty bitmap), region B's last page refilled;
 * EOF.  golden-0.1.0-dev.gws is this with an 8+4-page guest and
 * SAMPLE_OPTIONAL.  Frozen: change it only by adding SAMPLE_* extras.
 */
static int golden_v1_write(struct stream_writer *w, struct guest *g, unsigned int extras)
{
	struct stream_config *c = malloc(sizeof(*c));
	int ret;

	if (!c)
		return -ENOMEM;
	guest_config(g, c);
	ret = stream_begin(w, c);
	free(c);
	if (ret)
		return ret;
	for (unsigned int r = 0; r < g->n; r++) {
		for (uint64_t i = 0; i < g->size[r] / PAGE; i++)
			if (i % 4 != 1)
				fill_page(g->host[r] + i * PAGE, g->gpa[r] + i * PAGE, 1);
		ret = stream_put_ram(w, g->host[r], g->gpa[r], g->size[r] / PAGE);
		if (ret)
			return ret;
	}
	for (unsigned int k = 0; k < ARRAY_SIZE(sample_sections); k++) {
		struct state_out o;

		state_out_init(&o);
		sample_payload(k, &o);
		ret = stream_put_state(w, sample_sections[k].type, sample_sections[k].id,
				       sample_sections[k].version, sample_sections[k].instance, &o);
		state_out_free(&o);
		if (ret)
			return ret;
		if (k == 2 && (extras & SAMPLE_OPTIONAL))
			ret = stream_put_section(w, 0x70, STREAM_F_OPTIONAL, "test-future-opt", 3, 0,
						 "ignore me", 9);
		if (k == 2 && (extras & SAMPLE_REQUIRED))
			ret = stream_put_section(w, 0x71, 0, "test-future-req", 1, 0, "need me", 7);
		if (ret)
			return ret;
	}
	if (!(extras & SAMPLE_NO_PASS2)) {
		uint64_t bits = 0x3;
		uint64_t last = g->size[g->n - 1] / PAGE - 1;

		memset(g->host[0], 0, PAGE);
		fill_page(g->host[0] + PAGE, g->gpa[0] + PAGE, 2);
		ret = stream_put_ram_dirty(w, g->host[0], g->gpa[0], MIN(64, g->size[0] / PAGE),
					   &bits);
		if (ret)
			return ret;
		fill_page(g->host[g->n - 1] + last * PAGE, g->gpa[g->n - 1] + last * PAGE, 2);
		ret = stream_put_ram(w, g->host[g->n - 1] + last * PAGE,
				     g->gpa[g->n - 1] + last * PAGE, 1);
		if (ret)
			return ret;
	}
	return stream_end(w);
}

/* ---- helpers: write into memory, load everything, walk and restamp ------------ */

/* Writer options for the next sample_bytes() (RAM v2 tests); reset by it. */
static bool sample_no_crc;
static enum stream_compress sample_compress;

/* The sample for a guest of (pa, pb) pages, as bytes (malloc()ed); g gets the memory. */
static uint8_t *sample_bytes(struct guest *g, uint64_t pa, uint64_t pb, unsigned int extras,
			     size_t *len)
{
	struct stream_writer *w;
	struct stat st;
	uint8_t *b = NULL;
	int fd = memfd_create("stream", 0);

	guest_alloc(g, pa, pb);
	if (fd < 0 || stream_writer_new(fd, &w))
		abort();
	stream_writer_set_page_crc(w, !sample_no_crc);
	stream_writer_set_compress(w, sample_compress);
	sample_no_crc = false;
	sample_compress = STREAM_COMPRESS_OFF;

	if (golden_v1_write(w, g, extras)) {
		printf("#   sample: %s\n", stream_writer_error(w));
		abort();
	}
	stream_writer_free(w);
	if (fstat(fd, &st) || !(b = malloc((size_t)st.st_size + 1)) ||
	    pread(fd, b, (size_t)st.st_size, 0) != st.st_size)
		abort();
	close(fd);
	*len = (size_t)st.st_size;
	return b;
}

struct rec {
	uint8_t type, flags;
	char id[STREAM_ID_MAX + 1];
	uint16_t version;
	uint32_t instance;
	uint64_t len;
	uint32_t payload_crc;
};

struct loaded {
	struct stream_config cfg;
	struct rec recs[32];
	unsigned int n;
	struct stream_ram_stats ram;
	char err[512];
};

/* Read a whole stream: RAM into g (NULL: check only), payloads recorded. */
static int load_all(struct stream_reader *r, struct guest *g, struct loaded *L)
{
	const struct stream_config *cfg;
	struct stream_section s;
	int ret;

	memset(L, 0, sizeof(*L));
	ret = stream_read_header(r, &cfg);
	if (!ret)
		L->cfg = *cfg;
	while (!ret && (ret = stream_next_section(r, &s)) > 0) {
		struct rec *rc = &L->recs[L->n < 32 ? L->n++ : 31];
		const uint8_t *p;

		rc->type = s.type;
		rc->flags = s.flags;
		memcpy(rc->id, s.id, sizeof(rc->id));
		rc->version = s.version;
		rc->instance = s.instance;
		rc->len = s.len;
		if (s.type == STREAM_RAM) {
			ret = stream_read_ram(r, g ? guest_lookup : NULL, g, &L->ram);
		} else {
			ret = stream_read_payload(r, &p);
			if (!ret)
				rc->payload_crc = crc32c(0, p, s.len);
		}
	}
	snprintf(L->err, sizeof(L->err), "%s", stream_reader_error(r));
	return ret;
}

/* Load len bytes at b from an exact heap copy. */
static int load_mem(const uint8_t *b, size_t len, struct guest *g, struct loaded *L)
{
	struct stream_reader *r;
	uint8_t *c = malloc(len ? len : 1);
	int ret;

	if (!c)
		abort();
	memcpy(c, b, len);
	if (stream_reader_new_mem(c, len, &r))
		abort();
	ret = load_all(r, g, L);
	stream_reader_free(r);
	free(c);
	return ret;
}

/* What a correct load of the sample must have produced. */
static void check_sample_loaded(const struct loaded *L, const struct guest *src,
				const struct guest *dst, unsigned int extras)
{
	unsigned int k = 0, nram = 0;

	CHECK_EQ(L->cfg.ncpus, 2);
	CHECK_STR(L->cfg.arch, "x86_64");
	CHECK_STR(L->cfg.name, "golden");
	CHECK_STR(L->cfg.cpu_model, "x86-64-v2");
	CHECK_STR(L->cfg.cpu_vendor, "GenuineIntel");
	CHECK_EQ(L->cfg.tsc_khz, 2400000);
	CHECK_EQ(L->cfg.uuid[15], 0xaf);
	CHECK_EQ(L->cfg.nr_regions, src->n);
	CHECK_EQ(L->cfg.regions[1].gpa, GB_GPA);
	CHECK_EQ(L->cfg.regions[1].size, src->size[1]);
	CHECK_EQ(L->cfg.nr_cpuid, 4);
	CHECK_EQ(L->cfg.cpuid[1].edx, 0x078bfbff);
	CHECK_EQ(L->cfg.cpuid[2].flags, 1);
	CHECK_EQ(L->cfg.nr_devices, 2);
	CHECK_STR(L->cfg.devices[1].type, "test-blk");
	CHECK_STR(L->cfg.devices[1].options, "serial=disk0,readonly=off");
	CHECK_EQ(L->cfg.devices[0].version, 2);
	for (unsigned int i = 0; i < L->n; i++) {
		const struct rec *rc = &L->recs[i];

		if (rc->type == STREAM_RAM) {
			CHECK_STR(rc->id, "ram");
			nram++;
			continue;
		}
		if (k >= ARRAY_SIZE(sample_sections)) {
			CHECK(!"more non-RAM sections than written");
			break;
		}
		struct state_out o;

		state_out_init(&o);
		sample_payload(k, &o);
		CHECK_EQ(rc->type, sample_sections[k].type);
		CHECK_STR(rc->id, sample_sections[k].id);
		CHECK_EQ(rc->version, sample_sections[k].version);
		CHECK_EQ(rc->instance, sample_sections[k].instance);
		CHECK_EQ(rc->len, o.len);
		CHECK_EQ(rc->payload_crc, crc32c(0, o.buf, o.len));
		state_out_free(&o);
		k++;
	}
	CHECK_EQ(k, ARRAY_SIZE(sample_sections));
	CHECK(nram >= ((extras & SAMPLE_NO_PASS2) ? 1u : 2u));
	CHECK_EQ(L->ram.sections, nram);
	if (dst)
		CHECK(guest_equal(src, dst));
}

/* A section as the test's own walker sees it. */
struct wsec {
	size_t off, payload;
	uint8_t type;
	uint64_t len;
};

static uint64_t le(const uint8_t *p, unsigned int n)
{
	uint64_t v = 0;

	for (unsigned int i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static void put_le(uint8_t *p, uint64_t v, unsigned int n)
{
	for (unsigned int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* The sections of a well-formed stream (walker for the tests' edits). */
static unsigned int walk(const uint8_t *b, size_t len, struct wsec *out, unsigned int max)
{
	size_t off = STREAM_PREAMBLE_LEN;
	unsigned int n = 0;

	while (off + 4 <= len && n < max) {
		size_t idl = (size_t)le(b + off + 2, 2);
		struct wsec *s = &out[n++];

		s->off = off;
		s->type = b[off];
		s->payload = off + 18 + idl;
		s->len = le(b + off + 10 + idl, 8);
		off = s->payload + s->len + 4;
	}
	return n;
}

static void chain_put(uint32_t *chain, uint32_t crc)
{
	uint8_t c[4];

	put_le(c, crc, 4);
	*chain = crc32c(*chain, c, 4);
}

/* Where a section's CRC stops: before the page data of a RAM v2 section with NODATACRC. */
static size_t ram_crc_end(const uint8_t *b, const struct wsec *s, size_t end)
{
	size_t idl = (size_t)le(b + s->off + 2, 2);
	const uint8_t *p = b + s->payload;

	if (s->type != STREAM_RAM || le(b + s->off + 4 + idl, 2) != 2 || s->len < 16 ||
	    !(le(p + 8, 4) & 1))
		return end;
	return MIN(end, s->payload + 16 + 16 * (size_t)le(p, 4) + (size_t)le(p + 4, 4));
}

/*
 * restamp - recompute every checksum of an edited stream: the preamble's,
 * each section's, the chain in the EOF record (tag 3) and the EOF's own.
 */
static void restamp(uint8_t *b, size_t len)
{
	struct wsec s[64];
	unsigned int n = walk(b, len, s, 64);
	uint32_t chain = 0, crc = crc32c(0, b, 16);

	put_le(b + 16, crc, 4);
	chain_put(&chain, crc);
	for (unsigned int i = 0; i < n; i++) {
		size_t end = s[i].payload + s[i].len;

		if (end + 4 > len)
			break;
		if (s[i].type == STREAM_EOF) {
			for (size_t o = s[i].payload; o + 6 <= end;
			     o += 6 + (size_t)le(b + o + 2, 4))
				if (le(b + o, 2) == 3)
					put_le(b + o + 6, chain, 4);
		}
		crc = crc32c(0, b + s[i].off, ram_crc_end(b, &s[i], end) - s[i].off);
		put_le(b + end, crc, 4);
		if (s[i].type != STREAM_EOF)
			chain_put(&chain, crc);
	}
}

static bool contains(const char *hay, const char *needle)
{
	return strstr(hay, needle) != NULL;
}

/* ---- CRC ------------------------------------------------------------------------ */

TEST(crc32c_known_values)
{
	static const uint8_t zeros[32], ones[32] = {
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff };

	/* RFC 3720 (iSCSI) B.4 test vectors, and the usual check value. */
	CHECK_EQ(crc32c(0, "123456789", 9), 0xe3069283u);
	CHECK_EQ(crc32c_sw(0, "123456789", 9), 0xe3069283u);
	CHECK_EQ(crc32c(0, zeros, 32), 0x8a9136aau);
	CHECK_EQ(crc32c_sw(0, ones, 32), 0x62a8ab43u);
	CHECK_EQ(crc32c(0, ones, 32), 0x62a8ab43u);
	CHECK_EQ(crc32c(0, NULL, 0), 0);
	printf("# crc32c: %s\n", crc32c_hw() ? "SSE4.2 instruction" : "tables");
}

TEST(crc32c_hw_table_copy_agree)
{
	static uint8_t buf[1200 + 8], dst[1200 + 8];
	uint64_t x = 88172645463325252ull;

	for (size_t i = 0; i < sizeof(buf); i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		buf[i] = (uint8_t)x;
	}
	for (size_t off = 0; off < 8; off++)
		for (size_t n = 0; n <= 1200; n += n < 80 ? 1 : 37) {
			uint32_t a = crc32c(0, buf + off, n);
			uint32_t split = crc32c(crc32c(7, buf + off, n / 3), buf + off + n / 3,
						n - n / 3);

			CHECK_EQ(a, crc32c_sw(0, buf + off, n));
			CHECK_EQ(split, crc32c_sw(crc32c_sw(7, buf + off, n / 3),
						  buf + off + n / 3, n - n / 3));
			memset(dst, 0, sizeof(dst));
			CHECK_EQ(crc32c_copy(0, dst + (7 - off), buf + off, n), a);
			CHECK(!memcmp(dst + (7 - off), buf + off, n));
		}
}

/* ---- round trips ---------------------------------------------------------------- */

TEST(stream_round_trip_file)
{
	struct guest src, dst;
	struct loaded *L = malloc(sizeof(*L));
	struct stream_writer *w;
	struct stream_reader *r;
	struct stream_ram_stats st;
	struct wsec s[32];
	char path[] = "/tmp/godwit-stream-XXXXXX";
	int fd = mkstemp(path);
	struct stat sb;
	uint8_t *map;
	unsigned int n, ram_checked = 0;

	CHECK(fd >= 0 && L);
	if (fd < 0 || !L)
		return;
	unlink(path);
	guest_alloc(&src, 512, 256);          /* 2 MiB + 1 MiB */
	guest_alloc(&dst, 512, 256);
	CHECK_EQ(stream_writer_new(fd, &w), 0);
	CHECK_EQ(golden_v1_write(w, &src, 0), 0);
	stream_writer_ram_stats(w, &st);
	CHECK_EQ(st.pages, 768 + 3);
	CHECK_EQ(st.zero_pages, 192 + 1);     /* pass 1: i % 4 == 1; pass 2: the zeroed page */
	CHECK_EQ(fstat(fd, &sb), 0);
	CHECK_EQ((uint64_t)sb.st_size, stream_writer_offset(w));
	stream_writer_free(w);

	CHECK_EQ(lseek(fd, 0, SEEK_SET), 0);
	CHECK_EQ(stream_reader_new(fd, &r), 0);
	CHECK_EQ(load_all(r, &dst, L), 0);
	if (L->err[0])
		printf("#   %s\n", L->err);
	CHECK_EQ(stream_reader_offset(r), (uint64_t)sb.st_size);
	CHECK_EQ(stream_reader_sections(r), 1 + ARRAY_SIZE(sample_sections) + L->ram.sections);
	stream_reader_free(r);
	check_sample_loaded(L, &src, &dst, 0);
	CHECK_EQ(L->ram.pages, st.pages);
	CHECK_EQ(L->ram.zero_pages, st.zero_pages);

	/* Page data sits on 4 KiB file offsets: a restore could mmap() it. */
	map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	CHECK(map != MAP_FAILED);
	n = map != MAP_FAILED ? walk(map, (size_t)sb.st_size, s, 32) : 0;
	for (unsigned int i = 0; i < n; i++) {
		const uint8_t *p = map + s[i].payload;
		uint32_t nruns = (uint32_t)le(p, 4), pad = (uint32_t)le(p + 4, 4);
		size_t data = s[i].payload + 8 + 16 * (size_t)nruns + pad;

		if (s[i].type != STREAM_RAM)
			continue;
		CHECK_EQ(data % PAGE, 0);
		/* the first data run's first page, straight from the mapping */
		for (uint32_t k = 0; k < nruns; k++) {
			uint64_t gpa = le(p + 8 + 16 * k, 8);
			uint8_t want[PAGE];

			if (le(p + 8 + 16 * k + 12, 4) & 1)
				continue;
			/* pass 1's first section, then pass 2's */
			fill_page(want, gpa, ram_checked ? 2 : 1);
			CHECK(!memcmp(map + data, want, PAGE));
			ram_checked++;
			break;
		}
	}
	CHECK(ram_checked >= 2);
	if (map != MAP_FAILED)
		munmap(map, (size_t)sb.st_size);
	close(fd);
	guest_free(&src);
	guest_free(&dst);
	free(L);
}

struct pipe_job {
	int fd;
	struct guest *g;
	int ret;
	char err[256];
	bool no_crc, watched;       /* RAM v2 from guest memory (a socket) */
};

static void *pipe_writer(void *arg)
{
	struct pipe_job *j = arg;
	struct stream_writer *w;

	j->ret = stream_writer_new(j->fd, &w);
	if (!j->ret) {
		struct stream_watchdog wd = { .deadline_ms = 60000 };

		stream_writer_set_page_crc(w, !j->no_crc);
		if (j->watched)
			stream_writer_set_watchdog(w, &wd);
		j->ret = golden_v1_write(w, j->g, 0);
		snprintf(j->err, sizeof(j->err), "%s", stream_writer_error(w));
		stream_writer_free(w);
	}
	close(j->fd);
	return NULL;
}

TEST(stream_round_trip_pipe)
{
	struct guest src, dst, ref;
	struct loaded *L = malloc(sizeof(*L));
	struct stream_reader *r;
	struct pipe_job job;
	pthread_t t;
	int p[2];
	size_t len;
	uint8_t *b;

	CHECK(L && !pipe(p));
	/* if the reader gives up, the writer gets EPIPE instead of blocking or dying */
	signal(SIGPIPE, SIG_IGN);
	guest_alloc(&src, 512, 256);
	guest_alloc(&dst, 512, 256);
	job = (struct pipe_job){ .fd = p[1], .g = &src };
	CHECK_EQ(pthread_create(&t, NULL, pipe_writer, &job), 0);
	CHECK_EQ(stream_reader_new(p[0], &r), 0);
	CHECK_EQ(load_all(r, &dst, L), 0);
	if (L->err[0])
		printf("#   %s\n", L->err);
	stream_reader_free(r);
	close(p[0]);
	pthread_join(t, NULL);
	if (job.ret)
		printf("#   writer: %s\n", job.err);
	CHECK_EQ(job.ret, 0);
	check_sample_loaded(L, &src, &dst, 0);
	/* Byte-identical to the same stream written to a file. */
	b = sample_bytes(&ref, 512, 256, 0, &len);
	CHECK(guest_equal(&ref, &dst));
	free(b);
	guest_free(&ref);
	guest_free(&src);
	guest_free(&dst);
	free(L);
}

/* A silent peer on a socket with a receive timeout (as migrations set): ETIMEDOUT, said so. */
TEST(stream_read_timeout_said)
{
	struct timeval tv = { .tv_sec = 0, .tv_usec = 200000 };
	const struct stream_config *cfg;
	struct stream_reader *r;
	int sv[2];

	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	CHECK_EQ(setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	CHECK_EQ(write(sv[1], "GODW", 4), 4);   /* part of a preamble, then nothing */
	CHECK_EQ(stream_reader_new(sv[0], &r), 0);
	CHECK_EQ(stream_read_header(r, &cfg), -ETIMEDOUT);
	CHECK(contains(stream_reader_error(r), "read at offset 0x4: timed out: the peer sent nothing for 0.200 s"));
	stream_reader_free(r);
	close(sv[0]);
	close(sv[1]);
}

TEST(stream_round_trip_dirty_bitmap)
{
	struct guest src, dst;
	struct loaded *L = malloc(sizeof(*L));
	struct stream_writer *w;
	struct stream_config *c = malloc(sizeof(*c));
	uint64_t bitmap[3] = { 0x8000000000000001ull, 0, 0xf0ull | 1ull << 63 };
	int fd = memfd_create("dirty", 0);
	struct stat sb;
	uint8_t *b;

	guest_alloc(&src, 160, 0);             /* 2.5 words of bits: a partial last word */
	guest_alloc(&dst, 160, 0);
	for (unsigned int i = 0; i < 160; i++)
		fill_page(src.host[0] + i * PAGE, i * PAGE, 1);
	memset(src.host[0] + 135 * PAGE, 0, PAGE);
	CHECK_EQ(stream_writer_new(fd, &w), 0);
	guest_config(&src, c);
	CHECK_EQ(stream_begin(w, c), 0);
	/* bits 0, 63, 132..135; bit 191 is beyond 160 pages and must be ignored */
	CHECK_EQ(stream_put_ram_dirty(w, src.host[0], 0, 160, bitmap), 0);
	CHECK_EQ(stream_end(w), 0);
	stream_writer_free(w);
	CHECK_EQ(fstat(fd, &sb), 0);
	b = malloc((size_t)sb.st_size);
	CHECK_EQ(pread(fd, b, (size_t)sb.st_size, 0), sb.st_size);
	close(fd);
	memset(dst.host[0] + 135 * PAGE, 0xee, PAGE);   /* a zero run must clear it */
	CHECK_EQ(load_mem(b, (size_t)sb.st_size, &dst, L), 0);
	CHECK_EQ(L->ram.pages, 6);
	CHECK_EQ(L->ram.zero_pages, 1);
	CHECK_EQ(L->ram.runs, 4);             /* 0, 63, 132-134, 135 (zero) */
	for (unsigned int i = 0; i < 160; i++) {
		bool sent = i == 0 || i == 63 || (i >= 132 && i <= 135);
		static const uint8_t zero[PAGE];

		CHECK(!memcmp(dst.host[0] + i * PAGE, sent ? src.host[0] + i * PAGE : zero, PAGE));
	}
	free(b);
	free(c);
	free(L);
	guest_free(&src);
	guest_free(&dst);
}

TEST(stream_ram_queued_twice)
{
	/* The same pages queued twice in a row: the writer splits the section. */
	struct guest src, dst;
	struct loaded *L = malloc(sizeof(*L));
	struct stream_config *c = malloc(sizeof(*c));
	struct stream_writer *w;
	int fd = memfd_create("twice", 0);
	struct stat sb;
	uint8_t *b;

	guest_alloc(&src, 8, 4);
	guest_alloc(&dst, 8, 4);
	guest_config(&src, c);
	CHECK_EQ(stream_writer_new(fd, &w), 0);
	CHECK_EQ(stream_begin(w, c), 0);
	for (unsigned int pass = 0; pass < 2; pass++)
		for (unsigned int r = 0; r < 2; r++) {
			fill_page(src.host[r] + PAGE, src.gpa[r] + PAGE, pass + 1);
			CHECK_EQ(stream_put_ram(w, src.host[r], src.gpa[r], src.size[r] / PAGE), 0);
		}
	CHECK_EQ(stream_end(w), 0);
	stream_writer_free(w);
	CHECK_EQ(fstat(fd, &sb), 0);
	b = malloc((size_t)sb.st_size);
	CHECK_EQ(pread(fd, b, (size_t)sb.st_size, 0), sb.st_size);
	close(fd);
	CHECK_EQ(load_mem(b, (size_t)sb.st_size, &dst, L), 0);
	if (L->err[0])
		printf("#   %s\n", L->err);
	CHECK_EQ(L->ram.sections, 2);
	CHECK_EQ(L->ram.pages, 24);
	CHECK(guest_equal(&src, &dst));
	free(b);
	free(c);
	free(L);
	guest_free(&src);
	guest_free(&dst);
}

/* ---- hostile input ---------------------------------------------------------------- */

TEST(stream_truncated_every_byte)
{
	struct guest src, dst;
	struct loaded *L = malloc(sizeof(*L));
	size_t len, bad = 0;
	uint8_t *b = sample_bytes(&src, 2, 1, SAMPLE_OPTIONAL, &len);

	guest_alloc(&dst, 2, 1);
	CHECK_EQ(load_mem(b, len, &dst, L), 0);
	CHECK(guest_equal(&src, &dst));
	for (size_t cut = 0; cut < len; cut++) {
		int ret = load_mem(b, cut, &dst, L);

		if (ret >= 0 || !L->err[0] || ret != -EBADMSG) {
			if (bad++ < 3)
				printf("#   cut at %zu: ret %d, '%s'\n", cut, ret, L->err);
		}
	}
	CHECK_EQ(bad, 0);
	/* The message names where: the header, or a section by id. */
	CHECK_EQ(load_mem(b, 10, &dst, L), -EBADMSG);
	CHECK(contains(L->err, "stream header: truncated"));
	CHECK_EQ(load_mem(b, len - 5, &dst, L), -EBADMSG);
	CHECK(contains(L->err, "section 'eof'"));

	/* Through a pipe (no size known: the per-type limits and EOF of input apply). */
	for (size_t cut = 0; cut < len; cut += cut < 200 ? 1 : 97) {
		struct stream_reader *r;
		int p[2];
		int ret;

		if (pipe(p))
			break;
		CHECK_EQ(write(p[1], b, cut), (ssize_t)cut);   /* < 64 KiB: fits the pipe */
		close(p[1]);
		CHECK_EQ(stream_reader_new(p[0], &r), 0);
		ret = load_all(r, &dst, L);
		if (ret != -EBADMSG && bad++ < 3)
			printf("#   pipe cut at %zu: ret %d, '%s'\n", cut, ret, L->err);
		stream_reader_free(r);
		close(p[0]);
	}
	CHECK_EQ(bad, 0);
	free(b);
	free(L);
	guest_free(&src);
	guest_free(&dst);
}

TEST(stream_bit_flips_detected)
{
	struct guest src, dst;
	struct loaded *L = malloc(sizeof(*L));
	size_t len, bad = 0;
	uint8_t *b = sample_bytes(&src, 2, 1, SAMPLE_OPTIONAL, &len);
	uint64_t x = 0x2545f4914f6cdd1dull;

	guest_alloc(&dst, 2, 1);
	/* One flipped bit at every byte (a pseudo-random bit of it). */
	for (size_t i = 0; i < len; i++) {
		int ret;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		b[i] ^= (uint8_t)(1u << (x % 8));
		ret = load_mem(b, len, &dst, L);
		b[i] ^= (uint8_t)(1u << (x % 8));
		if ((ret >= 0 || !L->err[0]) && bad++ < 3)
			printf("#   flip at %zu: ret %d\n", i, ret);
	}
	CHECK_EQ(bad, 0);
	/* Random multi-byte damage: never accepted, never a crash. */
	for (unsigned int round = 0; round < 300; round++) {
		uint8_t *c = malloc(len);
		int ret;

		memcpy(c, b, len);
		for (unsigned int k = 0; k < 1 + round % 8; k++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			c[x % len] = (uint8_t)(x >> 32);
		}
		ret = load_mem(c, len, &dst, L);
		if (ret >= 0 && memcmp(c, b, len) && bad++ < 3)
			printf("#   damage round %u accepted\n", round);
		free(c);
	}
	CHECK_EQ(bad, 0);
	/* A data-page flip is named as the RAM section's CRC mismatch. */
	{
		struct wsec s[16];
		unsigned int n = walk(b, len, s, 16);

		for (unsigned int i = 0; i < n; i++)
			if (s[i].type == STREAM_RAM) {
				b[s[i].payload + s[i].len - 1] ^= 0x10;
				CHECK_EQ(load_mem(b, len, &dst, L), -EBADMSG);
				CHECK(contains(L->err, "section 'ram' (ram, instance 0, offset 0x"));
				CHECK(contains(L->err, "crc mismatch"));
				b[s[i].payload + s[i].len - 1] ^= 0x10;
				break;
			}
	}
	free(b);
	free(L);
	guest_free(&src);
	guest_free(&dst);
}

TEST(stream_unknown_sections)
{
	struct guest src, dst;
	struct loaded *L = malloc(sizeof(*L));
	size_t len;
	uint8_t *b = sample_bytes(&src, 8, 4, SAMPLE_OPTIONAL, &len);

	/* An unknown optional section is skipped: never returned, still checked. */
	guest_alloc(&dst, 8, 4);
	CHECK_EQ(load_mem(b, len, &dst, L), 0);
	check_sample_loaded(L, &src, &dst, SAMPLE_OPTIONAL);
	for (unsigned int i = 0; i < L->n; i++)
		CHECK(L->recs[i].type != 0x70);
	free(b);
	guest_free(&src);
	guest_free(&dst);

	/* An unknown required one is refused, by name. */
	b = sample_bytes(&src, 8, 4, SAMPLE_REQUIRED, &len);
	guest_alloc(&dst, 8, 4);
	CHECK_EQ(load_mem(b, len, &dst, L), -EPROTONOSUPPORT);
	CHECK(contains(L->err, "section 'test-future-req' (unknown type 113"));
	CHECK(contains(L->err, "unknown required section"));
	free(b);
	guest_free(&src);
	guest_free(&dst);
	free(L);
}

TEST(stream_refuse_names_section)
{
	struct guest src;
	struct stream_reader *r;
	struct stream_section s;
	const struct stream_config *cfg;
	size_t len;
	uint8_t *b = sample_bytes(&src, 2, 1, 0, &len);
	int ret;

	CHECK_EQ(stream_reader_new_mem(b, len, &r), 0);
	CHECK_EQ(stream_read_header(r, &cfg), 0);
	while ((ret = stream_next_section(r, &s)) > 0)
		if (s.type == STREAM_DEVICE)
			break;
	CHECK_EQ(ret, 1);
	CHECK_STR(s.id, "test-uart");
	/* the caller does not know this device */
	CHECK_EQ(stream_refuse(r, -ENOENT, "no such device here"), -ENOENT);
	CHECK(contains(stream_reader_error(r), "section 'test-uart' (device, instance 0, offset 0x"));
	CHECK(contains(stream_reader_error(r), "): no such device here"));
	/* sticky */
	CHECK_EQ(stream_next_section(r, &s), -ENOENT);
	stream_reader_free(r);
	free(b);
	guest_free(&src);
}

/* The first RAM section's run table entry k, in a copy of the sample. */
static uint8_t *ram_run_at(uint8_t *b, size_t len, unsigned int k)
{
	struct wsec s[16];
	unsigned int n = walk(b, len, s, 16);

	for (unsigned int i = 0; i < n; i++)
		if (s[i].type == STREAM_RAM)
			return b + s[i].payload + 8 + 16 * k;
	return NULL;
}

TEST(stream_ram_runs_checked)
{
	struct guest src, dst;
	struct loaded *L = malloc(sizeof(*L));
	size_t len;
	uint8_t *b = sample_bytes(&src, 8, 4, 0, &len);
	uint8_t *c = malloc(len), *run;

	guest_alloc(&dst, 8, 4);
	/* runs: [0] A0 data, [1] A1 zero, [2] A2-3 data, ... */
	struct {
		unsigned int k;
		unsigned int field;   /* 0 gpa, 8 npages, 12 flags */
		uint64_t v;
		const char *msg;
	} cases[] = {
		{ 0, 0, 0x200000000ull, "run 0 (gpa 0x200000000, 1 pages) is outside the memory layout" },
		{ 0, 0, 0x9000, "outside the memory layout" },      /* A is 8 pages: 0x9000 is past it */
		{ 2, 0, 0x7000, "outside the memory layout" },      /* 2 pages from the last: straddles */
		{ 0, 0, GB_GPA - PAGE, "outside the memory layout" },
		{ 1, 0, 0x1001, "malformed" },
		{ 1, 8, 0, "malformed" },
		{ 1, 12, 0x3, "malformed" },
		{ 1, 8, 0xffffffffu, "outside the memory layout" },
		/* one more data page than sent, a zero run turned data: more than len holds */
		{ 0, 8, 2, "or the length holds" },
		{ 1, 12, 0, "or the length holds" },
		{ 7, 8, 1, "does not match its" },                  /* one data page fewer */
		{ 3, 8, 8, "outside the memory layout" },           /* A5 + 8 pages */
	};

	for (unsigned int i = 0; i < ARRAY_SIZE(cases); i++) {
		int ret;

		memcpy(c, b, len);
		run = ram_run_at(c, len, cases[i].k);
		CHECK(run != NULL);
		if (!run)
			break;
		put_le(run + cases[i].field, cases[i].v, cases[i].field ? 4 : 8);
		restamp(c, len);
		ret = load_mem(c, len, &dst, L);
		CHECK_EQ(ret, -EBADMSG);
		CHECK(contains(L->err, "section 'ram' (ram, instance 0"));
		if (!contains(L->err, cases[i].msg))
			printf("#   case %u: '%s'\n", i, L->err);
		CHECK(contains(L->err, cases[i].msg));
	}
	/* Runs are checked before any page is written: a bad last run leaves dst alone. */
	memcpy(c, b, len);
	{
		uint8_t *r0 = ram_run_at(c, len, 0);
		uint32_t nruns = (uint32_t)le(r0 - 8, 4);

		put_le(r0 + 16 * (nruns - 1), 0x200000000ull, 8);
		restamp(c, len);
		guest_free(&dst);
		guest_alloc(&dst, 8, 4);
		CHECK_EQ(load_mem(c, len, &dst, L), -EBADMSG);
		for (size_t i = 0; i < dst.size[0]; i++)
			if (dst.host[0][i]) {
				CHECK(!"a page was written before the run table was checked");
				break;
			}
	}
	/* Overlapping runs: more pages than the guest has (12) in one section. */
	memcpy(c, b, len);
	run = ram_run_at(c, len, 3);                 /* A5, zero, 1 page -> A0-7, zero */
	put_le(run, 0, 8);
	put_le(run + 8, 8, 4);
	restamp(c, len);
	CHECK_EQ(load_mem(c, len, &dst, L), -EBADMSG);
	CHECK(contains(L->err, "more than the guest has"));
	/* Padding and the run count. */
	memcpy(c, b, len);
	run = ram_run_at(c, len, 0);
	put_le(run - 4, le(run - 4, 4) + 1, 4);
	restamp(c, len);
	CHECK_EQ(load_mem(c, len, &dst, L), -EBADMSG);
	CHECK(contains(L->err, "padding"));
	memcpy(c, b, len);
	run = ram_run_at(c, len, 0);
	put_le(run - 8, 0x7fffffff, 4);
	restamp(c, len);
	CHECK_EQ(load_mem(c, len, &dst, L), -EBADMSG);
	CHECK(contains(L->err, "runs do not fit"));

	/* A destination that lacks region B: the lookup fails, by name. */
	guest_free(&dst);
	guest_alloc(&dst, 8, 0);
	CHECK_EQ(load_mem(b, len, &dst, L), -EBADMSG);
	CHECK(contains(L->err, "is not guest memory here"));
	CHECK(contains(L->err, "gpa 0x100000000"));
	free(c);
	free(b);
	free(L);
	guest_free(&src);
	guest_free(&dst);
}

TEST(stream_header_checked)
{
	struct guest src;
	struct loaded *L = malloc(sizeof(*L));
	size_t len;
	uint8_t *b = sample_bytes(&src, 2, 1, 0, &len);
	uint8_t *c = malloc(len);
	struct wsec s[16];

	memcpy(c, b, len);
	c[0] = 'X';
	CHECK_EQ(load_mem(c, len, NULL, L), -EBADMSG);
	CHECK_STR(L->err, "stream header: bad magic: not a godwit stream");
	/* a version from the future, with a correct preamble CRC */
	memcpy(c, b, len);
	put_le(c + 8, STREAM_FORMAT_VERSION + 1, 4);
	restamp(c, len);
	CHECK_EQ(load_mem(c, len, NULL, L), -EPROTONOSUPPORT);
	CHECK(contains(L->err, "stream header: format version 2 is newer"));
	put_le(c + 8, 0, 4);
	restamp(c, len);
	CHECK_EQ(load_mem(c, len, NULL, L), -EPROTONOSUPPORT);
	CHECK(contains(L->err, "format version 0 is older"));
	/* without the restamp: the CRC catches the change first */
	memcpy(c, b, len);
	put_le(c + 8, 7, 4);
	CHECK_EQ(load_mem(c, len, NULL, L), -EBADMSG);
	CHECK(contains(L->err, "stream header: crc mismatch"));
	/* the config section's version */
	memcpy(c, b, len);
	walk(c, len, s, 16);
	put_le(c + s[0].payload - 14, 9, 2);
	restamp(c, len);
	CHECK_EQ(load_mem(c, len, NULL, L), -EPROTONOSUPPORT);
	CHECK(contains(L->err, "section 'config' (config, instance 0, offset 0x14): version 9"));
	/* a config that is not one: vCPUs = 0 */
	memcpy(c, b, len);
	for (size_t o = s[0].payload; o + 6 <= s[0].payload + s[0].len; o += 6 + le(c + o + 2, 4))
		if (le(c + o, 2) == 4)        /* CFG_NCPUS */
			put_le(c + o + 6, 0, 4);
	restamp(c, len);
	CHECK_EQ(load_mem(c, len, NULL, L), -EBADMSG);
	CHECK(contains(L->err, "section 'config'"));
	CHECK(contains(L->err, "0 vCPUs"));
	/* the first section is not the config */
	memcpy(c, b, len);
	c[s[0].off] = STREAM_CPU;
	restamp(c, len);
	CHECK_EQ(load_mem(c, len, NULL, L), -EBADMSG);
	CHECK(contains(L->err, "the first section must be the configuration"));
	/* unknown flags on a section */
	memcpy(c, b, len);
	c[s[1].off + 1] |= 0x80;
	restamp(c, len);
	CHECK_EQ(load_mem(c, len, NULL, L), -EPROTONOSUPPORT);
	CHECK(contains(L->err, "unknown flags 0x80"));
	/* an id with a character outside the set */
	memcpy(c, b, len);
	c[s[1].off + 4] = '/';
	restamp(c, len);
	CHECK_EQ(load_mem(c, len, NULL, L), -EBADMSG);
	CHECK(contains(L->err, "the id is not"));
	/* an empty input, and garbage */
	CHECK_EQ(load_mem(b, 0, NULL, L), -EBADMSG);
	CHECK(contains(L->err, "stream header: truncated"));
	free(c);
	free(b);
	free(L);
	guest_free(&src);
}

TEST(stream_chain_catches_lost_and_reordered_sections)
{
	struct guest src;
	struct loaded *L = malloc(sizeof(*L));
	size_t len;
	/* no pass 2: a RAM section after the edits would fail its padding check first */
	uint8_t *b = sample_bytes(&src, 2, 1, SAMPLE_NO_PASS2, &len);
	uint8_t *c = malloc(2 * len);
	struct wsec s[16];
	unsigned int n = walk(b, len, s, 16), cpu0 = 0;
	size_t slen;

	for (unsigned int i = 0; i < n; i++)
		if (s[i].type == STREAM_CPU) {
			cpu0 = i;
			break;
		}
	CHECK(cpu0 > 0 && s[cpu0 + 1].type == STREAM_CPU);
	slen = s[cpu0 + 1].off - s[cpu0].off;
	/* Drop vCPU 0's section (each section's own CRC is still right). */
	memcpy(c, b, s[cpu0].off);
	memcpy(c + s[cpu0].off, b + s[cpu0 + 1].off, len - s[cpu0 + 1].off);
	CHECK_EQ(load_mem(c, len - slen, NULL, L), -EBADMSG);
	CHECK(contains(L->err, "section 'eof'"));
	CHECK(contains(L->err, "sections"));
	/* Repeat it. */
	memcpy(c, b, s[cpu0 + 1].off);
	memcpy(c + s[cpu0 + 1].off, b + s[cpu0].off, len - s[cpu0].off);
	CHECK_EQ(load_mem(c, len + slen, NULL, L), -EBADMSG);
	CHECK(contains(L->err, "section 'eof'"));
	/* Swap the two vCPU sections: each CRC, the count and the end offset still match. */
	{
		size_t l1 = s[cpu0 + 1].off - s[cpu0].off, l2 = s[cpu0 + 2].off - s[cpu0 + 1].off;

		memcpy(c, b, len);
		memcpy(c + s[cpu0].off, b + s[cpu0 + 1].off, l2);
		memcpy(c + s[cpu0].off + l2, b + s[cpu0].off, l1);
		CHECK_EQ(load_mem(c, len, NULL, L), -EBADMSG);
		CHECK(contains(L->err, "stream checksum mismatch"));
	}
	/* A second config section. */
	memcpy(c, b, len);
	c[s[cpu0].off] = STREAM_CONFIG;
	restamp(c, len);
	CHECK_EQ(load_mem(c, len, NULL, L), -EBADMSG);
	CHECK(contains(L->err, "a second configuration section"));
	/* Bytes after EOF are not read; a stream that stops before EOF is truncated. */
	CHECK_EQ(load_mem(b, s[n - 1].off, NULL, L), -EBADMSG);
	CHECK(contains(L->err, "truncated"));
	free(c);
	free(b);
	free(L);
	guest_free(&src);
}

TEST(stream_pipe_lengths_limited)
{
	/* A device section claiming 1 TiB, from a pipe: refused before reading it. */
	struct guest src;
	struct loaded *L = malloc(sizeof(*L));
	size_t len;
	uint8_t *b = sample_bytes(&src, 2, 1, 0, &len);
	struct wsec s[16];
	unsigned int n = walk(b, len, s, 16);
	struct stream_reader *r;
	int p[2];

	for (unsigned int i = 0; i < n; i++)
		if (s[i].type == STREAM_DEVICE) {
			put_le(b + s[i].payload - 8, 1ull << 40, 8);
			len = s[i].payload + 64;
			break;
		}
	restamp(b, len);
	CHECK_EQ(pipe(p), 0);
	CHECK_EQ(write(p[1], b, len), (ssize_t)len);
	close(p[1]);
	CHECK_EQ(stream_reader_new(p[0], &r), 0);
	CHECK_EQ(load_all(r, NULL, L), -EBADMSG);
	CHECK(contains(L->err, "section 'test-uart' (device"));
	CHECK(contains(L->err, "more than a device section may have"));
	stream_reader_free(r);
	close(p[0]);
	/* From memory the bytes left bound it. */
	CHECK_EQ(load_mem(b, len, NULL, L), -EBADMSG);
	CHECK(contains(L->err, "is more than the"));
	free(b);
	free(L);
	guest_free(&src);
}

/* ---- the writer's own checks ---------------------------------------------------- */

TEST(stream_writer_misuse)
{
	struct guest g;
	struct stream_config *c = malloc(sizeof(*c));
	struct stream_writer *w;
	int fd = memfd_create("w", 0);
	uint8_t page[PAGE] = { 1 };

	guest_alloc(&g, 4, 0);
	guest_config(&g, c);
	CHECK_EQ(stream_writer_new(fd, &w), 0);
	CHECK_EQ(stream_put_ram(w, page, 0, 1), -EINVAL);          /* before begin */
	CHECK(contains(stream_writer_error(w), "outside stream_begin"));
	CHECK_EQ(stream_begin(w, c), -EINVAL);                     /* sticky */
	stream_writer_free(w);

	struct {
		int what;
		const char *msg;
	} cases[] = {
		{ 0, "outside the configured memory" },
		{ 1, "outside the configured memory" },
		{ 2, "unaligned" },
		{ 3, "is not 1 to 64" },
		{ 4, "not allowed here" },
		{ 5, "not allowed here" },
		{ 6, "saving failed" },
		{ 7, "configuration: 0 vCPUs" },
		{ 8, "overlaps" },
	};
	for (unsigned int i = 0; i < ARRAY_SIZE(cases); i++) {
		struct state_out o;
		int ret;

		guest_config(&g, c);
		if (cases[i].what == 7)
			c->ncpus = 0;
		if (cases[i].what == 8)
			CHECK_EQ(stream_config_add_region(c, 0x2000, 0x1000), 0);
		CHECK_EQ(ftruncate(fd, 0), 0);
		CHECK_EQ(stream_writer_new(fd, &w), 0);
		ret = stream_begin(w, c);
		if (cases[i].what < 7)
			CHECK_EQ(ret, 0);
		state_out_init(&o);
		o.err = -ENOMEM;
		switch (cases[i].what) {
		case 0: ret = stream_put_ram(w, page, 4 * PAGE, 1); break;
		case 1: ret = stream_put_ram(w, page, 3 * PAGE, 2); break;
		case 2: ret = stream_put_ram(w, page, 100, 1); break;
		case 3: ret = stream_put_section(w, STREAM_CPU, 0, "a b", 1, 0, "", 0); break;
		case 4: ret = stream_put_section(w, STREAM_RAM, 0, "ram", 1, 0, "", 0); break;
		case 5: ret = stream_put_section(w, STREAM_CPU, 0x2, "cpu", 1, 0, "", 0); break;
		case 6: ret = stream_put_state(w, STREAM_DEVICE, "dev", 1, 0, &o); break;
		default: break;
		}
		CHECK(ret < 0);
		if (!contains(stream_writer_error(w), cases[i].msg))
			printf("#   case %u: '%s'\n", i, stream_writer_error(w));
		CHECK(contains(stream_writer_error(w), cases[i].msg));
		CHECK_EQ(stream_end(w), ret);                       /* sticky */
		stream_writer_free(w);
	}
	close(fd);
	free(c);
	guest_free(&g);
}

TEST(stream_writer_peer_gone)
{
	struct guest g;
	struct stream_writer *w;
	int sv[2];
	int ret;

	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	close(sv[1]);
	CHECK_EQ(stream_writer_new(sv[0], &w), 0);
	guest_alloc(&g, 2048, 0);                 /* 8 MiB: more than the buffer */
	ret = golden_v1_write(w, &g, 0);
	/* no SIGPIPE (sockets are written with MSG_NOSIGNAL), an error naming the write */
	CHECK_EQ(ret, -EPIPE);
	CHECK(contains(stream_writer_error(w), "write at stream offset 0: "));
	stream_writer_free(w);
	close(sv[0]);
	guest_free(&g);
}

/* ---- configuration and CPUID checks ---------------------------------------------- */

TEST(stream_config_compat_checks)
{
	struct guest g;
	struct stream_config *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
	char err[256];

	guest_alloc(&g, 4, 2);
	guest_config(&g, a);
	guest_config(&g, b);
	snprintf(b->name, sizeof(b->name), "other");   /* not compared */
	CHECK_EQ(stream_config_compat(a, b, err, sizeof(err)), 0);
	b->ncpus = 3;
	CHECK_EQ(stream_config_compat(a, b, err, sizeof(err)), -EINVAL);
	CHECK_STR(err, "vCPUs: 2 here, 3 in the stream");
	guest_config(&g, b);
	b->regions[1].size += PAGE;
	CHECK_EQ(stream_config_compat(a, b, err, sizeof(err)), -EINVAL);
	CHECK(contains(err, "memory region 1"));
	guest_config(&g, b);
	b->nr_regions = 1;
	CHECK_EQ(stream_config_compat(a, b, err, sizeof(err)), -EINVAL);
	CHECK(contains(err, "memory region 1: present here, absent in the stream"));
	guest_config(&g, b);
	snprintf(b->cpu_model, sizeof(b->cpu_model), "host");
	CHECK_EQ(stream_config_compat(a, b, err, sizeof(err)), -EINVAL);
	CHECK_STR(err, "CPU model: x86-64-v2 here, host in the stream");
	guest_config(&g, b);
	CHECK_EQ(stream_config_add_device(b, "virtio-net", 1, 1, "mac=52:54:00:00:00:01"), 0);
	CHECK_EQ(stream_config_compat(a, b, err, sizeof(err)), -EINVAL);
	CHECK_STR(err, "device virtio-net.1 is in the stream but not configured here");
	CHECK_EQ(stream_config_compat(b, a, err, sizeof(err)), -EINVAL);
	CHECK_STR(err, "device virtio-net.1 is configured here but not in the stream");
	guest_config(&g, b);
	snprintf(b->devices[1].options, sizeof(b->devices[1].options), "serial=disk1");
	CHECK_EQ(stream_config_compat(a, b, err, sizeof(err)), -EINVAL);
	CHECK(contains(err, "device test-blk.0: options"));
	/* device order does not matter */
	guest_config(&g, b);
	{
		struct stream_device t = b->devices[0];

		b->devices[0] = b->devices[1];
		b->devices[1] = t;
	}
	CHECK_EQ(stream_config_compat(a, b, err, sizeof(err)), 0);
	/* the helpers' own checks */
	CHECK_EQ(stream_config_add_region(b, 0x1001, PAGE), -EINVAL);
	CHECK_EQ(stream_config_add_device(b, "bad id", 0, 1, NULL), -EINVAL);
	CHECK_EQ(stream_config_add_device(b, "ok", 0, 1, "tab\there"), -EINVAL);
	free(a);
	free(b);
	guest_free(&g);
}

TEST(stream_cpuid_check_features)
{
	struct guest g;
	struct stream_config *c = malloc(sizeof(*c));
	struct kvm_cpuid2 *sup = calloc(1, sizeof(*sup) + 8 * sizeof(struct kvm_cpuid_entry2));
	char err[256];

	guest_alloc(&g, 1, 0);
	guest_config(&g, c);
	/* the host: the same leaves, with more features */
	sup->nent = 4;
	for (unsigned int i = 0; i < 4; i++) {
		uint32_t more = i ? 0x1000 : 0;      /* leaf 0 is the vendor: as is */

		sup->entries[i] = (struct kvm_cpuid_entry2){
			.function = c->cpuid[i].function, .index = c->cpuid[i].index,
			.flags = c->cpuid[i].flags, .eax = c->cpuid[i].eax,
			.ebx = c->cpuid[i].ebx | more, .ecx = c->cpuid[i].ecx | more,
			.edx = c->cpuid[i].edx | more,
		};
	}
	CHECK_EQ(stream_cpuid_check(c, sup, err, sizeof(err)), 0);
	/* a leaf-7 bit the host lacks */
	c->cpuid[2].ebx |= 1u << 5;                    /* AVX2 */
	CHECK_EQ(stream_cpuid_check(c, sup, err, sizeof(err)), -ENOTSUP);
	CHECK_STR(err, "CPUID leaf 0x7.0 ebx bit 5 is used by the guest but not offered by this host");
	c->cpuid[2].ebx &= ~(1u << 5);
	/* emulated bits do not count: hypervisor, x2APIC */
	c->cpuid[1].ecx |= 1u << 31 | 1u << 21;
	sup->entries[1].ecx &= ~(1u << 31 | 1u << 21);
	CHECK_EQ(stream_cpuid_check(c, sup, err, sizeof(err)), 0);
	/* a leaf the host does not have at all */
	sup->nent = 3;
	CHECK_EQ(stream_cpuid_check(c, sup, err, sizeof(err)), -ENOTSUP);
	CHECK(contains(err, "leaf 0x80000001.0 ecx bit 0"));
	sup->nent = 4;
	/* another vendor */
	sup->entries[0].ebx = 0x68747541;              /* "Auth" */
	sup->entries[0].edx = 0x69746e65;              /* "enti" */
	sup->entries[0].ecx = 0x444d4163;              /* "cAMD" */
	CHECK_EQ(stream_cpuid_check(c, sup, err, sizeof(err)), -ENOTSUP);
	CHECK_STR(err, "CPU vendor: AuthenticAMD here, GenuineIntel in the stream");
	/* set_cpuid takes the entries and the vendor from leaf 0 */
	CHECK_EQ(stream_config_set_cpuid(c, sup), 0);
	CHECK_EQ(c->nr_cpuid, 4);
	CHECK_STR(c->cpu_vendor, "AuthenticAMD");
	CHECK_EQ(c->cpuid[3].edx, sup->entries[3].edx);
	free(sup);
	free(c);
	guest_free(&g);
}

TEST(stream_config_from_vm_fields)
{
	static const struct dev_ops uart_ops = { .name = "serial", .version = 3, .min_version = 1,
						 .unmigratable = "test" };
	static const struct dev_ops blk_ops = { .name = "virtio-blk", .version = 1,
						.min_version = 1, .unmigratable = "test" };
	struct vm *vm = calloc(1, sizeof(*vm));
	struct stream_config *c = malloc(sizeof(*c));
	struct dev d1 = { .ops = &uart_ops, .instance = 0 }, d2 = { .ops = &blk_ops, .instance = 1 };
	char err[200];

	vm->cfg.ncpus = 3;
	snprintf(vm->cfg.name, sizeof(vm->cfg.name), "vm-a");
	vm->cfg.uuid[0] = 0x42;
	vm->cfg.cpu_model = CPU_MODEL_X86_64_V2;
	vm->tsc_khz = 1999000;
	vm->mem[0] = (struct mem_region){ .gpa = 0, .size = 3 * GiB };
	vm->mem[1] = (struct mem_region){ .gpa = 4 * GiB, .size = 1 * GiB };
	vm->nr_mem = 2;
	vm->cpuid = calloc(1, sizeof(*vm->cpuid) + 2 * sizeof(struct kvm_cpuid_entry2));
	vm->cpuid->nent = 2;
	vm->cpuid->entries[0] = (struct kvm_cpuid_entry2){ .function = 0, .eax = 0xd,
		.ebx = 0x756e6547, .edx = 0x49656e69, .ecx = 0x6c65746e };
	vm->cpuid->entries[1] = (struct kvm_cpuid_entry2){ .function = 7, .index = 0,
		.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX, .ebx = 0x9 };
	d1.next = &d2;
	vm->devices = &d1;
	CHECK_EQ(stream_config_from_vm(c, vm), 0);
	CHECK_EQ(c->ncpus, 3);
	CHECK_STR(c->name, "vm-a");
	CHECK_EQ(c->uuid[0], 0x42);
	CHECK_STR(c->cpu_model, "x86-64-v2");
	CHECK_EQ(c->tsc_khz, 1999000);
	CHECK_EQ(c->nr_regions, 2);
	CHECK_EQ(c->regions[1].gpa, 4 * GiB);
	CHECK_EQ(c->regions[0].size, 3 * GiB);
	CHECK_EQ(c->nr_cpuid, 2);
	CHECK_EQ(c->cpuid[1].flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
	CHECK_STR(c->cpu_vendor, "GenuineIntel");
	CHECK_EQ(c->nr_devices, 2);
	CHECK_STR(c->devices[1].type, "virtio-blk");
	CHECK_EQ(c->devices[1].instance, 1);
	CHECK_EQ(c->devices[0].version, 3);
	CHECK_STR(c->arch, "x86_64");
	/* a VM's own configuration is compatible with itself, and writable */
	CHECK_EQ(stream_config_compat(c, c, err, sizeof(err)), 0);
	{
		struct stream_writer *w;
		int fd = open("/dev/null", O_WRONLY);

		CHECK_EQ(stream_writer_new(fd, &w), 0);
		CHECK_EQ(stream_begin(w, c), 0);
		CHECK_EQ(stream_end(w), 0);
		stream_writer_free(w);
		close(fd);
	}
	free(vm->cpuid);
	free(vm);
	free(c);
}

/* ---- golden streams ---------------------------------------------------------------- */

#define GOLDEN_V1 "golden-0.1.0-dev.gws"

static const char *data_dir(void)
{
	static char dir[512];
	const char *root = getenv("GODWIT_ROOT");
	struct stat st;

	snprintf(dir, sizeof(dir), "%s/tests/data", root ? root : ".");
	if (!stat(dir, &st))
		return dir;
	/* __FILE__ is tests/unit/test_stream.c relative to the checkout */
	snprintf(dir, sizeof(dir), "%s", __FILE__);
	if (strstr(dir, "tests/unit/")) {
		strcpy(strstr(dir, "tests/unit/"), "tests/data");
		if (!stat(dir, &st))
			return dir;
	}
	return NULL;
}

static uint8_t *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY);
	struct stat st;
	uint8_t *b = NULL;

	if (fd >= 0 && !fstat(fd, &st) && (b = malloc((size_t)st.st_size + 1)) &&
	    pread(fd, b, (size_t)st.st_size, 0) == st.st_size) {
		*len = (size_t)st.st_size;
	} else {
		free(b);
		b = NULL;
	}
	if (fd >= 0)
		close(fd);
	return b;
}

/*
 * Every tests/data/ *.gws file must load, RAM and all, into memory laid out as
 * its configuration says: streams from every release stay readable.
 */
TEST(stream_golden_files_load)
{
	const char *dir = data_dir();
	struct loaded *L = malloc(sizeof(*L));
	struct dirent *de;
	unsigned int count = 0;
	DIR *d;

	CHECK(dir != NULL);
	if (!dir || !(d = opendir(dir)))
		return;
	while ((de = readdir(d))) {
		char path[1024];
		size_t len, nl = strlen(de->d_name);
		uint8_t *b;
		struct stream_reader *r;
		const struct stream_config *cfg;
		struct guest g = { 0 };
		int ret;

		if (nl < 5 || strcmp(de->d_name + nl - 4, ".gws"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		b = read_file(path, &len);
		CHECK(b != NULL);
		if (!b)
			continue;
		/* pass 1: the layout; pass 2: load into it */
		CHECK_EQ(stream_reader_new_mem(b, len, &r), 0);
		ret = stream_read_header(r, &cfg);
		CHECK_EQ(ret, 0);
		if (!ret && cfg->nr_regions <= 2) {
			g.n = cfg->nr_regions;
			for (unsigned int i = 0; i < g.n; i++) {
				g.gpa[i] = cfg->regions[i].gpa;
				g.size[i] = cfg->regions[i].size;
				g.host[i] = g.size[i] <= 64 * MiB ? calloc(1, g.size[i]) : NULL;
			}
		}
		stream_reader_free(r);
		ret = load_mem(b, len, g.n ? &g : NULL, L);
		if (ret)
			printf("#   %s: %s\n", de->d_name, L->err);
		CHECK_EQ(ret, 0);
		printf("# golden %s: %u sections, %llu pages\n", de->d_name, L->n,
		       (unsigned long long)L->ram.pages);
		for (unsigned int i = 0; i < 2; i++)
			free(g.host[i]);
		free(b);
		count++;
	}
	closedir(d);
	CHECK(count >= 1);
	free(L);
}

/*
 * The first golden stream, byte for byte what golden_v1_write() meant: its
 * configuration, payloads and final memory.  Set GODWIT_GOLDEN_OUT=FILE to
 * write a new one (tests/data/gen-golden.sh); it never overwrites a file.
 */
TEST(stream_golden_v1_content)
{
	const char *dir = data_dir(), *out = getenv("GODWIT_GOLDEN_OUT");
	struct loaded *L = malloc(sizeof(*L));
	struct guest src, dst;
	char path[1024];
	size_t len, glen;
	uint8_t *gen = sample_bytes(&src, 8, 4, SAMPLE_OPTIONAL, &glen), *b;

	if (out) {
		int fd = open(out, O_WRONLY | O_CREAT | O_EXCL, 0644);

		CHECK(fd >= 0);
		if (fd >= 0) {
			CHECK_EQ(write(fd, gen, glen), (ssize_t)glen);
			close(fd);
			printf("# wrote %s (%zu bytes)\n", out, glen);
		}
	}
	snprintf(path, sizeof(path), "%s/%s", dir ? dir : ".", GOLDEN_V1);
	b = read_file(path, &len);
	CHECK(b != NULL);
	guest_alloc(&dst, 8, 4);
	if (b) {
		CHECK_EQ(load_mem(b, len, &dst, L), 0);
		if (L->err[0])
			printf("#   %s\n", L->err);
		check_sample_loaded(L, &src, &dst, SAMPLE_OPTIONAL);
		CHECK_STR(L->cfg.writer, "godwit 0.1.0");
		if (len != glen || memcmp(b, gen, len))
			printf("# note: this writer no longer produces %s byte for byte "
			       "(allowed; it must still load)\n", GOLDEN_V1);
	}
	free(b);
	free(gen);
	free(L);
	guest_free(&src);
	guest_free(&dst);
}

/* ---- throughput -------------------------------------------------------------------- */

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/*
 * Not a timed assertion: prints MiB/s for writing a guest of mixed pages
 * (a quarter zero) to a file in /tmp and reading it back (which is
 * checked), e.g. "# stream write: 1800 MiB/s".
 */
TEST(stream_throughput)
{
#if defined(__SANITIZE_ADDRESS__)
	const uint64_t pages = (64 * MiB) / PAGE;
#else
	const uint64_t pages = (256 * MiB) / PAGE;
#endif
	struct guest src, dst;
	struct stream_config *c = malloc(sizeof(*c));
	struct stream_writer *w;
	struct stream_reader *r;
	struct loaded *L = malloc(sizeof(*L));
	char path[] = "/tmp/godwit-stream-bench-XXXXXX";
	int fd = mkstemp(path);
	double t0, tw, tr, tn;

	CHECK(fd >= 0);
	if (fd < 0)
		return;
	unlink(path);
	guest_alloc(&src, pages, 0);
	guest_alloc(&dst, pages, 0);
	CHECK(src.host[0] && dst.host[0]);
	for (uint64_t i = 0; i < pages; i++)
		if (i % 4 != 3)
			fill_page(src.host[0] + i * PAGE, i * PAGE, 1);
	guest_config(&src, c);
	CHECK_EQ(stream_writer_new(fd, &w), 0);
	t0 = now_s();
	CHECK_EQ(stream_begin(w, c), 0);
	CHECK_EQ(stream_put_ram(w, src.host[0], 0, pages), 0);
	CHECK_EQ(stream_end(w), 0);
	tw = now_s() - t0;
	stream_writer_free(w);
	/* the writer's own cost: the same to /dev/null */
	{
		int nfd = open("/dev/null", O_WRONLY);

		CHECK_EQ(stream_writer_new(nfd, &w), 0);
		t0 = now_s();
		CHECK_EQ(stream_begin(w, c), 0);
		CHECK_EQ(stream_put_ram(w, src.host[0], 0, pages), 0);
		CHECK_EQ(stream_end(w), 0);
		tn = now_s() - t0;
		stream_writer_free(w);
		close(nfd);
	}
	CHECK_EQ(lseek(fd, 0, SEEK_SET), 0);
	CHECK_EQ(stream_reader_new(fd, &r), 0);
	t0 = now_s();
	CHECK_EQ(load_all(r, &dst, L), 0);
	tr = now_s() - t0;
	stream_reader_free(r);
	CHECK(guest_equal(&src, &dst));
	printf("# stream write: %.0f MiB/s (%llu MiB guest, 1/4 zero pages, to a file in /tmp; "
	       "%.0f MiB/s to /dev/null)\n", (double)(pages * PAGE) / MiB / tw,
	       (unsigned long long)(pages * PAGE / MiB), (double)(pages * PAGE) / MiB / tn);
	printf("# stream read: %.0f MiB/s (into guest memory, CRCs checked)\n",
	       (double)(pages * PAGE) / MiB / tr);
	close(fd);
	free(c);
	free(L);
	guest_free(&src);
	guest_free(&dst);
}

/* ---- `godwit stream-dump` ----------------------------------------------------------- */

/* Run cmd_stream_dump(args) with stdout and stderr in a file; its text in out. */
static int run_dump(char **args, int n, char *out, size_t len)
{
	char path[] = "/tmp/godwit-dump-XXXXXX";
	int fd = mkstemp(path), o1, o2, ret;
	ssize_t k;

	if (fd < 0)
		return -1;
	unlink(path);
	fflush(stdout);
	fflush(stderr);
	o1 = dup(1);
	o2 = dup(2);
	dup2(fd, 1);
	dup2(fd, 2);
	ret = cmd_stream_dump(n, args);
	fflush(stdout);
	fflush(stderr);
	dup2(o1, 1);
	dup2(o2, 2);
	close(o1);
	close(o2);
	k = pread(fd, out, len - 1, 0);
	out[k > 0 ? k : 0] = '\0';
	close(fd);
	return ret;
}

TEST(stream_dump_command)
{
	struct guest src;
	size_t len;
	uint8_t *b = sample_bytes(&src, 8, 4, SAMPLE_OPTIONAL, &len);
	char path[] = "/tmp/godwit-dump-in-XXXXXX";
	int fd = mkstemp(path);
	static char out[65536];
	char *args[4];

	/* getopt permutes argv: set it before each run */
#define DUMP_ARGS(f, j) (args[0] = "stream-dump", args[1] = (f), args[2] = (j), args[3] = NULL)

	CHECK(fd >= 0);
	CHECK_EQ(write(fd, b, len), (ssize_t)len);
	DUMP_ARGS(path, NULL);
	CHECK_EQ(run_dump(args, 2, out, sizeof(out)), 0);
	CHECK(contains(out, "machine: x86_64, 2 vCPUs, 48 KiB in 2 regions, cpu model x86-64-v2"));
	CHECK(contains(out, "device test-blk.0 version 1 options serial=disk0,readonly=off"));
	CHECK(contains(out, "8 runs, 12 pages (3 zero)"));
	CHECK(contains(out, "test-future-opt"));
	CHECK(contains(out, "optional unknown type, skipped"));
	CHECK(contains(out, "9 sections, "));
	CHECK(contains(out, "every checksum matches"));
	DUMP_ARGS(path, "--json");
	CHECK_EQ(run_dump(args, 3, out, sizeof(out)), 0);
	CHECK(contains(out, "\"ok\": true"));
	CHECK(contains(out, "\"zero_pages\": 4"));
	/* one flipped byte in vCPU 1's payload: exit 1, the section named */
	{
		struct wsec s[16];
		unsigned int n = walk(b, len, s, 16);

		for (unsigned int i = 0; i + 1 < n; i++)
			if (s[i].type == STREAM_CPU) {
				b[s[i + 1].payload + 3] ^= 0x40;
				break;
			}
	}
	CHECK_EQ(pwrite(fd, b, len, 0), (ssize_t)len);
	DUMP_ARGS(path, NULL);
	CHECK_EQ(run_dump(args, 2, out, sizeof(out)), 1);
	CHECK(contains(out, "section 'test-cpu' (cpu, instance 1, offset 0x"));
	CHECK(contains(out, "crc mismatch"));
	DUMP_ARGS(path, "--json");
	CHECK_EQ(run_dump(args, 3, out, sizeof(out)), 1);
	CHECK(contains(out, "\"ok\": false"));
	/* trailing bytes, a missing file, usage */
	CHECK_EQ(ftruncate(fd, 0), 0);
	free(b);
	guest_free(&src);
	b = sample_bytes(&src, 8, 4, 0, &len);
	CHECK_EQ(pwrite(fd, b, len, 0), (ssize_t)len);
	CHECK_EQ(pwrite(fd, "junk", 4, len), 4);
	DUMP_ARGS(path, NULL);
	CHECK_EQ(run_dump(args, 2, out, sizeof(out)), 1);
	CHECK(contains(out, "4 bytes after the end of the stream"));
	DUMP_ARGS("/nonexistent/stream", NULL);
	CHECK_EQ(run_dump(args, 2, out, sizeof(out)), 1);
	CHECK(contains(out, "No such file or directory"));
	DUMP_ARGS(path, NULL);
	CHECK_EQ(run_dump(args, 1, out, sizeof(out)), 2);
#undef DUMP_ARGS
	close(fd);
	unlink(path);
	free(b);
	guest_free(&src);
}

/* ---- limits a migration peer cannot talk its way past ----------------------------- */

/* stream_begin with c: 0, or the error; the same config_check() the reader runs on CONFIG. */
static int begin_with(const struct stream_config *c, char *msg, size_t len)
{
	struct stream_writer *w;
	int fd = memfd_create("w", 0), ret;

	CHECK_EQ(stream_writer_new(fd, &w), 0);
	ret = stream_begin(w, c);
	snprintf(msg, len, "%s", stream_writer_error(w));
	stream_writer_free(w);
	close(fd);
	return ret;
}

TEST(stream_config_limits)
{
	struct guest g;
	struct stream_config *c = malloc(sizeof(*c));
	char msg[256];

	guest_alloc(&g, 4, 0);
	guest_config(&g, c);
	c->ncpus = 255;                                   /* godwit run --cpus' limit */
	CHECK_EQ(begin_with(c, msg, sizeof(msg)), 0);
	c->ncpus = 256;
	CHECK_EQ(begin_with(c, msg, sizeof(msg)), -EINVAL);
	CHECK(contains(msg, "256 vCPUs (1 to 255)"));
	c->ncpus = 2;
	/* Names: UTF-8 yes, anything else no. */
	snprintf(c->name, sizeof(c->name), "caf\xc3\xa9-\xe2\x82\xac");
	CHECK_EQ(begin_with(c, msg, sizeof(msg)), 0);
	snprintf(c->name, sizeof(c->name), "bad\xc3\x28");
	CHECK_EQ(begin_with(c, msg, sizeof(msg)), -EINVAL);
	CHECK(contains(msg, "control characters"));
	snprintf(c->name, sizeof(c->name), "golden");
	/* The same disk image twice. */
	c->nr_disks = 2;
	c->disks[0] = (struct stream_disk){ .instance = 1, .size = 1 << 20 };
	c->disks[1] = (struct stream_disk){ .instance = 1, .size = 1 << 20 };
	CHECK_EQ(begin_with(c, msg, sizeof(msg)), -EINVAL);
	CHECK(contains(msg, "disk 1 is listed twice"));
	c->disks[1].instance = 2;
	CHECK_EQ(begin_with(c, msg, sizeof(msg)), 0);
	free(c);
	guest_free(&g);
}

TEST(utf8_validation)
{
	CHECK(utf8_valid("plain", 5));
	CHECK(utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x90\xa6", 9));  /* é € 🐦 */
	CHECK(!utf8_valid("\xc3", 1));                 /* truncated */
	CHECK(!utf8_valid("\xc3\x28", 2));             /* bad continuation */
	CHECK(!utf8_valid("\x80", 1));                 /* lone continuation */
	CHECK(!utf8_valid("\xc0\xaf", 2));             /* overlong '/' */
	CHECK(!utf8_valid("\xe0\x80\xaf", 3));         /* overlong, 3 bytes */
	CHECK(!utf8_valid("\xed\xa0\x80", 3));         /* a surrogate */
	CHECK(!utf8_valid("\xf4\x90\x80\x80", 4));     /* beyond U+10FFFF */
	CHECK(!utf8_valid("\xff", 1));
}

/* A CPU section one byte over its cap (64 KiB) is refused before it is buffered. */
TEST(stream_section_caps)
{
	struct guest g;
	struct stream_config *c = malloc(sizeof(*c));
	struct stream_writer *w;
	struct loaded *L = malloc(sizeof(*L));
	static uint8_t big[(64 << 10) + 1];
	int fd = memfd_create("w", 0);
	off_t len;
	uint8_t *b;

	guest_alloc(&g, 4, 0);
	guest_config(&g, c);
	CHECK_EQ(stream_writer_new(fd, &w), 0);
	CHECK_EQ(stream_begin(w, c), 0);
	CHECK_EQ(stream_put_section(w, STREAM_CPU, 0, "cpu", 1, 0, big, sizeof(big)), 0);
	CHECK_EQ(stream_end(w), 0);
	stream_writer_free(w);
	len = lseek(fd, 0, SEEK_END);
	b = malloc((size_t)len);
	CHECK_EQ(pread(fd, b, (size_t)len, 0), (ssize_t)len);
	CHECK_EQ(load_mem(b, (size_t)len, &g, L), -EBADMSG);
	CHECK(contains(L->err, "more than a cpu section may have (65536)"));
	free(b);
	free(L);
	free(c);
	close(fd);
	guest_free(&g);
}

struct trickler {
	int fd;
	int bytes, gap_ms;
};

static void *trickle_thread(void *arg)
{
	struct trickler *t = arg;
	static const char pre[] = "GODWITSTREAM.....";

	for (int i = 0; i < t->bytes; i++) {
		if (send(t->fd, pre + (i % 16), 1, MSG_NOSIGNAL) != 1)
			break;
		usleep((useconds_t)t->gap_ms * 1000);
	}
	return NULL;
}

/* The watchdog: a peer that trickles fails the minimum rate; one that is slow, the deadline. */
TEST(stream_watchdog)
{
	const struct stream_config *cfg;
	struct stream_reader *r;
	struct trickler t;
	pthread_t th;
	int sv[2];

	/* 1 byte per 20 ms, 100 bytes wanted per 200 ms of waiting: too slow. */
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	t = (struct trickler){ .fd = sv[1], .bytes = 60, .gap_ms = 20 };
	pthread_create(&th, NULL, trickle_thread, &t);
	CHECK_EQ(stream_reader_new(sv[0], &r), 0);
	stream_reader_set_watchdog(r, &(struct stream_watchdog){ .min_bytes = 100,
								.window_ms = 200 });
	CHECK_EQ(stream_read_header(r, &cfg), -ETIMEDOUT);
	CHECK(contains(stream_reader_error(r), "too slow: the peer sent"));
	stream_reader_free(r);
	shutdown(sv[0], SHUT_RDWR);
	pthread_join(th, NULL);
	close(sv[0]);
	close(sv[1]);

	/* Fast enough for the rate, but the whole stream has 300 ms. */
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	t = (struct trickler){ .fd = sv[1], .bytes = 60, .gap_ms = 20 };
	pthread_create(&th, NULL, trickle_thread, &t);
	CHECK_EQ(stream_reader_new(sv[0], &r), 0);
	stream_reader_set_watchdog(r, &(struct stream_watchdog){ .deadline_ms = 300 });
	CHECK_EQ(stream_read_header(r, &cfg), -ETIMEDOUT);
	CHECK(contains(stream_reader_error(r), "longer than its deadline"));
	stream_reader_free(r);
	shutdown(sv[0], SHUT_RDWR);
	pthread_join(th, NULL);
	close(sv[0]);
	close(sv[1]);
}

/* ---- RAM v2: no CRC over page data, zstd ------------------------------------------ */

/*
 * With STREAM_SEED_DIR set, write b as fuzz seeds (tests/fuzz/corpus/stream:
 * mode byte 0, checksums on, and 1, ignored) named NAME-0 and NAME-1.
 */
static void fuzz_seed(const char *name, const uint8_t *b, size_t len)
{
	const char *dir = getenv("STREAM_SEED_DIR");

	for (unsigned int mode = 0; dir && mode < 2; mode++) {
		char path[512];
		uint8_t m = (uint8_t)mode;
		FILE *f;

		snprintf(path, sizeof(path), "%s/%s-%u", dir, name, mode);
		f = fopen(path, "w");
		CHECK(f != NULL);
		if (!f)
			return;
		CHECK_EQ(fwrite(&m, 1, 1, f), 1);
		CHECK_EQ(fwrite(b, 1, len, f), len);
		fclose(f);
	}
}

/* Is every RAM section of b (len bytes) of version v? */
static bool ram_versions(const uint8_t *b, size_t len, unsigned int v, unsigned int *count)
{
	struct wsec s[64];
	unsigned int n = walk(b, len, s, 64);
	bool all = true;

	*count = 0;
	for (unsigned int i = 0; i < n; i++)
		if (s[i].type == STREAM_RAM) {
			size_t idl = (size_t)le(b + s[i].off + 2, 2);

			all &= le(b + s[i].off + 4 + idl, 2) == v;
			(*count)++;
		}
	return all;
}

TEST(stream_ram_v2_round_trip)
{
	struct loaded *L = malloc(sizeof(*L));

	/* page CRC off; zstd on incompressible pages (sent as they are); both */
	for (unsigned int k = 0; k < 3; k++) {
		struct guest src, dst;
		unsigned int n;
		size_t len;
		uint8_t *b;

		sample_no_crc = k != 1;
		sample_compress = k ? STREAM_COMPRESS_ZSTD : STREAM_COMPRESS_OFF;
		if (!k) {                          /* a seed of the fuzzer's size (8 + 4 pages) */
			sample_no_crc = true;
			b = sample_bytes(&src, 8, 4, 0, &len);
			fuzz_seed("v2-nocrc-sample", b, len);
			free(b);
			guest_free(&src);
			sample_no_crc = true;
		}
		b = sample_bytes(&src, 512, 256, 0, &len);
		guest_alloc(&dst, 512, 256);
		CHECK(ram_versions(b, len, k == 1 ? 1 : 2, &n));
		CHECK(n >= 2);
		CHECK_EQ(load_mem(b, len, &dst, L), 0);
		if (L->err[0])
			printf("#   case %u: %s\n", k, L->err);
		check_sample_loaded(L, &src, &dst, 0);
		if (k != 1) {
			/* a flipped page byte is not the CRC's to catch any more; the run table still is */
			struct wsec ws[64];
			unsigned int ns = walk(b, len, ws, 64);

			for (unsigned int i = 0; i < ns; i++)
				if (ws[i].type == STREAM_RAM) {
					b[ws[i].payload + ws[i].len - 1] ^= 1;
					CHECK_EQ(load_mem(b, len, &dst, L), 0);
					b[ws[i].payload + ws[i].len - 1] ^= 1;
					b[ws[i].off + 9] ^= 1;      /* the instance: in the CRC */
					CHECK_EQ(load_mem(b, len, &dst, L), -EBADMSG);
					CHECK(contains(L->err, "crc mismatch"));
					b[ws[i].off + 9] ^= 1;
					break;
				}
		}
		free(b);
		guest_free(&src);
		guest_free(&dst);
	}
	free(L);
}

/* The same golden sample over a socket, page CRC off: pages go from guest memory (sendmsg). */
TEST(stream_ram_v2_socket_direct)
{
	for (unsigned int watched = 0; watched < 2; watched++) {
		struct guest src, dst, ref;
		struct loaded *L = malloc(sizeof(*L));
		struct stream_reader *r;
		struct pipe_job job;
		pthread_t t;
		int sv[2];
		size_t len;
		uint8_t *b;

		CHECK(L && !socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
		guest_alloc(&src, 4096, 256);      /* 16 MiB: many sends */
		guest_alloc(&dst, 4096, 256);
		job = (struct pipe_job){ .fd = sv[1], .g = &src, .no_crc = true, .watched = watched };
		CHECK_EQ(pthread_create(&t, NULL, pipe_writer, &job), 0);
		CHECK_EQ(stream_reader_new(sv[0], &r), 0);
		CHECK_EQ(load_all(r, &dst, L), 0);
		if (L->err[0])
			printf("#   %s\n", L->err);
		stream_reader_free(r);
		close(sv[0]);
		pthread_join(t, NULL);
		if (job.ret)
			printf("#   writer: %s\n", job.err);
		CHECK_EQ(job.ret, 0);
		check_sample_loaded(L, &src, &dst, 0);
		b = sample_bytes(&ref, 4096, 256, 0, &len);
		CHECK(guest_equal(&ref, &dst));
		free(b);
		free(L);
		guest_free(&ref);
		guest_free(&src);
		guest_free(&dst);
	}
}

/* Text-like pages (they compress), the same for a given gpa. */
static void fill_text(uint8_t *p, uint64_t gpa)
{
	static const char *words[] = { "godwit ", "migrates ", "memory ", "at ", "line ",
				       "rate, ", "page ", "after ", "page.\n" };
	uint64_t x = gpa * 0x9e3779b97f4a7c15ull + 7;

	for (size_t i = 0; i < PAGE;) {
		const char *wd;
		size_t n;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		wd = words[x % ARRAY_SIZE(words)];
		n = MIN(strlen(wd), PAGE - i);
		memcpy(p + i, wd, n);
		i += n;
	}
}

/*
 * A compressible guest (A: 24 pages, B: 16) written with zstd: A's first 16
 * pages (page 3 queued zero, then text: the later run must win), B whole.
 */
static uint8_t *zstd_sample(struct guest *g, bool no_crc, size_t *len,
			    struct stream_compress_stats *cs)
{
	struct stream_config *c = malloc(sizeof(*c));
	struct stream_writer *w;
	int fd = memfd_create("zstd", 0);
	struct stat st;
	uint8_t *b;

	guest_alloc(g, 24, 16);
	for (unsigned int i = 0; i < 16; i++)
		fill_text(g->host[0] + i * PAGE, i * PAGE);
	for (unsigned int i = 0; i < 16; i++)
		fill_text(g->host[1] + i * PAGE, GB_GPA + i * PAGE);
	memset(g->host[0] + 3 * PAGE, 0, PAGE);
	guest_config(g, c);
	if (fd < 0 || stream_writer_new(fd, &w))
		abort();
	stream_writer_set_page_crc(w, !no_crc);
	stream_writer_set_compress(w, STREAM_COMPRESS_ZSTD);
	CHECK_EQ(stream_begin(w, c), 0);
	CHECK_EQ(stream_put_ram(w, g->host[0], 0, 16), 0);
	fill_text(g->host[0] + 3 * PAGE, 3 * PAGE);
	CHECK_EQ(stream_put_ram(w, g->host[0] + 3 * PAGE, 3 * PAGE, 1), 0);
	CHECK_EQ(stream_put_ram(w, g->host[1], GB_GPA, 16), 0);
	CHECK_EQ(stream_end(w), 0);
	stream_writer_compress_stats(w, cs);
	stream_writer_free(w);
	free(c);
	if (fstat(fd, &st) || !(b = malloc((size_t)st.st_size)) ||
	    pread(fd, b, (size_t)st.st_size, 0) != st.st_size)
		abort();
	close(fd);
	*len = (size_t)st.st_size;
	return b;
}

/* The payload of the (only) RAM section of b. */
static struct wsec zstd_ram(const uint8_t *b, size_t len)
{
	struct wsec s[16], none = { 0 };
	unsigned int n = walk(b, len, s, 16);

	for (unsigned int i = 0; i < n; i++)
		if (s[i].type == STREAM_RAM)
			return s[i];
	return none;
}

/* A placer that copies and counts what it placed. */
static int count_place(void *opaque, uint64_t gpa, void *host, const void *src, size_t len)
{
	uint64_t *placed = opaque;

	if (len % PAGE || (gpa % PAGE))
		return -EINVAL;
	memcpy(host, src, len);
	*placed += len;
	return 0;
}

TEST(stream_ram_zstd_round_trip)
{
	for (unsigned int nc = 0; nc < 2; nc++) {
		struct stream_compress_stats cs;
		struct guest src, dst;
		struct loaded *L = malloc(sizeof(*L));
		struct stream_reader *r;
		unsigned int n;
		size_t len;
		uint8_t *b = zstd_sample(&src, nc, &len, &cs);

		fuzz_seed(nc ? "v2-zstd-nocrc" : "v2-zstd", b, len);
		CHECK(ram_versions(b, len, 2, &n));
		CHECK_EQ(n, 1);
		CHECK_EQ(cs.sections, 1);
		CHECK_EQ(cs.bytes_in, 32 * PAGE);
		CHECK(cs.bytes_out * 3 < cs.bytes_in);
		CHECK_EQ(le(b + zstd_ram(b, len).payload + 8, 4), 2u | (nc ? 1u : 0u));
		guest_alloc(&dst, 24, 16);
		memset(dst.host[0] + 20 * PAGE, 0x55, PAGE);      /* not sent: stays */
		CHECK_EQ(load_mem(b, len, &dst, L), 0);
		if (L->err[0])
			printf("#   %s\n", L->err);
		CHECK(!memcmp(dst.host[0], src.host[0], 16 * PAGE));
		CHECK(!memcmp(dst.host[1], src.host[1], 16 * PAGE));
		CHECK_EQ(dst.host[0][20 * PAGE], 0x55);
		CHECK_EQ(L->ram.pages, 33);
		CHECK_EQ(L->ram.zero_pages, 1);
		/* only checked (stream-dump): decoded into scratch */
		CHECK_EQ(load_mem(b, len, NULL, L), 0);
		/* from an fd, a byte at a time would be slow: a pipe of the whole */
		{
			int p[2];

			CHECK_EQ(pipe(p), 0);
			CHECK_EQ(fcntl(p[1], F_SETPIPE_SZ, 1 << 20) >= (int)len, 1);
			CHECK_EQ(write(p[1], b, len), (ssize_t)len);
			close(p[1]);
			CHECK_EQ(stream_reader_new(p[0], &r), 0);
			memset(dst.host[0], 0, 16 * PAGE);
			CHECK_EQ(load_all(r, &dst, L), 0);
			CHECK(!memcmp(dst.host[0], src.host[0], 16 * PAGE));
			stream_reader_free(r);
			close(p[0]);
		}
		/* through a placer (dest's uffd placement): every data page, once */
		{
			uint64_t placed = 0;
			uint8_t *c = malloc(len);

			memcpy(c, b, len);
			CHECK_EQ(stream_reader_new_mem(c, len, &r), 0);
			stream_reader_set_placer(r, count_place, &placed);
			memset(dst.host[0], 0, 16 * PAGE);
			memset(dst.host[1], 0, 16 * PAGE);
			CHECK_EQ(load_all(r, &dst, L), 0);
			CHECK_EQ(placed, 32 * PAGE);
			CHECK(!memcmp(dst.host[0], src.host[0], 16 * PAGE));
			CHECK(!memcmp(dst.host[1], src.host[1], 16 * PAGE));
			stream_reader_free(r);
			free(c);
		}
		free(b);
		free(L);
		guest_free(&src);
		guest_free(&dst);
	}
}

/* Replace b's bytes [at, at + n) by m bytes at p; returns the new buffer (b freed). */
static uint8_t *splice_bytes(uint8_t *b, size_t *len, size_t at, size_t n, const void *p,
			     size_t m)
{
	uint8_t *c = malloc(*len - n + m);

	memcpy(c, b, at);
	memcpy(c + at, p, m);
	memcpy(c + at + m, b + at + n, *len - at - n);
	*len = *len - n + m;
	free(b);
	return c;
}

TEST(stream_ram_zstd_refused)
{
	struct stream_compress_stats cs;
	struct guest src, dst;
	struct loaded *L = malloc(sizeof(*L));
	size_t len;
	uint8_t *b = zstd_sample(&src, false, &len, &cs), *c = malloc(len);
	struct wsec ram = zstd_ram(b, len);
	size_t hdr = ram.payload, runs = hdr + 16, frame = runs + 16 * le(b + hdr, 4);
	uint32_t zlen = (uint32_t)le(b + hdr + 12, 4);
	struct {
		size_t at;
		unsigned int n;
		uint64_t v;
		int err;
		const char *msg;
	} cases[] = {
		{ hdr + 8, 4, 0x2 | 0x4, -EPROTONOSUPPORT, "unknown RAM flags 0x4" },
		{ hdr + 8, 4, 0, -EBADMSG, "a compressed length" },
		{ hdr + 12, 4, 0, -EBADMSG, "a zstd frame of 0 bytes" },
		{ hdr + 12, 4, zlen - 1, -EBADMSG, "does not match its" },
		{ hdr + 12, 4, 32 * PAGE, -EBADMSG, "a zstd frame of 131072 bytes for 32 data pages" },
		{ hdr + 4, 4, 8, -EBADMSG, "padding" },
		/* run 0: A0-2, data: one page fewer -> the frame holds more; B (last) one more */
		{ runs + 8, 4, 2, -EBADMSG, "the zstd frame holds more than" },
		{ runs + 16 * 4 + 8, 4, 17, -EBADMSG, "outside the memory layout" },
		{ runs + 16 * 2 + 8, 4, 13, -EBADMSG, "the zstd frame holds 131072 bytes of the 135168" },
		{ frame, 4, 0x12345678, -EBADMSG, "bad zstd frame (Unknown frame descriptor)" },
		{ frame + zlen / 2, 4, 0xdeadbeef, -EBADMSG, "zstd frame" },
	};

	CHECK_EQ(le(b + runs + 12, 4), 0);
	CHECK_EQ(le(b + runs + 16 + 8, 4), 1);      /* run 1: A3, zero */
	guest_alloc(&dst, 24, 16);
	for (unsigned int i = 0; i < ARRAY_SIZE(cases); i++) {
		int ret;

		memcpy(c, b, len);
		put_le(c + cases[i].at, cases[i].v, cases[i].n);
		restamp(c, len);
		ret = load_mem(c, len, &dst, L);
		if (ret != cases[i].err || !contains(L->err, cases[i].msg))
			printf("#   case %u: %d '%s'\n", i, ret, L->err);
		CHECK_EQ(ret, cases[i].err);
		CHECK(contains(L->err, "section 'ram' (ram, instance 0"));
		CHECK(contains(L->err, cases[i].msg));
	}
	/* Bytes after the frame's end, inside zlen; a frame that needs a 128 MiB window. */
	{
		uint8_t *d = malloc(len);
		size_t dl = len;
		uint8_t junk[3] = { 0 };
		ZSTD_CCtx *cc = ZSTD_createCCtx();
		uint8_t *raw = malloc(32 * PAGE), *z = malloc(64 * PAGE);
		ZSTD_outBuffer out = { z, 64 * PAGE, 0 };
		ZSTD_inBuffer in;

		memcpy(d, b, len);
		d = splice_bytes(d, &dl, frame + zlen, 0, junk, sizeof(junk));
		put_le(d + hdr + 12, zlen + 3, 4);
		put_le(d + ram.off + 13, ram.len + 3, 8);     /* the section length ("ram": idl 3) */
		restamp(d, dl);
		CHECK_EQ(load_mem(d, dl, &dst, L), -EBADMSG);
		CHECK(contains(L->err, "the zstd frame ends before its length (3 of its"));

		memcpy(raw, src.host[0], 3 * PAGE);
		memcpy(raw + 3 * PAGE, src.host[0] + 4 * PAGE, 12 * PAGE);
		memcpy(raw + 15 * PAGE, src.host[0] + 3 * PAGE, PAGE);
		memcpy(raw + 16 * PAGE, src.host[1], 16 * PAGE);
		ZSTD_CCtx_setParameter(cc, ZSTD_c_windowLog, 27);
		in = (ZSTD_inBuffer){ raw, 32 * PAGE, 0 };
		CHECK(!ZSTD_isError(ZSTD_compressStream2(cc, &out, &in, ZSTD_e_continue)));
		in = (ZSTD_inBuffer){ NULL, 0, 0 };
		CHECK_EQ(ZSTD_compressStream2(cc, &out, &in, ZSTD_e_end), 0);
		memcpy(d, b, len);
		dl = len;
		d = splice_bytes(d, &dl, frame, zlen, z, out.pos);
		put_le(d + hdr + 12, out.pos, 4);
		put_le(d + ram.off + 13, ram.len - zlen + out.pos, 8);
		restamp(d, dl);
		CHECK_EQ(load_mem(d, dl, &dst, L), -EBADMSG);
		if (!contains(L->err, "too much memory"))
			printf("#   %s\n", L->err);
		CHECK(contains(L->err, "bad zstd frame (Frame requires too much memory"));
		ZSTD_freeCCtx(cc);
		free(raw);
		free(z);
		free(d);
	}
	free(c);
	free(b);
	free(L);
	guest_free(&src);
	guest_free(&dst);
}

TEST(stream_compress_names)
{
	enum stream_compress m;

	CHECK_EQ(stream_compress_parse("auto", &m), 0);
	CHECK_EQ(m, STREAM_COMPRESS_AUTO);
	CHECK_EQ(stream_compress_parse("zstd", &m), 0);
	CHECK_EQ(m, STREAM_COMPRESS_ZSTD);
	CHECK_EQ(stream_compress_parse("off", &m), 0);
	CHECK_EQ(m, STREAM_COMPRESS_OFF);
	CHECK_EQ(stream_compress_parse("lz4", &m), -EINVAL);
	CHECK_EQ(stream_compress_parse(NULL, &m), -EINVAL);
	CHECK_STR(stream_compress_name(STREAM_COMPRESS_AUTO), "auto");
}

/* ---- the file sink (stream_writer_to_file): the same bytes as a plain writer ---------- */

/* A stream flushed at unaligned offsets (the file sink carries the tails over). */
static int flushy_write(struct stream_writer *w, struct guest *g)
{
	struct stream_config *c = malloc(sizeof(*c));
	int ret;

	if (!c)
		return -ENOMEM;
	guest_config(g, c);
	ret = stream_begin(w, c);
	free(c);
	for (uint64_t i = 0; i < g->size[0] / PAGE; i++)
		fill_page(g->host[0] + i * PAGE, g->gpa[0] + i * PAGE, (unsigned int)i % 3);
	if (!ret)
		ret = stream_put_ram(w, g->host[0], g->gpa[0], 3);
	if (!ret)
		ret = stream_flush(w);
	if (!ret)
		ret = stream_put_section(w, STREAM_DEVICE, 0, "flushy", 1, 0, "abc", 3);
	if (!ret)
		ret = stream_flush(w);
	if (!ret)
		ret = stream_flush(w);          /* nothing new: nothing written */
	if (!ret)
		ret = stream_put_ram(w, g->host[0] + 3 * PAGE, g->gpa[0] + 3 * PAGE,
				     g->size[0] / PAGE - 3);
	if (!ret)
		ret = stream_put_section(w, STREAM_DEVICE, 0, "flushy", 1, 1, "de", 2);
	if (!ret)
		ret = stream_flush(w);
	if (!ret)
		ret = stream_put_ram(w, g->host[1], g->gpa[1], g->size[1] / PAGE);
	return ret ? ret : stream_end(w);
}

static uint8_t *file_bytes(int fd, size_t *len)
{
	struct stat st;
	uint8_t *b;

	if (fstat(fd, &st) || !(b = malloc((size_t)st.st_size + 1)) ||
	    pread(fd, b, (size_t)st.st_size, 0) != st.st_size)
		abort();
	*len = (size_t)st.st_size;
	return b;
}

/* fd's filesystem takes O_DIRECT (probed on a second descriptor of the same file). */
static bool odirect_ok(int fd)
{
	char p[64];
	int f;

	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	f = open(p, O_WRONLY | O_DIRECT);
	if (f < 0)
		return false;
	close(f);
	return true;
}

TEST(stream_file_sink_same_bytes)
{
	for (unsigned int mode = 0; mode < 4; mode++) {
		bool direct = mode & 1, flushy = mode & 2;
		struct guest g1, g2;
		struct stream_writer *w;
		char path[] = "/tmp/godwit-sink-XXXXXX";
		int mfd = memfd_create("plain", 0), fd = mkstemp(path);
		uint8_t *a, *b;
		size_t la, lb;

		CHECK(mfd >= 0 && fd >= 0);
		if (mfd < 0 || fd < 0)
			return;
		unlink(path);
		/* 2600 + 300 pages: more than two 4 MiB buffers */
		guest_alloc(&g1, 2600, 300);
		guest_alloc(&g2, 2600, 300);
		CHECK_EQ(stream_writer_new(mfd, &w), 0);
		CHECK_EQ(flushy ? flushy_write(w, &g1) : golden_v1_write(w, &g1, 0), 0);
		stream_writer_free(w);
		CHECK_EQ(stream_writer_new(fd, &w), 0);
		CHECK_EQ(stream_writer_to_file(w, direct), 0);
		/* direct wherever the filesystem takes O_DIRECT (ext4, xfs, tmpfs since 6.6) */
		CHECK_EQ(stream_writer_direct(w), direct && odirect_ok(fd));
		CHECK_EQ(flushy ? flushy_write(w, &g2) : golden_v1_write(w, &g2, 0), 0);
		/* the descriptor's offset at the end, as after write()s */
		CHECK_EQ(stream_writer_offset(w), (uint64_t)lseek(fd, 0, SEEK_CUR));
		CHECK_EQ(stream_writer_offset(w), (uint64_t)lseek(fd, 0, SEEK_END));
		stream_writer_free(w);
		a = file_bytes(mfd, &la);
		b = file_bytes(fd, &lb);
		CHECK_EQ(la, lb);
		CHECK(la == lb && !memcmp(a, b, la));
		free(a);
		free(b);
		close(mfd);
		close(fd);
		guest_free(&g1);
		guest_free(&g2);
	}
}

TEST(stream_file_sink_refuses_non_files)
{
	struct stream_writer *w;
	int p[2];

	CHECK_EQ(pipe(p), 0);
	CHECK_EQ(stream_writer_new(p[1], &w), 0);
	CHECK_EQ(stream_writer_to_file(w, true), -EINVAL);
	stream_writer_free(w);
	close(p[0]);
	close(p[1]);
}

/* ---- the socket send paths, measured (figures only: the machine is shared) ----------- */

struct sink_job {
	int fd;
	struct guest *g;
	int ret;
	double cpu_s;          /* the reader thread's CPU time */
};

static double thread_cpu_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *sink_reader(void *arg)
{
	struct sink_job *j = arg;
	struct stream_reader *r;
	struct loaded *L = malloc(sizeof(*L));
	double c0 = thread_cpu_s();

	j->ret = stream_reader_new(j->fd, &r);
	if (!j->ret) {
		j->ret = load_all(r, j->g, L);
		if (j->ret)
			printf("#   reader: %s\n", L->err);
		stream_reader_free(r);
	}
	j->cpu_s = thread_cpu_s() - c0;
	free(L);
	return NULL;
}

/*
 * The same guest (random pages) over loopback TCP four ways: RAM v1 (page CRC,
 * copied), v2 copied into the buffer, v2 sent from guest memory (sendmsg), v2
 * with MSG_ZEROCOPY; wall rate and each side's CPU time per GiB.  Every run's
 * memory must arrive whole.
 */
TEST(stream_send_paths)
{
#if defined(__SANITIZE_ADDRESS__)
	const uint64_t pages = (32 * MiB) / PAGE;
#else
	const uint64_t pages = (128 * MiB) / PAGE;
#endif
	static const struct { const char *name, *send; bool crc, zstd, text; } how[] = {
		{ "v1 page CRC, copy", "copy", true, false, false },
		{ "v2 no page CRC, copy", "copy", false, false, false },
		{ "v2 sendmsg from guest memory", "direct", false, false, false },
		{ "v2 MSG_ZEROCOPY", "zerocopy", false, false, false },
		{ "v2 zstd, random pages", "direct", false, true, false },
		{ "v2 zstd, text pages", "direct", false, true, true },
	};
	struct stream_config *c = malloc(sizeof(*c));
	struct guest src, dst;

	guest_alloc(&src, pages, 0);
	guest_alloc(&dst, pages, 0);
	for (uint64_t i = 0; i < pages; i++)
		fill_page(src.host[0] + i * PAGE, i * PAGE, 1);
	guest_config(&src, c);
	for (unsigned int k = 0; k < ARRAY_SIZE(how); k++) {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t al = sizeof(a);
		int l = socket(AF_INET, SOCK_STREAM, 0), s = socket(AF_INET, SOCK_STREAM, 0), d;
		struct sink_job job;
		struct stream_writer *w;
		struct stream_compress_stats zs;
		double t0, c0, tw, cw;
		pthread_t t;

		if (how[k].text && !how[k - 1].text)
			for (uint64_t i = 0; i < pages; i++)
				fill_text(src.host[0] + i * PAGE, i * PAGE);

		CHECK(l >= 0 && s >= 0);
		CHECK_EQ(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
		CHECK_EQ(listen(l, 1), 0);
		CHECK_EQ(getsockname(l, (struct sockaddr *)&a, &al), 0);
		CHECK_EQ(connect(s, (struct sockaddr *)&a, sizeof(a)), 0);
		d = accept(l, NULL, NULL);
		CHECK(d >= 0);
		close(l);
		memset(dst.host[0], 0, pages * PAGE);
		job = (struct sink_job){ .fd = d, .g = &dst };
		setenv("GODWIT_SEND", how[k].send, 1);
		CHECK_EQ(stream_writer_new(s, &w), 0);
		unsetenv("GODWIT_SEND");
		stream_writer_set_page_crc(w, how[k].crc);
		stream_writer_set_compress(w, how[k].zstd ? STREAM_COMPRESS_ZSTD : STREAM_COMPRESS_OFF);
		CHECK_EQ(pthread_create(&t, NULL, sink_reader, &job), 0);
		t0 = now_s();
		c0 = thread_cpu_s();
		CHECK_EQ(stream_begin(w, c), 0);
		CHECK_EQ(stream_put_ram(w, src.host[0], 0, pages), 0);
		CHECK_EQ(stream_end(w), 0);
		cw = thread_cpu_s() - c0;
		stream_writer_compress_stats(w, &zs);
		stream_writer_free(w);     /* reaps MSG_ZEROCOPY completions */
		close(s);
		pthread_join(t, NULL);
		tw = now_s() - t0;
		close(d);
		CHECK_EQ(job.ret, 0);
		CHECK(guest_equal(&src, &dst));
		printf("# %-30s %6.0f MiB/s; CPU per GiB: writer %4.0f ms, reader %4.0f ms",
		       how[k].name, (double)(pages * PAGE) / MiB / tw,
		       cw * 1000 * GiB / (double)(pages * PAGE), job.cpu_s * 1000 * GiB / (double)(pages * PAGE));
		if (how[k].zstd)
			printf("; ratio %.2f", zs.bytes_out ? (double)zs.bytes_in / (double)zs.bytes_out : 1.0);
		printf("\n");
	}
	free(c);
	guest_free(&src);
	guest_free(&dst);
}

bool stream_page_is_zero(const uint8_t *p);

/* The check as it was before issue 15 (64 bytes a step), for the figures beside it. */
static bool zero_check_old(const uint8_t *p)
{
	for (size_t i = 0; i < PAGE; i += 64) {
		uint64_t w[8];

		memcpy(w, p + i, sizeof(w));
		if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
			return false;
	}
	return true;
}

/*
 * stream_page_is_zero on zero pages and on pages whose only non-zero byte is
 * first, in the middle or last, in cache (64 pages) and not (4096 pages,
 * 16 MiB): the best of 5 runs, beside the old check.  Every byte counts.
 */
TEST(stream_zero_check_speed)
{
	const unsigned int big = 4096;
	uint8_t *b = aligned_alloc(PAGE, (size_t)big * PAGE);
	const char *kinds[] = { "zero", "non-zero at byte 0", "non-zero at byte 2048",
				"non-zero at byte 4095" };
	const size_t at[] = { 0, 0, 2048, PAGE - 1 };

	CHECK(b != NULL);
	for (unsigned int k = 0; k < 4; k++)
		for (unsigned int n = 64; n <= big; n *= 64) {
			double best[2] = { 1e9, 1e9 };
			unsigned int reps = big * 4 / n;

			memset(b, 0, (size_t)n * PAGE);
			for (unsigned int i = 0; k && i < n; i++)
				b[(size_t)i * PAGE + at[k]] = 1;
			for (unsigned int run = 0; run < 10; run++) {
				bool (*f)(const uint8_t *) = run % 2 ? zero_check_old : stream_page_is_zero;
				unsigned int found = 0;
				double t0 = now_s(), ns;

				for (unsigned int r = 0; r < reps; r++)
					for (unsigned int i = 0; i < n; i++)
						found += f(b + (size_t)i * PAGE);
				ns = (now_s() - t0) * 1e9 / ((double)n * reps);
				best[run % 2] = MIN(best[run % 2], ns);
				CHECK_EQ(found, k ? 0 : n * reps);
			}
			printf("# zero-page check, %s, %u pages: %.1f ns/page (before: %.1f)\n",
			       kinds[k], n, best[0], best[1]);
		}
	memset(b, 0, PAGE);
	for (unsigned int o = 0; o < PAGE; o++) {
		b[o] = 0x80;
		CHECK(!stream_page_is_zero(b));
		b[o] = 0;
	}
	CHECK(stream_page_is_zero(b));
	free(b);
}

/* A reader that takes about rate bytes/s (sleeping between 256 KiB reads), discarding. */
struct slow_job {
	int fd;
	uint64_t rate, got;
};

static void *slow_reader(void *arg)
{
	struct slow_job *j = arg;
	static uint8_t buf[256 << 10];
	ssize_t n;

	while ((n = read(j->fd, buf, sizeof(buf))) > 0) {
		struct timespec ts = { 0, (long)((uint64_t)n * 1000000000ull / j->rate) };

		j->got += (uint64_t)n;
		nanosleep(&ts, NULL);
	}
	return NULL;
}

/*
 * --compress auto's decisions, on a socket drained at ~32 MiB/s (the link is
 * the bottleneck): text-like pages switch compression on; random pages that
 * follow switch it off again (the ratio falls under 1.3); random pages alone
 * never switch it on (the sample does not compress).
 */
TEST(stream_compress_auto_decides)
{
	const uint64_t pages = (48 * MiB) / PAGE;
	struct stream_config *c = malloc(sizeof(*c));
	struct guest src;

	guest_alloc(&src, pages, 0);
	guest_config(&src, c);
	for (unsigned int k = 0; k < 2; k++) {
		struct slow_job job = { .rate = 32 * MiB };
		struct stream_compress_stats zs;
		struct stream_writer *w;
		pthread_t t;
		int sv[2];

		for (uint64_t i = 0; i < pages; i++) {
			if (!k && i < pages / 2)
				fill_text(src.host[0] + i * PAGE, i * PAGE);
			else
				fill_page(src.host[0] + i * PAGE, i * PAGE, 1);
		}
		CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
		job.fd = sv[0];
		CHECK_EQ(pthread_create(&t, NULL, slow_reader, &job), 0);
		CHECK_EQ(stream_writer_new(sv[1], &w), 0);
		stream_writer_set_page_crc(w, false);
		stream_writer_set_compress(w, STREAM_COMPRESS_AUTO);
		CHECK_EQ(stream_begin(w, c), 0);
		CHECK_EQ(stream_put_ram(w, src.host[0], 0, pages), 0);
		CHECK_EQ(stream_end(w), 0);
		stream_writer_compress_stats(w, &zs);
		stream_writer_free(w);
		close(sv[1]);
		pthread_join(t, NULL);
		close(sv[0]);
		printf("# auto, %s: %llu sections compressed, %.1f -> %.1f MiB, %llu switches, "
		       "%.1f MiB sent\n", k ? "random" : "text then random",
		       (unsigned long long)zs.sections, (double)zs.bytes_in / MiB,
		       (double)zs.bytes_out / MiB, (unsigned long long)zs.switches,
		       (double)job.got / MiB);
		if (!k) {
			CHECK(zs.sections > 0);
			CHECK(zs.bytes_out * 2 < zs.bytes_in);
			CHECK(zs.switches >= 2);
			CHECK(!zs.active);
		} else {
			CHECK_EQ(zs.sections, 0);
			CHECK_EQ(zs.switches, 0);
		}
	}
	free(c);
	guest_free(&src);
}
