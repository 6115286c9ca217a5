/*
 * rtc.c - the MC146818 CMOS real-time clock at ports 0x70/0x71: the date
 * and time in BCD, 24-hour mode, read from the host's UTC clock plus an
 * offset the guest changes by setting the time; the rest of CMOS is 128
 * bytes of RAM.  No periodic/alarm interrupts (Linux does not need them).
 */
#include <string.h>
#include <time.h>

#include "godwit/devices.h"
#include "godwit/layout.h"
#include "godwit/vm.h"

#define RTC_SECONDS 0x00
#define RTC_MINUTES 0x02
#define RTC_HOURS   0x04
#define RTC_WDAY    0x06
#define RTC_MDAY    0x07
#define RTC_MONTH   0x08
#define RTC_YEAR    0x09
#define RTC_REG_A   0x0a
#define RTC_REG_B   0x0b
#define RTC_REG_C   0x0c
#define RTC_REG_D   0x0d
#define RTC_CENTURY 0x32

#define REG_B_24H   0x02
#define REG_B_DM    0x04   /* binary mode when set, BCD when clear */
#define REG_B_SET   0x80

static uint8_t to_bcd(int v) { return (uint8_t)((v / 10) << 4 | (v % 10)); }
static int from_bcd(uint8_t v) { return (v >> 4) * 10 + (v & 0xf); }

static uint8_t rtc_enc(const struct rtc *r, int v)
{
	return (r->cmos[RTC_REG_B] & REG_B_DM) ? (uint8_t)v : to_bcd(v);
}

static int rtc_dec(const struct rtc *r, uint8_t v)
{
	return (r->cmos[RTC_REG_B] & REG_B_DM) ? v : from_bcd(v);
}

/* Refresh the time registers from host time + offset. */
static void rtc_latch(struct rtc *r)
{
	time_t t = time(NULL) + r->offset;
	struct tm tm;

	gmtime_r(&t, &tm);
	r->cmos[RTC_SECONDS] = rtc_enc(r, tm.tm_sec);
	r->cmos[RTC_MINUTES] = rtc_enc(r, tm.tm_min);
	r->cmos[RTC_HOURS] = rtc_enc(r, tm.tm_hour);
	r->cmos[RTC_WDAY] = rtc_enc(r, tm.tm_wday + 1);
	r->cmos[RTC_MDAY] = rtc_enc(r, tm.tm_mday);
	r->cmos[RTC_MONTH] = rtc_enc(r, tm.tm_mon + 1);
	r->cmos[RTC_YEAR] = rtc_enc(r, tm.tm_year % 100);
	r->cmos[RTC_CENTURY] = rtc_enc(r, (tm.tm_year + 1900) / 100);
}

/* The guest finished setting the clock (SET bit cleared): new offset. */
static void rtc_commit(struct rtc *r)
{
	struct tm tm = {
		.tm_sec = rtc_dec(r, r->cmos[RTC_SECONDS]),
		.tm_min = rtc_dec(r, r->cmos[RTC_MINUTES]),
		.tm_hour = rtc_dec(r, r->cmos[RTC_HOURS]),
		.tm_mday = rtc_dec(r, r->cmos[RTC_MDAY]),
		.tm_mon = rtc_dec(r, r->cmos[RTC_MONTH]) - 1,
		.tm_year = rtc_dec(r, r->cmos[RTC_CENTURY]) * 100 +
			   rtc_dec(r, r->cmos[RTC_YEAR]) - 1900,
	};
	time_t t = timegm(&tm);

	if (t != (time_t)-1)
		r->offset = (int64_t)(t - time(NULL));
}

void rtc_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write)
{
	struct rtc *r = opaque;
	uint8_t *p = data;

	pthread_mutex_lock(&r->lock);
	if (addr == PORT_RTC_INDEX) {
		if (is_write)
			r->index = p[0] & 0x7f;    /* bit 7 is the NMI mask */
		else
			p[0] = 0xff;
	} else if (is_write) {
		uint8_t i = r->index;

		if (i == RTC_REG_B) {
			bool was_set = r->cmos[RTC_REG_B] & REG_B_SET;

			r->cmos[i] = p[0];
			if (was_set && !(p[0] & REG_B_SET))
				rtc_commit(r);
		} else if (i != RTC_REG_C && i != RTC_REG_D) {
			r->cmos[i] = p[0];
		}
	} else {
		uint8_t i = r->index;

		if (i <= RTC_YEAR || i == RTC_CENTURY) {
			if (!(r->cmos[RTC_REG_B] & REG_B_SET))
				rtc_latch(r);
		}
		p[0] = r->cmos[i];
		if (i == RTC_REG_C)
			r->cmos[RTC_REG_C] = 0;        /* read clears the flags */
	}
	for (unsigned int n = 1; n < len; n++)
		if (!is_write)
			p[n] = 0xff;
	pthread_mutex_unlock(&r->lock);
}

int rtc_init(struct rtc *r, struct vm *vm)
{
	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->lock, NULL);
	r->cmos[RTC_REG_A] = 0x26;           /* 32.768 kHz, 1024 Hz rate; UIP clear */
	r->cmos[RTC_REG_B] = REG_B_24H;      /* BCD, 24-hour */
	r->cmos[RTC_REG_D] = 0x80;           /* valid RAM and time */
	rtc_latch(r);
	if (!vm)
		return 0;
	return vm_register_pio(vm, PORT_RTC_INDEX, 2, rtc_io, r);
}
