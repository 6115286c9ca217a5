/*
 * fuzz_devspec.c - libFuzzer target for the --disk/--net parser (devspec.c,
 * tap.c's tap_spec_parse) and the --with-disks serial list.  A restore or a
 * migration destination runs the device specs it rebuilds from a stream's
 * options through vm_device_arg_parse, so the input may come from a peer:
 * whatever it is, the parser returns 0 with NUL-terminated fields within
 * their sizes, or an error with a message, and never reads or writes out of
 * bounds.
 *
 * The first byte picks the parser (0 disk, 1 net, 2 the serial list); the
 * rest, up to the first NUL, is the text.
 *   make fuzz && build-fuzz/fuzz-devspec -max_total_time=60 build-fuzz/corpus-devspec
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/devspec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vm_device_arg a;
	char serials[VM_MAX_DEVICE_ARGS][DISK_SERIAL_MAX + 1];
	char err[256];
	unsigned int n;
	char *text;

	if (size < 1)
		return 0;
	text = malloc(size);
	if (!text)
		return 0;
	memcpy(text, data + 1, size - 1);
	text[size - 1] = '\0';
	err[0] = '\0';
	switch (data[0] % 3) {
	case 0:
	case 1:
		if (vm_device_arg_parse(&a, data[0] % 3 ? VM_DEV_NET : VM_DEV_DISK, text, err,
					sizeof(err))) {
			if (!err[0] || strlen(err) >= sizeof(err))
				abort();             /* a refusal always says why */
			break;
		}
		if (strlen(a.options) > DEVSPEC_OPTS_MAX || a.spec != text)
			abort();
		if (a.kind == VM_DEV_DISK && (!a.disk.path[0] ||
					      strlen(a.disk.path) >= sizeof(a.disk.path) ||
					      strlen(a.disk.serial) > DISK_SERIAL_MAX ||
					      strchr(a.disk.path, ',')))
			abort();
		if (a.kind == VM_DEV_NET && (!a.net.tap[0] || strlen(a.net.tap) >= sizeof(a.net.tap)))
			abort();
		break;
	default:
		if (disk_serials_parse(text, serials, VM_MAX_DEVICE_ARGS, &n, err, sizeof(err))) {
			if (!err[0])
				abort();
			break;
		}
		if (!n || n > VM_MAX_DEVICE_ARGS)
			abort();
		for (unsigned int i = 0; i < n; i++)
			if (!serials[i][0] || strlen(serials[i]) > DISK_SERIAL_MAX)
				abort();
	}
	free(text);
	return 0;
}
