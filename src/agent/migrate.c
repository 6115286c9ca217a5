/*
 * migrate.c - a migration's source side (docs/fleet.md, rules 2-4), one
 * worker thread per migration (at most AGENT_MAX_MIGRATIONS at once): ask
 * the destination's agent to prepare (peer.c), start the VMM's migration
 * with the commit gate, copy its progress to /godwit/vms/VM/migration, and
 * at the gate run the COMMIT transaction before the VMM may send COMMIT.
 * An unknown outcome (etcd did not answer) keeps the VM paused at the gate
 * until the owner record says what happened.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "godwit/etcd.h"
#include "godwit/log.h"
#include "godwit/tls.h"
#include "agent.h"

#define MIG_POLL_MS          20
#define MIG_RECORD_MS        500
#define MIG_GATE_RETRY_MS    500
#define MIG_GATE_LOG_MS      5000
#define MIG_TOKEN_MAX        AGENT_TOKEN_MAX
#define MIG_API_MISSES       50      /* x 20 ms: the source's API gone */
#define MIG_RECORD_MAX       (64 * 1024)  /* bytes of the migration record, at most */

struct mig_job {
	struct agent *a;
	char vm[FLEET_NAME_MAX];
	char to[FLEET_NAME_MAX];
	char token[MIG_TOKEN_MAX];
	char id[MIG_TOKEN_MAX];
	json_t *with_disks;      /* NULL, true or a string */
	json_int_t max_bandwidth, downtime_ms;   /* optional tuning from the intent; 0: default */
	uint64_t epoch;
	char api[PATH_MAX];
	char bad[AGENT_ERR_MAX]; /* the intent was invalid: why */
	json_t *rec;             /* the migration record */
	struct etcd *e;
	bool aborted;            /* not left: stopped at the gate, cancelled, or resumed here */
};

json_t *agent_tls_json(struct agent *a, const char *peer)
{
	static const char *const names[3] = { "ca.pem", "cert.pem", "key.pem" };
	static const char *const keys[3] = { "ca", "cert", "key" };
	char *pem[3] = { NULL, NULL, NULL }, err[AGENT_ERR_MAX];
	json_t *t = json_object();
	bool ok = t != NULL;

	for (int i = 0; i < 3 && ok; i++)
		if (tls_read_pem(a->tls_dir, names[i], &pem[i], err, sizeof(err))) {
			log_warnx("%s: %s", __func__, err);
			ok = false;
		}
	for (int i = 0; i < 3 && ok; i++)
		json_object_set_new(t, keys[i], json_string(pem[i]));
	if (ok && peer)
		json_object_set_new(t, "peer", json_string(peer));
	for (int i = 0; i < 3; i++) {
		if (pem[i])
			explicit_bzero(pem[i], strlen(pem[i]));
		free(pem[i]);
	}
	if (!ok) {
		json_decref(t);
		return NULL;
	}
	return t;
}

/*
 * The record keeps the VMM's report (progress), whose per-round history
 * grows with the rounds: past MIG_RECORD_MAX bytes only its last rounds are
 * kept (history_cut: how many there were).  The reconcile loops read every
 * VM's records several times a second.
 */
static char *mig_record_text(struct mig_job *j)
{
	json_t *prog = json_object_get(j->rec, "progress");
	json_t *h = json_object_get(prog, "history");
	size_t n = json_array_size(h);
	char *s = json_dumps(j->rec, JSON_COMPACT);

	while (s && strlen(s) > MIG_RECORD_MAX && json_array_size(h)) {
		size_t keep = json_array_size(h) / 2;

		free(s);
		while (json_array_size(h) > keep)
			json_array_remove(h, 0);
		json_object_set_new(prog, "history_cut", json_integer((json_int_t)n));
		s = json_dumps(j->rec, JSON_COMPACT);
	}
	return s;
}

static void mig_put_record(struct mig_job *j)
{
	char key[FLEET_KEY_MAX], err[AGENT_ERR_MAX];
	char *s = mig_record_text(j);

	if (!s)
		return;
	fleet_key_vm(key, sizeof(key), j->vm, "migration");
	if (etcd_put(j->e, key, s, 0, err, sizeof(err)))
		log_warnx("VM %s: migration record: %s", j->vm, err);
	free(s);
}

static void mig_phase(struct mig_job *j, const char *phase, const char *error)
{
	json_object_set_new(j->rec, "phase", json_string(phase));
	if (error)
		json_object_set_new(j->rec, "error", json_string(error));
	if (!strcmp(phase, "done") || !strcmp(phase, "failed")) {
		char now[32];

		agent_now_iso(now, sizeof(now));
		json_object_set_new(j->rec, "ended", json_string(now));
	}
	mig_put_record(j);
	log_info("VM %s: migration %s to %s: %s%s%s", j->vm, j->id, j->to, phase,
		 error ? ": " : "", error ? error : "");
}

static void mig_set_state(struct mig_job *j, const char *state)
{
	struct agent_vm *v;
	pid_t pid = 0;

	pthread_mutex_lock(&j->a->lock);
	if ((v = vms_find(j->a, j->vm))) {
		snprintf(v->state, sizeof(v->state), "%s", state);
		v->status_written = false;
		pid = v->pid;
	}
	pthread_mutex_unlock(&j->a->lock);
	if (pid && !vms_put_status(j->a, j->e, j->vm, j->epoch, state, pid, NULL)) {
		pthread_mutex_lock(&j->a->lock);
		if ((v = vms_find(j->a, j->vm)) && !strcmp(v->state, state))
			v->status_written = true;
		pthread_mutex_unlock(&j->a->lock);
	}
}

static bool mig_process_gone(struct mig_job *j)
{
	struct agent_vm *v;
	bool gone;

	pthread_mutex_lock(&j->a->lock);
	v = vms_find(j->a, j->vm);
	gone = !v || v->exit_status != -1;
	pthread_mutex_unlock(&j->a->lock);
	return gone;
}

/* "HOST:PORT" of the destination's agent from hosts/TO; 0 or -errno (err). */
static int mig_dest_addr(struct mig_job *j, char *addr, size_t alen, char *err, size_t len)
{
	char key[FLEET_KEY_MAX];
	struct etcd_kvs kvs = { 0 };
	json_t *h;
	const char *s;
	int ret;

	fleet_key_host(key, sizeof(key), j->to);
	ret = etcd_get(j->e, key, &kvs, err, len);
	if (ret)
		return ret;
	if (kvs.n != 1) {
		etcd_kvs_free(&kvs);
		snprintf(err, len, "host %s is not alive (no %s)", j->to, key);
		return -ENOENT;
	}
	h = json_loads(kvs.kv[0].value, 0, NULL);
	etcd_kvs_free(&kvs);
	s = h ? json_string_value(json_object_get(h, "addr")) : NULL;
	if (!s || !*s || strlen(s) >= alen || !strchr(s, ':')) {
		snprintf(err, len, "host %s's record has no valid addr", j->to);
		json_decref(h);
		return -EBADMSG;
	}
	snprintf(addr, alen, "%s", s);
	json_decref(h);
	return 0;
}

/* The COMMIT transaction (rule 2): 0 with *won, or -errno (outcome unknown). */
static int mig_commit_txn(struct mig_job *j, bool *won)
{
	char okey[FLEET_KEY_MAX], vkey[FLEET_KEY_MAX], from[FLEET_OWNER_MAX], to[FLEET_OWNER_MAX];
	char err[AGENT_ERR_MAX];
	struct fleet_owner o = { .epoch = j->epoch }, n = { .epoch = j->epoch + 1 };
	struct etcd_cmp cmp[2];
	struct etcd_op op;
	int ret;

	snprintf(o.host, sizeof(o.host), "%s", j->a->host);
	snprintf(n.host, sizeof(n.host), "%s", j->to);
	fleet_owner_format(&o, from, sizeof(from));
	fleet_owner_format(&n, to, sizeof(to));
	fleet_key_vm(okey, sizeof(okey), j->vm, "owner");
	fleet_key_veto(vkey, sizeof(vkey), j->vm, j->epoch);
	cmp[0] = (struct etcd_cmp){ .key = okey, .target = ETCD_VALUE, .result = ETCD_EQ,
				    .value = from };
	cmp[1] = (struct etcd_cmp){ .key = vkey, .target = ETCD_VERSION, .result = ETCD_EQ,
				    .num = 0 };
	op = (struct etcd_op){ .type = ETCD_OP_PUT, .key = okey, .value = to };
	ret = etcd_txn(j->e, cmp, 2, &op, 1, won, err, sizeof(err));
	if (ret)
		log_warnx("VM %s: the COMMIT transaction (\"%s\" -> \"%s\"): %s", j->vm, from, to,
			  err);
	else
		log_info("VM %s: the COMMIT transaction \"%s\" -> \"%s\" %s", j->vm, from, to,
			 *won ? "succeeded" : "failed (vetoed or the owner changed)");
	return ret;
}

/* Settle at the gate or in doubt, retrying while etcd is out: 0 resumed here, 1 gone. */
static int mig_settle(struct mig_job *j, const char *st, bool dest_refused)
{
	uint64_t last_log = 0;

	for (;;) {
		int ret = agent_settle_source(j->a, j->e, j->vm, j->api, j->epoch, st, dest_refused);

		if (ret != -EAGAIN)
			return ret;
		if (agent_now_ms() - last_log >= MIG_GATE_LOG_MS) {
			log_warnx("VM %s: etcd unreachable at the commit gate: the VM stays paused "
				  "(%s) until the owner record can be read", j->vm, st);
			last_log = agent_now_ms();
		}
		if (mig_process_gone(j))
			return 1;
		agent_sleep_ms(MIG_GATE_RETRY_MS);
	}
}

/* Ask the destination's agent for a port; 0 with *port, or -errno (err). */
static int mig_prepare(struct mig_job *j, const char *addr, unsigned int *port, char *err,
		       size_t len)
{
	json_t *req, *rep = NULL;
	int ret;

	req = json_pack("{s:s, s:s, s:s, s:I, s:s}", "op", "prepare", "vm", j->vm,
			"from", j->a->host, "epoch", (json_int_t)j->epoch, "token", j->token);
	if (!req) {
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	if (j->with_disks)
		json_object_set(req, "with_disks", j->with_disks);
	ret = peer_request(j->a, addr, j->to, req, &rep, err, len);
	json_decref(req);
	if (ret)
		return ret;
	if (!json_is_true(json_object_get(rep, "ok"))) {
		snprintf(err, len, "host %s refused: %s", j->to,
			 json_is_string(json_object_get(rep, "error")) ?
			 jstr(rep, "error") : "(no reason given)");
		json_decref(rep);
		return -EPERM;
	}
	{
		json_t *p = json_object_get(rep, "port");

		if (!json_is_integer(p) || json_integer_value(p) < 1 ||
		    json_integer_value(p) > 65535) {
			snprintf(err, len, "host %s answered without a valid port", j->to);
			json_decref(rep);
			return -EBADMSG;
		}
		*port = (unsigned int)json_integer_value(p);
	}
	json_decref(rep);
	return 0;
}

/* The body of PUT /vm/migrate. */
static char *mig_body(struct mig_job *j, const char *addr, unsigned int port)
{
	const char *colon = strrchr(addr, ':');
	char to[AGENT_ADDR_MAX + 16];
	json_t *b;
	char *s;

	snprintf(to, sizeof(to), "tcp:%.*s:%u", (int)(colon - addr), addr, port);
	b = json_pack("{s:s, s:b}", "to", to, "gate", 1);
	if (!b)
		return NULL;
	if (j->with_disks)
		json_object_set(b, "with_disks", j->with_disks);
	if (j->max_bandwidth)
		json_object_set_new(b, "max_bandwidth", json_integer(j->max_bandwidth));
	if (j->downtime_ms)
		json_object_set_new(b, "downtime_ms", json_integer(j->downtime_ms));
	if (j->a->tls_dir) {
		json_t *t = agent_tls_json(j->a, j->to);

		if (!t) {
			json_decref(b);
			return NULL;
		}
		json_object_set_new(b, "tls", t);
	} else if (j->a->insecure) {
		json_object_set_new(b, "insecure", json_true());
	}
	s = json_dumps(b, JSON_COMPACT);
	json_decref(b);
	return s;
}

static void mig_delete_intent(struct mig_job *j)
{
	char key[FLEET_KEY_MAX], err[AGENT_ERR_MAX];

	fleet_key_vm(key, sizeof(key), j->vm, "intent");
	for (int i = 0; i < 20 && !j->a->stop; i++) {
		if (etcd_delete(j->e, key, false, NULL, err, sizeof(err)) == 0)
			return;
		agent_sleep_ms(500);
	}
	log_warnx("VM %s: cannot delete its intent: %s", j->vm, err);
}

/* Follow the VMM's migration to its end; true if the VM left this host. */
static bool mig_follow(struct mig_job *j)
{
	uint64_t last_rec = 0;
	bool committed = false;
	int misses = 0;

	for (;;) {
		json_t *p = agent_api(j->api, "GET", "/api/v1/vm/migration?release=1", NULL, 5000);
		const char *st;

		if (!p) {
			if (committed && (mig_process_gone(j) || ++misses > MIG_API_MISSES)) {
				mig_phase(j, "done", NULL);
				return true;
			}
			if (mig_process_gone(j)) {
				mig_phase(j, "failed", "the VM process exited during the migration");
				return true;
			}
			agent_sleep_ms(MIG_POLL_MS * 5);
			continue;
		}
		misses = 0;
		st = jstr(p, "status");
		if (agent_now_ms() - last_rec >= MIG_RECORD_MS) {
			json_t *prog = json_deep_copy(p);

			json_object_del(prog, "error");
			json_object_set_new(j->rec, "progress", prog);
			if (!committed && strcmp(st, "commit-wait"))
				json_object_set_new(j->rec, "phase", json_string("copying"));
			mig_put_record(j);
			last_rec = agent_now_ms();
		}
		if (!strcmp(st, "commit-wait") && !committed) {
			bool won = false;
			int ret;

			json_object_set_new(j->rec, "progress", json_deep_copy(p));
			mig_phase(j, "commit-wait", NULL);
			ret = mig_commit_txn(j, &won);
			if (!ret && won) {
				json_t *r = agent_api(j->api, "PUT", "/api/v1/vm/migrate-commit",
						      "{\"commit\":true}", 10000);

				/* a lost reply is settled below: the status tells */
				json_decref(r);
				committed = true;
				mig_phase(j, "committing", NULL);
			} else {
				/* vetoed, moved, or unknown: the owner record decides */
				ret = mig_settle(j, "commit-wait", false);
				if (ret == 1) {
					committed = true;
					mig_phase(j, "committing", NULL);
				} else {
					json_decref(p);
					j->aborted = true;
					mig_phase(j, "failed", "the COMMIT transaction did not succeed "
						  "(vetoed): the VM resumed here");
					return false;
				}
			}
		} else if (!strcmp(st, "completed")) {
			json_object_set_new(j->rec, "progress", json_deep_copy(p));
			json_decref(p);
			mig_phase(j, "done", NULL);
			return true;
		} else if (!strcmp(st, "failed") || !strcmp(st, "cancelled")) {
			char e[AGENT_ERR_MAX];

			snprintf(e, sizeof(e), "%s", json_is_string(json_object_get(p, "error")) ?
				 jstr(p, "error") : st);
			j->aborted = !strcmp(st, "cancelled");
			json_object_set_new(j->rec, "progress", json_deep_copy(p));
			json_decref(p);
			mig_phase(j, "failed", e);
			return false;
		} else if (!strcmp(st, "in-doubt")) {
			bool refused = json_is_true(json_object_get(p, "dest_refused"));
			int ret;

			mig_set_state(j, "in-doubt");
			mig_phase(j, "in-doubt", json_is_string(json_object_get(p, "error")) ?
				  jstr(p, "error") : NULL);
			json_decref(p);
			ret = mig_settle(j, "in-doubt", refused);
			if (ret == 1) {
				mig_phase(j, "done", NULL);
				return true;
			}
			j->aborted = true;
			mig_phase(j, "failed", "in doubt; the owner record kept the VM here: resumed");
			return false;
		}
		json_decref(p);
		agent_sleep_ms(MIG_POLL_MS);
	}
}

static void *mig_thread(void *opaque)
{
	struct mig_job *j = opaque;
	struct agent *a = j->a;
	char err[AGENT_ERR_MAX], addr[AGENT_ADDR_MAX], now[32];
	struct agent_vm *v;
	unsigned int port = 0;
	bool left = false;
	json_t *r;
	char *body;

	STAT_ADD(a->n_mig_started, 1);
	agent_now_iso(now, sizeof(now));
	j->rec = json_pack("{s:s, s:s, s:s, s:I, s:s, s:{}, s:n, s:s, s:n}", "id", j->id,
			   "from", a->host, "to", j->to, "epoch", (json_int_t)j->epoch,
			   "phase", "preparing", "progress", "error", "started", now, "ended");
	if (!j->rec || agent_etcd_open(a, ETCD_TIMEOUT_MS, &j->e))
		goto out;
	if (j->bad[0]) {
		mig_phase(j, "failed", j->bad);
		goto done;
	}
	if (agent_bump_epoch(a, j->e, j->vm, &j->epoch)) {
		mig_phase(j, "failed", "cannot read or move the owner record (veto of an earlier "
			  "attempt)");
		goto done;
	}
	json_object_set_new(j->rec, "epoch", json_integer((json_int_t)j->epoch));
	mig_set_state(j, "migrating");
	mig_put_record(j);
	log_info("VM %s: migration %s to %s at epoch %" PRIu64 ": preparing", j->vm, j->id, j->to,
		 j->epoch);
	if (mig_dest_addr(j, addr, sizeof(addr), err, sizeof(err)) ||
	    mig_prepare(j, addr, &port, err, sizeof(err))) {
		mig_phase(j, "failed", err);
		goto done;
	}
	body = mig_body(j, addr, port);
	if (!body) {
		mig_phase(j, "failed", "cannot build the migration request (TLS files?)");
		goto done;
	}
	r = agent_api(j->api, "PUT", "/api/v1/vm/migrate", body, 10000);
	explicit_bzero(body, strlen(body));
	free(body);
	if (!r) {
		mig_phase(j, "failed", "the VM refused to start the migration (see the agent's log)");
		goto done;
	}
	json_decref(r);
	left = mig_follow(j);
done:
	mig_delete_intent(j);
out:
	pthread_mutex_lock(&a->lock);
	if ((v = vms_find(a, j->vm))) {
		v->busy = false;
		v->status_written = false;
		snprintf(v->done_token, sizeof(v->done_token), "%s", j->token);
		snprintf(v->state, sizeof(v->state), "%s", left ? "migrated" : "running");
		if (left) {
			v->epoch = 0;       /* no longer ours at any epoch */
			v->left_ms = agent_now_ms();
		}
	}
	a->migrations--;
	pthread_mutex_unlock(&a->lock);
	STAT_ADD(*(left ? &a->n_mig_completed : j->aborted ? &a->n_mig_aborted : &a->n_mig_failed), 1);
	json_decref(j->rec);
	json_decref(j->with_disks);
	etcd_close(j->e);
	free(j);
	return NULL;
}

void migrate_parse_intent(const char *host, json_t *intent, struct agent_intent *mi)
{
	json_t *wd = json_object_get(intent, "with_disks");
	const char *to = jstr(intent, "to"), *token = jstr(intent, "token"), *id = jstr(intent, "id");

	memset(mi, 0, sizeof(*mi));
	snprintf(mi->id, sizeof(mi->id), "%s", strlen(id) < sizeof(mi->id) ? id : "");
	if (!fleet_name_ok(to))
		snprintf(mi->bad, sizeof(mi->bad), "intent: \"to\" is not a host name");
	else if (!strcmp(to, host))
		snprintf(mi->bad, sizeof(mi->bad), "intent: \"to\" is this host");
	else if (!*token || strlen(token) >= sizeof(mi->token))
		snprintf(mi->bad, sizeof(mi->bad), "intent: \"token\" missing or too long");
	else if (wd && !json_is_boolean(wd) && !(json_is_string(wd) && strlen(jstr(intent, "with_disks")) < 256))
		snprintf(mi->bad, sizeof(mi->bad), "intent: \"with_disks\" must be a boolean or a "
			 "list of disk serials");
	{
		json_t *bw = json_object_get(intent, "max_bandwidth");
		json_t *dt = json_object_get(intent, "downtime_ms");

		if (bw && (!json_is_integer(bw) || json_integer_value(bw) < (1 << 20)))
			snprintf(mi->bad, sizeof(mi->bad), "intent: \"max_bandwidth\" must be bytes "
				 "per second, at least 1M");
		else if (bw)
			mi->max_bandwidth = json_integer_value(bw);
		if (dt && (!json_is_integer(dt) || json_integer_value(dt) < 1 ||
			   json_integer_value(dt) > 60000))
			snprintf(mi->bad, sizeof(mi->bad), "intent: \"downtime_ms\" must be 1-60000");
		else if (dt)
			mi->downtime_ms = json_integer_value(dt);
	}
	snprintf(mi->to, sizeof(mi->to), "%s", fleet_name_ok(to) ? to : "?");
	snprintf(mi->token, sizeof(mi->token), "%s", strlen(token) < sizeof(mi->token) ? token : "");
	if (wd && !json_is_false(wd) && !mi->bad[0])
		mi->with_disks = json_is_true(wd) ? json_true() : json_string(jstr(intent, "with_disks"));
}

int migrate_spawn(struct agent *a, const char *vm, uint64_t epoch, json_t *intent)
{
	struct mig_job *j = calloc(1, sizeof(*j));
	struct agent_intent mi;
	struct agent_vm *v;
	pthread_t th;

	if (!j)
		return -ENOMEM;
	j->a = a;
	j->epoch = epoch;
	snprintf(j->vm, sizeof(j->vm), "%s", vm);
	migrate_parse_intent(a->host, intent, &mi);
	memcpy(j->to, mi.to, sizeof(j->to));
	memcpy(j->token, mi.token, sizeof(j->token));
	memcpy(j->id, mi.id, sizeof(j->id));
	memcpy(j->bad, mi.bad, sizeof(j->bad));
	j->with_disks = mi.with_disks;
	j->max_bandwidth = mi.max_bandwidth;
	j->downtime_ms = mi.downtime_ms;

	pthread_mutex_lock(&a->lock);
	v = vms_find(a, vm);
	if (!v || v->busy || (j->token[0] && !strcmp(v->done_token, j->token))) {
		pthread_mutex_unlock(&a->lock);
		json_decref(j->with_disks);
		free(j);
		return 0;
	}
	if (a->migrations >= AGENT_MAX_MIGRATIONS) {
		pthread_mutex_unlock(&a->lock);
		json_decref(j->with_disks);
		free(j);
		return -EBUSY;
	}
	snprintf(j->api, sizeof(j->api), "%s", v->api);
	v->busy = true;
	a->migrations++;
	if (pthread_create(&th, NULL, mig_thread, j)) {
		v->busy = false;
		a->migrations--;
		pthread_mutex_unlock(&a->lock);
		json_decref(j->with_disks);
		free(j);
		return -EAGAIN;
	}
	pthread_mutex_unlock(&a->lock);
	pthread_detach(th);
	return 0;
}
