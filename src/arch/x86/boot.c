/*
 * boot.c - what a guest finds in memory at its first instruction.
 *
 * Two protocols:
 *  - Linux bzImage, 64-bit boot protocol (Documentation/arch/x86/boot.rst):
 *    the protected-mode kernel at LAYOUT_KERNEL, a zero page (struct
 *    boot_params) with the setup header copied from the image, the e820
 *    map, command line, initrd and ACPI RSDP address; entry in long mode at
 *    load address + 0x200 with RSI pointing to the zero page, through an
 *    identity map of the low 4 GiB and a GDT with __BOOT_CS/__BOOT_DS.
 *  - ELF with a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): PT_LOAD
 *    segments at their physical addresses, struct hvm_start_info with the
 *    memory map, command line, RSDP and the initrd as module 0; entry in
 *    32-bit protected mode, paging off, EBX pointing to the start info.
 *
 * Everything read from the image is bounds-checked: a truncated or hostile
 * image gets -ENOEXEC and a message, never an out-of-bounds access.
 */
#include <errno.h>
#include <elf.h>
#include <stdio.h>
#include <string.h>

#include "godwit/boot.h"
#include "godwit/layout.h"
#include "godwit/le.h"

/* ---- memory map ---------------------------------------------------------- */

void mem_split(uint64_t mem_size, uint64_t *low, uint64_t *high)
{
	*low = MIN(mem_size, LAYOUT_MMIO_HOLE);
	*high = mem_size - *low;
}

unsigned int e820_build(uint64_t mem_size, struct e820_entry *e, unsigned int max)
{
	uint64_t low, high;
	unsigned int n = 0;

#define E820_ADD(a, s, t) do {                                          \
		if (n < max) {                                          \
			e[n].addr = (a); e[n].size = (s); e[n].type = (t); \
		}                                                       \
		n++;                                                    \
	} while (0)

	mem_split(mem_size, &low, &high);
	E820_ADD(0, LAYOUT_EBDA, E820_RAM);
	E820_ADD(LAYOUT_EBDA, 0xa0000 - LAYOUT_EBDA, E820_RESERVED);
	/* 0xa0000-0xe0000 is the legacy VGA/option ROM hole: not listed. */
	E820_ADD(LAYOUT_ACPI, LAYOUT_ACPI_SIZE, E820_RESERVED);
	if (low > LAYOUT_HIGH_RAM)
		E820_ADD(LAYOUT_HIGH_RAM, low - LAYOUT_HIGH_RAM, E820_RAM);
	if (high)
		E820_ADD(LAYOUT_4G, high, E820_RAM);
#undef E820_ADD
	return MIN(n, max);
}

/* ---- little-endian accessors on untrusted bytes --------------------------- */


#define BOOT_ERR(...) do { if (errlen) snprintf(err, errlen, __VA_ARGS__); } while (0)

/* ---- bzImage -------------------------------------------------------------- */

/* Offsets into the image / struct boot_params (boot.rst, "The real-mode kernel header"). */
#define BP_ACPI_RSDP       0x070
#define BP_EXT_RAMDISK_IMG 0x0c0
#define BP_EXT_RAMDISK_SZ  0x0c4
#define BP_EXT_CMDLINE     0x0c8
#define BP_E820_ENTRIES    0x1e8
#define BP_SETUP_SECTS     0x1f1
#define BP_SYSSIZE         0x1f4
#define BP_BOOT_FLAG       0x1fe
#define BP_JUMP            0x200
#define BP_HEADER          0x202
#define BP_VERSION         0x206
#define BP_TYPE_OF_LOADER  0x210
#define BP_LOADFLAGS       0x211
#define BP_RAMDISK_IMAGE   0x218
#define BP_RAMDISK_SIZE    0x21c
#define BP_HEAP_END        0x224
#define BP_CMDLINE_PTR     0x228
#define BP_INITRD_MAX      0x22c
#define BP_KERNEL_ALIGN    0x230
#define BP_XLOADFLAGS      0x236
#define BP_CMDLINE_SIZE    0x238
#define BP_INIT_SIZE       0x260
#define BP_E820_TABLE      0x2d0
#define BP_E820_MAX        128
#define BP_SIZE            0x1000

#define HDRS_MAGIC         0x53726448  /* "HdrS" */
#define LOADED_HIGH        0x01
#define CAN_USE_HEAP       0x80
#define XLF_KERNEL_64      0x01

static int bz_check(const uint8_t *d, size_t size, char *err, size_t errlen)
{
	unsigned int setup_sects;
	uint16_t version;

	if (size < BP_INIT_SIZE + 4 || le16_get(d + BP_BOOT_FLAG) != 0xaa55 ||
	    le32_get(d + BP_HEADER) != HDRS_MAGIC) {
		BOOT_ERR("not a Linux bzImage (no boot header)");
		return -ENOEXEC;
	}
	version = le16_get(d + BP_VERSION);
	if (version < 0x020c) {
		BOOT_ERR("boot protocol %u.%02u is too old (need 2.12 for the 64-bit entry)",
			 version >> 8, version & 0xff);
		return -ENOEXEC;
	}
	if (!(le16_get(d + BP_XLOADFLAGS) & XLF_KERNEL_64)) {
		BOOT_ERR("kernel has no 64-bit entry point (XLF_KERNEL_64 unset)");
		return -ENOEXEC;
	}
	setup_sects = d[BP_SETUP_SECTS] ? d[BP_SETUP_SECTS] : 4;
	if ((size_t)(setup_sects + 1) * 512 >= size) {
		BOOT_ERR("bzImage is truncated (setup code only)");
		return -ENOEXEC;
	}
	/* syssize: the protected-mode code's size in 16-byte paragraphs. */
	if ((uint64_t)le32_get(d + BP_SYSSIZE) * 16 > size - (size_t)(setup_sects + 1) * 512) {
		BOOT_ERR("bzImage is truncated (%zu bytes, the header promises %llu more)", size,
			 (unsigned long long)le32_get(d + BP_SYSSIZE) * 16);
		return -ENOEXEC;
	}
	if (BP_HEADER + (size_t)d[BP_JUMP + 1] > BP_SIZE) {
		BOOT_ERR("bzImage setup header is too long");
		return -ENOEXEC;
	}
	return 0;
}

/* Identity map of the low 4 GiB with 2 MiB pages, and the boot GDT. */
static int boot_write_pagetables(const struct boot_config *cfg)
{
	uint8_t *pml4 = cfg->xlate(cfg->opaque, LAYOUT_PML4, 6 * 4096);
	uint8_t *gdt = cfg->xlate(cfg->opaque, LAYOUT_GDT, 4 * 8);

	if (!pml4 || !gdt)
		return -E2BIG;
	memset(pml4, 0, 6 * 4096);
	le64_put(pml4, (LAYOUT_PML4 + 0x1000) | 0x3);              /* P | RW */
	for (int i = 0; i < 4; i++) {
		uint8_t *pd = pml4 + 0x2000 + i * 0x1000;

		le64_put(pml4 + 0x1000 + i * 8, (LAYOUT_PML4 + 0x2000 + i * 0x1000) | 0x3);
		for (int j = 0; j < 512; j++)
			le64_put(pd + j * 8, ((uint64_t)i << 30 | (uint64_t)j << 21) | 0x83); /* PS */
	}
	le64_put(gdt + 0x00, 0);
	le64_put(gdt + 0x08, 0);
	le64_put(gdt + BOOT_GDT_CS, 0x00af9b000000ffffULL); /* 64-bit code, DPL0 */
	le64_put(gdt + BOOT_GDT_DS, 0x00cf93000000ffffULL); /* flat data, DPL0 */
	return 0;
}

static int bz_load(const struct boot_config *cfg, struct boot_entry *out,
		   char *err, size_t errlen)
{
	const uint8_t *d = cfg->kernel;
	size_t setup_size, kernel_size, cmdlen = strlen(cfg->cmdline);
	uint64_t low, high, initrd_max, align, init_size, kernel_end;
	struct e820_entry e820[E820_MAX];
	unsigned int n;
	uint8_t *bp, *dst;
	int ret;

	ret = bz_check(d, cfg->kernel_size, err, errlen);
	if (ret)
		return ret;
	mem_split(cfg->mem_size, &low, &high);

	setup_size = (size_t)((d[BP_SETUP_SECTS] ? d[BP_SETUP_SECTS] : 4) + 1) * 512;
	kernel_size = cfg->kernel_size - setup_size;
	align = le32_get(d + BP_KERNEL_ALIGN);
	if (align && (LAYOUT_KERNEL % align)) {
		BOOT_ERR("kernel wants %#llx alignment", (unsigned long long)align);
		return -ENOEXEC;
	}
	init_size = MAX((uint64_t)le32_get(d + BP_INIT_SIZE), (uint64_t)kernel_size);
	kernel_end = LAYOUT_KERNEL + init_size;
	if (kernel_end > low) {
		BOOT_ERR("kernel needs %llu MiB from %llu MiB but RAM below 4 GiB ends at %llu MiB",
			 (unsigned long long)(init_size >> 20), LAYOUT_KERNEL >> 20,
			 (unsigned long long)(low >> 20));
		return -E2BIG;
	}
	dst = cfg->xlate(cfg->opaque, LAYOUT_KERNEL, kernel_size);
	if (!dst)
		return -E2BIG;
	memcpy(dst, d + setup_size, kernel_size);

	bp = cfg->xlate(cfg->opaque, LAYOUT_ZERO_PAGE, BP_SIZE);
	if (!bp)
		return -E2BIG;
	memset(bp, 0, BP_SIZE);
	memcpy(bp + BP_SETUP_SECTS, d + BP_SETUP_SECTS,
	       BP_HEADER + d[BP_JUMP + 1] - BP_SETUP_SECTS);
	bp[BP_TYPE_OF_LOADER] = 0xff;                   /* undefined loader */
	bp[BP_LOADFLAGS] |= LOADED_HIGH | CAN_USE_HEAP;
	le16_put(bp + BP_HEAP_END, 0xfe00);

	/* Command line. */
	{
		uint32_t maxlen = le32_get(d + BP_CMDLINE_SIZE);
		char *cl;

		if (!maxlen)
			maxlen = 255;
		if (cmdlen > maxlen || cmdlen >= LAYOUT_CMDLINE_MAX) {
			BOOT_ERR("command line is %zu bytes; this kernel takes at most %u",
				 cmdlen, maxlen);
			return -E2BIG;
		}
		cl = cfg->xlate(cfg->opaque, LAYOUT_CMDLINE, cmdlen + 1);
		if (!cl)
			return -E2BIG;
		memcpy(cl, cfg->cmdline, cmdlen + 1);
		le32_put(bp + BP_CMDLINE_PTR, (uint32_t)LAYOUT_CMDLINE);
	}

	/* Initrd: as high as allowed below the hole, page aligned. */
	if (cfg->initrd_size) {
		uint64_t addr;
		void *p;

		initrd_max = le32_get(d + BP_INITRD_MAX);
		if (!initrd_max)
			initrd_max = 0x37ffffff;
		initrd_max = MIN(initrd_max + 1, low);
		if (cfg->initrd_size > initrd_max ||
		    ALIGN_DOWN(initrd_max - cfg->initrd_size, 4096) < kernel_end) {
			BOOT_ERR("initrd (%zu bytes) does not fit between the kernel and %#llx",
				 cfg->initrd_size, (unsigned long long)initrd_max);
			return -E2BIG;
		}
		addr = ALIGN_DOWN(initrd_max - cfg->initrd_size, 4096);
		p = cfg->xlate(cfg->opaque, addr, cfg->initrd_size);
		if (!p)
			return -E2BIG;
		memcpy(p, cfg->initrd, cfg->initrd_size);
		le32_put(bp + BP_RAMDISK_IMAGE, (uint32_t)addr);
		le32_put(bp + BP_RAMDISK_SIZE, (uint32_t)cfg->initrd_size);
		le32_put(bp + BP_EXT_RAMDISK_IMG, (uint32_t)(addr >> 32));
		le32_put(bp + BP_EXT_RAMDISK_SZ, (uint32_t)((uint64_t)cfg->initrd_size >> 32));
	}

	if (le16_get(d + BP_VERSION) >= 0x020e)
		le64_put(bp + BP_ACPI_RSDP, cfg->rsdp_gpa);

	n = e820_build(cfg->mem_size, e820, E820_MAX);
	bp[BP_E820_ENTRIES] = (uint8_t)n;
	for (unsigned int i = 0; i < n; i++) {
		uint8_t *ent = bp + BP_E820_TABLE + i * 20;

		le64_put(ent, e820[i].addr);
		le64_put(ent + 8, e820[i].size);
		le32_put(ent + 16, e820[i].type);
	}

	ret = boot_write_pagetables(cfg);
	if (ret)
		return ret;
	out->fmt = KERNEL_BZIMAGE;
	out->rip = LAYOUT_KERNEL + 0x200;
	out->arg = LAYOUT_ZERO_PAGE;
	return 0;
}

/* ---- PVH ELF -------------------------------------------------------------- */

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define HVM_START_MAGIC          0x336ec578

/* Find the PVH entry among the PT_NOTE segments; 0 if there is none. */
static int pvh_find_entry(const uint8_t *d, size_t size, const Elf64_Ehdr *eh,
			  uint64_t *entry)
{
	for (unsigned int i = 0; i < eh->e_phnum; i++) {
		const uint8_t *ph = d + eh->e_phoff + (size_t)i * eh->e_phentsize;
		uint64_t off = le64_get(ph + offsetof(Elf64_Phdr, p_offset));
		uint64_t fsz = le64_get(ph + offsetof(Elf64_Phdr, p_filesz));
		uint64_t pos;

		if (le32_get(ph + offsetof(Elf64_Phdr, p_type)) != PT_NOTE)
			continue;
		if (off > size || fsz > size - off)
			return -ENOEXEC;
		for (pos = 0; pos + 12 <= fsz;) {
			const uint8_t *n = d + off + pos;
			uint32_t namesz = le32_get(n), descsz = le32_get(n + 4), type = le32_get(n + 8);
			uint64_t name_off = pos + 12;
			uint64_t desc_off = name_off + ALIGN_UP((uint64_t)namesz, 4);
			uint64_t next = desc_off + ALIGN_UP((uint64_t)descsz, 4);

			if (next > fsz || next <= pos)
				break;
			if (type == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 &&
			    !memcmp(d + off + name_off, "Xen", 4)) {
				if (descsz == 4)
					*entry = le32_get(d + off + desc_off);
				else if (descsz == 8)
					*entry = le64_get(d + off + desc_off);
				else
					return -ENOEXEC;
				return 0;
			}
			pos = next;
		}
	}
	return -ENOENT;
}

static int elf_check(const uint8_t *d, size_t size, const Elf64_Ehdr *eh,
		     char *err, size_t errlen)
{
	if (size < sizeof(*eh) || memcmp(d, ELFMAG, SELFMAG)) {
		BOOT_ERR("not an ELF file");
		return -ENOEXEC;
	}
	if (d[EI_CLASS] != ELFCLASS64 || d[EI_DATA] != ELFDATA2LSB ||
	    eh->e_machine != EM_X86_64) {
		BOOT_ERR("not a little-endian ELF64 x86-64 image");
		return -ENOEXEC;
	}
	if (eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phnum == 0 ||
	    eh->e_phoff > size || (uint64_t)eh->e_phnum * eh->e_phentsize > size - eh->e_phoff) {
		BOOT_ERR("ELF program headers are missing or out of the file");
		return -ENOEXEC;
	}
	return 0;
}

static int pvh_load(const struct boot_config *cfg, struct boot_entry *out,
		    char *err, size_t errlen)
{
	const uint8_t *d = cfg->kernel;
	size_t size = cfg->kernel_size, cmdlen = strlen(cfg->cmdline);
	uint64_t entry = 0, low, high, image_end = 0;
	struct e820_entry e820[E820_MAX];
	Elf64_Ehdr eh;
	uint8_t *si;
	unsigned int n, loaded = 0;
	int ret;

	if (size < sizeof(eh)) {
		BOOT_ERR("not an ELF file");
		return -ENOEXEC;
	}
	memcpy(&eh, d, sizeof(eh));
	ret = elf_check(d, size, &eh, err, errlen);
	if (ret)
		return ret;
	ret = pvh_find_entry(d, size, &eh, &entry);
	if (ret == -ENOENT) {
		BOOT_ERR("ELF has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)");
		return -ENOEXEC;
	} else if (ret) {
		BOOT_ERR("ELF note segment is malformed");
		return -ENOEXEC;
	}
	mem_split(cfg->mem_size, &low, &high);

	for (unsigned int i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;
		uint8_t *dst;

		memcpy(&ph, d + eh.e_phoff + (size_t)i * sizeof(ph), sizeof(ph));
		if (ph.p_type != PT_LOAD || !ph.p_memsz)
			continue;
		if (ph.p_offset > size || ph.p_filesz > size - ph.p_offset ||
		    ph.p_filesz > ph.p_memsz) {
			BOOT_ERR("ELF segment %u lies outside the file", i);
			return -ENOEXEC;
		}
		if (ph.p_paddr < LAYOUT_HIGH_RAM || ph.p_memsz > low ||
		    ph.p_paddr > low - ph.p_memsz) {
			BOOT_ERR("ELF segment %u at %#llx+%#llx is outside RAM from 1 MiB to %#llx",
				 i, (unsigned long long)ph.p_paddr,
				 (unsigned long long)ph.p_memsz, (unsigned long long)low);
			return -E2BIG;
		}
		dst = cfg->xlate(cfg->opaque, ph.p_paddr, ph.p_memsz);
		if (!dst)
			return -E2BIG;
		memcpy(dst, d + ph.p_offset, ph.p_filesz);
		memset(dst + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
		image_end = MAX(image_end, ph.p_paddr + ph.p_memsz);
		loaded++;
	}
	if (!loaded) {
		BOOT_ERR("ELF has no loadable segment");
		return -ENOEXEC;
	}
	if (entry < LAYOUT_HIGH_RAM || entry >= image_end) {
		BOOT_ERR("PVH entry %#llx is outside the loaded image", (unsigned long long)entry);
		return -ENOEXEC;
	}

	/* hvm_start_info, then the memmap (24-byte entries), then the module list. */
	si = cfg->xlate(cfg->opaque, LAYOUT_PVH_INFO, 0x1000);
	if (!si)
		return -E2BIG;
	memset(si, 0, 0x1000);
	le32_put(si + 0, HVM_START_MAGIC);
	le32_put(si + 4, 1);                          /* version: has memmap */
	n = e820_build(cfg->mem_size, e820, E820_MAX);
	for (unsigned int i = 0; i < n; i++) {
		uint8_t *m = si + 0x40 + i * 24;

		le64_put(m, e820[i].addr);
		le64_put(m + 8, e820[i].size);
		le32_put(m + 16, e820[i].type);
	}
	le64_put(si + 40, LAYOUT_PVH_INFO + 0x40);    /* memmap_paddr */
	le32_put(si + 48, n);                         /* memmap_entries */
	le64_put(si + 32, cfg->rsdp_gpa);             /* rsdp_paddr */

	if (cmdlen >= LAYOUT_CMDLINE_MAX) {
		BOOT_ERR("command line is too long (%zu bytes)", cmdlen);
		return -E2BIG;
	} else {
		char *cl = cfg->xlate(cfg->opaque, LAYOUT_CMDLINE, cmdlen + 1);

		if (!cl)
			return -E2BIG;
		memcpy(cl, cfg->cmdline, cmdlen + 1);
		le64_put(si + 24, LAYOUT_CMDLINE);        /* cmdline_paddr */
	}

	if (cfg->initrd_size) {
		uint64_t addr;
		uint8_t *mod = si + 0x400;
		void *p;

		if (cfg->initrd_size > low ||
		    ALIGN_DOWN(low - cfg->initrd_size, 4096) < ALIGN_UP(image_end, 4096)) {
			BOOT_ERR("initrd (%zu bytes) does not fit above the image", cfg->initrd_size);
			return -E2BIG;
		}
		addr = ALIGN_DOWN(low - cfg->initrd_size, 4096);
		p = cfg->xlate(cfg->opaque, addr, cfg->initrd_size);
		if (!p)
			return -E2BIG;
		memcpy(p, cfg->initrd, cfg->initrd_size);
		le64_put(mod, addr);
		le64_put(mod + 8, cfg->initrd_size);
		le32_put(si + 12, 1);                     /* nr_modules */
		le64_put(si + 16, LAYOUT_PVH_INFO + 0x400);
	}

	out->fmt = KERNEL_PVH_ELF;
	out->rip = entry;
	out->arg = LAYOUT_PVH_INFO;
	return 0;
}

/* ---- entry points ---------------------------------------------------------- */

int boot_probe(const uint8_t *data, size_t size, enum kernel_format *fmt,
	       char *err, size_t errlen)
{
	if (size >= SELFMAG && !memcmp(data, ELFMAG, SELFMAG)) {
		*fmt = KERNEL_PVH_ELF;
		return 0;
	}
	if (size >= BP_HEADER + 4 && le32_get(data + BP_HEADER) == HDRS_MAGIC) {
		*fmt = KERNEL_BZIMAGE;
		return 0;
	}
	BOOT_ERR("not a Linux bzImage or an ELF with a PVH entry note");
	return -ENOEXEC;
}

int boot_load(const struct boot_config *cfg, struct boot_entry *out,
	      char *err, size_t errlen)
{
	enum kernel_format fmt;
	int ret;

	if (!cfg->cmdline || !cfg->xlate || (cfg->initrd_size && !cfg->initrd))
		return -EINVAL;
	ret = boot_probe(cfg->kernel, cfg->kernel_size, &fmt, err, errlen);
	if (ret)
		return ret;
	if (fmt == KERNEL_BZIMAGE)
		return bz_load(cfg, out, err, errlen);
	return pvh_load(cfg, out, err, errlen);
}
