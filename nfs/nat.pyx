# cython: language_level=3
"""`nat`: stateful source NAT (NAPT) for IPv4, endpoint-independent
mapping: an internal (address, port) gets one external port per protocol,
used for every destination, until it is idle for the protocol's timeout.

Outbound packets (source in `internal`, destination not the external
address) get the external address and port; ICMP echo requests get an
external identifier in place of the port.  Inbound packets to the external
address find their mapping by (protocol, port) and get the internal address
and port back.  Checksums are fixed incrementally.  Inbound packets without
a live mapping are dropped and counted; anything else passes untouched.

Config (inline or a YAML `file`):

    external_ip: 198.51.100.1
    internal: 10.0.0.0/8
    port_range: [1024, 65535]   # the external ports this instance hands out
    slice: 3                    # optional: which slice of the cluster's range
                                # port_range is (each instance owns one)
    slices: 16                  # optional: into how many the catalog's
                                # range is cut (the controller's key)
    timeouts: {tcp: 7440, udp: 300, icmp: 60}   # seconds idle
    max_mappings: 65536

In a cluster every nat instance shares the external address and owns a
disjoint slice of the port range (the controller writes the slice as
its `port_range`), so no two instances hand out the same external port
and a reply's destination port names the instance that holds its
mapping.

Worker cores (host_agent.workers): each of a host's N workers has its own
object of the instance, and the instance's range is cut again among them
(nfs.configs.nat_worker_range; the host gives each object its `_worker`
[index, N], a key no catalog may set).  A worker hands out ports only
from its own share, so no two workers give two flows one port, and the
host steers every packet to or from the external address by its port to
the worker whose share holds it (host_agent/handoff.pxd), so a reply
meets its mapping.  The internal side is hashed as any flow, so a
mapping is endpoint-independent per worker: an internal endpoint whose
flows to two destinations hash to two workers has one external port on
each.  Imported mappings (a move, a replica) land whole in the worker
whose share holds their port; in each other worker too, as a `foreign`
copy that lets the flow's outgoing packets keep their port but is not
refreshed (it lapses at the ttl it came with, never after the owner's
copy: the owner, refreshed by replies, hands the port out again only
once every copy lapsed).  counters() and export_state() show a worker's
own mappings only, so the workers' union holds each mapping once.

Not handled: ICMP errors carrying an embedded header (dropped inbound,
counted as no_mapping), non-first fragments (dropped, counted).  The
mapping table moves with the instance: export_state() / import_state()."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from nflib.nf cimport (pkt_l4, rte_mbuf, onvm_meta_of, onvm_meta, onvm_mtod,
    onvm_flow_key, ONVM_ACTION_NEXT, ONVM_ACTION_DROP, rte_get_tsc_cycles,
    rte_get_tsc_hz, NativeNF, ftab_t, ftab_new, ftab_free, ftab_find, ftab_insert, ftab_report,
    rd16, rd32, set_ip, set_port, csum_fix16, wr16, proto_slot)

import ipaddress
import logging

from nfs.configs import NAT_PROTO_NAMES as PROTO_NAMES, parse_nat as parse_config
from nfs.configs import nat_worker_ports, nat_worker_range
from nflib.api import NFConfigError

log = logging.getLogger("onvm.nf.nat")

PROTO_NUMBERS = (6, 17, 1)


cdef struct port_t:
    uint32_t int_ip        # host order
    uint16_t int_port
    uint64_t expires       # TSC; free when <= now
    int32_t fpos           # its entry in the forward table


cdef struct pstats_t:
    uint64_t out, inb, allocated, exhausted, no_mapping


cdef struct nat_t:
    uint32_t ext_ip        # host order
    uint32_t int_net, int_mask
    uint16_t lo, hi        # the instance's port_range
    uint16_t wlo, whi      # this worker's share of it, the ports it hands out
    port_t *ports[3]       # per protocol, 65536 each
    uint16_t cursor[3]
    uint64_t timeout[3]
    ftab_t *fwd            # (proto, internal ip, port) -> position
    uint16_t *fwd_port     # position -> external port
    pstats_t st[3]
    uint64_t passed, fragments


cdef int allocate(nat_t *t, int pi, onvm_flow_key *k, uint32_t ip, uint16_t port,
                  uint64_t now) noexcept nogil:
    """A free external port for (ip, port), or -1 if the pool is used up."""
    cdef uint32_t span = <uint32_t>t.whi - t.wlo + 1, i
    cdef uint16_t p
    cdef int32_t pos
    cdef port_t *e
    for i in range(span):
        p = t.wlo + (t.cursor[pi] + i) % span
        e = &t.ports[pi][p]
        if e.expires > now:
            continue
        pos = ftab_insert(t.fwd, k, now + t.timeout[pi], now)
        if pos < 0:
            return -1
        t.cursor[pi] = (t.cursor[pi] + i + 1) % span
        e.int_ip = ip
        e.int_port = port
        e.expires = now + t.timeout[pi]
        e.fpos = pos
        t.fwd_port[pos] = p
        t.st[pi].allocated += 1
        return p
    return -1


cdef bint outbound(nat_t *t, uint8_t *d, uint32_t length, int l3, int l4, int pi,
                   uint64_t now) noexcept nogil:
    cdef onvm_flow_key k
    cdef uint32_t src = rd32(d + l3 + 12)
    cdef uint16_t port, ext
    cdef int32_t pos
    cdef int got
    if pi == 2:
        if d[l4] != 8:              # only echo requests open a mapping
            return True
        port = rd16(d + l4 + 4)
    else:
        port = rd16(d + l4)
    memset(&k, 0, sizeof(k))
    k.proto = d[l3 + 9]
    k.src = src
    k.sport = port
    pos = ftab_find(t.fwd, &k, now)
    if pos >= 0 and t.ports[pi][t.fwd_port[pos]].fpos == pos:
        ext = t.fwd_port[pos]
        if t.wlo <= ext <= t.whi:     # a foreign copy (import_state) is not refreshed
            t.fwd.expires[pos] = now + t.timeout[pi]
            t.ports[pi][ext].expires = now + t.timeout[pi]
    else:
        got = allocate(t, pi, &k, src, port, now)
        if got < 0:
            t.st[pi].exhausted += 1
            return False
        ext = <uint16_t>got
    set_ip(d, l3, l4, length, 12, t.ext_ip)
    if pi == 2:
        wr16(d + l4 + 4, ext)
        csum_fix16(d + l4 + 2, port, ext, False)
    else:
        set_port(d, l3, l4, length, 0, ext)
    t.st[pi].out += 1
    return True


cdef bint inbound(nat_t *t, uint8_t *d, uint32_t length, int l3, int l4, int pi,
                  uint64_t now) noexcept nogil:
    cdef uint16_t port
    cdef port_t *e
    if pi == 2:
        if d[l4] != 0:              # only echo replies have a mapping
            t.st[pi].no_mapping += 1
            return False
        port = rd16(d + l4 + 4)
    else:
        port = rd16(d + l4 + 2)
    e = &t.ports[pi][port]
    if e.expires <= now:
        t.st[pi].no_mapping += 1
        return False
    e.expires = now + t.timeout[pi]
    t.fwd.expires[e.fpos] = e.expires
    set_ip(d, l3, l4, length, 16, e.int_ip)
    if pi == 2:
        wr16(d + l4 + 4, e.int_port)
        csum_fix16(d + l4 + 2, port, e.int_port, False)
    else:
        set_port(d, l3, l4, length, 2, e.int_port)
    t.st[pi].inb += 1
    return True


cdef void nat_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    cdef nat_t *t = <nat_t *>ctx
    cdef uint64_t now = rte_get_tsc_cycles()
    cdef unsigned i
    cdef onvm_meta *meta
    cdef uint8_t *d
    cdef int l3, l4, pi
    cdef uint32_t length, src, dst
    cdef bint ok
    for i in range(n):
        meta = onvm_meta_of(pkts[i])
        meta.action = ONVM_ACTION_NEXT
        if meta.key.family != 4:
            t.passed += 1
            continue
        d = onvm_mtod(pkts[i])
        length = pkts[i].data_len
        l3 = meta.l3_off
        src = rd32(d + l3 + 12)
        dst = rd32(d + l3 + 16)
        pi = proto_slot(meta.key.proto, -1)
        if dst == t.ext_ip:
            direction = 1
        elif (src & t.int_mask) == t.int_net:
            direction = 0
        else:
            t.passed += 1
            continue
        l4 = pkt_l4(meta)
        if pi < 0 or l4 < 0 or length < <uint32_t>l4 + 8:
            # No port to map by: a non-first fragment or another protocol.
            t.fragments += 1
            meta.action = ONVM_ACTION_DROP
            continue
        if direction:
            ok = inbound(t, d, length, l3, l4, pi, now)
        else:
            ok = outbound(t, d, length, l3, l4, pi, now)
        if not ok:
            meta.action = ONVM_ACTION_DROP


cdef class NAT(NativeNF):
    cdef nat_t t
    cdef readonly dict config
    cdef readonly tuple worker     # (index, count) of the host's workers
    IMPORTS_BY_SHARE = True        # each worker imports the mappings of its ports (WorkerNFs)

    def __cinit__(self, config=None):
        memset(&self.t, 0, sizeof(nat_t))

    def __init__(self, config=None):
        config = dict(config or {})
        worker, workers = config.pop("_worker", (0, 1))
        v = self.config = parse_config(config)
        net = ipaddress.IPv4Network(v["internal"])
        self.t.ext_ip = int(ipaddress.IPv4Address(v["external_ip"]))
        self.t.int_net = int(net.network_address)
        self.t.int_mask = int(net.netmask)
        self.t.lo, self.t.hi = v["port_range"]
        if nat_worker_ports(v["port_range"], workers) < 1:
            raise NFConfigError(f"nat: port_range {v['port_range']} has fewer ports than "
                                f"the host's {workers} workers")
        self.t.wlo, self.t.whi = nat_worker_range(v["port_range"], workers, worker)
        self.worker = (worker, workers)
        hz = rte_get_tsc_hz()
        for pi, name in enumerate(PROTO_NAMES):
            self.t.timeout[pi] = <uint64_t>(v["timeouts"][name] * hz)
            self.t.ports[pi] = <port_t *>calloc(65536, sizeof(port_t))
            if self.t.ports[pi] == NULL:
                raise MemoryError()
        self.t.fwd = ftab_new("nat", v["max_mappings"], sizeof(onvm_flow_key))
        self.t.fwd_port = <uint16_t *>calloc(v["max_mappings"] + 1, sizeof(uint16_t))
        if self.t.fwd_port == NULL:
            raise MemoryError()
        self.handlers.batch = nat_batch
        self.handlers.ctx = <void *>&self.t
        if v["slice"] is not None:
            log.info("nat: external %s, slice %d: ports %d-%d", v["external_ip"], v["slice"],
                     self.t.lo, self.t.hi)

    def __dealloc__(self):
        for pi in range(3):
            free(self.t.ports[pi])
        ftab_free(self.t.fwd)
        free(self.t.fwd_port)

    @property
    def worker_ports(self):
        """[lo, hi]: the ports this object hands out (its worker's share)."""
        return [self.t.wlo, self.t.whi]

    def _live(self):
        """[(proto index, external port, internal ip, internal port, seconds left)]."""
        hz = rte_get_tsc_hz()
        return [(pi, p, ip, port, left / hz) for pi, p, ip, port, left
                in self.export_chunk(0, 0xffffffff)[1]]

    def export_chunk(self, cursor, unsigned count):
        """export_state in chunks (host_agent.replicas): (the next cursor,
        None at the end; [(proto index, external port, internal ip, internal
        port, cycles left)]) of the live mappings among `count` ports from
        `cursor` (0: the first) of this worker's share (foreign copies are
        their owner's to export).  Call while the instance does not run;
        state_of() makes the state of the chunks."""
        cdef uint64_t now = rte_get_tsc_cycles()
        cdef uint64_t span = <uint64_t>self.t.whi - self.t.wlo + 1
        cdef uint64_t i, end = min(<uint64_t>cursor + count, 3 * span)
        cdef uint32_t p
        cdef unsigned pi
        cdef port_t *e
        out = []
        for i in range(<uint64_t>cursor, end):
            pi = i // span
            if self.t.ports[pi] == NULL:
                continue
            p = self.t.wlo + i % span
            e = &self.t.ports[pi][p]
            if e.expires > now:
                out.append((pi, p, e.int_ip, e.int_port, e.expires - now))
        return (None if end >= 3 * span else end), out

    def counters(self):
        live = self._live()
        pool = self.t.whi - self.t.wlo + 1
        out = {"passed": self.t.passed, "fragments_dropped": self.t.fragments,
               "port_range": [self.t.lo, self.t.hi], "slice": self.config["slice"]}
        for pi, name in enumerate(PROTO_NAMES):
            st = self.t.st[pi]
            used = sum(1 for m in live if m[0] == pi)
            # pool: this worker's share; use: of the instance's pool, so the
            # workers' counters add up (host_agent.workers sums them)
            out[name] = {"mappings": used, "pool": pool,
                         "use": round(used / (pool * self.worker[1]), 6),
                         "allocated": st["allocated"], "out": st["out"], "in": st["inb"],
                         "no_mapping": st["no_mapping"], "exhausted": st["exhausted"]}
        out["table_full"] = self.t.fwd.full
        out["flow_table"] = ftab_report(self.t.fwd, rte_get_tsc_cycles())
        return out

    def export_state(self):
        """The live mappings, JSON-able, for moving this instance (call while
        it does not run)."""
        return self.state_of(self.export_chunk(0, 0xffffffff)[1])

    def state_of(self, entries):
        """The state (as export_state's) of export_chunk's entries."""
        hz = rte_get_tsc_hz()
        return {"nf": "nat", "version": 1, "external_ip": self.config["external_ip"],
                "mappings": [{"proto": PROTO_NAMES[pi], "external_port": p,
                              "internal": [str(ipaddress.IPv4Address(ip)), port],
                              "ttl": left / hz}
                             for pi, p, ip, port, left in entries]}

    def import_state(self, state):
        """Install mappings exported by another instance with the same
        external address; returns how many this worker owns (all, with one
        worker).  A mapping whose port is another worker's share comes in
        as a foreign copy (see the module's docstring), unless this worker
        has a mapping of that internal endpoint already.  Call before the
        instance runs."""
        if not isinstance(state, dict) or state.get("nf") != "nat":
            raise NFConfigError("nat: import_state takes what nat's export_state returned")
        if state["external_ip"] != self.config["external_ip"]:
            raise NFConfigError(f"nat: state is for external address {state['external_ip']}, "
                                f"this instance has {self.config['external_ip']}: its flows would break")
        for m in state["mappings"]:
            if not self.t.lo <= m["external_port"] <= self.t.hi:
                raise NFConfigError(f"nat: mapping port {m['external_port']} is outside this "
                                    f"instance's port_range [{self.t.lo}, {self.t.hi}]")
        own = [m for m in state["mappings"] if self.t.wlo <= m["external_port"] <= self.t.whi]
        n = self._install(own, False)
        foreign = self._install([m for m in state["mappings"]
                                 if not self.t.wlo <= m["external_port"] <= self.t.whi], True)
        log.info("nat: imported %d of %d mappings (%d as foreign copies)", n,
                 len(state["mappings"]), foreign)
        return n

    def _install(self, mappings, bint foreign):
        """Put `mappings` (export_state's) into the tables; a foreign one
        only where the internal endpoint has none.  Returns how many."""
        cdef onvm_flow_key k
        cdef int32_t pos
        cdef port_t *e
        cdef uint64_t now = rte_get_tsc_cycles(), hz = rte_get_tsc_hz()
        n = 0
        for m in mappings:
            pi = PROTO_NAMES.index(m["proto"])
            p = m["external_port"]
            ip = int(ipaddress.IPv4Address(m["internal"][0]))
            memset(&k, 0, sizeof(k))
            k.proto = PROTO_NUMBERS[pi]
            k.src = ip
            k.sport = m["internal"][1]
            if foreign and ftab_find(self.t.fwd, &k, now) >= 0:
                continue
            exp = now + <uint64_t>(m["ttl"] * hz)
            pos = ftab_insert(self.t.fwd, &k, exp, now)
            if pos < 0:
                break
            e = &self.t.ports[pi][p]
            e.int_ip, e.int_port, e.expires, e.fpos = ip, m["internal"][1], exp, pos
            self.t.fwd_port[pos] = p
            n += 1
        return n
