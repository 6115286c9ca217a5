/*
 * crc32c.h - CRC-32C (Castagnoli, the iSCSI/ext4 polynomial 0x1edc6f41,
 * reflected), the checksum of the migration stream.  Computed with the
 * SSE4.2 crc32 instruction when the CPU has it (checked once, at start-up),
 * else with slicing-by-8 tables; both give the same values.
 *
 * Chaining works like zlib's crc32(): start with 0, pass the previous
 * result to continue, so crc32c(crc32c(0, a, n), b, m) is the CRC of a then
 * b.  crc32c(0, "123456789", 9) == 0xe3069283.
 */
#ifndef GODWIT_CRC32C_H
#define GODWIT_CRC32C_H

#include "godwit/common.h"

uint32_t crc32c(uint32_t crc, const void *p, size_t len);

/*
 * crc32c_copy - copy len bytes from src to dst (not overlapping) and return
 * the CRC continued over them, in one pass: the checksum is computed from
 * the very bytes stored in dst, even if src changes meanwhile (a running
 * guest writing a page that is being sent).
 */
uint32_t crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len);

/* The table implementation, whatever the CPU (for tests and benchmarks). */
uint32_t crc32c_sw(uint32_t crc, const void *p, size_t len);

/* True if crc32c() uses the SSE4.2 instruction on this CPU. */
bool crc32c_hw(void);

#endif
