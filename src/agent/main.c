/*
 * main.c - godwitd's options, start-up and shutdown (docs/fleet.md).
 * The work is in host.c (lease, rule 5), agent.c (the reconcile loop),
 * peer.c (the agents' protocol), migrate.c and vms.c.
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "godwit/common.h"
#include "godwit/etcd.h"
#include "godwit/log.h"
#include "godwit/tls.h"
#include "agent.h"

static const char usage[] =
"usage: godwitd --host NAME --etcd URL[,URL...] --state-dir DIR --listen HOST:PORT\n"
"               [options]\n"
"\n"
"The per-host agent of a godwit fleet (docs/fleet.md).  It registers this\n"
"host in etcd under a lease, starts the VMs whose owner record names it\n"
"(each its own `godwit run` process, which outlives the agent), carries out\n"
"the intents `godwit fleet` writes (stop, migrate), receives migrations from\n"
"the other agents on --listen, pauses its VMs when it loses etcd (rule 5),\n"
"and restarts \"restart: always\" VMs of a host whose lease expired (rule 6).\n"
"\n"
"  --host NAME             this host's name in the fleet ([A-Za-z0-9._-], 1-63)\n"
"  --etcd URLS             comma-separated etcd client URLs (http:// or https://)\n"
"  --etcd-tls-dir DIR      with https:// URLs: ca.pem, cert.pem, key.pem for etcd\n"
"  --state-dir DIR         the agent's files: DIR/vms/VM/ (api.sock, console.log,\n"
"                          pid, epoch, spec.json) and DIR/lease; an absolute path\n"
"                          of at most 30 characters (UNIX socket paths under it)\n"
"  --listen HOST:PORT      where the other agents reach this one (the address\n"
"                          registered in etcd; migrations come to HOST too)\n"
"  --tls-dir DIR           mutual TLS 1.3 for the agents' protocol and the\n"
"                          migrations: DIR/ca.pem, cert.pem, key.pem; each host's\n"
"                          certificate names the host\n"
"  --insecure              allow --listen beyond loopback without --tls-dir\n"
"                          (agents' requests and VMs cross the network in clear)\n"
"  --mem-capacity SIZE     memory for VMs (default: this host's RAM)\n"
"  --cpu-capacity N        vCPUs for VMs (default: this host's cores)\n"
"  --godwit PATH           the godwit binary (default: the one beside godwitd)\n"
"  --socket PATH           the local HTTP API (default DIR/godwitd.sock, mode 0600)\n"
"  --web HOST:PORT         serve the fleet's read-only page on plain HTTP (off by\n"
"                          default): hosts, VMs, migrations, from etcd; bind it to\n"
"                          loopback or a management network, or put a TLS proxy\n"
"                          in front (docs/fleet.md, \"The page\")\n"
"  --lease-ttl SECONDS     the host lease's TTL, 3-3600 (default 10); VMs are paused\n"
"                          after 2/3 of it without reaching etcd\n"
"  --map-path FROM=TO      rewrite the path prefix FROM to TO in --disk, --kernel\n"
"                          and --initrd arguments of VM specs (repeatable)\n"
"  --migration-ports LO-HI TCP ports for incoming migrations (default 49200-49999)\n"
"  -v, --verbose           debug logging\n"
"  -h, --help              this text\n"
"\n"
"SIGTERM or SIGINT stops the agent only: its VMs keep running (and, with\n"
"http:// etcd URLs, keep the host's lease alive themselves), and an agent\n"
"started again adopts them.\n"
"\n"
"Exit status: 0 after SIGTERM/SIGINT, 1 a failure at start-up, 2 usage error.\n";

static struct agent *the_agent;

static void on_signal(int sig)
{
	(void)sig;
	if (the_agent)
		the_agent->stop = 1;
}

void agent_now_iso(char *buf, size_t len)
{
	time_t t = time(NULL);
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int agent_path(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

uint64_t agent_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void agent_sleep_ms(unsigned int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

int agent_etcd_open(struct agent *a, int timeout_ms, struct etcd **out)
{
	char err[AGENT_ERR_MAX];
	int ret;

	ret = etcd_open(a->etcd_urls, a->etcd_tls_dir, timeout_ms, out, err, sizeof(err));
	if (ret)
		log_warnx("%s: %s", __func__, err);
	return ret;
}

/* "HOST:PORT" or "[V6]:PORT" into a->listen_host and a->listen_port. */
static int parse_listen(struct agent *a, const char *s)
{
	const char *colon = strrchr(s, ':');
	char *end;
	unsigned long p;
	size_t hl;

	if (!colon || strlen(s) >= sizeof(a->listen))
		return -EINVAL;
	hl = (size_t)(colon - s);
	if (s[0] == '[') {
		if (hl < 3 || s[hl - 1] != ']')
			return -EINVAL;
		memcpy(a->listen_host, s + 1, hl - 2);
		a->listen_host[hl - 2] = '\0';
	} else {
		if (!hl || memchr(s, ':', hl))
			return -EINVAL;
		memcpy(a->listen_host, s, hl);
		a->listen_host[hl] = '\0';
	}
	errno = 0;
	p = strtoul(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || !p || p > 65535)
		return -EINVAL;
	a->listen_port = (unsigned int)p;
	snprintf(a->listen, sizeof(a->listen), "%s", s);
	return 0;
}

/* Is host a loopback address (or localhost)? */
static bool host_is_loopback(const char *h)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *r;
	bool lo = true;

	if (getaddrinfo(h, NULL, &hints, &res))
		return false;
	for (r = res; r; r = r->ai_next) {
		if (r->ai_family == AF_INET) {
			const struct sockaddr_in *in = (const void *)r->ai_addr;

			if ((ntohl(in->sin_addr.s_addr) >> 24) != 127)
				lo = false;
		} else if (r->ai_family == AF_INET6) {
			const struct sockaddr_in6 *in6 = (const void *)r->ai_addr;

			if (!IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
				lo = false;
		} else {
			lo = false;
		}
	}
	freeaddrinfo(res);
	return lo;
}

static int parse_map(struct agent *a, const char *s)
{
	const char *eq = strchr(s, '=');
	struct agent_map *m;
	size_t fl;

	if (!eq || eq == s || !eq[1] || s[0] != '/' || eq[1] != '/' || a->nr_maps >= AGENT_MAX_MAPS)
		return -EINVAL;
	m = &a->maps[a->nr_maps];
	fl = (size_t)(eq - s);
	if (fl >= sizeof(m->from) || strlen(eq + 1) >= sizeof(m->to))
		return -ENAMETOOLONG;
	memcpy(m->from, s, fl);
	m->from[fl] = '\0';
	snprintf(m->to, sizeof(m->to), "%s", eq + 1);
	a->nr_maps++;
	return 0;
}

static int mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	char *p;

	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
		return -ENAMETOOLONG;
	for (p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) && errno != EEXIST)
		return -errno;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "host",            required_argument, NULL, 'H' },
		{ "etcd",            required_argument, NULL, 'e' },
		{ "etcd-tls-dir",    required_argument, NULL, 'E' },
		{ "state-dir",       required_argument, NULL, 'd' },
		{ "listen",          required_argument, NULL, 'l' },
		{ "tls-dir",         required_argument, NULL, 't' },
		{ "insecure",        no_argument,       NULL, 'I' },
		{ "mem-capacity",    required_argument, NULL, 'm' },
		{ "cpu-capacity",    required_argument, NULL, 'c' },
		{ "godwit",          required_argument, NULL, 'g' },
		{ "socket",          required_argument, NULL, 's' },
		{ "lease-ttl",       required_argument, NULL, 'L' },
		{ "map-path",        required_argument, NULL, 'M' },
		{ "migration-ports", required_argument, NULL, 'P' },
		{ "web",             required_argument, NULL, 'W' },
		{ "verbose",         no_argument,       NULL, 'v' },
		{ "help",            no_argument,       NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static struct agent ag;
	struct agent *a = &ag;
	const char *listen = NULL;
	struct sigaction sa = { 0 };
	struct etcd *e = NULL;
	pthread_t lease_th;
	struct sysinfo si;
	uint64_t t_start;
	int opt, ret;

	a->lease_ttl = 10;
	a->port_lo = 49200;
	a->port_hi = 49999;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":vh", opts, NULL)) != -1) {
		char *end;
		unsigned long v, v2;

		switch (opt) {
		case 'H': a->host = optarg; break;
		case 'e': a->etcd_urls = optarg; break;
		case 'E': a->etcd_tls_dir = optarg; break;
		case 'd': a->state_dir = optarg; break;
		case 'l': listen = optarg; break;
		case 't': a->tls_dir = optarg; break;
		case 'I': a->insecure = true; break;
		case 'm':
			if (parse_size(optarg, &a->mem_capacity) || !a->mem_capacity) {
				fprintf(stderr, "godwitd: --mem-capacity %s: expected a size, e.g. 16G\n",
					optarg);
				return 2;
			}
			break;
		case 'c':
		case 'L':
			errno = 0;
			v = strtoul(optarg, &end, 10);
			if (errno || *end || end == optarg || !v ||
			    v > (opt == 'c' ? 4096UL : 3600UL) || (opt == 'L' && v < 3)) {
				fprintf(stderr, "godwitd: %s %s: expected a number from %s\n",
					argv[optind - 1], optarg, opt == 'c' ? "1 to 4096" : "3 to 3600");
				return 2;
			}
			if (opt == 'c')
				a->cpu_capacity = (unsigned int)v;
			else
				a->lease_ttl = (int)v;
			break;
		case 'g':
			if (strlen(optarg) >= sizeof(a->godwit)) {
				fprintf(stderr, "godwitd: --godwit: path too long\n");
				return 2;
			}
			snprintf(a->godwit, sizeof(a->godwit), "%s", optarg);
			break;
		case 's':
			if (strlen(optarg) >= 100) {
				fprintf(stderr, "godwitd: --socket: path too long for a UNIX socket\n");
				return 2;
			}
			snprintf(a->socket, sizeof(a->socket), "%s", optarg);
			break;
		case 'M':
			if (parse_map(a, optarg)) {
				fprintf(stderr, "godwitd: --map-path %s: expected /FROM=/TO (at most %d)\n",
					optarg, AGENT_MAX_MAPS);
				return 2;
			}
			break;
		case 'P':
			errno = 0;
			v = strtoul(optarg, &end, 10);
			if (errno || *end != '-' || end == optarg || !v || v > 65535)
				goto bad_ports;
			v2 = strtoul(end + 1, &end, 10);
			if (errno || *end || v2 < v || v2 > 65535) {
bad_ports:
				fprintf(stderr, "godwitd: --migration-ports %s: expected LO-HI, e.g. "
					"49200-49999\n", optarg);
				return 2;
			}
			a->port_lo = (unsigned int)v;
			a->port_hi = (unsigned int)v2;
			break;
		case 'W': {
			char h[AGENT_ADDR_MAX];
			unsigned int p;

			if (web_parse_addr(optarg, h, sizeof(h), &p)) {
				fprintf(stderr, "godwitd: --web %s: expected HOST:PORT, e.g. "
					"127.0.0.1:7480\n", optarg);
				return 2;
			}
			a->web = optarg;
			break;
		}
		case 'v': log_verbose = 1; break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		case ':':
			fprintf(stderr, "godwitd: option %s needs an argument\n", argv[optind - 1]);
			goto usage_err;
		default:
			fprintf(stderr, "godwitd: unrecognized option '%s'\n", argv[optind - 1]);
			goto usage_err;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "godwitd: unexpected argument '%s'\n", argv[optind]);
		goto usage_err;
	}
	if (!a->host || !a->etcd_urls || !a->state_dir || !listen) {
		fprintf(stderr, "godwitd: --host, --etcd, --state-dir and --listen are required\n");
		goto usage_err;
	}
	if (!fleet_name_ok(a->host)) {
		fprintf(stderr, "godwitd: --host %s: a name is 1-63 of [A-Za-z0-9._-]\n", a->host);
		goto usage_err;
	}
	if (a->state_dir[0] != '/' || strlen(a->state_dir) > 30) {
		fprintf(stderr, "godwitd: --state-dir %s: expected an absolute path of at most 30 "
			"characters (UNIX sockets live under it)\n", a->state_dir);
		goto usage_err;
	}
	if (parse_listen(a, listen)) {
		fprintf(stderr, "godwitd: --listen %s: expected HOST:PORT\n", listen);
		goto usage_err;
	}
	if (a->tls_dir && a->insecure) {
		fprintf(stderr, "godwitd: --insecure and --tls-dir contradict each other\n");
		goto usage_err;
	}
	if (!a->tls_dir && !a->insecure && !host_is_loopback(a->listen_host)) {
		fprintf(stderr, "godwitd: --listen %s is not a loopback address: requests and VMs "
			"would cross the network in clear; give --tls-dir DIR (mutual TLS), or "
			"--insecure to accept that\n", listen);
		goto usage_err;
	}
	if (!a->godwit[0]) {
		char self[PATH_MAX];
		ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

		if (n <= 0) {
			fprintf(stderr, "godwitd: cannot find my own binary; give --godwit PATH\n");
			return 1;
		}
		self[n] = '\0';
		snprintf(a->godwit, sizeof(a->godwit), "%s/godwit", dirname(self));
	}
	if (access(a->godwit, X_OK)) {
		fprintf(stderr, "godwitd: %s: %s (give --godwit PATH)\n", a->godwit, strerror(errno));
		return 1;
	}
	if (!a->socket[0])
		snprintf(a->socket, sizeof(a->socket), "%s/godwitd.sock", a->state_dir);
	if (sysinfo(&si) == 0 && !a->mem_capacity)
		a->mem_capacity = (uint64_t)si.totalram * si.mem_unit;
	if (!a->cpu_capacity) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		a->cpu_capacity = n > 0 ? (unsigned int)n : 1;
	}
	agent_now_iso(a->started, sizeof(a->started));
	pthread_mutex_init(&a->lock, NULL);

	{
		char p[PATH_MAX];

		snprintf(p, sizeof(p), "%s/vms", a->state_dir);
		ret = mkdir_p(p, 0700);
		if (ret) {
			fprintf(stderr, "godwitd: --state-dir %s: %s\n", p, strerror(-ret));
			return 1;
		}
	}
	if (a->tls_dir) {
		struct tls_creds *c;
		char err[AGENT_ERR_MAX];

		if (tls_init() || tls_creds_load_dir(a->tls_dir, NULL, true, &c, err, sizeof(err))) {
			fprintf(stderr, "godwitd: --tls-dir %s: %s\n", a->tls_dir, err);
			return 1;
		}
		tls_creds_free(c);
	}

	signal(SIGPIPE, SIG_IGN);
	the_agent = a;
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
		fprintf(stderr, "godwitd: cannot initialise libcurl\n");
		return 1;
	}

	log_info("godwitd %s: host %s, etcd %s, state %s, listen %s%s, godwit %s",
		 AGENT_VERSION, a->host, a->etcd_urls, a->state_dir, a->listen,
		 a->tls_dir ? " (mutual TLS)" : " (no TLS)", a->godwit);
	if (agent_etcd_open(a, ETCD_TIMEOUT_MS, &e))
		return 1;
	/* Adopt first: the VMs left running must be counted and fenced like the others. */
	vms_adopt_all(a);
	t_start = agent_now_ms();
	while (!a->stop) {
		ret = host_register(a, e);
		if (!ret)
			break;
		/* the previous lease may run out meanwhile: rule 5 for the adopted VMs */
		if (agent_now_ms() - t_start >= (uint64_t)a->lease_ttl * 2000 / 3)
			host_fence_now(a);
		log_warnx("godwitd: cannot register host %s in etcd (%s); retrying", a->host,
			  strerror(-ret));
		agent_sleep_ms(1000);
	}
	if (a->stop)
		goto out;
	if (pthread_create(&lease_th, NULL, host_lease_thread, a)) {
		log_warnx("godwitd: cannot start the lease thread");
		return 1;
	}
	if (peer_start(a) || http_start(a) || web_start(a))
		return 1;
	agent_loop(a);
	log_info("godwitd: stopping (the VMs keep running)");
	peer_stop(a);
	http_stop();
	web_stop();
	pthread_join(lease_th, NULL);
out:
	etcd_close(e);
	return 0;
usage_err:
	fprintf(stderr, "Try 'godwitd --help'.\n");
	return 2;
}
