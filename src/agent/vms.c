/*
 * vms.c - the VM processes of this host: their command lines (with
 * --map-path), starting them in a session of their own (they outlive the
 * agent), their files in the state directory (DIR/vms/VM/{api.sock,
 * console.log, pid, epoch, spec.json}), adopting the ones a previous agent
 * left running, noticing when one exits, and their status records.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "godwit/etcd.h"
#include "godwit/log.h"
#include "agent.h"

#define VMS_MAX_ARGS     256
#define VMS_ARG_MAX      4096
#define VMS_TAIL_BYTES   4096
/* The short options of `godwit run` that take a value (run.c: run_parse's optstring). */
#define VMS_RUN_VALUE_LETTERS "kicmpnadN"

struct agent_vm *vms_find(struct agent *a, const char *name)
{
	for (int i = 0; i < AGENT_MAX_VMS; i++)
		if (a->vms[i].used && !strcmp(a->vms[i].name, name))
			return &a->vms[i];
	return NULL;
}

struct agent_vm *vms_new(struct agent *a, const char *name)
{
	for (int i = 0; i < AGENT_MAX_VMS; i++) {
		struct agent_vm *v = &a->vms[i];

		if (v->used)
			continue;
		memset(v, 0, sizeof(*v));
		v->used = true;
		v->exit_status = -1;
		snprintf(v->name, sizeof(v->name), "%s", name);
		agent_path(v->dir, sizeof(v->dir), "%s/vms/%s", a->state_dir, name);
		agent_path(v->api, sizeof(v->api), "%s/vms/%s/api.sock", a->state_dir, name);
		agent_path(v->console, sizeof(v->console), "%s/vms/%s/console.log", a->state_dir,
			   name);
		return v;
	}
	return NULL;
}

/* A path argument with the --map-path prefixes rewritten: a new string. */
static char *vms_map(struct agent *a, const char *val)
{
	for (unsigned int i = 0; i < a->nr_maps; i++) {
		const struct agent_map *m = &a->maps[i];
		size_t fl = strlen(m->from);
		char *out;

		if (strncmp(val, m->from, fl))
			continue;
		/* a whole path component: /data matches /data/x and /data,serial=... */
		if (m->from[fl - 1] != '/' && val[fl] && val[fl] != '/' && val[fl] != ',')
			continue;
		if (asprintf(&out, "%s%s", m->to, val + fl) < 0)
			return NULL;
		return out;
	}
	return strdup(val);
}

static bool vms_is_path_opt(const char *o)
{
	return !strcmp(o, "--disk") || !strcmp(o, "--kernel") || !strcmp(o, "--initrd") ||
	       !strcmp(o, "-d") || !strcmp(o, "-k") || !strcmp(o, "-i");
}

/*
 * Options the agent sets itself: a spec may not carry them, in any form `godwit
 * run`'s getopt_long takes: a long option also by a prefix ("--ap=X" is --api X),
 * short ones also in a cluster with their value attached ("-vaX" is -v -a X).
 */
static bool vms_reserved(const char *o)
{
	static const char *const r[] = { "api", "name", "incoming", "tls-dir", "tls-peer",
					 "insecure", "incoming-timeout", "help", "fleet-etcd",
					 "fleet-lease", NULL };

	if (o[0] != '-')
		return false;
	if (o[1] == '-') {
		size_t l = strcspn(o + 2, "=");

		if (!l)
			return false;        /* "--", or "--=...": not an option of these */
		for (int i = 0; r[i]; i++)
			if (!strncmp(o + 2, r[i], l) && l <= strlen(r[i]))
				return true;
		return false;
	}
	/* getopt reads a cluster up to a letter that takes a value (the rest is its value) */
	for (const char *p = o + 1; *p; p++) {
		if (*p == 'a' || *p == 'n' || *p == 'h')
			return true;
		if (strchr(VMS_RUN_VALUE_LETTERS, *p))
			break;
	}
	return false;
}

/*
 * Path options written in a form the agent does not rewrite with --map-path: a
 * prefix of the long name ("--dis X"), or a short one with its value attached
 * ("-dX", "-vdX").  A spec writes --disk X, --disk=X or -d X.
 */
static bool vms_unmapped_path_opt(const char *o)
{
	static const char *const r[] = { "disk", "kernel", "initrd", NULL };

	if (o[0] != '-')
		return false;
	if (o[1] == '-') {
		size_t l = strcspn(o + 2, "=");

		for (int i = 0; r[i] && l; i++)
			if (!strncmp(o + 2, r[i], l) && l < strlen(r[i]))
				return true;
		return false;
	}
	for (const char *p = o + 1; *p; p++) {
		if ((*p == 'd' || *p == 'k' || *p == 'i') && (p[1] || p != o + 1))
			return true;
		if (strchr(VMS_RUN_VALUE_LETTERS, *p))
			break;
	}
	return false;
}

/* Options `godwit run --incoming` takes too (restore.c): the others are the stream's. */
static bool vms_incoming_opt(const char *o, bool *has_value)
{
	static const char *const with[] = { "--disk", "-d", "--net", "-N", "--user", "--sandbox",
					    "--jail", "--snapshot-dir", NULL };
	static const char *const bare[] = { "--no-sandbox", "--verbose", "-v", NULL };

	for (int i = 0; with[i]; i++)
		if (!strcmp(o, with[i])) {
			*has_value = true;
			return true;
		}
	for (int i = 0; bare[i]; i++)
		if (!strcmp(o, bare[i])) {
			*has_value = false;
			return true;
		}
	return false;
}

void vms_argv_free(char **argv)
{
	if (!argv)
		return;
	for (char **p = argv; *p; p++)
		free(*p);
	free(argv);
}

/*
 * vms_build_argv - [godwit, pre..., spec.args mapped..., NULL].  With pre[0] ==
 * "run" and pre[1] == "--incoming", only the options run --incoming takes are
 * kept (the VM's configuration comes in the stream).  0 or -EINVAL (err says).
 */
int vms_build_argv(struct agent *a, const char *vm, json_t *spec, const char *const *pre,
		   size_t npre, char ***out, char *err, size_t len)
{
	json_t *args = json_object_get(spec, "args");
	bool incoming = npre >= 2 && !strcmp(pre[1], "--incoming");
	bool has_mem = false, has_cpus = false;
	size_t n, k = 0;
	char **argv;

	*out = NULL;
	if (!json_is_array(args) || json_array_size(args) > VMS_MAX_ARGS) {
		snprintf(err, len, "VM %s: spec.args must be an array of at most %d strings", vm,
			 VMS_MAX_ARGS);
		return -EINVAL;
	}
	n = json_array_size(args);
	/* `godwit run` looks for --incoming in every argument, an option's value too */
	for (size_t i = 0; i < n; i++) {
		const char *s = json_string_value(json_array_get(args, i));

		if (s && (!strcmp(s, "--incoming") || !strncmp(s, "--incoming=", 11))) {
			snprintf(err, len, "VM %s: spec.args may not hold %s (the agent sets it)", vm, s);
			return -EINVAL;
		}
	}
	argv = calloc(1 + npre + n + 5, sizeof(*argv));
	if (!argv)
		goto oom;
	if (!(argv[k++] = strdup(a->godwit)))
		goto oom;
	for (size_t i = 0; i < npre; i++)
		if (!(argv[k++] = strdup(pre[i])))
			goto oom;
	for (size_t i = 0; i < n; i++) {
		const char *s = json_string_value(json_array_get(args, i));
		const char *next = i + 1 < n ? json_string_value(json_array_get(args, i + 1)) : NULL;
		const char *eq;
		char opt[64];
		bool val = false;

		if (!s || strlen(s) > VMS_ARG_MAX || !*s) {
			snprintf(err, len, "VM %s: spec.args[%zu] is not a non-empty string of at most "
				 "%d bytes", vm, i, VMS_ARG_MAX);
			goto bad;
		}
		if (s[0] == '-' && vms_reserved(s)) {
			snprintf(err, len, "VM %s: spec.args may not hold %s (the agent sets it)", vm, s);
			goto bad;
		}
		if (vms_unmapped_path_opt(s)) {
			snprintf(err, len, "VM %s: spec.args: write %s as --disk, --kernel or --initrd "
				 "PATH (or =PATH), or -d, -k or -i PATH (the agent maps paths)", vm, s);
			goto bad;
		}
		eq = s[0] == '-' && s[1] == '-' ? strchr(s, '=') : NULL;
		snprintf(opt, sizeof(opt), "%.*s", eq ? (int)(eq - s) : (int)strlen(s), s);
		if (!strcmp(opt, "--mem") || !strcmp(opt, "-m"))
			has_mem = true;
		if (!strcmp(opt, "--cpus") || !strcmp(opt, "-p"))
			has_cpus = true;
		if (incoming) {
			if (s[0] != '-')
				continue;        /* the value of an option dropped below */
			if (!vms_incoming_opt(opt, &val))
				continue;
			if (val && !eq) {
				if (!next) {
					snprintf(err, len, "VM %s: %s needs a value", vm, s);
					goto bad;
				}
				if (!(argv[k++] = strdup(s)))
					goto oom;
				i++;
				argv[k++] = !strcmp(s, "--disk") || !strcmp(s, "-d") ?
					    vms_map(a, next) : strdup(next);
				if (!argv[k - 1])
					goto oom;
				continue;
			}
		}
		if (eq && vms_is_path_opt(opt)) {
			char *m = vms_map(a, eq + 1);

			if (!m || asprintf(&argv[k], "%s=%s", opt, m) < 0) {
				free(m);
				argv[k] = NULL;
				goto oom;
			}
			free(m);
			k++;
			continue;
		}
		if (!(argv[k++] = strdup(s)))
			goto oom;
		if (!eq && vms_is_path_opt(s) && next) {
			i++;
			if (!(argv[k++] = vms_map(a, next)))
				goto oom;
		}
	}
	if (!incoming) {
		json_t *jm = json_object_get(spec, "mem"), *jc = json_object_get(spec, "cpus");

		if (!has_mem && json_is_integer(jm) && json_integer_value(jm) > 0) {
			if (!(argv[k++] = strdup("--mem")) ||
			    asprintf(&argv[k++], "%" JSON_INTEGER_FORMAT, json_integer_value(jm)) < 0)
				goto oom;
		}
		if (!has_cpus && json_is_integer(jc) && json_integer_value(jc) > 0 &&
		    json_integer_value(jc) < 256) {
			if (!(argv[k++] = strdup("--cpus")) ||
			    asprintf(&argv[k++], "%" JSON_INTEGER_FORMAT, json_integer_value(jc)) < 0)
				goto oom;
		}
	}
	argv[k] = NULL;
	*out = argv;
	return 0;
oom:
	snprintf(err, len, "out of memory");
bad:
	if (argv) {
		for (size_t i = 0; i < k; i++)
			free(argv[i]);
		free(argv);
	}
	return -EINVAL;
}

int vms_spawn(struct agent *a, const char *vm, char **argv, pid_t *pid, char *err, size_t len)
{
	char dir[PATH_MAX], console[PATH_MAX];
	int out, devnull;
	pid_t p;

	snprintf(dir, sizeof(dir), "%s/vms/%s", a->state_dir, vm);
	if (mkdir(dir, 0700) && errno != EEXIST) {
		snprintf(err, len, "%s: %s", dir, strerror(errno));
		return -errno;
	}
	agent_path(console, sizeof(console), "%s/console.log", dir);
	out = open(console, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (out < 0 || devnull < 0) {
		int e = errno;

		snprintf(err, len, "%s: %s", out < 0 ? console : "/dev/null", strerror(e));
		if (out >= 0)
			close(out);
		if (devnull >= 0)
			close(devnull);
		return -e;
	}
	p = fork();
	if (p < 0) {
		int e = errno;

		snprintf(err, len, "fork: %s", strerror(e));
		close(out);
		close(devnull);
		return -e;
	}
	if (p == 0) {
		sigset_t none;

		/* Only async-signal-safe calls here: the agent has threads. */
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		setsid();
		if (dup2(devnull, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0)
			_exit(127);
		if (chdir(dir))
			_exit(127);
		close_range(3, ~0U, 0);
		execv(argv[0], argv);
		_exit(127);
	}
	close(out);
	close(devnull);
	*pid = p;
	return 0;
}

int vms_write_file(const char *dir, const char *name, const char *text)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8];
	size_t n = strlen(text);
	int fd, ret = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (write(fd, text, n) != (ssize_t)n || fsync(fd))
		ret = -errno ? -errno : -EIO;
	close(fd);
	if (!ret && rename(tmp, path))
		ret = -errno;
	if (ret)
		log_warnx("%s: %s: %s", __func__, path, strerror(-ret));
	return ret;
}

/* Read a small file into buf (NUL-terminated); 0 or -errno. */
static int vms_read_file(const char *dir, const char *name, char *buf, size_t len)
{
	char path[PATH_MAX];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return 0;
}

/* Record pid, epoch and spec in the VM's directory (for adoption). */
void vms_write_files(const char *dir, pid_t pid, uint64_t epoch, json_t *spec)
{
	char buf[32];
	char *s;

	snprintf(buf, sizeof(buf), "%" PRIu64 "\n", epoch);
	vms_write_file(dir, "epoch", buf);
	if (spec && (s = json_dumps(spec, JSON_COMPACT))) {
		vms_write_file(dir, "spec.json", s);
		free(s);
	}
	snprintf(buf, sizeof(buf), "%d\n", (int)pid);
	vms_write_file(dir, "pid", buf);
}

static void vms_spec_size(json_t *spec, uint64_t *mem, unsigned int *cpus)
{
	json_t *jm = json_object_get(spec, "mem"), *jc = json_object_get(spec, "cpus");

	*mem = json_is_integer(jm) && json_integer_value(jm) > 0 ?
	       (uint64_t)json_integer_value(jm) : 0;
	*cpus = json_is_integer(jc) && json_integer_value(jc) > 0 &&
		json_integer_value(jc) < 4096 ? (unsigned int)json_integer_value(jc) : 1;
}

int vms_put_status(struct agent *a, struct etcd *e, const char *vm, uint64_t epoch,
		   const char *state, pid_t pid, const char *error)
{
	char key[FLEET_KEY_MAX], err[AGENT_ERR_MAX], now[32], api[PATH_MAX], console[PATH_MAX];
	json_t *j;
	char *s;
	int ret;

	agent_now_iso(now, sizeof(now));
	snprintf(api, sizeof(api), "%s/vms/%s/api.sock", a->state_dir, vm);
	snprintf(console, sizeof(console), "%s/vms/%s/console.log", a->state_dir, vm);
	j = json_pack("{s:s, s:I, s:s, s:I, s:s, s:s, s:s}", "host", a->host,
		      "epoch", (json_int_t)epoch, "state", state, "pid", (json_int_t)pid,
		      "api", api, "console", console, "updated", now);
	if (j && error)
		json_object_set_new(j, "error", json_string(error));
	s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!s)
		return -ENOMEM;
	ret = fleet_key_vm(key, sizeof(key), vm, "status");
	if (!ret)
		ret = etcd_put(e, key, s, 0, err, sizeof(err));
	if (ret)
		log_warnx("%s: VM %s: %s", __func__, vm, err);
	free(s);
	return ret;
}

int vms_start(struct agent *a, struct etcd *e, const char *vm, json_t *spec, uint64_t epoch)
{
	char err[AGENT_ERR_MAX], api[PATH_MAX], lease[32];
	const char *pre[9];
	size_t npre = 5;
	struct agent_vm *v;
	char **argv;
	pid_t pid;
	int ret;

	snprintf(api, sizeof(api), "%s/vms/%s/api.sock", a->state_dir, vm);
	pre[0] = "run";
	pre[1] = "--name";
	pre[2] = vm;
	pre[3] = "--api";
	pre[4] = api;
	npre += (size_t)host_guard_args(a, pre + 5, lease, sizeof(lease));
	ret = vms_build_argv(a, vm, spec, pre, npre, &argv, err, sizeof(err));
	if (ret) {
		log_warnx("%s: %s", __func__, err);
		vms_put_status(a, e, vm, epoch, "failed", 0, err);
		return ret;
	}
	unlink(api);
	pthread_mutex_lock(&a->lock);
	v = vms_find(a, vm) ? NULL : vms_new(a, vm);
	if (!v) {
		pthread_mutex_unlock(&a->lock);
		vms_argv_free(argv);
		log_warnx("%s: VM %s: already here, or too many VMs", __func__, vm);
		return -EBUSY;
	}
	ret = vms_spawn(a, vm, argv, &pid, err, sizeof(err));
	if (ret) {
		v->used = false;
		pthread_mutex_unlock(&a->lock);
		vms_argv_free(argv);
		log_warnx("%s: VM %s: %s", __func__, vm, err);
		vms_put_status(a, e, vm, epoch, "failed", 0, err);
		return ret;
	}
	v->pid = pid;
	v->child = true;
	v->epoch = epoch;
	vms_spec_size(spec, &v->mem, &v->cpus);
	snprintf(v->state, sizeof(v->state), "running");
	vms_write_files(v->dir, pid, epoch, spec);
	pthread_mutex_unlock(&a->lock);
	vms_argv_free(argv);
	log_info("VM %s: started at epoch %" PRIu64 " (pid %d)", vm, epoch, (int)pid);
	ret = vms_put_status(a, e, vm, epoch, "running", pid, NULL);
	pthread_mutex_lock(&a->lock);
	if ((v = vms_find(a, vm)))
		v->status_written = !ret;
	pthread_mutex_unlock(&a->lock);
	return 0;
}

/* Does /proc/PID/cmdline hold api (the process is that VM's godwit)? */
bool vms_alive(pid_t pid, const char *api)
{
	char path[64], buf[8192];
	ssize_t n;
	int fd;

	if (pid <= 0)
		return false;
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	for (ssize_t i = 0; i < n; i++)
		if (!buf[i])
			buf[i] = ' ';
	buf[n] = '\0';
	return strstr(buf, api) != NULL;
}

int vms_signal(struct agent_vm *v, int sig)
{
	if (v->pid <= 0 || v->exit_status != -1)
		return -ESRCH;
	if (!v->child && !vms_alive(v->pid, v->api))
		return -ESRCH;
	return kill(v->pid, sig) ? -errno : 0;
}

void vms_adopt_all(struct agent *a)
{
	char dir[PATH_MAX];
	struct dirent *de;
	DIR *d;

	snprintf(dir, sizeof(dir), "%s/vms", a->state_dir);
	d = opendir(dir);
	if (!d)
		return;
	while ((de = readdir(d))) {
		char vdir[PATH_MAX], buf[64 * 1024], api[PATH_MAX];
		struct agent_vm *v;
		json_t *spec, *mig;
		long long pid = 0, epoch = 0;
		char *end;

		if (!fleet_name_ok(de->d_name))
			continue;
		if (agent_path(vdir, sizeof(vdir), "%s/%s", dir, de->d_name) ||
		    agent_path(api, sizeof(api), "%s/api.sock", vdir))
			continue;
		if (vms_read_file(vdir, "pid", buf, sizeof(buf)))
			continue;
		errno = 0;
		pid = strtoll(buf, &end, 10);
		if (errno || end == buf || pid <= 1 || pid > 1 << 22)
			continue;
		if (!vms_alive((pid_t)pid, api)) {
			log_info("VM %s: its process %lld is gone (not adopted)", de->d_name, pid);
			continue;
		}
		if (vms_read_file(vdir, "epoch", buf, sizeof(buf)) == 0) {
			errno = 0;
			epoch = strtoll(buf, &end, 10);
			if (errno || end == buf || epoch < 0)
				epoch = 0;
		}
		pthread_mutex_lock(&a->lock);
		v = vms_new(a, de->d_name);
		if (!v) {
			pthread_mutex_unlock(&a->lock);
			break;
		}
		v->pid = (pid_t)pid;
		v->child = false;
		v->epoch = (uint64_t)epoch;
		snprintf(v->state, sizeof(v->state), "running");
		if (vms_read_file(vdir, "from", buf, sizeof(buf)) == 0 && fleet_name_ok(buf)) {
			/* the destination of a migration, not confirmed running yet */
			v->incoming = true;
			snprintf(v->from, sizeof(v->from), "%.63s", buf);
			snprintf(v->state, sizeof(v->state), "incoming");
		}
		if (vms_read_file(vdir, "spec.json", buf, sizeof(buf)) == 0 &&
		    (spec = json_loads(buf, 0, NULL))) {
			vms_spec_size(spec, &v->mem, &v->cpus);
			json_decref(spec);
		}
		pthread_mutex_unlock(&a->lock);
		/* Mid-migration?  The loop settles it (agent_settle_source) with etcd. */
		mig = v->incoming ? NULL : agent_api(api, "GET", "/api/v1/vm/migration", NULL, 3000);
		if (mig) {
			const char *st = jstr(mig, "status");

			pthread_mutex_lock(&a->lock);
			if ((v = vms_find(a, de->d_name))) {
				if (!strcmp(st, "commit-wait"))
					snprintf(v->state, sizeof(v->state), "commit-wait");
				else if (!strcmp(st, "in-doubt"))
					snprintf(v->state, sizeof(v->state), "in-doubt");
				else if (!strcmp(st, "setup") || !strcmp(st, "active") ||
					 !strcmp(st, "stop-and-copy") || !strcmp(st, "committing"))
					snprintf(v->state, sizeof(v->state), "migrating");
			}
			pthread_mutex_unlock(&a->lock);
			json_decref(mig);
		}
		log_info("VM %s: adopted (pid %lld, epoch %lld)", de->d_name, pid, epoch);
	}
	closedir(d);
}

void vms_reap(struct agent *a)
{
	pthread_mutex_lock(&a->lock);
	for (int i = 0; i < AGENT_MAX_VMS; i++) {
		struct agent_vm *v = &a->vms[i];
		int st;

		if (!v->used || v->exit_status != -1 || v->pid <= 0)
			continue;
		if (v->child) {
			pid_t r = waitpid(v->pid, &st, WNOHANG);

			if (r == v->pid)
				v->exit_status = st;
			else if (r < 0 && errno == ECHILD)
				v->exit_status = -2;
		} else if (!vms_alive(v->pid, v->api)) {
			v->exit_status = -2;
		}
	}
	pthread_mutex_unlock(&a->lock);
}

void vms_console_tail(const char *path, char *buf, size_t len)
{
	char tail[VMS_TAIL_BYTES + 1];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	off_t size;
	ssize_t n;
	char *p;
	int lines = 0;

	buf[0] = '\0';
	if (fd < 0)
		return;
	size = lseek(fd, 0, SEEK_END);
	if (size < 0 || lseek(fd, size > VMS_TAIL_BYTES ? size - VMS_TAIL_BYTES : 0, SEEK_SET) < 0) {
		close(fd);
		return;
	}
	n = read(fd, tail, VMS_TAIL_BYTES);
	close(fd);
	if (n <= 0)
		return;
	tail[n] = '\0';
	while (n > 0 && (tail[n - 1] == '\n' || tail[n - 1] == '\r'))
		tail[--n] = '\0';
	/* the last 3 lines */
	for (p = tail + n; p > tail; p--)
		if (p[-1] == '\n' && ++lines == 3)
			break;
	/* keep it printable: the guest's output may hold anything */
	for (char *q = p; *q; q++)
		if ((unsigned char)*q < 0x20 && *q != '\n')
			*q = ' ';
		else if ((unsigned char)*q >= 0x80)
			*q = '?';
	snprintf(buf, len, "%s", p);
}

void vms_remove_dir(struct agent *a, const char *vm)
{
	static const char *const files[] = { "api.sock", "console.log", "pid", "epoch", "spec.json",
					     "from", NULL };
	char dir[PATH_MAX], path[PATH_MAX + 16];

	if (!fleet_name_ok(vm))
		return;
	snprintf(dir, sizeof(dir), "%s/vms/%s", a->state_dir, vm);
	for (int i = 0; files[i]; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		unlink(path);
	}
	rmdir(dir);
}

void vms_usage(struct agent *a, uint64_t *mem, unsigned int *cpus, unsigned int *n)
{
	*mem = 0;
	*cpus = 0;
	*n = 0;
	pthread_mutex_lock(&a->lock);
	for (int i = 0; i < AGENT_MAX_VMS; i++) {
		struct agent_vm *v = &a->vms[i];

		if (!v->used || v->exit_status != -1)
			continue;
		*mem += v->mem;
		*cpus += v->cpus;
		(*n)++;
	}
	pthread_mutex_unlock(&a->lock);
}
