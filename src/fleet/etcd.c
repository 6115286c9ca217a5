/*
 * etcd.c - a small client of etcd's v3 API through its JSON gateway
 * (include/godwit/etcd.h): request bodies built with jansson, sent with one
 * libcurl easy handle per client, replies parsed and checked field by field.
 *
 * The gateway speaks protobuf's JSON mapping: bytes are base64 strings,
 * int64 numbers are decimal strings, and a field at its zero value is left
 * out (an empty value, a txn's "succeeded": false, a gone lease's TTL).
 * Nothing in a reply is trusted: its size is capped (ETCD_REPLY_MAX), every
 * field used is checked for its type, its base64 and its range, and a
 * value holding a NUL is refused (keys and values are C strings here).
 *
 * Endpoints: a request goes to the endpoint that answered last.  When it
 * cannot be sent there (no connection, no TLS session, a connect timeout)
 * the next is tried, so a request that was never sent is never reported as
 * anything but -ECONNREFUSED.  Once a request was sent, a failure (timeout,
 * connection lost) is ambiguous: a read goes on to the next endpoint, but a
 * write (put, delete, txn, lease grant/revoke) stops with -ETIMEDOUT and is
 * never sent again - resending a transaction that was in fact applied would
 * make it fail its comparison and tell the caller it lost when it won.
 * For the same reason a write that etcd answers with "request timed out"
 * or "leader changed" gives -ETIMEDOUT.  A read that a member refuses as
 * Unavailable (no leader, cut off from the others) goes on to the next.
 *
 * Locking: one mutex per client guards the easy handle and the current
 * endpoint for a whole request, so threads may share a client; requests
 * from several threads are serialized.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "godwit/common.h"
#include "godwit/etcd.h"

#define ETCD_URL_MAX        256      /* one endpoint's URL */
#define ETCD_CONNECT_MIN_MS 100

struct etcd {
	pthread_mutex_t lock;        /* the handle, cur and a request's buffers */
	CURL *h;
	char *urls[ETCD_URLS_MAX];   /* without a trailing '/' */
	size_t nurls;
	size_t cur;                  /* the endpoint that answered last */
	char *ca, *cert, *key;       /* https with a tls_dir; else NULL */
	int timeout_ms;
};

/* What a request is, for failover after it was sent. */
enum etcd_kind {
	ETCD_READ,       /* safe to send again elsewhere */
	ETCD_WRITE,      /* may have been applied: never sent twice */
	ETCD_LEASE_RD,   /* keepalive: read-like (sending twice is harmless); NotFound = -ENOENT */
	ETCD_LEASE_WR,   /* grant/revoke: write-like; NotFound = -ENOENT */
};

/* A reply being received. */
struct etcd_buf {
	char *data;
	size_t len, cap;     /* cap: allocated, for the NUL too */
	bool overflow;       /* larger than ETCD_REPLY_MAX */
	bool nomem;
};

/* For godwitd's GET /metrics: every request of this process, and those that failed. */
static _Atomic uint64_t etcd_nr_requests, etcd_nr_errors;

void etcd_counters(uint64_t *requests, uint64_t *errors)
{
	*requests = STAT_GET(etcd_nr_requests);
	*errors = STAT_GET(etcd_nr_errors);
}

static pthread_once_t etcd_curl_once = PTHREAD_ONCE_INIT;
static CURLcode etcd_curl_init_rc;

static void etcd_curl_init(void)
{
	etcd_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void etcd_seterr(char *err, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void etcd_seterr(char *err, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (!err || !len)
		return;
	va_start(ap, fmt);
	vsnprintf(err, len, fmt, ap);
	va_end(ap);
}

/* ------------------------------------------------------------------ */
/* Base64 (RFC 4648, with padding), strict both ways.                 */

static const char etcd_b64_chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* A NUL-terminated base64 encoding of n bytes, or NULL (out of memory). */
static char *etcd_b64_encode(const unsigned char *s, size_t n)
{
	char *out, *p;
	size_t i;

	if (n > (SIZE_MAX - 1) / 4 * 3 - 3)
		return NULL;
	out = malloc((n + 2) / 3 * 4 + 1);
	if (!out)
		return NULL;
	p = out;
	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];

		*p++ = etcd_b64_chars[v >> 18 & 63];
		*p++ = etcd_b64_chars[v >> 12 & 63];
		*p++ = etcd_b64_chars[v >> 6 & 63];
		*p++ = etcd_b64_chars[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);

		*p++ = etcd_b64_chars[v >> 18 & 63];
		*p++ = etcd_b64_chars[v >> 12 & 63];
		*p++ = i + 1 < n ? etcd_b64_chars[v >> 6 & 63] : '=';
		*p++ = '=';
	}
	*p = '\0';
	return out;
}

static int etcd_b64_val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/*
 * etcd_b64_decode - s (n characters) decoded into a new NUL-terminated
 * string in *out.  0, -EBADMSG (not canonical base64: a length not a
 * multiple of 4, a foreign character, misplaced padding, non-zero unused
 * bits, or a decoded NUL byte) or -ENOMEM.
 */
static int etcd_b64_decode(const char *s, size_t n, char **out)
{
	size_t i, pad = 0, o = 0;
	unsigned char *d;

	*out = NULL;
	if (n % 4)
		return -EBADMSG;
	if (n >= 1 && s[n - 1] == '=')
		pad++;
	if (pad && n >= 2 && s[n - 2] == '=')
		pad++;
	d = malloc(n / 4 * 3 + 1);
	if (!d)
		return -ENOMEM;
	for (i = 0; i < n; i += 4) {
		int v[4];
		uint32_t w;

		for (int k = 0; k < 4; k++) {
			bool padded = i + 4 == n && k >= 4 - (int)pad;

			v[k] = padded ? 0 : etcd_b64_val((unsigned char)s[i + k]);
			if (v[k] < 0)
				goto bad;
		}
		w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
		d[o++] = (unsigned char)(w >> 16);
		if (i + 4 < n || pad < 2)
			d[o++] = (unsigned char)(w >> 8);
		else if (w & 0xffff)
			goto bad;            /* bits set that no byte uses */
		if (i + 4 < n || pad < 1)
			d[o++] = (unsigned char)w;
		else if (w & 0xff)
			goto bad;
	}
	if (memchr(d, '\0', o))
		goto bad;
	d[o] = '\0';
	*out = (char *)d;
	return 0;
bad:
	free(d);
	return -EBADMSG;
}

/* ------------------------------------------------------------------ */
/* Reply parsing.                                                     */

/*
 * etcd_get_i64 - the int64 field name of obj (a decimal string, as the
 * gateway sends them) in *v; an absent field (or JSON null) is 0.
 * 0 or -EBADMSG.
 */
static int etcd_get_i64(const json_t *obj, const char *name, int64_t *v, char *err, size_t len)
{
	const json_t *j = json_object_get(obj, name);
	const char *s, *p;
	bool neg = false;
	uint64_t acc = 0, lim;

	*v = 0;
	if (!j || json_is_null(j))
		return 0;
	if (!json_is_string(j)) {
		etcd_seterr(err, len, "etcd reply: \"%s\" is not a string", name);
		return -EBADMSG;
	}
	s = json_string_value(j);
	if (json_string_length(j) != strlen(s))
		goto bad;
	p = s;
	if (*p == '-') {
		neg = true;
		p++;
	}
	if (!*p || strlen(p) > 19)
		goto bad;
	lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (; *p; p++) {
		if (*p < '0' || *p > '9')
			goto bad;
		if (acc > (lim - (uint64_t)(*p - '0')) / 10)
			goto bad;
		acc = acc * 10 + (uint64_t)(*p - '0');
	}
	*v = neg ? (acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc) : (int64_t)acc;
	return 0;
bad:
	etcd_seterr(err, len, "etcd reply: \"%s\" is not an int64: \"%.40s\"", name, s);
	return -EBADMSG;
}

/*
 * etcd_get_bytes - the base64 field name of obj, decoded, in *out (a new
 * string; "" when absent, as the gateway leaves empty bytes out, unless
 * required).  0, -EBADMSG or -ENOMEM.
 */
static int etcd_get_bytes(const json_t *obj, const char *name, bool required, char **out,
			  char *err, size_t len)
{
	const json_t *j = json_object_get(obj, name);
	int ret;

	*out = NULL;
	if (!j || json_is_null(j)) {
		if (required) {
			etcd_seterr(err, len, "etcd reply: no \"%s\"", name);
			return -EBADMSG;
		}
		*out = strdup("");
		return *out ? 0 : -ENOMEM;
	}
	if (!json_is_string(j)) {
		etcd_seterr(err, len, "etcd reply: \"%s\" is not a string", name);
		return -EBADMSG;
	}
	ret = etcd_b64_decode(json_string_value(j), json_string_length(j), out);
	if (ret == -EBADMSG)
		etcd_seterr(err, len, "etcd reply: \"%s\" is not base64 of a string without NUL", name);
	else if (ret)
		etcd_seterr(err, len, "etcd reply: out of memory");
	return ret;
}

/* The reply as a JSON object, or NULL with err set. */
static json_t *etcd_load(const char *json, size_t n, char *err, size_t len)
{
	json_error_t je;
	json_t *j;

	if (!json) {
		etcd_seterr(err, len, "etcd reply: empty");
		return NULL;
	}
	if (n > ETCD_REPLY_MAX) {
		etcd_seterr(err, len, "etcd reply: larger than %u bytes", ETCD_REPLY_MAX);
		return NULL;
	}
	j = json_loadb(json, n, JSON_REJECT_DUPLICATES, &je);
	if (!j) {
		etcd_seterr(err, len, "etcd reply: not JSON: %s", je.text);
		return NULL;
	}
	if (!json_is_object(j)) {
		etcd_seterr(err, len, "etcd reply: not a JSON object");
		json_decref(j);
		return NULL;
	}
	return j;
}

/* The header's "revision" (0 when absent); every reply of etcd's has a header. */
static int etcd_get_header_rev(const json_t *j, int64_t *rev, char *err, size_t len)
{
	const json_t *h = json_object_get(j, "header");

	*rev = 0;
	if (!json_is_object(h)) {
		etcd_seterr(err, len, "etcd reply: no \"header\" object");
		return -EBADMSG;
	}
	return etcd_get_i64(h, "revision", rev, err, len);
}

void etcd_kvs_free(struct etcd_kvs *kvs)
{
	if (!kvs)
		return;
	for (size_t i = 0; i < kvs->n; i++) {
		free(kvs->kv[i].key);
		free(kvs->kv[i].value);
	}
	free(kvs->kv);
	kvs->kv = NULL;
	kvs->n = 0;
	kvs->revision = 0;
}

/* One element of "kvs" into kv (its strings owned by kv even on failure). */
static int etcd_parse_kv(const json_t *o, struct etcd_kv *kv, char *err, size_t len)
{
	int ret;

	if (!json_is_object(o)) {
		etcd_seterr(err, len, "etcd reply: a \"kvs\" element is not an object");
		return -EBADMSG;
	}
	if ((ret = etcd_get_bytes(o, "key", true, &kv->key, err, len)) ||
	    (ret = etcd_get_bytes(o, "value", false, &kv->value, err, len)) ||
	    (ret = etcd_get_i64(o, "create_revision", &kv->create_rev, err, len)) ||
	    (ret = etcd_get_i64(o, "mod_revision", &kv->mod_rev, err, len)) ||
	    (ret = etcd_get_i64(o, "version", &kv->version, err, len)) ||
	    (ret = etcd_get_i64(o, "lease", &kv->lease, err, len)))
		return ret == -ENOMEM ? -ENOMEM : -EBADMSG;
	if (!kv->key[0] || kv->create_rev < 0 || kv->mod_rev < 0 || kv->version < 0 ||
	    kv->lease < 0) {
		etcd_seterr(err, len, "etcd reply: a key that is empty or has a negative revision");
		return -EBADMSG;
	}
	return 0;
}

/*
 * etcd_parse_range - a /v3/kv/range reply ({"header": {"revision"},
 * "kvs": [{"key", "value", "create_revision", "mod_revision", "version",
 * "lease"}], "count"}) into out, which the caller frees with
 * etcd_kvs_free() (also after a failure).  0, -EBADMSG or -ENOMEM.
 */
int etcd_parse_range(const char *json, size_t n, struct etcd_kvs *out, char *err, size_t len)
{
	const json_t *kvs;
	json_t *j;
	size_t cnt;
	int ret;

	memset(out, 0, sizeof(*out));
	j = etcd_load(json, n, err, len);
	if (!j)
		return -EBADMSG;
	ret = etcd_get_header_rev(j, &out->revision, err, len);
	if (ret)
		goto out;
	kvs = json_object_get(j, "kvs");
	if (!kvs || json_is_null(kvs))
		goto out;            /* no key matched */
	if (!json_is_array(kvs)) {
		etcd_seterr(err, len, "etcd reply: \"kvs\" is not an array");
		ret = -EBADMSG;
		goto out;
	}
	cnt = json_array_size(kvs);
	if (!cnt)
		goto out;
	out->kv = calloc(cnt, sizeof(*out->kv));
	if (!out->kv) {
		etcd_seterr(err, len, "etcd reply: out of memory");
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < cnt; i++) {
		out->n = i + 1;      /* so that etcd_kvs_free() frees what this one holds */
		ret = etcd_parse_kv(json_array_get(kvs, i), &out->kv[i], err, len);
		if (ret)
			goto out;
	}
out:
	json_decref(j);
	return ret;
}

/*
 * etcd_parse_txn - a /v3/kv/txn reply's "succeeded" (absent: false, as the
 * gateway leaves a false bool out).  0 or -EBADMSG.
 */
int etcd_parse_txn(const char *json, size_t n, bool *succeeded, char *err, size_t len)
{
	const json_t *s;
	int64_t rev;
	json_t *j;
	int ret;

	*succeeded = false;
	j = etcd_load(json, n, err, len);
	if (!j)
		return -EBADMSG;
	ret = etcd_get_header_rev(j, &rev, err, len);
	if (ret)
		goto out;
	s = json_object_get(j, "succeeded");
	if (s && !json_is_boolean(s)) {
		etcd_seterr(err, len, "etcd reply: \"succeeded\" is not a boolean");
		ret = -EBADMSG;
		goto out;
	}
	*succeeded = s && json_is_true(s);
out:
	json_decref(j);
	return ret;
}

/*
 * etcd_parse_lease - a /v3/lease/grant reply ({"ID", "TTL"}) or a
 * /v3/lease/keepalive one ({"result": {"ID", "TTL"}}): *id (required) and
 * *ttl (0 when absent or not positive: the lease is gone).
 * 0 or -EBADMSG.
 */
int etcd_parse_lease(const char *json, size_t n, int64_t *id, int *ttl, char *err, size_t len)
{
	const json_t *o;
	int64_t t;
	json_t *j;
	int ret;

	*id = 0;
	*ttl = 0;
	j = etcd_load(json, n, err, len);
	if (!j)
		return -EBADMSG;
	o = json_object_get(j, "result");
	if (!o)
		o = j;
	if (!json_is_object(o)) {
		etcd_seterr(err, len, "etcd reply: \"result\" is not an object");
		ret = -EBADMSG;
		goto out;
	}
	if (!json_object_get(o, "ID")) {
		etcd_seterr(err, len, "etcd reply: no lease \"ID\"");
		ret = -EBADMSG;
		goto out;
	}
	ret = etcd_get_i64(o, "ID", id, err, len);
	if (!ret)
		ret = etcd_get_i64(o, "TTL", &t, err, len);
	if (ret)
		goto out;
	if (*id <= 0) {
		etcd_seterr(err, len, "etcd reply: lease ID %" PRId64 " is not positive", *id);
		ret = -EBADMSG;
		goto out;
	}
	if (t > INT_MAX) {
		etcd_seterr(err, len, "etcd reply: lease TTL %" PRId64 " is too large", t);
		ret = -EBADMSG;
		goto out;
	}
	*ttl = t > 0 ? (int)t : 0;
out:
	if (ret)
		*id = 0;
	json_decref(j);
	return ret;
}

/*
 * etcd_reply_error - if the reply is etcd's error object ({"error": "...",
 * "code": N}, or in a stream {"error": {"grpc_code": N, "message": "..."}})
 * its message in msg and its gRPC code in *code; else false.
 */
static bool etcd_reply_error(const char *body, size_t n, char *msg, size_t mlen, int64_t *code)
{
	const json_t *e, *c, *m;
	json_t *j;
	bool is_err = false;

	*code = 0;
	if (!body || n > ETCD_REPLY_MAX)
		return false;
	j = json_loadb(body, n, 0, NULL);
	if (!json_is_object(j))
		goto out;
	e = json_object_get(j, "error");
	if (!e)
		goto out;
	is_err = true;
	c = json_object_get(j, "code");
	m = e;
	if (json_is_object(e)) {
		c = json_object_get(e, "grpc_code");
		if (!c)
			c = json_object_get(e, "code");
		m = json_object_get(e, "message");
	}
	if (json_is_integer(c))
		*code = json_integer_value(c);
	snprintf(msg, mlen, "%.200s", json_is_string(m) ? json_string_value(m) : "(no message)");
out:
	json_decref(j);
	return is_err;
}

/* ------------------------------------------------------------------ */
/* The client.                                                        */

static char *etcd_path_join(const char *dir, const char *name)
{
	char *p;

	if (asprintf(&p, "%s/%s", dir, name) < 0)
		return NULL;
	return p;
}

int etcd_open(const char *urls, const char *tls_dir, int timeout_ms, struct etcd **out,
	      char *err, size_t len)
{
	struct etcd *e;
	bool https = false;
	const char *p;
	int ret = -EINVAL;

	*out = NULL;
	if (!urls || !*urls) {
		etcd_seterr(err, len, "etcd: no endpoint URL");
		return -EINVAL;
	}
	pthread_once(&etcd_curl_once, etcd_curl_init);
	if (etcd_curl_init_rc) {
		etcd_seterr(err, len, "etcd: cannot initialise libcurl");
		return -ENOMEM;
	}
	e = calloc(1, sizeof(*e));
	if (!e) {
		etcd_seterr(err, len, "etcd: out of memory");
		return -ENOMEM;
	}
	pthread_mutex_init(&e->lock, NULL);
	e->timeout_ms = timeout_ms > 0 ? timeout_ms : ETCD_TIMEOUT_MS;

	/* The comma-separated URLs: http:// or https://, a host, no trailing '/'. */
	for (p = urls;;) {
		size_t n = strcspn(p, ",");
		char *u;

		if (e->nurls == ETCD_URLS_MAX) {
			etcd_seterr(err, len, "etcd: more than %d endpoint URLs", ETCD_URLS_MAX);
			goto fail;
		}
		while (n && p[n - 1] == '/')
			n--;
		if (n >= ETCD_URL_MAX || !(
		    (n > 7 && !strncmp(p, "http://", 7)) ||
		    (n > 8 && !strncmp(p, "https://", 8)))) {
			etcd_seterr(err, len, "etcd: bad endpoint URL \"%.*s\" (want http://HOST:PORT "
				    "or https://HOST:PORT)", (int)(n > 80 ? 80 : n), p);
			goto fail;
		}
		for (size_t i = 0; i < n; i++) {
			if ((unsigned char)p[i] <= ' ' || p[i] == 0x7f || p[i] == '?' || p[i] == '#') {
				etcd_seterr(err, len, "etcd: bad character in endpoint URL \"%.*s\"",
					    (int)(n > 80 ? 80 : n), p);
				goto fail;
			}
		}
		u = strndup(p, n);
		if (!u)
			goto nomem;
		e->urls[e->nurls++] = u;
		https |= !strncmp(u, "https://", 8);
		p += strcspn(p, ",");
		if (!*p)
			break;
		p++;
	}
	if (https && tls_dir) {
		e->ca = etcd_path_join(tls_dir, "ca.pem");
		e->cert = etcd_path_join(tls_dir, "cert.pem");
		e->key = etcd_path_join(tls_dir, "key.pem");
		if (!e->ca || !e->cert || !e->key)
			goto nomem;
		for (char **f = (char *[]){ e->ca, e->cert, e->key, NULL }; *f; f++) {
			if (access(*f, R_OK)) {
				ret = -errno;
				etcd_seterr(err, len, "etcd: cannot read %s: %s", *f, strerror(errno));
				goto fail;
			}
		}
	}
	e->h = curl_easy_init();
	if (!e->h)
		goto nomem;
	*out = e;
	return 0;
nomem:
	ret = -ENOMEM;
	etcd_seterr(err, len, "etcd: out of memory");
fail:
	etcd_close(e);
	return ret;
}

void etcd_close(struct etcd *e)
{
	if (!e)
		return;
	if (e->h)
		curl_easy_cleanup(e->h);
	for (size_t i = 0; i < e->nurls; i++)
		free(e->urls[i]);
	free(e->ca);
	free(e->cert);
	free(e->key);
	pthread_mutex_destroy(&e->lock);
	free(e);
}

const char *etcd_endpoint(const struct etcd *e)
{
	/* cur changes under the lock; an index read is atomic, the URLs never change. */
	return e->urls[__atomic_load_n(&e->cur, __ATOMIC_RELAXED)];
}

static size_t etcd_write_cb(char *ptr, size_t size, size_t nmemb, void *opaque)
{
	struct etcd_buf *b = opaque;
	size_t n = size * nmemb;
	char *nd;

	if (n > ETCD_REPLY_MAX || b->len + n > ETCD_REPLY_MAX) {
		b->overflow = true;
		return 0;
	}
	if (b->len + n + 1 > b->cap) {
		/* Doubling: a large reply is not copied once per chunk. */
		size_t cap = b->cap ? b->cap : 4096;

		while (cap < b->len + n + 1)
			cap *= 2;
		nd = realloc(b->data, cap);
		if (!nd) {
			b->nomem = true;
			return 0;
		}
		b->data = nd;
		b->cap = cap;
	}
	memcpy(b->data + b->len, ptr, n);
	b->len += n;
	b->data[b->len] = '\0';
	return n;
}

/* Append ": what" to the list of endpoint failures in err. */
static void etcd_err_add(char *err, size_t len, const char *url, const char *what)
{
	size_t used;

	if (!err || !len)
		return;
	used = strnlen(err, len);
	if (used + 1 >= len)
		return;
	snprintf(err + used, len - used, "%s%s: %s", used ? "; " : "", url, what);
}

/*
 * etcd_call - POST body (JSON text) to path at the endpoints, as etcd.h
 * and the header of this file say.  On 0, *reply (NUL-terminated, *rlen
 * bytes, the caller frees it) is etcd's 200 answer that is not an error
 * object.  Otherwise -ECONNREFUSED, -ETIMEDOUT, -EIO (etcd's error, or an
 * HTTP status), -ENOENT (lease calls: no such lease), -EBADMSG (a reply
 * too large) or -ENOMEM, with err naming the endpoint.
 */
static int etcd_call(struct etcd *e, enum etcd_kind kind, const char *path, const char *body,
		     char **reply, size_t *rlen, char *err, size_t len)
{
	bool write = kind == ETCD_WRITE || kind == ETCD_LEASE_WR;
	bool lease = kind == ETCD_LEASE_RD || kind == ETCD_LEASE_WR;
	struct curl_slist *hdr;
	char fails[512] = "";
	int ret = -ECONNREFUSED;
	bool timedout = false, unavail = false;
	size_t start;

	*reply = NULL;
	*rlen = 0;
	hdr = curl_slist_append(NULL, "Content-Type: application/json");
	if (!hdr) {
		etcd_seterr(err, len, "etcd: out of memory");
		return -ENOMEM;
	}
	pthread_mutex_lock(&e->lock);
	start = e->cur;
	for (size_t t = 0; t < e->nurls; t++) {
		size_t idx = (start + t) % e->nurls;
		const char *base = e->urls[idx];
		char errbuf[CURL_ERROR_SIZE] = "", url[ETCD_URL_MAX + 64], msg[256];
		struct etcd_buf b = { 0 };
		curl_off_t pretransfer = 0;
		long status = 0, connect_ms;
		int64_t code;
		CURLcode rc;

		snprintf(url, sizeof(url), "%s%s", base, path);
		connect_ms = e->timeout_ms / 2 > ETCD_CONNECT_MIN_MS ? e->timeout_ms / 2
								 : ETCD_CONNECT_MIN_MS;
		curl_easy_reset(e->h);
		curl_easy_setopt(e->h, CURLOPT_URL, url);
		curl_easy_setopt(e->h, CURLOPT_PROTOCOLS_STR, "http,https");
		curl_easy_setopt(e->h, CURLOPT_POST, 1L);
		curl_easy_setopt(e->h, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(e->h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
		curl_easy_setopt(e->h, CURLOPT_HTTPHEADER, hdr);
		curl_easy_setopt(e->h, CURLOPT_TIMEOUT_MS, (long)e->timeout_ms);
		curl_easy_setopt(e->h, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
		curl_easy_setopt(e->h, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(e->h, CURLOPT_NOPROXY, "*");
		curl_easy_setopt(e->h, CURLOPT_ERRORBUFFER, errbuf);
		curl_easy_setopt(e->h, CURLOPT_WRITEFUNCTION, etcd_write_cb);
		curl_easy_setopt(e->h, CURLOPT_WRITEDATA, &b);
		if (e->ca) {
			curl_easy_setopt(e->h, CURLOPT_CAINFO, e->ca);
			curl_easy_setopt(e->h, CURLOPT_SSLCERT, e->cert);
			curl_easy_setopt(e->h, CURLOPT_SSLKEY, e->key);
		}
		rc = curl_easy_perform(e->h);
		curl_easy_getinfo(e->h, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
		if (rc == CURLE_WRITE_ERROR && b.overflow) {
			free(b.data);
			etcd_seterr(err, len, "etcd %s: reply larger than %u bytes", base,
				    ETCD_REPLY_MAX);
			ret = -EBADMSG;
			goto out;
		}
		if (rc == CURLE_WRITE_ERROR && b.nomem) {
			free(b.data);
			etcd_seterr(err, len, "etcd %s: out of memory for the reply", base);
			ret = -ENOMEM;
			goto out;
		}
		if (rc != CURLE_OK) {
			const char *why = errbuf[0] ? errbuf : curl_easy_strerror(rc);

			free(b.data);
			if (pretransfer == 0 || rc == CURLE_COULDNT_CONNECT ||
			    rc == CURLE_COULDNT_RESOLVE_HOST) {
				/* Never sent: try the next endpoint. */
				etcd_err_add(fails, sizeof(fails), base, why);
				continue;
			}
			/* Sent, and no answer: it may have been applied. */
			timedout = true;
			if (write) {
				etcd_seterr(err, len, "etcd %s: no answer (%s): the request may or may "
					    "not have been applied", base, why);
				ret = -ETIMEDOUT;
				goto out;
			}
			etcd_err_add(fails, sizeof(fails), base, why);
			continue;
		}
		/* An answer. */
		__atomic_store_n(&e->cur, idx, __ATOMIC_RELAXED);
		curl_easy_getinfo(e->h, CURLINFO_RESPONSE_CODE, &status);
		if (etcd_reply_error(b.data, b.len, msg, sizeof(msg), &code)) {
			free(b.data);
			/* gRPC Unavailable (14): no leader, a member cut off.  Reads try the
			 * next member. */
			if (code == 14 && !write) {
				unavail = true;
				etcd_err_add(fails, sizeof(fails), base, msg);
				continue;
			}
			/* A write etcd took but could not finish in time (its "request timed
			 * out" and "leader changed" errors) may still be applied. */
			if (write && (strstr(msg, "request timed out") ||
				      strstr(msg, "leader changed"))) {
				etcd_seterr(err, len, "etcd %s: %s: the request may or may not have "
					    "been applied", base, msg);
				ret = -ETIMEDOUT;
				goto out;
			}
			/* gRPC NotFound (5) from a lease call: no such lease. */
			ret = lease && code == 5 ? -ENOENT : -EIO;
			etcd_seterr(err, len, "etcd %s: %s", base, msg);
			goto out;
		}
		if (status != 200) {
			free(b.data);
			etcd_seterr(err, len, "etcd %s: HTTP status %ld for %s", base, status, path);
			ret = -EIO;
			goto out;
		}
		if (!b.data) {
			b.data = strdup("");
			if (!b.data) {
				etcd_seterr(err, len, "etcd: out of memory");
				ret = -ENOMEM;
				goto out;
			}
		}
		*reply = b.data;
		*rlen = b.len;
		ret = 0;
		goto out;
	}
	if (timedout || !unavail) {
		ret = timedout ? -ETIMEDOUT : -ECONNREFUSED;
		etcd_seterr(err, len, "etcd: no endpoint answered%s (%s)",
			    timedout ? " in time" : "", fails);
	} else {
		ret = -EIO;
		etcd_seterr(err, len, "etcd: no endpoint could serve the request (%s)", fails);
	}
out:
	pthread_mutex_unlock(&e->lock);
	curl_slist_free_all(hdr);
	STAT_ADD(etcd_nr_requests, 1);
	if (ret)
		STAT_ADD(etcd_nr_errors, 1);
	return ret;
}

/* Prefix the endpoint to a parser's message. */
static void etcd_err_endpoint(struct etcd *e, char *err, size_t len)
{
	char tmp[256];

	if (!err || !len)
		return;
	snprintf(tmp, sizeof(tmp), "%s", err);
	etcd_seterr(err, len, "%s: %s", etcd_endpoint(e), tmp);
}

/* ------------------------------------------------------------------ */
/* Requests.                                                          */

/* Set obj[name] to the base64 of s (n bytes); false when out of memory. */
static bool etcd_set_b64(json_t *obj, const char *name, const char *s, size_t n)
{
	char *b = etcd_b64_encode((const unsigned char *)s, n);
	bool ok;

	if (!b)
		return false;
	ok = !json_object_set_new(obj, name, json_string(b));
	free(b);
	return ok;
}

static bool etcd_set_i64(json_t *obj, const char *name, int64_t v)
{
	char num[24];

	snprintf(num, sizeof(num), "%" PRId64, v);
	return !json_object_set_new(obj, name, json_string(num));
}

/*
 * etcd_prefix_end - the range_end for every key starting with prefix (n
 * bytes, n >= 1): the prefix with its last byte below 0xff incremented and
 * what follows dropped; "\0" (every key from prefix on) when all are 0xff.
 */
static size_t etcd_prefix_end(const char *prefix, size_t n, char *end)
{
	memcpy(end, prefix, n);
	while (n) {
		if ((unsigned char)end[n - 1] != 0xff) {
			end[n - 1] = (char)((unsigned char)end[n - 1] + 1);
			return n;
		}
		n--;
	}
	end[0] = '\0';
	return 1;
}

/* A {"key", "range_end"} object for key (or, prefix, the keys under it); NULL when
 * out of memory. */
static json_t *etcd_range_obj(const char *key, bool prefix)
{
	size_t n = strlen(key);
	json_t *o = json_object();
	char *end;
	bool ok;

	if (!o)
		return NULL;
	if (!n) {
		/* Only an empty prefix gets here: every key ("\0" to "\0"). */
		ok = etcd_set_b64(o, "key", "", 1) && etcd_set_b64(o, "range_end", "", 1);
	} else if (prefix) {
		end = malloc(n);
		ok = end && etcd_set_b64(o, "key", key, n);
		if (ok)
			ok = etcd_set_b64(o, "range_end", end, etcd_prefix_end(key, n, end));
		free(end);
	} else {
		ok = etcd_set_b64(o, "key", key, n);
	}
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* Send obj (its reference taken) to path. */
static int etcd_send(struct etcd *e, enum etcd_kind kind, const char *path, json_t *obj,
		     char **reply, size_t *rlen, char *err, size_t len)
{
	char *body = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
	int ret;

	json_decref(obj);
	if (!body) {
		etcd_seterr(err, len, "etcd: out of memory");
		return -ENOMEM;
	}
	ret = etcd_call(e, kind, path, body, reply, rlen, err, len);
	free(body);
	return ret;
}

static bool etcd_key_ok(const char *key, char *err, size_t len)
{
	if (key && *key)
		return true;
	etcd_seterr(err, len, "etcd: empty key");
	return false;
}

static int etcd_range(struct etcd *e, const char *key, bool prefix, struct etcd_kvs *out,
		      char *err, size_t len)
{
	char *reply;
	size_t n;
	int ret;

	memset(out, 0, sizeof(*out));
	if (!key || (!prefix && !*key)) {
		etcd_seterr(err, len, "etcd: empty key");
		return -EINVAL;
	}
	ret = etcd_send(e, ETCD_READ, "/v3/kv/range", etcd_range_obj(key, prefix), &reply, &n,
			err, len);
	if (ret)
		return ret;
	ret = etcd_parse_range(reply, n, out, err, len);
	free(reply);
	if (ret) {
		etcd_kvs_free(out);
		etcd_err_endpoint(e, err, len);
	} else if (!prefix && out->n > 1) {
		etcd_kvs_free(out);
		etcd_seterr(err, len, "etcd %s: several keys for one", etcd_endpoint(e));
		ret = -EBADMSG;
	}
	return ret;
}

int etcd_get(struct etcd *e, const char *key, struct etcd_kvs *out, char *err, size_t len)
{
	return etcd_range(e, key, false, out, err, len);
}

int etcd_get_prefix(struct etcd *e, const char *prefix, struct etcd_kvs *out, char *err,
		    size_t len)
{
	return etcd_range(e, prefix, true, out, err, len);
}

/* A PutRequest {"key", "value", "lease"}. */
static json_t *etcd_put_obj(const char *key, const char *value, int64_t lease)
{
	json_t *o = json_object();

	if (!o || !etcd_set_b64(o, "key", key, strlen(key)) ||
	    !etcd_set_b64(o, "value", value, strlen(value)) ||
	    (lease && !etcd_set_i64(o, "lease", lease))) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* A reply that must be a JSON object with a header (put, delete, revoke). */
static int etcd_check_ack(struct etcd *e, const char *reply, size_t n, char *err, size_t len)
{
	int64_t rev;
	json_t *j = etcd_load(reply, n, err, len);
	int ret;

	if (!j) {
		etcd_err_endpoint(e, err, len);
		return -EBADMSG;
	}
	ret = etcd_get_header_rev(j, &rev, err, len);
	json_decref(j);
	if (ret)
		etcd_err_endpoint(e, err, len);
	return ret;
}

int etcd_put(struct etcd *e, const char *key, const char *value, int64_t lease, char *err,
	     size_t len)
{
	char *reply;
	size_t n;
	int ret;

	if (!etcd_key_ok(key, err, len))
		return -EINVAL;
	if (!value || lease < 0) {
		etcd_seterr(err, len, "etcd: put without a value or with a negative lease");
		return -EINVAL;
	}
	ret = etcd_send(e, ETCD_WRITE, "/v3/kv/put", etcd_put_obj(key, value, lease), &reply, &n,
			err, len);
	if (ret)
		return ret;
	ret = etcd_check_ack(e, reply, n, err, len);
	free(reply);
	return ret;
}

int etcd_delete(struct etcd *e, const char *key, bool prefix, int64_t *deleted, char *err,
		size_t len)
{
	int64_t d = 0;
	char *reply;
	json_t *j;
	size_t n;
	int ret;

	if (deleted)
		*deleted = 0;
	/* An empty prefix would be every key in etcd: refused like an empty key. */
	if (!key || !*key) {
		etcd_seterr(err, len, "etcd: empty key");
		return -EINVAL;
	}
	ret = etcd_send(e, ETCD_WRITE, "/v3/kv/deleterange", etcd_range_obj(key, prefix), &reply,
			&n, err, len);
	if (ret)
		return ret;
	j = etcd_load(reply, n, err, len);
	free(reply);
	if (!j) {
		etcd_err_endpoint(e, err, len);
		return -EBADMSG;
	}
	ret = etcd_get_i64(j, "deleted", &d, err, len);
	json_decref(j);
	if (!ret && d < 0) {
		etcd_seterr(err, len, "etcd reply: \"deleted\" is negative");
		ret = -EBADMSG;
	}
	if (ret) {
		etcd_err_endpoint(e, err, len);
		return ret;
	}
	if (deleted)
		*deleted = d;
	return 0;
}

/* One Compare object in *out: 0, -EINVAL (a bad comparison) or -ENOMEM; err set. */
static int etcd_cmp_obj(const struct etcd_cmp *c, json_t **out, char *err, size_t len)
{
	static const char *const targets[] = { "VALUE", "VERSION", "MOD", "CREATE" };
	static const char *const fields[] = { "value", "version", "mod_revision",
					      "create_revision" };
	static const char *const results[] = { "EQUAL", "NOT_EQUAL", "GREATER", "LESS" };
	json_t *o;
	bool ok;

	*out = NULL;
	if (!etcd_key_ok(c->key, err, len))
		return -EINVAL;
	if ((unsigned)c->target > ETCD_CREATE || (unsigned)c->result > ETCD_LT ||
	    (c->target == ETCD_VALUE && !c->value) || (c->target != ETCD_VALUE && c->num < 0)) {
		etcd_seterr(err, len, "etcd: bad comparison on %s", c->key);
		return -EINVAL;
	}
	o = json_object();
	ok = o && etcd_set_b64(o, "key", c->key, strlen(c->key)) &&
	     !json_object_set_new(o, "target", json_string(targets[c->target])) &&
	     !json_object_set_new(o, "result", json_string(results[c->result]));
	if (ok && c->target == ETCD_VALUE)
		ok = etcd_set_b64(o, fields[c->target], c->value, strlen(c->value));
	else if (ok)
		ok = etcd_set_i64(o, fields[c->target], c->num);
	if (!ok) {
		json_decref(o);
		etcd_seterr(err, len, "etcd: out of memory");
		return -ENOMEM;
	}
	*out = o;
	return 0;
}

/* One RequestOp in *out ({"requestPut": {...}} or {"requestDeleteRange": {...}}):
 * 0, -EINVAL or -ENOMEM; err set. */
static int etcd_op_obj(const struct etcd_op *op, json_t **out, char *err, size_t len)
{
	json_t *inner;

	*out = NULL;
	if (!etcd_key_ok(op->key, err, len))
		return -EINVAL;
	if (op->type == ETCD_OP_PUT) {
		if (!op->value || op->lease < 0) {
			etcd_seterr(err, len, "etcd: a put of %s without a value", op->key);
			return -EINVAL;
		}
		inner = etcd_put_obj(op->key, op->value, op->lease);
		*out = inner ? json_pack("{so}", "requestPut", inner) : NULL;
	} else if (op->type == ETCD_OP_DELETE) {
		inner = etcd_range_obj(op->key, false);
		*out = inner ? json_pack("{so}", "requestDeleteRange", inner) : NULL;
	} else {
		etcd_seterr(err, len, "etcd: bad operation on %s", op->key);
		return -EINVAL;
	}
	if (!*out) {
		etcd_seterr(err, len, "etcd: out of memory");
		return -ENOMEM;
	}
	return 0;
}

int etcd_txn(struct etcd *e, const struct etcd_cmp *cmp, size_t ncmp, const struct etcd_op *ops,
	     size_t nops, bool *succeeded, char *err, size_t len)
{
	json_t *req, *jc, *js, *o;
	char *reply;
	size_t n;
	int ret;

	*succeeded = false;
	if ((ncmp && !cmp) || (nops && !ops)) {
		etcd_seterr(err, len, "etcd: bad transaction");
		return -EINVAL;
	}
	/* req holds the two arrays (the "failure" branch is empty: nothing). */
	req = json_object();
	jc = json_array();
	js = json_array();
	if (!req || !jc || !js || json_object_set(req, "compare", jc) ||
	    json_object_set(req, "success", js) ||
	    json_object_set_new(req, "failure", json_array())) {
		etcd_seterr(err, len, "etcd: out of memory");
		ret = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < ncmp; i++) {
		ret = etcd_cmp_obj(&cmp[i], &o, err, len);
		if (!ret && json_array_append_new(jc, o)) {
			etcd_seterr(err, len, "etcd: out of memory");
			ret = -ENOMEM;
		}
		if (ret)
			goto fail;
	}
	for (size_t i = 0; i < nops; i++) {
		ret = etcd_op_obj(&ops[i], &o, err, len);
		if (!ret && json_array_append_new(js, o)) {
			etcd_seterr(err, len, "etcd: out of memory");
			ret = -ENOMEM;
		}
		if (ret)
			goto fail;
	}
	json_decref(jc);
	json_decref(js);
	ret = etcd_send(e, ETCD_WRITE, "/v3/kv/txn", req, &reply, &n, err, len);
	if (ret)
		return ret;
	ret = etcd_parse_txn(reply, n, succeeded, err, len);
	free(reply);
	if (ret)
		etcd_err_endpoint(e, err, len);
	return ret;
fail:
	json_decref(req);
	json_decref(jc);
	json_decref(js);
	return ret;
}

int etcd_lease_grant(struct etcd *e, int ttl_s, int64_t *id, char *err, size_t len)
{
	char *reply;
	int ttl;
	size_t n;
	int ret;

	*id = 0;
	if (ttl_s <= 0) {
		etcd_seterr(err, len, "etcd: lease TTL %d is not positive", ttl_s);
		return -EINVAL;
	}
	ret = etcd_send(e, ETCD_LEASE_WR, "/v3/lease/grant", json_pack("{si}", "TTL", ttl_s),
			&reply, &n, err, len);
	if (ret)
		return ret;
	ret = etcd_parse_lease(reply, n, id, &ttl, err, len);
	free(reply);
	if (!ret && ttl <= 0) {
		etcd_seterr(err, len, "etcd reply: a granted lease without a TTL");
		*id = 0;
		ret = -EBADMSG;
	}
	if (ret)
		etcd_err_endpoint(e, err, len);
	return ret;
}

int etcd_lease_keepalive(struct etcd *e, int64_t id, int *ttl_left, char *err, size_t len)
{
	json_t *req = json_object();
	int64_t got;
	char *reply;
	size_t n;
	int ret;

	*ttl_left = 0;
	if (id <= 0) {
		json_decref(req);
		etcd_seterr(err, len, "etcd: lease ID %" PRId64 " is not positive", id);
		return -EINVAL;
	}
	if (req && !etcd_set_i64(req, "ID", id)) {
		json_decref(req);
		req = NULL;
	}
	ret = etcd_send(e, ETCD_LEASE_RD, "/v3/lease/keepalive", req, &reply, &n, err, len);
	if (ret)
		return ret;
	ret = etcd_parse_lease(reply, n, &got, ttl_left, err, len);
	free(reply);
	if (!ret && got != id) {
		etcd_seterr(err, len, "etcd reply: keep-alive of lease %" PRId64 " answered for %"
			    PRId64, id, got);
		ret = -EBADMSG;
	}
	if (ret) {
		*ttl_left = 0;
		etcd_err_endpoint(e, err, len);
		return ret;
	}
	if (*ttl_left <= 0) {
		etcd_seterr(err, len, "etcd %s: lease %" PRId64 " is gone", etcd_endpoint(e), id);
		return -ENOENT;
	}
	return 0;
}

int etcd_lease_revoke(struct etcd *e, int64_t id, char *err, size_t len)
{
	json_t *req = json_object();
	char *reply;
	size_t n;
	int ret;

	if (id <= 0) {
		json_decref(req);
		etcd_seterr(err, len, "etcd: lease ID %" PRId64 " is not positive", id);
		return -EINVAL;
	}
	if (req && !etcd_set_i64(req, "ID", id)) {
		json_decref(req);
		req = NULL;
	}
	ret = etcd_send(e, ETCD_LEASE_WR, "/v3/lease/revoke", req, &reply, &n, err, len);
	if (ret)
		return ret;
	ret = etcd_check_ack(e, reply, n, err, len);
	free(reply);
	return ret;
}
