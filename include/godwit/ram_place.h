/*
 * ram_place.h - a destination's first pass over fresh guest RAM without the
 * kernel zeroing each page first (ram_place.c, docs/migration.md).
 *
 * A page nothing has touched yet is placed by UFFDIO_COPY, which allocates
 * it and fills it in one step; touching it with a plain copy would fault,
 * have the kernel clear it (a 2 MiB huge page at a time under THP) and only
 * then copy.  While the placer runs, guest RAM is registered with a
 * userfaultfd (MISSING mode), so anything else that touches a page not yet
 * placed (a device, KVM, a zero-run check) faults; a thread answers every
 * such fault with a zero page, as an unregistered page would read, and the
 * data that comes for that page later is copied over it.
 *
 *	ram_place_start(uffd, regions, n, &p, ...)   register, start the thread
 *	stream_reader_set_placer(r, ram_place_put, p)
 *	... stream_read_ram() ...
 *	ram_place_stop(p, &stats)                    unregister, join, free
 *
 * The userfaultfd is the caller's (opened before the sandbox, postcopy.h's
 * pc_uffd_open()); stop unregisters it, so post-copy can register it again.
 */
#ifndef GODWIT_RAM_PLACE_H
#define GODWIT_RAM_PLACE_H

#include <stddef.h>
#include <stdint.h>

struct ram_place;

struct ram_place_region {
	uint8_t *host;            /* page-aligned */
	uint64_t size;            /* a multiple of the page size */
};

struct ram_place_stats {
	uint64_t copied;          /* pages placed by UFFDIO_COPY */
	uint64_t existing;        /* pages that existed already: copied over */
	uint64_t faults;          /* faults answered with a zero page */
	uint64_t ioctls;          /* UFFDIO_COPY calls */
};

/*
 * ram_place_start - register the n regions with uffd (MISSING) and start the
 * fault thread.  Returns 0, or a negative errno with err set (uffd < 0: its
 * errno); nothing stays registered then.
 */
int ram_place_start(int uffd, const struct ram_place_region *rg, unsigned int n,
		    struct ram_place **out, char *err, size_t len);
/*
 * ram_place_put - a stream_place_fn (stream.h): len bytes (whole pages) at
 * src into host, which must lie in a registered region.  Pages that exist
 * already are copied over.  Returns 0 or a negative errno.
 */
int ram_place_put(void *opaque, uint64_t gpa, void *host, const void *src, size_t len);
/* ram_place_stop - unregister, stop the thread, free; st (may be NULL) gets the counts. */
void ram_place_stop(struct ram_place *p, struct ram_place_stats *st);
/* GODWIT_UFFD_PLACE=off in the environment turns the placer off (tests, comparisons). */
int ram_place_wanted(void);

#endif
