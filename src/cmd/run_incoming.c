/*
 * run_incoming.c - `godwit run --incoming ADDR`: the destination of a live
 * migration (docs/migration.md), built by run_vm() and filled by
 * src/migration/incoming.c; then the MAC announcements.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "godwit/acpi.h"
#include "godwit/api.h"
#include "godwit/boot.h"
#include "godwit/cmd.h"
#include "godwit/dev.h"
#include "godwit/devices.h"
#include "godwit/disk.h"
#include "godwit/incoming.h"
#include "godwit/layout.h"
#include "godwit/log.h"
#include "godwit/loop.h"
#include "godwit/migrate.h"
#include "godwit/postcopy.h"
#include "godwit/snapshot.h"
#include "godwit/tls.h"
#include "godwit/virtio.h"
#include "godwit/vm.h"
#include "run.h"

/* ---- incoming migration ------------------------------------------------------------- */

/*
 * `godwit run --incoming ADDR`: the destination of a live migration
 * (docs/migration.md).  The stream is a snapshot stream on a socket, so the
 * VM is built as by restore; around it go the control messages: ACCEPT
 * once the VM exists, READY once the whole stream is loaded, then COMMIT
 * from the source starts the vCPUs here (and DONE goes back).  Without
 * COMMIT after READY, the VM stays here paused, in doubt, for the operator.
 */
/*
 * After a migration: announce the guest's MACs 5 times, 50 ms apart growing
 * by 100 ms (as QEMU's announce-self), so bridges learn the new port even
 * if a frame is lost.
 */
#define RUN_ANNOUNCE_ROUNDS 5

static void run_announce(struct loop *l, void *opaque)
{
	struct run_ctx *ctx = opaque;
	unsigned int done;

	if (!ctx->announce_left)
		return;
	(void)virtio_pci_announce(&ctx->vm);
	ctx->announce_left--;
	done = RUN_ANNOUNCE_ROUNDS - ctx->announce_left;
	if (ctx->announce_left && loop_add_timer(l, 50 + 100 * (done - 1), run_announce, ctx) < 0)
		log_warnx("cannot schedule the next MAC announcement");
}

static void run_announce_start(struct run_ctx *ctx)
{
	ctx->announce_left = RUN_ANNOUNCE_ROUNDS;
	run_announce(ctx->loop, ctx);
}

struct run_incoming {
	struct incoming *in;
	bool in_doubt;
};

static int run_fill_incoming(struct run_ctx *ctx, void *opaque)
{
	struct run_incoming *ri = opaque;
	char err[1024];
	int ret;

	ri->in_doubt = false;
	ret = incoming_load(ri->in, &ctx->vm, &ri->in_doubt, err, sizeof(err));
	if (ret)
		return ret;
	ctx->defer_start = ri->in_doubt;
	return 0;
}

/* The vCPUs run: confirm to the source, then tell the network where the MACs are. */
static void run_incoming_started(struct run_ctx *ctx, void *opaque)
{
	struct run_incoming *ri = opaque;

	if (ri->in_doubt)
		return;
	incoming_started(ri->in);
	run_announce_start(ctx);
}

/*
 * Before teardown: a post-copy still under way lets go of guest RAM first
 * (incoming_stop()), or KVM's own pending faults on missing pages would
 * hold the VM's teardown for ever.
 */
static void run_incoming_stopping(struct run_ctx *ctx, void *opaque)
{
	struct run_incoming *ri = opaque;

	(void)ctx;
	incoming_stop(ri->in);
}

int cmd_incoming(int argc, char **argv)
{
	struct run_incoming ri = { .in = NULL };
	struct incoming_params p;
	struct run_ctx *ctx = NULL;
	struct restore_args a;
	struct vm_config cfg;
	char err[1024] = "";
	int ret, code = EXIT_ERROR;

	ret = restore_parse(argc, argv, &a, true);
	if (ret)
		return ret > 0 ? 0 : EXIT_USAGE;
	if (!run_parse_devices(a.devices, a.nr_devices))
		return EXIT_ERROR;
	if (migrate_addr_check(a.incoming, err, sizeof(err))) {
		log_warnx("run: --incoming %s", err);
		return EXIT_USAGE;
	}
	if (!a.tls_dir && !a.insecure && !migrate_addr_local(a.incoming)) {
		log_warnx("run: --incoming %s is reachable from other hosts: anyone there could send "
			  "a VM or read this one's memory; give --tls-dir DIR (mutual TLS), or "
			  "--insecure to accept that", a.incoming);
		return EXIT_USAGE;
	}
	p = (struct incoming_params){
		.timeout_s = a.timeout_s,
		.min_rate = a.min_rate,
		.handoff_ms = MIG_IO_TIMEOUT_MS,
		.overwrite = a.overwrite,
		.insecure = a.insecure,
		/* Before the sandbox and before --user drops privileges (postcopy.h). */
		.uffd = pc_uffd_open(),
	};
	if (p.uffd < 0)
		log_debug("run: no userfaultfd (%s): a post-copy migration will be refused",
			  strerror(-p.uffd));
	if (a.tls_dir && tls_creds_load_dir(a.tls_dir, a.tls_peer, true, &p.tls, err, sizeof(err))) {
		log_warnx("run: %s", err);
		if (p.uffd >= 0)
			close(p.uffd);
		return EXIT_ERROR;
	}
	/* From here the incoming owns p.uffd. */
	/* incoming_accept() owns the credentials from here (and frees the key once it is done). */
	ret = incoming_accept(a.incoming, &p, &ri.in, err, sizeof(err));
	if (ret) {
		log_warnx("run: %s", err);
		return EXIT_ERROR;
	}
	if (snapshot_restore_config(incoming_restore(ri.in), a.devices, a.nr_devices, &cfg, err,
				    sizeof(err)) ||
	    restore_check(&a, &cfg, err, sizeof(err)) ||
	    vm_host_check(&cfg, err, sizeof(err))) {
		incoming_refuse(ri.in, err);
		goto out;
	}
	if (incoming_open_disks(ri.in, &cfg, err, sizeof(err))) {
		incoming_refuse(ri.in, err);
		goto out;
	}
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx) {
		incoming_refuse(ri.in, "out of memory");
		goto out;
	}
	ctx->sig_fd = -1;
	cfg.api_path = a.api_path;
	cfg.sandbox = a.sandbox;
	cfg.snapshot_dir = a.snapshot_dir;
	cfg.fleet_etcd = a.fleet_etcd;
	cfg.fleet_lease = a.fleet_lease;
	cfg.incoming = true;
	ctx->started = run_incoming_started;
	ctx->stopping = run_incoming_stopping;
	code = run_vm(ctx, &cfg, run_fill_incoming, &ri);
	/* The VM could not be built (ACCEPT never went) or loaded: tell the source. */
	if (code == EXIT_ERROR && ctx->err[0])
		incoming_failed(ri.in, ctx->err);
out:
	incoming_close(ri.in);
	free(ctx);
	return code;
}
