# cython: language_level=3
"""The NF library's run side: how an NF's handler is called on a batch
(inline in the manager's loop, or in the NF's own DPDK secondary process
by `serve_nf`), the bridge that lets NFs written in Python see a batch,
and the ACL classifier NFs and the fast path share.

Not here: the interface NFs cimport (nf.pxd), the manager's loop and
parser (host_agent.manager), the registry of NF types (nflib.api).
"""
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_WRITE
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset
from libc.stdlib cimport calloc, free
from dpdk.rte_eal cimport rte_socket_id
from dpdk.rte_ring cimport *
from dpdk.rte_mbuf cimport rte_pktmbuf_free_bulk
from dpdk.rte_acl cimport *

import ipaddress
import logging
import os

from nflib.eal import FastPathError, dpdk_error

log = logging.getLogger("onvm.nflib")

cdef extern from "sched.h" nogil:
    int sched_yield()

DEF BURST = 32

# Verdicts, for Python NFs and tests.
DROP = ONVM_ACTION_DROP
NEXT = ONVM_ACTION_NEXT
TONF = ONVM_ACTION_TONF
OUT = ONVM_ACTION_OUT


# ------------------------------------------------------------ the loop

cdef class NativeNF:
    """Base of NFs written in Cython (see nfs/basic.pyx)."""
    pass


cdef void run_packets(void *handlers, rte_mbuf **pkts, unsigned n) noexcept nogil:
    """The library's loop for an NF that handles one packet at a time."""
    cdef nf_handlers_t *h = <nf_handlers_t *>handlers
    if h.before != NULL:
        h.before(h.ctx, pkts, n)
    each_packet(h.packet, h.ctx, pkts, n)


cdef int bind_nf(object nf, nf_batch_fn *fn, void **ctx) except -1:
    """The C function and context that run `nf` (native or Python) on a
    batch, for whoever owns the packets (manager loop or serve_nf)."""
    cdef NativeNF native
    if isinstance(nf, NativeNF):
        native = <NativeNF>nf
        if native.handlers.batch != NULL:
            fn[0] = native.handlers.batch
            ctx[0] = native.handlers.ctx
        elif native.handlers.packet != NULL:
            fn[0] = run_packets
            ctx[0] = <void *>&native.handlers
        else:
            raise FastPathError(f"{nf!r} set neither a batch nor a packet handler")
    else:
        if not callable(getattr(nf, "handle", None)):
            raise FastPathError(f"{nf!r} has no handle(batch) method")
        nf._onvm_batch = Batch()
        fn[0] = python_nf_batch
        ctx[0] = <void *>nf
    return 0


# --------------------------------------------------------- Python NFs

cdef class Batch:
    """The packets an NF written in Python sees in one call.  Valid only
    during that call; every packet's verdict starts as NEXT."""
    cdef rte_mbuf **pkts
    cdef unsigned n

    def __len__(self):
        return self.n

    def data(self, unsigned i):
        """The frame's bytes, writable, without a copy."""
        cdef rte_mbuf *m = self.pkts[i]
        return PyMemoryView_FromMemory(<char *>onvm_mtod(m), m.data_len,
                                       PyBUF_WRITE)

    def key(self, unsigned i):
        """(proto, src, dst, sport, dport), addresses as ints, host order."""
        cdef onvm_meta *meta = onvm_meta_of(self.pkts[i])
        return (meta.key.proto, bswap32(meta.key.src), bswap32(meta.key.dst),
                bswap16(meta.key.sport), bswap16(meta.key.dport))

    def proto(self, unsigned i):
        return onvm_meta_of(self.pkts[i]).key.proto

    def flow_id(self, unsigned i):
        return onvm_meta_of(self.pkts[i]).flow_id

    def l4_offset(self, unsigned i):
        """Offset of the TCP/UDP/ICMP header in data(i), or -1."""
        return pkt_l4(onvm_meta_of(self.pkts[i]))

    def spi_si(self, unsigned i):
        cdef onvm_meta *meta = onvm_meta_of(self.pkts[i])
        return meta.spi, meta.si

    def drop(self, unsigned i):
        onvm_meta_of(self.pkts[i]).action = ONVM_ACTION_DROP

    def next(self, unsigned i):
        onvm_meta_of(self.pkts[i]).action = ONVM_ACTION_NEXT

    def out(self, unsigned i, uint16_t port):
        cdef onvm_meta *meta = onvm_meta_of(self.pkts[i])
        meta.action = ONVM_ACTION_OUT
        meta.destination = port

    def to_nf(self, unsigned i, uint16_t instance):
        cdef onvm_meta *meta = onvm_meta_of(self.pkts[i])
        meta.action = ONVM_ACTION_TONF
        meta.destination = instance


cdef void python_nf_batch(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil:
    with gil:
        nf = <object>ctx
        batch = nf._onvm_batch
        (<Batch>batch).pkts = pkts
        (<Batch>batch).n = n
        try:
            nf.handle(batch)
        except BaseException:
            # A broken NF must not take the host down: its packets are
            # dropped and counted, the exception is logged once per batch.
            log.exception("NF %s raised; dropping its batch of %d", nf, n)
            for i in range(n):
                onvm_meta_of(pkts[i]).action = ONVM_ACTION_DROP
        (<Batch>batch).n = 0


# ---------------------------------------------------------- NF processes

def ring_names(host, iid):
    """Names of the rings between the manager of `host` and the process of
    its instance `iid`: (to the NF, back from the NF)."""
    base = f"onvm_{host}_{iid}"[:24]
    return base + "_in", base + "_out"


cdef volatile int _serve_stop = 0


def stop_serving():
    global _serve_stop
    _serve_stop = 1


def serve_nf(nf, host, uint16_t iid, double seconds=0.0):
    """The loop of an NF running as its own DPDK secondary process: take
    bursts from the manager's ring, run the NF, give them back.  Never
    drops: when the way back is full it waits.  Returns packets handled."""
    global _serve_stop
    cdef nf_batch_fn fn
    cdef void *ctx
    cdef rte_ring *rin
    cdef rte_ring *rout
    cdef rte_mbuf *pkts[BURST]
    cdef unsigned n, sent
    cdef uint64_t handled = 0
    cdef uint64_t hz = rte_get_tsc_hz()
    cdef uint64_t until = rte_get_tsc_cycles() + <uint64_t>(seconds * hz) if seconds > 0 else 0
    in_name, out_name = ring_names(host, iid)
    rin = rte_ring_lookup(in_name.encode())
    rout = rte_ring_lookup(out_name.encode())
    if rin == NULL or rout == NULL:
        raise FastPathError(
            f"rings {in_name}/{out_name} not found: is the agent of host {host} "
            f"running instance {iid} in process mode, with the same --file-prefix?")
    bind_nf(nf, &fn, &ctx)
    _serve_stop = 0
    cdef unsigned polls = 0
    with nogil:
        while not _serve_stop:
            polls += 1
            if (polls & 0xfff) == 0:
                with gil:
                    PyErr_CheckSignals()    # SIGTERM's handler sets _serve_stop
            n = rte_ring_dequeue_burst(rin, <void **>pkts, BURST, NULL)
            if n == 0:
                if until and rte_get_tsc_cycles() >= until:
                    break
                # NF processes may share a core (2-core hosts): give it up
                # while idle instead of spinning through the time slice.
                sched_yield()
                continue
            fn(ctx, pkts, n)
            sent = 0
            while sent < n and not _serve_stop:
                sent += rte_ring_enqueue_burst(rout, <void **>&pkts[sent], n - sent, NULL)
            if sent < n:
                rte_pktmbuf_free_bulk(&pkts[sent], n - sent)
            handled += n
    return handled


# -------------------------------------------------------------------- ACL

cdef unsigned _acl_seq = 0

cdef class Acl:
    """rte_acl over struct onvm_flow_key.  Rules are tuples
    (proto or None, src network or None, dst network or None,
     (sport_lo, sport_hi), (dport_lo, dport_hi)); the first matching rule
    wins, as in a rule file; classify gives rule index + 1, 0 for none."""

    def __cinit__(self, rules):
        global _acl_seq
        cdef rte_acl_param param
        cdef rte_acl_config cfg
        cdef onvm_acl_rule *r
        cdef int size = RTE_ACL_RULE_SZ(5)
        cdef char *buf
        cdef int idx
        rules = list(rules)
        self.nrules = len(rules)
        self.ctx = NULL
        if not rules:
            return
        _acl_seq += 1
        # DPDK keeps ACL contexts in a list shared by every process of the
        # host: the name must be unique across the agent and NF processes.
        name = f"acl_{os.getpid()}_{_acl_seq}".encode()
        memset(&param, 0, sizeof(param))
        param.name = name
        param.socket_id = rte_socket_id()
        param.rule_size = size
        param.max_rule_num = len(rules)
        self.ctx = rte_acl_create(&param)
        if self.ctx == NULL:
            raise dpdk_error("rte_acl_create")
        buf = <char *>calloc(len(rules), size)
        try:
            for idx in range(self.nrules):
                r = <onvm_acl_rule *>(buf + idx * size)
                _acl_fill(r, rules[idx], idx, self.nrules)
            if rte_acl_add_rules(self.ctx, buf, len(rules)) != 0:
                raise dpdk_error("rte_acl_add_rules")
        finally:
            free(buf)
        memset(&cfg, 0, sizeof(cfg))
        cfg.num_categories = 1
        cfg.num_fields = 5
        _acl_defs(&cfg)
        if rte_acl_build(self.ctx, &cfg) != 0:
            raise dpdk_error("rte_acl_build")

    def __dealloc__(self):
        if self.ctx != NULL:
            rte_acl_free(self.ctx)

    cdef void classify(self, const uint8_t **data, uint32_t *results,
                       unsigned n) noexcept nogil:
        if self.ctx == NULL:
            memset(results, 0, n * sizeof(uint32_t))
        else:
            rte_acl_classify(self.ctx, data, results, n, 1)

    def match(self, proto, src, dst, sport, dport):
        """Which rule (index) a 5-tuple hits, or None: for tests and tools."""
        cdef onvm_flow_key key
        cdef const uint8_t *p = <const uint8_t *>&key
        cdef uint32_t res = 0
        memset(&key, 0, sizeof(key))
        key.proto = proto
        key.family = 4
        key.src = bswap32(int(ipaddress.IPv4Address(src)))
        key.dst = bswap32(int(ipaddress.IPv4Address(dst)))
        key.sport = bswap16(sport)
        key.dport = bswap16(dport)
        self.classify(&p, &res, 1)
        return None if res == 0 else res - 1


cdef void _acl_defs(rte_acl_config *cfg) except *:
    # struct onvm_flow_key as rte_acl fields: (type, size, input, offset).
    # The first field must be one byte; the two ports share a 4-byte input.
    fields = ((RTE_ACL_FIELD_TYPE_BITMASK, 1, 0, 0),   # proto
              (RTE_ACL_FIELD_TYPE_MASK, 4, 1, 4),      # src
              (RTE_ACL_FIELD_TYPE_MASK, 4, 2, 8),      # dst
              (RTE_ACL_FIELD_TYPE_RANGE, 2, 3, 12),    # sport
              (RTE_ACL_FIELD_TYPE_RANGE, 2, 3, 14))    # dport
    for i, (kind, size, input_index, offset) in enumerate(fields):
        cfg.defs[i].type = kind
        cfg.defs[i].size = size
        cfg.defs[i].field_index = i
        cfg.defs[i].input_index = input_index
        cfg.defs[i].offset = offset


cdef void _acl_fill(onvm_acl_rule *r, rule, int index, int total) except *:
    proto, src, dst, sports, dports = rule
    r.data.category_mask = 1
    # rte_acl picks the highest priority: earlier rules must win.
    r.data.priority = total - index
    r.data.userdata = index + 1
    if proto is None:
        onvm_acl_field_u8(r, 0, 0, 0)
    else:
        onvm_acl_field_u8(r, 0, proto, 0xff)
    for field, net in ((1, src), (2, dst)):
        if net is None:
            onvm_acl_field_u32(r, field, 0, 0)
        else:
            net = ipaddress.IPv4Network(net, strict=False)
            onvm_acl_field_u32(r, field, int(net.network_address), net.prefixlen)
    onvm_acl_field_u16(r, 3, sports[0], sports[1])
    onvm_acl_field_u16(r, 4, dports[0], dports[1])
