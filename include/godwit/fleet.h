/*
 * fleet.h - the fleet's records in etcd (docs/fleet.md, "Records"), shared
 * by the host agent (godwitd) and `godwit fleet`.
 *
 *   /godwit/hosts/H          JSON, under H's agent lease: it is alive
 *   /godwit/cordon/H         "1": no new VM goes to H (no lease: it lasts)
 *   /godwit/vms/V/spec       JSON: how to run V (fleet_spec)
 *   /godwit/vms/V/owner      "HOST EPOCH": who may run V.  Changed only by a
 *                            transaction that compares the old value
 *   /godwit/vms/V/veto/E     "HOST": the migration at epoch E was given up;
 *                            its COMMIT transaction can never succeed
 *   /godwit/vms/V/status     JSON, written by V's owner agent
 *   /godwit/vms/V/intent     JSON, written by `godwit fleet`: what to do next
 *   /godwit/vms/V/migration  JSON, the last migration's progress and outcome
 */
#ifndef GODWIT_FLEET_H
#define GODWIT_FLEET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FLEET_PREFIX        "/godwit/"
#define FLEET_NAME_MAX      64       /* host and VM names: [A-Za-z0-9._-], 1-63 */
#define FLEET_KEY_MAX       256
#define FLEET_OWNER_MAX     (FLEET_NAME_MAX + 24)

/* true if s is a valid host or VM name. */
bool fleet_name_ok(const char *s);

/* Keys: 0, or -ENAMETOOLONG / -EINVAL for a bad name. */
int fleet_key_host(char *buf, size_t len, const char *host);
int fleet_key_cordon(char *buf, size_t len, const char *host);
/* what: "spec", "owner", "status", "intent", "migration". */
int fleet_key_vm(char *buf, size_t len, const char *vm, const char *what);
int fleet_key_veto(char *buf, size_t len, const char *vm, uint64_t epoch);

/* The owner record "HOST EPOCH". */
struct fleet_owner {
	char host[FLEET_NAME_MAX];
	uint64_t epoch;
};
int fleet_owner_parse(const char *s, struct fleet_owner *o);    /* 0 or -EBADMSG */
void fleet_owner_format(const struct fleet_owner *o, char *buf, size_t len);

#endif
