/*
 * cpuid.c - the CPUID the guest sees.  Owns the CPU models and their feature
 * policy, the filter from KVM_GET_SUPPORTED_CPUID to a model, and the
 * per-vCPU topology and hypervisor leaves.
 *
 * Why models: a guest reads CPUID once, at boot, and from then on uses what
 * it saw.  After a live migration the same guest runs on another host, so
 * what it saw must be offered there too.  A named model is a fixed feature
 * set: every bit of it is required of the host (a host without one refuses
 * the model with the names of what it lacks), and every other bit is
 * cleared, so the guest sees the same features on every host that accepts
 * the model.  "host" passes KVM's set through: fastest, not migration-safe.
 *
 * The policy, per model (bits in feature_table[], leaves in leaf_policy[]):
 *
 * x86-64 (default) - the psABI baseline (x86-64-v1): what every x86-64
 *   host's KVM offers, including PVM hosts (software nested virtualization),
 *   whose KVM_GET_SUPPORTED_CPUID reports no SSE3 or later at all.  Debian
 *   and most distributions need nothing more.  The list is v2's below
 *   without CMPXCHG16B, LAHF/SAHF, POPCNT, SSE3, SSSE3, SSE4.1 and SSE4.2.
 * x86-64-v2 - the psABI level: the x86-64 baseline (FPU, DE, PSE,
 *   TSC, MSR, PAE, MCE, CX8, APIC, SEP, MTRR, PGE, MCA, CMOV, PAT, PSE36,
 *   CLFLUSH, MMX, FXSR, SSE, SSE2, SYSCALL, NX, LM) plus v2's CMPXCHG16B,
 *   LAHF/SAHF, POPCNT, SSE3, SSSE3, SSE4.1, SSE4.2.  This is QEMU's Nehalem
 *   (QEMU 7.2 has no x86-64-vN models; its docs map v2 to Nehalem and v3 to
 *   Haswell-noTSX), which has no VME either (virtual-8086 extensions: of no
 *   use in long mode).  QEMU adds x2APIC to every model under KVM, as godwit
 *   does (below).  Left out on purpose:
 *   AES and PCLMULQDQ (Nehalem, and Pentium/Celeron parts of later years, are
 *   v2 hosts without them: the default must run everywhere), XSAVE/AVX (not
 *   v2, same hosts), RDTSCP (as Nehalem in QEMU), 1 GiB pages (pdpe1gb: a
 *   host property, never in QEMU's older models; Linux only uses it for
 *   hugetlbfs and the direct map).
 * x86-64-v3 - v2 plus the psABI's AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT,
 *   MOVBE and XSAVE (with the x87, SSE and AVX state components), plus what
 *   every AVX2 processor from Intel (Haswell on) and AMD (Excavator, Zen on)
 *   has and QEMU's Haswell keeps: AES, PCLMULQDQ, XSAVEOPT, RDTSCP.  Left
 *   out: FSGSBASE, ERMS, INVPCID, PCID, SMEP, RDRAND (either not on every v3
 *   host, or, for RDRAND, not trustworthy on all of them: a guest gets
 *   entropy from virtio-rng instead).
 * Both: what KVM emulates in software on any host is set whatever the host
 *   reports: HYPERVISOR (a guest must know), x2APIC (needed above 255 vCPUs
 *   and cheaper than xAPIC MMIO), TSC-deadline timer (godwit always has the
 *   in-kernel LAPIC), ARAT (the virtual APIC timer never stops).  Cleared:
 *   AVX-512 and every other leaf 7 bit, PMU (leaf 0xa), invariant TSC (no
 *   TSC scaling on many hosts, so the frequency changes under the guest),
 *   the speculation-control bits and ARCH_CAPABILITIES (their MSRs report
 *   the host's vulnerabilities; a guest that decided "not vulnerable" on one
 *   host would stay unprotected on the next, so it is told nothing and
 *   protects itself: slower, safe), AMD-only extensions (SSE4A, TOPOEXT,
 *   MMXEXT, FFXSR, ...), and leaves the model does not describe (5, 0x12,
 *   0x14, 0x15, 0x16, 0x1f, 0x8000000a up, ...).  Leaf 0xd offers only the
 *   model's state components (x87/SSE; v3 adds AVX) with the sizes computed
 *   for them.  KVM's paravirtual features are kept where KVM offers them and
 *   their state migrates with the MSRs (kvmclock, steal time, PV EOI, PV
 *   unhalt, PV TLB flush, PV IPI, poll control, sched yield, stable clock
 *   bit); async page faults (in-flight tokens), MSI extended destination
 *   IDs (a VMM routing choice) and the SEV ones are cleared.  The MSRs behind
 *   the kept ones (MSR_KVM_SYSTEM_TIME_NEW, WALL_CLOCK_NEW, STEAL_TIME,
 *   PV_EOI_EN, POLL_CONTROL) must be in the vCPU's saved MSR list.
 *
 * Kept as the host has them, on every model: the vendor string, family,
 * model and stepping, cache descriptors (leaves 2, 4, 0x80000005/6), the
 * brand string and the address sizes (0x80000008 EAX).  Changing the vendor
 * breaks guests (Intel and AMD differ in SYSCALL/SYSENTER, MSRs and errata
 * handling), so a guest keeps its boot host's vendor; migrating between an
 * Intel and an AMD host is refused later, by comparing the vendor recorded in
 * the migration stream with the destination's, as the address sizes are.
 *
 * Topology (cpuid_set_vcpu): one package of ncpus cores, one thread each,
 * APIC ID = vCPU index, written coherently in leaves 1, 4, 0xb, 0x1f,
 * 0x80000008, 0x8000001d and 0x8000001e, the same numbering the MADT uses.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <asm/kvm_para.h>

#include "godwit/cpuid.h"

enum { R_EAX, R_EBX, R_ECX, R_EDX };

#define BIT(n) (1u << (n))

/* Which models a feature belongs to. */
#define M_V1 BIT(CPU_MODEL_X86_64)
#define M_V2 BIT(CPU_MODEL_X86_64_V2)
#define M_V3 BIT(CPU_MODEL_X86_64_V3)
#define M_V2UP (M_V2 | M_V3)
#define M_ALL (M_V1 | M_V2 | M_V3)

enum feat_kind {
	F_REQ,    /* the host must offer it, or the model is refused */
	F_FORCE,  /* emulated by KVM on every host: set even if not reported */
	F_OPT,    /* kept when the host offers it, never required (see uses) */
};

struct cpu_feature {
	const char *name;        /* as reported in `missing` */
	uint32_t function;
	uint8_t index;
	uint8_t reg;
	uint8_t bit;
	uint8_t kind;
	uint8_t models;
};

#define FEAT(n, fn, idx, r, b, k, m) { n, fn, idx, r, b, k, m }
#define KVM_PV(n, b) FEAT(n, KVM_CPUID_FEATURES, 0, R_EAX, b, F_OPT, M_ALL)

/*
 * Every feature bit a named model may keep.  Anything not listed is cleared
 * in the registers leaf_policy[] marks as masked.  Table order is the order
 * of `missing`.
 */
static const struct cpu_feature feature_table[] = {
	/* Leaf 1 EDX: the x86-64 baseline. */
	FEAT("fpu",       0x1, 0, R_EDX,  0, F_REQ, M_ALL),
	FEAT("de",        0x1, 0, R_EDX,  2, F_REQ, M_ALL),
	FEAT("pse",       0x1, 0, R_EDX,  3, F_REQ, M_ALL),
	FEAT("tsc",       0x1, 0, R_EDX,  4, F_REQ, M_ALL),
	FEAT("msr",       0x1, 0, R_EDX,  5, F_REQ, M_ALL),
	FEAT("pae",       0x1, 0, R_EDX,  6, F_REQ, M_ALL),
	FEAT("mce",       0x1, 0, R_EDX,  7, F_REQ, M_ALL),
	FEAT("cx8",       0x1, 0, R_EDX,  8, F_REQ, M_ALL),
	FEAT("apic",      0x1, 0, R_EDX,  9, F_REQ, M_ALL),
	FEAT("sep",       0x1, 0, R_EDX, 11, F_REQ, M_ALL),
	FEAT("mtrr",      0x1, 0, R_EDX, 12, F_REQ, M_ALL),
	FEAT("pge",       0x1, 0, R_EDX, 13, F_REQ, M_ALL),
	FEAT("mca",       0x1, 0, R_EDX, 14, F_REQ, M_ALL),
	FEAT("cmov",      0x1, 0, R_EDX, 15, F_REQ, M_ALL),
	FEAT("pat",       0x1, 0, R_EDX, 16, F_REQ, M_ALL),
	FEAT("pse36",     0x1, 0, R_EDX, 17, F_REQ, M_ALL),
	FEAT("clflush",   0x1, 0, R_EDX, 19, F_REQ, M_ALL),
	FEAT("mmx",       0x1, 0, R_EDX, 23, F_REQ, M_ALL),
	FEAT("fxsr",      0x1, 0, R_EDX, 24, F_REQ, M_ALL),
	FEAT("sse",       0x1, 0, R_EDX, 25, F_REQ, M_ALL),
	FEAT("sse2",      0x1, 0, R_EDX, 26, F_REQ, M_ALL),
	/* (HTT, bit 28, is topology: cpuid_set_vcpu() sets it.) */
	/* Leaf 0x80000001: the rest of the baseline, and v2's LAHF/SAHF. */
	FEAT("syscall",   0x80000001, 0, R_EDX, 11, F_REQ, M_ALL),
	FEAT("nx",        0x80000001, 0, R_EDX, 20, F_REQ, M_ALL),
	FEAT("lm",        0x80000001, 0, R_EDX, 29, F_REQ, M_ALL),
	FEAT("lahf_lm",   0x80000001, 0, R_ECX,  0, F_REQ, M_V2UP),
	/* Leaf 1 ECX: v2. */
	FEAT("sse3",      0x1, 0, R_ECX,  0, F_REQ, M_V2UP),
	FEAT("ssse3",     0x1, 0, R_ECX,  9, F_REQ, M_V2UP),
	FEAT("cx16",      0x1, 0, R_ECX, 13, F_REQ, M_V2UP),
	FEAT("sse4_1",    0x1, 0, R_ECX, 19, F_REQ, M_V2UP),
	FEAT("sse4_2",    0x1, 0, R_ECX, 20, F_REQ, M_V2UP),
	FEAT("popcnt",    0x1, 0, R_ECX, 23, F_REQ, M_V2UP),
	/* Emulated by KVM. */
	FEAT("x2apic",    0x1, 0, R_ECX, 21, F_FORCE, M_ALL),
	FEAT("tsc_deadline_timer", 0x1, 0, R_ECX, 24, F_FORCE, M_ALL),
	FEAT("hypervisor", 0x1, 0, R_ECX, 31, F_FORCE, M_ALL),
	FEAT("arat",      0x6, 0, R_EAX,  2, F_FORCE, M_ALL),
	/* v3. */
	FEAT("fma",       0x1, 0, R_ECX, 12, F_REQ, M_V3),
	FEAT("movbe",     0x1, 0, R_ECX, 22, F_REQ, M_V3),
	FEAT("xsave",     0x1, 0, R_ECX, 26, F_REQ, M_V3),
	FEAT("avx",       0x1, 0, R_ECX, 28, F_REQ, M_V3),
	FEAT("f16c",      0x1, 0, R_ECX, 29, F_REQ, M_V3),
	FEAT("bmi1",      0x7, 0, R_EBX,  3, F_REQ, M_V3),
	FEAT("avx2",      0x7, 0, R_EBX,  5, F_REQ, M_V3),
	FEAT("bmi2",      0x7, 0, R_EBX,  8, F_REQ, M_V3),
	FEAT("lzcnt",     0x80000001, 0, R_ECX, 5, F_REQ, M_V3),
	FEAT("xstate_avx", 0xd, 0, R_EAX, 2, F_REQ, M_V3),
	/* v3, beyond the psABI (see the top of the file). */
	FEAT("aes",       0x1, 0, R_ECX, 25, F_REQ, M_V3),
	FEAT("pclmulqdq", 0x1, 0, R_ECX,  1, F_REQ, M_V3),
	FEAT("xsaveopt",  0xd, 1, R_EAX,  0, F_REQ, M_V3),
	FEAT("rdtscp",    0x80000001, 0, R_EDX, 27, F_REQ, M_V3),
	/*
	 * XSAVE's x87 and SSE components: in every XSAVE host.  v2 has no
	 * XSAVE, so they are not required there, only described.
	 */
	FEAT("xstate_x87", 0xd, 0, R_EAX, 0, F_OPT, M_V1 | M_V2),
	FEAT("xstate_sse", 0xd, 0, R_EAX, 1, F_OPT, M_V1 | M_V2),
	FEAT("xstate_x87", 0xd, 0, R_EAX, 0, F_REQ, M_V3),
	FEAT("xstate_sse", 0xd, 0, R_EAX, 1, F_REQ, M_V3),
	/*
	 * AMD repeats these leaf 1 EDX bits in 0x80000001 EDX; Intel leaves
	 * them clear.  Kept as the host has them: the vendor never changes
	 * under a guest, so neither do these.
	 */
	FEAT("fpu",       0x80000001, 0, R_EDX,  0, F_OPT, M_ALL),
	FEAT("de",        0x80000001, 0, R_EDX,  2, F_OPT, M_ALL),
	FEAT("pse",       0x80000001, 0, R_EDX,  3, F_OPT, M_ALL),
	FEAT("tsc",       0x80000001, 0, R_EDX,  4, F_OPT, M_ALL),
	FEAT("msr",       0x80000001, 0, R_EDX,  5, F_OPT, M_ALL),
	FEAT("pae",       0x80000001, 0, R_EDX,  6, F_OPT, M_ALL),
	FEAT("mce",       0x80000001, 0, R_EDX,  7, F_OPT, M_ALL),
	FEAT("cx8",       0x80000001, 0, R_EDX,  8, F_OPT, M_ALL),
	FEAT("apic",      0x80000001, 0, R_EDX,  9, F_OPT, M_ALL),
	FEAT("mtrr",      0x80000001, 0, R_EDX, 12, F_OPT, M_ALL),
	FEAT("pge",       0x80000001, 0, R_EDX, 13, F_OPT, M_ALL),
	FEAT("mca",       0x80000001, 0, R_EDX, 14, F_OPT, M_ALL),
	FEAT("cmov",      0x80000001, 0, R_EDX, 15, F_OPT, M_ALL),
	FEAT("pat",       0x80000001, 0, R_EDX, 16, F_OPT, M_ALL),
	FEAT("pse36",     0x80000001, 0, R_EDX, 17, F_OPT, M_ALL),
	FEAT("mmx",       0x80000001, 0, R_EDX, 23, F_OPT, M_ALL),
	FEAT("fxsr",      0x80000001, 0, R_EDX, 24, F_OPT, M_ALL),
	/*
	 * KVM's paravirtual features: kept where this KVM offers them (they
	 * are KVM's, not the processor's; the migration stream's CPUID
	 * comparison catches a destination kernel without one).
	 */
	KVM_PV("kvmclock", KVM_FEATURE_CLOCKSOURCE),
	KVM_PV("kvm_nopiodelay", KVM_FEATURE_NOP_IO_DELAY),
	KVM_PV("kvmclock2", KVM_FEATURE_CLOCKSOURCE2),
	KVM_PV("kvm_steal_time", KVM_FEATURE_STEAL_TIME),
	KVM_PV("kvm_pv_eoi", KVM_FEATURE_PV_EOI),
	KVM_PV("kvm_pv_unhalt", KVM_FEATURE_PV_UNHALT),
	KVM_PV("kvm_pv_tlb_flush", KVM_FEATURE_PV_TLB_FLUSH),
	KVM_PV("kvm_pv_ipi", KVM_FEATURE_PV_SEND_IPI),
	KVM_PV("kvm_poll_control", KVM_FEATURE_POLL_CONTROL),
	KVM_PV("kvm_pv_sched_yield", KVM_FEATURE_PV_SCHED_YIELD),
	KVM_PV("kvmclock_stable", KVM_FEATURE_CLOCKSOURCE_STABLE_BIT),
};

/*
 * The leaves a named model keeps, and what happens to each register.  A
 * register in `keep` stays as KVM reported it, one in `mask` goes through
 * feature_table[], the others are zeroed (and some then computed, see
 * filter_entry()).  Leaves not listed are removed.
 */
#define ANY_INDEX 0xffffffffu
#define RB(r) BIT(r)
#define ALL_REGS (RB(R_EAX) | RB(R_EBX) | RB(R_ECX) | RB(R_EDX))

struct leaf_policy {
	uint32_t function;
	uint32_t index;
	uint8_t keep;
	uint8_t mask;
};

static const struct leaf_policy leaf_policy[] = {
	{ 0x0, ANY_INDEX, RB(R_EBX) | RB(R_ECX) | RB(R_EDX), 0 }, /* EAX: max */
	{ 0x1, ANY_INDEX, RB(R_EAX) | RB(R_EBX), RB(R_ECX) | RB(R_EDX) },
	{ 0x2, ANY_INDEX, ALL_REGS, 0 },            /* cache descriptors */
	{ 0x4, ANY_INDEX, ALL_REGS, 0 },            /* cache parameters */
	{ 0x6, ANY_INDEX, 0, RB(R_EAX) },           /* ARAT only */
	{ 0x7, 0, 0, RB(R_EBX) | RB(R_ECX) | RB(R_EDX) }, /* EAX: no subleaf 1 */
	{ 0xb, ANY_INDEX, ALL_REGS, 0 },            /* cpuid_set_vcpu() */
	{ 0xd, ANY_INDEX, 0, 0 },                   /* filter_xsave() */
	{ 0x80000000, ANY_INDEX, RB(R_EBX) | RB(R_ECX) | RB(R_EDX), 0 },
	{ 0x80000001, ANY_INDEX, RB(R_EAX) | RB(R_EBX), RB(R_ECX) | RB(R_EDX) },
	{ 0x80000002, ANY_INDEX, ALL_REGS, 0 },     /* brand string */
	{ 0x80000003, ANY_INDEX, ALL_REGS, 0 },
	{ 0x80000004, ANY_INDEX, ALL_REGS, 0 },
	{ 0x80000005, ANY_INDEX, ALL_REGS, 0 },     /* AMD L1 caches */
	{ 0x80000006, ANY_INDEX, ALL_REGS, 0 },     /* L2/L3 caches */
	{ 0x80000007, ANY_INDEX, 0, 0 },            /* no invariant TSC */
	{ 0x80000008, ANY_INDEX, RB(R_EAX), 0 },    /* ECX: cpuid_set_vcpu() */
	{ KVM_CPUID_SIGNATURE, ANY_INDEX, ALL_REGS, 0 },
	{ KVM_CPUID_FEATURES, ANY_INDEX, 0, RB(R_EAX) },
};

/* The highest leaf of each range a named model describes. */
#define MODEL_MAX_BASIC 0xdu
#define MODEL_MAX_EXT   0x80000008u

/* XSAVE: the legacy area and header; the AVX state component. */
#define XSAVE_LEGACY_SIZE 576u
#define XFEATURE_AVX      2

#define KVM_CPUID_TSC   0x40000010u
#define APIC_BUS_KHZ    1000000u  /* KVM's APIC bus runs at 1 GHz */

int cpu_model_parse(const char *s, enum cpu_model *out)
{
	static const enum cpu_model all[] = {
		CPU_MODEL_X86_64, CPU_MODEL_X86_64_V2, CPU_MODEL_X86_64_V3, CPU_MODEL_HOST,
	};

	for (size_t i = 0; s && i < ARRAY_SIZE(all); i++) {
		if (!strcmp(s, cpu_model_name(all[i]))) {
			*out = all[i];
			return 0;
		}
	}
	return -EINVAL;
}

const char *cpu_model_name(enum cpu_model m)
{
	switch (m) {
	case CPU_MODEL_X86_64:
		return "x86-64";
	case CPU_MODEL_X86_64_V2:
		return "x86-64-v2";
	case CPU_MODEL_X86_64_V3:
		return "x86-64-v3";
	case CPU_MODEL_HOST:
		return "host";
	}
	return "unknown";
}

static uint32_t *entry_reg(struct kvm_cpuid_entry2 *e, int r)
{
	switch (r) {
	case R_EAX:
		return &e->eax;
	case R_EBX:
		return &e->ebx;
	case R_ECX:
		return &e->ecx;
	default:
		return &e->edx;
	}
}

static bool entry_matches(const struct kvm_cpuid_entry2 *e, uint32_t function,
			  uint32_t index)
{
	if (e->function != function)
		return false;
	return !(e->flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) || e->index == index;
}

struct kvm_cpuid_entry2 *cpuid_find(const struct kvm_cpuid2 *c, uint32_t function,
				    uint32_t index)
{
	for (uint32_t i = 0; i < c->nent; i++) {
		if (entry_matches(&c->entries[i], function, index))
			return (struct kvm_cpuid_entry2 *)&c->entries[i];
	}
	return NULL;
}

static struct kvm_cpuid2 *cpuid_alloc(uint32_t room)
{
	struct kvm_cpuid2 *c;

	c = calloc(1, sizeof(*c) + (size_t)room * sizeof(c->entries[0]));
	if (c)
		c->nent = room;
	return c;
}

int cpuid_get_supported(int kvm_fd, struct kvm_cpuid2 **out)
{
	uint32_t room = 128;

	/* KVM says E2BIG until the buffer is big enough; it has ~100 now. */
	for (;;) {
		struct kvm_cpuid2 *c = cpuid_alloc(room + CPUID_EXTRA_ENTRIES);
		int err;

		if (!c)
			return -ENOMEM;
		c->nent = room;
		if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			*out = c;
			return 0;
		}
		err = errno;
		free(c);
		if (err != E2BIG || room >= 4096)
			return -err;
		room *= 2;
	}
}

struct kvm_cpuid2 *cpuid_dup(const struct kvm_cpuid2 *c)
{
	struct kvm_cpuid2 *d = cpuid_alloc(c->nent + CPUID_EXTRA_ENTRIES);

	if (!d)
		return NULL;
	memcpy(d->entries, c->entries, c->nent * sizeof(c->entries[0]));
	d->nent = c->nent;
	return d;
}

static bool host_has(const struct kvm_cpuid2 *c, const struct cpu_feature *f)
{
	struct kvm_cpuid_entry2 *e = cpuid_find(c, f->function, f->index);

	return e && (*entry_reg(e, f->reg) & BIT(f->bit));
}

/* A space-separated list of names in a caller's buffer. */
struct name_list {
	char *buf;
	size_t len;
	size_t used;
	bool full;      /* a name did not fit: the list ends with "..." */
};

/* Append name whole, or end the list with "..." if it does not fit. */
static void list_append(struct name_list *l, const char *name)
{
	const char *sep = l->used ? " " : "";
	size_t need = strlen(sep) + strlen(name);

	if (!l->buf || !l->len || l->full)
		return;
	if (l->used + need >= l->len) {
		l->full = true;
		name = "...";
		need = strlen(sep) + 3;
		if (l->used + need >= l->len)
			return;
	}
	snprintf(l->buf + l->used, l->len - l->used, "%s%s", sep, name);
	l->used += need;
}

/*
 * The features model bit mbit requires that c lacks, appended to missing.
 * Returns how many.
 */
static int model_check(const struct kvm_cpuid2 *c, unsigned int mbit, char *missing,
		       size_t len)
{
	struct name_list l = { missing, len, 0, false };
	struct kvm_cpuid_entry2 *e;
	int n = 0;

	for (size_t i = 0; i < ARRAY_SIZE(feature_table); i++) {
		const struct cpu_feature *f = &feature_table[i];

		if (!(f->models & mbit) || f->kind != F_REQ || host_has(c, f))
			continue;
		list_append(&l, f->name);
		n++;
	}
	/*
	 * The AVX state component needs its layout (size, offset) too; only
	 * asked for when 0xd.0 offers the component (else "xstate_avx" above).
	 */
	e = cpuid_find(c, 0xd, 0);
	if ((mbit & M_V3) && e && (e->eax & BIT(XFEATURE_AVX))) {
		e = cpuid_find(c, 0xd, XFEATURE_AVX);
		if (!e || !e->eax || e->ebx < XSAVE_LEGACY_SIZE) {
			list_append(&l, "xstate_avx_layout");
			n++;
		}
	}
	return n;
}

static const struct leaf_policy *leaf_policy_find(const struct kvm_cpuid_entry2 *e)
{
	for (size_t i = 0; i < ARRAY_SIZE(leaf_policy); i++) {
		const struct leaf_policy *p = &leaf_policy[i];

		if (p->function == e->function &&
		    (p->index == ANY_INDEX || p->index == e->index))
			return p;
	}
	return NULL;
}

/* The bits feature_table[] lets model mbit keep (kind != F_FORCE) or force. */
static uint32_t model_bits(const struct kvm_cpuid_entry2 *e, int reg, unsigned int mbit,
			   bool forced)
{
	uint32_t bits = 0;

	for (size_t i = 0; i < ARRAY_SIZE(feature_table); i++) {
		const struct cpu_feature *f = &feature_table[i];

		if ((f->models & mbit) && f->function == e->function &&
		    f->index == e->index && f->reg == reg &&
		    (f->kind == F_FORCE) == forced)
			bits |= BIT(f->bit);
	}
	return bits;
}

/*
 * Leaf 0xd, the XSAVE state components: only the model's (xcr0), with the
 * save-area sizes computed for them.  Returns false to remove the entry.
 * xcr0 is what 0xd.0 EAX ends up as; max_size the standard-format area size
 * for all of xcr0.
 */
static bool filter_xsave(struct kvm_cpuid_entry2 *e, unsigned int mbit, uint32_t xcr0,
			 uint32_t max_size)
{
	uint32_t keep;

	switch (e->index) {
	case 0:
		e->eax = xcr0;
		/* EBX: the size for the XCR0 at reset (x87); KVM updates it. */
		e->ebx = XSAVE_LEGACY_SIZE;
		e->ecx = max_size;
		e->edx = 0;
		return true;
	case 1:
		/*
		 * Only XSAVEOPT: XSAVEC/XSAVES/XFD and the supervisor states
		 * are in no model.  EBX is KVM's to compute (it does for
		 * XSAVES/XSAVEC only).
		 */
		keep = model_bits(e, R_EAX, mbit, false);
		e->eax &= keep;
		e->ebx = e->ecx = e->edx = 0;
		return true;
	default:
		return e->index < 32 && (xcr0 & BIT(e->index));
	}
}

/* Apply model mbit to one entry; returns false to remove it. */
static bool filter_entry(struct kvm_cpuid_entry2 *e, unsigned int mbit, uint32_t max_basic,
			 uint32_t max_ext, uint32_t xcr0, uint32_t xsave_size)
{
	const struct leaf_policy *p;

	if (e->function < 0x40000000 && e->function > max_basic)
		return false;
	if (e->function >= 0x80000000 && e->function > max_ext)
		return false;
	p = leaf_policy_find(e);
	if (!p)
		return false;
	if (e->function == 0xd)
		return filter_xsave(e, mbit, xcr0, xsave_size);

	for (int r = R_EAX; r <= R_EDX; r++) {
		uint32_t *v = entry_reg(e, r);

		if (p->keep & RB(r))
			continue;
		if (p->mask & RB(r))
			*v &= model_bits(e, r, mbit, false);
		else
			*v = 0;
		*v |= model_bits(e, r, mbit, true);
	}
	if (e->function == 0x0)
		e->eax = max_basic;
	else if (e->function == 0x80000000)
		e->eax = max_ext;
	return true;
}

/*
 * The XSAVE components of model mbit that c offers (0xd.0 EAX masked) and
 * the standard-format save area size for them.
 */
static void model_xsave(const struct kvm_cpuid2 *c, unsigned int mbit, uint32_t *xcr0,
			uint32_t *size)
{
	struct kvm_cpuid_entry2 *e = cpuid_find(c, 0xd, 0);

	*xcr0 = e ? e->eax & model_bits(e, R_EAX, mbit, false) : 0;
	*size = XSAVE_LEGACY_SIZE;
	for (uint32_t i = 2; i < 32; i++) {
		struct kvm_cpuid_entry2 *s;

		if (!(*xcr0 & BIT(i)))
			continue;
		s = cpuid_find(c, 0xd, i);
		if (s && s->ebx + s->eax > *size)
			*size = s->ebx + s->eax;
	}
}

static void set_hypervisor_bit(struct kvm_cpuid2 *c)
{
	struct kvm_cpuid_entry2 *e = cpuid_find(c, 0x1, 0);

	if (e)
		e->ecx |= BIT(31);
}

int cpuid_filter(struct kvm_cpuid2 *c, enum cpu_model m, char *missing, size_t len)
{
	struct kvm_cpuid_entry2 *e;
	uint32_t max_basic, max_ext, xcr0, xsave_size, n;
	unsigned int mbit;

	if (missing && len)
		missing[0] = '\0';
	switch (m) {
	case CPU_MODEL_HOST:
		set_hypervisor_bit(c);
		return 0;
	case CPU_MODEL_X86_64:
	case CPU_MODEL_X86_64_V2:
	case CPU_MODEL_X86_64_V3:
		mbit = BIT(m);
		break;
	default:
		return -EINVAL;
	}

	/* Check everything before changing anything: c stays whole on error. */
	if (model_check(c, mbit, missing, len))
		return -ENOTSUP;

	e = cpuid_find(c, 0x0, 0);
	max_basic = MIN(e ? e->eax : 0, MODEL_MAX_BASIC);
	e = cpuid_find(c, 0x80000000, 0);
	max_ext = MIN(e ? e->eax : 0, MODEL_MAX_EXT);
	model_xsave(c, mbit, &xcr0, &xsave_size);

	n = 0;
	for (uint32_t i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 ent = c->entries[i];

		if (filter_entry(&ent, mbit, max_basic, max_ext, xcr0, xsave_size))
			c->entries[n++] = ent;
	}
	c->nent = n;
	return 0;
}

/* Adds entries to a set, at most up to its known room. */
struct cpuid_adder {
	struct kvm_cpuid2 *c;
	uint32_t limit;
};

/* The entry for (function, index), added zeroed if missing; NULL if no room. */
static struct kvm_cpuid_entry2 *get_entry(struct cpuid_adder *a, uint32_t function,
					  uint32_t index, bool indexed)
{
	struct kvm_cpuid_entry2 *e = cpuid_find(a->c, function, index);

	if (e)
		return e;
	if (a->c->nent >= a->limit)
		return NULL;
	e = &a->c->entries[a->c->nent++];
	memset(e, 0, sizeof(*e));
	e->function = function;
	e->index = indexed ? index : 0;
	e->flags = indexed ? KVM_CPUID_FLAG_SIGNIFCANT_INDEX : 0;
	return e;
}

/* The smallest b with 2^b >= n. */
static unsigned int order_base_2(unsigned int n)
{
	unsigned int b = 0;

	while ((1u << b) < n)
		b++;
	return b;
}

/*
 * Leaf 0xb or 0x1f, the x2APIC topology: subleaf 0 the SMT level (one thread
 * per core, so no APIC ID bits), subleaf 1 the core level (ncpus cores,
 * core_bits bits), then the terminating invalid level.  Levels beyond (die,
 * module, tile in 0x1f) are made invalid too.
 */
static int set_x2apic_topology(struct cpuid_adder *a, uint32_t function, uint32_t apic_id,
			       unsigned int ncpus, unsigned int core_bits)
{
	struct kvm_cpuid_entry2 *e;

	/* Subleaves are told apart by index: say so if KVM did not. */
	for (uint32_t i = 0; i < a->c->nent; i++) {
		if (a->c->entries[i].function == function)
			a->c->entries[i].flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
	}
	for (uint32_t sub = 0; sub < 3; sub++) {
		e = get_entry(a, function, sub, true);
		if (!e)
			return -ENOSPC;
	}
	for (uint32_t i = 0; i < a->c->nent; i++) {
		e = &a->c->entries[i];
		if (e->function != function)
			continue;
		e->edx = apic_id;
		switch (e->index) {
		case 0:
			e->eax = 0;
			e->ebx = 1;
			e->ecx = 1u << 8;              /* SMT */
			break;
		case 1:
			e->eax = core_bits;
			e->ebx = ncpus;
			e->ecx = 1 | (2u << 8);        /* core */
			break;
		default:
			e->eax = e->ebx = 0;
			e->ecx = e->index & 0xff;      /* invalid */
			break;
		}
	}
	return 0;
}

/* EAX[25:14] of leaves 4 and 0x8000001d: threads sharing the cache - 1. */
static uint32_t cache_sharing(uint32_t eax, unsigned int ncpus)
{
	unsigned int level = (eax >> 5) & 0x7;
	uint32_t share = level >= 3 ? MIN(ncpus - 1, 0xfffu) : 0;

	return (eax & ~(0xfffu << 14)) | (share << 14);
}

int cpuid_set_vcpu(struct kvm_cpuid2 *c, unsigned int index, unsigned int ncpus,
		   uint32_t tsc_khz)
{
	static const char kvm_signature[12] = "KVMKVMKVM\0\0";
	struct cpuid_adder a = { c, c->nent + CPUID_EXTRA_ENTRIES };
	struct kvm_cpuid_entry2 *e;
	unsigned int core_bits;
	uint32_t apic_id = index;
	int err;

	if (!ncpus || ncpus > CPUID_MAX_VCPUS || index >= ncpus)
		return -EINVAL;
	core_bits = order_base_2(ncpus);

	/*
	 * Leaf 1 EBX: CLFLUSH line size (8-byte units, 64 bytes if KVM left
	 * it 0), logical processors per package, initial APIC ID; HTT says
	 * the count is meaningful.
	 */
	e = cpuid_find(c, 0x1, 0);
	if (e) {
		uint32_t clflush = (e->ebx >> 8) & 0xff;

		e->ebx = (e->ebx & 0xff) | ((clflush ? clflush : 8) << 8) |
			 (ncpus << 16) | (apic_id << 24);
		if (ncpus > 1)
			e->edx |= BIT(28);
		else
			e->edx &= ~BIT(28);
	}

	for (uint32_t i = 0; i < c->nent; i++) {
		e = &c->entries[i];
		if (e->function == 0x4 && (e->eax & 0x1f)) {
			/* Intel: cores per package - 1 in [31:26]. */
			e->eax = cache_sharing(e->eax, ncpus);
			e->eax = (e->eax & ~(0x3fu << 26)) |
				 (MIN(ncpus - 1, 0x3fu) << 26);
		} else if (e->function == 0x8000001d && (e->eax & 0x1f)) {
			e->eax = cache_sharing(e->eax, ncpus);
		}
	}

	err = set_x2apic_topology(&a, 0xb, apic_id, ncpus, core_bits);
	if (err)
		return err;
	/* Linux prefers 0x1f when present: keep it in step. */
	if (cpuid_find(c, 0x1f, 0)) {
		err = set_x2apic_topology(&a, 0x1f, apic_id, ncpus, core_bits);
		if (err)
			return err;
	}
	e = cpuid_find(c, 0x0, 0);
	if (e && e->eax < 0xb)
		e->eax = 0xb;

	/* AMD: cores per package - 1, and the APIC ID bits they take. */
	e = cpuid_find(c, 0x80000008, 0);
	if (e)
		e->ecx = (e->ecx & ~0xf0ffu) | (core_bits << 12) | (ncpus - 1);
	/* AMD TOPOEXT (host model only): extended APIC ID, core, node. */
	e = cpuid_find(c, 0x8000001e, 0);
	if (e) {
		e->eax = apic_id;
		e->ebx = (e->ebx & ~0xffffu) | (index & 0xff);
		e->ecx &= ~0x7ffu;
	}

	/* KVM's signature, and the leaf with the frequencies after it. */
	e = get_entry(&a, KVM_CPUID_SIGNATURE, 0, false);
	if (!e)
		return -ENOSPC;
	e->eax = tsc_khz ? KVM_CPUID_TSC : KVM_CPUID_FEATURES;
	memcpy(&e->ebx, &kvm_signature[0], 4);
	memcpy(&e->ecx, &kvm_signature[4], 4);
	memcpy(&e->edx, &kvm_signature[8], 4);
	e = tsc_khz ? get_entry(&a, KVM_CPUID_TSC, 0, false) : cpuid_find(c, KVM_CPUID_TSC, 0);
	if (tsc_khz && !e)
		return -ENOSPC;
	if (e) {
		e->eax = tsc_khz;
		e->ebx = tsc_khz ? APIC_BUS_KHZ : 0;
		e->ecx = e->edx = 0;
	}
	return 0;
}
