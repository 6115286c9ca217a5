/*
 * stream_writer.c - the snapshot/migration stream's writer (stream.h,
 * docs/stream-format.md).
 *
 * Writer: everything goes through one large buffer (STREAM_WBUF_SIZE) that
 * is written with one write() when full, so there is no syscall per page or
 * per section.  Guest pages are copied into that buffer with their CRC
 * computed in the same pass (crc32c_copy): the guest may be running, and a
 * CRC taken from guest memory before a zero-copy writev() could disagree
 * with the bytes the kernel copies a moment later.  RAM is queued as runs
 * (zero-tested when queued) and written as one section per
 * STREAM_W_RAM_DATA_PAGES data pages or STREAM_W_RAM_RUNS runs, with the run
 * table first and the page data after it, starting on a 4 KiB boundary of
 * the stream.
 *
 * Without the page CRC (stream_writer_set_page_crc(w, false): a socket,
 * whose TCP checksum or TLS AEAD guards the bytes), RAM sections are v2
 * with RAM_F_NODATACRC and, on a plain socket, their page data goes from
 * guest memory straight to sendmsg() (ram_send_direct), with no copy into
 * the buffer.  With compression on for a section (RAM_F_ZSTD), its data
 * pages are one zstd frame, compressed before the header is written.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>
#include <netinet/in.h>
#include <linux/errqueue.h>
#include <linux/kvm.h>
#include <linux/sockios.h>
#include <zstd.h>

#include "godwit/crc32c.h"
#include "godwit/dev.h"
#include "godwit/le.h"
#include "godwit/log.h"
#include "godwit/stream.h"
#include "godwit/tls.h"
#include "godwit/vm.h"
#include "stream_int.h"

/* ------------------------------------------------------------------ */
/* Writer                                                              */

struct ram_run {
	uint64_t gpa;
	uint32_t npages;
	uint32_t flags;           /* RUN_F_ZERO */
	const uint8_t *host;      /* data runs */
};

enum wstate { W_NEW, W_OPEN, W_ENDED };

struct stream_writer {
	int fd;
	bool sock;
	struct tls_sess *tls;     /* the socket's TLS session, if any */
	struct fsink *fs;         /* a snapshot file's sink (stream_writer_to_file), or NULL */
	struct wd_state wd;
	enum wstate state;
	uint8_t *buf;
	size_t len;               /* bytes buffered */
	uint64_t off;             /* stream bytes produced */
	uint32_t crc;             /* the open section's CRC */
	uint32_t chain;           /* CRC over the section CRCs so far */
	uint64_t nsections;
	int err;
	char msg[256];
	struct stream_region regions[STREAM_MAX_REGIONS];
	unsigned int nr_regions;
	/* The pending RAM section. */
	struct ram_run *runs;
	unsigned int nruns;
	unsigned int data_pages;
	uint64_t pend_pages;      /* pages in the pending section, zero ones included */
	uint64_t mem_pages;       /* the configured memory; no section holds more */
	struct stream_ram_stats ram;
	bool no_page_crc;         /* stream_writer_set_page_crc(w, false) */
	unsigned int max_data_pages;  /* a section's; smaller with auto (decisions per section) */
	/*
	 * How page data without a CRC goes on a plain socket (GODWIT_SEND, a
	 * measuring knob: docs/stream-format.md): sendmsg from guest memory (the
	 * default), copied into the buffer, or MSG_ZEROCOPY.
	 */
	enum { SEND_DIRECT, SEND_COPY, SEND_ZEROCOPY } send;
	uint64_t zc_sent, zc_done, zc_copied;   /* MSG_ZEROCOPY sends, completions, copied ones */
	uint64_t wait_ns;         /* time spent waiting for the socket to drain (watched: in
				     poll(); blocking: in send(), its copy included) */
	/* Compression (stream_writer_set_compress). */
	enum stream_compress cmode;
	ZSTD_CCtx *cctx;
	uint8_t *zbuf;            /* one section's frame */
	size_t zcap;
	struct stream_compress_stats cst;
	struct {                  /* auto: the current measuring window */
		uint64_t t0, wait0, raw, zin, zout;
		/*
		 * When the last section was written out: a gap of more than
		 * 200 ms before the next is a pause (a round's end), not the
		 * link's time (a section takes longer than that on a slow one).
		 */
		uint64_t last;
		double rate_off;  /* raw bytes/s in the last window without compression */
		unsigned int cooldown;  /* windows to stay off after compression did not pay */
	} au;
};

__attribute__((format(printf, 3, 4)))
static int w_fail(struct stream_writer *w, int err, const char *fmt, ...)
{
	va_list ap;

	if (w->err)
		return w->err;
	w->err = err;
	va_start(ap, fmt);
	vsnprintf(w->msg, sizeof(w->msg), fmt, ap);
	va_end(ap);
	return err;
}

int stream_writer_new(int fd, struct stream_writer **out)
{
	struct stream_writer *w;
	struct stat st;

	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->buf = aligned_alloc(STREAM_PAGE_SIZE, STREAM_WBUF_SIZE);
	w->runs = calloc(STREAM_W_RAM_RUNS, sizeof(*w->runs));
	if (!w->buf || !w->runs) {
		stream_writer_free(w);
		return -ENOMEM;
	}
	w->fd = fd;
	w->sock = !fstat(fd, &st) && S_ISSOCK(st.st_mode);
	w->max_data_pages = STREAM_W_RAM_DATA_PAGES;
	{
		const char *e = getenv("GODWIT_SEND");
		int one = 1;

		if (e && !strcmp(e, "copy"))
			w->send = SEND_COPY;
		else if (e && !strcmp(e, "zerocopy") && w->sock &&
			 !setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)))
			w->send = SEND_ZEROCOPY;
	}
	*out = w;
	return 0;
}

void stream_writer_set_watchdog(struct stream_writer *w, const struct stream_watchdog *wd)
{
	stream_wd_set(&w->wd, wd);
}

void stream_writer_set_tls(struct stream_writer *w, struct tls_sess *tls)
{
	w->tls = tls;
}

/*
 * MSG_ZEROCOPY: take the completions off the socket's error queue, waiting up
 * to timeout_ms for all of them (0: only what is there).  The kernel holds
 * the pages until then; the writer's counts say what it still owes.
 */
static void w_zc_reap(struct stream_writer *w, int timeout_ms)
{
	uint64_t t0 = stream_wd_now_ns();

	while (w->zc_done < w->zc_sent) {
		char control[256];
		struct msghdr mh = { .msg_control = control, .msg_controllen = sizeof(control) };

		if (recvmsg(w->fd, &mh, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
			struct pollfd pfd = { .fd = w->fd, .events = 0 };
			uint64_t el = (stream_wd_now_ns() - t0) / 1000000;

			if ((errno != EAGAIN && errno != EINTR) || el >= (uint64_t)timeout_ms ||
			    poll(&pfd, 1, (int)((uint64_t)timeout_ms - el)) <= 0)
				return;
			continue;
		}
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			struct sock_extended_err ee;

			if (!((cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR) ||
			      (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR)))
				continue;
			memcpy(&ee, CMSG_DATA(cm), sizeof(ee));
			if (ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY || ee.ee_errno)
				continue;
			w->zc_done += (uint64_t)(ee.ee_data - ee.ee_info) + 1;
			if (ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED)
				w->zc_copied += (uint64_t)(ee.ee_data - ee.ee_info) + 1;
		}
	}
}

void stream_writer_free(struct stream_writer *w)
{
	if (!w)
		return;
	if (w->zc_sent > w->zc_done)
		w_zc_reap(w, 2000);
	if (w->zc_sent)
		log_debug("stream: MSG_ZEROCOPY: %llu sends, %llu completed, %llu of them copied",
			  (unsigned long long)w->zc_sent, (unsigned long long)w->zc_done,
			  (unsigned long long)w->zc_copied);
	if (w->fs) {
		w->buf = NULL;          /* the sink's */
		fsink_free(w->fs);
	}
	free(w->buf);
	free(w->runs);
	ZSTD_freeCCtx(w->cctx);
	free(w->zbuf);
	free(w);
}

int stream_writer_to_file(struct stream_writer *w, bool direct)
{
	int ret;

	if (w->fs || w->sock || w->len || w->off)
		return -EINVAL;
	ret = fsink_new(w->fd, STREAM_WBUF_SIZE, direct, &w->fs);
	if (ret)
		return ret;
	free(w->buf);
	w->buf = fsink_buf(w->fs);
	return 0;
}

bool stream_writer_direct(const struct stream_writer *w)
{
	return w->fs && fsink_direct(w->fs);
}

int stream_writer_wait(struct stream_writer *w)
{
	uint64_t at = 0;
	int ret;

	if (w->err || !w->fs)
		return w->err;
	ret = fsink_wait(w->fs, &at);
	if (ret)
		return w_fail(w, ret, "write at stream offset %llu: %s", (unsigned long long)at,
			      strerror(-ret));
	return 0;
}

/* w_drain for a file sink: hand the buffer to its thread, fill the next one. */
static int w_drain_file(struct stream_writer *w)
{
	uint64_t at = 0;
	size_t keep = 0;
	int ret = fsink_submit(w->fs, w->len, w->state == W_ENDED, &keep, &at);

	if (ret)
		return w_fail(w, ret, "write at stream offset %llu: %s", (unsigned long long)at,
			      strerror(-ret));
	w->buf = fsink_buf(w->fs);
	w->len = keep;
	return 0;
}

/* Bytes queued on a socket that its peer has not taken (SIOCOUTQ); 0 if unknown. */
static uint64_t w_outq(int fd)
{
	int q = 0;

	return ioctl(fd, SIOCOUTQ, &q) == 0 && q > 0 ? (uint64_t)q : 0;
}

/*
 * w_sendv - write cnt iovecs out on the writer's fd: all of them, retrying
 * short writes and EINTR; off is the stream offset of their first byte (for
 * the error messages).  The buffer (w_drain) is an iovec of one, and the
 * only kind TLS sends; zc sends with MSG_ZEROCOPY (guest pages only: the
 * buffer is reused at once).  Advances iov as it goes.
 * A watched socket (a migration's, stream_writer_set_watchdog) is written
 * without blocking, and waited on a second at a time: a blocking send()
 * would sit in one call for as long as each piece of the peer's queue drains
 * within SO_SNDTIMEO, out of the watchdog's sight.  What the watchdog counts
 * there is what the peer took (the socket's queue, before and after), not
 * what went into the queue; a peer that takes nothing for SO_SNDTIMEO is the
 * usual silent-peer timeout ("took nothing for 10.000 s").
 */
static int w_sendv(struct stream_writer *w, struct iovec *iov, int cnt, uint64_t off, bool zc)
{
	bool watched = w->sock && w->wd.on;
	uint64_t stalled = 0, limit = 0, q0 = watched ? w_outq(w->fd) : 0, done = 0;

	if (watched) {
		struct timeval tv = { 0 };
		socklen_t tl = sizeof(tv);

		if (getsockopt(w->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &tl) == 0)
			limit = (uint64_t)tv.tv_sec * 1000000000ull + (uint64_t)tv.tv_usec * 1000ull;
	}
	while (cnt) {
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)cnt };
		char wd_why[160];
		uint64_t t0, moved;
		ssize_t n;
		int saved;

		if (stream_wd_before(&w->wd, wd_why, sizeof(wd_why)))
			return w_fail(w, -ETIMEDOUT, "write at stream offset %llu: %s",
				      (unsigned long long)(off + done), wd_why);
		t0 = stream_wd_now_ns();
		if (w->tls)             /* the buffer: one iovec */
			n = tls_send(w->tls, iov->iov_base, iov->iov_len, watched ? MSG_DONTWAIT : 0);
		else if (w->sock)
			n = sendmsg(w->fd, &mh, MSG_NOSIGNAL | (watched ? MSG_DONTWAIT : 0) |
				    (zc ? MSG_ZEROCOPY : 0));
		else
			n = writev(w->fd, iov, cnt);
		saved = errno;
		if (w->sock && !watched)        /* blocking: the link's time, near enough (auto) */
			w->wait_ns += stream_wd_now_ns() - t0;
		if (zc) {
			if (n > 0)
				w->zc_sent++;
			else if (n < 0 && saved == ENOBUFS) {   /* over the pinned-memory limit */
				w_zc_reap(w, 100);
				continue;
			}
			w_zc_reap(w, 0);
		}
		if (n < 0 && saved == EINTR)
			continue;
		moved = n > 0 ? (uint64_t)n : 0;
		if (watched) {
			uint64_t q1;

			if (n < 0 && (saved == EAGAIN || saved == EWOULDBLOCK)) {
				struct pollfd pfd = { .fd = w->fd, .events = POLLOUT };

				if (limit && stalled >= limit)
					goto failed;     /* stream_io_err(): "took nothing for 10.000 s" */
				if (poll(&pfd, 1, 1000) < 0 && errno != EINTR) {
					saved = errno;
					goto failed;
				}
				w->wait_ns += stream_wd_now_ns() - t0;
			}
			q1 = w_outq(w->fd);
			moved = q0 + moved > q1 ? q0 + moved - q1 : 0;
			q0 = q1;
			stalled = moved ? 0 : stalled + (stream_wd_now_ns() - t0);
		}
		if (stream_wd_after(&w->wd, stream_wd_now_ns() - t0, moved, false, wd_why, sizeof(wd_why)))
			return w_fail(w, -ETIMEDOUT, "write at stream offset %llu: %s",
				      (unsigned long long)(off + done), wd_why);
		if (n < 0 && watched && (saved == EAGAIN || saved == EWOULDBLOCK))
			continue;
failed:
		if (n <= 0) {
			int e = n < 0 ? saved : EIO;
			char buf[64];
			const char *why = stream_io_err(w->fd, false, &e, buf, sizeof(buf));

			if (w->tls && e == EPROTO && tls_sess_error(w->tls)[0])
				why = tls_sess_error(w->tls);
			return w_fail(w, -e, "write at stream offset %llu: %s",
				      (unsigned long long)(off + done), why);
		}
		done += (uint64_t)n;
		while (cnt && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt) {
			iov->iov_base = (uint8_t *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

/* w_drain - write out the buffer (w_sendv; a file sink's goes to its thread). */
static int w_drain(struct stream_writer *w)
{
	struct iovec iov = { .iov_base = w->buf, .iov_len = w->len };
	int err;

	if (w->fs)
		return w_drain_file(w);
	err = w_sendv(w, &iov, w->len ? 1 : 0, w->off - w->len, false);
	if (err)
		return err;
	w->len = 0;
	return 0;
}

/*
 * w_send_pages - send cnt iovecs (total bytes) of memory that is not the
 * buffer (guest pages) on the writer's plain socket, after the buffer;
 * w->off counts the bytes.
 */
static int w_send_pages(struct stream_writer *w, struct iovec *iov, int cnt, uint64_t total)
{
	if (w_drain(w))
		return w->err;
	if (w_sendv(w, iov, cnt, w->off, w->send == SEND_ZEROCOPY))
		return w->err;
	w->off += total;
	return 0;
}

/* Append n bytes (src NULL: zeroes) to the stream, in the open section's CRC if crc. */
static int w_put(struct stream_writer *w, const void *src, size_t n, bool crc)
{
	const uint8_t *s = src;

	while (n) {
		size_t k;

		if (w->err)
			return w->err;
		if (w->len == STREAM_WBUF_SIZE && w_drain(w))
			return w->err;
		k = MIN(n, STREAM_WBUF_SIZE - w->len);
		if (s && crc) {
			w->crc = crc32c_copy(w->crc, w->buf + w->len, s, k);
		} else {
			if (s)
				memcpy(w->buf + w->len, s, k);
			else
				memset(w->buf + w->len, 0, k);
			if (crc)
				w->crc = crc32c(w->crc, w->buf + w->len, k);
		}
		w->len += k;
		w->off += k;
		n -= k;
		if (s)
			s += k;
	}
	return w->err;
}

static size_t sec_header_len(const char *id)
{
	return SEC_FIXED + strlen(id);
}

/* A section header; starts the section's CRC. */
static int sec_begin(struct stream_writer *w, unsigned int type, unsigned int flags,
		     const char *id, uint16_t version, uint32_t instance, uint64_t len)
{
	uint8_t h[SEC_FIXED + STREAM_ID_MAX];
	size_t idl = strlen(id);

	h[0] = (uint8_t)type;
	h[1] = (uint8_t)flags;
	le_put(h + 2, idl, 2);
	memcpy(h + 4, id, idl);
	le_put(h + 4 + idl, version, 2);
	le_put(h + 6 + idl, instance, 4);
	le_put(h + 10 + idl, len, 8);
	w->crc = 0;
	return w_put(w, h, SEC_FIXED + idl, true);
}

/* The section's CRC trailer; adds it to the chain. */
static int sec_end(struct stream_writer *w)
{
	uint8_t b[4];

	le_put(b, w->crc, 4);
	if (w_put(w, b, 4, false))
		return w->err;
	w->chain = stream_chain_add(w->chain, w->crc);
	w->nsections++;
	return 0;
}

static int w_section(struct stream_writer *w, unsigned int type, unsigned int flags,
		     const char *id, uint16_t version, uint32_t instance,
		     const void *payload, size_t len)
{
	if (sec_begin(w, type, flags, id, version, instance, len) ||
	    w_put(w, payload, len, true) || sec_end(w))
		return w->err;
	return 0;
}

/*
 * ram_send_direct - the pending section's data pages, from guest memory
 * to the socket (sendmsg with iovecs on the guest's pages), no copy.
 *
 * The guest may be running and rewrite a page while the kernel copies it
 * into the socket: the destination then gets a torn page (part old, part
 * new).  That is harmless because such a page is dirty in the log again
 * (the write came after the dirty bitmap was fetched and cleared), so a
 * later round sends it whole, and the last pass runs with the vCPUs
 * paused, when nothing can tear.  No CRC is taken over these bytes (a CRC
 * from guest memory could disagree with what the kernel copied a moment
 * later); the socket's own integrity check covers them.
 */
static int ram_send_direct(struct stream_writer *w)
{
	struct iovec iov[256];
	uint64_t total = 0;
	int cnt = 0;

	for (unsigned int i = 0; i < w->nruns; i++) {
		const struct ram_run *r = &w->runs[i];
		size_t n = (size_t)r->npages << STREAM_PAGE_SHIFT;

		if (r->flags & RUN_F_ZERO)
			continue;
		if (cnt && (uint8_t *)iov[cnt - 1].iov_base + iov[cnt - 1].iov_len == r->host) {
			iov[cnt - 1].iov_len += n;
		} else {
			if (cnt == (int)ARRAY_SIZE(iov)) {
				if (w_send_pages(w, iov, cnt, total))
					return w->err;
				cnt = 0;
				total = 0;
			}
			iov[cnt].iov_base = (void *)r->host;
			iov[cnt++].iov_len = n;
		}
		total += n;
	}
	return cnt ? w_send_pages(w, iov, cnt, total) : 0;
}

/* The compressor and its output buffer (a section's data at most), once. */
static int ram_zalloc(struct stream_writer *w)
{
	if (!w->cctx) {
		w->cctx = ZSTD_createCCtx();
		if (!w->cctx)
			return -ENOMEM;
		/* level 1: see docs/stream-format.md (RAM, compression) */
		ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, STREAM_ZSTD_LEVEL);
		ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_windowLog, 20);
	}
	if (!w->zbuf) {
		w->zbuf = malloc((size_t)STREAM_W_RAM_DATA_PAGES << STREAM_PAGE_SHIFT);
		if (!w->zbuf)
			return -ENOMEM;
		w->zcap = (size_t)STREAM_W_RAM_DATA_PAGES << STREAM_PAGE_SHIFT;
	}
	return 0;
}

/*
 * ram_compress - the pending section's data pages as one zstd frame in
 * w->zbuf.  Returns its length, or 0 if it would not be smaller than the
 * pages (or zstd failed: the pages then go as they are).  zstd's streaming
 * call copies its input into its own window before working on it, so a
 * page the guest rewrites meanwhile gives a frame that decodes to some
 * version of the page (resent, as above), never an inconsistent frame.
 */
static size_t ram_compress(struct stream_writer *w)
{
	size_t raw = (size_t)w->data_pages << STREAM_PAGE_SHIFT;
	ZSTD_outBuffer out;
	size_t ret = 0;

	if (ram_zalloc(w))
		return 0;
	ZSTD_CCtx_reset(w->cctx, ZSTD_reset_session_only);
	ZSTD_CCtx_setPledgedSrcSize(w->cctx, raw);
	/* Output bounded by raw - 1: a frame that does not fit is not worth it. */
	out = (ZSTD_outBuffer){ w->zbuf, raw - 1, 0 };
	for (unsigned int i = 0; i < w->nruns; i++) {
		const struct ram_run *r = &w->runs[i];
		ZSTD_inBuffer in;

		if (r->flags & RUN_F_ZERO)
			continue;
		in = (ZSTD_inBuffer){ r->host, (size_t)r->npages << STREAM_PAGE_SHIFT, 0 };
		while (in.pos < in.size) {
			ret = ZSTD_compressStream2(w->cctx, &out, &in, ZSTD_e_continue);
			if (ZSTD_isError(ret) || (out.pos == out.size && in.pos < in.size))
				return 0;
		}
	}
	do {
		ZSTD_inBuffer in = { NULL, 0, 0 };

		ret = ZSTD_compressStream2(w->cctx, &out, &in, ZSTD_e_end);
		if (ZSTD_isError(ret) || (ret && out.pos == out.size))
			return 0;
	} while (ret);
	return out.pos;
}

/*
 * ram_sample - up to RAM_SAMPLE_BYTES / 4096 data pages of the pending
 * section, evenly spread over it, copied to the start of w->zbuf (for auto's
 * ratio estimate).  Returns the bytes copied (0: no buffer).
 */
#define RAM_SAMPLE_BYTES (64u << 10)
static size_t ram_sample(struct stream_writer *w)
{
	unsigned int want = RAM_SAMPLE_BYTES >> STREAM_PAGE_SHIFT, step, got = 0;
	uint64_t k = 0;

	if (ram_zalloc(w) || !w->data_pages)
		return 0;
	step = MAX(w->data_pages / want, 1u);
	for (unsigned int i = 0; i < w->nruns && got < want; i++) {
		const struct ram_run *r = &w->runs[i];

		if (r->flags & RUN_F_ZERO)
			continue;
		for (uint32_t p = 0; p < r->npages && got < want; p++, k++)
			if (k % step == 0)
				memcpy(w->zbuf + ((size_t)got++ << STREAM_PAGE_SHIFT),
				       r->host + ((size_t)p << STREAM_PAGE_SHIFT), STREAM_PAGE_SIZE);
	}
	return (size_t)got << STREAM_PAGE_SHIFT;
}

/*
 * ram_want_zstd - compress the pending section?  off: no; zstd: yes; auto:
 * yes while the link, not this side's CPU, is the bottleneck and the data
 * compresses.  Measured per writer over windows of >= 100 ms of sections:
 * the share of the time spent waiting for the socket to drain (w->wait_ns)
 * and, when that is high, the ratio zstd gets on a sample of the section.
 * Compression goes off again when the data stops compressing (ratio below
 * STREAM_ZSTD_MIN_RATIO) or when the writer no longer waits and moves guest
 * memory slower than it did without compression (CPU-bound).
 */
static bool ram_want_zstd(struct stream_writer *w)
{
	uint64_t now, el, wait, raw = (uint64_t)w->data_pages << STREAM_PAGE_SHIFT;
	double share;

	if (w->cmode == STREAM_COMPRESS_OFF || !w->data_pages)
		return false;
	if (w->cmode == STREAM_COMPRESS_ZSTD)
		return true;
	now = stream_wd_now_ns();
	if (!w->au.t0 || now - w->au.last > 200000000ull) {   /* first, or after a pause */
		w->au.t0 = w->au.last = now;
		w->au.wait0 = w->wait_ns;
		w->au.raw = w->au.zin = w->au.zout = 0;
		return w->cst.active;
	}
	w->au.raw += raw;
	el = now - w->au.t0;
	if (el < 100000000ull)
		return w->cst.active;
	wait = w->wait_ns - w->au.wait0;
	share = (double)wait / (double)el;
	if (w->cst.active) {
		double rate = (double)w->au.raw * 1e9 / (double)el;
		bool poor = w->au.zout && (double)w->au.zin < STREAM_ZSTD_MIN_RATIO * (double)w->au.zout;

		if (poor || (share < 0.2 && rate < w->au.rate_off)) {
			w->cst.active = false;
			w->cst.switches++;
			w->au.cooldown = poor ? 4 : 8;
		}
	} else {
		w->au.rate_off = (double)w->au.raw * 1e9 / (double)el;
		if (w->au.cooldown) {
			w->au.cooldown--;
		} else if (share > 0.5) {
			size_t n = ram_sample(w), z;

			z = n ? ZSTD_compressCCtx(w->cctx, w->zbuf + RAM_SAMPLE_BYTES,
						  w->zcap - RAM_SAMPLE_BYTES, w->zbuf, n,
						  STREAM_ZSTD_LEVEL) : 0;
			if (z && !ZSTD_isError(z) && (double)n > STREAM_ZSTD_MIN_RATIO * (double)z) {
				w->cst.active = true;
				w->cst.switches++;
			}
		}
	}
	w->au.t0 = now;
	w->au.wait0 = w->wait_ns;
	w->au.raw = w->au.zin = w->au.zout = 0;
	return w->cst.active;
}

/*
 * ram_emit - write the pending RAM section: header, run table, padding to
 * a 4 KiB stream boundary (only if there is uncompressed page data), the
 * data pages of the data runs in table order (or their zstd frame).  v1
 * (the CRC covers everything) unless the page CRC is off or the section is
 * compressed: then v2 with its flags.
 */
static int ram_emit(struct stream_writer *w)
{
	uint64_t table_end, pad = 0, len, data;
	uint32_t flags = w->no_page_crc ? RAM_F_NODATACRC : 0;
	size_t zlen = 0, hdr;
	uint8_t b[RAM_RUN];

	if (!w->nruns)
		return w->err;
	if (w->err)
		return w->err;
	if (ram_want_zstd(w)) {
		zlen = ram_compress(w);
		if (zlen) {
			flags |= RAM_F_ZSTD;
			w->cst.sections++;
			w->cst.bytes_in += (uint64_t)w->data_pages << STREAM_PAGE_SHIFT;
			w->cst.bytes_out += zlen;
			w->au.zin += (uint64_t)w->data_pages << STREAM_PAGE_SHIFT;
			w->au.zout += zlen;
		} else {
			/* did not compress: counts as a ratio of 1 for auto */
			w->au.zin += (uint64_t)w->data_pages << STREAM_PAGE_SHIFT;
			w->au.zout += (uint64_t)w->data_pages << STREAM_PAGE_SHIFT;
		}
	}
	hdr = flags ? RAM_HDR2 : RAM_HDR;
	table_end = w->off + sec_header_len("ram") + hdr + (uint64_t)w->nruns * RAM_RUN;
	if (w->data_pages && !zlen)
		pad = (STREAM_PAGE_SIZE - (table_end & (STREAM_PAGE_SIZE - 1))) &
		      (STREAM_PAGE_SIZE - 1);
	data = zlen ? zlen : (uint64_t)w->data_pages << STREAM_PAGE_SHIFT;
	len = hdr + (uint64_t)w->nruns * RAM_RUN + pad + data;
	if (sec_begin(w, STREAM_RAM, 0, "ram", flags ? RAM_VERSION_2 : RAM_VERSION, 0, len))
		return w->err;
	le_put(b, w->nruns, 4);
	le_put(b + 4, pad, 4);
	le_put(b + 8, flags, 4);
	le_put(b + 12, zlen, 4);
	if (w_put(w, b, hdr, true))
		return w->err;
	for (unsigned int i = 0; i < w->nruns; i++) {
		le_put(b, w->runs[i].gpa, 8);
		le_put(b + 8, w->runs[i].npages, 4);
		le_put(b + 12, w->runs[i].flags, 4);
		if (w_put(w, b, RAM_RUN, true))
			return w->err;
	}
	if (w_put(w, NULL, pad, true))
		return w->err;
	for (unsigned int i = 0; i < w->nruns; i++) {
		const struct ram_run *r = &w->runs[i];

		w->ram.runs++;
		w->ram.pages += r->npages;
		if (r->flags & RUN_F_ZERO)
			w->ram.zero_pages += r->npages;
	}
	if (zlen) {
		if (w_put(w, w->zbuf, zlen, !(flags & RAM_F_NODATACRC)))
			return w->err;
	} else if ((flags & RAM_F_NODATACRC) && w->sock && !w->tls && w->data_pages &&
		   w->send != SEND_COPY) {
		if (ram_send_direct(w))
			return w->err;
	} else {
		for (unsigned int i = 0; i < w->nruns; i++) {
			const struct ram_run *r = &w->runs[i];

			if (!(r->flags & RUN_F_ZERO) &&
			    w_put(w, r->host, (size_t)r->npages << STREAM_PAGE_SHIFT,
				  !(flags & RAM_F_NODATACRC)))
				return w->err;
		}
	}
	if (sec_end(w))
		return w->err;
	w->ram.sections++;
	if (w->cmode == STREAM_COMPRESS_AUTO)
		w->au.last = stream_wd_now_ns();
	w->nruns = 0;
	w->data_pages = 0;
	w->pend_pages = 0;
	return 0;
}

/* Queue pages [gpa, gpa + npages) at host (checked by the caller). */
static int ram_add(struct stream_writer *w, const uint8_t *host, uint64_t gpa, uint64_t npages)
{
	for (uint64_t i = 0; i < npages; i++, host += STREAM_PAGE_SIZE, gpa += STREAM_PAGE_SIZE) {
		bool zero = stream_page_is_zero(host);
		struct ram_run *last;

		/* a page queued twice must not make a section hold more than the guest */
		if (w->pend_pages == w->mem_pages && ram_emit(w))
			return w->err;
		w->pend_pages++;
		last = w->nruns ? &w->runs[w->nruns - 1] : NULL;

		if (last && (last->flags & RUN_F_ZERO) == (zero ? RUN_F_ZERO : 0) &&
		    last->npages < UINT32_MAX &&
		    last->gpa + ((uint64_t)last->npages << STREAM_PAGE_SHIFT) == gpa &&
		    (zero || last->host + ((size_t)last->npages << STREAM_PAGE_SHIFT) == host)) {
			last->npages++;
		} else {
			if (w->nruns == STREAM_W_RAM_RUNS && ram_emit(w))
				return w->err;
			w->runs[w->nruns++] = (struct ram_run){
				gpa, 1, zero ? RUN_F_ZERO : 0, zero ? NULL : host,
			};
		}
		if (!zero && ++w->data_pages == w->max_data_pages && ram_emit(w))
			return w->err;
	}
	return 0;
}

/* Misuse checks shared by the RAM calls. */
static int ram_check(struct stream_writer *w, const void *host, uint64_t gpa, uint64_t npages)
{
	if (w->err)
		return w->err;
	if (w->state != W_OPEN)
		return w_fail(w, -EINVAL, "RAM written outside stream_begin/stream_end");
	if (!npages)
		return 0;
	if (!host || gpa & (STREAM_PAGE_SIZE - 1) || npages > (1ull << 40))
		return w_fail(w, -EINVAL, "RAM at gpa 0x%llx: unaligned or no host address",
			      (unsigned long long)gpa);
	for (unsigned int i = 0; i < w->nr_regions; i++) {
		const struct stream_region *m = &w->regions[i];

		if (gpa >= m->gpa && gpa - m->gpa <= m->size &&
		    npages <= (m->size - (gpa - m->gpa)) >> STREAM_PAGE_SHIFT)
			return 0;
	}
	return w_fail(w, -EINVAL, "RAM at gpa 0x%llx (%llu pages) is outside the configured memory",
		      (unsigned long long)gpa, (unsigned long long)npages);
}

int stream_put_ram(struct stream_writer *w, const void *host, uint64_t gpa, uint64_t npages)
{
	int ret = ram_check(w, host, gpa, npages);

	if (ret || !npages)
		return ret;
	return ram_add(w, host, gpa, npages);
}

int stream_put_ram_dirty(struct stream_writer *w, const void *host, uint64_t gpa,
			 uint64_t npages, const uint64_t *bitmap)
{
	const uint8_t *h = host;
	uint64_t start = 0, run = 0;
	int ret = ram_check(w, host, gpa, npages);

	if (ret || !npages)
		return ret;
	for (uint64_t wi = 0; wi < (npages + 63) / 64; wi++) {
		uint64_t word = bitmap[wi];

		if (wi == npages / 64)          /* the last, partial word */
			word &= (1ull << (npages % 64)) - 1;
		while (word) {
			uint64_t p = wi * 64 + (uint64_t)__builtin_ctzll(word);

			word &= word - 1;
			if (run && start + run == p) {
				run++;
				continue;
			}
			if (run && ram_add(w, h + (start << STREAM_PAGE_SHIFT),
					   gpa + (start << STREAM_PAGE_SHIFT), run))
				return w->err;
			start = p;
			run = 1;
		}
	}
	if (run && ram_add(w, h + (start << STREAM_PAGE_SHIFT), gpa + (start << STREAM_PAGE_SHIFT),
			   run))
		return w->err;
	return 0;
}

int stream_begin(struct stream_writer *w, const struct stream_config *c)
{
	uint8_t pre[STREAM_PREAMBLE_LEN];
	struct state_out o;
	char why[200];
	uint32_t crc;

	if (w->err)
		return w->err;
	if (w->state != W_NEW)
		return w_fail(w, -EINVAL, "stream_begin called twice");
	if (stream_config_check(c, why, sizeof(why)))
		return w_fail(w, -EINVAL, "configuration: %s", why);
	memcpy(w->regions, c->regions, sizeof(w->regions));
	w->nr_regions = c->nr_regions;
	for (unsigned int i = 0; i < c->nr_regions; i++)
		w->mem_pages += c->regions[i].size >> STREAM_PAGE_SHIFT;

	memcpy(pre, STREAM_MAGIC, STREAM_MAGIC_LEN);
	le_put(pre + 8, STREAM_FORMAT_VERSION, 4);
	le_put(pre + 12, 0, 4);
	crc = crc32c(0, pre, 16);
	le_put(pre + 16, crc, 4);
	if (w_put(w, pre, sizeof(pre), false))
		return w->err;
	w->chain = stream_chain_add(0, crc);

	state_out_init(&o);
	stream_config_encode(c, &o);
	if (o.err) {
		state_out_free(&o);
		return w_fail(w, o.err, "configuration: %s", strerror(-o.err));
	}
	w_section(w, STREAM_CONFIG, 0, "config", CONFIG_VERSION, 0, o.buf, o.len);
	state_out_free(&o);
	w->state = W_OPEN;
	return w->err;
}

int stream_put_section(struct stream_writer *w, unsigned int type, unsigned int flags,
		       const char *id, uint16_t version, uint32_t instance,
		       const void *payload, size_t len)
{
	if (w->err)
		return w->err;
	if (w->state != W_OPEN)
		return w_fail(w, -EINVAL, "section '%s' written outside stream_begin/stream_end",
			      id ? id : "");
	if (!id || !stream_id_valid(id, strlen(id)))
		return w_fail(w, -EINVAL, "section id '%s' is not 1 to %u of [A-Za-z0-9._-]",
			      id ? id : "", STREAM_ID_MAX);
	if (type == STREAM_CONFIG || type == STREAM_RAM || type == STREAM_EOF || !type ||
	    type > 0xff || flags & ~STREAM_F_OPTIONAL || (!payload && len))
		return w_fail(w, -EINVAL, "section '%s': type %u or flags 0x%x not allowed here",
			      id, type, flags);
	if (ram_emit(w))
		return w->err;
	return w_section(w, type, flags, id, version, instance, payload, len);
}

int stream_put_disk(struct stream_writer *w, uint32_t instance, uint64_t off,
		    const void *data, uint64_t len)
{
	uint8_t h[STREAM_DISK_HDR] = { 0 };

	if (w->err)
		return w->err;
	if (w->state != W_OPEN)
		return w_fail(w, -EINVAL, "disk section written outside stream_begin/stream_end");
	if (off % 512 || len % 512 || !len || len > STREAM_DISK_MAX_DATA)
		return w_fail(w, -EINVAL, "disk extent at %llu, %llu bytes: not whole sectors "
			      "or too long", (unsigned long long)off, (unsigned long long)len);
	le_put(h, off, 8);
	le_put(h + 8, len, 8);
	le_put(h + 16, data ? 0 : STREAM_DISK_F_ZERO, 4);
	if (ram_emit(w))
		return w->err;
	if (sec_begin(w, STREAM_DISK, 0, "disk", 1, instance,
		      STREAM_DISK_HDR + (data ? len : 0)) ||
	    w_put(w, h, sizeof(h), true) || (data && w_put(w, data, len, true)) || sec_end(w))
		return w->err;
	return 0;
}

int stream_disk_parse(const uint8_t *p, uint64_t n, uint64_t size, uint64_t *off,
		      uint64_t *len, const uint8_t **data, char *err, size_t errlen)
{
	uint32_t flags;

	if (n < STREAM_DISK_HDR) {
		snprintf(err, errlen, "%llu bytes: shorter than a disk extent header",
			 (unsigned long long)n);
		return -EBADMSG;
	}
	*off = le_get(p, 8);
	*len = le_get(p + 8, 8);
	flags = (uint32_t)le_get(p + 16, 4);
	if ((flags & ~STREAM_DISK_F_ZERO) || le_get(p + 20, 4)) {
		snprintf(err, errlen, "unknown extent flags 0x%x", flags);
		return -EBADMSG;
	}
	if (*off % 512 || *len % 512 || !*len || *len > STREAM_DISK_MAX_DATA ||
	    *off > size || *len > size - *off) {
		snprintf(err, errlen, "extent at %llu, %llu bytes, does not fit a %llu-byte disk "
			 "in whole sectors", (unsigned long long)*off, (unsigned long long)*len,
			 (unsigned long long)size);
		return -EBADMSG;
	}
	if (n != STREAM_DISK_HDR + ((flags & STREAM_DISK_F_ZERO) ? 0 : *len)) {
		snprintf(err, errlen, "payload of %llu bytes for a %s extent of %llu bytes",
			 (unsigned long long)n, (flags & STREAM_DISK_F_ZERO) ? "zero" : "data",
			 (unsigned long long)*len);
		return -EBADMSG;
	}
	*data = (flags & STREAM_DISK_F_ZERO) ? NULL : p + STREAM_DISK_HDR;
	return 0;
}

int stream_put_state(struct stream_writer *w, unsigned int type, const char *id,
		     uint16_t version, uint32_t instance, const struct state_out *o)
{
	if (!w->err && o->err)
		return w_fail(w, o->err, "section '%s' (instance %u): saving failed: %s",
			      id ? id : "", instance, strerror(-o->err));
	return stream_put_section(w, type, 0, id, version, instance, o->buf, o->len);
}

int stream_flush(struct stream_writer *w)
{
	if (w->err)
		return w->err;
	if (ram_emit(w))
		return w->err;
	return w_drain(w);
}

int stream_end(struct stream_writer *w)
{
	struct state_out o;

	if (w->err)
		return w->err;
	if (w->state != W_OPEN)
		return w_fail(w, -EINVAL, "stream_end without stream_begin, or twice");
	if (ram_emit(w))
		return w->err;
	state_out_init(&o);
	state_put_u64(&o, EOF_SECTIONS, w->nsections);
	state_put_u64(&o, EOF_OFFSET, w->off);
	state_put_u32(&o, EOF_CHAIN, w->chain);
	if (o.err) {
		state_out_free(&o);
		return w_fail(w, o.err, "eof: %s", strerror(-o.err));
	}
	w_section(w, STREAM_EOF, 0, "eof", EOF_VERSION, 0, o.buf, o.len);
	state_out_free(&o);
	w->state = W_ENDED;
	if (w->err)
		return w->err;
	return w_drain(w);
}

const char *stream_writer_error(const struct stream_writer *w)
{
	return w->msg;
}

uint64_t stream_writer_offset(const struct stream_writer *w)
{
	return w->off;
}

void stream_writer_ram_stats(const struct stream_writer *w, struct stream_ram_stats *st)
{
	*st = w->ram;
}

void stream_writer_set_page_crc(struct stream_writer *w, bool on)
{
	w->no_page_crc = !on;
}

void stream_writer_set_compress(struct stream_writer *w, enum stream_compress mode)
{
	w->cmode = mode;
	w->cst.active = mode == STREAM_COMPRESS_ZSTD;
	/* auto decides per section: 8 MiB ones, so that a slow link is noticed within the first */
	w->max_data_pages = mode == STREAM_COMPRESS_AUTO ? STREAM_W_RAM_DATA_PAGES / 4 :
			    STREAM_W_RAM_DATA_PAGES;
}

void stream_writer_compress_stats(const struct stream_writer *w, struct stream_compress_stats *st)
{
	*st = w->cst;
}

const char *stream_compress_name(enum stream_compress mode)
{
	switch (mode) {
	case STREAM_COMPRESS_OFF:  return "off";
	case STREAM_COMPRESS_ZSTD: return "zstd";
	case STREAM_COMPRESS_AUTO: return "auto";
	}
	return "unknown";
}

int stream_compress_parse(const char *s, enum stream_compress *mode)
{
	static const enum stream_compress all[] = {
		STREAM_COMPRESS_OFF, STREAM_COMPRESS_ZSTD, STREAM_COMPRESS_AUTO,
	};

	for (size_t i = 0; s && i < ARRAY_SIZE(all); i++)
		if (!strcmp(s, stream_compress_name(all[i]))) {
			*mode = all[i];
			return 0;
		}
	return -EINVAL;
}
