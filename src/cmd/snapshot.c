/*
 * snapshot.c - `godwit snapshot --api SOCKET --out FILE [--resume]`: ask a
 * running godwit to write its VM to FILE (PUT /api/v1/vm/snapshot,
 * docs/api.md) and print what it wrote.  A relative FILE is made absolute
 * here, against this command's working directory, since the VM's process
 * may have another.
 *
 * Exit codes: 0 written; 1 the VM refused or failed (its error is
 * printed) or could not be reached; 2 usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "godwit/cmd.h"
#include "godwit/common.h"

#define SNAP_CONNECT_TIMEOUT_MS 10000
#define SNAP_REPLY_MAX          (64 * 1024)

static const char snapshot_usage[] =
"usage: godwit snapshot --api SOCKET --out FILE [--resume]\n"
"\n"
"Pause the VM served at SOCKET, write its whole state (configuration, vCPUs,\n"
"devices, RAM) to FILE (mode 0600, replaced only once complete and synced),\n"
"then stop the VM (godwit run exits with status 0) or, with --resume, let it\n"
"go on.  `godwit restore --from FILE` starts it again.\n"
"\n"
"  --api SOCKET   the VM's API socket (godwit run --api SOCKET)\n"
"  --out FILE     the snapshot file\n"
"  --resume       keep the VM running after the snapshot\n"
"  --json         print the API's reply as JSON\n"
"  -h, --help     show this help\n"
"\n"
"Exit status: 0 written, 1 error from the VM or no VM at SOCKET, 2 usage error.\n";

struct snap_buf {
	char *data;
	size_t len;
};

static size_t snap_write_cb(char *ptr, size_t size, size_t nmemb, void *opaque)
{
	struct snap_buf *b = opaque;
	size_t n = size * nmemb;
	char *nd;

	if (b->len + n > SNAP_REPLY_MAX)
		return 0;
	nd = realloc(b->data, b->len + n + 1);
	if (!nd)
		return 0;
	memcpy(nd + b->len, ptr, n);
	b->data = nd;
	b->len += n;
	b->data[b->len] = '\0';
	return n;
}

/* PUT body to SOCKET; *status and *reply on success.  Returns 0 or 1 (printed). */
static int snap_request(const char *sock, const char *body, long *status, struct snap_buf *reply)
{
	char errbuf[CURL_ERROR_SIZE] = "";
	struct curl_slist *hdr = NULL;
	CURLcode rc;
	CURL *h;
	int ret = 1;

	if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
		fprintf(stderr, "godwit: snapshot: cannot initialise libcurl\n");
		return 1;
	}
	h = curl_easy_init();
	if (!h) {
		fprintf(stderr, "godwit: snapshot: cannot initialise libcurl\n");
		goto out_global;
	}
	hdr = curl_slist_append(NULL, "Content-Type: application/json");
	curl_easy_setopt(h, CURLOPT_URL, "http://localhost/api/v1/vm/snapshot");
	curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, sock);
	curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
	/* No overall time-out: a large VM on a slow disk takes what it takes. */
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)SNAP_CONNECT_TIMEOUT_MS);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, snap_write_cb);
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
		fprintf(stderr, "godwit: snapshot: request to API socket %s failed: %s\n", sock,
			errbuf[0] ? errbuf : curl_easy_strerror(rc));
		goto out_easy;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
	ret = 0;
out_easy:
	curl_slist_free_all(hdr);
	curl_easy_cleanup(h);
out_global:
	curl_global_cleanup();
	return ret;
}

/*
 * cmd_snapshot - the `snapshot` command.
 *   argc, argv: the command line from "snapshot" on
 * Returns the exit code: 0, 1 (refused, failed, unreachable) or 2 (usage).
 */
int cmd_snapshot(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "api",    required_argument, NULL, 'a' },
		{ "out",    required_argument, NULL, 'o' },
		{ "resume", no_argument,       NULL, 'r' },
		{ "json",   no_argument,       NULL, 'j' },
		{ "help",   no_argument,       NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *sock = NULL, *file = NULL, *msg;
	struct snap_buf reply = { 0 };
	bool resume = false, json = false;
	char *abs = NULL, *body = NULL;
	json_t *j = NULL, *req;
	long status = 0;
	int opt, ret = 1;

	optind = 0;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (opt) {
		case 'a': sock = optarg; break;
		case 'o': file = optarg; break;
		case 'r': resume = true; break;
		case 'j': json = true; break;
		case 'h':
			fputs(snapshot_usage, stdout);
			return 0;
		case ':':
			fprintf(stderr, "godwit: snapshot: option %s needs an argument\n",
				argv[optind - 1]);
			goto usage;
		default:
			fprintf(stderr, "godwit: snapshot: unrecognized option '%s'\n",
				argv[optind - 1]);
			goto usage;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "godwit: snapshot: unexpected argument '%s'\n", argv[optind]);
		goto usage;
	}
	if (!sock || !*sock || !file || !*file) {
		fprintf(stderr, "godwit: snapshot: --api SOCKET and --out FILE are required\n");
		goto usage;
	}
	if (file[0] == '/') {
		abs = strdup(file);
	} else {
		char cwd[PATH_MAX];

		if (!getcwd(cwd, sizeof(cwd))) {
			fprintf(stderr, "godwit: snapshot: getcwd: %s\n", strerror(errno));
			return 1;
		}
		if (asprintf(&abs, "%s/%s", cwd, file) < 0)
			abs = NULL;
	}
	req = abs ? json_pack("{s:s, s:b}", "path", abs, "resume", resume) : NULL;
	body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (!body) {
		fprintf(stderr, "godwit: snapshot: out of memory\n");
		goto out;
	}
	if (snap_request(sock, body, &status, &reply))
		goto out;
	j = reply.data ? json_loads(reply.data, 0, NULL) : NULL;
	if (status < 200 || status > 299) {
		msg = j ? json_string_value(json_object_get(j, "error")) : NULL;
		if (msg)
			fprintf(stderr, "godwit: snapshot: %s\n", msg);
		else
			fprintf(stderr, "godwit: snapshot: the API answered HTTP %ld\n", status);
		goto out;
	}
	if (!j) {
		fprintf(stderr, "godwit: snapshot: invalid JSON from the API\n");
		goto out;
	}
	if (json) {
		json_dumpf(j, stdout, JSON_COMPACT | JSON_REAL_PRECISION(15));
		putchar('\n');
	} else {
		double bytes = (double)json_integer_value(json_object_get(j, "bytes"));
		double ms = json_number_value(json_object_get(j, "ms"));
		const char *state = json_string_value(json_object_get(j, "state"));

		printf("snapshot %s: %.1f MiB in %.1f ms (%.0f MiB/s); VM %s\n", abs,
		       bytes / (1 << 20), ms, ms > 0 ? bytes / (1 << 20) / (ms / 1e3) : 0.0,
		       state ? state : "?");
	}
	if (fflush(stdout) == EOF) {
		fprintf(stderr, "godwit: snapshot: write error on stdout: %s\n", strerror(errno));
		goto out;
	}
	ret = 0;
out:
	json_decref(j);
	free(reply.data);
	free(body);
	free(abs);
	return ret;
usage:
	fprintf(stderr, "Try 'godwit snapshot --help'.\n");
	return 2;
}
