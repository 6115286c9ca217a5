/*
 * test_api.c - the control API server and the CLI client against it.  A
 * hand-filled struct vm is served from a loop running in a thread of the
 * test; the VM operations are fakes installed with api_set_vm_ops(), so no
 * KVM is needed.  Requests go through libcurl, a raw socket, or cmd_*().
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <curl/curl.h>
#include <jansson.h>

#include "godwit/api.h"
#include "godwit/cmd.h"
#include "godwit/loop.h"
#include "godwit/migrate.h"
#include "godwit/vm.h"
#include "unit.h"

/* ---- fixture: a VM, a loop thread and a server ---- */

static struct fixture {
	char dir[64];
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct vm vm;
	struct loop *loop;
	struct api_server *api;
	int stop_efd;
	pthread_t thread;
	bool running;
	atomic_int pauses, resumes, exits;
	atomic_int pause_ret;            /* what fake_pause returns if not 0 */
	bool exit_stops_loop;            /* like godwit run: exit request ends the loop */
	int exit_code;
	char exit_why[128];
} fx;

static int fake_pause(struct vm *vm)
{
	int ret = atomic_load(&fx.pause_ret);

	atomic_fetch_add(&fx.pauses, 1);
	if (ret)
		return ret;
	pthread_mutex_lock(&vm->lock);
	vm->state = VM_STATE_PAUSED;
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

static int fake_resume(struct vm *vm)
{
	atomic_fetch_add(&fx.resumes, 1);
	pthread_mutex_lock(&vm->lock);
	vm->state = VM_STATE_RUNNING;
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

static void fake_request_exit(struct vm *vm, int code, const char *why)
{
	pthread_mutex_lock(&vm->lock);
	fx.exit_code = code;
	snprintf(fx.exit_why, sizeof(fx.exit_why), "%s", why);
	vm->state = VM_STATE_STOPPING;
	pthread_mutex_unlock(&vm->lock);
	atomic_fetch_add(&fx.exits, 1);
	if (fx.exit_stops_loop)
		loop_stop(fx.loop);
}

static const struct api_vm_ops fake_ops = {
	.pause = fake_pause,
	.resume = fake_resume,
	.request_exit = fake_request_exit,
};

static void fx_stop_cb(struct loop *l, int fd, uint32_t events, void *opaque)
{
	loop_stop(l);
}

static void *fx_loop_thread(void *opaque)
{
	CHECK_EQ(loop_run(fx.loop), 0);
	if (fx.exit_stops_loop) {
		/* What godwit run does once the loop ends. */
		api_stop(fx.api);
		fx.api = NULL;
	}
	return NULL;
}

/* A fresh directory for the socket, and the VM; no server yet. */
static bool fx_init(void)
{
	static const uint8_t uuid[16] = {
		0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0,
		0x0f, 0xed, 0xcb, 0xa9, 0x87, 0x65, 0x43, 0x21,
	};

	memset(&fx, 0, sizeof(fx));
	fx.stop_efd = -1;
	snprintf(fx.dir, sizeof(fx.dir), "/tmp/godwit-test-api-XXXXXX");
	if (!mkdtemp(fx.dir)) {
		CHECK(!"mkdtemp");
		return false;
	}
	snprintf(fx.path, sizeof(fx.path), "%s/api.sock", fx.dir);
	snprintf(fx.vm.cfg.name, sizeof(fx.vm.cfg.name), "test-vm");
	memcpy(fx.vm.cfg.uuid, uuid, sizeof(uuid));
	fx.vm.cfg.ncpus = 2;
	fx.vm.cfg.mem_size = 256 * MiB;
	fx.vm.cfg.cpu_model = CPU_MODEL_X86_64_V2;
	fx.vm.cfg.kernel = "/boot/test-kernel";
	fx.vm.state = VM_STATE_RUNNING;
	pthread_mutex_init(&fx.vm.lock, NULL);
	pthread_cond_init(&fx.vm.cond, NULL);
	fx.loop = loop_new();
	CHECK(fx.loop);
	return fx.loop != NULL;
}

/* Start the server on fx.path and the loop thread. */
static bool fx_serve(void)
{
	int ret = api_start(&fx.vm, fx.loop, fx.path, &fx.api);

	CHECK_EQ(ret, 0);
	if (ret)
		return false;
	api_set_vm_ops(fx.api, &fake_ops);
	fx.stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	CHECK(fx.stop_efd >= 0);
	CHECK_EQ(loop_add_fd(fx.loop, fx.stop_efd, EPOLLIN, fx_stop_cb, NULL), 0);
	CHECK_EQ(pthread_create(&fx.thread, NULL, fx_loop_thread, NULL), 0);
	fx.running = true;
	return true;
}

static bool fx_start(void)
{
	return fx_init() && fx_serve();
}

static void fx_finish(void)
{
	struct stat st;

	if (fx.running) {
		CHECK_EQ(write(fx.stop_efd, &(uint64_t){ 1 }, 8), 8);
		pthread_join(fx.thread, NULL);
		fx.running = false;
	}
	if (fx.api) {
		api_stop(fx.api);
		/* api_stop() unlinks the socket. */
		CHECK(lstat(fx.path, &st) < 0 && errno == ENOENT);
	}
	if (fx.stop_efd >= 0) {
		loop_del_fd(fx.loop, fx.stop_efd);
		close(fx.stop_efd);
	}
	loop_free(fx.loop);
	pthread_mutex_destroy(&fx.vm.lock);
	pthread_cond_destroy(&fx.vm.cond);
	unlink(fx.path);
	CHECK_EQ(rmdir(fx.dir), 0);
}

/* ---- an HTTP client on libcurl ---- */

struct reply {
	long status;
	char body[8192];
	size_t len;
	char allow[128];
	char ctype[128];
};

static size_t reply_body(char *p, size_t size, size_t n, void *opaque)
{
	struct reply *r = opaque;
	size_t len = size * n;

	if (r->len + len >= sizeof(r->body))
		return 0;
	memcpy(r->body + r->len, p, len);
	r->len += len;
	r->body[r->len] = '\0';
	return len;
}

static void header_value(const char *line, size_t len, const char *name,
			 char *out, size_t outsz)
{
	size_t nl = strlen(name);

	if (len <= nl + 1 || strncasecmp(line, name, nl) || line[nl] != ':')
		return;
	line += nl + 1;
	len -= nl + 1;
	while (len && (*line == ' ' || *line == '\t'))
		line++, len--;
	while (len && (line[len - 1] == '\r' || line[len - 1] == '\n'))
		len--;
	snprintf(out, outsz, "%.*s", (int)len, line);
}

static size_t reply_header(char *p, size_t size, size_t n, void *opaque)
{
	struct reply *r = opaque;

	header_value(p, size * n, "Allow", r->allow, sizeof(r->allow));
	header_value(p, size * n, "Content-Type", r->ctype, sizeof(r->ctype));
	return size * n;
}

/* Returns the curl code; r->status is the HTTP status. */
static int http(const char *method, const char *path, const char *body, struct reply *r)
{
	char url[256];
	CURLcode rc;
	CURL *h = curl_easy_init();

	memset(r, 0, sizeof(*r));
	if (!h)
		return -1;
	snprintf(url, sizeof(url), "http://localhost%s", path);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, fx.path);
	curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, reply_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, reply_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
	if (!strcmp(method, "HEAD"))
		curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	if (body)
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
	rc = curl_easy_perform(h);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
	curl_easy_cleanup(h);
	return (int)rc;
}

/* The "error" member of a JSON error reply, or NULL; caller frees the json. */
static const char *reply_error(const struct reply *r, json_t **j)
{
	*j = json_loads(r->body, 0, NULL);
	return *j ? json_string_value(json_object_get(*j, "error")) : NULL;
}

#define CHECK_ERROR(r, want_status, want_msg) do {                        \
	json_t *j_;                                                      \
	CHECK_EQ((r).status, want_status);                               \
	CHECK_STR((r).ctype, "application/json");                        \
	CHECK_STR(reply_error(&(r), &j_), want_msg);                     \
	json_decref(j_);                                                 \
} while (0)

static const char *reply_state(const struct reply *r, json_t **j)
{
	*j = json_loads(r->body, 0, NULL);
	return *j ? json_string_value(json_object_get(*j, "state")) : NULL;
}

/* ---- the socket ---- */

TEST(api_socket_mode_0600)
{
	struct stat st;
	mode_t old = umask(0);          /* the most permissive caller */

	if (!fx_start()) {
		umask(old);
		return;
	}
	CHECK_EQ(umask(old), 0);        /* api_start() restored the umask */
	CHECK_EQ(lstat(fx.path, &st), 0);
	CHECK(S_ISSOCK(st.st_mode));
	CHECK_EQ(st.st_mode & 07777, 0600);
	CHECK_EQ(st.st_uid, geteuid());
	fx_finish();
}

TEST(api_socket_in_use)
{
	struct api_server *second = NULL;
	struct loop *l2;
	struct reply r;
	struct stat before, after;

	if (!fx_start())
		return;
	CHECK_EQ(lstat(fx.path, &before), 0);
	l2 = loop_new();
	CHECK(l2);
	CHECK_EQ(api_start(&fx.vm, l2, fx.path, &second), -EADDRINUSE);
	CHECK(!second);
	/* The live server keeps its socket and still answers. */
	CHECK_EQ(lstat(fx.path, &after), 0);
	CHECK_EQ(after.st_ino, before.st_ino);
	CHECK_EQ(http("GET", "/api/v1/vm", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 200);
	loop_free(l2);
	fx_finish();
}

TEST(api_socket_stale_replaced)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct reply r;
	int fd;

	if (!fx_init())
		return;
	/* A socket file nobody listens on, as left by a crashed godwit. */
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", fx.path);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(fd >= 0);
	CHECK_EQ(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	CHECK_EQ(access(fx.path, F_OK), 0);
	if (fx_serve()) {
		CHECK_EQ(http("GET", "/api/v1/vm", NULL, &r), CURLE_OK);
		CHECK_EQ(r.status, 200);
	}
	fx_finish();
}

TEST(api_socket_path_not_a_socket)
{
	struct api_server *s = NULL;
	char buf[16] = "";
	int fd;

	if (!fx_init())
		return;
	fd = open(fx.path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	CHECK_EQ(write(fd, "keep", 4), 4);
	close(fd);
	CHECK_EQ(api_start(&fx.vm, fx.loop, fx.path, &s), -EEXIST);
	CHECK(!s);
	/* The file is left alone. */
	fd = open(fx.path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK_EQ(read(fd, buf, sizeof(buf) - 1), 4);
	CHECK_STR(buf, "keep");
	close(fd);
	CHECK_EQ(unlink(fx.path), 0);

	/* A missing directory and an over-long path fail cleanly too. */
	CHECK_EQ(api_start(&fx.vm, fx.loop, "/nonexistent-godwit-dir/api.sock", &s), -ENOENT);
	char longpath[200];
	memset(longpath, 'a', sizeof(longpath) - 1);
	longpath[0] = '/';
	longpath[sizeof(longpath) - 1] = '\0';
	CHECK_EQ(api_start(&fx.vm, fx.loop, longpath, &s), -ENAMETOOLONG);
	fx_finish();
}

/* ---- endpoints ---- */

TEST(api_get_vm)
{
	struct reply r;
	json_t *j, *v;

	if (!fx_start())
		return;
	CHECK_EQ(http("GET", "/api/v1/vm", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 200);
	CHECK_STR(r.ctype, "application/json");
	j = json_loads(r.body, 0, NULL);
	CHECK(json_is_object(j));
	CHECK_STR(json_string_value(json_object_get(j, "name")), "test-vm");
	CHECK_STR(json_string_value(json_object_get(j, "uuid")),
		  "12345678-9abc-def0-0fed-cba987654321");
	CHECK_STR(json_string_value(json_object_get(j, "state")), "running");
	CHECK_EQ(json_integer_value(json_object_get(j, "vcpus")), 2);
	CHECK_EQ(json_integer_value(json_object_get(j, "memory_bytes")), 256 * MiB);
	CHECK_STR(json_string_value(json_object_get(j, "cpu_model")),
		  cpu_model_name(CPU_MODEL_X86_64_V2));
	CHECK_STR(json_string_value(json_object_get(j, "kernel")), "/boot/test-kernel");
	v = json_object_get(j, "uptime_s");
	CHECK(json_is_real(v) && json_real_value(v) >= 0);
	CHECK_EQ(json_integer_value(json_object_get(j, "pid")), getpid());
	json_decref(j);

	/* HEAD: same status and headers, no body. */
	CHECK_EQ(http("HEAD", "/api/v1/vm", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 200);
	CHECK_EQ(r.len, 0);
	fx_finish();
}

TEST(api_pause_resume)
{
	struct reply r;
	json_t *j;

	if (!fx_start())
		return;
	CHECK_EQ(http("PUT", "/api/v1/vm/pause", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 200);
	CHECK_STR(reply_state(&r, &j), "paused");
	json_decref(j);
	CHECK_EQ(atomic_load(&fx.pauses), 1);

	CHECK_EQ(http("PUT", "/api/v1/vm/pause", NULL, &r), CURLE_OK);
	CHECK_ERROR(r, 409, "VM is already paused");
	CHECK_EQ(atomic_load(&fx.pauses), 1);

	CHECK_EQ(http("GET", "/api/v1/vm", NULL, &r), CURLE_OK);
	CHECK_STR(reply_state(&r, &j), "paused");
	json_decref(j);

	CHECK_EQ(http("PUT", "/api/v1/vm/resume", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 200);
	CHECK_STR(reply_state(&r, &j), "running");
	json_decref(j);
	CHECK_EQ(atomic_load(&fx.resumes), 1);

	CHECK_EQ(http("PUT", "/api/v1/vm/resume", NULL, &r), CURLE_OK);
	CHECK_ERROR(r, 409, "VM is not paused");
	CHECK_EQ(atomic_load(&fx.resumes), 1);
	fx_finish();
}

TEST(api_pause_errors)
{
	struct reply r;

	if (!fx_start())
		return;
	/* vm_pause() saw the VM stopping after our check. */
	atomic_store(&fx.pause_ret, -EBUSY);
	CHECK_EQ(http("PUT", "/api/v1/vm/pause", NULL, &r), CURLE_OK);
	CHECK_ERROR(r, 409, "VM is stopping");
	/* Any other failure is the server's: 500 with the reason. */
	atomic_store(&fx.pause_ret, -EIO);
	CHECK_EQ(http("PUT", "/api/v1/vm/pause", NULL, &r), CURLE_OK);
	CHECK_ERROR(r, 500, "pause failed: Input/output error");
	CHECK_EQ(atomic_load(&fx.pauses), 2);

	/* Stopping: refused before vm_pause()/vm_resume() are called. */
	pthread_mutex_lock(&fx.vm.lock);
	fx.vm.state = VM_STATE_STOPPING;
	pthread_mutex_unlock(&fx.vm.lock);
	CHECK_EQ(http("PUT", "/api/v1/vm/pause", NULL, &r), CURLE_OK);
	CHECK_ERROR(r, 409, "VM is stopping");
	CHECK_EQ(http("PUT", "/api/v1/vm/resume", NULL, &r), CURLE_OK);
	CHECK_ERROR(r, 409, "VM is stopping");
	CHECK_EQ(atomic_load(&fx.pauses), 2);
	CHECK_EQ(atomic_load(&fx.resumes), 0);
	fx_finish();
}

TEST(api_shutdown)
{
	struct reply r;
	json_t *j;

	if (!fx_start())
		return;
	CHECK_EQ(http("PUT", "/api/v1/vm/shutdown", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 202);
	CHECK_STR(reply_state(&r, &j), "stopping");
	json_decref(j);
	CHECK_EQ(atomic_load(&fx.exits), 1);
	CHECK_EQ(fx.exit_code, EXIT_POWEROFF);
	CHECK_STR(fx.exit_why, "shutdown requested over the API");
	fx_finish();
}

/*
 * As in godwit run: the exit request stops the loop in the very pass that
 * handles the request, then api_stop() runs.  The 202 must still arrive.
 */
TEST(api_shutdown_reply_survives_stop)
{
	struct reply r;
	struct stat st;

	if (!fx_init())
		return;
	fx.exit_stops_loop = true;
	if (!fx_serve())
		return;
	CHECK_EQ(http("PUT", "/api/v1/vm/shutdown", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 202);
	pthread_join(fx.thread, NULL);
	fx.running = false;
	CHECK(!fx.api);
	CHECK(lstat(fx.path, &st) < 0 && errno == ENOENT);
	fx_finish();
}

TEST(api_not_found_and_bad_method)
{
	struct reply r;

	if (!fx_start())
		return;
	CHECK_EQ(http("GET", "/api/v1/nope", NULL, &r), CURLE_OK);
	CHECK_ERROR(r, 404, "no such endpoint: /api/v1/nope");
	CHECK_EQ(http("GET", "/", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 404);
	CHECK_EQ(http("GET", "/api/v2/vm", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 404);
	CHECK_EQ(http("GET", "/api/v1/vm/", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 404);

	CHECK_EQ(http("GET", "/api/v1/vm/pause", NULL, &r), CURLE_OK);
	CHECK_ERROR(r, 405, "method GET not allowed on /api/v1/vm/pause");
	CHECK_STR(r.allow, "PUT");
	CHECK_EQ(http("PUT", "/api/v1/vm", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 405);
	CHECK_STR(r.allow, "GET, HEAD");
	CHECK_EQ(http("DELETE", "/api/v1/vm/shutdown", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 405);
	CHECK_STR(r.allow, "PUT");
	CHECK_EQ(atomic_load(&fx.exits), 0);
	fx_finish();
}

TEST(api_request_body)
{
	struct reply r;
	json_t *j;
	const char *msg;

	if (!fx_start())
		return;
	CHECK_EQ(http("PUT", "/api/v1/vm/pause", "{bad", &r), CURLE_OK);
	CHECK_EQ(r.status, 400);
	msg = reply_error(&r, &j);
	CHECK(msg && !strncmp(msg, "invalid JSON in request body", 28));
	json_decref(j);
	CHECK_EQ(http("PUT", "/api/v1/vm/pause", "[1]", &r), CURLE_OK);
	CHECK_ERROR(r, 400, "request body must be a JSON object");
	CHECK_EQ(http("PUT", "/api/v1/vm/pause", "{\"force\": true}", &r), CURLE_OK);
	CHECK_ERROR(r, 400, "unknown field \"force\" in request body");
	CHECK_EQ(atomic_load(&fx.pauses), 0);

	/* An empty object, or an empty body, is fine. */
	CHECK_EQ(http("PUT", "/api/v1/vm/pause", "{}", &r), CURLE_OK);
	CHECK_EQ(r.status, 200);
	CHECK_EQ(http("PUT", "/api/v1/vm/resume", "", &r), CURLE_OK);
	CHECK_EQ(r.status, 200);
	CHECK_EQ(atomic_load(&fx.pauses), 1);
	CHECK_EQ(atomic_load(&fx.resumes), 1);
	fx_finish();
}

/* Send raw bytes, read the reply until the server closes or 5 s pass. */
static int raw_request(const char *head, size_t body_len, bool chunked,
		       char *out, size_t outsz)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { .tv_sec = 5 };
	static char chunk[16384];
	size_t got = 0;
	int fd;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", fx.path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto err;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	memset(chunk, 'x', sizeof(chunk));
	if (send(fd, head, strlen(head), MSG_NOSIGNAL) < 0)
		goto err;
	/* The server may answer and close before the whole body is sent. */
	while (body_len) {
		size_t n = MIN(body_len, sizeof(chunk));
		char hdr[32];

		if (chunked) {
			snprintf(hdr, sizeof(hdr), "%zx\r\n", n);
			if (send(fd, hdr, strlen(hdr), MSG_NOSIGNAL) < 0)
				break;
		}
		if (send(fd, chunk, n, MSG_NOSIGNAL) < 0)
			break;
		if (chunked && send(fd, "\r\n", 2, MSG_NOSIGNAL) < 0)
			break;
		body_len -= n;
	}
	if (!body_len && chunked)
		(void)!send(fd, "0\r\n\r\n", 5, MSG_NOSIGNAL);
	while (got < outsz - 1) {
		ssize_t n = recv(fd, out + got, outsz - 1 - got, 0);

		if (n <= 0)
			break;
		got += (size_t)n;
		if (strstr(out, "\r\n\r\n") && strchr(strstr(out, "\r\n\r\n") + 4, '\n'))
			break;          /* headers and a one-line JSON body */
		out[got] = '\0';
	}
	out[got] = '\0';
	close(fd);
	return 0;
err:
	if (fd >= 0)
		close(fd);
	return -1;
}

TEST(api_body_too_large)
{
	char head[256], out[4096];
	struct reply r;
	char *big;

	if (!fx_start())
		return;
	/* Declared too large: refused before the body is read. */
	big = malloc(300 * 1024 + 1);
	CHECK(big);
	if (big) {
		memset(big, ' ', 300 * 1024);
		big[0] = '{';
		big[300 * 1024 - 1] = '}';
		big[300 * 1024] = '\0';
		CHECK_EQ(http("PUT", "/api/v1/vm/pause", big, &r), CURLE_OK);
		CHECK_ERROR(r, 413, "request body is larger than 262144 bytes");
		free(big);
	}
	/* The same by hand: the whole body is read (and dropped) first. */
	snprintf(head, sizeof(head), "PUT /api/v1/vm/pause HTTP/1.1\r\nHost: localhost\r\n"
		 "Content-Length: %d\r\n\r\n", 300 * 1024);
	CHECK_EQ(raw_request(head, 300 * 1024, false, out, sizeof(out)), 0);
	CHECK(!strncmp(out, "HTTP/1.1 413 ", 13));
	/* A client waiting for "100 Continue" gets the 413 instead. */
	snprintf(head, sizeof(head), "PUT /api/v1/vm/pause HTTP/1.1\r\nHost: localhost\r\n"
		 "Content-Length: %d\r\nExpect: 100-continue\r\n\r\n", 300 * 1024);
	CHECK_EQ(raw_request(head, 0, false, out, sizeof(out)), 0);
	CHECK(!strncmp(out, "HTTP/1.1 413 ", 13));
	CHECK(strstr(out, "{\"error\":\"request body is larger than 262144 bytes\"}"));
	/* Chunked, no length announced: refused once it passes the limit. */
	snprintf(head, sizeof(head), "PUT /api/v1/vm/pause HTTP/1.1\r\nHost: localhost\r\n"
		 "Transfer-Encoding: chunked\r\n\r\n");
	CHECK_EQ(raw_request(head, 300 * 1024, true, out, sizeof(out)), 0);
	CHECK(!strncmp(out, "HTTP/1.1 413 ", 13));
	CHECK(strstr(out, "{\"error\":\"request body is larger than 262144 bytes\"}"));
	CHECK_EQ(atomic_load(&fx.pauses), 0);

	/* The server is still fine afterwards. */
	CHECK_EQ(http("GET", "/api/v1/vm", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 200);
	fx_finish();
}

TEST(api_raw_http10_request)
{
	char out[4096];

	if (!fx_start())
		return;
	/* No libcurl: the plain protocol, as nc or socat would speak it. */
	CHECK_EQ(raw_request("GET /api/v1/vm HTTP/1.0\r\n\r\n", 0, false, out, sizeof(out)), 0);
	CHECK(!strncmp(out, "HTTP/1.", 7) && strstr(out, " 200 "));
	CHECK(strstr(out, "\"name\":\"test-vm\""));
	fx_finish();
}

/* ---- the CLI client ---- */

struct captured {
	int ret;
	char out[4096];
	char err[4096];
};

static void read_all(int fd, char *buf, size_t sz)
{
	ssize_t n;

	lseek(fd, 0, SEEK_SET);
	n = read(fd, buf, sz - 1);
	buf[n > 0 ? n : 0] = '\0';
}

/* Run a cmd_*() with stdout and stderr captured. */
static void run_cmd(int (*cmd)(int, char **), struct captured *c, int argc, char **argv)
{
	char tout[] = "/tmp/godwit-test-out-XXXXXX", terr[] = "/tmp/godwit-test-err-XXXXXX";
	int fo = mkstemp(tout), fe = mkstemp(terr);
	int so = dup(1), se = dup(2);

	memset(c, 0, sizeof(*c));
	CHECK(fo >= 0 && fe >= 0 && so >= 0 && se >= 0);
	unlink(tout);
	unlink(terr);
	fflush(stdout);
	fflush(stderr);
	dup2(fo, 1);
	dup2(fe, 2);
	c->ret = cmd(argc, argv);
	fflush(stdout);
	fflush(stderr);
	dup2(so, 1);
	dup2(se, 2);
	close(so);
	close(se);
	read_all(fo, c->out, sizeof(c->out));
	read_all(fe, c->err, sizeof(c->err));
	close(fo);
	close(fe);
}

TEST(api_client_commands)
{
	struct captured c;
	json_t *j;

	if (!fx_start())
		return;
	{
		char *argv[] = { "status", "--api", fx.path, "--json", NULL };
		run_cmd(cmd_status, &c, 4, argv);
		CHECK_EQ(c.ret, 0);
		CHECK(!strchr(c.out, '\n') || strchr(c.out, '\n') == c.out + strlen(c.out) - 1);
		j = json_loads(c.out, 0, NULL);
		CHECK_STR(json_string_value(json_object_get(j, "name")), "test-vm");
		json_decref(j);
	}
	{
		char *argv[] = { "status", "--api", fx.path, NULL };
		run_cmd(cmd_status, &c, 3, argv);
		CHECK_EQ(c.ret, 0);
		CHECK(strstr(c.out, "\n  \"name\": \"test-vm\",\n"));   /* indented */
	}
	{
		char *argv[] = { "pause", "--api", fx.path, NULL };
		run_cmd(cmd_pause, &c, 3, argv);
		CHECK_EQ(c.ret, 0);
		CHECK_STR(c.out, "VM paused\n");
		run_cmd(cmd_pause, &c, 3, argv);
		CHECK_EQ(c.ret, 1);
		CHECK_STR(c.out, "");
		CHECK(strstr(c.err, "godwit: pause: VM is already paused\n"));
	}
	{
		char *argv[] = { "resume", "--api=x", "--api", fx.path, NULL };  /* last wins */
		run_cmd(cmd_resume, &c, 4, argv);
		CHECK_EQ(c.ret, 0);
		CHECK_STR(c.out, "VM resumed\n");
	}
	{
		char *argv[] = { "shutdown", "--api", fx.path, NULL };
		run_cmd(cmd_shutdown, &c, 3, argv);
		CHECK_EQ(c.ret, 0);
		CHECK_STR(c.out, "VM shutdown requested\n");
		CHECK_EQ(atomic_load(&fx.exits), 1);
	}
	fx_finish();
}

TEST(api_client_errors)
{
	char path[] = "/tmp/godwit-test-nosock-XXXXXX";
	struct captured c;
	int fd;

	{
		char *argv[] = { "status", NULL };
		run_cmd(cmd_status, &c, 1, argv);
		CHECK_EQ(c.ret, 2);
		CHECK(strstr(c.err, "godwit: status: --api SOCKET is required"));
	}
	{
		char *argv[] = { "pause", "--api", "/x", "--json", NULL };  /* status only */
		run_cmd(cmd_pause, &c, 4, argv);
		CHECK_EQ(c.ret, 2);
		CHECK(strstr(c.err, "unrecognized option '--json'"));
	}
	{
		char *argv[] = { "pause", "--api", "/x", "extra", NULL };
		run_cmd(cmd_pause, &c, 4, argv);
		CHECK_EQ(c.ret, 2);
	}
	{
		char *argv[] = { "resume", "--api", NULL };
		run_cmd(cmd_resume, &c, 2, argv);
		CHECK_EQ(c.ret, 2);
	}
	{
		char *argv[] = { "status", "--help", NULL };
		run_cmd(cmd_status, &c, 2, argv);
		CHECK_EQ(c.ret, 0);
		CHECK(strstr(c.out, "usage: godwit status --api SOCKET"));
	}
	{
		char *argv[] = { "status", "--api", "/nonexistent-godwit/api.sock", NULL };
		run_cmd(cmd_status, &c, 3, argv);
		CHECK_EQ(c.ret, 1);
		CHECK_STR(c.err, "godwit: cannot connect to API socket "
			  "/nonexistent-godwit/api.sock: No such file or directory\n");
	}
	/* A stale socket: connection refused. */
	fd = mkstemp(path);
	CHECK(fd >= 0);
	close(fd);
	unlink(path);
	{
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		char *argv[] = { "shutdown", "--api", path, NULL };
		int s = socket(AF_UNIX, SOCK_STREAM, 0);

		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
		CHECK_EQ(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
		close(s);
		run_cmd(cmd_shutdown, &c, 3, argv);
		CHECK_EQ(c.ret, 1);
		CHECK(strstr(c.err, "cannot connect to API socket") &&
		      strstr(c.err, "Connection refused"));
		unlink(path);
	}
}

/*
 * The commit gate's endpoints without a migration: PUT /vm/migrate-commit
 * checks its body, then says that nothing waits at the gate (409); "gate"
 * in PUT /vm/migrate must be a boolean; GET /vm/migration has "gate" and
 * "dest_refused"; godwit migrate-commit needs --commit or --abort.
 */
TEST(api_migrate_commit_gate)
{
	struct captured c;
	struct reply r;
	json_t *j;

	if (!fx_start())
		return;
	CHECK_EQ(http("PUT", "/api/v1/vm/migrate-commit", NULL, &r), CURLE_OK);
	CHECK_ERROR(r, 400, "\"commit\" (true: send COMMIT, false: abort and resume the VM "
		    "here) is required");
	CHECK_EQ(http("PUT", "/api/v1/vm/migrate-commit", "{\"commit\": 1}", &r), CURLE_OK);
	CHECK_ERROR(r, 400, "\"commit\" (true: send COMMIT, false: abort and resume the VM "
		    "here) is required");
	CHECK_EQ(http("PUT", "/api/v1/vm/migrate-commit", "{\"commit\": true, \"x\": 1}", &r),
		 CURLE_OK);
	CHECK_ERROR(r, 400, "unknown field \"x\" in request body");
	CHECK_EQ(http("PUT", "/api/v1/vm/migrate-commit", "{\"commit\": true}", &r), CURLE_OK);
	CHECK_ERROR(r, 409, "no migration is waiting at the commit gate: no outgoing migration "
		    "here");
	CHECK_EQ(http("PUT", "/api/v1/vm/migrate-commit", "{\"commit\": false}", &r), CURLE_OK);
	CHECK_EQ(r.status, 409);
	CHECK_EQ(http("GET", "/api/v1/vm/migrate-commit", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 405);
	CHECK_EQ(http("PUT", "/api/v1/vm/migrate", "{\"to\": \"unix:/tmp/x.sock\", \"gate\": 1}",
		      &r), CURLE_OK);
	CHECK_ERROR(r, 400, "\"gate\" must be true or false");
	CHECK_EQ(http("GET", "/api/v1/vm/migration", NULL, &r), CURLE_OK);
	CHECK_EQ(r.status, 200);
	j = json_loads(r.body, 0, NULL);
	CHECK_STR(json_string_value(json_object_get(j, "status")), "none");
	CHECK(json_is_false(json_object_get(j, "gate")));
	CHECK(json_is_false(json_object_get(j, "dest_refused")));
	json_decref(j);
	CHECK_STR(migrate_status_name(MIG_COMMIT_WAIT), "commit-wait");
	CHECK(!migrate_status_final(MIG_COMMIT_WAIT));
	{
		char *argv[] = { "migrate-commit", "--api", fx.path, NULL };
		run_cmd(cmd_migrate_commit, &c, 3, argv);
		CHECK_EQ(c.ret, 2);
		CHECK(strstr(c.err, "godwit: migrate-commit: --commit or --abort is required"));
	}
	{
		char *argv[] = { "migrate-commit", "--api", fx.path, "--commit", "--abort", NULL };
		run_cmd(cmd_migrate_commit, &c, 5, argv);
		CHECK_EQ(c.ret, 2);
		CHECK(strstr(c.err, "give --commit or --abort, once"));
	}
	{
		char *argv[] = { "migrate-resolve", "--api", fx.path, "--commit", NULL };
		run_cmd(cmd_migrate_resolve, &c, 4, argv);
		CHECK_EQ(c.ret, 2);
		CHECK(strstr(c.err, "unrecognized option '--commit'"));
	}
	{
		char *argv[] = { "migrate-commit", "--api", fx.path, "--commit", NULL };
		run_cmd(cmd_migrate_commit, &c, 4, argv);
		CHECK_EQ(c.ret, 1);
		CHECK_STR(c.out, "");
		CHECK(strstr(c.err, "no migration is waiting at the commit gate"));
	}
	{
		char *argv[] = { "migrate-commit", "--help", NULL };
		run_cmd(cmd_migrate_commit, &c, 2, argv);
		CHECK_EQ(c.ret, 0);
		CHECK(strstr(c.out, "usage: godwit migrate-commit --api SOCKET --commit|--abort"));
	}
	fx_finish();
}
