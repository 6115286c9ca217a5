/*
 * pci.c - PCI bus 0 behind configuration mechanism #1 (ports 0xcf8 address,
 * 0xcfc-0xcff data), with the host bridge at 00:00.0.  Devices (virtio,
 * next) plug in with pci_add().  A byte write to 0xcf9 is the PIIX-style
 * reset control register that the FADT's RESET_REG names.
 *
 * Config space of a device is a byte array plus a mask of writable bits, so
 * guest writes cannot change read-only fields (IDs, class, header type).
 */
#include <string.h>

#include "godwit/devices.h"
#include "godwit/layout.h"
#include "godwit/log.h"
#include "godwit/vm.h"

#define PCI_VENDOR_REDHAT   0x1b36
#define PCI_DEVICE_HOST     0x0008   /* generic PCIe host bridge ID QEMU uses */

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

static struct pci_dev *pci_lookup(struct pci_bus *b, uint32_t addr)
{
	unsigned int bus = (addr >> 16) & 0xff, slot = (addr >> 11) & 0x1f, fn = (addr >> 8) & 7;

	if (!(addr & 0x80000000u) || bus != 0 || fn != 0)
		return NULL;
	return b->devs[slot];
}

void pci_io(void *opaque, uint64_t port, void *data, unsigned int len, bool is_write)
{
	struct pci_bus *b = opaque;
	uint8_t *p = data;

	pthread_mutex_lock(&b->lock);
	if (port == PORT_PCI_ADDR && len == 4) {
		if (is_write)
			memcpy(&b->addr, p, 4), b->addr &= 0x80fffffcu;
		else
			memcpy(p, &b->addr, 4);
	} else if (port == PORT_RESET && len == 1) {
		if (is_write && (p[0] & 0x04))
			vm_request_exit(b->vm, EXIT_REBOOT, "guest reset through port 0xcf9");
		else if (!is_write)
			p[0] = 0;
	} else if (port >= PORT_PCI_DATA && port + len <= PORT_PCI_DATA + 4) {
		struct pci_dev *d = pci_lookup(b, b->addr);
		unsigned int off = (b->addr & 0xfc) + (unsigned int)(port - PORT_PCI_DATA);

		if (!d) {
			if (!is_write)
				memset(p, 0xff, len);
		} else if (is_write) {
			for (unsigned int i = 0; i < len; i++)
				d->cfg[off + i] = (uint8_t)((d->cfg[off + i] & ~d->wmask[off + i]) |
							    (p[i] & d->wmask[off + i]));
			if (d->cfg_write)
				d->cfg_write(d, off, len);
		} else {
			memcpy(p, d->cfg + off, len);
		}
	} else if (!is_write) {
		memset(p, 0xff, len);
	}
	pthread_mutex_unlock(&b->lock);
}

int pci_add(struct pci_bus *b, unsigned int slot, struct pci_dev *d)
{
	if (slot >= PCI_MAX_DEVS || b->devs[slot])
		return -1;
	b->devs[slot] = d;
	return 0;
}

int pci_init(struct pci_bus *b, struct vm *vm)
{
	struct pci_dev *h = &b->host_bridge;
	int ret;

	memset(b, 0, sizeof(*b));
	pthread_mutex_init(&b->lock, NULL);
	b->vm = vm;
	put16(h->cfg + 0x00, PCI_VENDOR_REDHAT);
	put16(h->cfg + 0x02, PCI_DEVICE_HOST);
	put16(h->cfg + 0x04, 0x0006);            /* command: memory + bus master */
	h->cfg[0x0b] = 0x06;                     /* class: bridge */
	h->cfg[0x0a] = 0x00;                     /* subclass: host bridge */
	h->cfg[0x0e] = 0x00;                     /* header type 0, single function */
	put16(h->cfg + 0x2c, PCI_VENDOR_REDHAT); /* subsystem vendor */
	put16(h->cfg + 0x2e, 0x1100);
	put16(h->wmask + 0x04, 0x0146);          /* command bits a driver may toggle */
	h->wmask[0x0c] = 0xff;                   /* cache line size */
	h->wmask[0x0d] = 0xff;                   /* latency timer */
	h->wmask[0x3c] = 0xff;                   /* interrupt line */
	b->devs[0] = h;
	if (!vm)
		return 0;
	/* 0xcf8-0xcff as one range: 0xcf9 is routed to the reset handler above. */
	ret = vm_register_pio(vm, PORT_PCI_ADDR, 8, pci_io, b);
	return ret;
}
