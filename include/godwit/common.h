/*
 * common.h - small helpers shared by every godwit subsystem.
 */
#ifndef GODWIT_COMMON_H
#define GODWIT_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdatomic.h>

#define __must_check __attribute__((warn_unused_result))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define ALIGN_UP(x, a) (((x) + ((a) - 1)) & ~((__typeof__(x))(a) - 1))
#define ALIGN_DOWN(x, a) ((x) & ~((__typeof__(x))(a) - 1))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#define KiB (1024ULL)
#define MiB (1024ULL * KiB)
#define GiB (1024ULL * MiB)

/*
 * Statistics counters (_Atomic uint64_t) kept for GET /metrics: relaxed,
 * because nothing is ordered by them; they are never guest state.
 */
#define STAT_ADD(c, n) atomic_fetch_add_explicit(&(c), (uint64_t)(n), memory_order_relaxed)
#define STAT_GET(c)    atomic_load_explicit(&(c), memory_order_relaxed)

/* SQLite-style defensive checks: true when the "impossible" happens. */
#define NEVER(x) __builtin_expect(!!(x), 0)
#define ALWAYS(x) __builtin_expect(!!(x), 1)

/* Process exit codes of `godwit run` (documented in docs/cli.md). */
enum godwit_exit {
	EXIT_POWEROFF = 0,      /* guest powered off, or API shutdown */
	EXIT_ERROR = 1,         /* could not start: bad config, missing file, no KVM */
	EXIT_USAGE = 2,         /* command-line syntax error */
	EXIT_REBOOT = 3,        /* guest asked for a reset/reboot */
	EXIT_TRIPLE_FAULT = 4,  /* KVM_EXIT_SHUTDOWN: guest triple-faulted */
	EXIT_INTERNAL = 5,      /* KVM internal error, emulation failure, VMM bug */
	EXIT_MIGRATED = 6,      /* the VM now runs elsewhere (reserved) */
	EXIT_KILLED = 7,        /* stopped by the console escape or a signal */
};

/* Parse "512M", "8G", "1048576", "64K"; returns 0 or -EINVAL/-ERANGE. */
int parse_size(const char *s, uint64_t *out) __must_check;
/* Milliseconds of CLOCK_MONOTONIC since t0 (taken with clock_gettime). */
struct timespec;
double ms_since(const struct timespec *t0);
/* Milliseconds from t0 to t1 (negative if t1 is earlier). */
double ms_between(const struct timespec *t0, const struct timespec *t1);
/*
 * iov_advance - drop the first k bytes (at most what they hold) of the *n
 * buffers at *iov, after a short readv/writev: *iov and *n move past the
 * buffers done, the first one left starts where the transfer stopped.
 */
struct iovec;
void iov_advance(struct iovec **iov, int *n, size_t k);
/* A UUID as text: 36 lowercase hex digits and dashes (8-4-4-4-12), NUL-terminated. */
#define UUID_STR_LEN 37
const char *uuid_str(const uint8_t u[16], char s[UUID_STR_LEN]);
/* True if s[0..len) is well-formed UTF-8 (no overlong forms, surrogates or > U+10FFFF). */
bool utf8_valid(const char *s, size_t len);

#endif
