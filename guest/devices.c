/*
 * devices.c - the device workloads' scheduler: the PCI scan and each chosen
 * driver's set-up on the BSP, then rounds over the active drivers' poll
 * functions and their once-per-interval reports, either on a CPU of their
 * own (devices_run) or between the memory workload's pages on a single CPU
 * (devices_poll from memtest.c).
 *
 * A CPU of their own sleeps (LAPIC timer, sti; hlt in ring 0) when no
 * driver has anything outstanding for 2 ms: 1 ms at a time while the
 * network responder is active (that is its worst added latency), else
 * until the next report.  Each sleep costs a few exits, so a busy device
 * is polled without sleeping.
 */
#include "virtio.h"

bool devices_inline;

static bool disk_on, rng_on, net_on;
static u64 next_report;

bool devices_setup(void)
{
	pci_scan();
	if (cfg.workload & WL_DISK)
		disk_on = disk_setup();
	if (cfg.workload & WL_RNG)
		rng_on = rng_setup();
	if (cfg.workload & WL_NET)
		net_on = net_setup();
	return disk_on || rng_on || net_on;
}

static enum poll_result devices_round(u64 now)
{
	enum poll_result r = POLL_IDLE;

	if (disk_on)
		r = MAX(r, disk_poll(now));
	if (rng_on)
		r = MAX(r, rng_poll(now));
	if (net_on)
		r = MAX(r, net_poll(now));
	if (!next_report)
		next_report = now + ms_to_tsc(cfg.report_ms);
	if ((int64_t)(now - next_report) >= 0) {
		if (disk_on)
			disk_report(now);
		if (net_on)
			net_report(now);
		while ((int64_t)(now - next_report) >= 0)
			next_report += ms_to_tsc(cfg.report_ms);
	}
	return r;
}

void devices_poll(u64 now)
{
	devices_round(now);
}

void devices_run(unsigned slot)
{
	u64 end = cfg.runtime_s ? boot_tsc + ms_to_tsc(cfg.runtime_s * 1000) : 0;
	u64 idle_since = 0;

	for (;;) {
		u64 now = gclock(), wake;

		if (slot == 0 && end && (int64_t)(now - end) >= 0)
			power_off();
		if (slot != 0 && all_stop)
			sys_halt();
		if (devices_round(now) != POLL_IDLE) {
			idle_since = 0;
			continue;
		}
		if (!idle_since) {
			idle_since = now;
			continue;
		}
		if (now - idle_since < ms_to_tsc(2)) {
			cpu_relax();
			continue;
		}
		wake = net_on ? now + ms_to_tsc(1) : next_report;
		if ((int64_t)(next_report - wake) < 0)
			wake = next_report;
		if (slot == 0 && end && (int64_t)(end - wake) < 0)
			wake = end;
		if ((int64_t)(wake - now) > 0) {
			lapic_timer_oneshot(wake - now);
			sys_idle();
		}
	}
}
