/*
 * loop.c - the event loop: one thread, one epoll instance.  Owns the fd
 * table, the one-shot timers (a list sorted by deadline on CLOCK_MONOTONIC),
 * the before-sleep hook and the eventfd behind loop_wake().
 *
 * One pass of loop_run(): run the hook, sleep in epoll_wait() until the
 * first timer, the hook's limit or an event, dispatch the fd events, then
 * the timers that are due.  Callbacks may add or delete any fd or timer,
 * their own included:
 *  - an epoll event carries the fd and a generation number, and dispatch
 *    looks the fd up again before each callback, so an event for an fd
 *    deleted earlier in the same batch (even if its number was reused by a
 *    new registration) is dropped;
 *  - a timer is unlinked before its callback runs, so deleting it there is
 *    a no-op, and a timer added by a timer callback waits for the next pass
 *    (a timer re-arming itself with 0 ms cannot starve the fds).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include "godwit/log.h"
#include "godwit/loop.h"

#define LOOP_MAX_EVENTS 64

struct loop_fd {
	loop_fd_fn fn;           /* NULL: slot free */
	void *opaque;
	uint32_t events;
	uint32_t gen;            /* bumped on each registration of this fd */
};

struct loop_timer {
	struct loop_timer *next;
	long id;
	uint64_t when;           /* CLOCK_MONOTONIC, ns */
	loop_timer_fn fn;
	void *opaque;
};

struct loop {
	int epfd;
	int wakefd;
	struct loop_fd *fds;     /* indexed by fd */
	int nfds;                /* size of fds[] */
	uint32_t gen;
	struct loop_timer *timers;   /* sorted by when, then by id */
	long next_timer_id;
	loop_hook_fn hook;
	void *hook_opaque;
	atomic_bool stop;
};

static uint64_t loop_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void loop_wake_drain(struct loop *l, int fd, uint32_t events, void *opaque)
{
	uint64_t v;

	/* Non-blocking: EAGAIN just means another pass already drained it. */
	if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN && errno != EINTR)
		log_warn("%s: read eventfd", __func__);
}

/*
 * loop_new - create an event loop.
 * Returns the loop, or NULL with errno set (a message is logged).
 */
struct loop *loop_new(void)
{
	struct loop *l;
	int err;

	l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->next_timer_id = 1;
	l->wakefd = -1;

	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (l->epfd < 0) {
		err = errno;
		log_warn("%s: epoll_create1", __func__);
		goto err_free;
	}
	l->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->wakefd < 0) {
		err = errno;
		log_warn("%s: eventfd", __func__);
		goto err_epoll;
	}
	err = -loop_add_fd(l, l->wakefd, EPOLLIN, loop_wake_drain, NULL);
	if (err)
		goto err_wake;
	return l;

err_wake:
	close(l->wakefd);
err_epoll:
	close(l->epfd);
err_free:
	free(l->fds);
	free(l);
	errno = err;
	return NULL;
}

/*
 * loop_free - destroy a loop that is not running.  Pending timers are
 * dropped; registered fds are not closed (their owners close them).
 */
void loop_free(struct loop *l)
{
	struct loop_timer *t, *next;

	if (!l)
		return;
	for (t = l->timers; t; t = next) {
		next = t->next;
		free(t);
	}
	close(l->wakefd);
	close(l->epfd);
	free(l->fds);
	free(l);
}

static int loop_grow(struct loop *l, int fd)
{
	struct loop_fd *n;
	int size = l->nfds ? l->nfds : 64;

	while (size <= fd)
		size *= 2;
	n = realloc(l->fds, (size_t)size * sizeof(*n));
	if (!n)
		return -ENOMEM;
	memset(n + l->nfds, 0, (size_t)(size - l->nfds) * sizeof(*n));
	l->fds = n;
	l->nfds = size;
	return 0;
}

static struct loop_fd *loop_lookup(struct loop *l, int fd)
{
	if (fd < 0 || fd >= l->nfds || !l->fds[fd].fn)
		return NULL;
	return &l->fds[fd];
}

/*
 * loop_add_fd - call fn(l, fd, revents, opaque) when fd has any of events
 * (EPOLLIN, EPOLLOUT, ...; level-triggered unless EPOLLET is given).
 * EPOLLERR and EPOLLHUP are always reported.
 * Returns 0, -EEXIST if fd is already registered, -EINVAL, -ENOMEM or the
 * epoll_ctl() error.
 */
int loop_add_fd(struct loop *l, int fd, uint32_t events, loop_fd_fn fn, void *opaque)
{
	struct epoll_event ev = { 0 };
	struct loop_fd *e;
	int ret;

	if (fd < 0 || !fn)
		return -EINVAL;
	if (loop_lookup(l, fd))
		return -EEXIST;
	if (fd >= l->nfds) {
		ret = loop_grow(l, fd);
		if (ret)
			return ret;
	}
	e = &l->fds[fd];
	ev.events = events;
	ev.data.u64 = (uint64_t)++l->gen << 32 | (uint32_t)fd;
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	e->fn = fn;
	e->opaque = opaque;
	e->events = events;
	e->gen = l->gen;
	return 0;
}

/*
 * loop_mod_fd - change the events watched on a registered fd.
 * Returns 0, -ENOENT if fd is not registered, or the epoll_ctl() error.
 */
int loop_mod_fd(struct loop *l, int fd, uint32_t events)
{
	struct loop_fd *e = loop_lookup(l, fd);
	struct epoll_event ev = { 0 };

	if (!e)
		return -ENOENT;
	ev.events = events;
	ev.data.u64 = (uint64_t)e->gen << 32 | (uint32_t)fd;
	if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) < 0)
		return -errno;
	e->events = events;
	return 0;
}

/*
 * loop_del_fd - stop watching fd; pending events for it are dropped.  Call
 * it before closing fd.  Unknown fds are ignored.
 */
void loop_del_fd(struct loop *l, int fd)
{
	struct loop_fd *e = loop_lookup(l, fd);

	if (!e)
		return;
	/* EBADF/ENOENT: the owner closed it first; the kernel dropped it. */
	if (epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL) < 0 &&
	    errno != EBADF && errno != ENOENT)
		log_warn("%s: epoll_ctl(DEL, %d)", __func__, fd);
	memset(e, 0, sizeof(*e));
}

/*
 * loop_add_timer - call fn(l, opaque) once, ms milliseconds from now.
 * Timers with the same deadline fire in the order they were added.
 * Returns an id > 0 for loop_del_timer(), or -ENOMEM.
 */
long loop_add_timer(struct loop *l, unsigned int ms, loop_timer_fn fn, void *opaque)
{
	struct loop_timer *t, **pp;

	if (!fn)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->id = l->next_timer_id++;
	t->when = loop_now() + (uint64_t)ms * 1000000ULL;
	t->fn = fn;
	t->opaque = opaque;
	for (pp = &l->timers; *pp && (*pp)->when <= t->when; pp = &(*pp)->next)
		;
	t->next = *pp;
	*pp = t;
	return t->id;
}

/* loop_del_timer - cancel a timer; ids that already fired are ignored. */
void loop_del_timer(struct loop *l, long id)
{
	struct loop_timer **pp, *t;

	for (pp = &l->timers; (t = *pp); pp = &t->next) {
		if (t->id == id) {
			*pp = t->next;
			free(t);
			return;
		}
	}
}

/*
 * loop_set_hook - call fn(l, opaque) before each sleep; it returns the
 * longest sleep it allows in ms (-1: no limit).  fn NULL removes the hook.
 */
void loop_set_hook(struct loop *l, loop_hook_fn fn, void *opaque)
{
	l->hook = fn;
	l->hook_opaque = opaque;
}

/* Milliseconds until the first timer, rounded up; -1 if none. */
static int loop_timer_timeout(struct loop *l)
{
	uint64_t now, ms;

	if (!l->timers)
		return -1;
	now = loop_now();
	if (l->timers->when <= now)
		return 0;
	ms = (l->timers->when - now + 999999) / 1000000;
	return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

static void loop_dispatch_fds(struct loop *l, struct epoll_event *evs, int n)
{
	for (int i = 0; i < n; i++) {
		int fd = (int)(uint32_t)evs[i].data.u64;
		uint32_t gen = (uint32_t)(evs[i].data.u64 >> 32);
		struct loop_fd *e = loop_lookup(l, fd);
		uint32_t revents;

		/* Deleted (and maybe re-added) by an earlier callback. */
		if (!e || e->gen != gen)
			continue;
		/* Interest may have been narrowed by loop_mod_fd() meanwhile. */
		revents = evs[i].events & (e->events | EPOLLERR | EPOLLHUP);
		if (!revents)
			continue;
		e->fn(l, fd, revents, e->opaque);
	}
}

static void loop_dispatch_timers(struct loop *l)
{
	long last_id = l->next_timer_id - 1;
	uint64_t now = loop_now();

	for (;;) {
		struct loop_timer **pp, *t;

		/* The list may have changed under the previous callback: rescan. */
		for (pp = &l->timers; (t = *pp) && t->when <= now; pp = &t->next)
			if (t->id <= last_id)
				break;
		if (!t || t->when > now)
			return;
		*pp = t->next;
		loop_timer_fn fn = t->fn;
		void *opaque = t->opaque;
		free(t);
		fn(l, opaque);
	}
}

/*
 * loop_run - dispatch events until loop_stop().  The pass in which
 * loop_stop() is called finishes dispatching its events and due timers.
 * Returns 0 after loop_stop(), or -errno if epoll_wait() fails.
 */
int loop_run(struct loop *l)
{
	struct epoll_event evs[LOOP_MAX_EVENTS];
	int ret = 0;

	while (!atomic_load(&l->stop)) {
		int timeout = loop_timer_timeout(l);
		int n;

		if (l->hook) {
			int hook_ms = l->hook(l, l->hook_opaque);

			if (hook_ms >= 0 && (timeout < 0 || hook_ms < timeout))
				timeout = hook_ms;
			if (atomic_load(&l->stop))
				break;
		}
		n = epoll_wait(l->epfd, evs, LOOP_MAX_EVENTS, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			ret = -errno;
			log_warn("%s: epoll_wait", __func__);
			break;
		}
		loop_dispatch_fds(l, evs, n);
		loop_dispatch_timers(l);
	}
	atomic_store(&l->stop, false);
	return ret;
}

/* loop_stop - make loop_run() return at the end of the current pass. */
void loop_stop(struct loop *l)
{
	atomic_store(&l->stop, true);
}

/*
 * loop_wake - from any thread (or a signal handler): interrupt the sleep,
 * so that the hook runs again.
 */
void loop_wake(struct loop *l)
{
	uint64_t one = 1;

	/* EAGAIN: the counter is saturated, so a wake-up is pending anyway. */
	if (write(l->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("%s: write eventfd", __func__);
}
