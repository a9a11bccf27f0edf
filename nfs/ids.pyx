# cython: language_level=3
# distutils: libraries = hs
"""`ids`: payload signatures matched with Hyperscan, rules in a subset of
the Snort/Suricata language (nfs/idsrules.py); `alert` rules log, `drop`
rules log and drop.  Alerts are JSON lines (to the file named by `alerts`)
and per-rule counters.

Hyperscan runs in the batch function without the GIL, one scratch per
instance allocated at start.  Every content and pcre of every rule is one
pattern of one vectored database; a hit marks its pattern, and after the
scan each rule with a marked pattern is checked: all its patterns found,
at least one of them ending in this packet's payload, its header (proto,
addresses, ports, direction) matching.

Both directions of a flow are scanned, each on its own: a reply from the
server side (e.g. `uid=0(root)` in a shell's answer, the classic
ATTACK_RESPONSE signatures) alerts and drops like a request.  Flows are
keyed by the packet's bytes as they reach the IDS (an NF before it on the
same host may have rewritten them).

TCP reassembly, enough for signatures split across segments: per flow
direction (its own 5-tuple, so the two directions never share a tail) the
IDS keeps the last W bytes of payload, W = the longest
pattern's width - 1 (Hyperscan's expression info; 128 for unbounded
pcres), and the next expected sequence number.  An in-order segment is
scanned as one vector [tail, payload], so a pattern that began in the
previous segment is found; a rule whose matches all end inside the tail
was judged with the previous segment and does not fire again.  Out-of-order segments are
scanned alone.  Hyperscan's stream mode would be exact but costs a stream
state per flow and a copy on every flow move; this costs W bytes.  FIN or
RST ends a flow's state; idle flows expire after `flow_timeout`.

Config: {"rules": PATH} or {"rules_text": TEXT}, "alerts": PATH (JSON
lines, optional), "flow_timeout": seconds (120), "max_flows": (65536).
IDS flow state is not exported: after a move, reassembly starts afresh."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset, memmove
from libc.stdio cimport FILE, fopen, fclose, fprintf, fflush
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME
from nflib.nf cimport (pkt_l4, rte_mbuf, onvm_meta_of, onvm_meta, onvm_mtod,
    onvm_flow_key, ONVM_ACTION_NEXT, ONVM_ACTION_DROP, rte_get_tsc_cycles,
    rte_get_tsc_hz, NativeNF, ftab_t, ftab_new, ftab_free, ftab_find, ftab_insert,
    ftab_delete, ftab_live, rd16, rd32)
from nfs.pkttuple cimport packet_key
from nfs.hyperscan cimport *

import json
import logging

from nflib.api import NFConfigError
from nfs.configs import parse_ids

log = logging.getLogger("onvm.nf.ids")

DEF TAIL_MAX = 128


cdef struct rule_t:
    uint8_t proto          # 0: any
    uint8_t drop
    uint8_t bidir
    uint32_t src, smask, dst, dmask    # host order
    uint16_t sp_lo, sp_hi, dp_lo, dp_hi
    uint32_t first, count  # its patterns
    uint32_t sid
    const char *msg_json   # the msg as a JSON string, quotes included
    uint64_t hits


cdef struct flow_t:
    uint32_t next_seq
    uint16_t len
    # tail bytes follow: ids_t.tails + pos * tail_w


cdef struct ids_t:
    hs_database_t *db
    hs_scratch_t *scratch
    rule_t *rules
    uint32_t nrules
    uint32_t *pat_rule     # pattern id -> rule
    uint32_t npats
    # scan state, reset after every packet
    uint8_t *seen          # per pattern: 1 found in the tail, 2 in the payload
    uint32_t *hitlist
    uint32_t nhits
    uint8_t *checked       # per rule
    unsigned long long skip_to   # matches ending at or before this were reported
    # TCP flows
    ftab_t *flows
    flow_t *fstate
    uint8_t *tails
    uint32_t tail_w
    uint64_t timeout
    FILE *alerts
    uint64_t packets, scanned_bytes, alerted, dropped, reassembled, untracked, hs_errors


cdef int on_match(unsigned int id, unsigned long long frm, unsigned long long to,
                  unsigned int flags, void *ctx) noexcept nogil:
    cdef ids_t *s = <ids_t *>ctx
    if s.seen[id] == 0:
        s.hitlist[s.nhits] = id
        s.nhits += 1
    # 1: found in the tail only (reported with the previous segment if it
    # completed a rule there), 2: found ending in this segment.
    s.seen[id] |= 1 if to <= s.skip_to else 2
    return 0


cdef inline bint in_range(uint16_t v, uint16_t lo, uint16_t hi) noexcept nogil:
    return lo <= v and v <= hi


cdef bint header_matches(rule_t *r, uint8_t proto, uint32_t src, uint32_t dst,
                         uint16_t sport, uint16_t dport) noexcept nogil:
    if r.proto and r.proto != proto:
        return False
    if (src & r.smask) == r.src and (dst & r.dmask) == r.dst \
            and in_range(sport, r.sp_lo, r.sp_hi) and in_range(dport, r.dp_lo, r.dp_hi):
        return True
    return r.bidir and (dst & r.smask) == r.src and (src & r.dmask) == r.dst \
        and in_range(dport, r.sp_lo, r.sp_hi) and in_range(sport, r.dp_lo, r.dp_hi)


cdef void write_alert(ids_t *s, rule_t *r, uint8_t proto, uint32_t src, uint32_t dst,
                      uint16_t sport, uint16_t dport) noexcept nogil:
    cdef timespec ts
    if s.alerts == NULL:
        return
    clock_gettime(CLOCK_REALTIME, &ts)
    fprintf(s.alerts,
            b'{"ts": %ld.%06ld, "sid": %u, "action": "%s", "msg": %s, "proto": %u, '
            b'"src": "%u.%u.%u.%u", "sport": %u, "dst": "%u.%u.%u.%u", "dport": %u}\n',
            <long>ts.tv_sec, <long>(ts.tv_nsec // 1000), r.sid,
            b"drop" if r.drop else b"alert", r.msg_json, proto,
            src >> 24, (src >> 16) & 0xff, (src >> 8) & 0xff, src & 0xff, sport,
            dst >> 24, (dst >> 16) & 0xff, (dst >> 8) & 0xff, dst & 0xff, dport)


cdef bint judge(ids_t *s, uint8_t proto, uint32_t src, uint32_t dst,
                uint16_t sport, uint16_t dport) noexcept nogil:
    """After a scan: fire every rule whose patterns were all found and whose
    header matches; reset the scan state.  True if a drop rule fired."""
    cdef uint32_t i, j, ri
    cdef rule_t *r
    cdef bint drop = False, whole, fresh
    for i in range(s.nhits):
        ri = s.pat_rule[s.hitlist[i]]
        if s.checked[ri]:
            continue
        s.checked[ri] = 1
        r = &s.rules[ri]
        whole = True
        fresh = False
        for j in range(r.first, r.first + r.count):
            if not s.seen[j]:
                whole = False
                break
            if s.seen[j] & 2:
                fresh = True
        if whole and fresh and header_matches(r, proto, src, dst, sport, dport):
            r.hits += 1
            s.alerted += 1
            write_alert(s, r, proto, src, dst, sport, dport)
            if r.drop:
                drop = True
    for i in range(s.nhits):
        s.seen[s.hitlist[i]] = 0
        s.checked[s.pat_rule[s.hitlist[i]]] = 0
    s.nhits = 0
    return drop


cdef bint scan_packet(ids_t *s, rte_mbuf *m, uint64_t now) noexcept nogil:
    """Scan one packet's payload (with its flow's tail); True to drop it."""
    cdef onvm_meta *meta = onvm_meta_of(m)
    cdef uint8_t *d = onvm_mtod(m)
    cdef uint32_t length = m.data_len
    cdef int l4 = pkt_l4(meta) if meta.key.family == 4 else -1
    cdef uint32_t off, plen, seq = 0, keep
    cdef uint8_t proto = meta.key.proto, tcpflags = 0
    cdef int32_t pos = -1
    cdef flow_t *f = NULL
    cdef uint8_t *tail = NULL
    cdef const char *bufs[2]
    cdef unsigned int lens[2]
    cdef unsigned int nbuf = 0
    cdef hs_error_t err
    cdef onvm_flow_key k
    if l4 < 0:
        return False
    packet_key(m, meta, &k)
    if proto == 6:
        if length < <uint32_t>l4 + 20:
            return False
        off = l4 + (d[l4 + 12] >> 4) * 4
        seq = rd32(d + l4 + 4)
        tcpflags = d[l4 + 13]
    elif proto == 17 or proto == 1:
        off = l4 + 8
    else:
        off = l4
    plen = length - off if length > off else 0
    if proto == 6 and s.tail_w:
        pos = ftab_find(s.flows, &k, now)
        if pos < 0 and plen:
            pos = ftab_insert(s.flows, &k, now + s.timeout, now)
            if pos < 0:
                s.untracked += 1
            else:
                s.fstate[pos].len = 0
        if pos >= 0:
            f = &s.fstate[pos]
            tail = s.tails + <uint64_t>pos * s.tail_w
            s.flows.expires[pos] = now + s.timeout
            if f.len and f.next_seq == seq and plen:
                bufs[0] = <const char *>tail
                lens[0] = f.len
                nbuf = 1
                s.reassembled += 1
    s.skip_to = lens[0] if nbuf else 0
    if plen:
        bufs[nbuf] = <const char *>(d + off)
        lens[nbuf] = plen
        nbuf += 1
        s.scanned_bytes += plen
        err = hs_scan_vector(s.db, bufs, lens, nbuf, 0, s.scratch, on_match, <void *>s)
        if err != HS_SUCCESS:
            s.hs_errors += 1
    if f != NULL:
        if tcpflags & 0x05:            # FIN or RST: the direction is over
            ftab_delete(s.flows, &k)
        elif plen:
            # Keep the last tail_w bytes of [old tail (if in order), payload].
            if plen >= s.tail_w:
                memcpy(tail, d + off + plen - s.tail_w, s.tail_w)
                f.len = s.tail_w
            else:
                if nbuf == 1:
                    f.len = 0          # out of order: start the tail afresh
                keep = s.tail_w - plen
                if f.len > keep:
                    memmove(tail, tail + f.len - keep, keep)
                    f.len = keep
                memcpy(tail + f.len, d + off, plen)
                f.len += plen
            f.next_seq = seq + plen
    if s.nhits == 0:
        return False
    return judge(s, proto, rd32(<uint8_t *>&k.src), rd32(<uint8_t *>&k.dst),
                 rd16(<uint8_t *>&k.sport), rd16(<uint8_t *>&k.dport))


cdef void ids_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    cdef ids_t *s = <ids_t *>ctx
    cdef uint64_t now = rte_get_tsc_cycles()
    cdef unsigned i
    cdef uint64_t alerted = s.alerted
    for i in range(n):
        s.packets += 1
        if onvm_meta_of(pkts[i]).key.family == 4 and scan_packet(s, pkts[i], now):
            s.dropped += 1
            onvm_meta_of(pkts[i]).action = ONVM_ACTION_DROP
        else:
            onvm_meta_of(pkts[i]).action = ONVM_ACTION_NEXT
    if s.alerts != NULL and s.alerted != alerted:
        fflush(s.alerts)


def _mask(net):
    if net is None:
        return 0, 0
    return int(net.network_address), (0xffffffff << (32 - net.prefixlen)) & 0xffffffff if net.prefixlen else 0


cdef unsigned int _hs_flags(p):
    cdef unsigned int fl = HS_FLAG_ALLOWEMPTY
    if p.caseless:
        fl |= HS_FLAG_CASELESS
    if p.dotall:
        fl |= HS_FLAG_DOTALL
    if p.multiline:
        fl |= HS_FLAG_MULTILINE
    return fl


cdef class IDS(NativeNF):
    cdef ids_t s
    cdef readonly list rules
    cdef list msgs             # keeps the msg_json strings alive
    cdef readonly object alerts_path

    def __cinit__(self, config=None):
        memset(&self.s, 0, sizeof(ids_t))

    def __init__(self, config=None):
        v, rules, source = parse_ids(config)
        self.rules = rules
        self._compile(rules, source)
        self._tables(rules, v)
        if v["alerts"]:
            self.alerts_path = v["alerts"]
            self.s.alerts = fopen(v["alerts"].encode(), b"a")
            if self.s.alerts == NULL:
                raise NFConfigError(f"<ids config>: alerts: cannot open {v['alerts']!r} for appending")
        self.handlers.batch = ids_batch
        self.handlers.ctx = <void *>&self.s
        log.info("ids: %d rules, %d patterns, TCP tail %d bytes (Hyperscan %s)",
                 len(rules), self.s.npats, self.s.tail_w, hs_version().decode())

    def _compile(self, rules, source):
        cdef hs_compile_error_t *err = NULL
        cdef hs_expr_info_t *info = NULL
        pats = [(ri, p) for ri, r in enumerate(rules) for p in r.patterns]
        n = len(pats)
        cdef const char **exprs = <const char **>malloc(n * sizeof(char *))
        cdef unsigned int *flags = <unsigned int *>malloc(n * sizeof(unsigned int))
        cdef unsigned int *ids = <unsigned int *>malloc(n * sizeof(unsigned int))
        encoded = [p.regex.encode("latin-1") for _, p in pats]
        widest = 0
        try:
            for i, (ri, p) in enumerate(pats):
                exprs[i] = encoded[i]
                flags[i] = _hs_flags(p)
                ids[i] = i
                if hs_expression_info(exprs[i], flags[i], &info, &err) != HS_SUCCESS:
                    msg = err.message.decode()
                    hs_free_compile_error(err)
                    raise NFConfigError(f"{source}:{rules[ri].line}: pattern /{p.regex}/ "
                                        f"cannot be compiled: {msg}")
                widest = max(widest, info.max_width)
                free(info)
            if hs_compile_multi(exprs, flags, ids, n, HS_MODE_VECTORED, NULL,
                                &self.s.db, &err) != HS_SUCCESS:
                msg = err.message.decode()
                where = rules[pats[err.expression][0]].line if err.expression >= 0 else "?"
                hs_free_compile_error(err)
                raise NFConfigError(f"{source}:{where}: Hyperscan: {msg}")
        finally:
            free(exprs); free(flags); free(ids)
        if hs_alloc_scratch(self.s.db, &self.s.scratch) != HS_SUCCESS:
            raise MemoryError("ids: Hyperscan scratch")
        self.s.npats = n
        # A match is found across two segments if the tail holds all but
        # its last byte; unbounded pcres get TAIL_MAX.
        self.s.tail_w = min(TAIL_MAX, max(0, widest - 1))

    def _tables(self, rules, v):
        cdef rule_t *r
        n = len(rules)
        self.s.nrules = n
        self.s.rules = <rule_t *>calloc(n, sizeof(rule_t))
        self.s.pat_rule = <uint32_t *>calloc(self.s.npats, sizeof(uint32_t))
        self.s.seen = <uint8_t *>calloc(self.s.npats, 1)
        self.s.hitlist = <uint32_t *>calloc(self.s.npats, sizeof(uint32_t))
        self.s.checked = <uint8_t *>calloc(n, 1)
        if not (self.s.rules and self.s.pat_rule and self.s.seen and self.s.hitlist and self.s.checked):
            raise MemoryError()
        self.msgs = []
        first = 0
        for ri, rule in enumerate(rules):
            r = &self.s.rules[ri]
            r.proto = rule.proto
            r.drop = rule.action == "drop"
            r.bidir = rule.bidir
            r.src, r.smask = _mask(rule.src)
            r.dst, r.dmask = _mask(rule.dst)
            r.sp_lo, r.sp_hi = rule.sport
            r.dp_lo, r.dp_hi = rule.dport
            r.first, r.count = first, len(rule.patterns)
            r.sid = rule.sid
            msg = json.dumps(rule.msg).encode()
            self.msgs.append(msg)
            r.msg_json = msg
            for j in range(first, first + len(rule.patterns)):
                self.s.pat_rule[j] = ri
            first += len(rule.patterns)
        self.s.timeout = <uint64_t>(v["flow_timeout"] * rte_get_tsc_hz())
        if self.s.tail_w:
            self.s.flows = ftab_new("ids", v["max_flows"], sizeof(onvm_flow_key))
            self.s.fstate = <flow_t *>calloc(v["max_flows"] + 1, sizeof(flow_t))
            self.s.tails = <uint8_t *>calloc(v["max_flows"] + 1, self.s.tail_w)
            if self.s.fstate == NULL or self.s.tails == NULL:
                raise MemoryError()

    def __dealloc__(self):
        if self.s.scratch != NULL:
            hs_free_scratch(self.s.scratch)
        if self.s.db != NULL:
            hs_free_database(self.s.db)
        if self.s.alerts != NULL:
            fclose(self.s.alerts)
        ftab_free(self.s.flows)
        free(self.s.fstate); free(self.s.tails); free(self.s.rules); free(self.s.pat_rule)
        free(self.s.seen); free(self.s.hitlist); free(self.s.checked)

    def counters(self):
        cdef uint64_t now = rte_get_tsc_cycles()
        return {
            "packets": self.s.packets, "scanned_bytes": self.s.scanned_bytes,
            "alerts": self.s.alerted, "dropped": self.s.dropped,
            "reassembled": self.s.reassembled, "untracked": self.s.untracked,
            "scan_errors": self.s.hs_errors,
            "flows": ftab_live(self.s.flows, now) if self.s.flows != NULL else 0,
            "rules": [{"sid": r.sid, "line": r.line, "action": r.action, "msg": r.msg,
                       "hits": self.s.rules[i].hits} for i, r in enumerate(self.rules)],
        }
