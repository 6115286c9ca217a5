/*
 * pci.c - PCI bus 0 behind configuration mechanism #1 (ports 0xcf8 address,
 * 0xcfc-0xcff data), with the host bridge at 00:00.0; device BARs (sizing,
 * assignment in the 32-bit window, MMIO dispatch wherever the guest puts
 * them), capability lists, MSI-X (table, PBA, masking, KVM routes and
 * irqfds through irq.c) and INTx.  A byte write to 0xcf9 is the PIIX-style
 * reset control register that the FADT's RESET_REG names.
 *
 * Config space of a device is a byte array plus a mask of writable bits, so
 * guest writes cannot change read-only fields (IDs, class, header type).
 * BAR sizing falls out of the mask: writing all ones reads back ~(size-1)
 * with the type bits, as on hardware.
 *
 * Migration: the bus registers itself as device "pci-bus" (the 0xcf8 latch
 * and the host bridge's writable config bytes).  Devices on the bus save
 * their own config space and MSI-X state (see virtio/pci.c).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "godwit/boot.h"
#include "godwit/devices.h"
#include "godwit/irq.h"
#include "godwit/layout.h"
#include "godwit/le.h"
#include "godwit/log.h"
#include "godwit/vm.h"

#define PCI_VENDOR_REDHAT   0x1b36
#define PCI_DEVICE_HOST     0x0008   /* generic PCIe host bridge ID QEMU uses */

#define PCI_CFG_COMMAND     0x04
#define PCI_CFG_STATUS      0x06
#define PCI_CFG_BAR0        0x10
#define PCI_CFG_CAP_PTR     0x34
#define PCI_CFG_INT_LINE    0x3c
#define PCI_CFG_INT_PIN     0x3d
#define PCI_STATUS_INTX     0x0008

#define MSIX_CTRL_ENABLE    0x8000
#define MSIX_CTRL_FMASK     0x4000
#define MSIX_ENTRY_MASKED   1u


static bool overlaps(unsigned int off, unsigned int len, unsigned int start, unsigned int end)
{
	return off < end && off + len > start;
}

static struct pci_dev *pci_lookup(struct pci_bus *b, uint32_t addr)
{
	unsigned int bus = (addr >> 16) & 0xff, slot = (addr >> 11) & 0x1f, fn = (addr >> 8) & 7;

	if (!(addr & 0x80000000u) || bus != 0 || fn != 0)
		return NULL;
	return b->devs[slot];
}

/* ---- BARs ---------------------------------------------------------------------- */

void pci_set_bar(struct pci_dev *d, unsigned int idx, uint64_t size, bool mem64,
		 void (*fn)(void *opaque, uint64_t off, void *data, unsigned int len, bool is_write),
		 void *opaque)
{
	struct pci_bar *bar;

	if (NEVER(idx >= PCI_NUM_BARS || (mem64 && idx + 1 >= PCI_NUM_BARS) ||
		  size < 16 || (size & (size - 1))))
		return;
	bar = &d->bar[idx];
	bar->size = size;
	bar->mem64 = mem64;
	bar->fn = fn;
	bar->opaque = opaque;
	bar->addr = 0;
}

/* The address BAR idx decodes now per config space, or 0. */
static uint64_t pci_bar_decoded(const struct pci_dev *d, unsigned int idx)
{
	const struct pci_bar *bar = &d->bar[idx];
	uint64_t addr;

	if (!bar->size || !(le16_get(d->cfg + PCI_CFG_COMMAND) & PCI_COMMAND_MEMORY))
		return 0;
	addr = le32_get(d->cfg + PCI_CFG_BAR0 + 4 * idx) & ~0xfULL;
	if (bar->mem64)
		addr |= (uint64_t)le32_get(d->cfg + PCI_CFG_BAR0 + 4 * (idx + 1)) << 32;
	/* Mid-sizing (all ones) or wrapping: decodes nothing useful. */
	if (!addr || addr + bar->size < addr || addr + bar->size > (1ULL << 52))
		return 0;
	return addr;
}

static void pci_update_bars_locked(struct pci_dev *d)
{
	for (unsigned int i = 0; i < PCI_NUM_BARS; i++) {
		uint64_t now = pci_bar_decoded(d, i), old = d->bar[i].addr;

		if (now == old)
			continue;
		d->bar[i].addr = now;
		if (d->bar_moved)
			d->bar_moved(d, i, old, now);
	}
}

/* pci_update_bars - see devices.h. */
void pci_update_bars(struct pci_dev *d)
{
	if (d->bus)
		pthread_mutex_lock(&d->bus->lock);
	pci_update_bars_locked(d);
	if (d->bus)
		pthread_mutex_unlock(&d->bus->lock);
}

/* Write BAR idx's address into config space and make the address bits writable. */
static void pci_bar_program(struct pci_dev *d, unsigned int idx, uint64_t addr)
{
	struct pci_bar *bar = &d->bar[idx];
	uint32_t lo = (uint32_t)addr | (bar->mem64 ? 0x4 : 0) | (bar->prefetch ? 0x8 : 0);
	uint64_t mask = ~(bar->size - 1);

	le32_put(d->cfg + PCI_CFG_BAR0 + 4 * idx, lo);
	le32_put(d->wmask + PCI_CFG_BAR0 + 4 * idx, (uint32_t)mask & ~0xfu);
	if (bar->mem64) {
		le32_put(d->cfg + PCI_CFG_BAR0 + 4 * (idx + 1), (uint32_t)(addr >> 32));
		le32_put(d->wmask + PCI_CFG_BAR0 + 4 * (idx + 1), (uint32_t)(mask >> 32));
	}
}

/* ---- capabilities ---------------------------------------------------------------- */

uint8_t pci_add_cap(struct pci_dev *d, uint8_t id, uint8_t len)
{
	unsigned int off = ALIGN_UP(MAX(d->cap_end, 0x40u), 4u);

	if (len < 2 || off + len > sizeof(d->cfg))
		return 0;
	d->cfg[off] = id;
	d->cfg[off + 1] = 0;
	if (d->cap_last)
		d->cfg[d->cap_last + 1] = (uint8_t)off;
	else
		d->cfg[PCI_CFG_CAP_PTR] = (uint8_t)off;
	le16_put(d->cfg + PCI_CFG_STATUS, le16_get(d->cfg + PCI_CFG_STATUS) | PCI_STATUS_CAP_LIST);
	d->cap_last = (uint8_t)off;
	d->cap_end = (uint8_t)(off + len);
	return (uint8_t)off;
}

/* ---- MSI-X ------------------------------------------------------------------------- */

int pci_msix_init(struct pci_dev *d, unsigned int nr, uint8_t bar, uint32_t table_off,
		  uint32_t pba_off)
{
	struct pci_msix *m = &d->msix;
	uint8_t cap;

	if (!nr || nr > 2048 || bar >= PCI_NUM_BARS || (table_off | pba_off) & 7)
		return -EINVAL;
	cap = pci_add_cap(d, PCI_CAP_ID_MSIX, 12);
	if (!cap)
		return -ENOSPC;
	memset(m, 0, sizeof(*m));
	pthread_mutex_init(&m->lock, NULL);
	m->table = calloc(nr, PCI_MSIX_ENTRY_SIZE);
	m->pba = calloc((nr + 63) / 64, sizeof(uint64_t));
	m->gsi = calloc(nr, sizeof(int));
	m->irqfd = calloc(nr, sizeof(int));
	m->route_stale = calloc(nr, sizeof(bool));
	if (!m->table || !m->pba || !m->gsi || !m->irqfd || !m->route_stale) {
		pci_msix_destroy(d);
		return -ENOMEM;
	}
	for (unsigned int v = 0; v < nr; v++) {
		le32_put(m->table + v * PCI_MSIX_ENTRY_SIZE + 12, MSIX_ENTRY_MASKED);
		m->gsi[v] = m->irqfd[v] = -1;
		m->route_stale[v] = true;
	}
	m->nr = nr;
	m->cap = cap;
	m->bar = bar;
	m->table_off = table_off;
	m->pba_off = pba_off;
	le16_put(d->cfg + cap + 2, (uint16_t)(nr - 1));
	d->wmask[cap + 3] = (MSIX_CTRL_ENABLE | MSIX_CTRL_FMASK) >> 8;
	le32_put(d->cfg + cap + 4, table_off | bar);
	le32_put(d->cfg + cap + 8, pba_off | bar);
	return 0;
}

/* pci_msix_destroy - see devices.h. */
void pci_msix_destroy(struct pci_dev *d)
{
	struct pci_msix *m = &d->msix;
	struct irq_router *r = d->bus ? &d->bus->irq : NULL;

	for (unsigned int v = 0; m->irqfd && v < m->nr; v++) {
		if (m->irqfd[v] < 0)
			continue;
		if (r && m->gsi[v] >= 0 && irq_irqfd(r, m->irqfd[v], (uint32_t)m->gsi[v], false))
			log_warnx("%s: cannot unbind vector %u", __func__, v);
		close(m->irqfd[v]);
	}
	free(m->table);
	free(m->pba);
	free(m->gsi);
	free(m->irqfd);
	free(m->route_stale);
	m->table = NULL;
	m->pba = NULL;
	m->gsi = m->irqfd = NULL;
	m->route_stale = NULL;
	m->nr = 0;
}

/* On the bus with a VM: a GSI and an irqfd per vector.  Failures fall back to KVM_SIGNAL_MSI. */
static void pci_msix_connect(struct pci_dev *d)
{
	struct pci_msix *m = &d->msix;
	struct irq_router *r = &d->bus->irq;

	for (unsigned int v = 0; v < m->nr; v++) {
		int gsi = irq_alloc_gsi(r), fd;

		if (gsi < 0) {
			log_warnx("%s: 00:%02x.0: no GSI for vector %u", __func__, d->slot, v);
			return;
		}
		m->gsi[v] = gsi;
		if (r->vm_fd < 0)
			continue;
		fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (fd < 0) {
			log_warn("%s: eventfd", __func__);
			continue;
		}
		if (irq_irqfd(r, fd, (uint32_t)gsi, true)) {
			close(fd);
			continue;
		}
		m->irqfd[v] = fd;
	}
}

static uint64_t msix_addr(const struct pci_msix *m, unsigned int v)
{
	const uint8_t *e = m->table + v * PCI_MSIX_ENTRY_SIZE;

	return le32_get(e) | (uint64_t)le32_get(e + 4) << 32;
}

static uint32_t msix_data(const struct pci_msix *m, unsigned int v)
{
	return le32_get(m->table + v * PCI_MSIX_ENTRY_SIZE + 8);
}

static bool msix_masked(const struct pci_msix *m, unsigned int v)
{
	return m->fmask || (le32_get(m->table + v * PCI_MSIX_ENTRY_SIZE + 12) & MSIX_ENTRY_MASKED);
}

/* Under m->lock: make vector v's KVM route match its table entry. */
static void msix_install(struct pci_dev *d, unsigned int v)
{
	struct pci_msix *m = &d->msix;

	if (!m->route_stale[v] || m->gsi[v] < 0 || !d->bus)
		return;
	if (!irq_set_msi_route(&d->bus->irq, (uint32_t)m->gsi[v], msix_addr(m, v), msix_data(m, v)))
		m->route_stale[v] = false;
}

/* Under m->lock: send vector v now (it is enabled and unmasked). */
static void msix_fire(struct pci_dev *d, unsigned int v)
{
	struct pci_msix *m = &d->msix;

	m->fired++;
	msix_install(d, v);
	if (m->irqfd[v] >= 0 && !m->route_stale[v]) {
		uint64_t one = 1;

		if (write(m->irqfd[v], &one, sizeof(one)) == sizeof(one))
			return;
	}
	if (d->bus && irq_signal_msi(&d->bus->irq, msix_addr(m, v), msix_data(m, v)))
		log_warnx("%s: 00:%02x.0: vector %u lost", __func__, d->slot, v);
}

/* Under m->lock: vector v may have become deliverable: install its route, send if pending. */
static void msix_unmasked(struct pci_dev *d, unsigned int v)
{
	struct pci_msix *m = &d->msix;

	if (!m->enabled || msix_masked(m, v))
		return;
	msix_install(d, v);
	if (m->pba[v / 64] & (1ULL << (v % 64))) {
		m->pba[v / 64] &= ~(1ULL << (v % 64));
		msix_fire(d, v);
	}
}

/* pci_msix_notify - see devices.h. */
bool pci_msix_notify(struct pci_dev *d, unsigned int v)
{
	struct pci_msix *m = &d->msix;
	bool ok = false;

	if (!m->nr || v >= m->nr)
		return false;
	pthread_mutex_lock(&m->lock);
	if (m->enabled) {
		ok = true;
		if (msix_masked(m, v))
			m->pba[v / 64] |= 1ULL << (v % 64);
		else
			msix_fire(d, v);
	}
	pthread_mutex_unlock(&m->lock);
	return ok;
}

/*
 * The interrupt state of a function with MSI-X changes under its MSI-X
 * lock only (the three below and msix_ctrl_written()), so an MSI-X enable,
 * an interrupt and an ISR read never interleave: INTx is asserted exactly
 * while MSI-X is off and the status byte is set.
 */
static void irq_lock(struct pci_dev *d)
{
	if (d->msix.nr)
		pthread_mutex_lock(&d->msix.lock);
}

static void irq_unlock(struct pci_dev *d)
{
	if (d->msix.nr)
		pthread_mutex_unlock(&d->msix.lock);
}

/* pci_irq_raise - see devices.h. */
void pci_irq_raise(struct pci_dev *d, unsigned int v, uint8_t *status, uint8_t bits)
{
	struct pci_msix *m = &d->msix;

	irq_lock(d);
	if (m->nr && m->enabled) {
		if (v < m->nr) {
			if (msix_masked(m, v))
				m->pba[v / 64] |= 1ULL << (v % 64);
			else
				msix_fire(d, v);
		}
	} else {
		__atomic_fetch_or(status, bits, __ATOMIC_SEQ_CST);
		pci_set_intx(d, 1);
	}
	irq_unlock(d);
}

/* pci_irq_status_read - see devices.h. */
uint8_t pci_irq_status_read(struct pci_dev *d, uint8_t *status)
{
	uint8_t v;

	irq_lock(d);
	v = __atomic_exchange_n(status, 0, __ATOMIC_SEQ_CST);
	if (!(d->msix.nr && d->msix.enabled))
		pci_set_intx(d, 0);
	irq_unlock(d);
	return v;
}

/* pci_irq_sync - see devices.h. */
void pci_irq_sync(struct pci_dev *d, const uint8_t *status)
{
	irq_lock(d);
	pci_set_intx(d, !(d->msix.nr && d->msix.enabled) &&
		     __atomic_load_n(status, __ATOMIC_SEQ_CST) != 0);
	irq_unlock(d);
}

/* pci_msix_enabled - see devices.h. */
bool pci_msix_enabled(struct pci_dev *d)
{
	bool en;

	if (!d->msix.nr)
		return false;
	pthread_mutex_lock(&d->msix.lock);
	en = d->msix.enabled;
	pthread_mutex_unlock(&d->msix.lock);
	return en;
}

/* Message control was written (under the bus lock). */
static void msix_ctrl_written(struct pci_dev *d)
{
	struct pci_msix *m = &d->msix;
	uint16_t ctrl = le16_get(d->cfg + m->cap + 2);

	pthread_mutex_lock(&m->lock);
	m->enabled = ctrl & MSIX_CTRL_ENABLE;
	m->fmask = ctrl & MSIX_CTRL_FMASK;
	for (unsigned int v = 0; v < m->nr; v++)
		msix_unmasked(d, v);
	pthread_mutex_unlock(&m->lock);
}

/* pci_msix_refresh - see devices.h. */
void pci_msix_refresh(struct pci_dev *d)
{
	struct pci_msix *m = &d->msix;

	if (!m->nr)
		return;
	pthread_mutex_lock(&m->lock);
	for (unsigned int v = 0; v < m->nr; v++)
		m->route_stale[v] = true;
	pthread_mutex_unlock(&m->lock);
	msix_ctrl_written(d);
}

/* A guest access to the table or the PBA; off is relative to the BAR. */
static void msix_io(struct pci_dev *d, uint64_t off, uint8_t *data, unsigned int len,
		    bool is_write)
{
	struct pci_msix *m = &d->msix;
	uint64_t tlen = (uint64_t)m->nr * PCI_MSIX_ENTRY_SIZE;

	pthread_mutex_lock(&m->lock);
	if (off >= m->table_off && off - m->table_off < tlen) {
		uint64_t t = off - m->table_off;
		unsigned int v = (unsigned int)(t / PCI_MSIX_ENTRY_SIZE), in = (unsigned int)(t % PCI_MSIX_ENTRY_SIZE);

		/* Accesses stay inside one entry (the spec allows 4 and 8 bytes, aligned). */
		if (in + len > PCI_MSIX_ENTRY_SIZE) {
			if (!is_write)
				memset(data, 0, len);
		} else if (!is_write) {
			memcpy(data, m->table + t, len);
		} else {
			uint8_t *e = m->table + v * PCI_MSIX_ENTRY_SIZE;
			uint32_t old_ctrl = le32_get(e + 12);

			memcpy(m->table + t, data, len);
			/* Only the mask bit of vector control is writable. */
			le32_put(e + 12, (le32_get(e + 12) & MSIX_ENTRY_MASKED) | (old_ctrl & ~MSIX_ENTRY_MASKED));
			if (in < 12)
				m->route_stale[v] = true;
			msix_unmasked(d, v);
		}
	} else if (!is_write) {
		uint64_t p = off - m->pba_off;
		uint64_t plen = (uint64_t)((m->nr + 63) / 64) * 8;

		for (unsigned int i = 0; i < len; i++, p++)
			data[i] = p < plen ? (uint8_t)(m->pba[p / 8] >> (8 * (p % 8))) : 0;
	}
	pthread_mutex_unlock(&m->lock);
}

/* ---- INTx ---------------------------------------------------------------------------- */

unsigned int pci_intx_gsi(unsigned int slot)
{
	/* Two ISA lines nothing else uses, alternating by slot, as PIIX PIRQ links do. */
	return (slot & 1) ? 11 : 10;
}

/*
 * pci_set_intx - see devices.h.  Lock-free: device threads call it, and a
 * vCPU may hold the bus lock while it waits for them (a reset through the
 * PCI cfg access capability).  The status bit is informational.
 */
void pci_set_intx(struct pci_dev *d, int level)
{
	if (!d->bus)
		return;
	if (level)
		__atomic_fetch_or(&d->cfg[PCI_CFG_STATUS], (uint8_t)PCI_STATUS_INTX, __ATOMIC_SEQ_CST);
	else
		__atomic_fetch_and(&d->cfg[PCI_CFG_STATUS], (uint8_t)~PCI_STATUS_INTX, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&d->cfg[PCI_CFG_COMMAND + 1], __ATOMIC_RELAXED) &
	    (PCI_COMMAND_INTX_DISABLE >> 8))
		level = 0;
	irq_line_set(&d->bus->irq, pci_intx_gsi(d->slot), d->slot, level);
}

/* ---- config space and MMIO dispatch --------------------------------------------------- */

/* Under b->lock: a guest wrote config bytes [off, off+len) of d. */
static void pci_cfg_written(struct pci_dev *d, unsigned int off, unsigned int len)
{
	if (overlaps(off, len, PCI_CFG_COMMAND, PCI_CFG_COMMAND + 2) ||
	    overlaps(off, len, PCI_CFG_BAR0, PCI_CFG_BAR0 + 4 * PCI_NUM_BARS))
		pci_update_bars_locked(d);
	if (d->msix.nr && overlaps(off, len, d->msix.cap + 2u, d->msix.cap + 4u))
		msix_ctrl_written(d);
	if (d->cfg_write)
		d->cfg_write(d, off, len);
}

/* pci_io - see devices.h. */
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
		if (is_write && (p[0] & 0x04)) {
			if (b->vm)
				vm_request_exit(b->vm, EXIT_REBOOT, "guest reset through port 0xcf9");
		} else if (!is_write) {
			p[0] = 0;
		}
	} else if (port >= PORT_PCI_DATA && port + len <= PORT_PCI_DATA + 4) {
		struct pci_dev *d = pci_lookup(b, b->addr);
		unsigned int off = (b->addr & 0xfc) + (unsigned int)(port - PORT_PCI_DATA);

		if (!d) {
			if (!is_write)
				memset(p, 0xff, len);
		} else if (is_write) {
			/* Read-only bytes are not rewritten (pci_set_intx updates status atomically). */
			for (unsigned int i = 0; i < len; i++)
				if (d->wmask[off + i])
					d->cfg[off + i] = (uint8_t)((d->cfg[off + i] & ~d->wmask[off + i]) |
								    (p[i] & d->wmask[off + i]));
			pci_cfg_written(d, off, len);
		} else {
			if (d->cfg_read)
				d->cfg_read(d, off, len);
			memcpy(p, d->cfg + off, len);
		}
	} else if (!is_write) {
		memset(p, 0xff, len);
	}
	pthread_mutex_unlock(&b->lock);
}

/* pci_mmio - see devices.h. */
void pci_mmio(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write)
{
	struct pci_bus *b = opaque;
	struct pci_dev *hit = NULL;
	unsigned int hit_bar = 0;
	uint64_t off = 0;

	pthread_mutex_lock(&b->lock);
	for (unsigned int s = 1; s < PCI_MAX_DEVS && !hit; s++) {
		struct pci_dev *d = b->devs[s];

		for (unsigned int i = 0; d && i < PCI_NUM_BARS; i++) {
			struct pci_bar *bar = &d->bar[i];

			if (bar->addr && addr >= bar->addr && addr - bar->addr < bar->size &&
			    len <= bar->size - (addr - bar->addr)) {
				hit = d;
				hit_bar = i;
				off = addr - bar->addr;
				break;
			}
		}
	}
	pthread_mutex_unlock(&b->lock);
	/* Handlers run without the bus lock (they take their device's lock). */
	if (!hit) {
		if (!is_write)
			memset(data, 0xff, len);
		return;
	}
	if (hit->msix.nr && hit_bar == hit->msix.bar &&
	    ((off >= hit->msix.table_off &&
	      off - hit->msix.table_off < (uint64_t)hit->msix.nr * PCI_MSIX_ENTRY_SIZE) ||
	     (off >= hit->msix.pba_off &&
	      off - hit->msix.pba_off < (uint64_t)((hit->msix.nr + 63) / 64) * 8))) {
		msix_io(hit, off, data, len, is_write);
		return;
	}
	if (hit->bar[hit_bar].fn)
		hit->bar[hit_bar].fn(hit->bar[hit_bar].opaque, off, data, len, is_write);
	else if (!is_write)
		memset(data, 0, len);
}

/* pci_add - see devices.h. */
int pci_add(struct pci_bus *b, unsigned int slot, struct pci_dev *d)
{
	uint64_t next;

	if (slot == 0 || slot >= PCI_MAX_DEVS)
		return -EINVAL;
	pthread_mutex_lock(&b->lock);
	if (b->devs[slot]) {
		pthread_mutex_unlock(&b->lock);
		return -EBUSY;
	}
	/* Assign the BARs, largest alignment first is not needed: few small BARs. */
	next = b->mmio32_next;
	for (unsigned int i = 0; i < PCI_NUM_BARS; i++) {
		uint64_t a;

		if (!d->bar[i].size)
			continue;
		a = ALIGN_UP(next, d->bar[i].size);
		if (a + d->bar[i].size > LAYOUT_PCI_MMIO32_END) {
			pthread_mutex_unlock(&b->lock);
			log_warnx("%s: 00:%02x.0: the 32-bit PCI window is full", __func__, slot);
			return -ENOSPC;
		}
		pci_bar_program(d, i, a);
		next = a + d->bar[i].size;
		if (d->bar[i].mem64)
			i++;
	}
	b->mmio32_next = next;
	d->bus = b;
	d->slot = slot;
	/* Firmware's job: memory decoding on; the driver may toggle these bits. */
	le16_put(d->cfg + PCI_CFG_COMMAND, le16_get(d->cfg + PCI_CFG_COMMAND) | PCI_COMMAND_MEMORY);
	le16_put(d->wmask + PCI_CFG_COMMAND, 0x0406);    /* memory, bus master, INTx disable */
	d->wmask[0x0c] = 0xff;                        /* cache line size */
	d->wmask[0x0d] = 0xff;                        /* latency timer */
	d->wmask[PCI_CFG_INT_LINE] = 0xff;
	if (d->cfg[PCI_CFG_INT_PIN])
		d->cfg[PCI_CFG_INT_LINE] = (uint8_t)pci_intx_gsi(slot);
	if (d->msix.nr)
		pci_msix_connect(d);
	b->devs[slot] = d;
	pci_update_bars_locked(d);
	pthread_mutex_unlock(&b->lock);
	return 0;
}

/* pci_remove - see devices.h. */
void pci_remove(struct pci_bus *b, unsigned int slot)
{
	if (slot == 0 || slot >= PCI_MAX_DEVS)
		return;
	pthread_mutex_lock(&b->lock);
	b->devs[slot] = NULL;
	pthread_mutex_unlock(&b->lock);
}

/* ---- the bus as a migratable device ------------------------------------------------------ */

enum {
	PCI_BUS_F_ADDR = 1,            /* u32: CONFIG_ADDRESS latch */
	PCI_BUS_F_HOST_CFG = 2,        /* 256 bytes: the host bridge's config space */
};

struct pci_bus_image {
	uint32_t addr;
	struct state_bytes cfg;
};
#define IMG struct pci_bus_image
static const struct state_desc pci_bus_fields[] = {
	STATE_INT(PCI_BUS_F_ADDR, IMG, addr, STATE_ANY, 1),
	STATE_BYTES(PCI_BUS_F_HOST_CFG, IMG, cfg, PCI_CFG_SIZE, PCI_CFG_SIZE, 1),
};
#undef IMG

static int pci_bus_save(struct dev *dv, struct state_out *out)
{
	struct pci_bus *b = dv->priv;
	struct pci_bus_image img;

	pthread_mutex_lock(&b->lock);
	img = (struct pci_bus_image){ b->addr, { b->host_bridge.cfg, PCI_CFG_SIZE } };
	state_save_fields(out, pci_bus_fields, ARRAY_SIZE(pci_bus_fields), &img);
	pthread_mutex_unlock(&b->lock);
	return out->err;
}

static int pci_bus_load(struct dev *dv, struct state_in *in, uint16_t version)
{
	struct pci_bus *b = dv->priv;
	struct pci_dev *h = &b->host_bridge;
	struct pci_bus_image v = { 0 };
	int ret;

	ret = state_load_fields(in, pci_bus_fields, ARRAY_SIZE(pci_bus_fields), &v, version);
	if (ret)
		return ret;
	pthread_mutex_lock(&b->lock);
	b->addr = v.addr & 0x80fffffcu;
	/* Only the bytes a guest could have changed; the IDs are ours. */
	for (unsigned int i = 0; i < PCI_CFG_SIZE; i++)
		h->cfg[i] = (uint8_t)((h->cfg[i] & ~h->wmask[i]) | (v.cfg.p[i] & h->wmask[i]));
	pthread_mutex_unlock(&b->lock);
	return 0;
}

static const struct dev_ops pci_bus_dev_ops = {
	.name = "pci-bus",
	.version = 1,
	.min_version = 1,
	.save = pci_bus_save,
	.load = pci_bus_load,
};

/* pci_init - see devices.h. */
int pci_init(struct pci_bus *b, struct vm *vm)
{
	struct pci_dev *h = &b->host_bridge;
	uint64_t low, high;
	int ret;

	memset(b, 0, sizeof(*b));
	pthread_mutex_init(&b->lock, NULL);
	b->vm = vm;
	b->mmio32_next = LAYOUT_PCI_MMIO32;
	irq_router_init(&b->irq, vm ? vm->vm_fd : -1);
	le16_put(h->cfg + 0x00, PCI_VENDOR_REDHAT);
	le16_put(h->cfg + 0x02, PCI_DEVICE_HOST);
	le16_put(h->cfg + 0x04, 0x0006);            /* command: memory + bus master */
	h->cfg[0x0b] = 0x06;                     /* class: bridge */
	h->cfg[0x0a] = 0x00;                     /* subclass: host bridge */
	h->cfg[0x0e] = 0x00;                     /* header type 0, single function */
	le16_put(h->cfg + 0x2c, PCI_VENDOR_REDHAT); /* subsystem vendor */
	le16_put(h->cfg + 0x2e, 0x1100);
	le16_put(h->wmask + 0x04, 0x0146);          /* command bits a driver may toggle */
	h->wmask[0x0c] = 0xff;                   /* cache line size */
	h->wmask[0x0d] = 0xff;                   /* latency timer */
	h->wmask[0x3c] = 0xff;                   /* interrupt line */
	h->bus = b;
	b->devs[0] = h;
	if (!vm)
		return 0;
	/* 0xcf8-0xcff as one range: 0xcf9 is routed to the reset handler above. */
	ret = vm_register_pio(vm, PORT_PCI_ADDR, 8, pci_io, b);
	/* Both PCI windows (the DSDT's _CRS): BARs may be moved anywhere in them. */
	if (!ret)
		ret = vm_register_mmio(vm, LAYOUT_PCI_MMIO32,
				       LAYOUT_PCI_MMIO32_END - LAYOUT_PCI_MMIO32, pci_mmio, b);
	mem_split(vm->cfg.mem_size, &low, &high);
	if (!ret)
		ret = vm_register_mmio(vm, ALIGN_UP(LAYOUT_4G + high, GiB), LAYOUT_PCI_MMIO64_SIZE,
				       pci_mmio, b);
	if (!ret)
		ret = dev_register(vm, &b->dev, &pci_bus_dev_ops, b, 0);
	return ret;
}

/* pci_destroy - see devices.h. */
void pci_destroy(struct pci_bus *b)
{
	irq_router_destroy(&b->irq);
}
