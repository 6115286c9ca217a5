/*
 * api.c - the HTTP/1.1 JSON control API (server side): the UNIX socket,
 * the libmicrohttpd daemon driven by godwit's event loop, routing and the
 * /api/v1 handlers.  docs/api.md is the reference for clients.
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
#include "godwit/snapshot.h"
#include "godwit/vm.h"

#define API_PREFIX          "/api/v1"
#define API_BODY_MAX        (64 * 1024)   /* bytes of request body */
#define API_BACKLOG         16
#define API_MAX_CONNECTIONS 16
#define API_CONN_TIMEOUT_S  30            /* idle connections are closed */

struct api_server {
	struct vm *vm;
	struct loop *loop;
	const struct api_vm_ops *ops;
	struct MHD_Daemon *mhd;
	int mhd_epfd;            /* MHD's epoll fd, registered in loop */
	long timer;              /* loop timer for MHD_get_timeout(); 0: none */
	char *path;
	dev_t dev;               /* the socket file we bound: unlink only it */
	ino_t ino;
	struct MHD_Connection *conn;  /* the request being handled (query arguments) */
};

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

/* Set *out to {"error": message} and return status. */
__attribute__((format(printf, 3, 4)))
static unsigned int api_error(json_t **out, unsigned int status, const char *fmt, ...)
{
	char msg[640];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	*out = json_pack("{s:s}", "error", msg);
	return status;
}

/* ---- handlers: return an HTTP status and set *out (NULL: no body) ---- */

/* body: the request's JSON object (only fields the route lists), or NULL. */
typedef unsigned int (*api_handler_fn)(struct api_server *s, json_t *body, json_t **out);

static enum vm_state api_vm_state(struct vm *vm)
{
	enum vm_state state;

	pthread_mutex_lock(&vm->lock);
	state = vm->state;
	pthread_mutex_unlock(&vm->lock);
	return state;
}

static unsigned int api_state_reply(struct api_server *s, unsigned int status, json_t **out)
{
	*out = json_pack("{s:s}", "state", vm_state_name(api_vm_state(s->vm)));
	return status;
}

static unsigned int api_vm_get(struct api_server *s, json_t *body, json_t **out)
{
	const struct vm_config *cfg = &s->vm->cfg;
	const uint8_t *u = cfg->uuid;
	enum vm_state state = api_vm_state(s->vm);
	char uuid[37];

	snprintf(uuid, sizeof(uuid),
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7],
		 u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
	*out = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:s?, s:f, s:I}",
			 "name", cfg->name,
			 "uuid", uuid,
			 "state", vm_state_name(state),
			 "vcpus", (json_int_t)cfg->ncpus,
			 "memory_bytes", (json_int_t)cfg->mem_size,
			 "cpu_model", cpu_model_name(cfg->cpu_model),
			 "kernel", cfg->kernel,
			 "uptime_s", (double)(long long)(vm_uptime(s->vm) * 1000 + 0.5) / 1000,
			 "pid", (json_int_t)getpid());
	return MHD_HTTP_OK;
}

/* 409 while a migration owns the VM's run state (migrate_busy()). */
static unsigned int api_migration_busy(struct api_server *s, json_t **out)
{
	struct migrate_progress p;

	if (!migrate_busy(s->vm))
		return 0;
	migrate_get_progress(s->vm, &p, false);
	if (p.status == MIG_IN_DOUBT)
		return api_error(out, MHD_HTTP_CONFLICT, "a migration is in doubt: settle it with "
				 "PUT /vm/migrate-resolve first");
	return api_error(out, MHD_HTTP_CONFLICT, "a migration is under way (%s)",
			 migrate_status_name(p.status));
}

static unsigned int api_vm_pause(struct api_server *s, json_t *body, json_t **out)
{
	unsigned int busy = api_migration_busy(s, out);

	if (busy)
		return busy;
	/*
	 * Only the loop thread pauses and resumes, so the state read here
	 * cannot turn PAUSED or RUNNING before the call below; it can turn
	 * STOPPING (any thread may request an exit), which vm_pause() reports
	 * with -EBUSY.
	 */
	switch (api_vm_state(s->vm)) {
	case VM_STATE_RUNNING:
		break;
	case VM_STATE_PAUSED:
		return api_error(out, MHD_HTTP_CONFLICT, "VM is already paused");
	case VM_STATE_STOPPING:
		return api_error(out, MHD_HTTP_CONFLICT, "VM is stopping");
	default:
		return api_error(out, MHD_HTTP_CONFLICT, "VM is not running");
	}
	int ret = s->ops->pause(s->vm);
	if (ret == -EBUSY)
		return api_error(out, MHD_HTTP_CONFLICT, "VM is stopping");
	if (ret == -EALREADY)
		return api_error(out, MHD_HTTP_CONFLICT, "VM is already paused");
	if (ret < 0) {
		log_warnx("%s: vm_pause: %s", __func__, strerror(-ret));
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR,
				 "pause failed: %s", strerror(-ret));
	}
	log_info("VM paused over the API");
	return api_state_reply(s, MHD_HTTP_OK, out);
}

static unsigned int api_vm_resume(struct api_server *s, json_t *body, json_t **out)
{
	unsigned int busy = api_migration_busy(s, out);

	if (busy)
		return busy;
	switch (api_vm_state(s->vm)) {
	case VM_STATE_PAUSED:
		break;
	case VM_STATE_STOPPING:
		return api_error(out, MHD_HTTP_CONFLICT, "VM is stopping");
	default:
		return api_error(out, MHD_HTTP_CONFLICT, "VM is not paused");
	}
	int ret = s->ops->resume(s->vm);
	if (ret == -EBUSY)
		return api_error(out, MHD_HTTP_CONFLICT, "VM is stopping");
	if (ret == -EALREADY)
		return api_error(out, MHD_HTTP_CONFLICT, "VM is not paused");
	if (ret < 0) {
		log_warnx("%s: vm_resume: %s", __func__, strerror(-ret));
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR,
				 "resume failed: %s", strerror(-ret));
	}
	log_info("VM resumed over the API");
	return api_state_reply(s, MHD_HTTP_OK, out);
}

static unsigned int api_vm_shutdown(struct api_server *s, json_t *body, json_t **out)
{
	/* Idempotent: the first exit request wins, later ones are no-ops. */
	log_info("shutdown requested over the API");
	s->ops->request_exit(s->vm, EXIT_POWEROFF, "shutdown requested over the API");
	return api_state_reply(s, MHD_HTTP_ACCEPTED, out);
}

static double api_ms_since(const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/*
 * PUT /vm/snapshot {"path": "/abs/file", "resume": false}: the whole VM
 * into path (snapshot.h).  The file is created (as a temporary beside it)
 * before the VM is touched, so a bad path costs the guest nothing; then
 * the vCPUs are paused and the devices quiesced, the stream written and
 * synced, and the temporary renamed over path.  Then, with resume, the VM
 * goes back to the state it had (running or paused); without, it stays
 * stopped and godwit exits with status 0 (EXIT_POWEROFF) after the reply.
 * On any failure the VM goes back to the state it had and keeps running.
 */
static unsigned int api_vm_snapshot(struct api_server *s, json_t *body, json_t **out)
{
	json_t *jp = body ? json_object_get(body, "path") : NULL;
	json_t *jr = body ? json_object_get(body, "resume") : NULL;
	struct snapshot_result res = { 0 };
	struct snapshot_file f;
	struct timespec t0;
	enum vm_state state;
	const char *path;
	char err[512] = "", why[128];
	bool resume, was_running;
	unsigned int status;
	double ms;
	int ret;

	if (!jp || !json_is_string(jp) || !*json_string_value(jp))
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "\"path\" (the snapshot file, an absolute path) is required");
	path = json_string_value(jp);
	if (path[0] != '/')
		return api_error(out, MHD_HTTP_BAD_REQUEST, "\"path\" must be absolute: %s", path);
	if (jr && !json_is_boolean(jr))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "\"resume\" must be true or false");
	resume = jr && json_is_true(jr);
	status = api_migration_busy(s, out);
	if (status)
		return status;
	state = api_vm_state(s->vm);
	if (state == VM_STATE_STOPPING)
		return api_error(out, MHD_HTTP_CONFLICT, "VM is stopping");
	if (state != VM_STATE_RUNNING && state != VM_STATE_PAUSED)
		return api_error(out, MHD_HTTP_CONFLICT, "VM is not running");
	ret = snapshot_file_create(path, &f, err, sizeof(err));
	if (ret)
		return api_error(out, MHD_HTTP_BAD_REQUEST, "cannot write the snapshot: %s", err);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	was_running = state == VM_STATE_RUNNING;
	if (was_running) {
		ret = s->ops->pause(s->vm);
		if (ret) {
			snapshot_file_abort(&f);
			if (ret == -EBUSY)
				return api_error(out, MHD_HTTP_CONFLICT, "VM is stopping");
			return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR,
					 "pause failed: %s", strerror(-ret));
		}
	}
	/* Nothing writes guest memory or the disks from here on. */
	ret = dev_quiesce_all(s->vm);
	if (ret)
		snprintf(err, sizeof(err), "cannot quiesce the devices: %s", strerror(-ret));
	if (!ret)
		ret = snapshot_write(s->vm, f.fd, &res, err, sizeof(err));
	if (!ret)
		ret = snapshot_file_commit(&f, err, sizeof(err));
	else
		snapshot_file_abort(&f);
	ms = api_ms_since(&t0);
	if (ret || resume) {
		/* Devices first: the vCPUs find them serving when they run. */
		if (dev_resume_all(s->vm))
			log_warnx("%s: a device did not resume", __func__);
		if (was_running && s->ops->resume(s->vm))
			log_warnx("%s: the VM did not resume", __func__);
	}
	if (ret) {
		log_warnx("%s: snapshot to %s failed: %s", __func__, path, err);
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "snapshot failed: %s", err);
	}
	log_info("snapshot to %s: %llu bytes in %.1f ms%s", path, (unsigned long long)res.bytes, ms,
		 resume ? "" : "; stopping");
	if (!resume) {
		snprintf(why, sizeof(why), "stopped after a snapshot");
		s->ops->request_exit(s->vm, EXIT_POWEROFF, why);
	}
	status = MHD_HTTP_OK;
	*out = json_pack("{s:s, s:I, s:f, s:I, s:I, s:s}",
			 "path", path,
			 "bytes", (json_int_t)res.bytes,
			 "ms", (double)(long long)(ms * 1000 + 0.5) / 1000,
			 "ram_pages", (json_int_t)res.ram.pages,
			 "zero_pages", (json_int_t)res.ram.zero_pages,
			 "state", vm_state_name(api_vm_state(s->vm)));
	return status;
}

static double api_round3(double v)
{
	return (double)(long long)(v * 1000 + 0.5) / 1000;
}

static json_t *api_progress_json(const struct migrate_progress *p)
{
	json_t *j = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:f, "
			      "s:b, s:b}",
			      "status", migrate_status_name(p->status),
			      "round", (json_int_t)p->round,
			      "bytes", (json_int_t)p->bytes,
			      "pages", (json_int_t)p->pages,
			      "zero_pages", (json_int_t)p->zero_pages,
			      "remaining_bytes", (json_int_t)p->remaining_bytes,
			      "dirty_rate_bps", api_round3(p->dirty_rate),
			      "bandwidth_bps", api_round3(p->bandwidth),
			      "expected_downtime_ms", api_round3(p->expected_downtime_ms),
			      "setup_ms", api_round3(p->setup_ms),
			      "total_ms", api_round3(p->total_ms),
			      "downtime_ms", api_round3(p->downtime_ms),
			      "converged", p->converged,
			      "not_converging", p->not_converging);

	if (j && p->to[0])
		json_object_set_new(j, p->status == MIG_INCOMING ? "from" : "to",
				    json_string(p->to));
	if (j)
		json_object_set_new(j, "rounds", json_integer(p->rounds_done));
	if (j && (p->disk_bytes || p->disk_rounds)) {
		json_object_set_new(j, "disk_bytes", json_integer((json_int_t)p->disk_bytes));
		json_object_set_new(j, "disk_rounds", json_integer(p->disk_rounds));
		json_object_set_new(j, "disk_remaining_bytes",
				    json_integer((json_int_t)p->disk_remaining_bytes));
		json_object_set_new(j, "disk_dirty_rate_bps", json_real(api_round3(p->disk_dirty_rate)));
	}
	if (j && p->error[0])
		json_object_set_new(j, "error", json_string(p->error));
	return j;
}

/* An optional non-negative integer field; false (and *out set) if present and invalid. */
static bool api_get_uint(json_t *body, const char *key, uint64_t max, uint64_t *v,
			 unsigned int *status, json_t **out)
{
	json_t *j = body ? json_object_get(body, key) : NULL;

	if (!j)
		return true;
	if (!json_is_integer(j) || json_integer_value(j) < 0 ||
	    (uint64_t)json_integer_value(j) > max) {
		*status = api_error(out, MHD_HTTP_BAD_REQUEST, "\"%s\" must be an integer from 0 "
				    "to %llu", key, (unsigned long long)max);
		return false;
	}
	*v = (uint64_t)json_integer_value(j);
	return true;
}

/*
 * PUT /vm/migrate {"to": "tcp:HOST:PORT", "downtime_ms": 50, "max_bandwidth":
 * bytes/s, "max_rounds": 30, "min_rate": bytes/s}: start migrating (migrate.h); 202 with the
 * progress.  GET /vm/migration follows it.
 */
static unsigned int api_vm_migrate(struct api_server *s, json_t *body, json_t **out)
{
	struct migrate_params p = {
		.downtime_ms = MIG_DEFAULT_DOWNTIME_MS,
		.max_rounds = MIG_DEFAULT_MAX_ROUNDS,
		.min_rate = MIG_DEFAULT_MIN_RATE,
	};
	struct migrate_progress prog;
	json_t *jt = body ? json_object_get(body, "to") : NULL;
	uint64_t dt = p.downtime_ms, rounds = p.max_rounds, bw = 0;
	unsigned int status = 0;
	char err[512] = "";
	int ret;

	if (!jt || !json_is_string(jt) || !*json_string_value(jt))
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "\"to\" (tcp:HOST:PORT or unix:PATH) is required");
	if (strlen(json_string_value(jt)) >= sizeof(p.to))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "\"to\" is too long");
	snprintf(p.to, sizeof(p.to), "%s", json_string_value(jt));
	if (!api_get_uint(body, "downtime_ms", 60000, &dt, &status, out) ||
	    !api_get_uint(body, "max_rounds", 1000, &rounds, &status, out) ||
	    !api_get_uint(body, "max_bandwidth", UINT64_C(1) << 50, &bw, &status, out) ||
	    !api_get_uint(body, "min_rate", GiB, &p.min_rate, &status, out))
		return status;
	if (!dt || !rounds)
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "\"downtime_ms\" and \"max_rounds\" must be at least 1");
	p.downtime_ms = (uint32_t)dt;
	p.max_rounds = (uint32_t)rounds;
	p.max_bandwidth = bw;
	{
		json_t *jd = body ? json_object_get(body, "with_disks") : NULL;

		if (jd && json_is_boolean(jd)) {
			p.with_disks = json_is_true(jd);
		} else if (jd && json_is_string(jd) && *json_string_value(jd) &&
			   strlen(json_string_value(jd)) < sizeof(p.disks)) {
			p.with_disks = true;
			snprintf(p.disks, sizeof(p.disks), "%s", json_string_value(jd));
		} else if (jd) {
			return api_error(out, MHD_HTTP_BAD_REQUEST, "\"with_disks\" must be true, "
					 "false or a list of disk serials (\"ID,ID\")");
		}
	}
	switch (api_vm_state(s->vm)) {
	case VM_STATE_RUNNING:
		break;
	case VM_STATE_STOPPING:
		return api_error(out, MHD_HTTP_CONFLICT, "VM is stopping");
	default:
		return api_error(out, MHD_HTTP_CONFLICT, "VM is not running (resume it first)");
	}
	ret = migrate_start(s->vm, &p, err, sizeof(err));
	if (ret == -EBUSY)
		return api_error(out, MHD_HTTP_CONFLICT, "%s", err);
	if (ret)
		return api_error(out, ret == -EINVAL ? MHD_HTTP_BAD_REQUEST :
				 MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot migrate: %s", err);
	migrate_get_progress(s->vm, &prog, false);
	*out = api_progress_json(&prog);
	return MHD_HTTP_ACCEPTED;
}

/*
 * GET /vm/migration[?release=1]: the progress.  With release=1 (what
 * `godwit migrate` sends), reading a final status lets a completed source
 * exit at once; other readers (migrate-status, monitoring) do not.
 */
static unsigned int api_vm_migration(struct api_server *s, json_t *body, json_t **out)
{
	struct migrate_progress prog;
	const char *rel = s->conn ? MHD_lookup_connection_value(s->conn, MHD_GET_ARGUMENT_KIND,
								"release") : NULL;

	migrate_get_progress(s->vm, &prog, rel && !strcmp(rel, "1"));
	*out = api_progress_json(&prog);
	return MHD_HTTP_OK;
}

static unsigned int api_vm_migrate_cancel(struct api_server *s, json_t *body, json_t **out)
{
	struct migrate_progress prog;
	char err[512] = "";
	int ret = migrate_cancel(s->vm, err, sizeof(err));

	if (ret)
		return api_error(out, MHD_HTTP_CONFLICT, "%s", err);
	migrate_get_progress(s->vm, &prog, false);
	*out = api_progress_json(&prog);
	return MHD_HTTP_OK;
}

/* PUT /vm/migrate-resolve {"action": "resume" | "discard"}. */
static unsigned int api_vm_migrate_resolve(struct api_server *s, json_t *body, json_t **out)
{
	json_t *ja = body ? json_object_get(body, "action") : NULL;
	struct migrate_progress prog;
	const char *a = ja && json_is_string(ja) ? json_string_value(ja) : "";
	char err[512] = "";
	int ret;

	if (strcmp(a, "resume") && strcmp(a, "discard"))
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "\"action\" must be \"resume\" or \"discard\"");
	ret = migrate_resolve(s->vm, !strcmp(a, "resume"), err, sizeof(err));
	if (ret == -ENOENT)
		return api_error(out, MHD_HTTP_CONFLICT, "%s", err);
	if (ret)
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", err);
	migrate_get_progress(s->vm, &prog, false);
	*out = api_progress_json(&prog);
	json_object_set_new(*out, "state", json_string(vm_state_name(api_vm_state(s->vm))));
	return MHD_HTTP_OK;
}

static const char *const api_snapshot_fields[] = { "path", "resume", NULL };
static const char *const api_migrate_fields[] = {
	"to", "downtime_ms", "max_bandwidth", "max_rounds", "min_rate", "with_disks", NULL
};
static const char *const api_resolve_fields[] = { "action", NULL };

static const struct api_route {
	const char *path;        /* after API_PREFIX */
	const char *method;
	const char *allow;       /* the Allow header of a 405 on this path */
	api_handler_fn fn;
	const char *const *fields; /* body fields the endpoint takes; NULL: none */
} api_routes[] = {
	{ "/vm",          "GET", "GET, HEAD", api_vm_get,      NULL },
	{ "/vm/pause",    "PUT", "PUT",       api_vm_pause,    NULL },
	{ "/vm/resume",   "PUT", "PUT",       api_vm_resume,   NULL },
	{ "/vm/shutdown", "PUT", "PUT",       api_vm_shutdown, NULL },
	{ "/vm/snapshot", "PUT", "PUT",       api_vm_snapshot, api_snapshot_fields },
	{ "/vm/migrate",  "PUT", "PUT",       api_vm_migrate,  api_migrate_fields },
	{ "/vm/migration", "GET", "GET, HEAD", api_vm_migration, NULL },
	{ "/vm/migrate-cancel", "PUT", "PUT", api_vm_migrate_cancel, NULL },
	{ "/vm/migrate-resolve", "PUT", "PUT", api_vm_migrate_resolve, api_resolve_fields },
};

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
	if (!strncmp(url, API_PREFIX, plen)) {
		for (size_t i = 0; i < ARRAY_SIZE(api_routes); i++) {
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
