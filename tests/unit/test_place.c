/*
 * test_place.c - the fleet's placement (place.h): usage computed from the
 * VMs, capacity respected, cordoned and dead hosts never chosen, a drain
 * to the least loaded host with room (counting the moves it planned), a VM
 * that fits nowhere reported, and a rebalance that reduces the spread,
 * respects its limit and never plans a move that does not help.
 */
#include "godwit/common.h"
#include "godwit/place.h"
#include "unit.h"

static struct place_host host(const char *name, uint64_t mem_mib, uint32_t cpus)
{
	struct place_host h = { .mem_capacity = mem_mib * MiB, .cpu_capacity = cpus,
				.alive = true };

	snprintf(h.name, sizeof(h.name), "%s", name);
	return h;
}

static struct place_vm vm(const char *name, const char *on, uint64_t mem_mib, uint32_t cpus)
{
	struct place_vm v = { .mem = mem_mib * MiB, .cpus = cpus };

	snprintf(v.name, sizeof(v.name), "%s", name);
	snprintf(v.host, sizeof(v.host), "%s", on);
	return v;
}

TEST(place_usage_from_vms)
{
	struct place_host h[2] = { host("a", 4096, 8), host("b", 4096, 8) };
	struct place_vm v[3] = { vm("w1", "a", 512, 1), vm("w2", "a", 256, 2),
				 vm("w3", "lost", 1024, 4) };

	h[0].mem_used = 12345;          /* what an agent said: ignored */
	place_usage(h, 2, v, 3);
	CHECK_EQ(h[0].mem_used, 768 * MiB);
	CHECK_EQ(h[0].cpus_used, 3);
	CHECK_EQ(h[1].mem_used, 0);
	CHECK_EQ(place_host_find(h, 2, "b"), 1);
	CHECK_EQ(place_host_find(h, 2, "lost"), -1);
}

TEST(place_check_messages)
{
	struct place_host c = host("c", 1024, 2);
	char why[160];

	c.mem_used = 768 * MiB;
	CHECK_EQ(place_check(&c, "web1", 256 * MiB, 1, why, sizeof(why)), 0);
	CHECK_EQ(place_check(&c, "web1", 512 * MiB, 1, why, sizeof(why)), -1);
	CHECK_STR(why, "host c has 256 MiB free, web1 needs 512 MiB");
	c.cpus_used = 2;
	CHECK_EQ(place_check(&c, "web1", 128 * MiB, 1, why, sizeof(why)), -1);
	CHECK_STR(why, "host c has 0 CPUs free, web1 needs 1");
	c.cordoned = true;
	CHECK_EQ(place_check(&c, "web1", 1, 0, why, sizeof(why)), -1);
	CHECK_STR(why, "host c is cordoned");
	c.alive = false;
	CHECK_EQ(place_check(&c, "web1", 1, 0, why, sizeof(why)), -1);
	CHECK(strstr(why, "host c is not up"));
	/* An agent's usage beyond its capacity (a record out of date) is no room, not a wrap. */
	c = host("c", 1024, 2);
	c.mem_used = 2048 * MiB;
	CHECK_EQ(place_check(&c, "web1", 1 * MiB, 1, why, sizeof(why)), -1);
	CHECK_STR(why, "host c has 0 MiB free, web1 needs 1 MiB");
}

TEST(place_pick_never_cordoned_or_dead)
{
	struct place_host h[4] = { host("a", 4096, 8), host("b", 8192, 8), host("c", 8192, 8),
				   host("d", 8192, 8) };
	char why[256];

	h[1].cordoned = true;
	h[2].alive = false;
	/* b, c, d are empty and bigger, but only d may take it. */
	h[0].mem_used = 2048 * MiB;
	CHECK_EQ(place_pick(h, 4, 0, "w", 512 * MiB, 1, why, sizeof(why)), 3);
	h[3].cordoned = true;
	CHECK_EQ(place_pick(h, 4, 0, "w", 512 * MiB, 1, why, sizeof(why)), -1);
	CHECK_STR(why, "no other host is up and uncordoned");
	/* Without exclusion, a is the only candidate. */
	CHECK_EQ(place_pick(h, 4, -1, "w", 512 * MiB, 1, why, sizeof(why)), 0);
	CHECK_EQ(place_pick(h, 4, -1, "w", 4096 * MiB, 1, why, sizeof(why)), -1);
	CHECK_STR(why, "host a has 2048 MiB free, w needs 4096 MiB");
}

TEST(place_pick_least_loaded_with_room)
{
	struct place_host h[4] = { host("a", 4096, 8), host("b", 4096, 8), host("c", 4096, 8),
				   host("d", 4096, 1) };
	char why[256];

	h[0].mem_used = 3072 * MiB;
	h[1].mem_used = 1024 * MiB;
	h[2].mem_used = 2048 * MiB;
	h[3].mem_used = 0;
	h[3].cpus_used = 1;               /* the least loaded, but no CPU left */
	CHECK_EQ(place_pick(h, 4, -1, "w", 512 * MiB, 1, why, sizeof(why)), 1);
	CHECK_EQ(place_pick(h, 4, 1, "w", 512 * MiB, 1, why, sizeof(why)), 2);
	/* Room counts: 3584 MiB fits only on b. */
	CHECK_EQ(place_pick(h, 4, -1, "w", 3072 * MiB, 1, why, sizeof(why)), 1);
	CHECK_EQ(place_pick(h, 4, 1, "w", 3072 * MiB, 1, why, sizeof(why)), -1);
	CHECK(strstr(why, "no host has room for w (3072 MiB, 1 CPU)"));
}

TEST(place_drain_counts_planned_moves)
{
	struct place_host h[3] = { host("a", 4096, 8), host("b", 2048, 8), host("c", 2048, 8) };
	struct place_vm all[5] = { vm("w1", "a", 1024, 1), vm("w2", "a", 1024, 1),
				   vm("w3", "a", 512, 1), vm("x", "b", 512, 1),
				   vm("big", "a", 1536, 1) };
	struct place_move m[4];
	/* The VMs to move: a's. */
	struct place_vm v[4] = { all[0], all[1], all[2], all[4] };

	place_usage(h, 3, all, 5);
	h[0].cordoned = true;
	place_drain(h, 3, 0, v, 4, m);
	/* big (1536) first: c is empty -> c (512 left); w1 (1024): b has 1536 free -> b;
	 * w2 (1024): b has 512, c has 512 -> nowhere; w3 (512): b and c have 512: the one
	 * with more free (equal: the first, b). */
	CHECK_EQ(m[3].to, 2);
	CHECK_EQ(m[0].to, 1);
	CHECK_EQ(m[1].to, -1);
	CHECK(strstr(m[1].why, "no host has room for w2 (1024 MiB, 1 CPU)"));
	CHECK_EQ(m[2].to, 1);
	for (int i = 0; i < 4; i++) {
		CHECK_EQ(m[i].vm, i);
		CHECK_EQ(m[i].from, 0);
	}
	/* Capacity respected, a's share left for what stays. */
	CHECK(h[1].mem_used <= h[1].mem_capacity);
	CHECK(h[2].mem_used <= h[2].mem_capacity);
	CHECK_EQ(h[0].mem_used, 1024 * MiB);
}

TEST(place_drain_nowhere)
{
	struct place_host h[2] = { host("a", 4096, 8), host("b", 4096, 8) };
	struct place_vm v[1] = { vm("w1", "a", 512, 1) };
	struct place_move m[1];

	place_usage(h, 2, v, 1);
	h[1].alive = false;
	place_drain(h, 2, 0, v, 1, m);
	CHECK_EQ(m[0].to, -1);
	CHECK_STR(m[0].why, "no other host is up and uncordoned");
	/* Nothing to move: nothing planned, nothing touched. */
	place_drain(h, 2, 0, v, 0, m);
	CHECK_EQ(h[0].mem_used, 512 * MiB);
}

TEST(place_rebalance_reduces_spread)
{
	struct place_host h[3] = { host("a", 4096, 16), host("b", 4096, 16), host("c", 4096, 16) };
	struct place_vm v[6] = { vm("w1", "a", 1024, 1), vm("w2", "a", 1024, 1),
				 vm("w3", "a", 512, 1), vm("w4", "a", 512, 1),
				 vm("w5", "b", 512, 1), vm("w6", "a", 256, 1) };
	struct place_move m[8];
	double before, after;
	size_t n;

	place_usage(h, 3, v, 6);
	before = place_spread(h, 3);
	n = place_rebalance(h, 3, v, 6, 8, m);
	after = place_spread(h, 3);
	CHECK(n >= 1);
	CHECK(after < before);
	/* Each move came from a and strictly helped; no VM moved twice. */
	for (size_t i = 0; i < n; i++) {
		CHECK_EQ(m[i].from, 0);
		CHECK(m[i].to == 1 || m[i].to == 2);
		for (size_t k = 0; k < i; k++)
			CHECK(m[k].vm != m[i].vm);
	}
	/* The first move: 1024 MiB to c (empty): from 0.8125 - 0 to 0.5625 - 0.125. */
	CHECK_EQ(m[0].vm, 0);
	CHECK_EQ(m[0].to, 2);
	for (int i = 0; i < 3; i++)
		CHECK(h[i].mem_used <= h[i].mem_capacity);
}

TEST(place_rebalance_max_moves)
{
	struct place_host h[2] = { host("a", 8192, 16), host("b", 8192, 16) };
	struct place_vm v[8];
	struct place_move m[8];
	size_t n;

	for (int i = 0; i < 8; i++) {
		char name[16];

		snprintf(name, sizeof(name), "w%d", i);
		v[i] = vm(name, "a", 512, 1);
	}
	place_usage(h, 2, v, 8);
	n = place_rebalance(h, 2, v, 8, 2, m);
	CHECK_EQ(n, 2);
	CHECK_EQ(h[1].mem_used, 1024 * MiB);
	/* With no limit it evens out (4 and 4) and stops there. */
	place_usage(h, 2, v, 8);
	n = place_rebalance(h, 2, v, 8, 8, m);
	CHECK_EQ(n, 4);
	CHECK_EQ(h[0].mem_used, h[1].mem_used);
	CHECK_EQ(place_rebalance(h, 2, v, 8, 0, m), 0);
}

TEST(place_rebalance_only_helpful_moves)
{
	struct place_host h[3] = { host("a", 4096, 16), host("b", 4096, 16), host("c", 4096, 16) };
	/* One big VM: moving it only moves the spread elsewhere. */
	struct place_vm v[1] = { vm("big", "a", 2048, 1) };
	struct place_vm even[3] = { vm("x", "a", 1024, 1), vm("y", "b", 1024, 1),
				    vm("z", "c", 1024, 1) };
	struct place_move m[4];

	place_usage(h, 3, v, 1);
	CHECK_EQ(place_rebalance(h, 3, v, 1, 4, m), 0);
	CHECK_EQ(h[0].mem_used, 2048 * MiB);
	place_usage(h, 3, even, 3);
	CHECK_EQ(place_rebalance(h, 3, even, 3, 4, m), 0);
	/* Cordoned and dead hosts neither give nor take. */
	struct place_vm skew[2] = { vm("p", "a", 1024, 1), vm("q", "a", 1024, 1) };

	place_usage(h, 3, skew, 2);
	h[1].cordoned = true;
	h[2].alive = false;
	CHECK_EQ(place_rebalance(h, 3, skew, 2, 4, m), 0);
	h[2].alive = true;
	CHECK_EQ(place_rebalance(h, 3, skew, 2, 4, m), 1);
	CHECK_EQ(m[0].to, 2);
	/* No room anywhere: nothing planned. */
	struct place_host t[2] = { host("a", 4096, 16), host("b", 512, 16) };
	struct place_vm big[2] = { vm("p", "a", 1024, 1), vm("q", "a", 1024, 1) };

	place_usage(t, 2, big, 2);
	CHECK_EQ(place_rebalance(t, 2, big, 2, 4, m), 0);
}

/* The most loaded host may hold only a VM the plan moved there: the next one gives. */
TEST(place_rebalance_next_host)
{
	struct place_host h[3] = { host("a", 4096, 16), host("b", 2048, 16), host("c", 1024, 16) };
	struct place_vm v[4] = { vm("r1", "a", 1024, 1), vm("r2", "a", 1024, 1),
				 vm("r3", "a", 512, 1), vm("r4", "a", 256, 1) };
	struct place_move m[4];

	place_usage(h, 3, v, 4);
	/* a 0.6875, b 0, c 0: r1 -> b (b 0.5); then b is the most loaded, with r1 only:
	 * from a, r3 -> c gives a 0.3125, b 0.5, c 0.5; nothing more helps. */
	CHECK_EQ(place_rebalance(h, 3, v, 4, 4, m), 2);
	CHECK_EQ(m[0].vm, 0);
	CHECK_EQ(m[0].to, 1);
	CHECK_EQ(m[1].vm, 2);
	CHECK_EQ(m[1].from, 0);
	CHECK_EQ(m[1].to, 2);
	CHECK(place_spread(h, 3) < 0.19 && place_spread(h, 3) > 0.18);
	place_usage(h, 3, v, 4);
	CHECK_EQ(place_rebalance(h, 3, v, 4, 1, m), 1);
}
