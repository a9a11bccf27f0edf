# The NF library's interface: what an NF written in Cython cimports, and
# nothing else (docs/nfs.md, "Writing an NF").  OpenNetVM's onvm_nflib.h is
# to its NFs what this file is to ours.
#
# A packet is an rte_mbuf whose metadata (onvm_meta_of(m)) the fast path's
# parser filled in: the 5-tuple `key` (network order), `flow_id` (the host's
# flow table position, -1 if none), `l3_off` and `l4_off` (offsets of the IP
# and TCP/UDP/ICMP headers in the frame; l4_off is 0 when there is none).
# An NF gives each packet a verdict: ONVM_ACTION_NEXT (the default),
# _DROP, _OUT (out of port meta.destination) or _TONF (to the local
# instance meta.destination).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from dpdk.rte_mbuf cimport (rte_mbuf, onvm_meta, onvm_flow_key, onvm_meta_of,
    onvm_mtod, ONVM_FLOW_ENTRIES, ONVM_ACTION_DROP, ONVM_ACTION_NEXT,
    ONVM_ACTION_TONF, ONVM_ACTION_OUT)
from dpdk.rte_eal cimport rte_get_tsc_cycles, rte_get_tsc_hz
from dpdk.rte_hash cimport rte_hash, rte_hash_crc, rte_hash_iterate
from dpdk.rte_acl cimport rte_acl_ctx, rte_acl_classify
from nflib.eal cimport new_hash
from nflib.flowtab cimport (ftab_t, ftab_new, ftab_free, ftab_find, ftab_insert, ftab_chunk,
    ftab_delete, ftab_sweep, ftab_live, ftab_report)

cdef extern from "shim.h" nogil:
    # Atomic pointer loads and stores, for tables the control thread swaps
    # while the loop reads them.
    void *onvm_load_ptr(void **p)
    void onvm_store_ptr(void **p, void *v)


# ------------------------------------------------------------- handlers

# The whole batch: write each packet's verdict (onvm_meta_of(m).action).
ctypedef void (*nf_batch_fn)(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil
# One packet: return its verdict (set meta.destination for OUT and TONF).
ctypedef uint8_t (*nf_packet_fn)(void *ctx, rte_mbuf *m, onvm_meta *meta) noexcept nogil


# ------------------------------------------------------ per-flow records

cdef enum:
    FLOW_LINE = 64              # bytes of the host's line a flow (host_agent/flowline.pxd)
    FLOW_LINE_NF_BYTES = 40     # of which the NFs' records may take


cdef struct nf_flows_t:
    # An NF's records, one a flow id (meta.flow_id), each beginning with
    # the uint32_t flow_gen it holds state for: ids are reused as flows
    # age out, and a record whose gen is not the packet's meta.flow_gen is
    # an older flow's (flow_rec_claim).  On an array of the NF's own
    # (stride = size) or, for an NF the manager runs inline where the
    # host's flow line has room, on that line (stride FLOW_LINE): then the
    # host's flow entry and the chain's records are one cache line, where
    # with a million flows each would be a miss of its own.
    uint8_t *base               # record of flow id i: base + i * stride
    uint32_t stride
    uint32_t size               # bytes a record (a multiple of 8)
    uint32_t count              # records there are (flow ids below it)
    int32_t line_off            # where on the line (-1: on `own`)
    uint8_t *own                # the NF's own array (ONVM_FLOW_ENTRIES records)


cdef struct nf_handlers_t:
    nf_batch_fn batch       # either this,
    nf_packet_fn packet     # or this, which the library calls per packet,
    nf_batch_fn before      # after this (optional) once per batch
    void *ctx               # the first argument of each
    nf_flows_t *flows       # its per-flow records (nf_flows_init), or NULL


cdef class NativeNF:
    """Base of NFs written in Cython: a subclass fills `handlers` in its
    constructor; the library runs them (inline in the manager's loop, or
    in the NF's own process) without the GIL.  With `packet`, the library
    calls the handler through a pointer per packet; an NF on the hot path
    sets `batch` to a two-line function that calls each_packet (below) with
    its handler, which the C compiler then inlines (see nfs/basic.pyx)."""
    cdef nf_handlers_t handlers


cdef int bind_nf(object nf, nf_batch_fn *fn, void **ctx) except -1


cdef inline nf_flows_t *nf_flows_of(object nf):
    """The per-flow records of an NF object (nf_flows_t), NULL if none."""
    if isinstance(nf, NativeNF):
        return (<NativeNF>nf).handlers.flows
    return NULL


cdef inline void each_packet(nf_packet_fn packet, void *ctx, rte_mbuf **pkts,
                             unsigned n) noexcept nogil:
    """The library's loop over a batch: `packet`'s verdict for each."""
    cdef onvm_meta *meta
    cdef unsigned i
    for i in range(n):
        meta = onvm_meta_of(pkts[i])
        meta.action = packet(ctx, pkts[i], meta)
cdef void run_packets(void *handlers, rte_mbuf **pkts, unsigned n) noexcept nogil


cdef extern from "rte_prefetch.h" nogil:
    void rte_prefetch0(const void *p)

cdef extern from "sys/mman.h" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MADV_HUGEPAGE
    void *MAP_FAILED

cdef enum:
    HUGE_PAGE = 2 * 1024 * 1024


cdef inline size_t huge_size(size_t size) noexcept nogil:
    return (size + HUGE_PAGE - 1) & ~(<size_t>HUGE_PAGE - 1)


cdef inline void *huge_zeroed(size_t size) noexcept nogil:
    """`size` zeroed bytes for a table indexed at random (one entry per
    flow: with a million flows, megabytes touched anywhere), on 2 MiB
    transparent huge pages where the kernel gives them (madvise; the
    machine's THP setting "madvise" or "always"): with 4 KiB pages each
    entry looked up is also a TLB miss and a page walk.  Zeroed by the
    kernel as pages are first touched, so address space, not memory, until
    used.  NULL if there is none; give back with free_huge_zeroed."""
    cdef size_t n = huge_size(size)
    cdef char *p = <char *>mmap(NULL, n + HUGE_PAGE, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    cdef char *a
    if <void *>p == MAP_FAILED:
        return NULL
    a = <char *>((<size_t>p + HUGE_PAGE - 1) & ~(<size_t>HUGE_PAGE - 1))
    if a > p:
        munmap(p, a - p)
    munmap(a + n, (p + n + HUGE_PAGE) - (a + n))
    madvise(a, n, MADV_HUGEPAGE)        # advice: without THP, 4 KiB pages
    return a


cdef inline void free_huge_zeroed(void *p, size_t size) noexcept nogil:
    if p != NULL:
        munmap(p, huge_size(size))


cdef inline void prefetch_burst(rte_mbuf **pkts, unsigned n) noexcept nogil:
    """Ask for a received burst's mbufs, metadata and first data lines
    before the loop reads them: a PMD that does not write the mbufs (the
    ring ports) leaves them all out of cache, and misses asked for
    together overlap.  The data's address is in the mbuf, so it is asked
    for in a second pass, when the first has had time to arrive."""
    cdef unsigned i
    for i in range(n):
        rte_prefetch0(pkts[i])
        rte_prefetch0(onvm_meta_of(pkts[i]))
    for i in range(n):
        rte_prefetch0(onvm_mtod(pkts[i]))


cdef inline int nf_flows_init(nf_flows_t *f, uint32_t size) except -1:
    """Per-flow records of `size` bytes (a multiple of 8, the first 4 the
    flow_gen), zeroed, on an array of the NF's own until the manager puts
    them on its flow line (host_agent/flowline.pxd).  Point
    `handlers.flows` at `f`; give back with nf_flows_free."""
    f.own = <uint8_t *>huge_zeroed(<size_t>ONVM_FLOW_ENTRIES * size)
    if f.own == NULL:
        raise MemoryError(f"per-flow records: {ONVM_FLOW_ENTRIES} of {size} bytes")
    f.base, f.stride, f.size, f.count, f.line_off = f.own, size, size, ONVM_FLOW_ENTRIES, -1
    return 0


cdef inline void nf_flows_free(nf_flows_t *f) noexcept nogil:
    free_huge_zeroed(f.own, <size_t>ONVM_FLOW_ENTRIES * f.size)
    f.own = f.base = NULL
    f.count = 0


cdef inline void *flow_rec(const nf_flows_t *f, int32_t fid) noexcept nogil:
    """Flow id `fid`'s record, NULL if it has none (-1: the host's flow
    table had no room for the flow)."""
    if fid < 0 or <uint32_t>fid >= f.count:
        return NULL
    return f.base + <size_t>fid * f.stride


cdef inline bint flow_rec_claim(void *rec, const onvm_meta *meta) noexcept nogil:
    """True if `rec` held another flow's state (or none): it is now this
    packet's flow's (its gen set), and the NF starts the flow anew in it."""
    cdef uint32_t *gen = <uint32_t *>rec
    if gen[0] == meta.flow_gen:
        return False
    gen[0] = meta.flow_gen
    return True


cdef inline void prefetch_flows(const nf_flows_t *f, rte_mbuf **pkts, unsigned n) noexcept nogil:
    """Ask the CPU for each packet's record before an NF's loop touches
    them: with a million flows each is a cache miss (unless it is on the
    host's flow line, which the manager fetched), and misses asked for
    together overlap instead of stalling the loop one by one."""
    cdef unsigned i
    cdef int32_t fid
    for i in range(n):
        fid = onvm_meta_of(pkts[i]).flow_id
        if fid >= 0 and <uint32_t>fid < f.count:
            rte_prefetch0(f.base + <size_t>fid * f.stride)


cdef class Acl:
    """An rte_acl context over struct onvm_flow_key; result = rule index + 1."""
    cdef rte_acl_ctx *ctx
    cdef readonly int nrules
    cdef void classify(self, const uint8_t **data, uint32_t *results,
                       unsigned n) noexcept nogil


# ----------------------------------------------------------- bytes, L4

cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]

cdef inline uint32_t rd32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline void wr16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xff

cdef inline void wr32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xff
    p[2] = (v >> 8) & 0xff
    p[3] = v & 0xff

cdef inline uint16_t bswap16(uint16_t v) noexcept nogil:
    """Network <-> host order of a 16-bit field read as a native integer
    (the ports of onvm_flow_key)."""
    return <uint16_t>(((v & 0xff) << 8) | (v >> 8))

cdef inline uint32_t bswap32(uint32_t v) noexcept nogil:
    return ((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >> 8) & 0xff00) | (v >> 24)


cdef inline int pkt_l4(const onvm_meta *meta) noexcept nogil:
    """Offset of the L4 header, or -1 for a packet without one (a non-first
    IPv4 fragment)."""
    return meta.l4_off if meta.l4_off else -1


cdef inline uint16_t csum_step(uint16_t csum, uint16_t old, uint16_t new) noexcept nogil:
    """HC' = ~(~HC + ~m + m') (RFC 1624, eqn. 3), on host-order words."""
    cdef uint32_t s = (<uint32_t>(~csum & 0xffff)) + (~old & 0xffff) + new
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return <uint16_t>(~s & 0xffff)


cdef inline void csum_fix16(uint8_t *csum_p, uint16_t old, uint16_t new, bint udp) noexcept nogil:
    """Update the checksum at csum_p for a 16-bit field changed old -> new.
    UDP: a zero checksum means "none" and stays zero; a result of zero is
    sent as 0xffff."""
    cdef uint16_t c = rd16(csum_p)
    if udp and c == 0:
        return
    c = csum_step(c, old, new)
    if udp and c == 0:
        c = 0xffff
    wr16(csum_p, c)


cdef inline void csum_fix32(uint8_t *csum_p, uint32_t old, uint32_t new, bint udp) noexcept nogil:
    cdef uint16_t c = rd16(csum_p)
    if udp and c == 0:
        return
    c = csum_step(c, old >> 16, new >> 16)
    c = csum_step(c, old & 0xffff, new & 0xffff)
    if udp and c == 0:
        c = 0xffff
    wr16(csum_p, c)


cdef inline void set_ip(uint8_t *d, int l3, int l4, uint32_t length, int addr_off,
                        uint32_t new) noexcept nogil:
    """Rewrite the IPv4 source (addr_off 12) or destination (16) address,
    fixing the IP checksum and the TCP/UDP checksum over the pseudo-header
    (l4 < 0: no L4 header)."""
    cdef uint8_t proto = d[l3 + 9]
    cdef uint32_t old = rd32(d + l3 + addr_off)
    wr32(d + l3 + addr_off, new)
    csum_fix32(d + l3 + 10, old, new, False)
    if l4 < 0:
        return
    if proto == 6 and length >= <uint32_t>l4 + 18:
        csum_fix32(d + l4 + 16, old, new, False)
    elif proto == 17 and length >= <uint32_t>l4 + 8:
        csum_fix32(d + l4 + 6, old, new, True)


cdef inline void set_port(uint8_t *d, int l3, int l4, uint32_t length, int port_off,
                          uint16_t new) noexcept nogil:
    """Rewrite the TCP/UDP source (port_off 0) or destination (2) port."""
    cdef uint8_t proto = d[l3 + 9]
    cdef uint16_t old = rd16(d + l4 + port_off)
    wr16(d + l4 + port_off, new)
    if proto == 6 and length >= <uint32_t>l4 + 18:
        csum_fix16(d + l4 + 16, old, new, False)
    elif proto == 17 and length >= <uint32_t>l4 + 8:
        csum_fix16(d + l4 + 6, old, new, True)


cdef inline int proto_slot(uint8_t proto, int other) noexcept nogil:
    """0 for TCP, 1 for UDP, 2 for ICMP, `other` for the rest: the index of
    per-protocol tables (port pools, timeouts)."""
    if proto == 6:
        return 0
    if proto == 17:
        return 1
    if proto == 1:
        return 2
    return other
