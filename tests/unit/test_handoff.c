/*
 * test_handoff.c - the hand-off state machines (handoff.h), both sides at
 * once: handoff_source() and handoff_dest() run in two threads on fake VMs
 * (a disk lock that either side can hold), joined through a proxy thread
 * that passes the control messages and breaks one of them: dropped,
 * delayed past the other side's timeout, duplicated, damaged, or the link
 * cut there (as when either side is killed).  Every fault at every message, under every way the VMs can
 * fail (release, reacquire, commit, a cancel), must end with the VM owned
 * by exactly one side, or by nobody but in doubt on at least one side: never
 * run twice, never lost; and a side that runs the VM holds the disk lock,
 * so the other's migrate-resolve --resume is refused (fencing).  The same
 * with a commit gate (ops->gate) that commits, aborts or is cancelled:
 * and there, once COMMIT went, the source never takes the VM back itself.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "godwit/handoff.h"
#include "unit.h"

/*
 * Each side's wait for the next message: short where a fault makes a side wait, and
 * long where none does, so that a slow machine cannot turn a clean run into a timeout.
 * A delayed message comes HT_DELAY_MS late: past the short wait.
 */
#define HT_WAIT_MS        150
#define HT_WAIT_CLEAN_MS  10000
#define HT_DELAY_MS       400

enum ht_fault { F_NONE, F_DROP, F_DELAY, F_DUP, F_DAMAGE, F_CUT, F_NR };
static const char *const ht_fault_name[] = { "none", "drop", "delay", "dup", "damage", "cut" };

enum ht_scenario { S_OK, S_RELEASE_FAILS, S_BOTH_FAIL, S_COMMIT_FAILS, S_CANCEL,
		   S_CANCEL_WAIT, S_GATE_COMMIT, S_GATE_ABORT, S_GATE_CANCEL, S_GATE_COMMIT_FAILS,
		   S_NR,
		   S_GATE_LATE = S_NR,   /* not in the matrix: the gate commits after the
					    destination's wait for COMMIT */
};
static const char *const ht_scenario_name[] = {
	"ok", "release-fails", "release-and-reacquire-fail", "commit-fails", "cancel",
	"cancel-while-waiting", "gate-commit", "gate-abort", "gate-cancel",
	"gate-commit-then-commit-fails", "gate-commit-late",
};

static bool ht_gated(enum ht_scenario sc)
{
	return sc >= S_GATE_COMMIT;
}

enum { LOCK_SRC, LOCK_NONE, LOCK_DST };

struct ht_world {
	enum ht_scenario sc;
	pthread_mutex_t lock;
	int disk;                /* who holds the disk lock */
	bool cancel;             /* the operator cancelled */
	bool committing;         /* may_commit said yes */
	int src_fd, dst_fd;
	int wait_ms;
	enum handoff_result rs, rd;
	struct handoff_src_info info;
	bool cancelled;
	bool at_gate;            /* the gate was called */
	int disk_at_gate;        /* who held the disk lock then */
	bool commit_sent;        /* the source entered HO_SRC_COMMITTED */
	char src_why[512], dst_why[512];
};

static bool w_cancelled(void *o)
{
	struct ht_world *w = o;
	bool c;

	pthread_mutex_lock(&w->lock);
	c = w->cancel;
	pthread_mutex_unlock(&w->lock);
	return c;
}

static bool w_may_commit(void *o)
{
	struct ht_world *w = o;
	bool ok;

	pthread_mutex_lock(&w->lock);
	if (w->sc == S_CANCEL)
		w->cancel = true;        /* the cancel lands between READY and COMMIT */
	ok = !w->cancel;
	w->committing = ok;
	pthread_mutex_unlock(&w->lock);
	return ok;
}

static enum handoff_gate w_gate(void *o, char *why, size_t len)
{
	struct ht_world *w = o;
	enum handoff_gate g = HO_GATE_COMMIT;

	pthread_mutex_lock(&w->lock);
	w->at_gate = true;
	w->disk_at_gate = w->disk;
	switch (w->sc) {
	case S_GATE_ABORT:
		snprintf(why, len, "the fleet did not commit");
		g = HO_GATE_ABORT;
		break;
	case S_GATE_CANCEL:
		w->cancel = true;        /* migrate-cancel at the gate */
		g = HO_GATE_CANCEL;
		break;
	default:
		w->committing = true;
		break;
	}
	pthread_mutex_unlock(&w->lock);
	if (w->sc == S_GATE_LATE) {
		struct timespec ts = { .tv_nsec = HT_DELAY_MS * 1000000L };

		nanosleep(&ts, NULL);    /* past the destination's wait */
	}
	return g;
}

static void w_src_state(void *o, enum handoff_state st)
{
	struct ht_world *w = o;

	if (st == HO_SRC_COMMITTED)
		w->commit_sent = true;
}

static int w_release(void *o, char *err, size_t len)
{
	struct ht_world *w = o;

	if (w->sc == S_RELEASE_FAILS || w->sc == S_BOTH_FAIL) {
		snprintf(err, len, "fake: cannot flush");
		return -EIO;
	}
	pthread_mutex_lock(&w->lock);
	if (w->disk == LOCK_SRC)
		w->disk = LOCK_NONE;
	pthread_mutex_unlock(&w->lock);
	return 0;
}

static int w_reacquire(void *o, char *err, size_t len)
{
	struct ht_world *w = o;
	int ret = 0;

	if (w->sc == S_BOTH_FAIL) {
		snprintf(err, len, "fake: cannot lock");
		return -EIO;
	}
	pthread_mutex_lock(&w->lock);
	if (w->disk == LOCK_DST) {
		snprintf(err, len, "fake: locked by the destination");
		ret = -EAGAIN;
	} else {
		w->disk = LOCK_SRC;
	}
	pthread_mutex_unlock(&w->lock);
	return ret;
}

static int w_commit(void *o, char *err, size_t len)
{
	struct ht_world *w = o;
	int ret = 0;

	if (w->sc == S_COMMIT_FAILS || w->sc == S_GATE_COMMIT_FAILS) {
		snprintf(err, len, "fake: cannot start the devices");
		return -EIO;
	}
	pthread_mutex_lock(&w->lock);
	if (w->disk == LOCK_SRC) {
		snprintf(err, len, "fake: locked by the source");
		ret = -EAGAIN;
	} else {
		w->disk = LOCK_DST;
	}
	pthread_mutex_unlock(&w->lock);
	return ret;
}

static void *ht_src(void *o)
{
	static const struct handoff_src_ops ops = {
		.cancelled = w_cancelled, .may_commit = w_may_commit,
		.release = w_release, .reacquire = w_reacquire, .state = w_src_state,
	};
	static const struct handoff_src_ops gate_ops = {
		.cancelled = w_cancelled, .may_commit = w_may_commit,
		.release = w_release, .reacquire = w_reacquire, .state = w_src_state,
		.gate = w_gate,
	};
	struct ht_world *w = o;
	struct conn c = conn_plain(w->src_fd);

	w->rs = handoff_source(&c, w->wait_ms, ht_gated(w->sc) ? &gate_ops : &ops, w, &w->info,
			       w->src_why, sizeof(w->src_why));
	w->cancelled = w->info.cancelled;
	close(w->src_fd);        /* as the source does once its thread ends */
	return NULL;
}

static void *ht_dst(void *o)
{
	static const struct handoff_dst_ops ops = { .commit = w_commit };
	struct ht_world *w = o;
	struct conn c = conn_plain(w->dst_fd);

	w->rd = handoff_dest(&c, w->wait_ms, &ops, w, w->dst_why, sizeof(w->dst_why));
	if (w->rd == HANDOFF_HERE)
		(void)handoff_dest_confirm(&c);
	close(w->dst_fd);
	return NULL;
}

/* ---- the proxy -------------------------------------------------------------------------- */

struct ht_proxy {
	int a, b;                /* a: to the source, b: to the destination */
	int fault_at;            /* which message (in order of arrival) to break */
	enum ht_fault fault;
	int seen;
	struct ht_world *w;
};

static double ht_ms(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

/* One whole message from fd into buf; its length, 0 at EOF, -1 on error. */
static ssize_t ht_read_msg(int fd, uint8_t *buf, size_t cap)
{
	size_t got = 0, want = 8;
	bool hdr = true;

	while (got < want) {
		ssize_t k = read(fd, buf + got, want - got);

		if (k <= 0)
			return got ? -1 : k;
		got += (size_t)k;
		if (hdr && got == 8) {
			uint16_t l;

			memcpy(&l, buf + 6, 2);
			want = 8 + (size_t)l + 4;
			if (want > cap)
				return -1;
			hdr = false;
		}
	}
	return (ssize_t)got;
}

static void *ht_proxy_run(void *o)
{
	struct ht_proxy *p = o;
	uint8_t buf[2048], held[2048];
	ssize_t held_n = 0;
	int held_to = -1;
	struct timespec t0, t_held;
	bool a_open = true, b_open = true;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	while ((a_open || b_open) && ht_ms(&t0) < 30000) {
		struct pollfd pf[2] = { { .fd = a_open ? p->a : -1, .events = POLLIN },
					{ .fd = b_open ? p->b : -1, .events = POLLIN } };

		if (held_n && ht_ms(&t_held) >= HT_DELAY_MS) {
			if (held_to >= 0)
				(void)!send(held_to, held, (size_t)held_n, MSG_NOSIGNAL);
			held_n = 0;
		}
		if (poll(pf, 2, 10) <= 0)
			continue;
		for (int i = 0; i < 2; i++) {
			int from = i ? p->b : p->a, to = i ? p->a : p->b;
			bool to_open = i ? a_open : b_open;
			ssize_t n;

			if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			n = ht_read_msg(from, buf, sizeof(buf));
			if (n <= 0) {
				/* A side closed: so does the link towards the other. */
				if (i)
					b_open = false;
				else
					a_open = false;
				shutdown(to, SHUT_WR);
				continue;
			}
			if (p->seen++ != p->fault_at || p->fault == F_NONE) {
				if (to_open)
					(void)!send(to, buf, (size_t)n, MSG_NOSIGNAL);
				continue;
			}
			switch (p->fault) {
			case F_DROP:
				break;
			case F_DELAY:
				memcpy(held, buf, (size_t)n);
				held_n = n;
				held_to = to_open ? to : -1;
				clock_gettime(CLOCK_MONOTONIC, &t_held);
				break;
			case F_DUP:
				(void)!send(to, buf, (size_t)n, MSG_NOSIGNAL);
				(void)!send(to, buf, (size_t)n, MSG_NOSIGNAL);
				break;
			case F_DAMAGE:
				buf[n - 1] ^= 0x5a;      /* the CRC */
				(void)!send(to, buf, (size_t)n, MSG_NOSIGNAL);
				break;
			case F_CUT:
				shutdown(p->a, SHUT_RDWR);
				shutdown(p->b, SHUT_RDWR);
				a_open = b_open = false;
				break;
			default:
				break;
			}
		}
	}
	return NULL;
}

/* One case: the world under scenario sc, message fault_at broken by fault. */
static void ht_case(enum ht_scenario sc, int fault_at, enum ht_fault fault, struct ht_world *w)
{
	int s1[2], s2[2];
	struct ht_proxy p = { .fault_at = fault_at, .fault = fault, .w = w };
	pthread_t ts, td, tp;

	memset(w, 0, sizeof(*w));
	pthread_mutex_init(&w->lock, NULL);
	w->sc = sc;
	w->wait_ms = fault == F_NONE && sc != S_GATE_LATE ? HT_WAIT_CLEAN_MS : HT_WAIT_MS;
	w->disk = LOCK_SRC;
	w->cancel = sc == S_CANCEL_WAIT;     /* cancelled while READY was awaited */
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s1), 0);
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s2), 0);
	w->src_fd = s1[0];
	p.a = s1[1];
	p.b = s2[0];
	w->dst_fd = s2[1];
	if (sc == S_CANCEL_WAIT)
		shutdown(w->src_fd, SHUT_RD);    /* what migrate_cancel does in the hand-off */
	pthread_create(&tp, NULL, ht_proxy_run, &p);
	pthread_create(&ts, NULL, ht_src, w);
	pthread_create(&td, NULL, ht_dst, w);
	pthread_join(ts, NULL);
	pthread_join(td, NULL);
	pthread_join(tp, NULL);
	close(p.a);
	close(p.b);
	pthread_mutex_destroy(&w->lock);
}

#define CASE_CHECK(c) do {                                                        \
	if (!(c))                                                                   \
		unit_fail(__FILE__, __LINE__, "%s: scenario %s, %s at message %d: "  \
			  "source %s (%s), destination %s (%s), disk lock %d", #c,     \
			  ht_scenario_name[sc], ht_fault_name[f], at,                 \
			  handoff_result_name(w.rs), w.src_why, handoff_result_name(w.rd), \
			  w.dst_why, w.disk);                                         \
} while (0)

TEST(handoff_every_fault_at_every_message)
{
	unsigned int n = 0, doubt = 0;

	for (int sc = 0; sc < S_NR; sc++)
		for (int f = 0; f < F_NR; f++)
			for (int at = 0; at < (f == F_NONE ? 1 : 3); at++) {
				struct ht_world w;

				ht_case((enum ht_scenario)sc, at, (enum ht_fault)f, &w);
				n++;
				/* Never on both sides. */
				CASE_CHECK(!(w.rs == HANDOFF_HERE && w.rd == HANDOFF_HERE));
				/* The source lets go only when the destination runs it. */
				CASE_CHECK(w.rs != HANDOFF_THERE || w.rd == HANDOFF_HERE);
				/* Never lost: someone runs it, or someone holds it in doubt. */
				CASE_CHECK(w.rs == HANDOFF_HERE || w.rd == HANDOFF_HERE ||
					   w.rs == HANDOFF_IN_DOUBT || w.rd == HANDOFF_IN_DOUBT);
				/* Whoever runs it holds the disk: the other cannot resume it. */
				CASE_CHECK(w.rs != HANDOFF_HERE || w.disk == LOCK_SRC);
				CASE_CHECK(w.rd != HANDOFF_HERE || w.disk == LOCK_DST);
				/* A reason for every outcome but the hand-over itself. */
				CASE_CHECK(w.rs == HANDOFF_THERE || w.src_why[0]);
				CASE_CHECK(w.rd == HANDOFF_HERE || w.dst_why[0]);
				/*
				 * A cut is also the source killed there: its copy is gone, so
				 * the destination may drop the VM only when the source said
				 * to (ABORT: it had resumed it).  Not covered, as by any
				 * protocol: the source dying right after the destination's
				 * own COMMIT failure handed the VM back to it.
				 */
				if (f == F_CUT && w.rd == HANDOFF_THERE)
					CASE_CHECK(strstr(w.dst_why, "aborted") ||
						   ((sc == S_COMMIT_FAILS ||
						     sc == S_GATE_COMMIT_FAILS) &&
						    strstr(w.dst_why, "cannot start")));
				/* The gate: reached only with the disks released, and only gated. */
				CASE_CHECK(!w.at_gate || (ht_gated(sc) && w.disk_at_gate == LOCK_NONE));
				/* Gated, the source never takes the VM back itself once COMMIT went. */
				if (ht_gated(sc) && w.commit_sent)
					CASE_CHECK(w.rs != HANDOFF_HERE);
				/* A gate that did not commit: COMMIT never goes, the destination never runs it. */
				if (sc == S_GATE_ABORT || sc == S_GATE_CANCEL)
					CASE_CHECK(!w.commit_sent && w.rd != HANDOFF_HERE);
				/* Only a gate's destination refusal is dest_refused. */
				CASE_CHECK(!w.info.dest_refused ||
					   (ht_gated(sc) && w.commit_sent && w.rs == HANDOFF_IN_DOUBT));
				if (w.rs == HANDOFF_IN_DOUBT || w.rd == HANDOFF_IN_DOUBT)
					doubt++;
				if (f != F_NONE)
					continue;
				/* Without a fault, every scenario ends in a known place. */
				switch (sc) {
				case S_OK:
					CASE_CHECK(w.rs == HANDOFF_THERE && w.rd == HANDOFF_HERE);
					break;
				case S_RELEASE_FAILS:
				case S_COMMIT_FAILS:
					CASE_CHECK(w.rs == HANDOFF_HERE && w.rd == HANDOFF_THERE);
					break;
				case S_CANCEL:
				case S_CANCEL_WAIT:
					/* ABORT: the destination drops it without doubt. */
					CASE_CHECK(w.rs == HANDOFF_HERE && w.rd == HANDOFF_THERE &&
						   w.cancelled && strstr(w.dst_why, "aborted"));
					break;
				case S_BOTH_FAIL:
					CASE_CHECK(w.rs == HANDOFF_IN_DOUBT && w.rd == HANDOFF_THERE);
					break;
				case S_GATE_COMMIT:
					CASE_CHECK(w.at_gate && w.rs == HANDOFF_THERE &&
						   w.rd == HANDOFF_HERE && w.disk == LOCK_DST);
					break;
				case S_GATE_ABORT:
					/* ABORT with the gate's reason, the disks back here. */
					CASE_CHECK(w.at_gate && w.rs == HANDOFF_HERE &&
						   w.rd == HANDOFF_THERE && w.info.gate_abort &&
						   !w.cancelled && w.disk == LOCK_SRC &&
						   strstr(w.dst_why, "the fleet did not commit") &&
						   strstr(w.src_why, "the fleet did not commit"));
					break;
				case S_GATE_CANCEL:
					CASE_CHECK(w.at_gate && w.rs == HANDOFF_HERE &&
						   w.rd == HANDOFF_THERE && w.cancelled &&
						   w.disk == LOCK_SRC && strstr(w.dst_why, "aborted"));
					break;
				case S_GATE_COMMIT_FAILS:
					/*
					 * ERROR after COMMIT: without a gate the source resumes
					 * (S_COMMIT_FAILS); gated it stays in doubt, the disks
					 * not taken back.
					 */
					CASE_CHECK(w.rs == HANDOFF_IN_DOUBT && w.info.dest_refused &&
						   w.rd == HANDOFF_THERE && w.disk == LOCK_NONE &&
						   strstr(w.src_why, "refused the VM after COMMIT"));
					break;
				}
			}
	CHECK(n > 150);
	/* The faults did reach the states where doubt is the only safe answer. */
	CHECK(doubt > 0);
}

/*
 * A gate that commits after the destination stopped waiting for COMMIT: the
 * destination is in doubt (it never ran the VM), COMMIT reaches nobody, the
 * source is in doubt too, with the disks still released: the VM runs nowhere.
 */
TEST(handoff_gate_commit_too_late)
{
	struct ht_world w;
	int sc = S_GATE_LATE, f = F_NONE, at = 0;

	ht_case(S_GATE_LATE, 0, F_NONE, &w);
	CASE_CHECK(w.at_gate && w.commit_sent);
	CASE_CHECK(w.rd == HANDOFF_IN_DOUBT && strstr(w.dst_why, "no COMMIT after READY"));
	CASE_CHECK(w.rs == HANDOFF_IN_DOUBT && !w.info.dest_refused &&
		   strstr(w.src_why, "did not confirm"));
	CASE_CHECK(w.disk == LOCK_NONE);
}

/* Messages a side does not expect at a state are refused, not obeyed. */
TEST(handoff_unexpected_messages)
{
	static const struct handoff_src_ops sops = {
		.release = w_release, .reacquire = w_reacquire,
	};
	static const struct handoff_dst_ops dops = { .commit = w_commit };
	struct ht_world w;
	enum mig_msg type;
	char text[64];
	struct conn c0, c1;
	int sv[2];

	/* A destination that answers COMMIT where READY belongs: the source keeps the VM. */
	memset(&w, 0, sizeof(w));
	pthread_mutex_init(&w.lock, NULL);
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	c0 = conn_plain(sv[0]);
	c1 = conn_plain(sv[1]);
	/* Pre-copy's late APPLIED acknowledgements are read past, whatever follows them. */
	CHECK_EQ(migrate_msg_send(&c1, MIG_MSG_APPLIED, "pass=2"), 0);
	CHECK_EQ(migrate_msg_send(&c1, MIG_MSG_APPLIED, "pass=3"), 0);
	CHECK_EQ(migrate_msg_send(&c1, MIG_MSG_DONE, NULL), 0);
	CHECK_EQ(handoff_source(&c0, 200, &sops, &w, &w.info, w.src_why,
				sizeof(w.src_why)), HANDOFF_HERE);
	CHECK(strstr(w.src_why, "DONE instead of READY") != NULL);
	CHECK_EQ(w.disk, LOCK_SRC);
	/* ... and told the destination so. */
	CHECK_EQ(migrate_msg_recv(&c1, 200, &type, text, sizeof(text)), 0);
	CHECK_EQ(type, MIG_MSG_ABORT);
	close(sv[0]);
	close(sv[1]);

	/* A source that sends DONE where COMMIT belongs: in doubt, not started. */
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	c0 = conn_plain(sv[0]);
	c1 = conn_plain(sv[1]);
	w.disk = LOCK_NONE;
	CHECK_EQ(migrate_msg_send(&c1, MIG_MSG_DONE, NULL), 0);
	CHECK_EQ(handoff_dest(&c0, 200, &dops, &w, w.dst_why, sizeof(w.dst_why)),
		 HANDOFF_IN_DOUBT);
	CHECK_EQ(w.disk, LOCK_NONE);
	CHECK(strstr(w.dst_why, "no COMMIT") != NULL);
	close(sv[0]);
	close(sv[1]);
	pthread_mutex_destroy(&w.lock);
}

TEST(handoff_owner_table)
{
	CHECK_EQ(handoff_state_owner(HO_SRC_WAIT_READY), HANDOFF_HERE);
	CHECK_EQ(handoff_state_owner(HO_SRC_RELEASING), HANDOFF_HERE);
	CHECK_EQ(handoff_state_owner(HO_SRC_GATE), HANDOFF_HERE);
	CHECK_EQ(handoff_state_owner(HO_SRC_COMMITTED), HANDOFF_IN_DOUBT);
	CHECK_EQ(handoff_state_owner(HO_SRC_DONE), HANDOFF_THERE);
	CHECK_EQ(handoff_state_owner(HO_DST_WAIT_COMMIT), HANDOFF_THERE);
	CHECK_EQ(handoff_state_owner(HO_DST_STARTING), HANDOFF_HERE);
	CHECK_EQ(handoff_state_owner(HO_DST_RUNNING), HANDOFF_HERE);
	CHECK_STR(mig_msg_name(MIG_MSG_ABORT), "ABORT");
	CHECK_STR(mig_msg_name(MIG_MSG_APPLIED), "APPLIED");
	CHECK_STR(mig_msg_name((enum mig_msg)99), "message 99");
}
