/*
 * api_vm.c - the /api/v1 handlers and their routes (api_int.h): the VM's
 * status, pause, resume, shutdown, snapshot and migration.  Each checks its
 * body and the VM's state, calls into the VMM, and answers with an HTTP
 * status and a JSON object; the server (api.c) does the rest.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "godwit/dev.h"
#include "godwit/log.h"
#include "godwit/migrate.h"
#include "godwit/guard.h"
#include "godwit/tls.h"
#include "godwit/snapshot.h"
#include "godwit/vm.h"
#include "api_int.h"

/* ---- handlers: return an HTTP status and set *out (NULL: no body) ---- */

static enum vm_state api_vm_state(struct vm *vm)
{
	enum vm_state state;

	pthread_mutex_lock(&vm->lock);
	state = vm->state;
	pthread_mutex_unlock(&vm->lock);
	return state;
}

/* The state as the API says it: "fenced" for a running VM whose vCPUs a fence holds. */
const char *api_vm_state_name(struct vm *vm)
{
	enum vm_state state = api_vm_state(vm);

	if (state == VM_STATE_RUNNING && vm_fenced(vm))
		return "fenced";
	return vm_state_name(state);
}

static unsigned int api_state_reply(struct api_server *s, unsigned int status, json_t **out)
{
	*out = json_pack("{s:s}", "state", api_vm_state_name(s->vm));
	return status;
}

/* A lease ID as etcd writes it (a decimal string). */
static const char *api_lease_str(int64_t id)
{
	static __thread char buf[24];

	snprintf(buf, sizeof(buf), "%lld", (long long)id);
	return buf;
}

static unsigned int api_vm_get(struct api_server *s, json_t *body, json_t **out)
{
	const struct vm_config *cfg = &s->vm->cfg;
	char uuid[UUID_STR_LEN];

	*out = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:s?, s:f, s:I, s:{s:s, s:I, s:I, s:s?}, "
			 "s:s?}",
			 "name", cfg->name,
			 "uuid", uuid_str(cfg->uuid, uuid),
			 "state", api_vm_state_name(s->vm),
			 "vcpus", (json_int_t)cfg->ncpus,
			 "memory_bytes", (json_int_t)cfg->mem_size,
			 "cpu_model", cpu_model_name(cfg->cpu_model),
			 "kernel", cfg->kernel,
			 "uptime_s", (double)(long long)(vm_uptime(s->vm) * 1000 + 0.5) / 1000,
			 "pid", (json_int_t)sandbox_pid(),
			 "sandbox",
			 "seccomp", sandbox_mode_name(cfg->sandbox.mode),
			 "uid", (json_int_t)getuid(),
			 "gid", (json_int_t)getgid(),
			 "jail", cfg->sandbox.jail,
			 "snapshot_dir", cfg->snapshot_dir ? cfg->snapshot_dir_real : NULL);
	if (*out && s->vm->guard) {
		struct fleet_guard_info gi;

		fleet_guard_info(s->vm->guard, &gi);
		json_object_set_new(*out, "fleet_lease", json_pack(
			"{s:s, s:I, s:b, s:b, s:f, s:s}",
			"lease", api_lease_str(gi.lease), "ttl_s", (json_int_t)gi.ttl_s,
			"fenced", gi.fenced, "lease_gone", gi.lease_gone,
			"since_renewed_ms", gi.since_ok_ms, "error", gi.error));
	}
	return MHD_HTTP_OK;
}

/* PUT /vm/fleet-lease {"lease": "ID"}: the agent's new host lease (guard.h). */
static unsigned int api_vm_fleet_lease(struct api_server *s, json_t *body, json_t **out)
{
	json_t *jl = body ? json_object_get(body, "lease") : NULL;
	char err[256];
	int64_t id;

	if (!s->vm->guard)
		return api_error(out, MHD_HTTP_CONFLICT, "this VM has no host lease guard (it was "
				 "not started with --fleet-lease)");
	if (!jl || !json_is_string(jl) || fleet_lease_parse(json_string_value(jl), &id))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "\"lease\" must be a lease ID (a "
				 "positive decimal number, as a string)");
	if (fleet_guard_set_lease(s->vm->guard, id, err, sizeof(err)))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "%s", err);
	return api_vm_get(s, NULL, out);
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

/*
 * PUT /vm/snapshot {"path": "NAME" or "/snapshot/dir/NAME", "resume": false}:
 * the whole VM into a file directly in the directory the VM was started
 * with (--snapshot-dir; without it snapshots are refused), through the
 * directory's descriptor (snapshot_take, snapshot.h).  The file is created
 * (as a temporary beside it) before the VM is touched, so a bad path costs
 * the guest nothing.  With resume the VM goes back to the state it had
 * (running or paused); without, it stays stopped and godwit exits with
 * status 0 (EXIT_POWEROFF) after the reply.  On any failure the VM goes
 * back to the state it had and keeps running.
 */
static unsigned int api_vm_snapshot(struct api_server *s, json_t *body, json_t **out)
{
	json_t *jp = body ? json_object_get(body, "path") : NULL;
	json_t *jr = body ? json_object_get(body, "resume") : NULL;
	json_t *jl = body ? json_object_get(body, "live") : NULL;
	const struct snapshot_vm_ops ops = { .pause = s->ops->pause, .resume = s->ops->resume };
	const struct vm_config *cfg = &s->vm->cfg;
	struct snapshot_result res = { 0 };
	enum snapshot_stage stage;
	struct snapshot_file f;
	enum vm_state state;
	const char *path;
	char err[512] = "", why[128];
	unsigned int status;
	bool resume, live;
	double ms;
	int ret;

	if (!jp || !json_is_string(jp) || !*json_string_value(jp))
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "\"path\" (the snapshot file, in the --snapshot-dir) is required");
	path = json_string_value(jp);
	if (!cfg->snapshot_dir)
		return api_error(out, MHD_HTTP_CONFLICT, "snapshots are off: this VM was started "
				 "without --snapshot-dir");
	if (jr && !json_is_boolean(jr))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "\"resume\" must be true or false");
	resume = jr && json_is_true(jr);
	if (jl && !json_is_boolean(jl))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "\"live\" must be true or false");
	live = jl && json_is_true(jl);
	status = api_migration_busy(s, out);
	if (status)
		return status;
	state = api_vm_state(s->vm);
	if (state == VM_STATE_STOPPING)
		return api_error(out, MHD_HTTP_CONFLICT, "VM is stopping");
	if (state != VM_STATE_RUNNING && state != VM_STATE_PAUSED)
		return api_error(out, MHD_HTTP_CONFLICT, "VM is not running");
	if (live && state != VM_STATE_RUNNING)
		return api_error(out, MHD_HTTP_CONFLICT, "a live snapshot needs a running VM: "
				 "this one is paused (take it without live, or resume it first)");
	ret = snapshot_file_create(cfg->snapshot_dirfd, cfg->snapshot_dir_real, path, &f, err,
				   sizeof(err));
	if (ret)
		return api_error(out, MHD_HTTP_BAD_REQUEST, "cannot write the snapshot: %s", err);
	if (live) {
		ret = snapshot_take_live(s->vm, &ops, &f, resume, &res, &stage, err, sizeof(err));
		ms = res.ms;
	} else {
		ret = snapshot_take(s->vm, &ops, &f, state == VM_STATE_RUNNING, resume, &res, &ms,
				    &stage, err, sizeof(err));
	}
	if (ret && stage == SNAPSHOT_PAUSING)
		return ret == -EBUSY ? api_error(out, MHD_HTTP_CONFLICT, "VM is stopping") :
		       api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "pause failed: %s",
				 strerror(-ret));
	if (ret) {
		log_warnx("%s: snapshot to %s failed: %s", __func__, path, err);
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "snapshot failed: %s", err);
	}
	log_info("snapshot to %s: %llu bytes in %.1f ms, %u pass%s, paused %.1f ms%s%s", path,
		 (unsigned long long)res.bytes, ms, res.passes, res.passes == 1 ? "" : "es",
		 res.pause_ms, res.direct ? ", O_DIRECT" : "", resume ? "" : "; stopping");
	if (!resume) {
		snprintf(why, sizeof(why), "stopped after a snapshot");
		s->ops->request_exit(s->vm, EXIT_POWEROFF, why);
	}
	*out = json_pack("{s:s, s:I, s:f, s:I, s:I, s:b, s:I, s:f, s:f, s:b, s:s}",
			 "path", path,
			 "bytes", (json_int_t)res.bytes,
			 "ms", (double)(long long)(ms * 1000 + 0.5) / 1000,
			 "ram_pages", (json_int_t)res.ram.pages,
			 "zero_pages", (json_int_t)res.ram.zero_pages,
			 "live", live,
			 "passes", (json_int_t)res.passes,
			 "pause_ms", (double)(long long)(res.pause_ms * 1000 + 0.5) / 1000,
			 "write_mib_s", ms > 0 ? (double)(long long)((double)res.bytes / MiB /
								    (ms / 1e3) * 10 + 0.5) / 10 : 0.0,
			 "direct", res.direct,
			 "state", api_vm_state_name(s->vm));
	return MHD_HTTP_OK;
}

static double api_round3(double v)
{
	return (double)(long long)(v * 1000 + 0.5) / 1000;
}

static json_t *api_rates_json(const double *v, unsigned int n)
{
	json_t *a = json_array();

	for (unsigned int i = 0; a && i < n; i++)
		json_array_append_new(a, json_real(api_round3(v[i])));
	return a;
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
	if (j && p->channels)
		json_object_set_new(j, "channels", json_integer(p->channels));
	if (j && (p->disk_bytes || p->disk_rounds)) {
		json_object_set_new(j, "disk_bytes", json_integer((json_int_t)p->disk_bytes));
		json_object_set_new(j, "disk_rounds", json_integer(p->disk_rounds));
		json_object_set_new(j, "disk_remaining_bytes",
				    json_integer((json_int_t)p->disk_remaining_bytes));
		json_object_set_new(j, "disk_dirty_rate_bps", json_real(api_round3(p->disk_dirty_rate)));
	}
	if (j && p->status != MIG_NONE) {
		json_object_set_new(j, "tls", p->tls[0] ? json_string(p->tls) : json_null());
		json_object_set_new(j, "insecure", json_boolean(p->insecure));
	}
	if (j && p->status != MIG_NONE && p->status != MIG_INCOMING)
		json_object_set_new(j, "compress", json_pack(
			"{s:s, s:I, s:I, s:I, s:I, s:b}",
			"mode", stream_compress_name(p->compress),
			"sections", (json_int_t)p->compress_st.sections,
			"bytes_in", (json_int_t)p->compress_st.bytes_in,
			"bytes_out", (json_int_t)p->compress_st.bytes_out,
			"switches", (json_int_t)p->compress_st.switches,
			"active", p->compress_st.active));
	if (j && (p->postcopy != PC_OFF || p->postcopy_switched)) {
		json_object_set_new(j, "postcopy", json_string(pc_mode_name(p->postcopy)));
		json_object_set_new(j, "postcopy_switched", json_boolean(p->postcopy_switched));
		if (p->postcopy_switched) {
			json_object_set_new(j, "postcopy_start_ms",
					    json_real(api_round3(p->postcopy_start_ms)));
			json_object_set_new(j, "postcopy_pages", json_integer((json_int_t)p->postcopy_pages));
			json_object_set_new(j, "postcopy_requested",
					    json_integer((json_int_t)p->postcopy_requested));
			json_object_set_new(j, "postcopy_pushed",
					    json_integer((json_int_t)p->postcopy_pushed));
			json_object_set_new(j, "fault_latency_median_ms",
					    json_real(api_round3(p->fault_median_ms)));
			json_object_set_new(j, "fault_latency_max_ms",
					    json_real(api_round3(p->fault_max_ms)));
			json_object_set_new(j, "postcopy_ms", json_real(api_round3(p->postcopy_ms)));
			json_object_set_new(j, "postcopy_breaks", json_integer(p->postcopy_breaks));
		}
	}
	if (j) {
		json_object_set_new(j, "gate", json_boolean(p->gate));
		json_object_set_new(j, "dest_refused", json_boolean(p->dest_refused));
	}
	if (j && p->status != MIG_NONE && p->status != MIG_INCOMING) {
		json_object_set_new(j, "dirty_tracking", json_string(p->dirty_ring ? "ring" : "log"));
		if (p->nr_vcpu_rates)
			json_object_set_new(j, "vcpu_dirty_rate_bps",
					    api_rates_json(p->vcpu_dirty_rate, p->nr_vcpu_rates));
		json_object_set_new(j, "throttle", json_boolean(p->throttle));
		json_object_set_new(j, "downtime_limit_ms", json_integer(p->downtime_limit_ms));
		json_object_set_new(j, "switch_expected_ms",
				    json_real(api_round3(p->switch_expected_ms)));
		json_object_set_new(j, "reconnects", json_integer(p->reconnects));
		json_object_set_new(j, "resent_pages", json_integer((json_int_t)p->resent_pages));
		json_object_set_new(j, "throttle_budget_bps", json_real(api_round3(p->throttle_budget)));
		if (p->nr_vcpu_throttle)
			json_object_set_new(j, "vcpu_throttle_pct",
					    api_rates_json(p->vcpu_throttle_pct, p->nr_vcpu_throttle));
	}
	if (j && p->paused)
		json_object_set_new(j, "pause_start_ms", json_real(api_round3(p->pause_start_ms)));
	if (j && p->phases && p->status == MIG_COMPLETED)
		json_object_set_new(j, "over_limit",
				    json_boolean(p->downtime_ms > p->downtime_limit_ms));
	if (j && p->phases) {
		json_t *ph = json_object();

		for (unsigned int i = 0; ph && i < MIG_PHASE_COUNT; i++) {
			/* The gate's phase exists only with a gate. */
			if (i == MIG_PHASE_GATE && !p->gate)
				continue;
			json_object_set_new(ph, migrate_phase_name(i),
					    json_real(api_round3(p->phase_ms[i])));
		}
		json_object_set_new(j, "phases_ms", ph);
	}
	if (j && p->error[0])
		json_object_set_new(j, "error", json_string(p->error));
	return j;
}

/* The finished pre-copy rounds, oldest first (GET /vm/migration "history"). */
static json_t *api_history_json(struct vm *vm)
{
	struct migrate_round *h;
	size_t n = migrate_get_history(vm, NULL, 0);
	json_t *a = json_array();

	if (!a || !n)
		return a;
	h = calloc(n, sizeof(*h));
	if (!h) {
		json_decref(a);
		return NULL;
	}
	/* Rounds only grow: a second read may find more, never fewer. */
	n = MIN(n, migrate_get_history(vm, h, n));
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_pack(
			"{s:I, s:f, s:f, s:I, s:I, s:f, s:f, s:f}",
			"round", (json_int_t)h[i].round,
			"start_ms", api_round3(h[i].start_ms),
			"ms", api_round3(h[i].ms),
			"bytes", (json_int_t)h[i].bytes,
			"remaining_bytes", (json_int_t)h[i].remaining_bytes,
			"dirty_rate_bps", api_round3(h[i].dirty_rate),
			"bandwidth_bps", api_round3(h[i].bandwidth),
			"expected_downtime_ms", api_round3(h[i].expected_downtime_ms));

		if (e && h[i].nr_vcpu_rates)
			json_object_set_new(e, "vcpu_dirty_rate_bps",
					    api_rates_json(h[i].vcpu_dirty_rate,
							   MIN(h[i].nr_vcpu_rates, MIG_ROUND_VCPUS)));
		if (e && (h[i].throttle_budget > 0 || h[i].throttle_pct > 0)) {
			json_object_set_new(e, "throttle_budget_bps",
					    json_real(api_round3(h[i].throttle_budget)));
			json_object_set_new(e, "throttle_pct", json_real(api_round3(h[i].throttle_pct)));
			json_object_set_new(e, "vcpu_throttle_pct",
					    api_rates_json(h[i].vcpu_throttle_pct,
							   MIN(h[i].nr_vcpu_throttle, MIG_ROUND_VCPUS)));
		}
		json_array_append_new(a, e);
	}
	free(h);
	return a;
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
 * "tls": {"ca": PEM, "cert": PEM, "key": PEM, "peer": NAME}: mutual TLS to
 * the destination, the credentials handed over by the client (godwit
 * migrate --tls-dir reads the files: the VM process never opens them).
 * 0 with p->tls set (or no "tls"), or the HTTP status with *out.
 */
static unsigned int api_migrate_tls(json_t *body, struct migrate_params *p, json_t **out)
{
	json_t *jt = body ? json_object_get(body, "tls") : NULL;
	const char *pem[3], *peer = NULL;
	static const char *const keys[3] = { "ca", "cert", "key" };
	char err[512];

	if (!jt)
		return 0;
	if (!json_is_object(jt))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "\"tls\" must be an object with "
				 "\"ca\", \"cert\" and \"key\" (PEM) and optionally \"peer\"");
	if (p->insecure)
		return api_error(out, MHD_HTTP_BAD_REQUEST, "\"tls\" and \"insecure\" contradict "
				 "each other");
	for (int i = 0; i < 3; i++) {
		json_t *v = json_object_get(jt, keys[i]);

		if (!json_is_string(v) || !*json_string_value(v))
			return api_error(out, MHD_HTTP_BAD_REQUEST, "\"tls\": \"%s\" (PEM text) is "
					 "required", keys[i]);
		pem[i] = json_string_value(v);
	}
	if (json_object_get(jt, "peer")) {
		peer = json_string_value(json_object_get(jt, "peer"));
		if (!peer || !*peer)
			return api_error(out, MHD_HTTP_BAD_REQUEST, "\"tls\": \"peer\" must be a "
					 "non-empty name");
	}
	if (tls_creds_from_pem(pem[0], pem[1], pem[2], peer, false, &p->tls, err, sizeof(err)))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "\"tls\": %s", err);
	return 0;
}

/*
 * PUT /vm/migrate {"to": "tcp:HOST:PORT", "downtime_ms": 50, "max_bandwidth":
 * bytes/s, "max_rounds": 30, "min_rate": bytes/s, "tls": {...}, "insecure":
 * false, "gate": false}: start migrating (migrate.h); 202 with the progress.
 * GET /vm/migration follows it; with "gate", it stops at "commit-wait" until
 * PUT /vm/migrate-commit.
 */
static unsigned int api_vm_migrate(struct api_server *s, json_t *body, json_t **out)
{
	struct migrate_params p = {
		.downtime_ms = MIG_DEFAULT_DOWNTIME_MS,
		.max_rounds = MIG_DEFAULT_MAX_ROUNDS,
		.min_rate = MIG_DEFAULT_MIN_RATE,
		.compress = STREAM_COMPRESS_AUTO,
	};
	struct migrate_progress prog;
	json_t *jt = body ? json_object_get(body, "to") : NULL;
	uint64_t dt = p.downtime_ms, rounds = p.max_rounds, bw = 0, reconnect = 0, channels = 0;
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
	    !api_get_uint(body, "min_rate", GiB, &p.min_rate, &status, out) ||
	    !api_get_uint(body, "reconnect_s", SNAPSHOT_RECONNECT_MAX_S, &reconnect, &status, out) ||
	    !api_get_uint(body, "channels", MIG_MAX_CHANNELS, &channels, &status, out))
		return status;
	p.reconnect_s = (uint32_t)reconnect;
	p.channels = (uint32_t)channels;
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
		} else if (jd && json_is_string(jd) && *json_string_value(jd)) {
			p.with_disks = true;
			if (disk_serials_parse(json_string_value(jd), p.disks, ARRAY_SIZE(p.disks),
					       &p.nr_disks, err, sizeof(err)))
				return api_error(out, MHD_HTTP_BAD_REQUEST, "\"with_disks\": %s", err);
		} else if (jd) {
			return api_error(out, MHD_HTTP_BAD_REQUEST, "\"with_disks\" must be true, "
					 "false or a list of disk serials (\"ID,ID\")");
		}
	}
	{
		json_t *ji = body ? json_object_get(body, "insecure") : NULL;

		if (ji && !json_is_boolean(ji))
			return api_error(out, MHD_HTTP_BAD_REQUEST, "\"insecure\" must be true or false");
		p.insecure = ji && json_is_true(ji);
	}
	{
		json_t *jg = body ? json_object_get(body, "gate") : NULL;

		if (jg && !json_is_boolean(jg))
			return api_error(out, MHD_HTTP_BAD_REQUEST, "\"gate\" must be true or false");
		p.gate = jg && json_is_true(jg);
	}
	{
		json_t *jz = body ? json_object_get(body, "compress") : NULL;

		if (jz && (!json_is_string(jz) ||
			   stream_compress_parse(json_string_value(jz), &p.compress)))
			return api_error(out, MHD_HTTP_BAD_REQUEST,
					 "\"compress\" must be \"auto\", \"off\" or \"zstd\"");
	}
	{
		json_t *jp = body ? json_object_get(body, "postcopy") : NULL;

		if (jp && (!json_is_string(jp) ||
			   pc_mode_parse(json_string_value(jp), &p.postcopy)))
			return api_error(out, MHD_HTTP_BAD_REQUEST,
					 "\"postcopy\" must be \"off\", \"auto\" or \"now\"");
	}
	{
		json_t *jthr = body ? json_object_get(body, "throttle") : NULL;

		if (jthr && !json_is_boolean(jthr))
			return api_error(out, MHD_HTTP_BAD_REQUEST, "\"throttle\" must be true or false");
		p.throttle = !jthr || json_is_true(jthr);
	}
	switch (api_vm_state(s->vm)) {
	case VM_STATE_RUNNING:
		break;
	case VM_STATE_STOPPING:
		return api_error(out, MHD_HTTP_CONFLICT, "VM is stopping");
	default:
		return api_error(out, MHD_HTTP_CONFLICT, "VM is not running (resume it first)");
	}
	status = api_migrate_tls(body, &p, out);
	if (status)
		return status;
	/* migrate_start() owns p.tls from here. */
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
	if (*out && prog.status != MIG_INCOMING)
		json_object_set_new(*out, "history", api_history_json(s->vm));
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

/*
 * PUT /vm/migrate-commit {"commit": true | false}: the decision at the commit
 * gate ("gate": true).  true: COMMIT goes (status "committing"; follow GET
 * /vm/migration); false: ABORT, and the VM runs here again when the reply
 * comes.  409 when no migration waits at the gate.
 */
static unsigned int api_vm_migrate_commit(struct api_server *s, json_t *body, json_t **out)
{
	json_t *jc = body ? json_object_get(body, "commit") : NULL;
	struct migrate_progress prog;
	char err[512] = "";
	int ret;

	if (!jc || !json_is_boolean(jc))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "\"commit\" (true: send COMMIT, "
				 "false: abort and resume the VM here) is required");
	ret = migrate_commit(s->vm, json_is_true(jc), err, sizeof(err));
	if (ret == -ENOENT)
		return api_error(out, MHD_HTTP_CONFLICT, "%s", err);
	if (ret)
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", err);
	migrate_get_progress(s->vm, &prog, false);
	*out = api_progress_json(&prog);
	json_object_set_new(*out, "state", json_string(api_vm_state_name(s->vm)));
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
	json_object_set_new(*out, "state", json_string(api_vm_state_name(s->vm)));
	return MHD_HTTP_OK;
}

/*
 * PUT /vm/migrate-resume {"to": ADDR (optional)}: a post-copy whose link
 * broke connects to its destination again (at ADDR if given).  409 when
 * none waits; follow GET /vm/migration.
 */
static unsigned int api_vm_migrate_resume(struct api_server *s, json_t *body, json_t **out)
{
	json_t *jt = body ? json_object_get(body, "to") : NULL;
	struct migrate_progress prog;
	char err[512] = "";
	int ret;

	if (jt && (!json_is_string(jt) || !*json_string_value(jt) ||
		   strlen(json_string_value(jt)) >= MIG_ADDR_MAX))
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "\"to\" must be an address (tcp:HOST:PORT or unix:PATH)");
	ret = migrate_resume(s->vm, jt ? json_string_value(jt) : NULL, err, sizeof(err));
	if (ret == -ENOENT)
		return api_error(out, MHD_HTTP_CONFLICT, "%s", err);
	if (ret)
		return api_error(out, MHD_HTTP_BAD_REQUEST, "%s", err);
	migrate_get_progress(s->vm, &prog, false);
	*out = api_progress_json(&prog);
	return MHD_HTTP_OK;
}

static const char *const api_snapshot_fields[] = { "path", "resume", "live", NULL };
static const char *const api_resume_fields[] = { "to", NULL };
static const char *const api_migrate_fields[] = {
	"to", "downtime_ms", "max_bandwidth", "max_rounds", "min_rate", "with_disks", "tls",
	"insecure", "gate", "throttle", "reconnect_s", "postcopy", "compress", "channels", NULL
};
static const char *const api_resolve_fields[] = { "action", NULL };
static const char *const api_commit_fields[] = { "commit", NULL };
static const char *const api_lease_fields[] = { "lease", NULL };

const struct api_route api_routes[] = {
	{ "/vm",          "GET", "GET, HEAD", api_vm_get,      NULL },
	{ "/vm/pause",    "PUT", "PUT",       api_vm_pause,    NULL },
	{ "/vm/resume",   "PUT", "PUT",       api_vm_resume,   NULL },
	{ "/vm/shutdown", "PUT", "PUT",       api_vm_shutdown, NULL },
	{ "/vm/snapshot", "PUT", "PUT",       api_vm_snapshot, api_snapshot_fields },
	{ "/vm/migrate",  "PUT", "PUT",       api_vm_migrate,  api_migrate_fields },
	{ "/vm/migration", "GET", "GET, HEAD", api_vm_migration, NULL },
	{ "/vm/migrate-cancel", "PUT", "PUT", api_vm_migrate_cancel, NULL },
	{ "/vm/migrate-resolve", "PUT", "PUT", api_vm_migrate_resolve, api_resolve_fields },
	{ "/vm/migrate-commit", "PUT", "PUT", api_vm_migrate_commit, api_commit_fields },
	{ "/vm/migrate-resume", "PUT", "PUT", api_vm_migrate_resume, api_resume_fields },
	{ "/vm/fleet-lease", "PUT", "PUT",   api_vm_fleet_lease, api_lease_fields },
};
const size_t api_nr_routes = ARRAY_SIZE(api_routes);
