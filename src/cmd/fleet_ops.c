/*
 * fleet_ops.c - `godwit fleet migrate|drain|rebalance`: the commands that
 * move VMs.  Each move is an intent {op: "migrate", to, token, id,
 * with_disks} written by a transaction that compares the VM's owner (and
 * that no intent is there); the source's agent does the migration and
 * reports in vms/V/migration, which is followed here (every 200 ms) until
 * its phase is "done" (and the owner names the destination at the next
 * epoch) or "failed", or the timeout.  drain and rebalance plan with
 * place.h and run a few moves at a time.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "godwit/common.h"
#include "fleet.h"

static const char migrate_usage[] =
"usage: godwit fleet migrate VM --to HOST [--with-disks] [--timeout S] [-q] [--json]\n"
"\n"
"Move the running VM to HOST while it runs.  Checks: VM exists and is\n"
"running, has no intent or migration in flight, HOST is up, not cordoned,\n"
"not VM's host, and has room.  Then one transaction, if VM has no intent\n"
"and its owner is still \"H E\", writes the intent {op: \"migrate\", to, token\n"
"(128 random bits in hex), id (the time in ms, as a string), with_disks}.\n"
"VM's agent migrates it and reports in vms/VM/migration, followed here\n"
"(progress lines on stderr) until its phase is done (owner \"HOST E+1\") or\n"
"failed, or the timeout.\n"
"\n"
"  --to HOST        the destination host\n"
"  --with-disks     copy the VM's disks too (else they are on shared storage)\n"
"  --timeout S      stop following after S seconds (default 300): the\n"
"                   migration may still end either way; see godwit fleet ls\n"
"  -q, --quiet      no progress lines\n"
"  --json           print {vm, ok, ms, owner, migration, error}: the final\n"
"                   migration record and owner\n"
"\n"
"Exit status: 0 the VM runs on HOST; 1 refused, failed or timed out; 2 usage.\n";

static const char drain_usage[] =
"usage: godwit fleet drain HOST [--parallel N] [--timeout S] [--json]\n"
"\n"
"Cordon HOST (cordon/HOST), then move each running VM it owns to another\n"
"host that is up, not cordoned and has room (the biggest VM first, each to\n"
"the host with room for it that is least loaded once it has it, counting\n"
"the moves already planned), N migrations at a time.  One line per VM as it\n"
"finishes (on stderr with --json):\n"
"\"VM: HOST -> TO in MS ms\" or \"VM: stays on HOST: WHY\".  A VM that cannot\n"
"move (no room, a failed migration, its host down) stays, and the drain goes\n"
"on.  Stopped and failed VMs are not moved (they are listed as skipped).\n"
"HOST stays cordoned: godwit fleet uncordon HOST undoes it.\n"
"\n"
"  --parallel N     migrations at once (default 2)\n"
"  --timeout S      each migration must end within S seconds (default 300)\n"
"  --json           print {host, moved: [{vm, from, to, ms}], stayed: [{vm,\n"
"                   error}], skipped: [{vm, state}]}\n"
"  -q, --quiet      with --json, no per-VM lines\n"
"\n"
"Exit status: 0 every running VM left HOST; 1 some stayed (listed); 2 usage.\n";

static const char rebalance_usage[] =
"usage: godwit fleet rebalance [--max-moves N] [--dry-run] [--parallel N]\n"
"                              [--timeout S] [--json]\n"
"\n"
"Even out the hosts' memory use (the specs of the VMs each owns over its\n"
"capacity), among the hosts that are up and not cordoned.  Greedy: up to N\n"
"times, take the most loaded host and, of its running VMs, move the one\n"
"that leaves the smallest spread (most minus least loaded) to the least\n"
"loaded host with room for it, only if that strictly reduces the spread.\n"
"Then run the moves (as drain: a few at a time) and print the outcome.\n"
"\n"
"  --max-moves N    at most N moves (default 4)\n"
"  --dry-run        print the plan (\"move VM from A to B\") and do nothing\n"
"  --parallel N     migrations at once (default 2)\n"
"  --timeout S      each migration must end within S seconds (default 300)\n"
"  --json           print {moves: [{vm, from, to, mem}], spread_before,\n"
"                   spread_after} (--dry-run, or nothing to move), or\n"
"                   {moved, stayed, spread_before, spread_planned}\n"
"  -q, --quiet      no plan line on stderr; with --json, no per-VM lines\n"
"\n"
"Exit status: 0 every planned move done (or nothing to do); 1 some failed;\n"
"2 usage.\n";

enum {
	FO2_ETCD = 0x400,
	FO2_TLS_DIR,
	FO2_JSON,
	FO2_TO,
	FO2_WITH_DISKS,
	FO2_TIMEOUT,
	FO2_PARALLEL,
	FO2_MAX_MOVES,
	FO2_DRY_RUN,
};

#define FLEET_OPS_COMMON \
	{ "etcd",    required_argument, NULL, FO2_ETCD }, \
	{ "tls-dir", required_argument, NULL, FO2_TLS_DIR }, \
	{ "json",    no_argument,       NULL, FO2_JSON }, \
	{ "help",    no_argument,       NULL, 'h' }, \
	{ "quiet",   no_argument,       NULL, 'q' }

/* Options of migrate, drain, rebalance. */
struct fleet_ops_args {
	const char *operand;     /* VM or HOST */
	const char *to;
	bool with_disks, dry_run;
	double timeout_s;
	long parallel, max_moves;
};

static int fleet_ops_usage(const struct fleet_ctx *c, const char *msg, const char *arg)
{
	fprintf(stderr, "godwit: %s: %s%s%s\nTry 'godwit %s --help'.\n", c->who, msg,
		arg ? " " : "", arg ? arg : "", c->who);
	return 2;
}

static int fleet_ops_num(const struct fleet_ctx *c, const char *opt, const char *s, long lo,
			 long hi, long *out)
{
	char *end, msg[128];
	long n;

	errno = 0;
	n = strtol(s, &end, 10);
	if (errno || end == s || *end || n < lo || n > hi) {
		snprintf(msg, sizeof(msg), "%s %s: expected a number from %ld to %ld", opt, s, lo,
			 hi);
		return fleet_ops_usage(c, msg, NULL);
	}
	*out = n;
	return 0;
}

/*
 * Parse a moving command's options; what: "VM", "HOST" or NULL (no operand).
 * 0, -1 after --help (exit 0), or 2.
 */
static int fleet_ops_parse(struct fleet_ctx *c, int argc, char **argv, const char *usage,
			   const char *what, const struct option *opts, struct fleet_ops_args *a)
{
	int opt;
	long n;

	memset(a, 0, sizeof(*a));
	a->timeout_s = FLEET_MIGRATE_S;
	a->parallel = 2;
	a->max_moves = 4;
	optind = 0;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":hq", opts, NULL)) != -1) {
		switch (opt) {
		case FO2_ETCD: c->urls = optarg; break;
		case FO2_TLS_DIR: c->tls_dir = optarg; break;
		case FO2_JSON: c->json = true; break;
		case 'q': c->quiet = true; break;
		case 'h':
			fputs(usage, stdout);
			return -1;
		case FO2_TO: a->to = optarg; break;
		case FO2_WITH_DISKS: a->with_disks = true; break;
		case FO2_DRY_RUN: a->dry_run = true; break;
		case FO2_TIMEOUT:
			if (fleet_ops_num(c, "--timeout", optarg, 1, 86400, &n))
				return 2;
			a->timeout_s = (double)n;
			break;
		case FO2_PARALLEL:
			if (fleet_ops_num(c, "--parallel", optarg, 1, 64, &a->parallel))
				return 2;
			break;
		case FO2_MAX_MOVES:
			if (fleet_ops_num(c, "--max-moves", optarg, 0, 1000, &a->max_moves))
				return 2;
			break;
		case ':':
			return fleet_ops_usage(c, "option needs an argument:", argv[optind - 1]);
		default:
			if (optopt && optopt < 0x100) {
				char o[3] = { '-', (char)optopt, 0 };

				return fleet_ops_usage(c, "unknown option", o);
			}
			return fleet_ops_usage(c, "unknown option", argv[optind - 1]);
		}
	}
	if (!what) {
		if (optind < argc)
			return fleet_ops_usage(c, "unexpected argument", argv[optind]);
		return 0;
	}
	if (optind >= argc) {
		char msg[32];

		snprintf(msg, sizeof(msg), "%s is required", what);
		return fleet_ops_usage(c, msg, NULL);
	}
	if (optind + 1 < argc)
		return fleet_ops_usage(c, "unexpected argument", argv[optind + 1]);
	if (!fleet_name_ok(argv[optind])) {
		char msg[64];

		snprintf(msg, sizeof(msg), "not a valid %s name:", what);
		return fleet_ops_usage(c, msg, argv[optind]);
	}
	a->operand = argv[optind];
	return 0;
}

/* ---- one migration ---- */

/*
 * The checks of `fleet migrate` against view v: 0, or -1 with why set.
 * *vmp: the VM (when found).
 */
static int fleet_migrate_check(struct fleet_view *v, const char *name, const char *to,
			       bool check_room, struct fleet_vm **vmp, char *why, size_t len)
{
	struct fleet_vm *vm = fleet_view_vm(v, name);
	struct fleet_host *h;
	const char *state, *phase, *mto;

	*vmp = vm;
	if (!vm || (!vm->has_spec && !vm->has_owner && !vm->status)) {
		snprintf(why, len, "no VM %s", name);
		return -1;
	}
	if (!vm->has_spec) {
		snprintf(why, len, "VM %s has no valid spec record", name);
		return -1;
	}
	if (!vm->has_owner) {
		snprintf(why, len, "VM %s has no valid owner record", name);
		return -1;
	}
	state = fleet_vm_state(v, vm);
	if (!strcmp(state, "down")) {
		snprintf(why, len, "%s is down: its host %s is not up", name, vm->owner.host);
		return -1;
	}
	if (fleet_vm_migrating(vm, &phase, &mto)) {
		snprintf(why, len, "%s is already migrating to %s (%s)", name, mto, phase);
		return -1;
	}
	if (vm->has_intent) {
		const char *op = "?";

		if (vm->intent)
			fleet_jstr(vm->intent, "op", &op);
		snprintf(why, len, "%s already has an intent (%s) its host has not taken up", name,
			 op);
		return -1;
	}
	if (strcmp(state, "running")) {
		snprintf(why, len, "%s is not running (state: %s)", name, state);
		return -1;
	}
	if (vm->status_host[0] && strcmp(vm->status_host, vm->owner.host)) {
		snprintf(why, len, "%s's status is from host %s, its owner is %s: wait for the "
			 "owner to report", name, vm->status_host, vm->owner.host);
		return -1;
	}
	h = fleet_view_host(v, to);
	if (!h || !h->up) {
		snprintf(why, len, "host %s is not up (no hosts/%s record)", to, to);
		return -1;
	}
	if (h->cordoned) {
		snprintf(why, len, "host %s is cordoned", to);
		return -1;
	}
	if (!strcmp(to, vm->owner.host)) {
		snprintf(why, len, "%s already runs on %s", name, to);
		return -1;
	}
	if (h->bad) {
		snprintf(why, len, "host %s's record is malformed: its capacity is unknown", to);
		return -1;
	}
	if (check_room) {
		struct place_host *ph;
		struct place_vm *pv;
		size_t npv;
		int r;

		if (fleet_place_arrays(v, &ph, &pv, &npv)) {
			snprintf(why, len, "out of memory");
			return -1;
		}
		r = place_check(&ph[h - v->h], name, vm->mem, vm->cpus, why, len);
		free(ph);
		free(pv);
		if (r)
			return -1;
	}
	return 0;
}

/* Unique across the intents this process writes: the time in ms, or one more. */
static int64_t fleet_intent_id(void)
{
	static int64_t last;
	int64_t now = fleet_now_ms();

	last = now > last ? now : last + 1;
	return last;
}

int fleet_migrate_start(struct fleet_ctx *c, const char *name, const char *to, bool with_disks,
			bool check_room, double timeout_s, struct fleet_follow *f, char *why,
			size_t len)
{
	char key_intent[FLEET_KEY_MAX], key_owner[FLEET_KEY_MAX], key_cordon[FLEET_KEY_MAX];
	char token[33], err[256] = "", *intent_s = NULL;
	unsigned char rnd[16];
	struct fleet_view v;
	struct fleet_vm *vm;
	json_t *intent;
	bool ok = false;
	int r, ret = 1;

	memset(f, 0, sizeof(*f));
	f->result = -1;
	if (fleet_load(c, &v, true)) {
		snprintf(why, len, "cannot read the fleet's records from etcd");
		return 1;
	}
	if (fleet_migrate_check(&v, name, to, check_room, &vm, why, len))
		goto out;
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
		snprintf(why, len, "getrandom: %s", strerror(errno));
		goto out;
	}
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(token + 2 * i, 3, "%02x", rnd[i]);
	snprintf(f->vm, sizeof(f->vm), "%s", name);
	snprintf(f->from, sizeof(f->from), "%s", vm->owner.host);
	snprintf(f->to, sizeof(f->to), "%s", to);
	f->epoch = vm->owner.epoch;
	snprintf(f->id, sizeof(f->id), "%" PRId64, fleet_intent_id());
	f->timeout_s = timeout_s;
	/* Records written after this read may be ours (one without an id: the revision says). */
	f->intent_rev = v.revision;
	/* The id is a string of digits: the agents carry it into the record as a string. */
	intent = json_pack("{s:s, s:s, s:s, s:s, s:b}", "op", "migrate", "to", to, "token", token,
			   "id", f->id, "with_disks", with_disks);
	intent_s = intent ? json_dumps(intent, JSON_COMPACT) : NULL;
	json_decref(intent);
	if (!intent_s) {
		snprintf(why, len, "out of memory");
		goto out;
	}
	fleet_key_vm(key_intent, sizeof(key_intent), name, "intent");
	fleet_key_vm(key_owner, sizeof(key_owner), name, "owner");
	fleet_key_cordon(key_cordon, sizeof(key_cordon), to);
	/* No intent, the owner we checked, and the destination still not cordoned. */
	const struct etcd_cmp cmp[] = {
		{ .key = key_intent, .target = ETCD_VERSION, .result = ETCD_EQ, .num = 0 },
		{ .key = key_owner, .target = ETCD_VALUE, .result = ETCD_EQ,
		  .value = vm->owner_raw },
		{ .key = key_cordon, .target = ETCD_VERSION, .result = ETCD_EQ, .num = 0 },
	};
	const struct etcd_op op = { .type = ETCD_OP_PUT, .key = key_intent, .value = intent_s };

	r = etcd_txn(c->e, cmp, ARRAY_SIZE(cmp), &op, 1, &ok, err, sizeof(err));
	if (r == -ECONNREFUSED) {
		snprintf(why, len, "etcd unreachable at %s: %s", c->urls,
			 strncmp(err, "etcd: ", 6) ? err : err + 6);
		goto out;
	}
	if (r == -ETIMEDOUT) {
		snprintf(why, len, "etcd did not answer in time writing the intent (%s): it may "
			 "have been written; see godwit fleet ls", err);
		goto out;
	}
	if (r) {
		snprintf(why, len, "writing the intent: etcd: %s", err);
		goto out;
	}
	if (!ok) {
		struct fleet_view v2;
		struct fleet_vm *vm2;

		/* Say what changed: the checks again, on what is there now. */
		snprintf(why, len, "%s changed while this command ran (an intent, its owner, or "
			 "host %s cordoned): see godwit fleet ls", name, to);
		if (!fleet_load(c, &v2, true)) {
			char why2[512];

			if (fleet_migrate_check(&v2, name, to, false, &vm2, why2, sizeof(why2)))
				snprintf(why, len, "%s", why2);
			fleet_view_free(&v2);
		}
		goto out;
	}
	clock_gettime(CLOCK_MONOTONIC, &f->t0);
	f->result = 0;
	ret = 0;
out:
	free(intent_s);
	fleet_view_free(&v);
	return ret;
}

void fleet_follow_free(struct fleet_follow *f)
{
	json_decref(f->migration);
	f->migration = NULL;
}

static double fleet_jnum(json_t *o, const char *a, const char *b)
{
	json_t *v = json_object_get(o, a);

	if (!json_is_number(v) && b)
		v = json_object_get(o, b);
	return json_is_number(v) ? json_number_value(v) : -1;
}

/*
 * Our migration's record?  Its id is ours (a string, or the same number), or
 * it has none (or "") and was written after our read.
 */
static bool fleet_follow_ours(const struct fleet_follow *f, const struct fleet_vm *vm)
{
	json_t *id;
	char num[24];

	if (!vm->migration)
		return false;
	id = json_object_get(vm->migration, "id");
	if (!fleet_id_set(id))
		return vm->migration_mod > f->intent_rev;
	if (json_is_string(id))
		return !strcmp(json_string_value(id), f->id);
	snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(id));
	return !strcmp(num, f->id);
}

static void fleet_follow_progress(struct fleet_follow *f, json_t *m)
{
	json_t *p = json_object_get(m, "progress");
	const char *phase = json_string_value(json_object_get(m, "phase"));
	char line[256];
	int n;

	n = snprintf(line, sizeof(line), "%s: %s -> %s: %s", f->vm, f->from, f->to,
		     phase ? phase : "?");
	if (json_is_object(p)) {
		double round = fleet_jnum(p, "round", "rounds");
		double sent = fleet_jnum(p, "bytes", "sent_bytes");
		double left = fleet_jnum(p, "remaining_bytes", "remaining");

		if (round >= 0 && n > 0 && (size_t)n < sizeof(line))
			n += snprintf(line + n, sizeof(line) - n, ", round %.0f", round);
		if (sent >= 0 && n > 0 && (size_t)n < sizeof(line))
			n += snprintf(line + n, sizeof(line) - n, ", sent %.1f MiB",
				      sent / (double)MiB);
		if (left >= 0 && n > 0 && (size_t)n < sizeof(line))
			snprintf(line + n, sizeof(line) - n, ", remaining %.1f MiB",
				 left / (double)MiB);
	}
	if (strcmp(line, f->last)) {
		snprintf(f->last, sizeof(f->last), "%s", line);
		fprintf(stderr, "%s\n", line);
	}
}

void fleet_follow_poll(struct fleet_ctx *c, struct fleet_follow *f)
{
	struct fleet_vm vm;
	char err[512];
	bool found;

	if (f->result)
		return;
	f->ms = ms_since(&f->t0);
	if (fleet_load_vm(c, f->vm, &vm, &found, err, sizeof(err))) {
		/* etcd did not answer: say it once, and try again until the timeout. */
		if (!f->etcd_failed++)
			fprintf(stderr, "godwit: %s: %s: %s (still trying)\n", c->who, f->vm, err);
	} else if (!found) {
		snprintf(f->error, sizeof(f->error), "%s was removed during its migration", f->vm);
		f->result = -1;
		return;
	}
	if (vm.owner_raw[0])
		snprintf(f->owner, sizeof(f->owner), "%s", vm.owner_raw);
	if (fleet_follow_ours(f, &vm)) {
		const char *phase = json_string_value(json_object_get(vm.migration, "phase"));

		json_decref(f->migration);
		f->migration = json_incref(vm.migration);
		if (f->progress)
			fleet_follow_progress(f, vm.migration);
		if (!strcmp(phase, "done")) {
			if (vm.has_owner && !strcmp(vm.owner.host, f->to) &&
			    vm.owner.epoch == f->epoch + 1) {
				json_t *ep = vm.status ? json_object_get(vm.status, "epoch") : NULL;

				/*
				 * Moved; done once the new host's agent says it runs there,
				 * so what `fleet ls` shows next is where the VM is.
				 */
				f->moved = true;
				if (vm.status && !strcmp(vm.status_host, f->to) &&
				    !strcmp(vm.state, "running") && json_is_integer(ep) &&
				    json_integer_value(ep) == (json_int_t)(f->epoch + 1))
					f->result = 1;
			} else {
				snprintf(f->error, sizeof(f->error), "its migration record says done "
					 "but its owner is \"%s\", not \"%s %" PRIu64 "\"",
					 vm.owner_raw, f->to, f->epoch + 1);
				f->result = -1;
			}
		} else if (!strcmp(phase, "failed")) {
			const char *e = json_string_value(json_object_get(vm.migration, "error"));

			snprintf(f->error, sizeof(f->error), "migration failed: %s",
				 e && *e ? e : "(no error given)");
			f->result = -1;
		}
	}
	if (!f->result && f->ms > f->timeout_s * 1000) {
		const char *phase = f->migration ?
			json_string_value(json_object_get(f->migration, "phase")) : NULL;

		if (f->moved)
			snprintf(f->error, sizeof(f->error), "the VM moved (owner \"%s\"), but %s "
				 "has not reported it running within %.0f s: see godwit fleet ls",
				 f->owner, f->to, f->timeout_s);
		else
			snprintf(f->error, sizeof(f->error), "the migration did not end within %.0f s "
				 "(%s%s); it may still end either way: see godwit fleet ls",
				 f->timeout_s, phase ? "phase " : "the host's agent has not reported it",
				 phase ? phase : "");
		f->result = -1;
	}
	fleet_vm_free(&vm);
}

int fleet_cmd_migrate(struct fleet_ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
		FLEET_OPS_COMMON,
		{ "to",         required_argument, NULL, FO2_TO },
		{ "with-disks", no_argument,       NULL, FO2_WITH_DISKS },
		{ "timeout",    required_argument, NULL, FO2_TIMEOUT },
		{ NULL, 0, NULL, 0 },
	};
	struct fleet_ops_args a;
	struct fleet_follow f;
	char why[512];
	int r = fleet_ops_parse(c, argc, argv, migrate_usage, "VM", opts, &a);

	if (r)
		return r < 0 ? 0 : r;
	if (!a.to)
		return fleet_ops_usage(c, "--to HOST is required", NULL);
	if (!fleet_name_ok(a.to))
		return fleet_ops_usage(c, "--to: not a valid host name:", a.to);
	if (fleet_connect(c))
		return 1;
	if (fleet_migrate_start(c, a.operand, a.to, a.with_disks, true, a.timeout_s, &f, why,
				sizeof(why))) {
		fleet_err(c, "%s", why);
		return 1;
	}
	f.progress = !c->quiet;
	if (!c->quiet)
		fprintf(stderr, "%s: migration %s from %s to %s requested\n", f.vm, f.id,
			f.from, f.to);
	for (;;) {
		fleet_follow_poll(c, &f);
		if (f.result)
			break;
		fleet_sleep_ms(FLEET_POLL_MS);
	}
	if (c->json) {
		json_t *o = json_pack("{s:s, s:b, s:f, s:s, s:O?}", "vm", f.vm, "ok", f.result > 0,
				      "ms", f.ms, "owner", f.owner, "migration", f.migration);

		if (o && f.result < 0)
			json_object_set_new(o, "error", json_string(f.error));
		fleet_json_print(o);
		json_decref(o);
	} else if (f.result > 0) {
		printf("%s: %s -> %s in %.0f ms (owner \"%s\")\n", f.vm, f.from, f.to, f.ms,
		       f.owner);
	}
	if (f.result < 0)
		fleet_err(c, "%s: %s", f.vm, f.error);
	r = f.result > 0 ? 0 : 1;
	fleet_follow_free(&f);
	return r;
}

/* ---- several migrations: drain, rebalance ---- */

struct fleet_job {
	char vm[FLEET_NAME_MAX], from[FLEET_NAME_MAX], to[FLEET_NAME_MAX];
	int state;               /* 0 waiting, 1 running, 2 ended */
	bool ok;
	char error[512];
	double ms;
	struct fleet_follow f;
};

/* One finished job's line: stdout, or stderr beside --json (unless -q). */
static void fleet_job_line(struct fleet_ctx *c, const struct fleet_job *j)
{
	FILE *out = c->json ? stderr : stdout;

	if (c->json && c->quiet)
		return;
	if (j->ok)
		fprintf(out, "%s: %s -> %s in %.0f ms\n", j->vm, j->from, j->to, j->ms);
	else
		fprintf(out, "%s: stays on %s: %s\n", j->vm, j->from, j->error);
	fflush(out);
}

/* Run the jobs, parallel at a time, each followed until it ends.  The plan checked room. */
static void fleet_run_jobs(struct fleet_ctx *c, struct fleet_job *jobs, size_t n, long parallel,
			   double timeout_s)
{
	size_t ended = 0;

	for (size_t i = 0; i < n; i++)
		if (jobs[i].state == 2)
			ended++;
	while (ended < n) {
		long running = 0;

		for (size_t i = 0; i < n; i++)
			running += jobs[i].state == 1;
		for (size_t i = 0; i < n && running < parallel; i++) {
			struct fleet_job *j = &jobs[i];

			if (j->state)
				continue;
			if (fleet_migrate_start(c, j->vm, j->to, false, false, timeout_s, &j->f,
						j->error, sizeof(j->error))) {
				j->state = 2;
				ended++;
				fleet_job_line(c, j);
				continue;
			}
			j->state = 1;
			running++;
		}
		if (ended == n)
			break;
		fleet_sleep_ms(FLEET_POLL_MS);
		for (size_t i = 0; i < n; i++) {
			struct fleet_job *j = &jobs[i];

			if (j->state != 1)
				continue;
			fleet_follow_poll(c, &j->f);
			if (!j->f.result)
				continue;
			j->state = 2;
			j->ok = j->f.result > 0;
			j->ms = j->f.ms;
			if (!j->ok)
				snprintf(j->error, sizeof(j->error), "%s", j->f.error);
			fleet_follow_free(&j->f);
			ended++;
			fleet_job_line(c, j);
		}
	}
}

/* moved: [{vm, from, to, ms}], stayed: [{vm, error}] into o. */
static void fleet_jobs_json(json_t *o, const struct fleet_job *jobs, size_t n)
{
	json_t *moved = json_array(), *stayed = json_array();

	for (size_t i = 0; i < n; i++) {
		if (jobs[i].ok)
			json_array_append_new(moved, json_pack("{s:s, s:s, s:s, s:I}", "vm",
				jobs[i].vm, "from", jobs[i].from, "to", jobs[i].to,
				"ms", (json_int_t)jobs[i].ms));
		else
			json_array_append_new(stayed, json_pack("{s:s, s:s}", "vm", jobs[i].vm,
				"error", jobs[i].error));
	}
	json_object_set_new(o, "moved", moved);
	json_object_set_new(o, "stayed", stayed);
}

int fleet_cmd_drain(struct fleet_ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
		FLEET_OPS_COMMON,
		{ "parallel", required_argument, NULL, FO2_PARALLEL },
		{ "timeout",  required_argument, NULL, FO2_TIMEOUT },
		{ NULL, 0, NULL, 0 },
	};
	struct fleet_ops_args a;
	struct fleet_view v;
	struct place_host *ph = NULL;
	struct place_vm *pv = NULL, *mv = NULL;
	struct place_move *moves = NULL;
	struct fleet_job *jobs = NULL;
	json_t *skipped = json_array();
	char key[FLEET_KEY_MAX], err[256];
	size_t npv, nm = 0, nj = 0, left = 0;
	int r = fleet_ops_parse(c, argc, argv, drain_usage, "HOST", opts, &a), ret = 1, from;

	if (r) {
		json_decref(skipped);
		return r < 0 ? 0 : r;
	}
	const char *host = a.operand;

	if (fleet_connect(c))
		goto out_nov;
	/* Cordon first: nothing new lands on it while it drains. */
	fleet_key_cordon(key, sizeof(key), host);
	r = etcd_put(c->e, key, "1", 0, err, sizeof(err));
	if (r) {
		fleet_etcd_err(c, "writing cordon/", r, err);
		goto out_nov;
	}
	if (!c->json)
		printf("host %s cordoned\n", host);
	if (fleet_load(c, &v, false))
		goto out_nov;
	if (fleet_place_arrays(&v, &ph, &pv, &npv))
		goto oom;
	mv = calloc(v.nv ? v.nv : 1, sizeof(*mv));
	jobs = calloc(v.nv ? v.nv : 1, sizeof(*jobs));
	moves = calloc(v.nv ? v.nv : 1, sizeof(*moves));
	if (!mv || !jobs || !moves)
		goto oom;
	from = place_host_find(ph, v.nh, host);
	/* Its VMs: the running ones move; the others stay (said) or are skipped (not running). */
	for (size_t i = 0; i < v.nv; i++) {
		struct fleet_vm *vm = &v.v[i];
		const char *state = fleet_vm_state(&v, vm), *phase, *to;
		struct fleet_job *j;

		if (!vm->has_owner || strcmp(vm->owner.host, host))
			continue;
		if (!strcmp(state, "stopped") || !strcmp(state, "failed")) {
			json_array_append_new(skipped, json_pack("{s:s, s:s}", "vm", vm->name,
								  "state", state));
			if (!c->json)
				printf("%s: skipped: %s (it does not run, it stays on %s)\n",
				       vm->name, state, host);
			continue;
		}
		j = &jobs[nj++];
		snprintf(j->vm, sizeof(j->vm), "%s", vm->name);
		snprintf(j->from, sizeof(j->from), "%s", host);
		j->state = 2;           /* unless it is planned below */
		if (!strcmp(state, "down"))
			snprintf(j->error, sizeof(j->error), "it is down: host %s is not up", host);
		else if (fleet_vm_migrating(vm, &phase, &to))
			snprintf(j->error, sizeof(j->error), "already migrating to %s (%s)", to,
				 phase);
		else if (vm->has_intent)
			snprintf(j->error, sizeof(j->error), "it has an intent its host has not "
				 "taken up yet");
		else if (strcmp(state, "running"))
			snprintf(j->error, sizeof(j->error), "not running (state: %s)", state);
		else if (!vm->has_spec)
			snprintf(j->error, sizeof(j->error), "no valid spec record");
		else {
			struct place_vm *p = &mv[nm++];

			snprintf(p->name, sizeof(p->name), "%s", vm->name);
			snprintf(p->host, sizeof(p->host), "%s", host);
			p->mem = vm->mem;
			p->cpus = vm->cpus;
			j->state = 0;
		}
	}
	/* Plan (the host is cordoned now, whatever the view read). */
	if (from >= 0)
		ph[from].cordoned = true;
	place_drain(ph, v.nh, from, mv, nm, moves);
	for (size_t k = 0, m = 0; k < nj; k++) {
		struct fleet_job *j = &jobs[k];

		if (j->state == 2) {
			fleet_job_line(c, j);
			continue;
		}
		if (moves[m].to < 0) {
			snprintf(j->error, sizeof(j->error), "%s", moves[m].why);
			j->state = 2;
			fleet_job_line(c, j);
		} else {
			snprintf(j->to, sizeof(j->to), "%s", ph[moves[m].to].name);
		}
		m++;
	}
	fleet_run_jobs(c, jobs, nj, a.parallel, a.timeout_s);
	for (size_t k = 0; k < nj; k++)
		left += !jobs[k].ok;
	if (c->json) {
		json_t *o = json_pack("{s:s}", "host", host);

		if (o) {
			fleet_jobs_json(o, jobs, nj);
			json_object_set(o, "skipped", skipped);
		}
		fleet_json_print(o);
		json_decref(o);
	} else if (!nj) {
		printf("host %s runs no VM\n", host);
	} else if (!left) {
		printf("host %s drained: %zu VM%s moved\n", host, nj, nj == 1 ? "" : "s");
	}
	if (left) {
		fprintf(stderr, "godwit: %s: %zu VM%s stayed on %s:", c->who, left,
			left == 1 ? "" : "s", host);
		for (size_t k = 0; k < nj; k++)
			if (!jobs[k].ok)
				fprintf(stderr, " %s", jobs[k].vm);
		fputc('\n', stderr);
	}
	ret = left ? 1 : 0;
	goto out;
oom:
	fleet_err(c, "out of memory");
out:
	fleet_view_free(&v);
out_nov:
	free(ph);
	free(pv);
	free(mv);
	free(moves);
	free(jobs);
	json_decref(skipped);
	return ret;
}

int fleet_cmd_rebalance(struct fleet_ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
		FLEET_OPS_COMMON,
		{ "max-moves", required_argument, NULL, FO2_MAX_MOVES },
		{ "dry-run",   no_argument,       NULL, FO2_DRY_RUN },
		{ "parallel",  required_argument, NULL, FO2_PARALLEL },
		{ "timeout",   required_argument, NULL, FO2_TIMEOUT },
		{ NULL, 0, NULL, 0 },
	};
	struct fleet_ops_args a;
	struct fleet_view v;
	struct place_host *ph = NULL;
	struct place_vm *pv = NULL, *mv = NULL;
	struct place_move *moves = NULL;
	struct fleet_job *jobs = NULL;
	size_t npv, nmv = 0, n, left = 0;
	double before, after;
	int r = fleet_ops_parse(c, argc, argv, rebalance_usage, NULL, opts, &a), ret = 1;

	if (r)
		return r < 0 ? 0 : r;
	if (fleet_load(c, &v, false))
		return 1;
	if (fleet_place_arrays(&v, &ph, &pv, &npv))
		goto oom;
	mv = calloc(v.nv ? v.nv : 1, sizeof(*mv));
	moves = calloc((size_t)a.max_moves + 1, sizeof(*moves));
	jobs = calloc((size_t)a.max_moves + 1, sizeof(*jobs));
	if (!mv || !moves || !jobs)
		goto oom;
	/* The VMs that may move: running where their owner says, nothing in flight. */
	for (size_t i = 0; i < v.nv; i++) {
		struct fleet_vm *vm = &v.v[i];
		const char *phase, *to;

		if (!vm->has_spec || !vm->has_owner || vm->has_intent ||
		    strcmp(fleet_vm_state(&v, vm), "running") ||
		    (vm->status_host[0] && strcmp(vm->status_host, vm->owner.host)) ||
		    fleet_vm_migrating(vm, &phase, &to))
			continue;
		snprintf(mv[nmv].name, sizeof(mv[nmv].name), "%s", vm->name);
		snprintf(mv[nmv].host, sizeof(mv[nmv].host), "%s", vm->owner.host);
		mv[nmv].mem = vm->mem;
		mv[nmv].cpus = vm->cpus;
		nmv++;
	}
	before = place_spread(ph, v.nh);
	n = place_rebalance(ph, v.nh, mv, nmv, (size_t)a.max_moves, moves);
	after = place_spread(ph, v.nh);
	if (a.dry_run || !n) {
		if (c->json) {
			json_t *o = json_pack("{s:b, s:[], s:f, s:f}", "dry_run", a.dry_run,
					      "moves", "spread_before", before, "spread_after", after);
			json_t *arr = json_object_get(o, "moves");

			for (size_t i = 0; i < n; i++)
				json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:I}", "vm",
					mv[moves[i].vm].name, "from", ph[moves[i].from].name,
					"to", ph[moves[i].to].name,
					"mem", (json_int_t)mv[moves[i].vm].mem));
			fleet_json_print(o);
			json_decref(o);
		} else if (!n) {
			printf("nothing to move: no move reduces the spread of memory use "
			       "(%.1f%%)\n", before * 100);
		} else {
			for (size_t i = 0; i < n; i++)
				printf("move %s from %s to %s\n", mv[moves[i].vm].name,
				       ph[moves[i].from].name, ph[moves[i].to].name);
			printf("spread of memory use: %.1f%% -> %.1f%%\n", before * 100,
			       after * 100);
		}
		ret = 0;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		snprintf(jobs[i].vm, sizeof(jobs[i].vm), "%s", mv[moves[i].vm].name);
		snprintf(jobs[i].from, sizeof(jobs[i].from), "%s", ph[moves[i].from].name);
		snprintf(jobs[i].to, sizeof(jobs[i].to), "%s", ph[moves[i].to].name);
	}
	if (!c->json && !c->quiet)
		fprintf(stderr, "rebalance: %zu move%s planned, spread of memory use %.1f%% -> "
			"%.1f%%\n", n, n == 1 ? "" : "s", before * 100, after * 100);
	fleet_run_jobs(c, jobs, n, a.parallel, a.timeout_s);
	for (size_t k = 0; k < n; k++)
		left += !jobs[k].ok;
	if (c->json) {
		json_t *o = json_pack("{s:b, s:f, s:f}", "dry_run", 0, "spread_before", before,
				      "spread_planned", after);

		if (o)
			fleet_jobs_json(o, jobs, n);
		fleet_json_print(o);
		json_decref(o);
	}
	if (left)
		fleet_err(c, "%zu of %zu moves failed", left, n);
	ret = left ? 1 : 0;
	goto out;
oom:
	fleet_err(c, "out of memory");
out:
	free(ph);
	free(pv);
	free(mv);
	free(moves);
	free(jobs);
	fleet_view_free(&v);
	return ret;
}
