/*
 * channel_out.c - the source's memory channels (channel.h): one thread,
 * socket, TLS session and stream writer each; the migration thread
 * (migrate.c) hands them passes over the shared dirty bitmaps and sends
 * channel 0's share itself.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "godwit/conn.h"
#include "godwit/log.h"
#include "godwit/migrate.h"
#include "godwit/tls.h"
#include "godwit/vm.h"
#include "channel.h"
#include "dirty_walk.h"

struct chan_send {
	struct vm *vm;
	struct stream_writer *w;
	char *err;
	size_t len;
	int (*done)(void *opaque);
	void *opaque;
};

static int chan_put_chunk(void *opaque, unsigned int i, uint64_t first, uint64_t n,
			  const uint64_t *bits)
{
	struct chan_send *cs = opaque;

	return dirty_send_chunk(cs->vm, cs->w, i, first, n, bits, cs->err, cs->len);
}

static int chan_send_done(void *opaque)
{
	struct chan_send *cs = opaque;

	return cs->done(cs->opaque);
}

int chan_send_dirty(struct vm *vm, struct stream_writer *w, uint64_t *const *bitmap,
		    unsigned int idx, unsigned int n, bool clear, uint64_t chunk,
		    int (*done)(void *opaque), void *opaque, char *err, size_t len)
{
	struct chan_send cs = { .vm = vm, .w = w, .err = err, .len = len, .done = done,
				.opaque = opaque };
	int ret;

	chunk = MAX(64, MIN(chunk, CHAN_STRIPE_PAGES) / 64 * 64);
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		const struct mem_region *mr = &vm->mem[i];
		uint64_t npages = mr->size / STREAM_PAGE_SIZE, *bm = bitmap[i];
		uint64_t pfn0 = mr->gpa / STREAM_PAGE_SIZE;

		for (uint64_t s = 0; s < npages;) {
			/* The stripe [s, end): up to the next 2 MiB boundary of the guest's addresses. */
			uint64_t end = MIN(npages, (pfn0 + s) / CHAN_STRIPE_PAGES * CHAN_STRIPE_PAGES +
					   CHAN_STRIPE_PAGES - pfn0);

			if (chan_of_pfn(pfn0 + s, n) != idx) {
				s = end;
				continue;
			}
			/* Regions and stripes start on 64-page boundaries (2 MiB aligned). */
			ret = dirty_walk(vm, i, bm, s, end, chunk, clear, chan_put_chunk,
					 chan_send_done, &cs, err, len);
			if (ret)
				return ret;
			s = end;
		}
	}
	return 0;
}

struct chan {
	struct chan_out *co;
	unsigned int idx;
	struct conn c;
	struct stream_writer *w;
	pthread_t thread;
	bool started;
	struct timespec t_pace;
	uint64_t pace_bytes;
	bool pace;
	/* under co->lock */
	uint64_t bytes, pages, zero;
	struct stream_compress_stats z;
	char err[512];
};

struct chan_out {
	struct chan_out_params p;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned int n;                /* channels 1..n-1 here */
	struct chan ch[SNAPSHOT_MAX_CHANNELS];
	/* the pass (under lock) */
	uint64_t gen;                  /* bumped by chan_out_pass() */
	uint32_t round;
	bool clear, final, pages, quit;
	unsigned int busy;             /* channels still in the pass */
	bool failed;                   /* a channel failed: all stop */
	int ret;                       /* the first failure */
	char err[600];
};

/* Bytes the channels' sockets hold that their peers have not acknowledged (SIOCOUTQ). */
uint64_t chan_out_unsent(struct chan_out *co)
{
	uint64_t sum = 0;

	for (unsigned int i = 1; i < co->n; i++) {
		int q;

		if (co->ch[i].c.fd >= 0 && !ioctl(co->ch[i].c.fd, SIOCOUTQ, &q) && q > 0)
			sum += (uint64_t)q;
	}
	return sum;
}

static double chan_ms_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t->tv_sec) * 1e3 + (double)(now.tv_nsec - t->tv_nsec) / 1e6;
}

static void chan_publish(struct chan *ch)
{
	struct stream_ram_stats st;

	struct stream_compress_stats z;

	stream_writer_ram_stats(ch->w, &st);
	stream_writer_compress_stats(ch->w, &z);
	pthread_mutex_lock(&ch->co->lock);
	ch->z = z;
	ch->bytes = stream_writer_offset(ch->w);
	ch->pages = st.pages;
	ch->zero = st.zero_pages;
	pthread_mutex_unlock(&ch->co->lock);
}

static bool chan_stopping(struct chan *ch)
{
	struct chan_out *co = ch->co;
	bool f;

	pthread_mutex_lock(&co->lock);
	f = co->failed || co->quit;
	pthread_mutex_unlock(&co->lock);
	return f || co->p.stop(co->p.opaque);
}

/* After each chunk: publish, stop if asked, pace to this channel's share. */
static int chan_chunk_done(void *opaque)
{
	struct chan *ch = opaque;
	uint64_t bw = ch->co->p.max_bandwidth;

	chan_publish(ch);
	for (;;) {
		double due, el, nap;
		struct timespec ts;

		if (chan_stopping(ch)) {
			snprintf(ch->err, sizeof(ch->err), "stopped");
			return -ECANCELED;
		}
		if (!ch->pace || !bw)
			return 0;
		due = (double)(stream_writer_offset(ch->w) - ch->pace_bytes) / (double)bw * 1e3;
		el = chan_ms_since(&ch->t_pace);
		if (el >= due)
			return 0;
		nap = MIN(due - el, 100.0);
		ts.tv_sec = (time_t)(nap / 1e3);
		ts.tv_nsec = (long)((nap - (double)ts.tv_sec * 1e3) * 1e6);
		nanosleep(&ts, NULL);
	}
}

static int chan_pass(struct chan *ch, uint32_t round, bool clear, bool final, bool pages)
{
	struct chan_out *co = ch->co;
	uint64_t chunk = CHAN_STRIPE_PAGES;
	int ret = 0;

	ch->pace = !final;
	ch->pace_bytes = stream_writer_offset(ch->w);
	clock_gettime(CLOCK_MONOTONIC, &ch->t_pace);
	if (ch->pace && co->p.max_bandwidth)
		chunk = MAX(64, MIN(chunk, co->p.max_bandwidth / 10 / STREAM_PAGE_SIZE / 64 * 64));
	if (final || round > 1)
		ret = stream_put_section(ch->w, STREAM_VM, 0, SNAPSHOT_ID_PRECOPY, 1,
					 final ? 0 : round, NULL, 0);
	if (ret) {
		snprintf(ch->err, sizeof(ch->err), "sending memory: %s", stream_writer_error(ch->w));
		return ret;
	}
	if (pages)
		ret = chan_send_dirty(co->p.vm, ch->w, co->p.bitmap, ch->idx, co->n, clear, chunk,
				      chan_chunk_done, ch, ch->err, sizeof(ch->err));
	if (!ret && final) {
		ret = stream_end(ch->w);
		if (ret)
			snprintf(ch->err, sizeof(ch->err), "sending the end of the stream: %s",
				 stream_writer_error(ch->w));
	} else if (!ret) {
		ret = stream_flush(ch->w);
		if (ret)
			snprintf(ch->err, sizeof(ch->err), "sending memory: %s",
				 stream_writer_error(ch->w));
	}
	chan_publish(ch);
	return ret;
}

/* Stop every channel: the first failure wins; sockets shut down so no one waits on a peer. */
static void chan_fail_locked(struct chan_out *co, int ret, const char *why)
{
	if (!co->failed) {
		co->failed = true;
		co->ret = ret;
		snprintf(co->err, sizeof(co->err), "%s", why);
	}
	for (unsigned int i = 1; i < co->n; i++)
		if (co->ch[i].c.fd >= 0)
			shutdown(co->ch[i].c.fd, SHUT_RDWR);
}

static void *chan_thread(void *opaque)
{
	struct chan *ch = opaque;
	struct chan_out *co = ch->co;
	uint64_t seen = 0;

	pthread_mutex_lock(&co->lock);
	for (;;) {
		uint32_t round;
		bool clear, final, pages, failed;
		int ret;

		while (!co->quit && co->gen == seen)
			pthread_cond_wait(&co->cond, &co->lock);
		if (co->quit)
			break;
		seen = co->gen;
		round = co->round;
		clear = co->clear;
		final = co->final;
		pages = co->pages;
		failed = co->failed;
		pthread_mutex_unlock(&co->lock);
		ret = failed ? -ECANCELED : chan_pass(ch, round, clear, final, pages);
		pthread_mutex_lock(&co->lock);
		if (ret && ret != -ECANCELED) {
			char why[600];

			snprintf(why, sizeof(why), "memory channel %u: %s", ch->idx, ch->err);
			chan_fail_locked(co, ret, why);
		} else if (ret && !co->failed) {
			chan_fail_locked(co, ret, "cancelled");
		}
		co->busy--;
		pthread_cond_broadcast(&co->cond);
	}
	pthread_mutex_unlock(&co->lock);
	return NULL;
}

/* One channel: connect, TLS, the writer, preamble + CONFIG + "channel", flushed. */
static int chan_connect(struct chan_out *co, struct chan *ch, char *err, size_t len)
{
	struct stream_watchdog wd = {
		.min_bytes = co->p.min_rate * (MIG_RATE_WINDOW_MS / 1000),
		.window_ms = MIG_RATE_WINDOW_MS,
	};
	struct snapshot_channel sc = co->p.ch;
	uint8_t payload[SNAPSHOT_CHANNEL_LEN];
	int ret, fd = -1;

	ret = migrate_connect(co->p.to, &fd, err, len);
	if (ret)
		return ret;
	pthread_mutex_lock(&co->lock);
	ch->c = conn_plain(fd);
	pthread_mutex_unlock(&co->lock);
	if (co->p.tls) {
		ret = tls_handshake(co->p.tls, fd, MIG_IO_TIMEOUT_MS * 3, &ch->c.tls, err, len);
		if (ret)
			return ret;
	}
	ret = stream_writer_new(fd, &ch->w);
	if (ret) {
		snprintf(err, len, "out of memory");
		return ret;
	}
	stream_writer_set_tls(ch->w, ch->c.tls);
	stream_writer_set_watchdog(ch->w, &wd);
	/* As the main stream's: no per-page CRC on a socket (TCP, TLS), compression as asked. */
	stream_writer_set_page_crc(ch->w, false);
	stream_writer_set_compress(ch->w, co->p.compress);
	sc.index = ch->idx;
	snapshot_channel_encode(&sc, payload);
	ret = stream_begin(ch->w, co->p.cfg);
	if (!ret)
		ret = stream_put_section(ch->w, STREAM_VM, 0, SNAPSHOT_ID_CHANNEL, 1, 0, payload,
					 sizeof(payload));
	if (!ret)
		ret = stream_flush(ch->w);
	if (ret)
		snprintf(err, len, "%s", stream_writer_error(ch->w));
	return ret;
}

int chan_out_open(const struct chan_out_params *p, struct chan_out **out, char *err, size_t len)
{
	struct chan_out *co = calloc(1, sizeof(*co));
	int ret;

	if (!co) {
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	co->p = *p;
	co->n = p->ch.count;
	pthread_mutex_init(&co->lock, NULL);
	pthread_cond_init(&co->cond, NULL);
	for (unsigned int i = 0; i < SNAPSHOT_MAX_CHANNELS; i++) {
		co->ch[i].co = co;
		co->ch[i].idx = i;
		co->ch[i].c = conn_plain(-1);
	}
	*out = co;
	for (unsigned int i = 1; i < co->n; i++) {
		char why[512];

		if (p->stop(p->opaque)) {
			snprintf(err, len, "cancelled");
			return -ECANCELED;
		}
		ret = chan_connect(co, &co->ch[i], why, sizeof(why));
		if (ret) {
			snprintf(err, len, "memory channel %u: %s", i, why);
			return ret;
		}
		ret = pthread_create(&co->ch[i].thread, NULL, chan_thread, &co->ch[i]);
		if (ret) {
			snprintf(err, len, "cannot start the thread of memory channel %u: %s", i,
				 strerror(ret));
			return -ret;
		}
		co->ch[i].started = true;
	}
	co->p.cfg = NULL;             /* the caller's, needed only to begin the streams */
	return 0;
}

void chan_out_pass(struct chan_out *co, uint32_t round, bool clear, bool final, bool pages)
{
	pthread_mutex_lock(&co->lock);
	co->round = round;
	co->pages = pages;
	co->clear = clear;
	co->final = final;
	co->busy = co->n - 1;
	co->gen++;
	pthread_cond_broadcast(&co->cond);
	pthread_mutex_unlock(&co->lock);
}

int chan_out_wait(struct chan_out *co, char *err, size_t len)
{
	int ret;

	pthread_mutex_lock(&co->lock);
	while (co->busy)
		pthread_cond_wait(&co->cond, &co->lock);
	ret = co->failed ? (co->ret ? co->ret : -EIO) : 0;
	if (ret)
		snprintf(err, len, "%s", co->err);
	pthread_mutex_unlock(&co->lock);
	return ret;
}

bool chan_out_failed(struct chan_out *co, char *err, size_t len)
{
	bool f;

	pthread_mutex_lock(&co->lock);
	f = co->failed;
	if (f)
		snprintf(err, len, "%s", co->err);
	pthread_mutex_unlock(&co->lock);
	return f;
}

void chan_out_counters(struct chan_out *co, uint64_t *bytes, uint64_t *pages, uint64_t *zero)
{
	*bytes = *pages = *zero = 0;
	if (!co)
		return;
	pthread_mutex_lock(&co->lock);
	for (unsigned int i = 1; i < co->n; i++) {
		*bytes += co->ch[i].bytes;
		*pages += co->ch[i].pages;
		*zero += co->ch[i].zero;
	}
	pthread_mutex_unlock(&co->lock);
}

void chan_out_compress_stats(struct chan_out *co, struct stream_compress_stats *z)
{
	if (!co)
		return;
	pthread_mutex_lock(&co->lock);
	for (unsigned int i = 1; i < co->n; i++) {
		z->sections += co->ch[i].z.sections;
		z->bytes_in += co->ch[i].z.bytes_in;
		z->bytes_out += co->ch[i].z.bytes_out;
		z->switches += co->ch[i].z.switches;
		z->active = z->active || co->ch[i].z.active;
	}
	pthread_mutex_unlock(&co->lock);
}

void chan_out_free(struct chan_out *co)
{
	if (!co)
		return;
	pthread_mutex_lock(&co->lock);
	/* Channels still in a pass are stopped; idle ones (the stream ended) close cleanly. */
	if (co->busy)
		chan_fail_locked(co, -ECANCELED, "stopped");
	co->quit = true;
	pthread_cond_broadcast(&co->cond);
	pthread_mutex_unlock(&co->lock);
	for (unsigned int i = 1; i < co->n; i++) {
		struct chan *ch = &co->ch[i];

		if (ch->started)
			pthread_join(ch->thread, NULL);
		stream_writer_free(ch->w);
		tls_sess_free(ch->c.tls);
		if (ch->c.fd >= 0)
			close(ch->c.fd);
	}
	pthread_mutex_destroy(&co->lock);
	pthread_cond_destroy(&co->cond);
	free(co);
}
