/*
 * sandbox.c - what a VM process gives up once everything privileged is open
 * (KVM, TAPs, disks, sockets): no_new_privs, every capability (all five
 * sets), optionally its user (--user), and all system calls but the ones
 * its threads need (a seccomp filter built with libseccomp; sandbox.h).
 *
 * The allow-list below is grouped by who needs each call; docs/architecture.md
 * ("Sandbox") summarises it.  It is deliberately a little wider than the
 * calls seen in the tests where a narrower rule could kill a migration on
 * some other host (a resolver that reads /etc files, OpenSSL's start-up):
 * correctness first, then narrowness.  What it does not allow: creating
 * processes (clone without CLONE_THREAD), execve, ptrace, mount, module and
 * kexec calls, bpf, keyctl, perf, namespaces, changing ids, chroot, raw or
 * packet sockets, ioctls other than KVM's and the few listed.
 *
 * An unlisted call: SANDBOX_KILL (the default) kills the whole process with
 * SIGSYS (SECCOMP_RET_KILL_PROCESS); the kernel names the call in its log
 * (audit record type 1326 "syscall=NR", dmesg / journalctl -k, while the
 * audit rate limit allows).  SANDBOX_TRAP raises SIGSYS in the thread
 * instead; our handler writes the call's name to stderr and re-raises
 * SIGSYS with the default action, so the process still dies by SIGSYS.
 * SANDBOX_LOG lets the call through and the kernel logs it: for finding
 * what a new code path needs, never for production.
 *
 * --jail DIR (Firecracker's jailer, in godwit's way): sandbox_jail_fork()
 * makes the VM process PID 1 of a new PID namespace, in a new mount
 * namespace, with its parent as a monitor; sandbox_apply() then chroots it
 * into DIR once everything it opens by path is open.  The fork comes before
 * anything of the VM exists: KVM ties a VM to the process's memory, and a
 * PID namespace can only be entered by a new process.
 */
#include <errno.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <termios.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <linux/sockios.h>

#include <cap-ng.h>
#include <seccomp.h>

#include "godwit/log.h"
#include "godwit/sandbox.h"

#if defined(__SANITIZE_ADDRESS__)
#define SANDBOX_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANDBOX_ASAN 1
#endif
#endif

const char *sandbox_mode_name(enum sandbox_mode m)
{
	switch (m) {
	case SANDBOX_KILL: return "kill";
	case SANDBOX_TRAP: return "trap";
	case SANDBOX_LOG:  return "log";
	case SANDBOX_OFF:  return "off";
	}
	return "?";
}

int sandbox_mode_parse(const char *s, enum sandbox_mode *m)
{
	static const enum sandbox_mode all[] = { SANDBOX_KILL, SANDBOX_TRAP, SANDBOX_LOG,
						 SANDBOX_OFF };

	for (size_t i = 0; i < ARRAY_SIZE(all); i++)
		if (!strcmp(s, sandbox_mode_name(all[i]))) {
			*m = all[i];
			return 0;
		}
	return -EINVAL;
}

/* A decimal id (no sign, no overflow): 0 and *v, or -1. */
static int sandbox_parse_id(const char *s, unsigned long *v)
{
	char *end;

	if (!*s || *s < '0' || *s > '9')
		return -1;
	errno = 0;
	*v = strtoul(s, &end, 10);
	if (errno || *end || *v >= (unsigned long)(uid_t)-1)
		return -1;
	return 0;
}

int sandbox_user_parse(const char *s, struct sandbox_opts *o, char *err, size_t len)
{
	char user[256], *colon;
	const char *group = NULL;
	unsigned long v;
	struct passwd *pw = NULL;

	if (strlen(s) >= sizeof(user) || !*s) {
		snprintf(err, len, "--user %s: expected UID[:GID] or NAME[:GROUP]", s);
		return -EINVAL;
	}
	snprintf(user, sizeof(user), "%s", s);
	colon = strchr(user, ':');
	if (colon) {
		*colon = '\0';
		group = colon + 1;
	}
	if (!sandbox_parse_id(user, &v)) {
		o->uid = (uid_t)v;
		pw = getpwuid(o->uid);
	} else if ((pw = getpwnam(user))) {
		o->uid = pw->pw_uid;
	} else {
		snprintf(err, len, "--user %s: no such user", s);
		return -EINVAL;
	}
	if (group) {
		struct group *gr;

		if (!sandbox_parse_id(group, &v)) {
			o->gid = (gid_t)v;
		} else if ((gr = getgrnam(group))) {
			o->gid = gr->gr_gid;
		} else {
			snprintf(err, len, "--user %s: no such group %s", s, group);
			return -EINVAL;
		}
	} else {
		o->gid = pw ? pw->pw_gid : (gid_t)o->uid;
	}
	if (o->uid == 0 || o->gid == 0) {
		snprintf(err, len, "--user %s: uid and gid must not be 0 (root)", s);
		return -EINVAL;
	}
	o->has_user = true;
	return 0;
}

/* ---- the filter ------------------------------------------------------------------ */

/* Calls allowed with any arguments, grouped by who needs them. */
static const char *const sandbox_allow[] = {
	/* memory: malloc, thread stacks, guest RAM hints, OpenSSL's secure heap */
	"brk", "mmap", "munmap", "mprotect", "madvise", "mremap", "mlock", "munlock",
	/* threads (pthread_create's clone is below), futexes, exits */
	"futex", "set_robust_list", "rseq", "exit", "exit_group", "sched_yield",
	"sched_getaffinity", "gettid", "getpid", "tgkill", "set_tid_address",
	/* signals: the vCPU kick (SIGUSR1), signalfd's mask, abort(), SIGPIPE ignored */
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
	/* time: the loop's timers, migration rate meters, back-off sleeps */
	"clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
	/* the loop and the device threads: epoll, eventfds, timers, the signalfd */
	"epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll",
	"ppoll", "eventfd2", "timerfd_create", "timerfd_settime", "timerfd_gettime",
	"signalfd4",
	/* file descriptors: console, TAP frames, disk I/O and flushes, discards, locks */
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
	"preadv2", "pwritev2", "lseek", "close", "dup", "fcntl", "flock", "fstat",
	"newfstatat", "statx", "fsync", "fdatasync", "sync_file_range", "fallocate",
	"ftruncate",
	/*
	 * files: snapshots (openat under the --snapshot-dir fd, renameat, unlinkat of a
	 * failed temporary), the API socket unlinked at exit, a migrated disk removed
	 * after a failure, the resolver's and OpenSSL's /etc files, a thread's name
	 * set from another thread (/proc/self/task/TID/comm)
	 */
	"openat", "unlink", "unlinkat", "renameat", "renameat2", "faccessat", "faccessat2",
	"access",
	/*
	 * sockets: the API (accept4, ...), migration both ways, the resolver (bind: its
	 * netlink socket).  No listen: the API and an incoming migration listen before.
	 */
	"connect", "accept", "accept4", "bind", "getsockname", "getpeername",
	"sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
	"setsockopt", "getsockopt",
	/* entropy (virtio-rng, OpenSSL), ids (OpenSSL, getpwuid-free checks), uname (OpenSSL) */
	"getrandom", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
	"getgroups", "uname", "sysinfo", "getrlimit", "prlimit64",
};

#ifdef SANDBOX_ASAN
/*
 * ASan/UBSan builds only: LeakSanitizer's exit-time check clones a tracer
 * task (no CLONE_THREAD) that ptraces every thread, and reads /proc.
 */
static const char *const sandbox_allow_asan[] = {
	"clone", "ptrace", "wait4", "waitid", "prctl", "getppid", "process_vm_readv",
	"open", "readlink", "readlinkat", "getdents", "getdents64", "kill", "sched_getparam",
	"sched_getscheduler",
};
#endif

static int sandbox_rule(scmp_filter_ctx ctx, const char *name, unsigned int n,
			const struct scmp_arg_cmp *cmp, char *err, size_t len)
{
	int nr = seccomp_syscall_resolve_name(name);
	int ret;

	if (nr == __NR_SCMP_ERROR)
		return 0;       /* not on this architecture or unknown to this libseccomp */
	ret = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, n, cmp);
	if (ret)
		snprintf(err, len, "seccomp rule for %s: %s", name, strerror(-ret));
	return ret;
}

/* ioctl requests allowed besides KVM's (type 0xAE). */
static const unsigned long sandbox_ioctls[] = {
	TUNSETOFFLOAD,          /* virtio-net: offloads the driver negotiated */
	TUNSETVNETHDRSZ,
	SIOCOUTQ,               /* the migration writer: bytes still in the socket */
	FIONREAD, FIONBIO,      /* sockets (libmicrohttpd, the resolver) */
	TCGETS, TCSETS, TCSETSW, TCSETSF, TIOCGWINSZ,  /* the console; stdio's isatty */
	/* post-copy's destination (postcopy.c): its userfaultfd is made before the sandbox */
	UFFDIO_REGISTER, UFFDIO_UNREGISTER, UFFDIO_COPY, UFFDIO_ZEROPAGE,
};

static int sandbox_rules(scmp_filter_ctx ctx, bool monitor, char *err, size_t len)
{
	struct scmp_arg_cmp c[2];
	int ret = 0;

	/* --jail's monitor: it also waits for the VM process and forwards signals to it. */
	if (monitor) {
		ret = sandbox_rule(ctx, "wait4", 0, NULL, err, len);
		if (!ret)
			ret = sandbox_rule(ctx, "kill", 0, NULL, err, len);
		if (!ret)
			ret = sandbox_rule(ctx, "rt_sigtimedwait", 0, NULL, err, len);
	}

	for (size_t i = 0; i < ARRAY_SIZE(sandbox_allow) && !ret; i++)
		ret = sandbox_rule(ctx, sandbox_allow[i], 0, NULL, err, len);
#ifdef SANDBOX_ASAN
	for (size_t i = 0; i < ARRAY_SIZE(sandbox_allow_asan) && !ret; i++)
		ret = sandbox_rule(ctx, sandbox_allow_asan[i], 0, NULL, err, len);
#else
	/* Threads, not processes: pthread_create's clone always has CLONE_THREAD. */
	c[0] = SCMP_A0_64(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD);
	if (!ret)
		ret = sandbox_rule(ctx, "clone", 1, c, err, len);
	/* Thread names (pthread_setname_np on the calling thread). */
	c[0] = SCMP_A0_32(SCMP_CMP_EQ, PR_SET_NAME);
	if (!ret)
		ret = sandbox_rule(ctx, "prctl", 1, c, err, len);
	c[0] = SCMP_A0_32(SCMP_CMP_EQ, PR_GET_NAME);
	if (!ret)
		ret = sandbox_rule(ctx, "prctl", 1, c, err, len);
#endif
	/*
	 * clone3 passes its flags in memory, where a filter cannot look: ENOSYS
	 * makes glibc fall back to clone, whose flags are checked above.
	 */
	if (!ret) {
		ret = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
		if (ret)
			snprintf(err, len, "seccomp rule for clone3: %s", strerror(-ret));
	}
	/* KVM's ioctls (type 0xAE) on the KVM, VM and vCPU fds, and the few above. */
	c[0] = SCMP_A1_32(SCMP_CMP_MASKED_EQ, 0xff00, 0xae00);
	if (!ret)
		ret = sandbox_rule(ctx, "ioctl", 1, c, err, len);
	for (size_t i = 0; i < ARRAY_SIZE(sandbox_ioctls) && !ret; i++) {
		c[0] = SCMP_A1_32(SCMP_CMP_EQ, (uint32_t)sandbox_ioctls[i]);
		ret = sandbox_rule(ctx, "ioctl", 1, c, err, len);
	}
	/*
	 * Sockets: UNIX (the API, unix: migrations, nscd), TCP over IPv4/6
	 * (migrations), and NETLINK_ROUTE (getaddrinfo's AI_ADDRCONFIG).  No raw
	 * or packet sockets.
	 */
	c[0] = SCMP_A0_32(SCMP_CMP_EQ, AF_UNIX);
	if (!ret)
		ret = sandbox_rule(ctx, "socket", 1, c, err, len);
	c[0] = SCMP_A0_32(SCMP_CMP_EQ, AF_INET);
	if (!ret)
		ret = sandbox_rule(ctx, "socket", 1, c, err, len);
	c[0] = SCMP_A0_32(SCMP_CMP_EQ, AF_INET6);
	if (!ret)
		ret = sandbox_rule(ctx, "socket", 1, c, err, len);
	c[0] = SCMP_A0_32(SCMP_CMP_EQ, AF_NETLINK);
	c[1] = SCMP_A2_32(SCMP_CMP_EQ, NETLINK_ROUTE);
	if (!ret)
		ret = sandbox_rule(ctx, "socket", 2, c, err, len);
	/* libcurl's wake-up pair (the fleet's lease guard talks to etcd): UNIX only. */
	c[0] = SCMP_A0_32(SCMP_CMP_EQ, AF_UNIX);
	if (!ret)
		ret = sandbox_rule(ctx, "socketpair", 1, c, err, len);
	return ret;
}

/* SANDBOX_TRAP: system call names, resolved before the filter (the handler cannot). */
#define SANDBOX_MAX_NR 512
static char *sandbox_names[SANDBOX_MAX_NR];

static void sandbox_put(const char *s)
{
	if (write(STDERR_FILENO, s, strlen(s)) < 0)
		return;
}

/* Async-signal-safe: name the call, then die of SIGSYS as the kill mode would. */
static void sandbox_sigsys(int sig, siginfo_t *si, void *uc)
{
	char num[16], *p = num + sizeof(num);
	unsigned int nr = (unsigned int)si->si_syscall;
	struct sigaction sa = { .sa_handler = SIG_DFL };

	*--p = '\0';
	do
		*--p = (char)('0' + nr % 10);
	while ((nr /= 10) && p > num);
	sandbox_put("godwit: sandbox: system call ");
	sandbox_put((unsigned int)si->si_syscall < SANDBOX_MAX_NR &&
		    sandbox_names[si->si_syscall] ? sandbox_names[si->si_syscall] : "?");
	sandbox_put(" (");
	sandbox_put(p);
	sandbox_put(") is not allowed: killing the process with SIGSYS\n");
	sigaction(SIGSYS, &sa, NULL);
	syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SIGSYS);
}

static int sandbox_trap_init(char *err, size_t len)
{
	struct sigaction sa = { .sa_sigaction = sandbox_sigsys, .sa_flags = SA_SIGINFO };

	for (int nr = 0; nr < SANDBOX_MAX_NR; nr++)
		if (!sandbox_names[nr])
			sandbox_names[nr] = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGSYS, &sa, NULL)) {
		snprintf(err, len, "sigaction(SIGSYS): %s", strerror(errno));
		return -errno;
	}
	return 0;
}

static int sandbox_filter(enum sandbox_mode mode, bool monitor, char *err, size_t len)
{
	uint32_t def = mode == SANDBOX_TRAP ? SCMP_ACT_TRAP :
		       mode == SANDBOX_LOG ? SCMP_ACT_LOG : SCMP_ACT_KILL_PROCESS;

#ifdef GODWIT_SANDBOX_DISCOVER
	/*
	 * Finding what the list lacks: a build with this switch (make
	 * BUILD=build-disc EXTRA_CFLAGS=-DGODWIT_SANDBOX_DISCOVER) logs instead
	 * of killing whatever the mode, so whole test suites can run through it
	 * and `dmesg | grep type=1326` lists every call the filter would have
	 * stopped.
	 */
	def = SCMP_ACT_LOG;
#endif
	scmp_filter_ctx ctx;
	int ret;

	if (mode == SANDBOX_TRAP && (ret = sandbox_trap_init(err, len)))
		return ret;
	ctx = seccomp_init(def);
	if (!ctx) {
		snprintf(err, len, "seccomp_init failed");
		return -ENOMEM;
	}
	/*
	 * TSYNC: every thread gets the filter (and no_new_privs) at once or the
	 * load fails.  No SECCOMP_FILTER_FLAG_LOG: the kernel logs a
	 * KILL_PROCESS and a LOG action without it, and with it would also log
	 * clone3's ENOSYS at every thread start.
	 */
	ret = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
	if (ret)
		snprintf(err, len, "seccomp attributes: %s", strerror(-ret));
	if (!ret)
		ret = sandbox_rules(ctx, monitor, err, len);
	if (!ret) {
		ret = seccomp_load(ctx);
		if (ret)
			snprintf(err, len, "cannot load the seccomp filter: %s", strerror(-ret));
	}
	seccomp_release(ctx);
	return ret;
}

/* ---- the jail --------------------------------------------------------------------- */

/*
 * The monitor keeps only CAP_KILL (to signal a VM process that became
 * another --user), gets no_new_privs and the VM's filter with wait4 and
 * kill added.  Best effort: it must wait for its child whatever happens.
 */
static void sandbox_monitor_restrict(const struct sandbox_opts *o)
{
	char err[256] = "";

	if (o->mode == SANDBOX_OFF)
		return;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 && capng_get_caps_process() == 0) {
		bool bound = capng_have_capability(CAPNG_EFFECTIVE, CAP_SETPCAP);

		capng_clear(CAPNG_SELECT_ALL);
		capng_update(CAPNG_ADD, CAPNG_EFFECTIVE | CAPNG_PERMITTED | CAPNG_BOUNDING_SET,
			     CAP_KILL);
		if ((bound && capng_apply(CAPNG_SELECT_BOUNDS)) || capng_apply(CAPNG_SELECT_CAPS))
			snprintf(err, sizeof(err), "cannot drop its capabilities");
	}
	if (!err[0])
		(void)sandbox_filter(o->mode, true, err, sizeof(err));
	if (err[0])
		log_warnx("%s: the jail's monitor: %s", __func__, err);
}

static pid_t sandbox_host_pid;          /* set in a jailed child: its pid outside */

pid_t sandbox_pid(void)
{
	return sandbox_host_pid ? sandbox_host_pid : getpid();
}

/* The child's API socket, if it is still there and nobody serves it. */
static void sandbox_jail_unlink_api(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	int fd, r;

	if (!path || strlen(path) >= sizeof(sa.sun_path) || lstat(path, &st) || !S_ISSOCK(st.st_mode))
		return;
	memcpy(sa.sun_path, path, strlen(path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	if (r < 0 && errno == ECONNREFUSED)
		unlink(path);
	close(fd);
}

/* The monitor: signals to the child until it is gone; its exit code. */
static int sandbox_monitor(pid_t child, const sigset_t *set, const char *api_path)
{
	siginfo_t si;
	int status = 0;
	pid_t r;

	for (;;) {
		if (sigwaitinfo(set, &si) < 0) {
			if (errno == EINTR)
				continue;
			log_warn("%s: sigwaitinfo", __func__);
			r = waitpid(child, &status, 0);
			break;
		}
		if (si.si_signo != SIGCHLD) {
			kill(child, si.si_signo);
			continue;
		}
		r = waitpid(child, &status, WNOHANG);
		if (r == child || (r < 0 && errno != EINTR))
			break;
	}
	sandbox_jail_unlink_api(api_path);
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status)) {
		int sig = WTERMSIG(status);

		log_warnx("the jailed VM process %d was killed by %s%s", (int)child, strsignal(sig),
			  sig == SIGSYS ? " (SIGSYS: a system call the sandbox does not allow; the "
			  "kernel log names it)" : "");
		return 128 + sig;
	}
	return 5;
}

int sandbox_jail_fork(const struct sandbox_opts *o, const char *api_path, int *code,
		      char *err, size_t len)
{
	sigset_t set, old;
	struct stat st;
	int pfd[2], ret;
	pid_t child, host_pid = 0;

	if (stat(o->jail, &st) || !S_ISDIR(st.st_mode)) {
		snprintf(err, len, "--jail %s: %s", o->jail, errno ? strerror(errno) : "not a directory");
		return -ENOTDIR;
	}
	if (pipe2(pfd, O_CLOEXEC)) {
		snprintf(err, len, "pipe: %s", strerror(errno));
		return -errno;
	}
	/*
	 * Blocked before the fork and left blocked in the child: PID 1 of a
	 * namespace ignores signals it has no handler for, and the child takes
	 * these through its signalfd (run.c) once its loop exists.
	 */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, &old);
	if (unshare(CLONE_NEWPID)) {
		ret = -errno;
		snprintf(err, len, "--jail: a new PID namespace: %s", strerror(errno));
		goto err;
	}
	child = fork();
	if (child < 0) {
		ret = -errno;
		snprintf(err, len, "--jail: fork: %s", strerror(errno));
		goto err;
	}
	if (child == 0) {
		close(pfd[1]);
		prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
		if (read(pfd[0], &host_pid, sizeof(host_pid)) != sizeof(host_pid))
			_exit(1);       /* the monitor is gone */
		close(pfd[0]);
		sandbox_host_pid = host_pid;
		if (unshare(CLONE_NEWNS)) {
			snprintf(err, len, "--jail: a new mount namespace: %s", strerror(errno));
			return -errno;
		}
		return 0;
	}
	close(pfd[0]);
	if (write(pfd[1], &child, sizeof(child)) != sizeof(child))
		log_warn("%s: cannot tell the VM process its pid", __func__);
	close(pfd[1]);
	log_debug("%s: VM process %d, jailed in %s", __func__, (int)child, o->jail);
	sandbox_monitor_restrict(o);
	*code = sandbox_monitor(child, &set, api_path);
	return 1;
err:
	sigprocmask(SIG_SETMASK, &old, NULL);
	close(pfd[0]);
	close(pfd[1]);
	return ret;
}

/* In the jailed child, once everything is open: private mounts, chroot, limits. */
static int sandbox_jail_enter(const struct sandbox_opts *o, char *err, size_t len)
{
	struct rlimit nofile = { SANDBOX_JAIL_NOFILE, SANDBOX_JAIL_NOFILE }, core = { 0, 0 };

	/* Nothing mounted or unmounted in here shows outside (and nothing from outside in). */
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) {
		snprintf(err, len, "--jail: cannot make the mounts private: %s", strerror(errno));
		return -errno;
	}
	if (chroot(o->jail) || chdir("/")) {
		snprintf(err, len, "--jail: chroot %s: %s", o->jail, strerror(errno));
		return -errno;
	}
	/* No core dump (guest memory); descriptors bounded (an API flood, a leak). */
	if (setrlimit(RLIMIT_CORE, &core) || setrlimit(RLIMIT_NOFILE, &nofile)) {
		snprintf(err, len, "--jail: setrlimit: %s", strerror(errno));
		return -errno;
	}
	return 0;
}

/* ---- ids and capabilities -------------------------------------------------------- */

/*
 * User threads of this process (the sandbox is entered on the only one).
 * Kernel workers that live in the thread group (KVM's NX huge page
 * recovery task, a vhost_task: PF_USER_WORKER) run no user code and are
 * not counted.
 */
#define SANDBOX_PF_USER_WORKER 0x00004000u
#define SANDBOX_PF_KTHREAD     0x00200000u

static bool sandbox_kernel_worker(const char *tid)
{
	char path[64], buf[512], *p;
	unsigned long flags;
	ssize_t n;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%s/stat", tid);
	f = fopen(path, "re");
	if (!f)
		return false;
	n = (ssize_t)fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	/* After "(comm)": state ppid pgrp session tty_nr tpgid flags. */
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %lu", &flags) != 1)
		return false;
	return flags & (SANDBOX_PF_USER_WORKER | SANDBOX_PF_KTHREAD);
}

static int sandbox_nr_threads(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' && !sandbox_kernel_worker(e->d_name))
			n++;
	closedir(d);
	return n;
}

static int sandbox_set_user(const struct sandbox_opts *o, char *err, size_t len)
{
	uid_t r, e, s;
	gid_t g = o->gid;

	if (setgroups(1, &g) || setresgid(o->gid, o->gid, o->gid) ||
	    setresuid(o->uid, o->uid, o->uid)) {
		snprintf(err, len, "cannot become uid %u gid %u: %s", (unsigned int)o->uid,
			 (unsigned int)o->gid, strerror(errno));
		return -errno;
	}
	/* Check, as OpenBSD's privsep does: all three ids changed, and root cannot come back. */
	if (getresuid(&r, &e, &s) || r != o->uid || e != o->uid || s != o->uid ||
	    getegid() != o->gid || getgid() != o->gid) {
		snprintf(err, len, "uid %u gid %u did not stick", (unsigned int)o->uid,
			 (unsigned int)o->gid);
		return -EPERM;
	}
	if (setuid(0) == 0 || seteuid(0) == 0 || setgid(0) == 0) {
		snprintf(err, len, "uid or gid 0 could be regained after dropping to uid %u",
			 (unsigned int)o->uid);
		return -EPERM;
	}
	return 0;
}

static int sandbox_caps(const struct sandbox_opts *o, char *err, size_t len)
{
	bool can_bound;
	int ret;

	if (capng_get_caps_process()) {
		snprintf(err, len, "cannot read this process's capabilities");
		return -EIO;
	}
	/* Emptying the bounding set needs CAP_SETPCAP; without it no capability is held. */
	can_bound = capng_have_capability(CAPNG_EFFECTIVE, CAP_SETPCAP);
	capng_clear(CAPNG_SELECT_ALL);
	if (can_bound && capng_apply(CAPNG_SELECT_BOUNDS)) {
		snprintf(err, len, "cannot empty the capability bounding set");
		return -EPERM;
	}
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) && errno != EINVAL) {
		snprintf(err, len, "cannot clear the ambient capabilities: %s", strerror(errno));
		return -errno;
	}
	if (o->has_user && (ret = sandbox_set_user(o, err, len)))
		return ret;
	if (o->mode == SANDBOX_OFF)
		return 0;
	if (capng_apply(CAPNG_SELECT_CAPS)) {
		snprintf(err, len, "cannot drop the capabilities");
		return -EPERM;
	}
	if (capng_get_caps_process() ||
	    capng_have_capabilities(CAPNG_SELECT_CAPS) != CAPNG_NONE) {
		snprintf(err, len, "capabilities are left after dropping them all");
		return -EPERM;
	}
	return 0;
}

int sandbox_apply(const struct sandbox_opts *o, char *err, size_t len)
{
	int n, ret;

	if (o->mode == SANDBOX_OFF && !o->has_user && !o->jail)
		return 0;
	n = sandbox_nr_threads();
	if (n != 1) {
		snprintf(err, len, "the sandbox must be entered with one thread, not %d", n);
		return -EBUSY;
	}
	if (o->mode == SANDBOX_OFF) {
		/* --no-sandbox --user/--jail: only the jail and the user (and its groups). */
		if (o->jail && (ret = sandbox_jail_enter(o, err, len)))
			return ret;
		if (o->has_user && (ret = sandbox_set_user(o, err, len)))
			return ret;
		return 0;
	}
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) {
		snprintf(err, len, "PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
		return -errno;
	}
	if (o->jail && (ret = sandbox_jail_enter(o, err, len)))
		return ret;
	ret = sandbox_caps(o, err, len);
	if (ret)
		return ret;
#ifdef SANDBOX_ASAN
	/*
	 * A new uid makes the process undumpable, and LeakSanitizer's tracer
	 * could then not attach to its threads at exit.  ASan builds only.
	 */
	if (o->has_user)
		prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
#endif
	ret = sandbox_filter(o->mode, false, err, len);
	if (!ret)
		log_debug("%s: seccomp filter (%s), no_new_privs, no capabilities%s", __func__,
			  sandbox_mode_name(o->mode), o->has_user ? ", user changed" : "");
	return ret;
}

/* ---- the test hook ----------------------------------------------------------------- */

#ifdef GODWIT_TEST_HOOKS
static int sandbox_test_nr;
static unsigned int sandbox_test_delay_ms;

static void *sandbox_test_thread(void *arg)
{
	struct timespec ts = { .tv_sec = sandbox_test_delay_ms / 1000,
			       .tv_nsec = (long)(sandbox_test_delay_ms % 1000) * 1000000L };
	long r;

	nanosleep(&ts, NULL);
	log_info("test hook: calling system call %d", sandbox_test_nr);
	r = syscall(sandbox_test_nr, 0L, 0L, 0L, 0L, 0L, 0L);
	log_info("test hook: system call %d returned %ld (%s)", sandbox_test_nr, r,
		 r < 0 ? strerror(errno) : "ok");
	return NULL;
}

void sandbox_test_hook(void)
{
	const char *name = getenv("GODWIT_TEST_SYSCALL");
	const char *delay = getenv("GODWIT_TEST_SYSCALL_DELAY_MS");
	pthread_t t;

	if (!name || !*name)
		return;
	sandbox_test_nr = seccomp_syscall_resolve_name(name);
	if (sandbox_test_nr == __NR_SCMP_ERROR) {
		log_warnx("%s: GODWIT_TEST_SYSCALL=%s: unknown system call", __func__, name);
		return;
	}
	sandbox_test_delay_ms = delay ? (unsigned int)strtoul(delay, NULL, 10) : 300;
	if (pthread_create(&t, NULL, sandbox_test_thread, NULL) == 0)
		pthread_detach(t);
	else
		log_warnx("%s: cannot start the test thread", __func__);
}
#else
void sandbox_test_hook(void)
{
}
#endif
