/*
 * cpuid.h - the CPUID the guest sees: KVM's supported set filtered to a CPU
 * model, plus topology and hypervisor leaves.
 *
 * Use: cpuid_get_supported() once per VM, cpuid_filter() to the configured
 * model (the VM's template), then per vCPU cpuid_dup() + cpuid_set_vcpu()
 * and KVM_SET_CPUID2.  The feature policy of each model is described at the
 * top of src/arch/x86/cpuid.c.
 */
#ifndef GODWIT_CPUID_H
#define GODWIT_CPUID_H

#include <linux/kvm.h>
#include "godwit/common.h"

enum cpu_model {
	CPU_MODEL_X86_64 = 0,      /* default: the psABI baseline, any x86-64 host */
	CPU_MODEL_X86_64_V2,       /* + SSE3..SSE4.2, POPCNT, CX16, LAHF */
	CPU_MODEL_X86_64_V3,
	CPU_MODEL_HOST,            /* KVM's supported set: not migration-safe */
};
#define CPU_MODEL_DEFAULT CPU_MODEL_X86_64

/*
 * cpu_model_parse - "x86-64", "x86-64-v2", "x86-64-v3" or "host" (exactly; case
 * matters) to a model.  Returns 0, or -EINVAL for anything else.
 */
int cpu_model_parse(const char *s, enum cpu_model *out) __must_check;
/* The name cpu_model_parse() accepts for m, or "unknown". */
const char *cpu_model_name(enum cpu_model m);

/* A `missing` buffer of this size holds the names of every feature. */
#define CPUID_MISSING_MAX 512

/* Room for the topology and hypervisor leaves cpuid_set_vcpu() may add. */
#define CPUID_EXTRA_ENTRIES 8
/* APIC IDs are 0..ncpus-1 and must fit leaf 1's 8-bit field, 0xff excluded. */
#define CPUID_MAX_VCPUS 255

/*
 * cpuid_get_supported - KVM_GET_SUPPORTED_CPUID on the /dev/kvm fd.
 *   kvm_fd: an open /dev/kvm
 *   out:    set to a malloc()ed set with room for CPUID_EXTRA_ENTRIES more
 *           entries than it holds; the caller free()s it
 * Returns 0, or -errno (-ENOMEM, or the ioctl's error).
 */
int cpuid_get_supported(int kvm_fd, struct kvm_cpuid2 **out) __must_check;

/*
 * cpuid_filter - restrict a KVM_GET_SUPPORTED_CPUID result to model m.
 *   c:     entries (modified in place; entries may be removed)
 *   m:     the model
 *   missing: out (may be NULL), the features the model requires that the
 *          host lacks, space-separated ("avx2 bmi2"), written into a buffer
 *          of len bytes, always NUL-terminated; names that do not fit are
 *          replaced by "..." (CPUID_MISSING_MAX bytes hold any list); ""
 *          on success
 * Returns 0; -ENOTSUP if the host cannot provide the model, and then c is
 * left unchanged; -EINVAL for an unknown model.
 */
int cpuid_filter(struct kvm_cpuid2 *c, enum cpu_model m, char *missing, size_t len) __must_check;

/*
 * cpuid_set_vcpu - per-vCPU fix-ups: APIC IDs and a coherent topology for
 * ncpus vCPUs (one core each, one thread per core, one package), leaf
 * 0x40000000 KVM signature, 0x40000010 TSC/bus frequency in kHz.
 *   c:       a filtered set, with room for c->nent + CPUID_EXTRA_ENTRIES
 *            entries (cpuid_get_supported() and cpuid_dup() give that);
 *            entries are added as needed and c->nent raised
 *   index:   the vCPU, 0..ncpus-1; its APIC ID is index
 *   ncpus:   vCPUs in the VM, 1..CPUID_MAX_VCPUS
 *   tsc_khz: the guest's TSC frequency (KVM_GET_TSC_KHZ); 0 if unknown,
 *            and then leaf 0x40000010 is not offered
 * Idempotent.  Returns 0, -EINVAL for a bad index/ncpus, or -ENOSPC if c
 * would need more than CPUID_EXTRA_ENTRIES new entries.
 */
int cpuid_set_vcpu(struct kvm_cpuid2 *c, unsigned int index, unsigned int ncpus,
		   uint32_t tsc_khz) __must_check;

/*
 * cpuid_dup - a malloc()ed copy of c with room for CPUID_EXTRA_ENTRIES more
 * entries, for a vCPU's cpuid_set_vcpu().  Returns NULL if out of memory.
 */
struct kvm_cpuid2 *cpuid_dup(const struct kvm_cpuid2 *c);

/*
 * cpuid_find - the entry KVM would use for (function, index): index only
 * counts for entries flagged KVM_CPUID_FLAG_SIGNIFCANT_INDEX.
 * Returns the entry, or NULL if c has none.
 */
struct kvm_cpuid_entry2 *cpuid_find(const struct kvm_cpuid2 *c, uint32_t function,
				    uint32_t index);

#endif
