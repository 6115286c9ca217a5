/*
 * place.c - placement of VMs on a fleet's hosts (place.h): capacity checks,
 * the host a VM goes to, a drain's plan and a rebalance's plan.  Pure
 * functions over arrays: `godwit fleet` builds them from etcd's records.
 */
#include <stdio.h>
#include <string.h>

#include "godwit/common.h"
#include "godwit/place.h"

/* Plans compare loads that are sums of ratios: a move "helps" only beyond this. */
#define PLACE_EPSILON 1e-9

int place_host_find(const struct place_host *h, size_t nh, const char *name)
{
	for (size_t i = 0; i < nh; i++)
		if (!strcmp(h[i].name, name))
			return (int)i;
	return -1;
}

void place_usage(struct place_host *h, size_t nh, const struct place_vm *v, size_t nv)
{
	for (size_t i = 0; i < nh; i++) {
		h[i].mem_used = 0;
		h[i].cpus_used = 0;
	}
	for (size_t j = 0; j < nv; j++) {
		int i = place_host_find(h, nh, v[j].host);

		if (i < 0)
			continue;
		h[i].mem_used += v[j].mem;
		h[i].cpus_used += v[j].cpus;
	}
}

double place_load(const struct place_host *h)
{
	if (!h->mem_capacity)
		return 1.0;
	return (double)h->mem_used / (double)h->mem_capacity;
}

static bool place_usable(const struct place_host *h)
{
	return h->alive && !h->cordoned;
}

int place_check(const struct place_host *h, const char *vm, uint64_t mem, uint32_t cpus,
		char *why, size_t len)
{
	if (!h->alive) {
		snprintf(why, len, "host %s is not up (no hosts/%s record)", h->name, h->name);
		return -1;
	}
	if (h->cordoned) {
		snprintf(why, len, "host %s is cordoned", h->name);
		return -1;
	}
	if (h->mem_used > h->mem_capacity || h->mem_capacity - h->mem_used < mem) {
		uint64_t free_b = h->mem_used > h->mem_capacity ? 0 : h->mem_capacity - h->mem_used;

		snprintf(why, len, "host %s has %llu MiB free, %s needs %llu MiB", h->name,
			 (unsigned long long)(free_b / MiB), vm, (unsigned long long)(mem / MiB));
		return -1;
	}
	if (h->cpus_used > h->cpu_capacity || h->cpu_capacity - h->cpus_used < cpus) {
		uint32_t free_c = h->cpus_used > h->cpu_capacity ? 0 : h->cpu_capacity - h->cpus_used;

		snprintf(why, len, "host %s has %u CPU%s free, %s needs %u", h->name, free_c,
			 free_c == 1 ? "" : "s", vm, cpus);
		return -1;
	}
	return 0;
}

/* The load of h once it also holds mem bytes. */
static double place_load_with(const struct place_host *h, uint64_t mem)
{
	if (!h->mem_capacity)
		return 1.0;
	return (double)(h->mem_used + mem) / (double)h->mem_capacity;
}

int place_pick(const struct place_host *h, size_t nh, int exclude, const char *vm,
	       uint64_t mem, uint32_t cpus, char *why, size_t len)
{
	int best = -1, usable = 0;
	char last[160] = "";

	for (size_t i = 0; i < nh; i++) {
		if ((int)i == exclude || !place_usable(&h[i]))
			continue;
		usable++;
		if (place_check(&h[i], vm, mem, cpus, last, sizeof(last)))
			continue;
		if (best < 0) {
			best = (int)i;
			continue;
		}
		double lb = place_load_with(&h[best], mem), li = place_load_with(&h[i], mem);

		if (li < lb - PLACE_EPSILON ||
		    (li <= lb + PLACE_EPSILON &&
		     h[i].mem_capacity - h[i].mem_used > h[best].mem_capacity - h[best].mem_used))
			best = (int)i;
	}
	if (best < 0) {
		if (!usable)
			snprintf(why, len, "no other host is up and uncordoned");
		else if (usable == 1)
			snprintf(why, len, "%s", last);
		else
			snprintf(why, len, "no host has room for %s (%llu MiB, %u CPU%s): %d up "
				 "and uncordoned, the last one checked: %s", vm,
				 (unsigned long long)(mem / MiB), cpus, cpus == 1 ? "" : "s", usable,
				 last);
	}
	return best;
}

static void place_apply(struct place_host *h, int from, int to, const struct place_vm *v)
{
	if (from >= 0) {
		h[from].mem_used -= MIN(h[from].mem_used, v->mem);
		h[from].cpus_used -= MIN(h[from].cpus_used, v->cpus);
	}
	h[to].mem_used += v->mem;
	h[to].cpus_used += v->cpus;
}

void place_drain(struct place_host *h, size_t nh, int from, const struct place_vm *v, size_t n,
		 struct place_move *moves)
{
	bool done[n ? n : 1];

	for (size_t i = 0; i < n; i++) {
		done[i] = false;
		moves[i].vm = i;
		moves[i].from = from;
		moves[i].to = -1;
		moves[i].why[0] = '\0';
	}
	/* The biggest first (then by name, for a plan that does not depend on the order given). */
	for (size_t k = 0; k < n; k++) {
		size_t b = n;

		for (size_t i = 0; i < n; i++) {
			if (done[i])
				continue;
			if (b == n || v[i].mem > v[b].mem ||
			    (v[i].mem == v[b].mem && strcmp(v[i].name, v[b].name) < 0))
				b = i;
		}
		done[b] = true;
		moves[b].to = place_pick(h, nh, from, v[b].name, v[b].mem, v[b].cpus, moves[b].why,
					 sizeof(moves[b].why));
		if (moves[b].to >= 0)
			place_apply(h, from, moves[b].to, &v[b]);
	}
}

double place_spread(const struct place_host *h, size_t nh)
{
	double lo = 0, hi = 0;
	int n = 0;

	for (size_t i = 0; i < nh; i++) {
		if (!place_usable(&h[i]))
			continue;
		double l = place_load(&h[i]);

		if (!n++) {
			lo = hi = l;
			continue;
		}
		lo = l < lo ? l : lo;
		hi = l > hi ? l : hi;
	}
	return n < 2 ? 0 : hi - lo;
}

/*
 * The best move off host src: the VM (not moved yet) whose move to the least
 * loaded host with room for it leaves the smallest spread, if below spread.
 * Its index (*to set), or nv.
 */
static size_t place_best_from(struct place_host *h, size_t nh, const struct place_vm *v,
			      size_t nv, const bool *moved, int src, double spread, int *to)
{
	double best_spread = spread;
	size_t best = nv;

	for (size_t j = 0; j < nv; j++) {
		struct place_host s, t;
		char why[160];
		double after;
		int k;

		if (moved[j] || strcmp(v[j].host, h[src].name))
			continue;
		k = place_pick(h, nh, src, v[j].name, v[j].mem, v[j].cpus, why, sizeof(why));
		if (k < 0)
			continue;
		/* Try it, measure, undo. */
		s = h[src];
		t = h[k];
		place_apply(h, src, k, &v[j]);
		after = place_spread(h, nh);
		h[src] = s;
		h[k] = t;
		if (after < best_spread - PLACE_EPSILON) {
			best_spread = after;
			best = j;
			*to = k;
		}
	}
	return best;
}

size_t place_rebalance(struct place_host *h, size_t nh, const struct place_vm *v, size_t nv,
		       size_t max_moves, struct place_move *moves)
{
	bool moved[nv ? nv : 1], tried[nh ? nh : 1];
	size_t nm = 0;

	memset(moved, 0, sizeof(moved));
	while (nm < max_moves) {
		double spread = place_spread(h, nh);
		size_t best = nv;
		int src = -1, to = -1;

		/*
		 * The most loaded host first; if none of its VMs helps (it may hold
		 * only VMs this plan moved there), the next most loaded, and so on.
		 */
		memset(tried, 0, sizeof(tried));
		for (;;) {
			src = -1;
			for (size_t i = 0; i < nh; i++)
				if (place_usable(&h[i]) && !tried[i] &&
				    (src < 0 || place_load(&h[i]) > place_load(&h[src]) + PLACE_EPSILON))
					src = (int)i;
			if (src < 0)
				break;
			tried[src] = true;
			best = place_best_from(h, nh, v, nv, moved, src, spread, &to);
			if (best < nv)
				break;
		}
		if (best == nv)
			break;
		place_apply(h, src, to, &v[best]);
		moved[best] = true;
		moves[nm].vm = best;
		moves[nm].from = src;
		moves[nm].to = to;
		snprintf(moves[nm].why, sizeof(moves[nm].why), "spread %.3f -> %.3f", spread,
			 place_spread(h, nh));
		nm++;
	}
	return nm;
}
