/*
 * test_fleet.c - the fleet's records (fleet.h: names, keys, the owner
 * record) and the etcd client's reply parsers (etcd.h) on replies captured
 * from etcd 3.4's JSON gateway and on malformed ones: truncated at every
 * byte, wrong types, bad base64, NUL bytes, numbers out of range; and the
 * client's answer to what a fake endpoint sends (HTTP errors, etcd's error
 * objects, a reply too large, a connection closed without an answer).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "godwit/etcd.h"
#include "godwit/fleet.h"
#include "godwit/guard.h"
#include "unit.h"

TEST(fleet_names)
{
	static const char *const good[] = { "a", "host-1", "vm_2.prod", "A.B-c_d", "...", ".a",
		"012345678901234567890123456789012345678901234567890123456789012" /* 63 */ };
	static const char *const bad[] = { "", ".", "..", "a b", "a/b", "a\nb", "é", "a:b",
		"0123456789012345678901234567890123456789012345678901234567890123" /* 64 */ };

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		if (!fleet_name_ok(good[i]))
			unit_fail(__FILE__, __LINE__, "\"%s\" refused", good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (fleet_name_ok(bad[i]))
			unit_fail(__FILE__, __LINE__, "\"%s\" accepted", bad[i]);
	CHECK(!fleet_name_ok(NULL));
}

TEST(fleet_keys)
{
	char buf[FLEET_KEY_MAX];

	CHECK_EQ(fleet_key_host(buf, sizeof(buf), "h1"), 0);
	CHECK_STR(buf, "/godwit/hosts/h1");
	CHECK_EQ(fleet_key_cordon(buf, sizeof(buf), "h1"), 0);
	CHECK_STR(buf, "/godwit/cordon/h1");
	CHECK_EQ(fleet_key_vm(buf, sizeof(buf), "web", "owner"), 0);
	CHECK_STR(buf, "/godwit/vms/web/owner");
	for (const char *const *w = (const char *const[]){ "spec", "status", "intent",
							   "migration", NULL }; *w; w++)
		CHECK_EQ(fleet_key_vm(buf, sizeof(buf), "web", *w), 0);
	CHECK_EQ(fleet_key_veto(buf, sizeof(buf), "web", 18446744073709551615ull), 0);
	CHECK_STR(buf, "/godwit/vms/web/veto/18446744073709551615");
	CHECK_EQ(fleet_key_veto(buf, sizeof(buf), "web", 0), 0);
	CHECK_STR(buf, "/godwit/vms/web/veto/0");

	CHECK_EQ(fleet_key_host(buf, sizeof(buf), ".."), -EINVAL);
	CHECK_EQ(fleet_key_host(buf, sizeof(buf), "a/b"), -EINVAL);
	CHECK_EQ(fleet_key_cordon(buf, sizeof(buf), ""), -EINVAL);
	CHECK_EQ(fleet_key_vm(buf, sizeof(buf), "web", "owner/x"), -EINVAL);
	CHECK_EQ(fleet_key_vm(buf, sizeof(buf), "web", "veto"), -EINVAL);
	CHECK_EQ(fleet_key_vm(buf, sizeof(buf), "web", NULL), -EINVAL);
	CHECK_EQ(fleet_key_vm(buf, sizeof(buf), "w/eb", "spec"), -EINVAL);
	CHECK_EQ(fleet_key_veto(buf, sizeof(buf), "", 1), -EINVAL);
	/* Too small: refused, never truncated. */
	CHECK_EQ(fleet_key_host(buf, 16, "h1"), -ENAMETOOLONG);   /* needs 17 */
	CHECK_STR(buf, "");
	CHECK_EQ(fleet_key_host(buf, 17, "h1"), 0);
	CHECK_EQ(fleet_key_vm(buf, 0, "web", "spec"), -ENAMETOOLONG);
}

/* A lease ID as --fleet-lease and PUT /vm/fleet-lease take it (guard.h). */
TEST(fleet_lease_id)
{
	int64_t id = 0;

	CHECK_EQ(fleet_lease_parse("7587888165234567", &id), 0);
	CHECK(id == 7587888165234567LL);
	CHECK_EQ(fleet_lease_parse("9223372036854775807", &id), 0);
	CHECK_EQ(fleet_lease_parse("9223372036854775808", &id), -EINVAL);
	CHECK_EQ(fleet_lease_parse("0", &id), -EINVAL);
	CHECK_EQ(fleet_lease_parse("-5", &id), -EINVAL);
	CHECK_EQ(fleet_lease_parse("+5", &id), -EINVAL);
	CHECK_EQ(fleet_lease_parse("05", &id), -EINVAL);
	CHECK_EQ(fleet_lease_parse("5x", &id), -EINVAL);
	CHECK_EQ(fleet_lease_parse(" 5", &id), -EINVAL);
	CHECK_EQ(fleet_lease_parse("", &id), -EINVAL);
	CHECK_EQ(fleet_lease_parse(NULL, &id), -EINVAL);
}

TEST(fleet_owner)
{
	struct fleet_owner o;
	char buf[FLEET_OWNER_MAX];

	CHECK_EQ(fleet_owner_parse("host-a 7", &o), 0);
	CHECK_STR(o.host, "host-a");
	CHECK_EQ(o.epoch, 7);
	CHECK_EQ(fleet_owner_parse("h 0", &o), 0);
	CHECK_EQ(o.epoch, 0);
	CHECK_EQ(fleet_owner_parse("h 18446744073709551615", &o), 0);
	CHECK(o.epoch == UINT64_MAX);
	fleet_owner_format(&o, buf, sizeof(buf));
	CHECK_STR(buf, "h 18446744073709551615");

	/* The longest host and epoch fit FLEET_OWNER_MAX; format(parse(s)) == s. */
	const char *longest = "012345678901234567890123456789012345678901234567890123456789012 "
			      "18446744073709551615";
	CHECK_EQ(fleet_owner_parse(longest, &o), 0);
	fleet_owner_format(&o, buf, sizeof(buf));
	CHECK_STR(buf, longest);

	static const char *const bad[] = {
		"", "h", "h ", " 1", "h  1", "h 1 ", "h\t1", "h 1\n", "h +1", "h -1", "h 01",
		"h 00", "h 1a", "h 0x1", "h 18446744073709551616", "h 99999999999999999999",
		"h 1 2", "a/b 1", ". 1", ".. 1", "h 1.0", " h 1",
		"0123456789012345678901234567890123456789012345678901234567890123 1",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&o, 0x55, sizeof(o));
		if (fleet_owner_parse(bad[i], &o) != -EBADMSG)
			unit_fail(__FILE__, __LINE__, "owner \"%s\" accepted", bad[i]);
		else if (o.host[0] || o.epoch)
			unit_fail(__FILE__, __LINE__, "owner \"%s\": output not cleared", bad[i]);
	}
	CHECK_EQ(fleet_owner_parse(NULL, &o), -EBADMSG);
}

/* Replies captured from etcd 3.4.23's gateway. */
#define HDR "\"header\":{\"cluster_id\":\"15118495548433857066\",\"member_id\":" \
	    "\"13668033151171901709\",\"revision\":\"6\",\"raft_term\":\"2\"}"
static const char range_one[] = "{" HDR ",\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":\"5\","
	"\"mod_revision\":\"6\",\"version\":\"2\",\"value\":\"YmFy\",\"lease\":\"4111120481973975818\"}],"
	"\"count\":\"1\"}";
static const char range_two[] = "{" HDR ",\"kvs\":[{\"key\":\"L2dvZHdpdC9hCg==\","
	"\"create_revision\":\"5\",\"mod_revision\":\"6\",\"version\":\"2\"},{\"key\":\"L2dvZHdpdC9i\","
	"\"create_revision\":\"7\",\"mod_revision\":\"7\",\"version\":\"1\",\"value\":\"eA==\"}],"
	"\"count\":\"2\"}";
static const char range_none[] = "{" HDR "}";
static const char txn_yes[] = "{" HDR ",\"succeeded\":true,\"responses\":[{\"response_put\":"
	"{\"header\":{\"revision\":\"3\"}}}]}";
static const char txn_no[] = "{" HDR "}";
static const char grant[] = "{" HDR ",\"ID\":\"4111120481973975818\",\"TTL\":\"10\"}";
static const char keepalive[] = "{\"result\":{" HDR ",\"ID\":\"4111120481973975823\","
	"\"TTL\":\"9\"}}\n";
static const char keepalive_gone[] = "{\"result\":{" HDR ",\"ID\":\"1\"}}\n";

TEST(fleet_parse_range)
{
	struct etcd_kvs kvs;
	char err[256];

	CHECK_EQ(etcd_parse_range(range_one, strlen(range_one), &kvs, err, sizeof(err)), 0);
	CHECK_EQ(kvs.n, 1);
	CHECK_EQ(kvs.revision, 6);
	if (kvs.n == 1) {
		CHECK_STR(kvs.kv[0].key, "foo");
		CHECK_STR(kvs.kv[0].value, "bar");
		CHECK_EQ(kvs.kv[0].create_rev, 5);
		CHECK_EQ(kvs.kv[0].mod_rev, 6);
		CHECK_EQ(kvs.kv[0].version, 2);
		CHECK(kvs.kv[0].lease == 4111120481973975818ll);
	}
	etcd_kvs_free(&kvs);
	CHECK_EQ(etcd_parse_range(range_two, strlen(range_two), &kvs, err, sizeof(err)), 0);
	CHECK_EQ(kvs.n, 2);
	if (kvs.n == 2) {
		CHECK_STR(kvs.kv[0].key, "/godwit/a\n");
		CHECK_STR(kvs.kv[0].value, "");            /* absent: empty */
		CHECK_STR(kvs.kv[1].key, "/godwit/b");
		CHECK_STR(kvs.kv[1].value, "x");
	}
	etcd_kvs_free(&kvs);
	CHECK_EQ(etcd_parse_range(range_none, strlen(range_none), &kvs, err, sizeof(err)), 0);
	CHECK_EQ(kvs.n, 0);
	CHECK(kvs.kv == NULL);
	etcd_kvs_free(&kvs);

	/* Every truncation fails cleanly (the one at full length excepted). */
	for (size_t n = 0; n < strlen(range_two); n++) {
		int r = etcd_parse_range(range_two, n, &kvs, err, sizeof(err));

		if (r != -EBADMSG)
			unit_fail(__FILE__, __LINE__, "truncated at %zu: %d", n, r);
		CHECK(kvs.n == 0 || kvs.kv);
		etcd_kvs_free(&kvs);
	}

	static const struct { const char *json; const char *why; } bad[] = {
		{ "[]", "not a JSON object" },
		{ "{}", "header" },
		{ "{\"header\":[]}", "header" },
		{ "{\"header\":{\"revision\":6}}", "not a string" },
		{ "{\"header\":{\"revision\":\"6x\"}}", "int64" },
		{ "{\"header\":{\"revision\":\"\"}}", "int64" },
		{ "{\"header\":{\"revision\":\"9223372036854775808\"}}", "int64" },
		{ "{\"header\":{\"revision\":\"99999999999999999999999\"}}", "int64" },
		{ "{\"header\":{\"revision\":\"+1\"}}", "int64" },
		{ "{\"header\":{},\"kvs\":{}}", "not an array" },
		{ "{\"header\":{},\"kvs\":[1]}", "not an object" },
		{ "{\"header\":{},\"kvs\":[{}]}", "no \"key\"" },
		{ "{\"header\":{},\"kvs\":[{\"key\":\"\"}]}", "empty" },
		{ "{\"header\":{},\"kvs\":[{\"key\":5}]}", "not a string" },
		{ "{\"header\":{},\"kvs\":[{\"key\":\"Zm9\"}]}", "base64" },
		{ "{\"header\":{},\"kvs\":[{\"key\":\"Zm9v=\"}]}", "base64" },
		{ "{\"header\":{},\"kvs\":[{\"key\":\"Zm9v\",\"value\":\"Y!Fy\"}]}", "base64" },
		{ "{\"header\":{},\"kvs\":[{\"key\":\"Zm9v\",\"value\":\"YQ=a\"}]}", "base64" },
		{ "{\"header\":{},\"kvs\":[{\"key\":\"Zm9v\",\"value\":\"YR==\"}]}", "base64" },
		{ "{\"header\":{},\"kvs\":[{\"key\":\"Zm9v\",\"value\":\"====\"}]}", "base64" },
		{ "{\"header\":{},\"kvs\":[{\"key\":\"Zm9v\",\"value\":\"YQBi\"}]}", "NUL" },
		{ "{\"header\":{},\"kvs\":[{\"key\":\"AA==\"}]}", "NUL" },
		{ "{\"header\":{},\"kvs\":[{\"key\":\"Zm9v\",\"version\":\"-1\"}]}", "negative" },
		{ "{\"header\":{},\"kvs\":[{\"key\":\"Zm9v\",\"lease\":true}]}", "not a string" },
		{ "{\"header\":{},\"kvs\":[{\"key\":\"Zm9v\",\"mod_revision\":\"1\\u00002\"}]}", "not JSON" },
		{ "{\"header\":{},\"header\":{}}", "not JSON" },
		{ "{\"header\":{}} x", "not JSON" },
		{ "", "not JSON" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		int r = etcd_parse_range(bad[i].json, strlen(bad[i].json), &kvs, err, sizeof(err));

		if (r != -EBADMSG || !strstr(err, bad[i].why))
			unit_fail(__FILE__, __LINE__, "%s: %d \"%s\", expected -EBADMSG \"%s\"",
				  bad[i].json, r, err, bad[i].why);
		etcd_kvs_free(&kvs);
	}
	/* A NUL inside the reply: the JSON text ends there. */
	static const char nul[] = "{\"header\":{}}\0{";
	CHECK_EQ(etcd_parse_range(nul, sizeof(nul) - 1, &kvs, err, sizeof(err)), -EBADMSG);
	etcd_kvs_free(&kvs);
	CHECK_EQ(etcd_parse_range(NULL, 0, &kvs, err, sizeof(err)), -EBADMSG);
	/* The smallest and largest int64s. */
	static const char ext[] = "{\"header\":{\"revision\":\"9223372036854775807\"},\"kvs\":"
		"[{\"key\":\"YQ==\",\"lease\":\"0\",\"version\":\"0000000000000000001\"}]}";
	CHECK_EQ(etcd_parse_range(ext, strlen(ext), &kvs, err, sizeof(err)), 0);
	CHECK(kvs.revision == INT64_MAX);
	CHECK(kvs.n == 1 && kvs.kv[0].version == 1);
	etcd_kvs_free(&kvs);
}

TEST(fleet_parse_txn)
{
	char err[256];
	bool ok;

	CHECK_EQ(etcd_parse_txn(txn_yes, strlen(txn_yes), &ok, err, sizeof(err)), 0);
	CHECK(ok);
	CHECK_EQ(etcd_parse_txn(txn_no, strlen(txn_no), &ok, err, sizeof(err)), 0);
	CHECK(!ok);      /* "succeeded" absent: false */
	static const char f[] = "{\"header\":{},\"succeeded\":false}";
	CHECK_EQ(etcd_parse_txn(f, strlen(f), &ok, err, sizeof(err)), 0);
	CHECK(!ok);
	static const char *const bad[] = {
		"{\"header\":{},\"succeeded\":\"true\"}", "{\"header\":{},\"succeeded\":1}",
		"{\"succeeded\":true}", "{\"header\":5,\"succeeded\":true}", "[true]", "true",
		"{\"header\":{},\"succeeded\":true", "{\"header\":{},\"succeeded\":null}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ok = true;
		if (etcd_parse_txn(bad[i], strlen(bad[i]), &ok, err, sizeof(err)) != -EBADMSG || ok)
			unit_fail(__FILE__, __LINE__, "txn reply %s accepted", bad[i]);
	}
	for (size_t n = 0; n < strlen(txn_yes); n++) {
		ok = true;
		if (etcd_parse_txn(txn_yes, n, &ok, err, sizeof(err)) != -EBADMSG || ok)
			unit_fail(__FILE__, __LINE__, "txn reply truncated at %zu accepted", n);
	}
}

TEST(fleet_parse_lease)
{
	char err[256];
	int64_t id;
	int ttl;

	CHECK_EQ(etcd_parse_lease(grant, strlen(grant), &id, &ttl, err, sizeof(err)), 0);
	CHECK(id == 4111120481973975818ll);
	CHECK_EQ(ttl, 10);
	CHECK_EQ(etcd_parse_lease(keepalive, strlen(keepalive), &id, &ttl, err, sizeof(err)), 0);
	CHECK(id == 4111120481973975823ll);
	CHECK_EQ(ttl, 9);
	CHECK_EQ(etcd_parse_lease(keepalive_gone, strlen(keepalive_gone), &id, &ttl, err,
				  sizeof(err)), 0);
	CHECK_EQ(id, 1);
	CHECK_EQ(ttl, 0);     /* TTL absent: the lease is gone */
	static const char neg[] = "{\"ID\":\"5\",\"TTL\":\"-1\"}";
	CHECK_EQ(etcd_parse_lease(neg, strlen(neg), &id, &ttl, err, sizeof(err)), 0);
	CHECK_EQ(ttl, 0);

	static const char *const bad[] = {
		"{}", "{\"TTL\":\"10\"}", "{\"ID\":5,\"TTL\":\"10\"}", "{\"ID\":\"0\"}",
		"{\"ID\":\"-5\"}", "{\"ID\":\"x\"}", "{\"ID\":\"5\",\"TTL\":\"2147483648\"}",
		"{\"ID\":\"5\",\"TTL\":10}", "{\"ID\":\"18446744073709551615\"}",
		"{\"result\":[]}", "{\"result\":\"x\"}", "{\"result\":{}}", "[]", "",
		"{\"ID\":\"5\"}{\"ID\":\"6\"}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		id = 77;
		ttl = 77;
		if (etcd_parse_lease(bad[i], strlen(bad[i]), &id, &ttl, err, sizeof(err)) != -EBADMSG ||
		    id || ttl)
			unit_fail(__FILE__, __LINE__, "lease reply %s accepted (id %" PRId64 ")",
				  bad[i], id);
	}
	for (size_t n = 0; n + 1 < strlen(keepalive); n++) {
		if (etcd_parse_lease(keepalive, n, &id, &ttl, err, sizeof(err)) != -EBADMSG)
			unit_fail(__FILE__, __LINE__, "keepalive truncated at %zu accepted", n);
	}
}

/* Base64 of every length and byte value (but NUL) round-trips through the parser. */
TEST(fleet_parse_base64)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	unsigned char raw[300];
	char enc[420], json[1024], err[256];
	struct etcd_kvs kvs;

	for (size_t n = 1; n <= 255; n++) {
		size_t o = 0;

		for (size_t i = 0; i < n; i++)
			raw[i] = (unsigned char)(1 + (i * 37 + n) % 255);
		for (size_t i = 0; i < n; i += 3) {
			uint32_t v = (uint32_t)raw[i] << 16 | (i + 1 < n ? raw[i + 1] << 8 : 0) |
				     (i + 2 < n ? raw[i + 2] : 0);
			enc[o++] = b64[v >> 18 & 63];
			enc[o++] = b64[v >> 12 & 63];
			enc[o++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
			enc[o++] = i + 2 < n ? b64[v & 63] : '=';
		}
		enc[o] = '\0';
		snprintf(json, sizeof(json), "{\"header\":{},\"kvs\":[{\"key\":\"%s\",\"value\":\"%s\"}]}",
			 enc, enc);
		if (etcd_parse_range(json, strlen(json), &kvs, err, sizeof(err)) || kvs.n != 1 ||
		    strlen(kvs.kv[0].value) != n || memcmp(kvs.kv[0].value, raw, n)) {
			unit_fail(__FILE__, __LINE__, "length %zu: %s", n, err);
			etcd_kvs_free(&kvs);
			break;
		}
		etcd_kvs_free(&kvs);
	}
}

/* The client refuses bad URLs and arguments before sending anything. */
TEST(fleet_etcd_open)
{
	struct etcd *e = NULL;
	char err[256];

	CHECK_EQ(etcd_open("http://127.0.0.1:1,https://[::1]:2379/", NULL, 0, &e, err,
			   sizeof(err)), 0);
	if (!e)
		return;
	CHECK_STR(etcd_endpoint(e), "http://127.0.0.1:1");
	struct etcd_kvs kvs;
	CHECK_EQ(etcd_get(e, "", &kvs, err, sizeof(err)), -EINVAL);
	CHECK_EQ(etcd_put(e, "/k", NULL, 0, err, sizeof(err)), -EINVAL);
	CHECK_EQ(etcd_delete(e, "", true, NULL, err, sizeof(err)), -EINVAL);   /* every key */
	CHECK_EQ(etcd_lease_keepalive(e, 0, &(int){ 0 }, err, sizeof(err)), -EINVAL);
	CHECK_EQ(etcd_lease_grant(e, 0, &(int64_t){ 0 }, err, sizeof(err)), -EINVAL);
	bool ok = true;
	struct etcd_cmp c = { .key = "/k", .target = ETCD_VALUE, .result = ETCD_EQ };
	CHECK_EQ(etcd_txn(e, &c, 1, NULL, 0, &ok, err, sizeof(err)), -EINVAL);
	CHECK(!ok);
	etcd_close(e);
	CHECK_EQ(etcd_open("https://x:1", "/nonexistent-dir", 0, &e, err, sizeof(err)), -ENOENT);
	CHECK(strstr(err, "/nonexistent-dir/ca.pem") != NULL);
	CHECK_EQ(etcd_open("x:1", NULL, 0, &e, err, sizeof(err)), -EINVAL);
	CHECK(e == NULL);
}

/*
 * A fake endpoint on 127.0.0.1: a thread that takes one connection, reads
 * the request (headers and Content-Length bytes), sends the canned answer
 * and closes - what the client makes of answers etcd would not send.
 */
struct fake_srv {
	int lfd;
	const char *head;        /* status line and headers, "\r\n\r\n" included */
	size_t body_len;         /* then body_len bytes: body, or spaces if NULL */
	const char *body;
	pthread_t thr;
};

static void *fake_srv_run(void *opaque)
{
	struct fake_srv *s = opaque;
	char req[8192], pad[65536];
	size_t got = 0, sent = 0;
	int fd = accept(s->lfd, NULL, NULL);

	if (fd < 0)
		return NULL;
	/* Read until the headers and the body announced have come (or 1 s). */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &(struct timeval){ .tv_sec = 1 },
		   sizeof(struct timeval));
	for (;;) {
		ssize_t n = recv(fd, req + got, sizeof(req) - 1 - got, 0);
		char *end, *cl;

		if (n <= 0)
			break;
		got += (size_t)n;
		req[got] = '\0';
		end = strstr(req, "\r\n\r\n");
		cl = strcasestr(req, "Content-Length:");
		if (end && cl && got >= (size_t)(end + 4 - req) + strtoul(cl + 15, NULL, 10))
			break;
		if (got == sizeof(req) - 1)
			break;
	}
	send(fd, s->head, strlen(s->head), MSG_NOSIGNAL);
	memset(pad, ' ', sizeof(pad));
	while (sent < s->body_len) {
		size_t chunk = s->body_len - sent < sizeof(pad) ? s->body_len - sent : sizeof(pad);
		ssize_t n = send(fd, s->body ? s->body + sent : pad, chunk, MSG_NOSIGNAL);

		if (n <= 0)
			break;
		sent += (size_t)n;
	}
	close(fd);
	return NULL;
}

/* Start s; its URL in url.  0 or -1. */
static int fake_srv_start(struct fake_srv *s, char *url, size_t len)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(s->lfd, 4) ||
	    getsockname(s->lfd, (struct sockaddr *)&sa, &sl))
		return -1;
	snprintf(url, len, "http://127.0.0.1:%u", ntohs(sa.sin_port));
	return pthread_create(&s->thr, NULL, fake_srv_run, s) ? -1 : 0;
}

static void fake_srv_stop(struct fake_srv *s)
{
	pthread_join(s->thr, NULL);
	close(s->lfd);
}

enum fake_call { FAKE_GET, FAKE_PUT, FAKE_TXN, FAKE_KEEPALIVE };

/*
 * One call of the client to a fake endpoint answering "HTTP/1.1 STATUS" with
 * body (body_len bytes; spaces if NULL), or closing without a word (status
 * NULL): the call's result, and err.
 */
static int fake_call(enum fake_call call, const char *status, const char *body, size_t body_len,
		     char *err, size_t len)
{
	char url[64], head[256];
	struct fake_srv s = { .head = head, .body = body, .body_len = status ? body_len : 0 };
	struct etcd *e;
	struct etcd_kvs kvs;
	struct etcd_op op = { .type = ETCD_OP_PUT, .key = "/k", .value = "v" };
	bool ok;
	int ttl, r;

	if (status)
		snprintf(head, sizeof(head), "HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
			 "Content-Length: %zu\r\n\r\n", status, body_len);
	else
		head[0] = '\0';
	if (fake_srv_start(&s, url, sizeof(url))) {
		snprintf(err, len, "fake server: %s", strerror(errno));
		return 1;
	}
	if (etcd_open(url, NULL, 3000, &e, err, len)) {
		fake_srv_stop(&s);
		return 1;
	}
	switch (call) {
	case FAKE_GET:
		r = etcd_get(e, "/k", &kvs, err, len);
		etcd_kvs_free(&kvs);
		break;
	case FAKE_PUT:
		r = etcd_put(e, "/k", "v", 0, err, len);
		break;
	case FAKE_TXN:
		r = etcd_txn(e, NULL, 0, &op, 1, &ok, err, len);
		if (!r && ok)
			r = 1;       /* never "succeeded" here */
		break;
	default:
		r = etcd_lease_keepalive(e, 5, &ttl, err, len);
		break;
	}
	etcd_close(e);
	fake_srv_stop(&s);
	return r;
}

TEST(fleet_etcd_answers)
{
	char err[512];
	int r;

	/* Sanity: a good answer through the fake endpoint. */
	r = fake_call(FAKE_GET, "200 OK", "{\"header\":{}}", 13, err, sizeof(err));
	CHECK_EQ(r, 0);
	/* Not JSON: -EBADMSG naming the endpoint. */
	r = fake_call(FAKE_GET, "200 OK", "nope!", 5, err, sizeof(err));
	CHECK_EQ(r, -EBADMSG);
	CHECK(strstr(err, "http://127.0.0.1:") && strstr(err, "not JSON"));
	/* An HTTP error without etcd's error object: -EIO with the status. */
	r = fake_call(FAKE_PUT, "500 Oops", "", 0, err,
		      sizeof(err));
	CHECK_EQ(r, -EIO);
	CHECK(strstr(err, "HTTP status 500") != NULL);
	/* etcd's error object: -EIO with its message. */
	static const char eio[] = "{\"error\":\"etcdserver: mvcc: required revision has been "
				  "compacted\",\"code\":11}";
	r = fake_call(FAKE_GET, "400 Bad Request", eio,
		      strlen(eio), err, sizeof(err));
	CHECK_EQ(r, -EIO);
	CHECK(strstr(err, "compacted") != NULL);
	/* A write etcd could not finish: it may be applied, so -ETIMEDOUT, never resent. */
	static const char lc[] = "{\"error\":\"etcdserver: leader changed\",\"code\":14}";
	r = fake_call(FAKE_TXN, "503 Service Unavailable", lc,
		      strlen(lc), err, sizeof(err));
	CHECK_EQ(r, -ETIMEDOUT);
	/* A read refused as Unavailable by the only member: -EIO, not "unreachable". */
	r = fake_call(FAKE_GET, "503 Service Unavailable", lc,
		      strlen(lc), err, sizeof(err));
	CHECK_EQ(r, -EIO);
	CHECK(strstr(err, "leader changed") != NULL);
	/* The answer to another lease's keep-alive; a txn reply of the wrong shape. */
	static const char other[] = "{\"result\":{\"header\":{},\"ID\":\"6\",\"TTL\":\"9\"}}";
	r = fake_call(FAKE_KEEPALIVE, "200 OK", other, strlen(other), err, sizeof(err));
	CHECK_EQ(r, -EBADMSG);
	static const char txn[] = "{\"header\":{},\"succeeded\":\"yes\"}";
	r = fake_call(FAKE_TXN, "200 OK", txn, strlen(txn), err, sizeof(err));
	CHECK_EQ(r, -EBADMSG);
	/* A reply larger than ETCD_REPLY_MAX is cut off: -EBADMSG. */
	r = fake_call(FAKE_GET, "200 OK", NULL, ETCD_REPLY_MAX + 1, err, sizeof(err));
	CHECK_EQ(r, -EBADMSG);
	CHECK(strstr(err, "larger") != NULL);
	/* The connection closed without an answer: the request was sent, so -ETIMEDOUT
	 * (a write may have been applied; a read had no other endpoint to go to). */
	r = fake_call(FAKE_PUT, NULL, NULL, 0, err, sizeof(err));
	CHECK_EQ(r, -ETIMEDOUT);
	CHECK(strstr(err, "may or may not") != NULL);
	r = fake_call(FAKE_GET, NULL, NULL, 0, err, sizeof(err));
	CHECK_EQ(r, -ETIMEDOUT);
}
