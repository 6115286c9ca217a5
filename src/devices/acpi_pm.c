/*
 * acpi_pm.c - the fixed-hardware ACPI registers the FADT points at:
 * PM1a_EVT_BLK (status/enable), PM1a_CNT_BLK (SCI_EN always set: there is
 * no SMM to hand over from; SLP_EN with SLP_TYP = S5 powers off) and the
 * 24-bit 3.579545 MHz PM timer, derived from CLOCK_MONOTONIC so it never
 * goes backwards.
 *
 * Migration (acpi_pm_dev_ops): host monotonic time means nothing on another
 * host, so the timer is saved as the value the guest would read, and load
 * sets p->tmr_offset so the destination's timer continues from that value.
 * The timer therefore stands still while the VM is stopped for the switch
 * (the downtime is not counted); the guest sees no jump, in either
 * direction, whatever the two hosts' uptimes.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "godwit/devices.h"
#include "godwit/layout.h"
#include "godwit/log.h"
#include "godwit/vm.h"

#define PM_TIMER_HZ 3579545ULL
#define PM_TIMER_MASK 0xffffffu

/* The free-running count derived from the host's monotonic clock, 24 bits. */
static uint32_t pm_timer_host(const struct acpi_pm *p)
{
	struct timespec ts;
	unsigned __int128 ns;

	if (p->clock(CLOCK_MONOTONIC, &ts))
		return 0;
	ns = (unsigned __int128)ts.tv_sec * 1000000000u + (unsigned long)ts.tv_nsec;
	return (uint32_t)((ns * PM_TIMER_HZ / 1000000000u) & PM_TIMER_MASK);
}

/* What the guest reads at PM_TMR now (under p->lock). */
static uint32_t pm_timer_now(const struct acpi_pm *p)
{
	return (pm_timer_host(p) + p->tmr_offset) & PM_TIMER_MASK;
}

void acpi_pm_io(void *opaque, uint64_t port, void *data, unsigned int len, bool is_write)
{
	struct acpi_pm *p = opaque;
	uint8_t *d = data;
	uint32_t v = 0;
	unsigned int off = (unsigned int)(port - PORT_ACPI_PM1A_EVT);
	uint8_t regs[12];

	pthread_mutex_lock(&p->lock);
	memset(regs, 0, sizeof(regs));
	memcpy(regs + 0, &p->sts, 2);
	memcpy(regs + 2, &p->en, 2);
	memcpy(regs + 4, &p->cnt, 2);
	v = pm_timer_now(p);
	memcpy(regs + 8, &v, 4);

	if (!is_write) {
		for (unsigned int i = 0; i < len; i++)
			d[i] = off + i < sizeof(regs) ? regs[off + i] : 0xff;
	} else {
		uint16_t w = 0;

		memcpy(&w, d, MIN(len, 2u));
		if (off == 0 && len >= 2) {
			p->sts &= (uint16_t)~w;            /* write-1-to-clear */
		} else if (off == 2 && len >= 2) {
			p->en = w;
		} else if (off == 4 && len >= 2) {
			p->cnt = (uint16_t)((w & ~ACPI_PM1_SLP_EN) | ACPI_PM1_SCI_EN);
			if ((w & ACPI_PM1_SLP_EN) && ((w >> 10) & 7) == ACPI_S5_SLP_TYP && p->vm)
				vm_request_exit(p->vm, EXIT_POWEROFF, "guest powered off (ACPI S5)");
		}
	}
	pthread_mutex_unlock(&p->lock);
}

/*
 * Saved state, version 1.  Tags are never renumbered or reused.
 */
#define PM_F_STS    1  /* u16: PM1a_STS, only defined status bits (PM_STS_MASK) */
#define PM_F_EN     2  /* u16: PM1a_EN */
#define PM_F_CNT    3  /* u16: PM1a_CNT, SCI_EN set and SLP_EN clear */
#define PM_F_TIMER  4  /* u32 <= 0xffffff: the PM timer value the guest reads */

/* TMR, BM, GBL, PWRBTN, SLPBTN, RTC, PCIEXP_WAKE, WAK status bits. */
#define PM_STS_MASK 0xc731u

struct acpi_pm_image {
	uint16_t sts, en, cnt;
	uint32_t timer;
};
#define IMG struct acpi_pm_image
static const struct state_desc acpi_pm_fields[] = {
	STATE_INT(PM_F_STS, IMG, sts, PM_STS_MASK, 1),
	STATE_INT(PM_F_EN, IMG, en, STATE_ANY, 1),
	STATE_INT(PM_F_CNT, IMG, cnt, STATE_ANY, 1),
	STATE_INT(PM_F_TIMER, IMG, timer, PM_TIMER_MASK, 1),
};
#undef IMG

static int acpi_pm_save(struct dev *d, struct state_out *out)
{
	struct acpi_pm *p = d->priv;
	struct acpi_pm_image img;

	pthread_mutex_lock(&p->lock);
	img = (struct acpi_pm_image){ p->sts, p->en, p->cnt, pm_timer_now(p) };
	pthread_mutex_unlock(&p->lock);
	return state_save_fields(out, acpi_pm_fields, ARRAY_SIZE(acpi_pm_fields), &img);
}

/* Checks every field before it changes anything: a failed load leaves p as it was. */
static int acpi_pm_load(struct dev *d, struct state_in *in, uint16_t version)
{
	struct acpi_pm *p = d->priv;
	struct acpi_pm_image v = { 0 };
	int ret;

	ret = state_load_fields(in, acpi_pm_fields, ARRAY_SIZE(acpi_pm_fields), &v, version);
	if (ret)
		return ret;
	/* sts: only defined bits (a mask, and PM_STS_MASK's top bit is its largest). */
	if ((v.sts & ~PM_STS_MASK) || !(v.cnt & ACPI_PM1_SCI_EN) || (v.cnt & ACPI_PM1_SLP_EN))
		return -EINVAL;

	pthread_mutex_lock(&p->lock);
	p->sts = v.sts;
	p->en = v.en;
	p->cnt = v.cnt;
	p->tmr_offset = (v.timer - pm_timer_host(p)) & PM_TIMER_MASK;
	pthread_mutex_unlock(&p->lock);
	return 0;
}

/* Power-on values; the PM timer is free-running and keeps counting. */
static void acpi_pm_reset(struct dev *d)
{
	struct acpi_pm *p = d->priv;

	pthread_mutex_lock(&p->lock);
	p->sts = p->en = 0;
	p->cnt = ACPI_PM1_SCI_EN;
	pthread_mutex_unlock(&p->lock);
}

/* Version history: 1 - first layout. */
const struct dev_ops acpi_pm_dev_ops = {
	.name = "acpi-pm",
	.version = 1,
	.min_version = 1,
	.reset = acpi_pm_reset,
	.save = acpi_pm_save,
	.load = acpi_pm_load,
};

/*
 * acpi_pm_init - PM1a registers at power-on and the PM timer; registers
 * ports 0x600-0x60b when vm is not NULL.  Returns 0 or -errno.
 */
int acpi_pm_init(struct acpi_pm *p, struct vm *vm)
{
	memset(p, 0, sizeof(*p));
	pthread_mutex_init(&p->lock, NULL);
	p->vm = vm;
	p->clock = clock_gettime;
	p->cnt = ACPI_PM1_SCI_EN;
	if (!vm)
		return 0;
	return vm_register_pio(vm, PORT_ACPI_PM1A_EVT, 12, acpi_pm_io, p);
}
