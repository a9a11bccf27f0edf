# The 5-tuple of a packet as its bytes say *now*, for the NFs that keep
# per-flow state.  meta.key is what the fast path parsed when the packet
# arrived on this host; an NF that ran before on the same host (nat, lb) may
# have rewritten the addresses and ports since, so a flow's state must be
# keyed by the bytes, not by meta.key (issue 9: replies cross nat and lb
# and then the firewall and the IDS on the same host).
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset
from nflib.nf cimport rte_mbuf, onvm_meta, onvm_flow_key, onvm_mtod, ftab_t


cdef inline void packet_key(rte_mbuf *m, onvm_meta *meta, onvm_flow_key *k) noexcept nogil:
    """meta.key with the IPv4 addresses and TCP/UDP/SCTP ports read again
    from the frame (network order, as in meta.key); other families as
    parsed."""
    cdef const uint8_t *d
    cdef int l3 = meta.l3_off, l4 = meta.l4_off
    k[0] = meta.key
    if meta.key.family != 4:
        return
    d = onvm_mtod(m)
    memcpy(&k.src, d + l3 + 12, 4)
    memcpy(&k.dst, d + l3 + 16, 4)
    if l4 and (k.proto == 6 or k.proto == 17 or k.proto == 132) \
            and m.data_len >= <uint32_t>l4 + 4:
        memcpy(&k.sport, d + l4, 2)
        memcpy(&k.dport, d + l4 + 2, 2)


cdef inline void reverse_key(const onvm_flow_key *k, onvm_flow_key *r) noexcept nogil:
    """The key of the other direction of k's flow."""
    r[0] = k[0]
    r.src = k.dst
    r.dst = k.src
    r.sport = k.dport
    r.dport = k.sport


# An IPv6 flow key with whole addresses (meta.key holds only digests of
# IPv6 addresses, which an attacker can make collide): for the NFs that
# keep per-flow state of IPv6 flows.  40 bytes, network order.
cdef struct flow6_key_t:
    uint8_t proto
    uint8_t family
    uint16_t pad
    uint16_t sport
    uint16_t dport
    uint8_t src[16]
    uint8_t dst[16]


cdef inline bint packet_key6(rte_mbuf *m, onvm_meta *meta, flow6_key_t *k) noexcept nogil:
    """The IPv6 5-tuple of the packet as its bytes are now; False if it is
    not IPv6 (or cut short)."""
    cdef const uint8_t *d = onvm_mtod(m)
    cdef int l3 = meta.l3_off, l4 = meta.l4_off
    if meta.key.family != 6 or m.data_len < <uint32_t>l3 + 40:
        return False
    memset(k, 0, sizeof(flow6_key_t))
    k.proto = meta.key.proto
    k.family = 6
    memcpy(k.src, d + l3 + 8, 16)
    memcpy(k.dst, d + l3 + 24, 16)
    if l4 and (k.proto == 6 or k.proto == 17 or k.proto == 132) \
            and m.data_len >= <uint32_t>l4 + 4:
        memcpy(&k.sport, d + l4, 2)
        memcpy(&k.dport, d + l4 + 2, 2)
    return True


cdef inline void reverse_key6(const flow6_key_t *k, flow6_key_t *r) noexcept nogil:
    r[0] = k[0]
    memcpy(r.src, k.dst, 16)
    memcpy(r.dst, k.src, 16)
    r.sport = k.dport
    r.dport = k.sport


# A flow key as JSON ([proto, "src", "dst", sport, dport]), for the NFs'
# export_state / import_state: IPv4 (onvm_flow_key) or IPv6 (flow6_key_t);
# key_family tells which a list is (4 or 6; ValueError if neither).
cdef object key_to_list(const onvm_flow_key *k)
cdef int key_from_list(object key, onvm_flow_key *k) except -1
cdef object key6_to_list(const flow6_key_t *k)
cdef int key6_from_list(object key, flow6_key_t *k) except -1
cdef int key_family(object key) except -1
# [(position, key address, seconds left)] of the live entries of a flow
# table (read while the NF does not run; the key's memory is the table's).
cdef list live_entries(ftab_t *t)
