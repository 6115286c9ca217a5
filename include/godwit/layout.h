/*
 * layout.h - the x86 guest-physical layout godwit gives every VM, and the
 * fixed I/O ports of its platform devices.  Changing any of these is a
 * guest-visible change (and, later, a migration compatibility break).
 */
#ifndef GODWIT_LAYOUT_H
#define GODWIT_LAYOUT_H

/* Low memory (below 1 MiB). */
#define LAYOUT_GDT            0x00000500ULL /* boot GDT for direct 64-bit entry */
#define LAYOUT_PVH_INFO       0x00006000ULL /* struct hvm_start_info + memmap */
#define LAYOUT_ZERO_PAGE      0x00007000ULL /* Linux struct boot_params */
#define LAYOUT_BOOT_STACK     0x00008ff0ULL
#define LAYOUT_PML4           0x00009000ULL /* identity map: PML4, PDPT, 4 PDs */
#define LAYOUT_CMDLINE        0x00020000ULL
#define LAYOUT_CMDLINE_MAX    0x00010000ULL
#define LAYOUT_EBDA           0x0009fc00ULL /* reserved from here to 1 MiB */
#define LAYOUT_ACPI           0x000e0000ULL /* RSDP and tables, 128 KiB */
#define LAYOUT_ACPI_SIZE      0x00020000ULL
#define LAYOUT_HIGH_RAM       0x00100000ULL /* 1 MiB */
#define LAYOUT_KERNEL         0x01000000ULL /* bzImage protected-mode code */

/* The 32-bit MMIO hole: RAM stops at 3 GiB and resumes at 4 GiB. */
#define LAYOUT_MMIO_HOLE      0xc0000000ULL
#define LAYOUT_PCI_MMIO32     0xc0000000ULL
#define LAYOUT_PCI_MMIO32_END 0xfc000000ULL /* exclusive */
#define LAYOUT_IOAPIC         0xfec00000ULL
#define LAYOUT_LAPIC          0xfee00000ULL
#define LAYOUT_4G             0x100000000ULL
/* 64-bit PCI window: above the end of RAM, aligned to 1 GiB, this size. */
#define LAYOUT_PCI_MMIO64_SIZE (64ULL << 30)

/* Legacy I/O ports. */
#define PORT_PIT_BASE      0x40
#define PORT_I8042_DATA    0x60
#define PORT_I8042_CMD     0x64
#define PORT_RTC_INDEX     0x70
#define PORT_RTC_DATA      0x71
#define PORT_COM1          0x3f8
#define PORT_PCI_ADDR      0xcf8
#define PORT_PCI_DATA      0xcfc
#define PORT_RESET         0xcf9  /* ACPI FADT reset register; write 0x06 */
#define PORT_ACPI_PM1A_EVT 0x600  /* 4 bytes: PM1a_STS, PM1a_EN */
#define PORT_ACPI_PM1A_CNT 0x604  /* 2 bytes */
#define PORT_ACPI_PM_TMR   0x608  /* 4 bytes, 3.579545 MHz, 24-bit */

#define IRQ_COM1       4
#define IRQ_ACPI_SCI   9
#define ACPI_S5_SLP_TYP 5         /* \_S5_ value written to PM1a_CNT.SLP_TYP */
#define ACPI_PM1_SLP_EN (1u << 13)
#define ACPI_PM1_SCI_EN (1u << 0)

#endif
