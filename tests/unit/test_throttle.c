/*
 * test_throttle.c - throttle_share(), the budget's share-out among the
 * vCPUs (throttle.h): vCPUs under the fair share keep their rate, the rest
 * is split equally among the others, the quotas never exceed a vCPU's rate
 * and add up to the budget whenever the vCPUs together want more.
 */
#include <math.h>

#include "unit.h"
#include "godwit/throttle.h"

static double sum(const double *v, unsigned int n)
{
	double s = 0;

	for (unsigned int i = 0; i < n; i++)
		s += v[i];
	return s;
}

TEST(throttle_share_only_the_writer)
{
	/* vCPU 0 writes 400 MB/s, vCPU 1 1 MB/s; 100 MB/s for both. */
	double rate[2] = { 400e6, 1e6 }, q[2];

	throttle_share(rate, 2, 100e6, q);
	CHECK(fabs(q[1] - 1e6) < 1);
	CHECK(fabs(q[0] - 99e6) < 1);
}

TEST(throttle_share_water_fills)
{
	/* Fair share 25: the 5 and the 10 keep theirs, 85 left for the other two. */
	double rate[4] = { 5, 300, 10, 200 }, q[4];

	throttle_share(rate, 4, 100, q);
	CHECK(fabs(q[0] - 5) < 1e-9);
	CHECK(fabs(q[2] - 10) < 1e-9);
	CHECK(fabs(q[1] - 42.5) < 1e-9);
	CHECK(fabs(q[3] - 42.5) < 1e-9);
	CHECK(fabs(sum(q, 4) - 100) < 1e-9);
}

TEST(throttle_share_budget_above_need)
{
	/* Everyone under the budget: nobody is throttled. */
	double rate[3] = { 10, 20, 30 }, q[3];

	throttle_share(rate, 3, 1000, q);
	for (unsigned int i = 0; i < 3; i++)
		CHECK(fabs(q[i] - rate[i]) < 1e-9);
}

TEST(throttle_share_equal_writers)
{
	double rate[3] = { 90, 90, 90 }, q[3];

	throttle_share(rate, 3, 30, q);
	for (unsigned int i = 0; i < 3; i++)
		CHECK(fabs(q[i] - 10) < 1e-9);
}

TEST(throttle_share_zero_and_negative)
{
	/* No budget: every writer's quota is 0; idle vCPUs stay at 0. */
	double rate[3] = { 0, 50, 0 }, q[3];

	throttle_share(rate, 3, 0, q);
	CHECK(q[0] == 0 && q[1] == 0 && q[2] == 0);
	throttle_share(rate, 3, -5, q);
	CHECK(q[1] == 0);
	throttle_share(rate, 0, 10, q);   /* no vCPU: nothing written, no crash */
}
