# cython: language_level=3
"""`firewall`: 5-tuple ACL rules (DPDK rte_acl) from a checked rule file
(nfs/fwrules.py), first match wins, with a counter per rule.

IPv4 only: IPv6 packets get the default action and are counted apart."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from host_agent.includes.rte_mbuf cimport (rte_mbuf, onvm_meta_of, onvm_flow_key,
    ONVM_ACTION_NEXT, ONVM_ACTION_DROP)
from host_agent.includes.rte_acl cimport rte_acl_ctx, rte_acl_classify
from host_agent.fastpath cimport NativeNF, Acl

from nfs.fwrules import load_rules

DEF BURST_MAX = 64


cdef struct fw_t:
    rte_acl_ctx *acl
    uint8_t *allow          # per rule
    uint64_t *hits          # per rule
    uint8_t default_allow
    uint64_t default_hits
    uint64_t ipv6
    uint64_t passed
    uint64_t dropped


cdef void fw_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    cdef fw_t *fw = <fw_t *>ctx
    cdef const uint8_t *data[BURST_MAX]
    cdef uint32_t res[BURST_MAX]
    cdef unsigned i, done = 0, chunk
    cdef uint8_t allow
    while done < n:
        chunk = n - done
        if chunk > BURST_MAX:
            chunk = BURST_MAX
        for i in range(chunk):
            data[i] = <const uint8_t *>&onvm_meta_of(pkts[done + i]).key
        if fw.acl != NULL:
            rte_acl_classify(fw.acl, data, res, chunk, 1)
        for i in range(chunk):
            if onvm_meta_of(pkts[done + i]).key.family != 4:
                fw.ipv6 += 1
                allow = fw.default_allow
            elif fw.acl != NULL and res[i]:
                fw.hits[res[i] - 1] += 1
                allow = fw.allow[res[i] - 1]
            else:
                fw.default_hits += 1
                allow = fw.default_allow
            if allow:
                fw.passed += 1
                onvm_meta_of(pkts[done + i]).action = ONVM_ACTION_NEXT
            else:
                fw.dropped += 1
                onvm_meta_of(pkts[done + i]).action = ONVM_ACTION_DROP
        done += chunk


cdef class Firewall(NativeNF):
    """Config: {"rules": PATH} or {"rules_text": TEXT}."""
    cdef fw_t fw
    cdef Acl acl
    cdef readonly list rules

    def __init__(self, config=None):
        rules, default_allow = load_rules(dict(config or {}))
        self.rules = rules
        self.acl = Acl([r.acl() for r in rules])
        self.fw.acl = self.acl.ctx
        n = max(1, len(rules))
        self.fw.allow = <uint8_t *>calloc(n, 1)
        self.fw.hits = <uint64_t *>calloc(n, sizeof(uint64_t))
        if self.fw.allow == NULL or self.fw.hits == NULL:
            raise MemoryError()
        for i, r in enumerate(rules):
            self.fw.allow[i] = r.allow
        self.fw.default_allow = default_allow
        self.batch_fn = fw_batch
        self.batch_ctx = <void *>&self.fw

    def __dealloc__(self):
        free(self.fw.allow)
        free(self.fw.hits)

    def counters(self):
        return {
            "passed": self.fw.passed, "dropped": self.fw.dropped,
            "default": self.fw.default_hits, "ipv6_default": self.fw.ipv6,
            "rules": [{"line": r.line, "rule": r.text, "hits": self.fw.hits[i]}
                      for i, r in enumerate(self.rules)],
        }
