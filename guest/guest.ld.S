/*
 * guest.ld.S - linker script of the test guest (run through cpp for
 * layout.h).  Three program headers: text (code, the PVH note, read-only
 * data), data (TSSs, GDT, IDT, page tables, bss) and the PVH note's own
 * PT_NOTE, 4-aligned, because QEMU's ELF64 note reader aligns by the note
 * segment's alignment.
 */
#include "layout.h"

OUTPUT_FORMAT("elf64-x86-64")
OUTPUT_ARCH(i386:x86-64)
ENTRY(pvh_entry)

PHDRS
{
	text PT_LOAD FLAGS(5);
	data PT_LOAD FLAGS(6);
	note PT_NOTE FLAGS(4);
}

SECTIONS
{
	. = GUEST_LOAD;
	.text : {
		KEEP(*(.text.stubs))
		*(.text.boot)
		*(.text .text.*)
	} :text
	.note.Xen : { KEEP(*(.note.Xen)) } :text :note
	.rodata : {
		*(.rodata .rodata.*)
	} :text
	_etext = .;

	. = GUEST_DATA;
	.data : {
		KEEP(*(.data.tss))
		*(.data.pt)
		*(.data .data.*)
	} :data
	.bss : {
		*(.bss .bss.*)
		*(COMMON)
	} :data
	. = ALIGN(4096);
	_end = .;

	/DISCARD/ : {
		*(.note.gnu.property)
		*(.note.GNU-stack)
		*(.eh_frame)
		*(.comment)
	}
}

/* entry.S assembles the IDT and the TSS descriptors from these addresses. */
ASSERT(idt_stubs_start == GUEST_STUBS, "interrupt stubs are not at GUEST_STUBS")
ASSERT(tss_array == GUEST_TSS, "TSSs are not at GUEST_TSS")
ASSERT(_etext <= GUEST_DATA, "text runs into GUEST_DATA")
