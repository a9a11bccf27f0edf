# cython: language_level=3
"""Built-in NFs that need no rules: `forward` (passes every packet on) and
`monitor` (per-flow packet and byte counters), written in Cython: their
batch functions run in the manager's loop without the GIL."""
from libc.stdint cimport uint64_t, int32_t
from libc.stdlib cimport calloc, free
from nflib.nf cimport (rte_mbuf, onvm_meta_of, ONVM_ACTION_NEXT,
    ONVM_FLOW_ENTRIES, NativeNF)



cdef void forward_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    cdef unsigned i
    for i in range(n):
        onvm_meta_of(pkts[i]).action = ONVM_ACTION_NEXT


cdef class Forward(NativeNF):
    """Passes every packet to the next NF of its chain."""

    def __init__(self, config=None):
        self.handlers.batch = forward_batch
        self.handlers.ctx = <void *>self

    def counters(self):
        return {}


cdef struct monitor_t:
    uint64_t packets
    uint64_t bytes
    uint64_t untracked
    uint64_t *flow_packets
    uint64_t *flow_bytes


cdef void monitor_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    cdef monitor_t *mon = <monitor_t *>ctx
    cdef unsigned i
    cdef int32_t fid
    for i in range(n):
        fid = onvm_meta_of(pkts[i]).flow_id
        mon.packets += 1
        mon.bytes += pkts[i].pkt_len
        if fid >= 0 and fid < ONVM_FLOW_ENTRIES:
            mon.flow_packets[fid] += 1
            mon.flow_bytes[fid] += pkts[i].pkt_len
        else:
            mon.untracked += 1
        onvm_meta_of(pkts[i]).action = ONVM_ACTION_NEXT


cdef class Monitor(NativeNF):
    """Counts packets and bytes per flow (by the host's flow-table id)."""
    cdef monitor_t mon

    def __cinit__(self, config=None):
        self.mon.flow_packets = <uint64_t *>calloc(ONVM_FLOW_ENTRIES, sizeof(uint64_t))
        self.mon.flow_bytes = <uint64_t *>calloc(ONVM_FLOW_ENTRIES, sizeof(uint64_t))
        if self.mon.flow_packets == NULL or self.mon.flow_bytes == NULL:
            raise MemoryError()
        self.handlers.batch = monitor_batch
        self.handlers.ctx = <void *>&self.mon

    def __dealloc__(self):
        free(self.mon.flow_packets)
        free(self.mon.flow_bytes)

    def counters(self):
        flows = sum(1 for i in range(ONVM_FLOW_ENTRIES) if self.mon.flow_packets[i])
        return {"packets": self.mon.packets, "bytes": self.mon.bytes,
                "flows": flows, "untracked": self.mon.untracked}

    def flow(self, int32_t flow_id):
        """(packets, bytes) of one flow."""
        return self.mon.flow_packets[flow_id], self.mon.flow_bytes[flow_id]
