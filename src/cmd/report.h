/*
 * report.h - a migration's report for people, and its SVG timeline in a
 * file: what `godwit migrate` and `godwit report` share (src/cmd/report.c).
 */
#ifndef GODWIT_CMD_REPORT_H
#define GODWIT_CMD_REPORT_H

#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>

/*
 * report_print - the human report of a migration report p.  from_migrate:
 * as `godwit migrate` ends (a completed migration on stdout, a failure on
 * stderr with what became of the VM); else as `godwit report` shows a saved
 * one (all on stdout, with a line per pre-copy round).  Either way a
 * completed migration's pause is broken down by phase when p has phases_ms.
 */
void report_print(json_t *p, bool from_migrate);

/*
 * report_svg_file - p's SVG timeline (timeline.h) into path ("-": stdout).
 * who prefixes messages ("migrate", "report").  A bad report is refused
 * before path is touched; a failed write removes the file.  0, or 1 with
 * the error printed.
 */
int report_svg_file(const json_t *p, const char *path, const char *who);

#endif
