/*
 * layout.h - the test guest's fixed addresses, segment selectors and
 * limits, shared by the assembly (entry.S), the linker script (guest.ld.S)
 * and the C code.
 *
 * Two things live at fixed addresses so that the IDT and GDT can be
 * assembled as constant data: an IDT gate and a TSS descriptor split their
 * target address into bit fields, which neither the assembler nor the
 * linker can do with a relocatable symbol.  Building them at boot would cost
 * ring-0 instructions, which are emulated (slow) under PVM.
 */
#ifndef GUEST_LAYOUT_H
#define GUEST_LAYOUT_H

#define GUEST_LOAD        0x100000   /* image load address (1 MiB) */
#define GUEST_STUBS       0x100000   /* 256 interrupt stubs, 16 bytes each */
#define GUEST_STUB_SIZE   16
#define GUEST_DATA        0x120000   /* data segment: the TSS array first */
#define GUEST_TSS         GUEST_DATA

#define GUEST_MAX_CPUS    16

/*
 * Each TSS: 104-byte 64-bit TSS, then the I/O permission bitmap for ports
 * 0..IOPB_PORTS-1, then the 0xff terminator byte the CPU reads past the
 * last port checked.  Ports at or above IOPB_PORTS are beyond the TSS limit
 * and therefore closed.
 */
#define TSS_IOPB_OFF      0x68
#define TSS_IOPB_PORTS    0xd00
#define TSS_LIMIT         (TSS_IOPB_OFF + TSS_IOPB_PORTS / 8)   /* inclusive */
#define TSS_STRIDE        0x400

/* GDT selectors (0x20 and 0x28 in the order sysret would want, unused). */
#define SEL_KCODE32       0x08
#define SEL_KCODE         0x10
#define SEL_KDATA         0x18
#define SEL_UCODE32       0x20
#define SEL_UDATA         0x28
#define SEL_UCODE         0x30
#define SEL_TSS0          0x38       /* then one 16-byte descriptor per CPU */

/* Interrupt vectors. */
#define VEC_TIMER         0x40
#define VEC_SPURIOUS      0xff

/* Stacks (per CPU). */
#define KSTACK_SIZE       0x2000     /* ring 0: exceptions and interrupts from ring 3 */
#define USTACK_SIZE       0x4000     /* ring 3: the workloads */

/* Requests from ring 3: ud2 with the number in %eax, SYS_MAGIC in %r11. */
#define SYS_MAGIC         0x60d0171d
#define SYS_IDLE          0          /* wait for an interrupt (sti; hlt) */
#define SYS_HALT          1          /* cli; hlt forever */

#define LAPIC_BASE        0xfee00000
#define IOAPIC_BASE       0xfec00000

#endif
