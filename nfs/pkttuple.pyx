# cython: language_level=3
"""Flow keys for the NFs: the 5-tuple of a packet as its bytes say now
(inline, in pkttuple.pxd) and a key as JSON for moving NF state.

Not here: the flow tables themselves (nflib/flowtab.pyx)."""
from libc.string cimport memcpy, memset
from libc.stdint cimport int32_t, uint64_t, intptr_t
from nflib.nf cimport rte_hash_iterate, rte_get_tsc_cycles, rte_get_tsc_hz

import ipaddress


cdef object key_to_list(const onvm_flow_key *k):
    """An IPv4 flow key (network order) as [proto, src, dst, sport, dport]."""
    cdef const uint8_t *s = <const uint8_t *>&k.src
    cdef const uint8_t *d = <const uint8_t *>&k.dst
    cdef const uint8_t *sp = <const uint8_t *>&k.sport
    cdef const uint8_t *dp = <const uint8_t *>&k.dport
    return [k.proto, str(ipaddress.IPv4Address(bytes(s[:4]))),
            str(ipaddress.IPv4Address(bytes(d[:4]))),
            (sp[0] << 8) | sp[1], (dp[0] << 8) | dp[1]]


cdef object key6_to_list(const flow6_key_t *k):
    """An IPv6 flow key (network order) as [proto, src, dst, sport, dport]."""
    cdef const uint8_t *sp = <const uint8_t *>&k.sport
    cdef const uint8_t *dp = <const uint8_t *>&k.dport
    return [k.proto, str(ipaddress.IPv6Address(bytes(k.src[:16]))),
            str(ipaddress.IPv6Address(bytes(k.dst[:16]))),
            (sp[0] << 8) | sp[1], (dp[0] << 8) | dp[1]]


def _parsed(key, cls):
    """(proto, src bytes, dst bytes, sport, dport) of a key list whose
    addresses are of `cls`; ValueError naming the key if it is not one."""
    try:
        proto, s, d, sport, dport = key
        src, dst = cls(s).packed, cls(d).packed
        if not (0 <= int(proto) < 256 and 0 <= int(sport) < 65536 and 0 <= int(dport) < 65536):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"not a flow key [proto, src, dst, sport, dport]: {key!r}") from None
    return int(proto), src, dst, int(sport), int(dport)


cdef int key_family(object key) except -1:
    try:
        return ipaddress.ip_address(key[1]).version
    except (TypeError, ValueError, IndexError, KeyError):
        raise ValueError(f"not a flow key [proto, src, dst, sport, dport]: {key!r}") from None


cdef int key6_from_list(object key, flow6_key_t *k) except -1:
    """What key6_to_list made, back into a key (ValueError if it is not one)."""
    cdef bytes src, dst
    cdef uint8_t ports[4]
    proto, src, dst, sport, dport = _parsed(key, ipaddress.IPv6Address)
    memset(k, 0, sizeof(flow6_key_t))
    k.proto = proto
    k.family = 6
    memcpy(k.src, <const char *>src, 16)
    memcpy(k.dst, <const char *>dst, 16)
    ports[0], ports[1] = sport >> 8, sport & 0xff
    ports[2], ports[3] = dport >> 8, dport & 0xff
    memcpy(&k.sport, ports, 2)
    memcpy(&k.dport, ports + 2, 2)
    return 0


cdef int key_from_list(object key, onvm_flow_key *k) except -1:
    """What key_to_list made, back into a key (ValueError if it is not one)."""
    cdef bytes src, dst
    cdef uint8_t ports[4]
    proto, src, dst, sport, dport = _parsed(key, ipaddress.IPv4Address)
    memset(k, 0, sizeof(onvm_flow_key))
    k.proto = int(proto)
    k.family = 4
    memcpy(&k.src, <const char *>src, 4)
    memcpy(&k.dst, <const char *>dst, 4)
    ports[0], ports[1] = int(sport) >> 8, int(sport) & 0xff
    ports[2], ports[3] = int(dport) >> 8, int(dport) & 0xff
    memcpy(&k.sport, ports, 2)
    memcpy(&k.dport, ports + 2, 2)
    return 0


cdef list live_entries(ftab_t *t):
    cdef const void *key
    cdef void *data
    cdef uint32_t nxt = 0
    cdef int32_t pos
    cdef uint64_t now = rte_get_tsc_cycles(), hz = rte_get_tsc_hz()
    out = []
    while True:
        pos = rte_hash_iterate(t.h, &key, &data, &nxt)
        if pos < 0:
            break
        if t.expires[pos] > now:
            out.append((pos, <intptr_t>key, (t.expires[pos] - now) / hz))
    return out

