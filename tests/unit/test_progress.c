/*
 * test_progress.c - godwit migrate's live progress line (src/cmd/progress.c):
 * the phase always first, the share of memory the destination holds in
 * round 1 and after it, the rate from the bytes between two looks, the
 * fields dropped least important first to fit the terminal, and a line cut
 * (never wrapped) on a terminal narrower than the phase.
 */
#include <string.h>

#include "godwit/common.h"
#include "../../src/cmd/progress.h"
#include "unit.h"

static json_t *prog(const char *status, int round, int rounds, double pages, double bytes,
		    double remaining)
{
	return json_pack("{s:s, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "status", status,
			 "round", round, "rounds", rounds, "pages", pages, "bytes", bytes,
			 "remaining_bytes", remaining, "dirty_rate_bps", 20.0 * MiB,
			 "bandwidth_bps", 100.0 * MiB, "expected_downtime_ms", 12.5,
			 "total_ms", 1500.0);
}

TEST(progress_line_fields)
{
	struct prog_line l;
	json_t *p;
	char buf[512];

	prog_init(&l, stderr, 256.0 * MiB);
	/* Round 1: a quarter of the pages sent; 100 MiB/s between the two looks. */
	p = prog("active", 1, 0, 8192, 32.0 * MiB, 0);
	prog_format(&l, p, 1000, buf, sizeof(buf), 200);
	json_decref(p);
	CHECK_STR(buf, "migrate: pre-copy round 1 | mem 12% | sent 32 MiB | 1.5 s");
	p = prog("active", 1, 0, 16384, 64.0 * MiB, 0);
	prog_format(&l, p, 1320, buf, sizeof(buf), 200);
	json_decref(p);
	CHECK_STR(buf, "migrate: pre-copy round 1 | mem 25% | sent 64 MiB | 100 MiB/s | "
		  "ETA 1.9 s | 1.5 s");
	/* Round 1 done with 64 MiB dirty: 75%; 16 MiB of it sent in round 2: 81%. */
	p = prog("active", 2, 1, 65536, 256.0 * MiB, 64.0 * MiB);
	prog_format(&l, p, 2000, buf, sizeof(buf), 200);
	json_decref(p);
	CHECK(!strncmp(buf, "migrate: pre-copy round 2 | mem 75% | ", 38));
	CHECK(strstr(buf, "| dirty 20.0 MiB/s |"));
	CHECK(strstr(buf, "| downtime ~12.5 ms |"));
	p = prog("active", 2, 1, 65536 + 4096, 272.0 * MiB, 64.0 * MiB);
	prog_format(&l, p, 2200, buf, sizeof(buf), 200);
	json_decref(p);
	CHECK(!strncmp(buf, "migrate: pre-copy round 2 | mem 81% | ", 38));
	/* Narrow: the least important go first; the phase and mem stay. */
	p = prog("active", 2, 1, 65536 + 8192, 288.0 * MiB, 64.0 * MiB);
	prog_format(&l, p, 2400, buf, sizeof(buf), 40);
	json_decref(p);
	CHECK(strlen(buf) < 40);
	CHECK(!strncmp(buf, "migrate: pre-copy round 2 | mem 87%", 35));
	/* Narrower than the phase: cut. */
	p = prog("stop-and-copy", 3, 2, 90000, 300.0 * MiB, 1.0 * MiB);
	prog_format(&l, p, 2500, buf, sizeof(buf), 20);
	json_decref(p);
	CHECK_STR(buf, "migrate: stop-and-c");
	p = prog("stop-and-copy", 3, 2, 90000, 300.0 * MiB, 1.0 * MiB);
	prog_format(&l, p, 2600, buf, sizeof(buf), 200);
	json_decref(p);
	CHECK(!strncmp(buf, "migrate: stop-and-copy | mem ", 29));
	CHECK(!strstr(buf, "ETA"));
}

TEST(progress_line_disks)
{
	struct prog_line l;
	json_t *p = prog("active", 1, 0, 0, 40.0 * MiB, 0);
	char buf[512];

	prog_init(&l, stderr, 256.0 * MiB);
	json_object_set_new(p, "disk_bytes", json_real(40.0 * MiB));
	prog_format(&l, p, 0, buf, sizeof(buf), 200);
	CHECK(strstr(buf, " | disk 40 MiB sent | "));
	/* After a round: what is dirty on the disks too; memory's share leaves it out. */
	json_object_set_new(p, "rounds", json_integer(1));
	json_object_set_new(p, "round", json_integer(2));
	json_object_set_new(p, "pages", json_real(65536));
	json_object_set_new(p, "remaining_bytes", json_real(66.0 * MiB));
	json_object_set_new(p, "disk_remaining_bytes", json_real(2.0 * MiB));
	prog_format(&l, p, 100, buf, sizeof(buf), 200);
	json_decref(p);
	CHECK(!strncmp(buf, "migrate: pre-copy round 2 | mem 75% | ", 38));
	CHECK(strstr(buf, " | disk 40 MiB sent, 2.0 MiB dirty | "));
}

TEST(progress_line_without_memory_size)
{
	struct prog_line l;
	json_t *p = prog("setup", 0, 0, 0, 0, 0);
	char buf[256];

	prog_init(&l, stderr, 0);
	prog_format(&l, p, 0, buf, sizeof(buf), 120);
	json_decref(p);
	CHECK_STR(buf, "migrate: setup | sent 0.0 MiB | 1.5 s");
}
