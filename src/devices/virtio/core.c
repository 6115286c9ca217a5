/*
 * core.c - split virtqueues (virtio 1.2, 2.7) and the device-side helpers
 * every virtio device shares: taking descriptor chains off the avail ring
 * with complete validation, returning them on the used ring, interrupt
 * suppression (EVENT_IDX, NO_INTERRUPT), NEEDS_RESET, and the optional
 * per-device queue thread (virtio_worker).
 *
 * Where queue processing runs: in a per-device thread, never on a vCPU
 * thread or the loop thread.  The guest's kick is a KVM ioeventfd (one
 * notify address per queue, so no datamatch), so a notification costs no
 * exit to userspace; the device's thread polls its queues' kick eventfds
 * and a stop eventfd.  A device is activated when the driver sets
 * DRIVER_OK, which happens on a vCPU thread where the loop's API may not be
 * used; a thread started there needs no loop.  Reset and quiesce stop the
 * thread and join it, so nothing touches the rings afterwards.
 *
 * Guest memory is shared with a hostile writer: every ring field and
 * descriptor is read once into a local copy (memcpy + compiler barrier, so
 * the compiler cannot fetch it again), every index is checked against the
 * queue or table size before use, chains are bounded (queue size for the
 * descriptor table, the table's length for an indirect table, VQ_MAX_SEGS
 * segments overall), and every buffer is translated with vm_gpa_to_host(),
 * which refuses anything not wholly inside one RAM region.
 *
 * Memory ordering (the device is one side of a shared-memory protocol):
 * avail->idx is read with acquire before the ring entries it covers; the
 * used entry (and the data before it) is published by a release store of
 * used->idx; before deciding whether to interrupt, a full fence orders the
 * used->idx store against the read of used_event/flags (a store-load
 * pair, which x86 reorders); after writing avail_event on an empty ring a
 * full fence orders it against re-reading avail->idx, so a kick is never
 * lost between "ring empty" and "please kick me".
 */
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "godwit/log.h"
#include "godwit/virtio.h"
#include "godwit/vm.h"

#define barrier() __asm__ __volatile__("" ::: "memory")

struct vq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

/* Host views of a queue's three rings, valid for one call. */
struct vq_rings {
	uint8_t *desc, *avail, *used;
};

static void vq_fail(struct virtqueue *vq, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void vq_fail(struct virtqueue *vq, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(vq->error, sizeof(vq->error), fmt, ap);
	va_end(ap);
}

static uint16_t rd16(const uint8_t *p)
{
	return le16toh(__atomic_load_n((const uint16_t *)(const void *)p, __ATOMIC_RELAXED));
}

static void wr16(uint8_t *p, uint16_t v)
{
	__atomic_store_n((uint16_t *)(void *)p, htole16(v), __ATOMIC_RELAXED);
}

static void wr32(uint8_t *p, uint32_t v)
{
	__atomic_store_n((uint32_t *)(void *)p, htole32(v), __ATOMIC_RELAXED);
}

/* One descriptor, copied once (p may be unaligned inside an indirect table). */
static void vq_read_desc(const uint8_t *p, struct vq_desc *d)
{
	uint8_t raw[16];

	memcpy(raw, p, sizeof(raw));
	barrier();
	memcpy(&d->addr, raw, 8);
	memcpy(&d->len, raw + 8, 4);
	memcpy(&d->flags, raw + 12, 2);
	memcpy(&d->next, raw + 14, 2);
	d->addr = le64toh(d->addr);
	d->len = le32toh(d->len);
	d->flags = le16toh(d->flags);
	d->next = le16toh(d->next);
}

static bool vq_enabled(const struct virtqueue *vq)
{
	return __atomic_load_n(&vq->enabled, __ATOMIC_ACQUIRE);
}

static bool vdev_needs_reset(const struct virtio_dev *vdev)
{
	return __atomic_load_n(&vdev->status, __ATOMIC_RELAXED) & VIRTIO_STATUS_NEEDS_RESET;
}

/* Map the rings; -EINVAL (with vq->error) if misaligned, a bad size, or not in RAM. */
static int vq_map(struct virtqueue *vq, struct vq_rings *r)
{
	struct vm *vm = vq->vdev->vm;
	uint16_t n = vq->size;

	if (!n || (n & (n - 1)) || n > VIRTQ_MAX_SIZE) {
		vq_fail(vq, "queue size %u is not a power of 2 up to %u", n, VIRTQ_MAX_SIZE);
		return -EINVAL;
	}
	if ((vq->desc_gpa & 15) || (vq->avail_gpa & 1) || (vq->used_gpa & 3)) {
		vq_fail(vq, "misaligned rings (desc %#llx, driver %#llx, device %#llx)",
			(unsigned long long)vq->desc_gpa, (unsigned long long)vq->avail_gpa,
			(unsigned long long)vq->used_gpa);
		return -EINVAL;
	}
	r->desc = vm_gpa_to_host(vm, vq->desc_gpa, 16ULL * n);
	r->avail = vm_gpa_to_host(vm, vq->avail_gpa, 6ULL + 2ULL * n);
	r->used = vm_gpa_to_host(vm, vq->used_gpa, 6ULL + 8ULL * n);
	if (!r->desc || !r->avail || !r->used) {
		vq_fail(vq, "rings outside guest RAM (desc %#llx, driver %#llx, device %#llx)",
			(unsigned long long)vq->desc_gpa, (unsigned long long)vq->avail_gpa,
			(unsigned long long)vq->used_gpa);
		return -EINVAL;
	}
	return 0;
}

/* EVENT_IDX: ask for a kick once the driver adds anything past last_avail. */
static void vq_set_avail_event(struct virtqueue *vq, struct vq_rings *r)
{
	wr16(r->used + 4 + 8 * vq->size, vq->last_avail);
	vm_mark_dirty(vq->vdev->vm, vq->used_gpa + 4 + 8ULL * vq->size, 2);
}

/*
 * Walk the chain at `head` into e.  Returns 0 or -EINVAL with vq->error
 * set.  Nothing in guest memory is written.
 */
static int vq_walk(struct virtqueue *vq, const struct vq_rings *r, uint16_t head,
		   struct vq_elem *e)
{
	struct vm *vm = vq->vdev->vm;
	const uint8_t *table = r->desc;
	unsigned int tsize = vq->size, idx = head, count = 0, nseg = 0;
	bool indirect = false;

	e->head = head;
	e->n_out = e->n_in = 0;
	e->out_len = e->in_len = 0;
	if (head >= vq->size) {
		vq_fail(vq, "chain head %u beyond the queue size %u", head, vq->size);
		return -EINVAL;
	}
	for (;;) {
		struct vq_desc d;

		if (++count > tsize) {
			vq_fail(vq, indirect ? "indirect table loops (more than %u descriptors)" :
				"chain loops or is longer than the queue (%u)", tsize);
			return -EINVAL;
		}
		vq_read_desc(table + 16 * idx, &d);
		if (d.flags & VIRTQ_DESC_F_INDIRECT) {
			if (indirect) {
				vq_fail(vq, "nested indirect descriptor");
				return -EINVAL;
			}
			if (!virtio_has_feature(vq->vdev, VIRTIO_F_INDIRECT_DESC)) {
				vq_fail(vq, "indirect descriptor, but INDIRECT_DESC was not negotiated");
				return -EINVAL;
			}
			if (d.flags & VIRTQ_DESC_F_NEXT) {
				vq_fail(vq, "indirect descriptor with NEXT set");
				return -EINVAL;
			}
			if (!d.len || d.len % 16 || d.len / 16 > VQ_MAX_SEGS) {
				vq_fail(vq, "indirect table of %u bytes", d.len);
				return -EINVAL;
			}
			table = vm_gpa_to_host(vm, d.addr, d.len);
			if (!table) {
				vq_fail(vq, "indirect table at %#llx+%u outside guest RAM",
					(unsigned long long)d.addr, d.len);
				return -EINVAL;
			}
			tsize = d.len / 16;
			idx = 0;
			count = 0;
			indirect = true;
			continue;
		}
		if (!(d.flags & VIRTQ_DESC_F_WRITE) && e->n_in) {
			vq_fail(vq, "device-readable descriptor after a writable one");
			return -EINVAL;
		}
		/* Zero-length buffers carry nothing: skipped, but still counted above. */
		if (d.len) {
			void *host;

			if (nseg >= VQ_MAX_SEGS) {
				vq_fail(vq, "chain of more than %u buffers", VQ_MAX_SEGS);
				return -EINVAL;
			}
			host = vm_gpa_to_host(vm, d.addr, d.len);
			if (!host) {
				vq_fail(vq, "buffer at %#llx+%u outside guest RAM",
					(unsigned long long)d.addr, d.len);
				return -EINVAL;
			}
			e->iov[nseg].iov_base = host;
			e->iov[nseg].iov_len = d.len;
			e->gpa[nseg] = d.addr;
			nseg++;
			if (d.flags & VIRTQ_DESC_F_WRITE) {
				e->n_in++;
				e->in_len += d.len;
			} else {
				e->n_out++;
				e->out_len += d.len;
			}
		}
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			return 0;
		if (d.next >= tsize) {
			vq_fail(vq, "next %u beyond the %s size %u", d.next,
				indirect ? "indirect table" : "queue", tsize);
			return -EINVAL;
		}
		idx = d.next;
	}
}

/* How many chains the driver has made available; -EINVAL if its index jumped. */
static int vq_pending(struct virtqueue *vq, const struct vq_rings *r)
{
	uint16_t avail_idx = le16toh(__atomic_load_n((const uint16_t *)(const void *)(r->avail + 2),
						     __ATOMIC_ACQUIRE));
	uint16_t n = (uint16_t)(avail_idx - vq->last_avail);

	if (n > vq->size) {
		vq_fail(vq, "avail idx %u is %u ahead of %u (queue size %u)", avail_idx, n,
			vq->last_avail, vq->size);
		return -EINVAL;
	}
	return n;
}

/*
 * vq_pop - see virtio.h.  A queue that is not enabled, or a device in
 * NEEDS_RESET, has nothing to pop (0).
 */
int vq_pop(struct virtqueue *vq, struct vq_elem *e)
{
	struct vq_rings r;
	bool event_idx = virtio_has_feature(vq->vdev, VIRTIO_F_EVENT_IDX);
	uint16_t head;
	int n, ret;

	if (!vq_enabled(vq) || vdev_needs_reset(vq->vdev))
		return 0;
	ret = vq_map(vq, &r);
	if (ret)
		return ret;
	n = vq_pending(vq, &r);
	if (n == 0 && event_idx) {
		vq_set_avail_event(vq, &r);
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		n = vq_pending(vq, &r);
	}
	if (n <= 0)
		return n;
	head = rd16(r.avail + 4 + 2 * (vq->last_avail & (vq->size - 1)));
	ret = vq_walk(vq, &r, head, e);
	if (ret)
		return ret;
	vq->last_avail++;
	if (event_idx)
		vq_set_avail_event(vq, &r);
	return 1;
}

/*
 * vq_push - see virtio.h.  The data bytes are marked dirty before the used
 * entry is published, the entry before the index.
 */
void vq_push(struct virtqueue *vq, const struct vq_elem *e, uint32_t written)
{
	struct vm *vm = vq->vdev->vm;
	struct vq_rings r;
	uint64_t left = MIN((uint64_t)written, e->in_len);
	unsigned int slot;

	if (vq_map(vq, &r))
		return;
	for (unsigned int i = e->n_out; i < e->n_out + e->n_in && left; i++) {
		uint64_t len = MIN((uint64_t)e->iov[i].iov_len, left);

		vm_mark_dirty(vm, e->gpa[i], len);
		left -= len;
	}
	written = (uint32_t)MIN((uint64_t)written, e->in_len);
	slot = vq->used_idx & (vq->size - 1);
	wr32(r.used + 4 + 8 * slot, e->head);
	wr32(r.used + 8 + 8 * slot, written);
	vm_mark_dirty(vm, vq->used_gpa + 4 + 8ULL * slot, 8);
	vq->used_idx++;
	__atomic_store_n((uint16_t *)(void *)(r.used + 2), htole16(vq->used_idx), __ATOMIC_RELEASE);
	vm_mark_dirty(vm, vq->used_gpa + 2, 2);
}

/* vq_notify - see virtio.h. */
void vq_notify(struct virtqueue *vq)
{
	struct vq_rings r;
	bool need;

	if (vq_map(vq, &r))
		return;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (virtio_has_feature(vq->vdev, VIRTIO_F_EVENT_IDX)) {
		uint16_t event = rd16(r.avail + 4 + 2 * vq->size);
		uint16_t old = vq->signalled_used, now = vq->used_idx;
		bool valid = vq->signalled_valid;

		vq->signalled_used = now;
		vq->signalled_valid = true;
		/* vring_need_event(): did used idx step past used_event since the last interrupt? */
		need = !valid || (uint16_t)(now - event - 1) < (uint16_t)(now - old);
	} else {
		need = !(rd16(r.avail) & VIRTQ_AVAIL_F_NO_INTERRUPT);
	}
	if (!need)
		return;
	vq->interrupts++;
	virtio_pci_irq(vq->vdev, vq->msix_vector, VIRTIO_ISR_QUEUE);
}

/* vq_has_work - see virtio.h; a broken ring counts as work (vq_pop reports it). */
bool vq_has_work(struct virtqueue *vq)
{
	struct vq_rings r;

	if (!vq_enabled(vq) || vdev_needs_reset(vq->vdev))
		return false;
	if (vq_map(vq, &r))
		return true;
	return vq_pending(vq, &r) != 0;
}

/* vq_elem_read - copy up to len bytes from offset off of e's readable segments; returns bytes copied. */
size_t vq_elem_read(const struct vq_elem *e, size_t off, void *dst, size_t len)
{
	size_t done = 0;

	for (unsigned int i = 0; i < e->n_out && done < len; i++) {
		size_t seg = e->iov[i].iov_len, n;

		if (off >= seg) {
			off -= seg;
			continue;
		}
		n = MIN(seg - off, len - done);
		memcpy((uint8_t *)dst + done, (const uint8_t *)e->iov[i].iov_base + off, n);
		done += n;
		off = 0;
	}
	return done;
}

/* vq_elem_write - copy up to len bytes to offset off of e's writable segments; returns bytes copied. */
size_t vq_elem_write(const struct vq_elem *e, size_t off, const void *src, size_t len)
{
	size_t done = 0;

	for (unsigned int i = e->n_out; i < e->n_out + e->n_in && done < len; i++) {
		size_t seg = e->iov[i].iov_len, n;

		if (off >= seg) {
			off -= seg;
			continue;
		}
		n = MIN(seg - off, len - done);
		memcpy((uint8_t *)e->iov[i].iov_base + off, (const uint8_t *)src + done, n);
		done += n;
		off = 0;
	}
	return done;
}

/* ---- device state ------------------------------------------------------------------ */

/*
 * virtio_dev_set_needs_reset - see virtio.h.  Lock-free (a device thread
 * may call it holding its own locks, or vdev->lock): the status bit is set
 * atomically and the transport preserves it.  Logs one line per episode.
 */
void virtio_dev_set_needs_reset(struct virtio_dev *vdev, const char *why)
{
	uint8_t old = __atomic_fetch_or(&vdev->status, VIRTIO_STATUS_NEEDS_RESET, __ATOMIC_SEQ_CST);
	char detail[160] = "";

	if (old & VIRTIO_STATUS_NEEDS_RESET)
		return;
	for (unsigned int i = 0; i < VIRTIO_MAX_QUEUES; i++) {
		size_t n = strlen(detail);

		if (vdev->vqs[i].error[0] && n < sizeof(detail) - 1)
			snprintf(detail + n, sizeof(detail) - n, " (queue %u: %s)", i, vdev->vqs[i].error);
	}
	log_warnx("%s: %s: %s%s; device needs reset", __func__, vdev->ops->name, why, detail);
	virtio_pci_irq(vdev, vdev->msix_config, VIRTIO_ISR_CONFIG);
}

/* virtio_dev_driver_ok - see virtio.h. */
bool virtio_dev_driver_ok(const struct virtio_dev *vdev)
{
	uint8_t status = __atomic_load_n(&vdev->status, __ATOMIC_ACQUIRE);

	return (status & VIRTIO_STATUS_DRIVER_OK) &&
	       !(status & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED));
}

/* virtio_config_read_bytes - see virtio.h. */
void virtio_config_read_bytes(const void *config, uint32_t size, uint32_t off, void *data,
			      uint32_t len)
{
	memset(data, 0, len);
	if (off < size)
		memcpy(data, (const uint8_t *)config + off, MIN(len, size - off));
}

/* virtio_config_changed - see virtio.h. */
void virtio_config_changed(struct virtio_dev *vdev)
{
	__atomic_fetch_add(&vdev->config_generation, 1, __ATOMIC_SEQ_CST);
	virtio_pci_irq(vdev, vdev->msix_config, VIRTIO_ISR_CONFIG);
}

/* ---- the queue thread -------------------------------------------------------------- */

static void *virtio_worker_main(void *arg)
{
	struct virtio_worker *w = arg;
	struct virtio_dev *vdev = w->vdev;
	struct pollfd pfd[VIRTIO_MAX_QUEUES + 1];
	unsigned int qidx[VIRTIO_MAX_QUEUES + 1], n = 0;

	pthread_setname_np(pthread_self(), w->name);
	pfd[n++] = (struct pollfd){ .fd = w->stop_fd, .events = POLLIN };
	for (unsigned int q = 0; q < vdev->ops->nr_queues && q < VIRTIO_MAX_QUEUES; q++) {
		if (!(w->queue_mask & (1u << q)) || vdev->vqs[q].kick_fd < 0)
			continue;
		qidx[n] = q;
		pfd[n++] = (struct pollfd){ .fd = vdev->vqs[q].kick_fd, .events = POLLIN };
	}
	/* Chains made available before the thread ran (or before a save) are served first. */
	for (unsigned int i = 1; i < n; i++)
		w->fn(&vdev->vqs[qidx[i]]);
	for (;;) {
		if (poll(pfd, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_warn("%s: %s: poll", __func__, w->name);
			break;
		}
		if (pfd[0].revents)
			break;
		for (unsigned int i = 1; i < n; i++) {
			uint64_t v;

			if (!(pfd[i].revents & POLLIN))
				continue;
			if (read(pfd[i].fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				log_warn("%s: %s: read kick", __func__, w->name);
			w->fn(&vdev->vqs[qidx[i]]);
		}
	}
	return NULL;
}

/*
 * virtio_worker_start - see virtio.h.  Returns 0, -EALREADY if running, or
 * -errno if the eventfd or the thread cannot be created.
 */
int virtio_worker_start(struct virtio_worker *w, struct virtio_dev *vdev, const char *name,
			uint32_t queue_mask, void (*fn)(struct virtqueue *vq))
{
	sigset_t all, old;
	int ret;

	if (w->running)
		return -EALREADY;
	w->vdev = vdev;
	w->fn = fn;
	w->queue_mask = queue_mask;
	snprintf(w->name, sizeof(w->name), "%s", name);
	w->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (w->stop_fd < 0)
		return -errno;
	/* The thread inherits a mask blocking everything (a vCPU thread unblocks SIGUSR1). */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	ret = -pthread_create(&w->thread, NULL, virtio_worker_main, w);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret) {
		log_warnx("%s: %s: cannot start the queue thread: %s", __func__, name, strerror(-ret));
		close(w->stop_fd);
		w->stop_fd = -1;
		return ret;
	}
	w->running = true;
	return 0;
}

/* virtio_worker_stop - see virtio.h; returns once the thread has exited. */
void virtio_worker_stop(struct virtio_worker *w)
{
	uint64_t one = 1;

	if (!w->running)
		return;
	if (NEVER(pthread_equal(pthread_self(), w->thread)))
		return;
	if (write(w->stop_fd, &one, sizeof(one)) != sizeof(one))
		log_warn("%s: %s: eventfd", __func__, w->name);
	pthread_join(w->thread, NULL);
	close(w->stop_fd);
	w->stop_fd = -1;
	w->running = false;
}

/* virtio_worker_kick - see virtio.h. */
void virtio_worker_kick(struct virtio_dev *vdev, unsigned int index)
{
	uint64_t one = 1;

	if (index < VIRTIO_MAX_QUEUES && vdev->vqs[index].kick_fd >= 0 &&
	    write(vdev->vqs[index].kick_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("%s: eventfd", __func__);
}
