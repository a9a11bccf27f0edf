# cython: language_level=3
"""port-block: drops TCP and UDP packets to one destination port (config
"port"), counts what it dropped and what had no L4 header to look at."""
from libc.stdint cimport uint8_t, uint16_t, uint64_t
from nflib.nf cimport (NativeNF, rte_mbuf, onvm_meta, onvm_mtod, pkt_l4, rd16,
    ONVM_ACTION_NEXT, ONVM_ACTION_DROP)


cdef struct block_t:
    uint16_t port
    uint64_t dropped
    uint64_t no_l4


cdef uint8_t block_packet(void *ctx, rte_mbuf *m, onvm_meta *meta) noexcept nogil:
    cdef block_t *b = <block_t *>ctx
    cdef int l4 = pkt_l4(meta)             # the parser found it: no re-parsing
    if meta.key.proto != 6 and meta.key.proto != 17:
        return ONVM_ACTION_NEXT
    if l4 < 0:
        b.no_l4 += 1                       # a later fragment: no ports in it
        return ONVM_ACTION_NEXT
    if rd16(onvm_mtod(m) + l4 + 2) == b.port:
        b.dropped += 1
        return ONVM_ACTION_DROP
    return ONVM_ACTION_NEXT


cdef class PortBlock(NativeNF):
    cdef block_t b

    def __init__(self, config=None):
        self.b.port = int((config or {}).get("port", 23))
        self.handlers.packet = block_packet    # the library loops, no GIL
        self.handlers.ctx = <void *>&self.b

    def counters(self):
        return {"dropped": self.b.dropped, "no_l4": self.b.no_l4}
