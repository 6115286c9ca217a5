/*
 * fuzz_agent.c - libFuzzer target for godwitd's parsers of what other agents and
 * etcd send it (src/agent, docs/fleet.md):
 *   0  a line of the agents' protocol as received (peer_parse_line), then the
 *      prepare checks (peer_check_request) on what parsed;
 *   1  a migration intent (migrate_parse_intent), as etcd holds it;
 *   2  a VM spec turned into `godwit run`'s argv for a cold start (vms_build_argv),
 *   3  the same for `godwit run --incoming` (a migration's destination);
 *   4  an owner record (fleet_owner_parse, agent_owner_is);
 *   5  the fleet page's JSON (web_fleet_json, web_report) from a range of etcd
 *      records: the text is KEY\nVALUE\n pairs (a key without a leading "/" gets
 *      /godwit/ before it; a key given again is dropped, as a range holds
 *      each key once).
 * The first byte picks (modulo 6); for 2 and 3 the second byte picks the
 * --map-path set and whether the lease guard's options come first; the rest is
 * the text as received (not NUL-terminated, in an exact-size copy).
 *
 * Beyond the sanitizers it checks: a line is accepted only if it holds a newline
 * and no NUL, and what the agent sends (json_dumps + newline) parses back equal; a
 * request peer_check_request accepts has only the known fields, each as the
 * protocol says; an intent without a reason to refuse it has a host name "to"
 * other than this host, a token of 1-255 bytes, tuning in range, and the prepare
 * request the source builds from it is accepted by the destination's checks
 * (and a refused one carries no with_disks); a built argv is [godwit, pre...,
 * strings..., NULL] with no NULL inside and fits what was allocated, and read
 * by getopt_long as `godwit run` reads it (run.c's option table, copied below),
 * it holds none of the options the agent sets itself beyond those it put first,
 * no --incoming, and every --kernel/--initrd/--disk path was rewritten if it
 * matched a --map-path prefix; for --incoming, only the options run --incoming
 * takes are kept; an owner record accepted formats back to itself; the page's
 * JSON is an object with arrays hosts, vms and migrations whose names are valid
 * names, no intent's token, percentages within 0-100, a timeline link only of
 * the form /api/migrations/VM/timeline.svg, reports of bounded history
 * (WEB_HISTORY_MAX rounds of at most WEB_ROUND_FIELDS members named [a-z0-9_])
 * whose numbers are finite and >= 0, and it dumps and parses back equal.
 *   make fuzz && build-fuzz/fuzz-agent -max_total_time=60 tests/fuzz/corpus/agent
 */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/agent/agent.h"
#include "../../src/cmd/run.h"
#include "godwit/etcd.h"
#include "godwit/timeline.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HOST "host-b"

static struct agent A;

/* The --map-path sets: no "to" starts with a "from", so a mapped path matches none. */
static const struct agent_map map_sets[4][3] = {
	{ { "/data", "/mnt/data" }, { "/img/", "/srv/images/" }, { "/var/lib/godwit", "/gw" } },
	{ { "/srv", "/export/srv" } },
	{ { "/data/vm", "/x" }, { "/data", "/y" } },
	{ { "" } },
};
static const unsigned int map_counts[4] = { 3, 1, 2, 0 };

static void check_err(const char *err, size_t len)
{
	if (!err[0] || strnlen(err, len) >= len)
		abort();
}

/* ---- 0: the agents' protocol ---- */

static bool known_field(const char *k)
{
	static const char *const f[] = { "op", "vm", "from", "epoch", "token", "with_disks", NULL };

	for (int i = 0; f[i]; i++)
		if (!strcmp(k, f[i]))
			return true;
	return false;
}

static void check_request_ok(const char *host, json_t *req)
{
	const char *k;
	json_t *v, *wd = json_object_get(req, "with_disks"), *ep = json_object_get(req, "epoch");
	const char *tok = json_string_value(json_object_get(req, "token"));

	json_object_foreach(req, k, v)
		if (!known_field(k))
			abort();
	if (strcmp(jstr(req, "op"), "prepare") || !fleet_name_ok(jstr(req, "vm")) ||
	    !fleet_name_ok(jstr(req, "from")) || !strcmp(jstr(req, "from"), host))
		abort();
	if (!json_is_integer(ep) || json_integer_value(ep) < 1)
		abort();
	if (!tok || !tok[0] || strlen(tok) > 255)
		abort();
	if (wd && !json_is_boolean(wd) && !(json_is_string(wd) && json_string_length(wd) < 256))
		abort();
}

static void fuzz_line(const char *buf, size_t n)
{
	char err[AGENT_ERR_MAX];
	json_t *req = NULL, *again = NULL;
	char *s, *line;
	int r;

	err[0] = '\0';
	r = peer_parse_line(buf, n, &req, err, sizeof(err));
	if (r) {
		if (r != -EBADMSG || req)
			abort();
		check_err(err, sizeof(err));
		return;
	}
	if (!json_is_object(req) || memchr(buf, '\0', n) || !memchr(buf, '\n', n))
		abort();
	/* what peer_send_line would send of it parses back to the same */
	s = json_dumps(req, JSON_COMPACT);
	if (s) {
		size_t l = strlen(s);

		line = malloc(l + 1);
		if (line) {
			memcpy(line, s, l);
			line[l] = '\n';
			if (peer_parse_line(line, l + 1, &again, err, sizeof(err)) ||
			    !json_equal(req, again))
				abort();
			json_decref(again);
			free(line);
		}
		free(s);
	}
	err[0] = '\0';
	r = peer_check_request(HOST, req, err, sizeof(err));
	if (r) {
		if (r != -EINVAL)
			abort();
		check_err(err, sizeof(err));
	} else {
		check_request_ok(HOST, req);
	}
	json_decref(req);
}

/* ---- 1: an intent ---- */

static void fuzz_intent(const char *buf, size_t n)
{
	json_t *intent = json_loadb(buf, n, JSON_REJECT_DUPLICATES, NULL), *req, *wd;
	struct agent_intent mi;
	char err[AGENT_ERR_MAX];

	if (!json_is_object(intent)) {
		json_decref(intent);
		return;
	}
	migrate_parse_intent("host-a", intent, &mi);
	if (strnlen(mi.to, sizeof(mi.to)) >= sizeof(mi.to) ||
	    strnlen(mi.token, sizeof(mi.token)) >= sizeof(mi.token) ||
	    strnlen(mi.id, sizeof(mi.id)) >= sizeof(mi.id) ||
	    strnlen(mi.bad, sizeof(mi.bad)) >= sizeof(mi.bad))
		abort();
	wd = mi.with_disks;
	if (wd && !json_is_true(wd) && !json_is_string(wd))
		abort();
	if (mi.bad[0]) {
		if (wd)
			abort();
		json_decref(intent);
		return;
	}
	if (!fleet_name_ok(mi.to) || !strcmp(mi.to, "host-a") || !mi.token[0] ||
	    (mi.max_bandwidth && mi.max_bandwidth < (1 << 20)) || mi.max_bandwidth < 0 ||
	    mi.downtime_ms < 0 || mi.downtime_ms > 60000)
		abort();
	/* the request mig_prepare sends the destination from it: accepted there */
	req = json_pack("{s:s, s:s, s:s, s:I, s:s}", "op", "prepare", "vm", "vm-1", "from",
			"host-a", "epoch", (json_int_t)7, "token", mi.token);
	if (req) {
		if (wd)
			json_object_set(req, "with_disks", wd);
		err[0] = '\0';
		if (peer_check_request(mi.to, req, err, sizeof(err))) {
			fprintf(stderr, "fuzz-agent: a valid intent's prepare is refused: %s\n", err);
			abort();
		}
		json_decref(req);
	}
	json_decref(wd);
	json_decref(intent);
}

/* ---- 2, 3: a spec's argv ---- */

/* Does path start with a --map-path prefix, as vms.c matches them? */
static const char *map_match(const char *path)
{
	for (unsigned int i = 0; i < A.nr_maps; i++) {
		const char *f = A.maps[i].from;
		size_t fl = strlen(f);

		if (!strncmp(path, f, fl) &&
		    (f[fl - 1] == '/' || !path[fl] || path[fl] == '/' || path[fl] == ','))
			return f;
	}
	return NULL;
}

static void check_mapped(const char *opt, const char *path)
{
	const char *f = map_match(path);

	if (f) {
		fprintf(stderr, "fuzz-agent: %s %s: not rewritten (--map-path %s=...)\n", opt, path, f);
		abort();
	}
}

/* `godwit run`'s options (run.c: run_parse). */
static const struct option run_opts[] = {
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

/* argv (k strings) read as `godwit run` reads it; npre: the agent's own options. */
static void check_run_argv(char **argv, size_t k, bool guard)
{
	char **copy = calloc(k + 1, sizeof(*copy));
	int c, argc = (int)k - 1, set = 0, api = 0, name = 0;

	if (!copy)
		return;
	/* cmd_run: an --incoming anywhere before "--" makes it a destination */
	for (size_t i = 1; i < k && strcmp(argv[i], "--"); i++)
		if (!strcmp(argv[i], "--incoming") || !strncmp(argv[i], "--incoming=", 11))
			abort();
	/* getopt_long permutes its argv: a copy of the pointers, without "godwit" */
	memcpy(copy, argv + 1, k * sizeof(*copy));
	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, copy, ":k:i:c:m:p:n:a:d:N:vh", run_opts, NULL)) != -1) {
		switch (c) {
		case 'a':
			api++;
			break;
		case 'n':
			name++;
			break;
		case 'h':
			fprintf(stderr, "fuzz-agent: the spec set --help\n");
			abort();
		case RUN_OPT_FLEET_ETCD: case RUN_OPT_FLEET_LEASE:
			set++;
			break;
		case 'k': case 'i': case 'd':
			check_mapped(c == 'k' ? "--kernel" : c == 'i' ? "--initrd" : "--disk", optarg);
			break;
		}
	}
	if (set != (guard ? 2 : 0) || api != 1 || name != 1) {
		fprintf(stderr, "fuzz-agent: the spec set --api, --name, --fleet-etcd or "
			"--fleet-lease\n");
		abort();
	}
	optind = 0;
	free(copy);
}

/* --incoming: what is kept after pre, as vms.c keeps it. */
static void check_incoming_argv(char **argv, size_t k, size_t first)
{
	static const char *const with[] = { "--disk", "-d", "--net", "-N", "--user", "--sandbox",
					    "--jail", "--snapshot-dir", NULL };
	static const char *const bare[] = { "--no-sandbox", "--verbose", "-v", NULL };

	for (size_t i = first; i < k; i++) {
		const char *s = argv[i], *eq = strchr(s, '=');
		size_t ol = eq && s[1] == '-' ? (size_t)(eq - s) : strlen(s);
		bool ok = false;

		for (int j = 0; with[j] && !ok; j++)
			if (strlen(with[j]) == ol && !strncmp(s, with[j], ol)) {
				ok = true;
				if (ol == strlen(s)) {
					if (i + 1 >= k)
						abort();
					i++;
					if (j < 2)
						check_mapped(s, argv[i]);
				} else if (j < 2) {
					check_mapped(with[j], eq + 1);
				}
			}
		/* "--verbose=x" is kept too: run --incoming refuses it itself */
		for (int j = 0; bare[j] && !ok; j++)
			if (strlen(bare[j]) == ol && !strncmp(s, bare[j], ol))
				ok = true;
		if (!ok) {
			fprintf(stderr, "fuzz-agent: --incoming given %s\n", s);
			abort();
		}
	}
}

static void fuzz_spec(const char *buf, size_t n, uint8_t how, bool incoming)
{
	static const char *const guard[] = { "--fleet-etcd", "http://10.0.0.1:2379", "--fleet-lease",
					     "7587" };
	const char *pre[16];
	size_t npre = 0, k, nargs;
	json_t *spec = json_loadb(buf, n, 0, NULL);
	char err[AGENT_ERR_MAX], **argv = NULL;
	bool g = how & 4;
	int r;

	if (!json_is_object(spec)) {
		json_decref(spec);
		return;
	}
	A.nr_maps = map_counts[how & 3];
	memcpy(A.maps, map_sets[how & 3], sizeof(map_sets[0]));
	pre[npre++] = "run";
	if (!incoming) {
		pre[npre++] = "--name";
		pre[npre++] = "vm-1";
		pre[npre++] = "--api";
		pre[npre++] = "/var/lib/godwitd/vms/vm-1/api.sock";
	} else {
		pre[npre++] = "--incoming";
		pre[npre++] = "tcp:10.0.0.2:7000";
		pre[npre++] = "--api";
		pre[npre++] = "/var/lib/godwitd/vms/vm-1/api.sock";
		pre[npre++] = "--incoming-timeout";
		pre[npre++] = "120";
		if (how & 8) {
			pre[npre++] = "--tls-dir";
			pre[npre++] = "/etc/godwit/tls";
			pre[npre++] = "--tls-peer";
			pre[npre++] = "host-a";
		} else {
			pre[npre++] = "--insecure";
		}
	}
	if (g)
		for (int i = 0; i < 4; i++)
			pre[npre++] = guard[i];
	err[0] = '\0';
	r = vms_build_argv(&A, "vm-1", spec, pre, npre, &argv, err, sizeof(err));
	if (r) {
		if (r != -EINVAL || argv)
			abort();
		check_err(err, sizeof(err));
		json_decref(spec);
		return;
	}
	if (!argv || !argv[0] || strcmp(argv[0], A.godwit))
		abort();
	for (size_t i = 0; i < npre; i++)
		if (!argv[1 + i] || strcmp(argv[1 + i], pre[i]))
			abort();
	nargs = json_array_size(json_object_get(spec, "args"));
	for (k = 0; argv[k]; k++)
		if (k > 1 + npre + nargs + 4)
			abort();         /* past what vms_build_argv allocated */
	if (incoming)
		check_incoming_argv(argv, k, 1 + npre);
	else
		check_run_argv(argv, k, g);
	vms_argv_free(argv);
	json_decref(spec);
}

/* ---- 4: an owner record ---- */

static void fuzz_owner(const char *buf, size_t n)
{
	char *s = malloc(n + 1), out[FLEET_OWNER_MAX];
	struct fleet_owner o, o2;

	if (!s)
		return;
	memcpy(s, buf, n);
	s[n] = '\0';
	memset(&o, 0, sizeof(o));
	if (fleet_owner_parse(s, &o) == 0) {
		if (!fleet_name_ok(o.host) || !agent_owner_is(s, o.host, o.epoch))
			abort();
		fleet_owner_format(&o, out, sizeof(out));
		if (fleet_owner_parse(out, &o2) ||
		    strcmp(o.host, o2.host) || o.epoch != o2.epoch)
			abort();
	} else if (agent_owner_is(s, HOST, 1)) {
		abort();
	}
	free(s);
}

/* ---- 5: the fleet page's JSON ---- */

static void check_num(json_t *v)
{
	if (json_is_integer(v) ? json_integer_value(v) < 0 :
	    !json_is_real(v) || !(json_real_value(v) >= 0) || json_real_value(v) > 1e308)
		abort();
}

static void check_report(json_t *rep)
{
	json_t *h = json_object_get(rep, "history"), *r, *v;
	const char *k;
	size_t i;

	if (!json_is_object(rep))
		abort();
	json_object_foreach(rep, k, v) {
		if (!strcmp(k, "status") || !strcmp(k, "from") || !strcmp(k, "to") ||
		    !strcmp(k, "error")) {
			if (!json_is_string(v))
				abort();
		} else if (strcmp(k, "history") && strcmp(k, "phases_ms")) {
			check_num(v);
		}
	}
	if (h && (!json_is_array(h) || json_array_size(h) > WEB_HISTORY_MAX))
		abort();
	json_array_foreach(h, i, r) {
		if (!json_is_object(r) || json_object_size(r) > WEB_ROUND_FIELDS)
			abort();
		json_object_foreach(r, k, v)
			if (!*k || strlen(k) > WEB_KEY_MAX ||
			    strspn(k, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(k) ||
			    (!json_is_number(v) && !json_is_boolean(v) && !json_is_string(v)))
				abort();
	}
	json_object_foreach(json_object_get(rep, "phases_ms"), k, v)
		check_num(v);
}

static void fuzz_web(const char *buf, size_t n)
{
	struct etcd_kvs kvs = { .revision = 7 };
	size_t cap = 0;
	const char *p = buf, *end = buf + n;
	json_t *out, *back, *x;
	char *text, want[FLEET_NAME_MAX + 48];
	size_t i;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p)), *v, *vend;
		struct etcd_kv *kv;

		if (!nl)
			break;
		v = nl + 1;
		vend = v < end ? memchr(v, '\n', (size_t)(end - v)) : NULL;
		if (!vend)
			vend = end;
		if (kvs.n == cap) {
			struct etcd_kv *nk = realloc(kvs.kv, (cap = cap * 2 + 4) * sizeof(*nk));

			if (!nk)
				break;
			kvs.kv = nk;
		}
		/* etcd's client refuses a key or value holding a NUL: none gets here */
		if (!memchr(p, 0, (size_t)(nl - p)) && !memchr(v, 0, (size_t)(vend - v))) {
			kv = &kvs.kv[kvs.n++];
			memset(kv, 0, sizeof(*kv));
			kv->key = malloc((size_t)(nl - p) + sizeof(FLEET_PREFIX));
			kv->value = strndup(v, (size_t)(vend - v));
			if (!kv->key || !kv->value)
				abort();
			snprintf(kv->key, (size_t)(nl - p) + sizeof(FLEET_PREFIX), "%s%.*s",
				 *p == '/' ? "" : FLEET_PREFIX, (int)(nl - p), p);
			/* a range holds each key once */
			for (i = 0; i + 1 < kvs.n; i++)
				if (!strcmp(kvs.kv[i].key, kv->key)) {
					free(kv->key);
					free(kv->value);
					kvs.n--;
					break;
				}
		}
		p = vend < end ? vend + 1 : end;
	}
	out = web_fleet_json(&kvs, HOST);
	if (!out || !json_is_array(json_object_get(out, "hosts")) ||
	    !json_is_array(json_object_get(out, "vms")) ||
	    !json_is_array(json_object_get(out, "migrations")))
		abort();
	json_array_foreach(json_object_get(out, "hosts"), i, x)
		if (!fleet_name_ok(json_string_value(json_object_get(x, "name"))))
			abort();
	json_array_foreach(json_object_get(out, "vms"), i, x) {
		json_t *in = json_object_get(x, "intent");

		if (!fleet_name_ok(json_string_value(json_object_get(x, "name"))) ||
		    (in && !json_is_null(in) && json_object_get(in, "token")))
			abort();
	}
	json_array_foreach(json_object_get(out, "migrations"), i, x) {
		const char *vm = json_string_value(json_object_get(x, "vm"));
		json_t *pct = json_object_get(x, "percent"), *tl = json_object_get(x, "timeline");

		if (!fleet_name_ok(vm))
			abort();
		if (!json_is_null(pct) && (!json_is_number(pct) || json_number_value(pct) < 0 ||
					   json_number_value(pct) > 100))
			abort();
		snprintf(want, sizeof(want), "/api/migrations/%s/timeline.svg", vm);
		if (!json_is_null(tl) && (!json_is_string(tl) || strcmp(json_string_value(tl), want) ||
					  !web_timeline_ok(json_object_get(x, "report"))))
			abort();
		if (!json_is_null(json_object_get(x, "report")))
			check_report(json_object_get(x, "report"));
	}
	text = json_dumps(out, JSON_COMPACT);
	back = text ? json_loads(text, 0, NULL) : NULL;
	if (!back || !json_equal(out, back))
		abort();
	/* a record's progress as the timeline's route reduces it */
	for (i = 0; i < kvs.n; i++) {
		json_t *rec = json_loads(kvs.kv[i].value, 0, NULL);
		json_t *rep = web_record_report(rec);
		char *svg = NULL;
		size_t len = 0;
		char err[256];

		check_report(rep);
		/* what the timeline's route draws: a well-formed picture or a reason */
		if (web_timeline_ok(rep)) {
			if (timeline_svg_buf(rep, &svg, &len, err, sizeof(err)) ||
			    !strstr(svg, "<svg") || strlen(svg) != len)
				abort();
			free(svg);
		}
		json_decref(rep);
		json_decref(rec);
	}
	free(text);
	json_decref(back);
	json_decref(out);
	etcd_kvs_free(&kvs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf;
	size_t skip;

	if (size < 2)
		return 0;
	if (!A.host) {
		A.host = HOST;
		snprintf(A.godwit, sizeof(A.godwit), "/usr/local/bin/godwit");
	}
	skip = data[0] % 6 == 2 || data[0] % 6 == 3 ? 2 : 1;
	if (size < skip)
		return 0;
	/* an exact-size copy, so that ASan sees any read past the end */
	buf = malloc(size - skip ? size - skip : 1);
	if (!buf)
		return 0;
	memcpy(buf, data + skip, size - skip);
	switch (data[0] % 6) {
	case 0: fuzz_line(buf, size - skip); break;
	case 1: fuzz_intent(buf, size - skip); break;
	case 2: fuzz_spec(buf, size - skip, data[1], false); break;
	case 3: fuzz_spec(buf, size - skip, data[1], true); break;
	case 4: fuzz_owner(buf, size - skip); break;
	case 5: fuzz_web(buf, size - skip); break;
	}
	free(buf);
	return 0;
}
