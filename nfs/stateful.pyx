# cython: language_level=3
"""`firewall-stateful`: the firewall's rules (nfs/fwrules.py, DPDK rte_acl,
first match wins) plus connection tracking, so replies of allowed
connections pass without a rule of their own.

A packet of a known connection passes (and refreshes it); so does one
whose reversed 5-tuple is a known connection: a reply, whatever the rules
say.  Any other packet a rule allows opens its connection (its 5-tuple
goes in the connection table), except TCP: only a SYN without ACK opens a
TCP connection; any other TCP packet without a connection (an unsolicited
SYN-ACK, a stray ACK or RST) is dropped even if a rule allows it, counted
`invalid`.  Connections expire when idle (`timeouts`, seconds per
protocol); a TCP FIN or RST shortens the rest of a connection to
`closing` seconds.  With the table full, an allowed packet passes
untracked (counted), and the rest of a TCP connection so opened is dropped
as invalid: fail closed.  Connections are keyed by the packet's bytes as they
reach the firewall (an NF before it on the same host may have rewritten
them since the host parsed the packet).

Config: the firewall's ({"rules": PATH} or {"rules_text": TEXT}), plus
`timeouts: {tcp: 300, udp: 60, icmp: 30, other: 60, closing: 10}` and
`max_connections: 65536`.  `stateful: true` is accepted so the same config
can be given to `firewall`.  `make_firewall(config)` picks this class or
the stateless one by that key.  Connections move with the instance:
export_state() and import_state()."""
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from nflib.nf cimport (each_packet, pkt_l4, rte_mbuf, onvm_meta_of, onvm_meta,
    onvm_mtod, onvm_flow_key, ONVM_ACTION_NEXT, ONVM_ACTION_DROP, rte_acl_ctx,
    rte_acl_classify, rte_get_tsc_cycles, rte_get_tsc_hz, NativeNF, ftab_t,
    ftab_new, ftab_free, ftab_find, ftab_insert, ftab_live, ftab_report, proto_slot)
from nflib.nf cimport ftab_chunk
from nfs.pkttuple cimport (packet_key, reverse_key, key_from_list, key_to_list, flow6_key_t,
    packet_key6, reverse_key6, key6_from_list, key6_to_list, key_family)
from nfs.firewall cimport RuleSet, ruleset_t, ruleset_classify, ruleset_allow

import logging

from nflib.api import NFConfigError
from nfs.configs import STATEFUL_TIMEOUT_KEYS as TIMEOUT_KEYS, parse_stateful as parse_config

log = logging.getLogger("onvm.nf.firewall")

DEF BURST_MAX = 64


cdef struct sfw_t:
    ruleset_t *rs
    ftab_t *conns          # IPv4: onvm_flow_key
    ftab_t *conns6         # IPv6: flow6_key_t (whole addresses)
    uint64_t timeout[5]    # tcp, udp, icmp, other, closing
    uint64_t replies, opened, passed, dropped, untracked, invalid
    uint64_t now           # TSC at the start of the batch


cdef inline uint8_t tcp_flags(rte_mbuf *m, onvm_meta *meta) noexcept nogil:
    """The TCP flags byte of a TCP packet (0 if the header is cut short)."""
    cdef int l4 = pkt_l4(meta)
    if l4 >= 0 and m.data_len >= <uint32_t>l4 + 14:
        return onvm_mtod(m)[l4 + 13]
    return 0


cdef uint64_t expiry(sfw_t *fw, uint8_t proto, uint8_t flags, uint64_t now) noexcept nogil:
    if proto == 6 and (flags & 0x05):          # FIN or RST
        return now + fw.timeout[4]
    return now + fw.timeout[proto_slot(proto, 3)]


cdef bint verdict(sfw_t *fw, rte_mbuf *m, bint allow, uint64_t now) noexcept nogil:
    """The connection table's decision, then the rules': packets of a known
    connection (either way) pass, allowed ones open a connection (TCP: a
    SYN without ACK only).  IPv4 connections and IPv6 ones (keyed by their
    whole addresses) are in tables of their own."""
    cdef onvm_meta *meta = onvm_meta_of(m)
    cdef onvm_flow_key k4, rev4
    cdef flow6_key_t k6, rev6
    cdef const void *k
    cdef const void *rev
    cdef ftab_t *conns
    cdef uint8_t proto
    cdef int32_t pos
    cdef uint8_t flags = 0
    if meta.key.family == 4:
        packet_key(m, meta, &k4)
        reverse_key(&k4, &rev4)
        k, rev, conns, proto = &k4, &rev4, fw.conns, k4.proto
    elif packet_key6(m, meta, &k6):
        reverse_key6(&k6, &rev6)
        k, rev, conns, proto = &k6, &rev6, fw.conns6, k6.proto
    else:
        return allow
    if proto == 6:
        flags = tcp_flags(m, meta)
    pos = ftab_find(conns, k, now)
    if pos >= 0:
        conns.expires[pos] = expiry(fw, proto, flags, now)
        return True
    pos = ftab_find(conns, rev, now)
    if pos >= 0:
        fw.replies += 1
        conns.expires[pos] = expiry(fw, proto, flags, now)
        return True
    if not allow:
        return False
    if proto == 6 and (flags & 0x12) != 0x02:   # not SYN without ACK
        fw.invalid += 1
        return False
    if ftab_insert(conns, k, expiry(fw, proto, flags, now), now) >= 0:
        fw.opened += 1
    else:
        fw.untracked += 1
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
        self.fw.conns6 = ftab_new("sfw6", v["max_connections"], sizeof(flow6_key_t))
        self.handlers.batch = sfw_batch
        self.handlers.ctx = <void *>&self.fw
        self.handlers.flows = &self.ruleset.rs.flows

    def __dealloc__(self):
        ftab_free(self.fw.conns)
        ftab_free(self.fw.conns6)

    @property
    def rules(self):
        return self.ruleset.rules

    def counters(self):
        return {
            "passed": self.fw.passed, "dropped": self.fw.dropped,
            "replies": self.fw.replies, "invalid": self.fw.invalid,
            "opened": self.fw.opened, "untracked": self.fw.untracked,
            "connections": ftab_live(self.fw.conns, rte_get_tsc_cycles())
            + ftab_live(self.fw.conns6, rte_get_tsc_cycles()),
            "connections6": ftab_live(self.fw.conns6, rte_get_tsc_cycles()),
            "flow_table": ftab_report(self.fw.conns, rte_get_tsc_cycles()),
            "flow_table6": ftab_report(self.fw.conns6, rte_get_tsc_cycles()),
            **self.ruleset.counters(),
        }

    def export_state(self):
        """The live connections, JSON-able, for moving this instance (call
        while it does not run)."""
        entries, cursor = [], 0
        while cursor is not None:
            cursor, chunk = self.export_chunk(cursor, 0xffffffff)
            entries += chunk
        return self.state_of(entries)

    def export_chunk(self, cursor, unsigned count):
        """export_state in chunks (host_agent.replicas): (the next cursor,
        None at the end; [(family, key, cycles left)]) of up to `count`
        connections from `cursor` (0: the first; the IPv4 table, then the
        IPv6 one from 1 << 32).  Call while the instance does not run;
        state_of() makes the state of the chunks."""
        cdef uint32_t c = cursor & 0xffffffff
        cdef bint done
        six = cursor >> 32
        raw = ftab_chunk(self.fw.conns6 if six else self.fw.conns, &c, count,
                         rte_get_tsc_cycles(), &done)
        if done:
            nxt = None if six else 1 << 32
        else:
            nxt = (six << 32) | c
        return nxt, [(6 if six else 4, key, left) for _, key, left in raw]

    def state_of(self, entries):
        """The state (as export_state's) of export_chunk's entries."""
        hz = rte_get_tsc_hz()
        return {"nf": "firewall-stateful", "version": 1, "connections": [
            {"key": key6_to_list(<const flow6_key_t *><const char *>key) if family == 6
             else key_to_list(<const onvm_flow_key *><const char *>key), "ttl": left / hz}
            for family, key, left in entries]}

    def import_state(self, state):
        """Take over connections another instance exported; returns how
        many.  Call before the instance runs."""
        cdef onvm_flow_key k
        cdef flow6_key_t k6
        cdef uint64_t now = rte_get_tsc_cycles(), hz = rte_get_tsc_hz()
        cdef int32_t pos
        if not isinstance(state, dict) or state.get("nf") != "firewall-stateful":
            raise NFConfigError("firewall-stateful: import_state takes what "
                                "firewall-stateful's export_state returned")
        n = full = 0
        for c in state.get("connections", []):
            expires = now + <uint64_t>(c["ttl"] * hz)
            if key_family(c["key"]) == 6:
                key6_from_list(c["key"], &k6)
                pos = ftab_insert(self.fw.conns6, &k6, expires, now)
            else:
                key_from_list(c["key"], &k)
                pos = ftab_insert(self.fw.conns, &k, expires, now)
            if pos < 0:
                full += 1
                continue
            n += 1
        log.info("firewall-stateful: imported %d of %d connections%s", n,
                 len(state.get("connections", [])),
                 f" ({full} found a full table)" if full else "")
        return n


def make_firewall(config=None):
    """The `firewall` NF type by its config: stateful when `stateful: true`."""
    from nfs.firewall import Firewall
    config = dict(config or {})
    if config.get("stateful"):
        return StatefulFirewall(config)
    config.pop("stateful", None)
    return Firewall(config)
