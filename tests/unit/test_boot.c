/*
 * test_boot.c - the memory map, the bzImage and PVH ELF loaders (on
 * synthetic images, including truncated and corrupted ones), parse_size,
 * uuid_str and iov_advance.
 */
#include <elf.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/uio.h>

#include "godwit/boot.h"
#include "godwit/layout.h"
#include "godwit/le.h"
#include "unit.h"

/* ---- a fake guest RAM of 64 MiB ---------------------------------------------- */

#define FAKE_RAM (64ULL << 20)

static uint8_t *ram;

static void *fake_xlate(void *opaque, uint64_t gpa, uint64_t len)
{
	(void)opaque;
	if (gpa > FAKE_RAM || len > FAKE_RAM - gpa)
		return NULL;
	return ram + gpa;
}

static void ram_reset(void)
{
	if (!ram)
		ram = malloc(FAKE_RAM);
	memset(ram, 0xcc, FAKE_RAM);
}


/* ---- e820 --------------------------------------------------------------------- */

static uint64_t e820_ram(const struct e820_entry *e, unsigned int n)
{
	uint64_t sum = 0;

	for (unsigned int i = 0; i < n; i++)
		if (e[i].type == E820_RAM)
			sum += e[i].size;
	return sum;
}

TEST(e820_small)
{
	struct e820_entry e[E820_MAX];
	unsigned int n = e820_build(512ULL << 20, e, E820_MAX);

	CHECK_EQ(n, 4);
	CHECK_EQ(e[0].addr, 0);
	CHECK_EQ(e[0].type, E820_RAM);
	CHECK_EQ(e[n - 1].addr, LAYOUT_HIGH_RAM);
	CHECK_EQ(e[n - 1].addr + e[n - 1].size, 512ULL << 20);
	CHECK_EQ(e820_ram(e, n), (512ULL << 20) - (LAYOUT_HIGH_RAM - LAYOUT_EBDA));
	/* Sorted and not overlapping. */
	for (unsigned int i = 1; i < n; i++)
		CHECK(e[i].addr >= e[i - 1].addr + e[i - 1].size);
}

TEST(e820_above_4g)
{
	struct e820_entry e[E820_MAX];
	unsigned int n = e820_build(8ULL << 30, e, E820_MAX);
	uint64_t low, high;

	mem_split(8ULL << 30, &low, &high);
	CHECK_EQ(low, LAYOUT_MMIO_HOLE);
	CHECK_EQ(high, (8ULL << 30) - LAYOUT_MMIO_HOLE);
	CHECK_EQ(e[n - 1].addr, LAYOUT_4G);
	CHECK_EQ(e[n - 1].size, high);
	CHECK_EQ(e[n - 1].type, E820_RAM);
	for (unsigned int i = 0; i < n; i++)
		CHECK(e[i].addr + e[i].size <= LAYOUT_MMIO_HOLE || e[i].addr >= LAYOUT_4G);
	CHECK_EQ(e820_ram(e, n), (8ULL << 30) - (LAYOUT_HIGH_RAM - LAYOUT_EBDA));
	/* Exactly at the hole: no high part. */
	mem_split(LAYOUT_MMIO_HOLE, &low, &high);
	CHECK_EQ(high, 0);
	/* A short table is filled up to its size only. */
	CHECK_EQ(e820_build(8ULL << 30, e, 2), 2);
}

/* ---- bzImage -------------------------------------------------------------------- */

#define BZ_SETUP_SECTS 2
#define BZ_PAYLOAD     8192

static uint8_t *bz_make(size_t *size)
{
	size_t setup = (BZ_SETUP_SECTS + 1) * 512;
	uint8_t *d = calloc(1, setup + BZ_PAYLOAD);

	d[0x1f1] = BZ_SETUP_SECTS;
	le32_put(d + 0x1f4, BZ_PAYLOAD / 16);         /* syssize */
	le16_put(d + 0x1fe, 0xaa55);
	d[0x201] = 0x6a;                          /* header ends at 0x26c */
	le32_put(d + 0x202, 0x53726448);
	le16_put(d + 0x206, 0x020f);
	le32_put(d + 0x22c, 0x7fffffff);              /* initrd_addr_max */
	le32_put(d + 0x230, 0x200000);                /* kernel_alignment */
	d[0x234] = 1;
	le16_put(d + 0x236, 0x3);                     /* XLF_KERNEL_64 | above 4G */
	le32_put(d + 0x238, 2047);                    /* cmdline_size */
	le32_put(d + 0x260, 0x400000);                /* init_size */
	for (size_t i = 0; i < BZ_PAYLOAD; i++)
		d[setup + i] = (uint8_t)(i * 7 + 3);
	*size = setup + BZ_PAYLOAD;
	return d;
}

static struct boot_config bc_make(const uint8_t *k, size_t ks, const uint8_t *initrd, size_t is,
				  const char *cmdline)
{
	return (struct boot_config){
		.kernel = k, .kernel_size = ks, .initrd = initrd, .initrd_size = is,
		.cmdline = cmdline, .mem_size = FAKE_RAM, .rsdp_gpa = 0xe0000,
		.xlate = fake_xlate,
	};
}

TEST(bzimage_load)
{
	size_t size;
	uint8_t *k = bz_make(&size);
	uint8_t initrd[5000];
	struct boot_entry e;
	struct boot_config bc;
	char err[256] = "";
	const uint8_t *bp = ram;
	enum kernel_format fmt;

	ram_reset();
	bp = ram + LAYOUT_ZERO_PAGE;
	for (size_t i = 0; i < sizeof(initrd); i++)
		initrd[i] = (uint8_t)(i ^ 0x5a);
	bc = bc_make(k, size, initrd, sizeof(initrd), "console=ttyS0 quiet");
	CHECK_EQ(boot_probe(k, size, &fmt, err, sizeof(err)), 0);
	CHECK_EQ(fmt, KERNEL_BZIMAGE);
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), 0);
	CHECK_EQ(e.fmt, KERNEL_BZIMAGE);
	CHECK_EQ(e.rip, LAYOUT_KERNEL + 0x200);
	CHECK_EQ(e.arg, LAYOUT_ZERO_PAGE);
	CHECK(!memcmp(ram + LAYOUT_KERNEL, k + (BZ_SETUP_SECTS + 1) * 512, BZ_PAYLOAD));
	CHECK_EQ(bp[0x210], 0xff);                                  /* type_of_loader */
	CHECK(bp[0x211] & 0x01);                                   /* LOADED_HIGH */
	CHECK_EQ(le32_get(bp + 0x202), 0x53726448);                     /* header copied */
	CHECK_EQ(le32_get(bp + 0x228), LAYOUT_CMDLINE);
	CHECK_STR((const char *)ram + LAYOUT_CMDLINE, "console=ttyS0 quiet");
	CHECK_EQ(le32_get(bp + 0x21c), sizeof(initrd));
	CHECK_EQ(le32_get(bp + 0x218) % 4096, 0);
	CHECK(le32_get(bp + 0x218) >= LAYOUT_KERNEL + 0x400000);
	CHECK(!memcmp(ram + le32_get(bp + 0x218), initrd, sizeof(initrd)));
	CHECK_EQ(le64_get(bp + 0x070), 0xe0000);                        /* acpi_rsdp_addr */
	CHECK_EQ(bp[0x1e8], 4);                                     /* e820 entries */
	CHECK_EQ(le64_get(bp + 0x2d0 + 3 * 20 + 8), FAKE_RAM - LAYOUT_HIGH_RAM);
	/* Identity map: PML4[0] -> PDPT, PDPT[1] -> PD1, PD1[1] maps 1 GiB + 2 MiB. */
	CHECK_EQ(le64_get(ram + LAYOUT_PML4) & ~0xfffULL, LAYOUT_PML4 + 0x1000);
	CHECK_EQ(le64_get(ram + LAYOUT_PML4 + 0x1000 + 8) & ~0xfffULL, LAYOUT_PML4 + 0x3000);
	CHECK_EQ(le64_get(ram + LAYOUT_PML4 + 0x3000 + 8), (1ULL << 30) + (2ULL << 20) + 0x83);
	CHECK_EQ(le64_get(ram + LAYOUT_GDT + BOOT_GDT_CS), 0x00af9b000000ffffULL);
	free(k);
}

TEST(bzimage_errors)
{
	size_t size;
	uint8_t *k = bz_make(&size);
	struct boot_entry e;
	struct boot_config bc;
	char err[256], longcmd[4000];

	ram_reset();
	/* Truncated to the setup code. */
	bc = bc_make(k, (BZ_SETUP_SECTS + 1) * 512, NULL, 0, "");
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -ENOEXEC);
	CHECK(strstr(err, "truncated") != NULL);
	/* Old protocol. */
	le16_put(k + 0x206, 0x0204);
	bc = bc_make(k, size, NULL, 0, "");
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -ENOEXEC);
	CHECK(strstr(err, "too old") != NULL);
	le16_put(k + 0x206, 0x020f);
	/* No 64-bit entry. */
	le16_put(k + 0x236, 0);
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -ENOEXEC);
	CHECK(strstr(err, "64-bit") != NULL);
	le16_put(k + 0x236, 3);
	/* Command line longer than cmdline_size. */
	memset(longcmd, 'a', sizeof(longcmd) - 1);
	longcmd[sizeof(longcmd) - 1] = 0;
	bc = bc_make(k, size, NULL, 0, longcmd);
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -E2BIG);
	/* Kernel init_size beyond RAM. */
	le32_put(k + 0x260, 0x7000000);
	bc = bc_make(k, size, NULL, 0, "");
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -E2BIG);
	le32_put(k + 0x260, 0x400000);
	/* Initrd larger than the room left. */
	{
		size_t big = FAKE_RAM - LAYOUT_KERNEL - 0x100000;
		uint8_t *initrd = calloc(1, big);

		bc = bc_make(k, size, initrd, big, "");
		CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -E2BIG);
		CHECK(strstr(err, "initrd") != NULL);
		free(initrd);
	}
	/* Not a kernel at all. */
	memset(k, 0, size);
	bc = bc_make(k, size, NULL, 0, "");
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -ENOEXEC);
	free(k);
}

/* ---- PVH ELF ------------------------------------------------------------------- */

#define ELF_CODE_OFF 0x1000
#define ELF_CODE_LEN 0x800

static uint8_t *elf_make(size_t *size, uint64_t paddr, uint64_t entry, bool with_note)
{
	size_t total = ELF_CODE_OFF + ELF_CODE_LEN;
	uint8_t *d = calloc(1, total);
	Elf64_Ehdr *eh = (Elf64_Ehdr *)d;
	Elf64_Phdr *ph = (Elf64_Phdr *)(d + sizeof(*eh));
	uint8_t *note = d + 0x200;

	memcpy(eh->e_ident, ELFMAG, SELFMAG);
	eh->e_ident[EI_CLASS] = ELFCLASS64;
	eh->e_ident[EI_DATA] = ELFDATA2LSB;
	eh->e_ident[EI_VERSION] = EV_CURRENT;
	eh->e_type = ET_EXEC;
	eh->e_machine = EM_X86_64;
	eh->e_version = EV_CURRENT;
	eh->e_entry = 0xffffffff81000000ULL;
	eh->e_phoff = sizeof(*eh);
	eh->e_ehsize = sizeof(*eh);
	eh->e_phentsize = sizeof(*ph);
	eh->e_phnum = 2;
	ph[0] = (Elf64_Phdr){ .p_type = PT_LOAD, .p_offset = ELF_CODE_OFF, .p_paddr = paddr,
			      .p_vaddr = paddr, .p_filesz = ELF_CODE_LEN,
			      .p_memsz = ELF_CODE_LEN + 0x3000, .p_align = 0x1000 };
	ph[1] = (Elf64_Phdr){ .p_type = PT_NOTE, .p_offset = 0x200, .p_filesz = 24, .p_align = 4 };
	/* namesz 4 "Xen\0", descsz 8, type 18 (PHYS32_ENTRY) */
	le32_put(note, 4);
	le32_put(note + 4, 8);
	le32_put(note + 8, with_note ? 18 : 17);
	memcpy(note + 12, "Xen", 4);
	le64_put(note + 16, entry);
	for (size_t i = 0; i < ELF_CODE_LEN; i++)
		d[ELF_CODE_OFF + i] = (uint8_t)(i * 13 + 1);
	*size = total;
	return d;
}

TEST(pvh_load)
{
	size_t size;
	uint8_t *k = elf_make(&size, 0x100000, 0x100010, true);
	uint8_t initrd[3000];
	struct boot_entry e;
	struct boot_config bc;
	char err[256] = "";
	const uint8_t *si;

	ram_reset();
	memset(initrd, 0x77, sizeof(initrd));
	bc = bc_make(k, size, initrd, sizeof(initrd), "workload=mem mem=64");
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), 0);
	CHECK_EQ(e.fmt, KERNEL_PVH_ELF);
	CHECK_EQ(e.rip, 0x100010);
	CHECK_EQ(e.arg, LAYOUT_PVH_INFO);
	CHECK(!memcmp(ram + 0x100000, k + ELF_CODE_OFF, ELF_CODE_LEN));
	CHECK_EQ(ram[0x100000 + ELF_CODE_LEN], 0);                 /* bss zeroed */
	CHECK_EQ(ram[0x100000 + ELF_CODE_LEN + 0x2fff], 0);
	si = ram + LAYOUT_PVH_INFO;
	CHECK_EQ(le32_get(si), 0x336ec578);
	CHECK_EQ(le32_get(si + 4), 1);
	CHECK_EQ(le32_get(si + 12), 1);                                /* nr_modules */
	CHECK_STR((const char *)ram + le64_get(si + 24), "workload=mem mem=64");
	CHECK_EQ(le64_get(si + 32), 0xe0000);                          /* rsdp */
	CHECK_EQ(le32_get(si + 48), 4);                                /* memmap entries */
	{
		const uint8_t *mm = ram + le64_get(si + 40);
		const uint8_t *mod = ram + le64_get(si + 16);

		CHECK_EQ(le64_get(mm + 3 * 24), LAYOUT_HIGH_RAM);
		CHECK_EQ(le32_get(mm + 3 * 24 + 16), E820_RAM);
		CHECK_EQ(le64_get(mod + 8), sizeof(initrd));
		CHECK(!memcmp(ram + le64_get(mod), initrd, sizeof(initrd)));
	}
	free(k);

	/* A 4-byte entry note works too. */
	k = elf_make(&size, 0x100000, 0, true);
	le32_put(k + 0x200 + 4, 4);
	le32_put(k + 0x200 + 16, 0x100020);
	bc = bc_make(k, size, NULL, 0, "");
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), 0);
	CHECK_EQ(e.rip, 0x100020);
	free(k);
}

TEST(pvh_errors)
{
	size_t size;
	uint8_t *k;
	struct boot_entry e;
	struct boot_config bc;
	char err[256];

	ram_reset();
	k = elf_make(&size, 0x100000, 0x100010, false);
	bc = bc_make(k, size, NULL, 0, "");
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -ENOEXEC);
	CHECK(strstr(err, "PVH") != NULL);
	free(k);

	k = elf_make(&size, 0x100000, 0x900000, true);     /* entry outside the image */
	bc = bc_make(k, size, NULL, 0, "");
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -ENOEXEC);
	free(k);

	k = elf_make(&size, FAKE_RAM - 0x1000, FAKE_RAM - 0x1000, true); /* beyond RAM */
	bc = bc_make(k, size, NULL, 0, "");
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -E2BIG);
	free(k);

	k = elf_make(&size, 0x1000, 0x1000, true);           /* below 1 MiB */
	bc = bc_make(k, size, NULL, 0, "");
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -E2BIG);
	free(k);

	k = elf_make(&size, 0x100000, 0x100010, true);
	((Elf64_Phdr *)(k + sizeof(Elf64_Ehdr)))[0].p_filesz = 0x100000; /* past EOF */
	bc = bc_make(k, size, NULL, 0, "");
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -ENOEXEC);
	free(k);

	k = elf_make(&size, 0x100000, 0x100010, true);
	((Elf64_Ehdr *)k)->e_phnum = 0xffff;                 /* headers past EOF */
	bc = bc_make(k, size, NULL, 0, "");
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -ENOEXEC);
	((Elf64_Ehdr *)k)->e_phnum = 2;
	k[EI_CLASS] = ELFCLASS32;
	CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), -ENOEXEC);
	free(k);
}

/*
 * Truncation at every length and random byte corruption of both formats:
 * the loaders must return (0 or an error), never read out of bounds (run
 * under ASan by `make test`).
 */
TEST(boot_corrupt_images)
{
	size_t bsize, esize;
	uint8_t *bz = bz_make(&bsize), *elf = elf_make(&esize, 0x100000, 0x100010, true);
	struct boot_entry e;
	char err[128];
	unsigned int seed = 12345;
	int ok = 0;

	ram_reset();
	for (size_t len = 0; len < esize; len += (len < 0x300 ? 1 : 97)) {
		uint8_t *copy = malloc(len ? len : 1);
		struct boot_config bc;

		memcpy(copy, elf, len);
		bc = bc_make(copy, len, NULL, 0, "");
		ok += boot_load(&bc, &e, err, sizeof(err)) == 0;
		free(copy);
	}
	for (size_t len = 0; len < bsize; len += (len < 0x300 ? 1 : 101)) {
		uint8_t *copy = malloc(len ? len : 1);
		struct boot_config bc;

		memcpy(copy, bz, len);
		bc = bc_make(copy, len, NULL, 0, "");
		ok += boot_load(&bc, &e, err, sizeof(err)) == 0;
		free(copy);
	}
	CHECK_EQ(ok, 0); /* no truncated image loads */
	{
		struct boot_config bc = bc_make(elf, esize, NULL, 0, "");

		CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), 0);
		bc = bc_make(bz, bsize, NULL, 0, "");
		CHECK_EQ(boot_load(&bc, &e, err, sizeof(err)), 0);
	}
	for (int round = 0; round < 3000; round++) {
		uint8_t *src = (round & 1) ? bz : elf;
		size_t len = (round & 1) ? bsize : esize;
		uint8_t *copy = malloc(len);
		struct boot_config bc;

		memcpy(copy, src, len);
		for (int f = 0; f < 4; f++) {
			size_t at = (size_t)rand_r(&seed) % (len < 0x400 ? len : 0x400);

			copy[at] = (uint8_t)rand_r(&seed);
		}
		bc = bc_make(copy, len, NULL, 0, "");
		(void)!boot_load(&bc, &e, err, sizeof(err));
		free(copy);
	}
	free(bz);
	free(elf);
}

TEST(parse_size_cases)
{
	uint64_t v = 0;

	CHECK_EQ(parse_size("512M", &v), 0);
	CHECK_EQ(v, 512ULL << 20);
	CHECK_EQ(parse_size("8G", &v), 0);
	CHECK_EQ(v, 8ULL << 30);
	CHECK_EQ(parse_size("2GiB", &v), 0);
	CHECK_EQ(v, 2ULL << 30);
	CHECK_EQ(parse_size("64k", &v), 0);
	CHECK_EQ(v, 64ULL << 10);
	CHECK_EQ(parse_size("1048576", &v), 0);
	CHECK_EQ(v, 1048576);
	CHECK_EQ(parse_size("", &v), -EINVAL);
	CHECK_EQ(parse_size("-1G", &v), -EINVAL);
	CHECK_EQ(parse_size("12Q", &v), -EINVAL);
	CHECK_EQ(parse_size("1G extra", &v), -EINVAL);
	CHECK_EQ(parse_size("99999999999999999999", &v), -ERANGE);
	CHECK_EQ(parse_size("99999999999T", &v), -ERANGE);
}

TEST(uuid_str_format)
{
	static const uint8_t u[16] = { 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
				       0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87 };
	char s[UUID_STR_LEN];

	CHECK(uuid_str(u, s) == s);
	CHECK_STR(s, "01234567-89ab-cdef-f0e1-d2c3b4a59687");
}

TEST(iov_advance_cases)
{
	uint8_t a[4], b[8], c[2];
	struct iovec v[3] = { { a, 4 }, { b, 8 }, { c, 2 } }, *p = v;
	int n = 3;

	iov_advance(&p, &n, 0);
	CHECK(p == v && n == 3 && v[0].iov_len == 4);
	iov_advance(&p, &n, 6);          /* all of a, 2 bytes of b */
	CHECK(p == &v[1] && n == 2);
	CHECK(p->iov_base == b + 2 && p->iov_len == 6);
	iov_advance(&p, &n, 6);          /* the rest of b, exactly */
	CHECK(p == &v[2] && n == 1 && p->iov_base == c && p->iov_len == 2);
	iov_advance(&p, &n, 2);
	CHECK(n == 0 && p == &v[3]);
}
