/*
 * web.c - the fleet's page (godwitd --web HOST:PORT, docs/fleet.md "The
 * page"): plain HTTP, read-only, served by libmicrohttpd from one thread of
 * its own:
 *   GET /                  the page (src/agent/web/, built into this file)
 *   GET /app.js, /style.css
 *   GET /api/fleet         the fleet as web_json.c builds it from one range
 *                          read of /godwit/ (cached for WEB_CACHE_MS)
 *   GET /api/migrations/VM/timeline.svg   the picture of VM's last migration,
 *                          from its record in etcd (any agent can draw it)
 *
 * Threads: everything here runs in libmicrohttpd's one polling thread, with
 * its own etcd client; nothing of struct agent is read but its options (set
 * before the thread starts), so the reconcile loop's lock is never taken.
 * An etcd read blocks the thread for at most WEB_ETCD_MS.
 *
 * The page is for reading only: no request changes anything.  Requests whose
 * Host is a name other than localhost, this agent's --web host or its fleet
 * name are refused (a DNS-rebinding page could otherwise read the fleet).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "godwit/etcd.h"
#include "godwit/log.h"
#include "godwit/timeline.h"
#include "agent.h"

#define WEB_CACHE_MS      500
#define WEB_ETCD_MS       1500
#define WEB_CONNECTIONS   32U

/*
 * The page's files, taken into .rodata as they are (the Makefile makes web.o
 * depend on them): no generated source, nothing fetched from elsewhere.
 */
#define WEB_ASSET(sym, file)                                                   \
	__asm__(".pushsection .rodata\n"                                       \
		".balign 16\n"                                                 \
		".globl " #sym "\n.hidden " #sym "\n" #sym ":\n"               \
		".incbin \"" file "\"\n"                                       \
		".globl " #sym "_end\n.hidden " #sym "_end\n" #sym "_end:\n"   \
		".popsection\n")
WEB_ASSET(web_index_html, "src/agent/web/index.html");
WEB_ASSET(web_app_js, "src/agent/web/app.js");
WEB_ASSET(web_style_css, "src/agent/web/style.css");
extern const char web_index_html[], web_index_html_end[];
extern const char web_app_js[], web_app_js_end[];
extern const char web_style_css[], web_style_css_end[];

static const struct web_file {
	const char *url, *type, *start, *end;
} web_files[] = {
	{ "/", "text/html; charset=utf-8", web_index_html, web_index_html_end },
	{ "/index.html", "text/html; charset=utf-8", web_index_html, web_index_html_end },
	{ "/app.js", "text/javascript; charset=utf-8", web_app_js, web_app_js_end },
	{ "/style.css", "text/css; charset=utf-8", web_style_css, web_style_css_end },
};

static struct MHD_Daemon *web_mhd;
static struct etcd *web_etcd;
static struct agent *web_agent;
static char web_host[AGENT_ADDR_MAX];
/* The last /api/fleet answer (the polling thread's alone). */
static char *web_cache;
static uint64_t web_cache_ms;

int web_parse_addr(const char *s, char *host, size_t hlen, unsigned int *port)
{
	const char *colon = strrchr(s, ':');
	unsigned long p;
	char *end;
	size_t hl;

	if (!colon)
		return -EINVAL;
	hl = (size_t)(colon - s);
	if (s[0] == '[') {
		if (hl < 3 || s[hl - 1] != ']' || hl - 2 >= hlen)
			return -EINVAL;
		memcpy(host, s + 1, hl - 2);
		host[hl - 2] = '\0';
	} else {
		if (!hl || hl >= hlen || memchr(s, ':', hl))
			return -EINVAL;
		memcpy(host, s, hl);
		host[hl] = '\0';
	}
	errno = 0;
	p = strtoul(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || colon[1] == '-' || colon[1] == '+' || !p ||
	    p > 65535)
		return -EINVAL;
	*port = (unsigned int)p;
	return 0;
}

/* Is the request's Host one this page answers to? */
static bool web_host_ok(struct MHD_Connection *c)
{
	const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
	char name[AGENT_ADDR_MAX];
	unsigned int port;
	unsigned char buf[sizeof(struct in6_addr)];

	if (!h)
		return true;     /* HTTP/1.0: no name to rebind */
	if (web_parse_addr(h, name, sizeof(name), &port)) {
		if (strlen(h) >= sizeof(name) || strchr(h, ':'))
			return false;
		snprintf(name, sizeof(name), "%s", h);
	}
	return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1 ||
	       !strcasecmp(name, "localhost") || !strcasecmp(name, web_host) ||
	       !strcasecmp(name, web_agent->host);
}

static enum MHD_Result web_send(struct MHD_Connection *c, unsigned int status, const char *type,
				const char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, mode);
	enum MHD_Result ret;

	if (!r) {
		if (mode == MHD_RESPMEM_MUST_FREE)
			free((void *)body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
	MHD_add_response_header(r, "Content-Security-Policy",
				"default-src 'none'; script-src 'self'; style-src 'self'; "
				"img-src 'self'; connect-src 'self'; base-uri 'none'; "
				"form-action 'none'; frame-ancestors 'none'");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result web_error(struct MHD_Connection *c, unsigned int status, const char *msg)
{
	json_t *j = json_pack("{s:s}", "error", msg);
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;

	json_decref(j);
	if (!s)
		return MHD_NO;
	return web_send(c, status, "application/json", s, strlen(s), MHD_RESPMEM_MUST_FREE);
}

static int web_etcd_ready(char *err, size_t len)
{
	if (web_etcd)
		return 0;
	return etcd_open(web_agent->etcd_urls, web_agent->etcd_tls_dir, WEB_ETCD_MS, &web_etcd,
			 err, len);
}

static enum MHD_Result web_fleet(struct MHD_Connection *c)
{
	struct etcd_kvs kvs = { 0 };
	char err[AGENT_ERR_MAX] = "";
	json_t *j;
	char *s;
	int r;

	if (!web_cache || agent_now_ms() - web_cache_ms >= WEB_CACHE_MS) {
		r = web_etcd_ready(err, sizeof(err));
		if (!r)
			r = etcd_get_prefix(web_etcd, FLEET_PREFIX, &kvs, err, sizeof(err));
		if (r) {
			char msg[AGENT_ERR_MAX + 64];

			snprintf(msg, sizeof(msg), "cannot read the fleet from etcd: %s", err);
			return web_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
		}
		j = web_fleet_json(&kvs, web_agent->host);
		etcd_kvs_free(&kvs);
		s = j ? json_dumps(j, JSON_COMPACT) : NULL;
		json_decref(j);
		if (!s)
			return web_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
		free(web_cache);
		web_cache = s;
		web_cache_ms = agent_now_ms();
	}
	return web_send(c, MHD_HTTP_OK, "application/json", web_cache, strlen(web_cache),
			MHD_RESPMEM_MUST_COPY);
}

/* GET /api/migrations/VM/timeline.svg (vm: the name in the URL, checked here). */
static enum MHD_Result web_timeline(struct MHD_Connection *c, const char *vm)
{
	char key[FLEET_KEY_MAX], err[AGENT_ERR_MAX] = "";
	struct etcd_kvs kvs = { 0 };
	json_t *rec, *rep;
	const char *phase;
	char *svg = NULL;
	size_t len = 0;
	int r;

	if (!fleet_name_ok(vm) || fleet_key_vm(key, sizeof(key), vm, "migration"))
		return web_error(c, MHD_HTTP_NOT_FOUND, "not a VM name");
	r = web_etcd_ready(err, sizeof(err));
	if (!r)
		r = etcd_get(web_etcd, key, &kvs, err, sizeof(err));
	if (r)
		return web_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "cannot read etcd");
	rec = kvs.n == 1 ? json_loads(kvs.kv[0].value, JSON_REJECT_DUPLICATES, NULL) : NULL;
	etcd_kvs_free(&kvs);
	phase = json_string_value(json_object_get(rec, "phase"));
	if (!phase || (strcmp(phase, "done") && strcmp(phase, "failed"))) {
		json_decref(rec);
		return web_error(c, MHD_HTTP_NOT_FOUND, "no ended migration of this VM");
	}
	rep = web_record_report(rec);
	json_decref(rec);
	if (!rep)
		return web_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	if (!json_array_size(json_object_get(rep, "history"))) {
		json_decref(rep);
		return web_error(c, MHD_HTTP_NOT_FOUND, "its report has no per-round history");
	}
	r = timeline_svg_buf(rep, &svg, &len, err, sizeof(err));
	json_decref(rep);
	if (r) {
		char msg[AGENT_ERR_MAX + 64];

		snprintf(msg, sizeof(msg), "cannot draw its timeline: %s", err);
		return web_error(c, MHD_HTTP_UNPROCESSABLE_CONTENT, msg);
	}
	return web_send(c, MHD_HTTP_OK, "image/svg+xml", svg, len, MHD_RESPMEM_MUST_FREE);
}

static enum MHD_Result web_handle(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version, const char *data,
				  size_t *size, void **ctx)
{
	static const char mig[] = "/api/migrations/", svg[] = "/timeline.svg";

	(void)cls;
	(void)version;
	(void)data;
	if (!http_request_whole(ctx, size))
		return MHD_YES;
	if (strcmp(method, "GET") && strcmp(method, "HEAD"))
		return web_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "this page is read-only: GET only");
	if (!web_host_ok(c))
		return web_error(c, MHD_HTTP_MISDIRECTED_REQUEST, "unknown Host");
	for (size_t i = 0; i < ARRAY_SIZE(web_files); i++)
		if (!strcmp(url, web_files[i].url))
			return web_send(c, MHD_HTTP_OK, web_files[i].type, web_files[i].start,
					(size_t)(web_files[i].end - web_files[i].start),
					MHD_RESPMEM_PERSISTENT);
	if (!strcmp(url, "/api/fleet"))
		return web_fleet(c);
	if (!strncmp(url, mig, sizeof(mig) - 1)) {
		const char *vm = url + sizeof(mig) - 1, *end = strchr(vm, '/');
		char name[FLEET_NAME_MAX];

		if (end && (size_t)(end - vm) < sizeof(name) && !strcmp(end, svg)) {
			memcpy(name, vm, (size_t)(end - vm));
			name[end - vm] = '\0';
			return web_timeline(c, name);
		}
	}
	return web_error(c, MHD_HTTP_NOT_FOUND, "no such page");
}

int web_start(struct agent *a)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV | AI_PASSIVE }, *res = NULL;
	char port_s[8];
	unsigned int port;
	int fd = -1, one = 1, r;

	if (!a->web)
		return 0;
	web_agent = a;
	if (web_parse_addr(a->web, web_host, sizeof(web_host), &port))
		return -EINVAL;
	snprintf(port_s, sizeof(port_s), "%u", port);
	r = getaddrinfo(web_host, port_s, &hints, &res);
	if (r) {
		log_warnx("godwitd: --web %s: %s", a->web, gai_strerror(r));
		return -EINVAL;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(fd, res->ai_addr, res->ai_addrlen) || listen(fd, 16)) {
		log_warn("godwitd: --web %s", a->web);
		if (fd >= 0)
			close(fd);
		freeaddrinfo(res);
		return -EIO;
	}
	freeaddrinfo(res);
	web_mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL,
				   NULL, web_handle, NULL,
				   MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
				   MHD_OPTION_CONNECTION_LIMIT, WEB_CONNECTIONS,
				   MHD_OPTION_CONNECTION_TIMEOUT, 10U,
				   MHD_OPTION_END);
	if (!web_mhd) {
		log_warnx("godwitd: cannot start the page's HTTP server on %s", a->web);
		close(fd);
		return -EIO;
	}
	log_info("godwitd: the fleet's page at http://%s/", a->web);
	return 0;
}

void web_stop(void)
{
	if (web_mhd)
		MHD_stop_daemon(web_mhd);
	web_mhd = NULL;
	etcd_close(web_etcd);
	web_etcd = NULL;
	free(web_cache);
	web_cache = NULL;
}
