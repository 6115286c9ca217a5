/*
 * test_tls.c - mutual TLS on the migration channel (tls.h), over a
 * socketpair with credentials made here (OpenSSL: a CA, certificates for a
 * source and a destination, one from another CA, an expired one): a
 * handshake and 8 MiB each way intact; the socket semantics callers rely on
 * (EAGAIN at SO_RCVTIMEO and with MSG_DONTWAIT, 0 at the peer's end); every
 * refusal named (another CA, a wrong name, an expired certificate, a key
 * that does not match, no PEM at all).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "godwit/tls.h"
#include "unit.h"

struct pem_id {
	char *cert, *key;
};

static char *bio_text(BIO *b)
{
	char *p, *out;
	long n = BIO_get_mem_data(b, &p);

	out = malloc((size_t)n + 1);
	if (out) {
		memcpy(out, p, (size_t)n);
		out[n] = '\0';
	}
	BIO_free(b);
	return out;
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *e;

	X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
	e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (e) {
		X509_add_ext(x, e, -1);
		X509_EXTENSION_free(e);
	}
}

/* A certificate for cn (SAN DNS:cn unless san is false), signed by issuer (NULL: self). */
static X509 *mk_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *ikey, bool ca,
		     long from_s, long to_s, bool san)
{
	X509 *x = X509_new();
	X509_NAME *n = X509_NAME_new();
	char buf[300];

	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), rand());
	X509_gmtime_adj(X509_getm_notBefore(x), from_s);
	X509_gmtime_adj(X509_getm_notAfter(x), to_s);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_subject_name(x, n);
	X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
	X509_set_pubkey(x, key);
	add_ext(x, issuer ? issuer : x, NID_basic_constraints, ca ? "critical,CA:TRUE" : "CA:FALSE");
	if (ca) {
		add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
	} else {
		add_ext(x, issuer, NID_ext_key_usage, "serverAuth,clientAuth");
		if (san) {
			snprintf(buf, sizeof(buf), "DNS:%s", cn);
			add_ext(x, issuer, NID_subject_alt_name, buf);
		}
	}
	X509_sign(x, issuer ? ikey : key, EVP_sha256());
	X509_NAME_free(n);
	return x;
}

static char *cert_pem(X509 *x)
{
	BIO *b = BIO_new(BIO_s_mem());

	PEM_write_bio_X509(b, x);
	return bio_text(b);
}

static char *key_pem(EVP_PKEY *k)
{
	BIO *b = BIO_new(BIO_s_mem());

	PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
	return bio_text(b);
}

static struct {
	char *ca, *ca_b;
	struct pem_id src, dst, other_ca, expired, dst_cn_only;
} pki;

static void mk_id(struct pem_id *id, const char *cn, X509 *ca, EVP_PKEY *cakey, long from, long to,
		  bool san)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 *x = mk_cert(cn, k, ca, cakey, false, from, to, san);

	id->cert = cert_pem(x);
	id->key = key_pem(k);
	X509_free(x);
	EVP_PKEY_free(k);
}

static void mk_pki(void)
{
	EVP_PKEY *ka, *kb;
	X509 *a, *b;

	if (pki.ca)
		return;
	signal(SIGPIPE, SIG_IGN);      /* as godwit's main() */
	ka = EVP_EC_gen("P-256");
	kb = EVP_EC_gen("P-256");
	a = mk_cert("test CA A", ka, NULL, NULL, true, -86400, 86400 * 30, false);
	b = mk_cert("test CA B", kb, NULL, NULL, true, -86400, 86400 * 30, false);
	pki.ca = cert_pem(a);
	pki.ca_b = cert_pem(b);
	mk_id(&pki.src, "src.test", a, ka, -86400, 86400, true);
	mk_id(&pki.dst, "dst.test", a, ka, -86400, 86400, true);
	mk_id(&pki.dst_cn_only, "dst.test", a, ka, -86400, 86400, false);
	mk_id(&pki.other_ca, "src.test", b, kb, -86400, 86400, true);
	mk_id(&pki.expired, "src.test", a, ka, -86400 * 10, -86400 * 5, true);
	X509_free(a);
	X509_free(b);
	EVP_PKEY_free(ka);
	EVP_PKEY_free(kb);
}

static struct tls_creds *creds(const struct pem_id *id, const char *peer, bool server)
{
	struct tls_creds *c = NULL;
	char err[512];

	if (tls_creds_from_pem(pki.ca, id->cert, id->key, peer, server, &c, err, sizeof(err))) {
		printf("#   creds: %s\n", err);
		return NULL;
	}
	return c;
}

struct side {
	struct tls_creds *c;
	int fd, ret;
	struct tls_sess *s;
	char err[512];
	size_t echo;        /* server: bytes to read and check, then one byte back */
	bool data_ok;
};

static uint8_t pattern(size_t i)
{
	return (uint8_t)(i * 131 + (i >> 12));
}

static void *server_main(void *o)
{
	struct side *sd = o;
	uint8_t buf[70000];
	size_t got = 0;

	sd->ret = tls_handshake(sd->c, sd->fd, 5000, &sd->s, sd->err, sizeof(sd->err));
	if (sd->ret || !sd->echo)
		return NULL;
	sd->data_ok = true;
	while (got < sd->echo) {
		ssize_t k = tls_recv(sd->s, buf, MIN(sizeof(buf), sd->echo - got), 0);

		if (k <= 0) {
			sd->data_ok = false;
			return NULL;
		}
		for (ssize_t i = 0; i < k; i++)
			if (buf[i] != pattern(got + (size_t)i))
				sd->data_ok = false;
		got += (size_t)k;
	}
	if (tls_send(sd->s, "k", 1, 0) != 1)
		sd->data_ok = false;
	return NULL;
}

/* A handshake between client c and server s; the client's result and error. */
static int pair(struct tls_creds *cc, struct tls_creds *sc, struct side *cli, struct side *srv,
		size_t echo)
{
	pthread_t t;
	int sv[2];

	memset(cli, 0, sizeof(*cli));
	memset(srv, 0, sizeof(*srv));
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -errno;
	cli->c = cc;
	cli->fd = sv[0];
	srv->c = sc;
	srv->fd = sv[1];
	srv->echo = echo;
	pthread_create(&t, NULL, server_main, srv);
	cli->ret = tls_handshake(cc, cli->fd, 5000, &cli->s, cli->err, sizeof(cli->err));
	if (cli->ret)
		close(cli->fd);      /* the server's handshake ends too */
	pthread_join(t, NULL);
	return cli->ret;
}

static void unpair(struct side *cli, struct side *srv)
{
	tls_sess_free(cli->s);
	tls_sess_free(srv->s);
	if (!cli->ret)
		close(cli->fd);
	close(srv->fd);
}

TEST(tls_handshake_and_data)
{
	struct tls_creds *cc, *sc;
	struct timeval tmo = { .tv_sec = 5 };
	struct side cli, srv;
	size_t total = 8 << 20, sent = 0;
	uint8_t *buf = malloc(total);
	char one = 0;

	mk_pki();
	cc = creds(&pki.src, "dst.test", false);
	sc = creds(&pki.dst, "src.test", true);
	CHECK(cc && sc && buf);
	if (!cc || !sc || !buf)
		goto out;
	CHECK_STR(tls_creds_subject(cc), "CN = src.test");
	for (size_t i = 0; i < total; i++)
		buf[i] = pattern(i);
	{
		pthread_t t;
		int sv[2];

		memset(&cli, 0, sizeof(cli));
		memset(&srv, 0, sizeof(srv));
		CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
		/* A failure here must not hang the suite. */
		setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof(tmo));
		setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof(tmo));
		setsockopt(sv[0], SOL_SOCKET, SO_SNDTIMEO, &tmo, sizeof(tmo));
		srv = (struct side){ .c = sc, .fd = sv[1], .echo = total };
		pthread_create(&t, NULL, server_main, &srv);
		CHECK_EQ(tls_handshake(cc, sv[0], 5000, &cli.s, cli.err, sizeof(cli.err)), 0);
		cli.fd = sv[0];
		/*
		 * Uneven pieces, some larger than a record.  After a short write the
		 * rest of that piece goes next (OpenSSL's rule, tls.h).
		 */
		while (cli.s && sent < total) {
			static size_t left;
			size_t piece = 1 + (size_t)(rand() % 100000);
			size_t n = left ? left : MIN(total - sent, piece);
			ssize_t k = tls_send(cli.s, buf + sent, n, 0);

			CHECK(k > 0);
			if (k <= 0)
				break;
			sent += (size_t)k;
			left = n - (size_t)k;
		}
		if (cli.s)
			CHECK_EQ(tls_recv(cli.s, &one, 1, 0), 1);
		pthread_join(t, NULL);
		CHECK_EQ(srv.ret, 0);
		CHECK(srv.data_ok);
		CHECK_EQ(one, 'k');
		if (cli.s) {
			CHECK(strstr(tls_sess_desc(cli.s), "TLSv1.3 TLS_AES_128_GCM_SHA256, peer CN = dst.test"));
			/* Nothing more: MSG_DONTWAIT says EAGAIN at once. */
			errno = 0;
			CHECK_EQ(tls_recv(cli.s, &one, 1, MSG_DONTWAIT), -1);
			CHECK_EQ(errno, EAGAIN);
		}
		/* The server goes away: the client reads the end (0), as on a socket. */
		tls_sess_free(srv.s);
		close(srv.fd);
		if (cli.s)
			CHECK_EQ(tls_recv(cli.s, &one, 1, 0), 0);
		tls_sess_free(cli.s);
		close(cli.fd);
	}
out:
	free(buf);
	tls_creds_free(cc);
	tls_creds_free(sc);
}

TEST(tls_recv_timeout)
{
	struct tls_creds *cc, *sc;
	struct timeval tv = { .tv_usec = 200000 };
	struct side cli, srv;
	struct timespec t0, t1;
	char b;
	int sv[2];
	pthread_t t;

	mk_pki();
	cc = creds(&pki.src, NULL, false);
	sc = creds(&pki.dst, NULL, true);
	CHECK(cc && sc);
	if (!cc || !sc)
		goto out;
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	/* SO_RCVTIMEO set before the handshake is what tls_recv() waits. */
	setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	memset(&cli, 0, sizeof(cli));
	srv = (struct side){ .c = sc, .fd = sv[1] };
	pthread_create(&t, NULL, server_main, &srv);
	CHECK_EQ(tls_handshake(cc, sv[0], 5000, &cli.s, cli.err, sizeof(cli.err)), 0);
	pthread_join(t, NULL);
	if (cli.s) {
		clock_gettime(CLOCK_MONOTONIC, &t0);
		errno = 0;
		CHECK_EQ(tls_recv(cli.s, &b, 1, 0), -1);
		CHECK_EQ(errno, EAGAIN);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		CHECK(ms_since(&t0) >= 150 && ms_since(&t0) < 2000);
	}
	tls_sess_free(cli.s);
	tls_sess_free(srv.s);
	close(sv[0]);
	close(sv[1]);
out:
	tls_creds_free(cc);
	tls_creds_free(sc);
}

/* The client (source) is refused; both sides' messages must say why. */
static void refusal(const struct pem_id *cid, const char *cpeer, const struct pem_id *sid,
		    const char *speer, const char *cli_re, const char *srv_re)
{
	struct tls_creds *cc = NULL, *sc = NULL;
	struct side cli, srv;
	char err[512];

	if (tls_creds_from_pem(cid == &pki.other_ca ? pki.ca_b : pki.ca, cid->cert, cid->key, cpeer,
			       false, &cc, err, sizeof(err)) ||
	    tls_creds_from_pem(pki.ca, sid->cert, sid->key, speer, true, &sc, err, sizeof(err))) {
		printf("#   creds: %s\n", err);
		CHECK(0);
		goto out;
	}
	CHECK(pair(cc, sc, &cli, &srv, 0) != 0);
	if (!strstr(cli.err, cli_re)) {
		printf("#   client: \"%s\", expected \"%s\"\n", cli.err, cli_re);
		CHECK(0);
	}
	CHECK(srv.ret != 0);
	if (!strstr(srv.err, srv_re)) {
		printf("#   server: \"%s\", expected \"%s\"\n", srv.err, srv_re);
		CHECK(0);
	}
	unpair(&cli, &srv);
out:
	tls_creds_free(cc);
	tls_creds_free(sc);
}

TEST(tls_refusals_named)
{
	mk_pki();
	/* The server does not trust CA B (the client trusts only B: it refuses first). */
	refusal(&pki.other_ca, NULL, &pki.dst, NULL, "the destination's certificate (CN = dst.test) "
		"is not signed by our CA", "the source refused our certificate");
	/* The server requires another name. */
	refusal(&pki.src, NULL, &pki.dst, "other.test", "the destination refused our certificate",
		"the source's certificate (CN = src.test) does not name other.test");
	/* The client requires another name. */
	refusal(&pki.src, "other.test", &pki.dst, NULL,
		"the destination's certificate (CN = dst.test) does not name other.test",
		"the source refused our certificate");
}

TEST(tls_cn_only_and_no_peer_name)
{
	struct tls_creds *cc, *sc;
	struct side cli, srv;

	mk_pki();
	/* No SAN: the common name is the name. */
	cc = creds(&pki.src, "dst.test", false);
	sc = creds(&pki.dst_cn_only, "src.test", true);
	CHECK(cc && sc);
	if (cc && sc) {
		CHECK_EQ(pair(cc, sc, &cli, &srv, 0), 0);
		CHECK_EQ(srv.ret, 0);
		unpair(&cli, &srv);
	}
	tls_creds_free(cc);
	tls_creds_free(sc);
}

TEST(tls_creds_checked)
{
	struct tls_creds *c = NULL;
	char err[512];

	mk_pki();
	CHECK_EQ(tls_creds_from_pem(pki.ca, pki.expired.cert, pki.expired.key, NULL, false, &c, err,
				    sizeof(err)), -EINVAL);
	CHECK(strstr(err, "cert.pem (CN = src.test) expired on"));
	CHECK_EQ(tls_creds_from_pem(pki.ca, pki.src.cert, pki.dst.key, NULL, false, &c, err,
				    sizeof(err)), -EINVAL);
	CHECK(strstr(err, "key.pem does not belong to cert.pem"));
	CHECK_EQ(tls_creds_from_pem(pki.ca_b, pki.src.cert, pki.src.key, NULL, false, &c, err,
				    sizeof(err)), -EINVAL);
	CHECK(strstr(err, "is not signed by ca.pem"));
	CHECK_EQ(tls_creds_from_pem("not a pem", pki.src.cert, pki.src.key, NULL, false, &c, err,
				    sizeof(err)), -EINVAL);
	CHECK(strstr(err, "ca.pem holds no PEM certificate"));
	CHECK_EQ(tls_creds_from_pem(pki.ca, "-----BEGIN CERTIFICATE-----\nAAAA\n", pki.src.key, NULL,
				    false, &c, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "cert.pem: no usable PEM certificate"));
	CHECK_EQ(tls_creds_from_pem(pki.ca, pki.src.cert, "garbage", NULL, false, &c, err,
				    sizeof(err)), -EINVAL);
	CHECK(strstr(err, "key.pem: no usable"));
	CHECK(c == NULL);
}

TEST(tls_not_tls_peer)
{
	struct tls_creds *cc;
	struct tls_sess *s = NULL;
	char err[512];
	int sv[2];

	mk_pki();
	cc = creds(&pki.src, NULL, false);
	CHECK(cc);
	if (!cc)
		return;
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	/* A plain godwit destination answers a ClientHello with a REFUSE message. */
	CHECK_EQ(write(sv[1], "GWMC\x02\x00\x10\x00not a godwit str", 24), 24);
	CHECK(tls_handshake(cc, sv[0], 2000, &s, err, sizeof(err)) != 0);
	CHECK(strstr(err, "the destination does not speak TLS"));
	close(sv[0]);
	close(sv[1]);
	/* A silent peer: the handshake times out. */
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	CHECK_EQ(tls_handshake(cc, sv[0], 200, &s, err, sizeof(err)), -ETIMEDOUT);
	CHECK(strstr(err, "timed out"));
	close(sv[0]);
	close(sv[1]);
	tls_creds_free(cc);
}
