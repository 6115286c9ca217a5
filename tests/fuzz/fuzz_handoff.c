/*
 * fuzz_handoff.c - libFuzzer target for the control messages and the
 * hand-off state machines (handoff.c): whatever a peer sends, each side
 * ends HERE, THERE or IN_DOUBT with a reason, never reads or writes out of
 * bounds, and never gives the VM up without the message that says the
 * other side has it (the source: DONE; the destination: ABORT, or its own
 * commit failing).
 *
 * The first byte picks the side (bit 0: destination) and how the fake VM's
 * operations fail (bits 1-3: release, reacquire, commit); for the source,
 * bit 5 gives it a commit gate that commits, or with bit 6 aborts: gated,
 * a source that sent COMMIT never ends HERE.  The rest is what the peer
 * sent, followed by the end of the connection.
 *
 * With bit 4 set, the messages are read one after another as every
 * receiver reads them (migrate_msg_recv: also the source's handshake in
 * migrate.c, which waits for the destination's ACCEPT, REFUSE or ERROR,
 * the messages incoming.c sends before the hand-off) into a text buffer
 * of exactly 1025, 1, 16 or 401 bytes (bits 5-6): each message received
 * has a known type and its text is NUL-terminated inside the buffer and
 * printable ASCII, as handoff.h promises.
 *
 * With bit 7 set, the rest goes to post-copy's decoders (postcopy_wire.c):
 * the missing set for a VM of two regions (259 pages at 0, 69 pages at
 * 4 GiB) out of the whole rest, and every 24 bytes as a frame header plus
 * CRC: a set accepted names no page past its regions and counts at most
 * their pages; a header accepted has a known type, a length that type
 * allows, an aligned address for PAGES and REQ, and encodes back to the
 * same bytes.
 *   make fuzz && build-fuzz/fuzz-handoff -max_total_time=60 build-fuzz/corpus-handoff
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "godwit/handoff.h"
#include "godwit/postcopy.h"

static uint8_t fail_bits;

static int f_release(void *o, char *err, size_t len)
{
	(void)o;
	snprintf(err, len, "fuzz");
	return fail_bits & 2 ? -5 : 0;
}

static int f_reacquire(void *o, char *err, size_t len)
{
	(void)o;
	snprintf(err, len, "fuzz");
	return fail_bits & 4 ? -5 : 0;
}

static int f_commit(void *o, char *err, size_t len)
{
	(void)o;
	snprintf(err, len, "fuzz");
	return fail_bits & 8 ? -5 : 0;
}

static bool f_no(void *o)
{
	(void)o;
	return false;
}

static bool f_yes(void *o)
{
	(void)o;
	return true;
}

static bool commit_sent;

static void f_state(void *o, enum handoff_state st)
{
	(void)o;
	if (st == HO_SRC_COMMITTED)
		commit_sent = true;
}

static enum handoff_gate f_gate(void *o, char *why, size_t len)
{
	(void)o;
	if (fail_bits & 64) {
		snprintf(why, len, "the fleet did not commit");
		return HO_GATE_ABORT;
	}
	return HO_GATE_COMMIT;
}

/* Bit 4: every message as migrate_msg_recv() gives it, into a buffer of an exact size. */
static int fuzz_recv(const uint8_t *data, size_t size)
{
	static const size_t lens[] = { MIG_MSG_TEXT_MAX + 1, 1, 16, 401 };
	size_t len = lens[(data[0] >> 5) & 3];
	char *text = malloc(len);
	enum mig_msg type;
	struct conn c;
	int sv[2];

	if (!text || socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		abort();
	if (write(sv[1], data + 1, size - 1) != (ssize_t)(size - 1))
		abort();
	shutdown(sv[1], SHUT_WR);
	c = conn_plain(sv[0]);
	while (migrate_msg_recv(&c, 1000, &type, text, len) == 0) {
		size_t n = strnlen(text, len);

		if (n == len || type < MIG_MSG_ACCEPT || type > MIG_MSG_APPLIED || !mig_msg_name(type))
			abort();
		for (size_t i = 0; i < n; i++)
			if (text[i] < 0x20 || text[i] > 0x7e)
				abort();        /* the text goes into logs and error messages */
	}
	close(sv[0]);
	close(sv[1]);
	free(text);
	return 0;
}

/* Bit 7: post-copy's frame headers and missing set. */
static int fuzz_postcopy(const uint8_t *data, size_t size)
{
	static const uint64_t gpa[2] = { 0, 1ULL << 32 };
	static const uint64_t pages[2] = { 256 + 3, 64 + 5 };
	struct pc_set set;
	char why[256];

	if (!pc_set_decode(data, size, 2, gpa, pages, &set, why, sizeof(why))) {
		if (set.nr != 2 || pc_set_count(&set) > pages[0] + pages[1])
			abort();
		if (set.bits[1][(pages[1] - 1) / 64] >> (pages[1] % 64))
			abort();    /* a page past the region */
		pc_set_free(&set);
	} else if (!why[0]) {
		abort();
	}
	for (size_t off = 0; off + PC_HDR_LEN <= size; off += PC_HDR_LEN + 4) {
		struct pc_hdr h;
		uint8_t back[PC_HDR_LEN];

		why[0] = 0;
		if (pc_hdr_decode(data + off, &h, why, sizeof(why))) {
			if (!why[0])
				abort();
			continue;
		}
		if (h.type < PC_PAGES || h.type > PC_MISSING)
			abort();
		if (h.type == PC_MISSING && (h.len < 12 || h.len > PC_MISSING_MAX))
			abort();
		if (h.type == PC_PAGES && (!h.len || h.len % 4096 || h.len > PC_MAX_PAGES * 4096))
			abort();
		if ((h.type == PC_PAGES || h.type == PC_REQ) && h.gpa % 4096)
			abort();
		if (h.type != PC_PAGES && h.type != PC_MISSING &&
		    h.len != (h.type == PC_COMPLETE ? PC_COMPLETE_LEN : 0))
			abort();
		pc_hdr_encode(back, &h);
		if (memcmp(back, data + off, PC_HDR_LEN))
			abort();
		(void)pc_frame_crc(data + off, data + off, MIN(h.len, size - off));
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct handoff_src_ops sops = {
		.cancelled = f_no, .may_commit = f_yes, .release = f_release,
		.reacquire = f_reacquire, .state = f_state,
	};
	static const struct handoff_src_ops gops = {
		.cancelled = f_no, .may_commit = f_yes, .release = f_release,
		.reacquire = f_reacquire, .state = f_state, .gate = f_gate,
	};
	static const struct handoff_dst_ops dops = { .commit = f_commit };
	char why[512] = "";
	enum handoff_result r;
	struct handoff_src_info info;
	struct conn c;
	int sv[2];

	if (!size || size > 16384)
		return 0;
	fail_bits = data[0];
	if (data[0] & 128)
		return fuzz_postcopy(data + 1, size - 1);
	if (data[0] & 16)
		return fuzz_recv(data, size);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		abort();
	/* All of the peer's bytes are there before the side starts: no waiting. */
	if (write(sv[1], data + 1, size - 1) != (ssize_t)(size - 1))
		abort();
	shutdown(sv[1], SHUT_WR);
	c = conn_plain(sv[0]);
	if (data[0] & 1) {
		r = handoff_dest(&c, 1000, &dops, NULL, why, sizeof(why));
		if (r == HANDOFF_THERE && !strstr(why, "the source aborted") &&
		    !strstr(why, "cannot start the VM at COMMIT"))
			abort();    /* dropped without being told */
		if (r != HANDOFF_HERE && !why[0])
			abort();
	} else {
		commit_sent = false;
		r = handoff_source(&c, 1000, data[0] & 32 ? &gops : &sops, NULL, &info, why,
				   sizeof(why));
		if (r != HANDOFF_THERE && !why[0])
			abort();
		if ((data[0] & 32) && commit_sent && r == HANDOFF_HERE)
			abort();    /* gated: taken back after COMMIT without being told */
		if ((data[0] & 96) == 96 && commit_sent)
			abort();    /* the gate said no, and COMMIT went anyway */
		if (info.dest_refused && (!(data[0] & 32) || r != HANDOFF_IN_DOUBT))
			abort();
	}
	(void)r;
	close(sv[0]);
	close(sv[1]);
	return 0;
}
