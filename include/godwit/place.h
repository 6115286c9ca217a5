/*
 * place.h - where VMs go in a fleet: pure functions over arrays of hosts
 * and VMs (no etcd, no I/O), used by `godwit fleet create/migrate/drain/
 * rebalance` and unit-tested (tests/unit/test_place.c).
 *
 * A host's load is mem_used / mem_capacity.  mem_used and cpus_used are
 * computed from the VMs each host owns (place_usage), not taken from the
 * agents' records, so that a plan is consistent with itself.
 */
#ifndef GODWIT_PLACE_H
#define GODWIT_PLACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "godwit/fleet.h"

struct place_host {
	char name[FLEET_NAME_MAX];
	uint64_t mem_capacity, mem_used;         /* bytes */
	uint32_t cpu_capacity, cpus_used;
	bool alive;                              /* hosts/H exists (its lease holds) */
	bool cordoned;                           /* cordon/H exists */
};

struct place_vm {
	char name[FLEET_NAME_MAX];
	char host[FLEET_NAME_MAX];               /* its owner ("" if none) */
	uint64_t mem;
	uint32_t cpus;
};

/* One planned move: indexes into the VM and host arrays.  to < 0: it stays (why says so). */
struct place_move {
	size_t vm;
	int from, to;
	char why[160];
};

/* The index of the host named name, or -1. */
int place_host_find(const struct place_host *h, size_t nh, const char *name);

/*
 * place_usage - set every host's mem_used and cpus_used to the sum of the
 * VMs it owns (a VM whose host is not in h counts nowhere).
 */
void place_usage(struct place_host *h, size_t nh, const struct place_vm *v, size_t nv);

/* mem_used / mem_capacity (1.0 for a host without capacity). */
double place_load(const struct place_host *h);

/*
 * place_check - may a VM (vm names it in the message) of mem bytes and cpus
 * vCPUs go to host h?  0, or -1 with why set, e.g. "host b is cordoned",
 * "host b is not up", "host c has 256 MiB free, web1 needs 512 MiB".
 */
int place_check(const struct place_host *h, const char *vm, uint64_t mem, uint32_t cpus,
		char *why, size_t len);

/*
 * place_pick - the least loaded host (after taking the VM) that is alive,
 * not cordoned, not exclude (an index, or -1), with room for mem and cpus.
 * Ties go to the host with the most memory free, then to the first.
 * The index, or -1 with why set (the VM is named vm).
 */
int place_pick(const struct place_host *h, size_t nh, int exclude, const char *vm,
	       uint64_t mem, uint32_t cpus, char *why, size_t len);

/*
 * place_drain - plan where each of the n VMs in v (those to move off host
 * from, an index into h) goes: the biggest first, each to place_pick's
 * host, counting the moves already planned (h is updated: the caller
 * passes a copy if it needs the original).  moves[i] is v[i]'s move
 * (moves[i].vm == i), with to == -1 and why set for a VM that fits nowhere.
 */
void place_drain(struct place_host *h, size_t nh, int from, const struct place_vm *v, size_t n,
		 struct place_move *moves);

/*
 * The spread: the largest load minus the smallest among the hosts that
 * are alive and not cordoned (0 with fewer than two).
 */
double place_spread(const struct place_host *h, size_t nh);

/*
 * place_rebalance - greedy: up to max_moves times, take the most loaded
 * live uncordoned host, and of its VMs in v (those that may move: the
 * caller leaves out VMs that are not running) the one whose move to the
 * least loaded host with room for it gives the smallest spread; plan it
 * only if it strictly reduces the spread.  When no VM of that host helps
 * (it may hold only VMs this plan moved there), the next most loaded host
 * is tried, and so on; when none helps, stop.  A VM moves at most once.
 * h is updated with the planned moves.  Returns the number of moves
 * written to moves (at most max_moves).
 */
size_t place_rebalance(struct place_host *h, size_t nh, const struct place_vm *v, size_t nv,
		       size_t max_moves, struct place_move *moves);

#endif
