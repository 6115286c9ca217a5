/*
 * vcpu.c - vCPU file descriptors and threads: per-vCPU CPUID and LAPIC
 * set-up, the KVM_RUN loop, and dispatch of port-I/O and MMIO exits to the
 * handlers devices registered with vm_register_pio/mmio.  The pause point
 * at the top of the run loop is half of the protocol described in vm.c.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "godwit/log.h"
#include "godwit/vm.h"

#define APIC_LVT_LINT0 0x350
#define APIC_LVT_LINT1 0x360
#define APIC_MODE_NMI    (4u << 8)
#define APIC_MODE_EXTINT (7u << 8)

/*
 * What firmware does on real machines and Linux expects: LINT0 delivers the
 * 8259's ExtINT, LINT1 delivers NMI.
 */
static int vcpu_setup_lapic(struct vcpu *v)
{
	struct kvm_lapic_state la;
	uint32_t val;

	if (ioctl(v->fd, KVM_GET_LAPIC, &la) < 0)
		return -errno;
	memcpy(&val, la.regs + APIC_LVT_LINT0, 4);
	val = (val & ~0x700u & ~(1u << 16)) | APIC_MODE_EXTINT;
	memcpy(la.regs + APIC_LVT_LINT0, &val, 4);
	memcpy(&val, la.regs + APIC_LVT_LINT1, 4);
	val = (val & ~0x700u & ~(1u << 16)) | APIC_MODE_NMI;
	memcpy(la.regs + APIC_LVT_LINT1, &val, 4);
	if (ioctl(v->fd, KVM_SET_LAPIC, &la) < 0)
		return -errno;
	return 0;
}

static int vcpu_setup_cpuid(struct vcpu *v)
{
	struct vm *vm = v->vm;
	size_t sz = sizeof(*vm->cpuid) +
		    (vm->cpuid->nent + CPUID_EXTRA_ENTRIES) * sizeof(vm->cpuid->entries[0]);
	struct kvm_cpuid2 *c = malloc(sz);
	int ret;

	if (!c)
		return -ENOMEM;
	memcpy(c, vm->cpuid, sizeof(*c) + vm->cpuid->nent * sizeof(c->entries[0]));
	ret = cpuid_set_vcpu(c, v->index, vm->cfg.ncpus, vm->tsc_khz);
	if (!ret && ioctl(v->fd, KVM_SET_CPUID2, c) < 0) {
		ret = -errno;
		log_warn("vcpu%u: KVM_SET_CPUID2", v->index);
	}
	free(c);
	return ret;
}

int vcpus_create(struct vm *vm)
{
	int mmap_size, ret, khz;

	mmap_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size < (int)sizeof(struct kvm_run))
		return -EIO;
	vm->vcpus = calloc(vm->cfg.ncpus, sizeof(*vm->vcpus));
	if (!vm->vcpus)
		return -ENOMEM;
	for (unsigned int i = 0; i < vm->cfg.ncpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		v->vm = vm;
		v->index = i;
		v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)i);
		if (v->fd < 0) {
			ret = -errno;
			log_warn("KVM_CREATE_VCPU %u", i);
			return ret;
		}
		v->run_size = (size_t)mmap_size;
		v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
		if (v->run == MAP_FAILED) {
			v->run = NULL;
			return -errno;
		}
		if (vm->dirty_ring) {
			size_t bytes = (size_t)vm->dirty_ring * sizeof(struct kvm_dirty_gfn);
			void *ring = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd,
					  KVM_DIRTY_LOG_PAGE_OFFSET * sysconf(_SC_PAGESIZE));

			if (ring == MAP_FAILED) {
				ret = -errno;
				log_warn("vcpu%u: cannot map the dirty ring", i);
				return ret;
			}
			v->ring = ring;
		}
		if (i == 0) {
			khz = ioctl(v->fd, KVM_GET_TSC_KHZ, 0);
			vm->tsc_khz = khz > 0 ? (uint32_t)khz : 0;
		}
		ret = vcpu_setup_cpuid(v);
		if (ret)
			return ret;
		ret = vcpu_setup_lapic(v);
		if (ret) {
			log_warnx("vcpu%u: LAPIC set-up failed: %s", i, strerror(-ret));
			return ret;
		}
	}
	return 0;
}

void vcpus_destroy(struct vm *vm)
{
	if (!vm->vcpus)
		return;
	for (unsigned int i = 0; i < vm->cfg.ncpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		if (v->run)
			munmap(v->run, v->run_size);
		if (v->ring)
			munmap(v->ring, (size_t)vm->dirty_ring * sizeof(struct kvm_dirty_gfn));
		if (v->fd > 0)
			close(v->fd);
	}
	free(vm->vcpus);
	vm->vcpus = NULL;
}

/* ---- exit dispatch ---------------------------------------------------------- */

static struct io_range *io_find(struct io_range *tab, unsigned int nr, uint64_t addr,
				unsigned int len)
{
	for (unsigned int i = 0; i < nr; i++)
		if (addr >= tab[i].base && addr + len <= tab[i].base + tab[i].len)
			return &tab[i];
	return NULL;
}

static void vcpu_handle_pio(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	struct vm *vm = v->vm;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	bool write = run->io.direction == KVM_EXIT_IO_OUT;
	struct io_range *r = io_find(vm->pio, vm->nr_pio, run->io.port, run->io.size);

	/* data_offset comes from the kernel, but check it stays in the page. */
	if (NEVER(run->io.data_offset + (size_t)run->io.size * run->io.count > v->run_size))
		return;
	for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
		if (r) {
			r->fn(r->opaque, run->io.port, data, run->io.size, write);
		} else {
			if (!write)
				memset(data, 0xff, run->io.size);
			log_debug("vcpu%u: unhandled port %s %#x size %u", v->index,
				  write ? "write" : "read", run->io.port, run->io.size);
		}
	}
}

static void vcpu_handle_mmio(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	struct vm *vm = v->vm;
	unsigned int len = run->mmio.len;
	struct io_range *r;

	if (NEVER(len > sizeof(run->mmio.data)))
		return;
	r = io_find(vm->mmio, vm->nr_mmio, run->mmio.phys_addr, len);
	if (r) {
		r->fn(r->opaque, run->mmio.phys_addr, run->mmio.data, len, run->mmio.is_write);
	} else {
		if (!run->mmio.is_write)
			memset(run->mmio.data, 0xff, len);
		log_debug("vcpu%u: unhandled MMIO %s %#llx len %u", v->index,
			  run->mmio.is_write ? "write" : "read",
			  (unsigned long long)run->mmio.phys_addr, len);
	}
}

const char *const vcpu_exit_names[VCPU_EXIT_NR] = {
	[VCPU_EXIT_IO] = "io",
	[VCPU_EXIT_MMIO] = "mmio",
	[VCPU_EXIT_HLT] = "hlt",
	[VCPU_EXIT_INTR] = "intr",
	[VCPU_EXIT_SHUTDOWN] = "shutdown",
	[VCPU_EXIT_SYSTEM_EVENT] = "system_event",
	[VCPU_EXIT_INTERNAL_ERROR] = "internal_error",
	[VCPU_EXIT_FAIL_ENTRY] = "fail_entry",
	[VCPU_EXIT_OTHER] = "other",
};

static enum vcpu_exit vcpu_exit_kind(uint32_t reason)
{
	switch (reason) {
	case KVM_EXIT_IO:             return VCPU_EXIT_IO;
	case KVM_EXIT_MMIO:           return VCPU_EXIT_MMIO;
	case KVM_EXIT_HLT:            return VCPU_EXIT_HLT;
	case KVM_EXIT_INTR:           return VCPU_EXIT_INTR;
	case KVM_EXIT_SHUTDOWN:       return VCPU_EXIT_SHUTDOWN;
	case KVM_EXIT_SYSTEM_EVENT:   return VCPU_EXIT_SYSTEM_EVENT;
	case KVM_EXIT_INTERNAL_ERROR: return VCPU_EXIT_INTERNAL_ERROR;
	case KVM_EXIT_FAIL_ENTRY:     return VCPU_EXIT_FAIL_ENTRY;
	}
	return VCPU_EXIT_OTHER;
}

/* Returns false when the vCPU must stop. */
static bool vcpu_handle_exit(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	char why[128];

	STAT_ADD(v->exits[vcpu_exit_kind(run->exit_reason)], 1);
	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		vcpu_handle_pio(v);
		v->io_pending = true;
		return true;
	case KVM_EXIT_MMIO:
		vcpu_handle_mmio(v);
		v->io_pending = true;
		return true;
	case KVM_EXIT_INTR:
		return true;
	case KVM_EXIT_DIRTY_RING_FULL: {
		/* Our ring is (nearly) full: empty them all, then KVM_RUN may go on. */
		int ret = vm_dirty_ring_harvest(v->vm);

		if (!ret)
			return true;
		snprintf(why, sizeof(why), "cannot reset the dirty rings: %s", strerror(-ret));
		break;
	}
	case KVM_EXIT_HLT:
		/* Only without an in-kernel LAPIC; treat as a spurious exit. */
		return true;
	case KVM_EXIT_SHUTDOWN:
		log_warnx("vcpu%u: triple fault (KVM_EXIT_SHUTDOWN); registers:", v->index);
		vcpu_dump_regs(v);
		vm_request_exit(v->vm, EXIT_TRIPLE_FAULT, "guest triple fault");
		return false;
	case KVM_EXIT_SYSTEM_EVENT:
		switch (run->system_event.type) {
		case KVM_SYSTEM_EVENT_SHUTDOWN:
			vm_request_exit(v->vm, EXIT_POWEROFF, "guest powered off");
			return false;
		case KVM_SYSTEM_EVENT_RESET:
			vm_request_exit(v->vm, EXIT_REBOOT, "guest reset");
			return false;
		default:
			snprintf(why, sizeof(why), "unknown system event %u", run->system_event.type);
			break;
		}
		break;
	case KVM_EXIT_INTERNAL_ERROR:
		snprintf(why, sizeof(why), "KVM internal error, suberror %u", run->internal.suberror);
		break;
	case KVM_EXIT_FAIL_ENTRY:
		snprintf(why, sizeof(why), "VM entry failed, reason %#llx",
			 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		break;
	default:
		snprintf(why, sizeof(why), "unexpected exit reason %u", run->exit_reason);
		break;
	}
	log_warnx("vcpu%u: %s; registers:", v->index, why);
	vcpu_dump_regs(v);
	vm_request_exit(v->vm, EXIT_INTERNAL, why);
	return false;
}

/* ---- the thread ------------------------------------------------------------- */

static void vcpu_kick_handler(int sig)
{
	(void)sig;
}

void vcpu_kick_locked(struct vcpu *v)
{
	v->run->immediate_exit = 1;
	pthread_kill(v->thread, SIGUSR1);
}

/*
 * The pause point.  Returns false when the thread must exit.  Clearing
 * immediate_exit under the lock, before looking at the flags, is what makes
 * a kick from vm_pause()/vm_request_exit() impossible to lose.
 */
static bool vcpu_pause_point(struct vcpu *v)
{
	struct vm *vm = v->vm;
	bool go;

	pthread_mutex_lock(&vm->lock);
	v->run->immediate_exit = 0;
	if ((vm->pause_requested || vm->fenced) && vm->state != VM_STATE_STOPPING &&
	    v->io_pending) {
		/*
		 * The last exit was port I/O or MMIO: KVM completes the
		 * instruction only on the next KVM_RUN.  Do that now, with
		 * immediate_exit so the guest runs no further, so a paused
		 * vCPU's registers are consistent (RIP past the instruction,
		 * the read value in RAX) for whoever saves them.
		 */
		pthread_mutex_unlock(&vm->lock);
		v->run->immediate_exit = 1;
		if (ioctl(v->fd, KVM_RUN, 0) == 0 || (errno != EINTR && errno != EAGAIN))
			log_warnx("vcpu%u: completing I/O before a pause did not stop", v->index);
		v->run->exit_reason = KVM_EXIT_INTR;
		v->io_pending = false;
		pthread_mutex_lock(&vm->lock);
		v->run->immediate_exit = 0;
	}
	while ((vm->pause_requested || vm->fenced) && vm->state != VM_STATE_STOPPING) {
		vm->nr_parked++;
		pthread_cond_broadcast(&vm->cond);
		pthread_cond_wait(&vm->cond, &vm->lock);
		vm->nr_parked--;
	}
	go = vm->state != VM_STATE_STOPPING;
	pthread_mutex_unlock(&vm->lock);
	return go;
}

/*
 * The throttle (throttle.h) kicked us at the start of a slice: sleep our
 * share of it.  A kick for a pause or an exit ends the sleep early, so
 * throttling never delays a pause.
 */
static void vcpu_throttle_point(struct vcpu *v)
{
	struct timespec until;
	uint32_t us;

	if (!__atomic_exchange_n(&v->throttle_due, 0, __ATOMIC_ACQ_REL))
		return;
	us = __atomic_load_n(&v->throttle_us, __ATOMIC_RELAXED);
	if (!us)
		return;
	__atomic_fetch_add(&v->throttle_sleeps, 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&v->throttle_slept_us, us, __ATOMIC_RELAXED);
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_nsec += (long)us * 1000;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec += until.tv_nsec / 1000000000L;
		until.tv_nsec %= 1000000000L;
	}
	/* vm_pause() and vm_request_exit() set their flag, then kick (EINTR). */
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
		if (__atomic_load_n(&v->vm->pause_requested, __ATOMIC_ACQUIRE) ||
		    __atomic_load_n(&v->vm->state, __ATOMIC_ACQUIRE) == VM_STATE_STOPPING)
			return;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *v = arg;
	struct vm *vm = v->vm;
	char name[16];
	sigset_t set;

	snprintf(name, sizeof(name), "vcpu%u", v->index);
	pthread_setname_np(pthread_self(), name);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);

	while (vcpu_pause_point(v)) {
		int r;

		vcpu_throttle_point(v);
		r = ioctl(v->fd, KVM_RUN, 0);

		v->io_pending = false;
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				STAT_ADD(v->exits[VCPU_EXIT_INTR], 1);
				/* KVM leaves the previous exit_reason: do not reuse it. */
				v->run->exit_reason = KVM_EXIT_INTR;
				continue;
			}
			log_warn("vcpu%u: KVM_RUN", v->index);
			vcpu_dump_regs(v);
			vm_request_exit(vm, EXIT_INTERNAL, "KVM_RUN failed");
			break;
		}
		if (!vcpu_handle_exit(v))
			break;
	}

	pthread_mutex_lock(&vm->lock);
	v->exited = true;
	vm->nr_alive--;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return NULL;
}

int vm_start(struct vm *vm)
{
	struct sigaction sa = { .sa_handler = vcpu_kick_handler };
	sigset_t set, old;
	int ret = 0;

	/* No SA_RESTART: the signal must interrupt KVM_RUN. */
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL) < 0)
		return -errno;
	/* Threads inherit a mask blocking everything; each unblocks SIGUSR1 only. */
	sigfillset(&set);
	pthread_sigmask(SIG_BLOCK, &set, &old);

	clock_gettime(CLOCK_MONOTONIC, &vm->started);
	pthread_mutex_lock(&vm->lock);
	vm->state = VM_STATE_RUNNING;
	for (unsigned int i = 0; i < vm->cfg.ncpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		ret = -pthread_create(&v->thread, NULL, vcpu_thread, v);
		if (ret) {
			log_warnx("%s: cannot start vcpu%u thread: %s", __func__, i, strerror(-ret));
			break;
		}
		v->thread_started = true;
		vm->nr_alive++;
	}
	pthread_mutex_unlock(&vm->lock);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret)
		vm_request_exit(vm, EXIT_INTERNAL, "cannot start vCPU threads");
	return ret;
}

void vm_join(struct vm *vm)
{
	for (unsigned int i = 0; i < vm->cfg.ncpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		if (v->thread_started) {
			pthread_join(v->thread, NULL);
			v->thread_started = false;
		}
	}
}
