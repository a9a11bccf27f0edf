# cython: language_level=3
"""Built-in NFs that need no rules: `forward` (passes every packet on) and
`monitor` (per-flow packet and byte counters, by the host's flow id; an id
the host's flow table gives to a new flow after the old one aged out
starts from zero: each id's counters hold the flow_gen they are for),
written in Cython against nflib/nf.pxd: each gives a per-packet handler, run over the batch by the
library's loop (nflib.nf.each_packet, inlined here) without the GIL."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from nflib.nf cimport (each_packet, prefetch_flows, nf_flows_t, nf_flows_init, nf_flows_free,
    flow_rec, flow_rec_claim, rte_mbuf, onvm_meta, ONVM_ACTION_NEXT, NativeNF)



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
    # One flow id's counters and the flow they are for (nflib/nf.pxd
    # nf_flows_t: ids are reused), 24 bytes: on the host's flow line
    # where it has room, so counting costs no cache line of its own.
    uint32_t gen
    uint32_t pad
    uint64_t packets
    uint64_t bytes


cdef struct monitor_t:
    uint64_t packets
    uint64_t bytes
    uint64_t untracked
    nf_flows_t flows           # per flow id: flow_rec_t
    uint64_t reused            # ids that came back as another flow
    uint64_t ids               # ids that have counted a packet (records not 0)


cdef uint8_t monitor_packet(void *ctx, rte_mbuf *m, onvm_meta *meta) noexcept nogil:
    cdef monitor_t *mon = <monitor_t *>ctx
    cdef flow_rec_t *r = <flow_rec_t *>flow_rec(&mon.flows, meta.flow_id)
    mon.packets += 1
    mon.bytes += m.pkt_len
    if r == NULL:
        mon.untracked += 1
        return ONVM_ACTION_NEXT
    if flow_rec_claim(r, meta):
        if r.packets:
            mon.reused += 1
        else:
            mon.ids += 1
        r.packets = 0
        r.bytes = 0
    r.packets += 1
    r.bytes += m.pkt_len
    return ONVM_ACTION_NEXT


cdef void monitor_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    prefetch_flows(&(<monitor_t *>ctx).flows, pkts, n)
    each_packet(monitor_packet, ctx, pkts, n)


cdef class Monitor(NativeNF):
    """Counts packets and bytes per flow (by the host's flow-table id)."""
    cdef monitor_t mon

    def __cinit__(self, config=None):
        nf_flows_init(&self.mon.flows, sizeof(flow_rec_t))
        self.handlers.batch = monitor_batch
        self.handlers.ctx = <void *>&self.mon
        self.handlers.flows = &self.mon.flows

    def __dealloc__(self):
        nf_flows_free(&self.mon.flows)

    def counters(self):
        # "flows": the ids with counts, kept as they come: the agent asks
        # every second, and a scan would read a million records (64 MB on
        # the flow line) beside the loop each time.
        return {"packets": self.mon.packets, "bytes": self.mon.bytes,
                "flows": self.mon.ids, "untracked": self.mon.untracked,
                "flow_ids_reused": self.mon.reused}

    def flow(self, int32_t flow_id):
        """(packets, bytes) of one flow id's flow (its latest)."""
        cdef flow_rec_t *r = <flow_rec_t *>flow_rec(&self.mon.flows, flow_id)
        if r == NULL:
            raise IndexError(f"flow id {flow_id}: monitor has ids 0 .. {self.mon.flows.count - 1}")
        return r.packets, r.bytes
