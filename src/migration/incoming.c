/*
 * incoming.c - the destination of a live migration (incoming.h,
 * docs/migration.md): the connection, ACCEPT or REFUSE, the migrated disks'
 * files, the load under a watchdog, and the destination's half of the
 * hand-off (handoff.c).  The VM itself is built and run by the caller.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

#include "godwit/le.h"

#include "godwit/dev.h"
#include "godwit/disk.h"
#include "godwit/handoff.h"
#include "godwit/incoming.h"
#include "godwit/log.h"
#include "godwit/migrate.h"
#include "godwit/postcopy.h"
#include "godwit/snapshot.h"
#include "godwit/stream.h"
#include "godwit/tls.h"
#include "godwit/vm.h"
#include "channel.h"

struct incoming {
	struct incoming_params p;
	char addr[MIG_ADDR_MAX];
	struct conn c;           /* the source's connection (TLS or plain) */
	struct snapshot_restore *sr;
	struct disk_recv disks[STREAM_MAX_DISKS];
	unsigned int nr_disks;
	bool accepted;           /* ACCEPT sent: the source heard about the VM */
	bool taken;              /* the VM is ours, or in doubt: migrated disks stay */
	bool in_doubt;
	struct timespec t0;      /* the connection */
	int lfd;                 /* the listener, kept while pre-copy may be resumed and until
				    post-copy's request channel came (-1: closed) */
	unsigned int resumed;    /* connections taken back after a break */
	struct vm *vm;
	struct pc_dest *pc;      /* post-copy: the pages still coming */
	int rq;                  /* post-copy: the request channel, or -1 */
	struct chan_in *ci;      /* the memory channels besides this connection, or NULL */
	uint32_t channels;       /* connections the migration came over (1: this one) */
	uint64_t chan_bytes;     /* stream bytes they brought */
	char chan_err[600];      /* why they failed, if they did */
	pid_t uffd_pid;          /* the process p.uffd belongs to (--jail forks after it) */
};

/*
 * in_not_tls - before the TLS handshake: a peer whose first byte is not a
 * TLS handshake record does not speak TLS.  A godwit source without
 * --tls-dir is told so in a plain REFUSE (nothing it sent is read further).
 * A peer silent for 10 s is dropped here.  0 (the first byte says TLS), or
 * -EBADMSG.
 */
static int in_not_tls(struct incoming *in, char *why, size_t len)
{
	struct pollfd p = { .fd = in->c.fd, .events = POLLIN };
	uint8_t b[STREAM_MAGIC_LEN];
	ssize_t k;
	int r;

	do
		r = poll(&p, 1, MIG_IO_TIMEOUT_MS);
	while (r < 0 && errno == EINTR);
	if (r == 0) {
		snprintf(why, len, "TLS handshake timed out: the peer sent nothing for %.1f s",
			 MIG_IO_TIMEOUT_MS / 1000.0);
		return -EBADMSG;
	}
	if (r < 0)
		return 0;                     /* the handshake will say what is wrong */
	k = recv(in->c.fd, b, sizeof(b), MSG_PEEK | MSG_DONTWAIT);
	if (k <= 0 || b[0] == 0x16)           /* TLS: ContentType handshake */
		return 0;
	if (k >= 6 && !memcmp(b, STREAM_MAGIC, 6)) {
		(void)migrate_msg_send(&in->c, MIG_MSG_REFUSE, "this destination takes migrations over "
				       "mutual TLS only: give godwit migrate --tls-dir");
		snprintf(why, len, "the source sent a plain godwit stream, not TLS (its godwit migrate "
			 "has no --tls-dir); it was told so");
	} else {
		snprintf(why, len, "the peer does not speak TLS (its first byte is 0x%02x)", b[0]);
	}
	return -EBADMSG;
}

/*
 * in_open - one connection: TLS handshake (with credentials), the stream's
 * header and CONFIG.  Returns 0 (in->c and in->sr set), -EBADMSG for a
 * connection that brought no authenticated godwit stream (why says what it
 * was; it is closed, and the destination keeps waiting), or another -errno
 * (this host's fault: give up).
 */
static int in_open(struct incoming *in, int fd, const char *peer, char *why, size_t len)
{
	struct stream_watchdog wd = {
		.deadline_ms = (uint64_t)in->p.timeout_s * 1000,
		.min_bytes = in->p.min_rate * (INCOMING_RATE_WINDOW_MS / 1000),
		.window_ms = INCOMING_RATE_WINDOW_MS,
	};
	int ret;

	in->c = conn_plain(fd);
	if (in->p.tls) {
		ret = in_not_tls(in, why, len);
		if (ret)
			return ret;
		ret = tls_handshake(in->p.tls, fd, MIG_IO_TIMEOUT_MS, &in->c.tls, why, len);
		if (ret)
			return ret == -ENOMEM ? ret : -EBADMSG;
		log_info("incoming migration: %s authenticated (%s)", peer, tls_sess_desc(in->c.tls));
	}
	clock_gettime(CLOCK_MONOTONIC, &in->t0);
	ret = snapshot_restore_open_conn(&in->c, &wd, &in->sr, why, len);
	if (ret) {
		/* Tell the peer (a godwit source with a broken stream wants to know why). */
		char text[MIG_MSG_TEXT_MAX];

		snprintf(text, sizeof(text), "%s", why);
		if (migrate_msg_send(&in->c, MIG_MSG_REFUSE, text))
			snprintf(why + strlen(why), len - strlen(why), " (the peer did not hear it)");
	}
	return ret;
}

/* Close the connection in->c. */
static void in_close_conn(struct incoming *in)
{
	tls_sess_free(in->c.tls);
	if (in->c.fd >= 0)
		close(in->c.fd);
	in->c = conn_plain(-1);
}

/* Drop the connection in->c (a stray, or one that failed) and what it brought. */
static void in_drop(struct incoming *in)
{
	snapshot_restore_free(in->sr);
	in->sr = NULL;
	in_close_conn(in);
}

/* No source comes back any more: the listener goes, and the key with it. */
static void in_unlisten(struct incoming *in)
{
	if (in->lfd >= 0)
		migrate_unlisten(in->lfd, in->addr);
	in->lfd = -1;
	tls_creds_free(in->p.tls);
	in->p.tls = NULL;
}

/*
 * The connection broke in pre-copy and the source said it reconnects
 * (snapshot_restore_reconnect_s()): wait that long on the listener for a
 * connection that resumes this migration (TLS as the first, the same
 * CONFIG, the token), answer RESUMED with the rounds whole here, and go on.
 * Anything else that comes meanwhile is dropped and waited past.
 */
/*
 * The main stream's pre-copy pass `pass` is applied (SNAPSHOT_ID_ACKS):
 * APPLIED to the source, from the loading thread, the one that owns in->c.
 * A failed send is the connection's failure, which the next read finds.
 */
static void in_applied(void *opaque, uint32_t pass)
{
	struct incoming *in = opaque;
	char text[32];
	int ret;

	snprintf(text, sizeof(text), "pass=%u", pass);
	ret = migrate_msg_send(&in->c, MIG_MSG_APPLIED, text);
	if (ret)
		log_debug("incoming migration: cannot send APPLIED %s: %s", text, strerror(-ret));
}

static int in_resume(void *opaque, struct snapshot_restore *sr, char *err, size_t len)
{
	struct incoming *in = opaque;
	uint32_t secs = snapshot_restore_reconnect_s(sr);
	struct timespec t;
	struct stream_watchdog wd = {
		.deadline_ms = 0,
		.min_bytes = in->p.min_rate * (INCOMING_RATE_WINDOW_MS / 1000),
		.window_ms = INCOMING_RATE_WINDOW_MS,
	};

	if (in->lfd < 0) {
		snprintf(err, len, "no listener to take the source back on");
		return -EPERM;
	}
	log_warnx("incoming migration: the connection broke in pre-copy; waiting up to %u s on %s "
		  "for the source to come back", secs, in->addr);
	in_close_conn(in);
	clock_gettime(CLOCK_MONOTONIC, &t);
	for (;;) {
		double left = secs * 1000.0 - ms_since(&t);
		char peer[128] = "?", why[768] = "", text[32];
		int fd = -1, ret;

		if (left <= 0) {
			snprintf(err, len, "the source did not come back within %u s", secs);
			return -ETIMEDOUT;
		}
		ret = migrate_accept(in->lfd, in->addr, (int)left, &fd, peer, sizeof(peer), why,
				     sizeof(why));
		if (ret == -ETIMEDOUT || ret == -EINTR)
			continue;
		if (ret == -EACCES || ret == -ECONNABORTED)
			continue;
		if (ret) {
			snprintf(err, len, "waiting for the source to come back: %s", why);
			return ret;
		}
		in->c = conn_plain(fd);
		if (in->p.tls) {
			ret = in_not_tls(in, why, sizeof(why));
			if (!ret)
				ret = tls_handshake(in->p.tls, fd, MIG_IO_TIMEOUT_MS, &in->c.tls, why,
						    sizeof(why));
		}
		if (!ret)
			ret = snapshot_restore_resume(sr, &in->c, &wd, why, sizeof(why));
		if (!ret) {
			snprintf(text, sizeof(text), "round=%u", snapshot_restore_last_round(sr));
			ret = migrate_msg_send(&in->c, MIG_MSG_RESUMED, text);
			if (ret)
				snprintf(why, sizeof(why), "cannot answer RESUMED: %s", strerror(-ret));
		}
		if (!ret) {
			in->resumed++;
			log_info("incoming migration: %s came back after %.1f s (%s): pre-copy goes on "
				 "from round %u", peer, ms_since(&t) / 1000, text,
				 snapshot_restore_last_round(sr));
			return 0;
		}
		log_warnx("incoming migration: a connection from %s did not resume the migration: %s; "
			  "still waiting", peer, why);
		in_close_conn(in);
	}
}

/* The main stream's "channel" section came: take the other channels on the listener. */
static int in_chan_start(void *opaque, const struct snapshot_channel *c, char *err, size_t len)
{
	struct incoming *in = opaque;
	struct chan_in_params cp = {
		.lfd = in->lfd,
		.addr = in->addr,
		.tls = in->p.tls,
		.wd = {
			.deadline_ms = (uint64_t)in->p.timeout_s * 1000,
			.min_bytes = in->p.min_rate * (INCOMING_RATE_WINDOW_MS / 1000),
			.window_ms = INCOMING_RATE_WINDOW_MS,
		},
		.main = in->sr,
		.vm = in->vm,
		.main_fd = in->c.fd,
	};

	if (!in->vm) {
		snprintf(err, len, "memory channels before the VM was built");
		return -EPROTO;
	}
	in->channels = c->count;
	return chan_in_start(&cp, c, &in->ci, err, len);
}

/* The main stream's EOF: every channel must have reached its own. */
static int in_chan_wait(void *opaque, char *err, size_t len)
{
	struct incoming *in = opaque;
	int ret = chan_in_wait(in->ci, err, len);

	if (ret)
		snprintf(in->chan_err, sizeof(in->chan_err), "%s", err);
	in->chan_bytes = chan_in_bytes(in->ci);
	chan_in_free(in->ci);
	in->ci = NULL;
	return ret;
}

static void in_chan_abort(void *opaque)
{
	struct incoming *in = opaque;

	if (!in->ci)
		return;
	/* A channel whose link broke too gets a moment to say so: its error is the better one. */
	chan_in_free_error(in->ci, in->chan_err[0] ? NULL : in->chan_err,
			   in->chan_err[0] ? 0 : sizeof(in->chan_err));
	in->ci = NULL;
}

static const struct snapshot_channel_ops in_chan_ops = {
	.start = in_chan_start, .wait = in_chan_wait, .abort = in_chan_abort,
};

int incoming_accept(const char *addr, const struct incoming_params *p,
		    struct incoming **out, char *err, size_t len)
{
	struct incoming *in = calloc(1, sizeof(*in));
	struct timespec t_listen;
	unsigned int strays = 0;
	int lfd = -1, ret;

	if (!in) {
		tls_creds_free(p->tls);
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	in->p = *p;
	in->uffd_pid = getpid();
	in->c = conn_plain(-1);
	in->lfd = in->rq = -1;
	snprintf(in->addr, sizeof(in->addr), "%s", addr);
	ret = migrate_listen(addr, &lfd, err, len);
	if (ret)
		goto fail;
	clock_gettime(CLOCK_MONOTONIC, &t_listen);
	if (p->tls)
		log_info("waiting for an incoming migration on %s (mutual TLS as %s%s%s)", addr,
			 tls_creds_subject(p->tls), tls_creds_peer(p->tls)[0] ? ", the source must be " : "",
			 tls_creds_peer(p->tls));
	else
		log_info("waiting for an incoming migration on %s%s", addr,
			 p->insecure ? " (insecure: no TLS, --insecure)" : "");
	/* Until a connection brings a valid stream: strays are logged, closed, and waited past. */
	for (;;) {
		double left = p->timeout_s ? p->timeout_s * 1000.0 - ms_since(&t_listen) : -1;
		char peer[128] = "?", why[768];
		int fd = -1;

		if (p->timeout_s && left <= 0) {
			snprintf(err, len, "no migration came within the deadline of %u s "
				 "(--incoming-timeout)%s", p->timeout_s,
				 strays ? "; connections that brought none were dropped" : "");
			ret = -ETIMEDOUT;
			goto fail;
		}
		ret = migrate_accept(lfd, addr, p->timeout_s ? (int)MIN(left, 60000.0) : 60000, &fd,
				     peer, sizeof(peer), why, sizeof(why));
		if (ret == -ETIMEDOUT || ret == -EINTR)
			continue;
		if (ret == -EACCES || ret == -ECONNABORTED) {
			log_warnx("incoming migration: a connection was dropped: %s; still waiting on %s",
				  why, addr);
			strays++;
			continue;
		}
		if (ret) {
			snprintf(err, len, "%s", why);
			goto fail;
		}
		ret = in_open(in, fd, peer, why, sizeof(why));
		if (!ret)
			break;
		in_drop(in);
		if (ret != -EBADMSG) {
			snprintf(err, len, "incoming migration refused: %s", why);
			goto fail;
		}
		strays++;
		log_warnx("incoming migration: the connection from %s was dropped: %s; still waiting "
			  "for the source on %s", peer, why, addr);
	}
	/*
	 * Kept open while loading (the sandbox allows accept, not listen): a
	 * source whose connection breaks in pre-copy may come back on it, and
	 * a post-copy source opens its request channel there.
	 */
	in->lfd = lfd;
	snapshot_restore_set_resume(in->sr, in_resume, in);
	snapshot_restore_set_applied(in->sr, in_applied, in);
	snapshot_restore_allow_postcopy(in->sr);
	snapshot_restore_set_channels(in->sr, &in_chan_ops, in);
	*out = in;
	return 0;
fail:
	migrate_unlisten(lfd, addr);
	incoming_close(in);
	return ret;
}

struct snapshot_restore *incoming_restore(struct incoming *in)
{
	return in->sr;
}

void incoming_refuse(struct incoming *in, const char *why)
{
	int ret = migrate_msg_send(&in->c, MIG_MSG_REFUSE, why);

	log_warnx("incoming migration refused: %s%s", why,
		  ret ? " (the source did not hear it)" : "");
}

void incoming_failed(struct incoming *in, const char *why)
{
	if (!in->accepted) {
		char text[MIG_MSG_TEXT_MAX];

		snprintf(text, sizeof(text), "the destination cannot build the VM: %s", why);
		incoming_refuse(in, text);
		return;
	}
	(void)migrate_msg_send(&in->c, MIG_MSG_ERROR, why);
	log_warnx("incoming migration failed: %s; the VM was discarded here", why);
}

int incoming_open_disks(struct incoming *in, const struct vm_config *cfg, char *err, size_t len)
{
	const struct stream_config *sc = snapshot_restore_stream_config(in->sr);

	for (unsigned int i = 0; i < sc->nr_disks; i++) {
		const struct stream_disk *sd = &sc->disks[i];
		const char *path;

		if (sd->instance < 1 || sd->instance > cfg->nr_devices ||
		    cfg->devices[sd->instance - 1].kind != VM_DEV_DISK) {
			snprintf(err, len, "the stream carries the image of device %u, which is not "
				 "a disk", sd->instance);
			return -EINVAL;
		}
		path = cfg->devices[sd->instance - 1].disk.path;
		in->disks[in->nr_disks].instance = sd->instance;
		if (disk_recv_open(&in->disks[in->nr_disks], path, sd->size, in->p.overwrite,
				   err, len))
			return -EINVAL;
		in->disks[in->nr_disks].instance = sd->instance;
		in->nr_disks++;
		log_info("incoming migration: disk %u (%llu MiB) goes to %s", sd->instance,
			 (unsigned long long)(sd->size >> 20), path);
	}
	snapshot_restore_set_disks(in->sr, in->disks, in->nr_disks);
	snapshot_restore_set_clock(in->sr, CPU_CLOCK_ADVANCE);
	return 0;
}

static const char *in_tls_desc(const struct incoming *in)
{
	return in->c.tls ? tls_sess_desc(in->c.tls) : NULL;
}

static bool in_insecure(const struct incoming *in)
{
	return !in->c.tls && !migrate_addr_local(in->addr);
}

/*
 * Post-copy, after the load and before READY: the set of missing pages,
 * RAM registered with userfaultfd and those pages discarded, then the
 * source's request channel (a second connection with HELLO and the token).
 */
static int in_pc_prepare(struct incoming *in, struct vm *vm, char *err, size_t len)
{
	const uint8_t *buf;
	size_t n;
	uint64_t gpa[2], pages[2];
	struct pc_set set;
	int ret;

	buf = snapshot_restore_postcopy(in->sr, &n);
	if (!buf)
		return 0;
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		gpa[i] = vm->mem[i].gpa;
		pages[i] = vm->mem[i].size / 4096;
	}
	ret = pc_set_decode(buf, n, vm->nr_mem, gpa, pages, &set, err, len);
	if (ret)
		return ret;
	if (in->c.tls) {
		pc_set_free(&set);
		snprintf(err, len, "post-copy over TLS is not supported");
		return -EPROTONOSUPPORT;
	}
	{
		uint64_t token = set.token, missing = pc_set_count(&set);

		/*
		 * Under --jail the VM runs in a child forked after the userfaultfd
		 * was made: it would register the monitor's address space, where
		 * guest RAM is not, and never see the guest's faults.
		 */
		if (in->p.uffd >= 0 && in->uffd_pid != getpid()) {
			pc_set_free(&set);
			snprintf(err, len, "this destination cannot take a post-copy migration: "
				 "its userfaultfd belongs to the --jail monitor, not to the VM's "
				 "process");
			return -EPROTONOSUPPORT;
		}
		ret = pc_dest_prepare(vm, in->p.uffd, &set, &in->pc, err, len);
		pc_set_free(&set);
		if (ret)
			return ret;
		migrate_incoming_postcopy(vm, MIG_POSTCOPY, missing, 0, 0, 0, 0);
		/* The source connects right after EOF; strays are dropped. */
		ret = pc_dest_accept_hello(in->lfd, in->addr, PC_HELLO, token, MIG_IO_TIMEOUT_MS,
					   NULL, &in->rq, err, len);
		if (ret)
			return ret;
		/* A source that comes back after a broken link connects there again. */
		pc_dest_set_listener(in->pc, in->lfd, in->addr, in->p.timeout_s);
		in->lfd = -1;
	}
	return 0;
}

/* COMMIT: the disks are ours now, and only now do the devices start. */
static int in_commit(void *opaque, char *err, size_t len)
{
	struct incoming *in = opaque;
	struct vm *vm = in->vm;
	int ret = dev_acquire_all(vm);

	if (ret) {
		snprintf(err, len, "cannot lock the disks: %s", strerror(-ret));
		return ret;
	}
	/* Post-copy: pages are served before anything (a device's resume too) touches them. */
	if (in->pc && (ret = pc_dest_start(in->pc, in->c.fd, in->rq))) {
		snprintf(err, len, "cannot start post-copy: %s", strerror(-ret));
		return ret;
	}
	ret = dev_resume_all(vm);
	if (ret)
		snprintf(err, len, "cannot start the devices: %s", strerror(-ret));
	return ret;
}

int incoming_load(struct incoming *in, struct vm *vm, bool *in_doubt, char *err, size_t len)
{
	static const struct handoff_dst_ops ops = { .commit = in_commit };
	enum handoff_result r;
	uint64_t bytes = 0;
	char why[768];
	int ret;

	*in_doubt = false;
	in->accepted = true;
	/* "acks": this destination sends APPLIED to a source that asks (SNAPSHOT_ID_ACKS). */
	ret = migrate_msg_send(&in->c, MIG_MSG_ACCEPT, "acks");
	if (ret) {
		snprintf(err, len, "the source went away before the memory came: %s",
			 strerror(-ret));
		log_warnx("incoming migration: %s", err);
		return ret;
	}
	in->vm = vm;
	in->channels = 1;
	ret = snapshot_restore_load(in->sr, vm, err, len);
	/* A memory channel that failed broke the main stream too: say why. */
	if (ret && in->chan_err[0])
		snprintf(err, len, "%s", in->chan_err);
	/* The stream is whole (or lost): no source comes back any more (post-copy: see below). */
	{
		size_t n;

		if (ret || !snapshot_restore_postcopy(in->sr, &n))
			in_unlisten(in);
	}
	/* Migrated disks on stable storage before we say READY. */
	for (unsigned int i = 0; !ret && i < in->nr_disks; i++)
		ret = disk_recv_sync(&in->disks[i], err, len);
	if (!ret)
		ret = in_pc_prepare(in, vm, err, len);
	if (ret) {
		incoming_failed(in, err);
		return ret;
	}
	snapshot_restore_stats(in->sr, NULL, &bytes);
	bytes += in->chan_bytes;
	if (in->channels > 1)
		log_info("incoming migration: the stream came over %u channels", in->channels);
	r = handoff_dest(&in->c, in->p.handoff_ms, &ops, in, why, sizeof(why));
	in_unlisten(in);
	switch (r) {
	case HANDOFF_HERE:
		in->taken = true;
		migrate_incoming_done(vm, MIG_INCOMING, in->addr, bytes, in_tls_desc(in), in_insecure(in), NULL);
		return 0;
	case HANDOFF_THERE:
		snprintf(err, len, "%s", why);
		log_warnx("incoming migration failed: %s; the VM was discarded here (the source "
			  "runs it)", why);
		return -ECANCELED;
	case HANDOFF_IN_DOUBT:
		break;
	}
	snprintf(err, len, "%s; the VM is loaded and paused here and may be running at the "
		 "source: check the source, then godwit migrate-resolve --resume or --discard",
		 why);
	log_warnx("incoming migration: %s", err);
	in->taken = true;
	in->in_doubt = true;
	*in_doubt = true;
	migrate_incoming_done(vm, MIG_IN_DOUBT, in->addr, bytes, in_tls_desc(in), in_insecure(in), err);
	return 0;
}

void incoming_started(struct incoming *in)
{
	int ret;

	if (in->in_doubt)
		return;
	ret = handoff_dest_confirm(&in->c);
	if (ret)
		log_warnx("incoming migration: the VM runs here, but the source did not hear it "
			  "(%s): it stays paused in doubt there", strerror(-ret));
	log_info("incoming migration from %s: the VM runs here (%.0f ms after the connection)",
		 in->addr, ms_since(&in->t0));
}

void incoming_stop(struct incoming *in)
{
	if (!in || !in->pc)
		return;
	if (!pc_dest_done(in->pc))
		log_warnx("incoming post-copy: the VM stops before every page came");
	pc_dest_free(in->pc);
	in->pc = NULL;
}

void incoming_close(struct incoming *in)
{
	if (!in)
		return;
	for (unsigned int i = 0; i < in->nr_disks; i++)
		disk_recv_close(&in->disks[i], !in->taken);
	chan_in_free(in->ci);
	pc_dest_free(in->pc);
	if (in->rq >= 0)
		close(in->rq);
	if (in->p.uffd >= 0)
		close(in->p.uffd);
	in_drop(in);
	in_unlisten(in);
	free(in);
}
