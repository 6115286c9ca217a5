/*
 * msr.c - the vCPU's MSRs (x86.h): which ones are saved (KVM's index list,
 * its PV MSRs and the MTRRs), reading them past the ones KVM cannot read,
 * and writing them back in the order KVM needs, past refusals of values the
 * vCPU already holds.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/log.h"
#include "x86.h"

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

static bool msr_in(const uint32_t *idx, uint32_t n, uint32_t msr)
{
	for (uint32_t i = 0; i < n; i++)
		if (idx[i] == msr)
			return true;
	return false;
}

/* The MSRs to save: KVM's index list plus msr_extra, without IA32_TSC. */
int msr_list(struct vm *vm, uint32_t **out, uint32_t *nout)
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
int msrs_read(struct vcpu *v, const uint32_t *idx, uint32_t n, struct cpu_state *s)
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

/*
 * Write the n MSRs of e.  KVM_SET_MSRS stops at the first MSR it refuses; a
 * refusal is harmless when the vCPU already holds the saved value (PVM, for
 * one, does not let the host write some MSRs it emulates as constants), so
 * that MSR is skipped; otherwise the load fails naming the MSR.
 */
int msrs_write(struct vcpu *v, const struct kvm_msr_entry *e, uint32_t n)
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
struct kvm_msrs *msrs_for_load(const struct cpu_state *s, bool *has_deadline,
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
