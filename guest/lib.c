/*
 * lib.c - the test guest's runtime: string functions, a small printf, and
 * polled output on the COM1 16550.
 *
 * Every port access is a VM exit (~25 us under PVM), so output is the
 * guest's most expensive habit: the UART is set up once with a handful of
 * writes, and each byte costs one LSR read and one THR write.
 */
#include "lib.h"

#define COM1		0x3f8
#define UART_THR	0
#define UART_IER	1
#define UART_FCR	2
#define UART_LCR	3
#define UART_MCR	4
#define UART_LSR	5
#define UART_LSR_THRE	0x20

/* gclock()'s per-CPU state (lib.h, gclock.h), by slot; zero at boot. */
struct gclock_state gclock_cpu[GUEST_MAX_CPUS];

/* Ring 3 on several CPUs prints; one line at a time. */
static volatile int out_lock;

/* rep movsb/stosb: fast on current CPUs, and no loop for the compiler to
 * turn back into a call to memcpy()/memset(). */
void *memcpy(void *dst, const void *src, size_t n)
{
	void *d = dst;

	__asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) :: "memory");
	return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
	char *d = dst;
	const char *s = src;

	if (d < s)
		return memcpy(dst, src, n);
	while (n--)		/* only boot-time callers: a byte loop will do */
		d[n] = s[n];
	return dst;
}

void *memset(void *dst, int c, size_t n)
{
	void *d = dst;

	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (unsigned char)*a - (unsigned char)*b;
		if (!*a)
			break;
	}
	return 0;
}

bool parse_u64(const char *s, size_t len, u64 *out)
{
	unsigned base = 10;
	u64 v = 0;

	if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
		len -= 2;
	}
	if (!len)
		return false;
	for (; len; len--, s++) {
		unsigned d;

		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = *s - 'A' + 10;
		else
			return false;
		if (v > (~0ULL - d) / base)
			return false;
		v = v * base + d;
	}
	*out = v;
	return true;
}

/* ---- formatting: %c %s %d %i %u %x %X %p, flags '-' '0', width, l ll z ---- */

struct fmt_out {
	char *buf;
	size_t size, len;
};

static void fmt_putc(struct fmt_out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void fmt_num(struct fmt_out *o, u64 v, bool neg, unsigned base, bool upper,
		    unsigned width, bool zero, bool left)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char tmp[24];
	unsigned n = 0, len;

	do {
		tmp[n++] = digits[v % base];
		v /= base;
	} while (v);
	len = n + neg;
	if (!left && !zero)
		for (; width > len; width--)
			fmt_putc(o, ' ');
	if (neg)
		fmt_putc(o, '-');
	if (!left && zero)
		for (; width > len; width--)
			fmt_putc(o, '0');
	while (n)
		fmt_putc(o, tmp[--n]);
	if (left)
		for (; width > len; width--)
			fmt_putc(o, ' ');
}

int vformat(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct fmt_out o = { buf, size, 0 };

	for (; *fmt; fmt++) {
		bool zero = false, left = false;
		unsigned width = 0, lng = 0;

		if (*fmt != '%') {
			fmt_putc(&o, *fmt);
			continue;
		}
		fmt++;
		for (;; fmt++) {
			if (*fmt == '0')
				zero = true;
			else if (*fmt == '-')
				left = true;
			else
				break;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (unsigned)(*fmt++ - '0');
		while (*fmt == 'l' || *fmt == 'z') {
			lng++;
			fmt++;
		}
		switch (*fmt) {
		case 'c':
			fmt_putc(&o, (char)va_arg(ap, int));
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			size_t n;

			if (!s)
				s = "(null)";
			n = strlen(s);
			if (!left)
				for (; width > n; width--)
					fmt_putc(&o, ' ');
			while (*s)
				fmt_putc(&o, *s++);
			if (left)
				for (; width > n; width--)
					fmt_putc(&o, ' ');
			break;
		}
		case 'd':
		case 'i': {
			long long v = lng ? va_arg(ap, long long) : va_arg(ap, int);

			fmt_num(&o, v < 0 ? -(u64)v : (u64)v, v < 0, 10, false, width, zero, left);
			break;
		}
		case 'u':
			fmt_num(&o, lng ? va_arg(ap, u64) : va_arg(ap, unsigned), false, 10, false,
				width, zero, left);
			break;
		case 'x':
		case 'X':
			fmt_num(&o, lng ? va_arg(ap, u64) : va_arg(ap, unsigned), false, 16,
				*fmt == 'X', width, zero, left);
			break;
		case 'p':
			fmt_putc(&o, '0');
			fmt_putc(&o, 'x');
			fmt_num(&o, (u64)va_arg(ap, void *), false, 16, false, width, zero, left);
			break;
		case '%':
			fmt_putc(&o, '%');
			break;
		case '\0':
			fmt--;
			break;
		default:
			fmt_putc(&o, '%');
			fmt_putc(&o, *fmt);
			break;
		}
	}
	if (size)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return (int)o.len;
}

/* ---- COM1 ---- */

void serial_init(void)
{
	outb(COM1 + UART_IER, 0x00);	/* polled: no UART interrupts */
	outb(COM1 + UART_LCR, 0x80);	/* DLAB: 115200 baud */
	outb(COM1 + 0, 0x01);
	outb(COM1 + 1, 0x00);
	outb(COM1 + UART_LCR, 0x03);	/* 8N1 */
	outb(COM1 + UART_FCR, 0x07);	/* FIFOs on and cleared */
	outb(COM1 + UART_MCR, 0x03);	/* DTR, RTS; OUT2 off (no IRQ) */
}

void serial_write(const char *s, size_t n, serial_tick_fn tick, void *arg)
{
	for (size_t i = 0; i < n; i++) {
		/* A UART that is not there reads 0xff, which has THRE set. */
		while (!(inb(COM1 + UART_LSR) & UART_LSR_THRE))
			cpu_relax();
		outb(COM1 + UART_THR, (u8)s[i]);
		if (tick)
			tick(arg);
	}
}

static void out_line(const char *fmt, va_list ap, serial_tick_fn tick, void *arg)
{
	char buf[256];
	int n = vformat(buf, sizeof(buf), fmt, ap);

	if (n > (int)sizeof(buf) - 1)
		n = sizeof(buf) - 1;
	while (__atomic_exchange_n(&out_lock, 1, __ATOMIC_ACQUIRE)) {
		while (out_lock) {
			if (tick)
				tick(arg);
			cpu_relax();
		}
	}
	serial_write(buf, (size_t)n, tick, arg);
	__atomic_store_n(&out_lock, 0, __ATOMIC_RELEASE);
}

void gprintf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	out_line(fmt, ap, NULL, NULL);
	va_end(ap);
}

void gprintf_tick(serial_tick_fn tick, void *arg, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	out_line(fmt, ap, tick, arg);
	va_end(ap);
}
