/*
 * irq.h - KVM interrupt routing for devices: the GSI routing table (the
 * in-kernel PIC/IOAPIC routes plus one MSI route per MSI-X vector in use),
 * irqfds (an eventfd bound to a GSI: a write injects the interrupt without
 * a syscall into KVM from the device's thread), direct MSI injection, and
 * shared level-triggered legacy lines (INTx).
 *
 * KVM_SET_GSI_ROUTING replaces the whole table, so the router keeps the
 * table the kernel installs by default (GSIs 0-15 on the PIC, except the
 * cascade pin 2, and 0-23 on the IOAPIC) and adds the MSI routes after it.
 *
 * Threads: every function may be called from any thread; the router's lock
 * protects the table.  With no VM fd (vm_fd < 0, unit tests) nothing is
 * sent to KVM and the calls succeed.
 */
#ifndef GODWIT_IRQ_H
#define GODWIT_IRQ_H

#include <pthread.h>
#include "godwit/common.h"

#define IRQ_NR_IRQCHIP_GSIS 24     /* IOAPIC pins; MSI GSIs are allocated above */
#define IRQ_MAX_MSI_ROUTES  256

struct irq_msi_route {
	uint32_t gsi;
	uint32_t addr_lo, addr_hi, data;
	bool installed;             /* part of the table KVM has */
};

struct irq_router {
	pthread_mutex_t lock;
	int vm_fd;                  /* -1: no KVM (unit tests) */
	uint32_t next_gsi;
	struct irq_msi_route msi[IRQ_MAX_MSI_ROUTES];
	unsigned int nr_msi;
	uint32_t line_sources[IRQ_NR_IRQCHIP_GSIS]; /* who asserts each legacy line */
	unsigned long nr_updates;   /* KVM_SET_GSI_ROUTING calls (tests, stats) */
};

/* irq_router_init - an empty router for the VM whose fd is vm_fd (-1: none). */
void irq_router_init(struct irq_router *r, int vm_fd);
void irq_router_destroy(struct irq_router *r);
/* irq_alloc_gsi - a new GSI for an MSI route (no route yet); returns it or -ENOSPC. */
int irq_alloc_gsi(struct irq_router *r) __must_check;
/*
 * irq_set_msi_route - route `gsi` (from irq_alloc_gsi) to the MSI message
 * (addr, data) and install the whole table in KVM.  Returns 0 or -errno
 * (the route is then not installed: use irq_signal_msi()).
 */
int irq_set_msi_route(struct irq_router *r, uint32_t gsi, uint64_t addr, uint32_t data) __must_check;
/* irq_route_installed - true if gsi has an MSI route KVM accepted. */
bool irq_route_installed(struct irq_router *r, uint32_t gsi);
/* irq_signal_msi - inject one MSI directly (KVM_SIGNAL_MSI).  Returns 0 or -errno. */
int irq_signal_msi(struct irq_router *r, uint64_t addr, uint32_t data);
/*
 * irq_irqfd - bind (assign) or unbind eventfd fd to gsi (KVM_IRQFD).
 * Returns 0 or -errno.
 */
int irq_irqfd(struct irq_router *r, int fd, uint32_t gsi, bool assign) __must_check;
/*
 * irq_line_set - drive a shared level-triggered line (gsi < 24): source
 * `src` (0-31, e.g. a PCI slot) asserts (level 1) or releases it; the line
 * is high while any source asserts it.  Returns 0 or -errno.
 */
int irq_line_set(struct irq_router *r, uint32_t gsi, unsigned int src, int level);

#endif
