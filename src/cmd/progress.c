/*
 * progress.c - `godwit migrate`'s live progress line on a terminal
 * (progress.h).  Everything it shows comes from GET /vm/migration, plus
 * the VM's memory size (GET /vm) for the percentage and a rate measured
 * here from the bytes sent between polls.
 *
 * "mem N%" is the share of the guest's memory the destination holds up to
 * date: in round 1, the pages sent so far; after it, memory less what the
 * last finished round left dirty, less what the round under way has sent
 * of that since (pages counted from the first poll that saw the round).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "godwit/common.h"
#include "progress.h"

#define PROG_REDRAW_MS 200          /* a few times a second */
#define PROG_RATE_MS   1000         /* the rate is measured over about this long */
#define PROG_PAGE      4096.0

static double prog_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double jnum(json_t *j, const char *k)
{
	return json_number_value(json_object_get(j, k));
}

static const char *jstr(json_t *j, const char *k)
{
	const char *s = json_string_value(json_object_get(j, k));

	return s ? s : "";
}

void prog_init(struct prog_line *l, FILE *out, double mem_bytes)
{
	memset(l, 0, sizeof(*l));
	l->out = out;
	l->mem_bytes = mem_bytes;
	l->t_drawn = -1e9;
	l->rounds_seen = -1;
}

/* Bytes per second over the samples of the last PROG_RATE_MS; -1 if not known yet. */
static double prog_rate(struct prog_line *l, double now, double bytes)
{
	unsigned int oldest = l->head;      /* the sample added below */
	double rate = -1;

	l->st[l->head] = now;
	l->sb[l->head] = bytes;
	l->head = (l->head + 1) % PROG_SAMPLES;
	if (l->ns < PROG_SAMPLES)
		l->ns++;
	/* The oldest sample within the window (or the oldest kept). */
	for (unsigned int i = 1; i < l->ns; i++) {
		unsigned int k = (l->head + PROG_SAMPLES - 1 - i) % PROG_SAMPLES;

		if (now - l->st[k] > PROG_RATE_MS && i > 1)
			break;
		oldest = k;
	}
	if (l->ns > 1 && now - l->st[oldest] >= 50)
		rate = (bytes - l->sb[oldest]) / (now - l->st[oldest]) * 1e3;
	return rate;
}

static void prog_fmt_bytes(char *b, size_t n, double v)
{
	if (v < 10 * MiB)
		snprintf(b, n, "%.1f MiB", v / MiB);
	else if (v < 10 * GiB)
		snprintf(b, n, "%.0f MiB", v / MiB);
	else
		snprintf(b, n, "%.1f GiB", v / GiB);
}

static void prog_fmt_secs(char *b, size_t n, double s)
{
	if (s < 10)
		snprintf(b, n, "%.1f s", s);
	else if (s < 3600)
		snprintf(b, n, "%.0fm%02.0fs", floor(s / 60), fmod(floor(s), 60));
	else
		snprintf(b, n, "%.0fh%02.0fm", floor(s / 3600), fmod(floor(s / 60), 60));
}

struct prog_field {
	char text[96];
	int prio;                   /* lower goes first when the line is too wide */
};

void prog_format(struct prog_line *l, json_t *p, double now, char *buf, size_t len,
		 unsigned int width)
{
	const char *st = jstr(p, "status");
	double rounds = jnum(p, "rounds"), pages = jnum(p, "pages"), bytes = jnum(p, "bytes");
	double rate = prog_rate(l, now, bytes), left = -1, pct = -1;
	double rem_mem = jnum(p, "remaining_bytes") - jnum(p, "disk_remaining_bytes");
	struct prog_field f[10];
	unsigned int n = 0, w;
	char a[32], b[32];
	size_t used;

	if (rounds != l->rounds_seen) {
		/* A round finished since the last look: what follows is the next one. */
		l->rounds_seen = rounds;
		l->pages_mark = pages;
	}
	if (l->mem_bytes > 0) {
		double sent_now = (pages - l->pages_mark) * PROG_PAGE;

		if (rounds < 1) {
			pct = pages * PROG_PAGE / l->mem_bytes;
			left = l->mem_bytes - pages * PROG_PAGE;
		} else {
			left = fmax(rem_mem, 0) - sent_now;
			pct = (l->mem_bytes - fmax(left, 0)) / l->mem_bytes;
		}
		pct = fmin(fmax(pct, 0), 1);
		left = fmax(left, 0);
	}
	if (json_object_get(p, "disk_remaining_bytes") && rounds >= 1)
		left = fmax(left, 0) + jnum(p, "disk_remaining_bytes");

	/* The phase first: it is never dropped. */
	if (!strcmp(st, "active"))
		snprintf(f[n].text, sizeof(f[n].text), "pre-copy round %.0f", jnum(p, "round"));
	else if (!strcmp(st, "commit-wait"))
		snprintf(f[n].text, sizeof(f[n].text), "commit-wait (at the gate)");
	else
		snprintf(f[n].text, sizeof(f[n].text), "%s", *st ? st : "starting");
	f[n++].prio = 100;
	if (pct >= 0) {
		snprintf(f[n].text, sizeof(f[n].text), "mem %.0f%%", floor(pct * 100));
		f[n++].prio = 90;
	}
	prog_fmt_bytes(a, sizeof(a), bytes);
	snprintf(f[n].text, sizeof(f[n].text), "sent %s", a);
	f[n++].prio = 40;
	if (json_object_get(p, "disk_bytes")) {
		prog_fmt_bytes(a, sizeof(a), jnum(p, "disk_bytes"));
		if (json_object_get(p, "disk_remaining_bytes") && rounds >= 1) {
			prog_fmt_bytes(b, sizeof(b), jnum(p, "disk_remaining_bytes"));
			snprintf(f[n].text, sizeof(f[n].text), "disk %s sent, %s dirty", a, b);
		} else {
			snprintf(f[n].text, sizeof(f[n].text), "disk %s sent", a);
		}
		f[n++].prio = 60;
	}
	if (rate >= 0) {
		snprintf(f[n].text, sizeof(f[n].text), "%.0f MiB/s", rate / MiB);
		f[n++].prio = 80;
	}
	if (rounds >= 1) {
		snprintf(f[n].text, sizeof(f[n].text), "dirty %.1f MiB/s",
			 jnum(p, "dirty_rate_bps") / MiB);
		f[n++].prio = 70;
		snprintf(f[n].text, sizeof(f[n].text), "downtime ~%.1f ms",
			 jnum(p, "expected_downtime_ms"));
		f[n++].prio = 65;
	}
	if (!strcmp(st, "active") && left >= 0 && rate > 0) {
		prog_fmt_secs(a, sizeof(a), left / rate);
		snprintf(f[n].text, sizeof(f[n].text), "ETA %s", a);
		f[n++].prio = 75;
	}
	prog_fmt_secs(a, sizeof(a), jnum(p, "total_ms") / 1e3);
	snprintf(f[n].text, sizeof(f[n].text), "%s", a);
	f[n++].prio = 50;

	/* Drop the least important fields until the line fits ("migrate: " + " | " between). */
	for (;;) {
		unsigned int low = 0;

		w = 9;
		for (unsigned int i = 0; i < n; i++)
			w += (unsigned int)strlen(f[i].text) + (i ? 3 : 0);
		if (w < width || n == 1)
			break;
		for (unsigned int i = 1; i < n; i++)
			if (!low || f[i].prio < f[low].prio)
				low = i;
		memmove(&f[low], &f[low + 1], (n - low - 1) * sizeof(f[0]));
		n--;
	}
	used = (size_t)snprintf(buf, len, "migrate: ");
	for (unsigned int i = 0; i < n && used < len; i++)
		used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? " | " : "", f[i].text);
	/* A terminal narrower than the phase: cut (the line must never wrap). */
	if (width > 1 && strlen(buf) >= width)
		buf[width - 1] = '\0';
}

static unsigned int prog_width(FILE *out)
{
	struct winsize ws;

	if (ioctl(fileno(out), TIOCGWINSZ, &ws) || ws.ws_col < 10)
		return 80;
	return ws.ws_col;
}

void prog_update(struct prog_line *l, json_t *p, bool force)
{
	double now = prog_now_ms();
	char line[512], phase[sizeof(l->last_phase)];
	bool phase_change;

	/* The phase as shown: the status, and the round under way. */
	snprintf(phase, sizeof(phase), "%s %.0f", jstr(p, "status"), jnum(p, "round"));
	phase_change = strcmp(phase, l->last_phase) != 0;

	if (!force && !phase_change && now - l->t_drawn < PROG_REDRAW_MS) {
		/* Keep the rate's samples and the round's mark current anyway. */
		prog_format(l, p, now, line, sizeof(line), 512);
		return;
	}
	memcpy(l->last_phase, phase, sizeof(phase));
	prog_format(l, p, now, line, sizeof(line), prog_width(l->out));
	fprintf(l->out, "\r%s\033[K", line);
	fflush(l->out);
	l->drawn = strlen(line);
	l->t_drawn = now;
}

void prog_clear(struct prog_line *l)
{
	if (!l->drawn)
		return;
	fputs("\r\033[K", l->out);
	fflush(l->out);
	l->drawn = 0;
}
