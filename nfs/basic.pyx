# cython: language_level=3
"""Built-in NFs that need no rules: `forward` (passes every packet on) and
`monitor` (per-flow packet and byte counters, by the host's flow id; an id
the host's flow table gives to a new flow after the old one aged out
starts from zero: the monitor keeps the 5-tuple it counted for each id),
written in Cython against nflib/nf.pxd: each gives a per-packet handler, run over the batch by the
library's loop (nflib.nf.each_packet, inlined here) without the GIL."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from libc.string cimport memcmp, memcpy
from nflib.nf cimport (each_packet, prefetch_flows, flow_records, free_flow_records, rte_mbuf, onvm_meta, onvm_flow_key, ONVM_ACTION_NEXT,
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


cdef struct flow_rec_t:
    # One flow id's counters and the flow they are for (ids are reused),
    # in one 32-byte record: one cache line to fetch per packet, not three.
    onvm_flow_key key
    uint64_t packets
    uint64_t bytes


cdef struct monitor_t:
    uint64_t packets
    uint64_t bytes
    uint64_t untracked
    flow_rec_t *flows          # per flow id
    uint64_t reused            # ids that came back as another flow


cdef uint8_t monitor_packet(void *ctx, rte_mbuf *m, onvm_meta *meta) noexcept nogil:
    cdef monitor_t *mon = <monitor_t *>ctx
    cdef int32_t fid = meta.flow_id
    cdef flow_rec_t *r
    mon.packets += 1
    mon.bytes += m.pkt_len
    if fid >= 0 and fid < ONVM_FLOW_ENTRIES:
        r = &mon.flows[fid]
        if memcmp(&r.key, &meta.key, sizeof(onvm_flow_key)) != 0:
            if r.packets:
                mon.reused += 1
            r.packets = 0
            r.bytes = 0
            memcpy(&r.key, &meta.key, sizeof(onvm_flow_key))
        r.packets += 1
        r.bytes += m.pkt_len
    else:
        mon.untracked += 1
    return ONVM_ACTION_NEXT


cdef void monitor_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    prefetch_flows(<const uint8_t *>(<monitor_t *>ctx).flows, sizeof(flow_rec_t), pkts, n)
    each_packet(monitor_packet, ctx, pkts, n)


cdef class Monitor(NativeNF):
    """Counts packets and bytes per flow (by the host's flow-table id)."""
    cdef monitor_t mon

    def __cinit__(self, config=None):
        self.mon.flows = <flow_rec_t *>flow_records(sizeof(flow_rec_t))
        if self.mon.flows == NULL:
            raise MemoryError()
        self.handlers.batch = monitor_batch
        self.handlers.ctx = <void *>&self.mon

    def __dealloc__(self):
        free_flow_records(self.mon.flows, sizeof(flow_rec_t))

    def counters(self):
        cdef uint32_t i, flows = 0
        with nogil:                 # a C loop: ONVM_FLOW_ENTRIES is a million
            for i in range(ONVM_FLOW_ENTRIES):
                if self.mon.flows[i].packets:
                    flows += 1
        return {"packets": self.mon.packets, "bytes": self.mon.bytes,
                "flows": flows, "untracked": self.mon.untracked,
                "flow_ids_reused": self.mon.reused}

    def flow(self, int32_t flow_id):
        """(packets, bytes) of one flow."""
        return self.mon.flows[flow_id].packets, self.mon.flows[flow_id].bytes
