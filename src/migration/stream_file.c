/*
 * stream_file.c - the stream writer's file sink (stream_writer_to_file(),
 * stream.h): a snapshot file written by FSINK_THREADS threads of its own
 * (two writes in flight: with O_DIRECT a single one leaves the disk idle
 * between them) from FSINK_NBUF page-aligned buffers, so that while
 * buffers go to the disk the next one is filled (guest pages copied and checksummed, the
 * stream writer's w_put).  With O_DIRECT (when the filesystem takes it)
 * the data skips the page cache: no copy into it, and the final fdatasync
 * has next to nothing left to write.
 *
 * O_DIRECT wants the buffer address, the length and the file offset
 * aligned (4 KiB here).  Buffers are page-aligned and every write but the
 * last one is a multiple of FSINK_ALIGN: a flush in the middle of the
 * stream writes the aligned part and carries the rest (under 4 KiB) over
 * to the next buffer; the last write (the stream's end) clears O_DIRECT
 * for its unaligned tail.  The stream format is not changed.
 *
 * Why threads and not io_uring: one write() per 4 MiB buffer is not where
 * the time goes, and threads need no new dependency; what matters is the
 * overlap of the checksumming copy with the disk, which both give.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "godwit/log.h"
#include "stream_int.h"

#define FSINK_NBUF    4
#define FSINK_THREADS 2          /* writes in flight: a disk takes more than one at a time */
#define FSINK_ALIGN   4096u

struct fsink {
	int fd;
	bool direct;
	size_t bufsize;
	uint8_t *bufs[FSINK_NBUF];
	pthread_mutex_t lock;
	pthread_cond_t cv;
	pthread_t threads[FSINK_THREADS];
	unsigned int nthreads;
	bool stop;
	/*
	 * The queue: buffers head .. head + count - 1 (mod FSINK_NBUF), in file
	 * order; the first issued of them are taken by a thread (written or being
	 * written: done[] says which); a buffer is released, in order, once it
	 * and every one before it are done.
	 */
	size_t qlen[FSINK_NBUF];
	uint64_t qpos[FSINK_NBUF];   /* where each queued buffer goes in the file */
	bool done[FSINK_NBUF];
	unsigned int head, count, issued;
	uint64_t qoff;           /* file offset after everything queued (filler) */
	int err;                 /* the first write error (-errno), sticky */
	uint64_t err_off;        /* the file offset it happened at */
};

/* Write all of buf at off; 0 or -errno (-EIO: the file took nothing). */
static int fsink_pwrite(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		buf += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static void *fsink_thread(void *opaque)
{
	struct fsink *fs = opaque;

	pthread_mutex_lock(&fs->lock);
	for (;;) {
		unsigned int i;
		size_t len;
		uint64_t off;
		bool skip;
		int ret = 0;

		while (fs->issued == fs->count && !fs->stop)
			pthread_cond_wait(&fs->cv, &fs->lock);
		if (fs->issued == fs->count)
			break;
		i = (fs->head + fs->issued++) % FSINK_NBUF;
		len = fs->qlen[i];
		off = fs->qpos[i];
		skip = fs->err != 0;    /* after a failure the rest is dropped */
		pthread_mutex_unlock(&fs->lock);
		if (!skip)
			ret = fsink_pwrite(fs->fd, fs->bufs[i], len, off);
		pthread_mutex_lock(&fs->lock);
		if (ret && !fs->err) {
			fs->err = ret;
			fs->err_off = off;
		}
		fs->done[i] = true;
		while (fs->count && fs->done[fs->head]) {
			fs->done[fs->head] = false;
			fs->head = (fs->head + 1) % FSINK_NBUF;
			fs->count--;
			fs->issued--;
		}
		pthread_cond_broadcast(&fs->cv);
	}
	pthread_mutex_unlock(&fs->lock);
	return NULL;
}

void fsink_free(struct fsink *fs)
{
	if (!fs)
		return;
	pthread_mutex_lock(&fs->lock);
	fs->stop = true;
	pthread_cond_broadcast(&fs->cv);
	pthread_mutex_unlock(&fs->lock);
	for (unsigned int i = 0; i < fs->nthreads; i++)
		pthread_join(fs->threads[i], NULL);
	pthread_mutex_destroy(&fs->lock);
	pthread_cond_destroy(&fs->cv);
	for (unsigned int i = 0; i < FSINK_NBUF; i++)
		free(fs->bufs[i]);
	free(fs);
}

int fsink_new(int fd, size_t bufsize, bool direct, struct fsink **out)
{
	struct fsink *fs;
	struct stat st;
	off_t pos;
	int ret;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || bufsize % FSINK_ALIGN)
		return -EINVAL;
	pos = lseek(fd, 0, SEEK_CUR);
	if (pos < 0)
		return -errno;
	fs = calloc(1, sizeof(*fs));
	if (!fs)
		return -ENOMEM;
	fs->fd = fd;
	fs->bufsize = bufsize;
	fs->qoff = (uint64_t)pos;
	pthread_mutex_init(&fs->lock, NULL);
	pthread_cond_init(&fs->cv, NULL);
	for (unsigned int i = 0; i < FSINK_NBUF; i++) {
		fs->bufs[i] = aligned_alloc(FSINK_ALIGN, bufsize);
		if (!fs->bufs[i]) {
			fsink_free(fs);
			return -ENOMEM;
		}
	}
	if (direct && pos % FSINK_ALIGN == 0) {
		int fl = fcntl(fd, F_GETFL);

		if (fl >= 0 && fcntl(fd, F_SETFL, fl | O_DIRECT) == 0)
			fs->direct = true;
		else
			log_info("snapshot file: O_DIRECT refused here (%s): buffered writes",
				 strerror(errno));
	}
	for (unsigned int i = 0; i < FSINK_THREADS; i++) {
		ret = pthread_create(&fs->threads[i], NULL, fsink_thread, fs);
		if (ret) {
			fsink_free(fs);
			return -ret;
		}
		fs->nthreads++;
	}
	*out = fs;
	return 0;
}

bool fsink_direct(const struct fsink *fs)
{
	return fs->direct;
}

uint8_t *fsink_buf(struct fsink *fs)
{
	/* The filler's buffer: the one after the queue (fsink_submit keeps it free). */
	return fs->bufs[(fs->head + fs->count) % FSINK_NBUF];
}

/* Under fs->lock: wait until the thread has written everything queued. */
static void fsink_wait_idle(struct fsink *fs)
{
	while (fs->count)
		pthread_cond_wait(&fs->cv, &fs->lock);
}

int fsink_submit(struct fsink *fs, size_t len, bool final, size_t *keep, uint64_t *err_off)
{
	uint8_t *cur;
	size_t whole = len, tail = 0;
	int ret;

	pthread_mutex_lock(&fs->lock);
	cur = fs->bufs[(fs->head + fs->count) % FSINK_NBUF];
	if (fs->direct && !final) {
		whole = len & ~(size_t)(FSINK_ALIGN - 1);
		tail = len - whole;
	}
	if (whole && !fs->err) {
		unsigned int next;

		/* Room for the next buffer: the filler never takes one still queued. */
		while (fs->count >= FSINK_NBUF - 1)
			pthread_cond_wait(&fs->cv, &fs->lock);
		if (fs->direct && whole % FSINK_ALIGN) {
			/* The stream's end: the aligned part directly, the tail through the cache. */
			size_t al = whole & ~(size_t)(FSINK_ALIGN - 1);

			fsink_wait_idle(fs);
			ret = al ? fsink_pwrite(fs->fd, cur, al, fs->qoff) : 0;
			if (!ret) {
				int fl = fcntl(fs->fd, F_GETFL);

				if (fl < 0 || fcntl(fs->fd, F_SETFL, fl & ~O_DIRECT) < 0)
					ret = -errno;
				else
					fs->direct = false;
			}
			if (!ret)
				ret = fsink_pwrite(fs->fd, cur + al, whole - al, fs->qoff + al);
			if (ret && !fs->err) {
				fs->err = ret;
				fs->err_off = fs->qoff;
			}
			fs->qoff += whole;
		} else {
			unsigned int i = (fs->head + fs->count) % FSINK_NBUF;

			fs->qlen[i] = whole;
			fs->qpos[i] = fs->qoff;
			fs->count++;
			fs->qoff += whole;
			pthread_cond_broadcast(&fs->cv);
			next = (fs->head + fs->count) % FSINK_NBUF;
			if (tail)
				memcpy(fs->bufs[next], cur + whole, tail);
		}
	}
	if (final) {
		fsink_wait_idle(fs);
		/* pwrite() leaves the offset: put it at the end, as write() would have */
		if (!fs->err && lseek(fs->fd, (off_t)fs->qoff, SEEK_SET) < 0) {
			fs->err = -errno;
			fs->err_off = fs->qoff;
		}
	}
	ret = fs->err;
	if (err_off)
		*err_off = fs->err_off;
	pthread_mutex_unlock(&fs->lock);
	*keep = tail;
	return ret;
}

int fsink_wait(struct fsink *fs, uint64_t *err_off)
{
	int ret;

	pthread_mutex_lock(&fs->lock);
	fsink_wait_idle(fs);
	ret = fs->err;
	*err_off = fs->err_off;
	pthread_mutex_unlock(&fs->lock);
	return ret;
}
