/*
 * fuzz_virtio_blk.c - libFuzzer target for virtio-blk request parsing
 * (src/devices/virtio/blk.c) on a real split ring (core.c) in fake guest
 * RAM: whatever the driver puts in the ring - request headers of any type,
 * sectors out of range or overflowing, data the wrong way, a status byte
 * missing or sharing a segment, discard/write-zeroes segment lists,
 * descriptor chains of every shape (indirect, split headers, zero-length
 * buffers) - the device serves what it can as the I/O thread does
 * (blk_serve: vq_pop, virtio_blk_handle, vq_push, vq_notify), or puts the
 * device in NEEDS_RESET, and never reads or writes outside guest RAM and
 * the image (ASan: RAM and image are allocations of exactly their size).
 * Checks: a used length never exceeds the chain's writable bytes; a
 * status is OK, IOERR or UNSUPP and is the chain's last writable byte; the
 * read-only image never changes; the read-write image keeps its size.
 *
 * The disks are two memfd images of 128 sectors, opened once as `--disk
 * /proc/self/fd/N` (read-write, with a serial) and `...,readonly`.  The
 * queue is served in this thread: no I/O thread, no KVM.
 *
 * Input: a 4-byte header, then the image of guest RAM (64 KiB at 0).
 *   [0] bit 0 the read-only disk; driver features: bit 1 INDIRECT_DESC,
 *       bit 2 EVENT_IDX, bit 3 FLUSH, bit 4 DISCARD, bit 5 WRITE_ZEROES
 *       (each only if the device offers it), bit 6 fuzzer-chosen ring
 *       addresses (from [2-3])
 *   [1] queue size: 1 << (b & 7) (1 to 128)
 *   [2-3] last_avail (or, with bit 6, the avail ring's offset / 2)
 * Descriptor table at 0, avail ring after it, used ring after that
 * (4-aligned), as fuzz_virtq's default layout.
 *   make fuzz && build-fuzz/fuzz-virtio-blk -close_fd_mask=2 tests/fuzz/corpus/virtio-blk
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "godwit/virtio.h"
#include "godwit/vm.h"

/* From src/devices/virtio/blk.c (it has no header of its own; test_blk.c uses them too). */
struct blk;
int virtio_blk_open(const char *spec, struct blk **out) __must_check;
struct virtio_dev *virtio_blk_vdev(struct blk *b);
uint32_t virtio_blk_handle(struct blk *b, const struct vq_elem *e, uint8_t *status);

#define RAM_SIZE    (64 * 1024)
#define DISK_SIZE   (128 * 512)
#define F_FLUSH     9
#define F_DISCARD   13
#define F_WZ        14

static struct blk *disk_rw, *disk_ro;
static int fd_rw, fd_ro;
static uint8_t ro_image[DISK_SIZE];

static int image(uint8_t fill)
{
	uint8_t buf[DISK_SIZE];
	int fd = memfd_create("fuzz-blk", 0);

	memset(buf, fill, sizeof(buf));
	if (fd < 0 || write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
		abort();
	return fd;
}

static void fuzz_init(void)
{
	char spec[128];

	fd_rw = image(0xa5);
	fd_ro = image(0x5a);
	memset(ro_image, 0x5a, sizeof(ro_image));
	snprintf(spec, sizeof(spec), "/proc/self/fd/%d,serial=fuzz-serial-0123456", fd_rw);
	if (virtio_blk_open(spec, &disk_rw))
		abort();
	snprintf(spec, sizeof(spec), "/proc/self/fd/%d,readonly", fd_ro);
	if (virtio_blk_open(spec, &disk_ro))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct vq_elem e;
	static uint64_t dirty[RAM_SIZE / 4096 / 64 + 1];
	struct vm vm;
	struct blk *b;
	struct virtio_dev *v;
	struct virtqueue *vq;
	uint16_t qsize;
	uint64_t offered;
	uint8_t *ram;

	if (size < 4)
		return 0;
	if (!disk_rw)
		fuzz_init();
	ram = calloc(1, RAM_SIZE);
	memcpy(ram, data + 4, MIN(size - 4, (size_t)RAM_SIZE));
	memset(&vm, 0, sizeof(vm));
	memset(dirty, 0, sizeof(dirty));
	vm.mem[0] = (struct mem_region){ .gpa = 0, .size = RAM_SIZE, .host = ram, .dev_dirty = dirty };
	vm.nr_mem = 1;

	b = data[0] & 1 ? disk_ro : disk_rw;
	v = virtio_blk_vdev(b);
	v->vm = &vm;
	offered = v->ops->features(v);
	v->driver_features = 1ULL << VIRTIO_F_VERSION_1 |
		(data[0] & 2 ? 1ULL << VIRTIO_F_INDIRECT_DESC : 0) |
		(data[0] & 4 ? 1ULL << VIRTIO_F_EVENT_IDX : 0) |
		(offered & (data[0] & 8 ? 1ULL << F_FLUSH : 0)) |
		(offered & (data[0] & 16 ? 1ULL << F_DISCARD : 0)) |
		(offered & (data[0] & 32 ? 1ULL << F_WZ : 0));
	v->status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
		    VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK;
	qsize = (uint16_t)(1u << (data[1] & 7));
	vq = &v->vqs[0];
	*vq = (struct virtqueue){
		.vdev = v, .index = 0, .max_size = v->ops->queue_max_size, .size = qsize,
		.enabled = true, .desc_gpa = 0, .avail_gpa = 16ULL * qsize,
		.msix_vector = VIRTIO_MSI_NO_VECTOR, .kick_fd = -1,
	};
	if (data[0] & 64)
		vq->avail_gpa = (uint64_t)(data[2] | data[3] << 8) * 2 % RAM_SIZE;
	else
		vq->last_avail = (uint16_t)(data[2] | data[3] << 8);
	vq->used_gpa = ALIGN_UP(vq->avail_gpa + 6 + 2ULL * qsize, 4ULL);

	/* As blk_serve: until the ring is empty or malformed. */
	for (int iter = 0; iter < 2 * 128; iter++) {
		uint8_t status;
		uint32_t used;
		int r = vq_pop(vq, &e);

		if (r < 0)
			virtio_dev_set_needs_reset(v, "virtio-blk: malformed descriptor chain");
		if (r <= 0)
			break;
		used = virtio_blk_handle(b, &e, &status);
		if (getenv("FUZZ_DEBUG"))       /* FUZZ_DEBUG=1: what each chain got */
			fprintf(stderr, "fuzz-virtio-blk: chain %u: %u out, %u in: used %u, status %u\n",
				e.head, e.n_out, e.n_in, used, status);
		if (used > e.in_len)
			abort();
		if (used) {
			const struct iovec *last = NULL;

			if (status > 2)
				abort();
			/* the status byte: the last byte of the last non-empty writable segment */
			for (unsigned int i = e.n_out; i < e.n_out + e.n_in; i++)
				if (e.iov[i].iov_len)
					last = &e.iov[i];
			if (!last || ((uint8_t *)last->iov_base)[last->iov_len - 1] != status)
				abort();
		}
		vq_push(vq, &e, used);
		vq_notify(vq);
	}
	{
		struct stat st;
		uint8_t back[DISK_SIZE];

		if (fstat(fd_rw, &st) || st.st_size != DISK_SIZE)
			abort();
		if (pread(fd_ro, back, sizeof(back), 0) != (ssize_t)sizeof(back) ||
		    memcmp(back, ro_image, sizeof(back)))
			abort();        /* a read-only disk was written */
	}
	v->vm = NULL;
	free(ram);
	return 0;
}
