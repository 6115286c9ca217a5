/*
 * acpi.h - ACPI tables for the guest (RSDP, RSDT, XSDT, FADT, FACS, DSDT,
 * MADT) and a small AML builder for the DSDT.
 *
 * The tables describe a legacy (not hardware-reduced) PC: fixed-feature PM1
 * registers and PM timer in I/O space, an 8259 pair behind an I/O APIC,
 * one host bridge and COM1.  See src/arch/x86/acpi.c for the choices made
 * (FADT flags, IAPC_BOOT_ARCH) and why.
 */
#ifndef GODWIT_ACPI_H
#define GODWIT_ACPI_H

#include "godwit/common.h"

struct acpi_config {
	unsigned int ncpus;        /* 1..255; one LAPIC entry each, APIC IDs 0..ncpus-1 */
	uint64_t ioapic_addr;      /* below 4 GiB */
	uint8_t  ioapic_id;
	uint64_t lapic_addr;       /* below 4 GiB */
	uint16_t pm1a_evt_port;    /* PM1a_EVT_BLK (4 bytes), required */
	uint16_t pm1a_cnt_port;    /* PM1a_CNT_BLK (2 bytes), required */
	uint16_t pm_tmr_port;      /* PM_TMR_BLK (4 bytes, 24-bit), 0 if none */
	uint8_t  sci_irq;          /* ISA IRQ 1..15 but not 2 or 4; level, active-high */
	uint8_t  s5_slp_typ;       /* \_S5_ SLP_TYP, 0..7 */
	uint16_t reset_port;       /* FADT RESET_REG (system I/O), 0 if none */
	uint8_t  reset_value;
	uint8_t  rtc_century;      /* FADT CENTURY: CMOS index of the century byte, 0 if none */
	bool     i8042;            /* IAPC_BOOT_ARCH_8042: let the guest probe 0x60/0x64 */
	uint64_t pci_mmio32_base, pci_mmio32_size;  /* size 0: no window; must end <= 4 GiB */
	uint64_t pci_mmio64_base, pci_mmio64_size;  /* size 0: no window */
};

/*
 * acpi_platform_config - godwit's platform (layout.h: IOAPIC, LAPIC, ACPI PM
 * ports, reset port, RTC century, PCI windows) for ncpus vCPUs and mem_size
 * bytes of RAM (the 64-bit PCI window starts at the first GiB above RAM).
 */
void acpi_platform_config(struct acpi_config *ac, unsigned int ncpus, uint64_t mem_size);

/*
 * acpi_build - lay out all tables in buf, which the guest sees at gpa.
 *   cfg:  platform description (see struct acpi_config for the limits)
 *   buf:  host pointer to the table area, size bytes.  Every byte up to
 *         the returned length is written (padding is zeroed); nothing at or
 *         past buf + size is ever written, even on failure.
 *   gpa:  guest-physical address of buf[0], 16-byte aligned (the RSDP is at
 *         buf[0], where the legacy 0xe0000-0xfffff scan finds it)
 *   rsdp_gpa: out, the RSDP's guest-physical address (for the boot
 *         protocol); may be NULL
 * Returns the number of bytes used, -ENOSPC if they do not fit, or -EINVAL
 * for a bad cfg or arguments.
 */
long acpi_build(const struct acpi_config *cfg, void *buf, uint64_t gpa, size_t size,
		uint64_t *rsdp_gpa) __must_check;

/* The byte that makes the sum of len bytes at p zero. */
uint8_t acpi_checksum(const void *p, size_t len);

/*
 * AML builder.  Writes AML byte code into a caller-supplied buffer.  Errors
 * are sticky: the first failure (-ENOSPC when the buffer is full, -EINVAL
 * for a malformed name or EISA ID) is kept in err, later calls do nothing,
 * and the caller checks err once at the end.
 *
 * Constructs with a PkgLength (Scope, Device, Method, Package, Buffer) are
 * opened by a call that returns a mark and closed by aml_end(mark) (or
 * aml_resource_template_end()).  The opener reserves the longest encoding
 * and aml_end() shrinks it to the shortest, so while a construct is open
 * the builder may need up to 3 bytes (9 for a resource template) more than
 * the final size.
 *
 * Name strings: "\\_SB.PCI0", "^PCI0", "_S5", "COM1"; segments shorter than
 * four characters are padded with '_'.
 */
struct aml {
	uint8_t *buf;
	size_t cap;    /* bytes available at buf */
	size_t len;    /* bytes written so far */
	int err;       /* 0, or the first error (negative errno) */
};

void aml_init(struct aml *a, void *buf, size_t cap);
void aml_byte(struct aml *a, uint8_t b);
void aml_bytes(struct aml *a, const void *p, size_t n);
void aml_namestring(struct aml *a, const char *path);
/* Integer constant in its shortest encoding: Zero, One, Byte/Word/DWord/QWord. */
void aml_integer(struct aml *a, uint64_t v);
/* A String object (no embedded NULs). */
void aml_string(struct aml *a, const char *s);
/* EISAID("PNP0A03") as a DWord constant; -EINVAL if id is malformed. */
void aml_eisaid_obj(struct aml *a, const char *id);
/* Name(name, ...): emits NameOp and the name; the caller emits the value. */
void aml_name(struct aml *a, const char *name);
/* Return(...): emits ReturnOp; the caller emits the value. */
void aml_return(struct aml *a);

size_t aml_scope(struct aml *a, const char *name);
size_t aml_device(struct aml *a, const char *name);
size_t aml_method(struct aml *a, const char *name, unsigned int nargs, bool serialized);
size_t aml_package(struct aml *a, uint8_t nelems);
/* Close the construct opened at mark (the value its opener returned). */
void aml_end(struct aml *a, size_t mark);

/*
 * Resource templates: Buffer objects holding resource descriptors.  Open
 * with aml_resource_template(), add descriptors, close with
 * aml_resource_template_end(), which appends the EndTag and its checksum.
 * Address-space descriptors are produced windows (ResourceProducer,
 * PosDecode, MinFixed, MaxFixed, no translation) with len = max - min + 1.
 */
size_t aml_resource_template(struct aml *a);
void aml_resource_template_end(struct aml *a, size_t mark);
void aml_res_io(struct aml *a, uint16_t min, uint16_t max, uint8_t align, uint8_t len);
void aml_res_irq_noflags(struct aml *a, unsigned int irq);
void aml_res_word_bus(struct aml *a, uint16_t min, uint16_t max);
void aml_res_word_io(struct aml *a, uint16_t min, uint16_t max);
void aml_res_dword_mem(struct aml *a, uint32_t min, uint32_t max, bool cacheable);
void aml_res_qword_mem(struct aml *a, uint64_t min, uint64_t max, bool cacheable);

/*
 * aml_pkglen_encode - encode a PkgLength (which counts its own bytes).
 *   out: 4 bytes
 *   len: the package length, at most 2^28 - 1
 * Returns the number of bytes written to out (1..4), or 0 if len is too
 * large or too short to count its own encoding.
 */
int aml_pkglen_encode(uint8_t out[4], uint32_t len);

/* The EISA ID "PNP0A03" as the 32-bit value AML uses, or 0 if malformed. */
uint32_t aml_eisaid(const char *id);

#endif
