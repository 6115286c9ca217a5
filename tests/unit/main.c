/*
 * main.c - runs every registered unit test (or those named on the command
 * line) and prints one PASS/FAIL line each.  Exit status: 0 if all passed.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include "unit.h"

static struct unit_test *unit_head, **unit_tail = &unit_head;
static int unit_cur_failed;

void unit_register(struct unit_test *t)
{
	*unit_tail = t;
	unit_tail = &t->next;
}

void unit_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	if (unit_cur_failed++ >= 5)
		return;
	fprintf(stdout, "#   %s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
}

/* A test is wanted when an argument names it, or ends in '*' and starts it. */
static bool unit_match(const char *arg, const char *name)
{
	size_t n = strlen(arg);

	if (n && arg[n - 1] == '*')
		return !strncmp(arg, name, n - 1);
	return !strcmp(arg, name);
}

int main(int argc, char **argv)
{
	int passed = 0, failed = 0;
	const char *tier = getenv("UNIT_TIER") ? getenv("UNIT_TIER") : "unit";

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (struct unit_test *t = unit_head; t; t = t->next) {
		if (argc > 1) {
			int want = 0;
			for (int i = 1; i < argc; i++)
				want |= unit_match(argv[i], t->name);
			if (!want)
				continue;
		}
		unit_cur_failed = 0;
		t->fn();
		if (unit_cur_failed) {
			printf("FAIL %s/%s: %d check(s) failed\n", tier, t->name, unit_cur_failed);
			failed++;
		} else {
			printf("PASS %s/%s\n", tier, t->name);
			passed++;
		}
	}
	/* A name that matches nothing is a typo, never a silent pass. */
	for (int i = 1; i < argc; i++) {
		bool found = false;

		for (struct unit_test *t = unit_head; t && !found; t = t->next)
			found = unit_match(argv[i], t->name);
		if (!found) {
			printf("FAIL %s/%s: no such test\n", tier, argv[i]);
			failed++;
		}
	}
	fprintf(stderr, "unit: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
