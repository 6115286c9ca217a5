/*
 * test_devspec.c - the --disk/--net options parsed once (devspec.h): every
 * option and every refusal of a disk spec, the guest-visible options a
 * snapshot carries (as given, in order, without the host-local part), and
 * the --with-disks serial list.
 */
#include <errno.h>

#include "godwit/devspec.h"
#include "unit.h"

TEST(devspec_disk)
{
	struct disk_spec d;
	char err[256];

	CHECK_EQ(disk_spec_parse("a.img", &d, err, sizeof(err)), 0);
	CHECK(!strcmp(d.path, "a.img") && !d.readonly && !d.serial[0]);
	CHECK_EQ(disk_spec_parse("/x/b.img,serial=root,readonly", &d, err, sizeof(err)), 0);
	CHECK(!strcmp(d.path, "/x/b.img") && d.readonly && !strcmp(d.serial, "root"));
	CHECK_EQ(disk_spec_parse("c.img,serial=ABCDEFGHIJKLMNOPQRST", &d, err, sizeof(err)), 0);
	CHECK_EQ(strlen(d.serial), 20);

	static const struct { const char *spec; const char *why; } bad[] = {
		{ "", "file name is empty" },
		{ ",readonly", "file name is empty" },
		{ "a.img,", "empty option" },
		{ "a.img,,readonly", "empty option" },
		{ "a.img,readonly,readonly", "readonly given twice" },
		{ "a.img,serial=a,serial=b", "serial given twice" },
		{ "a.img,serial=", "1 to 20 bytes, not 0" },
		{ "a.img,serial=ABCDEFGHIJKLMNOPQRSTU", "1 to 20 bytes, not 21" },
		{ "a.img,serial=a\tb", "printable ASCII" },
		{ "a.img,Readonly", "unknown option 'Readonly'" },
		{ "a.img,readonly=1", "unknown option 'readonly=1'" },
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		err[0] = '\0';
		CHECK_EQ(disk_spec_parse(bad[i].spec, &d, err, sizeof(err)), -EINVAL);
		if (!strstr(err, bad[i].why))
			unit_fail(__FILE__, __LINE__, "'%s': '%s' lacks '%s'", bad[i].spec, err,
				  bad[i].why);
	}
	{
		char path[DISK_PATH_MAX + 8];

		memset(path, 'p', sizeof(path) - 1);
		path[sizeof(path) - 1] = '\0';
		CHECK_EQ(disk_spec_parse(path, &d, err, sizeof(err)), -ENAMETOOLONG);
	}
}

TEST(devspec_arg_options)
{
	struct vm_device_arg a;
	char err[256];

	CHECK_EQ(vm_device_arg_parse(&a, VM_DEV_DISK, "d.img,serial=s1,readonly", err,
				     sizeof(err)), 0);
	CHECK(a.kind == VM_DEV_DISK && !strcmp(a.disk.path, "d.img"));
	CHECK(!strcmp(a.options, "serial=s1,readonly"));   /* as given, path left out */
	CHECK_EQ(vm_device_arg_parse(&a, VM_DEV_NET, "mac=02:00:00:00:00:07,tap=gw0", err,
				     sizeof(err)), 0);
	CHECK(!strcmp(a.net.tap, "gw0") && a.net.has_mac && a.net.mac[5] == 7);
	CHECK(!strcmp(a.options, "mac=02:00:00:00:00:07"));  /* tap= is host-local */
	CHECK_EQ(vm_device_arg_parse(&a, VM_DEV_NET, "tap=gw0", err, sizeof(err)), 0);
	CHECK(!strcmp(a.options, ""));
	CHECK(vm_device_arg_parse(&a, VM_DEV_NET, "mac=02:00:00:00:00:07", err, sizeof(err)) < 0);
	CHECK(strstr(err, "tap=") != NULL);
}

TEST(devspec_serial_list)
{
	char s[4][DISK_SERIAL_MAX + 1], err[256];
	unsigned int n;

	CHECK_EQ(disk_serials_parse("a,bb,c", s, 4, &n, err, sizeof(err)), 0);
	CHECK(n == 3 && !strcmp(s[0], "a") && !strcmp(s[1], "bb") && !strcmp(s[2], "c"));
	CHECK_EQ(disk_serials_parse("a,,b", s, 4, &n, err, sizeof(err)), -EINVAL);
	CHECK_EQ(disk_serials_parse("a,", s, 4, &n, err, sizeof(err)), -EINVAL);
	CHECK_EQ(disk_serials_parse("a,a", s, 4, &n, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "twice") != NULL);
	CHECK_EQ(disk_serials_parse("a,b,c,d,e", s, 4, &n, err, sizeof(err)), -EINVAL);
	CHECK_EQ(disk_serials_parse("ABCDEFGHIJKLMNOPQRSTU", s, 4, &n, err, sizeof(err)), -EINVAL);
	CHECK_EQ(disk_serials_parse("x\x01", s, 4, &n, err, sizeof(err)), -EINVAL);
}
