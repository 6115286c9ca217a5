/*
 * main.c - the test guest's ring-3 life: entry.S irets every CPU into
 * user_start(slot).  The BSP reads hvm_start_info (command line, memory
 * map), ACPI and the TSC frequency, prints the boot lines, masks interrupt
 * sources, starts the APs and the virtio devices the command line asks
 * for, decides which CPU runs which workload (memory, devices, idle) and
 * releases everyone; the idle workload lives here too.
 */
#include "guest.h"

#define HVM_START_MAGIC	0x336ec578

struct hvm_start_info {
	u32 magic, version, flags, nr_modules;
	u64 modlist_paddr, cmdline_paddr, rsdp_paddr;
	u64 memmap_paddr;		/* version >= 1 */
	u32 memmap_entries, reserved;
};

struct hvm_memmap_entry {
	u64 addr, size;
	u32 type, reserved;
};

struct config cfg = {
	.workload = WL_MEM,
	.mem_mib = 64,
	.rate_mib = 0,
	.runtime_s = 0,
	.report_ms = 1000,
	.disk_start_mib = 0,
	.disk_mib = 16,
	.disk_qd = 1,
	.disk_secs = 2,
	.journal_flush = 16,
	.rng_kib = 64,
	.ip = { 198, 18, 0, 2 },
};
struct platform plat;
struct cpu cpus[GUEST_MAX_CPUS];
unsigned ncpus_online = 1;
volatile bool all_stop;
static volatile bool workload_go;

/* Who runs what, decided by the BSP before workload_go. */
static unsigned mem_cpus;		/* slots 0..mem_cpus-1 run memtest */
static unsigned dev_slot = ~0u;		/* the slot running devices_run() */

static const char *const wl_names[] = { "mem", "idle", "disk", "rng", "net" };

/* ---- command line ---- */

/* "mem+net" -> WL_MEM | WL_NET; false on an unknown name or an empty set. */
static bool parse_workload(const char *v, size_t vlen, unsigned *out)
{
	unsigned set = 0;

	while (vlen) {
		size_t n = 0, i;

		while (n < vlen && v[n] != '+')
			n++;
		for (i = 0; i < ARRAY_SIZE(wl_names); i++)
			if (strlen(wl_names[i]) == n && !strncmp(v, wl_names[i], n))
				break;
		if (i == ARRAY_SIZE(wl_names))
			return false;
		set |= 1u << i;
		v += n;
		vlen -= n;
		if (vlen) {		/* the '+' */
			v++;
			vlen--;
		}
	}
	if (!set || ((set & WL_IDLE) && (set & WL_MEM)))
		return false;
	*out = set;
	return true;
}

static void workload_string(unsigned set, char *buf, size_t size)
{
	size_t len = 0;

	buf[0] = '\0';
	for (unsigned i = 0; i < ARRAY_SIZE(wl_names); i++) {
		size_t n = strlen(wl_names[i]);

		if (!(set & (1u << i)) || len + n + 2 > size)
			continue;
		if (len)
			buf[len++] = '+';
		memcpy(buf + len, wl_names[i], n + 1);
		len += n;
	}
}

/* Dotted quad. */
static bool parse_ip(const char *v, size_t vlen, u8 ip[4])
{
	u8 out[4];

	for (unsigned i = 0; i < 4; i++) {
		size_t n = 0;
		u64 x;

		while (n < vlen && v[n] != '.')
			n++;
		if ((i < 3) != (n < vlen) || !parse_u64(v, n, &x) || x > 255)
			return false;
		out[i] = (u8)x;
		v += n + (i < 3);
		vlen -= n + (i < 3);
	}
	memcpy(ip, out, 4);
	return true;
}

static void opt_u64(const char *key, const char *v, size_t vlen, u64 *dst, u64 min)
{
	u64 x;

	if (parse_u64(v, vlen, &x) && x >= min)
		*dst = x;
	else
		gprintf("godwit-guest: bad value for %s, using %lu\n", key, *dst);
}

static void cmdline_parse(const char *s)
{
	while (*s) {
		const char *tok, *eq;
		size_t len, klen, vlen;
		char word[64];

		while (*s == ' ' || *s == '\t' || *s == '\n')
			s++;
		if (!*s)
			break;
		tok = s;
		while (*s && *s != ' ' && *s != '\t' && *s != '\n')
			s++;
		len = (size_t)(s - tok);
		for (eq = tok; eq < s && *eq != '='; eq++)
			;
		klen = (size_t)(eq - tok);
		vlen = eq < s ? (size_t)(s - eq - 1) : 0;
		eq++;

#define KEY(k) (klen == sizeof(k) - 1 && !strncmp(tok, k, klen) && eq <= s)
		if (KEY("workload")) {
			if (!parse_workload(eq, vlen, &cfg.workload)) {
				workload_string(cfg.workload, word, sizeof(word));
				gprintf("godwit-guest: bad value for workload, using %s\n", word);
			}
		} else if (KEY("ip")) {
			if (!parse_ip(eq, vlen, cfg.ip))
				gprintf("godwit-guest: bad value for ip, using %u.%u.%u.%u\n",
					cfg.ip[0], cfg.ip[1], cfg.ip[2], cfg.ip[3]);
		} else if (KEY("disk_start"))
			opt_u64("disk_start", eq, vlen, &cfg.disk_start_mib, 0);
		else if (KEY("disk_mib"))
			opt_u64("disk_mib", eq, vlen, &cfg.disk_mib, 1);
		else if (KEY("disk_ro_check"))
			opt_u64("disk_ro_check", eq, vlen, &cfg.disk_ro_check, 0);
		else if (KEY("disk_mode")) {
			if (!disk_parse_modes(eq, vlen))
				gprintf("godwit-guest: bad value for disk_mode, ignored\n");
		} else if (KEY("disk_bs"))
			opt_u64("disk_bs", eq, vlen, &cfg.disk_bs, 0);
		else if (KEY("disk_qd"))
			opt_u64("disk_qd", eq, vlen, &cfg.disk_qd, 1);
		else if (KEY("disk_secs"))
			opt_u64("disk_secs", eq, vlen, &cfg.disk_secs, 1);
		else if (KEY("journal_flush"))
			opt_u64("journal_flush", eq, vlen, &cfg.journal_flush, 1);
		else if (KEY("journal_rate"))
			opt_u64("journal_rate", eq, vlen, &cfg.journal_rate, 0);
		else if (KEY("rng_kib"))
			opt_u64("rng_kib", eq, vlen, &cfg.rng_kib, 1);
		else if (KEY("mem"))
			opt_u64("mem", eq, vlen, &cfg.mem_mib, 0);
		else if (KEY("rate"))
			opt_u64("rate", eq, vlen, &cfg.rate_mib, 0);
		else if (KEY("fill")) {
			if (vlen == 4 && !strncmp(eq, "text", 4))
				cfg.fill_text = true;
			else if (vlen == 6 && !strncmp(eq, "random", 6))
				cfg.fill_text = false;
			else
				gprintf("godwit-guest: bad value for fill, using %s\n",
					cfg.fill_text ? "text" : "random");
		} else if (KEY("runtime"))
			opt_u64("runtime", eq, vlen, &cfg.runtime_s, 0);
		else if (KEY("report"))
			opt_u64("report", eq, vlen, &cfg.report_ms, 10);
		else {
			len = MIN(len, sizeof(word) - 1);
			memcpy(word, tok, len);
			word[len] = '\0';
			gprintf("godwit-guest: unknown option '%s' ignored\n", word);
		}
#undef KEY
	}
}

/* ---- boot information ---- */

static void ram_add(u64 base, u64 size)
{
	unsigned i;

	if (!size || plat.nram == MAX_RAM_RANGES)
		return;
	plat.ram_bytes += size;
	/* Keep the list sorted by address: the allocators walk it in order. */
	for (i = plat.nram; i > 0 && plat.ram[i - 1].base > base; i--)
		plat.ram[i] = plat.ram[i - 1];
	plat.ram[i] = (struct ram_range){ base, size };
	plat.nram++;
}

static u64 boot_info_read(void)
{
	const struct hvm_start_info *si = (const void *)(u64)boot_info_paddr;
	char cmdline[1024];

	if (!boot_info_paddr || si->magic != HVM_START_MAGIC) {
		gprintf("godwit-guest: no hvm_start_info at 0x%x (magic 0x%x)\n", boot_info_paddr,
			boot_info_paddr ? si->magic : 0);
		ram_add(0x100000, 63 * MiB);
		return 0;
	}
	if (si->cmdline_paddr) {
		const char *s = (const char *)si->cmdline_paddr;
		size_t n = 0;

		while (n < sizeof(cmdline) - 1 && s[n])
			n++;
		memcpy(cmdline, s, n);
		cmdline[n] = '\0';
		cmdline_parse(cmdline);
	}
	if (si->version >= 1 && si->memmap_paddr && si->memmap_entries) {
		const struct hvm_memmap_entry *e = (const void *)si->memmap_paddr;

		for (u32 i = 0; i < si->memmap_entries; i++)
			if (e[i].type == 1)
				ram_add(e[i].addr, e[i].size);
	} else {
		gprintf("godwit-guest: hvm_start_info has no memory map; assuming 1-64 MiB\n");
		ram_add(0x100000, 63 * MiB);
	}
	return si->rsdp_paddr;
}

/* ---- idle workload ---- */

/*
 * Sleep in ring 0 (sti; hlt) until the LAPIC timer, the only unmasked
 * interrupt, fires at the next report or the end of the run.  Each wake
 * costs a few emulated ring-0 instructions and a handful of exits.
 */
static __noreturn void idle_run(unsigned slot)
{
	u64 report_ticks = ms_to_tsc(cfg.report_ms);
	u64 end = cfg.runtime_s ? boot_tsc + ms_to_tsc(cfg.runtime_s * 1000) : 0;
	u64 next_report = gclock() + report_ticks;

	for (;;) {
		u64 now = gclock(), deadline;

		if (all_stop)
			sys_halt();
		if (slot == 0 && end && (int64_t)(now - end) >= 0)
			power_off();
		if ((int64_t)(now - next_report) >= 0) {
			if (slot == 0) {
				u64 t10 = (now - boot_tsc) / (plat.tsc_khz * 100);

				gprintf("idle: t=%lu.%lu\n", t10 / 10, t10 % 10);
			}
			while ((int64_t)(now - next_report) >= 0)
				next_report += report_ticks;
		}
		deadline = next_report;
		if (slot == 0 && end && (int64_t)(end - deadline) < 0)
			deadline = end;
		lapic_timer_oneshot(deadline - now);
		sys_idle();
	}
}

/* ---- entry from entry.S ---- */

static __noreturn void ap_main(unsigned slot)
{
	u32 apic_id = mmio_read32(LAPIC_BASE + 0x20) >> 24;

	cpus[slot].apic_id = apic_id;
	/* A fresh AP's LAPIC has every LVT masked; enable it for the timer. */
	mmio_write32(LAPIC_BASE + 0xf0, 0x100 | VEC_SPURIOUS);
	mmio_write32(LAPIC_BASE + 0x3e0, 0xb);
	__atomic_store_n(&cpus[slot].online, true, __ATOMIC_RELEASE);
	while (!workload_go)
		cpu_relax();
	if (slot >= ncpus_online)	/* came up after the BSP gave up on it */
		sys_halt();
	if (slot == dev_slot)
		devices_run(slot);
	if (slot < mem_cpus)
		memtest_run(slot);
	idle_run(slot);
}

void user_start(unsigned slot)
{
	bool devs = false;
	char wl[32];
	u64 rsdp;

	if (slot)
		ap_main(slot);

	serial_init();
	gprintf("godwit-guest: boot\n");
	rsdp = boot_info_read();
	map_high_ram();
	acpi_init(rsdp);
	tsc_init();
	gprintf("godwit-guest: cpus=%u mem_mib=%lu tsc_khz=%lu tsc_source=%s\n",
		plat.acpi && plat.madt_cpus ? plat.madt_cpus : 1, plat.ram_bytes / MiB,
		plat.tsc_khz, plat.tsc_source);
	workload_string(cfg.workload, wl, sizeof(wl));
	gprintf("godwit-guest: workload=%s mem=%lu rate=%lu runtime=%lu report=%lu\n",
		wl, cfg.mem_mib, cfg.rate_mib, cfg.runtime_s, cfg.report_ms);

	intr_mask_all();
	cpus[0].online = true;
	smp_start();

	/*
	 * Without the memory workload, CPU 0 runs the device workloads (or
	 * idles) and the others idle.  With it, the devices get the last CPU
	 * if there are two or more, else they take turns with memtest on CPU 0.
	 */
	if ((cfg.workload & WL_DEVICES) && !(devs = devices_setup()))
		gprintf("godwit-guest: no device workload could start\n");
	if (!(cfg.workload & WL_MEM)) {
		lapic_timer_calibrate();
		__atomic_store_n(&workload_go, true, __ATOMIC_RELEASE);
		if (cfg.workload & WL_DEVICES)
			devices_run(0);
		idle_run(0);
	}
	mem_cpus = ncpus_online;
	if (devs) {
		if (ncpus_online >= 2) {
			dev_slot = --mem_cpus;
			lapic_timer_calibrate();	/* devices_run() sleeps */
		} else {
			devices_inline = true;
		}
	}
	memtest_setup(mem_cpus);
	__atomic_store_n(&workload_go, true, __ATOMIC_RELEASE);
	memtest_run(0);
}
