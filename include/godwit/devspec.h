/*
 * devspec.h - the --disk and --net options, parsed once into typed specs
 * (src/vmm/devspec.c).  `godwit run`, `restore` and `run --incoming` parse
 * their command lines with vm_device_arg_parse; a restore or a migration
 * destination parses the spec it rebuilds from the stream's options the same
 * way.  Devices, snapshots and the migration destination read only the typed
 * fields; `spec` stays for messages.
 *
 *   --disk FILE[,readonly][,serial=ID]     --net tap=NAME[,mac=MAC]
 */
#ifndef GODWIT_DEVSPEC_H
#define GODWIT_DEVSPEC_H

#include "godwit/common.h"
#include "godwit/tap.h"

#define VM_MAX_DEVICE_ARGS 16      /* --disk and --net options of one VM */
#define DISK_PATH_MAX    1024
#define DISK_SERIAL_MAX  20        /* virtio-blk's ID string, bytes */
#define DEVSPEC_OPTS_MAX 191       /* the guest-visible options: STREAM_OPTIONS_MAX */

enum vm_dev_kind { VM_DEV_DISK, VM_DEV_NET };

struct disk_spec {
	char path[DISK_PATH_MAX];
	bool readonly;
	char serial[DISK_SERIAL_MAX + 1];  /* "" if none */
};

struct vm_device_arg {
	enum vm_dev_kind kind;
	const char *spec;                  /* as given (messages) */
	/* The guest-visible options (all but the image path or tap=NAME) as given,
	 * in order: what a snapshot or a migration carries for this device. */
	char options[DEVSPEC_OPTS_MAX + 1];
	union {
		struct disk_spec disk;
		struct tap_spec net;
	};
};

/*
 * disk_spec_parse - FILE[,readonly][,serial=ID].  Commas separate options,
 * so a path cannot hold one.  Returns 0, or -EINVAL (-ENAMETOOLONG for a
 * path of DISK_PATH_MAX bytes or more) with err naming what is wrong.
 */
int disk_spec_parse(const char *spec, struct disk_spec *out, char *err, size_t len) __must_check;
/*
 * vm_device_arg_parse - spec as a --disk or --net option into a (a->spec
 * points at spec, which must outlive a).  Returns 0 or -errno with err set
 * (the option's name and spec are the caller's to add).
 */
int vm_device_arg_parse(struct vm_device_arg *a, enum vm_dev_kind kind, const char *spec,
			char *err, size_t len) __must_check;
/*
 * disk_serials_parse - "ID[,ID]..." (migrate --with-disks=, the API's
 * with_disks): at most max serials, each 1..DISK_SERIAL_MAX printable bytes,
 * none twice, into out[0..*n).  Returns 0 or -EINVAL with err set.
 */
int disk_serials_parse(const char *list, char (*out)[DISK_SERIAL_MAX + 1], unsigned int max,
		       unsigned int *n, char *err, size_t len) __must_check;
/* "--disk" or "--net". */
const char *vm_dev_option(enum vm_dev_kind kind);

#endif
