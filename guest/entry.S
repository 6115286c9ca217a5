/*
 * entry.S - everything the test guest runs in ring 0, and the tables it
 * needs: the PVH ELF note, the 32-bit PVH entry, the AP real-mode
 * trampoline, the 32→64-bit switch, the ring-3 request entry (ud2),
 * the interrupt stubs, and the GDT, IDT, TSSs (with I/O permission bitmaps)
 * and identity page tables, all assembled as constant data.
 *
 * Ring-0 code is emulated instruction by instruction under PVM (~0.1 M
 * instructions/s), so this file does as little as it can: a CPU executes
 * about 40 instructions between the PVH entry and its iretq into ring 3,
 * where everything else (parsing, ACPI, device set-up, the workloads) runs
 * natively.  Nothing here loops over table entries: the IDT, the GDT's TSS
 * descriptors and the page tables for the first 4 GiB are built by the
 * assembler, which is why the stubs and the TSSs sit at fixed addresses
 * (layout.h; checked by the linker script).
 */
#include "layout.h"

#define MSR_EFER	0xc0000080
#define EFER_LME	(1 << 8)
#define CR0_PE		(1 << 0)
#define CR0_PG		(1 << 31)
#define CR4_PAE		(1 << 5)

/* Ring-3 RFLAGS: IF, IOPL=3 (PVM forces IOPL 0 and IF 1), reserved bit 1. */
#define USER_RFLAGS	0x3202

#define LAPIC_EOI	(LAPIC_BASE + 0xb0)
#define LAPIC_TMCCT	(LAPIC_BASE + 0x390)

/* ---------------------------------------------------------------------- */
/* The PVH note: XEN_ELFNOTE_PHYS32_ENTRY (18), an 8-byte entry address as
 * QEMU's ELF64 reader expects; its own 4-aligned PT_NOTE (guest.ld.S). */
	.section .note.Xen, "a", @note
	.balign 4
	.long	2f - 1f
	.long	4f - 3f
	.long	18
1:	.asciz	"Xen"
2:	.balign 4
3:	.quad	pvh_entry
4:	.balign 4

/* ---------------------------------------------------------------------- */
/* 32-bit entries.  BSP: PVH ABI (flat 32-bit segments, paging off, %ebx =
 * hvm_start_info).  AP: from the trampoline, with CS = SEL_KCODE32 and the
 * real-mode data segments still loaded.  No stack is used before 64-bit. */
	.section .text.boot, "ax"
	.code32
	.globl	pvh_entry
pvh_entry:
	mov	%ebx, boot_info_paddr
	rdtsc				/* "t=" counts from here */
	mov	%eax, boot_tsc
	mov	%edx, boot_tsc + 4
	lgdt	gdt_ptr
	xor	%esi, %esi		/* %esi = 0: BSP */
	jmp	1f

	.globl	ap_entry32
ap_entry32:
	mov	$1, %esi		/* %esi = 1: AP */
1:	mov	$SEL_KDATA, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss
	mov	$pml4, %eax
	mov	%eax, %cr3
	mov	%cr4, %eax
	or	$CR4_PAE, %eax
	mov	%eax, %cr4
	mov	$MSR_EFER, %ecx
	rdmsr
	or	$EFER_LME, %eax
	wrmsr
	mov	%cr0, %eax
	or	$(CR0_PG | CR0_PE), %eax
	mov	%eax, %cr0
	ljmp	$SEL_KCODE, $entry64

/* ---------------------------------------------------------------------- */
	.code64
entry64:
	xor	%eax, %eax		/* slot 0 for the BSP */
	test	%esi, %esi
	jz	1f
	mov	$1, %eax		/* APs take slots 1, 2, ... in arrival order */
	lock xadd %eax, ap_next_slot
	cmp	$GUEST_MAX_CPUS, %eax
	jae	halt_forever
1:	mov	%eax, %edi		/* %rdi: slot, user_start()'s argument */
	lidt	idt_ptr
	mov	%eax, %ecx
	shl	$4, %ecx
	add	$SEL_TSS0, %ecx
	ltr	%cx
	lea	1(%rax), %rsp		/* ring-0 stack: top of this slot's kstack */
	imul	$KSTACK_SIZE, %rsp, %rsp
	add	$kstacks, %rsp
	/* Only the BSP touches the PICs: mask both 8259s, so nothing arrives
	 * on the legacy vectors once ring 3 runs with IF=1. */
	test	%esi, %esi
	jnz	2f
	mov	$0xff, %al
	out	%al, $0x21
	out	%al, $0xa1
2:	/* iretq to user_start(slot) on this slot's ring-3 stack; the -8 makes
	 * it look like a call for the ABI's stack alignment. */
	lea	1(%rdi), %rax
	imul	$USTACK_SIZE, %rax, %rax
	add	$(ustacks - 8), %rax
	push	$(SEL_UDATA | 3)
	push	%rax
	push	$USER_RFLAGS
	push	$(SEL_UCODE | 3)
	push	$user_start
	iretq

	.globl	halt_forever
halt_forever:
	cli
1:	hlt
	jmp	1b

/* ---------------------------------------------------------------------- */
/* Requests from ring 3: "ud2" with %eax = SYS_* and %r11 = SYS_MAGIC.  Not
 * syscall: under PVM a guest's syscall lands at LSTAR still in ring 3 (a
 * "sti" there raised #GP with CS = 0x33).  Not int $0x80: PVM turns it into
 * #UD anyway.  The #UD arrives through the IDT on this CPU's RSP0 stack.
 * Stack: RIP, CS, RFLAGS, RSP, SS (no error code). */
ud_entry:
	testb	$3, 8(%rsp)		/* from ring 3? */
	jz	1f
	cmp	$SYS_MAGIC, %r11
	jne	1f
	push	%rdx
	mov	8(%rsp), %rdx		/* the user's RIP */
	cmpw	$0x0b0f, (%rdx)		/* ud2 */
	jne	2f
	cmp	$SYS_IDLE, %eax
	jne	halt_forever
	/* Sleep only while the one-shot LAPIC timer is still counting: it
	 * may have fired while we were in ring 3 (where PVM keeps IF set),
	 * and then nothing would wake us.  IF=0 here (interrupt gate), so a
	 * timer that expires after this check stays pending until sti;hlt. */
	mov	$LAPIC_TMCCT, %edx
	mov	(%rdx), %edx
	test	%edx, %edx
	jz	3f
	sti
	hlt
	cli
3:	addq	$2, 8(%rsp)		/* past the ud2 */
	pop	%rdx
	iretq
2:	pop	%rdx
1:	push	$0			/* a real #UD */
	push	$6
	jmp	trap_common

/* ---------------------------------------------------------------------- */
/* Interrupt stubs, one per vector, GUEST_STUB_SIZE bytes apart from
 * GUEST_STUBS, so the IDT below can be constant data.  Exceptions (0-31)
 * build a trap frame and report; other vectors are acknowledged at the
 * LAPIC and ignored (the timer just ends a sleep); 0xff is the LAPIC's
 * spurious vector, which takes no EOI. */
	.section .text.stubs, "ax"
	.globl	idt_stubs_start
idt_stubs_start:
	.set	vec, 0
	.rept	256
	.org	vec * GUEST_STUB_SIZE, 0xcc
	.if	vec == 6
	jmp	ud_entry
	.elseif	vec < 32
	.if	(vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	push	$vec
	.else
	push	$0
	push	$vec
	.endif
	jmp	trap_common
	.elseif	vec == VEC_SPURIOUS
	iretq
	.else
	jmp	irq_eoi
	.endif
	.set	vec, vec + 1
	.endr
	.org	256 * GUEST_STUB_SIZE, 0xcc

	.section .text.boot, "ax"
irq_eoi:
	push	%rax
	mov	$LAPIC_EOI, %eax
	movl	$0, (%rax)
	pop	%rax
	iretq

/* Stack on entry: vector, error code, then the CPU's frame (RIP, CS,
 * RFLAGS, RSP, SS).  Push the general registers in the order of struct
 * trap_frame (trap.c), which never returns. */
trap_common:
	push	%rax
	push	%rbx
	push	%rcx
	push	%rdx
	push	%rsi
	push	%rdi
	push	%rbp
	push	%r8
	push	%r9
	push	%r10
	push	%r11
	push	%r12
	push	%r13
	push	%r14
	push	%r15
	mov	%rsp, %rdi
	cld
	call	trap_report
	jmp	halt_forever

/* ---------------------------------------------------------------------- */
/* The AP trampoline: copied by the BSP (from ring 3) to a free page below
 * 1 MiB, entered by SIPI in real mode with CS = page >> 4, IP = 0.  Real
 * mode is emulated under PVM: six instructions, then 32-bit code above. */
	.section .rodata.tramp, "a"
	.code16
	.globl	tramp_start, tramp_end
tramp_start:
	cli
	lgdtl	%cs:(tramp_gdtr - tramp_start)
	mov	%cr0, %eax
	or	$CR0_PE, %al
	mov	%eax, %cr0
	ljmpl	$SEL_KCODE32, $ap_entry32
	.balign	2
tramp_gdtr:
	.word	gdt_end - gdt - 1
	.long	gdt
tramp_end:
	.code64

/* ---------------------------------------------------------------------- */
/* One TSS per CPU at GUEST_TSS + slot * TSS_STRIDE: RSP0 is the top of
 * that slot's ring-0 stack (used for exceptions and interrupts taken in
 * ring 3), and the I/O permission bitmap opens the ports ring 3 drives
 * (a clear bit allows the port).  PVM forces IOPL to 0 in ring 3, so this
 * bitmap is what makes ring-3 port I/O work. */
	.section .data.tss, "aw"
	.globl	tss_array
tss_array:
	.set	slot, 0
	.rept	GUEST_MAX_CPUS
	.org	slot * TSS_STRIDE
	.long	0
	.quad	kstacks + (slot + 1) * KSTACK_SIZE	/* RSP0 */
	.quad	0, 0, 0				/* RSP1, RSP2, reserved */
	.quad	0, 0, 0, 0, 0, 0, 0		/* IST1-7 */
	.quad	0
	.word	0
	.word	TSS_IOPB_OFF
	/* bitmap byte n covers ports 8n..8n+7 */
	.fill	0x08, 1, 0xff
	.byte	0xf0				/* 0x40-0x43: PIT */
	.fill	0x7f - 0x09, 1, 0xff
	.byte	0x00				/* 0x3f8-0x3ff: COM1 */
	.fill	0xc0 - 0x80, 1, 0xff
	.byte	0x00, 0xf0			/* 0x600-0x60b: ACPI PM */
	.fill	0x19f - 0xc2, 1, 0xff
	.byte	0x00				/* 0xcf8-0xcff: PCI config */
	.byte	0xff				/* terminator, at TSS_LIMIT */
	.set	slot, slot + 1
	.endr
	.org	GUEST_MAX_CPUS * TSS_STRIDE

/* ---------------------------------------------------------------------- */
	.data
	.balign	16
	.globl	gdt, gdt_end
gdt:
	.quad	0
	.quad	0x00cf9a000000ffff	/* 0x08 ring-0 code, 32-bit */
	.quad	0x00af9a000000ffff	/* 0x10 ring-0 code, 64-bit */
	.quad	0x00cf92000000ffff	/* 0x18 ring-0 data */
	.quad	0x00cffa000000ffff	/* 0x20 ring-3 code, 32-bit (sysret layout) */
	.quad	0x00cff2000000ffff	/* 0x28 ring-3 data */
	.quad	0x00affa000000ffff	/* 0x30 ring-3 code, 64-bit */
	.set	slot, 0
	.rept	GUEST_MAX_CPUS		/* 0x38 + 16 * slot: 64-bit TSS */
	.set	tss, GUEST_TSS + slot * TSS_STRIDE
	.word	TSS_LIMIT & 0xffff
	.word	tss & 0xffff
	.byte	(tss >> 16) & 0xff
	.byte	0x89			/* present, DPL 0, available 64-bit TSS */
	.byte	(TSS_LIMIT >> 16) & 0xf
	.byte	(tss >> 24) & 0xff
	.long	0
	.long	0
	.set	slot, slot + 1
	.endr
gdt_end:

	.balign	8
	.word	0
gdt_ptr:
	.word	gdt_end - gdt - 1
	.quad	gdt

	.balign	8
	.word	0
idt_ptr:
	.word	256 * 16 - 1
	.quad	idt

	.balign	16
idt:
	.set	vec, 0
	.rept	256
	.set	off, GUEST_STUBS + vec * GUEST_STUB_SIZE
	.word	off & 0xffff
	.word	SEL_KCODE
	.byte	0			/* IST */
	.byte	0x8e			/* present, DPL 0, 64-bit interrupt gate */
	.word	(off >> 16) & 0xffff
	.long	0			/* offset 63:32 (the stubs are below 4 GiB) */
	.long	0
	.set	vec, vec + 1
	.endr

	.balign	4
	.globl	boot_info_paddr, boot_tsc, ap_next_slot
boot_info_paddr:
	.long	0
ap_next_slot:
	.long	1
	.balign	8
boot_tsc:
	.quad	0

/* ---------------------------------------------------------------------- */
/* Identity map of the first 4 GiB with 2 MiB pages, user-accessible (the
 * workloads run in ring 3 and own all of memory); 3-4 GiB (LAPIC, IOAPIC,
 * other MMIO) uncached.  RAM above 4 GiB is mapped at boot from ring 3
 * (platform.c), which writes pdpt[] directly. */
	.section .data.pt, "aw"
	.balign	4096
	.globl	pml4, pdpt
pml4:
	.quad	pdpt + 0x7			/* present, writable, user */
	.fill	511, 8, 0
pdpt:
	.quad	pd + 0x0000 + 0x7
	.quad	pd + 0x1000 + 0x7
	.quad	pd + 0x2000 + 0x7
	.quad	pd + 0x3000 + 0x7
	.fill	508, 8, 0
pd:
	.set	addr, 0
	.rept	2048
	.if	addr >= 0xc0000000
	.quad	addr + 0x9f			/* P, RW, US, PWT, PCD, PS */
	.else
	.quad	addr + 0x87			/* P, RW, US, PS */
	.endif
	.set	addr, addr + 0x200000
	.endr

/* ---------------------------------------------------------------------- */
	.bss
	.balign	4096
	.globl	kstacks, ustacks
kstacks:
	.skip	KSTACK_SIZE * GUEST_MAX_CPUS
ustacks:
	.skip	USTACK_SIZE * GUEST_MAX_CPUS

	.section .note.GNU-stack, "", @progbits
