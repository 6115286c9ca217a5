/*
 * i8042.c - the keyboard controller, for its reset line: command 0xfe (or a
 * write to the output port with bit 0 clear) resets the machine, which ends
 * godwit with EXIT_REBOOT.  It answers the self-tests Linux's i8042 driver
 * runs, and reports no keyboard or mouse behind it.  Port 0x92 (fast A20 /
 * reset) is handled here too.
 *
 * Its guest-visible state (command byte, output buffer, a command waiting
 * for its data byte) is saved by i8042_dev_ops.
 */
#include <errno.h>
#include <string.h>

#include "godwit/common.h"
#include "godwit/devices.h"
#include "godwit/layout.h"
#include "godwit/log.h"
#include "godwit/vm.h"

#define STS_OBF     0x01
#define STS_SYS     0x04
#define STS_CMD     0x08

static void i8042_reply(struct i8042 *k, uint8_t v)
{
	k->out = v;
	k->out_full = true;
}

/* The guest pulsed the reset line.  Without a VM (unit tests) nothing happens. */
static void i8042_reset_line(struct i8042 *k)
{
	if (k->vm)
		vm_request_exit(k->vm, EXIT_REBOOT, "guest reset through the keyboard controller");
}

void i8042_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write)
{
	struct i8042 *k = opaque;
	uint8_t *p = data;
	uint8_t v = p[0];

	pthread_mutex_lock(&k->lock);
	if (addr == 0x92) {
		if (is_write && (v & 1))
			i8042_reset_line(k);
		else if (!is_write)
			p[0] = 0x02;                  /* A20 enabled */
	} else if (addr == PORT_I8042_CMD) {
		if (!is_write) {
			p[0] = (uint8_t)(STS_SYS | (k->out_full ? STS_OBF : 0));
		} else {
			k->pending_cmd = 0;
			switch (v) {
			case 0x20: i8042_reply(k, k->cmd_byte); break;  /* read command byte */
			case 0x60: case 0xd1: case 0xd2: case 0xd3: case 0xd4:
				k->pending_cmd = v; break;               /* a data byte follows */
			case 0xaa: i8042_reply(k, 0x55); break;         /* controller self-test */
			case 0xa9: case 0xab: i8042_reply(k, 0x00); break; /* port tests */
			case 0xfe: i8042_reset_line(k); break;               /* pulse reset line */
			default: break;
			}
		}
	} else if (addr == PORT_I8042_DATA) {
		if (!is_write) {
			p[0] = k->out;
			k->out_full = false;
		} else if (k->pending_cmd == 0x60) {
			k->cmd_byte = v;
			k->pending_cmd = 0;
		} else if (k->pending_cmd == 0xd1) {
			if (!(v & 1))
				i8042_reset_line(k);
			k->pending_cmd = 0;
		} else if (k->pending_cmd == 0xd2 || k->pending_cmd == 0xd3) {
			i8042_reply(k, v);                 /* loop back as if from a device */
			k->pending_cmd = 0;
		} else {
			/* A byte for a keyboard that is not there: answer nothing. */
			k->pending_cmd = 0;
		}
	}
	for (unsigned int i = 1; i < len; i++)
		if (!is_write)
			p[i] = 0xff;
	pthread_mutex_unlock(&k->lock);
}

/*
 * Saved state, version 1.  Tags are never renumbered or reused.  The status
 * register is computed (SYS, OBF from the output buffer), so it is not saved.
 */
#define I8042_F_CMD_BYTE 1  /* u8: the controller command byte */
#define I8042_F_OUT      2  /* u8: the output buffer */
#define I8042_F_OUT_FULL 3  /* u8 0/1: the output buffer holds a byte (OBF) */
#define I8042_F_PENDING  4  /* u8: a command waiting for its data byte: 0, 0x60, 0xd1-0xd4 */

static bool i8042_pending_valid(uint8_t c)
{
	return c == 0 || c == 0x60 || (c >= 0xd1 && c <= 0xd4);
}

struct i8042_image {
	uint8_t cmd_byte, out, out_full, pending;
};
#define IMG struct i8042_image
static const struct state_desc i8042_fields[] = {
	STATE_INT(I8042_F_CMD_BYTE, IMG, cmd_byte, STATE_ANY, 1),
	STATE_INT(I8042_F_OUT, IMG, out, STATE_ANY, 1),
	STATE_INT(I8042_F_OUT_FULL, IMG, out_full, 1, 1),
	STATE_INT(I8042_F_PENDING, IMG, pending, STATE_ANY, 1),
};
#undef IMG

static int i8042_save(struct dev *d, struct state_out *out)
{
	struct i8042 *k = d->priv;
	struct i8042_image img;

	pthread_mutex_lock(&k->lock);
	img = (struct i8042_image){ k->cmd_byte, k->out, k->out_full, k->pending_cmd };
	pthread_mutex_unlock(&k->lock);
	return state_save_fields(out, i8042_fields, ARRAY_SIZE(i8042_fields), &img);
}

/* Checks every field before it changes anything: a failed load leaves k as it was. */
static int i8042_load(struct dev *d, struct state_in *in, uint16_t version)
{
	struct i8042 *k = d->priv;
	struct i8042_image v = { 0 };
	int ret;

	ret = state_load_fields(in, i8042_fields, ARRAY_SIZE(i8042_fields), &v, version);
	if (ret)
		return ret;
	if (!i8042_pending_valid(v.pending))
		return -EINVAL;

	pthread_mutex_lock(&k->lock);
	k->cmd_byte = v.cmd_byte;
	k->out = v.out;
	k->out_full = v.out_full;
	k->pending_cmd = v.pending;
	pthread_mutex_unlock(&k->lock);
	return 0;
}

static void i8042_regs_reset(struct i8042 *k)
{
	k->cmd_byte = 0x30; /* both ports disabled, no interrupts */
	k->status = k->out = k->pending_cmd = 0;
	k->out_full = false;
}

static void i8042_dev_reset(struct dev *d)
{
	struct i8042 *k = d->priv;

	pthread_mutex_lock(&k->lock);
	i8042_regs_reset(k);
	pthread_mutex_unlock(&k->lock);
}

/* Version history: 1 - first layout. */
const struct dev_ops i8042_dev_ops = {
	.name = "i8042",
	.version = 1,
	.min_version = 1,
	.reset = i8042_dev_reset,
	.save = i8042_save,
	.load = i8042_load,
};

/*
 * i8042_init - the controller in its power-on state; registers ports 0x60,
 * 0x64 and 0x92 when vm is not NULL.  Returns 0 or -errno.
 */
int i8042_init(struct i8042 *k, struct vm *vm)
{
	int ret;

	memset(k, 0, sizeof(*k));
	pthread_mutex_init(&k->lock, NULL);
	k->vm = vm;
	i8042_regs_reset(k);
	if (!vm)
		return 0;
	ret = vm_register_pio(vm, PORT_I8042_DATA, 1, i8042_io, k);
	if (!ret)
		ret = vm_register_pio(vm, PORT_I8042_CMD, 1, i8042_io, k);
	if (!ret)
		ret = vm_register_pio(vm, 0x92, 1, i8042_io, k);
	return ret;
}
