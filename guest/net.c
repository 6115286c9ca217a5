/*
 * net.c - the virtio-net driver and the net workload: a responder for one
 * IPv4 address (ip=, default 198.18.0.2) that answers ARP requests for it,
 * ICMP echo requests and UDP datagrams to port 7 (echo: addresses and
 * ports swapped, payload kept, checksums recomputed).
 *
 * No offloads are negotiated, so every frame arrives whole with its
 * checksums, and the 12-byte virtio_net_hdr (VERSION_1) precedes each frame
 * in both directions.  The receive queue is kept full of 2 KiB buffers
 * (descriptor i is buffer i, requeued as soon as it is handled).  With
 * VIRTIO_NET_F_MRG_RXBUF a frame that spans several buffers (num_buffers >
 * 1; it cannot happen without GSO, with these buffers) is dropped whole.
 * Replies are built in transmit buffer i for descriptor i, taken from a
 * free list refilled from the used ring; both queues are kicked once per
 * batch.
 *
 * Counters: rx = frames received, tx = frames sent, arp/icmp/udp = replies
 * sent of each kind, udp_bytes = UDP payload bytes echoed, drops = frames
 * for us that got no answer (malformed, bad checksum, fragment, no free
 * transmit buffer).  Frames for other addresses or protocols are only
 * counted in rx.
 */
#include "virtio.h"

#define VIRTIO_NET_F_MAC	5
#define VIRTIO_NET_F_MRG_RXBUF	15

#define NET_HDR			12
#define NET_BUF			2048
#define NET_QSIZE		256

#define ETH_HLEN		14
#define ETH_P_IP		0x0800
#define ETH_P_ARP		0x0806
#define IPPROTO_ICMP		1
#define IPPROTO_UDP		17
#define UDP_ECHO_PORT		7
#define MIN_FRAME		60	/* without the FCS */

static struct virtio_dev vd;
static struct vq rxq, txq;
static u8 *rxbufs, *txbufs;
static u16 tx_free[NET_QSIZE];
static unsigned ntx_free;
static bool tx_pending;
static u8 mac[6];
static bool mrg;
static unsigned skip;			/* buffers left of a dropped multi-buffer frame */
static u64 n_rx, n_tx, n_arp, n_icmp, n_udp, udp_bytes, drops;

static const u8 bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

static u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }

static u32 csum_add(u32 sum, const u8 *p, u32 len)
{
	u32 i;

	for (i = 0; i + 1 < len; i += 2)
		sum += (u32)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (u32)p[len - 1] << 8;
	return sum;
}

static u16 csum_fold(u32 sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

/* The UDP checksum over the pseudo-header and the datagram (field included). */
static u16 udp_csum(const u8 *ip, const u8 *udp, u32 ulen)
{
	u32 sum = csum_add(0, ip + 12, 8);	/* source and destination */

	sum += IPPROTO_UDP + ulen;
	return csum_fold(csum_add(sum, udp, ulen));
}

static bool tx_reclaim(void)
{
	bool any = false;
	u32 id, len;

	while (vq_used(&txq, &id, &len)) {
		if (id < txq.size && ntx_free < txq.size)
			tx_free[ntx_free++] = (u16)id;
		else
			gprintf("net: ERROR transmit queue returned descriptor %u\n", id);
		any = true;
	}
	return any;
}

/*
 * A transmit buffer's frame area.  When all are in flight, kick and wait
 * up to TX_WAIT_MS for the device to return one; else NULL, a drop.
 */
#define TX_WAIT_MS	10
static u8 *tx_get(u16 *id)
{
	if (!ntx_free) {
		u64 deadline = gclock() + ms_to_tsc(TX_WAIT_MS);

		if (tx_pending) {
			vq_kick(&txq);
			tx_pending = false;
		}
		while (!tx_reclaim() && (int64_t)(gclock() - deadline) < 0)
			cpu_relax();
		if (!ntx_free) {
			drops++;
			return NULL;
		}
	}
	*id = tx_free[--ntx_free];
	return txbufs + (u64)*id * NET_BUF + NET_HDR;
}

static void tx_send(u16 id, u32 flen)
{
	u8 *b = txbufs + (u64)id * NET_BUF;

	if (flen < MIN_FRAME) {
		memset(b + NET_HDR + flen, 0, MIN_FRAME - flen);
		flen = MIN_FRAME;
	}
	memset(b, 0, NET_HDR);
	txq.desc[id] = (struct vring_desc){ (u64)b, NET_HDR + flen, 0, 0 };
	vq_add(&txq, id);
	tx_pending = true;
	n_tx++;
}

static void handle_arp(const u8 *f, u32 len)
{
	const u8 *a = f + ETH_HLEN;
	u8 *r;
	u16 id;

	if (len < ETH_HLEN + 28 || get16(a) != 1 || get16(a + 2) != ETH_P_IP || a[4] != 6 ||
	    a[5] != 4 || get16(a + 6) != 1 || memcmp(a + 24, cfg.ip, 4))
		return;			/* not a request for us */
	if (!(r = tx_get(&id)))
		return;
	memcpy(r, f + 6, 6);		/* to the asker */
	memcpy(r + 6, mac, 6);
	put16(r + 12, ETH_P_ARP);
	put16(r + 14, 1);
	put16(r + 16, ETH_P_IP);
	r[18] = 6;
	r[19] = 4;
	put16(r + 20, 2);		/* reply */
	memcpy(r + 22, mac, 6);
	memcpy(r + 28, cfg.ip, 4);
	memcpy(r + 32, a + 8, 10);	/* the asker's hardware and protocol addresses */
	tx_send(id, ETH_HLEN + 28);
	n_arp++;
}

static void handle_ip(const u8 *f, u32 len)
{
	const u8 *ip = f + ETH_HLEN;
	u32 ihl, tot, plen;
	u8 *r, *rip, *rp;
	u16 id;

	if (len < ETH_HLEN + 20 || (ip[0] >> 4) != 4 || memcmp(ip + 16, cfg.ip, 4) ||
	    memcmp(f, mac, 6))
		return;			/* not IPv4 to us */
	ihl = (ip[0] & 15) * 4u;
	tot = get16(ip + 2);
	if (ihl < 20 || tot < ihl || ETH_HLEN + tot > len || csum_fold(csum_add(0, ip, ihl)) ||
	    (get16(ip + 6) & 0x3fff)) {
		drops++;		/* malformed, bad checksum, or a fragment */
		return;
	}
	plen = tot - ihl;
	if (ip[9] == IPPROTO_ICMP) {
		const u8 *ic = ip + ihl;

		if (plen < 8 || ic[0] != 8 || ic[1] != 0)
			return;		/* only echo requests */
		if (csum_fold(csum_add(0, ic, plen))) {
			drops++;
			return;
		}
	} else if (ip[9] == IPPROTO_UDP) {
		const u8 *u = ip + ihl;
		u32 ulen = plen >= 8 ? get16(u + 4) : 0;

		if (ulen < 8 || ulen > plen || (get16(u + 6) && udp_csum(ip, u, ulen))) {
			drops++;
			return;
		}
		if (get16(u + 2) != UDP_ECHO_PORT)
			return;
	} else {
		return;
	}

	if (!(r = tx_get(&id)))
		return;
	memcpy(r, f, ETH_HLEN + tot);
	memcpy(r, f + 6, 6);
	memcpy(r + 6, mac, 6);
	rip = r + ETH_HLEN;
	memcpy(rip + 12, ip + 16, 4);
	memcpy(rip + 16, ip + 12, 4);
	rip[8] = 64;			/* TTL */
	put16(rip + 10, 0);
	put16(rip + 10, csum_fold(csum_add(0, rip, ihl)));
	rp = rip + ihl;
	if (ip[9] == IPPROTO_ICMP) {
		rp[0] = 0;		/* echo reply */
		put16(rp + 2, 0);
		put16(rp + 2, csum_fold(csum_add(0, rp, plen)));
		n_icmp++;
	} else {
		u32 ulen = get16(rp + 4);
		u16 c;

		put16(rp, get16(ip + ihl + 2));
		put16(rp + 2, get16(ip + ihl));
		put16(rp + 6, 0);
		c = udp_csum(rip, rp, ulen);
		put16(rp + 6, c ? c : 0xffff);
		n_udp++;
		udp_bytes += ulen - 8;
	}
	tx_send(id, ETH_HLEN + tot);
}

static void handle_frame(const u8 *f, u32 len)
{
	if (len < ETH_HLEN) {
		drops++;
		return;
	}
	if (memcmp(f, mac, 6) && memcmp(f, bcast, 6))
		return;
	switch (get16(f + 12)) {
	case ETH_P_ARP:
		handle_arp(f, len);
		break;
	case ETH_P_IP:
		handle_ip(f, len);
		break;
	}
}

bool net_setup(void)
{
	if (!virtio_find(&vd, VIRTIO_ID_NET, "net")) {
		gprintf("net: no usable virtio-net device\n");
		return false;
	}
	if (!virtio_start(&vd, 1ULL << VIRTIO_NET_F_MAC | 1ULL << VIRTIO_NET_F_MRG_RXBUF))
		return false;
	if (!virtio_queue(&vd, &rxq, 0, NET_QSIZE) || !virtio_queue(&vd, &txq, 1, NET_QSIZE)) {
		gprintf("net: virtio-net lacks its receive or transmit queue\n");
		return false;
	}
	mrg = virtio_has(&vd, VIRTIO_NET_F_MRG_RXBUF);
	if (virtio_has(&vd, VIRTIO_NET_F_MAC) && vd.devcfg) {
		virtio_cfg_read(&vd, 0, mac, 6);
	} else {
		static const u8 dflt[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x01 };

		memcpy(mac, dflt, 6);
	}
	rxbufs = (u8 *)boot_alloc((u64)rxq.size * NET_BUF);
	txbufs = (u8 *)boot_alloc((u64)txq.size * NET_BUF);
	for (u16 i = 0; i < rxq.size; i++) {
		rxq.desc[i] = (struct vring_desc){ (u64)(rxbufs + (u64)i * NET_BUF), NET_BUF,
						   VIRTQ_DESC_F_WRITE, 0 };
		vq_add(&rxq, i);
	}
	for (u16 i = 0; i < txq.size; i++)
		tx_free[ntx_free++] = i;
	virtio_ready(&vd);
	vq_kick(&rxq);
	gprintf("net: found mac=%02x:%02x:%02x:%02x:%02x:%02x ip=%u.%u.%u.%u mrg_rxbuf=%u "
		"rxq=%u txq=%u\n", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5],
		cfg.ip[0], cfg.ip[1], cfg.ip[2], cfg.ip[3], mrg, rxq.size, txq.size);
	return true;
}

enum poll_result net_poll(u64 now)
{
	bool progress = false, refill = false;
	u32 id, len;

	(void)now;
	progress = tx_reclaim();
	while (vq_used(&rxq, &id, &len)) {
		const u8 *b;

		progress = true;
		/* In a long burst, hand buffers back and replies out as we go. */
		if (refill && !(rxq.last_used & 31)) {
			vq_kick(&rxq);
			refill = false;
			if (tx_pending) {
				vq_kick(&txq);
				tx_pending = false;
			}
		}
		if (id >= rxq.size) {
			gprintf("net: ERROR receive queue returned descriptor %u\n", id);
			continue;
		}
		b = rxbufs + (u64)id * NET_BUF;
		if (skip) {
			skip--;
		} else {
			n_rx++;
			if (len < NET_HDR || len > NET_BUF) {
				drops++;
			} else if (mrg && b[10] + (b[11] << 8) > 1) {
				skip = b[10] + (b[11] << 8) - 1u;
				drops++;
			} else {
				handle_frame(b + NET_HDR, len - NET_HDR);
			}
		}
		vq_add(&rxq, (u16)id);
		refill = true;
	}
	if (tx_pending) {
		vq_kick(&txq);
		tx_pending = false;
	}
	if (refill)
		vq_kick(&rxq);
	return progress ? POLL_PROGRESS : POLL_IDLE;
}

void net_report(u64 now)
{
	u64 t10 = t10_since_boot(now);

	gprintf("net: t=%lu.%lu rx=%lu tx=%lu arp=%lu icmp=%lu udp=%lu udp_bytes=%lu drops=%lu\n",
		t10 / 10, t10 % 10, n_rx, n_tx, n_arp, n_icmp, n_udp, udp_bytes, drops);
}
