/*
 * migrate_addr.c - a migration's addresses and connections (migrate.h):
 * "tcp:HOST:PORT" and "unix:PATH" parsed and checked, the source's connect,
 * the destination's listen and accept, and the socket options both sides
 * set (no Nagle, large buffers, the silent-peer time-outs).
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "godwit/log.h"
#include "godwit/migrate.h"

struct mig_addr {
	bool unix_sock;
	char host[MIG_ADDR_MAX], port[16];
	struct sockaddr_un sun;
};

static int mig_addr_parse(const char *s, struct mig_addr *a, char *err, size_t len)
{
	memset(a, 0, sizeof(*a));
	if (!strncmp(s, "unix:", 5)) {
		const char *path = s + 5;

		if (!*path || strlen(path) >= sizeof(a->sun.sun_path)) {
			snprintf(err, len, "%s: a UNIX socket path of 1 to %zu bytes is needed", s,
				 sizeof(a->sun.sun_path) - 1);
			return -EINVAL;
		}
		a->unix_sock = true;
		a->sun.sun_family = AF_UNIX;
		memcpy(a->sun.sun_path, path, strlen(path) + 1);
		return 0;
	}
	if (!strncmp(s, "tcp:", 4)) {
		const char *h = s + 4, *colon = strrchr(h, ':');
		const char *hend = colon;
		char *end;
		long port;

		if (!colon)
			goto bad;
		if (*h == '[') {                /* [v6]:port */
			h++;
			if (hend == h || hend[-1] != ']')
				goto bad;
			hend--;
		}
		if ((size_t)(hend - h) >= sizeof(a->host))
			goto bad;
		memcpy(a->host, h, (size_t)(hend - h));
		a->host[hend - h] = '\0';
		errno = 0;
		port = strtol(colon + 1, &end, 10);
		if (errno || *end || end == colon + 1 || port < 1 || port > 65535)
			goto bad;
		snprintf(a->port, sizeof(a->port), "%ld", port);
		return 0;
	}
bad:
	snprintf(err, len, "%s: expected tcp:HOST:PORT or unix:PATH", s);
	return -EINVAL;
}

int migrate_addr_check(const char *addr, char *err, size_t len)
{
	struct mig_addr a;

	return mig_addr_parse(addr, &a, err, len);
}

static void mig_sock_opts(int fd, bool tcp)
{
	struct timeval tv = { .tv_sec = MIG_IO_TIMEOUT_MS / 1000 };
	int one = 1, buf = 4 << 20;

	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	/* TCP sizes its buffers itself (setting them turns that off); UNIX sockets do not. */
	if (!tcp) {
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
	}
	if (tcp) {
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	}
}

/* Connect to addr (SO_SNDTIMEO bounds connect() too). */
int migrate_connect(const char *addr, int *fdp, char *err, size_t len)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL, *ai;
	struct mig_addr a;
	int fd = -1, ret, e = 0;

	ret = mig_addr_parse(addr, &a, err, len);
	if (ret)
		return ret;
	if (a.unix_sock) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			goto fail;
		mig_sock_opts(fd, false);
		if (connect(fd, (struct sockaddr *)&a.sun, sizeof(a.sun)) < 0)
			goto fail;
		*fdp = fd;
		return 0;
	}
	ret = getaddrinfo(a.host, a.port, &hints, &res);
	if (ret) {
		snprintf(err, len, "%s: %s", addr, gai_strerror(ret));
		return -EHOSTUNREACH;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			e = errno;
			continue;
		}
		mig_sock_opts(fd, true);
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		e = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		errno = e ? e : ECONNREFUSED;
		goto fail;
	}
	*fdp = fd;
	return 0;
fail:
	e = errno == EAGAIN || errno == EINPROGRESS ? ETIMEDOUT : errno;
	snprintf(err, len, "cannot connect to %s: %s", addr, strerror(e));
	if (fd >= 0)
		close(fd);
	return -e;
}

int migrate_listen(const char *addr, int *lfd, char *err, size_t len)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *res = NULL;
	struct mig_addr a;
	int fd = -1, one = 1, ret;

	ret = mig_addr_parse(addr, &a, err, len);
	if (ret)
		return ret;
	if (a.unix_sock) {
		struct stat st;

		/* A stale socket file is replaced; any other file is not touched. */
		if (lstat(a.sun.sun_path, &st) == 0) {
			if (!S_ISSOCK(st.st_mode)) {
				snprintf(err, len, "%s exists and is not a socket", a.sun.sun_path);
				return -EEXIST;
			}
			fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (fd >= 0 && connect(fd, (struct sockaddr *)&a.sun, sizeof(a.sun)) == 0) {
				close(fd);
				snprintf(err, len, "%s: another process is listening there", addr);
				return -EADDRINUSE;
			}
			if (fd >= 0)
				close(fd);
			unlink(a.sun.sun_path);
		}
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || bind(fd, (struct sockaddr *)&a.sun, sizeof(a.sun)) < 0 ||
		    listen(fd, 1) < 0)
			goto fail;
		*lfd = fd;
		return 0;
	}
	ret = getaddrinfo(a.host[0] ? a.host : NULL, a.port, &hints, &res);
	if (ret) {
		snprintf(err, len, "%s: %s", addr, gai_strerror(ret));
		return -EINVAL;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail_ai;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 1) < 0)
		goto fail_ai;
	freeaddrinfo(res);
	*lfd = fd;
	return 0;
fail_ai:
	freeaddrinfo(res);
fail:
	ret = -errno;
	snprintf(err, len, "cannot listen on %s: %s", addr, strerror(errno));
	if (fd >= 0)
		close(fd);
	return ret;
}

int migrate_accept(int lfd, const char *addr, int *fdp, char *err, size_t len)
{
	struct mig_addr a;
	int fd;

	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0) {
		int e = errno;

		snprintf(err, len, "accept on %s: %s", addr, strerror(e));
		return -e;
	}
	close(lfd);
	if (mig_addr_parse(addr, &a, err, len) == 0 && a.unix_sock)
		unlink(a.sun.sun_path);
	mig_sock_opts(fd, !a.unix_sock);
	*fdp = fd;
	return 0;
}
