/*
 * guest/linux/memtest.c - the memory-integrity workload of the Linux test guest.
 *
 * Owns: a region of N MiB in which every 4 KiB page is self-describing, and a loop that
 * verifies pages and rewrites them at a given rate, so that a migration which loses,
 * misplaces or corrupts a page (or loses a dirty bit: the page then holds an older
 * generation) is detected inside the guest.  Same semantics as the freestanding test
 * guest's workload.
 *
 * Page layout (64-bit little-endian words):
 *   w[0] page index   w[1] generation   w[2] checksum of the body ^ index ^ gen<<32
 *   w[3] MT_MAGIC     w[4..511] body: xorshift64 sequence seeded from (index, generation)
 * The expected generation of each page is kept in a separate array (gens[]), so a page
 * that is self-consistent but stale is reported too.
 *
 * Usage: memtest [-m MiB (64)] [-r MiB/s rewritten (0)] [-t seconds (10)] [-i]
 * -i injects two faults after the first second (a flipped bit in one page, an older
 * generation of another), to show that the checker catches them: expect errors and exit 1.
 * Prints once a second:
 *   memtest: t=<s> gen=<g> verified=<pages> dirtied=<pages> errors=<n> stall_ms=<ms>
 *            max_stall_ms=<ms>
 * where the counters are totals since the loop started, stall_ms is the longest gap
 * between two consecutive CLOCK_MONOTONIC reads of the loop during the last interval and
 * max_stall_ms the longest overall (the time spent printing is not counted).  Mismatches
 * print "memtest: ERROR page=..." (at most MT_ERR_LINES a second).  Exits 0 if no error
 * was seen, 1 otherwise, 2 on a setup failure.  The loop runs for -t seconds after the
 * initial fill.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MT_PAGE		4096u
#define MT_WORDS	(MT_PAGE / 8)
#define MT_HDR_WORDS	4
#define MT_MAGIC	0x74736574776f6467ull /* "godwtest" */
#define MT_ERR_LINES	10	/* error lines per interval */
#define MT_DIRTY_BURST	16	/* pages rewritten per loop iteration at most */

static uint64_t mt_errors, mt_err_printed_interval, mt_err_suppressed;

static void mt_print(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void mt_print(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	for (char *p = buf; n > 0;) {
		ssize_t w = write(STDOUT_FILENO, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= w;
	}
}

static double mt_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The first body word's seed: a splitmix64 finalizer of (index, gen); never zero. */
static uint64_t mt_seed(uint64_t index, uint64_t gen)
{
	uint64_t z = index * 0x9e3779b97f4a7c15ull ^ (gen + 1) * 0xd1b54a32d192ed03ull;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return z ? z : 0x676f64776974ull;
}

static inline uint64_t mt_xorshift(uint64_t x)
{
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return x;
}

static inline uint64_t mt_fold(uint64_t c, uint64_t x)
{
	c ^= x;
	return (c << 5) | (c >> 59);
}

static void mt_page_write(uint64_t *w, uint64_t index, uint64_t gen)
{
	uint64_t x = mt_seed(index, gen), c = 0;

	for (unsigned i = MT_HDR_WORDS; i < MT_WORDS; i++) {
		x = mt_xorshift(x);
		w[i] = x;
		c = mt_fold(c, x);
	}
	w[0] = index;
	w[1] = gen;
	w[2] = c ^ index ^ (gen << 32);
	w[3] = MT_MAGIC;
}

/* Returns -1 if the page is a valid page for (w[0], w[1]), else the first bad word. */
static int mt_page_check_self(const uint64_t *w)
{
	uint64_t x = mt_seed(w[0], w[1]), c = 0;

	if (w[3] != MT_MAGIC)
		return 3;
	for (unsigned i = MT_HDR_WORDS; i < MT_WORDS; i++) {
		x = mt_xorshift(x);
		if (w[i] != x)
			return i;
		c = mt_fold(c, x);
	}
	if (w[2] != (c ^ w[0] ^ (w[1] << 32)))
		return 2;
	return -1;
}

static void mt_report(const uint64_t *w, uint64_t index, uint64_t gen)
{
	const char *kind;
	int bad_self = mt_page_check_self(w);
	unsigned bad = 0;
	uint64_t want = 0;
	uint64_t exp[MT_WORDS];

	mt_errors++;
	if (mt_err_printed_interval >= MT_ERR_LINES) {
		mt_err_suppressed++;
		return;
	}
	mt_err_printed_interval++;
	if (bad_self < 0 && w[0] == index)
		kind = "stale";		/* a whole older (or newer) generation of this page */
	else if (bad_self < 0)
		kind = "misplaced";	/* a valid page of another index */
	else
		kind = "corrupt";
	mt_page_write(exp, index, gen);
	for (unsigned i = 0; i < MT_WORDS; i++) {
		if (w[i] != exp[i]) {
			bad = i;
			want = exp[i];
			break;
		}
	}
	mt_print("memtest: ERROR page=%llu kind=%s want_gen=%llu hdr_index=%llu hdr_gen=%llu "
		 "word=%u got=%#llx want=%#llx\n",
		 (unsigned long long)index, kind, (unsigned long long)gen,
		 (unsigned long long)w[0], (unsigned long long)w[1], bad,
		 (unsigned long long)w[bad], (unsigned long long)want);
}

static void mt_page_verify(const uint64_t *w, uint64_t index, uint64_t gen)
{
	uint64_t x;

	if (w[0] != index || w[1] != gen || w[3] != MT_MAGIC)
		goto bad;
	x = mt_seed(index, gen);
	uint64_t c = 0;
	for (unsigned i = MT_HDR_WORDS; i < MT_WORDS; i++) {
		x = mt_xorshift(x);
		if (w[i] != x)
			goto bad;
		c = mt_fold(c, x);
	}
	if (w[2] != (c ^ index ^ (gen << 32)))
		goto bad;
	return;
bad:
	mt_report(w, index, gen);
}

static void mt_usage(void)
{
	fprintf(stderr, "usage: memtest [-m MiB] [-r MiB/s] [-t seconds] [-i]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	unsigned long mib = 64, rate = 0;
	double runtime = 10;
	bool inject = false;
	int opt;

	while ((opt = getopt(argc, argv, "m:r:t:i")) != -1) {
		char *end;
		switch (opt) {
		case 'm':
			mib = strtoul(optarg, &end, 0);
			if (*end || mib == 0)
				mt_usage();
			break;
		case 'r':
			rate = strtoul(optarg, &end, 0);
			if (*end)
				mt_usage();
			break;
		case 't':
			runtime = strtod(optarg, &end);
			if (*end || runtime < 0)
				mt_usage();
			break;
		case 'i':
			inject = true;
			break;
		default:
			mt_usage();
		}
	}

	size_t npages = mib * (1024 * 1024 / MT_PAGE);
	uint8_t *mem = mmap(NULL, npages * MT_PAGE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	uint32_t *gens = calloc(npages, sizeof(*gens));
	if (mem == MAP_FAILED || !gens) {
		mt_print("memtest: cannot allocate %lu MiB: %s\n", mib, strerror(errno));
		return 2;
	}
	mt_print("memtest: start mem_mib=%lu pages=%zu rate_mib_s=%lu runtime_s=%.1f\n",
		 mib, npages, rate, runtime);

	uint32_t gen = 1;
	double t0 = mt_now();
	for (size_t i = 0; i < npages; i++) {
		mt_page_write((uint64_t *)(mem + i * MT_PAGE), i, gen);
		gens[i] = gen;
	}
	double start = mt_now();
	mt_print("memtest: filled pages=%zu gen=%u in %.3f s\n", npages, gen, start - t0);

	/* Pages to rewrite per second; the dirty cursor starts generation 2. */
	double dirty_rate = (double)rate * (1024 * 1024 / MT_PAGE);
	uint64_t verified = 0, dirtied = 0;
	size_t vcur = 0, dcur = 0;
	double last = start, next_print = start + 1, stall = 0, max_stall = 0;
	if (rate)
		gen = 2;

	for (;;) {
		double now = mt_now();
		double gap = now - last;
		last = now;
		if (gap > stall)
			stall = gap;
		if (gap > max_stall)
			max_stall = gap;
		if (now >= next_print || now - start >= runtime) {
			bool done = now - start >= runtime;
			if (mt_err_suppressed) {
				mt_print("memtest: ERROR %llu more error lines suppressed\n",
					 (unsigned long long)mt_err_suppressed);
				mt_err_suppressed = 0;
			}
			mt_print("memtest: t=%.1f gen=%u verified=%llu dirtied=%llu errors=%llu "
				 "stall_ms=%.3f max_stall_ms=%.3f\n",
				 now - start, gen, (unsigned long long)verified,
				 (unsigned long long)dirtied, (unsigned long long)mt_errors,
				 stall * 1e3, max_stall * 1e3);
			if (done)
				break;
			mt_err_printed_interval = 0;
			stall = 0;
			while (next_print <= now)
				next_print += 1;
			if (inject) {
				size_t a = npages / 2, b = npages / 3;
				inject = false;
				mem[a * MT_PAGE + 1000] ^= 0x10;
				mt_page_write((uint64_t *)(mem + b * MT_PAGE), b, gens[b] + 1);
				mt_print("memtest: injected faults into pages %zu and %zu\n", a, b);
			}
			last = mt_now();	/* printing is not a stall */
		}

		/* Rewrite the pages that are due, a burst at most per iteration. */
		if (dirty_rate > 0) {
			uint64_t due = (uint64_t)((now - start) * dirty_rate);
			for (int n = 0; dirtied < due && n < MT_DIRTY_BURST; n++) {
				mt_page_write((uint64_t *)(mem + dcur * MT_PAGE), dcur, gen);
				gens[dcur] = gen;
				dirtied++;
				if (++dcur == npages) {
					dcur = 0;
					gen++;
				}
			}
		}

		mt_page_verify((const uint64_t *)(mem + vcur * MT_PAGE), vcur, gens[vcur]);
		verified++;
		if (++vcur == npages)
			vcur = 0;
	}
	mt_print("memtest: done gen=%u verified=%llu dirtied=%llu errors=%llu max_stall_ms=%.3f\n",
		 gen, (unsigned long long)verified, (unsigned long long)dirtied,
		 (unsigned long long)mt_errors, max_stall * 1e3);
	tcdrain(STDOUT_FILENO);	/* a slow (nested) serial console lags behind */
	return mt_errors ? 1 : 0;
}
