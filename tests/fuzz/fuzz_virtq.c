/*
 * fuzz_virtq.c - libFuzzer target for the split virtqueue code
 * (src/devices/virtio/core.c): arbitrary descriptor tables, indirect
 * tables, avail rings and ring addresses in a fake guest RAM of two
 * regions, popped, copied and pushed until the ring is empty or broken.
 * ASan catches any access outside the RAM buffers (each is its own
 * allocation of exactly the region's size); the checks below catch
 * iovecs that point outside guest RAM or exceed the limits.
 *
 * Input: an 8-byte header, then the image of region 0.
 *   [0]   queue size: 1 << (b & 15), capped at VIRTQ_MAX_SIZE; 0 bits 4-7 unused
 *   [1]   bit 0 INDIRECT_DESC, bit 1 EVENT_IDX, bit 2 fuzzer-chosen ring
 *         addresses (from [2..7]), bit 3 a second RAM region
 *   [2-3] last_avail start, [4-5] used_idx start (or, with bit 2: ring offsets)
 *   [6-7] bytes reported written per chain
 * Built with clang -fsanitize=fuzzer,address,undefined (make fuzz).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/virtio.h"
#include "godwit/vm.h"

#define R0_SIZE  (64 * 1024)
#define R1_GPA   (1024 * 1024)
#define R1_SIZE  (16 * 1024)

/* The two functions of vm.c that core.c uses, with the same semantics. */
void *vm_gpa_to_host(struct vm *vm, uint64_t gpa, uint64_t len)
{
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		struct mem_region *r = &vm->mem[i];

		if (gpa >= r->gpa && gpa - r->gpa <= r->size && len <= r->size - (gpa - r->gpa))
			return r->host + (gpa - r->gpa);
	}
	return NULL;
}

void vm_mark_dirty(struct vm *vm, uint64_t gpa, uint64_t len)
{
	if (!len)
		return;
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		struct mem_region *r = &vm->mem[i];
		uint64_t start, end;

		if (gpa >= r->gpa + r->size || gpa + len <= r->gpa)
			continue;
		start = (MAX(gpa, r->gpa) - r->gpa) / 4096;
		end = (MIN(gpa + len, r->gpa + r->size) - r->gpa - 1) / 4096;
		for (uint64_t pg = start; pg <= end; pg++)
			r->dev_dirty[pg / 64] |= 1ULL << (pg % 64);
	}
}

static unsigned long irqs;
void virtio_pci_irq(struct virtio_dev *vdev, uint16_t vector, uint8_t isr)
{
	irqs++;
}

static const struct virtio_dev_ops fuzz_ops = { .name = "fuzz", .nr_queues = 1 };

static bool in_ram(struct vm *vm, const void *p, size_t len)
{
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		const uint8_t *h = vm->mem[i].host;

		if ((const uint8_t *)p >= h && (const uint8_t *)p + len <= h + vm->mem[i].size)
			return true;
	}
	return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct vq_elem e;
	static struct virtio_dev vdev;
	static uint8_t scratch[4096];
	struct vm vm;
	struct virtqueue *vq = &vdev.vqs[0];
	uint64_t dirty0[R0_SIZE / 4096 / 64 + 1], dirty1[R1_SIZE / 4096 / 64 + 1];
	uint16_t qsize, written;

	if (size < 8)
		return 0;
	memset(&vm, 0, sizeof(vm));
	vm.mem[0] = (struct mem_region){ .gpa = 0, .size = R0_SIZE, .host = calloc(1, R0_SIZE),
					 .dev_dirty = dirty0 };
	vm.nr_mem = 1;
	if (data[1] & 8) {
		vm.mem[1] = (struct mem_region){ .gpa = R1_GPA, .size = R1_SIZE,
						 .host = calloc(1, R1_SIZE), .dev_dirty = dirty1 };
		vm.nr_mem = 2;
		if (size > 8 + R0_SIZE)
			memcpy(vm.mem[1].host, data + 8 + R0_SIZE, MIN(size - 8 - R0_SIZE, (size_t)R1_SIZE));
	}
	memset(dirty0, 0, sizeof(dirty0));
	memset(dirty1, 0, sizeof(dirty1));
	memcpy(vm.mem[0].host, data + 8, MIN(size - 8, (size_t)R0_SIZE));

	memset(&vdev, 0, sizeof(vdev));
	vdev.vm = &vm;
	vdev.ops = &fuzz_ops;
	vdev.driver_features = 1ULL << VIRTIO_F_VERSION_1 |
			       (data[1] & 1 ? 1ULL << VIRTIO_F_INDIRECT_DESC : 0) |
			       (data[1] & 2 ? 1ULL << VIRTIO_F_EVENT_IDX : 0);
	qsize = (uint16_t)MIN(1u << (data[0] & 15), (unsigned int)VIRTQ_MAX_SIZE);
	vq->vdev = &vdev;
	vq->size = vq->max_size = qsize;
	vq->enabled = true;
	vq->kick_fd = -1;
	vq->msix_vector = VIRTIO_MSI_NO_VECTOR;
	if (data[1] & 4) {
		/* Anywhere, misaligned or not, possibly outside RAM. */
		vq->desc_gpa = (uint64_t)(data[2] | data[3] << 8) * 2;
		vq->avail_gpa = (uint64_t)(data[4] | data[5] << 8) * 2 + (data[0] >> 7);
		vq->used_gpa = (uint64_t)(data[6] | data[7] << 8) * 2 + ((data[0] >> 6) & 1) * 2;
		if (data[0] & 0x20)
			vq->used_gpa += R1_GPA;
	} else {
		vq->desc_gpa = 0;
		vq->avail_gpa = 16ULL * qsize;
		vq->used_gpa = ALIGN_UP(vq->avail_gpa + 6 + 2ULL * qsize, 4ULL);
		vq->last_avail = (uint16_t)(data[2] | data[3] << 8);
		vq->used_idx = (uint16_t)(data[4] | data[5] << 8);
	}
	written = (uint16_t)(data[6] | data[7] << 8);

	for (int iter = 0; iter < 2 * VIRTQ_MAX_SIZE; iter++) {
		int r = vq_pop(vq, &e);

		if (r <= 0) {
			if (r < 0 && !vq->error[0])
				__builtin_trap();         /* an error must say why */
			break;
		}
		if (e.n_out + e.n_in > VQ_MAX_SEGS || e.head >= qsize)
			__builtin_trap();
		for (unsigned int i = 0; i < e.n_out + e.n_in; i++)
			if (!e.iov[i].iov_len || !in_ram(&vm, e.iov[i].iov_base, e.iov[i].iov_len) ||
			    vm_gpa_to_host(&vm, e.gpa[i], e.iov[i].iov_len) != e.iov[i].iov_base)
				__builtin_trap();
		(void)vq_elem_read(&e, written % 64, scratch, sizeof(scratch));
		(void)vq_elem_write(&e, written % 32, scratch, MIN((size_t)written, sizeof(scratch)));
		vq_push(vq, &e, written);
		vq_notify(vq);
		(void)vq_has_work(vq);
	}
	free(vm.mem[0].host);
	if (vm.nr_mem > 1)
		free(vm.mem[1].host);
	return 0;
}
