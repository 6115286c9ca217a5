/*
 * gclock.h - the step of the test guest's monotonic clock, in plain C so
 * that the unit test (tests/unit/test_gclock.c) runs the very code the
 * guest does.  guest/lib.h's gclock() feeds it this CPU's rdtsc().
 *
 * Why: under PVM (this project's /dev/kvm) writes to the guest's TSC are
 * ignored and the guest reads the host's TSC.  A snapshot restored on a
 * host that has been up for less time than the one that took it makes the
 * raw TSC jump backwards; the guest's unsigned differences and signed
 * deadline comparisons would then see nothing due until the host caught up.
 *
 * The clock: per CPU {last_raw, offset}.  When a raw reading is below the
 * previous one, offset grows by the difference, so the clock stands still
 * across the jump (as if the restore had taken no time: the real downtime
 * cannot be known from inside) and then goes on at the TSC's rate.  A jump
 * forwards is kept as it is (it looks like a pause).  Each CPU has its own
 * offset, so two CPUs' clocks may differ by what each saw before the jump;
 * the guest compares times only on the CPU that read them (reports come
 * from one CPU).  The state must start zeroed (.bss), giving raw time
 * (offset 0) until the first backwards step.
 *
 * Plain C on <stdint.h> only: builds freestanding and hosted.
 */
#ifndef GODWIT_GUEST_GCLOCK_H
#define GODWIT_GUEST_GCLOCK_H

#include <stdint.h>

struct gclock_state {
	uint64_t last_raw;	/* the previous raw reading on this CPU */
	uint64_t offset;	/* added to raw: the sum of the backward jumps */
} __attribute__((aligned(64)));	/* one cache line per CPU */

/*
 * gclock_step - the clock's value for a new raw reading @raw on the CPU
 * whose state is @s: raw + offset, never below the value returned before
 * (a backwards step of raw adds its size to the offset first).
 */
static inline uint64_t gclock_step(struct gclock_state *s, uint64_t raw)
{
	if (raw < s->last_raw)
		s->offset += s->last_raw - raw;
	s->last_raw = raw;
	return raw + s->offset;
}

#endif
