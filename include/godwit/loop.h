/*
 * loop.h - the event loop (one thread, epoll): fd events, timers and a
 * before-sleep hook, in the spirit of Redis' ae.h.  Only the loop thread
 * calls these, except loop_wake(), which any thread may call.
 */
#ifndef GODWIT_LOOP_H
#define GODWIT_LOOP_H

#include <sys/epoll.h>
#include "godwit/common.h"

struct loop;
typedef void (*loop_fd_fn)(struct loop *l, int fd, uint32_t events, void *opaque);
typedef void (*loop_timer_fn)(struct loop *l, void *opaque);
/* Called before each sleep; returns the longest sleep in ms wanted (-1: none). */
typedef int (*loop_hook_fn)(struct loop *l, void *opaque);

struct loop *loop_new(void);
void loop_free(struct loop *l);
int loop_add_fd(struct loop *l, int fd, uint32_t events, loop_fd_fn fn, void *opaque) __must_check;
int loop_mod_fd(struct loop *l, int fd, uint32_t events) __must_check;
void loop_del_fd(struct loop *l, int fd);
/* One-shot timer after ms milliseconds; returns an id > 0 or -errno. */
long loop_add_timer(struct loop *l, unsigned int ms, loop_timer_fn fn, void *opaque);
void loop_del_timer(struct loop *l, long id);
void loop_set_hook(struct loop *l, loop_hook_fn fn, void *opaque);
/* Runs until loop_stop(); returns 0 or -errno. */
int loop_run(struct loop *l);
void loop_stop(struct loop *l);
/* Thread-safe: make loop_run() return from epoll_wait and run the hook. */
void loop_wake(struct loop *l);

#endif
