/*
 * test_virtq.c - split virtqueues (core.c) against a fake guest memory,
 * and the virtio-pci transport (virtio/pci.c, pci.c) driven through its
 * config space and BAR with no KVM: descriptor chains normal, indirect and
 * malformed, 16-bit index wrap, used ring contents, dirty pages, interrupt
 * suppression, common configuration semantics, MSI-X masking, BAR sizing,
 * capabilities, virtio-rng end to end, and a transport save/load round trip.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "godwit/devices.h"
#include "godwit/layout.h"
#include "godwit/le.h"
#include "godwit/virtio.h"
#include "godwit/vm.h"
#include "unit.h"

#define RAM_SIZE   (1024 * 1024)
#define DESC_GPA   0x1000
#define AVAIL_GPA  0x3000
#define USED_GPA   0x4000
#define DATA_GPA   0x10000
#define QSIZE      16

/* ---- a fake guest ----------------------------------------------------------------- */

static void fake_vm_init(struct vm *vm, unsigned int nregions)
{
	memset(vm, 0, sizeof(*vm));
	vm->kvm_fd = vm->vm_fd = vm->exit_efd = -1;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	/* Region 0 at 0; a second one, if asked, right after a gap (like RAM above 4 GiB). */
	for (unsigned int i = 0; i < nregions; i++) {
		struct mem_region *r = &vm->mem[i];

		r->gpa = i ? 4ULL * RAM_SIZE : 0;
		r->size = RAM_SIZE;
		r->host = aligned_alloc(4096, RAM_SIZE);
		memset(r->host, 0, RAM_SIZE);
		r->dev_dirty = calloc(RAM_SIZE / 4096 / 64 + 1, sizeof(uint64_t));
		r->slot = i;
	}
	vm->nr_mem = nregions;
}

static void fake_vm_free(struct vm *vm)
{
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		free(vm->mem[i].host);
		free(vm->mem[i].dev_dirty);
	}
	vm->nr_mem = 0;
}

static uint8_t *G(struct vm *vm, uint64_t gpa)
{
	return vm_gpa_to_host(vm, gpa, 1);
}


static void set_desc(struct vm *vm, uint64_t table, unsigned int i, uint64_t addr, uint32_t len,
		     uint16_t flags, uint16_t next)
{
	uint8_t *d = G(vm, table + 16ULL * i);

	le64_put(d, addr);
	le32_put(d + 8, len);
	le16_put(d + 12, flags);
	le16_put(d + 14, next);
}

/* Driver side: make `head` available and bump avail->idx. */
static void avail_add(struct vm *vm, uint16_t qsize, uint16_t head)
{
	uint8_t *a = G(vm, AVAIL_GPA);
	uint16_t idx = le16_get(a + 2);

	le16_put(a + 4 + 2 * (idx % qsize), head);
	le16_put(a + 2, (uint16_t)(idx + 1));
}

static const struct virtio_dev_ops bare_ops = { .name = "test-bare", .nr_queues = 1 };

struct qfix {
	struct vm vm;
	struct virtio_dev vdev;
	struct virtqueue *vq;
	struct vq_elem e;
};

static struct qfix *qfix_new(uint64_t features, unsigned int nregions)
{
	struct qfix *f = calloc(1, sizeof(*f));

	fake_vm_init(&f->vm, nregions);
	f->vdev.vm = &f->vm;
	f->vdev.ops = &bare_ops;
	f->vdev.driver_features = features | 1ULL << VIRTIO_F_VERSION_1;
	f->vq = &f->vdev.vqs[0];
	f->vq->vdev = &f->vdev;
	f->vq->max_size = f->vq->size = QSIZE;
	f->vq->desc_gpa = DESC_GPA;
	f->vq->avail_gpa = AVAIL_GPA;
	f->vq->used_gpa = USED_GPA;
	f->vq->msix_vector = VIRTIO_MSI_NO_VECTOR;
	f->vq->kick_fd = -1;
	f->vq->enabled = true;
	return f;
}

static void qfix_free(struct qfix *f)
{
	fake_vm_free(&f->vm);
	free(f);
}

#define F_INDIRECT (1ULL << VIRTIO_F_INDIRECT_DESC)
#define F_EVENT    (1ULL << VIRTIO_F_EVENT_IDX)

/* ---- queues ------------------------------------------------------------------------ */

TEST(virtq_normal_chain)
{
	struct qfix *f = qfix_new(0, 1);

	CHECK_EQ(vq_pop(f->vq, &f->e), 0);        /* empty */
	CHECK(!vq_has_work(f->vq));
	set_desc(&f->vm, DESC_GPA, 3, DATA_GPA, 16, VIRTQ_DESC_F_NEXT, 7);
	set_desc(&f->vm, DESC_GPA, 7, DATA_GPA + 0x100, 32, VIRTQ_DESC_F_NEXT, 1);
	set_desc(&f->vm, DESC_GPA, 1, DATA_GPA + 0x1000, 512, VIRTQ_DESC_F_WRITE, 0);
	avail_add(&f->vm, QSIZE, 3);
	CHECK(vq_has_work(f->vq));
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	CHECK_EQ(f->e.head, 3);
	CHECK_EQ(f->e.n_out, 2);
	CHECK_EQ(f->e.n_in, 1);
	CHECK_EQ(f->e.out_len, 48);
	CHECK_EQ(f->e.in_len, 512);
	CHECK(f->e.iov[0].iov_base == G(&f->vm, DATA_GPA));
	CHECK(f->e.iov[2].iov_base == G(&f->vm, DATA_GPA + 0x1000));
	CHECK_EQ(f->e.gpa[1], DATA_GPA + 0x100);
	CHECK_EQ(f->vq->last_avail, 1);
	CHECK_EQ(vq_pop(f->vq, &f->e), 0);
	/* A queue that is not enabled has nothing to pop. */
	avail_add(&f->vm, QSIZE, 3);
	f->vq->enabled = false;
	CHECK_EQ(vq_pop(f->vq, &f->e), 0);
	qfix_free(f);
}

TEST(virtq_indirect)
{
	struct qfix *f = qfix_new(F_INDIRECT, 1);
	uint64_t tbl = 0x8000;

	/* One direct readable descriptor, then an indirect table: out, out, in. */
	set_desc(&f->vm, DESC_GPA, 0, DATA_GPA, 10, VIRTQ_DESC_F_NEXT, 5);
	set_desc(&f->vm, DESC_GPA, 5, tbl, 3 * 16, VIRTQ_DESC_F_INDIRECT, 0);
	set_desc(&f->vm, tbl, 0, DATA_GPA + 0x100, 20, VIRTQ_DESC_F_NEXT, 2);
	set_desc(&f->vm, tbl, 2, DATA_GPA + 0x200, 30, VIRTQ_DESC_F_NEXT, 1);
	set_desc(&f->vm, tbl, 1, DATA_GPA + 0x300, 40, VIRTQ_DESC_F_WRITE, 0);
	avail_add(&f->vm, QSIZE, 0);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	CHECK_EQ(f->e.n_out, 3);
	CHECK_EQ(f->e.n_in, 1);
	CHECK_EQ(f->e.out_len, 60);
	CHECK_EQ(f->e.in_len, 40);
	CHECK_EQ(f->e.gpa[3], DATA_GPA + 0x300);

	/* An indirect table at an odd (unaligned) address still works. */
	tbl = 0x9003;
	set_desc(&f->vm, DESC_GPA, 2, tbl, 16, VIRTQ_DESC_F_INDIRECT, 0);
	set_desc(&f->vm, tbl, 0, DATA_GPA, 8, VIRTQ_DESC_F_WRITE, 0);
	avail_add(&f->vm, QSIZE, 2);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	CHECK_EQ(f->e.n_in, 1);
	CHECK_EQ(f->e.in_len, 8);
	qfix_free(f);
}

TEST(virtq_wrap_16bit)
{
	struct qfix *f = qfix_new(0, 1);
	uint8_t *used = G(&f->vm, USED_GPA);

	for (unsigned int i = 0; i < QSIZE; i++)
		set_desc(&f->vm, DESC_GPA, i, DATA_GPA + 64 * i, 64, VIRTQ_DESC_F_WRITE, 0);
	/* Both sides near the 16-bit wrap: avail idx 0xfffd, three chains to 0x0000. */
	f->vq->last_avail = 0xfffd;
	f->vq->used_idx = 0xfffd;
	le16_put(G(&f->vm, AVAIL_GPA) + 2, 0xfffd);
	avail_add(&f->vm, QSIZE, 4);
	avail_add(&f->vm, QSIZE, 5);
	avail_add(&f->vm, QSIZE, 6);
	avail_add(&f->vm, QSIZE, 7);
	CHECK_EQ(le16_get(G(&f->vm, AVAIL_GPA) + 2), 0x0001);
	for (unsigned int i = 0; i < 4; i++) {
		CHECK_EQ(vq_pop(f->vq, &f->e), 1);
		CHECK_EQ(f->e.head, 4 + i);
		vq_push(f->vq, &f->e, 8);
	}
	CHECK_EQ(vq_pop(f->vq, &f->e), 0);
	CHECK_EQ(f->vq->last_avail, 0x0001);
	CHECK_EQ(le16_get(used + 2), 0x0001);
	/* Slots (0xfffd..0x0000) % 16 = 13, 14, 15, 0. */
	CHECK_EQ(le32_get(used + 4 + 8 * 13), 4);
	CHECK_EQ(le32_get(used + 4 + 8 * 15), 6);
	CHECK_EQ(le32_get(used + 4 + 8 * 0), 7);
	qfix_free(f);
}

/* Each malformed case: set up, expect -EINVAL, an error text, and no progress. */
struct bad_case {
	const char *name;
	uint64_t features;
	void (*setup)(struct qfix *f);
};

static void bad_head(struct qfix *f) { avail_add(&f->vm, QSIZE, QSIZE); }
static void bad_next(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, DATA_GPA, 8, VIRTQ_DESC_F_NEXT, QSIZE + 3);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_loop(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, DATA_GPA, 8, VIRTQ_DESC_F_NEXT, 1);
	set_desc(&f->vm, DESC_GPA, 1, DATA_GPA, 8, VIRTQ_DESC_F_NEXT, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_self_loop_zero_len(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 2, DATA_GPA, 0, VIRTQ_DESC_F_NEXT, 2);
	avail_add(&f->vm, QSIZE, 2);
}
static void bad_too_long(struct qfix *f)
{
	/* A chain through all 16 descriptors that then goes on to the first again. */
	for (unsigned int i = 0; i < QSIZE; i++)
		set_desc(&f->vm, DESC_GPA, i, DATA_GPA, 4, VIRTQ_DESC_F_NEXT, (uint16_t)((i + 1) % QSIZE));
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_read_after_write(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, DATA_GPA, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
	set_desc(&f->vm, DESC_GPA, 1, DATA_GPA, 8, 0, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_indirect_not_negotiated(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, 0x8000, 16, VIRTQ_DESC_F_INDIRECT, 0);
	set_desc(&f->vm, 0x8000, 0, DATA_GPA, 8, 0, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_nested_indirect(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, 0x8000, 32, VIRTQ_DESC_F_INDIRECT, 0);
	set_desc(&f->vm, 0x8000, 0, DATA_GPA, 8, VIRTQ_DESC_F_NEXT, 1);
	set_desc(&f->vm, 0x8000, 1, 0x9000, 16, VIRTQ_DESC_F_INDIRECT, 0);
	set_desc(&f->vm, 0x9000, 0, DATA_GPA, 8, 0, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_indirect_len0(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, 0x8000, 0, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_indirect_odd_len(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, 0x8000, 24, VIRTQ_DESC_F_INDIRECT, 0);
	set_desc(&f->vm, 0x8000, 0, DATA_GPA, 8, 0, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_indirect_with_next(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, 0x8000, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
	set_desc(&f->vm, DESC_GPA, 1, DATA_GPA, 8, 0, 0);
	set_desc(&f->vm, 0x8000, 0, DATA_GPA, 8, 0, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_indirect_outside(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, RAM_SIZE - 16, 32, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_indirect_next(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, 0x8000, 32, VIRTQ_DESC_F_INDIRECT, 0);
	set_desc(&f->vm, 0x8000, 0, DATA_GPA, 8, VIRTQ_DESC_F_NEXT, 2);   /* table has 2 */
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_indirect_loop(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, 0x8000, 32, VIRTQ_DESC_F_INDIRECT, 0);
	set_desc(&f->vm, 0x8000, 0, DATA_GPA, 8, VIRTQ_DESC_F_NEXT, 1);
	set_desc(&f->vm, 0x8000, 1, DATA_GPA, 8, VIRTQ_DESC_F_NEXT, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_indirect_huge(struct qfix *f)
{
	/* More entries than any chain may have. */
	set_desc(&f->vm, DESC_GPA, 0, 0x20000, 16 * (VQ_MAX_SEGS + 1), VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_indirect_read_after_write(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, DATA_GPA, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
	set_desc(&f->vm, DESC_GPA, 1, 0x8000, 16, VIRTQ_DESC_F_INDIRECT, 0);
	set_desc(&f->vm, 0x8000, 0, DATA_GPA, 8, 0, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_buffer_outside(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, 2ULL * RAM_SIZE, 8, 0, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_buffer_straddles_end(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, RAM_SIZE - 4, 8, VIRTQ_DESC_F_WRITE, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_buffer_huge(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, DATA_GPA, 0xffffffffu, VIRTQ_DESC_F_WRITE, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_buffer_wraps(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, ~0ULL - 3, 8, 0, 0);
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_avail_jump(struct qfix *f)
{
	set_desc(&f->vm, DESC_GPA, 0, DATA_GPA, 8, 0, 0);
	le16_put(G(&f->vm, AVAIL_GPA) + 2, QSIZE + 1);
}
static void bad_avail_backwards(struct qfix *f)
{
	le16_put(G(&f->vm, AVAIL_GPA) + 2, 0xffff);       /* 65535 ahead of 0 */
}
static void bad_desc_outside(struct qfix *f)
{
	f->vq->desc_gpa = RAM_SIZE - 64;               /* table needs 256 bytes */
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_used_outside(struct qfix *f)
{
	f->vq->used_gpa = RAM_SIZE - 8;
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_misaligned(struct qfix *f)
{
	f->vq->desc_gpa = DESC_GPA + 8;
	avail_add(&f->vm, QSIZE, 0);
}
static void bad_size(struct qfix *f)
{
	f->vq->size = 12;
	avail_add(&f->vm, 12, 0);
}

static const struct bad_case bad_cases[] = {
	{ "head beyond the queue", 0, bad_head },
	{ "next beyond the queue", 0, bad_next },
	{ "loop", 0, bad_loop },
	{ "zero-length self loop", 0, bad_self_loop_zero_len },
	{ "chain longer than the queue", 0, bad_too_long },
	{ "readable after writable", 0, bad_read_after_write },
	{ "indirect not negotiated", 0, bad_indirect_not_negotiated },
	{ "nested indirect", F_INDIRECT, bad_nested_indirect },
	{ "indirect length 0", F_INDIRECT, bad_indirect_len0 },
	{ "indirect odd length", F_INDIRECT, bad_indirect_odd_len },
	{ "indirect with NEXT", F_INDIRECT, bad_indirect_with_next },
	{ "indirect table outside RAM", F_INDIRECT, bad_indirect_outside },
	{ "indirect next beyond table", F_INDIRECT, bad_indirect_next },
	{ "indirect loop", F_INDIRECT, bad_indirect_loop },
	{ "indirect table too large", F_INDIRECT, bad_indirect_huge },
	{ "indirect readable after writable", F_INDIRECT, bad_indirect_read_after_write },
	{ "buffer outside RAM", 0, bad_buffer_outside },
	{ "buffer across the end of RAM", 0, bad_buffer_straddles_end },
	{ "4 GiB buffer", 0, bad_buffer_huge },
	{ "buffer wrapping the address space", 0, bad_buffer_wraps },
	{ "avail idx jumps by more than the size", 0, bad_avail_jump },
	{ "avail idx goes backwards", 0, bad_avail_backwards },
	{ "descriptor table outside RAM", 0, bad_desc_outside },
	{ "used ring outside RAM", 0, bad_used_outside },
	{ "misaligned descriptor table", 0, bad_misaligned },
	{ "queue size not a power of 2", 0, bad_size },
};

TEST(virtq_malformed)
{
	for (unsigned int i = 0; i < ARRAY_SIZE(bad_cases); i++) {
		struct qfix *f = qfix_new(bad_cases[i].features, 1);
		int ret;

		bad_cases[i].setup(f);
		ret = vq_pop(f->vq, &f->e);
		if (ret != -EINVAL || !f->vq->error[0] || f->vq->last_avail != 0) {
			printf("#   case '%s': vq_pop %d, error '%s', last_avail %u\n", bad_cases[i].name,
			       ret, f->vq->error, f->vq->last_avail);
			CHECK(0);
		}
		/* Nothing was written to guest memory by the failed pop. */
		CHECK_EQ(le16_get(G(&f->vm, USED_GPA) + 2), 0);
		qfix_free(f);
	}
}

TEST(virtq_buffer_across_regions)
{
	struct qfix *f = qfix_new(0, 2);

	/* RAM ends at 1 MiB and resumes at 4 MiB: a buffer over the gap is refused... */
	set_desc(&f->vm, DESC_GPA, 0, RAM_SIZE - 8, 16, 0, 0);
	avail_add(&f->vm, QSIZE, 0);
	CHECK_EQ(vq_pop(f->vq, &f->e), -EINVAL);
	qfix_free(f);
	/* ... while one inside the second region is fine. */
	f = qfix_new(0, 2);
	set_desc(&f->vm, DESC_GPA, 0, 4ULL * RAM_SIZE + 100, 16, VIRTQ_DESC_F_WRITE, 0);
	avail_add(&f->vm, QSIZE, 0);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	CHECK(f->e.iov[0].iov_base == f->vm.mem[1].host + 100);
	qfix_free(f);
}

TEST(virtq_needs_reset)
{
	struct qfix *f = qfix_new(0, 1);

	avail_add(&f->vm, QSIZE, QSIZE + 1);
	CHECK_EQ(vq_pop(f->vq, &f->e), -EINVAL);
	f->vdev.status = VIRTIO_STATUS_DRIVER_OK | VIRTIO_STATUS_FEATURES_OK;
	virtio_dev_set_needs_reset(&f->vdev, "unit test");
	CHECK(f->vdev.status & VIRTIO_STATUS_NEEDS_RESET);
	CHECK(f->vdev.status & VIRTIO_STATUS_DRIVER_OK);
	/* A device in NEEDS_RESET serves nothing more. */
	CHECK_EQ(vq_pop(f->vq, &f->e), 0);
	CHECK(!vq_has_work(f->vq));
	qfix_free(f);
}

TEST(virtq_used_ring)
{
	struct qfix *f = qfix_new(0, 1);
	uint8_t *used = G(&f->vm, USED_GPA);

	set_desc(&f->vm, DESC_GPA, 9, DATA_GPA, 8, VIRTQ_DESC_F_NEXT, 10);
	set_desc(&f->vm, DESC_GPA, 10, DATA_GPA + 0x100, 100, VIRTQ_DESC_F_WRITE, 0);
	set_desc(&f->vm, DESC_GPA, 11, DATA_GPA + 0x200, 50, VIRTQ_DESC_F_WRITE, 0);
	avail_add(&f->vm, QSIZE, 9);
	avail_add(&f->vm, QSIZE, 11);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	vq_push(f->vq, &f->e, 60);
	CHECK_EQ(le16_get(used + 2), 1);
	CHECK_EQ(le32_get(used + 4), 9);
	CHECK_EQ(le32_get(used + 8), 60);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	vq_push(f->vq, &f->e, 1000);              /* clamped to the 50 writable bytes */
	CHECK_EQ(le16_get(used + 2), 2);
	CHECK_EQ(le32_get(used + 12), 11);
	CHECK_EQ(le32_get(used + 16), 50);
	CHECK_EQ(f->vq->used_idx, 2);
	qfix_free(f);
}

static unsigned int dirty_pages(struct vm *vm, uint64_t *first)
{
	unsigned int n = 0;

	*first = ~0ULL;
	for (uint64_t gpa = 0; gpa < RAM_SIZE; gpa += 4096) {
		if (vm_test_clear_dirty(vm, gpa)) {
			if (*first == ~0ULL)
				*first = gpa;
			n++;
		}
	}
	return n;
}

TEST(virtq_dirty_exact)
{
	struct qfix *f = qfix_new(0, 1);
	uint64_t first;

	/* Writable: 0x20ff0+0x20 (two pages), 0x30000+0x3000 (three pages). */
	set_desc(&f->vm, DESC_GPA, 0, DATA_GPA, 8, VIRTQ_DESC_F_NEXT, 1);
	set_desc(&f->vm, DESC_GPA, 1, 0x20ff0, 0x20, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
	set_desc(&f->vm, DESC_GPA, 2, 0x30000, 0x3000, VIRTQ_DESC_F_WRITE, 0);
	avail_add(&f->vm, QSIZE, 0);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	CHECK_EQ(dirty_pages(&f->vm, &first), 0);    /* popping writes nothing */
	/* 0x20 + 0x1001 bytes: pages 0x20000, 0x21000, 0x30000, 0x31000, and the used ring. */
	vq_push(f->vq, &f->e, 0x20 + 0x1001);
	CHECK(vm_test_clear_dirty(&f->vm, 0x20000));
	CHECK(vm_test_clear_dirty(&f->vm, 0x21000));
	CHECK(vm_test_clear_dirty(&f->vm, 0x30000));
	CHECK(vm_test_clear_dirty(&f->vm, 0x31000));
	CHECK(vm_test_clear_dirty(&f->vm, USED_GPA));
	CHECK_EQ(dirty_pages(&f->vm, &first), 0);    /* and nothing else (not 0x32000, not data) */

	/* Zero bytes written: only the used ring. */
	avail_add(&f->vm, QSIZE, 0);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	vq_push(f->vq, &f->e, 0);
	CHECK_EQ(dirty_pages(&f->vm, &first), 1);
	CHECK_EQ(first, USED_GPA);
	qfix_free(f);
}

TEST(virtq_event_idx)
{
	struct qfix *f = qfix_new(F_EVENT, 1);
	uint8_t *avail = G(&f->vm, AVAIL_GPA), *used = G(&f->vm, USED_GPA);

	for (unsigned int i = 0; i < QSIZE; i++)
		set_desc(&f->vm, DESC_GPA, i, DATA_GPA, 8, VIRTQ_DESC_F_WRITE, 0);
	/* The driver wants an interrupt when used idx passes 2 (used_event = 2). */
	le16_put(avail + 4 + 2 * QSIZE, 2);
	for (unsigned int i = 0; i < 5; i++)
		avail_add(&f->vm, QSIZE, (uint16_t)i);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	/* avail_event tells the driver how far the device has read. */
	CHECK_EQ(le16_get(used + 4 + 8 * QSIZE), 1);
	vq_push(f->vq, &f->e, 1);
	vq_notify(f->vq);                         /* first notify: always (nothing signalled yet) */
	CHECK_EQ(f->vq->interrupts, 1);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	vq_push(f->vq, &f->e, 1);                 /* used idx 2: not past 2 yet */
	vq_notify(f->vq);
	CHECK_EQ(f->vq->interrupts, 1);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	vq_push(f->vq, &f->e, 1);                 /* used idx 3: entry 2 used -> interrupt */
	vq_notify(f->vq);
	CHECK_EQ(f->vq->interrupts, 2);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	vq_push(f->vq, &f->e, 1);                 /* event still 2: already signalled past it */
	vq_notify(f->vq);
	CHECK_EQ(f->vq->interrupts, 2);
	le16_put(avail + 4 + 2 * QSIZE, 4);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	vq_push(f->vq, &f->e, 1);                 /* used idx 5 passes 4 */
	vq_notify(f->vq);
	CHECK_EQ(f->vq->interrupts, 3);
	/* Ring empty: avail_event = last_avail asks for the next kick. */
	CHECK_EQ(vq_pop(f->vq, &f->e), 0);
	CHECK_EQ(le16_get(used + 4 + 8 * QSIZE), 5);
	/* Batching: two pushes then one notify crossing the event interrupt once. */
	le16_put(avail + 4 + 2 * QSIZE, 5);
	avail_add(&f->vm, QSIZE, 5);
	avail_add(&f->vm, QSIZE, 6);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	vq_push(f->vq, &f->e, 1);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	vq_push(f->vq, &f->e, 1);
	vq_notify(f->vq);
	CHECK_EQ(f->vq->interrupts, 4);
	qfix_free(f);
}

TEST(virtq_no_interrupt_flag)
{
	struct qfix *f = qfix_new(0, 1);
	uint8_t *avail = G(&f->vm, AVAIL_GPA);

	set_desc(&f->vm, DESC_GPA, 0, DATA_GPA, 8, VIRTQ_DESC_F_WRITE, 0);
	avail_add(&f->vm, QSIZE, 0);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	vq_push(f->vq, &f->e, 8);
	le16_put(avail, VIRTQ_AVAIL_F_NO_INTERRUPT);
	vq_notify(f->vq);
	CHECK_EQ(f->vq->interrupts, 0);
	le16_put(avail, 0);
	vq_notify(f->vq);
	CHECK_EQ(f->vq->interrupts, 1);
	/* Without EVENT_IDX the device never writes avail_event. */
	CHECK_EQ(le16_get(G(&f->vm, USED_GPA) + 4 + 8 * QSIZE), 0);
	qfix_free(f);
}

TEST(virtq_elem_copy)
{
	struct qfix *f = qfix_new(0, 1);
	uint8_t buf[64];

	memcpy(G(&f->vm, DATA_GPA), "hello ", 6);
	memcpy(G(&f->vm, DATA_GPA + 0x100), "world", 5);
	set_desc(&f->vm, DESC_GPA, 0, DATA_GPA, 6, VIRTQ_DESC_F_NEXT, 1);
	set_desc(&f->vm, DESC_GPA, 1, DATA_GPA + 0x100, 5, VIRTQ_DESC_F_NEXT, 2);
	set_desc(&f->vm, DESC_GPA, 2, DATA_GPA + 0x200, 3, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 3);
	set_desc(&f->vm, DESC_GPA, 3, DATA_GPA + 0x300, 4, VIRTQ_DESC_F_WRITE, 0);
	avail_add(&f->vm, QSIZE, 0);
	CHECK_EQ(vq_pop(f->vq, &f->e), 1);
	memset(buf, 0, sizeof(buf));
	CHECK_EQ(vq_elem_read(&f->e, 0, buf, sizeof(buf)), 11);
	CHECK_STR((char *)buf, "hello world");
	memset(buf, 0, sizeof(buf));
	CHECK_EQ(vq_elem_read(&f->e, 4, buf, 4), 4);
	CHECK_STR((char *)buf, "o wo");
	CHECK_EQ(vq_elem_read(&f->e, 11, buf, 4), 0);
	CHECK_EQ(vq_elem_write(&f->e, 1, "ABCDEFGH", 8), 6);
	CHECK(!memcmp(G(&f->vm, DATA_GPA + 0x200 + 1), "AB", 2));
	CHECK(!memcmp(G(&f->vm, DATA_GPA + 0x300), "CDEF", 4));
	CHECK_EQ(*G(&f->vm, DATA_GPA + 0x200), 0);
	qfix_free(f);
}

/* ---- the transport ------------------------------------------------------------------ */

struct tdev_state {
	int activated, resets;
	uint8_t config[8];
	uint32_t saved_value;
};

static uint64_t tdev_features(struct virtio_dev *vdev) { return 1ULL << 5 | 1ULL << 40; }
static void tdev_config_read(struct virtio_dev *vdev, uint32_t off, void *data, uint32_t len)
{
	struct tdev_state *s = vdev->priv;

	memcpy(data, s->config + off, len);
}
static void tdev_config_write(struct virtio_dev *vdev, uint32_t off, const void *data, uint32_t len)
{
	struct tdev_state *s = vdev->priv;

	memcpy(s->config + off, data, len);
}
static int tdev_activate(struct virtio_dev *vdev) { ((struct tdev_state *)vdev->priv)->activated++; return 0; }
static void tdev_reset(struct virtio_dev *vdev) { ((struct tdev_state *)vdev->priv)->resets++; }
static int tdev_save(struct virtio_dev *vdev, struct state_out *out)
{
	state_put_u32(out, 1, ((struct tdev_state *)vdev->priv)->saved_value);
	return 0;
}
static int tdev_load(struct virtio_dev *vdev, struct state_in *in, uint16_t version)
{
	struct state_field f;
	int ret;

	while ((ret = state_next(in, &f)) > 0)
		if (f.tag == 1 && state_get_u32(&f, &((struct tdev_state *)vdev->priv)->saved_value))
			return -EBADMSG;
	return ret;
}

static const struct virtio_dev_ops tdev_ops = {
	.name = "virtio-test",
	.device_id = 42,
	.pci_class = 0x0780,
	.nr_queues = 2,
	.queue_max_size = 128,
	.config_size = 8,
	.features = tdev_features,
	.config_read = tdev_config_read,
	.config_write = tdev_config_write,
	.activate = tdev_activate,
	.reset = tdev_reset,
	.save = tdev_save,
	.load = tdev_load,
};

struct tfix {
	struct vm vm;
	struct virtio_dev vdev;
	struct tdev_state st;
	struct pci_bus *bus;
	struct pci_dev *pd;
	uint64_t bar;
};

static void tfix_vm(struct tfix *t)
{
	fake_vm_init(&t->vm, 1);
	t->vm.dev = calloc(1, sizeof(*t->vm.dev));
	CHECK_EQ(pci_init(&t->vm.dev->pci, NULL), 0);
	t->bus = &t->vm.dev->pci;
}

static struct tfix *tfix_new(unsigned int slot)
{
	struct tfix *t = calloc(1, sizeof(*t));

	tfix_vm(t);
	t->vdev.ops = &tdev_ops;
	t->vdev.priv = &t->st;
	CHECK_EQ(virtio_pci_add(&t->vm, slot, &t->vdev), 0);
	t->pd = t->bus->devs[slot];
	CHECK(t->pd != NULL);
	t->bar = t->pd ? t->pd->bar[0].addr : 0;
	return t;
}

static void tfix_free(struct tfix *t)
{
	/* Every registered device (the test device, virtio-rng): stopped, unlinked, freed. */
	for (struct dev *d = dev_first(&t->vm), *next; d; d = next) {
		next = d->next;
		if (d->ops->destroy)
			d->ops->destroy(d);
	}
	CHECK(dev_first(&t->vm) == NULL);
	CHECK(!t->vdev.pci);
	pci_destroy(t->bus);
	free(t->vm.dev);
	fake_vm_free(&t->vm);
	free(t);
}

static uint32_t cfg_read(struct pci_bus *b, unsigned int slot, unsigned int off, unsigned int len)
{
	uint32_t addr = 0x80000000u | slot << 11 | (off & 0xfc), v = 0;

	pci_io(b, PORT_PCI_ADDR, &addr, 4, true);
	pci_io(b, PORT_PCI_DATA + (off & 3), &v, len, false);
	return v;
}

static void cfg_write(struct pci_bus *b, unsigned int slot, unsigned int off, unsigned int len,
		      uint32_t v)
{
	uint32_t addr = 0x80000000u | slot << 11 | (off & 0xfc);

	pci_io(b, PORT_PCI_ADDR, &addr, 4, true);
	pci_io(b, PORT_PCI_DATA + (off & 3), &v, len, true);
}

static uint64_t mmio_read(struct tfix *t, uint64_t off, unsigned int len)
{
	uint64_t v = 0;

	pci_mmio(t->bus, t->bar + off, &v, len, false);
	return v;
}

static void mmio_write(struct tfix *t, uint64_t off, unsigned int len, uint64_t v)
{
	pci_mmio(t->bus, t->bar + off, &v, len, true);
}

#define CC(o) (o)
#define STATUS 0x14

/* Find the vendor capability of cfg_type `type`; returns its offset or 0. */
static unsigned int find_vcap(struct pci_bus *b, unsigned int slot, uint8_t type)
{
	unsigned int c = cfg_read(b, slot, 0x34, 1), n = 0;

	while (c && n++ < 48) {
		if (cfg_read(b, slot, c, 1) == PCI_CAP_ID_VNDR && cfg_read(b, slot, c + 3, 1) == type)
			return c;
		c = cfg_read(b, slot, c + 1, 1);
	}
	return 0;
}

TEST(vpci_config_space)
{
	struct tfix *t = tfix_new(3);
	unsigned int c, n = 0, msix = 0;

	CHECK_EQ(cfg_read(t->bus, 3, 0x00, 2), 0x1af4);
	CHECK_EQ(cfg_read(t->bus, 3, 0x02, 2), 0x1040 + 42);
	CHECK_EQ(cfg_read(t->bus, 3, 0x08, 1), 1);               /* revision */
	CHECK_EQ(cfg_read(t->bus, 3, 0x0a, 2), 0x0780);          /* class */
	CHECK_EQ(cfg_read(t->bus, 3, 0x2c, 2), 0x1af4);
	CHECK(cfg_read(t->bus, 3, 0x06, 2) & PCI_STATUS_CAP_LIST);
	CHECK_EQ(cfg_read(t->bus, 3, 0x3d, 1), 1);               /* INTA */
	CHECK(cfg_read(t->bus, 3, 0x3c, 1) < 16);
	CHECK_EQ(cfg_read(t->bus, 4, 0x00, 4), 0xffffffffu);     /* empty slot */
	/* BAR 0: 64-bit memory at the start of the 32-bit window, decoding on. */
	CHECK_EQ(cfg_read(t->bus, 3, 0x10, 4), (uint32_t)LAYOUT_PCI_MMIO32 | 4);
	CHECK_EQ(cfg_read(t->bus, 3, 0x14, 4), 0);
	CHECK(cfg_read(t->bus, 3, 0x04, 2) & PCI_COMMAND_MEMORY);
	CHECK_EQ(t->bar, LAYOUT_PCI_MMIO32);
	/* Capabilities: the five vendor ones and MSI-X with nr_queues + 1 vectors. */
	for (c = cfg_read(t->bus, 3, 0x34, 1); c && n < 48; c = cfg_read(t->bus, 3, c + 1, 1), n++) {
		CHECK_EQ(c % 4, 0);
		if (cfg_read(t->bus, 3, c, 1) == PCI_CAP_ID_MSIX) {
			msix = c;
			CHECK_EQ(cfg_read(t->bus, 3, c + 2, 2) & 0x7ff, 2);        /* 3 vectors */
			CHECK_EQ(cfg_read(t->bus, 3, c + 4, 4), 0x3800);           /* table, BAR 0 */
			CHECK_EQ(cfg_read(t->bus, 3, c + 8, 4), 0x3c00);           /* PBA, BAR 0 */
		}
	}
	CHECK_EQ(n, 6);
	CHECK(msix != 0);
	c = find_vcap(t->bus, 3, 1);                              /* common */
	CHECK(c && cfg_read(t->bus, 3, c + 4, 1) == 0 && cfg_read(t->bus, 3, c + 8, 4) == 0 &&
	      cfg_read(t->bus, 3, c + 12, 4) >= 0x38);
	c = find_vcap(t->bus, 3, 2);                              /* notify */
	CHECK(c && cfg_read(t->bus, 3, c + 2, 1) == 20 && cfg_read(t->bus, 3, c + 16, 4) == 4);
	c = find_vcap(t->bus, 3, 3);                              /* ISR */
	CHECK(c && cfg_read(t->bus, 3, c + 8, 4) == 0x1000);
	c = find_vcap(t->bus, 3, 4);                              /* device config */
	CHECK(c && cfg_read(t->bus, 3, c + 12, 4) == 8);
	CHECK(find_vcap(t->bus, 3, 5) != 0);                      /* PCI cfg access */
	/* Read-only fields stay read-only. */
	cfg_write(t->bus, 3, 0x00, 4, 0x12345678);
	CHECK_EQ(cfg_read(t->bus, 3, 0x00, 2), 0x1af4);
	tfix_free(t);
}

TEST(vpci_bar_sizing_and_moving)
{
	struct tfix *t = tfix_new(2);
	uint32_t lo = cfg_read(t->bus, 2, 0x10, 4), hi = cfg_read(t->bus, 2, 0x14, 4);
	uint64_t moved = LAYOUT_PCI_MMIO32 + 0x100000;

	/* Sizing, as Linux does it: decoding off, all ones, read, restore. */
	cfg_write(t->bus, 2, 0x04, 2, 0);
	CHECK_EQ(t->pd->bar[0].addr, 0);
	cfg_write(t->bus, 2, 0x10, 4, 0xffffffff);
	cfg_write(t->bus, 2, 0x14, 4, 0xffffffff);
	CHECK_EQ(cfg_read(t->bus, 2, 0x10, 4), 0xffffc004u);     /* 16 KiB, 64-bit */
	CHECK_EQ(cfg_read(t->bus, 2, 0x14, 4), 0xffffffffu);
	cfg_write(t->bus, 2, 0x10, 4, lo);
	cfg_write(t->bus, 2, 0x14, 4, hi);
	cfg_write(t->bus, 2, 0x04, 2, PCI_COMMAND_MEMORY);
	CHECK_EQ(t->pd->bar[0].addr, LAYOUT_PCI_MMIO32);
	CHECK_EQ(mmio_read(t, 0x12, 2), 2);                       /* num_queues */
	/* Moved by the guest: MMIO follows it; the old address decodes nothing. */
	cfg_write(t->bus, 2, 0x10, 4, (uint32_t)moved);
	CHECK_EQ(t->pd->bar[0].addr, moved);
	CHECK_EQ(mmio_read(t, 0x12, 2), 0xffff);                  /* t->bar is the old address */
	t->bar = moved;
	CHECK_EQ(mmio_read(t, 0x12, 2), 2);
	tfix_free(t);
}

TEST(vpci_features)
{
	struct tfix *t = tfix_new(1);

	mmio_write(t, CC(0x00), 4, 0);
	CHECK_EQ(mmio_read(t, CC(0x04), 4), 1u << 5 | 1u << VIRTIO_F_INDIRECT_DESC | 1u << VIRTIO_F_EVENT_IDX);
	mmio_write(t, CC(0x00), 4, 1);
	CHECK_EQ(mmio_read(t, CC(0x04), 4), 1u << (VIRTIO_F_VERSION_1 - 32) | 1u << 8);
	mmio_write(t, CC(0x00), 4, 2);
	CHECK_EQ(mmio_read(t, CC(0x04), 4), 0);
	mmio_write(t, STATUS, 1, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);

	/* Without VERSION_1: FEATURES_OK is refused. */
	mmio_write(t, CC(0x08), 4, 0);
	mmio_write(t, CC(0x0c), 4, 1u << 5);
	mmio_write(t, STATUS, 1, 1 | 2 | VIRTIO_STATUS_FEATURES_OK);
	CHECK_EQ(mmio_read(t, STATUS, 1), 3);
	/* A feature not offered (bit 6): refused too. */
	mmio_write(t, CC(0x08), 4, 1);
	mmio_write(t, CC(0x0c), 4, 1u << (VIRTIO_F_VERSION_1 - 32));
	mmio_write(t, CC(0x08), 4, 0);
	mmio_write(t, CC(0x0c), 4, 1u << 5 | 1u << 6);
	mmio_write(t, STATUS, 1, 1 | 2 | VIRTIO_STATUS_FEATURES_OK);
	CHECK_EQ(mmio_read(t, STATUS, 1), 3);
	/* DRIVER_OK without FEATURES_OK: refused, device not started. */
	mmio_write(t, STATUS, 1, 1 | 2 | VIRTIO_STATUS_DRIVER_OK);
	CHECK_EQ(mmio_read(t, STATUS, 1) & VIRTIO_STATUS_DRIVER_OK, 0);
	CHECK_EQ(t->st.activated, 0);
	/* Offered features with VERSION_1: accepted, and then fixed. */
	mmio_write(t, CC(0x0c), 4, 1u << 5 | 1u << VIRTIO_F_EVENT_IDX);
	mmio_write(t, STATUS, 1, 1 | 2 | VIRTIO_STATUS_FEATURES_OK);
	CHECK_EQ(mmio_read(t, STATUS, 1), 1 | 2 | VIRTIO_STATUS_FEATURES_OK);
	CHECK_EQ(t->vdev.driver_features, 1ULL << 5 | 1ULL << VIRTIO_F_EVENT_IDX | 1ULL << VIRTIO_F_VERSION_1);
	mmio_write(t, CC(0x0c), 4, 0);
	CHECK_EQ(t->vdev.driver_features, 1ULL << 5 | 1ULL << VIRTIO_F_EVENT_IDX | 1ULL << VIRTIO_F_VERSION_1);
	mmio_write(t, STATUS, 1, 1 | 2 | 8 | VIRTIO_STATUS_DRIVER_OK);
	CHECK_EQ(t->st.activated, 1);
	mmio_write(t, STATUS, 1, 1 | 2 | 8 | VIRTIO_STATUS_DRIVER_OK);   /* again: no second start */
	CHECK_EQ(t->st.activated, 1);
	/* Device config space through the BAR, bounded by config_size. */
	mmio_write(t, 0x2000 + 4, 4, 0xdeadbeef);
	CHECK_EQ(mmio_read(t, 0x2000 + 4, 4), 0xdeadbeef);
	CHECK_EQ(le32_get(t->st.config + 4), 0xdeadbeef);
	CHECK_EQ(mmio_read(t, 0x2000 + 6, 4), 0);                 /* crosses the end */
	tfix_free(t);
}

TEST(vpci_queue_registers)
{
	struct tfix *t = tfix_new(1);
	struct virtqueue *vq = &t->vdev.vqs[1];

	CHECK_EQ(mmio_read(t, 0x12, 2), 2);
	mmio_write(t, 0x16, 2, 1);
	CHECK_EQ(mmio_read(t, 0x18, 2), 128);
	CHECK_EQ(mmio_read(t, 0x1e, 2), 1);                       /* notify off */
	CHECK_EQ(mmio_read(t, 0x1a, 2), VIRTIO_MSI_NO_VECTOR);
	mmio_write(t, 0x18, 2, 32);
	CHECK_EQ(mmio_read(t, 0x18, 2), 32);
	mmio_write(t, 0x18, 2, 48);                               /* not a power of 2 */
	mmio_write(t, 0x18, 2, 256);                              /* more than offered */
	mmio_write(t, 0x18, 2, 0);
	CHECK_EQ(mmio_read(t, 0x18, 2), 32);
	mmio_write(t, 0x1a, 2, 2);
	CHECK_EQ(mmio_read(t, 0x1a, 2), 2);
	mmio_write(t, 0x1a, 2, 3);                                /* only 3 vectors: 0-2 */
	CHECK_EQ(mmio_read(t, 0x1a, 2), VIRTIO_MSI_NO_VECTOR);
	mmio_write(t, 0x10, 2, 7);
	CHECK_EQ(mmio_read(t, 0x10, 2), VIRTIO_MSI_NO_VECTOR);
	mmio_write(t, 0x10, 2, 0);
	CHECK_EQ(mmio_read(t, 0x10, 2), 0);
	/* 64-bit addresses, also as two 32-bit halves. */
	mmio_write(t, 0x20, 8, 0x123456789000ULL);
	mmio_write(t, 0x28, 4, 0x5000);
	mmio_write(t, 0x2c, 4, 0x1);
	mmio_write(t, 0x30, 8, 0x6000);
	CHECK_EQ(vq->desc_gpa, 0x123456789000ULL);
	CHECK_EQ(vq->avail_gpa, 0x100005000ULL);
	CHECK_EQ(mmio_read(t, 0x28, 8), 0x100005000ULL);
	mmio_write(t, 0x1c, 2, 1);
	CHECK(vq->enabled);
	CHECK_EQ(mmio_read(t, 0x1c, 2), 1);
	/* Enabled: size and addresses are fixed; writing 0 does not disable. */
	mmio_write(t, 0x20, 8, 0x7000);
	mmio_write(t, 0x18, 2, 16);
	mmio_write(t, 0x1c, 2, 0);
	CHECK_EQ(vq->desc_gpa, 0x123456789000ULL);
	CHECK_EQ(vq->size, 32);
	CHECK(vq->enabled);
	/* A queue that does not exist reads as size 0. */
	mmio_write(t, 0x16, 2, 5);
	CHECK_EQ(mmio_read(t, 0x18, 2), 0);
	mmio_write(t, 0x18, 2, 16);                               /* harmless */
	/* Reset: everything back. */
	mmio_write(t, STATUS, 1, 0);
	CHECK_EQ(t->st.resets, 1);
	CHECK(!vq->enabled);
	CHECK_EQ(vq->size, 128);
	CHECK_EQ(vq->desc_gpa, 0);
	CHECK_EQ(vq->msix_vector, VIRTIO_MSI_NO_VECTOR);
	CHECK_EQ(mmio_read(t, 0x10, 2), VIRTIO_MSI_NO_VECTOR);
	CHECK_EQ(mmio_read(t, 0x16, 2), 0);
	CHECK_EQ(mmio_read(t, STATUS, 1), 0);
	tfix_free(t);
}

static unsigned int msix_cap(struct tfix *t)
{
	for (unsigned int c = cfg_read(t->bus, t->pd->slot, 0x34, 1), n = 0; c && n < 48;
	     c = cfg_read(t->bus, t->pd->slot, c + 1, 1), n++)
		if (cfg_read(t->bus, t->pd->slot, c, 1) == PCI_CAP_ID_MSIX)
			return c;
	return 0;
}

TEST(vpci_msix_masking)
{
	struct tfix *t = tfix_new(1);
	unsigned int cap = msix_cap(t);
	struct pci_msix *m = &t->pd->msix;
	unsigned long fired;

	/* Vector 1: address/data programmed, still masked (the reset state). */
	mmio_write(t, 0x3800 + 16 + 0, 4, 0xfee00000);
	mmio_write(t, 0x3800 + 16 + 4, 4, 0);
	mmio_write(t, 0x3800 + 16 + 8, 4, 0x41);
	CHECK_EQ(mmio_read(t, 0x3800 + 16 + 12, 4), 1);
	/* MSI-X disabled: the transport falls back to INTx (ISR bit). */
	virtio_pci_irq(&t->vdev, 1, VIRTIO_ISR_QUEUE);
	CHECK_EQ(m->fired, 0);
	CHECK_EQ(mmio_read(t, 0x1000, 1), VIRTIO_ISR_QUEUE);
	CHECK_EQ(mmio_read(t, 0x1000, 1), 0);                     /* read clears */
	/* Enable MSI-X; the vector is masked: pending, not sent. */
	cfg_write(t->bus, 1, cap + 2, 2, 0x8000);
	CHECK(pci_msix_enabled(t->pd));
	virtio_pci_irq(&t->vdev, 1, VIRTIO_ISR_QUEUE);
	CHECK_EQ(m->fired, 0);
	CHECK_EQ(mmio_read(t, 0x3c00, 8), 2);                     /* PBA bit 1 */
	CHECK_EQ(mmio_read(t, 0x1000, 1), 0);                     /* no ISR with MSI-X */
	/* Unmask: the pending message goes out, the PBA bit clears. */
	mmio_write(t, 0x3800 + 16 + 12, 4, 0);
	CHECK_EQ(m->fired, 1);
	CHECK_EQ(mmio_read(t, 0x3c00, 8), 0);
	virtio_pci_irq(&t->vdev, 1, VIRTIO_ISR_QUEUE);
	CHECK_EQ(m->fired, 2);
	/* Function mask holds everything back, then releases it. */
	cfg_write(t->bus, 1, cap + 2, 2, 0xc000);
	virtio_pci_irq(&t->vdev, 1, VIRTIO_ISR_QUEUE);
	CHECK_EQ(m->fired, 2);
	CHECK_EQ(mmio_read(t, 0x3c00, 8), 2);
	cfg_write(t->bus, 1, cap + 2, 2, 0x8000);
	CHECK_EQ(m->fired, 3);
	CHECK_EQ(mmio_read(t, 0x3c00, 8), 0);
	/* NO_VECTOR and out-of-range vectors send nothing. */
	fired = m->fired;
	virtio_pci_irq(&t->vdev, VIRTIO_MSI_NO_VECTOR, VIRTIO_ISR_QUEUE);
	virtio_pci_irq(&t->vdev, 7, VIRTIO_ISR_QUEUE);
	CHECK_EQ(m->fired, fired);
	/* Only the mask bit of vector control is writable; the PBA is read-only. */
	mmio_write(t, 0x3800 + 16 + 12, 4, 0xfffffffe);
	CHECK_EQ(mmio_read(t, 0x3800 + 16 + 12, 4), 0);
	mmio_write(t, 0x3c00, 8, ~0ULL);
	CHECK_EQ(mmio_read(t, 0x3c00, 8), 0);
	/* The route for the vector was installed once it was unmasked. */
	CHECK(irq_route_installed(&t->bus->irq, (uint32_t)m->gsi[1]));
	CHECK(!irq_route_installed(&t->bus->irq, (uint32_t)m->gsi[2]));
	tfix_free(t);
}

TEST(vpci_pci_cfg_window)
{
	struct tfix *t = tfix_new(1);
	unsigned int c = find_vcap(t->bus, 1, 5);

	CHECK(c != 0);
	/* num_queues (common cfg 0x12) read through config space. */
	cfg_write(t->bus, 1, c + 4, 1, 0);
	cfg_write(t->bus, 1, c + 8, 4, 0x12);
	cfg_write(t->bus, 1, c + 12, 4, 2);
	CHECK_EQ(cfg_read(t->bus, 1, c + 16, 2), 2);
	/* queue_select written through it. */
	cfg_write(t->bus, 1, c + 8, 4, 0x16);
	cfg_write(t->bus, 1, c + 16, 2, 1);
	CHECK_EQ(t->vdev.queue_sel, 1);
	/* Bad length or BAR: nothing happens. */
	cfg_write(t->bus, 1, c + 12, 4, 3);
	cfg_write(t->bus, 1, c + 16, 2, 0);
	CHECK_EQ(t->vdev.queue_sel, 1);
	tfix_free(t);
}

/* Set the driver side of a device up as Linux would, queue 0 in guest RAM. */
static void driver_init(struct tfix *t, uint16_t qsize)
{
	mmio_write(t, STATUS, 1, 1 | 2);
	mmio_write(t, 0x08, 4, 1);
	mmio_write(t, 0x0c, 4, 1);                                /* VERSION_1 */
	mmio_write(t, STATUS, 1, 1 | 2 | 8);
	mmio_write(t, 0x16, 2, 0);
	mmio_write(t, 0x18, 2, qsize);
	mmio_write(t, 0x20, 8, DESC_GPA);
	mmio_write(t, 0x28, 8, AVAIL_GPA);
	mmio_write(t, 0x30, 8, USED_GPA);
	mmio_write(t, 0x1c, 2, 1);
}

static bool wait_used(struct vm *vm, uint16_t idx, int ms)
{
	for (int i = 0; i < ms; i++) {
		if (__atomic_load_n((uint16_t *)(void *)G(vm, USED_GPA + 2), __ATOMIC_ACQUIRE) == idx)
			return true;
		usleep(1000);
	}
	return false;
}

/* Read (and so clear) the ISR until it has one of `bits`, for up to 2 s; returns the last value. */
static uint8_t wait_isr(struct tfix *t, uint8_t bits)
{
	uint8_t v = 0;

	for (int i = 0; i < 2000 && !(v & bits); i++) {
		v = (uint8_t)mmio_read(t, 0x1000, 1);
		if (!(v & bits))
			usleep(1000);
	}
	return v;
}

TEST(vpci_rng_end_to_end)
{
	struct tfix *t = calloc(1, sizeof(*t));
	uint8_t zero[4096] = { 0 };
	uint64_t first;

	tfix_vm(t);
	CHECK_EQ(virtio_rng_add(&t->vm, 5), 0);
	t->pd = t->bus->devs[5];
	if (!t->pd) {
		CHECK(0);
		return;
	}
	t->bar = t->pd->bar[0].addr;
	CHECK_EQ(cfg_read(t->bus, 5, 0x02, 2), 0x1044);
	driver_init(t, 8);
	mmio_write(t, STATUS, 1, 1 | 2 | 8 | 4);
	set_desc(&t->vm, DESC_GPA, 0, DATA_GPA, 4096, VIRTQ_DESC_F_WRITE, 0);
	set_desc(&t->vm, DESC_GPA, 1, DATA_GPA + 8192, 100, VIRTQ_DESC_F_WRITE, 0);
	avail_add(&t->vm, 8, 0);
	avail_add(&t->vm, 8, 1);
	(void)dirty_pages(&t->vm, &first);
	mmio_write(t, 0x3000, 2, 0);                              /* notify queue 0 (an MMIO exit) */
	CHECK(wait_used(&t->vm, 2, 2000));
	CHECK_EQ(le32_get(G(&t->vm, USED_GPA) + 8), 4096);
	CHECK_EQ(le32_get(G(&t->vm, USED_GPA) + 16), 100);
	CHECK(memcmp(G(&t->vm, DATA_GPA), zero, 4096) != 0);
	CHECK(vm_test_clear_dirty(&t->vm, DATA_GPA));
	CHECK(vm_test_clear_dirty(&t->vm, DATA_GPA + 8192));
	CHECK(vm_test_clear_dirty(&t->vm, USED_GPA));
	/* INTx mode (MSI-X off): the ISR says a queue interrupt happened (just after the push). */
	CHECK_EQ(wait_isr(t, VIRTIO_ISR_QUEUE), VIRTIO_ISR_QUEUE);

	/* A malformed chain: NEEDS_RESET, a config interrupt, and nothing more is served. */
	avail_add(&t->vm, 8, 9);
	mmio_write(t, 0x3000, 2, 0);
	for (int i = 0; i < 2000 && !(mmio_read(t, STATUS, 1) & VIRTIO_STATUS_NEEDS_RESET); i++)
		usleep(1000);
	CHECK(mmio_read(t, STATUS, 1) & VIRTIO_STATUS_NEEDS_RESET);
	CHECK(wait_isr(t, VIRTIO_ISR_CONFIG) & VIRTIO_ISR_CONFIG);
	CHECK_EQ(le16_get(G(&t->vm, USED_GPA) + 2), 2);
	/* The driver resets: the device is usable again from index 0. */
	mmio_write(t, STATUS, 1, 0);
	CHECK_EQ(mmio_read(t, STATUS, 1), 0);
	memset(G(&t->vm, AVAIL_GPA), 0, 64);
	memset(G(&t->vm, USED_GPA), 0, 128);
	driver_init(t, 8);
	mmio_write(t, STATUS, 1, 1 | 2 | 8 | 4);
	avail_add(&t->vm, 8, 1);
	mmio_write(t, 0x3000, 4, 0);                              /* another width: same path */
	CHECK(wait_used(&t->vm, 1, 2000));
	tfix_free(t);
}

TEST(vpci_save_load_roundtrip)
{
	struct tfix *a = tfix_new(2), *b = tfix_new(2);
	struct state_out o1, o2;
	struct state_in in;
	unsigned int cap = msix_cap(a);

	/* Guest-visible state on a: features, queue registers, MSI-X, config space. */
	driver_init(a, 64);
	mmio_write(a, 0x1a, 2, 1);
	mmio_write(a, 0x10, 2, 0);
	mmio_write(a, 0x16, 2, 1);
	mmio_write(a, 0x18, 2, 16);
	mmio_write(a, STATUS, 1, 1 | 2 | 8 | 4);
	CHECK_EQ(a->st.activated, 1);
	a->vdev.vqs[0].last_avail = 7;
	a->vdev.vqs[0].used_idx = 6;
	a->vdev.vqs[0].signalled_used = 5;
	a->vdev.vqs[0].signalled_valid = true;
	a->st.saved_value = 0xabcdef;
	cfg_write(a->bus, 2, cap + 2, 2, 0x8000);
	mmio_write(a, 0x3800 + 16, 4, 0xfee01000);
	mmio_write(a, 0x3800 + 24, 4, 0x33);
	virtio_pci_irq(&a->vdev, 1, VIRTIO_ISR_QUEUE);           /* masked: pending */
	cfg_write(a->bus, 2, 0x0c, 1, 0x10);                      /* cache line size */

	state_out_init(&o1);
	CHECK_EQ(virtio_pci_save(&a->vdev, &o1), 0);
	state_in_init(&in, o1.buf, o1.len);
	CHECK_EQ(virtio_pci_load(&b->vdev, &in, 1), 0);
	state_out_init(&o2);
	CHECK_EQ(virtio_pci_save(&b->vdev, &o2), 0);
	CHECK_EQ(o1.len, o2.len);
	CHECK(o1.len == o2.len && !memcmp(o1.buf, o2.buf, o1.len));
	/* Not started by the load (nothing may run before the LAPICs are loaded): by resume. */
	CHECK_EQ(b->st.activated, 0);
	CHECK_EQ(virtio_pci_resume(&b->vdev), 0);
	CHECK_EQ(b->st.activated, 1);
	CHECK_EQ(virtio_pci_resume(&b->vdev), 0);                  /* once */
	/* And the loaded device behaves like the saved one. */
	CHECK_EQ(b->st.activated, 1);
	CHECK_EQ(b->st.saved_value, 0xabcdef);
	CHECK_EQ(b->vdev.vqs[0].last_avail, 7);
	CHECK_EQ(b->vdev.vqs[0].size, 64);
	CHECK_EQ(b->vdev.vqs[1].size, 16);
	CHECK(b->vdev.vqs[0].enabled);
	CHECK_EQ(b->vdev.vqs[0].avail_gpa, AVAIL_GPA);
	CHECK_EQ(mmio_read(b, STATUS, 1), 1 | 2 | 8 | 4);
	CHECK_EQ(mmio_read(b, 0x3c00, 8), 2);                     /* still pending */
	CHECK_EQ(mmio_read(b, 0x3800 + 16, 4), 0xfee01000);
	CHECK(pci_msix_enabled(b->pd));
	CHECK_EQ(cfg_read(b->bus, 2, 0x0c, 1), 0x10);
	mmio_write(b, 0x3800 + 28, 4, 0);                         /* unmask: it fires there */
	CHECK_EQ(b->pd->msix.fired, 1);
	state_out_free(&o2);

	/* Every truncation is refused (the nested fields too), and leaves b as it was. */
	for (size_t cut = 0; cut < o1.len; cut++) {
		state_in_init(&in, o1.buf, cut);
		if (virtio_pci_load(&b->vdev, &in, 1) == 0) {
			printf("#   a stream cut at %zu of %zu bytes loaded\n", cut, o1.len);
			CHECK(0);
			break;
		}
	}
	CHECK_EQ(b->st.activated, 1);
	CHECK_EQ(mmio_read(b, STATUS, 1), 1 | 2 | 8 | 4);
	state_out_free(&o1);

	/* A device with other features: refused. */
	state_out_init(&o1);
	a->vdev.device_features |= 1ULL << 3;
	CHECK_EQ(virtio_pci_save(&a->vdev, &o1), 0);
	state_in_init(&in, o1.buf, o1.len);
	CHECK_EQ(virtio_pci_load(&b->vdev, &in, 1), -EINVAL);
	state_out_free(&o1);
	tfix_free(a);
	tfix_free(b);
}

TEST(vpci_registry)
{
	struct tfix *t = tfix_new(6);
	struct dev *d = dev_first(&t->vm);

	CHECK(d != NULL);
	if (d) {
		CHECK_STR(d->ops->name, "virtio-test");
		CHECK_EQ(d->instance, 6);
		CHECK(d->ops->save && d->ops->load && d->ops->destroy);
	}
	virtio_pci_destroy(&t->vdev);
	CHECK(dev_first(&t->vm) == NULL);
	CHECK(t->bus->devs[6] == NULL);
	tfix_free(t);
}
