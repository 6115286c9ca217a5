/*
 * vm.h - a virtual machine: its configuration, KVM file descriptors, guest
 * memory, vCPU threads and the pause protocol.
 *
 * Threads: the loop thread (main) owns configuration, devices' backends and
 * the API; each vCPU thread runs KVM_RUN and dispatches port and MMIO exits
 * to devices (each device takes its own lock).  vm->lock protects state,
 * the pause handshake and the exit request.
 */
#ifndef GODWIT_VM_H
#define GODWIT_VM_H

#include <pthread.h>
#include <time.h>
#include <linux/kvm.h>

#include "godwit/common.h"
#include "godwit/cpuid.h"
#include "godwit/devspec.h"
#include "godwit/sandbox.h"

struct loop;
struct migration;
struct fleet_guard;
struct vm;


struct vm_config {
	const char *kernel;
	const char *initrd;      /* NULL: none */
	const char *cmdline;     /* NULL: empty */
	uint64_t mem_size;
	unsigned int ncpus;
	char name[64];
	uint8_t uuid[16];
	enum cpu_model cpu_model;
	const char *api_path;    /* NULL: no API */
	bool console_raw;        /* stdin is a terminal put in raw mode */
	struct vm_device_arg devices[VM_MAX_DEVICE_ARGS]; /* --disk/--net, in order */
	unsigned int nr_devices;
	bool rng;                /* --rng */
	bool incoming;           /* a migration destination: disks are locked only at COMMIT */
	struct sandbox_opts sandbox;  /* --sandbox, --no-sandbox, --user (sandbox.h) */
	/*
	 * --snapshot-dir: where the API may write snapshots, as given (NULL:
	 * snapshots are refused), its canonical path and a descriptor opened
	 * before the sandbox (valid only with snapshot_dir set).
	 */
	const char *snapshot_dir;
	char snapshot_dir_real[4096];
	int snapshot_dirfd;
	/* --fleet-etcd, --fleet-lease: the host lease guard (guard.h); NULL/0: none. */
	const char *fleet_etcd;
	int64_t fleet_lease;
};

enum vm_state {
	VM_STATE_CREATED,
	VM_STATE_RUNNING,
	VM_STATE_PAUSED,
	VM_STATE_STOPPING,       /* an exit was requested; threads winding down */
};
const char *vm_state_name(enum vm_state s);

/* One contiguous piece of guest RAM. */
struct mem_region {
	uint64_t gpa;
	uint64_t size;
	uint8_t *host;
	uint32_t slot;
	/*
	 * Pages written by device emulation (one bit per 4 KiB page, set
	 * atomically by any thread): KVM's dirty log sees only vCPU writes.
	 * With the dirty ring, the pages harvested from the vCPUs' rings land
	 * here too until vm_dirty_log_get() collects them.
	 */
	uint64_t *dev_dirty;
};

/* KVM's dirty ring per vCPU, in entries: the largest KVM allows up to MAX (1 MiB), else none. */
#define VM_DIRTY_RING_MIN 1024
#define VM_DIRTY_RING_MAX 65536
/* Why KVM_RUN returned, as GET /metrics counts it (vcpu_exit_names[]). */
enum vcpu_exit {
	VCPU_EXIT_IO,
	VCPU_EXIT_MMIO,
	VCPU_EXIT_HLT,
	VCPU_EXIT_INTR,          /* a signal (a kick) or KVM_EXIT_INTR */
	VCPU_EXIT_SHUTDOWN,
	VCPU_EXIT_SYSTEM_EVENT,
	VCPU_EXIT_INTERNAL_ERROR,
	VCPU_EXIT_FAIL_ENTRY,
	VCPU_EXIT_OTHER,
	VCPU_EXIT_NR
};
/* "io", "mmio", "hlt", "intr", "shutdown", "system_event", "internal_error", ... */
extern const char *const vcpu_exit_names[VCPU_EXIT_NR];

struct vcpu {
	struct vm *vm;
	unsigned int index;
	int fd;
	struct kvm_run *run;
	size_t run_size;
	pthread_t thread;
	bool thread_started;
	bool exited;             /* under vm->lock: the thread has left its loop */
	bool io_pending;         /* vCPU thread only: last exit was PIO/MMIO, not yet completed */
	/* KVM's dirty ring (vm->dirty_ring), mmap'd; ring_fetch under vm->ring_lock */
	struct kvm_dirty_gfn *ring;
	uint32_t ring_fetch;     /* next entry to harvest (free-running) */
	uint64_t ring_pages;     /* entries harvested from this ring (atomic): its dirty pages */
	/* throttle.h: the sleep at the start of each slice (µs, atomic; 0: runs free) */
	uint32_t throttle_us;
	uint32_t throttle_due;   /* atomic: the throttle kicked us; sleep before KVM_RUN */
	uint64_t throttle_sleeps, throttle_slept_us;   /* atomic: what the throttle cost us */
	/* KVM_RUN returns by reason (STAT_ADD by the vCPU thread; not saved: not guest state). */
	_Atomic uint64_t exits[VCPU_EXIT_NR];
};

/* Port I/O and MMIO handlers registered by devices. */
typedef void (*io_fn)(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write);
struct io_range {
	uint64_t base, len;
	io_fn fn;
	void *opaque;
};
#define VM_MAX_IO_RANGES 64

struct vm {
	struct vm_config cfg;
	int kvm_fd, vm_fd;
	uint32_t tsc_khz;
	struct kvm_cpuid2 *cpuid;       /* filtered template, per-vCPU copies made */

	struct mem_region mem[2];       /* below the MMIO hole, above 4 GiB */
	unsigned int nr_mem;

	struct vcpu *vcpus;
	struct io_range pio[VM_MAX_IO_RANGES], mmio[VM_MAX_IO_RANGES];
	unsigned int nr_pio, nr_mmio;

	struct loop *loop;
	struct timespec started;        /* CLOCK_MONOTONIC at the first KVM_RUN */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	enum vm_state state;
	unsigned int nr_parked;         /* vCPU threads waiting in the pause point */
	unsigned int nr_alive;          /* vCPU threads started and not exited */
	bool pause_requested;
	bool fenced;                    /* vm_fence(): the vCPUs stay parked whatever the state */
	int exit_efd;                   /* eventfd: readable once an exit is requested */
	int exit_code;                  /* valid once state == STOPPING */
	char exit_reason[128];

	bool dirty_manual;              /* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled */
	/*
	 * KVM's dirty ring: entries per vCPU ring (a power of two), 0 when the
	 * dirty log's bitmap is used instead (KVM without the ring, or
	 * GODWIT_DIRTY_RING=off).  ring_lock serializes harvesting.
	 */
	uint32_t dirty_ring;
	pthread_mutex_t ring_lock;
	bool dirty_logging;             /* vm_dirty_log_start() is in effect */
	struct migration *mig;          /* the outgoing migration, or NULL (migrate.h) */
	struct fleet_guard *guard;      /* --fleet-lease (guard.h), or NULL */

	struct vm_devices *dev;         /* platform devices (devices.h) */
	struct dev *devices;            /* every device, in save/load order (dev.h) */
};

/*
 * vm_host_check - can this host run cfg (memory available, /dev/kvm, vCPUs,
 * capabilities, the CPU model)?  0, or -errno with why in err.  vm_create()
 * checks the same; a migration destination asks before it accepts.
 */
int vm_host_check(const struct vm_config *cfg, char *err, size_t len) __must_check;
int vm_create(struct vm *vm, const struct vm_config *cfg) __must_check;
/*
 * vm_fence - hold the vCPUs parked (on) or let them go (off), apart from
 * vm_pause()/vm_resume(): a fenced VM that is resumed, started or restored
 * still runs no guest code until the fence is lifted (guard.h).  On: returns
 * once every vCPU is parked.
 */
void vm_fence(struct vm *vm, bool on);
bool vm_fenced(struct vm *vm);
void vm_destroy(struct vm *vm);
/* Translate a guest-physical range to a host pointer, or NULL if not all RAM. */
void *vm_gpa_to_host(struct vm *vm, uint64_t gpa, uint64_t len);
int vm_register_pio(struct vm *vm, uint64_t base, uint64_t len, io_fn fn, void *opaque) __must_check;
int vm_register_mmio(struct vm *vm, uint64_t base, uint64_t len, io_fn fn, void *opaque) __must_check;
int vm_irq_line(struct vm *vm, uint32_t irq, int level);
/*
 * vm_mark_dirty - record that emulation wrote guest bytes [gpa, gpa+len):
 * sets their pages in the region's dev_dirty bitmap (thread-safe).  Bytes
 * outside RAM are ignored.
 */
void vm_mark_dirty(struct vm *vm, uint64_t gpa, uint64_t len);
/* Test-and-clear a page's device-dirty bit (migration reads these). */
bool vm_test_clear_dirty(struct vm *vm, uint64_t gpa);
/*
 * Dirty logging for migration.  vm_dirty_log_start() sets
 * KVM_MEM_LOG_DIRTY_PAGES on every memory slot and forgets earlier device
 * writes; vm_dirty_log_stop() turns it off again.
 * vm_dirty_log_get() adds to bitmap (one bit per page of vm->mem[i], KVM's
 * layout, (pages + 63) / 64 words) the pages dirtied by vCPUs and by
 * device emulation (scratch: as big, for KVM's copy), and returns how many
 * bits bitmap now has set, or -errno.  The device bits are
 * cleared as they are read; KVM's are cleared by the get itself unless
 * vm->dirty_manual, in which case vm_dirty_log_clear() clears (and
 * re-protects) the set bits of pages [first, first + npages), first a
 * multiple of 64: call it right before copying those pages.  With
 * vm->dirty_manual the log starts all set.
 */
int vm_dirty_log_start(struct vm *vm) __must_check;
void vm_dirty_log_stop(struct vm *vm);
int64_t vm_dirty_log_get(struct vm *vm, unsigned int i, uint64_t *bitmap, uint64_t *scratch);
int vm_dirty_log_clear(struct vm *vm, unsigned int i, uint64_t first, uint64_t npages,
		       uint64_t *bitmap) __must_check;
/*
 * With the dirty ring: move every vCPU's harvestable entries into the
 * regions' dev_dirty bitmaps and give the entries back to KVM (which
 * write-protects those pages again).  Any thread; a vCPU thread calls it
 * on KVM_EXIT_DIRTY_RING_FULL.  0 or -errno.
 */
int vm_dirty_ring_harvest(struct vm *vm) __must_check;
/* Pages the vCPU has dirtied so far, as its ring reported them (0 without the ring). */
uint64_t vm_vcpu_dirty_pages(struct vm *vm, unsigned int cpu);
/* Start the vCPU threads; the loop must already exist. */
int vm_start(struct vm *vm) __must_check;
/*
 * The pause protocol.  vm_pause() kicks every vCPU out of KVM_RUN (a signal
 * with KVM's immediate_exit) and returns once all of them are parked in
 * vcpu_park(); vm_resume() releases them.  Both are called from the loop
 * thread only.  Returns 0, or -EBUSY if the VM is stopping.
 */
int vm_pause(struct vm *vm) __must_check;
int vm_resume(struct vm *vm) __must_check;
/*
 * vm_request_exit - ask the VM to stop with exit code `code` (EXIT_*) for
 * reason `why`.  Callable from any thread; the first request wins.
 */
void vm_request_exit(struct vm *vm, int code, const char *why);
/* Join the vCPU threads after an exit request. */
void vm_join(struct vm *vm);
/* Seconds since the first KVM_RUN, 0 before. */
double vm_uptime(struct vm *vm);

/* vcpu.c: create/destroy the vCPU fds (vm_create calls them). */
int vcpus_create(struct vm *vm) __must_check;
void vcpus_destroy(struct vm *vm);
/* Set the boot vCPU's registers for the entry boot_load() chose. */
struct boot_entry;
int vcpu_set_boot_regs(struct vcpu *v, const struct boot_entry *e) __must_check;
/* Print a vCPU's registers to stderr (triple faults, internal errors). */
void vcpu_dump_regs(struct vcpu *v);
/*
 * vcpu_kick_locked - under vm->lock, make v's running thread leave KVM_RUN
 * soon: SIGUSR1 interrupts a KVM_RUN, and immediate_exit (which the thread
 * clears under vm->lock before looking at its flags) ends the next one at
 * once when the signal lands outside.  Set the flag v is to act on first.
 */
void vcpu_kick_locked(struct vcpu *v);

#endif
