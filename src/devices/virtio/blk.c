/*
 * blk.c - virtio-blk (virtio 1.2, 5.2) on a raw image file: the `--disk`
 * spec, the image (open, OFD lock, capacity, fallocate probes), the config
 * space, request parsing and validation, and the per-device I/O thread.
 *
 * Requests: IN, OUT, FLUSH (fdatasync before the status byte is written),
 * GET_ID, DISCARD (punch a hole), WRITE_ZEROES (punch a hole with the unmap
 * flag, else zero the range: FALLOC_FL_ZERO_RANGE, or plain writes where the
 * file system lacks it); anything else is UNSUPP.  Nothing the guest sends
 * is trusted: the header may span segments, the status byte is the last
 * device-writable byte, data segments must point the right way, sector
 * ranges are checked against the capacity without overflow, and discard /
 * write-zeroes segment lists against the limits in the config space.
 *
 * Threads: one I/O thread per device (the core's virtio_worker), started
 * when the driver sets DRIVER_OK (activate) or on resume, serves queue 0:
 * it sleeps on the queue's kick eventfd (an ioeventfd, so a guest kick
 * costs no exit to userspace), pops every available chain, does the I/O
 * synchronously (preadv/pwritev straight into guest memory), pushes each
 * request and notifies after each batch.  reset and quiesce set `stop` and
 * stop the worker, which returns once the thread has exited: the request
 * being served completes and is pushed first, so afterwards nothing is in
 * flight and nothing writes guest memory; unpopped chains stay in the
 * avail ring (last_avail is the transport's saved state) for the resumed
 * device or the migration destination.  `ctl` serializes starting and
 * stopping (vCPU threads: activate/reset; loop thread: quiesce/resume).
 * The I/O thread never takes vdev->lock itself; it takes only what
 * vq_pop/vq_push/vq_notify and virtio_dev_set_needs_reset take.
 *
 * State: nothing beyond the transport's (queues, features, status): no
 * request is in flight after quiesce.  save() records the capacity, the
 * read-only flag and the serial so that load() refuses a destination
 * whose disk the guest would see differently.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "godwit/dev.h"
#include "godwit/le.h"
#include "godwit/log.h"
#include "godwit/virtio.h"
#include "godwit/vm.h"

/* Feature bits (5.2.3). */
#define VIRTIO_BLK_F_SIZE_MAX      1
#define VIRTIO_BLK_F_SEG_MAX       2
#define VIRTIO_BLK_F_RO            5
#define VIRTIO_BLK_F_BLK_SIZE      6
#define VIRTIO_BLK_F_FLUSH         9
#define VIRTIO_BLK_F_DISCARD       13
#define VIRTIO_BLK_F_WRITE_ZEROES  14

/* Request types (5.2.6). */
#define VIRTIO_BLK_T_IN            0
#define VIRTIO_BLK_T_OUT           1
#define VIRTIO_BLK_T_FLUSH         4
#define VIRTIO_BLK_T_GET_ID        8
#define VIRTIO_BLK_T_DISCARD       11
#define VIRTIO_BLK_T_WRITE_ZEROES  13

#define VIRTIO_BLK_S_OK            0
#define VIRTIO_BLK_S_IOERR         1
#define VIRTIO_BLK_S_UNSUPP        2

#define VIRTIO_BLK_WZ_UNMAP        1u   /* discard/write-zeroes segment flag */

#define BLK_SECTOR         512u
#define BLK_HDR_LEN        16u          /* le32 type, le32 reserved, le64 sector */
#define BLK_DWZ_SEG_LEN    16u          /* le64 sector, le32 num_sectors, le32 flags */
#define BLK_ID_BYTES       DISK_SERIAL_MAX
#define BLK_QUEUE_SIZE     256u
/* Segments per request the driver may use: QEMU's queue size - 2 (header, status). */
#define BLK_SEG_MAX        (BLK_QUEUE_SIZE - 2)
/* Per-segment and per-request limits for DISCARD and WRITE_ZEROES (1 GiB). */
#define BLK_MAX_DWZ_SECTORS (1u << 21)
#define BLK_MAX_DWZ_SEG    32u
/* Notify after this many completions even if more chains are waiting. */
#define BLK_BATCH          16u
/* Backend I/O errors logged per device (then silence: the guest sees IOERR). */
#define BLK_MAX_IOERR_LOGS 10u

/* Config space offsets (5.2.4); the layout up to unused1, 60 bytes. */
#define CFG_CAPACITY             0
#define CFG_SIZE_MAX             8
#define CFG_SEG_MAX              12
#define CFG_BLK_SIZE             20
#define CFG_MAX_DISCARD_SECTORS  36
#define CFG_MAX_DISCARD_SEG      40
#define CFG_DISCARD_ALIGNMENT    44
#define CFG_MAX_WZ_SECTORS       48
#define CFG_MAX_WZ_SEG           52
#define CFG_WZ_MAY_UNMAP         56
#define BLK_CONFIG_SIZE          60

/* save/load tags: never renumber or reuse. */
#define BLK_TAG_CAPACITY  1     /* u64 sectors */
#define BLK_TAG_READONLY  2     /* u8 */
#define BLK_TAG_SERIAL    3     /* bytes, up to 20 */
#define BLK_TAG_FEATURES  4     /* u64: the device-specific bits offered */

struct blk {
	struct virtio_dev vdev;
	char *spec;                     /* the option's argument, for messages */
	char *path;
	int fd;
	bool readonly;
	bool locked;                    /* holds the image's OFD lock (not on an incoming VM until COMMIT) */
	bool moving;                    /* storage migration: the image is copied, not handed over */
	/* Storage migration: blocks written since tracking began (BLK_TRACK_SHIFT). */
	_Atomic(uint64_t *) track;      /* allocated once, freed at close */
	atomic_bool tracking;
	char serial[BLK_ID_BYTES];      /* not NUL-terminated when 20 bytes long */
	size_t serial_len;
	uint64_t capacity;              /* sectors */
	bool can_punch;                 /* FALLOC_FL_PUNCH_HOLE works */
	atomic_bool can_zero_range;     /* FALLOC_FL_ZERO_RANGE works (until it fails) */
	uint64_t features;              /* device-specific bits offered */
	uint8_t config[BLK_CONFIG_SIZE];

	/* The I/O thread. */
	pthread_mutex_t ctl;            /* start/stop; never held by the I/O thread */
	struct virtio_worker worker;    /* under ctl */
	atomic_bool stop;               /* return to the worker after this request */
	atomic_bool broken;             /* a malformed ring: serve nothing until reset */
	unsigned int ioerr_logs;

	/*
	 * I/O counters for GET /metrics (dev.h: STAT_ADD by whoever serves a
	 * request, read by the API).  Not guest state: never saved.
	 */
	_Atomic uint64_t n_req[DEV_BLK_NR_OPS], n_read_bytes, n_write_bytes, n_errors;

	/* Owned by the I/O thread (or a unit test calling virtio_blk_handle). */
	struct vq_elem *elem;
	struct iovec *slice;            /* VQ_MAX_SEGS segments: one data range */
};

/* Exported for tests/unit/test_blk.c (prototypes here: no header of its own). */
int virtio_blk_open(const char *spec, struct blk **out) __must_check;
void virtio_blk_close(struct blk *b);
struct virtio_dev *virtio_blk_vdev(struct blk *b);
uint32_t virtio_blk_handle(struct blk *b, const struct vq_elem *e, uint8_t *status);

static const uint8_t blk_zeros[64 * KiB];
#define BLK_TRACK_SHIFT 16              /* dirty-block granularity: 64 KiB */
static const struct virtio_dev_ops blk_vdev_ops;
static void blk_stop_locked(struct blk *b);

/* ---- the image ------------------------------------------------------------------ */

/*
 * blk_lock - the whole-file OFD lock: shared for read-only disks, exclusive
 * otherwise.  OFD locks belong to this open file description, so they also
 * stop the same image being given twice to one VM with a writer among them.
 * A migration destination takes it only at COMMIT, once the source let it
 * go (wait_ms: how long to retry a lock still held).  Returns 0, -EBUSY
 * (held elsewhere) or -errno, after logging why.
 */
static int blk_lock(struct blk *b, unsigned int wait_ms)
{
	struct flock fl = { .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };

	fl.l_type = b->readonly ? F_RDLCK : F_WRLCK;
	for (unsigned int waited = 0; ; waited += 10) {
		if (fcntl(b->fd, F_OFD_SETLK, &fl) == 0) {
			b->locked = true;
			return 0;
		}
		if (errno != EAGAIN && errno != EACCES) {
			int ret = -errno;

			log_warn("--disk %s: cannot lock %s", b->spec, b->path);
			return ret;
		}
		if (waited >= wait_ms) {
			log_warnx("disk %s is in use by another VM (locked)", b->path);
			return -EBUSY;
		}
		usleep(10000);
	}
}

/*
 * Let another VM lock the image (migration source, at COMMIT).  blk_quiesce
 * already flushed it; the fdatasync here finds nothing left in the normal
 * case and only guards a write that came after.
 */
static int blk_release(struct virtio_dev *vdev)
{
	struct blk *b = vdev->priv;
	struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET };

	/* A copied image stays this VM's: the destination has its own. */
	if (!b->locked || b->moving)
		return 0;
	if (!b->readonly && fdatasync(b->fd)) {
		int ret = -errno;

		log_warn("disk %s: cannot flush before handing it over", b->path);
		return ret;
	}
	if (fcntl(b->fd, F_OFD_SETLK, &fl)) {
		int ret = -errno;

		log_warn("disk %s: cannot unlock", b->path);
		return ret;
	}
	b->locked = false;
	return 0;
}

/* Take the lock (back): the destination at COMMIT, a source resuming. */
static int blk_acquire(struct virtio_dev *vdev)
{
	struct blk *b = vdev->priv;

	return b->locked ? 0 : blk_lock(b, 2000);
}

/*
 * blk_open_image - open b->path, lock it (unless defer_lock: an incoming
 * VM's), find the capacity and what fallocate can do.  Returns 0 or -errno
 * after logging why.
 */
static int blk_open_image(struct blk *b, bool defer_lock)
{
	struct stat st;
	uint64_t size;
	int ret;

	b->fd = open(b->path, (b->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (b->fd < 0) {
		ret = -errno;
		if (!b->readonly && (errno == EACCES || errno == EROFS) &&
		    access(b->path, R_OK) == 0)
			log_warn("--disk %s: cannot open %s for writing (add ,readonly?)", b->spec,
				 b->path);
		else
			log_warn("--disk %s: cannot open %s", b->spec, b->path);
		return ret;
	}
	if (fstat(b->fd, &st)) {
		ret = -errno;
		log_warn("--disk %s: stat %s", b->spec, b->path);
		return ret;
	}
	if (S_ISDIR(st.st_mode)) {
		log_warnx("--disk %s: %s is a directory, not a raw disk image", b->spec, b->path);
		return -EISDIR;
	}
	if (S_ISREG(st.st_mode)) {
		size = (uint64_t)st.st_size;
	} else if (S_ISBLK(st.st_mode)) {
		if (ioctl(b->fd, BLKGETSIZE64, &size)) {
			ret = -errno;
			log_warn("--disk %s: cannot get the size of %s", b->spec, b->path);
			return ret;
		}
	} else {
		log_warnx("--disk %s: %s is not a regular file or a block device", b->spec, b->path);
		return -EINVAL;
	}

	if (!defer_lock) {
		ret = blk_lock(b, 0);
		if (ret)
			return ret;
	}

	/*
	 * A trailing partial sector would be invisible to the guest and a size
	 * it cannot see is almost certainly a mistake (a truncated download, a
	 * qcow2 file): refuse rather than silently hide bytes.
	 */
	if (size == 0) {
		log_warnx("--disk %s: %s is empty (create it with e.g. truncate -s 64M %s)",
			  b->spec, b->path, b->path);
		return -EINVAL;
	}
	if (size % BLK_SECTOR) {
		log_warnx("--disk %s: the size of %s, %llu bytes, is not a multiple of 512",
			  b->spec, b->path, (unsigned long long)size);
		return -EINVAL;
	}
	b->capacity = size / BLK_SECTOR;

	/*
	 * Probes that touch no data: punching a hole beyond the end with
	 * KEEP_SIZE changes nothing where it is supported.  ZERO_RANGE cannot be
	 * probed without allocating, so it is tried on the first WRITE_ZEROES and
	 * replaced by plain writes if the file system lacks it.
	 */
	if (!b->readonly && S_ISREG(st.st_mode))
		b->can_punch = fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					 (off_t)size, BLK_SECTOR) == 0;
	atomic_store(&b->can_zero_range, !b->readonly && S_ISREG(st.st_mode));
	return 0;
}

/* Offered features and the config space, from what blk_open_image found. */
static void blk_build_config(struct blk *b)
{
	unsigned int align = 8;         /* sectors: 4 KiB unless the file system says more */
	struct stat st;

	b->features = 1ULL << VIRTIO_BLK_F_SEG_MAX | 1ULL << VIRTIO_BLK_F_BLK_SIZE |
		      1ULL << VIRTIO_BLK_F_FLUSH;
	if (b->readonly)
		b->features |= 1ULL << VIRTIO_BLK_F_RO;
	if (b->can_punch)
		b->features |= 1ULL << VIRTIO_BLK_F_DISCARD;
	/* Always correct when writable: the fallback writes zeroes. */
	if (!b->readonly)
		b->features |= 1ULL << VIRTIO_BLK_F_WRITE_ZEROES;
	if (!fstat(b->fd, &st) && st.st_blksize > (blksize_t)BLK_SECTOR &&
	    st.st_blksize <= (blksize_t)(1 * MiB))
		align = (unsigned int)(st.st_blksize / BLK_SECTOR);

	memset(b->config, 0, sizeof(b->config));
	le64_put(b->config + CFG_CAPACITY, b->capacity);
	/* No SIZE_MAX: a single segment may be any size. */
	le32_put(b->config + CFG_SEG_MAX, BLK_SEG_MAX);
	le32_put(b->config + CFG_BLK_SIZE, BLK_SECTOR);
	if (b->can_punch) {
		le32_put(b->config + CFG_MAX_DISCARD_SECTORS, BLK_MAX_DWZ_SECTORS);
		le32_put(b->config + CFG_MAX_DISCARD_SEG, BLK_MAX_DWZ_SEG);
		le32_put(b->config + CFG_DISCARD_ALIGNMENT, align);
	}
	if (!b->readonly) {
		le32_put(b->config + CFG_MAX_WZ_SECTORS, BLK_MAX_DWZ_SECTORS);
		le32_put(b->config + CFG_MAX_WZ_SEG, BLK_MAX_DWZ_SEG);
		b->config[CFG_WZ_MAY_UNMAP] = b->can_punch;
	}
}

/*
 * virtio_blk_close - stop the I/O thread if any, close the image (which
 * drops its lock) and free b.  NULL is a no-op.
 */
void virtio_blk_close(struct blk *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&b->ctl);
	blk_stop_locked(b);             /* normally done: reset comes first */
	pthread_mutex_unlock(&b->ctl);
	if (b->fd >= 0)
		close(b->fd);
	pthread_mutex_destroy(&b->ctl);
	free(atomic_load(&b->track));
	free(b->elem);
	free(b->slice);
	free(b->path);
	free(b->spec);
	free(b);
}

/*
 * virtio_blk_open - parse spec (`FILE[,readonly][,serial=ID]`), open and
 * lock the image and build the config space; no VM needed (unit tests).
 * Returns 0 and *out, or -errno after logging a message that names the
 * option: -EINVAL (bad spec, bad size), -ENOENT/-EACCES/... (open),
 * -EISDIR, -EBUSY (locked by another VM), -ENOMEM.
 */
static int blk_open(const char *spec, const struct disk_spec *ds, bool defer_lock,
		    struct blk **out)
{
	struct blk *b = calloc(1, sizeof(*b));
	int ret = -ENOMEM;

	*out = NULL;
	if (!b)
		return -ENOMEM;
	b->fd = -1;
	b->worker.stop_fd = -1;
	pthread_mutex_init(&b->ctl, NULL);
	b->spec = strdup(spec);
	b->elem = malloc(sizeof(*b->elem));
	b->slice = calloc(VQ_MAX_SEGS, sizeof(*b->slice));
	b->path = strdup(ds->path);
	if (!b->spec || !b->path || !b->elem || !b->slice)
		goto err;
	b->readonly = ds->readonly;
	b->serial_len = strlen(ds->serial);
	memcpy(b->serial, ds->serial, b->serial_len);
	ret = blk_open_image(b, defer_lock);
	if (ret)
		goto err;
	blk_build_config(b);
	b->vdev.ops = &blk_vdev_ops;
	b->vdev.priv = b;
	*out = b;
	return 0;
err:
	virtio_blk_close(b);
	return ret;
}

int virtio_blk_open(const char *spec, struct blk **out)
{
	struct disk_spec ds;
	char err[256];
	int ret;

	*out = NULL;
	ret = disk_spec_parse(spec, &ds, err, sizeof(err));
	if (ret) {
		log_warnx("--disk %s: %s", spec, err);
		return ret;
	}
	return blk_open(spec, &ds, false, out);
}

struct virtio_dev *virtio_blk_vdev(struct blk *b)
{
	return &b->vdev;
}

/* ---- requests ------------------------------------------------------------------- */

/*
 * iov_slice - the segments covering bytes [off, off + len) of src[0..n),
 * into dst (at most VQ_MAX_SEGS).  Returns their count, or -1 if the range
 * goes beyond src.
 */
static int iov_slice(const struct iovec *src, unsigned int n, uint64_t off, uint64_t len,
		     struct iovec *dst)
{
	unsigned int i, k = 0;

	for (i = 0; i < n && off >= src[i].iov_len; i++)
		off -= src[i].iov_len;
	for (; i < n && len; i++) {
		uint64_t take = MIN((uint64_t)src[i].iov_len - off, len);

		if (!take)
			continue;
		if (k == VQ_MAX_SEGS)
			return -1;
		dst[k].iov_base = (uint8_t *)src[i].iov_base + off;
		dst[k].iov_len = (size_t)take;
		k++;
		len -= take;
		off = 0;
	}
	return len ? -1 : (int)k;
}

/* Copy bytes [off, off + len) of src[0..n) to dst; false if beyond. */
static bool iov_copy_from(const struct iovec *src, unsigned int n, uint64_t off, void *dst,
			  size_t len)
{
	uint8_t *d = dst;
	unsigned int i;

	for (i = 0; i < n && off >= src[i].iov_len; i++)
		off -= src[i].iov_len;
	for (; i < n && len; i++) {
		size_t take = MIN(src[i].iov_len - (size_t)off, len);

		memcpy(d, (uint8_t *)src[i].iov_base + off, take);
		d += take;
		len -= take;
		off = 0;
	}
	return len == 0;
}

/* Copy len bytes from src into dst[0..n) from byte off; false if beyond. */
static bool iov_copy_to(const struct iovec *dst, unsigned int n, uint64_t off, const void *src,
			size_t len)
{
	const uint8_t *s = src;
	unsigned int i;

	for (i = 0; i < n && off >= dst[i].iov_len; i++)
		off -= dst[i].iov_len;
	for (; i < n && len; i++) {
		size_t take = MIN(dst[i].iov_len - (size_t)off, len);

		memcpy((uint8_t *)dst[i].iov_base + off, s, take);
		s += take;
		len -= take;
		off = 0;
	}
	return len == 0;
}

/*
 * blk_rw - read or write all of iov[0..n) at file offset off, resuming
 * after short transfers (preadv caps one call near 2 GiB; signals).
 * Returns 0, -EIO at an early end of file, or -errno.
 */
static int blk_rw(struct blk *b, struct iovec *iov, int n, off_t off, bool write)
{
	while (n > 0) {
		ssize_t r = write ? pwritev(b->fd, iov, MIN(n, IOV_MAX), off) :
				    preadv(b->fd, iov, MIN(n, IOV_MAX), off);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EIO;    /* the image shrank under us */
		off += r;
		iov_advance(&iov, &n, (size_t)r);
	}
	return 0;
}

/* Write zeroes over [off, off + len) with plain writes. */
static int blk_write_zeroes_slow(struct blk *b, off_t off, uint64_t len)
{
	while (len) {
		size_t n = (size_t)MIN(len, sizeof(blk_zeros));
		ssize_t r = pwrite(b->fd, blk_zeros, n, off);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EIO;
		off += r;
		len -= (uint64_t)r;
	}
	return 0;
}

/* Storage migration: the blocks of [off, off + len) were (maybe) written. */
static void blk_track_mark(struct blk *b, uint64_t off, uint64_t len)
{
	uint64_t *map;

	if (!len || !atomic_load_explicit(&b->tracking, memory_order_acquire))
		return;
	map = atomic_load(&b->track);
	for (uint64_t blk = off >> BLK_TRACK_SHIFT; blk <= (off + len - 1) >> BLK_TRACK_SHIFT; blk++)
		__atomic_fetch_or(&map[blk / 64], 1ULL << (blk % 64), __ATOMIC_RELEASE);
}

static void blk_ioerr(struct blk *b, const char *what, uint64_t sector, int err)
{
	if (b->ioerr_logs >= BLK_MAX_IOERR_LOGS)
		return;
	b->ioerr_logs++;
	log_warnx("virtio-blk %s: %s at sector %llu failed: %s%s", b->path, what,
		  (unsigned long long)sector, strerror(-err),
		  b->ioerr_logs == BLK_MAX_IOERR_LOGS ? " (further errors not logged)" : "");
}

/* True if [sector, sector + nsec) lies within the disk (no overflow). */
static bool blk_in_range(const struct blk *b, uint64_t sector, uint64_t nsec)
{
	return sector <= b->capacity && nsec <= b->capacity - sector;
}

/*
 * blk_discard_wz - DISCARD or WRITE_ZEROES: `data_len` bytes of 16-byte
 * segments after the header in the device-readable part.  Every segment
 * is checked before any is acted on.  Returns a VIRTIO_BLK_S_* status.
 */
static uint8_t blk_discard_wz(struct blk *b, const struct vq_elem *e, uint64_t data_len,
			      bool discard)
{
	uint8_t seg[BLK_DWZ_SEG_LEN];
	uint64_t n = data_len / BLK_DWZ_SEG_LEN;

	if (data_len % BLK_DWZ_SEG_LEN || n == 0 || n > BLK_MAX_DWZ_SEG) {
		log_debug("virtio-blk %s: %s with %llu bytes of segments", b->path,
			  discard ? "discard" : "write-zeroes", (unsigned long long)data_len);
		return VIRTIO_BLK_S_IOERR;
	}
	for (int pass = 0; pass < 2; pass++) {
		for (uint64_t i = 0; i < n; i++) {
			uint64_t sector;
			uint32_t nsec, flags;
			off_t off;
			int ret;

			if (!iov_copy_from(e->iov, e->n_out, BLK_HDR_LEN + i * BLK_DWZ_SEG_LEN,
					   seg, sizeof(seg)))
				return VIRTIO_BLK_S_IOERR;   /* cannot happen: out_len checked */
			sector = le64_get(seg);
			nsec = le32_get(seg + 8);
			flags = le32_get(seg + 12);
			if (pass == 0) {
				/* 5.2.6.2: unmap on discard and unknown flags are UNSUPP. */
				if ((flags & ~VIRTIO_BLK_WZ_UNMAP) ||
				    (discard && (flags & VIRTIO_BLK_WZ_UNMAP)))
					return VIRTIO_BLK_S_UNSUPP;
				if (nsec > BLK_MAX_DWZ_SECTORS || !blk_in_range(b, sector, nsec))
					return VIRTIO_BLK_S_IOERR;
				continue;
			}
			if (!nsec)
				continue;
			off = (off_t)(sector * BLK_SECTOR);
			if (discard || ((flags & VIRTIO_BLK_WZ_UNMAP) && b->can_punch)) {
				/* Reads of a hole return zeroes, as write-zeroes requires. */
				ret = fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off,
						(off_t)nsec * BLK_SECTOR) ? -errno : 0;
			} else {
				ret = -EOPNOTSUPP;
				if (atomic_load(&b->can_zero_range)) {
					ret = fallocate(b->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
							off, (off_t)nsec * BLK_SECTOR) ? -errno : 0;
					if (ret == -EOPNOTSUPP)
						atomic_store(&b->can_zero_range, false);
				}
				if (ret == -EOPNOTSUPP)
					ret = blk_write_zeroes_slow(b, off, (uint64_t)nsec * BLK_SECTOR);
			}
			blk_track_mark(b, (uint64_t)off, (uint64_t)nsec * BLK_SECTOR);
			if (ret) {
				blk_ioerr(b, discard ? "discard" : "write-zeroes", sector, ret);
				return VIRTIO_BLK_S_IOERR;
			}
		}
	}
	return VIRTIO_BLK_S_OK;
}

/* Count one answered request of type with status st (moved: data bytes read or written). */
static void blk_count(struct blk *b, uint32_t type, uint8_t st, uint64_t moved)
{
	enum dev_blk_op op;

	switch (type) {
	case VIRTIO_BLK_T_IN:           op = DEV_BLK_READ; break;
	case VIRTIO_BLK_T_OUT:          op = DEV_BLK_WRITE; break;
	case VIRTIO_BLK_T_FLUSH:        op = DEV_BLK_FLUSH; break;
	case VIRTIO_BLK_T_DISCARD:      op = DEV_BLK_DISCARD; break;
	case VIRTIO_BLK_T_WRITE_ZEROES: op = DEV_BLK_WRITE_ZEROES; break;
	case VIRTIO_BLK_T_GET_ID:       op = DEV_BLK_GET_ID; break;
	default:                        op = DEV_BLK_OTHER; break;
	}
	STAT_ADD(b->n_req[op], 1);
	if (st != VIRTIO_BLK_S_OK)
		STAT_ADD(b->n_errors, 1);
	else if (op == DEV_BLK_READ)
		STAT_ADD(b->n_read_bytes, moved);
	else if (op == DEV_BLK_WRITE)
		STAT_ADD(b->n_write_bytes, moved);
}

static void blk_stats(struct virtio_dev *vdev, struct dev_stats *st)
{
	struct blk *b = vdev->priv;

	st->kind = DEV_STATS_BLK;
	st->label = b->path;
	for (int i = 0; i < DEV_BLK_NR_OPS; i++)
		st->blk.requests[i] = STAT_GET(b->n_req[i]);
	st->blk.read_bytes = STAT_GET(b->n_read_bytes);
	st->blk.write_bytes = STAT_GET(b->n_write_bytes);
	st->blk.errors = STAT_GET(b->n_errors);
}

/*
 * virtio_blk_handle - serve one request chain e.  Writes the status byte
 * (also returned in *status, for tests) into the last device-writable
 * byte.  Returns the byte count to report to vq_push(): every writable
 * byte (data and status) once the status byte is written, or 0 for a
 * chain with no writable byte, which cannot be answered.  The caller owns
 * e; the iovecs must point into guest RAM (vq_pop checked them).
 */
uint32_t virtio_blk_handle(struct blk *b, const struct vq_elem *e, uint8_t *status)
{
	const struct iovec *in = e->iov + e->n_out;
	uint8_t hdr[BLK_HDR_LEN], st = VIRTIO_BLK_S_IOERR;
	uint64_t out_data, in_data, sector = 0, moved = 0;
	uint32_t type = UINT32_MAX;
	int n, ret;

	*status = VIRTIO_BLK_S_IOERR;
	if (NEVER(e->n_out + e->n_in > VQ_MAX_SEGS))
		return 0;
	if (e->in_len == 0 || e->in_len > UINT32_MAX) {
		/* No status byte to write (or a used.len that cannot say it): drop it. */
		log_debug("virtio-blk %s: request with %llu writable bytes", b->path,
			  (unsigned long long)e->in_len);
		return 0;
	}
	in_data = e->in_len - 1;
	if (e->out_len < BLK_HDR_LEN) {
		log_debug("virtio-blk %s: request header of %llu bytes", b->path,
			  (unsigned long long)e->out_len);
		goto done;
	}
	out_data = e->out_len - BLK_HDR_LEN;
	if (!iov_copy_from(e->iov, e->n_out, 0, hdr, sizeof(hdr)))
		goto done;      /* cannot happen: out_len covers it */
	type = le32_get(hdr);
	sector = le64_get(hdr + 8);

	switch (type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT: {
		bool write = type == VIRTIO_BLK_T_OUT;
		uint64_t len = write ? out_data : in_data;

		/* Data one way only, a whole number of sectors, within the disk. */
		if ((write ? in_data : out_data) || len % BLK_SECTOR ||
		    !blk_in_range(b, sector, len / BLK_SECTOR)) {
			log_debug("virtio-blk %s: bad %s: sector %llu, %llu bytes in, %llu out",
				  b->path, write ? "write" : "read", (unsigned long long)sector,
				  (unsigned long long)in_data, (unsigned long long)out_data);
			break;
		}
		if (write && b->readonly)
			break;
		if (!len) {
			st = VIRTIO_BLK_S_OK;
			break;
		}
		n = write ? iov_slice(e->iov, e->n_out, BLK_HDR_LEN, len, b->slice) :
			    iov_slice(in, e->n_in, 0, len, b->slice);
		if (n < 0)
			break;
		ret = blk_rw(b, b->slice, n, (off_t)(sector * BLK_SECTOR), write);
		/* After the write: a copier that read the block before it sees the bit. */
		if (write)
			blk_track_mark(b, sector * BLK_SECTOR, len);
		if (!ret && write && !virtio_has_feature(&b->vdev, VIRTIO_BLK_F_FLUSH))
			ret = fdatasync(b->fd) ? -errno : 0;    /* no FLUSH: write-through */
		if (ret) {
			blk_ioerr(b, write ? "write" : "read", sector, ret);
			break;
		}
		st = VIRTIO_BLK_S_OK;
		moved = len;
		break;
	}
	case VIRTIO_BLK_T_FLUSH:
		if (in_data || out_data)
			break;
		/* Data on stable storage before the guest can see the status. */
		if (fdatasync(b->fd)) {
			blk_ioerr(b, "flush", 0, -errno);
			break;
		}
		st = VIRTIO_BLK_S_OK;
		break;
	case VIRTIO_BLK_T_GET_ID: {
		uint8_t id[BLK_ID_BYTES] = { 0 };

		if (out_data || in_data < BLK_ID_BYTES)
			break;
		memcpy(id, b->serial, b->serial_len);
		if (!iov_copy_to(in, e->n_in, 0, id, sizeof(id)))
			break;
		/* A longer buffer gets zeroes after the 20 bytes. */
		for (uint64_t off = BLK_ID_BYTES; off < in_data; off += sizeof(blk_zeros)) {
			size_t len = (size_t)MIN(in_data - off, sizeof(blk_zeros));

			if (!iov_copy_to(in, e->n_in, off, blk_zeros, len))
				break;
		}
		st = VIRTIO_BLK_S_OK;
		break;
	}
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES: {
		bool discard = type == VIRTIO_BLK_T_DISCARD;
		unsigned int feat = discard ? VIRTIO_BLK_F_DISCARD : VIRTIO_BLK_F_WRITE_ZEROES;

		if (b->readonly)
			break;          /* a write: IOERR like OUT, though neither is offered */
		if (!(b->features & (1ULL << feat)) || !virtio_has_feature(&b->vdev, feat)) {
			st = VIRTIO_BLK_S_UNSUPP;
			break;
		}
		if (in_data)
			break;
		st = blk_discard_wz(b, e, out_data, discard);
		break;
	}
	default:
		st = VIRTIO_BLK_S_UNSUPP;
		break;
	}
done:
	*status = st;
	blk_count(b, type, st, moved);
	if (!iov_copy_to(in, e->n_in, in_data, &st, 1))
		return 0;       /* cannot happen: in_len covers it */
	return (uint32_t)e->in_len;
}

/* ---- the I/O thread --------------------------------------------------------------- */

/*
 * blk_serve - the worker's callback for queue 0 (the kick is drained):
 * pop and serve chains until the ring is empty or a stop is requested,
 * notifying after each batch.  After a malformed ring the device is in
 * NEEDS_RESET and serves nothing until the driver resets it.
 */
static void blk_serve(struct virtqueue *vq)
{
	struct blk *b = vq->vdev->priv;
	unsigned int done = 0;
	uint8_t status;
	int ret;

	while (!atomic_load(&b->broken) && !atomic_load(&b->stop)) {
		ret = vq_pop(vq, b->elem);
		if (ret < 0) {
			atomic_store(&b->broken, true);
			virtio_dev_set_needs_reset(&b->vdev, "virtio-blk: malformed descriptor chain");
		}
		if (ret <= 0)
			break;
		vq_push(vq, b->elem, virtio_blk_handle(b, b->elem, &status));
		if (++done % BLK_BATCH == 0)
			vq_notify(vq);
	}
	if (done % BLK_BATCH)
		vq_notify(vq);
}

/* Start the I/O thread unless it runs; under b->ctl. */
static int blk_start_locked(struct blk *b)
{
	struct virtqueue *vq = &b->vdev.vqs[0];
	int ret;

	if (b->worker.running)
		return 0;
	if (!vq->enabled || !vq->size)
		return 0;               /* nothing to serve: the driver did not set it up */
	atomic_store(&b->stop, false);
	atomic_store(&b->broken, false);
	ret = virtio_worker_start(&b->worker, &b->vdev, "godwit-blk", 1u << 0, blk_serve);
	/*
	 * The worker looks at the ring once when it starts: chains whose kick
	 * was consumed before a quiesce, or that were kicked on the source
	 * (after load), are served without a new kick.
	 */
	if (ret)
		log_warnx("virtio-blk %s: cannot start its I/O thread: %s", b->path, strerror(-ret));
	return ret;
}

/*
 * Stop the I/O thread: `stop` makes it return after the request it is
 * serving (pushed and notified), instead of emptying the ring first, so a
 * quiesce waits for one request at most.  Under b->ctl.
 */
static void blk_stop_locked(struct blk *b)
{
	if (!b->worker.running)
		return;
	atomic_store(&b->stop, true);
	virtio_worker_stop(&b->worker);
}

/* ---- virtio_dev_ops ------------------------------------------------------------------ */

static uint64_t blk_features(struct virtio_dev *vdev)
{
	struct blk *b = vdev->priv;

	return b->features;
}

static void blk_config_read(struct virtio_dev *vdev, uint32_t off, void *data, uint32_t len)
{
	struct blk *b = vdev->priv;

	virtio_config_read_bytes(b->config, BLK_CONFIG_SIZE, off, data, len);
}

static int blk_activate(struct virtio_dev *vdev)
{
	struct blk *b = vdev->priv;
	int ret;

	pthread_mutex_lock(&b->ctl);
	ret = blk_start_locked(b);
	pthread_mutex_unlock(&b->ctl);
	return ret;
}

static void blk_reset(struct virtio_dev *vdev)
{
	struct blk *b = vdev->priv;

	pthread_mutex_lock(&b->ctl);
	blk_stop_locked(b);
	atomic_store(&b->broken, false);
	pthread_mutex_unlock(&b->ctl);
}

/* Migration: the popped requests complete; the rest stay in the avail ring. */
static int blk_quiesce(struct virtio_dev *vdev)
{
	struct blk *b = vdev->priv;
	int ret = 0;

	pthread_mutex_lock(&b->ctl);
	blk_stop_locked(b);
	pthread_mutex_unlock(&b->ctl);
	/*
	 * What the guest wrote goes to stable storage now, while the VM is paused
	 * and before the state is sent: a migration's COMMIT then only hands the
	 * lock over (blk_release has nothing left to flush).
	 */
	if (b->locked && !b->readonly && !b->moving && fdatasync(b->fd)) {
		ret = -errno;
		log_warn("disk %s: cannot flush", b->path);
	}
	return ret;
}

/* Serve again if the driver had the device running (also after load). */
static int blk_resume(struct virtio_dev *vdev)
{
	return virtio_dev_driver_ok(vdev) ? blk_activate(vdev) : 0;
}

struct blk_image {
	uint64_t capacity;
	uint8_t readonly;
	struct state_bytes serial;
	uint64_t features;
};
#define IMG struct blk_image
static const struct state_desc blk_fields[] = {
	STATE_INT(BLK_TAG_CAPACITY, IMG, capacity, STATE_ANY, 1),
	STATE_INT(BLK_TAG_READONLY, IMG, readonly, 1, 1),
	STATE_BYTES(BLK_TAG_SERIAL, IMG, serial, 0, BLK_ID_BYTES, 1),
	/* The transport checks the offered features as a whole. */
	STATE_INT(BLK_TAG_FEATURES, IMG, features, STATE_ANY, 1),
};
#undef IMG

static int blk_save(struct virtio_dev *vdev, struct state_out *out)
{
	struct blk *b = vdev->priv;
	struct blk_image img = {
		.capacity = b->capacity,
		.readonly = b->readonly,
		.serial = { (const uint8_t *)b->serial, (uint32_t)b->serial_len },
		.features = b->features,
	};

	return state_save_fields(out, blk_fields, ARRAY_SIZE(blk_fields), &img);
}

/*
 * The guest keeps the disk it had: the destination's image must have the
 * same capacity, read-only flag and serial (config invariants, bhyve's
 * SNAPSHOT_VAR_CMP_OR_LEAVE).
 */
static int blk_load(struct virtio_dev *vdev, struct state_in *in, uint16_t version)
{
	struct blk *b = vdev->priv;
	struct blk_image v = { 0 };
	int ret;

	ret = state_load_fields(in, blk_fields, ARRAY_SIZE(blk_fields), &v, version);
	if (ret)
		return ret;
	if (v.capacity != b->capacity) {
		log_warnx("virtio-blk %s: the source's disk has %llu sectors, this one %llu",
			  b->path, (unsigned long long)v.capacity, (unsigned long long)b->capacity);
		return -EINVAL;
	}
	if ((bool)v.readonly != b->readonly) {
		log_warnx("virtio-blk %s: readonly differs from the source's disk", b->path);
		return -EINVAL;
	}
	if (v.serial.len != b->serial_len || memcmp(v.serial.p, b->serial, v.serial.len)) {
		log_warnx("virtio-blk %s: serial differs from the source's disk", b->path);
		return -EINVAL;
	}
	return 0;
}

/* Teardown, after reset: close the image (dropping its lock) and free the device. */
static void blk_destroy(struct virtio_dev *vdev)
{
	virtio_blk_close(vdev->priv);
}

static const struct dev_disk_ops blk_disk_ops;

static const struct virtio_dev_ops blk_vdev_ops = {
	.name = "virtio-blk",
	.stats = blk_stats,
	.device_id = 2,
	.pci_class = 0x0180,            /* mass storage, other */
	.nr_queues = 1,
	.queue_max_size = BLK_QUEUE_SIZE,
	.config_size = BLK_CONFIG_SIZE,
	.features = blk_features,
	.config_read = blk_config_read,
	/* No config_write: `writeback` exists only with CONFIG_WCE, not offered. */
	.activate = blk_activate,
	.reset = blk_reset,
	.quiesce = blk_quiesce,
	.resume = blk_resume,
	.save = blk_save,
	.load = blk_load,
	.release = blk_release,
	.acquire = blk_acquire,
	.destroy = blk_destroy,
	.disk = &blk_disk_ops,
};

/*
 * virtio_blk_add - `--disk FILE[,readonly][,serial=ID]`: a virtio-blk
 * device on the raw image FILE in PCI slot `slot`.
 * Returns 0, or -errno after logging why (see virtio_blk_open).
 */
int virtio_blk_add(struct vm *vm, unsigned int slot, const struct vm_device_arg *a)
{
	struct blk *b;
	int ret;

	ret = blk_open(a->spec, &a->disk, vm->cfg.incoming, &b);
	if (ret)
		return ret;
	b->vdev.vm = vm;
	ret = virtio_pci_add(vm, slot, &b->vdev);
	if (ret) {
		virtio_blk_close(b);
		return ret;
	}
	log_debug("virtio-blk %s: %llu sectors%s%s%.*s%s in slot %u", b->path,
		  (unsigned long long)b->capacity, b->readonly ? ", read-only" : "",
		  b->serial_len ? ", serial " : "", (int)b->serial_len, b->serial,
		  b->can_punch ? ", discard" : "", slot);
	return 0;
}

/* ---- storage migration (src/migration/disk.c) ------------------------------------- */

static struct blk *blk_of(struct dev *d)
{
	return virtio_pci_vdev(d)->priv;
}

static void blk_disk_image(struct dev *d, struct dev_disk_image *img)
{
	struct blk *b = blk_of(d);

	img->fd = b->fd;
	img->size = b->capacity * BLK_SECTOR;
	img->path = b->path;
	img->readonly = b->readonly;
	memcpy(img->serial, b->serial, b->serial_len);
	img->serial[b->serial_len] = '\0';
	img->block_shift = BLK_TRACK_SHIFT;
}

static int blk_track_start(struct dev *d)
{
	struct blk *b = blk_of(d);
	uint64_t words = ((b->capacity * BLK_SECTOR >> BLK_TRACK_SHIFT) + 64) / 64;
	uint64_t *map = atomic_load(&b->track);

	if (!map) {
		map = calloc(words, sizeof(uint64_t));
		if (!map)
			return -ENOMEM;
		atomic_store(&b->track, map);
	} else {
		for (uint64_t w = 0; w < words; w++)
			__atomic_store_n(&map[w], 0, __ATOMIC_RELAXED);
	}
	b->moving = true;
	atomic_store_explicit(&b->tracking, true, memory_order_release);
	return 0;
}

static void blk_track_stop(struct dev *d)
{
	struct blk *b = blk_of(d);

	atomic_store(&b->tracking, false);
	b->moving = false;
}

static uint64_t blk_track_take(struct dev *d, uint64_t *bitmap)
{
	struct blk *b = blk_of(d);
	uint64_t words = ((b->capacity * BLK_SECTOR >> BLK_TRACK_SHIFT) + 64) / 64, n = 0;
	uint64_t *map = atomic_load(&b->track);

	for (uint64_t w = 0; map && w < words; w++) {
		bitmap[w] |= __atomic_exchange_n(&map[w], 0, __ATOMIC_ACQ_REL);
		n += (uint64_t)__builtin_popcountll(bitmap[w]);
	}
	return n;
}

static const struct dev_disk_ops blk_disk_ops = {
	.image = blk_disk_image,
	.track_start = blk_track_start,
	.track_stop = blk_track_stop,
	.track_take = blk_track_take,
};