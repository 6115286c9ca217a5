/*
 * fleet.h - what the parts of `godwit fleet` share (internal to src/cmd):
 * the context (etcd client, output options), the fleet's records read from
 * etcd and validated (a view), the run options a VM's spec carries, and
 * following a migration through its record.
 *
 *   fleet.c       dispatch, global options, hosts, ls, create, stop, rm,
 *                 cordon, uncordon; loading and validating the records
 *   fleet_ops.c   migrate, drain, rebalance: starting migrations (intents)
 *                 and following them
 *   fleet_args.c  the godwit run options of `fleet create` (pure, unit-tested)
 */
#ifndef GODWIT_CMD_FLEET_H
#define GODWIT_CMD_FLEET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>

#include "godwit/etcd.h"
#include "godwit/fleet.h"
#include "godwit/place.h"

#define FLEET_DEFAULT_ETCD   "http://127.0.0.1:2379"
#define FLEET_POLL_MS        200
#define FLEET_WAIT_S         30      /* create/stop: wait for the agent's status */
#define FLEET_MIGRATE_S      300     /* migrate/drain/rebalance: per migration */

struct fleet_ctx {
	const char *who;         /* "fleet create", for messages */
	const char *urls;        /* --etcd */
	const char *tls_dir;
	bool json, quiet;
	struct etcd *e;
};

/* One host: from hosts/H (up) and cordon/H, or named only by VMs' owners (lost). */
struct fleet_host {
	char name[FLEET_NAME_MAX];
	bool up, cordoned, bad;
	char addr[128];
	uint64_t mem_capacity;
	uint32_t cpu_capacity;
};

/* One VM: its records, each validated (a malformed one is reported and left out). */
struct fleet_vm {
	char name[FLEET_NAME_MAX];
	bool has_spec;           /* spec present and valid */
	uint64_t mem;
	uint32_t cpus;
	json_t *spec;
	bool has_owner;
	struct fleet_owner owner;
	char owner_raw[FLEET_OWNER_MAX];
	json_t *status;          /* valid status, or NULL */
	const char *state;       /* status's state ("" without one) */
	const char *status_host; /* "" if absent */
	int64_t status_mod;      /* 0: no status key */
	json_t *intent;          /* valid intent, or NULL */
	bool has_intent;         /* the key exists (even malformed): a new intent is refused */
	int64_t intent_mod;
	json_t *migration;       /* valid migration record, or NULL */
	int64_t migration_mod;
	char **keys;             /* every key under vms/V/ (rm deletes them) */
	size_t nkeys;
};

struct fleet_view {
	struct fleet_host *h;
	size_t nh;
	struct fleet_vm *v;
	size_t nv;
	int64_t revision;
};

/* Messages: "godwit: fleet SUB: ..." on stderr. */
void fleet_err(const struct fleet_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* An etcd call's failure: "etcd unreachable at URLS: ..." and the like.  Returns 1. */
int fleet_etcd_err(const struct fleet_ctx *c, const char *what, int r, const char *err);

/* Read everything under /godwit/ (quiet: do not report malformed records).  0, or 1 said. */
int fleet_load(struct fleet_ctx *c, struct fleet_view *v, bool quiet);
/*
 * The same from records already read (a range of /godwit/, e.g. by godwitd's
 * page, src/agent/web_json.c): keys outside /godwit/ are skipped.  0, or 1
 * (out of memory, said).
 */
int fleet_view_from_kvs(struct fleet_ctx *c, const struct etcd_kvs *kvs, struct fleet_view *v,
			bool quiet);
/* What `fleet hosts --json` prints: one object per host of the view; NULL: no memory. */
json_t *fleet_hosts_json(struct fleet_view *v);
/* What `fleet ls --json` prints for one VM (a row). */
json_t *fleet_vm_json(struct fleet_view *v, const struct fleet_vm *vm);
/*
 * Read one VM's records (vms/V/) into vm (zeroed first; nothing there: *found
 * false).  0, or 1 with etcd's failure in err (not printed: pollers say it once).
 */
int fleet_load_vm(struct fleet_ctx *c, const char *name, struct fleet_vm *vm, bool *found,
		  char *err, size_t len);
void fleet_view_free(struct fleet_view *v);
void fleet_vm_free(struct fleet_vm *vm);
struct fleet_host *fleet_view_host(struct fleet_view *v, const char *name);
struct fleet_vm *fleet_view_vm(struct fleet_view *v, const char *name);
/* The state `ls` shows: "down" when the owner has no hosts/H key, else status's state. */
const char *fleet_vm_state(struct fleet_view *v, const struct fleet_vm *vm);
/*
 * Placement arrays for the view: every host, and every VM with a spec and
 * an owner (usage computed from them: place_usage).  0, or -ENOMEM.
 */
int fleet_place_arrays(struct fleet_view *v, struct place_host **ph, struct place_vm **pv,
		       size_t *npv);
/* A migration's id (in an intent or a record) is given: a number or a non-empty string. */
bool fleet_id_set(json_t *id);
/* A migration in flight, for ls: phase and destination; false if none. */
bool fleet_vm_migrating(const struct fleet_vm *vm, const char **phase, const char **to);

/* A member that is absent or null (*out "") or a string: 0; -1 if not a string. */
int fleet_jstr(json_t *o, const char *k, const char **out);
/* JSON out: one value, compact, on stdout. */
void fleet_json_print(json_t *j);
/* Milliseconds since the epoch (CLOCK_REALTIME). */
int64_t fleet_now_ms(void);
void fleet_sleep_ms(int ms);

/* An aligned text table. */
struct fleet_table {
	size_t ncol, nrows, cap;
	char **cells;
};
void fleet_table_init(struct fleet_table *t, size_t ncol);
/* ncol strings (NULL prints "-"). */
void fleet_table_add(struct fleet_table *t, ...);
void fleet_table_print(struct fleet_table *t);

/*
 * fleet_run_args - the godwit run options a VM is created with (argv[0..argc),
 * without a program name): mem and cpus as godwit run reads them (defaults
 * 512M and 1, mem rounded up to 2 MiB as godwit run does); refuses the
 * options the agent sets (--api, --name, --incoming and its companions),
 * --help, arguments that are not options, unknown options, and a missing
 * --kernel.  0, or -EINVAL with err set.
 */
int fleet_run_args(int argc, char **argv, uint64_t *mem, uint32_t *cpus, char *err, size_t len);

/* Following one migration (fleet_ops.c). */
struct fleet_follow {
	char vm[FLEET_NAME_MAX], from[FLEET_NAME_MAX], to[FLEET_NAME_MAX];
	uint64_t epoch;          /* the owner's epoch when it started */
	char id[24];             /* the intent's id: the time in ms, unique (a decimal string) */
	int64_t intent_rev;      /* the revision of our intent: records older are not ours */
	struct timespec t0;
	double timeout_s;
	int result;              /* 0 going, 1 done (owner moved), -1 failed or timed out */
	char error[512];
	json_t *migration;       /* the last record of ours seen */
	char owner[FLEET_OWNER_MAX];
	char last[256];          /* the last progress line printed */
	bool progress;           /* print progress lines (stderr) */
	unsigned int etcd_failed; /* polls etcd did not answer (said once) */
	bool moved;              /* record done, owner moved: waiting for the new host's status */
	double ms;               /* how long it took */
};

/*
 * fleet_migrate_start - check that vm may move to host to (checks as
 * `fleet migrate`; capacity only if check_room) and write its intent with
 * one transaction; f is set up to follow it.  0, or 1 with why set.
 */
int fleet_migrate_start(struct fleet_ctx *c, const char *vm, const char *to, bool with_disks,
			bool check_room, double timeout_s, struct fleet_follow *f, char *why,
			size_t len);
/* One look at the migration's record: f->result is set once it ended. */
void fleet_follow_poll(struct fleet_ctx *c, struct fleet_follow *f);
void fleet_follow_free(struct fleet_follow *f);

int fleet_cmd_migrate(struct fleet_ctx *c, int argc, char **argv);
int fleet_cmd_drain(struct fleet_ctx *c, int argc, char **argv);
int fleet_cmd_rebalance(struct fleet_ctx *c, int argc, char **argv);

/* Connect (etcd_open) once the options are known.  0, or 1 said. */
int fleet_connect(struct fleet_ctx *c);

#endif
