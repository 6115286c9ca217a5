/*
 * memtest.c - the memory-integrity workload (ring 3, every online CPU).
 *
 * mem MiB of RAM above the guest's image and tables are split into one
 * contiguous run of 4 KiB pages per CPU.  Each page holds pattern.h's
 * pattern (index, generation, checksum, PATTERN_MEM_MAGIC, then two
 * xorshift64 streams seeded from (index, generation): the same bytes as
 * the Linux guest's memtest), and the generation each page should hold is
 * kept in gens[], a u32 per page.
 * A CPU fills its pages (generation 1), then loops: verify one page, read
 * the TSC, rewrite pages (generation + 1) as the rate allows, and on CPU 0
 * report once per interval.  A page whose header or body disagrees with
 * gens[] is reported, counted and repaired.  After a migration that lost a
 * dirty page, that page still holds an older generation: "content=stale".
 *
 * With fill=text a page's body is text instead (compressible, like a guest's
 * page cache or heap of strings): a fixed passage of prose starting at an
 * offset chosen by (index, generation), the same header with
 * MEMTEST_TEXT_MAGIC and a checksum of the body's words.
 *
 * The stall is the longest gap between consecutive TSC reads on one CPU.
 * They come every page (~1 us of work), so a gap of milliseconds means the
 * vCPU did not run: a VM pause, a migration's downtime, or host contention.
 */
#include "guest.h"

#define ERR_PRINTS_PER_S 3

struct extent {
	u64 base;		/* guest-physical address of page `first` */
	u64 first, npages;
};

/* Per CPU.  The counters are written by their CPU and read by CPU 0. */
struct mt_cpu {
	u64 first, count;	/* this CPU's pages: [first, first + count) */
	u64 vcur, dcur;		/* next page to verify / rewrite, relative */
	u64 last_tsc;
	u64 next_dirty, dirty_ticks;
	u64 err_window, err_prints;
	volatile u64 verified, dirtied, errors, max_gen;
	volatile u64 stall_cur;	/* longest gap this interval; CPU 0 resets it */
	volatile u64 stall_max;	/* longest gap since the fill */
} __aligned(64);

static struct extent ext[MAX_RAM_RANGES];
static unsigned next;
static u32 *gens;
static u64 total_pages;
static unsigned mt_ncpus = 1;		/* CPUs 0..mt_ncpus-1 run the workload */
static struct mt_cpu mt[GUEST_MAX_CPUS];

static u64 page_addr(u64 idx)
{
	for (unsigned i = 0; i < next; i++)
		if (idx - ext[i].first < ext[i].npages)
			return ext[i].base + (idx - ext[i].first) * 4096;
	return 0;
}

#define MEMTEST_TEXT_MAGIC	0x21545854574447ULL	/* "GDWTXT!": fill=text pages */

static const char text_src[] =
	"It was the best of times, it was the worst of times, it was the age of wisdom, "
	"it was the age of foolishness, it was the epoch of belief, it was the epoch of "
	"incredulity, it was the season of Light, it was the season of Darkness, it was "
	"the spring of hope, it was the winter of despair, we had everything before us, "
	"we had nothing before us, we were all going direct to Heaven, we were all going "
	"direct the other way; in short, the period was so far like the present period.\n";
#define TEXT_LEN	(sizeof(text_src) - 1)

/* text_src repeated: a page's body is the 4064 bytes from an offset < TEXT_LEN. */
static u8 text_rep[TEXT_LEN + PATTERN_PAGE_SIZE];

static void text_init(void)
{
	for (u64 i = 0; i < sizeof(text_rep); i++)
		text_rep[i] = (u8)text_src[i % TEXT_LEN];
}

/* Body word i (PATTERN_HDR_WORDS..PATTERN_WORDS-1) of the text page starting at start. */
static inline u64 text_word(u64 start, unsigned i)
{
	u64 w;

	__builtin_memcpy(&w, text_rep + start + (u64)(i - PATTERN_HDR_WORDS) * 8, 8);
	return w;
}

static inline u64 text_start(u64 idx, u64 gen)
{
	return (idx * 131 + gen * 17) % TEXT_LEN;
}

static void text_fill(u64 *p, u64 idx, u64 gen)
{
	u64 start = text_start(idx, gen), sum = 0;

	memcpy(p + PATTERN_HDR_WORDS, text_rep + start, (PATTERN_WORDS - PATTERN_HDR_WORDS) * 8);
	for (unsigned i = PATTERN_HDR_WORDS; i < PATTERN_WORDS; i++)
		sum += p[i];
	p[PATTERN_W_INDEX] = idx;
	p[PATTERN_W_GEN] = gen;
	p[PATTERN_W_CSUM] = sum;
	p[PATTERN_W_MAGIC] = MEMTEST_TEXT_MAGIC;
}

static bool text_check(const u64 *p, u64 idx, u64 gen, unsigned *bad_words)
{
	u64 start = text_start(idx, gen), sum = 0;
	unsigned bad = 0;

	for (unsigned i = PATTERN_HDR_WORDS; i < PATTERN_WORDS; i++) {
		bad += p[i] != text_word(start, i);
		sum += p[i];
	}
	if (bad_words)
		*bad_words = bad;
	return !bad && p[PATTERN_W_INDEX] == idx && p[PATTERN_W_GEN] == gen &&
	       p[PATTERN_W_MAGIC] == MEMTEST_TEXT_MAGIC && p[PATTERN_W_CSUM] == sum;
}

static inline void page_fill(u64 *p, u64 idx, u64 gen)
{
	if (cfg.fill_text)
		text_fill(p, idx, gen);
	else
		pattern_fill(p, idx, gen, PATTERN_MEM_MAGIC);
}

static inline bool page_check(const u64 *p, u64 idx, u64 gen, unsigned *bad_words)
{
	if (cfg.fill_text)
		return text_check(p, idx, gen, bad_words);
	return pattern_check(p, idx, gen, PATTERN_MEM_MAGIC, bad_words);
}

/*
 * Read the clock (gclock()) and account the gap since the last read as a
 * stall.  A restore onto a host whose TSC is behind shows as a gap of 0:
 * the clock stands still across the backward jump, since the downtime
 * cannot be known; one onto a host that is ahead shows as a stall of the
 * whole difference, like a pause.
 */
static u64 tick(struct mt_cpu *c)
{
	u64 now = gclock(), gap = now - c->last_tsc;

	c->last_tsc = now;
	if ((int64_t)gap < 0)
		return now;
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

static void tick_cb(void *arg)
{
	tick(arg);
}

static void ticks_to_ms(u64 ticks, u64 *ms, u64 *frac)
{
	u64 us = ticks * 1000 / plat.tsc_khz;

	*ms = us / 1000;
	*frac = us % 1000;
}

static void report(struct mt_cpu *c, u64 now)
{
	u64 verified = 0, dirtied = 0, errors = 0, gen = 0, stall = 0, max_stall = 0;
	u64 t10 = (now - boot_tsc) / (plat.tsc_khz * 100), s_ms, s_fr, m_ms, m_fr;

	for (unsigned i = 0; i < mt_ncpus; i++) {
		struct mt_cpu *o = &mt[i];

		u64 s = __atomic_exchange_n(&o->stall_cur, 0, __ATOMIC_RELAXED);

		verified += o->verified;
		dirtied += o->dirtied;
		errors += o->errors;
		gen = MAX(gen, o->max_gen);
		stall = MAX(stall, s);
		max_stall = MAX(max_stall, o->stall_max);
	}
	ticks_to_ms(stall, &s_ms, &s_fr);
	ticks_to_ms(max_stall, &m_ms, &m_fr);
	gprintf_tick(tick_cb, c,
		     "memtest: t=%lu.%lu gen=%lu verified=%lu dirtied=%lu errors=%lu "
		     "stall_ms=%lu.%03lu max_stall_ms=%lu.%03lu\n",
		     t10 / 10, t10 % 10, gen, verified, dirtied, errors, s_ms, s_fr, m_ms, m_fr);
}

static void page_error(struct mt_cpu *c, unsigned slot, u64 *p, u64 idx)
{
	u64 now = c->last_tsc;
	struct pattern_found f;

	c->errors++;
	if (cfg.fill_text) {
		f.idx = p[PATTERN_W_INDEX];
		f.gen = p[PATTERN_W_GEN];
		text_check(p, idx, gens[idx], &f.bad_words);
		if (f.idx == idx && text_check(p, idx, f.gen, NULL))
			f.what = f.gen < gens[idx] ? "stale" : "newer";
		else
			f.what = "corrupt";
	} else {
		f = pattern_diagnose(p, idx, gens[idx], PATTERN_MEM_MAGIC);
	}
	if (now - c->err_window > ms_to_tsc(1000)) {
		c->err_window = now;
		c->err_prints = 0;
	}
	if (c->err_prints++ < ERR_PRINTS_PER_S)
		gprintf_tick(tick_cb, c,
			     "memtest: ERROR page=%lu expected gen=%u found gen=%lu index=%lu "
			     "bad_words=%u content=%s addr=0x%lx cpu=%u\n",
			     idx, gens[idx], f.gen, f.idx, f.bad_words, f.what, (u64)p, slot);
	page_fill(p, idx, gens[idx]);
}

/*
 * BSP, before the APs are released: take mem MiB (or what there is) after
 * the boot allocations, allocate gens[], and split the pages among CPUs
 * 0..ncpu-1.
 */
void memtest_setup(unsigned ncpu)
{
	u64 free = 0, want = cfg.mem_mib * 256, start, left, idx = 0;

	start = boot_alloc_end();
	for (unsigned i = 0; i < plat.nram; i++) {
		u64 b = MAX(plat.ram[i].base, start), e = plat.ram[i].base + plat.ram[i].size;

		if (e > b)
			free += (e - b) / 4096;
	}
	/* Each page also costs 4 bytes of gens[], plus rounding. */
	free = free > 2 ? (free - 2) * 4096 / 4100 : 0;
	if (want > free) {
		gprintf("godwit-guest: mem=%lu MiB is more than the %lu MiB free; using %lu MiB\n",
			cfg.mem_mib, free / 256, free / 256);
		want = free / 256 * 256;
	}
	if (cfg.fill_text)
		text_init();
	total_pages = want;
	gens = (u32 *)boot_alloc(want * 4 + 1);
	start = boot_alloc_end();

	left = total_pages;
	for (unsigned i = 0; i < plat.nram && left; i++) {
		u64 b = ALIGN_UP(MAX(plat.ram[i].base, start), 4096);
		u64 e = plat.ram[i].base + plat.ram[i].size, n;

		if (e <= b)
			continue;
		n = MIN((e - b) / 4096, left);
		if (!n)
			continue;
		ext[next++] = (struct extent){ .base = b, .first = idx, .npages = n };
		idx += n;
		left -= n;
	}
	total_pages = idx;

	mt_ncpus = MAX(ncpu, 1u);
	for (unsigned i = 0; i < mt_ncpus; i++) {
		struct mt_cpu *c = &mt[i];
		u64 share = total_pages / mt_ncpus;

		c->first = i * share;
		c->count = i == mt_ncpus - 1 ? total_pages - c->first : share;
		if (cfg.rate_mib && c->count) {
			/* Each CPU rewrites its share of rate at a steady pace. */
			u64 per_s = cfg.rate_mib * 256 / mt_ncpus;

			c->dirty_ticks = MAX(plat.tsc_khz * 1000 / MAX(per_s, 1), 1);
		}
	}
}

void memtest_run(unsigned slot)
{
	struct mt_cpu *c = &mt[slot];
	u64 report_ticks = ms_to_tsc(cfg.report_ms), backlog = ms_to_tsc(10);
	u64 end = cfg.runtime_s ? boot_tsc + ms_to_tsc(cfg.runtime_s * 1000) : 0;
	u64 next_report, now, t_in;

	for (u64 i = 0; i < c->count; i++) {
		u64 idx = c->first + i;

		page_fill((u64 *)page_addr(idx), idx, 1);
		gens[idx] = 1;
	}
	c->max_gen = 1;
	now = c->last_tsc = gclock();
	c->next_dirty = now;
	next_report = now + report_ticks;
	if (slot == 0)
		report(c, now);

	for (;;) {
		if (c->count) {
			u64 idx = c->first + c->vcur;
			u64 *p = (u64 *)page_addr(idx);

			if (!page_check(p, idx, gens[idx], NULL))
				page_error(c, slot, p, idx);
			c->verified++;
			if (++c->vcur == c->count)
				c->vcur = 0;
		}
		now = tick(c);

		/*
		 * Rewrite what the rate allows; a rate above what the CPU can
		 * write (e.g. rate=100000: as fast as it can) leaves the loop
		 * every 10 ms to verify a page and report.
		 */
		t_in = now;
		while (c->dirty_ticks && (int64_t)(now - c->next_dirty) >= 0 &&
		       now - t_in < backlog) {
			u64 idx = c->first + c->dcur;
			u32 gen = gens[idx] + 1;

			page_fill((u64 *)page_addr(idx), idx, gen);
			gens[idx] = gen;
			c->dirtied++;
			if (gen > c->max_gen)
				c->max_gen = gen;
			if (++c->dcur == c->count)
				c->dcur = 0;
			c->next_dirty += c->dirty_ticks;
			now = tick(c);
			/* After a pause, catch up by at most 10 ms' worth. */
			if ((int64_t)(now - c->next_dirty) > (int64_t)backlog)
				c->next_dirty = now - backlog;
		}

		if (slot == 0) {
			/* One CPU for both: the device workloads take turns here. */
			if (devices_inline) {
				devices_poll(now);
				now = tick(c);
			}
			if ((int64_t)(now - next_report) >= 0) {
				report(c, now);
				while ((int64_t)(now - next_report) >= 0)
					next_report += report_ticks;
			}
			if (end && (int64_t)(now - end) >= 0)
				power_off();
		} else if (all_stop) {
			sys_halt();
		}
	}
}
