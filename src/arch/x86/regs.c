/*
 * regs.c - x86 vCPU register state: the boot vCPU's initial registers for
 * each boot protocol, and the register dump printed when a guest dies.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

#include "godwit/boot.h"
#include "godwit/layout.h"
#include "godwit/log.h"
#include "godwit/vm.h"

#define X86_CR0_PE  (1u << 0)
#define X86_CR0_ET  (1u << 4)
#define X86_CR0_PG  (1u << 31)
#define X86_CR4_PAE (1u << 5)
#define EFER_LME    (1u << 8)
#define EFER_LMA    (1u << 10)

static void seg_flat(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code64)
{
	*s = (struct kvm_segment){
		.base = 0,
		.limit = 0xffffffff,
		.selector = sel,
		.type = type,
		.present = 1,
		.dpl = 0,
		.db = code64 ? 0 : 1,
		.s = 1,
		.l = code64 ? 1 : 0,
		.g = 1,
	};
}

int vcpu_set_boot_regs(struct vcpu *v, const struct boot_entry *e)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;

	if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	memset(&regs, 0, sizeof(regs));
	regs.rflags = 0x2;
	regs.rip = e->rip;

	if (e->fmt == KERNEL_BZIMAGE) {
		/* 64-bit boot protocol: long mode, identity map, __BOOT_CS/__BOOT_DS. */
		seg_flat(&sregs.cs, BOOT_GDT_CS, 0xb, true);
		seg_flat(&sregs.ds, BOOT_GDT_DS, 0x3, false);
		sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
		sregs.gdt.base = LAYOUT_GDT;
		sregs.gdt.limit = 4 * 8 - 1;
		sregs.cr3 = LAYOUT_PML4;
		sregs.cr4 = X86_CR4_PAE;
		sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
		sregs.efer = EFER_LME | EFER_LMA;
		regs.rsi = e->arg;
		regs.rsp = LAYOUT_BOOT_STACK;
	} else {
		/* PVH: 32-bit protected mode, flat segments, paging off, EBX = start info. */
		seg_flat(&sregs.cs, 0x8, 0xb, false);
		seg_flat(&sregs.ds, 0x10, 0x3, false);
		sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
		sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
		sregs.cr4 = 0;
		sregs.efer = 0;
		regs.rbx = e->arg;
	}
	/* A usable TR is required by VMX entry checks even if the guest never uses it. */
	sregs.tr.type = 0xb;
	sregs.tr.present = 1;
	sregs.tr.limit = 0xffff;
	sregs.tr.s = 0;
	sregs.ldt.type = 0x2;
	sregs.ldt.present = 1;
	sregs.ldt.unusable = 0;

	if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
		return -errno;
	if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
		return -errno;
	return 0;
}

static void dump_seg(char *buf, size_t len, const char *name, const struct kvm_segment *s)
{
	snprintf(buf, len, "  %-3s sel=%04x base=%016llx limit=%08x type=%x p=%u dpl=%u db=%u l=%u g=%u",
		 name, s->selector, (unsigned long long)s->base, s->limit, s->type,
		 s->present, s->dpl, s->db, s->l, s->g);
}

void vcpu_dump_regs(struct vcpu *v)
{
	struct kvm_regs r;
	struct kvm_sregs s;
	char line[160];

	if (ioctl(v->fd, KVM_GET_REGS, &r) < 0 || ioctl(v->fd, KVM_GET_SREGS, &s) < 0) {
		log_warn("vcpu%u: cannot read registers", v->index);
		return;
	}
	log_warnx("vcpu%u: rip=%016llx rsp=%016llx rflags=%016llx", v->index,
		  (unsigned long long)r.rip, (unsigned long long)r.rsp,
		  (unsigned long long)r.rflags);
	log_warnx("  rax=%016llx rbx=%016llx rcx=%016llx rdx=%016llx",
		  (unsigned long long)r.rax, (unsigned long long)r.rbx,
		  (unsigned long long)r.rcx, (unsigned long long)r.rdx);
	log_warnx("  rsi=%016llx rdi=%016llx rbp=%016llx r8 =%016llx",
		  (unsigned long long)r.rsi, (unsigned long long)r.rdi,
		  (unsigned long long)r.rbp, (unsigned long long)r.r8);
	log_warnx("  r9 =%016llx r10=%016llx r11=%016llx r12=%016llx",
		  (unsigned long long)r.r9, (unsigned long long)r.r10,
		  (unsigned long long)r.r11, (unsigned long long)r.r12);
	log_warnx("  r13=%016llx r14=%016llx r15=%016llx",
		  (unsigned long long)r.r13, (unsigned long long)r.r14,
		  (unsigned long long)r.r15);
	log_warnx("  cr0=%016llx cr2=%016llx cr3=%016llx cr4=%016llx efer=%016llx",
		  (unsigned long long)s.cr0, (unsigned long long)s.cr2,
		  (unsigned long long)s.cr3, (unsigned long long)s.cr4,
		  (unsigned long long)s.efer);
	dump_seg(line, sizeof(line), "cs", &s.cs);
	log_warnx("%s", line);
	dump_seg(line, sizeof(line), "ss", &s.ss);
	log_warnx("%s", line);
	dump_seg(line, sizeof(line), "tr", &s.tr);
	log_warnx("%s", line);
	log_warnx("  gdt=%016llx/%04x idt=%016llx/%04x",
		  (unsigned long long)s.gdt.base, s.gdt.limit,
		  (unsigned long long)s.idt.base, s.idt.limit);
}
