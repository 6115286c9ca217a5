/*
 * host.c - this host in the fleet: its lease, its record /godwit/hosts/NAME
 * under that lease, and rule 5 (docs/fleet.md): a host that has not renewed
 * its lease for 2/3 of the TTL stops (SIGSTOP) every VM it runs; when etcd
 * answers again, a VM whose owner still names this host at its epoch goes
 * on (SIGCONT), any other is killed.
 *
 * The lease thread has an etcd client of its own with a short time-out, so
 * a slow request elsewhere never delays a keep-alive.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "godwit/etcd.h"
#include "godwit/log.h"
#include "agent.h"

#define HOST_LEASE_FILE "lease"

json_t *host_record(struct agent *a)
{
	uint64_t mem;
	unsigned int cpus, n;

	vms_usage(a, &mem, &cpus, &n);
	return json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:s, s:s}",
			 "name", a->host, "addr", a->listen,
			 "mem_capacity", (json_int_t)a->mem_capacity,
			 "cpu_capacity", (json_int_t)a->cpu_capacity,
			 "mem_used", (json_int_t)mem, "cpus_used", (json_int_t)cpus,
			 "vms", (json_int_t)n, "pid", (json_int_t)getpid(),
			 "tls", a->tls_dir != NULL, "version", AGENT_VERSION,
			 "started", a->started);
}

int host_guard_args(struct agent *a, const char **args, char *lease_buf, size_t len)
{
	const char *p = a->etcd_urls;
	int64_t lease;

	/* the guard speaks http:// only */
	for (;;) {
		if (strncmp(p, "http://", 7))
			return 0;
		p = strchr(p, ',');
		if (!p)
			break;
		p++;
	}
	pthread_mutex_lock(&a->lock);
	lease = a->registered ? a->lease : 0;
	pthread_mutex_unlock(&a->lock);
	if (lease <= 0)
		return 0;
	snprintf(lease_buf, len, "%" PRId64, lease);
	args[0] = "--fleet-etcd";
	args[1] = a->etcd_urls;
	args[2] = "--fleet-lease";
	args[3] = lease_buf;
	return 4;
}

static int host_put(struct agent *a, struct etcd *e, int64_t lease)
{
	char key[FLEET_KEY_MAX], err[AGENT_ERR_MAX];
	json_t *j = host_record(a);
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	int ret;

	json_decref(j);
	if (!s)
		return -ENOMEM;
	fleet_key_host(key, sizeof(key), a->host);
	ret = etcd_put(e, key, s, lease, err, sizeof(err));
	free(s);
	if (ret)
		log_warnx("%s: %s: %s", __func__, key, err);
	return ret;
}

static void host_save_lease(struct agent *a, int64_t lease)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8], buf[32];
	int fd, n;

	snprintf(path, sizeof(path), "%s/%s", a->state_dir, HOST_LEASE_FILE);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	n = snprintf(buf, sizeof(buf), "%" PRId64 "\n", lease);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, buf, (size_t)n) != n || fsync(fd) || rename(tmp, path))
		log_warn("%s: %s", __func__, path);
	if (fd >= 0)
		close(fd);
}

static int64_t host_load_lease(struct agent *a)
{
	char path[PATH_MAX], buf[32];
	long long v;
	char *end;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", a->state_dir, HOST_LEASE_FILE);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	errno = 0;
	v = strtoll(buf, &end, 10);
	if (errno || end == buf || (*end && *end != '\n') || v <= 0)
		return 0;
	return v;
}

/* A new lease, the record under it, saved.  0 or -errno. */
static int host_new_lease(struct agent *a, struct etcd *e)
{
	char err[AGENT_ERR_MAX];
	int64_t id;
	int ret;

	ret = etcd_lease_grant(e, a->lease_ttl, &id, err, sizeof(err));
	if (ret) {
		log_warnx("%s: granting a lease of %d s: %s", __func__, a->lease_ttl, err);
		return ret;
	}
	ret = host_put(a, e, id);
	if (ret)
		return ret;
	host_save_lease(a, id);
	pthread_mutex_lock(&a->lock);
	a->lease = id;
	a->registered = true;
	a->handover = true;
	pthread_mutex_unlock(&a->lock);
	log_info("host %s registered with lease %" PRIx64 " (TTL %d s)", a->host, (uint64_t)id,
		 a->lease_ttl);
	return 0;
}

int host_register(struct agent *a, struct etcd *e)
{
	int64_t old = host_load_lease(a);
	char err[AGENT_ERR_MAX];
	int ttl, ret;

	if (old) {
		ret = etcd_lease_keepalive(e, old, &ttl, err, sizeof(err));
		if (!ret && ttl > 0) {
			ret = host_put(a, e, old);
			if (ret)
				return ret;
			pthread_mutex_lock(&a->lock);
			a->lease = old;
			a->registered = true;
			pthread_mutex_unlock(&a->lock);
			log_info("host %s registered again with its previous lease %" PRIx64,
				 a->host, (uint64_t)old);
			return 0;
		}
		if (ret && ret != -ENOENT)
			return ret;
		log_info("host %s: the previous lease %" PRIx64 " is gone; granting a new one",
			 a->host, (uint64_t)old);
	}
	return host_new_lease(a, e);
}

int host_refresh(struct agent *a, struct etcd *e)
{
	int64_t lease;

	pthread_mutex_lock(&a->lock);
	lease = a->registered && !a->fenced ? a->lease : 0;
	pthread_mutex_unlock(&a->lock);
	if (!lease)
		return -EAGAIN;
	return host_put(a, e, lease);
}

/* Rule 5: stop every VM run here.  Lock held. */
static void host_fence(struct agent *a, uint64_t since_ms)
{
	unsigned int n = 0;

	a->fenced = true;
	for (int i = 0; i < AGENT_MAX_VMS; i++) {
		struct agent_vm *v = &a->vms[i];

		if (!v->used || v->pid <= 0 || v->exit_status != -1)
			continue;
		if (vms_signal(v, SIGSTOP) == 0) {
			v->fenced = true;
			n++;
		}
	}
	log_warnx("FENCED: host %s has not renewed its etcd lease for %" PRIu64 " ms (2/3 of "
		  "the %d s TTL): %u VM(s) stopped with SIGSTOP until etcd answers again",
		  a->host, since_ms, a->lease_ttl, n);
}

void host_fence_now(struct agent *a)
{
	pthread_mutex_lock(&a->lock);
	if (!a->fenced)
		host_fence(a, (uint64_t)a->lease_ttl * 2000 / 3);
	pthread_mutex_unlock(&a->lock);
}

/* etcd answers again: each fenced VM goes on if its owner still names us at its epoch. */
static void host_unfence(struct agent *a, struct etcd *e)
{
	struct {
		char name[FLEET_NAME_MAX], from[FLEET_NAME_MAX];
		uint64_t epoch;
		bool incoming;
	} list[AGENT_MAX_VMS];
	char key[FLEET_KEY_MAX], err[AGENT_ERR_MAX];
	int n = 0;

	pthread_mutex_lock(&a->lock);
	for (int i = 0; i < AGENT_MAX_VMS; i++)
		if (a->vms[i].used && a->vms[i].fenced) {
			snprintf(list[n].name, sizeof(list[n].name), "%s", a->vms[i].name);
			snprintf(list[n].from, sizeof(list[n].from), "%s", a->vms[i].from);
			list[n].epoch = a->vms[i].epoch;
			list[n].incoming = a->vms[i].incoming;
			n++;
		}
	pthread_mutex_unlock(&a->lock);

	for (int i = 0; i < n; i++) {
		struct etcd_kvs kvs = { 0 };
		struct agent_vm *v;
		bool ours;
		int ret;

		fleet_key_vm(key, sizeof(key), list[i].name, "owner");
		ret = etcd_get(e, key, &kvs, err, sizeof(err));
		if (ret) {
			log_warnx("%s: %s: %s; VM %s stays stopped", __func__, key, err, list[i].name);
			return;          /* still fenced: next time */
		}
		ours = kvs.n == 1 && agent_owner_is(kvs.kv[0].value, a->host, list[i].epoch);
		if (!ours && list[i].incoming && list[i].epoch > 1 && kvs.n == 1 &&
		    agent_owner_is(kvs.kv[0].value, list[i].from, list[i].epoch - 1)) {
			/*
			 * An incoming VM not committed yet: make sure it never will be
			 * (veto, rule 3) before killing it, or the source could commit
			 * to a destination that is gone.
			 */
			char vkey[FLEET_KEY_MAX];
			struct etcd_cmp cmp = { .key = key, .target = ETCD_VALUE, .result = ETCD_EQ,
						.value = kvs.kv[0].value };
			struct etcd_op op = { .type = ETCD_OP_PUT, .key = vkey, .value = a->host };
			bool won = false;

			fleet_key_veto(vkey, sizeof(vkey), list[i].name, list[i].epoch - 1);
			int r = etcd_txn(e, &cmp, 1, &op, 1, &won, err, sizeof(err));

			if (r || !won) {
				log_warnx("%s: VM %s: cannot veto the incoming migration yet: %s; it "
					  "stays stopped", __func__, list[i].name,
					  r ? err : "the owner changed meanwhile");
				etcd_kvs_free(&kvs);
				return;
			}
			log_info("VM %s: wrote veto/%" PRIu64 ": the incoming migration is given up",
				 list[i].name, list[i].epoch - 1);
		}
		pthread_mutex_lock(&a->lock);
		v = vms_find(a, list[i].name);
		if (v && v->fenced) {
			if (ours) {
				vms_signal(v, SIGCONT);
				log_info("VM %s: the owner still names %s at epoch %" PRIu64
					 ": continued (SIGCONT)", v->name, a->host, v->epoch);
			} else {
				vms_signal(v, SIGKILL);
				vms_signal(v, SIGCONT);
				log_warnx("VM %s: its owner is now \"%s\", not \"%s %" PRIu64 "\": "
					  "killed (another host runs it)", v->name,
					  kvs.n ? kvs.kv[0].value : "(none)", a->host, v->epoch);
			}
			v->fenced = false;
			v->status_written = false;
		}
		pthread_mutex_unlock(&a->lock);
		etcd_kvs_free(&kvs);
	}
	pthread_mutex_lock(&a->lock);
	a->fenced = false;
	pthread_mutex_unlock(&a->lock);
	log_info("host %s reaches etcd again: no longer fenced", a->host);
}

/*
 * A new lease: each VM's guard keeps the old one (gone: the guard holds the
 * vCPUs for good).  Hand it the new one if the owner still names this host at
 * its epoch (or it is an incoming VM, not ours yet: its migration decides);
 * kill any other.  0, or -EAGAIN to try again.
 */
static int host_handover(struct agent *a, struct etcd *e)
{
	struct {
		char name[FLEET_NAME_MAX], api[PATH_MAX];
		uint64_t epoch;
		bool incoming;
	} *list;
	char key[FLEET_KEY_MAX], err[AGENT_ERR_MAX], body[64];
	int64_t lease;
	int n = 0, ret = 0;

	list = calloc(AGENT_MAX_VMS, sizeof(*list));
	if (!list)
		return -EAGAIN;
	pthread_mutex_lock(&a->lock);
	lease = a->lease;
	for (int i = 0; i < AGENT_MAX_VMS; i++) {
		struct agent_vm *v = &a->vms[i];

		if (!v->used || v->exit_status != -1 || v->fenced)
			continue;
		snprintf(list[n].name, sizeof(list[n].name), "%s", v->name);
		snprintf(list[n].api, sizeof(list[n].api), "%s", v->api);
		list[n].epoch = v->epoch;
		list[n].incoming = v->incoming;
		n++;
	}
	pthread_mutex_unlock(&a->lock);
	snprintf(body, sizeof(body), "{\"lease\":\"%" PRId64 "\"}", lease);
	for (int i = 0; i < n; i++) {
		struct etcd_kvs kvs = { 0 };
		struct agent_vm *v;
		bool ours;
		json_t *r;

		fleet_key_vm(key, sizeof(key), list[i].name, "owner");
		if (etcd_get(e, key, &kvs, err, sizeof(err))) {
			ret = -EAGAIN;
			break;
		}
		ours = list[i].incoming ||
		       (kvs.n == 1 && agent_owner_is(kvs.kv[0].value, a->host, list[i].epoch));
		if (!ours) {
			pthread_mutex_lock(&a->lock);
			v = vms_find(a, list[i].name);
			if (v && !v->incoming && !v->busy && strcmp(v->state, "migrated")) {
				log_warnx("VM %s: its owner is now \"%s\", not \"%s %" PRIu64 "\": "
					  "killed (another host runs it)", v->name,
					  kvs.n ? kvs.kv[0].value : "(none)", a->host, v->epoch);
				vms_signal(v, SIGKILL);
			}
			pthread_mutex_unlock(&a->lock);
			etcd_kvs_free(&kvs);
			continue;
		}
		etcd_kvs_free(&kvs);
		r = agent_api(list[i].api, "PUT", "/api/v1/vm/fleet-lease", body, 3000);
		if (r)
			log_info("VM %s: given the new host lease %" PRIx64, list[i].name,
				 (uint64_t)lease);
		json_decref(r);  /* 409: started without the guard; nothing to do */
	}
	free(list);
	return ret;
}

void *host_lease_thread(void *opaque)
{
	struct agent *a = opaque;
	uint64_t ttl_ms = (uint64_t)a->lease_ttl * 1000;
	uint64_t last_ok = agent_now_ms(), last_try = 0, last_log = 0;
	char err[AGENT_ERR_MAX];
	struct etcd *e;
	int timeout = (int)(ttl_ms / 6 < 2000 ? ttl_ms / 6 : 2000);

	if (timeout < 300)
		timeout = 300;
	if (agent_etcd_open(a, timeout, &e))
		return NULL;
	atomic_store(&a->lease_ok_ms, last_ok);
	while (!a->stop) {
		uint64_t now = agent_now_ms();
		bool fenced, due;
		int64_t lease;
		int ttl, ret;

		pthread_mutex_lock(&a->lock);
		fenced = a->fenced;
		lease = a->lease;
		pthread_mutex_unlock(&a->lock);
		/* every TTL/3, and every 500 ms while it fails */
		due = now - last_ok >= ttl_ms / 3 && now - last_try >= 500;
		if (due) {
			last_try = now;
			ret = etcd_lease_keepalive(e, lease, &ttl, err, sizeof(err));
			if (ret == -ENOENT || (!ret && ttl <= 0)) {
				log_warnx("host %s: lease %" PRIx64 " is gone; registering again",
					  a->host, (uint64_t)lease);
				ret = host_new_lease(a, e);
			} else if (ret && now - last_log >= 2000) {
				log_warnx("host %s: lease keep-alive failed: %s", a->host, err);
				last_log = now;
			}
			if (!ret) {
				bool ho;

				last_ok = agent_now_ms();
				atomic_store(&a->lease_ok_ms, last_ok);
				if (fenced)
					host_unfence(a, e);
				pthread_mutex_lock(&a->lock);
				ho = a->handover && !a->fenced;
				pthread_mutex_unlock(&a->lock);
				if (ho && host_handover(a, e) == 0) {
					pthread_mutex_lock(&a->lock);
					a->handover = false;
					pthread_mutex_unlock(&a->lock);
				}
			}
		}
		now = agent_now_ms();
		if (!fenced && now - last_ok >= ttl_ms * 2 / 3) {
			pthread_mutex_lock(&a->lock);
			host_fence(a, now - last_ok);
			pthread_mutex_unlock(&a->lock);
		}
		agent_sleep_ms(100);
	}
	etcd_close(e);
	return NULL;
}
