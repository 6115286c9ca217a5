/*
 * postcopy.c - post-copy live migration over userfaultfd (postcopy.h,
 * docs/migration.md "Post-copy"): the frames, the missing set, the
 * source's request server and background push, the destination's fault and
 * receive threads.
 *
 * Locking: none is shared with the VM or its devices.  The bitmaps are
 * updated with atomic operations (any thread); the destination's table of
 * outstanding requests and its latency samples are under d->lock, which is
 * held only around those few words, never across I/O or an ioctl, so a
 * device thread blocked on a missing page never holds anything the page's
 * placer needs.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "godwit/crc32c.h"
#include "godwit/handoff.h"
#include "godwit/le.h"
#include "godwit/log.h"
#include "godwit/migrate.h"
#include "godwit/postcopy.h"
#include "godwit/vm.h"

#define PC_PAGE         4096u
#define PC_POLL_MS      200
#define PC_LAT_MAX      65536           /* latency samples kept */
#define PC_OUTSTANDING  256             /* requests tracked for their latency */
#define PC_BUF          (PC_MAX_PAGES * PC_PAGE)  /* the destination's frames: PAGES at most */

/* Send iov whole (blocking, SO_SNDTIMEO bounds each wait); 0 or -errno. */
static int pc_sendv(int fd, struct iovec *iov, int n)
{
	while (n > 0) {
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t k = sendmsg(fd, &mh, MSG_NOSIGNAL);

		if (k < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		}
		iov_advance(&iov, &n, (size_t)k);
	}
	return 0;
}

static int pc_send(int fd, const struct pc_hdr *h, const void *payload)
{
	uint8_t hdr[PC_HDR_LEN], crc[4];
	struct iovec iov[3];

	pc_hdr_encode(hdr, h);
	le32_put(crc, pc_frame_crc(hdr, payload, h->len));
	iov[0] = (struct iovec){ hdr, sizeof(hdr) };
	iov[1] = (struct iovec){ (void *)payload, h->len };
	iov[2] = (struct iovec){ crc, sizeof(crc) };
	return pc_sendv(fd, iov, 3);
}

/* Read n bytes (SO_RCVTIMEO bounds each wait); 0, -ECONNRESET at the end, -errno. */
static int pc_recv_all(int fd, void *buf, size_t n)
{
	uint8_t *p = buf;

	while (n) {
		ssize_t k = recv(fd, p, n, 0);

		if (k == 0)
			return -ECONNRESET;
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

/* A frame's header into hdr (PC_HDR_LEN bytes), decoded into h; 0 or -errno with why. */
static int pc_recv_hdr(int fd, uint8_t *hdr, struct pc_hdr *h, char *why, size_t len)
{
	int ret = pc_recv_all(fd, hdr, PC_HDR_LEN);

	if (ret) {
		snprintf(why, len, "%s", ret == -ECONNRESET ? "the peer closed the connection" :
			 ret == -ETIMEDOUT ? "the peer sent nothing for 10 s" : strerror(-ret));
		return ret;
	}
	return pc_hdr_decode(hdr, h, why, len);
}

/* The rest of the frame whose header is hdr (h): h->len bytes into buf, and its CRC. */
static int pc_recv_payload(int fd, const uint8_t *hdr, const struct pc_hdr *h, uint8_t *buf,
			   char *why, size_t len)
{
	uint8_t crc[4];
	int ret = pc_recv_all(fd, buf, h->len);

	if (!ret)
		ret = pc_recv_all(fd, crc, sizeof(crc));
	if (ret) {
		snprintf(why, len, "a post-copy frame was cut short: %s", strerror(-ret));
		return ret;
	}
	if (le32_get(crc) != pc_frame_crc(hdr, buf, h->len)) {
		snprintf(why, len, "post-copy frame type %u: bad CRC", h->type);
		return -EBADMSG;
	}
	return 0;
}

/*
 * One whole frame into h and buf, which has room for cap bytes: 0, or
 * -errno with why (-EMSGSIZE: a frame, valid as such, longer than cap,
 * left unread).
 */
static int pc_recv(int fd, struct pc_hdr *h, uint8_t *buf, size_t cap, char *why, size_t len)
{
	uint8_t hdr[PC_HDR_LEN];
	int ret = pc_recv_hdr(fd, hdr, h, why, len);

	if (ret)
		return ret;
	if (h->len > cap) {
		snprintf(why, len, "post-copy frame type %u: %u bytes where at most %zu fit",
			 h->type, h->len, cap);
		return -EMSGSIZE;
	}
	return pc_recv_payload(fd, hdr, h, buf, why, len);
}

static size_t pc_words(uint64_t pages)
{
	return (size_t)((pages + 63) / 64);
}

static bool pc_test(const uint64_t *b, uint64_t p)
{
	return __atomic_load_n(&b[p / 64], __ATOMIC_RELAXED) & (1ULL << (p % 64));
}

/* Set bit p; true if it was clear. */
static bool pc_test_set(uint64_t *b, uint64_t p)
{
	uint64_t bit = 1ULL << (p % 64);

	return !(__atomic_fetch_or(&b[p / 64], bit, __ATOMIC_ACQ_REL) & bit);
}

/* The region and page of gpa in the VM's memory; false if not RAM. */
static bool pc_locate(const struct vm *vm, uint64_t gpa, unsigned int *ri, uint64_t *page)
{
	for (unsigned int i = 0; i < vm->nr_mem; i++)
		if (gpa >= vm->mem[i].gpa && gpa - vm->mem[i].gpa < vm->mem[i].size) {
			*ri = i;
			*page = (gpa - vm->mem[i].gpa) / PC_PAGE;
			return true;
		}
	return false;
}

/* The same for a host address in the VM's RAM mapping (a fault's). */
static bool pc_locate_host(const struct vm *vm, uint64_t addr, unsigned int *ri, uint64_t *page)
{
	for (unsigned int i = 0; i < vm->nr_mem; i++)
		if (addr >= (uintptr_t)vm->mem[i].host &&
		    addr - (uintptr_t)vm->mem[i].host < vm->mem[i].size) {
			*ri = i;
			*page = (addr - (uintptr_t)vm->mem[i].host) / PC_PAGE;
			return true;
		}
	return false;
}

/* ---- source ------------------------------------------------------------------------------ */

struct pc_src {
	struct vm *vm;
	uint64_t *const *bits;     /* the missing set (the migration's bitmaps, read only) */
	uint64_t *sent[2];         /* pages sent (atomic): on request or pushed */
	int rq;
	pthread_t thread;
	bool serving;              /* the thread runs (the caller's thread only) */
	pthread_mutex_t lock;      /* the stats */
	struct pc_src_stats st;
};

static void *pc_src_serve(void *opaque)
{
	struct pc_src *s = opaque;
	char why[256];

	for (;;) {
		struct pc_hdr h;
		unsigned int ri;
		uint64_t pg;
		int ret = pc_recv(s->rq, &h, NULL, 0, why, sizeof(why));

		if (ret == -ETIMEDOUT)
			continue;              /* a guest that faults on nothing for a while */
		if (ret && ret != -EMSGSIZE) {
			if (ret != -ECONNRESET && ret != -EINVAL)
				log_warnx("migrate: post-copy request channel: %s", why);
			return NULL;
		}
		/* A request has no payload: a frame with one is a bad request too. */
		if (ret || h.type != PC_REQ || !pc_locate(s->vm, h.gpa, &ri, &pg) ||
		    !pc_test(s->bits[ri], pg)) {
			log_warnx("migrate: post-copy: a bad request (type %u, %#llx): the channel "
				  "is closed", h.type, (unsigned long long)h.gpa);
			shutdown(s->rq, SHUT_RDWR);
			return NULL;
		}
		pc_test_set(s->sent[ri], pg);
		h = (struct pc_hdr){ .type = PC_PAGES, .gpa = h.gpa, .len = PC_PAGE };
		if (pc_send(s->rq, &h, s->vm->mem[ri].host + pg * PC_PAGE)) {
			log_warnx("migrate: post-copy request channel: cannot send a page");
			return NULL;
		}
		pthread_mutex_lock(&s->lock);
		s->st.requested++;
		pthread_mutex_unlock(&s->lock);
	}
}

int pc_src_start(struct vm *vm, uint64_t *const bits[], int rq_fd, struct pc_src **out)
{
	struct pc_src *s = calloc(1, sizeof(*s));
	int ret;

	if (!s)
		return -ENOMEM;
	s->vm = vm;
	s->bits = bits;
	s->rq = rq_fd;
	pthread_mutex_init(&s->lock, NULL);
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		s->sent[i] = calloc(pc_words(vm->mem[i].size / PC_PAGE), sizeof(uint64_t));
		if (!s->sent[i]) {
			ret = -ENOMEM;
			goto fail;
		}
	}
	ret = -pthread_create(&s->thread, NULL, pc_src_serve, s);
	if (ret)
		goto fail;
	s->serving = true;
	*out = s;
	return 0;
fail:
	pc_src_stop(s);
	return ret;
}

int pc_src_push(struct pc_src *s, int fd, uint64_t bw, int (*progress)(void *), void *opaque,
		char *err, size_t len)
{
	struct vm *vm = s->vm;
	struct timespec t0;
	uint64_t bytes = 0, since = 0;
	uint8_t buf[PC_COMPLETE_LEN];
	struct pc_hdr h;
	char why[256];
	int ret;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		uint64_t pages = vm->mem[i].size / PC_PAGE;

		for (uint64_t p = 0; p < pages; ) {
			uint64_t first, n = 0;

			if (!(p % 64) && !s->bits[i][p / 64]) {
				p += 64;
				continue;
			}
			if (!pc_test(s->bits[i], p) || !pc_test_set(s->sent[i], p)) {
				p++;
				continue;
			}
			/* A run of pages nobody asked for yet. */
			first = p++;
			n = 1;
			while (n < PC_MAX_PAGES && p < pages && pc_test(s->bits[i], p) &&
			       pc_test_set(s->sent[i], p)) {
				p++;
				n++;
			}
			h = (struct pc_hdr){ .type = PC_PAGES, .gpa = vm->mem[i].gpa + first * PC_PAGE,
					     .len = (uint32_t)(n * PC_PAGE) };
			ret = pc_send(fd, &h, vm->mem[i].host + first * PC_PAGE);
			if (ret) {
				snprintf(err, len, "sending pages: %s", strerror(-ret));
				return ret;
			}
			pthread_mutex_lock(&s->lock);
			s->st.pushed += n;
			pthread_mutex_unlock(&s->lock);
			bytes += h.len;
			if (bw) {
				double due = (double)bytes / (double)bw * 1e3, el = ms_since(&t0);

				if (due > el) {
					struct timespec ts = { 0, (long)((due - el) * 1e6) };

					if (due - el >= 1000)
						ts = (struct timespec){ 1, 0 };
					nanosleep(&ts, NULL);
				}
			}
			if (bytes - since >= MiB) {
				since = bytes;
				ret = progress(opaque);
				if (ret) {
					snprintf(err, len, "stopped");
					return ret;
				}
			}
		}
	}
	h = (struct pc_hdr){ .type = PC_END };
	ret = pc_send(fd, &h, NULL);
	if (ret) {
		snprintf(err, len, "sending the end of the pages: %s", strerror(-ret));
		return ret;
	}
	/* The destination has every page once the requests in flight landed too. */
	ret = pc_recv(fd, &h, buf, sizeof(buf), why, sizeof(why));
	if (!ret && h.type != PC_COMPLETE) {
		snprintf(why, sizeof(why), "post-copy frame type %u instead of COMPLETE", h.type);
		ret = -EPROTO;
	}
	if (ret) {
		snprintf(err, len, "waiting for the destination to confirm every page: %s", why);
		return ret;
	}
	pthread_mutex_lock(&s->lock);
	s->st.lat_median_ms = (double)le64_get(buf + 8) / 1e3;
	s->st.lat_max_ms = (double)le64_get(buf + 16) / 1e3;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

void pc_src_stats(struct pc_src *s, struct pc_src_stats *st)
{
	pthread_mutex_lock(&s->lock);
	*st = s->st;
	pthread_mutex_unlock(&s->lock);
}

/* Stop serving requests on the current request channel. */
static void pc_src_stop_serving(struct pc_src *s)
{
	if (!s->serving)
		return;
	shutdown(s->rq, SHUT_RDWR);
	pthread_join(s->thread, NULL);
	s->serving = false;
}

int pc_src_rejoin(struct pc_src *s, int fd, int rq, uint64_t token, char *err, size_t len)
{
	struct vm *vm = s->vm;
	uint8_t hdr[PC_HDR_LEN], *buf = NULL;
	uint64_t gpa[2], pages[2];
	struct pc_hdr h = { .type = PC_RESUME, .gpa = token };
	struct pc_set set;
	char why[256];
	int ret;

	pc_src_stop_serving(s);
	ret = pc_send(fd, &h, NULL);
	h = (struct pc_hdr){ .type = PC_HELLO, .gpa = token };
	if (!ret)
		ret = pc_send(rq, &h, NULL);
	if (ret) {
		snprintf(err, len, "sending RESUME: %s", strerror(-ret));
		return ret;
	}
	ret = pc_recv_hdr(fd, hdr, &h, why, sizeof(why));
	if (!ret && h.type != PC_MISSING) {
		snprintf(why, sizeof(why), "post-copy frame type %u instead of MISSING", h.type);
		ret = -EPROTO;
	}
	if (!ret && !(buf = malloc(h.len))) {
		snprintf(why, sizeof(why), "out of memory");
		ret = -ENOMEM;
	}
	if (!ret)
		ret = pc_recv_payload(fd, hdr, &h, buf, why, sizeof(why));
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		gpa[i] = vm->mem[i].gpa;
		pages[i] = vm->mem[i].size / PC_PAGE;
	}
	if (!ret)
		ret = pc_set_decode(buf, h.len, vm->nr_mem, gpa, pages, &set, why, sizeof(why));
	free(buf);
	if (!ret && set.token != token) {
		pc_set_free(&set);
		snprintf(why, sizeof(why), "MISSING names another migration");
		ret = -EPROTO;
	}
	if (ret) {
		snprintf(err, len, "waiting for the destination's missing pages: %s", why);
		return ret;
	}
	/* Push again exactly what is still missing there (and only pages of ours). */
	for (unsigned int i = 0; i < vm->nr_mem; i++)
		for (size_t w = 0; w < pc_words(pages[i]); w++)
			__atomic_store_n(&s->sent[i][w], s->bits[i][w] & ~set.bits[i][w],
					 __ATOMIC_RELEASE);
	log_info("migrate: post-copy resumed: %llu pages still missing at the destination",
		 (unsigned long long)pc_set_count(&set));
	pc_set_free(&set);
	s->rq = rq;
	ret = -pthread_create(&s->thread, NULL, pc_src_serve, s);
	if (ret) {
		snprintf(err, len, "cannot serve post-copy requests: %s", strerror(-ret));
		return ret;
	}
	s->serving = true;
	return 0;
}

void pc_src_stop(struct pc_src *s)
{
	if (!s)
		return;
	pc_src_stop_serving(s);
	for (unsigned int i = 0; i < 2; i++)
		free(s->sent[i]);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* ---- destination ------------------------------------------------------------------------- */

struct pc_dest {
	struct vm *vm;
	int uffd;
	struct pc_set set;          /* the missing pages */
	uint64_t *got[2];           /* placed (atomic) */
	uint64_t *asked[2];         /* requested (atomic) */
	uint64_t missing;
	uint64_t received;          /* atomic */
	bool registered;
	int done;                   /* atomic: every page is here */
	int stop;                   /* atomic: pc_dest_free */
	pthread_t tf, tr;
	bool started;
	struct timespec t0;
	/*
	 * The link: fd (main) and rq (request channel), replaced by the
	 * receive thread when it broke (broken) and the source came back.
	 * link_lock is held to read or swap them and around every use of rq
	 * by the fault thread, never while waiting for anything but a send.
	 */
	pthread_mutex_t link_lock;
	int fd, rq;
	bool broken;
	bool own_fds;               /* fd and rq came from a recovery (else the caller's) */
	int lfd;                    /* the listener, kept for a source coming back; -1: none */
	char addr[MIG_ADDR_MAX];
	uint32_t wait_s;            /* how long to wait for it (0: for ever) */
	unsigned int recoveries;
	pthread_mutex_t lock;       /* outstanding requests and latencies */
	struct { uint64_t gpa; struct timespec t; } out[PC_OUTSTANDING];
	unsigned int nout;
	uint32_t *lat_us;
	size_t nlat;
	uint64_t requested, lat_max_us;
};

int pc_uffd_open(void)
{
	struct uffdio_api api = { .api = UFFD_API };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		return -errno;
	if (ioctl(fd, UFFDIO_API, &api)) {
		int e = errno;

		close(fd);
		return -e;
	}
	return fd;
}

static void pc_dest_unregister(struct pc_dest *d)
{
	if (!d->registered)
		return;
	for (unsigned int i = 0; i < d->vm->nr_mem; i++) {
		struct uffdio_range r = { (uintptr_t)d->vm->mem[i].host, d->vm->mem[i].size };

		if (ioctl(d->uffd, UFFDIO_UNREGISTER, &r))
			log_warn("incoming post-copy: cannot unregister guest RAM");
	}
	d->registered = false;
}

int pc_dest_prepare(struct vm *vm, int uffd, struct pc_set *s, struct pc_dest **out,
		    char *err, size_t len)
{
	struct pc_dest *d = calloc(1, sizeof(*d));
	int ret = -ENOMEM;

	if (!d) {
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	d->vm = vm;
	d->uffd = uffd;
	d->fd = d->rq = d->lfd = -1;
	d->set = *s;
	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&d->lock, NULL);
	pthread_mutex_init(&d->link_lock, NULL);
	d->missing = pc_set_count(&d->set);
	d->lat_us = calloc(PC_LAT_MAX, sizeof(uint32_t));
	if (!d->lat_us)
		goto fail;
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		d->got[i] = calloc(pc_words(d->set.pages[i]) + 1, sizeof(uint64_t));
		d->asked[i] = calloc(pc_words(d->set.pages[i]) + 1, sizeof(uint64_t));
		if (!d->got[i] || !d->asked[i])
			goto fail;
	}
	if (uffd < 0) {
		snprintf(err, len, "this destination cannot take a post-copy migration: "
			 "userfaultfd: %s", strerror(-uffd));
		ret = uffd;
		goto fail;
	}
	/* Registered first, then discarded: a touch in between faults instead of reading zeros. */
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		struct mem_region *mr = &vm->mem[i];
		struct uffdio_register reg = {
			.range = { (uintptr_t)mr->host, mr->size },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};

		if (ioctl(uffd, UFFDIO_REGISTER, &reg)) {
			ret = -errno;
			snprintf(err, len, "cannot register guest RAM with userfaultfd: %s",
				 strerror(errno));
			goto fail;
		}
		d->registered = true;
	}
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		for (uint64_t p = 0; p < d->set.pages[i]; ) {
			uint64_t first;

			if (!pc_test(d->set.bits[i], p)) {
				p++;
				continue;
			}
			for (first = p; p < d->set.pages[i] && pc_test(d->set.bits[i], p); p++)
				;
			if (madvise(vm->mem[i].host + first * PC_PAGE, (p - first) * PC_PAGE,
				    MADV_DONTNEED)) {
				ret = -errno;
				snprintf(err, len, "cannot discard stale guest pages: %s",
					 strerror(errno));
				goto fail;
			}
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &d->t0);
	log_info("incoming post-copy: %llu pages (%.1f MiB) to come after the switch",
		 (unsigned long long)d->missing, (double)d->missing * PC_PAGE / (double)MiB);
	*out = d;
	return 0;
fail:
	pc_dest_free(d);
	return ret;
}

void pc_dest_set_listener(struct pc_dest *d, int lfd, const char *addr, uint32_t wait_s)
{
	d->lfd = lfd;
	snprintf(d->addr, sizeof(d->addr), "%s", addr);
	d->wait_s = wait_s;
}

/* The source is gone for good before every page came: the VM cannot go on. */
__attribute__((__noreturn__))
static void pc_dest_lost(struct pc_dest *d, const char *why)
{
	uint64_t got = __atomic_load_n(&d->received, __ATOMIC_ACQUIRE);

	log_warnx("incoming post-copy failed: %s; %llu of %llu pages never came: the VM cannot "
		  "run without them and is lost here (exit status %d)", why,
		  (unsigned long long)(d->missing - got), (unsigned long long)d->missing, EXIT_ERROR);
	/* vCPUs and device threads are blocked on missing pages: nothing can be unwound. */
	_exit(EXIT_ERROR);
}

static int pc_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Every page is here: unregister, tell the source, record it. */
static void pc_dest_complete(struct pc_dest *d)
{
	uint8_t buf[PC_COMPLETE_LEN];
	struct pc_hdr h = { .type = PC_COMPLETE, .len = PC_COMPLETE_LEN };
	uint64_t median = 0, req;
	double ms = ms_since(&d->t0);
	int fd;

	pc_dest_unregister(d);
	pthread_mutex_lock(&d->lock);
	if (d->nlat) {
		qsort(d->lat_us, d->nlat, sizeof(uint32_t), pc_cmp_u32);
		median = d->lat_us[d->nlat / 2];
	}
	req = d->requested;
	pthread_mutex_unlock(&d->lock);
	le64_put(buf, req);
	le64_put(buf + 8, median);
	le64_put(buf + 16, d->lat_max_us);
	migrate_incoming_postcopy(d->vm, MIG_INCOMING, req, d->missing - req, (double)median / 1e3,
				  (double)d->lat_max_us / 1e3, ms);
	/*
	 * Done before the source hears it: once it has COMPLETE it closes both
	 * connections, and the threads that see them close must know by then
	 * that this is the end, not a broken link (which, with no source
	 * coming back, would fail a VM that has every page).
	 */
	__atomic_store_n(&d->done, 1, __ATOMIC_RELEASE);
	pthread_mutex_lock(&d->link_lock);
	fd = d->fd;
	if (d->broken || pc_send(fd, &h, buf))
		log_warnx("incoming post-copy: every page is here, but the source did not hear it");
	pthread_mutex_unlock(&d->link_lock);
	log_info("incoming post-copy: complete after %.0f ms: %llu pages requested, %llu pushed, "
		 "fault latency median %.2f ms, max %.2f ms%s", ms, (unsigned long long)req,
		 (unsigned long long)(d->missing - req), (double)median / 1e3,
		 (double)d->lat_max_us / 1e3, d->recoveries ? " (after a broken link)" : "");
}

/* Place a frame's pages (those of the set not here yet). */
static void pc_dest_place(struct pc_dest *d, uint64_t gpa, const uint8_t *data, uint32_t len)
{
	for (uint32_t off = 0; off < len; off += PC_PAGE) {
		struct uffdio_copy c;
		unsigned int ri;
		uint64_t pg;

		if (!pc_locate(d->vm, gpa + off, &ri, &pg) || !pc_test(d->set.bits[ri], pg) ||
		    pc_test(d->got[ri], pg))
			continue;
		c = (struct uffdio_copy){ .dst = (uintptr_t)(d->vm->mem[ri].host + pg * PC_PAGE),
					  .src = (uintptr_t)(data + off), .len = PC_PAGE };
		if (ioctl(d->uffd, UFFDIO_COPY, &c) && errno != EEXIST) {
			char why[128];

			snprintf(why, sizeof(why), "cannot place a page (UFFDIO_COPY): %s",
				 strerror(errno));
			pc_dest_lost(d, why);
		}
		if (!pc_test_set(d->got[ri], pg))
			continue;
		vm_mark_dirty(d->vm, gpa + off, PC_PAGE);
		pthread_mutex_lock(&d->lock);
		for (unsigned int k = 0; k < d->nout; k++)
			if (d->out[k].gpa == gpa + off) {
				double us = ms_since(&d->out[k].t) * 1e3;

				if (d->nlat < PC_LAT_MAX)
					d->lat_us[d->nlat++] = (uint32_t)MIN(us, 4e9);
				d->lat_max_us = MAX(d->lat_max_us, (uint64_t)us);
				d->out[k] = d->out[--d->nout];
				break;
			}
		pthread_mutex_unlock(&d->lock);
		if (__atomic_add_fetch(&d->received, 1, __ATOMIC_ACQ_REL) == d->missing)
			pc_dest_complete(d);
	}
}

/* Mark the link broken (any thread): both connections shut down, the receive thread recovers. */
static void pc_dest_break(struct pc_dest *d, const char *why)
{
	/* Every page is here: the source closing its connections is the end of it. */
	if (__atomic_load_n(&d->done, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&d->link_lock);
	if (!d->broken) {
		d->broken = true;
		shutdown(d->fd, SHUT_RDWR);
		shutdown(d->rq, SHUT_RDWR);
		log_warnx("incoming post-copy: the link to the source broke: %s", why);
	}
	pthread_mutex_unlock(&d->link_lock);
}

/* Ask for a page on the request channel (under link_lock); false if the link is broken. */
static bool pc_dest_ask(struct pc_dest *d, uint64_t gpa)
{
	struct pc_hdr h = { .type = PC_REQ, .gpa = gpa };
	bool ok;

	pthread_mutex_lock(&d->link_lock);
	ok = !d->broken && !pc_send(d->rq, &h, NULL);
	pthread_mutex_unlock(&d->link_lock);
	return ok;
}

/* A fault: ask for the page (once), or give a page outside the set its zeros. */
static void pc_dest_fault(struct pc_dest *d, uint64_t addr)
{
	uint64_t gpa, pg;
	unsigned int ri;

	if (!pc_locate_host(d->vm, addr, &ri, &pg))
		return;
	gpa = d->vm->mem[ri].gpa + pg * PC_PAGE;
	if (!pc_test(d->set.bits[ri], pg)) {
		/* Never written here and not missing: a zero page the source skipped. */
		struct uffdio_zeropage z = {
			.range = { (uintptr_t)d->vm->mem[ri].host + pg * PC_PAGE, PC_PAGE },
		};

		if (ioctl(d->uffd, UFFDIO_ZEROPAGE, &z) && errno != EEXIST)
			log_warn("incoming post-copy: cannot zero a page");
		return;
	}
	if (pc_test(d->got[ri], pg) || !pc_test_set(d->asked[ri], pg))
		return;
	pthread_mutex_lock(&d->lock);
	d->requested++;
	if (d->nout < PC_OUTSTANDING) {
		d->out[d->nout].gpa = gpa;
		clock_gettime(CLOCK_MONOTONIC, &d->out[d->nout].t);
		d->nout++;
	}
	pthread_mutex_unlock(&d->lock);
	/* Broken: asked again once the source is back (pc_dest_recover). */
	if (!pc_dest_ask(d, gpa))
		pc_dest_break(d, "cannot send a request");
}

/* The fault thread: uffd events become requests; the request channel's pages are placed. */
static void *pc_dest_fault_thread(void *opaque)
{
	struct pc_dest *d = opaque;
	uint8_t *buf = malloc(PC_BUF);
	char why[256];

	if (!buf)
		pc_dest_lost(d, "out of memory");
	while (!__atomic_load_n(&d->done, __ATOMIC_ACQUIRE) &&
	       !__atomic_load_n(&d->stop, __ATOMIC_ACQUIRE)) {
		struct pollfd p[2] = { { .fd = d->uffd, .events = POLLIN }, { .fd = -1 } };
		bool broken;
		int n, rq;

		pthread_mutex_lock(&d->link_lock);
		broken = d->broken;
		rq = d->rq;
		pthread_mutex_unlock(&d->link_lock);
		if (!broken)
			p[1] = (struct pollfd){ .fd = rq, .events = POLLIN };
		n = poll(p, 2, PC_POLL_MS);
		if (n < 0 && errno != EINTR)
			pc_dest_lost(d, "poll failed");
		if (n <= 0)
			continue;
		if (p[0].revents & POLLIN) {
			struct uffd_msg msg[16];
			ssize_t k = read(d->uffd, msg, sizeof(msg));

			for (ssize_t i = 0; k > 0 && i < k / (ssize_t)sizeof(msg[0]); i++)
				if (msg[i].event == UFFD_EVENT_PAGEFAULT)
					pc_dest_fault(d, msg[i].arg.pagefault.address & ~(uint64_t)(PC_PAGE - 1));
		}
		if (!broken && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
			struct pc_hdr h;
			int ret;

			/* Under link_lock: the receive thread swaps rq only when we let it. */
			pthread_mutex_lock(&d->link_lock);
			ret = d->broken || d->rq != rq ? -EAGAIN :
			      pc_recv(rq, &h, buf, PC_BUF, why, sizeof(why));
			pthread_mutex_unlock(&d->link_lock);
			if (ret == -EAGAIN)
				continue;
			if (!ret && h.type != PC_PAGES) {
				snprintf(why, sizeof(why), "post-copy frame type %u on the request "
					 "channel", h.type);
				ret = -EPROTO;
			}
			if (ret && __atomic_load_n(&d->done, __ATOMIC_ACQUIRE))
				break;
			if (ret) {
				char w[300];

				snprintf(w, sizeof(w), "the request channel: %s", why);
				pc_dest_break(d, w);
				continue;
			}
			pc_dest_place(d, h.gpa, buf, h.len);
		}
	}
	free(buf);
	return NULL;
}

/* One frame of type `type` (len 0) with gpa == token on fd within 10 s. */
static bool pc_dest_hello(int fd, uint16_t type, uint64_t token)
{
	struct timeval tv = { MIG_IO_TIMEOUT_MS / 1000, 0 };
	uint8_t hdr[PC_HDR_LEN + 4];
	struct pc_hdr h;
	char why[128];

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return recv(fd, hdr, sizeof(hdr), MSG_WAITALL) == (ssize_t)sizeof(hdr) &&
	       !pc_hdr_decode(hdr, &h, why, sizeof(why)) && h.type == type &&
	       le32_get(hdr + PC_HDR_LEN) == pc_frame_crc(hdr, NULL, 0) && h.gpa == token;
}

int pc_dest_accept_hello(int lfd, const char *addr, uint16_t type, uint64_t token, int wait_ms,
			 const int *stop, int *out, char *err, size_t len)
{
	struct timespec t0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		double left = wait_ms > 0 ? wait_ms - ms_since(&t0) : 60000;

		if (stop && __atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
			snprintf(err, len, "stopped");
			return -ECANCELED;
		}
		char peer[128], why[256];
		int fd, ret;

		if (left <= 0) {
			snprintf(err, len, "the source did not connect within %d s", wait_ms / 1000);
			return -ETIMEDOUT;
		}
		ret = migrate_accept(lfd, addr, (int)MIN(left, stop ? 1000.0 : 60000.0), &fd, peer,
				     sizeof(peer), why, sizeof(why));
		if (ret == -ETIMEDOUT || ret == -EINTR || ret == -EACCES || ret == -ECONNABORTED)
			continue;
		if (ret) {
			snprintf(err, len, "%s", why);
			return ret;
		}
		if (pc_dest_hello(fd, type, token)) {
			*out = fd;
			return 0;
		}
		log_warnx("incoming post-copy: a connection from %s was not the source's: dropped",
			  peer);
		close(fd);
	}
}

/*
 * The link broke: keep the VM as it is (its vCPUs wait on their pages),
 * take the source's new connections on the listener (RESUME, then HELLO),
 * answer MISSING, ask again for every page asked for and not placed.
 * Gives up (the VM is lost) after d->wait_s.
 */
static void pc_dest_recover(struct pc_dest *d)
{
	int fd = -1, rq = -1, ret;
	char err[256];
	struct pc_set now = { .token = d->set.token, .nr = d->set.nr };
	uint8_t *buf = NULL;
	uint64_t left = d->missing - __atomic_load_n(&d->received, __ATOMIC_ACQUIRE);
	size_t n;

	char how[64] = "for ever";

	if (__atomic_load_n(&d->done, __ATOMIC_ACQUIRE))
		return;
	if (d->lfd < 0)
		pc_dest_lost(d, "the link to the source broke");
	if (d->wait_s)
		snprintf(how, sizeof(how), "up to %u s (--incoming-timeout)", d->wait_s);
	log_warnx("incoming post-copy: %llu pages still missing; the vCPUs that need one wait; "
		  "waiting %s for the source on %s (its own reconnect, or godwit migrate-resume "
		  "there)", (unsigned long long)left, how, d->addr);
	for (;;) {
		ret = pc_dest_accept_hello(d->lfd, d->addr, PC_RESUME, d->set.token,
					   d->wait_s ? (int)d->wait_s * 1000 : -1, &d->stop, &fd, err,
					   sizeof(err));
		if (!ret)
			ret = pc_dest_accept_hello(d->lfd, d->addr, PC_HELLO, d->set.token,
						   MIG_IO_TIMEOUT_MS, &d->stop, &rq, err, sizeof(err));
		if (ret == -ECANCELED) {
			if (fd >= 0)
				close(fd);
			return;
		}
		if (ret == -ETIMEDOUT && fd >= 0) {
			/* RESUME without its request channel: wait for the next try. */
			close(fd);
			fd = -1;
			continue;
		}
		if (ret) {
			char w[300];

			snprintf(w, sizeof(w), "the link to the source broke, and %s", err);
			pc_dest_lost(d, w);
		}
		break;
	}
	/* MISSING: the pages of the set not placed yet. */
	for (unsigned int i = 0; i < d->set.nr; i++) {
		size_t words = pc_words(d->set.pages[i]);

		now.gpa[i] = d->set.gpa[i];
		now.pages[i] = d->set.pages[i];
		now.bits[i] = calloc(words ? words : 1, sizeof(uint64_t));
		if (!now.bits[i])
			pc_dest_lost(d, "out of memory");
		for (size_t w = 0; w < words; w++)
			now.bits[i][w] = d->set.bits[i][w] &
					 ~__atomic_load_n(&d->got[i][w], __ATOMIC_ACQUIRE);
	}
	n = pc_set_size_of(&now);
	buf = malloc(n);
	if (!buf)
		pc_dest_lost(d, "out of memory");
	pc_set_encode_set(&now, buf);
	ret = pc_send(fd, &(struct pc_hdr){ .type = PC_MISSING, .len = (uint32_t)n }, buf);
	free(buf);
	if (ret) {
		/* The new link broke already: the next recovery asks again. */
		log_warnx("incoming post-copy: cannot send the missing pages to the source");
	}
	pthread_mutex_lock(&d->link_lock);
	if (d->own_fds) {
		close(d->fd);
		close(d->rq);
	}
	d->own_fds = true;
	d->fd = fd;
	d->rq = rq;
	d->broken = ret != 0;
	d->recoveries++;
	/* Every page asked for and not placed, asked again. */
	for (unsigned int i = 0; !d->broken && i < d->set.nr; i++)
		for (size_t w = 0; w < pc_words(d->set.pages[i]); w++) {
			uint64_t bits = now.bits[i][w] & __atomic_load_n(&d->asked[i][w], __ATOMIC_ACQUIRE);

			while (bits && !d->broken) {
				uint64_t p = w * 64 + (uint64_t)__builtin_ctzll(bits);
				struct pc_hdr h = { .type = PC_REQ, .gpa = d->set.gpa[i] + p * PC_PAGE };

				bits &= bits - 1;
				if (pc_send(d->rq, &h, NULL)) {
					d->broken = true;
					shutdown(d->fd, SHUT_RDWR);
					shutdown(d->rq, SHUT_RDWR);
				}
			}
		}
	pthread_mutex_unlock(&d->link_lock);
	log_info("incoming post-copy: the source is back (%llu pages still missing)",
		 (unsigned long long)pc_set_count(&now));
	pc_set_free(&now);
}

/* The receive thread: the background push on the main connection; recovers a broken link. */
static void *pc_dest_recv_thread(void *opaque)
{
	struct pc_dest *d = opaque;
	uint8_t *buf = malloc(PC_BUF);
	struct timespec t_end;
	bool end = false;
	char why[256];

	if (!buf)
		pc_dest_lost(d, "out of memory");
	while (!__atomic_load_n(&d->done, __ATOMIC_ACQUIRE) &&
	       !__atomic_load_n(&d->stop, __ATOMIC_ACQUIRE)) {
		struct pollfd p = { .fd = -1, .events = POLLIN };
		struct pc_hdr h;
		bool broken;
		int n, ret;

		pthread_mutex_lock(&d->link_lock);
		broken = d->broken;
		p.fd = d->fd;
		pthread_mutex_unlock(&d->link_lock);
		if (broken) {
			pc_dest_recover(d);
			end = false;
			continue;
		}
		if (end && ms_since(&t_end) > MIG_IO_TIMEOUT_MS)
			pc_dest_break(d, "the pages asked for did not come within 10 s of the end of "
				      "the push");
		n = poll(&p, 1, PC_POLL_MS);
		if (n <= 0)
			continue;
		/* Only this thread swaps fd: it stays valid while we read it. */
		ret = pc_recv(p.fd, &h, buf, PC_BUF, why, sizeof(why));
		if (ret && __atomic_load_n(&d->done, __ATOMIC_ACQUIRE))
			break;
		if (!ret && h.type != PC_PAGES && h.type != PC_END) {
			snprintf(why, sizeof(why), "post-copy frame type %u from the source", h.type);
			ret = -EPROTO;
		}
		if (ret) {
			char w[300];

			snprintf(w, sizeof(w), "the main connection: %s", why);
			pc_dest_break(d, w);
			continue;
		}
		if (h.type == PC_END) {
			end = true;
			clock_gettime(CLOCK_MONOTONIC, &t_end);
			continue;
		}
		pc_dest_place(d, h.gpa, buf, h.len);
	}
	free(buf);
	/* Done: nobody comes back any more. */
	if (d->lfd >= 0) {
		migrate_unlisten(d->lfd, d->addr);
		d->lfd = -1;
	}
	return NULL;
}

bool pc_dest_done(struct pc_dest *d)
{
	return __atomic_load_n(&d->done, __ATOMIC_ACQUIRE);
}

int pc_dest_start(struct pc_dest *d, int fd, int rq)
{
	int ret;

	d->fd = fd;
	d->rq = rq;
	clock_gettime(CLOCK_MONOTONIC, &d->t0);
	if (!d->missing) {
		pc_dest_complete(d);
		return 0;
	}
	ret = -pthread_create(&d->tf, NULL, pc_dest_fault_thread, d);
	if (ret)
		return ret;
	ret = -pthread_create(&d->tr, NULL, pc_dest_recv_thread, d);
	if (ret) {
		__atomic_store_n(&d->stop, 1, __ATOMIC_RELEASE);
		pthread_join(d->tf, NULL);
		return ret;
	}
	d->started = true;
	return 0;
}

void pc_dest_free(struct pc_dest *d)
{
	if (!d)
		return;
	if (d->started) {
		__atomic_store_n(&d->stop, 1, __ATOMIC_RELEASE);
		pthread_join(d->tf, NULL);
		pthread_join(d->tr, NULL);
	}
	pc_dest_unregister(d);
	if (d->own_fds) {
		close(d->fd);
		close(d->rq);
	}
	if (d->lfd >= 0)
		migrate_unlisten(d->lfd, d->addr);
	pc_set_free(&d->set);
	for (unsigned int i = 0; i < 2; i++) {
		free(d->got[i]);
		free(d->asked[i]);
	}
	free(d->lat_us);
	pthread_mutex_destroy(&d->lock);
	pthread_mutex_destroy(&d->link_lock);
	free(d);
}
