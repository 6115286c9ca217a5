/*
 * stream_config.c - the stream's CONFIG section (stream.h,
 * docs/stream-format.md): the VM's configuration as a migration carries it,
 * its encoding, the checks on what a peer sent, and whether this host can
 * take it (the same layout, devices and disks; a CPUID it supports).
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
#include "stream_int.h"

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

	if (!type || !stream_id_valid(type, strlen(type)))
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
 * stream_config_check - the invariants every stream's configuration holds, checked
 * by the writer before it writes and by the reader after it decodes.
 * Returns 0, or -EINVAL with the problem in err.
 */
int stream_config_check(const struct stream_config *c, char *err, size_t len)
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

		if (!stream_id_valid(d->type, strnlen(d->type, sizeof(d->type))) ||
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
void stream_config_encode(const struct stream_config *c, struct state_out *o)
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
 * stream_config_decode - a CONFIG payload into c.  Unknown tags are skipped.
 * Returns 0, or -EBADMSG with the offending field in err.
 */
int stream_config_decode(const uint8_t *p, size_t len, struct stream_config *c,
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
	if (stream_config_check(c, err, errlen))
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
