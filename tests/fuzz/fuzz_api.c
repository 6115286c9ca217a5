/*
 * fuzz_api.c - libFuzzer target for the HTTP API's request handling
 * (src/vmm/api.c, api_vm.c): the real server - api_start() on a UNIX
 * socket, libmicrohttpd driven by godwit's event loop - gets the input as
 * the raw bytes of one client connection (request line, headers, body,
 * several pipelined requests, garbage), and must answer without reading or
 * writing out of bounds or leaking.  Every reply the server sends is
 * parsed: an HTTP/1.x status line, and wherever the Content-Type is
 * application/json, a body that is one JSON object (the API's errors and
 * replies); where it is Prometheus text (GET /metrics), a page whose every
 * line is a godwit_* sample or its HELP/TYPE; the check stops at
 * libmicrohttpd's own error pages (HTML, and the connection closes).
 *
 * Production code is unchanged: the input reaches the server through a
 * socket, as a client's would.  The VM is a hand-filled struct vm (as in
 * tests/unit/test_api.c) whose pause, resume and exit are fakes
 * (api_set_vm_ops); the two handlers that would act outside the process
 * are cut at the link (-Wl,--wrap): snapshot_file_create() (a file at any
 * absolute path the body names) refuses, and migrate_start() (a connection
 * to any address) checks the address with migrate_addr_check() and
 * refuses.  Everything before those calls - routing, methods, the body's
 * size, JSON and fields, each handler's checks - is the real code.
 *
 * The first byte: bits 0-1 the VM's state (created, running, paused,
 * stopping), bit 2 pause and resume fail (-EBUSY), bit 3 (-EIO).  The
 * rest is what the client sends, then it shuts its side down.
 *   make fuzz && build-fuzz/fuzz-api -close_fd_mask=2 tests/fuzz/corpus/api
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "godwit/api.h"
#include "godwit/loop.h"
#include "godwit/migrate.h"
#include "godwit/prom.h"
#include "godwit/snapshot.h"
#include "godwit/tls.h"
#include "godwit/vm.h"

#define REPLY_MAX   (256 * 1024)
#define MAX_ITERS   20000        /* loop iterations per input before giving up */

static struct vm vm;
static struct vcpu vcpus[2];     /* only their exit counters (GET /metrics) */
static struct loop *loop;
static struct api_server *api;
static char dir[64], path[108];
static uint8_t mode;
static int client = -1;
static char reply[REPLY_MAX + 1];
static size_t reply_len;
static unsigned int iters;

/* ---- the link-time cuts (-Wl,--wrap) ---- */

int __wrap_snapshot_file_create(const char *p, struct snapshot_file *f, char *err, size_t len);
int __wrap_snapshot_file_create(const char *p, struct snapshot_file *f, char *err, size_t len)
{
	(void)p;
	(void)f;
	snprintf(err, len, "the fuzzer writes no files");
	return -EACCES;
}

int __wrap_migrate_start(struct vm *v, const struct migrate_params *p, char *err, size_t len);
int __wrap_migrate_start(struct vm *v, const struct migrate_params *p, char *err, size_t len)
{
	int ret = migrate_addr_check(p->to, err, len);

	(void)v;
	tls_creds_free(p->tls);         /* migrate_start() owns the credentials, even failing */
	if (ret)
		return ret;
	snprintf(err, len, "the fuzzer connects nowhere");
	return -EINVAL;
}

/* ---- the VM's operations ---- */

static int fake_pause(struct vm *v)
{
	if (mode & 12)
		return mode & 4 ? -EBUSY : -EIO;
	pthread_mutex_lock(&v->lock);
	v->state = VM_STATE_PAUSED;
	pthread_mutex_unlock(&v->lock);
	return 0;
}

static int fake_resume(struct vm *v)
{
	if (mode & 12)
		return mode & 4 ? -EBUSY : -EIO;
	pthread_mutex_lock(&v->lock);
	v->state = VM_STATE_RUNNING;
	pthread_mutex_unlock(&v->lock);
	return 0;
}

static void fake_request_exit(struct vm *v, int code, const char *why)
{
	(void)code;
	(void)why;
	pthread_mutex_lock(&v->lock);
	v->state = VM_STATE_STOPPING;
	pthread_mutex_unlock(&v->lock);
}

static const struct api_vm_ops fake_ops = {
	.pause = fake_pause, .resume = fake_resume, .request_exit = fake_request_exit,
};

static void fuzz_fini(void)
{
	api_stop(api);
	loop_free(loop);
	rmdir(dir);
}

static void fuzz_init(void)
{
	static const uint8_t uuid[16] = { 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0,
					  0x0f, 0xed, 0xcb, 0xa9, 0x87, 0x65, 0x43, 0x21 };

	snprintf(dir, sizeof(dir), "/tmp/fuzz-api-XXXXXX");
	if (!mkdtemp(dir))
		abort();
	snprintf(path, sizeof(path), "%s/api.sock", dir);
	snprintf(vm.cfg.name, sizeof(vm.cfg.name), "fuzz-vm");
	memcpy(vm.cfg.uuid, uuid, sizeof(uuid));
	vm.cfg.ncpus = 2;
	vm.cfg.mem_size = 256 * MiB;
	vm.cfg.cpu_model = CPU_MODEL_X86_64_V2;
	vm.cfg.kernel = "/boot/fuzz-kernel";
	vm.kvm_fd = vm.vm_fd = vm.exit_efd = -1;
	vm.vcpus = vcpus;
	for (unsigned int i = 0; i < 2; i++)
		for (int r = 0; r < VCPU_EXIT_NR; r++)
			vcpus[i].exits[r] = (uint64_t)r << (i * 40);
	pthread_mutex_init(&vm.lock, NULL);
	pthread_cond_init(&vm.cond, NULL);
	loop = loop_new();
	if (!loop || api_start(&vm, loop, path, &api))
		abort();
	api_set_vm_ops(api, &fake_ops);
	atexit(fuzz_fini);
}

/*
 * Before each sleep of the loop: take what the server sent; stop the loop
 * once it closed the connection (or after MAX_ITERS).  Never sleeps.
 */
static int fuzz_hook(struct loop *l, void *opaque)
{
	(void)opaque;
	for (;;) {
		ssize_t n = recv(client, reply + reply_len, REPLY_MAX - reply_len, MSG_DONTWAIT);

		if (n > 0) {
			reply_len += (size_t)n;
			if (reply_len < REPLY_MAX)
				continue;
		}
		if (n == 0 || reply_len == REPLY_MAX || (n < 0 && errno != EAGAIN) ||
		    ++iters > MAX_ITERS)
			loop_stop(l);
		return 0;
	}
}

/* A GET /metrics page: lines of "# HELP godwit_", "# TYPE godwit_" or "godwit_", each ended. */
static void check_metrics(const char *p, size_t len)
{
	const char *end = p + len;

	if (!len || p[len - 1] != '\n')
		abort();
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));

		if (strncmp(p, "# HELP godwit_", 14) && strncmp(p, "# TYPE godwit_", 14) &&
		    strncmp(p, "godwit_", 7)) {
			fprintf(stderr, "fuzz-api: a metrics line: %.*s\n", (int)(nl - p), p);
			abort();
		}
		p = nl + 1;
	}
}

/* Each reply: a status line, and a JSON object wherever the body is said to be JSON. */
static void check_replies(void)
{
	char *p = reply, *end = reply + reply_len;

	reply[reply_len] = '\0';
	while (p < end) {
		char *hend = strstr(p, "\r\n\r\n"), *h, *line_end;
		size_t clen = 0;
		bool json = false, have_len = false, prom = false;

		if (strncmp(p, "HTTP/1.", 7) || !hend)
			abort();        /* not an HTTP reply */
		for (h = strstr(p, "\r\n") + 2; h < hend; h = line_end + 2) {
			line_end = strstr(h, "\r\n");
			if (!strncasecmp(h, "Content-Length:", 15)) {
				clen = strtoul(h + 15, NULL, 10);
				have_len = true;
			}
			if (!strncasecmp(h, "Content-Type: application/json", 30))
				json = true;
			if (!strncasecmp(h, "Content-Type: " PROM_CONTENT_TYPE "\r\n",
					 strlen("Content-Type: " PROM_CONTENT_TYPE "\r\n")))
				prom = true;
		}
		p = hend + 4;
		if (!strncmp(p, "HTTP/1.", 7))
			continue;       /* a HEAD's reply: no body */
		if (!have_len || clen > (size_t)(end - p))
			return;         /* a HEAD's last reply, or one cut by the connection's end */
		/*
		 * Not the API's (libmicrohttpd's own error page, and the connection
		 * closes): stop there.  libmicrohttpd 0.9.75 sends the headers of the
		 * 413 for an unparsable Content-Length twice, so what follows may not
		 * be a reply.
		 */
		if (prom) {
			check_metrics(p, clen);
			p += clen;
			continue;
		}
		if (!json)
			return;
		{
			json_error_t jerr;
			json_t *j = json_loadb(p, clen, 0, &jerr);

			if (!j || !json_is_object(j)) {
				fprintf(stderr, "fuzz-api: a JSON reply that is not an object: %.*s\n",
					(int)clen, p);
				abort();
			}
			json_decref(j);
		}
		p += clen;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	static const enum vm_state states[] = {
		VM_STATE_CREATED, VM_STATE_RUNNING, VM_STATE_PAUSED, VM_STATE_STOPPING,
	};
	size_t off = 0;

	if (size < 1 || size > 128 * 1024)
		return 0;
	if (!loop)
		fuzz_init();
	mode = data[0];
	vm.state = states[mode & 3];
	client = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (client < 0 || connect(client, (struct sockaddr *)&sa, sizeof(sa)))
		abort();
	/* The whole request fits the socket buffers (the input is bounded): no waiting. */
	{
		int sz = 512 * 1024;

		setsockopt(client, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	}
	while (off < size - 1) {
		ssize_t n = send(client, data + 1 + off, size - 1 - off, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n <= 0)
			break;          /* full: the server reads the rest while the loop runs */
		off += (size_t)n;
	}
	shutdown(client, SHUT_WR);
	reply_len = 0;
	iters = 0;
	loop_set_hook(loop, fuzz_hook, NULL);
	if (loop_run(loop))
		abort();
	loop_set_hook(loop, NULL, NULL);
	close(client);
	client = -1;
	if (getenv("FUZZ_DEBUG"))       /* FUZZ_DEBUG=1: the server's replies */
		fprintf(stderr, "fuzz-api: %u iterations, %zu bytes:\n%.*s\n", iters, reply_len,
			(int)reply_len, reply);
	check_replies();
	return 0;
}
