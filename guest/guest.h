/*
 * guest.h - what the test guest's parts share: the command-line
 * configuration, the platform facts found at boot (RAM, ACPI, TSC), the
 * online CPUs, and each part's entry points.
 */
#ifndef GUEST_GUEST_H
#define GUEST_GUEST_H

#include "lib.h"
#include "pattern.h"	/* pattern_fill(), pattern_check(): the memory and disk workloads' pages */

#define MAX_RAM_RANGES	32
#define MAX_MADT_CPUS	64

/* Workloads: a set, "workload=mem+net" on the command line. */
#define WL_MEM		(1u << 0)
#define WL_IDLE		(1u << 1)
#define WL_DISK		(1u << 2)
#define WL_RNG		(1u << 3)
#define WL_NET		(1u << 4)
#define WL_DEVICES	(WL_DISK | WL_RNG | WL_NET)

struct config {
	unsigned workload;	/* WL_* bits */
	u64 mem_mib;		/* memory workload size */
	u64 rate_mib;		/* MiB/s rewritten; 0 = verify only */
	bool fill_text;		/* fill=text: pages of text (compressible), not random */
	u64 runtime_s;		/* power off after this; 0 = never */
	u64 report_ms;		/* report interval */
	u64 disk_start_mib;	/* disk workload: first MiB of the range */
	u64 disk_mib;		/* disk workload: MiB in the range */
	u64 disk_ro_check;	/* 1: try one write, report the status */
	u8 disk_bench[6];	/* disk_mode=: benchmark modes in order (disk.c) */
	u8 disk_bench_qd[6];	/* each one's queue depth, 0: disk_qd */
	unsigned disk_nbench;	/* 0: the verifying workload */
	u64 disk_bs;		/* benchmark request bytes; 0: per mode */
	u64 disk_qd;		/* benchmark requests in flight */
	u64 disk_secs;		/* benchmark seconds per mode */
	bool disk_journal;	/* disk_mode=journal: the journal workload (disk.c) */
	u64 journal_flush;	/* journal: a FLUSH every this many records */
	u64 journal_rate;	/* journal: records per second; 0 = as fast as it goes */
	u64 rng_kib;		/* rng workload: KiB to read */
	u8 ip[4];		/* net workload: our IPv4 address */
};

struct ram_range {
	u64 base, size;
};

/* ACPI Generic Address Structure, as found in the FADT. */
struct gas {
	u8 space;		/* 0 memory, 1 system I/O */
	u8 bit_width, bit_offset, access_size;
	u64 addr;
} __attribute__((packed));

struct platform {
	/* From hvm_start_info's memory map (type 1 = RAM). */
	struct ram_range ram[MAX_RAM_RANGES];
	unsigned nram;
	u64 ram_bytes;

	u64 tsc_khz;
	const char *tsc_source;	/* "cpuid" or "pit" */

	/* From ACPI; acpi false means none was found. */
	bool acpi;
	unsigned madt_cpus;	/* enabled LAPIC/x2APIC entries */
	u32 apic_ids[MAX_MADT_CPUS];
	u16 pm1a_cnt;		/* PM1a_CNT_BLK port, 0 if none */
	u8 s5_slp_typ;
	bool hw_reduced;
	bool have_sleep_ctl;
	struct gas sleep_ctl;	/* hardware-reduced SLEEP_CONTROL_REG */
};

/* One per online CPU, indexed by slot (0 = BSP); cache-line separated. */
struct cpu {
	volatile bool online;
	u32 apic_id;
} __aligned(64);

extern struct config cfg;
extern struct platform plat;
extern struct cpu cpus[GUEST_MAX_CPUS];
extern unsigned ncpus_online;
extern volatile bool all_stop;		/* set before power-off: APs halt */

/* main.c: every CPU's ring-3 entry (from entry.S), slot 0 = BSP. */
void user_start(unsigned slot) __noreturn;

/*
 * acpi.c: fill plat's ACPI fields from the RSDP at rsdp_paddr (0: scan
 * 0xe0000-0xfffff): MADT CPUs, FADT power-off register, \_S5_ SLP_TYP.
 */
void acpi_init(u64 rsdp_paddr);

/* platform.c */
void tsc_init(void);			/* plat.tsc_khz, plat.tsc_source */
u64 ms_to_tsc(u64 ms);
void tsc_wait_until(u64 deadline);	/* spin until gclock() >= deadline */
void map_high_ram(void);		/* identity-map RAM above 4 GiB */
/* bytes rounded up to pages, zeroed, after the image; halts when out. */
u64 boot_alloc(u64 bytes);
u64 boot_alloc_end(void);		/* first byte boot_alloc has not used */
void intr_mask_all(void);		/* IOAPIC and BSP LAPIC; sets cpus[0].apic_id */
void smp_start(void);			/* INIT-SIPI-SIPI; sets ncpus_online */
void lapic_timer_calibrate(void);
void lapic_timer_oneshot(u64 tsc_ticks);	/* this CPU, VEC_TIMER, <= 1 s */
void power_off(void) __noreturn;	/* prints "poweroff"; halts if it fails */

/* memtest.c */
void memtest_setup(unsigned ncpu);	/* BSP, after smp_start(): carve, split among 0..ncpu-1 */
void memtest_run(unsigned slot) __noreturn;

/*
 * disk.c: parse disk_mode=M[:Q][+M[:Q]...] (M: seqwrite, seqread,
 * randread, randwrite; Q: that mode's queue depth; at most 6) into
 * cfg.disk_bench; false (cfg unchanged) if a name or depth is bad or the
 * list is empty or too long.
 */
bool disk_parse_modes(const char *v, size_t vlen);
/*
 * disk.c: called by power_off() (CPU 0) before it powers off: with
 * disk_mode=journal, stops the journal, flushes it and verifies the whole
 * range ("journal: verify ..."), on the CPU running the device workloads
 * (waits up to 30 s for it if that is another CPU).  Nothing otherwise.
 */
void disk_before_poweroff(void);

/*
 * devices.c: the device workloads (disk, rng, net).  devices_setup() (BSP,
 * before memtest_setup(): it allocates) finds and starts the devices the
 * command line asks for; false if none is usable.  devices_poll() is one
 * round over them plus their reports when due, for a CPU that also runs
 * the memory workload (devices_inline); devices_run() is a CPU of their
 * own, sleeping on the LAPIC timer when nothing is happening.
 */
extern bool devices_inline;
bool devices_setup(void);
void devices_poll(u64 now);
void devices_run(unsigned slot) __noreturn;

#endif
