/*
 * platform.c - the test guest's dealings with the machine, all from ring 3:
 * the TSC frequency, the identity map of RAM above 4 GiB, the boot-time
 * allocator, masking every interrupt source, starting the APs, the LAPIC
 * timer that wakes the idle workload, and power-off.
 *
 * Each LAPIC/IOAPIC register access and port access is a VM exit (~25 us
 * under PVM), so the counts are kept small; the loops here are over ring-3
 * memory, which runs natively.
 */
#include "guest.h"

#define LAPIC_ID	0x020
#define LAPIC_VER	0x030
#define LAPIC_SVR	0x0f0
#define LAPIC_ICR_LO	0x300
#define LAPIC_ICR_HI	0x310
#define LAPIC_LVT_CMCI	0x2f0
#define LAPIC_LVT_TIMER	0x320
#define LAPIC_LVT_THERM	0x330
#define LAPIC_LVT_PERF	0x340
#define LAPIC_LVT_LINT0	0x350
#define LAPIC_LVT_LINT1	0x360
#define LAPIC_LVT_ERR	0x370
#define LAPIC_TMICT	0x380
#define LAPIC_TMCCT	0x390
#define LAPIC_TDCR	0x3e0
#define LVT_MASKED	(1u << 16)
#define ICR_BUSY	(1u << 12)
#define ICR_INIT	0x4500		/* INIT, level assert */
#define ICR_SIPI	0x4600		/* startup, level assert */

#define PIT_CH0		0x40
#define PIT_CMD		0x43
#define PIT_HZ		1193182

static u64 lapic_khz;
static u64 alloc_next, alloc_limit;

static u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }
static void lapic_write(u32 reg, u32 v) { mmio_write32(LAPIC_BASE + reg, v); }

/* ---- TSC ---- */

u64 ms_to_tsc(u64 ms)
{
	return ms * plat.tsc_khz;
}

void tsc_wait_until(u64 deadline)
{
	while ((int64_t)(gclock() - deadline) < 0)
		cpu_relax();
}

/*
 * One PIT channel-0 readback: the latch command freezes the count when the
 * VMM handles the write, somewhere between the two TSC reads around it, so
 * the midpoint stands for it and the window bounds the error.
 */
struct pit_sample {
	u64 tsc, window;
	u16 count;
};

static struct pit_sample pit_read(void)
{
	struct pit_sample s;
	u64 a, b;
	u8 lo, hi;

	a = rdtsc();
	outb(PIT_CMD, 0x00);		/* latch channel 0 */
	b = rdtsc();
	lo = inb(PIT_CH0);
	hi = inb(PIT_CH0);
	s.tsc = a + (b - a) / 2;
	s.window = b - a;
	s.count = (u16)(lo | hi << 8);
	return s;
}

/*
 * A gap between two samples longer than this may hide a wrap of the 16-bit
 * count (54.9 ms): 50 M TSC ticks is under 54.9 ms for any TSC of 0.92 GHz
 * or more.  On a busy host a vCPU can be descheduled that long, and a lost
 * wrap would make the TSC look twice as fast: such a run is repeated.
 */
#define PIT_MAX_GAP_TSC	50000000ULL
#define PIT_TRIES	5

/* A calibration run: the latest sample and the PIT ticks counted so far. */
struct pit_run {
	struct pit_sample s;
	u64 ticks, prev_tsc;
	u16 prev;
	bool disturbed;		/* two samples too far apart to trust the count */
};

static void pit_next(struct pit_run *r)
{
	r->s = pit_read();
	r->ticks += (u16)(r->prev - r->s.count);
	r->prev = r->s.count;
	if (r->s.tsc - r->prev_tsc > PIT_MAX_GAP_TSC)
		r->disturbed = true;
	r->prev_tsc = r->s.tsc;
}

/*
 * ~50 ms against PIT channel 0 in mode 2 with a 65536 reload, read back
 * every ~75 us (three exits), so the 16-bit count never wraps unseen.  The
 * channel-2 gate at port 0x61 is not used: QEMU's microvm has no port 0x61.
 */
static u64 pit_calibrate(bool *disturbed)
{
	struct pit_run r = { 0 };
	struct pit_sample first, last;
	u64 first_ticks = 0, last_ticks;

	outb(PIT_CMD, 0x34);		/* channel 0, lo/hi byte, mode 2, binary */
	outb(PIT_CH0, 0);
	outb(PIT_CH0, 0);
	r.s = pit_read();
	r.prev = r.s.count;
	r.prev_tsc = r.s.tsc;
	first = r.s;
	/* Of the first few samples, keep the one with the tightest window. */
	for (int i = 0; i < 4; i++) {
		pit_next(&r);
		if (r.s.window < first.window) {
			first = r.s;
			first_ticks = r.ticks;
		}
	}
	while (r.ticks - first_ticks < PIT_HZ / 20 && !r.disturbed)
		pit_next(&r);
	last = r.s;
	last_ticks = r.ticks;
	for (int i = 0; i < 4; i++) {
		pit_next(&r);
		if (r.s.window < last.window) {
			last = r.s;
			last_ticks = r.ticks;
		}
	}
	*disturbed = r.disturbed;
	if (last_ticks == first_ticks)
		return 0;
	return (last.tsc - first.tsc) * PIT_HZ / (last_ticks - first_ticks) / 1000;
}

void tsc_init(void)
{
	u32 a, b, c, d, max;

	cpuid(1, 0, &a, &b, &c, &d);
	if (c & (1u << 31)) {			/* hypervisor present */
		cpuid(0x40000000, 0, &max, &b, &c, &d);
		if (max >= 0x40000010 && max < 0x40010000) {
			cpuid(0x40000010, 0, &a, &b, &c, &d);
			if (a) {
				plat.tsc_khz = a;
				plat.tsc_source = "cpuid";
				return;
			}
		}
	}
	cpuid(0, 0, &max, &b, &c, &d);
	if (max >= 0x15) {
		cpuid(0x15, 0, &a, &b, &c, &d);
		if (a && b && c) {
			plat.tsc_khz = (u64)c * b / a / 1000;
			plat.tsc_source = "cpuid";
			return;
		}
	}
	for (int i = 0; i < PIT_TRIES; i++) {
		bool disturbed;

		plat.tsc_khz = pit_calibrate(&disturbed);
		if (!disturbed && plat.tsc_khz)
			break;
		if (i == PIT_TRIES - 1)
			gprintf("godwit-guest: TSC calibration disturbed %d times; tsc_khz may be wrong\n",
				PIT_TRIES);
	}
	if (!plat.tsc_khz)
		plat.tsc_khz = 1000000;		/* never 0: it divides */
	plat.tsc_source = "pit";
}

/* ---- memory ---- */

/*
 * entry.S maps the first 4 GiB; map RAM above it with 2 MiB pages, in page
 * directories taken from boot_alloc (4 KiB per GiB).  Not 1 GiB pages even
 * when CPUID offers pdpe1gb: under PVM (QEMU -cpu host) the first access
 * through such a PDPTE faulted with the reserved-bit error code.  Present
 * bits only go from 0 to 1 here, so no TLB flush is needed.  RAM beyond
 * the one PDPT's 512 GiB is dropped from plat.ram.
 */
void map_high_ram(void)
{
	alloc_next = ALIGN_UP((u64)_end, 4096);
	for (unsigned i = 0; i < plat.nram; i++) {
		struct ram_range *r = &plat.ram[i];

		if (r->base <= alloc_next && alloc_next < r->base + r->size)
			alloc_limit = r->base + r->size;
	}
	if (!alloc_limit)
		alloc_limit = alloc_next;	/* boot_alloc() will complain */

	for (unsigned i = 0; i < plat.nram; i++) {
		struct ram_range *r = &plat.ram[i];
		u64 end;

		if (r->base >= 512 * GiB) {
			r->size = 0;
			continue;
		}
		if (r->base + r->size > 512 * GiB)
			r->size = 512 * GiB - r->base;
		end = r->base + r->size;
		for (u64 g = MAX(r->base >> 30, 4); g < (end + GiB - 1) >> 30; g++) {
			u64 *pd;

			if (pdpt[g])
				continue;
			pd = (u64 *)boot_alloc(4096);
			for (u64 j = 0; j < 512; j++)
				pd[j] = (g << 30) + (j << 21) + 0x87;	/* P RW US PS */
			pdpt[g] = (u64)pd | 0x7;
		}
	}
}

/* Memory for the guest's own tables, from the RAM right after the image. */
u64 boot_alloc(u64 bytes)
{
	u64 p = alloc_next;

	bytes = ALIGN_UP(bytes, 4096);
	if (p + bytes > alloc_limit) {
		gprintf("godwit-guest: out of memory for %lu bytes at 0x%lx\n", bytes, p);
		sys_halt();
	}
	alloc_next += bytes;
	memset((void *)p, 0, bytes);
	return p;
}

u64 boot_alloc_end(void)
{
	return alloc_next;
}

/* ---- interrupts ---- */

/* Mask this CPU's LAPIC LVT entries; enable it (SVR) for IPIs and the timer. */
static void lapic_local_init(void)
{
	u32 maxlvt = (lapic_read(LAPIC_VER) >> 16) & 0xff;

	lapic_write(LAPIC_SVR, 0x100 | VEC_SPURIOUS);
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
	lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
	lapic_write(LAPIC_LVT_LINT1, LVT_MASKED);
	lapic_write(LAPIC_LVT_ERR, LVT_MASKED);
	if (maxlvt >= 4)
		lapic_write(LAPIC_LVT_PERF, LVT_MASKED);
	if (maxlvt >= 5)
		lapic_write(LAPIC_LVT_THERM, LVT_MASKED);
	if (maxlvt >= 6)
		lapic_write(LAPIC_LVT_CMCI, LVT_MASKED);
	lapic_write(LAPIC_TDCR, 0xb);		/* timer: divide by 1 */
}

/* BSP: the 8259s were masked in entry.S; here the IOAPIC and the LAPIC. */
void intr_mask_all(void)
{
	u32 ver;

	mmio_write32(IOAPIC_BASE, 1);
	ver = mmio_read32(IOAPIC_BASE + 0x10);
	if (ver != 0xffffffff) {
		u32 n = ((ver >> 16) & 0xff) + 1;

		for (u32 i = 0; i < n; i++) {
			mmio_write32(IOAPIC_BASE, 0x10 + 2 * i);
			mmio_write32(IOAPIC_BASE + 0x10, LVT_MASKED);
		}
	}
	lapic_local_init();
	cpus[0].apic_id = lapic_read(LAPIC_ID) >> 24;
}

/*
 * The LAPIC timer counts at the bus clock (1 GHz under KVM) over the
 * divider; measure it against the TSC over 10 ms rather than assume.
 */
void lapic_timer_calibrate(void)
{
	u64 t0, t1;
	u32 left;

	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
	lapic_write(LAPIC_TMICT, 0xffffffff);
	t0 = gclock();
	tsc_wait_until(t0 + ms_to_tsc(10));
	left = lapic_read(LAPIC_TMCCT);
	t1 = gclock();
	lapic_write(LAPIC_TMICT, 0);
	lapic_khz = (u64)(0xffffffffu - left) * plat.tsc_khz / (t1 - t0);
	if (!lapic_khz)
		lapic_khz = 1000000;
}

/* Arm this CPU's one-shot timer (VEC_TIMER) to fire in about tsc_ticks. */
void lapic_timer_oneshot(u64 tsc_ticks)
{
	u64 count;

	tsc_ticks = MIN(tsc_ticks, ms_to_tsc(1000));
	count = tsc_ticks * lapic_khz / plat.tsc_khz;
	count = MAX(count, 1);
	count = MIN(count, 0xffffffffu);
	lapic_write(LAPIC_LVT_TIMER, VEC_TIMER);
	lapic_write(LAPIC_TMICT, (u32)count);
}

/* ---- APs ---- */

static void icr_send(u32 apic_id, u32 lo)
{
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, lo);
	for (int i = 0; i < 1000 && (lapic_read(LAPIC_ICR_LO) & ICR_BUSY); i++)
		cpu_relax();
}

/* A free RAM page below 1 MiB for the trampoline, clear of hvm_start_info. */
static u64 trampoline_page(void)
{
	for (u64 p = 0x1000; p < 0x9f000; p += 0x1000) {
		bool ram = false;

		if (p == (boot_info_paddr & ~0xfffu))
			continue;
		for (unsigned i = 0; i < plat.nram; i++)
			if (p >= plat.ram[i].base && p + 0x1000 <= plat.ram[i].base + plat.ram[i].size)
				ram = true;
		if (ram)
			return p;
	}
	return 0;
}

static unsigned online_count(void)
{
	unsigned n = 0;

	for (unsigned i = 0; i < GUEST_MAX_CPUS; i++)
		n += cpus[i].online;
	return n;
}

/*
 * INIT-SIPI-SIPI to every other enabled CPU in the MADT, all at once; each
 * AP takes the next free slot in entry.S and marks itself online from ring
 * 3 (main.c).  The BSP prints each arrival in slot order.
 */
void smp_start(void)
{
	u32 ids[GUEST_MAX_CPUS];
	unsigned nap = 0, printed = 1;
	u64 page, deadline;

	ncpus_online = 1;
	for (unsigned i = 0; i < MIN(plat.madt_cpus, (unsigned)MAX_MADT_CPUS); i++)
		if (plat.apic_ids[i] != cpus[0].apic_id && nap < GUEST_MAX_CPUS - 1)
			ids[nap++] = plat.apic_ids[i];
	if (!nap)
		return;
	page = trampoline_page();
	if (!page) {
		gprintf("godwit-guest: no low page for the AP trampoline; 1 cpu\n");
		return;
	}
	memcpy((void *)page, tramp_start, (size_t)(tramp_end - tramp_start));

	for (unsigned i = 0; i < nap; i++)
		icr_send(ids[i], ICR_INIT);
	tsc_wait_until(gclock() + ms_to_tsc(10));
	for (unsigned i = 0; i < nap; i++)
		icr_send(ids[i], ICR_SIPI | (u32)(page >> 12));
	tsc_wait_until(gclock() + ms_to_tsc(1));
	/* The second SIPI is ignored by an AP that is already running. */
	if (online_count() < nap + 1)
		for (unsigned i = 0; i < nap; i++)
			icr_send(ids[i], ICR_SIPI | (u32)(page >> 12));

	/* Real mode and ring 0 are emulated under PVM: allow a second. */
	deadline = gclock() + ms_to_tsc(1000);
	while (printed < nap + 1 && (int64_t)(gclock() - deadline) < 0) {
		if (cpus[printed].online) {
			gprintf("godwit-guest: cpu %u online\n", printed);
			printed++;
		} else {
			cpu_relax();
		}
	}
	ncpus_online = printed;
	if (printed < nap + 1)
		gprintf("godwit-guest: only %u of %u cpus came online\n", printed, nap + 1);
}

/* ---- power ---- */

static bool port_open(u16 port)
{
	const u8 *iopb = (const u8 *)(GUEST_TSS + TSS_IOPB_OFF);

	return port < TSS_IOPB_PORTS && !(iopb[port / 8] & (1u << (port % 8)));
}

/*
 * S5: SLP_TYP | SLP_EN to PM1a_CNT (godwit: port 0x604, SLP_TYP 5), or on a
 * hardware-reduced platform (QEMU microvm) to SLEEP_CONTROL_REG.
 */
void power_off(void)
{
	disk_before_poweroff();
	gprintf("godwit-guest: poweroff\n");
	all_stop = true;
	if (plat.hw_reduced && plat.have_sleep_ctl) {
		u8 v = (u8)((plat.s5_slp_typ & 7) << 2 | 1 << 5);

		if (plat.sleep_ctl.space == 0)
			*(volatile u8 *)plat.sleep_ctl.addr = v;
		else if (plat.sleep_ctl.space == 1 && port_open((u16)plat.sleep_ctl.addr))
			outb((u16)plat.sleep_ctl.addr, v);
	} else {
		u16 port = plat.pm1a_cnt ? plat.pm1a_cnt : 0x604;

		if (port_open(port) && port_open(port + 1))
			outw(port, (u16)((plat.s5_slp_typ & 7) << 10 | 1 << 13));
		else
			gprintf("godwit-guest: PM1a_CNT port 0x%x is not in the I/O bitmap\n", port);
	}
	/* The VMM may finish the write's consequences asynchronously. */
	tsc_wait_until(gclock() + ms_to_tsc(500));
	gprintf("godwit-guest: poweroff failed, halting\n");
	sys_halt();
}
