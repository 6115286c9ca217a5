/*
 * dev.c - the device registry (dev.h): each VM's list of devices in
 * registration order, which is the order they are saved, loaded, quiesced
 * and resumed in.  The registry refuses a device type that could not be
 * migrated without saying why, so migratability is checked once, at
 * start-up, not discovered mid-migration.
 *
 * Threads: the list is built before the vCPUs start and walked by the loop
 * thread only; it takes no lock.
 */
#include <errno.h>
#include <string.h>

#include "godwit/dev.h"
#include "godwit/log.h"
#include "godwit/vm.h"

/* A type's ops are usable: named, and either migratable or saying why not. */
static int dev_ops_check(const struct dev_ops *ops)
{
	const char *name = ops && ops->name ? ops->name : "(unnamed)";

	if (!ops || !ops->name || !ops->name[0]) {
		log_warnx("%s: device %s: no name (the stream id)", __func__, name);
		return -EINVAL;
	}
	if (!ops->unmigratable && (!ops->save || !ops->load)) {
		log_warnx("%s: device %s: neither save/load nor an unmigratable reason", __func__,
			  name);
		return -EINVAL;
	}
	if ((ops->save || ops->load) &&
	    (!ops->version || ops->min_version > ops->version)) {
		log_warnx("%s: device %s: bad versions (version %u, min_version %u)", __func__,
			  name, ops->version, ops->min_version);
		return -EINVAL;
	}
	return 0;
}

/*
 * dev_register - append d (a realized device of type ops with state priv)
 * to vm's device list.
 *
 * vm:       the VM; d is linked into vm->devices and must outlive it there
 * d:        storage for the registry entry (usually embedded in the device)
 * ops:      the device type
 * priv:     the instance's state, passed back through d->priv
 * instance: distinguishes devices of the same type (0, 1, ...)
 *
 * Returns 0, or -EINVAL (logged, naming the device) if ops have neither
 * save+load nor an unmigratable reason, have no name or inconsistent
 * versions, or if (name, instance) is already registered or d is already
 * on the list: the pair identifies the device's section in the stream.
 */
int dev_register(struct vm *vm, struct dev *d, const struct dev_ops *ops, void *priv,
		 uint32_t instance)
{
	struct dev **pp;
	int ret;

	ret = dev_ops_check(ops);
	if (ret)
		return ret;
	for (pp = &vm->devices; *pp; pp = &(*pp)->next) {
		if (*pp == d) {
			log_warnx("%s: device %s.%u: registered twice", __func__, ops->name,
				  instance);
			return -EINVAL;
		}
		if ((*pp)->instance == instance && !strcmp((*pp)->ops->name, ops->name)) {
			log_warnx("%s: device %s.%u: the id is taken", __func__, ops->name,
				  instance);
			return -EINVAL;
		}
	}
	d->ops = ops;
	d->priv = priv;
	d->instance = instance;
	d->next = NULL;
	*pp = d;
	return 0;
}

const char *const dev_blk_op_names[DEV_BLK_NR_OPS] = {
	[DEV_BLK_READ] = "read", [DEV_BLK_WRITE] = "write", [DEV_BLK_FLUSH] = "flush",
	[DEV_BLK_DISCARD] = "discard", [DEV_BLK_WRITE_ZEROES] = "write_zeroes",
	[DEV_BLK_GET_ID] = "get_id", [DEV_BLK_OTHER] = "other",
};

/* dev_first - the first device of vm (registration order), or NULL. */
struct dev *dev_first(struct vm *vm)
{
	return vm->devices;
}

/*
 * dev_quiesce_all - quiesce every device that has a quiesce op, in order.
 * Returns 0, or the first error; the devices after the failing one are not
 * quiesced.  On failure the caller resumes with dev_resume_all(), so a
 * device's resume() must be harmless when it was not quiesced.
 */
int dev_quiesce_all(struct vm *vm)
{
	for (struct dev *d = vm->devices; d; d = d->next) {
		int ret;

		if (!d->ops->quiesce)
			continue;
		ret = d->ops->quiesce(d);
		if (ret) {
			log_warnx("%s: device %s.%u: cannot quiesce (%d)", __func__, d->ops->name,
				  d->instance, ret);
			return ret;
		}
	}
	return 0;
}

/*
 * dev_resume_all - resume every device that has a resume op, in order.
 * Returns 0, or the first error (logged).  Unlike quiesce it does not stop
 * there: a device that fails to resume must not keep the others stopped,
 * since this runs on the path that keeps a source VM going after a failed
 * migration.
 */
int dev_resume_all(struct vm *vm)
{
	int first = 0;

	for (struct dev *d = vm->devices; d; d = d->next) {
		int ret;

		if (!d->ops->resume)
			continue;
		ret = d->ops->resume(d);
		if (ret) {
			log_warnx("%s: device %s.%u: cannot resume (%d)", __func__, d->ops->name,
				  d->instance, ret);
			if (!first)
				first = ret;
		}
	}
	return first;
}

static int dev_each(struct vm *vm, bool release)
{
	int first = 0;

	for (struct dev *d = vm->devices; d; d = d->next) {
		int (*fn)(struct dev *) = release ? d->ops->release : d->ops->acquire;
		int ret;

		if (!fn)
			continue;
		ret = fn(d);
		if (ret) {
			log_warnx("device %s.%u: cannot %s its host resources: %s", d->ops->name,
				  d->instance, release ? "release" : "take", strerror(-ret));
			if (!first)
				first = ret;
		}
	}
	return first;
}

int dev_release_all(struct vm *vm)
{
	return dev_each(vm, true);
}

int dev_acquire_all(struct vm *vm)
{
	return dev_each(vm, false);
}

/*
 * dev_destroy_all - call destroy() on every device that has one (each takes
 * itself off the list), in registration order: devices do not depend on
 * each other.  Called after the vCPU threads are joined
 * and before guest RAM is unmapped, so no device thread (virtio workers)
 * can still be touching guest memory.
 */
void dev_destroy_all(struct vm *vm)
{
	struct dev *d = vm->devices, *next;

	for (; d; d = next) {
		next = d->next;
		if (d->ops->destroy)
			d->ops->destroy(d);
	}
}

int dev_load(struct dev *d, struct state_in *in, uint16_t version)
{
	if (!d->ops->load)
		return -EOPNOTSUPP;
	if (version < d->ops->min_version || version > d->ops->version)
		return -EPROTONOSUPPORT;
	return d->ops->load(d, in, version);
}
