/*
 * rng.c - virtio-rng (virtio 1.2, 5.4; device id 4): one request queue
 * whose device-writable buffers are filled from getrandom(), by the
 * device's own queue thread (virtio_worker), never on a vCPU thread.
 *
 * The device has no configuration space and no state beyond the
 * transport's (rings and indices), so it saves nothing of its own.  A
 * chain gets at most RNG_MAX_PER_CHAIN bytes (the used length says how
 * many), so one request cannot keep the thread busy for long.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/random.h>

#include "godwit/dev.h"
#include "godwit/log.h"
#include "godwit/virtio.h"
#include "godwit/vm.h"

#define RNG_QUEUE_SIZE     64
#define RNG_MAX_PER_CHAIN  (64 * 1024)
#define RNG_NOTIFY_BATCH   32       /* interrupt at least this often within a burst */

struct virtio_rng {
	struct virtio_dev vdev;
	struct virtio_worker worker;
	struct vq_elem *elem;           /* the thread's (too large for its stack) */
	bool active;                    /* activated, not reset: resume restarts the thread */
	/* For GET /metrics (STAT_ADD by the queue thread); not guest state: never saved. */
	_Atomic uint64_t n_requests, n_bytes;
};

/* Fill the writable segments of e with up to max random bytes; returns the bytes written. */
static uint32_t rng_fill(const struct vq_elem *e, uint32_t max)
{
	uint32_t done = 0;

	for (unsigned int i = e->n_out; i < e->n_out + e->n_in && done < max; i++) {
		uint8_t *p = e->iov[i].iov_base;
		size_t want = MIN(e->iov[i].iov_len, (size_t)(max - done)), got = 0;

		while (got < want) {
			ssize_t n = getrandom(p + got, want - got, 0);

			if (n < 0) {
				if (errno == EINTR)
					continue;
				log_warn("%s: getrandom", __func__);
				return done + (uint32_t)got;
			}
			got += (size_t)n;
		}
		done += (uint32_t)got;
	}
	return done;
}

/* The queue thread's work: answer every available request. */
static void rng_serve(struct virtqueue *vq)
{
	struct virtio_dev *vdev = vq->vdev;
	struct virtio_rng *rng = vdev->priv;
	unsigned int n = 0;
	int ret;

	while ((ret = vq_pop(vq, rng->elem)) > 0) {
		uint32_t got = rng_fill(rng->elem, RNG_MAX_PER_CHAIN);

		vq_push(vq, rng->elem, got);
		STAT_ADD(rng->n_requests, 1);
		STAT_ADD(rng->n_bytes, got);
		if (++n % RNG_NOTIFY_BATCH == 0)
			vq_notify(vq);
	}
	if (ret < 0)
		virtio_dev_set_needs_reset(vdev, "malformed request");
	if (n)
		vq_notify(vq);
}

static int rng_activate(struct virtio_dev *vdev)
{
	struct virtio_rng *rng = vdev->priv;
	int ret = virtio_worker_start(&rng->worker, vdev, "virtio-rng", 1u << 0, rng_serve);

	if (!ret)
		rng->active = true;
	return ret;
}

/* Reset: stop the thread (joined: it touches no ring after this). */
static void rng_reset(struct virtio_dev *vdev)
{
	struct virtio_rng *rng = vdev->priv;

	virtio_worker_stop(&rng->worker);
	rng->active = false;
}

static int rng_quiesce(struct virtio_dev *vdev)
{
	struct virtio_rng *rng = vdev->priv;

	/* Requests are answered synchronously: stopping the thread drains them. */
	virtio_worker_stop(&rng->worker);
	return 0;
}

/* Restart the thread if the device was activated (and not reset) before the quiesce. */
static int rng_resume(struct virtio_dev *vdev)
{
	struct virtio_rng *rng = vdev->priv;

	if (!rng->active || rng->worker.running)
		return 0;
	return rng_activate(vdev);
}

static void rng_destroy(struct virtio_dev *vdev)
{
	struct virtio_rng *rng = vdev->priv;

	free(rng->elem);
	free(rng);
}

static void rng_stats(struct virtio_dev *vdev, struct dev_stats *st)
{
	struct virtio_rng *rng = vdev->priv;

	st->kind = DEV_STATS_RNG;
	st->rng.requests = STAT_GET(rng->n_requests);
	st->rng.bytes = STAT_GET(rng->n_bytes);
}

static const struct virtio_dev_ops rng_ops = {
	.name = "virtio-rng",
	.device_id = 4,
	.pci_class = 0xff00,            /* unclassified device, as QEMU's virtio-rng */
	.nr_queues = 1,
	.queue_max_size = RNG_QUEUE_SIZE,
	.config_size = 0,
	.activate = rng_activate,
	.reset = rng_reset,
	.quiesce = rng_quiesce,
	.resume = rng_resume,
	.destroy = rng_destroy,
	.stats = rng_stats,
};

/*
 * virtio_rng_add - see virtio.h: a virtio-rng device in PCI slot `slot`.
 * Returns 0 or -errno.  Called on the loop thread before the VM starts.
 */
int virtio_rng_add(struct vm *vm, unsigned int slot)
{
	struct virtio_rng *rng = calloc(1, sizeof(*rng));
	int ret;

	if (!rng)
		return -ENOMEM;
	rng->elem = malloc(sizeof(*rng->elem));
	if (!rng->elem) {
		free(rng);
		return -ENOMEM;
	}
	rng->worker.stop_fd = -1;
	rng->vdev.ops = &rng_ops;
	rng->vdev.priv = rng;
	ret = virtio_pci_add(vm, slot, &rng->vdev);
	if (ret) {
		free(rng->elem);
		free(rng);
	}
	return ret;
}
