/*
 * http.c - godwitd's local API on a UNIX socket (--socket, mode 0600), with
 * libmicrohttpd in a thread of its own:
 *   GET /v1/host   this host's record, and whether it is fenced
 *   GET /v1/vms    the VMs this agent runs: name, pid, epoch, state, api, console
 *   GET /metrics   the agent's metrics, Prometheus text (prom.h; docs/fleet.md)
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

#include "godwit/etcd.h"
#include "godwit/log.h"
#include "godwit/prom.h"
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

/* The agent's metrics page (a malloc()ed text of *len bytes), or NULL with err set. */
static char *http_metrics_page(struct agent *a, size_t *len, char *err, size_t errlen)
{
	static const char *const states[] = {
		"starting", "running", "migrating", "paused", "in-doubt", "incoming", "migrated",
		"stopped", "failed", "exited",
	};
	unsigned int count[ARRAY_SIZE(states) + 1] = { 0 };
	uint64_t now = agent_now_ms(), ok_ms = atomic_load(&a->lease_ok_ms);
	uint64_t etcd_req, etcd_err;
	bool fenced, registered;
	struct prom p;
	char *text;

	pthread_mutex_lock(&a->lock);
	fenced = a->fenced;
	registered = a->registered;
	for (int i = 0; i < AGENT_MAX_VMS; i++) {
		const struct agent_vm *v = &a->vms[i];
		const char *st = v->exit_status == -1 ? v->state : "exited";
		size_t k = 0;

		if (!v->used)
			continue;
		while (k < ARRAY_SIZE(states) && strcmp(st, states[k]))
			k++;
		count[k]++;              /* ARRAY_SIZE(states): "other" */
	}
	pthread_mutex_unlock(&a->lock);
	etcd_counters(&etcd_req, &etcd_err);

	prom_init(&p);
	prom_family(&p, "godwit_agent_lease_alive", PROM_GAUGE, "1 while this host's etcd lease "
		    "holds: the last keep-alive etcd answered is younger than the lease's TTL.");
	prom_u64(&p, registered && ok_ms && now - ok_ms < (uint64_t)a->lease_ttl * 1000, NULL);
	prom_family(&p, "godwit_agent_lease_renewed_age_seconds", PROM_GAUGE,
		    "Seconds since the last keep-alive etcd answered.");
	prom_f64(&p, ok_ms ? (double)(now - ok_ms) / 1000 : 0, NULL);
	prom_family(&p, "godwit_agent_fenced", PROM_GAUGE, "1 while this host is fenced (rule 5: "
		    "its VMs stopped because the lease could not be renewed).");
	prom_u64(&p, fenced, NULL);
	prom_family(&p, "godwit_agent_vms", PROM_GAUGE, "The VMs this agent runs or brings in, "
		    "by the state it keeps for them (exited: the process ended).");
	for (size_t k = 0; k < ARRAY_SIZE(states); k++)
		prom_u64(&p, count[k], "state", states[k], NULL);
	prom_u64(&p, count[ARRAY_SIZE(states)], "state", "other", NULL);
	prom_family(&p, "godwit_agent_migrations_started_total", PROM_COUNTER,
		    "Outgoing migrations this agent started (a worker took the intent).");
	prom_u64(&p, STAT_GET(a->n_mig_started), NULL);
	prom_family(&p, "godwit_agent_migrations_ended_total", PROM_COUNTER,
		    "Outgoing migrations that ended: completed (the VM left), aborted (stopped at "
		    "the commit gate, cancelled, or resumed here after doubt), failed (the rest).");
	prom_u64(&p, STAT_GET(a->n_mig_completed), "result", "completed", NULL);
	prom_u64(&p, STAT_GET(a->n_mig_failed), "result", "failed", NULL);
	prom_u64(&p, STAT_GET(a->n_mig_aborted), "result", "aborted", NULL);
	prom_family(&p, "godwit_agent_etcd_requests_total", PROM_COUNTER,
		    "Requests to etcd from this agent's threads.");
	prom_u64(&p, etcd_req, NULL);
	prom_family(&p, "godwit_agent_etcd_errors_total", PROM_COUNTER, "Requests to etcd that "
		    "failed: no endpoint answered, no answer in time, or etcd's error.");
	prom_u64(&p, etcd_err, NULL);
	prom_family(&p, "godwit_agent_reconcile_duration_seconds", PROM_SUMMARY,
		    "Iterations of the reconcile loop (every 300 ms) and the time they took.");
	prom_f64_suffix(&p, "_sum", (double)STAT_GET(a->reconcile_us) / 1e6, NULL);
	prom_u64_suffix(&p, "_count", STAT_GET(a->n_reconcile), NULL);
	text = prom_finish(&p, len);
	if (!text)
		snprintf(err, errlen, "metrics: %s", prom_error(&p));
	return text;
}

static enum MHD_Result http_metrics(struct agent *a, struct MHD_Connection *c)
{
	char err[256];
	size_t len = 0;
	char *text = http_metrics_page(a, &len, err, sizeof(err));

	if (!text) {
		log_warnx("godwitd: GET /metrics: %s", err);
		return http_send(c, MHD_HTTP_INTERNAL_SERVER_ERROR, json_pack("{s:s}", "error", err));
	}
	return prom_respond(c, text, len);
}

bool http_request_whole(void **ctx, size_t *size)
{
	if (!*ctx) {             /* first call: headers only */
		*ctx = (void *)1;
		return false;
	}
	if (*size) {             /* a piece of a body: dropped */
		*size = 0;
		return false;
	}
	return true;
}

static enum MHD_Result http_handle(void *cls, struct MHD_Connection *c, const char *url,
				   const char *method, const char *version, const char *data,
				   size_t *size, void **ctx)
{
	struct agent *a = cls;
	json_t *j;

	(void)version;
	(void)data;
	if (!http_request_whole(ctx, size))
		return MHD_YES;
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
	if (!strcmp(url, "/metrics"))
		return http_metrics(a, c);
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
