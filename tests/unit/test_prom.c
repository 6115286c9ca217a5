/*
 * test_prom.c - the Prometheus text writer (src/lib/prom.c): the exact
 * text of a page, escaping, numbers, and the caller's mistakes refused.
 */
#include <math.h>
#include <stdlib.h>

#include "godwit/prom.h"
#include "unit.h"

static char *page(struct prom *p)
{
	size_t len = 0;
	char *t = prom_finish(p, &len);

	if (t)
		CHECK_EQ(strlen(t), len);
	return t;
}

TEST(prom_page_exact)
{
	struct prom p;
	char *t;

	prom_init(&p);
	prom_family(&p, "godwit_vcpu_exits_total", PROM_COUNTER, "KVM_RUN exits.");
	prom_u64(&p, 7, "vcpu", "0", "reason", "io", NULL);
	prom_u64(&p, 0, "vcpu", "1", "reason", "io", NULL);
	prom_family(&p, "godwit_vm_uptime_seconds", PROM_GAUGE, "Seconds since start.");
	prom_f64(&p, 1.5, NULL);
	prom_family(&p, "godwit_x_duration_seconds", PROM_SUMMARY, "Durations.");
	prom_f64_suffix(&p, "_sum", 0.25, NULL);
	prom_u64_suffix(&p, "_count", 3, NULL);
	t = page(&p);
	CHECK_STR(t, "# HELP godwit_vcpu_exits_total KVM_RUN exits.\n"
		  "# TYPE godwit_vcpu_exits_total counter\n"
		  "godwit_vcpu_exits_total{vcpu=\"0\",reason=\"io\"} 7\n"
		  "godwit_vcpu_exits_total{vcpu=\"1\",reason=\"io\"} 0\n"
		  "# HELP godwit_vm_uptime_seconds Seconds since start.\n"
		  "# TYPE godwit_vm_uptime_seconds gauge\n"
		  "godwit_vm_uptime_seconds 1.5\n"
		  "# HELP godwit_x_duration_seconds Durations.\n"
		  "# TYPE godwit_x_duration_seconds summary\n"
		  "godwit_x_duration_seconds_sum 0.25\n"
		  "godwit_x_duration_seconds_count 3\n");
	free(t);
}

TEST(prom_escaping)
{
	struct prom p;
	char *t;

	prom_init(&p);
	prom_family(&p, "godwit_a", PROM_GAUGE, "back\\slash \"quote\" and\nnewline");
	/* Label values: \\, \", \n; other bytes as they are; bad UTF-8 -> U+FFFD. */
	prom_u64(&p, 1, "path", "/a\\b\"c\nd\te", NULL);
	prom_u64(&p, 2, "path", "caf\xc3\xa9 \xff\xc0\x80 \xe2\x82", NULL);
	prom_u64(&p, 3, "path", NULL, NULL);
	t = page(&p);
	CHECK_STR(t, "# HELP godwit_a back\\\\slash \"quote\" and\\nnewline\n"
		  "# TYPE godwit_a gauge\n"
		  "godwit_a{path=\"/a\\\\b\\\"c\\nd\te\"} 1\n"
		  "godwit_a{path=\"caf\xc3\xa9 \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd "
		  "\xef\xbf\xbd\xef\xbf\xbd\"} 2\n"
		  "godwit_a{path=\"\"} 3\n");
	free(t);
}

TEST(prom_numbers)
{
	char buf[32];
	struct prom p;
	char *t;

	CHECK_STR(prom_fmt_double(NAN, buf, sizeof(buf)), "NaN");
	CHECK_STR(prom_fmt_double(INFINITY, buf, sizeof(buf)), "+Inf");
	CHECK_STR(prom_fmt_double(-INFINITY, buf, sizeof(buf)), "-Inf");
	CHECK_STR(prom_fmt_double(0.1, buf, sizeof(buf)), "0.1");
	CHECK_STR(prom_fmt_double(-0.012345, buf, sizeof(buf)), "-0.012345");
	CHECK_STR(prom_fmt_double(0, buf, sizeof(buf)), "0");
	CHECK_STR(prom_fmt_double(1e21, buf, sizeof(buf)), "1e+21");
	/* Shortest round trip, but never less than exact. */
	CHECK(strtod(prom_fmt_double(1.0 / 3, buf, sizeof(buf)), NULL) == 1.0 / 3);
	CHECK(strtod(prom_fmt_double(9007199254740993.0, buf, sizeof(buf)), NULL) ==
	      9007199254740993.0);

	prom_init(&p);
	prom_family(&p, "godwit_big_total", PROM_COUNTER, "h");
	/* Integers are exact: 2^53 + 1 and UINT64_MAX are not rounded through a double. */
	prom_u64(&p, 9007199254740993ULL, NULL);
	prom_u64(&p, UINT64_MAX, "k", "v", NULL);
	prom_family(&p, "godwit_f", PROM_GAUGE, "h");
	prom_f64(&p, NAN, NULL);
	prom_f64(&p, -INFINITY, "k", "v", NULL);
	t = page(&p);
	CHECK_STR(t, "# HELP godwit_big_total h\n# TYPE godwit_big_total counter\n"
		  "godwit_big_total 9007199254740993\n"
		  "godwit_big_total{k=\"v\"} 18446744073709551615\n"
		  "# HELP godwit_f h\n# TYPE godwit_f gauge\n"
		  "godwit_f NaN\ngodwit_f{k=\"v\"} -Inf\n");
	free(t);
}

/* One mistake: the page fails and says why; the writer is reusable. */
static void expect_error(struct prom *p, const char *what)
{
	size_t len = 12345;
	const char *e = prom_error(p);

	if (!e || !strstr(e, what))
		unit_fail(__FILE__, __LINE__, "error \"%s\", expected one with \"%s\"",
			  e ? e : "(none)", what);
	CHECK(prom_finish(p, &len) == NULL);
	CHECK_EQ(len, 12345);
	CHECK(prom_error(p) != NULL);
	prom_free(p);
	CHECK(prom_error(p) == NULL);
}

TEST(prom_mistakes_refused)
{
	struct prom p;

	prom_init(&p);
	prom_family(&p, "godwit_requests", PROM_COUNTER, "h");
	expect_error(&p, "_total");
	prom_family(&p, "godwit_x_total", PROM_GAUGE, "h");
	expect_error(&p, "_total");
	prom_family(&p, "9bad", PROM_GAUGE, "h");
	expect_error(&p, "bad metric name");
	prom_family(&p, "godwit-dash", PROM_GAUGE, "h");
	expect_error(&p, "bad metric name");
	prom_u64(&p, 1, NULL);
	expect_error(&p, "before any family");
	prom_family(&p, "godwit_a", PROM_GAUGE, "h");
	prom_family(&p, "godwit_b", PROM_GAUGE, "h");
	prom_family(&p, "godwit_a", PROM_GAUGE, "h");
	expect_error(&p, "twice");
	prom_family(&p, "godwit_a", PROM_GAUGE, "h");
	prom_u64(&p, 1, "__reserved", "x", NULL);
	expect_error(&p, "bad label name");
	prom_family(&p, "godwit_a", PROM_GAUGE, "h");
	prom_u64(&p, 1, "a:b", "x", NULL);
	expect_error(&p, "bad label name");
	prom_family(&p, "godwit_a", PROM_GAUGE, "h");
	prom_u64(&p, 1, "k", "x", "k", "y", NULL);
	expect_error(&p, "twice");
	prom_family(&p, "godwit_a", PROM_GAUGE, "h");
	prom_u64_suffix(&p, "_sum", 1, NULL);
	expect_error(&p, "suffix");
	prom_family(&p, "godwit_s_seconds", PROM_SUMMARY, "h");
	prom_u64(&p, 1, NULL);
	expect_error(&p, "suffix");
}

TEST(prom_empty_page)
{
	struct prom p;
	size_t len = 1;
	char *t;

	prom_init(&p);
	t = prom_finish(&p, &len);
	CHECK_STR(t, "");
	CHECK_EQ(len, 0);
	free(t);
}
