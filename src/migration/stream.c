/*
 * stream.c - the snapshot/migration stream (stream.h, docs/stream-format.md):
 * the configuration's encoding and checks, the writer and the reader.
 *
 * Writer: everything goes through one large buffer (STREAM_WBUF_SIZE) that
 * is written with one write() when full, so there is no syscall per page or
 * per section.  Guest pages are copied into that buffer with their CRC
 * computed in the same pass (crc32c_copy): the guest may be running, and a
 * CRC taken from guest memory before a zero-copy writev() could disagree
 * with the bytes the kernel copies a moment later.  RAM is queued as runs
 * (zero-tested when queued) and written as one section per
 * STREAM_W_RAM_DATA_PAGES data pages or STREAM_W_RAM_RUNS runs, with the run
 * table first and the page data after it, starting on a 4 KiB boundary of
 * the stream.
 *
 * Reader: a window over the input (a 1 MiB buffer on an fd, or the caller's
 * memory), a stream offset, and the running CRC of the open section.  No
 * length is trusted beyond what can be checked: the bytes left (regular
 * files, memory), a per-type maximum (pipes and sockets), and for RAM the
 * exact length its run table implies.  Payloads are buffered as their bytes
 * arrive, so a lying length costs no more memory than the bytes sent.
 * Every failure records one message naming where it happened, and is
 * sticky.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <linux/kvm.h>
#include <linux/sockios.h>

#include "godwit/crc32c.h"
#include "godwit/dev.h"
#include "godwit/le.h"
#include "godwit/stream.h"
#include "godwit/vm.h"

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
#define RAM_VERSION    1
#define EOF_VERSION    1

#define SEC_FIXED      18u      /* u8 type, u8 flags, u16 id_len, u16 version, u32 instance, u64 len */
#define RAM_HDR        8u       /* u32 nruns, u32 pad */
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
/* Set by the fuzz target so mutated inputs get past the checksums. */
bool stream_fuzz_ignore_crc;
#define CRC_DIFFERS(a, b) (!stream_fuzz_ignore_crc && (a) != (b))
#else
#define CRC_DIFFERS(a, b) ((a) != (b))
#endif


static uint32_t chain_add(uint32_t chain, uint32_t crc)
{
	uint8_t b[4];

	le_put(b, crc, 4);
	return crc32c(chain, b, 4);
}

/* A page of zeroes?  Eight words per step, so a non-zero page exits early. */
static bool page_is_zero(const uint8_t *p)
{
	for (size_t i = 0; i < STREAM_PAGE_SIZE; i += 64) {
		uint64_t w[8];

		memcpy(w, p + i, sizeof(w));
		if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
			return false;
	}
	return true;
}

const char *stream_type_name(unsigned int type)
{
	switch (type) {
	case STREAM_CONFIG: return "config";
	case STREAM_RAM:    return "ram";
	case STREAM_CPU:    return "cpu";
	case STREAM_DEVICE: return "device";
	case STREAM_VM:     return "vm";
	case STREAM_EOF:    return "eof";
	case STREAM_DISK:   return "disk";
	default:            return "unknown";
	}
}

static bool type_known(unsigned int type)
{
	return type >= STREAM_CONFIG && type <= STREAM_DISK;
}

static bool id_valid(const char *id, size_t len)
{
	if (!len || len > STREAM_ID_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = id[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* Text fields: printable ASCII, or also well-formed UTF-8 where utf8 (utf8_valid()). */
static bool text_valid(const char *s, size_t len, bool utf8)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c == 0x7f || (c > 0x7f && !utf8))
			return false;
	}
	return !utf8 || utf8_valid(s, len);
}

/* ------------------------------------------------------------------ */
/* Configuration                                                       */

void stream_config_init(struct stream_config *c)
{
	memset(c, 0, sizeof(*c));
	snprintf(c->arch, sizeof(c->arch), "x86_64");
	snprintf(c->writer, sizeof(c->writer), "godwit %s", GODWIT_VERSION);
	c->page_size = STREAM_PAGE_SIZE;
}

int stream_config_add_region(struct stream_config *c, uint64_t gpa, uint64_t size)
{
	if (!size || (gpa | size) & (STREAM_PAGE_SIZE - 1))
		return -EINVAL;
	if (c->nr_regions >= STREAM_MAX_REGIONS)
		return -ENOSPC;
	c->regions[c->nr_regions++] = (struct stream_region){ gpa, size };
	return 0;
}

int stream_config_add_device(struct stream_config *c, const char *type, uint32_t instance,
			     uint16_t version, const char *options)
{
	struct stream_device *d;

	if (!type || !id_valid(type, strlen(type)))
		return -EINVAL;
	if (!options)
		options = "";
	if (strlen(options) > STREAM_OPTIONS_MAX || !text_valid(options, strlen(options), true))
		return -EINVAL;
	if (c->nr_devices >= STREAM_MAX_DEVICES)
		return -ENOSPC;
	d = &c->devices[c->nr_devices++];
	memset(d, 0, sizeof(*d));
	snprintf(d->type, sizeof(d->type), "%s", type);
	d->instance = instance;
	d->version = version;
	snprintf(d->options, sizeof(d->options), "%s", options);
	return 0;
}

int stream_config_set_cpuid(struct stream_config *c, const struct kvm_cpuid2 *cpuid)
{
	if (cpuid->nent > STREAM_MAX_CPUID)
		return -E2BIG;
	c->nr_cpuid = cpuid->nent;
	c->cpu_vendor[0] = '\0';
	for (uint32_t i = 0; i < cpuid->nent; i++) {
		const struct kvm_cpuid_entry2 *e = &cpuid->entries[i];

		c->cpuid[i] = (struct stream_cpuid_entry){
			e->function, e->index, e->flags, e->eax, e->ebx, e->ecx, e->edx,
		};
		if (e->function == 0) {
			memcpy(c->cpu_vendor, &e->ebx, 4);
			memcpy(c->cpu_vendor + 4, &e->edx, 4);
			memcpy(c->cpu_vendor + 8, &e->ecx, 4);
			c->cpu_vendor[12] = '\0';
			if (!text_valid(c->cpu_vendor, strlen(c->cpu_vendor), false))
				c->cpu_vendor[0] = '\0';
		}
	}
	return 0;
}

int stream_config_from_vm(struct stream_config *c, const struct vm *vm)
{
	int ret;

	stream_config_init(c);
	c->ncpus = vm->cfg.ncpus;
	snprintf(c->name, sizeof(c->name), "%s", vm->cfg.name);
	memcpy(c->uuid, vm->cfg.uuid, sizeof(c->uuid));
	snprintf(c->cpu_model, sizeof(c->cpu_model), "%s", cpu_model_name(vm->cfg.cpu_model));
	c->tsc_khz = vm->tsc_khz;
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		ret = stream_config_add_region(c, vm->mem[i].gpa, vm->mem[i].size);
		if (ret)
			return ret;
	}
	if (vm->cpuid) {
		ret = stream_config_set_cpuid(c, vm->cpuid);
		if (ret)
			return ret;
	}
	for (const struct dev *d = vm->devices; d; d = d->next) {
		ret = stream_config_add_device(c, d->ops->name, d->instance, d->ops->version, NULL);
		if (ret)
			return ret;
	}
	return 0;
}

/*
 * config_check - the invariants every stream's configuration holds, checked
 * by the writer before it writes and by the reader after it decodes.
 * Returns 0, or -EINVAL with the problem in err.
 */
static int config_check(const struct stream_config *c, char *err, size_t len)
{
	if (!c->arch[0] || !text_valid(c->arch, strlen(c->arch), false)) {
		snprintf(err, len, "no architecture");
		return -EINVAL;
	}
	if (c->page_size != STREAM_PAGE_SIZE) {
		snprintf(err, len, "page size %u, not %u", c->page_size, STREAM_PAGE_SIZE);
		return -EINVAL;
	}
	if (!c->ncpus || c->ncpus > STREAM_MAX_VCPUS) {
		snprintf(err, len, "%u vCPUs (1 to %u)", c->ncpus, STREAM_MAX_VCPUS);
		return -EINVAL;
	}
	if (!c->nr_regions || c->nr_regions > STREAM_MAX_REGIONS) {
		snprintf(err, len, "%u memory regions (1 to %u)", c->nr_regions, STREAM_MAX_REGIONS);
		return -EINVAL;
	}
	for (unsigned int i = 0; i < c->nr_regions; i++) {
		const struct stream_region *m = &c->regions[i];

		/* 2^52: the x86 physical-address limit; keeps every sum below 2^64. */
		if (!m->size || (m->gpa | m->size) & (STREAM_PAGE_SIZE - 1) ||
		    m->gpa >= 1ull << 52 || m->size > (1ull << 52) - m->gpa) {
			snprintf(err, len, "memory region %u (gpa 0x%llx, size 0x%llx) is empty, "
				 "unaligned or beyond 2^52", i, (unsigned long long)m->gpa,
				 (unsigned long long)m->size);
			return -EINVAL;
		}
		if (i && m->gpa < c->regions[i - 1].gpa + c->regions[i - 1].size) {
			snprintf(err, len, "memory region %u (gpa 0x%llx) overlaps or precedes "
				 "region %u", i, (unsigned long long)m->gpa, i - 1);
			return -EINVAL;
		}
	}
	if (c->nr_cpuid > STREAM_MAX_CPUID || c->nr_devices > STREAM_MAX_DEVICES) {
		snprintf(err, len, "too many CPUID entries or devices");
		return -EINVAL;
	}
	if (!text_valid(c->writer, strnlen(c->writer, sizeof(c->writer)), false) ||
	    !text_valid(c->name, strnlen(c->name, sizeof(c->name)), true) ||
	    !text_valid(c->cpu_model, strnlen(c->cpu_model, sizeof(c->cpu_model)), false) ||
	    !text_valid(c->cpu_vendor, strnlen(c->cpu_vendor, sizeof(c->cpu_vendor)), false)) {
		snprintf(err, len, "a name has control characters");
		return -EINVAL;
	}
	for (unsigned int i = 0; i < c->nr_devices; i++) {
		const struct stream_device *d = &c->devices[i];

		if (!id_valid(d->type, strnlen(d->type, sizeof(d->type))) ||
		    !text_valid(d->options, strnlen(d->options, sizeof(d->options)), true)) {
			snprintf(err, len, "device %u: bad type or options", i);
			return -EINVAL;
		}
		for (unsigned int j = 0; j < i; j++)
			if (c->devices[j].instance == d->instance &&
			    !strcmp(c->devices[j].type, d->type)) {
				snprintf(err, len, "device %s.%u listed twice", d->type,
					 d->instance);
				return -EINVAL;
			}
	}
	for (unsigned int i = 0; i < c->nr_disks; i++)
		for (unsigned int j = 0; j < i; j++)
			if (c->disks[j].instance == c->disks[i].instance) {
				snprintf(err, len, "the image of disk %u is listed twice",
					 c->disks[i].instance);
				return -EINVAL;
			}
	return 0;
}

static void put_str(struct state_out *o, uint16_t tag, const char *s)
{
	state_put_bytes(o, tag, s, (uint32_t)strlen(s));
}

/* The CONFIG payload for c (a checked configuration). */
static void config_encode(const struct stream_config *c, struct state_out *o)
{
	put_str(o, CFG_ARCH, c->arch);
	put_str(o, CFG_WRITER, c->writer);
	state_put_u32(o, CFG_PAGE_SIZE, c->page_size);
	state_put_u32(o, CFG_NCPUS, c->ncpus);
	for (unsigned int i = 0; i < c->nr_regions; i++) {
		uint8_t b[16];

		le_put(b, c->regions[i].gpa, 8);
		le_put(b + 8, c->regions[i].size, 8);
		state_put_bytes(o, CFG_REGION, b, sizeof(b));
	}
	put_str(o, CFG_NAME, c->name);
	state_put_bytes(o, CFG_UUID, c->uuid, sizeof(c->uuid));
	put_str(o, CFG_CPU_MODEL, c->cpu_model);
	put_str(o, CFG_CPU_VENDOR, c->cpu_vendor);
	if (c->nr_cpuid) {
		uint8_t *b = malloc((size_t)c->nr_cpuid * CPUID_ENTRY_LEN);

		if (!b) {
			if (!o->err)
				o->err = -ENOMEM;
			return;
		}
		for (unsigned int i = 0; i < c->nr_cpuid; i++) {
			const struct stream_cpuid_entry *e = &c->cpuid[i];
			uint8_t *q = b + (size_t)i * CPUID_ENTRY_LEN;

			le_put(q, e->function, 4);
			le_put(q + 4, e->index, 4);
			le_put(q + 8, e->flags, 4);
			le_put(q + 12, e->eax, 4);
			le_put(q + 16, e->ebx, 4);
			le_put(q + 20, e->ecx, 4);
			le_put(q + 24, e->edx, 4);
		}
		state_put_bytes(o, CFG_CPUID, b, c->nr_cpuid * CPUID_ENTRY_LEN);
		free(b);
	}
	state_put_u32(o, CFG_TSC_KHZ, c->tsc_khz);
	for (unsigned int i = 0; i < c->nr_devices; i++) {
		const struct stream_device *d = &c->devices[i];
		struct state_out dv;

		state_out_init(&dv);
		put_str(&dv, DEV_TYPE, d->type);
		state_put_u32(&dv, DEV_INSTANCE, d->instance);
		state_put_u16(&dv, DEV_VERSION, d->version);
		put_str(&dv, DEV_OPTIONS, d->options);
		if (dv.err && !o->err)
			o->err = dv.err;
		state_put_bytes(o, CFG_DEVICE, dv.buf, (uint32_t)dv.len);
		state_out_free(&dv);
	}
	for (unsigned int i = 0; i < c->nr_disks; i++) {
		uint8_t b[12];

		le_put(b, c->disks[i].instance, 4);
		le_put(b + 4, c->disks[i].size, 8);
		state_put_bytes(o, CFG_DISK, b, sizeof(b));
	}
}

/* A text field into dst (cap bytes with the NUL); -EBADMSG if bad. */
static int get_text(const struct state_field *f, char *dst, size_t cap, bool utf8)
{
	if (f->len >= cap || !text_valid((const char *)f->val, f->len, utf8))
		return -EBADMSG;
	memcpy(dst, f->val, f->len);
	dst[f->len] = '\0';
	return 0;
}

static int device_decode(const struct state_field *f, struct stream_device *d)
{
	struct state_in in;
	struct state_field g;
	bool have_type = false;
	int ret;

	memset(d, 0, sizeof(*d));
	state_in_init(&in, f->val, f->len);
	while ((ret = state_next(&in, &g)) > 0) {
		ret = 0;
		switch (g.tag) {
		case DEV_TYPE:
			ret = get_text(&g, d->type, sizeof(d->type), false);
			have_type = !ret;
			break;
		case DEV_INSTANCE:
			ret = state_get_u32(&g, &d->instance);
			break;
		case DEV_VERSION:
			ret = state_get_u16(&g, &d->version);
			break;
		case DEV_OPTIONS:
			ret = get_text(&g, d->options, sizeof(d->options), true);
			break;
		default:
			ret = 0;        /* a newer writer's field */
		}
		if (ret)
			return ret;
	}
	if (ret)
		return ret;
	return have_type ? 0 : -EBADMSG;
}

/*
 * config_decode - a CONFIG payload into c.  Unknown tags are skipped.
 * Returns 0, or -EBADMSG with the offending field in err.
 */
static int config_decode(const uint8_t *p, size_t len, struct stream_config *c,
			 char *err, size_t errlen)
{
	struct state_in in;
	struct state_field f;
	bool have_arch = false, have_ps = false, have_ncpus = false;
	int ret;

	memset(c, 0, sizeof(*c));
	state_in_init(&in, p, len);
	while ((ret = state_next(&in, &f)) > 0) {
		ret = 0;
		switch (f.tag) {
		case CFG_ARCH:
			ret = get_text(&f, c->arch, sizeof(c->arch), false);
			have_arch = true;
			break;
		case CFG_WRITER:
			ret = get_text(&f, c->writer, sizeof(c->writer), false);
			break;
		case CFG_PAGE_SIZE:
			ret = state_get_u32(&f, &c->page_size);
			have_ps = true;
			break;
		case CFG_NCPUS:
			ret = state_get_u32(&f, &c->ncpus);
			have_ncpus = true;
			break;
		case CFG_REGION:
			if (f.len != 16 || c->nr_regions >= STREAM_MAX_REGIONS) {
				ret = -EBADMSG;
				break;
			}
			c->regions[c->nr_regions].gpa = le_get(f.val, 8);
			c->regions[c->nr_regions].size = le_get(f.val + 8, 8);
			c->nr_regions++;
			break;
		case CFG_NAME:
			ret = get_text(&f, c->name, sizeof(c->name), true);
			break;
		case CFG_UUID:
			ret = state_get_bytes(&f, c->uuid, sizeof(c->uuid));
			break;
		case CFG_CPU_MODEL:
			ret = get_text(&f, c->cpu_model, sizeof(c->cpu_model), false);
			break;
		case CFG_CPU_VENDOR:
			ret = get_text(&f, c->cpu_vendor, sizeof(c->cpu_vendor), false);
			break;
		case CFG_CPUID:
			if (f.len % CPUID_ENTRY_LEN || f.len / CPUID_ENTRY_LEN > STREAM_MAX_CPUID) {
				ret = -EBADMSG;
				break;
			}
			c->nr_cpuid = f.len / CPUID_ENTRY_LEN;
			for (unsigned int i = 0; i < c->nr_cpuid; i++) {
				const uint8_t *q = f.val + (size_t)i * CPUID_ENTRY_LEN;

				c->cpuid[i] = (struct stream_cpuid_entry){
					(uint32_t)le_get(q, 4), (uint32_t)le_get(q + 4, 4),
					(uint32_t)le_get(q + 8, 4), (uint32_t)le_get(q + 12, 4),
					(uint32_t)le_get(q + 16, 4), (uint32_t)le_get(q + 20, 4),
					(uint32_t)le_get(q + 24, 4),
				};
			}
			break;
		case CFG_TSC_KHZ:
			ret = state_get_u32(&f, &c->tsc_khz);
			break;
		case CFG_DEVICE:
			if (c->nr_devices >= STREAM_MAX_DEVICES) {
				ret = -EBADMSG;
				break;
			}
			ret = device_decode(&f, &c->devices[c->nr_devices]);
			if (!ret)
				c->nr_devices++;
			break;
		case CFG_DISK:
			if (f.len != 12 || c->nr_disks >= STREAM_MAX_DISKS) {
				ret = -EBADMSG;
				break;
			}
			c->disks[c->nr_disks].instance = (uint32_t)le_get(f.val, 4);
			c->disks[c->nr_disks].size = le_get(f.val + 4, 8);
			if (!c->disks[c->nr_disks].size || c->disks[c->nr_disks].size % 512 ||
			    c->disks[c->nr_disks].size > STREAM_DISK_MAX_SIZE)
				ret = -EBADMSG;
			c->nr_disks++;
			break;
		default:
			ret = 0;        /* a newer writer's field */
		}
		if (ret) {
			snprintf(err, errlen, "bad field %u (%u bytes)", f.tag, f.len);
			return -EBADMSG;
		}
	}
	if (ret) {
		snprintf(err, errlen, "bad field encoding at byte %zu", in.off);
		return -EBADMSG;
	}
	if (!have_arch || !have_ps || !have_ncpus) {
		snprintf(err, errlen, "no %s field", !have_arch ? "arch" : !have_ps ?
			 "page size" : "vCPU count");
		return -EBADMSG;
	}
	if (config_check(c, err, errlen))
		return -EBADMSG;
	return 0;
}

int stream_config_compat(const struct stream_config *local, const struct stream_config *s,
			 char *err, size_t len)
{
	if (strcmp(local->arch, s->arch)) {
		snprintf(err, len, "architecture: %s here, %s in the stream", local->arch, s->arch);
		return -EINVAL;
	}
	if (local->page_size != s->page_size) {
		snprintf(err, len, "page size: %u here, %u in the stream", local->page_size,
			 s->page_size);
		return -EINVAL;
	}
	if (local->ncpus != s->ncpus) {
		snprintf(err, len, "vCPUs: %u here, %u in the stream", local->ncpus, s->ncpus);
		return -EINVAL;
	}
	for (unsigned int i = 0; i < MAX(local->nr_regions, s->nr_regions); i++) {
		const struct stream_region *a = i < local->nr_regions ? &local->regions[i] : NULL;
		const struct stream_region *b = i < s->nr_regions ? &s->regions[i] : NULL;

		if (!a || !b || a->gpa != b->gpa || a->size != b->size) {
			snprintf(err, len, "memory region %u: %s here, %s in the stream (gpa 0x%llx "
				 "size 0x%llx vs gpa 0x%llx size 0x%llx)", i,
				 a ? "present" : "absent", b ? "present" : "absent",
				 a ? (unsigned long long)a->gpa : 0ull,
				 a ? (unsigned long long)a->size : 0ull,
				 b ? (unsigned long long)b->gpa : 0ull,
				 b ? (unsigned long long)b->size : 0ull);
			return -EINVAL;
		}
	}
	if (strcmp(local->cpu_model, s->cpu_model)) {
		snprintf(err, len, "CPU model: %s here, %s in the stream", local->cpu_model,
			 s->cpu_model);
		return -EINVAL;
	}
	for (unsigned int i = 0; i < s->nr_devices; i++) {
		const struct stream_device *b = &s->devices[i];
		const struct stream_device *a = NULL;

		for (unsigned int j = 0; j < local->nr_devices && !a; j++)
			if (local->devices[j].instance == b->instance &&
			    !strcmp(local->devices[j].type, b->type))
				a = &local->devices[j];
		if (!a) {
			snprintf(err, len, "device %s.%u is in the stream but not configured here",
				 b->type, b->instance);
			return -EINVAL;
		}
		if (strcmp(a->options, b->options)) {
			snprintf(err, len, "device %s.%u: options '%s' here, '%s' in the stream",
				 b->type, b->instance, a->options, b->options);
			return -EINVAL;
		}
	}
	for (unsigned int j = 0; j < local->nr_devices; j++) {
		const struct stream_device *a = &local->devices[j];
		bool found = false;

		for (unsigned int i = 0; i < s->nr_devices && !found; i++)
			found = s->devices[i].instance == a->instance &&
				!strcmp(s->devices[i].type, a->type);
		if (!found) {
			snprintf(err, len, "device %s.%u is configured here but not in the stream",
				 a->type, a->instance);
			return -EINVAL;
		}
	}
	return 0;
}

/* The feature registers stream_cpuid_check() compares, and what it ignores. */
enum { R_EAX, R_EBX, R_ECX, R_EDX };
static const struct cpuid_feature_reg {
	uint32_t function, index;
	int reg;
	uint32_t mask;            /* bits that must be supported */
} cpuid_feature_regs[] = {
	/* KVM emulates x2APIC (21), TSC deadline (24); OSXSAVE (27) follows CR4; hypervisor (31) */
	{ 0x1, 0, R_ECX, ~((1u << 21) | (1u << 24) | (1u << 27) | (1u << 31)) },
	{ 0x1, 0, R_EDX, ~(1u << 28) },                 /* HTT: topology, set by godwit */
	{ 0x6, 0, R_EAX, ~(1u << 2) },                  /* ARAT: emulated */
	{ 0x7, 0, R_EBX, ~0u },
	{ 0x7, 0, R_ECX, ~(1u << 4) },                  /* OSPKE follows CR4 */
	{ 0x7, 0, R_EDX, ~0u },
	{ 0x7, 1, R_EAX, ~0u },
	{ 0xd, 0, R_EAX, ~0u },                         /* XSAVE state components */
	{ 0xd, 0, R_EDX, ~0u },
	{ 0xd, 1, R_EAX, ~0u },
	{ 0x40000001, 0, R_EAX, ~0u },                  /* KVM paravirtual features */
	{ 0x80000001, 0, R_ECX, ~(1u << 1) },           /* CmpLegacy: topology */
	{ 0x80000001, 0, R_EDX, ~0u },
	{ 0x80000007, 0, R_EDX, ~0u },
	{ 0x80000008, 0, R_EBX, ~0u },
};

static uint32_t cpuid_reg(uint32_t eax, uint32_t ebx, uint32_t ecx, uint32_t edx, int r)
{
	return r == R_EAX ? eax : r == R_EBX ? ebx : r == R_ECX ? ecx : edx;
}

/* Which of (function, index)'s entries applies, as cpuid_find() decides. */
static bool cpuid_entry_is(uint32_t e_fn, uint32_t e_idx, uint32_t e_flags, uint32_t fn,
			   uint32_t idx)
{
	return e_fn == fn && (!(e_flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) || e_idx == idx);
}

int stream_cpuid_check(const struct stream_config *s, const struct kvm_cpuid2 *sup,
		       char *err, size_t len)
{
	for (uint32_t i = 0; i < sup->nent && s->cpu_vendor[0]; i++) {
		const struct kvm_cpuid_entry2 *e = &sup->entries[i];
		char v[13];

		if (e->function != 0)
			continue;
		memcpy(v, &e->ebx, 4);
		memcpy(v + 4, &e->edx, 4);
		memcpy(v + 8, &e->ecx, 4);
		v[12] = '\0';
		if (strcmp(v, s->cpu_vendor)) {
			snprintf(err, len, "CPU vendor: %.12s here, %s in the stream", v,
				 s->cpu_vendor);
			return -ENOTSUP;
		}
	}
	for (size_t k = 0; k < ARRAY_SIZE(cpuid_feature_regs); k++) {
		const struct cpuid_feature_reg *fr = &cpuid_feature_regs[k];
		const struct stream_cpuid_entry *se = NULL;
		const struct kvm_cpuid_entry2 *he = NULL;
		uint32_t want, have = 0;

		for (unsigned int i = 0; i < s->nr_cpuid && !se; i++)
			if (cpuid_entry_is(s->cpuid[i].function, s->cpuid[i].index,
					   s->cpuid[i].flags, fr->function, fr->index))
				se = &s->cpuid[i];
		if (!se)
			continue;
		want = cpuid_reg(se->eax, se->ebx, se->ecx, se->edx, fr->reg) & fr->mask;
		for (uint32_t i = 0; i < sup->nent && !he; i++)
			if (cpuid_entry_is(sup->entries[i].function, sup->entries[i].index,
					   sup->entries[i].flags, fr->function, fr->index))
				he = &sup->entries[i];
		if (he)
			have = cpuid_reg(he->eax, he->ebx, he->ecx, he->edx, fr->reg);
		if (want & ~have) {
			snprintf(err, len, "CPUID leaf 0x%x.%u %s bit %d is used by the guest but "
				 "not offered by this host", fr->function, fr->index,
				 (const char *[]){ "eax", "ebx", "ecx", "edx" }[fr->reg],
				 __builtin_ctz(want & ~have));
			return -ENOTSUP;
		}
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Writer                                                              */

struct ram_run {
	uint64_t gpa;
	uint32_t npages;
	uint32_t flags;           /* RUN_F_ZERO */
	const uint8_t *host;      /* data runs */
};

enum wstate { W_NEW, W_OPEN, W_ENDED };

/* ------------------------------------------------------------------ */
/* Watchdog on the peer (stream_watchdog, stream.h)                    */

struct wd_state {
	struct stream_watchdog wd;
	bool on;
	struct timespec t0;       /* when it was set: the deadline counts from here */
	uint64_t win_ns;          /* time blocked on the peer in this window */
	uint64_t win_bytes;       /* bytes that passed in this window */
};

static uint64_t wd_now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void wd_set(struct wd_state *s, const struct stream_watchdog *wd)
{
	memset(s, 0, sizeof(*s));
	if (!wd || (!wd->deadline_ms && (!wd->min_bytes || !wd->window_ms)))
		return;
	s->wd = *wd;
	s->on = true;
	clock_gettime(CLOCK_MONOTONIC, &s->t0);
}

/* Before a read or write: past the deadline?  0, or -ETIMEDOUT with why in buf. */
static int wd_before(const struct wd_state *s, char *buf, size_t len)
{
	uint64_t t0 = (uint64_t)s->t0.tv_sec * 1000000000ull + (uint64_t)s->t0.tv_nsec;

	if (!s->on || !s->wd.deadline_ms || wd_now_ns() - t0 < s->wd.deadline_ms * 1000000ull)
		return 0;
	snprintf(buf, len, "the migration took longer than its deadline of %llu s",
		 (unsigned long long)(s->wd.deadline_ms / 1000));
	return -ETIMEDOUT;
}

/* After one read or write that waited ns and moved bytes: too slow a peer? */
static int wd_after(struct wd_state *s, uint64_t ns, uint64_t bytes, bool rd, char *buf,
		    size_t len)
{
	if (!s->on || !s->wd.min_bytes || !s->wd.window_ms)
		return 0;
	s->win_ns += ns;
	s->win_bytes += bytes;
	if (s->win_ns < (uint64_t)s->wd.window_ms * 1000000ull)
		return 0;
	if (s->win_bytes < s->wd.min_bytes) {
		snprintf(buf, len, "too slow: the peer %s %llu bytes in %.1f s of waiting (at "
			 "least %llu expected)", rd ? "sent" : "took",
			 (unsigned long long)s->win_bytes, (double)s->win_ns / 1e9,
			 (unsigned long long)s->wd.min_bytes);
		return -ETIMEDOUT;
	}
	s->win_ns = 0;
	s->win_bytes = 0;
	return 0;
}

struct stream_writer {
	int fd;
	bool sock;
	struct wd_state wd;
	enum wstate state;
	uint8_t *buf;
	size_t len;               /* bytes buffered */
	uint64_t off;             /* stream bytes produced */
	uint32_t crc;             /* the open section's CRC */
	uint32_t chain;           /* CRC over the section CRCs so far */
	uint64_t nsections;
	int err;
	char msg[256];
	struct stream_region regions[STREAM_MAX_REGIONS];
	unsigned int nr_regions;
	/* The pending RAM section. */
	struct ram_run *runs;
	unsigned int nruns;
	unsigned int data_pages;
	uint64_t pend_pages;      /* pages in the pending section, zero ones included */
	uint64_t mem_pages;       /* the configured memory; no section holds more */
	struct stream_ram_stats ram;
};

__attribute__((format(printf, 3, 4)))
static int w_fail(struct stream_writer *w, int err, const char *fmt, ...)
{
	va_list ap;

	if (w->err)
		return w->err;
	w->err = err;
	va_start(ap, fmt);
	vsnprintf(w->msg, sizeof(w->msg), fmt, ap);
	va_end(ap);
	return err;
}

int stream_writer_new(int fd, struct stream_writer **out)
{
	struct stream_writer *w;
	struct stat st;

	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->buf = aligned_alloc(STREAM_PAGE_SIZE, STREAM_WBUF_SIZE);
	w->runs = calloc(STREAM_W_RAM_RUNS, sizeof(*w->runs));
	if (!w->buf || !w->runs) {
		stream_writer_free(w);
		return -ENOMEM;
	}
	w->fd = fd;
	w->sock = !fstat(fd, &st) && S_ISSOCK(st.st_mode);
	*out = w;
	return 0;
}

void stream_writer_set_watchdog(struct stream_writer *w, const struct stream_watchdog *wd)
{
	wd_set(&w->wd, wd);
}

void stream_writer_free(struct stream_writer *w)
{
	if (!w)
		return;
	free(w->buf);
	free(w->runs);
	free(w);
}

/*
 * io_err - what failed I/O on fd means: a socket's SO_RCVTIMEO or SO_SNDTIMEO
 * (the migration sets both) ends a blocked call with EAGAIN, which says
 * "Resource temporarily unavailable"; that is a silent peer, said so with the
 * timeout, and *e becomes ETIMEDOUT.  Anything else is strerror(*e).
 */
static const char *io_err(int fd, bool rd, int *e, char *buf, size_t len)
{
	struct timeval tv;
	socklen_t tl = sizeof(tv);

	if ((*e == EAGAIN || *e == EWOULDBLOCK) &&
	    getsockopt(fd, SOL_SOCKET, rd ? SO_RCVTIMEO : SO_SNDTIMEO, &tv, &tl) == 0 &&
	    (tv.tv_sec || tv.tv_usec)) {
		snprintf(buf, len, "timed out: the peer %s for %lld.%03lld s",
			 rd ? "sent nothing" : "took nothing", (long long)tv.tv_sec,
			 (long long)tv.tv_usec / 1000);
		*e = ETIMEDOUT;
		return buf;
	}
	return strerror(*e);
}

/* Bytes queued on a socket that its peer has not taken (SIOCOUTQ); 0 if unknown. */
static uint64_t w_outq(int fd)
{
	int q = 0;

	return ioctl(fd, SIOCOUTQ, &q) == 0 && q > 0 ? (uint64_t)q : 0;
}

/*
 * w_drain - write out the buffer: all of it, retrying short writes and EINTR.
 * A watched socket (a migration's, stream_writer_set_watchdog) is written
 * without blocking, and waited on a second at a time: a blocking send()
 * would sit in one call for as long as each piece of the peer's queue drains
 * within SO_SNDTIMEO, out of the watchdog's sight.  What the watchdog counts
 * there is what the peer took (the socket's queue, before and after), not
 * what went into the queue; a peer that takes nothing for SO_SNDTIMEO is the
 * usual silent-peer timeout ("took nothing for 10.000 s").
 */
static int w_drain(struct stream_writer *w)
{
	bool watched = w->sock && w->wd.on;
	uint64_t stalled = 0, limit = 0, q0 = watched ? w_outq(w->fd) : 0;
	size_t done = 0;

	if (watched) {
		struct timeval tv = { 0 };
		socklen_t tl = sizeof(tv);

		if (getsockopt(w->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &tl) == 0)
			limit = (uint64_t)tv.tv_sec * 1000000000ull + (uint64_t)tv.tv_usec * 1000ull;
	}
	while (done < w->len) {
		char wd_why[160];
		uint64_t t0, moved;
		ssize_t n;
		int saved;

		if (wd_before(&w->wd, wd_why, sizeof(wd_why)))
			return w_fail(w, -ETIMEDOUT, "write at stream offset %llu: %s",
				      (unsigned long long)(w->off - w->len + done), wd_why);
		t0 = wd_now_ns();
		if (w->sock)
			n = send(w->fd, w->buf + done, w->len - done,
				 MSG_NOSIGNAL | (watched ? MSG_DONTWAIT : 0));
		else
			n = write(w->fd, w->buf + done, w->len - done);
		saved = errno;
		if (n < 0 && saved == EINTR)
			continue;
		moved = n > 0 ? (uint64_t)n : 0;
		if (watched) {
			uint64_t q1;

			if (n < 0 && (saved == EAGAIN || saved == EWOULDBLOCK)) {
				struct pollfd pfd = { .fd = w->fd, .events = POLLOUT };

				if (limit && stalled >= limit)
					goto failed;     /* io_err(): "took nothing for 10.000 s" */
				if (poll(&pfd, 1, 1000) < 0 && errno != EINTR) {
					saved = errno;
					goto failed;
				}
			}
			q1 = w_outq(w->fd);
			moved = q0 + moved > q1 ? q0 + moved - q1 : 0;
			q0 = q1;
			stalled = moved ? 0 : stalled + (wd_now_ns() - t0);
		}
		if (wd_after(&w->wd, wd_now_ns() - t0, moved, false, wd_why, sizeof(wd_why)))
			return w_fail(w, -ETIMEDOUT, "write at stream offset %llu: %s",
				      (unsigned long long)(w->off - w->len + done), wd_why);
		if (n < 0 && watched && (saved == EAGAIN || saved == EWOULDBLOCK))
			continue;
failed:
		if (n <= 0) {
			int e = n < 0 ? saved : EIO;
			char buf[64];
			const char *why = io_err(w->fd, false, &e, buf, sizeof(buf));

			return w_fail(w, -e, "write at stream offset %llu: %s",
				      (unsigned long long)(w->off - w->len + done), why);
		}
		done += (size_t)n;
	}
	w->len = 0;
	return 0;
}

/* Append n bytes (src NULL: zeroes) to the stream, in the open section's CRC if crc. */
static int w_put(struct stream_writer *w, const void *src, size_t n, bool crc)
{
	const uint8_t *s = src;

	while (n) {
		size_t k;

		if (w->err)
			return w->err;
		if (w->len == STREAM_WBUF_SIZE && w_drain(w))
			return w->err;
		k = MIN(n, STREAM_WBUF_SIZE - w->len);
		if (s && crc) {
			w->crc = crc32c_copy(w->crc, w->buf + w->len, s, k);
		} else {
			if (s)
				memcpy(w->buf + w->len, s, k);
			else
				memset(w->buf + w->len, 0, k);
			if (crc)
				w->crc = crc32c(w->crc, w->buf + w->len, k);
		}
		w->len += k;
		w->off += k;
		n -= k;
		if (s)
			s += k;
	}
	return w->err;
}

static size_t sec_header_len(const char *id)
{
	return SEC_FIXED + strlen(id);
}

/* A section header; starts the section's CRC. */
static int sec_begin(struct stream_writer *w, unsigned int type, unsigned int flags,
		     const char *id, uint16_t version, uint32_t instance, uint64_t len)
{
	uint8_t h[SEC_FIXED + STREAM_ID_MAX];
	size_t idl = strlen(id);

	h[0] = (uint8_t)type;
	h[1] = (uint8_t)flags;
	le_put(h + 2, idl, 2);
	memcpy(h + 4, id, idl);
	le_put(h + 4 + idl, version, 2);
	le_put(h + 6 + idl, instance, 4);
	le_put(h + 10 + idl, len, 8);
	w->crc = 0;
	return w_put(w, h, SEC_FIXED + idl, true);
}

/* The section's CRC trailer; adds it to the chain. */
static int sec_end(struct stream_writer *w)
{
	uint8_t b[4];

	le_put(b, w->crc, 4);
	if (w_put(w, b, 4, false))
		return w->err;
	w->chain = chain_add(w->chain, w->crc);
	w->nsections++;
	return 0;
}

static int w_section(struct stream_writer *w, unsigned int type, unsigned int flags,
		     const char *id, uint16_t version, uint32_t instance,
		     const void *payload, size_t len)
{
	if (sec_begin(w, type, flags, id, version, instance, len) ||
	    w_put(w, payload, len, true) || sec_end(w))
		return w->err;
	return 0;
}

/*
 * ram_emit - write the pending RAM section: header, run table, padding to
 * a 4 KiB stream boundary (only if there is page data), the data pages of
 * the data runs in table order.
 */
static int ram_emit(struct stream_writer *w)
{
	uint64_t table_end, pad = 0, len;
	uint8_t b[RAM_RUN];

	if (!w->nruns)
		return w->err;
	table_end = w->off + sec_header_len("ram") + RAM_HDR + (uint64_t)w->nruns * RAM_RUN;
	if (w->data_pages)
		pad = (STREAM_PAGE_SIZE - (table_end & (STREAM_PAGE_SIZE - 1))) &
		      (STREAM_PAGE_SIZE - 1);
	len = RAM_HDR + (uint64_t)w->nruns * RAM_RUN + pad +
	      ((uint64_t)w->data_pages << STREAM_PAGE_SHIFT);
	if (sec_begin(w, STREAM_RAM, 0, "ram", RAM_VERSION, 0, len))
		return w->err;
	le_put(b, w->nruns, 4);
	le_put(b + 4, pad, 4);
	if (w_put(w, b, RAM_HDR, true))
		return w->err;
	for (unsigned int i = 0; i < w->nruns; i++) {
		le_put(b, w->runs[i].gpa, 8);
		le_put(b + 8, w->runs[i].npages, 4);
		le_put(b + 12, w->runs[i].flags, 4);
		if (w_put(w, b, RAM_RUN, true))
			return w->err;
	}
	if (w_put(w, NULL, pad, true))
		return w->err;
	for (unsigned int i = 0; i < w->nruns; i++) {
		const struct ram_run *r = &w->runs[i];

		w->ram.runs++;
		w->ram.pages += r->npages;
		if (r->flags & RUN_F_ZERO) {
			w->ram.zero_pages += r->npages;
			continue;
		}
		if (w_put(w, r->host, (size_t)r->npages << STREAM_PAGE_SHIFT, true))
			return w->err;
	}
	if (sec_end(w))
		return w->err;
	w->ram.sections++;
	w->nruns = 0;
	w->data_pages = 0;
	w->pend_pages = 0;
	return 0;
}

/* Queue pages [gpa, gpa + npages) at host (checked by the caller). */
static int ram_add(struct stream_writer *w, const uint8_t *host, uint64_t gpa, uint64_t npages)
{
	for (uint64_t i = 0; i < npages; i++, host += STREAM_PAGE_SIZE, gpa += STREAM_PAGE_SIZE) {
		bool zero = page_is_zero(host);
		struct ram_run *last;

		/* a page queued twice must not make a section hold more than the guest */
		if (w->pend_pages == w->mem_pages && ram_emit(w))
			return w->err;
		w->pend_pages++;
		last = w->nruns ? &w->runs[w->nruns - 1] : NULL;

		if (last && (last->flags & RUN_F_ZERO) == (zero ? RUN_F_ZERO : 0) &&
		    last->npages < UINT32_MAX &&
		    last->gpa + ((uint64_t)last->npages << STREAM_PAGE_SHIFT) == gpa &&
		    (zero || last->host + ((size_t)last->npages << STREAM_PAGE_SHIFT) == host)) {
			last->npages++;
		} else {
			if (w->nruns == STREAM_W_RAM_RUNS && ram_emit(w))
				return w->err;
			w->runs[w->nruns++] = (struct ram_run){
				gpa, 1, zero ? RUN_F_ZERO : 0, zero ? NULL : host,
			};
		}
		if (!zero && ++w->data_pages == STREAM_W_RAM_DATA_PAGES && ram_emit(w))
			return w->err;
	}
	return 0;
}

/* Misuse checks shared by the RAM calls. */
static int ram_check(struct stream_writer *w, const void *host, uint64_t gpa, uint64_t npages)
{
	if (w->err)
		return w->err;
	if (w->state != W_OPEN)
		return w_fail(w, -EINVAL, "RAM written outside stream_begin/stream_end");
	if (!npages)
		return 0;
	if (!host || gpa & (STREAM_PAGE_SIZE - 1) || npages > (1ull << 40))
		return w_fail(w, -EINVAL, "RAM at gpa 0x%llx: unaligned or no host address",
			      (unsigned long long)gpa);
	for (unsigned int i = 0; i < w->nr_regions; i++) {
		const struct stream_region *m = &w->regions[i];

		if (gpa >= m->gpa && gpa - m->gpa <= m->size &&
		    npages <= (m->size - (gpa - m->gpa)) >> STREAM_PAGE_SHIFT)
			return 0;
	}
	return w_fail(w, -EINVAL, "RAM at gpa 0x%llx (%llu pages) is outside the configured memory",
		      (unsigned long long)gpa, (unsigned long long)npages);
}

int stream_put_ram(struct stream_writer *w, const void *host, uint64_t gpa, uint64_t npages)
{
	int ret = ram_check(w, host, gpa, npages);

	if (ret || !npages)
		return ret;
	return ram_add(w, host, gpa, npages);
}

int stream_put_ram_dirty(struct stream_writer *w, const void *host, uint64_t gpa,
			 uint64_t npages, const uint64_t *bitmap)
{
	const uint8_t *h = host;
	uint64_t start = 0, run = 0;
	int ret = ram_check(w, host, gpa, npages);

	if (ret || !npages)
		return ret;
	for (uint64_t wi = 0; wi < (npages + 63) / 64; wi++) {
		uint64_t word = bitmap[wi];

		if (wi == npages / 64)          /* the last, partial word */
			word &= (1ull << (npages % 64)) - 1;
		while (word) {
			uint64_t p = wi * 64 + (uint64_t)__builtin_ctzll(word);

			word &= word - 1;
			if (run && start + run == p) {
				run++;
				continue;
			}
			if (run && ram_add(w, h + (start << STREAM_PAGE_SHIFT),
					   gpa + (start << STREAM_PAGE_SHIFT), run))
				return w->err;
			start = p;
			run = 1;
		}
	}
	if (run && ram_add(w, h + (start << STREAM_PAGE_SHIFT), gpa + (start << STREAM_PAGE_SHIFT),
			   run))
		return w->err;
	return 0;
}

int stream_begin(struct stream_writer *w, const struct stream_config *c)
{
	uint8_t pre[STREAM_PREAMBLE_LEN];
	struct state_out o;
	char why[200];
	uint32_t crc;

	if (w->err)
		return w->err;
	if (w->state != W_NEW)
		return w_fail(w, -EINVAL, "stream_begin called twice");
	if (config_check(c, why, sizeof(why)))
		return w_fail(w, -EINVAL, "configuration: %s", why);
	memcpy(w->regions, c->regions, sizeof(w->regions));
	w->nr_regions = c->nr_regions;
	for (unsigned int i = 0; i < c->nr_regions; i++)
		w->mem_pages += c->regions[i].size >> STREAM_PAGE_SHIFT;

	memcpy(pre, STREAM_MAGIC, STREAM_MAGIC_LEN);
	le_put(pre + 8, STREAM_FORMAT_VERSION, 4);
	le_put(pre + 12, 0, 4);
	crc = crc32c(0, pre, 16);
	le_put(pre + 16, crc, 4);
	if (w_put(w, pre, sizeof(pre), false))
		return w->err;
	w->chain = chain_add(0, crc);

	state_out_init(&o);
	config_encode(c, &o);
	if (o.err) {
		state_out_free(&o);
		return w_fail(w, o.err, "configuration: %s", strerror(-o.err));
	}
	w_section(w, STREAM_CONFIG, 0, "config", CONFIG_VERSION, 0, o.buf, o.len);
	state_out_free(&o);
	w->state = W_OPEN;
	return w->err;
}

int stream_put_section(struct stream_writer *w, unsigned int type, unsigned int flags,
		       const char *id, uint16_t version, uint32_t instance,
		       const void *payload, size_t len)
{
	if (w->err)
		return w->err;
	if (w->state != W_OPEN)
		return w_fail(w, -EINVAL, "section '%s' written outside stream_begin/stream_end",
			      id ? id : "");
	if (!id || !id_valid(id, strlen(id)))
		return w_fail(w, -EINVAL, "section id '%s' is not 1 to %u of [A-Za-z0-9._-]",
			      id ? id : "", STREAM_ID_MAX);
	if (type == STREAM_CONFIG || type == STREAM_RAM || type == STREAM_EOF || !type ||
	    type > 0xff || flags & ~STREAM_F_OPTIONAL || (!payload && len))
		return w_fail(w, -EINVAL, "section '%s': type %u or flags 0x%x not allowed here",
			      id, type, flags);
	if (ram_emit(w))
		return w->err;
	return w_section(w, type, flags, id, version, instance, payload, len);
}

int stream_put_disk(struct stream_writer *w, uint32_t instance, uint64_t off,
		    const void *data, uint64_t len)
{
	uint8_t h[STREAM_DISK_HDR] = { 0 };

	if (w->err)
		return w->err;
	if (w->state != W_OPEN)
		return w_fail(w, -EINVAL, "disk section written outside stream_begin/stream_end");
	if (off % 512 || len % 512 || !len || len > STREAM_DISK_MAX_DATA)
		return w_fail(w, -EINVAL, "disk extent at %llu, %llu bytes: not whole sectors "
			      "or too long", (unsigned long long)off, (unsigned long long)len);
	le_put(h, off, 8);
	le_put(h + 8, len, 8);
	le_put(h + 16, data ? 0 : STREAM_DISK_F_ZERO, 4);
	if (ram_emit(w))
		return w->err;
	if (sec_begin(w, STREAM_DISK, 0, "disk", 1, instance,
		      STREAM_DISK_HDR + (data ? len : 0)) ||
	    w_put(w, h, sizeof(h), true) || (data && w_put(w, data, len, true)) || sec_end(w))
		return w->err;
	return 0;
}

int stream_disk_parse(const uint8_t *p, uint64_t n, uint64_t size, uint64_t *off,
		      uint64_t *len, const uint8_t **data, char *err, size_t errlen)
{
	uint32_t flags;

	if (n < STREAM_DISK_HDR) {
		snprintf(err, errlen, "%llu bytes: shorter than a disk extent header",
			 (unsigned long long)n);
		return -EBADMSG;
	}
	*off = le_get(p, 8);
	*len = le_get(p + 8, 8);
	flags = (uint32_t)le_get(p + 16, 4);
	if ((flags & ~STREAM_DISK_F_ZERO) || le_get(p + 20, 4)) {
		snprintf(err, errlen, "unknown extent flags 0x%x", flags);
		return -EBADMSG;
	}
	if (*off % 512 || *len % 512 || !*len || *len > STREAM_DISK_MAX_DATA ||
	    *off > size || *len > size - *off) {
		snprintf(err, errlen, "extent at %llu, %llu bytes, does not fit a %llu-byte disk "
			 "in whole sectors", (unsigned long long)*off, (unsigned long long)*len,
			 (unsigned long long)size);
		return -EBADMSG;
	}
	if (n != STREAM_DISK_HDR + ((flags & STREAM_DISK_F_ZERO) ? 0 : *len)) {
		snprintf(err, errlen, "payload of %llu bytes for a %s extent of %llu bytes",
			 (unsigned long long)n, (flags & STREAM_DISK_F_ZERO) ? "zero" : "data",
			 (unsigned long long)*len);
		return -EBADMSG;
	}
	*data = (flags & STREAM_DISK_F_ZERO) ? NULL : p + STREAM_DISK_HDR;
	return 0;
}

int stream_put_state(struct stream_writer *w, unsigned int type, const char *id,
		     uint16_t version, uint32_t instance, const struct state_out *o)
{
	if (!w->err && o->err)
		return w_fail(w, o->err, "section '%s' (instance %u): saving failed: %s",
			      id ? id : "", instance, strerror(-o->err));
	return stream_put_section(w, type, 0, id, version, instance, o->buf, o->len);
}

int stream_flush(struct stream_writer *w)
{
	if (w->err)
		return w->err;
	if (ram_emit(w))
		return w->err;
	return w_drain(w);
}

int stream_end(struct stream_writer *w)
{
	struct state_out o;

	if (w->err)
		return w->err;
	if (w->state != W_OPEN)
		return w_fail(w, -EINVAL, "stream_end without stream_begin, or twice");
	if (ram_emit(w))
		return w->err;
	state_out_init(&o);
	state_put_u64(&o, EOF_SECTIONS, w->nsections);
	state_put_u64(&o, EOF_OFFSET, w->off);
	state_put_u32(&o, EOF_CHAIN, w->chain);
	if (o.err) {
		state_out_free(&o);
		return w_fail(w, o.err, "eof: %s", strerror(-o.err));
	}
	w_section(w, STREAM_EOF, 0, "eof", EOF_VERSION, 0, o.buf, o.len);
	state_out_free(&o);
	w->state = W_ENDED;
	if (w->err)
		return w->err;
	return w_drain(w);
}

const char *stream_writer_error(const struct stream_writer *w)
{
	return w->msg;
}

uint64_t stream_writer_offset(const struct stream_writer *w)
{
	return w->off;
}

void stream_writer_ram_stats(const struct stream_writer *w, struct stream_ram_stats *st)
{
	*st = w->ram;
}

/* ------------------------------------------------------------------ */
/* Reader                                                              */

enum rstate {
	R_START,                  /* nothing read */
	R_BETWEEN,                /* before a section header */
	R_PAYLOAD,                /* in cur's payload (r->left bytes to go) */
	R_DONE,                   /* EOF read and verified */
	R_FAILED,
};
enum rwhere { AT_PREAMBLE, AT_SECHDR, AT_SECTION };

struct rd_run {
	uint64_t gpa;
	uint32_t npages, flags;
	uint8_t *host;
};

struct stream_reader {
	int fd;                   /* -1: memory */
	struct wd_state wd;
	uint8_t *own;             /* the fd's buffer */
	const uint8_t *data;      /* the window: data[pos..end) is buffered */
	size_t pos, end, cap;
	uint64_t off;             /* stream offset of data[pos] */
	uint64_t size;            /* stream length if known, else UINT64_MAX */
	enum rstate state;
	enum rwhere where;
	uint64_t hdr_off;         /* where the current section header starts */
	struct stream_section cur;
	uint64_t left;            /* payload bytes of cur not consumed */
	uint32_t crc;             /* cur's running CRC */
	uint64_t nsections;
	uint32_t chain;
	uint32_t version;         /* the preamble's */
	bool report_unknown;
	bool target_zeroed;          /* stream_reader_target_zeroed(): skip zero-run checks */
	struct stream_config cfg;
	uint64_t mem_pages;
	uint8_t *payload;
	size_t payload_cap;
	struct rd_run *runs;
	size_t runs_cap;
	int err;
	char msg[400];
};

__attribute__((format(printf, 3, 4)))
static int r_fail(struct stream_reader *r, int err, const char *fmt, ...)
{
	va_list ap;
	int n = 0;

	if (r->err)
		return r->err;
	r->err = err;
	r->state = R_FAILED;
	switch (r->where) {
	case AT_PREAMBLE:
		n = snprintf(r->msg, sizeof(r->msg), "stream header: ");
		break;
	case AT_SECHDR:
		n = snprintf(r->msg, sizeof(r->msg), "section header at offset 0x%llx: ",
			     (unsigned long long)r->hdr_off);
		break;
	case AT_SECTION:
		n = snprintf(r->msg, sizeof(r->msg), "section '%s' (%s", r->cur.id,
			     stream_type_name(r->cur.type));
		if (!type_known(r->cur.type))
			n += snprintf(r->msg + n, sizeof(r->msg) - n, " type %u", r->cur.type);
		n += snprintf(r->msg + n, sizeof(r->msg) - n, ", instance %u, offset 0x%llx): ",
			      r->cur.instance, (unsigned long long)r->cur.offset);
		break;
	}
	if (n < 0 || (size_t)n >= sizeof(r->msg))
		n = 0;
	va_start(ap, fmt);
	vsnprintf(r->msg + n, sizeof(r->msg) - n, fmt, ap);
	va_end(ap);
	return err;
}

int stream_refuse(struct stream_reader *r, int err, const char *fmt, ...)
{
	char m[300];
	va_list ap;

	if (r->err)
		return r->err;
	if (err >= 0)
		err = -EINVAL;
	va_start(ap, fmt);
	vsnprintf(m, sizeof(m), fmt, ap);
	va_end(ap);
	return r_fail(r, err, "%s", m);
}

static int r_truncated(struct stream_reader *r)
{
	return r_fail(r, -EBADMSG, "truncated: the stream ends at offset 0x%llx",
		      (unsigned long long)(r->off + (r->end - r->pos)));
}

static int r_new(int fd, const void *p, size_t len, struct stream_reader **out)
{
	struct stream_reader *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	r->fd = fd;
	r->size = UINT64_MAX;
	if (fd >= 0) {
		struct stat st;
		off_t at;

		r->own = malloc(STREAM_RBUF_SIZE);
		if (!r->own) {
			free(r);
			return -ENOMEM;
		}
		r->data = r->own;
		r->cap = STREAM_RBUF_SIZE;
		at = lseek(fd, 0, SEEK_CUR);
		if (!fstat(fd, &st) && S_ISREG(st.st_mode) && at >= 0 && st.st_size >= at)
			r->size = (uint64_t)(st.st_size - at);
	} else {
		r->data = p;
		r->end = r->cap = len;
		r->size = len;
	}
	*out = r;
	return 0;
}

int stream_reader_new(int fd, struct stream_reader **out)
{
	if (fd < 0)
		return -EBADF;
	return r_new(fd, NULL, 0, out);
}

int stream_reader_new_mem(const void *p, size_t len, struct stream_reader **out)
{
	if (!p && len)
		return -EINVAL;
	return r_new(-1, p, len, out);
}

void stream_reader_set_watchdog(struct stream_reader *r, const struct stream_watchdog *wd)
{
	wd_set(&r->wd, wd);
}

void stream_reader_free(struct stream_reader *r)
{
	if (!r)
		return;
	free(r->own);
	free(r->payload);
	free(r->runs);
	free(r);
}

/* read() once into the buffer's free space; 0 at end of input. */
static ssize_t r_read(struct stream_reader *r, void *dst, size_t n)
{
	for (;;) {
		char wd_why[160];
		uint64_t t0;
		ssize_t k;
		int saved;

		if (wd_before(&r->wd, wd_why, sizeof(wd_why)))
			return r_fail(r, -ETIMEDOUT, "read at offset 0x%llx: %s",
				      (unsigned long long)(r->off + (r->end - r->pos)), wd_why);
		t0 = wd_now_ns();
		k = read(r->fd, dst, n);
		saved = errno;
		if ((k >= 0 || saved != EINTR) &&
		    wd_after(&r->wd, wd_now_ns() - t0, k > 0 ? (uint64_t)k : 0, true, wd_why,
			     sizeof(wd_why)))
			return r_fail(r, -ETIMEDOUT, "read at offset 0x%llx: %s",
				      (unsigned long long)(r->off + (r->end - r->pos)), wd_why);
		if (k >= 0)
			return k;
		if (saved != EINTR) {
			int e = saved;
			char buf[64];
			const char *why = io_err(r->fd, true, &e, buf, sizeof(buf));

			return r_fail(r, -e, "read at offset 0x%llx: %s",
				      (unsigned long long)(r->off + (r->end - r->pos)), why);
		}
	}
}

/* Make at least need (<= cap) bytes available in the window. */
static int r_fill(struct stream_reader *r, size_t need)
{
	if (r->end - r->pos >= need)
		return 0;
	if (r->fd < 0 || need > r->cap)
		return r_truncated(r);
	if (r->cap - r->pos < need) {
		memmove(r->own, r->own + r->pos, r->end - r->pos);
		r->end -= r->pos;
		r->pos = 0;
	}
	while (r->end - r->pos < need) {
		ssize_t k = r_read(r, r->own + r->end, r->cap - r->end);

		if (k < 0)
			return (int)k;
		if (!k)
			return r_truncated(r);
		r->end += (size_t)k;
	}
	return 0;
}

/* Consume n buffered bytes, in the section CRC if crc. */
static const uint8_t *r_take(struct stream_reader *r, size_t n, bool crc)
{
	const uint8_t *p = r->data + r->pos;

	if (crc)
		r->crc = crc32c(r->crc, p, n);
	r->pos += n;
	r->off += n;
	return p;
}

/*
 * Consume n bytes into dst (NULL: discard), in the section CRC.  Large reads
 * go straight from the fd into dst, a megabyte at a time, and the CRC is
 * taken from dst while it is still in cache.
 */
static int r_copy(struct stream_reader *r, uint8_t *dst, uint64_t n)
{
	while (n) {
		size_t avail = r->end - r->pos, k;

		if (!avail) {
			if (dst && r->fd >= 0 && n >= r->cap / 2) {
				ssize_t got = r_read(r, dst, MIN(n, (uint64_t)r->cap));

				if (got < 0)
					return (int)got;
				if (!got)
					return r_truncated(r);
				r->crc = crc32c(r->crc, dst, (size_t)got);
				r->off += (uint64_t)got;
				dst += got;
				n -= (uint64_t)got;
				continue;
			}
			if (r->fd < 0)
				return r_truncated(r);
			r->pos = r->end = 0;
			if (r_fill(r, 1))
				return r->err;
			avail = r->end - r->pos;
		}
		k = (size_t)MIN((uint64_t)avail, n);
		if (dst) {
			r->crc = crc32c_copy(r->crc, dst, r->data + r->pos, k);
			dst += k;
		} else {
			r->crc = crc32c(r->crc, r->data + r->pos, k);
		}
		r->pos += k;
		r->off += k;
		n -= k;
	}
	return 0;
}

/* The payload is consumed: check the CRC trailer, chain it. */
static int r_end_section(struct stream_reader *r)
{
	uint32_t stored;

	if (r_fill(r, 4))
		return r->err;
	stored = (uint32_t)le_get(r_take(r, 4, false), 4);
	if (CRC_DIFFERS(stored, r->crc))
		return r_fail(r, -EBADMSG, "crc mismatch (stored 0x%08x, computed 0x%08x)",
			      stored, r->crc);
	r->chain = chain_add(r->chain, stored);
	r->state = R_BETWEEN;
	r->where = AT_SECHDR;
	r->hdr_off = r->off;
	return 0;
}

int stream_skip(struct stream_reader *r)
{
	if (r->err)
		return r->err;
	if (r->state != R_PAYLOAD)
		return r->state == R_BETWEEN || r->state == R_DONE ? 0 :
			r_fail(r, -EINVAL, "stream_skip before the header");
	if (r_copy(r, NULL, r->left))
		return r->err;
	r->left = 0;
	return r_end_section(r);
}

/* Payload into r->payload, growing with the bytes that actually arrive. */
static int r_payload(struct stream_reader *r, uint64_t len)
{
	uint64_t have = 0;

	while (have < len) {
		size_t chunk = (size_t)MIN(len - have, (uint64_t)STREAM_RBUF_SIZE);

		if (have + chunk > r->payload_cap) {
			size_t cap = MAX(r->payload_cap * 2, (size_t)(have + chunk));
			uint8_t *nb;

			cap = (size_t)MIN((uint64_t)cap, len);
			nb = realloc(r->payload, cap);
			if (!nb)
				return r_fail(r, -ENOMEM, "out of memory for %llu bytes",
					      (unsigned long long)len);
			r->payload = nb;
			r->payload_cap = cap;
		}
		if (r_copy(r, r->payload + have, chunk))
			return r->err;
		have += chunk;
		r->left -= chunk;
	}
	return r_end_section(r);
}

int stream_read_payload(struct stream_reader *r, const uint8_t **p)
{
	static const uint8_t empty[1];
	int ret;

	if (r->err)
		return r->err;
	if (r->state != R_PAYLOAD || r->left != r->cur.len || r->cur.type == STREAM_RAM)
		return r_fail(r, -EINVAL, "stream_read_payload: no unread non-RAM section");
	ret = r_payload(r, r->cur.len);
	if (ret)
		return ret;
	*p = r->cur.len ? r->payload : empty;
	return 0;
}

/* The largest payload a section of this type may have, where nothing else bounds it. */
static uint64_t type_max(const struct stream_reader *r, unsigned int type)
{
	switch (type) {
	case STREAM_CONFIG: return STREAM_MAX_CONFIG;
	case STREAM_CPU:    return STREAM_MAX_CPU;
	case STREAM_DEVICE: return STREAM_MAX_DEVICE;
	case STREAM_VM:     return STREAM_MAX_VM;
	case STREAM_EOF:    return STREAM_MAX_EOF;
	case STREAM_DISK:   return STREAM_DISK_HDR + STREAM_DISK_MAX_DATA;
	case STREAM_RAM:
		return RAM_HDR + (uint64_t)STREAM_R_RAM_RUNS * RAM_RUN + STREAM_PAGE_SIZE +
		       (r->mem_pages << STREAM_PAGE_SHIFT);
	default:            return STREAM_MAX_SKIP;
	}
}

static int section_version_check(struct stream_reader *r, unsigned int max)
{
	if (r->cur.version == 0 || r->cur.version > max)
		return r_fail(r, -EPROTONOSUPPORT, "version %u is not one this godwit reads (1 to %u)",
			      r->cur.version, max);
	return 0;
}

/* Read and check a section header into r->cur; the payload is next. */
static int r_section_header(struct stream_reader *r)
{
	struct stream_section *s = &r->cur;
	const uint8_t *h;
	size_t idl;
	uint64_t left;

	r->where = AT_SECHDR;
	r->hdr_off = r->off;
	r->crc = 0;
	if (r_fill(r, 4))
		return r->err;
	h = r->data + r->pos;
	idl = (size_t)le_get(h + 2, 2);
	if (!idl || idl > STREAM_ID_MAX)
		return r_fail(r, -EBADMSG, "id length %zu (1 to %u)", idl, STREAM_ID_MAX);
	if (r_fill(r, SEC_FIXED + idl))
		return r->err;
	h = r_take(r, SEC_FIXED + idl, true);
	memset(s, 0, sizeof(*s));
	s->type = h[0];
	s->flags = h[1];
	if (!id_valid((const char *)h + 4, idl))
		return r_fail(r, -EBADMSG, "the id is not [A-Za-z0-9._-]");
	memcpy(s->id, h + 4, idl);
	s->id[idl] = '\0';
	s->version = (uint16_t)le_get(h + 4 + idl, 2);
	s->instance = (uint32_t)le_get(h + 6 + idl, 4);
	s->len = le_get(h + 10 + idl, 8);
	s->offset = r->hdr_off;
	r->nsections++;
	r->where = AT_SECTION;
	r->state = R_PAYLOAD;
	r->left = s->len;

	if (s->flags & ~STREAM_F_OPTIONAL)
		return r_fail(r, -EPROTONOSUPPORT, "unknown flags 0x%x", s->flags);
	left = r->size == UINT64_MAX ? UINT64_MAX : r->size - r->off;
	if (left < 4 || s->len > left - 4)
		return r_fail(r, -EBADMSG, "length %llu is more than the %llu bytes left",
			      (unsigned long long)s->len,
			      (unsigned long long)(left >= 4 ? left - 4 : 0));
	if (!type_known(s->type) && !(s->flags & STREAM_F_OPTIONAL))
		return r_fail(r, -EPROTONOSUPPORT, "unknown required section (type %u): this "
			      "godwit cannot load it", s->type);
	if (s->len > type_max(r, s->type))
		return r_fail(r, -EBADMSG, "length %llu is more than a %s section may have (%llu)",
			      (unsigned long long)s->len, stream_type_name(s->type),
			      (unsigned long long)type_max(r, s->type));
	return 0;
}

int stream_read_header(struct stream_reader *r, const struct stream_config **cfg)
{
	const uint8_t *pre;
	uint32_t version, flags, stored, crc;
	char why[200];
	int ret;

	if (r->err)
		return r->err;
	if (r->state != R_START)
		return r_fail(r, -EINVAL, "stream_read_header called twice");
	r->where = AT_PREAMBLE;
	if (r_fill(r, STREAM_PREAMBLE_LEN))
		return r->err;
	pre = r_take(r, STREAM_PREAMBLE_LEN, false);
	if (memcmp(pre, STREAM_MAGIC, STREAM_MAGIC_LEN))
		return r_fail(r, -EBADMSG, "bad magic: not a godwit stream");
	version = (uint32_t)le_get(pre + 8, 4);
	flags = (uint32_t)le_get(pre + 12, 4);
	stored = (uint32_t)le_get(pre + 16, 4);
	crc = crc32c(0, pre, 16);
	if (CRC_DIFFERS(stored, crc))
		return r_fail(r, -EBADMSG, "crc mismatch (stored 0x%08x, computed 0x%08x)",
			      stored, crc);
	if (version > STREAM_FORMAT_VERSION)
		return r_fail(r, -EPROTONOSUPPORT, "format version %u is newer than this godwit "
			      "reads (%u to %u)", version, STREAM_FORMAT_MIN_VERSION,
			      STREAM_FORMAT_VERSION);
	if (version < STREAM_FORMAT_MIN_VERSION)
		return r_fail(r, -EPROTONOSUPPORT, "format version %u is older than this godwit "
			      "reads (%u to %u)", version, STREAM_FORMAT_MIN_VERSION,
			      STREAM_FORMAT_VERSION);
	if (flags)
		return r_fail(r, -EPROTONOSUPPORT, "unknown flags 0x%x", flags);
	r->chain = chain_add(0, stored);
	r->version = version;
	r->state = R_BETWEEN;

	ret = r_section_header(r);
	if (ret)
		return ret;
	if (r->cur.type != STREAM_CONFIG)
		return r_fail(r, -EBADMSG, "the first section must be the configuration");
	ret = section_version_check(r, CONFIG_VERSION);
	if (ret)
		return ret;
	ret = r_payload(r, r->cur.len);
	if (ret)
		return ret;
	r->where = AT_SECTION;          /* errors below are the config's */
	if (config_decode(r->payload, r->cur.len, &r->cfg, why, sizeof(why)))
		return r_fail(r, -EBADMSG, "%s", why);
	r->cfg.digest = crc32c(0, r->payload, r->cur.len);
	for (unsigned int i = 0; i < r->cfg.nr_regions; i++)
		r->mem_pages += r->cfg.regions[i].size >> STREAM_PAGE_SHIFT;
	r->where = AT_SECHDR;
	*cfg = &r->cfg;
	return 0;
}

/* The EOF section: the counts and the chain must match what was read. */
static int r_eof(struct stream_reader *r)
{
	uint64_t at = r->cur.offset, nsec = r->nsections - 1;
	uint32_t chain = r->chain;
	struct state_in in;
	struct state_field f;
	uint64_t s_nsec = 0, s_off = 0;
	uint32_t s_chain = 0;
	unsigned int have = 0;
	int ret;

	ret = section_version_check(r, EOF_VERSION);
	if (ret || (ret = r_payload(r, r->cur.len)))
		return ret;
	r->where = AT_SECTION;
	state_in_init(&in, r->payload, r->cur.len);
	while ((ret = state_next(&in, &f)) > 0) {
		ret = 0;
		if (f.tag == EOF_SECTIONS)
			ret = state_get_u64(&f, &s_nsec), have |= 1;
		else if (f.tag == EOF_OFFSET)
			ret = state_get_u64(&f, &s_off), have |= 2;
		else if (f.tag == EOF_CHAIN)
			ret = state_get_u32(&f, &s_chain), have |= 4;
		if (ret)
			break;
	}
	if (ret || have != 7)
		return r_fail(r, -EBADMSG, "bad end-of-stream record");
	if (s_nsec != nsec)
		return r_fail(r, -EBADMSG, "the writer wrote %llu sections, %llu were read",
			      (unsigned long long)s_nsec, (unsigned long long)nsec);
	if (s_off != at)
		return r_fail(r, -EBADMSG, "the writer's end is at offset 0x%llx, the reader's at "
			      "0x%llx", (unsigned long long)s_off, (unsigned long long)at);
	if (CRC_DIFFERS(s_chain, chain))
		return r_fail(r, -EBADMSG, "stream checksum mismatch (stored 0x%08x, computed "
			      "0x%08x): a section was lost, repeated or reordered", s_chain, chain);
	r->state = R_DONE;
	return 0;
}

int stream_next_section(struct stream_reader *r, struct stream_section *s)
{
	int ret;

	for (;;) {
		if (r->err)
			return r->err;
		if (r->state == R_DONE)
			return 0;
		if (r->state == R_START)
			return r_fail(r, -EINVAL, "stream_next_section before stream_read_header");
		if (r->state == R_PAYLOAD && stream_skip(r))
			return r->err;
		ret = r_section_header(r);
		if (ret)
			return ret;
		switch (r->cur.type) {
		case STREAM_CONFIG:
			return r_fail(r, -EBADMSG, "a second configuration section");
		case STREAM_EOF:
			ret = r_eof(r);
			return ret ? ret : 0;
		case STREAM_RAM:
			ret = section_version_check(r, RAM_VERSION);
			if (ret)
				return ret;
			break;
		default:
			if (!type_known(r->cur.type) && !r->report_unknown) {
				/* Unknown and optional (required ones were refused). */
				if (stream_skip(r))
					return r->err;
				continue;
			}
		}
		*s = r->cur;
		return 1;
	}
}

/* Is [gpa, gpa + npages pages) inside one configured region? */
static bool in_layout(const struct stream_config *c, uint64_t gpa, uint64_t npages)
{
	for (unsigned int i = 0; i < c->nr_regions; i++) {
		const struct stream_region *m = &c->regions[i];

		if (gpa >= m->gpa && gpa - m->gpa < m->size &&
		    npages <= (m->size - (gpa - m->gpa)) >> STREAM_PAGE_SHIFT)
			return true;
	}
	return false;
}

int stream_read_ram(struct stream_reader *r, stream_lookup_fn lookup, void *opaque,
		    struct stream_ram_stats *st)
{
	uint64_t len = r->cur.len, data_pages = 0, zero_pages = 0, pages = 0, want, pad;
	const uint8_t *h;
	uint32_t nruns;

	if (r->err)
		return r->err;
	if (r->state != R_PAYLOAD || r->cur.type != STREAM_RAM || r->left != len)
		return r_fail(r, -EINVAL, "stream_read_ram: no unread RAM section");
	if (len < RAM_HDR)
		return r_fail(r, -EBADMSG, "length %llu is shorter than the RAM header",
			      (unsigned long long)len);
	if (r_fill(r, RAM_HDR))
		return r->err;
	h = r_take(r, RAM_HDR, true);
	nruns = (uint32_t)le_get(h, 4);
	pad = le_get(h + 4, 4);
	if (nruns > STREAM_R_RAM_RUNS || (uint64_t)nruns * RAM_RUN > len - RAM_HDR)
		return r_fail(r, -EBADMSG, "%u runs do not fit its length %llu (at most %u runs)",
			      nruns, (unsigned long long)len, STREAM_R_RAM_RUNS);
	if (nruns > r->runs_cap) {
		struct rd_run *nr = realloc(r->runs, (size_t)nruns * sizeof(*nr));

		if (!nr)
			return r_fail(r, -ENOMEM, "out of memory for %u runs", nruns);
		r->runs = nr;
		r->runs_cap = nruns;
	}
	for (uint32_t i = 0; i < nruns; i++) {
		struct rd_run *run = &r->runs[i];

		if (r_fill(r, RAM_RUN))
			return r->err;
		h = r_take(r, RAM_RUN, true);
		run->gpa = le_get(h, 8);
		run->npages = (uint32_t)le_get(h + 8, 4);
		run->flags = (uint32_t)le_get(h + 12, 4);
		run->host = NULL;
		if (run->flags & ~RUN_F_ZERO || !run->npages || run->gpa & (STREAM_PAGE_SIZE - 1))
			return r_fail(r, -EBADMSG, "run %u (gpa 0x%llx, %u pages, flags 0x%x) is "
				      "malformed", i, (unsigned long long)run->gpa, run->npages,
				      run->flags);
		if (!in_layout(&r->cfg, run->gpa, run->npages))
			return r_fail(r, -EBADMSG, "run %u (gpa 0x%llx, %u pages) is outside the "
				      "memory layout", i, (unsigned long long)run->gpa,
				      run->npages);
		pages += run->npages;
		if (run->flags & RUN_F_ZERO)
			zero_pages += run->npages;
		else
			data_pages += run->npages;
		/*
		 * Runs may overlap, so bound the sums: a section never holds more
		 * pages than the guest has (the writer splits before that), and its
		 * data must fit its length.  Nothing below can then wrap.
		 */
		if (pages > r->mem_pages || data_pages > len >> STREAM_PAGE_SHIFT)
			return r_fail(r, -EBADMSG, "runs 0 to %u hold %llu pages (%llu with data): "
				      "more than the guest has or the length holds", i,
				      (unsigned long long)pages, (unsigned long long)data_pages);
	}
	want = data_pages ? (STREAM_PAGE_SIZE - (r->off & (STREAM_PAGE_SIZE - 1))) &
			    (STREAM_PAGE_SIZE - 1) : 0;
	if (pad != want)
		return r_fail(r, -EBADMSG, "page data padding %llu, expected %llu",
			      (unsigned long long)pad, (unsigned long long)want);
	if (len != RAM_HDR + (uint64_t)nruns * RAM_RUN + pad + (data_pages << STREAM_PAGE_SHIFT))
		return r_fail(r, -EBADMSG, "length %llu does not match its %u runs (%llu data pages)",
			      (unsigned long long)len, nruns, (unsigned long long)data_pages);
	if (lookup) {
		for (uint32_t i = 0; i < nruns; i++) {
			struct rd_run *run = &r->runs[i];

			run->host = lookup(opaque, run->gpa,
					   (uint64_t)run->npages << STREAM_PAGE_SHIFT);
			if (!run->host)
				return r_fail(r, -EBADMSG, "run %u (gpa 0x%llx, %u pages) is not "
					      "guest memory here", i,
					      (unsigned long long)run->gpa, run->npages);
		}
	}
	if (r_copy(r, NULL, pad))
		return r->err;
	for (uint32_t i = 0; i < nruns; i++) {
		struct rd_run *run = &r->runs[i];
		uint64_t bytes = (uint64_t)run->npages << STREAM_PAGE_SHIFT;

		if (run->flags & RUN_F_ZERO) {
			/* Reading untouched memory only to find it zero costs a fault a page. */
			if (r->target_zeroed)
				continue;
			for (uint64_t o = 0; run->host && o < bytes; o += STREAM_PAGE_SIZE)
				if (!page_is_zero(run->host + o))
					memset(run->host + o, 0, STREAM_PAGE_SIZE);
			continue;
		}
		if (r_copy(r, run->host, bytes))
			return r->err;
	}
	r->left = 0;
	if (r_end_section(r))
		return r->err;
	if (st) {
		st->sections++;
		st->runs += nruns;
		st->pages += pages;
		st->zero_pages += zero_pages;
	}
	return 0;
}

void stream_reader_report_unknown(struct stream_reader *r, bool on)
{
	r->report_unknown = on;
}

const struct stream_section *stream_reader_section(const struct stream_reader *r)
{
	return &r->cur;
}

uint32_t stream_reader_format_version(const struct stream_reader *r)
{
	return r->version;
}

const char *stream_reader_error(const struct stream_reader *r)
{
	return r->msg;
}

uint64_t stream_reader_offset(const struct stream_reader *r)
{
	return r->off;
}

uint64_t stream_reader_sections(const struct stream_reader *r)
{
	return r->nsections - (r->state == R_DONE ? 1 : 0);
}

void stream_reader_target_zeroed(struct stream_reader *r)
{
	r->target_zeroed = true;
}

void stream_reader_set_target_zeroed(struct stream_reader *r, bool on)
{
	r->target_zeroed = on;
}
