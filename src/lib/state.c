/*
 * state.c - the tagged-field encoding of saved state (state.h): a writer
 * into a growable buffer with a sticky error, a reader that never trusts a
 * length beyond the bytes it was given, and the tables (struct state_desc)
 * that drive both for devices, vCPUs, the VM and the stream's configuration.
 *
 * Encoding: a sequence of fields `u16 tag | u32 len | len bytes`, all
 * integers little-endian whatever the host's byte order.  The writer never
 * fails a put: the first error (-ENOMEM, -EOVERFLOW for a buffer that
 * would pass SIZE_MAX, -EINVAL for a NULL source) is kept in o->err, later
 * puts do nothing, and the caller checks o->err once at the end.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/le.h"
#include "godwit/log.h"
#include "godwit/state.h"

#define STATE_HDR_LEN 6u      /* u16 tag + u32 len */
#define STATE_MIN_CAP 256u

void state_out_init(struct state_out *o)
{
	o->buf = NULL;
	o->len = o->cap = 0;
	o->err = 0;
}

void state_out_free(struct state_out *o)
{
	free(o->buf);
	state_out_init(o);
}

/* Make room for n more bytes; sets the sticky error on failure. */
static bool state_reserve(struct state_out *o, size_t n)
{
	size_t need, cap;
	uint8_t *nb;

	if (o->err)
		return false;
	if (n > SIZE_MAX - o->len) {
		o->err = -EOVERFLOW;
		return false;
	}
	need = o->len + n;
	if (need <= o->cap)
		return true;
	cap = o->cap ? o->cap : STATE_MIN_CAP;
	while (cap < need)
		cap = cap > SIZE_MAX / 2 ? need : cap * 2;
	nb = realloc(o->buf, cap);
	if (!nb) {
		o->err = -ENOMEM;
		return false;
	}
	o->buf = nb;
	o->cap = cap;
	return true;
}


/* One field whose value is the n-byte little-endian integer v. */
static void state_put_int(struct state_out *o, uint16_t tag, uint64_t v, unsigned int n)
{
	if (!state_reserve(o, STATE_HDR_LEN + n))
		return;
	le_put(o->buf + o->len, tag, 2);
	le_put(o->buf + o->len + 2, n, 4);
	le_put(o->buf + o->len + STATE_HDR_LEN, v, n);
	o->len += STATE_HDR_LEN + n;
}

void state_put_u8(struct state_out *o, uint16_t tag, uint8_t v)
{
	state_put_int(o, tag, v, 1);
}

void state_put_u16(struct state_out *o, uint16_t tag, uint16_t v)
{
	state_put_int(o, tag, v, 2);
}

void state_put_u32(struct state_out *o, uint16_t tag, uint32_t v)
{
	state_put_int(o, tag, v, 4);
}

void state_put_u64(struct state_out *o, uint16_t tag, uint64_t v)
{
	state_put_int(o, tag, v, 8);
}

/*
 * state_put_bytes - a field holding len bytes from p (p may be NULL only
 * when len is 0: an empty field is valid, e.g. an empty FIFO).
 */
void state_put_bytes(struct state_out *o, uint16_t tag, const void *p, uint32_t len)
{
	if (!o->err && !p && len) {
		o->err = -EINVAL;
		return;
	}
	if (!state_reserve(o, STATE_HDR_LEN + (size_t)len))
		return;
	le_put(o->buf + o->len, tag, 2);
	le_put(o->buf + o->len + 2, len, 4);
	if (len)
		memcpy(o->buf + o->len + STATE_HDR_LEN, p, len);
	o->len += STATE_HDR_LEN + (size_t)len;
}

void state_in_init(struct state_in *in, const void *p, size_t len)
{
	in->p = p;
	in->len = p ? len : 0;
	in->off = 0;
}

/*
 * state_next - see state.h.  On -EBADMSG the reader does not move, so every
 * later call fails the same way; f is only written on success.
 */
int state_next(struct state_in *in, struct state_field *f)
{
	size_t left;
	uint32_t flen;

	if (NEVER(in->off > in->len))
		return -EBADMSG;
	left = in->len - in->off;
	if (!left)
		return 0;
	if (left < STATE_HDR_LEN)
		return -EBADMSG;
	flen = (uint32_t)le_get(in->p + in->off + 2, 4);
	if (flen > left - STATE_HDR_LEN)
		return -EBADMSG;
	f->tag = (uint16_t)le_get(in->p + in->off, 2);
	f->len = flen;
	f->val = in->p + in->off + STATE_HDR_LEN;
	in->off += STATE_HDR_LEN + (size_t)flen;
	return 1;
}

static int state_get_int(const struct state_field *f, uint64_t *v, unsigned int n)
{
	if (f->len != n)
		return -EBADMSG;
	*v = le_get(f->val, n);
	return 0;
}

int state_get_u8(const struct state_field *f, uint8_t *v)
{
	uint64_t x;
	int ret = state_get_int(f, &x, 1);

	if (!ret)
		*v = (uint8_t)x;
	return ret;
}

int state_get_u16(const struct state_field *f, uint16_t *v)
{
	uint64_t x;
	int ret = state_get_int(f, &x, 2);

	if (!ret)
		*v = (uint16_t)x;
	return ret;
}

int state_get_u32(const struct state_field *f, uint32_t *v)
{
	uint64_t x;
	int ret = state_get_int(f, &x, 4);

	if (!ret)
		*v = (uint32_t)x;
	return ret;
}

int state_get_u64(const struct state_field *f, uint64_t *v)
{
	return state_get_int(f, v, 8);
}

int state_get_bytes(const struct state_field *f, void *p, uint32_t len)
{
	if (f->len != len)
		return -EBADMSG;
	if (len)
		memcpy(p, f->val, len);
	return 0;
}

/* ---- described state ------------------------------------------------------------- */

/* An image's unsigned integer member of w (1, 2, 4, 8) bytes, in host order. */
static uint64_t host_uint_get(const void *p, unsigned int w)
{
	uint8_t u8;
	uint16_t u16;
	uint32_t u32;
	uint64_t u64;

	switch (w) {
	case 1: memcpy(&u8, p, 1); return u8;
	case 2: memcpy(&u16, p, 2); return u16;
	case 4: memcpy(&u32, p, 4); return u32;
	default: memcpy(&u64, p, 8); return u64;
	}
}

static void host_uint_put(void *p, uint64_t v, unsigned int w)
{
	uint8_t u8 = (uint8_t)v;
	uint16_t u16 = (uint16_t)v;
	uint32_t u32 = (uint32_t)v;

	switch (w) {
	case 1: memcpy(p, &u8, 1); break;
	case 2: memcpy(p, &u16, 2); break;
	case 4: memcpy(p, &u32, 4); break;
	default: memcpy(p, &v, 8); break;
	}
}

int state_save_fields(struct state_out *o, const struct state_desc *d, size_t n,
		      const void *img)
{
	const uint8_t *base = img;

	for (size_t i = 0; i < n && !o->err; i++) {
		const struct state_bytes *b;
		int ret;

		switch (d[i].kind) {
		case STATE_KIND_INT:
			state_put_int(o, d[i].tag, host_uint_get(base + d[i].offset, d[i].width),
				      d[i].width);
			break;
		case STATE_KIND_BYTES:
			b = (const struct state_bytes *)(const void *)(base + d[i].offset);
			if (!b->p && d[i].since == STATE_OPT)
				break;           /* an optional field this image lacks */
			state_put_bytes(o, d[i].tag, b->p, b->len);
			break;
		case STATE_KIND_EACH:
			ret = d[i].put(o, d[i].tag, img);
			if (ret && !o->err)
				o->err = ret;
			break;
		default:
			o->err = -EINVAL;
		}
	}
	return o->err;
}

static int state_load_one(const struct state_desc *d, const struct state_field *f, void *img)
{
	uint8_t *base = img;
	struct state_bytes *b;
	uint64_t v;

	switch (d->kind) {
	case STATE_KIND_INT:
		if (f->len != d->width)
			return -EBADMSG;
		v = le_get(f->val, d->width);
		if (v > d->max) {
			log_debug("state: %s (tag %u) = %#llx, more than %#llx", d->name, d->tag,
				  (unsigned long long)v, (unsigned long long)d->max);
			return -EINVAL;
		}
		host_uint_put(base + d->offset, v, d->width);
		return 0;
	case STATE_KIND_BYTES:
		if (f->len < d->min || f->len > d->max) {
			log_debug("state: %s (tag %u) is %u bytes, not %u to %llu", d->name,
				  d->tag, f->len, d->min, (unsigned long long)d->max);
			return f->len > d->max && d->min != d->max ? -EINVAL : -EBADMSG;
		}
		b = (struct state_bytes *)(void *)(base + d->offset);
		b->p = f->val;
		b->len = f->len;
		return 0;
	case STATE_KIND_EACH:
		return d->get(img, f);
	}
	return -EINVAL;
}

int state_load_fields(struct state_in *in, const struct state_desc *d, size_t n, void *img,
		      uint16_t version)
{
	struct state_field f;
	uint64_t seen = 0;
	int ret;

	if (NEVER(n > 64))
		return -EINVAL;
	while ((ret = state_next(in, &f)) > 0) {
		size_t i;

		for (i = 0; i < n && d[i].tag != f.tag; i++)
			;
		if (i == n)
			continue;                    /* a newer writer's optional field */
		if ((seen & (1ULL << i)) && d[i].kind != STATE_KIND_EACH) {
			log_debug("state: %s (tag %u) twice", d[i].name, d[i].tag);
			return -EBADMSG;
		}
		seen |= 1ULL << i;
		ret = state_load_one(&d[i], &f, img);
		if (ret)
			return ret;
	}
	if (ret < 0)
		return ret;
	for (size_t i = 0; i < n; i++)
		if (d[i].since && d[i].since <= version && !(seen & (1ULL << i))) {
			log_debug("state: %s (tag %u) missing", d[i].name, d[i].tag);
			return -EBADMSG;
		}
	return 0;
}

/* ---- fixed-layout records -------------------------------------------------------- */

size_t state_rec_len(const struct state_rec *r, size_t n)
{
	size_t len = 0;

	for (size_t i = 0; i < n; i++)
		len += r[i].count * (r[i].width ? r[i].width : state_rec_len(r[i].sub, r[i].nsub));
	return len;
}

/* Both directions: put (buf from obj) or get (obj from buf); returns the bytes used. */
static size_t state_rec_walk(uint8_t *buf, const struct state_rec *r, size_t n, uint8_t *obj,
			     bool put)
{
	size_t off = 0;

	for (size_t i = 0; i < n; i++)
		for (unsigned int k = 0; k < r[i].count; k++) {
			uint8_t *m = obj + r[i].offset + k * r[i].stride;

			if (!r[i].width) {
				off += state_rec_walk(buf + off, r[i].sub, r[i].nsub, m, put);
				continue;
			}
			if (put)
				le_put(buf + off, host_uint_get(m, r[i].width), r[i].width);
			else
				host_uint_put(m, le_get(buf + off, r[i].width), r[i].width);
			off += r[i].width;
		}
	return off;
}

void state_rec_put(uint8_t *buf, const struct state_rec *r, size_t n, const void *obj)
{
	(void)state_rec_walk(buf, r, n, (uint8_t *)(uintptr_t)obj, true);
}

void state_rec_get(const uint8_t *buf, const struct state_rec *r, size_t n, void *obj)
{
	(void)state_rec_walk((uint8_t *)(uintptr_t)buf, r, n, obj, false);
}
