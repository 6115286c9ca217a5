/*
 * acpi.c - the little ACPI the test guest needs, read in ring 3 at boot:
 * the RSDP (from hvm_start_info, or the BIOS area scan), the XSDT or RSDT,
 * the MADT (how many CPUs, their APIC IDs) and the FADT (how to power off:
 * PM1a_CNT_BLK, or SLEEP_CONTROL_REG on hardware-reduced platforms), and
 * \_S5_'s SLP_TYP from the DSDT by a byte search rather than an AML
 * interpreter.  Every table is checked for signature, length and checksum.
 */
#include "guest.h"

struct acpi_header {
	char sig[4];
	u32 length;
	u8 revision, checksum;
	char oem_id[6], oem_table_id[8];
	u32 oem_revision, creator_id, creator_revision;
} __attribute__((packed));

struct acpi_rsdp {
	char sig[8];
	u8 checksum;
	char oem_id[6];
	u8 revision;
	u32 rsdt;
	u32 length;
	u64 xsdt;
	u8 xchecksum, reserved[3];
} __attribute__((packed));

#define FADT_DSDT		40
#define FADT_PM1A_CNT		64
#define FADT_FLAGS		112
#define FADT_X_DSDT		140
#define FADT_X_PM1A_CNT		172
#define FADT_SLEEP_CTL		244
#define FADT_HW_REDUCED		(1u << 20)

static bool phys_mapped(u64 addr, u64 len)
{
	if (addr + len <= 4 * GiB)
		return true;
	for (unsigned i = 0; i < plat.nram; i++)
		if (addr >= plat.ram[i].base && addr + len <= plat.ram[i].base + plat.ram[i].size)
			return true;
	return false;
}

static u8 sum8(const void *p, size_t n)
{
	const u8 *b = p;
	u8 s = 0;

	while (n--)
		s += *b++;
	return s;
}

/* The table at paddr if its signature and checksum hold, else NULL. */
static const struct acpi_header *table_at(u64 paddr, const char *sig)
{
	const struct acpi_header *h = (const void *)paddr;

	char name[5];

	/* Only the first 4 GiB and RAM are mapped (map_high_ram). */
	if (!paddr || (!phys_mapped(paddr, sizeof(*h))))
		return NULL;
	if (h->length < sizeof(*h) || h->length > 16 * MiB || !phys_mapped(paddr, h->length))
		return NULL;
	if (sig && memcmp(h->sig, sig, 4))
		return NULL;
	if (sum8(h, h->length)) {
		memcpy(name, h->sig, 4);
		name[4] = '\0';
		gprintf("godwit-guest: ACPI %s: bad checksum, ignored\n", name);
		return NULL;
	}
	return h;
}

static const struct acpi_rsdp *rsdp_find(u64 hint)
{
	if (hint) {
		const struct acpi_rsdp *r = (const void *)hint;

		if (!memcmp(r->sig, "RSD PTR ", 8) && !sum8(r, 20))
			return r;
	}
	for (u64 a = 0xe0000; a < 0x100000; a += 16) {
		const struct acpi_rsdp *r = (const void *)a;

		if (!memcmp(r->sig, "RSD PTR ", 8) && !sum8(r, 20))
			return r;
	}
	return NULL;
}

static void madt_parse(const struct acpi_header *h)
{
	const u8 *p = (const u8 *)h + 44, *end = (const u8 *)h + h->length;

	for (; p + 2 <= end && p[1] >= 2 && p + p[1] <= end; p += p[1]) {
		u32 id, flags;

		if (p[0] == 0 && p[1] >= 8) {		/* Processor Local APIC */
			id = p[3];
			memcpy(&flags, p + 4, 4);
		} else if (p[0] == 9 && p[1] >= 16) {	/* Processor Local x2APIC */
			memcpy(&id, p + 4, 4);
			memcpy(&flags, p + 8, 4);
		} else {
			continue;
		}
		if (!(flags & 1))
			continue;
		if (plat.madt_cpus < MAX_MADT_CPUS)
			plat.apic_ids[plat.madt_cpus] = id;
		plat.madt_cpus++;
	}
}

/*
 * \_S5_ is "_S5_" PackageOp(0x12) PkgLength NumElements, then the first
 * element: BytePrefix(0x0a) nn, ZeroOp(0x00) or OneOp(0x01).
 */
static bool dsdt_s5(const struct acpi_header *h, u8 *typ)
{
	const u8 *p = (const u8 *)h + sizeof(*h), *end = (const u8 *)h + h->length;

	for (; p + 9 <= end; p++) {
		const u8 *q;

		if (memcmp(p, "_S5_", 4) || p[4] != 0x12)
			continue;
		q = p + 5;
		q += 1 + (*q >> 6);		/* PkgLength */
		q++;				/* NumElements */
		if (q + 2 > end)
			return false;
		if (q[0] == 0x0a) {
			*typ = q[1];
			return true;
		}
		if (q[0] == 0x00 || q[0] == 0x01) {
			*typ = q[0];
			return true;
		}
		return false;
	}
	return false;
}

static void fadt_parse(const struct acpi_header *h)
{
	const u8 *f = (const u8 *)h;
	u32 len = h->length, flags = 0, pm1a = 0, dsdt32 = 0;
	u64 dsdt = 0;
	const struct acpi_header *d;

	if (len >= FADT_FLAGS + 4)
		memcpy(&flags, f + FADT_FLAGS, 4);
	if (len >= FADT_PM1A_CNT + 4)
		memcpy(&pm1a, f + FADT_PM1A_CNT, 4);
	if (len >= FADT_X_PM1A_CNT + 12) {
		struct gas g;

		memcpy(&g, f + FADT_X_PM1A_CNT, sizeof(g));
		if (g.addr && g.space == 1)
			pm1a = (u32)g.addr;
	}
	plat.pm1a_cnt = (u16)pm1a;
	plat.hw_reduced = flags & FADT_HW_REDUCED;
	if (plat.hw_reduced && len >= FADT_SLEEP_CTL + 12) {
		memcpy(&plat.sleep_ctl, f + FADT_SLEEP_CTL, sizeof(plat.sleep_ctl));
		plat.have_sleep_ctl = plat.sleep_ctl.addr != 0;
	}

	if (len >= FADT_X_DSDT + 8)
		memcpy(&dsdt, f + FADT_X_DSDT, 8);
	if (!dsdt && len >= FADT_DSDT + 4) {
		memcpy(&dsdt32, f + FADT_DSDT, 4);
		dsdt = dsdt32;
	}
	d = table_at(dsdt, "DSDT");
	if (!d || !dsdt_s5(d, &plat.s5_slp_typ))
		plat.s5_slp_typ = 5;
}

void acpi_init(u64 rsdp_paddr)
{
	const struct acpi_rsdp *r = rsdp_find(rsdp_paddr);
	const struct acpi_header *sdt;
	unsigned esz, n;

	plat.s5_slp_typ = 5;
	if (!r)
		return;
	if (r->revision >= 2 && r->xsdt && (sdt = table_at(r->xsdt, "XSDT")))
		esz = 8;
	else if ((sdt = table_at(r->rsdt, "RSDT")))
		esz = 4;
	else
		return;
	plat.acpi = true;
	n = (sdt->length - sizeof(*sdt)) / esz;
	for (unsigned i = 0; i < n; i++) {
		const u8 *e = (const u8 *)sdt + sizeof(*sdt) + i * esz;
		u64 a = 0;
		const struct acpi_header *h;

		memcpy(&a, e, esz);
		h = table_at(a, NULL);
		if (!h)
			continue;
		if (!memcmp(h->sig, "APIC", 4))
			madt_parse(h);
		else if (!memcmp(h->sig, "FACP", 4))
			fadt_parse(h);
	}
}
