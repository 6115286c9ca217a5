/*
 * devbench.c - the Linux test guest's device benchmark helper (static, in the
 * initramfs as /bin/devbench; godwit.workload=bench in guest/linux/init) and
 * the TCP peer the benchmark runs on the host side (bench/devices/).
 *
 *   devbench disk DEV MODE BS QD SECS   MODE: seqwrite seqread randread randwrite
 *   devbench tcp-recv IP PORT SECS      read from IP:PORT for SECS
 *   devbench tcp-send IP PORT SECS      write to IP:PORT for SECS
 *   devbench tcp-serve SRC SINK SECS    peer: port SRC sends to whoever connects,
 *                                       port SINK reads until EOF; exits after SECS
 *
 * disk: O_DIRECT requests of BS bytes (a multiple of 512) on DEV, QD threads
 * each with one request in flight, for SECS seconds over the whole device
 * (sequential modes share one cursor and wrap around; random modes pick
 * BS-aligned offsets).  Prints the test guest's line (guest/README.md):
 *   diskbench: mode=M bs=B qd=Q ops=N mib=N secs=S.mmm iops=N mib_s=X.Y lat_us=X.Y errors=N
 * tcp-recv / tcp-send print
 *   devbench: tcp-recv|tcp-send bytes=N secs=S.mmm mib_s=X.Y
 * tcp-recv times from the first byte to SECS later; tcp-send writes for
 * SECS, then shuts its side down and stops the clock when the peer has read
 * everything and closed (so no byte is counted that was only buffered).
 * Exit status: 0, or 1 on an error (a message on stderr).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_QD		64
#define NET_BUF		(256 * 1024)

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fill_random(void *p, size_t n, uint64_t x)
{
	uint64_t *w = p;

	for (size_t i = 0; i < n / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[i] = x;
	}
}

/* ---- disk ---- */

static struct {
	int fd;
	int write, seq;
	uint64_t bs, nblocks;		/* device size in bs units */
	double deadline;
	atomic_uint_fast64_t cursor;	/* sequential: next block */
} dk;

struct worker {
	pthread_t thread;
	unsigned id;
	uint64_t ops, errors;
	int err;
};

static void *disk_worker(void *arg)
{
	struct worker *w = arg;
	uint64_t rng = 0x9e3779b97f4a7c15ull * (w->id + 1) ^ (uint64_t)(now_s() * 1e9);
	void *buf;

	if (posix_memalign(&buf, 4096, dk.bs)) {
		w->err = ENOMEM;
		return NULL;
	}
	fill_random(buf, dk.bs, rng | 1);
	while (now_s() < dk.deadline) {
		uint64_t blk;
		ssize_t r;

		if (dk.seq) {
			blk = atomic_fetch_add(&dk.cursor, 1) % dk.nblocks;
		} else {
			rng ^= rng << 13;
			rng ^= rng >> 7;
			rng ^= rng << 17;
			blk = rng % dk.nblocks;
		}
		r = dk.write ? pwrite(dk.fd, buf, dk.bs, (off_t)(blk * dk.bs)) :
			       pread(dk.fd, buf, dk.bs, (off_t)(blk * dk.bs));
		if (r == (ssize_t)dk.bs) {
			w->ops++;
		} else {
			if (!w->errors++)
				fprintf(stderr, "devbench: %s at %llu: %s\n", dk.write ? "write" : "read",
					(unsigned long long)(blk * dk.bs),
					r < 0 ? strerror(errno) : "short transfer");
		}
	}
	free(buf);
	return NULL;
}

static int cmd_disk(char **argv)
{
	const char *dev = argv[0], *mode = argv[1];
	unsigned qd = (unsigned)atoi(argv[3]);
	double secs = atof(argv[4]), t0, t1, us;
	struct worker w[MAX_QD];
	uint64_t size = 0, ops = 0, errors = 0;

	dk.bs = strtoull(argv[2], NULL, 0);
	if (!strcmp(mode, "seqwrite") || !strcmp(mode, "randwrite"))
		dk.write = 1;
	else if (strcmp(mode, "seqread") && strcmp(mode, "randread"))
		goto usage;
	dk.seq = !strncmp(mode, "seq", 3);
	if (!dk.bs || dk.bs % 512 || qd < 1 || qd > MAX_QD || secs <= 0)
		goto usage;
	dk.fd = open(dev, (dk.write ? O_RDWR : O_RDONLY) | O_DIRECT);
	if (dk.fd < 0 || ioctl(dk.fd, BLKGETSIZE64, &size)) {
		fprintf(stderr, "devbench: %s: %s\n", dev, strerror(errno));
		return 1;
	}
	dk.nblocks = size / dk.bs;
	if (!dk.nblocks) {
		fprintf(stderr, "devbench: %s is smaller than %llu bytes\n", dev,
			(unsigned long long)dk.bs);
		return 1;
	}
	t0 = now_s();
	dk.deadline = t0 + secs;
	for (unsigned i = 0; i < qd; i++) {
		w[i] = (struct worker){ .id = i };
		if (pthread_create(&w[i].thread, NULL, disk_worker, &w[i])) {
			fprintf(stderr, "devbench: pthread_create failed\n");
			return 1;
		}
	}
	for (unsigned i = 0; i < qd; i++) {
		pthread_join(w[i].thread, NULL);
		if (w[i].err) {
			fprintf(stderr, "devbench: worker %u: %s\n", i, strerror(w[i].err));
			return 1;
		}
		ops += w[i].ops;
		errors += w[i].errors;
	}
	t1 = now_s();
	close(dk.fd);
	us = (t1 - t0) * 1e6;
	printf("diskbench: mode=%s bs=%llu qd=%u ops=%llu mib=%llu secs=%.3f iops=%.0f mib_s=%.1f "
	       "lat_us=%.1f errors=%llu\n", mode, (unsigned long long)dk.bs, qd,
	       (unsigned long long)ops, (unsigned long long)(ops * dk.bs >> 20), t1 - t0,
	       ops / (t1 - t0), ops * dk.bs / (t1 - t0) / 1048576, ops ? us * qd / ops : 0,
	       (unsigned long long)errors);
	fflush(stdout);
	return errors ? 1 : 0;
usage:
	fprintf(stderr, "usage: devbench disk DEV seqwrite|seqread|randread|randwrite BS QD SECS\n");
	return 2;
}

/* ---- TCP ---- */

static int tcp_connect(const char *ip, const char *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port)) };
	double end = now_s() + 20;
	int fd;

	if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) {
		fprintf(stderr, "devbench: bad address %s\n", ip);
		return -1;
	}
	/* The peer may still be starting: retry for 20 s. */
	for (;;) {
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0)
			break;
		if (!connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
			return fd;
		close(fd);
		if (now_s() > end)
			break;
		usleep(200000);
	}
	fprintf(stderr, "devbench: connect %s:%s: %s\n", ip, port, strerror(errno));
	return -1;
}

static void tcp_print(const char *what, uint64_t bytes, double secs)
{
	printf("devbench: %s bytes=%llu secs=%.3f mib_s=%.1f\n", what, (unsigned long long)bytes,
	       secs, secs > 0 ? bytes / secs / 1048576 : 0);
	fflush(stdout);
}

static int cmd_tcp_recv(char **argv)
{
	double secs = atof(argv[2]), t0 = 0;
	static char buf[NET_BUF];
	uint64_t bytes = 0;
	int fd = tcp_connect(argv[0], argv[1]);

	if (fd < 0)
		return 1;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		double t = now_s();

		if (n <= 0) {
			fprintf(stderr, "devbench: tcp-recv: %s\n", n ? strerror(errno) : "peer closed");
			close(fd);
			return 1;
		}
		if (!t0) {
			t0 = t;
			continue;	/* the clock starts with the first byte */
		}
		bytes += (uint64_t)n;
		if (t - t0 >= secs) {
			tcp_print("tcp-recv", bytes, t - t0);
			break;
		}
	}
	close(fd);
	return 0;
}

static int cmd_tcp_send(char **argv)
{
	double secs = atof(argv[2]), t0, t;
	static char buf[NET_BUF];
	uint64_t bytes = 0;
	int fd = tcp_connect(argv[0], argv[1]);

	if (fd < 0)
		return 1;
	fill_random(buf, sizeof(buf), 12345);
	t0 = now_s();
	while (now_s() - t0 < secs) {
		ssize_t n = write(fd, buf, sizeof(buf));

		if (n <= 0) {
			fprintf(stderr, "devbench: tcp-send: %s\n", strerror(errno));
			close(fd);
			return 1;
		}
		bytes += (uint64_t)n;
	}
	/* Everything written must have reached the peer: it closes after our EOF. */
	shutdown(fd, SHUT_WR);
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	t = now_s();
	close(fd);
	tcp_print("tcp-send", bytes, t - t0);
	return 0;
}

static int tcp_listen(const char *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port)) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 4)) {
		fprintf(stderr, "devbench: listen on %s: %s\n", port, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * The peer: one connection at a time on each port, served from one poll
 * loop.  SRC: write until the reader goes away; SINK: read until EOF, then
 * close (which is what tcp-send waits for).
 */
static int cmd_tcp_serve(char **argv)
{
	static char buf[NET_BUF], junk[NET_BUF];
	int lsrc = tcp_listen(argv[0]), lsink = tcp_listen(argv[1]), src = -1, sink = -1;
	double end = now_s() + atof(argv[2]);

	if (lsrc < 0 || lsink < 0)
		return 1;
	signal(SIGPIPE, SIG_IGN);
	fill_random(buf, sizeof(buf), 54321);
	printf("devbench: tcp-serve listening src=%s sink=%s\n", argv[0], argv[1]);
	fflush(stdout);
	while (now_s() < end) {
		struct pollfd p[4] = {
			{ .fd = src < 0 ? lsrc : -1, .events = POLLIN },
			{ .fd = sink < 0 ? lsink : -1, .events = POLLIN },
			{ .fd = src, .events = POLLOUT },
			{ .fd = sink, .events = POLLIN },
		};

		if (poll(p, 4, 500) <= 0)
			continue;
		if (p[0].revents)
			src = accept4(lsrc, NULL, NULL, SOCK_NONBLOCK);
		if (p[1].revents)
			sink = accept4(lsink, NULL, NULL, SOCK_NONBLOCK);
		if (src >= 0 && p[2].revents) {
			ssize_t n = write(src, buf, sizeof(buf));

			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
				close(src);
				src = -1;
			}
		}
		if (sink >= 0 && p[3].revents) {
			ssize_t n = read(sink, junk, sizeof(junk));

			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
				close(sink);
				sink = -1;
			}
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 7 && !strcmp(argv[1], "disk"))
		return cmd_disk(argv + 2);
	if (argc == 5 && !strcmp(argv[1], "tcp-recv"))
		return cmd_tcp_recv(argv + 2);
	if (argc == 5 && !strcmp(argv[1], "tcp-send"))
		return cmd_tcp_send(argv + 2);
	if (argc == 5 && !strcmp(argv[1], "tcp-serve"))
		return cmd_tcp_serve(argv + 2);
	fprintf(stderr, "usage: devbench disk DEV MODE BS QD SECS | tcp-recv IP PORT SECS |\n"
		"       tcp-send IP PORT SECS | tcp-serve SRC_PORT SINK_PORT SECS\n");
	return 2;
}
