/*
 * postcopy_wire.c - what post-copy's two sides exchange (postcopy.h): the
 * frames' headers and CRC, the missing set's encoding, the mode's names.
 * Pure functions, nothing trusted before it is checked (the handoff fuzz
 * target drives the decoders).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/crc32c.h"
#include "godwit/le.h"
#include "godwit/postcopy.h"
#include "godwit/vm.h"

#define PC_PAGE 4096u

const char *pc_mode_name(enum pc_mode m)
{
	return m == PC_NOW ? "now" : m == PC_AUTO ? "auto" : "off";
}

int pc_mode_parse(const char *s, enum pc_mode *m)
{
	if (!strcmp(s, "off"))
		*m = PC_OFF;
	else if (!strcmp(s, "auto"))
		*m = PC_AUTO;
	else if (!strcmp(s, "now"))
		*m = PC_NOW;
	else
		return -EINVAL;
	return 0;
}

/* ---- frames ---------------------------------------------------------------------------- */

void pc_hdr_encode(uint8_t *out, const struct pc_hdr *h)
{
	le32_put(out, PC_MAGIC);
	le16_put(out + 4, h->type);
	le16_put(out + 6, 0);
	le64_put(out + 8, h->gpa);
	le32_put(out + 16, h->len);
}

int pc_hdr_decode(const uint8_t *in, struct pc_hdr *h, char *why, size_t len)
{
	h->type = le16_get(in + 4);
	h->gpa = le64_get(in + 8);
	h->len = le32_get(in + 16);
	if (le32_get(in) != PC_MAGIC || le16_get(in + 6)) {
		snprintf(why, len, "not a post-copy frame (magic %#x)", le32_get(in));
		return -EBADMSG;
	}
	switch (h->type) {
	case PC_PAGES:
		if (!h->len || h->len % PC_PAGE || h->len > PC_MAX_PAGES * PC_PAGE)
			goto bad_len;
		break;
	case PC_END:
	case PC_REQ:
	case PC_HELLO:
	case PC_RESUME:
		if (h->len)
			goto bad_len;
		break;
	case PC_COMPLETE:
		if (h->len != PC_COMPLETE_LEN)
			goto bad_len;
		break;
	case PC_MISSING:
		if (h->len < 12 || h->len > PC_MISSING_MAX)
			goto bad_len;
		break;
	default:
		snprintf(why, len, "unknown post-copy frame type %u", h->type);
		return -EBADMSG;
	}
	if ((h->type == PC_PAGES || h->type == PC_REQ) &&
	    (h->gpa % PC_PAGE || h->gpa > UINT64_MAX - PC_MAX_PAGES * PC_PAGE)) {
		snprintf(why, len, "post-copy frame type %u: bad address %#llx", h->type,
			 (unsigned long long)h->gpa);
		return -EBADMSG;
	}
	return 0;
bad_len:
	snprintf(why, len, "post-copy frame type %u: bad length %u", h->type, h->len);
	return -EBADMSG;
}

uint32_t pc_frame_crc(const uint8_t *hdr, const void *payload, size_t len)
{
	uint32_t c = crc32c(0, hdr, PC_HDR_LEN);

	return len ? crc32c(c, payload, len) : c;
}

/* ---- the missing set --------------------------------------------------------------------- */

static size_t pc_words(uint64_t pages)
{
	return (size_t)((pages + 63) / 64);
}

size_t pc_set_size(const struct vm *vm)
{
	size_t n = 12;

	for (unsigned int i = 0; i < vm->nr_mem; i++)
		n += 16 + 8 * pc_words(vm->mem[i].size / PC_PAGE);
	return n;
}

void pc_set_encode(const struct vm *vm, uint64_t token, uint64_t *const bits[], uint8_t *out)
{
	le64_put(out, token);
	le32_put(out + 8, vm->nr_mem);
	out += 12;
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		uint64_t pages = vm->mem[i].size / PC_PAGE;

		le64_put(out, vm->mem[i].gpa);
		le64_put(out + 8, pages);
		out += 16;
		for (size_t w = 0; w < pc_words(pages); w++, out += 8)
			le64_put(out, bits[i][w]);
	}
}

int pc_set_decode(const uint8_t *in, size_t len, unsigned int nr, const uint64_t *gpa,
		  const uint64_t *pages, struct pc_set *s, char *why, size_t wlen)
{
	size_t off = 12;

	memset(s, 0, sizeof(*s));
	if (len < 12 || nr > 2) {
		snprintf(why, wlen, "the post-copy section is too short (%zu bytes)", len);
		return -EBADMSG;
	}
	s->token = le64_get(in);
	if (le32_get(in + 8) != nr) {
		snprintf(why, wlen, "the post-copy section describes %u memory regions, this VM has %u",
			 le32_get(in + 8), nr);
		return -EBADMSG;
	}
	for (unsigned int i = 0; i < nr; i++) {
		size_t words = pc_words(pages[i]);

		if (len - off < 16 || le64_get(in + off) != gpa[i] ||
		    le64_get(in + off + 8) != pages[i] || (len - off - 16) / 8 < words) {
			snprintf(why, wlen, "the post-copy section's region %u does not match this "
				 "VM's memory", i);
			pc_set_free(s);
			return -EBADMSG;
		}
		off += 16;
		s->bits[i] = calloc(words ? words : 1, sizeof(uint64_t));
		if (!s->bits[i]) {
			snprintf(why, wlen, "out of memory");
			pc_set_free(s);
			return -ENOMEM;
		}
		for (size_t w = 0; w < words; w++, off += 8)
			s->bits[i][w] = le64_get(in + off);
		if (pages[i] % 64 && (s->bits[i][words - 1] >> (pages[i] % 64))) {
			snprintf(why, wlen, "the post-copy section names pages past region %u", i);
			pc_set_free(s);
			return -EBADMSG;
		}
		s->gpa[i] = gpa[i];
		s->pages[i] = pages[i];
		s->nr = i + 1;
	}
	if (off != len) {
		snprintf(why, wlen, "the post-copy section has %zu bytes too many", len - off);
		pc_set_free(s);
		return -EBADMSG;
	}
	return 0;
}

size_t pc_set_size_of(const struct pc_set *s)
{
	size_t n = 12;

	for (unsigned int i = 0; i < s->nr; i++)
		n += 16 + 8 * pc_words(s->pages[i]);
	return n;
}

void pc_set_encode_set(const struct pc_set *s, uint8_t *out)
{
	le64_put(out, s->token);
	le32_put(out + 8, s->nr);
	out += 12;
	for (unsigned int i = 0; i < s->nr; i++) {
		le64_put(out, s->gpa[i]);
		le64_put(out + 8, s->pages[i]);
		out += 16;
		for (size_t w = 0; w < pc_words(s->pages[i]); w++, out += 8)
			le64_put(out, s->bits[i][w]);
	}
}

void pc_set_free(struct pc_set *s)
{
	for (unsigned int i = 0; i < 2; i++) {
		free(s->bits[i]);
		s->bits[i] = NULL;
	}
	s->nr = 0;
}

uint64_t pc_set_count(const struct pc_set *s)
{
	uint64_t n = 0;

	for (unsigned int i = 0; i < s->nr; i++)
		for (size_t w = 0; w < pc_words(s->pages[i]); w++)
			n += (uint64_t)__builtin_popcountll(s->bits[i][w]);
	return n;
}
