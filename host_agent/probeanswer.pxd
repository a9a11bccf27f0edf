# Liveness probes (contracts.wire.ETH_PROBE) answered in the manager's loop,
# with or without a plan: addresses swapped, kind set to answer, sent back
# out of the port they came in by.  A stalled or dead loop answers none,
# which is what the controller's probes detect (controller.probing); so does
# one whose agent leaves (`answer` false) while it still forwards.  Costs
# other packets one EtherType test.  host_agent.manager checks these
# constants against contracts.wire's when it is imported.
# Not here: sending the answers (the manager's tx queues), the controller's side.
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy
from dpdk.rte_mbuf cimport rte_mbuf, rte_pktmbuf_free
from nflib.nf cimport onvm_mtod

DEF ETH_PROBE = 0x88B5
DEF PROBE_REQUEST = 1
DEF PROBE_ANSWER = 2
DEF PROBE_MIN_LEN = 24     # up to the sequence and 4 bytes of the sender's data

cdef inline unsigned probes_split(rte_mbuf **pkts, unsigned n, bint answer,
                                  rte_mbuf **answers, unsigned *nanswers,
                                  uint64_t *ignored) noexcept nogil:
    """Keep in `pkts` (compacted; returns how many) what is not a probe;
    turn each probe request into its answer in `answers` (`nanswers` of
    them); free and count in `ignored` answers, garbage, and requests when
    not `answer`."""
    cdef unsigned i, kept = 0
    cdef uint8_t *d
    cdef uint8_t mac[6]
    nanswers[0] = 0
    for i in range(n):
        d = onvm_mtod(pkts[i])
        if pkts[i].data_len < 14 or d[12] != (ETH_PROBE >> 8) or d[13] != (ETH_PROBE & 0xff):
            pkts[kept] = pkts[i]
            kept += 1
            continue
        if pkts[i].data_len < PROBE_MIN_LEN or d[14] != PROBE_REQUEST or not answer:
            ignored[0] += 1             # an answer or garbage, never echoed; or leaving
            rte_pktmbuf_free(pkts[i])
            continue
        memcpy(mac, d, 6)
        memcpy(d, d + 6, 6)
        memcpy(d + 6, mac, 6)
        d[14] = PROBE_ANSWER
        answers[nanswers[0]] = pkts[i]
        nanswers[0] += 1
    return kept


cdef inline tuple probe_constants():
    return (ETH_PROBE, PROBE_REQUEST, PROBE_ANSWER, 14)
