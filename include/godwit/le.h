/*
 * le.h - little-endian loads and stores at any alignment: the one set of them
 * for the stream, device state, device registers, boot headers and PCI
 * configuration space.  (Guest memory that a vCPU may touch at the same time,
 * such as a virtqueue's rings, is read with atomics in virtio/core.c instead.)
 */
#ifndef GODWIT_LE_H
#define GODWIT_LE_H

#include <stdint.h>

/* n bytes (1..8) at p as a little-endian number, and back. */
static inline uint64_t le_get(const void *p, unsigned int n)
{
	const uint8_t *b = p;
	uint64_t v = 0;

	for (unsigned int i = 0; i < n; i++)
		v |= (uint64_t)b[i] << (8 * i);
	return v;
}

static inline void le_put(void *p, uint64_t v, unsigned int n)
{
	uint8_t *b = p;

	for (unsigned int i = 0; i < n; i++)
		b[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t le16_get(const void *p) { return (uint16_t)le_get(p, 2); }
static inline uint32_t le32_get(const void *p) { return (uint32_t)le_get(p, 4); }
static inline uint64_t le64_get(const void *p) { return le_get(p, 8); }
static inline void le16_put(void *p, uint16_t v) { le_put(p, v, 2); }
static inline void le32_put(void *p, uint32_t v) { le_put(p, v, 4); }
static inline void le64_put(void *p, uint64_t v) { le_put(p, v, 8); }

#endif
