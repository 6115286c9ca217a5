/*
 * migrate.c - the migration commands of the CLI (docs/migration.md): they
 * speak to the VM's API (docs/api.md).
 *
 *   godwit migrate --api SOCKET --to ADDR [...]   start, follow, report
 *   godwit migrate-status --api SOCKET [--json]   the progress, once
 *   godwit migrate-cancel --api SOCKET            stop before COMMIT
 *   godwit migrate-resolve --api SOCKET --resume|--discard
 *   godwit migrate-commit --api SOCKET --commit|--abort   decide at the gate
 *
 * Exit codes: 0 success (migrate: the VM runs on the destination); 1 the
 * VM refused, the migration failed or is in doubt, or no VM at SOCKET;
 * 2 usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "godwit/api.h"
#include "godwit/cmd.h"
#include "godwit/snapshot.h"
#include "godwit/common.h"
#include "godwit/migrate.h"
#include "godwit/tls.h"
#include "progress.h"
#include "report.h"

#define MIG_POLL_MS       50
#define MIG_REQ_TIMEOUT   10000

static const char migrate_usage[] =
"usage: godwit migrate --api SOCKET --to tcp:HOST:PORT|unix:PATH [options]\n"
"\n"
"Move the running VM served at SOCKET to the godwit waiting at the address\n"
"(godwit run --incoming ADDR --api SOCKET2 ...) while the guest runs: memory\n"
"by pre-copy rounds, then a short pause for the last pages and the CPU and\n"
"device state.  On a terminal, one progress line on stderr is redrawn in\n"
"place (phase, share of memory copied, rate, dirty rate, expected downtime,\n"
"time left for the copy under way); elsewhere one line per round.  Then a\n"
"report, with the pause broken down by phase.\n"
"Once the destination runs the VM, the source godwit exits with status 6.\n"
"\n"
"  --api SOCKET            the VM's API socket\n"
"  --to ADDR               tcp:HOST:PORT or unix:PATH of the destination\n"
"  --downtime-ms N         longest pause to aim for (default 50)\n"
"  --max-bandwidth RATE    bytes/s during pre-copy, e.g. 100M (K/M/G are powers\n"
"                          of 1024; default unlimited)\n"
"  --max-rounds N          pre-copy rounds before stopping anyway (default 30)\n"
"  --postcopy MODE         off (default), now: after the first round, run the\n"
"                          VM on the destination at once and bring the pages\n"
"                          it still lacks there (on demand first, the rest in\n"
"                          the background); auto: only once throttling reached\n"
"                          its bound and pre-copy still does not converge.\n"
"                          During post-copy the VM exists only across both\n"
"                          hosts: if either dies, it is lost (not with TLS yet)\n"
"  --compress MODE         the memory pages on the link: auto (default):\n"
"                          zstd while the link, not the CPU, is the bottleneck\n"
"                          and the pages compress (measured as it goes); zstd:\n"
"                          always; off: never\n"
"  --reconnect-s N         if the connection breaks during pre-copy, connect\n"
"                          again for up to N seconds (the VM runs on here) and\n"
"                          go on from what the destination already has,\n"
"                          sending only what it may lack; 0 (the default):\n"
"                          the migration fails at once.  Not with --with-disks.\n"
"                          In post-copy, a broken link is tried again as long\n"
"                          (the VM waits there on its missing pages), then\n"
"                          only on godwit migrate-resume\n"
"  --channels N            split the memory among N connections (1-16), each\n"
"                          with its own thread, socket and TLS session; page\n"
"                          data of a 2 MiB range always goes the same way.\n"
"                          Default: one per 4 online CPUs of this host, 1-8;\n"
"                          1 with --reconnect-s, --postcopy or --with-disks,\n"
"                          which take no more than one yet\n"
"  --no-throttle           never slow the guest down; by default, once pre-copy\n"
"                          stops converging, the vCPUs that dirty memory the\n"
"                          fastest run only part of each 10 ms slice, so that\n"
"                          all together dirty about half of what the link\n"
"                          carries (less if that is not enough)\n"
"  --min-rate RATE         the destination must take at least 10 x RATE bytes\n"
"                          in every 10 s spent waiting on it, or the migration\n"
"                          fails (default 64K per second; 0: no minimum); one\n"
"                          that takes nothing for 10 s always fails\n"
"  --with-disks[=ID,...]   copy the disk images too (all, or those with these\n"
"                          serials) while memory is copied; the destination\n"
"                          names its files with --disk (created sparse).\n"
"                          Without it, disks are shared storage: the same image\n"
"                          must be reachable there, and its lock moves at COMMIT\n"
"  --tls-dir DIR           mutual TLS 1.3 with DIR/ca.pem, DIR/cert.pem and\n"
"                          DIR/key.pem (read here and handed to the VM over\n"
"                          its API socket); the destination must present a\n"
"                          certificate that CA signed\n"
"  --tls-peer NAME         with --tls-dir: the destination's certificate must\n"
"                          name NAME (subject alternative name or common name)\n"
"  --insecure              to tcp: beyond loopback without --tls-dir: send the\n"
"                          VM in clear, unauthenticated (refused by default)\n"
"  --gate                  stop at the commit gate: once the destination has\n"
"                          loaded the VM (READY) and the disks are released,\n"
"                          wait, paused, with no time limit, in status\n"
"                          commit-wait until godwit migrate-commit --commit or\n"
"                          --abort (or migrate-cancel) decides.  The\n"
"                          destination waits for COMMIT only 10 s: decide\n"
"                          later and it is in doubt, and so is this side.\n"
"                          After COMMIT this side never takes the VM back by\n"
"                          itself: a destination that then fails leaves it\n"
"                          in doubt (dest_refused) for migrate-resolve\n"
"  --json                  print one JSON object (status, total_ms, downtime_ms,\n"
"                          setup_ms, bytes, pages, zero_pages, rounds, channels,\n"
"                          tls,\n"
"                          insecure, gate, dest_refused, error, and for a\n"
"                          timeline: history, pause_start_ms, phases_ms)\n"
"  --timeline FILE.svg     at the end (also of a failed migration, as far as\n"
"                          it got) draw the report as an SVG timeline in\n"
"                          FILE.svg (godwit report --help)\n"
"  -q, --quiet             no progress lines\n"
"  -h, --help              this text\n"
"\n"
"A failure before the hand-off leaves the VM running here.  If the link\n"
"breaks during the hand-off, both sides stay paused \"in doubt\": see\n"
"godwit migrate-resolve --help.\n"
"\n"
"Exit status: 0 the VM runs on the destination; 1 it did not move (or the\n"
"outcome is in doubt), or no VM at SOCKET; 2 usage error.\n";

static const char status_usage[] =
"usage: godwit migrate-status --api SOCKET [--json]\n"
"\n"
"Print the progress or outcome of the VM's last migration (outgoing, or the\n"
"incoming one that brought it here).\n"
"\n"
"Exit status: 0 shown, 1 no VM at SOCKET, 2 usage error.\n";

static const char cancel_usage[] =
"usage: godwit migrate-cancel --api SOCKET\n"
"\n"
"Stop the VM's outgoing migration; it keeps running here.  Refused once the\n"
"destination has been told to run the VM (COMMIT).  At the commit gate\n"
"(migrate --gate) it is an abort: the destination is told and discards it.\n"
"\n"
"Exit status: 0 cancelled, 1 nothing to cancel / too late / no VM, 2 usage error.\n";

static const char resume_usage[] =
"usage: godwit migrate-resume --api SOCKET [--to ADDR] [--json] [-q]\n"
"\n"
"A post-copy migration whose link broke (status postcopy-paused or\n"
"postcopy-failed): connect to the destination again, at ADDR if given\n"
"(tcp:HOST:PORT or unix:PATH; the destination listens on its --incoming\n"
"address), and follow it to its end as godwit migrate does.  The VM waits at\n"
"the destination on the pages only this side holds.\n"
"\n"
"  --api SOCKET   the source VM's API socket\n"
"  --to ADDR      the destination's address, if not the one migrate was given\n"
"  --json         print the final report as JSON\n"
"  -q, --quiet    no progress\n"
"\n"
"Exit status: 0 completed, 1 otherwise (no post-copy waiting, it failed),\n"
"2 usage error.\n";

static const char commit_usage[] =
"usage: godwit migrate-commit --api SOCKET --commit|--abort\n"
"\n"
"Decide for an outgoing migration waiting at its commit gate (started with\n"
"godwit migrate --gate, status commit-wait): --commit sends COMMIT, and the\n"
"destination runs the VM (the godwit at SOCKET then exits with status 6;\n"
"follow it with godwit migrate-status); --abort sends ABORT (\"the fleet did not\n"
"commit\"), takes the disks back and resumes the VM here.  If the\n"
"destination gave up waiting for COMMIT meanwhile (10 s), --commit leaves\n"
"this side in doubt: see godwit migrate-resolve --help.\n"
"\n"
"Exit status: 0 decided, 1 no migration at the gate / no VM at SOCKET, 2 usage\n"
"error.\n";

static const char resolve_usage[] =
"usage: godwit migrate-resolve --api SOCKET --resume|--discard\n"
"\n"
"Settle a migration that is in doubt on this side (the link broke during the\n"
"hand-off, so this side cannot know what the other did).  --resume runs the\n"
"VM here; --discard drops it here (that godwit exits with status 6).  Check\n"
"the other side first, and resolve one side --resume, the other --discard.\n"
"\n"
"Exit status: 0 done, 1 nothing in doubt / no VM at SOCKET, 2 usage error.\n";

/* One API request; the reply's JSON in *out (2xx) or the error printed.  0 or 1. */
static int mig_request(const char *who, const char *sock, const char *method, const char *path,
		       const char *body, json_t **out)
{
	return api_client_json(who, sock, method, path, body, MIG_REQ_TIMEOUT, out);
}

static double jnum(json_t *j, const char *k)
{
	return json_number_value(json_object_get(j, k));
}

static const char *jstr(json_t *j, const char *k)
{
	const char *s = json_string_value(json_object_get(j, k));

	return s ? s : "";
}

static void mig_print_progress(json_t *j)
{
	fprintf(stderr, "migrate: round %.0f done: sent %.1f MiB, remaining %.1f MiB, dirty rate "
		"%.1f MiB/s, bandwidth %.0f MiB/s, expected downtime %.1f ms%s\n",
		jnum(j, "rounds"), jnum(j, "bytes") / (double)MiB,
		jnum(j, "remaining_bytes") / (double)MiB, jnum(j, "dirty_rate_bps") / (double)MiB,
		jnum(j, "bandwidth_bps") / (double)MiB, jnum(j, "expected_downtime_ms"),
		json_is_true(json_object_get(j, "not_converging")) ? " (not converging)" : "");
	if (jnum(j, "throttle_budget_bps") > 0) {
		json_t *pct = json_object_get(j, "vcpu_throttle_pct");
		double most = 0;
		size_t i;
		json_t *v;

		json_array_foreach(pct, i, v)
			most = MAX(most, json_number_value(v));
		fprintf(stderr, "migrate:   throttled: the vCPUs may dirty %.1f MiB/s; the busiest "
			"sleeps %.0f%% of the time\n", jnum(j, "throttle_budget_bps") / (double)MiB,
			most);
	}
	if (json_object_get(j, "disk_bytes"))
		fprintf(stderr, "migrate:   disks: sent %.1f MiB in %.0f passes, remaining %.1f MiB, "
			"written %.1f MiB/s\n", jnum(j, "disk_bytes") / (double)MiB,
			jnum(j, "disk_rounds"), jnum(j, "disk_remaining_bytes") / (double)MiB,
			jnum(j, "disk_dirty_rate_bps") / (double)MiB);
}

/* The --json report: the fields the issue names, from the final progress. */
static void mig_print_json(json_t *p)
{
	const char *st = jstr(p, "status");
	json_t *o = json_pack("{s:s, s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:O}",
			      "status", !strcmp(st, "completed") ? "completed" :
					!strcmp(st, "in-doubt") ? "in-doubt" :
					!strcmp(st, "postcopy-failed") ? "postcopy-failed" : "failed",
			      "total_ms", json_object_get(p, "total_ms"),
			      "downtime_ms", json_object_get(p, "downtime_ms"),
			      "setup_ms", json_object_get(p, "setup_ms"),
			      "bytes", json_object_get(p, "bytes"),
			      "pages", json_object_get(p, "pages"),
			      "zero_pages", json_object_get(p, "zero_pages"),
			      "rounds", json_object_get(p, "rounds"),
			      "converged", json_object_get(p, "converged"));

	if (!o)
		return;
	if (json_object_get(p, "error"))
		json_object_set(o, "error", json_object_get(p, "error"));
	if (json_object_get(p, "to"))
		json_object_set(o, "to", json_object_get(p, "to"));
	if (json_object_get(p, "tls")) {
		json_object_set(o, "tls", json_object_get(p, "tls"));
		json_object_set(o, "insecure", json_object_get(p, "insecure"));
	}
	if (json_object_get(p, "gate")) {
		json_object_set(o, "gate", json_object_get(p, "gate"));
		json_object_set(o, "dest_refused", json_object_get(p, "dest_refused"));
	}
	if (json_object_get(p, "disk_bytes")) {
		json_object_set(o, "disk_bytes", json_object_get(p, "disk_bytes"));
		json_object_set(o, "disk_rounds", json_object_get(p, "disk_rounds"));
	}
	/* What a timeline needs: the rounds, when the pause began and its phases. */
	static const char *const extra[] = {
		"history", "pause_start_ms", "phases_ms", "dirty_tracking", "vcpu_dirty_rate_bps",
		"throttle", "reconnects", "resent_pages", "channels", "downtime_limit_ms", "switch_expected_ms",
		"over_limit", "postcopy", "postcopy_switched", "postcopy_start_ms", "postcopy_pages",
		"postcopy_requested", "postcopy_pushed", "fault_latency_median_ms",
		"fault_latency_max_ms", "postcopy_ms", "postcopy_breaks", "compress", NULL
	};

	for (unsigned int i = 0; extra[i]; i++)
		if (json_object_get(p, extra[i]))
			json_object_set(o, extra[i], json_object_get(p, extra[i]));
	json_dumpf(o, stdout, JSON_COMPACT | JSON_REAL_PRECISION(15));
	putchar('\n');
	json_decref(o);
}

/*
 * --timeline FILE: checked before the migration starts, so that a path that
 * cannot be written is said before the VM moves.  FILE is opened for
 * writing without truncating it, and removed again if this made it.
 * 0, or 1 with the error printed.
 */
static int mig_timeline_writable(const char *path)
{
	bool existed = !access(path, F_OK);
	FILE *f;

	if (!strcmp(path, "-")) {
		fprintf(stderr, "godwit: migrate: --timeline -: give a file (stdout has the "
			"report)\n");
		return 1;
	}
	f = fopen(path, "a");
	if (!f) {
		fprintf(stderr, "godwit: migrate: --timeline %s: %s\n", path, strerror(errno));
		return 1;
	}
	fclose(f);
	if (!existed)
		unlink(path);
	return 0;
}

/*
 * The live progress line: only when stderr is a terminal (not TERM=dumb).
 * Its percentage needs the VM's memory size (GET /vm); without it the line
 * shows the rest.  True if the line is to be drawn.
 */
static bool mig_live_view(struct prog_line *pl, const char *sock)
{
	const char *term = getenv("TERM");
	json_t *vm = NULL;
	double mem = 0;

	if (!isatty(STDERR_FILENO) || (term && !strcmp(term, "dumb")))
		return false;
	if (!api_client_json("migrate", sock, "GET", "/api/v1/vm", NULL, MIG_REQ_TIMEOUT, &vm))
		mem = json_number_value(json_object_get(vm, "memory_bytes"));
	json_decref(vm);
	prog_init(pl, stderr, mem);
	return true;
}

static int mig_sleep_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	return nanosleep(&ts, NULL);
}

/*
 * --tls-dir: the three PEM files, checked here (a bad one is named before
 * anything starts), into req's "tls".  0, or 1 with the error printed.
 */
static int mig_tls_json(json_t *req, const char *dir, const char *peer)
{
	static const char *const names[3] = { "ca.pem", "cert.pem", "key.pem" };
	static const char *const keys[3] = { "ca", "cert", "key" };
	char *pem[3] = { NULL, NULL, NULL }, err[512];
	struct tls_creds *c = NULL;
	json_t *t = json_object();
	int ret = 1;

	for (int i = 0; i < 3; i++)
		if (tls_read_pem(dir, names[i], &pem[i], err, sizeof(err)))
			goto out;
	if (tls_creds_from_pem(pem[0], pem[1], pem[2], peer, false, &c, err, sizeof(err))) {
		fprintf(stderr, "godwit: migrate: --tls-dir %s: %s\n", dir, err);
		ret = 2;         /* printed */
		goto out;
	}
	for (int i = 0; i < 3 && t; i++)
		json_object_set_new(t, keys[i], json_string(pem[i]));
	if (t && peer)
		json_object_set_new(t, "peer", json_string(peer));
	if (t && !json_object_set(req, "tls", t))
		ret = 0;
	else
		snprintf(err, sizeof(err), "out of memory");
out:
	if (ret == 1)
		fprintf(stderr, "godwit: migrate: %s\n", err);
	tls_creds_free(c);
	json_decref(t);
	for (int i = 0; i < 3; i++) {
		if (pem[i])
			explicit_bzero(pem[i], strlen(pem[i]));
		free(pem[i]);
	}
	return ret;
}

/*
 * Follow the progress of the migration at sock until it ends (live line or
 * a line per round), then its report (--json: JSON) and the timeline.
 * 0 if it completed, 1 otherwise.
 */
static int mig_follow(const char *sock, bool json, bool quiet, const char *timeline)
{
	struct prog_line pl;
	bool live, at_gate = false;
	json_t *p = NULL;
	double last_round = 0;
	int ret = 1, misses = 0;

	live = !quiet && mig_live_view(&pl, sock);
	/* Follow the progress until the migration ends. */
	for (;;) {
		const char *st;

		if (mig_request("migrate", sock, "GET", "/api/v1/vm/migration?release=1", NULL, &p)) {
			/*
			 * The source exits once the report was read or after a few seconds;
			 * a socket gone right after COMMIT most likely means that, but
			 * say what is known only.
			 */
			if (++misses < 3) {
				mig_sleep_ms(MIG_POLL_MS);
				continue;
			}
			if (live)
				prog_clear(&pl);
			fprintf(stderr, "godwit: migrate: lost the VM's API during the migration; "
				"check the destination\n");
			if (timeline)
				fprintf(stderr, "godwit: migrate: no timeline written: no final report\n");
			goto out;
		}
		misses = 0;
		st = jstr(p, "status");
		if (jnum(p, "rounds") > last_round) {
			/* A pre-copy round finished since the last look. */
			if (!quiet && !json) {
				if (live)
					prog_clear(&pl);
				mig_print_progress(p);
			}
			last_round = jnum(p, "rounds");
		}
		if (!strcmp(st, "commit-wait") && !at_gate) {
			at_gate = true;
			if (live)
				prog_clear(&pl);
			if (!quiet && !json)
				fprintf(stderr, "migrate: at the commit gate: the VM is paused here and "
					"loaded there; waiting for godwit migrate-commit --api %s "
					"--commit or --abort\n", sock);
		}
		if (!strcmp(st, "completed") || !strcmp(st, "failed") ||
		    !strcmp(st, "cancelled") || !strcmp(st, "in-doubt") ||
		    !strcmp(st, "postcopy-failed"))
			break;
		if (live)
			prog_update(&pl, p, false);
		json_decref(p);
		p = NULL;
		mig_sleep_ms(MIG_POLL_MS);
	}
	if (live)
		prog_clear(&pl);
	if (json)
		mig_print_json(p);
	else
		report_print(p, true);
	ret = !strcmp(jstr(p, "status"), "completed") ? 0 : 1;
	/* The exit status stays the migration's: a timeline not written is only said. */
	if (timeline && !report_svg_file(p, timeline, "migrate") && !quiet && !json)
		printf("timeline: %s\n", timeline);
	if (fflush(stdout) == EOF) {
		fprintf(stderr, "godwit: migrate: write error on stdout: %s\n", strerror(errno));
		ret = 1;
	}
out:
	json_decref(p);
	return ret;
}

int cmd_migrate(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "api",           required_argument, NULL, 'a' },
		{ "to",            required_argument, NULL, 't' },
		{ "downtime-ms",   required_argument, NULL, 'd' },
		{ "max-bandwidth", required_argument, NULL, 'b' },
		{ "max-rounds",    required_argument, NULL, 'r' },
		{ "min-rate",      required_argument, NULL, 'm' },
		{ "with-disks",    optional_argument, NULL, 'D' },
		{ "tls-dir",       required_argument, NULL, 'T' },
		{ "tls-peer",      required_argument, NULL, 'P' },
		{ "insecure",      no_argument,       NULL, 'S' },
		{ "gate",          no_argument,       NULL, 'g' },
		{ "no-throttle",   no_argument,       NULL, 'N' },
		{ "postcopy",      required_argument, NULL, 'O' },
		{ "reconnect-s",   required_argument, NULL, 'R' },
		{ "channels",      required_argument, NULL, 'C' },
		{ "compress",      required_argument, NULL, 'Z' },
		{ "json",          no_argument,       NULL, 'j' },
		{ "timeline",      required_argument, NULL, 'L' },
		{ "quiet",         no_argument,       NULL, 'q' },
		{ "help",          no_argument,       NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *sock = NULL, *to = NULL, *tls_dir = NULL, *tls_peer = NULL, *timeline = NULL;
	bool insecure = false, gate = false, no_throttle = false;
	enum pc_mode postcopy = PC_OFF;
	enum stream_compress compress = STREAM_COMPRESS_AUTO;
	bool compress_set = false;
	unsigned long long reconnect = 0, channels = 0;
	uint64_t downtime = MIG_DEFAULT_DOWNTIME_MS, rounds = MIG_DEFAULT_MAX_ROUNDS, bw = 0;
	uint64_t min_rate = MIG_DEFAULT_MIN_RATE;
	bool json = false, quiet = false;
	const char *disks = NULL;
	json_t *req, *j = NULL, *p = NULL;
	char *body = NULL, err[256];
	int opt, ret = 1;

	optind = 0;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":qh", opts, NULL)) != -1) {
		char *end;
		unsigned long long v;

		switch (opt) {
		case 'a': sock = optarg; break;
		case 't': to = optarg; break;
		case 'd':
		case 'r':
			errno = 0;
			v = strtoull(optarg, &end, 10);
			if (errno || *end || end == optarg || !v ||
			    v > (opt == 'd' ? 60000ULL : 1000ULL)) {
				fprintf(stderr, "godwit: migrate: %s %s: expected a number from 1 to %s\n",
					argv[optind - 1], optarg, opt == 'd' ? "60000" : "1000");
				goto usage;
			}
			*(opt == 'd' ? &downtime : &rounds) = v;
			break;
		case 'b':
			if (parse_size(optarg, &bw) || bw < MIG_MIN_BANDWIDTH) {
				fprintf(stderr, "godwit: migrate: --max-bandwidth %s: expected bytes per "
					"second, at least 1M, e.g. 100M\n", optarg);
				goto usage;
			}
			break;
		case 'm':
			if (parse_size(optarg, &min_rate) || min_rate > GiB) {
				fprintf(stderr, "godwit: migrate: --min-rate %s: expected bytes per second, "
					"e.g. 64K, or 0 (no minimum)\n", optarg);
				goto usage;
			}
			break;
		case 'D':
			disks = optarg ? optarg : "";
			if (strlen(disks) >= 256) {
				fprintf(stderr, "godwit: migrate: --with-disks: list too long\n");
				goto usage;
			}
			break;
		case 'T': tls_dir = optarg; break;
		case 'P': tls_peer = optarg; break;
		case 'S': insecure = true; break;
		case 'g': gate = true; break;
		case 'N': no_throttle = true; break;
		case 'O':
			if (pc_mode_parse(optarg, &postcopy)) {
				fprintf(stderr, "godwit: migrate: --postcopy %s: expected off, auto or "
					"now\n", optarg);
				goto usage;
			}
			break;
		case 'Z':
			if (stream_compress_parse(optarg, &compress)) {
				fprintf(stderr, "godwit: migrate: --compress %s: expected auto, off or "
					"zstd\n", optarg);
				goto usage;
			}
			compress_set = true;
			break;
		case 'R': {
			char *e;

			errno = 0;
			reconnect = strtoull(optarg, &e, 10);
			if (errno || *e || e == optarg || reconnect > SNAPSHOT_RECONNECT_MAX_S) {
				fprintf(stderr, "godwit: migrate: --reconnect-s %s: expected seconds from "
					"0 to %u\n", optarg, SNAPSHOT_RECONNECT_MAX_S);
				goto usage;
			}
			break;
		}
		case 'C': {
			char *e;

			errno = 0;
			channels = strtoull(optarg, &e, 10);
			if (errno || *e || e == optarg || !channels || channels > MIG_MAX_CHANNELS) {
				fprintf(stderr, "godwit: migrate: --channels %s: expected a number of "
					"connections from 1 to %u\n", optarg, MIG_MAX_CHANNELS);
				goto usage;
			}
			break;
		}
		case 'j': json = true; break;
		case 'L':
			if (!*optarg) {
				fprintf(stderr, "godwit: migrate: --timeline needs a file name\n");
				goto usage;
			}
			timeline = optarg;
			break;
		case 'q': quiet = true; break;
		case 'h':
			fputs(migrate_usage, stdout);
			return 0;
		case ':':
			fprintf(stderr, "godwit: migrate: option %s needs an argument\n",
				argv[optind - 1]);
			goto usage;
		default:
			fprintf(stderr, "godwit: migrate: unrecognized option '%s'\n", argv[optind - 1]);
			goto usage;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "godwit: migrate: unexpected argument '%s'\n", argv[optind]);
		goto usage;
	}
	if (!sock || !*sock || !to || !*to) {
		fprintf(stderr, "godwit: migrate: --api SOCKET and --to ADDR are required\n");
		goto usage;
	}
	if (migrate_addr_check(to, err, sizeof(err))) {
		fprintf(stderr, "godwit: migrate: --to %s\n", err);
		goto usage;
	}
	if (tls_peer && !tls_dir) {
		fprintf(stderr, "godwit: migrate: --tls-peer needs --tls-dir\n");
		goto usage;
	}
	if (insecure && tls_dir) {
		fprintf(stderr, "godwit: migrate: --insecure and --tls-dir contradict each other\n");
		goto usage;
	}
	if (!tls_dir && !insecure && !migrate_addr_local(to)) {
		fprintf(stderr, "godwit: migrate: --to %s is not on this host: the VM's memory would "
			"cross the network in clear; give --tls-dir DIR (mutual TLS), or --insecure "
			"to accept that\n", to);
		goto usage;
	}
	if (timeline && mig_timeline_writable(timeline))
		return 1;        /* printed; the VM was not asked */
	req = json_pack("{s:s, s:I, s:I, s:I, s:I}", "to", to, "downtime_ms", (json_int_t)downtime,
			"max_rounds", (json_int_t)rounds, "max_bandwidth", (json_int_t)bw,
			"min_rate", (json_int_t)min_rate);
	if (req && disks)
		json_object_set_new(req, "with_disks", *disks ? json_string(disks) : json_true());
	if (req && insecure)
		json_object_set_new(req, "insecure", json_true());
	if (req && gate)
		json_object_set_new(req, "gate", json_true());
	if (req && reconnect)
		json_object_set_new(req, "reconnect_s", json_integer((json_int_t)reconnect));
	if (req && channels)
		json_object_set_new(req, "channels", json_integer((json_int_t)channels));
	if (req && no_throttle)
		json_object_set_new(req, "throttle", json_false());
	if (req && postcopy != PC_OFF)
		json_object_set_new(req, "postcopy", json_string(pc_mode_name(postcopy)));
	if (req && compress_set)
		json_object_set_new(req, "compress", json_string(stream_compress_name(compress)));
	if (req && tls_dir && mig_tls_json(req, tls_dir, tls_peer)) {
		json_decref(req);
		return 1;        /* the VM was not asked: it runs on here */
	}
	body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (!body) {
		fprintf(stderr, "godwit: migrate: out of memory\n");
		return 1;
	}
	if (mig_request("migrate", sock, "PUT", "/api/v1/vm/migrate", body, &j)) {
		if (timeline)
			fprintf(stderr, "godwit: migrate: no timeline written: the migration did not "
				"start\n");
		goto out;
	}
	json_decref(j);
	j = NULL;
	ret = mig_follow(sock, json, quiet, timeline);
out:
	json_decref(p);
	if (body)
		explicit_bzero(body, strlen(body));     /* the TLS key */
	free(body);
	return ret;
usage:
	fprintf(stderr, "Try 'godwit migrate --help'.\n");
	return 2;
}

/* The four small commands: --api SOCKET plus their own flags. */
static int mig_simple(const char *who, const char *usage, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "api",     required_argument, NULL, 'a' },
		{ "json",    no_argument,       NULL, 'j' },
		{ "resume",  no_argument,       NULL, 'r' },
		{ "discard", no_argument,       NULL, 'd' },
		{ "commit",  no_argument,       NULL, 'c' },
		{ "abort",   no_argument,       NULL, 'A' },
		{ "help",    no_argument,       NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	bool is_status = !strcmp(who, "migrate-status"), is_resolve = !strcmp(who, "migrate-resolve");
	bool is_commit = !strcmp(who, "migrate-commit");
	const char *sock = NULL, *action = NULL;
	bool json = false;
	json_t *j = NULL;
	char *body = NULL;
	int opt, ret = 1;

	optind = 0;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (opt) {
		case 'a': sock = optarg; break;
		case 'j':
			if (!is_status)
				goto bad;
			json = true;
			break;
		case 'r':
		case 'd':
			if (!is_resolve)
				goto bad;
			if (action) {
				fprintf(stderr, "godwit: %s: give --resume or --discard, once\n", who);
				goto usage;
			}
			action = opt == 'r' ? "resume" : "discard";
			break;
		case 'c':
		case 'A':
			if (!is_commit)
				goto bad;
			if (action) {
				fprintf(stderr, "godwit: %s: give --commit or --abort, once\n", who);
				goto usage;
			}
			action = opt == 'c' ? "true" : "false";
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		case ':':
			fprintf(stderr, "godwit: %s: option %s needs an argument\n", who,
				argv[optind - 1]);
			goto usage;
		default:
bad:
			fprintf(stderr, "godwit: %s: unrecognized option '%s'\n", who, argv[optind - 1]);
			goto usage;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "godwit: %s: unexpected argument '%s'\n", who, argv[optind]);
		goto usage;
	}
	if (!sock || !*sock) {
		fprintf(stderr, "godwit: %s: --api SOCKET is required\n", who);
		goto usage;
	}
	if (is_resolve && !action) {
		fprintf(stderr, "godwit: %s: --resume or --discard is required\n", who);
		goto usage;
	}
	if (is_commit && !action) {
		fprintf(stderr, "godwit: %s: --commit or --abort is required\n", who);
		goto usage;
	}
	if (is_status) {
		if (mig_request(who, sock, "GET", "/api/v1/vm/migration", NULL, &j))
			goto out;
		if (json) {
			json_dumpf(j, stdout, JSON_COMPACT | JSON_REAL_PRECISION(15));
			putchar('\n');
		} else if (!strcmp(jstr(j, "status"), "none")) {
			printf("no migration\n");
		} else {
			printf("migration %s%s%s: round %.0f, %.1f MiB sent, %.1f MiB remaining, "
			       "total %.0f ms, downtime %.1f ms%s%s\n", jstr(j, "status"),
			       json_object_get(j, "to") ? " to " : json_object_get(j, "from") ?
			       " from " : "", json_object_get(j, "to") ? jstr(j, "to") : jstr(j, "from"),
			       jnum(j, "round"), jnum(j, "bytes") / (double)MiB,
			       jnum(j, "remaining_bytes") / (double)MiB, jnum(j, "total_ms"),
			       jnum(j, "downtime_ms"), json_object_get(j, "error") ? ": " : "",
			       jstr(j, "error"));
		}
		ret = 0;
	} else if (is_resolve) {
		if (asprintf(&body, "{\"action\":\"%s\"}", action) < 0) {
			body = NULL;
			goto out;
		}
		if (mig_request(who, sock, "PUT", "/api/v1/vm/migrate-resolve", body, &j))
			goto out;
		printf("%s\n", !strcmp(action, "resume") ? "the VM runs here" :
		       "the VM was discarded here");
		ret = 0;
	} else if (is_commit) {
		if (asprintf(&body, "{\"commit\":%s}", action) < 0) {
			body = NULL;
			goto out;
		}
		if (mig_request(who, sock, "PUT", "/api/v1/vm/migrate-commit", body, &j))
			goto out;
		if (!strcmp(action, "true"))
			printf("COMMIT is being sent: the destination is told to run the VM (follow it "
			       "with godwit migrate-status)\n");
		else
			printf("aborted at the commit gate: the VM runs here (migration %s: %s)\n",
			       jstr(j, "status"), jstr(j, "error"));
		ret = 0;
	} else {
		if (mig_request(who, sock, "PUT", "/api/v1/vm/migrate-cancel", NULL, &j))
			goto out;
		printf("migration cancelled; the VM runs here\n");
		ret = 0;
	}
	if (fflush(stdout) == EOF)
		ret = 1;
out:
	json_decref(j);
	free(body);
	return ret;
usage:
	fprintf(stderr, "Try 'godwit %s --help'.\n", who);
	return 2;
}

int cmd_migrate_resume(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "api",   required_argument, NULL, 'a' },
		{ "to",    required_argument, NULL, 't' },
		{ "json",  no_argument,       NULL, 'j' },
		{ "quiet", no_argument,       NULL, 'q' },
		{ "help",  no_argument,       NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *sock = NULL, *to = NULL;
	bool json = false, quiet = false;
	char err[256], *body;
	json_t *req, *j = NULL;
	int opt;

	optind = 0;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":qh", opts, NULL)) != -1) {
		switch (opt) {
		case 'a': sock = optarg; break;
		case 't': to = optarg; break;
		case 'j': json = true; break;
		case 'q': quiet = true; break;
		case 'h':
			fputs(resume_usage, stdout);
			return 0;
		case ':':
			fprintf(stderr, "godwit: migrate-resume: option %s needs an argument\n",
				argv[optind - 1]);
			goto usage;
		default:
			fprintf(stderr, "godwit: migrate-resume: unrecognized option '%s'\n",
				argv[optind - 1]);
			goto usage;
		}
	}
	if (optind < argc || !sock || !*sock) {
		fprintf(stderr, "godwit: migrate-resume: --api SOCKET is required\n");
		goto usage;
	}
	if (to && migrate_addr_check(to, err, sizeof(err))) {
		fprintf(stderr, "godwit: migrate-resume: --to %s\n", err);
		goto usage;
	}
	req = to ? json_pack("{s:s}", "to", to) : json_object();
	body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (!body) {
		fprintf(stderr, "godwit: migrate-resume: out of memory\n");
		return 1;
	}
	if (mig_request("migrate-resume", sock, "PUT", "/api/v1/vm/migrate-resume", body, &j)) {
		free(body);
		return 1;
	}
	free(body);
	json_decref(j);
	return mig_follow(sock, json, quiet, NULL);
usage:
	fprintf(stderr, "Try 'godwit migrate-resume --help'.\n");
	return 2;
}

int cmd_migrate_status(int argc, char **argv)
{
	return mig_simple("migrate-status", status_usage, argc, argv);
}

int cmd_migrate_cancel(int argc, char **argv)
{
	return mig_simple("migrate-cancel", cancel_usage, argc, argv);
}

int cmd_migrate_resolve(int argc, char **argv)
{
	return mig_simple("migrate-resolve", resolve_usage, argc, argv);
}

int cmd_migrate_commit(int argc, char **argv)
{
	return mig_simple("migrate-commit", commit_usage, argc, argv);
}
