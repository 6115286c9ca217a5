/*
 * conn.h - one end of a migration connection: a connected socket, plain or
 * under a TLS session (tls.h).  The control messages (handoff.h) go through
 * it; the stream writer and reader take the session with
 * stream_writer_set_tls() / stream_reader_set_tls().
 */
#ifndef GODWIT_CONN_H
#define GODWIT_CONN_H

#include <sys/types.h>

#include "godwit/common.h"

struct tls_sess;

struct conn {
	int fd;
	struct tls_sess *tls;          /* NULL: plain */
};

/* A plain connection on fd. */
static inline struct conn conn_plain(int fd)
{
	return (struct conn){ .fd = fd, .tls = NULL };
}

/* send() (never SIGPIPE) / recv(); flags: MSG_DONTWAIT or 0.  -1 and errno as those. */
ssize_t conn_send(struct conn *c, const void *buf, size_t n, int flags);
ssize_t conn_recv(struct conn *c, void *buf, size_t n, int flags);
/* Wait up to timeout_ms for input (bytes already in the TLS session count). 1, 0, -1. */
int conn_wait_input(struct conn *c, int timeout_ms);
/* For an error message: the TLS failure behind an EPROTO, or strerror(e). */
const char *conn_strerror(const struct conn *c, int e);

#endif
