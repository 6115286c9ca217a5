/*
 * test_migrate.c - the migration protocol's small pieces (migrate.h):
 * address parsing, control messages round-tripped over a socketpair, and
 * every way a message can be damaged (bad magic, type, length, CRC,
 * truncation, a peer that closes, a silent peer) answered with an error,
 * never a hang or an overrun; a listener on a UNIX path.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "godwit/crc32c.h"
#include "godwit/migrate.h"
#include "unit.h"

TEST(migrate_addr_parsing)
{
	char err[256];

	CHECK_EQ(migrate_addr_check("tcp:127.0.0.1:4444", err, sizeof(err)), 0);
	CHECK_EQ(migrate_addr_check("tcp:host.example:1", err, sizeof(err)), 0);
	CHECK_EQ(migrate_addr_check("tcp:[::1]:65535", err, sizeof(err)), 0);
	CHECK_EQ(migrate_addr_check("tcp::4444", err, sizeof(err)), 0);  /* any address */
	CHECK_EQ(migrate_addr_check("unix:/tmp/x.sock", err, sizeof(err)), 0);
	CHECK_EQ(migrate_addr_check("tcp:127.0.0.1", err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "tcp:HOST:PORT") != NULL);
	CHECK_EQ(migrate_addr_check("tcp:127.0.0.1:0", err, sizeof(err)), -EINVAL);
	CHECK_EQ(migrate_addr_check("tcp:127.0.0.1:65536", err, sizeof(err)), -EINVAL);
	CHECK_EQ(migrate_addr_check("tcp:127.0.0.1:44x", err, sizeof(err)), -EINVAL);
	CHECK_EQ(migrate_addr_check("tcp:[::1:4444", err, sizeof(err)), -EINVAL);
	CHECK_EQ(migrate_addr_check("unix:", err, sizeof(err)), -EINVAL);
	CHECK_EQ(migrate_addr_check("udp:1.2.3.4:5", err, sizeof(err)), -EINVAL);
	CHECK_EQ(migrate_addr_check("", err, sizeof(err)), -EINVAL);
	{
		char longp[200];

		memset(longp, 'a', sizeof(longp) - 1);
		longp[sizeof(longp) - 1] = '\0';
		memcpy(longp, "unix:/", 6);
		CHECK_EQ(migrate_addr_check(longp, err, sizeof(err)), -EINVAL);
	}
}

/* Pre-copy's decision after a round (migrate_precopy_next, docs/migration.md). */
TEST(migrate_precopy_decision)
{
	const double MB = 1 << 20;

	/* Under the limit after round 1: nothing to compare with, a round more ... */
	CHECK_EQ(migrate_precopy_next(20, 18, 50, 10 * MB, -1, 1, 30), MIG_NEXT_ROUND);
	/* ... unless under 1 ms of memory is left, or round 1 was the last allowed. */
	CHECK_EQ(migrate_precopy_next(2.5, 0.5, 50, 8192, -1, 1, 30), MIG_STOP_UNDER);
	CHECK_EQ(migrate_precopy_next(20, 18, 50, 10 * MB, -1, 1, 1), MIG_STOP_UNDER);
	/* Under the limit and halving: one more round; not halving: stop. */
	CHECK_EQ(migrate_precopy_next(20, 18, 50, 4 * MB, 10 * MB, 2, 30), MIG_NEXT_ROUND);
	CHECK_EQ(migrate_precopy_next(20, 18, 50, 6 * MB, 10 * MB, 2, 30), MIG_STOP_UNDER);
	/* Under the limit, halving, at the round limit: stop. */
	CHECK_EQ(migrate_precopy_next(20, 18, 50, 4 * MB, 10 * MB, 30, 30), MIG_STOP_UNDER);
	/* Under the limit, under 1 ms of memory left: stop. */
	CHECK_EQ(migrate_precopy_next(3, 0.5, 50, 4096, 3 * MB, 3, 30), MIG_STOP_UNDER);
	/* Over the limit on memory: go on, shrinking or not (the throttle's case). */
	CHECK_EQ(migrate_precopy_next(300, 290, 50, 60 * MB, 100 * MB, 2, 30), MIG_NEXT_ROUND);
	CHECK_EQ(migrate_precopy_next(300, 290, 50, 90 * MB, 100 * MB, 2, 30), MIG_NEXT_ROUND);
	/* Over the limit by the fixed part alone (tier 2): under 1 ms of memory: stop. */
	CHECK_EQ(migrate_precopy_next(63.6, 0.0, 50, 0, 0, 8, 30), MIG_STOP_OVER);
	CHECK_EQ(migrate_precopy_next(63.6, 0.5, 50, 8192, -1, 1, 30), MIG_STOP_OVER);
	/* ... the memory part under a quarter of the limit and not halving: stop ... */
	CHECK_EQ(migrate_precopy_next(59.5, 12, 50, 0.3 * MB, 0.1 * MB, 7, 30), MIG_STOP_OVER);
	/* ... but halving: one more round; over a quarter: go on. */
	CHECK_EQ(migrate_precopy_next(59.5, 12, 50, 0.1 * MB, 0.3 * MB, 7, 30), MIG_NEXT_ROUND);
	CHECK_EQ(migrate_precopy_next(70, 20, 50, 0.4 * MB, 0.4 * MB, 7, 30), MIG_NEXT_ROUND);
	/* After round 1 there is nothing to compare with: a round more. */
	CHECK_EQ(migrate_precopy_next(59.5, 12, 50, 0.3 * MB, -1, 1, 30), MIG_NEXT_ROUND);
}

TEST(migrate_msg_roundtrip)
{
	enum mig_msg type;
	char text[64], big[MIG_MSG_TEXT_MAX + 100];
	struct conn c0, c1;
	int sv[2];

	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	c0 = conn_plain(sv[0]);
	c1 = conn_plain(sv[1]);
	CHECK_EQ(migrate_msg_send(&c0, MIG_MSG_READY, NULL), 0);
	CHECK_EQ(migrate_msg_send(&c0, MIG_MSG_REFUSE, "vCPUs: 1 here, 2 in the stream"), 0);
	CHECK_EQ(migrate_msg_recv(&c1, 1000, &type, text, sizeof(text)), 0);
	CHECK_EQ(type, MIG_MSG_READY);
	CHECK_STR(text, "");
	CHECK_EQ(migrate_msg_recv(&c1, 1000, &type, text, sizeof(text)), 0);
	CHECK_EQ(type, MIG_MSG_REFUSE);
	CHECK_STR(text, "vCPUs: 1 here, 2 in the stream");
	/* Text longer than the limit is cut, longer than the buffer truncated, NUL-terminated. */
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	CHECK_EQ(migrate_msg_send(&c0, MIG_MSG_ERROR, big), 0);
	CHECK_EQ(migrate_msg_recv(&c1, 1000, &type, text, sizeof(text)), 0);
	CHECK_EQ(type, MIG_MSG_ERROR);
	CHECK_EQ(strlen(text), sizeof(text) - 1);
	/* Control characters from a peer never reach a log. */
	CHECK_EQ(migrate_msg_send(&c0, MIG_MSG_ERROR, "a\033[2Jb\n"), 0);
	CHECK_EQ(migrate_msg_recv(&c1, 1000, &type, text, sizeof(text)), 0);
	CHECK_STR(text, "a?[2Jb?");
	close(sv[0]);
	close(sv[1]);
}

/* Send raw bytes, then expect migrate_msg_recv() to return want. */
static void expect_raw(const void *buf, size_t n, bool close_after, int want)
{
	enum mig_msg type;
	char text[64];
	int sv[2];

	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	CHECK_EQ(write(sv[0], buf, n), (ssize_t)n);
	if (close_after)
		close(sv[0]);
	CHECK_EQ(migrate_msg_recv(&(struct conn){ .fd = sv[1] }, 200, &type, text, sizeof(text)),
		 want);
	if (!close_after)
		close(sv[0]);
	close(sv[1]);
}

static size_t make_msg(uint8_t *b, uint32_t magic, uint16_t type, uint16_t len,
		       const char *text, bool good_crc)
{
	uint32_t crc;

	memcpy(b, &magic, 4);
	memcpy(b + 4, &type, 2);
	memcpy(b + 6, &len, 2);
	if (len)
		memcpy(b + 8, text, len);
	crc = crc32c(0, b, 8 + (size_t)len) ^ (good_crc ? 0 : 1);
	memcpy(b + 8 + len, &crc, 4);
	return 12 + (size_t)len;
}

TEST(migrate_msg_damaged)
{
	uint8_t b[64];
	size_t n;

	n = make_msg(b, 0x434d5747u, MIG_MSG_COMMIT, 0, NULL, true);
	expect_raw(b, n, false, 0);
	n = make_msg(b, 0x434d5748u, MIG_MSG_COMMIT, 0, NULL, true);
	expect_raw(b, n, false, -EBADMSG);                /* magic */
	n = make_msg(b, 0x434d5747u, 0, 0, NULL, true);
	expect_raw(b, n, false, -EBADMSG);                /* type 0 */
	n = make_msg(b, 0x434d5747u, 77, 0, NULL, true);
	expect_raw(b, n, false, -EBADMSG);                /* unknown type */
	n = make_msg(b, 0x434d5747u, MIG_MSG_DONE, 3, "abc", false);
	expect_raw(b, n, false, -EBADMSG);                /* crc */
	n = make_msg(b, 0x434d5747u, MIG_MSG_DONE, 3, "abc", true);
	b[6] = 0xff;
	b[7] = 0xff;                                      /* length over the limit */
	expect_raw(b, n, false, -EBADMSG);
	n = make_msg(b, 0x434d5747u, MIG_MSG_DONE, 3, "abc", true);
	expect_raw(b, n - 2, true, -ECONNRESET);          /* truncated, peer gone */
	expect_raw(b, n - 2, false, -ETIMEDOUT);          /* truncated, peer silent */
	expect_raw(b, 0, true, -ECONNRESET);              /* nothing at all */
}

TEST(migrate_listen_unix)
{
	char dir[] = "/tmp/godwit-unit-mig.XXXXXX", addr[128], err[256];
	struct stat st;
	int lfd, lfd2, fd;

	CHECK(mkdtemp(dir) != NULL);
	snprintf(addr, sizeof(addr), "unix:%s/m.sock", dir);
	CHECK_EQ(migrate_listen(addr, &lfd, err, sizeof(err)), 0);
	/* A second listener on a live socket is refused, the first one untouched. */
	CHECK_EQ(migrate_listen(addr, &lfd2, err, sizeof(err)), -EADDRINUSE);
	close(lfd);
	/* Now stale: replaced. */
	CHECK_EQ(migrate_listen(addr, &lfd, err, sizeof(err)), 0);
	close(lfd);
	snprintf(addr, sizeof(addr), "%s/m.sock", dir);
	unlink(addr);
	/* A regular file is never replaced. */
	fd = open(addr, O_CREAT | O_WRONLY, 0600);
	CHECK(fd >= 0);
	close(fd);
	snprintf(addr, sizeof(addr), "unix:%s/m.sock", dir);
	CHECK_EQ(migrate_listen(addr, &lfd, err, sizeof(err)), -EEXIST);
	snprintf(addr, sizeof(addr), "%s/m.sock", dir);
	CHECK_EQ(stat(addr, &st), 0);
	CHECK(S_ISREG(st.st_mode));
	unlink(addr);
	rmdir(dir);
}
