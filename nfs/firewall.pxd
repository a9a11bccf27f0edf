# The firewall's rule table, shared by `firewall` and `firewall-stateful`.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from nflib.nf cimport rte_acl_ctx, rte_mbuf, onvm_meta, onvm_flow_key, NativeNF, Acl


cdef struct ruleset_t:
    rte_acl_ctx *acl
    uint8_t *allow          # per rule
    uint64_t *hits          # per rule
    uint32_t *flow_rule     # per flow id: rte_acl's answer (rule + 1, 0 none), cached
    uint8_t *flow_known     # per flow id: 1 once flow_rule holds the answer
    onvm_flow_key *flow_of  # per flow id: the flow the answer is for (ids are reused)
    uint8_t default_allow
    uint64_t default_hits
    uint64_t not_ipv4       # IPv6 packets: the default action, counted


cdef void ruleset_classify(ruleset_t *rs, rte_mbuf **pkts, unsigned n) noexcept nogil
cdef uint8_t ruleset_allow(ruleset_t *rs, onvm_meta *meta) noexcept nogil


cdef class RuleSet:
    cdef ruleset_t rs
    cdef Acl acl
    cdef readonly list rules


cdef struct fw_t:
    ruleset_t *rs
    uint64_t passed
    uint64_t dropped


cdef class Firewall(NativeNF):
    cdef RuleSet ruleset
    cdef fw_t fw
