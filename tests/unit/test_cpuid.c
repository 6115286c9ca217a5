/*
 * test_cpuid.c - CPU models and per-vCPU CPUID: synthetic KVM supported sets
 * (a rich Intel-like host with AVX-512, a poor AMD-like host without AVX2)
 * filtered to each model, topology for several vCPU counts, and the real
 * /dev/kvm's set when there is one.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <asm/kvm_para.h>

#include "godwit/cpuid.h"
#include "unit.h"

#define B(n) (1u << (n))
#define SIG  KVM_CPUID_FLAG_SIGNIFCANT_INDEX

struct ent {
	uint32_t fn, idx, flags, a, b, c, d;
};

/*
 * What each model may show, written from the psABI levels and the policy in
 * cpuid.c, independently of its tables.
 */
#define L1_EDX_BASE (B(0) | B(2) | B(3) | B(4) | B(5) | B(6) | B(7) | B(8) | B(9) | \
		     B(11) | B(12) | B(13) | B(14) | B(15) | B(16) | B(17) | B(19) | \
		     B(23) | B(24) | B(25) | B(26))
#define L1_ECX_V2 (B(0) | B(9) | B(13) | B(19) | B(20) | B(23) |   \
		   B(21) | B(24) | B(31)) /* x2apic, tsc-deadline, hypervisor */
#define L1_ECX_V3 (L1_ECX_V2 | B(1) | B(12) | B(22) | B(25) | B(26) | B(28) | B(29))
#define L7_EBX_V3 (B(3) | B(5) | B(8))
#define E1_ECX_V2 B(0)
#define E1_ECX_V3 (B(0) | B(5))
#define E1_MIRRORS (B(0) | B(2) | B(3) | B(4) | B(5) | B(6) | B(7) | B(8) | B(9) | \
		    B(12) | B(13) | B(14) | B(15) | B(16) | B(17) | B(23) | B(24))
#define E1_EDX_V2 (B(11) | B(20) | B(29) | E1_MIRRORS)
#define E1_EDX_V3 (E1_EDX_V2 | B(27))
#define KVM_PV_SAFE (B(0) | B(1) | B(3) | B(5) | B(6) | B(7) | B(9) | B(11) | \
		     B(12) | B(13) | B(24))
/* Set by the models even when the host does not report them. */
#define L1_ECX_FORCED (B(21) | B(24) | B(31))

/* Intel-like, Sapphire Rapids-ish: AVX-512, AMX, PT, a 0x1f with dies. */
static const struct ent rich_host[] = {
	{ 0x0, 0, 0, 0x1f, 0x756e6547, 0x6c65746e, 0x49656e69 },  /* GenuineIntel */
	{ 0x1, 0, 0, 0x000806f8, 0x00200800, 0x7ffaf3ff, 0x1f8bfbff }, /* VME, SS, HTT, no HYPERVISOR */
	{ 0x2, 0, 0, 0x00feff01, 0, 0, 0 },
	{ 0x4, 0, SIG, 0xfc004121, 0x02c0003f, 0x3f, 0 },          /* L1d */
	{ 0x4, 1, SIG, 0xfc004122, 0x01c0003f, 0x3f, 0 },          /* L1i */
	{ 0x4, 2, SIG, 0xfc004143, 0x03c0003f, 0x7ff, 0 },         /* L2 */
	{ 0x4, 3, SIG, 0xfc0fc163, 0x0380003f, 0xdfff, 4 },        /* L3 */
	{ 0x4, 4, SIG, 0, 0, 0, 0 },
	{ 0x5, 0, 0, 0x40, 0x40, 3, 0x11142120 },
	{ 0x6, 0, 0, 0x6, 0, 1, 0 },                               /* turbo, ARAT */
	{ 0x7, 0, SIG, 2, 0xf1bf07ab, 0x1b405fde, 0xbc1c4410 },    /* AVX-512 etc. */
	{ 0x7, 1, SIG, 0x00001830, 0, 0, 0 },
	{ 0x7, 2, SIG, 0, 0, 0, 0x3f },
	{ 0xa, 0, 0, 0x07300805, 0, 0, 0x603 },                    /* PMU */
	{ 0xb, 0, SIG, 1, 2, 0x100, 0x30 },
	{ 0xb, 1, SIG, 7, 96, 0x201, 0x30 },
	{ 0xd, 0, SIG, 0x2e7, 0xa88, 0x2b00, 0 },
	{ 0xd, 1, SIG, 0x1f, 0x9a8, 0x1900, 0 },                   /* XSAVEC, XSAVES, XFD */
	{ 0xd, 2, SIG, 0x100, 0x240, 0, 0 },
	{ 0xd, 5, SIG, 0x40, 0x440, 0, 0 },
	{ 0xd, 6, SIG, 0x200, 0x480, 0, 0 },
	{ 0xd, 7, SIG, 0x400, 0x680, 0, 0 },
	{ 0xd, 9, SIG, 0x8, 0xa80, 0, 0 },
	{ 0x14, 0, SIG, 1, 0xf, 7, 0 },                            /* Intel PT */
	{ 0x1d, 0, SIG, 1, 0, 0, 0 },                              /* AMX */
	{ 0x1f, 0, SIG, 1, 2, 0x100, 0x30 },
	{ 0x1f, 1, SIG, 7, 96, 0x201, 0x30 },
	{ 0x1f, 2, SIG, 8, 96, 0x502, 0x30 },                      /* die */
	{ 0x80000000, 0, 0, 0x80000008, 0, 0, 0 },
	{ 0x80000001, 0, 0, 0, 0, 0x00000121, 0x2c100800 },        /* +PREFETCHW, PDPE1GB */
	{ 0x80000002, 0, 0, 0x65746e49, 0x2952286c, 0x6f655820, 0x2952286e },
	{ 0x80000003, 0, 0, 0x616c5020, 0x756e6974, 0x3438206d, 0x43203038 },
	{ 0x80000004, 0, 0, 0x00005550, 0, 0, 0 },
	{ 0x80000006, 0, 0, 0, 0, 0x08007040, 0 },
	{ 0x80000007, 0, 0, 0, 0, 0, 0x100 },                      /* invariant TSC */
	{ 0x80000008, 0, 0, 0x3934, 0x200, 0, 0 },                 /* WBNOINVD */
	{ KVM_CPUID_SIGNATURE, 0, 0, KVM_CPUID_FEATURES, 0x4b4d564b, 0x564b4d56, 0x4d },
	{ KVM_CPUID_FEATURES, 0, 0, 0x0103fefb, 0, 0, 1 },         /* + async PF etc. */
};

/* AMD-like, Bulldozer-ish: AVX but no FMA3, MOVBE, F16C, BMI, AVX2, x2APIC. */
static const struct ent poor_host[] = {
	{ 0x0, 0, 0, 0xd, 0x68747541, 0x444d4163, 0x69746e65 },    /* AuthenticAMD */
	{ 0x1, 0, 0, 0x00600f12, 0x00040800, 0x96982203, 0x178bfbff },
	{ 0x4, 0, SIG, 0, 0, 0, 0 },
	{ 0x5, 0, 0, 0x40, 0x40, 3, 0 },
	{ 0x6, 0, 0, 0x4, 0, 1, 0 },
	{ 0x7, 0, SIG, 0, 0, 0, 0 },
	{ 0xd, 0, SIG, 0x7, 0x340, 0x3c0, 0x40000000 },           /* + LWP (bit 62) */
	{ 0xd, 1, SIG, 0x1, 0, 0, 0 },
	{ 0xd, 2, SIG, 0x100, 0x240, 0, 0 },
	{ 0xd, 62, SIG, 0x80, 0x340, 0, 0 },                       /* LWP */
	{ 0x80000000, 0, 0, 0x8000001e, 0x68747541, 0x444d4163, 0x69746e65 },
	{ 0x80000001, 0, 0, 0x00600f12, 0x10000000, 0x01c9bfff, 0x2fd3fbff },
	{ 0x80000005, 0, 0, 0xff20ff18, 0xff20ff30, 0x10040140, 0x40020140 },
	{ 0x80000006, 0, 0, 0x64000000, 0x64004200, 0x08008140, 0x0040c140 },
	{ 0x80000007, 0, 0, 0, 0, 0, 0x7d9 },
	{ 0x80000008, 0, 0, 0x3030, 0x1000, 0x4007, 0 },
	{ 0x8000001a, 0, 0, 3, 0, 0, 0 },
	{ 0x8000001d, 0, SIG, 0x00004121, 0x0040003f, 0x3f, 0 },
	{ 0x8000001d, 1, SIG, 0x00004122, 0x0040003f, 0x3f, 0 },
	{ 0x8000001d, 2, SIG, 0x00004143, 0x0040003f, 0x7ff, 0 },
	{ 0x8000001d, 3, SIG, 0x0001c163, 0x03c0003f, 0x1fff, 1 },
	{ 0x8000001e, 0, 0, 0x10, 0x100, 0, 0 },
	{ KVM_CPUID_SIGNATURE, 0, 0, KVM_CPUID_FEATURES, 0x4b4d564b, 0x564b4d56, 0x4d },
	{ KVM_CPUID_FEATURES, 0, 0, 0x01007efb, 0, 0, 0 },
};

static struct kvm_cpuid2 *mkset(const struct ent *t, size_t n)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) +
				      (n + CPUID_EXTRA_ENTRIES) * sizeof(c->entries[0]));

	if (!c)
		abort();
	for (size_t i = 0; i < n; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];

		e->function = t[i].fn;
		e->index = t[i].idx;
		e->flags = t[i].flags;
		e->eax = t[i].a;
		e->ebx = t[i].b;
		e->ecx = t[i].c;
		e->edx = t[i].d;
	}
	c->nent = n;
	return c;
}

#define RICH() mkset(rich_host, ARRAY_SIZE(rich_host))
#define POOR() mkset(poor_host, ARRAY_SIZE(poor_host))

/* A copy of c, for comparing with what a filter made of it. */
static struct kvm_cpuid2 *copy(const struct kvm_cpuid2 *c)
{
	struct kvm_cpuid2 *d = cpuid_dup(c);

	if (!d)
		abort();
	return d;
}

static bool set_equal(const struct kvm_cpuid2 *a, const struct kvm_cpuid2 *b)
{
	return a->nent == b->nent &&
	       !memcmp(a->entries, b->entries, a->nent * sizeof(a->entries[0]));
}

static uint32_t get(const struct kvm_cpuid2 *c, uint32_t fn, uint32_t idx, int reg)
{
	struct kvm_cpuid_entry2 *e = cpuid_find(c, fn, idx);

	if (!e)
		return 0xdeadbeef;
	return reg == 0 ? e->eax : reg == 1 ? e->ebx : reg == 2 ? e->ecx : e->edx;
}
#define EAX(c, f, i) get(c, f, i, 0)
#define EBX(c, f, i) get(c, f, i, 1)
#define ECX(c, f, i) get(c, f, i, 2)
#define EDX(c, f, i) get(c, f, i, 3)

static int count_fn(const struct kvm_cpuid2 *c, uint32_t fn)
{
	int n = 0;

	for (uint32_t i = 0; i < c->nent; i++)
		n += c->entries[i].function == fn;
	return n;
}

/*
 * What must hold for any host set h filtered to named model m (result f):
 * only the model's bits, only bits the host has (bar the forced ones), no
 * entry the host lacked, no leaf beyond the max leaves, XSAVE components and
 * sizes consistent.
 */
static void check_named_model(const struct kvm_cpuid2 *h, const struct kvm_cpuid2 *f,
			      enum cpu_model m)
{
	bool v3 = m == CPU_MODEL_X86_64_V3, v1 = m == CPU_MODEL_X86_64;
	uint32_t max_basic = EAX(f, 0x0, 0), max_ext = EAX(f, 0x80000000, 0);
	uint32_t xcr0 = EAX(f, 0xd, 0);

	CHECK(m != CPU_MODEL_HOST);
	CHECK(max_basic <= EAX(h, 0x0, 0));
	CHECK(max_basic <= 0xd);
	CHECK(max_ext <= EAX(h, 0x80000000, 0));
	CHECK(max_ext <= 0x80000008);
	for (uint32_t i = 0; i < f->nent; i++) {
		const struct kvm_cpuid_entry2 *e = &f->entries[i];

		CHECK(cpuid_find(h, e->function, e->index) != NULL);
		if (e->function < 0x40000000)
			CHECK(e->function <= max_basic);
		else if (e->function >= 0x80000000)
			CHECK(e->function <= max_ext);
		else
			CHECK(e->function <= 0x40000001);
		if (e->function == 0x7)
			CHECK_EQ(e->index, 0);
		if (e->function == 0xd && e->index >= 2)
			CHECK(e->index < 32 && (xcr0 & B(e->index)));
	}
	CHECK_EQ(ECX(f, 0x1, 0) & ~(v3 ? L1_ECX_V3 : v1 ? L1_ECX_FORCED : L1_ECX_V2), 0);
	CHECK_EQ(ECX(f, 0x1, 0) & ~(ECX(h, 0x1, 0) | L1_ECX_FORCED), 0);
	CHECK_EQ(ECX(f, 0x1, 0) & L1_ECX_FORCED, L1_ECX_FORCED);
	CHECK_EQ(EDX(f, 0x1, 0) & ~L1_EDX_BASE, 0);
	CHECK_EQ(EDX(f, 0x1, 0) & ~EDX(h, 0x1, 0), 0);
	CHECK_EQ(EDX(f, 0x1, 0) & L1_EDX_BASE, L1_EDX_BASE);
	if (cpuid_find(f, 0x7, 0)) {
		CHECK_EQ(EAX(f, 0x7, 0), 0);
		CHECK_EQ(EBX(f, 0x7, 0) & ~(v3 ? L7_EBX_V3 : 0), 0);
		CHECK_EQ(ECX(f, 0x7, 0), 0);
		CHECK_EQ(EDX(f, 0x7, 0), 0);
	}
	CHECK_EQ(ECX(f, 0x80000001, 0) & ~(v3 ? E1_ECX_V3 : v1 ? 0 : E1_ECX_V2), 0);
	CHECK_EQ(EDX(f, 0x80000001, 0) & ~(v3 ? E1_EDX_V3 : E1_EDX_V2), 0);
	CHECK_EQ(EDX(f, 0x80000001, 0) & ~EDX(h, 0x80000001, 0), 0);
	CHECK_EQ(EDX(f, 0x80000001, 0) & (B(11) | B(20) | B(29)), B(11) | B(20) | B(29));
	if (cpuid_find(f, 0xd, 0)) {
		uint32_t size = 576;

		CHECK_EQ(xcr0 & ~(v3 ? 7u : 3u), 0);
		CHECK_EQ(EDX(f, 0xd, 0), 0);
		for (uint32_t i = 2; i < 32; i++) {
			if (xcr0 & B(i))
				size = EBX(f, 0xd, i) + EAX(f, 0xd, i);
		}
		CHECK_EQ(ECX(f, 0xd, 0), size);
		CHECK_EQ(EAX(f, 0xd, 1) & ~(v3 ? 1u : 0u), 0);
	}
	if (cpuid_find(f, KVM_CPUID_FEATURES, 0)) {
		CHECK_EQ(EAX(f, KVM_CPUID_FEATURES, 0) & ~KVM_PV_SAFE, 0);
		CHECK_EQ(EAX(f, KVM_CPUID_FEATURES, 0) & ~EAX(h, KVM_CPUID_FEATURES, 0), 0);
	}
	/* The vendor never changes. */
	CHECK_EQ(EBX(f, 0x0, 0), EBX(h, 0x0, 0));
	CHECK_EQ(ECX(f, 0x0, 0), ECX(h, 0x0, 0));
	CHECK_EQ(EDX(f, 0x0, 0), EDX(h, 0x0, 0));
}

TEST(cpuid_model_names)
{
	static const char *const names[] = { "host", "x86-64", "x86-64-v2", "x86-64-v3" };
	static const char *const bad[] = { "x86-64-v4", "", "HOST", "host ", "x86-64-v1",
					   "X86-64-V2", "x86_64_v2", "v2" };
	enum cpu_model m;

	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		m = (enum cpu_model)-1;
		CHECK_EQ(cpu_model_parse(names[i], &m), 0);
		CHECK_STR(cpu_model_name(m), names[i]);
	}
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		m = CPU_MODEL_HOST;
		CHECK_EQ(cpu_model_parse(bad[i], &m), -EINVAL);
		CHECK_EQ(m, CPU_MODEL_HOST);
	}
	CHECK_EQ(cpu_model_parse(NULL, &m), -EINVAL);
	CHECK_STR(cpu_model_name(CPU_MODEL_DEFAULT), "x86-64");
	CHECK_STR(cpu_model_name((enum cpu_model)42), "unknown");
}

TEST(cpuid_find_significant_index)
{
	struct kvm_cpuid2 *c = RICH();

	CHECK_EQ(EAX(c, 0x7, 1), 0x1830);
	CHECK_EQ(EDX(c, 0x7, 2), 0x3f);
	CHECK(cpuid_find(c, 0x7, 3) == NULL);
	CHECK_EQ(EBX(c, 0xb, 1), 96);
	/* No flag: the index does not count. */
	CHECK_EQ(EDX(c, 0x80000001, 5), 0x2c100800);
	CHECK(cpuid_find(c, 0x8, 0) == NULL);
	free(c);
}

/*
 * A PVM host (software nested virtualization) reports no SSE3 or later in
 * KVM_GET_SUPPORTED_CPUID: x86-64 (the default) must be offered there, v2
 * refused by name.
 */
TEST(cpuid_v1_on_pvm_like_host)
{
	struct kvm_cpuid2 *h = RICH(), *c;
	struct kvm_cpuid_entry2 *e;
	char missing[CPUID_MISSING_MAX];

	e = cpuid_find(h, 0x1, 0);
	e->ecx = B(13) | B(21) | B(24) | B(31);
	e = cpuid_find(h, 0x80000001, 0);
	e->ecx &= ~B(0);
	c = cpuid_dup(h);
	CHECK_EQ(cpuid_filter(c, CPU_MODEL_X86_64_V2, missing, sizeof(missing)), -ENOTSUP);
	CHECK(strstr(missing, "sse3") != NULL);
	CHECK_EQ(cpuid_filter(c, CPU_MODEL_X86_64, missing, sizeof(missing)), 0);
	check_named_model(h, c, CPU_MODEL_X86_64);
	CHECK_EQ(ECX(c, 0x1, 0), L1_ECX_FORCED);         /* no CX16 in v1 */
	CHECK_EQ(EDX(c, 0x1, 0), L1_EDX_BASE);
	CHECK_EQ(EBX(c, 0x7, 0) & B(5), 0);              /* no AVX2 */
	free(h);
	free(c);
}

TEST(cpuid_v2_on_rich_host)
{
	struct kvm_cpuid2 *h = RICH(), *c = RICH();
	char missing[64] = "junk";

	CHECK_EQ(cpuid_filter(c, CPU_MODEL_X86_64_V2, missing, sizeof(missing)), 0);
	CHECK_STR(missing, "");
	check_named_model(h, c, CPU_MODEL_X86_64_V2);
	/* Kept: v2's own bits. */
	CHECK_EQ(ECX(c, 0x1, 0), L1_ECX_V2);
	CHECK_EQ(EDX(c, 0x1, 0), L1_EDX_BASE);         /* no VME, SS, HTT */
	CHECK_EQ(ECX(c, 0x80000001, 0), B(0));          /* LAHF only */
	CHECK_EQ(EDX(c, 0x80000001, 0), B(11) | B(20) | B(29));
	/* Cleared: AVX, AVX2, AVX-512 and every leaf 7 bit, XSAVE state. */
	CHECK_EQ(ECX(c, 0x1, 0) & (B(26) | B(28) | B(25) | B(1)), 0);
	CHECK_EQ(EBX(c, 0x7, 0), 0);
	CHECK_EQ(count_fn(c, 0x7), 1);
	CHECK_EQ(EAX(c, 0xd, 0), 3);
	CHECK_EQ(EBX(c, 0xd, 0), 576);
	CHECK_EQ(ECX(c, 0xd, 0), 576);
	CHECK_EQ(count_fn(c, 0xd), 2);
	CHECK_EQ(EAX(c, 0xd, 1), 0);
	/* Leaves outside the model are gone; the max leaves follow. */
	CHECK_EQ(EAX(c, 0x0, 0), 0xd);
	CHECK_EQ(EAX(c, 0x80000000, 0), 0x80000008);
	CHECK_EQ(count_fn(c, 0x5) + count_fn(c, 0xa) + count_fn(c, 0x14) +
		 count_fn(c, 0x1d) + count_fn(c, 0x1f), 0);
	CHECK_EQ(EAX(c, 0x6, 0), B(2));
	CHECK_EQ(ECX(c, 0x6, 0), 0);
	CHECK_EQ(EDX(c, 0x80000007, 0), 0);
	CHECK_EQ(EAX(c, 0x80000008, 0), 0x3934);
	CHECK_EQ(EBX(c, 0x80000008, 0), 0);
	/* Described as the host has them. */
	CHECK_EQ(EAX(c, 0x1, 0), 0x000806f8);
	CHECK_EQ(EAX(c, 0x4, 3), 0xfc0fc163);
	CHECK_EQ(EAX(c, 0x80000002, 0), 0x65746e49);
	/* KVM PV: async PF, MSI ext dest ID and SEV bits cleared, hints too. */
	CHECK_EQ(EAX(c, KVM_CPUID_FEATURES, 0), KVM_PV_SAFE);
	CHECK_EQ(EDX(c, KVM_CPUID_FEATURES, 0), 0);
	free(h);
	free(c);
}

TEST(cpuid_v3_on_rich_host)
{
	struct kvm_cpuid2 *h = RICH(), *c = RICH();
	char missing[64];

	CHECK_EQ(cpuid_filter(c, CPU_MODEL_X86_64_V3, missing, sizeof(missing)), 0);
	CHECK_STR(missing, "");
	check_named_model(h, c, CPU_MODEL_X86_64_V3);
	CHECK_EQ(ECX(c, 0x1, 0), L1_ECX_V3);            /* no RDRAND, PCID */
	CHECK_EQ(EBX(c, 0x7, 0), L7_EBX_V3);            /* AVX2, BMI1, BMI2 */
	CHECK_EQ(EBX(c, 0x7, 0) & B(16), 0);            /* AVX-512F */
	CHECK_EQ(ECX(c, 0x80000001, 0), B(0) | B(5));   /* + LZCNT */
	CHECK_EQ(EDX(c, 0x80000001, 0) & B(27), B(27)); /* RDTSCP */
	CHECK_EQ(EDX(c, 0x80000001, 0) & B(26), 0);     /* 1G pages */
	/* XSAVE: x87, SSE, AVX; sizes for those; only XSAVEOPT in 0xd.1. */
	CHECK_EQ(EAX(c, 0xd, 0), 7);
	CHECK_EQ(ECX(c, 0xd, 0), 0x240 + 0x100);
	CHECK_EQ(EAX(c, 0xd, 2), 0x100);
	CHECK_EQ(EAX(c, 0xd, 1), 1);
	CHECK_EQ(EBX(c, 0xd, 1) | ECX(c, 0xd, 1) | EDX(c, 0xd, 1), 0);
	CHECK_EQ(count_fn(c, 0xd), 3);
	free(h);
	free(c);
}

TEST(cpuid_host_model_keeps_everything)
{
	struct kvm_cpuid2 *h = RICH(), *c = RICH();
	char missing[8];

	CHECK_EQ(cpuid_filter(c, CPU_MODEL_HOST, missing, sizeof(missing)), 0);
	CHECK_STR(missing, "");
	CHECK_EQ(c->nent, h->nent);
	CHECK_EQ(ECX(c, 0x1, 0), ECX(h, 0x1, 0) | B(31));
	cpuid_find(c, 0x1, 0)->ecx = ECX(h, 0x1, 0);
	CHECK(set_equal(c, h));
	free(h);
	free(c);
}

TEST(cpuid_v3_on_poor_host_refused)
{
	struct kvm_cpuid2 *h = POOR(), *c = POOR();
	char missing[128];

	CHECK_EQ(cpuid_filter(c, CPU_MODEL_X86_64_V3, missing, sizeof(missing)), -ENOTSUP);
	CHECK(strstr(missing, "avx2") != NULL);
	CHECK_STR(missing, "fma movbe f16c bmi1 avx2 bmi2");
	CHECK(set_equal(c, h));                          /* untouched */
	/* The same without a buffer. */
	CHECK_EQ(cpuid_filter(c, CPU_MODEL_X86_64_V3, NULL, 0), -ENOTSUP);
	CHECK(set_equal(c, h));
	free(h);
	free(c);
}

TEST(cpuid_v2_on_poor_amd_host)
{
	struct kvm_cpuid2 *h = POOR(), *c = POOR();
	char missing[128];

	CHECK_EQ(cpuid_filter(c, CPU_MODEL_X86_64_V2, missing, sizeof(missing)), 0);
	check_named_model(h, c, CPU_MODEL_X86_64_V2);
	/* Emulated by KVM, so set though the host did not say. */
	CHECK_EQ(ECX(c, 0x1, 0) & (B(21) | B(24) | B(31)), B(21) | B(24) | B(31));
	CHECK_EQ(EAX(c, 0x6, 0), B(2));
	/* AMD's copies of leaf 1 EDX stay; AMD-only extensions go. */
	CHECK_EQ(EDX(c, 0x80000001, 0), E1_EDX_V2);
	CHECK_EQ(ECX(c, 0x80000001, 0), B(0));           /* no SSE4A, TOPOEXT */
	CHECK_EQ(EAX(c, 0x80000000, 0), 0x80000008);
	CHECK_EQ(count_fn(c, 0x8000001a) + count_fn(c, 0x8000001d) +
		 count_fn(c, 0x8000001e) + count_fn(c, 0x5), 0);
	CHECK(cpuid_find(c, 0xd, 62) == NULL);
	CHECK_EQ(EAX(c, 0x0, 0), 0xd);
	CHECK_EQ(EBX(c, 0x0, 0), 0x68747541);            /* still AuthenticAMD */
	CHECK_EQ(EBX(c, 0x80000008, 0), 0);
	free(h);
	free(c);
}

TEST(cpuid_v2_on_pre_v2_host_refused)
{
	struct kvm_cpuid2 *c = RICH();
	char missing[64], tiny[6];

	/* A Penryn-like host: SSE4.1 but no SSE4.2 or POPCNT. */
	cpuid_find(c, 0x1, 0)->ecx &= ~(B(20) | B(23));
	CHECK_EQ(cpuid_filter(c, CPU_MODEL_X86_64_V2, missing, sizeof(missing)), -ENOTSUP);
	CHECK_STR(missing, "sse4_2 popcnt");
	CHECK_EQ(cpuid_filter(c, CPU_MODEL_X86_64_V3, missing, sizeof(missing)), -ENOTSUP);
	CHECK_STR(missing, "sse4_2 popcnt");
	/* Whole names only, "..." for the rest, within the buffer. */
	memset(tiny, 'x', sizeof(tiny));
	CHECK_EQ(cpuid_filter(c, CPU_MODEL_X86_64_V2, tiny, sizeof(tiny) - 1), -ENOTSUP);
	CHECK_STR(tiny, "...");
	CHECK_EQ(tiny[5], 'x');
	CHECK_EQ(cpuid_filter(c, CPU_MODEL_X86_64_V2, missing, 12), -ENOTSUP);
	CHECK_STR(missing, "sse4_2 ...");
	free(c);
}

TEST(cpuid_missing_everything_fits)
{
	struct kvm_cpuid2 *c = mkset(NULL, 0);
	char missing[CPUID_MISSING_MAX];

	CHECK_EQ(cpuid_filter(c, CPU_MODEL_X86_64_V3, missing, sizeof(missing)), -ENOTSUP);
	CHECK(strstr(missing, "...") == NULL);
	CHECK(!strncmp(missing, "fpu de pse ", 11));
	CHECK(strstr(missing, " avx2 ") != NULL);
	free(c);
}

TEST(cpuid_v3_needs_avx_state)
{
	struct kvm_cpuid2 *c = RICH();
	char missing[64];

	cpuid_find(c, 0xd, 0)->eax &= ~B(2);
	CHECK_EQ(cpuid_filter(c, CPU_MODEL_X86_64_V3, missing, sizeof(missing)), -ENOTSUP);
	CHECK_STR(missing, "xstate_avx");
	free(c);
}

TEST(cpuid_bad_model)
{
	struct kvm_cpuid2 *c = RICH();
	char missing[8];

	CHECK_EQ(cpuid_filter(c, (enum cpu_model)7, missing, sizeof(missing)), -EINVAL);
	free(c);
}

/* The vCPU index..ncpus fix-ups on a copy of f; checks them; returns it. */
static struct kvm_cpuid2 *vcpu_set(const struct kvm_cpuid2 *f, unsigned int index,
				   unsigned int ncpus, uint32_t tsc_khz)
{
	struct kvm_cpuid2 *c = copy(f);

	CHECK_EQ(cpuid_set_vcpu(c, index, ncpus, tsc_khz), 0);
	CHECK(c->nent <= f->nent + CPUID_EXTRA_ENTRIES);
	return c;
}

static void check_x2apic_leaf(const struct kvm_cpuid2 *c, uint32_t fn, unsigned int index,
			      unsigned int ncpus)
{
	unsigned int bits = ncpus <= 1 ? 0 : ncpus <= 2 ? 1 : ncpus <= 4 ? 2 : 3;

	CHECK_EQ(EAX(c, fn, 0), 0);
	CHECK_EQ(EBX(c, fn, 0), 1);
	CHECK_EQ(ECX(c, fn, 0), 0x100);
	CHECK_EQ(EDX(c, fn, 0), index);
	CHECK_EQ(EAX(c, fn, 1), bits);
	CHECK_EQ(EBX(c, fn, 1), ncpus);
	CHECK_EQ(ECX(c, fn, 1), 0x201);
	CHECK_EQ(EDX(c, fn, 1), index);
	CHECK_EQ(EBX(c, fn, 2), 0);
	CHECK_EQ(ECX(c, fn, 2), 2);
	CHECK_EQ(EDX(c, fn, 2), index);
}

TEST(cpuid_topology)
{
	static const unsigned int counts[] = { 1, 2, 4, 3 };
	struct kvm_cpuid2 *f = RICH();
	char missing[8];

	CHECK_EQ(cpuid_filter(f, CPU_MODEL_X86_64_V2, missing, sizeof(missing)), 0);
	for (size_t k = 0; k < ARRAY_SIZE(counts); k++) {
		unsigned int ncpus = counts[k];
		uint32_t seen = 0;

		for (unsigned int i = 0; i < ncpus; i++) {
			struct kvm_cpuid2 *c = vcpu_set(f, i, ncpus, 2100000);
			uint32_t ebx = EBX(c, 0x1, 0);

			CHECK_EQ(ebx >> 24, i);
			CHECK_EQ((ebx >> 16) & 0xff, ncpus);
			CHECK_EQ((ebx >> 8) & 0xff, 8);
			CHECK_EQ(!!(EDX(c, 0x1, 0) & B(28)), ncpus > 1);
			check_x2apic_leaf(c, 0xb, i, ncpus);
			CHECK_EQ(count_fn(c, 0x1f), 0);
			/* Cache leaves: cores per package; L3 shared by all. */
			for (uint32_t s = 0; s < 4; s++) {
				uint32_t eax = EAX(c, 0x4, s);
				uint32_t share = ((eax >> 5) & 7) == 3 ? ncpus - 1 : 0;

				CHECK_EQ(eax >> 26, ncpus - 1);
				CHECK_EQ((eax >> 14) & 0xfff, share);
				CHECK_EQ(eax & 0x3fff, EAX(f, 0x4, s) & 0x3fff);
			}
			CHECK_EQ(EAX(c, 0x4, 4), 0);
			CHECK_EQ(ECX(c, 0x80000008, 0) & 0xff, ncpus - 1);
			/* Distinct APIC IDs, in leaf 1 and 0xb alike. */
			CHECK(!(seen & B(ebx >> 24)));
			seen |= B(ebx >> 24);
			CHECK_EQ(EDX(c, 0xb, 0), ebx >> 24);
			free(c);
		}
		CHECK_EQ(seen, (1u << ncpus) - 1);
	}
	free(f);
}

TEST(cpuid_topology_host_model)
{
	struct kvm_cpuid2 *rich = RICH(), *poor = POOR(), *c;

	CHECK_EQ(cpuid_filter(rich, CPU_MODEL_HOST, NULL, 0), 0);
	CHECK_EQ(cpuid_filter(poor, CPU_MODEL_HOST, NULL, 0), 0);
	/* Intel: 0x1f (with a die level) follows 0xb. */
	c = vcpu_set(rich, 3, 4, 2100000);
	check_x2apic_leaf(c, 0xb, 3, 4);
	check_x2apic_leaf(c, 0x1f, 3, 4);
	CHECK_EQ(EAX(c, 0x1f, 2), 0);
	free(c);
	/* AMD: no leaf 0xb before, TOPOEXT leaves fixed up. */
	c = vcpu_set(poor, 1, 2, 2100000);
	check_x2apic_leaf(c, 0xb, 1, 2);
	CHECK_EQ(EAX(c, 0x8000001e, 0), 1);
	CHECK_EQ(EBX(c, 0x8000001e, 0) & 0xffff, 1);
	CHECK_EQ((EAX(c, 0x8000001d, 3) >> 14) & 0xfff, 1);
	CHECK_EQ((EAX(c, 0x8000001d, 0) >> 14) & 0xfff, 0);
	CHECK_EQ(ECX(c, 0x80000008, 0) & 0xf0ff, 0x1001);
	CHECK_EQ(EAX(c, 0x4, 0), 0);                      /* AMD: no leaf 4 */
	free(c);
	free(rich);
	free(poor);
}

TEST(cpuid_topology_unflagged_leaf_b)
{
	struct kvm_cpuid2 *f = RICH(), *c;

	CHECK_EQ(cpuid_filter(f, CPU_MODEL_X86_64_V2, NULL, 0), 0);
	/* A leaf 0xb without KVM_CPUID_FLAG_SIGNIFCANT_INDEX, subleaf 0 only. */
	for (uint32_t i = 0; i < f->nent; i++) {
		struct kvm_cpuid_entry2 *e = &f->entries[i];

		if (e->function == 0xb && e->index == 1)
			e->function = 0x2;
		else if (e->function == 0xb)
			e->flags = 0;
	}
	c = vcpu_set(f, 1, 2, 2100000);
	check_x2apic_leaf(c, 0xb, 1, 2);
	CHECK_EQ(count_fn(c, 0xb), 3);
	free(c);
	free(f);
}

TEST(cpuid_hypervisor_leaves)
{
	struct kvm_cpuid2 *f = POOR(), *c;
	char sig[13] = { 0 };

	CHECK_EQ(cpuid_filter(f, CPU_MODEL_X86_64_V2, NULL, 0), 0);
	c = vcpu_set(f, 0, 1, 2995200);
	CHECK_EQ(EAX(c, KVM_CPUID_SIGNATURE, 0), 0x40000010);
	memcpy(sig + 0, &cpuid_find(c, KVM_CPUID_SIGNATURE, 0)->ebx, 4);
	memcpy(sig + 4, &cpuid_find(c, KVM_CPUID_SIGNATURE, 0)->ecx, 4);
	memcpy(sig + 8, &cpuid_find(c, KVM_CPUID_SIGNATURE, 0)->edx, 4);
	CHECK(!memcmp(sig, "KVMKVMKVM\0\0\0", 12));
	CHECK_EQ(EAX(c, 0x40000010, 0), 2995200);
	CHECK_EQ(EBX(c, 0x40000010, 0), 1000000);
	CHECK_EQ(EAX(c, KVM_CPUID_FEATURES, 0), 0x01007efb & KVM_PV_SAFE);
	CHECK(ECX(c, 0x1, 0) & B(31));
	free(c);

	/* TSC frequency unknown: no 0x40000010 offered. */
	c = vcpu_set(f, 0, 1, 0);
	CHECK_EQ(EAX(c, KVM_CPUID_SIGNATURE, 0), KVM_CPUID_FEATURES);
	CHECK(cpuid_find(c, 0x40000010, 0) == NULL);
	free(c);

	/* No signature leaf from KVM: added. */
	for (uint32_t i = 0; i < f->nent; i++) {
		if (f->entries[i].function == KVM_CPUID_SIGNATURE)
			f->entries[i].function = 0x2;    /* some harmless leaf */
	}
	c = vcpu_set(f, 0, 1, 1000000);
	CHECK_EQ(EAX(c, KVM_CPUID_SIGNATURE, 0), 0x40000010);
	CHECK_EQ(EBX(c, KVM_CPUID_SIGNATURE, 0), 0x4b4d564b);
	CHECK_EQ(EAX(c, 0x40000010, 0), 1000000);
	free(c);
	free(f);
}

TEST(cpuid_set_vcpu_idempotent)
{
	struct kvm_cpuid2 *f = RICH(), *a, *b;

	CHECK_EQ(cpuid_filter(f, CPU_MODEL_HOST, NULL, 0), 0);
	a = vcpu_set(f, 1, 2, 2100000);
	b = copy(a);
	CHECK_EQ(cpuid_set_vcpu(b, 1, 2, 2100000), 0);
	CHECK(set_equal(a, b));
	/* And from a set already set up for another vCPU. */
	CHECK_EQ(cpuid_set_vcpu(b, 0, 2, 2100000), 0);
	CHECK_EQ(cpuid_set_vcpu(b, 1, 2, 2100000), 0);
	CHECK(set_equal(a, b));
	free(a);
	free(b);
	free(f);
}

TEST(cpuid_set_vcpu_bad_args)
{
	struct kvm_cpuid2 *c = RICH();

	CHECK_EQ(cpuid_set_vcpu(c, 0, 0, 1), -EINVAL);
	CHECK_EQ(cpuid_set_vcpu(c, 2, 2, 1), -EINVAL);
	CHECK_EQ(cpuid_set_vcpu(c, 0, CPUID_MAX_VCPUS + 1, 1), -EINVAL);
	CHECK_EQ(cpuid_set_vcpu(c, CPUID_MAX_VCPUS - 1, CPUID_MAX_VCPUS, 1), 0);
	CHECK_EQ(EBX(c, 0x1, 0) >> 24, CPUID_MAX_VCPUS - 1);
	free(c);
}

/* Sets the bits of x86-64-v3 (so v2's too) in c, as a host with them has. */
static void pretend_model_bits(struct kvm_cpuid2 *c)
{
	struct kvm_cpuid_entry2 *e;

	e = cpuid_find(c, 0x1, 0);
	if (e) {
		e->ecx |= L1_ECX_V3;
		e->edx |= L1_EDX_BASE;
	}
	e = cpuid_find(c, 0x7, 0);
	if (e)
		e->ebx |= L7_EBX_V3;
	e = cpuid_find(c, 0xd, 1);
	if (e)
		e->eax |= 1;
	e = cpuid_find(c, 0x80000001, 0);
	if (e) {
		e->ecx |= E1_ECX_V3;
		e->edx |= B(11) | B(20) | B(27) | B(29);
	}
}

/* KVM_SET_CPUID2 on a fresh vCPU of a fresh VM; returns 0 or -errno. */
static int kvm_try_set(int kvm, const struct kvm_cpuid2 *c)
{
	int vm, vcpu, r = 0;

	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		return -errno;
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0) {
		r = -errno;
	} else {
		if (ioctl(vcpu, KVM_SET_CPUID2, c) < 0)
			r = -errno;
		close(vcpu);
	}
	close(vm);
	return r;
}

/*
 * The real KVM's set, to each model: a model is either refused with the
 * names of what is missing, or gives a consistent set that KVM accepts.
 * A refused model is then built from the set as if the host had the bits,
 * so that KVM still judges its layout (leaf 0xd sizes, topology).
 */
TEST(cpuid_real_kvm)
{
	static const enum cpu_model models[] = {
		CPU_MODEL_X86_64, CPU_MODEL_X86_64_V2, CPU_MODEL_X86_64_V3, CPU_MODEL_HOST,
	};
	struct kvm_cpuid2 *h;
	char missing[256], v2_missing[256] = "";
	int kvm, r;

	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0 && errno == ENOENT) {
		/* Unit tests need no KVM; the KVM tests cover this path. */
		printf("# no /dev/kvm\n");
		return;
	}
	CHECK(kvm >= 0);
	if (kvm < 0)
		return;
	r = cpuid_get_supported(kvm, &h);
	CHECK_EQ(r, 0);
	if (r) {
		close(kvm);
		return;
	}
	CHECK(h->nent > 0);
	for (size_t i = 0; i < ARRAY_SIZE(models); i++) {
		struct kvm_cpuid2 *c = copy(h), *v;

		r = cpuid_filter(c, models[i], missing, sizeof(missing));
		if (r == -ENOTSUP) {
			/* The default must run on every KVM, PVM's included. */
			CHECK(models[i] != CPU_MODEL_HOST && models[i] != CPU_MODEL_X86_64);
			CHECK(missing[0] != '\0');
			CHECK(set_equal(c, h));
			printf("# %s: not offered by this KVM, missing: %s\n",
			       cpu_model_name(models[i]), missing);
			/* v3 lacks at least what v2 lacks. */
			if (models[i] == CPU_MODEL_X86_64_V2)
				snprintf(v2_missing, sizeof(v2_missing), "%s", missing);
			else
				CHECK(!strncmp(missing, v2_missing, strlen(v2_missing)));
			/*
			 * Still check the model's layout against this KVM:
			 * pretend the host had the missing bits.
			 */
			pretend_model_bits(c);
			r = cpuid_filter(c, models[i], missing, sizeof(missing));
			/* Only v3 may still lack something: AVX state. */
			CHECK(!r || models[i] == CPU_MODEL_X86_64_V3);
			if (r) {
				printf("# %s: cannot pretend: %s\n",
				       cpu_model_name(models[i]), missing);
				free(c);
				continue;
			}
		} else {
			CHECK_EQ(r, 0);
			CHECK_STR(missing, "");
			if (models[i] != CPU_MODEL_HOST)
				check_named_model(h, c, models[i]);
			printf("# %s: offered\n", cpu_model_name(models[i]));
		}
		v = vcpu_set(c, 1, 2, 2000000);
		check_x2apic_leaf(v, 0xb, 1, 2);
		CHECK_EQ(kvm_try_set(kvm, v), 0);
		free(v);
		free(c);
	}
	free(h);
	close(kvm);
}
