/*
 * state_test.c - vCPU and VM state save/load against /dev/kvm, in the
 * style of the kernel's KVM selftest state_test: the test guest runs its
 * memory workload; at each sync point the test pauses the VM, saves every
 * vCPU (cpu_state_save), the in-kernel devices and kvmclock
 * (vm_state_save), the platform devices (dev_ops->save) and guest RAM,
 * destroys the VM, builds a new one, loads everything, reads every
 * register back and compares it with what was saved, and starts the new
 * VM.  The guest must go on: new memtest reports with errors=0, its TSC
 * clock (memtest t=) never going back, and with two vCPUs the AP online.
 *
 * Sync points alternate the clock modes of cpu_load_opts and add a
 * deliberate downtime, so the test checks what each promises: after
 * CPU_CLOCK_ADVANCE the stall the guest measures with its TSC matches the
 * host's downtime; after CPU_CLOCK_FROZEN it is far shorter than the
 * downtime; kvmclock follows the same rule.
 *
 * Compared exactly after a load: regs, sregs, the XSAVE region, XCRs,
 * debug registers, every saved MSR, the LAPIC page, vCPU events, MP state,
 * PIC, IOAPIC and PIT.  Exceptions, which legitimately move: IA32_TSC
 * (checked against the clock mode, within TIME_SLACK_MS), the LAPIC's
 * current-count register TMCCT (it counts down), kvmclock (clock mode).
 *
 * Negative tests, on a fresh VM before the real load: every truncation of
 * a vCPU and of the VM buffer, bad versions, another vCPU's state, an XSAVE
 * region of another size, too many MSRs, a duplicated field and a foreign
 * IOAPIC base all fail cleanly, and the VM then still loads and runs.
 *
 * Usage: state-test GUEST_ELF [NCPUS...]  (default: 1 2).  Prints
 * "PASS $TIER/name" or "FAIL $TIER/name: why" lines; exits 1 on failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "godwit/acpi.h"
#include "godwit/boot.h"
#include "godwit/cpu_state.h"
#include "godwit/dev.h"
#include "godwit/devices.h"
#include "godwit/layout.h"
#include "godwit/log.h"
#include "godwit/vm.h"

#define GUEST_CMDLINE   "workload=mem mem=32 rate=20 report=200"
#define GUEST_MEM       (128 * MiB)
#define NR_SYNC         5
#define DOWNTIME_MS     400      /* deliberate downtime at some sync points */
#define TIME_SLACK_MS   50       /* TSC/kvmclock read-back tolerance */
/*
 * The guest's stall vs the host's downtime: the stall starts after vm_pause()
 * is called and ends when a vCPU thread runs again, which on a loaded host
 * can be late (the stall is the longest over vCPUs); so little slack below,
 * more above.  Counting the downtime twice would be far outside both.
 */
#define STALL_BELOW_MS  60
#define STALL_ABOVE_MS  200
#define WAIT_S          20

static const char *tier = "kvm";
static int failures;

static void pass(const char *name)
{
	printf("PASS %s/%s\n", tier, name);
	fflush(stdout);
}

static void fail(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(const char *name, const char *fmt, ...)
{
	va_list ap;

	printf("FAIL %s/%s: ", tier, name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	failures++;
}

static double mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static uint64_t real_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ---- the guest's console: a pipe read by the test ---------------------------------- */

struct con {
	int rfd, wfd;
	char *buf;
	size_t len, cap;
};

static void con_poll(struct con *c)
{
	for (;;) {
		ssize_t n;

		if (c->cap - c->len < 4097) {
			c->cap = c->cap ? c->cap * 2 : 65536;
			c->buf = realloc(c->buf, c->cap);
			if (!c->buf)
				abort();
		}
		n = read(c->rfd, c->buf + c->len, c->cap - c->len - 1);
		if (n <= 0)
			break;
		c->len += (size_t)n;
	}
	if (c->buf)
		c->buf[c->len] = 0;
}

static const char *con_tail(struct con *c)
{
	return c->len > 600 ? c->buf + c->len - 600 : (c->buf ? c->buf : "");
}

struct report {
	size_t start, end;
	double t, stall_ms;
	unsigned long errors;
};

/* Complete memtest lines that end after `from`; at most max. */
static int con_reports(struct con *c, size_t from, struct report *out, int max)
{
	int n = 0;

	for (char *p = c->buf; p && n < max && (p = strstr(p, "memtest: t=")); p++) {
		char *nl = strchr(p, '\n');
		struct report r;

		if (!nl)
			break;
		if (p != c->buf && p[-1] != '\n')
			continue;
		r.start = (size_t)(p - c->buf);
		r.end = (size_t)(nl - c->buf) + 1;
		if (r.end <= from)
			continue;
		if (sscanf(p, "memtest: t=%lf gen=%*u verified=%*u dirtied=%*u errors=%lu stall_ms=%lf",
			   &r.t, &r.errors, &r.stall_ms) != 3)
			continue;
		out[n++] = r;
	}
	return n;
}

/*
 * Every complete console line is one the guest prints: "godwit-guest: ..."
 * or a memtest report in its exact format.  A byte printed twice (an OUT
 * to the UART run again after a restore) garbles a line.  Returns the
 * first bad line's offset, or -1.
 */
static long con_first_garbled(struct con *c)
{
	for (char *p = c->buf, *nl; p && (nl = strchr(p, '\n')); p = nl + 1) {
		unsigned long a[12];
		int n = -1;

		*nl = 0;
		if (!strncmp(p, "memtest: t=", 11))
			sscanf(p, "memtest: t=%lu.%1lu gen=%lu verified=%lu dirtied=%lu errors=%lu stall_ms=%lu.%3lu max_stall_ms=%lu.%3lu%n",
			       &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6], &a[7], &a[8], &a[9], &n);
		else if (!strncmp(p, "godwit-guest: ", 14))
			n = (int)strlen(p);
		*nl = '\n';
		if (n != (int)(nl - p))
			return (long)(p - c->buf);
	}
	return -1;
}

/* Wait until `pattern` appears after offset from, or n reports start after it. */
static bool con_wait(struct con *c, struct vm *vm, size_t from, const char *pattern, int nreports)
{
	double end = mono_ms() + WAIT_S * 1000.0;

	while (mono_ms() < end) {
		con_poll(c);
		if (pattern && c->buf && c->len > from && strstr(c->buf + from, pattern))
			return true;
		if (nreports) {
			struct report r[16];
			int n = con_reports(c, from, r, 16), k = 0;

			for (int i = 0; i < n; i++)
				k += r[i].start >= from;
			if (k >= nreports)
				return true;
		}
		pthread_mutex_lock(&vm->lock);
		bool stopping = vm->state == VM_STATE_STOPPING;
		pthread_mutex_unlock(&vm->lock);
		if (stopping)
			return false;
		sleep_ms(10);
	}
	return false;
}

/* The TSC frequency the guest uses (its "cpus=" line), or 0. */
static double guest_khz(struct con *c)
{
	const char *p = c->buf ? strstr(c->buf, "godwit-guest: cpus=") : NULL;
	const char *k = p ? strstr(p, "tsc_khz=") : NULL;

	return k ? strtod(k + 8, NULL) : 0;
}

/* ---- building a VM ------------------------------------------------------------------- */

static int setup_acpi(struct vm *vm, uint64_t *rsdp)
{
	struct acpi_config ac;
	void *buf = vm_gpa_to_host(vm, LAYOUT_ACPI, LAYOUT_ACPI_SIZE);

	acpi_platform_config(&ac, vm->cfg.ncpus, vm->cfg.mem_size);
	if (!buf)
		return -EFAULT;
	memset(buf, 0, LAYOUT_ACPI_SIZE);
	return acpi_build(&ac, buf, LAYOUT_ACPI, LAYOUT_ACPI_SIZE, rsdp) < 0 ? -EINVAL : 0;
}

static void *xlate(void *opaque, uint64_t gpa, uint64_t len)
{
	return vm_gpa_to_host(opaque, gpa, len);
}

static int read_whole(const char *path, uint8_t **data, size_t *size)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size <= 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	*data = malloc((size_t)st.st_size);
	n = *data ? read(fd, *data, (size_t)st.st_size) : -1;
	close(fd);
	if (n != st.st_size)
		return -1;
	*size = (size_t)n;
	return 0;
}

/* vm_create + platform devices with the console on c. */
static int vm_build(struct vm *vm, const struct vm_config *cfg, struct con *c)
{
	int ret = vm_create(vm, cfg);

	if (ret)
		return ret;
	ret = platform_init(vm, c->wfd);
	if (ret)
		vm_destroy(vm);
	return ret;
}

static int vm_boot(struct vm *vm, const uint8_t *kernel, size_t kernel_size)
{
	struct boot_entry entry;
	uint64_t rsdp = 0;
	char err[256] = "";
	int ret = setup_acpi(vm, &rsdp);
	struct boot_config bc = {
		.kernel = kernel, .kernel_size = kernel_size,
		.cmdline = vm->cfg.cmdline, .mem_size = vm->cfg.mem_size,
		.rsdp_gpa = rsdp, .xlate = xlate, .opaque = vm,
	};

	if (ret)
		return ret;
	ret = boot_load(&bc, &entry, err, sizeof(err));
	if (ret) {
		fprintf(stderr, "boot_load: %s\n", err);
		return ret;
	}
	return vcpu_set_boot_regs(&vm->vcpus[0], &entry);
}

/* Stop the vCPU threads (the VM may be paused) and free everything. */
static void vm_teardown(struct vm *vm, bool started)
{
	if (started) {
		vm_request_exit(vm, EXIT_POWEROFF, "state test: teardown");
		vm_join(vm);
	}
	platform_destroy(vm);
	vm_destroy(vm);
}

/* ---- a snapshot ---------------------------------------------------------------------- */

#define MAX_DEVS 16
struct snapshot {
	unsigned int ncpus;
	struct state_out cpu[8];
	struct state_out vmk;
	struct {
		const char *name;
		uint32_t instance;
		uint16_t version;
		struct state_out st;
	} dev[MAX_DEVS];
	unsigned int nr_dev;
	uint8_t *ram[2];
	uint64_t ram_gpa[2], ram_size[2];
	unsigned int nr_mem;
};

static void snap_free(struct snapshot *s)
{
	for (unsigned int i = 0; i < s->ncpus; i++)
		state_out_free(&s->cpu[i]);
	state_out_free(&s->vmk);
	for (unsigned int i = 0; i < s->nr_dev; i++)
		state_out_free(&s->dev[i].st);
	for (unsigned int i = 0; i < s->nr_mem; i++)
		free(s->ram[i]);
	memset(s, 0, sizeof(*s));
}

static int snap_save(struct vm *vm, struct snapshot *s, char *why, size_t wlen)
{
	int ret;

	memset(s, 0, sizeof(*s));
	s->ncpus = vm->cfg.ncpus;
	for (unsigned int i = 0; i < s->ncpus; i++) {
		state_out_init(&s->cpu[i]);
		ret = cpu_state_save(&vm->vcpus[i], &s->cpu[i]);
		if (ret) {
			snprintf(why, wlen, "cpu_state_save vcpu%u: %s", i, strerror(-ret));
			return ret;
		}
	}
	state_out_init(&s->vmk);
	ret = vm_state_save(vm, &s->vmk);
	if (ret) {
		snprintf(why, wlen, "vm_state_save: %s", strerror(-ret));
		return ret;
	}
	for (struct dev *d = dev_first(vm); d; d = d->next) {
		if (s->nr_dev == MAX_DEVS || !d->ops->save) {
			snprintf(why, wlen, "device %s cannot be saved", d->ops->name);
			return -EINVAL;
		}
		s->dev[s->nr_dev].name = d->ops->name;
		s->dev[s->nr_dev].instance = d->instance;
		s->dev[s->nr_dev].version = d->ops->version;
		state_out_init(&s->dev[s->nr_dev].st);
		ret = d->ops->save(d, &s->dev[s->nr_dev].st);
		s->nr_dev++;
		if (ret) {
			snprintf(why, wlen, "device %s save: %s", d->ops->name, strerror(-ret));
			return ret;
		}
	}
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		s->ram[i] = malloc(vm->mem[i].size);
		if (!s->ram[i]) {
			snprintf(why, wlen, "out of memory for RAM");
			return -ENOMEM;
		}
		memcpy(s->ram[i], vm->mem[i].host, vm->mem[i].size);
		s->ram_gpa[i] = vm->mem[i].gpa;
		s->ram_size[i] = vm->mem[i].size;
		s->nr_mem++;
	}
	return 0;
}

/* RAM and devices into a new VM (before the VM and vCPU state). */
static int snap_load_ram_devs(struct vm *vm, const struct snapshot *s, char *why, size_t wlen)
{
	unsigned int nd = 0;

	if (vm->nr_mem != s->nr_mem) {
		snprintf(why, wlen, "RAM layout differs");
		return -EINVAL;
	}
	for (unsigned int i = 0; i < s->nr_mem; i++) {
		if (vm->mem[i].gpa != s->ram_gpa[i] || vm->mem[i].size != s->ram_size[i]) {
			snprintf(why, wlen, "RAM region %u differs", i);
			return -EINVAL;
		}
		memcpy(vm->mem[i].host, s->ram[i], s->ram_size[i]);
	}
	for (struct dev *d = dev_first(vm); d; d = d->next, nd++) {
		struct state_in in;
		unsigned int k;
		int ret;

		for (k = 0; k < s->nr_dev; k++)
			if (!strcmp(s->dev[k].name, d->ops->name) && s->dev[k].instance == d->instance)
				break;
		if (k == s->nr_dev) {
			snprintf(why, wlen, "device %s.%u was not saved", d->ops->name, d->instance);
			return -EINVAL;
		}
		state_in_init(&in, s->dev[k].st.buf, s->dev[k].st.len);
		ret = d->ops->load(d, &in, s->dev[k].version);
		if (ret) {
			snprintf(why, wlen, "device %s load: %s", d->ops->name, strerror(-ret));
			return ret;
		}
	}
	if (nd != s->nr_dev) {
		snprintf(why, wlen, "%u devices saved, %u in the new VM", s->nr_dev, nd);
		return -EINVAL;
	}
	return 0;
}

/* ---- comparing what KVM holds with what was saved ------------------------------------ */

struct cmp {
	char first[256];
	unsigned int diffs;
};

static void cmp_diff(struct cmp *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cmp_diff(struct cmp *c, const char *fmt, ...)
{
	va_list ap;

	if (!c->diffs++) {
		va_start(ap, fmt);
		vsnprintf(c->first, sizeof(c->first), fmt, ap);
		va_end(ap);
	}
}

#define CMP(c, what, a, b) do {                                                          \
	unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);  \
	if (a_ != b_)                                                                    \
		cmp_diff(c, "%s: saved %#llx, now %#llx", what, a_, b_);                \
} while (0)

static void cmp_seg(struct cmp *c, const char *n, const struct kvm_segment *a,
		    const struct kvm_segment *b)
{
	char w[32];

#define SEGF(f) do { snprintf(w, sizeof(w), "%s.%s", n, #f); CMP(c, w, a->f, b->f); } while (0)
	SEGF(base); SEGF(limit); SEGF(selector); SEGF(type); SEGF(present); SEGF(dpl);
	SEGF(db); SEGF(s); SEGF(l); SEGF(g); SEGF(avl); SEGF(unusable);
#undef SEGF
}

static void cmp_cpu(struct cmp *c, const struct cpu_state *a, const struct cpu_state *b)
{
	char w[64];

#define F(x) CMP(c, #x, a->x, b->x)
	F(regs.rax); F(regs.rbx); F(regs.rcx); F(regs.rdx); F(regs.rsi); F(regs.rdi);
	F(regs.rsp); F(regs.rbp); F(regs.r8); F(regs.r9); F(regs.r10); F(regs.r11);
	F(regs.r12); F(regs.r13); F(regs.r14); F(regs.r15); F(regs.rip); F(regs.rflags);
	cmp_seg(c, "cs", &a->sregs.cs, &b->sregs.cs);
	cmp_seg(c, "ds", &a->sregs.ds, &b->sregs.ds);
	cmp_seg(c, "es", &a->sregs.es, &b->sregs.es);
	cmp_seg(c, "fs", &a->sregs.fs, &b->sregs.fs);
	cmp_seg(c, "gs", &a->sregs.gs, &b->sregs.gs);
	cmp_seg(c, "ss", &a->sregs.ss, &b->sregs.ss);
	cmp_seg(c, "tr", &a->sregs.tr, &b->sregs.tr);
	cmp_seg(c, "ldt", &a->sregs.ldt, &b->sregs.ldt);
	F(sregs.gdt.base); F(sregs.gdt.limit); F(sregs.idt.base); F(sregs.idt.limit);
	F(sregs.cr0); F(sregs.cr2); F(sregs.cr3); F(sregs.cr4); F(sregs.cr8);
	F(sregs.efer); F(sregs.apic_base);
	F(has);
	if (a->has & b->has & CPU_HAS_PDPTRS)
		for (int i = 0; i < 4; i++) {
			snprintf(w, sizeof(w), "pdptr%d", i);
			CMP(c, w, a->sregs.pdptrs[i], b->sregs.pdptrs[i]);
		}
	F(xsave_len);
	if (a->xsave_len == b->xsave_len)
		for (uint32_t i = 0; i < a->xsave_len; i++)
			if (a->xsave[i] != b->xsave[i]) {
				snprintf(w, sizeof(w), "xsave byte %u", i);
				CMP(c, w, a->xsave[i], b->xsave[i]);
				break;
			}
	F(xcrs.nr_xcrs);
	for (uint32_t i = 0; i < a->xcrs.nr_xcrs && i < KVM_MAX_XCRS; i++) {
		snprintf(w, sizeof(w), "xcr%u", a->xcrs.xcrs[i].xcr);
		CMP(c, w, a->xcrs.xcrs[i].value, b->xcrs.xcrs[i].value);
	}
	F(debugregs.db[0]); F(debugregs.db[1]); F(debugregs.db[2]); F(debugregs.db[3]);
	F(debugregs.dr6); F(debugregs.dr7);
	F(nr_msrs);
	for (uint32_t i = 0; i < a->nr_msrs; i++) {
		uint64_t v;

		snprintf(w, sizeof(w), "MSR %#x", a->msrs[i].index);
		if (!cpu_state_msr(b, a->msrs[i].index, &v))
			cmp_diff(c, "%s: no longer readable", w);
		else
			CMP(c, w, a->msrs[i].data, v);
	}
	for (unsigned int off = 0; off < KVM_APIC_REG_SIZE; off += 4) {
		uint32_t x, y;

		if (off == 0x390)    /* TMCCT: the timer's current count moves */
			continue;
		memcpy(&x, a->lapic.regs + off, 4);
		memcpy(&y, b->lapic.regs + off, 4);
		snprintf(w, sizeof(w), "LAPIC reg %#x", off);
		CMP(c, w, x, y);
	}
	F(events.exception.injected); F(events.exception.nr);
	F(events.exception.has_error_code); F(events.exception.pending);
	F(events.exception.error_code); F(events.interrupt.injected); F(events.interrupt.nr);
	F(events.interrupt.soft); F(events.interrupt.shadow); F(events.nmi.injected);
	F(events.nmi.pending); F(events.nmi.masked); F(events.sipi_vector); F(events.flags);
	F(events.smi.smm); F(events.smi.pending); F(events.smi.smm_inside_nmi);
	F(events.smi.latched_init); F(events.triple_fault.pending);
	F(events.exception_has_payload); F(events.exception_payload);
	F(mp_state.mp_state);
	F(tsc_khz);
#undef F
}

static void cmp_pic(struct cmp *c, const char *n, const struct kvm_pic_state *a,
		    const struct kvm_pic_state *b)
{
	char w[48];

#define P(f) do { snprintf(w, sizeof(w), "%s.%s", n, #f); CMP(c, w, a->f, b->f); } while (0)
	P(last_irr); P(irr); P(imr); P(isr); P(priority_add); P(irq_base); P(read_reg_select);
	P(poll); P(special_mask); P(init_state); P(auto_eoi); P(rotate_on_auto_eoi);
	P(special_fully_nested_mode); P(init4); P(elcr); P(elcr_mask);
#undef P
}

static void cmp_vm(struct cmp *c, const struct vm_kstate *a, const struct vm_kstate *b)
{
	const struct kvm_ioapic_state *x = &a->ioapic.chip.ioapic, *y = &b->ioapic.chip.ioapic;
	char w[48];

	cmp_pic(c, "pic_master", &a->pic[0].chip.pic, &b->pic[0].chip.pic);
	cmp_pic(c, "pic_slave", &a->pic[1].chip.pic, &b->pic[1].chip.pic);
	CMP(c, "ioapic.base", x->base_address, y->base_address);
	CMP(c, "ioapic.ioregsel", x->ioregsel, y->ioregsel);
	CMP(c, "ioapic.id", x->id, y->id);
	CMP(c, "ioapic.irr", x->irr, y->irr);
	for (int i = 0; i < KVM_IOAPIC_NUM_PINS; i++) {
		snprintf(w, sizeof(w), "ioapic.redir%d", i);
		CMP(c, w, x->redirtbl[i].bits, y->redirtbl[i].bits);
	}
	CMP(c, "pit.flags", a->pit.flags, b->pit.flags);
	for (int i = 0; i < 3; i++) {
		const struct kvm_pit_channel_state *p = &a->pit.channels[i], *q = &b->pit.channels[i];

#define C(f) do { snprintf(w, sizeof(w), "pit%d.%s", i, #f); CMP(c, w, p->f, q->f); } while (0)
		C(count); C(latched_count); C(count_latched); C(status_latched); C(status);
		C(read_state); C(write_state); C(write_latch); C(rw_mode); C(mode); C(bcd); C(gate);
#undef C
	}
}

/* |got - want| within slack; all in ns or cycles. */
static bool near(int64_t got, int64_t want, int64_t slack)
{
	return got - want <= slack && want - got <= slack;
}

/* ---- negative tests --------------------------------------------------------------------- */

/* Silence the expected warnings (stderr) around a block. */
static int quiet_begin(void)
{
	int saved = dup(STDERR_FILENO), null = open("/dev/null", O_WRONLY | O_CLOEXEC);

	fflush(stderr);
	if (null >= 0) {
		dup2(null, STDERR_FILENO);
		close(null);
	}
	return saved;
}

static void quiet_end(int saved)
{
	fflush(stderr);
	if (saved >= 0) {
		dup2(saved, STDERR_FILENO);
		close(saved);
	}
}

/*
 * A copy of buf with the field `tag` changed: len_delta bytes added to (or,
 * negative, cut from) its value, or the field written twice.
 */
static void rewrite(const struct state_out *src, struct state_out *dst, uint16_t tag,
		    int len_delta, bool twice)
{
	struct state_in in;
	struct state_field f;

	state_out_init(dst);
	state_in_init(&in, src->buf, src->len);
	while (state_next(&in, &f) == 1) {
		if (f.tag != tag) {
			state_put_bytes(dst, f.tag, f.val, f.len);
			continue;
		}
		if (len_delta > 0) {
			uint8_t *big = calloc(1, f.len + (uint32_t)len_delta);

			memcpy(big, f.val, f.len);
			state_put_bytes(dst, f.tag, big, f.len + (uint32_t)len_delta);
			free(big);
		} else {
			state_put_bytes(dst, f.tag, f.val, f.len - (uint32_t)-len_delta);
		}
		if (twice)
			state_put_bytes(dst, f.tag, f.val, f.len);
	}
}

static int load_cpu_buf(struct vcpu *v, const struct state_out *o, uint16_t version)
{
	struct state_in in;

	state_in_init(&in, o->buf, o->len);
	return cpu_state_load(v, &in, version, NULL);
}

/*
 * On a fresh VM (nothing loaded yet): every bad buffer must fail, and the
 * vCPU's registers must be untouched.  Returns the number of problems, the
 * first described in why.
 */
static int negative_tests(struct vm *vm, const struct snapshot *s, char *why, size_t wlen)
{
	struct kvm_regs before, after;
	struct state_out bad;
	struct state_in in;
	int problems = 0, saved_err, ret;
	struct vcpu *v = &vm->vcpus[0];

#define PROBLEM(...) do { if (!problems++) snprintf(why, wlen, __VA_ARGS__); } while (0)
	if (ioctl(v->fd, KVM_GET_REGS, &before) < 0) {
		snprintf(why, wlen, "KVM_GET_REGS");
		return 1;
	}
	saved_err = quiet_begin();
	for (size_t cut = 0; cut < s->cpu[0].len; cut++) {
		state_in_init(&in, s->cpu[0].buf, cut);
		ret = cpu_state_load(v, &in, CPU_STATE_VERSION, NULL);
		if (ret != -EBADMSG && ret != -EINVAL)
			PROBLEM("vCPU buffer cut at %zu of %zu: load returned %d", cut, s->cpu[0].len,
				ret);
	}
	for (size_t cut = 0; cut < s->vmk.len; cut++) {
		state_in_init(&in, s->vmk.buf, cut);
		ret = vm_state_load(vm, &in, VM_STATE_VERSION, NULL);
		if (ret != -EBADMSG && ret != -EINVAL)
			PROBLEM("VM buffer cut at %zu of %zu: load returned %d", cut, s->vmk.len, ret);
	}
	if (load_cpu_buf(v, &s->cpu[0], 0) != -EINVAL ||
	    load_cpu_buf(v, &s->cpu[0], CPU_STATE_VERSION + 1) != -EINVAL)
		PROBLEM("a bad vCPU state version was not refused with -EINVAL");
	state_in_init(&in, s->vmk.buf, s->vmk.len);
	if (vm_state_load(vm, &in, VM_STATE_VERSION + 1, NULL) != -EINVAL)
		PROBLEM("a bad VM state version was not refused with -EINVAL");
	if (s->ncpus > 1 && load_cpu_buf(v, &s->cpu[1], CPU_STATE_VERSION) != -EINVAL)
		PROBLEM("vcpu1's state loaded into vcpu0");

	rewrite(&s->cpu[0], &bad, 0x0020, 64, false);            /* XSAVE 64 bytes longer */
	if ((ret = load_cpu_buf(v, &bad, CPU_STATE_VERSION)) != -EINVAL)
		PROBLEM("an XSAVE region of another size: load returned %d", ret);
	state_out_free(&bad);
	rewrite(&s->cpu[0], &bad, 0x0030, 12 * (CPU_STATE_MAX_MSRS + 1), false); /* MSRs */
	if ((ret = load_cpu_buf(v, &bad, CPU_STATE_VERSION)) != -EBADMSG)
		PROBLEM("%u MSRs: load returned %d", CPU_STATE_MAX_MSRS + 1, ret);
	state_out_free(&bad);
	rewrite(&s->cpu[0], &bad, 0x0030, 1, false);             /* MSR record cut */
	if ((ret = load_cpu_buf(v, &bad, CPU_STATE_VERSION)) != -EBADMSG)
		PROBLEM("an MSR list of 12n+1 bytes: load returned %d", ret);
	state_out_free(&bad);
	rewrite(&s->cpu[0], &bad, 0x0010, 0, true);              /* REGS twice */
	if ((ret = load_cpu_buf(v, &bad, CPU_STATE_VERSION)) != -EBADMSG)
		PROBLEM("REGS twice: load returned %d", ret);
	state_out_free(&bad);
	rewrite(&s->cpu[0], &bad, 0x0011, -1, false);            /* SREGS one byte short */
	if ((ret = load_cpu_buf(v, &bad, CPU_STATE_VERSION)) != -EBADMSG)
		PROBLEM("short SREGS: load returned %d", ret);
	state_out_free(&bad);
	/* The IOAPIC moved elsewhere: its first 8 bytes are the base address. */
	rewrite(&s->vmk, &bad, 0x0012, 0, false);
	{
		struct state_field f;

		state_in_init(&in, bad.buf, bad.len);
		while (state_next(&in, &f) == 1)
			if (f.tag == 0x0012)
				((uint8_t *)(uintptr_t)f.val)[2] ^= 0x10;
		state_in_init(&in, bad.buf, bad.len);
		if ((ret = vm_state_load(vm, &in, VM_STATE_VERSION, NULL)) != -EINVAL)
			PROBLEM("a foreign IOAPIC base: load returned %d", ret);
	}
	state_out_free(&bad);
	quiet_end(saved_err);

	if (ioctl(v->fd, KVM_GET_REGS, &after) < 0 || memcmp(&before, &after, sizeof(before)))
		PROBLEM("a refused load changed vcpu0's registers");
	return problems;
#undef PROBLEM
}

/*
 * Whether KVM lets the VMM set a guest's TSC: on a fresh vCPU, write
 * IA32_TSC 100 s ahead (far from anything kvm_synchronize_tsc would match)
 * and read it back.  PVM ignores the write: its guests read the host's TSC.
 */
static int tsc_settable = -1;

static bool probe_tsc_settable(struct vcpu *v)
{
	struct {
		struct kvm_msrs h;
		struct kvm_msr_entry e;
	} m = { .h.nmsrs = 1, .e.index = 0x10 };
	uint64_t before, set;

	if (ioctl(v->fd, KVM_GET_MSRS, &m) != 1)
		return false;
	before = m.e.data;
	set = before + 100ULL * v->vm->tsc_khz * 1000;
	m.e.data = set;
	if (ioctl(v->fd, KVM_SET_MSRS, &m) != 1 || ioctl(v->fd, KVM_GET_MSRS, &m) != 1)
		return false;
	return m.e.data >= set && m.e.data - set < (uint64_t)v->vm->tsc_khz * 1000;
}

/*
 * Mark vCPU state the test guest never touches, so the MSR and debug
 * register paths carry values the test can recognise: SYSENTER_ESP/EIP
 * (a 64-bit guest that never executes SYSENTER ignores them) and DR0-DR3
 * (harmless while DR7 leaves them disabled).
 */
static int mark_vcpu(struct vcpu *v, unsigned int k)
{
	uint64_t tag = 0x57a7e000ULL + k * 0x100 + v->index * 0x10;
	struct {
		struct kvm_msrs h;
		struct kvm_msr_entry e[2];
	} m = { .h.nmsrs = 2, .e = { { .index = 0x175, .data = tag }, { .index = 0x176, .data = tag + 1 } } };
	struct kvm_debugregs dr;

	if (ioctl(v->fd, KVM_SET_MSRS, &m) != 2 || ioctl(v->fd, KVM_GET_DEBUGREGS, &dr) < 0)
		return -1;
	for (int i = 0; i < 4; i++)
		dr.db[i] = tag + 2 + (uint64_t)i;
	dr.flags = 0;
	return ioctl(v->fd, KVM_SET_DEBUGREGS, &dr) < 0 ? -1 : 0;
}

/* An IN or OUT opcode (after any 0x66 prefix) at guest address rip (identity-mapped). */
static bool io_insn_at(struct vm *vm, uint64_t rip)
{
	const uint8_t *p = vm_gpa_to_host(vm, rip, 2);

	if (!p)
		return false;
	if (p[0] == 0x66)
		p++;
	return (*p >= 0xe4 && *p <= 0xe7) || (*p >= 0xec && *p <= 0xef);
}

/*
 * The pause protocol completes port I/O before a vCPU parks (vcpu.c: a
 * KVM_RUN with immediate_exit), so a paused vCPU never has an IN/OUT left
 * pending: its registers are what a save must capture.  The guest makes
 * two port accesses per byte it prints; pause it many times and check no
 * vCPU is found with exit_reason KVM_EXIT_IO and RIP still on an IN/OUT.
 * (Without the completion in vcpu.c this catches one within a few hundred
 * pauses.)  Returns 0, or 1 with why set.
 */
static int check_io_completion(struct vm *vm, char *why, size_t wlen)
{
	double end = mono_ms() + 3000;
	unsigned int tries = 0;

	while (mono_ms() < end && tries < 1500) {
		tries++;
		if (vm_pause(vm)) {
			snprintf(why, wlen, "vm_pause failed");
			return 1;
		}
		for (unsigned int i = 0; i < vm->cfg.ncpus; i++) {
			struct vcpu *v = &vm->vcpus[i];
			struct kvm_regs r;

			if (v->run->exit_reason != KVM_EXIT_IO)
				continue;
			if (ioctl(v->fd, KVM_GET_REGS, &r) < 0) {
				snprintf(why, wlen, "vcpu%u: KVM_GET_REGS", i);
				(void)!vm_resume(vm);
				return 1;
			}
			if (io_insn_at(vm, r.rip)) {
				snprintf(why, wlen, "vcpu%u parked with port %#x %s pending at RIP %#llx "
					 "(after %u pauses)", i, v->run->io.port,
					 v->run->io.direction ? "OUT" : "IN",
					 (unsigned long long)r.rip, tries);
				(void)!vm_resume(vm);
				return 1;
			}
		}
		if (vm_resume(vm)) {
			snprintf(why, wlen, "vm_resume failed");
			return 1;
		}
		sleep_ms(1);
	}
	fprintf(stderr, "state-test: %u pauses, no vCPU parked with I/O pending\n", tries);
	return 0;
}

/* ---- one run ----------------------------------------------------------------------------- */

struct sync_plan {
	enum cpu_clock_mode mode;
	unsigned int downtime_ms;     /* extra sleep while the VM does not exist */
	bool negative;                /* run the negative tests on the new VM first */
};

static const struct sync_plan plan[NR_SYNC] = {
	{ CPU_CLOCK_FROZEN, 0, false },           /* at "workload=": AP not started yet */
	{ CPU_CLOCK_ADVANCE, DOWNTIME_MS, true },
	{ CPU_CLOCK_FROZEN, DOWNTIME_MS, false },
	{ CPU_CLOCK_ADVANCE, DOWNTIME_MS, false },
	{ CPU_CLOCK_FROZEN, 0, false },
};

static void run_case(const char *guest, unsigned int ncpus)
{
	char name[32], why[512] = "", n_rt[64], n_guest[64], n_clock[64], n_neg[64], n_io[64];
	struct vm *vm = calloc(1, sizeof(*vm));
	struct vm_config cfg;
	struct snapshot snap = { 0 };
	struct con con = { .rfd = -1, .wfd = -1 };
	uint8_t *kernel = NULL;
	size_t kernel_size = 0, resume_off = 0;
	int pipefd[2], ret;
	bool started = false, rt_ok = true, clock_ok = true, neg_ok = true, neg_run = false;
	char clock_why[600] = "", rt_why[600] = "", neg_why[600] = "";
	double last_t = -1;

	snprintf(name, sizeof(name), "state-%ucpu", ncpus);
	snprintf(n_rt, sizeof(n_rt), "%s-roundtrip", name);
	snprintf(n_guest, sizeof(n_guest), "%s-guest", name);
	snprintf(n_clock, sizeof(n_clock), "%s-clock", name);
	snprintf(n_neg, sizeof(n_neg), "%s-negative", name);
	snprintf(n_io, sizeof(n_io), "%s-io-completion", name);
	if (ncpus < 1 || ncpus > 8) {
		fail(name, "1 to 8 vCPUs");
		free(vm);
		return;
	}
	if (!vm || pipe2(pipefd, O_CLOEXEC) < 0) {
		fail(name, "set-up: %s", strerror(errno));
		free(vm);
		return;
	}
	con.rfd = pipefd[0];
	con.wfd = pipefd[1];
	fcntl(con.rfd, F_SETFL, O_NONBLOCK);
	fcntl(con.wfd, F_SETPIPE_SZ, 1 << 20);

	memset(&cfg, 0, sizeof(cfg));
	cfg.kernel = guest;
	cfg.cmdline = GUEST_CMDLINE;
	cfg.mem_size = GUEST_MEM;
	cfg.ncpus = ncpus;
	cfg.cpu_model = CPU_MODEL_DEFAULT;
	snprintf(cfg.name, sizeof(cfg.name), "state-test-%u", ncpus);

	if (read_whole(guest, &kernel, &kernel_size)) {
		fail(name, "cannot read the test guest %s", guest);
		goto out;
	}
	ret = vm_build(vm, &cfg, &con);
	if (ret) {
		fail(name, "vm_create/platform_init: %s", strerror(-ret));
		goto out;
	}
	ret = vm_boot(vm, kernel, kernel_size);
	if (ret || vm_start(vm)) {
		fail(name, "boot: %s", strerror(-ret));
		vm_teardown(vm, false);
		goto out;
	}
	started = true;

	for (int k = 0; k < NR_SYNC; k++) {
		const struct sync_plan *p = &plan[k];
		struct cpu_load_opts opts = { .clock = p->mode };
		struct cpu_state saved[8], now[8];
		struct vm_kstate vsaved, vnow;
		struct state_in in;
		struct cmp cmp = { .diffs = 0 };
		double t_pause, t_resume;
		uint64_t rt_vm_load, rt_cpu_load[8];
		struct report r[4];
		int nr;

		/* The sync point: the guest has printed its workload line, or made progress since the last. */
		if (!con_wait(&con, vm, resume_off, k ? NULL : "godwit-guest: workload=", k ? 2 : 0)) {
			fail(name, "sync point %d: the guest made no progress; console: %s", k,
			     con_tail(&con));
			goto out_vm;
		}
		if (k == 2 && ncpus > 1 && !strstr(con.buf, "godwit-guest: cpu 1 online")) {
			fail(name, "the AP did not come online; console: %s", con_tail(&con));
			goto out_vm;
		}
		t_pause = mono_ms();
		ret = vm_pause(vm);
		if (ret) {
			fail(name, "sync point %d: vm_pause: %s; console: %s", k, strerror(-ret),
			     con_tail(&con));
			goto out_vm;
		}
		con_poll(&con);
		if (getenv("STATE_DEBUG"))
			for (unsigned int i = 0; i < ncpus; i++) {
				struct kvm_mp_state mp = { 0 };

				ioctl(vm->vcpus[i].fd, KVM_GET_MP_STATE, &mp);
				fprintf(stderr, "  sync %d: vcpu%u last exit %u, mp_state %u\n", k, i,
					vm->vcpus[i].run->exit_reason, mp.mp_state);
			}
		for (unsigned int i = 0; i < ncpus; i++)
			if (mark_vcpu(&vm->vcpus[i], (unsigned int)k)) {
				fail(name, "sync point %d: cannot mark vcpu%u's MSRs/debug registers", k, i);
				goto out_vm;
			}
		snap_free(&snap);
		if (dev_quiesce_all(vm) || snap_save(vm, &snap, why, sizeof(why))) {
			fail(name, "sync point %d: save: %s", k, why);
			goto out_vm;
		}
		vm_teardown(vm, true);
		started = false;
		if (p->downtime_ms)
			sleep_ms(p->downtime_ms);

		ret = vm_build(vm, &cfg, &con);
		if (ret) {
			fail(name, "sync point %d: new VM: %s", k, strerror(-ret));
			goto out;
		}
		if (tsc_settable < 0) {
			tsc_settable = probe_tsc_settable(&vm->vcpus[0]);
			if (!tsc_settable)
				printf("# note: this KVM ignores writes to a guest's TSC (PVM: guests "
				       "read the host's TSC), so CPU_CLOCK_FROZEN cannot hide a stop "
				       "from the guest's TSC; TSC checks expect the host's TSC\n");
		}
		if (p->negative) {
			int problems = negative_tests(vm, &snap, why, sizeof(why));

			neg_run = true;
			if (problems) {
				neg_ok = false;
				snprintf(neg_why, sizeof(neg_why), "%d problem(s), first: %s", problems, why);
			}
		}
		if (snap_load_ram_devs(vm, &snap, why, sizeof(why))) {
			fail(name, "sync point %d: load: %s", k, why);
			goto out_vm;
		}
		rt_vm_load = real_ns();
		state_in_init(&in, snap.vmk.buf, snap.vmk.len);
		ret = vm_state_load(vm, &in, VM_STATE_VERSION, &opts);
		if (ret) {
			fail(name, "sync point %d: vm_state_load: %s", k, strerror(-ret));
			goto out_vm;
		}
		for (unsigned int i = 0; i < ncpus; i++) {
			rt_cpu_load[i] = real_ns();
			state_in_init(&in, snap.cpu[i].buf, snap.cpu[i].len);
			ret = cpu_state_load(&vm->vcpus[i], &in, CPU_STATE_VERSION, &opts);
			if (ret) {
				fail(name, "sync point %d: cpu_state_load vcpu%u: %s", k, i, strerror(-ret));
				goto out_vm;
			}
		}
		if (dev_resume_all(vm)) {
			fail(name, "sync point %d: dev_resume_all", k);
			goto out_vm;
		}

		/* Read everything back. */
		for (unsigned int i = 0; i < ncpus; i++) {
			int64_t khz, want, slack;

			state_in_init(&in, snap.cpu[i].buf, snap.cpu[i].len);
			if (cpu_state_decode(&in, CPU_STATE_VERSION, &saved[i]) ||
			    cpu_state_read(&vm->vcpus[i], &now[i])) {
				fail(name, "sync point %d: vcpu%u: cannot decode or read back", k, i);
				goto out_vm;
			}
			cmp_cpu(&cmp, &saved[i], &now[i]);
			{
				uint64_t esp = 0, tag = 0x57a7e000ULL + (uint64_t)k * 0x100 + i * 0x10;

				if (!cpu_state_msr(&saved[i], 0x175, &esp) || esp != tag ||
				    saved[i].debugregs.db[3] != tag + 5)
					cmp_diff(&cmp, "vcpu%u: the marked SYSENTER_ESP/DR3 are not in the saved state", i);
			}
			if (getenv("STATE_DEBUG"))
				fprintf(stderr, "  vcpu%u saved tsc %.3f s now %.3f s (dt real %.3f)\n", i,
					saved[i].tsc / (saved[i].tsc_khz * 1e3), now[i].tsc / (saved[i].tsc_khz * 1e3),
					(now[i].time_ns - saved[i].time_ns) / 1e9);
			khz = saved[i].tsc_khz;
			slack = TIME_SLACK_MS * khz;
			if (p->mode == CPU_CLOCK_ADVANCE || !tsc_settable)
				want = (int64_t)saved[i].tsc +
				       (int64_t)(now[i].time_ns - saved[i].time_ns) * khz / 1000000;
			else
				want = (int64_t)saved[i].tsc +
				       (int64_t)(now[i].time_ns - rt_cpu_load[i]) * khz / 1000000;
			if (!near((int64_t)now[i].tsc, want, slack) && clock_ok) {
				clock_ok = false;
				snprintf(clock_why, sizeof(clock_why),
					 "sync point %d (%s): vcpu%u TSC %.1f ms off what the mode promises",
					 k, p->mode == CPU_CLOCK_ADVANCE ? "advance" : "frozen", i,
					 (double)((int64_t)now[i].tsc - want) / (double)khz);
			}
			cpu_state_free(&saved[i]);
			cpu_state_free(&now[i]);
		}
		state_in_init(&in, snap.vmk.buf, snap.vmk.len);
		if (vm_state_decode(&in, VM_STATE_VERSION, &vsaved) || vm_state_read(vm, &vnow)) {
			fail(name, "sync point %d: VM state: cannot decode or read back", k);
			goto out_vm;
		}
		cmp_vm(&cmp, &vsaved, &vnow);
		if (getenv("STATE_DEBUG"))
			fprintf(stderr, "  kvmclock saved %.3f now %.3f (dt real since save %.3f, since load %.3f)\n",
				vsaved.clock.clock / 1e9, vnow.clock.clock / 1e9,
				(vnow.time_ns - vsaved.time_ns) / 1e9, (vnow.time_ns - rt_vm_load) / 1e9);
		{
			int64_t want = (int64_t)vsaved.clock.clock +
				       (int64_t)(vnow.time_ns - (p->mode == CPU_CLOCK_ADVANCE ?
								  vsaved.time_ns : rt_vm_load));

			if (!near((int64_t)vnow.clock.clock, want, TIME_SLACK_MS * 1000000LL) &&
			    clock_ok) {
				clock_ok = false;
				snprintf(clock_why, sizeof(clock_why),
					 "sync point %d: kvmclock %.1f ms off what the mode promises", k,
					 (double)((int64_t)vnow.clock.clock - want) / 1e6);
			}
		}
		if (cmp.diffs && rt_ok) {
			rt_ok = false;
			snprintf(rt_why, sizeof(rt_why), "sync point %d: %u difference(s), first: %s",
				 k, cmp.diffs, cmp.first);
		}

		con_poll(&con);
		resume_off = con.len;
		ret = vm_start(vm);
		t_resume = mono_ms();
		if (ret) {
			fail(name, "sync point %d: vm_start: %s", k, strerror(-ret));
			goto out_vm;
		}
		started = true;

		/* The guest goes on; its measured stall matches the clock mode. */
		if (!con_wait(&con, vm, resume_off, NULL, 2)) {
			fail(name, "sync point %d: no new memtest reports after the restore; console: %s",
			     k, con_tail(&con));
			goto out_vm;
		}
		if (k == 1) {
			if (check_io_completion(vm, why, sizeof(why)))
				fail(n_io, "%s", why);
			else
				pass(n_io);
		}
		if (k > 0) {
			double downtime = t_resume - t_pause, stall = 0;

			nr = con_reports(&con, resume_off, r, 2);
			for (int i = 0; i < nr; i++)
				stall = r[i].stall_ms > stall ? r[i].stall_ms : stall;
			/*
			 * The guest converts TSC ticks with the frequency it calibrated
			 * (against the PIT when CPUID has none), which a busy host can
			 * skew; convert back with the real one.
			 */
			stall = stall * guest_khz(&con) / vm->tsc_khz;
			if (getenv("STATE_DEBUG")) {
				struct report rr[4096];
				int m = con_reports(&con, 0, rr, 4096);
				for (int i = 0; i < m; i++)
					if (rr[i].end > resume_off - 400 && rr[i].start < resume_off + 400)
						fprintf(stderr, "  %s t=%.1f stall=%.1f\n", rr[i].end <= resume_off ? "before" : "after", rr[i].t, rr[i].stall_ms);
			}
			fprintf(stderr, "state-test: %ucpu sync %d %s: host downtime %.1f ms, guest stall %.1f ms (guest TSC kHz %.0f, real %u)\n",
				ncpus, k, p->mode == CPU_CLOCK_ADVANCE ? "advance" : "frozen",
				downtime, stall, guest_khz(&con), vm->tsc_khz);
			if ((p->mode == CPU_CLOCK_ADVANCE || !tsc_settable) && p->downtime_ms &&
			    (stall < downtime - STALL_BELOW_MS || stall > downtime + STALL_ABOVE_MS) &&
			    clock_ok) {
				clock_ok = false;
				snprintf(clock_why, sizeof(clock_why),
					 "sync point %d (advance): the guest measured a %.1f ms stall for a %.1f ms downtime",
					 k, stall, downtime);
			}
			if (p->mode == CPU_CLOCK_FROZEN && tsc_settable && p->downtime_ms &&
			    stall > downtime / 2 && clock_ok) {
				clock_ok = false;
				snprintf(clock_why, sizeof(clock_why),
					 "sync point %d (frozen): the guest measured a %.1f ms stall for a %.1f ms downtime",
					 k, stall, downtime);
			}
		}
	}

	/* The guest's whole log. */
	if (!con_wait(&con, vm, resume_off, NULL, 3)) {
		fail(n_guest, "no reports after the last restore; console: %s", con_tail(&con));
	} else {
		struct report *all = calloc(4096, sizeof(*all));
		int n = all ? con_reports(&con, 0, all, 4096) : 0;
		const char *bad = NULL;
		char msg[256] = "";

		for (int i = 0; i < n && !bad; i++) {
			if (all[i].errors) {
				bad = "errors";
				snprintf(msg, sizeof(msg), "report %d: errors=%lu", i, all[i].errors);
			} else if (all[i].t < last_t) {
				bad = "t";
				snprintf(msg, sizeof(msg), "report %d: t=%.1f after t=%.1f", i, all[i].t,
					 last_t);
			}
			last_t = all[i].t;
		}
		if (!bad && con_first_garbled(&con) >= 0) {
			long off = con_first_garbled(&con);

			snprintf(msg, sizeof(msg), "garbled console line: %.100s", con.buf + off);
			bad = "x";
		}
		if (!bad && strstr(con.buf, "memtest: ERROR"))
			snprintf(msg, sizeof(msg), "%s", "memtest: ERROR lines"), bad = "x";
		if (!bad && strstr(con.buf, "EXCEPTION"))
			snprintf(msg, sizeof(msg), "%s", "guest EXCEPTION"), bad = "x";
		if (!bad && ncpus > 1 && !strstr(con.buf, "godwit-guest: cpu 1 online"))
			snprintf(msg, sizeof(msg), "%s", "the AP never came online"), bad = "x";
		if (!bad && n < 2 * NR_SYNC)
			snprintf(msg, sizeof(msg), "only %d reports", n), bad = "x";
		/* Every vCPU ran after the last restore: its registers moved on. */
		if (!bad && vm_pause(vm) == 0) {
			for (unsigned int i = 0; i < ncpus && !bad; i++) {
				struct cpu_state ld, cur;
				struct state_in in;

				state_in_init(&in, snap.cpu[i].buf, snap.cpu[i].len);
				if (cpu_state_decode(&in, CPU_STATE_VERSION, &ld) ||
				    cpu_state_read(&vm->vcpus[i], &cur)) {
					snprintf(msg, sizeof(msg), "vcpu%u: cannot read its state", i);
					bad = "x";
					continue;
				}
				if (!memcmp(&ld.regs, &cur.regs, sizeof(cur.regs)) ||
				    cur.mp_state.mp_state != KVM_MP_STATE_RUNNABLE) {
					snprintf(msg, sizeof(msg), "vcpu%u did not run after the last restore (mp_state %u)",
						 i, cur.mp_state.mp_state);
					bad = "x";
				}
				cpu_state_free(&ld);
				cpu_state_free(&cur);
			}
		}
		if (bad)
			fail(n_guest, "%s; console: %s", msg, con_tail(&con));
		else
			pass(n_guest);
		free(all);
	}
	if (rt_ok)
		pass(n_rt);
	else
		fail(n_rt, "%s", rt_why);
	if (clock_ok)
		pass(n_clock);
	else
		fail(n_clock, "%s", clock_why);
	if (!neg_run)
		fail(n_neg, "did not run");
	else if (neg_ok)
		pass(n_neg);
	else
		fail(n_neg, "%s", neg_why);
out_vm:
	vm_teardown(vm, started);
out:
	snap_free(&snap);
	free(kernel);
	close(con.rfd);
	close(con.wfd);
	free(con.buf);
	free(vm);
}

int main(int argc, char **argv)
{
	const char *t = getenv("TIER");

	if (t && *t)
		tier = t;
	if (argc < 2) {
		fprintf(stderr, "usage: %s GUEST_ELF [NCPUS...]\n", argv[0]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (argc == 2) {
		run_case(argv[1], 1);
		run_case(argv[1], 2);
	}
	for (int i = 2; i < argc; i++)
		run_case(argv[1], (unsigned int)atoi(argv[i]));
	return failures ? 1 : 0;
}
