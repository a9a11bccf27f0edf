# cython: language_level=3
"""`ratelimit`: token buckets per source address, and per chain (by SPI).

A packet passes if its source's bucket has a token and, when its chain
has a limit, the chain's bucket has one too; it then takes one from each.
A source is its whole address, IPv4 or IPv6, read from the packet
(nfs/srckey.pxd), never the fast path's 32-bit digest of an IPv6 address:
an attacker can give an address of its own a victim's digest, and would
then empty the victim's bucket.
Buckets count in TSC cycles (rte_get_tsc_cycles): a token costs hz/rate
cycles, a bucket holds `burst` tokens, so refilling is a subtraction and a
min, no division per packet.  A source idle long enough to refill is
forgotten (its entry expires) and starts again with a full bucket.

Config (inline or a YAML `file`):

    rate: 1000              # packets per second per source address
    burst: 100              # packets a source may send at once
    chains:                 # optional: limits per chain, keyed by SPI
      16: {rate: 100000, burst: 1000}
    max_sources: 65536      # of each family, IPv4 and IPv6

Buckets do not move with the instance (they refill within burst/rate
seconds anyway).

Several instances (and the worker cores of one) share a chain's budget
(docs/nfs.md, nflib.sharing): the agent reads each one's demand
(`chain_demand`) and sets its share (`set_chain_share`) every fraction
of a second, between two batches, never from the packet loop.  Per-source
buckets are per instance (and per worker) as configured."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from nflib.nf cimport (each_packet, rte_mbuf, onvm_meta_of, onvm_meta,
    ONVM_ACTION_NEXT, ONVM_ACTION_DROP, rte_get_tsc_cycles, rte_get_tsc_hz,
    NativeNF)
from nfs.srckey cimport (src_key_t, packet_src, srctab_t, srctab_init, srctab_free,
    srctab_find, srctab_insert, srctab_expires, srctab_size, srctab_live)

from nfs.configs import parse_ratelimit as parse_config

DEF MAX_CHAINS = 64


cdef struct bucket_t:
    uint64_t tokens        # in cycles
    uint64_t last          # TSC of the last refill
    uint64_t cost          # cycles per token
    uint64_t cap           # cycles the bucket holds
    uint64_t passed, dropped


cdef struct rl_t:
    srctab_t sources
    bucket_t *src          # per source position; cost/cap from `proto`
    bucket_t proto         # the per-source limit
    uint32_t chain_spi[MAX_CHAINS]
    bucket_t chain[MAX_CHAINS]
    uint32_t nchains
    uint64_t untracked
    uint64_t no_source     # dropped: neither IPv4 nor IPv6 (the parser lets none through)
    uint64_t hz
    uint64_t now           # TSC at the start of the batch


cdef inline bint has_token(bucket_t *b, uint64_t cost, uint64_t cap, uint64_t now) noexcept nogil:
    cdef uint64_t t = b.tokens + (now - b.last)
    b.tokens = cap if t > cap else t
    b.last = now
    return b.tokens >= cost


cdef void rl_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    (<rl_t *>ctx).now = rte_get_tsc_cycles()
    each_packet(rl_packet, ctx, pkts, n)


cdef uint8_t rl_packet(void *ctx, rte_mbuf *m, onvm_meta *meta) noexcept nogil:
    cdef rl_t *rl = <rl_t *>ctx
    cdef uint64_t now = rl.now
    cdef unsigned c
    cdef int32_t pos
    cdef bucket_t *sb
    cdef bucket_t *cb
    cdef bint ok
    cdef src_key_t src
    if not packet_src(m, meta, &src):
        rl.no_source += 1
        rl.proto.dropped += 1
        return ONVM_ACTION_DROP
    cb = NULL
    for c in range(rl.nchains):
        if rl.chain_spi[c] == meta.spi:
            cb = &rl.chain[c]
            break
    pos = srctab_find(&rl.sources, &src, now)
    if pos < 0:
        # New (or forgotten, hence refilled) source: a full bucket.
        pos = srctab_insert(&rl.sources, &src, now, now)
        if pos >= 0:
            rl.src[pos].tokens = rl.proto.cap
            rl.src[pos].last = now
    if pos >= 0:
        sb = &rl.src[pos]
        ok = has_token(sb, rl.proto.cost, rl.proto.cap, now)
    else:
        rl.untracked += 1      # table full: only the chain limit applies
        sb = NULL
        ok = True
    if cb != NULL and not has_token(cb, cb.cost, cb.cap, now):
        ok = False
    if ok:
        if sb != NULL:
            sb.tokens -= rl.proto.cost
            # Forget the source once its bucket would be full again
            # (plus a second, so busy sources are not re-added each packet).
            srctab_expires(&rl.sources, pos)[0] = now + rl.proto.cap - sb.tokens + rl.hz
        if cb != NULL:
            cb.tokens -= cb.cost
            cb.passed += 1
        rl.proto.passed += 1
        return ONVM_ACTION_NEXT
    else:
        if cb != NULL:
            cb.dropped += 1
        rl.proto.dropped += 1
        return ONVM_ACTION_DROP


cdef void _set(bucket_t *b, double rate, uint64_t burst, uint64_t hz, uint64_t now):
    b.cost = <uint64_t>(hz / rate)
    b.cap = b.cost * burst
    b.tokens = b.cap
    b.last = now


cdef class RateLimit(NativeNF):
    cdef rl_t rl
    cdef readonly dict config
    cdef public dict sharing     # the agent's exchange (host_agent.sharer): counters

    def __cinit__(self, config=None):
        memset(&self.rl, 0, sizeof(rl_t))

    def __init__(self, config=None):
        v = self.config = parse_config(config)
        hz, now = rte_get_tsc_hz(), rte_get_tsc_cycles()
        _set(&self.rl.proto, v["rate"], v["burst"], hz, now)
        for i, (spi, limit) in enumerate(sorted(v["chains"].items())):
            self.rl.chain_spi[i] = spi
            _set(&self.rl.chain[i], limit["rate"], limit["burst"], hz, now)
        self.rl.nchains = len(v["chains"])
        self.rl.hz = hz
        srctab_init(&self.rl.sources, "rl", v["max_sources"])
        self.rl.src = <bucket_t *>calloc(srctab_size(&self.rl.sources), sizeof(bucket_t))
        if self.rl.src == NULL:
            raise MemoryError()
        self.handlers.batch = rl_batch
        self.handlers.ctx = <void *>&self.rl

    def __dealloc__(self):
        srctab_free(&self.rl.sources)
        free(self.rl.src)

    def chain_demand(self):
        """{spi: packets offered (passed + dropped) since the start}."""
        return {self.rl.chain_spi[i]: self.rl.chain[i].passed + self.rl.chain[i].dropped
                for i in range(self.rl.nchains)}

    def set_chain_share(self, spi, double rate, burst):
        """This limiter's share of chain `spi`'s budget: `rate` packets a
        second, `burst` at once (at least 1).  Call it while the loop
        stands still (Manager.hold): the loop reads the bucket."""
        cdef unsigned i
        cdef uint64_t cost, cap
        if not rate > 0:
            raise ValueError(f"ratelimit: chains.{spi}: a share must be a positive rate, got {rate}")
        for i in range(self.rl.nchains):
            if self.rl.chain_spi[i] == spi:
                cost = <uint64_t>(self.rl.hz / rate)
                cap = cost * max(1, <uint64_t>burst)
                self.rl.chain[i].cost = cost
                self.rl.chain[i].cap = cap
                if self.rl.chain[i].tokens > cap:
                    self.rl.chain[i].tokens = cap
                return
        raise ValueError(f"ratelimit: chains.{spi}: no such chain in this instance's config")

    def chain_share(self, spi):
        """(rate, burst) the bucket of chain `spi` has now."""
        for i in range(self.rl.nchains):
            if self.rl.chain_spi[i] == spi:
                return (<double>self.rl.hz / self.rl.chain[i].cost,
                        self.rl.chain[i].cap // self.rl.chain[i].cost)
        raise ValueError(f"ratelimit: chains.{spi}: no such chain in this instance's config")

    def counters(self):
        return {"sharing": self.sharing or {},
            "passed": self.rl.proto.passed, "dropped": self.rl.proto.dropped,
            "sources": srctab_live(&self.rl.sources, rte_get_tsc_cycles()),
            "untracked": self.rl.untracked, "no_source": self.rl.no_source,
            "chains": [{"spi": self.rl.chain_spi[i], "passed": self.rl.chain[i].passed,
                        "dropped": self.rl.chain[i].dropped} for i in range(self.rl.nchains)],
        }
