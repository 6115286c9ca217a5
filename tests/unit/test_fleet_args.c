/*
 * test_fleet_args.c - the godwit run options of `godwit fleet create`
 * (fleet_run_args): the VM's size read as godwit run reads it, and the
 * options the host agent sets, unknown ones and stray arguments refused.
 */
#include <errno.h>
#include <stdarg.h>

#include "godwit/common.h"
#include "../../src/cmd/fleet.h"
#include "unit.h"

static int run_args(uint64_t *mem, uint32_t *cpus, char *err, size_t len, ...)
{
	char *argv[32];
	int argc = 0;
	va_list ap;

	va_start(ap, len);
	while (argc < 31 && (argv[argc] = va_arg(ap, char *)))
		argc++;
	va_end(ap);
	err[0] = '\0';
	return fleet_run_args(argc, argv, mem, cpus, err, len);
}

TEST(fleet_run_args_size)
{
	uint64_t mem;
	uint32_t cpus;
	char err[256];

	CHECK_EQ(run_args(&mem, &cpus, err, sizeof(err), "--kernel", "/k", NULL), 0);
	CHECK_EQ(mem, 512 * MiB);
	CHECK_EQ(cpus, 1);
	CHECK_EQ(run_args(&mem, &cpus, err, sizeof(err), "--kernel", "/k", "--mem", "128M",
			  "--cpus", "2", "--cmdline", "--mem 4G", NULL), 0);
	CHECK_EQ(mem, 128 * MiB);
	CHECK_EQ(cpus, 2);
	CHECK_EQ(run_args(&mem, &cpus, err, sizeof(err), "-k", "/k", "-m1G", "-p", "4", NULL), 0);
	CHECK_EQ(mem, 1024 * MiB);
	CHECK_EQ(cpus, 4);
	CHECK_EQ(run_args(&mem, &cpus, err, sizeof(err), "--kernel=/k", "--mem=33M", "--rng",
			  "--disk", "a.img,serial=x", "--net", "tap=t0", "--no-sandbox",
			  "--jail", "/j", NULL), 0);
	CHECK_EQ(mem, 34 * MiB);         /* rounded up to 2 MiB, as godwit run does */
	/* The last one wins, as with getopt in godwit run. */
	CHECK_EQ(run_args(&mem, &cpus, err, sizeof(err), "--kernel", "/k", "--mem", "64M", "--mem",
			  "256M", NULL), 0);
	CHECK_EQ(mem, 256 * MiB);
}

TEST(fleet_run_args_refused)
{
	static const struct { const char *a[6]; const char *why; } bad[] = {
		{ { "--mem", "128M" }, "--kernel is required" },
		{ { "--kernel", "/k", "--api", "/s" }, "--api is set by the host agent" },
		{ { "--kernel", "/k", "-a", "/s" }, "--api is set by the host agent" },
		{ { "--kernel", "/k", "--name", "x" }, "--name is set by the host agent" },
		{ { "--kernel", "/k", "-n", "x" }, "--name is set by the host agent" },
		{ { "--kernel", "/k", "--incoming", "tcp:a:1" }, "--incoming is set by the host agent" },
		{ { "--kernel", "/k", "--incoming=unix:/x" }, "--incoming is set by the host agent" },
		{ { "--kernel", "/k", "--tls-dir", "/t" }, "--tls-dir is for godwit run --incoming" },
		{ { "--kernel", "/k", "--overwrite" }, "--overwrite is for godwit run --incoming" },
		{ { "--kernel", "/k", "--help" }, "--help is not a VM option" },
		{ { "--kernel", "/k", "--mem", "lots" }, "--mem lots: not a size" },
		{ { "--kernel", "/k", "--mem", "1M" }, "at least 32 MiB" },
		{ { "--kernel", "/k", "--cpus", "0" }, "--cpus 0: expected a number from 1 to 255" },
		{ { "--kernel", "/k", "--cpus", "256" }, "from 1 to 255" },
		{ { "--kernel", "/k", "--cpus", "2x" }, "from 1 to 255" },
		{ { "--kernel", "/k", "--bogus" }, "unknown godwit run option --bogus" },
		{ { "--kernel", "/k", "-Z" }, "unknown godwit run option -Z" },
		{ { "--kernel", "/k", "stray" }, "unexpected argument 'stray'" },
		{ { "--kernel", "/k", "--", "--mem" }, "unexpected argument '--mem'" },
		{ { "--kernel" }, "--kernel needs an argument" },
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		char *argv[6];
		int argc = 0;
		uint64_t mem;
		uint32_t cpus;
		char err[256] = "";

		while (argc < 6 && bad[i].a[argc]) {
			argv[argc] = (char *)bad[i].a[argc];
			argc++;
		}
		CHECK_EQ(fleet_run_args(argc, argv, &mem, &cpus, err, sizeof(err)), -EINVAL);
		if (!strstr(err, bad[i].why))
			unit_fail(__FILE__, __LINE__, "case %zu: '%s' lacks '%s'", i, err, bad[i].why);
	}
}

TEST(fleet_run_args_no_side_effects)
{
	/* The caller's argv is not permuted (the spec stores it as given). */
	char *argv[] = { "--kernel", "/k", "--mem", "64M", "--cmdline", "x y" };
	uint64_t mem;
	uint32_t cpus;
	char err[64];

	CHECK_EQ(fleet_run_args(6, argv, &mem, &cpus, err, sizeof(err)), 0);
	CHECK_STR(argv[0], "--kernel");
	CHECK_STR(argv[2], "--mem");
	CHECK_STR(argv[5], "x y");
}
