# cython: language_level=3
# distutils: libraries = hs
"""One ids config's rules built for the scan (`RuleSet`): parsed
(nfs/idsrules.py), the runnable ones compiled into Hyperscan databases,
their header fields, pattern modifiers and EVE alert texts laid out in C
(nfs/idsstate.pxd's ruleset_t), the alerts file opened.  The IDS
(nfs/ids.pyx) runs one at a time and builds the next beside it on a reload.

Not here: scanning packets or swapping sets (ids.pyx), the rule language
(idsrules.py).
"""
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.stdio cimport fopen, fclose
from nflib.nf cimport rte_get_tsc_hz
from nfs.hyperscan cimport *
from nfs.idsstate cimport *

import hashlib
import json
import time

from nflib.api import NFConfigError
from nfs.configs import parse_ids
from nfs.idsrules import BUFFERS, ByteTest, Ruleset, Skipped, file_stamp


def _mask(net):
    return int(net.network_address), (0xffffffff << (32 - net.prefixlen)) & 0xffffffff if net.prefixlen else 0


def _alert_json(rule):
    """The rule's part of its EVE alerts: `"alert": {...}` (Suricata's
    field names; the category is the classtype's name, the severity its
    priority, 3 when the rule gives none, as Suricata's default)."""
    alert = {"action": "blocked" if rule.action == "drop" else "allowed", "gid": 1,
             "signature_id": rule.sid, "rev": rule.rev, "signature": rule.msg,
             "category": rule.classtype, "severity": rule.priority or 3}
    return ('"alert": ' + json.dumps(alert)).encode()


cdef str _pattern_problem(p):
    """None if Hyperscan can compile the pattern, else why not."""
    cdef hs_compile_error_t *err = NULL
    cdef hs_expr_info_t *info = NULL
    expr = p.regex.encode("latin-1")
    if hs_expression_info(expr, _hs_flags(p), &info, &err) != HS_SUCCESS:
        msg = err.message.decode()
        hs_free_compile_error(err)
        return msg
    free(info)
    return None


def runnable(rules, source):
    """The rules whose patterns Hyperscan compiles; the others join
    `rules.skipped` (keyword pcre or content).  NFConfigError if none is
    left, naming every line at fault."""
    keep = Ruleset(skipped=rules.skipped)
    for rule in rules:
        for p in rule.patterns:
            why = _pattern_problem(p)
            if why is not None:
                keep.skipped.append(Skipped(rule.line, rule.sid, "pcre" if p.regex[:2] != "\\x" else "content",
                                            f"pattern /{p.regex}/ cannot be compiled: {why}"))
                break
        else:
            keep.append(rule)
    keep.skipped.sort(key=lambda sk: sk.line)
    if not keep:
        raise NFConfigError("\n".join(f"{source}:{sk.line}: {sk.message}" for sk in keep.skipped))
    return keep


cdef unsigned int _hs_flags(p):
    cdef unsigned int fl = HS_FLAG_ALLOWEMPTY
    if p.caseless:
        fl |= HS_FLAG_CASELESS
    if p.dotall:
        fl |= HS_FLAG_DOTALL
    if p.multiline:
        fl |= HS_FLAG_MULTILINE
    return fl


cdef void free_ruleset(ruleset_t *r) noexcept:
    if r == NULL:
        return
    if r.scratch != NULL:
        hs_free_scratch(r.scratch)
    if r.db != NULL:
        hs_free_database(r.db)
    for b in range(NBUF):
        if r.hdb[b] != NULL:
            hs_free_database(r.hdb[b])
    if r.alerts != NULL:
        fclose(r.alerts)
    free(r.nets); free(r.ports); free(r.rules); free(r.pat_rule)
    free(r.pat_min_end); free(r.pat_max_end)
    free(r.pat_track); free(r.pat_rel); free(r.npos); free(r.pat_dist)
    free(r.pat_within); free(r.pat_len); free(r.pos)
    free(r.pat_isdata); free(r.pat_isdata_neg); free(r.pat_bt); free(r.pat_neg)
    free(r.pat_lenchk); free(r.pat_endswith); free(r.pat_next); free(r.pat_lead); free(r.pat_size_lo); free(r.pat_size_hi)
    free(r.fbops)
    free(r.seen); free(r.hitlist); free(r.checked)
    free(r)


cdef class RuleSet:
    """One ids config's rules built for the scan (its Hyperscan databases
    and tables), not yet or no longer in force: what IDS.prepare_reload
    builds beside the running set and IDS.adopt swaps in."""
    def __cinit__(self):
        self.r = <ruleset_t *>calloc(1, sizeof(ruleset_t))
        if self.r == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free_ruleset(self.r)

    def __init__(self, config):
        start = time.perf_counter()
        config = dict(config or {})
        self.config = config
        self.stamp = self._stamp()     # before reading: a later change is seen
        self.v, rules, self.source = parse_ids(config)
        if self.stamp is None:
            self.stamp = self._stamp()
        self.rules = runnable(rules, self.source)
        self.r.npats = sum(len(rule.patterns) for rule in self.rules)
        self._tables(self.rules)
        self._compile(self.rules, self.source)      # groups patterns by their tables
        if self.v["alerts"]:
            self.r.alerts = fopen(self.v["alerts"].encode(), b"a")
            if self.r.alerts == NULL:
                raise NFConfigError(f"<ids config>: alerts: cannot open {self.v['alerts']!r} "
                                    f"for appending")
        self.build_ms = (time.perf_counter() - start) * 1000

    def _stamp(self):
        if "rules_text" in self.config or not self.config.get("rules"):
            return None
        try:
            return file_stamp(self.config["rules"])
        except OSError:
            return None     # parse_ids says what is wrong with it

    def summary(self):
        return (f"{len(self.rules)} rules loaded, {len(self.rules.skipped)} skipped, "
                f"{self.r.npats} patterns, built in {self.build_ms:.0f} ms")

    def _compile(self, rules, source):
        """One vectored Hyperscan database for the payload's patterns and
        one per HTTP buffer that has any; pattern ids are global."""
        cdef hs_expr_info_t *info = NULL
        cdef hs_compile_error_t *err = NULL
        cdef hs_database_t *db
        pats = [(ri, p) for ri, r in enumerate(rules) for p in r.patterns]
        self.r.pat_next = <uint32_t *>malloc(max(1, len(pats)) * sizeof(uint32_t))
        self.r.pat_lead = <uint32_t *>malloc(max(1, len(pats)) * sizeof(uint32_t))
        if self.r.pat_next == NULL or self.r.pat_lead == NULL:
            raise MemoryError()
        widest = 0
        for i, (ri, p) in enumerate(pats):
            if p.buffer != "payload":
                continue
            expr = p.regex.encode("latin-1")
            if hs_expression_info(expr, _hs_flags(p), &info, &err) != HS_SUCCESS:
                hs_free_compile_error(err)     # runnable() let only good ones through
                raise NFConfigError(f"{source}:{rules[ri].line}: pattern /{p.regex}/ "
                                    f"cannot be compiled")
            widest = max(widest, info.max_width)
            free(info)
        for b, name in enumerate(BUFFERS):
            ids = [i for i, (_, p) in enumerate(pats) if p.buffer == name]
            if ids:
                db = _database(rules, source, pats, ids, self.r)
                if b == 0:
                    self.r.db = db
                else:
                    self.r.hdb[b] = db
                    self.r.http = 1
                if hs_alloc_scratch(db, &self.r.scratch) != HS_SUCCESS:
                    raise MemoryError("ids: Hyperscan scratch")
        self.r.npats = len(pats)
        # A match is found across two segments if the tail holds all but
        # its last byte; unbounded pcres get TAIL_MAX.
        self.r.tail_w = min(TAIL_MAX, max(0, widest - 1)) if self.r.db != NULL else 0

    def _tables(self, rules):
        cdef rule_t *r
        cdef ruleset_t *rs = self.r
        n = len(rules)
        np = rs.npats
        rs.nrules = n
        rs.rules = <rule_t *>calloc(n, sizeof(rule_t))
        rs.pat_rule = <uint32_t *>calloc(np, sizeof(uint32_t))
        rs.pat_min_end = <uint32_t *>calloc(np, sizeof(uint32_t))
        rs.pat_max_end = <uint32_t *>calloc(np, sizeof(uint32_t))
        rs.pat_track = <uint8_t *>calloc(np, 1)
        rs.pat_rel = <uint8_t *>calloc(np, 1)
        rs.npos = <uint8_t *>calloc(np, 1)
        rs.pat_dist = <int32_t *>calloc(np, sizeof(int32_t))
        rs.pat_within = <int32_t *>calloc(np, sizeof(int32_t))
        rs.pat_len = <uint32_t *>calloc(np, sizeof(uint32_t))
        rs.pos = <int32_t *>calloc(np * MAXPOS, sizeof(int32_t))
        rs.pat_isdata = <int32_t *>calloc(np, sizeof(int32_t))
        rs.pat_isdata_neg = <uint8_t *>calloc(np, 1)
        rs.pat_bt = <bt_t *>calloc(np, sizeof(bt_t))
        rs.pat_neg = <uint8_t *>calloc(np, 1)
        rs.pat_lenchk = <uint8_t *>calloc(np, 1)
        rs.pat_endswith = <uint8_t *>calloc(np, 1)
        rs.pat_size_lo = <uint32_t *>calloc(np, sizeof(uint32_t))
        rs.pat_size_hi = <uint32_t *>calloc(np, sizeof(uint32_t))
        rs.seen = <uint8_t *>calloc(np, 1)
        rs.hitlist = <uint32_t *>calloc(np, sizeof(uint32_t))
        rs.checked = <uint8_t *>calloc(n, 1)
        if not (rs.rules and rs.pat_rule and rs.pat_min_end and rs.pat_max_end and rs.pat_track
                and rs.pat_rel and rs.npos and rs.pat_dist and rs.pat_within and rs.pat_len
                and rs.pos and rs.pat_isdata and rs.pat_isdata_neg and rs.pat_bt and rs.pat_neg and rs.seen
                and rs.hitlist and rs.checked and rs.pat_lenchk and rs.pat_endswith
                and rs.pat_size_lo and rs.pat_size_hi):
            raise MemoryError()
        self.msgs = []
        nets, ports = [], []
        first = 0
        nfb = sum(len(rule.flowbits) for rule in rules)
        rs.fbops = <fbop_t *>calloc(nfb + 1, sizeof(fbop_t))
        if rs.fbops == NULL:
            raise MemoryError()
        rs.flowbits = nfb > 0
        fb = 0
        for ri, rule in enumerate(rules):
            r = &rs.rules[ri]
            r.proto = rule.proto
            r.drop = rule.action == "drop"
            r.bidir = rule.bidir
            r.established = rule.established
            r.dsize_lo, r.dsize_hi = rule.dsize
            r.flags_mode, r.flags, r.flags_ignored = rule.flags
            if rule.threshold is not None:
                r.th_kind, r.th_track, r.th_count, seconds = rule.threshold
                r.th_cycles = <uint64_t>(seconds * rte_get_tsc_hz())
                self.thresholds = True
            r.direction = rule.direction
            r.sa, r.sn = len(nets), len(rule.src)
            nets += rule.src
            r.da, r.dn = len(nets), len(rule.dst)
            nets += rule.dst
            r.spa, r.spn = len(ports), len(rule.sport)
            ports += rule.sport
            r.dpa, r.dpn = len(ports), len(rule.dport)
            ports += rule.dport
            alert = _alert_json(rule)
            self.msgs.append(alert)
            r.alert_json = alert
            r.first, r.count = first, len(rule.patterns)
            r.fb_first, r.fb_count, r.noalert = fb, len(rule.flowbits), rule.noalert
            for op, names in rule.flowbits:
                rs.fbops[fb].op, rs.fbops[fb].n = op, len(names)
                for k, name in enumerate(names):
                    rs.fbops[fb].bits[k] = _bit(name)
                r.fb_checks |= op >= 4
                fb += 1
            r.sid = rule.sid
            msg = json.dumps(rule.msg).encode()
            self.msgs.append(msg)
            r.msg_json = msg
            for j, p in enumerate(rule.patterns, first):
                rs.pat_rule[j] = ri
                rs.pat_min_end[j], rs.pat_max_end[j] = p.end_range() or (0, 0xFFFFFFFF)
                rs.pat_len[j] = p.length
                rs.pat_isdata[j] = p.isdataat
                rs.pat_isdata_neg[j] = p.isdataat_neg
                rs.pat_neg[j] = p.negated
                rs.pat_endswith[j] = p.endswith
                rs.pat_size_lo[j], rs.pat_size_hi[j] = p.size
                rs.pat_lenchk[j] = p.endswith or p.size != (0, 0xFFFFFFFF)
                if p.isdataat >= 0:
                    rs.pat_track[j] = 1
                    rs.relative_rules = 1
                if p.byte_test is not None:
                    _byte_test_of(&rs.pat_bt[j], p.byte_test)
                    rs.pat_track[j] = 1
                    rs.relative_rules = 1
                if p.relative:
                    # it and the pattern before it keep their match ends
                    rs.pat_rel[j] = 1
                    rs.pat_track[j] = rs.pat_track[j - 1] = 1
                    rs.pat_dist[j], rs.pat_within[j] = p.distance, p.within
                    rs.relative_rules = 1
            first += len(rule.patterns)
        rs.nets = <net_t *>calloc(len(nets) + 1, sizeof(net_t))
        rs.ports = <portr_t *>calloc(len(ports) + 1, sizeof(portr_t))
        if rs.nets == NULL or rs.ports == NULL:
            raise MemoryError()
        for i, (net, neg) in enumerate(nets):
            rs.nets[i].net, rs.nets[i].mask = _mask(net)
            rs.nets[i].neg = neg
        for i, (lo, hi, neg) in enumerate(ports):
            rs.ports[i].lo, rs.ports[i].hi, rs.ports[i].neg = lo, hi, neg


cdef void _byte_test_of(bt_t *b, test) except *:
    b.n, b.op, b.negated = test.n, ByteTest.OPS.index(test.op), test.negated
    b.relative, b.little, b.base = test.relative, test.little, test.base
    b.offset, b.value = test.offset, test.value


def _bit(name):
    """A flowbit's name as the 64 bits its table is keyed by (the same in
    every rule set, so a bit set before a reload is seen after it)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


cdef hs_database_t *_database(rules, source, pats, ids, ruleset_t *rs) except NULL:
    """One Hyperscan id for each group of `ids` with the same expression,
    flags and checks (many rules share a content, as ET's
    `content:!"Referer|3a|"`): the group's first pattern, the others chained
    after it in `pat_next`, so a match is checked and its end kept once
    however many rules hold the content (ids.on_match)."""
    cdef hs_compile_error_t *err = NULL
    cdef hs_database_t *db = NULL
    groups = {}
    for i in ids:
        key = (pats[i][1].regex, _hs_flags(pats[i][1]), rs.pat_min_end[i], rs.pat_max_end[i],
               rs.pat_lenchk[i], rs.pat_endswith[i], rs.pat_size_lo[i], rs.pat_size_hi[i],
               rs.pat_track[i], rs.pat_neg[i])
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        for a, b in zip(members, members[1:] + [NO_PAT]):
            rs.pat_next[a] = b
            rs.pat_lead[a] = members[0]
    leaders = [(key, members[0]) for key, members in groups.items()]
    n = len(leaders)
    cdef const char **exprs = <const char **>malloc(n * sizeof(char *))
    cdef unsigned int *flags = <unsigned int *>malloc(n * sizeof(unsigned int))
    cdef unsigned int *hsids = <unsigned int *>malloc(n * sizeof(unsigned int))
    encoded = [key[0].encode("latin-1") for key, _ in leaders]
    try:
        for k, (key, i) in enumerate(leaders):
            exprs[k] = encoded[k]
            flags[k] = key[1]
            hsids[k] = i
        if hs_compile_multi(exprs, flags, hsids, n, HS_MODE_VECTORED, NULL,
                            &db, &err) != HS_SUCCESS:
            msg = err.message.decode()
            where = rules[pats[leaders[err.expression][1]][0]].line \
                if err.expression >= 0 else "?"
            hs_free_compile_error(err)
            raise NFConfigError(f"{source}:{where}: Hyperscan: {msg}")
    finally:
        free(exprs); free(flags); free(hsids)
    return db
