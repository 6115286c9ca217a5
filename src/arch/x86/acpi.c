/*
 * acpi.c - the guest's ACPI tables and the AML builder that writes its DSDT.
 *
 * Owns the table layout inside the ACPI area (layout.h puts it at 0xe0000),
 * the contents of every table, and the AML encoding.  Nothing here touches
 * the VM: acpi_build() fills a host buffer the caller maps at gpa.
 *
 * Layout (offsets from the area's start; every table 16-byte aligned, the
 * FACS 64-byte aligned as the spec requires):
 *
 *   RSDP  rev 2, both checksums, at offset 0 so the legacy scan finds it
 *   RSDT  -> FADT, MADT   (only when the whole area is below 4 GiB)
 *   XSDT  -> FADT, MADT
 *   FADT  rev 6.3, 276 bytes -> FACS, DSDT
 *   FACS  64 bytes (mandatory on non-hardware-reduced platforms)
 *   DSDT  \_SB.PCI0, \_SB.COM1, \_S5
 *   MADT  rev 5: LAPIC x ncpus, I/O APIC, 2 ISOs, LAPIC NMI
 *
 * The DSDT is built in place and the MADT follows it, so the few bytes the
 * AML builder borrows while a construct is open (see acpi.h) always lie
 * inside the final extent: a buffer of exactly the returned size suffices.
 *
 * FADT choices (checked against what Linux 6.1 does with them):
 * - SMI_CMD = 0: the platform is always in ACPI mode (ACPICA then never
 *   writes ACPI_ENABLE; acpi_pm must report SCI_EN set in PM1_CNT anyway).
 * - Flags: WBINVD (required for IA-PC), PROC_C1 (HLT works on every vCPU),
 *   SLP_BUTTON (no sleep button), RESET_REG_SUP when a reset port exists,
 *   FORCE_APIC_PHYSICAL_DESTINATION_MODE above 8 CPUs (flat logical mode
 *   addresses only 8).  PWR_BUTTON is clear: the power button is the fixed
 *   feature one (PM1 PWRBTN_STS/EN), so godwit can later ask for a clean
 *   shutdown by setting PWRBTN_STS and raising the SCI, as QEMU does.
 *   TMR_VAL_EXT is clear: the PM timer is 24 bits wide.  C2/C3 latencies
 *   are out of range (no C2/C3).
 * - IAPC_BOOT_ARCH: LEGACY_DEVICES (COM1 is an ISA device) and
 *   VGA_NOT_PRESENT.  8042 only if cfg->i8042: Linux probes the keyboard
 *   controller at 0x60/0x64 only when this bit is set (or a PNP0303 device
 *   exists).  godwit's i8042 is there for its reset line and has no
 *   keyboard or mouse behind it, so the probe would only cost boot time.
 *   Rebooting needs neither: Linux tries the FADT reset register first and
 *   still falls back to the 0x64 reset command without the bit.
 *   CMOS_RTC_NOT_PRESENT is clear: the RTC is there (Linux registers
 *   rtc_cmos itself when no PNP0B00 device exists).
 * - The FACS is referenced through FIRMWARE_CTRL when below 4 GiB, else
 *   through X_FIRMWARE_CTRL; the spec says only one may be non-zero.  The
 *   DSDT goes in both DSDT and X_DSDT (equal values; ACPICA checks).
 * - Every 32-bit register block also gets its X_ GAS with a bit width that
 *   matches the legacy length (ACPICA warns on a mismatch).
 */
#include <errno.h>
#include <string.h>

#include "godwit/acpi.h"
#include "godwit/boot.h"
#include "godwit/common.h"
#include "godwit/layout.h"
#include "godwit/le.h"

#define ACPI_OEM_ID        "GODWIT"
#define ACPI_OEM_PREFIX    "GDWT"   /* OEM table ID = prefix + signature */
#define ACPI_OEM_REVISION  1
#define ACPI_CREATOR_ID    "GDWT"
#define ACPI_CREATOR_REV   1

/* ---------------------------------------------------------------------------
 * Table layouts (ACPI 6.3).  Packed, little-endian like the host.
 */
struct acpi_header {
	char     sig[4];
	uint32_t length;
	uint8_t  revision;
	uint8_t  checksum;
	char     oem_id[6];
	char     oem_table_id[8];
	uint32_t oem_revision;
	char     creator_id[4];
	uint32_t creator_revision;
} __attribute__((packed));

struct acpi_rsdp {
	char     sig[8];             /* "RSD PTR " */
	uint8_t  checksum;           /* over the first 20 bytes */
	char     oem_id[6];
	uint8_t  revision;           /* 2: ACPI 2.0+ */
	uint32_t rsdt_addr;
	uint32_t length;             /* 36 */
	uint64_t xsdt_addr;
	uint8_t  ext_checksum;       /* over all 36 bytes */
	uint8_t  reserved[3];
} __attribute__((packed));

struct acpi_gas {
	uint8_t  space_id;
	uint8_t  bit_width;
	uint8_t  bit_offset;
	uint8_t  access_size;        /* 1 byte, 2 word, 3 dword, 4 qword */
	uint64_t address;
} __attribute__((packed));

#define ACPI_GAS_IO 1

struct acpi_fadt {
	struct acpi_header h;
	uint32_t firmware_ctrl;
	uint32_t dsdt;
	uint8_t  reserved0;
	uint8_t  preferred_pm_profile;
	uint16_t sci_int;
	uint32_t smi_cmd;
	uint8_t  acpi_enable;
	uint8_t  acpi_disable;
	uint8_t  s4bios_req;
	uint8_t  pstate_cnt;
	uint32_t pm1a_evt_blk;
	uint32_t pm1b_evt_blk;
	uint32_t pm1a_cnt_blk;
	uint32_t pm1b_cnt_blk;
	uint32_t pm2_cnt_blk;
	uint32_t pm_tmr_blk;
	uint32_t gpe0_blk;
	uint32_t gpe1_blk;
	uint8_t  pm1_evt_len;
	uint8_t  pm1_cnt_len;
	uint8_t  pm2_cnt_len;
	uint8_t  pm_tmr_len;
	uint8_t  gpe0_blk_len;
	uint8_t  gpe1_blk_len;
	uint8_t  gpe1_base;
	uint8_t  cst_cnt;
	uint16_t p_lvl2_lat;
	uint16_t p_lvl3_lat;
	uint16_t flush_size;
	uint16_t flush_stride;
	uint8_t  duty_offset;
	uint8_t  duty_width;
	uint8_t  day_alrm;
	uint8_t  mon_alrm;
	uint8_t  century;
	uint16_t iapc_boot_arch;
	uint8_t  reserved1;
	uint32_t flags;
	struct acpi_gas reset_reg;
	uint8_t  reset_value;
	uint16_t arm_boot_arch;
	uint8_t  minor_version;
	uint64_t x_firmware_ctrl;
	uint64_t x_dsdt;
	struct acpi_gas x_pm1a_evt_blk;
	struct acpi_gas x_pm1b_evt_blk;
	struct acpi_gas x_pm1a_cnt_blk;
	struct acpi_gas x_pm1b_cnt_blk;
	struct acpi_gas x_pm2_cnt_blk;
	struct acpi_gas x_pm_tmr_blk;
	struct acpi_gas x_gpe0_blk;
	struct acpi_gas x_gpe1_blk;
	struct acpi_gas sleep_control_reg;
	struct acpi_gas sleep_status_reg;
	uint64_t hypervisor_vendor_id;
} __attribute__((packed));

#define FADT_REVISION        6
#define FADT_MINOR_VERSION   3
#define FADT_F_WBINVD        (1u << 0)
#define FADT_F_PROC_C1       (1u << 2)
#define FADT_F_PWR_BUTTON    (1u << 4)  /* set: no fixed-feature power button */
#define FADT_F_SLP_BUTTON    (1u << 5)  /* set: no fixed-feature sleep button */
#define FADT_F_RESET_REG_SUP (1u << 10)
#define FADT_F_APIC_PHYSICAL (1u << 19)
#define FADT_BOOT_LEGACY_DEVICES (1u << 0)
#define FADT_BOOT_8042           (1u << 1)
#define FADT_BOOT_NO_VGA         (1u << 2)
#define FADT_NO_C2_LATENCY   0x0fff     /* > 100 us: C2 not supported */
#define FADT_NO_C3_LATENCY   0x0fff     /* > 1000 us: C3 not supported */

struct acpi_facs {
	char     sig[4];
	uint32_t length;
	uint32_t hardware_signature;
	uint32_t firmware_waking_vector;
	uint32_t global_lock;
	uint32_t flags;
	uint64_t x_firmware_waking_vector;
	uint8_t  version;
	uint8_t  reserved0[3];
	uint32_t ospm_flags;
	uint8_t  reserved1[24];
} __attribute__((packed));

struct acpi_madt {
	struct acpi_header h;
	uint32_t lapic_addr;
	uint32_t flags;
} __attribute__((packed));

#define MADT_REVISION       5
#define MADT_F_PCAT_COMPAT  (1u << 0)

struct madt_lapic {
	uint8_t  type;               /* 0 */
	uint8_t  length;             /* 8 */
	uint8_t  uid;                /* ACPI processor UID */
	uint8_t  apic_id;
	uint32_t flags;
} __attribute__((packed));

struct madt_ioapic {
	uint8_t  type;               /* 1 */
	uint8_t  length;             /* 12 */
	uint8_t  id;
	uint8_t  reserved;
	uint32_t addr;
	uint32_t gsi_base;
} __attribute__((packed));

struct madt_iso {
	uint8_t  type;               /* 2 */
	uint8_t  length;             /* 10 */
	uint8_t  bus;                /* 0: ISA */
	uint8_t  source;             /* ISA IRQ */
	uint32_t gsi;
	uint16_t flags;
} __attribute__((packed));

struct madt_lapic_nmi {
	uint8_t  type;               /* 4 */
	uint8_t  length;             /* 6 */
	uint8_t  uid;                /* 0xff: all processors */
	uint16_t flags;
	uint8_t  lint;
} __attribute__((packed));

#define MADT_LAPIC          0
#define MADT_IOAPIC         1
#define MADT_ISO            2
#define MADT_LAPIC_NMI      4
#define MADT_LAPIC_ENABLED  (1u << 0)
/* MPS INTI flags: polarity bits 1:0, trigger mode bits 3:2. */
#define MPS_INTI_CONFORMS   0x0
#define MPS_INTI_HIGH       0x1
#define MPS_INTI_LEVEL      (0x3 << 2)

_Static_assert(sizeof(struct acpi_header) == 36, "ACPI header");
_Static_assert(sizeof(struct acpi_rsdp) == 36, "RSDP");
_Static_assert(sizeof(struct acpi_gas) == 12, "GAS");
_Static_assert(sizeof(struct acpi_fadt) == 276, "FADT rev 6");
_Static_assert(sizeof(struct acpi_facs) == 64, "FACS");
_Static_assert(sizeof(struct acpi_madt) == 44, "MADT");
_Static_assert(sizeof(struct madt_lapic) == 8, "MADT LAPIC");
_Static_assert(sizeof(struct madt_ioapic) == 12, "MADT I/O APIC");
_Static_assert(sizeof(struct madt_iso) == 10, "MADT ISO");
_Static_assert(sizeof(struct madt_lapic_nmi) == 6, "MADT LAPIC NMI");

uint8_t acpi_checksum(const void *p, size_t len)
{
	const uint8_t *b = p;
	uint8_t sum = 0;

	while (len--)
		sum += *b++;
	return (uint8_t)(0 - sum);
}

/* ---------------------------------------------------------------------------
 * AML builder.
 */
#define AML_ZERO_OP       0x00
#define AML_ONE_OP        0x01
#define AML_NAME_OP       0x08
#define AML_BYTE_PREFIX   0x0a
#define AML_WORD_PREFIX   0x0b
#define AML_DWORD_PREFIX  0x0c
#define AML_STRING_PREFIX 0x0d
#define AML_QWORD_PREFIX  0x0e
#define AML_SCOPE_OP      0x10
#define AML_BUFFER_OP     0x11
#define AML_PACKAGE_OP    0x12
#define AML_METHOD_OP     0x14
#define AML_DUAL_NAME     0x2e
#define AML_MULTI_NAME    0x2f
#define AML_EXT_OP        0x5b
#define AML_DEVICE_OP     0x82      /* after AML_EXT_OP */
#define AML_ROOT_CHAR     '\\'
#define AML_PARENT_CHAR   '^'
#define AML_RETURN_OP     0xa4

#define AML_PKGLEN_MAX    4         /* bytes */
#define AML_INT_MAX       9         /* prefix + 8 bytes */
/* A Buffer's size is a DWord at most: PkgLength, then BufferSize. */
#define AML_BUF_RESERVE   (AML_PKGLEN_MAX + 5)

/* Resource descriptor tags and flags (ACPI 6.3 section 6.4). */
#define RES_IRQ_NOFLAGS   0x22      /* small item 0x4, length 2 */
#define RES_IO            0x47      /* small item 0x8, length 7 */
#define RES_END_TAG       0x79      /* small item 0xf, length 1 */
#define RES_DWORD_ADDR    0x87
#define RES_WORD_ADDR     0x88
#define RES_QWORD_ADDR    0x8a
#define RES_IO_DECODE16   0x01
#define RES_TYPE_MEM      0
#define RES_TYPE_IO       1
#define RES_TYPE_BUS      2
/* General flags: producer (bit 0 clear), positive decode, min and max fixed. */
#define RES_GF_WINDOW     ((1u << 2) | (1u << 3))
#define RES_IO_ENTIRE     0x03      /* I/O type flags: ISA and non-ISA ranges */
#define RES_MEM_RW        0x01
#define RES_MEM_CACHEABLE (1u << 1)

void aml_init(struct aml *a, void *buf, size_t cap)
{
	a->buf = buf;
	a->cap = buf ? cap : 0;
	a->len = 0;
	a->err = 0;
}

static void aml_fail(struct aml *a, int err)
{
	if (!a->err)
		a->err = err;
}

/* Room for n more bytes?  Sets -ENOSPC if not. */
static bool aml_room(struct aml *a, size_t n)
{
	if (a->err)
		return false;
	if (n > a->cap - a->len) {
		aml_fail(a, -ENOSPC);
		return false;
	}
	return true;
}

void aml_byte(struct aml *a, uint8_t b)
{
	if (aml_room(a, 1))
		a->buf[a->len++] = b;
}

void aml_bytes(struct aml *a, const void *p, size_t n)
{
	if (aml_room(a, n)) {
		memcpy(a->buf + a->len, p, n);
		a->len += n;
	}
}

static void aml_le(struct aml *a, uint64_t v, unsigned int n)
{
	uint8_t b[8];

	le_put(b, v, n);
	aml_bytes(a, b, n);
}

/* The largest PkgLength n bytes can encode: 6, 12, 20 or 28 bits. */
static uint32_t aml_pkglen_limit(int n)
{
	return n == 1 ? 0x3f : (1u << (4 + 8 * (n - 1))) - 1;
}

int aml_pkglen_encode(uint8_t out[4], uint32_t len)
{
	int n = 1;

	if (len == 0)
		return 0;
	while (len > aml_pkglen_limit(n))
		if (++n > AML_PKGLEN_MAX)
			return 0;
	if (n == 1) {
		out[0] = (uint8_t)len;
		return 1;
	}
	/*
	 * Lead byte: bits 7:6 count the bytes that follow, bits 3:0 hold the
	 * low nibble; each following byte holds the next 8 bits.
	 */
	out[0] = (uint8_t)(((n - 1) << 6) | (len & 0xf));
	for (int i = 1; i < n; i++)
		out[i] = (uint8_t)(len >> (4 + 8 * (i - 1)));
	return n;
}

/* The shortest encoding of an integer constant; returns its length. */
static unsigned int aml_int_encode(uint8_t out[AML_INT_MAX], uint64_t v)
{
	unsigned int n;

	if (v == 0) {
		out[0] = AML_ZERO_OP;
		return 1;
	}
	if (v == 1) {
		out[0] = AML_ONE_OP;
		return 1;
	}
	/* OnesOp is avoided: its width depends on the table's revision. */
	if (v <= 0xff) {
		out[0] = AML_BYTE_PREFIX;
		n = 1;
	} else if (v <= 0xffff) {
		out[0] = AML_WORD_PREFIX;
		n = 2;
	} else if (v <= 0xffffffff) {
		out[0] = AML_DWORD_PREFIX;
		n = 4;
	} else {
		out[0] = AML_QWORD_PREFIX;
		n = 8;
	}
	for (unsigned int i = 0; i < n; i++)
		out[1 + i] = (uint8_t)(v >> (8 * i));
	return 1 + n;
}

void aml_integer(struct aml *a, uint64_t v)
{
	uint8_t b[AML_INT_MAX];

	aml_bytes(a, b, aml_int_encode(b, v));
}

void aml_string(struct aml *a, const char *s)
{
	aml_byte(a, AML_STRING_PREFIX);
	aml_bytes(a, s, strlen(s) + 1);
}

static bool aml_lead_char(char c)
{
	return (c >= 'A' && c <= 'Z') || c == '_';
}

static bool aml_name_char(char c)
{
	return aml_lead_char(c) || (c >= '0' && c <= '9');
}

/*
 * Parse one path segment at *p into seg (padded with '_'), advancing *p
 * past it.  Returns false if the segment is malformed.
 */
static bool aml_nameseg(const char **p, char seg[4])
{
	const char *s = *p;
	int n = 0;

	if (!aml_lead_char(*s))
		return false;
	while (aml_name_char(s[n])) {
		if (n == 4)
			return false;
		seg[n] = s[n];
		n++;
	}
	for (int i = n; i < 4; i++)
		seg[i] = '_';
	*p = s + n;
	return true;
}

void aml_namestring(struct aml *a, const char *path)
{
	char segs[255][4];
	const char *p = path;
	unsigned int nsegs = 0;
	size_t prefix = 0;

	if (*p == AML_ROOT_CHAR) {
		p++;
		prefix = 1;
	} else {
		while (*p == AML_PARENT_CHAR) {
			p++;
			prefix++;
		}
	}
	while (*p) {
		if (nsegs == ARRAY_SIZE(segs) || !aml_nameseg(&p, segs[nsegs])) {
			aml_fail(a, -EINVAL);
			return;
		}
		nsegs++;
		if (*p == '.' && p[1])
			p++;
		else if (*p) {
			aml_fail(a, -EINVAL);
			return;
		}
	}
	if (nsegs == 0 && prefix == 0) {
		aml_fail(a, -EINVAL);   /* an empty name */
		return;
	}

	aml_bytes(a, path, prefix);  /* the '\' or '^'s, as written */
	if (nsegs == 0) {
		aml_byte(a, 0);          /* NullName: "\" alone */
	} else if (nsegs == 2) {
		aml_byte(a, AML_DUAL_NAME);
	} else if (nsegs > 2) {
		aml_byte(a, AML_MULTI_NAME);
		aml_byte(a, (uint8_t)nsegs);
	}
	aml_bytes(a, segs, 4 * (size_t)nsegs);
}

uint32_t aml_eisaid(const char *id)
{
	uint32_t v = 0;

	if (strlen(id) != 7)
		return 0;
	/* Three letters, five bits each ('A' is 1), then four hex digits. */
	for (int i = 0; i < 3; i++) {
		if (id[i] < 'A' || id[i] > 'Z')
			return 0;
		v = (v << 5) | (uint32_t)(id[i] - '@');
	}
	for (int i = 3; i < 7; i++) {
		char c = id[i];
		uint32_t d;

		if (c >= '0' && c <= '9')
			d = (uint32_t)(c - '0');
		else if (c >= 'A' && c <= 'F')
			d = (uint32_t)(c - 'A' + 10);
		else
			return 0;
		v = (v << 4) | d;
	}
	/* The 31-bit value above is stored big-endian in the DWord. */
	return __builtin_bswap32(v);
}

void aml_eisaid_obj(struct aml *a, const char *id)
{
	uint32_t v = aml_eisaid(id);

	if (!v) {
		aml_fail(a, -EINVAL);
		return;
	}
	/* Always a DWord, as ASL's EISAID() compiles, even if it would fit in less. */
	aml_byte(a, AML_DWORD_PREFIX);
	aml_le(a, v, 4);
}

void aml_name(struct aml *a, const char *name)
{
	aml_byte(a, AML_NAME_OP);
	aml_namestring(a, name);
}

void aml_return(struct aml *a)
{
	aml_byte(a, AML_RETURN_OP);
}

/*
 * Reserve room for the longest PkgLength (plus extra bytes a Buffer needs
 * for its size) and return the mark aml_end() takes: the reservation's
 * offset.  The opcode must already be written.
 */
static size_t aml_open(struct aml *a, size_t reserve)
{
	size_t mark = a->len;

	if (aml_room(a, reserve)) {
		memset(a->buf + a->len, 0, reserve);
		a->len += reserve;
	}
	return mark;
}

/*
 * Close the construct whose reservation of `reserve` bytes starts at mark:
 * write its PkgLength, then `ins` (a Buffer's size), then move the body
 * down over the unused part of the reservation.
 */
static void aml_close(struct aml *a, size_t mark, size_t reserve,
		      const uint8_t *ins, size_t ins_len)
{
	uint8_t pl[AML_PKGLEN_MAX];
	size_t body, body_len, inner;
	int n;

	if (a->err)
		return;
	if (NEVER(mark > a->len || a->len - mark < reserve)) {
		aml_fail(a, -EINVAL);   /* aml_end() with a stale mark */
		return;
	}
	body = mark + reserve;
	body_len = a->len - body;
	inner = ins_len + body_len;
	/* The shortest PkgLength that can count itself as well as the rest. */
	n = 0;
	for (int i = 1; i <= AML_PKGLEN_MAX && !n; i++)
		if (inner + i <= aml_pkglen_limit(i))
			n = aml_pkglen_encode(pl, (uint32_t)(inner + i));
	if (n == 0 || (size_t)n + ins_len > reserve) {
		aml_fail(a, -ENOSPC);   /* beyond what a PkgLength can express */
		return;
	}
	memcpy(a->buf + mark, pl, (size_t)n);
	if (ins_len)
		memcpy(a->buf + mark + n, ins, ins_len);
	memmove(a->buf + mark + n + ins_len, a->buf + body, body_len);
	a->len = mark + n + ins_len + body_len;
}

void aml_end(struct aml *a, size_t mark)
{
	aml_close(a, mark, AML_PKGLEN_MAX, NULL, 0);
}

size_t aml_scope(struct aml *a, const char *name)
{
	size_t mark;

	aml_byte(a, AML_SCOPE_OP);
	mark = aml_open(a, AML_PKGLEN_MAX);
	aml_namestring(a, name);
	return mark;
}

size_t aml_device(struct aml *a, const char *name)
{
	size_t mark;

	aml_byte(a, AML_EXT_OP);
	aml_byte(a, AML_DEVICE_OP);
	mark = aml_open(a, AML_PKGLEN_MAX);
	aml_namestring(a, name);
	return mark;
}

size_t aml_method(struct aml *a, const char *name, unsigned int nargs, bool serialized)
{
	size_t mark;

	if (nargs > 7)
		aml_fail(a, -EINVAL);
	aml_byte(a, AML_METHOD_OP);
	mark = aml_open(a, AML_PKGLEN_MAX);
	aml_namestring(a, name);
	/* MethodFlags: ArgCount in bits 2:0, SerializeFlag in bit 3, SyncLevel 0. */
	aml_byte(a, (uint8_t)((nargs & 7) | (serialized ? 1u << 3 : 0)));
	return mark;
}

size_t aml_package(struct aml *a, uint8_t nelems)
{
	size_t mark;

	aml_byte(a, AML_PACKAGE_OP);
	mark = aml_open(a, AML_PKGLEN_MAX);
	aml_byte(a, nelems);
	return mark;
}

size_t aml_resource_template(struct aml *a)
{
	aml_byte(a, AML_BUFFER_OP);
	return aml_open(a, AML_BUF_RESERVE);
}

void aml_resource_template_end(struct aml *a, size_t mark)
{
	uint8_t size[AML_INT_MAX];
	size_t body = mark + AML_BUF_RESERVE;
	unsigned int n;

	if (a->err)
		return;
	if (NEVER(mark > a->len || a->len - mark < AML_BUF_RESERVE)) {
		aml_fail(a, -EINVAL);
		return;
	}
	/* EndTag: its checksum byte makes the whole template sum to zero. */
	aml_byte(a, RES_END_TAG);
	aml_byte(a, acpi_checksum(a->buf + body, a->len - body));
	if (a->err)
		return;
	if (a->len - body > 0xffffffff) {
		aml_fail(a, -ENOSPC);
		return;
	}
	n = aml_int_encode(size, a->len - body);
	aml_close(a, mark, AML_BUF_RESERVE, size, n);
}

void aml_res_io(struct aml *a, uint16_t min, uint16_t max, uint8_t align, uint8_t len)
{
	aml_byte(a, RES_IO);
	aml_byte(a, RES_IO_DECODE16);
	aml_le(a, min, 2);
	aml_le(a, max, 2);
	aml_byte(a, align);
	aml_byte(a, len);
}

void aml_res_irq_noflags(struct aml *a, unsigned int irq)
{
	if (irq > 15) {
		aml_fail(a, -EINVAL);
		return;
	}
	aml_byte(a, RES_IRQ_NOFLAGS);
	aml_le(a, 1u << irq, 2);
}

/*
 * Word/DWord/QWord Address Space descriptor: tag, 16-bit length of what
 * follows, resource type, general flags, type-specific flags, then
 * granularity, min, max, translation offset and length, each `width` bytes.
 */
static void aml_res_addr(struct aml *a, uint8_t tag, unsigned int width, uint8_t type,
			 uint8_t tflags, uint64_t min, uint64_t max)
{
	if (max < min) {
		aml_fail(a, -EINVAL);
		return;
	}
	aml_byte(a, tag);
	aml_le(a, 3 + 5 * width, 2);
	aml_byte(a, type);
	aml_byte(a, RES_GF_WINDOW);
	aml_byte(a, tflags);
	aml_le(a, 0, width);                /* granularity: no alignment */
	aml_le(a, min, width);
	aml_le(a, max, width);
	aml_le(a, 0, width);                /* translation offset */
	aml_le(a, max - min + 1, width);    /* wraps to 0 only for the full 2^64 */
}

void aml_res_word_bus(struct aml *a, uint16_t min, uint16_t max)
{
	aml_res_addr(a, RES_WORD_ADDR, 2, RES_TYPE_BUS, 0, min, max);
}

void aml_res_word_io(struct aml *a, uint16_t min, uint16_t max)
{
	aml_res_addr(a, RES_WORD_ADDR, 2, RES_TYPE_IO, RES_IO_ENTIRE, min, max);
}

void aml_res_dword_mem(struct aml *a, uint32_t min, uint32_t max, bool cacheable)
{
	aml_res_addr(a, RES_DWORD_ADDR, 4, RES_TYPE_MEM,
		     RES_MEM_RW | (cacheable ? RES_MEM_CACHEABLE : 0), min, max);
}

void aml_res_qword_mem(struct aml *a, uint64_t min, uint64_t max, bool cacheable)
{
	aml_res_addr(a, RES_QWORD_ADDR, 8, RES_TYPE_MEM,
		     RES_MEM_RW | (cacheable ? RES_MEM_CACHEABLE : 0), min, max);
}

/* ---------------------------------------------------------------------------
 * Tables.
 */

/* The table area being filled: buf[0..size) seen by the guest at gpa. */
struct acpi_area {
	uint8_t *buf;
	uint64_t gpa;
	size_t size;
	size_t used;
};

/* Offset of the next free byte aligned (in guest terms) to align, or -1. */
static size_t acpi_next(const struct acpi_area *ar, size_t align)
{
	uint64_t at = ar->gpa + ar->used;
	size_t pad = (size_t)((0 - at) & (align - 1));

	return pad > ar->size - ar->used ? (size_t)-1 : ar->used + pad;
}

/*
 * Claim len bytes aligned to align; NULL if they do not fit.  They and the
 * padding before them are zeroed, so the result never depends on what the
 * buffer held.
 */
static void *acpi_alloc(struct acpi_area *ar, size_t len, size_t align)
{
	size_t off = acpi_next(ar, align);

	if (off == (size_t)-1 || len > ar->size - off)
		return NULL;
	memset(ar->buf + ar->used, 0, off + len - ar->used);
	ar->used = off + len;
	return ar->buf + off;
}

static uint64_t acpi_gpa(const struct acpi_area *ar, const void *p)
{
	return ar->gpa + (uint64_t)((const uint8_t *)p - ar->buf);
}

static void acpi_header_init(struct acpi_header *h, const char *sig, uint32_t len,
			     uint8_t rev)
{
	memcpy(h->sig, sig, 4);
	h->length = len;
	h->revision = rev;
	h->checksum = 0;
	memcpy(h->oem_id, ACPI_OEM_ID, 6);
	memcpy(h->oem_table_id, ACPI_OEM_PREFIX, 4);
	memcpy(h->oem_table_id + 4, sig, 4);
	h->oem_revision = ACPI_OEM_REVISION;
	memcpy(h->creator_id, ACPI_CREATOR_ID, 4);
	h->creator_revision = ACPI_CREATOR_REV;
}

/* Call last, once the table's contents are final. */
static void acpi_header_sum(struct acpi_header *h)
{
	h->checksum = 0;
	h->checksum = acpi_checksum(h, h->length);
}

static struct acpi_gas acpi_gas_io(uint16_t port, uint8_t bytes, uint8_t access)
{
	struct acpi_gas g = {
		.space_id = ACPI_GAS_IO,
		.bit_width = (uint8_t)(8 * bytes),
		.bit_offset = 0,
		.access_size = access,
		.address = port,
	};

	return g;
}

static int acpi_dsdt(const struct acpi_config *cfg, struct acpi_area *ar, uint64_t *gpa)
{
	uint8_t hdr[sizeof(struct acpi_header)] = { 0 };
	size_t off = acpi_next(ar, 16), sb, dev, res, pkg;
	struct acpi_header *h;
	struct aml a;

	if (off == (size_t)-1)
		return -ENOSPC;
	memset(ar->buf + ar->used, 0, off - ar->used);
	aml_init(&a, ar->buf + off, ar->size - off);
	aml_bytes(&a, hdr, sizeof(hdr));

	sb = aml_scope(&a, "\\_SB");

	/*
	 * The host bridge: bus 0 of segment 0, config mechanism #1 at 0xcf8.
	 * No _ADR: a device has _HID or _ADR, not both (ACPI 6.3 6.1; iasl
	 * warns), and Linux identifies a root bridge by _SEG/_BBN/_CRS.
	 */
	dev = aml_device(&a, "PCI0");
	aml_name(&a, "_HID");
	aml_eisaid_obj(&a, "PNP0A03");
	aml_name(&a, "_UID");
	aml_integer(&a, 0);
	aml_name(&a, "_SEG");
	aml_integer(&a, 0);
	aml_name(&a, "_BBN");
	aml_integer(&a, 0);
	aml_name(&a, "_CRS");
	res = aml_resource_template(&a);
	aml_res_word_bus(&a, 0x00, 0xff);
	aml_res_io(&a, PORT_PCI_ADDR, PORT_PCI_ADDR, 1, 8);   /* consumed, not a window */
	aml_res_word_io(&a, 0x0000, PORT_PCI_ADDR - 1);
	aml_res_word_io(&a, PORT_PCI_ADDR + 8, 0xffff);
	if (cfg->pci_mmio32_size)
		aml_res_dword_mem(&a, (uint32_t)cfg->pci_mmio32_base,
				  (uint32_t)(cfg->pci_mmio32_base + cfg->pci_mmio32_size - 1),
				  false);
	if (cfg->pci_mmio64_size)
		aml_res_qword_mem(&a, cfg->pci_mmio64_base,
				  cfg->pci_mmio64_base + cfg->pci_mmio64_size - 1, true);
	aml_resource_template_end(&a, res);
	/* _PRT goes here once devices have INTx pins (a Package of Packages). */
	aml_end(&a, dev);

	dev = aml_device(&a, "COM1");
	aml_name(&a, "_HID");
	aml_eisaid_obj(&a, "PNP0501");
	aml_name(&a, "_UID");
	aml_integer(&a, 1);
	aml_name(&a, "_CRS");
	res = aml_resource_template(&a);
	aml_res_io(&a, PORT_COM1, PORT_COM1, 0, 8);
	aml_res_irq_noflags(&a, IRQ_COM1);
	aml_resource_template_end(&a, res);
	aml_end(&a, dev);

	aml_end(&a, sb);

	/* \_S5_: { SLP_TYPa, SLP_TYPb, reserved, reserved } for PM1a/b_CNT. */
	aml_name(&a, "_S5");
	pkg = aml_package(&a, 4);
	aml_integer(&a, cfg->s5_slp_typ);
	aml_integer(&a, cfg->s5_slp_typ);
	aml_integer(&a, 0);
	aml_integer(&a, 0);
	aml_end(&a, pkg);

	if (a.err)
		return a.err;
	if (a.len > UINT32_MAX)
		return -ENOSPC;
	h = (struct acpi_header *)(ar->buf + off);
	/* Revision 2: AML integers are 64 bits wide. */
	acpi_header_init(h, "DSDT", (uint32_t)a.len, 2);
	acpi_header_sum(h);
	ar->used = off + a.len;
	*gpa = acpi_gpa(ar, h);
	return 0;
}

static int acpi_madt(const struct acpi_config *cfg, struct acpi_area *ar, uint64_t *gpa)
{
	size_t len = sizeof(struct acpi_madt) + cfg->ncpus * sizeof(struct madt_lapic) +
		sizeof(struct madt_ioapic) + 2 * sizeof(struct madt_iso) +
		sizeof(struct madt_lapic_nmi);
	struct acpi_madt *m = acpi_alloc(ar, len, 16);
	struct madt_lapic *lapic;
	struct madt_ioapic *io;
	struct madt_iso *iso;
	struct madt_lapic_nmi *nmi;

	if (!m)
		return -ENOSPC;
	acpi_header_init(&m->h, "APIC", (uint32_t)len, MADT_REVISION);
	m->lapic_addr = (uint32_t)cfg->lapic_addr;
	m->flags = MADT_F_PCAT_COMPAT;   /* dual 8259s: Linux masks them */

	lapic = (struct madt_lapic *)(m + 1);
	for (unsigned int i = 0; i < cfg->ncpus; i++, lapic++) {
		lapic->type = MADT_LAPIC;
		lapic->length = sizeof(*lapic);
		lapic->uid = (uint8_t)i;
		lapic->apic_id = (uint8_t)i;
		lapic->flags = MADT_LAPIC_ENABLED;
	}

	io = (struct madt_ioapic *)lapic;
	io->type = MADT_IOAPIC;
	io->length = sizeof(*io);
	io->id = cfg->ioapic_id;
	io->addr = (uint32_t)cfg->ioapic_addr;
	io->gsi_base = 0;

	/* The PIT's IRQ0 is wired to pin 2, as on every PC; edge, active-high. */
	iso = (struct madt_iso *)(io + 1);
	iso->type = MADT_ISO;
	iso->length = sizeof(*iso);
	iso->bus = 0;
	iso->source = 0;
	iso->gsi = 2;
	iso->flags = MPS_INTI_CONFORMS;
	/* The SCI: without this, the spec's default is level, active-low. */
	iso++;
	iso->type = MADT_ISO;
	iso->length = sizeof(*iso);
	iso->bus = 0;
	iso->source = cfg->sci_irq;
	iso->gsi = cfg->sci_irq;
	iso->flags = MPS_INTI_HIGH | MPS_INTI_LEVEL;

	nmi = (struct madt_lapic_nmi *)(iso + 1);
	nmi->type = MADT_LAPIC_NMI;
	nmi->length = sizeof(*nmi);
	nmi->uid = 0xff;
	nmi->flags = MPS_INTI_CONFORMS;
	nmi->lint = 1;

	acpi_header_sum(&m->h);
	*gpa = acpi_gpa(ar, m);
	return 0;
}

static void acpi_fadt(const struct acpi_config *cfg, struct acpi_fadt *f,
		      uint64_t facs, uint64_t dsdt)
{
	acpi_header_init(&f->h, "FACP", sizeof(*f), FADT_REVISION);
	f->minor_version = FADT_MINOR_VERSION;
	if (facs < LAYOUT_4G)
		f->firmware_ctrl = (uint32_t)facs;
	else
		f->x_firmware_ctrl = facs;
	if (dsdt < LAYOUT_4G)
		f->dsdt = (uint32_t)dsdt;
	f->x_dsdt = dsdt;

	f->sci_int = cfg->sci_irq;
	f->smi_cmd = 0;                  /* always in ACPI mode */

	f->pm1a_evt_blk = cfg->pm1a_evt_port;
	f->pm1_evt_len = 4;
	f->x_pm1a_evt_blk = acpi_gas_io(cfg->pm1a_evt_port, 4, 2);
	f->pm1a_cnt_blk = cfg->pm1a_cnt_port;
	f->pm1_cnt_len = 2;
	f->x_pm1a_cnt_blk = acpi_gas_io(cfg->pm1a_cnt_port, 2, 2);
	if (cfg->pm_tmr_port) {
		f->pm_tmr_blk = cfg->pm_tmr_port;
		f->pm_tmr_len = 4;
		f->x_pm_tmr_blk = acpi_gas_io(cfg->pm_tmr_port, 4, 3);
	}
	/* No GPE blocks, PM2 or PM1b; no C2/C3, no cache flush by OSPM. */
	f->p_lvl2_lat = FADT_NO_C2_LATENCY;
	f->p_lvl3_lat = FADT_NO_C3_LATENCY;
	f->century = cfg->rtc_century;

	f->iapc_boot_arch = FADT_BOOT_LEGACY_DEVICES | FADT_BOOT_NO_VGA;
	if (cfg->i8042)
		f->iapc_boot_arch |= FADT_BOOT_8042;

	f->flags = FADT_F_WBINVD | FADT_F_PROC_C1 | FADT_F_SLP_BUTTON;
	if (cfg->ncpus > 8)
		f->flags |= FADT_F_APIC_PHYSICAL;
	if (cfg->reset_port) {
		f->flags |= FADT_F_RESET_REG_SUP;
		f->reset_reg = acpi_gas_io(cfg->reset_port, 1, 1);
		f->reset_value = cfg->reset_value;
	}
	acpi_header_sum(&f->h);
}

static bool acpi_port_block_ok(uint16_t port, unsigned int len)
{
	return port != 0 && port + len <= 0x10000;
}

static int acpi_check(const struct acpi_config *cfg)
{
	if (cfg->ncpus < 1 || cfg->ncpus > 255)
		return -EINVAL;    /* xAPIC IDs; 0xff is the broadcast ID */
	if (!cfg->ioapic_addr || cfg->ioapic_addr >= LAYOUT_4G)
		return -EINVAL;
	if (!cfg->lapic_addr || cfg->lapic_addr >= LAYOUT_4G)
		return -EINVAL;
	if (!acpi_port_block_ok(cfg->pm1a_evt_port, 4) ||
	    !acpi_port_block_ok(cfg->pm1a_cnt_port, 2))
		return -EINVAL;
	if (cfg->pm_tmr_port && !acpi_port_block_ok(cfg->pm_tmr_port, 4))
		return -EINVAL;
	/* An ISA IRQ, not the PIT's (IRQ0 -> GSI2 is overridden) nor COM1's (edge). */
	if (cfg->sci_irq == 0 || cfg->sci_irq == 2 || cfg->sci_irq == IRQ_COM1 ||
	    cfg->sci_irq > 15)
		return -EINVAL;
	if (cfg->s5_slp_typ > 7)
		return -EINVAL;    /* SLP_TYP is 3 bits */
	if (cfg->pci_mmio32_size &&
	    (cfg->pci_mmio32_base >= LAYOUT_4G ||
	     cfg->pci_mmio32_size > LAYOUT_4G - cfg->pci_mmio32_base))
		return -EINVAL;
	if (cfg->pci_mmio64_size &&
	    cfg->pci_mmio64_size - 1 > UINT64_MAX - cfg->pci_mmio64_base)
		return -EINVAL;
	return 0;
}

long acpi_build(const struct acpi_config *cfg, void *buf, uint64_t gpa, size_t size,
		uint64_t *rsdp_gpa)
{
	struct acpi_area ar = { .buf = buf, .gpa = gpa, .size = size, .used = 0 };
	uint64_t dsdt, madt, facs, tables[2];
	struct acpi_header *rsdt = NULL, *xsdt;
	struct acpi_rsdp *rsdp;
	struct acpi_fadt *fadt;
	struct acpi_facs *fc;
	unsigned int ntables = ARRAY_SIZE(tables);
	bool low;
	int ret;

	if (!cfg || !buf || gpa % 16 || (size && gpa + (size - 1) < gpa))
		return -EINVAL;
	ret = acpi_check(cfg);
	if (ret)
		return ret;
	/* The RSDT holds 32-bit pointers: provide it only if they all fit. */
	low = gpa < LAYOUT_4G && size <= LAYOUT_4G - gpa;

	rsdp = acpi_alloc(&ar, sizeof(*rsdp), 16);
	if (!rsdp)
		return -ENOSPC;
	if (low) {
		rsdt = acpi_alloc(&ar, sizeof(*rsdt) + 4 * ntables, 16);
		if (!rsdt)
			return -ENOSPC;
	}
	xsdt = acpi_alloc(&ar, sizeof(*xsdt) + 8 * ntables, 16);
	fadt = acpi_alloc(&ar, sizeof(*fadt), 16);
	fc = acpi_alloc(&ar, sizeof(*fc), 64);
	if (!xsdt || !fadt || !fc)
		return -ENOSPC;
	/* The DSDT must come right before the MADT: see the top of the file. */
	ret = acpi_dsdt(cfg, &ar, &dsdt);
	if (ret)
		return ret;
	ret = acpi_madt(cfg, &ar, &madt);
	if (ret)
		return ret;

	memcpy(fc->sig, "FACS", 4);
	fc->length = sizeof(*fc);
	fc->version = 2;
	facs = acpi_gpa(&ar, fc);

	acpi_fadt(cfg, fadt, facs, dsdt);
	tables[0] = acpi_gpa(&ar, fadt);
	tables[1] = madt;

	acpi_header_init(xsdt, "XSDT", sizeof(*xsdt) + 8 * ntables, 1);
	for (unsigned int i = 0; i < ntables; i++)
		memcpy((uint8_t *)(xsdt + 1) + 8 * i, &tables[i], 8);
	acpi_header_sum(xsdt);

	if (rsdt) {
		acpi_header_init(rsdt, "RSDT", sizeof(*rsdt) + 4 * ntables, 1);
		for (unsigned int i = 0; i < ntables; i++) {
			uint32_t t = (uint32_t)tables[i];

			memcpy((uint8_t *)(rsdt + 1) + 4 * i, &t, 4);
		}
		acpi_header_sum(rsdt);
	}

	memcpy(rsdp->sig, "RSD PTR ", 8);
	memcpy(rsdp->oem_id, ACPI_OEM_ID, 6);
	rsdp->revision = 2;
	rsdp->rsdt_addr = rsdt ? (uint32_t)acpi_gpa(&ar, rsdt) : 0;
	rsdp->length = sizeof(*rsdp);
	rsdp->xsdt_addr = acpi_gpa(&ar, xsdt);
	rsdp->checksum = acpi_checksum(rsdp, 20);
	rsdp->ext_checksum = acpi_checksum(rsdp, sizeof(*rsdp));

	if (rsdp_gpa)
		*rsdp_gpa = gpa;
	return (long)ar.used;
}

void acpi_platform_config(struct acpi_config *ac, unsigned int ncpus, uint64_t mem_size)
{
	uint64_t low, high;

	mem_split(mem_size, &low, &high);
	*ac = (struct acpi_config){
		.ncpus = ncpus,
		.ioapic_addr = LAYOUT_IOAPIC,
		.ioapic_id = 0,              /* what KVM's IOAPIC ID register holds */
		.lapic_addr = LAYOUT_LAPIC,
		.pm1a_evt_port = PORT_ACPI_PM1A_EVT,
		.pm1a_cnt_port = PORT_ACPI_PM1A_CNT,
		.pm_tmr_port = PORT_ACPI_PM_TMR,
		.sci_irq = IRQ_ACPI_SCI,
		.s5_slp_typ = ACPI_S5_SLP_TYP,
		.reset_port = PORT_RESET,
		.reset_value = 0x06,
		.rtc_century = 0x32,         /* rtc.c keeps the century there */
		.pci_mmio32_base = LAYOUT_PCI_MMIO32,
		.pci_mmio32_size = LAYOUT_PCI_MMIO32_END - LAYOUT_PCI_MMIO32,
		.pci_mmio64_base = ALIGN_UP(LAYOUT_4G + high, GiB),
		.pci_mmio64_size = LAYOUT_PCI_MMIO64_SIZE,
	};
}
