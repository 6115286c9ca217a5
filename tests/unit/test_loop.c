/*
 * test_loop.c - the event loop: timer order and cancellation, fd callbacks,
 * deleting fds and timers from callbacks, the before-sleep hook and
 * loop_wake() from another thread.  Each test arms a watchdog timer so that
 * a broken loop fails the test instead of hanging it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>

#include "godwit/loop.h"
#include "unit.h"

#define WATCHDOG_MS 5000

static bool watchdog_fired;

static void watchdog(struct loop *l, void *opaque)
{
	watchdog_fired = true;
	loop_stop(l);
}

static struct loop *loop_with_watchdog(void)
{
	struct loop *l = loop_new();

	watchdog_fired = false;
	if (l)
		CHECK(loop_add_timer(l, WATCHDOG_MS, watchdog, NULL) > 0);
	return l;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- timers ---- */

static int order[16], norder;

static void record(struct loop *l, void *opaque)
{
	if (norder < (int)ARRAY_SIZE(order))
		order[norder++] = (int)(intptr_t)opaque;
}

static void record_and_stop(struct loop *l, void *opaque)
{
	record(l, opaque);
	loop_stop(l);
}

TEST(loop_timers_fire_in_order)
{
	struct loop *l = loop_with_watchdog();
	double t0;
	long del;

	CHECK(l);
	if (!l)
		return;
	norder = 0;
	CHECK(loop_add_timer(l, 30, record_and_stop, (void *)5) > 0);
	CHECK(loop_add_timer(l, 10, record, (void *)2) > 0);
	CHECK(loop_add_timer(l, 20, record, (void *)4) > 0);
	CHECK(loop_add_timer(l, 0, record, (void *)1) > 0);
	/* Same delay as #2, added later: fires after it. */
	CHECK(loop_add_timer(l, 10, record, (void *)3) > 0);
	del = loop_add_timer(l, 15, record, (void *)99);
	CHECK(del > 0);
	loop_del_timer(l, del);
	loop_del_timer(l, 12345);        /* unknown id: ignored */

	t0 = now_ms();
	CHECK_EQ(loop_run(l), 0);
	CHECK(now_ms() - t0 >= 29.0);
	CHECK(!watchdog_fired);
	CHECK_EQ(norder, 5);
	for (int i = 0; i < norder && i < 5; i++)
		CHECK_EQ(order[i], i + 1);
	loop_free(l);
}

static long victim_id;

static void delete_victim(struct loop *l, void *opaque)
{
	long *self = opaque;

	record(l, (void *)1);
	loop_del_timer(l, victim_id);
	loop_del_timer(l, *self);       /* already fired: a no-op */
}

TEST(loop_timer_deleted_by_callback)
{
	struct loop *l = loop_with_watchdog();
	long self;

	CHECK(l);
	if (!l)
		return;
	norder = 0;
	self = loop_add_timer(l, 5, delete_victim, &self);
	victim_id = loop_add_timer(l, 10, record, (void *)99);
	CHECK(self > 0 && victim_id > 0);
	CHECK(loop_add_timer(l, 25, record_and_stop, (void *)2) > 0);
	CHECK_EQ(loop_run(l), 0);
	CHECK(!watchdog_fired);
	CHECK_EQ(norder, 2);
	CHECK_EQ(order[0], 1);
	CHECK_EQ(order[1], 2);
	loop_free(l);
}

/* A timer that re-arms itself with 0 ms must not starve fd events. */
static int rearms, rearms_when_fd_ran = -1;

static void rearm(struct loop *l, void *opaque)
{
	int *efd = opaque;

	/* The fd becomes readable only now, mid-way through the timers. */
	if (++rearms == 1)
		CHECK_EQ(write(*efd, &(uint64_t){ 1 }, 8), 8);
	if (rearms < 1000)
		CHECK(loop_add_timer(l, 0, rearm, efd) > 0);
}

static void fd_stops(struct loop *l, int fd, uint32_t events, void *opaque)
{
	uint64_t v;

	CHECK_EQ(read(fd, &v, sizeof(v)), sizeof(v));
	rearms_when_fd_ran = rearms;
	loop_del_fd(l, fd);
	loop_stop(l);
}

TEST(loop_timer_rearm_does_not_starve_fds)
{
	struct loop *l = loop_with_watchdog();
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

	CHECK(l && efd >= 0);
	if (!l || efd < 0)
		return;
	rearms = 0;
	rearms_when_fd_ran = -1;
	CHECK(loop_add_timer(l, 0, rearm, &efd) > 0);
	CHECK_EQ(loop_add_fd(l, efd, EPOLLIN, fd_stops, NULL), 0);
	CHECK_EQ(loop_run(l), 0);
	/* One timer per pass: the fd runs in the pass after the write. */
	CHECK_EQ(rearms_when_fd_ran, 1);
	CHECK(rearms < 10);
	close(efd);
	loop_free(l);
}

/* ---- fds ---- */

struct fd_rec {
	int calls;
	uint32_t events;
	char byte;
};

static void fd_read_and_stop(struct loop *l, int fd, uint32_t events, void *opaque)
{
	struct fd_rec *r = opaque;

	r->calls++;
	r->events = events;
	CHECK_EQ(read(fd, &r->byte, 1), 1);
	loop_stop(l);
}

TEST(loop_fd_callback)
{
	struct loop *l = loop_with_watchdog();
	struct fd_rec r = { 0 };
	int p[2];

	CHECK(l);
	CHECK_EQ(pipe(p), 0);
	if (!l)
		return;
	CHECK_EQ(loop_add_fd(l, p[0], EPOLLIN, fd_read_and_stop, &r), 0);
	CHECK_EQ(loop_add_fd(l, p[0], EPOLLIN, fd_read_and_stop, &r), -EEXIST);
	CHECK_EQ(loop_add_fd(l, -1, EPOLLIN, fd_read_and_stop, &r), -EINVAL);
	CHECK_EQ(loop_mod_fd(l, p[1], EPOLLOUT), -ENOENT);
	CHECK_EQ(write(p[1], "x", 1), 1);
	CHECK_EQ(loop_run(l), 0);
	CHECK(!watchdog_fired);
	CHECK_EQ(r.calls, 1);
	CHECK(r.events & EPOLLIN);
	CHECK_EQ(r.byte, 'x');

	/* Interest removed with loop_mod_fd(): no call until it is restored. */
	r.calls = 0;
	CHECK_EQ(write(p[1], "y", 1), 1);
	CHECK_EQ(loop_mod_fd(l, p[0], 0), 0);
	CHECK(loop_add_timer(l, 20, record_and_stop, NULL) > 0);
	CHECK_EQ(loop_run(l), 0);           /* loop_run() again after loop_stop() */
	CHECK_EQ(r.calls, 0);
	CHECK_EQ(loop_mod_fd(l, p[0], EPOLLIN), 0);
	CHECK_EQ(loop_run(l), 0);
	CHECK_EQ(r.calls, 1);
	CHECK_EQ(r.byte, 'y');

	loop_del_fd(l, p[0]);
	loop_del_fd(l, p[0]);               /* twice: ignored */
	close(p[0]);
	close(p[1]);
	loop_free(l);
}

/*
 * Two readable pipes, so both events come in one epoll_wait() batch.
 * Whichever callback runs first deletes itself and the other fd, closes
 * the other pipe and registers a new (empty) pipe that likely reuses its
 * fd numbers: the other's pending event must not reach anybody.
 */
static int pipe_a[2], pipe_b[2], pipe_c[2];
static int calls_a, calls_b, calls_c;

static void cb_c(struct loop *l, int fd, uint32_t events, void *opaque)
{
	calls_c++;
}

static void cb_first(struct loop *l, int fd, uint32_t events, void *opaque)
{
	int *mine = opaque == &calls_a ? pipe_a : pipe_b;
	int *other = opaque == &calls_a ? pipe_b : pipe_a;

	(*(int *)opaque)++;
	loop_del_fd(l, mine[0]);
	loop_del_fd(l, other[0]);
	close(other[0]);
	close(other[1]);
	CHECK_EQ(pipe(pipe_c), 0);
	CHECK_EQ(loop_add_fd(l, pipe_c[0], EPOLLIN, cb_c, NULL), 0);
	loop_stop(l);
}

TEST(loop_fd_deleted_during_dispatch)
{
	struct loop *l = loop_with_watchdog();
	int *left;

	CHECK(l);
	if (!l)
		return;
	calls_a = calls_b = calls_c = 0;
	CHECK_EQ(pipe(pipe_a), 0);
	CHECK_EQ(pipe(pipe_b), 0);
	CHECK_EQ(write(pipe_a[1], "a", 1), 1);
	CHECK_EQ(write(pipe_b[1], "b", 1), 1);
	CHECK_EQ(loop_add_fd(l, pipe_a[0], EPOLLIN, cb_first, &calls_a), 0);
	CHECK_EQ(loop_add_fd(l, pipe_b[0], EPOLLIN, cb_first, &calls_b), 0);
	CHECK_EQ(loop_run(l), 0);
	CHECK_EQ(calls_a + calls_b, 1);
	CHECK_EQ(calls_c, 0);

	/* The deleted fd stays silent on the next passes too. */
	CHECK(loop_add_timer(l, 20, record_and_stop, NULL) > 0);
	CHECK_EQ(loop_run(l), 0);
	CHECK_EQ(calls_a + calls_b, 1);
	CHECK_EQ(calls_c, 0);

	left = calls_a ? pipe_a : pipe_b;
	loop_del_fd(l, pipe_c[0]);
	close(left[0]);
	close(left[1]);
	close(pipe_c[0]);
	close(pipe_c[1]);
	loop_free(l);
}

/* ---- hook and wake ---- */

static atomic_bool wake_flag;
static int hook_calls;

static int hook_stop_on_flag(struct loop *l, void *opaque)
{
	hook_calls++;
	if (atomic_load(&wake_flag))
		loop_stop(l);
	return -1;                      /* no limit: only loop_wake() helps */
}

static void *waker(void *opaque)
{
	usleep(30 * 1000);
	atomic_store(&wake_flag, true);
	loop_wake(opaque);
	return NULL;
}

TEST(loop_wake_from_another_thread)
{
	struct loop *l = loop_with_watchdog();
	pthread_t t;
	double t0;

	CHECK(l);
	if (!l)
		return;
	hook_calls = 0;
	atomic_store(&wake_flag, false);
	loop_set_hook(l, hook_stop_on_flag, NULL);
	CHECK_EQ(pthread_create(&t, NULL, waker, l), 0);
	t0 = now_ms();
	CHECK_EQ(loop_run(l), 0);
	pthread_join(t, NULL);
	CHECK(!watchdog_fired);
	CHECK(now_ms() - t0 < 2000);
	CHECK(hook_calls >= 2);
	loop_free(l);
}

static int hook_short_sleeps(struct loop *l, void *opaque)
{
	if (++hook_calls == 5)
		loop_stop(l);
	return 5;
}

TEST(loop_hook_shortens_sleep)
{
	struct loop *l = loop_with_watchdog();
	double t0;

	CHECK(l);
	if (!l)
		return;
	hook_calls = 0;
	loop_set_hook(l, hook_short_sleeps, NULL);
	t0 = now_ms();
	CHECK_EQ(loop_run(l), 0);
	CHECK(!watchdog_fired);
	CHECK_EQ(hook_calls, 5);
	CHECK(now_ms() - t0 >= 15.0);   /* four sleeps of 5 ms before the stop */
	CHECK(now_ms() - t0 < 1000.0);
	loop_free(l);
}
