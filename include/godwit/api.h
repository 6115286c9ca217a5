/*
 * api.h - the HTTP/1.1 JSON control API on a UNIX socket (server side) and
 * the CLI client commands that speak to it.
 */
#ifndef GODWIT_API_H
#define GODWIT_API_H

#include "godwit/common.h"

struct vm;
struct loop;
struct api_server;

/*
 * api_start - create the socket at path (mode 0600; refuses a path where a
 * server is listening, replaces a stale socket file, refuses other files),
 * and serve it from loop.
 * Returns 0 and sets *out, or -errno with a message logged.
 */
int api_start(struct vm *vm, struct loop *loop, const char *path,
	      struct api_server **out) __must_check;
/* Stop serving and unlink the socket. */
void api_stop(struct api_server *s);

/*
 * The VM operations the API calls, from the loop thread.  The defaults are
 * vm_pause(), vm_resume() and vm_request_exit(); tests replace them.
 */
struct api_vm_ops {
	int (*pause)(struct vm *vm);
	int (*resume)(struct vm *vm);
	void (*request_exit)(struct vm *vm, int code, const char *why);
};
/* Use ops (which must outlive s) instead of the defaults; NULL restores them. */
void api_set_vm_ops(struct api_server *s, const struct api_vm_ops *ops);

/* `godwit status|pause|resume|shutdown --api SOCKET`; return an exit code. */
int cmd_status(int argc, char **argv);
int cmd_pause(int argc, char **argv);
int cmd_resume(int argc, char **argv);
int cmd_shutdown(int argc, char **argv);

/* A reply body read by api_client_request(): NUL-terminated once complete. */
struct api_reply {
	char *data;
	size_t len;
	bool overflow;           /* longer than API_CLIENT_REPLY_MAX */
};
#define API_CLIENT_REPLY_MAX (1024 * 1024)

/*
 * api_client_request - one HTTP request to a godwit API socket (libcurl).
 *   who:        the command's name, for messages ("pause", "snapshot")
 *   method, path: e.g. "PUT", "/api/v1/vm/pause"
 *   body:       a JSON body (sent with Content-Type: application/json), or NULL
 *   timeout_ms: the whole request's limit; 0 for none (connecting is always
 *               limited to 10 s)
 *   status, reply: the HTTP status and the body (free reply->data)
 * Returns 0, or 1 after printing why (socket missing or refused, failure).
 */
int api_client_request(const char *who, const char *sock, const char *method,
		       const char *path, const char *body, long timeout_ms,
		       long *status, struct api_reply *reply);
/*
 * api_client_json - api_client_request() for a 2xx JSON reply: *out is the
 * decoded object (json_decref it).  A non-2xx answer prints the server's
 * "error" ("godwit: WHO: ...") and a reply that is not JSON says so.
 * Returns 0, or 1 after printing why.
 */
struct json_t;
int api_client_json(const char *who, const char *sock, const char *method, const char *path,
		    const char *body, long timeout_ms, struct json_t **out);

#endif
