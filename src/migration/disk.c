/*
 * disk.c - storage migration (docs/migration.md, "Storage"): local disk
 * images copied to the destination while memory pre-copy runs.
 *
 * Source: the disks chosen by --with-disks (devices with a disk image,
 * dev_ops.disk) start dirty-block tracking (the device marks every block it
 * wrote, after the write), then
 * the first pass sends each image's data extents (SEEK_DATA/SEEK_HOLE; zero
 * blocks inside them are not sent either: the destination's image starts
 * as one hole), and every later pass sends the blocks written since the
 * previous one, data or ZERO.  The last pass runs with the VM paused and
 * the devices quiesced, so nothing is in flight.  The source image is only
 * ever read.
 *
 * Destination: each image named by --disk is created sparse at the
 * source's size (an existing non-empty file only with --overwrite, emptied
 * first), DISK sections are written into it as they come (a ZERO extent
 * punches a hole), and it is synced before READY.  On failure an image
 * this godwit created is removed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "godwit/dev.h"
#include "godwit/disk.h"
#include "godwit/log.h"
#include "godwit/stream.h"

#define DISK_PIECE  (1u << 20)          /* bytes read and sent at a time */
#define DISK_WRITEBACK (32u << 20)      /* destination: start writeback this often */

struct disk_src {
	struct dev *d;                  /* a device with a disk image (dev_ops.disk) */
	struct dev_disk_image img;
	uint32_t instance;
	uint64_t blocks, words, *bitmap;
};

struct disk_mig {
	unsigned int n;
	struct disk_src d[STREAM_MAX_DISKS];
	uint8_t *buf;
	struct disk_mig_stats st;
};

static bool serial_listed(const char (*serials)[DISK_SERIAL_MAX + 1], unsigned int n,
			  const char *serial)
{
	for (unsigned int i = 0; i < n; i++)
		if (!strcmp(serials[i], serial))
			return true;
	return false;
}

int disk_mig_select(struct vm *vm, const char (*serials)[DISK_SERIAL_MAX + 1], unsigned int n,
		    struct disk_mig **out, char *err, size_t len)
{
	struct disk_mig *dm = calloc(1, sizeof(*dm));

	*out = NULL;
	if (!dm) {
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	for (struct dev *d = dev_first(vm); d; d = d->next) {
		struct disk_src *s;

		if (!d->ops->disk)
			continue;
		if (dm->n == STREAM_MAX_DISKS) {
			snprintf(err, len, "more than %d disks", STREAM_MAX_DISKS);
			goto err;
		}
		s = &dm->d[dm->n];
		d->ops->disk->image(d, &s->img);
		if (n && !serial_listed(serials, n, s->img.serial))
			continue;
		s->d = d;
		s->instance = d->instance;
		s->blocks = (s->img.size + (1ULL << s->img.block_shift) - 1) >> s->img.block_shift;
		s->words = ((s->img.size >> s->img.block_shift) + 64) / 64;
		s->bitmap = calloc(s->words, sizeof(uint64_t));
		if (!s->bitmap) {
			snprintf(err, len, "out of memory");
			goto err;
		}
		dm->n++;
	}
	/* Every serial named must be a disk of this VM. */
	for (unsigned int k = 0; k < n; k++) {
		bool found = false;

		for (unsigned int i = 0; i < dm->n; i++)
			found |= !strcmp(dm->d[i].img.serial, serials[k]);
		if (!found) {
			snprintf(err, len, "no disk with serial %s", serials[k]);
			goto err;
		}
	}
	if (!dm->n) {
		snprintf(err, len, "the VM has no disk to move");
		goto err;
	}
	dm->buf = malloc(DISK_PIECE);
	if (!dm->buf) {
		snprintf(err, len, "out of memory");
		goto err;
	}
	*out = dm;
	return 0;
err:
	disk_mig_free(dm);
	return -EINVAL;
}

void disk_mig_free(struct disk_mig *dm)
{
	if (!dm)
		return;
	for (unsigned int i = 0; i < dm->n; i++)
		free(dm->d[i].bitmap);
	free(dm->buf);
	free(dm);
}

int disk_mig_config(const struct disk_mig *dm, struct stream_config *cfg)
{
	for (unsigned int i = 0; i < dm->n; i++) {
		if (cfg->nr_disks >= STREAM_MAX_DISKS)
			return -ENOSPC;
		cfg->disks[cfg->nr_disks].instance = dm->d[i].instance;
		cfg->disks[cfg->nr_disks].size = dm->d[i].img.size;
		cfg->nr_disks++;
	}
	return 0;
}

int disk_mig_start(struct disk_mig *dm)
{
	for (unsigned int i = 0; i < dm->n; i++) {
		int ret = dm->d[i].d->ops->disk->track_start(dm->d[i].d);

		if (ret) {
			while (i--)
				dm->d[i].d->ops->disk->track_stop(dm->d[i].d);
			return ret;
		}
	}
	return 0;
}

void disk_mig_stop(struct disk_mig *dm)
{
	for (unsigned int i = 0; dm && i < dm->n; i++)
		dm->d[i].d->ops->disk->track_stop(dm->d[i].d);
}

/* Read [off, off + len) of an image (len <= DISK_PIECE) into dm->buf. */
static int disk_read(struct disk_mig *dm, struct disk_src *s, uint64_t off, uint64_t len,
		     char *err, size_t errlen)
{
	uint64_t done = 0;

	while (done < len) {
		ssize_t r = pread(s->img.fd, dm->buf + done, len - done, (off_t)(off + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			snprintf(err, errlen, "reading disk %s at %llu: %s", s->img.path,
				 (unsigned long long)(off + done), r ? strerror(errno) :
				 "the image shrank");
			return r ? -errno : -EIO;
		}
		done += (uint64_t)r;
	}
	return 0;
}

static bool zero_block(const uint8_t *p, uint64_t n)
{
	static const uint8_t z[4096];

	for (uint64_t o = 0; o < n; o += sizeof(z))
		if (memcmp(p + o, z, MIN(sizeof(z), n - o)))
			return false;
	return true;
}

/*
 * Send [off, off + len) (in dm->buf) block by block: data runs as data
 * extents; zero blocks as ZERO extents, or not at all when skip_zero (the
 * first pass: the destination's image is a hole).
 */
static int disk_send_piece(struct disk_mig *dm, struct disk_src *s, struct stream_writer *w,
			   uint64_t off, uint64_t len, bool skip_zero)
{
	uint64_t bs = 1ULL << s->img.block_shift, run = 0, run_len = 0;
	bool run_zero = false;
	int ret;

	/* One step past the end (n == 0) flushes the last run. */
	for (uint64_t o = 0, n; ; o += n) {
		bool z;

		n = o < len ? MIN(bs - (off + o) % bs, len - o) : 0;
		z = n && zero_block(dm->buf + o, n);

		/* Flush the run when its kind changes or at the end. */
		if (run_len && (!n || z != run_zero)) {
			if (!run_zero || !skip_zero) {
				ret = stream_put_disk(w, s->instance, off + run,
						      run_zero ? NULL : dm->buf + run, run_len);
				if (ret)
					return ret;
				dm->st.bytes += run_zero ? 0 : run_len;
				dm->st.zero_bytes += run_zero ? run_len : 0;
				dm->st.extents++;
			}
			run_len = 0;
		}
		if (!n)
			break;
		if (!run_len) {
			run = o;
			run_zero = z;
		}
		run_len += n;
	}
	return 0;
}

/* Read, send, then let the caller check (cancel, pacing); err says what failed. */
static int disk_move(struct disk_mig *dm, struct disk_src *s, struct stream_writer *w,
		     uint64_t off, uint64_t n, bool first_pass, disk_mig_check_fn check,
		     void *opaque, char *err, size_t errlen)
{
	int ret = disk_read(dm, s, off, n, err, errlen);

	if (!ret)
		ret = disk_send_piece(dm, s, w, off, n, first_pass);
	if (!ret)
		ret = check(opaque);
	if (ret && !err[0])
		snprintf(err, errlen, "sending disk %s: %s", s->img.path,
			 stream_writer_error(w)[0] ? stream_writer_error(w) : strerror(-ret));
	return ret;
}

int disk_mig_first_pass(struct disk_mig *dm, struct stream_writer *w, disk_mig_check_fn check,
			void *opaque, char *err, size_t errlen)
{
	int ret;

	dm->st.rounds = 1;
	for (unsigned int i = 0; i < dm->n; i++) {
		struct disk_src *s = &dm->d[i];
		uint64_t pos = 0;

		while (pos < s->img.size) {
			off_t data = lseek(s->img.fd, (off_t)pos, SEEK_DATA), hole;

			if (data < 0 && errno == ENXIO)
				break;                  /* only a hole is left */
			if (data < 0) {
				data = (off_t)pos;      /* no SEEK_DATA here: read it all */
				hole = (off_t)s->img.size;
			} else {
				hole = lseek(s->img.fd, data, SEEK_HOLE);
				if (hole < 0)
					hole = (off_t)s->img.size;
			}
			/* Whole sectors: extents of a file system are at least that. */
			pos = (uint64_t)data & ~511ULL;
			while (pos < (uint64_t)hole && pos < s->img.size) {
				uint64_t n = MIN((uint64_t)DISK_PIECE - pos % DISK_PIECE,
						 MIN((uint64_t)hole, s->img.size) - pos);

				n = (n + 511) & ~511ULL;
				n = MIN(n, s->img.size - pos);
				ret = disk_move(dm, s, w, pos, n, true, check, opaque, err, errlen);
				if (ret)
					return ret;
				pos += n;
			}
		}
	}
	return 0;
}

uint64_t disk_mig_collect(struct disk_mig *dm)
{
	uint64_t bytes = 0;

	for (unsigned int i = 0; i < dm->n; i++) {
		struct disk_src *s = &dm->d[i];

		bytes += s->d->ops->disk->track_take(s->d, s->bitmap) << s->img.block_shift;
	}
	return bytes;
}

int disk_mig_send_dirty(struct disk_mig *dm, struct stream_writer *w, disk_mig_check_fn check,
			void *opaque, char *err, size_t errlen)
{
	int ret;

	dm->st.rounds++;
	for (unsigned int i = 0; i < dm->n; i++) {
		struct disk_src *s = &dm->d[i];
		uint64_t bs = 1ULL << s->img.block_shift;

		for (uint64_t blk = 0; blk < s->blocks; ) {
			uint64_t first, off, n;

			if (!(s->bitmap[blk / 64] >> (blk % 64) & 1)) {
				blk++;
				continue;
			}
			/* A run of dirty blocks, up to a piece. */
			first = blk;
			while (blk < s->blocks && (s->bitmap[blk / 64] >> (blk % 64) & 1) &&
			       (blk - first + 1) * bs <= DISK_PIECE) {
				s->bitmap[blk / 64] &= ~(1ULL << (blk % 64));
				blk++;
			}
			off = first * bs;
			n = MIN((blk - first) * bs, s->img.size - off);
			ret = disk_move(dm, s, w, off, n, false, check, opaque, err, errlen);
			if (ret)
				return ret;
		}
	}
	return 0;
}

void disk_mig_stats(const struct disk_mig *dm, struct disk_mig_stats *st)
{
	*st = dm->st;
}

/* ---- destination --------------------------------------------------------------------- */

int disk_recv_open(struct disk_recv *d, const char *path, uint64_t size, bool overwrite,
		   char *err, size_t len)
{
	struct stat st;
	int fd;

	memset(d, 0, sizeof(*d));
	d->fd = -1;
	d->size = size;
	snprintf(d->path, sizeof(d->path), "%s", path);
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd >= 0) {
		d->created = true;
	} else if (errno == EEXIST) {
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &st)) {
			snprintf(err, len, "cannot open %s: %s", path, strerror(errno));
			if (fd >= 0)
				close(fd);
			return -errno;
		}
		if (!S_ISREG(st.st_mode)) {
			snprintf(err, len, "%s: the copy of a disk goes to a regular file", path);
			close(fd);
			return -EINVAL;
		}
		/* Never empty an image a VM has open (the source's own, on this host). */
		{
			struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };

			if (fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) {
				snprintf(err, len, "%s is in use by a VM (locked): not overwritten", path);
				close(fd);
				return -EBUSY;
			}
		}
		if (st.st_size && !overwrite) {
			snprintf(err, len, "%s exists and is not empty (give --overwrite to replace "
				 "it with the migrated disk)", path);
			close(fd);
			return -EEXIST;
		}
		/* Empty it: the copy assumes a hole where nothing is sent. */
		if (ftruncate(fd, 0)) {
			snprintf(err, len, "cannot empty %s: %s", path, strerror(errno));
			close(fd);
			return -errno;
		}
	} else {
		snprintf(err, len, "cannot create %s: %s", path, strerror(errno));
		return -errno;
	}
	if (ftruncate(fd, (off_t)size)) {
		int e = errno;

		snprintf(err, len, "cannot size %s to %llu bytes: %s", path,
			 (unsigned long long)size, strerror(e));
		close(fd);
		if (d->created)
			unlink(path);
		return -e;
	}
	d->fd = fd;
	return 0;
}

int disk_recv_extent(struct disk_recv *d, uint64_t off, uint64_t len, const uint8_t *data,
		     char *err, size_t errlen)
{
	static const uint8_t zeros[64 * 1024];
	uint64_t done = 0;

	/* A ZERO extent is a hole where the file system has them, written zeroes elsewhere. */
	if (!data && fallocate(d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
			       (off_t)len) == 0)
		done = len;
	while (done < len) {
		ssize_t r = data ? pwrite(d->fd, data + done, len - done, (off_t)(off + done)) :
			    pwrite(d->fd, zeros, MIN(sizeof(zeros), len - done), (off_t)(off + done));
		int e = r < 0 ? errno : EIO;

		if (r < 0 && e == EINTR)
			continue;
		if (r <= 0) {
			snprintf(err, errlen, "writing %s at %llu: %s", d->path,
				 (unsigned long long)(off + done), strerror(e));
			return -e;
		}
		done += (uint64_t)r;
	}
	d->bytes += len;
	/* Keep the page cache's dirty share small: the final sync is in the downtime. */
	if (d->bytes - d->wb_bytes >= DISK_WRITEBACK) {
		disk_recv_writeback(d);
		d->wb_bytes = d->bytes;
	}
	return 0;
}

void disk_recv_writeback(struct disk_recv *d)
{
	/* Asynchronous: only starts the writeback of what is dirty. */
	if (sync_file_range(d->fd, 0, 0, SYNC_FILE_RANGE_WRITE))
		log_debug("%s: sync_file_range: %s", d->path, strerror(errno));
}

int disk_recv_sync(struct disk_recv *d, char *err, size_t len)
{
	if (fdatasync(d->fd)) {
		snprintf(err, len, "cannot sync %s: %s", d->path, strerror(errno));
		return -errno;
	}
	return 0;
}

void disk_recv_close(struct disk_recv *d, bool failed)
{
	if (d->fd >= 0)
		close(d->fd);
	d->fd = -1;
	if (failed && d->created && unlink(d->path) == 0)
		log_info("removed the partial copy %s", d->path);
}
