/*
 * serial.c - a 16550A UART: the guest console.  Transmitted bytes go to an
 * fd (stdout), received bytes come from the loop thread via serial_input().
 * Enough of the chip for Linux's 8250 driver to detect a 16550A (scratch
 * register, loopback, FIFO bits in IIR) and to run interrupt-driven.
 *
 * Migration: serial_dev_ops saves the registers, the RX FIFO and the IRQ
 * level field by field (tags below serial_input()).
 *
 * Locking: s->lock; the port handler runs on vCPU threads, serial_input()
 * on the loop thread.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "godwit/devices.h"
#include "godwit/log.h"
#include "godwit/vm.h"

#define UART_RX   0 /* in, DLAB=0 */
#define UART_TX   0 /* out, DLAB=0 */
#define UART_DLL  0 /* DLAB=1 */
#define UART_IER  1
#define UART_DLM  1 /* DLAB=1 */
#define UART_IIR  2 /* in */
#define UART_FCR  2 /* out */
#define UART_LCR  3
#define UART_MCR  4
#define UART_LSR  5
#define UART_MSR  6
#define UART_SCR  7

#define IER_RDI   0x01
#define IER_THRI  0x02
#define IER_RLSI  0x04
#define IER_MSI   0x08
#define IIR_NO_INT 0x01
#define IIR_THRI  0x02
#define IIR_RDI   0x04
#define IIR_FIFO  0xc0
#define LCR_DLAB  0x80
#define MCR_LOOP  0x10
#define LSR_DR    0x01
#define LSR_THRE  0x20
#define LSR_TEMT  0x40
#define FCR_ENABLE 0x01
#define FCR_CLEAR_RX 0x02

static uint8_t serial_iir(struct serial *s)
{
	uint8_t fifo = (s->fcr & FCR_ENABLE) ? IIR_FIFO : 0;

	if ((s->ier & IER_RDI) && s->rx_len)
		return IIR_RDI | fifo;
	if ((s->ier & IER_THRI) && s->iir_thri)
		return IIR_THRI | fifo;
	return IIR_NO_INT | fifo;
}

/* Under s->lock: bring the IRQ line in line with the pending interrupts. */
static void serial_update_irq(struct serial *s)
{
	int level = !(serial_iir(s) & IIR_NO_INT);

	if (level != s->irq_level) {
		s->irq_level = level;
		if (s->vm)
			(void)vm_irq_line(s->vm, s->irq, level);
	}
}

static void serial_rx_push(struct serial *s, uint8_t c)
{
	if (s->rx_len == sizeof(s->rx))
		return; /* overrun: the byte is lost, as on hardware */
	s->rx[(s->rx_head + s->rx_len) % sizeof(s->rx)] = c;
	s->rx_len++;
}

static void serial_tx(struct serial *s, uint8_t c)
{
	if (s->mcr & MCR_LOOP) {
		serial_rx_push(s, c);
	} else if (s->out_fd >= 0) {
		/* A console that cannot keep up loses output rather than stall the vCPU forever. */
		if (write(s->out_fd, &c, 1) < 0 && errno != EAGAIN)
			s->out_fd = -1;
	}
	s->iir_thri = 1;
}

static uint8_t serial_read(struct serial *s, unsigned int off)
{
	uint8_t v;

	switch (off) {
	case UART_RX:
		if (s->lcr & LCR_DLAB)
			return s->dll;
		if (!s->rx_len)
			return 0;
		v = s->rx[s->rx_head];
		s->rx_head = (s->rx_head + 1) % sizeof(s->rx);
		s->rx_len--;
		return v;
	case UART_IER:
		return (s->lcr & LCR_DLAB) ? s->dlm : s->ier;
	case UART_IIR:
		v = serial_iir(s);
		if ((v & 0x0f) == IIR_THRI)
			s->iir_thri = 0;    /* reading IIR acknowledges THRE */
		return v;
	case UART_LCR:
		return s->lcr;
	case UART_MCR:
		return s->mcr;
	case UART_LSR:
		return LSR_THRE | LSR_TEMT | (s->rx_len ? LSR_DR : 0);
	case UART_MSR:
		if (s->mcr & MCR_LOOP)
			return (uint8_t)((s->mcr & 0x02) << 3 | (s->mcr & 0x01) << 5 |
					 (s->mcr & 0x04) << 4 | (s->mcr & 0x08) << 4);
		return 0xb0; /* DCD, DSR, CTS */
	case UART_SCR:
		return s->scr;
	}
	return 0xff;
}

static void serial_write(struct serial *s, unsigned int off, uint8_t v)
{
	switch (off) {
	case UART_TX:
		if (s->lcr & LCR_DLAB)
			s->dll = v;
		else
			serial_tx(s, v);
		break;
	case UART_IER:
		if (s->lcr & LCR_DLAB) {
			s->dlm = v;
		} else {
			/* Enabling THRI with an empty THR raises it at once (8250 THRE test). */
			if (!(s->ier & IER_THRI) && (v & IER_THRI))
				s->iir_thri = 1;
			s->ier = v & 0x0f;
		}
		break;
	case UART_FCR:
		s->fcr = v & 0xc9;
		if (v & FCR_CLEAR_RX)
			s->rx_len = 0;
		break;
	case UART_LCR:
		s->lcr = v;
		break;
	case UART_MCR:
		s->mcr = v & 0x1f;
		break;
	case UART_SCR:
		s->scr = v;
		break;
	}
}

void serial_io(void *opaque, uint64_t addr, void *data, unsigned int len, bool is_write)
{
	struct serial *s = opaque;
	unsigned int off = addr & 7;
	uint8_t *p = data;

	pthread_mutex_lock(&s->lock);
	if (is_write)
		serial_write(s, off, p[0]);
	else
		p[0] = serial_read(s, off);
	for (unsigned int i = 1; i < len; i++)
		if (!is_write)
			p[i] = 0xff;
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
}

size_t serial_input(struct serial *s, const uint8_t *buf, size_t len)
{
	size_t n;

	pthread_mutex_lock(&s->lock);
	n = MIN(len, sizeof(s->rx) - s->rx_len);
	for (size_t i = 0; i < n; i++)
		serial_rx_push(s, buf[i]);
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
	return n;
}

/* Under s->lock (or before the device is shared): power-on register values. */
static void serial_regs_reset(struct serial *s)
{
	s->ier = s->iir_thri = s->lcr = s->mcr = s->lsr = s->msr = s->scr = s->fcr = 0;
	s->dll = 0x0c; /* 9600 baud, as firmware leaves it */
	s->dlm = 0;
	s->rx_head = s->rx_len = 0;
}

/*
 * Saved state, version 1.  Tags are never renumbered or reused; a new
 * optional field gets a new tag.  Host-side state (the console fd, the VM,
 * the IRQ number, the lock) is not saved: the destination configures it.
 * LSR and MSR are computed from the fields below, so they are not saved.
 */
#define SERIAL_F_IER   1  /* u8, bits 0-3 */
#define SERIAL_F_THRI  2  /* u8 0/1: a THR-empty interrupt is pending (cleared by reading IIR) */
#define SERIAL_F_LCR   3  /* u8 */
#define SERIAL_F_MCR   4  /* u8, bits 0-4 */
#define SERIAL_F_SCR   5  /* u8 */
#define SERIAL_F_DLL   6  /* u8 */
#define SERIAL_F_DLM   7  /* u8 */
#define SERIAL_F_FCR   8  /* u8, the bits FCR keeps (0xc9) */
#define SERIAL_F_IRQ   9  /* u8 0/1: IRQ line level; must match the registers */
#define SERIAL_F_RX    10 /* bytes: RX FIFO contents, oldest first, at most 4096 */

/* The saved state, described once for save and load. */
struct serial_image {
	uint8_t ier, thri, lcr, mcr, scr, dll, dlm, fcr, irq;
	struct state_bytes rx;
};
#define IMG struct serial_image
static const struct state_desc serial_fields[] = {
	STATE_INT(SERIAL_F_IER, IMG, ier, 0x0f, 1),
	STATE_INT(SERIAL_F_THRI, IMG, thri, 1, 1),
	STATE_INT(SERIAL_F_LCR, IMG, lcr, STATE_ANY, 1),
	STATE_INT(SERIAL_F_MCR, IMG, mcr, 0x1f, 1),
	STATE_INT(SERIAL_F_SCR, IMG, scr, STATE_ANY, 1),
	STATE_INT(SERIAL_F_DLL, IMG, dll, STATE_ANY, 1),
	STATE_INT(SERIAL_F_DLM, IMG, dlm, STATE_ANY, 1),
	STATE_INT(SERIAL_F_FCR, IMG, fcr, STATE_ANY, 1),
	STATE_INT(SERIAL_F_IRQ, IMG, irq, 1, 1),
	STATE_BYTES(SERIAL_F_RX, IMG, rx, 0, SERIAL_RX_SIZE, 1),
};
#undef IMG

static int serial_save(struct dev *d, struct state_out *out)
{
	struct serial *s = d->priv;
	uint8_t rx[SERIAL_RX_SIZE];
	struct serial_image img;
	unsigned int n;

	pthread_mutex_lock(&s->lock);
	img = (struct serial_image){
		.ier = s->ier, .thri = s->iir_thri, .lcr = s->lcr, .mcr = s->mcr, .scr = s->scr,
		.dll = s->dll, .dlm = s->dlm, .fcr = s->fcr, .irq = (uint8_t)s->irq_level,
	};
	/* The ring is saved in order, so its host-side head position is not state. */
	n = MIN(s->rx_len, (unsigned int)sizeof(rx));
	for (unsigned int i = 0; i < n; i++)
		rx[i] = s->rx[(s->rx_head + i) % sizeof(s->rx)];
	img.rx = (struct state_bytes){ rx, n };
	state_save_fields(out, serial_fields, ARRAY_SIZE(serial_fields), &img);
	pthread_mutex_unlock(&s->lock);
	return out->err;
}

/*
 * The fields are parsed and checked first and applied only if all of them
 * are valid, so a failed load leaves the device as it was.
 */
static int serial_load(struct dev *d, struct state_in *in, uint16_t version)
{
	struct serial *s = d->priv;
	struct serial_image v = { 0 };
	bool level;
	int ret;

	ret = state_load_fields(in, serial_fields, ARRAY_SIZE(serial_fields), &v, version);
	if (ret)
		return ret;
	if (v.fcr & ~0xc9)
		return -EINVAL;
	/* The IRQ level is a function of the registers: a mismatch is a corrupt save. */
	level = ((v.ier & IER_RDI) && v.rx.len) || ((v.ier & IER_THRI) && v.thri);
	if (level != v.irq)
		return -EINVAL;

	pthread_mutex_lock(&s->lock);
	s->ier = v.ier;
	s->iir_thri = v.thri;
	s->lcr = v.lcr;
	s->mcr = v.mcr;
	s->scr = v.scr;
	s->dll = v.dll;
	s->dlm = v.dlm;
	s->fcr = v.fcr;
	s->rx_head = 0;
	s->rx_len = v.rx.len;
	if (v.rx.len)
		memcpy(s->rx, v.rx.p, v.rx.len);
	/*
	 * Drive the line to the saved level: KVM's per-source line state is not
	 * part of the irqchip state, so a raised line must be raised again here.
	 * On the edge-triggered ISA line a raise while the irqchip's restored
	 * IRR bit is set is coalesced.  A line low before and after is left alone.
	 */
	if (s->vm && (level || s->irq_level))
		(void)vm_irq_line(s->vm, s->irq, level);
	s->irq_level = level;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* Power-on state: registers as firmware leaves them, FIFO empty, IRQ low. */
static void serial_reset(struct dev *d)
{
	struct serial *s = d->priv;

	pthread_mutex_lock(&s->lock);
	serial_regs_reset(s);
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
}

/* Version history: 1 - first layout. */
const struct dev_ops serial_dev_ops = {
	.name = "serial",
	.version = 1,
	.min_version = 1,
	.reset = serial_reset,
	.save = serial_save,
	.load = serial_load,
};

/*
 * serial_init - a UART with power-on registers; registers ports
 * [port, port + 8) when vm is not NULL (a unit test drives serial_io()
 * directly).  Returns 0 or -errno from vm_register_pio().
 */
int serial_init(struct serial *s, struct vm *vm, uint16_t port, uint32_t irq, int out_fd)
{
	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->lock, NULL);
	s->vm = vm;
	s->irq = irq;
	s->out_fd = out_fd;
	serial_regs_reset(s);
	if (!vm)
		return 0;
	return vm_register_pio(vm, port, 8, serial_io, s);
}
