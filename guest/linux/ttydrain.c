/*
 * guest/linux/ttydrain.c - waits until the terminals on stdout and stderr have sent all
 * queued output (tcdrain), so that /init's last lines reach the serial console before
 * `poweroff -f` stops the guest.  Nested (L2) serial output can lag seconds behind.
 * Usage: ttydrain [SECONDS]   (gives up after SECONDS, default 10)
 */
#include <signal.h>
#include <stdlib.h>
#include <termios.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	alarm(argc > 1 ? (unsigned)atoi(argv[1]) : 10);	/* SIGALRM ends a stuck drain */
	tcdrain(STDOUT_FILENO);
	tcdrain(STDERR_FILENO);
	return 0;
}
