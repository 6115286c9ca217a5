/*
 * prom.c - the Prometheus text exposition format 0.0.4 (prom.h): families
 * with HELP and TYPE, samples with escaped labels, exact numbers.  Used by
 * the VM's GET /metrics and godwitd's.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/prom.h"

#define PROM_MAX_LABELS 8

void prom_init(struct prom *p)
{
	memset(p, 0, sizeof(*p));
}

__attribute__((format(printf, 2, 3)))
static void prom_fail(struct prom *p, const char *fmt, ...)
{
	va_list ap;

	if (p->err[0])
		return;
	va_start(ap, fmt);
	vsnprintf(p->err, sizeof(p->err), fmt, ap);
	va_end(ap);
}

static void prom_put(struct prom *p, const char *s, size_t n)
{
	if (p->err[0])
		return;
	if (p->len + n + 1 > p->cap) {
		size_t cap = p->cap ? p->cap : 4096;
		char *nb;

		while (p->len + n + 1 > cap)
			cap *= 2;
		nb = realloc(p->buf, cap);
		if (!nb) {
			prom_fail(p, "out of memory");
			return;
		}
		p->buf = nb;
		p->cap = cap;
	}
	memcpy(p->buf + p->len, s, n);
	p->len += n;
	p->buf[p->len] = '\0';
}

static void prom_puts(struct prom *p, const char *s)
{
	prom_put(p, s, strlen(s));
}

/*
 * s escaped: backslash and newline always, the double quote in a label
 * value (quote); a byte that does not start a valid UTF-8 sequence becomes
 * U+FFFD, so a path in a label can never make the page unreadable.
 */
static void prom_put_escaped(struct prom *p, const char *s, bool quote)
{
	size_t len = strlen(s), i = 0, run = 0;

	while (i < len) {
		unsigned char c = (unsigned char)s[i];
		const char *rep = NULL;
		size_t n = 1;

		if (c == '\\')
			rep = "\\\\";
		else if (c == '\n')
			rep = "\\n";
		else if (c == '"' && quote)
			rep = "\\\"";
		else if (c >= 0x80) {
			n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
			if (n > len - i || !utf8_valid(s + i, n)) {
				rep = "\xef\xbf\xbd";
				n = 1;
			}
		}
		if (!rep) {
			i += n;
			run += n;
			continue;
		}
		prom_put(p, s + i - run, run);
		prom_puts(p, rep);
		run = 0;
		i += n;
	}
	prom_put(p, s + i - run, run);
}

static bool prom_name_ok(const char *s, bool label)
{
	if (!*s || strlen(s) >= PROM_NAME_MAX || (*s >= '0' && *s <= '9'))
		return false;
	if (label && s[0] == '_' && s[1] == '_')
		return false;            /* reserved for Prometheus itself */
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || (*s == ':' && !label)))
			return false;
	return true;
}

static bool prom_ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && !strcmp(s + n - m, suffix);
}

void prom_family(struct prom *p, const char *name, enum prom_type type, const char *help)
{
	static const char *const types[] = {
		[PROM_COUNTER] = "counter", [PROM_GAUGE] = "gauge", [PROM_SUMMARY] = "summary",
	};

	if (p->err[0])
		return;
	if (!prom_name_ok(name, false) || (unsigned int)type >= ARRAY_SIZE(types)) {
		prom_fail(p, "bad metric name or type: \"%.64s\"", name);
		return;
	}
	if (type == PROM_COUNTER && !prom_ends_with(name, "_total")) {
		prom_fail(p, "counter %s is not named *_total", name);
		return;
	}
	if (type != PROM_COUNTER && prom_ends_with(name, "_total")) {
		prom_fail(p, "%s is not a counter but is named *_total", name);
		return;
	}
	for (unsigned int i = 0; i < p->nr_names; i++) {
		if (!strcmp(p->names[i], name)) {
			prom_fail(p, "family %s written twice", name);
			return;
		}
	}
	if (p->nr_names == PROM_MAX_FAMILIES) {
		prom_fail(p, "more than %d families", PROM_MAX_FAMILIES);
		return;
	}
	p->names[p->nr_names] = strdup(name);
	if (!p->names[p->nr_names]) {
		prom_fail(p, "out of memory");
		return;
	}
	p->nr_names++;
	snprintf(p->fam, sizeof(p->fam), "%s", name);
	p->type = type;
	prom_puts(p, "# HELP ");
	prom_puts(p, name);
	prom_puts(p, " ");
	prom_put_escaped(p, help, false);
	prom_puts(p, "\n# TYPE ");
	prom_puts(p, name);
	prom_puts(p, " ");
	prom_puts(p, types[type]);
	prom_puts(p, "\n");
}

/*
 * The shortest of %.15g/%.16g/%.17g that strtod() reads back as v: 0.1 is
 * "0.1", not "0.10000000000000001".
 */
const char *prom_fmt_double(double v, char *buf, size_t len)
{
	if (isnan(v)) {
		snprintf(buf, len, "NaN");
	} else if (isinf(v)) {
		snprintf(buf, len, v > 0 ? "+Inf" : "-Inf");
	} else {
		for (int prec = 15; prec <= 17; prec++) {
			snprintf(buf, len, "%.*g", prec, v);
			if (strtod(buf, NULL) == v)
				break;
		}
	}
	return buf;
}

/* name{labels} value: the labels are va's name, value pairs up to NULL. */
static void prom_sample(struct prom *p, const char *suffix, const char *value, va_list ap)
{
	const char *seen[PROM_MAX_LABELS];
	unsigned int n = 0;
	const char *k;

	if (p->err[0])
		return;
	if (!p->fam[0]) {
		prom_fail(p, "a sample before any family");
		return;
	}
	if (p->type == PROM_SUMMARY ? !suffix || (strcmp(suffix, "_sum") &&
						  strcmp(suffix, "_count")) : suffix != NULL) {
		prom_fail(p, "%s: sample suffix \"%s\" does not fit its type", p->fam,
			  suffix ? suffix : "");
		return;
	}
	prom_puts(p, p->fam);
	if (suffix)
		prom_puts(p, suffix);
	while ((k = va_arg(ap, const char *))) {
		const char *v = va_arg(ap, const char *);

		if (!prom_name_ok(k, true) || n == PROM_MAX_LABELS) {
			prom_fail(p, "%s: bad label name \"%.32s\"", p->fam, k);
			return;
		}
		for (unsigned int i = 0; i < n; i++) {
			if (!strcmp(seen[i], k)) {
				prom_fail(p, "%s: label %s given twice", p->fam, k);
				return;
			}
		}
		seen[n] = k;
		prom_puts(p, n++ ? ",": "{");
		prom_puts(p, k);
		prom_puts(p, "=\"");
		prom_put_escaped(p, v ? v : "", true);
		prom_puts(p, "\"");
	}
	if (n)
		prom_puts(p, "}");
	prom_puts(p, " ");
	prom_puts(p, value);
	prom_puts(p, "\n");
}

void prom_u64_suffix(struct prom *p, const char *suffix, uint64_t v, ...)
{
	char buf[24];
	va_list ap;

	snprintf(buf, sizeof(buf), "%" PRIu64, v);
	va_start(ap, v);
	prom_sample(p, suffix, buf, ap);
	va_end(ap);
}

void prom_f64_suffix(struct prom *p, const char *suffix, double v, ...)
{
	char buf[32];
	va_list ap;

	va_start(ap, v);
	prom_sample(p, suffix, prom_fmt_double(v, buf, sizeof(buf)), ap);
	va_end(ap);
}

void prom_free(struct prom *p)
{
	for (unsigned int i = 0; i < p->nr_names; i++)
		free(p->names[i]);
	free(p->buf);
	prom_init(p);
}

const char *prom_error(const struct prom *p)
{
	return p->err[0] ? p->err : NULL;
}

char *prom_finish(struct prom *p, size_t *len)
{
	char *text = NULL;

	if (!p->err[0]) {
		if (!p->buf)
			prom_put(p, "", 0);
		if (!p->err[0]) {
			text = p->buf;
			*len = p->len;
			p->buf = NULL;
		}
	}
	if (!text) {
		char err[sizeof(p->err)];

		memcpy(err, p->err, sizeof(err));
		prom_free(p);
		memcpy(p->err, err, sizeof(err));
		return NULL;
	}
	prom_free(p);
	return text;
}

enum MHD_Result prom_respond(struct MHD_Connection *c, char *text, size_t len)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	enum MHD_Result ret;

	if (!r) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, PROM_CONTENT_TYPE);
	ret = MHD_queue_response(c, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	return ret;
}
