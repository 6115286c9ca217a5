/*
 * incoming.c - the destination of a live migration (incoming.h,
 * docs/migration.md): the connection, ACCEPT or REFUSE, the migrated disks'
 * files, the load under a watchdog, and the destination's half of the
 * hand-off (handoff.c).  The VM itself is built and run by the caller.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "godwit/dev.h"
#include "godwit/disk.h"
#include "godwit/handoff.h"
#include "godwit/incoming.h"
#include "godwit/log.h"
#include "godwit/migrate.h"
#include "godwit/snapshot.h"
#include "godwit/stream.h"
#include "godwit/vm.h"

struct incoming {
	struct incoming_params p;
	char addr[MIG_ADDR_MAX];
	int fd;
	struct snapshot_restore *sr;
	struct disk_recv disks[STREAM_MAX_DISKS];
	unsigned int nr_disks;
	bool accepted;           /* ACCEPT sent: the source heard about the VM */
	bool taken;              /* the VM is ours, or in doubt: migrated disks stay */
	bool in_doubt;
	struct timespec t0;      /* the connection */
};

int incoming_accept(const char *addr, const struct incoming_params *p,
		    struct incoming **out, char *err, size_t len)
{
	struct stream_watchdog wd = {
		.deadline_ms = (uint64_t)p->timeout_s * 1000,
		.min_bytes = p->min_rate * (INCOMING_RATE_WINDOW_MS / 1000),
		.window_ms = INCOMING_RATE_WINDOW_MS,
	};
	struct incoming *in = calloc(1, sizeof(*in));
	int lfd = -1, ret;

	if (!in) {
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	in->p = *p;
	in->fd = -1;
	snprintf(in->addr, sizeof(in->addr), "%s", addr);
	ret = migrate_listen(addr, &lfd, err, len);
	if (ret)
		goto fail;
	log_info("waiting for an incoming migration on %s", addr);
	ret = migrate_accept(lfd, addr, &in->fd, err, len);
	if (ret) {
		close(lfd);
		goto fail;
	}
	clock_gettime(CLOCK_MONOTONIC, &in->t0);
	ret = snapshot_restore_open(in->fd, &wd, &in->sr, err, len);
	if (ret) {
		/* Told to the source here, logged once by the caller. */
		char why[512];

		snprintf(why, sizeof(why), "%s", err);
		snprintf(err, len, "incoming migration refused: %s%s", why,
			 migrate_msg_send(in->fd, MIG_MSG_REFUSE, why) ?
			 " (the source did not hear it)" : "");
		goto fail;
	}
	*out = in;
	return 0;
fail:
	incoming_close(in);
	return ret;
}

struct snapshot_restore *incoming_restore(struct incoming *in)
{
	return in->sr;
}

void incoming_refuse(struct incoming *in, const char *why)
{
	int ret = migrate_msg_send(in->fd, MIG_MSG_REFUSE, why);

	log_warnx("incoming migration refused: %s%s", why,
		  ret ? " (the source did not hear it)" : "");
}

void incoming_failed(struct incoming *in, const char *why)
{
	if (!in->accepted) {
		char text[MIG_MSG_TEXT_MAX];

		snprintf(text, sizeof(text), "the destination cannot build the VM: %s", why);
		incoming_refuse(in, text);
		return;
	}
	(void)migrate_msg_send(in->fd, MIG_MSG_ERROR, why);
	log_warnx("incoming migration failed: %s; the VM was discarded here", why);
}

int incoming_open_disks(struct incoming *in, const struct vm_config *cfg, char *err, size_t len)
{
	const struct stream_config *sc = snapshot_restore_stream_config(in->sr);

	for (unsigned int i = 0; i < sc->nr_disks; i++) {
		const struct stream_disk *sd = &sc->disks[i];
		const char *path;

		if (sd->instance < 1 || sd->instance > cfg->nr_devices ||
		    cfg->devices[sd->instance - 1].kind != VM_DEV_DISK) {
			snprintf(err, len, "the stream carries the image of device %u, which is not "
				 "a disk", sd->instance);
			return -EINVAL;
		}
		path = cfg->devices[sd->instance - 1].disk.path;
		in->disks[in->nr_disks].instance = sd->instance;
		if (disk_recv_open(&in->disks[in->nr_disks], path, sd->size, in->p.overwrite,
				   err, len))
			return -EINVAL;
		in->disks[in->nr_disks].instance = sd->instance;
		in->nr_disks++;
		log_info("incoming migration: disk %u (%llu MiB) goes to %s", sd->instance,
			 (unsigned long long)(sd->size >> 20), path);
	}
	snapshot_restore_set_disks(in->sr, in->disks, in->nr_disks);
	snapshot_restore_set_clock(in->sr, CPU_CLOCK_ADVANCE);
	return 0;
}

/* COMMIT: the disks are ours now, and only now do the devices start. */
static int in_commit(void *opaque, char *err, size_t len)
{
	struct vm *vm = opaque;
	int ret = dev_acquire_all(vm);

	if (ret) {
		snprintf(err, len, "cannot lock the disks: %s", strerror(-ret));
		return ret;
	}
	ret = dev_resume_all(vm);
	if (ret)
		snprintf(err, len, "cannot start the devices: %s", strerror(-ret));
	return ret;
}

int incoming_load(struct incoming *in, struct vm *vm, bool *in_doubt, char *err, size_t len)
{
	static const struct handoff_dst_ops ops = { .commit = in_commit };
	enum handoff_result r;
	uint64_t bytes = 0;
	char why[768];
	int ret;

	*in_doubt = false;
	in->accepted = true;
	ret = migrate_msg_send(in->fd, MIG_MSG_ACCEPT, NULL);
	if (ret) {
		snprintf(err, len, "the source went away before the memory came: %s",
			 strerror(-ret));
		log_warnx("incoming migration: %s", err);
		return ret;
	}
	ret = snapshot_restore_load(in->sr, vm, err, len);
	/* Migrated disks on stable storage before we say READY. */
	for (unsigned int i = 0; !ret && i < in->nr_disks; i++)
		ret = disk_recv_sync(&in->disks[i], err, len);
	if (ret) {
		incoming_failed(in, err);
		return ret;
	}
	snapshot_restore_stats(in->sr, NULL, &bytes);
	r = handoff_dest(in->fd, in->p.handoff_ms, &ops, vm, why, sizeof(why));
	switch (r) {
	case HANDOFF_HERE:
		in->taken = true;
		migrate_incoming_done(vm, MIG_INCOMING, in->addr, bytes, NULL);
		return 0;
	case HANDOFF_THERE:
		snprintf(err, len, "%s", why);
		log_warnx("incoming migration failed: %s; the VM was discarded here (the source "
			  "runs it)", why);
		return -ECANCELED;
	case HANDOFF_IN_DOUBT:
		break;
	}
	snprintf(err, len, "%s; the VM is loaded and paused here and may be running at the "
		 "source: check the source, then godwit migrate-resolve --resume or --discard",
		 why);
	log_warnx("incoming migration: %s", err);
	in->taken = true;
	in->in_doubt = true;
	*in_doubt = true;
	migrate_incoming_done(vm, MIG_IN_DOUBT, in->addr, bytes, err);
	return 0;
}

void incoming_started(struct incoming *in)
{
	int ret;

	if (in->in_doubt)
		return;
	ret = handoff_dest_confirm(in->fd);
	if (ret)
		log_warnx("incoming migration: the VM runs here, but the source did not hear it "
			  "(%s): it stays paused in doubt there", strerror(-ret));
	log_info("incoming migration from %s: the VM runs here (%.0f ms after the connection)",
		 in->addr, ms_since(&in->t0));
}

void incoming_close(struct incoming *in)
{
	if (!in)
		return;
	for (unsigned int i = 0; i < in->nr_disks; i++)
		disk_recv_close(&in->disks[i], !in->taken);
	snapshot_restore_free(in->sr);
	if (in->fd >= 0)
		close(in->fd);
	free(in);
}
