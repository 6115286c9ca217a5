/*
 * etcd_test.c - the etcd client (src/fleet/etcd.c) against a real etcd,
 * which tests/kvm/t-etcd.sh starts.  Prints "PASS $TIER/etcd-NAME" or
 * "FAIL $TIER/etcd-NAME: why" lines; exits 1 if any failed.
 *
 * Usage:
 *   etcd-test basic URL            get, put, prefix, delete, txn, leases,
 *                                  two threads sharing a client, a reply
 *                                  that never comes (a listening socket that
 *                                  never answers)
 *   etcd-test failover DEAD LIVE   the first endpoint refuses: the second serves
 *   etcd-test dead URL...          every endpoint refuses: -ECONNREFUSED, fast
 *   etcd-test tls URL DIR          https with DIR's ca.pem, cert.pem, key.pem;
 *                                  without them the request is refused
 *   etcd-test cluster URLS PID     3 members (URLS comma-separated): works,
 *                                  then kills PID (the member at the first
 *                                  URL, which the client is using: the
 *                                  leader) and works on once the others
 *                                  elected a new leader (retries counted)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "godwit/etcd.h"
#include "godwit/fleet.h"

#define ERR_LEN 512

static const char *tier = "kvm";
static int failures;
static char cur_test[64];
static bool cur_failed;

static void t_begin(const char *name)
{
	snprintf(cur_test, sizeof(cur_test), "%s", name);
	cur_failed = false;
}

static void t_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void t_fail(const char *fmt, ...)
{
	va_list ap;

	if (cur_failed)
		return;          /* one FAIL line per test: the first reason */
	cur_failed = true;
	failures++;
	printf("FAIL %s/etcd-%s: ", tier, cur_test);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static void t_end(void)
{
	if (!cur_failed)
		printf("PASS %s/etcd-%s\n", tier, cur_test);
}

/* A check inside a test: on failure, FAIL and leave the test function. */
#define T_OK(call) do {                                                       \
	int r_ = (call);                                                      \
	if (r_) {                                                             \
		t_fail("%s:%d: %s = %d (%s): %s", __FILE__, __LINE__, #call,  \
		       r_, strerror(-r_), err);                               \
		return;                                                       \
	}                                                                     \
} while (0)
#define T_CHECK(c, ...) do {                                                  \
	if (!(c)) {                                                           \
		t_fail("%s:%d: %s: ", __FILE__, __LINE__, #c);                \
		printf("#   " __VA_ARGS__);                                   \
		putchar('\n');                                                \
		return;                                                       \
	}                                                                     \
} while (0)

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A unique key prefix for this run, so that reruns against one etcd do not meet. */
static char pfx[64];

static void key(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s%s", pfx, name);
}

static void test_kv(struct etcd *e)
{
	char err[ERR_LEN] = "", k[128], k2[128], k3[128];
	struct etcd_kvs kvs;
	int64_t deleted;

	key(k, sizeof(k), "a/one");
	key(k2, sizeof(k2), "a/two");
	key(k3, sizeof(k3), "b");
	T_OK(etcd_get(e, k, &kvs, err, sizeof(err)));
	T_CHECK(kvs.n == 0 && kvs.revision > 0, "n=%zu rev=%" PRId64, kvs.n, kvs.revision);
	etcd_kvs_free(&kvs);

	T_OK(etcd_put(e, k, "value 1", 0, err, sizeof(err)));
	T_OK(etcd_put(e, k2, "", 0, err, sizeof(err)));     /* empty: absent in the JSON */
	T_OK(etcd_put(e, k3, "{\"json\": \"\\u00e9 \xc3\xa9\"}", 0, err, sizeof(err)));
	T_OK(etcd_get(e, k, &kvs, err, sizeof(err)));
	T_CHECK(kvs.n == 1 && !strcmp(kvs.kv[0].key, k) && !strcmp(kvs.kv[0].value, "value 1") &&
		kvs.kv[0].version == 1 && kvs.kv[0].mod_rev > 0 &&
		kvs.kv[0].create_rev == kvs.kv[0].mod_rev && kvs.kv[0].lease == 0,
		"n=%zu", kvs.n);
	etcd_kvs_free(&kvs);
	T_OK(etcd_put(e, k, "value 2", 0, err, sizeof(err)));
	T_OK(etcd_get(e, k, &kvs, err, sizeof(err)));
	T_CHECK(kvs.n == 1 && !strcmp(kvs.kv[0].value, "value 2") && kvs.kv[0].version == 2 &&
		kvs.kv[0].mod_rev > kvs.kv[0].create_rev, "n=%zu", kvs.n);
	etcd_kvs_free(&kvs);
	T_OK(etcd_get(e, k3, &kvs, err, sizeof(err)));
	T_CHECK(kvs.n == 1 && !strcmp(kvs.kv[0].value, "{\"json\": \"\\u00e9 \xc3\xa9\"}"),
		"bytes changed on the way");
	etcd_kvs_free(&kvs);

	/* The prefix "PFX/a/" holds two keys, in key order; "PFX/a" (no slash) all three? no:
	 * "PFX/b" does not start with "PFX/a". */
	key(k3, sizeof(k3), "a/");
	T_OK(etcd_get_prefix(e, k3, &kvs, err, sizeof(err)));
	T_CHECK(kvs.n == 2 && !strcmp(kvs.kv[0].key, k) && !strcmp(kvs.kv[1].key, k2) &&
		!strcmp(kvs.kv[1].value, ""), "n=%zu", kvs.n);
	etcd_kvs_free(&kvs);
	T_OK(etcd_get_prefix(e, pfx, &kvs, err, sizeof(err)));
	T_CHECK(kvs.n == 3, "n=%zu", kvs.n);
	etcd_kvs_free(&kvs);

	T_OK(etcd_delete(e, k, false, &deleted, err, sizeof(err)));
	T_CHECK(deleted == 1, "deleted %" PRId64, deleted);
	T_OK(etcd_delete(e, k, false, &deleted, err, sizeof(err)));
	T_CHECK(deleted == 0, "deleted %" PRId64 " of an absent key", deleted);
	T_OK(etcd_delete(e, pfx, true, &deleted, err, sizeof(err)));
	T_CHECK(deleted == 2, "deleted %" PRId64 " under the prefix", deleted);
	T_OK(etcd_get_prefix(e, pfx, &kvs, err, sizeof(err)));
	T_CHECK(kvs.n == 0, "n=%zu after deleting the prefix", kvs.n);
	etcd_kvs_free(&kvs);

	/* A key etcd cannot hold as a C string is never sent; an empty key is refused. */
	T_CHECK(etcd_put(e, "", "x", 0, err, sizeof(err)) == -EINVAL, "empty key accepted");
}

/* The owner hand-off of docs/fleet.md rule 2, with real transactions. */
static void test_txn(struct etcd *e)
{
	char err[ERR_LEN] = "", owner[128], veto[128];
	struct etcd_kvs kvs;
	bool ok;

	key(owner, sizeof(owner), "vm/owner");
	key(veto, sizeof(veto), "vm/veto/1");

	/* Create only if absent (VERSION == 0): once yes, then no. */
	struct etcd_cmp absent = { .key = owner, .target = ETCD_VERSION, .result = ETCD_EQ, .num = 0 };
	struct etcd_op create = { .type = ETCD_OP_PUT, .key = owner, .value = "A 1" };
	T_OK(etcd_txn(e, &absent, 1, &create, 1, &ok, err, sizeof(err)));
	T_CHECK(ok, "create-if-absent failed on an absent key");
	T_OK(etcd_txn(e, &absent, 1, &create, 1, &ok, err, sizeof(err)));
	T_CHECK(!ok, "create-if-absent succeeded twice");

	/* COMMIT: owner == "A 1" and veto/1 absent -> owner := "B 2". */
	struct etcd_cmp commit[] = {
		{ .key = owner, .target = ETCD_VALUE, .result = ETCD_EQ, .value = "A 1" },
		{ .key = veto, .target = ETCD_VERSION, .result = ETCD_EQ, .num = 0 },
	};
	struct etcd_op to_b = { .type = ETCD_OP_PUT, .key = owner, .value = "B 2" };
	/* A veto first: the commit must fail and change nothing. */
	T_OK(etcd_put(e, veto, "B", 0, err, sizeof(err)));
	T_OK(etcd_txn(e, commit, 2, &to_b, 1, &ok, err, sizeof(err)));
	T_CHECK(!ok, "commit succeeded despite the veto");
	T_OK(etcd_get(e, owner, &kvs, err, sizeof(err)));
	T_CHECK(kvs.n == 1 && !strcmp(kvs.kv[0].value, "A 1"), "owner changed by a failed txn");
	etcd_kvs_free(&kvs);
	/* Without the veto it succeeds, once. */
	struct etcd_op del_veto = { .type = ETCD_OP_DELETE, .key = veto };
	struct etcd_cmp veto_there = { .key = veto, .target = ETCD_VERSION, .result = ETCD_GT,
				       .num = 0 };
	T_OK(etcd_txn(e, &veto_there, 1, &del_veto, 1, &ok, err, sizeof(err)));
	T_CHECK(ok, "deleting the veto in a txn failed");
	T_OK(etcd_txn(e, commit, 2, &to_b, 1, &ok, err, sizeof(err)));
	T_CHECK(ok, "commit failed: owner \"A 1\", no veto");
	T_OK(etcd_txn(e, commit, 2, &to_b, 1, &ok, err, sizeof(err)));
	T_CHECK(!ok, "commit succeeded twice");
	T_OK(etcd_get(e, owner, &kvs, err, sizeof(err)));
	T_CHECK(kvs.n == 1 && !strcmp(kvs.kv[0].value, "B 2"), "owner is not \"B 2\"");
	int64_t mod = kvs.kv[0].mod_rev, create_rev = kvs.kv[0].create_rev;
	etcd_kvs_free(&kvs);

	/* MOD and CREATE revisions, NOT_EQUAL and LESS; two ops in one txn. */
	struct etcd_cmp revs[] = {
		{ .key = owner, .target = ETCD_MOD, .result = ETCD_EQ, .num = mod },
		{ .key = owner, .target = ETCD_CREATE, .result = ETCD_LT, .num = mod + 1 },
		{ .key = owner, .target = ETCD_VALUE, .result = ETCD_NE, .value = "A 1" },
	};
	struct etcd_op two[] = {
		{ .type = ETCD_OP_PUT, .key = owner, .value = "C 3" },
		{ .type = ETCD_OP_PUT, .key = veto, .value = "C" },
	};
	T_CHECK(create_rev <= mod, "create %" PRId64 " > mod %" PRId64, create_rev, mod);
	T_OK(etcd_txn(e, revs, 3, two, 2, &ok, err, sizeof(err)));
	T_CHECK(ok, "revision comparisons failed");
	T_OK(etcd_txn(e, revs, 1, two, 2, &ok, err, sizeof(err)));
	T_CHECK(!ok, "mod_revision compare held after a change");
	T_OK(etcd_get_prefix(e, pfx, &kvs, err, sizeof(err)));
	T_CHECK(kvs.n == 2, "n=%zu after a two-op txn", kvs.n);
	etcd_kvs_free(&kvs);
	/* No comparison: always applies; a bad op is refused before sending. */
	T_OK(etcd_txn(e, NULL, 0, &del_veto, 1, &ok, err, sizeof(err)));
	T_CHECK(ok, "an unconditional txn failed");
	struct etcd_op bad = { .type = ETCD_OP_PUT, .key = owner, .value = NULL };
	T_CHECK(etcd_txn(e, NULL, 0, &bad, 1, &ok, err, sizeof(err)) == -EINVAL && !ok,
		"a put without a value was accepted");
	T_OK(etcd_delete(e, pfx, true, NULL, err, sizeof(err)));
}

static void test_lease(struct etcd *e)
{
	char err[ERR_LEN] = "", k[128];
	struct etcd_kvs kvs;
	int64_t id;
	int ttl;

	key(k, sizeof(k), "host");
	T_OK(etcd_lease_grant(e, 30, &id, err, sizeof(err)));
	T_CHECK(id > 0, "lease id %" PRId64, id);
	T_OK(etcd_put(e, k, "alive", id, err, sizeof(err)));
	T_OK(etcd_get(e, k, &kvs, err, sizeof(err)));
	T_CHECK(kvs.n == 1 && kvs.kv[0].lease == id, "the key is not under the lease");
	etcd_kvs_free(&kvs);
	T_OK(etcd_lease_keepalive(e, id, &ttl, err, sizeof(err)));
	T_CHECK(ttl > 0 && ttl <= 30, "ttl %d", ttl);
	T_OK(etcd_lease_revoke(e, id, err, sizeof(err)));
	T_OK(etcd_get(e, k, &kvs, err, sizeof(err)));
	T_CHECK(kvs.n == 0, "the key outlived its revoked lease");
	etcd_kvs_free(&kvs);
	int r = etcd_lease_keepalive(e, id, &ttl, err, sizeof(err));
	T_CHECK(r == -ENOENT && ttl == 0, "keepalive of a revoked lease: %d ttl %d: %s", r, ttl, err);
	r = etcd_lease_revoke(e, id, err, sizeof(err));
	T_CHECK(r == -ENOENT, "revoke of a revoked lease: %d: %s", r, err);
	r = etcd_put(e, k, "x", id, err, sizeof(err));
	T_CHECK(r == -EIO && strstr(err, "lease not found"), "put under a revoked lease: %d: %s",
		r, err);

	/* A lease that expires by itself (TTL 1 s; etcd's minimum may round it up). */
	T_OK(etcd_lease_grant(e, 1, &id, err, sizeof(err)));
	T_OK(etcd_put(e, k, "short", id, err, sizeof(err)));
	double t0 = now_s();
	do {
		usleep(200 * 1000);
		T_OK(etcd_get(e, k, &kvs, err, sizeof(err)));
		int n = (int)kvs.n;
		etcd_kvs_free(&kvs);
		if (!n)
			break;
	} while (now_s() - t0 < 15);
	T_CHECK(now_s() - t0 < 15, "a key under a 1 s lease still there after 15 s");
	r = etcd_lease_keepalive(e, id, &ttl, err, sizeof(err));
	T_CHECK(r == -ENOENT, "keepalive of an expired lease: %d: %s", r, err);
}

struct thr_arg {
	struct etcd *e;
	int which, n, fails;
	char err[ERR_LEN];
};

static void *thr_put(void *opaque)
{
	struct thr_arg *a = opaque;
	char k[128], v[32];

	for (int i = 0; i < a->n; i++) {
		snprintf(k, sizeof(k), "%sthr/%d/%03d", pfx, a->which, i);
		snprintf(v, sizeof(v), "%d", i);
		if (etcd_put(a->e, k, v, 0, a->err, sizeof(a->err)))
			a->fails++;
	}
	return NULL;
}

/* Two threads share one client. */
static void test_threads(struct etcd *e)
{
	struct thr_arg a[2] = { { .e = e, .which = 0, .n = 50 }, { .e = e, .which = 1, .n = 50 } };
	pthread_t t[2];
	char err[ERR_LEN] = "";
	struct etcd_kvs kvs;

	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, thr_put, &a[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	T_CHECK(!a[0].fails && !a[1].fails, "%d and %d puts failed: %s %s", a[0].fails,
		a[1].fails, a[0].err, a[1].err);
	T_OK(etcd_get_prefix(e, pfx, &kvs, err, sizeof(err)));
	T_CHECK(kvs.n == 100, "n=%zu", kvs.n);
	etcd_kvs_free(&kvs);
	T_OK(etcd_delete(e, pfx, true, NULL, err, sizeof(err)));
}

/*
 * An endpoint that takes the connection and never answers (a socket that
 * listens and is never accepted: the kernel completes the handshake): a
 * write is not resent elsewhere and gives -ETIMEDOUT; a read goes on to
 * the live endpoint.
 */
static void test_timeout(const char *live)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);
	char err[ERR_LEN] = "", urls[512], k[128];
	struct etcd_kvs kvs;
	struct etcd *e;
	int s, r;
	double t0;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s = socket(AF_INET, SOCK_STREAM, 0);
	T_CHECK(s >= 0 && !bind(s, (struct sockaddr *)&sa, sizeof(sa)) && !listen(s, 16) &&
		!getsockname(s, (struct sockaddr *)&sa, &sl), "socket: %s", strerror(errno));
	snprintf(urls, sizeof(urls), "http://127.0.0.1:%u,%s", ntohs(sa.sin_port), live);
	T_OK(etcd_open(urls, NULL, 500, &e, err, sizeof(err)));
	key(k, sizeof(k), "timeout");
	t0 = now_s();
	r = etcd_put(e, k, "x", 0, err, sizeof(err));
	double dt = now_s() - t0;
	if (r != -ETIMEDOUT || dt > 2) {
		etcd_close(e);
		close(s);
		T_CHECK(0, "put to a silent endpoint: %d after %.2f s: %s", r, dt, err);
	}
	printf("# put to a silent endpoint: %s\n", err);
	r = etcd_get(e, k, &kvs, err, sizeof(err));
	etcd_kvs_free(&kvs);
	T_CHECK(!r && !strcmp(etcd_endpoint(e), live), "get: %d via %s: %s", r, etcd_endpoint(e),
		err);
	etcd_close(e);
	close(s);
}

static void run_basic(const char *url)
{
	char err[ERR_LEN] = "";
	struct etcd *e;

	t_begin("open");
	if (etcd_open(url, NULL, 0, &e, err, sizeof(err))) {
		t_fail("etcd_open(%s): %s", url, err);
		return;
	}
	t_end();
	t_begin("kv");
	test_kv(e);
	t_end();
	t_begin("txn");
	test_txn(e);
	t_end();
	t_begin("lease");
	test_lease(e);
	t_end();
	t_begin("threads");
	test_threads(e);
	t_end();
	t_begin("timeout");
	test_timeout(url);
	t_end();
	/* Bad URLs are refused at open. */
	t_begin("bad-urls");
	{
		static const char *const bad[] = { "", "127.0.0.1:2379", "http://", "ftp://x:1",
						   "http://a b:1", "http://x:1,,http://y:1" };
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			struct etcd *b = NULL;
			if (etcd_open(bad[i], NULL, 0, &b, err, sizeof(err)) != -EINVAL || b) {
				t_fail("etcd_open(\"%s\") accepted", bad[i]);
				etcd_close(b);
				break;
			}
		}
	}
	t_end();
	etcd_close(e);
}

static void run_failover(const char *dead, const char *live)
{
	char err[ERR_LEN] = "", urls[512], k[128];
	struct etcd_kvs kvs;
	struct etcd *e;

	t_begin("failover");
	snprintf(urls, sizeof(urls), "%s,%s", dead, live);
	if (etcd_open(urls, NULL, 0, &e, err, sizeof(err))) {
		t_fail("etcd_open(%s): %s", urls, err);
		return;
	}
	key(k, sizeof(k), "failover");
	if (etcd_put(e, k, "v", 0, err, sizeof(err)) || etcd_get(e, k, &kvs, err, sizeof(err))) {
		t_fail("with %s dead: %s", dead, err);
	} else {
		if (kvs.n != 1 || strcmp(kvs.kv[0].value, "v"))
			t_fail("read back %zu keys", kvs.n);
		else if (strcmp(etcd_endpoint(e), live))
			t_fail("the endpoint is %s, expected %s", etcd_endpoint(e), live);
		etcd_kvs_free(&kvs);
		if (etcd_delete(e, k, false, NULL, err, sizeof(err)))
			t_fail("delete: %s", err);
	}
	t_end();
	etcd_close(e);
}

static void run_dead(const char *urls)
{
	char err[ERR_LEN] = "";
	struct etcd_kvs kvs;
	struct etcd *e;
	bool ok;
	int r;

	t_begin("all-dead");
	if (etcd_open(urls, NULL, 0, &e, err, sizeof(err))) {
		t_fail("etcd_open(%s): %s", urls, err);
		return;
	}
	double t0 = now_s();
	r = etcd_get(e, "/k", &kvs, err, sizeof(err));
	if (r != -ECONNREFUSED)
		t_fail("get: %d: %s", r, err);
	else if (!strstr(err, "127.0.0.1"))
		t_fail("the message names no endpoint: %s", err);
	printf("# %s\n", err);
	struct etcd_op op = { .type = ETCD_OP_PUT, .key = "/k", .value = "v" };
	r = etcd_txn(e, NULL, 0, &op, 1, &ok, err, sizeof(err));
	if (r != -ECONNREFUSED || ok)
		t_fail("txn: %d: %s", r, err);
	int64_t id;
	r = etcd_lease_grant(e, 10, &id, err, sizeof(err));
	if (r != -ECONNREFUSED)
		t_fail("lease grant: %d: %s", r, err);
	double dt = now_s() - t0;
	if (dt > 1.0)
		t_fail("took %.2f s to find every endpoint dead", dt);
	t_end();
	etcd_close(e);
}

/* https with client certificates: works with tls_dir, refused (never sent) without. */
static void run_tls(const char *url, const char *dir)
{
	char err[ERR_LEN] = "", k[128];
	struct etcd_kvs kvs;
	struct etcd *e;
	int r;

	t_begin("tls");
	if (etcd_open(url, dir, 0, &e, err, sizeof(err))) {
		t_fail("etcd_open(%s, %s): %s", url, dir, err);
		return;
	}
	key(k, sizeof(k), "tls");
	if (etcd_put(e, k, "secret", 0, err, sizeof(err)) || etcd_get(e, k, &kvs, err, sizeof(err))) {
		t_fail("over TLS: %s", err);
	} else {
		if (kvs.n != 1 || strcmp(kvs.kv[0].value, "secret"))
			t_fail("read back %zu keys", kvs.n);
		etcd_kvs_free(&kvs);
	}
	etcd_close(e);
	t_end();

	t_begin("tls-untrusted");
	if (etcd_open(url, NULL, 0, &e, err, sizeof(err))) {
		t_fail("etcd_open(%s): %s", url, err);
		return;
	}
	/* The system's CAs do not know the test CA: the request is never sent. */
	r = etcd_put(e, k, "x", 0, err, sizeof(err));
	if (r != -ECONNREFUSED)
		t_fail("put without the test CA: %d: %s", r, err);
	printf("# without the CA: %s\n", err);
	etcd_close(e);
	t_end();
}

/*
 * Retry what an election refuses for a moment (a linearizable read waits for
 * a leader, a member answers "leader changed"), as the agents do; every
 * retry is printed and counted.
 */
static int retries;

static int put_retry(struct etcd *e, const char *k, const char *v, char *err, size_t len)
{
	double t0 = now_s();
	int r;

	while ((r = etcd_put(e, k, v, 0, err, len)) && now_s() - t0 < 10) {
		printf("# retry put after %d: %s\n", r, err);
		retries++;
		usleep(300 * 1000);
	}
	return r;
}

static int get_retry(struct etcd *e, const char *k, struct etcd_kvs *kvs, char *err, size_t len)
{
	double t0 = now_s();
	int r;

	while ((r = etcd_get(e, k, kvs, err, len)) && now_s() - t0 < 10) {
		printf("# retry get after %d: %s\n", r, err);
		retries++;
		usleep(300 * 1000);
	}
	return r;
}

static void run_cluster(const char *urls, pid_t victim)
{
	char err[ERR_LEN] = "", k[128], first[256];
	struct etcd_kvs kvs;
	struct etcd *e;
	bool ok;

	t_begin("cluster");
	if (etcd_open(urls, NULL, 0, &e, err, sizeof(err))) {
		t_fail("etcd_open(%s): %s", urls, err);
		return;
	}
	key(k, sizeof(k), "cluster");
	if (put_retry(e, k, "before", err, sizeof(err))) {
		t_fail("put with 3 members: %s", err);
		goto out;
	}
	snprintf(first, sizeof(first), "%s", etcd_endpoint(e));
	if (strncmp(urls, first, strlen(first))) {
		t_fail("used %s, not the first URL", first);
		goto out;
	}
	t_end();

	t_begin("cluster-member-lost");
	if (kill(victim, SIGKILL)) {
		t_fail("kill %d: %s", (int)victim, strerror(errno));
		goto out;
	}
	usleep(300 * 1000);          /* its sockets close as it exits */
	if (get_retry(e, k, &kvs, err, sizeof(err))) {
		t_fail("get after losing %s: %s", first, err);
		goto out;
	}
	if (kvs.n != 1 || strcmp(kvs.kv[0].value, "before"))
		t_fail("read back %zu keys", kvs.n);
	etcd_kvs_free(&kvs);
	if (!strcmp(etcd_endpoint(e), first))
		t_fail("still says it used %s", first);
	if (put_retry(e, k, "after", err, sizeof(err))) {
		t_fail("put after losing %s: %s", first, err);
		goto out;
	}
	struct etcd_cmp c = { .key = k, .target = ETCD_VALUE, .result = ETCD_EQ, .value = "after" };
	struct etcd_op op = { .type = ETCD_OP_DELETE, .key = k };
	if (etcd_txn(e, &c, 1, &op, 1, &ok, err, sizeof(err)) || !ok)
		t_fail("txn after losing %s: %s", first, ok ? "" : err);
	printf("# member at %s killed; now served by %s; %d retries\n", first, etcd_endpoint(e),
	       retries);
	t_end();
out:
	etcd_close(e);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (getenv("TIER"))
		tier = getenv("TIER");
	snprintf(pfx, sizeof(pfx), "/godwit-test/%d-%ld/", (int)getpid(), (long)time(NULL));
	if (argc == 3 && !strcmp(argv[1], "basic"))
		run_basic(argv[2]);
	else if (argc == 4 && !strcmp(argv[1], "failover"))
		run_failover(argv[2], argv[3]);
	else if (argc == 3 && !strcmp(argv[1], "dead"))
		run_dead(argv[2]);
	else if (argc == 4 && !strcmp(argv[1], "tls"))
		run_tls(argv[2], argv[3]);
	else if (argc == 4 && !strcmp(argv[1], "cluster"))
		run_cluster(argv[2], (pid_t)atoi(argv[3]));
	else {
		fprintf(stderr, "usage: etcd-test basic URL | failover DEAD LIVE | dead URLS | "
			"tls URL DIR | cluster URLS PID\n");
		return 2;
	}
	return failures ? 1 : 0;
}
