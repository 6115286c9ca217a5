/*
 * state.c - the tagged-field encoding of device state (state.h): a writer
 * into a growable buffer with a sticky error, and a reader that never
 * trusts a length beyond the bytes it was given.
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
