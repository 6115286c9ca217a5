/*
 * test_blk.c - virtio-blk without a VM: the --disk spec (strict parsing,
 * open errors, OFD locks), the offered features and config space, and
 * request handling on hand-built descriptor chains (struct vq_elem over
 * host buffers), including malformed ones from a hostile guest.  The
 * image is a temporary file checked with pread() independently of the
 * device.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "godwit/dev.h"
#include "godwit/virtio.h"
#include "unit.h"

/* From src/devices/virtio/blk.c (it has no header of its own). */
struct blk;
int virtio_blk_open(const char *spec, struct blk **out) __must_check;
void virtio_blk_close(struct blk *b);
struct virtio_dev *virtio_blk_vdev(struct blk *b);
uint32_t virtio_blk_handle(struct blk *b, const struct vq_elem *e, uint8_t *status);

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_DISCARD 11
#define T_WRITE_ZEROES 13
#define S_OK 0
#define S_IOERR 1
#define S_UNSUPP 2
#define F_RO 5
#define F_FLUSH 9
#define F_DISCARD 13
#define F_WRITE_ZEROES 14

#define IMG_SECTORS 64

static char img_path[256];
static const char *img_dir = "/tmp";

/* A fresh image of `size` bytes filled with 0xa5 in img_dir; returns its path. */
static const char *make_image(const char *name, size_t size)
{
	uint8_t buf[512];
	int fd;

	snprintf(img_path, sizeof(img_path), "%s/godwit-test-blk-%d-%s", img_dir, (int)getpid(),
		 name);
	fd = open(img_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	memset(buf, 0xa5, sizeof(buf));
	for (size_t off = 0; off < size; off += sizeof(buf))
		CHECK(pwrite(fd, buf, MIN(sizeof(buf), size - off), (off_t)off) > 0);
	close(fd);
	return img_path;
}

static void remove_image(const char *path)
{
	unlink(path);
}

/* Open "PATH" + opts (e.g. ",readonly"). */
static int open_spec(const char *path, const char *opts, struct blk **b)
{
	char spec[512];

	snprintf(spec, sizeof(spec), "%s%s", path, opts);
	return virtio_blk_open(spec, b);
}

TEST(blk_spec_ok)
{
	const char *p = make_image("ok.img", IMG_SECTORS * 512);
	struct blk *b;

	CHECK_EQ(open_spec(p, "", &b), 0);
	virtio_blk_close(b);
	CHECK_EQ(open_spec(p, ",readonly", &b), 0);
	virtio_blk_close(b);
	CHECK_EQ(open_spec(p, ",serial=ABCDEFGHIJKLMNOPQRST", &b), 0);   /* 20 bytes */
	virtio_blk_close(b);
	CHECK_EQ(open_spec(p, ",serial=x y,readonly", &b), 0);
	virtio_blk_close(b);
	remove_image(p);
}

TEST(blk_spec_errors)
{
	const char *p = make_image("bad.img", IMG_SECTORS * 512);
	static const char *bad[] = {
		",bogus", ",readonly=1", ",serial=", ",serial=ABCDEFGHIJKLMNOPQRSTU",
		",", ",,readonly", ",readonly,readonly", ",serial=a,serial=b",
		",serial=a\tb", ",Readonly",
	};
	struct blk *b = (struct blk *)1;

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		CHECK_EQ(open_spec(p, bad[i], &b), -EINVAL);
		CHECK(b == NULL);
	}
	CHECK_EQ(virtio_blk_open("", &b), -EINVAL);
	CHECK_EQ(virtio_blk_open(",readonly", &b), -EINVAL);
	CHECK_EQ(virtio_blk_open("/nonexistent/godwit.img", &b), -ENOENT);
	CHECK_EQ(virtio_blk_open("/tmp", &b), -EISDIR);
	CHECK_EQ(virtio_blk_open("/dev/null", &b), -EINVAL);  /* a character device */
	remove_image(p);

	p = make_image("odd.img", 1000);
	CHECK_EQ(open_spec(p, "", &b), -EINVAL);              /* not a multiple of 512 */
	remove_image(p);
	p = make_image("empty.img", 0);
	CHECK_EQ(open_spec(p, "", &b), -EINVAL);
	if (geteuid() != 0) {                                   /* root reads anything */
		CHECK_EQ(chmod(p, 0), 0);
		CHECK_EQ(open_spec(p, ",readonly", &b), -EACCES);
	}
	remove_image(p);
}

TEST(blk_lock)
{
	const char *p = make_image("lock.img", IMG_SECTORS * 512);
	struct blk *a, *b;

	CHECK_EQ(open_spec(p, "", &a), 0);
	CHECK_EQ(open_spec(p, "", &b), -EBUSY);
	CHECK_EQ(open_spec(p, ",readonly", &b), -EBUSY);
	virtio_blk_close(a);
	/* The lock goes with the fd: free again. */
	CHECK_EQ(open_spec(p, ",readonly", &a), 0);
	CHECK_EQ(open_spec(p, ",readonly", &b), 0);         /* readers share */
	if (b)
		virtio_blk_close(b);
	CHECK_EQ(open_spec(p, "", &b), -EBUSY);             /* no writer beside a reader */
	virtio_blk_close(a);
	remove_image(p);
}

static uint32_t cfg32(struct virtio_dev *v, uint32_t off)
{
	uint8_t d[4];

	v->ops->config_read(v, off, d, 4);
	return d[0] | d[1] << 8 | d[2] << 16 | (uint32_t)d[3] << 24;
}

TEST(blk_features_config)
{
	const char *p = make_image("cfg.img", IMG_SECTORS * 512);
	struct virtio_dev *v;
	struct blk *b;
	uint64_t f, cap = 0;
	uint8_t d[8], past[4] = { 1, 1, 1, 1 };

	CHECK_EQ(open_spec(p, "", &b), 0);
	v = virtio_blk_vdev(b);
	CHECK_EQ(v->ops->device_id, 2);
	CHECK_EQ(v->ops->nr_queues, 1);
	f = v->ops->features(v);
	CHECK(f & (1ULL << F_FLUSH));
	CHECK(!(f & (1ULL << F_RO)));
	CHECK(f & (1ULL << F_WRITE_ZEROES));
	CHECK(f & (1ULL << 6));                                 /* BLK_SIZE */
	v->ops->config_read(v, 0, d, 8);
	for (int i = 7; i >= 0; i--)
		cap = cap << 8 | d[i];
	CHECK_EQ(cap, IMG_SECTORS);
	CHECK_EQ(cfg32(v, 20), 512);                            /* blk_size */
	CHECK(cfg32(v, 12) >= 1);                               /* seg_max */
	CHECK_EQ(cfg32(v, 48), 1u << 21);                       /* max_write_zeroes_sectors */
	CHECK_EQ(cfg32(v, 52), 32);                             /* max_write_zeroes_seg */
	if (f & (1ULL << F_DISCARD)) {
		CHECK_EQ(cfg32(v, 36), 1u << 21);
		CHECK(cfg32(v, 44) >= 1);
	}
	v->ops->config_read(v, v->ops->config_size, past, 4);   /* beyond: zeroes */
	CHECK_EQ(past[0] | past[1] | past[2] | past[3], 0);
	virtio_blk_close(b);

	CHECK_EQ(open_spec(p, ",readonly", &b), 0);
	v = virtio_blk_vdev(b);
	f = v->ops->features(v);
	CHECK(f & (1ULL << F_RO));
	CHECK(!(f & (1ULL << F_DISCARD)));
	CHECK(!(f & (1ULL << F_WRITE_ZEROES)));
	virtio_blk_close(b);
	remove_image(p);
}

/* ---- requests on fake chains ---- */

/*
 * A request laid out in one buffer: header (16 bytes) | out data | in data |
 * status, cut into segments at the offsets in `cuts` (the device must not
 * care where the driver splits it).
 */
struct req {
	uint8_t buf[16 + 8192 + 8192 + 1];
	size_t out_len, in_len;
	struct vq_elem *e;
};

static void req_build(struct req *r, uint32_t type, uint64_t sector, const void *out,
		      size_t out_data, size_t in_data, const size_t *cuts, size_t ncuts)
{
	size_t bounds[64], nb = 0, prev = 0;

	memset(r->buf, 0xee, sizeof(r->buf));
	for (int i = 0; i < 4; i++)
		r->buf[i] = (uint8_t)(type >> (8 * i));
	memset(r->buf + 4, 0, 4);
	for (int i = 0; i < 8; i++)
		r->buf[8 + i] = (uint8_t)(sector >> (8 * i));
	if (out_data)
		memcpy(r->buf + 16, out, out_data);
	r->out_len = 16 + out_data;
	r->in_len = in_data + 1;
	if (!r->e)
		r->e = calloc(1, sizeof(*r->e));
	memset(r->e, 0, sizeof(*r->e));

	/* Segment boundaries: the cuts plus the out/in split and the end. */
	for (size_t i = 0; i < ncuts; i++)
		if (cuts[i] > 0 && cuts[i] < r->out_len + r->in_len && cuts[i] != r->out_len)
			bounds[nb++] = cuts[i];
	bounds[nb++] = r->out_len;
	bounds[nb++] = r->out_len + r->in_len;
	for (size_t i = 0; i < nb; i++)               /* insertion sort */
		for (size_t j = i; j > 0 && bounds[j] < bounds[j - 1]; j--) {
			size_t t = bounds[j];

			bounds[j] = bounds[j - 1];
			bounds[j - 1] = t;
		}
	for (size_t i = 0; i < nb; i++) {
		struct iovec *v = &r->e->iov[r->e->n_out + r->e->n_in];

		v->iov_base = r->buf + prev;
		v->iov_len = bounds[i] - prev;
		r->e->gpa[r->e->n_out + r->e->n_in] = 0x100000 + prev;
		if (bounds[i] <= r->out_len)
			r->e->n_out++;
		else
			r->e->n_in++;
		prev = bounds[i];
	}
	r->e->out_len = r->out_len;
	r->e->in_len = r->in_len;
}

static uint8_t req_status(const struct req *r)
{
	return r->buf[r->out_len + r->in_len - 1];
}

/* Serve r; checks the reported length (all writable bytes) and the status byte. */
static uint8_t serve(struct blk *b, struct req *r)
{
	uint8_t st = 0xff;
	uint32_t written = virtio_blk_handle(b, r->e, &st);

	CHECK_EQ(written, r->in_len);
	CHECK_EQ(req_status(r), st);
	return st;
}

static void file_read(const char *p, off_t off, void *buf, size_t len)
{
	int fd = open(p, O_RDONLY | O_CLOEXEC);

	CHECK(fd >= 0);
	CHECK_EQ(pread(fd, buf, len, off), (ssize_t)len);
	close(fd);
}

static struct blk *open_negotiated(const char *p, const char *opts)
{
	char spec[512];
	struct blk *b;
	struct virtio_dev *v;

	snprintf(spec, sizeof(spec), "%s%s", p, opts);
	if (virtio_blk_open(spec, &b))
		return NULL;
	v = virtio_blk_vdev(b);
	v->driver_features = v->ops->features(v) | 1ULL << VIRTIO_F_VERSION_1;
	return b;
}

TEST(blk_read_write)
{
	const char *p = make_image("rw.img", IMG_SECTORS * 512);
	static const size_t cuts[][4] = {
		{ 0 }, { 7, 16 + 100, 16 + 600, 0 }, { 16 + 512, 16 + 1024, 16 + 1535 },
	};
	struct req r = { 0 };
	uint8_t data[1536], back[1536];
	struct blk *b = open_negotiated(p, "");

	CHECK(b != NULL);
	if (!b)
		return;
	for (size_t c = 0; c < ARRAY_SIZE(cuts); c++) {
		for (size_t i = 0; i < sizeof(data); i++)
			data[i] = (uint8_t)(i * 7 + c);
		/* Write 3 sectors at sector 5 with the chain cut up differently each time. */
		req_build(&r, T_OUT, 5, data, sizeof(data), 0, cuts[c], 4);
		CHECK_EQ(serve(b, &r), S_OK);
		file_read(p, 5 * 512, back, sizeof(back));
		CHECK(!memcmp(back, data, sizeof(data)));
		/* Read them back; the status byte may share a segment with data. */
		size_t rcuts[3] = { 16 + 3, 16 + 512, 16 + 1536 };
		req_build(&r, T_IN, 5, NULL, 0, sizeof(data), c ? rcuts : cuts[0], c ? 2 : 1);
		CHECK_EQ(serve(b, &r), S_OK);
		CHECK(!memcmp(r.buf + 16, data, sizeof(data)));
	}
	/* Neighbours untouched. */
	file_read(p, 4 * 512, back, 512);
	CHECK_EQ(back[0], 0xa5);
	CHECK_EQ(back[511], 0xa5);
	file_read(p, 8 * 512, back, 512);
	CHECK_EQ(back[0], 0xa5);
	/* The last sector is reachable. */
	req_build(&r, T_IN, IMG_SECTORS - 1, NULL, 0, 512, NULL, 0);
	CHECK_EQ(serve(b, &r), S_OK);
	/* Zero-length read and write are fine. */
	req_build(&r, T_IN, IMG_SECTORS, NULL, 0, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_OK);
	free(r.e);
	virtio_blk_close(b);
	remove_image(p);
}

/* GET /metrics's counters (dev.h): every answered request by type, bytes of those that succeeded. */
TEST(blk_stats_counted)
{
	const char *p = make_image("stats.img", IMG_SECTORS * 512);
	struct req r = { 0 };
	uint8_t data[1536] = { 1 };
	struct dev_stats st = { 0 };
	struct virtio_dev *v;
	struct blk *b = open_negotiated(p, "");

	CHECK(b != NULL);
	if (!b)
		return;
	v = virtio_blk_vdev(b);
	req_build(&r, T_OUT, 5, data, sizeof(data), 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_OK);
	req_build(&r, T_IN, 5, NULL, 0, 1024, NULL, 0);
	CHECK_EQ(serve(b, &r), S_OK);
	req_build(&r, T_IN, IMG_SECTORS - 1, NULL, 0, 1024, NULL, 0);   /* beyond the end */
	CHECK_EQ(serve(b, &r), S_IOERR);
	req_build(&r, T_FLUSH, 0, NULL, 0, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_OK);
	req_build(&r, T_GET_ID, 0, NULL, 0, 20, NULL, 0);
	CHECK_EQ(serve(b, &r), S_OK);
	req_build(&r, 99, 0, NULL, 0, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_UNSUPP);
	CHECK(v->ops->stats != NULL);
	v->ops->stats(v, &st);
	CHECK_EQ(st.kind, DEV_STATS_BLK);
	CHECK_STR(st.label, p);
	CHECK_EQ(st.blk.requests[DEV_BLK_WRITE], 1);
	CHECK_EQ(st.blk.requests[DEV_BLK_READ], 2);
	CHECK_EQ(st.blk.requests[DEV_BLK_FLUSH], 1);
	CHECK_EQ(st.blk.requests[DEV_BLK_GET_ID], 1);
	CHECK_EQ(st.blk.requests[DEV_BLK_OTHER], 1);
	CHECK_EQ(st.blk.requests[DEV_BLK_DISCARD], 0);
	CHECK_EQ(st.blk.write_bytes, 1536);
	CHECK_EQ(st.blk.read_bytes, 1024);
	CHECK_EQ(st.blk.errors, 2);
	free(r.e);
	virtio_blk_close(b);
	remove_image(p);
}

TEST(blk_bad_requests)
{
	const char *p = make_image("badreq.img", IMG_SECTORS * 512);
	struct req r = { 0 };
	uint8_t data[1024], back[1024];
	uint8_t st;
	struct blk *b = open_negotiated(p, "");

	CHECK(b != NULL);
	if (!b)
		return;
	memset(data, 0x3c, sizeof(data));
	/* Beyond the end, straddling it, and sector numbers that overflow. */
	req_build(&r, T_IN, IMG_SECTORS, NULL, 0, 512, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	req_build(&r, T_OUT, IMG_SECTORS - 1, data, 1024, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	req_build(&r, T_OUT, UINT64_MAX, data, 512, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	req_build(&r, T_IN, UINT64_MAX / 512 + 1, NULL, 0, 1024, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	/* Not a multiple of 512. */
	req_build(&r, T_OUT, 0, data, 100, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	req_build(&r, T_IN, 0, NULL, 0, 513, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	/* Data the wrong way: a read with device-readable data, a write with writable data. */
	req_build(&r, T_IN, 0, data, 512, 512, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	req_build(&r, T_OUT, 0, data, 512, 512, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	file_read(p, 0, back, sizeof(back));
	CHECK_EQ(back[0], 0xa5);                        /* nothing was written */
	CHECK_EQ(back[1023], 0xa5);
	/* Header shorter than 16 bytes: IOERR, still answered. */
	req_build(&r, T_IN, 0, NULL, 0, 512, NULL, 0);
	r.e->iov[0].iov_len = 8;
	r.e->out_len = 8;
	st = 0xff;
	CHECK_EQ(virtio_blk_handle(b, r.e, &st), r.in_len);
	CHECK_EQ(st, S_IOERR);
	CHECK_EQ(req_status(&r), S_IOERR);
	/* No writable byte: nothing to answer with, nothing written. */
	req_build(&r, T_IN, 0, NULL, 0, 0, NULL, 0);
	r.e->n_in = 0;
	r.e->in_len = 0;
	r.buf[16] = 0x77;
	CHECK_EQ(virtio_blk_handle(b, r.e, &st), 0);
	CHECK_EQ(r.buf[16], 0x77);
	/* Unknown and unimplemented types. */
	req_build(&r, 99, 0, NULL, 0, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_UNSUPP);
	req_build(&r, 10, 0, NULL, 0, 48, NULL, 0);     /* GET_LIFETIME */
	CHECK_EQ(serve(b, &r), S_UNSUPP);
	req_build(&r, 14, 0, NULL, 0, 0, NULL, 0);      /* SECURE_ERASE */
	CHECK_EQ(serve(b, &r), S_UNSUPP);
	free(r.e);
	virtio_blk_close(b);
	remove_image(p);
}

TEST(blk_readonly)
{
	const char *p = make_image("ro.img", IMG_SECTORS * 512);
	struct req r = { 0 };
	uint8_t data[512], back[512], seg[16] = { 0 };
	struct blk *b = open_negotiated(p, ",readonly");

	CHECK(b != NULL);
	if (!b)
		return;
	memset(data, 0x11, sizeof(data));
	req_build(&r, T_OUT, 0, data, 512, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	seg[8] = 1;                                      /* one sector at sector 0 */
	req_build(&r, T_DISCARD, 0, seg, 16, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	req_build(&r, T_WRITE_ZEROES, 0, seg, 16, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	file_read(p, 0, back, sizeof(back));
	CHECK_EQ(back[0], 0xa5);
	CHECK_EQ(back[511], 0xa5);
	req_build(&r, T_IN, 0, NULL, 0, 512, NULL, 0);
	CHECK_EQ(serve(b, &r), S_OK);
	CHECK_EQ(r.buf[16], 0xa5);
	req_build(&r, T_FLUSH, 0, NULL, 0, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_OK);
	free(r.e);
	virtio_blk_close(b);
	remove_image(p);
}

TEST(blk_flush_get_id)
{
	const char *p = make_image("id.img", IMG_SECTORS * 512);
	struct req r = { 0 };
	uint8_t data[512];
	struct blk *b = open_negotiated(p, ",serial=godwit-disk-1");

	CHECK(b != NULL);
	if (!b)
		return;
	req_build(&r, T_FLUSH, 0, NULL, 0, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_OK);
	req_build(&r, T_FLUSH, 0, data, 512, 0, NULL, 0); /* flush carries no data */
	CHECK_EQ(serve(b, &r), S_IOERR);

	size_t cuts[] = { 16 + 5 };
	req_build(&r, T_GET_ID, 0, NULL, 0, 20, cuts, 1);
	CHECK_EQ(serve(b, &r), S_OK);
	CHECK(!memcmp(r.buf + 16, "godwit-disk-1\0\0\0\0\0\0\0", 20));
	req_build(&r, T_GET_ID, 0, NULL, 0, 32, NULL, 0);   /* longer: zero-padded */
	CHECK_EQ(serve(b, &r), S_OK);
	CHECK(!memcmp(r.buf + 16, "godwit-disk-1", 13));
	CHECK_EQ(r.buf[16 + 31], 0);
	req_build(&r, T_GET_ID, 0, NULL, 0, 19, NULL, 0);   /* too short */
	CHECK_EQ(serve(b, &r), S_IOERR);
	free(r.e);
	virtio_blk_close(b);

	/* Without a serial: 20 zero bytes. */
	b = open_negotiated(p, "");
	CHECK(b != NULL);
	if (b) {
		struct req r2 = { 0 };
		static const uint8_t zero[20];

		req_build(&r2, T_GET_ID, 0, NULL, 0, 20, NULL, 0);
		CHECK_EQ(serve(b, &r2), S_OK);
		CHECK(!memcmp(r2.buf + 16, zero, 20));
		free(r2.e);
		virtio_blk_close(b);
	}
	remove_image(p);
}

static void put_seg(uint8_t *s, uint64_t sector, uint32_t n, uint32_t flags)
{
	for (int i = 0; i < 8; i++)
		s[i] = (uint8_t)(sector >> (8 * i));
	for (int i = 0; i < 4; i++) {
		s[8 + i] = (uint8_t)(n >> (8 * i));
		s[12 + i] = (uint8_t)(flags >> (8 * i));
	}
}

static bool file_is(const char *p, off_t off, size_t len, uint8_t v)
{
	uint8_t buf[4096];

	for (size_t done = 0; done < len; done += sizeof(buf)) {
		size_t n = MIN(sizeof(buf), len - done);

		file_read(p, off + (off_t)done, buf, n);
		for (size_t i = 0; i < n; i++)
			if (buf[i] != v)
				return false;
	}
	return true;
}

static void discard_write_zeroes(void)
{
	const char *p = make_image("dwz.img", IMG_SECTORS * 512);
	struct req r = { 0 };
	uint8_t segs[33 * 16];
	struct virtio_dev *v;
	struct stat st;
	bool discard;
	struct blk *b = open_negotiated(p, "");

	CHECK(b != NULL);
	if (!b)
		return;
	v = virtio_blk_vdev(b);
	discard = v->ops->features(v) & (1ULL << F_DISCARD);

	/* Write zeroes, without and with unmap, two segments in one request. */
	put_seg(segs, 8, 8, 0);
	put_seg(segs + 16, 32, 4, 1);
	req_build(&r, T_WRITE_ZEROES, 0, segs, 32, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_OK);
	CHECK(file_is(p, 8 * 512, 8 * 512, 0));
	CHECK(file_is(p, 32 * 512, 4 * 512, 0));
	CHECK(file_is(p, 7 * 512, 512, 0xa5));
	CHECK(file_is(p, 16 * 512, 16 * 512, 0xa5));
	CHECK(file_is(p, 36 * 512, 512, 0xa5));

	/* Validation: one bad segment fails the request before anything is done. */
	put_seg(segs, 0, 1, 0);
	put_seg(segs + 16, IMG_SECTORS - 1, 2, 0);          /* straddles the end */
	req_build(&r, T_WRITE_ZEROES, 0, segs, 32, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	CHECK(file_is(p, 0, 512, 0xa5));
	put_seg(segs + 16, UINT64_MAX - 1, 4, 0);           /* overflows */
	req_build(&r, T_WRITE_ZEROES, 0, segs, 32, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	put_seg(segs + 16, 0, 1, 0x6);                      /* reserved flags */
	req_build(&r, T_WRITE_ZEROES, 0, segs, 32, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_UNSUPP);
	CHECK(file_is(p, 0, 512, 0xa5));
	req_build(&r, T_WRITE_ZEROES, 0, segs, 17, 0, NULL, 0); /* partial segment */
	CHECK_EQ(serve(b, &r), S_IOERR);
	req_build(&r, T_WRITE_ZEROES, 0, segs, 0, 0, NULL, 0);  /* no segment */
	CHECK_EQ(serve(b, &r), S_IOERR);
	for (int i = 0; i < 33; i++)
		put_seg(segs + 16 * i, 0, 1, 0);
	req_build(&r, T_WRITE_ZEROES, 0, segs, 33 * 16, 0, NULL, 0); /* > max_write_zeroes_seg */
	CHECK_EQ(serve(b, &r), S_IOERR);
	put_seg(segs, 0, (1u << 21) + 1, 0);                    /* > max sectors */
	req_build(&r, T_WRITE_ZEROES, 0, segs, 16, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_IOERR);
	CHECK(file_is(p, 0, 512, 0xa5));

	/* Not negotiated: UNSUPP. */
	v->driver_features &= ~(1ULL << F_WRITE_ZEROES | 1ULL << F_DISCARD);
	put_seg(segs, 0, 1, 0);
	req_build(&r, T_WRITE_ZEROES, 0, segs, 16, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_UNSUPP);
	req_build(&r, T_DISCARD, 0, segs, 16, 0, NULL, 0);
	CHECK_EQ(serve(b, &r), S_UNSUPP);
	CHECK(file_is(p, 0, 512, 0xa5));
	v->driver_features = v->ops->features(v);

	if (discard) {
		put_seg(segs, 40, 8, 0);
		req_build(&r, T_DISCARD, 0, segs, 16, 0, NULL, 0);
		CHECK_EQ(serve(b, &r), S_OK);
		CHECK(file_is(p, 40 * 512, 8 * 512, 0));
		CHECK(file_is(p, 48 * 512, 512, 0xa5));
		CHECK_EQ(stat(p, &st), 0);
		CHECK_EQ(st.st_size, IMG_SECTORS * 512);            /* KEEP_SIZE */
		put_seg(segs, 40, 8, 1);                            /* unmap on discard */
		req_build(&r, T_DISCARD, 0, segs, 16, 0, NULL, 0);
		CHECK_EQ(serve(b, &r), S_UNSUPP);
	} else {
		req_build(&r, T_DISCARD, 0, segs, 16, 0, NULL, 0);
		CHECK_EQ(serve(b, &r), S_UNSUPP);
	}
	free(r.e);
	virtio_blk_close(b);
	remove_image(p);
}

/*
 * On the usual disk file system (fallocate ZERO_RANGE and PUNCH_HOLE) and
 * on tmpfs, which lacks ZERO_RANGE: write-zeroes falls back to writes.
 */
TEST(blk_discard_write_zeroes)
{
	struct stat st;

	discard_write_zeroes();
	if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0) {
		img_dir = "/dev/shm";
		discard_write_zeroes();
		img_dir = "/tmp";
	}
}

TEST(blk_save_load)
{
	const char *p = make_image("state.img", IMG_SECTORS * 512);
	struct state_out o;
	struct state_in in;
	struct blk *a, *b;
	int ret, nbad = 0;

	CHECK_EQ(open_spec(p, ",readonly,serial=S1", &a), 0);
	if (!a)
		return;
	state_out_init(&o);
	CHECK_EQ(virtio_blk_vdev(a)->ops->save(virtio_blk_vdev(a), &o), 0);
	CHECK(o.len > 0);
	/* Same disk: accepted. */
	CHECK_EQ(open_spec(p, ",readonly,serial=S1", &b), 0);
	state_in_init(&in, o.buf, o.len);
	CHECK_EQ(virtio_blk_vdev(b)->ops->load(virtio_blk_vdev(b), &in, 1), 0);
	virtio_blk_close(b);
	/* Different serial, different read-only flag: refused. */
	CHECK_EQ(open_spec(p, ",readonly,serial=S2", &b), 0);
	state_in_init(&in, o.buf, o.len);
	CHECK_EQ(virtio_blk_vdev(b)->ops->load(virtio_blk_vdev(b), &in, 1), -EINVAL);
	virtio_blk_close(b);
	virtio_blk_close(a);
	CHECK_EQ(open_spec(p, ",serial=S1", &b), 0);
	state_in_init(&in, o.buf, o.len);
	CHECK_EQ(virtio_blk_vdev(b)->ops->load(virtio_blk_vdev(b), &in, 1), -EINVAL);
	virtio_blk_close(b);
	/* Truncated streams: a clean error, or a valid prefix of whole fields. */
	CHECK_EQ(open_spec(p, ",readonly,serial=S1", &b), 0);
	for (size_t cut = 1; cut < o.len; cut++) {
		state_in_init(&in, o.buf, cut);
		ret = virtio_blk_vdev(b)->ops->load(virtio_blk_vdev(b), &in, 1);
		CHECK(ret == -EBADMSG || ret == 0);
		nbad += ret == -EBADMSG;
	}
	CHECK(nbad > 0);
	virtio_blk_close(b);
	/* Different capacity: refused. */
	CHECK_EQ(truncate(p, (IMG_SECTORS + 8) * 512), 0);
	CHECK_EQ(open_spec(p, ",readonly,serial=S1", &b), 0);
	state_in_init(&in, o.buf, o.len);
	CHECK_EQ(virtio_blk_vdev(b)->ops->load(virtio_blk_vdev(b), &in, 1), -EINVAL);
	virtio_blk_close(b);
	state_out_free(&o);
	remove_image(p);
}

/* ---- the I/O thread on a real split ring (core.c) in fake guest memory ---- */

#include <pthread.h>
#include <time.h>
#include <sys/eventfd.h>
#include "godwit/vm.h"

#define G_RAM     (1024 * 1024)
#define G_DESC    0x1000
#define G_AVAIL   0x2000
#define G_USED    0x3000
#define G_BUF     0x10000          /* request i: header, data (4 KiB), status */
#define G_QSIZE   16

struct ring_env {
	struct vm vm;
	uint8_t *ram;
	struct blk *b;
	struct virtio_dev *v;
	struct virtqueue *vq;
	uint16_t avail_idx;
	uint16_t next_desc;
};

static uint64_t g_req(unsigned int i) { return G_BUF + (uint64_t)i * 0x2000; }

static void ring_put_desc(struct ring_env *r, uint16_t i, uint64_t addr, uint32_t len,
			  uint16_t flags, uint16_t next)
{
	uint8_t *d = r->ram + G_DESC + 16 * i;

	memcpy(d, &addr, 8);
	memcpy(d + 8, &len, 4);
	memcpy(d + 12, &flags, 2);
	memcpy(d + 14, &next, 2);
}

/* Queue request i (header, 4 KiB of data unless FLUSH, status) and publish it. */
static void ring_submit(struct ring_env *r, unsigned int i, uint32_t type, uint64_t sector)
{
	uint64_t base = g_req(i);
	uint16_t h = r->next_desc, slot;
	uint8_t *hdr = r->ram + base;

	memset(hdr, 0, 16);
	memcpy(hdr, &type, 4);
	memcpy(hdr + 8, &sector, 8);
	r->ram[base + 16 + 4096] = 0xff;
	if (type == T_FLUSH) {
		ring_put_desc(r, h, base, 16, VIRTQ_DESC_F_NEXT, (uint16_t)((h + 1) % G_QSIZE));
		ring_put_desc(r, (uint16_t)((h + 1) % G_QSIZE), base + 16 + 4096, 1,
			      VIRTQ_DESC_F_WRITE, 0);
		r->next_desc = (uint16_t)((h + 2) % G_QSIZE);
	} else {
		ring_put_desc(r, h, base, 16, VIRTQ_DESC_F_NEXT, (uint16_t)((h + 1) % G_QSIZE));
		ring_put_desc(r, (uint16_t)((h + 1) % G_QSIZE), base + 16, 4096,
			      VIRTQ_DESC_F_NEXT | (type == T_IN ? VIRTQ_DESC_F_WRITE : 0),
			      (uint16_t)((h + 2) % G_QSIZE));
		ring_put_desc(r, (uint16_t)((h + 2) % G_QSIZE), base + 16 + 4096, 1,
			      VIRTQ_DESC_F_WRITE, 0);
		r->next_desc = (uint16_t)((h + 3) % G_QSIZE);
	}
	slot = r->avail_idx % G_QSIZE;
	memcpy(r->ram + G_AVAIL + 4 + 2 * slot, &h, 2);
	r->avail_idx++;
	__atomic_store_n((uint16_t *)(void *)(r->ram + G_AVAIL + 2), r->avail_idx, __ATOMIC_RELEASE);
}

static void ring_kick(struct ring_env *r)
{
	uint64_t one = 1;

	CHECK_EQ(write(r->vq->kick_fd, &one, 8), 8);
}

static uint16_t ring_used_idx(struct ring_env *r)
{
	return __atomic_load_n((uint16_t *)(void *)(r->ram + G_USED + 2), __ATOMIC_ACQUIRE);
}

/* Wait up to ms for used idx to reach want; true if it did. */
static bool ring_wait(struct ring_env *r, uint16_t want, int ms)
{
	struct timespec ts = { 0, 1000000 };

	for (int i = 0; i < ms; i++) {
		if (ring_used_idx(r) == want)
			return true;
		nanosleep(&ts, NULL);
	}
	return ring_used_idx(r) == want;
}

static bool page_dirty(struct ring_env *r, uint64_t gpa)
{
	uint64_t pg = gpa / 4096;

	return (r->vm.mem[0].dev_dirty[pg / 64] >> (pg % 64)) & 1;
}

static bool ring_setup(struct ring_env *r, const char *path)
{
	memset(r, 0, sizeof(*r));
	r->ram = aligned_alloc(4096, G_RAM);
	if (!r->ram)
		return false;
	memset(r->ram, 0, G_RAM);
	r->vm.nr_mem = 1;
	r->vm.mem[0] = (struct mem_region){ .gpa = 0, .size = G_RAM, .host = r->ram,
					    .dev_dirty = calloc(G_RAM / 4096 / 64, 8) };
	r->b = open_negotiated(path, "");
	if (!r->b || !r->vm.mem[0].dev_dirty)
		return false;
	r->v = virtio_blk_vdev(r->b);
	r->v->vm = &r->vm;
	r->v->status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
		       VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK;
	r->vq = &r->v->vqs[0];
	*r->vq = (struct virtqueue){
		.vdev = r->v, .index = 0, .max_size = r->v->ops->queue_max_size, .size = G_QSIZE,
		.enabled = true, .desc_gpa = G_DESC, .avail_gpa = G_AVAIL, .used_gpa = G_USED,
		.msix_vector = VIRTIO_MSI_NO_VECTOR,
		.kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
	};
	/* No interrupts wanted: the test polls the used ring. */
	r->ram[G_AVAIL] = VIRTQ_AVAIL_F_NO_INTERRUPT;
	return r->vq->kick_fd >= 0;
}

static void ring_teardown(struct ring_env *r)
{
	if (r->v)
		r->v->ops->reset(r->v);
	if (r->vq && r->vq->kick_fd >= 0)
		close(r->vq->kick_fd);
	virtio_blk_close(r->b);
	free(r->vm.mem[0].dev_dirty);
	free(r->ram);
}

TEST(blk_ring_thread)
{
	const char *p = make_image("ring.img", IMG_SECTORS * 512);
	struct ring_env r;
	uint8_t back[4096];

	if (!ring_setup(&r, p)) {
		CHECK(!"ring set-up");
		ring_teardown(&r);
		remove_image(p);
		return;
	}
	CHECK_EQ(r.v->ops->activate(r.v), 0);
	/* A write, a flush and a read of what was written, in one kick. */
	memset(r.ram + g_req(0) + 16, 0x5a, 4096);
	ring_submit(&r, 0, T_OUT, 8);
	ring_submit(&r, 1, T_FLUSH, 0);
	ring_submit(&r, 2, T_IN, 8);
	ring_kick(&r);
	CHECK(ring_wait(&r, 3, 5000));
	CHECK_EQ(r.ram[g_req(0) + 16 + 4096], S_OK);
	CHECK_EQ(r.ram[g_req(1) + 16 + 4096], S_OK);
	CHECK_EQ(r.ram[g_req(2) + 16 + 4096], S_OK);
	CHECK_EQ(r.ram[g_req(2) + 16], 0x5a);
	CHECK_EQ(r.ram[g_req(2) + 16 + 4095], 0x5a);
	file_read(p, 8 * 512, back, sizeof(back));
	CHECK_EQ(back[0], 0x5a);
	CHECK_EQ(back[4095], 0x5a);
	/* The used entries report data + status for the read, the status for the others. */
	uint32_t len0, len2;
	memcpy(&len0, r.ram + G_USED + 8 + 8 * 0, 4);
	memcpy(&len2, r.ram + G_USED + 8 + 8 * 2, 4);
	CHECK_EQ(len0, 1);
	CHECK_EQ(len2, 4097);
	/* What the device wrote is dirty: the read's data pages, the used ring. */
	CHECK(page_dirty(&r, g_req(2) + 16));
	CHECK(page_dirty(&r, g_req(2) + 16 + 4096));
	CHECK(page_dirty(&r, G_USED));
	CHECK(!page_dirty(&r, G_DESC));

	/* Quiesced: a kicked request waits in the ring; resume serves it. */
	CHECK_EQ(r.v->ops->quiesce(r.v), 0);
	ring_submit(&r, 3, T_IN, 0);
	ring_kick(&r);
	CHECK(!ring_wait(&r, 4, 100));
	{
		uint64_t v;     /* as if a worker stopped mid-batch had consumed the kick */

		CHECK_EQ(read(r.vq->kick_fd, &v, 8), 8);
	}
	CHECK_EQ(r.v->ops->resume(r.v), 0);
	CHECK(ring_wait(&r, 4, 5000));
	CHECK_EQ(r.ram[g_req(3) + 16], 0xa5);

	/* Reset stops serving; activate serves what is waiting without a new kick. */
	r.v->ops->reset(r.v);
	ring_submit(&r, 4, T_IN, 8);
	ring_kick(&r);
	CHECK(!ring_wait(&r, 5, 100));
	{
		uint64_t v;

		CHECK_EQ(read(r.vq->kick_fd, &v, 8), 8);
	}
	CHECK_EQ(r.v->ops->activate(r.v), 0);
	CHECK(ring_wait(&r, 5, 5000));
	CHECK_EQ(r.ram[g_req(4) + 16 + 4096], S_OK);
	CHECK_EQ(r.ram[g_req(4) + 16], 0x5a);
	ring_teardown(&r);
	remove_image(p);
}
