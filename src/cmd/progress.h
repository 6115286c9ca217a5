/*
 * progress.h - `godwit migrate`'s live progress line on a terminal
 * (src/cmd/progress.c): one line on stderr redrawn in place (\r, erase to
 * the end of the line), as wide as the terminal: the phase, how much of
 * memory the destination holds, the disks' bytes, the rate, the dirty rate,
 * the expected downtime, the time left for the copy under way and the time
 * so far.  No curses: a carriage return and ANSI's erase-in-line.
 */
#ifndef GODWIT_CMD_PROGRESS_H
#define GODWIT_CMD_PROGRESS_H

#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>

#define PROG_SAMPLES 32

struct prog_line {
	FILE *out;                  /* stderr */
	double mem_bytes;           /* the VM's memory (GET /vm), 0 if unknown */
	double t_drawn;             /* when the line was last drawn (ms, monotonic) */
	size_t drawn;               /* columns on screen now (0: no line shown) */
	char last_phase[48];
	/* The rate: (time, bytes) samples over the last second or so. */
	double st[PROG_SAMPLES], sb[PROG_SAMPLES];
	unsigned int ns, head;
	/* The round under way: pages when it was first seen, and what it has to send. */
	double rounds_seen, pages_mark;
};

/* prog_init - for out (a terminal); mem_bytes 0 if unknown. */
void prog_init(struct prog_line *l, FILE *out, double mem_bytes);
/*
 * prog_update - a new progress object p (GET /vm/migration): redraw the line
 * if PROG_REDRAW_MS passed or the phase changed (force: always).
 */
void prog_update(struct prog_line *l, json_t *p, bool force);
/* prog_clear - erase the line (before other output, and at the end). */
void prog_clear(struct prog_line *l);
/* prog_format - the line for p into buf, at most width columns (for tests). */
void prog_format(struct prog_line *l, json_t *p, double now_ms, char *buf, size_t len,
		 unsigned int width);

#endif
