/*
 * throttle.c - dirty-rate throttling of the vCPUs during pre-copy
 * (throttle.h, docs/migration.md "Throttling").
 *
 * The thread ticks every THROTTLE_SLICE_MS.  At each tick it kicks every
 * vCPU that has a sleep set (vcpu->throttle_us): the vCPU leaves KVM_RUN and
 * sleeps that long in vcpu_throttle_point() before it goes on, so a vCPU
 * throttled at p runs about (1 - p) of every slice and never sleeps longer
 * than p x slice at once.  Every THROTTLE_PERIOD_MS it measures each vCPU's
 * dirty rate from its dirty ring, estimates what the vCPU would dirty
 * unthrottled (measured / (1 - p)), shares the budget out (throttle_share)
 * and sets each vCPU's sleep for its quota.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "godwit/log.h"
#include "godwit/throttle.h"
#include "godwit/vm.h"

struct throttle {
	struct vm *vm;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;         /* CLOCK_MONOTONIC: the tick, or stop */
	bool stop;                   /* under lock */
	double budget, vm_rate;      /* under lock (throttle_set_budget) */
	unsigned int n;              /* vCPUs */
	double *free_rate;           /* thread: each vCPU's rate were it not throttled */
	double *pct;                 /* under lock: each vCPU's throttle, 0..THROTTLE_MAX_PCT */
	uint64_t *last_pages;        /* thread: vm_vcpu_dirty_pages() at the last period */
	struct timespec t_last;      /* thread: when */
	bool warned;                 /* thread: a harvest failed (said once) */
};

void throttle_share(const double *rate, unsigned int n, double budget, double *quota)
{
	double left = budget > 0 ? budget : 0;
	unsigned int todo = n;
	bool *done = calloc(n ? n : 1, sizeof(*done));

	if (!done) {
		/* Out of memory: an equal split of the budget is still a bound. */
		for (unsigned int i = 0; i < n; i++)
			quota[i] = rate[i] < left / n ? rate[i] : left / n;
		return;
	}
	/*
	 * Water-filling: the vCPUs under the fair share keep their rate, which
	 * leaves more for the others; repeat until every vCPU left is over it.
	 */
	for (bool again = true; again && todo;) {
		double fair = left / todo;

		again = false;
		for (unsigned int i = 0; i < n; i++) {
			if (done[i] || rate[i] > fair)
				continue;
			quota[i] = rate[i] > 0 ? rate[i] : 0;
			left -= quota[i];
			done[i] = true;
			todo--;
			again = true;
		}
	}
	for (unsigned int i = 0; i < n; i++)
		if (!done[i])
			quota[i] = left / todo;
	free(done);
}

/* Recompute every vCPU's throttle from the last period's dirty rates. */
static void throttle_update(struct throttle *t)
{
	struct vm *vm = t->vm;
	double ms = ms_since(&t->t_last), budget, vm_rate;
	double quota[t->n > 0 ? t->n : 1];

	if (ms < 1)
		return;
	clock_gettime(CLOCK_MONOTONIC, &t->t_last);
	pthread_mutex_lock(&t->lock);
	budget = t->budget;
	vm_rate = t->vm_rate;
	pthread_mutex_unlock(&t->lock);
	/*
	 * Only while throttling: a harvest re-protects the pages, so a page
	 * rewritten within a round then counts once per period, not once per
	 * round, and the rates read higher than the round's dirty rate.
	 */
	if (vm->dirty_ring && budget > 0) {
		int ret = vm_dirty_ring_harvest(vm);

		if (ret && !t->warned) {
			log_warnx("throttle: cannot harvest the dirty rings: %s", strerror(-ret));
			t->warned = true;
		}
	}
	for (unsigned int i = 0; i < t->n; i++) {
		double keep = 1.0 - t->pct[i] / 100.0, rate;

		if (vm->dirty_ring) {
			uint64_t pages = vm_vcpu_dirty_pages(vm, i);

			rate = (double)(pages - t->last_pages[i]) * 4096 / ms * 1e3;
			t->last_pages[i] = pages;
		} else {
			/* Whole-VM: what the VM would dirty running free, split evenly. */
			t->free_rate[i] = vm_rate / t->n;
			continue;
		}
		/* What it would dirty running free; a little memory of the past against noise. */
		t->free_rate[i] = 0.5 * t->free_rate[i] + 0.5 * (rate / keep);
	}
	if (budget > 0)
		throttle_share(t->free_rate, t->n, budget, quota);
	pthread_mutex_lock(&t->lock);
	for (unsigned int i = 0; i < t->n; i++) {
		double p = 0;

		if (budget > 0 && t->free_rate[i] > 0 && quota[i] < t->free_rate[i])
			p = 100.0 * (1.0 - quota[i] / t->free_rate[i]);
		t->pct[i] = p < 0 ? 0 : p > THROTTLE_MAX_PCT ? THROTTLE_MAX_PCT : p;
		__atomic_store_n(&vm->vcpus[i].throttle_us,
				 (uint32_t)(t->pct[i] * THROTTLE_SLICE_MS * 10), __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&t->lock);
}

/* The start of a slice: kick every throttled vCPU out of KVM_RUN to take its sleep. */
static void throttle_kick(struct throttle *t)
{
	struct vm *vm = t->vm;

	pthread_mutex_lock(&vm->lock);
	for (unsigned int i = 0; i < t->n; i++) {
		struct vcpu *v = &vm->vcpus[i];

		if (!v->thread_started || v->exited ||
		    !__atomic_load_n(&v->throttle_us, __ATOMIC_RELAXED))
			continue;
		__atomic_store_n(&v->throttle_due, 1, __ATOMIC_RELEASE);
		vcpu_kick_locked(v);
	}
	pthread_mutex_unlock(&vm->lock);
}

static void *throttle_thread(void *opaque)
{
	struct throttle *t = opaque;
	struct timespec next;
	unsigned int tick = 0;

	clock_gettime(CLOCK_MONOTONIC, &next);
	pthread_mutex_lock(&t->lock);
	while (!t->stop) {
		next.tv_nsec += THROTTLE_SLICE_MS * 1000000L;
		if (next.tv_nsec >= 1000000000L) {
			next.tv_nsec -= 1000000000L;
			next.tv_sec++;
		}
		while (!t->stop && pthread_cond_timedwait(&t->cond, &t->lock, &next) != ETIMEDOUT)
			;
		if (t->stop)
			break;
		pthread_mutex_unlock(&t->lock);
		if (++tick % (THROTTLE_PERIOD_MS / THROTTLE_SLICE_MS) == 0)
			throttle_update(t);
		throttle_kick(t);
		pthread_mutex_lock(&t->lock);
	}
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

int throttle_start(struct vm *vm, struct throttle **out)
{
	struct throttle *t = calloc(1, sizeof(*t));
	pthread_condattr_t ca;
	int ret;

	if (!t)
		return -ENOMEM;
	t->vm = vm;
	t->n = vm->cfg.ncpus;
	t->free_rate = calloc(t->n, sizeof(*t->free_rate));
	t->pct = calloc(t->n, sizeof(*t->pct));
	t->last_pages = calloc(t->n, sizeof(*t->last_pages));
	if (!t->free_rate || !t->pct || !t->last_pages) {
		ret = -ENOMEM;
		goto fail;
	}
	for (unsigned int i = 0; i < t->n; i++)
		t->last_pages[i] = vm_vcpu_dirty_pages(vm, i);
	clock_gettime(CLOCK_MONOTONIC, &t->t_last);
	pthread_mutex_init(&t->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&t->cond, &ca);
	pthread_condattr_destroy(&ca);
	ret = -pthread_create(&t->thread, NULL, throttle_thread, t);
	if (ret) {
		pthread_mutex_destroy(&t->lock);
		pthread_cond_destroy(&t->cond);
		goto fail;
	}
	pthread_setname_np(t->thread, "godwit-throttle");
	*out = t;
	return 0;
fail:
	free(t->free_rate);
	free(t->pct);
	free(t->last_pages);
	free(t);
	return ret;
}

void throttle_set_budget(struct throttle *t, double budget, double vm_rate)
{
	double pct = 0;

	if (!t)
		return;
	pthread_mutex_lock(&t->lock);
	/* vm_rate was measured under the throttle of late: what would it be running free? */
	for (unsigned int i = 0; i < t->n; i++)
		pct += t->pct[i] / t->n;
	t->budget = budget;
	t->vm_rate = vm_rate / (1.0 - pct / 100.0);
	pthread_mutex_unlock(&t->lock);
}

unsigned int throttle_get_pct(struct throttle *t, double *pct, unsigned int n)
{
	if (!t)
		return 0;
	n = n < t->n ? n : t->n;
	pthread_mutex_lock(&t->lock);
	memcpy(pct, t->pct, n * sizeof(*pct));
	pthread_mutex_unlock(&t->lock);
	return n;
}

void throttle_stop(struct throttle *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&t->lock);
	t->stop = true;
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	pthread_join(t->thread, NULL);
	for (unsigned int i = 0; i < t->n; i++) {
		struct vcpu *v = &t->vm->vcpus[i];

		__atomic_store_n(&v->throttle_us, 0, __ATOMIC_RELAXED);
		log_debug("throttle: vcpu%u slept %llu times, %.1f ms in all", i,
			 (unsigned long long)__atomic_load_n(&v->throttle_sleeps, __ATOMIC_RELAXED),
			 (double)__atomic_load_n(&v->throttle_slept_us, __ATOMIC_RELAXED) / 1e3);
	}
	pthread_mutex_destroy(&t->lock);
	pthread_cond_destroy(&t->cond);
	free(t->free_rate);
	free(t->pct);
	free(t->last_pages);
	free(t);
}
