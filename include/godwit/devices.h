/*
 * devices.h - the platform devices every godwit VM has: a 16550 UART on
 * COM1, the CMOS RTC, an i8042 (reset only), the PCI bus (host bridge,
 * configuration mechanism #1, BARs, capabilities, MSI-X) and the ACPI
 * PM1a/PM-timer registers.
 *
 * Each is migratable through its dev_ops (dev.h; the stream ids and tags
 * are in docs/devices.md); platform_init() registers them in vm->devices.
 * The init functions accept vm == NULL: the device then registers no ports
 * and raises no IRQ or exit, so unit tests drive it through its port handler.
 */
#ifndef GODWIT_DEVICES_H
#define GODWIT_DEVICES_H

#include <pthread.h>
#include <time.h>
#include "godwit/common.h"
#include "godwit/dev.h"
#include "godwit/irq.h"

struct vm;

/* clock_gettime() or a test's frozen clock (the RTC and the PM timer read time). */
typedef int (*dev_clock_fn)(clockid_t clk, struct timespec *ts);

/* ---- 16550 UART -------------------------------------------------------------- */
#define SERIAL_RX_SIZE 4096u

struct serial {
	pthread_mutex_t lock;
	struct vm *vm;
	uint32_t irq;
	int out_fd;                   /* guest output goes here; -1 drops it */
	uint8_t ier, iir_thri, lcr, mcr, lsr, msr, scr, dll, dlm, fcr;
	int irq_level;
	uint8_t rx[SERIAL_RX_SIZE];   /* input FIFO (beyond the 16550's 16 bytes) */
	unsigned int rx_head, rx_len;
	struct dev dev;               /* registry entry (platform_init) */
};
extern const struct dev_ops serial_dev_ops;   /* "serial" */
int serial_init(struct serial *s, struct vm *vm, uint16_t port, uint32_t irq,
		int out_fd) __must_check;
/* Queue host input for the guest; returns the bytes accepted. */
size_t serial_input(struct serial *s, const uint8_t *buf, size_t len);
/* The port handler, exported for unit tests. */
void serial_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write);

/* ---- CMOS RTC ------------------------------------------------------------------ */
#define RTC_CMOS_SIZE 128u

struct rtc {
	pthread_mutex_t lock;
	uint8_t index;
	uint8_t cmos[RTC_CMOS_SIZE];
	struct timespec offset;       /* guest time minus host UTC (tv_nsec in [0, 1e9)) */
	dev_clock_fn clock;           /* host UTC: CLOCK_REALTIME through this */
	struct dev dev;
};
extern const struct dev_ops rtc_dev_ops;      /* "rtc" */
int rtc_init(struct rtc *r, struct vm *vm) __must_check;
void rtc_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write);

/* ---- i8042 (the keyboard controller's reset line) ------------------------------ */
struct i8042 {
	pthread_mutex_t lock;
	struct vm *vm;
	uint8_t cmd_byte, status, out, pending_cmd;
	bool out_full;
	struct dev dev;
};
extern const struct dev_ops i8042_dev_ops;    /* "i8042" */
int i8042_init(struct i8042 *k, struct vm *vm) __must_check;
/* The port handler (0x60, 0x64, 0x92), exported for unit tests. */
void i8042_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write);

/* ---- PCI ----------------------------------------------------------------------- */
/*
 * Bus 0 behind configuration mechanism #1.  A device fills its config space
 * header (IDs, class), declares BARs with pci_set_bar(), adds capabilities
 * with pci_add_cap() / pci_msix_init(), then plugs in with pci_add(), which
 * gives each BAR an address (godwit is the firmware: BARs are assigned in
 * the 32-bit window from LAYOUT_PCI_MMIO32, memory decoding on).  The bus
 * dispatches MMIO in the PCI windows to whichever BAR decodes the address
 * now, so a guest may move BARs; a device that must know (ioeventfds) sets
 * bar_moved.  MSI-X tables and PBAs are emulated by the bus (pci_msix_*).
 *
 * Locks: the bus lock covers config space accesses (cfg_read/cfg_write
 * hooks run under it) and BAR lookups; BAR handlers run without it.  The
 * MSI-X state has its own lock, taken by any thread that fires a vector.
 * Order: bus lock -> device lock -> MSI-X lock -> irq router lock.
 */
#define PCI_MAX_DEVS 32
#define PCI_NUM_BARS 6

#define PCI_COMMAND_MEMORY      0x0002
#define PCI_COMMAND_INTX_DISABLE 0x0400
#define PCI_STATUS_CAP_LIST     0x0010
#define PCI_CAP_ID_VNDR         0x09
#define PCI_CAP_ID_MSIX         0x11
#define PCI_MSIX_ENTRY_SIZE     16

struct pci_dev;
struct pci_bus;

struct pci_bar {
	uint64_t size;                /* power of 2, >= 16; 0: unused */
	bool mem64;                   /* 64-bit memory BAR: takes this and the next register */
	bool prefetch;
	/* The BAR's MMIO handler, called with the offset into the BAR as addr. */
	void (*fn)(void *opaque, uint64_t off, void *data, unsigned int len, bool is_write);
	void *opaque;
	uint64_t addr;                /* guest address decoded now; 0: not decoded */
};

struct pci_msix {
	pthread_mutex_t lock;
	unsigned int nr;              /* vectors */
	uint8_t cap;                  /* capability offset */
	uint8_t bar;
	uint32_t table_off, pba_off;  /* inside the BAR */
	uint8_t *table;               /* nr * 16 bytes, little-endian as the guest sees it */
	uint64_t *pba;                /* pending bits */
	int *gsi;                     /* KVM GSI of each vector, -1 none */
	int *irqfd;                   /* eventfd bound to that GSI, -1 none */
	bool *route_stale;            /* the entry changed since its route was installed */
	bool enabled, fmask;          /* message control: MSI-X enable, function mask */
	unsigned long fired;          /* messages sent (tests, stats) */
};

#define PCI_CFG_SIZE 256u

struct pci_dev {
	uint8_t cfg[PCI_CFG_SIZE];
	uint8_t wmask[PCI_CFG_SIZE];  /* writable bits of each config byte */
	/* After a guest config write (under the bus lock; may be NULL). */
	void (*cfg_write)(struct pci_dev *d, unsigned int off, unsigned int len);
	void *opaque;
	/* Before a guest config read of [off, off+len): refresh cfg bytes (may be NULL). */
	void (*cfg_read)(struct pci_dev *d, unsigned int off, unsigned int len);
	/* A BAR's decoded address changed (0: not decoded); under the bus lock (may be NULL). */
	void (*bar_moved)(struct pci_dev *d, unsigned int bar, uint64_t old_addr, uint64_t new_addr);
	struct pci_bar bar[PCI_NUM_BARS];
	struct pci_msix msix;         /* msix.nr == 0: no MSI-X */
	struct pci_bus *bus;
	unsigned int slot;
	uint8_t cap_last;             /* offset of the last capability, 0: none */
	uint8_t cap_end;              /* first free config byte for capabilities */
};

struct pci_bus {
	pthread_mutex_t lock;
	struct vm *vm;
	uint32_t addr;                /* CONFIG_ADDRESS (0xcf8) */
	struct pci_dev *devs[PCI_MAX_DEVS]; /* bus 0, function 0 only for now */
	struct pci_dev host_bridge;
	uint64_t mmio32_next;         /* next free address in the 32-bit window */
	struct irq_router irq;        /* MSI routes, irqfds, INTx lines */
	struct dev dev;               /* registry entry "pci-bus" (pci_init) */
};
int pci_init(struct pci_bus *b, struct vm *vm) __must_check;
void pci_destroy(struct pci_bus *b);
/*
 * pci_add - plug d into slot (1-31) and assign its BARs.  Returns 0, -EBUSY
 * (slot taken), -EINVAL (bad slot) or -ENOSPC (the 32-bit window is full).
 */
int pci_add(struct pci_bus *b, unsigned int slot, struct pci_dev *d) __must_check;
/* pci_remove - take the device in slot off the bus (set-up failures; no hot-unplug). */
void pci_remove(struct pci_bus *b, unsigned int slot);
/* The port handler (0xcf8-0xcff), exported for unit tests. */
void pci_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write);
/* The MMIO handler of the PCI windows (addr is a guest address), exported for unit tests. */
void pci_mmio(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write);
/*
 * pci_set_bar - declare memory BAR `idx` (before pci_add) of `size` bytes
 * (a power of 2, >= 16), served by fn.  A 64-bit BAR also takes idx + 1.
 */
void pci_set_bar(struct pci_dev *d, unsigned int idx, uint64_t size, bool mem64,
		 void (*fn)(void *opaque, uint64_t off, void *data, unsigned int len, bool is_write),
		 void *opaque);
/*
 * pci_add_cap - append a capability of len bytes (>= 2) with id to the list;
 * returns its offset in config space, or 0 if config space is full.  The
 * caller fills the bytes after the id/next pair and their wmask.
 */
uint8_t pci_add_cap(struct pci_dev *d, uint8_t id, uint8_t len);
/*
 * pci_msix_init - give d an MSI-X capability with nr vectors whose table
 * and PBA live in BAR `bar` at the given offsets (8-byte aligned); every
 * vector gets a GSI and an irqfd once the device is on a bus with a VM
 * (pci_add).  Returns 0 or -errno.
 */
int pci_msix_init(struct pci_dev *d, unsigned int nr, uint8_t bar, uint32_t table_off,
		  uint32_t pba_off) __must_check;
void pci_msix_destroy(struct pci_dev *d);
/*
 * pci_msix_notify - send vector v (any thread): fires it, or sets its
 * pending bit if it or the function is masked (sent on unmask).  Returns
 * false if MSI-X is disabled (the caller uses INTx) or v is out of range.
 */
bool pci_msix_notify(struct pci_dev *d, unsigned int v);
/* MSI-X is enabled in message control. */
bool pci_msix_enabled(struct pci_dev *d);
/* Re-install every vector's route after a load (MSI-X state was written directly). */
void pci_msix_refresh(struct pci_dev *d);
/* Re-derive BAR addresses from config space (after a load) and report moves. */
void pci_update_bars(struct pci_dev *d);
/* INTx (pin A): the legacy line (GSI < 16) a device in `slot` uses; set in config 0x3c. */
unsigned int pci_intx_gsi(unsigned int slot);
/* Drive d's INTx line (honours the command register's INTx disable). */
void pci_set_intx(struct pci_dev *d, int level);
/*
 * A function's interrupt with a status byte (virtio's ISR), any thread.
 * Each runs under d's MSI-X lock, so an MSI-X enable or an ISR read never
 * falls between a decision and the line: INTx is asserted exactly while
 * MSI-X is off and *status is not zero.
 *   pci_irq_raise: MSI-X on: vector v (none if v is out of range); off:
 *     *status |= bits and INTx asserted.
 *   pci_irq_status_read: *status read and cleared; INTx lowered unless
 *     MSI-X is on.
 *   pci_irq_sync: INTx set from MSI-X and *status (after MSI-X control
 *     was written, or a load).
 */
void pci_irq_raise(struct pci_dev *d, unsigned int v, uint8_t *status, uint8_t bits);
uint8_t pci_irq_status_read(struct pci_dev *d, uint8_t *status);
void pci_irq_sync(struct pci_dev *d, const uint8_t *status);

/* ---- ACPI PM1a event/control blocks and PM timer -------------------------------- */
struct acpi_pm {
	pthread_mutex_t lock;
	struct vm *vm;
	uint16_t sts, en, cnt;
	uint32_t tmr_offset;          /* added to the host-derived timer count (mod 2^24) */
	dev_clock_fn clock;           /* the PM timer reads CLOCK_MONOTONIC through this */
	struct dev dev;
};
extern const struct dev_ops acpi_pm_dev_ops;  /* "acpi-pm" */
int acpi_pm_init(struct acpi_pm *p, struct vm *vm) __must_check;
void acpi_pm_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write);

struct vm_devices {
	struct serial com1;
	struct rtc rtc;
	struct i8042 kbd;
	struct pci_bus pci;
	struct acpi_pm pm;
};

/*
 * Create the platform devices, register their ports and add them to
 * vm->devices (in this order: serial, rtc, i8042, acpi-pm); console to
 * console_fd.  platform_destroy() takes them off vm->devices again.
 */
int platform_init(struct vm *vm, int console_fd) __must_check;
void platform_destroy(struct vm *vm);

#endif
