/*
 * x86.h - what the x86 state files share (cpu_state.c, vm_state.c, msr.c):
 * the MSRs godwit handles by name, host time, KVM capability checks, and the
 * MSR list, reads and writes.  Internal to src/arch/x86.
 */
#ifndef GODWIT_ARCH_X86_H
#define GODWIT_ARCH_X86_H

#include <sys/ioctl.h>
#include <time.h>

#include "godwit/cpu_state.h"
#include "godwit/vm.h"

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

static inline uint64_t now_realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Elapsed realtime since `then` (0 if the clock went backwards). */
static inline uint64_t realtime_since(uint64_t then)
{
	uint64_t now = now_realtime_ns();

	return now > then ? now - then : 0;
}

static inline int kvm_cap(int fd, long cap)
{
	int r = ioctl(fd, KVM_CHECK_EXTENSION, cap);

	return r < 0 ? 0 : r;
}

/* The MSRs to save: KVM's index list plus the PV MSRs and MTRRs, without IA32_TSC. */
int msr_list(struct vm *vm, uint32_t **out, uint32_t *nout) __must_check;
/* Read MSRs idx[0..n) into s->msrs (one KVM cannot read is skipped). */
int msrs_read(struct vcpu *v, const uint32_t *idx, uint32_t n, struct cpu_state *s) __must_check;
/* Write the n MSRs of e (a refused one the vCPU already holds is skipped). */
int msrs_write(struct vcpu *v, const struct kvm_msr_entry *e, uint32_t n) __must_check;
/* The saved MSRs in load order but TSC_DEADLINE, whose value *deadline gets. */
struct kvm_msrs *msrs_for_load(const struct cpu_state *s, bool *has_deadline, uint64_t *deadline);

#endif
