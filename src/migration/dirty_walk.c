/*
 * dirty_walk.c - walk a region's dirty bitmap by chunks (dirty_walk.h).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "godwit/stream.h"
#include "godwit/vm.h"
#include "dirty_walk.h"

int dirty_walk(struct vm *vm, unsigned int i, uint64_t *bm, uint64_t first, uint64_t end,
	       uint64_t chunk, bool clear, dirty_put_fn put, int (*done)(void *opaque),
	       void *opaque, char *err, size_t len)
{
	int ret;

	for (; first < end; first += chunk) {
		uint64_t n = MIN(chunk, end - first);
		uint64_t w0 = first / 64, nw = (n + 63) / 64, any = 0;

		for (uint64_t k = 0; k < nw; k++)
			any |= bm[w0 + k];
		if (!any)
			continue;
		if (clear) {
			ret = vm_dirty_log_clear(vm, i, first, n, bm);
			if (ret) {
				snprintf(err, len, "cannot clear the dirty log: %s", strerror(-ret));
				return ret;
			}
		}
		ret = put(opaque, i, first, n, bm + w0);
		if (ret)
			return ret;
		/* Queued: the copy (the guest's latest bytes) happens as the section fills. */
		memset(bm + w0, 0, nw * sizeof(uint64_t));
		if (done) {
			ret = done(opaque);
			if (ret)
				return ret;
		}
	}
	return 0;
}

int dirty_send_chunk(struct vm *vm, struct stream_writer *w, unsigned int i, uint64_t first,
		     uint64_t n, const uint64_t *bits, char *err, size_t len)
{
	const struct mem_region *mr = &vm->mem[i];
	int ret;

	ret = stream_put_ram_dirty(w, mr->host + first * STREAM_PAGE_SIZE,
				   mr->gpa + first * STREAM_PAGE_SIZE, n, bits);
	if (!ret)
		ret = stream_flush(w);
	if (ret)
		snprintf(err, len, "sending memory: %s", stream_writer_error(w));
	return ret;
}
