/*
 * virtio.h - the test guest's PCI bus-0 scan (configuration mechanism #1)
 * and its polled virtio 1.x driver core: the modern virtio-pci transport
 * (vendor capabilities, status handshake, feature negotiation) and split
 * virtqueues whose used rings are polled, never interrupt-driven.  The
 * drivers built on it (disk.c, rng.c, net.c) run in ring 3 like
 * everything else; so does all of this.
 */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H

#include "guest.h"

/* ---- PCI ---- */

#define PCI_MAX_FNS	32

struct pci_fn {
	u8 dev, fn;
	u16 vendor, device;
	u16 subsys_id;
	u8 hdr_type;
	bool claimed;		/* a driver took it */
	u64 bar_addr[6];	/* pci_bar_map()'s answers, 0 = not yet */
};

extern struct pci_fn pci_fns[PCI_MAX_FNS];
extern unsigned pci_nfns;

/* Bus 0, every function; once, on the BSP, before any other PCI use. */
void pci_scan(void);
u32 pci_read32(const struct pci_fn *f, u8 reg);
u16 pci_read16(const struct pci_fn *f, u8 reg);
u8 pci_read8(const struct pci_fn *f, u8 reg);
void pci_write32(const struct pci_fn *f, u8 reg, u32 v);
void pci_write16(const struct pci_fn *f, u8 reg, u16 v);
/*
 * The address of memory BAR `bar`, usable from ring 3: assigned from the
 * 32-bit window (0xc0000000-0xfbffffff) if the firmware or VMM left it at
 * 0, mapped uncached if it lies above 4 GiB.  0 if the BAR is not a memory
 * BAR or cannot be placed.
 */
u64 pci_bar_map(struct pci_fn *f, unsigned bar);
/* Place every unassigned memory BAR, then memory space, bus master, INTx off. */
void pci_enable(struct pci_fn *f);

/* ---- virtio ---- */

#define VIRTIO_ID_NET		1
#define VIRTIO_ID_BLK		2
#define VIRTIO_ID_RNG		4

#define VIRTIO_F_VERSION_1	32

#define VIRTIO_S_ACKNOWLEDGE	1
#define VIRTIO_S_DRIVER		2
#define VIRTIO_S_DRIVER_OK	4
#define VIRTIO_S_FEATURES_OK	8
#define VIRTIO_S_NEEDS_RESET	64
#define VIRTIO_S_FAILED		128

#define VIRTQ_DESC_F_NEXT	1
#define VIRTQ_DESC_F_WRITE	2

/* A device that has not answered in this long is reported. */
#define VIRTIO_TIMEOUT_MS	5000

struct vring_desc {
	u64 addr;
	u32 len;
	u16 flags, next;
};

struct vring_used_elem {
	u32 id, len;
};

struct vring_avail {
	u16 flags, idx;
	u16 ring[];
};

struct vring_used {
	u16 flags, idx;
	struct vring_used_elem ring[];
};

/* A split virtqueue as the driver sees it. */
struct vq {
	struct virtio_dev *vdev;
	u16 index, size;
	struct vring_desc *desc;
	volatile struct vring_avail *avail;
	volatile struct vring_used *used;
	u16 avail_idx;		/* next avail slot (published by vq_kick) */
	u16 last_used;		/* next used slot to read */
	u64 notify;		/* notify address */
	u64 kicks;
};

struct virtio_dev {
	const char *name;	/* "blk", for messages */
	struct pci_fn *pci;
	u64 common, isr, devcfg, notify_base;
	u32 notify_mul;
	u64 features;		/* negotiated */
};

/*
 * The first unclaimed virtio device of type `id` (modern 0x1040+id, or
 * transitional 0x1000-0x103f with that subsystem id), with its transport
 * capabilities found and its BARs mapped.  false if there is none (nothing
 * printed) or it is unusable (a "virtio: <name> ..." line says why).
 */
bool virtio_find(struct virtio_dev *vd, u16 id, const char *name);
/*
 * Reset, ACKNOWLEDGE, DRIVER, negotiate VERSION_1 | (offered & wanted),
 * FEATURES_OK (checked).  Reports and returns false on failure.
 */
bool virtio_start(struct virtio_dev *vd, u64 wanted);
/* Queue `index` with at most max_size entries (a power of 2), rings from
 * boot_alloc, no MSI-X vector, interrupts suppressed.  false if absent. */
bool virtio_queue(struct virtio_dev *vd, struct vq *q, u16 index, u16 max_size);
/* DRIVER_OK. */
void virtio_ready(struct virtio_dev *vd);
u8 virtio_status(const struct virtio_dev *vd);
static inline bool virtio_has(const struct virtio_dev *vd, unsigned bit)
{
	return (vd->features >> bit) & 1;
}
/* Device-specific configuration, read consistently (config_generation). */
void virtio_cfg_read(const struct virtio_dev *vd, u32 off, void *dst, u32 len);

/* Put chain `head` in the avail ring (visible to the device at vq_kick). */
static inline void vq_add(struct vq *q, u16 head)
{
	q->avail->ring[q->avail_idx & (q->size - 1)] = head;
	q->avail_idx++;
}
/* Publish the added chains and notify the device unless it said not to. */
void vq_kick(struct vq *q);
/* The next used element, if any. */
static inline bool vq_used(struct vq *q, u32 *id, u32 *len)
{
	volatile struct vring_used_elem *e;

	if (q->used->idx == q->last_used)
		return false;
	barrier();		/* x86 keeps loads in order; the compiler must too */
	e = &q->used->ring[q->last_used & (q->size - 1)];
	*id = e->id;
	*len = e->len;
	q->last_used++;
	return true;
}
/* Poll for the next used element for up to timeout_ms; false on timeout. */
bool vq_wait(struct vq *q, u32 *id, u32 *len, u64 timeout_ms);
/* "virtio: <name> queue <q> did not answer in <ms> ms (status=0x..)". */
void vq_report_timeout(struct vq *q, u64 ms, unsigned outstanding);

/* ---- the drivers and their workloads (CPU-agnostic: setup on the BSP,
 * poll and report on whichever CPU runs the device workloads) ---- */

enum poll_result {
	POLL_IDLE,		/* nothing outstanding: the caller may sleep */
	POLL_WAIT,		/* waiting for the device: keep polling */
	POLL_PROGRESS,		/* did something */
};

bool disk_setup(void);
enum poll_result disk_poll(u64 now);
void disk_report(u64 now);

bool rng_setup(void);
enum poll_result rng_poll(u64 now);

bool net_setup(void);
enum poll_result net_poll(u64 now);
void net_report(u64 now);

/* "t=<s>.<d>" since the PVH entry. */
static inline u64 t10_since_boot(u64 now)
{
	return (now - boot_tsc) / (plat.tsc_khz * 100);
}

#endif
