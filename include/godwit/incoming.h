/*
 * incoming.h - the destination of a live migration (`godwit run --incoming`,
 * docs/migration.md): one connection, the stream's configuration, ACCEPT or
 * REFUSE, the disks the stream carries, the load, and the hand-off
 * (handoff.h).  The caller builds and runs the VM (src/cmd/run.c); every
 * step here returns its error as text, which also goes to the source.
 *
 *	incoming_accept(addr, &params, &in, err)   listen, one connection, CONFIG
 *	snapshot_restore_config(incoming_restore(in), ...)  -> the VM's config
 *	incoming_refuse(in, why) on a mismatch, or incoming_open_disks(in, cfg, ...)
 *	create the VM, then incoming_load(in, vm, ...): ACCEPT, load, READY, COMMIT
 *	start the vCPUs (unless in doubt), incoming_started(in, vm)
 *	incoming_close(in)
 */
#ifndef GODWIT_INCOMING_H
#define GODWIT_INCOMING_H

#include "godwit/common.h"
#include "godwit/migrate.h"

struct vm;
struct vm_config;
struct snapshot_restore;
struct incoming;

#define INCOMING_DEFAULT_TIMEOUT_S  3600       /* from the connection to READY */
#define INCOMING_DEFAULT_MIN_RATE   MIG_DEFAULT_MIN_RATE  /* bytes/s while waiting on the source */
#define INCOMING_RATE_WINDOW_MS     MIG_RATE_WINDOW_MS

struct incoming_params {
	uint32_t timeout_s;          /* whole stream; 0: none */
	uint64_t min_rate;           /* bytes/s over each 10 s of waiting; 0: none */
	int handoff_ms;              /* wait for COMMIT after READY */
	bool overwrite;              /* a migrated disk may replace a non-empty file */
	/*
	 * mutual TLS; NULL: plain.  incoming_accept() owns it from the call on
	 * (even when it fails): the key is kept while a source whose connection
	 * broke may come back, and freed once the stream is whole.
	 */
	struct tls_creds *tls;
	bool insecure;               /* plain TCP beyond loopback, the operator's choice */
	/*
	 * Post-copy (postcopy.h): a userfaultfd made before the sandbox
	 * (pc_uffd_open()), or -errno why there is none (a post-copy stream is
	 * then refused before READY).  The incoming owns it.
	 */
	int uffd;
};

/*
 * incoming_accept - listen on addr until a connection brings a stream:
 * with p->tls, a peer that passes the mutual TLS handshake; then the
 * stream's header and configuration (with the watchdog of p).  A connection
 * that fails either (a stray, a wrong certificate, not a godwit stream) is
 * logged, closed and waited past, up to p->timeout_s from the listen.
 * Returns 0 and *out, or -errno with err set.
 */
struct tls_creds;
int incoming_accept(const char *addr, const struct incoming_params *p,
		    struct incoming **out, char *err, size_t len) __must_check;
struct snapshot_restore *incoming_restore(struct incoming *in);
/* Refuse the VM (REFUSE with why, before any memory moves); logged. */
void incoming_refuse(struct incoming *in, const char *why);
/*
 * incoming_open_disks - the files for the disks the stream carries (storage
 * migration): the n-th virtio-blk is cfg's n-th disk option.  0, or -errno
 * with err set (then incoming_refuse()).
 */
int incoming_open_disks(struct incoming *in, const struct vm_config *cfg, char *err,
			size_t len) __must_check;
/*
 * incoming_load - the VM is created, its devices added, not started:
 * ACCEPT, load the stream, sync the migrated disks, then the hand-off.
 * Returns 0 with *in_doubt false (the VM is ours: start the vCPUs, then
 * incoming_started()), 0 with *in_doubt true (keep it paused; the API's
 * migrate-resolve settles it), or -errno: discard the VM (err says why, and
 * the source was told or runs it).
 */
int incoming_load(struct incoming *in, struct vm *vm, bool *in_doubt, char *err,
		  size_t len) __must_check;
/*
 * incoming_stop - the VM stops (its vCPUs joined): a post-copy still under
 * way stops, and guest RAM leaves userfaultfd (a page still missing reads
 * as zeros from here: the VM is lost anyway), so that nothing, KVM's own
 * asynchronous faults included, waits on it any more.
 */
void incoming_stop(struct incoming *in);
/* The vCPUs run: DONE to the source, logged. */
void incoming_started(struct incoming *in);
/* The VM could not be built: REFUSE with why (before ACCEPT) or ERROR. */
void incoming_failed(struct incoming *in, const char *why);
/* Close the connection; migrated disk copies go if the VM was not taken. */
void incoming_close(struct incoming *in);

#endif
