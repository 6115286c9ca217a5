/*
 * fleet_args.c - the godwit run options `godwit fleet create` stores in a
 * VM's spec: read for the VM's size (--mem, --cpus) the way godwit run reads
 * them, and refused where the agent sets them itself (--api, --name,
 * --incoming...).  The agent starts `godwit run ARGS...` with them.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/common.h"
#include "fleet.h"

/* As godwit run (run.c). */
#define FLEET_RUN_DEFAULT_MEM  (512 * MiB)
#define FLEET_RUN_MIN_MEM      (32 * MiB)
#define FLEET_RUN_MAX_CPUS     255

enum {
	FA_AGENT = 0x200,        /* set by the agent: refused */
	FA_INCOMING_ONLY,        /* only for run --incoming: refused */
	FA_OTHER_ARG,            /* godwit run options with a value, passed on */
	FA_OTHER_FLAG,           /* godwit run options without one, passed on */
};

int fleet_run_args(int argc, char **argv, uint64_t *mem, uint32_t *cpus, char *err, size_t len)
{
	/* godwit run's options (run.c, run.h RUN_SANDBOX_OPTIONS) and run --incoming's. */
	static const struct option opts[] = {
		{ "kernel",            required_argument, NULL, 'k' },
		{ "initrd",            required_argument, NULL, FA_OTHER_ARG },
		{ "cmdline",           required_argument, NULL, FA_OTHER_ARG },
		{ "mem",               required_argument, NULL, 'm' },
		{ "cpus",              required_argument, NULL, 'p' },
		{ "name",              required_argument, NULL, 'n' },
		{ "cpu-model",         required_argument, NULL, FA_OTHER_ARG },
		{ "api",               required_argument, NULL, 'a' },
		{ "disk",              required_argument, NULL, FA_OTHER_ARG },
		{ "net",               required_argument, NULL, FA_OTHER_ARG },
		{ "rng",               no_argument,       NULL, FA_OTHER_FLAG },
		{ "verbose",           no_argument,       NULL, FA_OTHER_FLAG },
		{ "help",              no_argument,       NULL, 'h' },
		{ "sandbox",           required_argument, NULL, FA_OTHER_ARG },
		{ "no-sandbox",        no_argument,       NULL, FA_OTHER_FLAG },
		{ "user",              required_argument, NULL, FA_OTHER_ARG },
		{ "snapshot-dir",      required_argument, NULL, FA_OTHER_ARG },
		{ "jail",              required_argument, NULL, FA_OTHER_ARG },
		{ "incoming",          required_argument, NULL, FA_AGENT },
		{ "overwrite",         no_argument,       NULL, FA_INCOMING_ONLY },
		{ "incoming-timeout",  required_argument, NULL, FA_INCOMING_ONLY },
		{ "incoming-min-rate", required_argument, NULL, FA_INCOMING_ONLY },
		{ "tls-dir",           required_argument, NULL, FA_INCOMING_ONLY },
		{ "tls-peer",          required_argument, NULL, FA_INCOMING_ONLY },
		{ "insecure",          no_argument,       NULL, FA_INCOMING_ONLY },
		{ NULL, 0, NULL, 0 },
	};
	char *av[argc + 2];
	bool kernel = false;
	int c, li, ret = -EINVAL;

	*mem = FLEET_RUN_DEFAULT_MEM;
	*cpus = 1;
	/* getopt wants a program name and may permute: a copy ("+": it does not). */
	av[0] = (char *)"run";
	for (int i = 0; i < argc; i++)
		av[i + 1] = argv[i];
	av[argc + 1] = NULL;
	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc + 1, av, "+:k:i:c:m:p:n:a:d:N:vh", opts, &li)) != -1) {
		char *end;
		long n;

		switch (c) {
		case 'k':
			kernel = true;
			break;
		case 'i': case 'c': case 'd': case 'N': case 'v':
		case FA_OTHER_ARG: case FA_OTHER_FLAG:
			break;
		case 'm':
			if (parse_size(optarg, mem)) {
				snprintf(err, len, "--mem %s: not a size (e.g. 512M, 2G)", optarg);
				goto out;
			}
			if (*mem < FLEET_RUN_MIN_MEM) {
				snprintf(err, len, "--mem must be at least %llu MiB",
					 FLEET_RUN_MIN_MEM >> 20);
				goto out;
			}
			if (*mem > (1ULL << 50)) {
				snprintf(err, len, "--mem %s: too large", optarg);
				goto out;
			}
			*mem = ALIGN_UP(*mem, 2 * MiB);
			break;
		case 'p':
			errno = 0;
			n = strtol(optarg, &end, 10);
			if (errno || *end || end == optarg || n < 1 || n > FLEET_RUN_MAX_CPUS) {
				snprintf(err, len, "--cpus %s: expected a number from 1 to %d", optarg,
					 FLEET_RUN_MAX_CPUS);
				goto out;
			}
			*cpus = (uint32_t)n;
			break;
		case 'n': case 'a': case FA_AGENT:
			snprintf(err, len, "%s is set by the host agent, not in a VM's options",
				 c == 'n' ? "--name" : c == 'a' ? "--api" : "--incoming");
			goto out;
		case FA_INCOMING_ONLY:
			snprintf(err, len, "--%s is for godwit run --incoming, which the host agent "
				 "starts itself", opts[li].name);
			goto out;
		case 'h':
			snprintf(err, len, "--help is not a VM option");
			goto out;
		case ':':
			snprintf(err, len, "%s needs an argument", av[optind - 1]);
			goto out;
		default:
			if (optopt && optopt < 0x100)
				snprintf(err, len, "unknown godwit run option -%c", optopt);
			else
				snprintf(err, len, "unknown godwit run option %s", av[optind - 1]);
			goto out;
		}
	}
	if (optind < argc + 1) {
		snprintf(err, len, "unexpected argument '%s' (godwit run takes only options)",
			 av[optind]);
		goto out;
	}
	if (!kernel) {
		snprintf(err, len, "--kernel is required (godwit run needs it)");
		goto out;
	}
	ret = 0;
out:
	optind = 0;
	return ret;
}
