/*
 * cmd.h - subcommands of the godwit binary; each returns a process exit code.
 */
#ifndef GODWIT_CMD_H
#define GODWIT_CMD_H

int cmd_run(int argc, char **argv);
int cmd_stream_dump(int argc, char **argv);

#endif
