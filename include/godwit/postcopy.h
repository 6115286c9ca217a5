/*
 * postcopy.h - post-copy live migration over userfaultfd (docs/migration.md
 * "Post-copy"): the frames both sides exchange once the VM runs on the
 * destination, the set of pages the destination does not have current, and
 * each side's engine.
 *
 * At the switch the source sends, with the CPU and device state, a VM
 * section "postcopy" (the missing set, pc_set_encode) and opens a second
 * connection, the request channel, to the destination's listener.  After
 * COMMIT the destination runs the VM with the missing pages discarded and
 * its RAM registered with userfaultfd: a fault thread asks for each missing
 * page the guest (or KVM, or a device) touches on the request channel,
 * where the source answers at once, while the source pushes every other
 * missing page on the main connection.  Pages are placed with UFFDIO_COPY.
 *
 * Frame (both connections, both ways):
 *   u32 magic "GWPC" | u16 type | u16 0 | u64 gpa | u32 len | payload | u32 CRC32C
 * of everything before it.  Types and their payloads:
 *   PAGES    source -> dest: len / 4096 (1..PC_MAX_PAGES) pages from gpa
 *   END      source -> dest: every missing page has been sent (len 0)
 *   REQ      dest -> source, request channel: the page at gpa (len 0)
 *   COMPLETE dest -> source: every page is here (len 24: pages requested,
 *            the fault latency's median and maximum in µs, u64 each)
 *   HELLO    source -> dest, first on the request channel: gpa = the token
 *            of the postcopy section (len 0)
 *   RESUME   source -> dest, first on a new main connection after the link
 *            broke: gpa = the token (len 0)
 *   MISSING  dest -> source, the answer to RESUME: the pages still missing,
 *            encoded as the postcopy section (pc_set_encode), len 12 ..
 *            PC_MISSING_MAX
 *
 * Recovery: when either connection breaks, both sides keep their halves:
 * the destination's vCPUs wait on the missing pages, its listener takes a
 * new main connection (RESUME) and request channel (HELLO), answers
 * MISSING, and asks again for every page asked for and not placed; the
 * source pushes what MISSING names.  UFFDIO_COPY never overwrites a placed
 * page, so nothing is applied twice.
 */
#ifndef GODWIT_POSTCOPY_H
#define GODWIT_POSTCOPY_H

#include <stddef.h>
#include <stdint.h>

#include "godwit/common.h"

struct vm;

#define PC_MAGIC        0x43505747u      /* "GWPC" little-endian */
#define PC_HDR_LEN      20
#define PC_MAX_PAGES    32
#define PC_COMPLETE_LEN 24
#define SNAPSHOT_ID_POSTCOPY "postcopy"

enum pc_type {
	PC_PAGES = 1,
	PC_END = 2,
	PC_REQ = 3,
	PC_COMPLETE = 4,
	PC_HELLO = 5,
	PC_RESUME = 6,
	PC_MISSING = 7,
};
#define PC_MISSING_MAX (32u << 20)

enum pc_mode { PC_OFF, PC_AUTO, PC_NOW };
/* "off", "auto", "now" */
const char *pc_mode_name(enum pc_mode m);
/* 0 and *m for "off", "auto", "now"; -EINVAL otherwise. */
int pc_mode_parse(const char *s, enum pc_mode *m) __must_check;

struct pc_hdr {
	uint16_t type;
	uint64_t gpa;
	uint32_t len;
};

/* Encode a frame header into out[PC_HDR_LEN]. */
void pc_hdr_encode(uint8_t *out, const struct pc_hdr *h);
/*
 * pc_hdr_decode - check a received header: magic, type, a length that
 * type allows, gpa page-aligned for PAGES and REQ.  0 with *h, or -EBADMSG
 * with why.
 */
int pc_hdr_decode(const uint8_t *in, struct pc_hdr *h, char *why, size_t len) __must_check;
/* The CRC32C a frame ends with: over its header and payload. */
uint32_t pc_frame_crc(const uint8_t *hdr, const void *payload, size_t len);

/*
 * The missing set, one bitmap per memory region (bit p: page p of the
 * region), as the "postcopy" VM section carries it:
 *   u64 token | u32 regions | per region: u64 gpa | u64 pages | bitmap words (u64 LE)
 */
struct pc_set {
	uint64_t token;
	unsigned int nr;
	uint64_t gpa[2], pages[2];
	uint64_t *bits[2];
};
/* Encoded size for a VM's regions. */
size_t pc_set_size(const struct vm *vm);
/* Encode token and bitmaps (one per vm->mem[i], KVM's layout) into out (pc_set_size bytes). */
void pc_set_encode(const struct vm *vm, uint64_t token, uint64_t *const bits[], uint8_t *out);
/*
 * pc_set_decode - parse a section's payload for regions (gpa, pages)[nr]:
 * every region must be there as here, bits past the end clear.  0 with *s
 * (its bitmaps allocated: pc_set_free), or -EBADMSG/-ENOMEM with why.
 */
int pc_set_decode(const uint8_t *in, size_t len, unsigned int nr, const uint64_t *gpa,
		  const uint64_t *pages, struct pc_set *s, char *why, size_t wlen) __must_check;
void pc_set_free(struct pc_set *s);
/* Pages set in s. */
uint64_t pc_set_count(const struct pc_set *s);
/* pc_set_encode's size and encoding for s's own regions. */
size_t pc_set_size_of(const struct pc_set *s);
void pc_set_encode_set(const struct pc_set *s, uint8_t *out);

/* ---- destination (incoming.c) ---- */

struct pc_dest;
/*
 * pc_dest_prepare - before READY: register the VM's RAM with uffd (created
 * and UFFDIO_API'd before the sandbox), discard every page of the set.
 * Takes *s.  0 and *out, or -errno with err.
 */
int pc_dest_prepare(struct vm *vm, int uffd, struct pc_set *s, struct pc_dest **out,
		    char *err, size_t len) __must_check;
/*
 * pc_dest_start - start the fault and receive threads on the main
 * connection fd and the request channel rq (both plain sockets, owned by
 * the caller until pc_dest_free).  0 or -errno.  When every page has come, the threads send
 * COMPLETE, unregister and record the outcome (migrate_incoming_postcopy);
 * if the source goes away first, the VM is lost: they log it and the
 * process exits with EXIT_ERROR.
 */
int pc_dest_start(struct pc_dest *d, int fd, int rq) __must_check;
/*
 * pc_dest_set_listener - keep the listener lfd (on addr; pc_dest closes it)
 * for a source coming back after the link broke, for up to wait_s seconds
 * (0: for ever).  Without one, a broken link loses the VM.
 */
void pc_dest_set_listener(struct pc_dest *d, int lfd, const char *addr, uint32_t wait_s);
/*
 * pc_dest_accept_hello - a connection on lfd whose first frame is `type`
 * (HELLO, RESUME) naming token, within wait_ms (<= 0: for ever); others are
 * dropped.  With stop, -ECANCELED within a second once *stop is set.  0 and
 * *out, or -errno with err.
 */
int pc_dest_accept_hello(int lfd, const char *addr, uint16_t type, uint64_t token, int wait_ms,
			 const int *stop, int *out, char *err, size_t len) __must_check;
/* Every page is here. */
bool pc_dest_done(struct pc_dest *d);
/*
 * Join the threads (after completion or before exit); unregister guest RAM
 * (a fault still waiting is woken and reads zeros); free.
 */
void pc_dest_free(struct pc_dest *d);
/* Create a userfaultfd (non-blocking, close-on-exec) and handshake its API: fd or -errno. */
int pc_uffd_open(void);

/* ---- source (migrate.c) ---- */

struct pc_src_stats {
	uint64_t requested;       /* pages asked for on the request channel */
	uint64_t pushed;          /* pages sent in the background */
	double lat_median_ms, lat_max_ms;   /* the destination's fault latency */
};
struct pc_src;
/*
 * pc_src_start - serve requests on rq (a thread) from the paused VM's
 * memory, for the pages of bits[].  0 or -errno.
 */
int pc_src_start(struct vm *vm, uint64_t *const bits[], int rq_fd, struct pc_src **out) __must_check;
/*
 * pc_src_push - push every page of the set not requested yet on fd,
 * paced to bw bytes/s (0: unlimited), then END; wait for COMPLETE.
 * progress(opaque) after each batch (non-zero: stop).  0 or -errno with err.
 */
int pc_src_push(struct pc_src *s, int fd, uint64_t bw, int (*progress)(void *), void *opaque,
		char *err, size_t len) __must_check;
void pc_src_stats(struct pc_src *s, struct pc_src_stats *st);
/*
 * pc_src_rejoin - after the link broke: RESUME on the new main connection
 * fd, HELLO on the new request channel rq, the destination's MISSING (its
 * token must be ours); from then on push (pc_src_push) exactly those pages
 * and serve requests on rq.  0 or -errno with err.
 */
int pc_src_rejoin(struct pc_src *s, int fd, int rq, uint64_t token, char *err,
		  size_t len) __must_check;
/* Stop serving (shuts rq down), join, free. */
void pc_src_stop(struct pc_src *s);

#endif
