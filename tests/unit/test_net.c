/*
 * test_net.c - virtio-net without KVM or a TAP: `--net` spec parsing (every
 * error is clean, with a message), MAC parsing and formatting, the default
 * MAC (stable, locally administered, unicast, distinct per VM and per NIC),
 * the announce frame's bytes; and the datapath (net.c on the real split
 * rings of core.c in fake guest memory, a socketpair standing in for the
 * TAP): mergeable RX buffers and num_buffers, a frame waiting for buffers,
 * one-buffer RX, TX gathering and dropped chains, a hostile chain
 * (NEEDS_RESET), quiesce handing back held RX buffers, config space and
 * save/load.
 */
#include <errno.h>
#include <string.h>

#include "godwit/tap.h"
#include "unit.h"

static int parse(const char *spec, struct tap_spec *s, char *err, size_t len)
{
	err[0] = '\0';
	return tap_spec_parse(spec, s, err, len);
}

TEST(net_spec_tap_only)
{
	struct tap_spec s;
	char err[256];

	CHECK_EQ(parse("tap=gwt0", &s, err, sizeof(err)), 0);
	CHECK_STR(s.tap, "gwt0");
	CHECK(!s.has_mac);
	/* 15 characters is the longest name. */
	CHECK_EQ(parse("tap=abcdefghijklmno", &s, err, sizeof(err)), 0);
	CHECK_STR(s.tap, "abcdefghijklmno");
}

TEST(net_spec_with_mac)
{
	static const uint8_t want[6] = { 0x02, 0xab, 0xCD, 0x00, 0x01, 0xff };
	struct tap_spec s;
	char err[256];

	CHECK_EQ(parse("tap=t1,mac=02:ab:CD:00:01:ff", &s, err, sizeof(err)), 0);
	CHECK_STR(s.tap, "t1");
	CHECK(s.has_mac);
	CHECK(!memcmp(s.mac, want, 6));
	/* Order does not matter. */
	CHECK_EQ(parse("mac=02:ab:cd:00:01:ff,tap=t2", &s, err, sizeof(err)), 0);
	CHECK_STR(s.tap, "t2");
	CHECK(!memcmp(s.mac, want, 6));
	/* A globally administered unicast address is the user's choice. */
	CHECK_EQ(parse("tap=t3,mac=52:54:00:12:34:56", &s, err, sizeof(err)), 0);
}

/* Each bad spec: -EINVAL and a message containing `needle`. */
TEST(net_spec_errors)
{
	static const struct { const char *spec, *needle; } bad[] = {
		{ "", "empty" },
		{ "tap=", "is empty" },
		{ "tap", "needs a value" },
		{ "mac=02:00:00:00:00:01", "lacks tap=NAME" },
		{ "tap=abcdefghijklmnop", "longer than 15" },
		{ "tap=a b", "not a valid interface name" },
		{ "tap=a/b", "not a valid interface name" },
		{ "tap=a:b", "not a valid interface name" },
		{ "tap=tap%d", "not a valid interface name" },
		{ "tap=.", "not a valid interface name" },
		{ "tap=..", "not a valid interface name" },
		{ "tap=x,tap=y", "given twice" },
		{ "tap=x,mac=02:00:00:00:00:01,mac=02:00:00:00:00:02", "given twice" },
		{ "tap=x,", "trailing ','" },
		{ "tap=x,,mac=02:00:00:00:00:01", "empty option" },
		{ ",tap=x", "empty option" },
		{ "tap=x,queues=4", "unknown option 'queues'" },
		{ "tap=x,TAP=y", "unknown option 'TAP'" },
		{ "tap=x,mac", "mac needs a value" },
		{ "tap=x,mac=", "bad MAC" },
		{ "tap=x,mac=02:00:00:00:00", "bad MAC" },
		{ "tap=x,mac=02:00:00:00:00:01:02", "bad MAC" },
		{ "tap=x,mac=02-00-00-00-00-01", "bad MAC" },
		{ "tap=x,mac=2:0:0:0:0:1", "bad MAC" },
		{ "tap=x,mac=02:00:00:00:00:0g", "bad MAC" },
		{ "tap=x,mac=01:00:5e:00:00:01", "multicast" },
		{ "tap=x,mac=ff:ff:ff:ff:ff:ff", "multicast" },
		{ "tap=x,mac=00:00:00:00:00:00", "zero" },
	};
	struct tap_spec s;
	char err[256];

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		int ret = parse(bad[i].spec, &s, err, sizeof(err));

		if (ret != -EINVAL || !strstr(err, bad[i].needle))
			unit_fail(__FILE__, __LINE__, "spec '%s': ret %d, message '%s', expected -EINVAL and '%s'",
				  bad[i].spec, ret, err, bad[i].needle);
	}
	/* A tiny error buffer truncates the message, never overflows. */
	err[4] = 'X';
	CHECK_EQ(tap_spec_parse("tap=x,bogus=1", &s, err, 4), -EINVAL);
	CHECK_EQ(strlen(err), 3);
	CHECK_EQ(err[4], 'X');
}

TEST(net_mac_parse_format)
{
	uint8_t mac[6] = { 0 }, keep[6];
	char buf[18];

	CHECK_EQ(tap_mac_parse("02:00:5E:10:00:00", mac), 0);
	tap_mac_format(mac, buf);
	CHECK_STR(buf, "02:00:5e:10:00:00");
	memcpy(keep, mac, 6);
	/* Failures leave the output alone. */
	CHECK_EQ(tap_mac_parse("02:00:5e:10:00", mac), -EINVAL);
	CHECK_EQ(tap_mac_parse("02:00:5e:10:00:00 ", mac), -EINVAL);
	CHECK_EQ(tap_mac_parse(" 02:00:5e:10:00:00", mac), -EINVAL);
	CHECK_EQ(tap_mac_parse("0200:5e:10:00:00:", mac), -EINVAL);
	CHECK_EQ(tap_mac_parse("03:00:00:00:00:01", mac), -EADDRNOTAVAIL);
	CHECK_EQ(tap_mac_parse(NULL, mac), -EINVAL);
	CHECK(!memcmp(mac, keep, 6));
}

TEST(net_mac_default_stable)
{
	static const uint8_t uuid_a[16] = { 0x8c, 0x3e, 0x1f, 0x02, 0x6d, 0x4b, 0x4a, 0x7e,
					    0x9a, 0x10, 0x5b, 0xc2, 0x33, 0x01, 0xfe, 0x77 };
	uint8_t uuid_b[16], a0[6], a0b[6], a1[6], b0[6];
	char buf[18];

	tap_mac_default(uuid_a, 0, a0);
	tap_mac_default(uuid_a, 0, a0b);
	tap_mac_default(uuid_a, 1, a1);
	memcpy(uuid_b, uuid_a, 16);
	uuid_b[15] ^= 1;                /* one bit of the UUID */
	tap_mac_default(uuid_b, 0, b0);

	CHECK(!memcmp(a0, a0b, 6));
	/* Locally administered unicast: 02 in the first octet. */
	CHECK_EQ(a0[0], 0x02);
	CHECK_EQ(a1[0], 0x02);
	CHECK(memcmp(a0, a1, 6));
	CHECK(memcmp(a0, b0, 6));
	/*
	 * Golden: a guest's MAC must not change across godwit versions (its
	 * DHCP lease, its udev rules, its neighbours' caches depend on it).
	 */
	tap_mac_format(a0, buf);
	CHECK_STR(buf, "02:cb:3a:f4:2a:c4");
	tap_mac_format(a1, buf);
	CHECK_STR(buf, "02:8e:7d:d4:b7:0f");
	/* Every default is a valid NIC address. */
	for (unsigned int i = 0; i < 64; i++) {
		uint8_t m[6];

		tap_mac_default(uuid_a, i, m);
		tap_mac_format(m, buf);
		CHECK_EQ(tap_mac_parse(buf, m), 0);
	}
}

TEST(net_announce_frame)
{
	static const uint8_t mac[6] = { 0x02, 0x11, 0x22, 0x33, 0x44, 0x55 };
	static const uint8_t want[42] = {
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
		0x80, 0x35,                          /* RARP */
		0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x03,
		0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0, 0, 0, 0,
		0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0, 0, 0, 0,
	};
	uint8_t f[TAP_RARP_LEN];

	memset(f, 0xaa, sizeof(f));
	tap_build_rarp(mac, f);
	CHECK(!memcmp(f, want, sizeof(want)));
	for (size_t i = sizeof(want); i < sizeof(f); i++)
		CHECK_EQ(f[i], 0);
}

/* A closed TAP: announce fails cleanly. */
TEST(net_announce_closed)
{
	static const uint8_t mac[6] = { 0x02, 1, 2, 3, 4, 5 };
	struct tap t = { .fd = -1 };

	CHECK_EQ(tap_announce(&t, mac), -EBADF);
	tap_close(&t);
	CHECK_EQ(t.fd, -1);
}

/* ---- the datapath on real split rings (core.c) in fake guest memory ---------------- */
/*
 * One end of a SOCK_SEQPACKET socketpair stands in for the TAP (it keeps
 * frame boundaries the same way): the test writes "host" frames (12-byte
 * header + Ethernet frame) into it and reads what the guest transmitted.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "godwit/virtio.h"
#include "godwit/vm.h"

struct virtio_dev *virtio_net_open_fd(struct vm *vm, int fd, const uint8_t mac[6]);
void virtio_net_close(struct virtio_dev *vdev);

#define N_RAM      (1024 * 1024)
#define N_QSIZE    16
#define N_RXDESC   0x1000
#define N_RXAVAIL  0x2000
#define N_RXUSED   0x3000
#define N_TXDESC   0x4000
#define N_TXAVAIL  0x5000
#define N_TXUSED   0x6000
#define N_RXBUF    0x10000          /* RX buffer i at N_RXBUF + i * 4 KiB */
#define N_TXBUF    0x40000          /* TX buffer i at N_TXBUF + i * 4 KiB */

#define F_CSUM        (1ULL << 0)
#define F_GUEST_CSUM  (1ULL << 1)
#define F_GUEST_TSO4  (1ULL << 7)
#define F_MRG_RXBUF   (1ULL << 15)
#define F_VERSION_1   (1ULL << 32)

struct nenv {
	struct vm vm;
	uint8_t *ram;
	struct virtio_dev *v;
	int host;                       /* our end of the socketpair */
	uint16_t avail[2], next_desc[2];
};

static const uint64_t q_desc[2] = { N_RXDESC, N_TXDESC };
static const uint64_t q_avail[2] = { N_RXAVAIL, N_TXAVAIL };
static const uint64_t q_used[2] = { N_RXUSED, N_TXUSED };

static void n_sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static int fcntl_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static bool nenv_setup(struct nenv *e, uint64_t features)
{
	static const uint8_t mac[6] = { 0x02, 0, 0, 0, 0, 0x77 };
	int sv[2];

	memset(e, 0, sizeof(*e));
	e->host = -1;
	e->ram = aligned_alloc(4096, N_RAM);
	if (!e->ram)
		return false;
	memset(e->ram, 0, N_RAM);
	e->vm.nr_mem = 1;
	e->vm.mem[0] = (struct mem_region){ .gpa = 0, .size = N_RAM, .host = e->ram,
					    .dev_dirty = calloc(N_RAM / 4096 / 64, 8) };
	if (!e->vm.mem[0].dev_dirty || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
		return false;
	/* The device's end is non-blocking, like the TAP fd. */
	e->host = sv[0];
	if (fcntl_nonblock(sv[1]))
		return false;
	e->v = virtio_net_open_fd(&e->vm, sv[1], mac);
	if (!e->v)
		return false;
	e->v->driver_features = features;
	e->v->status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
		       VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK;
	for (int q = 0; q < 2; q++) {
		struct virtqueue *vq = &e->v->vqs[q];

		*vq = (struct virtqueue){
			.vdev = e->v, .index = (uint16_t)q, .max_size = e->v->ops->queue_max_size,
			.size = N_QSIZE, .enabled = true, .desc_gpa = q_desc[q],
			.avail_gpa = q_avail[q], .used_gpa = q_used[q],
			.msix_vector = VIRTIO_MSI_NO_VECTOR,
			.kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
		};
		if (vq->kick_fd < 0)
			return false;
		e->ram[q_avail[q]] = VIRTQ_AVAIL_F_NO_INTERRUPT;
	}
	return true;
}

static void nenv_teardown(struct nenv *e)
{
	if (e->v) {
		int fds[2] = { e->v->vqs[0].kick_fd, e->v->vqs[1].kick_fd };

		virtio_net_close(e->v);
		for (int q = 0; q < 2; q++)
			if (fds[q] >= 0)
				close(fds[q]);
	}
	if (e->host >= 0)
		close(e->host);
	free(e->vm.mem[0].dev_dirty);
	free(e->ram);
}

static void n_desc(struct nenv *e, int q, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
		   uint16_t next)
{
	uint8_t *d = e->ram + q_desc[q] + 16 * i;

	memcpy(d, &addr, 8);
	memcpy(d + 8, &len, 4);
	memcpy(d + 12, &flags, 2);
	memcpy(d + 14, &next, 2);
}

/* Make chain `head` available on queue q and kick. */
static void n_publish(struct nenv *e, int q, uint16_t head)
{
	uint16_t slot = e->avail[q] % N_QSIZE;
	uint64_t one = 1;

	memcpy(e->ram + q_avail[q] + 4 + 2 * slot, &head, 2);
	e->avail[q]++;
	__atomic_store_n((uint16_t *)(void *)(e->ram + q_avail[q] + 2), e->avail[q], __ATOMIC_RELEASE);
	CHECK_EQ(write(e->v->vqs[q].kick_fd, &one, 8), 8);
}

/* RX buffer i: one writable descriptor of len bytes. */
static void n_rx_add(struct nenv *e, uint16_t i, uint32_t len)
{
	n_desc(e, 0, i, N_RXBUF + 4096ULL * i, len, VIRTQ_DESC_F_WRITE, 0);
	n_publish(e, 0, i);
}

static uint16_t n_used_idx(struct nenv *e, int q)
{
	return __atomic_load_n((uint16_t *)(void *)(e->ram + q_used[q] + 2), __ATOMIC_ACQUIRE);
}

static bool n_wait_used(struct nenv *e, int q, uint16_t want, int ms)
{
	for (int i = 0; i < ms && n_used_idx(e, q) != want; i++)
		n_sleep_ms(1);
	return n_used_idx(e, q) == want;
}

static void n_used(struct nenv *e, int q, uint16_t slot, uint32_t *id, uint32_t *len)
{
	memcpy(id, e->ram + q_used[q] + 4 + 8 * (slot % N_QSIZE), 4);
	memcpy(len, e->ram + q_used[q] + 8 + 8 * (slot % N_QSIZE), 4);
}

static bool n_dirty(struct nenv *e, uint64_t gpa)
{
	uint64_t pg = gpa / 4096;

	return (e->vm.mem[0].dev_dirty[pg / 64] >> (pg % 64)) & 1;
}

/* A host frame: header (flags, gso_type), then len - 12 bytes of pattern `seed`. */
static void n_frame(uint8_t *f, size_t len, uint8_t flags, uint8_t seed)
{
	memset(f, 0, 12);
	f[0] = flags;
	f[10] = 0xee;                   /* num_buffers from the host: overwritten */
	for (size_t i = 12; i < len; i++)
		f[i] = (uint8_t)(i * 7 + seed);
}

static void n_send(struct nenv *e, const uint8_t *f, size_t len)
{
	CHECK_EQ(send(e->host, f, len, 0), (long long)len);
}

/* Gather `len` bytes from RX buffers ids[0..n) (each used for lens[i]). */
static void n_gather(struct nenv *e, const uint32_t *ids, const uint32_t *lens, unsigned int n,
		     uint8_t *out)
{
	for (unsigned int i = 0; i < n; i++) {
		memcpy(out, e->ram + N_RXBUF + 4096ULL * ids[i], lens[i]);
		out += lens[i];
	}
}

/* With MRG_RXBUF a 10 000-byte frame spans 7 buffers of 1536, num_buffers = 7. */
TEST(net_rx_mergeable)
{
	static uint8_t f[12 + 9988], got[sizeof(f)];
	uint32_t ids[8], lens[8];
	struct nenv e;

	if (!nenv_setup(&e, F_VERSION_1 | F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4)) {
		CHECK(!"set-up");
		nenv_teardown(&e);
		return;
	}
	for (uint16_t i = 0; i < 10; i++)
		n_rx_add(&e, i, 1536);
	CHECK_EQ(e.v->ops->activate(e.v), 0);
	n_frame(f, sizeof(f), 1 /* NEEDS_CSUM: kept with GUEST_CSUM */, 3);
	n_send(&e, f, sizeof(f));
	CHECK(n_wait_used(&e, 0, 7, 2000));
	for (uint16_t k = 0; k < 7; k++) {
		n_used(&e, 0, k, &ids[k], &lens[k]);
		CHECK_EQ(ids[k], k);
		CHECK_EQ(lens[k], k < 6 ? 1536 : sizeof(f) - 6 * 1536);
	}
	n_gather(&e, ids, lens, 7, got);
	CHECK_EQ(got[10] | got[11] << 8, 7);
	got[10] = f[10];
	got[11] = f[11];
	CHECK(!memcmp(got, f, sizeof(f)));
	/* Written bytes and the used ring are dirty; an untouched buffer is not. */
	CHECK(n_dirty(&e, N_RXBUF));
	CHECK(n_dirty(&e, N_RXBUF + 6 * 4096));
	CHECK(!n_dirty(&e, N_RXBUF + 7 * 4096));
	CHECK(n_dirty(&e, N_RXUSED));
	/* The next frame starts in the next buffer. */
	n_frame(f, 100, 0, 9);
	n_send(&e, f, 100);
	CHECK(n_wait_used(&e, 0, 8, 2000));
	n_used(&e, 0, 7, &ids[0], &lens[0]);
	CHECK_EQ(ids[0], 7);
	CHECK_EQ(lens[0], 100);
	nenv_teardown(&e);
}

/* A frame larger than the buffers held waits (in the bounce buffer) for more. */
TEST(net_rx_waits_for_buffers)
{
	static uint8_t f[4000], got[sizeof(f)];
	uint32_t ids[3], lens[3];
	struct nenv e;

	if (!nenv_setup(&e, F_VERSION_1 | F_MRG_RXBUF)) {
		CHECK(!"set-up");
		nenv_teardown(&e);
		return;
	}
	n_rx_add(&e, 0, 1536);
	n_rx_add(&e, 1, 1536);
	CHECK_EQ(e.v->ops->activate(e.v), 0);
	n_frame(f, sizeof(f), 2 /* DATA_VALID: cleared without GUEST_CSUM */, 5);
	n_send(&e, f, sizeof(f));
	n_sleep_ms(100);
	CHECK_EQ(n_used_idx(&e, 0), 0);
	n_rx_add(&e, 2, 1536);
	CHECK(n_wait_used(&e, 0, 3, 2000));
	for (uint16_t k = 0; k < 3; k++) {
		n_used(&e, 0, k, &ids[k], &lens[k]);
		CHECK_EQ(ids[k], k);
	}
	CHECK_EQ(lens[0], 1536);
	CHECK_EQ(lens[1], 1536);
	CHECK_EQ(lens[2], sizeof(f) - 3072);
	n_gather(&e, ids, lens, 3, got);
	CHECK_EQ(got[10] | got[11] << 8, 3);
	CHECK_EQ(got[0], 0);
	got[0] = f[0];
	got[10] = f[10];
	got[11] = f[11];
	CHECK(!memcmp(got, f, sizeof(f)));
	nenv_teardown(&e);
}

/* Without MRG_RXBUF: one buffer per frame, num_buffers = 1; a frame too big for it is dropped. */
TEST(net_rx_one_buffer)
{
	static uint8_t f[3000];
	uint32_t id, len;
	struct nenv e;

	if (!nenv_setup(&e, F_VERSION_1)) {
		CHECK(!"set-up");
		nenv_teardown(&e);
		return;
	}
	n_rx_add(&e, 0, 1536);
	n_rx_add(&e, 1, 1536);
	CHECK_EQ(e.v->ops->activate(e.v), 0);
	n_frame(f, 1000, 0, 1);
	n_send(&e, f, 1000);
	n_frame(f, 3000, 0, 2);
	n_send(&e, f, 3000);             /* dropped: 1536 bytes of buffer */
	n_frame(f, 500, 0, 3);
	n_send(&e, f, 500);
	CHECK(n_wait_used(&e, 0, 2, 2000));
	n_sleep_ms(50);
	CHECK_EQ(n_used_idx(&e, 0), 2);
	n_used(&e, 0, 0, &id, &len);
	CHECK_EQ(id, 0);
	CHECK_EQ(len, 1000);
	CHECK_EQ(e.ram[N_RXBUF + 10], 1);
	n_used(&e, 0, 1, &id, &len);
	CHECK_EQ(id, 1);
	CHECK_EQ(len, 500);
	CHECK(!memcmp(e.ram + N_RXBUF + 4096 + 12, f + 12, 488));
	nenv_teardown(&e);
}

/* Wait up to ms for a datagram on fd; its length, or -1. */
static long n_recv(int fd, uint8_t *buf, size_t len, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	if (poll(&p, 1, ms) != 1)
		return -1;
	return recv(fd, buf, len, MSG_DONTWAIT);
}

/* TX: header and frame in separate descriptors reach the TAP as one frame; bad chains are dropped. */
TEST(net_tx_frames)
{
	uint8_t buf[256];
	uint32_t id, len;
	struct nenv e;

	if (!nenv_setup(&e, F_VERSION_1 | F_CSUM)) {
		CHECK(!"set-up");
		nenv_teardown(&e);
		return;
	}
	CHECK_EQ(e.v->ops->activate(e.v), 0);
	/* 0 -> 1: 12-byte header, 60-byte frame. */
	for (int i = 0; i < 72; i++)
		e.ram[N_TXBUF + i] = (uint8_t)(i + 1);
	n_desc(&e, 1, 0, N_TXBUF, 12, VIRTQ_DESC_F_NEXT, 1);
	n_desc(&e, 1, 1, N_TXBUF + 12, 60, 0, 0);
	n_publish(&e, 1, 0);
	CHECK_EQ(n_recv(e.host, buf, sizeof(buf), 2000), 72);
	CHECK(!memcmp(buf, e.ram + N_TXBUF, 72));
	CHECK(n_wait_used(&e, 1, 1, 2000));
	n_used(&e, 1, 0, &id, &len);
	CHECK_EQ(id, 0);
	CHECK_EQ(len, 0);
	/* A writable-only chain and a runt (header only): returned, nothing sent. */
	n_desc(&e, 1, 2, N_TXBUF + 4096, 100, VIRTQ_DESC_F_WRITE, 0);
	n_publish(&e, 1, 2);
	n_desc(&e, 1, 3, N_TXBUF + 8192, 12, 0, 0);
	n_publish(&e, 1, 3);
	CHECK(n_wait_used(&e, 1, 3, 2000));
	CHECK_EQ(n_recv(e.host, buf, sizeof(buf), 50), -1);
	CHECK(!(e.v->status & VIRTIO_STATUS_NEEDS_RESET));
	/* ... and the queue still works. */
	n_desc(&e, 1, 4, N_TXBUF, 72, 0, 0);
	n_publish(&e, 1, 4);
	CHECK_EQ(n_recv(e.host, buf, sizeof(buf), 2000), 72);
	nenv_teardown(&e);
}

/* A descriptor outside guest RAM: NEEDS_RESET, and no more service. */
TEST(net_tx_hostile_chain)
{
	uint8_t buf[256];
	struct nenv e;

	if (!nenv_setup(&e, F_VERSION_1)) {
		CHECK(!"set-up");
		nenv_teardown(&e);
		return;
	}
	CHECK_EQ(e.v->ops->activate(e.v), 0);
	n_desc(&e, 1, 0, N_RAM - 16, 72, 0, 0);
	n_publish(&e, 1, 0);
	for (int i = 0; i < 2000 && !(e.v->status & VIRTIO_STATUS_NEEDS_RESET); i++)
		n_sleep_ms(1);
	CHECK(e.v->status & VIRTIO_STATUS_NEEDS_RESET);
	CHECK_EQ(n_used_idx(&e, 1), 0);
	CHECK_EQ(n_recv(e.host, buf, sizeof(buf), 50), -1);
	nenv_teardown(&e);
}

/* Quiesce hands held RX buffers back (last_avail rewound); resume serves them again. */
TEST(net_quiesce_rewinds_rx)
{
	static uint8_t f[200];
	uint32_t id, len;
	struct nenv e;

	if (!nenv_setup(&e, F_VERSION_1 | F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4)) {
		CHECK(!"set-up");
		nenv_teardown(&e);
		return;
	}
	for (uint16_t i = 0; i < 4; i++)
		n_rx_add(&e, i, 1536);
	CHECK_EQ(e.v->ops->activate(e.v), 0);
	for (int i = 0; i < 2000 && e.v->vqs[0].last_avail != 4; i++)
		n_sleep_ms(1);
	CHECK_EQ(e.v->vqs[0].last_avail, 4);   /* all held: less than 64 KiB */
	CHECK_EQ(e.v->ops->quiesce(e.v), 0);
	CHECK_EQ(e.v->vqs[0].last_avail, 0);
	CHECK_EQ(n_used_idx(&e, 0), 0);
	CHECK_EQ(e.v->ops->resume(e.v), 0);
	n_frame(f, sizeof(f), 0, 7);
	n_send(&e, f, sizeof(f));
	CHECK(n_wait_used(&e, 0, 1, 2000));
	n_used(&e, 0, 0, &id, &len);
	CHECK_EQ(id, 0);
	CHECK_EQ(len, sizeof(f));
	CHECK(!memcmp(e.ram + N_RXBUF + 12, f + 12, sizeof(f) - 12));
	nenv_teardown(&e);
}

/* Config space: MAC, link up; save -> load gives the guest its MAC on the new NIC. */
TEST(net_config_save_load)
{
	static const uint8_t mac_a[6] = { 0x02, 0xaa, 0, 0, 0, 1 }, mac_b[6] = { 0x02, 0xbb, 0, 0, 0, 2 };
	struct virtio_dev *a = virtio_net_open_fd(NULL, -1, mac_a), *b = virtio_net_open_fd(NULL, -1, mac_b);
	struct state_out o;
	struct state_in in;
	uint8_t cfg[10];

	if (!a || !b) {
		CHECK(!"open");
		virtio_net_close(a);
		virtio_net_close(b);
		return;
	}
	CHECK_EQ(a->ops->device_id, 1);
	CHECK_EQ(a->ops->nr_queues, 2);
	CHECK(a->ops->features(a) & (1ULL << 5));      /* MAC */
	CHECK(a->ops->features(a) & (1ULL << 15));     /* MRG_RXBUF */
	CHECK(a->ops->features(a) & (1ULL << 16));     /* STATUS */
	a->ops->config_read(a, 0, cfg, sizeof(cfg));
	CHECK(!memcmp(cfg, mac_a, 6));
	CHECK_EQ(cfg[6] | cfg[7] << 8, 1);             /* VIRTIO_NET_S_LINK_UP */
	a->ops->config_read(a, 6, cfg, 2);
	CHECK_EQ(cfg[0], 1);
	state_out_init(&o);
	CHECK_EQ(a->ops->save(a, &o), 0);
	state_in_init(&in, o.buf, o.len);
	CHECK_EQ(b->ops->load(b, &in, 1), 0);
	b->ops->config_read(b, 0, cfg, 6);
	CHECK(!memcmp(cfg, mac_a, 6));
	/* A truncated stream is refused cleanly. */
	state_in_init(&in, o.buf, o.len - 1);
	CHECK(b->ops->load(b, &in, 1) < 0);
	state_out_free(&o);
	virtio_net_close(a);
	virtio_net_close(b);
}
