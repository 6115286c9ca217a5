/*
 * handoff.c - the end of a live migration on both sides (handoff.h): the
 * control messages and the two state machines that move the VM's ownership
 * from the source to the destination exactly once, or leave it in doubt
 * where neither side can know.
 *
 * The rule both machines follow: the source owns the VM until it sends
 * COMMIT; the destination owns it once it received COMMIT.  So a side gives
 * the VM up only on a message that proves the other took it (DONE; COMMIT),
 * takes it back only on one that proves the other will not run it (ERROR,
 * ABORT, or never having sent COMMIT), and otherwise stays in doubt.  A
 * source with a commit gate (ops->gate) does not take it back on an ERROR
 * after COMMIT either: whoever decided at the gate already gave the VM to
 * the destination, so only it may settle where the VM runs.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "godwit/crc32c.h"
#include "godwit/handoff.h"
#include "godwit/log.h"

#define MIG_MSG_MAGIC  0x434d5747u     /* "GWMC" */
#define MIG_MSG_HDR    8               /* magic, type, length */

/* ---- control messages ------------------------------------------------------------------ */

const char *mig_msg_name(enum mig_msg type)
{
	static __thread char buf[24];

	switch (type) {
	case MIG_MSG_ACCEPT: return "ACCEPT";
	case MIG_MSG_REFUSE: return "REFUSE";
	case MIG_MSG_READY:  return "READY";
	case MIG_MSG_ERROR:  return "ERROR";
	case MIG_MSG_COMMIT: return "COMMIT";
	case MIG_MSG_DONE:   return "DONE";
	case MIG_MSG_ABORT:  return "ABORT";
	case MIG_MSG_RESUMED: return "RESUMED";
	case MIG_MSG_APPLIED: return "APPLIED";
	}
	snprintf(buf, sizeof(buf), "message %d", (int)type);
	return buf;
}

static int msg_send_all(struct conn *c, const void *buf, size_t n)
{
	const uint8_t *p = buf;

	while (n) {
		ssize_t k = conn_send(c, p, n, 0);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? (errno == EAGAIN ? -ETIMEDOUT : -errno) : -EIO;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

int migrate_msg_send(struct conn *c, enum mig_msg type, const char *text)
{
	uint8_t buf[MIG_MSG_HDR + MIG_MSG_TEXT_MAX + 4];
	size_t n = text ? strnlen(text, MIG_MSG_TEXT_MAX) : 0;
	uint32_t magic = MIG_MSG_MAGIC, crc;
	uint16_t t = (uint16_t)type, l = (uint16_t)n;

	memcpy(buf, &magic, 4);
	memcpy(buf + 4, &t, 2);
	memcpy(buf + 6, &l, 2);
	if (n)
		memcpy(buf + MIG_MSG_HDR, text, n);
	crc = crc32c(0, buf, MIG_MSG_HDR + n);
	memcpy(buf + MIG_MSG_HDR + n, &crc, 4);
	return msg_send_all(c, buf, MIG_MSG_HDR + n + 4);
}

/* Read exactly n bytes before t0 + timeout_ms. */
static int msg_recv_all(struct conn *c, void *buf, size_t n, const struct timespec *t0, int timeout_ms)
{
	uint8_t *p = buf;

	while (n) {
		int left = timeout_ms - (int)ms_since(t0);
		ssize_t k;
		int r;

		if (left <= 0)
			return -ETIMEDOUT;
		r = conn_wait_input(c, left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		k = conn_recv(c, p, n, MSG_DONTWAIT);
		if (k < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (k < 0)
			return errno == ECONNRESET || errno == EPIPE ? -ECONNRESET : -errno;
		if (k == 0)
			return -ECONNRESET;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

int migrate_msg_recv(struct conn *c, int timeout_ms, enum mig_msg *type, char *text, size_t len)
{
	uint8_t buf[MIG_MSG_HDR + MIG_MSG_TEXT_MAX + 4];
	uint32_t magic, crc;
	uint16_t t, l;
	struct timespec t0;
	int ret;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = msg_recv_all(c, buf, MIG_MSG_HDR, &t0, timeout_ms);
	if (ret)
		return ret;
	memcpy(&magic, buf, 4);
	memcpy(&t, buf + 4, 2);
	memcpy(&l, buf + 6, 2);
	if (magic != MIG_MSG_MAGIC || l > MIG_MSG_TEXT_MAX || t < MIG_MSG_ACCEPT || t > MIG_MSG_APPLIED)
		return -EBADMSG;
	ret = msg_recv_all(c, buf + MIG_MSG_HDR, (size_t)l + 4, &t0, timeout_ms);
	if (ret)
		return ret;
	memcpy(&crc, buf + MIG_MSG_HDR + l, 4);
	if (crc != crc32c(0, buf, MIG_MSG_HDR + (size_t)l))
		return -EBADMSG;
	/* Printable text only: it ends up in logs and error messages. */
	for (unsigned int i = 0; i < l; i++)
		if (buf[MIG_MSG_HDR + i] < 0x20 || buf[MIG_MSG_HDR + i] > 0x7e)
			buf[MIG_MSG_HDR + i] = '?';
	*type = (enum mig_msg)t;
	if (len) {
		size_t n = MIN((size_t)l, len - 1);

		memcpy(text, buf + MIG_MSG_HDR, n);
		text[n] = '\0';
	}
	return 0;
}

/* ---- states ------------------------------------------------------------------------------ */

enum handoff_result handoff_state_owner(enum handoff_state st)
{
	switch (st) {
	case HO_SRC_WAIT_READY:
	case HO_SRC_RELEASING:
	case HO_SRC_GATE:
	case HO_DST_STARTING:
	case HO_DST_RUNNING:
		return HANDOFF_HERE;
	case HO_SRC_DONE:
	case HO_DST_WAIT_COMMIT:
		return HANDOFF_THERE;
	case HO_SRC_COMMITTED:
		break;
	}
	return HANDOFF_IN_DOUBT;
}

const char *handoff_state_name(enum handoff_state st)
{
	switch (st) {
	case HO_SRC_WAIT_READY:  return "waiting for READY";
	case HO_SRC_RELEASING:   return "releasing";
	case HO_SRC_GATE:        return "at the commit gate";
	case HO_SRC_COMMITTED:   return "committed";
	case HO_SRC_DONE:        return "done";
	case HO_DST_WAIT_COMMIT: return "waiting for COMMIT";
	case HO_DST_STARTING:    return "starting";
	case HO_DST_RUNNING:     return "running";
	}
	return "?";
}

const char *handoff_result_name(enum handoff_result r)
{
	switch (r) {
	case HANDOFF_HERE:     return "here";
	case HANDOFF_THERE:    return "there";
	case HANDOFF_IN_DOUBT: return "in doubt";
	}
	return "?";
}

/* What a failed receive means, for a message. */
static const char *recv_err(int ret)
{
	switch (ret) {
	case -ECONNRESET: return "the connection was closed";
	case -ETIMEDOUT:  return "timed out";
	case -EBADMSG:    return "not a control message";
	}
	return strerror(-ret);
}

/* ---- source ------------------------------------------------------------------------------ */

static void src_state(const struct handoff_src_ops *ops, void *opaque, enum handoff_state st)
{
	if (ops->state)
		ops->state(opaque, st);
}

/* Give up before COMMIT: tell the destination (best effort), keep the VM. */
static enum handoff_result src_abort(struct conn *c, const char *why)
{
	int ret = migrate_msg_send(c, MIG_MSG_ABORT, why);

	if (ret)
		log_debug("migrate: ABORT not sent: %s", strerror(-ret));
	return HANDOFF_HERE;
}

enum handoff_result handoff_source(struct conn *c, int wait_ms, const struct handoff_src_ops *ops,
				   void *opaque, struct handoff_src_info *info, char *why,
				   size_t len)
{
	char text[MIG_MSG_TEXT_MAX + 1], err[512] = "", gwhy[256] = "";
	enum handoff_gate g = HO_GATE_COMMIT;
	enum mig_msg type;
	int ret;

	memset(info, 0, sizeof(*info));
	src_state(ops, opaque, HO_SRC_WAIT_READY);
	/* Pre-copy's last APPLIED acknowledgements may still come before READY. */
	do
		ret = migrate_msg_recv(c, wait_ms, &type, text, sizeof(text));
	while (!ret && type == MIG_MSG_APPLIED);
	if (ret) {
		if (ops->cancelled && ops->cancelled(opaque)) {
			info->cancelled = true;
			snprintf(why, len, "cancelled");
			return src_abort(c, "cancelled by the operator at the source");
		}
		snprintf(why, len, "no READY from the destination: %s", recv_err(ret));
		return src_abort(c, why);
	}
	if (type == MIG_MSG_ERROR || type == MIG_MSG_REFUSE) {
		snprintf(why, len, "the destination could not load the VM: %.400s", text);
		return HANDOFF_HERE;
	}
	if (type != MIG_MSG_READY) {
		snprintf(why, len, "the destination sent %s instead of READY", mig_msg_name(type));
		return src_abort(c, why);
	}

	/* READY: until COMMIT goes, a cancel or a failure keeps the VM here for sure. */
	src_state(ops, opaque, HO_SRC_RELEASING);
	ret = ops->release(opaque, err, sizeof(err));
	if (ret) {
		char e2[256] = "";

		snprintf(why, len, "cannot hand the disks over: %s", err);
		if (ops->reacquire(opaque, e2, sizeof(e2))) {
			/* Not released, not taken back: nobody may run it on these disks. */
			snprintf(why, len, "cannot hand the disks over (%s), nor take them back "
				 "(%s)", err, e2);
			(void)src_abort(c, why);
			return HANDOFF_IN_DOUBT;
		}
		return src_abort(c, why);
	}
	if (ops->gate) {
		/* Released, not committed: the source still owns the VM while it waits. */
		src_state(ops, opaque, HO_SRC_GATE);
		g = ops->gate(opaque, gwhy, sizeof(gwhy));
		if (g == HO_GATE_ABORT) {
			info->gate_abort = true;
			if (!gwhy[0])
				snprintf(gwhy, sizeof(gwhy), "no COMMIT decided at the source's gate");
			snprintf(why, len, "aborted at the commit gate: %s", gwhy);
			if (ops->reacquire(opaque, err, sizeof(err))) {
				snprintf(why, len, "aborted at the commit gate (%s), but the disks "
					 "cannot be taken back here (%s)", gwhy, err);
				(void)src_abort(c, gwhy);
				return HANDOFF_IN_DOUBT;
			}
			return src_abort(c, gwhy);
		}
	}
	if (g == HO_GATE_CANCEL || (ops->may_commit && !ops->may_commit(opaque))) {
		info->cancelled = true;
		snprintf(why, len, "cancelled");
		if (ops->reacquire(opaque, err, sizeof(err))) {
			snprintf(why, len, "cancelled, but the disks cannot be taken back here (%s)",
				 err);
			(void)src_abort(c, "cancelled by the operator at the source");
			return HANDOFF_IN_DOUBT;
		}
		return src_abort(c, "cancelled by the operator at the source");
	}

	/* From here the destination may own the VM. */
	src_state(ops, opaque, HO_SRC_COMMITTED);
	ret = migrate_msg_send(c, MIG_MSG_COMMIT, NULL);
	if (ret) {
		snprintf(why, len, "in doubt: COMMIT could not be sent whole (%s): the "
			 "destination may have it", strerror(-ret));
		return HANDOFF_IN_DOUBT;
	}
	ret = migrate_msg_recv(c, wait_ms, &type, text, sizeof(text));
	if (!ret && type == MIG_MSG_DONE) {
		src_state(ops, opaque, HO_SRC_DONE);
		return HANDOFF_THERE;
	}
	if (!ret && type == MIG_MSG_ERROR && ops->gate) {
		/*
		 * The destination says it will not run the VM, but the gate's decider
		 * made it the owner before COMMIT: taking it back is its call, not ours.
		 */
		info->dest_refused = true;
		snprintf(why, len, "in doubt: the destination refused the VM after COMMIT "
			 "(%.300s); the disks were not taken back here", text);
		return HANDOFF_IN_DOUBT;
	}
	if (!ret && type == MIG_MSG_ERROR) {
		/* The destination says it did not and will not run the VM: ours again. */
		if (ops->reacquire(opaque, err, sizeof(err))) {
			snprintf(why, len, "in doubt: the destination could not start the VM "
				 "(%.300s), and the disks cannot be taken back here (%s)", text, err);
			return HANDOFF_IN_DOUBT;
		}
		snprintf(why, len, "the destination could not start the VM: %.400s", text);
		return HANDOFF_HERE;
	}
	snprintf(why, len, "in doubt: COMMIT was sent but the destination did not confirm "
		 "(%s)", ret ? recv_err(ret) : mig_msg_name(type));
	return HANDOFF_IN_DOUBT;
}

/* ---- destination ------------------------------------------------------------------------- */

static void dst_state(const struct handoff_dst_ops *ops, void *opaque, enum handoff_state st)
{
	if (ops->state)
		ops->state(opaque, st);
}

enum handoff_result handoff_dest(struct conn *c, int wait_ms, const struct handoff_dst_ops *ops,
				 void *opaque, char *why, size_t len)
{
	char text[MIG_MSG_TEXT_MAX + 1], err[512] = "";
	enum mig_msg type;
	int ret;

	/*
	 * A READY that cannot be sent: the source may be alive (it then resumes the
	 * VM) or dead (this is then the only copy).  Only the operator can tell.
	 */
	ret = migrate_msg_send(c, MIG_MSG_READY, NULL);
	if (ret) {
		snprintf(why, len, "in doubt: cannot tell the source we are ready (%s)",
			 strerror(-ret));
		return HANDOFF_IN_DOUBT;
	}
	dst_state(ops, opaque, HO_DST_WAIT_COMMIT);
	ret = migrate_msg_recv(c, wait_ms, &type, text, sizeof(text));
	if (!ret && type == MIG_MSG_ABORT) {
		snprintf(why, len, "the source aborted: %.400s", text[0] ? text : "no reason given");
		return HANDOFF_THERE;
	}
	if (ret || type != MIG_MSG_COMMIT) {
		snprintf(why, len, "in doubt: no COMMIT after READY (%s)",
			 ret ? recv_err(ret) : mig_msg_name(type));
		return HANDOFF_IN_DOUBT;
	}
	/* COMMIT: the VM is ours, unless we say ERROR before running it. */
	dst_state(ops, opaque, HO_DST_STARTING);
	ret = ops->commit(opaque, err, sizeof(err));
	if (ret) {
		snprintf(why, len, "cannot start the VM at COMMIT: %s", err);
		ret = migrate_msg_send(c, MIG_MSG_ERROR, err);
		if (ret) {
			/* The source cannot learn that the VM is not running here. */
			snprintf(why, len, "in doubt: cannot start the VM at COMMIT (%s), and the "
				 "source did not hear it (%s)", err, strerror(-ret));
			return HANDOFF_IN_DOUBT;
		}
		return HANDOFF_THERE;
	}
	return HANDOFF_HERE;
}

int handoff_dest_confirm(struct conn *c)
{
	return migrate_msg_send(c, MIG_MSG_DONE, NULL);
}
