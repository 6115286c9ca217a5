/*
 * net.c - virtio-net (virtio 1.2, 5.1) on a TAP device: the device model
 * (features, config space, save/load) and its datapath thread.  The TAP
 * side (spec, MACs, /dev/net/tun, announce) is src/net/tap.c.
 *
 * Features offered: MAC, STATUS (link always up), MRG_RXBUF, and the
 * offloads that pay for TCP: CSUM + HOST_TSO4/6 (the guest may hand us
 * partially checksummed frames and 64 KiB TCP segments: the TAP takes them
 * as they are, with the virtio header, and the host stack finishes them
 * only if they leave through a device that cannot) and GUEST_CSUM +
 * GUEST_TSO4/6 (the host may hand the guest the same, set with
 * TUNSETOFFLOAD once the driver accepted them: one 64 KiB copy instead of
 * 45 frames, no checksum computed on a local path at all).  Not offered:
 * UFO/USO (little use, and UFO is gone from Linux), ECN with TSO, the
 * control queue (no MAC filtering, VLAN or announce by the guest), MQ, MTU.
 *
 * The 12-byte header: with VERSION_1 it always has num_buffers, so the TAP
 * is set to a 12-byte header (TUNSETVNETHDRSZ) and frames pass between
 * guest buffers and the TAP with no reformatting; we only write num_buffers
 * (and clear the flags for a driver without GUEST_CSUM).
 *
 * Datapath: one thread per NIC, started when the driver sets DRIVER_OK (or
 * on resume), polls the TX queue's kick eventfd, the RX queue's kick
 * eventfd, the TAP fd and a stop eventfd.  vCPU threads never touch it.
 *  - TX: each chain (device-readable only: header + frame) is written to
 *    the TAP with one writev() straight from guest memory, and returned
 *    with 0 bytes written.  A malformed chain (writable segments, shorter
 *    than a header and an Ethernet header, longer than 64 KiB) is dropped
 *    and counted; a ring vq_pop() calls malformed puts the device in
 *    NEEDS_RESET.  The host rejecting a frame (a bad GSO header) is a drop.
 *  - RX: chains are popped ahead and held until enough bytes are held for
 *    the largest frame the TAP may send (64 KiB with GUEST_TSO, an MTU
 *    frame otherwise) or the ring is empty; then one readv() puts the frame
 *    straight into the held buffers (a bounce buffer takes what does not
 *    fit).  With MRG_RXBUF a frame spans as many chains as it needs
 *    (num_buffers); what went to the bounce buffer waits there for the
 *    guest to add buffers.  Without MRG_RXBUF a frame must fit one chain
 *    (else it is dropped and counted).  With no buffers at all the TAP is
 *    not read (the host queues, then drops) until the guest kicks the RX
 *    queue.
 *  - Batches of at most NET_BATCH chains, then vq_notify(); TX and RX take
 *    turns, so neither direction starves the other.
 * vq_push() marks the bytes it is told were written dirty; bytes read into
 * a buffer that is not returned (a dropped frame) are marked here.
 *
 * Stopping: reset and quiesce set `stop`, wake the thread and join it: a
 * frame being handled is finished first.  Held RX chains are handed back
 * on quiesce by moving last_avail back over them (they are the last ones
 * popped, in order, untouched as far as the driver can tell), so a
 * migrated guest loses no receive buffers; a frame waiting for buffers is
 * dropped.  `ctl` serializes start/stop (vCPU threads: activate/reset; loop
 * thread: quiesce/resume); the thread never takes vdev->lock itself.
 *
 * State: MAC and link status (save/load), nothing in flight after quiesce.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <linux/if_tun.h>

#include "godwit/le.h"
#include "godwit/dev.h"
#include "godwit/log.h"
#include "godwit/tap.h"
#include "godwit/virtio.h"
#include "godwit/vm.h"

/* Feature bits (5.1.3). */
#define VIRTIO_NET_F_CSUM          0
#define VIRTIO_NET_F_GUEST_CSUM    1
#define VIRTIO_NET_F_MAC           5
#define VIRTIO_NET_F_GUEST_TSO4    7
#define VIRTIO_NET_F_GUEST_TSO6    8
#define VIRTIO_NET_F_HOST_TSO4     11
#define VIRTIO_NET_F_HOST_TSO6     12
#define VIRTIO_NET_F_MRG_RXBUF     15
#define VIRTIO_NET_F_STATUS        16

#define VIRTIO_NET_S_LINK_UP       1

/* Header (5.1.6): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers. */
#define NET_HDR_LEN                TAP_VNET_HDR_LEN
#define NET_HDR_FLAGS              0
#define NET_HDR_NUM_BUFFERS        10

/* Config space (5.1.4): mac[6], le16 status, le16 max_virtqueue_pairs. */
#define CFG_MAC                    0
#define CFG_STATUS                 6
#define CFG_MAX_VQ_PAIRS           8
#define NET_CONFIG_SIZE            10

#define NET_RXQ                    0
#define NET_TXQ                    1
#define NET_QUEUE_SIZE             256u
/* The largest frame after the header (5.1.6.3.1: 65562-byte buffers with GSO). */
#define NET_FRAME_MAX              65550u
#define NET_ETH_HLEN               14u
/* Chains handled before notifying and giving the other direction a turn. */
#define NET_BATCH                  64u
/* RX: segment pool (a chain of up to VQ_MAX_SEGS always fits while < half is used). */
#define NET_RX_SEGS                (2 * VQ_MAX_SEGS)
#define NET_RX_CHAINS              VIRTQ_MAX_SIZE
#define NET_IOV_MAX                1024  /* UIO_MAXIOV */
/* Messages about a misbehaving guest or host, per NIC, before going quiet. */
#define NET_MAX_LOGS               10u

/* save/load tags: never renumber or reuse. */
#define NET_TAG_MAC                1     /* 6 bytes */
#define NET_TAG_STATUS             2     /* u16: config status */
#define NET_TAG_FEATURES           3     /* u64: the device-specific bits offered */

#define NET_FEATURES ((1ULL << VIRTIO_NET_F_CSUM) | (1ULL << VIRTIO_NET_F_GUEST_CSUM) |        \
		      (1ULL << VIRTIO_NET_F_MAC) | (1ULL << VIRTIO_NET_F_GUEST_TSO4) |         \
		      (1ULL << VIRTIO_NET_F_GUEST_TSO6) | (1ULL << VIRTIO_NET_F_HOST_TSO4) |   \
		      (1ULL << VIRTIO_NET_F_HOST_TSO6) | (1ULL << VIRTIO_NET_F_MRG_RXBUF) |    \
		      (1ULL << VIRTIO_NET_F_STATUS))

/* A held RX chain: its segments are rx_iov/rx_gpa[seg .. seg + nseg). */
struct net_rx_chain {
	uint16_t head;
	uint16_t nseg;
	uint32_t seg;
	size_t len;                     /* writable bytes */
	size_t written;                 /* bytes of the current frame placed in it */
	uint32_t seq;                   /* n->rx_pops when it was popped */
};

/*
 * Counted by the datapath thread (STAT_ADD), read by the API (GET /metrics)
 * and logged at stop.  Not guest state: never saved.
 */
struct net_stats {
	_Atomic uint64_t rx_frames, rx_bytes, rx_dropped, rx_bad_chains;
	_Atomic uint64_t tx_frames, tx_bytes, tx_dropped, tx_bad_chains;
};

struct net {
	struct virtio_dev vdev;
	struct vm *vm;
	char *spec;
	struct tap tap;
	unsigned int index;             /* among the VM's --net options */
	uint8_t mac[6];
	bool mac_given;                 /* mac= on the command line */
	uint16_t status;
	uint64_t features;              /* device-specific bits offered */

	/* The datapath thread. */
	pthread_mutex_t ctl;            /* start/stop; never held by the thread */
	pthread_t thread;
	bool running;                   /* under ctl: started, not joined */
	atomic_bool stop;
	int stop_fd;
	bool broken;                    /* NEEDS_RESET: serve nothing until reset */
	bool tap_error;                 /* reading the TAP failed: retry in a while */
	unsigned int logs;

	/* Set when the thread starts, from the negotiated features. */
	bool mrg_rxbuf, guest_csum;
	size_t rx_need;                 /* held bytes wanted before reading a frame */

	/* Owned by the thread (or by ctl's holder once it is joined). */
	struct vq_elem *elem;
	struct net_rx_chain *held;      /* FIFO of popped, unused RX chains */
	unsigned int nheld, nheld_segs;
	size_t held_bytes;
	uint32_t rx_pops;               /* RX chains popped, counting */
	struct iovec *rx_iov;
	uint64_t *rx_gpa;
	struct iovec *iov;              /* readv() list: held segments + bounce */
	uint8_t *bounce;                /* frame bytes beyond the held buffers */
	size_t frame_len;               /* a frame being placed (0: none) */
	size_t frame_direct;            /* of which read straight into guest buffers */
	struct net_stats st;
};

static const struct virtio_dev_ops net_vdev_ops;

/* Log one of the first NET_MAX_LOGS problems of this NIC. */
#define net_log(n, fmt, ...) do {                                              \
	if ((n)->logs < NET_MAX_LOGS) {                                        \
		(n)->logs++;                                                   \
		log_warnx("virtio-net %s: " fmt "%s", (n)->tap.name, ##__VA_ARGS__, \
			  (n)->logs == NET_MAX_LOGS ? " (no more such messages)" : ""); \
	}                                                                      \
} while (0)

/* ---- RX ---------------------------------------------------------------------------- */

/* Copy len bytes of src to byte offset off of the segments iov[0..n). */
static void iov_copy_to(const struct iovec *iov, unsigned int n, size_t off, const void *src,
			size_t len)
{
	const uint8_t *s = src;

	for (unsigned int i = 0; i < n && len; i++) {
		size_t take;

		if (off >= iov[i].iov_len) {
			off -= iov[i].iov_len;
			continue;
		}
		take = MIN(iov[i].iov_len - off, len);
		memcpy((uint8_t *)iov[i].iov_base + off, s, take);
		s += take;
		len -= take;
		off = 0;
	}
}

/* Mark the first len bytes of held chain c dirty (written, not returned). */
static void net_rx_mark(struct net *n, const struct net_rx_chain *c, size_t len)
{
	for (unsigned int i = 0; i < c->nseg && len && n->vm; i++) {
		size_t take = MIN(n->rx_iov[c->seg + i].iov_len, len);

		vm_mark_dirty(n->vm, n->rx_gpa[c->seg + i], take);
		len -= take;
	}
}

/* Drop the first k held chains (returned or rewound), compacting the pools. */
static void net_rx_forget(struct net *n, unsigned int k)
{
	unsigned int segs = 0;

	for (unsigned int i = 0; i < k; i++) {
		segs += n->held[i].nseg;
		n->held_bytes -= n->held[i].len;
	}
	memmove(n->held, n->held + k, (n->nheld - k) * sizeof(*n->held));
	n->nheld -= k;
	for (unsigned int i = 0; i < n->nheld; i++)
		n->held[i].seg -= segs;
	memmove(n->rx_iov, n->rx_iov + segs, (n->nheld_segs - segs) * sizeof(*n->rx_iov));
	memmove(n->rx_gpa, n->rx_gpa + segs, (n->nheld_segs - segs) * sizeof(*n->rx_gpa));
	n->nheld_segs -= segs;
}

/* Return held chain c (the first held one) to the driver with `written` bytes. */
static void net_rx_push(struct net *n, struct virtqueue *vq, const struct net_rx_chain *c,
			size_t written)
{
	struct vq_elem *e = n->elem;

	e->head = c->head;
	e->n_out = 0;
	e->n_in = c->nseg;
	e->out_len = 0;
	e->in_len = c->len;
	memcpy(e->iov, n->rx_iov + c->seg, c->nseg * sizeof(*e->iov));
	memcpy(e->gpa, n->rx_gpa + c->seg, c->nseg * sizeof(*e->gpa));
	vq_push(vq, e, (uint32_t)written);
}

#define RX_FILL_ENOUGH 0
#define RX_FILL_EMPTY  1
#define RX_FILL_FULL   2

/*
 * net_rx_fill - pop RX chains until n->rx_need bytes are held, or the bytes
 * of the frame waiting for buffers (one chain without MRG_RXBUF).  Returns
 * RX_FILL_ENOUGH, RX_FILL_EMPTY (the ring ran empty), RX_FILL_FULL (our
 * pool is: the driver's buffers are tiny) or -EINVAL for a malformed ring.
 * Chains no frame can use (readable segments, smaller than the header) are
 * returned empty and counted.
 */
static int net_rx_fill(struct net *n, struct virtqueue *vq, unsigned int *pushed)
{
	struct vq_elem *e = n->elem;
	size_t need = MAX(n->rx_need, n->frame_len);

	while (n->mrg_rxbuf ? n->held_bytes < need : n->nheld == 0) {
		struct net_rx_chain *c;
		int ret;

		if (n->nheld == NET_RX_CHAINS || n->nheld_segs >= NET_RX_SEGS - VQ_MAX_SEGS)
			return RX_FILL_FULL;
		ret = vq_pop(vq, e);
		if (ret <= 0)
			return ret < 0 ? ret : RX_FILL_EMPTY;
		n->rx_pops++;
		if (e->n_out || e->in_len < NET_HDR_LEN || e->in_len > UINT32_MAX) {
			STAT_ADD(n->st.rx_bad_chains, 1);
			net_log(n, "RX chain %u unusable (%u readable segments, %llu writable bytes): skipped",
				e->head, e->n_out, (unsigned long long)e->in_len);
			vq_push(vq, e, 0);
			(*pushed)++;
			continue;
		}
		c = &n->held[n->nheld++];
		c->head = e->head;
		c->nseg = (uint16_t)e->n_in;
		c->seg = n->nheld_segs;
		c->len = e->in_len;
		c->written = 0;
		c->seq = n->rx_pops;
		memcpy(n->rx_iov + c->seg, e->iov, e->n_in * sizeof(*e->iov));
		memcpy(n->rx_gpa + c->seg, e->gpa, e->n_in * sizeof(*e->gpa));
		n->nheld_segs += e->n_in;
		n->held_bytes += c->len;
	}
	return RX_FILL_ENOUGH;
}

/*
 * net_rx_place - give the frame being received (frame_len bytes: the first
 * frame_direct already in the held buffers, the rest in the bounce buffer)
 * the chains it needs and return them.  Returns 1 when the frame is done
 * (delivered or dropped), 0 if it needs more buffers than are held.
 */
static int net_rx_place(struct net *n, struct virtqueue *vq, unsigned int *pushed)
{
	size_t off = 0, len = n->frame_len, direct = n->frame_direct;
	unsigned int k = 0;
	uint8_t hdr[2];

	if (!n->mrg_rxbuf && len > n->held[0].len) {
		/* It did not fit the one buffer the driver gave (and no GSO was offered it). */
		STAT_ADD(n->st.rx_dropped, 1);
		net_log(n, "RX frame of %zu bytes dropped: the driver's buffer has %zu", len,
			n->held[0].len);
		net_rx_mark(n, &n->held[0], MIN(direct, n->held[0].len));
		n->frame_len = 0;
		return 1;
	}
	while (off < len && k < n->nheld) {
		struct net_rx_chain *c = &n->held[k++];
		size_t take = MIN(c->len, len - off);

		if (off + take > direct) {
			size_t from = MAX(off, direct);

			iov_copy_to(n->rx_iov + c->seg, c->nseg, from - off,
				    n->bounce + (from - direct), off + take - from);
		}
		c->written = take;
		off += take;
	}
	if (off < len)
		return 0;               /* wait for buffers; the written ones stay held */

	le16_put(hdr, (uint16_t)k);
	iov_copy_to(n->rx_iov + n->held[0].seg, n->held[0].nseg, NET_HDR_NUM_BUFFERS, hdr, 2);
	if (!n->guest_csum) {
		/* 5.1.6.4.1: without GUEST_CSUM the device sets flags to zero. */
		hdr[0] = 0;
		iov_copy_to(n->rx_iov + n->held[0].seg, n->held[0].nseg, NET_HDR_FLAGS, hdr, 1);
	}
	for (unsigned int i = 0; i < k; i++)
		net_rx_push(n, vq, &n->held[i], n->held[i].written);
	*pushed += k;
	net_rx_forget(n, k);
	STAT_ADD(n->st.rx_frames, 1);
	STAT_ADD(n->st.rx_bytes, len - NET_HDR_LEN);
	n->frame_len = 0;
	return 1;
}

/*
 * net_rx_read - read one frame from the TAP into the held chains (and the
 * bounce buffer).  Returns 1 if a frame was read (n->frame_len set, or it
 * was dropped), 0 if the TAP has nothing, -errno on a TAP error.
 */
static int net_rx_read(struct net *n)
{
	unsigned int niov = 0;
	size_t direct = 0;
	ssize_t r;

	for (unsigned int i = 0; i < n->nheld_segs && niov < NET_IOV_MAX - 1; i++) {
		n->iov[niov++] = n->rx_iov[i];
		direct += n->rx_iov[i].iov_len;
	}
	n->iov[niov].iov_base = n->bounce;
	n->iov[niov].iov_len = NET_HDR_LEN + NET_FRAME_MAX;
	niov++;
	r = readv(n->tap.fd, n->iov, (int)niov);
	if (r < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -errno;
	if ((size_t)r < NET_HDR_LEN + NET_ETH_HLEN || (size_t)r > direct + NET_HDR_LEN + NET_FRAME_MAX) {
		/* Runt, or larger than anything we can hold (the TAP returns the full length). */
		STAT_ADD(n->st.rx_dropped, 1);
		net_log(n, "RX frame of %zd bytes from the TAP dropped", r);
		for (unsigned int i = 0; i < n->nheld; i++)
			net_rx_mark(n, &n->held[i], n->held[i].len);
		return 1;
	}
	n->frame_len = (size_t)r;
	n->frame_direct = MIN(direct, (size_t)r);
	return 1;
}

/* Give up on the frame waiting for buffers (quiesce, or buffers too small). */
static void net_rx_drop_frame(struct net *n)
{
	if (!n->frame_len)
		return;
	STAT_ADD(n->st.rx_dropped, 1);
	for (unsigned int i = 0; i < n->nheld; i++) {
		net_rx_mark(n, &n->held[i], n->held[i].written);
		n->held[i].written = 0;
	}
	n->frame_len = 0;
}

/*
 * net_rx - serve the RX direction for up to NET_BATCH frames.  Returns 1 if
 * there may be more to do at once; 0 when waiting: for the TAP to have a
 * frame (*want_tap), for the driver to add buffers (a kick), or to retry
 * after a TAP error (n->tap_error); -EINVAL for a malformed ring.
 */
static int net_rx(struct net *n, struct virtqueue *vq, bool *want_tap)
{
	unsigned int pushed = 0, frames = 0;
	int ret = 0, fill;

	*want_tap = false;
	while (frames < NET_BATCH && !atomic_load(&n->stop)) {
		fill = net_rx_fill(n, vq, &pushed);
		if (fill < 0) {
			ret = fill;
			break;
		}
		if (n->frame_len) {
			if (net_rx_place(n, vq, &pushed)) {
				frames++;
				continue;
			}
			if (fill != RX_FILL_FULL)
				break;          /* wait for the driver's buffers */
			net_log(n, "RX frame of %zu bytes dropped: the driver's buffers are too small",
				n->frame_len);
			net_rx_drop_frame(n);
			continue;
		}
		if (!n->nheld)
			break;                  /* no buffers: the TAP waits, until a kick */
		ret = net_rx_read(n);
		if (ret == 0) {
			*want_tap = true;
			break;
		}
		if (ret < 0) {
			STAT_ADD(n->st.rx_dropped, 1);
			net_log(n, "reading the TAP: %s", strerror(-ret));
			n->tap_error = true;
			ret = 0;
			break;
		}
		ret = 0;
		frames++;               /* placed on the next turn, after popping enough */
	}
	if (pushed)
		vq_notify(vq);
	if (ret < 0)
		return ret;
	return frames == NET_BATCH;
}

/* ---- TX ----------------------------------------------------------------------------- */

/* Serve up to NET_BATCH TX chains.  Returns 1 if there may be more, 0, or -EINVAL. */
static int net_tx(struct net *n, struct virtqueue *vq)
{
	struct vq_elem *e = n->elem;
	unsigned int done = 0;
	int ret = 0;

	while (done < NET_BATCH && !atomic_load(&n->stop)) {
		ssize_t w;

		ret = vq_pop(vq, e);
		if (ret <= 0)
			break;
		done++;
		if (e->n_in || e->out_len < NET_HDR_LEN + NET_ETH_HLEN ||
		    e->out_len > NET_HDR_LEN + NET_FRAME_MAX) {
			STAT_ADD(n->st.tx_bad_chains, 1);
			net_log(n, "TX chain %u malformed (%u writable segments, %llu bytes): dropped",
				e->head, e->n_in, (unsigned long long)e->out_len);
			vq_push(vq, e, 0);
			continue;
		}
		w = writev(n->tap.fd, e->iov, (int)e->n_out);
		if (w < 0) {
			/* EINVAL: the host refused the header (GSO/checksum fields); EAGAIN: full. */
			STAT_ADD(n->st.tx_dropped, 1);
			if (errno != EAGAIN && errno != ENOBUFS)
				net_log(n, "TX frame of %llu bytes refused by the TAP: %s",
					(unsigned long long)e->out_len, strerror(errno));
		} else {
			STAT_ADD(n->st.tx_frames, 1);
			STAT_ADD(n->st.tx_bytes, e->out_len - NET_HDR_LEN);
		}
		vq_push(vq, e, 0);
	}
	if (done)
		vq_notify(vq);
	if (ret < 0)
		return ret;
	return done == NET_BATCH;
}

/* ---- the thread ---------------------------------------------------------------------- */

static void net_broken(struct net *n, const char *why)
{
	n->broken = true;
	virtio_dev_set_needs_reset(&n->vdev, why);
}

static void drain(int fd)
{
	uint64_t v;

	if (fd >= 0 && read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_warn("virtio-net: read eventfd");
}

static void *net_thread(void *opaque)
{
	struct net *n = opaque;
	struct virtqueue *rxq = &n->vdev.vqs[NET_RXQ], *txq = &n->vdev.vqs[NET_TXQ];
	struct pollfd pfd[4] = {
		{ .fd = n->stop_fd, .events = POLLIN },
		{ .fd = txq->kick_fd, .events = POLLIN },
		{ .fd = rxq->kick_fd, .events = POLLIN },
		{ .fd = n->tap.fd, .events = POLLIN },
	};
	bool tx_kicked = true, rx_kicked = true, tap_ready = true, want_tap = false;

	while (!atomic_load(&n->stop) && !n->broken) {
		int tx_more = 0, rx_more = 0, timeout, ret;

		/* Clear a kick before looking at its ring, so none is lost. */
		if (tx_kicked) {
			drain(txq->kick_fd);
			tx_more = net_tx(n, txq);
			if (tx_more < 0) {
				net_broken(n, "virtio-net: malformed TX descriptor chain");
				break;
			}
		}
		if (rx_kicked || tap_ready) {
			if (rx_kicked)
				drain(rxq->kick_fd);
			rx_more = net_rx(n, rxq, &want_tap);
			if (rx_more < 0) {
				net_broken(n, "virtio-net: malformed RX descriptor chain");
				break;
			}
		}
		/*
		 * Poll the TAP only while there are buffers for what it gives
		 * (fd -1, not events 0: a deleted TAP reports POLLERR anyway).
		 * After a TAP error, retry once a second rather than spin.
		 */
		pfd[3].fd = want_tap ? n->tap.fd : -1;
		timeout = tx_more || rx_more ? 0 : n->tap_error ? 1000 : -1;
		ret = poll(pfd, 4, timeout);
		if (ret < 0) {
			if (errno == EINTR)
				continue;
			log_warn("virtio-net %s: poll", n->tap.name);
			break;
		}
		tx_kicked = tx_more || (pfd[1].revents & POLLIN);
		rx_kicked = pfd[2].revents & POLLIN;
		tap_ready = rx_more || (pfd[3].revents & (POLLIN | POLLERR | POLLHUP));
		if (ret == 0 && n->tap_error) {
			n->tap_error = false;
			tap_ready = true;
		}
	}
	return NULL;
}

/* Under ctl: what the negotiated features mean for the TAP and for RX. */
static void net_configure(struct net *n)
{
	struct virtio_dev *vdev = &n->vdev;
	unsigned int off = 0;
	bool tso;

	n->mrg_rxbuf = virtio_has_feature(vdev, VIRTIO_NET_F_MRG_RXBUF);
	n->guest_csum = virtio_has_feature(vdev, VIRTIO_NET_F_GUEST_CSUM);
	if (n->guest_csum) {
		off |= TUN_F_CSUM;
		if (virtio_has_feature(vdev, VIRTIO_NET_F_GUEST_TSO4))
			off |= TUN_F_TSO4;
		if (virtio_has_feature(vdev, VIRTIO_NET_F_GUEST_TSO6))
			off |= TUN_F_TSO6;
	}
	/*
	 * An older kernel may refuse some: then the host just sends less
	 * offloaded frames.  (A unit test's fd is not a TAP and has no name.)
	 */
	if (n->tap.name[0] && tap_set_offload(&n->tap, off) &&
	    tap_set_offload(&n->tap, off & TUN_F_CSUM) && tap_set_offload(&n->tap, 0))
		log_warn("virtio-net %s: TUNSETOFFLOAD", n->tap.name);
	tso = off & (TUN_F_TSO4 | TUN_F_TSO6);
	n->rx_need = NET_HDR_LEN + (tso ? NET_FRAME_MAX : NET_ETH_HLEN + 4 + n->tap.mtu);
}

/* Start the thread unless it runs; under ctl. */
static int net_start_locked(struct net *n)
{
	struct virtqueue *rxq = &n->vdev.vqs[NET_RXQ], *txq = &n->vdev.vqs[NET_TXQ];
	sigset_t all, old;
	int ret;

	if (n->running)
		return 0;
	if (!rxq->enabled || !rxq->size || !txq->enabled || !txq->size) {
		log_debug("virtio-net %s: the driver enabled no RX/TX queue pair", n->tap.name);
		return 0;
	}
	for (int q = 0; q < 2; q++) {
		int fd = n->vdev.vqs[q].kick_fd;

		if (fd < 0) {
			log_warnx("virtio-net %s: queue %d has no kick eventfd", n->tap.name, q);
			return -EINVAL;
		}
		ret = fcntl(fd, F_GETFL);
		if (ret >= 0 && !(ret & O_NONBLOCK))
			ret = fcntl(fd, F_SETFL, ret | O_NONBLOCK);
		if (ret < 0) {
			ret = -errno;
			log_warn("virtio-net %s: kick fd", n->tap.name);
			return ret;
		}
	}
	net_configure(n);
	atomic_store(&n->stop, false);
	n->broken = false;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = -pthread_create(&n->thread, NULL, net_thread, n);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret) {
		log_warnx("virtio-net %s: cannot start its thread: %s", n->tap.name, strerror(-ret));
		return ret;
	}
	pthread_setname_np(n->thread, "godwit-net");
	n->running = true;
	return 0;
}

/* Stop and join the thread; under ctl.  The frame being handled completes first. */
static void net_stop_locked(struct net *n)
{
	uint64_t one = 1, v;

	if (!n->running)
		return;
	atomic_store(&n->stop, true);
	if (write(n->stop_fd, &one, sizeof(one)) < 0)
		log_warn("virtio-net %s: wake the thread", n->tap.name);
	if (pthread_equal(pthread_self(), n->thread))
		return;                 /* called back from the thread: it exits at once */
	pthread_join(n->thread, NULL);
	n->running = false;
	while (read(n->stop_fd, &v, sizeof(v)) > 0)
		;
	log_debug("virtio-net %s: rx %" PRIu64 " frames %" PRIu64 " bytes, %" PRIu64 " dropped, %"
		  PRIu64 " bad chains; tx %" PRIu64 " frames %" PRIu64 " bytes, %" PRIu64
		  " dropped, %" PRIu64 " bad chains", n->tap.name,
		  STAT_GET(n->st.rx_frames), STAT_GET(n->st.rx_bytes), STAT_GET(n->st.rx_dropped),
		  STAT_GET(n->st.rx_bad_chains), STAT_GET(n->st.tx_frames), STAT_GET(n->st.tx_bytes),
		  STAT_GET(n->st.tx_dropped), STAT_GET(n->st.tx_bad_chains));
}

/* A frame half placed is lost; held chains are forgotten (reset) or handed back (quiesce). */
static void net_drop_held(struct net *n, bool rewind)
{
	struct virtqueue *vq = &n->vdev.vqs[NET_RXQ];

	net_rx_drop_frame(n);
	if (rewind && n->nheld) {
		if (n->rx_pops - n->held[0].seq + 1 == n->nheld) {
			/* The last nheld chains popped, in order: put them back in the ring. */
			vq->last_avail -= (uint16_t)n->nheld;
		} else {
			/* An unusable chain was returned between them: return these empty too. */
			for (unsigned int i = 0; i < n->nheld; i++)
				net_rx_push(n, vq, &n->held[i], 0);
			vq_notify(vq);
		}
	}
	n->nheld = n->nheld_segs = 0;
	n->held_bytes = 0;
	n->tap_error = false;
}

/* ---- virtio_dev_ops ------------------------------------------------------------------ */

static uint64_t net_features(struct virtio_dev *vdev)
{
	struct net *n = vdev->priv;

	return n->features;
}

static void net_config_read(struct virtio_dev *vdev, uint32_t off, void *data, uint32_t len)
{
	struct net *n = vdev->priv;
	uint8_t cfg[NET_CONFIG_SIZE];

	memcpy(cfg + CFG_MAC, n->mac, 6);
	le16_put(cfg + CFG_STATUS, n->status);
	le16_put(cfg + CFG_MAX_VQ_PAIRS, 1);
	virtio_config_read_bytes(cfg, NET_CONFIG_SIZE, off, data, len);
}

static int net_activate(struct virtio_dev *vdev)
{
	struct net *n = vdev->priv;
	int ret;

	pthread_mutex_lock(&n->ctl);
	ret = net_start_locked(n);
	pthread_mutex_unlock(&n->ctl);
	return ret;
}

static void net_reset(struct virtio_dev *vdev)
{
	struct net *n = vdev->priv;

	pthread_mutex_lock(&n->ctl);
	net_stop_locked(n);
	net_drop_held(n, false);
	n->broken = false;
	/* No features any more: the host must not send offloaded frames (kept by a persistent TAP). */
	if (n->tap.name[0] && n->tap.fd >= 0 && tap_set_offload(&n->tap, 0))
		log_warn("virtio-net %s: TUNSETOFFLOAD", n->tap.name);
	pthread_mutex_unlock(&n->ctl);
}

/* Migration: nothing in flight afterwards, held RX buffers back in the avail ring. */
static int net_quiesce(struct virtio_dev *vdev)
{
	struct net *n = vdev->priv;

	pthread_mutex_lock(&n->ctl);
	net_stop_locked(n);
	if (!n->running)
		net_drop_held(n, true);
	pthread_mutex_unlock(&n->ctl);
	return 0;
}

/* Serve again if the driver had the device running (also after load). */
static int net_resume(struct virtio_dev *vdev)
{
	return virtio_dev_driver_ok(vdev) ? net_activate(vdev) : 0;
}

struct net_image {
	struct state_bytes mac;
	uint16_t status;
	uint64_t features;
};
#define IMG struct net_image
static const struct state_desc net_fields[] = {
	STATE_BYTES(NET_TAG_MAC, IMG, mac, 6, 6, 1),
	STATE_INT(NET_TAG_STATUS, IMG, status, STATE_ANY, 1),
	/* The transport checks the offered features as a whole. */
	STATE_INT(NET_TAG_FEATURES, IMG, features, STATE_ANY, 1),
};
#undef IMG

static int net_save(struct virtio_dev *vdev, struct state_out *out)
{
	struct net *n = vdev->priv;
	struct net_image img = { { n->mac, 6 }, n->status, n->features };

	return state_save_fields(out, net_fields, ARRAY_SIZE(net_fields), &img);
}

/*
 * The guest keeps its NIC's identity: the source's MAC replaces this one
 * (a destination started without --name has another UUID, so another
 * default MAC; an explicit different mac= is overridden, with a warning).
 */
static int net_load(struct virtio_dev *vdev, struct state_in *in, uint16_t version)
{
	struct net *n = vdev->priv;
	struct net_image v = { 0 };
	const uint8_t *mac;
	int ret;

	ret = state_load_fields(in, net_fields, ARRAY_SIZE(net_fields), &v, version);
	if (ret)
		return ret;
	mac = v.mac.p;
	if ((mac[0] & 1) || !(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]))
		return -EBADMSG;
	if (memcmp(mac, n->mac, 6)) {
		char a[18], b[18];

		tap_mac_format(mac, a);
		tap_mac_format(n->mac, b);
		if (n->mac_given)
			log_warnx("virtio-net %s: the guest keeps its MAC %s (not mac=%s)",
				  n->tap.name, a, b);
		else
			log_debug("virtio-net %s: the guest keeps its MAC %s", n->tap.name, a);
		memcpy(n->mac, mac, 6);
	}
	n->status = v.status;
	return 0;
}

static void net_free(struct net *n);

/* Teardown, after reset: close the TAP (one we created disappears) and free the NIC. */
static void net_destroy(struct virtio_dev *vdev)
{
	net_free(vdev->priv);
}

/* GET /metrics: a malformed chain counts as a drop there. */
static void net_dev_stats(struct virtio_dev *vdev, struct dev_stats *st)
{
	struct net *n = vdev->priv;

	st->kind = DEV_STATS_NET;
	st->label = n->tap.name;
	st->net.rx_packets = STAT_GET(n->st.rx_frames);
	st->net.rx_bytes = STAT_GET(n->st.rx_bytes);
	st->net.rx_dropped = STAT_GET(n->st.rx_dropped) + STAT_GET(n->st.rx_bad_chains);
	st->net.tx_packets = STAT_GET(n->st.tx_frames);
	st->net.tx_bytes = STAT_GET(n->st.tx_bytes);
	st->net.tx_dropped = STAT_GET(n->st.tx_dropped) + STAT_GET(n->st.tx_bad_chains);
}

static const struct virtio_dev_ops net_vdev_ops = {
	.name = "virtio-net",
	.stats = net_dev_stats,
	.device_id = 1,
	.pci_class = 0x0200,            /* network, Ethernet */
	.nr_queues = 2,
	.queue_max_size = NET_QUEUE_SIZE,
	.config_size = NET_CONFIG_SIZE,
	.features = net_features,
	.config_read = net_config_read,
	/* No config_write: read-only to a VERSION_1 driver (only a legacy one may write the MAC). */
	.activate = net_activate,
	.reset = net_reset,
	.quiesce = net_quiesce,
	.resume = net_resume,
	.save = net_save,
	.load = net_load,
	.destroy = net_destroy,
};

/* ---- creation ---------------------------------------------------------------------- */

static void net_free(struct net *n)
{
	if (!n)
		return;
	tap_close(&n->tap);
	if (n->stop_fd >= 0)
		close(n->stop_fd);
	pthread_mutex_destroy(&n->ctl);
	free(n->elem);
	free(n->held);
	free(n->rx_iov);
	free(n->rx_gpa);
	free(n->iov);
	free(n->bounce);
	free(n->spec);
	free(n);
}

/* A NIC with its buffers and MAC, no TAP yet; NULL without memory. */
static struct net *net_alloc(struct vm *vm, const char *spec, const uint8_t mac[6])
{
	struct net *n = calloc(1, sizeof(*n));

	if (!n)
		return NULL;
	n->tap.fd = -1;
	n->stop_fd = -1;
	pthread_mutex_init(&n->ctl, NULL);
	n->vm = vm;
	n->spec = strdup(spec);
	n->elem = malloc(sizeof(*n->elem));
	n->held = calloc(NET_RX_CHAINS, sizeof(*n->held));
	n->rx_iov = calloc(NET_RX_SEGS, sizeof(*n->rx_iov));
	n->rx_gpa = calloc(NET_RX_SEGS, sizeof(*n->rx_gpa));
	n->iov = calloc(NET_IOV_MAX, sizeof(*n->iov));
	n->bounce = malloc(NET_HDR_LEN + NET_FRAME_MAX);
	n->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!n->spec || !n->elem || !n->held || !n->rx_iov || !n->rx_gpa || !n->iov ||
	    !n->bounce || n->stop_fd < 0) {
		net_free(n);
		return NULL;
	}
	memcpy(n->mac, mac, 6);
	n->status = VIRTIO_NET_S_LINK_UP;
	n->features = NET_FEATURES;
	n->vdev.vm = vm;
	n->vdev.ops = &net_vdev_ops;
	n->vdev.priv = n;
	return n;
}

/*
 * For tests/unit/test_net.c: a NIC on any packet fd (one end of a
 * SOCK_SEQPACKET socketpair stands in for the TAP; the NIC owns it), with
 * no VM transport: the test sets up the queues itself.  NULL on failure.
 */
struct virtio_dev *virtio_net_open_fd(struct vm *vm, int fd, const uint8_t mac[6]);
void virtio_net_close(struct virtio_dev *vdev);

struct virtio_dev *virtio_net_open_fd(struct vm *vm, int fd, const uint8_t mac[6])
{
	struct net *n = net_alloc(vm, "test", mac);

	if (!n)
		return NULL;
	n->tap.fd = fd;
	n->tap.mtu = 1500;
	return &n->vdev;
}

/* Stop the NIC's thread and free it (tests; godwit keeps NICs until exit). */
void virtio_net_close(struct virtio_dev *vdev)
{
	if (!vdev)
		return;
	net_reset(vdev);
	net_free(vdev->priv);
}

/* Which --net this is (0 for the first), for the default MAC. */
static unsigned int net_index(struct vm *vm, const struct vm_device_arg *a)
{
	unsigned int idx = 0;

	for (unsigned int i = 0; i < vm->cfg.nr_devices; i++) {
		if (vm->cfg.devices[i].kind != VM_DEV_NET)
			continue;
		if (&vm->cfg.devices[i] == a)
			return idx;
		idx++;
	}
	return idx;                     /* not from the command line: after them */
}

/*
 * virtio_net_add - `--net tap=NAME[,mac=MAC]`: a virtio-net NIC in PCI slot
 * `slot` on TAP NAME (created if absent, see tap_open).  Without mac= the
 * MAC is derived from the VM's UUID and the option's position among the
 * --net options (tap_mac_default).
 * Returns 0, or -errno after logging why (bad spec: -EINVAL; the TAP
 * cannot be opened: its errno, e.g. -EBUSY, -EPERM, -EINVAL).
 */
int virtio_net_add(struct vm *vm, unsigned int slot, const struct vm_device_arg *a)
{
	const struct tap_spec ts = a->net;
	const char *spec = a->spec;
	struct net *n;
	char err[256], macs[18];
	uint8_t mac[6];
	int ret;

	if (ts.has_mac)
		memcpy(mac, ts.mac, 6);
	else
		tap_mac_default(vm->cfg.uuid, net_index(vm, a), mac);
	n = net_alloc(vm, spec, mac);
	if (!n)
		return -ENOMEM;
	n->mac_given = ts.has_mac;
	ret = tap_open(&n->tap, ts.tap, err, sizeof(err));
	if (ret) {
		log_warnx("--net %s: %s", spec, err);
		goto err;
	}
	ret = virtio_pci_add(vm, slot, &n->vdev);
	if (ret)
		goto err;
	tap_mac_format(n->mac, macs);
	log_debug("virtio-net %s: MAC %s, TAP %s, slot %u", n->tap.name, macs,
		  n->tap.created ? "created" : "existing", slot);
	return 0;
err:
	net_free(n);
	return ret;
}

/*
 * virtio_net_announce - see tap.h: a gratuitous RARP from the NIC's MAC
 * (the one the guest has, loaded from the source after a migration) out of
 * its TAP.  Returns 0, -EINVAL if vdev is not a virtio-net device, or the
 * TAP's -errno.
 */
int virtio_net_announce(struct virtio_dev *vdev)
{
	struct net *n;

	if (!vdev || vdev->ops != &net_vdev_ops)
		return -EINVAL;
	n = vdev->priv;
	return tap_announce(&n->tap, n->mac);
}
