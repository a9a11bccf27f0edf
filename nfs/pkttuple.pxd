# The 5-tuple of a packet as its bytes say *now*, for the NFs that keep
# per-flow state.  meta.key is what the fast path parsed when the packet
# arrived on this host; an NF that ran before on the same host (nat, lb) may
# have rewritten the addresses and ports since, so a flow's state must be
# keyed by the bytes, not by meta.key (issue 9: replies cross nat and lb
# and then the firewall and the IDS on the same host).
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy
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


# A flow key as JSON ([proto, "src", "dst", sport, dport], IPv4), for the
# NFs' export_state / import_state.
cdef object key_to_list(const onvm_flow_key *k)
cdef int key_from_list(object key, onvm_flow_key *k) except -1
# [(position, key address, seconds left)] of the live entries of a flow
# table (read while the NF does not run; the key's memory is the table's).
cdef list live_entries(ftab_t *t)
