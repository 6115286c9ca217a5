/*
 * web_json.c - what the fleet page (web.c) shows, built from one range read
 * of /godwit/: the hosts and the VMs as `godwit fleet hosts --json` and `ls
 * --json` give them (the records validated by the same code, src/cmd/fleet.c:
 * a malformed record is left out or shown as such, never trusted), and each
 * VM's last migration from its `migration` record, its progress (the VMM's
 * report) copied field by field: only known numbers, a bounded per-round
 * `history` and `phases_ms`; an ended one whose report the timeline
 * (src/lib/timeline.c) accepts links its picture.  Pure (no etcd, no lock):
 * fuzz_agent.c feeds it.
 */
#include <math.h>
#include <string.h>

#include "godwit/timeline.h"
#include "../cmd/fleet.h"
#include "agent.h"

/* The report's numbers the page shows (GET /vm/migration, docs/api.md). */
static const char *const web_prog_nums[] = {
	"round", "rounds", "bytes", "pages", "zero_pages", "remaining_bytes", "dirty_rate_bps",
	"bandwidth_bps", "expected_downtime_ms", "setup_ms", "total_ms", "downtime_ms",
	"disk_bytes", "disk_rounds", "disk_remaining_bytes", "history_cut", "pause_start_ms",
};

/* A finite number >= 0 (integer or real): true with *out. */
static bool web_num(json_t *v, double *out)
{
	double d;

	if (json_is_integer(v))
		d = (double)json_integer_value(v);
	else if (json_is_real(v))
		d = json_real_value(v);
	else
		return false;
	if (!isfinite(d) || d < 0)
		return false;
	*out = d;
	return true;
}

static json_t *web_num_json(double d)
{
	if (d == floor(d) && d < 9007199254740992.0)
		return json_integer((json_int_t)d);
	return json_real(d);
}

/* A member name the page may show: 1-WEB_KEY_MAX of [a-z0-9_]. */
static bool web_key_ok(const char *k)
{
	size_t n = strlen(k);

	return n && n <= WEB_KEY_MAX && strspn(k, "abcdefghijklmnopqrstuvwxyz0123456789_") == n;
}

/* A short text value shown as it is (the page sets it as text): printable, bounded. */
static bool web_text_ok(const char *s, size_t max)
{
	size_t n = strlen(s);

	if (n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

/* One round of the report's history: its numbers, booleans and short words. */
static json_t *web_round(json_t *r)
{
	json_t *out = json_object(), *v;
	const char *k;
	unsigned int n = 0;

	if (!out)
		return NULL;
	json_object_foreach(r, k, v) {
		double d;

		if (n >= WEB_ROUND_FIELDS || !web_key_ok(k))
			continue;
		if (web_num(v, &d))
			json_object_set_new(out, k, web_num_json(d));
		else if (json_is_boolean(v))
			json_object_set(out, k, v);
		else if (json_is_string(v) && web_text_ok(json_string_value(v), 64))
			json_object_set(out, k, v);
		else
			continue;
		n++;
	}
	return out;
}

json_t *web_report(json_t *prog)
{
	json_t *out = json_object(), *h, *ph, *v;
	const char *k, *s;

	if (!out)
		return NULL;
	if (!json_is_object(prog))
		return out;
	for (size_t i = 0; i < ARRAY_SIZE(web_prog_nums); i++) {
		double d;

		if (web_num(json_object_get(prog, web_prog_nums[i]), &d))
			json_object_set_new(out, web_prog_nums[i], web_num_json(d));
	}
	s = json_string_value(json_object_get(prog, "status"));
	if (s && *s && strlen(s) <= WEB_KEY_MAX && strspn(s, "abcdefghijklmnopqrstuvwxyz-") == strlen(s))
		json_object_set_new(out, "status", json_string(s));
	h = json_object_get(prog, "history");
	if (json_is_array(h)) {
		json_t *arr = json_array();
		size_t n = json_array_size(h), i;

		for (i = 0; i < n && i < WEB_HISTORY_MAX && arr; i++) {
			json_t *r = json_array_get(h, i);

			if (json_is_object(r))
				json_array_append_new(arr, web_round(r));
		}
		json_object_set_new(out, "history", arr);
		if (n > WEB_HISTORY_MAX)
			json_object_set_new(out, "history_cut", json_integer((json_int_t)n));
	}
	ph = json_object_get(prog, "phases_ms");
	if (json_is_object(ph)) {
		json_t *o = json_object();
		unsigned int n = 0;

		json_object_foreach(ph, k, v) {
			double d;

			if (o && n < WEB_PHASES_MAX && web_key_ok(k) && web_num(v, &d)) {
				json_object_set_new(o, k, web_num_json(d));
				n++;
			}
		}
		json_object_set_new(out, "phases_ms", o);
	}
	return out;
}

/* How far the copy is, 0-100 (one decimal): sent / (sent + still to send); -1: unknown. */
static double web_percent(json_t *rep, const char *phase)
{
	double sent, left;

	if (!strcmp(phase, "done"))
		return 100;
	if (!web_num(json_object_get(rep, "bytes"), &sent) ||
	    !web_num(json_object_get(rep, "remaining_bytes"), &left) || sent + left <= 0)
		return -1;
	return floor(1000 * sent / (sent + left)) / 10;
}

static void web_set_text(json_t *o, const char *k, json_t *rec, const char *rk, size_t max)
{
	const char *s = json_string_value(json_object_get(rec, rk));

	/* Any text (it is shown as text), cut to max bytes at a character boundary. */
	if (!s) {
		json_object_set_new(o, k, json_null());
		return;
	}
	if (strlen(s) > max) {
		size_t n = max;

		while (n && ((unsigned char)s[n] & 0xc0) == 0x80)
			n--;
		json_object_set_new(o, k, json_stringn(s, n));
		return;
	}
	json_object_set_new(o, k, json_string(s));
}

json_t *web_record_report(json_t *rec)
{
	json_t *rep = web_report(json_object_get(rec, "progress"));
	const char *from = json_string_value(json_object_get(rec, "from"));
	const char *to = json_string_value(json_object_get(rec, "to"));

	/* the hosts' names rather than the VMM's address: what the picture's title says */
	if (rep && from && fleet_name_ok(from))
		json_object_set_new(rep, "from", json_string(from));
	if (rep && to && fleet_name_ok(to))
		json_object_set_new(rep, "to", json_string(to));
	if (rep)
		web_set_text(rep, "error", rec, "error", 512);
	if (rep && json_is_null(json_object_get(rep, "error")))
		json_object_del(rep, "error");
	return rep;
}

/* One VM's last migration (a valid record, fleet.c's checks); NULL: no memory. */
static json_t *web_migration(const struct fleet_vm *vm)
{
	json_t *rec = vm->migration, *id = json_object_get(rec, "id"), *rep, *o;
	const char *phase = json_string_value(json_object_get(rec, "phase"));
	const char *from = json_string_value(json_object_get(rec, "from"));
	const char *to = json_string_value(json_object_get(rec, "to"));
	bool ended = !strcmp(phase, "done") || !strcmp(phase, "failed");
	double pct, epoch;

	o = json_object();
	if (!o)
		return NULL;
	json_object_set_new(o, "vm", json_string(vm->name));
	if (json_is_integer(id))
		json_object_set_new(o, "id", json_sprintf("%" JSON_INTEGER_FORMAT,
							  json_integer_value(id)));
	else
		web_set_text(o, "id", rec, "id", 64);
	json_object_set_new(o, "from", from && fleet_name_ok(from) ? json_string(from) : json_null());
	json_object_set_new(o, "to", to && fleet_name_ok(to) ? json_string(to) : json_null());
	json_object_set_new(o, "epoch", web_num(json_object_get(rec, "epoch"), &epoch) ?
			    web_num_json(epoch) : json_null());
	web_set_text(o, "phase", rec, "phase", 32);
	web_set_text(o, "error", rec, "error", 512);
	web_set_text(o, "started", rec, "started", 32);
	web_set_text(o, "ended", rec, "ended", 32);
	json_object_set_new(o, "in_flight", json_boolean(!ended));
	rep = web_record_report(rec);
	pct = rep ? web_percent(rep, phase) : -1;
	json_object_set_new(o, "percent", pct >= 0 ? json_real(pct) : json_null());
	/* The picture, for a migration that ended with a report the timeline can draw. */
	if (ended && rep && web_timeline_ok(rep))
		json_object_set_new(o, "timeline", json_sprintf("/api/migrations/%s/timeline.svg",
								vm->name));
	else
		json_object_set_new(o, "timeline", json_null());
	json_object_set_new(o, "report", rep ? rep : json_null());
	return o;
}

bool web_timeline_ok(json_t *rep)
{
	char err[256];

	return json_array_size(json_object_get(rep, "history")) && timeline_check(rep, err, sizeof(err)) == 0;
}

json_t *web_fleet_json(const struct etcd_kvs *kvs, const char *self)
{
	struct fleet_ctx c = { .who = "godwitd web", .quiet = true };
	struct fleet_view v;
	json_t *out, *vms, *migs;

	if (fleet_view_from_kvs(&c, kvs, &v, true))
		return NULL;
	out = json_object();
	vms = json_array();
	migs = json_array();
	if (!out || !vms || !migs)
		goto oom;
	for (size_t i = 0; i < v.nv; i++) {
		json_t *row = fleet_vm_json(&v, &v.v[i]), *in;

		if (!row)
			goto oom;
		/* The intent's token helps authorise a migration: not for a page. */
		in = json_object_get(row, "intent");
		if (json_is_object(in)) {
			json_t *copy = json_pack("{s:O?, s:O?, s:O?}",
						 "op", json_object_get(in, "op"),
						 "to", json_object_get(in, "to"),
						 "id", json_object_get(in, "id"));

			json_object_set_new(row, "intent", copy ? copy : json_null());
		}
		json_array_append_new(vms, row);
		if (v.v[i].migration) {
			json_t *m = web_migration(&v.v[i]);

			if (!m)
				goto oom;
			json_array_append_new(migs, m);
		}
	}
	json_object_set_new(out, "self", json_string(self));
	json_object_set_new(out, "revision", json_integer(v.revision));
	json_object_set_new(out, "hosts", fleet_hosts_json(&v));
	json_object_set_new(out, "vms", vms);
	json_object_set_new(out, "migrations", migs);
	fleet_view_free(&v);
	if (!json_is_array(json_object_get(out, "hosts"))) {
		json_decref(out);
		return NULL;
	}
	return out;
oom:
	json_decref(out);
	json_decref(vms);
	json_decref(migs);
	fleet_view_free(&v);
	return NULL;
}
