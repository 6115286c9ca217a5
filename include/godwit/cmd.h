/*
 * cmd.h - subcommands of the godwit binary; each returns a process exit code.
 */
#ifndef GODWIT_CMD_H
#define GODWIT_CMD_H

int cmd_run(int argc, char **argv);
int cmd_stream_dump(int argc, char **argv);
/* `godwit restore --from FILE ...` (src/cmd/run.c) */
int cmd_restore(int argc, char **argv);
/* `godwit snapshot --api SOCKET --out FILE [--resume]` (src/cmd/snapshot.c) */
int cmd_snapshot(int argc, char **argv);
/* `godwit migrate|migrate-status|migrate-cancel|migrate-resolve` (src/cmd/migrate.c) */
int cmd_migrate(int argc, char **argv);
int cmd_migrate_status(int argc, char **argv);
int cmd_migrate_cancel(int argc, char **argv);
int cmd_migrate_resolve(int argc, char **argv);
int cmd_migrate_resume(int argc, char **argv);
int cmd_migrate_commit(int argc, char **argv);
/* `godwit report FILE.json [--svg OUT]`: a saved migration report (src/cmd/report.c) */
int cmd_report(int argc, char **argv);
/* `godwit fleet [options] SUBCOMMAND ...`: VMs across hosts, through etcd (src/cmd/fleet.c) */
int cmd_fleet(int argc, char **argv);

#endif
