# cython: language_level=3
"""`firewall`: 5-tuple ACL rules (DPDK rte_acl) from a checked rule file
(nfs/fwrules.py), first match wins, with a counter per rule.

IPv4 rules go to rte_acl; rules with IPv6 prefixes (and rules with no
address, which are for both) are matched in file order for IPv6 packets,
once a flow: the answer is cached per flow (flow id and flow_gen: the
host's flow table keys whole addresses, where an IPv6 flow key holds only
their digests).
`RuleSet` (the rules as an rte_acl context plus their actions and hit
counters) is shared with `firewall-stateful` (nfs/stateful.pyx)."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from nflib.nf cimport (each_packet, prefetch_flows, nf_flows_init, nf_flows_free, flow_rec,
    rte_mbuf, onvm_meta, onvm_meta_of, onvm_mtod, rd16, ONVM_ACTION_NEXT, ONVM_ACTION_DROP,
    rte_acl_classify, onvm_flow_key)
import ipaddress
from nfs.pkttuple cimport packet_key

from nfs.configs import parse_firewall_rules

DEF BURST_MAX = 64


cdef void ruleset_classify(ruleset_t *rs, rte_mbuf **pkts, unsigned n) noexcept nogil:
    """Find the rule of each packet whose flow has none yet.

    The rules are a pure function of the 5-tuple, so rte_acl's answer is
    kept per flow id with the flow it was given for: the host's flow table
    ages its entries and gives a freed id to a new flow, which must never
    inherit the old flow's answer (`flow_cached` compares the flow_gen).  Only a
    flow's first packet is classified.  Runs once per batch,
    before ruleset_allow runs per packet.  The rules see the 5-tuple the
    packet's bytes carry now (nfs.pkttuple), not the one parsed on arrival:
    a nat or lb before the firewall on the same host may have rewritten it
    (a reply's source is the VIP again once lb has put it back)."""
    cdef onvm_flow_key keys[BURST_MAX]
    cdef const uint8_t *data[BURST_MAX]
    cdef uint32_t res[BURST_MAX]
    cdef unsigned idx[BURST_MAX]
    cdef unsigned i, nmiss = 0
    cdef onvm_meta *meta
    prefetch_flows(&rs.flows, pkts, n)
    for i in range(n):
        meta = onvm_meta_of(pkts[i])
        if meta.key.family == 6:
            classify6(rs, addrs6(pkts[i], meta), meta)
            continue
        if meta.key.family != 4 or flow_cached(rs, meta) != NULL:
            continue
        packet_key(pkts[i], meta, &keys[nmiss])
        data[nmiss] = <const uint8_t *>&keys[nmiss]
        idx[nmiss] = i
        nmiss += 1
        if nmiss == BURST_MAX:
            _classify_misses(rs, pkts, data, res, idx, nmiss)
            nmiss = 0
    if nmiss:
        _classify_misses(rs, pkts, data, res, idx, nmiss)


cdef inline fw_flow_t *flow_cached(ruleset_t *rs, onvm_meta *meta) noexcept nogil:
    """The record of this packet's flow if it holds the flow's answer."""
    cdef fw_flow_t *f = <fw_flow_t *>flow_rec(&rs.flows, meta.flow_id)
    return f if f != NULL and f.gen == meta.flow_gen else NULL


cdef inline void flow_answer(ruleset_t *rs, onvm_meta *meta, uint32_t rule) noexcept nogil:
    """Keep `rule` as the answer for the packet's flow, or (a flow the
    host's table could not hold) in the packet's `destination` until
    ruleset_allow reads it."""
    cdef fw_flow_t *f = <fw_flow_t *>flow_rec(&rs.flows, meta.flow_id)
    if f != NULL:
        f.gen = meta.flow_gen
        f.rule = rule
    else:
        meta.destination = <uint16_t>rule


cdef inline const uint8_t *addrs6(rte_mbuf *m, onvm_meta *meta) noexcept nogil:
    """An IPv6 packet's source then destination address (the parser checked
    that its 40-byte header is there)."""
    return onvm_mtod(m) + meta.l3_off + 8


cdef void classify6(ruleset_t *rs, const uint8_t *addrs, onvm_meta *meta) noexcept nogil:
    """The first IPv6 rule that matches, for a flow whose answer is not
    cached yet; cached as ruleset_classify does (per flow: the host's
    flow table gives flows whose address digests collide ids of their
    own)."""
    if flow_cached(rs, meta) == NULL:
        flow_answer(rs, meta, match6(rs, addrs, meta.key.proto,
                                     rd16(<uint8_t *>&meta.key.sport),
                                     rd16(<uint8_t *>&meta.key.dport)))


cdef inline bint masked_eq(const uint8_t *a, const uint8_t *net, const uint8_t *mask) noexcept nogil:
    cdef int i
    for i in range(16):
        if (a[i] & mask[i]) != net[i]:
            return False
    return True


cdef uint32_t match6(ruleset_t *rs, const uint8_t *addrs, uint8_t proto, uint16_t sport,
                     uint16_t dport) noexcept nogil:
    cdef uint32_t i
    cdef rule6_t *r
    for i in range(rs.nrules6):
        r = &rs.rules6[i]
        if (r.proto >= 0 and r.proto != proto) or sport < r.sport_lo or sport > r.sport_hi \
                or dport < r.dport_lo or dport > r.dport_hi:
            continue
        if masked_eq(addrs, r.src, r.src_mask) and masked_eq(addrs + 16, r.dst, r.dst_mask):
            return r.rule
    return 0


cdef uint8_t ruleset_allow(ruleset_t *rs, onvm_meta *meta) noexcept nogil:
    """The first matching rule's action (or the default), counted; the
    packet's batch went through ruleset_classify."""
    cdef fw_flow_t *f = <fw_flow_t *>flow_rec(&rs.flows, meta.flow_id)
    cdef uint32_t r
    if meta.key.family != 4 and meta.key.family != 6:
        rs.default_hits += 1        # the parser passes only IP; never here
        return rs.default_allow
    r = f.rule if f != NULL else meta.destination
    if meta.key.family == 6:
        rs.ipv6 += 1
    if r:
        rs.hits[r - 1] += 1
        return rs.allow[r - 1]
    rs.default_hits += 1
    if meta.key.family == 6:
        rs.ipv6_default += 1
    return rs.default_allow


cdef void _classify_misses(ruleset_t *rs, rte_mbuf **pkts, const uint8_t **data,
                           uint32_t *res, unsigned *idx, unsigned n) noexcept nogil:
    """rte_acl over packets of flows not seen yet; the answer is cached per
    flow, or (flows the flow table could not hold) kept in the packet's
    `destination` until ruleset_allow reads it."""
    cdef unsigned k
    if rs.acl != NULL:
        rte_acl_classify(rs.acl, data, res, n, 1)
    else:
        memset(res, 0, n * sizeof(uint32_t))
    for k in range(n):
        flow_answer(rs, onvm_meta_of(pkts[idx[k]]), rs.v4_rule[res[k]])


cdef class RuleSet:
    """Checked rules (nfs.fwrules.Rule) and the default action."""

    def __init__(self, rules, default_allow):
        self.rules = list(rules)
        v4 = [i for i, r in enumerate(self.rules) if r.family != 6]
        v6 = [i for i, r in enumerate(self.rules) if r.family != 4]
        self.acl = Acl([self.rules[i].acl() for i in v4])
        self.rs.acl = self.acl.ctx
        self.rs.v4_rule = <uint32_t *>calloc(len(v4) + 1, sizeof(uint32_t))
        self.rs.rules6 = <rule6_t *>calloc(max(1, len(v6)), sizeof(rule6_t))
        if self.rs.v4_rule == NULL or self.rs.rules6 == NULL:
            raise MemoryError()
        for k, i in enumerate(v4):
            self.rs.v4_rule[k + 1] = i + 1
        for k, i in enumerate(v6):
            _rule6(&self.rs.rules6[k], self.rules[i], i + 1)
        self.rs.nrules6 = len(v6)
        n = max(1, len(self.rules))
        self.rs.allow = <uint8_t *>calloc(n, 1)
        self.rs.hits = <uint64_t *>calloc(n, sizeof(uint64_t))
        nf_flows_init(&self.rs.flows, sizeof(fw_flow_t))
        if self.rs.allow == NULL or self.rs.hits == NULL:
            raise MemoryError()
        if len(self.rules) > 65535:
            raise ValueError(f"at most 65535 firewall rules, not {len(self.rules)}")
        for i, r in enumerate(self.rules):
            self.rs.allow[i] = r.allow
        self.rs.default_allow = default_allow

    def __dealloc__(self):
        free(self.rs.v4_rule)
        free(self.rs.rules6)
        free(self.rs.allow)
        free(self.rs.hits)
        nf_flows_free(&self.rs.flows)

    def counters(self):
        return {"default": self.rs.default_hits, "ipv6": self.rs.ipv6,
                "ipv6_default": self.rs.ipv6_default,
                "rules": [{"line": r.line, "rule": r.text, "hits": self.rs.hits[i]}
                          for i, r in enumerate(self.rules)]}


cdef void _rule6(rule6_t *r, rule, uint32_t index):
    """nfs.fwrules.Rule as the IPv6 matcher's struct (no address: any)."""
    cdef bytes a
    r.proto = -1 if rule.proto is None else rule.proto
    src = ipaddress.IPv6Network(rule.src or "::/0")
    dst = ipaddress.IPv6Network(rule.dst or "::/0")
    a = src.network_address.packed + src.netmask.packed + dst.network_address.packed \
        + dst.netmask.packed
    memcpy(r.src, <const char *>a, 16)
    memcpy(r.src_mask, <const char *>a + 16, 16)
    memcpy(r.dst, <const char *>a + 32, 16)
    memcpy(r.dst_mask, <const char *>a + 48, 16)
    r.sport_lo, r.sport_hi = rule.sport
    r.dport_lo, r.dport_hi = rule.dport
    r.rule = index


cdef uint8_t fw_packet(void *ctx, rte_mbuf *m, onvm_meta *meta) noexcept nogil:
    cdef fw_t *fw = <fw_t *>ctx
    if ruleset_allow(fw.rs, meta):
        fw.passed += 1
        return ONVM_ACTION_NEXT
    fw.dropped += 1
    return ONVM_ACTION_DROP


cdef void fw_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    ruleset_classify((<fw_t *>ctx).rs, pkts, n)
    each_packet(fw_packet, ctx, pkts, n)


cdef class Firewall(NativeNF):
    """Config: {"rules": PATH} or {"rules_text": TEXT}."""

    def __init__(self, config=None):
        self.ruleset = RuleSet(*parse_firewall_rules(config))
        self.fw.rs = &self.ruleset.rs
        self.handlers.batch = fw_batch
        self.handlers.ctx = <void *>&self.fw
        self.handlers.flows = &self.ruleset.rs.flows

    @property
    def rules(self):
        return self.ruleset.rules

    def counters(self):
        return {"passed": self.fw.passed, "dropped": self.fw.dropped,
                **self.ruleset.counters()}
