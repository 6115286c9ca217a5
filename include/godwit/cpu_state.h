/*
 * cpu_state.h - x86 vCPU state and VM-wide in-kernel device state (PIC,
 * IOAPIC, PIT, kvmclock): read from KVM, encoded as tagged fields
 * (state.h), decoded, checked against this host, and written back in the
 * order KVM needs.  The tags and the load order are listed at the top of
 * src/arch/x86/cpu_state.c and in docs/cpu-state.md.
 *
 * Use, on the source (VM paused with vm_pause(), or never started):
 *     cpu_state_save(&vm->vcpus[i], &out)    one buffer per vCPU
 *     vm_state_save(vm, &out)                one buffer per VM
 * and on the destination (a VM created with the same configuration, not
 * started; RAM and devices loaded first):
 *     vm_state_load(vm, &in, VM_STATE_VERSION, &opts)
 *     cpu_state_load(&vm->vcpus[i], &in, CPU_STATE_VERSION, &opts)
 * The version travels beside the buffer (the stream's section header), as
 * for devices (dev.h).
 *
 * Time across a stop (opts->clock):
 *   CPU_CLOCK_FROZEN   (snapshot restore, and what QEMU does to kvmclock
 *                      while a VM is stopped): the guest's TSC and kvmclock
 *                      resume at the values saved; the guest sees no time
 *                      pass while it was stopped.
 *   CPU_CLOCK_ADVANCE  (live migration): TSC and kvmclock are advanced by
 *                      the host wall-clock (CLOCK_REALTIME) time between the
 *                      save and the load, so the stall a guest measures with
 *                      its TSC is the real downtime.  Needs the two hosts'
 *                      clocks synchronised (NTP); a realtime clock that went
 *                      backwards counts as no time passing.
 * Under PVM (this project's development hosts) a guest reads the host's TSC
 * whatever the VMM writes, so the TSC follows the host in both modes; only
 * kvmclock honours FROZEN there (see cpu_state.c).
 */
#ifndef GODWIT_CPU_STATE_H
#define GODWIT_CPU_STATE_H

#include <linux/kvm.h>

#include "godwit/common.h"
#include "godwit/state.h"

struct vm;
struct vcpu;

/* Version 1: the first layout. */
#define CPU_STATE_VERSION     1
#define CPU_STATE_MIN_VERSION 1
/* Version 1: the first layout. */
#define VM_STATE_VERSION      1
#define VM_STATE_MIN_VERSION  1

/* At most this many MSRs in one vCPU's state (load refuses more). */
#define CPU_STATE_MAX_MSRS 1024

enum cpu_clock_mode {
	CPU_CLOCK_FROZEN = 0,
	CPU_CLOCK_ADVANCE,
};

struct cpu_load_opts {
	enum cpu_clock_mode clock;
};

/* Which optional pieces a struct cpu_state holds (bits of `has`). */
#define CPU_HAS_XCRS   (1u << 0)
#define CPU_HAS_PDPTRS (1u << 1)   /* sregs.pdptrs valid (PAE paging, SREGS2) */

/*
 * One vCPU's state as KVM's structures.  cpu_state_read() fills it from
 * KVM, cpu_state_decode() from a saved buffer; cpu_state_free() releases
 * xsave and msrs.
 */
struct cpu_state {
	uint32_t index;                 /* the vCPU (APIC ID) */
	uint32_t tsc_khz;               /* the guest's TSC frequency */
	uint64_t time_ns;               /* host CLOCK_REALTIME when tsc was read */
	uint64_t tsc;                   /* IA32_TSC */
	uint32_t has;                   /* CPU_HAS_* */
	struct kvm_regs regs;
	struct kvm_sregs2 sregs;        /* flags: KVM_SREGS2_FLAGS_PDPTRS_VALID */
	uint8_t *xsave;                 /* the XSAVE region (uABI, standard format) */
	uint32_t xsave_len;
	struct kvm_xcrs xcrs;
	struct kvm_debugregs debugregs;
	struct kvm_msr_entry *msrs;     /* every readable MSR but IA32_TSC */
	uint32_t nr_msrs;
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events events;
	struct kvm_mp_state mp_state;
};

/*
 * cpu_state_save - read vCPU v's state from KVM and append it to o as
 * tagged fields.  First completes an I/O or MMIO exit the vCPU has not yet
 * re-entered KVM for (KVM_RUN with immediate_exit), so RIP is past the
 * instruction and an IN's result is in RAX.  The VM must be paused (or not
 * started): called from any one thread, never concurrently with KVM_RUN.
 *   v: the vCPU
 *   o: the buffer (its sticky error is returned if set)
 * Returns 0, -ENOMEM, or the failing ioctl's -errno (logged, naming the
 * piece).  An MSR that cannot be read is skipped (logged at debug level).
 */
int cpu_state_save(struct vcpu *v, struct state_out *o) __must_check;

/*
 * cpu_state_load - decode a buffer cpu_state_save() wrote and set vCPU v
 * to it.  Everything is decoded and checked before the first ioctl, so a
 * malformed buffer leaves the vCPU untouched.
 *   v:       a vCPU of a VM that has not run since it was created
 *   in:      the buffer (read to its end)
 *   version: the layout version the buffer was written with
 *   opts:    how time moves across the stop (NULL: CPU_CLOCK_FROZEN)
 * Returns 0; -EINVAL for a version outside [CPU_STATE_MIN_VERSION,
 * CPU_STATE_VERSION], another vCPU's state, or a piece this host cannot
 * take (XSAVE size, too many MSRs, XCRs without KVM_CAP_XCRS); -EBADMSG for
 * a malformed buffer or a missing piece; or the -errno of the ioctl that
 * refused a piece (the vCPU is then partly loaded: discard the VM).  Every
 * failure is logged with the piece's name.
 */
int cpu_state_load(struct vcpu *v, struct state_in *in, uint16_t version,
		   const struct cpu_load_opts *opts) __must_check;

/*
 * cpu_state_read - v's state from KVM into s (allocating s->xsave and
 * s->msrs; cpu_state_free() them even on failure).  Same rules as
 * cpu_state_save(), which is this plus the encoding.
 */
int cpu_state_read(struct vcpu *v, struct cpu_state *s) __must_check;
/*
 * cpu_state_decode - parse a cpu_state_save() buffer into s (allocating as
 * cpu_state_read() does), checking lengths, counts and that every required
 * piece is there, but nothing about the host.  Returns 0, -EINVAL (bad
 * version) or -EBADMSG, logged with the piece's name.
 */
int cpu_state_decode(struct state_in *in, uint16_t version, struct cpu_state *s) __must_check;
void cpu_state_free(struct cpu_state *s);
/* The value of MSR index in s, or false if s has none. */
bool cpu_state_msr(const struct cpu_state *s, uint32_t index, uint64_t *value);

/* ---- VM-wide in-kernel state ---------------------------------------------------- */

/* The VM's in-kernel devices and kvmclock as KVM's structures. */
struct vm_kstate {
	uint64_t time_ns;               /* host CLOCK_REALTIME when clock was read */
	struct kvm_irqchip pic[2];      /* KVM_IRQCHIP_PIC_MASTER, _SLAVE */
	struct kvm_irqchip ioapic;      /* KVM_IRQCHIP_IOAPIC */
	struct kvm_pit_state2 pit;      /* count_load_time (a host time) is not saved */
	struct kvm_clock_data clock;
};

/*
 * vm_state_save - append the PIC pair, IOAPIC, PIT and kvmclock of vm to o.
 * The VM must be paused (or not started).  Returns 0, -ENOMEM, or the
 * failing ioctl's -errno (logged, naming the piece).
 */
int vm_state_save(struct vm *vm, struct state_out *o) __must_check;
/*
 * vm_state_load - decode and check a vm_state_save() buffer, then set the
 * in-kernel devices and kvmclock (advanced or not, per opts->clock; NULL:
 * frozen).  Returns 0, -EINVAL (version), -EBADMSG (malformed or missing
 * piece), or the refusing ioctl's -errno; all logged naming the piece.
 */
int vm_state_load(struct vm *vm, struct state_in *in, uint16_t version,
		  const struct cpu_load_opts *opts) __must_check;
/* vm_state_read / vm_state_decode: as cpu_state_read/decode, for the VM. */
int vm_state_read(struct vm *vm, struct vm_kstate *s) __must_check;
int vm_state_decode(struct state_in *in, uint16_t version, struct vm_kstate *s) __must_check;

#endif
