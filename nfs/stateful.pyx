# cython: language_level=3
"""`firewall-stateful`: the firewall's rules (nfs/fwrules.py, DPDK rte_acl,
first match wins) plus connection tracking, so replies of allowed
connections pass without a rule of their own.

A packet a rule allows opens (or refreshes) its connection: its 5-tuple
goes in the connection table.  A packet no rule allows still passes if its
reversed 5-tuple is there: a reply.  Connections expire when idle
(`timeouts`, seconds per protocol); a TCP FIN or RST shortens the rest of
a connection to `closing` seconds.

Config: the firewall's ({"rules": PATH} or {"rules_text": TEXT}), plus
`timeouts: {tcp: 300, udp: 60, icmp: 30, other: 60, closing: 10}` and
`max_connections: 65536`.  `stateful: true` is accepted so the same config
can be given to `firewall`.  `make_firewall(config)` picks this class or
the stateless one by that key.  Connections do not move with the
instance: after a move, replies need a rule until their flow is seen
again going out."""
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from nflib.nf cimport (each_packet, pkt_l4, rte_mbuf, onvm_meta_of, onvm_meta,
    onvm_mtod, onvm_flow_key, ONVM_ACTION_NEXT, ONVM_ACTION_DROP, rte_acl_ctx,
    rte_acl_classify, rte_get_tsc_cycles, rte_get_tsc_hz, NativeNF, ftab_t,
    ftab_new, ftab_free, ftab_find, ftab_insert, ftab_live, proto_slot)
from nfs.firewall cimport RuleSet, ruleset_t, ruleset_classify, ruleset_allow

from nfs.configs import STATEFUL_TIMEOUT_KEYS as TIMEOUT_KEYS, parse_stateful as parse_config

DEF BURST_MAX = 64


cdef struct sfw_t:
    ruleset_t *rs
    ftab_t *conns
    uint64_t timeout[5]    # tcp, udp, icmp, other, closing
    uint64_t replies, opened, passed, dropped, untracked
    uint64_t now           # TSC at the start of the batch


cdef uint64_t expiry(sfw_t *fw, rte_mbuf *m, onvm_meta *meta, uint64_t now) noexcept nogil:
    cdef uint8_t *d
    cdef int l4
    if meta.key.proto == 6:
        d = onvm_mtod(m)
        l4 = pkt_l4(meta)
        if l4 >= 0 and m.data_len >= <uint32_t>l4 + 14 and (d[l4 + 13] & 0x05):
            return now + fw.timeout[4]
    return now + fw.timeout[proto_slot(meta.key.proto, 3)]


cdef bint verdict(sfw_t *fw, rte_mbuf *m, bint allow, uint64_t now) noexcept nogil:
    """The rules' decision, then the connection table's: allowed packets
    open or refresh their connection, denied ones pass only as replies."""
    cdef onvm_meta *meta = onvm_meta_of(m)
    cdef onvm_flow_key rev
    cdef int32_t pos
    if meta.key.family != 4:
        return allow
    if allow:
        pos = ftab_find(fw.conns, &meta.key, now)
        if pos >= 0:
            fw.conns.expires[pos] = expiry(fw, m, meta, now)
        elif ftab_insert(fw.conns, &meta.key, expiry(fw, m, meta, now), now) >= 0:
            fw.opened += 1
        else:
            fw.untracked += 1
        return True
    rev = meta.key
    rev.src = meta.key.dst
    rev.dst = meta.key.src
    rev.sport = meta.key.dport
    rev.dport = meta.key.sport
    pos = ftab_find(fw.conns, &rev, now)
    if pos < 0:
        return False
    fw.replies += 1
    fw.conns.expires[pos] = expiry(fw, m, meta, now)
    return True


cdef uint8_t sfw_packet(void *ctx, rte_mbuf *m, onvm_meta *meta) noexcept nogil:
    cdef sfw_t *fw = <sfw_t *>ctx
    if verdict(fw, m, ruleset_allow(fw.rs, meta), fw.now):
        fw.passed += 1
        return ONVM_ACTION_NEXT
    fw.dropped += 1
    return ONVM_ACTION_DROP


cdef void sfw_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    cdef sfw_t *fw = <sfw_t *>ctx
    fw.now = rte_get_tsc_cycles()
    ruleset_classify(fw.rs, pkts, n)
    each_packet(sfw_packet, ctx, pkts, n)


cdef class StatefulFirewall(NativeNF):
    cdef sfw_t fw
    cdef RuleSet ruleset

    def __cinit__(self, config=None):
        memset(&self.fw, 0, sizeof(sfw_t))

    def __init__(self, config=None):
        rules, default_allow, v = parse_config(config)
        self.ruleset = RuleSet(rules, default_allow)
        self.fw.rs = &self.ruleset.rs
        hz = rte_get_tsc_hz()
        for i, k in enumerate(TIMEOUT_KEYS):
            self.fw.timeout[i] = <uint64_t>(v["timeouts"][k] * hz)
        self.fw.conns = ftab_new("sfw", v["max_connections"], sizeof(onvm_flow_key))
        self.handlers.batch = sfw_batch
        self.handlers.ctx = <void *>&self.fw

    def __dealloc__(self):
        ftab_free(self.fw.conns)

    @property
    def rules(self):
        return self.ruleset.rules

    def counters(self):
        return {
            "passed": self.fw.passed, "dropped": self.fw.dropped,
            "replies": self.fw.replies,
            "opened": self.fw.opened, "untracked": self.fw.untracked,
            "connections": ftab_live(self.fw.conns, rte_get_tsc_cycles()),
            **self.ruleset.counters(),
        }


def make_firewall(config=None):
    """The `firewall` NF type by its config: stateful when `stateful: true`."""
    from nfs.firewall import Firewall
    config = dict(config or {})
    if config.get("stateful"):
        return StatefulFirewall(config)
    config.pop("stateful", None)
    return Firewall(config)
