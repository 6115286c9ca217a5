/*
 * devices.h - the platform devices every godwit VM has: a 16550 UART on
 * COM1, the CMOS RTC, an i8042 (reset only), the PCI host bridge with
 * configuration mechanism #1 and the ACPI PM1a/PM-timer registers.
 */
#ifndef GODWIT_DEVICES_H
#define GODWIT_DEVICES_H

#include <pthread.h>
#include "godwit/common.h"

struct vm;

/* ---- 16550 UART -------------------------------------------------------------- */
struct serial {
	pthread_mutex_t lock;
	struct vm *vm;
	uint32_t irq;
	int out_fd;                   /* guest output goes here; -1 drops it */
	uint8_t ier, iir_thri, lcr, mcr, lsr, msr, scr, dll, dlm, fcr;
	int irq_level;
	uint8_t rx[4096];             /* input FIFO (beyond the 16550's 16 bytes) */
	unsigned int rx_head, rx_len;
};
int serial_init(struct serial *s, struct vm *vm, uint16_t port, uint32_t irq,
		int out_fd) __must_check;
/* Queue host input for the guest; returns the bytes accepted. */
size_t serial_input(struct serial *s, const uint8_t *buf, size_t len);
/* The port handler, exported for unit tests. */
void serial_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write);

/* ---- CMOS RTC ------------------------------------------------------------------ */
struct rtc {
	pthread_mutex_t lock;
	uint8_t index;
	uint8_t cmos[128];
	int64_t offset;               /* guest time minus host UTC, seconds */
};
int rtc_init(struct rtc *r, struct vm *vm) __must_check;
void rtc_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write);

/* ---- i8042 (the keyboard controller's reset line) ------------------------------ */
struct i8042 {
	pthread_mutex_t lock;
	struct vm *vm;
	uint8_t cmd_byte, status, out, pending_cmd;
	bool out_full;
};
int i8042_init(struct i8042 *k, struct vm *vm) __must_check;

/* ---- PCI ----------------------------------------------------------------------- */
#define PCI_MAX_DEVS 32
struct pci_dev {
	uint8_t cfg[256];
	uint8_t wmask[256];           /* writable bits of each config byte */
	void (*cfg_write)(struct pci_dev *d, unsigned int off, unsigned int len);
	void *opaque;
};
struct pci_bus {
	pthread_mutex_t lock;
	struct vm *vm;
	uint32_t addr;                /* CONFIG_ADDRESS (0xcf8) */
	struct pci_dev *devs[PCI_MAX_DEVS]; /* bus 0, function 0 only for now */
	struct pci_dev host_bridge;
};
int pci_init(struct pci_bus *b, struct vm *vm) __must_check;
int pci_add(struct pci_bus *b, unsigned int slot, struct pci_dev *d) __must_check;
void pci_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write);

/* ---- ACPI PM1a event/control blocks and PM timer -------------------------------- */
struct acpi_pm {
	pthread_mutex_t lock;
	struct vm *vm;
	uint16_t sts, en, cnt;
};
int acpi_pm_init(struct acpi_pm *p, struct vm *vm) __must_check;
void acpi_pm_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write);

struct vm_devices {
	struct serial com1;
	struct rtc rtc;
	struct i8042 kbd;
	struct pci_bus pci;
	struct acpi_pm pm;
};

/* Create the platform devices and register their ports; console to out_fd. */
int platform_init(struct vm *vm, int console_fd) __must_check;
void platform_destroy(struct vm *vm);

#endif
