/*
 * acpi_pm.c - the fixed-hardware ACPI registers the FADT points at:
 * PM1a_EVT_BLK (status/enable), PM1a_CNT_BLK (SCI_EN always set: there is
 * no SMM to hand over from; SLP_EN with SLP_TYP = S5 powers off) and the
 * 24-bit 3.579545 MHz PM timer, derived from CLOCK_MONOTONIC so it never
 * goes backwards.
 */
#include <string.h>
#include <time.h>

#include "godwit/devices.h"
#include "godwit/layout.h"
#include "godwit/vm.h"

#define PM_TIMER_HZ 3579545ULL

static uint32_t pm_timer_now(void)
{
	struct timespec ts;
	unsigned __int128 ns;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ns = (unsigned __int128)ts.tv_sec * 1000000000u + (unsigned long)ts.tv_nsec;
	return (uint32_t)((ns * PM_TIMER_HZ / 1000000000u) & 0xffffff);
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
	v = pm_timer_now();
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
			if ((w & ACPI_PM1_SLP_EN) && ((w >> 10) & 7) == ACPI_S5_SLP_TYP)
				vm_request_exit(p->vm, EXIT_POWEROFF, "guest powered off (ACPI S5)");
		}
	}
	pthread_mutex_unlock(&p->lock);
}

int acpi_pm_init(struct acpi_pm *p, struct vm *vm)
{
	memset(p, 0, sizeof(*p));
	pthread_mutex_init(&p->lock, NULL);
	p->vm = vm;
	p->cnt = ACPI_PM1_SCI_EN;
	if (!vm)
		return 0;
	return vm_register_pio(vm, PORT_ACPI_PM1A_EVT, 12, acpi_pm_io, p);
}
