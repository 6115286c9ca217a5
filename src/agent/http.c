/*
 * http.c - godwitd's local API on a UNIX socket (--socket, mode 0600), with
 * libmicrohttpd in a thread of its own:
 *   GET /v1/host   this host's record, and whether it is fenced
 *   GET /v1/vms    the VMs this agent runs: name, pid, epoch, state, api, console
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <microhttpd.h>

#include "godwit/log.h"
#include "agent.h"

static struct MHD_Daemon *http_mhd;

static enum MHD_Result http_send(struct MHD_Connection *c, unsigned int status, json_t *j)
{
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	struct MHD_Response *r;
	enum MHD_Result ret;

	json_decref(j);
	if (!s)
		s = strdup("{\"error\":\"out of memory\"}");
	if (!s)
		return MHD_NO;
	r = MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(s);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static json_t *http_vms(struct agent *a)
{
	json_t *arr = json_array();

	pthread_mutex_lock(&a->lock);
	for (int i = 0; i < AGENT_MAX_VMS && arr; i++) {
		struct agent_vm *v = &a->vms[i];

		if (!v->used)
			continue;
		json_array_append_new(arr, json_pack("{s:s, s:I, s:I, s:s, s:b, s:b, s:b, s:s, s:s}",
						     "name", v->name, "pid", (json_int_t)v->pid,
						     "epoch", (json_int_t)v->epoch,
						     "state", v->exit_status == -1 ? v->state : "exited",
						     "fenced", v->fenced, "adopted", !v->child,
						     "incoming", v->incoming, "api", v->api,
						     "console", v->console));
	}
	pthread_mutex_unlock(&a->lock);
	return arr;
}

static enum MHD_Result http_handle(void *cls, struct MHD_Connection *c, const char *url,
				   const char *method, const char *version, const char *data,
				   size_t *size, void **ctx)
{
	struct agent *a = cls;
	json_t *j;

	(void)version;
	(void)data;
	if (!*ctx) {             /* first call: headers only */
		*ctx = (void *)1;
		return MHD_YES;
	}
	if (*size) {             /* no request carries a body: drop it, answer at the end */
		*size = 0;
		return MHD_YES;
	}
	if (strcmp(method, "GET") && strcmp(method, "HEAD"))
		return http_send(c, MHD_HTTP_METHOD_NOT_ALLOWED,
				 json_pack("{s:s}", "error", "only GET"));
	if (!strcmp(url, "/v1/host")) {
		bool fenced;

		j = host_record(a);
		pthread_mutex_lock(&a->lock);
		fenced = a->fenced;
		pthread_mutex_unlock(&a->lock);
		if (j)
			json_object_set_new(j, "fenced", json_boolean(fenced));
		return http_send(c, MHD_HTTP_OK, j);
	}
	if (!strcmp(url, "/v1/vms"))
		return http_send(c, MHD_HTTP_OK, json_pack("{s:o}", "vms", http_vms(a)));
	return http_send(c, MHD_HTTP_NOT_FOUND, json_pack("{s:s}", "error", "no such endpoint"));
}

int http_start(struct agent *a)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct stat st;
	int fd;

	if (strlen(a->socket) >= sizeof(sun.sun_path)) {
		log_warnx("godwitd: --socket %s: path too long", a->socket);
		return -ENAMETOOLONG;
	}
	memcpy(sun.sun_path, a->socket, strlen(a->socket) + 1);
	/* a stale socket from an earlier agent: replace it (never another kind of file) */
	if (lstat(a->socket, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			log_warnx("godwitd: --socket %s exists and is not a socket", a->socket);
			return -EEXIST;
		}
		unlink(a->socket);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	{
		mode_t old = umask(0177);
		int r = bind(fd, (struct sockaddr *)&sun, sizeof(sun));

		umask(old);
		if (r || chmod(a->socket, 0600) || listen(fd, 16)) {
			log_warn("godwitd: --socket %s", a->socket);
			close(fd);
			return -EIO;
		}
	}
	http_mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL,
				    NULL, http_handle, a,
				    MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
				    MHD_OPTION_CONNECTION_LIMIT, 16U,
				    MHD_OPTION_CONNECTION_TIMEOUT, 10U,
				    MHD_OPTION_END);
	if (!http_mhd) {
		log_warnx("godwitd: cannot start the HTTP server on %s", a->socket);
		close(fd);
		return -EIO;
	}
	return 0;
}

void http_stop(void)
{
	if (http_mhd)
		MHD_stop_daemon(http_mhd);
	http_mhd = NULL;
}
