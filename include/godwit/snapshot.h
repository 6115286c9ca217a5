/*
 * snapshot.h - the whole VM in one stream (docs/stream-format.md): writing a
 * paused VM (configuration, VM state, vCPUs, devices, RAM, EOF) to a file,
 * and restoring a VM from such a stream, here or on another host.
 *
 * Saving (loop thread):
 *	snapshot_file_create(dirfd, dir, path, &f, ...)  before pausing: a bad path costs
 *	                                      nothing; only in --snapshot-dir
 *	vm_pause(vm); dev_quiesce_all(vm);
 *	snapshot_write(vm, f.fd, &res, ...);
 *	snapshot_file_commit(&f, ...)         fdatasync + rename + directory fsync
 *	(or snapshot_file_abort(&f))
 *
 * Restoring (godwit restore, src/cmd/run.c):
 *	snapshot_restore_open(fd, &sr, ...)   header, CONFIG, CPUID vs this host
 *	snapshot_restore_config(sr, disks/nets, &cfg, ...)
 *	vm_create(cfg), platform_init, the PCI devices (as godwit run does)
 *	snapshot_restore_load(sr, vm, ...)    compat, RAM, devices, VM, vCPUs
 *	snapshot_restore_free(sr); vm_start(vm)
 *
 * Time: a restore loads kvmclock and the TSC with CPU_CLOCK_FROZEN, as QEMU
 * freezes kvmclock while a VM is stopped: the guest sees no time pass
 * between the snapshot and the restore.  Under PVM the guest's TSC is the
 * host's whatever godwit writes, so there the guest's TSC shows the gap.
 */
#ifndef GODWIT_SNAPSHOT_H
#define GODWIT_SNAPSHOT_H

#include "godwit/common.h"
#include "godwit/cpu_state.h"
#include "godwit/stream.h"
#include "godwit/vm.h"

struct snapshot_result {
	uint64_t bytes;                 /* stream bytes written */
	struct stream_ram_stats ram;    /* RAM sections, runs, pages, zero pages */
	bool direct;                    /* written with O_DIRECT */
	/* snapshot --live (snapshot_take_live); a plain snapshot: passes 1, pause_ms = ms */
	uint32_t passes;                /* passes over memory, the last one paused */
	double pause_ms;                /* the guest stopped for this long */
	double ms;                      /* the whole snapshot, file synced */
};

/*
 * snapshot_write - the whole VM as one stream on fd: CONFIG (with each
 * virtio device's guest-visible options), VM state, every vCPU, every
 * device in vm->devices order, all RAM, EOF.  The VM must be paused and its
 * devices quiesced; nothing of the VM is changed.
 *   res: filled on success (may be NULL)
 *   err: why it failed (len bytes, NUL-terminated)
 * Returns 0 or -errno (-ENOTSUP: a device is not migratable).
 */
int snapshot_write(struct vm *vm, int fd, struct snapshot_result *res,
		   char *err, size_t len) __must_check;

/* -ENOTSUP with err naming the first device that cannot be saved, or 0. */
int snapshot_check_migratable(struct vm *vm, char *err, size_t len) __must_check;
/*
 * snapshot_write_state - the VM state, every vCPU and every device as
 * sections on w (a stream begun with snapshot_config_from_vm()'s config).
 * The VM must be paused and its devices quiesced.  Returns 0 or -errno.
 */
struct stream_writer;
int snapshot_write_state(struct vm *vm, struct stream_writer *w, char *err,
			 size_t len) __must_check;

/* A snapshot file being written: a temporary file beside its final name. */
struct snapshot_file {
	int fd;
	int dirfd;               /* the snapshot directory (not owned) */
	char *path;              /* dir/name, for messages */
	const char *name;        /* inside path */
	char *tmp;               /* "NAME.tmp-PID", in the directory */
};
/*
 * snapshot_file_create - create "NAME.tmp-PID" (mode 0600, O_EXCL, not
 * through a link) in the snapshot directory dir (canonical path, NULL:
 * snapshots are off, -EPERM), open as dirfd, for a snapshot to end up at
 * path: NAME, or dir/NAME.  Anything else (another directory, a
 * subdirectory, "..") is refused, and so is an existing directory NAME.
 * Returns 0 or -errno with err set.
 */
int snapshot_file_create(int dirfd, const char *dir, const char *path, struct snapshot_file *f,
			 char *err, size_t len) __must_check;
/*
 * fdatasync, close, rename over NAME, fsync the directory (so the rename is
 * durable).  Returns 0 or -errno (the temporary is removed, unless only the
 * directory's sync failed: the snapshot is then in place but may not survive a crash).
 */
int snapshot_file_commit(struct snapshot_file *f, char *err, size_t len) __must_check;
/* Close and remove the temporary file (f may be unused or committed). */
void snapshot_file_abort(struct snapshot_file *f);

/* The VM operations a snapshot of a running VM needs (the API's, which tests replace). */
struct snapshot_vm_ops {
	int (*pause)(struct vm *vm);
	int (*resume)(struct vm *vm);
};
enum snapshot_stage { SNAPSHOT_PAUSING, SNAPSHOT_WRITING };
/*
 * snapshot_take - the whole VM into f (snapshot_file_create), in order:
 * pause the vCPUs (if was_running), quiesce the devices (nothing writes
 * guest memory or the disks after that), write the stream; with resume the
 * devices and (if was_running) the vCPUs go back to running now; sync the
 * file and rename it over its path.  After a failure the VM goes back to
 * running too.  f is committed or
 * aborted either way.  Returns 0 with *res and *ms (the time the VM was
 * stopped for), or -errno with *stage and err: a failed pause (-EBUSY: the
 * VM is stopping) leaves the VM as it was.
 */
int snapshot_take(struct vm *vm, const struct snapshot_vm_ops *ops, struct snapshot_file *f,
		  bool was_running, bool resume, struct snapshot_result *res, double *ms,
		  enum snapshot_stage *stage, char *err, size_t len) __must_check;

/*
 * snapshot_take_live - the running VM into f while it keeps running:
 * pre-copy passes into the file (dirty logging, "precopy" VM sections
 * between passes, the throttle when the guest dirties faster than the
 * disk takes), then a pause for the last dirty pages and the state; the VM
 * runs again right after them with resume, else it stays paused.  f is
 * committed or aborted; after a failure the VM runs again.  Returns 0 with
 * *res (passes, pause_ms, ms), or -errno with *stage and err.
 */
int snapshot_take_live(struct vm *vm, const struct snapshot_vm_ops *ops, struct snapshot_file *f,
		       bool resume, struct snapshot_result *res, enum snapshot_stage *stage,
		       char *err, size_t len) __must_check;

/* stream_config_from_vm() plus the virtio devices' options. */
int snapshot_config_from_vm(struct stream_config *c, const struct vm *vm) __must_check;

struct snapshot_restore;

/*
 * snapshot_restore_open - read a stream's header and CONFIG from fd and
 * check that this host's KVM offers every CPU feature the guest saw.  wd
 * (may be NULL): a watchdog on the peer for the whole stream (a migration).
 * Returns 0 and *out, or -errno with err set (naming the section):
 * -EBADMSG if fd brought no readable stream header and CONFIG.
 */
struct stream_watchdog;
int snapshot_restore_open(int fd, const struct stream_watchdog *wd,
			  struct snapshot_restore **out, char *err, size_t len) __must_check;
/* The same on a migration connection (conn.h), plain or TLS. */
struct conn;
int snapshot_restore_open_conn(const struct conn *c, const struct stream_watchdog *wd,
			       struct snapshot_restore **out, char *err, size_t len) __must_check;
/* The stream's configuration (valid until snapshot_restore_free()). */
const struct stream_config *snapshot_restore_stream_config(const struct snapshot_restore *sr);
/* The clock mode the vCPUs and the VM are loaded with (default CPU_CLOCK_FROZEN). */
void snapshot_restore_set_clock(struct snapshot_restore *sr, enum cpu_clock_mode mode);
/*
 * A migration destination able to do post-copy accepts the stream's
 * "postcopy" VM section (postcopy.h; refused as unknown otherwise);
 * snapshot_restore_postcopy() gives its payload after the load (NULL: none).
 */
void snapshot_restore_allow_postcopy(struct snapshot_restore *sr);
const uint8_t *snapshot_restore_postcopy(const struct snapshot_restore *sr, size_t *len);
/* Storage migration: DISK sections for device instance d[i].instance go to d[i]. */
struct disk_recv;
void snapshot_restore_set_disks(struct snapshot_restore *sr, struct disk_recv *d,
				unsigned int n);
/* RAM totals and stream bytes read so far (either may be NULL). */
void snapshot_restore_stats(const struct snapshot_restore *sr, struct stream_ram_stats *ram,
			    uint64_t *bytes);
/*
 * A migration's source writes a required VM section with this id (empty
 * payload) before each pre-copy round after the first: pages may be sent
 * again from there on, so a zero page must be cleared, not skipped.
 */
#define SNAPSHOT_ID_PRECOPY "precopy"
/*
 * Pre-copy that survives a broken connection (docs/migration.md,
 * "Reconnecting"): the source's first stream says, right after CONFIG, how
 * long it tries to reconnect and a random token (VM section "reconnect",
 * optional: u32 seconds, 16 token bytes).  A resumed stream is a new stream
 * on a new connection: the same CONFIG, then VM section "resume" (required:
 * the token), then pre-copy goes on.
 */
#define SNAPSHOT_ID_RECONNECT "reconnect"
#define SNAPSHOT_ID_RESUME    "resume"
/*
 * Pre-copy acknowledgements (docs/migration.md, "How far behind the
 * destination is"): a migration's source that reads MIG_MSG_APPLIED writes
 * VM section "acks" (optional, empty) right after CONFIG; the destination
 * then calls the applied hook with n - 1 at each "precopy" marker n >= 2.
 */
#define SNAPSHOT_ID_ACKS      "acks"
typedef void (*snapshot_applied_fn)(void *opaque, uint32_t pass);
void snapshot_restore_set_applied(struct snapshot_restore *sr, snapshot_applied_fn fn,
				  void *opaque);
#define SNAPSHOT_TOKEN_LEN    16
#define SNAPSHOT_RECONNECT_MAX_S 3600

struct conn;
struct stream_watchdog;
/*
 * The destination's way back after a broken connection in pre-copy: given
 * the restore, find the source's new connection and snapshot_restore_resume()
 * on it; 0 to go on loading, or -errno with err set.
 */
typedef int (*snapshot_resume_fn)(void *opaque, struct snapshot_restore *sr, char *err,
				  size_t len);
void snapshot_restore_set_resume(struct snapshot_restore *sr, snapshot_resume_fn fn,
				 void *opaque);
/* Seconds the source said it tries to reconnect (0: it does not). */
uint32_t snapshot_restore_reconnect_s(const struct snapshot_restore *sr);
/* The pre-copy rounds whole here: the instance of the last "precopy" marker read (0: none). */
uint32_t snapshot_restore_last_round(const struct snapshot_restore *sr);
/*
 * snapshot_restore_resume - take the source's new stream on c: its CONFIG
 * must be the first one's and its "resume" token the one the first stream
 * gave; loading then goes on from it.  0, or -EBADMSG/-EPERM/-ENOMEM with
 * err set (c is left to the caller either way).
 */
int snapshot_restore_resume(struct snapshot_restore *sr, const struct conn *c,
			    const struct stream_watchdog *wd, char *err, size_t len) __must_check;

/*
 * Several channels (docs/migration.md, "Channels"): a migration over N
 * connections sends, right after CONFIG of each stream, a required VM
 * section "channel": u32 index (0: the main stream, which carries
 * everything else; 1..N-1: a memory channel), u32 N (2..SNAPSHOT_MAX_CHANNELS)
 * and the migration's random 16-byte token.  A memory channel carries only
 * RAM sections and "precopy" markers, then EOF.
 */
#define SNAPSHOT_ID_CHANNEL   "channel"
#define SNAPSHOT_CHANNEL_LEN  (8 + SNAPSHOT_TOKEN_LEN)
#define SNAPSHOT_MAX_CHANNELS 16
struct snapshot_channel {
	uint32_t index, count;
	uint8_t token[SNAPSHOT_TOKEN_LEN];
};
/* Encode a "channel" payload (SNAPSHOT_CHANNEL_LEN bytes). */
void snapshot_channel_encode(const struct snapshot_channel *c, uint8_t *out);
/* Parse and check one: 0, or -EINVAL with err set. */
int snapshot_channel_parse(const uint8_t *p, size_t n, struct snapshot_channel *out, char *err,
			   size_t len) __must_check;
/*
 * The main stream's "channel" section came (before any memory): start
 * taking the other channels (fn returns 0, or -errno with err set).  At the
 * main stream's EOF, before any state is loaded, wait() must return 0:
 * every channel reached its EOF intact.  If the load fails after start(),
 * abort() stops the channels before the main stream's reader goes.
 */
struct snapshot_channel_ops {
	int (*start)(void *opaque, const struct snapshot_channel *c, char *err, size_t len);
	int (*wait)(void *opaque, char *err, size_t len);
	void (*abort)(void *opaque);
};
void snapshot_restore_set_channels(struct snapshot_restore *sr,
				   const struct snapshot_channel_ops *ops, void *opaque);
/* The main stream's channel count (1: none), once its section came. */
uint32_t snapshot_restore_channels(const struct snapshot_restore *sr);
/*
 * snapshot_restore_open_channel - a memory channel of the migration main
 * loads, on c: the stream's header, the same CONFIG as main's, and its
 * "channel" section with main's token and count and an index 1..N-1.
 * 0 with *out and *index, -EBADMSG (not a godwit stream, not a channel),
 * -EPERM (another migration's: a wrong token or count) with err set.
 */
int snapshot_restore_open_channel(const struct snapshot_restore *main, const struct conn *c,
				  const struct stream_watchdog *wd,
				  struct snapshot_restore **out, uint32_t *index, char *err,
				  size_t len) __must_check;
/* Load a memory channel opened so into vm, up to its EOF: 0, or -errno with err set. */
int snapshot_restore_load_channel(struct snapshot_restore *sr, struct vm *vm, char *err,
				  size_t len) __must_check;

/*
 * snapshot_restore_config - the vm_config that rebuilds the stream's VM:
 * vCPUs, memory, name, UUID, CPU model and, in PCI-slot order, its disks
 * and NICs, each taking the host-local part of the matching user option
 * (the n-th virtio-blk gets the n-th --disk, the n-th virtio-net the n-th
 * --net) and its guest-visible options from the stream.  A user option
 * whose guest-visible options differ from the stream's, a stream device
 * without a user option and a user option without a stream device are
 * refused.  The device specs are allocated in sr and live as long as it.
 *   user/nr_user: the --disk/--net options, in command-line order
 * Returns 0 or -EINVAL with err set.
 */
int snapshot_restore_config(struct snapshot_restore *sr, const struct vm_device_arg *user,
			    unsigned int nr_user, struct vm_config *cfg,
			    char *err, size_t len) __must_check;
/*
 * snapshot_restore_load - load the rest of the stream into vm, a VM created
 * from snapshot_restore_config() with its devices added and not started:
 * checks the VM against the stream's configuration, reads RAM into guest
 * memory and every other section into memory, verifies the EOF record,
 * then loads the devices (by name and instance), the VM state and the
 * vCPUs (CPU_CLOCK_FROZEN).  The devices are left stopped: the caller
 * starts them (dev_resume_all()) when the VM is its to run, so a migration
 * destination does no I/O before COMMIT.  On failure the VM is in an
 * unknown state: discard it.  Returns 0 or -errno with err set.
 */
int snapshot_restore_load(struct snapshot_restore *sr, struct vm *vm, char *err,
			  size_t len) __must_check;
void snapshot_restore_free(struct snapshot_restore *sr);

#endif
