/*
 * prom.h - a writer of the Prometheus text exposition format 0.0.4, shared
 * by the VM's API (GET /metrics, api_metrics.c) and godwitd's local socket.
 *
 * A page is a sequence of families: prom_family() writes "# HELP" and
 * "# TYPE" once, the samples of that family follow it.  Values are written
 * exactly: unsigned integers in decimal (a counter past 2^53 is not rounded
 * through a double), doubles in the shortest form that reads back the same,
 * NaN as "NaN" and infinities as "+Inf"/"-Inf".  Label values and HELP text
 * are escaped as the format says (\\, \", \n; HELP: \\ and \n), and bytes
 * that are not UTF-8 become U+FFFD.
 *
 * A mistake of the caller (a bad metric or label name, a family written
 * twice, a counter not named *_total, a sample before any family) is not
 * papered over: the page fails as a whole and prom_error() says why.
 */
#ifndef GODWIT_PROM_H
#define GODWIT_PROM_H

#include <microhttpd.h>

#include "godwit/common.h"

#define PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define PROM_MAX_FAMILIES 128
#define PROM_NAME_MAX     96

enum prom_type {
	PROM_COUNTER,
	PROM_GAUGE,
	PROM_SUMMARY,            /* only _sum and _count samples (no quantiles) */
};

struct prom {
	char *buf;
	size_t len, cap;
	char fam[PROM_NAME_MAX];         /* the family being written */
	enum prom_type type;
	char *names[PROM_MAX_FAMILIES];  /* every family written, for duplicates */
	unsigned int nr_names;
	char err[160];                   /* "": no error so far */
};

void prom_init(struct prom *p);
/*
 * prom_family - start family name of type with help text (any bytes;
 * escaped).  A counter's name must end in "_total"; the name must be new on
 * this page.
 */
void prom_family(struct prom *p, const char *name, enum prom_type type, const char *help);
/*
 * prom_u64 / prom_f64 - a sample of the current family with value v and the
 * labels given as name, value pairs ended by NULL, e.g.
 *   prom_u64(p, 12, "vcpu", "0", "reason", "io", NULL);
 * A label value may hold any bytes (escaped; NULL counts as "").  For a
 * summary use prom_u64_suffix/prom_f64_suffix with "_sum" or "_count".
 */
#define prom_u64(p, v, ...) prom_u64_suffix(p, NULL, v, __VA_ARGS__)
#define prom_f64(p, v, ...) prom_f64_suffix(p, NULL, v, __VA_ARGS__)
void prom_u64_suffix(struct prom *p, const char *suffix, uint64_t v, ...)
	__attribute__((sentinel));
void prom_f64_suffix(struct prom *p, const char *suffix, double v, ...)
	__attribute__((sentinel));
/*
 * prom_finish - the page: a NUL-terminated malloc()ed text of *len bytes,
 * owned by the caller; NULL after an error (prom_error() says which).  The
 * writer is empty again afterwards either way.
 */
char *prom_finish(struct prom *p, size_t *len);
/* The first error, or NULL. */
const char *prom_error(const struct prom *p);
/* Free what p holds (after an error, or instead of prom_finish()). */
void prom_free(struct prom *p);
/*
 * prom_respond - answer c with a page from prom_finish(): 200 with
 * PROM_CONTENT_TYPE.  Takes text over (freed even when the response cannot
 * be made).
 */
enum MHD_Result prom_respond(struct MHD_Connection *c, char *text, size_t len);
/* Write v as the format does ("NaN", "+Inf", "1e+21", "0.1") into buf; returns buf. */
const char *prom_fmt_double(double v, char *buf, size_t len);

#endif
