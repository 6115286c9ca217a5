/*
 * pci.c - PCI bus 0 through configuration mechanism #1 (ports 0xcf8 and
 * 0xcfc, open in the TSS I/O bitmap): the function scan, configuration
 * reads and writes, and memory BARs made usable from ring 3.
 *
 * Each configuration access is two port exits (~50 us under PVM), so the
 * scan reads one dword per empty slot, and BARs are sized only when one
 * must be placed by the guest (the VMM or firmware normally assigns them).
 */
#include "virtio.h"

#define PCI_CFG_ADDR	0xcf8
#define PCI_CFG_DATA	0xcfc

#define PCI_ID		0x00
#define PCI_COMMAND	0x04
#define PCI_CMD_MEM	(1u << 1)
#define PCI_CMD_MASTER	(1u << 2)
#define PCI_CMD_INTX_OFF (1u << 10)
#define PCI_HDR_TYPE	0x0e
#define PCI_BAR0	0x10
#define PCI_SUBSYS_ID	0x2e

#define PCI_WIN_START	0xc0000000ULL	/* the 32-bit MMIO window */
#define PCI_WIN_END	0xfc000000ULL	/* exclusive */

struct pci_fn pci_fns[PCI_MAX_FNS];
unsigned pci_nfns;

static u64 win_next;			/* 0 until first needed */

static u32 cfg_addr(u8 dev, u8 fn, u8 reg)
{
	return 0x80000000u | (u32)dev << 11 | (u32)fn << 8 | (reg & 0xfc);
}

static u32 cfg_read(u8 dev, u8 fn, u8 reg)
{
	outl(PCI_CFG_ADDR, cfg_addr(dev, fn, reg));
	return inl(PCI_CFG_DATA);
}

u32 pci_read32(const struct pci_fn *f, u8 reg)
{
	return cfg_read(f->dev, f->fn, reg);
}

u16 pci_read16(const struct pci_fn *f, u8 reg)
{
	return (u16)(pci_read32(f, reg) >> ((reg & 2) * 8));
}

u8 pci_read8(const struct pci_fn *f, u8 reg)
{
	return (u8)(pci_read32(f, reg) >> ((reg & 3) * 8));
}

void pci_write32(const struct pci_fn *f, u8 reg, u32 v)
{
	outl(PCI_CFG_ADDR, cfg_addr(f->dev, f->fn, reg));
	outl(PCI_CFG_DATA, v);
}

void pci_write16(const struct pci_fn *f, u8 reg, u16 v)
{
	outl(PCI_CFG_ADDR, cfg_addr(f->dev, f->fn, reg));
	outw((u16)(PCI_CFG_DATA + (reg & 2)), v);
}

void pci_scan(void)
{
	pci_nfns = 0;
	for (u8 dev = 0; dev < 32; dev++) {
		u8 nfn = 1;

		for (u8 fn = 0; fn < nfn && pci_nfns < PCI_MAX_FNS; fn++) {
			u32 id = cfg_read(dev, fn, PCI_ID);
			struct pci_fn *f;

			if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0)
				continue;
			f = &pci_fns[pci_nfns++];
			*f = (struct pci_fn){ .dev = dev, .fn = fn, .vendor = (u16)id,
					      .device = (u16)(id >> 16) };
			f->hdr_type = pci_read8(f, PCI_HDR_TYPE);
			if (fn == 0 && (f->hdr_type & 0x80))
				nfn = 8;
			if ((f->hdr_type & 0x7f) == 0)
				f->subsys_id = pci_read16(f, PCI_SUBSYS_ID);
		}
	}
}

/* Sizing writes all-ones with decoding off, then restores BAR and command. */
static u64 bar_size(const struct pci_fn *f, unsigned bar, bool is64)
{
	u8 reg = (u8)(PCI_BAR0 + 4 * bar);
	u16 cmd = pci_read16(f, PCI_COMMAND);
	u32 lo = pci_read32(f, reg), hi = 0, slo, shi = 0xffffffff;
	u64 mask;

	pci_write16(f, PCI_COMMAND, cmd & ~(PCI_CMD_MEM | 1u));
	pci_write32(f, reg, 0xffffffff);
	slo = pci_read32(f, reg);
	pci_write32(f, reg, lo);
	if (is64) {
		hi = pci_read32(f, (u8)(reg + 4));
		pci_write32(f, (u8)(reg + 4), 0xffffffff);
		shi = pci_read32(f, (u8)(reg + 4));
		pci_write32(f, (u8)(reg + 4), hi);
	}
	pci_write16(f, PCI_COMMAND, cmd);
	mask = ((u64)shi << 32 | (slo & ~0xfu));
	if (!is64)
		mask |= 0xffffffff00000000ULL;
	if (!(slo & ~0xfu) && (!is64 || !shi))
		return 0;			/* not implemented */
	return ~mask + 1;
}

/* Memory BAR `bar` of f: its address and width; false for I/O BARs. */
static bool bar_read(const struct pci_fn *f, unsigned bar, u64 *addr, bool *is64)
{
	u32 lo = pci_read32(f, (u8)(PCI_BAR0 + 4 * bar));

	if (lo & 1)
		return false;			/* I/O BAR */
	*is64 = ((lo >> 1) & 3) == 2;
	if (*is64 && bar == 5)
		return false;
	*addr = lo & ~0xfULL;
	if (*is64)
		*addr |= (u64)pci_read32(f, (u8)(PCI_BAR0 + 4 * bar + 4)) << 32;
	return true;
}

/*
 * The first address of the 32-bit window above every memory BAR already
 * placed in it, on any function of bus 0 (sizing each: only done when a
 * BAR is unassigned, which a VMM or firmware normally prevents).
 */
static void window_init(void)
{
	win_next = PCI_WIN_START;
	for (unsigned i = 0; i < pci_nfns; i++) {
		const struct pci_fn *f = &pci_fns[i];
		unsigned nbars = (f->hdr_type & 0x7f) == 0 ? 6 : (f->hdr_type & 0x7f) == 1 ? 2 : 0;

		for (unsigned b = 0; b < nbars; b++) {
			u64 addr, size;
			bool is64;

			if (!bar_read(f, b, &addr, &is64))
				continue;
			if (addr >= PCI_WIN_START && addr < PCI_WIN_END) {
				size = bar_size(f, b, is64);
				win_next = MAX(win_next, addr + size);
			}
			b += is64;
		}
	}
}

/* Identity-map [addr, addr + size) above 4 GiB uncached (2 MiB pages). */
static bool map_uncached(u64 addr, u64 size)
{
	if (addr + size > 512 * GiB || addr + size < addr)
		return false;
	for (u64 a = addr & ~(2 * MiB - 1); a < addr + size; a += 2 * MiB) {
		u64 g = a >> 30, *pd;

		if (!(pdpt[g] & 1))
			pdpt[g] = boot_alloc(4096) | 0x7;
		pd = (u64 *)(pdpt[g] & ~0xfffULL);
		/* Never accessed before, so no stale TLB entry to flush. */
		pd[(a >> 21) & 511] = a | 0x9f;		/* P RW US PWT PCD PS */
	}
	return true;
}

u64 pci_bar_map(struct pci_fn *f, unsigned bar)
{
	u8 reg = (u8)(PCI_BAR0 + 4 * bar);
	u64 addr, size;
	bool is64;

	if (bar > 5 || (f->hdr_type & 0x7f) != 0)
		return 0;
	if (f->bar_addr[bar])
		return f->bar_addr[bar];
	if (!bar_read(f, bar, &addr, &is64))
		return 0;
	if (addr && addr < 4 * GiB)
		return f->bar_addr[bar] = addr;
	size = bar_size(f, bar, is64);
	if (!size)
		return 0;
	if (addr) {
		if (!map_uncached(addr, size)) {
			gprintf("pci: %02x.%x BAR%u at 0x%lx is beyond what the guest maps\n",
				f->dev, f->fn, bar, addr);
			return 0;
		}
		return f->bar_addr[bar] = addr;
	}
	if (!win_next)
		window_init();
	addr = ALIGN_UP(win_next, MAX(size, 4096));
	if (addr + size > PCI_WIN_END) {
		gprintf("pci: no room for %02x.%x BAR%u (%lu bytes)\n", f->dev, f->fn, bar, size);
		return 0;
	}
	win_next = addr + size;
	pci_write32(f, reg, (u32)addr);
	if (is64)
		pci_write32(f, (u8)(reg + 4), 0);
	gprintf("pci: %02x.%x BAR%u was unassigned; placed at 0x%lx (%lu bytes)\n", f->dev, f->fn,
		bar, addr, size);
	return f->bar_addr[bar] = addr;
}

void pci_enable(struct pci_fn *f)
{
	u16 cmd;

	/* No memory BAR may be left at 0 once decoding is on: it would cover RAM. */
	for (unsigned b = 0; b < 6; b++) {
		u64 addr;
		bool is64;

		if (!bar_read(f, b, &addr, &is64))
			continue;
		pci_bar_map(f, b);
		b += is64;
	}
	cmd = pci_read16(f, PCI_COMMAND);

	pci_write16(f, PCI_COMMAND, cmd | PCI_CMD_MEM | PCI_CMD_MASTER | PCI_CMD_INTX_OFF);
}
