# Worker handoff (host_agent.workers): which worker a flow belongs to, and
# the rings that carry a packet from the worker that received it to that
# one, as VPP's worker handoff does.  A NIC spreads untagged traffic over
# its queues by RSS, but it cannot hash below an MPLS label stack: every
# tagged packet from the fabric lands on one queue.  So after parsing
# (labels popped, 5-tuple read) each worker hashes the inner 5-tuple
# symmetrically (`worker_of`: both directions of a flow on one worker),
# keeps its own packets and hands the others over, in order, through the
# owner's `inbox` (an rte_ring, many producers, one consumer).  A flow's
# packets all come in through one queue, so one producer enqueues them in
# order and its owner dequeues them in order.  A full inbox drops (counted
# `handoff_full`).  host_agent.workers.queue_of computes the same hash in
# Python for the ports in memory; tests check the two agree.
# Not here: the loop (host_agent.manager), creating the rings (workers).
from libc.stdint cimport uint16_t, uint32_t, uint64_t, intptr_t
from dpdk.rte_mbuf cimport rte_mbuf, rte_pktmbuf_free, rte_pktmbuf_free_bulk
from dpdk.rte_ring cimport (rte_ring, rte_ring_enqueue_burst, rte_ring_dequeue_burst,
    rte_ring_create, rte_ring_free, RING_F_SC_DEQ)
from dpdk.rte_hash cimport rte_hash_crc_4byte
from nflib.nf cimport onvm_meta, onvm_meta_of

cdef enum:
    MAX_WORKERS = 64
    HANDOFF_BURST = 32

cdef struct handoff_t:
    uint16_t n                          # workers; below 2: no handoff
    uint16_t me                         # this worker's index
    rte_ring *inbox                     # packets other workers hand to this one
    rte_ring *to[MAX_WORKERS]           # every worker's inbox (to[me] unused)
    uint64_t sent, received


cdef inline uint32_t worker_of(onvm_meta *meta, uint16_t n) noexcept nogil:
    """The worker of a parsed packet's flow, of `n`: the same for both
    directions.  It hashes (CRC32C, as rte_hash_crc) 16 bytes: the flow's
    addresses and its ports each in ascending order, as the parser's key
    holds them (IPv4 addresses' bytes, IPv6 addresses' CRC digests, ports'
    bytes, read as little-endian integers), then the protocol as 4 bytes.
    Word by word, not rte_hash_crc over a struct: its uint64_t reads of
    a struct written field by field are undefined (strict aliasing), and
    gcc -O2 hashed stale bytes."""
    cdef uint32_t a = meta.key.src, b = meta.key.dst, crc
    cdef uint16_t p = meta.key.sport, q = meta.key.dport
    crc = rte_hash_crc_4byte(a if a <= b else b, 0)
    crc = rte_hash_crc_4byte(b if a <= b else a, crc)
    crc = rte_hash_crc_4byte((<uint32_t>(q if p <= q else p) << 16) | (p if p <= q else q), crc)
    return rte_hash_crc_4byte(meta.key.proto, crc) % n


cdef inline unsigned handoff_split(handoff_t *h, rte_mbuf **pkts, unsigned n,
                                   uint64_t *full) noexcept nogil:
    """Hand the parsed packets of other workers' flows to them; the ones of
    this worker's stay in `pkts`, in order (returns how many).  Packets a
    full inbox did not take are freed and counted in `full`."""
    cdef rte_mbuf *out[MAX_WORKERS][HANDOFF_BURST]
    cdef uint16_t nout[MAX_WORKERS]
    cdef unsigned i, w, kept = 0, put
    cdef bint any = False
    for w in range(h.n):
        nout[w] = 0
    for i in range(n):
        w = worker_of(onvm_meta_of(pkts[i]), h.n)
        if w == h.me:
            pkts[kept] = pkts[i]
            kept += 1
        else:
            out[w][nout[w]] = pkts[i]
            nout[w] += 1
            any = True
    if not any:
        return kept
    for w in range(h.n):
        if nout[w] == 0:
            continue
        put = rte_ring_enqueue_burst(h.to[w], <void **>out[w], nout[w], NULL)
        h.sent += put
        if put < nout[w]:
            full[0] += nout[w] - put
            rte_pktmbuf_free_bulk(&out[w][put], nout[w] - put)
    return kept


cdef inline object handoff_open(handoff_t *h, str name, unsigned size):
    """Create `h`'s inbox (size: a power of 2) unless it has one; its address."""
    if h.inbox == NULL:
        h.inbox = rte_ring_create(name.encode(), size, -1, RING_F_SC_DEQ)
        if h.inbox == NULL:
            raise MemoryError(f"cannot create handoff ring {name} of {size} entries")
    return <intptr_t>h.inbox


cdef inline object handoff_set(handoff_t *h, uint16_t me, list inboxes):
    """`h` is worker `me` of len(inboxes) (handoff_open's addresses)."""
    if len(inboxes) > MAX_WORKERS or me >= len(inboxes):
        raise ValueError(f"worker {me} of {len(inboxes)}: at most {MAX_WORKERS} workers")
    for w, addr in enumerate(inboxes):
        h.to[w] = <rte_ring *><intptr_t>addr
    h.me, h.n = me, len(inboxes)


cdef inline void handoff_close(handoff_t *h) noexcept:
    """Free what waits in the inbox, then the inbox; no handoff after."""
    cdef void *m
    if h.inbox != NULL:
        while rte_ring_dequeue_burst(h.inbox, &m, 1, NULL):
            rte_pktmbuf_free(<rte_mbuf *>m)
        rte_ring_free(h.inbox)
    h.inbox, h.n = NULL, 0
