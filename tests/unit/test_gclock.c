/*
 * test_gclock.c - guest/gclock.h, the step of the test guest's monotonic
 * clock (guest/lib.h gclock()): fed a fake raw TSC sequence that jumps
 * backwards (a snapshot restored on a host with less uptime, under PVM,
 * where the guest reads the host's TSC), the clock never goes back, stands
 * still across the jump, then advances at the raw rate; the offset is the
 * sum of the backward jumps; forward jumps are kept; CPUs' states are
 * independent.
 */
#include <stdint.h>

#include "unit.h"
#include "../../guest/gclock.h"

TEST(gclock_forward_is_raw)
{
	struct gclock_state s = { 0 };

	CHECK_EQ(gclock_step(&s, 1000), 1000);
	CHECK_EQ(gclock_step(&s, 1000), 1000);
	CHECK_EQ(gclock_step(&s, 5000), 5000);
	/* A forward jump (restore on a host that is ahead) looks like a pause. */
	CHECK_EQ(gclock_step(&s, 5000000), 5000000);
	CHECK_EQ(s.offset, 0);
}

TEST(gclock_backward_jump_stands_still)
{
	struct gclock_state s = { 0 };
	/* Host TSC around 10^12 before the snapshot, 3*10^9 after the restore. */
	const uint64_t raw[] = { 1000000000000ULL, 1000000000500ULL, 1000000001000ULL,
				 3000000000ULL, 3000000100ULL, 3000000250ULL };
	uint64_t prev = 0, v[6];

	for (unsigned int i = 0; i < 6; i++) {
		v[i] = gclock_step(&s, raw[i]);
		CHECK(v[i] >= prev);
		prev = v[i];
	}
	CHECK_EQ(v[2], 1000000001000ULL);
	CHECK_EQ(v[3], v[2]);				/* no time across the jump */
	CHECK_EQ(v[4] - v[3], 100);			/* then the raw rate */
	CHECK_EQ(v[5] - v[4], 150);
	CHECK_EQ(s.offset, 1000000001000ULL - 3000000000ULL);
	CHECK_EQ(s.last_raw, 3000000250ULL);
	/* A signed deadline set before the jump is 1 s (10^9 ticks) away, not
	 * ~1000 s as with the raw TSC. */
	CHECK((int64_t)(v[3] + 1000000000ULL - v[5]) <= 1000000000LL);
	CHECK((int64_t)(gclock_step(&s, 3000000250ULL + 1000000000ULL) -
			(v[3] + 1000000000ULL)) >= 0);
}

TEST(gclock_repeated_jumps_accumulate)
{
	struct gclock_state s = { 0 };
	uint64_t a, b, c;

	gclock_step(&s, 900);
	a = gclock_step(&s, 1000);
	b = gclock_step(&s, 400);		/* back 600 */
	CHECK_EQ(b, a);
	gclock_step(&s, 700);
	c = gclock_step(&s, 100);		/* back 600 again */
	CHECK_EQ(c, 1300);
	CHECK_EQ(s.offset, 1200);
	CHECK_EQ(gclock_step(&s, 150), 1350);
	/* Many small steps back (unsynchronised readings): never backwards. */
	{
		uint64_t prev = gclock_step(&s, 10000), raw = 10000;

		for (unsigned int i = 0; i < 1000; i++) {
			uint64_t v;

			raw = (i % 3 == 2) ? raw - 7 : raw + 5;
			v = gclock_step(&s, raw);
			CHECK(v >= prev);
			prev = v;
		}
	}
}

TEST(gclock_cpus_independent)
{
	struct gclock_state cpu[2] = { { 0 }, { 0 } };

	gclock_step(&cpu[0], 5000);
	gclock_step(&cpu[1], 4000);
	CHECK_EQ(gclock_step(&cpu[0], 100), 5000);
	CHECK_EQ(gclock_step(&cpu[1], 100), 4000);
	CHECK_EQ(cpu[0].offset, 4900);
	CHECK_EQ(cpu[1].offset, 3900);
	CHECK_EQ(sizeof(struct gclock_state), 64);	/* one cache line each */
}
