/*
 * stream_reader.c - the snapshot/migration stream's reader (stream.h,
 * docs/stream-format.md).
 *
 * Reader: a window over the input (a 1 MiB buffer on an fd, or the caller's
 * memory), a stream offset, and the running CRC of the open section.  No
 * length is trusted beyond what can be checked: the bytes left (regular
 * files, memory), a per-type maximum (pipes and sockets), and for RAM the
 * exact length its run table implies.  Payloads are buffered as their bytes
 * arrive, so a lying length costs no more memory than the bytes sent.
 * Every failure records one message naming where it happened, and is
 * sticky.
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
#include <unistd.h>
#include <linux/kvm.h>
#include <linux/sockios.h>
#include <zstd.h>

#include "godwit/crc32c.h"
#include "godwit/dev.h"
#include "godwit/le.h"
#include "godwit/stream.h"
#include "godwit/tls.h"
#include "godwit/vm.h"
#include "stream_int.h"

/* ------------------------------------------------------------------ */
/* Reader                                                              */

enum rstate {
	R_START,                  /* nothing read */
	R_BETWEEN,                /* before a section header */
	R_PAYLOAD,                /* in cur's payload (r->left bytes to go) */
	R_DONE,                   /* EOF read and verified */
	R_FAILED,
};
enum rwhere { AT_PREAMBLE, AT_SECHDR, AT_SECTION };

struct rd_run {
	uint64_t gpa;
	uint32_t npages, flags;
	uint8_t *host;
};

struct stream_reader {
	int fd;                   /* -1: memory */
	struct tls_sess *tls;     /* the socket's TLS session, if any */
	struct wd_state wd;
	uint8_t *own;             /* the fd's buffer */
	const uint8_t *data;      /* the window: data[pos..end) is buffered */
	size_t pos, end, cap;
	uint64_t off;             /* stream offset of data[pos] */
	uint64_t size;            /* stream length if known, else UINT64_MAX */
	enum rstate state;
	enum rwhere where;
	uint64_t hdr_off;         /* where the current section header starts */
	struct stream_section cur;
	uint64_t left;            /* payload bytes of cur not consumed */
	uint32_t crc;             /* cur's running CRC */
	uint64_t nsections;
	uint32_t chain;
	uint32_t version;         /* the preamble's */
	bool report_unknown;
	bool target_zeroed;          /* stream_reader_target_zeroed(): skip zero-run checks */
	stream_place_fn place;       /* stream_reader_set_placer() */
	void *place_opaque;
	struct stream_config cfg;
	uint64_t mem_pages;
	uint8_t *payload;
	size_t payload_cap;
	struct rd_run *runs;
	size_t runs_cap;
	bool nocrc;               /* r_copy leaves the bytes out of the CRC (RAM_F_NODATACRC) */
	ZSTD_DCtx *dctx;          /* RAM_F_ZSTD sections */
	uint8_t *zscratch;        /* decompressed pages with no destination (no lookup) */
	int err;
	bool link_failed;            /* stream_reader_link_failed() */
	char msg[400];
};

__attribute__((format(printf, 3, 4)))
static int r_fail(struct stream_reader *r, int err, const char *fmt, ...)
{
	va_list ap;
	int n = 0;

	if (r->err)
		return r->err;
	r->err = err;
	r->state = R_FAILED;
	switch (r->where) {
	case AT_PREAMBLE:
		n = snprintf(r->msg, sizeof(r->msg), "stream header: ");
		break;
	case AT_SECHDR:
		n = snprintf(r->msg, sizeof(r->msg), "section header at offset 0x%llx: ",
			     (unsigned long long)r->hdr_off);
		break;
	case AT_SECTION:
		n = snprintf(r->msg, sizeof(r->msg), "section '%s' (%s", r->cur.id,
			     stream_type_name(r->cur.type));
		if (!stream_type_known(r->cur.type))
			n += snprintf(r->msg + n, sizeof(r->msg) - n, " type %u", r->cur.type);
		n += snprintf(r->msg + n, sizeof(r->msg) - n, ", instance %u, offset 0x%llx): ",
			      r->cur.instance, (unsigned long long)r->cur.offset);
		break;
	}
	if (n < 0 || (size_t)n >= sizeof(r->msg))
		n = 0;
	va_start(ap, fmt);
	vsnprintf(r->msg + n, sizeof(r->msg) - n, fmt, ap);
	va_end(ap);
	return err;
}

int stream_refuse(struct stream_reader *r, int err, const char *fmt, ...)
{
	char m[300];
	va_list ap;

	if (r->err)
		return r->err;
	if (err >= 0)
		err = -EINVAL;
	va_start(ap, fmt);
	vsnprintf(m, sizeof(m), fmt, ap);
	va_end(ap);
	return r_fail(r, err, "%s", m);
}

static int r_truncated(struct stream_reader *r)
{
	return r_fail(r, -EBADMSG, "truncated: the stream ends at offset 0x%llx",
		      (unsigned long long)(r->off + (r->end - r->pos)));
}

static int r_new(int fd, const void *p, size_t len, struct stream_reader **out)
{
	struct stream_reader *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	r->fd = fd;
	r->size = UINT64_MAX;
	if (fd >= 0) {
		struct stat st;
		off_t at;

		r->own = malloc(STREAM_RBUF_SIZE);
		if (!r->own) {
			free(r);
			return -ENOMEM;
		}
		r->data = r->own;
		r->cap = STREAM_RBUF_SIZE;
		at = lseek(fd, 0, SEEK_CUR);
		if (!fstat(fd, &st) && S_ISREG(st.st_mode) && at >= 0 && st.st_size >= at)
			r->size = (uint64_t)(st.st_size - at);
	} else {
		r->data = p;
		r->end = r->cap = len;
		r->size = len;
	}
	*out = r;
	return 0;
}

int stream_reader_new(int fd, struct stream_reader **out)
{
	if (fd < 0)
		return -EBADF;
	return r_new(fd, NULL, 0, out);
}

int stream_reader_new_mem(const void *p, size_t len, struct stream_reader **out)
{
	if (!p && len)
		return -EINVAL;
	return r_new(-1, p, len, out);
}

void stream_reader_set_watchdog(struct stream_reader *r, const struct stream_watchdog *wd)
{
	stream_wd_set(&r->wd, wd);
}

void stream_reader_set_tls(struct stream_reader *r, struct tls_sess *tls)
{
	r->tls = tls;
}

void stream_reader_free(struct stream_reader *r)
{
	if (!r)
		return;
	free(r->own);
	free(r->payload);
	free(r->runs);
	ZSTD_freeDCtx(r->dctx);
	free(r->zscratch);
	free(r);
}

/* read() once into the buffer's free space; 0 at end of input. */
static ssize_t r_read(struct stream_reader *r, void *dst, size_t n)
{
	for (;;) {
		char wd_why[160];
		uint64_t t0;
		ssize_t k;
		int saved;

		r->link_failed = true;      /* unless this read brings data */
		if (stream_wd_before(&r->wd, wd_why, sizeof(wd_why)))
			return r_fail(r, -ETIMEDOUT, "read at offset 0x%llx: %s",
				      (unsigned long long)(r->off + (r->end - r->pos)), wd_why);
		t0 = stream_wd_now_ns();
		k = r->tls ? tls_recv(r->tls, dst, n, 0) : read(r->fd, dst, n);
		saved = errno;
		if ((k >= 0 || saved != EINTR) &&
		    stream_wd_after(&r->wd, stream_wd_now_ns() - t0, k > 0 ? (uint64_t)k : 0, true, wd_why,
			     sizeof(wd_why)))
			return r_fail(r, -ETIMEDOUT, "read at offset 0x%llx: %s",
				      (unsigned long long)(r->off + (r->end - r->pos)), wd_why);
		if (k > 0)
			r->link_failed = false;
		if (k >= 0)
			return k;     /* 0: the end of input; the caller says it is truncated */
		if (saved != EINTR) {
			int e = saved;
			char buf[64];
			const char *why = stream_io_err(r->fd, true, &e, buf, sizeof(buf));

			if (r->tls && e == EPROTO && tls_sess_error(r->tls)[0])
				why = tls_sess_error(r->tls);

			return r_fail(r, -e, "read at offset 0x%llx: %s",
				      (unsigned long long)(r->off + (r->end - r->pos)), why);
		}
	}
}

/* Make at least need (<= cap) bytes available in the window. */
static int r_fill(struct stream_reader *r, size_t need)
{
	if (r->end - r->pos >= need)
		return 0;
	if (r->fd < 0 || need > r->cap)
		return r_truncated(r);
	if (r->cap - r->pos < need) {
		memmove(r->own, r->own + r->pos, r->end - r->pos);
		r->end -= r->pos;
		r->pos = 0;
	}
	while (r->end - r->pos < need) {
		ssize_t k = r_read(r, r->own + r->end, r->cap - r->end);

		if (k < 0)
			return (int)k;
		if (!k)
			return r_truncated(r);
		r->end += (size_t)k;
	}
	return 0;
}

/* Consume n buffered bytes, in the section CRC if crc. */
static const uint8_t *r_take(struct stream_reader *r, size_t n, bool crc)
{
	const uint8_t *p = r->data + r->pos;

	if (crc)
		r->crc = crc32c(r->crc, p, n);
	r->pos += n;
	r->off += n;
	return p;
}

/*
 * Consume n bytes into dst (NULL: discard), in the section CRC.  Large reads
 * go straight from the fd into dst, a megabyte at a time, and the CRC is
 * taken from dst while it is still in cache.
 */
static int r_copy(struct stream_reader *r, uint8_t *dst, uint64_t n)
{
	while (n) {
		size_t avail = r->end - r->pos, k;

		if (!avail) {
			if (dst && r->fd >= 0 && n >= r->cap / 2) {
				ssize_t got = r_read(r, dst, MIN(n, (uint64_t)r->cap));

				if (got < 0)
					return (int)got;
				if (!got)
					return r_truncated(r);
				if (!r->nocrc)
					r->crc = crc32c(r->crc, dst, (size_t)got);
				r->off += (uint64_t)got;
				dst += got;
				n -= (uint64_t)got;
				continue;
			}
			if (r->fd < 0)
				return r_truncated(r);
			r->pos = r->end = 0;
			if (r_fill(r, 1))
				return r->err;
			avail = r->end - r->pos;
		}
		k = (size_t)MIN((uint64_t)avail, n);
		if (dst && r->nocrc) {
			memcpy(dst, r->data + r->pos, k);
			dst += k;
		} else if (dst) {
			r->crc = crc32c_copy(r->crc, dst, r->data + r->pos, k);
			dst += k;
		} else if (!r->nocrc) {
			r->crc = crc32c(r->crc, r->data + r->pos, k);
		}
		r->pos += k;
		r->off += k;
		n -= k;
	}
	return 0;
}

/*
 * Data pages through the placer: at most R_STAGE bytes at a time, staged in
 * the window (the socket's bytes land there, the CRC is taken there while
 * they are in cache), then handed over.  The window is only moved when less
 * than a page is buffered, so what is staged is never copied twice.
 */
#define R_STAGE (256u << 10)

static int r_place(struct stream_reader *r, uint64_t gpa, uint8_t *host, uint64_t n)
{
	while (n) {
		size_t want = (size_t)MIN(n, (uint64_t)R_STAGE), avail = r->end - r->pos, k;
		int ret;

		if (avail < want) {
			size_t need = want;

			if (r->cap - r->pos < want)     /* filling would move the window */
				need = avail >= STREAM_PAGE_SIZE ? avail : STREAM_PAGE_SIZE;
			if (r_fill(r, need))
				return r->err;
			avail = r->end - r->pos;
		}
		k = MIN(want, avail) & ~(size_t)(STREAM_PAGE_SIZE - 1);
		ret = r->place(r->place_opaque, gpa, host, r_take(r, k, !r->nocrc), k);
		if (ret)
			return r_fail(r, ret < 0 ? ret : -EIO, "cannot place %zu bytes at gpa 0x%llx: %s",
				      k, (unsigned long long)gpa, strerror(ret < 0 ? -ret : EIO));
		gpa += k;
		host += k;
		n -= k;
	}
	return 0;
}

/* The payload is consumed: check the CRC trailer, chain it. */
static int r_end_section(struct stream_reader *r)
{
	uint32_t stored;

	if (r_fill(r, 4))
		return r->err;
	stored = (uint32_t)le_get(r_take(r, 4, false), 4);
	if (CRC_DIFFERS(stored, r->crc))
		return r_fail(r, -EBADMSG, "crc mismatch (stored 0x%08x, computed 0x%08x)",
			      stored, r->crc);
	r->chain = stream_chain_add(r->chain, stored);
	r->state = R_BETWEEN;
	r->where = AT_SECHDR;
	r->hdr_off = r->off;
	return 0;
}

int stream_skip(struct stream_reader *r)
{
	if (r->err)
		return r->err;
	if (r->state != R_PAYLOAD)
		return r->state == R_BETWEEN || r->state == R_DONE ? 0 :
			r_fail(r, -EINVAL, "stream_skip before the header");
	if (r_copy(r, NULL, r->left))
		return r->err;
	r->left = 0;
	return r_end_section(r);
}

/* Payload into r->payload, growing with the bytes that actually arrive. */
static int r_payload(struct stream_reader *r, uint64_t len)
{
	uint64_t have = 0;

	while (have < len) {
		size_t chunk = (size_t)MIN(len - have, (uint64_t)STREAM_RBUF_SIZE);

		if (have + chunk > r->payload_cap) {
			size_t cap = MAX(r->payload_cap * 2, (size_t)(have + chunk));
			uint8_t *nb;

			cap = (size_t)MIN((uint64_t)cap, len);
			nb = realloc(r->payload, cap);
			if (!nb)
				return r_fail(r, -ENOMEM, "out of memory for %llu bytes",
					      (unsigned long long)len);
			r->payload = nb;
			r->payload_cap = cap;
		}
		if (r_copy(r, r->payload + have, chunk))
			return r->err;
		have += chunk;
		r->left -= chunk;
	}
	return r_end_section(r);
}

int stream_read_payload(struct stream_reader *r, const uint8_t **p)
{
	static const uint8_t empty[1];
	int ret;

	if (r->err)
		return r->err;
	if (r->state != R_PAYLOAD || r->left != r->cur.len || r->cur.type == STREAM_RAM)
		return r_fail(r, -EINVAL, "stream_read_payload: no unread non-RAM section");
	ret = r_payload(r, r->cur.len);
	if (ret)
		return ret;
	*p = r->cur.len ? r->payload : empty;
	return 0;
}

/* The largest payload a section of this type may have, where nothing else bounds it. */
static uint64_t type_max(const struct stream_reader *r, unsigned int type)
{
	switch (type) {
	case STREAM_CONFIG: return STREAM_MAX_CONFIG;
	case STREAM_CPU:    return STREAM_MAX_CPU;
	case STREAM_DEVICE: return STREAM_MAX_DEVICE;
	case STREAM_VM:     return STREAM_MAX_VM;
	case STREAM_EOF:    return STREAM_MAX_EOF;
	case STREAM_DISK:   return STREAM_DISK_HDR + STREAM_DISK_MAX_DATA;
	case STREAM_RAM:
		return RAM_HDR2 + (uint64_t)STREAM_R_RAM_RUNS * RAM_RUN + STREAM_PAGE_SIZE +
		       (r->mem_pages << STREAM_PAGE_SHIFT);
	default:            return STREAM_MAX_SKIP;
	}
}

static int section_version_check(struct stream_reader *r, unsigned int max)
{
	if (r->cur.version == 0 || r->cur.version > max)
		return r_fail(r, -EPROTONOSUPPORT, "version %u is not one this godwit reads (1 to %u)",
			      r->cur.version, max);
	return 0;
}

/* Read and check a section header into r->cur; the payload is next. */
static int r_section_header(struct stream_reader *r)
{
	struct stream_section *s = &r->cur;
	const uint8_t *h;
	size_t idl;
	uint64_t left;

	r->where = AT_SECHDR;
	r->hdr_off = r->off;
	r->crc = 0;
	if (r_fill(r, 4))
		return r->err;
	h = r->data + r->pos;
	idl = (size_t)le_get(h + 2, 2);
	if (!idl || idl > STREAM_ID_MAX)
		return r_fail(r, -EBADMSG, "id length %zu (1 to %u)", idl, STREAM_ID_MAX);
	if (r_fill(r, SEC_FIXED + idl))
		return r->err;
	h = r_take(r, SEC_FIXED + idl, true);
	memset(s, 0, sizeof(*s));
	s->type = h[0];
	s->flags = h[1];
	if (!stream_id_valid((const char *)h + 4, idl))
		return r_fail(r, -EBADMSG, "the id is not [A-Za-z0-9._-]");
	memcpy(s->id, h + 4, idl);
	s->id[idl] = '\0';
	s->version = (uint16_t)le_get(h + 4 + idl, 2);
	s->instance = (uint32_t)le_get(h + 6 + idl, 4);
	s->len = le_get(h + 10 + idl, 8);
	s->offset = r->hdr_off;
	r->nsections++;
	r->where = AT_SECTION;
	r->state = R_PAYLOAD;
	r->left = s->len;

	if (s->flags & ~STREAM_F_OPTIONAL)
		return r_fail(r, -EPROTONOSUPPORT, "unknown flags 0x%x", s->flags);
	left = r->size == UINT64_MAX ? UINT64_MAX : r->size - r->off;
	if (left < 4 || s->len > left - 4)
		return r_fail(r, -EBADMSG, "length %llu is more than the %llu bytes left",
			      (unsigned long long)s->len,
			      (unsigned long long)(left >= 4 ? left - 4 : 0));
	if (!stream_type_known(s->type) && !(s->flags & STREAM_F_OPTIONAL))
		return r_fail(r, -EPROTONOSUPPORT, "unknown required section (type %u): this "
			      "godwit cannot load it", s->type);
	if (s->len > type_max(r, s->type))
		return r_fail(r, -EBADMSG, "length %llu is more than a %s section may have (%llu)",
			      (unsigned long long)s->len, stream_type_name(s->type),
			      (unsigned long long)type_max(r, s->type));
	return 0;
}

int stream_read_header(struct stream_reader *r, const struct stream_config **cfg)
{
	const uint8_t *pre;
	uint32_t version, flags, stored, crc;
	char why[200];
	int ret;

	if (r->err)
		return r->err;
	if (r->state != R_START)
		return r_fail(r, -EINVAL, "stream_read_header called twice");
	r->where = AT_PREAMBLE;
	if (r_fill(r, STREAM_PREAMBLE_LEN))
		return r->err;
	pre = r_take(r, STREAM_PREAMBLE_LEN, false);
	if (memcmp(pre, STREAM_MAGIC, STREAM_MAGIC_LEN))
		return r_fail(r, -EBADMSG, "bad magic: not a godwit stream");
	version = (uint32_t)le_get(pre + 8, 4);
	flags = (uint32_t)le_get(pre + 12, 4);
	stored = (uint32_t)le_get(pre + 16, 4);
	crc = crc32c(0, pre, 16);
	if (CRC_DIFFERS(stored, crc))
		return r_fail(r, -EBADMSG, "crc mismatch (stored 0x%08x, computed 0x%08x)",
			      stored, crc);
	if (version > STREAM_FORMAT_VERSION)
		return r_fail(r, -EPROTONOSUPPORT, "format version %u is newer than this godwit "
			      "reads (%u to %u)", version, STREAM_FORMAT_MIN_VERSION,
			      STREAM_FORMAT_VERSION);
	if (version < STREAM_FORMAT_MIN_VERSION)
		return r_fail(r, -EPROTONOSUPPORT, "format version %u is older than this godwit "
			      "reads (%u to %u)", version, STREAM_FORMAT_MIN_VERSION,
			      STREAM_FORMAT_VERSION);
	if (flags)
		return r_fail(r, -EPROTONOSUPPORT, "unknown flags 0x%x", flags);
	r->chain = stream_chain_add(0, stored);
	r->version = version;
	r->state = R_BETWEEN;

	ret = r_section_header(r);
	if (ret)
		return ret;
	if (r->cur.type != STREAM_CONFIG)
		return r_fail(r, -EBADMSG, "the first section must be the configuration");
	ret = section_version_check(r, CONFIG_VERSION);
	if (ret)
		return ret;
	ret = r_payload(r, r->cur.len);
	if (ret)
		return ret;
	r->where = AT_SECTION;          /* errors below are the config's */
	if (stream_config_decode(r->payload, r->cur.len, &r->cfg, why, sizeof(why)))
		return r_fail(r, -EBADMSG, "%s", why);
	r->cfg.digest = crc32c(0, r->payload, r->cur.len);
	for (unsigned int i = 0; i < r->cfg.nr_regions; i++)
		r->mem_pages += r->cfg.regions[i].size >> STREAM_PAGE_SHIFT;
	r->where = AT_SECHDR;
	*cfg = &r->cfg;
	return 0;
}

/* The EOF section: the counts and the chain must match what was read. */
static int r_eof(struct stream_reader *r)
{
	uint64_t at = r->cur.offset, nsec = r->nsections - 1;
	uint32_t chain = r->chain;
	struct state_in in;
	struct state_field f;
	uint64_t s_nsec = 0, s_off = 0;
	uint32_t s_chain = 0;
	unsigned int have = 0;
	int ret;

	ret = section_version_check(r, EOF_VERSION);
	if (ret || (ret = r_payload(r, r->cur.len)))
		return ret;
	r->where = AT_SECTION;
	state_in_init(&in, r->payload, r->cur.len);
	while ((ret = state_next(&in, &f)) > 0) {
		ret = 0;
		if (f.tag == EOF_SECTIONS)
			ret = state_get_u64(&f, &s_nsec), have |= 1;
		else if (f.tag == EOF_OFFSET)
			ret = state_get_u64(&f, &s_off), have |= 2;
		else if (f.tag == EOF_CHAIN)
			ret = state_get_u32(&f, &s_chain), have |= 4;
		if (ret)
			break;
	}
	if (ret || have != 7)
		return r_fail(r, -EBADMSG, "bad end-of-stream record");
	if (s_nsec != nsec)
		return r_fail(r, -EBADMSG, "the writer wrote %llu sections, %llu were read",
			      (unsigned long long)s_nsec, (unsigned long long)nsec);
	if (s_off != at)
		return r_fail(r, -EBADMSG, "the writer's end is at offset 0x%llx, the reader's at "
			      "0x%llx", (unsigned long long)s_off, (unsigned long long)at);
	if (CRC_DIFFERS(s_chain, chain))
		return r_fail(r, -EBADMSG, "stream checksum mismatch (stored 0x%08x, computed "
			      "0x%08x): a section was lost, repeated or reordered", s_chain, chain);
	r->state = R_DONE;
	return 0;
}

int stream_next_section(struct stream_reader *r, struct stream_section *s)
{
	int ret;

	for (;;) {
		if (r->err)
			return r->err;
		if (r->state == R_DONE)
			return 0;
		if (r->state == R_START)
			return r_fail(r, -EINVAL, "stream_next_section before stream_read_header");
		if (r->state == R_PAYLOAD && stream_skip(r))
			return r->err;
		ret = r_section_header(r);
		if (ret)
			return ret;
		switch (r->cur.type) {
		case STREAM_CONFIG:
			return r_fail(r, -EBADMSG, "a second configuration section");
		case STREAM_EOF:
			ret = r_eof(r);
			return ret ? ret : 0;
		case STREAM_RAM:
			ret = section_version_check(r, RAM_VERSION_2);
			if (ret)
				return ret;
			break;
		default:
			if (!stream_type_known(r->cur.type) && !r->report_unknown) {
				/* Unknown and optional (required ones were refused). */
				if (stream_skip(r))
					return r->err;
				continue;
			}
		}
		*s = r->cur;
		return 1;
	}
}

/* Is [gpa, gpa + npages pages) inside one configured region? */
static bool in_layout(const struct stream_config *c, uint64_t gpa, uint64_t npages)
{
	for (unsigned int i = 0; i < c->nr_regions; i++) {
		const struct stream_region *m = &c->regions[i];

		if (gpa >= m->gpa && gpa - m->gpa < m->size &&
		    npages <= (m->size - (gpa - m->gpa)) >> STREAM_PAGE_SHIFT)
			return true;
	}
	return false;
}

#define ZSCRATCH (128u << 10)

/* Consume n (<= buffered) bytes of a zstd frame, in the CRC unless NODATACRC. */
static void r_ztake(struct stream_reader *r, size_t n)
{
	if (!r->nocrc)
		r->crc = crc32c(r->crc, r->data + r->pos, n);
	r->pos += n;
	r->off += n;
}

/*
 * The section's zstd frame (zlen bytes) into its data runs' pages, a run at
 * a time in table order (zstd_begin, zstd_run per data run, zstd_end).  The
 * frame must decode to exactly the data pages of the run table: one that
 * ends early, holds more, is corrupt or needs a window above
 * 2^RAM_ZSTD_WINDOW_LOG_MAX is refused.  Nothing is allocated by the
 * frame's say: the outputs are the pages (or, with no destination, a
 * scratch buffer), the window is bounded.
 */
struct zstate {
	uint64_t zlen, zleft, done, want;   /* frame bytes, left; page bytes out, expected */
	size_t ret;                         /* ZSTD_decompressStream's last: 0 = frame ended */
};

static int zstd_fail(struct stream_reader *r, const struct zstate *z, size_t ret)
{
	return r_fail(r, -EBADMSG, "bad zstd frame (%s) after %llu of its %llu bytes",
		      ZSTD_getErrorName(ret), (unsigned long long)(z->zlen - z->zleft),
		      (unsigned long long)z->zlen);
}

static int zstd_begin(struct stream_reader *r, struct zstate *z, uint64_t zlen, uint64_t want)
{
	*z = (struct zstate){ .zlen = zlen, .zleft = zlen, .want = want, .ret = 1 };
	if (!r->dctx) {
		r->dctx = ZSTD_createDCtx();
		if (!r->dctx)
			return r_fail(r, -ENOMEM, "out of memory for the decompressor");
		ZSTD_DCtx_setParameter(r->dctx, ZSTD_d_windowLogMax, RAM_ZSTD_WINDOW_LOG_MAX);
	}
	ZSTD_DCtx_reset(r->dctx, ZSTD_reset_session_only);
	return 0;
}

/* Decode into n bytes at dst (NULL: only check); out is 1 byte past the pages' end. */
static int zstd_step(struct stream_reader *r, struct zstate *z, uint8_t *dst, size_t n,
		     size_t *got)
{
	ZSTD_outBuffer out = { dst, n, 0 };
	ZSTD_inBuffer in;

	if (r->end == r->pos && r_fill(r, 1))
		return r->err;
	in = (ZSTD_inBuffer){ r->data + r->pos, (size_t)MIN((uint64_t)(r->end - r->pos), z->zleft), 0 };
	z->ret = ZSTD_decompressStream(r->dctx, &out, &in);
	if (ZSTD_isError(z->ret))
		return zstd_fail(r, z, z->ret);
	r_ztake(r, in.pos);
	z->zleft -= in.pos;
	*got = out.pos;
	return 0;
}

/*
 * bytes of page data for gpa, whose host mapping is dst (NULL: only
 * checked): decoded straight into dst, or through the placer (staged in the
 * scratch buffer, ZSCRATCH bytes, a multiple of the page size, at a time).
 */
static int zstd_run(struct stream_reader *r, struct zstate *z, uint64_t gpa, uint8_t *dst,
		    uint64_t bytes)
{
	bool staged = !dst || r->place;

	if (staged && !r->zscratch && !(r->zscratch = malloc(ZSCRATCH)))
		return r_fail(r, -ENOMEM, "out of memory for decompressing");
	while (bytes) {
		size_t n = (size_t)(staged ? MIN(bytes, (uint64_t)ZSCRATCH) : bytes), filled = 0;
		uint8_t *out = staged ? r->zscratch : dst;

		while (filled < n) {
			size_t got;

			if (!z->ret || !z->zleft)
				return r_fail(r, -EBADMSG, "the zstd frame holds %llu bytes of the %llu "
					      "its data pages need", (unsigned long long)z->done,
					      (unsigned long long)z->want);
			if (zstd_step(r, z, out + filled, n - filled, &got))
				return r->err;
			filled += got;
			z->done += got;
		}
		if (dst && r->place) {
			int ret = r->place(r->place_opaque, gpa, dst, r->zscratch, n);

			if (ret)
				return r_fail(r, ret < 0 ? ret : -EIO, "cannot place %zu bytes at gpa "
					      "0x%llx: %s", n, (unsigned long long)gpa,
					      strerror(ret < 0 ? -ret : EIO));
		}
		bytes -= n;
		gpa += n;
		if (dst)
			dst += n;
	}
	return 0;
}

/* Every page is filled: the frame must end here, with its last byte. */
static int zstd_end(struct stream_reader *r, struct zstate *z)
{
	while (z->ret && z->zleft) {
		uint8_t extra;
		uint64_t before = z->zleft;
		size_t got;

		if (zstd_step(r, z, &extra, 1, &got))
			return r->err;
		if (got)
			return r_fail(r, -EBADMSG, "the zstd frame holds more than its %llu bytes "
				      "of data pages", (unsigned long long)z->want);
		if (before == z->zleft && z->ret)
			break;
	}
	if (z->ret || z->zleft)
		return r_fail(r, -EBADMSG, "the zstd frame %s (%llu of its %llu bytes left)",
			      z->ret ? "does not end after its data pages" : "ends before its length",
			      (unsigned long long)z->zleft, (unsigned long long)z->zlen);
	return 0;
}

int stream_read_ram(struct stream_reader *r, stream_lookup_fn lookup, void *opaque,
		    struct stream_ram_stats *st)
{
	uint64_t len = r->cur.len, data_pages = 0, zero_pages = 0, pages = 0, want, pad, data;
	uint32_t nruns, flags = 0, zlen = 0;
	size_t hdr = r->cur.version >= RAM_VERSION_2 ? RAM_HDR2 : RAM_HDR;
	struct zstate z;
	const uint8_t *h;

	if (r->err)
		return r->err;
	if (r->state != R_PAYLOAD || r->cur.type != STREAM_RAM || r->left != len)
		return r_fail(r, -EINVAL, "stream_read_ram: no unread RAM section");
	if (len < hdr)
		return r_fail(r, -EBADMSG, "length %llu is shorter than the RAM header",
			      (unsigned long long)len);
	if (r_fill(r, hdr))
		return r->err;
	h = r_take(r, hdr, true);
	nruns = (uint32_t)le_get(h, 4);
	pad = le_get(h + 4, 4);
	if (hdr == RAM_HDR2) {
		flags = (uint32_t)le_get(h + 8, 4);
		zlen = (uint32_t)le_get(h + 12, 4);
		if (flags & ~RAM_F_KNOWN)
			return r_fail(r, -EPROTONOSUPPORT, "unknown RAM flags 0x%x: this godwit "
				      "cannot load it", flags & ~RAM_F_KNOWN);
		if (!(flags & RAM_F_ZSTD) && zlen)
			return r_fail(r, -EBADMSG, "a compressed length (%u) without compression",
				      zlen);
	}
	if (nruns > STREAM_R_RAM_RUNS || (uint64_t)nruns * RAM_RUN > len - hdr)
		return r_fail(r, -EBADMSG, "%u runs do not fit its length %llu (at most %u runs)",
			      nruns, (unsigned long long)len, STREAM_R_RAM_RUNS);
	if (nruns > r->runs_cap) {
		struct rd_run *nr = realloc(r->runs, (size_t)nruns * sizeof(*nr));

		if (!nr)
			return r_fail(r, -ENOMEM, "out of memory for %u runs", nruns);
		r->runs = nr;
		r->runs_cap = nruns;
	}
	for (uint32_t i = 0; i < nruns; i++) {
		struct rd_run *run = &r->runs[i];

		if (r_fill(r, RAM_RUN))
			return r->err;
		h = r_take(r, RAM_RUN, true);
		run->gpa = le_get(h, 8);
		run->npages = (uint32_t)le_get(h + 8, 4);
		run->flags = (uint32_t)le_get(h + 12, 4);
		run->host = NULL;
		if (run->flags & ~RUN_F_ZERO || !run->npages || run->gpa & (STREAM_PAGE_SIZE - 1))
			return r_fail(r, -EBADMSG, "run %u (gpa 0x%llx, %u pages, flags 0x%x) is "
				      "malformed", i, (unsigned long long)run->gpa, run->npages,
				      run->flags);
		if (!in_layout(&r->cfg, run->gpa, run->npages))
			return r_fail(r, -EBADMSG, "run %u (gpa 0x%llx, %u pages) is outside the "
				      "memory layout", i, (unsigned long long)run->gpa,
				      run->npages);
		pages += run->npages;
		if (run->flags & RUN_F_ZERO)
			zero_pages += run->npages;
		else
			data_pages += run->npages;
		/*
		 * Runs may overlap, so bound the sums: a section never holds more
		 * pages than the guest has (the writer splits before that), and its
		 * data must fit its length.  Nothing below can then wrap.
		 */
		if (pages > r->mem_pages ||
		    (!(flags & RAM_F_ZSTD) && data_pages > len >> STREAM_PAGE_SHIFT))
			return r_fail(r, -EBADMSG, "runs 0 to %u hold %llu pages (%llu with data): "
				      "more than the guest has or the length holds", i,
				      (unsigned long long)pages, (unsigned long long)data_pages);
	}
	want = data_pages && !(flags & RAM_F_ZSTD) ?
	       (STREAM_PAGE_SIZE - (r->off & (STREAM_PAGE_SIZE - 1))) & (STREAM_PAGE_SIZE - 1) : 0;
	if (pad != want)
		return r_fail(r, -EBADMSG, "page data padding %llu, expected %llu",
			      (unsigned long long)pad, (unsigned long long)want);
	if ((flags & RAM_F_ZSTD) && (!data_pages || !zlen ||
				     zlen >= data_pages << STREAM_PAGE_SHIFT))
		return r_fail(r, -EBADMSG, "a zstd frame of %u bytes for %llu data pages", zlen,
			      (unsigned long long)data_pages);
	data = flags & RAM_F_ZSTD ? zlen : data_pages << STREAM_PAGE_SHIFT;
	if (len != hdr + (uint64_t)nruns * RAM_RUN + pad + data)
		return r_fail(r, -EBADMSG, "length %llu does not match its %u runs (%llu data pages%s)",
			      (unsigned long long)len, nruns, (unsigned long long)data_pages,
			      flags & RAM_F_ZSTD ? ", compressed" : "");
	if (lookup) {
		for (uint32_t i = 0; i < nruns; i++) {
			struct rd_run *run = &r->runs[i];

			run->host = lookup(opaque, run->gpa,
					   (uint64_t)run->npages << STREAM_PAGE_SHIFT);
			if (!run->host)
				return r_fail(r, -EBADMSG, "run %u (gpa 0x%llx, %u pages) is not "
					      "guest memory here", i,
					      (unsigned long long)run->gpa, run->npages);
		}
	}
	if (r_copy(r, NULL, pad))
		return r->err;
	r->nocrc = flags & RAM_F_NODATACRC;
	if ((flags & RAM_F_ZSTD) && zstd_begin(r, &z, zlen, data_pages << STREAM_PAGE_SHIFT))
		return r->err;
	for (uint32_t i = 0; i < nruns; i++) {
		struct rd_run *run = &r->runs[i];
		uint64_t bytes = (uint64_t)run->npages << STREAM_PAGE_SHIFT;

		if (run->flags & RUN_F_ZERO) {
			/* Reading untouched memory only to find it zero costs a fault a page. */
			if (r->target_zeroed)
				continue;
			for (uint64_t o = 0; run->host && o < bytes; o += STREAM_PAGE_SIZE)
				if (!stream_page_is_zero(run->host + o))
					memset(run->host + o, 0, STREAM_PAGE_SIZE);
			continue;
		}
		if ((flags & RAM_F_ZSTD) ? zstd_run(r, &z, run->gpa, run->host, bytes) :
		    r->place && run->host ? r_place(r, run->gpa, run->host, bytes) :
					    r_copy(r, run->host, bytes)) {
			r->nocrc = false;
			return r->err;
		}
	}
	if ((flags & RAM_F_ZSTD) && zstd_end(r, &z)) {
		r->nocrc = false;
		return r->err;
	}
	r->nocrc = false;
	r->left = 0;
	if (r_end_section(r))
		return r->err;
	if (st) {
		st->sections++;
		st->runs += nruns;
		st->pages += pages;
		st->zero_pages += zero_pages;
	}
	return 0;
}

void stream_reader_report_unknown(struct stream_reader *r, bool on)
{
	r->report_unknown = on;
}

const struct stream_section *stream_reader_section(const struct stream_reader *r)
{
	return &r->cur;
}

uint32_t stream_reader_format_version(const struct stream_reader *r)
{
	return r->version;
}

const char *stream_reader_error(const struct stream_reader *r)
{
	return r->msg;
}

bool stream_reader_link_failed(const struct stream_reader *r)
{
	return r->err && r->link_failed;
}

uint64_t stream_reader_offset(const struct stream_reader *r)
{
	return r->off;
}

uint64_t stream_reader_sections(const struct stream_reader *r)
{
	return r->nsections - (r->state == R_DONE ? 1 : 0);
}

void stream_reader_target_zeroed(struct stream_reader *r)
{
	r->target_zeroed = true;
}

void stream_reader_set_target_zeroed(struct stream_reader *r, bool on)
{
	r->target_zeroed = on;
}

void stream_reader_set_placer(struct stream_reader *r, stream_place_fn fn, void *opaque)
{
	r->place = fn;
	r->place_opaque = opaque;
}
