/*
 * i8042.c - the keyboard controller, for its reset line: command 0xfe (or a
 * write to the output port with bit 0 clear) resets the machine, which ends
 * godwit with EXIT_REBOOT.  It answers the self-tests Linux's i8042 driver
 * runs, and reports no keyboard or mouse behind it.  Port 0x92 (fast A20 /
 * reset) is handled here too.
 */
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

static void i8042_reset(struct i8042 *k)
{
	vm_request_exit(k->vm, EXIT_REBOOT, "guest reset through the keyboard controller");
}

static void i8042_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write)
{
	struct i8042 *k = opaque;
	uint8_t *p = data;
	uint8_t v = p[0];

	pthread_mutex_lock(&k->lock);
	if (addr == 0x92) {
		if (is_write && (v & 1))
			i8042_reset(k);
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
			case 0xfe: i8042_reset(k); break;               /* pulse reset line */
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
				i8042_reset(k);
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

int i8042_init(struct i8042 *k, struct vm *vm)
{
	int ret;

	memset(k, 0, sizeof(*k));
	pthread_mutex_init(&k->lock, NULL);
	k->vm = vm;
	k->cmd_byte = 0x30; /* both ports disabled, no interrupts */
	ret = vm_register_pio(vm, PORT_I8042_DATA, 1, i8042_io, k);
	if (!ret)
		ret = vm_register_pio(vm, PORT_I8042_CMD, 1, i8042_io, k);
	if (!ret)
		ret = vm_register_pio(vm, 0x92, 1, i8042_io, k);
	return ret;
}
