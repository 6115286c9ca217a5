/*
 * cpu_state.c - x86 vCPU state and the VM's in-kernel device state
 * (cpu_state.h): read from KVM, encoded as tagged fields (state.h),
 * decoded and checked against this host, and written back in the order KVM
 * needs.  Nothing here is a raw struct copy: every record below has an
 * explicit little-endian layout, so the bytes do not depend on the
 * compiler or on <linux/kvm.h> padding.  The XSAVE region and the LAPIC
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
 * VM state (VM_STATE_VERSION 1), all required:
 *   0x0001 TIME_NS    8    u64 host CLOCK_REALTIME (ns) when the clock was read
 *   0x0010 PIC_MASTER 16   u8 last_irr irr imr isr priority_add irq_base
 *   0x0011 PIC_SLAVE  16      read_reg_select poll special_mask init_state
 *                             auto_eoi rotate_on_auto_eoi
 *                             special_fully_nested_mode init4 elcr elcr_mask
 *   0x0012 IOAPIC     212  u64 base_address, u32 ioregsel, id, irr, u64
 *                          redirtbl[24]; load requires the platform's base
 *   0x0020 PIT        52   u32 flags, 3 channels {u32 count, u16 latched_count,
 *                          u8 count_latched status_latched status read_state
 *                          write_state write_latch rw_mode mode bcd gate};
 *                          count_load_time is a host time and is not saved:
 *                          KVM_SET_PIT2 restarts each counter from `count`
 *   0x0030 CLOCK      12   u64 kvmclock ns (KVM_GET_CLOCK), u32 its flags
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
#include <sys/ioctl.h>
#include <time.h>

#include "godwit/cpu_state.h"
#include "godwit/layout.h"
#include "godwit/log.h"
#include "godwit/vm.h"

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

/* VM tags. */
#define VM_F_TIME_NS    0x0001
#define VM_F_PIC_MASTER 0x0010
#define VM_F_PIC_SLAVE  0x0011
#define VM_F_IOAPIC     0x0012
#define VM_F_PIT        0x0020
#define VM_F_CLOCK      0x0030

/* Record sizes. */
#define REGS_LEN      (18 * 8)
#define SEG_LEN       23
#define DT_LEN        10
#define SREGS_LEN     (8 * SEG_LEN + 2 * DT_LEN + 7 * 8)
#define PDPTRS_LEN    (4 * 8)
#define XCR_LEN       12
#define DEBUGREGS_LEN (6 * 8)
#define MSR_LEN       12
#define EVENTS_LEN    37
#define PIC_LEN       16
#define IOAPIC_LEN    (8 + 3 * 4 + KVM_IOAPIC_NUM_PINS * 8)
#define PIT_CH_LEN    16
#define PIT_LEN       (4 + 3 * PIT_CH_LEN)
#define CLOCK_LEN     12

/* MSRs handled by name. */
#define MSR_IA32_TSC           0x00000010
#define MSR_IA32_TSC_DEADLINE  0x000006e0
#define MSR_KVM_WALL_CLOCK     0x00000011
#define MSR_KVM_SYSTEM_TIME    0x00000012
#define MSR_KVM_WALL_CLOCK_NEW  0x4b564d00
#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01
#define MSR_KVM_ASYNC_PF_EN    0x4b564d02
#define MSR_KVM_STEAL_TIME     0x4b564d03
#define MSR_KVM_PV_EOI_EN      0x4b564d04
#define MSR_KVM_POLL_CONTROL   0x4b564d05
#define MSR_KVM_ASYNC_PF_INT   0x4b564d06
#define MSR_KVM_ASYNC_PF_ACK   0x4b564d07
#define MSR_MTRR_DEF_TYPE      0x000002ff

/*
 * Saved on top of KVM_GET_MSR_INDEX_LIST (which, on current kernels,
 * already lists the PV ones): KVM's PV MSRs and the MTRRs, which KVM
 * emulates but does not list.  An MSR this KVM cannot read is skipped.
 */
static const uint32_t msr_extra[] = {
	MSR_KVM_WALL_CLOCK, MSR_KVM_SYSTEM_TIME,
	MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_SYSTEM_TIME_NEW,
	MSR_KVM_ASYNC_PF_EN, MSR_KVM_STEAL_TIME, MSR_KVM_PV_EOI_EN,
	MSR_KVM_POLL_CONTROL, MSR_KVM_ASYNC_PF_INT, MSR_KVM_ASYNC_PF_ACK,
	MSR_MTRR_DEF_TYPE,
	0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
	0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207,
	0x208, 0x209, 0x20a, 0x20b, 0x20c, 0x20d, 0x20e, 0x20f,
};

/* ---- little-endian records ------------------------------------------------------ */

struct rec {
	uint8_t *p;
	size_t off;
};

static void rec_put(struct rec *r, uint64_t v, unsigned int n)
{
	for (unsigned int i = 0; i < n; i++)
		r->p[r->off + i] = (uint8_t)(v >> (8 * i));
	r->off += n;
}

static uint64_t rec_get(struct rec *r, unsigned int n)
{
	uint64_t v = 0;

	for (unsigned int i = 0; i < n; i++)
		v |= (uint64_t)r->p[r->off + i] << (8 * i);
	r->off += n;
	return v;
}

#define PUT8(r, v)  rec_put(r, (v), 1)
#define PUT16(r, v) rec_put(r, (v), 2)
#define PUT32(r, v) rec_put(r, (v), 4)
#define PUT64(r, v) rec_put(r, (v), 8)
#define GET8(r)  ((uint8_t)rec_get(r, 1))
#define GET16(r) ((uint16_t)rec_get(r, 2))
#define GET32(r) ((uint32_t)rec_get(r, 4))
#define GET64(r) rec_get(r, 8)

/* A record's bytes from a field whose length was checked (const dropped: read only). */
static struct rec rec_in(const struct state_field *f)
{
	return (struct rec){ .p = (uint8_t *)(uintptr_t)f->val, .off = 0 };
}

static uint64_t now_realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int kvm_cap(int fd, long cap)
{
	int r = ioctl(fd, KVM_CHECK_EXTENSION, cap);

	return r < 0 ? 0 : r;
}

/* ---- registers ------------------------------------------------------------------- */

static void regs_put(struct rec *r, const struct kvm_regs *g)
{
	const uint64_t v[18] = {
		g->rax, g->rbx, g->rcx, g->rdx, g->rsi, g->rdi, g->rsp, g->rbp,
		g->r8, g->r9, g->r10, g->r11, g->r12, g->r13, g->r14, g->r15,
		g->rip, g->rflags,
	};

	for (unsigned int i = 0; i < 18; i++)
		PUT64(r, v[i]);
}

static void regs_get(struct rec *r, struct kvm_regs *g)
{
	__u64 *v[18] = {
		&g->rax, &g->rbx, &g->rcx, &g->rdx, &g->rsi, &g->rdi, &g->rsp, &g->rbp,
		&g->r8, &g->r9, &g->r10, &g->r11, &g->r12, &g->r13, &g->r14, &g->r15,
		&g->rip, &g->rflags,
	};

	for (unsigned int i = 0; i < 18; i++)
		*v[i] = GET64(r);
}

static void seg_put(struct rec *r, const struct kvm_segment *s)
{
	PUT64(r, s->base);
	PUT32(r, s->limit);
	PUT16(r, s->selector);
	PUT8(r, s->type);
	PUT8(r, s->present);
	PUT8(r, s->dpl);
	PUT8(r, s->db);
	PUT8(r, s->s);
	PUT8(r, s->l);
	PUT8(r, s->g);
	PUT8(r, s->avl);
	PUT8(r, s->unusable);
}

static void seg_get(struct rec *r, struct kvm_segment *s)
{
	memset(s, 0, sizeof(*s));
	s->base = GET64(r);
	s->limit = GET32(r);
	s->selector = GET16(r);
	s->type = GET8(r);
	s->present = GET8(r);
	s->dpl = GET8(r);
	s->db = GET8(r);
	s->s = GET8(r);
	s->l = GET8(r);
	s->g = GET8(r);
	s->avl = GET8(r);
	s->unusable = GET8(r);
}

static void sregs_put(struct rec *r, const struct kvm_sregs2 *s)
{
	const struct kvm_segment *seg[8] = {
		&s->cs, &s->ds, &s->es, &s->fs, &s->gs, &s->ss, &s->tr, &s->ldt,
	};

	for (unsigned int i = 0; i < 8; i++)
		seg_put(r, seg[i]);
	PUT64(r, s->gdt.base);
	PUT16(r, s->gdt.limit);
	PUT64(r, s->idt.base);
	PUT16(r, s->idt.limit);
	PUT64(r, s->cr0);
	PUT64(r, s->cr2);
	PUT64(r, s->cr3);
	PUT64(r, s->cr4);
	PUT64(r, s->cr8);
	PUT64(r, s->efer);
	PUT64(r, s->apic_base);
}

static void sregs_get(struct rec *r, struct kvm_sregs2 *s)
{
	struct kvm_segment *seg[8] = {
		&s->cs, &s->ds, &s->es, &s->fs, &s->gs, &s->ss, &s->tr, &s->ldt,
	};

	for (unsigned int i = 0; i < 8; i++)
		seg_get(r, seg[i]);
	s->gdt.base = GET64(r);
	s->gdt.limit = GET16(r);
	s->idt.base = GET64(r);
	s->idt.limit = GET16(r);
	s->cr0 = GET64(r);
	s->cr2 = GET64(r);
	s->cr3 = GET64(r);
	s->cr4 = GET64(r);
	s->cr8 = GET64(r);
	s->efer = GET64(r);
	s->apic_base = GET64(r);
}

static void events_put(struct rec *r, const struct kvm_vcpu_events *e)
{
	PUT8(r, e->exception.injected);
	PUT8(r, e->exception.nr);
	PUT8(r, e->exception.has_error_code);
	PUT8(r, e->exception.pending);
	PUT32(r, e->exception.error_code);
	PUT8(r, e->interrupt.injected);
	PUT8(r, e->interrupt.nr);
	PUT8(r, e->interrupt.soft);
	PUT8(r, e->interrupt.shadow);
	PUT8(r, e->nmi.injected);
	PUT8(r, e->nmi.pending);
	PUT8(r, e->nmi.masked);
	PUT32(r, e->sipi_vector);
	PUT32(r, e->flags);
	PUT8(r, e->smi.smm);
	PUT8(r, e->smi.pending);
	PUT8(r, e->smi.smm_inside_nmi);
	PUT8(r, e->smi.latched_init);
	PUT8(r, e->triple_fault.pending);
	PUT8(r, e->exception_has_payload);
	PUT64(r, e->exception_payload);
}

static void events_get(struct rec *r, struct kvm_vcpu_events *e)
{
	memset(e, 0, sizeof(*e));
	e->exception.injected = GET8(r);
	e->exception.nr = GET8(r);
	e->exception.has_error_code = GET8(r);
	e->exception.pending = GET8(r);
	e->exception.error_code = GET32(r);
	e->interrupt.injected = GET8(r);
	e->interrupt.nr = GET8(r);
	e->interrupt.soft = GET8(r);
	e->interrupt.shadow = GET8(r);
	e->nmi.injected = GET8(r);
	e->nmi.pending = GET8(r);
	e->nmi.masked = GET8(r);
	e->sipi_vector = GET32(r);
	e->flags = GET32(r);
	e->smi.smm = GET8(r);
	e->smi.pending = GET8(r);
	e->smi.smm_inside_nmi = GET8(r);
	e->smi.latched_init = GET8(r);
	e->triple_fault.pending = GET8(r);
	e->exception_has_payload = GET8(r);
	e->exception_payload = GET64(r);
}

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

static bool msr_in(const uint32_t *idx, uint32_t n, uint32_t msr)
{
	for (uint32_t i = 0; i < n; i++)
		if (idx[i] == msr)
			return true;
	return false;
}

/* The MSRs to save: KVM's index list plus msr_extra, without IA32_TSC. */
static int msr_list(struct vm *vm, uint32_t **out, uint32_t *nout)
{
	struct kvm_msr_list probe = { .nmsrs = 0 };
	struct kvm_msr_list *l;
	uint32_t *idx, n = 0;

	if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG) {
		int err = -errno;

		log_warn("%s: KVM_GET_MSR_INDEX_LIST", __func__);
		return err;
	}
	if (probe.nmsrs > CPU_STATE_MAX_MSRS - ARRAY_SIZE(msr_extra)) {
		log_warnx("%s: KVM lists %u MSRs, more than godwit saves (%u)", __func__,
			  probe.nmsrs, CPU_STATE_MAX_MSRS);
		return -E2BIG;
	}
	l = calloc(1, sizeof(*l) + probe.nmsrs * sizeof(l->indices[0]));
	idx = calloc(probe.nmsrs + ARRAY_SIZE(msr_extra), sizeof(*idx));
	if (!l || !idx) {
		free(l);
		free(idx);
		return -ENOMEM;
	}
	l->nmsrs = probe.nmsrs;
	if (probe.nmsrs && ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, l) < 0) {
		int err = -errno;

		log_warn("%s: KVM_GET_MSR_INDEX_LIST", __func__);
		free(l);
		free(idx);
		return err;
	}
	for (uint32_t i = 0; i < l->nmsrs && i < probe.nmsrs; i++)
		if (l->indices[i] != MSR_IA32_TSC && !msr_in(idx, n, l->indices[i]))
			idx[n++] = l->indices[i];
	for (size_t i = 0; i < ARRAY_SIZE(msr_extra); i++)
		if (!msr_in(idx, n, msr_extra[i]))
			idx[n++] = msr_extra[i];
	free(l);
	*out = idx;
	*nout = n;
	return 0;
}

static struct kvm_msrs *msrs_alloc(uint32_t n)
{
	return calloc(1, sizeof(struct kvm_msrs) + (size_t)n * sizeof(struct kvm_msr_entry));
}

/*
 * Read MSRs idx[0..n) into s->msrs.  KVM_GET_MSRS stops at the first MSR it
 * cannot read and returns how many it read; that one is skipped and the
 * rest asked for again.
 */
static int msrs_read(struct vcpu *v, const uint32_t *idx, uint32_t n, struct cpu_state *s)
{
	struct kvm_msrs *m = msrs_alloc(n);
	uint32_t i = 0;

	s->msrs = calloc(n ? n : 1, sizeof(*s->msrs));
	if (!m || !s->msrs) {
		free(m);
		return -ENOMEM;
	}
	s->nr_msrs = 0;
	while (i < n) {
		int r;

		m->nmsrs = n - i;
		for (uint32_t k = 0; k < n - i; k++)
			m->entries[k] = (struct kvm_msr_entry){ .index = idx[i + k] };
		r = ioctl(v->fd, KVM_GET_MSRS, m);
		if (r < 0) {
			int err = -errno;

			log_warn("%s: vcpu%u: KVM_GET_MSRS", __func__, v->index);
			free(m);
			return err;
		}
		for (int k = 0; k < r; k++)
			s->msrs[s->nr_msrs++] = m->entries[k];
		i += (uint32_t)r;
		if (i < n) {
			log_debug("%s: vcpu%u: MSR %#x cannot be read; not saved", __func__,
				  v->index, idx[i]);
			i++;
		}
	}
	free(m);
	return 0;
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

/* ---- encoding -------------------------------------------------------------------- */

static void cpu_state_encode(const struct cpu_state *s, struct state_out *o)
{
	uint8_t buf[SREGS_LEN];
	uint8_t *list;
	struct rec r;
	uint32_t n;

	state_put_u32(o, CPU_F_INDEX, s->index);
	state_put_u32(o, CPU_F_TSC_KHZ, s->tsc_khz);
	state_put_u64(o, CPU_F_TIME_NS, s->time_ns);
	state_put_u64(o, CPU_F_TSC, s->tsc);

	r = (struct rec){ .p = buf };
	regs_put(&r, &s->regs);
	state_put_bytes(o, CPU_F_REGS, buf, REGS_LEN);
	r = (struct rec){ .p = buf };
	sregs_put(&r, &s->sregs);
	state_put_bytes(o, CPU_F_SREGS, buf, SREGS_LEN);
	if (s->has & CPU_HAS_PDPTRS) {
		r = (struct rec){ .p = buf };
		for (unsigned int i = 0; i < 4; i++)
			PUT64(&r, s->sregs.pdptrs[i]);
		state_put_bytes(o, CPU_F_PDPTRS, buf, PDPTRS_LEN);
	}

	state_put_bytes(o, CPU_F_XSAVE, s->xsave, s->xsave_len);
	if (s->has & CPU_HAS_XCRS) {
		r = (struct rec){ .p = buf };
		for (uint32_t i = 0; i < s->xcrs.nr_xcrs; i++) {
			PUT32(&r, s->xcrs.xcrs[i].xcr);
			PUT64(&r, s->xcrs.xcrs[i].value);
		}
		state_put_bytes(o, CPU_F_XCRS, buf, (uint32_t)r.off);
	}
	r = (struct rec){ .p = buf };
	for (unsigned int i = 0; i < 4; i++)
		PUT64(&r, s->debugregs.db[i]);
	PUT64(&r, s->debugregs.dr6);
	PUT64(&r, s->debugregs.dr7);
	state_put_bytes(o, CPU_F_DEBUGREGS, buf, DEBUGREGS_LEN);

	n = s->nr_msrs;
	list = malloc(n ? (size_t)n * MSR_LEN : 1);
	if (!list) {
		if (!o->err)
			o->err = -ENOMEM;
		return;
	}
	r = (struct rec){ .p = list };
	for (uint32_t i = 0; i < n; i++) {
		PUT32(&r, s->msrs[i].index);
		PUT64(&r, s->msrs[i].data);
	}
	state_put_bytes(o, CPU_F_MSRS, list, n * MSR_LEN);
	free(list);

	state_put_bytes(o, CPU_F_LAPIC, s->lapic.regs, KVM_APIC_REG_SIZE);
	state_put_u32(o, CPU_F_MP_STATE, s->mp_state.mp_state);
	r = (struct rec){ .p = buf };
	events_put(&r, &s->events);
	state_put_bytes(o, CPU_F_EVENTS, buf, EVENTS_LEN);   /* last: see the top */
}

int cpu_state_save(struct vcpu *v, struct state_out *o)
{
	struct cpu_state s;
	int ret;

	if (o->err)
		return o->err;
	ret = cpu_state_read(v, &s);
	if (!ret) {
		cpu_state_encode(&s, o);
		ret = o->err;
	}
	cpu_state_free(&s);
	return ret;
}

/* ---- decoding -------------------------------------------------------------------- */

/* Field length check: exactly `want` bytes (the caller names the piece). */
static int want_len(const struct state_field *f, uint32_t want)
{
	return f->len == want ? 0 : -EBADMSG;
}

/* Bits of `seen` per tag, to refuse duplicates and find missing pieces. */
enum {
	SEEN_INDEX, SEEN_TSC_KHZ, SEEN_TIME_NS, SEEN_TSC, SEEN_REGS, SEEN_SREGS,
	SEEN_PDPTRS, SEEN_XSAVE, SEEN_XCRS, SEEN_DEBUGREGS, SEEN_MSRS, SEEN_LAPIC,
	SEEN_MP_STATE, SEEN_EVENTS, SEEN_NR,
};
static const char *const cpu_piece_name[SEEN_NR] = {
	"index", "tsc_khz", "time_ns", "tsc", "regs", "sregs", "pdptrs", "xsave",
	"xcrs", "debugregs", "msrs", "lapic", "mp_state", "events",
};
#define CPU_REQUIRED ((1u << SEEN_NR) - 1 - (1u << SEEN_PDPTRS) - (1u << SEEN_XCRS))

static int cpu_tag_bit(uint16_t tag)
{
	switch (tag) {
	case CPU_F_INDEX:     return SEEN_INDEX;
	case CPU_F_TSC_KHZ:   return SEEN_TSC_KHZ;
	case CPU_F_TIME_NS:   return SEEN_TIME_NS;
	case CPU_F_TSC:       return SEEN_TSC;
	case CPU_F_REGS:      return SEEN_REGS;
	case CPU_F_SREGS:     return SEEN_SREGS;
	case CPU_F_PDPTRS:    return SEEN_PDPTRS;
	case CPU_F_XSAVE:     return SEEN_XSAVE;
	case CPU_F_XCRS:      return SEEN_XCRS;
	case CPU_F_DEBUGREGS: return SEEN_DEBUGREGS;
	case CPU_F_MSRS:      return SEEN_MSRS;
	case CPU_F_LAPIC:     return SEEN_LAPIC;
	case CPU_F_MP_STATE:  return SEEN_MP_STATE;
	case CPU_F_EVENTS:    return SEEN_EVENTS;
	}
	return -1;
}

/* One known field into s; lengths and counts checked. */
static int cpu_decode_field(const struct state_field *f, int bit, struct cpu_state *s,
			    unsigned int cpu)
{
	const char *name = cpu_piece_name[bit];
	struct rec r = rec_in(f);
	int ret = 0;

	switch (bit) {
	case SEEN_INDEX:
		ret = state_get_u32(f, &s->index);
		break;
	case SEEN_TSC_KHZ:
		ret = state_get_u32(f, &s->tsc_khz);
		break;
	case SEEN_TIME_NS:
		ret = state_get_u64(f, &s->time_ns);
		break;
	case SEEN_TSC:
		ret = state_get_u64(f, &s->tsc);
		break;
	case SEEN_REGS:
		ret = want_len(f, REGS_LEN);
		if (!ret)
			regs_get(&r, &s->regs);
		break;
	case SEEN_SREGS:
		ret = want_len(f, SREGS_LEN);
		if (!ret) {
			uint64_t pdptrs[4];
			uint64_t flags = s->sregs.flags;

			memcpy(pdptrs, s->sregs.pdptrs, sizeof(pdptrs));
			sregs_get(&r, &s->sregs);
			s->sregs.flags = flags;           /* PDPTRS may come first */
			memcpy(s->sregs.pdptrs, pdptrs, sizeof(pdptrs));
		}
		break;
	case SEEN_PDPTRS:
		ret = want_len(f, PDPTRS_LEN);
		if (!ret) {
			for (unsigned int i = 0; i < 4; i++)
				s->sregs.pdptrs[i] = GET64(&r);
			s->sregs.flags |= KVM_SREGS2_FLAGS_PDPTRS_VALID;
			s->has |= CPU_HAS_PDPTRS;
		}
		break;
	case SEEN_XSAVE:
		if (f->len < sizeof(struct kvm_xsave) || f->len > 1024 * 1024) {
			log_warnx("%s: vcpu%u: xsave: %u bytes, expected 4096 to 1 MiB",
				  __func__, cpu, f->len);
			return -EBADMSG;
		}
		s->xsave = malloc(f->len);
		if (!s->xsave)
			return -ENOMEM;
		memcpy(s->xsave, f->val, f->len);
		s->xsave_len = f->len;
		break;
	case SEEN_XCRS:
		if (f->len % XCR_LEN || f->len / XCR_LEN > KVM_MAX_XCRS) {
			log_warnx("%s: vcpu%u: xcrs: %u bytes, not 0 to %u records of %u",
				  __func__, cpu, f->len, KVM_MAX_XCRS, XCR_LEN);
			return -EBADMSG;
		}
		memset(&s->xcrs, 0, sizeof(s->xcrs));
		s->xcrs.nr_xcrs = f->len / XCR_LEN;
		for (uint32_t i = 0; i < s->xcrs.nr_xcrs; i++) {
			s->xcrs.xcrs[i].xcr = GET32(&r);
			s->xcrs.xcrs[i].value = GET64(&r);
		}
		s->has |= CPU_HAS_XCRS;
		break;
	case SEEN_DEBUGREGS:
		ret = want_len(f, DEBUGREGS_LEN);
		if (!ret) {
			memset(&s->debugregs, 0, sizeof(s->debugregs));
			for (unsigned int i = 0; i < 4; i++)
				s->debugregs.db[i] = GET64(&r);
			s->debugregs.dr6 = GET64(&r);
			s->debugregs.dr7 = GET64(&r);
		}
		break;
	case SEEN_MSRS:
		if (f->len % MSR_LEN || f->len / MSR_LEN > CPU_STATE_MAX_MSRS) {
			log_warnx("%s: vcpu%u: msrs: %u bytes, not 0 to %u records of %u",
				  __func__, cpu, f->len, CPU_STATE_MAX_MSRS, MSR_LEN);
			return -EBADMSG;
		}
		s->nr_msrs = f->len / MSR_LEN;
		s->msrs = calloc(s->nr_msrs ? s->nr_msrs : 1, sizeof(*s->msrs));
		if (!s->msrs)
			return -ENOMEM;
		for (uint32_t i = 0; i < s->nr_msrs; i++) {
			s->msrs[i].index = GET32(&r);
			s->msrs[i].data = GET64(&r);
			for (uint32_t k = 0; k < i; k++)
				if (s->msrs[k].index == s->msrs[i].index) {
					log_warnx("%s: vcpu%u: msrs: MSR %#x twice", __func__, cpu,
						  s->msrs[i].index);
					return -EBADMSG;
				}
			if (s->msrs[i].index == MSR_IA32_TSC) {
				log_warnx("%s: vcpu%u: msrs: IA32_TSC belongs in its own field",
					  __func__, cpu);
				return -EBADMSG;
			}
		}
		break;
	case SEEN_LAPIC:
		ret = want_len(f, KVM_APIC_REG_SIZE);
		if (!ret)
			memcpy(s->lapic.regs, f->val, KVM_APIC_REG_SIZE);
		break;
	case SEEN_MP_STATE:
		ret = state_get_u32(f, &s->mp_state.mp_state);
		break;
	case SEEN_EVENTS:
		ret = want_len(f, EVENTS_LEN);
		if (!ret)
			events_get(&r, &s->events);
		break;
	}
	if (ret == -EBADMSG)
		log_warnx("%s: vcpu%u: %s: malformed (%u bytes)", __func__, cpu, name, f->len);
	return ret;
}

int cpu_state_decode(struct state_in *in, uint16_t version, struct cpu_state *s)
{
	struct state_field f;
	uint32_t seen = 0;
	int ret;

	memset(s, 0, sizeof(*s));
	if (version < CPU_STATE_MIN_VERSION || version > CPU_STATE_VERSION) {
		log_warnx("%s: vCPU state version %u; this godwit loads %u to %u", __func__,
			  version, CPU_STATE_MIN_VERSION, CPU_STATE_VERSION);
		return -EINVAL;
	}
	while ((ret = state_next(in, &f)) == 1) {
		int bit = cpu_tag_bit(f.tag);

		if (bit < 0)
			continue;            /* a newer writer's optional field */
		if (seen & (1u << bit)) {
			log_warnx("%s: %s: the field appears twice", __func__, cpu_piece_name[bit]);
			ret = -EBADMSG;
			goto err;
		}
		seen |= 1u << bit;
		ret = cpu_decode_field(&f, bit, s, s->index);
		if (ret)
			goto err;
	}
	if (ret < 0) {
		log_warnx("%s: vCPU state truncated or corrupt at byte %zu of %zu", __func__,
			  in->off, in->len);
		goto err;
	}
	if ((seen & CPU_REQUIRED) != CPU_REQUIRED) {
		for (int b = 0; b < SEEN_NR; b++)
			if ((CPU_REQUIRED & (1u << b)) && !(seen & (1u << b))) {
				log_warnx("%s: vCPU state: the %s field is missing", __func__,
					  cpu_piece_name[b]);
				break;
			}
		ret = -EBADMSG;
		goto err;
	}
	return 0;
err:
	cpu_state_free(s);
	return ret;
}

/* ---- loading into KVM -------------------------------------------------------------- */

/* Elapsed realtime since `then` (0 if the clock went backwards). */
static uint64_t realtime_since(uint64_t then)
{
	uint64_t now = now_realtime_ns();

	return now > then ? now - then : 0;
}

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

/*
 * Write the n MSRs of e.  KVM_SET_MSRS stops at the first MSR it refuses; a
 * refusal is harmless when the vCPU already holds the saved value (PVM, for
 * one, does not let the host write some MSRs it emulates as constants), so
 * that MSR is skipped; otherwise the load fails naming the MSR.
 */
static int msrs_write(struct vcpu *v, const struct kvm_msr_entry *e, uint32_t n)
{
	struct kvm_msrs *m = msrs_alloc(n);
	uint32_t i = 0;
	int ret = 0;

	if (!m)
		return -ENOMEM;
	while (i < n) {
		struct {
			struct kvm_msrs h;
			struct kvm_msr_entry e;
		} cur = { .h.nmsrs = 1, .e.index = e[i].index };
		int r;

		m->nmsrs = n - i;
		memcpy(m->entries, e + i, (n - i) * sizeof(*e));
		r = ioctl(v->fd, KVM_SET_MSRS, m);
		if (r < 0) {
			ret = -errno;
			log_warn("%s: vcpu%u: msrs: KVM_SET_MSRS", __func__, v->index);
			break;
		}
		i += (uint32_t)r;
		if (i >= n)
			break;
		cur.e.index = e[i].index;
		if (ioctl(v->fd, KVM_GET_MSRS, &cur) == 1 && cur.e.data == e[i].data) {
			log_debug("%s: vcpu%u: MSR %#x refused, already %#llx", __func__, v->index,
				  e[i].index, (unsigned long long)e[i].data);
			i++;
			continue;
		}
		log_warnx("%s: vcpu%u: msrs: KVM refused MSR %#x = %#llx", __func__, v->index,
			  e[i].index, (unsigned long long)e[i].data);
		ret = -EINVAL;
		break;
	}
	free(m);
	return ret;
}

static int msr_rank(uint32_t index)
{
	switch (index) {
	case MSR_KVM_ASYNC_PF_EN:
		return 1;            /* after ASYNC_PF_INT */
	default:
		return 0;
	}
}

/*
 * The MSRs in load order (IA32_TSC is written before, by tsc_write): every
 * saved MSR but TSC_DEADLINE, rank 0 before rank 1.  *deadline gets
 * TSC_DEADLINE's value if saved.
 */
static struct kvm_msrs *msrs_for_load(const struct cpu_state *s, bool *has_deadline,
				      uint64_t *deadline)
{
	struct kvm_msrs *m = msrs_alloc(s->nr_msrs);
	uint32_t n = 0;

	if (!m)
		return NULL;
	*has_deadline = false;
	for (int rank = 0; rank <= 1; rank++)
		for (uint32_t i = 0; i < s->nr_msrs; i++) {
			if (s->msrs[i].index == MSR_IA32_TSC_DEADLINE) {
				*has_deadline = true;
				*deadline = s->msrs[i].data;
				continue;
			}
			if (msr_rank(s->msrs[i].index) == rank)
				m->entries[n++] = s->msrs[i];
		}
	m->nmsrs = n;
	return m;
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

/* ---- VM-wide in-kernel state ------------------------------------------------------- */

static void pic_put(struct rec *r, const struct kvm_pic_state *p)
{
	const uint8_t v[PIC_LEN] = {
		p->last_irr, p->irr, p->imr, p->isr, p->priority_add, p->irq_base,
		p->read_reg_select, p->poll, p->special_mask, p->init_state, p->auto_eoi,
		p->rotate_on_auto_eoi, p->special_fully_nested_mode, p->init4, p->elcr,
		p->elcr_mask,
	};

	for (unsigned int i = 0; i < PIC_LEN; i++)
		PUT8(r, v[i]);
}

static void pic_get(struct rec *r, struct kvm_pic_state *p)
{
	__u8 *v[PIC_LEN] = {
		&p->last_irr, &p->irr, &p->imr, &p->isr, &p->priority_add, &p->irq_base,
		&p->read_reg_select, &p->poll, &p->special_mask, &p->init_state, &p->auto_eoi,
		&p->rotate_on_auto_eoi, &p->special_fully_nested_mode, &p->init4, &p->elcr,
		&p->elcr_mask,
	};

	for (unsigned int i = 0; i < PIC_LEN; i++)
		*v[i] = GET8(r);
}

static void ioapic_put(struct rec *r, const struct kvm_ioapic_state *a)
{
	PUT64(r, a->base_address);
	PUT32(r, a->ioregsel);
	PUT32(r, a->id);
	PUT32(r, a->irr);
	for (unsigned int i = 0; i < KVM_IOAPIC_NUM_PINS; i++)
		PUT64(r, a->redirtbl[i].bits);
}

static void ioapic_get(struct rec *r, struct kvm_ioapic_state *a)
{
	a->base_address = GET64(r);
	a->ioregsel = GET32(r);
	a->id = GET32(r);
	a->irr = GET32(r);
	for (unsigned int i = 0; i < KVM_IOAPIC_NUM_PINS; i++)
		a->redirtbl[i].bits = GET64(r);
}

static void pit_put(struct rec *r, const struct kvm_pit_state2 *p)
{
	PUT32(r, p->flags);
	for (unsigned int i = 0; i < 3; i++) {
		const struct kvm_pit_channel_state *c = &p->channels[i];

		PUT32(r, c->count);
		PUT16(r, c->latched_count);
		PUT8(r, c->count_latched);
		PUT8(r, c->status_latched);
		PUT8(r, c->status);
		PUT8(r, c->read_state);
		PUT8(r, c->write_state);
		PUT8(r, c->write_latch);
		PUT8(r, c->rw_mode);
		PUT8(r, c->mode);
		PUT8(r, c->bcd);
		PUT8(r, c->gate);
	}
}

static void pit_get(struct rec *r, struct kvm_pit_state2 *p)
{
	memset(p, 0, sizeof(*p));
	p->flags = GET32(r);
	for (unsigned int i = 0; i < 3; i++) {
		struct kvm_pit_channel_state *c = &p->channels[i];

		c->count = GET32(r);
		c->latched_count = GET16(r);
		c->count_latched = GET8(r);
		c->status_latched = GET8(r);
		c->status = GET8(r);
		c->read_state = GET8(r);
		c->write_state = GET8(r);
		c->write_latch = GET8(r);
		c->rw_mode = GET8(r);
		c->mode = GET8(r);
		c->bcd = GET8(r);
		c->gate = GET8(r);
	}
}

static int vm_piece_err(const char *fn, const char *piece)
{
	int err = -errno;

	log_warn("%s: %s", fn, piece);
	return err ? err : -EIO;
}

int vm_state_read(struct vm *vm, struct vm_kstate *s)
{
	uint64_t t0, t1;

	memset(s, 0, sizeof(*s));
	s->pic[0].chip_id = KVM_IRQCHIP_PIC_MASTER;
	s->pic[1].chip_id = KVM_IRQCHIP_PIC_SLAVE;
	s->ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
	if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &s->pic[0]) < 0)
		return vm_piece_err(__func__, "pic_master: KVM_GET_IRQCHIP");
	if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &s->pic[1]) < 0)
		return vm_piece_err(__func__, "pic_slave: KVM_GET_IRQCHIP");
	if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &s->ioapic) < 0)
		return vm_piece_err(__func__, "ioapic: KVM_GET_IRQCHIP");
	if (ioctl(vm->vm_fd, KVM_GET_PIT2, &s->pit) < 0)
		return vm_piece_err(__func__, "pit: KVM_GET_PIT2");
	t0 = now_realtime_ns();
	if (ioctl(vm->vm_fd, KVM_GET_CLOCK, &s->clock) < 0)
		return vm_piece_err(__func__, "clock: KVM_GET_CLOCK");
	t1 = now_realtime_ns();
	s->time_ns = t0 + (t1 - t0) / 2;
	return 0;
}

int vm_state_save(struct vm *vm, struct state_out *o)
{
	uint8_t buf[IOAPIC_LEN];
	struct vm_kstate s;
	struct rec r;
	int ret;

	if (o->err)
		return o->err;
	ret = vm_state_read(vm, &s);
	if (ret)
		return ret;
	state_put_u64(o, VM_F_TIME_NS, s.time_ns);
	r = (struct rec){ .p = buf };
	pic_put(&r, &s.pic[0].chip.pic);
	state_put_bytes(o, VM_F_PIC_MASTER, buf, PIC_LEN);
	r = (struct rec){ .p = buf };
	pic_put(&r, &s.pic[1].chip.pic);
	state_put_bytes(o, VM_F_PIC_SLAVE, buf, PIC_LEN);
	r = (struct rec){ .p = buf };
	ioapic_put(&r, &s.ioapic.chip.ioapic);
	state_put_bytes(o, VM_F_IOAPIC, buf, IOAPIC_LEN);
	r = (struct rec){ .p = buf };
	pit_put(&r, &s.pit);
	state_put_bytes(o, VM_F_PIT, buf, PIT_LEN);
	r = (struct rec){ .p = buf };
	PUT64(&r, s.clock.clock);
	PUT32(&r, s.clock.flags);
	state_put_bytes(o, VM_F_CLOCK, buf, CLOCK_LEN);     /* last */
	return o->err;
}

int vm_state_decode(struct state_in *in, uint16_t version, struct vm_kstate *s)
{
	static const struct { uint16_t tag; uint32_t len; const char *name; } piece[] = {
		{ VM_F_TIME_NS, 8, "time_ns" },
		{ VM_F_PIC_MASTER, PIC_LEN, "pic_master" },
		{ VM_F_PIC_SLAVE, PIC_LEN, "pic_slave" },
		{ VM_F_IOAPIC, IOAPIC_LEN, "ioapic" },
		{ VM_F_PIT, PIT_LEN, "pit" },
		{ VM_F_CLOCK, CLOCK_LEN, "clock" },
	};
	struct state_field f;
	uint32_t seen = 0;
	int ret;

	memset(s, 0, sizeof(*s));
	s->pic[0].chip_id = KVM_IRQCHIP_PIC_MASTER;
	s->pic[1].chip_id = KVM_IRQCHIP_PIC_SLAVE;
	s->ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
	if (version < VM_STATE_MIN_VERSION || version > VM_STATE_VERSION) {
		log_warnx("%s: VM state version %u; this godwit loads %u to %u", __func__,
			  version, VM_STATE_MIN_VERSION, VM_STATE_VERSION);
		return -EINVAL;
	}
	while ((ret = state_next(in, &f)) == 1) {
		unsigned int k;
		struct rec r = rec_in(&f);

		for (k = 0; k < ARRAY_SIZE(piece) && piece[k].tag != f.tag; k++)
			;
		if (k == ARRAY_SIZE(piece))
			continue;
		if (seen & (1u << k)) {
			log_warnx("%s: %s: the field appears twice", __func__, piece[k].name);
			return -EBADMSG;
		}
		if (f.len != piece[k].len) {
			log_warnx("%s: %s: %u bytes, expected %u", __func__, piece[k].name, f.len,
				  piece[k].len);
			return -EBADMSG;
		}
		seen |= 1u << k;
		switch (f.tag) {
		case VM_F_TIME_NS:
			s->time_ns = GET64(&r);
			break;
		case VM_F_PIC_MASTER:
			pic_get(&r, &s->pic[0].chip.pic);
			break;
		case VM_F_PIC_SLAVE:
			pic_get(&r, &s->pic[1].chip.pic);
			break;
		case VM_F_IOAPIC:
			ioapic_get(&r, &s->ioapic.chip.ioapic);
			break;
		case VM_F_PIT:
			pit_get(&r, &s->pit);
			break;
		case VM_F_CLOCK:
			s->clock.clock = GET64(&r);
			s->clock.flags = GET32(&r);
			break;
		}
	}
	if (ret < 0) {
		log_warnx("%s: VM state truncated or corrupt at byte %zu of %zu", __func__,
			  in->off, in->len);
		return ret;
	}
	for (unsigned int k = 0; k < ARRAY_SIZE(piece); k++)
		if (!(seen & (1u << k))) {
			log_warnx("%s: VM state: the %s field is missing", __func__, piece[k].name);
			return -EBADMSG;
		}
	return 0;
}

int vm_state_load(struct vm *vm, struct state_in *in, uint16_t version,
		  const struct cpu_load_opts *opts)
{
	struct kvm_clock_data clock;
	struct vm_kstate s;
	int ret;

	ret = vm_state_decode(in, version, &s);
	if (ret)
		return ret;
	if (s.ioapic.chip.ioapic.base_address != LAYOUT_IOAPIC) {
		log_warnx("%s: ioapic: base address %#llx, the platform's is %#llx", __func__,
			  (unsigned long long)s.ioapic.chip.ioapic.base_address,
			  (unsigned long long)LAYOUT_IOAPIC);
		return -EINVAL;
	}
	if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s.pic[0]) < 0)
		return vm_piece_err(__func__, "pic_master: KVM_SET_IRQCHIP");
	if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s.pic[1]) < 0)
		return vm_piece_err(__func__, "pic_slave: KVM_SET_IRQCHIP");
	if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s.ioapic) < 0)
		return vm_piece_err(__func__, "ioapic: KVM_SET_IRQCHIP");
	if (ioctl(vm->vm_fd, KVM_SET_PIT2, &s.pit) < 0)
		return vm_piece_err(__func__, "pit: KVM_SET_PIT2");
	memset(&clock, 0, sizeof(clock));
	clock.clock = s.clock.clock;
	if (opts && opts->clock == CPU_CLOCK_ADVANCE)
		clock.clock += realtime_since(s.time_ns);
	if (ioctl(vm->vm_fd, KVM_SET_CLOCK, &clock) < 0)
		return vm_piece_err(__func__, "clock: KVM_SET_CLOCK");
	return 0;
}
