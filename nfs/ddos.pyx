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

Config (inline or a YAML `file`):

    window: 1.0              # seconds
    syn_threshold: 200       # SYNs per source per window
    packet_threshold: 100000 # packets per source per window
    hold: 10                 # seconds a source stays blocked
    depth: 4
    width: 8192
    max_blocked: 65536

Spoofed-source floods spread over many addresses stay under a per-source
threshold: that needs SYN cookies at the server, not this NF.  Blocked
sources do not move with the instance.

Several instances (and the worker cores of one) count as one
(docs/nfs.md, nflib.sharing): the agent reads each one's sketch
(`sketch_sparse`) and block list (`blocked_raw`) every fraction of a
second and gives each the others' counts added (`set_remote`, held
beside the local sketch: an estimate is the least over rows of local
plus remote) and their blocked sources (`block`), between two batches,
never from the packet loop."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, intptr_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from nflib.nf cimport (pkt_l4, rte_mbuf, onvm_meta_of, onvm_meta, onvm_mtod,
    ONVM_ACTION_NEXT, ONVM_ACTION_DROP, rte_get_tsc_cycles, rte_get_tsc_hz,
    rte_hash_crc, NativeNF, ftab_t, ftab_new, ftab_free,
    ftab_find, ftab_insert)
from nfs.pkttuple cimport live_entries

import ipaddress
import logging

from nfs.configs import parse_ddos as parse_config

log = logging.getLogger("onvm.nf.ddos")

REASONS = ("syn_flood", "heavy_hitter")


cdef struct ddos_t:
    uint32_t *syn          # depth x width
    uint32_t *pkt
    uint32_t *rsyn         # the peers' counts (set_remote), beside syn and pkt
    uint32_t *rpkt
    uint32_t depth, width
    uint64_t window, window_end, hold
    uint32_t syn_threshold, pkt_threshold
    ftab_t *blocked        # source (network order) -> position
    uint8_t *reason        # per position
    uint64_t passed, dropped, blocked_syn, blocked_heavy, windows, merged_blocks


cdef uint32_t cm_add(uint32_t *sk, uint32_t *rk, uint32_t depth, uint32_t width,
                     uint32_t src) noexcept nogil:
    """Count one for src; returns its estimate (the least of its counters,
    each with the peers' count `rk` added)."""
    cdef uint32_t r, c, v, est = 0xffffffff
    for r in range(depth):
        c = rte_hash_crc(&src, 4, <uint32_t>(0x9e3779b9UL * (r + 1))) % width
        sk[r * width + c] += 1
        v = sk[r * width + c] + rk[r * width + c]
        if v < est:
            est = v
    return est


cdef void report(uint32_t src, int reason, double hold) noexcept nogil:
    # Rare (once per blocked source and hold): worth taking the GIL to log.
    with gil:
        log.warning("ddos: blocking %s for %.1f s: %s over threshold in this window",
                    ipaddress.IPv4Address(src.to_bytes(4, "little")), hold, REASONS[reason])


cdef void ddos_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    cdef ddos_t *t = <ddos_t *>ctx
    cdef uint64_t now = rte_get_tsc_cycles()
    cdef unsigned i
    cdef onvm_meta *meta
    cdef uint8_t *d
    cdef int l4, reason
    cdef int32_t pos
    cdef uint32_t src
    if now >= t.window_end:
        memset(t.syn, 0, t.depth * t.width * sizeof(uint32_t))
        memset(t.pkt, 0, t.depth * t.width * sizeof(uint32_t))
        t.window_end = now + t.window
        t.windows += 1
    for i in range(n):
        meta = onvm_meta_of(pkts[i])
        src = meta.key.src
        if ftab_find(t.blocked, &src, now) >= 0:
            t.dropped += 1
            meta.action = ONVM_ACTION_DROP
            continue
        reason = -1
        if cm_add(t.pkt, t.rpkt, t.depth, t.width, src) > t.pkt_threshold:
            reason = 1
        if meta.key.proto == 6:         # IPv4 or IPv6 (its source as its digest)
            d = onvm_mtod(pkts[i])
            l4 = pkt_l4(meta)
            if l4 >= 0 and pkts[i].data_len >= <uint32_t>l4 + 14 and (d[l4 + 13] & 0x12) == 0x02:
                if cm_add(t.syn, t.rsyn, t.depth, t.width, src) > t.syn_threshold:
                    reason = 0
        if reason < 0:
            t.passed += 1
            meta.action = ONVM_ACTION_NEXT
            continue
        pos = ftab_insert(t.blocked, &src, now + t.hold, now)
        if pos >= 0:
            t.reason[pos] = reason
        if reason == 0:
            t.blocked_syn += 1
        else:
            t.blocked_heavy += 1
        report(src, reason, <double>t.hold / rte_get_tsc_hz())
        t.dropped += 1
        meta.action = ONVM_ACTION_DROP


cdef class DDoSFilter(NativeNF):
    cdef ddos_t t
    cdef readonly dict config
    cdef public dict sharing     # the agent's exchange (host_agent.sharer): counters

    def __cinit__(self, config=None):
        memset(&self.t, 0, sizeof(ddos_t))

    def __init__(self, config=None):
        v = self.config = parse_config(config)
        hz = rte_get_tsc_hz()
        self.t.depth, self.t.width = v["depth"], v["width"]
        self.t.syn = <uint32_t *>calloc(v["depth"] * v["width"], sizeof(uint32_t))
        self.t.pkt = <uint32_t *>calloc(v["depth"] * v["width"], sizeof(uint32_t))
        self.t.window = <uint64_t>(v["window"] * hz)
        self.t.hold = <uint64_t>(v["hold"] * hz)
        self.t.syn_threshold, self.t.pkt_threshold = v["syn_threshold"], v["packet_threshold"]
        self.t.blocked = ftab_new("ddos", v["max_blocked"], 4)
        self.t.reason = <uint8_t *>calloc(v["max_blocked"] + 1, 1)
        self.t.rsyn = <uint32_t *>calloc(v["depth"] * v["width"], sizeof(uint32_t))
        self.t.rpkt = <uint32_t *>calloc(v["depth"] * v["width"], sizeof(uint32_t))
        if not (self.t.syn and self.t.pkt and self.t.rsyn and self.t.rpkt and self.t.reason):
            raise MemoryError()
        self.handlers.batch = ddos_batch
        self.handlers.ctx = <void *>&self.t

    def __dealloc__(self):
        free(self.t.syn); free(self.t.pkt); free(self.t.reason)
        free(self.t.rsyn); free(self.t.rpkt)
        ftab_free(self.t.blocked)

    def blocked(self):
        """[{"src", "reason", "seconds_left"}] of the sources blocked now."""
        out = []
        for pos, key, ttl in live_entries(self.t.blocked):
            src = (<const uint32_t *><intptr_t>key)[0]
            out.append({"src": str(ipaddress.IPv4Address(src.to_bytes(4, "little"))),
                        "reason": REASONS[self.t.reason[pos]], "seconds_left": round(ttl, 3)})
        return sorted(out, key=lambda b: b["src"])

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

    def block(self, uint32_t src, double seconds, int reason):
        """Block source `src` (as blocked_raw gives it) for `seconds`, as a
        peer did; False if it is blocked already (or the table is full).
        Call it while the loop stands still (Manager.hold)."""
        cdef uint64_t now = rte_get_tsc_cycles()
        cdef int32_t pos
        if not 0 <= reason < len(REASONS):
            raise ValueError(f"ddos: block reason {reason} is none of {REASONS}")
        if ftab_find(self.t.blocked, &src, now) >= 0:
            return False
        pos = ftab_insert(self.t.blocked, &src, now + <uint64_t>(seconds * rte_get_tsc_hz()), now)
        if pos < 0:
            return False
        self.t.reason[pos] = reason
        self.t.merged_blocks += 1
        return True

    def blocked_raw(self):
        """[[source as a number, seconds left, reason index], ...] (block())."""
        return [[(<const uint32_t *><intptr_t>key)[0], ttl, self.t.reason[pos]]
                for pos, key, ttl in live_entries(self.t.blocked)]

    def counters(self):
        return {"sharing": dict(self.sharing or {}, merged_blocks=self.t.merged_blocks),
                "passed": self.t.passed, "dropped": self.t.dropped,
                "blocked_syn_flood": self.t.blocked_syn, "blocked_heavy_hitter": self.t.blocked_heavy,
                "windows": self.t.windows, "blocked": self.blocked()}


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
