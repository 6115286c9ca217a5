/*
 * main.c - the godwit command table: `godwit COMMAND [options]`.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "godwit/api.h"
#include "godwit/cmd.h"
#include "godwit/common.h"
#include "godwit/log.h"

#ifndef GODWIT_VERSION
#define GODWIT_VERSION "0.1.0"
#endif

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
};

static const struct command commands[] = {
	{ "run",      cmd_run,      "boot a VM" },
	{ "status",   cmd_status,   "show a running VM's state (through its API socket)" },
	{ "pause",    cmd_pause,    "pause a running VM's vCPUs" },
	{ "resume",   cmd_resume,   "resume a paused VM" },
	{ "shutdown", cmd_shutdown, "stop a VM (exit status 0)" },
	{ "snapshot", cmd_snapshot, "save a running VM to a file (through its API socket)" },
	{ "restore",  cmd_restore,  "start a VM from a snapshot file" },
	{ "migrate",  cmd_migrate,  "move a running VM to another godwit (run --incoming)" },
	{ "migrate-status", cmd_migrate_status, "show a VM's migration progress or outcome" },
	{ "migrate-cancel", cmd_migrate_cancel, "stop an outgoing migration; the VM stays" },
	{ "migrate-resolve", cmd_migrate_resolve, "settle an in-doubt migration (--resume|--discard)" },
	{ "migrate-resume", cmd_migrate_resume, "reconnect a post-copy migration whose link broke" },
	{ "migrate-commit", cmd_migrate_commit, "decide at a migration's commit gate (--commit|--abort)" },
	{ "report",   cmd_report,   "show a saved migration report, or draw it as an SVG timeline" },
	{ "fleet",    cmd_fleet,    "manage VMs across hosts (etcd, host agents)" },
	{ "stream-dump", cmd_stream_dump, "list a snapshot/migration stream's sections, checking it" },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: godwit COMMAND [options]\n\ncommands:\n");
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
		fprintf(f, "  %-16s %s\n", commands[i].name, commands[i].help);
	fprintf(f, "\n`godwit COMMAND --help` describes each; `godwit --version` prints the version.\n");
}

int main(int argc, char **argv)
{
	/*
	 * A peer that went away is an error to report, never a signal that
	 * kills the VMM: OpenSSL writes to the migration socket with write(),
	 * which raises SIGPIPE (everything else sends with MSG_NOSIGNAL).
	 */
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("godwit %s\n", GODWIT_VERSION);
		return 0;
	}
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].fn(argc - 1, argv + 1);
	log_warnx("unknown command '%s'", argv[1]);
	usage(stderr);
	return EXIT_USAGE;
}
