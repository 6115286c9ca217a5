/*
 * dirty_walk.h - the one loop over a region's dirty bitmap by chunks that
 * live migration (migrate.c, one channel), its memory channels
 * (channel_out.c) and `snapshot --live` (snapshot.c) share.
 */
#ifndef GODWIT_MIGRATION_DIRTY_WALK_H
#define GODWIT_MIGRATION_DIRTY_WALK_H

#include "godwit/common.h"

struct vm;
struct stream_writer;

/* The writer of one chunk: pages [first, first + n) of region i, bits its bitmap words. */
typedef int (*dirty_put_fn)(void *opaque, unsigned int i, uint64_t first, uint64_t n,
			    const uint64_t *bits);

/*
 * dirty_walk - the pages set in bm (the bitmap of region i of vm) within
 * [first, end), per chunk of at most `chunk` pages: a chunk with no bit set
 * is skipped; otherwise clear its dirty bits in KVM first if clear (err:
 * "cannot clear the dirty log: ..."), put(opaque, ...) it, forget its bits,
 * then done(opaque) if done is not NULL.  first and chunk are multiples of
 * 64.  0, or the first non-zero return (-errno with err set).
 */
int dirty_walk(struct vm *vm, unsigned int i, uint64_t *bm, uint64_t first, uint64_t end,
	       uint64_t chunk, bool clear, dirty_put_fn put, int (*done)(void *opaque),
	       void *opaque, char *err, size_t len);

/* Queue and flush pages [first, first + n) of region i on w (err: "sending memory: ..."). */
int dirty_send_chunk(struct vm *vm, struct stream_writer *w, unsigned int i, uint64_t first,
		     uint64_t n, const uint64_t *bits, char *err, size_t len);

#endif
