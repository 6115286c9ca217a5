/*
 * cpu_state.c - x86 vCPU state (cpu_state.h): read from KVM, encoded as
 * tagged fields (state.h), decoded and checked against this host, and
 * written back in the order KVM needs.  The VM's in-kernel devices are
 * vm_state.c's, the MSR lists msr.c's.  Nothing here is a raw struct copy:
 * each record below is described once (a struct state_rec table) with an
 * explicit little-endian layout that drives both directions, so the bytes do
 * not depend on the compiler or on <linux/kvm.h> padding.  The XSAVE region and the LAPIC
 * register page are kept as bytes: they are hardware formats (the XSAVE
 * standard format, the xAPIC register page) that KVM passes through.
 *
 * vCPU state (CPU_STATE_VERSION 1).  Tag, size in bytes, content:
 *   0x0001 INDEX      4    u32 vCPU index (= APIC ID); load checks it
 *   0x0002 TSC_KHZ    4    u32 guest TSC frequency (KVM_GET_TSC_KHZ)
 *   0x0003 TIME_NS    8    u64 host CLOCK_REALTIME (ns) when TSC was read
 *   0x0004 TSC        8    u64 IA32_TSC (MSR 0x10)
 *   0x0010 REGS       144  u64 rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags
 *   0x0011 SREGS      260  8 segments cs ds es fs gs ss tr ldt, each
 *                          {u64 base, u32 limit, u16 selector, u8 type, present,
 *                          dpl, db, s, l, g, avl, unusable} (23 bytes); gdt, idt
 *                          {u64 base, u16 limit}; u64 cr0 cr2 cr3 cr4 cr8 efer
 *                          apic_base
 *   0x0012 PDPTRS     32   u64 x 4, optional: present when KVM_GET_SREGS2 said
 *                          the PDPTRs are valid (PAE paging outside long mode)
 *   0x0020 XSAVE      N    the XSAVE region (KVM_GET_XSAVE/XSAVE2, standard
 *                          format); N = this host's KVM_CAP_XSAVE2 size, at
 *                          least 4096; load requires N to match
 *   0x0021 XCRS       12n  {u32 xcr, u64 value} x n, n <= 16; optional
 *                          (hosts without KVM_CAP_XCRS)
 *   0x0022 DEBUGREGS  48   u64 dr0 dr1 dr2 dr3 dr6 dr7
 *   0x0030 MSRS       12n  {u32 index, u64 value} x n, n <= CPU_STATE_MAX_MSRS:
 *                          every MSR of KVM_GET_MSR_INDEX_LIST plus the KVM PV
 *                          MSRs (kvmclock old and new, async PF, steal time,
 *                          PV EOI, poll control) and the MTRRs, but IA32_TSC;
 *                          those that fail to read are left out
 *   0x0040 LAPIC      1024 the xAPIC register page (KVM_GET_LAPIC)
 *   0x0050 MP_STATE   4    u32 KVM_MP_STATE_*
 *   0x0051 EVENTS     37   exception {u8 injected, nr, has_error_code, pending,
 *                          u32 error_code}, interrupt {u8 injected, nr, soft,
 *                          shadow}, nmi {u8 injected, pending, masked}, u32
 *                          sipi_vector, u32 flags, smi {u8 smm, pending,
 *                          smm_inside_nmi, latched_init}, u8 triple_fault
 *                          pending, u8 exception_has_payload, u64 payload
 * Every field but PDPTRS and XCRS is required; EVENTS comes last, so a
 * buffer cut at any byte fails to load.  Unknown tags are skipped, a tag
 * seen twice is an error.
 *
 * Load order (cpu_state_load), and why:
 *   regs; xsave; xcrs; sregs (CRs, EFER, APIC base: the LAPIC's mode);
 *   IA32_TSC (tsc_write), before the MSRs relative to it;
 *   MSRs: ASYNC_PF_INT before ASYNC_PF_EN (enabling interrupt delivery
 *     needs the vector), TSC_DEADLINE held back; a write KVM refuses is
 *     an error unless the vCPU already holds the value;
 *   LAPIC, after the APIC base (x2APIC mode decides how the ID is read);
 *   TSC_DEADLINE, after the LAPIC: KVM ignores a deadline unless the LVT
 *     timer is already in TSC-deadline mode;
 *   MP state; debug registers; vCPU events last (pending exception,
 *     interrupt, NMI, SIPI vector, latched INIT act on the state above).
 *   With CPU_CLOCK_ADVANCE, KVM_KVMCLOCK_CTRL then tells a guest using
 *   kvmclock that it was stopped (its soft-lockup watchdog stays quiet).
 * VM state may be loaded before or after the vCPUs; godwit loads it first.
 *
 * Time: TSC and kvmclock are saved with the host's CLOCK_REALTIME.  On
 * load, CPU_CLOCK_FROZEN writes them back as saved (the guest sees no time
 * pass while stopped); CPU_CLOCK_ADVANCE adds the realtime elapsed since
 * the save (TSC: elapsed ns * tsc_khz / 10^6), so the guest's TSC and
 * kvmclock stay in step with the world and a TSC-measured stall equals the
 * downtime.  IA32_TSC is written, then read back (tsc_write): KVM's
 * kvm_synchronize_tsc() may replace a host write within a second of what
 * it expects by its own value (kernels before 6.7 do, for any write, e.g.
 * of a guest saved less than a second after it started), so an error over
 * TSC_SLACK_MS is corrected with the vCPU's KVM_VCPU_TSC_OFFSET.  Under
 * PVM neither works: its guests read the host's TSC whatever is written
 * (measured: writes accepted, the offset stays 0), so there the guest's
 * TSC always shows the host's time, FROZEN cannot hide a stop from it and
 * a cross-host move shows the TSC difference of the two hosts; godwit logs
 * that once.  kvmclock (KVM_SET_CLOCK) works under PVM.
 * In FROZEN mode vCPUs restored one after another may differ by the time
 * between their loads minus the time between their saves (sub-millisecond).
 *
 * Not saved: nested virtualisation state (godwit offers no VMX/SVM), the
 * kvm_run page (I/O in flight is completed before the save), KVM's PIT
 * count_load_time, and the CPUID (part of the VM's configuration).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/layout.h"
#include "godwit/log.h"
#include "godwit/state.h"
#include "x86.h"

/* vCPU tags: never renumber or reuse. */
#define CPU_F_INDEX     0x0001
#define CPU_F_TSC_KHZ   0x0002
#define CPU_F_TIME_NS   0x0003
#define CPU_F_TSC       0x0004
#define CPU_F_REGS      0x0010
#define CPU_F_SREGS     0x0011
#define CPU_F_PDPTRS    0x0012
#define CPU_F_XSAVE     0x0020
#define CPU_F_XCRS      0x0021
#define CPU_F_DEBUGREGS 0x0022
#define CPU_F_MSRS      0x0030
#define CPU_F_LAPIC     0x0040
#define CPU_F_MP_STATE  0x0050
#define CPU_F_EVENTS    0x0051

/* ---- records: each described once, for both directions ---------------------------------- */

#define T struct kvm_regs
static const struct state_rec regs_rec[] = {
	STATE_REC(T, rax), STATE_REC(T, rbx), STATE_REC(T, rcx), STATE_REC(T, rdx),
	STATE_REC(T, rsi), STATE_REC(T, rdi), STATE_REC(T, rsp), STATE_REC(T, rbp),
	STATE_REC(T, r8), STATE_REC(T, r9), STATE_REC(T, r10), STATE_REC(T, r11),
	STATE_REC(T, r12), STATE_REC(T, r13), STATE_REC(T, r14), STATE_REC(T, r15),
	STATE_REC(T, rip), STATE_REC(T, rflags),
};
#undef T
#define T struct kvm_segment
static const struct state_rec seg_rec[] = {
	STATE_REC(T, base), STATE_REC(T, limit), STATE_REC(T, selector), STATE_REC(T, type),
	STATE_REC(T, present), STATE_REC(T, dpl), STATE_REC(T, db), STATE_REC(T, s),
	STATE_REC(T, l), STATE_REC(T, g), STATE_REC(T, avl), STATE_REC(T, unusable),
};
#undef T
#define T struct kvm_dtable
static const struct state_rec dt_rec[] = { STATE_REC(T, base), STATE_REC(T, limit) };
#undef T
#define T struct kvm_sregs2
static const struct state_rec sregs_rec[] = {
	STATE_REC_SUB(T, cs, seg_rec), STATE_REC_SUB(T, ds, seg_rec),
	STATE_REC_SUB(T, es, seg_rec), STATE_REC_SUB(T, fs, seg_rec),
	STATE_REC_SUB(T, gs, seg_rec), STATE_REC_SUB(T, ss, seg_rec),
	STATE_REC_SUB(T, tr, seg_rec), STATE_REC_SUB(T, ldt, seg_rec),
	STATE_REC_SUB(T, gdt, dt_rec), STATE_REC_SUB(T, idt, dt_rec),
	STATE_REC(T, cr0), STATE_REC(T, cr2), STATE_REC(T, cr3), STATE_REC(T, cr4),
	STATE_REC(T, cr8), STATE_REC(T, efer), STATE_REC(T, apic_base),
};
static const struct state_rec pdptrs_rec[] = { STATE_REC_ARRAY(T, pdptrs, 4) };
#undef T
#define T struct kvm_xcr
static const struct state_rec xcr_rec[] = { STATE_REC(T, xcr), STATE_REC(T, value) };
#undef T
#define T struct kvm_debugregs
static const struct state_rec debugregs_rec[] = {
	STATE_REC_ARRAY(T, db, 4), STATE_REC(T, dr6), STATE_REC(T, dr7),
};
#undef T
#define T struct kvm_msr_entry
static const struct state_rec msr_rec[] = { STATE_REC(T, index), STATE_REC(T, data) };
#undef T
#define T struct kvm_vcpu_events
static const struct state_rec events_rec[] = {
	STATE_REC(T, exception.injected), STATE_REC(T, exception.nr),
	STATE_REC(T, exception.has_error_code), STATE_REC(T, exception.pending),
	STATE_REC(T, exception.error_code),
	STATE_REC(T, interrupt.injected), STATE_REC(T, interrupt.nr),
	STATE_REC(T, interrupt.soft), STATE_REC(T, interrupt.shadow),
	STATE_REC(T, nmi.injected), STATE_REC(T, nmi.pending), STATE_REC(T, nmi.masked),
	STATE_REC(T, sipi_vector), STATE_REC(T, flags),
	STATE_REC(T, smi.smm), STATE_REC(T, smi.pending), STATE_REC(T, smi.smm_inside_nmi),
	STATE_REC(T, smi.latched_init), STATE_REC(T, triple_fault.pending),
	STATE_REC(T, exception_has_payload), STATE_REC(T, exception_payload),
};
#undef T
#define REC(r) (r), ARRAY_SIZE(r)

/* Record lengths (the format above); cpu_recs_ok() checks them against the tables. */
#define REGS_LEN      (18 * 8)
#define SREGS_LEN     (8 * 23 + 2 * 10 + 7 * 8)
#define PDPTRS_LEN    (4 * 8)
#define XCR_LEN       12
#define DEBUGREGS_LEN (6 * 8)
#define MSR_LEN       12
#define EVENTS_LEN    37
#define XSAVE_MAX     (1024 * 1024)

static bool cpu_recs_ok(void)
{
	return !NEVER(state_rec_len(REC(regs_rec)) != REGS_LEN ||
		      state_rec_len(REC(sregs_rec)) != SREGS_LEN ||
		      state_rec_len(REC(pdptrs_rec)) != PDPTRS_LEN ||
		      state_rec_len(REC(xcr_rec)) != XCR_LEN ||
		      state_rec_len(REC(debugregs_rec)) != DEBUGREGS_LEN ||
		      state_rec_len(REC(msr_rec)) != MSR_LEN ||
		      state_rec_len(REC(events_rec)) != EVENTS_LEN);
}

/* The tagged fields; the records travel as bytes. */
struct cpu_image {
	uint32_t index, tsc_khz, mp_state;
	uint64_t time_ns, tsc;
	struct state_bytes regs, sregs, pdptrs, xsave, xcrs, debugregs, msrs, lapic, events;
};
#define IMG struct cpu_image
static const struct state_desc cpu_fields[] = {
	STATE_INT(CPU_F_INDEX, IMG, index, STATE_ANY, 1),
	STATE_INT(CPU_F_TSC_KHZ, IMG, tsc_khz, STATE_ANY, 1),
	STATE_INT(CPU_F_TIME_NS, IMG, time_ns, STATE_ANY, 1),
	STATE_INT(CPU_F_TSC, IMG, tsc, STATE_ANY, 1),
	STATE_BYTES(CPU_F_REGS, IMG, regs, REGS_LEN, REGS_LEN, 1),
	STATE_BYTES(CPU_F_SREGS, IMG, sregs, SREGS_LEN, SREGS_LEN, 1),
	STATE_BYTES(CPU_F_PDPTRS, IMG, pdptrs, PDPTRS_LEN, PDPTRS_LEN, STATE_OPT),
	STATE_BYTES(CPU_F_XSAVE, IMG, xsave, sizeof(struct kvm_xsave), XSAVE_MAX, 1),
	STATE_BYTES(CPU_F_XCRS, IMG, xcrs, 0, KVM_MAX_XCRS * XCR_LEN, STATE_OPT),
	STATE_BYTES(CPU_F_DEBUGREGS, IMG, debugregs, DEBUGREGS_LEN, DEBUGREGS_LEN, 1),
	STATE_BYTES(CPU_F_MSRS, IMG, msrs, 0, CPU_STATE_MAX_MSRS * MSR_LEN, 1),
	STATE_BYTES(CPU_F_LAPIC, IMG, lapic, KVM_APIC_REG_SIZE, KVM_APIC_REG_SIZE, 1),
	STATE_INT(CPU_F_MP_STATE, IMG, mp_state, STATE_ANY, 1),
	STATE_BYTES(CPU_F_EVENTS, IMG, events, EVENTS_LEN, EVENTS_LEN, 1),   /* last: see the top */
};
#undef IMG

/* ---- reading a vCPU from KVM ----------------------------------------------------- */

/*
 * KVM completes an IN (result into RAX), OUT or MMIO access, and moves RIP
 * past it, only when userspace re-enters KVM_RUN after handling the exit.
 * A vCPU parked at godwit's pause point right after such an exit has not
 * done that yet: its RIP still points at the instruction, and a restored
 * copy would run it again (an OUT to the UART printing a byte twice).
 * KVM_RUN with immediate_exit completes the access and returns EINTR
 * without running any guest instruction (KVM API, KVM_CAP_IMMEDIATE_EXIT).
 * exit_reason may be stale (a KVM_RUN that returned EINTR at once leaves
 * it as it was), in which case this KVM_RUN completes nothing: harmless.
 */
static int cpu_complete_io(struct vcpu *v)
{
	uint8_t saved;

	if (!v->run)
		return 0;
	switch (v->run->exit_reason) {
	case KVM_EXIT_IO:
	case KVM_EXIT_MMIO:
		break;
	default:
		return 0;
	}
	saved = v->run->immediate_exit;
	v->run->immediate_exit = 1;
	if (ioctl(v->fd, KVM_RUN, 0) == 0) {
		/* Completing it needed another exit (a split MMIO access): rare. */
		v->run->immediate_exit = saved;
		log_warnx("%s: vcpu%u: completing an I/O exit led to exit %u; resume and retry",
			  __func__, v->index, v->run->exit_reason);
		return -EAGAIN;
	}
	v->run->immediate_exit = saved;
	if (errno != EINTR) {
		int err = -errno;

		log_warn("%s: vcpu%u: KVM_RUN to complete an I/O exit", __func__, v->index);
		return err;
	}
	return 0;
}

static uint32_t xsave_size(struct vm *vm)
{
	int n = kvm_cap(vm->vm_fd, KVM_CAP_XSAVE2);

	return n > (int)sizeof(struct kvm_xsave) ? (uint32_t)n : (uint32_t)sizeof(struct kvm_xsave);
}

/* IA32_TSC with the realtime it was read at (the midpoint of the ioctl). */
static int tsc_read(struct vcpu *v, uint64_t *tsc, uint64_t *time_ns)
{
	struct {
		struct kvm_msrs h;
		struct kvm_msr_entry e;
	} m = { .h.nmsrs = 1, .e.index = MSR_IA32_TSC };
	uint64_t t0, t1;
	int r;

	t0 = now_realtime_ns();
	r = ioctl(v->fd, KVM_GET_MSRS, &m);
	t1 = now_realtime_ns();
	if (r != 1) {
		log_warn("%s: vcpu%u: cannot read IA32_TSC", __func__, v->index);
		return r < 0 ? -errno : -EIO;
	}
	*tsc = m.e.data;
	*time_ns = t0 + (t1 - t0) / 2;
	return 0;
}

static int sregs_read(struct vcpu *v, struct cpu_state *s)
{
	struct kvm_sregs old;

	if (kvm_cap(v->vm->kvm_fd, KVM_CAP_SREGS2)) {
		if (ioctl(v->fd, KVM_GET_SREGS2, &s->sregs) < 0)
			return -errno;
		if (s->sregs.flags & KVM_SREGS2_FLAGS_PDPTRS_VALID)
			s->has |= CPU_HAS_PDPTRS;
		return 0;
	}
	/*
	 * Without SREGS2: interrupt_bitmap's pending interrupt is also in the
	 * vCPU events (interrupt.injected/nr), which are restored last.
	 */
	if (ioctl(v->fd, KVM_GET_SREGS, &old) < 0)
		return -errno;
	memset(&s->sregs, 0, sizeof(s->sregs));
	s->sregs.cs = old.cs;
	s->sregs.ds = old.ds;
	s->sregs.es = old.es;
	s->sregs.fs = old.fs;
	s->sregs.gs = old.gs;
	s->sregs.ss = old.ss;
	s->sregs.tr = old.tr;
	s->sregs.ldt = old.ldt;
	s->sregs.gdt = old.gdt;
	s->sregs.idt = old.idt;
	s->sregs.cr0 = old.cr0;
	s->sregs.cr2 = old.cr2;
	s->sregs.cr3 = old.cr3;
	s->sregs.cr4 = old.cr4;
	s->sregs.cr8 = old.cr8;
	s->sregs.efer = old.efer;
	s->sregs.apic_base = old.apic_base;
	return 0;
}

void cpu_state_free(struct cpu_state *s)
{
	free(s->xsave);
	free(s->msrs);
	s->xsave = NULL;
	s->msrs = NULL;
	s->xsave_len = s->nr_msrs = 0;
}

bool cpu_state_msr(const struct cpu_state *s, uint32_t index, uint64_t *value)
{
	for (uint32_t i = 0; i < s->nr_msrs; i++)
		if (s->msrs[i].index == index) {
			*value = s->msrs[i].data;
			return true;
		}
	return false;
}

/* One piece: log the failed ioctl naming the piece and return -errno. */
static int piece_err(struct vcpu *v, const char *fn, const char *piece)
{
	int err = -errno;

	log_warn("%s: vcpu%u: %s", fn, v->index, piece);
	return err ? err : -EIO;
}

int cpu_state_read(struct vcpu *v, struct cpu_state *s)
{
	struct vm *vm = v->vm;
	uint32_t *idx = NULL, nidx = 0;
	int ret, khz;

	memset(s, 0, sizeof(*s));
	ret = cpu_complete_io(v);
	if (ret)
		return ret;
	s->index = v->index;
	khz = ioctl(v->fd, KVM_GET_TSC_KHZ, 0);
	s->tsc_khz = khz > 0 ? (uint32_t)khz : vm->tsc_khz;

	if (ioctl(v->fd, KVM_GET_REGS, &s->regs) < 0)
		return piece_err(v, __func__, "KVM_GET_REGS");
	if (sregs_read(v, s) < 0)
		return piece_err(v, __func__, "KVM_GET_SREGS");
	if (!kvm_cap(vm->kvm_fd, KVM_CAP_XSAVE)) {
		log_warnx("%s: vcpu%u: this KVM has no KVM_CAP_XSAVE", __func__, v->index);
		return -ENOTSUP;
	}
	s->xsave_len = xsave_size(vm);
	s->xsave = calloc(1, s->xsave_len);
	if (!s->xsave)
		return -ENOMEM;
	if (ioctl(v->fd, s->xsave_len > sizeof(struct kvm_xsave) ? KVM_GET_XSAVE2 : KVM_GET_XSAVE,
		  s->xsave) < 0)
		return piece_err(v, __func__, "KVM_GET_XSAVE");
	if (kvm_cap(vm->kvm_fd, KVM_CAP_XCRS)) {
		if (ioctl(v->fd, KVM_GET_XCRS, &s->xcrs) < 0)
			return piece_err(v, __func__, "KVM_GET_XCRS");
		if (s->xcrs.nr_xcrs > KVM_MAX_XCRS)
			s->xcrs.nr_xcrs = KVM_MAX_XCRS;
		s->has |= CPU_HAS_XCRS;
	}
	if (ioctl(v->fd, KVM_GET_DEBUGREGS, &s->debugregs) < 0)
		return piece_err(v, __func__, "KVM_GET_DEBUGREGS");

	ret = msr_list(vm, &idx, &nidx);
	if (ret)
		return ret;
	ret = msrs_read(v, idx, nidx, s);
	free(idx);
	if (ret)
		return ret;
	ret = tsc_read(v, &s->tsc, &s->time_ns);
	if (ret)
		return ret;

	if (ioctl(v->fd, KVM_GET_LAPIC, &s->lapic) < 0)
		return piece_err(v, __func__, "KVM_GET_LAPIC");
	if (ioctl(v->fd, KVM_GET_MP_STATE, &s->mp_state) < 0)
		return piece_err(v, __func__, "KVM_GET_MP_STATE");
	if (ioctl(v->fd, KVM_GET_VCPU_EVENTS, &s->events) < 0)
		return piece_err(v, __func__, "KVM_GET_VCPU_EVENTS");
	return 0;
}

/* ---- encoding and decoding ------------------------------------------------------- */

int cpu_state_save(struct vcpu *v, struct state_out *o)
{
	uint8_t regs[REGS_LEN], sregs[SREGS_LEN], pdptrs[PDPTRS_LEN], dr[DEBUGREGS_LEN];
	uint8_t xcrs[KVM_MAX_XCRS * XCR_LEN], events[EVENTS_LEN];
	struct cpu_image img;
	struct cpu_state s;
	uint8_t *msrs = NULL;
	int ret;

	if (o->err)
		return o->err;
	if (!cpu_recs_ok())
		return -EINVAL;
	ret = cpu_state_read(v, &s);
	if (ret)
		goto out;
	msrs = malloc(s.nr_msrs ? (size_t)s.nr_msrs * MSR_LEN : 1);
	if (!msrs) {
		ret = -ENOMEM;
		goto out;
	}
	img = (struct cpu_image){
		.index = s.index, .tsc_khz = s.tsc_khz, .time_ns = s.time_ns, .tsc = s.tsc,
		.mp_state = s.mp_state.mp_state,
		.regs = { regs, REGS_LEN }, .sregs = { sregs, SREGS_LEN },
		.xsave = { s.xsave, s.xsave_len }, .debugregs = { dr, DEBUGREGS_LEN },
		.msrs = { msrs, s.nr_msrs * MSR_LEN },
		.lapic = { (const uint8_t *)s.lapic.regs, KVM_APIC_REG_SIZE },
		.events = { events, EVENTS_LEN },
	};
	state_rec_put(regs, REC(regs_rec), &s.regs);
	state_rec_put(sregs, REC(sregs_rec), &s.sregs);
	if (s.has & CPU_HAS_PDPTRS) {
		state_rec_put(pdptrs, REC(pdptrs_rec), &s.sregs);
		img.pdptrs = (struct state_bytes){ pdptrs, PDPTRS_LEN };
	}
	if (s.has & CPU_HAS_XCRS) {
		for (uint32_t i = 0; i < s.xcrs.nr_xcrs; i++)
			state_rec_put(xcrs + i * XCR_LEN, REC(xcr_rec), &s.xcrs.xcrs[i]);
		img.xcrs = (struct state_bytes){ xcrs, s.xcrs.nr_xcrs * XCR_LEN };
	}
	state_rec_put(dr, REC(debugregs_rec), &s.debugregs);
	for (uint32_t i = 0; i < s.nr_msrs; i++)
		state_rec_put(msrs + i * MSR_LEN, REC(msr_rec), &s.msrs[i]);
	state_rec_put(events, REC(events_rec), &s.events);
	/* PDPTRS and XCRS are left out where absent (p NULL: optional, not written). */
	ret = state_save_fields(o, cpu_fields, ARRAY_SIZE(cpu_fields), &img);
out:
	free(msrs);
	cpu_state_free(&s);
	return ret;
}

/* The records of img into s (lengths were checked by the table); counts checked here. */
static int cpu_decode_records(const struct cpu_image *img, struct cpu_state *s)
{
	unsigned int cpu = img->index;

	state_rec_get(img->regs.p, REC(regs_rec), &s->regs);
	state_rec_get(img->sregs.p, REC(sregs_rec), &s->sregs);
	if (img->pdptrs.p) {
		state_rec_get(img->pdptrs.p, REC(pdptrs_rec), &s->sregs);
		s->sregs.flags |= KVM_SREGS2_FLAGS_PDPTRS_VALID;
		s->has |= CPU_HAS_PDPTRS;
	}
	s->xsave = malloc(img->xsave.len);
	if (!s->xsave)
		return -ENOMEM;
	memcpy(s->xsave, img->xsave.p, img->xsave.len);
	s->xsave_len = img->xsave.len;
	if (img->xcrs.p) {
		if (img->xcrs.len % XCR_LEN) {
			log_warnx("%s: vcpu%u: xcrs: %u bytes, not records of %u", __func__, cpu,
				  img->xcrs.len, XCR_LEN);
			return -EBADMSG;
		}
		s->xcrs.nr_xcrs = img->xcrs.len / XCR_LEN;
		for (uint32_t i = 0; i < s->xcrs.nr_xcrs; i++)
			state_rec_get(img->xcrs.p + i * XCR_LEN, REC(xcr_rec), &s->xcrs.xcrs[i]);
		s->has |= CPU_HAS_XCRS;
	}
	state_rec_get(img->debugregs.p, REC(debugregs_rec), &s->debugregs);
	if (img->msrs.len % MSR_LEN) {
		log_warnx("%s: vcpu%u: msrs: %u bytes, not records of %u", __func__, cpu,
			  img->msrs.len, MSR_LEN);
		return -EBADMSG;
	}
	s->nr_msrs = img->msrs.len / MSR_LEN;
	s->msrs = calloc(s->nr_msrs ? s->nr_msrs : 1, sizeof(*s->msrs));
	if (!s->msrs)
		return -ENOMEM;
	for (uint32_t i = 0; i < s->nr_msrs; i++) {
		state_rec_get(img->msrs.p + i * MSR_LEN, REC(msr_rec), &s->msrs[i]);
		for (uint32_t k = 0; k < i; k++)
			if (s->msrs[k].index == s->msrs[i].index) {
				log_warnx("%s: vcpu%u: msrs: MSR %#x twice", __func__, cpu,
					  s->msrs[i].index);
				return -EBADMSG;
			}
		if (s->msrs[i].index == MSR_IA32_TSC) {
			log_warnx("%s: vcpu%u: msrs: IA32_TSC belongs in its own field", __func__, cpu);
			return -EBADMSG;
		}
	}
	memcpy(s->lapic.regs, img->lapic.p, KVM_APIC_REG_SIZE);
	state_rec_get(img->events.p, REC(events_rec), &s->events);
	return 0;
}

int cpu_state_decode(struct state_in *in, uint16_t version, struct cpu_state *s)
{
	struct cpu_image img = { 0 };
	int ret;

	memset(s, 0, sizeof(*s));
	if (version < CPU_STATE_MIN_VERSION || version > CPU_STATE_VERSION) {
		log_warnx("%s: vCPU state version %u; this godwit loads %u to %u", __func__,
			  version, CPU_STATE_MIN_VERSION, CPU_STATE_VERSION);
		return -EINVAL;
	}
	if (!cpu_recs_ok())
		return -EINVAL;
	ret = state_load_fields(in, cpu_fields, ARRAY_SIZE(cpu_fields), &img, version);
	if (ret == -EINVAL)
		ret = -EBADMSG;     /* only a list beyond its cap (XCRS, MSRS, XSAVE): malformed */
	if (ret) {
		log_warnx("%s: vCPU state malformed, truncated or incomplete (%s; field by field "
			  "with --verbose)", __func__, strerror(-ret));
		return ret;
	}
	s->index = img.index;
	s->tsc_khz = img.tsc_khz;
	s->time_ns = img.time_ns;
	s->tsc = img.tsc;
	s->mp_state.mp_state = img.mp_state;
	ret = cpu_decode_records(&img, s);
	if (ret)
		cpu_state_free(s);
	return ret;
}

/* ---- loading into KVM -------------------------------------------------------------- */

static uint64_t ns_to_cycles(uint64_t ns, uint32_t khz)
{
	return (uint64_t)((unsigned __int128)ns * khz / 1000000u);
}

/* Checks against this host and this vCPU, before anything is written. */
static int cpu_state_check(struct vcpu *v, const struct cpu_state *s)
{
	struct vm *vm = v->vm;
	uint32_t want = xsave_size(vm);
	uint64_t xcomp;

	if (s->index != v->index) {
		log_warnx("%s: vcpu%u: index: the state is vcpu%u's", __func__, v->index, s->index);
		return -EINVAL;
	}
	if (s->xsave_len != want) {
		log_warnx("%s: vcpu%u: xsave: the region is %u bytes, this host's is %u",
			  __func__, v->index, s->xsave_len, want);
		return -EINVAL;
	}
	/* XSAVE header at 512: XSTATE_BV, XCOMP_BV (0 in KVM's standard format), 48 reserved. */
	memcpy(&xcomp, s->xsave + 520, 8);
	for (unsigned int i = 528; i < 576; i++)
		if (s->xsave[i])
			xcomp = 1;
	if (xcomp) {
		log_warnx("%s: vcpu%u: xsave: the header's XCOMP_BV or reserved bytes are set",
			  __func__, v->index);
		return -EINVAL;
	}
	if ((s->has & CPU_HAS_XCRS) && !kvm_cap(vm->kvm_fd, KVM_CAP_XCRS)) {
		log_warnx("%s: vcpu%u: xcrs: this host's KVM has no KVM_CAP_XCRS", __func__,
			  v->index);
		return -EINVAL;
	}
	if (!s->tsc_khz) {
		log_warnx("%s: vcpu%u: tsc_khz: 0", __func__, v->index);
		return -EINVAL;
	}
	return 0;
}

static int sregs_write(struct vcpu *v, const struct cpu_state *s)
{
	struct kvm_sregs old;

	if (kvm_cap(v->vm->kvm_fd, KVM_CAP_SREGS2)) {
		struct kvm_sregs2 s2 = s->sregs;

		s2.flags = (s->has & CPU_HAS_PDPTRS) ? KVM_SREGS2_FLAGS_PDPTRS_VALID : 0;
		return ioctl(v->fd, KVM_SET_SREGS2, &s2) < 0 ? -errno : 0;
	}
	/* Plain SREGS: KVM reloads the PDPTRs from guest memory (loaded first). */
	memset(&old, 0, sizeof(old));
	old.cs = s->sregs.cs;
	old.ds = s->sregs.ds;
	old.es = s->sregs.es;
	old.fs = s->sregs.fs;
	old.gs = s->sregs.gs;
	old.ss = s->sregs.ss;
	old.tr = s->sregs.tr;
	old.ldt = s->sregs.ldt;
	old.gdt = s->sregs.gdt;
	old.idt = s->sregs.idt;
	old.cr0 = s->sregs.cr0;
	old.cr2 = s->sregs.cr2;
	old.cr3 = s->sregs.cr3;
	old.cr4 = s->sregs.cr4;
	old.cr8 = s->sregs.cr8;
	old.efer = s->sregs.efer;
	old.apic_base = s->sregs.apic_base;
	return ioctl(v->fd, KVM_SET_SREGS, &old) < 0 ? -errno : 0;
}

#define TSC_SLACK_MS 5

/*
 * Set the guest's TSC so that it reads `want` at host realtime want_ns and
 * runs on from there.  IA32_TSC is written by the host and read back:
 * kvm_synchronize_tsc() takes a host write within a second of what it
 * expects (another vCPU's TSC, or the vCPU's creation-time 0 plus elapsed
 * time) as an attempt to synchronise and may use its own value instead,
 * and PVM ignores the write altogether (its guests read the host's TSC).
 * An error beyond TSC_SLACK_MS is corrected through the vCPU's
 * KVM_VCPU_TSC_OFFSET attribute where KVM has one.  What cannot be
 * corrected is logged (once per process) and is not an error: the guest
 * runs, but its TSC shows the host TSC's progress instead.
 * Returns 0 or the -errno of a failed IA32_TSC access.
 */
static int tsc_write(struct vcpu *v, uint64_t want, uint64_t want_ns, uint32_t khz)
{
	static bool warned;
	struct {
		struct kvm_msrs h;
		struct kvm_msr_entry e;
	} m = { .h.nmsrs = 1, .e = { .index = MSR_IA32_TSC } };
	struct kvm_device_attr attr = {
		.group = KVM_VCPU_TSC_CTRL,
		.attr = KVM_VCPU_TSC_OFFSET,
	};
	int64_t err, slack = (int64_t)TSC_SLACK_MS * khz;
	uint64_t got, t;
	__s64 offset;
	int ret;

	m.e.data = want + ns_to_cycles(realtime_since(want_ns), khz);
	if (ioctl(v->fd, KVM_SET_MSRS, &m) != 1)
		return piece_err(v, __func__, "msrs: IA32_TSC");
	for (int tries = 0; ; tries++) {
		ret = tsc_read(v, &got, &t);
		if (ret)
			return ret;
		err = (int64_t)(got - (want + (t > want_ns ? ns_to_cycles(t - want_ns, khz) : 0)));
		if (err <= slack && -err <= slack)
			return 0;
		attr.addr = (uint64_t)(uintptr_t)&offset;
		if (tries == 2 || ioctl(v->fd, KVM_GET_DEVICE_ATTR, &attr) < 0)
			break;
		offset -= err;
		if (ioctl(v->fd, KVM_SET_DEVICE_ATTR, &attr) < 0)
			break;
	}
	if (!__atomic_exchange_n(&warned, true, __ATOMIC_RELAXED))
		log_warnx("%s: vcpu%u: KVM does not let godwit set the guest's TSC "
			  "(%.1f ms off after writing it; PVM's guests read the host's TSC): "
			  "the guest's TSC shows the host's instead of the saved one",
			  __func__, v->index, (double)err / khz);
	return 0;
}

static int cpu_state_apply(struct vcpu *v, const struct cpu_state *s, enum cpu_clock_mode mode)
{
	struct vm *vm = v->vm;
	struct kvm_vcpu_events ev;
	struct kvm_debugregs dr;
	struct kvm_msrs *m;
	bool has_deadline;
	uint64_t deadline = 0, systime = 0;
	int ret;

	if (s->tsc_khz != vm->tsc_khz) {
		/* The guest's TSC frequency is configuration; scale if KVM can. */
		if (kvm_cap(vm->kvm_fd, KVM_CAP_TSC_CONTROL) &&
		    ioctl(v->fd, KVM_SET_TSC_KHZ, (unsigned long)s->tsc_khz) == 0)
			log_debug("%s: vcpu%u: TSC scaled to %u kHz", __func__, v->index, s->tsc_khz);
		else
			log_warnx("%s: vcpu%u: the guest's TSC ran at %u kHz, this host's runs "
				  "at %u kHz and KVM cannot scale it: the guest's clock rate changes",
				  __func__, v->index, s->tsc_khz, vm->tsc_khz);
	}

	if (ioctl(v->fd, KVM_SET_REGS, &s->regs) < 0)
		return piece_err(v, __func__, "regs: KVM_SET_REGS");
	if (ioctl(v->fd, KVM_SET_XSAVE, s->xsave) < 0)
		return piece_err(v, __func__, "xsave: KVM_SET_XSAVE (features this host lacks?)");
	if ((s->has & CPU_HAS_XCRS) && ioctl(v->fd, KVM_SET_XCRS, &s->xcrs) < 0)
		return piece_err(v, __func__, "xcrs: KVM_SET_XCRS");
	ret = sregs_write(v, s);
	if (ret) {
		errno = -ret;
		return piece_err(v, __func__, "sregs: KVM_SET_SREGS");
	}

	/* FROZEN: the saved TSC applies now; ADVANCE: at the save's realtime. */
	ret = tsc_write(v, s->tsc, mode == CPU_CLOCK_ADVANCE ? s->time_ns : now_realtime_ns(),
			s->tsc_khz);
	if (ret)
		return ret;
	m = msrs_for_load(s, &has_deadline, &deadline);
	if (!m)
		return -ENOMEM;
	ret = msrs_write(v, m->entries, m->nmsrs);
	free(m);
	if (ret)
		return ret;

	if (ioctl(v->fd, KVM_SET_LAPIC, &s->lapic) < 0)
		return piece_err(v, __func__, "lapic: KVM_SET_LAPIC");
	if (has_deadline) {
		struct {
			struct kvm_msrs h;
			struct kvm_msr_entry e;
		} dl = { .h.nmsrs = 1, .e = { .index = MSR_IA32_TSC_DEADLINE, .data = deadline } };

		if (ioctl(v->fd, KVM_SET_MSRS, &dl) != 1)
			return piece_err(v, __func__, "msrs: IA32_TSC_DEADLINE");
	}
	if (ioctl(v->fd, KVM_SET_MP_STATE, &s->mp_state) < 0)
		return piece_err(v, __func__, "mp_state: KVM_SET_MP_STATE");
	dr = s->debugregs;
	dr.flags = 0;
	if (ioctl(v->fd, KVM_SET_DEBUGREGS, &dr) < 0)
		return piece_err(v, __func__, "debugregs: KVM_SET_DEBUGREGS");
	ev = s->events;
	ev.flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR |
		   (s->events.flags & (KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM |
				       KVM_VCPUEVENT_VALID_PAYLOAD |
				       KVM_VCPUEVENT_VALID_TRIPLE_FAULT));
	if (ioctl(v->fd, KVM_SET_VCPU_EVENTS, &ev) < 0)
		return piece_err(v, __func__, "events: KVM_SET_VCPU_EVENTS");

	/* Time jumped: tell a kvmclock guest it was stopped (not a lock-up). */
	if (mode == CPU_CLOCK_ADVANCE && cpu_state_msr(s, MSR_KVM_SYSTEM_TIME_NEW, &systime) &&
	    (systime & 1) && ioctl(v->fd, KVM_KVMCLOCK_CTRL, 0) < 0 && errno != EINVAL)
		log_warn("%s: vcpu%u: KVM_KVMCLOCK_CTRL", __func__, v->index);
	return 0;
}

int cpu_state_load(struct vcpu *v, struct state_in *in, uint16_t version,
		   const struct cpu_load_opts *opts)
{
	struct cpu_state s;
	int ret;

	ret = cpu_state_decode(in, version, &s);
	if (ret) {
		log_warnx("%s: vcpu%u: the saved state cannot be decoded", __func__, v->index);
		return ret;
	}
	ret = cpu_state_check(v, &s);
	if (!ret)
		ret = cpu_state_apply(v, &s, opts ? opts->clock : CPU_CLOCK_FROZEN);
	cpu_state_free(&s);
	return ret;
}
