# cython: language_level=3
"""Built-in NFs that need no rules: `forward` (passes every packet on) and
`monitor` (per-flow packet and byte counters, by the host's flow id; an id
the host's flow table gives to a new flow after the old one aged out
starts from zero: the monitor keeps the 5-tuple it counted for each id),
written in Cython against nflib/nf.pxd: each gives a per-packet handler, run over the batch by the
library's loop (nflib.nf.each_packet, inlined here) without the GIL."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy
from nflib.nf cimport (each_packet, rte_mbuf, onvm_meta, onvm_flow_key, ONVM_ACTION_NEXT,
    ONVM_FLOW_ENTRIES, NativeNF)



cdef uint8_t forward_packet(void *ctx, rte_mbuf *m, onvm_meta *meta) noexcept nogil:
    return ONVM_ACTION_NEXT


cdef void forward_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    each_packet(forward_packet, ctx, pkts, n)


cdef class Forward(NativeNF):
    """Passes every packet to the next NF of its chain."""

    def __init__(self, config=None):
        self.handlers.batch = forward_batch

    def counters(self):
        return {}


cdef struct monitor_t:
    uint64_t packets
    uint64_t bytes
    uint64_t untracked
    uint64_t *flow_packets
    uint64_t *flow_bytes
    onvm_flow_key *flow_keys   # the flow each id's counters are for
    uint64_t reused            # ids that came back as another flow


cdef uint8_t monitor_packet(void *ctx, rte_mbuf *m, onvm_meta *meta) noexcept nogil:
    cdef monitor_t *mon = <monitor_t *>ctx
    cdef int32_t fid = meta.flow_id
    mon.packets += 1
    mon.bytes += m.pkt_len
    if fid >= 0 and fid < ONVM_FLOW_ENTRIES:
        if memcmp(&mon.flow_keys[fid], &meta.key, sizeof(onvm_flow_key)) != 0:
            if mon.flow_packets[fid]:
                mon.reused += 1
            mon.flow_packets[fid] = 0
            mon.flow_bytes[fid] = 0
            memcpy(&mon.flow_keys[fid], &meta.key, sizeof(onvm_flow_key))
        mon.flow_packets[fid] += 1
        mon.flow_bytes[fid] += m.pkt_len
    else:
        mon.untracked += 1
    return ONVM_ACTION_NEXT


cdef void monitor_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    each_packet(monitor_packet, ctx, pkts, n)


cdef class Monitor(NativeNF):
    """Counts packets and bytes per flow (by the host's flow-table id)."""
    cdef monitor_t mon

    def __cinit__(self, config=None):
        self.mon.flow_packets = <uint64_t *>calloc(ONVM_FLOW_ENTRIES, sizeof(uint64_t))
        self.mon.flow_bytes = <uint64_t *>calloc(ONVM_FLOW_ENTRIES, sizeof(uint64_t))
        self.mon.flow_keys = <onvm_flow_key *>calloc(ONVM_FLOW_ENTRIES, sizeof(onvm_flow_key))
        if (self.mon.flow_packets == NULL or self.mon.flow_bytes == NULL
                or self.mon.flow_keys == NULL):
            raise MemoryError()
        self.handlers.batch = monitor_batch
        self.handlers.ctx = <void *>&self.mon

    def __dealloc__(self):
        free(self.mon.flow_packets)
        free(self.mon.flow_bytes)
        free(self.mon.flow_keys)

    def counters(self):
        cdef uint32_t i, flows = 0
        with nogil:                 # a C loop: ONVM_FLOW_ENTRIES is a million
            for i in range(ONVM_FLOW_ENTRIES):
                if self.mon.flow_packets[i]:
                    flows += 1
        return {"packets": self.mon.packets, "bytes": self.mon.bytes,
                "flows": flows, "untracked": self.mon.untracked,
                "flow_ids_reused": self.mon.reused}

    def flow(self, int32_t flow_id):
        """(packets, bytes) of one flow."""
        return self.mon.flow_packets[flow_id], self.mon.flow_bytes[flow_id]
