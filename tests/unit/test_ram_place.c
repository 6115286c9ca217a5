/*
 * test_ram_place.c - the stream reader's placement hook and the first-pass
 * placer over userfaultfd (stream_reader.c, ram_place.c).
 *
 * A stream with zero and data pages in two regions, the same pages sent
 * twice, is read (from a file, so the reader's window is exercised, and
 * from memory) through a recording placer: every data byte goes through
 * it, in whole pages, at most 256 KiB a call, at the lookup's address.
 * Then through the real placer into fresh mmap'd memory registered with
 * userfaultfd, with one page touched beforehand: the memory must equal
 * the source, pages sent twice and the touched one copied over, and a
 * page nothing placed reads as zero through the fault thread before the
 * placer stops (a fault nobody answered would hang here).  A range no longer
 * registered is copied plainly; one outside the regions is refused.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

#include "unit.h"
#include "godwit/postcopy.h"
#include "godwit/ram_place.h"
#include "godwit/stream.h"

#define PG      4096u
#define B_GPA   0x100000000ull
#define A_PAGES 300u               /* 1.2 MiB: more than the reader's window */
#define B_PAGES 40u

struct mem {
	uint8_t *host[2];
	uint64_t gpa[2], size[2];
	bool mapped;
};

static void mem_init(struct mem *m, bool mapped)
{
	m->gpa[0] = 0;
	m->size[0] = (uint64_t)A_PAGES * PG;
	m->gpa[1] = B_GPA;
	m->size[1] = (uint64_t)B_PAGES * PG;
	m->mapped = mapped;
	for (int i = 0; i < 2; i++) {
		if (mapped) {
			m->host[i] = mmap(NULL, m->size[i], PROT_READ | PROT_WRITE,
					  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (m->host[i] == MAP_FAILED)
				abort();
		} else {
			m->host[i] = aligned_alloc(PG, m->size[i]);
			if (!m->host[i])
				abort();
			memset(m->host[i], 0, m->size[i]);
		}
	}
}

static void mem_fini(struct mem *m)
{
	for (int i = 0; i < 2; i++) {
		if (m->mapped)
			munmap(m->host[i], m->size[i]);
		else
			free(m->host[i]);
	}
}

static void *mem_lookup(void *opaque, uint64_t gpa, uint64_t len)
{
	struct mem *m = opaque;

	for (int i = 0; i < 2; i++)
		if (gpa >= m->gpa[i] && gpa - m->gpa[i] < m->size[i] &&
		    len <= m->size[i] - (gpa - m->gpa[i]))
			return m->host[i] + (gpa - m->gpa[i]);
	return NULL;
}

/* Every 3rd page zero, the others a pattern of (page, pass). */
static void fill(struct mem *m, unsigned int pass)
{
	for (int i = 0; i < 2; i++)
		for (uint64_t p = 0; p < m->size[i] / PG; p++) {
			uint8_t *d = m->host[i] + p * PG;

			if (p % 3 == 1) {
				memset(d, 0, PG);
				continue;
			}
			for (unsigned int k = 0; k < PG; k++)
				d[k] = (uint8_t)(p * 7 + k + pass * 31 + i);
		}
}

static void config(const struct mem *m, struct stream_config *c)
{
	stream_config_init(c);
	c->ncpus = 1;
	snprintf(c->name, sizeof(c->name), "place");
	snprintf(c->cpu_model, sizeof(c->cpu_model), "x86-64-v2");
	snprintf(c->cpu_vendor, sizeof(c->cpu_vendor), "GenuineIntel");
	c->tsc_khz = 2400000;
	for (int i = 0; i < 2; i++)
		if (stream_config_add_region(c, m->gpa[i], m->size[i]))
			abort();
}

/*
 * The stream: pass 1 of both regions, then pass 2 (pages 2, 3, 5 of A and 0
 * of B changed: sent twice) - all of it "first pass" to the reader.
 */
static uint8_t *make_stream(struct mem *src, size_t *len)
{
	struct stream_config *c = malloc(sizeof(*c));
	struct stream_writer *w;
	int fd = memfd_create("place", 0);
	uint8_t *b;
	off_t n;

	if (!c || fd < 0)
		abort();
	fill(src, 1);
	config(src, c);
	if (stream_writer_new(fd, &w) || stream_begin(w, c))
		abort();
	for (int i = 0; i < 2; i++)
		if (stream_put_ram(w, src->host[i], src->gpa[i], src->size[i] / PG))
			abort();
	memset(src->host[0] + 2 * PG, 0xa5, 2 * PG);
	memset(src->host[0] + 5 * PG, 0x5a, PG);
	memset(src->host[1], 0x3c, PG);
	if (stream_put_ram(w, src->host[0] + 2 * PG, src->gpa[0] + 2 * PG, 4) ||
	    stream_put_ram(w, src->host[1], src->gpa[1], 1) || stream_end(w))
		abort();
	stream_writer_free(w);
	n = lseek(fd, 0, SEEK_END);
	b = malloc((size_t)n);
	if (!b || pread(fd, b, (size_t)n, 0) != n)
		abort();
	close(fd);
	free(c);
	*len = (size_t)n;
	return b;
}

struct rec_placer {
	struct mem *m;
	uint64_t calls, bytes, bad;
};

static int rec_place(void *opaque, uint64_t gpa, void *host, const void *src, size_t len)
{
	struct rec_placer *rp = opaque;

	rp->calls++;
	rp->bytes += len;
	if (!len || len % PG || len > 256u * 1024 || host != mem_lookup(rp->m, gpa, len))
		rp->bad++;
	else
		memcpy(host, src, len);
	return 0;
}

static int read_all(struct stream_reader *r, struct mem *dst, stream_place_fn fn, void *opaque,
		    struct stream_ram_stats *st)
{
	const struct stream_config *cfg;
	struct stream_section s;
	int ret;

	memset(st, 0, sizeof(*st));
	stream_reader_target_zeroed(r);
	stream_reader_set_placer(r, fn, opaque);
	ret = stream_read_header(r, &cfg);
	while (!ret && (ret = stream_next_section(r, &s)) > 0)
		ret = s.type == STREAM_RAM ? stream_read_ram(r, mem_lookup, dst, st) :
		      stream_skip(r);
	if (ret)
		printf("#   %s\n", stream_reader_error(r));
	return ret;
}

static bool mem_equal(const struct mem *a, const struct mem *b)
{
	return !memcmp(a->host[0], b->host[0], a->size[0]) &&
	       !memcmp(a->host[1], b->host[1], a->size[1]);
}

TEST(ram_place_reader_hook)
{
	struct mem src, dst;
	size_t len;
	uint8_t *b;
	char path[] = "/tmp/godwit-place-XXXXXX";
	int fd;

	mem_init(&src, false);
	b = make_stream(&src, &len);
	for (int from_file = 0; from_file < 2; from_file++) {
		struct rec_placer rp = { .m = &dst };
		struct stream_ram_stats st;
		struct stream_reader *r;
		uint64_t data_pages;

		mem_init(&dst, false);
		if (from_file) {
			fd = mkstemp(path);
			CHECK(fd >= 0);
			CHECK_EQ(write(fd, b, len), (ssize_t)len);
			CHECK_EQ(lseek(fd, 0, SEEK_SET), 0);
			unlink(path);
			CHECK_EQ(stream_reader_new(fd, &r), 0);
		} else {
			fd = -1;
			CHECK_EQ(stream_reader_new_mem(b, len, &r), 0);
		}
		CHECK_EQ(read_all(r, &dst, rec_place, &rp, &st), 0);
		stream_reader_free(r);
		if (fd >= 0)
			close(fd);
		data_pages = st.pages - st.zero_pages;
		/* Every data page through the placer (zero runs never), and nothing else. */
		CHECK_EQ(rp.bad, 0);
		CHECK(rp.calls >= 2);
		CHECK_EQ(rp.bytes, data_pages * PG);
		CHECK(st.zero_pages > 0);
		CHECK(mem_equal(&src, &dst));
		mem_fini(&dst);
	}
	free(b);
	mem_fini(&src);
}

TEST(ram_place_uffd_first_pass)
{
	struct ram_place_region rg[2];
	struct ram_place_stats ps;
	struct ram_place *p = NULL;
	struct stream_ram_stats st;
	struct stream_reader *r;
	struct mem src, dst;
	char err[256] = "";
	int uffd = pc_uffd_open();
	volatile uint8_t *never;
	size_t len;
	uint8_t *b, sum = 0;

	/* No silent skip: this host has userfaultfd (docs/PLATFORM), so its absence fails. */
	if (uffd < 0)
		printf("#   userfaultfd: %s\n", strerror(-uffd));
	CHECK(uffd >= 0);
	if (uffd < 0)
		return;
	mem_init(&src, false);
	b = make_stream(&src, &len);
	mem_init(&dst, true);
	/* Touched before the stream comes: placed over by a plain copy. */
	memset(dst.host[0] + 6 * PG, 0xee, PG);
	for (int i = 0; i < 2; i++)
		rg[i] = (struct ram_place_region){ dst.host[i], dst.size[i] };
	CHECK_EQ(ram_place_start(uffd, rg, 2, &p, err, sizeof(err)), 0);
	if (err[0])
		printf("#   %s\n", err);
	CHECK(p != NULL);
	if (!p)
		goto out;
	CHECK_EQ(stream_reader_new_mem(b, len, &r), 0);
	CHECK_EQ(read_all(r, &dst, ram_place_put, p, &st), 0);
	stream_reader_free(r);
	/* Page 1 of B is zero, so never placed: reading it faults and the thread answers. */
	never = dst.host[1] + 1 * PG;
	for (unsigned int k = 0; k < PG; k += 64)
		sum |= never[k];
	CHECK_EQ(sum, 0);
	ram_place_stop(p, &ps);
	printf("#   copied %llu existing %llu faults %llu ioctls %llu\n",
	       (unsigned long long)ps.copied, (unsigned long long)ps.existing,
	       (unsigned long long)ps.faults, (unsigned long long)ps.ioctls);
	/* Pass 2's data pages (A 2, 3, 5; A 4 is zero: skipped; B 0) came twice; A 6 was touched. */
	CHECK(ps.existing >= 5);
	CHECK_EQ(ps.copied + ps.existing, st.pages - st.zero_pages);
	CHECK(ps.faults >= 1);
	CHECK(ps.ioctls < ps.copied);
	CHECK(mem_equal(&src, &dst));
	/* Unregistered: untouched memory reads zero without any thread. */
	CHECK_EQ(dst.host[0][1 * PG + 17], 0);
out:
	close(uffd);
	free(b);
	mem_fini(&dst);
	mem_fini(&src);
}

TEST(ram_place_unregistered_copies)
{
	/* A range no longer registered (ENOENT from UFFDIO_COPY) is plain memory: copied. */
	struct ram_place_region rg;
	struct ram_place_stats ps;
	struct ram_place *p = NULL;
	struct uffdio_range ur;
	char err[256] = "";
	int uffd = pc_uffd_open();
	size_t sz = 16 * PG;
	uint8_t *m, src[4 * PG];

	CHECK(uffd >= 0);
	if (uffd < 0)
		return;
	m = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED);
	rg = (struct ram_place_region){ m, sz };
	CHECK_EQ(ram_place_start(uffd, &rg, 1, &p, err, sizeof(err)), 0);
	if (!p)
		goto out;
	memset(src, 0x77, sizeof(src));
	CHECK_EQ(ram_place_put(p, 0, m, src, 2 * PG), 0);
	ur = (struct uffdio_range){ (uintptr_t)m, sz };
	CHECK_EQ(ioctl(uffd, UFFDIO_UNREGISTER, &ur), 0);
	memset(src, 0x99, sizeof(src));
	CHECK_EQ(ram_place_put(p, 8 * PG, m + 8 * PG, src, 4 * PG), 0);
	/* Outside every region, or not page-sized: refused. */
	CHECK_EQ(ram_place_put(p, 0, m + sz, src, PG), -EINVAL);
	CHECK_EQ(ram_place_put(p, 0, m, src, 100), -EINVAL);
	ram_place_stop(p, &ps);
	CHECK_EQ(ps.copied, 2);
	CHECK_EQ(ps.existing, 4);
	CHECK_EQ(m[PG + 5], 0x77);
	CHECK_EQ(m[8 * PG], 0x99);
	CHECK_EQ(m[11 * PG + PG - 1], 0x99);
	CHECK_EQ(m[12 * PG], 0);
out:
	munmap(m, sz);
	close(uffd);
}
