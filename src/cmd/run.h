/*
 * run.h - what `godwit run` (run.c), `godwit restore` (restore.c) and
 * `godwit run --incoming` (run_incoming.c) share: the running VM's context,
 * run_vm() that builds, fills and runs it, and the restore options (a
 * restore and a migration destination take the same ones).  Internal to
 * src/cmd.
 */
#ifndef GODWIT_CMD_RUN_H
#define GODWIT_CMD_RUN_H

#include <termios.h>

#include "godwit/cpuid.h"
#include "godwit/vm.h"

#define RUN_MAX_CPUS      255

struct api_server;
struct loop;

/*
 * Options godwit run, restore and run --incoming share: the sandbox
 * (sandbox.h) and --snapshot-dir.  Their getopt codes are above any char.
 */
enum {
	RUN_OPT_SANDBOX = 0x100,
	RUN_OPT_NO_SANDBOX,
	RUN_OPT_USER,
	RUN_OPT_SNAPSHOT_DIR,
	RUN_OPT_JAIL,
	RUN_OPT_FLEET_ETCD,
	RUN_OPT_FLEET_LEASE,
};
#define RUN_SANDBOX_OPTIONS \
	{ "sandbox",      required_argument, NULL, RUN_OPT_SANDBOX }, \
	{ "no-sandbox",   no_argument,       NULL, RUN_OPT_NO_SANDBOX }, \
	{ "user",         required_argument, NULL, RUN_OPT_USER }, \
	{ "snapshot-dir", required_argument, NULL, RUN_OPT_SNAPSHOT_DIR }, \
	{ "jail",         required_argument, NULL, RUN_OPT_JAIL }, \
	{ "fleet-etcd",   required_argument, NULL, RUN_OPT_FLEET_ETCD }, \
	{ "fleet-lease",  required_argument, NULL, RUN_OPT_FLEET_LEASE }
/* Their --help lines. */
#define RUN_SANDBOX_USAGE \
"      --snapshot-dir DIR  snapshots (godwit snapshot, PUT /vm/snapshot) may be\n" \
"                          written only as files directly in DIR; without it\n" \
"                          they are refused\n" \
"      --user UID[:GID]    run as this user (and group; default its primary\n" \
"                          one) once /dev/kvm, the TAPs and the disks are open;\n" \
"                          a name is looked up; needs root (docs/cli.md)\n" \
"      --sandbox MODE      kill (default): after set-up the process has no\n" \
"                          capabilities, no_new_privs, and a seccomp filter that\n" \
"                          kills it (SIGSYS) on a system call it does not need;\n" \
"                          trap: the same, naming the call on stderr first;\n" \
"                          log: unlisted calls allowed and logged by the kernel;\n" \
"                          off: none of it (debugging only)\n" \
"      --no-sandbox        --sandbox off\n" \
"      --jail DIR          run the VM in new PID and mount namespaces, chrooted\n" \
"                          into DIR once set up, with its parent as a monitor;\n" \
"                          paths given later (migrate's unix:PATH) are in DIR\n" \
"      --fleet-etcd URLS   with --fleet-lease: etcd's client URLs (http://)\n" \
"      --fleet-lease ID    a fleet agent's host lease (docs/fleet.md, rule 5):\n" \
"                          this process keeps it alive too, and holds the vCPUs\n" \
"                          stopped until etcd first renewed it, whenever it could\n" \
"                          not renew it for 2/3 of its TTL, and for good once\n" \
"                          etcd says it is gone (until PUT /vm/fleet-lease)\n"

/* Where run_parse_sandbox puts what it parses. */
struct run_shared_opts {
	struct sandbox_opts *sandbox;
	const char **snapshot_dir;
	const char **fleet_etcd;
	int64_t *fleet_lease;
};

/*
 * run_parse_sandbox - one of the options above (getopt's c and optarg) into
 * o's fields.  Returns 1 if c was one of them, 0 if not, -1 after
 * saying why the value is wrong (cmd: "run" or "restore", for the message).
 */
int run_parse_sandbox(int c, const char *arg, const char *cmd, const struct run_shared_opts *o);

struct run_ctx {
	struct vm vm;
	struct loop *loop;
	struct api_server *api;
	int sig_fd;
	bool stdin_tty;
	struct termios saved_tio;
	bool escape;
	uint8_t *kernel, *initrd;
	size_t kernel_size, initrd_size;
	bool defer_start;        /* filled but not started (an in-doubt incoming VM) */
	unsigned int announce_left;  /* RARP announcements still to send after a migration */
	void (*started)(struct run_ctx *ctx, void *opaque);  /* after vm_start, or NULL */
	/* before the devices and the VM are torn down (the vCPUs joined), or NULL */
	void (*stopping)(struct run_ctx *ctx, void *opaque);
	char err[512];           /* run_vm: why the VM could not be built or started */
	int snapshot_dirfd;      /* --snapshot-dir, opened by run_vm (-1: none) */
};

/*
 * Fills a created VM (devices added, not started): the kernel for run, the
 * snapshot for restore.  Returns 0, or -errno after logging why.
 */
typedef int (*run_fill_fn)(struct run_ctx *ctx, void *opaque);

/*
 * run_vm - build the VM for cfg, fill it, and run it until it stops.
 * Everything that fails before the first KVM_RUN gives EXIT_ERROR.
 * Returns the process exit code.
 */
int run_vm(struct run_ctx *ctx, const struct vm_config *cfg, run_fill_fn fill, void *opaque);
/* --disk/--net as given (kind and spec set) into their typed specs; false after saying why. */
bool run_parse_devices(struct vm_device_arg *d, unsigned int n);
extern const char run_usage[];

/* `godwit restore` and `godwit run --incoming`: their options. */
struct restore_args {
	const char *cmd;         /* "restore" or "run" (--incoming) */
	const char *from;
	const char *incoming;
	const char *api_path;
	struct vm_device_arg devices[VM_MAX_DEVICE_ARGS];
	unsigned int nr_devices;
	bool has_mem, has_cpus, has_model, rng;
	bool overwrite;          /* --incoming: a migrated disk may replace a non-empty file */
	struct sandbox_opts sandbox;
	const char *snapshot_dir;
	const char *fleet_etcd;
	int64_t fleet_lease;
	uint32_t timeout_s;      /* --incoming-timeout */
	uint64_t min_rate;       /* --incoming-min-rate */
	const char *tls_dir;     /* --incoming: --tls-dir (ca.pem, cert.pem, key.pem) */
	const char *tls_peer;    /* --tls-peer: the name the source's certificate must carry */
	bool insecure;           /* --insecure: plain TCP beyond loopback */
	uint64_t mem;
	unsigned int cpus;
	enum cpu_model model;
};

/* Parse restore's (incoming: run --incoming's) options.  0, 1 after --help, or -1. */
int restore_parse(int argc, char **argv, struct restore_args *a, bool incoming);
/* The options given against the stream's configuration: 0, or -EINVAL with err set. */
int restore_check(const struct restore_args *a, const struct vm_config *cfg, char *err, size_t len);
/* `godwit run --incoming ADDR`: the migration destination (run_incoming.c). */
int cmd_incoming(int argc, char **argv);

#endif
