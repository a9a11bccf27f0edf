# cython: language_level=3
"""The host's fast path: DPDK ports, a packet pool, the manager loop that
hands packets to local NF instances without copying, and the tables a plan
compiles into.

What it does per burst of 32 (no Python on this path, the GIL released):
read the frame, strip the SFC label stack of DESIGN.md (transport, SPI, SI)
or classify an untagged packet through the flow table (rte_hash on the
5-tuple, backed by an rte_acl classifier), then follow the chain's hops: a
local instance (inline: its batch function is called in this loop; process:
its rte_ring), a remote host (labels pushed, one host per flow by weighted
consistent hashing), or the end of the chain (sent out of the egress port).

What it is not: the plan's checker (`contracts.plan`), the compiler from a
plan to tables (`Manager.apply_plan` takes the checked dict), or the agent
that talks to the store (`host_agent.agent`).
"""
cimport cython
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_WRITE
from cpython.ref cimport PyObject
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport (uint8_t, uint16_t, uint32_t, int16_t, int32_t,
                          uint64_t, intptr_t)
from libc.string cimport memcpy, memmove, memset
from libc.stdlib cimport malloc, calloc, free


cdef extern from "sched.h" nogil:
    int sched_yield()

cdef extern from "unistd.h" nogil:
    int usleep(unsigned usec)

from dpdk.rte_eal cimport *
from dpdk.rte_mbuf cimport *
from dpdk.rte_ring cimport *
from dpdk.rte_ethdev cimport *
from dpdk.rte_hash cimport *
from dpdk.rte_acl cimport *
from nflib.eal cimport packet_pool, new_hash
from nflib.nf cimport (NativeNF, Acl, nf_batch_fn, bind_nf, rd16, rd32, wr32,
                       bswap16, bswap32)

import ipaddress
import logging
import os
import threading
import time

from contracts.wire import SI_FIRST
from nflib.eal import (FastPathError, dpdk_error, eal_init, eal_cleanup,  # noqa: F401
                       eal_running, default_eal_args, hugepages_available,
                       remove_runtime_files, pool_counts)
from nflib.nf import (DROP, NEXT, TONF, OUT, ring_names, serve_nf,  # noqa: F401
                      stop_serving)

log = logging.getLogger("onvm.fastpath")

cdef extern from "shim.h" nogil:
    void *onvm_load_ptr(void **p)
    void onvm_store_ptr(void **p, void *v)
    uint64_t onvm_load_u64(uint64_t *p)
    void onvm_store_u64(uint64_t *p, uint64_t v)
    int ONVM_META_SIZE "sizeof(struct onvm_meta)"
    int ONVM_KEY_SIZE "sizeof(struct onvm_flow_key)"

DEF BURST = 32
DEF MAX_PORTS = 16
DEF MAX_INSTANCES = 64
DEF SLOTS = 256            # consistent-hash slots per remote hop
DEF MAX_NF_HOPS = 64       # NFs one packet may visit on this host
DEF ETH_MPLS = 0x8847
DEF ETH_MPLS_MC = 0x8848
DEF ETH_IPV4 = 0x0800
DEF ETH_IPV6 = 0x86DD
DEF ETH_VLAN = 0x8100

# Why a packet was dropped: every drop is counted under one of these.
DROP_REASONS = (
    "truncated",        # frame shorter than its headers say
    "not_ip",           # neither IPv4 nor IPv6 (after any label stack)
    "bad_label_stack",  # not exactly transport/SPI/SI with S only on SI
    "ttl_zero",         # a label with TTL 0
    "wrong_node",       # transport label is not this host's node label
    "unknown_hop",      # no hop for (SPI, SI) in the plan
    "no_chain",         # untagged packet no classifier matched
    "nf_drop",          # an NF's verdict
    "ring_full",        # an NF process's ring was full
    "tx_full",          # a port did not take the packet
    "loop",             # visited more than 64 NFs on this host
    "bad_port",         # verdict OUT to a port that does not exist
    "no_plan",          # no plan applied yet
)
cdef enum:
    R_TRUNCATED, R_NOT_IP, R_BAD_LABELS, R_TTL, R_WRONG_NODE, R_UNKNOWN_HOP,
    R_NO_CHAIN, R_NF_DROP, R_RING_FULL, R_TX_FULL, R_LOOP, R_BAD_PORT,
    R_NO_PLAN, N_REASONS

cdef enum:
    HOP_LOCAL = 1
    HOP_REMOTE = 2
    HOP_END = 3

cdef enum:
    MODE_INLINE = 1
    MODE_PROCESS = 2


cdef struct hop_t:
    uint32_t spi
    uint8_t si
    uint8_t kind
    uint16_t slot          # instance slot (HOP_LOCAL)
    int32_t next           # hop index of (spi, si - 1), -1 if none
    uint32_t remote_off    # first of SLOTS entries in tables.remote (HOP_REMOTE)
    uint16_t port          # HOP_END
    uint8_t dst_mac[6]     # HOP_END


cdef struct peer_t:
    uint32_t label
    uint8_t mac[6]


cdef struct inst_stats_t:
    uint64_t rx
    uint64_t tx
    uint64_t drops
    uint64_t ring_full


cdef struct inst_t:
    uint16_t id
    uint8_t mode
    nf_batch_fn fn
    void *ctx
    rte_ring *to_nf
    rte_ring *from_nf
    inst_stats_t *stats


cdef struct tables_t:
    uint64_t generation
    uint32_t node_label
    uint8_t mac[6]
    uint16_t uplink
    rte_hash *hop_index        # (spi << 8 | si) -> hop index
    hop_t *hops
    uint32_t nhops
    uint16_t *remote           # peer index per slot
    peer_t *peers
    int32_t *flow_hop          # per flow-table position: first hop, -1 none, -2 unknown
    rte_acl_ctx *classifier    # userdata = hop index + 1
    int32_t *class_hop         # classifier rule -> hop index
    inst_t instances[MAX_INSTANCES]
    uint16_t ninstances
    int16_t slot_of_id[65536]  # instance id -> slot, -1 if not here


cdef struct port_stats_t:
    uint64_t rx
    uint64_t tx
    uint64_t tx_full


cdef inline uint64_t hop_key(uint32_t spi, uint8_t si) noexcept nogil:
    return (<uint64_t>spi << 8) | si



def probe_port(devargs):
    """Add a vdev port at run time (e.g. "net_pcap9,tx_pcap=/tmp/x.pcap");
    returns its port id."""
    cdef uint16_t port_id
    if rte_dev_probe(devargs.encode()) < 0:
        raise dpdk_error(f"rte_dev_probe({devargs})")
    name = devargs.split(",")[0]
    if rte_eth_dev_get_port_by_name(name.encode(), &port_id) != 0:
        raise FastPathError(f"port {name} not found after probe")
    return port_id


def ring_port(name, count=8192):
    """A port in memory: rx and tx on the same rte_ring, so what is sent
    comes back.  For benchmarks; returns (port id, Ring)."""
    cdef rte_ring *r = rte_ring_create(name.encode(), count, rte_socket_id(),
                                       RING_F_SP_ENQ | RING_F_SC_DEQ)
    if r == NULL:
        raise dpdk_error(f"rte_ring_create({name})")
    port = rte_eth_from_rings(("net_" + name).encode(), &r, 1, &r, 1,
                              rte_socket_id())
    if port < 0:
        raise dpdk_error(f"rte_eth_from_rings({name})")
    ring = Ring()
    ring.r = r
    return port, ring


def ring_pair_port(name, count=8192):
    """A port in memory with separate rx and tx rings: what a test puts in
    `rx` arrives on the port, what the port sends lands in `tx`.
    Returns (port id, rx Ring, tx Ring)."""
    cdef rte_ring *rx = rte_ring_create((name + "_rx").encode(), count,
                                        rte_socket_id(), RING_F_SP_ENQ | RING_F_SC_DEQ)
    cdef rte_ring *tx = rte_ring_create((name + "_tx").encode(), count,
                                        rte_socket_id(), RING_F_SP_ENQ | RING_F_SC_DEQ)
    if rx == NULL or tx == NULL:
        raise dpdk_error(f"rte_ring_create({name})")
    port = rte_eth_from_rings(("net_" + name).encode(), &rx, 1, &tx, 1,
                              rte_socket_id())
    if port < 0:
        raise dpdk_error(f"rte_eth_from_rings({name})")
    rxr, txr = Ring(), Ring()
    rxr.r = rx
    txr.r = tx
    return port, rxr, txr


cdef class Ring:
    """A handle on an rte_ring, for tests and benchmarks."""
    cdef rte_ring *r

    def __len__(self):
        return rte_ring_count(self.r)

    def fill(self, frames, unsigned count):
        """Put `count` packets in the ring, cycling through `frames` (bytes)."""
        cdef rte_mbuf *m
        cdef unsigned i, done = 0
        cdef bytes f
        frames = list(frames)
        for i in range(count):
            f = frames[i % len(frames)]
            m = rte_pktmbuf_alloc(packet_pool())
            if m == NULL:
                break
            memcpy(rte_pktmbuf_append(m, len(f)), <const char *>f, len(f))
            if rte_ring_enqueue_burst(self.r, <void **>&m, 1, NULL) != 1:
                rte_pktmbuf_free(m)
                break
            done += 1
        return done

    def drain(self, keep=False):
        """Take every packet out; returns their bytes if keep, else the count."""
        cdef rte_mbuf *m
        out = []
        n = 0
        while rte_ring_dequeue_burst(self.r, <void **>&m, 1, NULL) == 1:
            if keep:
                out.append((<char *>onvm_mtod(m))[:m.data_len])
            rte_pktmbuf_free(m)
            n += 1
        return out if keep else n


def match_to_acl_rule(match):
    """An OpenFlow-style chain match (see contracts.plan) as an Acl rule."""
    proto = match.get("ip_proto")
    sport = match.get("tcp_src", match.get("udp_src"))
    dport = match.get("tcp_dst", match.get("udp_dst"))
    if proto is None and ("tcp_src" in match or "tcp_dst" in match):
        proto = 6
    if proto is None and ("udp_src" in match or "udp_dst" in match):
        proto = 17
    return (proto, match.get("ipv4_src"), match.get("ipv4_dst"),
            (sport, sport) if sport is not None else (0, 65535),
            (dport, dport) if dport is not None else (0, 65535))


# ----------------------------------------------------------------- Manager



@cython.final
cdef class Manager:
    """One host's fast path: ports, flow table, the tables of the plan it
    runs, and the loop.  Create after eal_init; call apply_plan, then run
    (from a thread: it releases the GIL)."""
    cdef void *cur                          # tables_t *, swapped atomically
    cdef uint64_t epoch                     # bumped once per loop iteration
    cdef uint64_t stop_flag
    cdef rte_hash *flows
    cdef uint16_t nports
    cdef uint16_t ports[MAX_PORTS]
    cdef port_stats_t port_stats[MAX_PORTS]
    cdef rte_mbuf *tx[MAX_PORTS][BURST * 2]   # used by the loop only
    cdef uint16_t ntx[MAX_PORTS]
    cdef uint64_t drops[N_REASONS]
    cdef uint64_t processed
    cdef uint64_t flow_table_full
    cdef public bint running
    cdef object _instances                  # id -> (nf type, config, nf object, stats ptr)
    cdef object _retired
    cdef object _lock
    cdef readonly object host
    cdef public unsigned idle_us            # sleep this long when idle (0: poll)

    def __cinit__(self, host="host", ports=None):
        if packet_pool() == NULL:
            raise FastPathError("call eal_init before creating a Manager")
        self.host = host
        self.cur = NULL
        self._instances = {}
        self._retired = []
        self._lock = threading.Lock()
        self.flows = new_hash("flows", ONVM_FLOW_ENTRIES, ONVM_KEY_SIZE)
        if ports is None:
            ports = [p for p in range(RTE_MAX_ETHPORTS) if rte_eth_dev_is_valid_port(p)]
        for p in ports:
            self.add_port(p)

    def add_port(self, uint16_t port_id):
        """Configure and start a port (one rx and one tx queue)."""
        cdef rte_eth_conf conf
        if self.nports >= MAX_PORTS:
            raise FastPathError(f"at most {MAX_PORTS} ports")
        cdef int err
        memset(&conf, 0, sizeof(conf))
        for step in range(4):
            if step == 0:
                err = rte_eth_dev_configure(port_id, 1, 1, &conf)
            elif step == 1:
                err = rte_eth_rx_queue_setup(port_id, 0, 1024, rte_socket_id(), NULL, packet_pool())
            elif step == 2:
                err = rte_eth_tx_queue_setup(port_id, 0, 1024, rte_socket_id(), NULL)
            else:
                err = rte_eth_dev_start(port_id)
            if err < 0:
                what = ("configure", "rx queue setup", "tx queue setup", "start")[step]
                raise FastPathError(f"port {port_id} ({port_name(port_id)}): {what} failed: {rte_strerror(-err).decode()}")
        rte_eth_promiscuous_enable(port_id)
        self.ports[self.nports] = port_id
        self.nports += 1

    def close(self):
        """Stop the ports (flushes pcap files) and free every table."""
        self.stop()
        for i in range(self.nports):
            rte_eth_dev_stop(self.ports[i])
            rte_eth_dev_close(self.ports[i])
        self.nports = 0
        old = <tables_t *>self.cur
        self.cur = NULL
        if old != NULL:
            _free_tables(old)
        for t in self._retired:
            _free_tables(<tables_t *><intptr_t>t)
        self._retired = []
        if self.flows != NULL:
            rte_hash_free(self.flows)
            self.flows = NULL
        # NF objects own DPDK memory (ACL contexts, hashes): free them now,
        # while the EAL is still up, not whenever Python collects them.
        for iid, entry in self._instances.items():
            free(<void *><intptr_t>entry[3])
        self._instances = {}
    # ------------------------------------------------------------- plans

    def apply_plan(self, plan, nf_factory):
        """Compile a checked plan (contracts.plan.check_plan) into new
        tables and swap them in atomically.  `nf_factory(instance_dict)`
        makes the NF object of a new instance; instances whose id, type and
        config are unchanged keep their object (and its state).  If anything
        fails, the running tables stay as they were."""
        with self._lock:
            new_instances = self._instances_for(plan, nf_factory)
            t = _build_tables(self, plan, new_instances)
            old = onvm_load_ptr(&self.cur)
            onvm_store_ptr(&self.cur, <void *>t)
            self._wait_quiescent()
            if old != NULL:
                _free_tables(<tables_t *>old)
            for iid in set(self._instances) - set(new_instances):
                log.info("%s: instance %d (%s) removed", self.host, iid,
                         self._instances[iid][0])
                free(<void *><intptr_t>self._instances[iid][3])
            self._instances = new_instances
            log.info("%s: plan generation %d applied: %d instances, %d hops",
                     self.host, plan["generation"], len(new_instances), len(plan["hops"]))

    def _instances_for(self, plan, nf_factory):
        out = {}
        cdef inst_stats_t *st
        for inst in plan["instances"]:
            iid = inst["id"]
            config = inst.get("config")
            mode = inst.get("mode", "inline")
            old = self._instances.get(iid)
            if old is not None and old[0] == inst["nf"] and old[1] == config and old[4] == mode:
                out[iid] = old
                continue
            # A process-mode instance's NF lives in its own process.
            nf = nf_factory(inst) if mode == "inline" else None
            st = <inst_stats_t *>calloc(1, sizeof(inst_stats_t))
            out[iid] = (inst["nf"], config, nf, <intptr_t>st, mode)
            log.info("%s: instance %d runs %s (%s)", self.host, iid, inst["nf"], mode)
        return out

    def _wait_quiescent(self):
        """Return once the loop has finished any burst it began on the old
        tables (it bumps `epoch` after each)."""
        if not self.running:
            return
        cdef uint64_t start = onvm_load_u64(&self.epoch)
        deadline = time.monotonic() + 5
        while onvm_load_u64(&self.epoch) == start and self.running:
            if time.monotonic() > deadline:
                raise FastPathError("fast path loop did not advance in 5 s")
            time.sleep(0.0001)

    @property
    def generation(self):
        cdef tables_t *t = <tables_t *>self.cur
        return None if t == NULL else t.generation

    # --------------------------------------------------------------- run

    def stop(self):
        onvm_store_u64(&self.stop_flag, 1)

    def run(self, uint64_t max_packets=0, double seconds=0.0, double idle_seconds=0.0):
        """Run the loop until stop(), `max_packets` processed, `seconds`
        passed, or nothing arrived for `idle_seconds`.  Returns packets
        processed.  Releases the GIL."""
        cdef uint64_t hz = rte_get_tsc_hz()
        cdef uint64_t now, start = rte_get_tsc_cycles(), last_rx = start
        cdef uint64_t until = start + <uint64_t>(seconds * hz) if seconds > 0 else 0
        cdef uint64_t idle = <uint64_t>(idle_seconds * hz)
        cdef uint64_t limit = self.processed + max_packets if max_packets else 0
        cdef unsigned got, idle_loops = 0
        cdef unsigned idle_us = self.idle_us
        onvm_store_u64(&self.stop_flag, 0)
        self.running = True
        try:
            with nogil:
                while onvm_load_u64(&self.stop_flag) == 0:
                    got = self._iteration()
                    onvm_store_u64(&self.epoch, self.epoch + 1)
                    if idle_us:
                        # Polling is DPDK's way at line rate; a host that
                        # shares its cores (emulation) sleeps when idle.
                        idle_loops = 0 if got else idle_loops + 1
                        if idle_loops > 64:
                            usleep(idle_us)
                    if limit and self.processed >= limit:
                        break
                    if until or idle:
                        now = rte_get_tsc_cycles()
                        if got:
                            last_rx = now
                        if until and now >= until:
                            break
                        if idle and now - last_rx >= idle:
                            break
        finally:
            self.running = False
        return self.processed

    cdef unsigned _iteration(self) noexcept nogil:
        cdef tables_t *t = <tables_t *>onvm_load_ptr(&self.cur)
        cdef rte_mbuf *pkts[BURST]
        cdef unsigned i, n, total = 0
        cdef uint16_t p
        for i in range(self.nports):
            p = self.ports[i]
            n = rte_eth_rx_burst(p, 0, pkts, BURST)
            if n == 0:
                continue
            total += n
            self.port_stats[i].rx += n
            if t == NULL:
                self.drops[R_NO_PLAN] += n
                rte_pktmbuf_free_bulk(pkts, n)
                continue
            self._ingest(t, pkts, n, i)
            self._flush()
        if t != NULL:
            total += self._poll_nf_processes(t)
        self._flush()
        return total

    cdef void _flush(self) noexcept nogil:
        cdef unsigned i
        cdef uint16_t sent
        for i in range(self.nports):
            if self.ntx[i] == 0:
                continue
            sent = rte_eth_tx_burst(self.ports[i], 0, self.tx[i], self.ntx[i])
            self.port_stats[i].tx += sent
            if sent < self.ntx[i]:
                self.port_stats[i].tx_full += self.ntx[i] - sent
                self.drops[R_TX_FULL] += self.ntx[i] - sent
                rte_pktmbuf_free_bulk(&self.tx[i][sent], self.ntx[i] - sent)
            self.ntx[i] = 0

    cdef void _ingest(self, tables_t *t, rte_mbuf **pkts, unsigned n, unsigned port_idx) noexcept nogil:
        """Parse a received burst, find each packet's first hop, run it."""
        cdef rte_mbuf *ok[BURST]
        cdef const void *keys[BURST]
        cdef int32_t pos[BURST]
        cdef unsigned i, nok = 0
        cdef onvm_meta *meta
        cdef void *hopv
        cdef int32_t hop
        cdef int reason
        cdef uint64_t key
        for i in range(n):
            reason = _parse(pkts[i], t, self.ports[port_idx])
            if reason >= 0:
                self.drops[reason] += 1
                rte_pktmbuf_free(pkts[i])
            else:
                meta = onvm_meta_of(pkts[i])
                keys[nok] = &meta.key
                ok[nok] = pkts[i]
                nok += 1
        if nok == 0:
            return
        rte_hash_lookup_bulk(self.flows, keys, nok, pos)
        for i in range(nok):
            meta = onvm_meta_of(ok[i])
            if pos[i] < 0:
                pos[i] = rte_hash_add_key(self.flows, keys[i])
                if pos[i] < 0:
                    self.flow_table_full += 1
            meta.flow_id = pos[i]
            if meta.si:
                # Tagged: the hop named by (SPI, SI).
                key = hop_key(meta.spi, meta.si)
                if rte_hash_lookup_data(t.hop_index, &key, &hopv) < 0:
                    self.drops[R_UNKNOWN_HOP] += 1
                    rte_pktmbuf_free(ok[i])
                    ok[i] = NULL
                    continue
                meta.hop = <uint16_t><intptr_t>hopv
            else:
                hop = _classify(t, meta)
                if hop < 0:
                    self.drops[R_NO_CHAIN] += 1
                    rte_pktmbuf_free(ok[i])
                    ok[i] = NULL
                    continue
                meta.hop = <uint16_t>hop
                meta.spi = t.hops[hop].spi
                meta.si = t.hops[hop].si
        self._advance(t, ok, nok)

    cdef void _advance(self, tables_t *t, rte_mbuf **pkts, unsigned n) noexcept nogil:
        """Carry packets along their hops until each leaves this host, is
        dropped or waits in an NF process's ring.  Run to completion:
        each round gathers the packets bound for each local instance and
        calls its batch function once."""
        cdef rte_mbuf *batch[MAX_INSTANCES][BURST]
        cdef uint16_t nb[MAX_INSTANCES]
        cdef rte_mbuf *m
        cdef onvm_meta *meta
        cdef hop_t *h
        cdef inst_t *inst
        cdef unsigned i, j, pending = n, s, sent
        cdef uint16_t slot
        memset(nb, 0, sizeof(nb))
        while pending:
            pending = 0
            # Route every packet to its next stop.
            for i in range(n):
                m = pkts[i]
                if m == NULL:
                    continue
                pkts[i] = NULL
                meta = onvm_meta_of(m)
                h = &t.hops[meta.hop]
                if meta.action == ONVM_ACTION_TONF:
                    slot = <uint16_t>t.slot_of_id[meta.destination]
                    meta.action = ONVM_ACTION_NEXT
                elif h.kind == HOP_LOCAL:
                    slot = h.slot
                elif h.kind == HOP_REMOTE:
                    self._to_remote(t, m, meta, h)
                    continue
                else:
                    self._to_end(t, m, h.port, h.dst_mac)
                    continue
                meta.nf_hops += 1
                if meta.nf_hops > MAX_NF_HOPS:
                    self.drops[R_LOOP] += 1
                    rte_pktmbuf_free(m)
                    continue
                inst = &t.instances[slot]
                if inst.mode == MODE_PROCESS:
                    inst.stats.rx += 1
                    if rte_ring_enqueue_burst(inst.to_nf, <void **>&m, 1, NULL) == 0:
                        inst.stats.ring_full += 1
                        self.drops[R_RING_FULL] += 1
                        rte_pktmbuf_free(m)
                    continue
                meta.action = ONVM_ACTION_NEXT
                batch[slot][nb[slot]] = m
                nb[slot] += 1
            # Run each inline instance once on what it got.  The common
            # verdict, NEXT, is handled here; the rest in _verdict.
            n = 0
            for s in range(t.ninstances):
                if nb[s] == 0:
                    continue
                inst = &t.instances[s]
                inst.stats.rx += nb[s]
                inst.fn(inst.ctx, batch[s], nb[s])
                for j in range(nb[s]):
                    m = batch[s][j]
                    meta = onvm_meta_of(m)
                    if meta.action == ONVM_ACTION_NEXT and t.hops[meta.hop].next >= 0:
                        inst.stats.tx += 1
                        meta.hop = <uint16_t>t.hops[meta.hop].next
                        meta.si -= 1
                        pkts[n] = m
                        n += 1
                    elif self._verdict(t, m, inst):
                        pkts[n] = m
                        n += 1
                nb[s] = 0
            pending = n

    cdef bint _verdict(self, tables_t *t, rte_mbuf *m, inst_t *inst) noexcept nogil:
        """Act on an NF's verdict; True if the packet goes on in this host."""
        cdef onvm_meta *meta = onvm_meta_of(m)
        cdef int32_t nxt
        cdef unsigned i
        if meta.action == ONVM_ACTION_DROP:
            inst.stats.drops += 1
            self.drops[R_NF_DROP] += 1
            rte_pktmbuf_free(m)
            return False
        inst.stats.tx += 1
        if meta.action == ONVM_ACTION_NEXT:
            nxt = t.hops[meta.hop].next
            if nxt < 0:
                self.drops[R_UNKNOWN_HOP] += 1
                rte_pktmbuf_free(m)
                return False
            meta.hop = <uint16_t>nxt
            meta.si -= 1
            return True
        if meta.action == ONVM_ACTION_TONF:
            if meta.destination >= 65536 or t.slot_of_id[meta.destination] < 0:
                self.drops[R_UNKNOWN_HOP] += 1
                rte_pktmbuf_free(m)
                return False
            return True
        # OUT: unchanged, out of a port.
        for i in range(self.nports):
            if self.ports[i] == meta.destination:
                self.tx[i][self.ntx[i]] = m
                self.ntx[i] += 1
                self.processed += 1
                return False
        self.drops[R_BAD_PORT] += 1
        rte_pktmbuf_free(m)
        return False

    cdef void _to_remote(self, tables_t *t, rte_mbuf *m, onvm_meta *meta, hop_t *h) noexcept nogil:
        """Push transport, SPI and SI labels (DESIGN's wire format) and send
        to the host this flow's consistent hash picks."""
        cdef peer_t *peer = &t.peers[t.remote[h.remote_off + (meta.flow_hash & (SLOTS - 1))]]
        cdef uint8_t *d = <uint8_t *>rte_pktmbuf_prepend(m, 12)
        if d == NULL:
            self.drops[R_TX_FULL] += 1
            rte_pktmbuf_free(m)
            return
        memcpy(d, peer.mac, 6)
        memcpy(d + 6, t.mac, 6)
        d[12] = 0x88
        d[13] = 0x47
        wr32(d + 14, (peer.label << 12) | 64)
        wr32(d + 18, (meta.spi << 12) | 64)
        wr32(d + 22, (<uint32_t>meta.si << 12) | 0x100 | 64)
        self._queue_tx(m, t.uplink)

    cdef void _to_end(self, tables_t *t, rte_mbuf *m, uint16_t port, uint8_t *dst_mac) noexcept nogil:
        cdef uint8_t *d = onvm_mtod(m)
        memcpy(d, dst_mac, 6)
        memcpy(d + 6, t.mac, 6)
        self._queue_tx(m, port)

    cdef void _queue_tx(self, rte_mbuf *m, uint16_t port) noexcept nogil:
        cdef unsigned i
        for i in range(self.nports):
            if self.ports[i] == port:
                if self.ntx[i] == BURST * 2:
                    self._flush()
                self.tx[i][self.ntx[i]] = m
                self.ntx[i] += 1
                self.processed += 1
                return
        self.drops[R_BAD_PORT] += 1
        rte_pktmbuf_free(m)

    cdef unsigned _poll_nf_processes(self, tables_t *t) noexcept nogil:
        """Take back what NF processes finished and carry it on."""
        cdef rte_mbuf *pkts[BURST]
        cdef rte_mbuf *go[BURST]
        cdef unsigned s, i, n, ngo, total = 0
        cdef inst_t *inst
        cdef void *hopv
        cdef onvm_meta *meta
        cdef uint64_t key
        for s in range(t.ninstances):
            inst = &t.instances[s]
            if inst.mode != MODE_PROCESS:
                continue
            n = rte_ring_dequeue_burst(inst.from_nf, <void **>pkts, BURST, NULL)
            total += n
            ngo = 0
            for i in range(n):
                meta = onvm_meta_of(pkts[i])
                # The packet may have left on older tables: find its hop again.
                key = hop_key(meta.spi, meta.si)
                if rte_hash_lookup_data(t.hop_index, &key, &hopv) < 0:
                    self.drops[R_UNKNOWN_HOP] += 1
                    rte_pktmbuf_free(pkts[i])
                    continue
                meta.hop = <uint16_t><intptr_t>hopv
                if self._verdict(t, pkts[i], inst):
                    go[ngo] = pkts[i]
                    ngo += 1
            if ngo:
                self._advance(t, go, ngo)
        return total

    # ------------------------------------------------------------- stats

    def stats(self):
        """Counters: per port, per instance, drops by reason."""
        cdef tables_t *t = <tables_t *>self.cur
        cdef inst_stats_t *st
        cdef rte_eth_stats es
        ports = {}
        for i in range(self.nports):
            rte_eth_stats_get(self.ports[i], &es)
            ports[port_name(self.ports[i])] = {
                "port": self.ports[i], "rx": self.port_stats[i].rx,
                "tx": self.port_stats[i].tx, "tx_full": self.port_stats[i].tx_full,
                "missed": es.imissed, "errors": es.ierrors + es.oerrors,
            }
        instances = {}
        for iid, (nf, config, obj, stp, mode) in self._instances.items():
            st = <inst_stats_t *><intptr_t>stp
            entry = {"nf": nf, "mode": mode, "rx": st.rx, "tx": st.tx,
                     "drops": st.drops, "ring_full": st.ring_full, "queue": 0}
            if t != NULL and t.slot_of_id[iid] >= 0 and t.instances[t.slot_of_id[iid]].to_nf != NULL:
                entry["queue"] = rte_ring_count(t.instances[t.slot_of_id[iid]].to_nf)
            if obj is not None and hasattr(obj, "counters"):
                entry["counters"] = obj.counters()
            instances[iid] = entry
        return {
            "generation": self.generation,
            "processed": self.processed,
            "ports": ports,
            "instances": instances,
            "drops": {DROP_REASONS[i]: self.drops[i] for i in range(N_REASONS)},
            "flows": rte_hash_count(self.flows),
            "flow_table_full": self.flow_table_full,
        }

    def nf_object(self, iid):
        return self._instances[iid][2]

    def ring_names(self, iid):
        """Names of the rings of a process-mode instance."""
        return ring_names(self.host, iid)


def port_name(uint16_t port):
    cdef char name[64]
    if rte_eth_dev_get_name_by_port(port, name) != 0:
        return f"port{port}"
    return name.decode()


# ------------------------------------------------------- parse, classify

cdef int _parse(rte_mbuf *m, tables_t *t, uint16_t port) noexcept nogil:
    """Fill the packet's metadata; returns a drop reason, or -1 if it goes on."""
    cdef uint8_t *d = onvm_mtod(m)
    cdef uint32_t length = m.data_len
    cdef onvm_meta *meta = onvm_meta_of(m)
    cdef uint16_t etype
    cdef uint32_t l0, l1, l2, off = 14, ihl, l4
    cdef uint8_t ver
    memset(meta, 0, sizeof(onvm_meta))
    meta.in_port = port
    meta.flow_id = -1
    if length < 14:
        return R_TRUNCATED
    etype = rd16(d + 12)
    if etype == ETH_MPLS or etype == ETH_MPLS_MC:
        if length < 14 + 12 + 1:
            return R_TRUNCATED
        l0 = rd32(d + 14)
        l1 = rd32(d + 18)
        l2 = rd32(d + 22)
        if (l0 & 0x100) or (l1 & 0x100) or not (l2 & 0x100):
            return R_BAD_LABELS
        if (l0 & 0xff) == 0 or (l1 & 0xff) == 0 or (l2 & 0xff) == 0:
            return R_TTL
        if (l0 >> 12) != t.node_label:
            return R_WRONG_NODE
        meta.spi = l1 >> 12
        meta.si = l2 >> 12
        if meta.si == 0:
            return R_BAD_LABELS
        ver = d[26] >> 4
        if ver == 4:
            etype = ETH_IPV4
        elif ver == 6:
            etype = ETH_IPV6
        else:
            return R_NOT_IP
        # Pop the stack: move the MAC addresses up over it.
        memmove(d + 12, d, 12)
        rte_pktmbuf_adj(m, 12)
        d = d + 12
        length -= 12
        d[12] = etype >> 8
        d[13] = etype & 0xff
    elif etype == ETH_VLAN:
        if length < 18:
            return R_TRUNCATED
        etype = rd16(d + 16)
        off = 18
    meta.l3_off = off
    if etype == ETH_IPV4:
        if length < off + 20 or (d[off] >> 4) != 4:
            return R_TRUNCATED if length < off + 20 else R_NOT_IP
        ihl = (d[off] & 0x0f) * 4
        if ihl < 20 or length < off + ihl:
            return R_TRUNCATED
        meta.key.family = 4
        meta.key.proto = d[off + 9]
        memcpy(&meta.key.src, d + off + 12, 4)
        memcpy(&meta.key.dst, d + off + 16, 4)
        l4 = off + ihl
        if (rd16(d + off + 6) & 0x1fff) == 0:
            meta.l4_off = l4        # not for later fragments: no L4 header
        # Ports only for first fragments of TCP, UDP, SCTP.
        if (meta.key.proto == 6 or meta.key.proto == 17 or meta.key.proto == 132) \
                and meta.l4_off:
            if length < l4 + 4:
                return R_TRUNCATED
            memcpy(&meta.key.sport, d + l4, 2)
            memcpy(&meta.key.dport, d + l4 + 2, 2)
    elif etype == ETH_IPV6:
        if length < off + 40:
            return R_TRUNCATED
        meta.key.family = 6
        meta.key.proto = d[off + 6]
        meta.key.src = rte_hash_crc(d + off + 8, 16, 0)
        meta.key.dst = rte_hash_crc(d + off + 24, 16, 0)
        l4 = off + 40
        meta.l4_off = l4
        if meta.key.proto == 6 or meta.key.proto == 17 or meta.key.proto == 132:
            if length < l4 + 4:
                return R_TRUNCATED
            memcpy(&meta.key.sport, d + l4, 2)
            memcpy(&meta.key.dport, d + l4 + 2, 2)
    else:
        return R_NOT_IP
    meta.flow_hash = rte_hash_crc(&meta.key, sizeof(onvm_flow_key), 0)
    return -1


cdef int32_t _classify(tables_t *t, onvm_meta *meta) noexcept nogil:
    """First hop of an untagged packet: the flow table's cached answer, or
    the classifier's (then cached)."""
    cdef int32_t hop
    cdef uint32_t res = 0
    cdef const uint8_t *key = <const uint8_t *>&meta.key
    if meta.flow_id >= 0:
        hop = t.flow_hop[meta.flow_id]
        if hop != -2:
            return hop
    hop = -1
    if t.classifier != NULL and meta.key.family == 4:
        rte_acl_classify(t.classifier, &key, &res, 1, 1)
        if res:
            hop = t.class_hop[res - 1]
    if meta.flow_id >= 0:
        t.flow_hop[meta.flow_id] = hop
    return hop


# ------------------------------------------------------- plan -> tables

cdef tables_t *_build_tables(Manager mgr, dict plan, dict instances) except NULL:
    """Compile a checked plan into a fresh tables_t.  Nothing the loop uses
    is touched until the caller swaps the pointer."""
    cdef tables_t *t = <tables_t *>calloc(1, sizeof(tables_t))
    cdef uint32_t key
    cdef hop_t *h
    cdef inst_t *inst
    cdef Acl acl
    if t == NULL:
        raise MemoryError()
    try:
        t.generation = plan["generation"]
        t.node_label = plan["node_label"]
        for i, b in enumerate(bytes.fromhex(plan["mac"].replace(":", ""))):
            t.mac[i] = b
        t.uplink = plan.get("uplink", 0)
        for i in range(65536):
            t.slot_of_id[i] = -1
        # Instances: slot = position in the plan.
        if len(plan["instances"]) > MAX_INSTANCES:
            raise FastPathError(f"a host runs at most {MAX_INSTANCES} instances")
        for slot, spec in enumerate(plan["instances"]):
            iid = spec["id"]
            nf, config, obj, stp, mode = instances[iid]
            inst = &t.instances[slot]
            inst.id = iid
            inst.stats = <inst_stats_t *><intptr_t>stp
            if mode == "process":
                inst.mode = MODE_PROCESS
                to_name, from_name = ring_names(mgr.host, iid)
                inst.to_nf = _ring(to_name)
                inst.from_nf = _ring(from_name)
            else:
                inst.mode = MODE_INLINE
                bind_nf(obj, &inst.fn, &inst.ctx)
            t.slot_of_id[iid] = slot
        t.ninstances = len(plan["instances"])
        # Hops.
        hops = plan["hops"]
        t.nhops = len(hops)
        t.hops = <hop_t *>calloc(max(1, len(hops)), sizeof(hop_t))
        remotes = [hp for hp in hops if "remote" in hp]
        t.remote = <uint16_t *>calloc(max(1, len(remotes) * SLOTS), sizeof(uint16_t))
        npeers = sum(len(hp["remote"]) for hp in remotes)
        t.peers = <peer_t *>calloc(max(1, npeers), sizeof(peer_t))
        t.hop_index = new_hash("hops", max(64, 2 * len(hops)), sizeof(uint64_t))   # hop_key(spi, si)
        if t.hop_index == NULL or t.hops == NULL or t.remote == NULL or t.peers == NULL:
            raise dpdk_error("plan tables")
        index = {(hp["spi"], hp["si"]): i for i, hp in enumerate(hops)}
        peer_i = 0
        remote_i = 0
        for i, hp in enumerate(hops):
            h = &t.hops[i]
            h.spi = hp["spi"]
            h.si = hp["si"]
            h.next = index.get((hp["spi"], hp["si"] - 1), -1)
            if "local" in hp:
                h.kind = HOP_LOCAL
                h.slot = t.slot_of_id[hp["local"]]
            elif "remote" in hp:
                h.kind = HOP_REMOTE
                h.remote_off = remote_i * SLOTS
                for j, peer in enumerate(hp["remote"]):
                    t.peers[peer_i + j].label = peer["label"]
                    for k, b in enumerate(bytes.fromhex(peer["mac"].replace(":", ""))):
                        t.peers[peer_i + j].mac[k] = b
                for slot, j in enumerate(consistent_slots(hp["remote"], SLOTS)):
                    t.remote[h.remote_off + slot] = peer_i + j
                peer_i += len(hp["remote"])
                remote_i += 1
            else:
                h.kind = HOP_END
                h.port = hp["end"].get("port", 0)
                for k, b in enumerate(bytes.fromhex(hp["end"]["dst_mac"].replace(":", ""))):
                    h.dst_mac[k] = b
            _hop_add(t.hop_index, h.spi, h.si, i)
        # Classifiers for untagged packets: first matching wins.
        classifiers = plan.get("classifiers", [])
        t.flow_hop = <int32_t *>malloc(ONVM_FLOW_ENTRIES * sizeof(int32_t))
        t.class_hop = <int32_t *>calloc(max(1, len(classifiers)), sizeof(int32_t))
        for i in range(ONVM_FLOW_ENTRIES):
            t.flow_hop[i] = -2
        if classifiers:
            for i, cls in enumerate(classifiers):
                t.class_hop[i] = index.get((cls["spi"], SI_FIRST), -1)
            acl = Acl([match_to_acl_rule(c["match"]) for c in classifiers])
            t.classifier = acl.ctx
            acl.ctx = NULL      # the tables own it now
        return t
    except BaseException:
        _free_tables(t)
        raise


cdef int _hop_add(rte_hash *hi, uint32_t spi, uint8_t si, int idx) except -1:
    cdef uint64_t key = hop_key(spi, si)
    if rte_hash_add_key_data(hi, &key, <void *><intptr_t>idx) < 0:
        raise FastPathError(f"hop table full at SPI {spi} SI {si}")
    return 0


cdef rte_ring *_ring(name) except NULL:
    cdef rte_ring *r = rte_ring_lookup(name.encode())
    if r == NULL:
        r = rte_ring_create(name.encode(), 4096, rte_socket_id(),
                            RING_F_SP_ENQ | RING_F_SC_DEQ)
    if r == NULL:
        raise dpdk_error(f"ring {name}")
    return r


cdef void _free_tables(tables_t *t) noexcept:
    if t == NULL:
        return
    if t.hop_index != NULL:
        rte_hash_free(t.hop_index)
    if t.classifier != NULL:
        rte_acl_free(t.classifier)
    free(t.hops)
    free(t.remote)
    free(t.peers)
    free(t.flow_hop)
    free(t.class_hop)
    free(t)


def consistent_slots(peers, slots=SLOTS):
    """Which peer serves each of `slots` hash slots: weighted rendezvous
    hashing, so a flow keeps its host when others join or leave or change
    weight (only slots whose winner changed move)."""
    import math
    import zlib
    out = []
    for s in range(slots):
        best, best_score = 0, None
        for j, peer in enumerate(peers):
            h = zlib.crc32(f"{peer['label']}/{s}".encode()) & 0xffffffff
            u = (h + 0.5) / 4294967296.0
            score = -peer.get("weight", 1.0) / math.log(u)
            if best_score is None or score > best_score:
                best, best_score = j, score
        out.append(best)
    return out
