/*
 * fuzz_pci.c - libFuzzer target for the PCI bus (src/devices/pci.c) and the
 * virtio-pci transport (src/devices/virtio/pci.c) as a guest driver sees
 * them: a sequence of port and MMIO accesses of 1, 2, 4 or 8 bytes at any
 * offset, dispatched as vcpu.c dispatches exits (the ranges the bus
 * registered with vm_register_pio/mmio): config space through 0xcf8/0xcfc
 * (BAR sizing and moving, the command register, capabilities, MSI-X
 * control, the virtio PCI cfg access window), the BAR's common config
 * (feature selects, queue set-up, device status transitions through
 * DRIVER_OK, which starts the device's I/O thread, and reset), ISR, device
 * config, notify, the MSI-X table and PBA, and accesses anywhere in the
 * PCI window.  Guest RAM (64 KiB at 0) can be written too, so kicked
 * queues have something to serve.  The devices: a virtio-blk (memfd image,
 * slot 1) and a virtio-rng (slot 2) on a fresh bus per input, on a fake VM
 * without KVM (vm_fd -1: ioeventfd and MSI route ioctls fail, as in the
 * unit tests; notifications go through the MMIO path).
 *
 * An op can also migrate the devices as they are: quiesce, save every
 * device, load each into a fresh bus and devices, save those again, and
 * the bytes must be identical (a state a guest can reach must migrate,
 * and load must restore exactly what save wrote); then the first set
 * resumes.
 *
 * Input: ops, each [op, args...] (short args read as zero):
 *   op bits 0-1 kind, 2-3 size (1 << n), 4 write, 5-7 sel; a write's value
 *   follows its address bytes (size bytes, little-endian).
 *   kind 0: config space of slot sel (0 host bridge, 1 blk, 2 rng, 3-7
 *           empty) at offset [1]: 0xcf8 <- enable|slot|offset&0xfc, then
 *           0xcfc + (offset & 3), at most 4 bytes
 *   kind 1: BAR 0 of slot 1 + (sel & 1), offset [1-2] & 0x3fff, wherever
 *           the BAR decodes now (or where it was assigned, if off)
 *   kind 2: the 32-bit PCI window + [1-3] (24 bits), or with sel & 4 the
 *           64-bit window
 *   kind 3: sel 0: port 0xcf8 + ([1] & 7) of the size; sel 1: RAM write
 *           at [1-2] of [3] bytes that follow; sel 2: migrate (above);
 *           sel 3: reset every device (a system reset); sel 4: MSI-X vector
 *           [1] of slot 1 + ([2] & 1) fires; sel 5: wait (up to 2 ms) for the I/O
 *           threads to take every available chain; sel 6-7: as sel 0
 *   make fuzz && build-fuzz/fuzz-pci -close_fd_mask=2 tests/fuzz/corpus/pci
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "godwit/dev.h"
#include "godwit/devices.h"
#include "godwit/devspec.h"
#include "godwit/layout.h"
#include "godwit/state.h"
#include "godwit/virtio.h"
#include "godwit/vm.h"

#define RAM_SIZE    (64 * 1024)
#define DISK_SIZE   (128 * 512)
#define MAX_OPS     4096

struct env {
	struct vm vm;
	uint64_t dirty[RAM_SIZE / 4096 / 64 + 1];
};

static char disk_spec[64];

static bool env_new(struct env *e, uint8_t *ram)
{
	struct vm_device_arg a;
	char err[256];

	memset(e, 0, sizeof(*e));
	e->vm.kvm_fd = e->vm.vm_fd = e->vm.exit_efd = -1;
	pthread_mutex_init(&e->vm.lock, NULL);
	pthread_cond_init(&e->vm.cond, NULL);
	e->vm.cfg.mem_size = RAM_SIZE;
	e->vm.mem[0] = (struct mem_region){ .gpa = 0, .size = RAM_SIZE, .host = ram,
					    .dev_dirty = e->dirty };
	e->vm.nr_mem = 1;
	e->vm.dev = calloc(1, sizeof(*e->vm.dev));
	if (!e->vm.dev || pci_init(&e->vm.dev->pci, &e->vm))
		abort();
	memset(&a, 0, sizeof(a));
	if (vm_device_arg_parse(&a, VM_DEV_DISK, disk_spec, err, sizeof(err)))
		abort();
	/* The image's lock is released by the other env's close first: one env at a time opens it. */
	if (virtio_blk_add(&e->vm, 1, &a) || virtio_rng_add(&e->vm, 2))
		return false;
	return true;
}

static void env_free(struct env *e)
{
	for (struct dev *d = dev_first(&e->vm), *next; d; d = next) {
		next = d->next;
		if (d->ops->destroy)
			d->ops->destroy(d);
	}
	pci_destroy(&e->vm.dev->pci);
	free(e->vm.dev);
	pthread_mutex_destroy(&e->vm.lock);
	pthread_cond_destroy(&e->vm.cond);
}

/* As vcpu.c's io_find: the range that holds [addr, addr + len). */
static struct io_range *io_find(struct io_range *tab, unsigned int nr, uint64_t addr,
				unsigned int len)
{
	for (unsigned int i = 0; i < nr; i++)
		if (addr >= tab[i].base && addr + len <= tab[i].base + tab[i].len)
			return &tab[i];
	return NULL;
}

static void pio(struct vm *vm, uint16_t port, void *data, unsigned int len, bool write)
{
	struct io_range *r = io_find(vm->pio, vm->nr_pio, port, len);

	if (r)
		r->fn(r->opaque, port, data, len, write);
	else if (!write)
		memset(data, 0xff, len);
}

static void mmio(struct vm *vm, uint64_t addr, void *data, unsigned int len, bool write)
{
	struct io_range *r = io_find(vm->mmio, vm->nr_mmio, addr, len);

	if (r)
		r->fn(r->opaque, addr, data, len, write);
	else if (!write)
		memset(data, 0xff, len);
}

static struct dev *find_dev(struct vm *vm, const char *name, uint32_t instance)
{
	for (struct dev *d = dev_first(vm); d; d = d->next)
		if (!strcmp(d->ops->name, name) && d->instance == instance)
			return d;
	return NULL;
}

/* Say which field (tag, and nested tag) of two saved states differs first. */
static void state_diff(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen, int depth)
{
	struct state_in ia, ib;
	struct state_field fa, fb;

	state_in_init(&ia, a, alen);
	state_in_init(&ib, b, blen);
	for (;;) {
		int ra = state_next(&ia, &fa), rb = state_next(&ib, &fb);

		if (ra <= 0 || rb <= 0) {
			if (ra != rb)
				fprintf(stderr, "%*s  one state has more fields\n", depth * 2, "");
			return;
		}
		if (fa.tag == fb.tag && fa.len == fb.len && !memcmp(fa.val, fb.val, fa.len))
			continue;
		fprintf(stderr, "%*s  tag %u: %u bytes, then tag %u: %u bytes", depth * 2, "", fa.tag,
			fa.len, fb.tag, fb.len);
		for (uint32_t i = 0; i < MIN(fa.len, fb.len); i++)
			if (fa.val[i] != fb.val[i]) {
				fprintf(stderr, "; first difference at byte %u: %#x, then %#x", i,
					fa.val[i], fb.val[i]);
				break;
			}
		fprintf(stderr, "\n");
		if (depth < 2 && fa.len > 6 && fb.len > 6)
			state_diff(fa.val, fa.len, fb.val, fb.len, depth + 1);
		return;
	}
}

/*
 * Migrate e's devices into a fresh set: every save must load, and the
 * loaded device must save the same bytes.
 */
static void migrate_check(struct env *e, uint8_t *ram)
{
	static struct env to;
	struct state_out out[8], again;
	struct dev *d;
	unsigned int n = 0;
	uint8_t *ram2;

	if (dev_quiesce_all(&e->vm))
		abort();
	if (getenv("FUZZ_DEBUG"))
		for (int i = 1; i <= 2; i++) {
			struct pci_dev *pd = e->vm.dev->pci.devs[i];

			fprintf(stderr, "fuzz-pci: migrate: slot %d: status %#x command %#x msix %d\n", i,
				pd->cfg[6], pd->cfg[4] | pd->cfg[5] << 8, pci_msix_enabled(pd));
		}
	for (d = dev_first(&e->vm); d && n < 8; d = d->next, n++) {
		state_out_init(&out[n]);
		if (d->ops->save(d, &out[n]))
			abort();
	}
	/* The destination gets its own copy of RAM (as a migration brings it). */
	ram2 = malloc(RAM_SIZE);
	memcpy(ram2, ram, RAM_SIZE);
	/* One blk image: the source lets go of it as a migration's COMMIT does. */
	if (dev_release_all(&e->vm))
		abort();
	if (!env_new(&to, ram2))
		abort();
	n = 0;
	for (d = dev_first(&e->vm); d && n < 8; d = d->next, n++) {
		struct dev *t = find_dev(&to.vm, d->ops->name, d->instance);
		struct state_in in;
		int ret;

		if (!t)
			abort();
		state_in_init(&in, out[n].buf, out[n].len);
		ret = dev_load(t, &in, t->ops->version);
		if (ret) {
			fprintf(stderr, "fuzz-pci: %s.%u: the saved state does not load: %d\n",
				d->ops->name, d->instance, ret);
			abort();
		}
		state_out_init(&again);
		if (t->ops->save(t, &again))
			abort();
		if (again.len != out[n].len || memcmp(again.buf, out[n].buf, again.len)) {
			fprintf(stderr, "fuzz-pci: %s.%u: save -> load -> save differs\n",
				d->ops->name, d->instance);
			state_diff(out[n].buf, out[n].len, again.buf, again.len, 0);
			abort();
		}
		state_out_free(&again);
		state_out_free(&out[n]);
	}
	env_free(&to);
	free(ram2);
	if (dev_acquire_all(&e->vm) || dev_resume_all(&e->vm))
		abort();
}

/*
 * Let the I/O threads catch up (a vCPU that waits for its request): up to
 * 2 ms until every enabled queue of a started device has taken every
 * available chain, or the device needs a reset.
 */
static void wait_queues(struct vm *vm)
{
	for (int t = 0; t < 40; t++) {
		bool busy = false;

		for (struct dev *d = dev_first(vm); d; d = d->next) {
			struct virtio_dev *v = strncmp(d->ops->name, "virtio-", 7) ? NULL :
					       virtio_pci_vdev(d);
			uint8_t st = v ? __atomic_load_n(&v->status, __ATOMIC_ACQUIRE) : 0;

			if (!v || !(st & VIRTIO_STATUS_DRIVER_OK) || (st & VIRTIO_STATUS_NEEDS_RESET))
				continue;
			for (unsigned int q = 0; q < v->ops->nr_queues; q++) {
				struct virtqueue *vq = &v->vqs[q];
				uint16_t *idx;

				if (!vq->enabled)
					continue;
				idx = vm_gpa_to_host(vm, vq->avail_gpa + 2, 2);
				if (idx && __atomic_load_n(idx, __ATOMIC_ACQUIRE) !=
					   __atomic_load_n(&vq->last_avail, __ATOMIC_ACQUIRE))
					busy = true;
			}
		}
		if (!busy)
			return;
		nanosleep(&(struct timespec){ 0, 50000 }, NULL);
	}
}

static uint64_t get(const uint8_t **p, const uint8_t *end, unsigned int n)
{
	uint64_t v = 0;

	for (unsigned int i = 0; i < n; i++, (*p)++)
		if (*p < end)
			v |= (uint64_t)**p << (8 * i);
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct env e;
	const uint8_t *p = data, *end = data + size;
	uint64_t bar_home[2];
	uint8_t *ram;

	if (!disk_spec[0]) {
		int fd = memfd_create("fuzz-pci-disk", 0);

		if (fd < 0 || ftruncate(fd, DISK_SIZE))
			abort();
		snprintf(disk_spec, sizeof(disk_spec), "/proc/self/fd/%d,serial=fuzz", fd);
	}
	ram = calloc(1, RAM_SIZE);
	if (!env_new(&e, ram))
		abort();
	for (int i = 0; i < 2; i++)
		bar_home[i] = e.vm.dev->pci.devs[1 + i]->bar[0].addr;

	for (unsigned int ops = 0; p < end && ops < MAX_OPS; ops++) {
		uint8_t op = *p++, kind = op & 3, sel = op >> 5;
		unsigned int len = 1u << ((op >> 2) & 3);
		bool write = op & 0x10;
		uint8_t buf[8] = { 0 };
		uint64_t v, off;

		switch (kind) {
		case 0: {
			uint32_t addr;

			off = get(&p, end, 1);
			addr = 0x80000000u | (uint32_t)sel << 11 | (uint32_t)(off & 0xfc);
			len = MIN(len, 4u);
			pio(&e.vm, PORT_PCI_ADDR, &addr, 4, true);
			v = write ? get(&p, end, len) : 0;
			memcpy(buf, &v, 8);
			pio(&e.vm, (uint16_t)(PORT_PCI_DATA + (off & 3)), buf, len, write);
			break;
		}
		case 1: {
			struct pci_dev *d = e.vm.dev->pci.devs[1 + (sel & 1)];
			uint64_t base = d && d->bar[0].addr ? d->bar[0].addr : bar_home[sel & 1];

			off = get(&p, end, 2) & 0x3fff;
			v = write ? get(&p, end, len) : 0;
			memcpy(buf, &v, 8);
			mmio(&e.vm, base + off, buf, len, write);
			break;
		}
		case 2:
			off = get(&p, end, 3);
			v = write ? get(&p, end, len) : 0;
			memcpy(buf, &v, 8);
			mmio(&e.vm, (sel & 4 ? ALIGN_UP(LAYOUT_4G, GiB) : LAYOUT_PCI_MMIO32) + off, buf, len,
			     write);
			break;
		default:
			switch (sel) {
			case 1: {
				unsigned int n;

				off = get(&p, end, 2);
				n = (unsigned int)get(&p, end, 1);
				for (unsigned int i = 0; i < n && p < end; i++)
					ram[(off + i) % RAM_SIZE] = *p++;
				break;
			}
			case 2:
				migrate_check(&e, ram);
				break;
			case 3:
				for (struct dev *d = dev_first(&e.vm); d; d = d->next)
					if (d->ops->reset)
						d->ops->reset(d);
				break;
			case 5:
				wait_queues(&e.vm);
				break;
			case 4: {
				unsigned int vec = (unsigned int)get(&p, end, 1);
				struct pci_dev *d = e.vm.dev->pci.devs[1 + (get(&p, end, 1) & 1)];

				if (d)
					(void)pci_msix_notify(d, vec);
				break;
			}
			default:
				off = get(&p, end, 1) & 7;
				len = MIN(len, 4u);
				v = write ? get(&p, end, len) : 0;
				memcpy(buf, &v, 8);
				pio(&e.vm, (uint16_t)(PORT_PCI_ADDR + off), buf, len, write);
				break;
			}
		}
	}
	if (getenv("FUZZ_DEBUG"))       /* FUZZ_DEBUG=1: the seeds' rings (mkseeds.py pci) */
		fprintf(stderr, "fuzz-pci: blk used idx %u, status %u %u; rng used idx %u\n",
			ram[0x9a], ram[0x1400], ram[0x1401], ram[0x409a]);
	env_free(&e);
	free(ram);
	return 0;
}
