# cython: language_level=3
"""`lb`: a layer-4 load balancer with Maglev hashing (Eisenbud et al.,
NSDI 2016) over a pool of backends.

A new flow (5-tuple) gets the backend of its hash's entry in the Maglev
lookup table (size prime, default 65537) and keeps it in a connection
table, so it stays on its backend while backends come and go; only the
flows of a removed backend move (and Maglev moves few others' *new* flows).
Each packet's destination MAC and IPv4 address are rewritten to the
backend's, with the IPv4 and TCP/UDP checksums fixed incrementally.

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
    vip: 10.0.1.10            # optional: only packets to it are balanced
    backends:                 # the pool at start; add/remove at run time
      - {name: web1, ip: 10.0.2.1, mac: "02:00:00:00:02:01"}
    table_size: 65537         # prime, larger than 100 x the backends
    out_port: 1               # optional: send the packet out of this port
                              # (verdict OUT, so the backend MAC is kept);
                              # without it the chain goes on (NEXT)
    flow_timeout: 300         # seconds an idle flow keeps its backend
    max_flows: 65536

The flow -> backend map moves with the instance: export_state() and
import_state(); import installs both directions of each flow."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, intptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from nflib.nf cimport (onvm_load_ptr, onvm_store_ptr, pkt_l4, rte_mbuf,
    onvm_meta_of, onvm_meta, onvm_mtod, onvm_flow_key, ONVM_ACTION_NEXT,
    ONVM_ACTION_DROP, ONVM_ACTION_OUT, rte_get_tsc_cycles, rte_get_tsc_hz,
    NativeNF, ftab_t, ftab_new, ftab_free, ftab_find, ftab_insert,
    ftab_live, ftab_report, set_ip, set_port, rd16, rd32, wr32)
from nflib.nf cimport ftab_chunk
from nfs.pkttuple cimport packet_key, reverse_key, key_from_list, key_to_list

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
    uint8_t mac[6]
    uint32_t uid           # 0: free slot; never reused, so a flow can tell
    uint64_t packets
    uint64_t flows


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
    uint64_t balanced, not_vip, not_ipv4, no_backend, moved, untracked
    uint64_t replies_rewritten, replies_untracked


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


cdef void lb_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    cdef lb_t *lb = <lb_t *>ctx
    cdef uint16_t *table = <uint16_t *>onvm_load_ptr(&lb.table)
    cdef uint64_t now = rte_get_tsc_cycles()
    cdef unsigned i
    cdef onvm_meta *meta
    cdef int32_t pos
    cdef uint16_t slot
    cdef backend_t *be
    cdef uint8_t *d
    cdef onvm_flow_key k
    for i in range(n):
        meta = onvm_meta_of(pkts[i])
        meta.action = ONVM_ACTION_NEXT
        if meta.key.family != 4:
            lb.not_ipv4 += 1
            continue
        packet_key(pkts[i], meta, &k)
        if rewrite_reply(lb, pkts[i], meta, &k, now):
            continue
        if lb.has_vip and k.dst != lb.vip:
            lb.not_vip += 1
            continue
        pos = ftab_find(lb.flows, &k, now)
        if pos >= 0 and lb.be[lb.flow_slot[pos]].uid == lb.flow_uid[pos]:
            slot = lb.flow_slot[pos]
            lb.flows.expires[pos] = now + lb.timeout
        else:
            if table == NULL:
                lb.no_backend += 1
                meta.action = ONVM_ACTION_DROP
                continue
            slot = table[meta.flow_hash % lb.m]
            if pos >= 0:
                lb.moved += 1     # its backend was removed
            else:
                pos = ftab_insert(lb.flows, &k, now + lb.timeout, now)
            if pos >= 0:
                lb.flow_slot[pos] = slot
                lb.flow_uid[pos] = lb.be[slot].uid
                lb.be[slot].flows += 1
            else:
                lb.untracked += 1   # table full: Maglev alone decides
        be = &lb.be[slot]
        be.packets += 1
        lb.balanced += 1
        d = onvm_mtod(pkts[i])
        memcpy(d, be.mac, 6)
        set_ip(d, meta.l3_off, pkt_l4(meta),
               pkts[i].data_len, 16, be.ip)
        remember_reply(lb, &k, be.ip, now + lb.timeout, now)
        if lb.out:
            meta.action = ONVM_ACTION_OUT
            meta.destination = lb.out_port


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
        self.lb.table = NULL
        self.lb.flows = NULL
        self.lb.replies = NULL

    def __init__(self, config=None):
        v, backends = parse_config(config)
        self.lb.m = v["table_size"]
        self.lb.timeout = <uint64_t>(v["flow_timeout"] * rte_get_tsc_hz())
        if v["vip"] is not None:
            self.lb.has_vip = 1
            self.lb.vip = int.from_bytes(ipaddress.IPv4Address(v["vip"]).packed, "little")
        if v["out_port"] is not None:
            self.lb.out = 1
            self.lb.out_port = v["out_port"]
        self.lb.flows = ftab_new("lb", v["max_flows"], sizeof(onvm_flow_key))
        self.lb.flow_slot = <uint16_t *>calloc(v["max_flows"] + 1, sizeof(uint16_t))
        self.lb.flow_uid = <uint32_t *>calloc(v["max_flows"] + 1, sizeof(uint32_t))
        self.lb.replies = ftab_new("lb-replies", v["max_flows"], sizeof(onvm_flow_key))
        self.lb.reply_addr = <uint32_t *>calloc(v["max_flows"] + 1, sizeof(uint32_t))
        self.lb.reply_port = <uint16_t *>calloc(v["max_flows"] + 1, sizeof(uint16_t))
        if (self.lb.flow_slot == NULL or self.lb.flow_uid == NULL
                or self.lb.reply_addr == NULL or self.lb.reply_port == NULL):
            raise MemoryError()
        self.slot_of, self.names, self.retired = {}, [None] * MAX_BACKENDS, []
        self.next_uid = 1
        for name, ip, mac in backends:
            self._place(name, ip, mac)
        self._rebuild()
        self.handlers.batch = lb_batch
        self.handlers.ctx = <void *>&self.lb

    def __dealloc__(self):
        self._free_retired()
        free(self.lb.table)
        ftab_free(self.lb.flows)
        free(self.lb.flow_slot)
        free(self.lb.flow_uid)
        ftab_free(self.lb.replies)
        free(self.lb.reply_addr)
        free(self.lb.reply_port)

    def _place(self, name, ip, mac):
        cdef backend_t *be
        slot = self.names.index(None) if None in self.names else -1
        if slot < 0:
            raise NFConfigError(f"lb: at most {MAX_BACKENDS} backends")
        be = &self.lb.be[slot]
        memset(be, 0, sizeof(backend_t))
        be.ip = int(ipaddress.IPv4Address(ip))
        for i in range(6):
            be.mac[i] = mac[i]
        be.uid = self.next_uid
        self.next_uid += 1
        self.names[slot] = name
        self.slot_of[name] = slot

    def _rebuild(self):
        cdef uint16_t *new = NULL
        live = sorted((name, slot) for name, slot in self.slot_of.items())
        if live:
            new = maglev_table([(slot, name) for name, slot in live], self.lb.m)
        self._free_retired()
        old = <intptr_t>onvm_load_ptr(&self.lb.table)
        onvm_store_ptr(&self.lb.table, <void *>new)
        if old:
            # The loop may be in a batch on it: free at the next change.
            self.retired.append(old)
        log.info("lb: Maglev table of %d entries over %d backends: %s",
                 self.lb.m, len(live), ", ".join(n for n, _ in live) or "none")

    def _free_retired(self):
        for p in self.retired or ():
            free(<void *><intptr_t>p)
        self.retired = []

    def add_backend(self, name, ip, mac):
        """Add a backend at run time; flows in progress keep theirs."""
        if name in self.slot_of:
            raise NFConfigError(f"lb: backend {name!r} is already in the pool")
        self._place(name, nfconfig.ipv4(ip), nfconfig.mac(mac))
        self._rebuild()

    def remove_backend(self, name):
        """Remove a backend; its flows move to others at their next packet."""
        if name not in self.slot_of:
            raise NFConfigError(f"lb: no backend {name!r}; pool: {', '.join(sorted(self.slot_of))}")
        slot = self.slot_of.pop(name)
        self._rebuild()
        self.lb.be[slot].uid = 0
        self.names[slot] = None

    def backends(self):
        return sorted(self.slot_of)

    def counters(self):
        cdef uint64_t now = rte_get_tsc_cycles()
        return {
            "balanced": self.lb.balanced, "not_vip": self.lb.not_vip,
            "not_ipv4": self.lb.not_ipv4, "no_backend": self.lb.no_backend,
            "moved": self.lb.moved, "untracked": self.lb.untracked,
            "flows": ftab_live(self.lb.flows, now), "flow_table_full": self.lb.flows.full,
            "replies": self.lb.replies_rewritten, "reply_flows": ftab_live(self.lb.replies, now),
            "replies_untracked": self.lb.replies_untracked,
            "flow_table": ftab_report(self.lb.flows, now),
            "reply_table": ftab_report(self.lb.replies, now),
            "backends": [{"name": name, "ip": str(ipaddress.IPv4Address(self.lb.be[slot].ip)),
                          "packets": self.lb.be[slot].packets, "flows": self.lb.be[slot].flows}
                         for name, slot in sorted(self.slot_of.items())],
        }

    def export_state(self):
        """The flow -> backend map, JSON-able: for moving this instance
        (import_state derives each flow's reply entry from it).  Call while
        the instance does not run (it is read without locks)."""
        return self.state_of(self.export_chunk(0, 0xffffffff)[1])

    def export_chunk(self, cursor, unsigned count):
        """export_state in chunks (host_agent.replicas): (the next cursor,
        None at the table's end; [(key, cycles left, backend slot)]) of up
        to `count` flows from `cursor` (0: the first).  Call while the
        instance does not run; state_of() makes the state of the chunks."""
        cdef uint32_t c = cursor
        cdef bint done
        raw = ftab_chunk(self.lb.flows, &c, count, rte_get_tsc_cycles(), &done)
        out = [(key, left, self.lb.flow_slot[pos]) for pos, key, left in raw
               if self.lb.be[self.lb.flow_slot[pos]].uid == self.lb.flow_uid[pos]]
        return (None if done else c), out

    def state_of(self, entries):
        """The state (as export_state's) of export_chunk's entries."""
        hz = rte_get_tsc_hz()
        return {"nf": "lb", "version": 1, "flows": [
            {"key": key_to_list(<const onvm_flow_key *><const char *>key),
             "backend": self.names[slot], "ttl": left / hz} for key, left, slot in entries]}

    def import_state(self, state):
        """Take over flows exported by another instance; flows whose backend
        is not in this pool are skipped (they will be balanced anew).
        Returns how many were taken.  Call before the instance runs."""
        cdef onvm_flow_key k
        cdef int32_t pos
        cdef uint64_t now = rte_get_tsc_cycles(), hz = rte_get_tsc_hz()
        if not isinstance(state, dict) or state.get("nf") != "lb":
            raise NFConfigError("lb: import_state takes what lb's export_state returned")
        taken = 0
        for f in state.get("flows", []):
            slot = self.slot_of.get(f["backend"])
            if slot is None:
                continue
            key_from_list(f["key"], &k)
            pos = ftab_insert(self.lb.flows, &k, now + <uint64_t>(f["ttl"] * hz), now)
            if pos < 0:
                break
            self.lb.flow_slot[pos] = slot
            self.lb.flow_uid[pos] = self.lb.be[slot].uid
            remember_reply(&self.lb, &k, self.lb.be[slot].ip, self.lb.flows.expires[pos], now)
            taken += 1
        log.info("lb: imported %d of %d flows", taken, len(state.get("flows", [])))
        return taken
