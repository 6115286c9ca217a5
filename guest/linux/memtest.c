/*
 * guest/linux/memtest.c - the memory-integrity workload of the Linux test guest
 * (static; /bin/memtest in the initramfs that scripts/linux-guest.sh builds).
 *
 * Same semantics, page layout and output as the freestanding test guest's workload
 * (guest/memtest.c, guest/README.md), so tests parse both alike.  N MiB of anonymous
 * memory are split into one contiguous run of 4 KiB pages per thread.  Each page holds
 * the pattern of guest/pattern.h, which both guests include (index, generation, checksum,
 * PATTERN_MEM_MAGIC, then two xorshift64 streams seeded from (index, generation)), and
 * the generation each page should hold is kept in gens[], a u32 per page.  A thread
 * fills its pages (generation 1), then loops: verify one page, read the clock, rewrite
 * pages (generation + 1) as the rate allows (a pause's backlog is capped at 10 ms' worth),
 * and thread 0 reports once a second.  A page whose header or body disagrees with gens[]
 * is reported, counted and repaired.  After a migration that lost a dirty page, that page
 * still holds an older generation: "content=stale".
 *
 * The stall is the longest gap between consecutive CLOCK_MONOTONIC reads of one thread
 * (one per page, ~1 us of work natively): a gap of milliseconds means the vCPU did not
 * run (a VM pause, a migration's downtime, host contention).  Thread 0's own printing is
 * not counted (a write to a slow serial console can block).
 *
 * Usage: memtest [-m MiB (64)] [-r MiB/s (0)] [-t seconds (10)] [-j threads (1; 0 = one
 *                per online CPU)] [-i]
 * -t counts from the program's start, like the freestanding guest's runtime from its
 * entry.  -i injects two faults after the first report (a flipped bit, an older
 * generation) to show that they are caught: expect errors and exit status 1.
 *
 * Output:
 *   memtest: start mem_mib=<N> pages=<P> rate_mib_s=<R> runtime_s=<S> threads=<T>
 *   memtest: t=<s.d> gen=<G> verified=<V> dirtied=<D> errors=<E> stall_ms=<x.xxx>
 *            max_stall_ms=<y.yyy>                       (one line, every second)
 *   memtest: ERROR page=<i> expected gen=<g> found gen=<g2> index=<i2> bad_words=<n>
 *            content=<stale|newer|corrupt> addr=0x<a> cpu=<c>   (3 a second per thread)
 *   memtest: done gen=<G> verified=<V> dirtied=<D> errors=<E> max_stall_ms=<y.yyy>
 * Exit status: 0 if errors == 0, 1 otherwise, 2 on a setup failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
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

#include "../pattern.h"		/* relative: scripts/linux-guest.sh passes no -I */

typedef uint64_t u64;
typedef uint32_t u32;

#define PAGE_SIZE	PATTERN_PAGE_SIZE
#define ERR_PRINTS_PER_S 3
#define NS		1000000000ULL
#define BACKLOG_NS	(10 * 1000000ULL)
#define MAX_THREADS	256
#define MAX(a, b)	((a) > (b) ? (a) : (b))

/* Per thread.  The counters are written by their thread and read by thread 0. */
struct mt_thr {
	pthread_t tid;
	unsigned slot;
	u64 first, count;	/* this thread's pages: [first, first + count) */
	u64 vcur, dcur;		/* next page to verify / rewrite, relative */
	u64 last_ns;
	u64 next_dirty, dirty_ns;
	u64 err_window, err_prints;
	volatile u64 verified, dirtied, errors, max_gen;
	volatile u64 stall_cur;	/* longest gap this interval; thread 0 resets it */
	volatile u64 stall_max;	/* longest gap since the fill */
} __attribute__((aligned(64)));

static struct mt_thr thr[MAX_THREADS];
static unsigned nthreads = 1;
static unsigned char *mem;
static u32 *gens;
static u64 total_pages, start_ns, end_ns;
static volatile int all_stop;
static pthread_barrier_t filled;

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
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
	for (char *p = buf; n > 0;) {	/* one write per line: lines of threads don't mix */
		ssize_t w = write(STDOUT_FILENO, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= w;
	}
}

static u64 now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (u64)ts.tv_sec * NS + ts.tv_nsec;
}

static inline u64 *page_addr(u64 idx)
{
	return (u64 *)(mem + idx * PAGE_SIZE);
}

static inline void page_fill(u64 *p, u64 idx, u64 gen)
{
	pattern_fill(p, idx, gen, PATTERN_MEM_MAGIC);
}

/* True if p is page (idx, gen); *bad_words (if asked) counts the body words that differ. */
static inline bool page_check(const u64 *p, u64 idx, u64 gen, unsigned *bad_words)
{
	return pattern_check(p, idx, gen, PATTERN_MEM_MAGIC, bad_words);
}

/* Read the clock and account the gap since the last read as a stall. */
static u64 tick(struct mt_thr *c)
{
	u64 now = now_ns(), gap = now - c->last_ns;

	c->last_ns = now;
	if (gap > c->stall_cur) {
		u64 cur = __atomic_load_n(&c->stall_cur, __ATOMIC_RELAXED);

		while (gap > cur && !__atomic_compare_exchange_n(&c->stall_cur, &cur, gap, false,
								 __ATOMIC_RELAXED, __ATOMIC_RELAXED))
			;
	}
	if (gap > c->stall_max)
		c->stall_max = gap;
	return now;
}

static void report(u64 now)
{
	u64 verified = 0, dirtied = 0, errors = 0, gen = 0, stall = 0, max_stall = 0;
	u64 t10 = (now - start_ns) / (NS / 10);

	for (unsigned i = 0; i < nthreads; i++) {
		struct mt_thr *o = &thr[i];
		u64 s = __atomic_exchange_n(&o->stall_cur, 0, __ATOMIC_RELAXED);

		verified += o->verified;
		dirtied += o->dirtied;
		errors += o->errors;
		gen = MAX(gen, o->max_gen);
		stall = MAX(stall, s);
		max_stall = MAX(max_stall, o->stall_max);
	}
	out("memtest: t=%llu.%llu gen=%llu verified=%llu dirtied=%llu errors=%llu "
	    "stall_ms=%llu.%03llu max_stall_ms=%llu.%03llu\n",
	    (unsigned long long)(t10 / 10), (unsigned long long)(t10 % 10),
	    (unsigned long long)gen, (unsigned long long)verified,
	    (unsigned long long)dirtied, (unsigned long long)errors,
	    (unsigned long long)(stall / 1000000), (unsigned long long)(stall / 1000 % 1000),
	    (unsigned long long)(max_stall / 1000000),
	    (unsigned long long)(max_stall / 1000 % 1000));
}

static void page_error(struct mt_thr *c, u64 *p, u64 idx)
{
	u64 now = c->last_ns;
	struct pattern_found f;

	c->errors++;
	f = pattern_diagnose(p, idx, gens[idx], PATTERN_MEM_MAGIC);
	if (now - c->err_window > NS) {
		c->err_window = now;
		c->err_prints = 0;
	}
	if (c->err_prints++ < ERR_PRINTS_PER_S) {
		out("memtest: ERROR page=%llu expected gen=%u found gen=%llu index=%llu "
		    "bad_words=%u content=%s addr=%p cpu=%d\n",
		    (unsigned long long)idx, gens[idx], (unsigned long long)f.gen,
		    (unsigned long long)f.idx, f.bad_words, f.what, (void *)p, sched_getcpu());
		c->last_ns = now_ns();	/* printing is not a stall */
	}
	page_fill(p, idx, gens[idx]);
}

static void *mt_run(void *arg)
{
	struct mt_thr *c = arg;
	u64 now, next_report;

	for (u64 i = 0; i < c->count; i++) {
		u64 idx = c->first + i;

		page_fill(page_addr(idx), idx, 1);
		gens[idx] = 1;
	}
	c->max_gen = 1;
	pthread_barrier_wait(&filled);
	now = c->last_ns = now_ns();
	c->next_dirty = now;
	next_report = now + NS;
	if (c->slot == 0) {
		report(now);
		c->last_ns = now_ns();
	}

	for (;;) {
		if (c->count) {
			u64 idx = c->first + c->vcur;
			u64 *p = page_addr(idx);

			if (!page_check(p, idx, gens[idx], NULL))
				page_error(c, p, idx);
			c->verified++;
			if (++c->vcur == c->count)
				c->vcur = 0;
		}
		now = tick(c);

		while (c->dirty_ns && (int64_t)(now - c->next_dirty) >= 0) {
			u64 idx = c->first + c->dcur;
			u32 gen = gens[idx] + 1;

			page_fill(page_addr(idx), idx, gen);
			gens[idx] = gen;
			c->dirtied++;
			if (gen > c->max_gen)
				c->max_gen = gen;
			if (++c->dcur == c->count)
				c->dcur = 0;
			c->next_dirty += c->dirty_ns;
			now = tick(c);
			/* After a pause, catch up by at most 10 ms' worth. */
			if ((int64_t)(now - c->next_dirty) > (int64_t)BACKLOG_NS)
				c->next_dirty = now - BACKLOG_NS;
		}

		if (c->slot == 0) {
			if ((int64_t)(now - next_report) >= 0 || (int64_t)(now - end_ns) >= 0) {
				report(now);
				c->last_ns = now_ns();	/* printing is not a stall */
				while ((int64_t)(now - next_report) >= 0)
					next_report += NS;
			}
			if ((int64_t)(now - end_ns) >= 0) {
				all_stop = 1;
				return NULL;
			}
		} else if (all_stop) {
			return NULL;
		}
	}
}

/* After the first report: flip a bit in one page, write another one generation ahead. */
static void *mt_inject(void *arg)
{
	u64 a = total_pages / 2, b = total_pages / 3;

	(void)arg;
	usleep(1500 * 1000);
	if (all_stop)
		return NULL;
	((volatile unsigned char *)page_addr(a))[1000] ^= 0x10;
	page_fill(page_addr(b), b, gens[b] + 1);
	out("memtest: injected faults into pages %llu and %llu\n",
	    (unsigned long long)a, (unsigned long long)b);
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: memtest [-m MiB] [-r MiB/s] [-t seconds] [-j threads] [-i]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	unsigned long mib = 64, rate = 0, threads = 1;
	double runtime = 10;
	bool inject = false;
	pthread_t injector;
	int opt;

	start_ns = now_ns();
	while ((opt = getopt(argc, argv, "m:r:t:j:i")) != -1) {
		char *end;

		switch (opt) {
		case 'm':
			mib = strtoul(optarg, &end, 0);
			if (*end || mib == 0)
				usage();
			break;
		case 'r':
			rate = strtoul(optarg, &end, 0);
			if (*end)
				usage();
			break;
		case 't':
			runtime = strtod(optarg, &end);
			if (*end || runtime < 0)
				usage();
			break;
		case 'j':
			threads = strtoul(optarg, &end, 0);
			if (*end)
				usage();
			break;
		case 'i':
			inject = true;
			break;
		default:
			usage();
		}
	}
	if (threads == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		threads = n > 0 ? (unsigned long)n : 1;
	}
	total_pages = (u64)mib * (1024 * 1024 / PAGE_SIZE);
	nthreads = threads > MAX_THREADS ? MAX_THREADS : threads;
	if (nthreads > total_pages)
		nthreads = total_pages;
	end_ns = start_ns + (u64)(runtime * NS);

	mem = mmap(NULL, total_pages * PAGE_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	gens = calloc(total_pages, sizeof(*gens));
	if (mem == MAP_FAILED || !gens) {
		out("memtest: cannot allocate %lu MiB: %s\n", mib, strerror(errno));
		return 2;
	}
	out("memtest: start mem_mib=%lu pages=%llu rate_mib_s=%lu runtime_s=%.1f threads=%u\n",
	    mib, (unsigned long long)total_pages, rate, runtime, nthreads);

	pthread_barrier_init(&filled, NULL, nthreads);
	for (unsigned i = 0; i < nthreads; i++) {
		struct mt_thr *c = &thr[i];
		u64 share = total_pages / nthreads;

		c->slot = i;
		c->first = i * share;
		c->count = i == nthreads - 1 ? total_pages - c->first : share;
		if (rate && c->count) {
			/* Each thread rewrites its share of the rate at a steady pace. */
			u64 per_s = MAX((u64)rate * 256 / nthreads, 1);

			c->dirty_ns = MAX(NS / per_s, 1);
		}
	}
	for (unsigned i = 1; i < nthreads; i++) {
		cpu_set_t set;

		if (pthread_create(&thr[i].tid, NULL, mt_run, &thr[i])) {
			out("memtest: cannot start thread %u\n", i);
			return 2;
		}
		CPU_ZERO(&set);
		CPU_SET(i % CPU_SETSIZE, &set);
		pthread_setaffinity_np(thr[i].tid, sizeof(set), &set);	/* best effort */
	}
	if (inject && pthread_create(&injector, NULL, mt_inject, NULL) == 0)
		pthread_detach(injector);
	mt_run(&thr[0]);
	for (unsigned i = 1; i < nthreads; i++)
		pthread_join(thr[i].tid, NULL);

	u64 verified = 0, dirtied = 0, errors = 0, gen = 0, max_stall = 0;
	for (unsigned i = 0; i < nthreads; i++) {
		verified += thr[i].verified;
		dirtied += thr[i].dirtied;
		errors += thr[i].errors;
		gen = MAX(gen, thr[i].max_gen);
		max_stall = MAX(max_stall, thr[i].stall_max);
	}
	out("memtest: done gen=%llu verified=%llu dirtied=%llu errors=%llu "
	    "max_stall_ms=%llu.%03llu\n",
	    (unsigned long long)gen, (unsigned long long)verified, (unsigned long long)dirtied,
	    (unsigned long long)errors, (unsigned long long)(max_stall / 1000000),
	    (unsigned long long)(max_stall / 1000 % 1000));
	tcdrain(STDOUT_FILENO);	/* a slow (nested) serial console lags behind */
	return errors ? 1 : 0;
}
