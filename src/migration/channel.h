/*
 * channel.h - a migration over several connections (docs/migration.md,
 * "Channels"): the memory channels beside the main one.
 *
 * Page p travels on channel ((gpa(p) >> 21) % N), whatever the round, so
 * each channel's stream order alone makes a later pass overwrite an earlier
 * one.  Channel 0 is the main connection (migrate.c, incoming.c): CONFIG,
 * disks, the state and the hand-off, and its share of memory.  Channels
 * 1..N-1 are complete streams of their own (preamble, CONFIG, VM
 * "channel", RAM and "precopy" markers, EOF), each with its own thread,
 * socket and TLS session.
 */
#ifndef GODWIT_MIGRATION_CHANNEL_H
#define GODWIT_MIGRATION_CHANNEL_H

#include "godwit/common.h"
#include "godwit/snapshot.h"
#include "godwit/stream.h"

#define CHAN_STRIPE_PAGES 512          /* 2 MiB: the unit that goes to one channel */

struct vm;
struct tls_creds;

/* The channel of the 2 MiB stripe holding guest page frame pfn. */
static inline unsigned int chan_of_pfn(uint64_t pfn, unsigned int n)
{
	return (unsigned int)((pfn / CHAN_STRIPE_PAGES) % n);
}

/*
 * chan_send_dirty - send the pages set in bitmap[] (per memory region)
 * that belong to channel idx of n on w: per chunk of at most `chunk` pages
 * (never across a stripe), clear its dirty bits in KVM first if clear,
 * queue and flush its pages, forget its bits, call done(opaque) (non-zero
 * stops).  0 or -errno with err set.
 */
int chan_send_dirty(struct vm *vm, struct stream_writer *w, uint64_t *const *bitmap,
		    unsigned int idx, unsigned int n, bool clear, uint64_t chunk,
		    int (*done)(void *opaque), void *opaque, char *err, size_t len);

/* ---- source: the memory channels 1..N-1 ---- */

struct chan_out;
struct chan_out_params {
	struct vm *vm;
	const char *to;
	struct tls_creds *tls;             /* NULL: plain */
	uint64_t min_rate;                 /* the destination's minimum rate (bytes/s) */
	uint64_t max_bandwidth;            /* this channel's share (bytes/s; 0: unlimited) */
	enum stream_compress compress;     /* each channel's writer decides for itself (auto) */
	uint64_t *const *bitmap;           /* the migration's dirty bitmaps, per region */
	const struct stream_config *cfg;   /* the main stream's CONFIG */
	struct snapshot_channel ch;        /* count and token (index: each channel's) */
	bool (*stop)(void *opaque);        /* cancelled, or the VM stops */
	void *opaque;
};
/* Connect channels 1..count-1 (TLS, preamble, CONFIG, "channel") and start their threads. */
int chan_out_open(const struct chan_out_params *p, struct chan_out **out, char *err,
		  size_t len) __must_check;
/*
 * Start a pass on every channel: round > 1 begins with its "precopy"
 * marker; final: the marker of the pause (instance 0), the pages (dirty
 * bits not cleared; none if !pages: post-copy brings them), then EOF.  The
 * bitmaps stay the channels' until chan_out_wait() (not touched if !pages).
 */
void chan_out_pass(struct chan_out *co, uint32_t round, bool clear, bool final, bool pages);
/* Wait for the pass: 0, or the first channel's error (-errno, err set). */
int chan_out_wait(struct chan_out *co, char *err, size_t len);
/* A channel failed (its error in err): the others are being stopped. */
bool chan_out_failed(struct chan_out *co, char *err, size_t len);
/* Stream bytes, pages and zero pages sent on channels 1..N-1 so far. */
void chan_out_counters(struct chan_out *co, uint64_t *bytes, uint64_t *pages, uint64_t *zero);
/* Their compression figures, added to *z (switches and sections summed; active: any). */
void chan_out_compress_stats(struct chan_out *co, struct stream_compress_stats *z);
/* Stop every channel (their sockets shut down), join, close, free; NULL is fine. */
/* Between passes: what the channels' sockets still queue (pre-copy's round end). */
uint64_t chan_out_unsent(struct chan_out *co);
void chan_out_free(struct chan_out *co);

/* ---- destination: the memory channels 1..N-1 ---- */

struct chan_in;
struct chan_in_params {
	int lfd;                           /* the listener (kept open by the caller) */
	const char *addr;
	struct tls_creds *tls;             /* NULL: plain */
	struct stream_watchdog wd;
	const struct snapshot_restore *main;
	struct vm *vm;
	int main_fd;                       /* shut down for reading when a channel fails */
};
/* Take channels 1..c->count-1 on the listener, each loaded by a thread of its own. */
int chan_in_start(const struct chan_in_params *p, const struct snapshot_channel *c,
		  struct chan_in **out, char *err, size_t len) __must_check;
/* Wait until every channel reached its EOF: 0, or the first error (-errno, err set). */
int chan_in_wait(struct chan_in *ci, char *err, size_t len);
/* Stream bytes read on channels 1..N-1. */
uint64_t chan_in_bytes(struct chan_in *ci);
/* Stop (sockets shut down), join and free; NULL is fine. */
void chan_in_free(struct chan_in *ci);
/*
 * The same after the main stream failed: the channels get a second to end
 * by themselves; err (if not NULL) gets the first channel's error, or "".
 */
void chan_in_free_error(struct chan_in *ci, char *err, size_t len);

#endif
