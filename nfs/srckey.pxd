# A packet's source address, whole (IPv4 or IPv6), and a table of sources
# for the NFs that keep state per source (nfs/ratelimit.pyx's buckets,
# nfs/ddos.pyx's block list).  meta.key.src holds only a 32-bit CRC digest
# of an IPv6 address, which an attacker can make equal to a victim's
# (tests/ipv6crc.py), so a per-source table keyed by it lets one address
# act for another; the address here is read from the packet's bytes as
# they are now (an NF before on the same host may have rewritten the
# source: nfs/pkttuple.pxd).
#
# A source table is two flow tables (nflib/flowtab.pxd), one per family:
# IPv4 keyed by the 4 address bytes (as cheap as the digest was: a 20-byte
# key with the family costs IPv4 some 20 cycles a packet in rte_hash),
# IPv6 by the 16 (rte_hash's 16-byte compare).  Their positions are one
# range, the IPv6 table's after the IPv4 one's (`base6`), so an NF keeps
# its per-source values in one array of srctab_size() entries.
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t
from libc.string cimport memcpy
from nflib.nf cimport (rte_mbuf, onvm_meta, onvm_mtod, ftab_t, ftab_find, ftab_insert)


cdef struct src_key_t:
    uint8_t family          # 4 or 6
    uint8_t addr[16]        # network order; IPv4 in the first 4 (the rest unread)


cdef inline bint packet_src(rte_mbuf *m, const onvm_meta *meta, src_key_t *k) noexcept nogil:
    """The packet's source address; False if it is neither IPv4 nor IPv6
    (or cut short: the parser lets neither through)."""
    cdef const uint8_t *d = onvm_mtod(m)
    cdef uint32_t l3 = meta.l3_off
    if meta.key.family == 4 and m.data_len >= l3 + 20:
        memcpy(k.addr, d + l3 + 12, 4)
    elif meta.key.family == 6 and m.data_len >= l3 + 40:
        memcpy(k.addr, d + l3 + 8, 16)
    else:
        return False
    k.family = meta.key.family
    return True


cdef inline uint32_t src_len(const src_key_t *k) noexcept nogil:
    """Bytes of the address: 4 or 16."""
    return 4 if k.family == 4 else 16


cdef struct srctab_t:
    ftab_t *v4              # key: the 4 bytes of an IPv4 address
    ftab_t *v6              # key: the 16 of an IPv6 one
    uint32_t base6          # position of the IPv6 table's first entry


cdef inline int32_t srctab_find(srctab_t *t, const src_key_t *k, uint64_t now) noexcept nogil:
    """Position of source k's live entry, or -1 (ftab_find)."""
    cdef int32_t pos
    if k.family == 4:
        return ftab_find(t.v4, k.addr, now)
    pos = ftab_find(t.v6, k.addr, now)
    return pos if pos < 0 else pos + <int32_t>t.base6


cdef inline int32_t srctab_insert(srctab_t *t, const src_key_t *k, uint64_t expires,
                                  uint64_t now) noexcept nogil:
    """Add (or refresh) source k's entry; -1 if its family's table is full
    (ftab_insert)."""
    cdef int32_t pos
    if k.family == 4:
        return ftab_insert(t.v4, k.addr, expires, now)
    pos = ftab_insert(t.v6, k.addr, expires, now)
    return pos if pos < 0 else pos + <int32_t>t.base6


cdef inline uint64_t *srctab_expires(srctab_t *t, int32_t pos) noexcept nogil:
    """Where the expiry (TSC) of position pos's entry is kept."""
    if <uint32_t>pos < t.base6:
        return &t.v4.expires[pos]
    return &t.v6.expires[<uint32_t>pos - t.base6]


# `entries` sources of each family; srctab_size: the positions (for the
# NF's arrays); srctab_live: live entries of both; srctab_entries: [(pos,
# address text, seconds left)] of the live ones (read while the NF does
# not run).
cdef int srctab_init(srctab_t *t, str what, uint32_t entries) except -1
cdef void srctab_free(srctab_t *t) noexcept
cdef uint32_t srctab_size(const srctab_t *t) noexcept nogil
cdef uint32_t srctab_live(srctab_t *t, uint64_t now) noexcept nogil
cdef list srctab_entries(srctab_t *t)

# The address as text ("192.0.2.1", "2001:db8::1"), as the NFs' counters
# and their exchanged block lists (nflib.sharing) give it; src_from takes
# that text back, or an ipaddress object, or (before issue 12 the block
# lists carried IPv4 sources only) the IPv4 address bytes read as a
# little-endian number.  ValueError naming the value otherwise.
cdef object src_text(const src_key_t *k)
cdef int src_from(object src, src_key_t *k) except -1
