/*
 * snapshot.c - the whole VM in one stream: snapshot_write() (a paused VM to
 * a file descriptor), snapshot_take() (a running VM paused, quiesced,
 * written and resumed: the API's PUT /vm/snapshot), the snapshot file (a
 * temporary file renamed into place once complete and synced), and restoring a VM from a stream
 * (snapshot_restore_*: the configuration that rebuilds the VM, then RAM,
 * devices, VM state and vCPUs).  docs/cli.md (snapshot, restore) and
 * docs/stream-format.md describe what users and other readers see.
 *
 * Stream layout written here: CONFIG, VM ("vm", one vm_state_save()
 * buffer), CPU ("cpu", instance = vCPU index), one DEVICE per entry of
 * vm->devices (id = dev_ops name, instance), RAM (every region), EOF.
 *
 * The restore applies nothing but RAM before the EOF record has been
 * verified: device, VM and vCPU sections are kept in memory (they are
 * small) and loaded once the whole stream is known to be intact, in the
 * order KVM and the devices need (RAM, devices, VM, vCPUs), whatever order
 * the stream has them in.  RAM goes straight into the new VM's memory,
 * which is discarded on any error.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "godwit/conn.h"
#include "godwit/cpu_state.h"
#include "godwit/cpuid.h"
#include "godwit/dev.h"
#include "godwit/disk.h"
#include "godwit/le.h"
#include "godwit/log.h"
#include "godwit/postcopy.h"
#include "godwit/ram_place.h"
#include "godwit/snapshot.h"
#include "godwit/state.h"
#include "godwit/stream.h"
#include "godwit/throttle.h"
#include "godwit/vm.h"
#include "dirty_walk.h"

#define SNAP_ID_CPU "cpu"
#define SNAP_ID_VM  "vm"

__attribute__((format(printf, 3, 4)))
static void snap_err(char *err, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (!len)
		return;
	va_start(ap, fmt);
	vsnprintf(err, len, fmt, ap);
	va_end(ap);
}

/* ---- options ------------------------------------------------------------------------ */

/* The --disk/--net option behind a virtio device of vm (godwit run: slot = index + 1). */
static const struct vm_device_arg *snap_dev_arg(const struct vm *vm, const char *type,
						uint32_t instance)
{
	enum vm_dev_kind kind;

	if (!strcmp(type, "virtio-blk"))
		kind = VM_DEV_DISK;
	else if (!strcmp(type, "virtio-net"))
		kind = VM_DEV_NET;
	else
		return NULL;
	if (instance < 1 || instance > vm->cfg.nr_devices ||
	    vm->cfg.devices[instance - 1].kind != kind)
		return NULL;
	return &vm->cfg.devices[instance - 1];
}

int snapshot_config_from_vm(struct stream_config *c, const struct vm *vm)
{
	int ret = stream_config_from_vm(c, vm);

	if (ret)
		return ret;
	for (unsigned int i = 0; i < c->nr_devices; i++) {
		struct stream_device *d = &c->devices[i];
		const struct vm_device_arg *a = snap_dev_arg(vm, d->type, d->instance);

		if (!a)
			continue;
		_Static_assert(DEVSPEC_OPTS_MAX == STREAM_OPTIONS_MAX, "the stream carries the options");
		if (strlen(a->options) >= sizeof(d->options))
			return -ENOSPC;
		snprintf(d->options, sizeof(d->options), "%s", a->options);
	}
	return 0;
}

/* ---- writing ------------------------------------------------------------------------ */

int snapshot_check_migratable(struct vm *vm, char *err, size_t len)
{
	for (struct dev *d = dev_first(vm); d; d = d->next)
		if (!d->ops->save) {
			snap_err(err, len, "device %s.%u cannot be saved: %s", d->ops->name,
				 d->instance, d->ops->unmigratable ? d->ops->unmigratable : "no save");
			return -ENOTSUP;
		}
	return 0;
}

int snapshot_write_state(struct vm *vm, struct stream_writer *w, char *err, size_t len)
{
	struct state_out o;
	int ret;

	state_out_init(&o);
	ret = vm_state_save(vm, &o);
	if (ret) {
		snap_err(err, len, "cannot read the VM state: %s", strerror(-ret));
		goto out;
	}
	ret = stream_put_state(w, STREAM_VM, SNAP_ID_VM, VM_STATE_VERSION, 0, &o);
	if (ret)
		goto out_stream;
	for (unsigned int i = 0; i < vm->cfg.ncpus; i++) {
		state_out_free(&o);
		state_out_init(&o);
		ret = cpu_state_save(&vm->vcpus[i], &o);
		if (ret) {
			snap_err(err, len, "cannot read vCPU %u's state: %s", i, strerror(-ret));
			goto out;
		}
		ret = stream_put_state(w, STREAM_CPU, SNAP_ID_CPU, CPU_STATE_VERSION, i, &o);
		if (ret)
			goto out_stream;
	}
	for (struct dev *d = dev_first(vm); d; d = d->next) {
		state_out_free(&o);
		state_out_init(&o);
		ret = d->ops->save(d, &o);
		if (ret) {
			snap_err(err, len, "device %s.%u: save failed: %s", d->ops->name,
				 d->instance, strerror(-ret));
			goto out;
		}
		ret = stream_put_state(w, STREAM_DEVICE, d->ops->name, d->ops->version,
				       d->instance, &o);
		if (ret)
			goto out_stream;
	}
	ret = 0;
	goto out;

out_stream:
	snap_err(err, len, "%s", stream_writer_error(w)[0] ? stream_writer_error(w) :
		 strerror(-ret));
out:
	state_out_free(&o);
	return ret;
}

/*
 * A regular file goes through the writer's file sink (O_DIRECT where the
 * filesystem takes it); anything else (a pipe, the tests' descriptors) is
 * written as before.
 */
static int snap_to_file(struct stream_writer *w, int fd, struct snapshot_result *res,
			char *err, size_t len)
{
	struct stat st;
	int ret;

	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		return 0;
	ret = stream_writer_to_file(w, !getenv("GODWIT_SNAPSHOT_BUFFERED"));
	if (ret) {
		snap_err(err, len, "cannot set up the snapshot file's writer: %s", strerror(-ret));
		return ret;
	}
	if (res)
		res->direct = stream_writer_direct(w);
	return 0;
}

/* The stream's CONFIG from the VM, the VM checked migratable, and a writer on fd (snap_to_file). */
static int snap_writer_open(struct vm *vm, struct stream_config *cfg, int fd,
			    struct stream_writer **w, struct snapshot_result *res, char *err,
			    size_t len)
{
	int ret;

	ret = snapshot_config_from_vm(cfg, vm);
	if (ret) {
		snap_err(err, len, "the VM's configuration does not fit a stream: %s", strerror(-ret));
		return ret;
	}
	ret = snapshot_check_migratable(vm, err, len);
	if (ret)
		return ret;
	ret = stream_writer_new(fd, w);
	if (ret) {
		snap_err(err, len, "out of memory");
		return ret;
	}
	return snap_to_file(*w, fd, res, err, len);
}

int snapshot_write(struct vm *vm, int fd, struct snapshot_result *res, char *err, size_t len)
{
	struct stream_config *cfg = calloc(1, sizeof(*cfg));
	struct stream_writer *w = NULL;
	int ret;

	if (!cfg) {
		snap_err(err, len, "out of memory");
		return -ENOMEM;
	}
	ret = snap_writer_open(vm, cfg, fd, &w, res, err, len);
	if (ret)
		goto out;
	ret = stream_begin(w, cfg);
	if (ret)
		goto out_stream;

	ret = snapshot_write_state(vm, w, err, len);
	if (ret)
		goto out;
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		const struct mem_region *m = &vm->mem[i];

		ret = stream_put_ram(w, m->host, m->gpa, m->size / STREAM_PAGE_SIZE);
		if (ret)
			goto out_stream;
	}
	ret = stream_end(w);
	if (ret)
		goto out_stream;
	if (res) {
		res->bytes = stream_writer_offset(w);
		stream_writer_ram_stats(w, &res->ram);
	}
	goto out;

out_stream:
	snap_err(err, len, "%s", stream_writer_error(w)[0] ? stream_writer_error(w) :
		 strerror(-ret));
out:
	stream_writer_free(w);
	free(cfg);
	return ret;
}

int snapshot_take(struct vm *vm, const struct snapshot_vm_ops *ops, struct snapshot_file *f,
		  bool was_running, bool resume, struct snapshot_result *res, double *ms,
		  enum snapshot_stage *stage, char *err, size_t len)
{
	struct timespec t0;
	bool resumed = false;
	double pause_ms = 0;
	int ret;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	*stage = SNAPSHOT_PAUSING;
	if (was_running) {
		ret = ops->pause(vm);
		if (ret) {
			snapshot_file_abort(f);
			snprintf(err, len, "pause failed: %s", strerror(-ret));
			return ret;
		}
	}
	*stage = SNAPSHOT_WRITING;
	/* Nothing writes guest memory or the disks from here on. */
	ret = dev_quiesce_all(vm);
	if (ret)
		snprintf(err, len, "cannot quiesce the devices: %s", strerror(-ret));
	if (!ret)
		ret = snapshot_write(vm, f->fd, res, err, len);
	if (!ret && resume) {
		/* The stream is written: the guest need not wait for the sync. */
		resumed = true;
		if (dev_resume_all(vm))
			log_warnx("%s: a device did not resume", __func__);
		if (was_running && ops->resume(vm))
			log_warnx("%s: the VM did not resume", __func__);
		pause_ms = was_running ? ms_since(&t0) : 0;
	}
	if (!ret)
		ret = snapshot_file_commit(f, err, len);
	else
		snapshot_file_abort(f);
	*ms = ms_since(&t0);
	if ((ret || resume) && !resumed) {
		/* Devices first: the vCPUs find them serving when they run. */
		if (dev_resume_all(vm))
			log_warnx("%s: a device did not resume", __func__);
		if (was_running && ops->resume(vm))
			log_warnx("%s: the VM did not resume", __func__);
	}
	if (res) {
		res->passes = 1;
		res->pause_ms = resumed ? pause_ms : was_running ? ms_since(&t0) : 0;
		res->ms = *ms;
	}
	return ret;
}

/* ---- snapshot --live ------------------------------------------------------------------ */

/*
 * A live snapshot is pre-copy into the file (docs/migration.md): pass 1
 * writes every page while the guest runs with dirty logging on, each later
 * pass (after a "precopy" VM section with the pass number) the pages
 * dirtied during the one before, until what is left would take under
 * SNAP_LIVE_DONE_MS to write at the rate measured, or SNAP_LIVE_MAX_PASSES
 * passes, or the file holds SNAP_LIVE_GROWTH times the guest's memory.  A
 * pass that does not halve what is left turns the throttle on (throttle.h):
 * the vCPUs may then dirty a quarter of what the disk writes.  Then the
 * guest pauses for the last dirty pages (after "precopy" instance 0) and
 * the device, VM and vCPU state; it runs again (with resume) as soon as
 * they are copied into the writer's buffers, before they reach the disk.
 */
#define SNAP_LIVE_MAX_PASSES 8
#define SNAP_LIVE_DONE_MS    2.0
#define SNAP_LIVE_GROWTH     3
#define SNAP_MAX_MEM ARRAY_SIZE(((struct vm *)0)->mem)
#define SNAP_LIVE_CHUNK      4096    /* pages: clear their dirty bits, copy them */

struct snap_live {
	struct vm *vm;
	struct stream_writer *w;
	uint64_t *bm[SNAP_MAX_MEM];
	uint64_t *scratch[SNAP_MAX_MEM];
	char *err;
	size_t len;
};

/* The dirty log of every region into the bitmaps; the pages set, or -errno. */
static int64_t snap_live_collect(struct snap_live *l)
{
	int64_t total = 0;

	for (unsigned int i = 0; i < l->vm->nr_mem; i++) {
		int64_t n = vm_dirty_log_get(l->vm, i, l->bm[i], l->scratch[i]);

		if (n < 0) {
			snap_err(l->err, l->len, "cannot read the dirty log: %s", strerror((int)-n));
			return n;
		}
		total += n;
	}
	return total;
}

/* One chunk of region i into the stream. */
static int snap_live_put(void *opaque, unsigned int i, uint64_t first, uint64_t n,
			 const uint64_t *bits)
{
	struct snap_live *l = opaque;
	const struct mem_region *mr = &l->vm->mem[i];
	int ret;

	ret = stream_put_ram_dirty(l->w, mr->host + first * STREAM_PAGE_SIZE,
				   mr->gpa + first * STREAM_PAGE_SIZE, n, bits);
	if (ret)
		snap_err(l->err, l->len, "%s", stream_writer_error(l->w));
	return ret;
}

/* The pages set in the bitmaps into the stream (clear: re-arm their dirty bits first). */
static int snap_live_pass(struct snap_live *l, bool clear)
{
	struct vm *vm = l->vm;
	int ret;

	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		ret = dirty_walk(vm, i, l->bm[i], 0, vm->mem[i].size / STREAM_PAGE_SIZE,
				 SNAP_LIVE_CHUNK, clear, snap_live_put, NULL, l, l->err, l->len);
		if (ret)
			return ret;
	}
	return 0;
}

int snapshot_take_live(struct vm *vm, const struct snapshot_vm_ops *ops, struct snapshot_file *f,
		       bool resume, struct snapshot_result *res, enum snapshot_stage *stage,
		       char *err, size_t len)
{
	struct stream_config *cfg = calloc(1, sizeof(*cfg));
	struct snap_live l = { .vm = vm, .err = err, .len = len };
	struct throttle *thr = NULL;
	struct timespec t0, tp;
	uint64_t mem_bytes = 0;
	double last_remaining = -1;
	bool logging = false, paused = false;
	uint32_t pass;
	int64_t dirty;
	int ret;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	*stage = SNAPSHOT_WRITING;
	memset(res, 0, sizeof(*res));
	if (!cfg) {
		snap_err(err, len, "out of memory");
		ret = -ENOMEM;
		goto out;
	}
	ret = snap_writer_open(vm, cfg, f->fd, &l.w, res, err, len);
	if (ret)
		goto out;
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		size_t words = (vm->mem[i].size / STREAM_PAGE_SIZE + 63) / 64;

		l.bm[i] = calloc(words, sizeof(uint64_t));
		l.scratch[i] = calloc(words, sizeof(uint64_t));
		if (!l.bm[i] || !l.scratch[i]) {
			snap_err(err, len, "out of memory");
			ret = -ENOMEM;
			goto out;
		}
		mem_bytes += vm->mem[i].size;
	}
	ret = stream_begin(l.w, cfg);
	if (ret)
		goto out_stream;
	ret = vm_dirty_log_start(vm);
	if (ret) {
		snap_err(err, len, "cannot track dirty memory: %s", strerror(-ret));
		goto out;
	}
	logging = true;
	log_debug("snapshot --live: dirty logging on after %.1f ms", ms_since(&t0));
	/* Pass 1: every page; this get starts KVM's log (clear and protect). */
	for (unsigned int i = 0; i < vm->nr_mem; i++) {
		uint64_t npages = vm->mem[i].size / STREAM_PAGE_SIZE;

		for (uint64_t p = 0; p < npages; p++)
			l.bm[i][p / 64] |= 1ULL << (p % 64);
	}
	dirty = snap_live_collect(&l);
	if (dirty < 0) {
		ret = (int)dirty;
		goto out;
	}
	for (pass = 1; ; pass++) {
		struct timespec tw;
		uint64_t off0 = stream_writer_offset(l.w);
		double ms, rate, remaining, expect;

		clock_gettime(CLOCK_MONOTONIC, &tw);
		if (pass > 1) {
			ret = stream_put_section(l.w, STREAM_VM, 0, SNAPSHOT_ID_PRECOPY, 1, pass, NULL, 0);
			if (ret)
				goto out_stream;
		}
		ret = snap_live_pass(&l, true);
		if (!ret)
			ret = stream_flush(l.w);
		if (ret) {
			if (!err[0])
				snap_err(err, len, "%s", stream_writer_error(l.w));
			goto out;
		}
		ms = MAX(ms_since(&tw), 0.001);
		rate = (double)(stream_writer_offset(l.w) - off0) / ms * 1e3;
		dirty = snap_live_collect(&l);
		if (dirty < 0) {
			ret = (int)dirty;
			goto out;
		}
		remaining = (double)dirty * STREAM_PAGE_SIZE;
		expect = rate > 0 ? remaining / rate * 1e3 : 0;
		log_debug("snapshot --live: pass %u: %.1f MiB in %.1f ms, %lld pages dirty "
			  "(%.1f ms to write)", pass,
			  (double)(stream_writer_offset(l.w) - off0) / (double)MiB, ms,
			  (long long)dirty, expect);
		if (expect <= SNAP_LIVE_DONE_MS || pass >= SNAP_LIVE_MAX_PASSES ||
		    stream_writer_offset(l.w) >= SNAP_LIVE_GROWTH * mem_bytes)
			break;
		if (last_remaining >= 0 && remaining > last_remaining / 2) {
			/* Dirtied about as fast as written: slow the vCPUs down. */
			if (!thr && throttle_start(vm, &thr))
				thr = NULL;
			if (thr)
				throttle_set_budget(thr, rate / 4, remaining / ms * 1e3);
		}
		last_remaining = remaining;
	}
	/* The writer's queue drained now, so the pause waits for no earlier write. */
	ret = stream_writer_wait(l.w);
	if (ret)
		goto out_stream;
	throttle_stop(thr);
	thr = NULL;

	*stage = SNAPSHOT_PAUSING;
	ret = ops->pause(vm);
	if (ret) {
		snap_err(err, len, "pause failed: %s", strerror(-ret));
		goto out;
	}
	clock_gettime(CLOCK_MONOTONIC, &tp);
	paused = true;
	*stage = SNAPSHOT_WRITING;
	ret = dev_quiesce_all(vm);
	if (ret) {
		snap_err(err, len, "cannot quiesce the devices: %s", strerror(-ret));
		goto out;
	}
	dirty = snap_live_collect(&l);
	if (dirty < 0) {
		ret = (int)dirty;
		goto out;
	}
	ret = stream_put_section(l.w, STREAM_VM, 0, SNAPSHOT_ID_PRECOPY, 1, 0, NULL, 0);
	if (ret)
		goto out_stream;
	ret = snap_live_pass(&l, false);
	if (ret)
		goto out;
	/* The last pages are copied once the state sections follow them. */
	ret = snapshot_write_state(vm, l.w, err, len);
	if (ret)
		goto out;
	vm_dirty_log_stop(vm);
	logging = false;
	log_debug("snapshot --live: paused at %.1f ms, last pass and state written, dirty "
		  "logging off after %.1f ms more", ms_between(&t0, &tp), ms_since(&tp));
	res->pause_ms = ms_since(&tp);
	if (resume) {
		if (dev_resume_all(vm))
			log_warnx("%s: a device did not resume", __func__);
		if (ops->resume(vm))
			log_warnx("%s: the VM did not resume", __func__);
		paused = false;
		res->pause_ms = ms_since(&tp);
	}
	ret = stream_end(l.w);
	if (ret)
		goto out_stream;
	res->bytes = stream_writer_offset(l.w);
	stream_writer_ram_stats(l.w, &res->ram);
	res->passes = pass + 1;
	goto out;

out_stream:
	snap_err(err, len, "%s", stream_writer_error(l.w)[0] ? stream_writer_error(l.w) :
		 strerror(-ret));
out:
	throttle_stop(thr);
	if (logging)
		vm_dirty_log_stop(vm);
	stream_writer_free(l.w);        /* joins the file's writer thread */
	if (!ret) {
		ret = snapshot_file_commit(f, err, len);
	} else {
		snapshot_file_abort(f);
	}
	if (ret && paused) {
		if (dev_resume_all(vm))
			log_warnx("%s: a device did not resume", __func__);
		if (ops->resume(vm))
			log_warnx("%s: the VM did not resume", __func__);
		res->pause_ms = ms_since(&tp);
	}
	for (unsigned int i = 0; i < SNAP_MAX_MEM; i++) {
		free(l.bm[i]);
		free(l.scratch[i]);
	}
	free(cfg);
	res->ms = ms_since(&t0);
	return ret;
}

/* ---- the snapshot file ---------------------------------------------------------------- */

/*
 * The file name path means inside the snapshot directory dir: a name
 * directly in it (no "/", not "." or ".."), given alone or as dir + "/" +
 * name.  Returns the name (inside path) or NULL with err set.
 */
static const char *snap_name_in_dir(const char *dir, const char *path, char *err, size_t len)
{
	size_t n = strlen(dir);
	const char *name = path;

	if (path[0] == '/') {
		if (n == 1)
			n = 0;          /* dir "/": "/NAME" */
		if (!strncmp(path, dir, n) && (!path[n] || (path[n] == '/' && !path[n + 1]))) {
			snap_err(err, len, "%s is a directory", path);
			return NULL;
		}
		if (strncmp(path, dir, n) || path[n] != '/') {
			snap_err(err, len, "%s is not in the snapshot directory %s (--snapshot-dir)",
				 path, dir);
			return NULL;
		}
		name = path + n + 1;
	}
	if (!*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..")) {
		snap_err(err, len, "%s: a snapshot is a file directly in the snapshot directory %s "
			 "(--snapshot-dir)", path, dir);
		return NULL;
	}
	if (strlen(name) > 200) {
		snap_err(err, len, "%s: the file name is too long", path);
		return NULL;
	}
	return name;
}

int snapshot_file_create(int dirfd, const char *dir, const char *path, struct snapshot_file *f,
			 char *err, size_t len)
{
	const char *name;
	struct stat st;
	int ret;

	f->fd = -1;
	f->dirfd = dirfd;
	f->path = f->tmp = NULL;
	f->name = NULL;
	if (!dir) {
		snap_err(err, len, "snapshots are off: this VM was started without --snapshot-dir");
		return -EPERM;
	}
	if (!*path) {
		snap_err(err, len, "empty path");
		return -EINVAL;
	}
	name = snap_name_in_dir(dir, path, err, len);
	if (!name)
		return -EINVAL;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
		snap_err(err, len, "%s is a directory", path);
		return -EISDIR;
	}
	if (asprintf(&f->path, "%s%s%s", dir, strcmp(dir, "/") ? "/" : "", name) < 0) {
		f->path = NULL;
		snap_err(err, len, "out of memory");
		return -ENOMEM;
	}
	f->name = f->path + strlen(f->path) - strlen(name);
	if (asprintf(&f->tmp, "%s.tmp-%ld", name, (long)getpid()) < 0) {
		f->tmp = NULL;
		ret = -ENOMEM;
		snap_err(err, len, "out of memory");
		goto err;
	}
	/*
	 * Relative to the directory's descriptor (opened before the sandbox), not
	 * followed if a link, 0600 from creation.
	 */
	f->fd = openat(dirfd, f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (f->fd < 0) {
		ret = -errno;
		snap_err(err, len, "cannot create %s/%s: %s", dir, f->tmp, strerror(errno));
		goto err;
	}
	return 0;
err:
	free(f->path);
	free(f->tmp);
	f->path = f->tmp = NULL;
	f->name = NULL;
	return ret;
}

int snapshot_file_commit(struct snapshot_file *f, char *err, size_t len)
{
	int ret = 0;

	if (fdatasync(f->fd) < 0) {
		ret = -errno;
		snap_err(err, len, "cannot sync %s: %s", f->tmp, strerror(errno));
	}
	if (close(f->fd) < 0 && !ret) {
		ret = -errno;
		snap_err(err, len, "cannot write %s: %s", f->tmp, strerror(errno));
	}
	f->fd = -1;
	if (!ret && renameat(f->dirfd, f->tmp, f->dirfd, f->name) < 0) {
		ret = -errno;
		snap_err(err, len, "cannot rename %s to %s: %s", f->tmp, f->path, strerror(errno));
	}
	if (ret) {
		snapshot_file_abort(f);
		return ret;
	}
	/* The rename is durable once the directory is: a crash now keeps the new file. */
	if (fsync(f->dirfd) < 0) {
		ret = -errno;
		snap_err(err, len, "cannot sync the snapshot directory of %s: %s", f->path,
			 strerror(errno));
	}
	free(f->tmp);
	free(f->path);
	f->tmp = f->path = NULL;
	f->name = NULL;
	return ret;
}

void snapshot_file_abort(struct snapshot_file *f)
{
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	if (f->tmp)
		unlinkat(f->dirfd, f->tmp, 0);
	free(f->tmp);
	free(f->path);
	f->tmp = f->path = NULL;
	f->name = NULL;
}

/* ---- restoring ------------------------------------------------------------------------ */

struct snap_sec {
	uint8_t type;
	char id[STREAM_ID_MAX + 1];
	uint16_t version;
	uint32_t instance;
	uint64_t offset;
	uint8_t *buf;
	size_t len;
};

struct snapshot_restore {
	struct stream_reader *r;
	const struct stream_config *cfg;
	char *specs[VM_MAX_DEVICE_ARGS];
	unsigned int nr_specs;
	struct snap_sec *secs;
	unsigned int nr_secs, cap_secs;
	enum cpu_clock_mode clock;
	struct stream_ram_stats ram;
	uint64_t precopy_rounds;
	uint64_t bytes;                 /* stream bytes read, once the reader is gone */
	struct disk_recv *disks;        /* storage migration: where DISK sections go */
	unsigned int nr_disks;
	bool pc_allowed;                /* a migration destination that can do post-copy */
	uint8_t *pc;                    /* the "postcopy" section's payload, or NULL */
	size_t pc_len;
	/* Reconnecting (SNAPSHOT_ID_RECONNECT): */
	struct stream_reader *first;    /* the first stream's reader (sr->cfg is its), once resumed */
	uint64_t bytes_before;          /* bytes of the streams before sr->r */
	uint32_t reconnect_s;           /* the source's window; 0: it does not reconnect */
	uint8_t token[SNAPSHOT_TOKEN_LEN];
	uint32_t last_round;            /* the last "precopy" marker's instance */
	bool paused_phase;              /* the last pass (marker 0) began: no resuming */
	snapshot_resume_fn resume;
	void *resume_opaque;
	bool acks;                      /* the source asked for APPLIED (SNAPSHOT_ID_ACKS) */
	double slow_us_per_mib;         /* GODWIT_TEST_SLOW_APPLY_US_PER_MIB: snap_test_slow() */
	snapshot_applied_fn applied;
	void *applied_opaque;
	/* Several channels (SNAPSHOT_ID_CHANNEL): */
	const struct snapshot_channel_ops *chan_ops;
	void *chan_opaque;
	struct snapshot_channel chan;   /* count 0: no section (one channel) */
	/* The first pass placed with userfaultfd (ram_place.h): */
	int uffd;                       /* ours, opened before the sandbox; -errno if none */
	pid_t uffd_pid;                 /* the process it belongs to (--jail forks after) */
	struct ram_place *place;        /* while it runs */
	struct ram_place_stats placed;
};

static void snap_place_stop(struct snapshot_restore *sr);

/*
 * For the tests only (tests/kvm/t-migrate-compress.sh): a destination
 * slower than the link.  With GODWIT_TEST_SLOW_APPLY_US_PER_MIB=U in the
 * environment, the main stream's pre-copy passes (not the paused one) take
 * U us more per MiB of page data.
 */
static void snap_test_slow(struct snapshot_restore *sr, uint64_t pages)
{
	double us = sr->slow_us_per_mib * (double)pages * STREAM_PAGE_SIZE / (1024.0 * 1024.0);
	struct timespec t;

	if (us < 1 || sr->paused_phase)
		return;
	us = MIN(us, 1e6);
	t.tv_sec = (time_t)(us / 1e6);
	t.tv_nsec = (long)((us - (double)t.tv_sec * 1e6) * 1e3);
	nanosleep(&t, NULL);
}

static struct kvm_cpuid2 *snap_supported_cpuid(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return NULL;
	for (unsigned int n = 64; n <= 4096; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));

		if (!c)
			break;
		c->nent = n;
		if (ioctl(fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			close(fd);
			return c;
		}
		free(c);
		if (errno != E2BIG)
			break;
	}
	close(fd);
	return NULL;
}

int snapshot_restore_open(int fd, const struct stream_watchdog *wd,
			  struct snapshot_restore **out, char *err, size_t len)
{
	struct conn c = conn_plain(fd);

	return snapshot_restore_open_conn(&c, wd, out, err, len);
}

int snapshot_restore_open_conn(const struct conn *c, const struct stream_watchdog *wd,
			       struct snapshot_restore **out, char *err, size_t len)
{
	struct snapshot_restore *sr = calloc(1, sizeof(*sr));
	struct kvm_cpuid2 *sup;
	char why[256] = "";
	int ret;

	if (!sr) {
		snap_err(err, len, "out of memory");
		return -ENOMEM;
	}
	/*
	 * The first pass goes into fresh memory: a userfaultfd, opened here
	 * (before the sandbox and any dropping of privileges), places it.
	 */
	sr->uffd = ram_place_wanted() ? pc_uffd_open() : -ECANCELED;
	sr->uffd_pid = getpid();
	ret = stream_reader_new(c->fd, &sr->r);
	if (!ret) {
		stream_reader_target_zeroed(sr->r);  /* guest RAM is freshly mapped */
		stream_reader_set_watchdog(sr->r, wd);
		stream_reader_set_tls(sr->r, c->tls);
	}
	if (ret) {
		snap_err(err, len, "out of memory");
		goto err;
	}
	ret = stream_read_header(sr->r, &sr->cfg);
	if (ret) {
		snap_err(err, len, "%s", stream_reader_error(sr->r));
		if (ret != -ENOMEM)
			ret = -EBADMSG;
		goto err;
	}
	sup = snap_supported_cpuid();
	if (!sup) {
		ret = -ENODEV;
		snap_err(err, len, "cannot ask /dev/kvm which CPU features it offers: %s",
			 strerror(errno));
		goto err;
	}
	ret = stream_cpuid_check(sr->cfg, sup, why, sizeof(why));
	free(sup);
	if (ret) {
		snap_err(err, len, "this host cannot run the snapshot's CPU: %s", why);
		goto err;
	}
	*out = sr;
	return 0;
err:
	snapshot_restore_free(sr);
	return ret;
}

const struct stream_config *snapshot_restore_stream_config(const struct snapshot_restore *sr)
{
	return sr->cfg;
}

void snapshot_restore_set_clock(struct snapshot_restore *sr, enum cpu_clock_mode mode)
{
	sr->clock = mode;
}

void snapshot_restore_set_disks(struct snapshot_restore *sr, struct disk_recv *d, unsigned int n)
{
	sr->disks = d;
	sr->nr_disks = n;
}

/* A DISK section: checked against its disk's size, then written to its copy. */
static int snap_disk(struct snapshot_restore *sr, const struct stream_section *s)
{
	struct disk_recv *d = NULL;
	const uint8_t *p, *data;
	uint64_t off, len;
	char why[256];
	int ret;

	for (unsigned int i = 0; i < sr->nr_disks; i++)
		if (sr->disks[i].instance == s->instance)
			d = &sr->disks[i];
	if (!d)
		return stream_refuse(sr->r, -EINVAL, "disk data for device %u, whose image "
				     "this side does not receive", s->instance);
	if (s->version != 1)
		return stream_refuse(sr->r, -EPROTONOSUPPORT, "version %u is not one this godwit "
				     "reads (1)", s->version);
	ret = stream_read_payload(sr->r, &p);
	if (ret)
		return ret;
	if (stream_disk_parse(p, s->len, d->size, &off, &len, &data, why, sizeof(why)))
		return stream_refuse(sr->r, -EBADMSG, "%s", why);
	if (disk_recv_extent(d, off, len, data, why, sizeof(why)))
		return stream_refuse(sr->r, -EIO, "%s", why);
	return 0;
}

void snapshot_restore_stats(const struct snapshot_restore *sr, struct stream_ram_stats *ram,
			    uint64_t *bytes)
{
	if (ram)
		*ram = sr->ram;
	if (bytes)
		*bytes = sr->r ? stream_reader_offset(sr->r) : sr->bytes;
}

/* Split a comma-separated list into a sorted, NUL-separated canonical form. */
static int snap_cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void snap_canon(const char *opts, char *out, size_t len)
{
	char copy[512], *toks[64], *save = NULL, *t;
	unsigned int n = 0;
	size_t used = 0;

	snprintf(copy, sizeof(copy), "%s", opts);
	for (t = strtok_r(copy, ",", &save); t && n < ARRAY_SIZE(toks); t = strtok_r(NULL, ",", &save))
		toks[n++] = t;
	qsort(toks, n, sizeof(toks[0]), snap_cmp_str);
	out[0] = '\0';
	for (unsigned int i = 0; i < n; i++)
		used += (size_t)snprintf(out + used, used < len ? len - used : 0, "%s%s",
					 i ? "," : "", toks[i]);
}


int snapshot_restore_config(struct snapshot_restore *sr, const struct vm_device_arg *user,
			    unsigned int nr_user, struct vm_config *cfg, char *err, size_t len)
{
	const struct stream_config *sc = sr->cfg;
	const struct stream_device *pci[STREAM_MAX_DEVICES];
	unsigned int nr_pci = 0, used_disk = 0, used_net = 0, nr_disk_user = 0, nr_net_user = 0;
	uint64_t mem = 0;

	memset(cfg, 0, sizeof(*cfg));
	cfg->ncpus = sc->ncpus;
	for (unsigned int i = 0; i < sc->nr_regions; i++)
		mem += sc->regions[i].size;
	cfg->mem_size = mem;
	snprintf(cfg->name, sizeof(cfg->name), "%s", sc->name);
	memcpy(cfg->uuid, sc->uuid, sizeof(cfg->uuid));
	if (cpu_model_parse(sc->cpu_model, &cfg->cpu_model)) {
		snap_err(err, len, "the snapshot's CPU model '%s' is unknown to this godwit",
			 sc->cpu_model);
		return -EINVAL;
	}
	/* The disks and NICs in slot order (insertion sort: at most 64). */
	for (unsigned int i = 0; i < sc->nr_devices; i++) {
		const struct stream_device *d = &sc->devices[i];
		unsigned int k;

		if (!strcmp(d->type, "virtio-rng")) {
			cfg->rng = true;
			continue;
		}
		if (strcmp(d->type, "virtio-blk") && strcmp(d->type, "virtio-net"))
			continue;
		for (k = nr_pci; k > 0 && pci[k - 1]->instance > d->instance; k--)
			pci[k] = pci[k - 1];
		pci[k] = d;
		nr_pci++;
	}
	for (unsigned int i = 0; i < nr_user; i++)
		*(user[i].kind == VM_DEV_DISK ? &nr_disk_user : &nr_net_user) += 1;
	if (nr_pci > VM_MAX_DEVICE_ARGS) {
		snap_err(err, len, "the snapshot has %u disks and NICs, more than %d", nr_pci,
			 VM_MAX_DEVICE_ARGS);
		return -EINVAL;
	}
	for (unsigned int i = 0; i < nr_pci; i++) {
		const struct stream_device *d = pci[i];
		enum vm_dev_kind kind = strcmp(d->type, "virtio-blk") ? VM_DEV_NET : VM_DEV_DISK;
		const char *opt = kind == VM_DEV_DISK ? "--disk" : "--net";
		unsigned int want = kind == VM_DEV_DISK ? used_disk++ : used_net++;
		const struct vm_device_arg *a = NULL;
		struct vm_device_arg *to = &cfg->devices[cfg->nr_devices];
		char ca[512], cb[512], why[256], *spec;

		for (unsigned int k = 0, n = 0; k < nr_user; k++)
			if (user[k].kind == kind && n++ == want) {
				a = &user[k];
				break;
			}
		if (!a) {
			snap_err(err, len, "the snapshot has %s %u (%s in PCI slot %u%s%s): give %s for it "
				 "(the %u%s %s option)", kind == VM_DEV_DISK ? "disk" : "NIC", want + 1,
				 d->type, d->instance, d->options[0] ? ", options " : "", d->options,
				 kind == VM_DEV_DISK ? "--disk FILE" : "--net tap=NAME", want + 1,
				 want == 0 ? "st" : want == 1 ? "nd" : want == 2 ? "rd" : "th", opt);
			return -EINVAL;
		}
		snap_canon(a->options, ca, sizeof(ca));
		snap_canon(d->options, cb, sizeof(cb));
		if (a->options[0] && strcmp(ca, cb)) {
			snap_err(err, len, "%s %s: guest-visible options '%s' differ from the snapshot's "
				 "'%s' (%s in PCI slot %u); give only the %s", opt, a->spec, a->options,
				 d->options, d->type, d->instance,
				 kind == VM_DEV_DISK ? "image path" : "tap=NAME");
			return -EINVAL;
		}
		/* This host's part (the image, the TAP) with the snapshot's guest-visible options. */
		if (asprintf(&spec, "%s%s%s%s", kind == VM_DEV_DISK ? "" : "tap=",
			     kind == VM_DEV_DISK ? a->disk.path : a->net.tap,
			     d->options[0] ? "," : "", d->options) < 0) {
			snap_err(err, len, "out of memory");
			return -ENOMEM;
		}
		sr->specs[sr->nr_specs++] = spec;
		if (vm_device_arg_parse(to, kind, spec, why, sizeof(why))) {
			snap_err(err, len, "%s %s with the snapshot's options '%s' (%s in PCI slot "
				 "%u): %s", opt, a->spec, d->options, d->type, d->instance, why);
			return -EINVAL;
		}
		cfg->nr_devices++;
	}
	if (used_disk < nr_disk_user || used_net < nr_net_user) {
		bool disk = used_disk < nr_disk_user;

		snap_err(err, len, "%s given %u time%s, but the snapshot has %u %s%s",
			 disk ? "--disk" : "--net", disk ? nr_disk_user : nr_net_user,
			 (disk ? nr_disk_user : nr_net_user) == 1 ? "" : "s",
			 disk ? used_disk : used_net, disk ? "disk" : "NIC",
			 (disk ? used_disk : used_net) == 1 ? "" : "s");
		return -EINVAL;
	}
	return 0;
}

static void *snap_lookup(void *opaque, uint64_t gpa, uint64_t len)
{
	return vm_gpa_to_host(opaque, gpa, len);
}

static struct snap_sec *snap_find(struct snapshot_restore *sr, uint8_t type, const char *id,
				  uint32_t instance)
{
	for (unsigned int i = 0; i < sr->nr_secs; i++) {
		struct snap_sec *s = &sr->secs[i];

		if (s->type == type && s->instance == instance && !strcmp(s->id, id))
			return s;
	}
	return NULL;
}

/* Keep the current (non-RAM) section's payload for after EOF. */
static int snap_keep(struct snapshot_restore *sr, const struct stream_section *s)
{
	const uint8_t *p;
	struct snap_sec *k;
	int ret;

	if (snap_find(sr, s->type, s->id, s->instance))
		return stream_refuse(sr->r, -EINVAL, "section given twice");
	ret = stream_read_payload(sr->r, &p);
	if (ret)
		return ret;
	if (sr->nr_secs == sr->cap_secs) {
		unsigned int cap = sr->cap_secs ? sr->cap_secs * 2 : 16;
		struct snap_sec *n = realloc(sr->secs, cap * sizeof(*n));

		if (!n)
			return stream_refuse(sr->r, -ENOMEM, "out of memory");
		sr->secs = n;
		sr->cap_secs = cap;
	}
	k = &sr->secs[sr->nr_secs];
	memset(k, 0, sizeof(*k));
	k->buf = malloc(s->len ? s->len : 1);
	if (!k->buf)
		return stream_refuse(sr->r, -ENOMEM, "out of memory");
	memcpy(k->buf, p, s->len);
	k->len = s->len;
	k->type = s->type;
	snprintf(k->id, sizeof(k->id), "%s", s->id);
	k->version = s->version;
	k->instance = s->instance;
	k->offset = s->offset;
	sr->nr_secs++;
	return 0;
}

static const char *snap_sec_name(const struct snap_sec *s, char *buf, size_t len)
{
	snprintf(buf, len, "section '%s' (%s, instance %u, offset %#llx)", s->id,
		 stream_type_name(s->type), s->instance, (unsigned long long)s->offset);
	return buf;
}

/* VM section "reconnect": the source's window and token (once, before any memory). */
static int snap_reconnect(struct snapshot_restore *sr, const struct stream_section *s)
{
	const uint8_t *p;
	uint32_t secs;
	int ret;

	if (s->len != 4 + SNAPSHOT_TOKEN_LEN)
		return stream_refuse(sr->r, -EINVAL, "a reconnect section of %llu bytes, not %u",
				     (unsigned long long)s->len, 4 + SNAPSHOT_TOKEN_LEN);
	if (sr->reconnect_s || sr->precopy_rounds || sr->ram.pages)
		return stream_refuse(sr->r, -EINVAL, "a reconnect section after the memory began");
	ret = stream_read_payload(sr->r, &p);
	if (ret)
		return ret;
	secs = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
	if (!secs || secs > SNAPSHOT_RECONNECT_MAX_S)
		return stream_refuse(sr->r, -EINVAL, "a reconnect window of %u s (1-%u)", secs,
				     SNAPSHOT_RECONNECT_MAX_S);
	sr->reconnect_s = secs;
	memcpy(sr->token, p + 4, SNAPSHOT_TOKEN_LEN);
	return 0;
}

void snapshot_restore_set_resume(struct snapshot_restore *sr, snapshot_resume_fn fn, void *opaque)
{
	sr->resume = fn;
	sr->resume_opaque = opaque;
}

void snapshot_restore_set_applied(struct snapshot_restore *sr, snapshot_applied_fn fn,
				  void *opaque)
{
	const char *e = getenv("GODWIT_TEST_SLOW_APPLY_US_PER_MIB");

	sr->applied = fn;
	sr->applied_opaque = opaque;
	if (e) {
		sr->slow_us_per_mib = MIN(MAX(strtod(e, NULL), 0.0), 1e6);
		log_warnx("incoming migration: GODWIT_TEST_SLOW_APPLY_US_PER_MIB=%.0f: pre-copy is "
			  "slowed down on purpose (tests only)", sr->slow_us_per_mib);
	}
}

uint32_t snapshot_restore_reconnect_s(const struct snapshot_restore *sr)
{
	return sr->reconnect_s;
}

uint32_t snapshot_restore_last_round(const struct snapshot_restore *sr)
{
	return sr->last_round;
}

int snapshot_restore_resume(struct snapshot_restore *sr, const struct conn *c,
			    const struct stream_watchdog *wd, char *err, size_t len)
{
	const struct stream_config *cfg;
	struct stream_reader *r;
	struct stream_section s;
	const uint8_t *p;
	int ret;

	if (!sr->reconnect_s || sr->paused_phase) {
		snap_err(err, len, "this migration cannot be resumed");
		return -EPERM;
	}
	/* A resumed stream reads into memory as it stands (its reader checks zero runs). */
	snap_place_stop(sr);
	ret = stream_reader_new(c->fd, &r);
	if (ret) {
		snap_err(err, len, "out of memory");
		return ret;
	}
	stream_reader_set_watchdog(r, wd);
	stream_reader_set_tls(r, c->tls);
	ret = stream_read_header(r, &cfg);
	if (ret) {
		snap_err(err, len, "%s", stream_reader_error(r));
		ret = -EBADMSG;
		goto fail;
	}
	/* Both parsed by this reader into zeroed memory: equal configurations compare equal. */
	if (memcmp(cfg, sr->cfg, sizeof(*cfg))) {
		snap_err(err, len, "the resumed stream describes another VM");
		ret = -EPERM;
		goto fail;
	}
	ret = stream_next_section(r, &s);
	if (ret <= 0 || s.type != STREAM_VM || strcmp(s.id, SNAPSHOT_ID_RESUME) ||
	    s.len != SNAPSHOT_TOKEN_LEN) {
		snap_err(err, len, "the new stream does not begin with a resume section%s%s",
			 ret < 0 ? ": " : "", ret < 0 ? stream_reader_error(r) : "");
		ret = -EBADMSG;
		goto fail;
	}
	ret = stream_read_payload(r, &p);
	if (ret) {
		snap_err(err, len, "%s", stream_reader_error(r));
		ret = -EBADMSG;
		goto fail;
	}
	if (memcmp(p, sr->token, SNAPSHOT_TOKEN_LEN)) {
		snap_err(err, len, "the resume token is not this migration's");
		ret = -EPERM;
		goto fail;
	}
	/* sr->cfg lives in the first reader: keep it; drop any later one. */
	sr->bytes_before += stream_reader_offset(sr->r);
	if (!sr->first)
		sr->first = sr->r;
	else
		stream_reader_free(sr->r);
	sr->r = r;
	return 0;
fail:
	stream_reader_free(r);
	return ret;
}

void snapshot_channel_encode(const struct snapshot_channel *c, uint8_t *out)
{
	le32_put(out, c->index);
	le32_put(out + 4, c->count);
	memcpy(out + 8, c->token, SNAPSHOT_TOKEN_LEN);
}

int snapshot_channel_parse(const uint8_t *p, size_t n, struct snapshot_channel *out, char *err,
			   size_t len)
{
	if (n != SNAPSHOT_CHANNEL_LEN) {
		snap_err(err, len, "a channel section of %zu bytes, not %u", n, SNAPSHOT_CHANNEL_LEN);
		return -EINVAL;
	}
	out->index = le32_get(p);
	out->count = le32_get(p + 4);
	memcpy(out->token, p + 8, SNAPSHOT_TOKEN_LEN);
	if (out->count < 2 || out->count > SNAPSHOT_MAX_CHANNELS) {
		snap_err(err, len, "a migration over %u channels (2-%u)", out->count,
			 SNAPSHOT_MAX_CHANNELS);
		return -EINVAL;
	}
	if (out->index >= out->count) {
		snap_err(err, len, "channel %u of %u", out->index, out->count);
		return -EINVAL;
	}
	return 0;
}

void snapshot_restore_set_channels(struct snapshot_restore *sr,
				   const struct snapshot_channel_ops *ops, void *opaque)
{
	sr->chan_ops = ops;
	sr->chan_opaque = opaque;
}

uint32_t snapshot_restore_channels(const struct snapshot_restore *sr)
{
	return sr->chan.count ? sr->chan.count : 1;
}

/* The main stream's VM section "channel": once, first, index 0; then the others are taken. */
static int snap_channel(struct snapshot_restore *sr, const struct stream_section *s)
{
	char why[256];
	const uint8_t *p;
	int ret;

	if (!sr->chan_ops)
		return stream_refuse(sr->r, -EPROTONOSUPPORT, "a stream over several channels, "
				     "which only a migration destination takes");
	if (sr->chan.count)
		return stream_refuse(sr->r, -EINVAL, "section given twice");
	if (sr->precopy_rounds || sr->ram.pages || sr->reconnect_s || sr->nr_secs)
		return stream_refuse(sr->r, -EINVAL, "a channel section after the stream began");
	ret = stream_read_payload(sr->r, &p);
	if (ret)
		return ret;
	ret = snapshot_channel_parse(p, s->len, &sr->chan, why, sizeof(why));
	if (!ret && sr->chan.index)
		ret = stream_refuse(sr->r, -EINVAL, "the first stream is channel %u, not 0",
				    sr->chan.index);
	else if (ret)
		ret = stream_refuse(sr->r, ret, "%s", why);
	/*
	 * The placer (if any) serves every channel's reader: it stays until
	 * all of them are done (snap_load()), not only this stream's first pass.
	 */
	if (!ret && (ret = sr->chan_ops->start(sr->chan_opaque, &sr->chan, why, sizeof(why))))
		ret = stream_refuse(sr->r, ret, "%s", why);
	if (ret)
		memset(&sr->chan, 0, sizeof(sr->chan));
	return ret;
}

int snapshot_restore_open_channel(const struct snapshot_restore *main, const struct conn *c,
				  const struct stream_watchdog *wd,
				  struct snapshot_restore **out, uint32_t *index, char *err,
				  size_t len)
{
	struct snapshot_restore *sr = calloc(1, sizeof(*sr));
	struct snapshot_channel ch;
	struct stream_section s;
	const uint8_t *p;
	char why[256];
	int ret;

	if (!sr) {
		snap_err(err, len, "out of memory");
		return -ENOMEM;
	}
	/* No userfaultfd of its own (it places through the main stream's): not fd 0 from calloc. */
	sr->uffd = -EBADF;
	ret = stream_reader_new(c->fd, &sr->r);
	if (ret) {
		snap_err(err, len, "out of memory");
		goto fail;
	}
	stream_reader_target_zeroed(sr->r);
	stream_reader_set_watchdog(sr->r, wd);
	stream_reader_set_tls(sr->r, c->tls);
	ret = stream_read_header(sr->r, &sr->cfg);
	if (ret) {
		snap_err(err, len, "%s", stream_reader_error(sr->r));
		ret = ret == -ENOMEM ? ret : -EBADMSG;
		goto fail;
	}
	ret = stream_next_section(sr->r, &s);
	if (ret <= 0 || s.type != STREAM_VM || strcmp(s.id, SNAPSHOT_ID_CHANNEL)) {
		snap_err(err, len, "the stream does not begin with a channel section%s%s",
			 ret < 0 ? ": " : "", ret < 0 ? stream_reader_error(sr->r) : "");
		ret = -EBADMSG;
		goto fail;
	}
	ret = stream_read_payload(sr->r, &p);
	if (!ret)
		ret = snapshot_channel_parse(p, s.len, &ch, why, sizeof(why));
	else
		snprintf(why, sizeof(why), "%s", stream_reader_error(sr->r));
	if (ret) {
		snap_err(err, len, "%s", why);
		ret = -EBADMSG;
		goto fail;
	}
	if (!main->chan.count || memcmp(ch.token, main->chan.token, SNAPSHOT_TOKEN_LEN)) {
		snap_err(err, len, "the channel's token is not this migration's");
		ret = -EPERM;
		goto fail;
	}
	if (ch.count != main->chan.count || !ch.index) {
		snap_err(err, len, "channel %u of %u, in a migration over %u channels", ch.index,
			 ch.count, main->chan.count);
		ret = -EPERM;
		goto fail;
	}
	/* Both parsed by this code into zeroed memory: equal configurations compare equal. */
	if (memcmp(sr->cfg, main->cfg, sizeof(*sr->cfg))) {
		snap_err(err, len, "the channel's stream describes another VM");
		ret = -EPERM;
		goto fail;
	}
	sr->chan = ch;
	/* The first pass lands on fresh memory: placed as the main stream's (ram_place.h). */
	if (main->place)
		stream_reader_set_placer(sr->r, ram_place_put, main->place);
	*index = ch.index;
	*out = sr;
	return 0;
fail:
	snapshot_restore_free(sr);
	return ret;
}

int snapshot_restore_load_channel(struct snapshot_restore *sr, struct vm *vm, char *err,
				  size_t len)
{
	struct stream_section s;
	int ret;

	while ((ret = stream_next_section(sr->r, &s)) > 0) {
		if (s.type == STREAM_RAM) {
			ret = stream_read_ram(sr->r, snap_lookup, vm, &sr->ram);
		} else if (s.type == STREAM_VM && !strcmp(s.id, SNAPSHOT_ID_PRECOPY)) {
			/* Pages may come again from here on, zero ones included. */
			stream_reader_set_target_zeroed(sr->r, false);
			sr->precopy_rounds++;
			ret = stream_skip(sr->r);
		} else if (s.flags & STREAM_F_OPTIONAL) {
			ret = stream_skip(sr->r);
		} else {
			ret = stream_refuse(sr->r, -EPROTONOSUPPORT, "a memory channel carries a "
					    "%s section '%s': only memory may travel there",
					    stream_type_name(s.type), s.id);
		}
		if (ret < 0)
			break;
	}
	if (ret < 0)
		snap_err(err, len, "%s", stream_reader_error(sr->r)[0] ? stream_reader_error(sr->r) :
			 strerror(-ret));
	sr->bytes = stream_reader_offset(sr->r);
	return ret < 0 ? ret : 0;
}

/*
 * The first pass: every page lands on memory nothing touched.  Placing it
 * with UFFDIO_COPY spares the kernel clearing it first (ram_place.h).
 * Without a userfaultfd, pages are copied as before; said once.
 */
static int snap_load_sections(struct snapshot_restore *sr, struct vm *vm, char *err,
			      size_t len);

static void snap_place_start(struct snapshot_restore *sr, struct vm *vm)
{
	struct ram_place_region rg[sizeof(vm->mem) / sizeof(vm->mem[0])];
	char why[256] = "";
	int ret = sr->uffd;

	if (sr->uffd == -ECANCELED)
		return;                 /* GODWIT_UFFD_PLACE=off */
	if (ret >= 0 && sr->uffd_pid != getpid()) {
		ret = -ECHILD;
		snprintf(why, sizeof(why), "its userfaultfd belongs to the parent process "
			 "(--jail)");
	} else if (ret >= 0) {
		for (unsigned int i = 0; i < vm->nr_mem; i++)
			rg[i] = (struct ram_place_region){ vm->mem[i].host, vm->mem[i].size };
		ret = ram_place_start(sr->uffd, rg, vm->nr_mem, &sr->place, why, sizeof(why));
	} else {
		snprintf(why, sizeof(why), "no userfaultfd: %s", strerror(-ret));
	}
	if (ret) {
		log_info("restore: pages are copied into guest RAM (the kernel clears each "
			 "first): %s", why);
		return;
	}
	stream_reader_set_placer(sr->r, ram_place_put, sr->place);
}

/* The first pass is over (or the stream): guest RAM is plain memory again. */
static void snap_place_stop(struct snapshot_restore *sr)
{
	struct ram_place_stats st;

	if (!sr->place)
		return;
	if (sr->r)
		stream_reader_set_placer(sr->r, NULL, NULL);
	ram_place_stop(sr->place, &st);
	sr->place = NULL;
	sr->placed.copied += st.copied;
	sr->placed.existing += st.existing;
	sr->placed.faults += st.faults;
	sr->placed.ioctls += st.ioctls;
	log_info("restore: first pass placed: %llu pages by UFFDIO_COPY (%llu calls), %llu "
		  "copied over, %llu faults answered with zeros",
		  (unsigned long long)st.copied, (unsigned long long)st.ioctls,
		  (unsigned long long)st.existing, (unsigned long long)st.faults);
}

static int snap_load(struct snapshot_restore *sr, struct vm *vm, char *err, size_t len)
{
	int ret = snap_load_sections(sr, vm, err, len);

	/* The channels still read the main stream's CONFIG and use its placer: stop them first. */
	if (ret && sr->chan.count)
		sr->chan_ops->abort(sr->chan_opaque);
	snap_place_stop(sr);
	return ret;
}

static int snap_load_sections(struct snapshot_restore *sr, struct vm *vm, char *err, size_t len)
{
	struct cpu_load_opts opts = { .clock = sr->clock };
	struct stream_config *local = calloc(1, sizeof(*local));
	struct stream_section s;
	struct snap_sec *k;
	char why[256] = "", name[128];
	int ret;

	if (!local) {
		snap_err(err, len, "out of memory");
		return -ENOMEM;
	}
	/* The VM built here must be the one the stream describes. */
	ret = snapshot_config_from_vm(local, vm);
	if (!ret)
		ret = stream_config_compat(local, sr->cfg, why, sizeof(why));
	free(local);
	if (ret) {
		snap_err(err, len, "this VM does not match the snapshot: %s", why[0] ? why : strerror(-ret));
		return ret;
	}
	if (!sr->first && !sr->precopy_rounds)
		snap_place_start(sr, vm);
next:
	while ((ret = stream_next_section(sr->r, &s)) > 0) {
		uint64_t pages0 = sr->ram.pages;

		switch (s.type) {
		case STREAM_RAM:
			ret = stream_read_ram(sr->r, snap_lookup, vm, &sr->ram);
			if (sr->slow_us_per_mib > 0)
				snap_test_slow(sr, sr->ram.pages - pages0);
			break;
		case STREAM_DISK:
			ret = snap_disk(sr, &s);
			break;
		case STREAM_VM:
			if (!strcmp(s.id, SNAPSHOT_ID_PRECOPY)) {
				/* Pages may come again from here on, zero ones included. */
				if (!sr->chan.count)
					snap_place_stop(sr);
				stream_reader_set_target_zeroed(sr->r, false);
				sr->precopy_rounds++;
				if (s.instance)
					sr->last_round = s.instance;
				else
					sr->paused_phase = true;
				/*
				 * Between pre-copy rounds, put the disk copies on stable
				 * storage (the source is still running: this costs no
				 * downtime); at the last one (instance 0, paused) only
				 * start the writeback of what came since.
				 */
				ret = 0;
				for (unsigned int i = 0; !ret && i < sr->nr_disks; i++) {
					if (s.instance == 0)
						disk_recv_writeback(&sr->disks[i]);
					else if (disk_recv_sync(&sr->disks[i], why, sizeof(why)))
						ret = stream_refuse(sr->r, -EIO, "%s", why);
				}
				if (!ret)
					ret = stream_skip(sr->r);
				/* Everything before this marker is placed: tell the source. */
				if (!ret && s.instance >= 2 && sr->acks && sr->applied)
					sr->applied(sr->applied_opaque, s.instance - 1);
			} else if (!strcmp(s.id, SNAPSHOT_ID_ACKS)) {
				sr->acks = true;
				ret = stream_skip(sr->r);
			} else if (sr->pc_allowed && !strcmp(s.id, SNAPSHOT_ID_POSTCOPY) &&
				   !s.instance) {
				const uint8_t *p;

				if (sr->pc)
					ret = stream_refuse(sr->r, -EINVAL, "section given twice");
				else if (!(ret = stream_read_payload(sr->r, &p))) {
					sr->pc = malloc(s.len ? s.len : 1);
					if (!sr->pc)
						ret = stream_refuse(sr->r, -ENOMEM, "out of memory");
					else {
						memcpy(sr->pc, p, s.len);
						sr->pc_len = s.len;
					}
				}
			} else if (!strcmp(s.id, SNAPSHOT_ID_RECONNECT)) {
				ret = snap_reconnect(sr, &s);
			} else if (!strcmp(s.id, SNAPSHOT_ID_CHANNEL)) {
				ret = snap_channel(sr, &s);
			} else if (strcmp(s.id, SNAP_ID_VM) || s.instance)
				ret = s.flags & STREAM_F_OPTIONAL ? stream_skip(sr->r) :
				      stream_refuse(sr->r, -EPROTONOSUPPORT, "unknown required VM section");
			else
				ret = snap_keep(sr, &s);
			break;
		case STREAM_CPU:
			if (strcmp(s.id, SNAP_ID_CPU))
				ret = s.flags & STREAM_F_OPTIONAL ? stream_skip(sr->r) :
				      stream_refuse(sr->r, -EPROTONOSUPPORT, "unknown required CPU section");
			else if (s.instance >= vm->cfg.ncpus)
				ret = stream_refuse(sr->r, -EINVAL, "no vCPU %u here (%u vCPUs)",
						    s.instance, vm->cfg.ncpus);
			else
				ret = snap_keep(sr, &s);
			break;
		case STREAM_DEVICE: {
			struct dev *d;

			for (d = dev_first(vm); d; d = d->next)
				if (!strcmp(d->ops->name, s.id) && d->instance == s.instance)
					break;
			if (d)
				ret = snap_keep(sr, &s);
			else if (s.flags & STREAM_F_OPTIONAL)
				ret = stream_skip(sr->r);
			else
				ret = stream_refuse(sr->r, -EPROTONOSUPPORT,
						    "unknown required device: this VM has no %s.%u",
						    s.id, s.instance);
			break;
		}
		default:
			ret = s.flags & STREAM_F_OPTIONAL ? stream_skip(sr->r) :
			      stream_refuse(sr->r, -EPROTONOSUPPORT, "unknown required section");
			break;
		}
		if (ret < 0)
			break;
	}
	if (ret < 0) {
		snap_err(err, len, "%s", stream_reader_error(sr->r)[0] ? stream_reader_error(sr->r) :
			 strerror(-ret));
		/* The connection broke in pre-copy: the source may come back (reconnect). */
		if (sr->resume && sr->reconnect_s && !sr->paused_phase &&
		    stream_reader_link_failed(sr->r)) {
			char again[512] = "";

			if (!sr->resume(sr->resume_opaque, sr, again, sizeof(again))) {
				err[0] = 0;
				goto next;
			}
			snap_err(err, len, "%s; %s", stream_reader_error(sr->r), again);
		}
		return ret;
	}

	/* Every channel's memory is in before any state is loaded. */
	if (sr->chan.count && (ret = sr->chan_ops->wait(sr->chan_opaque, err, len)))
		return ret;
	/* The whole stream is intact: everything must be there. */
	if (!snap_find(sr, STREAM_VM, SNAP_ID_VM, 0)) {
		snap_err(err, len, "the snapshot has no VM state section ('%s')", SNAP_ID_VM);
		return -EBADMSG;
	}
	for (unsigned int i = 0; i < vm->cfg.ncpus; i++)
		if (!snap_find(sr, STREAM_CPU, SNAP_ID_CPU, i)) {
			snap_err(err, len, "the snapshot has no state for vCPU %u ('%s' instance %u)",
				 i, SNAP_ID_CPU, i);
			return -EBADMSG;
		}
	for (struct dev *d = dev_first(vm); d; d = d->next) {
		struct state_in in;

		k = snap_find(sr, STREAM_DEVICE, d->ops->name, d->instance);
		if (!k) {
			snap_err(err, len, "the snapshot has no state for device %s.%u",
				 d->ops->name, d->instance);
			return -EBADMSG;
		}
		if (k->version < d->ops->min_version || k->version > d->ops->version) {
			snap_err(err, len, "%s: version %u; this godwit loads %u to %u",
				 snap_sec_name(k, name, sizeof(name)), k->version,
				 d->ops->min_version, d->ops->version);
			return -EPROTONOSUPPORT;
		}
		state_in_init(&in, k->buf, k->len);
		ret = dev_load(d, &in, k->version);
		if (ret) {
			snap_err(err, len, "%s: the device refused its state: %s",
				 snap_sec_name(k, name, sizeof(name)), strerror(-ret));
			return ret;
		}
	}
	{
		struct state_in in;

		k = snap_find(sr, STREAM_VM, SNAP_ID_VM, 0);
		state_in_init(&in, k->buf, k->len);
		ret = vm_state_load(vm, &in, k->version, &opts);
		if (ret) {
			snap_err(err, len, "%s: cannot load the VM state: %s",
				 snap_sec_name(k, name, sizeof(name)), strerror(-ret));
			return ret;
		}
	}
	for (unsigned int i = 0; i < vm->cfg.ncpus; i++) {
		struct state_in in;

		k = snap_find(sr, STREAM_CPU, SNAP_ID_CPU, i);
		state_in_init(&in, k->buf, k->len);
		ret = cpu_state_load(&vm->vcpus[i], &in, k->version, &opts);
		if (ret) {
			snap_err(err, len, "%s: cannot load vCPU %u: %s",
				 snap_sec_name(k, name, sizeof(name)), i, strerror(-ret));
			return ret;
		}
	}
	return 0;
}

int snapshot_restore_load(struct snapshot_restore *sr, struct vm *vm, char *err, size_t len)
{
	int ret = snap_load(sr, vm, err, len);

	/* The sections and the reader's buffers are not needed any more; the specs are. */
	for (unsigned int i = 0; i < sr->nr_secs; i++)
		free(sr->secs[i].buf);
	free(sr->secs);
	sr->secs = NULL;
	sr->nr_secs = sr->cap_secs = 0;
	sr->bytes = sr->bytes_before + stream_reader_offset(sr->r);
	stream_reader_free(sr->r);
	sr->r = NULL;
	stream_reader_free(sr->first);
	sr->first = NULL;
	return ret;
}

void snapshot_restore_allow_postcopy(struct snapshot_restore *sr)
{
	sr->pc_allowed = true;
}

const uint8_t *snapshot_restore_postcopy(const struct snapshot_restore *sr, size_t *len)
{
	*len = sr->pc_len;
	return sr->pc;
}

void snapshot_restore_free(struct snapshot_restore *sr)
{
	if (!sr)
		return;
	snap_place_stop(sr);
	if (sr->uffd >= 0)
		close(sr->uffd);
	free(sr->pc);
	stream_reader_free(sr->r);
	stream_reader_free(sr->first);
	for (unsigned int i = 0; i < sr->nr_specs; i++)
		free(sr->specs[i]);
	for (unsigned int i = 0; i < sr->nr_secs; i++)
		free(sr->secs[i].buf);
	free(sr->secs);
	free(sr);
}
