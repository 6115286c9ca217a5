/*
 * util.c - small parsing helpers shared by the command-line front ends.
 */
#include <errno.h>
#include <ctype.h>
#include <stdlib.h>

#include "godwit/common.h"

int parse_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	uint64_t mult = 1;
	char *end;

	if (!s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -ERANGE;
	switch (toupper((unsigned char)*end)) {
	case '\0': break;
	case 'K': mult = KiB; end++; break;
	case 'M': mult = MiB; end++; break;
	case 'G': mult = GiB; end++; break;
	case 'T': mult = 1024 * GiB; end++; break;
	default: return -EINVAL;
	}
	/* Accept "512M", "512MB", "512MiB". */
	if (mult != 1 && (*end == 'i' || *end == 'I'))
		end++;
	if (mult != 1 && (*end == 'b' || *end == 'B'))
		end++;
	if (*end)
		return -EINVAL;
	if (v > UINT64_MAX / mult)
		return -ERANGE;
	*out = v * mult;
	return 0;
}
