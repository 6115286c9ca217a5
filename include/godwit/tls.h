/*
 * tls.h - mutual TLS 1.3 on the migration channel (OpenSSL, src/migration/
 * tls.c; docs/migration.md, "Security").
 *
 * Credentials are a CA, this side's certificate and its key, all PEM: read
 * from a directory (`--tls-dir DIR`: DIR/ca.pem, DIR/cert.pem, DIR/key.pem)
 * or handed over in memory (the API: `godwit migrate` reads the files, the
 * VM process never opens them).  Both ends present a certificate and refuse
 * a peer whose certificate does not chain to the CA, has expired, or (with
 * a peer name) does not name it.
 *
 *	tls_creds_load_dir(dir, peer, server, &c, err)	or tls_creds_from_pem()
 *	tls_handshake(c, fd, timeout_ms, &s, err)	on a connected socket
 *	tls_send(s, ...), tls_recv(s, ...)		as send()/recv()
 *	tls_sess_free(s); tls_creds_free(c)
 *
 * After the handshake the socket is non-blocking; tls_send() and tls_recv()
 * wait on it themselves, as long as its SO_SNDTIMEO/SO_RCVTIMEO say, so a
 * caller sees what it would see on the plain socket: bytes, 0 at the end,
 * or -1 with errno (EAGAIN once the time-out passed or with MSG_DONTWAIT;
 * EPROTO for a TLS failure, tls_sess_error() says which).  One rule is
 * OpenSSL's, not a socket's: after a short or EAGAIN tls_send(), send the
 * rest of the same data next (a record may already hold part of it).
 * OpenSSL writes with write(): the process must ignore SIGPIPE (main.c does).
 */
#ifndef GODWIT_TLS_H
#define GODWIT_TLS_H

#include <sys/types.h>

#include "godwit/common.h"

struct tls_creds;
struct tls_sess;

#define TLS_PEER_MAX    255          /* --tls-peer NAME */

/*
 * tls_init - load OpenSSL's configuration and seed its random generator
 * now, while the VM process may still open files (before its sandbox): a
 * migration started later needs neither.  0, or -EIO.
 */
int tls_init(void);
#define TLS_PEM_MAX     (64 * 1024)  /* bytes of one PEM file (three fit an API request) */

/*
 * tls_creds_load_dir - DIR/ca.pem, DIR/cert.pem and DIR/key.pem, checked
 * (the key matches the certificate, the certificate chains to the CA and is
 * valid now).  server: the destination's side.  peer: the name the peer's
 * certificate must carry (NULL: any certificate from the CA).  0 and *out,
 * or -errno with err naming the file and the cause.
 */
int tls_creds_load_dir(const char *dir, const char *peer, bool server, struct tls_creds **out,
		       char *err, size_t len) __must_check;
/* The same from PEM text in memory (NUL-terminated). */
int tls_creds_from_pem(const char *ca, const char *cert, const char *key, const char *peer,
		       bool server, struct tls_creds **out, char *err, size_t len) __must_check;
/* Read DIR/NAME (at most TLS_PEM_MAX bytes) into a NUL-terminated buffer; free() it. */
int tls_read_pem(const char *dir, const char *name, char **out, char *err, size_t len) __must_check;
void tls_creds_free(struct tls_creds *c);
/* "CN=host-a" of this side's certificate; the peer name required, or "". */
const char *tls_creds_subject(const struct tls_creds *c);
const char *tls_creds_peer(const struct tls_creds *c);

/*
 * tls_handshake - the TLS handshake on the connected socket fd, as a server
 * (destination) or client (source) as c says, within timeout_ms.  The client
 * returns only once the server accepted its certificate too.  0 and *out
 * (fd stays the caller's), or -errno with err naming the cause: the peer's
 * certificate unknown, expired or wrongly named, no certificate, ours
 * refused, not TLS at all, a time-out.
 */
int tls_handshake(struct tls_creds *c, int fd, int timeout_ms, struct tls_sess **out,
		  char *err, size_t len) __must_check;
/* send()/recv() through the session; flags: MSG_DONTWAIT or 0. */
ssize_t tls_send(struct tls_sess *s, const void *buf, size_t n, int flags);
ssize_t tls_recv(struct tls_sess *s, void *buf, size_t n, int flags);
/* True if bytes received are waiting in the session (poll() would not see them). */
bool tls_pending(struct tls_sess *s);
/* What the last EPROTO was ("" if none). */
const char *tls_sess_error(const struct tls_sess *s);
/* "TLSv1.3 TLS_AES_128_GCM_SHA256, peer CN=host-b" */
const char *tls_sess_desc(const struct tls_sess *s);
/* Send close_notify (best effort, no waiting) and free; the socket is not closed. */
void tls_sess_free(struct tls_sess *s);

#endif
