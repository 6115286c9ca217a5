/*
 * stream_int.h - what the stream's files share (stream.c, stream_config.c,
 * stream_writer.c, stream_reader.c): sizes and limits, section and field
 * numbers, and the helpers each side uses.  Internal to src/migration.
 */
#ifndef GODWIT_STREAM_INT_H
#define GODWIT_STREAM_INT_H

#include <time.h>

#include "godwit/state.h"
#include "godwit/stream.h"

#ifndef GODWIT_VERSION
#define GODWIT_VERSION "0.1.0"
#endif

#define STREAM_WBUF_SIZE        (4u << 20)
#define STREAM_RBUF_SIZE        (1u << 20)
/* A RAM section as written: at most this many data pages (32 MiB) or runs. */
#define STREAM_W_RAM_DATA_PAGES 8192u
#define STREAM_W_RAM_RUNS       4096u
/* What a reader accepts. */
#define STREAM_R_RAM_RUNS       65536u
#define STREAM_MAX_CONFIG       (1u << 20)
/*
 * Near the real sizes (measured: a vCPU 6.5 KiB with its XSAVE area and 43
 * MSRs, the VM 352 bytes, the largest device ~1 KiB); room for AMX tiles
 * and nested state, but no 64 MiB buffer for a peer that asks for one.
 */
#define STREAM_MAX_CPU          (64u << 10)
#define STREAM_MAX_DEVICE       (64u << 10)
#define STREAM_MAX_VM           (64u << 10)
#define STREAM_MAX_EOF          4096u
#define STREAM_MAX_SKIP         (1ull << 30)   /* unknown optional section, from a pipe */

/* Versions of the sections this file writes and reads. */
#define CONFIG_VERSION 1
#define RAM_VERSION    1        /* RAM v1: the CRC covers everything */
#define RAM_VERSION_2  2        /* RAM v2: a flags word (RAM_F_*) and the frame length */
#define EOF_VERSION    1

#define SEC_FIXED      18u      /* u8 type, u8 flags, u16 id_len, u16 version, u32 instance, u64 len */
#define RAM_HDR        8u       /* u32 nruns, u32 pad */
#define RAM_HDR2       16u      /* v2: u32 nruns, u32 pad, u32 flags, u32 zlen */
#define RAM_F_NODATACRC 0x1u    /* v2: the section CRC does not cover the page data */
#define RAM_F_ZSTD      0x2u    /* v2: the page data is one zstd frame of zlen bytes */
#define RAM_F_KNOWN     (RAM_F_NODATACRC | RAM_F_ZSTD)
#define RAM_ZSTD_WINDOW_LOG_MAX 23   /* a reader refuses frames needing a larger window */
#define RAM_RUN        16u      /* u64 gpa, u32 npages, u32 flags */
#define RUN_F_ZERO     0x1u

/* CONFIG fields (state.h tags).  Never renumber; retired tags stay reserved. */
enum {
	CFG_ARCH = 1, CFG_WRITER = 2, CFG_PAGE_SIZE = 3, CFG_NCPUS = 4, CFG_REGION = 5,
	CFG_NAME = 6, CFG_UUID = 7, CFG_CPU_MODEL = 8, CFG_CPU_VENDOR = 9, CFG_CPUID = 10,
	CFG_TSC_KHZ = 11, CFG_DEVICE = 12, CFG_DISK = 13,
};
/* Fields of a CFG_DEVICE value (itself a tagged encoding). */
enum { DEV_TYPE = 1, DEV_INSTANCE = 2, DEV_VERSION = 3, DEV_OPTIONS = 4 };
/* EOF fields. */
enum { EOF_SECTIONS = 1, EOF_OFFSET = 2, EOF_CHAIN = 3 };
#define CPUID_ENTRY_LEN 28u     /* 7 x u32 */

#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
/* Set by the fuzz target so mutated inputs get past the checksums (stream.c). */
extern bool stream_fuzz_ignore_crc;
#define CRC_DIFFERS(a, b) (!stream_fuzz_ignore_crc && (a) != (b))
#else
#define CRC_DIFFERS(a, b) ((a) != (b))
#endif

/* Watchdog on the peer (stream_watchdog, stream.h): the state of one side. */
struct wd_state {
	struct stream_watchdog wd;
	bool on;
	struct timespec t0;       /* when it was set: the deadline counts from here */
	uint64_t win_ns;          /* time blocked on the peer in this window */
	uint64_t win_bytes;       /* bytes that passed in this window */
};

uint32_t stream_chain_add(uint32_t chain, uint32_t crc);
bool stream_page_is_zero(const uint8_t *p);
bool stream_type_known(unsigned int type);
bool stream_id_valid(const char *id, size_t len);
int stream_config_check(const struct stream_config *c, char *err, size_t len);
void stream_config_encode(const struct stream_config *c, struct state_out *o);
int stream_config_decode(const uint8_t *p, size_t len, struct stream_config *c, char *err,
			 size_t errlen);
uint64_t stream_wd_now_ns(void);
void stream_wd_set(struct wd_state *s, const struct stream_watchdog *wd);
int stream_wd_before(const struct wd_state *s, char *buf, size_t len);
int stream_wd_after(struct wd_state *s, uint64_t ns, uint64_t bytes, bool rd, char *buf,
		    size_t len);
const char *stream_io_err(int fd, bool rd, int *e, char *buf, size_t len);

/*
 * The file sink (stream_file.c): fd, a regular file, written by threads
 * of its own out of page-aligned buffers of bufsize bytes, with O_DIRECT if
 * direct and the filesystem takes it.  fsink_buf() is the buffer to fill;
 * fsink_submit() queues its first len bytes (direct and not final: only
 * the 4 KiB-aligned part, the rest, *keep bytes, moved to the start of the
 * next fsink_buf()); final: also waits until everything is written.
 * Returns 0 or the first write error (-errno, at file offset *err_off).
 */
struct fsink;
int fsink_new(int fd, size_t bufsize, bool direct, struct fsink **out);
void fsink_free(struct fsink *fs);
bool fsink_direct(const struct fsink *fs);
uint8_t *fsink_buf(struct fsink *fs);
int fsink_submit(struct fsink *fs, size_t len, bool final, size_t *keep, uint64_t *err_off);
/* Wait until everything queued is written; 0 or the first write error. */
int fsink_wait(struct fsink *fs, uint64_t *err_off);

#endif
