/*
 * channel_in.c - the destination's memory channels (channel.h): a thread
 * takes channels 1..N-1 on the migration's listener (mutual TLS as the
 * main connection, then the stream's header, the main stream's CONFIG and
 * its token), and each channel is loaded by a thread of its own.  Strays
 * (a failed handshake, not a stream, another migration's token, a channel
 * index taken already) are logged, closed and waited past.  A channel that
 * fails stops everything: the others' sockets and the main one's reading
 * are shut down, so the main load fails at once and says why.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "godwit/conn.h"
#include "godwit/handoff.h"
#include "godwit/log.h"
#include "godwit/migrate.h"
#include "godwit/tls.h"
#include "godwit/vm.h"
#include "channel.h"

/* The source connects its channels right after ACCEPT; give it this long for all of them. */
#define CHAN_IN_CONNECT_MS 30000
#define CHAN_IN_POLL_MS    200
#define CHAN_IN_GRACE_S    1

struct chan_rd {
	struct chan_in *ci;
	unsigned int idx;
	struct conn c;                 /* under ci->lock (fd: shut down by others) */
	struct snapshot_restore *sr;
	pthread_t thread;
	bool started;
	bool done;                     /* reached EOF intact (under lock) */
	uint64_t bytes;                /* once done or failed (under lock) */
};

struct chan_in {
	struct chan_in_params p;
	struct snapshot_channel sc;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t acceptor;
	bool acceptor_started;
	struct chan_rd rd[SNAPSHOT_MAX_CHANNELS];
	unsigned int connected;        /* channels taken (under lock) */
	unsigned int finished;         /* readers that ended, well or not (under lock) */
	bool stop;                     /* under lock */
	bool failed;                   /* under lock */
	int ret;
	char err[600];
};

static double ci_ms_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t->tv_sec) * 1e3 + (double)(now.tv_nsec - t->tv_nsec) / 1e6;
}

/* The first failure stops the rest: every channel's socket, and reading on the main one. */
static void ci_fail_locked(struct chan_in *ci, int ret, const char *why)
{
	if (!ci->failed) {
		ci->failed = true;
		ci->ret = ret;
		snprintf(ci->err, sizeof(ci->err), "%s", why);
		if (ci->p.main_fd >= 0)
			shutdown(ci->p.main_fd, SHUT_RD);
	}
	ci->stop = true;
	for (unsigned int i = 1; i < ci->sc.count; i++)
		if (ci->rd[i].c.fd >= 0)
			shutdown(ci->rd[i].c.fd, SHUT_RDWR);
	pthread_cond_broadcast(&ci->cond);
}

static void *ci_reader(void *opaque)
{
	struct chan_rd *rd = opaque;
	struct chan_in *ci = rd->ci;
	char err[512] = "";
	uint64_t bytes = 0;
	int ret = snapshot_restore_load_channel(rd->sr, ci->p.vm, err, sizeof(err));

	snapshot_restore_stats(rd->sr, NULL, &bytes);
	pthread_mutex_lock(&ci->lock);
	rd->bytes = bytes;
	if (ret) {
		char why[600];

		snprintf(why, sizeof(why), "memory channel %u: %s", rd->idx, err);
		ci_fail_locked(ci, ret, why);
	} else {
		rd->done = true;
	}
	ci->finished++;
	pthread_cond_broadcast(&ci->cond);
	pthread_mutex_unlock(&ci->lock);
	return NULL;
}

static bool ci_stopped(struct chan_in *ci)
{
	bool s;

	pthread_mutex_lock(&ci->lock);
	s = ci->stop;
	pthread_mutex_unlock(&ci->lock);
	return s;
}

/* One connection: TLS, then a channel of this migration not taken yet.  0, or -errno (why). */
static int ci_take(struct chan_in *ci, int fd, char *why, size_t len)
{
	struct conn c = conn_plain(fd);
	struct snapshot_restore *sr = NULL;
	uint32_t idx = 0;
	int ret = 0;

	if (ci->p.tls)
		ret = tls_handshake(ci->p.tls, fd, MIG_IO_TIMEOUT_MS, &c.tls, why, len);
	if (!ret)
		ret = snapshot_restore_open_channel(ci->p.main, &c, &ci->p.wd, &sr, &idx, why, len);
	pthread_mutex_lock(&ci->lock);
	if (!ret && ci->rd[idx].c.fd >= 0) {
		snprintf(why, len, "channel %u of this migration came twice", idx);
		ret = -EPERM;
	}
	if (!ret && ci->stop)
		ret = -ECANCELED;
	if (ret) {
		pthread_mutex_unlock(&ci->lock);
		snapshot_restore_free(sr);
		tls_sess_free(c.tls);
		close(fd);
		return ret;
	}
	ci->rd[idx].c = c;
	ci->rd[idx].sr = sr;
	ret = pthread_create(&ci->rd[idx].thread, NULL, ci_reader, &ci->rd[idx]);
	if (ret) {
		snprintf(why, len, "cannot start a thread: %s", strerror(ret));
		ci_fail_locked(ci, -ret, why);
		pthread_mutex_unlock(&ci->lock);
		return -ENOMEM;
	}
	ci->rd[idx].started = true;
	ci->connected++;
	pthread_mutex_unlock(&ci->lock);
	if (c.tls)
		log_info("incoming migration: memory channel %u of %u connected (%s)", idx,
			 ci->sc.count, tls_sess_desc(c.tls));
	else
		log_info("incoming migration: memory channel %u of %u connected", idx, ci->sc.count);
	return 0;
}

static void *ci_acceptor(void *opaque)
{
	struct chan_in *ci = opaque;
	struct timespec t0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		char peer[128] = "?", why[768] = "";
		int fd = -1, ret;
		unsigned int got;

		pthread_mutex_lock(&ci->lock);
		got = ci->connected;
		pthread_mutex_unlock(&ci->lock);
		if (got == ci->sc.count - 1 || ci_stopped(ci))
			break;
		if (ci_ms_since(&t0) > CHAN_IN_CONNECT_MS) {
			snprintf(why, sizeof(why), "only %u of the source's %u memory channels "
				 "connected within %d s", got, ci->sc.count - 1,
				 CHAN_IN_CONNECT_MS / 1000);
			pthread_mutex_lock(&ci->lock);
			ci_fail_locked(ci, -ETIMEDOUT, why);
			pthread_mutex_unlock(&ci->lock);
			break;
		}
		ret = migrate_accept(ci->p.lfd, ci->p.addr, CHAN_IN_POLL_MS, &fd, peer, sizeof(peer),
				     why, sizeof(why));
		if (ret == -ETIMEDOUT || ret == -EINTR)
			continue;
		if (ret == -EACCES || ret == -ECONNABORTED) {
			log_warnx("incoming migration: a connection was dropped: %s; still waiting for "
				  "the memory channels", why);
			continue;
		}
		if (ret) {
			pthread_mutex_lock(&ci->lock);
			ci_fail_locked(ci, ret, why);
			pthread_mutex_unlock(&ci->lock);
			break;
		}
		ret = ci_take(ci, fd, why, sizeof(why));
		if (ret == -ENOMEM || ret == -ECANCELED)
			break;
		if (ret)
			log_warnx("incoming migration: the connection from %s was dropped: %s; still "
				  "waiting for the memory channels", peer, why);
	}
	return NULL;
}

int chan_in_start(const struct chan_in_params *p, const struct snapshot_channel *c,
		  struct chan_in **out, char *err, size_t len)
{
	struct chan_in *ci;
	int ret;

	if (p->lfd < 0) {
		snprintf(err, len, "no listener to take the memory channels on");
		return -EPERM;
	}
	ci = calloc(1, sizeof(*ci));
	if (!ci) {
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	ci->p = *p;
	ci->sc = *c;
	pthread_mutex_init(&ci->lock, NULL);
	pthread_cond_init(&ci->cond, NULL);
	for (unsigned int i = 0; i < SNAPSHOT_MAX_CHANNELS; i++) {
		ci->rd[i].ci = ci;
		ci->rd[i].idx = i;
		ci->rd[i].c = conn_plain(-1);
	}
	ret = pthread_create(&ci->acceptor, NULL, ci_acceptor, ci);
	if (ret) {
		snprintf(err, len, "cannot start a thread: %s", strerror(ret));
		chan_in_free(ci);
		return -ret;
	}
	ci->acceptor_started = true;
	log_info("incoming migration: over %u channels: waiting for the other %u", c->count,
		 c->count - 1);
	*out = ci;
	return 0;
}

int chan_in_wait(struct chan_in *ci, char *err, size_t len)
{
	int ret;

	if (ci->acceptor_started) {
		pthread_join(ci->acceptor, NULL);
		ci->acceptor_started = false;
	}
	pthread_mutex_lock(&ci->lock);
	while (!ci->failed && ci->finished < ci->connected)
		pthread_cond_wait(&ci->cond, &ci->lock);
	if (!ci->failed && ci->connected < ci->sc.count - 1)
		ci_fail_locked(ci, -EPROTO, "the memory channels did not all connect");
	ret = ci->failed ? (ci->ret ? ci->ret : -EIO) : 0;
	if (ret)
		snprintf(err, len, "%s", ci->err);
	pthread_mutex_unlock(&ci->lock);
	return ret;
}

uint64_t chan_in_bytes(struct chan_in *ci)
{
	uint64_t b = 0;

	if (!ci)
		return 0;
	pthread_mutex_lock(&ci->lock);
	for (unsigned int i = 1; i < ci->sc.count; i++)
		b += ci->rd[i].bytes;
	pthread_mutex_unlock(&ci->lock);
	return b;
}

static void ci_free(struct chan_in *ci, bool grace, char *err, size_t len)
{
	if (err && len)
		err[0] = 0;
	if (!ci)
		return;
	pthread_mutex_lock(&ci->lock);
	/*
	 * The main stream failed: a channel whose link broke too (the source
	 * gone, a cut) ends by itself within moments, and its error says more
	 * than the main stream's; give the readers that long.
	 */
	if (grace && !ci->failed && ci->finished < ci->connected) {
		struct timespec dl;

		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += CHAN_IN_GRACE_S;
		while (!ci->failed && ci->finished < ci->connected &&
		       pthread_cond_timedwait(&ci->cond, &ci->lock, &dl) != ETIMEDOUT)
			;
	}
	if (err && len && ci->failed && strcmp(ci->err, "stopped"))
		snprintf(err, len, "%s", ci->err);
	if (ci->finished < ci->connected || ci->acceptor_started)
		/* Still loading: stop; the main connection is gone or failing anyway. */
		ci_fail_locked(ci, -ECANCELED, "stopped");
	ci->stop = true;
	pthread_mutex_unlock(&ci->lock);
	if (ci->acceptor_started)
		pthread_join(ci->acceptor, NULL);
	for (unsigned int i = 1; i < ci->sc.count; i++) {
		struct chan_rd *rd = &ci->rd[i];

		if (rd->started)
			pthread_join(rd->thread, NULL);
		snapshot_restore_free(rd->sr);
		tls_sess_free(rd->c.tls);
		if (rd->c.fd >= 0)
			close(rd->c.fd);
	}
	pthread_mutex_destroy(&ci->lock);
	pthread_cond_destroy(&ci->cond);
	free(ci);
}

void chan_in_free(struct chan_in *ci)
{
	ci_free(ci, false, NULL, 0);
}

void chan_in_free_error(struct chan_in *ci, char *err, size_t len)
{
	ci_free(ci, true, err, len);
}
