/*
 * trap.c - the exception report.  Runs in ring 0 (emulated, slow: a report
 * takes tens of milliseconds under PVM, which does not matter on a path
 * that ends in a halt).  It prints one "godwit-guest: EXCEPTION" line that
 * tests match, then the registers, and stops this CPU with interrupts off:
 * a guest cannot power off with a failure code, so the line is the verdict.
 */
#include "lib.h"

/* Built by trap_common in entry.S: pushed registers, then the CPU's frame. */
struct trap_frame {
	u64 r15, r14, r13, r12, r11, r10, r9, r8;
	u64 rbp, rdi, rsi, rdx, rcx, rbx, rax;
	u64 vec, err;
	u64 rip, cs, rflags, rsp, ss;
};

void trap_report(struct trap_frame *f) __noreturn;

static const char *const trap_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM",
	"#DF", "?", "#TS", "#NP", "#SS", "#GP", "#PF", "?",
	"#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "?", "?",
	"?", "?", "?", "?", "#HV", "#VC", "#SX", "?",
};

/*
 * Not the output lock: the CPU holding it may be the one that faulted.
 * This one keeps two CPUs' reports apart.
 */
static volatile int trap_lock;

static void trap_print(const char *fmt, ...) __printf(1, 2);
static void trap_print(const char *fmt, ...)
{
	char buf[200];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vformat(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	serial_write(buf, (size_t)MIN(n, (int)sizeof(buf) - 1), NULL, NULL);
}

void trap_report(struct trap_frame *f)
{
	u64 cr2;
	u16 tr;

	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	__asm__ volatile("str %0" : "=r"(tr));
	while (__atomic_exchange_n(&trap_lock, 1, __ATOMIC_ACQUIRE))
		cpu_relax();
	trap_print("godwit-guest: EXCEPTION vec=%lu (%s) err=0x%lx rip=0x%lx cs=0x%lx "
		   "rflags=0x%lx rsp=0x%lx ss=0x%lx cr2=0x%lx cpu=%d\n",
		   f->vec, trap_names[f->vec & 31], f->err, f->rip, f->cs, f->rflags,
		   f->rsp, f->ss, cr2, (int)(tr - SEL_TSS0) / 16);
	trap_print("  rax=%016lx rbx=%016lx rcx=%016lx rdx=%016lx\n"
		   "  rsi=%016lx rdi=%016lx rbp=%016lx r8 =%016lx\n",
		   f->rax, f->rbx, f->rcx, f->rdx, f->rsi, f->rdi, f->rbp, f->r8);
	trap_print("  r9 =%016lx r10=%016lx r11=%016lx r12=%016lx\n"
		   "  r13=%016lx r14=%016lx r15=%016lx\n",
		   f->r9, f->r10, f->r11, f->r12, f->r13, f->r14, f->r15);
	__atomic_store_n(&trap_lock, 0, __ATOMIC_RELEASE);
	for (;;)
		__asm__ volatile("cli; hlt");
}
