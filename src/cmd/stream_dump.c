/*
 * stream_dump.c - `godwit stream-dump FILE [--json]`: lists a snapshot or
 * migration stream (docs/stream-format.md) without loading it: the header
 * (format version, machine configuration) and every section (type, id,
 * version, instance, length; for RAM the runs, pages and zero pages; for
 * tagged payloads the field count), checking every CRC and the EOF record.
 * Needs no VM and no device code, like redis-check-rdb.
 *
 * Exit codes: 0 the stream is whole and consistent; 1 it is not (the error
 * names the section), or FILE cannot be opened; 2 usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "godwit/cmd.h"
#include "godwit/common.h"
#include "godwit/state.h"
#include "godwit/stream.h"

static const char dump_usage[] =
"usage: godwit stream-dump FILE [--json]\n"
"\n"
"List a snapshot or migration stream's header and sections without loading\n"
"it, checking every checksum.  FILE \"-\" reads standard input.\n"
"\n"
"  -j, --json     one JSON object instead of text\n"
"  -h, --help     this text\n"
"\n"
"Exit status: 0 the stream is whole and consistent, 1 it is not (or FILE\n"
"cannot be read), 2 usage error.\n";

/* Number of tagged fields in p, or -1 if it is not a tagged encoding. */
static long count_fields(const uint8_t *p, uint64_t len)
{
	struct state_in in;
	struct state_field f;
	long n = 0;
	int ret;

	state_in_init(&in, p, (size_t)len);
	while ((ret = state_next(&in, &f)) > 0)
		n++;
	return ret < 0 ? -1 : n;
}

/* A JSON string of s; names may hold bytes that are not UTF-8: then escaped. */
static json_t *jstr(const char *s)
{
	json_t *j = json_string(s);
	char buf[1024];
	size_t n = 0;

	if (j)
		return j;
	for (const unsigned char *p = (const unsigned char *)s; *p && n + 5 < sizeof(buf); p++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, *p < 0x80 ? "%c" : "\\x%02x", *p);
	buf[n] = '\0';
	return json_string(buf);
}

static json_t *config_json(const struct stream_config *c, uint32_t version)
{
	json_t *o = json_object(), *regions = json_array(), *devs = json_array();
	char uuid[UUID_STR_LEN];
	uint64_t mem = 0;

	uuid_str(c->uuid, uuid);
	for (unsigned int i = 0; i < c->nr_regions; i++) {
		mem += c->regions[i].size;
		json_array_append_new(regions, json_pack("{s:I,s:I}",
			"gpa", (json_int_t)c->regions[i].gpa, "size", (json_int_t)c->regions[i].size));
	}
	for (unsigned int i = 0; i < c->nr_devices; i++)
		json_array_append_new(devs, json_pack("{s:s,s:I,s:i,s:o}",
			"type", c->devices[i].type, "instance", (json_int_t)c->devices[i].instance,
			"version", c->devices[i].version, "options", jstr(c->devices[i].options)));
	json_object_set_new(o, "format_version", json_integer(version));
	json_object_set_new(o, "arch", json_string(c->arch));
	json_object_set_new(o, "writer", json_string(c->writer));
	json_object_set_new(o, "page_size", json_integer(c->page_size));
	json_object_set_new(o, "vcpus", json_integer(c->ncpus));
	json_object_set_new(o, "memory", json_integer((json_int_t)mem));
	json_object_set_new(o, "regions", regions);
	json_object_set_new(o, "name", jstr(c->name));
	json_object_set_new(o, "uuid", json_string(uuid));
	json_object_set_new(o, "cpu_model", json_string(c->cpu_model));
	json_object_set_new(o, "cpu_vendor", json_string(c->cpu_vendor));
	json_object_set_new(o, "cpuid_entries", json_integer(c->nr_cpuid));
	json_object_set_new(o, "tsc_khz", json_integer(c->tsc_khz));
	json_object_set_new(o, "devices", devs);
	json_object_set_new(o, "digest", json_integer(c->digest));
	return o;
}

/* "512 MiB", "48 KiB": the largest unit that divides n exactly. */
static const char *size_str(uint64_t n, char *buf, size_t len)
{
	static const char *const units[] = { "bytes", "KiB", "MiB", "GiB", "TiB" };
	unsigned int u = 0;

	while (u + 1 < ARRAY_SIZE(units) && n && !(n & 1023)) {
		n >>= 10;
		u++;
	}
	snprintf(buf, len, "%llu %s", (unsigned long long)n, units[u]);
	return buf;
}

static void config_text(const struct stream_config *c, uint32_t version)
{
	char uuid[UUID_STR_LEN], sz[32];
	uint64_t mem = 0;

	uuid_str(c->uuid, uuid);
	for (unsigned int i = 0; i < c->nr_regions; i++)
		mem += c->regions[i].size;
	printf("format version %u, written by %s\n", version, c->writer[0] ? c->writer : "?");
	printf("machine: %s, %u vCPU%s, %s in %u region%s, cpu model %s (%s, %u CPUID "
	       "entries), TSC %u kHz\n", c->arch, c->ncpus, c->ncpus == 1 ? "" : "s",
	       size_str(mem, sz, sizeof(sz)), c->nr_regions, c->nr_regions == 1 ? "" : "s",
	       c->cpu_model[0] ? c->cpu_model : "?", c->cpu_vendor[0] ? c->cpu_vendor : "?",
	       c->nr_cpuid, c->tsc_khz);
	printf("name \"%s\", uuid %s, config digest 0x%08x\n", c->name, uuid, c->digest);
	for (unsigned int i = 0; i < c->nr_regions; i++)
		printf("  region %u: gpa 0x%llx-0x%llx (%s)\n", i,
		       (unsigned long long)c->regions[i].gpa,
		       (unsigned long long)(c->regions[i].gpa + c->regions[i].size - 1),
		       size_str(c->regions[i].size, sz, sizeof(sz)));
	for (unsigned int i = 0; i < c->nr_devices; i++)
		printf("  device %s.%u version %u%s%s\n", c->devices[i].type, c->devices[i].instance,
		       c->devices[i].version, c->devices[i].options[0] ? " options " : "",
		       c->devices[i].options);
}

static void section_text_head(void)
{
	printf("%-12s %-7s %-20s %4s %5s %12s  %s\n", "offset", "type", "id", "ver", "inst", "length",
	       "contents");
}

static void section_text(const struct stream_section *s, const char *detail)
{
	char type[16];

	if (s->type >= STREAM_CONFIG && s->type <= STREAM_EOF)
		snprintf(type, sizeof(type), "%s", stream_type_name(s->type));
	else
		snprintf(type, sizeof(type), "type%u", s->type);
	printf("0x%-10llx %-7s %-20s %4u %5u %12llu  %s%s\n", (unsigned long long)s->offset, type,
	       s->id, s->version, s->instance, (unsigned long long)s->len,
	       s->flags & STREAM_F_OPTIONAL ? "optional " : "", detail);
}

static json_t *section_json(const struct stream_section *s)
{
	return json_pack("{s:I,s:s,s:i,s:s,s:i,s:I,s:I,s:b}", "offset", (json_int_t)s->offset,
			 "type", stream_type_name(s->type), "type_code", s->type, "id", s->id,
			 "version", s->version, "instance", (json_int_t)s->instance,
			 "length", (json_int_t)s->len, "optional", !!(s->flags & STREAM_F_OPTIONAL));
}

int cmd_stream_dump(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const struct stream_config *cfg;
	struct stream_ram_stats total = { 0 };
	struct stream_section s;
	struct stream_reader *r = NULL;
	json_t *root = NULL, *sections = NULL;
	const char *path;
	bool json = false, ok = false;
	char trailing[128] = "";
	struct stat st;
	int fd, c, ret;

	optind = 0;     /* glibc: a full getopt reset (the unit tests call this repeatedly) */
	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (c) {
		case 'j': json = true; break;
		case 'h': fputs(dump_usage, stdout); return 0;
		default: fputs(dump_usage, stderr); return EXIT_USAGE;
		}
	}
	if (optind != argc - 1) {
		fputs(dump_usage, stderr);
		return EXIT_USAGE;
	}
	path = argv[optind];
	fd = strcmp(path, "-") ? open(path, O_RDONLY | O_CLOEXEC) : STDIN_FILENO;
	if (fd < 0) {
		fprintf(stderr, "godwit stream-dump: %s: %s\n", path, strerror(errno));
		return EXIT_ERROR;
	}
	ret = stream_reader_new(fd, &r);
	if (ret) {
		fprintf(stderr, "godwit stream-dump: %s\n", strerror(-ret));
		goto out_close;
	}
	stream_reader_report_unknown(r, true);
	if (json) {
		root = json_object();
		sections = json_array();
		json_object_set_new(root, "file", jstr(path));
	}
	ret = stream_read_header(r, &cfg);
	if (ret)
		goto out;
	if (json) {
		json_object_set_new(root, "config", config_json(cfg, stream_reader_format_version(r)));
		json_array_append_new(sections, section_json(stream_reader_section(r)));
	} else {
		printf("%s: godwit stream\n", path);
		config_text(cfg, stream_reader_format_version(r));
		section_text_head();
		section_text(stream_reader_section(r), "configuration");
	}
	while ((ret = stream_next_section(r, &s)) > 0) {
		char detail[160] = "";
		json_t *js = json ? section_json(&s) : NULL;

		if (s.type == STREAM_RAM) {
			struct stream_ram_stats st1 = { 0 };

			ret = stream_read_ram(r, NULL, NULL, &st1);
			if (!ret) {
				snprintf(detail, sizeof(detail), "%llu runs, %llu pages (%llu zero)",
					 (unsigned long long)st1.runs, (unsigned long long)st1.pages,
					 (unsigned long long)st1.zero_pages);
				if (js)
					json_object_set_new(js, "ram", json_pack("{s:I,s:I,s:I}",
						"runs", (json_int_t)st1.runs, "pages", (json_int_t)st1.pages,
						"zero_pages", (json_int_t)st1.zero_pages));
				total.sections++;
				total.runs += st1.runs;
				total.pages += st1.pages;
				total.zero_pages += st1.zero_pages;
			}
		} else if (s.type < STREAM_CONFIG || s.type > STREAM_EOF) {
			ret = stream_skip(r);
			snprintf(detail, sizeof(detail), "unknown type, skipped");
		} else {
			const uint8_t *p;

			ret = stream_read_payload(r, &p);
			if (!ret) {
				long n = count_fields(p, s.len);

				if (n >= 0)
					snprintf(detail, sizeof(detail), "%ld field%s", n, n == 1 ? "" : "s");
				else
					snprintf(detail, sizeof(detail), "not tagged fields");
				if (js)
					json_object_set_new(js, "fields", json_integer(n));
			}
		}
		if (js)
			json_array_append_new(sections, js);
		else
			section_text(&s, detail);
		if (ret)
			break;
	}
	if (ret)
		goto out;
	/* A file holds one stream: bytes after its EOF section are damage. */
	if (fd != STDIN_FILENO && !fstat(fd, &st) && S_ISREG(st.st_mode) &&
	    (uint64_t)st.st_size > stream_reader_offset(r)) {
		snprintf(trailing, sizeof(trailing), "%llu bytes after the end of the stream",
			 (unsigned long long)((uint64_t)st.st_size - stream_reader_offset(r)));
		goto out;
	}
	ok = true;
	if (!json) {
		const struct stream_section *e = stream_reader_section(r);

		section_text(e, "end, checksums match");
		printf("%llu sections, %llu bytes; RAM: %llu sections, %llu runs, %llu pages "
		       "(%llu zero); every checksum matches\n",
		       (unsigned long long)stream_reader_sections(r),
		       (unsigned long long)stream_reader_offset(r),
		       (unsigned long long)total.sections, (unsigned long long)total.runs,
		       (unsigned long long)total.pages, (unsigned long long)total.zero_pages);
	}
out:
	if (json) {
		json_object_set_new(root, "sections", sections);
		json_object_set_new(root, "bytes", json_integer((json_int_t)stream_reader_offset(r)));
		json_object_set_new(root, "ram", json_pack("{s:I,s:I,s:I,s:I}",
			"sections", (json_int_t)total.sections, "runs", (json_int_t)total.runs,
			"pages", (json_int_t)total.pages, "zero_pages", (json_int_t)total.zero_pages));
		json_object_set_new(root, "ok", json_boolean(ok));
		if (!ok)
			json_object_set_new(root, "error", jstr(trailing[0] ? trailing :
							       stream_reader_error(r)));
		json_dumpf(root, stdout, JSON_INDENT(2));
		putchar('\n');
		json_decref(root);
	}
	if (!ok)
		fprintf(stderr, "godwit stream-dump: %s: %s\n", path,
			trailing[0] ? trailing : stream_reader_error(r));
	stream_reader_free(r);
out_close:
	if (fd != STDIN_FILENO)
		close(fd);
	return ok ? 0 : EXIT_ERROR;
}
