/*
 * run.c - `godwit run`: parse the configuration, build the VM (memory,
 * vCPUs, platform devices, the PCI devices), fill it with ACPI tables and the
 * kernel, and run the event loop (console input, signals, the API) until the
 * VM stops.  run_vm() does everything but the filling for restore.c and
 * run_incoming.c too.  Returns the documented exit code (common.h,
 * docs/cli.md).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
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
#include "godwit/guard.h"
#include "godwit/incoming.h"
#include "godwit/layout.h"
#include "godwit/log.h"
#include "godwit/loop.h"
#include "godwit/migrate.h"
#include "godwit/sandbox.h"
#include "godwit/snapshot.h"
#include "godwit/tls.h"
#include "godwit/virtio.h"
#include "godwit/vm.h"
#include "run.h"

#define RUN_DEFAULT_MEM   (512 * MiB)
#define RUN_MIN_MEM       (32 * MiB)
#define CONSOLE_ESCAPE    0x01   /* Ctrl-A, then 'x' quits, Ctrl-A again sends one */

const char run_usage[] =
"usage: godwit run --kernel FILE [options]\n"
"       godwit run --incoming tcp:HOST:PORT|unix:PATH --api SOCKET\n"
"                  [--disk FILE]... [--net tap=NAME]... [--mem, --cpus, ... to check]\n"
"\n"
"Boot a VM from a Linux bzImage or an ELF with a PVH entry note; or, with\n"
"--incoming, wait for a live migration (godwit migrate) and run the VM it\n"
"brings: its configuration comes from the source, only host-local options\n"
"are given (as for godwit restore; guest options given must match), and\n"
"--api is required (an in-doubt migration is settled through it).  A\n"
"connection that fails the TLS handshake or brings no godwit stream is\n"
"logged and closed, and the wait goes on.\n"
"\n"
"  -k, --kernel FILE       kernel image (bzImage or PVH ELF); required\n"
"  -i, --initrd FILE       initial ramdisk\n"
"  -c, --cmdline STR       kernel command line (default: \"console=ttyS0\" for a\n"
"                          bzImage, empty for a PVH ELF)\n"
"  -m, --mem SIZE          guest RAM, e.g. 512M, 8G (default 512M, minimum 32M);\n"
"                          refused if the host has less available\n"
"  -p, --cpus N            vCPUs, 1-255 (default 1; limited by the host's KVM)\n"
"  -n, --name NAME         VM name; its UUID is derived from it (default: a random\n"
"                          UUID, and a name made from it)\n"
"      --cpu-model MODEL   x86-64, x86-64-v2, x86-64-v3 or host (default x86-64:\n"
"                          the baseline every x86-64 host offers, so the VM can\n"
"                          migrate anywhere; host passes everything through)\n"
"  -a, --api SOCKET        serve the HTTP/JSON control API on this UNIX socket\n"
"      --incoming ADDR     wait for a live migration instead of booting (above;\n"
"                          docs/migration.md)\n"
"      --overwrite         with --incoming: a disk image the source sends\n"
"                          (migrate --with-disks) may replace a non-empty --disk\n"
"                          file (by default only a new or empty one is taken)\n"
"      --incoming-timeout S  with --incoming: a source must connect within S\n"
"                          seconds, and its whole stream arrive within S\n"
"                          seconds of its connection (default 3600; 0: no limit)\n"
"      --tls-dir DIR       with --incoming: mutual TLS 1.3 with DIR/ca.pem,\n"
"                          DIR/cert.pem and DIR/key.pem; only a source whose\n"
"                          certificate that CA signed gets in\n"
"      --tls-peer NAME     with --tls-dir: the source's certificate must name\n"
"                          NAME (subject alternative name or common name)\n"
"      --insecure          with --incoming tcp: beyond loopback: accept plain\n"
"                          TCP (anyone who reaches the port can send a VM); by\n"
"                          default that needs --tls-dir\n"
"      --incoming-min-rate RATE  with --incoming: in every 10 s spent waiting\n"
"                          on the source, at least 10 x RATE bytes must come\n"
"                          (default 64K per second; 0: no minimum); a peer\n"
"                          silent for 10 s always fails\n"
"  -d, --disk FILE[,readonly][,serial=ID]\n"
"                          a virtio-blk disk on a raw image (repeatable)\n"
"  -N, --net tap=NAME[,mac=MAC]\n"
"                          a virtio-net NIC on a TAP device, created if absent\n"
"                          (repeatable; default MAC derived from the VM's UUID)\n"
"      --rng               a virtio-rng entropy device fed from getrandom()\n"
RUN_SANDBOX_USAGE
"  -v, --verbose           debug logging (unhandled ports, ...)\n"
"  -h, --help              this text\n"
"\n"
"The serial console (COM1) is on stdin/stdout; on a terminal it is in raw\n"
"mode and Ctrl-A x quits.\n"
"\n"
"Exit status: 0 guest powered off or API shutdown, 1 could not start,\n"
"2 usage error, 3 guest reboot, 4 guest triple fault, 5 internal error,\n"
"6 migrated away, 7 stopped by the console escape or a signal.\n";

static int read_file(const char *what, const char *path, uint8_t **data, size_t *size)
{
	struct stat st;
	uint8_t *buf;
	size_t done = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		log_warn("cannot open %s %s", what, path);
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		log_warnx("%s %s is not a regular file", what, path);
		close(fd);
		return -1;
	}
	if (st.st_size == 0) {
		log_warnx("%s %s is empty", what, path);
		close(fd);
		return -1;
	}
	buf = malloc((size_t)st.st_size);
	if (!buf) {
		log_warnx("%s %s: out of memory", what, path);
		close(fd);
		return -1;
	}
	while (done < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + done, (size_t)st.st_size - done);

		if (n <= 0) {
			log_warn("cannot read %s %s", what, path);
			free(buf);
			close(fd);
			return -1;
		}
		done += (size_t)n;
	}
	close(fd);
	*data = buf;
	*size = done;
	return 0;
}

/*
 * A stable UUID from the VM's name (FNV-1a over the name, twice with
 * different bases, formatted as an RFC 9562 version-8 UUID), so defaults
 * derived from it (MAC addresses) survive restarts and migrations.
 */
static void uuid_from_name(const char *name, uint8_t uuid[16])
{
	uint64_t h[2] = { 0xcbf29ce484222325ULL, 0x84222325cbf29ce4ULL };

	for (int k = 0; k < 2; k++)
		for (const char *p = name; *p; p++)
			h[k] = (h[k] ^ (uint8_t)*p) * 0x100000001b3ULL;
	memcpy(uuid, &h[0], 8);
	memcpy(uuid + 8, &h[1], 8);
	uuid[6] = (uint8_t)((uuid[6] & 0x0f) | 0x80);
	uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);
}

static int uuid_random(uint8_t uuid[16])
{
	if (getrandom(uuid, 16, 0) != 16)
		return -1;
	uuid[6] = (uint8_t)((uuid[6] & 0x0f) | 0x40);
	uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);
	return 0;
}

int run_parse_sandbox(int c, const char *arg, const char *cmd, const struct run_shared_opts *o)
{
	struct sandbox_opts *sb = o->sandbox;
	char err[512];

	switch (c) {
	case RUN_OPT_SANDBOX:
		if (sandbox_mode_parse(arg, &sb->mode)) {
			log_warnx("%s: --sandbox %s: expected kill, trap, log or off", cmd, arg);
			return -1;
		}
		return 1;
	case RUN_OPT_NO_SANDBOX:
		sb->mode = SANDBOX_OFF;
		return 1;
	case RUN_OPT_USER:
		if (sandbox_user_parse(arg, sb, err, sizeof(err))) {
			log_warnx("%s: %s", cmd, err);
			return -1;
		}
		return 1;
	case RUN_OPT_JAIL:
		if (arg[0] != '/') {
			log_warnx("%s: --jail %s: give an absolute path", cmd, arg);
			return -1;
		}
		sb->jail = arg;
		return 1;
	case RUN_OPT_SNAPSHOT_DIR:
		if (!*arg) {
			log_warnx("%s: --snapshot-dir must not be empty", cmd);
			return -1;
		}
		*o->snapshot_dir = arg;
		return 1;
	case RUN_OPT_FLEET_ETCD:
		if (strncmp(arg, "http://", 7)) {
			log_warnx("%s: --fleet-etcd %s: give http:// URLs", cmd, arg);
			return -1;
		}
		*o->fleet_etcd = arg;
		return 1;
	case RUN_OPT_FLEET_LEASE:
		if (fleet_lease_parse(arg, o->fleet_lease)) {
			log_warnx("%s: --fleet-lease %s: expected a lease ID (a positive decimal "
				  "number)", cmd, arg);
			return -1;
		}
		return 1;
	}
	return 0;
}

/* --disk/--net as given (kind and spec set) into their typed specs; false after saying why. */
bool run_parse_devices(struct vm_device_arg *d, unsigned int n)
{
	for (unsigned int i = 0; i < n; i++) {
		const char *spec = d[i].spec;
		enum vm_dev_kind kind = d[i].kind;
		char err[256];

		if (vm_device_arg_parse(&d[i], kind, spec, err, sizeof(err))) {
			log_warnx("%s %s: %s", vm_dev_option(kind), spec, err);
			return false;
		}
	}
	return true;
}

static int run_parse(int argc, char **argv, struct vm_config *cfg)
{
	static const struct option opts[] = {
		{ "kernel",    required_argument, NULL, 'k' },
		{ "initrd",    required_argument, NULL, 'i' },
		{ "cmdline",   required_argument, NULL, 'c' },
		{ "mem",       required_argument, NULL, 'm' },
		{ "cpus",      required_argument, NULL, 'p' },
		{ "name",      required_argument, NULL, 'n' },
		{ "cpu-model", required_argument, NULL, 'M' },
		{ "api",       required_argument, NULL, 'a' },
		{ "disk",      required_argument, NULL, 'd' },
		{ "net",       required_argument, NULL, 'N' },
		{ "rng",       no_argument,       NULL, 'R' },
		{ "verbose",   no_argument,       NULL, 'v' },
		{ "help",      no_argument,       NULL, 'h' },
		RUN_SANDBOX_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	const char *name = NULL;
	int c, r;

	memset(cfg, 0, sizeof(*cfg));
	cfg->mem_size = RUN_DEFAULT_MEM;
	cfg->ncpus = 1;
	cfg->cpu_model = CPU_MODEL_DEFAULT;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":k:i:c:m:p:n:a:d:N:vh", opts, NULL)) != -1) {
		char *end;
		long n;

		r = run_parse_sandbox(c, optarg, "run", &(struct run_shared_opts){
			&cfg->sandbox, &cfg->snapshot_dir, &cfg->fleet_etcd, &cfg->fleet_lease });
		if (r < 0)
			return -1;
		if (r)
			continue;
		switch (c) {
		case 'k': cfg->kernel = optarg; break;
		case 'i': cfg->initrd = optarg; break;
		case 'c': cfg->cmdline = optarg; break;
		case 'm':
			if (parse_size(optarg, &cfg->mem_size)) {
				log_warnx("run: --mem %s: not a size (e.g. 512M, 2G)", optarg);
				return -1;
			}
			break;
		case 'p':
			errno = 0;
			n = strtol(optarg, &end, 10);
			if (errno || *end || end == optarg || n < 1 || n > RUN_MAX_CPUS) {
				log_warnx("run: --cpus %s: expected a number from 1 to %d", optarg, RUN_MAX_CPUS);
				return -1;
			}
			cfg->ncpus = (unsigned int)n;
			break;
		case 'n': name = optarg; break;
		case 'M':
			if (cpu_model_parse(optarg, &cfg->cpu_model)) {
				log_warnx("run: --cpu-model %s: expected x86-64, x86-64-v2, x86-64-v3 or host", optarg);
				return -1;
			}
			break;
		case 'a': cfg->api_path = optarg; break;
		case 'd':
		case 'N':
			if (cfg->nr_devices == VM_MAX_DEVICE_ARGS) {
				log_warnx("run: at most %d --disk/--net options", VM_MAX_DEVICE_ARGS);
				return -1;
			}
			cfg->devices[cfg->nr_devices].kind = c == 'd' ? VM_DEV_DISK : VM_DEV_NET;
			cfg->devices[cfg->nr_devices++].spec = optarg;
			break;
		case 'R': cfg->rng = true; break;
		case 'v': log_verbose = 1; break;
		case 'h':
			fputs(run_usage, stdout);
			return 1;
		case ':':
			log_warnx("run: %s needs an argument", argv[optind - 1]);
			return -1;
		default:
			log_warnx("run: unknown option %s (see godwit run --help)", argv[optind - 1]);
			return -1;
		}
	}
	if (optind < argc) {
		log_warnx("run: unexpected argument %s", argv[optind]);
		return -1;
	}
	if (!cfg->fleet_etcd != !cfg->fleet_lease) {
		log_warnx("run: --fleet-etcd and --fleet-lease go together");
		return -1;
	}
	if (!cfg->kernel) {
		log_warnx("run: --kernel is required (see godwit run --help)");
		return -1;
	}
	if (cfg->mem_size < RUN_MIN_MEM) {
		log_warnx("run: --mem must be at least %llu MiB", RUN_MIN_MEM >> 20);
		return -1;
	}
	cfg->mem_size = ALIGN_UP(cfg->mem_size, 2 * MiB);
	if (name) {
		if (!*name || strlen(name) >= sizeof(cfg->name)) {
			log_warnx("run: --name must be 1 to %zu bytes", sizeof(cfg->name) - 1);
			return -1;
		}
		for (const char *p = name; *p; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f) {
				log_warnx("run: --name must not hold control characters");
				return -1;
			}
		if (!utf8_valid(name, strlen(name))) {
			log_warnx("run: --name is not valid UTF-8");
			return -1;
		}
		snprintf(cfg->name, sizeof(cfg->name), "%s", name);
		uuid_from_name(name, cfg->uuid);
	} else {
		if (uuid_random(cfg->uuid)) {
			log_warn("run: getrandom");
			return -1;
		}
		snprintf(cfg->name, sizeof(cfg->name), "godwit-%02x%02x%02x%02x",
			 cfg->uuid[0], cfg->uuid[1], cfg->uuid[2], cfg->uuid[3]);
	}
	return 0;
}

/* ---- console ------------------------------------------------------------------ */

static struct termios *tio_to_restore;

static void run_restore_tty(void)
{
	if (tio_to_restore)
		tcsetattr(STDIN_FILENO, TCSANOW, tio_to_restore);
}

static void run_on_stdin(struct loop *l, int fd, uint32_t events, void *opaque)
{
	struct run_ctx *ctx = opaque;
	uint8_t buf[256], out[256];
	size_t n_out = 0;
	ssize_t n = read(fd, buf, sizeof(buf));

	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		/* EOF (or an error): stop reading; the guest keeps running. */
		loop_del_fd(l, fd);
		return;
	}
	for (ssize_t i = 0; i < n; i++) {
		uint8_t ch = buf[i];

		if (ctx->escape) {
			ctx->escape = false;
			if (ch == 'x' || ch == 'X') {
				vm_request_exit(&ctx->vm, EXIT_KILLED, "console escape (Ctrl-A x)");
				return;
			}
			if (ch != CONSOLE_ESCAPE)
				continue;
		} else if (ch == CONSOLE_ESCAPE && ctx->stdin_tty) {
			ctx->escape = true;
			continue;
		}
		out[n_out++] = ch;
	}
	if (n_out)
		serial_input(&ctx->vm.dev->com1, out, n_out);
}

static void run_on_signal(struct loop *l, int fd, uint32_t events, void *opaque)
{
	struct run_ctx *ctx = opaque;
	struct signalfd_siginfo si;
	char why[64];

	if (read(fd, &si, sizeof(si)) != sizeof(si))
		return;
	snprintf(why, sizeof(why), "stopped by signal %s", strsignal((int)si.ssi_signo));
	vm_request_exit(&ctx->vm, EXIT_KILLED, why);
}

static void run_on_exit(struct loop *l, int fd, uint32_t events, void *opaque)
{
	uint64_t v;

	if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_warn("%s: eventfd", __func__);
	loop_stop(l);
}

/* ---- set-up -------------------------------------------------------------------- */

static int run_setup_acpi(struct vm *vm, uint64_t *rsdp)
{
	struct acpi_config ac;
	void *buf = vm_gpa_to_host(vm, LAYOUT_ACPI, LAYOUT_ACPI_SIZE);
	long used;

	acpi_platform_config(&ac, vm->cfg.ncpus, vm->cfg.mem_size);
	if (!buf)
		return -EFAULT;
	memset(buf, 0, LAYOUT_ACPI_SIZE);
	used = acpi_build(&ac, buf, LAYOUT_ACPI, LAYOUT_ACPI_SIZE, rsdp);
	if (used < 0) {
		log_warnx("cannot build the ACPI tables: %s", strerror((int)-used));
		return (int)used;
	}
	return 0;
}

static void *run_xlate(void *opaque, uint64_t gpa, uint64_t len)
{
	return vm_gpa_to_host(opaque, gpa, len);
}

static int run_load_kernel(struct run_ctx *ctx, uint64_t rsdp)
{
	struct vm *vm = &ctx->vm;
	enum kernel_format fmt = KERNEL_PVH_ELF;
	struct boot_entry entry;
	char err[256] = "";
	int ret;

	if (boot_probe(ctx->kernel, ctx->kernel_size, &fmt, err, sizeof(err)))
		return -ENOEXEC;  /* checked before; cannot happen */
	struct boot_config bc = {
		.kernel = ctx->kernel, .kernel_size = ctx->kernel_size,
		.initrd = ctx->initrd, .initrd_size = ctx->initrd_size,
		.cmdline = vm->cfg.cmdline ? vm->cfg.cmdline :
			   (fmt == KERNEL_BZIMAGE ? "console=ttyS0" : ""),
		.mem_size = vm->cfg.mem_size,
		.rsdp_gpa = rsdp,
		.xlate = run_xlate,
		.opaque = vm,
	};

	ret = boot_load(&bc, &entry, err, sizeof(err));
	if (ret) {
		log_warnx("cannot boot %s: %s", vm->cfg.kernel, err[0] ? err : strerror(-ret));
		return ret;
	}
	ret = vcpu_set_boot_regs(&vm->vcpus[0], &entry);
	if (ret)
		log_warnx("cannot set the boot vCPU's registers: %s", strerror(-ret));
	return ret;
}

/* The PCI devices, in command-line order from slot 1 (slot 0: host bridge). */
static int run_add_devices(struct vm *vm)
{
	unsigned int slot = 1;
	int ret = 0;

	for (unsigned int i = 0; i < vm->cfg.nr_devices && !ret; i++, slot++) {
		const struct vm_device_arg *a = &vm->cfg.devices[i];

		if (a->kind == VM_DEV_DISK)
			ret = virtio_blk_add(vm, slot, a);
		else
			ret = virtio_net_add(vm, slot, a);
		if (ret)
			log_warnx("cannot add %s %s: %s", a->kind == VM_DEV_DISK ? "--disk" : "--net",
				  a->spec, strerror(-ret));
	}
	if (!ret && vm->cfg.rng) {
		ret = virtio_rng_add(vm, slot);
		if (ret)
			log_warnx("cannot add --rng: %s", strerror(-ret));
	}
	return ret;
}

static int run_setup_loop(struct run_ctx *ctx)
{
	sigset_t set;
	int ret;

	ctx->vm.loop = ctx->loop;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	ctx->sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (ctx->sig_fd < 0)
		return -errno;
	ret = loop_add_fd(ctx->loop, ctx->sig_fd, EPOLLIN, run_on_signal, ctx);
	if (!ret)
		ret = loop_add_fd(ctx->loop, ctx->vm.exit_efd, EPOLLIN, run_on_exit, ctx);
	if (ret)
		return ret;

	/* stdin: a terminal goes raw; a pipe or file is read; /dev/null just ends. */
	ctx->stdin_tty = isatty(STDIN_FILENO);
	if (ctx->stdin_tty && tcgetattr(STDIN_FILENO, &ctx->saved_tio) == 0) {
		struct termios raw = ctx->saved_tio;

		cfmakeraw(&raw);
		tio_to_restore = &ctx->saved_tio;
		atexit(run_restore_tty);
		tcsetattr(STDIN_FILENO, TCSANOW, &raw);
	}
	if (loop_add_fd(ctx->loop, STDIN_FILENO, EPOLLIN, run_on_stdin, ctx))
		log_debug("stdin cannot be polled; console input disabled");
	return 0;
}

/* --snapshot-dir: the directory opened now (the sandbox may forbid it later), and its real path. */
static int run_open_snapshot_dir(struct run_ctx *ctx, const char *dir, char *real)
{
	struct stat st;

	ctx->snapshot_dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (ctx->snapshot_dirfd < 0 || fstat(ctx->snapshot_dirfd, &st) || !realpath(dir, real)) {
		snprintf(ctx->err, sizeof(ctx->err), "--snapshot-dir %s: %s", dir, strerror(errno));
		log_warnx("%s", ctx->err);
		return -1;
	}
	return 0;
}

int run_vm(struct run_ctx *ctx, const struct vm_config *cfg, run_fill_fn fill, void *opaque)
{
	char snapdir[PATH_MAX] = "";
	int ret, code = EXIT_ERROR;

	ctx->snapshot_dirfd = -1;
	/* --jail: from here on this is the jailed child, or the monitor that waits for it. */
	if (cfg->sandbox.jail) {
		int jcode = EXIT_ERROR;

		ret = sandbox_jail_fork(&cfg->sandbox, cfg->api_path, &jcode, ctx->err,
					sizeof(ctx->err));
		if (ret < 0) {
			log_warnx("%s", ctx->err);
			return EXIT_ERROR;
		}
		if (ret > 0) {
			ctx->err[0] = '\0';    /* the child told a migration's source itself */
			return jcode;
		}
	}
	if (cfg->snapshot_dir && run_open_snapshot_dir(ctx, cfg->snapshot_dir, snapdir))
		goto out;
	/*
	 * The API socket is claimed before KVM is touched, so a busy socket fails
	 * fast; no request is served until the loop runs.
	 */
	ctx->loop = loop_new();
	if (!ctx->loop) {
		snprintf(ctx->err, sizeof(ctx->err), "out of memory");
		goto out;
	}
	if (cfg->api_path && (ret = api_start(&ctx->vm, ctx->loop, cfg->api_path, &ctx->api))) {
		snprintf(ctx->err, sizeof(ctx->err), "cannot serve the API on %s: %s",
			 cfg->api_path, strerror(-ret));
		goto out;
	}
	if ((ret = vm_create(&ctx->vm, cfg))) {
		snprintf(ctx->err, sizeof(ctx->err), "cannot create the VM: %s", strerror(-ret));
		goto out;
	}
	ctx->vm.cfg.snapshot_dirfd = ctx->snapshot_dirfd;
	snprintf(ctx->vm.cfg.snapshot_dir_real, sizeof(ctx->vm.cfg.snapshot_dir_real), "%s", snapdir);
	if ((ret = platform_init(&ctx->vm, STDOUT_FILENO)) || (ret = run_add_devices(&ctx->vm))) {
		snprintf(ctx->err, sizeof(ctx->err), "cannot add the devices: %s", strerror(-ret));
		goto out_vm;
	}
	/*
	 * Everything privileged is open (KVM, TAPs, disks, the API's and an
	 * incoming migration's sockets, the snapshot directory), and no thread
	 * has started (a restore's device threads start in its fill): the
	 * sandbox goes on here, so the fill (reading a snapshot or a migration
	 * stream: untrusted input) already runs inside it.
	 */
	{
		char why[256];

		/* A migration may start any time: OpenSSL is ready before the sandbox closes in. */
		if (tls_init())
			log_warnx("cannot initialise OpenSSL: a migration with --tls-dir will fail");
		/* --user: the API socket is the user's, so a manager running as it can connect. */
		if (cfg->api_path && cfg->sandbox.has_user &&
		    lchown(cfg->api_path, cfg->sandbox.uid, cfg->sandbox.gid))
			log_warn("cannot give the API socket %s to uid %u", cfg->api_path,
				 (unsigned int)cfg->sandbox.uid);
		if ((ret = sandbox_apply(&cfg->sandbox, why, sizeof(why)))) {
			snprintf(ctx->err, sizeof(ctx->err), "cannot enter the sandbox: %s", why);
			log_warnx("%s", ctx->err);
			goto out_vm;
		}
	}
	/*
	 * A fleet's VM: no guest code runs until etcd renewed the host's lease.
	 * Its thread starts inside the sandbox (entered with one thread).
	 */
	if (cfg->fleet_lease && (ret = fleet_guard_start(&ctx->vm, cfg->fleet_etcd, cfg->fleet_lease,
							 &ctx->vm.guard, ctx->err,
							 sizeof(ctx->err)))) {
		log_warnx("cannot guard the host lease: %s", ctx->err);
		goto out_vm;
	}
	/* The fill says why it failed itself (an incoming one to the source too). */
	if (fill(ctx, opaque))
		goto out_vm;
	if ((ret = run_setup_loop(ctx))) {
		snprintf(ctx->err, sizeof(ctx->err), "cannot set up the event loop: %s",
			 strerror(-ret));
		log_warnx("%s", ctx->err);
		goto out_vm;
	}
	log_debug("%s: %u vCPU(s), %llu MiB, cpu model %s, TSC %u kHz", cfg->name, cfg->ncpus,
		  (unsigned long long)(cfg->mem_size >> 20), cpu_model_name(cfg->cpu_model),
		  ctx->vm.tsc_khz);

	if (!ctx->defer_start && (ret = vm_start(&ctx->vm))) {
		snprintf(ctx->err, sizeof(ctx->err), "cannot start the vCPUs: %s", strerror(-ret));
		goto out_vm;
	}
	if (ctx->started)
		ctx->started(ctx, opaque);
	sandbox_test_hook();
	ret = loop_run(ctx->loop);
	if (ret)
		vm_request_exit(&ctx->vm, EXIT_INTERNAL, "event loop failed");
	vm_request_exit(&ctx->vm, EXIT_INTERNAL, "event loop ended"); /* no-op if already stopping */
	vm_join(&ctx->vm);
	code = ctx->vm.exit_code;
	run_restore_tty();
	tio_to_restore = NULL;
	if (code == EXIT_POWEROFF)
		log_debug("%s: %s", cfg->name, ctx->vm.exit_reason);
	else
		log_warnx("%s: %s (exit status %d)", cfg->name, ctx->vm.exit_reason, code);
out_vm:
	if (ctx->stopping)
		ctx->stopping(ctx, opaque);
	/* A migration thread and the device threads stop before guest RAM is unmapped. */
	fleet_guard_stop(ctx->vm.guard);
	ctx->vm.guard = NULL;
	migrate_fini(&ctx->vm);
	dev_destroy_all(&ctx->vm);
	platform_destroy(&ctx->vm);
	vm_destroy(&ctx->vm);
out:
	if (ctx->api)
		api_stop(ctx->api);
	if (ctx->loop)
		loop_free(ctx->loop);
	if (ctx->sig_fd >= 0)
		close(ctx->sig_fd);
	if (ctx->snapshot_dirfd >= 0)
		close(ctx->snapshot_dirfd);
	return code;
}

/* run: the ACPI tables and the kernel; the images are freed once loaded. */
static int run_fill_boot(struct run_ctx *ctx, void *opaque)
{
	uint64_t rsdp = 0;
	int ret = run_setup_acpi(&ctx->vm, &rsdp);

	if (!ret)
		ret = run_load_kernel(ctx, rsdp);
	free(ctx->kernel);
	free(ctx->initrd);
	ctx->kernel = ctx->initrd = NULL;
	return ret;
}

int cmd_run(int argc, char **argv)
{
	struct run_ctx *ctx = calloc(1, sizeof(*ctx));
	struct vm_config cfg;
	int ret, code = EXIT_ERROR;

	if (!ctx)
		return EXIT_ERROR;
	for (int i = 1; i < argc && strcmp(argv[i], "--"); i++)
		if (!strcmp(argv[i], "--incoming") || !strncmp(argv[i], "--incoming=", 11)) {
			free(ctx);
			return cmd_incoming(argc, argv);
		}
	ctx->sig_fd = -1;
	ret = run_parse(argc, argv, &cfg);
	if (ret) {
		free(ctx);
		return ret > 0 ? 0 : EXIT_USAGE;
	}
	if (!run_parse_devices(cfg.devices, cfg.nr_devices)) {
		free(ctx);
		return EXIT_ERROR;
	}
	/* Everything that can be checked without KVM is checked first. */
	if (read_file("kernel", cfg.kernel, &ctx->kernel, &ctx->kernel_size))
		goto out;
	{
		enum kernel_format fmt;
		char err[256];

		if (boot_probe(ctx->kernel, ctx->kernel_size, &fmt, err, sizeof(err))) {
			log_warnx("cannot boot %s: %s", cfg.kernel, err);
			goto out;
		}
	}
	if (cfg.initrd && read_file("initrd", cfg.initrd, &ctx->initrd, &ctx->initrd_size))
		goto out;
	code = run_vm(ctx, &cfg, run_fill_boot, NULL);
out:
	free(ctx->kernel);
	free(ctx->initrd);
	free(ctx);
	return code;
}
