/*
 * stream.c - what the snapshot/migration stream's writer and reader share
 * (stream.h, docs/stream-format.md): the chain of section checksums, zero
 * pages, section types and ids, the watchdog on the peer and what a failed
 * read or write means.  The configuration is stream_config.c's, the writer
 * stream_writer.c's, the reader stream_reader.c's.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <linux/kvm.h>
#include <linux/sockios.h>

#include "godwit/crc32c.h"
#include "godwit/dev.h"
#include "godwit/le.h"
#include "godwit/stream.h"
#include "godwit/vm.h"
#include "stream_int.h"

#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
bool stream_fuzz_ignore_crc;
#endif

uint32_t stream_chain_add(uint32_t chain, uint32_t crc)
{
	uint8_t b[4];

	le_put(b, crc, 4);
	return crc32c(chain, b, 4);
}

/* A page of zeroes?  Eight words per step, so a non-zero page exits early. */
/*
 * stream_page_is_zero - is the 4 KiB page at p all zero bytes?  The first
 * and last words first (most non-zero pages differ there: a page's header,
 * its tail), then 256 bytes at a time OR-ed together, with AVX2 where the
 * CPU has it (checked once).  Measured (make unit, stream_zero_check_speed).
 */
static bool page_is_zero_words(const uint8_t *p)
{
	for (size_t i = 0; i < STREAM_PAGE_SIZE; i += 256) {
		uint64_t acc = 0;

		for (size_t j = 0; j < 256; j += 8) {
			uint64_t w;

			memcpy(&w, p + i + j, 8);
			acc |= w;
		}
		if (acc)
			return false;
	}
	return true;
}

__attribute__((target("avx2")))
static bool page_is_zero_avx2(const uint8_t *p)
{
	for (size_t i = 0; i < STREAM_PAGE_SIZE; i += 256) {
		const __m256i *v = (const __m256i *)(const void *)(p + i);
		__m256i acc = _mm256_or_si256(
			_mm256_or_si256(_mm256_or_si256(_mm256_loadu_si256(v), _mm256_loadu_si256(v + 1)),
					_mm256_or_si256(_mm256_loadu_si256(v + 2), _mm256_loadu_si256(v + 3))),
			_mm256_or_si256(_mm256_or_si256(_mm256_loadu_si256(v + 4), _mm256_loadu_si256(v + 5)),
					_mm256_or_si256(_mm256_loadu_si256(v + 6), _mm256_loadu_si256(v + 7))));

		if (!_mm256_testz_si256(acc, acc))
			return false;
	}
	return true;
}

static bool zero_avx2;

__attribute__((constructor))
static void page_is_zero_init(void)
{
	__builtin_cpu_init();
	zero_avx2 = __builtin_cpu_supports("avx2");
}

bool stream_page_is_zero(const uint8_t *p)
{
	uint64_t a, b;

	memcpy(&a, p, 8);
	memcpy(&b, p + STREAM_PAGE_SIZE - 8, 8);
	if (a | b)
		return false;
	return zero_avx2 ? page_is_zero_avx2(p) : page_is_zero_words(p);
}

const char *stream_type_name(unsigned int type)
{
	switch (type) {
	case STREAM_CONFIG: return "config";
	case STREAM_RAM:    return "ram";
	case STREAM_CPU:    return "cpu";
	case STREAM_DEVICE: return "device";
	case STREAM_VM:     return "vm";
	case STREAM_EOF:    return "eof";
	case STREAM_DISK:   return "disk";
	default:            return "unknown";
	}
}

bool stream_type_known(unsigned int type)
{
	return type >= STREAM_CONFIG && type <= STREAM_DISK;
}

bool stream_id_valid(const char *id, size_t len)
{
	if (!len || len > STREAM_ID_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = id[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* ------------------------------------------------------------------ */
/* Watchdog on the peer (stream_watchdog, stream.h)                    */

uint64_t stream_wd_now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

void stream_wd_set(struct wd_state *s, const struct stream_watchdog *wd)
{
	memset(s, 0, sizeof(*s));
	if (!wd || (!wd->deadline_ms && (!wd->min_bytes || !wd->window_ms)))
		return;
	s->wd = *wd;
	s->on = true;
	clock_gettime(CLOCK_MONOTONIC, &s->t0);
}

/* Before a read or write: past the deadline?  0, or -ETIMEDOUT with why in buf. */
int stream_wd_before(const struct wd_state *s, char *buf, size_t len)
{
	uint64_t t0 = (uint64_t)s->t0.tv_sec * 1000000000ull + (uint64_t)s->t0.tv_nsec;

	if (!s->on || !s->wd.deadline_ms || stream_wd_now_ns() - t0 < s->wd.deadline_ms * 1000000ull)
		return 0;
	snprintf(buf, len, "the migration took longer than its deadline of %llu s",
		 (unsigned long long)(s->wd.deadline_ms / 1000));
	return -ETIMEDOUT;
}

/* After one read or write that waited ns and moved bytes: too slow a peer? */
int stream_wd_after(struct wd_state *s, uint64_t ns, uint64_t bytes, bool rd, char *buf,
		    size_t len)
{
	if (!s->on || !s->wd.min_bytes || !s->wd.window_ms)
		return 0;
	s->win_ns += ns;
	s->win_bytes += bytes;
	if (s->win_ns < (uint64_t)s->wd.window_ms * 1000000ull)
		return 0;
	if (s->win_bytes < s->wd.min_bytes) {
		snprintf(buf, len, "too slow: the peer %s %llu bytes in %.1f s of waiting (at "
			 "least %llu expected)", rd ? "sent" : "took",
			 (unsigned long long)s->win_bytes, (double)s->win_ns / 1e9,
			 (unsigned long long)s->wd.min_bytes);
		return -ETIMEDOUT;
	}
	s->win_ns = 0;
	s->win_bytes = 0;
	return 0;
}

/*
 * stream_io_err - what failed I/O on fd means: a socket's SO_RCVTIMEO or SO_SNDTIMEO
 * (the migration sets both) ends a blocked call with EAGAIN, which says
 * "Resource temporarily unavailable"; that is a silent peer, said so with the
 * timeout, and *e becomes ETIMEDOUT.  Anything else is strerror(*e).
 */
const char *stream_io_err(int fd, bool rd, int *e, char *buf, size_t len)
{
	struct timeval tv;
	socklen_t tl = sizeof(tv);

	if ((*e == EAGAIN || *e == EWOULDBLOCK) &&
	    getsockopt(fd, SOL_SOCKET, rd ? SO_RCVTIMEO : SO_SNDTIMEO, &tv, &tl) == 0 &&
	    (tv.tv_sec || tv.tv_usec)) {
		snprintf(buf, len, "timed out: the peer %s for %lld.%03lld s",
			 rd ? "sent nothing" : "took nothing", (long long)tv.tv_sec,
			 (long long)tv.tv_usec / 1000);
		*e = ETIMEDOUT;
		return buf;
	}
	return strerror(*e);
}
