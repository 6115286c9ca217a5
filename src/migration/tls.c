/*
 * tls.c - mutual TLS 1.3 on the migration channel (tls.h), with OpenSSL.
 *
 * Why OpenSSL (not GnuTLS): both are in Debian and well kept; OpenSSL's
 * AES-GCM uses VAES/AVX-512 where the CPU has it (~5.8 GB/s per core on the
 * project's machines), which is what keeps an encrypted migration near the
 * speed of a plain one, and its certificate checks (chain, dates, host name)
 * are the ones operators already know from `openssl verify`.
 *
 * TLS 1.3 only, no session tickets or resumption (every migration is one
 * fresh, fully authenticated session), AES-128-GCM first.  The client's
 * handshake ends only when the server has accepted the client's
 * certificate: in TLS 1.3 the client finishes before the server has judged
 * it, so the server confirms with TLS_CONFIRM inside the session, and a
 * refusal reaches the client as the server's alert, not as a broken stream
 * later.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "godwit/log.h"
#include "godwit/tls.h"

#define TLS_CONFIRM      "GWTLS-OK"   /* server -> client once it accepted the client */
#define TLS_CONFIRM_LEN  8
#define TLS_CIPHERS      "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define TLS_READ_BUF     (256 * 1024)  /* read-ahead: one recv() per many records */
#define TLS_CORK_MIN     (64 * 1024)   /* tls_send() corks TCP for more than this */

struct tls_creds {
	SSL_CTX *ctx;
	bool server;
	char peer[TLS_PEER_MAX + 1];
	char subject[256];
};

struct tls_sess {
	SSL *ssl;
	int fd;
	bool tcp;                      /* fd is a TCP socket (sess_cork()) */
	bool server;
	int verr;                      /* the peer's certificate failed with this X509_V_ERR */
	char vsubj[256];               /* ... and this is its subject */
	char vna[64];                  /* ... and its notAfter */
	int snd_ms, rcv_ms;            /* the socket's SO_SNDTIMEO/SO_RCVTIMEO; 0: none */
	char err[256];
	char desc[384];
};

static int verify_cb(int ok, X509_STORE_CTX *x);

/* ---- credentials ------------------------------------------------------------------ */

int tls_init(void)
{
	unsigned char b;

	if (!OPENSSL_init_ssl(OPENSSL_INIT_LOAD_CONFIG, NULL) || RAND_bytes(&b, 1) != 1) {
		ERR_clear_error();
		return -EIO;
	}
	return 0;
}

/* The first OpenSSL error queued, as text ("" if none); clears the queue. */
static const char *ossl_err(char *buf, size_t len)
{
	unsigned long e = ERR_get_error();

	buf[0] = '\0';
	if (e) {
		const char *r = ERR_reason_error_string(e);

		snprintf(buf, len, "%s", r ? r : "");
		if (!r)
			ERR_error_string_n(e, buf, len);
	}
	ERR_clear_error();
	return buf;
}

static void x509_subject(X509 *x, char *buf, size_t len)
{
	X509_NAME *n = x ? X509_get_subject_name(x) : NULL;
	BIO *b = BIO_new(BIO_s_mem());
	char *p;
	long k;

	snprintf(buf, len, "?");
	if (!n || !b) {
		BIO_free(b);
		return;
	}
	X509_NAME_print_ex(b, n, 0, XN_FLAG_ONELINE);   /* a peer's bytes >= 0x80 escaped */
	k = BIO_get_mem_data(b, &p);
	if (k > 0)
		snprintf(buf, len, "%.*s", (int)MIN((size_t)k, len - 1), p);
	BIO_free(b);
}

static void x509_not_after(X509 *x, char *buf, size_t len)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *p;
	long k;

	snprintf(buf, len, "?");
	if (!b)
		return;
	if (ASN1_TIME_print(b, X509_get0_notAfter(x)) && (k = BIO_get_mem_data(b, &p)) > 0)
		snprintf(buf, len, "%.*s", (int)MIN((size_t)k, len - 1), p);
	BIO_free(b);
}

int tls_read_pem(const char *dir, const char *name, char **out, char *err, size_t len)
{
	char path[4096];
	struct stat st;
	char *buf = NULL;
	size_t got = 0;
	int fd, e;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0 || fstat(fd, &st) < 0) {
		e = errno;
		snprintf(err, len, "--tls-dir: cannot read %s: %s", path, strerror(e));
		goto fail;
	}
	if (!S_ISREG(st.st_mode) || st.st_size > TLS_PEM_MAX) {
		e = EINVAL;
		snprintf(err, len, "--tls-dir: %s is not a PEM file of at most %d KiB", path,
			 TLS_PEM_MAX / 1024);
		goto fail;
	}
	if (!strcmp(name, "key.pem") && (st.st_mode & 077))
		log_warnx("--tls-dir: %s can be read by other users (mode %03o): chmod 600 it", path,
			  (unsigned int)(st.st_mode & 0777));
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		e = ENOMEM;
		snprintf(err, len, "out of memory");
		goto fail;
	}
	while (got < (size_t)st.st_size) {
		ssize_t k = read(fd, buf + got, (size_t)st.st_size - got);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			e = k < 0 ? errno : EIO;
			snprintf(err, len, "--tls-dir: reading %s: %s", path,
				 k < 0 ? strerror(e) : "the file shrank");
			goto fail;
		}
		got += (size_t)k;
	}
	buf[got] = '\0';
	close(fd);
	*out = buf;
	return 0;
fail:
	if (buf) {
		OPENSSL_cleanse(buf, got);
		free(buf);
	}
	if (fd >= 0)
		close(fd);
	return -e;
}

/* Every certificate in pem into store (ca.pem may hold several). */
static int load_ca(X509_STORE *store, const char *pem, char *err, size_t len)
{
	BIO *b = BIO_new_mem_buf(pem, -1);
	int n = 0;
	X509 *x;

	if (!b)
		return -ENOMEM;
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
		if (!X509_STORE_add_cert(store, x)) {
			X509_free(x);
			BIO_free(b);
			snprintf(err, len, "ca.pem: a certificate cannot be used as a CA");
			return -EINVAL;
		}
		X509_free(x);
		n++;
	}
	ERR_clear_error();              /* the end of the PEM text */
	BIO_free(b);
	if (!n) {
		snprintf(err, len, "ca.pem holds no PEM certificate");
		return -EINVAL;
	}
	return 0;
}

/* cert.pem: this side's certificate, then any intermediates. */
static int load_cert(SSL_CTX *ctx, const char *pem, X509 **leaf, char *err, size_t len)
{
	BIO *b = BIO_new_mem_buf(pem, -1);
	char e[160];
	X509 *x;

	if (!b)
		return -ENOMEM;
	x = PEM_read_bio_X509(b, NULL, NULL, NULL);
	if (!x || !SSL_CTX_use_certificate(ctx, x)) {
		snprintf(err, len, "cert.pem: no usable PEM certificate (%s)", ossl_err(e, sizeof(e)));
		X509_free(x);
		BIO_free(b);
		return -EINVAL;
	}
	*leaf = x;
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
		if (!SSL_CTX_add0_chain_cert(ctx, x)) {
			X509_free(x);
			break;
		}
	}
	ERR_clear_error();
	BIO_free(b);
	return 0;
}

static int load_key(SSL_CTX *ctx, X509 *leaf, const char *pem, char *err, size_t len)
{
	BIO *b = BIO_new_mem_buf(pem, -1);
	EVP_PKEY *k;
	char e[160];
	int ret = 0;

	if (!b)
		return -ENOMEM;
	k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	if (k && !X509_check_private_key(leaf, k)) {
		snprintf(err, len, "key.pem does not belong to cert.pem's certificate");
		ERR_clear_error();
		ret = -EINVAL;
	} else if (!k || !SSL_CTX_use_PrivateKey(ctx, k)) {
		snprintf(err, len, "key.pem: no usable unencrypted PEM private key (%s)",
			 ossl_err(e, sizeof(e)));
		ret = -EINVAL;
	} else if (!SSL_CTX_check_private_key(ctx)) {
		snprintf(err, len, "key.pem does not belong to cert.pem's certificate");
		ERR_clear_error();
		ret = -EINVAL;
	}
	EVP_PKEY_free(k);
	BIO_free(b);
	return ret;
}

/* Our own certificate must chain to the CA and be valid now: say so at start, not at the peer. */
static int check_own(SSL_CTX *ctx, X509 *leaf, char *err, size_t len)
{
	X509_STORE_CTX *sc = X509_STORE_CTX_new();
	STACK_OF(X509) *chain = NULL;
	int ok, ret = 0;

	if (!sc)
		return -ENOMEM;
	SSL_CTX_get0_chain_certs(ctx, &chain);
	ok = X509_STORE_CTX_init(sc, SSL_CTX_get_cert_store(ctx), leaf, chain) == 1 &&
	     X509_verify_cert(sc) == 1;
	if (!ok) {
		int v = X509_STORE_CTX_get_error(sc);
		char subj[256], na[64];

		x509_subject(leaf, subj, sizeof(subj));
		if (v == X509_V_ERR_CERT_HAS_EXPIRED) {
			x509_not_after(leaf, na, sizeof(na));
			snprintf(err, len, "cert.pem (%s) expired on %s", subj, na);
		} else if (v == X509_V_ERR_CERT_NOT_YET_VALID) {
			snprintf(err, len, "cert.pem (%s) is not valid yet", subj);
		} else {
			snprintf(err, len, "cert.pem (%s) is not signed by ca.pem: %s", subj,
				 X509_verify_cert_error_string(v));
		}
		ret = -EINVAL;
	}
	ERR_clear_error();
	X509_STORE_CTX_free(sc);
	return ret;
}

int tls_creds_from_pem(const char *ca, const char *cert, const char *key, const char *peer,
		       bool server, struct tls_creds **out, char *err, size_t len)
{
	struct tls_creds *c = calloc(1, sizeof(*c));
	X509 *leaf = NULL;
	char e[160];
	int ret;

	if (!c) {
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	if (peer && strlen(peer) > TLS_PEER_MAX) {
		snprintf(err, len, "--tls-peer: a name of at most %d bytes is needed", TLS_PEER_MAX);
		ret = -EINVAL;
		goto fail;
	}
	c->server = server;
	snprintf(c->peer, sizeof(c->peer), "%s", peer ? peer : "");
	c->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (!c->ctx ||
	    !SSL_CTX_set_min_proto_version(c->ctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set_ciphersuites(c->ctx, TLS_CIPHERS)) {
		snprintf(err, len, "cannot set up TLS: %s", ossl_err(e, sizeof(e)));
		ret = -EIO;
		goto fail;
	}
	/*
	 * No tickets, no cache: nothing outlives the migration.  An abrupt close
	 * reads as the end of input, as on a plain socket: the stream's EOF
	 * section and the framed control messages already tell a cut-short
	 * stream from a finished one.
	 */
	SSL_CTX_set_options(c->ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
	SSL_CTX_set_num_tickets(c->ctx, 0);
	SSL_CTX_set_session_cache_mode(c->ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_mode(c->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
			 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY);
	SSL_CTX_set_default_read_buffer_len(c->ctx, TLS_READ_BUF);
	SSL_CTX_set_read_ahead(c->ctx, 1);
	SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
	ret = load_ca(SSL_CTX_get_cert_store(c->ctx), ca, err, len);
	if (!ret)
		ret = load_cert(c->ctx, cert, &leaf, err, len);
	if (!ret)
		ret = load_key(c->ctx, leaf, key, err, len);
	if (!ret)
		ret = check_own(c->ctx, leaf, err, len);
	if (ret)
		goto fail;
	x509_subject(leaf, c->subject, sizeof(c->subject));
	X509_free(leaf);
	*out = c;
	return 0;
fail:
	X509_free(leaf);
	tls_creds_free(c);
	return ret;
}

int tls_creds_load_dir(const char *dir, const char *peer, bool server, struct tls_creds **out,
		       char *err, size_t len)
{
	char *pem[3] = { NULL, NULL, NULL };
	static const char *const names[3] = { "ca.pem", "cert.pem", "key.pem" };
	char why[512];
	int ret = 0;

	for (int i = 0; i < 3 && !ret; i++)
		ret = tls_read_pem(dir, names[i], &pem[i], err, len);
	if (!ret) {
		ret = tls_creds_from_pem(pem[0], pem[1], pem[2], peer, server, out, why, sizeof(why));
		if (ret)
			snprintf(err, len, "--tls-dir %s: %s", dir, why);
	}
	for (int i = 0; i < 3; i++) {
		if (pem[i])
			OPENSSL_cleanse(pem[i], strlen(pem[i]));
		free(pem[i]);
	}
	return ret;
}

void tls_creds_free(struct tls_creds *c)
{
	if (!c)
		return;
	SSL_CTX_free(c->ctx);
	free(c);
}

const char *tls_creds_subject(const struct tls_creds *c)
{
	return c->subject;
}

const char *tls_creds_peer(const struct tls_creds *c)
{
	return c->peer;
}

/* ---- sessions ------------------------------------------------------------------------ */

static int sock_timeo_ms(int fd, int opt)
{
	struct timeval tv = { 0 };
	socklen_t tl = sizeof(tv);

	if (getsockopt(fd, SOL_SOCKET, opt, &tv, &tl))
		return 0;
	return (int)(tv.tv_sec * 1000 + tv.tv_usec / 1000);
}

/* Wait for fd to be ready for what SSL wants (err: SSL_get_error), up to ms (<0: for ever). */
static int wait_for(int fd, int sslerr, int ms)
{
	struct pollfd p = { .fd = fd, .events = sslerr == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN };
	int r;

	do
		r = poll(&p, 1, ms);
	while (r < 0 && errno == EINTR);
	return r;
}

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1000.0 + (double)t.tv_nsec / 1e6;
}

/* OpenSSL's verdict on the peer's chain: the first failure is kept, with the leaf's subject. */
static int verify_cb(int ok, X509_STORE_CTX *x)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
	struct tls_sess *s = ssl ? SSL_get_app_data(ssl) : NULL;
	X509 *leaf = X509_STORE_CTX_get0_cert(x);

	if (!ok && s && !s->verr) {
		s->verr = X509_STORE_CTX_get_error(x);
		if (!s->verr)
			s->verr = X509_V_ERR_UNSPECIFIED;
		x509_subject(leaf, s->vsubj, sizeof(s->vsubj));
		if (leaf)
			x509_not_after(leaf, s->vna, sizeof(s->vna));
	}
	return ok;
}

/* What a failed handshake means, from the verify result and the error queue. */
static void handshake_err(struct tls_creds *c, struct tls_sess *s, int sslerr, int sys, char *err,
			  size_t len)
{
	unsigned long e = ERR_peek_error();
	int reason = ERR_GET_REASON(e);
	long v = s->verr;
	const char *subj = s->vsubj, *na = s->vna;
	char buf[160];
	const char *who = c->server ? "the source" : "the destination";

	if (v != X509_V_OK) {
		switch (v) {
		case X509_V_ERR_CERT_HAS_EXPIRED:
			snprintf(err, len, "%s's certificate (%s) expired on %s", who, subj, na);
			break;
		case X509_V_ERR_CERT_NOT_YET_VALID:
			snprintf(err, len, "%s's certificate (%s) is not valid yet", who, subj);
			break;
		case X509_V_ERR_HOSTNAME_MISMATCH:
			snprintf(err, len, "%s's certificate (%s) does not name %s (--tls-peer)", who,
				 subj, c->peer);
			break;
		case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
		case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
		case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
		case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
		case X509_V_ERR_CERT_SIGNATURE_FAILURE:
		case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
			snprintf(err, len, "%s's certificate (%s) is not signed by our CA (ca.pem): %s",
				 who, subj, X509_verify_cert_error_string(v));
			break;
		default:
			snprintf(err, len, "%s's certificate (%s) was refused: %s", who, subj,
				 X509_verify_cert_error_string(v));
		}
	} else if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
		snprintf(err, len, "%s sent no certificate (mutual TLS: start it with --tls-dir)", who);
	} else if (reason == SSL_R_TLSV1_ALERT_UNKNOWN_CA || reason == SSL_R_SSLV3_ALERT_BAD_CERTIFICATE ||
		   reason == SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED ||
		   reason == SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN ||
		   reason == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED ||
		   reason == SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE ||
		   reason == SSL_R_TLSV1_ALERT_ACCESS_DENIED) {
		snprintf(err, len, "%s refused our certificate (%s): %s", who, c->subject,
			 ossl_err(buf, sizeof(buf)));
	} else if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_PACKET_LENGTH_TOO_LONG ||
		   reason == SSL_R_HTTP_REQUEST ||
		   reason == SSL_R_UNEXPECTED_MESSAGE) {
		snprintf(err, len, "%s does not speak TLS (%s): is it started without --tls-dir?", who,
			 ossl_err(buf, sizeof(buf)));
	} else if (sslerr == SSL_ERROR_SYSCALL || sslerr == SSL_ERROR_ZERO_RETURN ||
		   (sslerr == SSL_ERROR_SSL && reason == SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
		snprintf(err, len, "%s closed the connection during the TLS handshake%s%s", who,
			 sys ? ": " : "", sys ? strerror(sys) : "");
	} else {
		snprintf(err, len, "TLS handshake with %s failed: %s", who, ossl_err(buf, sizeof(buf)));
	}
	ERR_clear_error();
}

/*
 * hs_wait - an SSL call of the handshake returned r (errno sys): wait until
 * the socket is ready for what it wants, before deadline.  0 (call again),
 * -ECONNREFUSED (it failed: err says why) or -ETIMEDOUT.
 */
static int hs_wait(struct tls_creds *c, struct tls_sess *s, int r, int sys, double deadline,
		   int timeout_ms, char *err, size_t len)
{
	int e = SSL_get_error(s->ssl, r), left;

	if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
		handshake_err(c, s, e, e == SSL_ERROR_SYSCALL ? sys : 0, err, len);
		return -ECONNREFUSED;
	}
	left = (int)(deadline - now_ms());
	if (left <= 0 || wait_for(s->fd, e, left) == 0) {
		snprintf(err, len, "TLS handshake with %s timed out after %.1f s",
			 c->server ? "the source" : "the destination", timeout_ms / 1000.0);
		return -ETIMEDOUT;
	}
	return 0;
}

int tls_handshake(struct tls_creds *c, int fd, int timeout_ms, struct tls_sess **out,
		  char *err, size_t len)
{
	struct tls_sess *s = calloc(1, sizeof(*s));
	const char *who = c->server ? "the source" : "the destination";
	double deadline = now_ms() + timeout_ms;
	char got[TLS_CONFIRM_LEN];
	size_t have = 0;
	int ret, fl;

	if (!s) {
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	ERR_clear_error();
	s->fd = fd;
	{
		int dom = 0;
		socklen_t dl = sizeof(dom);

		s->tcp = !getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &dl) &&
			 (dom == AF_INET || dom == AF_INET6);
	}
	s->snd_ms = sock_timeo_ms(fd, SO_SNDTIMEO);
	s->rcv_ms = sock_timeo_ms(fd, SO_RCVTIMEO);
	s->ssl = SSL_new(c->ctx);
	fl = fcntl(fd, F_GETFL);
	if (!s->ssl || fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || !SSL_set_fd(s->ssl, fd)) {
		snprintf(err, len, "cannot set up a TLS session: %s", strerror(errno ? errno : ENOMEM));
		ret = -ENOMEM;
		goto fail;
	}
	SSL_set_app_data(s->ssl, s);
	if (c->peer[0] && !SSL_set1_host(s->ssl, c->peer)) {
		snprintf(err, len, "--tls-peer %s: not a usable name", c->peer);
		ret = -EINVAL;
		goto fail;
	}
	if (c->server)
		SSL_set_accept_state(s->ssl);
	else
		SSL_set_connect_state(s->ssl);
	for (;;) {
		int r = SSL_do_handshake(s->ssl);

		if (r == 1)
			break;
		ret = hs_wait(c, s, r, errno, deadline, timeout_ms, err, len);
		if (ret)
			goto fail;
	}
	/* The server has judged the client: it says so, and the client waits to hear it. */
	while (have < TLS_CONFIRM_LEN) {
		int r = c->server ? SSL_write(s->ssl, &TLS_CONFIRM[have], (int)(TLS_CONFIRM_LEN - have))
				  : SSL_read(s->ssl, got + have, (int)(TLS_CONFIRM_LEN - have));

		if (r > 0) {
			have += (size_t)r;
			continue;
		}
		ret = hs_wait(c, s, r, errno, deadline, timeout_ms, err, len);
		if (ret)
			goto fail;
	}
	if (!c->server && memcmp(got, TLS_CONFIRM, TLS_CONFIRM_LEN)) {
		snprintf(err, len, "%s is not a godwit TLS peer (no confirmation)", who);
		ret = -EPROTO;
		goto fail;
	}
	{
		X509 *peer = SSL_get0_peer_certificate(s->ssl);
		char subj[256] = "?";

		if (peer)
			x509_subject(peer, subj, sizeof(subj));
		snprintf(s->desc, sizeof(s->desc), "%s %s, peer %s", SSL_get_version(s->ssl),
			 SSL_get_cipher_name(s->ssl), subj);
	}
	*out = s;
	return 0;
fail:
	ERR_clear_error();
	SSL_free(s->ssl);
	free(s);
	return ret;
}

/* An SSL call's failure as errno: -1, or 0 for the end of input (close_notify or EOF). */
static ssize_t sess_fail(struct tls_sess *s, int r, int e, int sys)
{
	char buf[160];

	if (e == SSL_ERROR_ZERO_RETURN)
		return 0;
	if (e == SSL_ERROR_SYSCALL) {
		ERR_clear_error();
		if (!sys || r == 0)
			return 0;        /* EOF without close_notify: as a plain socket's end */
		errno = sys;
		return -1;
	}
	snprintf(s->err, sizeof(s->err), "TLS: %s", ossl_err(buf, sizeof(buf)));
	errno = EPROTO;
	return -1;
}

/*
 * Cork a TCP socket while a large buffer goes out as 16 KiB records, one
 * write() each: the kernel then sends full segments, not one per record
 * (TCP_NODELAY is on), which costs both ends less.  Uncorking sends the rest.
 */
static void sess_cork(struct tls_sess *s, bool on)
{
	int v = on;

	if (s->tcp)
		setsockopt(s->fd, IPPROTO_TCP, TCP_CORK, &v, sizeof(v));
}

/* tls_send() but for the cork. */
static ssize_t send_records(struct tls_sess *s, const void *buf, size_t n, int flags)
{
	const uint8_t *p = buf;
	double deadline = now_ms() + s->snd_ms;
	size_t done = 0;

	while (done < n) {
		int k = (int)MIN(n - done, (size_t)1 << 30), r, e, sys, left;

		ERR_clear_error();
		r = SSL_write(s->ssl, p + done, k);
		sys = errno;
		if (r > 0) {
			done += (size_t)r;
			continue;
		}
		e = SSL_get_error(s->ssl, r);
		if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
			ssize_t f = sess_fail(s, r, e, sys);

			if (done)
				return (ssize_t)done;
			if (f == 0) {
				errno = EPIPE;
				return -1;
			}
			return f;
		}
		/* Nothing more fits now: a non-blocking caller takes what went. */
		if (done || (flags & MSG_DONTWAIT)) {
			if (done)
				return (ssize_t)done;
			errno = EAGAIN;
			return -1;
		}
		left = s->snd_ms ? (int)(deadline - now_ms()) : -1;
		if ((s->snd_ms && left <= 0) || wait_for(s->fd, e, left) == 0) {
			errno = EAGAIN;  /* as SO_SNDTIMEO: stream_io_err() says "took nothing" */
			return -1;
		}
	}
	return (ssize_t)done;
}

ssize_t tls_send(struct tls_sess *s, const void *buf, size_t n, int flags)
{
	bool cork = s->tcp && n > TLS_CORK_MIN;
	ssize_t ret;
	int e;

	if (cork)
		sess_cork(s, true);
	ret = send_records(s, buf, n, flags);
	e = errno;
	if (cork)
		sess_cork(s, false);
	errno = e;
	return ret;
}

ssize_t tls_recv(struct tls_sess *s, void *buf, size_t n, int flags)
{
	uint8_t *p = buf;
	double deadline = now_ms() + s->rcv_ms;
	size_t done = 0;

	while (done < n) {
		int k = (int)MIN(n - done, (size_t)1 << 30), r, e, sys, left;

		ERR_clear_error();
		r = SSL_read(s->ssl, p + done, k);
		sys = errno;
		if (r > 0) {
			done += (size_t)r;
			continue;        /* more may be decrypted without waiting */
		}
		e = SSL_get_error(s->ssl, r);
		if (done)
			return (ssize_t)done;
		if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
			return sess_fail(s, r, e, sys);
		if (flags & MSG_DONTWAIT) {
			errno = EAGAIN;
			return -1;
		}
		left = s->rcv_ms ? (int)(deadline - now_ms()) : -1;
		if ((s->rcv_ms && left <= 0) || wait_for(s->fd, e, left) == 0) {
			errno = EAGAIN;  /* as SO_RCVTIMEO: stream_io_err() says "sent nothing" */
			return -1;
		}
	}
	return (ssize_t)done;
}

bool tls_pending(struct tls_sess *s)
{
	return SSL_has_pending(s->ssl);
}

const char *tls_sess_error(const struct tls_sess *s)
{
	return s->err;
}

const char *tls_sess_desc(const struct tls_sess *s)
{
	return s->desc;
}

void tls_sess_free(struct tls_sess *s)
{
	if (!s)
		return;
	(void)SSL_shutdown(s->ssl);      /* close_notify if it fits; never waits */
	ERR_clear_error();
	SSL_free(s->ssl);
	free(s);
}
