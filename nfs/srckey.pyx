# cython: language_level=3
"""Source tables and the text of whole source addresses (nfs/srckey.pxd)."""
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t, intptr_t
from libc.string cimport memcpy, memset
from nflib.nf cimport ftab_new, ftab_free, ftab_live, rte_get_tsc_cycles
from nfs.pkttuple cimport live_entries

import ipaddress


cdef int srctab_init(srctab_t *t, str what, uint32_t entries) except -1:
    t.v4 = ftab_new(what + "4", entries, 4)
    t.v6 = ftab_new(what + "6", entries, 16)
    t.base6 = entries + 1
    return 0


cdef void srctab_free(srctab_t *t) noexcept:
    ftab_free(t.v4)
    ftab_free(t.v6)
    t.v4 = t.v6 = NULL


cdef uint32_t srctab_size(const srctab_t *t) noexcept nogil:
    return t.base6 + t.v6.entries + 1


cdef uint32_t srctab_live(srctab_t *t, uint64_t now) noexcept nogil:
    return ftab_live(t.v4, now) + ftab_live(t.v6, now)


cdef list srctab_entries(srctab_t *t):
    cdef src_key_t k
    out = []
    for family, table, base in ((4, <intptr_t>t.v4, 0), (6, <intptr_t>t.v6, t.base6)):
        k.family = family
        for pos, key, left in live_entries(<ftab_t *><intptr_t>table):
            memcpy(k.addr, <const void *><intptr_t>key, src_len(&k))
            out.append((pos + base, src_text(&k), left))
    return out


cdef object src_text(const src_key_t *k):
    cdef bytes b = (<const char *>k.addr)[:src_len(k)]
    return str(ipaddress.ip_address(b))


cdef int src_from(object src, src_key_t *k) except -1:
    cdef bytes packed
    if isinstance(src, int) and not isinstance(src, bool):
        if not 0 <= src < 2 ** 32:
            raise ValueError(f"source {src}: a number is an IPv4 address (0 .. 2^32-1)")
        packed = src.to_bytes(4, "little")
    else:
        try:
            packed = ipaddress.ip_address(src).packed
        except ValueError:
            raise ValueError(f"source {src!r} is no IPv4 or IPv6 address") from None
    memset(k, 0, sizeof(src_key_t))
    k.family = 4 if len(packed) == 4 else 6
    memcpy(k.addr, <const char *>packed, len(packed))
    return 0
