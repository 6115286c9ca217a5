/*
 * log.h - diagnostics to stderr, vmd style: log_warn() appends strerror(errno),
 * log_warnx() does not.  Messages start with the function name.
 */
#ifndef GODWIT_LOG_H
#define GODWIT_LOG_H

#include <stdnoreturn.h>

extern int log_verbose;

void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Only before the first KVM_RUN. */
noreturn void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
