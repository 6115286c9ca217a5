/*
 * virtio.c - the test guest's virtio 1.x core: finding a modern virtio-pci
 * device on bus 0 and its vendor capabilities (common, notify, ISR and
 * device configuration, each in a memory BAR), the initialisation of
 * virtio 1.2 section 3.1, and split virtqueues driven by polling.
 *
 * No interrupts: MSI-X stays disabled, every vector is NO_VECTOR and the
 * avail ring asks for none; the drivers poll the used ring in memory
 * (native speed in ring 3) and only touch MMIO to kick, at most once per
 * batch and not at all while the device says it is already looking
 * (VIRTQ_USED_F_NO_NOTIFY).
 */
#include "virtio.h"

#define PCI_STATUS		0x06
#define PCI_STATUS_CAPS		(1u << 4)
#define PCI_CAP_PTR		0x34
#define PCI_CAP_VENDOR		0x09

#define VIRTIO_PCI_CAP_COMMON	1
#define VIRTIO_PCI_CAP_NOTIFY	2
#define VIRTIO_PCI_CAP_ISR	3
#define VIRTIO_PCI_CAP_DEVICE	4

/* virtio_pci_common_cfg */
#define CC_DFSELECT		0x00
#define CC_DF			0x04
#define CC_GFSELECT		0x08
#define CC_GF			0x0c
#define CC_MSIX_CONFIG		0x10
#define CC_NUM_QUEUES		0x12
#define CC_STATUS		0x14
#define CC_CFG_GEN		0x15
#define CC_Q_SELECT		0x16
#define CC_Q_SIZE		0x18
#define CC_Q_MSIX		0x1a
#define CC_Q_ENABLE		0x1c
#define CC_Q_NOFF		0x1e
#define CC_Q_DESC		0x20
#define CC_Q_DRIVER		0x28
#define CC_Q_DEVICE		0x30
#define CC_LEN			0x38

#define NO_VECTOR		0xffff
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY	1

static u16 virtio_type(const struct pci_fn *f)
{
	if (f->vendor != 0x1af4)
		return 0;
	if (f->device >= 0x1040 && f->device <= 0x107f)
		return (u16)(f->device - 0x1040);
	if (f->device >= 0x1000 && f->device <= 0x103f)	/* transitional */
		return f->subsys_id;
	return 0;
}

/* The capability's region, or 0 if it does not fit its BAR. */
static u64 cap_region(struct pci_fn *f, u8 c, u32 min_len)
{
	u8 bar = pci_read8(f, (u8)(c + 4));
	u32 off = pci_read32(f, (u8)(c + 8)), len = pci_read32(f, (u8)(c + 12));
	u64 base;

	if (bar > 5 || len < min_len)
		return 0;
	base = pci_bar_map(f, bar);
	return base ? base + off : 0;
}

bool virtio_find(struct virtio_dev *vd, u16 id, const char *name)
{
	struct pci_fn *f = NULL;
	unsigned ncaps = 0;
	u8 c;

	for (unsigned i = 0; i < pci_nfns && !f; i++)
		if (!pci_fns[i].claimed && virtio_type(&pci_fns[i]) == id)
			f = &pci_fns[i];
	if (!f)
		return false;
	f->claimed = true;
	*vd = (struct virtio_dev){ .name = name, .pci = f };

	if (pci_read16(f, PCI_STATUS) & PCI_STATUS_CAPS)
		c = pci_read8(f, PCI_CAP_PTR) & 0xfc;
	else
		c = 0;
	/* The first capability of each type that the guest can use wins. */
	for (; c && ncaps < 48; ncaps++) {
		u32 hdr = pci_read32(f, c);
		u8 next = (u8)(hdr >> 8) & 0xfc, type = (u8)(hdr >> 24);

		if ((hdr & 0xff) == PCI_CAP_VENDOR) {
			if (type == VIRTIO_PCI_CAP_COMMON && !vd->common)
				vd->common = cap_region(f, c, CC_LEN);
			else if (type == VIRTIO_PCI_CAP_NOTIFY && !vd->notify_base) {
				vd->notify_base = cap_region(f, c, 2);
				vd->notify_mul = pci_read32(f, (u8)(c + 16));
			} else if (type == VIRTIO_PCI_CAP_ISR && !vd->isr)
				vd->isr = cap_region(f, c, 1);
			else if (type == VIRTIO_PCI_CAP_DEVICE && !vd->devcfg)
				vd->devcfg = cap_region(f, c, 1);
		}
		c = next;
	}
	if (!vd->common || !vd->notify_base) {
		gprintf("virtio: %s at %02x.%x has no usable modern interface (common=0x%lx notify=0x%lx)\n",
			name, f->dev, f->fn, vd->common, vd->notify_base);
		return false;
	}
	pci_enable(f);
	return true;
}

u8 virtio_status(const struct virtio_dev *vd)
{
	return mmio_read8(vd->common + CC_STATUS);
}

static void status_set(struct virtio_dev *vd, u8 bits)
{
	mmio_write8(vd->common + CC_STATUS, (u8)(virtio_status(vd) | bits));
}

bool virtio_start(struct virtio_dev *vd, u64 wanted)
{
	u64 deadline = gclock() + ms_to_tsc(1000), offered;
	u8 st;

	mmio_write8(vd->common + CC_STATUS, 0);
	while ((st = virtio_status(vd)) != 0) {
		if ((int64_t)(gclock() - deadline) >= 0) {
			gprintf("virtio: %s did not reset (status=0x%x)\n", vd->name, st);
			return false;
		}
		cpu_relax();
	}
	status_set(vd, VIRTIO_S_ACKNOWLEDGE);
	status_set(vd, VIRTIO_S_DRIVER);
	mmio_write32(vd->common + CC_DFSELECT, 0);
	offered = mmio_read32(vd->common + CC_DF);
	mmio_write32(vd->common + CC_DFSELECT, 1);
	offered |= (u64)mmio_read32(vd->common + CC_DF) << 32;
	if (!((offered >> VIRTIO_F_VERSION_1) & 1)) {
		gprintf("virtio: %s offers no VERSION_1 (features=0x%lx)\n", vd->name, offered);
		status_set(vd, VIRTIO_S_FAILED);
		return false;
	}
	vd->features = offered & (wanted | 1ULL << VIRTIO_F_VERSION_1);
	mmio_write32(vd->common + CC_GFSELECT, 0);
	mmio_write32(vd->common + CC_GF, (u32)vd->features);
	mmio_write32(vd->common + CC_GFSELECT, 1);
	mmio_write32(vd->common + CC_GF, (u32)(vd->features >> 32));
	status_set(vd, VIRTIO_S_FEATURES_OK);
	st = virtio_status(vd);
	if (!(st & VIRTIO_S_FEATURES_OK)) {
		gprintf("virtio: %s refused features 0x%lx (status=0x%x)\n", vd->name, vd->features,
			st);
		status_set(vd, VIRTIO_S_FAILED);
		return false;
	}
	mmio_write16(vd->common + CC_MSIX_CONFIG, NO_VECTOR);
	return true;
}

bool virtio_queue(struct virtio_dev *vd, struct vq *q, u16 index, u16 max_size)
{
	u64 c = vd->common, mem, avail_off, used_off;
	u16 dev_max, n = 1;

	if (index >= mmio_read16(c + CC_NUM_QUEUES))
		return false;
	mmio_write16(c + CC_Q_SELECT, index);
	dev_max = mmio_read16(c + CC_Q_SIZE);
	if (!dev_max)
		return false;
	while ((u32)n * 2 <= MIN(dev_max, max_size))
		n *= 2;

	avail_off = 16ULL * n;
	used_off = ALIGN_UP(avail_off + 6 + 2ULL * n, 4);
	mem = boot_alloc(used_off + 6 + 8ULL * n);
	*q = (struct vq){
		.vdev = vd, .index = index, .size = n,
		.desc = (struct vring_desc *)mem,
		.avail = (volatile struct vring_avail *)(mem + avail_off),
		.used = (volatile struct vring_used *)(mem + used_off),
	};
	q->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;

	mmio_write16(c + CC_Q_SIZE, n);
	mmio_write16(c + CC_Q_MSIX, NO_VECTOR);
	mmio_write32(c + CC_Q_DESC, (u32)mem);
	mmio_write32(c + CC_Q_DESC + 4, (u32)(mem >> 32));
	mmio_write32(c + CC_Q_DRIVER, (u32)(mem + avail_off));
	mmio_write32(c + CC_Q_DRIVER + 4, (u32)((mem + avail_off) >> 32));
	mmio_write32(c + CC_Q_DEVICE, (u32)(mem + used_off));
	mmio_write32(c + CC_Q_DEVICE + 4, (u32)((mem + used_off) >> 32));
	q->notify = vd->notify_base + (u64)mmio_read16(c + CC_Q_NOFF) * vd->notify_mul;
	mmio_write16(c + CC_Q_ENABLE, 1);
	return true;
}

void virtio_ready(struct virtio_dev *vd)
{
	status_set(vd, VIRTIO_S_DRIVER_OK);
}

void virtio_cfg_read(const struct virtio_dev *vd, u32 off, void *dst, u32 len)
{
	u64 a = vd->devcfg + off;
	u8 gen;

	do {
		gen = mmio_read8(vd->common + CC_CFG_GEN);
		if (len == 8) {
			u32 lo = mmio_read32(a), hi = mmio_read32(a + 4);
			u64 v = (u64)hi << 32 | lo;

			memcpy(dst, &v, 8);
		} else if (len == 4) {
			u32 v = mmio_read32(a);

			memcpy(dst, &v, 4);
		} else if (len == 2) {
			u16 v = mmio_read16(a);

			memcpy(dst, &v, 2);
		} else {
			for (u32 i = 0; i < len; i++)
				((u8 *)dst)[i] = mmio_read8(a + i);
		}
	} while (mmio_read8(vd->common + CC_CFG_GEN) != gen);
}

void vq_kick(struct vq *q)
{
	barrier();
	q->avail->idx = q->avail_idx;
	/* The device may set NO_NOTIFY after looking at idx: store, then load. */
	mb();
	if (!(q->used->flags & VIRTQ_USED_F_NO_NOTIFY)) {
		mmio_write16(q->notify, q->index);
		q->kicks++;
	}
}

bool vq_wait(struct vq *q, u32 *id, u32 *len, u64 timeout_ms)
{
	u64 deadline = gclock() + ms_to_tsc(timeout_ms);

	while (!vq_used(q, id, len)) {
		if ((int64_t)(gclock() - deadline) >= 0)
			return false;
		cpu_relax();
	}
	return true;
}

void vq_report_timeout(struct vq *q, u64 ms, unsigned outstanding)
{
	gprintf("virtio: %s queue %u did not answer in %lu ms (outstanding=%u avail=%u used=%u "
		"status=0x%x)\n", q->vdev->name, q->index, ms, outstanding, q->avail_idx,
		q->used->idx, virtio_status(q->vdev));
}
