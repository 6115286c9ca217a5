/*
 * disk.h - storage migration: local disk images copied with the VM
 * (src/migration/disk.c, docs/migration.md "Storage").
 *
 * Source (the migration thread):
 *	disk_mig_select(vm, serials, n, &dm)   which disks, before anything moves
 *	disk_mig_config(dm, cfg)                    CONFIG tells the destination
 *	disk_mig_start(dm)                          dirty-block tracking on
 *	disk_mig_first_pass(dm, w, ...)             every data extent
 *	{ disk_mig_collect(dm); disk_mig_send_dirty(dm, w, ...) }   per round,
 *	                                            the last one with the VM paused
 *	disk_mig_stop(dm) (on failure), disk_mig_free(dm)
 *
 * Destination (godwit run --incoming): disk_recv_open() per migrated disk
 * before the VM is built, disk_recv_extent() per DISK section,
 * disk_recv_sync() before READY, disk_recv_close().
 */
#ifndef GODWIT_DISK_H
#define GODWIT_DISK_H

#include "godwit/common.h"
#include "godwit/devspec.h"

struct vm;
struct stream_config;
struct stream_writer;
struct disk_mig;

struct disk_mig_stats {
	uint64_t bytes;          /* data sent */
	uint64_t zero_bytes;     /* sent as ZERO extents */
	uint64_t extents;        /* DISK sections */
	uint32_t rounds;         /* passes: the first, then one per dirty pass */
};

/*
 * disk_mig_select - the VM's disks to move (devices with dev_ops.disk):
 * all (n 0) or those whose serial is one of serials[0..n) (each must be a
 * disk of the VM).  Returns 0 and *out, or -EINVAL/-ENOMEM with err set.
 */
int disk_mig_select(struct vm *vm, const char (*serials)[DISK_SERIAL_MAX + 1], unsigned int n,
		    struct disk_mig **out, char *err, size_t len) __must_check;
void disk_mig_free(struct disk_mig *dm);
/* Add the disks (instance, size) to a CONFIG.  0 or -ENOSPC. */
int disk_mig_config(const struct disk_mig *dm, struct stream_config *cfg) __must_check;
int disk_mig_start(struct disk_mig *dm) __must_check;
void disk_mig_stop(struct disk_mig *dm);
/* Called between pieces: non-zero stops the pass (cancel, pacing, VM stopping). */
typedef int (*disk_mig_check_fn)(void *opaque);
int disk_mig_first_pass(struct disk_mig *dm, struct stream_writer *w, disk_mig_check_fn check,
			void *opaque, char *err, size_t errlen) __must_check;
/* Take the blocks written since the last collect; returns the bytes pending. */
uint64_t disk_mig_collect(struct disk_mig *dm);
int disk_mig_send_dirty(struct disk_mig *dm, struct stream_writer *w, disk_mig_check_fn check,
			void *opaque, char *err, size_t errlen) __must_check;
void disk_mig_stats(const struct disk_mig *dm, struct disk_mig_stats *st);

/* ---- destination ---- */

struct disk_recv {
	uint32_t instance;
	int fd;
	uint64_t size, bytes;
	uint64_t wb_bytes;       /* bytes when writeback was last started */
	bool created;            /* this godwit made the file: removed on failure */
	char path[256];
};
/*
 * disk_recv_open - the file for a migrated disk of size bytes: created
 * (sparse), or an existing regular file emptied first if it is empty or
 * overwrite is set.  Returns 0 or -errno with err set.
 */
int disk_recv_open(struct disk_recv *d, const char *path, uint64_t size, bool overwrite,
		   char *err, size_t len) __must_check;
/* Write one extent (data NULL: zeroes, as a hole where possible).  0 or -errno. */
int disk_recv_extent(struct disk_recv *d, uint64_t off, uint64_t len, const uint8_t *data,
		     char *err, size_t errlen) __must_check;
/* Start writing back what was received (between passes); does not wait. */
void disk_recv_writeback(struct disk_recv *d);
int disk_recv_sync(struct disk_recv *d, char *err, size_t len) __must_check;
/* Close; with failed, remove the file if this godwit created it. */
void disk_recv_close(struct disk_recv *d, bool failed);

#endif
