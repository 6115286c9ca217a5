/*
 * ram_place.c - placing a destination's first pass with UFFDIO_COPY
 * (ram_place.h).
 *
 * A bitmap per region remembers the pages placed here, so a page that comes
 * again is copied over without an ioctl that fails; it is only a hint (the
 * fault thread places zero pages behind its back, and several channels may
 * place at once): the kernel's EEXIST is what decides.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>

#include "godwit/log.h"
#include "godwit/ram_place.h"

#define RP_PAGE        4096u
#define RP_MAX_REGIONS 8

struct ram_place {
	int uffd, efd;
	unsigned int n;
	struct ram_place_region rg[RP_MAX_REGIONS];
	uint64_t *placed[RP_MAX_REGIONS];
	bool registered[RP_MAX_REGIONS];
	pthread_t thread;
	bool thread_on;
	uint64_t copied, existing, faults, ioctls;      /* atomics */
};

int ram_place_wanted(void)
{
	const char *e = getenv("GODWIT_UFFD_PLACE");

	return !e || (strcmp(e, "off") && strcmp(e, "0"));
}

/* Any fault on a page not placed yet: a zero page, as unregistered memory would read. */
static void *rp_fault_thread(void *opaque)
{
	struct ram_place *p = opaque;

	for (;;) {
		struct pollfd pf[2] = { { .fd = p->uffd, .events = POLLIN },
					{ .fd = p->efd, .events = POLLIN } };
		struct uffd_msg msg[16];
		ssize_t k;

		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_warn("%s: poll", __func__);
			break;
		}
		if (pf[1].revents)
			break;
		if (!(pf[0].revents & POLLIN))
			continue;
		k = read(p->uffd, msg, sizeof(msg));
		for (ssize_t i = 0; k > 0 && i < k / (ssize_t)sizeof(msg[0]); i++) {
			struct uffdio_zeropage z;

			if (msg[i].event != UFFD_EVENT_PAGEFAULT)
				continue;
			z = (struct uffdio_zeropage){
				.range = { msg[i].arg.pagefault.address & ~(uint64_t)(RP_PAGE - 1),
					   RP_PAGE },
			};
			/* EEXIST: the page was placed meanwhile, and its UFFDIO_COPY woke the thread. */
			/* EINVAL, ENOENT: unregistered since (the fault was woken and retried). */
			if (ioctl(p->uffd, UFFDIO_ZEROPAGE, &z) && errno != EEXIST &&
			    errno != EINVAL && errno != ENOENT)
				log_warn("%s: UFFDIO_ZEROPAGE at %p", __func__,
					 (void *)(uintptr_t)z.range.start);
			__atomic_add_fetch(&p->faults, 1, __ATOMIC_RELAXED);
		}
	}
	return NULL;
}

static void rp_unregister(struct ram_place *p)
{
	for (unsigned int i = 0; i < p->n; i++) {
		struct uffdio_range r = { (uintptr_t)p->rg[i].host, p->rg[i].size };

		if (p->registered[i] && ioctl(p->uffd, UFFDIO_UNREGISTER, &r))
			log_warn("%s: cannot unregister guest RAM at %p", __func__,
				 (void *)p->rg[i].host);
		p->registered[i] = false;
	}
}

static void rp_free(struct ram_place *p)
{
	for (unsigned int i = 0; i < p->n; i++)
		free(p->placed[i]);
	if (p->efd >= 0)
		close(p->efd);
	free(p);
}

int ram_place_start(int uffd, const struct ram_place_region *rg, unsigned int n,
		    struct ram_place **out, char *err, size_t len)
{
	struct ram_place *p;
	int ret;

	*out = NULL;
	if (uffd < 0) {
		snprintf(err, len, "no userfaultfd: %s", strerror(-uffd));
		return uffd;
	}
	if (!n || n > RP_MAX_REGIONS) {
		snprintf(err, len, "%u memory regions (at most %u)", n, RP_MAX_REGIONS);
		return -EINVAL;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	p->uffd = uffd;
	p->n = n;
	p->efd = eventfd(0, EFD_CLOEXEC);
	if (p->efd < 0) {
		ret = -errno;
		snprintf(err, len, "eventfd: %s", strerror(errno));
		goto fail;
	}
	for (unsigned int i = 0; i < n; i++) {
		struct uffdio_register reg = {
			.range = { (uintptr_t)rg[i].host, rg[i].size },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};

		p->rg[i] = rg[i];
		p->placed[i] = calloc(rg[i].size / RP_PAGE / 64 + 1, sizeof(uint64_t));
		if (!p->placed[i]) {
			ret = -ENOMEM;
			snprintf(err, len, "out of memory");
			goto fail;
		}
		if (ioctl(uffd, UFFDIO_REGISTER, &reg)) {
			ret = -errno;
			snprintf(err, len, "cannot register guest RAM at %p (%llu MiB) with "
				 "userfaultfd: %s", (void *)rg[i].host,
				 (unsigned long long)(rg[i].size >> 20), strerror(errno));
			goto fail;
		}
		p->registered[i] = true;
		if (!(reg.ioctls & (1ull << _UFFDIO_COPY)) ||
		    !(reg.ioctls & (1ull << _UFFDIO_ZEROPAGE))) {
			ret = -EOPNOTSUPP;
			snprintf(err, len, "userfaultfd offers no UFFDIO_COPY or UFFDIO_ZEROPAGE "
				 "on guest RAM");
			goto fail;
		}
	}
	ret = pthread_create(&p->thread, NULL, rp_fault_thread, p);
	if (ret) {
		snprintf(err, len, "cannot start the fault thread: %s", strerror(ret));
		ret = -ret;
		goto fail;
	}
	p->thread_on = true;
	*out = p;
	return 0;
fail:
	rp_unregister(p);
	rp_free(p);
	return ret;
}

static bool rp_test(const uint64_t *b, uint64_t pg)
{
	return __atomic_load_n(&b[pg / 64], __ATOMIC_RELAXED) & (1ull << (pg % 64));
}

static void rp_mark(uint64_t *b, uint64_t pg, uint64_t npages)
{
	for (; npages; pg++, npages--)
		__atomic_fetch_or(&b[pg / 64], 1ull << (pg % 64), __ATOMIC_RELAXED);
}

int ram_place_put(void *opaque, uint64_t gpa, void *host, const void *src, size_t len)
{
	struct ram_place *p = opaque;
	uint8_t *dst = host;
	const uint8_t *s = src;
	unsigned int ri;
	uint64_t base, pg, end;

	(void)gpa;
	for (ri = 0; ri < p->n; ri++)
		if (dst >= p->rg[ri].host && (uint64_t)(dst - p->rg[ri].host) < p->rg[ri].size &&
		    len <= p->rg[ri].size - (uint64_t)(dst - p->rg[ri].host))
			break;
	if (ri == p->n || len % RP_PAGE || (uintptr_t)dst % RP_PAGE)
		return -EINVAL;
	base = pg = (uint64_t)(dst - p->rg[ri].host) / RP_PAGE;
	end = pg + len / RP_PAGE;
	while (pg < end) {
		uint64_t first = pg;
		struct uffdio_copy c;

		if (rp_test(p->placed[ri], pg)) {
			/* Here already (it came twice): an ordinary copy. */
			for (; pg < end && rp_test(p->placed[ri], pg); pg++)
				;
			memcpy(p->rg[ri].host + first * RP_PAGE, s + (first - base) * RP_PAGE,
			       (pg - first) * RP_PAGE);
			__atomic_add_fetch(&p->existing, pg - first, __ATOMIC_RELAXED);
			continue;
		}
		for (; pg < end && !rp_test(p->placed[ri], pg); pg++)
			;
		/* [first, pg) were not placed here: one UFFDIO_COPY, retried past what it did. */
		while (first < pg) {
			uint64_t off = first - base;

			c = (struct uffdio_copy){
				.dst = (uintptr_t)(p->rg[ri].host + first * RP_PAGE),
				.src = (uintptr_t)(s + off * RP_PAGE),
				.len = (pg - first) * RP_PAGE,
			};
			__atomic_add_fetch(&p->ioctls, 1, __ATOMIC_RELAXED);
			if (!ioctl(p->uffd, UFFDIO_COPY, &c)) {
				rp_mark(p->placed[ri], first, pg - first);
				__atomic_add_fetch(&p->copied, pg - first, __ATOMIC_RELAXED);
				break;
			}
			if (c.copy > 0) {
				uint64_t done = (uint64_t)c.copy / RP_PAGE;

				rp_mark(p->placed[ri], first, done);
				__atomic_add_fetch(&p->copied, done, __ATOMIC_RELAXED);
				first += done;
				continue;
			}
			if (errno == EEXIST) {
				/* Touched before (a fault answered, another channel): copy over it. */
				memcpy(p->rg[ri].host + first * RP_PAGE, s + off * RP_PAGE, RP_PAGE);
				rp_mark(p->placed[ri], first, 1);
				__atomic_add_fetch(&p->existing, 1, __ATOMIC_RELAXED);
				first++;
				continue;
			}
			if (errno == EAGAIN || errno == EINTR)
				continue;
			if (errno == ENOENT) {
				/* Not registered (any more): plain memory, plainly copied. */
				memcpy(p->rg[ri].host + first * RP_PAGE, s + off * RP_PAGE,
				       (pg - first) * RP_PAGE);
				rp_mark(p->placed[ri], first, pg - first);
				__atomic_add_fetch(&p->existing, pg - first, __ATOMIC_RELAXED);
				break;
			}
			return -errno;
		}
	}
	return 0;
}

void ram_place_stop(struct ram_place *p, struct ram_place_stats *st)
{
	if (!p)
		return;
	/* Unregistered first: no new fault comes, and the thread answers any still queued. */
	rp_unregister(p);
	if (p->thread_on) {
		uint64_t one = 1;

		if (write(p->efd, &one, sizeof(one)) != sizeof(one))
			log_warn("%s: eventfd", __func__);
		pthread_join(p->thread, NULL);
	}
	if (st)
		*st = (struct ram_place_stats){
			.copied = p->copied, .existing = p->existing,
			.faults = p->faults, .ioctls = p->ioctls,
		};
	rp_free(p);
}
