# cython: language_level=3
"""The host's manager loop: polls the ports, hands packets to local NF
instances without copying, and acts on their verdicts.

What it does per burst of up to 64 (no Python on this path, the GIL released):
parse the frame (host_agent/parser.pxd: strip the SFC label stack of
DESIGN.md, or classify an untagged packet through the flow table, keyed on
the 5-tuple (host_agent/keytab.pxd) and backed by an rte_acl classifier),
then follow the chain's hops: a local instance (inline: the NF library's
handler is called in this loop; process: its rte_ring), a remote host
(labels pushed, one host per flow by weighted consistent hashing), or the
end of the chain (sent out of the egress port).

The pin table (host_agent/pinkey.pxd says what a pin keeps) and the flow
table (5-tuple -> flow id, `flow_entries`) age (host_agent/aging.pxd):
`pin_idle_seconds`, `flow_idle_seconds`, `flow_fin_seconds` after a FIN/RST.
With worker cores, other workers' flows are handed over (host_agent.handoff).

What it is not: the plan's checker (contracts.plan), the compiler from a
plan to tables (host_agent.tables, loaded by host_agent.plantables), the
NF-process loop (nflib.nf.serve_nf), ports in memory (host_agent.ports),
or the agent that talks to the store (host_agent.agent).
"""
cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, intptr_t
from libc.string cimport memcpy, memset, memcmp
from libc.stdlib cimport calloc, free

cdef extern from "unistd.h" nogil:
    int usleep(unsigned usec)

from dpdk.rte_eal cimport rte_get_tsc_hz, rte_get_tsc_cycles
from dpdk.rte_mbuf cimport rte_mbuf, rte_pktmbuf_free, rte_pktmbuf_free_bulk
from dpdk.rte_ring cimport rte_ring_enqueue_burst, rte_ring_dequeue_burst, rte_ring_count
from dpdk.rte_ethdev cimport *
from dpdk.rte_hash cimport rte_hash_lookup_data
from nflib.eal cimport packet_pool
from nflib.nf cimport (onvm_meta, onvm_meta_of, onvm_mtod, ONVM_FLOW_ENTRIES,
    ONVM_ACTION_DROP, ONVM_ACTION_NEXT, ONVM_ACTION_TONF, rte_prefetch0, prefetch_burst,
    nf_flows_t, nf_flows_of, FLOW_LINE, FLOW_LINE_NF_BYTES)
from host_agent.plantables cimport (tables_t, hop_t, peer_t, inst_t, inst_stats_t,
    server_mac_of, hop_key, load_tables, free_tables, SLOTS, MAX_INSTANCES, HOP_LOCAL,
    HOP_REMOTE, MODE_PROCESS, FLAG_PINNED, FLAG_KEPT, find_peer)
from host_agent.parser cimport *
from host_agent.aging cimport (aged_t, aged_rec_t, aged_rec, aged_add, aged_find, aged_set,
    aged_sweep, aged_timing, aged_init, aged_free, aged_free_records, aged_report)
from host_agent.flowline cimport (flow_line_t, line_room_t, line_new_flow, lines_place,
    lines_release)
from host_agent.pinkey cimport pin_key_t, pin_key_of, flow_key_hash
from host_agent.keytab cimport kt_lookup_bulk, kt_lookup_keys
from host_agent.benchflows cimport bench_t, bench_step, bench_set_table
from host_agent.probeanswer cimport probes_split, probe_constants
from host_agent.handoff cimport (handoff_t, handoff_split, handoff_open, handoff_set,
    handoff_close, steer_swap, steer_free, HANDOFF_BURST as BURST)
from host_agent.loopsync cimport (onvm_load_ptr, onvm_store_ptr, onvm_load_u64,
    onvm_store_u64, hold_wait, hold_point)

import logging
import threading
import time

from contracts import wire
from nflib.eal import FastPathError
from host_agent.ports import port_name, start_port, stop_port
from host_agent.tables import compile_plan

log = logging.getLogger("onvm.fastpath")

DEF PIN_SWEEP_STEP = 16    # pin table positions the sweep checks per loop iteration, at most
PIN_IDLE_SECONDS = 300     # a pin unused this long is deleted
PIN_ENTRIES = 1 << 18      # the pin table's size
DEF FLOW_SWEEP_STEP = 32   # flow table positions the sweep checks per loop iteration, at most
FLOW_ENTRIES = 1 << 20     # the flow table's default size (host_agent/keytab.pxd)
FLOW_IDLE_SECONDS = 30     # a flow unused this long is deleted
FLOW_FIN_SECONDS = 2       # ... and this long after a TCP FIN or RST
DEF MAX_PORTS = 16
DEF MAX_NF_HOPS = 64       # NFs one packet may visit on this host
DEF SI_FIRST = 255         # contracts.wire.SI_FIRST: where a chain (and a reply path) starts

# The parser's constants and drop reasons are the wire format's, and so
# are the liveness probes' (answered in the loop: host_agent.probeanswer).
check_wire(wire, SI_FIRST)
if (wire.ETH_PROBE, wire.PROBE_REQUEST, wire.PROBE_ANSWER, wire.PROBE_KIND_OFFSET) \
        != probe_constants():
    raise ImportError("contracts.wire's probe constants differ from the loop's: rebuild")
DROP_REASONS = wire.DROP_REASONS


cdef struct port_stats_t:
    uint64_t rx
    uint64_t tx
    uint64_t tx_full


assert sizeof(flow_line_t) == FLOW_LINE


@cython.final
cdef class Manager:
    """One host's fast path: ports, flow table, the tables of the plan it
    runs, and the loop.  Create after eal_init; call apply_plan, then run
    (from a thread: it releases the GIL)."""
    cdef void *cur                          # tables_t *, swapped atomically
    cdef uint64_t epoch                     # bumped once per loop iteration
    cdef uint64_t stop_flag
    cdef uint64_t hold_flag                 # hold(): stand still between iterations
    cdef uint64_t held                      # 1 while the loop stands still for hold()
    cdef aged_t flows                       # pin_key_t (SPI, SI 0) -> flow id, its flow line
    cdef line_room_t line_room              # the NFs' room on the flow lines (host_agent.flowline)
    cdef uint64_t flow_fin_cycles
    cdef public double flow_idle_seconds    # flows idle this long are swept
    cdef public double flow_fin_seconds     # ... after a TCP FIN or RST
    cdef aged_t pins                        # pin_key_t -> position
    cdef uint64_t now                       # TSC at the start of this iteration
    cdef uint64_t clock_offset              # advance_clock (tests)
    cdef bench_t bench                      # host_agent.benchflows (flows 0: off)
    cdef public double pin_idle_seconds     # pins idle this long are swept
    cdef uint16_t nports
    cdef public uint16_t queue              # the rx and tx queue it polls (host_agent.workers)
    cdef uint16_t ports[MAX_PORTS]
    cdef port_stats_t port_stats[MAX_PORTS]
    cdef rte_mbuf *tx[MAX_PORTS][BURST * 2]   # used by the loop only
    cdef uint16_t ntx[MAX_PORTS]
    cdef uint64_t drops[N_REASONS]
    cdef uint64_t processed
    cdef uint64_t probes_answered, probes_ignored
    cdef public bint answer_probes          # false while the agent leaves (host_agent.agent)
    cdef public bint running
    cdef object _instances                  # id -> (nf type, config, nf object, stats ptr)
    cdef object _retired
    cdef object _lock
    cdef readonly object host
    cdef public unsigned idle_us            # sleep this long when idle (0: poll)
    cdef handoff_t handoff                  # host_agent.handoff (workers only)

    def __cinit__(self, host="host", ports=None, pin_entries=PIN_ENTRIES,
                  flow_entries=FLOW_ENTRIES):
        if packet_pool() == NULL:
            raise FastPathError("call eal_init before creating a Manager")
        self.host = host
        self.cur = NULL
        self._instances = {}
        self._retired = []
        self._lock = threading.Lock()
        self.flow_idle_seconds = FLOW_IDLE_SECONDS
        self.flow_fin_seconds = FLOW_FIN_SECONDS
        aged_init(&self.flows, "flows", flow_entries, sizeof(pin_key_t), flow_key_hash,
                  sizeof(flow_line_t))
        self.pin_idle_seconds = PIN_IDLE_SECONDS
        self.answer_probes = True
        aged_init(&self.pins, "pins", pin_entries, sizeof(pin_key_t))
        if ports is None:
            ports = [p for p in range(RTE_MAX_ETHPORTS) if rte_eth_dev_is_valid_port(p)]
        for p in ports:
            self.add_port(p)

    def __dealloc__(self):
        bench_set_table(&self.bench, None)
        lines_release(&self.line_room, self._instances or {})
        aged_free_records(&self.pins)
        aged_free_records(&self.flows)

    def add_port(self, uint16_t port_id):
        """Configure and start a port (one rx and one tx queue)."""
        if self.nports >= MAX_PORTS:
            raise FastPathError(f"at most {MAX_PORTS} ports")
        start_port(port_id)
        self.ports[self.nports] = port_id
        self.nports += 1

    def close(self):
        """Stop the ports (flushes pcap files) and free every table."""
        self.stop()
        for i in range(self.nports):
            stop_port(self.ports[i])
        self.nports = 0
        old = <tables_t *>self.cur
        self.cur = NULL
        if old != NULL:
            free_tables(old)
        for t in self._retired:
            free_tables(<tables_t *><intptr_t>t)
        self._retired = []
        aged_free(&self.flows)
        aged_free(&self.pins)
        handoff_close(&self.handoff)     # frees what waits in it
        # NF objects own DPDK memory (ACL contexts, hashes): free them now,
        # while the EAL is still up, not whenever Python collects them.
        lines_release(&self.line_room, self._instances)
        for iid, entry in self._instances.items():
            free(<void *><intptr_t>entry[3])
        self._instances = {}
    # ------------------------------------------------------------- plans

    def apply_plan(self, plan, nf_factory):
        """Compile a checked plan (contracts.plan.check_plan) into new
        tables (host_agent.tables, then the loader) and swap them in
        atomically.  `nf_factory(instance_dict)`
        makes the NF object of a new instance; instances whose id, type and
        config are unchanged keep their object (and its state), as does one whose
        NF has prepare_reload (the ids: built aside, adopted before the swap).
        If anything fails, the running tables (and configs) stay as they were."""
        compiled = compile_plan(plan)
        with self._lock:
            new_instances, reloads = self._instances_for(plan, nf_factory)
            kept = {id(entry[2]) for entry in self._instances.values()}
            made = {iid: e for iid, e in new_instances.items() if id(e[2]) not in kept}
            self._place_on_lines(made)
            try:
                t = load_tables(compiled, {iid: (e[2], e[3]) for iid, e in new_instances.items()},
                                self.host)
            except BaseException:
                lines_release(&self.line_room, made)
                raise
            for iid, nf, prepared in reloads:
                nf.adopt(prepared)
                log.info("%s: instance %d reloaded in place: %s", self.host, iid, prepared.summary())
            old = onvm_load_ptr(&self.cur)
            onvm_store_ptr(&self.cur, <void *>t)
            self._wait_quiescent()
            if old != NULL:
                free_tables(<tables_t *>old)
            running = {id(entry[2]) for entry in new_instances.values()}
            lines_release(&self.line_room, {iid: e for iid, e in self._instances.items()
                                 if id(e[2]) not in running})
            for iid in set(self._instances) - set(new_instances):
                log.info("%s: instance %d (%s) removed", self.host, iid,
                         self._instances[iid][0])
                free(<void *><intptr_t>self._instances[iid][3])
            self._instances = new_instances
            log.info("%s: plan generation %d applied: %d instances, %d hops",
                     self.host, plan["generation"], len(new_instances), len(plan["hops"]))

    def _place_on_lines(self, dict entries):
        """Put the per-flow records of these new instances' NFs on the flow
        lines where there is room (host_agent.flowline), and say where."""
        for iid, size, off in lines_place(<flow_line_t *>self.flows.recs, self.flows.entries,
                                          &self.line_room, entries):
            log.info("%s: instance %d keeps its %d bytes a flow %s", self.host, iid, size,
                     f"on the host's flow line (bytes {off}..{off + size - 1} of the NFs' "
                     f"{FLOW_LINE_NF_BYTES})" if off >= 0 else
                     "in its own array: the host's flow line has no room left")

    cdef inline flow_line_t *_line(self, int32_t pos) noexcept nogil:
        return <flow_line_t *>aged_rec(&self.flows, <uint32_t>pos)

    def _instances_for(self, plan, nf_factory):
        out, reloads = {}, []
        cdef inst_stats_t *st
        for inst in plan["instances"]:
            iid = inst["id"]
            config = inst.get("config")
            mode = inst.get("mode", "inline")
            old = self._instances.get(iid)
            if old is not None and old[0] == inst["nf"] and old[1] == config and old[4] == mode:
                out[iid] = old
                continue
            if old is not None and old[0] == inst["nf"] and old[4] == mode and \
                    (prepared := getattr(old[2], "prepare_reload", lambda c: None)(config)):
                reloads.append((iid, old[2], prepared))
                out[iid] = (old[0], config, old[2], old[3], mode)
                continue
            # A process-mode instance's NF lives in its own process.
            nf = nf_factory(inst) if mode == "inline" else None
            st = <inst_stats_t *>calloc(1, sizeof(inst_stats_t))
            out[iid] = (inst["nf"], config, nf, <intptr_t>st, mode)
            log.info("%s: instance %d runs %s (%s)", self.host, iid, inst["nf"], mode)
        return out, reloads

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

    def set_bench(self, uint32_t flows=0, double new_per_s=0.0, table=None,
                  bint tcp_next=False):
        """host_agent.benchflows, for `onvm bench fastpath` in loop mode: the
        flows to rewrite looped packets to (0: off), the window's slide, the
        flow of each cursor position (ints < 2**32), or TCP's next segment."""
        bench_set_table(&self.bench, table)
        self.bench.flows, self.bench.new_per_s = flows, new_per_s
        self.bench.tcp_next = tcp_next

    def hold(self, double timeout=1.0):
        """The running loop stands still between two iterations until
        release() (host_agent.loopsync); FastPathError if it did not
        within `timeout`.  Returns at once if it does not run."""
        cdef uint64_t deadline = rte_get_tsc_cycles() + <uint64_t>(timeout * rte_get_tsc_hz())
        cdef bint ok
        with nogil:
            ok = hold_wait(&self.hold_flag, &self.held, &self.running, deadline)
        if not ok:
            raise FastPathError(f"fast path loop did not stand still within {timeout:g} s")

    def release(self):
        """The loop held by hold() goes on."""
        onvm_store_u64(&self.hold_flag, 0)

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
        aged_timing(&self.pins, hz, self.pin_idle_seconds)      # swept once a second
        aged_timing(&self.flows, hz, self.flow_idle_seconds)
        self.flow_fin_cycles = <uint64_t>(max(0.0, min(self.flow_fin_seconds,
                                                       self.flow_idle_seconds)) * hz)
        onvm_store_u64(&self.stop_flag, 0)
        self.running = True
        try:
            with nogil:
                while onvm_load_u64(&self.stop_flag) == 0:
                    got = self._iteration()
                    if self.pins.live:
                        aged_sweep(&self.pins, self.now, PIN_SWEEP_STEP)
                    if self.flows.live:
                        aged_sweep(&self.flows, self.now, FLOW_SWEEP_STEP)
                    onvm_store_u64(&self.epoch, self.epoch + 1)
                    hold_point(&self.hold_flag, &self.held, &self.stop_flag)
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
        self.now = (rte_get_tsc_cycles() + self.clock_offset) | 1   # 0: free (aging)
        for i in range(self.nports):
            p = self.ports[i]
            n = rte_eth_rx_burst(p, self.queue, pkts, BURST)
            if n == 0:
                continue
            total += n
            self.port_stats[i].rx += n
            prefetch_burst(pkts, n)
            n = self._answer_probes(pkts, n, i)
            if self.bench.flows or self.bench.tcp_next:
                bench_step(&self.bench, pkts, n, self.now)
            if n == 0:
                continue
            if t == NULL:
                self.drops[R_NO_PLAN] += n
                rte_pktmbuf_free_bulk(pkts, n)
                continue
            self._ingest(t, pkts, n, i)
            self._flush()
        if self.handoff.inbox != NULL:     # other workers' packets of this one's flows
            n = rte_ring_dequeue_burst(self.handoff.inbox, <void **>pkts, BURST, NULL)
            total += n
            self.handoff.received += n
            if n and t != NULL:
                self._dispatch(t, pkts, n)
            elif n:
                self.drops[R_NO_PLAN] += n
                rte_pktmbuf_free_bulk(pkts, n)
        if t != NULL:
            total += self._poll_nf_processes(t)
        self._flush()
        return total

    cdef unsigned _answer_probes(self, rte_mbuf **pkts, unsigned n, unsigned port_idx) noexcept nogil:
        """Answer liveness probes (host_agent.probeanswer) out of the port
        they came in by; returns how many packets are left in `pkts`."""
        cdef rte_mbuf *answers[BURST]
        cdef unsigned i, nanswers
        n = probes_split(pkts, n, self.answer_probes, answers, &nanswers, &self.probes_ignored)
        self.probes_answered += nanswers
        for i in range(nanswers):
            if self.ntx[port_idx] == BURST * 2:
                self._flush()
            self.tx[port_idx][self.ntx[port_idx]] = answers[i]
            self.ntx[port_idx] += 1
        return n

    cdef void _flush(self) noexcept nogil:
        cdef unsigned i
        cdef uint16_t sent
        for i in range(self.nports):
            if self.ntx[i] == 0:
                continue
            sent = rte_eth_tx_burst(self.ports[i], self.queue, self.tx[i], self.ntx[i])
            self.port_stats[i].tx += sent
            if sent < self.ntx[i]:
                self.port_stats[i].tx_full += self.ntx[i] - sent
                self.drops[R_TX_FULL] += self.ntx[i] - sent
                rte_pktmbuf_free_bulk(&self.tx[i][sent], self.ntx[i] - sent)
            self.ntx[i] = 0

    cdef void _ingest(self, tables_t *t, rte_mbuf **pkts, unsigned n, unsigned port_idx) noexcept nogil:
        """Parse a received burst, hand other workers' flows to them
        (host_agent.handoff), run the rest."""
        cdef unsigned i, nok = 0
        cdef int reason
        for i in range(n):
            reason = parse_packet(pkts[i], t, self.ports[port_idx])
            if reason >= 0:
                self.drops[reason] += 1
                rte_pktmbuf_free(pkts[i])
            else:
                pkts[nok] = pkts[i]
                nok += 1
        if nok and self.handoff.n > 1:
            nok = handoff_split(&self.handoff, pkts, nok, &self.drops[R_HANDOFF_FULL])
        if nok:
            self._dispatch(t, pkts, nok)

    cdef void _dispatch(self, tables_t *t, rte_mbuf **ok, unsigned nok) noexcept nogil:
        """Find each parsed packet's flow and first hop, and run it."""
        cdef pin_key_t fkeys[BURST]
        cdef const void *keys[BURST]
        cdef uint32_t sig[BURST]
        cdef int32_t pos[BURST]
        cdef unsigned i
        cdef onvm_meta *meta
        cdef void *hopv
        cdef int32_t hop
        cdef uint64_t key
        for i in range(nok):
            meta = onvm_meta_of(ok[i])
            pin_key_of(ok[i], meta, 0, 0, False, &fkeys[i])
            keys[i] = &fkeys[i]
            sig[i] = meta.flow_hash     # the table's hash of the key (pinkey.pxd flow_key_hash)
        kt_lookup_bulk(&self.flows.keys, keys, sig, nok, pos)
        for i in range(nok):
            # Each flow's last-use time and cached first hop: with a million
            # flows, cache misses that overlap when asked for together.
            if pos[i] >= 0:
                rte_prefetch0(self._line(pos[i]))
        for i in range(nok):
            meta = onvm_meta_of(ok[i])
            self._flow_id(t, ok[i], meta, &fkeys[i], pos[i])
            if meta.si:
                # Tagged: the hop named by (SPI, SI).
                key = hop_key(meta.spi, meta.si)
                if rte_hash_lookup_data(t.hop_index, &key, &hopv) < 0:
                    self.drops[R_UNKNOWN_HOP] += 1
                    rte_pktmbuf_free(ok[i])
                    ok[i] = NULL
                    continue
                meta.hop = <uint16_t><intptr_t>hopv
                if t.hops[meta.hop].rev >= 0:
                    self._learn_reverse(t, ok[i], meta, &t.hops[t.hops[meta.hop].rev])
            else:
                hop = -1
                if t.has_reply and self.pins.live:
                    hop = self._reply_hop(t, ok[i], meta)
                    if hop == -2:
                        self.drops[R_UNKNOWN_HOP] += 1
                        rte_pktmbuf_free(ok[i])
                        ok[i] = NULL
                        continue
                if hop < 0:
                    hop = classify(t, meta, &self._line(meta.flow_id).rec
                                   if meta.flow_id >= 0 else NULL)
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
        cdef rte_mbuf *remote[BURST]
        cdef unsigned i, j, pending = n, s, sent, nremote = 0
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
                elif h.flags & FLAG_PINNED and self._pinned(t, m, meta, h):
                    continue
                elif h.flags & FLAG_KEPT and self._kept(t, m, meta, h):
                    continue
                elif h.kind == HOP_LOCAL:
                    slot = h.slot
                elif h.kind == HOP_REMOTE:
                    remote[nremote] = m
                    nremote += 1
                    continue
                else:
                    self._to_end(t, m, meta, h)
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
            if nremote:
                self._to_remote(t, remote, nremote)
                nremote = 0
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
        # OUT: unchanged, out of a port (bad_port if it is none of ours).
        self._queue_tx(m, meta.destination)
        return False

    cdef void _to_remote(self, tables_t *t, rte_mbuf **pkts, unsigned n) noexcept nogil:
        """Send each packet (all at remote hops) to the host its flow is
        pinned to while that host is still in the hop's list; else to the
        one its consistent hash picks now (weighted), and pin that.  One
        bulk lookup for the burst (host_agent/keytab.pxd)."""
        cdef pin_key_t keys[BURST]
        cdef const void *kp[BURST]
        cdef int32_t pos[BURST]
        cdef bint keyed[BURST]
        cdef unsigned i
        cdef onvm_meta *meta
        cdef hop_t *h
        cdef peer_t *peer
        cdef peer_t *pinned
        cdef aged_rec_t *rec
        for i in range(n):
            meta = onvm_meta_of(pkts[i])
            h = &t.hops[meta.hop]
            keyed[i] = pin_key_of(pkts[i], meta, h.spi, h.si, False, &keys[i])
            if not keyed[i]:
                memset(&keys[i], 0, sizeof(pin_key_t))    # looked up, never used
            kp[i] = &keys[i]
        kt_lookup_keys(&self.pins.keys, kp, n, pos)
        for i in range(n):
            meta = onvm_meta_of(pkts[i])
            h = &t.hops[meta.hop]
            peer = &t.peers[t.remote[h.remote_off + (meta.flow_hash & (SLOTS - 1))]]
            if not keyed[i]:
                pass
            elif pos[i] < 0:
                aged_set(&self.pins, &keys[i], peer.label, self.now)
            else:
                rec = aged_rec(&self.pins, pos[i])
                rec.seen = self.now
                if rec.value != peer.label:
                    pinned = find_peer(t, h.peer_off, h.npeers, rec.value)
                    if pinned != NULL:
                        peer = pinned
                        rec.value = peer.label      # an heir's: pin it there
                    else:
                        rec.value = peer.label     # its host left: re-pick
            self._push_labels(t, pkts[i], meta, peer)

    cdef bint _pinned(self, tables_t *t, rte_mbuf *m, onvm_meta *meta, hop_t *h) noexcept nogil:
        """A reverse hop: the flow's pin sends it back to the host its
        forward packets came from.  True if this decided (sent or dropped);
        False if the hop goes on as it says (no pin, local or end)."""
        cdef pin_key_t k
        cdef int32_t pos = -1
        cdef peer_t *peer
        if pin_key_of(m, meta, h.spi, h.si, False, &k):
            pos = aged_find(&self.pins, &k, self.now)
        if pos >= 0:
            peer = find_peer(t, h.pinned_off, h.npinned, aged_rec(&self.pins, pos).value)
            if peer != NULL:
                aged_rec(&self.pins, pos).value = peer.label     # an heir's: pin it there
                self._push_labels(t, m, meta, peer)
            else:
                self.drops[R_PIN_LOST] += 1
                rte_pktmbuf_free(m)
            return True
        if h.kind == HOP_REMOTE:
            # Which remote instance holds the flow's state is unknown.
            self.drops[R_NO_PIN] += 1
            rte_pktmbuf_free(m)
            return True
        return False

    cdef bint _kept(self, tables_t *t, rte_mbuf *m, onvm_meta *meta, hop_t *h) noexcept nogil:
        """A local hop with "kept" hosts: a flow this host pinned to one of
        them while the hop was remote (an instance draining there, or one
        that holds its state) goes on to it.  True if sent; False: local."""
        cdef pin_key_t k
        cdef int32_t pos = -1
        cdef peer_t *peer
        if pin_key_of(m, meta, h.spi, h.si, False, &k):
            pos = aged_find(&self.pins, &k, self.now)
        if pos < 0:
            return False
        peer = find_peer(t, h.peer_off, h.npeers, aged_rec(&self.pins, pos).value)
        if peer == NULL:
            return False
        aged_rec(&self.pins, pos).value = peer.label
        self._push_labels(t, m, meta, peer)
        return True

    cdef void _learn_reverse(self, tables_t *t, rte_mbuf *m, onvm_meta *meta, hop_t *rh) noexcept nogil:
        """A tagged packet arrived at a hop with "reverse": if it came from
        a host of the reverse hop `rh`'s pinned list, pin its reply there."""
        cdef uint8_t *src = onvm_mtod(m) + 6
        cdef pin_key_t k
        cdef uint16_t j
        cdef peer_t *peer
        for j in range(rh.npinned):
            peer = &t.peers[rh.pinned_off + j]
            if memcmp(peer.mac, src, 6) == 0:
                if pin_key_of(m, meta, rh.spi, rh.si, True, &k):
                    aged_set(&self.pins, &k, peer.label, self.now)
                return

    cdef int32_t _reply_hop(self, tables_t *t, rte_mbuf *m, onvm_meta *meta) noexcept nogil:
        """An untagged packet that is the reply of a flow an end here sent:
        its hop (R, 255), and meta set for it; -1 if it is none, -2 if
        the plan has no hop (R, 255)."""
        cdef pin_key_t k
        cdef int32_t pos
        cdef uint64_t key
        cdef void *hopv
        if not pin_key_of(m, meta, 0, 0, False, &k):
            return -1
        pos = aged_find(&self.pins, &k, self.now)
        if pos < 0:
            return -1
        key = hop_key(aged_rec(&self.pins, pos).value, SI_FIRST)
        if rte_hash_lookup_data(t.hop_index, &key, &hopv) < 0:
            return -2
        return <int32_t><intptr_t>hopv

    cdef void _flow_id(self, tables_t *t, rte_mbuf *m, onvm_meta *meta, pin_key_t *k,
                       int32_t pos) noexcept nogil:
        """meta.flow_id: the position of the flow's key `k` (pinkey.pxd:
        whole addresses, so IPv6 flows whose digests collide are two
        flows): `pos` from the lookup, or added (a reused position's first
        hop forgotten), marked used (FIN/RST: flow_fin_seconds left); -1
        (counted `full`: classified per packet) if there is no room."""
        cdef uint8_t *l4
        cdef bint added
        if pos < 0:
            pos = aged_add(&self.flows, k, self.now, &added)  # new: no first hop
            if added:
                line_new_flow(self._line(pos))
        else:
            self._line(pos).rec.seen = self.now
        meta.flow_id = pos if pos < ONVM_FLOW_ENTRIES else -1
        if meta.flow_id < 0:
            return
        meta.flow_gen = self._line(pos).gen
        if meta.key.proto == 6 and meta.l4_off and m.data_len >= meta.l4_off + 14:
            l4 = onvm_mtod(m) + meta.l4_off
            if l4[13] & 0x05 and self.flows.idle > self.flow_fin_cycles:
                # FIN or RST: the sweep finds it idle flow_fin_seconds from now
                self._line(pos).rec.seen = (self.now - (self.flows.idle - self.flow_fin_cycles)) | 1

    cdef void _push_labels(self, tables_t *t, rte_mbuf *m, onvm_meta *meta, peer_t *peer) noexcept nogil:
        """Push the labels (parser.pxd push_labels) and send to `peer`."""
        if push_labels(m, t.mac, peer, meta):
            self._queue_tx(m, t.uplink)
        else:
            self.drops[R_TX_FULL] += 1
            rte_pktmbuf_free(m)

    cdef void _to_end(self, tables_t *t, rte_mbuf *m, onvm_meta *meta, hop_t *h) noexcept nogil:
        """Out of the end's port: to its MAC, or for a pool to the server
        whose address (IPv4 or IPv6) is the packet's destination; an end
        with "reply" pins the reply of what it sends."""
        cdef uint8_t *d = onvm_mtod(m)
        cdef uint8_t *dst_mac = h.dst_mac
        cdef pin_key_t k
        if h.nservers:
            dst_mac = server_mac_of(t, h, d, meta.key.family, meta.l3_off, m.data_len)
            if dst_mac == NULL:
                self.drops[R_NO_SERVER] += 1
                rte_pktmbuf_free(m)
                return
        if h.reply and pin_key_of(m, meta, 0, 0, True, &k):
            aged_set(&self.pins, &k, h.reply, self.now)
        memcpy(d, dst_mac, 6)
        memcpy(d + 6, t.mac, 6)
        self._queue_tx(m, h.port)

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
        cdef nf_flows_t *f
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
            f = nf_flows_of(obj)
            if f != NULL:
                entry["flow_records"] = {"bytes": f.size, "on_flow_line": f.line_off >= 0}
            instances[iid] = entry
        return {
            "generation": self.generation,
            "processed": self.processed,
            "ports": ports,
            "instances": instances,
            "drops": {DROP_REASONS[i]: self.drops[i] for i in range(N_REASONS)},
            "flows": self.flows.live,
            "flow_table_full": self.flows.full,
            "flow_table": aged_report(&self.flows),
            "probes": {"answered": self.probes_answered, "ignored": self.probes_ignored},
            "pins": aged_report(&self.pins),
            "handoffs": {"sent": self.handoff.sent, "received": self.handoff.received},
        }

    def advance_clock(self, double seconds):
        """The loop's clock runs `seconds` ahead (tests of aging)."""
        self.clock_offset += <uint64_t>(seconds * rte_get_tsc_hz())

    def flow_hashes(self, bytes frame):
        """parser.pxd flow_hashes with the current tables (tests)."""
        return flow_hashes(<tables_t *>onvm_load_ptr(&self.cur), frame)

    def nf_object(self, iid):
        return self._instances[iid][2]

    def open_inbox(self, name, unsigned size):
        """This worker's handoff inbox (host_agent.handoff), made once: its
        address, for set_handoff."""
        return handoff_open(&self.handoff, name, size)

    def set_handoff(self, uint16_t me, inboxes):
        """Worker `me` of len(inboxes) (open_inbox's addresses); before run."""
        handoff_set(&self.handoff, me, inboxes)

    def set_steering(self, list nat, list alias):
        """handoff.pxd steer_swap while the loop runs; the old freed once past it."""
        steer_free(steer_swap(&self.handoff, nat, alias), self._wait_quiescent)
