/*
 * test_sandbox.c - what can be checked of the sandbox without entering it
 * (a unit test process must keep its privileges): --sandbox and --user
 * parsing; and the snapshot file's confinement to the --snapshot-dir
 * (snapshot_file_create/commit/abort): names outside it, in a
 * subdirectory, "..", a directory, a link replaced and not followed, no
 * directory at all.  tests/kvm/t-sandbox.sh checks the sandbox itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "godwit/sandbox.h"
#include "godwit/snapshot.h"
#include "unit.h"

TEST(sandbox_mode_and_user_parse)
{
	struct sandbox_opts o = { 0 };
	enum sandbox_mode m;
	char err[256];

	CHECK_EQ(sandbox_mode_parse("kill", &m), 0);
	CHECK(m == SANDBOX_KILL);
	CHECK_EQ(sandbox_mode_parse("trap", &m), 0);
	CHECK(m == SANDBOX_TRAP);
	CHECK_EQ(sandbox_mode_parse("off", &m), 0);
	CHECK(m == SANDBOX_OFF);
	CHECK_EQ(sandbox_mode_parse("Kill", &m), -EINVAL);
	CHECK_EQ(sandbox_mode_parse("", &m), -EINVAL);

	CHECK_EQ(sandbox_user_parse("4242:4343", &o, err, sizeof(err)), 0);
	CHECK(o.has_user && o.uid == 4242 && o.gid == 4343);
	CHECK_EQ(sandbox_user_parse("nobody", &o, err, sizeof(err)), 0);
	CHECK(o.uid == 65534);
	CHECK_EQ(sandbox_user_parse("0", &o, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "must not be 0"));
	CHECK_EQ(sandbox_user_parse("4242:0", &o, err, sizeof(err)), -EINVAL);
	CHECK_EQ(sandbox_user_parse("no-such-user-godwit", &o, err, sizeof(err)), -EINVAL);
	CHECK_EQ(sandbox_user_parse("4242:no-such-group-godwit", &o, err, sizeof(err)), -EINVAL);
	CHECK_EQ(sandbox_user_parse("-1", &o, err, sizeof(err)), -EINVAL);
	CHECK_EQ(sandbox_user_parse("", &o, err, sizeof(err)), -EINVAL);
}

static int snap_try(int dfd, const char *dir, const char *path, char *err, size_t len)
{
	struct snapshot_file f;
	int ret = snapshot_file_create(dfd, dir, path, &f, err, len);

	if (!ret) {
		CHECK(write(f.fd, "snap", 4) == 4);
		ret = snapshot_file_commit(&f, err, len);
	}
	return ret;
}

TEST(sandbox_snapshot_dir)
{
	char dir[] = "/tmp/godwit-test-snapdir-XXXXXX", p[512], q[512], err[512], buf[16];
	struct snapshot_file f;
	struct stat st;
	int dfd, fd;

	CHECK(mkdtemp(dir) != NULL);
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	CHECK(dfd >= 0);

	/* A name alone, or dir/name: written, 0600, no temporary left. */
	CHECK_EQ(snap_try(dfd, dir, "a.gws", err, sizeof(err)), 0);
	snprintf(p, sizeof(p), "%s/b.gws", dir);
	CHECK_EQ(snap_try(dfd, dir, p, err, sizeof(err)), 0);
	snprintf(p, sizeof(p), "%s/a.gws", dir);
	CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == 0600 && st.st_size == 4);

	/* Outside, a subdirectory, "..", the directory itself, a prefix that is not it. */
	snprintf(p, sizeof(p), "%s/sub", dir);
	CHECK(mkdir(p, 0700) == 0);
	static const char *const bad[] = { "/tmp/x.gws", "sub/x.gws", "../x.gws", "..", ".", "" };
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		CHECK(snap_try(dfd, dir, bad[i], err, sizeof(err)) < 0);
	snprintf(p, sizeof(p), "%s/sub/x.gws", dir);
	CHECK_EQ(snap_try(dfd, dir, p, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "directly in the snapshot directory"));
	snprintf(p, sizeof(p), "%s/../x.gws", dir);
	CHECK_EQ(snap_try(dfd, dir, p, err, sizeof(err)), -EINVAL);
	snprintf(p, sizeof(p), "%sx/y.gws", dir);
	CHECK_EQ(snap_try(dfd, dir, p, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "not in the snapshot directory"));
	CHECK_EQ(snap_try(dfd, dir, dir, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "is a directory"));
	CHECK_EQ(snap_try(dfd, dir, "sub", err, sizeof(err)), -EISDIR);

	/* A link in the directory is replaced, what it points to is not written. */
	snprintf(q, sizeof(q), "%s/sub/target", dir);
	fd = open(q, O_WRONLY | O_CREAT, 0600);
	CHECK(fd >= 0 && write(fd, "keep", 4) == 4);
	close(fd);
	snprintf(p, sizeof(p), "%s/link", dir);
	CHECK(symlink(q, p) == 0);
	CHECK_EQ(snap_try(dfd, dir, "link", err, sizeof(err)), 0);
	CHECK(lstat(p, &st) == 0 && S_ISREG(st.st_mode));
	fd = open(q, O_RDONLY);
	CHECK(fd >= 0 && read(fd, buf, sizeof(buf)) == 4 && !memcmp(buf, "keep", 4));
	close(fd);

	/* Abort removes the temporary; no directory: snapshots are off. */
	CHECK_EQ(snapshot_file_create(dfd, dir, "c.gws", &f, err, sizeof(err)), 0);
	snapshot_file_abort(&f);
	snprintf(p, sizeof(p), "%s/c.gws.tmp-%ld", dir, (long)getpid());
	CHECK(access(p, F_OK) != 0);
	CHECK_EQ(snapshot_file_create(-1, NULL, "d.gws", &f, err, sizeof(err)), -EPERM);
	CHECK(strstr(err, "--snapshot-dir"));

	close(dfd);
	snprintf(p, sizeof(p), "rm -rf '%s'", dir);
	CHECK(system(p) == 0);
}
