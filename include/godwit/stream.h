/*
 * stream.h - the snapshot/migration stream (docs/stream-format.md).
 *
 * A stream is: a preamble (magic, format version), a CONFIG section that
 * describes the machine (vCPUs, memory layout, CPU model and the CPUID the
 * guest sees, devices), then typed sections (RAM, CPU, DEVICE, VM, ...),
 * each with an id, a version, an instance, a length and its own CRC32C, and
 * an EOF section that ties them together (section count, byte count, a CRC
 * over every section's CRC).  Integers are little-endian.
 *
 * One writer and one reader, both on a file descriptor (a file, a pipe or
 * a socket: neither seeks); the reader also reads from memory (tests,
 * fuzzing).  Objects are independent (no globals), so several streams can
 * run in parallel threads.
 *
 * Writing a snapshot:
 *	stream_writer_new(fd, &w);
 *	stream_config_from_vm(&cfg, vm);	(or fill cfg by hand)
 *	stream_begin(w, &cfg);
 *	stream_put_ram(w, host, gpa, npages);	(per memory region; or
 *						 stream_put_ram_dirty() per pass)
 *	stream_put_section(w, STREAM_CPU, 0, "cpu", 1, index, buf, len);
 *	stream_put_state(w, STREAM_DEVICE, 0, d->ops->name, d->ops->version,
 *			 d->instance, &state_out);
 *	stream_end(w);				(EOF section, flush)
 *	stream_writer_free(w);
 *
 * Reading:
 *	stream_reader_new(fd, &r);
 *	stream_read_header(r, &cfg);		(then check cfg: compat, CPUID)
 *	while ((ret = stream_next_section(r, &s)) > 0) {
 *		RAM:    stream_read_ram(r, lookup, opaque, &stats);
 *		other:  stream_read_payload(r, &p), then parse s.len bytes at p,
 *			or stream_skip(r) if the section is OPTIONAL and unknown,
 *			or stream_refuse(r, -EINVAL, "unknown device") otherwise
 *	}
 *	ret == 0: EOF reached and verified; ret < 0: stream_reader_error(r)
 *	says what is wrong, naming the section.
 */
#ifndef GODWIT_STREAM_H
#define GODWIT_STREAM_H

#include "godwit/common.h"
#include "godwit/state.h"

#define STREAM_MAGIC        "GODWIT\0\x1a"
#define STREAM_MAGIC_LEN    8
#define STREAM_PREAMBLE_LEN 20     /* magic, u32 version, u32 flags, u32 crc32c */
/* The format this godwit writes, and the oldest it reads. */
#define STREAM_FORMAT_VERSION     1
#define STREAM_FORMAT_MIN_VERSION 1

#define STREAM_PAGE_SIZE    4096u
#define STREAM_PAGE_SHIFT   12
#define STREAM_ID_MAX       64     /* section ids: [A-Za-z0-9._-], 1..64 bytes */

/* Section types.  Never renumber; a retired type stays reserved. */
enum stream_type {
	STREAM_CONFIG = 1,         /* the machine; first section, exactly once */
	STREAM_RAM    = 2,         /* runs of guest pages; repeated during pre-copy */
	STREAM_CPU    = 3,         /* one vCPU's state, instance = vCPU index */
	STREAM_DEVICE = 4,         /* one device, id = dev_ops name, instance */
	STREAM_VM     = 5,         /* VM-wide KVM state: irqchip, pit, clock */
	STREAM_EOF    = 6,         /* last section: counts and the chain CRC */
	STREAM_DISK   = 7,         /* an extent of a disk image (storage migration) */
};
/* Section flags. */
#define STREAM_F_OPTIONAL   0x01   /* a reader that does not know it skips it */

/* Limits of the CONFIG section (a reader refuses more). */
#define STREAM_MAX_REGIONS  8
#define STREAM_MAX_CPUID    256
#define STREAM_MAX_DEVICES  64
#define STREAM_MAX_VCPUS    255          /* godwit run --cpus' limit */
#define STREAM_OPTIONS_MAX  191
#define STREAM_MAX_DISKS    16
#define STREAM_DISK_MAX_SIZE (1ULL << 50)  /* bytes */

/*
 * DISK payload (id "disk", instance = the virtio-blk device's instance):
 * u64 offset | u64 length | u32 flags | u32 0 | data (length bytes, none if
 * ZERO).  offset and length are multiples of 512; the extent lies in the
 * disk (CONFIG's size for it).  ZERO: the extent reads as zeroes.
 */
#define STREAM_DISK_HDR      24
#define STREAM_DISK_MAX_DATA (4u << 20)
#define STREAM_DISK_F_ZERO   0x1
struct stream_region {
	uint64_t gpa, size;        /* page-aligned, size > 0 */
};

struct stream_cpuid_entry {
	uint32_t function, index, flags;   /* flags: KVM_CPUID_FLAG_* */
	uint32_t eax, ebx, ecx, edx;
};

/* A disk whose image travels in the stream (DISK sections). */
struct stream_disk {
	uint32_t instance;                 /* the virtio-blk device's instance */
	uint64_t size;                     /* bytes, a multiple of 512 */
};

struct stream_device {
	char type[STREAM_ID_MAX + 1];      /* dev_ops name: the DEVICE section id */
	uint32_t instance;
	uint16_t version;                  /* the layout the writer saves */
	char options[STREAM_OPTIONS_MAX + 1]; /* guest-visible options, free text */
};

/*
 * The machine's configuration.  Strings are NUL-terminated printable ASCII.
 * Everything here is guest-visible or identifies the VM; host paths, TAP
 * names and the like are not part of it (they differ on the destination).
 */
struct stream_config {
	char arch[16];                     /* "x86_64" */
	char writer[32];                   /* "godwit 0.1.0" (informative) */
	uint32_t page_size;                /* STREAM_PAGE_SIZE */
	uint32_t ncpus;
	char name[64];
	uint8_t uuid[16];
	char cpu_model[32];                /* cpu_model_name(): "x86-64-v2" */
	char cpu_vendor[13];               /* CPUID leaf 0: "GenuineIntel" */
	uint32_t tsc_khz;                  /* 0: unknown */
	unsigned int nr_regions;
	struct stream_region regions[STREAM_MAX_REGIONS];   /* ascending, disjoint */
	unsigned int nr_cpuid;
	struct stream_cpuid_entry cpuid[STREAM_MAX_CPUID];  /* the template, before per-vCPU fix-ups */
	unsigned int nr_devices;
	struct stream_device devices[STREAM_MAX_DEVICES];   /* in save order */
	unsigned int nr_disks;
	struct stream_disk disks[STREAM_MAX_DISKS];         /* images sent as DISK sections */
	uint32_t digest;                   /* reader only: CRC32C of the CONFIG payload */
};

/* One section as the reader found it. */
struct stream_section {
	uint8_t type;                      /* enum stream_type */
	uint8_t flags;                     /* STREAM_F_* */
	char id[STREAM_ID_MAX + 1];
	uint16_t version;
	uint32_t instance;
	uint64_t len;                      /* payload bytes */
	uint64_t offset;                   /* stream offset of the section's first byte */
};

/* RAM totals: what a writer wrote, what a reader read. */
struct stream_ram_stats {
	uint64_t sections, runs, pages, zero_pages;
};

struct stream_writer;
struct stream_reader;
struct kvm_cpuid2;
struct vm;

/* "config", "ram", "cpu", "device", "vm", "eof", or "unknown". */
const char *stream_type_name(unsigned int type);

/* ---- Configuration ---- */

/* Empty configuration: arch "x86_64", page size 4096, writer "godwit VERSION". */
void stream_config_init(struct stream_config *c);
/* Append a region; -EINVAL if not page-aligned or empty, -ENOSPC if full. */
int stream_config_add_region(struct stream_config *c, uint64_t gpa, uint64_t size) __must_check;
/*
 * stream_config_add_device - append a device (type: its dev_ops name).
 * options may be NULL.  Returns 0, -EINVAL for a type that is not a valid
 * id or options that are too long or not printable, -ENOSPC if full.
 */
int stream_config_add_device(struct stream_config *c, const char *type, uint32_t instance,
			     uint16_t version, const char *options) __must_check;
/*
 * stream_config_set_cpuid - the CPUID entries the guest sees (the VM's
 * filtered template) and the vendor from leaf 0.  Returns 0, or -E2BIG
 * for more than STREAM_MAX_CPUID entries.
 */
int stream_config_set_cpuid(struct stream_config *c, const struct kvm_cpuid2 *cpuid) __must_check;
/*
 * stream_config_from_vm - c from a created VM: vCPUs, memory regions, name,
 * UUID, CPU model, CPUID template, TSC kHz and the registered devices
 * (with empty options).  Returns 0 or -E2BIG/-ENOSPC if the VM exceeds a
 * stream limit.
 */
int stream_config_from_vm(struct stream_config *c, const struct vm *vm) __must_check;
/*
 * stream_config_compat - can a VM configured as `local` take the state in
 * `stream`?  Compares arch, page size, vCPUs, memory layout, CPU model and
 * the device list (type, instance, options; the device version is checked
 * by the device's load()).  Name, UUID, writer and TSC frequency are not
 * compared.  Returns 0, or -EINVAL with a message naming the first
 * difference in err (len bytes, always NUL-terminated).
 */
int stream_config_compat(const struct stream_config *local, const struct stream_config *stream,
			 char *err, size_t len) __must_check;
/*
 * stream_cpuid_check - does this host offer what the stream's guest saw?
 * supported is KVM_GET_SUPPORTED_CPUID here.  The vendor must match and
 * every feature bit the guest saw in the feature registers (leaves 1, 6,
 * 7.0, 7.1, 0xd.0, 0xd.1, 0x80000001, 0x80000007, 0x80000008, 0x40000001)
 * must be supported, except the bits KVM emulates whatever the host has
 * (x2APIC, TSC deadline, hypervisor, ARAT), the ones the guest OS controls
 * (OSXSAVE, OSPKE) and topology (HTT, CmpLegacy).  Returns 0, or
 * -ENOTSUP with the first missing bit named in err.
 */
int stream_cpuid_check(const struct stream_config *stream, const struct kvm_cpuid2 *supported,
		       char *err, size_t len) __must_check;

/* ---- Writer ---- */

/*
 * stream_writer_new - a writer on fd (any file, pipe or socket; written
 * from its current position; sockets are written with MSG_NOSIGNAL, for a
 * pipe the caller ignores SIGPIPE).  The fd stays the caller's.
 * Returns 0 and *out, or -ENOMEM.
 */
int stream_writer_new(int fd, struct stream_writer **out) __must_check;
/*
 * stream_writer_to_file - w's fd is a snapshot file (a regular file, at
 * offset 0 for O_DIRECT): written by a thread of the writer's own, the next
 * buffer filled and checksummed while the last one is written, with
 * O_DIRECT if direct and the filesystem takes it (else buffered, with one
 * log line).  Call right after stream_writer_new().  0 or -errno.
 */
int stream_writer_to_file(struct stream_writer *w, bool direct) __must_check;
/* A file sink: wait until what it was given is on the file.  0 or -errno. */
int stream_writer_wait(struct stream_writer *w) __must_check;
/* The file sink writes with O_DIRECT. */
bool stream_writer_direct(const struct stream_writer *w);
struct stream_watchdog;
/* The same watchdog as a reader's (below), on the writer's peer taking the bytes. */
void stream_writer_set_watchdog(struct stream_writer *w, const struct stream_watchdog *wd);
/* Write through the TLS session on the writer's socket (tls.h). */
struct tls_sess;
void stream_writer_set_tls(struct stream_writer *w, struct tls_sess *tls);
/* Free w (NULL is fine); does not flush or close the fd. */
void stream_writer_free(struct stream_writer *w);
/*
 * Every writer call below returns 0 or -errno; the first error is sticky
 * (later calls return it and write nothing) and described by
 * stream_writer_error().  -EINVAL means a misuse (bad id, page outside the
 * configured memory, call out of order), other errors come from write().
 */

/* stream_begin - the preamble and the CONFIG section for c (validated). */
int stream_begin(struct stream_writer *w, const struct stream_config *c) __must_check;
/*
 * stream_put_section - one section with the whole payload in memory.
 *   type:     CPU, DEVICE, VM or any other type but CONFIG, RAM and EOF
 *             (those have their own calls); types unknown to older readers
 *             should be flagged STREAM_F_OPTIONAL if they can be ignored
 *   flags:    STREAM_F_*
 *   id:       1..STREAM_ID_MAX bytes of [A-Za-z0-9._-]
 */
int stream_put_section(struct stream_writer *w, unsigned int type, unsigned int flags,
		       const char *id, uint16_t version, uint32_t instance,
		       const void *payload, size_t len) __must_check;
/* The same with a state.h encoding; fails with o->err if that is set. */
int stream_put_state(struct stream_writer *w, unsigned int type, const char *id,
		     uint16_t version, uint32_t instance, const struct state_out *o) __must_check;
/*
 * stream_put_ram - queue npages pages of guest memory starting at gpa,
 * whose host copy starts at host.  Each page is tested for zero now (zero
 * pages cost a run entry, no data); the others are copied into the
 * writer's buffer, with their CRC computed on the copy, when their RAM
 * section is written (at the latest at the next non-RAM call or
 * stream_flush()), so host must stay mapped until then.  The guest may keep
 * running: a page changed meanwhile goes out as it is then (its CRC
 * matches) and the dirty log sends it again.  The pages must lie in one
 * configured region.
 */
int stream_put_ram(struct stream_writer *w, const void *host, uint64_t gpa,
		   uint64_t npages) __must_check;
/*
 * stream_put_ram_dirty - the same for the pages of [gpa, gpa + npages
 * pages) whose bit is set in bitmap (bit i of the little-endian 64-bit
 * word i / 64 for page i: KVM's dirty-log layout).  Scans a word at a time.
 */
int stream_put_ram_dirty(struct stream_writer *w, const void *host, uint64_t gpa,
			 uint64_t npages, const uint64_t *bitmap) __must_check;
/*
 * stream_put_disk - one DISK section: len bytes at data (NULL: a ZERO
 * extent) for disk `instance` at byte offset off; len <= STREAM_DISK_MAX_DATA.
 */
int stream_put_disk(struct stream_writer *w, uint32_t instance, uint64_t off,
		    const void *data, uint64_t len) __must_check;
/*
 * stream_disk_parse - check a DISK payload (p, n bytes) against a disk of
 * size bytes: 0 with the extent, or -EBADMSG (err says why).
 */
int stream_disk_parse(const uint8_t *p, uint64_t n, uint64_t size, uint64_t *off,
		      uint64_t *len, const uint8_t **data, char *err, size_t errlen) __must_check;
/* stream_flush - close the pending RAM section and write everything buffered. */
int stream_flush(struct stream_writer *w) __must_check;
/* stream_end - the EOF section, then flush.  No call but free after it. */
int stream_end(struct stream_writer *w) __must_check;
/* The first error's message ("" if none). */
const char *stream_writer_error(const struct stream_writer *w);
/* Stream bytes produced so far (written and buffered). */
uint64_t stream_writer_offset(const struct stream_writer *w);
/* RAM totals written so far (sections counted once written). */
void stream_writer_ram_stats(const struct stream_writer *w, struct stream_ram_stats *st);

/*
 * stream_writer_set_page_crc - off: RAM sections' CRC covers their header
 * and run table but not the page data (RAM v2, RAM_F_NODATACRC), and on a
 * plain socket the pages are sent from guest memory without a copy.  For
 * a channel with its own integrity check (TCP, TLS); files keep it on (the
 * default).  Before the first RAM call.
 */
void stream_writer_set_page_crc(struct stream_writer *w, bool on);
/*
 * Compression of RAM sections' page data (one zstd frame per section, level
 * STREAM_ZSTD_LEVEL): off (default), zstd (always, where it makes the
 * section smaller), auto (while the writer waits on the link rather than
 * the CPU and the data compresses by STREAM_ZSTD_MIN_RATIO or more,
 * measured as it writes).
 */
enum stream_compress { STREAM_COMPRESS_OFF, STREAM_COMPRESS_ZSTD, STREAM_COMPRESS_AUTO };
#define STREAM_ZSTD_LEVEL     1
#define STREAM_ZSTD_MIN_RATIO 1.3
struct stream_compress_stats {
	uint64_t sections;         /* RAM sections sent compressed */
	uint64_t bytes_in, bytes_out;  /* their page data before and after */
	uint64_t switches;         /* auto: times it turned compression on or off */
	bool active;               /* compressing now */
};
void stream_writer_set_compress(struct stream_writer *w, enum stream_compress mode);
void stream_writer_compress_stats(const struct stream_writer *w, struct stream_compress_stats *st);
/* "off", "zstd", "auto"; and back (0, or -EINVAL for anything else). */
const char *stream_compress_name(enum stream_compress mode);
int stream_compress_parse(const char *s, enum stream_compress *mode) __must_check;

/* ---- Reader ---- */

/*
 * stream_reader_new - a reader on fd, from its current position.  For a
 * regular file the bytes left bound every length; for a pipe or socket,
 * per-type maxima do.  The reader reads ahead: it owns the fd's input
 * until the EOF section.  Returns 0 and *out, or -ENOMEM.
 */
int stream_reader_new(int fd, struct stream_reader **out) __must_check;
/*
 * A watchdog on a reader's (or writer's) peer, for a migration socket: the
 * whole stream must pass within deadline_ms of stream_*_set_watchdog() (0:
 * no deadline), and in every window_ms spent waiting in read() (write())
 * at least min_bytes must pass (0: no minimum), so a peer that trickles a
 * byte now and then cannot hold this side for ever.  Only the time blocked
 * on the peer counts, not this side's own work.  A read or write that hits
 * either limit fails with -ETIMEDOUT and says which.
 */
struct stream_watchdog {
	uint64_t deadline_ms;
	uint64_t min_bytes;
	uint32_t window_ms;
};
void stream_reader_set_watchdog(struct stream_reader *r, const struct stream_watchdog *wd);
/* Read through the TLS session on the reader's socket (tls.h); before the first read. */
void stream_reader_set_tls(struct stream_reader *r, struct tls_sess *tls);
/*
 * stream_reader_target_zeroed - promise that every byte the reader's RAM
 * lookups return is zero before the stream is read (fresh memory: a
 * restore).  Zero runs are then skipped instead of being checked page by
 * page, which would fault in every untouched page.  Never for a target
 * that may hold data (pre-copy rounds re-sending a page as zero).
 */
void stream_reader_target_zeroed(struct stream_reader *r);
/* The same, on or off (a migration turns it off once pages may come again). */
void stream_reader_set_target_zeroed(struct stream_reader *r, bool on);
/*
 * stream_reader_set_placer - data pages go through fn instead of being
 * copied into the lookup's memory (NULL fn: copied, read straight into
 * guest memory where the runs are large).  stream_read_ram() calls fn for
 * every piece of a data run, in stream order, once its bytes are in the
 * section CRC: len (a multiple of the page size, at most 256 KiB) bytes at
 * src, for guest address gpa, whose host mapping (lookup's) is host.  src
 * is valid only during the call.  fn returns 0 or a negative errno, which
 * fails the read ("cannot place ...").  A destination uses it to place
 * pages into fresh memory without the kernel zeroing them first (userfaultfd,
 * ram_place.h); zero runs never reach it.
 */
typedef int (*stream_place_fn)(void *opaque, uint64_t gpa, void *host, const void *src,
			       size_t len);
void stream_reader_set_placer(struct stream_reader *r, stream_place_fn fn, void *opaque);
/* A reader on len bytes at p (not copied; must outlive the reader). */
int stream_reader_new_mem(const void *p, size_t len, struct stream_reader **out) __must_check;
void stream_reader_free(struct stream_reader *r);

/*
 * Every reader call below returns a negative errno on failure, and the
 * failure is sticky.  -EBADMSG: the stream is truncated, corrupt or
 * inconsistent; -EPROTONOSUPPORT: a format version or a required section
 * this godwit cannot read; -EINVAL: a misuse or stream_refuse(); others
 * from read().  stream_reader_error() names the section and the problem:
 *   section 'serial' (device, instance 0, offset 0x5014): crc mismatch
 */

/*
 * stream_read_header - the preamble and the CONFIG section, validated
 * (version, lengths, regions disjoint and aligned, strings printable).
 * *cfg points into r (valid until stream_reader_free()).
 */
int stream_read_header(struct stream_reader *r, const struct stream_config **cfg) __must_check;
/*
 * stream_next_section - the next section's header.  Whatever is left of
 * the previous section is skipped (and its CRC checked).  Sections of
 * unknown types flagged OPTIONAL are skipped silently; unknown required
 * ones are refused.  Returns 1 and *s; 0 once the EOF section has been
 * read and its counts and chain CRC match; or a negative errno.
 */
int stream_next_section(struct stream_reader *r, struct stream_section *s) __must_check;
/*
 * stream_read_payload - the current (non-RAM) section's whole payload
 * (s->len bytes), its CRC checked.  *p stays valid until the next call on r.
 */
int stream_read_payload(struct stream_reader *r, const uint8_t **p) __must_check;
/*
 * stream_read_ram - the current RAM section into guest memory.
 *   lookup:  host address of [gpa, gpa + len) in the destination, or NULL
 *            if that is not all guest memory; NULL lookup: only check and
 *            count (stream-dump)
 *   st:      totals added to (may be NULL)
 * The run table is checked (pages aligned, inside the configured layout,
 * lengths consistent, every lookup succeeds) before any page is written.
 * Zero pages are cleared only where not already zero, so untouched
 * anonymous memory is not faulted in.  The data is written before the
 * section's CRC can be checked: on an error, the destination memory holds
 * partial data and the caller discards it.
 */
typedef void *(*stream_lookup_fn)(void *opaque, uint64_t gpa, uint64_t len);
int stream_read_ram(struct stream_reader *r, stream_lookup_fn lookup, void *opaque,
		    struct stream_ram_stats *st) __must_check;
/* stream_skip - skip the rest of the current section, checking its CRC. */
int stream_skip(struct stream_reader *r) __must_check;
/*
 * stream_refuse - the caller rejects the current section (unknown device,
 * bad version, bad payload): records the error with the section's name
 * prefixed to the printf-style message, and returns err (negative).
 */
int stream_refuse(struct stream_reader *r, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/*
 * stream_reader_report_unknown - on: stream_next_section() also returns
 * sections of unknown types flagged OPTIONAL (for listing tools), and the
 * caller skips them.
 */
void stream_reader_report_unknown(struct stream_reader *r, bool on);
/* The last section header read (after stream_read_header: the CONFIG's). */
const struct stream_section *stream_reader_section(const struct stream_reader *r);
/* The preamble's format version (0 before stream_read_header). */
uint32_t stream_reader_format_version(const struct stream_reader *r);
/* The first error's message ("" if none). */
const char *stream_reader_error(const struct stream_reader *r);
/*
 * True once reading failed because the connection did: an I/O error, a
 * timeout or the end of input before the end of the stream (not a stream
 * that was read whole and found wrong).
 */
bool stream_reader_link_failed(const struct stream_reader *r);
/* Stream bytes consumed so far. */
uint64_t stream_reader_offset(const struct stream_reader *r);
/* Sections read so far, the CONFIG and skipped ones included, EOF not. */
uint64_t stream_reader_sections(const struct stream_reader *r);

#endif
