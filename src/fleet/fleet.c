/*
 * fleet.c - the fleet's record names and the owner record (fleet.h,
 * docs/fleet.md "Records"): checked host and VM names, the etcd keys built
 * from them, and the "HOST EPOCH" owner value, parsed strictly so that
 * formatting a parsed value gives back the same bytes (the owner is
 * compared by value in etcd transactions: two spellings of one owner
 * would make a comparison fail that should hold).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "godwit/fleet.h"

bool fleet_name_ok(const char *s)
{
	size_t n;

	if (!s)
		return false;
	n = strlen(s);
	if (n == 0 || n >= FLEET_NAME_MAX || !strcmp(s, ".") || !strcmp(s, ".."))
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* snprintf into buf: 0, or -ENAMETOOLONG if it does not fit (buf then ""). */
static int fleet_key_fmt(char *buf, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int fleet_key_fmt(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!buf || !len)
		return -ENAMETOOLONG;
	va_start(ap, fmt);
	n = vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= len) {
		buf[0] = '\0';
		return -ENAMETOOLONG;
	}
	return 0;
}

int fleet_key_host(char *buf, size_t len, const char *host)
{
	if (!fleet_name_ok(host))
		return -EINVAL;
	return fleet_key_fmt(buf, len, FLEET_PREFIX "hosts/%s", host);
}

int fleet_key_cordon(char *buf, size_t len, const char *host)
{
	if (!fleet_name_ok(host))
		return -EINVAL;
	return fleet_key_fmt(buf, len, FLEET_PREFIX "cordon/%s", host);
}

int fleet_key_vm(char *buf, size_t len, const char *vm, const char *what)
{
	static const char *const whats[] = { "spec", "owner", "status", "intent", "migration" };
	bool known = false;

	if (!fleet_name_ok(vm) || !what)
		return -EINVAL;
	for (size_t i = 0; i < sizeof(whats) / sizeof(whats[0]); i++)
		known |= !strcmp(what, whats[i]);
	if (!known)
		return -EINVAL;
	return fleet_key_fmt(buf, len, FLEET_PREFIX "vms/%s/%s", vm, what);
}

int fleet_key_veto(char *buf, size_t len, const char *vm, uint64_t epoch)
{
	if (!fleet_name_ok(vm))
		return -EINVAL;
	return fleet_key_fmt(buf, len, FLEET_PREFIX "vms/%s/veto/%" PRIu64, vm, epoch);
}

/*
 * fleet_owner_parse - "HOST EPOCH": a valid host name, exactly one space,
 * and EPOCH in canonical decimal (digits only, no sign, no leading zero
 * but for "0" itself, nothing after it) that fits a uint64.  0, or
 * -EBADMSG with *o cleared.
 */
int fleet_owner_parse(const char *s, struct fleet_owner *o)
{
	const char *sp, *p;
	uint64_t epoch = 0;
	size_t hn;

	memset(o, 0, sizeof(*o));
	if (!s)
		return -EBADMSG;
	sp = strchr(s, ' ');
	if (!sp)
		return -EBADMSG;
	hn = (size_t)(sp - s);
	if (hn == 0 || hn >= FLEET_NAME_MAX)
		return -EBADMSG;
	memcpy(o->host, s, hn);
	o->host[hn] = '\0';
	if (!fleet_name_ok(o->host))
		goto bad;
	p = sp + 1;
	if (!*p || (p[0] == '0' && p[1]))
		goto bad;
	for (; *p; p++) {
		unsigned d;

		if (*p < '0' || *p > '9')
			goto bad;
		d = (unsigned)(*p - '0');
		if (epoch > (UINT64_MAX - d) / 10)
			goto bad;
		epoch = epoch * 10 + d;
	}
	o->epoch = epoch;
	return 0;
bad:
	memset(o, 0, sizeof(*o));
	return -EBADMSG;
}

void fleet_owner_format(const struct fleet_owner *o, char *buf, size_t len)
{
	if (!buf || !len)
		return;
	snprintf(buf, len, "%s %" PRIu64, o->host, o->epoch);
}
