# The firewall's rule table, shared by `firewall` and `firewall-stateful`.
from libc.stdint cimport uint8_t, int16_t, uint16_t, uint32_t, uint64_t
from nflib.nf cimport rte_acl_ctx, rte_mbuf, onvm_meta, onvm_flow_key, nf_flows_t, NativeNF, Acl


cdef struct rule6_t:        # a rule for IPv6 packets, matched in file order
    int16_t proto           # -1: any
    uint8_t src[16]
    uint8_t src_mask[16]
    uint8_t dst[16]
    uint8_t dst_mask[16]
    uint16_t sport_lo, sport_hi, dport_lo, dport_hi
    uint32_t rule           # its rule + 1


cdef struct fw_flow_t:       # per flow id (nflib/nf.pxd nf_flows_t): 8 bytes
    uint32_t gen            # the flow the answer is for (ids are reused)
    uint32_t rule           # the answer (rule + 1, 0 none), cached


cdef struct ruleset_t:
    rte_acl_ctx *acl        # the rules for IPv4 packets
    uint32_t *v4_rule       # rte_acl's answer (its rule + 1) -> the rule + 1
    rule6_t *rules6         # the rules for IPv6 packets
    uint32_t nrules6
    uint8_t *allow          # per rule
    uint64_t *hits          # per rule
    nf_flows_t flows        # per flow id: the cached answer (fw_flow_t)
    uint8_t default_allow
    uint64_t default_hits
    uint64_t ipv6           # IPv6 packets judged
    uint64_t ipv6_default   # of which no rule matched


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
