/*
 * test_devices.c - the device registry (dev.c) and the save/load of every
 * platform device.
 *
 * The state tests are generic over `cases[]`: each platform device is
 * created without a VM, driven into a non-trivial state through its own
 * port handler, saved, loaded into a fresh instance and saved again.  The
 * two encodings must be byte-identical and the guest-visible state (read
 * back through the port handlers of both) the same.  Truncated, corrupted,
 * unknown-tag and wrong-version loads are checked on every device too.  A
 * new device type gets all of this with one line in cases[] (plus its
 * create/drive/probe helpers); platform_devices_all_in_table fails until
 * that line exists.
 *
 * Tag numbers in the hostile-field table are the documented stream format
 * (docs/devices.md): if a tag is ever renumbered, these tests notice.
 */
#include <errno.h>
#include <stdlib.h>

#include "unit.h"
#include "godwit/dev.h"
#include "godwit/devices.h"
#include "godwit/layout.h"
#include "godwit/state.h"
#include "godwit/vm.h"

/* ---- frozen clocks: saves are byte-identical only if time stands still ------- */

static struct timespec fake_real = { 1700000000, 123456789 };
static struct timespec fake_mono = { 12345, 678900000 };

static int fake_clock(clockid_t clk, struct timespec *ts)
{
	*ts = clk == CLOCK_REALTIME ? fake_real : fake_mono;
	return 0;
}

static void fake_real_add_ns(long ns)
{
	fake_real.tv_nsec += ns;
	while (fake_real.tv_nsec >= 1000000000L) {
		fake_real.tv_sec++;
		fake_real.tv_nsec -= 1000000000L;
	}
}

static void fake_clocks_reset(void)
{
	fake_real = (struct timespec){ 1700000000, 123456789 };
	fake_mono = (struct timespec){ 12345, 678900000 };
}

/* ---- port helpers ----------------------------------------------------------- */

static uint32_t pin(io_fn fn, void *o, uint64_t port, unsigned int len)
{
	uint8_t b[4] = { 0 };

	fn(o, port, b, len, false);
	return (uint32_t)(b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24);
}

static void pout(io_fn fn, void *o, uint64_t port, unsigned int len, uint32_t v)
{
	uint8_t b[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };

	fn(o, port, b, len, true);
}

/* What a probe read, in order. */
struct transcript {
	uint8_t b[16384];
	size_t n;
};

static void tpush(struct transcript *t, uint32_t v)
{
	if (t->n + 4 <= sizeof(t->b)) {
		memcpy(t->b + t->n, &v, 4);
		t->n += 4;
	}
}

/* ---- per-device helpers: create (vm == NULL), drive, probe ------------------- */

#define COM(off) (PORT_COM1 + (off))

static void serial_create(void *o)
{
	CHECK_EQ(serial_init(o, NULL, PORT_COM1, IRQ_COM1, -1), 0);
}

static void serial_drive(void *o)
{
	struct serial *s = o;

	pout(serial_io, s, COM(3), 1, 0x80);          /* DLAB */
	pout(serial_io, s, COM(0), 1, 0x01);          /* DLL: 115200 */
	pout(serial_io, s, COM(1), 1, 0x02);          /* DLM */
	pout(serial_io, s, COM(3), 1, 0x1b);          /* 8E1 */
	pout(serial_io, s, COM(2), 1, 0xc7);          /* FIFO on, clear, 14-byte trigger */
	pout(serial_io, s, COM(7), 1, 0x5a);          /* scratch */
	pout(serial_io, s, COM(4), 1, 0x1b);          /* loopback, DTR, RTS, OUT2 */
	pout(serial_io, s, COM(0), 1, 'h');           /* into the RX FIFO by loopback */
	pout(serial_io, s, COM(0), 1, 'i');
	pout(serial_io, s, COM(0), 1, '!');
	CHECK_EQ(pin(serial_io, s, COM(0), 1), 'h');  /* the ring's head moves off 0 */
	CHECK_EQ(serial_input(s, (const uint8_t *)"xyz", 3), 3);
	pout(serial_io, s, COM(1), 1, 0x07);          /* IER: RDI, THRI, RLSI */
	CHECK_EQ(s->irq_level, 1);
}

static void serial_probe(void *o, struct transcript *t)
{
	struct serial *s = o;
	uint32_t lcr = pin(serial_io, s, COM(3), 1);

	tpush(t, (uint32_t)s->irq_level);             /* the IRQ line is guest-visible */
	tpush(t, lcr);
	tpush(t, pin(serial_io, s, COM(1), 1));
	tpush(t, pin(serial_io, s, COM(4), 1));
	tpush(t, pin(serial_io, s, COM(6), 1));
	tpush(t, pin(serial_io, s, COM(7), 1));
	tpush(t, pin(serial_io, s, COM(5), 1));
	pout(serial_io, s, COM(3), 1, lcr | 0x80);
	tpush(t, pin(serial_io, s, COM(0), 1));
	tpush(t, pin(serial_io, s, COM(1), 1));
	pout(serial_io, s, COM(3), 1, lcr & 0x7f);
	tpush(t, pin(serial_io, s, COM(2), 1));       /* IIR, then again once THRI is acked */
	tpush(t, pin(serial_io, s, COM(2), 1));
	for (int i = 0; i < 5000 && (pin(serial_io, s, COM(5), 1) & 1); i++)
		tpush(t, pin(serial_io, s, COM(0), 1));
	tpush(t, pin(serial_io, s, COM(2), 1));
	tpush(t, (uint32_t)s->irq_level);
	pout(serial_io, s, COM(3), 1, lcr);
}

static void rtc_create(void *o)
{
	struct rtc *r = o;

	CHECK_EQ(rtc_init(r, NULL), 0);
	r->clock = fake_clock;
	pout(rtc_io, r, PORT_RTC_INDEX, 1, 0);        /* latch from the frozen clock */
	(void)pin(rtc_io, r, PORT_RTC_DATA, 1);
}

static void rtc_set(struct rtc *r, uint8_t idx, uint8_t v)
{
	pout(rtc_io, r, PORT_RTC_INDEX, 1, idx);
	pout(rtc_io, r, PORT_RTC_DATA, 1, v);
}

static uint8_t rtc_get(struct rtc *r, uint8_t idx)
{
	pout(rtc_io, r, PORT_RTC_INDEX, 1, idx);
	return (uint8_t)pin(rtc_io, r, PORT_RTC_DATA, 1);
}

static void rtc_drive(void *o)
{
	struct rtc *r = o;

	for (unsigned int i = 0x0e; i < 0x80; i++)
		if (i != 0x32)
			rtc_set(r, (uint8_t)i, (uint8_t)(i * 37 + 1));
	/* Set the clock to 2031-05-17 12:34:56 (BCD): a new guest-time offset. */
	rtc_set(r, 0x0b, 0x82);
	rtc_set(r, 0x00, 0x56);
	rtc_set(r, 0x02, 0x34);
	rtc_set(r, 0x04, 0x12);
	rtc_set(r, 0x07, 0x17);
	rtc_set(r, 0x08, 0x05);
	rtc_set(r, 0x09, 0x31);
	rtc_set(r, 0x32, 0x20);
	rtc_set(r, 0x0b, 0x02);
	CHECK_EQ(rtc_get(r, 0x00), 0x56);
	CHECK_EQ(rtc_get(r, 0x09), 0x31);
	pout(rtc_io, r, PORT_RTC_INDEX, 1, 0x3c);     /* leave a RAM byte selected */
}

static void rtc_probe(void *o, struct transcript *t)
{
	struct rtc *r = o;

	tpush(t, pin(rtc_io, r, PORT_RTC_DATA, 1));  /* at the selected index */
	tpush(t, pin(rtc_io, r, PORT_RTC_INDEX, 1));
	for (unsigned int i = 0; i < 0x80; i++)
		tpush(t, rtc_get(r, (uint8_t)i));
}

static void i8042_create(void *o)
{
	CHECK_EQ(i8042_init(o, NULL), 0);
}

static void i8042_drive(void *o)
{
	pout(i8042_io, o, PORT_I8042_CMD, 1, 0x60);   /* write command byte */
	pout(i8042_io, o, PORT_I8042_DATA, 1, 0x47);
	pout(i8042_io, o, PORT_I8042_CMD, 1, 0xaa);   /* self-test: 0x55 in the output buffer */
	pout(i8042_io, o, PORT_I8042_CMD, 1, 0xd3);   /* a command waiting for its data byte */
}

static void i8042_probe(void *o, struct transcript *t)
{
	tpush(t, pin(i8042_io, o, PORT_I8042_CMD, 1));  /* status: OBF */
	tpush(t, pin(i8042_io, o, PORT_I8042_DATA, 1));
	tpush(t, pin(i8042_io, o, PORT_I8042_CMD, 1));
	pout(i8042_io, o, PORT_I8042_DATA, 1, 0x99);    /* completes a pending 0xd2/0xd3 */
	tpush(t, pin(i8042_io, o, PORT_I8042_CMD, 1));
	tpush(t, pin(i8042_io, o, PORT_I8042_DATA, 1));
	pout(i8042_io, o, PORT_I8042_CMD, 1, 0x20);     /* read the command byte */
	tpush(t, pin(i8042_io, o, PORT_I8042_DATA, 1));
	tpush(t, pin(i8042_io, o, 0x92, 1));
}

static void acpi_pm_create(void *o)
{
	struct acpi_pm *p = o;

	CHECK_EQ(acpi_pm_init(p, NULL), 0);
	p->clock = fake_clock;
}

static void acpi_pm_drive(void *o)
{
	pout(acpi_pm_io, o, PORT_ACPI_PM1A_EVT + 2, 2, 0x0121);  /* PM1a_EN */
	pout(acpi_pm_io, o, PORT_ACPI_PM1A_CNT, 2, 1u << 10);    /* SLP_TYP 1, no SLP_EN */
	/* The frozen monotonic clock moves while the device runs: an offset builds up. */
	fake_mono.tv_sec += 3;
}

static void acpi_pm_probe(void *o, struct transcript *t)
{
	tpush(t, pin(acpi_pm_io, o, PORT_ACPI_PM1A_EVT, 2));
	tpush(t, pin(acpi_pm_io, o, PORT_ACPI_PM1A_EVT + 2, 2));
	tpush(t, pin(acpi_pm_io, o, PORT_ACPI_PM1A_CNT, 2));
	tpush(t, pin(acpi_pm_io, o, PORT_ACPI_PM_TMR, 4));
	pout(acpi_pm_io, o, PORT_ACPI_PM1A_EVT, 2, 0xffff);     /* write-1-to-clear */
	tpush(t, pin(acpi_pm_io, o, PORT_ACPI_PM1A_EVT, 2));
}

/* ---- the table ------------------------------------------------------------------- */

struct dev_case {
	const struct dev_ops *ops;
	size_t size;                                       /* the instance's struct */
	void (*create)(void *o);                           /* init with vm == NULL */
	void (*drive)(void *o);                            /* a non-trivial state */
	void (*probe)(void *o, struct transcript *t);      /* guest-visible state, via ports */
	bool reset_is_power_on;                            /* reset() gives the created state */
};

#define DEV_CASE(type, reset_po) \
	{ &type##_dev_ops, sizeof(struct type), type##_create, type##_drive, type##_probe, reset_po }

static const struct dev_case cases[] = {
	DEV_CASE(serial, true),
	DEV_CASE(rtc, false),            /* CMOS RAM and the clock are battery-backed */
	DEV_CASE(i8042, true),
	DEV_CASE(acpi_pm, true),
};

/* An instance with its registry entry, as platform_init() would make it. */
struct inst {
	void *o;
	struct dev dev;
};

static void inst_new(const struct dev_case *c, struct inst *i)
{
	i->o = calloc(1, c->size);
	c->create(i->o);
	i->dev = (struct dev){ .ops = c->ops, .priv = i->o };
}

static void inst_free(struct inst *i)
{
	free(i->o);
	i->o = NULL;
}

static void save(struct inst *i, struct state_out *o)
{
	int ret;

	state_out_init(o);
	ret = i->dev.ops->save(&i->dev, o);
	if (ret || o->err)
		unit_fail(__FILE__, __LINE__, "%s: save: %d (err %d)", i->dev.ops->name, ret, o->err);
}

/* Load from a heap copy of exactly len bytes (so ASan sees any overread). */
static int load_exact(struct inst *i, const uint8_t *p, size_t len, uint16_t version)
{
	uint8_t *c = len ? malloc(len) : NULL;
	struct state_in in;
	int ret;

	if (len)
		memcpy(c, p, len);
	state_in_init(&in, c, len);
	ret = dev_load(&i->dev, &in, version);
	free(c);
	return ret;
}

static bool same(const struct state_out *a, const struct state_out *b)
{
	return a->len == b->len && (!a->len || !memcmp(a->buf, b->buf, a->len));
}

static void probe(const struct dev_case *c, struct inst *i, struct transcript *t)
{
	t->n = 0;
	c->probe(i->o, t);
}

/* The driven state of case c, saved. */
static void driven_save(const struct dev_case *c, struct state_out *enc)
{
	struct inst a;

	inst_new(c, &a);
	c->drive(a.o);
	save(&a, enc);
	inst_free(&a);
}

/*
 * A load that failed must leave the fresh device as it was: same save, and
 * the same answers through its ports as an untouched fresh device.  The
 * probe changes the device: one check per instance.
 */
static void check_untouched(const struct dev_case *c, struct inst *i, const struct state_out *base,
			    const char *what, size_t arg)
{
	static struct transcript t1, t2;
	struct state_out now;
	struct inst ref;

	save(i, &now);
	if (!same(&now, base))
		unit_fail(__FILE__, __LINE__, "%s: %s %zu: a failed load changed the device",
			  c->ops->name, what, arg);
	state_out_free(&now);
	inst_new(c, &ref);
	probe(c, i, &t1);
	probe(c, &ref, &t2);
	if (t1.n != t2.n || memcmp(t1.b, t2.b, t1.n))
		unit_fail(__FILE__, __LINE__, "%s: %s %zu: ports differ from a fresh device",
			  c->ops->name, what, arg);
	inst_free(&ref);
}

/* ---- generic tests over cases[] ------------------------------------------------- */

TEST(dev_save_load_save_identical)
{
	static struct transcript ta, tb;

	for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
		const struct dev_case *c = &cases[k];
		struct state_out e1, e2, e0, e3, e4;
		struct inst a, b, fresh;

		fake_clocks_reset();
		inst_new(c, &fresh);
		save(&fresh, &e0);
		inst_new(c, &a);
		c->drive(a.o);
		save(&a, &e1);
		/* The drive reached state that is saved: otherwise this test proves nothing. */
		if (same(&e0, &e1))
			unit_fail(__FILE__, __LINE__, "%s: driven state saves like a fresh one",
				  c->ops->name);
		inst_new(c, &b);
		CHECK_EQ(c->ops->version, 1);
		CHECK_EQ(load_exact(&b, e1.buf, e1.len, c->ops->version), 0);
		save(&b, &e2);
		if (!same(&e1, &e2))
			unit_fail(__FILE__, __LINE__, "%s: save -> load -> save differs (%zu vs %zu bytes)",
				  c->ops->name, e1.len, e2.len);
		probe(c, &a, &ta);
		probe(c, &b, &tb);
		if (ta.n != tb.n || memcmp(ta.b, tb.b, ta.n))
			unit_fail(__FILE__, __LINE__, "%s: port-visible state differs after load",
				  c->ops->name);
		/* The probes changed both the same way: still identical. */
		save(&a, &e3);
		save(&b, &e4);
		if (!same(&e3, &e4))
			unit_fail(__FILE__, __LINE__, "%s: states diverge after the same port accesses",
				  c->ops->name);
		state_out_free(&e0);
		state_out_free(&e1);
		state_out_free(&e2);
		state_out_free(&e3);
		state_out_free(&e4);
		inst_free(&a);
		inst_free(&b);
		inst_free(&fresh);
	}
}

/* Offsets where each field of enc starts, and its count. */
static size_t field_starts(const struct state_out *enc, size_t *starts, size_t max)
{
	struct state_in in;
	struct state_field f;
	size_t n = 0;

	state_in_init(&in, enc->buf, enc->len);
	while (n < max) {
		size_t off = in.off;

		if (state_next(&in, &f) <= 0)
			break;
		starts[n++] = off;
	}
	return n;
}

TEST(dev_load_truncated)
{
	for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
		const struct dev_case *c = &cases[k];
		struct state_out enc, base;
		size_t starts[64], nf;

		fake_clocks_reset();
		driven_save(c, &enc);
		nf = field_starts(&enc, starts, ARRAY_SIZE(starts));
		for (size_t cut = 0; cut < enc.len; cut++) {
			struct inst b;
			bool boundary = false;
			int ret;

			for (size_t i = 0; i < nf; i++)
				boundary |= starts[i] == cut;
			inst_new(c, &b);
			save(&b, &base);
			ret = load_exact(&b, enc.buf, cut, c->ops->version);
			/*
			 * A cut inside a field is never valid; a cut between fields
			 * drops version-1 fields, which are all required.
			 */
			if (ret != -EBADMSG && ret != -EINVAL)
				unit_fail(__FILE__, __LINE__, "%s: cut at %zu/%zu%s: ret %d",
					  c->ops->name, cut, enc.len, boundary ? " (boundary)" : "", ret);
			else
				check_untouched(c, &b, &base, "cut", cut);
			state_out_free(&base);
			inst_free(&b);
		}
		state_out_free(&enc);
	}
}

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

TEST(dev_load_bit_flips)
{
	for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
		const struct dev_case *c = &cases[k];
		struct state_out enc;
		unsigned int ok = 0, refused = 0;

		fake_clocks_reset();
		driven_save(c, &enc);
		for (int iter = 0; iter < 1500; iter++) {
			uint8_t *bad = malloc(enc.len);
			unsigned int flips = 1 + (unsigned int)(rng() % 3);
			struct state_out base, after, again;
			struct inst b, d;
			static struct transcript t;
			int ret;

			memcpy(bad, enc.buf, enc.len);
			for (unsigned int i = 0; i < flips; i++) {
				uint64_t bit = rng() % (enc.len * 8);

				bad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
			}
			inst_new(c, &b);
			save(&b, &base);
			ret = load_exact(&b, bad, enc.len, c->ops->version);
			if (ret == 0) {
				/* Accepted: then it is a valid state that saves and loads stably. */
				ok++;
				save(&b, &after);
				inst_new(c, &d);
				CHECK_EQ(load_exact(&d, after.buf, after.len, c->ops->version), 0);
				save(&d, &again);
				if (!same(&after, &again))
					unit_fail(__FILE__, __LINE__, "%s: iter %d: accepted state unstable",
						  c->ops->name, iter);
				probe(c, &b, &t);
				state_out_free(&after);
				state_out_free(&again);
				inst_free(&d);
			} else if (ret == -EBADMSG || ret == -EINVAL) {
				refused++;
				check_untouched(c, &b, &base, "flip iter", (size_t)iter);
			} else {
				unit_fail(__FILE__, __LINE__, "%s: iter %d: ret %d", c->ops->name, iter, ret);
			}
			state_out_free(&base);
			inst_free(&b);
			free(bad);
		}
		CHECK(refused > 0);
		CHECK(ok > 0);
		state_out_free(&enc);
	}
}

/*
 * Raw bytes: enc[0..pos), then a field `tag` of len bytes (v little-endian,
 * zeros beyond 8), then the rest of enc.
 */
static void with_field(const struct state_out *enc, struct state_out *out, size_t pos,
		       uint16_t tag, uint32_t len, uint64_t v)
{
	uint8_t *p = malloc(enc->len + 6 + len);

	memcpy(p, enc->buf, pos);
	p[pos] = (uint8_t)tag;
	p[pos + 1] = (uint8_t)(tag >> 8);
	for (unsigned int i = 0; i < 4; i++)
		p[pos + 2 + i] = (uint8_t)(len >> (8 * i));
	for (uint32_t i = 0; i < len; i++)
		p[pos + 6 + i] = i < 8 ? (uint8_t)(v >> (8 * i)) : 0;
	memcpy(p + pos + 6 + len, enc->buf + pos, enc->len - pos);
	out->buf = p;
	out->len = out->cap = enc->len + 6 + len;
	out->err = 0;
}

/*
 * enc with the field `tag` replaced by one of len bytes holding v
 * (little-endian), or dropped if len is UINT32_MAX.
 */
static void replace_field(const struct state_out *enc, struct state_out *out, uint16_t tag,
			  uint32_t len, uint64_t v)
{
	struct state_in in;
	struct state_field f;
	uint8_t *val = calloc(1, len && len != UINT32_MAX ? len : 1);
	bool found = false;

	for (uint32_t i = 0; len != UINT32_MAX && i < len && i < 8; i++)
		val[i] = (uint8_t)(v >> (8 * i));
	state_out_init(out);
	state_in_init(&in, enc->buf, enc->len);
	while (state_next(&in, &f) > 0) {
		if (f.tag != tag) {
			state_put_bytes(out, f.tag, f.val, f.len);
		} else {
			found = true;
			if (len != UINT32_MAX)
				state_put_bytes(out, tag, val, len);
		}
	}
	if (!found)
		unit_fail(__FILE__, __LINE__, "tag %u not in the encoding", tag);
	free(val);
}

TEST(dev_load_skips_unknown_tags)
{
	static const uint16_t unknown[] = { 0x7fff, 0xffff, 0x100, 0 };

	for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
		const struct dev_case *c = &cases[k];
		struct state_out enc, re;
		size_t starts[64], nf;

		fake_clocks_reset();
		driven_save(c, &enc);
		nf = field_starts(&enc, starts, ARRAY_SIZE(starts));
		starts[nf] = enc.len;
		/* An unknown field before, between and after the known ones; empty or not. */
		for (size_t i = 0; i <= nf; i++) {
			for (size_t u = 0; u < ARRAY_SIZE(unknown); u++) {
				struct state_out mod;
				struct inst b;
				int ret;

				with_field(&enc, &mod, starts[i], unknown[u], (uint32_t)(u * 5),
					   0x1122334455667788ull);
				CHECK_EQ(mod.len, enc.len + 6 + u * 5);
				inst_new(c, &b);
				ret = load_exact(&b, mod.buf, mod.len, c->ops->version);
				if (ret)
					unit_fail(__FILE__, __LINE__, "%s: unknown tag %#x at field %zu: %d",
						  c->ops->name, unknown[u], i, ret);
				save(&b, &re);
				if (!same(&re, &enc))
					unit_fail(__FILE__, __LINE__, "%s: unknown tag %#x changed the load",
						  c->ops->name, unknown[u]);
				state_out_free(&re);
				state_out_free(&mod);
				inst_free(&b);
			}
		}
		state_out_free(&enc);
	}
}

TEST(dev_load_refuses_other_versions)
{
	for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
		const struct dev_case *c = &cases[k];
		const uint16_t bad[] = { (uint16_t)(c->ops->version + 1),
					 (uint16_t)(c->ops->min_version - 1), 0xffff };
		struct state_out enc, base;
		struct inst b;

		fake_clocks_reset();
		driven_save(c, &enc);
		CHECK(c->ops->min_version >= 1 && c->ops->min_version <= c->ops->version);
		for (size_t v = 0; v < ARRAY_SIZE(bad); v++) {
			inst_new(c, &b);
			save(&b, &base);
			CHECK(load_exact(&b, enc.buf, enc.len, bad[v]) < 0);
			check_untouched(c, &b, &base, "version", bad[v]);
			state_out_free(&base);
			inst_free(&b);
		}
		inst_new(c, &b);
		CHECK_EQ(load_exact(&b, enc.buf, enc.len, c->ops->version), 0);
		state_out_free(&enc);
		inst_free(&b);
	}
}

/* Every version-1 field is required, and a tag may appear only once. */
TEST(dev_load_missing_or_duplicate_field)
{
	for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
		const struct dev_case *c = &cases[k];
		struct state_out enc;
		struct state_in in;
		struct state_field f;

		fake_clocks_reset();
		driven_save(c, &enc);
		state_in_init(&in, enc.buf, enc.len);
		while (state_next(&in, &f) > 0) {
			struct state_out mod, dup, base;
			struct inst b;

			replace_field(&enc, &mod, f.tag, UINT32_MAX, 0);
			inst_new(c, &b);
			save(&b, &base);
			if (load_exact(&b, mod.buf, mod.len, c->ops->version) != -EBADMSG)
				unit_fail(__FILE__, __LINE__, "%s: load without tag %u did not fail",
					  c->ops->name, f.tag);
			check_untouched(c, &b, &base, "without tag", f.tag);
			inst_free(&b);
			state_out_free(&base);
			inst_new(c, &b);
			save(&b, &base);
			/* The field again, in front of the whole encoding. */
			with_field(&enc, &dup, 0, f.tag, f.len, 0);
			memcpy(dup.buf + 6, f.val, f.len);
			if (load_exact(&b, dup.buf, dup.len, c->ops->version) != -EBADMSG)
				unit_fail(__FILE__, __LINE__, "%s: duplicate tag %u accepted",
					  c->ops->name, f.tag);
			check_untouched(c, &b, &base, "duplicate tag", f.tag);
			state_out_free(&mod);
			state_out_free(&dup);
			state_out_free(&base);
			inst_free(&b);
		}
		state_out_free(&enc);
	}
}

TEST(dev_reset)
{
	for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
		const struct dev_case *c = &cases[k];
		struct state_out e0, e1, e2;
		struct inst a, fresh, b;

		fake_clocks_reset();
		inst_new(c, &a);
		c->drive(a.o);
		inst_new(c, &fresh);
		save(&fresh, &e0);                     /* at the same (frozen) time as a's */
		CHECK(c->ops->reset != NULL);
		c->ops->reset(&a.dev);
		save(&a, &e1);
		if (c->reset_is_power_on && !same(&e0, &e1))
			unit_fail(__FILE__, __LINE__, "%s: reset is not the power-on state",
				  c->ops->name);
		/* Whatever reset leaves is a state that loads. */
		inst_new(c, &b);
		CHECK_EQ(load_exact(&b, e1.buf, e1.len, c->ops->version), 0);
		save(&b, &e2);
		CHECK(same(&e1, &e2));
		state_out_free(&e0);
		state_out_free(&e1);
		state_out_free(&e2);
		inst_free(&a);
		inst_free(&b);
		inst_free(&fresh);
	}
}

/* ---- hostile values, per device (tags as documented in docs/devices.md) -------- */

#define DROP UINT32_MAX
struct bad_field {
	const struct dev_ops *ops;
	uint16_t tag;
	uint32_t len;
	uint64_t v;
	int want;
	const char *what;
};

static const struct bad_field bad_fields[] = {
	{ &serial_dev_ops, 1, 1, 0x10, -EINVAL, "IER reserved bit" },
	{ &serial_dev_ops, 2, 1, 2, -EINVAL, "THRI not 0/1" },
	{ &serial_dev_ops, 3, 2, 0x03, -EBADMSG, "LCR of 2 bytes" },
	{ &serial_dev_ops, 4, 1, 0x20, -EINVAL, "MCR reserved bit" },
	{ &serial_dev_ops, 8, 1, 0x02, -EINVAL, "FCR bit FCR never keeps" },
	{ &serial_dev_ops, 9, 1, 0, -EINVAL, "IRQ level contradicting the registers" },
	{ &serial_dev_ops, 9, 1, 2, -EINVAL, "IRQ level not 0/1" },
	{ &serial_dev_ops, 10, 4097, 0, -EINVAL, "RX FIFO beyond capacity" },
	{ &rtc_dev_ops, 1, 1, 128, -EINVAL, "index 128" },
	{ &rtc_dev_ops, 1, 1, 0xff, -EINVAL, "index 255" },
	{ &rtc_dev_ops, 2, 127, 0, -EBADMSG, "CMOS of 127 bytes" },
	{ &rtc_dev_ops, 2, 129, 0, -EBADMSG, "CMOS of 129 bytes" },
	{ &rtc_dev_ops, 3, 8, 1ull << 41, -EINVAL, "guest time far in the future" },
	{ &rtc_dev_ops, 3, 8, (uint64_t)-(1ll << 41), -EINVAL, "guest time far in the past" },
	{ &rtc_dev_ops, 3, 8, (uint64_t)INT64_MIN, -EINVAL, "guest time INT64_MIN" },
	{ &rtc_dev_ops, 4, 4, 1000000000, -EINVAL, "nanoseconds 1e9" },
	{ &rtc_dev_ops, 4, 8, 5, -EBADMSG, "nanoseconds of 8 bytes" },
	{ &i8042_dev_ops, 3, 1, 2, -EINVAL, "OBF not 0/1" },
	{ &i8042_dev_ops, 4, 1, 0x61, -EINVAL, "pending command that takes no data" },
	{ &i8042_dev_ops, 4, 1, 0xd5, -EINVAL, "pending command 0xd5" },
	{ &i8042_dev_ops, 1, 0, 0, -EBADMSG, "empty command byte" },
	{ &acpi_pm_dev_ops, 1, 2, 0x0002, -EINVAL, "PM1_STS undefined bit" },
	{ &acpi_pm_dev_ops, 2, 1, 0, -EBADMSG, "PM1_EN of 1 byte" },
	{ &acpi_pm_dev_ops, 3, 2, 0x0000, -EINVAL, "PM1_CNT without SCI_EN" },
	{ &acpi_pm_dev_ops, 3, 2, 0x2001, -EINVAL, "PM1_CNT with SLP_EN" },
	{ &acpi_pm_dev_ops, 4, 4, 0x1000000, -EINVAL, "PM timer beyond 24 bits" },
};

TEST(dev_load_refuses_bad_values)
{
	for (size_t k = 0; k < ARRAY_SIZE(bad_fields); k++) {
		const struct bad_field *bf = &bad_fields[k];
		const struct dev_case *c = NULL;
		struct state_out enc, mod, base;
		struct inst b;
		int ret;

		for (size_t j = 0; j < ARRAY_SIZE(cases); j++)
			if (cases[j].ops == bf->ops)
				c = &cases[j];
		if (!c) {
			unit_fail(__FILE__, __LINE__, "%s: no case", bf->ops->name);
			continue;
		}
		fake_clocks_reset();
		driven_save(c, &enc);
		replace_field(&enc, &mod, bf->tag, bf->len, bf->v);
		inst_new(c, &b);
		save(&b, &base);
		ret = load_exact(&b, mod.buf, mod.len, c->ops->version);
		if (ret != bf->want)
			unit_fail(__FILE__, __LINE__, "%s: %s: ret %d, want %d", c->ops->name, bf->what,
				  ret, bf->want);
		check_untouched(c, &b, &base, bf->what, 0);
		state_out_free(&enc);
		state_out_free(&mod);
		state_out_free(&base);
		inst_free(&b);
	}
}

/* ---- device-specific behaviour across a save/load -------------------------------- */

/* The RX FIFO is saved in order, wherever the ring's head is, up to full. */
TEST(serial_fifo_wrapped_and_full)
{
	static uint8_t in[4096];
	struct serial *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
	struct dev da = { .ops = &serial_dev_ops, .priv = a }, db = { .ops = &serial_dev_ops, .priv = b };
	struct state_out enc;
	struct state_in si;
	size_t n;

	CHECK_EQ(serial_init(a, NULL, PORT_COM1, IRQ_COM1, -1), 0);
	CHECK_EQ(serial_init(b, NULL, PORT_COM1, IRQ_COM1, -1), 0);
	for (size_t i = 0; i < sizeof(in); i++)
		in[i] = (uint8_t)(i ^ (i >> 8));
	CHECK_EQ(serial_input(a, in, 3000), 3000);
	for (int i = 0; i < 2500; i++)
		(void)pin(serial_io, a, COM(0), 1);
	n = serial_input(a, in, sizeof(in));                /* wraps, and fills it */
	CHECK_EQ(n, 4096 - 500);
	CHECK_EQ(a->rx_len, 4096);
	CHECK(a->rx_head != 0);
	state_out_init(&enc);
	CHECK_EQ(serial_dev_ops.save(&da, &enc), 0);
	state_in_init(&si, enc.buf, enc.len);
	CHECK_EQ(serial_dev_ops.load(&db, &si, 1), 0);
	CHECK_EQ(b->rx_len, 4096);
	for (int i = 0; i < 4096; i++) {
		uint32_t x = pin(serial_io, a, COM(0), 1), y = pin(serial_io, b, COM(0), 1);

		if (x != y) {
			unit_fail(__FILE__, __LINE__, "byte %d: %u vs %u", i, x, y);
			break;
		}
	}
	CHECK_EQ(pin(serial_io, b, COM(5), 1) & 1, 0);
	state_out_free(&enc);
	free(a);
	free(b);
}

/*
 * The guest's clock is saved as an absolute time: a destination whose host
 * clock is an hour ahead still shows the guest the time it had, and then
 * runs on with the destination's clock.
 */
TEST(rtc_guest_time_absolute)
{
	struct rtc *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
	struct dev da = { .ops = &rtc_dev_ops, .priv = a }, db = { .ops = &rtc_dev_ops, .priv = b };
	struct state_out enc;
	struct state_in si;

	fake_clocks_reset();
	rtc_create(a);
	rtc_drive(a);                                  /* guest clock: 2031-05-17 12:34:56 */
	fake_real.tv_sec += 10;
	CHECK_EQ(rtc_get(a, 0x00), 0x06);              /* ... 12:35:06 */
	state_out_init(&enc);
	CHECK_EQ(rtc_dev_ops.save(&da, &enc), 0);

	fake_real.tv_sec += 3600;                      /* the other host's clock */
	rtc_create(b);
	state_in_init(&si, enc.buf, enc.len);
	CHECK_EQ(rtc_dev_ops.load(&db, &si, 1), 0);
	CHECK_EQ(rtc_get(b, 0x00), 0x06);
	CHECK_EQ(rtc_get(b, 0x02), 0x35);
	CHECK_EQ(rtc_get(b, 0x04), 0x12);
	CHECK_EQ(rtc_get(b, 0x07), 0x17);
	CHECK_EQ(rtc_get(b, 0x09), 0x31);
	CHECK_EQ(rtc_get(b, 0x32), 0x20);
	/*
	 * The guest set :56 at a whole second, so at the save its clock stood at
	 * :06.000000000; the sub-second phase travels: 1 ns short of a second
	 * later it still shows :06, at the second :07.
	 */
	fake_real_add_ns(999999999);
	CHECK_EQ(rtc_get(b, 0x00), 0x06);
	fake_real_add_ns(1);
	CHECK_EQ(rtc_get(b, 0x00), 0x07);
	fake_real.tv_sec += 5;
	CHECK_EQ(rtc_get(b, 0x00), 0x12);
	state_out_free(&enc);
	free(a);
	free(b);
	fake_clocks_reset();
}

/*
 * The PM timer continues from the saved value on a host whose monotonic
 * clock is elsewhere, and then counts at 3.579545 MHz.
 */
TEST(acpi_pm_timer_continuous)
{
	struct acpi_pm *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
	struct dev da = { .ops = &acpi_pm_dev_ops, .priv = a };
	struct dev db = { .ops = &acpi_pm_dev_ops, .priv = b };
	struct state_out enc;
	struct state_in si;
	uint32_t v, w;

	fake_clocks_reset();
	acpi_pm_create(a);
	fake_mono.tv_sec += 7;
	v = pin(acpi_pm_io, a, PORT_ACPI_PM_TMR, 4);
	state_out_init(&enc);
	CHECK_EQ(acpi_pm_dev_ops.save(&da, &enc), 0);

	fake_mono = (struct timespec){ 987654, 321 };  /* the other host's uptime */
	acpi_pm_create(b);
	CHECK(pin(acpi_pm_io, b, PORT_ACPI_PM_TMR, 4) != v);
	state_in_init(&si, enc.buf, enc.len);
	CHECK_EQ(acpi_pm_dev_ops.load(&db, &si, 1), 0);
	CHECK_EQ(pin(acpi_pm_io, b, PORT_ACPI_PM_TMR, 4), v);
	fake_mono.tv_nsec += 1000000;                  /* 1 ms: 3579.545 ticks */
	w = pin(acpi_pm_io, b, PORT_ACPI_PM_TMR, 4);
	CHECK(((w - v) & 0xffffff) == 3579 || ((w - v) & 0xffffff) == 3580);
	CHECK(w <= 0xffffff);
	state_out_free(&enc);
	free(a);
	free(b);
	fake_clocks_reset();
}

/* Without a VM, the reset and power-off writes change nothing and crash nothing. */
TEST(platform_exits_without_vm)
{
	struct i8042 k;
	struct acpi_pm p;

	CHECK_EQ(i8042_init(&k, NULL), 0);
	pout(i8042_io, &k, PORT_I8042_CMD, 1, 0xfe);
	pout(i8042_io, &k, 0x92, 1, 0x01);
	pout(i8042_io, &k, PORT_I8042_CMD, 1, 0xd1);
	pout(i8042_io, &k, PORT_I8042_DATA, 1, 0x00);
	CHECK_EQ(k.pending_cmd, 0);
	CHECK_EQ(acpi_pm_init(&p, NULL), 0);
	pout(acpi_pm_io, &p, PORT_ACPI_PM1A_CNT, 2, ACPI_PM1_SLP_EN | (ACPI_S5_SLP_TYP << 10));
	CHECK_EQ(pin(acpi_pm_io, &p, PORT_ACPI_PM1A_CNT, 2),
		 ACPI_PM1_SCI_EN | (ACPI_S5_SLP_TYP << 10));
}

/* ---- the registry ------------------------------------------------------------------ */

static struct vm reg_vm;
static char calls[64];
static size_t ncalls;
static int fail_quiesce = -1, fail_resume = -1;

static int fake_save(struct dev *d, struct state_out *out) { return 0; }
static int fake_load(struct dev *d, struct state_in *in, uint16_t v) { return 0; }

static void note(char c)
{
	if (ncalls < sizeof(calls) - 1)
		calls[ncalls++] = c;
	calls[ncalls] = 0;
}

static int fake_quiesce(struct dev *d)
{
	note((char)('a' + d->instance));
	return (int)d->instance == fail_quiesce ? -EIO : 0;
}

static int fake_resume(struct dev *d)
{
	note((char)('A' + d->instance));
	return (int)d->instance == fail_resume ? -EAGAIN : 0;
}

static const struct dev_ops ops_full = {
	.name = "fake", .version = 1, .min_version = 1,
	.quiesce = fake_quiesce, .resume = fake_resume, .save = fake_save, .load = fake_load,
};
static const struct dev_ops ops_none = { .name = "nosave", .version = 1 };
static const struct dev_ops ops_save_only = { .name = "saveonly", .version = 1, .save = fake_save };
static const struct dev_ops ops_load_only = { .name = "loadonly", .version = 1, .load = fake_load };
static const struct dev_ops ops_unmig = { .name = "passthrough", .unmigratable = "host device" };
static const struct dev_ops ops_noname = { .version = 1, .save = fake_save, .load = fake_load };
static const struct dev_ops ops_v0 = { .name = "v0", .save = fake_save, .load = fake_load };
static const struct dev_ops ops_minv = {
	.name = "minv", .version = 2, .min_version = 3, .save = fake_save, .load = fake_load,
};

TEST(dev_register_rules)
{
	struct dev d[8];
	struct dev *it;

	memset(&reg_vm, 0, sizeof(reg_vm));
	memset(d, 0, sizeof(d));
	CHECK(dev_first(&reg_vm) == NULL);
	CHECK_EQ(dev_register(&reg_vm, &d[0], &ops_none, NULL, 0), -EINVAL);
	CHECK_EQ(dev_register(&reg_vm, &d[0], &ops_save_only, NULL, 0), -EINVAL);
	CHECK_EQ(dev_register(&reg_vm, &d[0], &ops_load_only, NULL, 0), -EINVAL);
	CHECK_EQ(dev_register(&reg_vm, &d[0], &ops_noname, NULL, 0), -EINVAL);
	CHECK_EQ(dev_register(&reg_vm, &d[0], &ops_v0, NULL, 0), -EINVAL);
	CHECK_EQ(dev_register(&reg_vm, &d[0], &ops_minv, NULL, 0), -EINVAL);
	CHECK_EQ(dev_register(&reg_vm, &d[0], NULL, NULL, 0), -EINVAL);
	CHECK(dev_first(&reg_vm) == NULL);              /* refusals leave no trace */

	CHECK_EQ(dev_register(&reg_vm, &d[0], &ops_full, (void *)1, 0), 0);
	CHECK_EQ(dev_register(&reg_vm, &d[1], &ops_unmig, (void *)2, 0), 0);
	CHECK_EQ(dev_register(&reg_vm, &d[2], &ops_full, (void *)3, 1), 0);
	CHECK_EQ(dev_register(&reg_vm, &d[3], &ops_full, NULL, 1), -EINVAL);   /* id taken */
	CHECK_EQ(dev_register(&reg_vm, &d[2], &ops_full, NULL, 2), -EINVAL);   /* twice */
	CHECK_EQ(dev_register(&reg_vm, &d[3], &ops_full, (void *)4, 2), 0);

	it = dev_first(&reg_vm);
	CHECK(it == &d[0] && it->ops == &ops_full && it->priv == (void *)1 && it->instance == 0);
	it = it ? it->next : NULL;
	CHECK(it == &d[1] && it->ops == &ops_unmig && it->priv == (void *)2);
	it = it ? it->next : NULL;
	CHECK(it == &d[2] && it->instance == 1);
	it = it ? it->next : NULL;
	CHECK(it == &d[3] && it->instance == 2);
	CHECK(it && it->next == NULL);
	memset(&reg_vm, 0, sizeof(reg_vm));
}

TEST(dev_quiesce_resume_all)
{
	struct dev d[4];

	memset(&reg_vm, 0, sizeof(reg_vm));
	memset(d, 0, sizeof(d));
	CHECK_EQ(dev_register(&reg_vm, &d[0], &ops_full, NULL, 0), 0);
	CHECK_EQ(dev_register(&reg_vm, &d[1], &ops_unmig, NULL, 0), 0);  /* no ops: skipped */
	CHECK_EQ(dev_register(&reg_vm, &d[2], &ops_full, NULL, 1), 0);
	CHECK_EQ(dev_register(&reg_vm, &d[3], &ops_full, NULL, 2), 0);

	ncalls = 0;
	fail_quiesce = fail_resume = -1;
	CHECK_EQ(dev_quiesce_all(&reg_vm), 0);
	CHECK_EQ(dev_resume_all(&reg_vm), 0);
	CHECK_STR(calls, "abcABC");

	ncalls = 0;
	fail_quiesce = 1;
	CHECK_EQ(dev_quiesce_all(&reg_vm), -EIO);       /* stops at the failing device */
	CHECK_STR(calls, "ab");

	ncalls = 0;
	fail_resume = 1;
	CHECK_EQ(dev_resume_all(&reg_vm), -EAGAIN);     /* first error, but all resumed */
	CHECK_STR(calls, "ABC");
	fail_quiesce = fail_resume = -1;

	memset(&reg_vm, 0, sizeof(reg_vm));
	CHECK_EQ(dev_quiesce_all(&reg_vm), 0);          /* no devices */
	CHECK_EQ(dev_resume_all(&reg_vm), 0);
}

/* ---- platform_init: every VM has the platform devices, in a fixed order ------------ */

static struct vm pvm_a, pvm_b;

static int platform_vm(struct vm *vm)
{
	memset(vm, 0, sizeof(*vm));
	vm->vm_fd = -1;
	vm->kvm_fd = -1;
	return platform_init(vm, -1);
}

TEST(platform_registers_in_order)
{
	static const char *const names[] = { "serial", "rtc", "i8042", "acpi-pm" };
	struct dev other = { 0 }, *d;
	size_t i = 0;

	CHECK_EQ(platform_vm(&pvm_a), 0);
	d = dev_first(&pvm_a);
	for (size_t k = 0; k < ARRAY_SIZE(names); k++) {
		/* Devices of others (the PCI bus) may sit between; the order must hold. */
		while (d && strcmp(d->ops->name, names[k]))
			d = d->next;
		if (!d) {
			unit_fail(__FILE__, __LINE__, "%s missing or out of order", names[k]);
			break;
		}
		CHECK_EQ(d->instance, 0);
		CHECK_EQ(d->ops->version, 1);
		i++;
		d = d->next;
	}
	CHECK_EQ(i, ARRAY_SIZE(names));
	d = dev_first(&pvm_a);
	CHECK(d && d->priv == &pvm_a.dev->com1);
	/* platform_destroy takes its own devices off the list, not others'. */
	CHECK_EQ(dev_register(&pvm_a, &other, &ops_unmig, NULL, 7), 0);
	platform_destroy(&pvm_a);
	CHECK(pvm_a.dev == NULL);
	CHECK(dev_first(&pvm_a) == &other && other.next == NULL);
}

static const struct dev_case *case_for(const struct dev_ops *ops)
{
	for (size_t j = 0; j < ARRAY_SIZE(cases); j++)
		if (cases[j].ops == ops)
			return &cases[j];
	return NULL;
}

/*
 * Devices platform_init() registers whose state tests live elsewhere (their
 * ops are private to their file); platform_vm_roundtrip still covers them.
 */
static const char *const not_in_table[] = {
	"pci-bus",       /* src/devices/pci.c */
};

/* A device platform_init() registers but cases[] does not test is a failure. */
TEST(platform_devices_all_in_table)
{
	CHECK_EQ(platform_vm(&pvm_a), 0);
	for (struct dev *d = dev_first(&pvm_a); d; d = d->next) {
		bool exempt = false;

		for (size_t i = 0; i < ARRAY_SIZE(not_in_table); i++)
			exempt |= !strcmp(d->ops->name, not_in_table[i]);
		if (!exempt && !case_for(d->ops))
			unit_fail(__FILE__, __LINE__, "device %s has no line in cases[]",
				  d->ops->name);
	}
	platform_destroy(&pvm_a);
}

/*
 * The registry's view: walk one VM's device list, save each device, load
 * it into the device with the same (name, instance) of a second VM, save
 * that again.  A device added to platform_init() is covered automatically.
 */
TEST(platform_vm_roundtrip)
{
	unsigned int n = 0;

	fake_clocks_reset();
	CHECK_EQ(platform_vm(&pvm_a), 0);
	CHECK_EQ(platform_vm(&pvm_b), 0);
	if (!pvm_a.dev || !pvm_b.dev)
		return;
	pvm_a.dev->rtc.clock = pvm_b.dev->rtc.clock = fake_clock;
	pvm_a.dev->pm.clock = pvm_b.dev->pm.clock = fake_clock;
	/* Drive the source VM's devices that the table knows how to drive. */
	for (struct dev *d = dev_first(&pvm_a); d; d = d->next) {
		const struct dev_case *c = case_for(d->ops);

		if (c && d->ops != &serial_dev_ops)   /* serial would raise a KVM IRQ line */
			c->drive(d->priv);
	}
	for (struct dev *d = dev_first(&pvm_a); d; d = d->next) {
		struct state_out e1, e2;
		struct state_in in;
		struct dev *t;

		if (d->ops->unmigratable)
			continue;
		for (t = dev_first(&pvm_b); t; t = t->next)
			if (!strcmp(t->ops->name, d->ops->name) && t->instance == d->instance)
				break;
		if (!t) {
			unit_fail(__FILE__, __LINE__, "%s.%u missing on the destination",
				  d->ops->name, d->instance);
			continue;
		}
		state_out_init(&e1);
		state_out_init(&e2);
		CHECK_EQ(d->ops->save(d, &e1), 0);
		state_in_init(&in, e1.buf, e1.len);
		CHECK_EQ(t->ops->load(t, &in, d->ops->version), 0);
		CHECK_EQ(t->ops->save(t, &e2), 0);
		if (!same(&e1, &e2))
			unit_fail(__FILE__, __LINE__, "%s: save -> load -> save differs", d->ops->name);
		state_out_free(&e1);
		state_out_free(&e2);
		n++;
	}
	CHECK(n >= 4);
	platform_destroy(&pvm_a);
	platform_destroy(&pvm_b);
	fake_clocks_reset();
}
