/*
 * guard.h - the host lease guard of a VM run by a fleet agent (docs/fleet.md,
 * rule 5): `godwit run --fleet-etcd URLS --fleet-lease ID`.  A thread of
 * the VM process keeps the host's etcd lease alive itself, so the host
 * stays alive in etcd while its VMs run even if the agent is dead, and
 * fences the VM (its vCPUs stop, whatever else holds or releases them)
 * whenever it cannot show that the lease is still valid:
 *
 *   - until the first keep-alive succeeded;
 *   - once 2/3 of the lease's TTL passed since the last keep-alive that
 *     etcd answered was sent (before etcd can expire the lease, so before
 *     another host may restart the VM under rule 6);
 *   - for good once etcd says the lease is gone: only a new lease
 *     (PUT /api/v1/vm/fleet-lease, from the agent that checked the VM's
 *     owner record) lifts that.
 *
 * A fence lifted by a keep-alive that succeeded again is safe: the lease
 * never expired, so no other host can have started the VM.
 */
#ifndef GODWIT_GUARD_H
#define GODWIT_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vm;
struct fleet_guard;

struct fleet_guard_info {
	int64_t lease;
	int ttl_s;               /* as etcd last gave it; 0 before the first answer */
	bool fenced;
	bool lease_gone;         /* etcd said the lease no longer exists */
	double since_ok_ms;      /* since the last keep-alive that etcd answered was sent; -1: never */
	char error[256];         /* the last failure, or "" */
};

/*
 * fleet_guard_start - fence vm now and start the guard thread (before the
 * sandbox: it opens its etcd client here).  0 or -errno with err set.
 */
int fleet_guard_start(struct vm *vm, const char *urls, int64_t lease, struct fleet_guard **out,
		      char *err, size_t len);
/* Stop the thread and free it (NULL: nothing). */
void fleet_guard_stop(struct fleet_guard *g);
/* Take a new lease (the agent granted it): checked by one keep-alive before it counts. */
int fleet_guard_set_lease(struct fleet_guard *g, int64_t lease, char *err, size_t len);
void fleet_guard_info(struct fleet_guard *g, struct fleet_guard_info *out);

/* Parse a lease ID (decimal, as etcd's JSON gives it; positive).  0 or -EINVAL. */
int fleet_lease_parse(const char *s, int64_t *out);

#endif
