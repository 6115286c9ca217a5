/*
 * test_acpi.c - the guest ACPI tables and the AML builder.
 *
 * Tables are read back by spec offsets (not through acpi.c's structs), so a
 * layout mistake there shows up here.  The strongest check hands the tables
 * to iasl: each must disassemble without a warning, and recompiling the
 * disassembly must give back the same bytes.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "unit.h"
#include "godwit/acpi.h"
#include "godwit/layout.h"
#include "godwit/le.h"

#define GPA LAYOUT_ACPI
#define MMIO64_BASE (64ULL << 30)

static uint8_t area[LAYOUT_ACPI_SIZE];

static struct acpi_config cfg_for(unsigned int ncpus)
{
	struct acpi_config c;

	/* The platform's, with the optional parts off and the 64-bit window at a fixed place. */
	acpi_platform_config(&c, ncpus, 256ULL << 20);
	c.rtc_century = 0;
	c.pci_mmio64_base = MMIO64_BASE;
	return c;
}


static uint8_t sum8(const uint8_t *p, size_t n)
{
	uint8_t s = 0;

	while (n--)
		s += *p++;
	return s;
}

/* Build into `area` at GPA; returns the length used. */
static long build(const struct acpi_config *c)
{
	uint64_t rsdp = 0;
	long n;

	memset(area, 0, sizeof(area));
	n = acpi_build(c, area, GPA, sizeof(area), &rsdp);
	CHECK(n > 0);
	CHECK_EQ(rsdp, GPA);
	return n;
}

/* Host pointer to the table at guest address gpa, or NULL if not in area. */
static const uint8_t *at(uint64_t gpa, long used)
{
	if (gpa < GPA || gpa - GPA + 36 > (uint64_t)used)
		return NULL;
	return area + (gpa - GPA);
}

/* The table with signature sig, found through RSDP -> XSDT (and FADT). */
static const uint8_t *table(const char *sig, long used)
{
	const uint8_t *xsdt = at(le64_get(area + 24), used), *t;

	if (!xsdt)
		return NULL;
	for (uint32_t off = 36; off + 8 <= le32_get(xsdt + 4); off += 8) {
		t = at(le64_get(xsdt + off), used);
		if (t && !memcmp(t, sig, 4))
			return t;
		if (t && !memcmp(t, "FACP", 4) && !strcmp(sig, "DSDT"))
			return at(le64_get(t + 140), used);
		if (t && !memcmp(t, "FACP", 4) && !strcmp(sig, "FACS"))
			return at(le32_get(t + 36), used);
	}
	return NULL;
}

static void check_header(const uint8_t *t, const char *sig, uint8_t rev, long used)
{
	char id[9];

	CHECK(t != NULL);
	if (!t)
		return;
	CHECK(!memcmp(t, sig, 4));
	CHECK_EQ(t[8], rev);
	CHECK(t - area + (long)le32_get(t + 4) <= used);
	CHECK_EQ(sum8(t, le32_get(t + 4)), 0);
	CHECK(!memcmp(t + 10, "GODWIT", 6));
	snprintf(id, sizeof(id), "GDWT%s", sig);
	CHECK(!memcmp(t + 16, id, 8));
	CHECK(!memcmp(t + 28, "GDWT", 4));
}

TEST(acpi_rsdp)
{
	struct acpi_config c = cfg_for(2);
	long used = build(&c);

	CHECK(!memcmp(area, "RSD PTR ", 8));
	CHECK_EQ(sum8(area, 20), 0);
	CHECK_EQ(sum8(area, 36), 0);
	CHECK_EQ(area[15], 2);                  /* revision */
	CHECK_EQ(le32_get(area + 20), 36);          /* length */
	CHECK(!memcmp(area + 9, "GODWIT", 6));
	CHECK_EQ(GPA % 16, 0);                  /* found by the legacy scan */
	check_header(at(le64_get(area + 24), used), "XSDT", 1, used);
	check_header(at(le32_get(area + 16), used), "RSDT", 1, used);
}

TEST(acpi_tables)
{
	struct acpi_config c = cfg_for(2);
	long used = build(&c);
	const uint8_t *xsdt = at(le64_get(area + 24), used), *rsdt = at(le32_get(area + 16), used);
	const uint8_t *fadt, *facs, *dsdt;
	bool seen_facp = false, seen_apic = false;

	CHECK(xsdt && rsdt);
	if (!xsdt || !rsdt)
		return;
	CHECK_EQ(le32_get(xsdt + 4), 36 + 2 * 8);
	CHECK_EQ(le32_get(rsdt + 4), 36 + 2 * 4);
	for (int i = 0; i < 2; i++) {
		const uint8_t *t = at(le64_get(xsdt + 36 + 8 * i), used);

		CHECK(t != NULL);
		if (!t)
			continue;
		/* The RSDT lists the same tables in the same order. */
		CHECK_EQ(le32_get(rsdt + 36 + 4 * i), le64_get(xsdt + 36 + 8 * i));
		CHECK_EQ(le64_get(xsdt + 36 + 8 * i) % 16, 0);
		seen_facp |= !memcmp(t, "FACP", 4);
		seen_apic |= !memcmp(t, "APIC", 4);
		CHECK_EQ(sum8(t, le32_get(t + 4)), 0);
		CHECK(t - area + (long)le32_get(t + 4) <= used);
	}
	CHECK(seen_facp && seen_apic);

	fadt = table("FACP", used);
	check_header(fadt, "FACP", 6, used);
	check_header(table("APIC", used), "APIC", 5, used);
	dsdt = table("DSDT", used);
	check_header(dsdt, "DSDT", 2, used);
	facs = table("FACS", used);
	CHECK(facs != NULL);
	if (!fadt || !facs || !dsdt)
		return;
	CHECK(!memcmp(facs, "FACS", 4));
	CHECK_EQ(le32_get(facs + 4), 64);
	CHECK_EQ(facs[32], 2);                  /* version */
	CHECK_EQ((GPA + (uint64_t)(facs - area)) % 64, 0);
	/* The last table ends where acpi_build() says. */
	CHECK_EQ(table("APIC", used) - area + le32_get(table("APIC", used) + 4), used);
	CHECK(dsdt < table("APIC", used));
}

/* Count MADT entries of each type; checks each entry's length. */
static void madt_count(const uint8_t *m, unsigned int count[8])
{
	static const uint8_t len[8] = { 8, 12, 10, 0, 6, 0, 0, 0 };
	uint32_t off = 44, end = le32_get(m + 4);

	memset(count, 0, 8 * sizeof(count[0]));
	while (off + 2 <= end) {
		uint8_t type = m[off], l = m[off + 1];

		CHECK(type < 8 && len[type] == l);
		if (type >= 8 || len[type] != l)
			return;
		count[type]++;
		off += l;
	}
	CHECK_EQ(off, end);
}

static void check_madt(unsigned int ncpus)
{
	struct acpi_config c = cfg_for(ncpus);
	long used = build(&c);
	const uint8_t *m = table("APIC", used), *e;
	unsigned int count[8];

	check_header(m, "APIC", 5, used);
	if (!m)
		return;
	CHECK_EQ(le32_get(m + 4), 44 + 8 * ncpus + 12 + 2 * 10 + 6);
	CHECK_EQ(le32_get(m + 36), LAYOUT_LAPIC);
	CHECK_EQ(le32_get(m + 40), 1);              /* PCAT_COMPAT */
	madt_count(m, count);
	CHECK_EQ(count[0], ncpus);
	CHECK_EQ(count[1], 1);
	CHECK_EQ(count[2], 2);
	CHECK_EQ(count[4], 1);

	e = m + 44;
	for (unsigned int i = 0; i < ncpus; i++, e += 8) {
		CHECK_EQ(e[2], i);                  /* ACPI processor UID */
		CHECK_EQ(e[3], i);                  /* APIC ID */
		CHECK_EQ(le32_get(e + 4), 1);           /* enabled */
	}
	CHECK_EQ(e[0], 1);
	CHECK_EQ(e[2], c.ioapic_id);
	CHECK_EQ(le32_get(e + 4), LAYOUT_IOAPIC);
	CHECK_EQ(le32_get(e + 8), 0);               /* GSI base */
	e += 12;
	CHECK_EQ(e[2], 0);                      /* ISA */
	CHECK_EQ(e[3], 0);                      /* IRQ0 ... */
	CHECK_EQ(le32_get(e + 4), 2);               /* ... is GSI2 */
	CHECK_EQ(le16_get(e + 8), 0);               /* conforms: edge, high */
	e += 10;
	CHECK_EQ(e[3], IRQ_ACPI_SCI);
	CHECK_EQ(le32_get(e + 4), IRQ_ACPI_SCI);
	CHECK_EQ(le16_get(e + 8), 0x000d);          /* level, active-high */
	e += 10;
	CHECK_EQ(e[2], 0xff);                   /* all processors */
	CHECK_EQ(le16_get(e + 3), 0);
	CHECK_EQ(e[5], 1);                      /* LINT1 */

	/* Flat logical APIC mode stops at 8 CPUs. */
	CHECK_EQ(!!(le32_get(table("FACP", used) + 112) & (1u << 19)), ncpus > 8);
}

TEST(acpi_madt_1cpu) { check_madt(1); }
TEST(acpi_madt_2cpu) { check_madt(2); }
TEST(acpi_madt_64cpu) { check_madt(64); }
TEST(acpi_madt_255cpu) { check_madt(255); }

/* A Generic Address Structure in I/O space. */
static void check_gas(const uint8_t *g, unsigned int bits, unsigned int access, uint64_t port)
{
	CHECK_EQ(g[0], 1);
	CHECK_EQ(g[1], bits);
	CHECK_EQ(g[2], 0);
	CHECK_EQ(g[3], access);
	CHECK_EQ(le64_get(g + 4), port);
}

TEST(acpi_fadt)
{
	struct acpi_config c = cfg_for(2);
	long used = build(&c);
	const uint8_t *f = table("FACP", used), *dsdt = table("DSDT", used);
	const uint8_t *facs = table("FACS", used);
	static const uint8_t zero[12];

	check_header(f, "FACP", 6, used);
	if (!f || !dsdt || !facs)
		return;
	CHECK_EQ(le32_get(f + 4), 276);
	CHECK_EQ(f[131], 3);                            /* FADT 6.3 */
	CHECK_EQ(le32_get(f + 36), GPA + (uint64_t)(facs - area));
	CHECK_EQ(le64_get(f + 132), 0);                     /* X_FIRMWARE_CTRL: one or the other */
	CHECK_EQ(le32_get(f + 40), GPA + (uint64_t)(dsdt - area));
	CHECK_EQ(le64_get(f + 140), le32_get(f + 40));          /* X_DSDT == DSDT */
	CHECK_EQ(le16_get(f + 46), IRQ_ACPI_SCI);           /* SCI_INT */
	CHECK_EQ(le32_get(f + 48), 0);                      /* SMI_CMD: always ACPI mode */
	CHECK_EQ(f[52], 0);
	CHECK_EQ(f[53], 0);
	CHECK_EQ(le32_get(f + 56), PORT_ACPI_PM1A_EVT);
	CHECK_EQ(le32_get(f + 60), 0);                      /* no PM1b */
	CHECK_EQ(le32_get(f + 64), PORT_ACPI_PM1A_CNT);
	CHECK_EQ(le32_get(f + 76), PORT_ACPI_PM_TMR);
	CHECK_EQ(le32_get(f + 80), 0);                      /* no GPE0 */
	CHECK_EQ(f[88], 4);                             /* PM1_EVT_LEN */
	CHECK_EQ(f[89], 2);                             /* PM1_CNT_LEN */
	CHECK_EQ(f[91], 4);                             /* PM_TMR_LEN */
	CHECK_EQ(f[92], 0);                             /* GPE0_BLK_LEN */
	CHECK(le16_get(f + 96) > 100);                      /* no C2 */
	CHECK(le16_get(f + 98) > 1000);                     /* no C3 */
	CHECK_EQ(le16_get(f + 109), 0x0005);                /* LEGACY_DEVICES | NO_VGA, no 8042 */
	/* WBINVD | PROC_C1 | SLP_BUTTON | RESET_REG_SUP; fixed power button. */
	CHECK_EQ(le32_get(f + 112), 0x00000425);
	check_gas(f + 116, 8, 1, PORT_RESET);
	CHECK_EQ(f[128], 0x06);
	check_gas(f + 148, 32, 2, PORT_ACPI_PM1A_EVT);  /* X_PM1a_EVT_BLK */
	check_gas(f + 172, 16, 2, PORT_ACPI_PM1A_CNT);  /* X_PM1a_CNT_BLK */
	check_gas(f + 208, 32, 3, PORT_ACPI_PM_TMR);    /* X_PM_TMR_BLK */
	CHECK(!memcmp(f + 160, zero, 12));              /* X_PM1b_EVT_BLK */
	CHECK(!memcmp(f + 220, zero, 12));              /* X_GPE0_BLK */
	CHECK(!memcmp(f + 244, zero, 12));              /* SLEEP_CONTROL_REG */

	/* The optional parts. */
	c.i8042 = true;
	c.rtc_century = 0x32;
	c.pm_tmr_port = 0;
	c.reset_port = 0;
	used = build(&c);
	f = table("FACP", used);
	CHECK(f != NULL);
	if (!f)
		return;
	CHECK_EQ(le16_get(f + 109), 0x0007);
	CHECK_EQ(f[108], 0x32);
	CHECK_EQ(le32_get(f + 76), 0);
	CHECK_EQ(f[91], 0);
	CHECK(!memcmp(f + 208, zero, 12));
	CHECK_EQ(le32_get(f + 112), 0x00000025);
	CHECK(!memcmp(f + 116, zero, 12));
	CHECK_EQ(sum8(f, 276), 0);
}

/* Above 4 GiB: no RSDT, the FACS through X_FIRMWARE_CTRL only, no 32-bit DSDT. */
TEST(acpi_high_area)
{
	struct acpi_config c = cfg_for(2);
	static uint8_t buf[4096];
	uint64_t gpa = 0x200000000ULL, rsdp = 0;
	long n = acpi_build(&c, buf, gpa, sizeof(buf), &rsdp);
	const uint8_t *xsdt, *f;

	CHECK(n > 0);
	if (n <= 0)
		return;
	CHECK_EQ(rsdp, gpa);
	CHECK_EQ(le32_get(buf + 16), 0);
	CHECK_EQ(sum8(buf, 20), 0);
	CHECK_EQ(sum8(buf, 36), 0);
	xsdt = buf + (le64_get(buf + 24) - gpa);
	f = buf + (le64_get(xsdt + 36) - gpa);
	CHECK(!memcmp(f, "FACP", 4));
	CHECK_EQ(le32_get(f + 36), 0);
	CHECK(le64_get(f + 132) > gpa);
	CHECK_EQ(le64_get(f + 132) % 64, 0);
	CHECK_EQ(le32_get(f + 40), 0);
	CHECK(le64_get(f + 140) > gpa);
	CHECK_EQ(sum8(f, 276), 0);
}

TEST(acpi_enospc)
{
	static const unsigned int cpus[] = { 1, 255 };
	uint8_t *buf = malloc(sizeof(area) + 64);

	CHECK(buf != NULL);
	if (!buf)
		return;
	for (size_t k = 0; k < ARRAY_SIZE(cpus); k++) {
		struct acpi_config c = cfg_for(cpus[k]);
		long need = build(&c);
		bool clean = true, enospc = true;

		/* Every size short of the need fails, and never writes past it. */
		for (long size = 0; size < need; size++) {
			memset(buf, 0xa5, (size_t)need + 64);
			enospc &= acpi_build(&c, buf, GPA, (size_t)size, NULL) == -ENOSPC;
			for (long i = size; i < need + 64; i++)
				clean &= buf[i] == 0xa5;
		}
		CHECK(enospc);
		CHECK(clean);
		/* The exact size is enough, and gives the same bytes. */
		memset(buf, 0xa5, (size_t)need + 64);
		CHECK_EQ(acpi_build(&c, buf, GPA, (size_t)need, NULL), need);
		CHECK(!memcmp(buf, area, (size_t)need));
		CHECK_EQ(buf[need], 0xa5);
	}
	free(buf);
}

TEST(acpi_einval)
{
	struct acpi_config good = cfg_for(2), c;
	uint64_t rsdp;

#define BAD(field, value) do {                                          \
	c = good;                                                       \
	c.field = value;                                                \
	CHECK_EQ(acpi_build(&c, area, GPA, sizeof(area), &rsdp), -EINVAL); \
} while (0)
	BAD(ncpus, 0);
	BAD(ncpus, 256);
	BAD(ioapic_addr, 0);
	BAD(ioapic_addr, LAYOUT_4G);
	BAD(lapic_addr, 0);
	BAD(lapic_addr, LAYOUT_4G);
	BAD(pm1a_evt_port, 0);
	BAD(pm1a_evt_port, 0xfffe);
	BAD(pm1a_cnt_port, 0);
	BAD(pm_tmr_port, 0xfffd);
	BAD(sci_irq, 0);
	BAD(sci_irq, 2);
	BAD(sci_irq, IRQ_COM1);
	BAD(sci_irq, 16);
	BAD(s5_slp_typ, 8);
	BAD(pci_mmio32_base, LAYOUT_4G);
	BAD(pci_mmio32_size, LAYOUT_4G);
	BAD(pci_mmio64_base, UINT64_MAX - LAYOUT_PCI_MMIO64_SIZE + 2);
#undef BAD
	CHECK_EQ(acpi_build(NULL, area, GPA, sizeof(area), &rsdp), -EINVAL);
	CHECK_EQ(acpi_build(&good, NULL, GPA, sizeof(area), &rsdp), -EINVAL);
	CHECK_EQ(acpi_build(&good, area, GPA + 8, sizeof(area), &rsdp), -EINVAL);
	CHECK_EQ(acpi_build(&good, area, UINT64_MAX - 15, sizeof(area), &rsdp), -EINVAL);
	/* The edges that are fine. */
	c = good;
	c.pci_mmio32_base = LAYOUT_4G - 4096;
	c.pci_mmio32_size = 4096;
	c.pci_mmio64_base = UINT64_MAX - (1ULL << 30) + 1;
	c.pci_mmio64_size = 1ULL << 30;
	c.sci_irq = 15;
	c.s5_slp_typ = 7;
	c.ioapic_id = 0xff;
	CHECK(acpi_build(&c, area, GPA, sizeof(area), &rsdp) > 0);
}

/* Is needle (n bytes) somewhere in the DSDT? */
static bool dsdt_has(long used, const void *needle, size_t n)
{
	const uint8_t *d = table("DSDT", used);

	return d && memmem(d, le32_get(d + 4), needle, n) != NULL;
}

TEST(acpi_dsdt_windows)
{
	struct acpi_config c = cfg_for(2);
	/* DWordMemory/QWordMemory headers: producer, fixed window, R/W. */
	static const uint8_t dword[] = { 0x87, 0x17, 0x00, 0x00, 0x0c, 0x01, 0, 0, 0, 0,
					 0x00, 0x00, 0x00, 0xc0, 0xff, 0xff, 0xff, 0xfb };
	static const uint8_t qword[] = { 0x8a, 0x2b, 0x00, 0x00, 0x0c, 0x03, 0, 0, 0, 0, 0, 0, 0, 0,
					 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00 };
	static const uint8_t s5[] = { 0x08, '_', 'S', '5', '_', 0x12, 0x08, 0x04,
				      0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00 };
	long used = build(&c);

	CHECK(dsdt_has(used, dword, sizeof(dword)));
	CHECK(dsdt_has(used, qword, sizeof(qword)));
	CHECK(dsdt_has(used, s5, sizeof(s5)));
	c.pci_mmio64_size = 0;
	used = build(&c);
	CHECK(dsdt_has(used, dword, sizeof(dword)));
	CHECK(!dsdt_has(used, qword, 2));
	c.pci_mmio32_size = 0;
	used = build(&c);
	CHECK(!dsdt_has(used, dword, 2));
}

/* ---------------------------------------------------------------------------
 * AML encodings.
 */

/* Decode a PkgLength independently of the encoder; returns its byte count. */
static int pkglen_decode(const uint8_t *p, uint32_t *len)
{
	int n = (p[0] >> 6) + 1;

	if (n == 1) {
		*len = p[0] & 0x3f;
		return 1;
	}
	*len = p[0] & 0x0f;
	for (int i = 1; i < n; i++)
		*len |= (uint32_t)p[i] << (4 + 8 * (i - 1));
	return n;
}

TEST(aml_pkglen_encode_edges)
{
	static const struct { uint32_t len; int n; uint8_t b[4]; } v[] = {
		{ 1, 1, { 0x01 } },
		{ 63, 1, { 0x3f } },
		{ 64, 2, { 0x40, 0x04 } },
		{ 4095, 2, { 0x4f, 0xff } },
		{ 4096, 3, { 0x80, 0x00, 0x01 } },
		{ 0xfffff, 3, { 0x8f, 0xff, 0xff } },            /* 1 MiB - 1 */
		{ 0x100000, 4, { 0xc0, 0x00, 0x00, 0x01 } },     /* 1 MiB */
		{ 0xfffffff, 4, { 0xcf, 0xff, 0xff, 0xff } },
	};
	uint8_t out[4];

	for (size_t i = 0; i < ARRAY_SIZE(v); i++) {
		uint32_t back = 0;

		memset(out, 0, sizeof(out));
		CHECK_EQ(aml_pkglen_encode(out, v[i].len), v[i].n);
		CHECK(!memcmp(out, v[i].b, (size_t)v[i].n));
		CHECK_EQ(pkglen_decode(out, &back), v[i].n);
		CHECK_EQ(back, v[i].len);
	}
	CHECK_EQ(aml_pkglen_encode(out, 0), 0);
	CHECK_EQ(aml_pkglen_encode(out, 0x10000000), 0);
}

/*
 * A Package whose body (NumElements byte + filler) is body bytes long: the
 * PkgLength must be the shortest that counts itself, so the boundaries
 * move by the encoding's own size (a 63-byte body needs 2 bytes: 65).
 */
static void check_pkg(uint8_t *buf, size_t cap, size_t body, int want_n)
{
	struct aml a;
	uint32_t len = 0;
	size_t m;
	int n;

	aml_init(&a, buf, cap);
	m = aml_package(&a, 0);
	memset(buf + a.len, 0x5a, body - 1);
	a.len += body - 1;
	aml_end(&a, m);
	CHECK_EQ(a.err, 0);
	CHECK_EQ(buf[0], 0x12);
	n = pkglen_decode(buf + 1, &len);
	CHECK_EQ(n, want_n);
	CHECK_EQ(len, body + (size_t)n);
	CHECK_EQ(a.len, 1 + len);
	CHECK_EQ(buf[1 + n], 0);                /* NumElements moved down intact */
	if (body > 1)
		CHECK_EQ(buf[a.len - 1], 0x5a);
}

TEST(aml_pkglen_in_package)
{
	size_t cap = (2u << 20);
	uint8_t *buf = malloc(cap);

	CHECK(buf != NULL);
	if (!buf)
		return;
	check_pkg(buf, cap, 1, 1);
	check_pkg(buf, cap, 62, 1);              /* 63 */
	check_pkg(buf, cap, 63, 2);              /* 65: 64 would not count 2 bytes */
	check_pkg(buf, cap, 4093, 2);            /* 4095 */
	check_pkg(buf, cap, 4094, 3);
	check_pkg(buf, cap, 0xfffff - 3, 3);     /* 1 MiB - 1 */
	check_pkg(buf, cap, 0xfffff - 2, 4);
	free(buf);
}

static void check_int(uint64_t v, const uint8_t *want, size_t n)
{
	uint8_t buf[16];
	struct aml a;

	aml_init(&a, buf, sizeof(buf));
	aml_integer(&a, v);
	CHECK_EQ(a.err, 0);
	CHECK_EQ(a.len, n);
	CHECK(!memcmp(buf, want, n));
}

TEST(aml_integers)
{
	check_int(0, (const uint8_t[]){ 0x00 }, 1);
	check_int(1, (const uint8_t[]){ 0x01 }, 1);
	check_int(2, (const uint8_t[]){ 0x0a, 0x02 }, 2);
	check_int(0xff, (const uint8_t[]){ 0x0a, 0xff }, 2);
	check_int(0x100, (const uint8_t[]){ 0x0b, 0x00, 0x01 }, 3);
	check_int(0xffff, (const uint8_t[]){ 0x0b, 0xff, 0xff }, 3);
	check_int(0x10000, (const uint8_t[]){ 0x0c, 0x00, 0x00, 0x01, 0x00 }, 5);
	check_int(0xffffffff, (const uint8_t[]){ 0x0c, 0xff, 0xff, 0xff, 0xff }, 5);
	check_int(1ULL << 32, (const uint8_t[]){ 0x0e, 0, 0, 0, 0, 1, 0, 0, 0 }, 9);
	check_int(UINT64_MAX, (const uint8_t[]){ 0x0e, 0xff, 0xff, 0xff, 0xff,
						 0xff, 0xff, 0xff, 0xff }, 9);
}

TEST(aml_eisaid_values)
{
	CHECK_EQ(aml_eisaid("PNP0A03"), 0x030AD041);
	CHECK_EQ(aml_eisaid("PNP0501"), 0x0105D041);
	CHECK_EQ(aml_eisaid("PNP0C0C"), 0x0C0CD041);
	CHECK_EQ(aml_eisaid("pnp0a03"), 0);
	CHECK_EQ(aml_eisaid("PNP0A0"), 0);
	CHECK_EQ(aml_eisaid("PNP0A033"), 0);
	CHECK_EQ(aml_eisaid("PNP0A0G"), 0);
	CHECK_EQ(aml_eisaid("PNP0a03"), 0);
}

static void check_name(const char *path, const char *want, size_t n)
{
	uint8_t buf[64];
	struct aml a;

	aml_init(&a, buf, sizeof(buf));
	aml_namestring(&a, path);
	CHECK_EQ(a.err, 0);
	CHECK_EQ(a.len, n);
	CHECK(!memcmp(buf, want, n));
}

static void check_bad_name(const char *path)
{
	uint8_t buf[64];
	struct aml a;

	aml_init(&a, buf, sizeof(buf));
	aml_namestring(&a, path);
	CHECK_EQ(a.err, -EINVAL);
	CHECK_EQ(a.len, 0);
}

TEST(aml_namestrings)
{
	check_name("_S5", "_S5_", 4);
	check_name("PCI0", "PCI0", 4);
	check_name("\\_SB", "\\_SB_", 5);
	check_name("\\_SB.PCI0", "\\\x2e_SB_PCI0", 10);
	check_name("_SB.PCI0.COM1", "\x2f\x03_SB_PCI0COM1", 14);
	check_name("^^A", "^^A___", 6);
	check_name("\\", "\\\x00", 2);
	check_bad_name("");
	check_bad_name("TOOLONG");
	check_bad_name("1ABC");
	check_bad_name("abc");
	check_bad_name("A..B");
	check_bad_name("A.");
	check_bad_name("\\^A");
}

TEST(aml_resource_template_bytes)
{
	static const uint8_t want[] = {
		0x11, 0x10, 0x0a, 0x0d,                         /* Buffer (13) */
		0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08, /* IO (Decode16, 0x3f8, 0x3f8, 0, 8) */
		0x22, 0x10, 0x00,                               /* IRQNoFlags () {4} */
		0x79,                                           /* EndTag + checksum */
	};
	uint8_t buf[64];
	struct aml a;
	size_t m;

	aml_init(&a, buf, sizeof(buf));
	m = aml_resource_template(&a);
	aml_res_io(&a, 0x3f8, 0x3f8, 0, 8);
	aml_res_irq_noflags(&a, 4);
	aml_resource_template_end(&a, m);
	CHECK_EQ(a.err, 0);
	CHECK_EQ(a.len, sizeof(want) + 1);
	CHECK(!memcmp(buf, want, sizeof(want)));
	CHECK_EQ(sum8(buf + 4, 13), 0);         /* the template sums to zero */

	aml_init(&a, buf, sizeof(buf));
	aml_res_irq_noflags(&a, 16);
	CHECK_EQ(a.err, -EINVAL);
}

TEST(aml_enospc_sticky)
{
	uint8_t buf[32];
	struct aml a;
	size_t dev;

	memset(buf, 0xa5, sizeof(buf));
	aml_init(&a, buf, 16);
	dev = aml_device(&a, "COM1");
	aml_name(&a, "_HID");
	aml_eisaid_obj(&a, "PNP0501");
	aml_name(&a, "_UID");                   /* does not fit */
	aml_integer(&a, 1);
	aml_end(&a, dev);
	CHECK_EQ(a.err, -ENOSPC);
	CHECK(a.len <= 16);
	for (size_t i = 16; i < sizeof(buf); i++)
		CHECK_EQ(buf[i], 0xa5);

	aml_init(&a, buf, sizeof(buf));
	aml_eisaid_obj(&a, "PNP0A0");
	aml_integer(&a, 1);                     /* sticky: not written */
	CHECK_EQ(a.err, -EINVAL);
	CHECK_EQ(a.len, 0);
}

/* ---------------------------------------------------------------------------
 * iasl: disassemble, check, recompile, compare.
 */

static bool have_iasl(void)
{
	return system("command -v iasl >/dev/null 2>&1") == 0;
}

/* Run a shell command in dir; its output goes to out.  Returns the exit status. */
static int run_in(const char *dir, const char *cmd, char *out, size_t outsz)
{
	char line[512];
	size_t len = 0;
	FILE *p;
	int st;

	snprintf(line, sizeof(line), "cd '%s' && %s 2>&1", dir, cmd);
	p = popen(line, "r");
	if (!p)
		return -1;
	len = fread(out, 1, outsz - 1, p);
	out[len] = 0;
	st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool write_file(const char *dir, const char *name, const void *p, size_t n)
{
	char path[256];
	FILE *f;
	bool ok;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f)
		return false;
	ok = fwrite(p, 1, n, f) == n;
	return fclose(f) == 0 && ok;
}

/* Read a whole file (NUL-terminated); NULL on failure.  Caller frees. */
static char *read_file(const char *dir, const char *name, size_t *n)
{
	char path[256];
	struct stat st;
	char *s = NULL;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "rb");
	if (!f)
		return NULL;
	if (fstat(fileno(f), &st) == 0 && (s = malloc((size_t)st.st_size + 1))) {
		*n = fread(s, 1, (size_t)st.st_size, f);
		s[*n] = 0;
	}
	fclose(f);
	return s;
}

/*
 * Disassemble table t as <name>.dat: iasl must succeed without a warning.
 * Then recompile the .dsl and compare with the original: the header up to
 * the OEM revision and everything after it must match.  The creator ID and
 * revision (and so the checksum) are iasl's own; iasl writes 0 for an
 * EndTag checksum ("valid"), where godwit computes it, so those bytes may
 * differ when is_aml.  Returns the disassembly, or NULL.
 */
static char *iasl_roundtrip(const char *dir, const char *name, const uint8_t *t, bool is_aml)
{
	char cmd[128], out[8192], file[64];
	uint32_t len = le32_get(t + 4);
	char *dsl, *aml;
	size_t n = 0, m = 0;

	snprintf(file, sizeof(file), "%s.dat", name);
	CHECK(write_file(dir, file, t, len));
	snprintf(cmd, sizeof(cmd), "iasl -d %s.dat", name);
	CHECK_EQ(run_in(dir, cmd, out, sizeof(out)), 0);
	if (strstr(out, "Warning") || strstr(out, "Error") || strstr(out, "rror "))
		unit_fail(__FILE__, __LINE__, "iasl -d %s:\n%s", name, out);
	snprintf(file, sizeof(file), "%s.dsl", name);
	dsl = read_file(dir, file, &n);
	CHECK(dsl != NULL);
	if (!dsl)
		return NULL;

	/* -on: keep name paths as written (iasl would shorten "\_SB" to "_SB"). */
	snprintf(cmd, sizeof(cmd), "iasl -on -p %s-rt %s.dsl", name, name);
	CHECK_EQ(run_in(dir, cmd, out, sizeof(out)), 0);
	if (!strstr(out, "0 Errors, 0 Warnings"))
		unit_fail(__FILE__, __LINE__, "iasl %s.dsl:\n%s", name, out);
	snprintf(file, sizeof(file), "%s-rt.aml", name);
	aml = read_file(dir, file, &m);
	CHECK(aml != NULL);
	if (aml) {
		const uint8_t *r = (const uint8_t *)aml;
		unsigned int diff = 0;

		CHECK_EQ(m, len);
		for (size_t i = 0; i < MIN(m, (size_t)len); i++) {
			if (i == 9 || (i >= 28 && i < 36) || r[i] == t[i])
				continue;
			if (is_aml && r[i] == 0 && i > 0 && t[i - 1] == 0x79)
				continue;               /* EndTag checksum */
			if (diff++ < 3)
				unit_fail(__FILE__, __LINE__, "%s: byte %zu is %#x, iasl has %#x",
					  name, i, t[i], r[i]);
		}
		CHECK_EQ(diff, 0);
		free(aml);
	}
	return dsl;
}

/* Build a table from AML the builder writes, as a test of what it can do. */
static size_t ssdt_extras(uint8_t *buf, size_t cap)
{
	struct aml a;
	size_t sb, dev, m, prt, e;
	uint8_t hdr[36] = "SSDT";

	aml_init(&a, buf, cap);
	aml_bytes(&a, hdr, sizeof(hdr));
	sb = aml_scope(&a, "\\_SB");
	dev = aml_device(&a, "LNKX");
	aml_name(&a, "_HID");
	aml_eisaid_obj(&a, "PNP0C0F");
	aml_name(&a, "_DDN");
	aml_string(&a, "link");
	m = aml_method(&a, "_STA", 0, false);
	aml_return(&a);
	aml_integer(&a, 0x0f);
	aml_end(&a, m);
	aml_end(&a, dev);
	/* A _PRT: { Address, Pin, Source, SourceIndex } per slot and pin. */
	aml_name(&a, "XPRT");
	prt = aml_package(&a, 2);
	for (unsigned int slot = 1; slot <= 2; slot++) {
		e = aml_package(&a, 4);
		aml_integer(&a, (uint64_t)slot << 16 | 0xffff);
		aml_integer(&a, 0);
		aml_integer(&a, 0);
		aml_integer(&a, 16 + slot);
		aml_end(&a, e);
	}
	aml_end(&a, prt);
	aml_end(&a, sb);
	CHECK_EQ(a.err, 0);
	buf[4] = (uint8_t)a.len;
	buf[5] = (uint8_t)(a.len >> 8);
	buf[8] = 2;
	memcpy(buf + 10, "GODWIT", 6);
	memcpy(buf + 16, "GDWTSSDT", 8);
	buf[9] = acpi_checksum(buf, a.len);
	return a.len;
}

TEST(acpi_iasl)
{
	char dir[] = "/tmp/godwit-acpi.XXXXXX", cmd[64];
	struct acpi_config c = cfg_for(2);
	static uint8_t ssdt[1024];
	long used = build(&c);
	char *dsl;

	if (!have_iasl()) {
		printf("# acpi_iasl: iasl not in PATH (apt-get install acpica-tools); "
		       "skipping the disassembler checks\n");
		return;
	}
	CHECK(mkdtemp(dir) != NULL);

	dsl = iasl_roundtrip(dir, "dsdt", table("DSDT", used), true);
	if (dsl) {
		static const char *const want[] = {
			"DefinitionBlock (\"\", \"DSDT\", 2, \"GODWIT\", \"GDWTDSDT\", 0x00000001)",
			"Scope (\\_SB)",
			"Device (PCI0)",
			"Name (_HID, EisaId (\"PNP0A03\")",
			"Name (_SEG, Zero)",
			"Name (_BBN, Zero)",
			"WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode",
			"0x00FF,             // Range Maximum",
			"0x0CF8,             // Range Minimum",
			"0x0CF7,             // Range Maximum",
			"0x0D00,             // Range Minimum",
			"0xFFFF,             // Range Maximum",
			"DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite",
			"0xC0000000,         // Range Minimum",
			"0xFBFFFFFF,         // Range Maximum",
			"QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadWrite",
			"0x0000001000000000, // Range Minimum",
			"0x0000001FFFFFFFFF, // Range Maximum",
			"Device (COM1)",
			"Name (_HID, EisaId (\"PNP0501\")",
			"Name (_UID, One)",
			"0x03F8,             // Range Minimum",
			"IRQNoFlags ()\n                    {4}",
			"Name (_S5, Package (0x04)  // _S5_: S5 System State",
			"0x05, \n        0x05, \n        Zero, \n        Zero",
		};

		for (size_t i = 0; i < ARRAY_SIZE(want); i++)
			if (!strstr(dsl, want[i]))
				unit_fail(__FILE__, __LINE__, "disassembled DSDT lacks \"%s\"", want[i]);
		free(dsl);
	}

	dsl = iasl_roundtrip(dir, "facp", table("FACP", used), false);
	if (dsl) {
		CHECK(strstr(dsl, "SCI Interrupt : 0009"));
		CHECK(strstr(dsl, "PM1A Event Block Address : 00000600"));
		CHECK(strstr(dsl, "Reset Register Supported (V2) : 1"));
		CHECK(strstr(dsl, "FADT Minor Revision : 03"));
		free(dsl);
	}
	dsl = iasl_roundtrip(dir, "apic", table("APIC", used), false);
	if (dsl) {
		CHECK(strstr(dsl, "PC-AT Compatibility : 1"));
		CHECK(strstr(dsl, "Local Apic ID : 01"));
		CHECK(strstr(dsl, "Interrupt Input LINT : 01"));
		free(dsl);
	}
	free(iasl_roundtrip(dir, "facs", table("FACS", used), false));
	free(iasl_roundtrip(dir, "xsdt", at(le64_get(area + 24), used), false));
	free(iasl_roundtrip(dir, "rsdt", at(le32_get(area + 16), used), false));

	/* What the builder can do beyond today's DSDT: Method, String, _PRT. */
	ssdt_extras(ssdt, sizeof(ssdt));
	dsl = iasl_roundtrip(dir, "ssdt", ssdt, true);
	if (dsl) {
		CHECK(strstr(dsl, "Method (_STA, 0, NotSerialized)"));
		CHECK(strstr(dsl, "Return (0x0F)"));
		CHECK(strstr(dsl, "Name (_DDN, \"link\")"));
		CHECK(strstr(dsl, "0x0002FFFF"));
		CHECK(strstr(dsl, "0x12"));
		free(dsl);
	}

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	CHECK_EQ(system(cmd), 0);
}
