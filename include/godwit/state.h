/*
 * state.h - saved state as tagged fields: `u16 tag | u32 len | bytes`,
 * little-endian (src/lib/state.c).  Devices, vCPUs, the VM and the stream's
 * configuration all use it.  Never write raw structs.  Tags are never
 * renumbered or reused; retired tags stay reserved.
 *
 * Most users describe their fields once, as a table (struct state_desc), and
 * let state_save_fields()/state_load_fields() do both directions: save copies
 * the live state into an "image" struct and writes it; load fills an image,
 * refusing what the table says cannot be (a duplicate tag, a wrong length, a
 * value out of bounds, a required field missing), then the owner checks what
 * spans fields and applies the image.  The put/get calls below are the layer
 * underneath, for encodings a table cannot say.
 */
#ifndef GODWIT_STATE_H
#define GODWIT_STATE_H

#include "godwit/common.h"

struct state_out {
	uint8_t *buf;
	size_t len, cap;
	int err;                  /* sticky: first error (-ENOMEM), later puts do nothing */
};

void state_out_init(struct state_out *o);
void state_out_free(struct state_out *o);
void state_put_u8(struct state_out *o, uint16_t tag, uint8_t v);
void state_put_u16(struct state_out *o, uint16_t tag, uint16_t v);
void state_put_u32(struct state_out *o, uint16_t tag, uint32_t v);
void state_put_u64(struct state_out *o, uint16_t tag, uint64_t v);
void state_put_bytes(struct state_out *o, uint16_t tag, const void *p, uint32_t len);

struct state_in {
	const uint8_t *p;
	size_t len, off;
};

struct state_field {
	uint16_t tag;
	uint32_t len;
	const uint8_t *val;
};

void state_in_init(struct state_in *in, const void *p, size_t len);
/*
 * state_next - the next field.  Returns 1 and fills f, 0 at the end, or
 * -EBADMSG if the bytes left cannot hold the field header or its length.
 */
int state_next(struct state_in *in, struct state_field *f) __must_check;
/* Typed reads: -EBADMSG unless f->len is exactly the type's size. */
int state_get_u8(const struct state_field *f, uint8_t *v) __must_check;
int state_get_u16(const struct state_field *f, uint16_t *v) __must_check;
int state_get_u32(const struct state_field *f, uint32_t *v) __must_check;
int state_get_u64(const struct state_field *f, uint64_t *v) __must_check;
/* Exactly len bytes into p. */
int state_get_bytes(const struct state_field *f, void *p, uint32_t len) __must_check;

/* ---- described state ------------------------------------------------------------- */

/* A run of bytes: where save reads it from, and a view into the input after load. */
struct state_bytes {
	const uint8_t *p;
	uint32_t len;
};

enum state_kind {
	STATE_KIND_INT,        /* an unsigned integer of `width` bytes at `offset` */
	STATE_KIND_BYTES,      /* a struct state_bytes at `offset`, min..max bytes long */
	STATE_KIND_EACH,       /* repeated (or nested): `put` writes every occurrence, `get`
	                        * takes one; the owner keeps count */
};

struct state_desc {
	uint16_t tag;
	uint8_t kind;                /* enum state_kind */
	uint8_t width;               /* INT: 1, 2, 4 or 8 (the member's size) */
	uint16_t since;              /* required in versions >= since; 0: optional */
	size_t offset;               /* INT, BYTES: in the image */
	uint64_t max;                /* INT: the largest valid value; BYTES: the longest */
	uint32_t min;                /* BYTES: the shortest */
	int (*put)(struct state_out *o, uint16_t tag, const void *img);       /* EACH */
	int (*get)(void *img, const struct state_field *f);                 /* EACH */
	const char *name;
};

/*
 * Table entries.  T is the image type, M its member: an unsigned integer of
 * 1, 2, 4 or 8 bytes (STATE_INT: any value up to MAX, STATE_ANY for all) or a
 * struct state_bytes (STATE_BYTES: MIN..MAX bytes).  SINCE: the version that
 * first wrote the field (then it is required from there on), or STATE_OPT.
 */
#define STATE_ANY UINT64_MAX
#define STATE_OPT 0
#define STATE_INT(TAG, T, M, MAX, SINCE)                                                \
	{ .tag = (TAG), .kind = STATE_KIND_INT, .width = sizeof(((T *)0)->M),          \
	  .since = (SINCE), .offset = offsetof(T, M), .max = (MAX), .name = #M }
#define STATE_BYTES(TAG, T, M, MIN, MAX, SINCE)                                         \
	{ .tag = (TAG), .kind = STATE_KIND_BYTES, .since = (SINCE),                     \
	  .offset = offsetof(T, M), .min = (MIN), .max = (MAX), .name = #M }
#define STATE_EACH(TAG, PUT, GET, SINCE, NAME)                                          \
	{ .tag = (TAG), .kind = STATE_KIND_EACH, .since = (SINCE), .put = (PUT),        \
	  .get = (GET), .name = (NAME) }

/* Writes img's fields in table order (an optional BYTES field whose p is NULL is left
 * out); returns o->err. */
int state_save_fields(struct state_out *o, const struct state_desc *d, size_t n,
		      const void *img);
/*
 * Reads fields into img (which the caller zeroed or filled with defaults):
 * unknown tags are skipped (a newer writer's optional fields); -EBADMSG for a
 * malformed encoding, a wrong length, a tag twice (but EACH) or a field that
 * `version` requires missing; -EINVAL for a value beyond its bounds; an EACH
 * get's error as it is.  Tables hold at most 64 entries.
 */
int state_load_fields(struct state_in *in, const struct state_desc *d, size_t n, void *img,
		      uint16_t version) __must_check;

/* ---- fixed-layout records -------------------------------------------------------- */

/*
 * A record inside a field: the listed members of a C object, one after the
 * other, little-endian, no tags and no padding (KVM's register structures).
 * Each entry is an unsigned integer member (or an array of count of them), or
 * a nested record (sub) repeated count times `stride` bytes apart.  One table
 * per structure drives both state_rec_put and state_rec_get.
 */
struct state_rec {
	size_t offset;
	uint8_t width;                    /* 1, 2, 4, 8; 0: a nested record */
	uint16_t count;                   /* array length (1: a single member) */
	size_t stride;                    /* bytes between array elements */
	const struct state_rec *sub;
	size_t nsub;
};
#define STATE_REC(T, M)                                                                  \
	{ offsetof(T, M), sizeof(((T *)0)->M), 1, 0, NULL, 0 }
#define STATE_REC_ARRAY(T, M, N)                                                         \
	{ offsetof(T, M), sizeof(((T *)0)->M[0]), (N), sizeof(((T *)0)->M[0]), NULL, 0 }
#define STATE_REC_SUB(T, M, SUB)                                                         \
	{ offsetof(T, M), 0, 1, 0, (SUB), ARRAY_SIZE(SUB) }
#define STATE_REC_SUB_ARRAY(T, M, N, SUB)                                                \
	{ offsetof(T, M), 0, (N), sizeof(((T *)0)->M[0]), (SUB), ARRAY_SIZE(SUB) }

/* The record's length in bytes. */
size_t state_rec_len(const struct state_rec *r, size_t n);
/* obj's members into buf (state_rec_len bytes); obj's from buf (other bytes of obj kept). */
void state_rec_put(uint8_t *buf, const struct state_rec *r, size_t n, const void *obj);
void state_rec_get(const uint8_t *buf, const struct state_rec *r, size_t n, void *obj);

#endif
