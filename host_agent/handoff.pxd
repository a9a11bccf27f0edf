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
#
# Steering (`steer_t`, host_agent.workers.Steering builds it from the
# plan): NFs that rewrite addresses make a reply's 5-tuple another than
# the one its flow was hashed by, so the hash alone would hand the reply
# to a worker without the flow's entry.  As VPP's NAT44-ED does (out2in:
# the worker is the one whose share of the port range holds the port):
#   * nat: each worker of an instance hands out ports only from its own
#     share of the instance's port_range (nfs.configs.nat_worker_range);
#     a packet to or from the instance's external address with a port of
#     that range (TCP, UDP; an ICMP echo's identifier) goes to the worker
#     whose share holds it.  The internal side is hashed as any flow: the
#     worker that sees a flow's first packet allocates from its share, so
#     its replies come back to it.
#   * lb: an address that is a backend of an lb here hashes as the lb's
#     VIP (IPv4 and IPv6 alike), so the reply backend -> client hashes as
#     the forward packet client -> VIP did, and finds its entry.
# Exact and in C: a few compares and a binary search per packet.
# Not here: the loop (host_agent.manager), creating the rings (workers).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, intptr_t
from libc.stdlib cimport calloc, free
from dpdk.rte_mbuf cimport rte_mbuf, rte_pktmbuf_free, rte_pktmbuf_free_bulk
from dpdk.rte_ring cimport (rte_ring, rte_ring_enqueue_burst, rte_ring_dequeue_burst,
    rte_ring_create, rte_ring_free, RING_F_SC_DEQ)
from dpdk.rte_hash cimport rte_hash_crc_4byte
from nflib.nf cimport onvm_meta, onvm_meta_of, onvm_mtod, rd16
from host_agent.loopsync cimport onvm_load_ptr, onvm_store_ptr

cdef enum:
    MAX_WORKERS = 64
    HANDOFF_BURST = 64      # the manager's burst (its BURST): what one handoff_split may get
    MAX_STEER_NAT = 64


cdef struct nat_steer_t:
    uint32_t ext            # the external address as the parser's key holds it
    uint16_t lo, hi         # the instance's port_range
    uint16_t per            # ports per worker: worker q has lo + q*per .. lo + (q+1)*per - 1


cdef struct steer_t:
    uint32_t nnat
    nat_steer_t nat[MAX_STEER_NAT]
    uint32_t nalias
    uint64_t *alias_key     # ascending: family << 32 | address as the key holds it
    uint32_t *alias_to      # the address it hashes as (the lb's VIP, as the key holds it)

cdef struct handoff_t:
    uint16_t n                          # workers; below 2: no handoff
    uint16_t me                         # this worker's index
    rte_ring *inbox                     # packets other workers hand to this one
    rte_ring *to[MAX_WORKERS]           # every worker's inbox (to[me] unused)
    uint64_t sent, received
    void *steer                         # steer_t *, NULL: none; swapped atomically


cdef inline uint32_t hash_worker(uint32_t a, uint32_t b, uint16_t p, uint16_t q,
                                 uint32_t proto, uint16_t n) noexcept nogil:
    """The symmetric hash of a flow's addresses a, b, ports p, q (as the
    parser's key holds them) and protocol, of `n` workers: CRC32C (as
    rte_hash_crc) of 16 bytes, the addresses and the ports each in
    ascending order (IPv4 addresses' bytes, IPv6 addresses' CRC digests,
    ports' bytes, read as little-endian integers), then the protocol as 4
    bytes.  Word by word, not rte_hash_crc over a struct: its uint64_t
    reads of a struct written field by field are undefined (strict
    aliasing), and gcc -O2 hashed stale bytes."""
    cdef uint32_t crc
    crc = rte_hash_crc_4byte(a if a <= b else b, 0)
    crc = rte_hash_crc_4byte(b if a <= b else a, crc)
    crc = rte_hash_crc_4byte((<uint32_t>(q if p <= q else p) << 16) | (p if p <= q else q), crc)
    return rte_hash_crc_4byte(proto, crc) % n


cdef inline uint32_t worker_of(onvm_meta *meta, uint16_t n) noexcept nogil:
    """The worker of a parsed packet's flow, of `n`, unsteered: the same
    for both directions."""
    return hash_worker(meta.key.src, meta.key.dst, meta.key.sport, meta.key.dport,
                       meta.key.proto, n)


cdef inline int nat_worker(const steer_t *s, uint32_t addr, uint16_t port,
                           uint16_t n) noexcept nogil:
    """The worker whose share of a nat's ports holds `port` (host order)
    when `addr` is that nat's external address; -1 if none does (not a
    nat's address or port, or a port of an uneven cut's unused tail)."""
    cdef uint32_t i, w
    cdef const nat_steer_t *e
    for i in range(s.nnat):
        e = &s.nat[i]
        if e.ext == addr and e.lo <= port <= e.hi:
            w = (port - e.lo) // e.per
            return <int>w if w < n else -1
    return -1


cdef inline uint32_t alias_of(const steer_t *s, uint8_t family, uint32_t addr) noexcept nogil:
    """The address `addr` hashes as: an lb backend's is its lb's VIP."""
    cdef uint64_t k = (<uint64_t>family << 32) | addr
    cdef uint32_t lo = 0, hi = s.nalias, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if s.alias_key[mid] < k:
            lo = mid + 1
        else:
            hi = mid
    if lo < s.nalias and s.alias_key[lo] == k:
        return s.alias_to[lo]
    return addr


cdef inline uint32_t steered_worker(const steer_t *s, rte_mbuf *m, onvm_meta *meta,
                                    uint16_t n) noexcept nogil:
    """The worker of a parsed packet, of `n`, with the steering `s` (NULL:
    worker_of): a nat's external port's share, else the symmetric hash
    with lb backends' addresses as their VIP."""
    cdef int w
    cdef uint16_t sport = meta.key.sport, dport = meta.key.dport
    cdef const uint8_t *d
    if s == NULL:
        return worker_of(meta, n)
    if s.nnat and meta.key.family == 4:
        if meta.key.proto == 6 or meta.key.proto == 17:
            w = nat_worker(s, meta.key.dst, (dport >> 8) | <uint16_t>(dport << 8), n)
            if w < 0:
                w = nat_worker(s, meta.key.src, (sport >> 8) | <uint16_t>(sport << 8), n)
            if w >= 0:
                return <uint32_t>w
        elif meta.key.proto == 1 and meta.l4_off and m.data_len >= meta.l4_off + 8:
            d = onvm_mtod(m) + meta.l4_off
            if d[0] == 0 or d[0] == 8:          # an echo reply or request: its identifier
                w = nat_worker(s, meta.key.dst, rd16(d + 4), n)
                if w < 0:
                    w = nat_worker(s, meta.key.src, rd16(d + 4), n)
                if w >= 0:
                    return <uint32_t>w
    if s.nalias == 0:
        return worker_of(meta, n)
    return hash_worker(alias_of(s, meta.key.family, meta.key.src),
                       alias_of(s, meta.key.family, meta.key.dst),
                       sport, dport, meta.key.proto, n)


cdef inline unsigned handoff_split(handoff_t *h, rte_mbuf **pkts, unsigned n,
                                   uint64_t *full) noexcept nogil:
    """Hand the parsed packets of other workers' flows to them; the ones of
    this worker's stay in `pkts`, in order (returns how many).  Packets a
    full inbox did not take are freed and counted in `full`."""
    cdef rte_mbuf *out[MAX_WORKERS][HANDOFF_BURST]
    cdef uint16_t nout[MAX_WORKERS]
    cdef unsigned i, w, kept = 0, put
    cdef bint any = False
    cdef const steer_t *s = <const steer_t *>onvm_load_ptr(&h.steer)
    for w in range(h.n):
        nout[w] = 0
    for i in range(n):
        w = steered_worker(s, pkts[i], onvm_meta_of(pkts[i]), h.n)
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
    steer_free(<intptr_t>h.steer)
    h.steer = NULL


cdef inline object steer_swap(handoff_t *h, list nat, list alias):
    """A new steering for `h`: `nat` [(external address as the key holds
    it, lo, hi, ports per worker)], `alias` [(family << 32 | address,
    VIP)] ascending; both empty: none.  Returns the old one's address, to
    free with steer_free once the loop is past it."""
    cdef steer_t *s = NULL
    cdef uint32_t i
    if len(nat) > MAX_STEER_NAT:
        raise ValueError(f"{len(nat)} nat port ranges to steer by; at most {MAX_STEER_NAT}")
    if nat or alias:
        s = <steer_t *>calloc(1, sizeof(steer_t) + len(alias) * (sizeof(uint64_t) + sizeof(uint32_t)))
        if s == NULL:
            raise MemoryError()
        s.alias_key = <uint64_t *>(<uint8_t *>s + sizeof(steer_t))
        s.alias_to = <uint32_t *>(<uint8_t *>s.alias_key + len(alias) * sizeof(uint64_t))
        for i, (ext, lo, hi, per) in enumerate(nat):
            s.nat[i].ext, s.nat[i].lo, s.nat[i].hi, s.nat[i].per = ext, lo, hi, per
        s.nnat = len(nat)
        for i, (key, to) in enumerate(alias):
            s.alias_key[i], s.alias_to[i] = key, to
        s.nalias = len(alias)
    old = <intptr_t>onvm_load_ptr(&h.steer)
    onvm_store_ptr(&h.steer, <void *>s)
    return old


cdef inline object steer_free(intptr_t old, wait=None):
    """Free a steering steer_swap replaced, after `wait()` (the loop's
    quiescent point, when it runs)."""
    if wait is not None:
        wait()
    free(<void *>old)
