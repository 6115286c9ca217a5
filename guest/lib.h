/*
 * lib.h - the test guest's small runtime: port and MMIO access, TSC and
 * CPUID, atomics, string functions, formatted output to COM1, and the
 * declarations shared between the guest's C files.
 */
#ifndef GUEST_LIB_H
#define GUEST_LIB_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gclock.h"
#include "layout.h"

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define ALIGN_UP(x, a) (((x) + ((a) - 1)) & ~((__typeof__(x))(a) - 1))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define MiB (1024UL * 1024)
#define GiB (1024UL * MiB)
#define __noreturn __attribute__((noreturn))
#define __printf(a, b) __attribute__((format(printf, a, b)))
#define __aligned(n) __attribute__((aligned(n)))

/* ---- port I/O (ring 3 reaches the ports the TSS bitmap opens) ---- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u32 inl(u16 port)
{
	u32 v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* ---- MMIO (identity mapped, uncached above 3 GiB) ---- */
static inline u8 mmio_read8(u64 addr) { return *(volatile u8 *)addr; }
static inline u16 mmio_read16(u64 addr) { return *(volatile u16 *)addr; }
static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write8(u64 addr, u8 v) { *(volatile u8 *)addr = v; }
static inline void mmio_write16(u64 addr, u16 v) { *(volatile u16 *)addr = v; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

/*
 * The guest's clock: this CPU's TSC, made monotonic (gclock.h: a restore
 * on a host with a smaller TSC makes the raw TSC go back; the clock stands
 * still across that instead).  Everything that measures time, paces or
 * waits uses gclock(); raw rdtsc() only for boot_tsc (entry.S), the PIT
 * calibration and a random seed.  The CPU is found from the ring-3 stack
 * (each slot has its own USTACK_SIZE stack in ustacks[]); off those stacks
 * (never, in practice) it is the raw TSC.
 */
extern char ustacks[];
extern struct gclock_state gclock_cpu[GUEST_MAX_CPUS];

static inline u64 gclock(void)
{
	u64 sp, slot;

	__asm__ volatile("mov %%rsp, %0" : "=r"(sp));
	slot = (sp - (u64)ustacks) / USTACK_SIZE;
	if (slot >= GUEST_MAX_CPUS)
		return rdtsc();
	return gclock_step(&gclock_cpu[slot], rdtsc());
}

static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
/* Full fence: orders earlier stores before later loads (x86 reorders only those). */
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }

/* Ring-3 requests to ring 0 (entry.S ud_entry). */
static inline void sys_idle(void)
{
	register u64 magic __asm__("r11") = SYS_MAGIC;

	__asm__ volatile("ud2" :: "a"(SYS_IDLE), "r"(magic) : "memory");
}
static inline __noreturn void sys_halt(void)
{
	register u64 magic __asm__("r11") = SYS_MAGIC;

	__asm__ volatile("ud2" :: "a"(SYS_HALT), "r"(magic) : "memory");
	__builtin_unreachable();
}

/* ---- string functions (gcc may emit calls to the first four) ---- */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);
/* Decimal (or 0x-prefixed hex) to u64; false on junk or overflow. */
bool parse_u64(const char *s, size_t len, u64 *out);

/* ---- output ---- */
/*
 * A hook the serial writer calls for every byte: the memory workload uses
 * it to keep reading the TSC while CPU 0 prints (each byte costs two VM
 * exits, ~50 us), so a VM pause during a report still shows as a stall and
 * the report itself does not.
 */
typedef void (*serial_tick_fn)(void *arg);

/* Program COM1 once: 115200 8N1, FIFOs on, no UART interrupts. */
void serial_init(void);
/* Write n bytes, polling LSR.THRE before each; tick(arg) after each if set. */
void serial_write(const char *s, size_t n, serial_tick_fn tick, void *arg);
/* snprintf-like (%c %s %d %i %u %x %X %p, '-', '0', width, l/ll/z);
 * returns the length the output would have had. */
int vformat(char *buf, size_t size, const char *fmt, va_list ap);
/* Formats, then writes the whole line under the output lock. */
void gprintf(const char *fmt, ...) __printf(1, 2);
void gprintf_tick(serial_tick_fn tick, void *arg, const char *fmt, ...) __printf(3, 4);

/* ---- symbols from entry.S and the linker script ---- */
extern u32 boot_info_paddr;
extern u64 boot_tsc;
extern u64 pml4[512], pdpt[512];
extern char tramp_start[], tramp_end[];
extern char _end[];

#endif
