/*
 * fleet.c - `godwit fleet`: the operator's command for a fleet of hosts
 * whose state is in etcd (docs/fleet.md).  It speaks to etcd only; the
 * host agents (godwitd) do the work by watching the records.  This file
 * owns the dispatch and the global options, reading and validating the
 * records (a malformed one is reported and left out, never trusted), the
 * tables, and the subcommands hosts, ls, create, stop, rm, cordon and
 * uncordon.  migrate, drain and rebalance are in fleet_ops.c.
 *
 * Exit codes: 0 ok; 1 refused or failed (the cause on stderr); 2 usage.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "godwit/cmd.h"
#include "godwit/common.h"
#include "fleet.h"

static const char fleet_usage[] =
"usage: godwit fleet [--etcd URL[,URL...]] [--tls-dir DIR] [--json] SUBCOMMAND ...\n"
"\n"
"Manage VMs across hosts.  The fleet's state is in etcd (docs/fleet.md):\n"
"this command reads and writes its records only; each host's agent\n"
"(godwitd) acts on them: it starts, stops and migrates its VMs.\n"
"\n"
"subcommands:\n"
"  hosts                        the hosts: state, cordon, memory, CPUs, VMs\n"
"  ls                           the VMs: host, state, epoch, pid, console,\n"
"                               a migration in flight\n"
"  create VM --on HOST [--restart never|always] [--no-wait] -- RUN-OPTIONS...\n"
"                               a new VM on HOST, run with those godwit run\n"
"                               options; waits (30 s) until it runs\n"
"  stop VM [--no-wait]          ask its host to stop it; waits (30 s)\n"
"  rm VM                        forget a stopped, failed or down VM\n"
"  migrate VM --to HOST [--with-disks] [--timeout S] [-q]\n"
"                               move a running VM, following its progress\n"
"  drain HOST [--parallel N] [--timeout S]\n"
"                               cordon HOST and move its running VMs away\n"
"  cordon HOST                  no new VM goes to HOST\n"
"  uncordon HOST                undo cordon (and drain's cordon)\n"
"  rebalance [--max-moves N] [--dry-run] [--parallel N] [--timeout S]\n"
"                               even out the hosts' memory use\n"
"\n"
"options (before or after the subcommand):\n"
"  --etcd URL[,URL...]  etcd's client URLs (default: $GODWIT_ETCD, else\n"
"                       " FLEET_DEFAULT_ETCD ")\n"
"  --tls-dir DIR        with https:// URLs: DIR/ca.pem, DIR/cert.pem, DIR/key.pem\n"
"  --json               print one JSON value instead of text\n"
"  -h, --help           this text; `godwit fleet SUBCOMMAND --help` for each\n"
"\n"
"Exit status: 0 ok, 1 refused or failed (the cause on stderr), 2 usage error.\n";

static const char hosts_usage[] =
"usage: godwit fleet hosts [--json]\n"
"\n"
"List the hosts: those with a hosts/H record (state \"up\": the agent's lease\n"
"holds), and those named as a VM's owner or cordoned without one (\"lost\":\n"
"its lease expired, or it never came up).  Memory and CPUs used are the sums\n"
"of the specs of the VMs the host owns; the capacities are the agent's.\n"
"--json: an array of {name, state, cordoned, addr, mem_used, mem_capacity,\n"
"cpus_used, cpu_capacity, vms}.\n"
"\n"
"Exit status: 0 ok, 1 etcd unreachable, 2 usage error.\n";

static const char ls_usage[] =
"usage: godwit fleet ls [--json]\n"
"\n"
"List the VMs: host (the owner), state (from the status the host's agent\n"
"writes; \"down\" when the owner host has no hosts/H record: its lease\n"
"expired; \"pending\" when no status was written yet), epoch (the owner's),\n"
"pid, console log path, and a migration in flight (phase -> destination;\n"
"\"requested\" before the agent took it up).\n"
"--json: an array of {name, host, state, epoch, pid, console, mem, cpus,\n"
"restart, error, migration, intent}.\n"
"\n"
"Exit status: 0 ok, 1 etcd unreachable, 2 usage error.\n";

static const char create_usage[] =
"usage: godwit fleet create VM --on HOST [--restart never|always] [--no-wait]\n"
"                           -- RUN-OPTIONS...\n"
"\n"
"Create VM on HOST: write its spec (name, mem, cpus, args, restart, created)\n"
"and its owner \"HOST 1\" in one transaction, only if no VM of that name\n"
"exists.  HOST's agent starts `godwit run RUN-OPTIONS...` (with its own\n"
"--name, --api and paths).  RUN-OPTIONS are godwit run's (e.g. --kernel PATH\n"
"--mem 128M --cpus 1 --cmdline '...' --disk ...); --kernel is required;\n"
"--mem and --cpus (default 512M and 1) are the VM's size; --api, --name and\n"
"--incoming are refused (the agent sets them).\n"
"\n"
"Refused unless HOST is up (hosts/HOST exists), not cordoned, and has room:\n"
"the specs of its VMs plus this one within its memory and CPU capacity.\n"
"\n"
"  --on HOST            the host to run it\n"
"  --restart never|always  always: another host restarts it (cold) if HOST\n"
"                       is lost (its disks must be on shared storage);\n"
"                       default never\n"
"  --no-wait            return once written; otherwise wait (30 s at most)\n"
"                       until HOST reports it running, and print its status\n"
"  --json               print {spec, owner, status}\n"
"\n"
"Exit status: 0 created (and running), 1 refused, failed to start or not\n"
"running in 30 s, 2 usage error.\n";

static const char stop_usage[] =
"usage: godwit fleet stop VM [--no-wait] [--json]\n"
"\n"
"Ask VM's host to stop it: write the intent {op: \"stop\"} unless VM has\n"
"one already, then wait (30 s at most; --no-wait: not) for its status to\n"
"say stopped.  Refused for a VM whose host is down.\n"
"\n"
"Exit status: 0 stopped (or asked to, --no-wait), 1 refused or not stopped\n"
"in 30 s, 2 usage error.\n";

static const char rm_usage[] =
"usage: godwit fleet rm VM [--json]\n"
"\n"
"Delete VM's records (everything under vms/VM/), only when it is stopped,\n"
"failed, or down (its owner host has no hosts/H record, and it is still\n"
"so when deleting).  Its disks are left alone.\n"
"\n"
"Exit status: 0 removed, 1 refused, 2 usage error.\n";

static const char cordon_usage[] =
"usage: godwit fleet cordon HOST [--json]\n"
"       godwit fleet uncordon HOST [--json]\n"
"\n"
"cordon: write cordon/HOST: no VM is created on, migrated to, or moved by\n"
"drain/rebalance to HOST; those it runs stay.  It outlives the agent.\n"
"uncordon: delete it.\n"
"\n"
"Exit status: 0 done, 1 etcd failed, 2 usage error.\n";

/* The states an agent writes in status (docs/fleet.md). */
static const char *const fleet_states[] = {
	"starting", "running", "migrating", "paused", "in-doubt", "stopped", "failed",
};

void fleet_err(const struct fleet_ctx *c, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "godwit: %s: ", c->who);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* The client's message without its "etcd: " (ours say etcd already). */
static const char *fleet_etcd_msg(const char *err)
{
	return strncmp(err, "etcd: ", 6) ? err : err + 6;
}

int fleet_etcd_err(const struct fleet_ctx *c, const char *what, int r, const char *err)
{
	err = fleet_etcd_msg(err);
	if (r == -ECONNREFUSED)
		fleet_err(c, "etcd unreachable at %s: %s", c->urls, err);
	else if (r == -ETIMEDOUT)
		fleet_err(c, "%s: etcd at %s did not answer in time (%s): it may or may not "
			  "have been applied", what, etcd_endpoint(c->e), err);
	else
		fleet_err(c, "%s: etcd at %s: %s", what, etcd_endpoint(c->e), err);
	return 1;
}

int fleet_connect(struct fleet_ctx *c)
{
	char err[256] = "";
	int r;

	if (c->e)
		return 0;
	r = etcd_open(c->urls, c->tls_dir, ETCD_TIMEOUT_MS, &c->e, err, sizeof(err));
	if (r) {
		fleet_err(c, "etcd %s: %s", c->urls, err[0] ? fleet_etcd_msg(err) : strerror(-r));
		return 1;
	}
	return 0;
}

void fleet_json_print(json_t *j)
{
	if (!j) {
		fprintf(stderr, "godwit: fleet: out of memory\n");
		return;
	}
	json_dumpf(j, stdout, JSON_COMPACT | JSON_REAL_PRECISION(15));
	putchar('\n');
}

int64_t fleet_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void fleet_sleep_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* ---- tables ---- */

void fleet_table_init(struct fleet_table *t, size_t ncol)
{
	memset(t, 0, sizeof(*t));
	t->ncol = ncol;
}

void fleet_table_add(struct fleet_table *t, ...)
{
	va_list ap;

	if (t->nrows == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 16;
		char **nc = realloc(t->cells, cap * t->ncol * sizeof(*nc));

		if (!nc)
			return;
		t->cells = nc;
		t->cap = cap;
	}
	va_start(ap, t);
	for (size_t i = 0; i < t->ncol; i++) {
		const char *s = va_arg(ap, const char *);

		t->cells[t->nrows * t->ncol + i] = strdup(s && *s ? s : "-");
	}
	va_end(ap);
	t->nrows++;
}

void fleet_table_print(struct fleet_table *t)
{
	size_t w[t->ncol ? t->ncol : 1];

	memset(w, 0, sizeof(w));
	for (size_t r = 0; r < t->nrows; r++)
		for (size_t i = 0; i < t->ncol; i++) {
			const char *s = t->cells[r * t->ncol + i];
			size_t n = s ? strlen(s) : 0;

			w[i] = n > w[i] ? n : w[i];
		}
	for (size_t r = 0; r < t->nrows; r++) {
		for (size_t i = 0; i < t->ncol; i++) {
			const char *s = t->cells[r * t->ncol + i];

			if (i + 1 < t->ncol)
				printf("%-*s  ", (int)w[i], s ? s : "?");
			else
				printf("%s\n", s ? s : "?");
		}
	}
	for (size_t i = 0; i < t->nrows * t->ncol; i++)
		free(t->cells[i]);
	free(t->cells);
	memset(t, 0, sizeof(*t));
}

/* ---- the records ---- */

static void fleet_bad(const struct fleet_ctx *c, bool quiet, const char *key, const char *why)
{
	if (!quiet)
		fleet_err(c, "malformed record %s: %s (left out)", key, why);
}

/* An integer member within [lo, hi]: 0, or -1 (absent when !required: *out untouched, 0). */
static int fleet_jint(json_t *o, const char *k, bool required, int64_t lo, int64_t hi,
		      int64_t *out)
{
	json_t *v = json_object_get(o, k);

	if (!v)
		return required ? -1 : 0;
	if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
		return -1;
	*out = json_integer_value(v);
	return 0;
}

/* A string member that is absent or a string (*out: it, or ""). */
int fleet_jstr(json_t *o, const char *k, const char **out)
{
	json_t *v = json_object_get(o, k);

	*out = "";
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_string(v))
		return -1;
	*out = json_string_value(v);
	return 0;
}

static json_t *fleet_parse_obj(const char *s, char *why, size_t len)
{
	json_error_t jerr;
	json_t *j = json_loads(s, JSON_REJECT_DUPLICATES, &jerr);

	if (!j) {
		snprintf(why, len, "not JSON: %s", jerr.text);
		return NULL;
	}
	if (!json_is_object(j)) {
		snprintf(why, len, "not a JSON object");
		json_decref(j);
		return NULL;
	}
	return j;
}

static struct fleet_host *fleet_add_host(struct fleet_view *v, const char *name)
{
	struct fleet_host *h = fleet_view_host(v, name), *nh;

	if (h)
		return h;
	nh = realloc(v->h, (v->nh + 1) * sizeof(*nh));
	if (!nh)
		return NULL;
	v->h = nh;
	h = &v->h[v->nh++];
	memset(h, 0, sizeof(*h));
	snprintf(h->name, sizeof(h->name), "%s", name);
	return h;
}

static struct fleet_vm *fleet_add_vm(struct fleet_view *v, const char *name)
{
	struct fleet_vm *vm = fleet_view_vm(v, name), *nv;

	if (vm)
		return vm;
	nv = realloc(v->v, (v->nv + 1) * sizeof(*nv));
	if (!nv)
		return NULL;
	v->v = nv;
	vm = &v->v[v->nv++];
	memset(vm, 0, sizeof(*vm));
	vm->state = "";
	vm->status_host = "";
	snprintf(vm->name, sizeof(vm->name), "%s", name);
	return vm;
}

struct fleet_host *fleet_view_host(struct fleet_view *v, const char *name)
{
	for (size_t i = 0; i < v->nh; i++)
		if (!strcmp(v->h[i].name, name))
			return &v->h[i];
	return NULL;
}

struct fleet_vm *fleet_view_vm(struct fleet_view *v, const char *name)
{
	for (size_t i = 0; i < v->nv; i++)
		if (!strcmp(v->v[i].name, name))
			return &v->v[i];
	return NULL;
}

static int fleet_parse_host(struct fleet_host *h, const char *val, char *why, size_t len)
{
	json_t *j = fleet_parse_obj(val, why, len);
	const char *name, *addr;
	int64_t mem = 0, cpus = 0;

	if (!j)
		return -1;
	if (fleet_jstr(j, "name", &name) || (*name && strcmp(name, h->name))) {
		snprintf(why, len, "its name is not %s", h->name);
		goto bad;
	}
	if (fleet_jint(j, "mem_capacity", true, 0, INT64_MAX, &mem)) {
		snprintf(why, len, "mem_capacity is not a number of bytes");
		goto bad;
	}
	if (fleet_jint(j, "cpu_capacity", true, 0, 1 << 20, &cpus)) {
		snprintf(why, len, "cpu_capacity is not a number of CPUs");
		goto bad;
	}
	if (fleet_jstr(j, "addr", &addr) || strlen(addr) >= sizeof(h->addr)) {
		snprintf(why, len, "addr is not a string of at most %zu bytes",
			 sizeof(h->addr) - 1);
		goto bad;
	}
	h->mem_capacity = (uint64_t)mem;
	h->cpu_capacity = (uint32_t)cpus;
	snprintf(h->addr, sizeof(h->addr), "%s", addr);
	json_decref(j);
	return 0;
bad:
	json_decref(j);
	return -1;
}

static int fleet_parse_spec(struct fleet_vm *vm, const char *val, char *why, size_t len)
{
	json_t *j = fleet_parse_obj(val, why, len), *args, *a;
	const char *name, *restart;
	int64_t mem, cpus;
	size_t i;

	if (!j)
		return -1;
	if (fleet_jstr(j, "name", &name) || strcmp(name, vm->name)) {
		snprintf(why, len, "its name is not %s", vm->name);
		goto bad;
	}
	if (fleet_jint(j, "mem", true, 1, INT64_MAX, &mem)) {
		snprintf(why, len, "mem is not a number of bytes");
		goto bad;
	}
	if (fleet_jint(j, "cpus", true, 1, 255, &cpus)) {
		snprintf(why, len, "cpus is not a number from 1 to 255");
		goto bad;
	}
	if (fleet_jstr(j, "restart", &restart) ||
	    (strcmp(restart, "never") && strcmp(restart, "always"))) {
		snprintf(why, len, "restart is not \"never\" or \"always\"");
		goto bad;
	}
	args = json_object_get(j, "args");
	if (!json_is_array(args)) {
		snprintf(why, len, "args is not an array");
		goto bad;
	}
	json_array_foreach(args, i, a)
		if (!json_is_string(a)) {
			snprintf(why, len, "args[%zu] is not a string", i);
			goto bad;
		}
	vm->has_spec = true;
	vm->mem = (uint64_t)mem;
	vm->cpus = (uint32_t)cpus;
	vm->spec = j;
	return 0;
bad:
	json_decref(j);
	return -1;
}

static int fleet_parse_status(struct fleet_vm *vm, const char *val, char *why, size_t len)
{
	json_t *j = fleet_parse_obj(val, why, len);
	const char *state, *s;
	int64_t n = 0;
	bool known = false;

	if (!j)
		return -1;
	if (fleet_jstr(j, "state", &state)) {
		snprintf(why, len, "state is not a string");
		goto bad;
	}
	/*
	 * The documented states, or a word like them (an agent newer than this
	 * command may have more): shown as it is, acted on only when known.
	 */
	for (size_t i = 0; i < ARRAY_SIZE(fleet_states); i++)
		known |= !strcmp(state, fleet_states[i]);
	if (!known && (!*state || strlen(state) > 32 || strspn(state, "abcdefghijklmnopqrstuvwxyz-")
						       != strlen(state))) {
		snprintf(why, len, "state is not a word of a-z and -");
		goto bad;
	}
	if (fleet_jstr(j, "host", &s) || (*s && !fleet_name_ok(s))) {
		snprintf(why, len, "host is not a host name");
		goto bad;
	}
	if (fleet_jint(j, "epoch", false, 0, INT64_MAX, &n) ||
	    fleet_jint(j, "pid", false, 0, INT32_MAX, &n)) {
		snprintf(why, len, "epoch or pid is not a number");
		goto bad;
	}
	if (fleet_jstr(j, "console", &s) || fleet_jstr(j, "error", &s) ||
	    fleet_jstr(j, "api", &s)) {
		snprintf(why, len, "console, error or api is not a string");
		goto bad;
	}
	vm->status = j;
	vm->state = state;
	fleet_jstr(j, "host", &vm->status_host);
	return 0;
bad:
	json_decref(j);
	return -1;
}

static int fleet_parse_intent(struct fleet_vm *vm, const char *val, char *why, size_t len)
{
	json_t *j = fleet_parse_obj(val, why, len);
	const char *op, *to;

	if (!j)
		return -1;
	if (fleet_jstr(j, "op", &op) || (strcmp(op, "stop") && strcmp(op, "migrate"))) {
		snprintf(why, len, "op is not \"stop\" or \"migrate\"");
		goto bad;
	}
	if (!strcmp(op, "migrate") && (fleet_jstr(j, "to", &to) || !fleet_name_ok(to))) {
		snprintf(why, len, "to is not a host name");
		goto bad;
	}
	vm->intent = j;
	return 0;
bad:
	json_decref(j);
	return -1;
}

static int fleet_parse_migration(struct fleet_vm *vm, const char *val, char *why, size_t len)
{
	json_t *j = fleet_parse_obj(val, why, len), *p;
	const char *s;
	int64_t n;

	if (!j)
		return -1;
	if (fleet_jstr(j, "phase", &s) || !*s) {
		snprintf(why, len, "phase is not a string");
		goto bad;
	}
	if (fleet_jstr(j, "to", &s) || fleet_jstr(j, "from", &s) || fleet_jstr(j, "error", &s)) {
		snprintf(why, len, "from, to or error is not a string");
		goto bad;
	}
	if ((json_object_get(j, "id") && !json_is_string(json_object_get(j, "id")) &&
	     !json_is_integer(json_object_get(j, "id"))) ||
	    fleet_jint(j, "epoch", false, 0, INT64_MAX, &n)) {
		snprintf(why, len, "id is not a string or a number, or epoch not a number");
		goto bad;
	}
	p = json_object_get(j, "progress");
	if (p && !json_is_object(p) && !json_is_null(p)) {
		snprintf(why, len, "progress is not an object");
		goto bad;
	}
	vm->migration = j;
	return 0;
bad:
	json_decref(j);
	return -1;
}

/* One key under vms/V/ (rest: after "vms/"). */
static void fleet_take_vm_key(struct fleet_ctx *c, struct fleet_view *v, const struct etcd_kv *kv,
			      const char *rest, bool quiet)
{
	const char *slash = strchr(rest, '/'), *what;
	char name[FLEET_NAME_MAX], why[256] = "";
	struct fleet_vm *vm;
	char **nk;

	if (!slash || (size_t)(slash - rest) >= sizeof(name))
		return fleet_bad(c, quiet, kv->key, "not a VM's key");
	memcpy(name, rest, slash - rest);
	name[slash - rest] = '\0';
	if (!fleet_name_ok(name))
		return fleet_bad(c, quiet, kv->key, "not a valid VM name");
	what = slash + 1;
	vm = fleet_add_vm(v, name);
	if (!vm)
		return fleet_bad(c, quiet, kv->key, "out of memory");
	nk = realloc(vm->keys, (vm->nkeys + 1) * sizeof(*nk));
	if (nk) {
		vm->keys = nk;
		vm->keys[vm->nkeys] = strdup(kv->key);
		if (vm->keys[vm->nkeys])
			vm->nkeys++;
	}
	if (!strcmp(what, "spec")) {
		if (fleet_parse_spec(vm, kv->value, why, sizeof(why)))
			fleet_bad(c, quiet, kv->key, why);
	} else if (!strcmp(what, "owner")) {
		if (fleet_owner_parse(kv->value, &vm->owner))
			fleet_bad(c, quiet, kv->key, "not \"HOST EPOCH\"");
		else
			vm->has_owner = true;
		snprintf(vm->owner_raw, sizeof(vm->owner_raw), "%s", kv->value);
	} else if (!strcmp(what, "status")) {
		vm->status_mod = kv->mod_rev;
		if (fleet_parse_status(vm, kv->value, why, sizeof(why)))
			fleet_bad(c, quiet, kv->key, why);
	} else if (!strcmp(what, "intent")) {
		vm->has_intent = true;
		vm->intent_mod = kv->mod_rev;
		if (fleet_parse_intent(vm, kv->value, why, sizeof(why)))
			fleet_bad(c, quiet, kv->key, why);
	} else if (!strcmp(what, "migration")) {
		vm->migration_mod = kv->mod_rev;
		if (fleet_parse_migration(vm, kv->value, why, sizeof(why)))
			fleet_bad(c, quiet, kv->key, why);
	}
	/* veto/E and anything newer: kept in keys (rm), nothing to show. */
}

static void fleet_take_key(struct fleet_ctx *c, struct fleet_view *v, const struct etcd_kv *kv,
			   bool quiet)
{
	const char *k = kv->key + strlen(FLEET_PREFIX);
	char why[256];

	if (!strncmp(k, "vms/", 4))
		return fleet_take_vm_key(c, v, kv, k + 4, quiet);
	if (!strncmp(k, "hosts/", 6) || !strncmp(k, "cordon/", 7)) {
		bool cordon = k[0] == 'c';
		const char *name = k + (cordon ? 7 : 6);
		struct fleet_host *h;

		if (!fleet_name_ok(name))
			return fleet_bad(c, quiet, kv->key, "not a valid host name");
		h = fleet_add_host(v, name);
		if (!h)
			return fleet_bad(c, quiet, kv->key, "out of memory");
		if (cordon) {
			h->cordoned = true;
			return;
		}
		h->up = true;
		if (fleet_parse_host(h, kv->value, why, sizeof(why))) {
			/* Up (its lease holds) but nothing fits: its capacity is unknown. */
			h->bad = true;
			fleet_bad(c, quiet, kv->key, why);
		}
	}
}

static int fleet_host_cmp(const void *a, const void *b)
{
	return strcmp(((const struct fleet_host *)a)->name, ((const struct fleet_host *)b)->name);
}

int fleet_load(struct fleet_ctx *c, struct fleet_view *v, bool quiet)
{
	struct etcd_kvs kvs = { 0 };
	char err[256] = "";
	int r;

	memset(v, 0, sizeof(*v));
	if (fleet_connect(c))
		return 1;
	r = etcd_get_prefix(c->e, FLEET_PREFIX, &kvs, err, sizeof(err));
	if (r)
		return fleet_etcd_err(c, "reading " FLEET_PREFIX, r, err);
	r = fleet_view_from_kvs(c, &kvs, v, quiet);
	etcd_kvs_free(&kvs);
	return r;
}

int fleet_view_from_kvs(struct fleet_ctx *c, const struct etcd_kvs *kvs, struct fleet_view *v,
			bool quiet)
{
	memset(v, 0, sizeof(*v));
	v->revision = kvs->revision;
	for (size_t i = 0; i < kvs->n; i++)
		if (kvs->kv[i].key && kvs->kv[i].value &&
		    !strncmp(kvs->kv[i].key, FLEET_PREFIX, strlen(FLEET_PREFIX)))
			fleet_take_key(c, v, &kvs->kv[i], quiet);
	/* Hosts that own VMs but have no record: lost. */
	for (size_t i = 0; i < v->nv; i++)
		if (v->v[i].has_owner && !fleet_add_host(v, v->v[i].owner.host)) {
			fleet_err(c, "out of memory");
			fleet_view_free(v);
			return 1;
		}
	/* By name (cordon/ keys come before hosts/ ones). */
	if (v->nh)
		qsort(v->h, v->nh, sizeof(*v->h), fleet_host_cmp);
	return 0;
}

int fleet_load_vm(struct fleet_ctx *c, const char *name, struct fleet_vm *vm, bool *found,
		  char *err, size_t len)
{
	struct fleet_view v;
	struct etcd_kvs kvs = { 0 };
	char prefix[FLEET_KEY_MAX], e[256] = "";
	int r;

	memset(vm, 0, sizeof(*vm));
	vm->state = vm->status_host = "";
	memset(&v, 0, sizeof(v));
	*found = false;
	snprintf(prefix, sizeof(prefix), FLEET_PREFIX "vms/%s/", name);
	r = etcd_get_prefix(c->e, prefix, &kvs, e, sizeof(e));
	if (r) {
		if (r == -ECONNREFUSED)
			snprintf(err, len, "etcd unreachable at %s: %s", c->urls, fleet_etcd_msg(e));
		else
			snprintf(err, len, "reading vms/%s/: etcd: %s", name, fleet_etcd_msg(e));
		return 1;
	}
	for (size_t i = 0; i < kvs.n; i++)
		fleet_take_key(c, &v, &kvs.kv[i], true);
	etcd_kvs_free(&kvs);
	if (v.nv == 1) {
		*vm = v.v[0];
		*found = true;
		free(v.v);
		v.v = NULL;
		v.nv = 0;
	}
	fleet_view_free(&v);
	return 0;
}

void fleet_vm_free(struct fleet_vm *vm)
{
	json_decref(vm->spec);
	json_decref(vm->status);
	json_decref(vm->intent);
	json_decref(vm->migration);
	for (size_t i = 0; i < vm->nkeys; i++)
		free(vm->keys[i]);
	free(vm->keys);
	memset(vm, 0, sizeof(*vm));
}

void fleet_view_free(struct fleet_view *v)
{
	for (size_t i = 0; i < v->nv; i++)
		fleet_vm_free(&v->v[i]);
	free(v->v);
	free(v->h);
	memset(v, 0, sizeof(*v));
}

const char *fleet_vm_state(struct fleet_view *v, const struct fleet_vm *vm)
{
	struct fleet_host *h;

	if (!vm->has_owner)
		return vm->owner_raw[0] ? "bad-owner" : "no-owner";
	h = fleet_view_host(v, vm->owner.host);
	if (!h || !h->up)
		return "down";
	if (!vm->status)
		return vm->status_mod ? "bad-status" : "pending";
	return vm->state;
}

bool fleet_id_set(json_t *id)
{
	return json_is_integer(id) || (json_is_string(id) && json_string_length(id));
}

bool fleet_vm_migrating(const struct fleet_vm *vm, const char **phase, const char **to)
{
	const char *p = "", *t = "";

	if (vm->migration) {
		fleet_jstr(vm->migration, "phase", &p);
		fleet_jstr(vm->migration, "to", &t);
		if (strcmp(p, "done") && strcmp(p, "failed")) {
			*phase = p;
			*to = t;
			return true;
		}
	}
	if (vm->intent) {
		const char *op = "";
		json_t *iid = json_object_get(vm->intent, "id");
		json_t *mid = vm->migration ? json_object_get(vm->migration, "id") : NULL;

		/* An intent whose migration ended (its agent has not deleted it yet) is not in flight. */
		if (vm->migration && (fleet_id_set(mid) ? json_equal(mid, iid) :
				      vm->migration_mod > vm->intent_mod))
			return false;
		fleet_jstr(vm->intent, "op", &op);
		if (!strcmp(op, "migrate")) {
			*phase = "requested";
			fleet_jstr(vm->intent, "to", to);
			return true;
		}
	}
	return false;
}

int fleet_place_arrays(struct fleet_view *v, struct place_host **ph, struct place_vm **pv,
		       size_t *npv)
{
	*ph = calloc(v->nh ? v->nh : 1, sizeof(**ph));
	*pv = calloc(v->nv ? v->nv : 1, sizeof(**pv));
	*npv = 0;
	if (!*ph || !*pv) {
		free(*ph);
		free(*pv);
		return -ENOMEM;
	}
	for (size_t i = 0; i < v->nh; i++) {
		struct place_host *h = &(*ph)[i];

		snprintf(h->name, sizeof(h->name), "%s", v->h[i].name);
		h->mem_capacity = v->h[i].mem_capacity;
		h->cpu_capacity = v->h[i].cpu_capacity;
		h->alive = v->h[i].up;
		h->cordoned = v->h[i].cordoned;
	}
	for (size_t i = 0; i < v->nv; i++) {
		struct place_vm *p = &(*pv)[*npv];

		if (!v->v[i].has_spec || !v->v[i].has_owner)
			continue;
		snprintf(p->name, sizeof(p->name), "%s", v->v[i].name);
		snprintf(p->host, sizeof(p->host), "%s", v->v[i].owner.host);
		/* A stopped VM is still the host's, but holds neither memory nor vCPUs there. */
		if (strcmp(v->v[i].state, "stopped")) {
			p->mem = v->v[i].mem;
			p->cpus = v->v[i].cpus;
		}
		(*npv)++;
	}
	place_usage(*ph, v->nh, *pv, *npv);
	return 0;
}

/* ---- option parsing shared by the subcommands ---- */

enum {
	FO_ETCD = 0x300,
	FO_TLS_DIR,
	FO_JSON,
	FO_ON,
	FO_RESTART,
	FO_NO_WAIT,
	FO_TO,
	FO_WITH_DISKS,
	FO_TIMEOUT,
	FO_PARALLEL,
	FO_MAX_MOVES,
	FO_DRY_RUN,
};

/* The options every subcommand takes too (as well as before it). */
#define FLEET_COMMON_OPTIONS \
	{ "etcd",    required_argument, NULL, FO_ETCD }, \
	{ "tls-dir", required_argument, NULL, FO_TLS_DIR }, \
	{ "json",    no_argument,       NULL, FO_JSON }, \
	{ "help",    no_argument,       NULL, 'h' }

/* 1 if opt was a common option (taken), 0 if not. */
static int fleet_common_opt(struct fleet_ctx *c, int opt)
{
	switch (opt) {
	case FO_ETCD: c->urls = optarg; return 1;
	case FO_TLS_DIR: c->tls_dir = optarg; return 1;
	case FO_JSON: c->json = true; return 1;
	}
	return 0;
}

/* A getopt failure: say it.  Returns 2. */
static int fleet_bad_opt(const struct fleet_ctx *c, int opt, char **argv)
{
	if (opt == ':')
		fleet_err(c, "option %s needs an argument", argv[optind - 1]);
	else if (optopt && optopt < 0x100)
		fleet_err(c, "unknown option -%c", optopt);
	else
		fleet_err(c, "unknown option %s", argv[optind - 1]);
	fprintf(stderr, "Try 'godwit %s --help'.\n", c->who);
	return 2;
}

static int fleet_usage_err(const struct fleet_ctx *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static int fleet_usage_err(const struct fleet_ctx *c, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "godwit: %s: ", c->who);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'godwit %s --help'.\n", c->who);
	return 2;
}

/* The one operand (VM or HOST) of a subcommand: argv[optind], a valid name, alone. */
static int fleet_operand(const struct fleet_ctx *c, int argc, char **argv, const char *what,
			 const char **out)
{
	if (optind >= argc)
		return fleet_usage_err(c, "%s is required", what);
	if (optind + 1 < argc)
		return fleet_usage_err(c, "unexpected argument '%s'", argv[optind + 1]);
	if (!fleet_name_ok(argv[optind]))
		return fleet_usage_err(c, "'%s' is not a valid %s name (1-63 of A-Z a-z 0-9 . _ -)",
				       argv[optind], what);
	*out = argv[optind];
	return 0;
}

/* Parse a subcommand with only the common options and one operand (what, or NULL: none). */
static int fleet_simple_args(struct fleet_ctx *c, int argc, char **argv, const char *usage,
			     const char *what, const char **operand, bool *no_wait)
{
	static const struct option opts[] = {
		FLEET_COMMON_OPTIONS,
		{ "no-wait", no_argument, NULL, FO_NO_WAIT },
		{ NULL, 0, NULL, 0 },
	};
	int opt;

	optind = 0;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		if (fleet_common_opt(c, opt))
			continue;
		if (opt == 'h') {
			fputs(usage, stdout);
			return -1;
		}
		if (opt == FO_NO_WAIT && no_wait) {
			*no_wait = true;
			continue;
		}
		return fleet_bad_opt(c, opt, argv);
	}
	if (!what) {
		if (optind < argc)
			return fleet_usage_err(c, "unexpected argument '%s'", argv[optind]);
		return 0;
	}
	return fleet_operand(c, argc, argv, what, operand);
}

/* ---- hosts, ls ---- */

static void fleet_mib(char *buf, size_t len, uint64_t used, uint64_t cap)
{
	snprintf(buf, len, "%llu/%llu MiB", (unsigned long long)(used / MiB),
		 (unsigned long long)(cap / MiB));
}

json_t *fleet_hosts_json(struct fleet_view *v)
{
	struct place_host *ph;
	struct place_vm *pv;
	json_t *out;
	size_t npv;

	if (fleet_place_arrays(v, &ph, &pv, &npv))
		return NULL;
	out = json_array();
	for (size_t i = 0; i < v->nh && out; i++) {
		struct fleet_host *h = &v->h[i];
		json_t *names = json_array();

		for (size_t k = 0; k < npv; k++)
			if (!strcmp(pv[k].host, h->name))
				json_array_append_new(names, json_string(pv[k].name));
		json_array_append_new(out, json_pack(
			"{s:s, s:s, s:b, s:s, s:I, s:I, s:I, s:I, s:o}",
			"name", h->name, "state", h->up ? (h->bad ? "up-malformed" : "up") : "lost",
			"cordoned", h->cordoned, "addr", h->addr,
			"mem_used", (json_int_t)ph[i].mem_used,
			"mem_capacity", (json_int_t)h->mem_capacity,
			"cpus_used", (json_int_t)ph[i].cpus_used,
			"cpu_capacity", (json_int_t)h->cpu_capacity, "vms", names));
	}
	free(ph);
	free(pv);
	return out;
}

static int fleet_cmd_hosts(struct fleet_ctx *c, int argc, char **argv)
{
	struct place_host *ph;
	struct place_vm *pv;
	struct fleet_view v;
	size_t npv;
	int r = fleet_simple_args(c, argc, argv, hosts_usage, NULL, NULL, NULL);

	if (r)
		return r < 0 ? 0 : r;
	if (fleet_load(c, &v, false))
		return 1;
	if (c->json) {
		json_t *out = fleet_hosts_json(&v);

		fleet_json_print(out);
		json_decref(out);
		fleet_view_free(&v);
		return out ? 0 : 1;
	}
	if (fleet_place_arrays(&v, &ph, &pv, &npv)) {
		fleet_view_free(&v);
		fleet_err(c, "out of memory");
		return 1;
	}
	struct fleet_table t;

	fleet_table_init(&t, 7);
	fleet_table_add(&t, "HOST", "STATE", "CORDONED", "MEM", "CPUS", "VMS", "ADDR");
	for (size_t i = 0; i < v.nh; i++) {
		struct fleet_host *h = &v.h[i];
		char mem[64], cpus[32], nvms[16];
		size_t n = 0;

		for (size_t k = 0; k < npv; k++)
			n += !strcmp(pv[k].host, h->name);
		fleet_mib(mem, sizeof(mem), ph[i].mem_used, h->mem_capacity);
		snprintf(cpus, sizeof(cpus), "%u/%u", ph[i].cpus_used, h->cpu_capacity);
		snprintf(nvms, sizeof(nvms), "%zu", n);
		fleet_table_add(&t, h->name, h->up ? (h->bad ? "up-malformed" : "up") : "lost",
				h->cordoned ? "yes" : "no", mem, cpus, nvms, h->addr);
	}
	fleet_table_print(&t);
	free(ph);
	free(pv);
	fleet_view_free(&v);
	return 0;
}

json_t *fleet_vm_json(struct fleet_view *v, const struct fleet_vm *vm)
{
	const char *console = "", *error = "", *phase, *to;
	int64_t pid = 0;
	json_t *j;

	if (vm->status) {
		fleet_jstr(vm->status, "console", &console);
		fleet_jstr(vm->status, "error", &error);
		fleet_jint(vm->status, "pid", false, 0, INT32_MAX, &pid);
	}
	j = json_pack("{s:s, s:s?, s:s}", "name", vm->name,
		      "host", vm->has_owner ? vm->owner.host : NULL, "state", fleet_vm_state(v, vm));
	if (!j)
		return NULL;
	json_object_set_new(j, "epoch", vm->has_owner ? json_integer((json_int_t)vm->owner.epoch)
							 : json_null());
	json_object_set_new(j, "pid", pid ? json_integer(pid) : json_null());
	json_object_set_new(j, "console", *console ? json_string(console) : json_null());
	json_object_set_new(j, "error", *error ? json_string(error) : json_null());
	if (vm->has_spec) {
		json_object_set_new(j, "mem", json_integer((json_int_t)vm->mem));
		json_object_set_new(j, "cpus", json_integer(vm->cpus));
		json_object_set(j, "restart", json_object_get(vm->spec, "restart"));
	}
	if (fleet_vm_migrating(vm, &phase, &to))
		json_object_set_new(j, "migration", json_pack("{s:s, s:s}", "phase", phase, "to", to));
	else
		json_object_set_new(j, "migration", json_null());
	json_object_set(j, "intent", vm->intent ? vm->intent : json_null());
	return j;
}

static int fleet_cmd_ls(struct fleet_ctx *c, int argc, char **argv)
{
	struct fleet_view v;
	struct fleet_table t;
	int r = fleet_simple_args(c, argc, argv, ls_usage, NULL, NULL, NULL);

	if (r)
		return r < 0 ? 0 : r;
	if (fleet_load(c, &v, false))
		return 1;
	if (c->json) {
		json_t *out = json_array();

		for (size_t i = 0; i < v.nv; i++)
			json_array_append_new(out, fleet_vm_json(&v, &v.v[i]));
		fleet_json_print(out);
		json_decref(out);
		fleet_view_free(&v);
		return 0;
	}
	fleet_table_init(&t, 7);
	fleet_table_add(&t, "VM", "HOST", "STATE", "EPOCH", "PID", "CONSOLE", "MIGRATION");
	for (size_t i = 0; i < v.nv; i++) {
		struct fleet_vm *vm = &v.v[i];
		const char *console = "", *phase, *to;
		char epoch[24] = "", pid[24] = "", mig[96] = "";
		int64_t p = 0;

		if (vm->has_owner)
			snprintf(epoch, sizeof(epoch), "%" PRIu64, vm->owner.epoch);
		if (vm->status) {
			fleet_jstr(vm->status, "console", &console);
			if (!fleet_jint(vm->status, "pid", false, 0, INT32_MAX, &p) && p)
				snprintf(pid, sizeof(pid), "%" PRId64, p);
		}
		if (fleet_vm_migrating(vm, &phase, &to))
			snprintf(mig, sizeof(mig), "%s -> %s", phase, to);
		fleet_table_add(&t, vm->name, vm->has_owner ? vm->owner.host : "",
				fleet_vm_state(&v, vm), epoch, pid, console, mig);
	}
	fleet_table_print(&t);
	fleet_view_free(&v);
	return 0;
}

/* ---- create ---- */

/* Print a VM's status after create/stop: one line, or (json) {spec, owner, status}. */
static void fleet_print_vm_done(struct fleet_ctx *c, const struct fleet_vm *vm, const char *what)
{
	if (c->json) {
		json_t *o = json_pack("{s:s, s:O?, s:s?, s:O?}", "name", vm->name, "spec", vm->spec,
				      "owner", vm->owner_raw[0] ? vm->owner_raw : NULL,
				      "status", vm->status);

		fleet_json_print(o);
		json_decref(o);
		return;
	}
	if (vm->status) {
		const char *console = "";
		int64_t pid = 0;

		fleet_jstr(vm->status, "console", &console);
		fleet_jint(vm->status, "pid", false, 0, INT32_MAX, &pid);
		printf("%s: %s on %s (epoch %" PRIu64 "), pid %" PRId64 ", console %s\n", vm->name,
		       vm->state, vm->owner.host, vm->owner.epoch, pid, *console ? console : "-");
	} else {
		printf("%s: %s on %s (epoch %" PRIu64 ")\n", vm->name, what, vm->owner.host,
		       vm->owner.epoch);
	}
}

/*
 * Wait (FLEET_WAIT_S at most) for vm's status to say want on host at epoch.
 * 0 reached (vm holds the records), 1 failed or timed out (said).
 */
static int fleet_wait_state(struct fleet_ctx *c, const char *name, const char *host,
			    const char *want, struct fleet_vm *vm)
{
	struct timespec t0;
	bool found;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		char err[512];

		if (fleet_load_vm(c, name, vm, &found, err, sizeof(err))) {
			fleet_err(c, "%s", err);
			return 1;
		}
		if (!found) {
			fleet_err(c, "%s was removed while waiting for it", name);
			return 1;
		}
		if (vm->status && !strcmp(vm->status_host, host) && !strcmp(vm->state, want))
			return 0;
		if (vm->status && !strcmp(vm->status_host, host) && !strcmp(vm->state, "failed")) {
			const char *e = "";

			fleet_jstr(vm->status, "error", &e);
			fleet_err(c, "%s failed on %s: %s", name, host, *e ? e : "(no error given)");
			return 1;
		}
		if (ms_since(&t0) > FLEET_WAIT_S * 1000.0) {
			fleet_err(c, "%s is not %s on %s after %d s (its status: %s)", name, want,
				  host, FLEET_WAIT_S, vm->status ? vm->state : "none yet");
			return 1;
		}
		fleet_vm_free(vm);
		fleet_sleep_ms(FLEET_POLL_MS);
	}
}

static int fleet_cmd_create(struct fleet_ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
		FLEET_COMMON_OPTIONS,
		{ "on",      required_argument, NULL, FO_ON },
		{ "restart", required_argument, NULL, FO_RESTART },
		{ "no-wait", no_argument,       NULL, FO_NO_WAIT },
		{ NULL, 0, NULL, 0 },
	};
	const char *host = NULL, *restart = "never", *name;
	char err[256], key_spec[FLEET_KEY_MAX], key_owner[FLEET_KEY_MAX], key_host[FLEET_KEY_MAX];
	char key_cordon[FLEET_KEY_MAX], owner[FLEET_OWNER_MAX], why[256];
	bool no_wait = false, ok = false, found;
	int dd, opt, r, ret = 1;
	struct fleet_view v;
	struct fleet_vm vm;
	uint64_t mem;
	uint32_t cpus;

	/* VM and its options before "--", godwit run's after. */
	for (dd = 1; dd < argc && strcmp(argv[dd], "--"); dd++)
		;
	optind = 0;
	opterr = 0;
	while ((opt = getopt_long(dd, argv, ":h", opts, NULL)) != -1) {
		if (fleet_common_opt(c, opt))
			continue;
		switch (opt) {
		case 'h':
			fputs(create_usage, stdout);
			return 0;
		case FO_ON: host = optarg; break;
		case FO_RESTART: restart = optarg; break;
		case FO_NO_WAIT: no_wait = true; break;
		default:
			return fleet_bad_opt(c, opt, argv);
		}
	}
	if (fleet_operand(c, dd, argv, "VM", &name))
		return 2;
	if (!host)
		return fleet_usage_err(c, "--on HOST is required");
	if (!fleet_name_ok(host))
		return fleet_usage_err(c, "'%s' is not a valid host name", host);
	if (strcmp(restart, "never") && strcmp(restart, "always"))
		return fleet_usage_err(c, "--restart %s: expected never or always", restart);
	if (dd >= argc)
		return fleet_usage_err(c, "the VM's godwit run options are missing (after --)");
	if (fleet_run_args(argc - dd - 1, argv + dd + 1, &mem, &cpus, err, sizeof(err)))
		return fleet_usage_err(c, "%s", err);

	if (fleet_load(c, &v, true))
		return 1;
	/* Checks, against what etcd holds now. */
	struct fleet_vm *old = fleet_view_vm(&v, name);
	struct fleet_host *h = fleet_view_host(&v, host);
	struct place_host *ph = NULL;
	struct place_vm *pv = NULL;
	size_t npv;

	if (old) {
		fleet_err(c, "VM %s already exists%s%s", name, old->has_owner ? " on host " : "",
			  old->has_owner ? old->owner.host : "");
		goto out;
	}
	if (!h || !h->up) {
		fleet_err(c, "host %s is not up (no hosts/%s record)", host, host);
		goto out;
	}
	if (h->bad) {
		fleet_err(c, "host %s's record is malformed: its capacity is unknown", host);
		goto out;
	}
	if (fleet_place_arrays(&v, &ph, &pv, &npv)) {
		fleet_err(c, "out of memory");
		goto out;
	}
	if (place_check(&ph[h - v.h], name, mem, cpus, why, sizeof(why))) {
		fleet_err(c, "%s", why);
		goto out;
	}

	/* The spec and the owner, in one transaction, only if nothing is there. */
	json_t *args = json_array(), *spec;
	char *spec_s;

	for (int i = dd + 1; i < argc; i++)
		json_array_append_new(args, json_string(argv[i]));
	/* created: UTC, ISO 8601, as the agents write their times. */
	char created[32];
	time_t now = time(NULL);
	struct tm tm;

	gmtime_r(&now, &tm);
	strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%SZ", &tm);
	spec = json_pack("{s:s, s:I, s:I, s:o, s:s, s:s}", "name", name, "mem", (json_int_t)mem,
			 "cpus", (json_int_t)cpus, "args", args, "restart", restart,
			 "created", created);
	spec_s = spec ? json_dumps(spec, JSON_COMPACT) : NULL;
	json_decref(spec);
	if (!spec_s) {
		fleet_err(c, "out of memory");
		goto out;
	}
	fleet_key_vm(key_spec, sizeof(key_spec), name, "spec");
	fleet_key_vm(key_owner, sizeof(key_owner), name, "owner");
	fleet_key_host(key_host, sizeof(key_host), host);
	fleet_key_cordon(key_cordon, sizeof(key_cordon), host);
	struct fleet_owner o = { .epoch = 1 };

	snprintf(o.host, sizeof(o.host), "%s", host);
	fleet_owner_format(&o, owner, sizeof(owner));
	/*
	 * The owner is compared too (rule 1: it is never written blind), and the
	 * host's liveness and cordon: a cordon written since we read wins.
	 */
	const struct etcd_cmp cmp[] = {
		{ .key = key_spec, .target = ETCD_VERSION, .result = ETCD_EQ, .num = 0 },
		{ .key = key_owner, .target = ETCD_VERSION, .result = ETCD_EQ, .num = 0 },
		{ .key = key_host, .target = ETCD_VERSION, .result = ETCD_GT, .num = 0 },
		{ .key = key_cordon, .target = ETCD_VERSION, .result = ETCD_EQ, .num = 0 },
	};
	const struct etcd_op ops[] = {
		{ .type = ETCD_OP_PUT, .key = key_spec, .value = spec_s },
		{ .type = ETCD_OP_PUT, .key = key_owner, .value = owner },
	};

	r = etcd_txn(c->e, cmp, ARRAY_SIZE(cmp), ops, ARRAY_SIZE(ops), &ok, err, sizeof(err));
	free(spec_s);
	if (r) {
		fleet_etcd_err(c, "creating the VM", r, err);
		goto out;
	}
	if (!ok) {
		fleet_err(c, "VM %s was created, or host %s cordoned or lost, while this command "
			  "ran: see godwit fleet ls / hosts", name, host);
		goto out;
	}
	if (no_wait) {
		if (fleet_load_vm(c, name, &vm, &found, err, sizeof(err))) {
			fleet_err(c, "%s", err);
			goto out;
		}
		fleet_print_vm_done(c, &vm, "created");
		fleet_vm_free(&vm);
		ret = 0;
		goto out;
	}
	if (!c->json)
		fprintf(stderr, "%s: created on %s; waiting for it to run\n", name, host);
	if (!fleet_wait_state(c, name, host, "running", &vm)) {
		fleet_print_vm_done(c, &vm, "running");
		ret = 0;
	}
	fleet_vm_free(&vm);
out:
	free(ph);
	free(pv);
	fleet_view_free(&v);
	return ret;
}

/* ---- stop, rm ---- */

static int fleet_cmd_stop(struct fleet_ctx *c, int argc, char **argv)
{
	const char *name;
	char key[FLEET_KEY_MAX], err[256];
	bool no_wait = false, ok;
	struct fleet_view v;
	struct fleet_vm *vm, now;
	int r = fleet_simple_args(c, argc, argv, stop_usage, "VM", &name, &no_wait), ret = 1;

	if (r)
		return r < 0 ? 0 : r;
	if (fleet_load(c, &v, true))
		return 1;
	vm = fleet_view_vm(&v, name);
	if (!vm) {
		fleet_err(c, "no VM %s", name);
		goto out;
	}
	if (!vm->has_owner) {
		fleet_err(c, "VM %s has no valid owner record: no host runs it", name);
		goto out;
	}
	if (!strcmp(fleet_vm_state(&v, vm), "down")) {
		fleet_err(c, "host %s is not up: %s is down (godwit fleet rm %s forgets it)",
			  vm->owner.host, name, name);
		goto out;
	}
	if (!strcmp(vm->state, "stopped")) {
		if (!c->json)
			printf("%s is already stopped\n", name);
		else
			fleet_print_vm_done(c, vm, "stopped");
		ret = 0;
		goto out;
	}
	if (vm->has_intent) {
		const char *op = "?";

		if (vm->intent)
			fleet_jstr(vm->intent, "op", &op);
		fleet_err(c, "%s already has an intent (%s) its host has not taken up yet", name, op);
		goto out;
	}
	fleet_key_vm(key, sizeof(key), name, "intent");
	const struct etcd_cmp cmp = { .key = key, .target = ETCD_VERSION, .result = ETCD_EQ };
	const struct etcd_op op = { .type = ETCD_OP_PUT, .key = key, .value = "{\"op\":\"stop\"}" };

	r = etcd_txn(c->e, &cmp, 1, &op, 1, &ok, err, sizeof(err));
	if (r) {
		fleet_etcd_err(c, "writing the intent", r, err);
		goto out;
	}
	if (!ok) {
		fleet_err(c, "%s got another intent while this command ran: try again once it is "
			  "done", name);
		goto out;
	}
	if (no_wait) {
		if (!c->json)
			printf("%s: stop requested from %s\n", name, vm->owner.host);
		else
			fleet_print_vm_done(c, vm, "stop requested");
		ret = 0;
		goto out;
	}
	if (!fleet_wait_state(c, name, vm->owner.host, "stopped", &now)) {
		if (!c->json)
			printf("%s stopped on %s\n", name, now.owner.host);
		else
			fleet_print_vm_done(c, &now, "stopped");
		ret = 0;
	}
	fleet_vm_free(&now);
out:
	fleet_view_free(&v);
	return ret;
}

static int fleet_cmd_rm(struct fleet_ctx *c, int argc, char **argv)
{
	const char *name, *state;
	char key_owner[FLEET_KEY_MAX], key_status[FLEET_KEY_MAX], key_host[FLEET_KEY_MAX];
	char prefix[FLEET_KEY_MAX], err[256];
	struct etcd_cmp cmp[3];
	struct etcd_op *ops = NULL;
	size_t ncmp = 0;
	struct fleet_view v;
	struct fleet_vm *vm;
	bool ok, down;
	int r = fleet_simple_args(c, argc, argv, rm_usage, "VM", &name, NULL), ret = 1;

	if (r)
		return r < 0 ? 0 : r;
	if (fleet_load(c, &v, true))
		return 1;
	vm = fleet_view_vm(&v, name);
	if (!vm) {
		fleet_err(c, "no VM %s", name);
		goto out;
	}
	state = fleet_vm_state(&v, vm);
	down = !strcmp(state, "down") || !vm->has_owner;
	if (!down && strcmp(state, "stopped") && strcmp(state, "failed")) {
		fleet_err(c, "%s is %s on %s: stop it first (godwit fleet stop %s)", name, state,
			  vm->owner.host, name);
		goto out;
	}
	/*
	 * Delete what we read, if the owner and the status are still what we
	 * decided on (and, for a down VM, its host still has no record): a VM
	 * started meanwhile is not removed under its agent.
	 */
	fleet_key_vm(key_owner, sizeof(key_owner), name, "owner");
	fleet_key_vm(key_status, sizeof(key_status), name, "status");
	if (vm->owner_raw[0])
		cmp[ncmp++] = (struct etcd_cmp){ .key = key_owner, .target = ETCD_VALUE,
						 .result = ETCD_EQ, .value = vm->owner_raw };
	else
		cmp[ncmp++] = (struct etcd_cmp){ .key = key_owner, .target = ETCD_VERSION,
						 .result = ETCD_EQ, .num = 0 };
	if (vm->status_mod)
		cmp[ncmp++] = (struct etcd_cmp){ .key = key_status, .target = ETCD_MOD,
						 .result = ETCD_EQ, .num = vm->status_mod };
	else
		cmp[ncmp++] = (struct etcd_cmp){ .key = key_status, .target = ETCD_VERSION,
						 .result = ETCD_EQ, .num = 0 };
	if (vm->has_owner && !strcmp(state, "down")) {
		fleet_key_host(key_host, sizeof(key_host), vm->owner.host);
		cmp[ncmp++] = (struct etcd_cmp){ .key = key_host, .target = ETCD_VERSION,
						 .result = ETCD_EQ, .num = 0 };
	}
	ops = calloc(vm->nkeys ? vm->nkeys : 1, sizeof(*ops));
	if (!ops) {
		fleet_err(c, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < vm->nkeys; i++)
		ops[i] = (struct etcd_op){ .type = ETCD_OP_DELETE, .key = vm->keys[i] };
	r = etcd_txn(c->e, cmp, ncmp, ops, vm->nkeys, &ok, err, sizeof(err));
	if (r) {
		fleet_etcd_err(c, "removing the VM", r, err);
		goto out;
	}
	if (!ok) {
		fleet_err(c, "%s changed while this command ran (its host wrote to it): see "
			  "godwit fleet ls", name);
		goto out;
	}
	/* Anything written under it since (its owner is gone: no agent may run it). */
	snprintf(prefix, sizeof(prefix), FLEET_PREFIX "vms/%s/", name);
	r = etcd_delete(c->e, prefix, true, NULL, err, sizeof(err));
	if (r) {
		fleet_etcd_err(c, "removing what is left under vms/", r, err);
		goto out;
	}
	if (c->json) {
		json_t *o = json_pack("{s:s, s:b, s:s}", "name", name, "removed", 1, "state", state);

		fleet_json_print(o);
		json_decref(o);
	} else {
		printf("%s removed (it was %s)\n", name, state);
	}
	ret = 0;
out:
	free(ops);
	fleet_view_free(&v);
	return ret;
}

/* ---- cordon, uncordon ---- */

static int fleet_cmd_cordon(struct fleet_ctx *c, int argc, char **argv, bool on)
{
	const char *host;
	char key[FLEET_KEY_MAX], err[256];
	int64_t deleted = 0;
	int r = fleet_simple_args(c, argc, argv, cordon_usage, "HOST", &host, NULL);

	if (r)
		return r < 0 ? 0 : r;
	if (fleet_connect(c))
		return 1;
	fleet_key_cordon(key, sizeof(key), host);
	if (on)
		r = etcd_put(c->e, key, "1", 0, err, sizeof(err));
	else
		r = etcd_delete(c->e, key, false, &deleted, err, sizeof(err));
	if (r)
		return fleet_etcd_err(c, on ? "writing cordon/" : "deleting cordon/", r, err);
	if (c->json) {
		json_t *o = json_pack("{s:s, s:b}", "host", host, "cordoned", on);

		fleet_json_print(o);
		json_decref(o);
	} else if (on) {
		printf("host %s cordoned\n", host);
	} else {
		printf(deleted ? "host %s uncordoned\n" : "host %s was not cordoned\n", host);
	}
	return 0;
}

/* ---- dispatch ---- */

struct fleet_sub {
	const char *name;
	int (*fn)(struct fleet_ctx *c, int argc, char **argv);
};

static int fleet_cmd_cordon_on(struct fleet_ctx *c, int argc, char **argv)
{
	return fleet_cmd_cordon(c, argc, argv, true);
}

static int fleet_cmd_uncordon(struct fleet_ctx *c, int argc, char **argv)
{
	return fleet_cmd_cordon(c, argc, argv, false);
}

static const struct fleet_sub fleet_subs[] = {
	{ "hosts", fleet_cmd_hosts },
	{ "ls", fleet_cmd_ls },
	{ "create", fleet_cmd_create },
	{ "stop", fleet_cmd_stop },
	{ "rm", fleet_cmd_rm },
	{ "migrate", fleet_cmd_migrate },
	{ "drain", fleet_cmd_drain },
	{ "cordon", fleet_cmd_cordon_on },
	{ "uncordon", fleet_cmd_uncordon },
	{ "rebalance", fleet_cmd_rebalance },
};

/*
 * cmd_fleet - `godwit fleet [options] SUBCOMMAND ...`.
 *   argc, argv: from "fleet" (argv[0]) on
 * Returns the exit code: 0, 1 (refused, failed), 2 (usage).
 */
int cmd_fleet(int argc, char **argv)
{
	static const struct option opts[] = {
		FLEET_COMMON_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	struct fleet_ctx c = { .who = "fleet" };
	char who[64];
	int opt, ret;

	c.urls = getenv("GODWIT_ETCD");
	if (!c.urls || !*c.urls)
		c.urls = FLEET_DEFAULT_ETCD;
	optind = 0;
	opterr = 0;
	/* "+": stop at the subcommand; its options are its own. */
	while ((opt = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
		if (fleet_common_opt(&c, opt))
			continue;
		if (opt == 'h') {
			fputs(fleet_usage, stdout);
			return 0;
		}
		return fleet_bad_opt(&c, opt, argv);
	}
	if (optind >= argc) {
		fputs(fleet_usage, stderr);
		return 2;
	}
	for (size_t i = 0; i < ARRAY_SIZE(fleet_subs); i++) {
		if (strcmp(argv[optind], fleet_subs[i].name))
			continue;
		snprintf(who, sizeof(who), "fleet %s", fleet_subs[i].name);
		c.who = who;
		ret = fleet_subs[i].fn(&c, argc - optind, argv + optind);
		if (c.e)
			etcd_close(c.e);
		if (fflush(stdout) == EOF) {
			fleet_err(&c, "write error on stdout: %s", strerror(errno));
			return 1;
		}
		return ret;
	}
	fleet_err(&c, "unknown subcommand '%s'", argv[optind]);
	fprintf(stderr, "Try 'godwit fleet --help'.\n");
	return 2;
}
