/*
 * timeline.h - a migration's report drawn as a standalone SVG picture
 * (src/lib/timeline.c; docs/migration.md, "Timeline").  Depends on jansson
 * and libc only.
 *
 * The input is a migration report: the object `godwit migrate --json`
 * prints, or the source's GET /api/v1/vm/migration (docs/api.md).  It is
 * outside input (a file, an API reply) and is checked before anything is
 * drawn:
 *   required  "status" (string), "total_ms" (number), "history" (array of
 *             at most TIMELINE_MAX_ROUNDS rounds, each an object with the
 *             numbers round, start_ms, ms, bytes, remaining_bytes,
 *             dirty_rate_bps, bandwidth_bps, expected_downtime_ms; rounds
 *             increasing from 1; optional throttle_pct 0..100)
 *   optional  downtime_ms, setup_ms, bytes, pause_start_ms (numbers),
 *             phases_ms (object: stop, memory, state, ready, release, gate,
 *             commit, each a number when present), to/from/error (strings
 *             of at most TIMELINE_MAX_TEXT bytes)
 * Numbers must be finite, >= 0 and below sane bounds; a missing or
 * wrong-typed field is refused with a message naming it.  Text is escaped
 * (and characters XML cannot carry replaced), so the output is well-formed
 * XML whatever the strings hold.
 *
 * The picture: time on the x axis; bytes sent per round (bars) and the
 * bytes remaining after each round (left axis, MiB); bandwidth and dirty
 * rate (right axis, MiB/s); the setup and the pause as shaded bands; the
 * pause broken into its phases in a strip below; throttling per round when
 * the rounds carry throttle_pct; a title, axes, units and a legend.  The
 * numbers drawn are also in data-* attributes (data-bytes="..." on each
 * round's bar, class "round"; data-start-ms/data-downtime-ms on the pause,
 * id "pause"; data-phase/data-ms on each phase, class "phase") and in
 * <title> tooltips, so tests and tools can read them back.
 */
#ifndef GODWIT_TIMELINE_H
#define GODWIT_TIMELINE_H

#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#define TIMELINE_MAX_ROUNDS  4096
#define TIMELINE_MAX_TEXT    4096

/*
 * timeline_check - check a report as timeline_svg() would, drawing nothing.
 * Returns 0, or -EINVAL with the reason in err (always NUL-terminated).
 */
int timeline_check(const json_t *report, char *err, size_t len)
	__attribute__((warn_unused_result));

/*
 * timeline_svg - write the SVG picture of report to out.
 *   report  the migration report (above); not modified
 *   out     where the SVG goes (written only once the report was checked)
 *   err/len the reason on failure
 * Returns 0; -EINVAL (a bad report: nothing written), -EIO (a write to
 * out failed) or -ENOMEM, with err set.
 */
int timeline_svg(const json_t *report, FILE *out, char *err, size_t len)
	__attribute__((warn_unused_result));

/*
 * timeline_svg_buf - the same into a malloc'd buffer (for a server).
 *   *buf, *size  the SVG text (NUL-terminated; size excludes the NUL);
 *                the caller frees *buf.  Both untouched on failure.
 * Returns 0, -EINVAL or -ENOMEM, with err set.
 */
int timeline_svg_buf(const json_t *report, char **buf, size_t *size, char *err, size_t len)
	__attribute__((warn_unused_result));

#endif
