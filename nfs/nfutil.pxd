# Small packet helpers the NFs of nfs/ share: big-endian reads and writes,
# the L4 header's place, and incremental checksum updates (RFC 1624) so an
# NF that rewrites an address or port never re-sums the whole packet.
from libc.stdint cimport uint8_t, uint16_t, uint32_t


cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]

cdef inline uint32_t rd32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline void wr16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xff

cdef inline void wr32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xff
    p[2] = (v >> 8) & 0xff
    p[3] = v & 0xff


cdef inline uint16_t csum_step(uint16_t csum, uint16_t old, uint16_t new) noexcept nogil:
    """HC' = ~(~HC + ~m + m') (RFC 1624, eqn. 3), on host-order words."""
    cdef uint32_t s = (<uint32_t>(~csum & 0xffff)) + (~old & 0xffff) + new
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return <uint16_t>(~s & 0xffff)


cdef inline void csum_fix16(uint8_t *csum_p, uint16_t old, uint16_t new, bint udp) noexcept nogil:
    """Update the checksum at csum_p for a 16-bit field changed old -> new.
    UDP: a zero checksum means "none" and stays zero; a result of zero is
    sent as 0xffff."""
    cdef uint16_t c = rd16(csum_p)
    if udp and c == 0:
        return
    c = csum_step(c, old, new)
    if udp and c == 0:
        c = 0xffff
    wr16(csum_p, c)


cdef inline void csum_fix32(uint8_t *csum_p, uint32_t old, uint32_t new, bint udp) noexcept nogil:
    cdef uint16_t c = rd16(csum_p)
    if udp and c == 0:
        return
    c = csum_step(c, old >> 16, new >> 16)
    c = csum_step(c, old & 0xffff, new & 0xffff)
    if udp and c == 0:
        c = 0xffff
    wr16(csum_p, c)


cdef inline int l4_offset(const uint8_t *d, uint32_t length, uint16_t l3) noexcept nogil:
    """Offset of the L4 header of an IPv4 packet whose IP header is at l3,
    or -1 for a non-first fragment or a truncated header."""
    cdef uint32_t ihl
    if length < <uint32_t>l3 + 20 or (d[l3] >> 4) != 4:
        return -1
    if (rd16(d + l3 + 6) & 0x1fff) != 0:
        return -1
    ihl = (d[l3] & 0x0f) * 4
    if length < l3 + ihl:
        return -1
    return l3 + ihl


cdef inline void set_ip(uint8_t *d, int l3, int l4, uint32_t length, int addr_off,
                        uint32_t new) noexcept nogil:
    """Rewrite the IPv4 source (addr_off 12) or destination (16) address,
    fixing the IP checksum and the TCP/UDP checksum over the pseudo-header."""
    cdef uint8_t proto = d[l3 + 9]
    cdef uint32_t old = rd32(d + l3 + addr_off)
    wr32(d + l3 + addr_off, new)
    csum_fix32(d + l3 + 10, old, new, False)
    if l4 < 0:
        return
    if proto == 6 and length >= <uint32_t>l4 + 18:
        csum_fix32(d + l4 + 16, old, new, False)
    elif proto == 17 and length >= <uint32_t>l4 + 8:
        csum_fix32(d + l4 + 6, old, new, True)


cdef inline void set_port(uint8_t *d, int l3, int l4, uint32_t length, int port_off,
                          uint16_t new) noexcept nogil:
    """Rewrite the TCP/UDP source (port_off 0) or destination (2) port."""
    cdef uint8_t proto = d[l3 + 9]
    cdef uint16_t old = rd16(d + l4 + port_off)
    wr16(d + l4 + port_off, new)
    if proto == 6 and length >= <uint32_t>l4 + 18:
        csum_fix16(d + l4 + 16, old, new, False)
    elif proto == 17 and length >= <uint32_t>l4 + 8:
        csum_fix16(d + l4 + 6, old, new, True)


cdef inline int proto_slot(uint8_t proto, int other) noexcept nogil:
    """0 for TCP, 1 for UDP, 2 for ICMP, `other` for the rest: the index of
    per-protocol tables (port pools, timeouts)."""
    if proto == 6:
        return 0
    if proto == 17:
        return 1
    if proto == 1:
        return 2
    return other
