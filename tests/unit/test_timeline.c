/*
 * test_timeline.c - the SVG timeline (timeline.h): a synthetic report drawn
 * as well-formed XML with one bar per round, the pause band, a segment per
 * phase and its numbers in data-* attributes; throttling drawn when rounds
 * carry it; text escaped; a failed migration drawn as far as it got; the
 * buffer API writing the same bytes; bad reports refused with a message
 * naming the field, nothing written.
 */
#include <errno.h>
#include <stdlib.h>

#include "godwit/timeline.h"
#include "unit.h"
#include "xml_check.h"

static const char good_report[] =
	"{\"status\":\"completed\",\"to\":\"unix:/tmp/m.sock\",\"total_ms\":812.5,"
	"\"downtime_ms\":14.25,\"setup_ms\":3.5,\"bytes\":301989888,\"pages\":90000,"
	"\"rounds\":3,\"pause_start_ms\":790.0,"
	"\"phases_ms\":{\"stop\":0.5,\"memory\":6.0,\"state\":1.25,\"ready\":4.0,"
	"\"release\":0.5,\"commit\":2.0},"
	"\"history\":["
	"{\"round\":1,\"start_ms\":3.5,\"ms\":600.0,\"bytes\":268435456,"
	"\"remaining_bytes\":31457280,\"dirty_rate_bps\":52428800,\"bandwidth_bps\":447392427,"
	"\"expected_downtime_ms\":70.3},"
	"{\"round\":2,\"start_ms\":603.5,\"ms\":120.0,\"bytes\":31457280,"
	"\"remaining_bytes\":6291456,\"dirty_rate_bps\":52428800,\"bandwidth_bps\":262144000,"
	"\"expected_downtime_ms\":24.0,\"throttle_pct\":20},"
	"{\"round\":3,\"start_ms\":723.5,\"ms\":66.5,\"bytes\":2097152,"
	"\"remaining_bytes\":1048576,\"dirty_rate_bps\":15728640,\"bandwidth_bps\":31536722,"
	"\"expected_downtime_ms\":4.0,\"throttle_pct\":40}]}";

static json_t *load(const char *text)
{
	json_error_t e;
	json_t *j = json_loads(text, 0, &e);

	if (!j)
		unit_fail(__FILE__, __LINE__, "test JSON: %s", e.text);
	return j;
}

/* Render j; the SVG text (malloc'd) or NULL with err set. */
static char *render(json_t *j, int *ret, char *err, size_t len)
{
	char *buf = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&buf, &size);

	if (!f)
		return NULL;
	*ret = timeline_svg(j, f, err, len);
	fclose(f);
	if (*ret) {
		if (size)
			unit_fail(__FILE__, __LINE__, "a refused report still wrote %zu bytes", size);
		free(buf);
		return NULL;
	}
	return buf;
}

static int count(const char *s, const char *needle)
{
	int n = 0;

	for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

TEST(timeline_draws_a_report)
{
	json_t *j = load(good_report);
	char err[256] = "", *svg, *buf = NULL;
	const char *root = NULL, *why;
	size_t size = 0;
	int r;

	svg = render(j, &r, err, sizeof(err));
	CHECK_EQ(r, 0);
	CHECK(svg != NULL);
	if (!svg) {
		json_decref(j);
		return;
	}
	why = xml_check(svg, strlen(svg), &root);
	if (why)
		unit_fail(__FILE__, __LINE__, "not well-formed: %s", why);
	CHECK(root && !strncmp(root, "svg ", 4));
	CHECK_EQ(count(svg, "class=\"round\""), 3);
	CHECK_EQ(count(svg, "id=\"pause\""), 1);
	CHECK(strstr(svg, "data-start-ms=\"790\" data-downtime-ms=\"14.25\""));
	CHECK(strstr(svg, "data-bytes=\"268435456\""));
	CHECK(strstr(svg, "data-bytes=\"31457280\" data-remaining-bytes=\"6291456\""));
	CHECK_EQ(count(svg, "class=\"phase\""), 6);        /* no gate phase in this report */
	CHECK(strstr(svg, "data-phase=\"memory\" data-ms=\"6\""));
	CHECK(strstr(svg, "data-phase=\"commit\" data-ms=\"2\""));
	CHECK(!strstr(svg, "data-phase=\"gate\""));
	CHECK_EQ(count(svg, "class=\"throttle\""), 2);
	CHECK(strstr(svg, "data-throttle-pct=\"40\""));
	CHECK(strstr(svg, "godwit migration to unix:/tmp/m.sock: completed"));
	CHECK(strstr(svg, "data-total-ms=\"812.5\""));
	CHECK(strstr(svg, "(MiB/s)"));
	CHECK(strstr(svg, "time since the migration started (ms)"));
	/* The buffer API writes the same bytes. */
	CHECK_EQ(timeline_svg_buf(j, &buf, &size, err, sizeof(err)), 0);
	CHECK(buf && size == strlen(svg) && !memcmp(buf, svg, size));
	free(buf);
	free(svg);
	json_decref(j);
}

TEST(timeline_escapes_text)
{
	json_t *j = load(good_report);
	char err[256], *svg;
	const char *why;
	int r;

	json_object_set_new(j, "to", json_string("<a href=\"x\">&amp;'\x01\xef\xbf\xbf"));
	json_object_set_new(j, "error", json_string("</svg><script>alert(1)</script>"));
	svg = render(j, &r, err, sizeof(err));
	CHECK_EQ(r, 0);
	if (svg) {
		why = xml_check(svg, strlen(svg), NULL);
		CHECK(why == NULL);
		CHECK(strstr(svg, "&lt;a href=&quot;x&quot;&gt;&amp;amp;&apos;??"));
		CHECK(strstr(svg, "&lt;/svg&gt;&lt;script&gt;"));
		CHECK(!strstr(svg, "<script"));
	}
	free(svg);
	json_decref(j);
}

TEST(timeline_failed_migration)
{
	/* Failed in stop-and-copy: a pause but no phases; and one failed in setup. */
	json_t *j = load("{\"status\":\"failed\",\"total_ms\":500,\"error\":\"link cut\","
			 "\"pause_start_ms\":480,\"history\":[{\"round\":1,\"start_ms\":2,"
			 "\"ms\":470,\"bytes\":1000,\"remaining_bytes\":10,\"dirty_rate_bps\":0,"
			 "\"bandwidth_bps\":2000,\"expected_downtime_ms\":1}]}");
	char err[256], *svg;
	int r;

	svg = render(j, &r, err, sizeof(err));
	CHECK_EQ(r, 0);
	if (svg) {
		CHECK(xml_check(svg, strlen(svg), NULL) == NULL);
		CHECK_EQ(count(svg, "class=\"round\""), 1);
		CHECK(strstr(svg, "id=\"pause\""));
		CHECK(strstr(svg, "did not complete"));
		CHECK(strstr(svg, "error: link cut"));
		CHECK_EQ(count(svg, "class=\"phase\""), 0);
	}
	free(svg);
	json_decref(j);
	j = load("{\"status\":\"failed\",\"total_ms\":0,\"history\":[]}");
	svg = render(j, &r, err, sizeof(err));
	CHECK_EQ(r, 0);
	if (svg) {
		CHECK(xml_check(svg, strlen(svg), NULL) == NULL);
		CHECK(strstr(svg, "no pre-copy round finished"));
		CHECK(!strstr(svg, "id=\"pause\""));
	}
	free(svg);
	json_decref(j);
}

TEST(timeline_refuses_bad_reports)
{
	static const struct { const char *json, *err; } cases[] = {
		{ "[]", "report: expected a JSON object, not an array" },
		{ "{\"total_ms\":1,\"history\":[]}", "report: \"status\" is missing" },
		{ "{\"status\":7,\"total_ms\":1,\"history\":[]}",
		  "report: \"status\" must be a string, not a number" },
		{ "{\"status\":\"completed\",\"history\":[]}", "report: \"total_ms\" is missing" },
		{ "{\"status\":\"completed\",\"total_ms\":\"5\",\"history\":[]}",
		  "report: \"total_ms\" must be a number, not a string" },
		{ "{\"status\":\"completed\",\"total_ms\":-1,\"history\":[]}",
		  "report: \"total_ms\" is -1, expected 0 to 1e+10" },
		{ "{\"status\":\"completed\",\"total_ms\":1}",
		  "report: \"history\" is missing (the pre-copy rounds: a report from godwit "
		  "migrate --json or GET /vm/migration)" },
		{ "{\"status\":\"completed\",\"total_ms\":1,\"history\":{}}",
		  "report: \"history\" must be an array, not an object" },
		{ "{\"status\":\"completed\",\"total_ms\":1,\"history\":[3]}",
		  "history[0]: expected an object, not a number" },
		{ "{\"status\":\"completed\",\"total_ms\":1,\"history\":[{\"round\":1,\"start_ms\":0,"
		  "\"ms\":1,\"bytes\":\"x\"}]}", "history[0]: \"bytes\" must be a number, not a string" },
		{ "{\"status\":\"completed\",\"total_ms\":1,\"history\":[{\"round\":1,\"start_ms\":0,"
		  "\"ms\":1,\"bytes\":1,\"remaining_bytes\":0,\"dirty_rate_bps\":0,\"bandwidth_bps\":0}]}",
		  "history[0]: \"expected_downtime_ms\" is missing" },
		{ "{\"status\":\"completed\",\"total_ms\":1,\"history\":[{\"round\":2,\"start_ms\":0,"
		  "\"ms\":1,\"bytes\":1,\"remaining_bytes\":0,\"dirty_rate_bps\":0,\"bandwidth_bps\":0,"
		  "\"expected_downtime_ms\":0,\"throttle_pct\":101}]}",
		  "history[0]: \"throttle_pct\" is 101, expected 0 to 100" },
		{ "{\"status\":\"completed\",\"total_ms\":1,\"history\":[{\"round\":0,\"start_ms\":0,"
		  "\"ms\":1,\"bytes\":1,\"remaining_bytes\":0,\"dirty_rate_bps\":0,\"bandwidth_bps\":0,"
		  "\"expected_downtime_ms\":0}]}",
		  "history[0]: \"round\" is 0: rounds must increase from 1" },
		{ "{\"status\":\"completed\",\"total_ms\":1,\"phases_ms\":[1],\"history\":[]}",
		  "report: \"phases_ms\" must be an object, not an array" },
		{ "{\"status\":\"completed\",\"total_ms\":1,\"phases_ms\":{\"stop\":true},"
		  "\"history\":[]}", "phases_ms: \"stop\" must be a number, not a boolean" },
		{ "{\"status\":\"completed\",\"total_ms\":1,\"to\":[],\"history\":[]}",
		  "report: \"to\" must be a string, not an array" },
	};
	char err[256], *svg;
	int r;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		json_t *j = load(cases[i].json);

		err[0] = '\0';
		svg = render(j, &r, err, sizeof(err));
		CHECK_EQ(r, -EINVAL);
		CHECK(svg == NULL);
		CHECK_STR(err, cases[i].err);
		CHECK_EQ(timeline_check(j, err, sizeof(err)), -EINVAL);
		free(svg);
		json_decref(j);
	}
	CHECK_EQ(timeline_check(NULL, err, sizeof(err)), -EINVAL);
	CHECK_STR(err, "report: expected a JSON object, not nothing");
}

TEST(timeline_bounds)
{
	/* Too many rounds; rounds not increasing; a string over the limit. */
	json_t *j = load("{\"status\":\"completed\",\"total_ms\":1,\"history\":[]}");
	json_t *h = json_object_get(j, "history");
	char err[256], *big;

	for (int i = 0; i <= TIMELINE_MAX_ROUNDS; i++)
		json_array_append_new(h, json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i}",
						   "round", i + 1, "start_ms", i, "ms", 1,
						   "bytes", 1, "remaining_bytes", 0,
						   "dirty_rate_bps", 0, "bandwidth_bps", 1,
						   "expected_downtime_ms", 0));
	CHECK_EQ(timeline_check(j, err, sizeof(err)), -EINVAL);
	CHECK_STR(err, "report: \"history\" has 4097 rounds, at most 4096 are drawn");
	json_array_remove(h, TIMELINE_MAX_ROUNDS);
	CHECK_EQ(timeline_check(j, err, sizeof(err)), 0);
	json_object_set_new(json_array_get(h, 7), "round", json_integer(7));
	CHECK_EQ(timeline_check(j, err, sizeof(err)), -EINVAL);
	CHECK_STR(err, "history[7]: \"round\" is 7: rounds must increase from 1");
	json_array_clear(h);
	big = malloc(TIMELINE_MAX_TEXT + 2);
	if (big) {
		memset(big, 'x', TIMELINE_MAX_TEXT + 1);
		big[TIMELINE_MAX_TEXT + 1] = '\0';
		json_object_set_new(j, "error", json_string(big));
		CHECK_EQ(timeline_check(j, err, sizeof(err)), -EINVAL);
		CHECK_STR(err, "report: \"error\" is longer than 4096 bytes");
		free(big);
	}
	json_decref(j);
}
