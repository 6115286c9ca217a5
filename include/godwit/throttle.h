/*
 * throttle.h - slowing down the vCPUs that dirty memory faster than a
 * migration can carry it (docs/migration.md, "Throttling").
 *
 * The migration sets a budget: the bytes per second all vCPUs together may
 * dirty.  A thread of the throttle's own then runs every vCPU in 10 ms
 * slices: a throttled vCPU is kicked out of KVM_RUN at the start of each
 * slice and sleeps for its share of it (vcpu_throttle_point()), so the
 * guest never stops for longer than one slice.  Every 100 ms it measures
 * what each vCPU dirtied (KVM's dirty ring) and shares the budget out: a
 * vCPU that writes less than its fair share runs free, the others get the
 * rest in equal parts and sleep as long as that takes.  Without the dirty
 * ring there is nothing to tell the vCPUs apart: every vCPU gets the same
 * share of the VM's dirty rate (whole-VM throttling, the fallback).
 */
#ifndef GODWIT_THROTTLE_H
#define GODWIT_THROTTLE_H

#include "godwit/common.h"

struct vm;
struct throttle;

#define THROTTLE_SLICE_MS   10     /* the longest a throttled vCPU sleeps at once */
#define THROTTLE_PERIOD_MS  100    /* how often the shares are recomputed */
#define THROTTLE_MAX_PCT    99     /* a throttled vCPU still runs 1 % of each slice */

/* Start the throttle's thread (nothing throttled yet).  0 and *out, or -errno. */
int throttle_start(struct vm *vm, struct throttle **out) __must_check;
/*
 * The budget: bytes per second all vCPUs together may dirty (0: none is
 * throttled).  vm_rate: without the dirty ring, the VM's dirty rate as the
 * migration measured it over its last round (ignored with the ring).
 */
void throttle_set_budget(struct throttle *t, double budget, double vm_rate);
/* Each vCPU's throttle (percent of its time asleep), for the report; n entries at most. */
unsigned int throttle_get_pct(struct throttle *t, double *pct, unsigned int n);
/* Stop throttling (every vCPU runs free again), end the thread, free t.  NULL is fine. */
void throttle_stop(struct throttle *t);

/*
 * The share-out (pure: throttle.c's thread and the unit tests): for n vCPUs
 * dirtying rate[i] bytes per second when not throttled, the quota each gets
 * out of budget (a vCPU under its fair share keeps its rate; the rest is
 * split equally among the others).  quota[i] <= rate[i].
 */
void throttle_share(const double *rate, unsigned int n, double budget, double *quota);

#endif
