/*
 * vm_state.c - the VM's in-kernel device state (cpu_state.h): the PIC pair,
 * the IOAPIC, the PIT and kvmclock, read from KVM, encoded as tagged fields
 * of fixed-layout records (state.h; each record described once), decoded
 * and written back.
 *
 * VM state (VM_STATE_VERSION 1), all required:
 *   0x0001 TIME_NS    8    u64 host CLOCK_REALTIME (ns) when the clock was read
 *   0x0010 PIC_MASTER 16   u8 last_irr irr imr isr priority_add irq_base
 *   0x0011 PIC_SLAVE  16      read_reg_select poll special_mask init_state
 *                             auto_eoi rotate_on_auto_eoi
 *                             special_fully_nested_mode init4 elcr elcr_mask
 *   0x0012 IOAPIC     212  u64 base_address, u32 ioregsel, id, irr, u64
 *                          redirtbl[24]; load requires the platform's base
 *   0x0020 PIT        52   u32 flags, 3 channels {u32 count, u16 latched_count,
 *                          u8 count_latched status_latched status read_state
 *                          write_state write_latch rw_mode mode bcd gate};
 *                          count_load_time is a host time and is not saved:
 *                          KVM_SET_PIT2 restarts each counter from `count`
 *   0x0030 CLOCK      12   u64 kvmclock ns (KVM_GET_CLOCK), u32 its flags
 *
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/layout.h"
#include "godwit/log.h"
#include "godwit/state.h"
#include "x86.h"

/* VM tags: never renumber or reuse. */
#define VM_F_TIME_NS    0x0001
#define VM_F_PIC_MASTER 0x0010
#define VM_F_PIC_SLAVE  0x0011
#define VM_F_IOAPIC     0x0012
#define VM_F_PIT        0x0020
#define VM_F_CLOCK      0x0030

/* ---- records ------------------------------------------------------------------------ */

#define T struct kvm_pic_state
static const struct state_rec pic_rec[] = {
	STATE_REC(T, last_irr), STATE_REC(T, irr), STATE_REC(T, imr), STATE_REC(T, isr),
	STATE_REC(T, priority_add), STATE_REC(T, irq_base), STATE_REC(T, read_reg_select),
	STATE_REC(T, poll), STATE_REC(T, special_mask), STATE_REC(T, init_state),
	STATE_REC(T, auto_eoi), STATE_REC(T, rotate_on_auto_eoi),
	STATE_REC(T, special_fully_nested_mode), STATE_REC(T, init4), STATE_REC(T, elcr),
	STATE_REC(T, elcr_mask),
};
#undef T
#define T struct kvm_ioapic_state
static const struct state_rec ioapic_rec[] = {
	STATE_REC(T, base_address), STATE_REC(T, ioregsel), STATE_REC(T, id), STATE_REC(T, irr),
	STATE_REC_ARRAY(T, redirtbl, KVM_IOAPIC_NUM_PINS),
};
#undef T
/* count_load_time is a host time: not saved (KVM_SET_PIT2 restarts from count). */
#define T struct kvm_pit_channel_state
static const struct state_rec pit_ch_rec[] = {
	STATE_REC(T, count), STATE_REC(T, latched_count), STATE_REC(T, count_latched),
	STATE_REC(T, status_latched), STATE_REC(T, status), STATE_REC(T, read_state),
	STATE_REC(T, write_state), STATE_REC(T, write_latch), STATE_REC(T, rw_mode),
	STATE_REC(T, mode), STATE_REC(T, bcd), STATE_REC(T, gate),
};
#undef T
#define T struct kvm_pit_state2
static const struct state_rec pit_rec[] = {
	STATE_REC(T, flags), STATE_REC_SUB_ARRAY(T, channels, 3, pit_ch_rec),
};
#undef T
#define T struct kvm_clock_data
static const struct state_rec clock_rec[] = {
	STATE_REC(T, clock), STATE_REC(T, flags),
};
#undef T

/* Record lengths (the format above); vm_piece_ok() checks them against the tables. */
#define PIC_LEN       16
#define IOAPIC_LEN    (8 + 3 * 4 + KVM_IOAPIC_NUM_PINS * 8)
#define PIT_LEN       (4 + 3 * 16)
#define CLOCK_LEN     12

/* The tagged fields: time_ns, then each piece's record as bytes. */
enum { PIECE_PIC_MASTER, PIECE_PIC_SLAVE, PIECE_IOAPIC, PIECE_PIT, PIECE_CLOCK, PIECE_NR };
struct vm_image {
	uint64_t time_ns;
	struct state_bytes piece[PIECE_NR];
};
#define IMG struct vm_image
static const struct state_desc vm_fields[] = {
	STATE_INT(VM_F_TIME_NS, IMG, time_ns, STATE_ANY, 1),
	STATE_BYTES(VM_F_PIC_MASTER, IMG, piece[PIECE_PIC_MASTER], PIC_LEN, PIC_LEN, 1),
	STATE_BYTES(VM_F_PIC_SLAVE, IMG, piece[PIECE_PIC_SLAVE], PIC_LEN, PIC_LEN, 1),
	STATE_BYTES(VM_F_IOAPIC, IMG, piece[PIECE_IOAPIC], IOAPIC_LEN, IOAPIC_LEN, 1),
	STATE_BYTES(VM_F_PIT, IMG, piece[PIECE_PIT], PIT_LEN, PIT_LEN, 1),
	STATE_BYTES(VM_F_CLOCK, IMG, piece[PIECE_CLOCK], CLOCK_LEN, CLOCK_LEN, 1),   /* last */
};
#undef IMG

/* Each piece's record and the object of struct vm_kstate it describes. */
static const struct {
	const struct state_rec *rec;
	size_t nrec, offset;
} vm_pieces[PIECE_NR] = {
	[PIECE_PIC_MASTER] = { pic_rec, ARRAY_SIZE(pic_rec), offsetof(struct vm_kstate, pic[0].chip.pic) },
	[PIECE_PIC_SLAVE] = { pic_rec, ARRAY_SIZE(pic_rec), offsetof(struct vm_kstate, pic[1].chip.pic) },
	[PIECE_IOAPIC] = { ioapic_rec, ARRAY_SIZE(ioapic_rec), offsetof(struct vm_kstate, ioapic.chip.ioapic) },
	[PIECE_PIT] = { pit_rec, ARRAY_SIZE(pit_rec), offsetof(struct vm_kstate, pit) },
	[PIECE_CLOCK] = { clock_rec, ARRAY_SIZE(clock_rec), offsetof(struct vm_kstate, clock) },
};

/* The tables and the lengths the format names agree (a godwit bug otherwise). */
static bool vm_pieces_ok(void)
{
	for (unsigned int i = 0; i < PIECE_NR; i++)
		if (NEVER(state_rec_len(vm_pieces[i].rec, vm_pieces[i].nrec) !=
			  vm_fields[1 + i].max))
			return false;
	return true;
}

/* ---- KVM ------------------------------------------------------------------------ */

static int vm_piece_err(const char *fn, const char *piece)
{
	int err = -errno;

	log_warn("%s: %s", fn, piece);
	return err ? err : -EIO;
}

int vm_state_read(struct vm *vm, struct vm_kstate *s)
{
	uint64_t t0, t1;

	memset(s, 0, sizeof(*s));
	s->pic[0].chip_id = KVM_IRQCHIP_PIC_MASTER;
	s->pic[1].chip_id = KVM_IRQCHIP_PIC_SLAVE;
	s->ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
	if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &s->pic[0]) < 0)
		return vm_piece_err(__func__, "pic_master: KVM_GET_IRQCHIP");
	if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &s->pic[1]) < 0)
		return vm_piece_err(__func__, "pic_slave: KVM_GET_IRQCHIP");
	if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &s->ioapic) < 0)
		return vm_piece_err(__func__, "ioapic: KVM_GET_IRQCHIP");
	if (ioctl(vm->vm_fd, KVM_GET_PIT2, &s->pit) < 0)
		return vm_piece_err(__func__, "pit: KVM_GET_PIT2");
	t0 = now_realtime_ns();
	if (ioctl(vm->vm_fd, KVM_GET_CLOCK, &s->clock) < 0)
		return vm_piece_err(__func__, "clock: KVM_GET_CLOCK");
	t1 = now_realtime_ns();
	s->time_ns = t0 + (t1 - t0) / 2;
	return 0;
}

int vm_state_save(struct vm *vm, struct state_out *o)
{
	uint8_t buf[PIECE_NR][IOAPIC_LEN];
	struct vm_image img;
	struct vm_kstate s;
	int ret;

	if (o->err)
		return o->err;
	if (!vm_pieces_ok())
		return -EINVAL;
	ret = vm_state_read(vm, &s);
	if (ret)
		return ret;
	img.time_ns = s.time_ns;
	for (unsigned int i = 0; i < PIECE_NR; i++) {
		state_rec_put(buf[i], vm_pieces[i].rec, vm_pieces[i].nrec,
			      (const uint8_t *)&s + vm_pieces[i].offset);
		img.piece[i] = (struct state_bytes){ buf[i], (uint32_t)vm_fields[1 + i].max };
	}
	return state_save_fields(o, vm_fields, ARRAY_SIZE(vm_fields), &img);
}

int vm_state_decode(struct state_in *in, uint16_t version, struct vm_kstate *s)
{
	struct vm_image img = { 0 };
	int ret;

	memset(s, 0, sizeof(*s));
	s->pic[0].chip_id = KVM_IRQCHIP_PIC_MASTER;
	s->pic[1].chip_id = KVM_IRQCHIP_PIC_SLAVE;
	s->ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
	if (version < VM_STATE_MIN_VERSION || version > VM_STATE_VERSION) {
		log_warnx("%s: VM state version %u; this godwit loads %u to %u", __func__,
			  version, VM_STATE_MIN_VERSION, VM_STATE_VERSION);
		return -EINVAL;
	}
	if (!vm_pieces_ok())
		return -EINVAL;
	ret = state_load_fields(in, vm_fields, ARRAY_SIZE(vm_fields), &img, version);
	if (ret) {
		log_warnx("%s: VM state malformed, truncated or incomplete: %s", __func__,
			  strerror(-ret));
		return ret;
	}
	s->time_ns = img.time_ns;
	for (unsigned int i = 0; i < PIECE_NR; i++)
		state_rec_get(img.piece[i].p, vm_pieces[i].rec, vm_pieces[i].nrec,
			      (uint8_t *)s + vm_pieces[i].offset);
	return 0;
}

int vm_state_load(struct vm *vm, struct state_in *in, uint16_t version,
		  const struct cpu_load_opts *opts)
{
	struct kvm_clock_data clock;
	struct vm_kstate s;
	int ret;

	ret = vm_state_decode(in, version, &s);
	if (ret)
		return ret;
	if (s.ioapic.chip.ioapic.base_address != LAYOUT_IOAPIC) {
		log_warnx("%s: ioapic: base address %#llx, the platform's is %#llx", __func__,
			  (unsigned long long)s.ioapic.chip.ioapic.base_address,
			  (unsigned long long)LAYOUT_IOAPIC);
		return -EINVAL;
	}
	if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s.pic[0]) < 0)
		return vm_piece_err(__func__, "pic_master: KVM_SET_IRQCHIP");
	if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s.pic[1]) < 0)
		return vm_piece_err(__func__, "pic_slave: KVM_SET_IRQCHIP");
	if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s.ioapic) < 0)
		return vm_piece_err(__func__, "ioapic: KVM_SET_IRQCHIP");
	if (ioctl(vm->vm_fd, KVM_SET_PIT2, &s.pit) < 0)
		return vm_piece_err(__func__, "pit: KVM_SET_PIT2");
	memset(&clock, 0, sizeof(clock));
	clock.clock = s.clock.clock;
	if (opts && opts->clock == CPU_CLOCK_ADVANCE)
		clock.clock += realtime_since(s.time_ns);
	if (ioctl(vm->vm_fd, KVM_SET_CLOCK, &clock) < 0)
		return vm_piece_err(__func__, "clock: KVM_SET_CLOCK");
	return 0;
}
