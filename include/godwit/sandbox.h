/*
 * sandbox.h - what a VM process gives up once it is set up (sandbox.c): a
 * seccomp filter that allows only the system calls its threads need,
 * no_new_privs, every capability, and optionally its user (--user).
 * docs/architecture.md ("Sandbox") says what is allowed and why.
 */
#ifndef GODWIT_SANDBOX_H
#define GODWIT_SANDBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "godwit/common.h"

enum sandbox_mode {
	SANDBOX_KILL,   /* default: an unlisted system call kills the process (SIGSYS) */
	SANDBOX_TRAP,   /* the same, through a handler that names the call in godwit's log */
	SANDBOX_LOG,    /* unlisted calls are allowed and logged by the kernel (building the list) */
	SANDBOX_OFF,    /* --no-sandbox: nothing dropped, no filter (debugging) */
};

struct sandbox_opts {
	enum sandbox_mode mode;
	bool has_user;           /* --user given */
	uid_t uid;
	gid_t gid;
	const char *jail;        /* --jail DIR, or NULL */
};

/* --jail: the descriptor limit in the jail (RLIMIT_NOFILE, soft and hard). */
#define SANDBOX_JAIL_NOFILE 2048

/* "kill", "trap", "log" or "off". */
const char *sandbox_mode_name(enum sandbox_mode m);
/* --sandbox MODE: 0, or -EINVAL. */
int sandbox_mode_parse(const char *s, enum sandbox_mode *m) __must_check;
/*
 * sandbox_user_parse - --user UID[:GID] or NAME[:GROUP] (a name is looked up
 * now; without GID, the user's primary group, or GID = UID for a number no
 * user has).  Returns 0, or -EINVAL with err set.
 */
int sandbox_user_parse(const char *s, struct sandbox_opts *o, char *err, size_t len) __must_check;

/*
 * sandbox_apply - make this process what o asks for, in order: no_new_privs;
 * with --jail (in sandbox_jail_fork's child), mounts made private, chroot to
 * the jail, RLIMIT_NOFILE and RLIMIT_CORE (0) lowered;
 * the capability bounding set and the ambient set emptied; --user's groups,
 * gid and uid (then checked: uid 0 cannot be regained); the effective,
 * permitted and inheritable sets emptied and checked; the seccomp filter
 * (SECCOMP_FILTER_FLAG_TSYNC).  Call it on the only thread: capabilities and
 * ids belong to threads, and threads started later inherit everything.
 * With SANDBOX_OFF only --user is applied.  Returns 0, or -errno with err
 * set (the caller must not go on: the process may be half-dropped).
 */
int sandbox_apply(const struct sandbox_opts *o, char *err, size_t len) __must_check;

/*
 * sandbox_jail_fork - --jail, before anything of the VM exists: new PID and
 * mount namespaces for a child, which goes on to build and run the VM as
 * PID 1 of its namespace (and dies with its parent); the parent stays as
 * its monitor, forwarding SIGINT, SIGTERM and SIGHUP, until it exits.
 * Returns 0 in the child; 1 in the parent once the child is gone, with
 * *code its exit status (128 + the signal that killed it, said in the log:
 * SIGSYS is the filter's); or -errno with err set (no child).  api_path: a
 * socket the child leaves behind (it cannot remove it from inside the
 * jail) is removed by the parent.
 */
int sandbox_jail_fork(const struct sandbox_opts *o, const char *api_path, int *code,
		      char *err, size_t len) __must_check;
/* This process's id as the host sees it (in a jail, getpid() is 1). */
pid_t sandbox_pid(void);

/*
 * sandbox_test_hook - in a build with -DGODWIT_TEST_HOOKS only: if the
 * environment has GODWIT_TEST_SYSCALL=NAME, a new thread makes that system
 * call (all arguments 0) after GODWIT_TEST_SYSCALL_DELAY_MS (default 300) ms,
 * for tests/kvm/t-sandbox.sh to see the filter kill the process.  A no-op
 * otherwise.
 */
void sandbox_test_hook(void);

#endif
