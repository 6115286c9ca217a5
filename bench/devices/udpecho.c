/*
 * bench/devices/udpecho.c - the host side of the tier-1 network benchmark:
 * a UDP client for the test guest's echo responder (guest/net.c, port 7).
 *
 *   udpecho IP SIZE WINDOW SECS
 *
 * Keeps WINDOW datagrams of SIZE payload bytes in flight for SECS seconds
 * and counts the echoes that come back intact.  Each payload starts with a
 * sequence number and carries a pattern derived from it, checked on return.
 * A datagram not echoed within 50 ms is counted lost and its place in the
 * window reused (a late echo is then ignored).  Before
 * the clock starts, one datagram is retried for up to 10 s (ARP, a guest
 * still starting).  Prints one line:
 *
 *   udpecho: size=S window=W sent=N echoed=N lost=N bad=N secs=S.mmm
 *            mib_s=X.Y pps=N rtt_us_p50=X.Y rtt_us_p10=X.Y rtt_us_p90=X.Y
 *
 * mib_s is echoed payload MiB per second (one direction; the same bytes
 * also went the other way), pps echoed datagrams per second, rtt_us the
 * round-trip percentiles.  Exit status 0 if anything was echoed and
 * nothing came back corrupted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RING		(1u << 16)	/* sequence-number slots */
#define MAX_SIZE	1472		/* no IP fragments at MTU 1500 */
#define LOSS_NS		50000000ull
#define MAX_RTT		(1u << 22)	/* RTT samples kept */

struct slot {
	uint64_t seq;
	uint64_t t_sent;
	int pending;
};

static struct slot ring[RING];
static uint32_t rtts[MAX_RTT];
static unsigned nrtt;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void fill(unsigned char *p, unsigned size, uint64_t seq)
{
	uint64_t x = seq * 0x9e3779b97f4a7c15ull + 1;

	memcpy(p, &seq, 8);
	for (unsigned i = 8; i < size; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (unsigned char)x;
	}
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static double pct(unsigned p)
{
	if (!nrtt)
		return 0;
	return rtts[(uint64_t)(nrtt - 1) * p / 100] / 1000.0;
}

int main(int argc, char **argv)
{
	unsigned size, window, outstanding = 0;
	uint64_t seq = 0, sent = 0, echoed = 0, lost = 0, bad = 0, bytes = 0;
	uint64_t t0, deadline, oldest = 0, t_last = 0, end;
	unsigned char buf[2048], want[2048];
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(7) };
	double secs;
	int fd, big = 4 << 20;

	if (argc != 5 || inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
		fprintf(stderr, "usage: udpecho IP SIZE WINDOW SECS\n");
		return 2;
	}
	size = (unsigned)atoi(argv[2]);
	window = (unsigned)atoi(argv[3]);
	secs = atof(argv[4]);
	if (size < 8 || size > MAX_SIZE || window < 1 || window > RING / 2 || secs <= 0) {
		fprintf(stderr, "udpecho: SIZE 8..%d, WINDOW 1..%u, SECS > 0\n", MAX_SIZE, RING / 2);
		return 2;
	}
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		perror("udpecho: socket");
		return 1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));

	/* Warm-up: one echo (ARP resolved, responder running), then start clean. */
	end = now_ns() + 10000000000ull;
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		uint64_t w = UINT64_MAX;

		fill(buf, 64, w);
		send(fd, buf, 64, 0);
		if (poll(&pfd, 1, 200) > 0 && recv(fd, buf, sizeof(buf), 0) == 64 &&
		    !memcmp(buf, &w, 8))
			break;
		if (now_ns() > end) {
			fprintf(stderr, "udpecho: no echo from %s in 10 s\n", argv[1]);
			return 1;
		}
	}
	while (recv(fd, buf, sizeof(buf), 0) > 0)
		;

	t0 = now_ns();
	deadline = t0 + (uint64_t)(secs * 1e9);
	for (;;) {
		uint64_t now = now_ns();
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t n;

		/* Datagrams sent more than LOSS_NS ago and not echoed are lost. */
		for (; oldest < seq; oldest++) {
			struct slot *s = &ring[oldest % RING];

			if (!s->pending || s->seq != oldest)
				continue;
			if (now - s->t_sent <= LOSS_NS)
				break;
			s->pending = 0;
			lost++;
			outstanding--;
		}
		if (now < deadline) {
			while (outstanding < window) {
				struct slot *s = &ring[seq % RING];

				fill(buf, size, seq);
				if (send(fd, buf, size, 0) < 0)
					break;
				*s = (struct slot){ seq, now, 1 };
				seq++;
				sent++;
				outstanding++;
			}
		} else if (!outstanding) {
			break;
		}
		if (poll(&pfd, 1, 5) <= 0)
			continue;
		while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) {
			uint64_t k, t = now_ns();
			struct slot *s;

			if (n < 8) {
				bad++;
				continue;
			}
			memcpy(&k, buf, 8);
			s = &ring[k % RING];
			if (!s->pending || s->seq != k)
				continue;	/* late (given up) or the warm-up's */
			fill(want, size, k);
			if ((unsigned)n != size || memcmp(buf, want, size)) {
				bad++;
				continue;
			}
			s->pending = 0;
			outstanding--;
			echoed++;
			bytes += (uint64_t)n;
			if (nrtt < MAX_RTT)
				rtts[nrtt++] = (uint32_t)(t - s->t_sent);
			t_last = t;
		}
	}
	/* Until the last echo, or the deadline if the echoes stopped before it. */
	secs = (double)((t_last > deadline ? t_last : deadline) - t0) / 1e9;
	qsort(rtts, nrtt, sizeof(rtts[0]), cmp_u32);
	printf("udpecho: size=%u window=%u sent=%llu echoed=%llu lost=%llu bad=%llu secs=%.3f "
	       "mib_s=%.1f pps=%.0f rtt_us_p50=%.1f rtt_us_p10=%.1f rtt_us_p90=%.1f\n",
	       size, window, (unsigned long long)sent, (unsigned long long)echoed,
	       (unsigned long long)lost, (unsigned long long)bad, secs,
	       secs > 0 ? bytes / secs / 1048576 : 0, secs > 0 ? echoed / secs : 0,
	       pct(50), pct(10), pct(90));
	return echoed && !bad ? 0 : 1;
}
