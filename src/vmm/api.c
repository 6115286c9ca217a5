/*
 * api.c - the HTTP/1.1 JSON control API (server side): the UNIX socket,
 * the libmicrohttpd daemon driven by godwit's event loop, and routing to the
 * /api/v1 handlers (api_vm.c).  docs/api.md is the reference for clients.
 *
 * MHD runs without threads of its own (MHD_USE_EPOLL, external polling):
 * its epoll fd sits in the loop, and MHD_run() is called when that fd is
 * readable and when the loop timer armed with MHD_get_timeout() fires
 * (connection time-outs, and data MHD has buffered but not processed, which
 * makes no fd readable).  The timer is re-armed after every MHD_run(), the
 * only place where MHD's timeout can change.  So every handler runs on the
 * loop thread, where vm_pause()/vm_resume() must be called.
 *
 * The socket is created here, not by MHD, so that its mode is 0600 from the
 * moment it appears (umask around bind()) and so that a live server on the
 * same path is detected instead of being unlinked from under it.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <jansson.h>
#include <microhttpd.h>

#include "godwit/api.h"
#include "godwit/dev.h"
#include "godwit/log.h"
#include "godwit/loop.h"
#include "godwit/migrate.h"
#include "godwit/prom.h"
#include "godwit/snapshot.h"
#include "godwit/vm.h"
#include "api_int.h"

#define API_BODY_MAX        (256 * 1024)  /* bytes of request body (TLS credentials fit) */
#define API_BACKLOG         16
#define API_MAX_CONNECTIONS 16
#define API_CONN_TIMEOUT_S  30            /* idle connections are closed */


/* Per-request state, from the first call of api_handle() to completion. */
struct api_req {
	char *body;
	size_t len;
	bool too_big;            /* body over API_BODY_MAX: answered with 413 */
	bool answered;           /* a response was queued early */
};

static const struct api_vm_ops api_default_ops = {
	.pause = vm_pause,
	.resume = vm_resume,
	.request_exit = vm_request_exit,
};

/* ---- replies ---- */

unsigned int api_error(json_t **out, unsigned int status, const char *fmt, ...)
{
	char msg[640];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	*out = json_pack("{s:s}", "error", msg);
	return status;
}


/* Serialise json (consumed) with a trailing newline; NULL if out of memory. */
static char *api_dump(json_t *json, size_t *len)
{
	char *text, *nl;

	if (!json)
		return NULL;
	/* 15 digits: the milliseconds of uptime_s print as such, not 1.1459999... */
	text = json_dumps(json, JSON_COMPACT | JSON_REAL_PRECISION(15));
	json_decref(json);
	if (!text)
		return NULL;
	/* The newline is for people reading curl output. */
	*len = strlen(text);
	nl = realloc(text, *len + 2);
	if (!nl) {
		free(text);
		return NULL;
	}
	nl[(*len)++] = '\n';
	nl[*len] = '\0';
	return nl;
}

/*
 * Queue the reply: status with json (consumed; NULL only for 204, otherwise
 * it means a failed allocation and becomes a 500) and an Allow header.
 */
static enum MHD_Result api_send(struct MHD_Connection *c, unsigned int status,
				json_t *json, const char *allow)
{
	static const char oom[] = "{\"error\":\"out of memory\"}\n";
	struct MHD_Response *resp;
	enum MHD_Result ret;
	size_t len = 0;
	char *text;

	if (status == MHD_HTTP_NO_CONTENT && !json) {
		resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	} else if ((text = api_dump(json, &len))) {
		/* json_dumps() memory comes from malloc(): MHD free()s it. */
		resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
		if (!resp)
			free(text);
	} else {
		status = MHD_HTTP_INTERNAL_SERVER_ERROR;
		len = sizeof(oom) - 1;
		resp = MHD_create_response_from_buffer(len, (void *)oom,
						       MHD_RESPMEM_PERSISTENT);
	}
	if (!resp)
		return MHD_NO;
	if (len)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	if (allow)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
	ret = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	return ret;
}


static bool api_field_known(const char *const *fields, const char *key)
{
	for (; fields && *fields; fields++)
		if (!strcmp(*fields, key))
			return true;
	return false;
}

/*
 * Every v1 endpoint takes an optional body that, when present, must be a
 * JSON object with only the fields the endpoint defines (rt->fields); any
 * other member is rejected, so an option a newer client sends to an older
 * server fails visibly.  On success *bodyp is the object (or NULL without
 * a body), for the caller to json_decref().
 */
static unsigned int api_check_body(const struct api_req *r, const struct api_route *rt,
				   json_t **bodyp, json_t **out)
{
	json_error_t jerr;
	const char *key;
	json_t *body;
	unsigned int status = 0;

	*bodyp = NULL;

	if (r->too_big)
		return api_error(out, MHD_HTTP_CONTENT_TOO_LARGE,
				 "request body is larger than %d bytes", API_BODY_MAX);
	if (!r->len)
		return 0;
	body = json_loadb(r->body, r->len, JSON_REJECT_DUPLICATES, &jerr);
	if (!body)
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "invalid JSON in request body: %s (line %d, column %d)",
				 jerr.text, jerr.line, jerr.column);
	if (!json_is_object(body)) {
		status = api_error(out, MHD_HTTP_BAD_REQUEST,
				   "request body must be a JSON object");
	} else {
		for (void *iter = json_object_iter(body); iter;
		     iter = json_object_iter_next(body, iter)) {
			key = json_object_iter_key(iter);
			if (api_field_known(rt->fields, key))
				continue;
			status = api_error(out, MHD_HTTP_BAD_REQUEST,
					   "unknown field \"%s\" in request body", key);
			break;
		}
	}
	if (status)
		json_decref(body);
	else
		*bodyp = body;
	return status;
}

/*
 * GET /metrics: the Prometheus text format (api_metrics.c), outside /api/v1
 * because that is where a scraper looks.  It takes no body.
 */
static enum MHD_Result api_metrics(struct api_server *s, struct MHD_Connection *c,
				   const char *method, const struct api_req *r)
{
	enum MHD_Result ret;
	json_t *out = NULL;
	unsigned int status;
	char err[256];
	size_t len = 0;
	char *text;

	if (strcmp(method, MHD_HTTP_METHOD_GET)) {
		status = api_error(&out, MHD_HTTP_METHOD_NOT_ALLOWED,
				   "method %s not allowed on /metrics", method);
		return api_send(c, status, out, "GET, HEAD");
	}
	if (r->too_big || r->len) {
		status = api_error(&out, MHD_HTTP_BAD_REQUEST, "GET /metrics takes no body");
		return api_send(c, status, out, NULL);
	}
	text = api_metrics_page(s, &len, err, sizeof(err));
	if (!text) {
		log_warnx("%s: %s", __func__, err);
		status = api_error(&out, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", err);
		return api_send(c, status, out, NULL);
	}
	ret = prom_respond(c, text, len);
	log_debug("api: GET /metrics -> 200, %zu bytes", len);
	return ret;
}

static enum MHD_Result api_dispatch(struct api_server *s, struct MHD_Connection *c,
				    const char *url, const char *method,
				    const struct api_req *r)
{
	const struct api_route *path_match = NULL;
	json_t *out = NULL;
	unsigned int status;
	size_t plen = strlen(API_PREFIX);

	/* HEAD is GET without the body, which MHD drops for us. */
	if (!strcmp(method, MHD_HTTP_METHOD_HEAD))
		method = MHD_HTTP_METHOD_GET;
	if (!strcmp(url, "/metrics"))
		return api_metrics(s, c, method, r);
	if (!strncmp(url, API_PREFIX, plen)) {
		for (size_t i = 0; i < api_nr_routes; i++) {
			const struct api_route *rt = &api_routes[i];

			if (strcmp(url + plen, rt->path))
				continue;
			path_match = rt;
			if (strcmp(method, rt->method))
				continue;
			json_t *body = NULL;

			status = api_check_body(r, rt, &body, &out);
			s->conn = c;
			if (!status)
				status = rt->fn(s, body, &out);
			s->conn = NULL;
			json_decref(body);
			log_debug("api: %s %s -> %u", method, url, status);
			return api_send(c, status, out, NULL);
		}
	}
	if (path_match) {
		status = api_error(&out, MHD_HTTP_METHOD_NOT_ALLOWED,
				   "method %s not allowed on %s", method, url);
		return api_send(c, status, out, path_match->allow);
	}
	status = api_error(&out, MHD_HTTP_NOT_FOUND, "no such endpoint: %s", url);
	return api_send(c, status, out, NULL);
}

/*
 * MHD calls this once when the headers are in, once per piece of body, and
 * once more with *upload_size == 0 when the request is complete: the reply
 * is sent then.  A body over API_BODY_MAX is discarded as it arrives and
 * answered with 413, at once if the client sent "Expect: 100-continue".
 */
static enum MHD_Result api_handle(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version,
				  const char *upload, size_t *upload_size, void **con_cls)
{
	struct api_server *s = cls;
	struct api_req *r = *con_cls;

	if (!r) {
		const char *cl, *expect;
		unsigned int status;
		json_t *out;

		r = calloc(1, sizeof(*r));
		if (!r)
			return MHD_NO;
		*con_cls = r;
		cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
						 MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (!cl || strtoull(cl, NULL, 10) <= API_BODY_MAX)
			return MHD_YES;
		expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
						     MHD_HTTP_HEADER_EXPECT);
		if (!expect || strcasecmp(expect, "100-continue")) {
			/*
			 * The client is sending the body already: answering
			 * now and closing would make its send() fail before it
			 * reads our answer.  Discard the body, answer at the end.
			 */
			r->too_big = true;
			return MHD_YES;
		}
		/* It waits for "100 Continue": refuse instead, body unsent. */
		r->answered = true;
		status = api_error(&out, MHD_HTTP_CONTENT_TOO_LARGE,
				   "request body is larger than %d bytes", API_BODY_MAX);
		return api_send(c, status, out, NULL);
	}
	if (*upload_size) {
		size_t n = *upload_size;

		*upload_size = 0;
		if (r->answered || r->too_big)
			return MHD_YES;
		if (r->len + n > API_BODY_MAX) {
			/* Chunked body over the limit: drop it, answer 413. */
			r->too_big = true;
			free(r->body);
			r->body = NULL;
			r->len = 0;
			return MHD_YES;
		}
		char *nb = realloc(r->body, r->len + n);
		if (!nb)
			return MHD_NO;
		memcpy(nb + r->len, upload, n);
		r->body = nb;
		r->len += n;
		return MHD_YES;
	}
	if (r->answered)
		return MHD_YES;
	r->answered = true;
	return api_dispatch(s, c, url, method, r);
}

static void api_req_done(void *cls, struct MHD_Connection *c, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct api_req *r = *con_cls;

	if (!r)
		return;
	if (r->body)
		explicit_bzero(r->body, r->len);   /* it may have carried a TLS key */
	free(r->body);
	free(r);
	*con_cls = NULL;
}

__attribute__((format(printf, 2, 0)))
static void api_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];
	size_t n;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n && msg[n - 1] == '\n')
		msg[--n] = '\0';
	log_warnx("api: %s", msg);
}

/* ---- driving MHD from the loop ---- */

static void api_run(struct api_server *s);

static void api_timer_fired(struct loop *l, void *opaque)
{
	struct api_server *s = opaque;

	s->timer = 0;
	api_run(s);
}

static void api_mhd_ready(struct loop *l, int fd, uint32_t events, void *opaque)
{
	api_run(opaque);
}

/* Arm the loop timer for the next time MHD needs to run without an event. */
static void api_arm_timer(struct api_server *s)
{
	MHD_UNSIGNED_LONG_LONG ms;
	long id;

	if (s->timer)
		loop_del_timer(s->loop, s->timer);
	s->timer = 0;
	if (MHD_get_timeout(s->mhd, &ms) != MHD_YES)
		return;
	id = loop_add_timer(s->loop, ms > 60000 ? 60000 : (unsigned int)ms,
			    api_timer_fired, s);
	if (id < 0) {
		/* Rare: requests still run on fd events, only timeouts lag. */
		log_warnx("%s: cannot arm timer: %s", __func__, strerror((int)-id));
		return;
	}
	s->timer = id;
}

static void api_run(struct api_server *s)
{
	if (MHD_run(s->mhd) != MHD_YES)
		log_warnx("%s: MHD_run failed", __func__);
	api_arm_timer(s);
}

/* ---- the socket ---- */

/*
 * Make path free for bind(): nothing there, or a stale socket (nobody
 * accepts on it) that is removed.  Refuses a live socket and other files.
 */
static int api_socket_clear(const char *path, const struct sockaddr_un *sa)
{
	struct stat st;
	int fd, ret, err;

	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		ret = -errno;
		log_warn("%s: API socket %s", __func__, path);
		return ret;
	}
	if (!S_ISSOCK(st.st_mode)) {
		log_warnx("%s: API socket path %s exists and is not a socket", __func__, path);
		return -EEXIST;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		ret = -errno;
		log_warn("%s: socket", __func__);
		return ret;
	}
	/* Non-blocking: a server with a full backlog answers EAGAIN. */
	ret = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
	err = errno;
	close(fd);
	if (ret == 0 || err == EAGAIN || err == EINPROGRESS) {
		log_warnx("%s: API socket %s is in use by another process", __func__, path);
		return -EADDRINUSE;
	}
	if (err == ENOENT)
		return 0;
	if (err != ECONNREFUSED) {
		log_warnx("%s: cannot probe API socket %s: %s", __func__, path, strerror(err));
		return -err;
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		ret = -errno;
		log_warn("%s: cannot remove stale API socket %s", __func__, path);
		return ret;
	}
	log_debug("%s: removed stale API socket %s", __func__, path);
	return 0;
}

/* Create, bind (mode 0600) and listen on path; the socket fd in *fdp. */
static int api_socket_open(struct api_server *s, const char *path, int *fdp)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	mode_t old_umask;
	int fd, ret, err;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		log_warnx("%s: API socket path %s is too long (at most %zu bytes)",
			  __func__, path, sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);

	ret = api_socket_clear(path, &sa);
	if (ret)
		return ret;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		ret = -errno;
		log_warn("%s: socket", __func__);
		return ret;
	}
	/*
	 * The umask makes the socket 0600 from its creation: a chmod() after
	 * bind() would leave a window where others may connect.  umask is
	 * process-wide; this runs at start-up, before other threads create files.
	 */
	old_umask = umask(0177);
	ret = bind(fd, (const struct sockaddr *)&sa, sizeof(sa));
	err = errno;
	umask(old_umask);
	if (ret < 0) {
		ret = -err;
		if (err == EADDRINUSE)
			log_warnx("%s: API socket %s is in use by another process",
				  __func__, path);
		else
			log_warnx("%s: cannot bind API socket %s: %s", __func__, path,
				  strerror(err));
		goto err_close;
	}
	if (lstat(path, &st) < 0) {
		ret = -errno;
		log_warn("%s: API socket %s", __func__, path);
		goto err_unlink;
	}
	if (!S_ISSOCK(st.st_mode) || (st.st_mode & 07777) != 0600 ||
	    st.st_uid != geteuid()) {
		log_warnx("%s: API socket %s has mode %04o, owner %u; expected 0600, %u",
			  __func__, path, (unsigned int)(st.st_mode & 07777),
			  (unsigned int)st.st_uid, (unsigned int)geteuid());
		ret = -EPERM;
		goto err_unlink;
	}
	s->dev = st.st_dev;
	s->ino = st.st_ino;
	if (listen(fd, API_BACKLOG) < 0) {
		ret = -errno;
		log_warn("%s: listen on API socket %s", __func__, path);
		goto err_unlink;
	}
	*fdp = fd;
	return 0;

err_unlink:
	unlink(path);
err_close:
	close(fd);
	return ret;
}

/* Unlink the socket file if it is still the one we bound. */
static void api_socket_unlink(struct api_server *s)
{
	struct stat st;

	if (lstat(s->path, &st) < 0)
		return;
	if (st.st_dev != s->dev || st.st_ino != s->ino) {
		log_warnx("%s: API socket %s was replaced; leaving it", __func__, s->path);
		return;
	}
	if (unlink(s->path) < 0)
		log_warn("%s: unlink %s", __func__, s->path);
}

/*
 * api_start - create the socket at path and serve the API for vm from loop.
 *   vm:   the VM (its cfg, state and lock; pause/resume/exit through ops)
 *   loop: the loop the API runs on; api_start() is called on its thread
 *   path: the socket path (mode 0600; a live socket there: -EADDRINUSE; a
 *         stale one is replaced; another kind of file: -EEXIST)
 *   out:  the server, for api_stop()
 * Returns 0, or -errno with a message logged.
 */
int api_start(struct vm *vm, struct loop *loop, const char *path, struct api_server **out)
{
	const union MHD_DaemonInfo *info;
	struct api_server *s;
	struct stat sock_st;
	int fd = -1, ret;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->vm = vm;
	s->loop = loop;
	s->ops = &api_default_ops;
	s->mhd_epfd = -1;
	s->path = strdup(path);
	if (!s->path) {
		ret = -ENOMEM;
		goto err_free;
	}

	ret = api_socket_open(s, path, &fd);
	if (ret)
		goto err_free;
	/* Remember which open file fd is, to tell below whether MHD closed it. */
	if (fstat(fd, &sock_st) < 0) {
		ret = -errno;
		log_warn("%s: fstat", __func__);
		goto err_sock;
	}

	s->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL,
				  api_handle, s,
				  MHD_OPTION_EXTERNAL_LOGGER, api_mhd_log, s,
				  MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
				  MHD_OPTION_NOTIFY_COMPLETED, api_req_done, s,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned int)API_MAX_CONNECTIONS,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)API_CONN_TIMEOUT_S,
				  MHD_OPTION_END);
	if (!s->mhd) {
		struct stat st;

		ret = -EIO;
		log_warnx("%s: cannot start the HTTP server on %s", __func__, path);
		/* MHD may or may not have closed the socket it was given. */
		if (fstat(fd, &st) == 0 && st.st_dev == sock_st.st_dev &&
		    st.st_ino == sock_st.st_ino)
			goto err_sock;
		goto err_unlink;
	}
	/* From here on MHD owns fd: MHD_stop_daemon() closes it. */
	info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
	if (!info || info->epoll_fd < 0) {
		ret = -EIO;
		log_warnx("%s: no epoll fd from the HTTP server", __func__);
		goto err_mhd;
	}
	s->mhd_epfd = info->epoll_fd;
	ret = loop_add_fd(loop, s->mhd_epfd, EPOLLIN, api_mhd_ready, s);
	if (ret) {
		log_warnx("%s: loop_add_fd: %s", __func__, strerror(-ret));
		goto err_mhd;
	}
	api_arm_timer(s);
	log_debug("%s: API listening on %s", __func__, path);
	*out = s;
	return 0;

err_mhd:
	MHD_stop_daemon(s->mhd);
	goto err_unlink;
err_sock:
	close(fd);
err_unlink:
	api_socket_unlink(s);
err_free:
	free(s->path);
	free(s);
	return ret;
}

/*
 * api_stop - close every API connection, stop listening and unlink the
 * socket (if it is still ours).  Called on the loop thread; s may be NULL.
 */
void api_stop(struct api_server *s)
{
	if (!s)
		return;
	/*
	 * Replies already queued are gone by now: MHD writes a response in the
	 * MHD_run() whose handler queued it when the socket has room, and ours
	 * are a few hundred bytes (test api_shutdown_reply_survives_stop).
	 */
	if (s->timer)
		loop_del_timer(s->loop, s->timer);
	loop_del_fd(s->loop, s->mhd_epfd);
	api_socket_unlink(s);
	MHD_stop_daemon(s->mhd);
	free(s->path);
	free(s);
}

/*
 * api_set_vm_ops - make s call ops (which must outlive s) instead of
 * vm_pause()/vm_resume()/vm_request_exit(); NULL restores those.  For tests.
 */
void api_set_vm_ops(struct api_server *s, const struct api_vm_ops *ops)
{
	s->ops = ops ? ops : &api_default_ops;
}
