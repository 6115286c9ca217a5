/*
 * agent.h - godwitd, the per-host agent (docs/fleet.md): what its files
 * share.  main.c parses the options; host.c registers the host under its
 * lease and fences the VMs when etcd is lost; agent.c is the reconcile loop;
 * vms.c starts, adopts and watches the VM processes; migrate.c runs a
 * migration's source side; peer.c the agents' protocol (the destination
 * side); http.c the local UNIX socket; web.c the fleet's page (--web), from
 * what web_json.c builds.
 *
 * Locking: struct agent's mutex guards the VM table (vms[]), the lease
 * fields and the fenced flag.  No etcd request and no API request is made
 * with it held: callers copy what they need first.
 */
#ifndef GODWIT_AGENT_H
#define GODWIT_AGENT_H

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "godwit/common.h"
#include "godwit/fleet.h"

#define AGENT_MAX_VMS        128
#define AGENT_MAX_MAPS       16
#define AGENT_MAX_MIGRATIONS 2           /* outgoing migrations in flight at once */
#define AGENT_ADDR_MAX       128
#define AGENT_STATE_MAX      16
#define AGENT_ERR_MAX        512
#define AGENT_LINE_MAX       (64 * 1024) /* one request or reply of the agents' protocol */
#define AGENT_TICK_MS        300
#define AGENT_TOKEN_MAX      256         /* a migration intent's token and id, NUL included */
#define AGENT_VERSION        "0.1.0"

struct etcd;

struct agent_map {
	char from[PATH_MAX / 4], to[PATH_MAX / 4];
};

/* One VM process this agent runs (or is bringing in). */
struct agent_vm {
	bool used;
	char name[FLEET_NAME_MAX];
	pid_t pid;
	bool child;              /* ours to waitpid(); false: adopted */
	uint64_t epoch;          /* the owner epoch it runs at (incoming: E+1) */
	char state[AGENT_STATE_MAX];  /* starting, running, migrating, paused, in-doubt, incoming */
	bool fenced;             /* SIGSTOPped by rule 5 */
	bool busy;               /* a worker (migration, stop) acts on it */
	bool incoming;           /* the destination of a migration, not running yet */
	char from[FLEET_NAME_MAX];    /* incoming: the source host */
	uint64_t mem;            /* bytes, from the spec */
	unsigned int cpus;
	char api[PATH_MAX / 2];
	char console[PATH_MAX / 2];
	char dir[PATH_MAX / 2];
	bool status_written;     /* its status record matches state */
	int exit_status;         /* -1 until it exited; then wait status, or -2: unknown */
	uint64_t left_ms;        /* when it became "migrated" (agent_now_ms) */
	uint64_t next_poll_ms;   /* incoming: do not ask its API before this */
	/*
	 * The token of the last migrate intent a worker finished here: the loop
	 * may still hold a snapshot of /godwit/vms/ read before the worker
	 * deleted that intent, and must not start it a second time.
	 */
	char done_token[256];
};

struct agent {
	/* options */
	const char *host;
	const char *etcd_urls;
	const char *etcd_tls_dir;
	const char *state_dir;
	char listen[AGENT_ADDR_MAX];  /* HOST:PORT */
	char listen_host[AGENT_ADDR_MAX];
	unsigned int listen_port;
	const char *tls_dir;
	bool insecure;
	const char *web;              /* --web HOST:PORT, or NULL */
	uint64_t mem_capacity;
	unsigned int cpu_capacity;
	char godwit[PATH_MAX];
	char socket[PATH_MAX];
	int lease_ttl;
	struct agent_map maps[AGENT_MAX_MAPS];
	unsigned int nr_maps;
	unsigned int port_lo, port_hi;
	char started[32];

	pthread_mutex_t lock;
	struct agent_vm vms[AGENT_MAX_VMS];
	int64_t lease;
	bool fenced;
	bool registered;
	bool handover;           /* a new lease: the VMs' guards must be given it */
	int migrations;          /* outgoing in flight */
	volatile sig_atomic_t stop;

	/* For GET /metrics (http.c): STAT_ADD by the threads that see them. */
	_Atomic uint64_t lease_ok_ms;       /* the last keep-alive etcd answered (agent_now_ms) */
	_Atomic uint64_t n_mig_started, n_mig_completed, n_mig_failed, n_mig_aborted;
	_Atomic uint64_t n_reconcile, reconcile_us;   /* loop iterations, and their time */
};

/* ---- main.c ---- */
void agent_now_iso(char *buf, size_t len);
/* snprintf for paths: 0, or -ENAMETOOLONG if it did not fit. */
int agent_path(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
uint64_t agent_now_ms(void);
void agent_sleep_ms(unsigned int ms);
/* A client of the fleet's etcd for the calling thread (each thread has its own). */
int agent_etcd_open(struct agent *a, int timeout_ms, struct etcd **out);

/* ---- host.c ---- */
/*
 * The VMs' host lease guard (godwit run --fleet-etcd URLS --fleet-lease ID):
 * the options to add, in args[0..3] (pointing into a and lease_buf), or 0 when
 * the guard cannot be used (etcd over https, no lease yet).  Lock not held.
 */
int host_guard_args(struct agent *a, const char **args, char *lease_buf, size_t len);
/* Grant or reuse the lease and register; 0 or -errno. */
int host_register(struct agent *a, struct etcd *e);
/* Rewrite /godwit/hosts/NAME with the current use. */
int host_refresh(struct agent *a, struct etcd *e);
/* This host's record (the JSON put in etcd), for http.c. */
json_t *host_record(struct agent *a);
/* The lease thread: keep-alive and rule 5. */
void *host_lease_thread(void *opaque);

/* ---- vms.c ---- */
/* Find by name (lock held); NULL if none. */
struct agent_vm *vms_find(struct agent *a, const char *name);
/* A free slot, filled with name, dir, api and console paths (lock held). */
struct agent_vm *vms_new(struct agent *a, const char *name);
/* Rewrite spec args with --map-path into a NULL-terminated argv (free with vms_argv_free). */
int vms_build_argv(struct agent *a, const char *vm, json_t *spec, const char *const *pre,
		   size_t npre, char ***out, char *err, size_t len);
void vms_argv_free(char **argv);
/* Start `godwit ARGV` for vm in its own session, console to its dir; *pid. */
int vms_spawn(struct agent *a, const char *vm, char **argv, pid_t *pid, char *err, size_t len);
/* Cold start of vm at epoch (owner already names this host at it). */
int vms_start(struct agent *a, struct etcd *e, const char *vm, json_t *spec, uint64_t epoch);
/* Adopt the VMs left by a previous agent in the state dir. */
void vms_adopt_all(struct agent *a);
/* Reap children and notice adopted processes gone: mark exit_status. */
void vms_reap(struct agent *a);
/* The last lines of a console log, for an error. */
void vms_console_tail(const char *path, char *buf, size_t len);
/* Write vm's status record; extra (may be NULL) is merged.  0 or -errno. */
int vms_put_status(struct agent *a, struct etcd *e, const char *vm, uint64_t epoch,
		   const char *state, pid_t pid, const char *error);
/* DIR/vms/VM/{pid,epoch,spec.json}, for adoption. */
void vms_write_files(const char *dir, pid_t pid, uint64_t epoch, json_t *spec);
/* Write DIR/NAME (atomically); 0 or -errno. */
int vms_write_file(const char *dir, const char *name, const char *text);
/* Rule 5 before the agent could register (etcd out at start-up): stop the VMs now. */
void host_fence_now(struct agent *a);
/* Remove vm's state dir (files we wrote and the console). */
void vms_remove_dir(struct agent *a, const char *vm);
/* SIGSTOP/SIGCONT/SIGKILL, checked against /proc that pid is still that VM. */
int vms_signal(struct agent_vm *v, int sig);
bool vms_alive(pid_t pid, const char *api);
/* Sum of the spec sizes of the VMs run here. */
void vms_usage(struct agent *a, uint64_t *mem, unsigned int *cpus, unsigned int *n);

/* ---- agent.c ---- */
void agent_loop(struct agent *a);
/* Settle a source VM stopped at the commit gate or in doubt (rules 2-4), in etcd; the
 * VMM's migration status st.  0 once settled, -EAGAIN to retry later. */
int agent_settle_source(struct agent *a, struct etcd *e, const char *vm, const char *api,
			uint64_t epoch, const char *st, bool dest_refused);

/*
 * If veto/E exists (an earlier migration at E was given up), move the owner
 * "HOST E" -> "HOST E+1" (this host keeps the VM): a new migration's COMMIT
 * at E could never succeed.  0 (*epoch updated if moved) or -errno.
 */
int agent_bump_epoch(struct agent *a, struct etcd *e, const char *vm, uint64_t *epoch);

/* ---- migrate.c ---- */
/* Start the outgoing migration of vm (intent in j) in a worker thread; 0 or -EBUSY. */
int migrate_spawn(struct agent *a, const char *vm, uint64_t epoch, json_t *intent);
/* A migration intent (/godwit/vms/VM/intent, op "migrate") read as migrate_spawn takes it. */
struct agent_intent {
	char to[FLEET_NAME_MAX];          /* "?" if not a host name */
	char token[AGENT_TOKEN_MAX];      /* "" if missing or too long */
	char id[AGENT_TOKEN_MAX];
	json_t *with_disks;               /* NULL, true or a string (a reference: json_decref) */
	json_int_t max_bandwidth, downtime_ms;  /* 0: the VMM's default */
	char bad[AGENT_ERR_MAX];          /* "" or why the intent is invalid (then no with_disks) */
};
/* Check intent for a migration from host (pure: no etcd, no lock). */
void migrate_parse_intent(const char *host, json_t *intent, struct agent_intent *mi);
/* JSON of the API, or NULL: GET/PUT on the VM's socket (messages logged). */
json_t *agent_api(const char *api, const char *method, const char *path, const char *body,
		  long timeout_ms);
/* "tls": {ca, cert, key, peer} from --tls-dir, or NULL. */
json_t *agent_tls_json(struct agent *a, const char *peer);

/* ---- peer.c ---- */
/*
 * One line of the agents' protocol as received: n bytes that hold a newline (what
 * follows it is ignored; a NUL anywhere refuses it), parsed: 0 and *out a JSON
 * object, or -EBADMSG with err.
 */
int peer_parse_line(const char *buf, size_t n, json_t **out, char *err, size_t len);
/* Strict checks of a prepare request received by host; 0 or -EINVAL with err. */
int peer_check_request(const char *host, json_t *req, char *err, size_t len);
int peer_start(struct agent *a);
void peer_stop(struct agent *a);
/* The destination side of incoming VMs: called by the loop for each. */
void peer_watch_incoming(struct agent *a, struct etcd *e, const char *vm);
/* One request to the agent at addr (HOST:PORT), TLS peer name host: 0 and *reply, or -errno. */
int peer_request(struct agent *a, const char *addr, const char *host, json_t *req,
		 json_t **reply, char *err, size_t len);

/* ---- http.c ---- */
int http_start(struct agent *a);
void http_stop(void);
/*
 * For a libmicrohttpd access handler (ctx, size as it got them): true once
 * the whole request is in.  The handler is called with the headers, then
 * with each piece of a body, then once more; until then it answers MHD_YES.
 * No request to godwitd carries a body: one is dropped, the request
 * answered at the end.
 */
bool http_request_whole(void **ctx, size_t *size);

/* ---- web.c, web_json.c: the fleet's page (--web) ---- */
#define WEB_KEY_MAX       32     /* a report's member names: [a-z0-9_], at most this */
#define WEB_ROUND_FIELDS  32     /* members kept of one round of a report's history */
#define WEB_HISTORY_MAX   512    /* rounds kept of a report's history */
#define WEB_PHASES_MAX    32     /* members kept of a report's phases_ms */
struct etcd_kvs;
/* "HOST:PORT" (HOST may be [V6]): 0, or -EINVAL. */
int web_parse_addr(const char *s, char *host, size_t hlen, unsigned int *port);
/* Serve the page on a->web from a thread of its own (its own etcd client); 0 or -errno. */
int web_start(struct agent *a);
void web_stop(void);
/*
 * The page's JSON from a range of /godwit/ (any keys; each record validated):
 * {self, revision, hosts, vms, migrations}, each ended migration linking its
 * picture when its report can be drawn.  NULL: out of memory.
 */
json_t *web_fleet_json(const struct etcd_kvs *kvs, const char *self);
/* A migration report (the VMM's GET /vm/migration, kept in the record) reduced to
 * what the page shows: known numbers, a bounded history and phases_ms.  Never NULL
 * but for lack of memory. */
json_t *web_report(json_t *prog);
/* web_report of a migration record's progress, with the record's from, to (host
 * names) and error: what the timeline draws.  NULL: out of memory. */
json_t *web_record_report(json_t *rec);
/* Can the timeline (src/lib/timeline.c) draw this report (it has rounds)? */
bool web_timeline_ok(json_t *rep);

/* ---- small helpers (agent.c) ---- */
const char *jstr(json_t *j, const char *k);
bool agent_owner_is(const char *val, const char *host, uint64_t epoch);

#endif
