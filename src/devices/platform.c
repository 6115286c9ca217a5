/*
 * platform.c - creates the platform devices of every VM (devices.h) and
 * registers their ports, plus a sink for the POST/delay port 0x80 that
 * Linux writes for I/O delays (so it costs no log line).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/devices.h"
#include "godwit/layout.h"
#include "godwit/log.h"
#include "godwit/vm.h"

static void sink_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write)
{
	if (!is_write)
		memset(data, 0xff, len);
}

int platform_init(struct vm *vm, int console_fd)
{
	struct vm_devices *d = calloc(1, sizeof(*d));
	int ret;

	if (!d)
		return -ENOMEM;
	vm->dev = d;
	ret = serial_init(&d->com1, vm, PORT_COM1, IRQ_COM1, console_fd);
	if (!ret)
		ret = rtc_init(&d->rtc, vm);
	if (!ret)
		ret = i8042_init(&d->kbd, vm);
	if (!ret)
		ret = pci_init(&d->pci, vm);
	if (!ret)
		ret = acpi_pm_init(&d->pm, vm);
	if (!ret)
		ret = vm_register_pio(vm, 0x80, 1, sink_io, NULL);
	if (ret) {
		log_warnx("%s: cannot register the platform devices (%d)", __func__, ret);
		platform_destroy(vm);
	}
	return ret;
}

void platform_destroy(struct vm *vm)
{
	free(vm->dev);
	vm->dev = NULL;
}
