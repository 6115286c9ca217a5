/*
 * virtio.h - virtio 1.x devices: split virtqueues (parsing every descriptor
 * chain defensively: a hostile guest's chains must never make godwit read
 * or write outside guest RAM, loop, or crash), the device model shared by
 * virtio-blk, virtio-net and virtio-rng, and the modern virtio-pci
 * transport (MSI-X through KVM irqfd, notifications through ioeventfd).
 *
 * Threads: a device's queues are served by the device's own thread(s) or
 * the loop thread, never by vCPU threads: a kick is an ioeventfd, so a
 * guest notification costs no exit to userspace.  The transport's register
 * accesses (vCPU threads) take vdev->lock; queue processing takes the same
 * lock only around transport-visible state (status, queue enable/reset).
 *
 * Dirty tracking: every guest byte written by emulation (used ring, data
 * buffers) is marked in the VMM's dirty bitmap (vm_mark_dirty()), because
 * KVM's dirty log only sees vCPU writes.  vq_push() does this for the data
 * segments it is told were written, and for the used ring.
 */
#ifndef GODWIT_VIRTIO_H
#define GODWIT_VIRTIO_H

#include <pthread.h>
#include <sys/uio.h>

#include "godwit/common.h"
#include "godwit/state.h"

struct vm;
struct dev_disk_ops;
struct dev_stats;
struct vm_device_arg;
struct virtio_dev;

/* Device status bits (virtio 1.2, 2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE  1
#define VIRTIO_STATUS_DRIVER       2
#define VIRTIO_STATUS_DRIVER_OK    4
#define VIRTIO_STATUS_FEATURES_OK  8
#define VIRTIO_STATUS_NEEDS_RESET  64
#define VIRTIO_STATUS_FAILED       128

/* Transport/ring feature bits every device offers. */
#define VIRTIO_F_INDIRECT_DESC     28
#define VIRTIO_F_EVENT_IDX         29
#define VIRTIO_F_VERSION_1         32

#define VIRTQ_MAX_SIZE   1024       /* largest queue a device offers */
#define VQ_MAX_SEGS      1024       /* longest chain accepted (incl. indirect) */
#define VIRTIO_MAX_QUEUES 8
#define VIRTIO_MSI_NO_VECTOR 0xffff

/* Split-ring flags (virtio 1.2, 2.7). */
#define VIRTQ_DESC_F_NEXT          1
#define VIRTQ_DESC_F_WRITE         2
#define VIRTQ_DESC_F_INDIRECT      4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY     1

/* ISR status bits (virtio-pci, INTx only). */
#define VIRTIO_ISR_QUEUE           1
#define VIRTIO_ISR_CONFIG          2

/* ---- split virtqueue ---------------------------------------------------------- */

struct virtqueue {
	struct virtio_dev *vdev;
	uint16_t index;
	uint16_t max_size;              /* what the device offers */
	uint16_t size;                  /* what the driver chose (power of 2, <= max) */
	bool enabled;                   /* queue_enable written 1 */
	uint64_t desc_gpa, avail_gpa, used_gpa;
	uint16_t msix_vector;
	uint16_t notify_data;           /* queue_notify_off */
	/* Device-side ring state (saved and loaded). */
	uint16_t last_avail;            /* next avail ring slot to take */
	uint16_t used_idx;              /* next used ring slot to fill */
	uint16_t signalled_used;        /* used_idx at the last interrupt */
	bool signalled_valid;
	/* Host side, rebuilt on load. */
	int kick_fd;                    /* ioeventfd, -1 if none */
	/*
	 * Additions (not guest-visible): interrupts raised by vq_notify(), and
	 * the guest address the kick fd is registered at with KVM_IOEVENTFD
	 * (0: none; MMIO writes to the notify area still reach kick_fd).
	 */
	uint64_t interrupts;
	uint64_t kick_gpa;
	char error[96];                 /* why vq_pop last returned -EINVAL ("" if never) */
};

/* One descriptor chain taken from the avail ring. */
struct vq_elem {
	uint16_t head;                  /* chain head index, returned by vq_push */
	unsigned int n_out;             /* device-readable segments, first */
	unsigned int n_in;              /* device-writable segments, after them */
	uint64_t out_len, in_len;       /* bytes in each direction */
	struct iovec iov[VQ_MAX_SEGS];  /* host addresses inside guest RAM */
	uint64_t gpa[VQ_MAX_SEGS];      /* the same segments' guest addresses */
};

/*
 * vq_pop - take the next available chain.
 * Returns 1 and fills e; 0 if the ring is empty; -EINVAL for a malformed
 * ring or chain (index beyond the queue, a loop, a chain longer than the
 * queue, a readable descriptor after a writable one, a nested or malformed
 * indirect table, a buffer outside guest RAM, a zero-length indirect table).
 * On -EINVAL the caller puts the device into NEEDS_RESET
 * (virtio_dev_set_needs_reset) and stops serving the queue; godwit logs one
 * line and never touches memory outside the guest.  vq->error says why.
 * Also 0 while the queue is not enabled or the device is in NEEDS_RESET.
 * With EVENT_IDX it writes avail_event (marked dirty) to ask for kicks.
 */
int vq_pop(struct virtqueue *vq, struct vq_elem *e) __must_check;
/*
 * vq_push - return chain e to the driver with `written` bytes written into
 * its writable segments (clamped to e->in_len), marking those bytes and the
 * used-ring entry dirty.  Does not interrupt: call vq_notify() after a batch.
 */
void vq_push(struct virtqueue *vq, const struct vq_elem *e, uint32_t written);
/* Interrupt the driver if it asked to be (EVENT_IDX / NO_INTERRUPT). */
void vq_notify(struct virtqueue *vq);
/* True if the avail ring has chains to take. */
bool vq_has_work(struct virtqueue *vq);

/* Copy helpers over an element's segments (bounded by the segments). */
size_t vq_elem_read(const struct vq_elem *e, size_t off, void *dst, size_t len);
size_t vq_elem_write(const struct vq_elem *e, size_t off, const void *src, size_t len);

/* ---- the device model ------------------------------------------------------------ */

struct virtio_dev_ops {
	const char *name;               /* "virtio-blk", for logs and the state stream */
	uint16_t device_id;             /* 2 blk, 1 net, 4 rng */
	uint16_t pci_class;             /* PCI class code (upper 16 bits) */
	unsigned int nr_queues;
	uint16_t queue_max_size;
	uint32_t config_size;           /* device-specific config space */
	uint64_t (*features)(struct virtio_dev *vdev);      /* device-specific bits offered */
	void (*config_read)(struct virtio_dev *vdev, uint32_t off, void *data, uint32_t len);
	/* NULL: the config space is read-only (the transport ignores writes). */
	void (*config_write)(struct virtio_dev *vdev, uint32_t off, const void *data, uint32_t len);
	/* The driver set DRIVER_OK: start serving the queues (kick fds are ready). */
	int (*activate)(struct virtio_dev *vdev);
	/* Device reset (status 0) or teardown: stop serving, forget in-flight work. */
	void (*reset)(struct virtio_dev *vdev);
	/* Drain in-flight requests and stop backends (migration); resume restarts. */
	int (*quiesce)(struct virtio_dev *vdev);
	int (*resume)(struct virtio_dev *vdev);
	/* Device-specific state beyond the transport's. */
	int (*save)(struct virtio_dev *vdev, struct state_out *out);
	int (*load)(struct virtio_dev *vdev, struct state_in *in, uint16_t version);
	/*
	 * Migration hand-over of host resources (may be NULL): release() lets
	 * another VMM take them (a source at COMMIT: flush and unlock disk
	 * images), acquire() takes them (the destination at COMMIT, or a source
	 * that runs again).  Called with the VM paused and the device quiesced.
	 */
	int (*release)(struct virtio_dev *vdev);
	int (*acquire)(struct virtio_dev *vdev);
	/* Addition: free the device's own state at teardown, after reset (may be NULL). */
	void (*destroy)(struct virtio_dev *vdev);
	/* A disk image storage migration can copy (dev.h; the struct dev is the transport's). */
	const struct dev_disk_ops *disk;
	/* The device's I/O counters for GET /metrics (dev.h; may be NULL). */
	void (*stats)(struct virtio_dev *vdev, struct dev_stats *st);
};

struct virtio_dev {
	pthread_mutex_t lock;
	struct vm *vm;
	const struct virtio_dev_ops *ops;
	void *priv;                     /* the device's own state */
	/* Transport state (saved and loaded by the transport). */
	uint8_t status;
	uint64_t device_features;       /* offered: ops->features() | ring/transport bits */
	uint64_t driver_features;       /* accepted by the driver */
	uint32_t device_feature_sel, driver_feature_sel;
	uint16_t queue_sel;
	uint16_t msix_config;
	uint8_t config_generation;
	uint8_t isr;
	struct virtqueue vqs[VIRTIO_MAX_QUEUES];
	struct virtio_pci *pci;         /* transport */
};

/* True once the driver accepted feature bit `bit`. */
static inline bool virtio_has_feature(const struct virtio_dev *vdev, unsigned int bit)
{
	return (vdev->driver_features >> bit) & 1;
}
/*
 * Put the device in NEEDS_RESET and raise a config interrupt (hostile chain,
 * backend failure).  Lock-free: callable from any thread, with or without
 * vdev->lock; logs one line per episode (with every queue's vq->error).
 */
void virtio_dev_set_needs_reset(struct virtio_dev *vdev, const char *why);
/* The device's config space changed (e.g. capacity): bump generation, interrupt. */
void virtio_config_changed(struct virtio_dev *vdev);
/*
 * True if the driver has the device running: DRIVER_OK set, neither
 * NEEDS_RESET nor FAILED (read atomically; any thread).  A device's
 * ops->resume restarts its backend only then.
 */
bool virtio_dev_driver_ok(const struct virtio_dev *vdev);
/*
 * For ops->config_read: copy bytes [off, off + len) of a device's config
 * space `config` of `size` bytes into data; what lies beyond size reads 0.
 */
void virtio_config_read_bytes(const void *config, uint32_t size, uint32_t off, void *data,
			      uint32_t len);

/*
 * virtio_worker - an optional helper for a device's queue thread: it polls
 * the kick eventfds of the queues in queue_mask (and a stop eventfd) and
 * calls fn(vq) for a queue whenever its kick fd fired (the eventfd is
 * already drained; fn pops until vq_pop() returns 0).  The thread blocks
 * every signal.  Start it from ops->activate, stop it from ops->reset and
 * ops->quiesce: virtio_worker_stop() returns once the thread has exited,
 * so nothing touches the queues after it.  Callable from any thread (a
 * vCPU thread writing device_status), never from the worker itself.
 */
struct virtio_worker {
	struct virtio_dev *vdev;
	void (*fn)(struct virtqueue *vq);
	uint32_t queue_mask;
	pthread_t thread;
	int stop_fd;                    /* eventfd, -1 when not running */
	bool running;
	char name[16];
};
int virtio_worker_start(struct virtio_worker *w, struct virtio_dev *vdev, const char *name,
			uint32_t queue_mask, void (*fn)(struct virtqueue *vq)) __must_check;
void virtio_worker_stop(struct virtio_worker *w);
/* Wake the worker as if queue `index` had been kicked (e.g. to retry after a backend stall). */
void virtio_worker_kick(struct virtio_dev *vdev, unsigned int index);

/*
 * virtio_pci_add - create the virtio-pci transport for a device in PCI slot
 * `slot` (BAR placed in the 32-bit PCI window, MSI-X with nr_queues + 1
 * vectors routed through KVM irqfds, one ioeventfd per queue).  The device
 * sets vdev->ops and vdev->priv first; this initialises vdev->lock, vdev->vm
 * and every transport field, and creates each queue's kick_fd (an eventfd,
 * valid even without KVM).  Call it on the loop thread before the VM runs.
 */
int virtio_pci_add(struct vm *vm, unsigned int slot, struct virtio_dev *vdev) __must_check;
/*
 * The transport registers the device with the VM's registry (dev.h) as
 * stream id ops->name, instance = slot, so nothing else is needed for
 * migration: its save/load/quiesce/resume/reset are the functions below,
 * which call ops->save/load/quiesce/resume/reset for the device's part.
 *
 * virtio_pci_save - the transport state (status, features, selectors,
 * queue registers and ring indices, MSI-X table and PBA, PCI config space)
 * and ops->save's fields nested in one field.  Returns 0 or -errno.
 * virtio_pci_load - the reverse on a freshly created device with the same
 * configuration (device features must match); re-installs MSI routes and
 * ioeventfds.  A device whose driver had set DRIVER_OK is not started: the
 * next virtio_pci_resume() calls ops->activate (nothing may serve a queue
 * or raise an interrupt before the vCPUs' LAPICs are loaded).
 * Both run with the VM paused and the device quiesced.
 * virtio_pci_resume - the registry's resume (dev_resume_all): activates a
 * loaded device, else calls ops->resume of an active one.  Returns 0 or
 * -errno.
 */
int virtio_pci_save(struct virtio_dev *vdev, struct state_out *out) __must_check;
int virtio_pci_load(struct virtio_dev *vdev, struct state_in *in, uint16_t version) __must_check;
int virtio_pci_resume(struct virtio_dev *vdev) __must_check;
/*
 * virtio_pci_irq - raise an interrupt for vdev (any thread, no lock held
 * or needed): MSI-X vector `vector` if MSI-X is enabled (nothing for
 * VIRTIO_MSI_NO_VECTOR; a masked vector is left pending), otherwise ISR
 * bits `isr` and the INTx line.  vq_notify() and the config-change
 * functions call it; devices normally do not.
 */
void virtio_pci_irq(struct virtio_dev *vdev, uint16_t vector, uint8_t isr);
/*
 * virtio_pci_destroy - teardown: stop the device (ops->reset), take it off
 * the bus and the VM's device list, release the transport's fds and
 * memory, then call ops->destroy.  The registry's destroy op calls it.
 */
void virtio_pci_destroy(struct virtio_dev *vdev);
/*
 * virtio_pci_announce - one gratuitous RARP from every virtio-net NIC of vm
 * out of its TAP (after a migration: bridges learn the MAC's new port).
 * Returns how many NICs announced.
 */
unsigned int virtio_pci_announce(struct vm *vm);
/* The virtio device behind a registered device, or NULL if d is not virtio-pci. */
struct dev;
struct virtio_dev *virtio_pci_vdev(struct dev *d);

/* Storage migration reaches a virtio-blk image through its struct dev (dev_ops.disk). */


/* ---- devices, from their parsed command-line specs (devspec.h) --------------------- */

/* `--disk FILE[,readonly][,serial=ID]` */
int virtio_blk_add(struct vm *vm, unsigned int slot, const struct vm_device_arg *a) __must_check;
/* `--net tap=NAME[,mac=MAC]` */
int virtio_net_add(struct vm *vm, unsigned int slot, const struct vm_device_arg *a) __must_check;
/* virtio-rng, fed from getrandom() */
int virtio_rng_add(struct vm *vm, unsigned int slot) __must_check;

#endif
