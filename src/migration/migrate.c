/*
 * migrate.c - live migration (docs/migration.md, migrate.h).
 *
 * Source: migrate_start() (API, loop thread) starts mig_thread(), which
 * owns the connection and the stream writer:
 *
 *   connect; preamble + CONFIG; wait for ACCEPT
 *   dirty logging on; round 1 = every page, round n = the pages dirtied
 *     since round n-1 (dirty bits cleared chunk by chunk right before the
 *     chunk is copied); until what is left fits the downtime limit
 *   vm_pause, dev_quiesce_all; the last dirty pages, VM/CPU/DEVICE, EOF
 *   READY -> COMMIT -> DONE: release the VM (exit EXIT_MIGRATED)
 *   (with p.gate: READY, release, wait at the commit gate for migrate_commit(),
 *   then COMMIT or ABORT)
 *
 * The thread pauses and resumes the VM itself: while a migration is busy
 * the API refuses pause, resume and snapshot (migrate_busy()), so nothing
 * else does.  m->lock protects the progress and the status; the status
 * changes to COMMITTING under it after checking `cancel`, so a cancel and
 * the COMMIT never cross.  At the gate, the thread waits on m->cond for
 * `decision` (or `cancel`); migrate_commit() sets COMMITTING itself when it
 * decides to commit, so a cancel after it is refused.
 */
#include <errno.h>
#include <stddef.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "godwit/crc32c.h"
#include "godwit/dev.h"
#include "godwit/disk.h"
#include "godwit/le.h"
#include <sys/random.h>

#include "godwit/log.h"
#include "godwit/throttle.h"
#include "godwit/migrate.h"
#include "godwit/postcopy.h"
#include "godwit/snapshot.h"
#include "godwit/stream.h"
#include "godwit/tls.h"
#include "godwit/virtio.h"
#include "godwit/vm.h"
#include "channel.h"
#include "dirty_walk.h"

#define MIG_ACCEPT_TIMEOUT_MS 60000          /* the destination builds its VM meanwhile */
/* The TLS handshake: a destination may first spend up to 10 s dropping a stray connection. */
#define MIG_HANDSHAKE_TIMEOUT_MS 30000
#define MIG_PAUSE_FIXED_MS 2.0               /* mig_fixed_pause_ms() */
#define MIG_CHUNK_PAGES      4096            /* 16 MiB: clear, copy, send */
#define MIG_RELEASE_WAIT_MS  5000            /* for a client to read the final report */
#define MIG_DRAIN_BYTES      (64 * 1024)     /* mig_drain(): "the send queue is empty" */
#define MIG_DRAIN_MAX_MS     2000.0
/* mig_wait_applied(): how long the source waits, VM running, for the destination to catch up. */
#define MIG_APPLIED_WAIT_MS  5000.0
#define MIG_LAG_ROUNDS       2               /* extra rounds taken for the destination's lag */
/* Rounds smaller say nothing about the link: Linux's largest default TCP receive buffer is 6 MiB. */
#define MIG_BW_MIN_BYTES     (8 * MiB)

struct migration {
	struct vm *vm;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
	bool thread_started;
	bool incoming;
	bool cancel;                 /* under lock */
	bool in_handoff;             /* the stream is sent: a cancel leaves writing open (lock) */
	bool reported;               /* a client read the final status (under lock) */
	enum { GATE_WAIT, GATE_COMMIT, GATE_ABORT } decision;   /* at the gate (under lock) */
	int fd;                      /* the connection (under lock for shutdown) */
	struct migrate_params p;
	struct migrate_progress prog;    /* under lock */
	struct timespec t_start;
	uint64_t *bitmap[2], *scratch[2];
	struct disk_mig *dm;         /* --with-disks: the images copied (thread's) */
	struct migrate_round *hist;  /* the finished pre-copy rounds (under lock) */
	uint32_t nhist, hist_cap;    /* hist_cap = p.max_rounds */
	bool pc_holes;               /* destination: post-copy pages are missing here (no resume) */
	bool resume_req;             /* migrate_resume(): connect again (under lock) */
};

const char *migrate_status_name(enum mig_status s)
{
	switch (s) {
	case MIG_NONE:       return "none";
	case MIG_SETUP:      return "setup";
	case MIG_ACTIVE:     return "active";
	case MIG_STOP_COPY:  return "stop-and-copy";
	case MIG_COMMITTING: return "committing";
	case MIG_COMPLETED:  return "completed";
	case MIG_FAILED:     return "failed";
	case MIG_CANCELLED:  return "cancelled";
	case MIG_IN_DOUBT:   return "in-doubt";
	case MIG_INCOMING:   return "incoming";
	case MIG_COMMIT_WAIT: return "commit-wait";
	case MIG_POSTCOPY:   return "postcopy-active";
	case MIG_POSTCOPY_PAUSED: return "postcopy-paused";
	case MIG_POSTCOPY_FAILED: return "postcopy-failed";
	case MIG_RECONNECTING: return "reconnecting";
	}
	return "unknown";
}

const char *migrate_phase_name(enum mig_phase ph)
{
	switch (ph) {
	case MIG_PHASE_STOP:    return "stop";
	case MIG_PHASE_MEMORY:  return "memory";
	case MIG_PHASE_STATE:   return "state";
	case MIG_PHASE_READY:   return "ready";
	case MIG_PHASE_RELEASE: return "release";
	case MIG_PHASE_GATE:    return "gate";
	case MIG_PHASE_COMMIT:  return "commit";
	case MIG_PHASE_COUNT:   break;
	}
	return "unknown";
}

bool migrate_status_final(enum mig_status s)
{
	return s == MIG_COMPLETED || s == MIG_FAILED || s == MIG_CANCELLED || s == MIG_INCOMING ||
	       s == MIG_POSTCOPY_FAILED;
}

/* ---- the migration record --------------------------------------------------------------- */

static struct migration *mig_get(struct vm *vm, bool create)
{
	struct migration *m = vm->mig;

	if (m || !create)
		return m;
	m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->vm = vm;
	m->fd = -1;
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->cond, NULL);
	vm->mig = m;
	return m;
}

static void mig_set_status(struct migration *m, enum mig_status st)
{
	pthread_mutex_lock(&m->lock);
	m->prog.status = st;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
}

__attribute__((format(printf, 3, 4)))
static void mig_fail(struct migration *m, enum mig_status st, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&m->lock);
	if (!m->prog.error[0]) {
		va_start(ap, fmt);
		vsnprintf(m->prog.error, sizeof(m->prog.error), fmt, ap);
		va_end(ap);
	}
	m->prog.status = st;
	m->prog.total_ms = ms_since(&m->t_start);
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
}

static bool mig_cancelled(struct migration *m)
{
	bool c;

	pthread_mutex_lock(&m->lock);
	c = m->cancel;
	pthread_mutex_unlock(&m->lock);
	return c;
}

static bool mig_vm_stopping(struct vm *vm)
{
	bool s;

	pthread_mutex_lock(&vm->lock);
	s = vm->state == VM_STATE_STOPPING;
	pthread_mutex_unlock(&vm->lock);
	return s;
}

/* ---- the source thread ------------------------------------------------------------------- */

struct mig_run {
	struct migration *m;
	struct vm *vm;
	struct stream_writer *w;
	struct conn c;               /* the connection: plain, or TLS with m->p.tls */
	char err[512];
	bool paused;                 /* we paused the VM and quiesced its devices */
	struct timespec t_pace;      /* bandwidth pacing: start of the current window */
	uint64_t pace_bytes;         /* stream offset at t_pace */
	bool pace;                   /* apply --max-bandwidth (not during stop-and-copy) */
	uint32_t round;              /* the pre-copy round being sent */
	uint64_t bytes_before, pages_before, zero_before;   /* of the connections before r->w */
	struct stream_compress_stats z_before;              /* the same, compression */
	/* p.reconnect_s: the round each page was last queued in (0: never), per region */
	uint16_t *sent_round[2];
	uint8_t token[SNAPSHOT_TOKEN_LEN];
	struct throttle *thr;        /* p.throttle: the vCPUs' throttle during pre-copy */
	double budget;               /* bytes/s the throttle lets the vCPUs dirty (0: none) */
	bool pc_switch;              /* switch to post-copy at the pause */
	uint64_t pc_token;           /* names our request channel to the destination */
	int pc_rq;                   /* the request channel, or -1 */
	struct pc_src *pc;           /* its server */
	/* Several channels: channel 0 is r->w; co runs the others (channel.h). */
	unsigned int nchan;
	struct snapshot_channel sc;
	struct chan_out *co;
	/* APPLIED (SNAPSHOT_ID_ACKS): the destination said it sends them; the last pass applied. */
	bool acks;
	bool acks_lost;              /* the connection failed reading them: not until resumed */
	uint32_t applied;
	unsigned int lag_rounds;     /* rounds taken because the destination was behind */
	/* The pause's phases: ms from the pause to the end of each (mig_phases()). */
	double ms_stopped, ms_ram, ms_state, ms_ready, ms_released, ms_committed;
};

/* Publish the writer's counters. */
static void mig_publish(struct mig_run *r)
{
	struct stream_ram_stats st;
	uint64_t cb, cp, cz;

	stream_writer_ram_stats(r->w, &st);
	chan_out_counters(r->co, &cb, &cp, &cz);
	pthread_mutex_lock(&r->m->lock);
	r->m->prog.bytes = r->bytes_before + stream_writer_offset(r->w) + cb;
	r->m->prog.pages = r->pages_before + st.pages + cp;
	r->m->prog.zero_pages = r->zero_before + st.zero_pages + cz;
	{
		struct stream_compress_stats z;

		stream_writer_compress_stats(r->w, &z);
		chan_out_compress_stats(r->co, &z);
		r->m->prog.compress_st.sections = r->z_before.sections + z.sections;
		r->m->prog.compress_st.bytes_in = r->z_before.bytes_in + z.bytes_in;
		r->m->prog.compress_st.bytes_out = r->z_before.bytes_out + z.bytes_out;
		r->m->prog.compress_st.switches = r->z_before.switches + z.switches;
		r->m->prog.compress_st.active = z.active;
	}
	if (r->m->dm) {
		struct disk_mig_stats ds;

		disk_mig_stats(r->m->dm, &ds);
		r->m->prog.disk_bytes = ds.bytes + ds.zero_bytes;
		r->m->prog.disk_rounds = ds.rounds;
	}
	pthread_mutex_unlock(&r->m->lock);
}

/* Stream bytes sent on every channel so far (channels: as last published). */
static uint64_t mig_sent(struct mig_run *r)
{
	uint64_t cb, cp, cz;

	chan_out_counters(r->co, &cb, &cp, &cz);
	return stream_writer_offset(r->w) + cb;
}

/* Sleep as needed to keep the average under max_bandwidth; false if cancelled. */
static bool mig_pace(struct mig_run *r)
{
	/* With several channels each keeps to its share. */
	uint64_t bw = r->m->p.max_bandwidth / MAX(r->nchan, 1);

	if (!r->pace || !bw)
		return true;
	for (;;) {
		double sent = (double)(stream_writer_offset(r->w) - r->pace_bytes);
		double due_ms = sent / (double)bw * 1e3, el = ms_since(&r->t_pace);
		struct timespec ts;
		double nap;

		if (el >= due_ms)
			return true;
		if (mig_cancelled(r->m) || mig_vm_stopping(r->vm))
			return false;
		nap = MIN(due_ms - el, 100.0);
		ts.tv_sec = (time_t)(nap / 1e3);
		ts.tv_nsec = (long)((nap - (double)ts.tv_sec * 1e3) * 1e6);
		nanosleep(&ts, NULL);
	}
}

/* After each chunk of memory or disk: publish; stop on cancel or a stopping VM; pace. */
static int mig_chunk_done(void *opaque)
{
	struct mig_run *r = opaque;

	mig_publish(r);
	if (mig_cancelled(r->m))
		return -ECANCELED;
	if (r->co && chan_out_failed(r->co, r->err, sizeof(r->err)))
		return -EPIPE;
	if (mig_vm_stopping(r->vm)) {
		snprintf(r->err, sizeof(r->err), "the VM stopped during the migration");
		return -ESHUTDOWN;
	}
	if (!mig_pace(r))
		return mig_cancelled(r->m) ? -ECANCELED : -ESHUTDOWN;
	return 0;
}

/* Dirty pages of every region into the bitmaps (accumulating); total pages set. */
static int64_t mig_collect(struct mig_run *r)
{
	int64_t total = 0;

	for (unsigned int i = 0; i < r->vm->nr_mem; i++) {
		int64_t n = vm_dirty_log_get(r->vm, i, r->m->bitmap[i], r->m->scratch[i]);

		if (n < 0) {
			snprintf(r->err, sizeof(r->err), "cannot read the dirty log: %s",
				 strerror((int)-n));
			return n;
		}
		total += n;
	}
	return total;
}

/*
 * Send the pages set in the bitmaps, chunk by chunk: clear the chunk's
 * dirty bits in KVM (manual protection), queue its pages, flush (the pages
 * are copied now), forget the chunk's bits.  Returns 0 or -errno.
 */
/* Reconnecting: pages [first, first + n) set in bm go out in round r->round. */
static void mig_mark_sent(struct mig_run *r, unsigned int i, uint64_t first, uint64_t n,
			  const uint64_t *bm)
{
	for (uint64_t k = 0; k < n; k++)
		if (bm[k / 64] & (1ULL << (k % 64)))
			r->sent_round[i][first + k] = (uint16_t)r->round;
}

/* One chunk of region i on the main connection, its pages marked sent this round. */
static int mig_put_chunk(void *opaque, unsigned int i, uint64_t first, uint64_t n,
			 const uint64_t *bits)
{
	struct mig_run *r = opaque;

	if (r->sent_round[i])
		mig_mark_sent(r, i, first, n, bits);
	return dirty_send_chunk(r->vm, r->w, i, first, n, bits, r->err, sizeof(r->err));
}

static int mig_send_dirty(struct mig_run *r, bool clear)
{
	struct vm *vm = r->vm;
	int ret;

	uint64_t chunk = MIG_CHUNK_PAGES;

	/* Paced: chunks of ~100 ms at the limit, so the peer never sees a long silence. */
	if (r->pace && r->m->p.max_bandwidth)
		chunk = MAX(64, MIN(chunk, r->m->p.max_bandwidth / 10 / STREAM_PAGE_SIZE / 64 * 64));
	if (r->nchan > 1)
		return chan_send_dirty(vm, r->w, r->m->bitmap, 0, r->nchan, clear, chunk,
				       mig_chunk_done, r, r->err, sizeof(r->err));
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		ret = dirty_walk(vm, i, r->m->bitmap[i], 0, vm->mem[i].size / STREAM_PAGE_SIZE,
				 chunk, clear, mig_put_chunk, mig_chunk_done, r, r->err,
				 sizeof(r->err));
		if (ret)
			return ret;
	}
	return 0;
}

static int mig_alloc_bitmaps(struct mig_run *r)
{
	for (unsigned int i = 0; i < r->vm->nr_mem; i++) {
		size_t words = (r->vm->mem[i].size / STREAM_PAGE_SIZE + 63) / 64;

		r->m->bitmap[i] = calloc(words, sizeof(uint64_t));
		r->m->scratch[i] = calloc(words, sizeof(uint64_t));
		if (!r->m->bitmap[i] || !r->m->scratch[i])
			return -ENOMEM;
		if (r->m->p.reconnect_s) {
			r->sent_round[i] = calloc(r->vm->mem[i].size / STREAM_PAGE_SIZE,
						  sizeof(uint16_t));
			if (!r->sent_round[i])
				return -ENOMEM;
		}
	}
	/* The token the destination knows us by when we come back (SNAPSHOT_ID_RESUME). */
	if (r->m->p.reconnect_s &&
	    getrandom(r->token, sizeof(r->token), 0) != (ssize_t)sizeof(r->token))
		return -EIO;
	return 0;
}

static void mig_free_bitmaps(struct migration *m)
{
	for (unsigned int i = 0; i < ARRAY_SIZE(m->bitmap); i++) {
		free(m->bitmap[i]);
		free(m->scratch[i]);
		m->bitmap[i] = m->scratch[i] = NULL;
	}
}

/* Handshake: preamble + CONFIG, then the destination's verdict. */
/* The stream's preamble and CONFIG on r->w (not flushed); r->err on failure. */
static int mig_begin_stream(struct mig_run *r)
{
	struct stream_config *cfg = calloc(1, sizeof(*cfg));
	int ret;

	if (!cfg) {
		snprintf(r->err, sizeof(r->err), "out of memory");
		return -ENOMEM;
	}
	ret = snapshot_config_from_vm(cfg, r->vm);
	if (!ret && r->m->dm)
		ret = disk_mig_config(r->m->dm, cfg);
	if (ret) {
		snprintf(r->err, sizeof(r->err), "the VM's configuration does not fit a stream: %s",
			 strerror(-ret));
		free(cfg);
		return ret;
	}
	ret = stream_begin(r->w, cfg);
	free(cfg);
	if (ret)
		snprintf(r->err, sizeof(r->err), "sending the configuration: %s",
			 stream_writer_error(r->w));
	return ret;
}

static bool mig_chan_stop(void *opaque)
{
	struct mig_run *r = opaque;

	return mig_cancelled(r->m) || mig_vm_stopping(r->vm);
}

/* After ACCEPT: the other channels connect (channel.h); the same CONFIG on each. */
static int mig_chans_open(struct mig_run *r)
{
	struct stream_config *cfg = calloc(1, sizeof(*cfg));
	struct chan_out_params cp = {
		.vm = r->vm, .to = r->m->p.to, .tls = r->m->p.tls, .min_rate = r->m->p.min_rate,
		.max_bandwidth = r->m->p.max_bandwidth / r->nchan, .bitmap = r->m->bitmap,
		.compress = r->m->p.compress,
		.ch = r->sc, .stop = mig_chan_stop, .opaque = r,
	};
	int ret;

	if (!cfg) {
		snprintf(r->err, sizeof(r->err), "out of memory");
		return -ENOMEM;
	}
	ret = snapshot_config_from_vm(cfg, r->vm);
	if (ret) {
		snprintf(r->err, sizeof(r->err), "the VM's configuration does not fit a stream: %s",
			 strerror(-ret));
		free(cfg);
		return ret;
	}
	cp.cfg = cfg;
	ret = chan_out_open(&cp, &r->co, r->err, sizeof(r->err));
	free(cfg);
	if (!ret)
		log_info("migrate: %u channels connected", r->nchan);
	return ret;
}

static int mig_setup(struct mig_run *r)
{
	enum mig_msg type;
	char text[MIG_MSG_TEXT_MAX + 1];
	int ret;

	ret = mig_begin_stream(r);
	if (ret)
		return ret;
	if (r->sent_round[0]) {
		/* Tell the destination we come back if the connection breaks, and how to know us. */
		uint8_t p[4 + SNAPSHOT_TOKEN_LEN];
		uint32_t secs = r->m->p.reconnect_s;

		p[0] = (uint8_t)secs;
		p[1] = (uint8_t)(secs >> 8);
		p[2] = (uint8_t)(secs >> 16);
		p[3] = (uint8_t)(secs >> 24);
		memcpy(p + 4, r->token, SNAPSHOT_TOKEN_LEN);
		ret = stream_put_section(r->w, STREAM_VM, STREAM_F_OPTIONAL, SNAPSHOT_ID_RECONNECT, 1,
					 0, p, sizeof(p));
	}
	/* Optional: a destination that does not know it never sends APPLIED. */
	if (!ret)
		ret = stream_put_section(r->w, STREAM_VM, STREAM_F_OPTIONAL, SNAPSHOT_ID_ACKS, 1, 0,
					 NULL, 0);
	if (!ret && r->nchan > 1) {
		/* Required: a destination that does not take the other channels must refuse. */
		uint8_t p[SNAPSHOT_CHANNEL_LEN];

		snapshot_channel_encode(&r->sc, p);
		ret = stream_put_section(r->w, STREAM_VM, 0, SNAPSHOT_ID_CHANNEL, 1, 0, p, sizeof(p));
	}
	if (!ret)
		ret = stream_flush(r->w);
	if (ret) {
		snprintf(r->err, sizeof(r->err), "sending the configuration: %s",
			 stream_writer_error(r->w));
		return ret;
	}
	ret = migrate_msg_recv(&r->c, MIG_ACCEPT_TIMEOUT_MS, &type, text, sizeof(text));
	if (ret == -ECONNRESET) {
		snprintf(r->err, sizeof(r->err), "the destination closed the connection before "
			 "accepting the VM");
		return ret;
	}
	if (ret) {
		snprintf(r->err, sizeof(r->err), "no answer from the destination: %s",
			 ret == -EBADMSG ? "not a godwit migration peer" : conn_strerror(&r->c, -ret));
		return ret;
	}
	if (type == MIG_MSG_REFUSE || type == MIG_MSG_ERROR) {
		snprintf(r->err, sizeof(r->err), "the destination refused the VM: %.400s", text);
		return -EPERM;
	}
	if (type != MIG_MSG_ACCEPT) {
		snprintf(r->err, sizeof(r->err), "the destination sent message %d instead of ACCEPT",
			 type);
		return -EPROTO;
	}
	/* An older destination accepts with no text: it never sends APPLIED. */
	r->acks = !strcmp(text, "acks");
	return 0;
}

/*
 * Read the APPLIED messages that came (SNAPSHOT_ID_ACKS), waiting up to
 * timeout_ms for the first: 0, or -errno with r->err set (the destination
 * failed, or broke the protocol).  Another message here is the
 * destination's failure: it says why.
 */
static int mig_read_acks(struct mig_run *r, int timeout_ms)
{
	char text[MIG_MSG_TEXT_MAX + 1];
	enum mig_msg type;
	unsigned int pass;
	int n = 0, ret;

	while ((ret = conn_wait_input(&r->c, timeout_ms)) > 0) {
		timeout_ms = 0;
		/* A message is written whole: the rest of one begun comes within a round trip. */
		ret = migrate_msg_recv(&r->c, MIG_IO_TIMEOUT_MS, &type, text, sizeof(text));
		if (ret == -EBADMSG) {
			snprintf(r->err, sizeof(r->err), "the destination sent something else than a "
				 "control message in pre-copy");
			return ret;
		}
		if (ret) {
			/* The connection's failure: the next send finds it (and may reconnect). */
			log_warnx("migrate: reading the destination's acknowledgements: %s; no longer "
				  "waiting for them", conn_strerror(&r->c, -ret));
			r->acks_lost = true;
			return 0;
		}
		if (type == MIG_MSG_ERROR || type == MIG_MSG_REFUSE) {
			snprintf(r->err, sizeof(r->err), "the destination failed: %.400s", text);
			return -EIO;
		}
		if (type != MIG_MSG_APPLIED || sscanf(text, "pass=%u%n", &pass, &n) != 1 ||
		    text[n] || pass >= r->round) {
			snprintf(r->err, sizeof(r->err), "the destination sent %s \"%.64s\" in "
				 "pre-copy (round %u)", mig_msg_name(type), text, r->round);
			return -EPROTO;
		}
		r->applied = MAX(r->applied, pass);
	}
	if (ret < 0 && errno != EINTR) {
		log_warnx("migrate: waiting for the destination's acknowledgements: %s",
			  strerror(errno));
		r->acks_lost = true;
	}
	return 0;
}

/*
 * Before the pause: wait, the VM still running, until the destination has
 * applied pass `pass` (at most MIG_APPLIED_WAIT_MS).  What it has not
 * applied yet (in the two sockets' buffers: compressed, it can be hundreds
 * of MiB of pages) would otherwise be placed inside the pause, unpredicted.
 * The ms waited (>= 0), or -errno with r->err set.
 */
static double mig_wait_applied(struct mig_run *r, uint32_t pass)
{
	struct timespec t0;
	double ms;
	int ret;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (r->applied < pass && !r->acks_lost) {
		ms = ms_since(&t0);
		if (ms >= MIG_APPLIED_WAIT_MS) {
			log_warnx("migrate: the destination has not applied round %u after %.0f ms "
				  "(last applied: %u): pausing anyway", pass, ms, r->applied);
			break;
		}
		if (mig_cancelled(r->m) || mig_vm_stopping(r->vm))
			break;
		ret = mig_read_acks(r, (int)MIN(MIG_APPLIED_WAIT_MS - ms, 100.0) + 1);
		if (ret)
			return ret;
	}
	return ms_since(&t0);
}

_Static_assert(MIG_MAX_VCPUS >= STREAM_MAX_VCPUS, "a rate for every vCPU");

/*
 * With the dirty ring: each vCPU's dirty rate over the last ms, from the
 * pages its ring reported since *last (updated).  Under m->lock.
 */
static void mig_vcpu_rates(struct mig_run *r, uint64_t *last, double ms)
{
	struct migrate_progress *p = &r->m->prog;
	unsigned int n = MIN(r->vm->cfg.ncpus, MIG_MAX_VCPUS);

	if (!r->vm->dirty_ring)
		return;
	for (unsigned int c = 0; c < n; c++) {
		uint64_t now = vm_vcpu_dirty_pages(r->vm, c);

		p->vcpu_dirty_rate[c] = (double)(now - last[c]) * STREAM_PAGE_SIZE / ms * 1e3;
		last[c] = now;
	}
	p->nr_vcpu_rates = n;
}

/*
 * After a round, under m->lock: when what is left does not fit the downtime
 * limit and no longer halves from round to round, let the vCPUs dirty only
 * half of what the link carries (the throttle slows down those that write
 * the most, throttle.h); if what is left still does not shrink by a
 * quarter, halve that budget again (down to MIG_MIN_THROTTLE_BUDGET).  The
 * progress gets the budget and each vCPU's throttle.
 */
static void mig_throttle(struct mig_run *r, uint32_t round, double remaining,
			 double last_remaining, double bw, double expect)
{
	struct migrate_progress *p = &r->m->prog;

	if (!r->thr)
		return;
	if (round >= 2 && expect > (double)r->m->p.downtime_ms && last_remaining >= 0 &&
	    remaining > last_remaining * 0.5) {
		if (!r->budget)
			r->budget = bw * 0.5;
		else if (remaining > last_remaining * 0.75)
			r->budget *= 0.5;
		r->budget = MAX(MIN(r->budget, bw * 0.5), MIG_MIN_THROTTLE_BUDGET);
		throttle_set_budget(r->thr, r->budget, p->dirty_rate);
		if (p->throttle_budget != r->budget)
			log_info("migrate: round %u: %.1f MiB left, expected downtime %.0f ms: "
				 "the vCPUs may dirty %.1f MiB/s from now on", round,
				 remaining / (double)MiB, expect, r->budget / (double)MiB);
	}
	p->throttle_budget = r->budget;
	p->nr_vcpu_throttle = throttle_get_pct(r->thr, p->vcpu_throttle_pct, MIG_MAX_VCPUS);
}

/*
 * --postcopy auto, after a round that did not fit the downtime limit
 * (the migration thread: it alone writes those figures): switch once throttling would exceed its bound: the
 * budget reached its floor, or the busiest vCPU slept MIG_PC_AUTO_PCT of
 * its time or more at the end of two rounds in a row (*hot counts them);
 * without throttling, once pre-copy stopped converging; and at the round
 * limit rather than a long stop-and-copy.
 */
#define MIG_PC_AUTO_PCT 50.0
static bool mig_pc_auto(struct mig_run *r, uint32_t round, unsigned int *hot)
{
	const struct migrate_progress *p = &r->m->prog;
	double most = 0;

	for (unsigned int c = 0; c < p->nr_vcpu_throttle; c++)
		most = MAX(most, p->vcpu_throttle_pct[c]);
	*hot = most >= MIG_PC_AUTO_PCT ? *hot + 1 : 0;
	return *hot >= 2 || (r->budget > 0 && r->budget <= MIG_MIN_THROTTLE_BUDGET) ||
	       (!r->thr && p->not_converging) || round >= r->m->p.max_rounds;
}

/*
 * What the pause costs beyond the last pages, predicted: the CPU and
 * device state, the destination loading it, pausing and starting the vCPUs
 * (MIG_PAUSE_FIXED_MS, measured on the development hosts: 1-3 ms in all),
 * and two round trips (EOF to READY, COMMIT to DONE), from the kernel's
 * smoothed RTT of a TCP connection (a UNIX socket's is nil).
 */
static double mig_fixed_pause_ms(struct mig_run *r)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	double rtt = 0;

	if (r->c.fd >= 0 && !getsockopt(r->c.fd, IPPROTO_TCP, TCP_INFO, &ti, &len) &&
	    len >= offsetof(struct tcp_info, tcpi_rtt) + sizeof(ti.tcpi_rtt))
		rtt = ti.tcpi_rtt / 1000.0;
	return MIG_PAUSE_FIXED_MS + 2 * rtt;
}

/* A failure in pre-copy that a new connection may get past (p.reconnect_s). */
static bool mig_link_lost(struct mig_run *r, int ret)
{
	if (!r->m->p.reconnect_s || !r->sent_round[0] || mig_cancelled(r->m) ||
	    mig_vm_stopping(r->vm))
		return false;
	switch (-ret) {
	case EPIPE: case ECONNRESET: case ETIMEDOUT: case EIO: case ENOTCONN:
	case ECONNABORTED: case EPROTO: case EHOSTUNREACH: case ENETUNREACH: case ENETDOWN:
		return true;
	}
	return false;
}

/* Close the connection (the writer, TLS, the socket), keeping the counters. */
static void mig_disconnect(struct mig_run *r)
{
	struct stream_ram_stats st;

	if (r->w) {
		stream_writer_ram_stats(r->w, &st);
		r->bytes_before += stream_writer_offset(r->w);
		r->pages_before += st.pages;
		r->zero_before += st.zero_pages;
		{
			struct stream_compress_stats z;

			stream_writer_compress_stats(r->w, &z);
			r->z_before.sections += z.sections;
			r->z_before.bytes_in += z.bytes_in;
			r->z_before.bytes_out += z.bytes_out;
			r->z_before.switches += z.switches;
		}
		stream_writer_free(r->w);
		r->w = NULL;
	}
	pthread_mutex_lock(&r->m->lock);
	r->m->fd = -1;
	pthread_mutex_unlock(&r->m->lock);
	tls_sess_free(r->c.tls);
	if (r->c.fd >= 0)
		close(r->c.fd);
	r->c = conn_plain(-1);
}

/* The writer on r->c, with TLS and the destination's minimum rate. */
static int mig_writer(struct mig_run *r)
{
	struct stream_watchdog wd = {
		.min_bytes = r->m->p.min_rate * (MIG_RATE_WINDOW_MS / 1000),
		.window_ms = MIG_RATE_WINDOW_MS,
	};
	int ret = stream_writer_new(r->c.fd, &r->w);

	if (ret)
		return ret;
	stream_writer_set_tls(r->w, r->c.tls);
	stream_writer_set_watchdog(r->w, &wd);
	/*
	 * a socket: TCP's checksum or TLS's AEAD guards the pages (docs/stream-format.md);
	 * GODWIT_PAGE_CRC=on keeps the page CRC (RAM v1), for measuring what it costs
	 */
	stream_writer_set_page_crc(r->w, getenv("GODWIT_PAGE_CRC") &&
					 !strcmp(getenv("GODWIT_PAGE_CRC"), "on"));
	stream_writer_set_compress(r->w, r->m->p.compress);
	return 0;
}

/*
 * One try at taking the migration up again on a new connection: connect
 * (TLS as before), the CONFIG again, the token; the destination answers
 * RESUMED "round=N" (rounds before N are whole there).  0 and *whole; -EPERM
 * if the destination refused (no point trying again); other -errno: try
 * again.  r->err says why.
 */
static int mig_reconnect_once(struct mig_run *r, int timeout_ms, uint32_t *whole)
{
	struct migration *m = r->m;
	char text[MIG_MSG_TEXT_MAX + 1];
	enum mig_msg type;
	unsigned int n;
	int ret, fd = -1;

	ret = migrate_connect(m->p.to, &fd, r->err, sizeof(r->err));
	if (ret)
		return ret == -ECONNREFUSED || ret == -ENOENT ? -EPERM : ret;
	pthread_mutex_lock(&m->lock);
	m->fd = fd;
	pthread_mutex_unlock(&m->lock);
	r->c = conn_plain(fd);
	if (mig_cancelled(m))
		return -ECANCELED;
	if (m->p.tls) {
		ret = tls_handshake(m->p.tls, fd, timeout_ms, &r->c.tls, r->err, sizeof(r->err));
		if (ret)
			return ret;
	}
	ret = mig_writer(r);
	if (ret) {
		snprintf(r->err, sizeof(r->err), "out of memory");
		return ret;
	}
	ret = mig_begin_stream(r);
	if (!ret)
		ret = stream_put_section(r->w, STREAM_VM, 0, SNAPSHOT_ID_RESUME, 1, 0, r->token,
					 sizeof(r->token));
	if (!ret)
		ret = stream_flush(r->w);
	if (ret) {
		snprintf(r->err, sizeof(r->err), "sending the resume request: %s",
			 stream_writer_error(r->w));
		return ret;
	}
	ret = migrate_msg_recv(&r->c, timeout_ms, &type, text, sizeof(text));
	if (ret) {
		snprintf(r->err, sizeof(r->err), "no answer to the resume request: %s",
			 conn_strerror(&r->c, -ret));
		return ret;
	}
	if (type == MIG_MSG_REFUSE || type == MIG_MSG_ERROR) {
		snprintf(r->err, sizeof(r->err), "the destination refused to resume: %.400s", text);
		return -EPERM;
	}
	if (type != MIG_MSG_RESUMED || sscanf(text, "round=%u%n", whole, &n) != 1 ||
	    n != strlen(text) || *whole > r->round) {
		snprintf(r->err, sizeof(r->err), "the destination answered %s \"%.100s\" to the "
			 "resume request", mig_msg_name(type), text);
		return -EPERM;
	}
	return 0;
}

/*
 * Pre-copy's connection broke (r->err says how): connect again for up to
 * p.reconnect_s seconds, the VM running on here meanwhile.  Once the
 * destination is back, every page queued in a round it may not have whole
 * is marked dirty again, so the next round sends it (with whatever the
 * guest dirtied meanwhile).  0, or -errno with r->err set.
 */
static int mig_resume(struct mig_run *r)
{
	struct migration *m = r->m;
	uint32_t secs = m->p.reconnect_s, whole = 0;
	char first[512];
	struct timespec t;
	uint64_t again = 0;
	int ret;

	snprintf(first, sizeof(first), "%s", r->err);
	log_warnx("migrate: the connection broke in round %u (%s); connecting again for up to %u s",
		  r->round, first, secs);
	clock_gettime(CLOCK_MONOTONIC, &t);
	pthread_mutex_lock(&m->lock);
	m->prog.status = MIG_RECONNECTING;
	m->prog.reconnects++;
	pthread_mutex_unlock(&m->lock);
	for (;;) {
		double left = secs * 1000.0 - ms_since(&t);

		mig_disconnect(r);
		if (mig_cancelled(m))
			return -ECANCELED;
		if (mig_vm_stopping(r->vm)) {
			snprintf(r->err, sizeof(r->err), "the VM stopped during the migration");
			return -ESHUTDOWN;
		}
		if (left <= 0) {
			snprintf(r->err, sizeof(r->err), "%.300s; the destination did not come back "
				 "within %u s", first, secs);
			return -ETIMEDOUT;
		}
		ret = mig_reconnect_once(r, (int)MIN(left, (double)MIG_IO_TIMEOUT_MS), &whole);
		if (!ret)
			break;
		if (ret == -EPERM || ret == -ECANCELED) {
			mig_disconnect(r);
			if (ret == -EPERM) {
				char why[512];

				snprintf(why, sizeof(why), "%s", r->err);
				snprintf(r->err, sizeof(r->err), "%.250s; then: %.250s", first, why);
			}
			return ret;
		}
		log_debug("migrate: reconnecting: %s", r->err);
		{
			struct timespec nap = { .tv_nsec = 200 * 1000000L };

			nanosleep(&nap, NULL);
		}
	}
	for (unsigned int i = 0; i < r->vm->nr_mem; i++) {
		uint64_t npages = r->vm->mem[i].size / STREAM_PAGE_SIZE;

		for (uint64_t p = 0; p < npages; p++)
			if (r->sent_round[i][p] && r->sent_round[i][p] >= whole) {
				if (!(m->bitmap[i][p / 64] & (1ULL << (p % 64))))
					again++;
				m->bitmap[i][p / 64] |= 1ULL << (p % 64);
			}
	}
	r->err[0] = 0;
	r->pace_bytes = 0;
	clock_gettime(CLOCK_MONOTONIC, &r->t_pace);
	pthread_mutex_lock(&m->lock);
	m->prog.status = MIG_ACTIVE;
	m->prog.resent_pages += again;
	pthread_mutex_unlock(&m->lock);
	log_info("migrate: connected again after %.1f s; the destination has rounds before %u "
		 "whole: %llu pages to send again", ms_since(&t) / 1000, whole,
		 (unsigned long long)again);
	r->acks_lost = false;
	return 0;
}

/*
 * At the end of a round: wait (the guest running on) until the socket's send
 * queue, what the destination has not acknowledged yet, is down to
 * MIG_DRAIN_BYTES or MIG_DRAIN_MAX_MS passed.  Without it a small round
 * timed how fast its pages went into the socket buffer (megabytes, more
 * than the round itself), not the link: in tier 2 rounds of 2 MiB
 * measured 90 MiB/s on a link that carried 10-25, the rounds stopped on a
 * predicted 40 ms pause, and the pause then spent 630 ms pushing the pages
 * behind that queue.  Drained, each round's time is what its pages took to
 * reach the destination, and the pause starts with an empty queue.
 */
static void mig_drain(struct mig_run *r, double bw_est)
{
	struct timespec t0;

	if (r->c.fd < 0)
		return;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		/* Every channel's queue (channel_out.c: the others'). */
		int q0;
		uint64_t q = r->co ? chan_out_unsent(r->co) : 0;
		double ms;
		struct timespec nap;

		if (ioctl(r->c.fd, SIOCOUTQ, &q0))
			return;
		q += (uint64_t)MAX(q0, 0);
		if (q <= (uint64_t)MIG_DRAIN_BYTES * MAX(r->nchan, 1) || ms_since(&t0) >= MIG_DRAIN_MAX_MS ||
		    mig_cancelled(r->m) || mig_vm_stopping(r->vm))
			return;
		/* About a quarter of what is queued, at the last round's rate. */
		ms = bw_est > 0 ? (double)q / bw_est * 250.0 : 1.0;
		ms = MIN(MAX(ms, 0.2), 20.0);
		nap.tv_sec = 0;
		nap.tv_nsec = (long)(ms * 1e6);
		nanosleep(&nap, NULL);
	}
}

/*
 * After pre-copy round `round` (migrate.h).  Under the limit, one more round
 * costs about the downtime it saves: take it while rounds still shrink what
 * is left fast (to half or less).  And whatever the limit, stop once the
 * memory part is under 1 ms, or under a quarter of the limit and no longer
 * halving: what is over the limit then is the pause's fixed part (the state,
 * the hand-off's trips), which no round shortens.  In tier 2 (an emulated
 * host: a 10-30 ms loopback RTT, ~150 ms of state and hand-off) rounds
 * with nothing to send went on to --max-rounds, or, with the guest
 * dirtying, 0.2 MiB rounds went on until the throttle stopped the guest
 * for most of its time: a 0.9 s stall where QEMU's was 0.25 s.
 */
enum mig_next migrate_precopy_next(double expect, double expect_mem, double limit,
				   double remaining, double last_remaining, uint32_t round,
				   uint32_t max_rounds)
{
	/*
	 * After round 1 there is nothing to compare with: a second round costs
	 * what is left (under the limit) and takes the pause down to what the
	 * guest dirties meanwhile, so it is taken (only rounds 2 on can show
	 * they stopped halving).  Once round 1 got fast, stopping there left
	 * 10-16 ms pauses where two rounds give 1-2 ms.
	 */
	bool shrinking = last_remaining < 0 || remaining <= last_remaining / 2;

	if (expect <= limit && (round >= max_rounds || !shrinking))
		return MIG_STOP_UNDER;
	if (expect > limit &&
	    (expect_mem < 1.0 || (expect_mem <= limit / 4 && !shrinking)))
		return MIG_STOP_OVER;
	if (expect <= limit && expect_mem < 1.0)
		return MIG_STOP_UNDER;
	return MIG_NEXT_ROUND;
}

/* Pre-copy rounds until what is left fits the downtime limit (or the round limit). */
static int mig_precopy(struct mig_run *r)
{
	struct migration *m = r->m;
	struct vm *vm = r->vm;
	uint64_t vcpu_pages[MIG_MAX_VCPUS] = { 0 };
	double last_remaining = -1, bw_est = 0;
	unsigned int worse = 0, hot = 0;
	int64_t dirty;
	uint64_t disk_dirty = 0;
	int ret;

	if (m->dm) {
		/* Disks first: every data extent, with the blocks written meanwhile tracked. */
		ret = disk_mig_start(m->dm);
		if (ret) {
			snprintf(r->err, sizeof(r->err), "cannot track disk writes: %s", strerror(-ret));
			return ret;
		}
		mig_set_status(m, MIG_ACTIVE);
		clock_gettime(CLOCK_MONOTONIC, &r->t_pace);
		r->pace_bytes = stream_writer_offset(r->w);
		ret = disk_mig_first_pass(m->dm, r->w, mig_chunk_done, r, r->err, sizeof(r->err));
		if (!ret)
			ret = stream_flush(r->w);
		if (ret)
			return ret;
	}
	ret = vm_dirty_log_start(vm);
	if (ret) {
		snprintf(r->err, sizeof(r->err), "cannot track dirty memory: %s", strerror(-ret));
		return ret;
	}
	/* Round 1: every page (with manual protection the log starts all set anyway). */
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		uint64_t npages = vm->mem[i].size / STREAM_PAGE_SIZE;

		for (uint64_t p = 0; p < npages; p++)
			m->bitmap[i][p / 64] |= 1ULL << (p % 64);
		/* Without manual protection, this get starts KVM's log (clear + protect). */
		if (vm_dirty_log_get(vm, i, m->bitmap[i], m->scratch[i]) < 0) {
			snprintf(r->err, sizeof(r->err), "cannot read the dirty log");
			return -EIO;
		}
	}
	for (unsigned int c = 0; c < MIN(vm->cfg.ncpus, MIG_MAX_VCPUS); c++)
		vcpu_pages[c] = vm_vcpu_dirty_pages(vm, c);
	if (m->p.throttle) {
		ret = throttle_start(vm, &r->thr);
		if (ret)
			log_warnx("migrate: cannot start the throttle (%s): pre-copy may not converge",
				  strerror(-ret));
	}
	mig_set_status(m, MIG_ACTIVE);
	for (uint32_t round = 1; ; round++) {
		struct timespec t0;
		uint64_t off0 = mig_sent(r);
		double ms, bw, remaining, expect, expect_mem;
		enum mig_next next;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		r->t_pace = t0;
		r->pace_bytes = off0;
		pthread_mutex_lock(&m->lock);
		m->prog.round = round;
		pthread_mutex_unlock(&m->lock);
		r->round = round;
		if (round > 1) {
			ret = stream_put_section(r->w, STREAM_VM, 0, SNAPSHOT_ID_PRECOPY, 1, round,
						 NULL, 0);
			if (ret)
				snprintf(r->err, sizeof(r->err), "sending memory: %s",
					 stream_writer_error(r->w));
		}
		if (!ret && r->co)
			chan_out_pass(r->co, round, true, false, true);
		if (!ret)
			ret = mig_send_dirty(r, true);
		/* The other channels' share of the round (their errors stop ours at once). */
		if (!ret && r->co)
			ret = chan_out_wait(r->co, r->err, sizeof(r->err));
		if (ret && mig_link_lost(r, ret)) {
			/* Connected again: the next round sends what the destination may lack. */
			ret = mig_resume(r);
			if (ret)
				return ret;
			continue;
		}
		if (ret)
			return ret;
		if (m->dm) {
			disk_mig_collect(m->dm);
			ret = disk_mig_send_dirty(m->dm, r->w, mig_chunk_done, r, r->err,
						  sizeof(r->err));
			if (!ret)
				ret = stream_flush(r->w);
			if (ret)
				return ret;
		}
		mig_drain(r, bw_est);
		if (r->acks && !r->acks_lost && (ret = mig_read_acks(r, 0)))
			return ret;
		ms = MAX(ms_since(&t0), 0.001);
		mig_publish(r);
		bw = (double)(mig_sent(r) - off0) / ms * 1e3;
		/*
		 * A round too small to time says nothing about the link: keep the
		 * last estimate.  Small is under what the destination's kernel can
		 * take ahead of godwit (acknowledged, so not in our send queue, but
		 * not read yet): tier 2's 3 MiB rounds measured 109 MiB/s on a
		 * 20-28 MiB/s link, and the pause then waited 214 ms for READY.
		 */
		if (mig_sent(r) - off0 >= MIG_BW_MIN_BYTES || bw_est <= 0)
			bw_est = bw;
		dirty = mig_collect(r);
		if (dirty < 0)
			return (int)dirty;
		if (m->dm)
			disk_dirty = disk_mig_collect(m->dm);
		remaining = (double)dirty * STREAM_PAGE_SIZE + (double)disk_dirty;
		expect_mem = !remaining ? 0 : bw_est > 0 ? remaining / bw_est * 1e3 : 1e9;
		/* The pause is more than the last pages: the state, the hand-off's trips. */
		expect = expect_mem + mig_fixed_pause_ms(r);
		pthread_mutex_lock(&m->lock);
		m->prog.disk_remaining_bytes = disk_dirty;
		m->prog.disk_dirty_rate = (double)disk_dirty / ms * 1e3;
		m->prog.bandwidth = bw_est;
		m->prog.dirty_rate = remaining / ms * 1e3;
		m->prog.remaining_bytes = (uint64_t)remaining;
		m->prog.expected_downtime_ms = expect;
		if (last_remaining >= 0 && remaining >= last_remaining * 0.9)
			worse++;
		else
			worse = 0;
		m->prog.not_converging = worse >= 3;
		m->prog.rounds_done = round;
		mig_vcpu_rates(r, vcpu_pages, ms);
		mig_throttle(r, round, remaining, last_remaining, bw_est, expect);
		if (m->nhist < m->hist_cap) {
			struct migrate_round *h = &m->hist[m->nhist++];

			*h = (struct migrate_round){
				.round = round,
				.start_ms = ms_between(&m->t_start, &t0),
				.ms = ms,
				.bytes = mig_sent(r) - off0,
				.remaining_bytes = (uint64_t)remaining,
				.dirty_rate = m->prog.dirty_rate,
				.bandwidth = bw_est,
				.expected_downtime_ms = expect,
				.nr_vcpu_rates = MIN(m->prog.nr_vcpu_rates, MIG_ROUND_VCPUS),
				.throttle_budget = m->prog.throttle_budget,
				.nr_vcpu_throttle = MIN(m->prog.nr_vcpu_throttle, MIG_ROUND_VCPUS),
			};
			for (unsigned int c = 0; c < h->nr_vcpu_throttle; c++) {
				h->vcpu_throttle_pct[c] = m->prog.vcpu_throttle_pct[c];
				h->throttle_pct = MAX(h->throttle_pct, h->vcpu_throttle_pct[c]);
			}
			memcpy(h->vcpu_dirty_rate, m->prog.vcpu_dirty_rate,
			       h->nr_vcpu_rates * sizeof(double));
		}
		pthread_mutex_unlock(&m->lock);
		log_debug("migrate: round %u: %.1f MiB in %.1f ms (%.0f MiB/s), %lld dirty pages, "
			  "expected downtime %.1f ms", round,
			  (double)(mig_sent(r) - off0) / (double)MiB, ms,
			  bw / (double)MiB, (long long)dirty, expect);
		next = migrate_precopy_next(expect, expect_mem, (double)m->p.downtime_ms, remaining,
					    last_remaining, round, m->p.max_rounds);
		if (m->p.postcopy == PC_NOW ||
		    (m->p.postcopy == PC_AUTO && next == MIG_NEXT_ROUND &&
		     expect > (double)m->p.downtime_ms && mig_pc_auto(r, round, &hot))) {
			log_info("migrate: round %u done: switching to post-copy (%.1f MiB left, "
				 "expected downtime %.0f ms)", round, remaining / (double)MiB, expect);
			r->pc_switch = true;
			return 0;
		}
		pthread_mutex_lock(&m->lock);
		m->prog.switch_expected_ms = expect;
		pthread_mutex_unlock(&m->lock);
		if ((next != MIG_NEXT_ROUND || round >= m->p.max_rounds) && r->acks &&
		    !r->acks_lost) {
			/*
			 * The destination acknowledges pass n when pass n + 1 begins:
			 * after round 1 take one more (it costs about what is left);
			 * after round n > 1, wait for pass n - 1, and if that took a
			 * while, the guest dirtied meanwhile: one more round.
			 */
			double lag = 0;

			if (round > 1) {
				lag = mig_wait_applied(r, round - 1);
				if (lag < 0)
					return (int)lag;
				if (lag >= 1.0)
					log_info("migrate: round %u: the destination was %.0f ms behind "
						 "(applied round %u)", round, lag, r->applied);
			}
			if (r->lag_rounds < MIG_LAG_ROUNDS && round < m->p.max_rounds &&
			    (round == 1 || lag > MAX(1.0, (double)m->p.downtime_ms / 4))) {
				r->lag_rounds++;
				log_info("migrate: round %u: %.1f MiB left; one more round (%s)", round,
					 remaining / (double)MiB, round == 1 ?
					 "the destination acknowledges round 1 when round 2 begins" :
					 "the guest ran while the destination caught up");
				last_remaining = remaining;
				continue;
			}
		}
		if (next != MIG_NEXT_ROUND) {
			pthread_mutex_lock(&m->lock);
			m->prog.converged = next == MIG_STOP_UNDER;
			pthread_mutex_unlock(&m->lock);
			if (next == MIG_STOP_OVER)
				log_info("migrate: round %u: %.1f KiB left (%.1f ms), but the pause's fixed "
					 "part (%.0f ms) is over the limit of %u ms: stopping", round,
					 remaining / 1024.0, expect_mem, expect - expect_mem,
					 m->p.downtime_ms);
			return 0;
		}
		if (round >= m->p.max_rounds) {
			log_warnx("migrate: no convergence after %u rounds (%.1f MiB dirty, expected "
				  "downtime %.0f ms > %u ms): stopping anyway", round,
				  remaining / (double)MiB, expect, m->p.downtime_ms);
			return 0;
		}
		last_remaining = remaining;
	}
}

/*
 * Post-copy, at the pause: instead of the last dirty pages, the set of
 * pages the destination does not have current (the dirty bitmap: round 1
 * sent every page), in a VM section "postcopy" (postcopy.h).
 */
static int mig_pc_section(struct mig_run *r)
{
	struct migration *m = r->m;
	size_t n = pc_set_size(r->vm);
	uint8_t *buf = malloc(n);
	uint64_t pages = 0;
	int ret;

	if (!buf) {
		snprintf(r->err, sizeof(r->err), "out of memory");
		return -ENOMEM;
	}
	if (getrandom(&r->pc_token, sizeof(r->pc_token), 0) != sizeof(r->pc_token)) {
		free(buf);
		snprintf(r->err, sizeof(r->err), "getrandom: %s", strerror(errno));
		return -EIO;
	}
	for (unsigned int i = 0; i < r->vm->nr_mem; i++)
		for (size_t w = 0; w < (r->vm->mem[i].size / STREAM_PAGE_SIZE + 63) / 64; w++)
			pages += (uint64_t)__builtin_popcountll(m->bitmap[i][w]);
	pc_set_encode(r->vm, r->pc_token, m->bitmap, buf);
	ret = stream_put_section(r->w, STREAM_VM, 0, SNAPSHOT_ID_POSTCOPY, 1, 0, buf, n);
	free(buf);
	if (ret) {
		snprintf(r->err, sizeof(r->err), "sending the post-copy set: %s",
			 stream_writer_error(r->w));
		return ret;
	}
	pthread_mutex_lock(&m->lock);
	m->prog.postcopy_pages = pages;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

/*
 * After EOF: the request channel, a second connection to the destination
 * (HELLO with the token), and its server, running before READY: the
 * destination's vCPUs may fault as soon as COMMIT reached it.
 */
static int mig_pc_connect(struct mig_run *r)
{
	struct pc_hdr h = { .type = PC_HELLO, .gpa = r->pc_token };
	uint8_t hdr[PC_HDR_LEN], crc[4];
	int ret;

	ret = migrate_connect(r->m->p.to, &r->pc_rq, r->err, sizeof(r->err));
	if (ret) {
		snprintf(r->err + strlen(r->err), sizeof(r->err) - strlen(r->err),
			 " (the post-copy request channel)");
		return ret;
	}
	pc_hdr_encode(hdr, &h);
	le32_put(crc, pc_frame_crc(hdr, NULL, 0));
	if (send(r->pc_rq, hdr, sizeof(hdr), MSG_NOSIGNAL) != sizeof(hdr) ||
	    send(r->pc_rq, crc, sizeof(crc), MSG_NOSIGNAL) != sizeof(crc)) {
		snprintf(r->err, sizeof(r->err), "the post-copy request channel: %s", strerror(errno));
		return -EIO;
	}
	ret = pc_src_start(r->vm, r->m->bitmap, r->pc_rq, &r->pc);
	if (ret)
		snprintf(r->err, sizeof(r->err), "cannot serve post-copy requests: %s",
			 strerror(-ret));
	return ret;
}

/* After the link broke in post-copy: connect again (RESUME, HELLO, MISSING); 0 or -errno. */
static int mig_pc_reconnect(struct mig_run *r, const char *to)
{
	int fd = -1, rq = -1, ret;

	ret = migrate_connect(to, &fd, r->err, sizeof(r->err));
	if (!ret)
		ret = migrate_connect(to, &rq, r->err, sizeof(r->err));
	if (!ret)
		ret = pc_src_rejoin(r->pc, fd, rq, r->pc_token, r->err, sizeof(r->err));
	if (ret) {
		if (fd >= 0)
			close(fd);
		if (rq >= 0)
			close(rq);
		return ret;
	}
	pthread_mutex_lock(&r->m->lock);
	r->m->fd = fd;
	pthread_mutex_unlock(&r->m->lock);
	close(r->c.fd);
	close(r->pc_rq);
	r->c.fd = fd;
	r->pc_rq = rq;
	return 0;
}

/*
 * The link broke during post-copy: the VM waits at the destination, this
 * side keeps its pages.  Reconnect every 0.5 s for p.reconnect_s; then
 * (status postcopy-failed) wait for migrate_resume() or the end.  0 once
 * connected again, -ECANCELED.
 */
static int mig_pc_recover(struct mig_run *r)
{
	struct migration *m = r->m;
	struct timespec t0;
	bool said = false;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		char to[MIG_ADDR_MAX];
		bool asked, window;
		struct timespec dl;

		pthread_mutex_lock(&m->lock);
		if (m->cancel) {
			pthread_mutex_unlock(&m->lock);
			return -ECANCELED;
		}
		asked = m->resume_req;
		m->resume_req = false;
		snprintf(to, sizeof(to), "%s", m->p.to);
		pthread_mutex_unlock(&m->lock);
		window = ms_since(&t0) < m->p.reconnect_s * 1000.0;
		if (window || asked) {
			if (!mig_pc_reconnect(r, to)) {
				log_info("migrate: post-copy: connected to %s again", to);
				return 0;
			}
			if (asked)
				log_warnx("migrate: migrate-resume to %s: %s", to, r->err);
			if (window) {
				clock_gettime(CLOCK_REALTIME, &dl);
				dl.tv_nsec += 500 * 1000000L;
				if (dl.tv_nsec >= 1000000000L) {
					dl.tv_sec++;
					dl.tv_nsec -= 1000000000L;
				}
				pthread_mutex_lock(&m->lock);
				if (!m->cancel && !m->resume_req)
					pthread_cond_timedwait(&m->cond, &m->lock, &dl);
				pthread_mutex_unlock(&m->lock);
				continue;
			}
			said = false;
		}
		pthread_mutex_lock(&m->lock);
		if (!said) {
			snprintf(m->prog.error, sizeof(m->prog.error), "post-copy: the link to the "
				 "destination broke and it did not come back (%.200s); the VM waits "
				 "there on its missing pages, which only this side holds: godwit "
				 "migrate-resume --api SOCKET [--to ADDR] connects again", r->err);
			m->prog.status = MIG_POSTCOPY_FAILED;
			m->prog.total_ms = ms_since(&m->t_start);
			pthread_cond_broadcast(&m->cond);
			log_warnx("migrate: %s", m->prog.error);
			said = true;
		}
		while (!m->resume_req && !m->cancel)
			pthread_cond_wait(&m->cond, &m->lock);
		pthread_mutex_unlock(&m->lock);
	}
}

static int mig_pc_progress(void *opaque)
{
	struct mig_run *r = opaque;
	struct pc_src_stats st;

	pc_src_stats(r->pc, &st);
	pthread_mutex_lock(&r->m->lock);
	r->m->prog.postcopy_requested = st.requested;
	r->m->prog.postcopy_pushed = st.pushed;
	r->m->prog.remaining_bytes = (r->m->prog.postcopy_pages - MIN(r->m->prog.postcopy_pages,
				      st.requested + st.pushed)) * STREAM_PAGE_SIZE;
	pthread_mutex_unlock(&r->m->lock);
	return mig_vm_stopping(r->vm) ? -ESHUTDOWN : 0;
}

/*
 * Post-copy after DONE: the VM runs there; push the rest of the set while
 * the server answers requests.  Failure: the VM is lost (it ran there), so
 * it stays paused here, never resumed (MIG_POSTCOPY_FAILED).  0 or -errno.
 */
static int mig_postcopy(struct mig_run *r)
{
	struct migration *m = r->m;
	struct timespec t0;
	struct pc_src_stats st;
	int ret;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	mig_set_status(m, MIG_POSTCOPY);
	for (;;) {
		ret = pc_src_push(r->pc, r->c.fd, m->p.max_bandwidth, mig_pc_progress, r, r->err,
				  sizeof(r->err));
		if (!ret || mig_cancelled(m) || mig_vm_stopping(r->vm))
			break;
		log_warnx("migrate: post-copy: the link broke (%s); the VM waits at the "
			  "destination, its missing pages are here: connecting again for %u s",
			  r->err, m->p.reconnect_s);
		pthread_mutex_lock(&m->lock);
		m->prog.postcopy_breaks++;
		pthread_mutex_unlock(&m->lock);
		mig_set_status(m, MIG_POSTCOPY_PAUSED);
		ret = mig_pc_recover(r);
		if (ret)
			break;
		pthread_mutex_lock(&m->lock);
		m->prog.error[0] = 0;
		m->prog.status = MIG_POSTCOPY;
		pthread_mutex_unlock(&m->lock);
	}
	mig_pc_progress(r);
	pc_src_stats(r->pc, &st);
	pthread_mutex_lock(&m->lock);
	m->prog.postcopy_ms = ms_since(&t0);
	m->prog.fault_median_ms = st.lat_median_ms;
	m->prog.fault_max_ms = st.lat_max_ms;
	pthread_mutex_unlock(&m->lock);
	pc_src_stop(r->pc);
	r->pc = NULL;
	return ret;
}

/* Pause, the last pages and the whole state, EOF. */
static int mig_stop_copy(struct mig_run *r, struct timespec *t_pause)
{
	struct migration *m = r->m;
	int64_t dirty;
	int ret;

	mig_set_status(m, MIG_STOP_COPY);
	clock_gettime(CLOCK_MONOTONIC, t_pause);
	pthread_mutex_lock(&m->lock);
	m->prog.paused = true;
	m->prog.pause_start_ms = ms_between(&m->t_start, t_pause);
	pthread_mutex_unlock(&m->lock);
	ret = vm_pause(r->vm);
	if (ret && ret != -EALREADY) {
		snprintf(r->err, sizeof(r->err), "the VM stopped during the migration");
		return ret;
	}
	r->paused = true;
	ret = dev_quiesce_all(r->vm);
	if (ret) {
		snprintf(r->err, sizeof(r->err), "cannot quiesce the devices: %s", strerror(-ret));
		return ret;
	}
	r->ms_stopped = ms_since(t_pause);
	r->pace = false;
	dirty = mig_collect(r);
	if (dirty < 0)
		return (int)dirty;
	ret = stream_put_section(r->w, STREAM_VM, 0, SNAPSHOT_ID_PRECOPY, 1, 0, NULL, 0);
	if (ret) {
		snprintf(r->err, sizeof(r->err), "sending memory: %s", stream_writer_error(r->w));
		return ret;
	}
	/*
	 * The other channels: their last pages and EOF, beside ours; switching
	 * to post-copy, only EOF (the "postcopy" section names their pages too).
	 */
	if (r->co)
		chan_out_pass(r->co, 0, false, true, !r->pc_switch);
	if (!r->pc_switch) {
		ret = mig_send_dirty(r, false);
		if (ret)
			return ret;
	} else {
		ret = mig_pc_section(r);
		if (ret)
			return ret;
	}
	if (r->m->dm) {
		/* The devices are quiesced: no write is in flight any more. */
		disk_mig_collect(r->m->dm);
		ret = disk_mig_send_dirty(r->m->dm, r->w, mig_chunk_done, r, r->err, sizeof(r->err));
		if (ret)
			return ret;
	}
	r->ms_ram = ms_since(t_pause);
	ret = snapshot_write_state(r->vm, r->w, r->err, sizeof(r->err));
	if (ret)
		return ret;
	ret = stream_end(r->w);
	if (ret) {
		snprintf(r->err, sizeof(r->err), "sending the state: %s", stream_writer_error(r->w));
		return ret;
	}
	/* Every channel's stream sent whole before we wait for READY (the destination waits too). */
	if (r->co) {
		uint64_t cb, cp, cz;

		ret = chan_out_wait(r->co, r->err, sizeof(r->err));
		if (ret)
			return ret;
		chan_out_counters(r->co, &cb, &cp, &cz);
		r->bytes_before += cb;
		r->pages_before += cp;
		r->zero_before += cz;
		chan_out_compress_stats(r->co, &r->z_before);
		r->z_before.active = false;
		chan_out_free(r->co);
		r->co = NULL;
	}
	r->ms_state = ms_since(t_pause);
	mig_publish(r);
	if (r->pc_switch)
		return mig_pc_connect(r);
	return 0;
}

/*
 * The pause's phases as durations from the marks taken on the way (each ms
 * from the pause); a mark not reached is taken as the one before it, so
 * the durations never go negative and always add up to downtime.
 */
static void mig_phases(const struct mig_run *r, double downtime, double out[MIG_PHASE_COUNT])
{
	const double marks[MIG_PHASE_COUNT] = {
		r->ms_stopped, r->ms_ram, r->ms_state, r->ms_ready, r->ms_released,
		r->ms_committed, downtime,
	};
	double prev = 0;

	for (unsigned int i = 0; i < MIG_PHASE_COUNT; i++) {
		double t = MIN(MAX(marks[i], prev), downtime);

		out[i] = t - prev;
		prev = t;
	}
}

/* Before COMMIT: put the VM back as it was. */
static void mig_unwind(struct mig_run *r)
{
	if (r->paused) {
		if (dev_resume_all(r->vm))
			log_warnx("migrate: a device did not resume");
		if (vm_resume(r->vm) && !mig_vm_stopping(r->vm))
			log_warnx("migrate: the VM did not resume");
		r->paused = false;
	}
	vm_dirty_log_stop(r->vm);
	disk_mig_stop(r->m->dm);
}

/* The source's side of the hand-off (handoff.h) on the real VM. */
struct src_handoff {
	struct mig_run *r;
	const struct timespec *t_pause;
	bool committed;         /* COMMIT was (at least partly) sent */
};

static bool src_cancelled(void *opaque)
{
	struct src_handoff *sh = opaque;

	return mig_cancelled(sh->r->m);
}

static int src_release(void *opaque, char *err, size_t len)
{
	struct src_handoff *sh = opaque;
	int ret = dev_release_all(sh->r->vm);

	if (ret)
		snprintf(err, len, "%s", strerror(-ret));
	return ret;
}

static int src_reacquire(void *opaque, char *err, size_t len)
{
	struct src_handoff *sh = opaque;
	int ret = dev_acquire_all(sh->r->vm);

	if (ret)
		snprintf(err, len, "cannot lock the disks again: %s", strerror(-ret));
	return ret;
}

static void src_state(void *opaque, enum handoff_state st)
{
	struct src_handoff *sh = opaque;
	struct migration *m = sh->r->m;

	switch (st) {
	case HO_SRC_WAIT_READY:
		/* A cancel from here shuts down only our reading: ABORT can still go. */
		pthread_mutex_lock(&m->lock);
		m->in_handoff = true;
		pthread_mutex_unlock(&m->lock);
		break;
	case HO_SRC_RELEASING:
		sh->r->ms_ready = ms_since(sh->t_pause);
		break;
	case HO_SRC_GATE:
		sh->r->ms_released = ms_since(sh->t_pause);
		break;
	case HO_SRC_COMMITTED:
		sh->r->ms_committed = ms_since(sh->t_pause);
		if (!m->p.gate)
			sh->r->ms_released = sh->r->ms_committed;
		sh->committed = true;
		break;
	default:
		break;
	}
}

/* The point of no return: a cancel either got in before it or is refused. */
static bool src_may_commit(void *opaque)
{
	struct src_handoff *sh = opaque;
	struct migration *m = sh->r->m;
	bool ok;

	pthread_mutex_lock(&m->lock);
	/* A COMMIT decided at the gate stands, even if godwit is stopping (migrate_fini). */
	ok = !m->cancel || m->decision == GATE_COMMIT;
	if (ok)
		m->prog.status = MIG_COMMITTING;
	pthread_mutex_unlock(&m->lock);
	return ok;
}

/*
 * The commit gate (p.gate): READY came, the disks are released, the VM is
 * paused here.  Wait, as long as it takes, for migrate_commit() or a cancel.
 */
static enum handoff_gate src_gate(void *opaque, char *why, size_t len)
{
	struct src_handoff *sh = opaque;
	struct migration *m = sh->r->m;
	struct timespec t0;
	enum handoff_gate g;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	pthread_mutex_lock(&m->lock);
	if (!m->cancel) {
		m->prog.status = MIG_COMMIT_WAIT;
		pthread_cond_broadcast(&m->cond);
		log_info("migrate: at the commit gate (the VM is paused here, its disks released): "
			 "waiting for PUT /vm/migrate-commit");
	}
	while (m->decision == GATE_WAIT && !m->cancel)
		pthread_cond_wait(&m->cond, &m->lock);
	/* migrate_commit() set COMMITTING with its decision: a cancel is refused from then on. */
	g = m->decision == GATE_COMMIT ? HO_GATE_COMMIT :
	    m->decision == GATE_ABORT ? HO_GATE_ABORT : HO_GATE_CANCEL;
	pthread_mutex_unlock(&m->lock);
	log_info("migrate: commit gate: %s after %.0f ms", g == HO_GATE_COMMIT ? "COMMIT" :
		 g == HO_GATE_ABORT ? "ABORT (the fleet did not commit)" : "cancelled",
		 ms_since(&t0));
	if (g == HO_GATE_ABORT)
		snprintf(why, len, "the fleet did not commit");
	return g;
}

static void *mig_thread(void *opaque)
{
	struct migration *m = opaque;
	struct mig_run r = { .m = m, .vm = m->vm, .c = conn_plain(-1), .pace = true, .pc_rq = -1,
			     .nchan = MAX(m->p.channels, 1) };
	struct timespec t_pause = { 0 };
	int ret;

	ret = migrate_connect(m->p.to, &r.c.fd, r.err, sizeof(r.err));
	if (ret)
		goto fail;
	pthread_mutex_lock(&m->lock);
	m->fd = r.c.fd;
	pthread_mutex_unlock(&m->lock);
	if (mig_cancelled(m)) {
		ret = -ECANCELED;
		goto fail;
	}
	if (m->p.tls) {
		/* A cancel meanwhile shuts the socket down, which ends the handshake. */
		ret = tls_handshake(m->p.tls, r.c.fd, MIG_HANDSHAKE_TIMEOUT_MS, &r.c.tls, r.err,
				    sizeof(r.err));
		if (ret)
			goto fail;
		pthread_mutex_lock(&m->lock);
		snprintf(m->prog.tls, sizeof(m->prog.tls), "%s", tls_sess_desc(r.c.tls));
		pthread_mutex_unlock(&m->lock);
		log_info("migrate: %s authenticated (%s)", m->p.to, tls_sess_desc(r.c.tls));
	}
	/* A destination that takes the stream a trickle at a time has failed (mig_writer). */
	ret = mig_writer(&r);
	if (!ret)
		ret = mig_alloc_bitmaps(&r);
	if (!ret && r.nchan > 1) {
		r.sc.count = r.nchan;
		if (getrandom(r.sc.token, sizeof(r.sc.token), 0) != (ssize_t)sizeof(r.sc.token))
			ret = -EIO;
	}
	if (ret) {
		snprintf(r.err, sizeof(r.err), "out of memory");
		goto fail;
	}
	ret = mig_setup(&r);
	if (!ret && r.nchan > 1)
		ret = mig_chans_open(&r);
	if (ret)
		goto fail;
	pthread_mutex_lock(&m->lock);
	m->prog.setup_ms = ms_since(&m->t_start);
	pthread_mutex_unlock(&m->lock);
	ret = mig_precopy(&r);
	/* Every vCPU runs free again before the pause (or going on here). */
	throttle_stop(r.thr);
	r.thr = NULL;
	if (ret)
		goto fail;
	if (r.pc_switch) {
		pthread_mutex_lock(&m->lock);
		m->prog.postcopy_switched = true;
		m->prog.postcopy_start_ms = ms_since(&m->t_start);
		pthread_mutex_unlock(&m->lock);
	}
	ret = mig_stop_copy(&r, &t_pause);
	if (ret)
		goto fail;

	{
		static const struct handoff_src_ops ops = {
			.cancelled = src_cancelled, .may_commit = src_may_commit,
			.release = src_release, .reacquire = src_reacquire, .state = src_state,
		};
		static const struct handoff_src_ops gate_ops = {
			.cancelled = src_cancelled, .may_commit = src_may_commit,
			.release = src_release, .reacquire = src_reacquire, .state = src_state,
			.gate = src_gate,
		};
		struct src_handoff sh = { .r = &r, .t_pause = &t_pause };
		struct handoff_src_info info;

		switch (handoff_source(&r.c, MIG_IO_TIMEOUT_MS, m->p.gate ? &gate_ops : &ops, &sh,
				       &info, r.err, sizeof(r.err))) {
		case HANDOFF_THERE:
			break;
		case HANDOFF_HERE:
			pc_src_stop(r.pc);
			r.pc = NULL;
			/* The disks are back with this side (handoff_source reacquired them). */
			ret = info.cancelled ? -ECANCELED : -EPROTO;
			goto fail;
		case HANDOFF_IN_DOUBT:
			pc_src_stop(r.pc);
			r.pc = NULL;
			if (info.dest_refused) {
				pthread_mutex_lock(&m->lock);
				m->prog.dest_refused = true;
				pthread_mutex_unlock(&m->lock);
				mig_fail(m, MIG_IN_DOUBT, "%s; the VM is paused here and not running "
					 "there, but the commit gate named the destination as its "
					 "owner: whoever decided there settles it with godwit "
					 "migrate-resolve --resume or --discard", r.err);
			} else if (sh.committed)
				mig_fail(m, MIG_IN_DOUBT, "%s; the VM is paused here and may be "
					 "running there: check the destination, then godwit "
					 "migrate-resolve --resume or --discard", r.err);
			else
				/* No COMMIT went: the destination discards; only the disks are
				 * not held here. */
				mig_fail(m, MIG_IN_DOUBT, "%s; the VM is paused here and not "
					 "running there (no COMMIT was sent): check the disks, then "
					 "godwit migrate-resolve --resume or --discard", r.err);
			log_warnx("migrate: %s", m->prog.error);
			goto out;
		}
	}
	pthread_mutex_lock(&m->lock);
	m->prog.downtime_ms = ms_since(&t_pause);
	mig_phases(&r, m->prog.downtime_ms, m->prog.phase_ms);
	m->prog.phases = true;
	log_debug("migrate: downtime %.2f ms: stop %.2f, last pages %.2f, state+EOF %.2f, "
		  "READY %.2f, release %.2f, gate %.2f, DONE %.2f", m->prog.downtime_ms,
		  m->prog.phase_ms[MIG_PHASE_STOP], m->prog.phase_ms[MIG_PHASE_MEMORY],
		  m->prog.phase_ms[MIG_PHASE_STATE], m->prog.phase_ms[MIG_PHASE_READY],
		  m->prog.phase_ms[MIG_PHASE_RELEASE], m->prog.phase_ms[MIG_PHASE_GATE],
		  m->prog.phase_ms[MIG_PHASE_COMMIT]);
	if (r.pc) {
		pthread_mutex_unlock(&m->lock);
		ret = mig_postcopy(&r);
		pthread_mutex_lock(&m->lock);
		if (ret) {
			snprintf(m->prog.error, sizeof(m->prog.error), "post-copy failed: %.200s; the VM "
				 "ran at the destination and cannot be resumed here (this side holds "
				 "its memory only as of the switch): it is lost, and stays paused here "
				 "until this godwit is shut down",
				 ret == -ECANCELED ? "stopped here" : r.err);
			m->prog.status = MIG_POSTCOPY_FAILED;
			m->prog.total_ms = ms_since(&m->t_start);
			pthread_cond_broadcast(&m->cond);
			pthread_mutex_unlock(&m->lock);
			log_warnx("migrate: %s", m->prog.error);
			goto out;
		}
		log_info("migrate: post-copy complete after %.0f ms: %llu pages requested, %llu "
			 "pushed, fault latency median %.2f ms, max %.2f ms", m->prog.postcopy_ms,
			 (unsigned long long)m->prog.postcopy_requested,
			 (unsigned long long)m->prog.postcopy_pushed, m->prog.fault_median_ms,
			 m->prog.fault_max_ms);
	}
	m->prog.total_ms = ms_since(&m->t_start);
	if (m->prog.downtime_ms > m->p.downtime_ms)
		log_warnx("migrate: the pause took %.1f ms, over the limit of %u ms (%.1f ms were "
			  "expected%s)", m->prog.downtime_ms, m->p.downtime_ms,
			  m->prog.switch_expected_ms,
			  m->prog.converged ? "" : "; pre-copy did not converge under it");
	m->prog.status = MIG_COMPLETED;
	m->prog.remaining_bytes = 0;
	pthread_cond_broadcast(&m->cond);
	log_info("migrate: the VM now runs at %s: %.0f ms in all, downtime %.1f ms, "
		 "%.1f MiB sent, %u round(s)", m->p.to, m->prog.total_ms, m->prog.downtime_ms,
		 (double)m->prog.bytes / (double)MiB, m->prog.round);
	/* Give a client polling the progress a moment to read the report. */
	{
		struct timespec dl;

		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += MIG_RELEASE_WAIT_MS / 1000;
		while (!m->reported &&
		       pthread_cond_timedwait(&m->cond, &m->lock, &dl) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&m->lock);
	vm_request_exit(m->vm, EXIT_MIGRATED, "migrated away");
	goto out;

fail:
	/* The other channels stop before anything they use goes. */
	chan_out_free(r.co);
	r.co = NULL;
	pc_src_stop(r.pc);
	r.pc = NULL;
	mig_unwind(&r);
	/* A cancel shuts the socket down: whatever failed next is the cancel. */
	if (ret == -ECANCELED || mig_cancelled(m)) {
		mig_fail(m, MIG_CANCELLED, "cancelled");
		log_info("migrate: cancelled; the VM keeps running here");
	} else {
		if (!r.err[0])
			snprintf(r.err, sizeof(r.err), "%s", strerror(-ret));
		mig_fail(m, MIG_FAILED, "%s", r.err);
		log_warnx("migrate: failed: %s; the VM keeps running here", r.err);
	}
out:
	pthread_mutex_lock(&m->lock);
	m->fd = -1;
	pthread_mutex_unlock(&m->lock);
	chan_out_free(r.co);
	stream_writer_free(r.w);
	if (r.pc_rq >= 0)
		close(r.pc_rq);
	tls_sess_free(r.c.tls);
	if (r.c.fd >= 0)
		close(r.c.fd);
	/* The key goes with the migration that used it. */
	tls_creds_free(m->p.tls);
	m->p.tls = NULL;
	mig_free_bitmaps(m);
	for (unsigned int i = 0; i < ARRAY_SIZE(r.sent_round); i++)
		free(r.sent_round[i]);
	if (m->prog.status != MIG_IN_DOUBT && m->prog.status != MIG_COMPLETED) {
		disk_mig_free(m->dm);
		m->dm = NULL;
	}
	return NULL;
}

/* ---- the API side ----------------------------------------------------------------------- */

static void mig_join(struct migration *m)
{
	if (m->thread_started) {
		pthread_join(m->thread, NULL);
		m->thread_started = false;
	}
}

bool migrate_busy(struct vm *vm)
{
	struct migration *m = vm->mig;
	bool busy;

	if (!m)
		return false;
	pthread_mutex_lock(&m->lock);
	busy = (m->prog.status != MIG_NONE && !migrate_status_final(m->prog.status)) ||
	       m->prog.status == MIG_POSTCOPY_FAILED;
	pthread_mutex_unlock(&m->lock);
	return busy;
}

unsigned int migrate_default_channels(const char *to)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	(void)to;
	/* Placeholder until measured: one channel per 4 online CPUs, 1 to 8. */
	return (unsigned int)MAX(1, MIN(8, cpus / 4));
}

int migrate_start(struct vm *vm, const struct migrate_params *p, char *err, size_t len)
{
	struct migration *m;
	int ret;

	ret = migrate_addr_check(p->to, err, len);
	if (ret)
		goto fail;
	if (!p->tls && !p->insecure && !migrate_addr_local(p->to)) {
		snprintf(err, len, "%s is not on this host: the VM's memory would cross the network in "
			 "clear; give --tls-dir (mutual TLS), or --insecure to accept that", p->to);
		ret = -EINVAL;
		goto fail;
	}
	if (!p->downtime_ms || p->downtime_ms > 60000 || !p->max_rounds || p->max_rounds > 1000) {
		snprintf(err, len, "downtime_ms must be 1-60000 and max_rounds 1-1000");
		ret = -EINVAL;
		goto fail;
	}
	if (p->postcopy != PC_OFF && p->tls) {
		snprintf(err, len, "post-copy over TLS is not supported yet");
		ret = -EINVAL;
		goto fail;
	}
	if (p->reconnect_s > SNAPSHOT_RECONNECT_MAX_S || (p->reconnect_s && p->with_disks)) {
		snprintf(err, len, "reconnect_s must be 0-%u, and 0 with with_disks (a storage "
			 "migration cannot be resumed yet)", SNAPSHOT_RECONNECT_MAX_S);
		ret = -EINVAL;
		goto fail;
	}
	if (p->channels > MIG_MAX_CHANNELS) {
		snprintf(err, len, "channels must be 1-%u (0: the default)", MIG_MAX_CHANNELS);
		ret = -EINVAL;
		goto fail;
	}
	/*
	 * Post-copy over several channels was tried: the destination then
	 * waited for a page the source never pushed (every run; not found yet).
	 */
	if (p->channels > 1 && (p->reconnect_s || p->postcopy != PC_OFF || p->with_disks)) {
		snprintf(err, len, "a migration over several channels (%u) cannot %s yet: give "
			 "channels 1", p->channels, p->reconnect_s ? "reconnect (reconnect_s)" :
			 p->postcopy != PC_OFF ? "switch to post-copy" : "copy disks (with_disks)");
		ret = -EINVAL;
		goto fail;
	}
	if (p->min_rate > GiB) {
		snprintf(err, len, "min_rate above 1 GiB/s");
		ret = -EINVAL;
		goto fail;
	}
	if (p->max_bandwidth && p->max_bandwidth < MIG_MIN_BANDWIDTH) {
		snprintf(err, len, "max_bandwidth below 1 MiB/s (%llu bytes/s)",
			 (unsigned long long)p->max_bandwidth);
		ret = -EINVAL;
		goto fail;
	}
	ret = snapshot_check_migratable(vm, err, len);
	if (ret) {
		ret = -EINVAL;
		goto fail;
	}
	if (migrate_busy(vm)) {
		snprintf(err, len, "a migration is already %s",
			 migrate_status_name(vm->mig->prog.status));
		ret = -EBUSY;
		goto fail;
	}
	m = mig_get(vm, true);
	if (!m) {
		snprintf(err, len, "out of memory");
		ret = -ENOMEM;
		goto fail;
	}
	mig_join(m);
	disk_mig_free(m->dm);
	m->dm = NULL;
	if (p->with_disks) {
		char why[256];

		ret = disk_mig_select(vm, p->disks, p->nr_disks, &m->dm, why, sizeof(why));
		if (ret) {
			snprintf(err, len, "--with-disks: %s", why);
			ret = -EINVAL;
			goto fail;
		}
	}
	/* An incoming migration that ended (not in doubt: migrate_busy) is history. */
	mig_join(m);
	m->incoming = false;
	{
		struct migrate_round *h = calloc(p->max_rounds, sizeof(*h));

		if (!h) {
			disk_mig_free(m->dm);
			m->dm = NULL;
			snprintf(err, len, "out of memory");
			ret = -ENOMEM;
			goto fail;
		}
		pthread_mutex_lock(&m->lock);
		free(m->hist);
		m->hist = h;
		m->nhist = 0;
		m->hist_cap = p->max_rounds;
		pthread_mutex_unlock(&m->lock);
	}
	pthread_mutex_lock(&m->lock);
	m->p = *p;
	/* The default: one channel where more cannot work yet (reconnect, post-copy, disks). */
	if (!m->p.channels)
		m->p.channels = p->reconnect_s || p->postcopy != PC_OFF || p->with_disks ? 1 :
				migrate_default_channels(p->to);
	memset(&m->prog, 0, sizeof(m->prog));
	snprintf(m->prog.to, sizeof(m->prog.to), "%s", p->to);
	m->prog.insecure = !p->tls && !migrate_addr_local(p->to);
	m->prog.dirty_ring = vm->dirty_ring != 0;
	m->prog.throttle = p->throttle;
	m->prog.downtime_limit_ms = p->downtime_ms;
	m->prog.status = MIG_SETUP;
	m->cancel = m->reported = m->in_handoff = false;
	m->decision = GATE_WAIT;
	m->prog.gate = p->gate;
	m->prog.postcopy = p->postcopy;
	m->prog.channels = m->p.channels;
	m->prog.compress = p->compress;
	memset(&m->prog.compress_st, 0, sizeof(m->prog.compress_st));
	m->fd = -1;
	clock_gettime(CLOCK_MONOTONIC, &m->t_start);
	pthread_mutex_unlock(&m->lock);
	ret = pthread_create(&m->thread, NULL, mig_thread, m);
	if (ret) {
		m->prog.status = MIG_NONE;
		m->p.tls = NULL;
		snprintf(err, len, "cannot start the migration thread: %s", strerror(ret));
		ret = -ret;
		goto fail;
	}
	m->thread_started = true;
	log_info("migrate: to %s (downtime limit %u ms%s%s, %s)", p->to, p->downtime_ms,
		 p->max_bandwidth ? ", bandwidth limited" : "", p->with_disks ? ", with disks" : "",
		 p->tls ? "mutual TLS" : p->insecure ? "insecure: no TLS, --insecure" : "no TLS, local");
	return 0;
fail:
	tls_creds_free(p->tls);
	return ret;
}

size_t migrate_get_history(struct vm *vm, struct migrate_round *out, size_t max)
{
	struct migration *m = vm->mig;
	size_t n;

	if (!m)
		return 0;
	pthread_mutex_lock(&m->lock);
	n = m->nhist;
	if (n && max)
		memcpy(out, m->hist, MIN(n, max) * sizeof(*out));
	pthread_mutex_unlock(&m->lock);
	return n;
}

void migrate_get_progress(struct vm *vm, struct migrate_progress *out, bool release)
{
	struct migration *m = vm->mig;

	if (!m) {
		memset(out, 0, sizeof(*out));
		out->status = MIG_NONE;
		return;
	}
	pthread_mutex_lock(&m->lock);
	*out = m->prog;
	if (out->status != MIG_COMPLETED && out->status != MIG_IN_DOUBT &&
	    out->status != MIG_NONE && !migrate_status_final(out->status))
		out->total_ms = ms_since(&m->t_start);
	if (release && migrate_status_final(out->status)) {
		m->reported = true;
		pthread_cond_broadcast(&m->cond);
	}
	pthread_mutex_unlock(&m->lock);
}

int migrate_cancel(struct vm *vm, char *err, size_t len)
{
	struct migration *m = vm->mig;
	int ret = 0;

	if (!m || m->incoming) {
		snprintf(err, len, "no outgoing migration is under way");
		return -ENOENT;
	}
	pthread_mutex_lock(&m->lock);
	switch (m->prog.status) {
	case MIG_COMMIT_WAIT:
		/* At the gate the thread waits on the condition, not the socket: ABORT goes out. */
		m->cancel = true;
		pthread_cond_broadcast(&m->cond);
		break;
	case MIG_SETUP:
	case MIG_ACTIVE:
	case MIG_STOP_COPY:
		m->cancel = true;
		/*
		 * Unblock a send or receive in progress; the thread resumes the VM.
		 * In the hand-off, only the wait for READY: the ABORT still goes out.
		 */
		if (m->fd >= 0)
			shutdown(m->fd, m->in_handoff ? SHUT_RD : SHUT_RDWR);
		break;
	case MIG_COMMITTING:
	case MIG_COMPLETED:
	case MIG_POSTCOPY:
	case MIG_POSTCOPY_PAUSED:
	case MIG_POSTCOPY_FAILED:
		snprintf(err, len, "too late: the destination has been told to run the VM");
		ret = -EALREADY;
		break;
	case MIG_IN_DOUBT:
		snprintf(err, len, "the migration is in doubt: use migrate-resolve");
		ret = -EALREADY;
		break;
	default:
		snprintf(err, len, "no outgoing migration is under way");
		ret = -ENOENT;
		break;
	}
	pthread_mutex_unlock(&m->lock);
	if (!ret) {
		/* Wait for the VM to run again, so the caller sees it running. */
		mig_join(m);
	}
	return ret;
}

int migrate_commit(struct vm *vm, bool commit, char *err, size_t len)
{
	struct migration *m = vm->mig;
	enum mig_status st;

	if (!m || m->incoming) {
		snprintf(err, len, "no migration is waiting at the commit gate: no outgoing "
			 "migration here");
		return -ENOENT;
	}
	pthread_mutex_lock(&m->lock);
	st = m->prog.status;
	if (st != MIG_COMMIT_WAIT || m->decision != GATE_WAIT || m->cancel) {
		pthread_mutex_unlock(&m->lock);
		snprintf(err, len, "no migration is waiting at the commit gate (the migration is "
			 "%s%s)", migrate_status_name(st),
			 st == MIG_COMMIT_WAIT ? ", already decided" : !m->p.gate &&
			 st != MIG_NONE ? ", started without \"gate\"" : "");
		return -ENOENT;
	}
	m->decision = commit ? GATE_COMMIT : GATE_ABORT;
	if (commit)
		m->prog.status = MIG_COMMITTING;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	log_info("migrate: commit gate: %s decided over the API", commit ? "COMMIT" : "ABORT");
	if (!commit)
		mig_join(m);         /* the VM runs here again when this returns */
	return 0;
}

int migrate_resolve(struct vm *vm, bool resume, char *err, size_t len)
{
	struct migration *m = vm->mig;
	int ret;

	if (!m || m->prog.status != MIG_IN_DOUBT) {
		snprintf(err, len, "no migration is in doubt here");
		return -ENOENT;
	}
	mig_join(m);
	if (resume && m->incoming && m->pc_holes) {
		snprintf(err, len, "this side lacks the pages post-copy would have brought: it "
			 "cannot run the VM (resume it at the source if it never ran here, or "
			 "--discard)");
		return -EPERM;
	}
	if (!resume) {
		mig_fail(m, MIG_COMPLETED, "in doubt; discarded here by the operator");
		vm_request_exit(vm, EXIT_MIGRATED, "in-doubt migration discarded by the operator");
		return 0;
	}
	ret = dev_acquire_all(vm);
	if (ret) {
		snprintf(err, len, "cannot take the disks (%s): is the VM running on the other "
			 "side?", strerror(-ret));
		return ret;
	}
	if (m->incoming) {
		ret = dev_resume_all(vm);
		if (ret) {
			snprintf(err, len, "cannot start the devices: %s", strerror(-ret));
			return ret;
		}
		ret = vm_start(vm);
		if (ret) {
			snprintf(err, len, "cannot start the VM: %s", strerror(-ret));
			return ret;
		}
		(void)virtio_pci_announce(vm);
	} else {
		disk_mig_stop(m->dm);
		disk_mig_free(m->dm);
		m->dm = NULL;
		ret = dev_resume_all(vm);
		if (ret)
			log_warnx("migrate: a device did not resume: %s", strerror(-ret));
		ret = vm_resume(vm);
		if (ret && ret != -EALREADY) {
			snprintf(err, len, "cannot resume the VM: %s", strerror(-ret));
			return ret;
		}
		vm_dirty_log_stop(vm);
	}
	pthread_mutex_lock(&m->lock);
	m->prog.status = m->incoming ? MIG_INCOMING : MIG_FAILED;
	snprintf(m->prog.error, sizeof(m->prog.error), "in doubt; resumed here by the operator");
	pthread_mutex_unlock(&m->lock);
	log_info("migrate: in-doubt migration resolved: the VM runs here");
	return 0;
}

void migrate_fini(struct vm *vm)
{
	struct migration *m = vm->mig;

	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	m->cancel = true;
	m->reported = true;
	/* At the gate, the thread waits on the condition: let its ABORT go out. */
	if (m->fd >= 0 && m->prog.status != MIG_COMMITTING && m->prog.status != MIG_COMMIT_WAIT)
		shutdown(m->fd, SHUT_RDWR);
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	mig_join(m);
	mig_free_bitmaps(m);
	disk_mig_free(m->dm);
	free(m->hist);
	pthread_mutex_destroy(&m->lock);
	pthread_cond_destroy(&m->cond);
	free(m);
	vm->mig = NULL;
}

void migrate_incoming_done(struct vm *vm, enum mig_status st, const char *from,
			   uint64_t bytes, const char *tls, bool insecure, const char *why)
{
	struct migration *m = mig_get(vm, true);

	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	m->incoming = true;
	/* Post-copy: the VM runs here, but its pages are still coming. */
	m->prog.status = st == MIG_INCOMING && m->pc_holes ? MIG_POSTCOPY : st;
	m->prog.bytes = bytes;
	snprintf(m->prog.to, sizeof(m->prog.to), "%s", from);
	snprintf(m->prog.tls, sizeof(m->prog.tls), "%s", tls ? tls : "");
	m->prog.insecure = insecure;
	snprintf(m->prog.error, sizeof(m->prog.error), "%s", why ? why : "");
	pthread_mutex_unlock(&m->lock);
}

void migrate_incoming_postcopy(struct vm *vm, enum mig_status st, uint64_t requested,
			       uint64_t pushed, double median_ms, double max_ms, double ms)
{
	struct migration *m = mig_get(vm, true);

	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	m->incoming = true;
	m->prog.postcopy = PC_NOW;
	m->prog.postcopy_switched = true;
	if (st == MIG_POSTCOPY) {
		/* Before READY: from here the memory has holes only the source can fill. */
		m->pc_holes = true;
		m->prog.postcopy_pages = requested;
	} else {
		m->pc_holes = false;
		if (m->prog.status == MIG_POSTCOPY)
			m->prog.status = MIG_INCOMING;
		m->prog.postcopy_requested = requested;
		m->prog.postcopy_pushed = pushed;
		m->prog.fault_median_ms = median_ms;
		m->prog.fault_max_ms = max_ms;
		m->prog.postcopy_ms = ms;
	}
	pthread_mutex_unlock(&m->lock);
}

int migrate_resume(struct vm *vm, const char *to, char *err, size_t len)
{
	struct migration *m = vm->mig;

	if (to && migrate_addr_check(to, err, len))
		return -EINVAL;
	if (to && !migrate_addr_local(to) && !(m && m->p.insecure)) {
		snprintf(err, len, "%s is not on this host, and post-copy runs without TLS: start "
			 "the migration with insecure to allow it", to);
		return -EINVAL;
	}
	if (!m || m->incoming) {
		snprintf(err, len, "no post-copy is waiting for its destination here");
		return -ENOENT;
	}
	pthread_mutex_lock(&m->lock);
	if (m->prog.status != MIG_POSTCOPY_PAUSED && m->prog.status != MIG_POSTCOPY_FAILED) {
		pthread_mutex_unlock(&m->lock);
		snprintf(err, len, "no post-copy is waiting for its destination here");
		return -ENOENT;
	}
	if (to)
		snprintf(m->p.to, sizeof(m->p.to), "%s", to);
	snprintf(m->prog.to, sizeof(m->prog.to), "%s", m->p.to);
	m->resume_req = true;
	m->prog.status = MIG_POSTCOPY_PAUSED;
	m->prog.error[0] = 0;
	m->reported = false;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	log_info("migrate: post-copy: connecting to %s again (migrate-resume)", m->p.to);
	return 0;
}
