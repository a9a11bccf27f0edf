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

TCP streams are matched in sequence order, as the receiver will read
them: per flow direction the IDS keeps the next expected sequence number,
the last W bytes (the tail; W = the longest pattern's width - 1, at most
128) and, for a flow picked up without its SYN, its first W bytes (the
head).  In order: scanned as [tail, payload]; after a gap: dropped until
the sender's retransmission fills it (it holds no packets); an overlap
whose bytes differ: dropped; older than the tail: scanned alone.  The
whole policy, with its counters, is in docs/nfs.md ("ids").

Rules are replaced while the NF runs (`reload`, or `prepare_reload` then
`adopt`): the new set (nfs/idsset.pyx's RuleSet: databases, tables,
alerts file) is built beside the running one, published with one atomic
store and put in force at the next batch (a batch reads `live` once, at
its start); the old set is freed once the batch that may have read it
ended.  Flows, their tails, threshold windows (keyed by sid) and counters
stay; per-rule hits count from the set's load.  A set that cannot run
raises NFConfigError (FILE:LINE), counted in `reload_failures`, and the
running one stays.

Config: {"rules": PATH} or {"rules_text": TEXT}, "alerts": PATH (JSON
lines, optional), "flow_timeout": seconds (120), "max_flows": (65536),
"vars".  IDS flow state is not exported: after a move, reassembly starts
afresh.

Not here: the rule language (nfs/idsrules.py), building a rule set
(nfs/idsset.pyx), watching the rule file (host_agent/agent.py)."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset, memmove, memchr
from libc.stdio cimport FILE, fopen, fclose, fprintf, fflush
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME
from nflib.nf cimport (pkt_l4, rte_mbuf, onvm_meta_of, onvm_meta, onvm_mtod,
    onvm_flow_key, ONVM_ACTION_NEXT, ONVM_ACTION_DROP, rte_get_tsc_cycles,
    rte_get_tsc_hz, NativeNF, ftab_t, ftab_new, ftab_free, ftab_find, ftab_insert,
    ftab_delete, ftab_live, rd16, rd32)
from nfs.pkttuple cimport packet_key
from nfs.hyperscan cimport *
from nfs.httpparts cimport lower, normalise_uri, header_value

cdef extern from "<string.h>" nogil:
    void *memmem(const void *hay, size_t n, const void *needle, size_t m)   # GNU
from nfs.idsstate cimport *
from nfs.idsset cimport RuleSet

import json
import logging
import time

from nflib.api import NFConfigError
from nfs.idsrules import BUFFERS, file_stamp, skipped_report
from nfs.idsset import runnable      # noqa: F401 (nfs/check.py's)

log = logging.getLogger("onvm.nf.ids")

cdef extern from *:
    """
    /* A reload publishes the next rule set and then waits while a batch
       that may have read the old one runs: a store then a load on each side
       (Dekker's pattern), which needs sequential consistency on both. */
    static inline void *ids_load_ptr(void **p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline void *ids_swap_ptr(void **p, void *v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
    static inline void ids_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    static inline uint32_t ids_load_u32(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline uint64_t ids_load_u64(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    """
    void *ids_load_ptr(void **p) noexcept nogil
    void *ids_swap_ptr(void **p, void *v) noexcept nogil
    void ids_store_u32(uint32_t *p, uint32_t v) noexcept nogil
    uint32_t ids_load_u32(uint32_t *p) noexcept nogil
    uint64_t ids_load_u64(uint64_t *p) noexcept nogil

cdef int on_match(unsigned int id, unsigned long long frm, unsigned long long to,
                  unsigned int flags, void *ctx) noexcept nogil:
    """Hyperscan found the expression of pattern group `id` (idsset._database):
    checked and its end kept once, then each pattern of the group noted."""
    cdef ids_t *s = <ids_t *>ctx
    cdef long long rel
    # 1: found in the tail only (reported with the previous segment if it
    # completed a rule there), 2: found ending in this segment.
    cdef uint8_t bit = 1 if to <= s.skip_to else 2
    if s.rs.pat_lenchk[id]:
        if s.buf_end < s.rs.pat_size_lo[id] or s.buf_end > s.rs.pat_size_hi[id]:
            return 0
        if s.rs.pat_endswith[id] and <long long>to - s.payload_at != s.buf_end:
            return 0
    if to > s.skip_to and (s.rs.pat_min_end[id] or s.rs.pat_max_end[id] != <uint32_t>0xFFFFFFFF):
        # offset/depth: where in this packet's payload the match ends
        rel = <long long>to - s.payload_at
        if rel < s.rs.pat_min_end[id] or rel > s.rs.pat_max_end[id]:
            return 0
    if s.rs.pat_track[id]:
        if s.rs.npos[id] < MAXPOS:
            s.rs.pos[id * MAXPOS + s.rs.npos[id]] = <int32_t>(<long long>to - s.payload_at)
            s.rs.npos[id] += 1
        else:
            s.pos_overflow += 1
    if s.rs.seen[id] & bit:
        return 0        # the group is noted so already: every member with it
    if s.rs.pat_neg[id]:
        # contents that must be absent make no rule a candidate: the group's
        # first pattern stands for all (judge reads seen[pat_lead])
        if s.rs.seen[id] == 0:
            s.rs.hitlist[s.rs.nhits] = id
            s.rs.nhits += 1
        s.rs.seen[id] |= bit
        return 0
    while id != NO_PAT:
        if s.rs.seen[id] == 0:
            s.rs.hitlist[s.rs.nhits] = id
            s.rs.nhits += 1
        s.rs.seen[id] |= bit
        id = s.rs.pat_next[id]
    return 0


cdef bint nets_match(ids_t *s, uint32_t first, uint32_t n, uint32_t ip) noexcept nogil:
    """In one of the positive nets (or there is none) and in no negated one."""
    cdef uint32_t i
    cdef bint has_pos = False, hit = False
    for i in range(first, first + n):
        if (ip & s.rs.nets[i].mask) == s.rs.nets[i].net:
            if s.rs.nets[i].neg:
                return False
            hit = True
        elif not s.rs.nets[i].neg:
            has_pos = True
    return hit or not has_pos


cdef bint ports_match(ids_t *s, uint32_t first, uint32_t n, uint16_t port) noexcept nogil:
    cdef uint32_t i
    cdef bint has_pos = False, hit = False
    for i in range(first, first + n):
        if s.rs.ports[i].lo <= port and port <= s.rs.ports[i].hi:
            if s.rs.ports[i].neg:
                return False
            hit = True
        elif not s.rs.ports[i].neg:
            has_pos = True
    return hit or not has_pos


cdef bint tcp_flags_match(rule_t *r, int tcpflags) noexcept nogil:
    cdef uint8_t f
    if tcpflags < 0:
        return False
    f = <uint8_t>tcpflags & ~r.flags_ignored
    if r.flags_mode == 1:
        return f == r.flags
    if r.flags_mode == 2:
        return (f & r.flags) == r.flags
    if r.flags_mode == 3:
        return (f & r.flags) != 0
    return (f & r.flags) == 0


cdef bint header_matches(ids_t *s, rule_t *r, uint8_t proto, uint32_t src, uint32_t dst,
                         uint16_t sport, uint16_t dport, uint8_t established,
                         uint8_t direction, uint32_t plen) noexcept nogil:
    if r.proto and r.proto != proto:
        return False
    if r.established and r.established != (1 if established else 2):
        return False
    if plen < r.dsize_lo or plen > r.dsize_hi:
        return False
    if r.flags_mode and not tcp_flags_match(r, s.tcpflags):
        return False
    if r.direction and r.direction != direction:
        return False
    if nets_match(s, r.sa, r.sn, src) and nets_match(s, r.da, r.dn, dst) \
            and ports_match(s, r.spa, r.spn, sport) and ports_match(s, r.dpa, r.dpn, dport):
        return True
    return r.bidir and nets_match(s, r.sa, r.sn, dst) and nets_match(s, r.da, r.dn, src) \
        and ports_match(s, r.spa, r.spn, dport) and ports_match(s, r.dpa, r.dpn, sport)


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct tm:
        pass
    tm *gmtime_r(const time_t *timep, tm *result)
    size_t strftime(char *s, size_t maxsize, const char *fmt, const tm *t)


cdef void write_alert(ids_t *s, rule_t *r, uint8_t proto, uint32_t src, uint32_t dst,
                      uint16_t sport, uint16_t dport) noexcept nogil:
    """One alert as a line of Suricata's EVE JSON (event_type alert), so
    tools that read eve.json read it."""
    cdef timespec ts
    cdef tm when
    cdef time_t secs
    cdef char stamp[32]
    cdef const char *pname = b"TCP" if proto == 6 else b"UDP" if proto == 17 \
        else b"ICMP" if proto == 1 else b"IP"
    if s.rs.alerts == NULL:
        return
    clock_gettime(CLOCK_REALTIME, &ts)
    secs = ts.tv_sec
    gmtime_r(&secs, &when)
    strftime(stamp, sizeof(stamp), b"%Y-%m-%dT%H:%M:%S", &when)
    fprintf(s.rs.alerts,
            b'{"timestamp": "%s.%06ld+0000", "event_type": "alert", '
            b'"src_ip": "%u.%u.%u.%u", "src_port": %u, "dest_ip": "%u.%u.%u.%u", '
            b'"dest_port": %u, "proto": "%s", %s}\n',
            stamp, <long>(ts.tv_nsec // 1000),
            src >> 24, (src >> 16) & 0xff, (src >> 8) & 0xff, src & 0xff, sport,
            dst >> 24, (dst >> 16) & 0xff, (dst >> 8) & 0xff, dst & 0xff, dport,
            pname, r.alert_json)


cdef bint placed(ids_t *s, uint32_t j, uint32_t last, bint have_prev,
                 int32_t prev_end) noexcept nogil:
    """Can patterns j.. of a rule be given match ends so that each relative
    one starts at least `distance` after the end of the one before it and,
    with `within`, ends within `within` bytes of that start (Snort's
    distance and within)?  Depth-first over the ends kept per pattern."""
    cdef uint32_t k, g
    cdef int32_t end, start
    if j > last:
        return True
    g = s.rs.pat_lead[j]        # its group's match ends
    if not s.rs.pat_track[j]:
        return placed(s, j + 1, last, False, 0)
    if s.rs.pat_neg[j]:
        # content:!"..." after the previous one: none of its matches may lie
        # in the window; the next relative content counts from the same end.
        if have_prev:
            start = prev_end + s.rs.pat_dist[j]
            for k in range(s.rs.npos[g]):
                end = s.rs.pos[g * MAXPOS + k]
                if end - <int32_t>s.rs.pat_len[j] >= start and \
                        (not s.rs.pat_within[j] or end <= start + s.rs.pat_within[j]):
                    return False
        return placed(s, j + 1, last, have_prev, prev_end)
    for k in range(s.rs.npos[g]):
        end = s.rs.pos[g * MAXPOS + k]
        if s.rs.pat_rel[j] and have_prev:
            start = prev_end + s.rs.pat_dist[j]
            if end - <int32_t>s.rs.pat_len[j] < start:
                continue
            if s.rs.pat_within[j] and end > start + s.rs.pat_within[j]:
                continue
        if s.rs.pat_isdata[j] >= 0 and \
                (end + s.rs.pat_isdata[j] < <int32_t>s.plen) == <bint>s.rs.pat_isdata_neg[j]:
            continue
        if s.rs.pat_bt[j].n and not byte_test_ok(&s.rs.pat_bt[j], s.pdata, s.plen, end):
            continue
        if placed(s, j + 1, last, True, end):
            return True
    return False


cdef struct th_key_t:
    uint32_t rule         # its sid
    uint32_t addr


cdef bint thresholded(ids_t *s, rule_t *r, uint32_t ri, uint32_t src,
                      uint32_t dst) noexcept nogil:
    """A rule whose packet matched: True if its threshold or
    detection_filter lets it fire now (Snort's and Suricata's semantics:
    limit: the first `count` in each window; threshold: every `count`-th;
    both: once per window, at the `count`-th; detection_filter: from the
    `count`+1-th on).  State that finds no room fires (fail closed)."""
    cdef th_key_t key
    cdef int32_t pos
    cdef uint32_t n
    key.rule = r.sid      # a rule keeps its window across reloads
    key.addr = src if r.th_track == 0 else dst if r.th_track == 1 else 0
    pos = ftab_find(s.th, &key, s.now)
    if pos < 0:
        pos = ftab_insert(s.th, &key, s.now + r.th_cycles, s.now)
        if pos < 0:
            s.th_untracked += 1
            return True
        s.th_start[pos] = s.now
        s.th_seen[pos] = 0
    s.th_seen[pos] += 1
    n = s.th_seen[pos]
    if r.th_kind == 1:
        return n <= r.th_count
    if r.th_kind == 2:
        return n % r.th_count == 0
    if r.th_kind == 3:
        return n == r.th_count
    return n > r.th_count


cdef struct fb_key_t:
    uint64_t bit
    uint32_t a, b          # the connection, lower (address, port) first: both
    uint16_t pa, pb        # directions share its bits
    uint32_t proto


cdef bint flowbits_hold(ids_t *s, rule_t *r, fb_key_t *k) noexcept nogil:
    """Its isset (any of the names) and isnotset conditions hold."""
    cdef uint32_t i, j
    cdef fbop_t *op
    cdef bint any_set
    for i in range(r.fb_first, r.fb_first + r.fb_count):
        op = &s.rs.fbops[i]
        if op.op < 4:
            continue
        any_set = False
        for j in range(op.n):
            k.bit = op.bits[j]
            if ftab_find(s.fb, k, s.now) >= 0:
                any_set = True
                break
        if any_set != (op.op == 4):
            return False
    return True


cdef void flowbits_apply(ids_t *s, rule_t *r, fb_key_t *k) noexcept nogil:
    """Its set, unset and toggle, in the rule's order."""
    cdef uint32_t i
    cdef fbop_t *op
    cdef bint is_set
    for i in range(r.fb_first, r.fb_first + r.fb_count):
        op = &s.rs.fbops[i]
        if op.op >= 4:
            continue
        k.bit = op.bits[0]
        is_set = ftab_find(s.fb, k, s.now) >= 0
        if op.op == 1 or (op.op == 3 and not is_set):
            if ftab_insert(s.fb, k, s.now + s.timeout, s.now) < 0:
                s.fb_untracked += 1
        elif is_set:
            ftab_delete(s.fb, k)


cdef bint judge(ids_t *s, uint8_t proto, uint32_t src, uint32_t dst,
                uint16_t sport, uint16_t dport, uint8_t established,
                uint8_t direction) noexcept nogil:
    """After a scan: fire every rule whose patterns were all found and whose
    header and flowbits match; reset the scan state.  Rules that check
    flowbits are judged after the others, so a bit set by this packet is
    seen (Suricata orders its rules so).  True if a drop rule fired."""
    cdef uint32_t i, j, ri, sweep
    cdef rule_t *r
    cdef bint drop = False, whole, fresh
    cdef fb_key_t fk
    memset(&fk, 0, sizeof(fb_key_t))
    fk.proto = proto
    if src < dst or (src == dst and sport <= dport):
        fk.a, fk.pa, fk.b, fk.pb = src, sport, dst, dport
    else:
        fk.a, fk.pa, fk.b, fk.pb = dst, dport, src, sport
    for sweep in range(2 if s.rs.flowbits else 1):
        for i in range(s.rs.nhits):
            if s.rs.pat_neg[s.rs.hitlist[i]]:
                continue    # a content that must be absent never makes a rule fire
            ri = s.rs.pat_rule[s.rs.hitlist[i]]
            if s.rs.checked[ri]:
                continue
            r = &s.rs.rules[ri]
            if sweep == 0 and r.fb_checks:
                continue
            s.rs.checked[ri] = 1
            whole = True
            fresh = False
            for j in range(r.first, r.first + r.count):
                if s.rs.pat_neg[j]:
                    if s.rs.seen[s.rs.pat_lead[j]] and not s.rs.pat_rel[j]:
                        whole = False      # found, and it must not be
                        break
                    continue
                if not s.rs.seen[j]:
                    whole = False
                    break
                if s.rs.seen[j] & 2:
                    fresh = True
            if whole and fresh and header_matches(s, r, proto, src, dst, sport, dport,
                                                    established, direction, s.plen) \
                    and (not s.rs.relative_rules or placed(s, r.first, r.first + r.count - 1, False, 0)):
                if r.fb_count and not flowbits_hold(s, r, &fk):
                    continue
                if r.th_kind and not thresholded(s, r, ri, src, dst):
                    s.th_held += 1
                    continue
                if r.fb_count:
                    flowbits_apply(s, r, &fk)
                r.hits += 1
                if r.noalert:
                    continue
                s.alerted += 1
                write_alert(s, r, proto, src, dst, sport, dport)
                if r.drop:
                    drop = True
    for i in range(s.rs.nhits):
        s.rs.seen[s.rs.hitlist[i]] = 0
        s.rs.npos[s.rs.hitlist[i]] = 0
        s.rs.checked[s.rs.pat_rule[s.rs.hitlist[i]]] = 0
    s.rs.nhits = 0
    return drop


cdef void scan_buffer(ids_t *s, int b, const uint8_t *p, uint32_t n) noexcept nogil:
    cdef const char *bufs[1]
    cdef unsigned int lens[1]
    if s.rs.hdb[b] == NULL or n == 0:
        return
    bufs[0] = <const char *>p
    lens[0] = n
    s.buf_end = n
    if hs_scan_vector(s.rs.hdb[b], bufs, lens, 1, 0, s.rs.scratch, on_match, <void *>s) != HS_SUCCESS:
        s.hs_errors += 1


cdef void scan_http(ids_t *s, const uint8_t *p, uint32_t n) noexcept nogil:
    """If the payload starts an HTTP request (`METHOD SP URI SP HTTP/`) or
    response (`HTTP/x.y SSS MSG`), scan its parts with the databases of
    the HTTP buffers (idsrules.BUFFERS, by index)."""
    cdef uint32_t m = 0, u, ue, c
    if scan_http_response(s, p, n):
        return
    while m < n and m < 16 and 65 <= p[m] <= 90:
        m += 1
    if m < 3 or m >= n or p[m] != 32:
        return
    u = m + 1
    ue = u
    while ue < n and p[ue] != 32 and p[ue] != 13 and p[ue] != 10:
        ue += 1
    if ue == u or ue + 6 > n or p[ue] != 32 or p[ue + 1] != 72 or p[ue + 2] != 84 \
            or p[ue + 3] != 84 or p[ue + 4] != 80 or p[ue + 5] != 47:      # " HTTP/"
        return
    s.http_requests += 1
    s.skip_to = 0
    s.payload_at = 0
    scan_buffer(s, 1, p, m)
    scan_buffer(s, 3, p + u, ue - u)
    if s.rs.hdb[2] != NULL:
        if ue - u > URI_MAX:
            s.uri_cut += 1
        scan_buffer(s, 2, s.uri, normalise_uri(p + u, ue - u, s.uri, URI_MAX))
    scan_headers_and_body(s, p, n, ue, False)


cdef bint scan_http_response(ids_t *s, const uint8_t *p, uint32_t n) noexcept nogil:
    """A response's status line, code and message; False if the payload
    does not start one."""
    cdef uint32_t c = 5, le, ms
    if n < 12 or p[0] != 72 or p[1] != 84 or p[2] != 84 or p[3] != 80 or p[4] != 47:
        return False                                                   # "HTTP/"
    while c < n and p[c] != 32 and p[c] != 13 and p[c] != 10:
        c += 1
    c += 1
    if c + 3 > n or p[c - 1] != 32 or not (48 <= p[c] <= 57 and 48 <= p[c + 1] <= 57
                                           and 48 <= p[c + 2] <= 57):
        return False
    le = c + 3
    while le < n and p[le] != 13 and p[le] != 10:
        le += 1
    ms = c + 4 if c + 3 < le else le
    s.http_responses += 1
    s.skip_to = 0
    s.payload_at = 0
    scan_buffer(s, 10, p, le)
    scan_buffer(s, 8, p + c, 3)
    scan_buffer(s, 9, p + ms, le - ms)
    scan_headers_and_body(s, p, n, le, True)
    return True


cdef void scan_headers_and_body(ids_t *s, const uint8_t *p, uint32_t n, uint32_t line_end,
                                bint response) noexcept nogil:
    """The header block after the first line (ending at `line_end`), the
    headers rules name, and the body's bytes in this segment."""
    cdef uint32_t h = line_end, he
    cdef bint whole
    cdef const uint8_t *at = <const uint8_t *>memchr(p + h, 10, n - h) if h < n else NULL
    h = <uint32_t>(at - p) + 1 if at != NULL else n + 1
    if h >= n:
        return
    # the blank line may follow the first line at once
    at = <const uint8_t *>memmem(p + line_end, n - line_end, b"\r\n\r\n", 4)
    whole = at != NULL and <uint32_t>(at - p) + 3 < n
    he = <uint32_t>(at - p) + 2 if whole else n
    if he < h:
        he = h             # no header at all
    scan_buffer(s, 4, p + h, he - h)
    if response:
        scan_header(s, 14, p + h, he - h, b"server:", 7)
        scan_header(s, 15, p + h, he - h, b"content-type:", 13)
    else:
        scan_header(s, 5, p + h, he - h, b"user-agent:", 11)
        scan_header(s, 6, p + h, he - h, b"host:", 5)
        scan_header(s, 7, p + h, he - h, b"cookie:", 7)
        scan_header(s, 16, p + h, he - h, b"accept:", 7)
    if whole and he + 2 < n:            # the body: after the blank line
        scan_buffer(s, 11 if response else 12, p + he + 2, n - he - 2)
        scan_buffer(s, 13, p + he + 2, n - he - 2)


cdef inline void scan_header(ids_t *s, int b, const uint8_t *p, uint32_t n,
                             const char *name, uint32_t name_len) noexcept nogil:
    """Buffer b, one header's value, if any rule looks at it."""
    cdef const uint8_t *v
    cdef uint32_t vlen
    if s.rs.hdb[b] == NULL:
        return
    vlen = header_value(p, n, name, name_len, &v)
    scan_buffer(s, b, v, vlen)


cdef inline int32_t seq_diff(uint32_t a, uint32_t b) noexcept nogil:
    """a - b in sequence space (RFC 793's modular comparison)."""
    return <int32_t>(a - b)


cdef bint differs_from_tail(flow_t *f, uint8_t *tail, uint32_t seq, uint8_t *p,
                            uint32_t n) noexcept nogil:
    """True if bytes [seq, seq+n) of the stream, given at p, differ from
    the same stream bytes kept in the tail (only where the two overlap)."""
    cdef uint32_t tail_seq = f.next_seq - f.len
    cdef int32_t lo = seq_diff(seq, tail_seq), hi = seq_diff(seq + n, tail_seq)
    cdef int32_t i
    if lo < 0:
        lo = 0
    if hi > f.len:
        hi = f.len
    for i in range(lo, hi):
        if tail[i] != p[seq_diff(tail_seq + <uint32_t>i, seq)]:
            return True
    return False


cdef void keep_tail(flow_t *f, uint8_t *tail, uint32_t tail_w, uint8_t *p,
                    uint32_t n, bint joined) noexcept nogil:
    """Append n in-order bytes to the flow's tail (a fresh tail if not joined)."""
    cdef uint32_t keep
    if n >= tail_w:
        memcpy(tail, p + n - tail_w, tail_w)
        f.len = tail_w
        return
    if not joined:
        f.len = 0
    keep = tail_w - n
    if f.len > keep:
        memmove(tail, tail + f.len - keep, keep)
        f.len = keep
    memcpy(tail + f.len, p, n)
    f.len += n


cdef bint scan_packet(ids_t *s, rte_mbuf *m, uint64_t now) noexcept nogil:
    """Scan one packet's payload in its stream's order; True to drop it."""
    cdef onvm_meta *meta = onvm_meta_of(m)
    cdef uint8_t *d = onvm_mtod(m)
    cdef uint32_t length = m.data_len
    cdef int l4 = pkt_l4(meta) if meta.key.family == 4 else -1
    cdef uint32_t off, plen, seq = 0, skip = 0
    cdef int32_t ahead, new_bytes
    cdef uint8_t proto = meta.key.proto, tcpflags = 0
    cdef int32_t pos = -1
    cdef flow_t *f = NULL
    cdef uint8_t *tail = NULL
    cdef uint8_t *head = NULL
    cdef const char *bufs[2]
    cdef unsigned int lens[2]
    cdef unsigned int nbuf = 0
    cdef bint joined = False, in_order = False, behind_base = False, drop = False
    cdef uint16_t sport, dport
    cdef uint8_t direction
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
    s.skip_to = 0
    if proto == 6 and s.rs.tail_w:
        pos = ftab_find(s.flows, &k, now)
        if pos < 0 and (plen or tcpflags & 0x02):
            pos = ftab_insert(s.flows, &k, now + s.timeout, now)
            if pos < 0:
                s.untracked += 1
            else:
                f = &s.fstate[pos]
                memset(f, 0, sizeof(flow_t))
                f.next_seq = seq
                f.base_seq = seq
        if pos >= 0:
            f = &s.fstate[pos]
            tail = s.tails + <uint64_t>pos * TAIL_MAX
            head = s.heads + <uint64_t>pos * TAIL_MAX
            s.flows.expires[pos] = now + s.timeout
            if tcpflags & 0x02:        # SYN: the stream starts after it
                f.len = 0
                f.head_len = 0
                f.synced = 1
                f.role = 2 if tcpflags & 0x10 else 1
                f.next_seq = seq + 1
                f.base_seq = seq + 1
                seq += 1
            ahead = seq_diff(seq, f.next_seq)
            if plen == 0:
                pass
            elif ahead > 0:            # a gap before it: not until it is filled
                s.out_of_order += 1
                return True
            elif ahead == 0:
                in_order = True
            else:
                new_bytes = seq_diff(seq + plen, f.next_seq)
                if differs_from_tail(f, tail, seq, d + off, plen):
                    s.overlap_conflict += 1
                    return True
                if new_bytes > 0:      # overlaps the tail, then goes on
                    skip = plen - <uint32_t>new_bytes
                    in_order = True
                elif not f.synced and seq_diff(seq + plen, f.base_seq) == 0 and f.head_len:
                    behind_base = True
                elif seq_diff(seq, f.next_seq - f.len) >= 0:
                    s.retransmitted += 1   # the same bytes, already scanned
                    plen = 0
                else:
                    s.stale += 1
    if in_order and f.len:
        bufs[0] = <const char *>tail
        lens[0] = f.len
        nbuf = 1
        joined = True
        s.skip_to = f.len
        s.reassembled += 1
    s.payload_at = <long long>(f.len if joined else 0) - <long long>skip
    s.plen = plen
    s.pdata = d + off
    s.buf_end = plen
    s.tcpflags = tcpflags if proto == 6 else -1
    if plen > skip and s.rs.db != NULL:
        bufs[nbuf] = <const char *>(d + off + skip)
        lens[nbuf] = plen - skip
        nbuf += 1
        if behind_base:
            bufs[nbuf] = <const char *>head
            lens[nbuf] = f.head_len
            nbuf += 1
            s.joined_head += 1
        s.scanned_bytes += plen - skip
        err = hs_scan_vector(s.rs.db, bufs, lens, nbuf, 0, s.rs.scratch, on_match, <void *>s)
        if err != HS_SUCCESS:
            s.hs_errors += 1
    if s.rs.http and plen and proto == 6:
        scan_http(s, d + off, plen)
    if s.rs.nhits:
        sport = rd16(<uint8_t *>&k.sport)
        dport = rd16(<uint8_t *>&k.dport)
        # Direction: from the handshake when seen, else the ports' guess
        # (the client's port is the higher, ephemeral one).
        direction = f.role if f != NULL and f.role else (1 if sport >= dport else 2)
        drop = judge(s, proto, rd32(<uint8_t *>&k.src), rd32(<uint8_t *>&k.dst),
                     sport, dport, not (proto == 6 and tcpflags & 0x02), direction)
    # A dropped segment leaves the stream where it was: its retransmission
    # comes in order again and is scanned again, never passed as "seen".
    if f != NULL and not drop:
        if tcpflags & 0x05:            # FIN or RST: the direction is over
            ftab_delete(s.flows, &k)
        elif in_order and plen > skip:
            if not f.synced and f.head_len == 0 and seq_diff(seq, f.base_seq) == 0:
                f.head_len = plen if plen < s.rs.tail_w else s.rs.tail_w
                memcpy(head, d + off, f.head_len)
            keep_tail(f, tail, s.rs.tail_w, d + off + skip, plen - skip, joined)
            f.next_seq = seq + plen
    return drop


cdef void ids_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    cdef ids_t *s = <ids_t *>ctx
    cdef uint64_t now = rte_get_tsc_cycles()
    cdef unsigned i
    cdef uint64_t alerted = s.alerted
    # The rules in force for this whole batch (a reload waits for it to end
    # before it frees the set it replaced).
    ids_store_u32(&s.busy, 1)
    s.rs = <ruleset_t *>ids_load_ptr(<void **>&s.live)
    s.now = now
    for i in range(n):
        s.packets += 1
        if onvm_meta_of(pkts[i]).key.family == 4 and scan_packet(s, pkts[i], now):
            s.dropped += 1
            onvm_meta_of(pkts[i]).action = ONVM_ACTION_DROP
        else:
            onvm_meta_of(pkts[i]).action = ONVM_ACTION_NEXT
    if s.rs.alerts != NULL and s.alerted != alerted:
        fflush(s.rs.alerts)
    s.batches += 1
    ids_store_u32(&s.busy, 0)


cdef class IDS(NativeNF):
    """The ids NF.  Its rules can be replaced while it runs (`reload`): the
    new set is built beside the running one and swapped in between two
    batches; its flows, their reassembly state, its threshold windows and
    counters stay."""
    cdef ids_t s
    cdef RuleSet current
    cdef list retired           # sets a batch may still have read (a stuck loop)
    cdef readonly object max_flows
    cdef readonly uint64_t reloads, reload_failures
    cdef object failed_stamp    # the rule file's stamp when a reload of it failed

    def __cinit__(self, config=None):
        memset(&self.s, 0, sizeof(ids_t))

    def __init__(self, config=None):
        assert len(BUFFERS) == NBUF, "nfs.idsrules.BUFFERS and ids.pyx's NBUF disagree"
        rs = RuleSet(config)
        self.retired = []
        self.max_flows = rs.v["max_flows"]
        for line in skipped_report(rs.rules, rs.source):
            log.warning("ids: rule skipped: %s", line)
        self.s.uri = <uint8_t *>malloc(URI_MAX)
        self.s.flows = ftab_new("ids", self.max_flows, sizeof(onvm_flow_key))
        self.s.fstate = <flow_t *>calloc(self.max_flows + 1, sizeof(flow_t))
        self.s.tails = <uint8_t *>calloc(self.max_flows + 1, TAIL_MAX)
        self.s.heads = <uint8_t *>calloc(self.max_flows + 1, TAIL_MAX)
        if self.s.uri == NULL or self.s.fstate == NULL or self.s.tails == NULL \
                or self.s.heads == NULL:
            raise MemoryError()
        self._swap(rs)
        self.handlers.batch = ids_batch
        self.handlers.ctx = <void *>&self.s
        log.info("ids: %d rules loaded, %d skipped, %d patterns, TCP tail %d bytes (Hyperscan %s)",
                 len(rs.rules), len(rs.rules.skipped), rs.r.npats, rs.r.tail_w,
                 hs_version().decode())

    @property
    def rules(self):
        return self.current.rules

    @property
    def alerts_path(self):
        return self.current.v["alerts"]

    def prepare_reload(self, config):
        """The rule set of `config` built beside the running one (RuleSet),
        to be put in force with adopt(); None if the change needs a new NF
        object (another max_flows).  NFConfigError (FILE:LINE) if it cannot
        run: counted in reload_failures, the running set stays."""
        try:
            rs = RuleSet(config)
        except (NFConfigError, MemoryError):
            self.reload_failures += 1
            try:        # not tried again until the file changes again
                self.failed_stamp = file_stamp((config or {})["rules"])
            except (KeyError, OSError):
                pass
            raise
        if rs.v["max_flows"] != self.max_flows:
            return None
        return rs

    def adopt(self, RuleSet rs not None):
        """Put a prepared rule set in force between two batches; the one it
        replaces is freed once no batch can be reading it."""
        for line in skipped_report(rs.rules, rs.source):
            log.warning("ids: rule skipped: %s", line)
        self._swap(rs)
        self.reloads += 1

    def reload(self, config):
        """Replace the running rules with those of `config` (prepare_reload,
        then adopt); returns {"loaded", "skipped", "ms"}.  A config that
        cannot run raises NFConfigError and leaves the old rules in force."""
        rs = self.prepare_reload(config)
        if rs is None:
            raise NFConfigError(f"<ids config>: max_flows {config.get('max_flows')} differs "
                                f"from the running {self.max_flows}: the flow table's size "
                                f"changes only with a new instance")
        self.adopt(rs)
        return {"loaded": len(rs.rules), "skipped": len(rs.rules.skipped),
                "ms": round(rs.build_ms, 1)}

    def rules_file_changed(self):
        """True if the rule file in force (config "rules") now holds other
        bytes than it held when read (its mtime and size first, then its
        SHA-256), other than those of a last reload that failed; a file
        that is gone or unreadable has not changed."""
        stamp = self.current.stamp
        if stamp is None:
            return False
        try:
            now = file_stamp(self.current.config["rules"], stamp)
        except OSError:
            return False
        if now[2] == stamp[2]:
            self.current.stamp = now      # touched, same bytes
            return False
        return self.failed_stamp is None or now[2] != self.failed_stamp[2]

    def _swap(self, RuleSet rs):
        """Publish rs as the set in force; wait (5 s at most) until the
        batch that may have read the old one ends, then let the old go."""
        cdef ruleset_t *old
        cdef uint64_t seen
        if rs.thresholds and self.s.th == NULL:
            self.s.th = ftab_new("ids-threshold", self.max_flows, sizeof(th_key_t))
            self.s.th_start = <uint64_t *>calloc(self.max_flows + 1, sizeof(uint64_t))
            self.s.th_seen = <uint32_t *>calloc(self.max_flows + 1, sizeof(uint32_t))
            if self.s.th_start == NULL or self.s.th_seen == NULL:
                raise MemoryError()
        if rs.r.flowbits and self.s.fb == NULL:
            self.s.fb = ftab_new("ids-flowbits", self.max_flows, sizeof(fb_key_t))
        self.s.timeout = <uint64_t>(rs.v["flow_timeout"] * rte_get_tsc_hz())
        old = <ruleset_t *>ids_swap_ptr(<void **>&self.s.live, <void *>rs.r)
        previous, self.current = self.current, rs
        if old == NULL:
            return
        seen = ids_load_u64(&self.s.batches)
        deadline = time.monotonic() + 5
        while ids_load_u32(&self.s.busy) and ids_load_u64(&self.s.batches) == seen:
            if time.monotonic() > deadline:
                log.warning("ids: the batch running at a reload did not end in 5 s; "
                            "the old rule set is kept until the NF is freed")
                self.retired.append(previous)
                return
            time.sleep(0.00005)

    def __dealloc__(self):
        free(self.s.uri)
        ftab_free(self.s.flows)
        free(self.s.fstate); free(self.s.tails); free(self.s.heads)
        ftab_free(self.s.th); free(self.s.th_start); free(self.s.th_seen)
        ftab_free(self.s.fb)

    def counters(self):
        cdef uint64_t now = rte_get_tsc_cycles()
        cdef ruleset_t *live = self.current.r
        return {
            "packets": self.s.packets, "scanned_bytes": self.s.scanned_bytes,
            "alerts": self.s.alerted, "dropped": self.s.dropped,
            "reassembled": self.s.reassembled, "untracked": self.s.untracked,
            "scan_errors": self.s.hs_errors,
            "out_of_order": self.s.out_of_order, "overlap_conflict": self.s.overlap_conflict,
            "retransmitted": self.s.retransmitted, "stale": self.s.stale,
            "joined_head": self.s.joined_head,
            "http_requests": self.s.http_requests,
            "http_responses": self.s.http_responses, "uri_cut": self.s.uri_cut,
            "positions_overflow": self.s.pos_overflow,
            "threshold_held": self.s.th_held, "threshold_untracked": self.s.th_untracked,
            "flows": ftab_live(self.s.flows, now) if self.s.flows != NULL else 0,
            "flowbits": ftab_live(self.s.fb, now) if self.s.fb != NULL else 0,
            "flowbits_untracked": self.s.fb_untracked,
            "reloads": self.reloads, "reload_failures": self.reload_failures,
            "rules": [{"sid": r.sid, "line": r.line, "action": r.action, "msg": r.msg,
                       "rev": r.rev, "hits": live.rules[i].hits}
                      for i, r in enumerate(self.current.rules)],
            "rules_skipped": len(self.current.rules.skipped),
            "skipped": [{"line": sk.line, "sid": sk.sid, "keyword": sk.keyword,
                         "why": sk.message} for sk in self.current.rules.skipped],
        }
