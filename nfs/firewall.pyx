# cython: language_level=3
"""`firewall`: 5-tuple ACL rules (DPDK rte_acl) from a checked rule file
(nfs/fwrules.py), first match wins, with a counter per rule.

IPv4 only: IPv6 packets get the default action and are counted apart.
`RuleSet` (the rules as an rte_acl context plus their actions and hit
counters) is shared with `firewall-stateful` (nfs/stateful.pyx)."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from host_agent.includes.rte_mbuf cimport (rte_mbuf, onvm_meta_of,
    ONVM_ACTION_NEXT, ONVM_ACTION_DROP)
from host_agent.includes.rte_acl cimport rte_acl_classify

from nfs.fwrules import load_rules

DEF BURST_MAX = 64


cdef void ruleset_decide(ruleset_t *rs, rte_mbuf **pkts, unsigned n,
                         uint8_t *allow) noexcept nogil:
    """allow[i] = the first matching rule's action (or the default)."""
    cdef const uint8_t *data[BURST_MAX]
    cdef uint32_t res[BURST_MAX]
    cdef unsigned i, done = 0, chunk
    while done < n:
        chunk = n - done
        if chunk > BURST_MAX:
            chunk = BURST_MAX
        for i in range(chunk):
            data[i] = <const uint8_t *>&onvm_meta_of(pkts[done + i]).key
        if rs.acl != NULL:
            rte_acl_classify(rs.acl, data, res, chunk, 1)
        for i in range(chunk):
            if onvm_meta_of(pkts[done + i]).key.family != 4:
                rs.not_ipv4 += 1
                allow[done + i] = rs.default_allow
            elif rs.acl != NULL and res[i]:
                rs.hits[res[i] - 1] += 1
                allow[done + i] = rs.allow[res[i] - 1]
            else:
                rs.default_hits += 1
                allow[done + i] = rs.default_allow
        done += chunk


cdef class RuleSet:
    """Checked rules (nfs.fwrules.Rule) and the default action."""

    def __init__(self, rules, default_allow):
        self.rules = list(rules)
        self.acl = Acl([r.acl() for r in self.rules])
        self.rs.acl = self.acl.ctx
        n = max(1, len(self.rules))
        self.rs.allow = <uint8_t *>calloc(n, 1)
        self.rs.hits = <uint64_t *>calloc(n, sizeof(uint64_t))
        if self.rs.allow == NULL or self.rs.hits == NULL:
            raise MemoryError()
        for i, r in enumerate(self.rules):
            self.rs.allow[i] = r.allow
        self.rs.default_allow = default_allow

    def __dealloc__(self):
        free(self.rs.allow)
        free(self.rs.hits)

    def counters(self):
        return {"default": self.rs.default_hits, "ipv6_default": self.rs.not_ipv4,
                "rules": [{"line": r.line, "rule": r.text, "hits": self.rs.hits[i]}
                          for i, r in enumerate(self.rules)]}


cdef void fw_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    cdef fw_t *fw = <fw_t *>ctx
    cdef uint8_t allow[256]
    cdef unsigned i, done = 0, chunk
    while done < n:
        chunk = n - done if n - done < 256 else 256
        ruleset_decide(fw.rs, pkts + done, chunk, allow)
        for i in range(chunk):
            if allow[i]:
                fw.passed += 1
                onvm_meta_of(pkts[done + i]).action = ONVM_ACTION_NEXT
            else:
                fw.dropped += 1
                onvm_meta_of(pkts[done + i]).action = ONVM_ACTION_DROP
        done += chunk


cdef class Firewall(NativeNF):
    """Config: {"rules": PATH} or {"rules_text": TEXT}."""

    def __init__(self, config=None):
        self.ruleset = RuleSet(*load_rules(dict(config or {})))
        self.fw.rs = &self.ruleset.rs
        self.batch_fn = fw_batch
        self.batch_ctx = <void *>&self.fw

    @property
    def rules(self):
        return self.ruleset.rules

    def counters(self):
        return {"passed": self.fw.passed, "dropped": self.fw.dropped,
                **self.ruleset.counters()}
