/*
 * handoff.h - the end of a live migration, for both sides: the control
 * messages, the states each side passes through, who owns the VM in each,
 * how long each side waits, and what it ends with (docs/migration.md,
 * "Hand-off").  The source thread (migrate.c) and the destination
 * (incoming.c) both call in here; the VM itself is reached only through the
 * ops each side passes, so the unit tests drive both ends over a
 * socketpair with fake VMs.
 *
 *   source                                 destination
 *   ... stream, EOF ------------------->   load, disks synced
 *   HO_SRC_WAIT_READY    <-------------    READY          HO_DST_WAIT_COMMIT
 *   HO_SRC_RELEASING: release the disks                   (source owns the VM)
 *     (cannot, or cancelled: ABORT ---->   discard: no doubt)
 *   HO_SRC_GATE (ops->gate only): wait for the decision
 *     (abort, or cancelled: ABORT ----->   discard: no doubt)
 *   HO_SRC_COMMITTED     COMMIT ------->   HO_DST_STARTING: the VM is ours
 *                                          acquire disks, start devices
 *                        <-------------    ERROR: the source takes it back
 *                                          (with a gate: the source stays in doubt)
 *   HO_SRC_DONE  exit 6  <-------------    DONE after the vCPUs started
 *
 * Errors travel as data: every message but COMMIT and DONE may carry a
 * reason, and every function here returns one in why.
 */
#ifndef GODWIT_HANDOFF_H
#define GODWIT_HANDOFF_H

#include "godwit/common.h"
#include "godwit/conn.h"

/* Control message types (docs/migration.md).  Never renumber. */
enum mig_msg {
	MIG_MSG_ACCEPT = 1,      /* destination: the VM can be built here */
	MIG_MSG_REFUSE = 2,      /* destination: it cannot (text: why); before any memory */
	MIG_MSG_READY  = 3,      /* destination: the whole stream is loaded */
	MIG_MSG_ERROR  = 4,      /* either: failed (text: why); the sender does not run the VM */
	MIG_MSG_COMMIT = 5,      /* source: the VM is yours */
	MIG_MSG_DONE   = 6,      /* destination: the VM runs here */
	MIG_MSG_ABORT  = 7,      /* source, before COMMIT: drop the VM (text: why) */
	MIG_MSG_RESUMED = 8,     /* destination: a broken pre-copy goes on over this new
				    connection (text: "round=N": rounds before N are whole here) */
	MIG_MSG_APPLIED = 9,     /* destination, in pre-copy, to a source that asked (VM
				    section "acks"): the main stream's pass N is applied here
				    (text: "pass=N"); the source reads these between rounds */
};
#define MIG_MSG_TEXT_MAX    1024
#define MIG_IO_TIMEOUT_MS   10000   /* default: a peer silent this long has failed */

/* "ACCEPT", "REFUSE", ..., or "message N". */
const char *mig_msg_name(enum mig_msg type);
/* Send one control message (text may be NULL).  0 or -errno. */
int migrate_msg_send(struct conn *c, enum mig_msg type, const char *text);
/*
 * migrate_msg_recv - wait up to timeout_ms for one control message.
 * Returns 0 with *type and text (NUL-terminated, printable ASCII),
 * -ETIMEDOUT, -ECONNRESET (the peer closed or reset the connection),
 * -EBADMSG (not a message).
 */
int migrate_msg_recv(struct conn *c, int timeout_ms, enum mig_msg *type, char *text,
		     size_t len) __must_check;

/* Where a hand-off is.  The owner of the VM in each: handoff_state_owner(). */
enum handoff_state {
	HO_SRC_WAIT_READY,       /* EOF sent, VM paused here, READY awaited */
	HO_SRC_RELEASING,        /* READY came: handing the disks over, COMMIT next */
	HO_SRC_GATE,             /* disks released, waiting at the commit gate (ops->gate) */
	HO_SRC_COMMITTED,        /* COMMIT sent (or being sent), DONE awaited */
	HO_SRC_DONE,             /* DONE came: the destination runs the VM */
	HO_DST_WAIT_COMMIT,      /* READY sent, COMMIT or ABORT awaited */
	HO_DST_STARTING,         /* COMMIT came: taking the disks, starting devices */
	HO_DST_RUNNING,          /* vCPUs started, DONE sent */
};

/* How a hand-off ended for the side that ran it. */
enum handoff_result {
	HANDOFF_HERE,            /* this side owns the VM (source: resume it; destination: run it) */
	HANDOFF_THERE,           /* the other side owns it: drop it here */
	HANDOFF_IN_DOUBT,        /* unknown: stay paused until migrate-resolve */
};

/* Who owns the VM in state st, as seen from that side. */
enum handoff_result handoff_state_owner(enum handoff_state st);
const char *handoff_state_name(enum handoff_state st);
const char *handoff_result_name(enum handoff_result r);

/* What the commit gate decided (handoff_src_ops.gate). */
enum handoff_gate {
	HO_GATE_COMMIT,          /* send COMMIT */
	HO_GATE_ABORT,           /* whoever decides said no: ABORT, keep the VM here */
	HO_GATE_CANCEL,          /* the operator cancelled at the gate: the same, as a cancel */
};

/* What handoff_source() says beside its result. */
struct handoff_src_info {
	bool cancelled;          /* the operator cancelled (before COMMIT) */
	bool gate_abort;         /* the gate said no (before COMMIT) */
	/*
	 * With a gate: the destination answered COMMIT with ERROR.  In doubt,
	 * the disks not taken back: whoever decided at the gate (the fleet)
	 * already named the destination as the owner, so only it may say
	 * where the VM runs now.
	 */
	bool dest_refused;
};

struct handoff_src_ops {
	/* The operator cancelled (asked when a wait for READY ends without one). */
	bool (*cancelled)(void *opaque);
	/*
	 * Right before COMMIT, the disks released: false if the operator
	 * cancelled; true, and from then on a cancel is refused (one atomic step,
	 * so a cancel and the COMMIT never cross).
	 */
	bool (*may_commit)(void *opaque);
	/* Let go of what the destination takes at COMMIT (disk locks). 0 or -errno, err set. */
	int (*release)(void *opaque, char *err, size_t len);
	/* Take it back: the VM stays here after all.  0 or -errno, err set. */
	int (*reacquire)(void *opaque, char *err, size_t len);
	/* Each state entered (may be NULL): progress, timings.  COMMITTED: before COMMIT goes. */
	void (*state)(void *opaque, enum handoff_state st);
	/*
	 * The commit gate (NULL: none).  Called once READY came and the disks
	 * were released, right before may_commit and COMMIT; waits, as long as
	 * it takes, for whoever decides.  HO_GATE_ABORT: why says the reason
	 * the destination is told.  Its COMMIT must refuse any later cancel
	 * (as may_commit's true does).  With a gate, the source never takes
	 * the VM back by itself once COMMIT went: an ERROR after COMMIT leaves
	 * it in doubt (info->dest_refused).
	 */
	enum handoff_gate (*gate)(void *opaque, char *why, size_t len);
};

struct handoff_dst_ops {
	/* COMMIT came: take the disks, start the devices.  0 or -errno, err set. */
	int (*commit)(void *opaque, char *err, size_t len);
	/* Each state entered (may be NULL). */
	void (*state)(void *opaque, enum handoff_state st);
};

/*
 * handoff_source - the source's side, once the whole stream (EOF) was sent:
 * READY (wait_ms), release, the gate (if any, no time limit), COMMIT, DONE
 * (wait_ms).  ABORT goes out when the source gives up after the stream: on
 * a cancel, a failed release, the gate's no, or no READY in time (best
 * effort: the destination may be gone).  Returns HANDOFF_HERE (resume the VM
 * here; reacquire was called where needed), HANDOFF_THERE (exit: the
 * destination runs it) or HANDOFF_IN_DOUBT, with why set for anything but
 * THERE.  *info says why, beyond the result.
 */
enum handoff_result handoff_source(struct conn *c, int wait_ms, const struct handoff_src_ops *ops,
				   void *opaque, struct handoff_src_info *info, char *why,
				   size_t len);

/*
 * handoff_dest - the destination's side, once the stream was loaded and its
 * disks synced: READY, then COMMIT or ABORT (wait_ms).  On COMMIT, ops->commit;
 * if that fails, ERROR goes back and the VM is the source's.  Returns
 * HANDOFF_HERE (start the vCPUs, then handoff_dest_confirm()), HANDOFF_THERE
 * (discard the VM: the source runs it) or HANDOFF_IN_DOUBT, with why set for
 * anything but HERE.
 */
enum handoff_result handoff_dest(struct conn *c, int wait_ms, const struct handoff_dst_ops *ops,
				 void *opaque, char *why, size_t len);
/* The vCPUs run: DONE.  0 or -errno (then the source stays in doubt). */
int handoff_dest_confirm(struct conn *c);

#endif
