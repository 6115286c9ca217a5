/*
 * api_int.h - what the control API's server (api.c: the socket, MHD,
 * routing), its /api/v1 handlers (api_vm.c) and GET /metrics
 * (api_metrics.c) share.  Internal to src/vmm.
 */
#ifndef GODWIT_API_INT_H
#define GODWIT_API_INT_H

#include <sys/types.h>

#include <jansson.h>
#include <microhttpd.h>

#include "godwit/api.h"

#define API_PREFIX          "/api/v1"

struct api_server {
	struct vm *vm;
	struct loop *loop;
	const struct api_vm_ops *ops;
	struct MHD_Daemon *mhd;
	int mhd_epfd;            /* MHD's epoll fd, registered in loop */
	long timer;              /* loop timer for MHD_get_timeout(); 0: none */
	char *path;
	dev_t dev;               /* the socket file we bound: unlink only it */
	ino_t ino;
	struct MHD_Connection *conn;  /* the request being handled (query arguments) */
};

/* ---- handlers: return an HTTP status and set *out (NULL: no body) ---- */

/* body: the request's JSON object (only fields the route lists), or NULL. */
typedef unsigned int (*api_handler_fn)(struct api_server *s, json_t *body, json_t **out);

struct api_route {
	const char *path;        /* after API_PREFIX */
	const char *method;
	const char *allow;       /* the Allow header of a 405 on this path */
	api_handler_fn fn;
	const char *const *fields; /* body fields the endpoint takes; NULL: none */
};
extern const struct api_route api_routes[];
extern const size_t api_nr_routes;

/* The VM's state as the API says it: "fenced" for a running VM a fence holds (api_vm.c). */
const char *api_vm_state_name(struct vm *vm);

/* GET /metrics (api_metrics.c): the page, *len bytes, malloc()ed; NULL with err set. */
char *api_metrics_page(struct api_server *s, size_t *len, char *err, size_t errlen);

/* Set *out to {"error": message} and return status. */
__attribute__((format(printf, 3, 4)))
unsigned int api_error(json_t **out, unsigned int status, const char *fmt, ...);

#endif
