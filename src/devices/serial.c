/*
 * serial.c - a 16550A UART: the guest console.  Transmitted bytes go to an
 * fd (stdout), received bytes come from the loop thread via serial_input().
 * Enough of the chip for Linux's 8250 driver to detect a 16550A (scratch
 * register, loopback, FIFO bits in IIR) and to run interrupt-driven.
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

int serial_init(struct serial *s, struct vm *vm, uint16_t port, uint32_t irq, int out_fd)
{
	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->lock, NULL);
	s->vm = vm;
	s->irq = irq;
	s->out_fd = out_fd;
	s->iir_thri = 0;
	s->dll = 0x0c; /* 9600 baud, as firmware leaves it */
	if (!vm)
		return 0;
	return vm_register_pio(vm, port, 8, serial_io, s);
}
