/*
 * peer.c - the agents' protocol (docs/fleet.md, "The agents' protocol"):
 * one JSON request and one JSON reply per connection, one line each, under
 * mutual TLS 1.3 (--tls-dir; plain only on loopback or with --insecure).
 * The only request is "prepare": the destination checks it against etcd
 * (the intent, the owner, the spec), starts `godwit run --incoming` on a
 * port of --migration-ports and answers with the port.  Then the loop
 * watches that VM (peer_watch_incoming): it runs only once the owner names
 * this host at E+1; in doubt it is settled from the owner record.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "godwit/conn.h"
#include "godwit/etcd.h"
#include "godwit/log.h"
#include "godwit/tls.h"
#include "agent.h"

#define PEER_IO_TIMEOUT_MS      10000
#define PEER_REPLY_TIMEOUT_MS   30000     /* the destination starts its VMM meanwhile */
#define PEER_CONNECT_TIMEOUT_MS 5000
#define PEER_HANDSHAKE_MS       10000
#define PEER_LISTEN_WAIT_MS     10000
#define PEER_INCOMING_TIMEOUT_S "120"
#define PEER_MAX_CONNS          8
#define PEER_API_TIMEOUT_MS     1000      /* an incoming VMM's API, from the loop */
#define PEER_API_BACKOFF_MS     1000

static int peer_fd = -1;
static pthread_t peer_th;
static int peer_conns;           /* handler threads running (a->lock) */

static void peer_set_timeouts(int fd, int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int peer_send_line(struct conn *c, json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT);
	size_t n, off = 0;

	if (!s)
		return -ENOMEM;
	n = strlen(s);
	s[n] = '\0';
	while (off <= n) {
		/* the JSON, then the newline */
		const char *p = off < n ? s + off : "\n";
		size_t len = off < n ? n - off : 1;
		ssize_t w = conn_send(c, p, len, 0);

		if (w < 0) {
			int e = errno;

			if (e == EINTR)
				continue;
			free(s);
			return -e;
		}
		off += (size_t)w;
		if (off == n + 1)
			break;
	}
	free(s);
	return 0;
}

int peer_parse_line(const char *buf, size_t n, json_t **out, char *err, size_t len)
{
	const char *nl;
	json_error_t je;

	*out = NULL;
	/* the line ends at the first newline; a NUL inside it makes it invalid JSON */
	if (memchr(buf, '\0', n)) {
		snprintf(err, len, "a NUL byte in the line");
		return -EBADMSG;
	}
	nl = memchr(buf, '\n', n);
	if (!nl) {
		snprintf(err, len, "no newline at the end of the line");
		return -EBADMSG;
	}
	*out = json_loadb(buf, (size_t)(nl - buf), JSON_REJECT_DUPLICATES, &je);
	if (!json_is_object(*out)) {
		snprintf(err, len, "not a JSON object%s%s", *out ? "" : ": ", *out ? "" : je.text);
		json_decref(*out);
		*out = NULL;
		return -EBADMSG;
	}
	return 0;
}

/* One line of at most AGENT_LINE_MAX bytes within timeout_ms, parsed: a JSON object. */
static int peer_recv_line(struct conn *c, int timeout_ms, json_t **out, char *err, size_t len)
{
	char *buf = malloc(AGENT_LINE_MAX + 1);
	uint64_t end = agent_now_ms() + (uint64_t)timeout_ms;
	size_t n = 0;
	int ret;

	*out = NULL;
	if (!buf) {
		snprintf(err, len, "out of memory");
		return -ENOMEM;
	}
	for (;;) {
		uint64_t now = agent_now_ms();
		ssize_t r;
		int w;

		if (now >= end) {
			snprintf(err, len, "no complete request line within %d s", timeout_ms / 1000);
			free(buf);
			return -ETIMEDOUT;
		}
		w = conn_wait_input(c, (int)(end - now));
		if (w < 0 && errno != EINTR) {
			snprintf(err, len, "%s", strerror(errno));
			free(buf);
			return -EIO;
		}
		if (w <= 0)
			continue;
		r = conn_recv(c, buf + n, AGENT_LINE_MAX - n, MSG_DONTWAIT);
		if (r < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			snprintf(err, len, "%s", conn_strerror(c, errno));
			free(buf);
			return -EIO;
		}
		if (r == 0) {
			snprintf(err, len, "the connection closed before a complete line");
			free(buf);
			return -ECONNRESET;
		}
		n += (size_t)r;
		if (memchr(buf + n - (size_t)r, '\n', (size_t)r))
			break;
		if (n >= AGENT_LINE_MAX) {
			snprintf(err, len, "line longer than %d bytes", AGENT_LINE_MAX);
			free(buf);
			return -EMSGSIZE;
		}
	}
	ret = peer_parse_line(buf, n, out, err, len);
	free(buf);
	return ret;
}

/* TCP connect within timeout; fd or -errno. */
static int peer_connect(const char *addr, char *err, size_t len)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *r;
	const char *colon = strrchr(addr, ':');
	char host[AGENT_ADDR_MAX];
	size_t hl;
	int fd = -1, ret;

	if (!colon || (hl = (size_t)(colon - addr)) >= sizeof(host) || !hl) {
		snprintf(err, len, "bad address %s", addr);
		return -EINVAL;
	}
	if (addr[0] == '[' && hl >= 2 && addr[hl - 1] == ']') {
		memcpy(host, addr + 1, hl - 2);
		host[hl - 2] = '\0';
	} else {
		memcpy(host, addr, hl);
		host[hl] = '\0';
	}
	ret = getaddrinfo(host, colon + 1, &hints, &res);
	if (ret) {
		snprintf(err, len, "%s: %s", addr, gai_strerror(ret));
		return -EHOSTUNREACH;
	}
	ret = -ECONNREFUSED;
	for (r = res; r; r = r->ai_next) {
		struct pollfd p;
		int soerr = 0;
		socklen_t sl = sizeof(soerr);

		fd = socket(r->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0) {
			ret = -errno;
			continue;
		}
		if (connect(fd, r->ai_addr, r->ai_addrlen) && errno != EINPROGRESS) {
			ret = -errno;
			close(fd);
			fd = -1;
			continue;
		}
		p = (struct pollfd){ .fd = fd, .events = POLLOUT };
		if (poll(&p, 1, PEER_CONNECT_TIMEOUT_MS) <= 0) {
			ret = -ETIMEDOUT;
		} else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) || soerr) {
			ret = -(soerr ? soerr : errno);
		} else {
			int fl = 0;

			/* blocking again, with time-outs: conn_send/recv wait on it */
			fcntl(fd, F_SETFL, fl);
			ret = 0;
			break;
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (ret) {
		snprintf(err, len, "connecting to %s: %s", addr, strerror(-ret));
		return ret;
	}
	return fd;
}

int peer_request(struct agent *a, const char *addr, const char *host, json_t *req,
		 json_t **reply, char *err, size_t len)
{
	struct tls_creds *creds = NULL;
	struct conn c = { .fd = -1 };
	char e2[AGENT_ERR_MAX];
	int ret;

	*reply = NULL;
	if (a->tls_dir) {
		ret = tls_creds_load_dir(a->tls_dir, host, false, &creds, e2, sizeof(e2));
		if (ret) {
			snprintf(err, len, "--tls-dir %s: %s", a->tls_dir, e2);
			return ret;
		}
	}
	ret = peer_connect(addr, err, len);
	if (ret < 0)
		goto out;
	c.fd = ret;
	peer_set_timeouts(c.fd, PEER_IO_TIMEOUT_MS);
	if (creds) {
		ret = tls_handshake(creds, c.fd, PEER_HANDSHAKE_MS, &c.tls, e2, sizeof(e2));
		if (ret) {
			snprintf(err, len, "TLS with host %s (%s): %s", host, addr, e2);
			goto out;
		}
	}
	ret = peer_send_line(&c, req);
	if (ret) {
		snprintf(err, len, "sending to host %s (%s): %s", host, addr, strerror(-ret));
		goto out;
	}
	ret = peer_recv_line(&c, PEER_REPLY_TIMEOUT_MS, reply, e2, sizeof(e2));
	if (ret)
		snprintf(err, len, "the reply of host %s (%s): %s", host, addr, e2);
out:
	if (c.tls)
		tls_sess_free(c.tls);
	if (c.fd >= 0)
		close(c.fd);
	tls_creds_free(creds);
	return ret < 0 ? ret : 0;
}

/* ---- the destination ---- */

/* Is TCP port listening (per /proc/net/tcp and tcp6)? */
static bool peer_port_listens(unsigned int port)
{
	static const char *const files[] = { "/proc/net/tcp", "/proc/net/tcp6" };

	for (int i = 0; i < 2; i++) {
		FILE *f = fopen(files[i], "re");
		char line[512];

		if (!f)
			continue;
		while (fgets(line, sizeof(line), f)) {
			char local[128];
			unsigned int st, p;
			char *colon;

			if (sscanf(line, " %*d: %127s %*s %x", local, &st) != 2)
				continue;
			colon = strrchr(local, ':');
			if (!colon || sscanf(colon + 1, "%x", &p) != 1)
				continue;
			if (p == port && st == 0x0A) {
				fclose(f);
				return true;
			}
		}
		fclose(f);
	}
	return false;
}

/* A port of --migration-ports that can be bound on the listen address now; 0 if none. */
static unsigned int peer_pick_port(struct agent *a)
{
	unsigned int span = a->port_hi - a->port_lo + 1, start = (unsigned int)random() % span;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV }, *res;

	for (unsigned int i = 0; i < span; i++) {
		unsigned int port = a->port_lo + (start + i) % span;
		char ps[8];
		int fd, one = 1, ok;

		snprintf(ps, sizeof(ps), "%u", port);
		if (getaddrinfo(a->listen_host, ps, &hints, &res))
			return 0;
		fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			freeaddrinfo(res);
			return 0;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		ok = bind(fd, res->ai_addr, res->ai_addrlen) == 0;
		close(fd);
		freeaddrinfo(res);
		if (ok && !peer_port_listens(port))
			return port;
	}
	return 0;
}

static const char *const peer_fields[] = { "op", "vm", "from", "epoch", "token", "with_disks",
					   NULL };

int peer_check_request(const char *host, json_t *req, char *err, size_t len)
{
	const char *k;
	json_t *v, *ep = json_object_get(req, "epoch"), *wd = json_object_get(req, "with_disks");

	json_object_foreach(req, k, v) {
		bool known = false;

		for (int i = 0; peer_fields[i]; i++)
			if (!strcmp(k, peer_fields[i]))
				known = true;
		if (!known) {
			snprintf(err, len, "unknown field \"%.64s\"", k);
			return -EINVAL;
		}
	}
	if (strcmp(jstr(req, "op"), "prepare")) {
		snprintf(err, len, "\"op\" must be \"prepare\"");
		return -EINVAL;
	}
	if (!fleet_name_ok(jstr(req, "vm")) || !fleet_name_ok(jstr(req, "from"))) {
		snprintf(err, len, "\"vm\" and \"from\" must be names");
		return -EINVAL;
	}
	if (!strcmp(jstr(req, "from"), host)) {
		snprintf(err, len, "\"from\" is this host");
		return -EINVAL;
	}
	if (!json_is_integer(ep) || json_integer_value(ep) < 1) {
		snprintf(err, len, "\"epoch\" must be a positive integer");
		return -EINVAL;
	}
	if (!*jstr(req, "token") || strlen(jstr(req, "token")) > 255) {
		snprintf(err, len, "\"token\" must be a string of 1-255 bytes");
		return -EINVAL;
	}
	if (wd && !json_is_boolean(wd) && !(json_is_string(wd) && strlen(jstr(req, "with_disks")) < 256)) {
		snprintf(err, len, "\"with_disks\" must be a boolean or a string");
		return -EINVAL;
	}
	return 0;
}

/* Does etcd hold the migration this request claims?  0 with *spec, or -errno with err. */
static int peer_check_fleet(struct agent *a, struct etcd *e, json_t *req, json_t **spec,
			    char *err, size_t len)
{
	const char *vm = jstr(req, "vm");
	char key[FLEET_KEY_MAX], e2[AGENT_ERR_MAX];
	struct etcd_kvs kvs = { 0 };
	json_t *intent = NULL;
	uint64_t epoch = (uint64_t)json_integer_value(json_object_get(req, "epoch"));
	int ret;

	*spec = NULL;
	fleet_key_vm(key, sizeof(key), vm, "intent");
	ret = etcd_get(e, key, &kvs, e2, sizeof(e2));
	if (ret)
		goto etcd_err;
	if (kvs.n == 1)
		intent = json_loads(kvs.kv[0].value, 0, NULL);
	etcd_kvs_free(&kvs);
	if (!intent || strcmp(jstr(intent, "op"), "migrate") || strcmp(jstr(intent, "to"), a->host) ||
	    strcmp(jstr(intent, "token"), jstr(req, "token"))) {
		json_decref(intent);
		snprintf(err, len, "no migration of VM %s to %s with that token was asked for", vm,
			 a->host);
		return -EPERM;
	}
	json_decref(intent);
	fleet_key_vm(key, sizeof(key), vm, "owner");
	ret = etcd_get(e, key, &kvs, e2, sizeof(e2));
	if (ret)
		goto etcd_err;
	if (kvs.n != 1 || !agent_owner_is(kvs.kv[0].value, jstr(req, "from"), epoch)) {
		snprintf(err, len, "VM %s's owner is \"%s\", not \"%s %" PRIu64 "\"", vm,
			 kvs.n ? kvs.kv[0].value : "(none)", jstr(req, "from"), epoch);
		etcd_kvs_free(&kvs);
		return -EPERM;
	}
	etcd_kvs_free(&kvs);
	fleet_key_vm(key, sizeof(key), vm, "spec");
	ret = etcd_get(e, key, &kvs, e2, sizeof(e2));
	if (ret)
		goto etcd_err;
	if (kvs.n == 1)
		*spec = json_loads(kvs.kv[0].value, 0, NULL);
	etcd_kvs_free(&kvs);
	if (!json_is_object(*spec)) {
		json_decref(*spec);
		*spec = NULL;
		snprintf(err, len, "VM %s has no valid spec", vm);
		return -ENOENT;
	}
	return 0;
etcd_err:
	snprintf(err, len, "etcd: %.400s", e2);
	return ret;
}

/* Start the incoming VMM; 0 and *port, or -errno with err. */
static int peer_start_incoming(struct agent *a, json_t *req, json_t *spec, unsigned int *port,
			       char *err, size_t len)
{
	const char *vm = jstr(req, "vm"), *from = jstr(req, "from");
	uint64_t epoch = (uint64_t)json_integer_value(json_object_get(req, "epoch"));
	char addr[AGENT_ADDR_MAX + 16], api[PATH_MAX], dir[PATH_MAX], lease[32];
	const char *pre[16];
	size_t npre = 0;
	struct agent_vm *v;
	char **argv;
	pid_t pid;
	uint64_t t0;
	int ret;

	*port = peer_pick_port(a);
	if (!*port) {
		snprintf(err, len, "no free port in --migration-ports %u-%u", a->port_lo, a->port_hi);
		return -EADDRINUSE;
	}
	snprintf(addr, sizeof(addr), strchr(a->listen_host, ':') ? "tcp:[%s]:%u" : "tcp:%s:%u",
		 a->listen_host, *port);
	snprintf(dir, sizeof(dir), "%s/vms/%s", a->state_dir, vm);
	agent_path(api, sizeof(api), "%s/api.sock", dir);
	pre[npre++] = "run";
	pre[npre++] = "--incoming";
	pre[npre++] = addr;
	pre[npre++] = "--api";
	pre[npre++] = api;
	pre[npre++] = "--incoming-timeout";
	pre[npre++] = PEER_INCOMING_TIMEOUT_S;
	if (a->tls_dir) {
		pre[npre++] = "--tls-dir";
		pre[npre++] = a->tls_dir;
		pre[npre++] = "--tls-peer";
		pre[npre++] = from;
	} else if (a->insecure) {
		pre[npre++] = "--insecure";
	}
	npre += (size_t)host_guard_args(a, pre + npre, lease, sizeof(lease));
	ret = vms_build_argv(a, vm, spec, pre, npre, &argv, err, len);
	if (ret)
		return ret;
	/*
	 * A source copy that migrated away lingers a few seconds (its VMM waits for
	 * the report to be read): the owner is FROM now, so it is stale; end it.
	 */
	for (int i = 0; i < 50; i++) {
		bool stale;

		vms_reap(a);
		pthread_mutex_lock(&a->lock);
		v = vms_find(a, vm);
		stale = v && (v->exit_status != -1 || !strcmp(v->state, "migrated"));
		if (v && v->exit_status != -1 && !v->busy) {
			v->used = false;      /* gone: forget it (the loop would do the same) */
			v = NULL;
		} else if (stale && !v->busy) {
			vms_signal(v, SIGKILL);
		}
		pthread_mutex_unlock(&a->lock);
		if (!v || !stale)
			break;
		agent_sleep_ms(100);
	}
	pthread_mutex_lock(&a->lock);
	if (vms_find(a, vm)) {
		pthread_mutex_unlock(&a->lock);
		vms_argv_free(argv);
		snprintf(err, len, "VM %s is already on host %s", vm, a->host);
		return -EEXIST;
	}
	v = vms_new(a, vm);
	if (!v) {
		pthread_mutex_unlock(&a->lock);
		vms_argv_free(argv);
		snprintf(err, len, "host %s runs too many VMs", a->host);
		return -ENOSPC;
	}
	unlink(api);
	ret = vms_spawn(a, vm, argv, &pid, err, len);
	vms_argv_free(argv);
	if (ret) {
		v->used = false;
		pthread_mutex_unlock(&a->lock);
		return ret;
	}
	v->pid = pid;
	v->child = true;
	v->incoming = true;
	v->epoch = epoch + 1;
	snprintf(v->from, sizeof(v->from), "%s", from);
	snprintf(v->state, sizeof(v->state), "incoming");
	{
		json_t *jm = json_object_get(spec, "mem"), *jc = json_object_get(spec, "cpus");

		v->mem = json_is_integer(jm) && json_integer_value(jm) > 0 ?
			 (uint64_t)json_integer_value(jm) : 0;
		v->cpus = json_is_integer(jc) && json_integer_value(jc) > 0 &&
			  json_integer_value(jc) < 4096 ? (unsigned int)json_integer_value(jc) : 1;
	}
	vms_write_files(dir, pid, epoch + 1, spec);
	/* an agent restarted before the VM runs here must know it is incoming */
	vms_write_file(dir, "from", from);
	pthread_mutex_unlock(&a->lock);
	log_info("VM %s: incoming from %s (epoch %" PRIu64 "): godwit run --incoming %s (pid %d)",
		 vm, from, epoch, addr, (int)pid);

	t0 = agent_now_ms();
	while (agent_now_ms() - t0 < PEER_LISTEN_WAIT_MS) {
		bool exited;

		if (peer_port_listens(*port))
			return 0;
		vms_reap(a);
		pthread_mutex_lock(&a->lock);
		v = vms_find(a, vm);
		exited = !v || v->exit_status != -1;
		pthread_mutex_unlock(&a->lock);
		if (exited) {
			char tail[AGENT_ERR_MAX / 2];

			vms_console_tail(v ? v->console : "", tail, sizeof(tail));
			snprintf(err, len, "godwit run --incoming exited at once: %s", tail);
			return -EIO;     /* the loop cleans it up */
		}
		agent_sleep_ms(50);
	}
	snprintf(err, len, "godwit run --incoming is not listening on port %u after %d s", *port,
		 PEER_LISTEN_WAIT_MS / 1000);
	pthread_mutex_lock(&a->lock);
	if ((v = vms_find(a, vm)))
		vms_signal(v, SIGKILL);
	pthread_mutex_unlock(&a->lock);
	return -ETIMEDOUT;
}

struct peer_job {
	struct agent *a;
	int fd;
	char who[96];
};

static void *peer_conn_thread(void *opaque)
{
	struct peer_job *job = opaque;
	struct agent *a = job->a;
	struct tls_creds *creds = NULL;
	struct conn c = { .fd = job->fd };
	char err[AGENT_ERR_MAX] = "", e2[AGENT_ERR_MAX];
	struct etcd *e = NULL;
	json_t *req = NULL, *spec = NULL, *rep;
	unsigned int port = 0;
	int ret;

	peer_set_timeouts(c.fd, PEER_IO_TIMEOUT_MS);
	if (a->tls_dir) {
		ret = tls_creds_load_dir(a->tls_dir, NULL, true, &creds, e2, sizeof(e2));
		if (!ret)
			ret = tls_handshake(creds, c.fd, PEER_HANDSHAKE_MS, &c.tls, e2, sizeof(e2));
		if (ret) {
			log_warnx("peer %s: TLS: %s", job->who, e2);
			goto out;
		}
	}
	ret = peer_recv_line(&c, PEER_IO_TIMEOUT_MS, &req, e2, sizeof(e2));
	if (ret) {
		snprintf(err, sizeof(err), "bad request: %.400s", e2);
		goto reply;
	}
	ret = peer_check_request(a->host, req, e2, sizeof(e2));
	if (ret) {
		snprintf(err, sizeof(err), "bad request: %.400s", e2);
		goto reply;
	}
	ret = agent_etcd_open(a, ETCD_TIMEOUT_MS, &e);
	if (ret) {
		snprintf(err, sizeof(err), "host %s cannot reach etcd", a->host);
		goto reply;
	}
	pthread_mutex_lock(&a->lock);
	ret = a->fenced ? -EAGAIN : 0;
	pthread_mutex_unlock(&a->lock);
	if (ret) {
		snprintf(err, sizeof(err), "host %s is fenced (it lost etcd)", a->host);
		goto reply;
	}
	ret = peer_check_fleet(a, e, req, &spec, err, sizeof(err));
	if (ret)
		goto reply;
	ret = peer_start_incoming(a, req, spec, &port, err, sizeof(err));
reply:
	if (ret) {
		log_warnx("peer %s: prepare of VM %s from %s refused: %s", job->who,
			  req ? jstr(req, "vm") : "?", req ? jstr(req, "from") : "?", err);
		rep = json_pack("{s:b, s:s}", "ok", 0, "error", err);
	} else {
		rep = json_pack("{s:b, s:I}", "ok", 1, "port", (json_int_t)port);
	}
	if (rep && peer_send_line(&c, rep))
		log_warnx("peer %s: cannot send the reply", job->who);
	json_decref(rep);
out:
	json_decref(req);
	json_decref(spec);
	if (c.tls)
		tls_sess_free(c.tls);
	close(c.fd);
	tls_creds_free(creds);
	etcd_close(e);
	pthread_mutex_lock(&a->lock);
	peer_conns--;
	pthread_mutex_unlock(&a->lock);
	free(job);
	return NULL;
}

static void *peer_accept_thread(void *opaque)
{
	struct agent *a = opaque;

	while (!a->stop) {
		struct pollfd p = { .fd = peer_fd, .events = POLLIN };
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		struct peer_job *job;
		char host[64] = "?", serv[16] = "?";
		pthread_t th;
		bool full;
		int fd;

		if (poll(&p, 1, 200) <= 0)
			continue;
		fd = accept4(peer_fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), serv, sizeof(serv),
			    NI_NUMERICHOST | NI_NUMERICSERV);
		pthread_mutex_lock(&a->lock);
		full = peer_conns >= PEER_MAX_CONNS;
		if (!full)
			peer_conns++;
		pthread_mutex_unlock(&a->lock);
		if (full) {
			log_warnx("peer %s:%s: too many connections; closed", host, serv);
			close(fd);
			continue;
		}
		job = calloc(1, sizeof(*job));
		if (!job) {
			close(fd);
			pthread_mutex_lock(&a->lock);
			peer_conns--;
			pthread_mutex_unlock(&a->lock);
			continue;
		}
		job->a = a;
		job->fd = fd;
		snprintf(job->who, sizeof(job->who), "%s:%s", host, serv);
		if (pthread_create(&th, NULL, peer_conn_thread, job)) {
			close(fd);
			free(job);
			pthread_mutex_lock(&a->lock);
			peer_conns--;
			pthread_mutex_unlock(&a->lock);
			continue;
		}
		pthread_detach(th);
	}
	return NULL;
}

int peer_start(struct agent *a)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *res;
	char ps[8];
	int one = 1, ret;

	snprintf(ps, sizeof(ps), "%u", a->listen_port);
	ret = getaddrinfo(a->listen_host, ps, &hints, &res);
	if (ret) {
		log_warnx("godwitd: --listen %s: %s", a->listen, gai_strerror(ret));
		return -EINVAL;
	}
	peer_fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (peer_fd < 0 ||
	    setsockopt(peer_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(peer_fd, res->ai_addr, res->ai_addrlen) || listen(peer_fd, 16)) {
		log_warn("godwitd: --listen %s", a->listen);
		freeaddrinfo(res);
		return -EADDRINUSE;
	}
	freeaddrinfo(res);
	srandom((unsigned int)(getpid() ^ agent_now_ms()));
	if (pthread_create(&peer_th, NULL, peer_accept_thread, a)) {
		log_warnx("godwitd: cannot start the listener");
		return -EAGAIN;
	}
	log_info("godwitd: listening for agents on %s%s", a->listen,
		 a->tls_dir ? " (mutual TLS)" : a->insecure ? " (insecure)" : " (loopback, no TLS)");
	return 0;
}

void peer_stop(struct agent *a)
{
	(void)a;
	pthread_join(peer_th, NULL);
	close(peer_fd);
	peer_fd = -1;
}

/* ---- watching an incoming VM (the loop) ---- */

void peer_watch_incoming(struct agent *a, struct etcd *e, const char *vm)
{
	char api[PATH_MAX], from[FLEET_NAME_MAX], key[FLEET_KEY_MAX], err[AGENT_ERR_MAX];
	struct etcd_kvs kvs = { 0 };
	struct fleet_owner o;
	struct agent_vm *v;
	json_t *g, *m;
	const char *st, *mst;
	uint64_t E1;
	pid_t pid;

	pthread_mutex_lock(&a->lock);
	v = vms_find(a, vm);
	if (!v || !v->incoming || v->fenced) {
		pthread_mutex_unlock(&a->lock);
		return;
	}
	if (agent_now_ms() < v->next_poll_ms) {
		pthread_mutex_unlock(&a->lock);
		return;
	}
	snprintf(api, sizeof(api), "%s", v->api);
	snprintf(from, sizeof(from), "%s", v->from);
	E1 = v->epoch;
	pid = v->pid;
	pthread_mutex_unlock(&a->lock);
	if (access(api, F_OK))
		return;          /* not serving yet */
	/*
	 * While the stream loads, the VMM may answer slowly: a short time-out, then
	 * leave it alone for a while, so the loop goes on for the other VMs.
	 */
	m = agent_api(api, "GET", "/api/v1/vm/migration", NULL, PEER_API_TIMEOUT_MS);
	if (!m) {
		pthread_mutex_lock(&a->lock);
		if ((v = vms_find(a, vm)))
			v->next_poll_ms = agent_now_ms() + PEER_API_BACKOFF_MS;
		pthread_mutex_unlock(&a->lock);
		return;
	}
	mst = jstr(m, "status");
	g = agent_api(api, "GET", "/api/v1/vm", NULL, PEER_API_TIMEOUT_MS);
	st = g ? jstr(g, "state") : "";
	if (strcmp(mst, "in-doubt") && strcmp(st, "running"))
		goto out;        /* still coming in */
	fleet_key_vm(key, sizeof(key), vm, "owner");
	if (etcd_get(e, key, &kvs, err, sizeof(err)))
		goto out;        /* next tick */
	memset(&o, 0, sizeof(o));
	if (kvs.n != 1 || fleet_owner_parse(kvs.kv[0].value, &o))
		memset(&o, 0, sizeof(o));
	etcd_kvs_free(&kvs);

	if (!strcmp(mst, "in-doubt")) {
		json_t *r = NULL;

		if (!strcmp(o.host, a->host) && o.epoch == E1) {
			r = agent_api(api, "PUT", "/api/v1/vm/migrate-resolve",
				      "{\"action\":\"resume\"}", 10000);
			if (r)
				log_info("VM %s: in doubt here, and the owner is \"%s %" PRIu64 "\": "
					 "resumed", vm, a->host, E1);
		} else if (!strcmp(o.host, from) && o.epoch == E1 - 1) {
			char okey[FLEET_KEY_MAX], vkey[FLEET_KEY_MAX], oval[FLEET_OWNER_MAX];
			struct etcd_cmp cmp;
			struct etcd_op op;
			bool won = false;

			fleet_owner_format(&o, oval, sizeof(oval));
			fleet_key_vm(okey, sizeof(okey), vm, "owner");
			fleet_key_veto(vkey, sizeof(vkey), vm, E1 - 1);
			cmp = (struct etcd_cmp){ .key = okey, .target = ETCD_VALUE,
						 .result = ETCD_EQ, .value = oval };
			op = (struct etcd_op){ .type = ETCD_OP_PUT, .key = vkey, .value = a->host };
			if (etcd_txn(e, &cmp, 1, &op, 1, &won, err, sizeof(err)))
				log_warnx("VM %s: in doubt; writing veto/%" PRIu64 ": %s; it stays "
					  "paused", vm, E1 - 1, err);
			else if (won) {
				log_info("VM %s: in doubt, the owner is still \"%s\": veto/%" PRIu64
					 " written, discarding the incoming copy", vm, oval, E1 - 1);
				r = agent_api(api, "PUT", "/api/v1/vm/migrate-resolve",
					      "{\"action\":\"discard\"}", 10000);
			}
		} else {
			log_warnx("VM %s: in doubt here, and the owner is \"%s %" PRIu64 "\": "
				  "discarding the incoming copy", vm, o.host[0] ? o.host : "(none)",
				  o.epoch);
			r = agent_api(api, "PUT", "/api/v1/vm/migrate-resolve",
				      "{\"action\":\"discard\"}", 10000);
		}
		json_decref(r);
		goto out;
	}
	/* running: the COMMIT transaction made this host the owner at E+1 */
	if (!strcmp(o.host, a->host) && o.epoch == E1) {
		bool ok = vms_put_status(a, e, vm, E1, "running", pid, NULL) == 0;

		pthread_mutex_lock(&a->lock);
		if ((v = vms_find(a, vm))) {
			char f[PATH_MAX + 8];

			if (!agent_path(f, sizeof(f), "%s/from", v->dir))
				unlink(f);
			v->incoming = false;
			snprintf(v->state, sizeof(v->state), "running");
			v->status_written = ok;
		}
		pthread_mutex_unlock(&a->lock);
		log_info("VM %s: arrived from %s and runs here at epoch %" PRIu64, vm, from, E1);
	} else {
		log_warnx("VM %s: runs here after a migration, but its owner is \"%s %" PRIu64 "\", "
			  "not \"%s %" PRIu64 "\": killing it (rule 4)", vm,
			  o.host[0] ? o.host : "(none)", o.epoch, a->host, E1);
		pthread_mutex_lock(&a->lock);
		if ((v = vms_find(a, vm)))
			vms_signal(v, SIGKILL);
		pthread_mutex_unlock(&a->lock);
	}
out:
	json_decref(m);
	json_decref(g);
}
