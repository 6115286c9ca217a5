/*
 * devspec.c - the --disk and --net options into typed specs (devspec.h): the
 * one place their text is split on commas.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "godwit/devspec.h"

const char *vm_dev_option(enum vm_dev_kind kind)
{
	return kind == VM_DEV_DISK ? "--disk" : "--net";
}

int disk_spec_parse(const char *spec, struct disk_spec *out, char *err, size_t len)
{
	bool seen_ro = false, seen_serial = false;
	const char *p = spec;

	memset(out, 0, sizeof(*out));
	if (!*spec || spec[0] == ',') {
		snprintf(err, len, "the image file name is empty");
		return -EINVAL;
	}
	if (spec[strlen(spec) - 1] == ',' || strstr(spec, ",,")) {
		snprintf(err, len, "empty option (expected FILE[,readonly][,serial=ID])");
		return -EINVAL;
	}
	for (unsigned int i = 0; ; i++) {
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);

		if (i == 0) {
			if (n >= sizeof(out->path)) {
				snprintf(err, len, "the image file name is longer than %zu bytes",
					 sizeof(out->path) - 1);
				return -ENAMETOOLONG;
			}
			memcpy(out->path, p, n);
		} else if (n == 8 && !memcmp(p, "readonly", 8)) {
			if (seen_ro) {
				snprintf(err, len, "readonly given twice");
				return -EINVAL;
			}
			seen_ro = out->readonly = true;
		} else if (n >= 7 && !memcmp(p, "serial=", 7)) {
			const char *id = p + 7;
			size_t idlen = n - 7;

			if (seen_serial) {
				snprintf(err, len, "serial given twice");
				return -EINVAL;
			}
			seen_serial = true;
			if (idlen == 0 || idlen > DISK_SERIAL_MAX) {
				snprintf(err, len, "serial must be 1 to %u bytes, not %zu",
					 DISK_SERIAL_MAX, idlen);
				return -EINVAL;
			}
			for (size_t k = 0; k < idlen; k++)
				if (id[k] < 0x20 || id[k] > 0x7e) {
					snprintf(err, len, "serial must be printable ASCII");
					return -EINVAL;
				}
			memcpy(out->serial, id, idlen);
		} else {
			snprintf(err, len, "unknown option '%.*s' (expected readonly or serial=ID)",
				 (int)n, p);
			return -EINVAL;
		}
		if (!end)
			break;
		p = end + 1;
	}
	return 0;
}

int disk_serials_parse(const char *list, char (*out)[DISK_SERIAL_MAX + 1], unsigned int max,
		       unsigned int *n, char *err, size_t len)
{
	const char *p = list;

	*n = 0;
	for (;;) {
		const char *end = strchr(p, ',');
		size_t k = end ? (size_t)(end - p) : strlen(p);

		if (k == 0 || k > DISK_SERIAL_MAX) {
			snprintf(err, len, "a disk serial is 1 to %u bytes, not %zu (in '%s')",
				 DISK_SERIAL_MAX, k, list);
			return -EINVAL;
		}
		for (size_t i = 0; i < k; i++)
			if (p[i] < 0x20 || p[i] > 0x7e) {
				snprintf(err, len, "a disk serial is printable ASCII (in '%s')", list);
				return -EINVAL;
			}
		if (*n == max) {
			snprintf(err, len, "more than %u disk serials in '%s'", max, list);
			return -EINVAL;
		}
		memcpy(out[*n], p, k);
		out[*n][k] = '\0';
		for (unsigned int i = 0; i < *n; i++)
			if (!strcmp(out[i], out[*n])) {
				snprintf(err, len, "disk serial %s given twice", out[i]);
				return -EINVAL;
			}
		(*n)++;
		if (!end)
			return 0;
		p = end + 1;
	}
}

/* The options but the host-local one (the path, first; tap=NAME, anywhere), as given. */
static int devspec_options(enum vm_dev_kind kind, const char *spec, char *buf, size_t cap)
{
	size_t used = 0;
	const char *p = spec;

	buf[0] = '\0';
	for (unsigned int i = 0; ; i++) {
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		bool local = kind == VM_DEV_DISK ? i == 0 : n >= 4 && !memcmp(p, "tap=", 4);

		if (n && !local) {
			if (used + (used ? 1 : 0) + n + 1 > cap)
				return -ENOSPC;
			if (used)
				buf[used++] = ',';
			memcpy(buf + used, p, n);
			used += n;
			buf[used] = '\0';
		}
		if (!end)
			break;
		p = end + 1;
	}
	return 0;
}

int vm_device_arg_parse(struct vm_device_arg *a, enum vm_dev_kind kind, const char *spec,
			char *err, size_t len)
{
	int ret;

	memset(a, 0, sizeof(*a));
	a->kind = kind;
	a->spec = spec;
	ret = kind == VM_DEV_DISK ? disk_spec_parse(spec, &a->disk, err, len) :
				    tap_spec_parse(spec, &a->net, err, len);
	if (ret)
		return ret;
	if (devspec_options(kind, spec, a->options, sizeof(a->options))) {
		snprintf(err, len, "the options are longer than %d bytes", DEVSPEC_OPTS_MAX);
		return -EINVAL;
	}
	return 0;
}
