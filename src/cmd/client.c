/*
 * client.c - `godwit status|pause|resume|shutdown --api SOCKET`: the CLI
 * client of the control API (docs/api.md), over libcurl's UNIX socket
 * support.
 *
 * Exit codes: 0 success; 1 the server refused (its "error" message is
 * printed) or could not be reached; 2 usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "godwit/api.h"

#define CLIENT_TIMEOUT_MS  10000
#define CLIENT_CONNECT_TIMEOUT_MS 10000

struct client_cmd {
	const char *name;
	const char *method;      /* "GET" or "PUT" */
	const char *path;        /* under http://localhost */
	const char *done;        /* printed on success; NULL: print the JSON */
	const char *summary;
};

static const struct client_cmd client_cmds[] = {
	{ "status",   "GET", "/api/v1/vm",          NULL,
	  "print the VM's name, state, size and uptime" },
	{ "pause",    "PUT", "/api/v1/vm/pause",    "VM paused",
	  "stop the vCPUs (the VM keeps its memory and devices)" },
	{ "resume",   "PUT", "/api/v1/vm/resume",   "VM resumed",
	  "restart the vCPUs of a paused VM" },
	{ "shutdown", "PUT", "/api/v1/vm/shutdown", "VM shutdown requested",
	  "stop the VM; `godwit run` exits with code 0" },
};

static size_t client_write(char *ptr, size_t size, size_t nmemb, void *opaque)
{
	struct api_reply *b = opaque;
	size_t n = size * nmemb;
	char *nd;

	if (b->len + n > API_CLIENT_REPLY_MAX) {
		b->overflow = true;
		return 0;
	}
	nd = realloc(b->data, b->len + n + 1);
	if (!nd)
		return 0;
	memcpy(nd + b->len, ptr, n);
	b->data = nd;
	b->len += n;
	b->data[b->len] = '\0';
	return n;
}

static void client_usage(const struct client_cmd *c, FILE *f)
{
	fprintf(f, "usage: godwit %s --api SOCKET%s\n"
		"\n%s.\n\n"
		"  --api SOCKET   the VM's API socket (godwit run --api SOCKET)\n",
		c->name, c->done ? "" : " [--json]", c->summary);
	if (!c->done)
		fprintf(f, "  --json         print compact JSON instead of indented JSON\n");
	fprintf(f, "  -h, --help     show this help\n"
		"\nExit status: 0 ok, 1 error from the VM or no VM at SOCKET, 2 usage error.\n");
}

int api_client_request(const char *who, const char *sock, const char *method,
		       const char *path, const char *body, long timeout_ms,
		       long *status, struct api_reply *reply)
{
	char errbuf[CURL_ERROR_SIZE] = "";
	struct curl_slist *hdr = NULL;
	char url[256];
	CURLcode rc;
	CURL *h;
	int ret = 1;

	if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
		fprintf(stderr, "godwit: %s: cannot initialise libcurl\n", who);
		return 1;
	}
	h = curl_easy_init();
	if (!h) {
		fprintf(stderr, "godwit: %s: cannot initialise libcurl\n", who);
		goto out_global;
	}
	snprintf(url, sizeof(url), "http://localhost%s", path);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, sock);
	curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	if (body) {
		hdr = curl_slist_append(NULL, "Content-Type: application/json");
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
	}
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)CLIENT_CONNECT_TIMEOUT_MS);
	if (timeout_ms)
		curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, client_write);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, reply);

	rc = curl_easy_perform(h);
	if (rc == CURLE_COULDNT_CONNECT) {
		long oserr = 0;

		curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &oserr);
		fprintf(stderr, "godwit: cannot connect to API socket %s: %s\n", sock,
			oserr ? strerror((int)oserr) : (errbuf[0] ? errbuf : curl_easy_strerror(rc)));
		goto out_easy;
	}
	if (rc != CURLE_OK) {
		fprintf(stderr, "godwit: %s: request to API socket %s failed: %s\n", who,
			sock, reply->overflow ? "reply too large" :
			errbuf[0] ? errbuf : curl_easy_strerror(rc));
		goto out_easy;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
	if (!reply->data) {
		reply->data = strdup("");
		if (!reply->data) {
			fprintf(stderr, "godwit: %s: out of memory\n", who);
			goto out_easy;
		}
	}
	ret = 0;
out_easy:
	curl_slist_free_all(hdr);
	curl_easy_cleanup(h);
out_global:
	curl_global_cleanup();
	return ret;
}

/* Print a server error reply: its "error" member, or the status. */
/* The server's {"error": ...}, or the bare status when the body says nothing. */
static void client_print_error(const char *who, long status, json_t *j)
{
	const char *msg = j ? json_string_value(json_object_get(j, "error")) : NULL;

	if (msg)
		fprintf(stderr, "godwit: %s: %s\n", who, msg);
	else
		fprintf(stderr, "godwit: %s: the API answered HTTP %ld\n", who, status);
}

int api_client_json(const char *who, const char *sock, const char *method, const char *path,
		    const char *body, long timeout_ms, json_t **out)
{
	struct api_reply reply = { 0 };
	long status = 0;
	json_t *j;

	*out = NULL;
	if (api_client_request(who, sock, method, path, body, timeout_ms, &status, &reply))
		return 1;
	j = reply.data ? json_loads(reply.data, 0, NULL) : NULL;
	free(reply.data);
	if (status < 200 || status > 299) {
		client_print_error(who, status, j);
		json_decref(j);
		return 1;
	}
	if (!j) {
		fprintf(stderr, "godwit: %s: invalid JSON from the API\n", who);
		return 1;
	}
	*out = j;
	return 0;
}

static int client_run(const struct client_cmd *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "api",  required_argument, NULL, 'a' },
		{ "json", no_argument,       NULL, 'j' },
		{ "help", no_argument,       NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct api_reply reply = { 0 };
	const char *sock = NULL;
	bool compact = false;
	long status = 0;
	int opt, ret;

	optind = 0;      /* full getopt reset: commands may run more than once */
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (opt) {
		case 'a':
			sock = optarg;
			break;
		case 'j':
			if (c->done)
				goto bad_option;
			compact = true;
			break;
		case 'h':
			client_usage(c, stdout);
			return 0;
		case ':':
			fprintf(stderr, "godwit: %s: option %s needs an argument\n",
				c->name, argv[optind - 1]);
			goto usage;
		default:
			goto bad_option;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "godwit: %s: unexpected argument '%s'\n", c->name, argv[optind]);
		goto usage;
	}
	if (!sock || !*sock) {
		fprintf(stderr, "godwit: %s: --api SOCKET is required\n", c->name);
		goto usage;
	}

	ret = api_client_request(c->name, sock, c->method, c->path, NULL, CLIENT_TIMEOUT_MS,
				 &status, &reply);
	if (ret)
		goto out;
	ret = 1;
	if (status < 200 || status > 299) {
		json_t *j = reply.data ? json_loads(reply.data, 0, NULL) : NULL;

		client_print_error(c->name, status, j);
		json_decref(j);
		goto out;
	}
	if (c->done) {
		printf("%s\n", c->done);
	} else {
		json_error_t jerr;
		json_t *j = json_loads(reply.data, 0, &jerr);

		if (!j) {
			fprintf(stderr, "godwit: %s: invalid JSON from the API: %s\n",
				c->name, jerr.text);
			goto out;
		}
		json_dumpf(j, stdout, JSON_REAL_PRECISION(15) |
			   (compact ? JSON_COMPACT : JSON_INDENT(2)));
		putchar('\n');
		json_decref(j);
	}
	if (fflush(stdout) == EOF) {
		fprintf(stderr, "godwit: %s: write error on stdout: %s\n", c->name,
			strerror(errno));
		goto out;
	}
	ret = 0;
out:
	free(reply.data);
	return ret;

bad_option:
	if (optopt)
		fprintf(stderr, "godwit: %s: unrecognized option '-%c'\n", c->name, optopt);
	else
		fprintf(stderr, "godwit: %s: unrecognized option '%s'\n", c->name,
			argv[optind - 1]);
usage:
	fprintf(stderr, "Try 'godwit %s --help'.\n", c->name);
	return 2;
}

/*
 * cmd_status, cmd_pause, cmd_resume, cmd_shutdown - the client commands.
 *   argc, argv: the command line from the subcommand name on (argv[0])
 * Returns the process exit code: 0, 1 (error reported by or reaching the
 * API) or 2 (usage).
 */
int cmd_status(int argc, char **argv)
{
	return client_run(&client_cmds[0], argc, argv);
}

int cmd_pause(int argc, char **argv)
{
	return client_run(&client_cmds[1], argc, argv);
}

int cmd_resume(int argc, char **argv)
{
	return client_run(&client_cmds[2], argc, argv);
}

int cmd_shutdown(int argc, char **argv)
{
	return client_run(&client_cmds[3], argc, argv);
}
