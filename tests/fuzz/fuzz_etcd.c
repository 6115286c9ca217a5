/*
 * fuzz_etcd.c - libFuzzer target for the etcd client's reply parsers
 * (src/fleet/etcd.c: etcd_parse_range, etcd_parse_txn, etcd_parse_lease).
 * Whatever an endpoint sends, a parser returns 0 with checked fields, or
 * -EBADMSG with a message, and never reads or writes out of bounds or
 * leaks: on success every key is a non-empty C string, every value a C
 * string (no NUL inside: its length is what was decoded), every revision,
 * version and lease >= 0, a lease ID > 0 and a TTL >= 0.
 *
 * The first byte picks the parser (0 range, 1 txn, 2 lease); the rest is
 * the reply body as received (not NUL-terminated: the parsers take a length).
 *   make fuzz && build-fuzz/fuzz-etcd -max_total_time=60 tests/fuzz/corpus/etcd
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/etcd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A refusal says why, within err. */
static void check_refusal(int r, const char *err, size_t len)
{
	if (r != -EBADMSG && r != -ENOMEM)
		abort();
	if (!err[0] || strnlen(err, len) >= len)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct etcd_kvs kvs;
	char err[256], *body;
	bool ok;
	int64_t id;
	int ttl, r;

	if (size < 1)
		return 0;
	/* An exact-size copy, so that ASan sees any read past the end. */
	body = malloc(size - 1 ? size - 1 : 1);
	if (!body)
		return 0;
	memcpy(body, data + 1, size - 1);
	err[0] = '\0';
	switch (data[0] % 3) {
	case 0:
		r = etcd_parse_range(body, size - 1, &kvs, err, sizeof(err));
		if (r) {
			check_refusal(r, err, sizeof(err));
		} else {
			if (kvs.n && !kvs.kv)
				abort();
			for (size_t i = 0; i < kvs.n; i++) {
				const struct etcd_kv *kv = &kvs.kv[i];

				if (!kv->key || !kv->key[0] || !kv->value || kv->create_rev < 0 ||
				    kv->mod_rev < 0 || kv->version < 0 || kv->lease < 0)
					abort();
				/* Each byte of both strings is readable up to its NUL. */
				if (strlen(kv->key) + strlen(kv->value) > size)
					abort();
			}
		}
		etcd_kvs_free(&kvs);
		if (kvs.n || kvs.kv)
			abort();
		break;
	case 1:
		ok = true;
		r = etcd_parse_txn(body, size - 1, &ok, err, sizeof(err));
		if (r) {
			check_refusal(r, err, sizeof(err));
			if (ok)
				abort();     /* a refusal never says "succeeded" */
		}
		break;
	case 2:
		r = etcd_parse_lease(body, size - 1, &id, &ttl, err, sizeof(err));
		if (r) {
			check_refusal(r, err, sizeof(err));
			if (id || ttl)
				abort();
		} else if (id <= 0 || ttl < 0) {
			abort();
		}
		break;
	}
	free(body);
	return 0;
}
