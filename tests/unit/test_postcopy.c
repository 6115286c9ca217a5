/*
 * test_postcopy.c - the source's post-copy engine (postcopy.h) against a
 * destination that misbehaves, over a socketpair: a frame longer than the
 * receiver expects (a request with pages, pages where COMPLETE belongs) is
 * refused from its header and never read into the receiver's buffer.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "godwit/le.h"
#include "godwit/postcopy.h"
#include "godwit/vm.h"
#include "unit.h"

#define PT_PAGES 16
#define PT_PAGE  4096u

/* A frame of type with len bytes of payload (all 0xa5) at gpa, written whole to fd. */
static void pt_send(int fd, uint16_t type, uint64_t gpa, uint32_t len)
{
	struct pc_hdr h = { .type = type, .gpa = gpa, .len = len };
	size_t n = PC_HDR_LEN + len + 4;
	uint8_t *f = malloc(n);

	CHECK(f != NULL);
	if (!f)
		return;
	pc_hdr_encode(f, &h);
	memset(f + PC_HDR_LEN, 0xa5, len);
	le32_put(f + PC_HDR_LEN + len, pc_frame_crc(f, f + PC_HDR_LEN, len));
	CHECK_EQ(write(fd, f, n), (long long)n);
	free(f);
}

/* A VM of one region of PT_PAGES pages, page 1 missing. */
static void pt_vm(struct vm *vm, uint64_t *bits[2])
{
	memset(vm, 0, sizeof(*vm));
	vm->nr_mem = 1;
	vm->mem[0].size = PT_PAGES * PT_PAGE;
	vm->mem[0].host = calloc(PT_PAGES, PT_PAGE);
	bits[0] = calloc(1, sizeof(uint64_t));
	bits[1] = NULL;
	CHECK(vm->mem[0].host && bits[0]);
	bits[0][0] = 1u << 1;
}

static void pt_sockets(int sv[2])
{
	struct timeval tv = { 5, 0 };

	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* The request server answers a request, and closes the channel on a request with pages. */
TEST(postcopy_src_request_with_payload)
{
	static struct vm vm;
	uint64_t *bits[2];
	struct pc_src *s = NULL;
	uint8_t hdr[PC_HDR_LEN], page[PT_PAGE + 4], c;
	struct pc_hdr h;
	char why[128];
	int sv[2];

	pt_vm(&vm, bits);
	pt_sockets(sv);
	CHECK_EQ(pc_src_start(&vm, bits, sv[0], &s), 0);
	if (!s)
		return;
	/* A good request first: the page comes back. */
	vm.mem[0].host[PT_PAGE] = 0x5a;
	pt_send(sv[1], PC_REQ, PT_PAGE, 0);
	CHECK_EQ(recv(sv[1], hdr, sizeof(hdr), MSG_WAITALL), (long long)sizeof(hdr));
	CHECK_EQ(pc_hdr_decode(hdr, &h, why, sizeof(why)), 0);
	CHECK_EQ(h.type, PC_PAGES);
	CHECK_EQ(h.gpa, PT_PAGE);
	CHECK_EQ(h.len, PT_PAGE);
	CHECK_EQ(recv(sv[1], page, sizeof(page), MSG_WAITALL), (long long)sizeof(page));
	CHECK_EQ(page[0], 0x5a);
	/* A "request" of 32 pages (a valid PAGES frame): refused, the channel closed. */
	pt_send(sv[1], PC_PAGES, PT_PAGE, PC_MAX_PAGES * PT_PAGE);
	CHECK_EQ(recv(sv[1], &c, 1, 0), 0);
	pc_src_stop(s);
	close(sv[0]);
	close(sv[1]);
	free(vm.mem[0].host);
	free(bits[0]);
}

/* At the end of the push, pages where COMPLETE belongs: an error naming the frame. */
TEST(postcopy_src_push_long_answer)
{
	static struct vm vm;
	uint64_t *bits[2];
	struct pc_src *s = NULL;
	char err[256] = "";
	int sv[2], rq[2];

	pt_vm(&vm, bits);
	pt_sockets(sv);
	pt_sockets(rq);
	CHECK_EQ(pc_src_start(&vm, bits, rq[0], &s), 0);
	if (!s)
		return;
	/* The destination's answer is there before the push ends. */
	pt_send(sv[1], PC_PAGES, 0, 4 * PT_PAGE);
	CHECK_EQ(pc_src_push(s, sv[0], 0, NULL, NULL, err, sizeof(err)), -EMSGSIZE);
	CHECK(strstr(err, "waiting for the destination to confirm every page") != NULL);
	CHECK(strstr(err, "16384 bytes where at most 24 fit") != NULL);
	pc_src_stop(s);
	close(sv[0]);
	close(sv[1]);
	close(rq[0]);
	close(rq[1]);
	free(vm.mem[0].host);
	free(bits[0]);
}
