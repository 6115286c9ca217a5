/*
 * platform.c - creates the platform devices of every VM (devices.h),
 * registers their ports and adds them to the VM's device list (dev.h) in a
 * fixed order, plus a sink for the POST/delay port 0x80 that Linux writes
 * for I/O delays (so it costs no log line).
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

/*
 * platform_init - see devices.h.  The registration order is the order the
 * devices are saved and loaded in; it never changes for a given layout of
 * the stream (stream ids: "serial", "rtc", "i8042", "acpi-pm").
 * Returns 0, -ENOMEM, or the first device's error (nothing is left behind).
 */
int platform_init(struct vm *vm, int console_fd)
{
	struct vm_devices *d = calloc(1, sizeof(*d));
	int ret;

	if (!d)
		return -ENOMEM;
	vm->dev = d;
	ret = serial_init(&d->com1, vm, PORT_COM1, IRQ_COM1, console_fd);
	if (!ret)
		ret = dev_register(vm, &d->com1.dev, &serial_dev_ops, &d->com1, 0);
	if (!ret)
		ret = rtc_init(&d->rtc, vm);
	if (!ret)
		ret = dev_register(vm, &d->rtc.dev, &rtc_dev_ops, &d->rtc, 0);
	if (!ret)
		ret = i8042_init(&d->kbd, vm);
	if (!ret)
		ret = dev_register(vm, &d->kbd.dev, &i8042_dev_ops, &d->kbd, 0);
	if (!ret)
		ret = pci_init(&d->pci, vm);
	if (!ret)
		ret = acpi_pm_init(&d->pm, vm);
	if (!ret)
		ret = dev_register(vm, &d->pm.dev, &acpi_pm_dev_ops, &d->pm, 0);
	if (!ret)
		ret = vm_register_pio(vm, 0x80, 1, sink_io, NULL);
	if (ret) {
		log_warnx("%s: cannot register the platform devices (%d)", __func__, ret);
		platform_destroy(vm);
	}
	return ret;
}

/*
 * platform_destroy - take the platform devices off vm->devices (every entry
 * that lives inside vm->dev, the PCI bus's too) and free them.  Other
 * devices stay on the list.
 */
void platform_destroy(struct vm *vm)
{
	uintptr_t lo = (uintptr_t)vm->dev, hi = lo + sizeof(*vm->dev);
	struct dev **pp = &vm->devices;

	if (!vm->dev)
		return;
	while (*pp) {
		uintptr_t a = (uintptr_t)*pp;

		if (a >= lo && a < hi)
			*pp = (*pp)->next;
		else
			pp = &(*pp)->next;
	}
	pci_destroy(&vm->dev->pci);
	free(vm->dev);
	vm->dev = NULL;
}
