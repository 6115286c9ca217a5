/*
 * pci.c - the modern virtio-pci transport (virtio 1.2, 4.1): a PCI function
 * 1af4:(1040 + device id), revision 1, with one 64-bit memory BAR holding
 * every register block, the vendor capabilities that point into it, the
 * PCI configuration access capability, and MSI-X (nr_queues + 1 vectors).
 * It also registers the device with the VM's registry and saves/loads the
 * transport state.
 *
 * BAR 0 (16 KiB):
 *   0x0000  common configuration (0x38 bytes)
 *   0x1000  ISR status (read clears, lowers INTx)
 *   0x2000  device-specific configuration (ops->config_size bytes)
 *   0x3000  notifications: queue q at 0x3000 + 4 q (notify_off_multiplier 4)
 *   0x3800  MSI-X table, 0x3c00 MSI-X PBA (emulated by the PCI bus)
 *
 * Notifications: each queue's kick_fd is an eventfd registered with
 * KVM_IOEVENTFD (2-byte writes, no datamatch) at the queue's own notify
 * address, re-registered when the guest moves the BAR; a notify write that
 * arrives as an MMIO exit anyway (another width) is forwarded to the same
 * eventfd, so the device's thread sees one kind of kick.
 *
 * Locks: register accesses run on vCPU threads.  A device-status write
 * takes vp->status_lock (serialising resets and activations) and then
 * vdev->lock for the fields; ops->reset and ops->activate are called with
 * status_lock only, because a device's reset joins threads that may take
 * vdev->lock.  Every other register access takes vdev->lock.  The device's
 * threads raise interrupts through virtio_pci_irq(), which takes no
 * transport lock (MSI-X has its own; ISR is atomic).
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "godwit/dev.h"
#include "godwit/devices.h"
#include "godwit/le.h"
#include "godwit/log.h"
#include "godwit/tap.h"
#include "godwit/virtio.h"
#include "godwit/vm.h"

#define VIRTIO_PCI_VENDOR        0x1af4
#define VIRTIO_PCI_DEVICE_BASE   0x1040
#define VIRTIO_PCI_SUBSYS        0x1100

#define VPCI_CAP_COMMON  1
#define VPCI_CAP_NOTIFY  2
#define VPCI_CAP_ISR     3
#define VPCI_CAP_DEVICE  4
#define VPCI_CAP_PCI_CFG 5

#define VPCI_BAR          0
#define VPCI_BAR_SIZE     0x4000
#define VPCI_COMMON_OFF   0x0000
#define VPCI_COMMON_LEN   0x38
#define VPCI_ISR_OFF      0x1000
#define VPCI_ISR_LEN      4
#define VPCI_DEVICE_OFF   0x2000
#define VPCI_DEVICE_MAX   0x1000
#define VPCI_NOTIFY_OFF   0x3000
#define VPCI_NOTIFY_MULT  4
#define VPCI_MSIX_TABLE   0x3800
#define VPCI_MSIX_PBA     0x3c00

/* Common configuration register offsets. */
#define CC_DF_SELECT   0x00
#define CC_DF          0x04
#define CC_GF_SELECT   0x08
#define CC_GF          0x0c
#define CC_MSIX_CONFIG 0x10
#define CC_NUM_QUEUES  0x12
#define CC_STATUS      0x14
#define CC_CFG_GEN     0x15
#define CC_Q_SELECT    0x16
#define CC_Q_SIZE      0x18
#define CC_Q_MSIX      0x1a
#define CC_Q_ENABLE    0x1c
#define CC_Q_NOFF      0x1e
#define CC_Q_DESC      0x20
#define CC_Q_DRIVER    0x28
#define CC_Q_DEVICE    0x30

struct virtio_pci {
	struct pci_dev pdev;
	struct virtio_dev *vdev;
	struct vm *vm;
	unsigned int slot;
	unsigned int nvec;               /* MSI-X vectors: nr_queues + 1 */
	pthread_mutex_t status_lock;     /* serialises status transitions */
	bool active;                     /* ops->activate succeeded; no reset since */
	bool start_pending;              /* loaded with DRIVER_OK: activate at resume */
	uint8_t pcicfg_cap;              /* offset of the PCI cfg access capability */
	struct dev dev;                  /* registry entry */
	struct dev_ops dev_ops;          /* stream id = ops->name */
};


/* ---- interrupts -------------------------------------------------------------------- */

/* virtio_pci_irq - see virtio.h. */
void virtio_pci_irq(struct virtio_dev *vdev, uint16_t vector, uint8_t isr)
{
	struct virtio_pci *vp = vdev->pci;

	if (!vp)
		return;
	/* The config bit is set even with MSI-X (virtio 1.2, 4.1.4.5.1). */
	if (isr & VIRTIO_ISR_CONFIG)
		__atomic_fetch_or(&vdev->isr, VIRTIO_ISR_CONFIG, __ATOMIC_SEQ_CST);
	/* No usable vector with MSI-X on: no interrupt (the driver asked for none). */
	pci_irq_raise(&vp->pdev,
		      vector != VIRTIO_MSI_NO_VECTOR && vector < vp->nvec ? vector : UINT_MAX,
		      &vdev->isr, isr);
}

/* ---- notifications ------------------------------------------------------------------ */

static int vpci_ioeventfd(struct virtio_pci *vp, struct virtqueue *vq, uint64_t addr, bool assign)
{
	struct kvm_ioeventfd io = {
		.addr = addr,
		.len = 2,
		.fd = vq->kick_fd,
		.flags = assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN,
	};

	if (!vp->vm || vp->vm->vm_fd < 0 || vq->kick_fd < 0)
		return -ENODEV;
	if (ioctl(vp->vm->vm_fd, KVM_IOEVENTFD, &io) < 0) {
		int err = -errno;

		log_warn("%s: %s: KVM_IOEVENTFD %s %#llx", __func__, vp->vdev->ops->name,
			 assign ? "assign" : "deassign", (unsigned long long)addr);
		return err;
	}
	return 0;
}

/* The BAR moved (or decoding changed): move every queue's ioeventfd with it. */
static void vpci_bar_moved(struct pci_dev *d, unsigned int bar, uint64_t old_addr, uint64_t new_addr)
{
	struct virtio_pci *vp = d->opaque;
	struct virtio_dev *vdev = vp->vdev;

	if (bar != VPCI_BAR)
		return;
	for (unsigned int q = 0; q < vdev->ops->nr_queues; q++) {
		struct virtqueue *vq = &vdev->vqs[q];

		if (vq->kick_gpa) {
			if (vpci_ioeventfd(vp, vq, vq->kick_gpa, false))
				log_warnx("%s: queue %u: stale ioeventfd", __func__, q);
			vq->kick_gpa = 0;
		}
		if (new_addr) {
			uint64_t a = new_addr + VPCI_NOTIFY_OFF + (uint64_t)q * VPCI_NOTIFY_MULT;

			if (!vpci_ioeventfd(vp, vq, a, true))
				vq->kick_gpa = a;
		}
	}
}

static void vpci_kick(struct virtio_dev *vdev, unsigned int q)
{
	uint64_t one = 1;

	if (q < vdev->ops->nr_queues && vdev->vqs[q].kick_fd >= 0 &&
	    write(vdev->vqs[q].kick_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("%s: eventfd", __func__);
}

/* ---- reset and status --------------------------------------------------------------- */

static void vpci_reset_queue(struct virtqueue *vq)
{
	__atomic_store_n(&vq->enabled, false, __ATOMIC_RELEASE);
	vq->size = vq->max_size;
	vq->desc_gpa = vq->avail_gpa = vq->used_gpa = 0;
	vq->msix_vector = VIRTIO_MSI_NO_VECTOR;
	vq->last_avail = vq->used_idx = vq->signalled_used = 0;
	vq->signalled_valid = false;
	vq->error[0] = 0;
}

/* Under vdev->lock: the transport's part of a device reset. */
static void vpci_reset_fields(struct virtio_dev *vdev)
{
	__atomic_store_n(&vdev->status, 0, __ATOMIC_SEQ_CST);
	vdev->driver_features = 0;
	vdev->device_feature_sel = vdev->driver_feature_sel = 0;
	vdev->queue_sel = 0;
	vdev->msix_config = VIRTIO_MSI_NO_VECTOR;
	__atomic_store_n(&vdev->isr, 0, __ATOMIC_SEQ_CST);
	for (unsigned int q = 0; q < vdev->ops->nr_queues; q++)
		vpci_reset_queue(&vdev->vqs[q]);
}

/* Under status_lock: stop the device (its threads are joined), then reset the registers. */
static void vpci_reset(struct virtio_pci *vp)
{
	struct virtio_dev *vdev = vp->vdev;

	if (vdev->ops->reset)
		vdev->ops->reset(vdev);
	vp->active = false;
	vp->start_pending = false;
	pthread_mutex_lock(&vdev->lock);
	vpci_reset_fields(vdev);
	pthread_mutex_unlock(&vdev->lock);
	pci_set_intx(&vp->pdev, 0);
}

/* Under status_lock: the driver wrote device_status. */
static void vpci_set_status(struct virtio_pci *vp, uint8_t val)
{
	struct virtio_dev *vdev = vp->vdev;
	uint8_t old, new;
	bool activate = false;

	if (val == 0) {
		vpci_reset(vp);
		return;
	}
	pthread_mutex_lock(&vdev->lock);
	old = __atomic_load_n(&vdev->status, __ATOMIC_SEQ_CST);
	do {
		/* NEEDS_RESET is the device's bit: kept, whatever the driver writes. */
		new = (uint8_t)((val & ~VIRTIO_STATUS_NEEDS_RESET) | (old & VIRTIO_STATUS_NEEDS_RESET));
		if ((new & VIRTIO_STATUS_FEATURES_OK) && !(old & VIRTIO_STATUS_FEATURES_OK)) {
			uint64_t extra = vdev->driver_features & ~vdev->device_features;

			if (extra || !virtio_has_feature(vdev, VIRTIO_F_VERSION_1)) {
				log_debug("%s: %s: FEATURES_OK refused (driver features %#llx, offered %#llx)",
					  __func__, vdev->ops->name,
					  (unsigned long long)vdev->driver_features,
					  (unsigned long long)vdev->device_features);
				new &= (uint8_t)~VIRTIO_STATUS_FEATURES_OK;
			}
		}
		activate = false;
		if ((new & VIRTIO_STATUS_DRIVER_OK) && !vp->active) {
			if (!(new & VIRTIO_STATUS_FEATURES_OK)) {
				log_debug("%s: %s: DRIVER_OK without FEATURES_OK refused", __func__,
					  vdev->ops->name);
				new &= (uint8_t)~VIRTIO_STATUS_DRIVER_OK;
			} else if (!(new & VIRTIO_STATUS_NEEDS_RESET)) {
				activate = true;
			}
		}
	} while (!__atomic_compare_exchange_n(&vdev->status, &old, new, false,
					      __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
	pthread_mutex_unlock(&vdev->lock);
	if (activate) {
		int ret = vdev->ops->activate ? vdev->ops->activate(vdev) : 0;

		if (ret)
			virtio_dev_set_needs_reset(vdev, "the device could not start");
		else
			vp->active = true;
	}
}

/* ---- common configuration ----------------------------------------------------------------- */

static const struct { uint8_t off, size; } cc_fields[] = {
	{ CC_DF_SELECT, 4 }, { CC_DF, 4 }, { CC_GF_SELECT, 4 }, { CC_GF, 4 },
	{ CC_MSIX_CONFIG, 2 }, { CC_NUM_QUEUES, 2 }, { CC_STATUS, 1 }, { CC_CFG_GEN, 1 },
	{ CC_Q_SELECT, 2 }, { CC_Q_SIZE, 2 }, { CC_Q_MSIX, 2 }, { CC_Q_ENABLE, 2 },
	{ CC_Q_NOFF, 2 }, { CC_Q_DESC, 8 }, { CC_Q_DRIVER, 8 }, { CC_Q_DEVICE, 8 },
};

static struct virtqueue *vpci_selected(struct virtio_dev *vdev)
{
	return vdev->queue_sel < vdev->ops->nr_queues ? &vdev->vqs[vdev->queue_sel] : NULL;
}

/* Under vdev->lock: the register file as the driver reads it. */
static void vpci_common_image(struct virtio_dev *vdev, uint8_t img[VPCI_COMMON_LEN])
{
	struct virtqueue *vq = vpci_selected(vdev);

	memset(img, 0, VPCI_COMMON_LEN);
	le32_put(img + CC_DF_SELECT, vdev->device_feature_sel);
	if (vdev->device_feature_sel < 2)
		le32_put(img + CC_DF, (uint32_t)(vdev->device_features >> (32 * vdev->device_feature_sel)));
	le32_put(img + CC_GF_SELECT, vdev->driver_feature_sel);
	if (vdev->driver_feature_sel < 2)
		le32_put(img + CC_GF, (uint32_t)(vdev->driver_features >> (32 * vdev->driver_feature_sel)));
	le16_put(img + CC_MSIX_CONFIG, vdev->msix_config);
	le16_put(img + CC_NUM_QUEUES, (uint16_t)vdev->ops->nr_queues);
	img[CC_STATUS] = __atomic_load_n(&vdev->status, __ATOMIC_SEQ_CST);
	img[CC_CFG_GEN] = __atomic_load_n(&vdev->config_generation, __ATOMIC_SEQ_CST);
	le16_put(img + CC_Q_SELECT, vdev->queue_sel);
	if (vq) {
		le16_put(img + CC_Q_SIZE, vq->size);
		le16_put(img + CC_Q_MSIX, vq->msix_vector);
		le16_put(img + CC_Q_ENABLE, vq->enabled);
		le16_put(img + CC_Q_NOFF, vq->index);
		le64_put(img + CC_Q_DESC, vq->desc_gpa);
		le64_put(img + CC_Q_DRIVER, vq->avail_gpa);
		le64_put(img + CC_Q_DEVICE, vq->used_gpa);
	}
}

/* Under vdev->lock: apply the driver's value v to the field at off (not the status). */
static void vpci_common_field(struct virtio_pci *vp, unsigned int off, uint64_t v)
{
	struct virtio_dev *vdev = vp->vdev;
	struct virtqueue *vq = vpci_selected(vdev);
	bool features_locked = __atomic_load_n(&vdev->status, __ATOMIC_SEQ_CST) &
			       VIRTIO_STATUS_FEATURES_OK;

	switch (off) {
	case CC_DF_SELECT:
		vdev->device_feature_sel = (uint32_t)v;
		break;
	case CC_GF_SELECT:
		vdev->driver_feature_sel = (uint32_t)v;
		break;
	case CC_GF:
		/* After FEATURES_OK the features are fixed (virtio 1.2, 3.1.1). */
		if (features_locked || vdev->driver_feature_sel >= 2)
			break;
		if (vdev->driver_feature_sel == 0)
			vdev->driver_features = (vdev->driver_features & ~0xffffffffULL) | (uint32_t)v;
		else
			vdev->driver_features = (vdev->driver_features & 0xffffffffULL) | v << 32;
		break;
	case CC_MSIX_CONFIG:
		vdev->msix_config = v < vp->nvec ? (uint16_t)v : VIRTIO_MSI_NO_VECTOR;
		break;
	case CC_Q_SELECT:
		vdev->queue_sel = (uint16_t)v;
		break;
	case CC_Q_SIZE:
		/* The driver may shrink the queue to a power of 2, before enabling it. */
		if (vq && !vq->enabled && v && v <= vq->max_size && !(v & (v - 1)))
			vq->size = (uint16_t)v;
		break;
	case CC_Q_MSIX:
		if (vq)
			vq->msix_vector = v < vp->nvec ? (uint16_t)v : VIRTIO_MSI_NO_VECTOR;
		break;
	case CC_Q_ENABLE:
		/* Writing 0 is not allowed (no RING_RESET); 1 starts the ring at index 0. */
		if (vq && v == 1 && !vq->enabled) {
			vq->last_avail = vq->used_idx = vq->signalled_used = 0;
			vq->signalled_valid = false;
			vq->error[0] = 0;
			__atomic_store_n(&vq->enabled, true, __ATOMIC_RELEASE);
		}
		break;
	case CC_Q_DESC:
		if (vq && !vq->enabled)
			vq->desc_gpa = v;
		break;
	case CC_Q_DRIVER:
		if (vq && !vq->enabled)
			vq->avail_gpa = v;
		break;
	case CC_Q_DEVICE:
		if (vq && !vq->enabled)
			vq->used_gpa = v;
		break;
	default:
		break;             /* read-only */
	}
}

static void vpci_common_io(struct virtio_pci *vp, unsigned int off, uint8_t *data,
			   unsigned int len, bool is_write)
{
	struct virtio_dev *vdev = vp->vdev;
	uint8_t img[VPCI_COMMON_LEN];
	bool status_written = false;
	uint8_t status = 0;

	if (!is_write) {
		pthread_mutex_lock(&vdev->lock);
		vpci_common_image(vdev, img);
		pthread_mutex_unlock(&vdev->lock);
		memcpy(data, img + off, len);
		return;
	}
	pthread_mutex_lock(&vp->status_lock);
	pthread_mutex_lock(&vdev->lock);
	/* Merge the written bytes into the current values, then apply each field touched. */
	vpci_common_image(vdev, img);
	memcpy(img + off, data, len);
	for (unsigned int i = 0; i < ARRAY_SIZE(cc_fields); i++) {
		unsigned int fo = cc_fields[i].off, fs = cc_fields[i].size;
		uint64_t v;

		if (fo >= off + len || fo + fs <= off)
			continue;
		v = fs == 1 ? img[fo] : fs == 2 ? le16_get(img + fo) : fs == 4 ? le32_get(img + fo) :
		    le64_get(img + fo);
		if (fo == CC_STATUS) {
			status_written = true;
			status = (uint8_t)v;
		} else {
			vpci_common_field(vp, fo, v);
		}
	}
	pthread_mutex_unlock(&vdev->lock);
	if (status_written)
		vpci_set_status(vp, status);
	pthread_mutex_unlock(&vp->status_lock);
}

/* ---- the BAR ------------------------------------------------------------------------------- */

static void vpci_bar_io(void *opaque, uint64_t off, void *data, unsigned int len, bool is_write)
{
	struct virtio_pci *vp = opaque;
	struct virtio_dev *vdev = vp->vdev;
	uint8_t *p = data;

	if (off < VPCI_COMMON_OFF + VPCI_COMMON_LEN && off + len <= VPCI_COMMON_OFF + VPCI_COMMON_LEN) {
		vpci_common_io(vp, (unsigned int)(off - VPCI_COMMON_OFF), p, len, is_write);
	} else if (off >= VPCI_ISR_OFF && off < VPCI_ISR_OFF + VPCI_ISR_LEN) {
		if (is_write)
			return;
		memset(p, 0, len);
		if (off == VPCI_ISR_OFF) {
			/* Reading ISR clears it and lowers INTx (virtio 1.2, 4.1.4.5). */
			p[0] = pci_irq_status_read(&vp->pdev, &vdev->isr);
		}
	} else if (off >= VPCI_DEVICE_OFF && off - VPCI_DEVICE_OFF < vdev->ops->config_size &&
		   len <= vdev->ops->config_size - (off - VPCI_DEVICE_OFF)) {
		uint32_t coff = (uint32_t)(off - VPCI_DEVICE_OFF);

		pthread_mutex_lock(&vdev->lock);
		if (is_write) {
			if (vdev->ops->config_write)
				vdev->ops->config_write(vdev, coff, p, len);
		} else {
			memset(p, 0, len);
			if (vdev->ops->config_read)
				vdev->ops->config_read(vdev, coff, p, len);
		}
		pthread_mutex_unlock(&vdev->lock);
	} else if (off >= VPCI_NOTIFY_OFF &&
		   off < VPCI_NOTIFY_OFF + (uint64_t)VPCI_NOTIFY_MULT * vdev->ops->nr_queues) {
		if (is_write)
			vpci_kick(vdev, (unsigned int)((off - VPCI_NOTIFY_OFF) / VPCI_NOTIFY_MULT));
		else
			memset(p, 0, len);
	} else if (!is_write) {
		memset(p, 0, len);
	}
}

/* ---- config space: the PCI configuration access capability ------------------------------------ */

/*
 * Under the bus lock: an access to the capability's pci_cfg_data window
 * becomes an access of `length` bytes at `offset` of BAR `bar` (virtio 1.2,
 * 4.1.4.9).  Lengths other than 1, 2, 4, or a window outside BAR 0, do
 * nothing.
 */
static void vpci_cfg_window(struct virtio_pci *vp, bool is_write)
{
	uint8_t *cap = vp->pdev.cfg + vp->pcicfg_cap;
	uint32_t off = le32_get(cap + 8), len = le32_get(cap + 12);

	if (cap[4] != VPCI_BAR || (len != 1 && len != 2 && len != 4) || off % len ||
	    off >= VPCI_BAR_SIZE || len > VPCI_BAR_SIZE - off)
		return;
	if (is_write) {
		vpci_bar_io(vp, off, cap + 16, len, true);
	} else {
		memset(cap + 16, 0, 4);
		vpci_bar_io(vp, off, cap + 16, len, false);
	}
}

static bool vpci_touches_window(struct virtio_pci *vp, unsigned int off, unsigned int len)
{
	unsigned int w = vp->pcicfg_cap + 16u;

	return vp->pcicfg_cap && off < w + 4 && off + len > w;
}

static void vpci_cfg_write(struct pci_dev *d, unsigned int off, unsigned int len)
{
	struct virtio_pci *vp = d->opaque;

	if (vpci_touches_window(vp, off, len))
		vpci_cfg_window(vp, true);
	/*
	 * MSI-X turned on or off: INTx is asserted only without MSI-X and while
	 * ISR is set, as a load sets it.  Otherwise a line asserted before the
	 * driver enabled MSI-X stayed asserted (reading ISR lowers it only
	 * without MSI-X), and did not after a migration.
	 */
	if (d->msix.nr && off < d->msix.cap + 4u && off + len > d->msix.cap + 2u)
		pci_irq_sync(d, &vp->vdev->isr);
}

static void vpci_cfg_read(struct pci_dev *d, unsigned int off, unsigned int len)
{
	struct virtio_pci *vp = d->opaque;

	if (vpci_touches_window(vp, off, len))
		vpci_cfg_window(vp, false);
}

/* ---- set-up ------------------------------------------------------------------------------------ */

static uint8_t vpci_add_cap(struct virtio_pci *vp, uint8_t type, uint8_t caplen, uint32_t off,
			    uint32_t len)
{
	uint8_t c = pci_add_cap(&vp->pdev, PCI_CAP_ID_VNDR, caplen);

	if (!c)
		return 0;
	vp->pdev.cfg[c + 2] = caplen;
	vp->pdev.cfg[c + 3] = type;
	vp->pdev.cfg[c + 4] = VPCI_BAR;
	vp->pdev.cfg[c + 5] = 0;              /* id: one capability of each type */
	le32_put(vp->pdev.cfg + c + 8, off);
	le32_put(vp->pdev.cfg + c + 12, len);
	return c;
}

static int vpci_setup_config(struct virtio_pci *vp)
{
	struct pci_dev *d = &vp->pdev;
	const struct virtio_dev_ops *ops = vp->vdev->ops;
	uint8_t c;

	le16_put(d->cfg + 0x00, VIRTIO_PCI_VENDOR);
	le16_put(d->cfg + 0x02, (uint16_t)(VIRTIO_PCI_DEVICE_BASE + ops->device_id));
	d->cfg[0x08] = 1;                          /* revision: modern */
	d->cfg[0x09] = 0;                          /* prog-if */
	d->cfg[0x0a] = (uint8_t)ops->pci_class;    /* subclass */
	d->cfg[0x0b] = (uint8_t)(ops->pci_class >> 8);
	d->cfg[0x0e] = 0;                          /* header type 0 */
	le16_put(d->cfg + 0x2c, VIRTIO_PCI_VENDOR);
	le16_put(d->cfg + 0x2e, VIRTIO_PCI_SUBSYS);
	d->cfg[0x3d] = 1;                          /* INTA# */
	pci_set_bar(d, VPCI_BAR, VPCI_BAR_SIZE, true, vpci_bar_io, vp);

	if (!vpci_add_cap(vp, VPCI_CAP_COMMON, 16, VPCI_COMMON_OFF, VPCI_COMMON_LEN) ||
	    !vpci_add_cap(vp, VPCI_CAP_ISR, 16, VPCI_ISR_OFF, VPCI_ISR_LEN))
		return -ENOSPC;
	if (ops->config_size &&
	    !vpci_add_cap(vp, VPCI_CAP_DEVICE, 16, VPCI_DEVICE_OFF, ops->config_size))
		return -ENOSPC;
	c = vpci_add_cap(vp, VPCI_CAP_NOTIFY, 20, VPCI_NOTIFY_OFF, VPCI_NOTIFY_MULT * ops->nr_queues);
	if (!c)
		return -ENOSPC;
	le32_put(d->cfg + c + 16, VPCI_NOTIFY_MULT);
	c = vpci_add_cap(vp, VPCI_CAP_PCI_CFG, 20, 0, 0);
	if (!c)
		return -ENOSPC;
	vp->pcicfg_cap = c;
	d->wmask[c + 4] = 0xff;                    /* bar */
	memset(d->wmask + c + 8, 0xff, 12);        /* offset, length, pci_cfg_data */
	return pci_msix_init(d, vp->nvec, VPCI_BAR, VPCI_MSIX_TABLE, VPCI_MSIX_PBA);
}

static void vpci_teardown(struct virtio_pci *vp);

/* ---- registry glue ------------------------------------------------------------------------------- */

static void vpci_dev_reset(struct dev *d)
{
	struct virtio_pci *vp = d->priv;

	pthread_mutex_lock(&vp->status_lock);
	vpci_reset(vp);
	pthread_mutex_unlock(&vp->status_lock);
}

static int vpci_dev_quiesce(struct dev *d)
{
	struct virtio_pci *vp = d->priv;

	if (vp->active && vp->vdev->ops->quiesce)
		return vp->vdev->ops->quiesce(vp->vdev);
	return 0;
}

/* virtio_pci_resume - see virtio.h. */
int virtio_pci_resume(struct virtio_dev *vdev)
{
	struct virtio_pci *vp = vdev->pci;
	int ret = 0;

	if (!vp)
		return -ENODEV;
	pthread_mutex_lock(&vp->status_lock);
	if (vp->start_pending) {
		vp->start_pending = false;
		ret = vdev->ops->activate ? vdev->ops->activate(vdev) : 0;
		if (!ret)
			vp->active = true;
	} else if (vp->active && vdev->ops->resume) {
		ret = vdev->ops->resume(vdev);
	}
	pthread_mutex_unlock(&vp->status_lock);
	return ret;
}

static int vpci_dev_resume(struct dev *d)
{
	struct virtio_pci *vp = d->priv;

	return virtio_pci_resume(vp->vdev);
}

static int vpci_dev_release(struct dev *d)
{
	struct virtio_pci *vp = d->priv;

	return vp->vdev->ops->release ? vp->vdev->ops->release(vp->vdev) : 0;
}

static int vpci_dev_acquire(struct dev *d)
{
	struct virtio_pci *vp = d->priv;

	return vp->vdev->ops->acquire ? vp->vdev->ops->acquire(vp->vdev) : 0;
}

static int vpci_dev_save(struct dev *d, struct state_out *out)
{
	struct virtio_pci *vp = d->priv;

	return virtio_pci_save(vp->vdev, out);
}

static int vpci_dev_load(struct dev *d, struct state_in *in, uint16_t version)
{
	struct virtio_pci *vp = d->priv;

	return virtio_pci_load(vp->vdev, in, version);
}

static void vpci_dev_destroy(struct dev *d)
{
	struct virtio_pci *vp = d->priv;

	virtio_pci_destroy(vp->vdev);
}

/* The device's own counters (GET /metrics); the transport keeps none. */
static void vpci_dev_stats(struct dev *d, struct dev_stats *st)
{
	struct virtio_pci *vp = d->priv;

	vp->vdev->ops->stats(vp->vdev, st);
}

/*
 * virtio_pci_add - see virtio.h.  The device fills vdev->ops and
 * vdev->priv first; this initialises vdev->lock and every transport field.
 * Returns 0 or -errno (-EINVAL for ops out of range, -EBUSY for a taken
 * slot, -ENOSPC when the PCI window or config space is full).
 */
int virtio_pci_add(struct vm *vm, unsigned int slot, struct virtio_dev *vdev)
{
	const struct virtio_dev_ops *ops = vdev->ops;
	struct virtio_pci *vp;
	int ret;

	if (!ops || !ops->name || !ops->nr_queues || ops->nr_queues > VIRTIO_MAX_QUEUES ||
	    !ops->queue_max_size || ops->queue_max_size > VIRTQ_MAX_SIZE ||
	    (ops->queue_max_size & (ops->queue_max_size - 1)) || ops->config_size > VPCI_DEVICE_MAX)
		return -EINVAL;
	if (!vm->dev)
		return -ENODEV;
	vp = calloc(1, sizeof(*vp));
	if (!vp)
		return -ENOMEM;
	vp->vdev = vdev;
	vp->vm = vm;
	vp->slot = slot;
	vp->nvec = ops->nr_queues + 1;
	pthread_mutex_init(&vp->status_lock, NULL);
	pthread_mutex_init(&vdev->lock, NULL);
	vdev->vm = vm;
	vdev->pci = vp;
	vdev->device_features = (ops->features ? ops->features(vdev) : 0) |
				1ULL << VIRTIO_F_VERSION_1 | 1ULL << VIRTIO_F_INDIRECT_DESC |
				1ULL << VIRTIO_F_EVENT_IDX;
	vdev->config_generation = 0;
	for (unsigned int q = 0; q < VIRTIO_MAX_QUEUES; q++) {
		struct virtqueue *vq = &vdev->vqs[q];

		memset(vq, 0, sizeof(*vq));
		vq->vdev = vdev;
		vq->index = (uint16_t)q;
		vq->kick_fd = -1;
		if (q >= ops->nr_queues)
			continue;
		vq->max_size = ops->queue_max_size;
		vq->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (vq->kick_fd < 0) {
			ret = -errno;
			goto err;
		}
	}
	vpci_reset_fields(vdev);

	vp->pdev.opaque = vp;
	vp->pdev.cfg_write = vpci_cfg_write;
	vp->pdev.cfg_read = vpci_cfg_read;
	vp->pdev.bar_moved = vpci_bar_moved;
	ret = vpci_setup_config(vp);
	if (ret)
		goto err;
	ret = pci_add(&vm->dev->pci, slot, &vp->pdev);
	if (ret)
		goto err_msix;

	vp->dev_ops = (struct dev_ops){
		.name = ops->name,
		.version = 1,
		.min_version = 1,
		.reset = vpci_dev_reset,
		.quiesce = vpci_dev_quiesce,
		.resume = vpci_dev_resume,
		.save = vpci_dev_save,
		.load = vpci_dev_load,
		.release = vpci_dev_release,
		.acquire = vpci_dev_acquire,
		.destroy = vpci_dev_destroy,
		.disk = ops->disk,
		.stats = ops->stats ? vpci_dev_stats : NULL,
	};
	ret = dev_register(vm, &vp->dev, &vp->dev_ops, vp, slot);
	if (ret) {
		log_warnx("%s: %s: cannot register for migration", __func__, ops->name);
		vpci_teardown(vp);
		return ret;
	}
	log_debug("%s: %s at 00:%02x.0, BAR0 %#llx", __func__, ops->name, slot,
		  (unsigned long long)vp->pdev.bar[VPCI_BAR].addr);
	return 0;
err_msix:
	pci_msix_destroy(&vp->pdev);
err:
	for (unsigned int q = 0; q < VIRTIO_MAX_QUEUES; q++)
		if (vdev->vqs[q].kick_fd >= 0)
			close(vdev->vqs[q].kick_fd);
	vdev->pci = NULL;
	free(vp);
	return ret;
}

/*
 * Stop the device and undo virtio_pci_add: ioeventfds, the bus slot, MSI-X,
 * kick fds, the registry entry; frees the transport.  vdev stays.
 */
static void vpci_teardown(struct virtio_pci *vp)
{
	struct virtio_dev *vdev = vp->vdev;

	pthread_mutex_lock(&vp->status_lock);
	if (vdev->ops->reset)
		vdev->ops->reset(vdev);
	vp->active = false;
	pthread_mutex_unlock(&vp->status_lock);
	for (unsigned int q = 0; q < vdev->ops->nr_queues; q++) {
		struct virtqueue *vq = &vdev->vqs[q];

		if (vq->kick_gpa)
			(void)vpci_ioeventfd(vp, vq, vq->kick_gpa, false);
		vq->kick_gpa = 0;
	}
	if (vp->pdev.bus)
		pci_remove(vp->pdev.bus, vp->slot);
	pci_msix_destroy(&vp->pdev);
	for (unsigned int q = 0; q < VIRTIO_MAX_QUEUES; q++) {
		if (vdev->vqs[q].kick_fd >= 0)
			close(vdev->vqs[q].kick_fd);
		vdev->vqs[q].kick_fd = -1;
	}
	/* Off the registry list, so whoever walks it later does not meet freed memory. */
	for (struct dev **pp = &vp->vm->devices; *pp; pp = &(*pp)->next) {
		if (*pp == &vp->dev) {
			*pp = vp->dev.next;
			break;
		}
	}
	vdev->pci = NULL;
	pthread_mutex_destroy(&vp->status_lock);
	free(vp);
}

/*
 * virtio_pci_destroy - see virtio.h: stops the device, removes it from the
 * bus and the registry, frees the transport, then calls ops->destroy (which
 * may free vdev).  For teardown with the vCPUs stopped.
 */
void virtio_pci_destroy(struct virtio_dev *vdev)
{
	const struct virtio_dev_ops *ops = vdev->ops;

	if (!vdev->pci)
		return;
	vpci_teardown(vdev->pci);
	if (ops->destroy)
		ops->destroy(vdev);
}

/* ---- save and load ------------------------------------------------------------------------------- */

/* Transport fields.  Never renumber; retired tags stay reserved. */
enum {
	VPCI_F_STATUS = 1,          /* u8 */
	VPCI_F_DEV_FEATURES = 2,    /* u64: checked against ours on load */
	VPCI_F_DRV_FEATURES = 3,    /* u64 */
	VPCI_F_DEV_FEAT_SEL = 4,    /* u32 */
	VPCI_F_DRV_FEAT_SEL = 5,    /* u32 */
	VPCI_F_QUEUE_SEL = 6,       /* u16 */
	VPCI_F_MSIX_CONFIG = 7,     /* u16 */
	VPCI_F_CONFIG_GEN = 8,      /* u8 */
	VPCI_F_ISR = 9,             /* u8 */
	VPCI_F_QUEUE = 10,          /* nested VQ_F_* fields, one per queue */
	VPCI_F_PCI_CFG = 11,        /* 256 bytes of config space */
	VPCI_F_MSIX_TABLE = 12,     /* nvec * 16 bytes */
	VPCI_F_MSIX_PBA = 13,       /* u64 per 64 vectors, little-endian */
	VPCI_F_DEVICE = 14,         /* nested: ops->save's fields */
	VPCI_F_NR_QUEUES = 15,      /* u16: checked on load */
};
enum {
	VQ_F_INDEX = 1,             /* u16 */
	VQ_F_SIZE = 2,              /* u16 */
	VQ_F_ENABLED = 3,           /* u8 */
	VQ_F_DESC = 4,              /* u64 */
	VQ_F_AVAIL = 5,             /* u64 */
	VQ_F_USED = 6,              /* u64 */
	VQ_F_MSIX = 7,              /* u16 */
	VQ_F_LAST_AVAIL = 8,        /* u16 */
	VQ_F_USED_IDX = 9,          /* u16 */
	VQ_F_SIGNALLED = 10,        /* u16 */
	VQ_F_SIGNALLED_VALID = 11,  /* u8 */
};

/* One queue's saved state (a nested record of VQ_F_* fields). */
struct vpci_queue_image {
	uint16_t index, size, msix, last_avail, used_idx, signalled;
	uint8_t enabled, signalled_valid;
	uint64_t desc, avail, used;
};
#define IMG struct vpci_queue_image
static const struct state_desc vpci_queue_fields[] = {
	STATE_INT(VQ_F_INDEX, IMG, index, VIRTIO_MAX_QUEUES - 1, 1),
	STATE_INT(VQ_F_SIZE, IMG, size, STATE_ANY, 1),
	STATE_INT(VQ_F_ENABLED, IMG, enabled, 1, 1),
	STATE_INT(VQ_F_DESC, IMG, desc, STATE_ANY, 1),
	STATE_INT(VQ_F_AVAIL, IMG, avail, STATE_ANY, 1),
	STATE_INT(VQ_F_USED, IMG, used, STATE_ANY, 1),
	STATE_INT(VQ_F_MSIX, IMG, msix, STATE_ANY, 1),
	STATE_INT(VQ_F_LAST_AVAIL, IMG, last_avail, STATE_ANY, 1),
	STATE_INT(VQ_F_USED_IDX, IMG, used_idx, STATE_ANY, 1),
	STATE_INT(VQ_F_SIGNALLED, IMG, signalled, STATE_ANY, 1),
	STATE_INT(VQ_F_SIGNALLED_VALID, IMG, signalled_valid, 1, 1),
};
#undef IMG

/* The transport's saved state; the queues and the device's own fields are nested. */
struct vpci_image {
	uint16_t nr_queues, queue_sel, msix_config;
	uint8_t status, config_gen, isr;
	uint32_t dev_feat_sel, drv_feat_sel;
	uint64_t dev_features, drv_features;
	struct state_bytes cfg, msix_table, msix_pba, device;
	/* the queues: what save writes, what load read (seen: loaded once) */
	struct virtio_dev *vdev;
	struct vpci_queue_image qs[VIRTIO_MAX_QUEUES];
	bool seen[VIRTIO_MAX_QUEUES];
	unsigned int nq;
};

static int vpci_put_queues(struct state_out *o, uint16_t tag, const void *img)
{
	const struct vpci_image *v = img;
	struct state_out sub;

	for (unsigned int q = 0; q < v->nq && !o->err; q++) {
		state_out_init(&sub);
		state_save_fields(&sub, vpci_queue_fields, ARRAY_SIZE(vpci_queue_fields), &v->qs[q]);
		if (sub.err)
			o->err = sub.err;
		state_put_bytes(o, tag, sub.buf, (uint32_t)sub.len);
		state_out_free(&sub);
	}
	return o->err;
}

static int vpci_get_queue(void *img, const struct state_field *f)
{
	struct vpci_image *v = img;
	struct virtio_dev *vdev = v->vdev;
	struct vpci_queue_image lq = { .index = 0xffff };
	struct state_in in;
	int ret;

	state_in_init(&in, f->val, f->len);
	ret = state_load_fields(&in, vpci_queue_fields, ARRAY_SIZE(vpci_queue_fields), &lq, 1);
	if (ret)
		return ret;
	if (lq.index >= vdev->ops->nr_queues || v->seen[lq.index]) {
		log_warnx("%s: %s: queue %u is not a queue of this device, or appears twice", __func__,
			  vdev->ops->name, lq.index);
		return -EINVAL;
	}
	if (!lq.size || lq.size > vdev->vqs[lq.index].max_size || (lq.size & (lq.size - 1))) {
		log_warnx("%s: %s: queue %u: size %u not allowed here", __func__, vdev->ops->name,
			  lq.index, lq.size);
		return -EINVAL;
	}
	v->qs[lq.index] = lq;
	v->seen[lq.index] = true;
	return 0;
}

#define IMG struct vpci_image
#define MSIX_TABLE_MAX ((VIRTIO_MAX_QUEUES + 1) * PCI_MSIX_ENTRY_SIZE)
#define MSIX_PBA_MAX (8 * ((VIRTIO_MAX_QUEUES + 1 + 63) / 64))
static const struct state_desc vpci_fields[] = {
	STATE_INT(VPCI_F_NR_QUEUES, IMG, nr_queues, VIRTIO_MAX_QUEUES, 1),
	STATE_INT(VPCI_F_DEV_FEATURES, IMG, dev_features, STATE_ANY, 1),
	STATE_INT(VPCI_F_STATUS, IMG, status, STATE_ANY, 1),
	STATE_INT(VPCI_F_DRV_FEATURES, IMG, drv_features, STATE_ANY, 1),
	STATE_INT(VPCI_F_DEV_FEAT_SEL, IMG, dev_feat_sel, STATE_ANY, 1),
	STATE_INT(VPCI_F_DRV_FEAT_SEL, IMG, drv_feat_sel, STATE_ANY, 1),
	STATE_INT(VPCI_F_QUEUE_SEL, IMG, queue_sel, STATE_ANY, 1),
	STATE_INT(VPCI_F_MSIX_CONFIG, IMG, msix_config, STATE_ANY, 1),
	STATE_INT(VPCI_F_CONFIG_GEN, IMG, config_gen, STATE_ANY, 1),
	STATE_INT(VPCI_F_ISR, IMG, isr, STATE_ANY, 1),
	STATE_EACH(VPCI_F_QUEUE, vpci_put_queues, vpci_get_queue, STATE_OPT, "queue"),
	STATE_BYTES(VPCI_F_PCI_CFG, IMG, cfg, PCI_CFG_SIZE, PCI_CFG_SIZE, 1),
	/* The MSI-X sizes are this device's: checked after the load. */
	STATE_BYTES(VPCI_F_MSIX_TABLE, IMG, msix_table, 0, MSIX_TABLE_MAX, 1),
	STATE_BYTES(VPCI_F_MSIX_PBA, IMG, msix_pba, 0, MSIX_PBA_MAX, 1),
	/* Required when the device saves state (checked after the load). */
	STATE_BYTES(VPCI_F_DEVICE, IMG, device, 0, UINT32_MAX, STATE_OPT),
};
#undef IMG

/* virtio_pci_save - see virtio.h. */
int virtio_pci_save(struct virtio_dev *vdev, struct state_out *out)
{
	struct virtio_pci *vp = vdev->pci;
	struct pci_msix *m = &vp->pdev.msix;
	uint8_t cfg[PCI_CFG_SIZE], table[MSIX_TABLE_MAX], pba[MSIX_PBA_MAX];
	struct vpci_image *v;
	struct state_out dev = { 0 };
	int ret;

	if (NEVER(m->nr * PCI_MSIX_ENTRY_SIZE > sizeof(table)))
		return -EINVAL;
	v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	pthread_mutex_lock(&vdev->lock);
	v->nr_queues = (uint16_t)vdev->ops->nr_queues;
	v->dev_features = vdev->device_features;
	v->status = __atomic_load_n(&vdev->status, __ATOMIC_SEQ_CST);
	v->drv_features = vdev->driver_features;
	v->dev_feat_sel = vdev->device_feature_sel;
	v->drv_feat_sel = vdev->driver_feature_sel;
	v->queue_sel = vdev->queue_sel;
	v->msix_config = vdev->msix_config;
	v->config_gen = __atomic_load_n(&vdev->config_generation, __ATOMIC_SEQ_CST);
	v->isr = __atomic_load_n(&vdev->isr, __ATOMIC_SEQ_CST);
	v->nq = vdev->ops->nr_queues;
	for (unsigned int q = 0; q < v->nq; q++) {
		const struct virtqueue *vq = &vdev->vqs[q];

		v->qs[q] = (struct vpci_queue_image){
			.index = (uint16_t)q, .size = vq->size, .enabled = vq->enabled,
			.desc = vq->desc_gpa, .avail = vq->avail_gpa, .used = vq->used_gpa,
			.msix = vq->msix_vector, .last_avail = vq->last_avail,
			.used_idx = vq->used_idx, .signalled = vq->signalled_used,
			.signalled_valid = vq->signalled_valid,
		};
	}
	pthread_mutex_unlock(&vdev->lock);

	if (vp->pdev.bus)
		pthread_mutex_lock(&vp->pdev.bus->lock);
	memcpy(cfg, vp->pdev.cfg, sizeof(cfg));
	if (vp->pdev.bus)
		pthread_mutex_unlock(&vp->pdev.bus->lock);
	v->cfg = (struct state_bytes){ cfg, sizeof(cfg) };
	pthread_mutex_lock(&m->lock);
	memcpy(table, m->table, m->nr * PCI_MSIX_ENTRY_SIZE);
	v->msix_table = (struct state_bytes){ table, m->nr * PCI_MSIX_ENTRY_SIZE };
	for (unsigned int i = 0; i < (m->nr + 63) / 64; i++)
		le64_put(pba + 8 * i, m->pba[i]);
	v->msix_pba = (struct state_bytes){ pba, 8 * ((m->nr + 63) / 64) };
	pthread_mutex_unlock(&m->lock);

	if (vdev->ops->save) {
		state_out_init(&dev);
		ret = vdev->ops->save(vdev, &dev);
		if (!ret)
			ret = dev.err;
		if (ret)
			goto out;
		/* Written even when empty: a device that saves has the field (p never NULL). */
		v->device = (struct state_bytes){ dev.buf ? dev.buf : (const uint8_t *)"",
						  (uint32_t)dev.len };
	}
	/* No device state: v->device.p is NULL and the field is left out. */
	ret = state_save_fields(out, vpci_fields, ARRAY_SIZE(vpci_fields), v);
out:
	state_out_free(&dev);
	free(v);
	return ret;
}

/* virtio_pci_load - see virtio.h.  Nothing changes unless every field is valid. */
int virtio_pci_load(struct virtio_dev *vdev, struct state_in *in, uint16_t version)
{
	struct virtio_pci *vp = vdev->pci;
	struct pci_dev *d = &vp->pdev;
	struct pci_msix *m = &d->msix;
	struct vpci_image *v;
	unsigned int nq;
	int ret;

	v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	v->vdev = vdev;
	v->msix_config = VIRTIO_MSI_NO_VECTOR;
	ret = state_load_fields(in, vpci_fields, ARRAY_SIZE(vpci_fields), v, version);
	if (ret) {
		log_debug("%s: %s: %s", __func__, vdev->ops->name, strerror(-ret));
		goto out;
	}
	/* Every queue, the device's fields and the MSI-X sizes are this device's. */
	ret = -EBADMSG;
	if (vdev->ops->save && !v->device.p)
		goto out;
	for (unsigned int q = 0; q < vdev->ops->nr_queues; q++)
		if (!v->seen[q])
			goto out;
	if (v->msix_table.len != m->nr * PCI_MSIX_ENTRY_SIZE ||
	    v->msix_pba.len != 8 * ((m->nr + 63) / 64))
		goto out;
	ret = -EINVAL;
	if (v->nr_queues != vdev->ops->nr_queues || v->dev_features != vdev->device_features) {
		log_warnx("%s: %s: saved with %u queues and features %#llx; this device has %u and %#llx",
			  __func__, vdev->ops->name, v->nr_queues, (unsigned long long)v->dev_features,
			  vdev->ops->nr_queues, (unsigned long long)vdev->device_features);
		goto out;
	}
	/*
	 * Before FEATURES_OK the driver may have written any bits (the device
	 * refuses FEATURES_OK for bits it did not offer, as vpci_set_status
	 * does): only an accepted feature set must be a subset of ours.
	 */
	if (((v->status & VIRTIO_STATUS_FEATURES_OK) && (v->drv_features & ~v->dev_features)) ||
	    (v->msix_config != VIRTIO_MSI_NO_VECTOR && v->msix_config >= vp->nvec))
		goto out;
	nq = v->nr_queues;
	for (unsigned int q = 0; q < nq; q++)
		if (v->qs[q].msix != VIRTIO_MSI_NO_VECTOR && v->qs[q].msix >= vp->nvec)
			goto out;

	/* Valid: stop whatever runs, then apply. */
	pthread_mutex_lock(&vp->status_lock);
	if (vp->active && vdev->ops->reset)
		vdev->ops->reset(vdev);
	vp->active = false;
	vp->start_pending = false;
	pthread_mutex_lock(&vdev->lock);
	vpci_reset_fields(vdev);
	vdev->driver_features = v->drv_features;
	vdev->device_feature_sel = v->dev_feat_sel;
	vdev->driver_feature_sel = v->drv_feat_sel;
	vdev->queue_sel = v->queue_sel;
	vdev->msix_config = v->msix_config;
	vdev->config_generation = v->config_gen;
	vdev->isr = v->isr;
	for (unsigned int q = 0; q < nq; q++) {
		struct virtqueue *vq = &vdev->vqs[q];
		const struct vpci_queue_image *lq = &v->qs[q];

		vq->size = lq->size;
		vq->desc_gpa = lq->desc;
		vq->avail_gpa = lq->avail;
		vq->used_gpa = lq->used;
		vq->msix_vector = lq->msix;
		vq->last_avail = lq->last_avail;
		vq->used_idx = lq->used_idx;
		vq->signalled_used = lq->signalled;
		vq->signalled_valid = lq->signalled_valid;
		__atomic_store_n(&vq->enabled, lq->enabled != 0, __ATOMIC_RELEASE);
	}
	__atomic_store_n(&vdev->status, v->status, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&vdev->lock);

	if (d->bus)
		pthread_mutex_lock(&d->bus->lock);
	for (unsigned int i = 0; i < sizeof(d->cfg); i++)
		d->cfg[i] = (uint8_t)((d->cfg[i] & ~d->wmask[i]) | (v->cfg.p[i] & d->wmask[i]));
	if (d->bus)
		pthread_mutex_unlock(&d->bus->lock);
	pthread_mutex_lock(&m->lock);
	memcpy(m->table, v->msix_table.p, m->nr * PCI_MSIX_ENTRY_SIZE);
	for (unsigned int e = 0; e < m->nr; e++) {
		uint8_t *ctl = m->table + e * PCI_MSIX_ENTRY_SIZE + 12;

		le32_put(ctl, le32_get(ctl) & 1);   /* only the mask bit exists */
	}
	for (unsigned int i = 0; i < (m->nr + 63) / 64; i++)
		m->pba[i] = le64_get(v->msix_pba.p + 8 * i) & (i == (m->nr - 1) / 64 && m->nr % 64 ?
							 (1ULL << (m->nr % 64)) - 1 : ~0ULL);
	pthread_mutex_unlock(&m->lock);
	/* Host-side state from the guest-visible: ioeventfds, MSI routes, INTx. */
	pci_update_bars(d);
	pci_msix_refresh(d);
	pci_irq_sync(d, &vdev->isr);

	ret = 0;
	if (v->device.p && vdev->ops->load) {
		struct state_in sub;

		state_in_init(&sub, v->device.p, v->device.len);
		ret = vdev->ops->load(vdev, &sub, version);
	}
	/*
	 * A device the driver had running is not started here: dev_resume_all()
	 * (virtio_pci_resume) activates it once the whole VM is loaded.  Started
	 * here, its thread could serve a request and raise an interrupt before
	 * the vCPUs' LAPICs and the irqchip are loaded, whose load would erase it
	 * (a guest waiting forever for that interrupt), and a migration
	 * destination would do I/O before it owns the VM.
	 */
	if (!ret && (v->status & VIRTIO_STATUS_DRIVER_OK) && !(v->status & VIRTIO_STATUS_NEEDS_RESET))
		vp->start_pending = true;
	pthread_mutex_unlock(&vp->status_lock);
out:
	free(v);
	return ret;
}

struct virtio_dev *virtio_pci_vdev(struct dev *d)
{
	struct virtio_pci *vp;

	if (!d || d->ops->destroy != vpci_dev_destroy)
		return NULL;
	vp = d->priv;
	return vp->vdev;
}

unsigned int virtio_pci_announce(struct vm *vm)
{
	unsigned int n = 0;

	for (struct dev *d = dev_first(vm); d; d = d->next) {
		struct virtio_pci *vp = d->priv;
		int ret;

		if (strcmp(d->ops->name, "virtio-net"))
			continue;
		ret = virtio_net_announce(vp->vdev);
		if (ret)
			log_warnx("virtio-net.%u: cannot announce the MAC: %s", d->instance,
				  strerror(-ret));
		else
			n++;
	}
	return n;
}
