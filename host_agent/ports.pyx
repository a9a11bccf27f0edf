# cython: language_level=3
"""The host's ports: DPDK vdevs probed at run time, ports in memory backed
by rte_rings (for tests, benchmarks and the demo), and a handle on a ring
to put packets in and take them out.

Not here: polling ports (host_agent.manager), EAL and the packet pool
(nflib.eal).
"""
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from dpdk.rte_eal cimport rte_socket_id, rte_dev_probe, rte_strerror
from dpdk.rte_mbuf cimport (rte_mbuf, rte_pktmbuf_alloc, rte_pktmbuf_append,
    rte_pktmbuf_free, onvm_mtod)
from dpdk.rte_ring cimport *
from dpdk.rte_ethdev cimport *
from dpdk.rte_eal cimport rte_get_tsc_cycles
from nflib.eal cimport packet_pool, port_socket
from host_agent.benchflows cimport bench_t, bench_rewrite, bench_set_table

from nflib.eal import FastPathError, dpdk_error

cdef extern from "rss.h" nogil:
    uint64_t onvm_conf_rss(uint16_t port_id, rte_eth_conf *conf)


_started = {}       # port id -> its queues, while started here


def start_port(uint16_t port_id, uint16_t queues=1):
    """Configure and start a port for the manager's loop: `queues` rx and
    tx queues (one per worker, host_agent.workers) of 1024 descriptors,
    promiscuous; with several, flows spread over them by symmetric RSS
    where the port has RSS (dpdk/rss.h; ports in memory do not: what
    fills their rings spreads).  The queues' descriptors go on the port's
    NUMA socket (this thread's where DPDK knows none), as does the packet
    pool (nflib.eal.pool_socket).  A port started already (by another
    worker's Manager) is left as it is."""
    cdef rte_eth_conf conf
    cdef int err
    cdef int socket = port_socket(port_id)
    if port_id in _started:
        return _started[port_id]
    memset(&conf, 0, sizeof(conf))
    if queues > 1:
        onvm_conf_rss(port_id, &conf)
    steps = ["configure"] + ["rx queue setup"] * queues + ["tx queue setup"] * queues + ["start"]
    for i, what in enumerate(steps):
        q = (i - 1) % queues
        if what == "configure":
            err = rte_eth_dev_configure(port_id, queues, queues, &conf)
        elif what == "rx queue setup":
            err = rte_eth_rx_queue_setup(port_id, q, 1024, socket, NULL, packet_pool())
        elif what == "tx queue setup":
            err = rte_eth_tx_queue_setup(port_id, q, 1024, socket, NULL)
        else:
            err = rte_eth_dev_start(port_id)
        if err < 0:
            raise FastPathError(f"port {port_id} ({port_name(port_id)}): {what} failed: "
                                f"{rte_strerror(-err).decode()}")
    rte_eth_promiscuous_enable(port_id)
    _started[port_id] = queues
    return queues


def valid_ports():
    """The ids of the ports DPDK found (probed vdevs, allowed NICs)."""
    return [p for p in range(RTE_MAX_ETHPORTS) if rte_eth_dev_is_valid_port(p)]


def stop_port(uint16_t port_id):
    """Stop and close a port (flushes pcap files); a closed one is left."""
    if _started.pop(port_id, None) is not None:
        rte_eth_dev_stop(port_id)
        rte_eth_dev_close(port_id)


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


def ring_queues_port(name, unsigned queues, bint loop=True, count=8192):
    """A port in memory with `queues` rx and tx queues, each on rings of
    its own: with `loop`, queue q's rx and tx share one ring (what worker
    q sends comes back to it), else what a test puts in rx[q] arrives on
    queue q and what queue q sends lands in tx[q].  Returns (port id, rx
    Rings, tx Rings)."""
    cdef rte_ring *rx[64]
    cdef rte_ring *tx[64]
    if not 0 < queues <= 64:
        raise FastPathError(f"{name}: 1 to 64 queues, not {queues}")
    rxs, txs = [], []
    for q in range(queues):
        rx[q] = rte_ring_create(f"{name}_rx{q}".encode(), count, rte_socket_id(),
                                RING_F_SP_ENQ | RING_F_SC_DEQ)
        tx[q] = rx[q] if loop else rte_ring_create(f"{name}_tx{q}".encode(), count,
                                                   rte_socket_id(), RING_F_SP_ENQ | RING_F_SC_DEQ)
        if rx[q] == NULL or tx[q] == NULL:
            raise dpdk_error(f"rte_ring_create({name}, queue {q})")
        rxs.append(Ring())
        (<Ring>rxs[q]).r = rx[q]
        txs.append(rxs[q] if loop else Ring())
        (<Ring>txs[q]).r = tx[q]
    port = rte_eth_from_rings(("net_" + name).encode(), rx, queues, tx, queues,
                              rte_socket_id())
    if port < 0:
        raise dpdk_error(f"rte_eth_from_rings({name})")
    return port, rxs, txs


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


def rewrite_cycles(frames, uint32_t flows, table=None, bint sliding=False,
                   unsigned trials=50, unsigned reps=100):
    """TSC cycles a packet that `onvm bench fastpath`'s rewriting of looped
    packets to further flows (host_agent/benchflows.pxd) costs by itself,
    drawn as the run drew them (`table`: --zipf's; `sliding`: a window
    that moves, --new-flows): on one burst of `frames` kept in cache, so
    that the fast path is still charged with fetching each packet it
    reads; the least of `trials` timings of `reps` rewrites (one the
    scheduler broke into is not the work's).  The bench reports the fast
    path's figures without it: the issue's packets are made outside the
    loop."""
    cdef rte_mbuf *pkts[32]
    cdef unsigned i, k, n = 0
    cdef uint64_t t0, spent, best = <uint64_t>-1
    cdef uint64_t base = 1 if sliding else 0     # the window's offset: any but 0 takes its path
    cdef bench_t b
    cdef bytes f
    memset(&b, 0, sizeof(b))
    try:
        bench_set_table(&b, table)
        for f in list(frames)[:32]:
            pkts[n] = rte_pktmbuf_alloc(packet_pool())
            if pkts[n] == NULL:
                raise FastPathError("rewrite_cycles: no mbuf")
            n += 1
            memcpy(rte_pktmbuf_append(pkts[n - 1], len(f)), <const char *>f, len(f))
        bench_rewrite(pkts, n, &b.cursor, flows, b.table, b.table_len, base)    # into cache
        for k in range(trials):
            t0 = rte_get_tsc_cycles()
            for i in range(reps):
                bench_rewrite(pkts, n, &b.cursor, flows, b.table, b.table_len, base)
            spent = rte_get_tsc_cycles() - t0
            best = min(best, spent)
    finally:
        bench_set_table(&b, None)
        for i in range(n):
            rte_pktmbuf_free(pkts[i])
    return <double>best / max(reps * n, 1)


def port_name(uint16_t port):
    cdef char name[64]
    if rte_eth_dev_get_name_by_port(port, name) != 0:
        return f"port{port}"
    return name.decode()
