/*
 * etcd.h - a small client of etcd's v3 API through its JSON gateway
 * (POST /v3/kv/range, /v3/kv/put, /v3/kv/txn, /v3/kv/deleterange,
 * /v3/lease/grant, /v3/lease/keepalive, /v3/lease/revoke), over libcurl.
 * Keys and values are byte strings on the wire (base64 in the JSON); here
 * they are C strings (a value holding a NUL is refused as malformed).
 *
 * Several endpoints: a request goes to the one that last answered, and
 * on a connection failure to the next.  Reads are linearizable (etcd's
 * default).  Every function returns 0 or -errno with err set:
 *   -ECONNREFUSED  no endpoint could be reached: the request was not applied
 *   -ETIMEDOUT     an endpoint took it and did not answer in time: a write
 *                  may or may not have been applied (read it back)
 *   -EBADMSG       the answer was not what etcd sends
 *   -EIO           etcd answered with an error (its text in err)
 *   -ENOENT        (lease calls) no such lease, or it expired
 */
#ifndef GODWIT_ETCD_H
#define GODWIT_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ETCD_TIMEOUT_MS     2000    /* default per request */
#define ETCD_REPLY_MAX      (16u << 20)
#define ETCD_URLS_MAX       16

struct etcd;

/*
 * etcd_counters - this process's etcd requests so far (every client), and
 * those that failed: no endpoint answered, no answer in time, or etcd's
 * error (godwitd's GET /metrics).
 */
void etcd_counters(uint64_t *requests, uint64_t *errors);

struct etcd_kv {
	char *key;
	char *value;
	int64_t create_rev, mod_rev, version, lease;
};

struct etcd_kvs {
	struct etcd_kv *kv;
	size_t n;
	int64_t revision;        /* the store's revision when read */
};

/*
 * etcd_open - a client of the comma-separated http:// or https:// URLs
 * (e.g. "http://198.18.0.1:2379,http://198.18.0.2:2379").  With https,
 * tls_dir (may be NULL) holds ca.pem, cert.pem and key.pem as for the
 * migration channel.  Nothing is sent yet.
 */
int etcd_open(const char *urls, const char *tls_dir, int timeout_ms, struct etcd **out,
	      char *err, size_t len);
void etcd_close(struct etcd *e);
/* The endpoint that answered last (for messages). */
const char *etcd_endpoint(const struct etcd *e);

void etcd_kvs_free(struct etcd_kvs *kvs);

/* One key: out->n is 0 (absent) or 1. */
int etcd_get(struct etcd *e, const char *key, struct etcd_kvs *out, char *err, size_t len);
/* Every key that starts with prefix, in key order. */
int etcd_get_prefix(struct etcd *e, const char *prefix, struct etcd_kvs *out, char *err,
		    size_t len);
/* lease 0: none. */
int etcd_put(struct etcd *e, const char *key, const char *value, int64_t lease, char *err,
	     size_t len);
/* One key, or (prefix) every key under it.  *deleted may be NULL. */
int etcd_delete(struct etcd *e, const char *key, bool prefix, int64_t *deleted, char *err,
		size_t len);

enum etcd_target { ETCD_VALUE, ETCD_VERSION, ETCD_MOD, ETCD_CREATE };
enum etcd_result { ETCD_EQ, ETCD_NE, ETCD_GT, ETCD_LT };

/* A comparison: the key's value (ETCD_VALUE: against value) or a revision
 * number (against num; ETCD_VERSION 0 means "absent"). */
struct etcd_cmp {
	const char *key;
	enum etcd_target target;
	enum etcd_result result;
	const char *value;
	int64_t num;
};

enum etcd_op_type { ETCD_OP_PUT, ETCD_OP_DELETE };

struct etcd_op {
	enum etcd_op_type type;
	const char *key;
	const char *value;       /* put */
	int64_t lease;           /* put; 0: none */
};

/*
 * etcd_txn - if every comparison holds, apply ops (atomically), else
 * nothing.  0 with *succeeded, or -errno (-ETIMEDOUT: it may have been
 * applied; read the keys back).
 */
int etcd_txn(struct etcd *e, const struct etcd_cmp *cmp, size_t ncmp, const struct etcd_op *ops,
	     size_t nops, bool *succeeded, char *err, size_t len);

int etcd_lease_grant(struct etcd *e, int ttl_s, int64_t *id, char *err, size_t len);
/* One keep-alive: *ttl_left is what etcd now gives the lease; -ENOENT if it is gone. */
int etcd_lease_keepalive(struct etcd *e, int64_t id, int *ttl_left, char *err, size_t len);
int etcd_lease_revoke(struct etcd *e, int64_t id, char *err, size_t len);

/*
 * The parsers, for the fuzz target: a range reply into out, a txn reply's
 * "succeeded", a lease reply's ID and TTL.  0 or -EBADMSG (err set).
 */
int etcd_parse_range(const char *json, size_t n, struct etcd_kvs *out, char *err, size_t len);
int etcd_parse_txn(const char *json, size_t n, bool *succeeded, char *err, size_t len);
int etcd_parse_lease(const char *json, size_t n, int64_t *id, int *ttl, char *err, size_t len);

#endif
