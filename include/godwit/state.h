/*
 * state.h - device state as tagged fields: `u16 tag | u32 len | bytes`,
 * little-endian.  A device's save() writes its guest-visible state field by
 * field; load() walks the fields, skips tags it does not know (a newer
 * writer's optional fields) and checks lengths.  Never write raw structs.
 * Tags are never renumbered or reused; retired tags stay reserved.
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

#endif
