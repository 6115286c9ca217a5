/*
 * migrate_addr.c - a migration's addresses and connections (migrate.h):
 * "tcp:HOST:PORT" and "unix:PATH" parsed and checked, the source's connect,
 * the destination's listen and accept (a UNIX socket 0600, its peer this
 * user or root), whether an address stays on this host, and the socket
 * options both sides set (no Nagle, large buffers, the silent-peer
 * time-outs).
 */
#include <errno.h>
#include <netdb.h>
#include <arpa/inet.h>
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

/* Connections that may wait while a stray one is being dropped. */
#define MIG_LISTEN_BACKLOG 8

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
		/* 0600 from the start (the umask while binding): only this user connects. */
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd >= 0) {
			mode_t old = umask(0177);
			int b = bind(fd, (struct sockaddr *)&a.sun, sizeof(a.sun));

			umask(old);
			if (b < 0)
				goto fail;
		}
		if (fd < 0 || listen(fd, MIG_LISTEN_BACKLOG) < 0)
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
	if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, MIG_LISTEN_BACKLOG) < 0)
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

/* Whether every address host resolves to is a loopback one ("" is the wildcard: not). */
static bool host_is_loopback(const char *host)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL, *ai;
	bool lo = true;

	if (!*host || getaddrinfo(host, NULL, &hints, &res))
		return false;
	for (ai = res; ai && lo; ai = ai->ai_next) {
		if (ai->ai_family == AF_INET) {
			const struct sockaddr_in *in = (const void *)ai->ai_addr;

			lo = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
		} else if (ai->ai_family == AF_INET6) {
			const struct sockaddr_in6 *in6 = (const void *)ai->ai_addr;

			lo = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr) ||
			     (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127);
		} else {
			lo = false;
		}
	}
	freeaddrinfo(res);
	return lo;
}

bool migrate_addr_local(const char *addr)
{
	struct mig_addr a;
	char err[64];

	if (mig_addr_parse(addr, &a, err, sizeof(err)))
		return false;
	return a.unix_sock || host_is_loopback(a.host);
}

/* "198.18.0.1:40000", "[::1]:40000" or "uid 0 pid 1234" for the log. */
static void peer_name(int fd, bool unix_sock, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char h[INET6_ADDRSTRLEN + 1] = "?", port[8] = "?";

	if (unix_sock) {
		struct ucred uc;
		socklen_t ul = sizeof(uc);

		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) == 0)
			snprintf(buf, len, "uid %u pid %d", (unsigned int)uc.uid, (int)uc.pid);
		else
			snprintf(buf, len, "a local process");
		return;
	}
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) ||
	    getnameinfo((struct sockaddr *)&ss, sl, h, sizeof(h), port, sizeof(port),
			NI_NUMERICHOST | NI_NUMERICSERV)) {
		snprintf(buf, len, "an unknown peer");
		return;
	}
	snprintf(buf, len, ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", h, port);
}

int migrate_accept(int lfd, const char *addr, int timeout_ms, int *fdp, char *peer, size_t plen,
		   char *err, size_t len)
{
	struct pollfd p = { .fd = lfd, .events = POLLIN };
	struct mig_addr a;
	int fd, r;

	if (mig_addr_parse(addr, &a, err, len))
		return -EINVAL;
	r = poll(&p, 1, timeout_ms);
	if (r == 0)
		return -ETIMEDOUT;
	fd = r < 0 ? -1 : accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0) {
		int e = errno;

		snprintf(err, len, "accept on %s: %s", addr, strerror(e));
		return -e;
	}
	peer_name(fd, a.unix_sock, peer, plen);
	if (a.unix_sock) {
		/* Only this user or root may hand a VM over through a UNIX socket. */
		struct ucred uc;
		socklen_t ul = sizeof(uc);

		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul)) {
			snprintf(err, len, "%s: cannot tell who connected (SO_PEERCRED: %s)", addr,
				 strerror(errno));
			close(fd);
			return -EACCES;
		}
		if (uc.uid != 0 && uc.uid != geteuid()) {
			if (geteuid())
				snprintf(err, len, "%s: uid %u connected, but only uid %u or root may "
					 "migrate here", addr, (unsigned int)uc.uid, (unsigned int)geteuid());
			else
				snprintf(err, len, "%s: uid %u connected, but only root may migrate here",
					 addr, (unsigned int)uc.uid);
			close(fd);
			return -EACCES;
		}
	}
	mig_sock_opts(fd, !a.unix_sock);
	*fdp = fd;
	return 0;
}

void migrate_unlisten(int lfd, const char *addr)
{
	struct mig_addr a;
	char err[64];

	if (lfd < 0)
		return;
	close(lfd);
	if (mig_addr_parse(addr, &a, err, sizeof(err)) == 0 && a.unix_sock)
		unlink(a.sun.sun_path);
}
