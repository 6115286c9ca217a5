/*
 * irq.c - KVM interrupt routing (irq.h): the GSI routing table with the
 * default irqchip routes plus MSI routes, irqfds, KVM_SIGNAL_MSI, and
 * shared legacy lines.
 *
 * The whole table is rebuilt and sent on every MSI route change (KVM has no
 * way to change one entry).  Changes are rare: a driver programs a vector
 * once, while it is masked, and the MSI-X code installs the route when the
 * vector is unmasked (pci.c), so a device set-up costs one call per vector.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

#include "godwit/irq.h"
#include "godwit/log.h"

/* irq_router_init - see irq.h. */
void irq_router_init(struct irq_router *r, int vm_fd)
{
	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->lock, NULL);
	r->vm_fd = vm_fd;
	r->next_gsi = IRQ_NR_IRQCHIP_GSIS;
}

/* irq_router_destroy - see irq.h. */
void irq_router_destroy(struct irq_router *r)
{
	pthread_mutex_destroy(&r->lock);
}

/* irq_alloc_gsi - see irq.h. */
int irq_alloc_gsi(struct irq_router *r)
{
	int gsi = -ENOSPC;

	pthread_mutex_lock(&r->lock);
	if (r->nr_msi < IRQ_MAX_MSI_ROUTES) {
		gsi = (int)r->next_gsi++;
		r->msi[r->nr_msi++] = (struct irq_msi_route){ .gsi = (uint32_t)gsi };
	}
	pthread_mutex_unlock(&r->lock);
	return gsi;
}

static struct irq_msi_route *irq_find(struct irq_router *r, uint32_t gsi)
{
	for (unsigned int i = 0; i < r->nr_msi; i++)
		if (r->msi[i].gsi == gsi)
			return &r->msi[i];
	return NULL;
}

static void irq_add_chip(struct kvm_irq_routing *t, uint32_t gsi, uint32_t chip, uint32_t pin)
{
	struct kvm_irq_routing_entry *e = &t->entries[t->nr++];

	memset(e, 0, sizeof(*e));
	e->gsi = gsi;
	e->type = KVM_IRQ_ROUTING_IRQCHIP;
	e->u.irqchip.irqchip = chip;
	e->u.irqchip.pin = pin;
}

/* Under r->lock: send the whole table.  Routes with (addr, data) all zero are left out. */
static int irq_commit_locked(struct irq_router *r)
{
	size_t n = 16 + IRQ_NR_IRQCHIP_GSIS + r->nr_msi;
	struct kvm_irq_routing *t;
	int ret = 0;

	if (r->vm_fd < 0) {
		r->nr_updates++;
		return 0;
	}
	t = calloc(1, sizeof(*t) + n * sizeof(t->entries[0]));
	if (!t)
		return -ENOMEM;
	for (uint32_t i = 0; i < 16; i++)
		if (i != 2)
			irq_add_chip(t, i, i < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, i % 8);
	for (uint32_t i = 0; i < IRQ_NR_IRQCHIP_GSIS; i++)
		irq_add_chip(t, i, KVM_IRQCHIP_IOAPIC, i);
	for (unsigned int i = 0; i < r->nr_msi; i++) {
		struct irq_msi_route *m = &r->msi[i];
		struct kvm_irq_routing_entry *e;

		if (!m->addr_lo && !m->addr_hi && !m->data)
			continue;
		e = &t->entries[t->nr++];
		e->gsi = m->gsi;
		e->type = KVM_IRQ_ROUTING_MSI;
		e->u.msi.address_lo = m->addr_lo;
		e->u.msi.address_hi = m->addr_hi;
		e->u.msi.data = m->data;
	}
	if (ioctl(r->vm_fd, KVM_SET_GSI_ROUTING, t) < 0) {
		ret = -errno;
		log_warn("%s: KVM_SET_GSI_ROUTING (%u entries)", __func__, t->nr);
	}
	r->nr_updates++;
	free(t);
	return ret;
}

/* irq_set_msi_route - see irq.h. */
int irq_set_msi_route(struct irq_router *r, uint32_t gsi, uint64_t addr, uint32_t data)
{
	struct irq_msi_route *m, old;
	int ret;

	pthread_mutex_lock(&r->lock);
	m = irq_find(r, gsi);
	if (!m) {
		pthread_mutex_unlock(&r->lock);
		return -ENOENT;
	}
	if (m->installed && m->addr_lo == (uint32_t)addr && m->addr_hi == (uint32_t)(addr >> 32) &&
	    m->data == data) {
		pthread_mutex_unlock(&r->lock);
		return 0;
	}
	old = *m;
	m->addr_lo = (uint32_t)addr;
	m->addr_hi = (uint32_t)(addr >> 32);
	m->data = data;
	ret = irq_commit_locked(r);
	if (ret) {
		/* KVM kept the old table: so do we. */
		*m = old;
		m->installed = false;
	} else {
		m->installed = true;
	}
	pthread_mutex_unlock(&r->lock);
	return ret;
}

/* irq_route_installed - see irq.h. */
bool irq_route_installed(struct irq_router *r, uint32_t gsi)
{
	struct irq_msi_route *m;
	bool ok;

	pthread_mutex_lock(&r->lock);
	m = irq_find(r, gsi);
	ok = m && m->installed;
	pthread_mutex_unlock(&r->lock);
	return ok;
}

/* irq_signal_msi - see irq.h. */
int irq_signal_msi(struct irq_router *r, uint64_t addr, uint32_t data)
{
	struct kvm_msi msi = {
		.address_lo = (uint32_t)addr,
		.address_hi = (uint32_t)(addr >> 32),
		.data = data,
	};

	if (r->vm_fd < 0)
		return 0;
	if (ioctl(r->vm_fd, KVM_SIGNAL_MSI, &msi) < 0)
		return -errno;
	return 0;
}

/* irq_irqfd - see irq.h. */
int irq_irqfd(struct irq_router *r, int fd, uint32_t gsi, bool assign)
{
	struct kvm_irqfd irqfd = {
		.fd = (uint32_t)fd,
		.gsi = gsi,
		.flags = assign ? 0 : KVM_IRQFD_FLAG_DEASSIGN,
	};

	if (r->vm_fd < 0)
		return 0;
	if (ioctl(r->vm_fd, KVM_IRQFD, &irqfd) < 0) {
		int err = -errno;

		log_warn("%s: KVM_IRQFD %s gsi %u", __func__, assign ? "assign" : "deassign", gsi);
		return err;
	}
	return 0;
}

/* irq_line_set - see irq.h. */
int irq_line_set(struct irq_router *r, uint32_t gsi, unsigned int src, int level)
{
	struct kvm_irq_level l = { .irq = gsi };
	uint32_t before, after;
	int ret = 0;

	if (gsi >= IRQ_NR_IRQCHIP_GSIS || src >= 32)
		return -EINVAL;
	pthread_mutex_lock(&r->lock);
	before = r->line_sources[gsi];
	if (level)
		r->line_sources[gsi] |= 1u << src;
	else
		r->line_sources[gsi] &= ~(1u << src);
	after = r->line_sources[gsi];
	if (!before != !after && r->vm_fd >= 0) {
		l.level = after ? 1 : 0;
		if (ioctl(r->vm_fd, KVM_IRQ_LINE, &l) < 0) {
			ret = -errno;
			log_warn("%s: KVM_IRQ_LINE %u", __func__, gsi);
		}
	}
	pthread_mutex_unlock(&r->lock);
	return ret;
}
