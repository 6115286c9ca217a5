/*
 * fuzz_timeline.c - libFuzzer target for the migration report's checks and
 * its SVG timeline (src/lib/timeline.c).  The input is a report's JSON text
 * as `godwit report` or godwitd reads it.  Whatever it holds, timeline_svg
 * returns 0 with well-formed XML (tests/unit/xml_check.h: one <svg> root,
 * tags balanced, text and attributes escaped, no control characters) and
 * timeline_svg_buf the same bytes, or -EINVAL with a message and nothing
 * written; timeline_check agrees with both.
 *   make fuzz && build-fuzz/fuzz-timeline -max_total_time=60 tests/fuzz/corpus/timeline
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/timeline.h"
#include "../unit/xml_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256], err2[256], *svg = NULL, *buf = NULL;
	size_t svg_len = 0, buf_len = 0;
	const char *root = NULL;
	json_error_t je;
	json_t *j;
	FILE *f;
	int r, rc;

	if (size > 1 << 20)
		return 0;
	j = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
	if (!j)
		return 0;
	f = open_memstream(&svg, &svg_len);
	if (!f)
		abort();
	err[0] = '\0';
	r = timeline_svg(j, f, err, sizeof(err));
	fclose(f);
	rc = timeline_check(j, err2, sizeof(err2));
	if (r) {
		if (r != -EINVAL || !err[0] || svg_len || rc != r || strcmp(err, err2))
			abort();
		if (timeline_svg_buf(j, &buf, &buf_len, err2, sizeof(err2)) != r || buf)
			abort();
	} else {
		if (rc || !svg || xml_check(svg, svg_len, &root) || strncmp(root, "svg ", 4))
			abort();
		if (timeline_svg_buf(j, &buf, &buf_len, err2, sizeof(err2)) || buf_len != svg_len ||
		    memcmp(buf, svg, svg_len))
			abort();
	}
	free(buf);
	free(svg);
	json_decref(j);
	return 0;
}
