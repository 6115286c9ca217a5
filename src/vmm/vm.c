/*
 * vm.c - the VM object: /dev/kvm and the VM fd, guest RAM and its memory
 * slots, the in-kernel irqchip and PIT, the I/O dispatch tables, and the
 * pause protocol shared with the vCPU threads (vcpu.c).
 *
 * Pause protocol (the one way to stop vCPUs; migration will use it too):
 *   1. The loop thread takes vm->lock, sets pause_requested and kicks every
 *      vCPU: run->immediate_exit = 1 plus SIGUSR1, so a vCPU inside KVM_RUN
 *      returns with EINTR and one about to enter it returns at once.
 *   2. Each vCPU thread, at the top of its run loop and under vm->lock,
 *      clears immediate_exit and then checks pause_requested; if set it
 *      parks (nr_parked++, broadcast) and waits on vm->cond.  Clearing
 *      immediate_exit under the lock before the check is what makes a kick
 *      impossible to lose.
 *   3. vm_pause() returns when nr_parked == nr_running_vcpus.  At that point
 *      no vCPU is inside KVM_RUN or a device handler, so vCPU and device
 *      state may be read or written.
 *   4. vm_resume() clears pause_requested and broadcasts.
 * An exit request (vm_request_exit) uses the same kick, with state STOPPING,
 * and wakes the loop through exit_efd.  A fence (vm_fence, guard.h) is a
 * second reason to park, kept apart from pause_requested: whoever pauses
 * and resumes the VM (the API, a migration) cannot let a fenced VM run.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "godwit/boot.h"
#include "godwit/layout.h"
#include "godwit/log.h"
#include "godwit/vm.h"

const char *vm_state_name(enum vm_state s)
{
	switch (s) {
	case VM_STATE_CREATED:  return "created";
	case VM_STATE_RUNNING:  return "running";
	case VM_STATE_PAUSED:   return "paused";
	case VM_STATE_STOPPING: return "stopping";
	}
	return "unknown";
}

/* Host memory we may use: MemAvailable from /proc/meminfo, in bytes (0 if unknown). */
static uint64_t host_mem_available(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[256];
	unsigned long long kib = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
			break;
	fclose(f);
	return (uint64_t)kib * 1024;
}

static int vm_add_ram(struct vm *vm, uint64_t gpa, uint64_t size)
{
	struct mem_region *r = &vm->mem[vm->nr_mem];
	struct kvm_userspace_memory_region kr;
	void *p;

	/*
	 * 2 MiB-aligned, with transparent huge pages where the host allows
	 * them: fewer faults and TLB misses for the guest, and scanning RAM the
	 * guest never touched (snapshot, migration) maps the huge zero page
	 * instead of faulting 4 KiB at a time.  KVM still logs dirty pages at
	 * 4 KiB.  The slack from aligning is unmapped again.
	 */
	p = mmap(NULL, size + 2 * MiB, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		log_warn("%s: mmap %llu MiB of guest RAM", __func__,
			 (unsigned long long)(size >> 20));
		return -ENOMEM;
	} else {
		uint8_t *raw = p, *aligned = (uint8_t *)ALIGN_UP((uintptr_t)raw, 2 * MiB);

		if (aligned > raw)
			munmap(raw, (size_t)(aligned - raw));
		if (aligned + size < raw + size + 2 * MiB)
			munmap(aligned + size, (size_t)(raw + size + 2 * MiB - (aligned + size)));
		p = aligned;
	}
	madvise(p, size, MADV_HUGEPAGE);
	/* Guest RAM never belongs in a core dump of the VMM. */
	madvise(p, size, MADV_DONTDUMP);
	r->dev_dirty = calloc((size / 4096 + 63) / 64, sizeof(uint64_t));
	if (!r->dev_dirty) {
		munmap(p, size);
		return -ENOMEM;
	}
	r->gpa = gpa;
	r->size = size;
	r->host = p;
	r->slot = vm->nr_mem;
	kr = (struct kvm_userspace_memory_region){
		.slot = r->slot,
		.guest_phys_addr = gpa,
		.memory_size = size,
		.userspace_addr = (uint64_t)(uintptr_t)p,
	};
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &kr) < 0) {
		int err = -errno;

		log_warn("%s: KVM_SET_USER_MEMORY_REGION at %#llx", __func__,
			 (unsigned long long)gpa);
		free(r->dev_dirty);
		r->dev_dirty = NULL;
		munmap(p, size);
		return err;
	}
	vm->nr_mem++;
	return 0;
}

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
			__atomic_fetch_or(&r->dev_dirty[pg / 64], 1ULL << (pg % 64), __ATOMIC_RELAXED);
	}
}

bool vm_test_clear_dirty(struct vm *vm, uint64_t gpa)
{
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		struct mem_region *r = &vm->mem[i];
		uint64_t pg, bit;

		if (gpa < r->gpa || gpa >= r->gpa + r->size)
			continue;
		pg = (gpa - r->gpa) / 4096;
		bit = 1ULL << (pg % 64);
		return __atomic_fetch_and(&r->dev_dirty[pg / 64], ~bit, __ATOMIC_RELAXED) & bit;
	}
	return false;
}

/* ---- dirty logging (migration) ---------------------------------------------------------- */

static int vm_slot_set_flags(struct vm *vm, struct mem_region *r, uint32_t flags)
{
	struct kvm_userspace_memory_region kr = {
		.slot = r->slot,
		.flags = flags,
		.guest_phys_addr = r->gpa,
		.memory_size = r->size,
		.userspace_addr = (uint64_t)(uintptr_t)r->host,
	};

	return ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &kr) < 0 ? -errno : 0;
}

int vm_dirty_log_start(struct vm *vm)
{
	int ret;

	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		struct mem_region *r = &vm->mem[i];
		size_t words = (r->size / 4096 + 63) / 64;

		/* Whatever devices wrote before goes out with the first full pass. */
		for (size_t w = 0; w < words; w++)
			__atomic_store_n(&r->dev_dirty[w], 0, __ATOMIC_RELAXED);
		ret = vm_slot_set_flags(vm, r, KVM_MEM_LOG_DIRTY_PAGES);
		if (ret) {
			log_warnx("cannot enable dirty logging on memory slot %u: %s", r->slot,
				  strerror(-ret));
			while (i--)
				(void)vm_slot_set_flags(vm, &vm->mem[i], 0);
			return ret;
		}
	}
	vm->dirty_logging = true;
	return 0;
}

void vm_dirty_log_stop(struct vm *vm)
{
	if (!vm->dirty_logging)
		return;
	/* Give every entry back: a later start begins with empty rings. */
	if (vm_dirty_ring_harvest(vm))
		log_warn("KVM_RESET_DIRTY_RINGS");
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		int ret = vm_slot_set_flags(vm, &vm->mem[i], 0);

		if (ret)
			log_warnx("cannot disable dirty logging on memory slot %u: %s",
				  vm->mem[i].slot, strerror(-ret));
	}
	vm->dirty_logging = false;
}

/*
 * One ring: entries KVM marked dirty, in order from ring_fetch, each
 * taken (flags acquire-loaded: the slot and offset are valid once DIRTY is
 * seen) and marked for reset.  Under ring_lock.  Returns the entries taken.
 */
static uint32_t vm_ring_collect(struct vm *vm, struct vcpu *v)
{
	uint32_t n = 0, mask = vm->dirty_ring - 1;

	for (;;) {
		struct kvm_dirty_gfn *e = &v->ring[v->ring_fetch & mask];
		uint32_t flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);
		uint32_t slot = e->slot;
		uint64_t off = e->offset;

		if (!(flags & KVM_DIRTY_GFN_F_DIRTY))
			break;
		for (unsigned int i = 0; i < vm->nr_mem; i++) {
			struct mem_region *r = &vm->mem[i];

			/* From the kernel, but an offset past the slot would write past dev_dirty. */
			if (r->slot == (slot & 0xffff) && !(slot >> 16) && off < r->size / 4096) {
				__atomic_fetch_or(&r->dev_dirty[off / 64], 1ULL << (off % 64),
						  __ATOMIC_RELAXED);
				break;
			}
		}
		__atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
		v->ring_fetch++;
		n++;
		/* A ring is never fuller than its size: a kernel that says otherwise is stopped. */
		if (n == vm->dirty_ring)
			break;
	}
	if (n)
		__atomic_fetch_add(&v->ring_pages, n, __ATOMIC_RELAXED);
	return n;
}

int vm_dirty_ring_harvest(struct vm *vm)
{
	uint64_t n = 0;
	int ret = 0;

	if (!vm->dirty_ring)
		return 0;
	pthread_mutex_lock(&vm->ring_lock);
	for (unsigned int c = 0; c < vm->cfg.ncpus; c++)
		if (vm->vcpus[c].ring)
			n += vm_ring_collect(vm, &vm->vcpus[c]);
	/* Re-protects the pages just taken: their next write makes a new entry. */
	if (n && ioctl(vm->vm_fd, KVM_RESET_DIRTY_RINGS, 0) < 0)
		ret = -errno;
	pthread_mutex_unlock(&vm->ring_lock);
	return ret;
}

uint64_t vm_vcpu_dirty_pages(struct vm *vm, unsigned int cpu)
{
	if (cpu >= vm->cfg.ncpus || !vm->vcpus)
		return 0;
	return __atomic_load_n(&vm->vcpus[cpu].ring_pages, __ATOMIC_RELAXED);
}

int64_t vm_dirty_log_get(struct vm *vm, unsigned int i, uint64_t *bitmap, uint64_t *scratch)
{
	struct mem_region *r = &vm->mem[i];
	struct kvm_dirty_log dl = { .slot = r->slot, .dirty_bitmap = scratch };
	uint64_t npages = r->size / 4096, words = (npages + 63) / 64;
	int64_t n = 0;

	if (vm->dirty_ring) {
		/* The rings' pages go into dev_dirty, collected with the devices' below. */
		int ret = vm_dirty_ring_harvest(vm);

		if (ret)
			return ret;
		memset(scratch, 0, words * sizeof(*scratch));
	} else if (ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &dl) < 0) {
		return -errno;
	}
	for (uint64_t w = 0; w < words; w++) {
		bitmap[w] |= scratch[w] | __atomic_exchange_n(&r->dev_dirty[w], 0, __ATOMIC_RELAXED);
		n += __builtin_popcountll(bitmap[w]);
	}
	return n;
}

int vm_dirty_log_clear(struct vm *vm, unsigned int i, uint64_t first, uint64_t npages,
		       uint64_t *bitmap)
{
	struct mem_region *r = &vm->mem[i];
	struct kvm_clear_dirty_log cl = {
		.slot = r->slot,
		.first_page = first,
		.num_pages = (uint32_t)npages,
		.dirty_bitmap = bitmap + first / 64,
	};

	if (!vm->dirty_manual || !npages)
		return 0;
	if (first % 64 || npages > UINT32_MAX)
		return -EINVAL;
	return ioctl(vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &cl) < 0 ? -errno : 0;
}

static int vm_register_io(struct io_range *tab, unsigned int *nr, uint64_t base,
			  uint64_t len, io_fn fn, void *opaque)
{
	if (*nr >= VM_MAX_IO_RANGES || !len)
		return -ENOSPC;
	for (unsigned int i = 0; i < *nr; i++)
		if (base < tab[i].base + tab[i].len && tab[i].base < base + len)
			return -EBUSY;
	tab[(*nr)++] = (struct io_range){ base, len, fn, opaque };
	return 0;
}

int vm_register_pio(struct vm *vm, uint64_t base, uint64_t len, io_fn fn, void *opaque)
{
	return vm_register_io(vm->pio, &vm->nr_pio, base, len, fn, opaque);
}

int vm_register_mmio(struct vm *vm, uint64_t base, uint64_t len, io_fn fn, void *opaque)
{
	return vm_register_io(vm->mmio, &vm->nr_mmio, base, len, fn, opaque);
}

int vm_irq_line(struct vm *vm, uint32_t irq, int level)
{
	struct kvm_irq_level l = { .irq = irq, .level = (uint32_t)level };

	if (ioctl(vm->vm_fd, KVM_IRQ_LINE, &l) < 0) {
		log_warn("%s: irq %u", __func__, irq);
		return -errno;
	}
	return 0;
}

static int kvm_check_cap(int fd, long cap)
{
	int r = ioctl(fd, KVM_CHECK_EXTENSION, cap);

	return r < 0 ? 0 : r;
}

static struct kvm_cpuid2 *kvm_supported_cpuid(int kvm_fd)
{
	for (unsigned int n = 64; n <= 4096; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) +
					      (n + CPUID_EXTRA_ENTRIES) * sizeof(c->entries[0]));

		if (!c)
			return NULL;
		c->nent = n;
		if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0)
			return c;
		free(c);
		if (errno != E2BIG)
			break;
	}
	return NULL;
}

int vm_host_check(const struct vm_config *cfg, char *err, size_t len)
{
	struct kvm_cpuid2 *cpuid = NULL;
	char missing[256] = "";
	uint64_t avail = host_mem_available();
	int fd, ret = 0, max_vcpus;

	if (avail && cfg->mem_size > avail) {
		snprintf(err, len, "guest RAM of %llu MiB (--mem) is more than the host has available (%llu MiB)",
			 (unsigned long long)(cfg->mem_size >> 20), (unsigned long long)(avail >> 20));
		return -ENOMEM;
	}
	fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, len, "cannot open /dev/kvm (is KVM enabled and accessible?): %s",
			 strerror(-ret));
		return ret;
	}
	if (ioctl(fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
		snprintf(err, len, "/dev/kvm speaks an unknown API version");
		ret = -ENOTSUP;
		goto out;
	}
	max_vcpus = kvm_check_cap(fd, KVM_CAP_MAX_VCPUS);
	if (!max_vcpus)
		max_vcpus = kvm_check_cap(fd, KVM_CAP_NR_VCPUS);
	if (max_vcpus && (int)cfg->ncpus > max_vcpus) {
		snprintf(err, len, "%u vCPUs is more than this host's KVM allows (%d)", cfg->ncpus,
			 max_vcpus);
		ret = -EINVAL;
		goto out;
	}
	if (!kvm_check_cap(fd, KVM_CAP_IRQCHIP) || !kvm_check_cap(fd, KVM_CAP_PIT2) ||
	    !kvm_check_cap(fd, KVM_CAP_USER_MEMORY) || !kvm_check_cap(fd, KVM_CAP_IMMEDIATE_EXIT)) {
		snprintf(err, len, "this KVM lacks a required capability (irqchip, PIT2, user "
			 "memory, immediate exit)");
		ret = -ENOTSUP;
		goto out;
	}
	cpuid = kvm_supported_cpuid(fd);
	if (!cpuid) {
		ret = -EIO;
		snprintf(err, len, "KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
		goto out;
	}
	ret = cpuid_filter(cpuid, cfg->cpu_model, missing, sizeof(missing));
	if (ret)
		snprintf(err, len, "this host cannot offer CPU model %s: missing %s",
			 cpu_model_name(cfg->cpu_model), missing[0] ? missing : "features");
out:
	free(cpuid);
	close(fd);
	return ret;
}

int vm_create(struct vm *vm, const struct vm_config *cfg)
{
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	uint64_t low, high;
	char missing[256] = "", why[512];
	int ret;

	memset(vm, 0, sizeof(*vm));
	vm->cfg = *cfg;
	vm->kvm_fd = vm->vm_fd = vm->exit_efd = -1;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	pthread_mutex_init(&vm->ring_lock, NULL);

	ret = vm_host_check(cfg, why, sizeof(why));
	if (ret) {
		log_warnx("%s", why);
		return ret;
	}
	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		ret = -errno;
		log_warn("cannot open /dev/kvm (is KVM enabled and accessible?)");
		return ret;
	}
	vm->cpuid = kvm_supported_cpuid(vm->kvm_fd);
	if (!vm->cpuid) {
		log_warn("KVM_GET_SUPPORTED_CPUID");
		ret = -EIO;
		goto err;
	}
	ret = cpuid_filter(vm->cpuid, cfg->cpu_model, missing, sizeof(missing));
	if (ret) {
		log_warnx("this host cannot offer CPU model %s: missing %s",
			  cpu_model_name(cfg->cpu_model), missing[0] ? missing : "features");
		goto err;
	}

	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0) {
		ret = -errno;
		log_warn("KVM_CREATE_VM");
		goto err;
	}
	/* Only VMX uses these, but they must lie in the MMIO hole, away from RAM. */
	if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &(uint64_t){ 0xfeffc000 }) < 0 &&
	    errno != ENOTTY && errno != EINVAL)
		log_warn("KVM_SET_IDENTITY_MAP_ADDR");
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, 0xfeffd000UL) < 0 && errno != ENOTTY)
		log_warn("KVM_SET_TSS_ADDR");
	if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) {
		ret = -errno;
		log_warn("KVM_CREATE_IRQCHIP");
		goto err;
	}
	if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0) {
		ret = -errno;
		log_warn("KVM_CREATE_PIT2");
		goto err;
	}

	/*
	 * KVM's dirty ring where it has one: each vCPU reports the pages it
	 * dirties in a ring of its own, so the migration sees who writes how
	 * much (and a vCPU whose ring fills exits to us).  It replaces the
	 * bitmap: KVM_GET_DIRTY_LOG and the manual protection below do not work
	 * with it.  Must be enabled before the vCPUs exist.
	 */
	{
		const char *env = getenv("GODWIT_DIRTY_RING");
		int cap = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
		int max = kvm_check_cap(vm->vm_fd, cap);

		if (max <= 0) {
			cap = KVM_CAP_DIRTY_LOG_RING;
			max = kvm_check_cap(vm->vm_fd, cap);
		}
		if (max >= (int)(VM_DIRTY_RING_MIN * sizeof(struct kvm_dirty_gfn)) &&
		    !(env && !strcmp(env, "off"))) {
			uint32_t bytes = VM_DIRTY_RING_MAX * sizeof(struct kvm_dirty_gfn);
			struct kvm_enable_cap ec = { .cap = (uint32_t)cap };

			while (bytes > (uint32_t)max)
				bytes /= 2;
			ec.args[0] = bytes;
			if (ioctl(vm->vm_fd, KVM_ENABLE_CAP, &ec) == 0)
				vm->dirty_ring = bytes / sizeof(struct kvm_dirty_gfn);
			else
				log_warn("KVM_ENABLE_CAP(dirty ring, %u bytes): using the dirty log",
					 bytes);
		}
	}
	/*
	 * Without the ring: manual dirty-log protection (migration clears dirty
	 * bits a chunk at a time, right before copying the chunk) with the log
	 * initially all set, so enabling it write-protects nothing.  Optional:
	 * without it, KVM_GET_DIRTY_LOG clears the log as it reads it.
	 */
	if (!vm->dirty_ring) {
		int m = kvm_check_cap(vm->vm_fd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
		uint64_t want = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;
		struct kvm_enable_cap ec = {
			.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, .args = { want },
		};

		if ((m & want) == want && ioctl(vm->vm_fd, KVM_ENABLE_CAP, &ec) == 0)
			vm->dirty_manual = true;
	}

	mem_split(cfg->mem_size, &low, &high);
	ret = vm_add_ram(vm, 0, low);
	if (ret)
		goto err;
	if (high) {
		ret = vm_add_ram(vm, LAYOUT_4G, high);
		if (ret)
			goto err;
	}

	vm->exit_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (vm->exit_efd < 0) {
		ret = -errno;
		goto err;
	}
	ret = vcpus_create(vm);
	if (ret)
		goto err;
	vm->state = VM_STATE_CREATED;
	return 0;
err:
	vm_destroy(vm);
	return ret;
}

void vm_destroy(struct vm *vm)
{
	vcpus_destroy(vm);
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		munmap(vm->mem[i].host, vm->mem[i].size);
		free(vm->mem[i].dev_dirty);
	}
	vm->nr_mem = 0;
	if (vm->exit_efd >= 0)
		close(vm->exit_efd);
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	vm->exit_efd = vm->vm_fd = vm->kvm_fd = -1;
	free(vm->cpuid);
	vm->cpuid = NULL;
}

/* Under vm->lock: make every vCPU leave KVM_RUN soon (see the protocol above). */
static void vm_kick_locked(struct vm *vm)
{
	for (unsigned int i = 0; i < vm->cfg.ncpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		if (v->thread_started && !v->exited)
			vcpu_kick_locked(v);
	}
}

int vm_pause(struct vm *vm)
{
	int ret = 0;

	pthread_mutex_lock(&vm->lock);
	if (vm->state == VM_STATE_STOPPING) {
		ret = -EBUSY;
	} else if (vm->state == VM_STATE_PAUSED) {
		ret = -EALREADY;
	} else {
		vm->pause_requested = true;
		vm_kick_locked(vm);
		while (vm->nr_parked < vm->nr_alive && vm->state != VM_STATE_STOPPING)
			pthread_cond_wait(&vm->cond, &vm->lock);
		if (vm->state == VM_STATE_STOPPING)
			ret = -EBUSY;
		else
			vm->state = VM_STATE_PAUSED;
	}
	pthread_mutex_unlock(&vm->lock);
	return ret;
}

int vm_resume(struct vm *vm)
{
	int ret = 0;

	pthread_mutex_lock(&vm->lock);
	if (vm->state == VM_STATE_STOPPING) {
		ret = -EBUSY;
	} else if (vm->state != VM_STATE_PAUSED) {
		ret = -EALREADY;
	} else {
		vm->pause_requested = false;
		vm->state = VM_STATE_RUNNING;
		pthread_cond_broadcast(&vm->cond);
	}
	pthread_mutex_unlock(&vm->lock);
	return ret;
}

void vm_fence(struct vm *vm, bool on)
{
	pthread_mutex_lock(&vm->lock);
	vm->fenced = on;
	if (on) {
		vm_kick_locked(vm);
		while (vm->nr_parked < vm->nr_alive && vm->state != VM_STATE_STOPPING)
			pthread_cond_wait(&vm->cond, &vm->lock);
	} else {
		pthread_cond_broadcast(&vm->cond);
	}
	pthread_mutex_unlock(&vm->lock);
}

bool vm_fenced(struct vm *vm)
{
	bool f;

	pthread_mutex_lock(&vm->lock);
	f = vm->fenced;
	pthread_mutex_unlock(&vm->lock);
	return f;
}

void vm_request_exit(struct vm *vm, int code, const char *why)
{
	pthread_mutex_lock(&vm->lock);
	if (vm->state != VM_STATE_STOPPING) {
		vm->state = VM_STATE_STOPPING;
		vm->exit_code = code;
		snprintf(vm->exit_reason, sizeof(vm->exit_reason), "%s", why);
		vm_kick_locked(vm);
		pthread_cond_broadcast(&vm->cond);
		if (vm->exit_efd >= 0 && write(vm->exit_efd, &(uint64_t){ 1 }, 8) < 0)
			log_warn("%s: eventfd", __func__);
	}
	pthread_mutex_unlock(&vm->lock);
}

double vm_uptime(struct vm *vm)
{
	struct timespec now;

	if (!vm->started.tv_sec && !vm->started.tv_nsec)
		return 0;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - vm->started.tv_sec) +
	       (double)(now.tv_nsec - vm->started.tv_nsec) / 1e9;
}
