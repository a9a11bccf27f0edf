# cython: language_level=3
"""`lb`: a layer-4 load balancer with Maglev hashing (Eisenbud et al.,
NSDI 2016) over a pool of backends.

A new flow (5-tuple) gets the backend of its hash's entry in the Maglev
lookup table (size prime, default 65537) and keeps it in a connection
table, so it stays on its backend while backends come and go; only the
flows of a removed backend move (and Maglev moves few others' *new* flows).
Each packet's destination MAC and IPv4 address are rewritten to the
backend's, with the IPv4 and TCP/UDP checksums fixed incrementally.

Config (inline or a YAML `file`, see nfs/nfconfig.py):

    vip: 10.0.1.10            # optional: only packets to it are balanced
    backends:                 # the pool at start; add/remove at run time
      - {name: web1, ip: 10.0.2.1, mac: "02:00:00:00:02:01"}
    table_size: 65537         # prime, larger than 100 x the backends
    out_port: 1               # optional: send the packet out of this port
                              # (verdict OUT, so the backend MAC is kept);
                              # without it the chain goes on (NEXT)
    flow_timeout: 300         # seconds an idle flow keeps its backend
    max_flows: 65536

Replies from backends are not rewritten back to the VIP (no reverse NAT):
put `nat` after it or run backends with the VIP on a loopback (DSR).
The flow -> backend map moves with the instance: export_state() and
import_state()."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, intptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from nflib.nf cimport (onvm_load_ptr, onvm_store_ptr, pkt_l4, rte_mbuf,
    onvm_meta_of, onvm_meta, onvm_mtod, onvm_flow_key, ONVM_ACTION_NEXT,
    ONVM_ACTION_DROP, ONVM_ACTION_OUT, rte_get_tsc_cycles, rte_get_tsc_hz,
    rte_hash_iterate, NativeNF, ftab_t, ftab_new, ftab_free, ftab_find, ftab_insert,
    ftab_live, set_ip)

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
    uint32_t vip           # network order
    uint8_t has_vip
    uint8_t out
    uint16_t out_port
    uint64_t timeout
    uint64_t balanced, not_vip, not_ipv4, no_backend, moved, untracked


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
    for i in range(n):
        meta = onvm_meta_of(pkts[i])
        meta.action = ONVM_ACTION_NEXT
        if meta.key.family != 4:
            lb.not_ipv4 += 1
            continue
        if lb.has_vip and meta.key.dst != lb.vip:
            lb.not_vip += 1
            continue
        pos = ftab_find(lb.flows, &meta.key, now)
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
                pos = ftab_insert(lb.flows, &meta.key, now + lb.timeout, now)
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
        if self.lb.flow_slot == NULL or self.lb.flow_uid == NULL:
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
            "backends": [{"name": name, "ip": str(ipaddress.IPv4Address(self.lb.be[slot].ip)),
                          "packets": self.lb.be[slot].packets, "flows": self.lb.be[slot].flows}
                         for name, slot in sorted(self.slot_of.items())],
        }

    def export_state(self):
        """The flow -> backend map, JSON-able: for moving this instance.
        Call while the instance does not run (it is read without locks)."""
        cdef const void *key
        cdef void *data
        cdef uint32_t nxt = 0
        cdef int32_t pos
        cdef uint64_t now = rte_get_tsc_cycles(), hz = rte_get_tsc_hz()
        cdef const onvm_flow_key *k
        flows = []
        while True:
            pos = rte_hash_iterate(self.lb.flows.h, &key, &data, &nxt)
            if pos < 0:
                break
            slot = self.lb.flow_slot[pos]
            if self.lb.flows.expires[pos] <= now or self.lb.be[slot].uid != self.lb.flow_uid[pos]:
                continue
            k = <const onvm_flow_key *>key
            flows.append({"key": _key_out(k), "backend": self.names[slot],
                          "ttl": (self.lb.flows.expires[pos] - now) / hz})
        return {"nf": "lb", "version": 1, "flows": flows}

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
            _key_in(f["key"], &k)
            pos = ftab_insert(self.lb.flows, &k, now + <uint64_t>(f["ttl"] * hz), now)
            if pos < 0:
                break
            self.lb.flow_slot[pos] = slot
            self.lb.flow_uid[pos] = self.lb.be[slot].uid
            taken += 1
        log.info("lb: imported %d of %d flows", taken, len(state.get("flows", [])))
        return taken


def _key_out_py(proto, family, src, dst, sport, dport):
    return [proto, str(ipaddress.IPv4Address(src.to_bytes(4, "little"))),
            str(ipaddress.IPv4Address(dst.to_bytes(4, "little"))),
            int.from_bytes(sport.to_bytes(2, "little"), "big"),
            int.from_bytes(dport.to_bytes(2, "little"), "big")]


cdef object _key_out(const onvm_flow_key *k):
    """A flow key (network order) as [proto, src, dst, sport, dport]."""
    return _key_out_py(k.proto, k.family, k.src, k.dst, k.sport, k.dport)


cdef void _key_in(object key, onvm_flow_key *k) except *:
    proto, src, dst, sport, dport = key
    memset(k, 0, sizeof(onvm_flow_key))
    k.proto = proto
    k.family = 4
    k.src = int.from_bytes(ipaddress.IPv4Address(src).packed, "little")
    k.dst = int.from_bytes(ipaddress.IPv4Address(dst).packed, "little")
    k.sport = int.from_bytes(int(sport).to_bytes(2, "big"), "little")
    k.dport = int.from_bytes(int(dport).to_bytes(2, "big"), "little")
