/*
 * api_metrics.c - GET /metrics on the VM's API socket: the VM, its vCPUs'
 * exits, its devices' I/O and the current (or last) migration in the
 * Prometheus text format (prom.h).  docs/api.md lists every family.
 *
 * Runs on the loop thread like every handler.  Counters are read with
 * relaxed loads while vCPU and device threads add to them: a page is not a
 * snapshot of one instant, but no counter ever goes backwards.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "godwit/dev.h"
#include "godwit/migrate.h"
#include "godwit/prom.h"
#include "godwit/vm.h"
#include "api_int.h"

#define MS 1e-3      /* the progress keeps milliseconds; the page says seconds */

static void metrics_vm(struct prom *p, struct vm *vm)
{
	static const char *const states[] = { "created", "running", "paused", "stopping", "fenced" };
	const struct vm_config *cfg = &vm->cfg;
	const char *state = api_vm_state_name(vm);
	char uuid[UUID_STR_LEN];

	prom_family(p, "godwit_vm_info", PROM_GAUGE, "The VM's name, UUID and CPU model (always 1).");
	prom_u64(p, 1, "name", cfg->name, "uuid", uuid_str(cfg->uuid, uuid),
		 "cpu_model", cpu_model_name(cfg->cpu_model), NULL);
	prom_family(p, "godwit_vm_state", PROM_GAUGE,
		    "1 for the state the VM is in (as GET /api/v1/vm says it), 0 for the others.");
	for (size_t i = 0; i < ARRAY_SIZE(states); i++)
		prom_u64(p, !strcmp(state, states[i]), "state", states[i], NULL);
	prom_family(p, "godwit_vm_vcpus", PROM_GAUGE, "vCPUs.");
	prom_u64(p, cfg->ncpus, NULL);
	prom_family(p, "godwit_vm_memory_bytes", PROM_GAUGE, "Guest memory size.");
	prom_u64(p, cfg->mem_size, NULL);
	prom_family(p, "godwit_vm_uptime_seconds", PROM_GAUGE,
		    "Seconds since the VM's first KVM_RUN in this process (0 before).");
	prom_f64(p, vm_uptime(vm), NULL);
}

static void metrics_vcpus(struct prom *p, struct vm *vm)
{
	char idx[12];

	if (!vm->vcpus)
		return;
	prom_family(p, "godwit_vcpu_exits_total", PROM_COUNTER,
		    "Returns from KVM_RUN by reason (intr: a signal or KVM_EXIT_INTR).");
	for (unsigned int i = 0; i < vm->cfg.ncpus; i++) {
		snprintf(idx, sizeof(idx), "%u", i);
		for (int r = 0; r < VCPU_EXIT_NR; r++)
			prom_u64(p, STAT_GET(vm->vcpus[i].exits[r]), "vcpu", idx,
				 "reason", vcpu_exit_names[r], NULL);
	}
}

struct metrics_dev {
	char slot[12];
	struct dev_stats st;
};

/* The families of one kind of device, each with every device of that kind. */
static void metrics_devices(struct prom *p, const struct metrics_dev *d, size_t n)
{
	bool blk = false, net = false, rng = false;
	static const char *const dir[2] = { "rx", "tx" };

	for (size_t i = 0; i < n; i++) {
		blk |= d[i].st.kind == DEV_STATS_BLK;
		net |= d[i].st.kind == DEV_STATS_NET;
		rng |= d[i].st.kind == DEV_STATS_RNG;
	}
	if (blk) {
		prom_family(p, "godwit_blk_requests_total", PROM_COUNTER,
			    "virtio-blk requests answered, by operation.");
		for (size_t i = 0; i < n; i++)
			for (int o = 0; d[i].st.kind == DEV_STATS_BLK && o < DEV_BLK_NR_OPS; o++)
				prom_u64(p, d[i].st.blk.requests[o], "slot", d[i].slot,
					 "path", d[i].st.label, "op", dev_blk_op_names[o], NULL);
		prom_family(p, "godwit_blk_bytes_total", PROM_COUNTER,
			    "virtio-blk bytes read and written by requests that succeeded.");
		for (size_t i = 0; i < n; i++) {
			if (d[i].st.kind != DEV_STATS_BLK)
				continue;
			prom_u64(p, d[i].st.blk.read_bytes, "slot", d[i].slot, "path", d[i].st.label,
				 "op", "read", NULL);
			prom_u64(p, d[i].st.blk.write_bytes, "slot", d[i].slot, "path",
				 d[i].st.label, "op", "write", NULL);
		}
		prom_family(p, "godwit_blk_errors_total", PROM_COUNTER,
			    "virtio-blk requests answered with an error or as unsupported.");
		for (size_t i = 0; i < n; i++)
			if (d[i].st.kind == DEV_STATS_BLK)
				prom_u64(p, d[i].st.blk.errors, "slot", d[i].slot, "path",
					 d[i].st.label, NULL);
	}
	if (net) {
		static const struct { const char *name, *help; } fam[3] = {
			{ "godwit_net_packets_total", "virtio-net frames passed (rx: to the guest)." },
			{ "godwit_net_bytes_total", "virtio-net frame bytes passed, without the "
			  "virtio header." },
			{ "godwit_net_dropped_total", "virtio-net frames dropped (no buffer, too "
			  "long, malformed chains, refused by the TAP)." },
		};
		for (int f = 0; f < 3; f++) {
			prom_family(p, fam[f].name, PROM_COUNTER, fam[f].help);
			for (size_t i = 0; i < n; i++) {
				const struct dev_stats *s = &d[i].st;
				uint64_t v[3][2] = {
					{ s->net.rx_packets, s->net.tx_packets },
					{ s->net.rx_bytes, s->net.tx_bytes },
					{ s->net.rx_dropped, s->net.tx_dropped },
				};

				if (s->kind != DEV_STATS_NET)
					continue;
				for (int k = 0; k < 2; k++)
					prom_u64(p, v[f][k], "slot", d[i].slot, "tap", s->label,
						 "direction", dir[k], NULL);
			}
		}
	}
	if (rng) {
		prom_family(p, "godwit_rng_requests_total", PROM_COUNTER,
			    "virtio-rng requests answered.");
		for (size_t i = 0; i < n; i++)
			if (d[i].st.kind == DEV_STATS_RNG)
				prom_u64(p, d[i].st.rng.requests, "slot", d[i].slot, NULL);
		prom_family(p, "godwit_rng_bytes_total", PROM_COUNTER,
			    "Random bytes given to the guest by virtio-rng.");
		for (size_t i = 0; i < n; i++)
			if (d[i].st.kind == DEV_STATS_RNG)
				prom_u64(p, d[i].st.rng.bytes, "slot", d[i].slot, NULL);
	}
}

/* Every device that keeps counters; 0, or -ENOMEM. */
static int metrics_dev_all(struct prom *p, struct vm *vm)
{
	struct metrics_dev *d;
	size_t n = 0, i = 0;

	for (struct dev *x = dev_first(vm); x; x = x->next)
		n += x->ops->stats != NULL;
	if (!n)
		return 0;
	d = calloc(n, sizeof(*d));
	if (!d)
		return -1;
	for (struct dev *x = dev_first(vm); x && i < n; x = x->next) {
		if (!x->ops->stats)
			continue;
		snprintf(d[i].slot, sizeof(d[i].slot), "%u", x->instance);
		x->ops->stats(x, &d[i].st);
		i++;
	}
	metrics_devices(p, d, i);
	free(d);
	return 0;
}

static void metrics_gauge_u64(struct prom *p, const char *name, const char *help, uint64_t v)
{
	prom_family(p, name, PROM_GAUGE, help);
	prom_u64(p, v, NULL);
}

static void metrics_gauge_f64(struct prom *p, const char *name, const char *help, double v)
{
	prom_family(p, name, PROM_GAUGE, help);
	prom_f64(p, v, NULL);
}

/* A gauge with one sample per vCPU, v[i] / div labelled vcpu="i"; none when n is 0. */
static void metrics_vcpu_gauge(struct prom *p, const char *name, const char *help,
			       const double *v, unsigned int n, double div)
{
	char cpu[12];

	if (!n)
		return;
	prom_family(p, name, PROM_GAUGE, help);
	for (unsigned int i = 0; i < n; i++) {
		snprintf(cpu, sizeof(cpu), "%u", i);
		prom_f64(p, v[i] / div, "vcpu", cpu, NULL);
	}
}

/*
 * The migration families: gauges, because they describe the current or last
 * migration (GET /api/v1/vm/migration) and start again with the next one.
 */
static void metrics_migration(struct prom *p, struct vm *vm)
{
	static const enum mig_status all[] = {
		MIG_NONE, MIG_SETUP, MIG_ACTIVE, MIG_STOP_COPY, MIG_COMMIT_WAIT, MIG_COMMITTING,
		MIG_COMPLETED, MIG_FAILED, MIG_CANCELLED, MIG_IN_DOUBT, MIG_INCOMING,
		MIG_POSTCOPY, MIG_POSTCOPY_PAUSED, MIG_POSTCOPY_FAILED,
		MIG_RECONNECTING,
	};
	struct migrate_progress m;

	migrate_get_progress(vm, &m, false);
	prom_family(p, "godwit_migration_status", PROM_GAUGE,
		    "1 for the status of the current or last migration (none, setup, active, "
		    "... incoming: this VM came in by migration), 0 for the others.");
	for (size_t i = 0; i < ARRAY_SIZE(all); i++)
		prom_u64(p, m.status == all[i], "status", migrate_status_name(all[i]), NULL);
	metrics_gauge_u64(p, "godwit_migration_bytes", "Stream bytes of the current or last "
			  "migration: sent (source) or received (destination).", m.bytes);
	metrics_gauge_u64(p, "godwit_migration_pages", "RAM pages sent.", m.pages);
	metrics_gauge_u64(p, "godwit_migration_zero_pages", "RAM pages sent as zero-page markers.",
			  m.zero_pages);
	metrics_gauge_u64(p, "godwit_migration_rounds", "Pre-copy rounds finished.",
			  m.rounds_done);
	metrics_gauge_u64(p, "godwit_migration_remaining_bytes",
			  "Dirty RAM not sent yet, as last measured.", m.remaining_bytes);
	metrics_gauge_f64(p, "godwit_migration_dirty_rate_bytes_per_second",
			  "RAM dirtied per second in the last pre-copy round.", m.dirty_rate);
	metrics_gauge_f64(p, "godwit_migration_bandwidth_bytes_per_second",
			  "Bytes sent per second in the last pre-copy round.", m.bandwidth);
	metrics_gauge_f64(p, "godwit_migration_expected_downtime_seconds",
			  "Remaining bytes over bandwidth, as last measured.",
			  m.expected_downtime_ms * MS);
	metrics_gauge_f64(p, "godwit_migration_setup_seconds",
			  "From the start to the first pre-copy round.", m.setup_ms * MS);
	metrics_gauge_f64(p, "godwit_migration_duration_seconds",
			  "From the start to the end (so far, while under way).", m.total_ms * MS);
	metrics_gauge_f64(p, "godwit_migration_downtime_seconds",
			  "How long the VM was paused for the hand-over.", m.downtime_ms * MS);
	if (m.paused)
		metrics_gauge_f64(p, "godwit_migration_pause_start_seconds", "From the start to "
				  "the pause (stop-and-copy).", m.pause_start_ms * MS);
	if (m.phases) {
		prom_family(p, "godwit_migration_downtime_phase_seconds", PROM_GAUGE,
			    "The pause of a completed migration by phase (stop, memory, state, ready, "
			    "release, gate: only with a commit gate, commit); they add up to the "
			    "downtime.");
		for (unsigned int i = 0; i < MIG_PHASE_COUNT; i++)
			if (i != MIG_PHASE_GATE || m.gate)
				prom_f64(p, m.phase_ms[i] * MS, "phase", migrate_phase_name(i), NULL);
	}
	metrics_gauge_u64(p, "godwit_migration_converged",
			  "1 if pre-copy ended under the downtime limit.", m.converged);
	metrics_gauge_u64(p, "godwit_migration_disk_bytes",
			  "Disk extents sent by storage migration (data and zero).", m.disk_bytes);
	metrics_gauge_u64(p, "godwit_migration_disk_remaining_bytes",
			  "Written disk blocks not sent yet, as last measured.",
			  m.disk_remaining_bytes);
	metrics_gauge_u64(p, "godwit_migration_disk_rounds", "Storage migration passes.",
			  m.disk_rounds);
	metrics_gauge_u64(p, "godwit_migration_reconnects", "Times pre-copy's connection broke "
			  "and was made again (migrate --reconnect-s).", m.reconnects);
	metrics_gauge_u64(p, "godwit_migration_resent_pages", "Pages sent again because of "
			  "those breaks.", m.resent_pages);
	metrics_gauge_f64(p, "godwit_migration_throttle_budget_bytes_per_second",
			  "What the vCPUs may dirty together while throttled (0: none is).",
			  m.throttle_budget);
	metrics_vcpu_gauge(p, "godwit_migration_vcpu_dirty_rate_bytes_per_second",
			   "Each vCPU's dirty rate over the last pre-copy round (KVM's dirty ring).",
			   m.vcpu_dirty_rate, m.nr_vcpu_rates, 1);
	metrics_vcpu_gauge(p, "godwit_migration_vcpu_throttle_ratio",
			   "Each vCPU's share of time asleep in the throttle, now (0 to 0.99).",
			   m.vcpu_throttle_pct, m.nr_vcpu_throttle, 100);
}

/*
 * api_metrics_page - the text of GET /metrics for s's VM: *len bytes,
 * malloc()ed, or NULL with err set.
 */
char *api_metrics_page(struct api_server *s, size_t *len, char *err, size_t errlen)
{
	struct prom p;
	char *text;

	prom_init(&p);
	metrics_vm(&p, s->vm);
	metrics_vcpus(&p, s->vm);
	if (metrics_dev_all(&p, s->vm)) {
		prom_free(&p);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	metrics_migration(&p, s->vm);
	text = prom_finish(&p, len);
	if (!text)
		snprintf(err, errlen, "metrics: %s", prom_error(&p));
	return text;
}
