/*
 * fuzz_restore.c - libFuzzer target for the whole restore path
 * (snapshot.c, as `godwit restore` runs it, src/cmd/restore.c): the input
 * is a snapshot stream, loaded into a real KVM VM that is never run.
 * snapshot_restore_open() reads the header and CONFIG and checks the CPUID
 * against this host's KVM; snapshot_restore_config() rebuilds the
 * vm_config (the n-th virtio-blk gets the n-th of a few scratch disk
 * images); the VM is built as run_vm() builds it (vm_create, platform_init,
 * the PCI devices in slot order); snapshot_restore_load() checks the VM
 * against CONFIG, reads RAM into guest memory, keeps the sections, checks
 * EOF and loads every device (dev_load), the VM state (irqchip, PIT,
 * kvmclock) and the vCPUs through KVM's ioctls.  After a successful load
 * every device saves its state again (what a snapshot of the restored VM
 * would do).  Whatever the bytes, a refusal says why; no read or write out
 * of bounds, no leak (fds included: the number open must not grow).
 *
 * Real VM or device loads alone: a real VM per input.  Measured here (a
 * nested 2-core host): a full restore of the golden guest takes about 17 ms
 * of which only 3 ms are CPU; the rest is KVM waiting for SRCU grace periods
 * (KVM_SET_USER_MEMORY_REGION, KVM_IOEVENTFD: 8-10 ms each).  So one process
 * gets ~150 inputs/s at 16% of a core; `make fuzz-long` runs this target
 * with -fork=6 pinned to one core (taskset), which keeps the core busy
 * (~300 inputs/s) without using a second one.  That is slower than loading
 * the device state alone without KVM, but it is the real path: what only
 * KVM checks (KVM_SET_* of the vCPU, irqchip, PIT and clock state), and the
 * devices' load ops with a real VM behind them (ioeventfds, MSI routes,
 * guest RAM).  The harness skips (returns early on) what would only make it
 * slow or cannot work here: more than 2 vCPUs or 256 MiB, or a NIC (it
 * needs a TAP); the disks are memfds of 1 MiB (virtio-blk's load refuses
 * another capacity, so a seed's disks are 1 MiB).
 *
 * The first byte: bit 0 = section checksums ignored (the build defines
 * FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION), so mutations get past the
 * CRCs and the chain; bit 1 = CPU_CLOCK_ADVANCE instead of the default
 * FROZEN; bit 2 = a reconnected migration (docs/migration.md,
 * "Reconnecting"): a u32 N follows, then the first stream's N bytes (which
 * end early, as a broken connection does: with a `reconnect` section, the
 * load asks for the source again) and the second stream, which the resume
 * callback hands to snapshot_restore_resume() once; the first stream comes
 * through a pipe (at most 60000 bytes), so it ends as a socket does; bit 3
 * (without bit 2) = a migration over two channels (docs/migration.md,
 * "Channels"): a u32 N follows, then the main stream's N bytes and a memory
 * channel's stream, which the main stream's `channel` section has opened
 * (snapshot_restore_open_channel) and loaded (snapshot_restore_load_channel)
 * into the same VM; the main stream's EOF gets its result.  The rest is
 * the stream.  Seeds: tests/data's golden snapshots
 * (the Intel one restores on an Intel host), shrunk to a few RAM pages, and
 * tests/fuzz/corpus/restore (a snapshot of the test guest with two 1 MiB
 * disks, one read-only with a serial, and virtio-rng, shrunk the same way).
 *   make fuzz && build-fuzz/fuzz-restore -close_fd_mask=2 build-fuzz/corpus-restore
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "godwit/conn.h"
#include "godwit/dev.h"
#include "godwit/devices.h"
#include "godwit/devspec.h"
#include "godwit/log.h"
#include "godwit/snapshot.h"
#include "godwit/state.h"
#include "godwit/virtio.h"
#include "godwit/vm.h"

extern bool stream_fuzz_ignore_crc;

#define FUZZ_MAX_MEM    (256ULL << 20)
#define FUZZ_MAX_CPUS   2
#define FUZZ_DISKS      4
#define FUZZ_DISK_SIZE  (1 << 20)

static char disk_paths[FUZZ_DISKS][64];
static int devnull = -1;

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		abort();
	while ((e = readdir(d)))
		n++;
	closedir(d);
	return n;
}

/* The scratch disk images are memfds, opened by their /proc/self/fd path: no files left. */
static void fuzz_init(void)
{
	for (int i = 0; i < FUZZ_DISKS; i++) {
		int fd = memfd_create("fuzz-restore-disk", 0);

		if (fd < 0 || ftruncate(fd, FUZZ_DISK_SIZE))
			abort();
		snprintf(disk_paths[i], sizeof(disk_paths[i]), "/proc/self/fd/%d", fd);
	}
	devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (devnull < 0)
		abort();
}

/* As run.c's run_add_devices: the disks (and NICs) from slot 1 in order, then the rng. */
static int fuzz_add_devices(struct vm *vm)
{
	unsigned int slot = 1;
	int ret = 0;

	for (unsigned int i = 0; i < vm->cfg.nr_devices && !ret; i++, slot++)
		ret = virtio_blk_add(vm, slot, &vm->cfg.devices[i]);
	if (!ret && vm->cfg.rng)
		ret = virtio_rng_add(vm, slot);
	return ret;
}

/* After a load: every device saves again. */
static void fuzz_save_all(struct vm *vm)
{
	for (struct dev *d = dev_first(vm); d; d = d->next) {
		struct state_out o;

		if (!d->ops->save)
			continue;
		state_out_init(&o);
		(void)d->ops->save(d, &o);
		state_out_free(&o);
	}
}

/* Bit 2: the second stream, taken once as the source's new connection. */
static int fuzz_resume(void *opaque, struct snapshot_restore *sr, char *err, size_t len)
{
	int *fd2 = opaque;
	struct conn c;
	int ret;

	if (*fd2 < 0) {
		snprintf(err, len, "the source came back once already");
		return -EPERM;
	}
	c = conn_plain(*fd2);
	ret = snapshot_restore_resume(sr, &c, NULL, err, len);
	if (ret && !err[0])
		abort();                /* a refusal says why */
	close(*fd2);
	*fd2 = -1;
	return ret;
}

/* Bit 3: the memory channel's stream (fd), opened and loaded when the main stream names it. */
struct fuzz_chan {
	int fd;
	struct snapshot_restore *main;
	struct vm *vm;
	int ret;
	char err[512];
};

static int fuzz_chan_start(void *opaque, const struct snapshot_channel *c, char *err, size_t len)
{
	struct fuzz_chan *fc = opaque;
	struct snapshot_restore *csr = NULL;
	struct conn conn = conn_plain(fc->fd);
	uint32_t idx;

	(void)err;
	(void)len;
	fc->ret = snapshot_restore_open_channel(fc->main, &conn, NULL, &csr, &idx, fc->err,
						sizeof(fc->err));
	if (!fc->ret && (idx != 1 || c->count != 2))
		abort();                /* open_channel checks both against the main stream */
	if (!fc->ret)
		fc->ret = snapshot_restore_load_channel(csr, fc->vm, fc->err, sizeof(fc->err));
	if (fc->ret && !fc->err[0])
		abort();                /* a refusal says why */
	snapshot_restore_free(csr);
	return 0;
}

static int fuzz_chan_wait(void *opaque, char *err, size_t len)
{
	struct fuzz_chan *fc = opaque;

	snprintf(err, len, "%s", fc->err);
	return fc->ret;
}

static void fuzz_chan_abort(void *opaque)
{
	(void)opaque;
}

static const struct snapshot_channel_ops fuzz_chan_ops = {
	.start = fuzz_chan_start, .wait = fuzz_chan_wait, .abort = fuzz_chan_abort,
};

/* Mode 4's first stream goes through a pipe: what fits its buffer at once. */
#define FUZZ_PIPE_MAX 60000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct vm vm;
	struct snapshot_restore *sr = NULL;
	const struct stream_config *sc;
	struct vm_device_arg user[FUZZ_DISKS];
	static struct vm_config cfg;
	unsigned int nr_user = 0;
	char err[512] = "";
	int fd, ret, fds, fd2 = -1;
	bool loaded = false, chan = (data[0] & 12) == 8;
	struct fuzz_chan fc = { .fd = -1 };

	if (size < 1)
		return 0;
	if (devnull < 0)
		fuzz_init();
	fds = count_fds();
	stream_fuzz_ignore_crc = data[0] & 1;
	{
		const uint8_t *s1 = data + 1;
		size_t n1 = size - 1;

		if (data[0] & 12) {
			uint32_t n;

			if (size < 5)
				return 0;
			memcpy(&n, data + 1, 4);
			s1 = data + 5;
			n1 = MIN((size_t)n, size - 5);
			fd2 = memfd_create("fuzz-restore-2", MFD_CLOEXEC);
			if (fd2 < 0 ||
			    write(fd2, s1 + n1, size - 5 - n1) != (ssize_t)(size - 5 - n1) ||
			    lseek(fd2, 0, SEEK_SET) != 0)
				abort();
		}
		if (data[0] & 4) {
			/*
			 * A pipe, not a file: its reader does not know where it ends, and
			 * reaching the end early is what a broken connection looks like.
			 */
			int p[2];

			if (n1 > FUZZ_PIPE_MAX)
				return 0;
			if (pipe2(p, O_CLOEXEC) || write(p[1], s1, n1) != (ssize_t)n1)
				abort();
			close(p[1]);
			fd = p[0];
		} else {
			fd = memfd_create("fuzz-restore", MFD_CLOEXEC);
			if (fd < 0 || write(fd, s1, n1) != (ssize_t)n1 || lseek(fd, 0, SEEK_SET) != 0)
				abort();
		}
	}

	ret = snapshot_restore_open(fd, NULL, &sr, err, sizeof(err));
	if (ret) {
		if (!err[0])
			abort();                /* a refusal says why */
		goto out;
	}
	sc = snapshot_restore_stream_config(sr);
	/* The harness's own limits (not godwit's): speed, and no TAP here. */
	{
		uint64_t mem = 0;

		for (unsigned int i = 0; i < sc->nr_regions; i++)
			mem += sc->regions[i].size;
		if (mem > FUZZ_MAX_MEM || sc->ncpus > FUZZ_MAX_CPUS)
			goto out;
	}
	for (unsigned int i = 0; i < sc->nr_devices; i++) {
		if (!strcmp(sc->devices[i].type, "virtio-net"))
			goto out;
		if (!strcmp(sc->devices[i].type, "virtio-blk") && nr_user < FUZZ_DISKS) {
			struct vm_device_arg *a = &user[nr_user];

			memset(a, 0, sizeof(*a));
			if (vm_device_arg_parse(a, VM_DEV_DISK, disk_paths[nr_user], err, sizeof(err)))
				abort();
			nr_user++;
		}
	}
	snapshot_restore_set_clock(sr, data[0] & 2 ? CPU_CLOCK_ADVANCE : CPU_CLOCK_FROZEN);
	if (fd2 >= 0 && !chan)
		snapshot_restore_set_resume(sr, fuzz_resume, &fd2);
	if (chan) {
		fc = (struct fuzz_chan){ .fd = fd2, .main = sr, .vm = &vm };
		snapshot_restore_set_channels(sr, &fuzz_chan_ops, &fc);
	}
	ret = snapshot_restore_config(sr, user, nr_user, &cfg, err, sizeof(err));
	if (ret) {
		if (!err[0])
			abort();
		goto out;
	}
	if (vm_create(&vm, &cfg))
		goto out;               /* e.g. a CPU model this host cannot offer */
	if (platform_init(&vm, devnull) || fuzz_add_devices(&vm))
		abort();                /* what restore_config accepted must build */
	ret = snapshot_restore_load(sr, &vm, err, sizeof(err));
	if (ret && !err[0])
		abort();
	if (!ret) {
		loaded = true;
		fuzz_save_all(&vm);
	}
	dev_destroy_all(&vm);
	platform_destroy(&vm);
	vm_destroy(&vm);
out:
	if (getenv("FUZZ_DEBUG"))               /* FUZZ_DEBUG=1: how far an input got */
		fprintf(stderr, "fuzz-restore: %s\n", err[0] ? err : loaded ? "loaded" : "skipped (harness limits)");
	snapshot_restore_free(sr);
	close(fd);
	if (fd2 >= 0)
		close(fd2);
	if (count_fds() != fds)
		abort();                        /* an fd leaked */
	return 0;
}
