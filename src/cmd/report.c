/*
 * report.c - `godwit report FILE.json [--svg OUT]`: a saved migration report
 * (as `godwit migrate --json` writes it) shown for people or drawn as an SVG
 * timeline; and the report printing and SVG writing `godwit migrate` shares
 * (report.h).
 *
 * Exit codes: 0 shown or written; 1 the file cannot be read, is not a
 * migration report, or the SVG cannot be written; 2 usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "godwit/cmd.h"
#include "godwit/common.h"
#include "godwit/timeline.h"
#include "report.h"

#define REPORT_MAX_BYTES (16 * MiB)

static const char report_usage[] =
"usage: godwit report FILE.json [--svg OUT.svg]\n"
"\n"
"Show a migration's report saved from godwit migrate --json (FILE.json; -\n"
"reads stdin): the outcome, a line per pre-copy round and the pause by\n"
"phase.  With --svg, draw it instead as a standalone SVG picture (OUT.svg;\n"
"- writes stdout): time on the x axis, the bytes of each round, the bytes\n"
"remaining, bandwidth and dirty rate, the setup and the pause, the pause's\n"
"phases and any throttling (docs/migration.md, \"Timeline\").\n"
"\n"
"  --svg OUT     write the SVG timeline to OUT\n"
"  -h, --help    this text\n"
"\n"
"A report without the fields a picture needs (status, total_ms, history)\n"
"or with a wrong-typed one is refused with the field named.\n"
"\n"
"Exit status: 0 shown or written; 1 the file cannot be read, is not a\n"
"migration report, or OUT cannot be written; 2 usage error.\n";

static double jnum(json_t *j, const char *k)
{
	return json_number_value(json_object_get(j, k));
}

static const char *jstr(json_t *j, const char *k)
{
	const char *s = json_string_value(json_object_get(j, k));

	return s ? s : "";
}

/* "pause 14.3 ms by phase: stop 0.50, memory 6.00, ... ms" when p has phases_ms. */
static void report_phases(json_t *p, FILE *out)
{
	static const char *const names[] = {
		"stop", "memory", "state", "ready", "release", "gate", "commit",
	};
	json_t *ph = json_object_get(p, "phases_ms");
	const char *sep = "";

	if (!json_is_object(ph))
		return;
	fprintf(out, "pause %.1f ms by phase:", jnum(p, "downtime_ms"));
	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		json_t *v = json_object_get(ph, names[i]);

		if (!json_is_number(v))
			continue;
		fprintf(out, "%s %s %.2f", sep, names[i], json_number_value(v));
		sep = ",";
	}
	fprintf(out, " ms\n");
}

void report_print(json_t *p, bool from_migrate)
{
	const char *st = jstr(p, "status");
	FILE *bad = from_migrate ? stderr : stdout;

	if (!from_migrate) {
		json_t *h = json_object_get(p, "history"), *r;
		size_t i;

		if (json_object_get(p, "to") || json_object_get(p, "from"))
			printf("migration %s %s\n", json_object_get(p, "to") ? "to" : "from",
			       json_object_get(p, "to") ? jstr(p, "to") : jstr(p, "from"));
		json_array_foreach(h, i, r)
			printf("round %.0f: at %.1f ms, %.1f ms, sent %.1f MiB, remaining %.1f MiB, "
			       "dirty rate %.1f MiB/s, bandwidth %.0f MiB/s, expected downtime %.1f ms\n",
			       jnum(r, "round"), jnum(r, "start_ms"), jnum(r, "ms"),
			       jnum(r, "bytes") / (double)MiB, jnum(r, "remaining_bytes") / (double)MiB,
			       jnum(r, "dirty_rate_bps") / (double)MiB,
			       jnum(r, "bandwidth_bps") / (double)MiB, jnum(r, "expected_downtime_ms"));
	}
	if (!strcmp(st, "completed")) {
		printf("migration completed: total %.1f ms, downtime %.1f ms, setup %.1f ms, "
		       "%.1f MiB sent, %.0f pages (%.0f zero), %.0f rounds%s\n",
		       jnum(p, "total_ms"), jnum(p, "downtime_ms"), jnum(p, "setup_ms"),
		       jnum(p, "bytes") / (double)MiB, jnum(p, "pages"), jnum(p, "zero_pages"),
		       jnum(p, "rounds"),
		       json_is_true(json_object_get(p, "converged")) ? "" :
		       " (did not converge under the downtime limit)");
		report_phases(p, stdout);
		if (json_is_true(json_object_get(p, "postcopy_switched")))
			printf("post-copy: switched at %.1f ms with %.0f pages missing there; %.0f "
			       "requested on demand, %.0f pushed; fault latency median %.2f ms, max "
			       "%.2f ms; all there %.1f ms after the switch\n",
			       jnum(p, "postcopy_start_ms"), jnum(p, "postcopy_pages"),
			       jnum(p, "postcopy_requested"), jnum(p, "postcopy_pushed"),
			       jnum(p, "fault_latency_median_ms"), jnum(p, "fault_latency_max_ms"),
			       jnum(p, "postcopy_ms"));
		if (json_object_get(p, "disk_bytes"))
			printf("disks: %.1f MiB sent in %.0f passes\n",
			       jnum(p, "disk_bytes") / (double)MiB, jnum(p, "disk_rounds"));
		{
			json_t *z = json_object_get(p, "compress");

			if (json_is_object(z) && jnum(z, "sections") > 0)
				printf("compress: %s, %.0f sections, %.1f MiB of pages sent as %.1f MiB "
				       "(ratio %.2f)\n", jstr(z, "mode"), jnum(z, "sections"),
				       jnum(z, "bytes_in") / (double)MiB, jnum(z, "bytes_out") / (double)MiB,
				       jnum(z, "bytes_out") > 0 ? jnum(z, "bytes_in") / jnum(z, "bytes_out") : 0);
			else if (json_is_object(z))
				printf("compress: %s, nothing compressed\n", jstr(z, "mode"));
		}
		if (jnum(p, "channels") > 1)
			printf("channels: %.0f connections%s\n", jnum(p, "channels"),
			       jstr(p, "tls")[0] ? ", each with its own TLS session" : "");
		if (jstr(p, "tls")[0])
			printf("channel: %s\n", jstr(p, "tls"));
		else if (json_is_true(json_object_get(p, "insecure")))
			printf("channel: insecure (no TLS, --insecure)\n");
	} else if (!strcmp(st, "in-doubt")) {
		fprintf(bad, "%s%s\n", from_migrate ? "godwit: migrate: " : "migration in doubt: ",
			jstr(p, "error"));
	} else if (!strcmp(st, "cancelled")) {
		fprintf(bad, "%smigration cancelled%s\n", from_migrate ? "godwit: migrate: " : "",
			from_migrate ? "; the VM keeps running here" : "");
	} else {
		fprintf(bad, "%smigration %s: %s%s\n", from_migrate ? "godwit: migrate: " : "", st,
			jstr(p, "error"), from_migrate ? "; the VM keeps running here" : "");
	}
}

int report_svg_file(const json_t *p, const char *path, const char *who)
{
	bool to_stdout = !strcmp(path, "-");
	char err[512];
	FILE *f;
	int r;

	if (timeline_check(p, err, sizeof(err))) {
		fprintf(stderr, "godwit: %s: cannot draw the timeline: %s\n", who, err);
		return 1;
	}
	f = to_stdout ? stdout : fopen(path, "w");
	if (!f) {
		fprintf(stderr, "godwit: %s: %s: %s\n", who, path, strerror(errno));
		return 1;
	}
	r = timeline_svg(p, f, err, sizeof(err));
	if (!to_stdout && fclose(f) == EOF && !r) {
		snprintf(err, sizeof(err), "%s", strerror(errno));
		r = -EIO;
	}
	if (r) {
		fprintf(stderr, "godwit: %s: %s: %s\n", who, path, err);
		if (!to_stdout)
			unlink(path);
		return 1;
	}
	return 0;
}

/* The whole of FILE ("-": stdin), at most REPORT_MAX_BYTES, as JSON; NULL printed. */
static json_t *report_load(const char *path)
{
	bool in = !strcmp(path, "-");
	FILE *f = in ? stdin : fopen(path, "r");
	size_t n = 0, cap = 64 * KiB;
	char *buf = NULL;
	json_error_t je;
	json_t *j = NULL;

	if (!f) {
		fprintf(stderr, "godwit: report: %s: %s\n", path, strerror(errno));
		return NULL;
	}
	for (;;) {
		char *nb = realloc(buf, cap);
		size_t got;

		if (!nb) {
			fprintf(stderr, "godwit: report: out of memory\n");
			goto out;
		}
		buf = nb;
		got = fread(buf + n, 1, cap - n, f);
		n += got;
		if (n < cap) {
			if (ferror(f)) {
				fprintf(stderr, "godwit: report: %s: read error: %s\n", path,
					strerror(errno));
				goto out;
			}
			break;
		}
		if (cap >= REPORT_MAX_BYTES) {
			fprintf(stderr, "godwit: report: %s: larger than %llu MiB: not a migration "
				"report\n", path, (unsigned long long)(REPORT_MAX_BYTES / MiB));
			goto out;
		}
		cap *= 2;
	}
	j = json_loadb(buf, n, JSON_REJECT_DUPLICATES, &je);
	if (!j)
		fprintf(stderr, "godwit: report: %s: not JSON (line %d, column %d): %s\n", path,
			je.line, je.column, je.text);
out:
	free(buf);
	if (!in)
		fclose(f);
	return j;
}

int cmd_report(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "svg",  required_argument, NULL, 's' },
		{ "help", no_argument,       NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *svg = NULL, *path;
	char err[512];
	json_t *j;
	int opt, ret = 1;

	optind = 0;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (opt) {
		case 's': svg = optarg; break;
		case 'h':
			fputs(report_usage, stdout);
			return 0;
		case ':':
			fprintf(stderr, "godwit: report: option %s needs an argument\n",
				argv[optind - 1]);
			goto usage;
		default:
			fprintf(stderr, "godwit: report: unrecognized option '%s'\n", argv[optind - 1]);
			goto usage;
		}
	}
	if (optind != argc - 1 || !*argv[optind]) {
		fprintf(stderr, "godwit: report: %s\n", optind >= argc ? "FILE.json is required" :
			"give one FILE.json");
		goto usage;
	}
	path = argv[optind];
	j = report_load(path);
	if (!j)
		return 1;
	if (svg) {
		ret = report_svg_file(j, svg, "report");
	} else if (timeline_check(j, err, sizeof(err))) {
		fprintf(stderr, "godwit: report: %s: not a migration report: %s\n", path, err);
	} else {
		report_print(j, false);
		ret = 0;
	}
	json_decref(j);
	if (fflush(stdout) == EOF) {
		fprintf(stderr, "godwit: report: write error on stdout: %s\n", strerror(errno));
		ret = 1;
	}
	return ret;
usage:
	fprintf(stderr, "Try 'godwit report --help'.\n");
	return 2;
}
