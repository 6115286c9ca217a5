/*
 * conn.c - a migration connection, plain or TLS (conn.h).
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include "godwit/conn.h"
#include "godwit/tls.h"

ssize_t conn_send(struct conn *c, const void *buf, size_t n, int flags)
{
	if (c->tls)
		return tls_send(c->tls, buf, n, flags);
	return send(c->fd, buf, n, flags | MSG_NOSIGNAL);
}

ssize_t conn_recv(struct conn *c, void *buf, size_t n, int flags)
{
	if (c->tls)
		return tls_recv(c->tls, buf, n, flags);
	return recv(c->fd, buf, n, flags);
}

int conn_wait_input(struct conn *c, int timeout_ms)
{
	struct pollfd p = { .fd = c->fd, .events = POLLIN };

	if (c->tls && tls_pending(c->tls))
		return 1;
	return poll(&p, 1, timeout_ms);
}

const char *conn_strerror(const struct conn *c, int e)
{
	if (e == EPROTO && c->tls && tls_sess_error(c->tls)[0])
		return tls_sess_error(c->tls);
	return strerror(e);
}
