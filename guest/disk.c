/*
 * disk.c - the virtio-blk driver and the disk workload: generations of a
 * self-checking pattern written over a range of the disk, flushed, read
 * back and verified.
 *
 * The range is [disk_start, disk_start + disk_mib) MiB, clipped to the
 * capacity, in 4 KiB blocks numbered from the start of the disk.  Each
 * block holds the memory workload's pattern (pattern_fill) with its block
 * number, the generation and BLK_MAGIC.  One pass: write every block with
 * generation g, FLUSH (if the device offers it), read every block back and
 * verify it against g; then g + 1.  A read-only device (VIRTIO_BLK_F_RO)
 * gets read passes only, which check each block that holds the pattern
 * against its own generation (gen then counts the passes).
 *
 * Requests are 64 KiB with one header, one data and one status descriptor
 * each, in fixed descriptor triples (slot i uses 3i..3i+2), up to 16 in
 * flight, and the device is kicked once per batch.
 *
 * Benchmark modes (disk_mode=seqwrite+seqread+randread+randwrite, up to 6
 * in any order, each optionally with its own queue depth, randread:16)
 * replace the verifying workload: each mode keeps disk_qd (or its own)
 * requests of disk_bs bytes in flight over the range for disk_secs
 * seconds (sequential modes wrap around; random ones pick bs-aligned
 * offsets), waits for the last ones, and prints one "diskbench:" line;
 * after the last mode "diskbench: done".  Nothing is verified and nothing
 * is flushed: the figures are the VMM's request path (the buffers hold a
 * pattern written once, so writes are not zeros, with another magic, so
 * read-only passes over them later ignore those blocks).
 *
 * disk_mode=journal replaces it with the journal workload (below, and
 * guest/README.md): checksummed 4 KiB records appended over the range in
 * seq order, a FLUSH every journal_flush records, read back and checked
 * between groups, all checked once more before a runtime= power-off.
 */
#include "virtio.h"

#define VIRTIO_BLK_F_RO		5
#define VIRTIO_BLK_F_FLUSH	9

#define BLK_T_IN		0
#define BLK_T_OUT		1
#define BLK_T_FLUSH		4
#define BLK_T_GET_ID		8
#define BLK_S_OK		0
#define BLK_ID_BYTES		20

#define BLOCK			4096
#define CHUNK_BLOCKS		16		/* 64 KiB per request */
#define MAX_SLOTS		16
#define BLK_MAGIC		0x4b4c425449574447ULL	/* "GDWITBLK" */
#define BENCH_MAGIC		0x484e454257444747ULL	/* "GGDWBENH": not verified */
#define ERR_PRINTS_PER_S	3
#define BENCH_MAX_BS		(1024 * 1024)
#define BENCH_SEQ_BS		(1024 * 1024)	/* default request sizes */
#define BENCH_RAND_BS		4096

struct blk_hdr {
	u32 type, reserved;
	u64 sector;
};

struct dreq {
	struct blk_hdr hdr;
	volatile u8 status;
	bool busy;
	u64 block;		/* first block */
	u32 nblocks;
	u64 t_submit;
	u64 *buf;		/* CHUNK_BLOCKS * BLOCK bytes */
};

enum phase { PH_WRITE, PH_FLUSH, PH_READ };

static struct virtio_dev vd;
static struct vq q;
static struct dreq reqs[MAX_SLOTS];
static unsigned nslots;

static struct {
	u64 capacity;			/* 512-byte sectors */
	bool ro, flush;
	char serial[BLK_ID_BYTES + 1];
	u64 first, end;			/* blocks [first, end) */
	enum phase phase;
	u64 gen, cursor;
	unsigned inflight;
	u64 written, read, errors, flushes;
	u64 err_window, err_prints;
	bool stuck;			/* a timeout was reported */
} d;

enum bench_mode { BM_NONE, BM_SEQWRITE, BM_SEQREAD, BM_RANDREAD, BM_RANDWRITE };

static const char *const bench_names[] = {
	[BM_SEQWRITE] = "seqwrite", [BM_SEQREAD] = "seqread",
	[BM_RANDREAD] = "randread", [BM_RANDWRITE] = "randwrite",
};

/* The benchmark (cfg.disk_nbench modes); idx == disk_nbench when done. */
static struct {
	unsigned idx;
	unsigned qd;
	bool running;			/* the current mode has started */
	u32 bs;
	u64 t0, deadline;
	u64 cursor;			/* sequential: next byte offset */
	u64 rng;			/* random: xorshift64 state */
	u64 ops, bytes, errors;
	u64 kicks0;			/* q.kicks when the mode started */
} bm;

static const char *type_name(u32 type)
{
	switch (type) {
	case BLK_T_IN: return "read";
	case BLK_T_OUT: return "write";
	case BLK_T_FLUSH: return "flush";
	case BLK_T_GET_ID: return "get_id";
	}
	return "?";
}

static bool err_print_ok(u64 now)
{
	if (now - d.err_window > ms_to_tsc(1000)) {
		d.err_window = now;
		d.err_prints = 0;
	}
	return d.err_prints++ < ERR_PRINTS_PER_S;
}

/* Queue request r: `len` data bytes at r->buf (none if 0) for sector `sector`. */
static void submit(struct dreq *r, u32 type, u64 sector, u32 len)
{
	u16 h = (u16)(3 * (r - reqs));

	r->hdr = (struct blk_hdr){ .type = type, .sector = sector };
	r->status = 0xff;
	q.desc[h] = (struct vring_desc){ (u64)&r->hdr, sizeof(r->hdr), VIRTQ_DESC_F_NEXT,
					 (u16)(h + 1) };
	if (len) {
		u16 fl = VIRTQ_DESC_F_NEXT | (type == BLK_T_OUT ? 0 : VIRTQ_DESC_F_WRITE);

		q.desc[h + 1] = (struct vring_desc){ (u64)r->buf, len, fl, (u16)(h + 2) };
		q.desc[h + 2] = (struct vring_desc){ (u64)&r->status, 1, VIRTQ_DESC_F_WRITE, 0 };
	} else {
		q.desc[h + 1] = (struct vring_desc){ (u64)&r->status, 1, VIRTQ_DESC_F_WRITE, 0 };
	}
	r->busy = true;
	r->t_submit = gclock();
	d.inflight++;
	vq_add(&q, h);
}

/* The request a used element names, or NULL (reported) if none. */
static struct dreq *used_req(u32 id)
{
	if (id % 3 == 0 && id / 3 < nslots && reqs[id / 3].busy)
		return &reqs[id / 3];
	d.errors++;
	gprintf("disk: ERROR device returned descriptor %u, which is not in flight\n", id);
	return NULL;
}

/* One synchronous request at set-up (slot 0); its status, or -1 on timeout. */
static int sync_request(u32 type, u64 sector, u32 len)
{
	struct dreq *r = &reqs[0];
	u32 id, ulen;

	submit(r, type, sector, len);
	vq_kick(&q);
	if (!vq_wait(&q, &id, &ulen, VIRTIO_TIMEOUT_MS)) {
		vq_report_timeout(&q, VIRTIO_TIMEOUT_MS, 1);
		return -1;
	}
	if (used_req(id) != r)
		return -1;
	r->busy = false;
	d.inflight--;
	return r->status;
}

static void read_serial(void)
{
	char *s = (char *)reqs[0].buf;
	int st;

	memset(s, 0, BLK_ID_BYTES);
	st = sync_request(BLK_T_GET_ID, 0, BLK_ID_BYTES);
	d.serial[0] = '\0';
	if (st == BLK_S_OK) {
		unsigned n = 0;

		while (n < BLK_ID_BYTES && s[n]) {
			/* Printed as one word: no spaces or control characters. */
			d.serial[n] = s[n] > ' ' && s[n] < 0x7f ? s[n] : '_';
			n++;
		}
		d.serial[n] = '\0';
	}
	if (!d.serial[0]) {
		d.serial[0] = '-';
		d.serial[1] = '\0';
	}
}

/* disk_ro_check=1: one write of block `first` (generation 0). */
static void ro_check(void)
{
	int st;

	pattern_fill(reqs[0].buf, d.first, 0, BLK_MAGIC);
	st = sync_request(BLK_T_OUT, d.first * (BLOCK / 512), BLOCK);
	if (st == BLK_S_OK)
		gprintf("disk: write to read-only disk ACCEPTED status=0\n");
	else if (st >= 0)
		gprintf("disk: write to read-only disk refused status=%d\n", st);
}

bool disk_parse_modes(const char *v, size_t vlen)
{
	u8 modes[ARRAY_SIZE(cfg.disk_bench)], qds[ARRAY_SIZE(cfg.disk_bench)];
	unsigned n = 0;

	if (vlen == 7 && !strncmp(v, "journal", 7)) {
		cfg.disk_journal = true;
		cfg.disk_nbench = 0;
		return true;
	}
	while (vlen) {
		size_t len = 0, nlen;
		unsigned m;
		u64 qd = 0;

		while (len < vlen && v[len] != '+')
			len++;
		for (nlen = 0; nlen < len && v[nlen] != ':'; nlen++)
			;
		if (nlen < len && (!parse_u64(v + nlen + 1, len - nlen - 1, &qd) || !qd ||
				   qd > 255))
			return false;
		for (m = BM_SEQWRITE; m <= BM_RANDWRITE; m++)
			if (strlen(bench_names[m]) == nlen && !strncmp(v, bench_names[m], nlen))
				break;
		if (m > BM_RANDWRITE || n == ARRAY_SIZE(modes))
			return false;
		qds[n] = (u8)qd;
		modes[n++] = (u8)m;
		v += len;
		vlen -= len;
		if (vlen) {		/* the '+' */
			v++;
			vlen--;
		}
	}
	if (!n)
		return false;
	memcpy(cfg.disk_bench, modes, n);
	memcpy(cfg.disk_bench_qd, qds, n);
	cfg.disk_nbench = n;
	cfg.disk_journal = false;
	return true;
}

static bool bench_is_write(unsigned m) { return m == BM_SEQWRITE || m == BM_RANDWRITE; }
static bool bench_is_seq(unsigned m) { return m == BM_SEQWRITE || m == BM_SEQREAD; }

/* The queue depth of the i-th mode, at most the slots there are. */
static unsigned bench_qd(unsigned i)
{
	u64 qd = cfg.disk_bench_qd[i] ? cfg.disk_bench_qd[i] : cfg.disk_qd;

	return (unsigned)MIN(qd, (u64)nslots);
}

/* The request size of mode m: disk_bs if it is usable, else the mode's default. */
static u32 bench_bs(unsigned m)
{
	u64 bs = cfg.disk_bs, range = (d.end - d.first) * BLOCK;

	if (!bs || bs % 512 || bs > BENCH_MAX_BS || bs > range)
		bs = bench_is_seq(m) ? BENCH_SEQ_BS : BENCH_RAND_BS;
	return (u32)MIN(bs, range);
}

static struct dreq *free_slot(void);

/* ---- the journal (disk_mode=journal) ------------------------------------------------ */

/*
 * Records of one 4 KiB block each, appended over the range in seq order
 * (seq 1, 2, ... at blocks first, first + 1, ..., wrapping around: seq s
 * lives at block first + (s - 1) % records), JRNL_GROUP = journal_flush
 * records per group.  One group: write its records (up to 16 per request),
 * FLUSH, read back the scanner's next 16 blocks and verify them; then the
 * next group (paced by journal_rate).  Nothing else is in flight while the
 * scanner reads, so every seq below next_seq has been written: a block
 * whose newest seq was written by this boot must hold exactly that record.
 * Record layout (little-endian u64 words):
 *   0 JRNL_MAGIC  1 seq  2 sector (of the block it lives at)
 *   3..510 payload: x = pattern_seed(seq, JRNL_SEED); x = xorshift64(x) per word
 *   511 CRC-32 (zlib's polynomial) of bytes 0..4087, zero-extended
 * tests/kvm/journal_check.py checks an image on the host with the same rules.
 */
#define JRNL_MAGIC		0x314c4e524a574447ULL	/* "GDWJRNL1" */
#define JRNL_SEED		0x4a524e4cULL
#define JRNL_W_SEQ		1
#define JRNL_W_SECTOR		2
#define JRNL_W_PAYLOAD		3
#define JRNL_W_CRC		(PATTERN_WORDS - 1)
#define JRNL_BACKLOG_MS		10
#define JRNL_FINAL_WAIT_MS	30000

enum jphase { J_IDLE, J_WRITE, J_FLUSH, J_SCAN };
enum jrec { JR_EMPTY, JR_BAD, JR_OK };

static struct {
	bool on;
	enum jphase phase;
	u64 nrec;		/* records the range holds (d.end - d.first) */
	u64 next_seq;		/* next seq to submit */
	u64 first_seq;		/* the first seq this boot writes (after what it found) */
	u64 group_end;		/* seq after the current group's last */
	u64 flushed_seq;	/* newest seq a completed FLUSH covers */
	u64 written;		/* records whose write completed */
	u64 verified, passes;	/* records the scanner checked, its full passes */
	u64 scan;		/* the scanner's next block, from d.first */
	u64 next_t, rec_ticks;	/* journal_rate pacing */
	volatile bool stop_req, final_done;
	bool stopped;
} jr;

static u32 crc_table[256];

static void crc32_init(void)
{
	for (u32 i = 0; i < 256; i++) {
		u32 c = i;

		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

static u32 crc32(const void *p, size_t n)
{
	const u8 *b = p;
	u32 c = 0xffffffffu;

	while (n--)
		c = crc_table[(c ^ *b++) & 0xff] ^ (c >> 8);
	return c ^ 0xffffffffu;
}

static void jrnl_fill(u64 *w, u64 seq, u64 blk)
{
	u64 x = pattern_seed(seq, JRNL_SEED);

	w[0] = JRNL_MAGIC;
	w[JRNL_W_SEQ] = seq;
	w[JRNL_W_SECTOR] = blk * (BLOCK / 512);
	for (unsigned i = JRNL_W_PAYLOAD; i < JRNL_W_CRC; i++) {
		x = pattern_xorshift(x);
		w[i] = x;
	}
	w[JRNL_W_CRC] = crc32(w, JRNL_W_CRC * 8);
}

/* What block blk holds: no record (no magic), a damaged or misplaced one, a good one. */
static enum jrec jrnl_check(const u64 *w, u64 blk)
{
	u64 x;

	if (w[0] != JRNL_MAGIC)
		return JR_EMPTY;
	if (w[JRNL_W_SECTOR] != blk * (BLOCK / 512) || !w[JRNL_W_SEQ] ||
	    w[JRNL_W_CRC] != crc32(w, JRNL_W_CRC * 8))
		return JR_BAD;
	x = pattern_seed(w[JRNL_W_SEQ], JRNL_SEED);
	for (unsigned i = JRNL_W_PAYLOAD; i < JRNL_W_CRC; i++) {
		x = pattern_xorshift(x);
		if (w[i] != x)
			return JR_BAD;
	}
	return JR_OK;
}

/* The newest seq below next_seq that lives at range offset off; 0 if none. */
static u64 jrnl_expected(u64 off)
{
	u64 last = jr.next_seq - 1;

	if (last < off + 1)
		return 0;
	return last - (last - 1 - off) % jr.nrec;
}

/*
 * Verify block blk (nothing in flight): a block this boot wrote last must
 * hold exactly its newest record; any other record must be intact and not
 * newer than what was written.  True if it holds a good record.
 */
static bool jrnl_verify(const u64 *w, u64 blk, u64 now, u64 *newest)
{
	u64 exp = jrnl_expected(blk - d.first), seq = w[JRNL_W_SEQ];
	enum jrec st = jrnl_check(w, blk);
	const char *what = NULL;

	if (exp && exp >= jr.first_seq) {
		if (st == JR_EMPTY)
			what = "missing";
		else if (st == JR_BAD)
			what = "corrupt";
		else if (seq != exp)
			what = seq < exp ? "stale" : "newer";
	} else if (st == JR_BAD) {
		what = "corrupt";
	} else if (st == JR_OK && seq >= jr.next_seq) {
		what = "newer";
	}
	if (st == JR_OK && seq > *newest)
		*newest = seq;
	if (what) {
		d.errors++;
		if (err_print_ok(now))
			gprintf("journal: ERROR block=%lu expected seq=%lu found seq=%lu content=%s\n",
				blk, exp, st == JR_EMPTY ? 0 : seq, what);
	}
	return st == JR_OK;
}

/* Read the whole range once at start-up: where the journal goes on from. */
static void jrnl_recover(void)
{
	u64 newest = 0, found = 0, bad = 0, now = gclock();

	for (u64 blk = d.first; blk < d.end; ) {
		u32 n = (u32)MIN((u64)CHUNK_BLOCKS, d.end - blk);
		int st = sync_request(BLK_T_IN, blk * (BLOCK / 512), n * BLOCK);

		if (st != BLK_S_OK) {
			d.errors++;
			gprintf("disk: ERROR read sector=%lu blocks=%u status=%d\n",
				blk * (BLOCK / 512), n, st);
		} else {
			d.read += (u64)n * BLOCK;
			for (u32 i = 0; i < n; i++) {
				const u64 *w = reqs[0].buf + i * (BLOCK / 8);
				enum jrec r = jrnl_check(w, blk + i);

				if (r == JR_OK) {
					found++;
					newest = MAX(newest, w[JRNL_W_SEQ]);
				} else if (r == JR_BAD) {
					bad++;
					d.errors++;
					if (err_print_ok(now))
						gprintf("journal: ERROR block=%lu expected seq=0 found "
							"seq=%lu content=corrupt\n", blk + i,
							w[JRNL_W_SEQ]);
				}
			}
		}
		blk += n;
	}
	jr.next_seq = jr.first_seq = newest + 1;
	jr.flushed_seq = newest;
	jr.scan = (jr.next_seq - 1) % jr.nrec;	/* the oldest records first */
	gprintf("journal: start first_block=%lu records=%lu found=%lu damaged=%lu newest=%lu "
		"flush_every=%lu rate=%lu\n", d.first, jr.nrec, found, bad, newest,
		cfg.journal_flush, cfg.journal_rate);
}

static void jrnl_setup(void)
{
	if (d.ro) {
		gprintf("journal: read-only disk: read passes instead\n");
		return;
	}
	jr.on = true;
	jr.nrec = d.end - d.first;
	if (cfg.journal_rate)
		jr.rec_ticks = MAX(plat.tsc_khz * 1000 / cfg.journal_rate, 1);
	crc32_init();
	jrnl_recover();
	jr.phase = J_IDLE;
}

static void jrnl_complete(struct dreq *r, u64 now, u64 *newest)
{
	r->busy = false;
	d.inflight--;
	if (r->status != BLK_S_OK) {
		d.errors++;
		if (err_print_ok(now))
			gprintf("disk: ERROR %s sector=%lu blocks=%u status=%u\n",
				type_name(r->hdr.type), r->hdr.sector, r->nblocks, r->status);
		return;
	}
	switch (r->hdr.type) {
	case BLK_T_OUT:
		d.written += (u64)r->nblocks * BLOCK;
		jr.written += r->nblocks;
		break;
	case BLK_T_FLUSH:
		d.flushes++;
		if (r->block > jr.flushed_seq)	/* the newest seq it covers */
			jr.flushed_seq = r->block;
		break;
	case BLK_T_IN:
		d.read += (u64)r->nblocks * BLOCK;
		for (u32 i = 0; i < r->nblocks; i++)
			jrnl_verify(r->buf + i * (BLOCK / 8), r->block + i, now, newest);
		jr.verified += r->nblocks;
		jr.scan += r->nblocks;
		if (jr.scan >= jr.nrec) {
			jr.scan = 0;
			jr.passes++;
		}
		break;
	}
}

/*
 * The end (runtime= expired): the journal stops, what is in flight
 * completes, a last FLUSH, then every block of the range is verified.
 */
static void jrnl_final(void)
{
	u64 t0 = gclock(), newest = 0, records = 0, e0 = d.errors;
	u32 id, len;

	while (d.inflight && gclock() - t0 < ms_to_tsc(VIRTIO_TIMEOUT_MS)) {
		struct dreq *r;

		if (!vq_used(&q, &id, &len)) {
			cpu_relax();
			continue;
		}
		if ((r = used_req(id)))
			jrnl_complete(r, gclock(), &newest);
	}
	jr.stopped = true;
	if (d.inflight) {
		d.errors++;
		gprintf("journal: verify skipped: %u requests did not complete\n", d.inflight);
		goto out;
	}
	if (d.flush && jr.flushed_seq < jr.next_seq - 1) {
		int st = sync_request(BLK_T_FLUSH, 0, 0);

		if (st == BLK_S_OK) {
			d.flushes++;
			jr.flushed_seq = jr.next_seq - 1;
		} else {
			d.errors++;
			gprintf("disk: ERROR flush sector=0 blocks=0 status=%d\n", st);
		}
	} else if (!d.flush) {
		jr.flushed_seq = jr.next_seq - 1;
	}
	newest = 0;
	for (u64 blk = d.first; blk < d.end; ) {
		u32 n = (u32)MIN((u64)CHUNK_BLOCKS, d.end - blk);
		int st = sync_request(BLK_T_IN, blk * (BLOCK / 512), n * BLOCK);

		if (st != BLK_S_OK) {
			d.errors++;
			gprintf("disk: ERROR read sector=%lu blocks=%u status=%d\n",
				blk * (BLOCK / 512), n, st);
		} else {
			d.read += (u64)n * BLOCK;
			for (u32 i = 0; i < n; i++)
				records += jrnl_verify(reqs[0].buf + i * (BLOCK / 8), blk + i,
						       gclock(), &newest);
		}
		blk += n;
	}
	gprintf("journal: verify records=%lu newest=%lu errors=%lu flushed=%lu verify_errors=%lu\n",
		records, newest, d.errors, jr.flushed_seq, d.errors - e0);
out:
	__atomic_store_n(&jr.final_done, true, __ATOMIC_RELEASE);
}

void disk_before_poweroff(void)
{
	u64 t0;

	if (!jr.on || jr.final_done)
		return;
	/* Power-off comes from CPU 0: is that the CPU that polls the disk? */
	if (devices_inline || !(cfg.workload & WL_MEM)) {
		jrnl_final();
		return;
	}
	jr.stop_req = true;
	t0 = gclock();
	while (!__atomic_load_n(&jr.final_done, __ATOMIC_ACQUIRE) &&
	       gclock() - t0 < ms_to_tsc(JRNL_FINAL_WAIT_MS))
		cpu_relax();
}

static enum poll_result jrnl_poll(u64 now)
{
	bool progress = false, queued = false;
	u64 newest = 0;
	struct dreq *r;
	u32 id, len;

	while (vq_used(&q, &id, &len)) {
		if ((r = used_req(id)))
			jrnl_complete(r, now, &newest);
		progress = true;
	}
	if (jr.stop_req && !jr.final_done) {
		jrnl_final();
		return POLL_PROGRESS;
	}
	if (jr.stopped)
		return POLL_IDLE;

	switch (jr.phase) {
	case J_IDLE:
		if (jr.rec_ticks) {
			if ((int64_t)(now - jr.next_t) < 0)
				return progress ? POLL_PROGRESS : POLL_WAIT;
			/* After a pause, catch up by at most 10 ms' worth. */
			if ((int64_t)(now - jr.next_t) > (int64_t)ms_to_tsc(JRNL_BACKLOG_MS))
				jr.next_t = now - ms_to_tsc(JRNL_BACKLOG_MS);
			jr.next_t += cfg.journal_flush * jr.rec_ticks;
		}
		jr.group_end = jr.next_seq + cfg.journal_flush;
		jr.phase = J_WRITE;
		/* fall through */
	case J_WRITE:
		while (jr.next_seq < jr.group_end && (r = free_slot())) {
			u64 blk = d.first + (jr.next_seq - 1) % jr.nrec;
			u32 n = (u32)MIN(MIN((u64)CHUNK_BLOCKS, jr.group_end - jr.next_seq),
					 d.end - blk);

			for (u32 i = 0; i < n; i++)
				jrnl_fill(r->buf + i * (BLOCK / 8), jr.next_seq + i, blk + i);
			r->block = blk;
			r->nblocks = n;
			submit(r, BLK_T_OUT, blk * (BLOCK / 512), n * BLOCK);
			jr.next_seq += n;
			queued = true;
		}
		if (jr.next_seq < jr.group_end || d.inflight)
			break;
		progress = true;
		if (d.flush) {
			r = free_slot();
			r->block = jr.group_end - 1;
			r->nblocks = 0;
			submit(r, BLK_T_FLUSH, 0, 0);
			queued = true;
			jr.phase = J_FLUSH;
			break;
		}
		jr.flushed_seq = jr.group_end - 1;	/* no FLUSH: write-through */
		/* fall through */
	case J_FLUSH:
		if (d.inflight)
			break;
		r = free_slot();
		r->block = d.first + jr.scan;
		r->nblocks = (u32)MIN((u64)CHUNK_BLOCKS, jr.nrec - jr.scan);
		submit(r, BLK_T_IN, r->block * (BLOCK / 512), r->nblocks * BLOCK);
		queued = true;
		progress = true;
		jr.phase = J_SCAN;
		break;
	case J_SCAN:
		if (!d.inflight) {
			jr.phase = J_IDLE;
			progress = true;
		}
		break;
	}
	if (queued)
		vq_kick(&q);
	if (progress) {
		d.stuck = false;
	} else if (d.inflight && !d.stuck) {
		u64 oldest = now;

		for (unsigned i = 0; i < nslots; i++)
			if (reqs[i].busy && (int64_t)(reqs[i].t_submit - oldest) < 0)
				oldest = reqs[i].t_submit;
		if (now - oldest > ms_to_tsc(VIRTIO_TIMEOUT_MS)) {
			vq_report_timeout(&q, VIRTIO_TIMEOUT_MS, d.inflight);
			d.stuck = true;
		}
	}
	if (progress || queued)
		return POLL_PROGRESS;
	return POLL_WAIT;
}

bool disk_setup(void)
{
	u64 cap_blocks;

	if (!virtio_find(&vd, VIRTIO_ID_BLK, "blk")) {
		gprintf("disk: no usable virtio-blk device\n");
		return false;
	}
	if (!virtio_start(&vd, 1ULL << VIRTIO_BLK_F_RO | 1ULL << VIRTIO_BLK_F_FLUSH))
		return false;
	if (!vd.devcfg || !virtio_queue(&vd, &q, 0, 128)) {
		gprintf("disk: virtio-blk has no %s\n", vd.devcfg ? "queue 0" : "device config");
		return false;
	}
	virtio_ready(&vd);
	virtio_cfg_read(&vd, 0, &d.capacity, 8);
	d.ro = virtio_has(&vd, VIRTIO_BLK_F_RO);
	d.flush = virtio_has(&vd, VIRTIO_BLK_F_FLUSH);
	nslots = MIN((unsigned)MAX_SLOTS, q.size / 3u);
	/* Benchmark buffers (disk_qd of them) are sized once the range is known. */
	reqs[0].buf = (u64 *)boot_alloc(CHUNK_BLOCKS * BLOCK);

	read_serial();
	gprintf("disk: found capacity_mib=%lu serial=%s ro=%u flush=%u queue_size=%u\n",
		d.capacity >> 11, d.serial, d.ro, d.flush, q.size);

	cap_blocks = d.capacity / (BLOCK / 512);
	d.first = cfg.disk_start_mib * (MiB / BLOCK);
	d.end = d.first + cfg.disk_mib * (MiB / BLOCK);
	if (d.end > cap_blocks || d.end < d.first) {
		d.end = cap_blocks;
		if (d.first < d.end)
			gprintf("disk: range clipped to the capacity: %lu MiB from %lu MiB\n",
				(d.end - d.first) * BLOCK / MiB, cfg.disk_start_mib);
	}
	if (d.first >= d.end) {
		gprintf("disk: disk_start=%lu MiB is beyond the capacity\n", cfg.disk_start_mib);
		return false;
	}
	if (cfg.disk_nbench) {
		u32 maxbs = CHUNK_BLOCKS * BLOCK;
		unsigned maxqd = 1;

		if (cfg.disk_bs && bench_bs(BM_SEQREAD) != cfg.disk_bs)
			gprintf("godwit-guest: bad value for disk_bs, using the modes' defaults\n");
		for (unsigned i = 0; i < cfg.disk_nbench; i++) {
			maxbs = MAX(maxbs, bench_bs(cfg.disk_bench[i]));
			maxqd = MAX(maxqd, bench_qd(i));
			if (bench_qd(i) < (cfg.disk_bench_qd[i] ? cfg.disk_bench_qd[i] : cfg.disk_qd))
				gprintf("godwit-guest: %s queue depth clipped to %u\n",
					bench_names[cfg.disk_bench[i]], bench_qd(i));
		}
		for (unsigned i = 0; i < maxqd; i++) {
			if (i || maxbs > CHUNK_BLOCKS * BLOCK)
				reqs[i].buf = (u64 *)boot_alloc(maxbs);
			for (u32 b = 0; b < maxbs / BLOCK; b++)
				pattern_fill(reqs[i].buf + b * (BLOCK / 8), b, i + 1, BENCH_MAGIC);
		}
		bm.rng = rdtsc() | 1;
	} else {
		for (unsigned i = 1; i < nslots; i++)
			reqs[i].buf = (u64 *)boot_alloc(CHUNK_BLOCKS * BLOCK);
	}
	if (cfg.disk_ro_check)
		ro_check();
	d.gen = d.ro ? 0 : 1;
	d.phase = d.ro ? PH_READ : PH_WRITE;
	d.cursor = d.first;
	if (cfg.disk_journal)
		jrnl_setup();
	return true;
}

static void verify_block(const u64 *p, u64 blk, u64 now)
{
	u64 found_gen = p[1], found_idx = p[0], expected = d.ro ? found_gen : d.gen;
	const char *what;

	if (d.ro) {
		/* Only blocks that hold the pattern, against their own generation. */
		if (p[3] != BLK_MAGIC || pattern_check(p, blk, found_gen, BLK_MAGIC, NULL))
			return;
		what = "corrupt";
	} else {
		if (pattern_check(p, blk, d.gen, BLK_MAGIC, NULL))
			return;
		if (found_idx == blk && pattern_check(p, blk, found_gen, BLK_MAGIC, NULL))
			what = found_gen < d.gen ? "stale" : "newer";
		else
			what = "corrupt";
	}
	d.errors++;
	if (err_print_ok(now))
		gprintf("disk: ERROR block=%lu expected gen=%lu found gen=%lu index=%lu content=%s\n",
			blk, expected, found_gen, found_idx, what);
}

static void complete(struct dreq *r, u64 now)
{
	r->busy = false;
	d.inflight--;
	if (r->status != BLK_S_OK) {
		d.errors++;
		if (err_print_ok(now))
			gprintf("disk: ERROR %s sector=%lu blocks=%u status=%u\n",
				type_name(r->hdr.type), r->hdr.sector, r->nblocks, r->status);
		return;
	}
	switch (r->hdr.type) {
	case BLK_T_OUT:
		d.written += (u64)r->nblocks * BLOCK;
		break;
	case BLK_T_IN:
		d.read += (u64)r->nblocks * BLOCK;
		for (u32 i = 0; i < r->nblocks; i++)
			verify_block(r->buf + i * (BLOCK / 8), r->block + i, now);
		break;
	case BLK_T_FLUSH:
		d.flushes++;
		break;
	}
}

static struct dreq *free_slot(void)
{
	for (unsigned i = 0; i < nslots; i++)
		if (!reqs[i].busy)
			return &reqs[i];
	return NULL;
}

/* Start the next data request of this pass; false if none is left or no slot. */
static bool next_request(void)
{
	struct dreq *r;
	u32 n;

	if (d.cursor >= d.end || !(r = free_slot()))
		return false;
	n = (u32)MIN((u64)CHUNK_BLOCKS, d.end - d.cursor);
	r->block = d.cursor;
	r->nblocks = n;
	if (d.phase == PH_WRITE) {
		for (u32 i = 0; i < n; i++)
			pattern_fill(r->buf + i * (BLOCK / 8), d.cursor + i, d.gen, BLK_MAGIC);
		submit(r, BLK_T_OUT, d.cursor * (BLOCK / 512), n * BLOCK);
	} else {
		submit(r, BLK_T_IN, d.cursor * (BLOCK / 512), n * BLOCK);
	}
	d.cursor += n;
	return true;
}

/* Start the next benchmark request in r. */
static void bench_submit(struct dreq *r, unsigned m)
{
	u64 base = d.first * BLOCK, range = (d.end - d.first) * BLOCK, off;

	if (bench_is_seq(m)) {
		if (bm.cursor + bm.bs > range)
			bm.cursor = 0;
		off = bm.cursor;
		bm.cursor += bm.bs;
	} else {
		bm.rng ^= bm.rng << 13;
		bm.rng ^= bm.rng >> 7;
		bm.rng ^= bm.rng << 17;
		off = bm.rng % (range / bm.bs) * bm.bs;
	}
	r->block = (base + off) / BLOCK;
	r->nblocks = bm.bs / BLOCK;
	submit(r, bench_is_write(m) ? BLK_T_OUT : BLK_T_IN, (base + off) / 512, bm.bs);
}

/*
 * "diskbench: mode=M bs=B qd=Q ops=N mib=N secs=S.mmm iops=N mib_s=X.Y
 * lat_us=X.Y errors=N kicks=N"; lat_us is the mean time a request was in
 * flight (qd / iops), kicks the notifications sent (the device may ask for
 * none while it is busy: VIRTQ_USED_F_NO_NOTIFY).
 */
static void bench_print(unsigned m, u64 t1)
{
	u64 us = (t1 - bm.t0) * 1000 / plat.tsc_khz, lat10, mibs10;

	if (!us)
		us = 1;
	lat10 = bm.ops ? us * 10 * bm.qd / bm.ops : 0;
	mibs10 = bm.bytes * 10000000 / us / MiB;	/* < 2^64 for hours at GB/s */
	gprintf("diskbench: mode=%s bs=%u qd=%u ops=%lu mib=%lu secs=%lu.%03lu iops=%lu "
		"mib_s=%lu.%lu lat_us=%lu.%lu errors=%lu kicks=%lu\n", bench_names[m], bm.bs, bm.qd,
		bm.ops, bm.bytes >> 20, us / 1000000, us / 1000 % 1000, bm.ops * 1000000 / us,
		mibs10 / 10, mibs10 % 10, lat10 / 10, lat10 % 10, bm.errors, q.kicks - bm.kicks0);
}

/* disk_poll() for the benchmark modes. */
static enum poll_result bench_poll(void)
{
	bool queued = false;
	unsigned m;
	u32 id, len;
	u64 now;

	if (bm.idx >= cfg.disk_nbench)
		return POLL_IDLE;
	m = cfg.disk_bench[bm.idx];
	while (vq_used(&q, &id, &len)) {
		struct dreq *r = used_req(id);

		if (!r)
			continue;
		r->busy = false;
		d.inflight--;
		if (r->status != BLK_S_OK) {
			bm.errors++;
			d.errors++;
			if (err_print_ok(gclock()))
				gprintf("disk: ERROR %s sector=%lu blocks=%u status=%u\n",
					type_name(r->hdr.type), r->hdr.sector, r->nblocks, r->status);
			continue;
		}
		bm.ops++;
		bm.bytes += bm.bs;
		if (r->hdr.type == BLK_T_OUT)
			d.written += bm.bs;
		else
			d.read += bm.bs;
	}
	now = gclock();
	if (!bm.running) {
		if (bench_is_write(m) && d.ro) {
			gprintf("diskbench: mode=%s skipped: read-only disk\n", bench_names[m]);
			goto next;
		}
		bm.bs = bench_bs(m);
		bm.qd = bench_qd(bm.idx);
		bm.cursor = 0;
		bm.ops = bm.bytes = bm.errors = 0;
		bm.kicks0 = q.kicks;
		bm.t0 = now;
		bm.deadline = now + ms_to_tsc(cfg.disk_secs * 1000);
		bm.running = true;
	}
	if ((int64_t)(now - bm.deadline) < 0) {
		for (unsigned i = 0; i < bm.qd; i++) {
			if (reqs[i].busy)
				continue;
			bench_submit(&reqs[i], m);
			queued = true;
		}
		if (queued)
			vq_kick(&q);
		return POLL_WAIT;
	}
	if (d.inflight) {
		if (now - bm.deadline > ms_to_tsc(VIRTIO_TIMEOUT_MS) && !d.stuck) {
			vq_report_timeout(&q, VIRTIO_TIMEOUT_MS, d.inflight);
			d.stuck = true;
		}
		return POLL_WAIT;
	}
	bench_print(m, now);
	bm.running = false;
next:
	if (++bm.idx == cfg.disk_nbench)
		gprintf("diskbench: done\n");
	return POLL_PROGRESS;
}

enum poll_result disk_poll(u64 now)
{
	bool progress = false, queued = false;
	u32 id, len;

	if (cfg.disk_nbench)
		return bench_poll();
	if (jr.on)
		return jrnl_poll(now);

	while (vq_used(&q, &id, &len)) {
		struct dreq *r = used_req(id);

		if (r)
			complete(r, now);
		progress = true;
	}

	switch (d.phase) {
	case PH_WRITE:
	case PH_READ:
		while (next_request())
			queued = true;
		if (d.cursor < d.end || d.inflight)
			break;
		if (d.phase == PH_WRITE && d.flush) {
			struct dreq *r = free_slot();

			r->nblocks = 0;
			submit(r, BLK_T_FLUSH, 0, 0);
			queued = true;
			d.phase = PH_FLUSH;
		} else if (d.phase == PH_WRITE) {
			d.phase = PH_READ;
		} else {
			d.gen++;
			d.phase = d.ro ? PH_READ : PH_WRITE;
		}
		d.cursor = d.first;
		progress = true;
		break;
	case PH_FLUSH:
		if (!d.inflight) {
			d.phase = PH_READ;
			progress = true;
		}
		break;
	}
	if (queued)
		vq_kick(&q);

	if (progress) {
		d.stuck = false;
	} else if (d.inflight && !d.stuck) {
		u64 oldest = now;

		for (unsigned i = 0; i < nslots; i++)
			if (reqs[i].busy && (int64_t)(reqs[i].t_submit - oldest) < 0)
				oldest = reqs[i].t_submit;
		if (now - oldest > ms_to_tsc(VIRTIO_TIMEOUT_MS)) {
			vq_report_timeout(&q, VIRTIO_TIMEOUT_MS, d.inflight);
			d.stuck = true;
		}
	}
	if (progress || queued)
		return POLL_PROGRESS;
	return d.inflight && !d.stuck ? POLL_WAIT : POLL_IDLE;
}

void disk_report(u64 now)
{
	u64 t10 = t10_since_boot(now);

	if (jr.on) {
		gprintf("journal: t=%lu.%lu seq=%lu written=%lu flushed=%lu errors=%lu verified=%lu "
			"passes=%lu\n", t10 / 10, t10 % 10, jr.flushed_seq, jr.written,
			jr.flushed_seq - (jr.first_seq - 1), d.errors, jr.verified, jr.passes);
		return;
	}
	gprintf("disk: t=%lu.%lu gen=%lu written_mib=%lu read_mib=%lu errors=%lu flushes=%lu "
		"serial=%s capacity_mib=%lu ro=%u\n", t10 / 10, t10 % 10, d.gen, d.written >> 20,
		d.read >> 20, d.errors, d.flushes, d.serial, d.capacity >> 11, d.ro);
}
