# cython: language_level=3
"""The IDS's state in C (nfs/ids.pyx): its rules as the scan checks them,
each flow direction's stream, and the instance's tables and counters.

Not here: what fills or reads them (ids.pyx), the rule language
(nfs/idsrules.py).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from libc.stdio cimport FILE
from nflib.nf cimport ftab_t
from nfs.hyperscan cimport hs_database_t, hs_scratch_t


cdef enum:
    TAIL_MAX = 128      # the longest tail kept per flow direction
    NBUF = 17           # idsrules.BUFFERS: payload, then the HTTP request's and response's parts
    URI_MAX = 4096      # a normalised URI longer than this is cut (counted)
    MAXPOS = 16         # match ends kept per relative pattern and packet
    FB_OR = 8           # names of one flowbits:isset,A|B|... (idsrules.FLOWBIT_MAX_OR)
    NO_PAT = 0x7FFFFFFF # ends a chain of patterns sharing one Hyperscan id


cdef struct net_t:
    uint32_t net, mask     # host order
    uint8_t neg


cdef struct portr_t:
    uint16_t lo, hi
    uint8_t neg


cdef struct fbop_t:
    uint8_t op             # idsrules.FLOWBIT_OPS: 1 set, 2 unset, 3 toggle, 4 isset, 5 isnotset
    uint8_t n
    uint64_t bits[FB_OR]   # the names' hashes (a name keeps its bit across reloads)


cdef struct bt_t:
    # nfs.idsrules.ByteTest for the fast path (n 0: none)
    uint8_t n, op, negated, relative, little, base
    int32_t offset
    uint64_t value


cdef enum:
    BT_LT, BT_GT, BT_EQ, BT_LE, BT_GE, BT_AND, BT_XOR     # ByteTest.OPS, in order


cdef inline bint byte_test_ok(const bt_t *b, const uint8_t *p, uint32_t plen,
                              int32_t end) noexcept nogil:
    """True if the `b.n` bytes at b.offset (from the payload's start, or
    from `end` when relative) read as a number pass the comparison; False
    if they lie outside the payload or, as text, hold no digit."""
    cdef long long at = <long long>b.offset + (end if b.relative else 0)
    cdef uint64_t v = 0
    cdef uint32_t i
    cdef int digit, ndigits = 0
    cdef uint8_t c
    cdef bint ok
    if at < 0 or at + b.n > plen:
        return False
    for i in range(b.n):
        if b.base:
            c = p[at + i]
            digit = c - 48 if 48 <= c <= 57 else (c | 32) - 87 if 97 <= (c | 32) <= 102 else 99
            if digit >= b.base:
                break
            v = v * b.base + digit
            ndigits += 1
        elif b.little:
            v |= (<uint64_t>p[at + i]) << (8 * i)
        else:
            v = (v << 8) | p[at + i]
    if b.base and ndigits == 0:
        return False
    if b.op == BT_LT:
        ok = v < b.value
    elif b.op == BT_GT:
        ok = v > b.value
    elif b.op == BT_EQ:
        ok = v == b.value
    elif b.op == BT_LE:
        ok = v <= b.value
    elif b.op == BT_GE:
        ok = v >= b.value
    elif b.op == BT_AND:
        ok = (v & b.value) != 0
    else:
        ok = (v ^ b.value) != 0
    return ok != <bint>b.negated


cdef struct rule_t:
    uint8_t proto          # 0: any
    uint8_t drop
    uint8_t bidir
    uint8_t established    # 1: established only, 2: not established only
    uint8_t direction      # 1: to_server, 2: to_client
    uint16_t dsize_lo, dsize_hi
    uint8_t flags_mode, flags, flags_ignored   # TCP flags (mode 0: any packet)
    uint8_t th_kind        # 0 none; 1 limit, 2 threshold, 3 both, 4 detection_filter
    uint8_t th_track       # 0 by_src, 1 by_dst, 2 by_rule
    uint32_t th_count
    uint64_t th_cycles     # its window, in TSC cycles
    uint32_t sa, sn, da, dn          # its source and destination nets in ids_t.nets
    uint32_t spa, spn, dpa, dpn      # its port ranges in ids_t.ports
    uint32_t first, count  # its patterns
    uint32_t fb_first, fb_count   # its flowbits operations in ruleset_t.fbops
    uint8_t fb_checks      # it has isset/isnotset (judged after the rules that set)
    uint8_t noalert        # flowbits:noalert
    uint32_t sid
    const char *msg_json   # the msg as a JSON string, quotes included
    const char *alert_json # "alert": {...}: the EVE alert object of this rule
    uint64_t hits


cdef struct flow_t:
    uint32_t next_seq
    uint32_t base_seq      # where a flow picked up mid-stream began
    uint16_t len           # tail bytes: ids_t.tails + pos * tail_w
    uint16_t head_len      # head bytes: ids_t.heads + pos * tail_w
    uint8_t synced         # its SYN was seen: no segment before next_seq is new
    uint8_t role           # 1: client to server, 2: server to client (0: unknown)


cdef struct ruleset_t:
    # One loaded rule file: its Hyperscan databases, its rules as the scan
    # checks them and the scan state sized by them.  An IDS runs one at a
    # time (ids_t.live); a reload builds the next one beside it.
    hs_database_t *db
    hs_database_t *hdb[NBUF]   # per HTTP buffer (index 1..NBUF-1; NULL: no pattern)
    uint8_t http               # any pattern in an HTTP buffer
    net_t *nets
    portr_t *ports
    hs_scratch_t *scratch
    rule_t *rules
    uint32_t nrules
    uint32_t *pat_rule     # pattern id -> rule
    uint8_t *pat_track     # pattern id -> keep its match ends (distance/within)
    int32_t *pat_dist      # distance (relative patterns)
    int32_t *pat_within    # within (0: none)
    uint32_t *pat_len      # a content's length
    uint8_t *pat_rel       # relative to the pattern before it
    int32_t *pat_isdata    # isdataat:N,relative after it (-1: none)
    uint8_t *pat_isdata_neg
    bt_t *pat_bt           # byte_test with a match of it (n 0: none)
    int32_t *pos           # pattern id * MAXPOS -> match ends in this packet
    uint8_t *npos
    uint8_t relative_rules
    uint32_t *pat_min_end  # pattern id -> payload offsets its match may end at
    uint32_t *pat_max_end  #   (offset and depth; 0 and 0xFFFFFFFF: anywhere)
    uint8_t *pat_neg       # content:!"...": the rule needs it absent
    uint8_t *pat_lenchk    # its buffer's length is checked: endswith, bsize, urilen
    uint8_t *pat_endswith  # its match ends where its buffer ends
    uint32_t *pat_next     # the next pattern Hyperscan reports with this one (same
                           # buffer, expression, flags and checks; one id a group), or NO_PAT
    uint32_t *pat_lead     # the first pattern of its group: where its match ends are kept
    uint32_t *pat_size_lo  # its buffer's length, low to high (bsize, urilen)
    uint32_t *pat_size_hi
    fbop_t *fbops
    uint8_t flowbits       # any rule uses flowbits
    uint32_t npats
    uint32_t tail_w        # TCP tail bytes this set needs (at most TAIL_MAX)
    FILE *alerts
    # scan state, reset after every packet
    uint8_t *seen          # per pattern: 1 found in the tail, 2 in the payload
    uint32_t *hitlist
    uint32_t nhits
    uint8_t *checked       # per rule


cdef struct ids_t:
    ruleset_t *live        # the rules in force: swapped by a reload (atomically)
    ruleset_t *rs          # the batch's copy of `live` (the packet loop's only)
    uint32_t busy          # 1 while a batch runs (a reload waits for it to end)
    uint64_t batches
    uint8_t *uri           # the normalised URI of the packet's request
    uint64_t http_requests, http_responses, uri_cut
    uint64_t pos_overflow
    long long payload_at   # where this packet's payload starts in the scan (may be < 0)
    uint32_t plen          # this packet's payload bytes
    const uint8_t *pdata   # and where they are (byte_test reads them)
    uint32_t buf_end       # the length of the buffer being scanned (payload: plen)
    int tcpflags           # this packet's TCP flags (-1: not TCP)
    ftab_t *th             # (sid, address) -> its threshold window
    ftab_t *fb             # (connection, flowbit) -> set (kept across reloads)
    uint64_t fb_untracked  # bits not set: the table had no room
    uint64_t *th_start
    uint32_t *th_seen
    uint64_t now
    uint64_t th_held, th_untracked
    unsigned long long skip_to   # matches ending at or before this were reported
    # TCP flows: kept across reloads; tails and heads TAIL_MAX bytes apart
    ftab_t *flows
    flow_t *fstate
    uint8_t *tails
    uint8_t *heads
    uint64_t timeout
    uint64_t packets, scanned_bytes, alerted, dropped, reassembled, untracked, hs_errors
    uint64_t out_of_order, overlap_conflict, retransmitted, stale, joined_head
