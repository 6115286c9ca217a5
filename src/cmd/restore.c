/*
 * restore.c - `godwit restore --from FILE`: the VM a snapshot stream
 * describes, built by run_vm() and filled from the stream (snapshot.h); its
 * options are also those of `godwit run --incoming` (run_incoming.c).
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
#include "godwit/snapshot.h"
#include "godwit/virtio.h"
#include "godwit/vm.h"
#include "run.h"

/* ---- restore ------------------------------------------------------------------------ */

static const char restore_usage[] =
"usage: godwit restore --from FILE [--api SOCKET] [--disk FILE]... [--net tap=NAME]...\n"
"\n"
"Start a VM from a snapshot (godwit snapshot), on this host or another one.\n"
"The VM's configuration comes from the snapshot; only host-local settings\n"
"are given here.\n"
"\n"
"  -f, --from FILE         the snapshot; required\n"
"  -a, --api SOCKET        serve the HTTP/JSON control API on this UNIX socket\n"
"  -d, --disk FILE         the image for the snapshot's next disk, in PCI slot\n"
"                          order (repeatable; one per disk in the snapshot).\n"
"                          readonly/serial= may be repeated, and must match\n"
"  -N, --net tap=NAME      the TAP for the snapshot's next NIC (repeatable; one\n"
"                          per NIC); mac= may be repeated, and must match\n"
"  -m, --mem SIZE, -p, --cpus N, --cpu-model MODEL, --rng\n"
"                          optional checks: refused unless they match the snapshot\n"
RUN_SANDBOX_USAGE
"  -v, --verbose           debug logging\n"
"  -h, --help              this text\n"
"\n"
"Time: the guest's kvmclock resumes where the snapshot left it (no time passes\n"
"for the guest while it was stopped); see docs/cli.md.\n"
"\n"
"Exit status: as godwit run; 1 also when the snapshot is damaged, truncated,\n"
"not for this host, or an option does not match it.\n";

int restore_parse(int argc, char **argv, struct restore_args *a, bool incoming)
{
	static const struct option opts[] = {
		{ "from",      required_argument, NULL, 'f' },
		{ "incoming",  required_argument, NULL, 'I' },
		{ "overwrite", no_argument,       NULL, 'O' },
		{ "incoming-timeout",  required_argument, NULL, 'T' },
		{ "incoming-min-rate", required_argument, NULL, 'r' },
		{ "tls-dir",   required_argument, NULL, 'D' },
		{ "tls-peer",  required_argument, NULL, 'P' },
		{ "insecure",  no_argument,       NULL, 'S' },
		{ "api",       required_argument, NULL, 'a' },
		{ "disk",      required_argument, NULL, 'd' },
		{ "net",       required_argument, NULL, 'N' },
		{ "mem",       required_argument, NULL, 'm' },
		{ "cpus",      required_argument, NULL, 'p' },
		{ "cpu-model", required_argument, NULL, 'M' },
		{ "rng",       no_argument,       NULL, 'R' },
		{ "verbose",   no_argument,       NULL, 'v' },
		{ "help",      no_argument,       NULL, 'h' },
		RUN_SANDBOX_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	int c, r, li = 0;

	memset(a, 0, sizeof(*a));
	a->cmd = incoming ? "run" : "restore";
	a->timeout_s = INCOMING_DEFAULT_TIMEOUT_S;
	a->min_rate = INCOMING_DEFAULT_MIN_RATE;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":f:a:d:N:m:p:vh", opts, &li)) != -1) {
		char *end;
		long n;

		if ((c == 'f' && incoming) ||
		    ((c == 'I' || c == 'O' || c == 'T' || c == 'r' || c == 'D' || c == 'P' ||
		      c == 'S') && !incoming)) {
			log_warnx("%s: --%s is only for %s", a->cmd, opts[li].name,
				  incoming ? "godwit restore" : "godwit run --incoming");
			return -1;
		}
		r = run_parse_sandbox(c, optarg, a->cmd, &(struct run_shared_opts){
			&a->sandbox, &a->snapshot_dir, &a->fleet_etcd, &a->fleet_lease });
		if (r < 0)
			return -1;
		if (r)
			continue;
		switch (c) {
		case 'f': a->from = optarg; break;
		case 'I': a->incoming = optarg; break;
		case 'O': a->overwrite = true; break;
		case 'T':
			errno = 0;
			n = strtol(optarg, &end, 10);
			if (errno || *end || end == optarg || n < 0 || n > 86400) {
				log_warnx("run: --incoming-timeout %s: expected seconds, 0 (none) to "
					  "86400", optarg);
				return -1;
			}
			a->timeout_s = (uint32_t)n;
			break;
		case 'r':
			if (parse_size(optarg, &a->min_rate) || a->min_rate > GiB) {
				log_warnx("run: --incoming-min-rate %s: expected bytes per second, e.g. "
					  "64K, 1M, or 0 (none)", optarg);
				return -1;
			}
			break;
		case 'D': a->tls_dir = optarg; break;
		case 'P': a->tls_peer = optarg; break;
		case 'S': a->insecure = true; break;
		case 'a': a->api_path = optarg; break;
		case 'd':
		case 'N':
			if (a->nr_devices == VM_MAX_DEVICE_ARGS) {
				log_warnx("%s: at most %d --disk/--net options", a->cmd, VM_MAX_DEVICE_ARGS);
				return -1;
			}
			a->devices[a->nr_devices].kind = c == 'd' ? VM_DEV_DISK : VM_DEV_NET;
			a->devices[a->nr_devices++].spec = optarg;
			break;
		case 'm':
			if (parse_size(optarg, &a->mem)) {
				log_warnx("%s: --mem %s: not a size (e.g. 512M, 2G)", a->cmd, optarg);
				return -1;
			}
			a->mem = ALIGN_UP(a->mem, 2 * MiB);
			a->has_mem = true;
			break;
		case 'p':
			errno = 0;
			n = strtol(optarg, &end, 10);
			if (errno || *end || end == optarg || n < 1 || n > RUN_MAX_CPUS) {
				log_warnx("%s: --cpus %s: expected a number from 1 to %d", a->cmd, optarg,
					  RUN_MAX_CPUS);
				return -1;
			}
			a->cpus = (unsigned int)n;
			a->has_cpus = true;
			break;
		case 'M':
			if (cpu_model_parse(optarg, &a->model)) {
				log_warnx("%s: --cpu-model %s: expected x86-64, x86-64-v2, x86-64-v3 or host", a->cmd,
					  optarg);
				return -1;
			}
			a->has_model = true;
			break;
		case 'R': a->rng = true; break;
		case 'v': log_verbose = 1; break;
		case 'h':
			fputs(incoming ? run_usage : restore_usage, stdout);
			return 1;
		case ':':
			log_warnx("%s: %s needs an argument", a->cmd, argv[optind - 1]);
			return -1;
		default:
			log_warnx("%s: unknown option %s (see godwit %s --help; the configuration "
				  "comes from the %s)", a->cmd, argv[optind - 1], a->cmd,
				  incoming ? "stream" : "snapshot");
			return -1;
		}
	}
	if (!a->fleet_etcd != !a->fleet_lease) {
		log_warnx("%s: --fleet-etcd and --fleet-lease go together", a->cmd);
		return -1;
	}
	if (optind < argc) {
		log_warnx("%s: unexpected argument %s", a->cmd, argv[optind]);
		return -1;
	}
	if (!incoming && !a->from) {
		log_warnx("restore: --from FILE is required (see godwit restore --help)");
		return -1;
	}
	if (a->tls_peer && !a->tls_dir) {
		log_warnx("run: --tls-peer needs --tls-dir");
		return -1;
	}
	if (a->insecure && a->tls_dir) {
		log_warnx("run: --insecure and --tls-dir contradict each other (leave --insecure out)");
		return -1;
	}
	if (incoming && !a->api_path) {
		log_warnx("run: --incoming needs --api SOCKET (an in-doubt migration is settled "
			  "through it)");
		return -1;
	}
	return 0;
}

/*
 * The guest-visible options given on the command line must be the stream's.
 * Returns 0, or -1 with why in err.
 */
int restore_check(const struct restore_args *a, const struct vm_config *cfg,
			 char *err, size_t len)
{
	const char *what = a->incoming ? "VM's" : "snapshot's";

	if (a->has_mem && a->mem != cfg->mem_size) {
		snprintf(err, len, "--mem %llu MiB differs from the %s %llu MiB (leave --mem out)",
			 (unsigned long long)(a->mem >> 20), what,
			 (unsigned long long)(cfg->mem_size >> 20));
		return -1;
	}
	if (a->has_cpus && a->cpus != cfg->ncpus) {
		snprintf(err, len, "--cpus %u differs from the %s %u vCPUs (leave --cpus out)",
			 a->cpus, what, cfg->ncpus);
		return -1;
	}
	if (a->has_model && a->model != cfg->cpu_model) {
		snprintf(err, len, "--cpu-model %s differs from the %s %s (leave --cpu-model out)",
			 cpu_model_name(a->model), what, cpu_model_name(cfg->cpu_model));
		return -1;
	}
	if (a->rng && !cfg->rng) {
		snprintf(err, len, "--rng: the %s VM has no virtio-rng", a->incoming ? "incoming" :
			 "snapshot's");
		return -1;
	}
	return 0;
}

struct restore_fill {
	struct snapshot_restore *sr;
	const char *from;
};

static int run_fill_restore(struct run_ctx *ctx, void *opaque)
{
	struct restore_fill *rf = opaque;
	struct timespec t0, t1;
	char err[512] = "";
	int ret;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = snapshot_restore_load(rf->sr, &ctx->vm, err, sizeof(err));
	if (!ret) {
		ret = dev_resume_all(&ctx->vm);
		if (ret)
			snprintf(err, sizeof(err), "cannot start the devices: %s", strerror(-ret));
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (ret) {
		log_warnx("restore: %s: %s", rf->from, err);
		return ret;
	}
	log_debug("restore: %s loaded in %.1f ms", rf->from,
		  (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
	return 0;
}

/*
 * cmd_restore - `godwit restore --from FILE ...`: a VM from a snapshot,
 * then as `godwit run`.  Returns the process exit code.
 */
int cmd_restore(int argc, char **argv)
{
	struct restore_fill rf = { .sr = NULL };
	struct run_ctx *ctx;
	struct restore_args a;
	struct vm_config cfg;
	char err[512] = "";
	int fd = -1, ret, code = EXIT_ERROR;

	ret = restore_parse(argc, argv, &a, false);
	if (ret)
		return ret > 0 ? 0 : EXIT_USAGE;
	if (!run_parse_devices(a.devices, a.nr_devices))
		return EXIT_ERROR;
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return EXIT_ERROR;
	ctx->sig_fd = -1;
	rf.from = a.from;
	fd = open(a.from, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		log_warn("restore: cannot open %s", a.from);
		goto out;
	}
	if (snapshot_restore_open(fd, NULL, &rf.sr, err, sizeof(err))) {
		log_warnx("restore: %s: %s", a.from, err);
		goto out;
	}
	if (snapshot_restore_config(rf.sr, a.devices, a.nr_devices, &cfg, err, sizeof(err))) {
		log_warnx("restore: %s: %s", a.from, err);
		goto out;
	}
	if (restore_check(&a, &cfg, err, sizeof(err))) {
		log_warnx("restore: %s: %s; a restored VM keeps its configuration", a.from, err);
		goto out;
	}
	cfg.api_path = a.api_path;
	cfg.sandbox = a.sandbox;
	cfg.snapshot_dir = a.snapshot_dir;
	cfg.fleet_etcd = a.fleet_etcd;
	cfg.fleet_lease = a.fleet_lease;
	code = run_vm(ctx, &cfg, run_fill_restore, &rf);
out:
	snapshot_restore_free(rf.sr);
	if (fd >= 0)
		close(fd);
	free(ctx);
	return code;
}
