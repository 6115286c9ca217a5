/*
 * migrate.h - live migration (docs/migration.md): the source side runs in a
 * thread of its own (pre-copy with the dirty log, stop-and-copy, the
 * READY/COMMIT hand-off, handoff.h), started and watched through the API;
 * the destination side is incoming.h.
 *
 * Who owns the VM: the source until it sends COMMIT (any failure before
 * that resumes it there), the destination once it received COMMIT.  A side
 * that cannot know whether the other crossed that line stays paused
 * "in doubt" until migrate_resolve().
 */
#ifndef GODWIT_MIGRATE_H
#define GODWIT_MIGRATE_H

#include <sys/socket.h>

#include "godwit/common.h"
#include "godwit/devspec.h"
#include "godwit/handoff.h"
#include "godwit/postcopy.h"
#include "godwit/stream.h"

struct vm;
struct tls_creds;

enum mig_status {
	MIG_NONE,                /* no migration was started */
	MIG_SETUP,               /* connecting, configuration offered */
	MIG_ACTIVE,              /* pre-copy */
	MIG_STOP_COPY,           /* paused: last pages and the state, waiting for READY */
	MIG_COMMITTING,          /* COMMIT sent, waiting for DONE */
	MIG_COMPLETED,           /* the VM runs on the destination */
	MIG_FAILED,              /* the VM runs here (error says why) */
	MIG_CANCELLED,           /* the VM runs here (cancelled) */
	MIG_IN_DOUBT,            /* paused: resolve with migrate_resolve() */
	MIG_INCOMING,            /* destination: the VM came in and runs here */
	MIG_COMMIT_WAIT,         /* paused, disks released, READY came: at the commit gate,
				    waiting for migrate_commit() (p.gate) */
	MIG_POSTCOPY,            /* post-copy: the VM runs on the destination, pages still
				    moving (source and destination) */
	MIG_POSTCOPY_FAILED,     /* source: the destination went away during post-copy and did
				    not come back within reconnect_s; it stays paused here and
				    must not run (final, but busy: never resumed); a
				    migrate_resume() may still reach the destination */
	MIG_RECONNECTING,        /* pre-copy's connection broke: connecting again
				    (p.reconnect_s); the VM runs here */
	MIG_POSTCOPY_PAUSED,     /* source: the link broke during post-copy; connecting again */
};
/* "none", "setup", "active", "stop-and-copy", "commit-wait", "committing", "completed", ... */
const char *migrate_status_name(enum mig_status s);
/* Final: completed, failed, cancelled (in doubt is not: it waits for the operator). */
bool migrate_status_final(enum mig_status s);

#define MIG_DEFAULT_DOWNTIME_MS 50
#define MIG_DEFAULT_MAX_ROUNDS  30
#define MIG_ADDR_MAX            256
#define MIG_MIN_BANDWIDTH       (1024 * 1024)   /* bytes/s */
#define MIG_MAX_CHANNELS        16              /* = SNAPSHOT_MAX_CHANNELS */
#define MIG_DEFAULT_MIN_RATE    (64 * 1024)     /* bytes/s, as incoming.h's */
#define MIG_RATE_WINDOW_MS      10000
#define MIG_MIN_THROTTLE_BUDGET (1024 * 1024)   /* bytes/s the vCPUs may always dirty */

/*
 * Pre-copy's decision after a round (migrate.c, docs/migration.md): expect
 * the predicted pause (ms), expect_mem its memory part, limit the downtime
 * limit, remaining the bytes left, last_remaining those after the round
 * before (< 0 after round 1).  The round limit's stop over the limit is
 * the caller's.
 */
enum mig_next {
	MIG_NEXT_ROUND,          /* another round */
	MIG_STOP_UNDER,          /* stop: the pause fits the limit */
	MIG_STOP_OVER,           /* stop: it does not, but no round would shorten it much */
};
enum mig_next migrate_precopy_next(double expect, double expect_mem, double limit,
				   double remaining, double last_remaining, uint32_t round,
				   uint32_t max_rounds);

struct migrate_params {
	char to[MIG_ADDR_MAX];   /* tcp:HOST:PORT or unix:PATH */
	uint32_t downtime_ms;    /* 1..60000 */
	uint64_t max_bandwidth;  /* bytes per second, 0: unlimited */
	uint32_t max_rounds;     /* 1..1000 */
	uint64_t min_rate;       /* bytes/s the destination must take, over each 10 s of
				    waiting on it; 0: no minimum (MIG_DEFAULT_MIN_RATE) */
	bool with_disks;         /* copy disk images too (storage migration) */
	/* with_disks: the serials of the disks to copy (disk_serials_parse); none: every disk */
	char disks[VM_MAX_DEVICE_ARGS][DISK_SERIAL_MAX + 1];
	unsigned int nr_disks;
	/* mutual TLS (tls.h); migrate_start() owns it from the call on, even when it fails */
	struct tls_creds *tls;
	bool insecure;           /* plain TCP beyond this host: the operator said so */
	/*
	 * Stop at the commit gate (MIG_COMMIT_WAIT) right before COMMIT until
	 * migrate_commit() decides; after COMMIT, never take the VM back without
	 * being told (an ERROR from the destination leaves it in doubt).
	 */
	bool gate;
	/*
	 * Throttle the vCPUs that dirty memory faster than pre-copy converges
	 * (throttle.h); false: never (--no-throttle, "throttle": false).
	 */
	bool throttle;
	/*
	 * Post-copy (postcopy.h): off, auto (when throttling would exceed its
	 * bound) or now (after round 1).  Not with TLS (yet).
	 */
	enum pc_mode postcopy;
	/*
	 * A connection that breaks in pre-copy is tried again for this many
	 * seconds (0: the migration fails at once, as before); the destination
	 * keeps what it has, and only what it may lack is sent again.  Not
	 * with with_disks.  A link that breaks in post-copy is tried again as
	 * long too, then only on migrate_resume().
	 */
	uint32_t reconnect_s;
	/*
	 * Connections the memory is split among (docs/migration.md,
	 * "Channels"), 1..MIG_MAX_CHANNELS; 0: migrate_default_channels().
	 * More than one: not with reconnect_s, postcopy or with_disks.
	 */
	uint32_t channels;
	/*
	 * Compression of the RAM pages on the link (stream.h): auto (the API's
	 * default), off or zstd.  Pages go without a per-page CRC on every
	 * socket (TCP's checksum or TLS's AEAD guards them).
	 */
	enum stream_compress compress;
};

/* The pause's phases, in order (GET /vm/migration "phases_ms"). */
enum mig_phase {
	MIG_PHASE_STOP,          /* vCPUs paused, devices quiesced */
	MIG_PHASE_MEMORY,        /* the last dirty pages and disk blocks sent */
	MIG_PHASE_STATE,         /* CPU and device state and the end of the stream sent */
	MIG_PHASE_READY,         /* the destination loaded it and answered READY */
	MIG_PHASE_RELEASE,       /* the disks released */
	MIG_PHASE_GATE,          /* at the commit gate, waiting for the decision (p.gate only) */
	MIG_PHASE_COMMIT,        /* COMMIT sent until DONE came */
	MIG_PHASE_COUNT
};
/* "stop", "memory", "state", "ready", "release", "gate", "commit" */
const char *migrate_phase_name(enum mig_phase ph);

/* The per-vCPU dirty rates a history entry keeps (the progress has every vCPU's). */
#define MIG_ROUND_VCPUS 8
#define MIG_MAX_VCPUS   255          /* = STREAM_MAX_VCPUS (checked in migrate.c) */

/* One finished pre-copy round (GET /vm/migration "history"). */
struct migrate_round {
	uint32_t round;              /* 1-based */
	double start_ms;             /* since the migration started */
	double ms;                   /* the round's duration */
	uint64_t bytes;              /* stream bytes sent in the round (memory and disk) */
	uint64_t remaining_bytes;    /* dirty memory and disk blocks left after it */
	double dirty_rate;           /* bytes dirtied per second during it */
	double bandwidth;            /* the link estimate after it, bytes per second */
	double expected_downtime_ms; /* remaining / bandwidth */
	double throttle_budget;      /* bytes/s all vCPUs may dirty from here on (0: none throttled) */
	double throttle_pct;         /* the most throttled vCPU's share of time asleep, at its end */
	unsigned int nr_vcpu_throttle;
	double vcpu_throttle_pct[MIG_ROUND_VCPUS];  /* the first few vCPUs' */
	/* with the dirty ring: bytes dirtied per second by vCPU 0, 1, ... (the first few) */
	unsigned int nr_vcpu_rates;
	double vcpu_dirty_rate[MIG_ROUND_VCPUS];
};

struct migrate_progress {
	enum mig_status status;
	char to[MIG_ADDR_MAX];
	uint32_t round;              /* the pre-copy round under way (1-based), or the last */
	uint32_t rounds_done;        /* pre-copy rounds finished (the figures below are theirs) */
	uint64_t bytes;              /* stream bytes sent */
	uint64_t pages, zero_pages;  /* RAM pages sent, of them zero (markers) */
	uint64_t remaining_bytes;    /* dirty RAM not sent yet, as last measured */
	double dirty_rate;           /* bytes dirtied per second, last round */
	bool dirty_ring;             /* dirty pages tracked per vCPU (KVM's dirty ring) */
	unsigned int nr_vcpu_rates;  /* dirty_ring: vCPUs in vcpu_dirty_rate, once a round ended */
	double vcpu_dirty_rate[MIG_MAX_VCPUS];   /* bytes per second, last round, per vCPU */
	bool throttle;               /* throttling allowed (p.throttle) */
	uint32_t downtime_limit_ms;  /* p.downtime_ms: the bound the pause is held to */
	double switch_expected_ms;   /* the pause predicted when pre-copy ended */
	uint32_t reconnects;         /* times the connection broke and was made again */
	uint64_t resent_pages;       /* pages sent again after those breaks */
	double throttle_budget;      /* bytes/s the vCPUs may dirty (0: none throttled) */
	unsigned int nr_vcpu_throttle;          /* vCPUs in vcpu_throttle_pct */
	double vcpu_throttle_pct[MIG_MAX_VCPUS];   /* each vCPU's share of time asleep, now */
	double bandwidth;            /* bytes sent per second, last round */
	double expected_downtime_ms; /* remaining / bandwidth */
	double setup_ms, total_ms, downtime_ms;
	double pause_start_ms;       /* since the start, once stop-and-copy began (paused) */
	bool paused;                 /* stop-and-copy began: pause_start_ms is valid */
	bool phases;                 /* completed: phase_ms holds the pause's phases */
	double phase_ms[MIG_PHASE_COUNT];   /* durations; their sum is downtime_ms */
	uint64_t disk_bytes;         /* disk extents sent (data and zero) */
	uint64_t disk_remaining_bytes;   /* written blocks not sent yet, as last measured */
	double disk_dirty_rate;      /* bytes of blocks written per second, last round */
	uint32_t disk_rounds;        /* disk passes */
	bool converged;              /* pre-copy ended under the downtime limit */
	bool not_converging;         /* the last rounds did not shrink what is left */
	char tls[384];               /* the TLS session ("TLSv1.3 ..., peer CN=..."); "": none */
	bool insecure;               /* plain TCP beyond this host (--insecure) */
	bool gate;                   /* started with a commit gate */
	bool dest_refused;           /* gate: in doubt because the destination refused after COMMIT */
	/* post-copy: the mode asked for; once switched, when and what moved how */
	enum pc_mode postcopy;
	bool postcopy_switched;
	double postcopy_start_ms;        /* since the start: the switch (the pause) */
	double postcopy_ms;              /* from COMMIT until every page was there */
	uint64_t postcopy_pages;         /* pages the destination did not have at the switch */
	uint64_t postcopy_requested, postcopy_pushed;   /* on demand, in the background */
	double fault_median_ms, fault_max_ms;   /* the destination's fault latency */
	uint32_t postcopy_breaks;        /* links broken and reconnected during post-copy */
	uint32_t channels;               /* connections the stream went over */
	/* compression: the mode asked for, and what the writers compressed */
	enum stream_compress compress;
	struct stream_compress_stats compress_st;
	char error[512];
};

/*
 * Parse "tcp:HOST:PORT" / "unix:PATH"; 0 or -EINVAL with err set.  A
 * migration to or from TCP beyond loopback needs TLS or p->insecure.
 */
int migrate_addr_check(const char *addr, char *err, size_t len) __must_check;

/* ---- source (API, loop thread) ---- */

/*
 * migrate_start - start migrating vm to p->to in a thread of its own.
 * Returns 0, -EBUSY if a migration is under way or in doubt, -EINVAL for
 * bad parameters or a VM that cannot migrate (err says why).
 */
/*
 * The channel count a migration to `to` gets by default: from this host's
 * online CPUs (docs/migration.md, "Channels").
 */
unsigned int migrate_default_channels(const char *to);

int migrate_start(struct vm *vm, const struct migrate_params *p, char *err,
		  size_t len) __must_check;
/*
 * A copy of the progress (status MIG_NONE if none).  release: the reader is
 * the client that follows the migration; once it has seen a final status, a
 * completed source exits (it waits up to 5 s for that).
 */
void migrate_get_progress(struct vm *vm, struct migrate_progress *out, bool release);
/*
 * The finished pre-copy rounds of the last outgoing migration, oldest
 * first: copies up to max into out and returns how many there are (may be
 * more than max; 0 if none).
 */
size_t migrate_get_history(struct vm *vm, struct migrate_round *out, size_t max);
/* True while a migration owns the VM's run state (between start and its end, or in doubt). */
bool migrate_busy(struct vm *vm);
/*
 * migrate_cancel - stop an outgoing migration before COMMIT; the VM keeps
 * running here (at the commit gate: as migrate_commit(vm, false), with the
 * reason "cancelled").  Returns 0, -ENOENT if none is under way, -EALREADY once
 * COMMIT was sent (err says why).
 */
int migrate_cancel(struct vm *vm, char *err, size_t len) __must_check;
/*
 * migrate_commit - the decision at the commit gate (MIG_COMMIT_WAIT): commit
 * sends COMMIT (the status is MIG_COMMITTING from this call on: a cancel is
 * refused; follow the progress for the outcome); !commit sends ABORT ("the
 * fleet did not commit"), takes the disks back and resumes the VM here, and
 * returns once it runs.  Returns 0, or -ENOENT if no migration waits at the
 * gate (err says why).
 */
int migrate_commit(struct vm *vm, bool commit, char *err, size_t len) __must_check;
/*
 * migrate_resolve - settle an in-doubt migration on this side: resume runs
 * the VM here, !resume drops it (this godwit exits with EXIT_MIGRATED).
 * Returns 0, or -ENOENT if nothing is in doubt here.
 */
int migrate_resolve(struct vm *vm, bool resume, char *err, size_t len) __must_check;
/*
 * migrate_resume - a post-copy whose link broke (postcopy-paused or
 * postcopy-failed): connect to the destination again, at `to` if given.
 * 0 (follow the progress), -ENOENT if none waits, -EINVAL (err says why).
 */
int migrate_resume(struct vm *vm, const char *to, char *err, size_t len) __must_check;
/* Cancel whatever is under way and wait for the thread: before the VM goes away. */
void migrate_fini(struct vm *vm);

/* ---- connections (migrate_addr.c), and the destination's record (incoming.c) ---- */

/* The source's connection to addr (migrate_addr.c); 0 and *fd, or -errno with err set. */
int migrate_connect(const char *addr, int *fd, char *err, size_t len) __must_check;
/* Listen on addr (a UNIX socket is made 0600); 0 and *lfd, or -errno with err set. */
int migrate_listen(const char *addr, int *lfd, char *err, size_t len) __must_check;
/*
 * migrate_accept - wait up to timeout_ms (-1: for ever) for a connection on
 * lfd.  0 with *fd and who it is in peer ("198.18.0.1:40000", "uid 0 pid
 * 12"); -ETIMEDOUT; -EACCES for a UNIX socket peer that is neither this
 * user nor root (closed, err says so); other -errno with err set.
 */
int migrate_accept(int lfd, const char *addr, int timeout_ms, int *fd, char *peer, size_t plen,
		   char *err, size_t len) __must_check;
/* Close the listener (a UNIX socket's file goes too). */
void migrate_unlisten(int lfd, const char *addr);
/* True for a UNIX socket and for a TCP address on loopback only (not the wildcard). */
bool migrate_addr_local(const char *addr);
/*
 * migrate_incoming_done - record on vm the outcome of an incoming migration
 * (MIG_INCOMING: runs here; MIG_IN_DOUBT: paused, not started; the API
 * resolves it), with the stream bytes received, for GET /vm/migration.
 */
void migrate_incoming_done(struct vm *vm, enum mig_status st, const char *from,
			   uint64_t bytes, const char *tls, bool insecure, const char *why);
/*
 * migrate_incoming_postcopy - record the destination's post-copy: st
 * MIG_POSTCOPY before READY (requested: the pages missing; from here on
 * the VM cannot be resumed here by migrate_resolve()), MIG_INCOMING once
 * every page is here, with what came how and the fault latency.
 */
void migrate_incoming_postcopy(struct vm *vm, enum mig_status st, uint64_t requested,
			       uint64_t pushed, double median_ms, double max_ms, double ms);

#endif
