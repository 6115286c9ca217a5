/*
 * timeline.c - a migration report drawn as a standalone SVG (timeline.h):
 * the report checked into a struct first (it is outside input), then drawn
 * from the struct only.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/timeline.h"

#define TL_W        960.0
#define TL_H        540.0
#define TL_LEFT     84.0
#define TL_RIGHT    (TL_W - 84.0)
#define TL_TOP      84.0
#define TL_BOTTOM   380.0
#define TL_STRIP_Y  440.0
#define TL_STRIP_H  28.0
#define TL_MIB      1048576.0
#define TL_MAX_MS   1e10            /* ~116 days */
#define TL_MAX_BYTES 1e16
#define TL_MAX_RATE 1e14
#define TL_TEXT_SHOW 140            /* characters of a string shown in the title */

static const char *const tl_phase_names[] = {
	"stop", "memory", "state", "ready", "release", "gate", "commit",
};
#define TL_NPHASES (sizeof(tl_phase_names) / sizeof(tl_phase_names[0]))
static const char *const tl_phase_colors[TL_NPHASES] = {
	"#9c755f", "#4e79a7", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
};

#define TL_C_BAR       "#4e79a7"
#define TL_C_REMAIN    "#59a14f"
#define TL_C_BW        "#f28e2b"
#define TL_C_DIRTY     "#e15759"
#define TL_C_PAUSE     "#79706e"
#define TL_C_SETUP     "#edc948"
#define TL_C_THROTTLE  "#b07aa1"

struct tl_round {
	double round, start_ms, ms, bytes, remaining, dirty_bps, bw_bps, exp_ms;
	double throttle_pct;                 /* < 0: absent */
};

struct tl_report {
	const char *status, *peer, *error;  /* peer: "to X" / "from X" text, or NULL */
	bool peer_from;
	double total_ms, downtime_ms, setup_ms, bytes;
	double pause_start_ms;               /* < 0: absent */
	bool has_phases;
	double phase_ms[TL_NPHASES];         /* < 0: absent */
	size_t n;
	struct tl_round *r;
};

static int tl_err(char *err, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int tl_err(char *err, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (len) {
		va_start(ap, fmt);
		vsnprintf(err, len, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

static const char *tl_type(const json_t *j)
{
	switch (json_typeof(j)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER:
	case JSON_REAL: return "a number";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	default: return "null";
	}
}

/*
 * A number field of o: *v = its value (def if absent and !required).
 * where names o in messages ("report", "history[3]").
 */
static int tl_num(const json_t *o, const char *where, const char *key, bool required,
		  double def, double max, double *v, char *err, size_t len)
{
	const json_t *j = json_object_get(o, key);
	double d;

	if (!j) {
		if (required)
			return tl_err(err, len, "%s: \"%s\" is missing", where, key);
		*v = def;
		return 0;
	}
	if (!json_is_number(j))
		return tl_err(err, len, "%s: \"%s\" must be a number, not %s", where, key,
			      tl_type(j));
	d = json_number_value(j);
	if (!isfinite(d) || d < 0 || d > max)
		return tl_err(err, len, "%s: \"%s\" is %g, expected 0 to %g", where, key, d, max);
	*v = d;
	return 0;
}

static int tl_str(const json_t *o, const char *key, bool required, const char **v,
		  char *err, size_t len)
{
	const json_t *j = json_object_get(o, key);

	*v = NULL;
	if (!j || json_is_null(j)) {
		if (required)
			return tl_err(err, len, "report: \"%s\" is missing", key);
		return 0;
	}
	if (!json_is_string(j))
		return tl_err(err, len, "report: \"%s\" must be a string, not %s", key,
			      tl_type(j));
	if (json_string_length(j) > TIMELINE_MAX_TEXT)
		return tl_err(err, len, "report: \"%s\" is longer than %d bytes", key,
			      TIMELINE_MAX_TEXT);
	*v = json_string_value(j);
	return 0;
}

static void tl_free(struct tl_report *t)
{
	free(t->r);
	t->r = NULL;
}

/* Check report into t (t->r malloc'd: tl_free).  0, -EINVAL or -ENOMEM. */
static int tl_parse(const json_t *report, struct tl_report *t, char *err, size_t len)
{
	const json_t *h, *ph;
	int r;

	memset(t, 0, sizeof(*t));
	if (!report || !json_is_object(report))
		return tl_err(err, len, "report: expected a JSON object, not %s",
			      report ? tl_type(report) : "nothing");
	if ((r = tl_str(report, "status", true, &t->status, err, len)) ||
	    (r = tl_str(report, "to", false, &t->peer, err, len)))
		return r;
	if (!t->peer) {
		if ((r = tl_str(report, "from", false, &t->peer, err, len)))
			return r;
		t->peer_from = t->peer != NULL;
	}
	if ((r = tl_str(report, "error", false, &t->error, err, len)) ||
	    (r = tl_num(report, "report", "total_ms", true, 0, TL_MAX_MS, &t->total_ms, err, len)) ||
	    (r = tl_num(report, "report", "downtime_ms", false, 0, TL_MAX_MS, &t->downtime_ms,
			err, len)) ||
	    (r = tl_num(report, "report", "setup_ms", false, 0, TL_MAX_MS, &t->setup_ms, err, len)) ||
	    (r = tl_num(report, "report", "bytes", false, 0, TL_MAX_BYTES, &t->bytes, err, len)) ||
	    (r = tl_num(report, "report", "pause_start_ms", false, -1, TL_MAX_MS,
			&t->pause_start_ms, err, len)))
		return r;
	for (size_t i = 0; i < TL_NPHASES; i++)
		t->phase_ms[i] = -1;
	ph = json_object_get(report, "phases_ms");
	if (ph && !json_is_null(ph)) {
		if (!json_is_object(ph))
			return tl_err(err, len, "report: \"phases_ms\" must be an object, not %s",
				      tl_type(ph));
		t->has_phases = true;
		for (size_t i = 0; i < TL_NPHASES; i++)
			if ((r = tl_num(ph, "phases_ms", tl_phase_names[i], false, -1, TL_MAX_MS,
					&t->phase_ms[i], err, len)))
				return r;
	}
	h = json_object_get(report, "history");
	if (!h)
		return tl_err(err, len, "report: \"history\" is missing (the pre-copy rounds: a "
			      "report from godwit migrate --json or GET /vm/migration)");
	if (!json_is_array(h))
		return tl_err(err, len, "report: \"history\" must be an array, not %s", tl_type(h));
	t->n = json_array_size(h);
	if (t->n > TIMELINE_MAX_ROUNDS)
		return tl_err(err, len, "report: \"history\" has %zu rounds, at most %d are drawn",
			      t->n, TIMELINE_MAX_ROUNDS);
	if (!t->n)
		return 0;
	t->r = calloc(t->n, sizeof(*t->r));
	if (!t->r) {
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < t->n; i++) {
		const json_t *o = json_array_get(h, i);
		struct tl_round *x = &t->r[i];
		char where[32];

		snprintf(where, sizeof(where), "history[%zu]", i);
		if (!json_is_object(o)) {
			r = tl_err(err, len, "%s: expected an object, not %s", where, tl_type(o));
			goto bad;
		}
		if ((r = tl_num(o, where, "round", true, 0, 1e9, &x->round, err, len)) ||
		    (r = tl_num(o, where, "start_ms", true, 0, TL_MAX_MS, &x->start_ms, err, len)) ||
		    (r = tl_num(o, where, "ms", true, 0, TL_MAX_MS, &x->ms, err, len)) ||
		    (r = tl_num(o, where, "bytes", true, 0, TL_MAX_BYTES, &x->bytes, err, len)) ||
		    (r = tl_num(o, where, "remaining_bytes", true, 0, TL_MAX_BYTES, &x->remaining,
				err, len)) ||
		    (r = tl_num(o, where, "dirty_rate_bps", true, 0, TL_MAX_RATE, &x->dirty_bps,
				err, len)) ||
		    (r = tl_num(o, where, "bandwidth_bps", true, 0, TL_MAX_RATE, &x->bw_bps,
				err, len)) ||
		    (r = tl_num(o, where, "expected_downtime_ms", true, 0, TL_MAX_MS, &x->exp_ms,
				err, len)) ||
		    (r = tl_num(o, where, "throttle_pct", false, -1, 100, &x->throttle_pct,
				err, len)))
			goto bad;
		if (x->round < 1 || (i && x->round <= t->r[i - 1].round)) {
			r = tl_err(err, len, "%s: \"round\" is %g: rounds must increase from 1",
				   where, x->round);
			goto bad;
		}
	}
	return 0;
bad:
	tl_free(t);
	return r;
}

int timeline_check(const json_t *report, char *err, size_t len)
{
	struct tl_report t;
	int r = tl_parse(report, &t, err, len);

	tl_free(&t);
	return r;
}

/* ---- drawing ------------------------------------------------------------------------------ */

/*
 * Text into out, escaped for XML (text and attribute values), at most max
 * characters (then "..."): code points XML 1.0 cannot carry become '?'.
 * The input is valid UTF-8 (jansson checks it); a bad sequence is '?' too.
 */
static void tl_text(FILE *out, const char *s, size_t max)
{
	size_t n = 0;

	for (const unsigned char *p = (const unsigned char *)s; *p; n++) {
		uint32_t c = *p;
		int extra = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 :
			    (c & 0xf8) == 0xf0 ? 3 : -1;
		const unsigned char *start = p;
		bool ok = extra >= 0;

		if (n == max) {
			fputs("...", out);
			return;
		}
		if (extra > 0)
			c &= 0x3f >> extra;
		p++;
		for (int k = 0; ok && k < extra; k++, p++) {
			if ((*p & 0xc0) != 0x80) {
				ok = false;
				break;
			}
			c = c << 6 | (*p & 0x3f);
		}
		if (!ok || (c < 0x20 && c != '\t' && c != '\n' && c != '\r') ||
		    (c >= 0xd800 && c <= 0xdfff) || c == 0xfffe || c == 0xffff || c > 0x10ffff ||
		    (extra == 1 && c < 0x80) || (extra == 2 && c < 0x800) ||
		    (extra == 3 && c < 0x10000)) {
			fputc('?', out);
			if (!ok && p == start)
				p++;
			continue;
		}
		switch (c) {
		case '&': fputs("&amp;", out); break;
		case '<': fputs("&lt;", out); break;
		case '>': fputs("&gt;", out); break;
		case '"': fputs("&quot;", out); break;
		case '\'': fputs("&apos;", out); break;
		case '\n': case '\r': case '\t': fputc(' ', out); break;
		default: fwrite(start, 1, (size_t)(p - start), out);
		}
	}
}

/* A byte count for people: "512 B", "4.0 KiB", "312.4 MiB", "1.50 GiB". */
static void tl_fmt_bytes(char *b, size_t n, double v)
{
	if (v < 1024)
		snprintf(b, n, "%.0f B", v);
	else if (v < TL_MIB)
		snprintf(b, n, "%.1f KiB", v / 1024);
	else if (v < 1024 * TL_MIB)
		snprintf(b, n, "%.1f MiB", v / TL_MIB);
	else
		snprintf(b, n, "%.2f GiB", v / (1024 * TL_MIB));
}

/* A duration for people: "0.42 ms", "12.3 ms", "1.25 s". */
static void tl_fmt_ms(char *b, size_t n, double ms)
{
	if (ms < 10)
		snprintf(b, n, "%.2f ms", ms);
	else if (ms < 10000)
		snprintf(b, n, "%.1f ms", ms);
	else
		snprintf(b, n, "%.2f s", ms / 1000);
}

/* A tick step of 1, 2 or 5 x 10^k giving about n ticks up to max (> 0). */
static double tl_step(double max, int n)
{
	double raw = max / n, p = pow(10, floor(log10(raw))), f = raw / p;

	return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

/* A tick label: v with as few decimals as step needs. */
static void tl_fmt_tick(char *b, size_t n, double v, double step)
{
	int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);

	snprintf(b, n, "%.*f", dec > 6 ? 6 : dec, v);
}

struct tl_draw {
	FILE *o;
	const struct tl_report *t;
	double xmax, xunit;        /* x domain in ms; ms per display unit (1 or 1000) */
	const char *xname;         /* "ms" or "s" */
	double lmax, lstep;        /* left axis, MiB */
	double rmax, rstep;        /* right axis, MiB/s */
};

static double tl_x(const struct tl_draw *d, double ms)
{
	return TL_LEFT + ms / d->xmax * (TL_RIGHT - TL_LEFT);
}

static double tl_yl(const struct tl_draw *d, double bytes)
{
	return TL_BOTTOM - bytes / TL_MIB / d->lmax * (TL_BOTTOM - TL_TOP);
}

static double tl_yr(const struct tl_draw *d, double bps)
{
	return TL_BOTTOM - bps / TL_MIB / d->rmax * (TL_BOTTOM - TL_TOP);
}

/* An axis's maximum and step for data up to max (any unit); 5 ticks or so. */
static void tl_axis(double max, double *amax, double *astep)
{
	if (!(max > 0))
		max = 1;
	*astep = tl_step(max, 5);
	*amax = ceil(max / *astep - 1e-9) * *astep;
}

static void tl_title(struct tl_draw *d)
{
	const struct tl_report *t = d->t;
	FILE *o = d->o;
	char a[32], b[32], c[32], e[32];

	fputs("<text x=\"20\" y=\"28\" font-size=\"17\" font-weight=\"bold\">godwit migration", o);
	if (t->peer) {
		fputs(t->peer_from ? " from " : " to ", o);
		tl_text(o, t->peer, 80);
	}
	fputs(": ", o);
	tl_text(o, t->status, 32);
	fputs("</text>\n", o);
	tl_fmt_ms(a, sizeof(a), t->total_ms);
	tl_fmt_ms(b, sizeof(b), t->downtime_ms);
	tl_fmt_bytes(c, sizeof(c), t->bytes);
	tl_fmt_ms(e, sizeof(e), t->setup_ms);
	fprintf(o, "<text x=\"20\" y=\"50\" font-size=\"13\">total %s, downtime %s, %s sent, "
		"%zu pre-copy round%s, setup %s</text>\n", a, b, c, t->n, t->n == 1 ? "" : "s", e);
	if (t->error && *t->error) {
		fputs("<text x=\"20\" y=\"68\" font-size=\"12\" fill=\"#c00\">error: ", o);
		tl_text(o, t->error, TL_TEXT_SHOW);
		fputs("</text>\n", o);
	}
}

static void tl_axes(struct tl_draw *d)
{
	FILE *o = d->o;
	double xstep = tl_step(d->xmax / d->xunit, 8);
	char b[32];

	fprintf(o, "<g class=\"axes\" stroke=\"#333\" fill=\"none\">\n"
		"<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n"
		"<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n"
		"<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n</g>\n",
		TL_LEFT, TL_BOTTOM, TL_RIGHT, TL_BOTTOM, TL_LEFT, TL_TOP, TL_LEFT, TL_BOTTOM,
		TL_RIGHT, TL_TOP, TL_RIGHT, TL_BOTTOM);
	fputs("<g class=\"ticks\" font-size=\"11\">\n", o);
	for (int i = 0; i <= 40; i++) {
		double v = i * xstep, x;

		if (v > d->xmax / d->xunit * (1 + 1e-9))
			break;
		x = tl_x(d, v * d->xunit);
		tl_fmt_tick(b, sizeof(b), v, xstep);
		fprintf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\"/>"
			"<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
			x, TL_BOTTOM, x, TL_BOTTOM + 5, x, TL_BOTTOM + 18, b);
	}
	for (int i = 0; i <= 20; i++) {
		double v = i * d->lstep, y = TL_BOTTOM - v / d->lmax * (TL_BOTTOM - TL_TOP);

		if (v > d->lmax * (1 + 1e-9))
			break;
		tl_fmt_tick(b, sizeof(b), v, d->lstep);
		fprintf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
			"<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
			TL_LEFT, y, TL_RIGHT, y, TL_LEFT - 6, y + 4, b);
	}
	for (int i = 0; i <= 20; i++) {
		double v = i * d->rstep, y = TL_BOTTOM - v / d->rmax * (TL_BOTTOM - TL_TOP);

		if (v > d->rmax * (1 + 1e-9))
			break;
		tl_fmt_tick(b, sizeof(b), v, d->rstep);
		fprintf(o, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", TL_RIGHT + 6, y + 4, b);
	}
	fputs("</g>\n", o);
	fprintf(o, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"12\">time since "
		"the migration started (%s)</text>\n", (TL_LEFT + TL_RIGHT) / 2, TL_BOTTOM + 36,
		d->xname);
	fprintf(o, "<text transform=\"translate(%.1f %.1f) rotate(-90)\" text-anchor=\"middle\" "
		"font-size=\"12\">sent per round, remaining (MiB)</text>\n", 24.0,
		(TL_TOP + TL_BOTTOM) / 2);
	fprintf(o, "<text transform=\"translate(%.1f %.1f) rotate(90)\" text-anchor=\"middle\" "
		"font-size=\"12\">bandwidth, dirty rate (MiB/s)</text>\n", TL_W - 22,
		(TL_TOP + TL_BOTTOM) / 2);
}

/* The setup and pause bands, and the end of the migration. */
static void tl_bands(struct tl_draw *d)
{
	const struct tl_report *t = d->t;
	FILE *o = d->o;
	char a[32], b[32];

	if (t->setup_ms > 0) {
		double x0 = tl_x(d, 0), x1 = tl_x(d, t->setup_ms);

		tl_fmt_ms(a, sizeof(a), t->setup_ms);
		fprintf(o, "<rect id=\"setup\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
			"fill=\"" TL_C_SETUP "\" fill-opacity=\"0.3\" data-ms=\"%.15g\">"
			"<title>setup: %s</title></rect>\n", x0, TL_TOP, fmax(x1 - x0, 1.5),
			TL_BOTTOM - TL_TOP, t->setup_ms, a);
	}
	if (t->pause_start_ms >= 0) {
		bool done = t->downtime_ms > 0;
		double end = done ? t->pause_start_ms + t->downtime_ms : fmax(t->total_ms,
									      t->pause_start_ms);
		double x0 = tl_x(d, t->pause_start_ms), x1 = tl_x(d, end);

		tl_fmt_ms(a, sizeof(a), t->pause_start_ms);
		tl_fmt_ms(b, sizeof(b), end - t->pause_start_ms);
		fprintf(o, "<rect id=\"pause\" class=\"pause\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
			"height=\"%.1f\" fill=\"" TL_C_PAUSE "\" fill-opacity=\"0.5\" "
			"data-start-ms=\"%.15g\" data-downtime-ms=\"%.15g\"><title>pause (VM stopped):"
			" %s from %s%s</title></rect>\n", x0, TL_TOP, fmax(x1 - x0, 4),
			TL_BOTTOM - TL_TOP, t->pause_start_ms, t->downtime_ms, b, a,
			done ? "" : " (did not complete)");
		fprintf(o, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\" "
			"fill=\"#444\">pause %s</text>\n", x0 - 3, TL_TOP + 12, b);
	}
	if (t->total_ms > 0) {
		double x = tl_x(d, t->total_ms);

		fprintf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\" "
			"stroke-dasharray=\"4 3\"/>\n", x, TL_TOP - 22, x, TL_BOTTOM);
		fprintf(o, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\">"
			"end</text>\n", x, TL_TOP - 26);
	}
}

/* Bars (bytes per round), throttling, remaining bytes, bandwidth and dirty rate. */
static void tl_rounds(struct tl_draw *d)
{
	const struct tl_report *t = d->t;
	FILE *o = d->o;
	char a[32], b[32], c[32], e[32], f[32], g[32];
	bool throttled = false;

	if (!t->n) {
		fprintf(o, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#666\">no "
			"pre-copy round finished</text>\n", (TL_LEFT + TL_RIGHT) / 2,
			(TL_TOP + TL_BOTTOM) / 2);
		return;
	}
	fputs("<g class=\"rounds\">\n", o);
	for (size_t i = 0; i < t->n; i++) {
		const struct tl_round *x = &t->r[i];
		double x0 = tl_x(d, x->start_ms), x1 = tl_x(d, x->start_ms + x->ms);
		double y = tl_yl(d, x->bytes), w = fmax(x1 - x0, 1);

		tl_fmt_bytes(a, sizeof(a), x->bytes);
		tl_fmt_ms(b, sizeof(b), x->ms);
		tl_fmt_bytes(c, sizeof(c), x->remaining);
		snprintf(e, sizeof(e), "%.1f MiB/s", x->bw_bps / TL_MIB);
		snprintf(f, sizeof(f), "%.1f MiB/s", x->dirty_bps / TL_MIB);
		tl_fmt_ms(g, sizeof(g), x->exp_ms);
		fprintf(o, "<rect class=\"round\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
			"height=\"%.1f\" fill=\"" TL_C_BAR "\" fill-opacity=\"0.75\" "
			"data-round=\"%.15g\" data-start-ms=\"%.15g\" data-ms=\"%.15g\" "
			"data-bytes=\"%.15g\" data-remaining-bytes=\"%.15g\" "
			"data-dirty-rate-bps=\"%.15g\" data-bandwidth-bps=\"%.15g\" "
			"data-expected-downtime-ms=\"%.15g\"",
			x0, y, w, TL_BOTTOM - y, x->round, x->start_ms, x->ms, x->bytes,
			x->remaining, x->dirty_bps, x->bw_bps, x->exp_ms);
		if (x->throttle_pct >= 0)
			fprintf(o, " data-throttle-pct=\"%.15g\"", x->throttle_pct);
		fprintf(o, "><title>round %.0f: %s in %s; remaining %s; bandwidth %s, dirty %s; "
			"expected downtime %s", x->round, a, b, c, e, f, g);
		if (x->throttle_pct >= 0)
			fprintf(o, "; throttle %.0f%%", x->throttle_pct);
		fputs("</title></rect>\n", o);
		if (w >= 16)
			fprintf(o, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"10\" "
				"fill=\"#333\">%.0f</text>\n", x0 + w / 2, y - 3, x->round);
		if (x->throttle_pct > 0) {
			throttled = true;
			fprintf(o, "<rect class=\"throttle\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
				"height=\"12\" fill=\"" TL_C_THROTTLE "\" fill-opacity=\"%.2f\" "
				"data-round=\"%.15g\" data-throttle-pct=\"%.15g\"><title>round %.0f: "
				"vCPUs throttled %.0f%%</title></rect>\n", x0, TL_TOP - 20, w,
				0.2 + 0.8 * x->throttle_pct / 100, x->round, x->throttle_pct, x->round,
				x->throttle_pct);
			if (w >= 28)
				fprintf(o, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
					"font-size=\"9\">%.0f%%</text>\n", x0 + w / 2, TL_TOP - 11,
					x->throttle_pct);
		}
	}
	fputs("</g>\n", o);
	if (throttled)
		fprintf(o, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"10\">"
			"throttle</text>\n", TL_LEFT - 4, TL_TOP - 10);
	/* Remaining bytes after each round: points at each round's end. */
	fputs("<polyline class=\"remaining\" fill=\"none\" stroke=\"" TL_C_REMAIN "\" "
	      "stroke-width=\"2\" points=\"", o);
	for (size_t i = 0; i < t->n; i++)
		fprintf(o, "%s%.1f,%.1f", i ? " " : "", tl_x(d, t->r[i].start_ms + t->r[i].ms),
			tl_yl(d, t->r[i].remaining));
	fputs("\"/>\n", o);
	for (size_t i = 0; i < t->n; i++)
		fprintf(o, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"" TL_C_REMAIN "\"/>\n",
			tl_x(d, t->r[i].start_ms + t->r[i].ms), tl_yl(d, t->r[i].remaining));
	/* The rates: each round's value over the round (steps). */
	for (int k = 0; k < 2; k++) {
		fprintf(o, "<polyline class=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
			"%spoints=\"", k ? "dirty-rate" : "bandwidth", k ? TL_C_DIRTY : TL_C_BW,
			k ? "stroke-dasharray=\"6 3\" " : "");
		for (size_t i = 0; i < t->n; i++) {
			const struct tl_round *x = &t->r[i];
			double y = tl_yr(d, k ? x->dirty_bps : x->bw_bps);

			fprintf(o, "%s%.1f,%.1f %.1f,%.1f", i ? " " : "", tl_x(d, x->start_ms), y,
				tl_x(d, x->start_ms + x->ms), y);
		}
		fputs("\"/>\n", o);
	}
}

/* The pause's phases, in a strip of their own (the pause is short beside pre-copy). */
static void tl_phases(struct tl_draw *d)
{
	const struct tl_report *t = d->t;
	FILE *o = d->o;
	double sum = 0, x = TL_LEFT, lx = TL_LEFT;
	char a[32], b[32];

	if (!t->has_phases) {
		fprintf(o, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" fill=\"#666\">pause by "
			"phase: %s</text>\n", TL_LEFT, TL_STRIP_Y - 10, t->pause_start_ms >= 0 ?
			"not known (the migration did not complete)" : "no pause (the migration did "
			"not reach stop-and-copy)");
		return;
	}
	for (size_t i = 0; i < TL_NPHASES; i++)
		if (t->phase_ms[i] > 0)
			sum += t->phase_ms[i];
	tl_fmt_ms(a, sizeof(a), sum);
	tl_fmt_ms(b, sizeof(b), t->downtime_ms);
	fprintf(o, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\">pause by phase: %s "
		"(downtime %s)</text>\n", TL_LEFT, TL_STRIP_Y - 10, a, b);
	fputs("<g class=\"phases\">\n", o);
	for (size_t i = 0; i < TL_NPHASES; i++) {
		double ms = t->phase_ms[i], w;

		if (ms < 0)
			continue;
		w = sum > 0 ? ms / sum * (TL_RIGHT - TL_LEFT) : 0;
		tl_fmt_ms(a, sizeof(a), ms);
		fprintf(o, "<rect class=\"phase\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
			"fill=\"%s\" data-phase=\"%s\" data-ms=\"%.15g\"><title>%s: %s</title></rect>\n",
			x, TL_STRIP_Y, w, TL_STRIP_H, tl_phase_colors[i], tl_phase_names[i], ms,
			tl_phase_names[i], a);
		if (w > 8.0 + 6.5 * (double)strlen(tl_phase_names[i]))
			fprintf(o, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\" "
				"fill=\"#fff\">%s</text>\n", x + w / 2, TL_STRIP_Y + 18,
				tl_phase_names[i]);
		x += w;
		/* Every phase also in a labelled row below, however narrow its segment. */
		fprintf(o, "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"%s\"/>"
			"<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">%s %s</text>\n", lx,
			TL_STRIP_Y + TL_STRIP_H + 10, tl_phase_colors[i], lx + 14,
			TL_STRIP_Y + TL_STRIP_H + 19, tl_phase_names[i], a);
		lx += 30 + 6.6 * (double)(strlen(tl_phase_names[i]) + strlen(a));
	}
	fputs("</g>\n", o);
}

static void tl_legend(struct tl_draw *d, bool throttle)
{
	static const struct { const char *name, *color; int kind; } items[] = {
		{ "sent per round (left)", TL_C_BAR, 0 },
		{ "remaining (left)", TL_C_REMAIN, 1 },
		{ "bandwidth (right)", TL_C_BW, 1 },
		{ "dirty rate (right)", TL_C_DIRTY, 2 },
		{ "setup", TL_C_SETUP, 3 },
		{ "pause", TL_C_PAUSE, 3 },
		{ "throttle", TL_C_THROTTLE, 0 },
	};
	FILE *o = d->o;
	double x = TL_LEFT, y = TL_H - 22;

	fputs("<g class=\"legend\" font-size=\"11\">\n", o);
	for (size_t i = 0; i < sizeof(items) / sizeof(items[0]); i++) {
		if (!strcmp(items[i].name, "throttle") && !throttle)
			continue;
		if (items[i].kind == 1 || items[i].kind == 2)
			fprintf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
				"stroke-width=\"2\"%s/>", x, y, x + 18, y, items[i].color,
				items[i].kind == 2 ? " stroke-dasharray=\"6 3\"" : "");
		else
			fprintf(o, "<rect x=\"%.1f\" y=\"%.1f\" width=\"18\" height=\"10\" fill=\"%s\" "
				"fill-opacity=\"%s\"/>", x, y - 5, items[i].color,
				items[i].kind == 3 ? "0.35" : "0.75");
		fprintf(o, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", x + 22, y + 4, items[i].name);
		x += 40 + 6.2 * (double)strlen(items[i].name);
	}
	fputs("</g>\n", o);
}

static void tl_draw(const struct tl_report *t, FILE *o)
{
	struct tl_draw d = { .o = o, .t = t };
	double lmax = 0, rmax = 0, xmax = t->total_ms;
	bool throttle = false;

	for (size_t i = 0; i < t->n; i++) {
		const struct tl_round *x = &t->r[i];

		lmax = fmax(lmax, fmax(x->bytes, x->remaining));
		rmax = fmax(rmax, fmax(x->bw_bps, x->dirty_bps));
		xmax = fmax(xmax, x->start_ms + x->ms);
		throttle |= x->throttle_pct > 0;
	}
	if (t->pause_start_ms >= 0)
		xmax = fmax(xmax, t->pause_start_ms + t->downtime_ms);
	xmax = fmax(xmax, t->setup_ms);
	d.xmax = xmax > 0 ? xmax * 1.02 : 1;    /* a margin: the end is not on the axis */
	d.xunit = d.xmax >= 10000 ? 1000 : 1;
	d.xname = d.xunit > 1 ? "s" : "ms";
	tl_axis(lmax / TL_MIB, &d.lmax, &d.lstep);
	tl_axis(rmax / TL_MIB, &d.rmax, &d.rstep);

	fprintf(o, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
		"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
		"viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" data-status=\"", TL_W, TL_H,
		TL_W, TL_H);
	tl_text(o, t->status, TIMELINE_MAX_TEXT);
	fprintf(o, "\" data-total-ms=\"%.15g\" data-downtime-ms=\"%.15g\" data-setup-ms=\"%.15g\" "
		"data-bytes=\"%.15g\" data-rounds=\"%zu\">\n", t->total_ms, t->downtime_ms,
		t->setup_ms, t->bytes, t->n);
	fprintf(o, "<rect width=\"%.0f\" height=\"%.0f\" fill=\"#fff\"/>\n", TL_W, TL_H);
	tl_title(&d);
	tl_bands(&d);
	tl_axes(&d);
	tl_rounds(&d);
	tl_phases(&d);
	tl_legend(&d, throttle);
	fputs("</svg>\n", o);
}

int timeline_svg(const json_t *report, FILE *out, char *err, size_t len)
{
	struct tl_report t;
	int r = tl_parse(report, &t, err, len);

	if (r)
		return r;
	tl_draw(&t, out);
	tl_free(&t);
	if (fflush(out) == EOF || ferror(out)) {
		snprintf(err, len, "write error: %s", strerror(errno));
		return -EIO;
	}
	return 0;
}

int timeline_svg_buf(const json_t *report, char **buf, size_t *size, char *err, size_t len)
{
	struct tl_report t;
	char *b = NULL;
	size_t n = 0;
	FILE *f;
	int r = tl_parse(report, &t, err, len);

	if (r)
		return r;
	f = open_memstream(&b, &n);
	if (!f) {
		tl_free(&t);
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	tl_draw(&t, f);
	tl_free(&t);
	if (fclose(f) == EOF || !b) {
		free(b);
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	*buf = b;
	*size = n;
	return 0;
}
