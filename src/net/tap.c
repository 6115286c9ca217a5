/*
 * tap.c - the host side of a virtio-net NIC (tap.h): the `--net` spec, MAC
 * addresses (parsed, formatted, derived from the VM's UUID), TAP devices
 * (open or create through /dev/net/tun, virtio header size, offloads) and
 * the gratuitous RARP a NIC sends after it moved.
 *
 * A created TAP is deliberately not made persistent (no TUNSETPERSIST): the
 * kernel deletes it when its last fd is closed, so even a godwit killed with
 * SIGKILL leaves no interface behind.  The fd is O_CLOEXEC so that no child
 * process keeps it alive.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <linux/if_tun.h>

#include "godwit/log.h"
#include "godwit/tap.h"

/* ---- the --net spec and MAC addresses --------------------------------------------- */

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int tap_mac_parse(const char *s, uint8_t mac[6])
{
	uint8_t m[6];

	if (!s)
		return -EINVAL;
	for (int i = 0; i < 6; i++) {
		int hi = hexval((unsigned char)s[0]);
		int lo = hi < 0 ? -1 : hexval((unsigned char)s[1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		m[i] = (uint8_t)(hi << 4 | lo);
		s += 2;
		if (i < 5 && *s++ != ':')
			return -EINVAL;
	}
	if (*s)
		return -EINVAL;
	/* Multicast (broadcast included) or 00:00:00:00:00:00: never a NIC's own. */
	if ((m[0] & 1) || !(m[0] | m[1] | m[2] | m[3] | m[4] | m[5]))
		return -EADDRNOTAVAIL;
	memcpy(mac, m, 6);
	return 0;
}

void tap_mac_format(const uint8_t mac[6], char *buf)
{
	snprintf(buf, 18, "%02x:%02x:%02x:%02x:%02x:%02x",
		 mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
}

/* SplitMix64's finalizer: every input bit reaches every output bit. */
static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

/*
 * FNV-1a over a domain tag, the UUID and the index (little-endian), then
 * mixed.  The result is part of the guest's view (its MAC): never change it.
 */
void tap_mac_default(const uint8_t uuid[16], unsigned int index, uint8_t mac[6])
{
	static const char tag[] = "godwit-net-mac";
	uint64_t h = 0xcbf29ce484222325ULL;
	uint8_t idx[4] = { index, index >> 8, index >> 16, index >> 24 };

	for (size_t i = 0; i < sizeof(tag) - 1; i++)
		h = (h ^ (uint8_t)tag[i]) * 0x100000001b3ULL;
	for (size_t i = 0; i < 16; i++)
		h = (h ^ uuid[i]) * 0x100000001b3ULL;
	for (size_t i = 0; i < 4; i++)
		h = (h ^ idx[i]) * 0x100000001b3ULL;
	h = mix64(h);
	mac[0] = 0x02;                  /* locally administered, unicast */
	for (int i = 1; i < 6; i++)
		mac[i] = (uint8_t)(h >> (8 * (i - 1)));
}

/* Linux's dev_valid_name(), and no '%' (the kernel would pick the name). */
static const char *tap_name_invalid(const char *name, size_t len)
{
	if (len == 0)
		return "is empty";
	if (len > TAP_NAME_MAX)
		return "is longer than 15 characters (IFNAMSIZ)";
	if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
		return "is not a valid interface name";
	for (size_t i = 0; i < len; i++) {
		unsigned char c = name[i];

		if (c <= ' ' || c == 0x7f || c == '/' || c == ':' || c == '%' || c == '=')
			return "is not a valid interface name (no spaces, '/', ':', '%' or '=')";
	}
	return NULL;
}

int tap_spec_parse(const char *spec, struct tap_spec *out, char *err, size_t errlen)
{
	const char *p = spec;
	bool have_tap = false;

	memset(out, 0, sizeof(*out));
	if (!spec || !*spec) {
		snprintf(err, errlen, "empty --net spec (expected tap=NAME[,mac=MAC])");
		return -EINVAL;
	}
	while (*p) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		const char *eq = memchr(p, '=', len);
		size_t klen = eq ? (size_t)(eq - p) : len;
		const char *val = eq ? eq + 1 : NULL;
		size_t vlen = eq ? len - klen - 1 : 0;

		if (len == 0) {
			snprintf(err, errlen, "empty option in --net spec '%s'", spec);
			return -EINVAL;
		}
		if (klen == 3 && !memcmp(p, "tap", 3)) {
			const char *why;

			if (have_tap) {
				snprintf(err, errlen, "tap= given twice in --net spec '%s'", spec);
				return -EINVAL;
			}
			if (!val) {
				snprintf(err, errlen, "tap needs a value (tap=NAME) in --net spec '%s'", spec);
				return -EINVAL;
			}
			why = tap_name_invalid(val, vlen);
			if (why) {
				snprintf(err, errlen, "TAP name '%.*s' %s", (int)vlen, val, why);
				return -EINVAL;
			}
			memcpy(out->tap, val, vlen);
			out->tap[vlen] = '\0';
			have_tap = true;
		} else if (klen == 3 && !memcmp(p, "mac", 3)) {
			char buf[32];
			int ret;

			if (out->has_mac) {
				snprintf(err, errlen, "mac= given twice in --net spec '%s'", spec);
				return -EINVAL;
			}
			if (!val || vlen >= sizeof(buf)) {
				snprintf(err, errlen, "mac needs a value (mac=xx:xx:xx:xx:xx:xx) in --net spec '%s'",
					 spec);
				return -EINVAL;
			}
			memcpy(buf, val, vlen);
			buf[vlen] = '\0';
			ret = tap_mac_parse(buf, out->mac);
			if (ret == -EADDRNOTAVAIL) {
				snprintf(err, errlen, "MAC %s is multicast, broadcast or zero: a NIC needs a unicast address",
					 buf);
				return -EINVAL;
			} else if (ret) {
				snprintf(err, errlen, "bad MAC '%s' (expected six hex pairs, xx:xx:xx:xx:xx:xx)", buf);
				return -EINVAL;
			}
			out->has_mac = true;
		} else {
			snprintf(err, errlen, "unknown option '%.*s' in --net spec '%s' (known: tap=NAME, mac=MAC)",
				 (int)klen, p, spec);
			return -EINVAL;
		}
		if (!end)
			break;
		p = end + 1;
		if (!*p) {
			snprintf(err, errlen, "trailing ',' in --net spec '%s'", spec);
			return -EINVAL;
		}
	}
	if (!have_tap) {
		snprintf(err, errlen, "--net spec '%s' lacks tap=NAME", spec);
		return -EINVAL;
	}
	return 0;
}

/* ---- the TAP device ---------------------------------------------------------------- */

/* The IFF_* flags of an existing tun/tap device, or -1 if it is not one. */
static long tap_tun_flags(const char *name)
{
	char path[64], buf[32];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/sys/class/net/%s/tun_flags", name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	return strtol(buf, NULL, 0);
}

/* Why TUNSETIFF failed with errno `e`, in the user's terms. */
static void tap_explain(const char *name, bool existed, int e, char *err, size_t errlen)
{
	long flags;

	switch (e) {
	case EBUSY:
		snprintf(err, errlen, "TAP %s is busy: it is open already (another VM, or another --net)",
			 name);
		return;
	case EPERM:
	case EACCES:
		if (existed)
			snprintf(err, errlen, "no permission to attach to TAP %s (it belongs to another user; "
				 "or run with CAP_NET_ADMIN)", name);
		else
			snprintf(err, errlen, "no permission to create TAP %s (needs CAP_NET_ADMIN, "
				 "or create it first: ip tuntap add %s mode tap user USER)", name, name);
		return;
	case EINVAL:
		if (!existed)
			break;
		flags = tap_tun_flags(name);
		if (flags < 0)
			snprintf(err, errlen, "interface %s exists and is not a TAP device", name);
		else if (flags & IFF_TUN)
			snprintf(err, errlen, "interface %s is a TUN device, not a TAP", name);
		else if (flags & IFF_MULTI_QUEUE)
			snprintf(err, errlen, "TAP %s is multi-queue, which godwit does not use", name);
		else
			break;
		return;
	}
	snprintf(err, errlen, "cannot %s TAP %s: %s", existed ? "attach to" : "create", name, strerror(e));
}

int tap_open(struct tap *t, const char *name, char *err, size_t errlen)
{
	struct ifreq ifr;
	bool existed;
	int sock = -1, hdr = TAP_VNET_HDR_LEN, le = 1, ret;

	memset(t, 0, sizeof(*t));
	t->fd = -1;
	if (strlen(name) > TAP_NAME_MAX) {
		snprintf(err, errlen, "TAP name '%s' is longer than 15 characters", name);
		return -ENAMETOOLONG;
	}
	snprintf(t->name, sizeof(t->name), "%s", name);
	existed = if_nametoindex(name) != 0;

	t->fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (t->fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot open /dev/net/tun: %s", strerror(errno));
		return ret;
	}
	memset(&ifr, 0, sizeof(ifr));
	memcpy(ifr.ifr_name, t->name, sizeof(t->name));
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	if (ioctl(t->fd, TUNSETIFF, &ifr) < 0) {
		ret = -errno;
		tap_explain(name, existed, errno, err, errlen);
		goto err_close;
	}
	/* A created TAP: nobody but us had it; an existing one is what it was. */
	t->created = !existed;
	if (ioctl(t->fd, TUNSETVNETHDRSZ, &hdr) < 0) {
		ret = -errno;
		snprintf(err, errlen, "TAP %s: cannot set a %d-byte virtio header: %s", name, hdr,
			 strerror(errno));
		goto err_close;
	}
	/* virtio 1.x headers are little-endian; a no-op on x86, refused by old kernels. */
	(void)!ioctl(t->fd, TUNSETVNETLE, &le);
	if (ioctl(t->fd, TUNSETOFFLOAD, 0UL) < 0) {
		ret = -errno;
		snprintf(err, errlen, "TAP %s: TUNSETOFFLOAD: %s", name, strerror(errno));
		goto err_close;
	}

	sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0) {
		ret = -errno;
		snprintf(err, errlen, "TAP %s: socket: %s", name, strerror(errno));
		goto err_close;
	}
	memset(&ifr, 0, sizeof(ifr));
	memcpy(ifr.ifr_name, t->name, sizeof(t->name));
	t->mtu = ioctl(sock, SIOCGIFMTU, &ifr) == 0 && ifr.ifr_mtu > 0 ? (unsigned int)ifr.ifr_mtu : 1500;
	if (t->created) {
		memset(&ifr, 0, sizeof(ifr));
		memcpy(ifr.ifr_name, t->name, sizeof(t->name));
		if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0 ||
		    (ifr.ifr_flags |= IFF_UP, ioctl(sock, SIOCSIFFLAGS, &ifr) < 0)) {
			ret = -errno;
			snprintf(err, errlen, "TAP %s: cannot bring it up: %s", name, strerror(errno));
			goto err_sock;
		}
	}
	close(sock);
	log_debug("%s: TAP %s %s, MTU %u", __func__, name, t->created ? "created" : "attached",
		  t->mtu);
	return 0;

err_sock:
	close(sock);
err_close:
	close(t->fd);
	t->fd = -1;
	return ret;
}

int tap_set_offload(struct tap *t, unsigned int tun_flags)
{
	if (ioctl(t->fd, TUNSETOFFLOAD, (unsigned long)tun_flags) < 0)
		return -errno;
	return 0;
}

void tap_close(struct tap *t)
{
	if (t->fd < 0)
		return;
	/* A TAP that stays keeps its offload flags: leave it as a plain one for the next user. */
	if (!t->created)
		(void)!ioctl(t->fd, TUNSETOFFLOAD, 0UL);
	close(t->fd);
	t->fd = -1;
}

/* ---- announce ------------------------------------------------------------------------ */

void tap_build_rarp(const uint8_t mac[6], uint8_t f[TAP_RARP_LEN])
{
	memset(f, 0, TAP_RARP_LEN);
	memset(f, 0xff, 6);             /* to: broadcast */
	memcpy(f + 6, mac, 6);          /* from: the NIC */
	f[12] = 0x80; f[13] = 0x35;     /* ETH_P_RARP */
	f[14] = 0; f[15] = 1;           /* hardware: Ethernet */
	f[16] = 0x08; f[17] = 0x00;     /* protocol: IPv4 */
	f[18] = 6; f[19] = 4;           /* address lengths */
	f[20] = 0; f[21] = 3;           /* reverse request */
	memcpy(f + 22, mac, 6);         /* sender hardware address; sender IP 0 */
	memcpy(f + 32, mac, 6);         /* target hardware address; target IP 0 */
}

int tap_announce(struct tap *t, const uint8_t mac[6])
{
	uint8_t hdr[TAP_VNET_HDR_LEN] = { 0 };  /* no offload: a plain frame */
	uint8_t frame[TAP_RARP_LEN];
	struct iovec iov[2] = {
		{ .iov_base = hdr, .iov_len = sizeof(hdr) },
		{ .iov_base = frame, .iov_len = sizeof(frame) },
	};
	ssize_t n;

	if (t->fd < 0)
		return -EBADF;
	tap_build_rarp(mac, frame);
	n = writev(t->fd, iov, 2);
	if (n < 0)
		return -errno;
	return n == (ssize_t)(sizeof(hdr) + sizeof(frame)) ? 0 : -EIO;
}
