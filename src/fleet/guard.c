/*
 * guard.c - the host lease guard (guard.h): one thread per VM process run
 * by a fleet agent, renewing the host's etcd lease and fencing the VM when
 * it cannot.
 *
 * Timing, for a lease of TTL seconds: a keep-alive every TTL/4 (at least
 * 250 ms apart), every 250 ms after a failure, each one waiting at most
 * TTL/6.  etcd expires the lease TTL after it last renewed it, which is
 * after we sent that keep-alive; so fencing at 2/3 TTL from the send time
 * of the last answered keep-alive leaves TTL/3 for the vCPUs to park and
 * for the two clocks to drift.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "godwit/etcd.h"
#include "godwit/guard.h"
#include "godwit/log.h"
#include "godwit/vm.h"

#define GUARD_RETRY_MS      250
#define GUARD_MIN_TIMEOUT   200

struct fleet_guard {
	struct vm *vm;
	struct etcd *e;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	bool new_lease;          /* set_lease: renew now */
	bool said;               /* the current run of failures was logged */
	struct fleet_guard_info info;
	uint64_t last_ok_ms;     /* send time of the last answered keep-alive; 0: none */
};

static uint64_t guard_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int fleet_lease_parse(const char *s, int64_t *out)
{
	char *end;
	long long v;

	if (!s || *s < '1' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || *end || v <= 0)
		return -EINVAL;
	*out = v;
	return 0;
}

/* Fence or unfence the VM (g->lock held: the info follows the VM). */
static void guard_set_fence(struct fleet_guard *g, bool on, const char *why)
{
	if (g->info.fenced == on)
		return;
	g->info.fenced = on;
	if (on)
		log_warnx("fleet guard: the VM is fenced (its vCPUs stopped): %s", why);
	else
		log_info("fleet guard: host lease %" PRId64 " renewed: the VM runs again",
			 g->info.lease);
	/* vm_fence waits for the vCPUs to park, which takes vm->lock only. */
	vm_fence(g->vm, on);
}

/* Wait up to ms, or until stopped or given a new lease.  g->lock held. */
static void guard_wait(struct fleet_guard *g, uint64_t ms)
{
	struct timespec dl;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += (time_t)(ms / 1000);
	dl.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	while (!g->stop && !g->new_lease &&
	       pthread_cond_timedwait(&g->cond, &g->lock, &dl) != ETIMEDOUT)
		;
}

static void *guard_thread(void *opaque)
{
	struct fleet_guard *g = opaque;

	pthread_mutex_lock(&g->lock);
	while (!g->stop) {
		int64_t lease = g->info.lease;
		int ttl = g->info.ttl_s, ttl_left = 0, ret;
		uint64_t t_send = guard_now_ms(), period;
		char err[256] = "";

		g->new_lease = false;
		pthread_mutex_unlock(&g->lock);
		ret = etcd_lease_keepalive(g->e, lease, &ttl_left, err, sizeof(err));
		pthread_mutex_lock(&g->lock);
		if (g->stop)
			break;
		if (g->new_lease)        /* answered for the old lease: ask again */
			continue;
		if (!ret && ttl_left > 0) {
			g->info.ttl_s = ttl_left;
			g->info.lease_gone = false;
			g->info.error[0] = '\0';
			g->last_ok_ms = t_send;
			g->said = false;
			guard_set_fence(g, false, NULL);
			ttl = ttl_left;
			period = (uint64_t)ttl * 1000 / 4;
			if (period < GUARD_RETRY_MS)
				period = GUARD_RETRY_MS;
		} else if (ret == -ENOENT || (!ret && ttl_left <= 0)) {
			g->info.lease_gone = true;
			snprintf(g->info.error, sizeof(g->info.error),
				 "host lease %" PRId64 " is gone: another host may run this VM now; "
				 "only the agent, having checked the VM's owner record, may give it "
				 "a new lease", lease);
			guard_set_fence(g, true, g->info.error);
			/* Nothing to renew until a new lease comes. */
			guard_wait(g, 60000);
			continue;
		} else {
			snprintf(g->info.error, sizeof(g->info.error), "%s", err);
			if (!g->said) {
				log_warnx("fleet guard: cannot renew host lease %" PRId64 ": %s%s", lease,
					  err, g->info.fenced ? " (the VM stays fenced)" : "");
				g->said = true;
			}
			if (!g->last_ok_ms || !ttl ||
			    guard_now_ms() - g->last_ok_ms >= (uint64_t)ttl * 2000 / 3) {
				char why[400];

				snprintf(why, sizeof(why), "host lease %" PRId64 " not renewed %s: %s",
					 lease, g->last_ok_ms ? "for 2/3 of its TTL" : "yet", err);
				guard_set_fence(g, true, why);
			}
			period = GUARD_RETRY_MS;
		}
		guard_wait(g, period);
	}
	pthread_mutex_unlock(&g->lock);
	return NULL;
}

int fleet_guard_start(struct vm *vm, const char *urls, int64_t lease, struct fleet_guard **out,
		      char *err, size_t len)
{
	struct fleet_guard *g = calloc(1, sizeof(*g));
	int ret;

	if (!g) {
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	/* A keep-alive answers in milliseconds; a slow one must not outlast the margin. */
	ret = etcd_open(urls, NULL, 1000, &g->e, err, len);
	if (ret) {
		free(g);
		return ret;
	}
	g->vm = vm;
	g->info.lease = lease;
	pthread_mutex_init(&g->lock, NULL);
	pthread_cond_init(&g->cond, NULL);
	/* No guest code runs before etcd confirmed the lease. */
	g->info.fenced = true;
	vm_fence(vm, true);
	log_debug("fleet guard: the VM is fenced until etcd renews host lease %" PRId64, lease);
	ret = -pthread_create(&g->thread, NULL, guard_thread, g);
	if (ret) {
		snprintf(err, len, "cannot start the lease guard: %s", strerror(-ret));
		etcd_close(g->e);
		pthread_mutex_destroy(&g->lock);
		pthread_cond_destroy(&g->cond);
		free(g);
		return ret;
	}
	*out = g;
	return 0;
}

void fleet_guard_stop(struct fleet_guard *g)
{
	if (!g)
		return;
	pthread_mutex_lock(&g->lock);
	g->stop = true;
	pthread_cond_broadcast(&g->cond);
	pthread_mutex_unlock(&g->lock);
	pthread_join(g->thread, NULL);
	etcd_close(g->e);
	pthread_mutex_destroy(&g->lock);
	pthread_cond_destroy(&g->cond);
	free(g);
}

int fleet_guard_set_lease(struct fleet_guard *g, int64_t lease, char *err, size_t len)
{
	if (lease <= 0) {
		snprintf(err, len, "a lease ID is a positive number");
		return -EINVAL;
	}
	pthread_mutex_lock(&g->lock);
	g->info.lease = lease;
	g->info.ttl_s = 0;
	g->last_ok_ms = 0;
	g->new_lease = true;
	pthread_cond_broadcast(&g->cond);
	pthread_mutex_unlock(&g->lock);
	log_info("fleet guard: host lease is now %" PRId64, lease);
	return 0;
}

void fleet_guard_info(struct fleet_guard *g, struct fleet_guard_info *out)
{
	pthread_mutex_lock(&g->lock);
	*out = g->info;
	out->since_ok_ms = g->last_ok_ms ? (double)(guard_now_ms() - g->last_ok_ms) : -1;
	pthread_mutex_unlock(&g->lock);
}
