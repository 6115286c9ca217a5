/*
 * rng.c - the virtio-rng driver and the rng workload: read rng_kib KiB of
 * entropy through eight 4 KiB device-writable buffers kept in flight, then
 * print one line with a sanity metric (how many of the 256 byte values were
 * seen, how many bytes were zero) and stop.
 */
#include "virtio.h"

#define RNG_BUFS	8
#define RNG_BUF		4096

static struct virtio_dev vd;
static struct vq q;
static u8 *bufs;
static u64 target, got, zeros, last_progress;
static u64 hist[256];
static unsigned outstanding;
static bool done, stuck;

bool rng_setup(void)
{
	if (!virtio_find(&vd, VIRTIO_ID_RNG, "rng")) {
		gprintf("rng: no usable virtio-rng device\n");
		return false;
	}
	if (!virtio_start(&vd, 0))
		return false;
	if (!virtio_queue(&vd, &q, 0, 64)) {
		gprintf("rng: virtio-rng has no queue 0\n");
		return false;
	}
	virtio_ready(&vd);
	bufs = (u8 *)boot_alloc(RNG_BUFS * RNG_BUF);
	target = cfg.rng_kib * 1024;
	for (u16 i = 0; i < MIN(RNG_BUFS, q.size); i++) {
		q.desc[i] = (struct vring_desc){ (u64)(bufs + i * RNG_BUF), RNG_BUF,
						 VIRTQ_DESC_F_WRITE, 0 };
		vq_add(&q, i);
		outstanding++;
	}
	return true;
}

enum poll_result rng_poll(u64 now)
{
	bool progress = false;
	u32 id, len;

	if (done)
		return POLL_IDLE;
	if (!last_progress) {
		vq_kick(&q);		/* the buffers queued at set-up */
		last_progress = now;
	}
	while (vq_used(&q, &id, &len)) {
		u32 n;

		outstanding--;
		progress = true;
		if (id >= RNG_BUFS || len > RNG_BUF) {
			gprintf("rng: ERROR device returned id=%u len=%u\n", id, len);
			continue;
		}
		n = (u32)MIN((u64)len, target - got);
		for (u32 i = 0; i < n; i++)
			hist[bufs[id * RNG_BUF + i]]++;
		got += n;
		if (got < target) {
			vq_add(&q, (u16)id);
			outstanding++;
		}
	}
	if (progress) {
		last_progress = now;
		stuck = false;
		if (got >= target) {
			unsigned distinct = 0;

			for (unsigned i = 0; i < 256; i++)
				distinct += hist[i] != 0;
			zeros = hist[0];
			gprintf("rng: bytes=%lu zeros=%lu distinct_bytes=%u\n", got, zeros, distinct);
			done = true;
			return POLL_PROGRESS;
		}
		vq_kick(&q);
		return POLL_PROGRESS;
	}
	if (!stuck && now - last_progress > ms_to_tsc(VIRTIO_TIMEOUT_MS)) {
		vq_report_timeout(&q, VIRTIO_TIMEOUT_MS, outstanding);
		stuck = true;
	}
	return stuck ? POLL_IDLE : POLL_WAIT;	/* a stuck device is polled at leisure */
}
