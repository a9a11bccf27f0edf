# cython: language_level=3
"""The pin table's key (host_agent/manager.pyx keeps flows' picks and ways
back in an rte_hash on it): what a pin is for and how a packet gives it.

Not here: the table itself and its aging (manager.pyx, host_agent/aging.pxd).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset
from dpdk.rte_mbuf cimport rte_mbuf
from nflib.nf cimport onvm_meta, onvm_mtod


# A pin's key: (SPI, SI) of the hop, or (0, 0) for an end's reply pin, and
# the flow's IPv4 5-tuple in network byte order (ports 0 but for TCP, UDP).
cdef struct pin_key_t:
    uint32_t spi
    uint8_t si
    uint8_t proto
    uint16_t pad
    uint32_t src_ip
    uint32_t dst_ip
    uint16_t src_port
    uint16_t dst_port


cdef inline bint pin_key_of(rte_mbuf *m, onvm_meta *meta, uint32_t spi, uint8_t si,
                            bint reverse, pin_key_t *k) noexcept nogil:
    """The pin key of the packet as its bytes are now (`reverse`: of its
    reply); False if it has none (not IPv4)."""
    cdef uint8_t *d = onvm_mtod(m)
    cdef uint8_t *ip = d + meta.l3_off
    cdef uint8_t *l4
    if meta.key.family != 4 or m.data_len < meta.l3_off + 20 or (ip[0] >> 4) != 4:
        return False
    memset(k, 0, sizeof(pin_key_t))
    k.spi = spi
    k.si = si
    k.proto = ip[9]
    memcpy(&k.src_ip, ip + (16 if reverse else 12), 4)
    memcpy(&k.dst_ip, ip + (12 if reverse else 16), 4)
    if meta.l4_off and (k.proto == 6 or k.proto == 17) and m.data_len >= meta.l4_off + 4:
        l4 = d + meta.l4_off
        memcpy(&k.src_port, l4 + (2 if reverse else 0), 2)
        memcpy(&k.dst_port, l4 + (0 if reverse else 2), 2)
    return True
