# cython: language_level=3
"""`lb`: a layer-4 load balancer with Maglev hashing (Eisenbud et al.,
NSDI 2016) over a pool of backends.

A new flow (5-tuple) gets the backend of its hash's entry in the Maglev
lookup table (size prime, default 65537) and keeps it in a connection
table, so it stays on its backend while backends come and go; only the
flows of a removed backend move (and Maglev moves few others' *new* flows).
Each packet's destination MAC and IPv4 address are rewritten to the
backend's, with the IPv4 and TCP/UDP checksums fixed incrementally.

IPv4 and IPv6: one lb serves both families.  A backend has an IPv4
address, an IPv6 one or both; each family has its own Maglev table (over
the backends with an address of that family, built the same way from
their names), its own connection and reply tables (IPv6 ones keyed by
whole addresses, nfs/pkttuple.pxd's flow6_key_t) and its own counters
(`balanced6`, ...).  An IPv6 packet gets its destination (16 bytes)
rewritten and its TCP/UDP/ICMPv6 checksum fixed incrementally over the
pseudo-header (IPv6 has no header checksum).  A packet of a family no
backend has is dropped (`no_backend` / `no_backend6`): fail closed; one
of neither family passes untouched (`not_ip`).

Proxy mode (the only mode): replies come back through the LB.  For each
balanced flow it keeps a reverse entry, keyed by the reply's 5-tuple
(backend address and port -> the client), so a reply from the backend gets
its IPv4 source rewritten back to the address the client spoke to (the
VIP) and its source port back to the service port if they differ
(checksums fixed incrementally; the source MAC is left alone), and passes
(verdict NEXT).  The reverse entry ages with the forward one: a packet of
either direction keeps both alive.  Flows are keyed by the packet's bytes
as they reach the LB, not by what the host parsed (an NF before it on
the same host may have rewritten them).

Config (inline or a YAML `file`, see nfs/nfconfig.py):

    mode: proxy               # the default and the only mode (replies
                              # return through the LB; no DSR)
    vip: 10.0.1.10            # optional: only IPv4 packets to it are balanced
    vip6: "2001:db8:1::10"    # optional: the same for IPv6 packets
    backends:                 # the pool at start; add/remove at run time
      - {name: web1, ip: 10.0.2.1, ip6: "2001:db8:2::1", mac: "02:00:00:00:02:01"}
                              # ip, ip6 or both
    table_size: 65537         # prime, larger than 100 x the backends
    out_port: 1               # optional: send the packet out of this port
                              # (verdict OUT, so the backend MAC is kept);
                              # without it the chain goes on (NEXT)
    flow_timeout: 300         # seconds an idle flow keeps its backend
    max_flows: 65536

The flow -> backend map (IPv4 and IPv6 flows) moves with the instance:
export_state() and import_state(); import installs both directions of
each flow.

Worker cores (host_agent.workers): each worker has its own object, and
a reply (backend -> client) must reach the worker whose object balanced
its flow (client -> VIP).  The host steers it (host_agent/handoff.pxd):
a backend's address hashes as the lb's VIP, so the reply's symmetric
hash is the forward packet's.  Not a stateless reply rewrite instead:
the reply table is what tells a reply from a flow a backend opens
itself.  Needs a `vip` (`vip6`) for
IPv4 (IPv6) backends; without one, or with a backend shared by two lbs
of different VIPs, a host of several workers refuses the plan.  Import
puts every flow into each worker's object (each flow's own worker uses
it; the others' copies age out)."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, intptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset, memcmp
from nflib.nf cimport (onvm_load_ptr, onvm_store_ptr, pkt_l4, rte_mbuf,
    onvm_meta_of, onvm_meta, onvm_mtod, onvm_flow_key, ONVM_ACTION_NEXT,
    ONVM_ACTION_DROP, ONVM_ACTION_OUT, rte_get_tsc_cycles, rte_get_tsc_hz,
    NativeNF, ftab_t, ftab_new, ftab_free, ftab_find, ftab_insert,
    ftab_live, ftab_report, set_ip, set_port, rd16, rd32, wr16, wr32, csum_step)
from nflib.nf cimport ftab_chunk
from nfs.pkttuple cimport (packet_key, reverse_key, key_from_list, key_to_list, flow6_key_t,
    packet_key6, reverse_key6, key6_from_list, key6_to_list, key_family)

import ipaddress
import logging
import zlib

from nfs import nfconfig
from nfs.configs import parse_lb as parse_config  # noqa: F401  (checked without DPDK too)
from nflib.api import NFConfigError

log = logging.getLogger("onvm.nf.lb")

DEF MAX_BACKENDS = 256


cdef struct backend_t:
    uint32_t ip            # host order
    uint8_t ip6[16]
    uint8_t has4, has6     # which of ip, ip6 it has
    uint8_t mac[6]
    uint32_t uid           # 0: free slot; never reused, so a flow can tell
    uint64_t packets
    uint64_t flows


# What picking backends counted, per family.
cdef struct picks_t:
    uint64_t balanced      # packets sent to a backend
    uint64_t no_backend    # dropped: the family has no backend
    uint64_t moved         # flows whose backend was removed, balanced anew
    uint64_t untracked     # flows the full table could not hold: Maglev alone decides


# The IPv6 side: a Maglev table over the backends with ip6, and connection
# and reply tables keyed by flow6_key_t (whole addresses).
cdef struct lb6_t:
    void *table            # uint16_t[M] of slots, swapped atomically
    ftab_t *flows
    uint16_t *flow_slot    # per flow position
    uint32_t *flow_uid
    ftab_t *replies        # reply 5-tuple (backend -> client) -> position
    uint8_t *reply_addr    # 16 per reply position: the address the client spoke to
    uint8_t vip[16]
    uint8_t has_vip
    picks_t picks
    uint64_t not_vip, short, replies_rewritten, replies_untracked


cdef struct lb_t:
    backend_t be[MAX_BACKENDS]
    void *table            # uint16_t[M] of slots, swapped atomically
    uint32_t m
    ftab_t *flows
    uint16_t *flow_slot    # per flow position
    uint32_t *flow_uid
    ftab_t *replies        # reply 5-tuple (backend -> client) -> position
    uint32_t *reply_addr   # per reply position: the address the client spoke to
    uint16_t *reply_port   #   and its port (both network order)
    uint32_t vip           # network order
    uint8_t has_vip
    uint8_t out
    uint16_t out_port
    uint64_t timeout
    picks_t picks
    uint64_t not_vip, not_ip, replies_rewritten, replies_untracked
    lb6_t v6


cdef inline void remember_reply(lb_t *lb, const onvm_flow_key *k, uint32_t backend_ip,
                                uint64_t expires, uint64_t now) noexcept nogil:
    """The reverse entry of forward key k, whose flow goes to the backend at
    `backend_ip` (host order): the reply (backend -> client) will get k's
    destination back."""
    cdef onvm_flow_key rev
    cdef int32_t pos
    reverse_key(k, &rev)
    wr32(<uint8_t *>&rev.src, backend_ip)
    pos = ftab_insert(lb.replies, &rev, expires, now)
    if pos < 0:
        lb.replies_untracked += 1
        return
    lb.reply_addr[pos] = k.dst
    lb.reply_port[pos] = k.dport


cdef inline bint rewrite_reply(lb_t *lb, rte_mbuf *m, onvm_meta *meta, onvm_flow_key *k,
                               uint64_t now) noexcept nogil:
    """If k is the reply of a balanced flow: its source back to the VIP and
    service port, both directions refreshed; True."""
    cdef int32_t pos = ftab_find(lb.replies, k, now), fpos
    cdef uint8_t *d
    cdef int l4
    cdef onvm_flow_key fwd
    if pos < 0:
        return False
    d = onvm_mtod(m)
    l4 = pkt_l4(meta)
    set_ip(d, meta.l3_off, l4, m.data_len, 12, rd32(<uint8_t *>&lb.reply_addr[pos]))
    if l4 >= 0 and k.sport != lb.reply_port[pos]:
        set_port(d, meta.l3_off, l4, m.data_len, 0, rd16(<uint8_t *>&lb.reply_port[pos]))
    lb.replies.expires[pos] = now + lb.timeout
    k.src = lb.reply_addr[pos]
    k.sport = lb.reply_port[pos]
    reverse_key(k, &fwd)
    fpos = ftab_find(lb.flows, &fwd, now)
    if fpos >= 0:
        lb.flows.expires[fpos] = now + lb.timeout
    lb.replies_rewritten += 1
    return True


cdef inline backend_t *pick_backend(lb_t *lb, rte_mbuf *m, onvm_meta *meta, const void *k,
                                    ftab_t *flows,
                                    uint16_t *flow_slot, uint32_t *flow_uid, uint16_t *table,
                                    picks_t *picks, uint64_t now) noexcept nogil:
    """The backend of flow k (either family: `flows` and its arrays, the
    family's Maglev `table`): the one it has (refreshed), else the Maglev
    entry of its hash (remembered).  The packet goes to it: its MAC, and
    the verdict.  NULL when the family has no backend: the packet dropped."""
    cdef int32_t pos = ftab_find(flows, k, now)
    cdef uint16_t slot
    cdef backend_t *be
    if pos >= 0 and lb.be[flow_slot[pos]].uid == flow_uid[pos]:
        slot = flow_slot[pos]
        flows.expires[pos] = now + lb.timeout
    else:
        if table == NULL:
            picks.no_backend += 1
            meta.action = ONVM_ACTION_DROP
            return NULL
        slot = table[meta.flow_hash % lb.m]
        if pos >= 0:
            picks.moved += 1     # its backend was removed
        else:
            pos = ftab_insert(flows, k, now + lb.timeout, now)
        if pos >= 0:
            flow_slot[pos] = slot
            flow_uid[pos] = lb.be[slot].uid
            lb.be[slot].flows += 1
        else:
            picks.untracked += 1
    be = &lb.be[slot]
    be.packets += 1
    picks.balanced += 1
    memcpy(onvm_mtod(m), be.mac, 6)
    if lb.out:
        meta.action = ONVM_ACTION_OUT
        meta.destination = lb.out_port
    return be


# ------------------------------------------------------------------ IPv6

cdef inline uint8_t *l4_csum6(uint8_t *d, int l4, uint32_t length, uint8_t proto) noexcept nogil:
    """Where the checksum of an IPv6 packet's TCP, UDP or ICMPv6 header is
    (all three cover the pseudo-header), NULL if none or cut short."""
    if l4 < 0:
        return NULL
    if proto == 6 and length >= <uint32_t>l4 + 18:
        return d + l4 + 16
    if proto == 17 and length >= <uint32_t>l4 + 8:
        return d + l4 + 6
    if proto == 58 and length >= <uint32_t>l4 + 4:
        return d + l4 + 2
    return NULL


cdef inline void set_ip6(uint8_t *d, int l3, int l4, uint32_t length, uint8_t proto,
                         int addr_off, const uint8_t *new) noexcept nogil:
    """Rewrite the IPv6 source (addr_off 8) or destination (24) address,
    fixing the L4 checksum incrementally, word by word (RFC 1624)."""
    cdef uint8_t *a = d + l3 + addr_off
    cdef uint8_t *c = l4_csum6(d, l4, length, proto)
    cdef uint16_t sum
    cdef int i
    if c != NULL:
        sum = rd16(c)
        if not (proto == 17 and sum == 0):
            for i in range(8):
                sum = csum_step(sum, rd16(a + 2 * i), rd16(new + 2 * i))
            wr16(c, 0xffff if proto == 17 and sum == 0 else sum)
    memcpy(a, new, 16)


cdef inline void remember_reply6(lb6_t *v6, const flow6_key_t *k, const uint8_t *backend_ip6,
                                 uint64_t expires, uint64_t now) noexcept nogil:
    """remember_reply for an IPv6 flow."""
    cdef flow6_key_t rev
    cdef int32_t pos
    reverse_key6(k, &rev)
    memcpy(rev.src, backend_ip6, 16)
    pos = ftab_insert(v6.replies, &rev, expires, now)
    if pos < 0:
        v6.replies_untracked += 1
        return
    memcpy(&v6.reply_addr[16 * pos], k.dst, 16)


cdef inline bint rewrite_reply6(lb_t *lb, rte_mbuf *m, onvm_meta *meta, flow6_key_t *k,
                                uint64_t now) noexcept nogil:
    """rewrite_reply for an IPv6 packet (its source port is the service
    port already: the reply key holds it, and the lb rewrites no port)."""
    cdef lb6_t *v6 = &lb.v6
    cdef int32_t pos = ftab_find(v6.replies, k, now), fpos
    cdef uint8_t *d
    cdef int l4
    cdef flow6_key_t fwd
    if pos < 0:
        return False
    d = onvm_mtod(m)
    l4 = pkt_l4(meta)
    set_ip6(d, meta.l3_off, l4, m.data_len, k.proto, 8, &v6.reply_addr[16 * pos])
    v6.replies.expires[pos] = now + lb.timeout
    memcpy(k.src, &v6.reply_addr[16 * pos], 16)
    reverse_key6(k, &fwd)
    fpos = ftab_find(v6.flows, &fwd, now)
    if fpos >= 0:
        v6.flows.expires[fpos] = now + lb.timeout
    v6.replies_rewritten += 1
    return True


cdef inline void balance6(lb_t *lb, rte_mbuf *m, onvm_meta *meta, uint64_t now) noexcept nogil:
    """An IPv6 packet: a reply back to the VIP, or a flow to its backend."""
    cdef lb6_t *v6 = &lb.v6
    cdef flow6_key_t k
    cdef backend_t *be
    cdef uint8_t *d
    if v6.flows == NULL:              # an IPv4-only lb: no IPv6 backend, ever
        v6.picks.no_backend += 1
        meta.action = ONVM_ACTION_DROP
        return
    if not packet_key6(m, meta, &k):
        v6.short += 1                 # cut short: fail closed
        meta.action = ONVM_ACTION_DROP
        return
    if rewrite_reply6(lb, m, meta, &k, now):
        return
    if v6.has_vip and memcmp(k.dst, v6.vip, 16) != 0:
        v6.not_vip += 1
        return
    be = pick_backend(lb, m, meta, &k, v6.flows, v6.flow_slot, v6.flow_uid,
                      <uint16_t *>onvm_load_ptr(&v6.table), &v6.picks, now)
    if be == NULL:
        return
    d = onvm_mtod(m)
    set_ip6(d, meta.l3_off, pkt_l4(meta), m.data_len, k.proto, 24, be.ip6)
    remember_reply6(v6, &k, be.ip6, now + lb.timeout, now)


cdef void lb_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    cdef lb_t *lb = <lb_t *>ctx
    cdef uint16_t *table = <uint16_t *>onvm_load_ptr(&lb.table)
    cdef uint64_t now = rte_get_tsc_cycles()
    cdef unsigned i
    cdef onvm_meta *meta
    cdef backend_t *be
    cdef uint8_t *d
    cdef onvm_flow_key k
    for i in range(n):
        meta = onvm_meta_of(pkts[i])
        meta.action = ONVM_ACTION_NEXT
        if meta.key.family == 6:
            balance6(lb, pkts[i], meta, now)
            continue
        if meta.key.family != 4:
            lb.not_ip += 1
            continue
        packet_key(pkts[i], meta, &k)
        if rewrite_reply(lb, pkts[i], meta, &k, now):
            continue
        if lb.has_vip and k.dst != lb.vip:
            lb.not_vip += 1
            continue
        be = pick_backend(lb, pkts[i], meta, &k, lb.flows, lb.flow_slot, lb.flow_uid, table,
                          &lb.picks, now)
        if be == NULL:
            continue
        d = onvm_mtod(pkts[i])
        set_ip(d, meta.l3_off, pkt_l4(meta), pkts[i].data_len, 16, be.ip)
        remember_reply(lb, &k, be.ip, now + lb.timeout, now)


cdef uint16_t *maglev_table(list backends, uint32_t m) except NULL:
    """Maglev's population: each backend fills its preferred free entries in
    turn (its permutation: offset + j * skip mod m), until the table is full.
    `backends` is [(slot, name)]."""
    cdef uint32_t nb = len(backends), i, c, filled = 0
    cdef uint16_t *table = <uint16_t *>malloc(m * sizeof(uint16_t))
    cdef uint8_t *taken = <uint8_t *>calloc(m, 1)
    cdef uint32_t *offset = <uint32_t *>malloc(nb * sizeof(uint32_t))
    cdef uint32_t *skip = <uint32_t *>malloc(nb * sizeof(uint32_t))
    cdef uint32_t *nxt = <uint32_t *>calloc(nb, sizeof(uint32_t))
    cdef uint16_t *slots = <uint16_t *>malloc(nb * sizeof(uint16_t))
    if not (table and taken and offset and skip and nxt and slots):
        raise MemoryError()
    for i, (slot, name) in enumerate(backends):
        slots[i] = slot
        offset[i] = zlib.crc32(name.encode(), 0x9e3779b9) % m
        skip[i] = zlib.crc32(name.encode(), 0x7f4a7c15) % (m - 1) + 1
    with nogil:
        while filled < m:
            for i in range(nb):
                c = (offset[i] + <uint64_t>nxt[i] * skip[i]) % m
                while taken[c]:
                    nxt[i] += 1
                    c = (offset[i] + <uint64_t>nxt[i] * skip[i]) % m
                taken[c] = 1
                table[c] = slots[i]
                nxt[i] += 1
                filled += 1
                if filled == m:
                    break
    free(taken); free(offset); free(skip); free(nxt); free(slots)
    return table


cdef class LoadBalancer(NativeNF):
    cdef lb_t lb
    cdef dict slot_of          # backend name -> slot
    cdef list names            # slot -> name or None
    cdef list retired          # old Maglev tables, freed at the next change
    cdef uint32_t next_uid

    def __cinit__(self, config=None):
        memset(&self.lb, 0, sizeof(lb_t))

    def __init__(self, config=None):
        v, backends = parse_config(config)
        self.lb.m = v["table_size"]
        self.lb.timeout = <uint64_t>(v["flow_timeout"] * rte_get_tsc_hz())
        if v["vip"] is not None:
            self.lb.has_vip = 1
            self.lb.vip = int.from_bytes(ipaddress.IPv4Address(v["vip"]).packed, "little")
        if v["vip6"] is not None:
            self.lb.v6.has_vip = 1
            packed = ipaddress.IPv6Address(v["vip6"]).packed
            memcpy(self.lb.v6.vip, <const char *>packed, 16)
        if v["out_port"] is not None:
            self.lb.out = 1
            self.lb.out_port = v["out_port"]
        n = v["max_flows"] + 1
        self.lb.flows = ftab_new("lb", v["max_flows"], sizeof(onvm_flow_key))
        self.lb.flow_slot = <uint16_t *>calloc(n, sizeof(uint16_t))
        self.lb.flow_uid = <uint32_t *>calloc(n, sizeof(uint32_t))
        self.lb.replies = ftab_new("lb-replies", v["max_flows"], sizeof(onvm_flow_key))
        self.lb.reply_addr = <uint32_t *>calloc(n, sizeof(uint32_t))
        self.lb.reply_port = <uint16_t *>calloc(n, sizeof(uint16_t))
        if (self.lb.flow_slot == NULL or self.lb.flow_uid == NULL
                or self.lb.reply_addr == NULL or self.lb.reply_port == NULL):
            raise MemoryError()
        if v["vip6"] is not None or any(ip6 is not None for _, _, ip6, _ in backends):
            self._ipv6_tables(v["max_flows"])
        self.slot_of, self.names, self.retired = {}, [None] * MAX_BACKENDS, []
        self.next_uid = 1
        for name, ip, ip6, mac in backends:
            self._place(name, ip, ip6, mac)
        self._rebuild()
        self.handlers.batch = lb_batch
        self.handlers.ctx = <void *>&self.lb

    def __dealloc__(self):
        self._free_retired()
        free(self.lb.table)
        free(self.lb.v6.table)
        ftab_free(self.lb.flows)
        free(self.lb.flow_slot)
        free(self.lb.flow_uid)
        ftab_free(self.lb.replies)
        free(self.lb.reply_addr)
        free(self.lb.reply_port)
        ftab_free(self.lb.v6.flows)
        free(self.lb.v6.flow_slot)
        free(self.lb.v6.flow_uid)
        ftab_free(self.lb.v6.replies)
        free(self.lb.v6.reply_addr)

    def _ipv6_tables(self, unsigned max_flows):
        """The IPv6 flow and reply tables, made only for an lb whose config
        has an ip6 backend or a vip6 (an IPv4-only lb takes no memory for
        them, and drops IPv6 packets: no_backend6)."""
        self.lb.v6.flows = ftab_new("lb6", max_flows, sizeof(flow6_key_t))
        self.lb.v6.flow_slot = <uint16_t *>calloc(max_flows + 1, sizeof(uint16_t))
        self.lb.v6.flow_uid = <uint32_t *>calloc(max_flows + 1, sizeof(uint32_t))
        self.lb.v6.replies = ftab_new("lb6-replies", max_flows, sizeof(flow6_key_t))
        self.lb.v6.reply_addr = <uint8_t *>calloc(max_flows + 1, 16)
        if (self.lb.v6.flow_slot == NULL or self.lb.v6.flow_uid == NULL
                or self.lb.v6.reply_addr == NULL):
            raise MemoryError()

    def _place(self, name, ip, ip6, mac):
        cdef backend_t *be
        slot = self.names.index(None) if None in self.names else -1
        if slot < 0:
            raise NFConfigError(f"lb: at most {MAX_BACKENDS} backends")
        be = &self.lb.be[slot]
        memset(be, 0, sizeof(backend_t))
        if ip is not None:
            be.ip = int(ipaddress.IPv4Address(ip))
            be.has4 = 1
        if ip6 is not None:
            packed = ipaddress.IPv6Address(ip6).packed
            memcpy(be.ip6, <const char *>packed, 16)
            be.has6 = 1
        for i in range(6):
            be.mac[i] = mac[i]
        be.uid = self.next_uid
        self.next_uid += 1
        self.names[slot] = name
        self.slot_of[name] = slot

    def _rebuild(self):
        """New Maglev tables, one per family, over the backends with an
        address of that family."""
        for six in (False, True):
            live = sorted((name, slot) for name, slot in self.slot_of.items()
                          if (self.lb.be[slot].has6 if six else self.lb.be[slot].has4))
            self._swap(&self.lb.v6.table if six else &self.lb.table, live)
            log.info("lb: IPv%d Maglev table of %d entries over %d backends: %s",
                     6 if six else 4, self.lb.m, len(live),
                     ", ".join(n for n, _ in live) or "none")

    cdef _swap(self, void **where, list live):
        cdef uint16_t *new = NULL
        if live:
            new = maglev_table([(slot, name) for name, slot in live], self.lb.m)
        old = <intptr_t>onvm_load_ptr(where)
        onvm_store_ptr(where, <void *>new)
        if old:
            # The loop may be in a batch on it: free at the next change.
            self.retired.append(old)

    def _free_retired(self):
        for p in self.retired or ():
            free(<void *><intptr_t>p)
        self.retired = []

    def add_backend(self, name, ip, mac, ip6=None):
        """Add a backend (ip, ip6: either may be None, not both) at run
        time; flows in progress keep theirs."""
        if name in self.slot_of:
            raise NFConfigError(f"lb: backend {name!r} is already in the pool")
        if ip is None and ip6 is None:
            raise NFConfigError(f"lb: backend {name!r} needs an address: ip, ip6 or both")
        if ip6 is not None and self.lb.v6.flows == NULL:
            raise NFConfigError(f"lb: backend {name!r} has an ip6, but this lb serves IPv4 "
                                f"only (its config named no ip6 backend nor a vip6)")
        self._place(name, None if ip is None else nfconfig.ipv4(ip),
                    None if ip6 is None else nfconfig.ipv6(ip6), nfconfig.mac(mac))
        self._free_retired()
        self._rebuild()

    def remove_backend(self, name):
        """Remove a backend; its flows move to others at their next packet."""
        if name not in self.slot_of:
            raise NFConfigError(f"lb: no backend {name!r}; pool: {', '.join(sorted(self.slot_of))}")
        slot = self.slot_of.pop(name)
        self._free_retired()
        self._rebuild()
        self.lb.be[slot].uid = 0
        self.names[slot] = None

    def backends(self):
        return sorted(self.slot_of)

    def counters(self):
        """IPv4 and IPv6 (the `6` names) side by side, the ones an agent's
        store summary keeps first (contracts.statsum keeps 16 numbers); the
        IPv6 tables' reports only where the lb has them."""
        cdef uint64_t now = rte_get_tsc_cycles()
        cdef lb6_t *v6 = &self.lb.v6
        cdef bint six = v6.flows != NULL
        out = {
            "balanced": self.lb.picks.balanced, "balanced6": v6.picks.balanced,
            "replies": self.lb.replies_rewritten, "replies6": v6.replies_rewritten,
            "flows": ftab_live(self.lb.flows, now),
            "flows6": ftab_live(v6.flows, now) if six else 0,
            "reply_flows": ftab_live(self.lb.replies, now),
            "reply_flows6": ftab_live(v6.replies, now) if six else 0,
            "no_backend": self.lb.picks.no_backend, "no_backend6": v6.picks.no_backend,
            "not_vip": self.lb.not_vip, "not_vip6": v6.not_vip,
            "moved": self.lb.picks.moved, "moved6": v6.picks.moved,
            "untracked": self.lb.picks.untracked, "untracked6": v6.picks.untracked,
            "not_ip": self.lb.not_ip, "short6": v6.short,
            "flow_table_full": self.lb.flows.full,
            "flow_table6_full": v6.flows.full if six else 0,
            "replies_untracked": self.lb.replies_untracked,
            "replies6_untracked": v6.replies_untracked,
            "flow_table": ftab_report(self.lb.flows, now),
            "reply_table": ftab_report(self.lb.replies, now),
            "backends": [self._backend_report(name, slot)
                         for name, slot in sorted(self.slot_of.items())],
        }
        if six:
            out["flow_table6"] = ftab_report(v6.flows, now)
            out["reply_table6"] = ftab_report(v6.replies, now)
        return out

    def _backend_report(self, name, slot):
        cdef backend_t *be = &self.lb.be[slot]
        return {"name": name, "ip": str(ipaddress.IPv4Address(be.ip)) if be.has4 else None,
                "ip6": str(ipaddress.IPv6Address(bytes(be.ip6[:16]))) if be.has6 else None,
                "packets": be.packets, "flows": be.flows}

    def export_state(self):
        """The flow -> backend map, JSON-able: for moving this instance
        (import_state derives each flow's reply entry from it).  Call while
        the instance does not run (it is read without locks)."""
        entries, cursor = [], 0
        while cursor is not None:
            cursor, chunk = self.export_chunk(cursor, 0xffffffff)
            entries += chunk
        return self.state_of(entries)

    def export_chunk(self, cursor, unsigned count):
        """export_state in chunks (host_agent.replicas): (the next cursor,
        None at the end; [(family, key, cycles left, backend slot)]) of up
        to `count` flows from `cursor` (0: the first; the IPv4 table, then
        the IPv6 one from 1 << 32).  Call while the instance does not run;
        state_of() makes the state of the chunks."""
        cdef uint32_t c = cursor & 0xffffffff
        cdef bint done
        six = cursor >> 32
        if six and self.lb.v6.flows == NULL:
            return None, []
        raw = ftab_chunk(self.lb.v6.flows if six else self.lb.flows, &c, count,
                         rte_get_tsc_cycles(), &done)
        if six:
            out = [(6, key, left, self.lb.v6.flow_slot[pos]) for pos, key, left in raw
                   if self.lb.be[self.lb.v6.flow_slot[pos]].uid == self.lb.v6.flow_uid[pos]]
        else:
            out = [(4, key, left, self.lb.flow_slot[pos]) for pos, key, left in raw
                   if self.lb.be[self.lb.flow_slot[pos]].uid == self.lb.flow_uid[pos]]
        if done:
            return (None if six else 1 << 32), out
        return (six << 32) | c, out

    def state_of(self, entries):
        """The state (as export_state's) of export_chunk's entries."""
        hz = rte_get_tsc_hz()
        return {"nf": "lb", "version": 1, "flows": [
            {"key": key6_to_list(<const flow6_key_t *><const char *>key) if family == 6
             else key_to_list(<const onvm_flow_key *><const char *>key),
             "backend": self.names[slot], "ttl": left / hz}
            for family, key, left, slot in entries]}

    def import_state(self, state):
        """Take over flows exported by another instance; flows whose backend
        is not in this pool (or has no address of the flow's family) are
        skipped (they will be balanced anew).  Returns how many were taken.
        Call before the instance runs."""
        cdef onvm_flow_key k
        cdef flow6_key_t k6
        cdef int32_t pos
        cdef uint64_t now = rte_get_tsc_cycles(), hz = rte_get_tsc_hz(), expires
        cdef backend_t *be
        if not isinstance(state, dict) or state.get("nf") != "lb":
            raise NFConfigError("lb: import_state takes what lb's export_state returned")
        taken = 0
        for f in state.get("flows", []):
            slot = self.slot_of.get(f["backend"])
            if slot is None:
                continue
            be = &self.lb.be[<int>slot]
            expires = now + <uint64_t>(f["ttl"] * hz)
            if key_family(f["key"]) == 6:
                if not be.has6:
                    continue
                key6_from_list(f["key"], &k6)
                pos = ftab_insert(self.lb.v6.flows, &k6, expires, now)
                if pos < 0:
                    break
                self.lb.v6.flow_slot[pos] = slot
                self.lb.v6.flow_uid[pos] = be.uid
                remember_reply6(&self.lb.v6, &k6, be.ip6, expires, now)
            else:
                if not be.has4:
                    continue
                key_from_list(f["key"], &k)
                pos = ftab_insert(self.lb.flows, &k, expires, now)
                if pos < 0:
                    break
                self.lb.flow_slot[pos] = slot
                self.lb.flow_uid[pos] = be.uid
                remember_reply(&self.lb, &k, be.ip, expires, now)
            taken += 1
        log.info("lb: imported %d of %d flows", taken, len(state.get("flows", [])))
        return taken
