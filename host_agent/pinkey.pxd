# cython: language_level=3
"""The pin table's key (host_agent/manager.pyx keeps flows' picks and ways
back in a table on it, host_agent/aging.pxd): what a pin is for and how a
packet gives it.

The pin table (one per host) keeps what a flow must keep while
it lives: the host a forward remote hop picked for it, the host its reply
goes back to on a reverse hop ("reverse" learns, "pinned" looks up), and,
for an end with "reply", the reverse SPI its untagged replies enter.  Keys
are read from the packet's bytes when they are used (NFs rewrite headers).
Entries idle longer than `pin_idle_seconds` are deleted by a sweep of a
few positions per loop iteration.

Not here: the table itself and its aging (manager.pyx, host_agent/aging.pxd).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset
from dpdk.rte_mbuf cimport rte_mbuf
from dpdk.rte_hash cimport rte_hash_crc, rte_hash_crc_4byte
from nflib.nf cimport onvm_meta, onvm_mtod


# A pin's key, also the host flow table's (with SPI and SI 0): (SPI, SI)
# of the hop, or (0, 0) for an end's reply pin or a flow, and the flow's
# 5-tuple as the packet's bytes give it, in network byte order: whole
# IPv6 addresses (IPv4 ones in the first 4 bytes, the rest 0), ports 0 but
# for TCP, UDP and SCTP.  48 bytes, compared a word at a time
# (keytab.pxd kt_same).
cdef struct pin_key_t:
    uint32_t spi
    uint8_t si
    uint8_t proto
    uint8_t family
    uint8_t pad
    uint16_t src_port
    uint16_t dst_port
    uint8_t src_ip[16]
    uint8_t dst_ip[16]
    uint32_t pad2


cdef inline bint pin_key_of(rte_mbuf *m, onvm_meta *meta, uint32_t spi, uint8_t si,
                            bint reverse, pin_key_t *k) noexcept nogil:
    """The pin key of the packet as its bytes are now (`reverse`: of its
    reply); False if it has none (not IP, or cut short)."""
    cdef uint8_t *d = onvm_mtod(m)
    cdef uint8_t *ip = d + meta.l3_off
    cdef uint8_t *l4
    cdef uint32_t alen, at
    if meta.key.family == 4:
        if m.data_len < meta.l3_off + 20 or (ip[0] >> 4) != 4:
            return False
        alen, at = 4, 12
    elif meta.key.family == 6:
        if m.data_len < meta.l3_off + 40 or (ip[0] >> 4) != 6:
            return False
        alen, at = 16, 8
    else:
        return False
    memset(k, 0, sizeof(pin_key_t))
    k.spi = spi
    k.si = si
    k.proto = meta.key.proto
    k.family = meta.key.family
    memcpy(k.src_ip, ip + (at + alen if reverse else at), alen)
    memcpy(k.dst_ip, ip + (at if reverse else at + alen), alen)
    if meta.l4_off and (k.proto == 6 or k.proto == 17 or k.proto == 132) \
            and m.data_len >= meta.l4_off + 4:
        l4 = d + meta.l4_off
        memcpy(&k.src_port, l4 + (2 if reverse else 0), 2)
        memcpy(&k.dst_port, l4 + (0 if reverse else 2), 2)
    return True


cdef inline uint32_t flow_hash_words(uint32_t proto_family, uint32_t src, uint32_t dst,
                                     uint32_t ports) noexcept nogil:
    """A flow's hash (the parser's meta.flow_hash, and the host flow
    table's): CRC32C of the protocol and family, the addresses (IPv4's
    themselves, IPv6's CRC32C digests), then the ports, 4 bytes at a time
    as they lie in memory."""
    cdef uint32_t crc = rte_hash_crc_4byte(proto_family, 0)
    crc = rte_hash_crc_4byte(src, crc)
    crc = rte_hash_crc_4byte(dst, crc)
    return rte_hash_crc_4byte(ports, crc)


cdef inline uint32_t flow_key_hash(const void *key, uint32_t key_len,
                                   uint32_t init_val) noexcept nogil:
    """The host flow table's hash function (its key table's hash_func,
    host_agent/keytab.pxd) of a pin key with SPI and SI 0: the parser's
    flow hash of the same packet (parser.pxd key_hash), so the loop looks
    flows up with the hash the parser already has (kt_lookup_bulk)."""
    cdef const pin_key_t *k = <const pin_key_t *>key
    cdef uint32_t src, dst, ports
    if k.family == 6:
        src = rte_hash_crc(k.src_ip, 16, 0)
        dst = rte_hash_crc(k.dst_ip, 16, 0)
    else:
        memcpy(&src, k.src_ip, 4)
        memcpy(&dst, k.dst_ip, 4)
    memcpy(&ports, &k.src_port, 4)
    return flow_hash_words(<uint32_t>k.proto | (<uint32_t>k.family << 8), src, dst, ports)
