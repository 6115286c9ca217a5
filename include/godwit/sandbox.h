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
};

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
 * sandbox_test_hook - in a build with -DGODWIT_TEST_HOOKS only: if the
 * environment has GODWIT_TEST_SYSCALL=NAME, a new thread makes that system
 * call (all arguments 0) after GODWIT_TEST_SYSCALL_DELAY_MS (default 300) ms,
 * for tests/kvm/t-sandbox.sh to see the filter kill the process.  A no-op
 * otherwise.
 */
void sandbox_test_hook(void);

#endif
