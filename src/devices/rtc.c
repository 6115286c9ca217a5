/*
 * rtc.c - the MC146818 CMOS real-time clock at ports 0x70/0x71: the date
 * and time in BCD, 24-hour mode, read from the host's UTC clock plus an
 * offset the guest changes by setting the time; the rest of CMOS is 128
 * bytes of RAM.  No periodic/alarm interrupts (Linux does not need them).
 *
 * Migration (rtc_dev_ops): the guest's time is saved as an absolute time
 * (host UTC + offset), not as the offset, so it stays right on a host whose
 * clock differs; the destination derives its own offset from it.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "godwit/devices.h"
#include "godwit/layout.h"
#include "godwit/log.h"
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

#define NSEC_PER_SEC 1000000000L
/*
 * Bound on a guest time in seconds (either side of 1970, ~34,800 years):
 * every time the guest can set through BCD/binary registers fits, gmtime_r()
 * handles it, and timespec arithmetic on it cannot overflow.
 */
#define RTC_MAX_SEC (1LL << 40)

/* Normalized timespec arithmetic: tv_nsec in [0, 1e9). */
static struct timespec ts_add(struct timespec a, struct timespec b)
{
	a.tv_sec += b.tv_sec;
	a.tv_nsec += b.tv_nsec;
	if (a.tv_nsec >= NSEC_PER_SEC) {
		a.tv_sec++;
		a.tv_nsec -= NSEC_PER_SEC;
	}
	return a;
}

static struct timespec ts_sub(struct timespec a, struct timespec b)
{
	a.tv_sec -= b.tv_sec;
	a.tv_nsec -= b.tv_nsec;
	if (a.tv_nsec < 0) {
		a.tv_sec--;
		a.tv_nsec += NSEC_PER_SEC;
	}
	return a;
}

/* Host UTC, through the instance's clock (tests freeze it). */
static struct timespec rtc_host_now(const struct rtc *r)
{
	struct timespec ts;

	if (r->clock(CLOCK_REALTIME, &ts) || ts.tv_nsec < 0 || ts.tv_nsec >= NSEC_PER_SEC) {
		ts.tv_sec = time(NULL);
		ts.tv_nsec = 0;
	}
	return ts;
}

/* Refresh the time registers from host time + offset. */
static void rtc_latch(struct rtc *r)
{
	time_t t = ts_add(rtc_host_now(r), r->offset).tv_sec;
	struct tm tm;

	if (!gmtime_r(&t, &tm))
		return;
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

	if (t != (time_t)-1 && t < RTC_MAX_SEC && t > -RTC_MAX_SEC)
		r->offset = ts_sub((struct timespec){ .tv_sec = t }, rtc_host_now(r));
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

/*
 * Saved state, version 1.  Tags are never renumbered or reused.  The time
 * registers in CMOS RAM are saved as they are: while the guest holds SET
 * they are what it wrote, otherwise they are latched again on every read.
 */
#define RTC_F_INDEX     1  /* u8 < 128: the selected CMOS byte */
#define RTC_F_CMOS      2  /* 128 bytes: CMOS RAM and registers */
#define RTC_F_TIME_SEC  3  /* u64 (two's complement): guest UTC, seconds since 1970 */
#define RTC_F_TIME_NSEC 4  /* u32 < 1e9: and nanoseconds */

struct rtc_image {
	uint8_t index;
	struct state_bytes cmos;
	uint64_t sec;
	uint32_t nsec;
};
#define IMG struct rtc_image
static const struct state_desc rtc_fields[] = {
	STATE_INT(RTC_F_INDEX, IMG, index, RTC_CMOS_SIZE - 1, 1),
	STATE_BYTES(RTC_F_CMOS, IMG, cmos, RTC_CMOS_SIZE, RTC_CMOS_SIZE, 1),
	STATE_INT(RTC_F_TIME_SEC, IMG, sec, STATE_ANY, 1),
	STATE_INT(RTC_F_TIME_NSEC, IMG, nsec, NSEC_PER_SEC - 1, 1),
};
#undef IMG

static int rtc_save(struct dev *d, struct state_out *out)
{
	struct rtc *r = d->priv;
	struct timespec guest;
	struct rtc_image img;

	pthread_mutex_lock(&r->lock);
	guest = ts_add(rtc_host_now(r), r->offset);
	img = (struct rtc_image){
		.index = r->index,
		.cmos = { r->cmos, sizeof(r->cmos) },
		.sec = (uint64_t)(int64_t)guest.tv_sec,
		.nsec = (uint32_t)guest.tv_nsec,
	};
	state_save_fields(out, rtc_fields, ARRAY_SIZE(rtc_fields), &img);
	pthread_mutex_unlock(&r->lock);
	return out->err;
}

/* Checks every field before it changes anything: a failed load leaves r as it was. */
static int rtc_load(struct dev *d, struct state_in *in, uint16_t version)
{
	struct rtc *r = d->priv;
	struct rtc_image v = { 0 };
	struct timespec guest;
	int ret;

	ret = state_load_fields(in, rtc_fields, ARRAY_SIZE(rtc_fields), &v, version);
	if (ret)
		return ret;
	if ((int64_t)v.sec >= RTC_MAX_SEC || (int64_t)v.sec <= -RTC_MAX_SEC)
		return -EINVAL;
	guest.tv_sec = (time_t)(int64_t)v.sec;
	guest.tv_nsec = (long)v.nsec;

	pthread_mutex_lock(&r->lock);
	r->index = v.index;
	memcpy(r->cmos, v.cmos.p, sizeof(r->cmos));
	r->offset = ts_sub(guest, rtc_host_now(r));
	pthread_mutex_unlock(&r->lock);
	return 0;
}

/*
 * A machine reset: CMOS RAM and the clock are battery-backed and survive;
 * the chip's RESET pin clears the interrupt enables and flags (as the
 * MC146818 does) and the index.
 */
static void rtc_reset(struct dev *d)
{
	struct rtc *r = d->priv;

	pthread_mutex_lock(&r->lock);
	r->index = 0;
	r->cmos[RTC_REG_B] &= (uint8_t)~0x78;  /* PIE, AIE, UIE, SQWE */
	r->cmos[RTC_REG_C] = 0;
	pthread_mutex_unlock(&r->lock);
}

/* Version history: 1 - first layout. */
const struct dev_ops rtc_dev_ops = {
	.name = "rtc",
	.version = 1,
	.min_version = 1,
	.reset = rtc_reset,
	.save = rtc_save,
	.load = rtc_load,
};

/*
 * rtc_init - an RTC showing host UTC; registers ports 0x70-0x71 when vm is
 * not NULL.  Returns 0 or -errno from vm_register_pio().
 */
int rtc_init(struct rtc *r, struct vm *vm)
{
	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->lock, NULL);
	r->clock = clock_gettime;
	r->cmos[RTC_REG_A] = 0x26;           /* 32.768 kHz, 1024 Hz rate; UIP clear */
	r->cmos[RTC_REG_B] = REG_B_24H;      /* BCD, 24-hour */
	r->cmos[RTC_REG_D] = 0x80;           /* valid RAM and time */
	rtc_latch(r);
	if (!vm)
		return 0;
	return vm_register_pio(vm, PORT_RTC_INDEX, 2, rtc_io, r);
}
