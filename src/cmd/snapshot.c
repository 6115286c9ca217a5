/*
 * snapshot.c - `godwit snapshot --api SOCKET --out FILE [--resume] [--live]`: ask a
 * running godwit to write its VM to FILE (PUT /api/v1/vm/snapshot,
 * docs/api.md) and print what it wrote.  A relative FILE is made absolute
 * here, against this command's working directory, since the VM's process
 * may have another, and links in its directory are resolved: the VM takes
 * only files directly in its --snapshot-dir.
 *
 * Exit codes: 0 written; 1 the VM refused or failed (its error is
 * printed) or could not be reached; 2 usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "godwit/api.h"
#include "godwit/cmd.h"
#include "godwit/common.h"


static const char snapshot_usage[] =
"usage: godwit snapshot --api SOCKET --out FILE [--resume] [--live]\n"
"\n"
"Pause the VM served at SOCKET, write its whole state (configuration, vCPUs,\n"
"devices, RAM) to FILE (mode 0600, replaced only once complete and synced),\n"
"then stop the VM (godwit run exits with status 0) or, with --resume, let it\n"
"go on.  `godwit restore --from FILE` starts it again.  FILE must be directly\n"
"in the directory the VM was started with (godwit run --snapshot-dir DIR).\n"
"\n"
"  --api SOCKET   the VM's API socket (godwit run --api SOCKET)\n"
"  --out FILE     the snapshot file (in the VM's --snapshot-dir)\n"
"  --resume       keep the VM running after the snapshot\n"
"  --live         write memory while the guest runs (dirty-tracked passes),\n"
"                 pausing it only for the last dirty pages and the state\n"
"  --json         print the API's reply as JSON\n"
"  -h, --help     show this help\n"
"\n"
"Exit status: 0 written, 1 error from the VM or no VM at SOCKET, 2 usage error.\n";

/*
 * cmd_snapshot - the `snapshot` command.
 *   argc, argv: the command line from "snapshot" on
 * Returns the exit code: 0, 1 (refused, failed, unreachable) or 2 (usage).
 */
int cmd_snapshot(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "api",    required_argument, NULL, 'a' },
		{ "out",    required_argument, NULL, 'o' },
		{ "resume", no_argument,       NULL, 'r' },
		{ "live",   no_argument,       NULL, 'l' },
		{ "json",   no_argument,       NULL, 'j' },
		{ "help",   no_argument,       NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *sock = NULL, *file = NULL;
	bool resume = false, json = false, live = false;
	char *abs = NULL, *body = NULL;
	json_t *j = NULL, *req;
	int opt, ret = 1;

	optind = 0;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (opt) {
		case 'a': sock = optarg; break;
		case 'o': file = optarg; break;
		case 'r': resume = true; break;
		case 'l': live = true; break;
		case 'j': json = true; break;
		case 'h':
			fputs(snapshot_usage, stdout);
			return 0;
		case ':':
			fprintf(stderr, "godwit: snapshot: option %s needs an argument\n",
				argv[optind - 1]);
			goto usage;
		default:
			fprintf(stderr, "godwit: snapshot: unrecognized option '%s'\n",
				argv[optind - 1]);
			goto usage;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "godwit: snapshot: unexpected argument '%s'\n", argv[optind]);
		goto usage;
	}
	if (!sock || !*sock || !file || !*file) {
		fprintf(stderr, "godwit: snapshot: --api SOCKET and --out FILE are required\n");
		goto usage;
	}
	if (file[0] == '/') {
		abs = strdup(file);
	} else {
		char cwd[PATH_MAX];

		if (!getcwd(cwd, sizeof(cwd))) {
			fprintf(stderr, "godwit: snapshot: getcwd: %s\n", strerror(errno));
			return 1;
		}
		if (asprintf(&abs, "%s/%s", cwd, file) < 0)
			abs = NULL;
	}
	/*
	 * The VM takes only files in its --snapshot-dir, named by its real path:
	 * resolve links in FILE's directory here (FILE itself may not exist).
	 */
	if (abs) {
		char *slash = strrchr(abs, '/'), *dir, *res = NULL;

		*slash = '\0';
		dir = realpath(*abs ? abs : "/", NULL);
		*slash = '/';
		if (dir && asprintf(&res, "%s%s", strcmp(dir, "/") ? dir : "", slash) >= 0) {
			free(abs);
			abs = res;
		}
		free(dir);
	}
	req = abs ? json_pack("{s:s, s:b, s:b}", "path", abs, "resume", resume,
				   "live", live) : NULL;
	body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (!body) {
		fprintf(stderr, "godwit: snapshot: out of memory\n");
		goto out;
	}
	/* No overall time-out: a large VM on a slow disk takes what it takes. */
	if (api_client_json("snapshot", sock, "PUT", "/api/v1/vm/snapshot", body, 0, &j))
		goto out;
	if (json) {
		json_dumpf(j, stdout, JSON_COMPACT | JSON_REAL_PRECISION(15));
		putchar('\n');
	} else {
		double bytes = (double)json_integer_value(json_object_get(j, "bytes"));
		double ms = json_number_value(json_object_get(j, "ms"));
		const char *state = json_string_value(json_object_get(j, "state"));
		long long passes = json_integer_value(json_object_get(j, "passes"));

		printf("snapshot %s: %.1f MiB in %.1f ms (%.0f MiB/s); %lld pass%s, paused %.1f ms%s; "
		       "VM %s\n", abs, bytes / (1 << 20), ms,
		       ms > 0 ? bytes / (1 << 20) / (ms / 1e3) : 0.0, passes, passes == 1 ? "" : "es",
		       json_number_value(json_object_get(j, "pause_ms")),
		       json_is_true(json_object_get(j, "direct")) ? ", O_DIRECT" : "",
		       state ? state : "?");
	}
	if (fflush(stdout) == EOF) {
		fprintf(stderr, "godwit: snapshot: write error on stdout: %s\n", strerror(errno));
		goto out;
	}
	ret = 0;
out:
	json_decref(j);
	free(body);
	free(abs);
	return ret;
usage:
	fprintf(stderr, "Try 'godwit snapshot --help'.\n");
	return 2;
}
