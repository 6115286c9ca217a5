/*
 * dev.h - the device interface: every device can save and load its state,
 * so it is migratable by construction.  A device type that has neither
 * save/load nor an `unmigratable` reason is refused at registration.
 *
 * Life cycle: realize -> (run) -> quiesce -> save -> ... ; on the receiving
 * side: realize -> load -> resume.  quiesce() stops the device's backends
 * and drains in-flight I/O, so after vm_pause() + quiesce() of every device
 * nothing writes guest memory any more.  load() only sets state: no thread
 * may start and no request be served before resume(), which comes after
 * every device, the irqchip and the vCPUs are loaded (an interrupt raised
 * earlier reaches a LAPIC whose load then erases it) and, on a migration
 * destination, only once it owns the VM (COMMIT).  (The UART's load sets
 * KVM's line level to the saved one: the interrupt that level stands for
 * was delivered on the source and comes back with the LAPIC.)
 */
#ifndef GODWIT_DEV_H
#define GODWIT_DEV_H

#include "godwit/common.h"
#include "godwit/devspec.h"
#include "godwit/state.h"

struct vm;
struct dev;

/*
 * A device backed by a disk image that storage migration copies while the
 * guest runs (src/migration/disk.c).  track_start() begins marking every
 * block (1 << block_shift bytes) a write, discard or write-zeroes touched,
 * after the I/O completes, and makes release() keep the image's lock (the
 * image is copied, not handed over); track_take() moves the marks into
 * bitmap (OR; ((size >> block_shift) + 64) / 64 words) and returns how many
 * bits bitmap has set.  Call them from one thread; the device marks
 * concurrently.
 */
struct dev_disk_image {
	int fd;
	uint64_t size;                  /* bytes */
	const char *path;
	bool readonly;
	char serial[DISK_SERIAL_MAX + 1];
	unsigned int block_shift;
};
struct dev_disk_ops {
	void (*image)(struct dev *d, struct dev_disk_image *img);
	int (*track_start)(struct dev *d);
	void (*track_stop)(struct dev *d);
	uint64_t (*track_take)(struct dev *d, uint64_t *bitmap);
};

/*
 * A device's I/O counters, for GET /metrics (dev_ops.stats).  The device
 * keeps them with STAT_ADD (common.h); they are not guest state and never go
 * into the save/load stream (a migrated VM's counters start again at 0).
 */
enum dev_stats_kind { DEV_STATS_BLK, DEV_STATS_NET, DEV_STATS_RNG };
enum dev_blk_op {
	DEV_BLK_READ, DEV_BLK_WRITE, DEV_BLK_FLUSH, DEV_BLK_DISCARD, DEV_BLK_WRITE_ZEROES,
	DEV_BLK_GET_ID, DEV_BLK_OTHER, DEV_BLK_NR_OPS
};
/* "read", "write", "flush", "discard", "write_zeroes", "get_id", "other" */
extern const char *const dev_blk_op_names[DEV_BLK_NR_OPS];
struct dev_stats {
	enum dev_stats_kind kind;
	const char *label;       /* blk: the image's path; net: the TAP's name; rng: NULL */
	union {
		struct {
			uint64_t requests[DEV_BLK_NR_OPS];
			uint64_t read_bytes, write_bytes;
			uint64_t errors;         /* requests answered other than OK */
		} blk;
		struct {
			uint64_t rx_packets, rx_bytes, rx_dropped;
			uint64_t tx_packets, tx_bytes, tx_dropped;
		} net;
		struct {
			uint64_t requests, bytes;
		} rng;
	};
};

struct dev_ops {
	const char *name;          /* stream id; never rename, never reuse */
	uint16_t version;          /* bump when the saved layout changes */
	uint16_t min_version;      /* oldest layout load() accepts */
	const char *unmigratable;  /* non-NULL: why this device blocks migration */
	void (*reset)(struct dev *d);
	int (*quiesce)(struct dev *d);
	int (*resume)(struct dev *d);
	int (*save)(struct dev *d, struct state_out *out);
	int (*load)(struct dev *d, struct state_in *in, uint16_t version);
	/* Host resources passed between VMMs at a migration's COMMIT (may be NULL). */
	int (*release)(struct dev *d);
	int (*acquire)(struct dev *d);
	void (*destroy)(struct dev *d);
	const struct dev_disk_ops *disk; /* a disk image storage migration can copy, or NULL */
	/* Fill st with the device's counters (any thread); NULL: it keeps none. */
	void (*stats)(struct dev *d, struct dev_stats *st);
};

struct dev {
	const struct dev_ops *ops;
	uint32_t instance;         /* distinguishes several devices of one type */
	void *priv;                /* the device's own state */
	struct dev *next;
};

/*
 * dev_register - add a realized device to vm's list (in order: the order
 * devices are saved and loaded in).  Returns 0, or -EINVAL if ops lack
 * save/load and give no unmigratable reason.
 */
int dev_register(struct vm *vm, struct dev *d, const struct dev_ops *ops, void *priv,
		 uint32_t instance) __must_check;
/*
 * dev_load - d's load() with a saved state of `version`; the one place
 * versions are checked: -EPROTONOSUPPORT outside [min_version, version],
 * else load()'s result (a device's load never sees another version).
 */
int dev_load(struct dev *d, struct state_in *in, uint16_t version) __must_check;
/* The first device, or NULL; d->next walks on. */
struct dev *dev_first(struct vm *vm);
/*
 * dev_quiesce_all stops at the first error; dev_resume_all resumes every
 * device (it runs on the path that keeps a source VM going) and returns the
 * first error.
 */
int dev_quiesce_all(struct vm *vm) __must_check;
/*
 * dev_release_all - every device lets go of what another VMM must take over
 * (disk locks, after flushing), for a migration source about to COMMIT;
 * dev_acquire_all - takes it (the destination at COMMIT, or the source
 * running the VM again).  Both go on past a failure and return the first.
 */
int dev_release_all(struct vm *vm) __must_check;
int dev_acquire_all(struct vm *vm) __must_check;
/* Destroy every device with a destroy op; before guest RAM goes away. */
void dev_destroy_all(struct vm *vm);
int dev_resume_all(struct vm *vm) __must_check;

#endif
