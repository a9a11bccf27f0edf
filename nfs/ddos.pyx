# cython: language_level=3
"""`ddos`: SYN-flood and heavy-hitter detection per source address with
count-min sketches over time windows; a source over a threshold is dropped
for a hold time, logged once, and listed in counters().

Two sketches (TCP SYNs without ACK; all packets) of `depth` rows by
`width` counters count per source in the current window; both are cleared
when a window ends.  A count-min estimate never undercounts, and
overcounts by at most e/width of the window's packets with probability
1 - e^-depth, so a normal client is blocked only if the window's whole
traffic is huge against the threshold; size `width` for that.

Sources are whole addresses, IPv4 or IPv6, read from the packet
(nfs/srckey.pxd), never the fast path's 32-bit digest of an IPv6 address
(which an attacker can make equal to a victim's).  A source's counters,
one per row, come from one keyed hash of its address: SipHash-1-3
(nflib/siphash.pxd) under a secret 64-bit `seed`, its two halves giving
every row's column by double hashing (Kirsch and Mitzenmacher).  With a
public hash (a CRC, seeded or not: CRC is affine, so two addresses that
collide under one seed collide under all) an attacker picks spoofed
sources that share the victim's counter in every row and gets the victim
blocked without it sending more than usual; without the seed they cannot.
The instances of a chain add their sketches together, so they must hash
alike: the controller writes one `seed` into every ddos instance's config
(controller/plans.py).  A config without one (plans of an older
controller, `onvm bench`) gets a random seed, the same for every ddos of
the process (the worker cores of an instance share their sketches), which
is logged.

Config (inline or a YAML `file`):

    window: 1.0              # seconds
    syn_threshold: 200       # SYNs per source per window
    packet_threshold: 100000 # packets per source per window
    hold: 10                 # seconds a source stays blocked
    depth: 4
    width: 8192
    max_blocked: 65536       # of each family, IPv4 and IPv6
    seed: 1234567890123      # optional: the sketch's secret, 0 .. 2^64-1

Spoofed-source floods spread over many addresses stay under a per-source
threshold: that needs SYN cookies at the server, not this NF.  Blocked
sources do not move with the instance (the instances of a chain hear each
other's blocks, see below).

Several instances (and the worker cores of one) count as one
(docs/nfs.md, nflib.sharing): the agent reads each one's sketch
(`sketch_sparse`) and block list (`blocked_raw`: sources as address
text) every fraction of a second and gives each the others' counts added
(`set_remote`, held beside the local sketch: an estimate is the least
over rows of local plus remote) and their blocked sources (`block`),
between two batches, never from the packet loop."""
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from nflib.nf cimport (pkt_l4, rte_mbuf, onvm_meta_of, onvm_meta, onvm_mtod,
    ONVM_ACTION_NEXT, ONVM_ACTION_DROP, rte_get_tsc_cycles, rte_get_tsc_hz,
    NativeNF)
from nflib.siphash cimport sipkey_t, siphash13, sipkey_of_seed
from nfs.srckey cimport (src_key_t, packet_src, src_len, src_text, src_from, srctab_t,
    srctab_init, srctab_free, srctab_find, srctab_insert, srctab_size, srctab_entries)

import logging
import secrets

from nfs.configs import parse_ddos as parse_config

log = logging.getLogger("onvm.nf.ddos")

REASONS = ("syn_flood", "heavy_hitter")
_process_seed = None        # the seed of configs without one (see the docstring)


def process_seed():
    """The random seed of this process's ddos instances whose config has
    none: drawn (and logged) once."""
    global _process_seed
    if _process_seed is None:
        _process_seed = secrets.randbits(64)
        log.warning("ddos: no sketch seed in the config (a plan of an older controller, "
                    "or a bench): using random seed %d for this process's ddos instances; "
                    "instances of a chain on other hosts hash otherwise, so their "
                    "sketches do not add up", _process_seed)
    return _process_seed


cdef struct ddos_t:
    uint32_t *syn          # depth x width
    uint32_t *pkt
    uint32_t *rsyn         # the peers' counts (set_remote), beside syn and pkt
    uint32_t *rpkt
    uint32_t depth, width
    sipkey_t key           # of the rows' hash (the config's seed)
    uint64_t window, window_end, hold
    uint32_t syn_threshold, pkt_threshold
    srctab_t blocked       # source -> position
    uint64_t block_until   # no entry of `blocked` lives past this (TSC)
    uint8_t *reason        # per position
    uint64_t passed, dropped, blocked_syn, blocked_heavy, windows, merged_blocks
    uint64_t no_source     # dropped: neither IPv4 nor IPv6 (the parser lets none through)


cdef inline void cm_columns(const ddos_t *t, const src_key_t *k, uint32_t *col) noexcept nogil:
    """The counter of source k in each row (row r's is col[r], an index
    of the depth x width array): one keyed hash, double hashing."""
    cdef uint64_t h = siphash13(&t.key, k.addr, src_len(k))
    cdef uint32_t h1 = <uint32_t>h, h2 = <uint32_t>(h >> 32) | 1, r
    for r in range(t.depth):
        # (h1 + r h2) mod 2^32 scaled to 0 .. width-1 (Lemire: no division)
        col[r] = r * t.width + <uint32_t>((<uint64_t>(h1 + r * h2) * t.width) >> 32)


cdef inline uint32_t cm_add(uint32_t *sk, const uint32_t *rk, uint32_t depth,
                            const uint32_t *col) noexcept nogil:
    """Count one in each of the counters `col`; returns the estimate (the
    least of them, each with the peers' count `rk` added)."""
    cdef uint32_t r, c, v, est = 0xffffffff
    for r in range(depth):
        c = col[r]
        sk[c] += 1
        v = sk[c] + rk[c]
        if v < est:
            est = v
    return est


cdef void report(const src_key_t *k, int reason, double hold) noexcept nogil:
    # Rare (once per blocked source and hold): worth taking the GIL to log.
    with gil:
        log.warning("ddos: blocking %s for %.1f s: %s over threshold in this window",
                    src_text(k), hold, REASONS[reason])


cdef void ddos_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    cdef ddos_t *t = <ddos_t *>ctx
    cdef uint64_t now = rte_get_tsc_cycles()
    cdef unsigned i
    cdef onvm_meta *meta
    cdef uint8_t *d
    cdef int l4, reason
    cdef int32_t pos
    cdef src_key_t src
    cdef uint32_t col[16]          # depth <= 16 (nfs.configs)
    if now >= t.window_end:
        memset(t.syn, 0, t.depth * t.width * sizeof(uint32_t))
        memset(t.pkt, 0, t.depth * t.width * sizeof(uint32_t))
        t.window_end = now + t.window
        t.windows += 1
    for i in range(n):
        meta = onvm_meta_of(pkts[i])
        if not packet_src(pkts[i], meta, &src):
            t.no_source += 1
            t.dropped += 1
            meta.action = ONVM_ACTION_DROP
            continue
        if now < t.block_until and srctab_find(&t.blocked, &src, now) >= 0:
            t.dropped += 1
            meta.action = ONVM_ACTION_DROP
            continue
        reason = -1
        cm_columns(t, &src, col)
        if cm_add(t.pkt, t.rpkt, t.depth, col) > t.pkt_threshold:
            reason = 1
        if meta.key.proto == 6:         # IPv4 or IPv6
            d = onvm_mtod(pkts[i])
            l4 = pkt_l4(meta)
            if l4 >= 0 and pkts[i].data_len >= <uint32_t>l4 + 14 and (d[l4 + 13] & 0x12) == 0x02:
                if cm_add(t.syn, t.rsyn, t.depth, col) > t.syn_threshold:
                    reason = 0
        if reason < 0:
            t.passed += 1
            meta.action = ONVM_ACTION_NEXT
            continue
        pos = srctab_insert(&t.blocked, &src, now + t.hold, now)
        if pos >= 0:
            t.reason[pos] = reason
            if now + t.hold > t.block_until:
                t.block_until = now + t.hold
        if reason == 0:
            t.blocked_syn += 1
        else:
            t.blocked_heavy += 1
        report(&src, reason, <double>t.hold / rte_get_tsc_hz())
        t.dropped += 1
        meta.action = ONVM_ACTION_DROP


cdef class DDoSFilter(NativeNF):
    cdef ddos_t t
    cdef readonly dict config
    cdef readonly object seed    # the sketch's secret (the config's, or process_seed())
    cdef public dict sharing     # the agent's exchange (host_agent.sharer): counters

    def __cinit__(self, config=None):
        memset(&self.t, 0, sizeof(ddos_t))

    def __init__(self, config=None):
        v = self.config = parse_config(config)
        hz = rte_get_tsc_hz()
        self.seed = v["seed"] if v["seed"] is not None else process_seed()
        sipkey_of_seed(self.seed, &self.t.key)
        self.t.depth, self.t.width = v["depth"], v["width"]
        self.t.syn = <uint32_t *>calloc(v["depth"] * v["width"], sizeof(uint32_t))
        self.t.pkt = <uint32_t *>calloc(v["depth"] * v["width"], sizeof(uint32_t))
        self.t.window = <uint64_t>(v["window"] * hz)
        self.t.hold = <uint64_t>(v["hold"] * hz)
        self.t.syn_threshold, self.t.pkt_threshold = v["syn_threshold"], v["packet_threshold"]
        srctab_init(&self.t.blocked, "ddos", v["max_blocked"])
        self.t.reason = <uint8_t *>calloc(srctab_size(&self.t.blocked), 1)
        self.t.rsyn = <uint32_t *>calloc(v["depth"] * v["width"], sizeof(uint32_t))
        self.t.rpkt = <uint32_t *>calloc(v["depth"] * v["width"], sizeof(uint32_t))
        if not (self.t.syn and self.t.pkt and self.t.rsyn and self.t.rpkt and self.t.reason):
            raise MemoryError()
        self.handlers.batch = ddos_batch
        self.handlers.ctx = <void *>&self.t

    def __dealloc__(self):
        free(self.t.syn); free(self.t.pkt); free(self.t.reason)
        free(self.t.rsyn); free(self.t.rpkt)
        srctab_free(&self.t.blocked)

    def blocked(self):
        """[{"src", "reason", "seconds_left"}] of the sources blocked now."""
        out = []
        for pos, src, ttl in srctab_entries(&self.t.blocked):
            out.append({"src": src, "reason": REASONS[self.t.reason[pos]],
                        "seconds_left": round(ttl, 3)})
        return sorted(out, key=lambda b: b["src"])

    def columns(self, src):
        """The counter (index of sketch_sparse's) of source `src` (address
        text) in each row: what this instance's seed makes of it."""
        cdef src_key_t k
        cdef uint32_t col[16]
        src_from(src, &k)
        cm_columns(&self.t, &k, col)
        return [col[r] for r in range(self.t.depth)]

    def sketch_sparse(self, cutoff=1, limit=256):
        """{"syn": [[index, count], ...], "pkt": [...]}: this instance's
        counters of the current window at or over `cutoff`, biggest first,
        at most `limit` of each (nflib.sharing.sparse)."""
        return {"syn": _sparse(self.t.syn, self.t.depth * self.t.width, cutoff, limit),
                "pkt": _sparse(self.t.pkt, self.t.depth * self.t.width, cutoff, limit)}

    def set_remote(self, syn, pkt):
        """The peers' counts ({index: count} of each sketch) this
        instance adds to its own; the rest are zero.  Call it while the
        loop stands still (Manager.hold)."""
        cdef uint32_t n = self.t.depth * self.t.width
        memset(self.t.rsyn, 0, n * sizeof(uint32_t))
        memset(self.t.rpkt, 0, n * sizeof(uint32_t))
        _fill(self.t.rsyn, n, syn, self.t.depth, self.t.width)
        _fill(self.t.rpkt, n, pkt, self.t.depth, self.t.width)

    def block(self, src, double seconds, int reason):
        """Block source `src` (address text, as blocked_raw gives it; an
        IPv4 address as the number older agents sent is taken too) for
        `seconds`, as a peer did; False if it is blocked already (or the
        table is full).  Call it while the loop stands still (Manager.hold)."""
        cdef uint64_t now = rte_get_tsc_cycles(), until
        cdef int32_t pos
        cdef src_key_t k
        if not 0 <= reason < len(REASONS):
            raise ValueError(f"ddos: block reason {reason} is none of {REASONS}")
        try:
            src_from(src, &k)
        except ValueError as err:
            raise ValueError(f"ddos: block: {err}") from None
        if srctab_find(&self.t.blocked, &k, now) >= 0:
            return False
        until = now + <uint64_t>(seconds * rte_get_tsc_hz())
        pos = srctab_insert(&self.t.blocked, &k, until, now)
        if pos < 0:
            return False
        self.t.reason[pos] = reason
        if until > self.t.block_until:
            self.t.block_until = until
        self.t.merged_blocks += 1
        return True

    def blocked_raw(self):
        """[[source as address text, seconds left, reason index], ...] (block())."""
        return [[src, ttl, self.t.reason[pos]]
                for pos, src, ttl in srctab_entries(&self.t.blocked)]

    def counters(self):
        return {"sharing": dict(self.sharing or {}, merged_blocks=self.t.merged_blocks),
                "passed": self.t.passed, "dropped": self.t.dropped,
                "blocked_syn_flood": self.t.blocked_syn, "blocked_heavy_hitter": self.t.blocked_heavy,
                "windows": self.t.windows, "no_source": self.t.no_source,
                "blocked": self.blocked()}


cdef list _sparse(uint32_t *sk, uint32_t n, uint32_t cutoff, uint32_t limit):
    cdef uint32_t i
    cdef list out = []
    for i in range(n):
        if sk[i] >= cutoff and sk[i] > 0:
            out.append((sk[i], i))
    out.sort(key=lambda x: (-x[0], x[1]))
    return [[i, c] for c, i in out[:limit]]


cdef _fill(uint32_t *sk, uint32_t n, dict counts, uint32_t depth, uint32_t width):
    for index, count in counts.items():
        if not 0 <= index < n:
            raise ValueError(f"ddos: sketch counter {index} out of 0 .. {n - 1} "
                             f"(depth x width {depth} x {width})")
        sk[<uint32_t>index] = min(count, 0xffffffff)
