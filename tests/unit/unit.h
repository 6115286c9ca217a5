/*
 * unit.h - a minimal unit-test harness.  Each TEST() registers itself; the
 * runner prints "PASS name" or "FAIL name: why" per test, the protocol
 * tests/run.sh counts.
 */
#ifndef GODWIT_UNIT_H
#define GODWIT_UNIT_H

#include <stdio.h>
#include <string.h>
#include <inttypes.h>

struct unit_test {
	const char *name;
	void (*fn)(void);
	struct unit_test *next;
};

void unit_register(struct unit_test *t);
void unit_fail(const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define TEST(n)                                                          \
	static void n(void);                                             \
	static struct unit_test n##_unit = { #n, n, NULL };              \
	__attribute__((constructor)) static void n##_register(void)      \
	{ unit_register(&n##_unit); }                                    \
	static void n(void)

#define CHECK(c) do { if (!(c)) unit_fail(__FILE__, __LINE__, "%s", #c); } while (0)
#define CHECK_EQ(a, b) do {                                              \
	long long a_ = (long long)(a), b_ = (long long)(b);              \
	if (a_ != b_)                                                    \
		unit_fail(__FILE__, __LINE__, "%s == %lld, expected %s == %lld", \
			  #a, a_, #b, b_);                               \
} while (0)
#define CHECK_STR(a, b) do {                                             \
	const char *a_ = (a), *b_ = (b);                                 \
	if (!a_ || !b_ || strcmp(a_, b_))                                \
		unit_fail(__FILE__, __LINE__, "%s == \"%s\", expected \"%s\"", \
			  #a, a_ ? a_ : "(null)", b_ ? b_ : "(null)");   \
} while (0)

#endif
