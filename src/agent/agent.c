/*
 * agent.c - the reconcile loop (docs/fleet.md): every AGENT_TICK_MS it reads
 * the /godwit/vms/ prefix in one range request (and /godwit/hosts/,
 * /godwit/cordon/) and acts on the VMs whose owner names this host: starts
 * the new ones, carries out their intents (stop here, migrate in migrate.c),
 * keeps their status records true, settles adopted VMs left at the commit
 * gate or in doubt, and applies rule 6 to the VMs of hosts whose lease
 * expired.  It never starts a VM whose owner does not name this host at the
 * epoch it acts on.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "godwit/api.h"
#include "godwit/etcd.h"
#include "godwit/log.h"
#include "agent.h"

#define AGENT_REFRESH_MS     2000
#define AGENT_STOP_GRACE_MS  15000
#define AGENT_KILL_GRACE_MS  5000
#define AGENT_LEAVE_MS       15000   /* a migrated source exits by itself within this */

const char *jstr(json_t *j, const char *k)
{
	const char *s = json_string_value(json_object_get(j, k));

	return s ? s : "";
}

bool agent_owner_is(const char *val, const char *host, uint64_t epoch)
{
	struct fleet_owner o;

	return val && fleet_owner_parse(val, &o) == 0 && !strcmp(o.host, host) && o.epoch == epoch;
}

/* One VM of the fleet as read in one tick. */
struct fvm {
	char name[FLEET_NAME_MAX];
	json_t *spec, *status, *intent, *migration;
	bool has_owner;
	char owner_raw[FLEET_OWNER_MAX];
	struct fleet_owner owner;
};

struct fhost {
	char name[FLEET_NAME_MAX];
	uint64_t free_mem;
	bool cordoned;
};

static json_t *agent_parse_obj(const char *key, const char *val)
{
	json_t *j = json_loads(val, JSON_REJECT_DUPLICATES, NULL);

	if (!json_is_object(j)) {
		log_debug("%s: %s: not a JSON object; ignored", __func__, key);
		json_decref(j);
		return NULL;
	}
	return j;
}

static void fvms_free(struct fvm *f, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		json_decref(f[i].spec);
		json_decref(f[i].status);
		json_decref(f[i].intent);
		json_decref(f[i].migration);
	}
	free(f);
}

/* /godwit/vms/ keys into one struct fvm per VM (keys come sorted: each VM's together). */
static int fvms_parse(const struct etcd_kvs *kvs, struct fvm **out, size_t *nout)
{
	static const char pfx[] = FLEET_PREFIX "vms/";
	struct fvm *f = calloc(kvs->n ? kvs->n : 1, sizeof(*f));
	size_t n = 0;

	if (!f)
		return -ENOMEM;
	for (size_t i = 0; i < kvs->n; i++) {
		const char *k = kvs->kv[i].key, *v = kvs->kv[i].value, *slash, *what;
		char name[FLEET_NAME_MAX];
		struct fvm *cur;
		size_t nl;

		if (!k || !v || strncmp(k, pfx, sizeof(pfx) - 1))
			continue;
		k += sizeof(pfx) - 1;
		slash = strchr(k, '/');
		if (!slash || (nl = (size_t)(slash - k)) >= sizeof(name))
			continue;
		memcpy(name, k, nl);
		name[nl] = '\0';
		if (!fleet_name_ok(name))
			continue;
		what = slash + 1;
		if (!n || strcmp(f[n - 1].name, name)) {
			cur = &f[n++];
			snprintf(cur->name, sizeof(cur->name), "%s", name);
		} else {
			cur = &f[n - 1];
		}
		if (!strcmp(what, "spec"))
			cur->spec = agent_parse_obj(kvs->kv[i].key, v);
		else if (!strcmp(what, "status"))
			cur->status = agent_parse_obj(kvs->kv[i].key, v);
		else if (!strcmp(what, "intent"))
			cur->intent = agent_parse_obj(kvs->kv[i].key, v);
		else if (!strcmp(what, "migration"))
			cur->migration = agent_parse_obj(kvs->kv[i].key, v);
		else if (!strcmp(what, "owner") && fleet_owner_parse(v, &cur->owner) == 0) {
			cur->has_owner = true;
			snprintf(cur->owner_raw, sizeof(cur->owner_raw), "%s", v);
		}
	}
	*out = f;
	*nout = n;
	return 0;
}

/* Live hosts (those with a hosts/H key) and whether cordoned. */
static int fhosts_read(struct etcd *e, struct fhost **out, size_t *nout)
{
	struct etcd_kvs hk = { 0 }, ck = { 0 };
	char err[AGENT_ERR_MAX];
	struct fhost *h;
	size_t n = 0;
	int ret;

	ret = etcd_get_prefix(e, FLEET_PREFIX "hosts/", &hk, err, sizeof(err));
	if (!ret)
		ret = etcd_get_prefix(e, FLEET_PREFIX "cordon/", &ck, err, sizeof(err));
	if (ret) {
		etcd_kvs_free(&hk);
		return ret;
	}
	h = calloc(hk.n ? hk.n : 1, sizeof(*h));
	if (!h) {
		etcd_kvs_free(&hk);
		etcd_kvs_free(&ck);
		return -ENOMEM;
	}
	for (size_t i = 0; i < hk.n; i++) {
		const char *name = hk.kv[i].key + strlen(FLEET_PREFIX "hosts/");
		char ckey[FLEET_KEY_MAX];
		json_t *j;

		if (strncmp(hk.kv[i].key, FLEET_PREFIX "hosts/", strlen(FLEET_PREFIX "hosts/")) ||
		    !fleet_name_ok(name))
			continue;
		snprintf(h[n].name, sizeof(h[n].name), "%s", name);
		j = json_loads(hk.kv[i].value, 0, NULL);
		if (j) {
			json_t *c = json_object_get(j, "mem_capacity"), *u = json_object_get(j, "mem_used");
			json_int_t cap = json_is_integer(c) ? json_integer_value(c) : 0;
			json_int_t used = json_is_integer(u) ? json_integer_value(u) : 0;

			h[n].free_mem = cap > used && used >= 0 ? (uint64_t)(cap - used) : 0;
			json_decref(j);
		}
		fleet_key_cordon(ckey, sizeof(ckey), name);
		for (size_t k = 0; k < ck.n; k++)
			if (!strcmp(ck.kv[k].key, ckey))
				h[n].cordoned = true;
		n++;
	}
	etcd_kvs_free(&hk);
	etcd_kvs_free(&ck);
	*out = h;
	*nout = n;
	return 0;
}

json_t *agent_api(const char *api, const char *method, const char *path, const char *body,
		  long timeout_ms)
{
	json_t *j = NULL;

	if (api_client_json("godwitd", api, method, path, body, timeout_ms, &j))
		return NULL;
	return j;
}

static int agent_delete(struct etcd *e, const char *vm, const char *what)
{
	char key[FLEET_KEY_MAX], err[AGENT_ERR_MAX];
	int ret;

	if (fleet_key_vm(key, sizeof(key), vm, what))
		return -EINVAL;
	ret = etcd_delete(e, key, false, NULL, err, sizeof(err));
	if (ret)
		log_warnx("%s: %s: %s", __func__, key, err);
	return ret;
}

/* Read vm's owner; 0 with *o (o->host "" if absent), or -errno. */
static int agent_read_owner(struct etcd *e, const char *vm, struct fleet_owner *o, bool *veto,
			    uint64_t veto_epoch)
{
	char key[FLEET_KEY_MAX], err[AGENT_ERR_MAX];
	struct etcd_kvs kvs = { 0 };
	int ret;

	memset(o, 0, sizeof(*o));
	fleet_key_vm(key, sizeof(key), vm, "owner");
	ret = etcd_get(e, key, &kvs, err, sizeof(err));
	if (ret)
		return ret;
	if (kvs.n == 1 && fleet_owner_parse(kvs.kv[0].value, o))
		memset(o, 0, sizeof(*o));
	etcd_kvs_free(&kvs);
	if (veto) {
		fleet_key_veto(key, sizeof(key), vm, veto_epoch);
		ret = etcd_get(e, key, &kvs, err, sizeof(err));
		if (ret)
			return ret;
		*veto = kvs.n > 0;
		etcd_kvs_free(&kvs);
	}
	return 0;
}

/* Rule 3: veto/E if owner is still "HOST E".  0 with *won, or -errno. */
static int agent_veto(struct etcd *e, const char *vm, const char *owner_host, uint64_t epoch,
		      const char *me, bool *won)
{
	char okey[FLEET_KEY_MAX], vkey[FLEET_KEY_MAX], oval[FLEET_OWNER_MAX], err[AGENT_ERR_MAX];
	struct fleet_owner o = { .epoch = epoch };
	struct etcd_cmp cmp;
	struct etcd_op op;
	int ret;

	snprintf(o.host, sizeof(o.host), "%s", owner_host);
	fleet_owner_format(&o, oval, sizeof(oval));
	fleet_key_vm(okey, sizeof(okey), vm, "owner");
	fleet_key_veto(vkey, sizeof(vkey), vm, epoch);
	cmp = (struct etcd_cmp){ .key = okey, .target = ETCD_VALUE, .result = ETCD_EQ,
				 .value = oval };
	op = (struct etcd_op){ .type = ETCD_OP_PUT, .key = vkey, .value = me };
	ret = etcd_txn(e, &cmp, 1, &op, 1, won, err, sizeof(err));
	if (ret)
		log_warnx("%s: VM %s: veto/%" PRIu64 ": %s", __func__, vm, epoch, err);
	else if (*won)
		log_info("VM %s: wrote veto/%" PRIu64 ": the migration at epoch %" PRIu64
			 " can no longer commit", vm, epoch, epoch);
	return ret;
}

static json_t *agent_resolve(const char *api, bool resume)
{
	return agent_api(api, "PUT", "/api/v1/vm/migrate-resolve",
			 resume ? "{\"action\":\"resume\"}" : "{\"action\":\"discard\"}", 10000);
}

static json_t *agent_commit(const char *api, bool commit)
{
	return agent_api(api, "PUT", "/api/v1/vm/migrate-commit",
			 commit ? "{\"commit\":true}" : "{\"commit\":false}", 10000);
}

/*
 * agent_settle_source - rules 2-4 for a source VM at the gate ("commit-wait")
 * or "in-doubt", from the owner record: 0 the VM resumed here (*epoch may have
 * grown: it was taken back), 1 it leaves (committed, or discarded here),
 * -EAGAIN etcd did not answer or the VMM refused: try again.
 */
static int agent_settle(struct agent *a, struct etcd *e, const char *vm, const char *api,
			uint64_t *epoch, const char *st, bool dest_refused)
{
	uint64_t E = *epoch;
	struct fleet_owner o;
	bool veto = false, won = false;
	json_t *r;
	int ret;

	ret = agent_read_owner(e, vm, &o, &veto, E);
	if (ret)
		return -EAGAIN;
	if (!strcmp(o.host, a->host) && o.epoch == E) {
		/* nobody committed: give up the migration for good, then resume */
		if (!veto) {
			if (agent_veto(e, vm, a->host, E, a->host, &won) || !won)
				return -EAGAIN;
		}
		r = !strcmp(st, "commit-wait") ? agent_commit(api, false) : agent_resolve(api, true);
		if (!r)
			return -EAGAIN;
		json_decref(r);
		log_info("VM %s: the owner still names %s at epoch %" PRIu64 ": the migration was "
			 "given up and the VM resumed here", vm, a->host, E);
		return 0;
	}
	if (o.host[0] && strcmp(o.host, a->host) && o.epoch == E + 1) {
		if (!strcmp(st, "commit-wait")) {
			r = agent_commit(api, true);
			if (!r)
				return -EAGAIN;
			json_decref(r);
			log_info("VM %s: the owner is \"%s %" PRIu64 "\": COMMIT sent", vm, o.host,
				 o.epoch);
			return 1;
		}
		if (dest_refused) {
			/* the destination refused COMMIT after the transaction: take the VM back */
			char okey[FLEET_KEY_MAX], from[FLEET_OWNER_MAX], to[FLEET_OWNER_MAX];
			char err[AGENT_ERR_MAX];
			struct fleet_owner n = { .epoch = E + 2 };
			struct etcd_cmp cmp;
			struct etcd_op op;

			snprintf(n.host, sizeof(n.host), "%s", a->host);
			fleet_owner_format(&o, from, sizeof(from));
			fleet_owner_format(&n, to, sizeof(to));
			fleet_key_vm(okey, sizeof(okey), vm, "owner");
			cmp = (struct etcd_cmp){ .key = okey, .target = ETCD_VALUE, .result = ETCD_EQ,
						 .value = from };
			op = (struct etcd_op){ .type = ETCD_OP_PUT, .key = okey, .value = to };
			if (etcd_txn(e, &cmp, 1, &op, 1, &won, err, sizeof(err))) {
				log_warnx("%s: VM %s: taking it back: %s", __func__, vm, err);
				return -EAGAIN;
			}
			if (won) {
				r = agent_resolve(api, true);
				if (!r)
					return -EAGAIN;
				json_decref(r);
				*epoch = E + 2;
				log_info("VM %s: the destination refused it after COMMIT: taken back "
					 "(owner \"%s\") and resumed here", vm, to);
				return 0;
			}
			return -EAGAIN;       /* the owner moved meanwhile: read it again */
		}
		r = agent_resolve(api, false);
		if (!r)
			return -EAGAIN;
		json_decref(r);
		log_info("VM %s: in doubt, and the owner is \"%s %" PRIu64 "\": discarded here",
			 vm, o.host, o.epoch);
		return 1;
	}
	/* someone else owns it (or nobody): never resume it here */
	log_warnx("VM %s: at %s, and its owner is \"%s %" PRIu64 "\", not \"%s %" PRIu64 "\": "
		  "discarding it here", vm, st, o.host[0] ? o.host : "(none)", o.epoch, a->host, E);
	if (!strcmp(st, "in-doubt")) {
		r = agent_resolve(api, false);
		if (r) {
			json_decref(r);
			return 1;
		}
	}
	return 2;                /* the caller kills it */
}

int agent_settle_source(struct agent *a, struct etcd *e, const char *vm, const char *api,
			uint64_t epoch, const char *st, bool dest_refused)
{
	uint64_t E = epoch;
	int ret = agent_settle(a, e, vm, api, &E, st, dest_refused);

	if (ret == 0 && E != epoch) {
		char dir[PATH_MAX];
		struct agent_vm *v;

		pthread_mutex_lock(&a->lock);
		if ((v = vms_find(a, vm))) {
			v->epoch = E;
			v->status_written = false;
			snprintf(dir, sizeof(dir), "%s", v->dir);
			vms_write_files(dir, v->pid, E, NULL);
		}
		pthread_mutex_unlock(&a->lock);
	}
	if (ret == 2) {
		struct agent_vm *v;

		pthread_mutex_lock(&a->lock);
		if ((v = vms_find(a, vm)))
			vms_signal(v, SIGKILL);
		pthread_mutex_unlock(&a->lock);
		ret = 1;
	}
	return ret;
}

int agent_bump_epoch(struct agent *a, struct etcd *e, const char *vm, uint64_t *epoch)
{
	char okey[FLEET_KEY_MAX], vkey[FLEET_KEY_MAX], from[FLEET_OWNER_MAX], to[FLEET_OWNER_MAX];
	char err[AGENT_ERR_MAX], dir[PATH_MAX];
	struct fleet_owner o = { .epoch = *epoch }, n = { .epoch = *epoch + 1 };
	struct etcd_kvs kvs = { 0 };
	struct etcd_cmp cmp;
	struct etcd_op op;
	struct agent_vm *v;
	bool won = false;
	pid_t pid = 0;
	int ret;

	fleet_key_veto(vkey, sizeof(vkey), vm, *epoch);
	ret = etcd_get(e, vkey, &kvs, err, sizeof(err));
	if (ret) {
		log_warnx("%s: VM %s: %s", __func__, vkey, err);
		return ret;
	}
	won = kvs.n > 0;
	etcd_kvs_free(&kvs);
	if (!won)
		return 0;        /* no veto at this epoch: nothing to do */
	snprintf(o.host, sizeof(o.host), "%s", a->host);
	snprintf(n.host, sizeof(n.host), "%s", a->host);
	fleet_owner_format(&o, from, sizeof(from));
	fleet_owner_format(&n, to, sizeof(to));
	fleet_key_vm(okey, sizeof(okey), vm, "owner");
	cmp = (struct etcd_cmp){ .key = okey, .target = ETCD_VALUE, .result = ETCD_EQ,
				 .value = from };
	op = (struct etcd_op){ .type = ETCD_OP_PUT, .key = okey, .value = to };
	won = false;
	ret = etcd_txn(e, &cmp, 1, &op, 1, &won, err, sizeof(err));
	if (ret) {
		log_warnx("%s: VM %s: \"%s\" -> \"%s\": %s", __func__, vm, from, to, err);
		return ret;
	}
	if (!won) {
		log_warnx("%s: VM %s: the owner is no longer \"%s\"", __func__, vm, from);
		return -ESTALE;
	}
	log_info("VM %s: veto/%" PRIu64 " is there from an earlier attempt: owner \"%s\" -> "
		 "\"%s\", so a new migration can commit", vm, *epoch, from, to);
	*epoch += 1;
	pthread_mutex_lock(&a->lock);
	if ((v = vms_find(a, vm))) {
		v->epoch = *epoch;
		v->status_written = false;
		pid = v->pid;
		snprintf(dir, sizeof(dir), "%s", v->dir);
	}
	pthread_mutex_unlock(&a->lock);
	if (pid) {
		vms_write_files(dir, pid, *epoch, NULL);
		vms_put_status(a, e, vm, *epoch, "migrating", pid, NULL);
	}
	return 0;
}

/* ---- stop ---- */

struct stop_job {
	struct agent *a;
	char vm[FLEET_NAME_MAX];
};

static void *agent_stop_thread(void *opaque)
{
	struct stop_job *job = opaque;
	struct agent *a = job->a;
	char api[PATH_MAX];
	struct agent_vm *v;
	uint64_t t0 = agent_now_ms(), epoch = 0;
	bool termed = false, killed = false;
	struct etcd *e = NULL;
	json_t *r;
	int st = -1;

	pthread_mutex_lock(&a->lock);
	v = vms_find(a, job->vm);
	if (v) {
		snprintf(api, sizeof(api), "%s", v->api);
		epoch = v->epoch;
	}
	pthread_mutex_unlock(&a->lock);
	if (!v)
		goto out;
	log_info("VM %s: stopping (intent stop)", job->vm);
	r = agent_api(api, "PUT", "/api/v1/vm/shutdown", NULL, 5000);
	json_decref(r);
	for (;;) {
		uint64_t now = agent_now_ms();

		pthread_mutex_lock(&a->lock);
		v = vms_find(a, job->vm);
		st = v ? v->exit_status : -2;
		if (v && st == -1 && !termed && now - t0 > AGENT_STOP_GRACE_MS) {
			log_warnx("VM %s: still running %d s after shutdown: SIGTERM", job->vm,
				  AGENT_STOP_GRACE_MS / 1000);
			vms_signal(v, SIGTERM);
			termed = true;
		}
		if (v && st == -1 && !killed && now - t0 > AGENT_STOP_GRACE_MS + AGENT_KILL_GRACE_MS) {
			log_warnx("VM %s: still running after SIGTERM: SIGKILL", job->vm);
			vms_signal(v, SIGKILL);
			killed = true;
		}
		pthread_mutex_unlock(&a->lock);
		if (st != -1 || a->stop)
			break;
		agent_sleep_ms(100);
	}
	if (a->stop && st == -1)
		goto out;
	if (agent_etcd_open(a, ETCD_TIMEOUT_MS, &e) == 0) {
		for (int i = 0; i < 20 && !a->stop; i++) {
			if (vms_put_status(a, e, job->vm, epoch, "stopped", 0, NULL) == 0 &&
			    agent_delete(e, job->vm, "intent") == 0)
				break;
			agent_sleep_ms(500);
		}
		etcd_close(e);
	}
	log_info("VM %s: stopped", job->vm);
	pthread_mutex_lock(&a->lock);
	if ((v = vms_find(a, job->vm))) {
		char pidf[PATH_MAX + 8];

		snprintf(pidf, sizeof(pidf), "%s/pid", v->dir);
		unlink(pidf);
		v->used = false;
	}
	pthread_mutex_unlock(&a->lock);
	free(job);
	return NULL;
out:
	pthread_mutex_lock(&a->lock);
	if ((v = vms_find(a, job->vm)))
		v->busy = false;
	pthread_mutex_unlock(&a->lock);
	free(job);
	return NULL;
}

/* Lock held. */
static void agent_stop_spawn(struct agent *a, struct agent_vm *v)
{
	struct stop_job *job = calloc(1, sizeof(*job));
	pthread_t th;

	if (!job)
		return;
	job->a = a;
	snprintf(job->vm, sizeof(job->vm), "%s", v->name);
	v->busy = true;
	if (pthread_create(&th, NULL, agent_stop_thread, job)) {
		v->busy = false;
		free(job);
		return;
	}
	pthread_detach(th);
}

/* ---- the loop ---- */

/* A VM process gone (not by a worker): its status, then forget it. */
static void agent_exited(struct agent *a, struct etcd *e, struct fvm *f, size_t nf)
{
	for (int i = 0; i < AGENT_MAX_VMS; i++) {
		struct agent_vm v;
		const char *state = "failed";
		char error[AGENT_ERR_MAX] = "", tail[AGENT_ERR_MAX - 64];
		bool ours = false;

		pthread_mutex_lock(&a->lock);
		if (!a->vms[i].used || a->vms[i].exit_status == -1 || a->vms[i].busy) {
			pthread_mutex_unlock(&a->lock);
			continue;
		}
		v = a->vms[i];
		pthread_mutex_unlock(&a->lock);

		for (size_t k = 0; k < nf; k++)
			if (!strcmp(f[k].name, v.name) && f[k].has_owner &&
			    !strcmp(f[k].owner.host, a->host) && f[k].owner.epoch == v.epoch)
				ours = true;
		vms_console_tail(v.console, tail, sizeof(tail));
		if (v.incoming && !ours) {
			log_info("VM %s: the incoming migration's process exited (%s) before the VM "
				 "ran here: cleaned up", v.name, tail);
			vms_remove_dir(a, v.name);
		} else if (ours) {
			if (v.exit_status == -2) {
				state = "stopped";
				snprintf(error, sizeof(error), "exited (status unknown: adopted)%s%s",
					 tail[0] ? ": " : "", tail);
			} else if (WIFEXITED(v.exit_status) && WEXITSTATUS(v.exit_status) == 0) {
				state = "stopped";
			} else {
				snprintf(error, sizeof(error), "%s %d: %s",
					 WIFEXITED(v.exit_status) ? "exit status" : "killed by signal",
					 WIFEXITED(v.exit_status) ? WEXITSTATUS(v.exit_status) :
					 WTERMSIG(v.exit_status), tail);
			}
			log_info("VM %s: its process %d exited: %s%s%s", v.name, (int)v.pid, state,
				 error[0] ? ": " : "", error);
			if (vms_put_status(a, e, v.name, v.epoch, state, 0, error[0] ? error : NULL))
				continue;        /* next tick */
		} else {
			log_info("VM %s: its process %d exited (this host no longer owns it)", v.name,
				 (int)v.pid);
		}
		{
			char pidf[PATH_MAX + 8];

			snprintf(pidf, sizeof(pidf), "%s/pid", v.dir);
			unlink(pidf);
		}
		pthread_mutex_lock(&a->lock);
		if (a->vms[i].used && !strcmp(a->vms[i].name, v.name))
			a->vms[i].used = false;
		pthread_mutex_unlock(&a->lock);
	}
}

/* Rule 6: is this host the one to restart VMs of lost hosts?  All agents choose alike. */
static bool agent_chosen(struct agent *a, const struct fhost *h, size_t nh)
{
	const struct fhost *best = NULL;

	for (size_t i = 0; i < nh; i++) {
		if (h[i].cordoned)
			continue;
		if (!best || h[i].free_mem > best->free_mem ||
		    (h[i].free_mem == best->free_mem && strcmp(h[i].name, best->name) < 0))
			best = &h[i];
	}
	return best && !strcmp(best->name, a->host);
}

static bool host_live(const struct fhost *h, size_t nh, const char *name)
{
	for (size_t i = 0; i < nh; i++)
		if (!strcmp(h[i].name, name))
			return true;
	return false;
}

static void agent_rule6(struct agent *a, struct etcd *e, struct fvm *f)
{
	char okey[FLEET_KEY_MAX], err[AGENT_ERR_MAX];
	struct fleet_owner n = { .epoch = f->owner.epoch + 1 };
	char to[FLEET_OWNER_MAX];
	struct etcd_cmp cmp;
	struct etcd_op op;
	bool won = false;

	snprintf(n.host, sizeof(n.host), "%s", a->host);
	fleet_owner_format(&n, to, sizeof(to));
	fleet_key_vm(okey, sizeof(okey), f->name, "owner");
	cmp = (struct etcd_cmp){ .key = okey, .target = ETCD_VALUE, .result = ETCD_EQ,
				 .value = f->owner_raw };
	op = (struct etcd_op){ .type = ETCD_OP_PUT, .key = okey, .value = to };
	if (etcd_txn(e, &cmp, 1, &op, 1, &won, err, sizeof(err))) {
		log_warnx("%s: VM %s: %s", __func__, f->name, err);
		return;
	}
	if (!won)
		return;
	log_warnx("VM %s: host %s is lost (its lease expired): restarting the VM here, cold "
		  "(owner \"%s\" -> \"%s\")", f->name, f->owner.host, f->owner_raw, to);
	vms_start(a, e, f->name, f->spec, n.epoch);
}

static bool state_active(const char *s)
{
	return !strcmp(s, "running") || !strcmp(s, "starting") || !strcmp(s, "paused") ||
	       !strcmp(s, "migrating") || !strcmp(s, "in-doubt");
}

static void agent_one(struct agent *a, struct etcd *e, struct fvm *f, const struct fhost *h,
		      size_t nh, bool hosts_ok)
{
	struct agent_vm v, *lv;
	bool have, mine;
	const char *op;

	if (!f->has_owner)
		return;
	mine = !strcmp(f->owner.host, a->host);
	pthread_mutex_lock(&a->lock);
	lv = vms_find(a, f->name);
	have = lv && lv->exit_status == -1;
	if (lv)
		v = *lv;
	pthread_mutex_unlock(&a->lock);

	if (have && v.incoming) {
		peer_watch_incoming(a, e, f->name);
		return;
	}
	op = f->intent ? jstr(f->intent, "op") : "";
	/* the intent of the migration that brought the VM here: its source deletes it */
	if (mine && !strcmp(op, "migrate") && !strcmp(jstr(f->intent, "to"), a->host) &&
	    f->migration && !strcmp(jstr(f->migration, "id"), jstr(f->intent, "id")) &&
	    strcmp(jstr(f->migration, "from"), a->host))
		op = "";
	if (mine && have) {
		if (v.busy || v.fenced)
			return;
		if (v.epoch != f->owner.epoch) {
			log_debug("VM %s: runs here at epoch %" PRIu64 " but the owner says %" PRIu64,
				  f->name, v.epoch, f->owner.epoch);
			return;
		}
		if (!strcmp(v.state, "commit-wait") || !strcmp(v.state, "in-doubt") ||
		    !strcmp(v.state, "migrating")) {
			/* adopted mid-migration: no worker follows it; settle it here */
			json_t *m = agent_api(v.api, "GET", "/api/v1/vm/migration", NULL, 3000);
			const char *st = m ? jstr(m, "status") : "", *next = NULL;
			bool refused = m && json_is_true(json_object_get(m, "dest_refused"));
			int r;

			if (!strcmp(st, "commit-wait") || !strcmp(st, "in-doubt")) {
				r = agent_settle_source(a, e, f->name, v.api, v.epoch, st, refused);
				next = r == 0 ? "running" : r == 1 ? "migrated" : NULL;
			} else if (!strcmp(st, "completed")) {
				next = "migrated";
			} else if (m && strcmp(st, "setup") && strcmp(st, "active") &&
				   strcmp(st, "stop-and-copy") && strcmp(st, "committing")) {
				next = "running";        /* failed, cancelled: it runs on here */
			}
			json_decref(m);
			if (next && f->migration && strcmp(jstr(f->migration, "phase"), "done") &&
			    strcmp(jstr(f->migration, "phase"), "failed") &&
			    !strcmp(jstr(f->migration, "from"), a->host)) {
				/* the worker that wrote this record died with the old agent */
				char key[FLEET_KEY_MAX], err[AGENT_ERR_MAX], now[32];
				json_t *rec = json_deep_copy(f->migration);
				bool left = !strcmp(next, "migrated");
				char *js;

				agent_now_iso(now, sizeof(now));
				json_object_set_new(rec, "phase", json_string(left ? "done" : "failed"));
				if (!left)
					json_object_set_new(rec, "error", json_string(
						"the source's agent restarted during the migration; settled "
						"from the owner record: the VM stays here"));
				json_object_set_new(rec, "ended", json_string(now));
				js = json_dumps(rec, JSON_COMPACT);
				json_decref(rec);
				fleet_key_vm(key, sizeof(key), f->name, "migration");
				if (js && etcd_put(e, key, js, 0, err, sizeof(err)))
					log_warnx("VM %s: migration record: %s", f->name, err);
				free(js);
			}
			if (next && !strcmp(op, "migrate"))
				agent_delete(e, f->name, "intent");
			if (next) {
				pthread_mutex_lock(&a->lock);
				if ((lv = vms_find(a, f->name))) {
					snprintf(lv->state, sizeof(lv->state), "%s", next);
					lv->status_written = false;
					lv->left_ms = agent_now_ms();
				}
				pthread_mutex_unlock(&a->lock);
			}
			return;
		}
		if (!strcmp(v.state, "migrated"))
			return;          /* it left: the owner moves on (or settles) */
		if (!strcmp(op, "stop")) {
			pthread_mutex_lock(&a->lock);
			if ((lv = vms_find(a, f->name)) && !lv->busy)
				agent_stop_spawn(a, lv);
			pthread_mutex_unlock(&a->lock);
			return;
		}
		if (!strcmp(op, "migrate")) {
			if (migrate_spawn(a, f->name, v.epoch, f->intent) != -EBUSY)
				return;
		}
		if (!v.status_written || !f->status || strcmp(jstr(f->status, "host"), a->host) ||
		    strcmp(jstr(f->status, "state"), v.state) ||
		    json_integer_value(json_object_get(f->status, "epoch")) != (json_int_t)v.epoch ||
		    json_integer_value(json_object_get(f->status, "pid")) != (json_int_t)v.pid) {
			int r = vms_put_status(a, e, f->name, v.epoch, v.state, v.pid, NULL);

			pthread_mutex_lock(&a->lock);
			if ((lv = vms_find(a, f->name)))
				lv->status_written = !r;
			pthread_mutex_unlock(&a->lock);
		}
		return;
	}
	if (mine && !lv) {
		if (!f->spec)
			return;
		if (!f->status) {
			vms_start(a, e, f->name, f->spec, f->owner.epoch);
			return;
		}
		if (!strcmp(op, "stop")) {
			agent_delete(e, f->name, "intent");
			return;
		}
		if (!strcmp(op, "migrate")) {
			char key[FLEET_KEY_MAX], err[AGENT_ERR_MAX], now[32];
			json_t *m;
			char *s;

			agent_now_iso(now, sizeof(now));
			m = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:s, s:s}",
				      "id", jstr(f->intent, "id"), "from", a->host,
				      "to", jstr(f->intent, "to"), "epoch", (json_int_t)f->owner.epoch,
				      "phase", "failed", "error", "the VM is not running",
				      "started", now, "ended", now);
			s = m ? json_dumps(m, JSON_COMPACT) : NULL;
			json_decref(m);
			fleet_key_vm(key, sizeof(key), f->name, "migration");
			if (s && etcd_put(e, key, s, 0, err, sizeof(err)) == 0)
				agent_delete(e, f->name, "intent");
			free(s);
			return;
		}
		if (!strcmp(jstr(f->status, "host"), a->host) && state_active(jstr(f->status, "state")) &&
		    json_integer_value(json_object_get(f->status, "epoch")) ==
		    (json_int_t)f->owner.epoch) {
			log_warnx("VM %s: its status says it runs here, but there is no such process: "
				  "failed", f->name);
			vms_put_status(a, e, f->name, f->owner.epoch, "failed", 0,
				       "the VM process was gone when the agent looked (it was not "
				       "running when the agent started)");
		}
		return;
	}
	if (!mine && have && !v.busy && !v.fenced && strcmp(v.state, "commit-wait") &&
	    strcmp(v.state, "in-doubt") && strcmp(v.state, "migrating") &&
	    (strcmp(v.state, "migrated") || agent_now_ms() - v.left_ms > AGENT_LEAVE_MS)) {
		/* rule 4: the owner moved on; this copy must not run */
		log_warnx("VM %s: its owner is \"%s\", not \"%s %" PRIu64 "\": killing the copy here "
			  "(pid %d)", f->name, f->owner_raw, a->host, v.epoch, (int)v.pid);
		pthread_mutex_lock(&a->lock);
		if ((lv = vms_find(a, f->name)))
			vms_signal(lv, SIGKILL);
		pthread_mutex_unlock(&a->lock);
		return;
	}
	if (!mine && !lv && hosts_ok && f->spec && !strcmp(jstr(f->spec, "restart"), "always") &&
	    (!f->status || state_active(jstr(f->status, "state"))) &&
	    !host_live(h, nh, f->owner.host) && agent_chosen(a, h, nh))
		agent_rule6(a, e, f);
}

void agent_loop(struct agent *a)
{
	uint64_t last_refresh = 0, last_err = 0;
	struct etcd *e;

	if (agent_etcd_open(a, ETCD_TIMEOUT_MS, &e))
		return;
	while (!a->stop) {
		uint64_t t0 = agent_now_ms(), el;
		struct etcd_kvs kvs = { 0 };
		struct timespec ts0;
		char err[AGENT_ERR_MAX];
		struct fhost *h = NULL;
		struct fvm *f = NULL;
		size_t nf = 0, nh = 0;
		bool fenced, hosts_ok;

		clock_gettime(CLOCK_MONOTONIC, &ts0);
		vms_reap(a);
		pthread_mutex_lock(&a->lock);
		fenced = a->fenced;
		pthread_mutex_unlock(&a->lock);
		if (fenced)
			goto sleep;
		if (etcd_get_prefix(e, FLEET_PREFIX "vms/", &kvs, err, sizeof(err))) {
			if (t0 - last_err > 5000) {
				log_warnx("agent: reading the VMs from etcd: %s", err);
				last_err = t0;
			}
			goto sleep;
		}
		if (fvms_parse(&kvs, &f, &nf)) {
			etcd_kvs_free(&kvs);
			goto sleep;
		}
		etcd_kvs_free(&kvs);
		hosts_ok = fhosts_read(e, &h, &nh) == 0;
		agent_exited(a, e, f, nf);
		for (size_t i = 0; i < nf && !a->stop; i++)
			agent_one(a, e, &f[i], h, nh, hosts_ok);
		fvms_free(f, nf);
		free(h);
		if (t0 - last_refresh >= AGENT_REFRESH_MS) {
			host_refresh(a, e);
			last_refresh = t0;
		}
sleep:
		STAT_ADD(a->n_reconcile, 1);
		STAT_ADD(a->reconcile_us, (uint64_t)(ms_since(&ts0) * 1000));
		el = agent_now_ms() - t0;
		if (el < AGENT_TICK_MS)
			agent_sleep_ms((unsigned int)(AGENT_TICK_MS - el));
	}
	etcd_close(e);
}
