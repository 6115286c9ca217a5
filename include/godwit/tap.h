/*
 * tap.h - the host side of a virtio-net NIC: the `--net` spec and MAC
 * addresses, the TAP device it is backed by (/dev/net/tun with
 * IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a 12-byte virtio 1.x header in front
 * of every frame), and the announcement a NIC makes after it moved
 * (live migration).
 *
 * A TAP that did not exist is created by tap_open() and is not persistent:
 * the kernel removes it when its last fd closes, so it goes away when
 * godwit exits, however it exits.  A TAP that existed (a persistent one, made
 * with `ip tuntap add`) is attached to and left in place.
 */
#ifndef GODWIT_TAP_H
#define GODWIT_TAP_H

#include <net/if.h>
#include <stddef.h>

#include "godwit/common.h"

#define TAP_VNET_HDR_LEN 12        /* struct virtio_net_hdr_v1, with num_buffers */
#define TAP_NAME_MAX (IFNAMSIZ - 1) /* 15 characters */

/* ---- the --net spec -------------------------------------------------------------- */

struct tap_spec {
	char tap[IFNAMSIZ];         /* tap=NAME */
	uint8_t mac[6];             /* mac=MAC, valid if has_mac */
	bool has_mac;
};

/*
 * tap_spec_parse - parse `tap=NAME[,mac=MAC]` strictly: known keys once
 * each, a valid interface name of at most 15 characters, a unicast MAC.
 * Returns 0, or -EINVAL with a message for the user in err (errlen bytes).
 */
int tap_spec_parse(const char *spec, struct tap_spec *out, char *err, size_t errlen) __must_check;
/*
 * tap_mac_parse - parse "xx:xx:xx:xx:xx:xx" (six pairs of hex digits).
 * Returns 0, -EINVAL for bad syntax, -EADDRNOTAVAIL for a multicast,
 * broadcast or all-zero address (a NIC cannot own those).
 */
int tap_mac_parse(const char *s, uint8_t mac[6]) __must_check;
/* Format mac as "xx:xx:xx:xx:xx:xx" into buf (at least 18 bytes). */
void tap_mac_format(const uint8_t mac[6], char *buf);
/*
 * tap_mac_default - the MAC of a VM's NIC number `index` (0 for its first
 * --net) when none is given: 02:xx:xx:xx:xx:xx (locally administered,
 * unicast), the rest a hash of the VM's UUID and index.  Stable: the same
 * VM (same --name) gets the same MACs on every run and after migrating.
 */
void tap_mac_default(const uint8_t uuid[16], unsigned int index, uint8_t mac[6]);

/* ---- the TAP device -------------------------------------------------------------- */

struct tap {
	int fd;                     /* /dev/net/tun, non-blocking; -1 when closed */
	char name[IFNAMSIZ];
	bool created;               /* tap_open() created it: it vanishes with fd */
	unsigned int mtu;
};

/*
 * tap_open - open TAP `name`, creating (and bringing up) it if no interface
 * of that name exists, and set its virtio header size to 12 bytes with no
 * offloads enabled yet.  Returns 0, or -errno with the reason for the user
 * in err: busy (another process has it), permission, not a TAP device, ...
 */
int tap_open(struct tap *t, const char *name, char *err, size_t errlen) __must_check;
/*
 * tap_set_offload - what frames the kernel may hand us (TUNSETOFFLOAD):
 * TUN_F_CSUM (partial checksums), TUN_F_TSO4, TUN_F_TSO6 (GSO frames, only
 * with TUN_F_CSUM).  Returns 0 or -errno.
 */
int tap_set_offload(struct tap *t, unsigned int tun_flags) __must_check;
/*
 * tap_close - close the fd: a TAP we created disappears; one we attached to
 * stays, its offload flags cleared.  Harmless on a closed tap.
 */
void tap_close(struct tap *t);

/* ---- announcing a NIC after it moved ---------------------------------------------- */

#define TAP_RARP_LEN 60             /* a minimum-size Ethernet frame, without FCS */
/* Build the RARP request ("reverse request", like QEMU's announce) for mac. */
void tap_build_rarp(const uint8_t mac[6], uint8_t frame[TAP_RARP_LEN]);
/*
 * tap_announce - send a gratuitous RARP from mac (the guest's NIC) out of
 * the TAP, broadcast, so switches and bridges learn where the MAC now is.
 * Call it a few times (QEMU: 5, 50 ms apart growing by 100 ms) after a
 * migration, before or while the guest runs.  Thread-safe against the
 * datapath (one write() per frame).  Returns 0 or -errno.
 */
int tap_announce(struct tap *t, const uint8_t mac[6]) __must_check;

struct virtio_dev;
/*
 * virtio_net_announce - tap_announce() for a virtio-net NIC (the MAC its
 * guest has) out of the NIC's TAP (src/devices/virtio/net.c).  For the
 * migration destination, once the guest runs there.  Returns 0, -EINVAL if
 * vdev is not a virtio-net device, or -errno from the TAP.
 */
int virtio_net_announce(struct virtio_dev *vdev) __must_check;

#endif
