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

#endif
