# cython: language_level=3
"""DPDK's EAL in this process (the agent as primary, an NF process as
secondary), the packet pool the host's processes share, and the lcores
the fast path's workers run on; the named DPDK objects every process
makes (rte_hash) get names unique on the host.

The packet pool lives on the NUMA socket of the host's ports (pool_socket
says which when they are on several) and has a cache of CACHE mbufs per
lcore: an lcore (an EAL thread, or a thread that register_thread made
one) takes and gives back mbufs through its cache, a thread that is no
lcore (rte_lcore_id() is LCORE_ID_ANY) through the pool's shared ring
every time.  Workers (host_agent.workers) therefore run on lcores: on the
EAL's own worker lcores (`launch`, DPDK's rte_eal_remote_launch) where
its core list has them, else on threads registered as lcores.

Not here: ports (host_agent.ports), the manager's loop (host_agent.manager).
"""
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.string cimport memset
from libc.stdlib cimport malloc, free
from dpdk.rte_eal cimport *
from dpdk.rte_mbuf cimport *
from dpdk.rte_hash cimport *
from dpdk.rte_ethdev cimport (rte_eth_dev_count_avail, rte_eth_dev_is_valid_port,
    rte_eth_dev_socket_id, RTE_MAX_ETHPORTS)

import glob
import logging
import os
import shutil
import threading
import time

log = logging.getLogger("onvm.eal")

cdef extern from "shim.h" nogil:
    int ONVM_META_SIZE "sizeof(struct onvm_meta)"

POOL_NAME = b"onvm_pktmbuf_pool"
CACHE = 256             # mbufs each lcore keeps of the packet pool (DPDK's max is 512)

cdef object _eal_args = None
cdef rte_mempool *_pool = NULL
cdef unsigned _table_seq = 0


class FastPathError(RuntimeError):
    """DPDK refused something; the message says what and why."""


def dpdk_error(what):
    """A FastPathError for a DPDK call that failed: `what`, then rte_errno."""
    return FastPathError(f"{what}: {rte_strerror(rte_errno).decode()}")


cdef rte_mempool *packet_pool() noexcept nogil:
    return _pool


def eal_running():
    """True once eal_init succeeded in this process (until eal_cleanup)."""
    return _eal_args is not None


def eal_init(args, pool_size=16383):
    """Start DPDK's EAL once per process with `args` (a list of strings,
    program name first) and create the packet pool on the ports' socket
    (pool_socket; a secondary process finds the primary's).  Returns the
    number of ports found.  A second call with the same args does
    nothing."""
    global _eal_args, _pool
    if _eal_args is not None:
        if list(args) != _eal_args:
            raise FastPathError(
                "DPDK's EAL is already running in this process with "
                f"{_eal_args}; it can start only once per process")
        return rte_eth_dev_count_avail()
    cdef int argc = len(args)
    cdef char **argv = <char **>malloc(sizeof(char *) * (argc + 1))
    encoded = [a.encode() for a in args]
    for i, a in enumerate(encoded):
        argv[i] = a
    argv[argc] = NULL
    rc = rte_eal_init(argc, argv)
    free(argv)
    if rc < 0:
        raise dpdk_error(f"rte_eal_init({' '.join(args)})")
    _eal_args = list(args)
    # The metadata rounded up to whole cache lines: the frame then starts
    # on a line of its own (the mbuf, 128 bytes, then this area, then the
    # 128-byte headroom), so its Ethernet, IP and L4 headers are one line
    # to fetch, not two (at 48 bytes the IP header crossed into a line no
    # prefetch asked for).
    cdef uint16_t priv_size = (ONVM_META_SIZE + 63) & ~63
    if rte_eal_process_type() == RTE_PROC_PRIMARY:
        _pool = rte_pktmbuf_pool_create(POOL_NAME, pool_size, CACHE, priv_size,
                                        RTE_MBUF_DEFAULT_BUF_SIZE, ports_socket())
    else:
        _pool = rte_mempool_lookup(POOL_NAME)
    if _pool == NULL:
        raise dpdk_error("packet pool onvm_pktmbuf_pool")
    return rte_eth_dev_count_avail()


def default_eal_args(name, vdevs=(), hugepages=None, memory_mb=256, lcores="0"):
    """EAL arguments for one host: huge pages when the machine has them
    (needed for NF processes), otherwise --no-huge."""
    if hugepages is None:
        hugepages = hugepages_available() >= memory_mb // 2
    args = ["onvm-" + name, "-l", lcores, "--no-pci", "--file-prefix",
            "onvm_" + name, "--log-level", "lib.eal:error", "--no-telemetry"]
    if hugepages:
        args += ["--socket-mem", str(memory_mb)]
    else:
        args += ["--no-huge", "-m", str(memory_mb)]
    for v in vdevs:
        args += ["--vdev", v]
    return args


def tsc_hz():
    """The TSC's cycles a second (rte_get_tsc_hz; the EAL must run)."""
    return rte_get_tsc_hz()


def hugepages_available():
    """Free 2 MiB huge pages, 0 where hugetlbfs is not mounted."""
    try:
        with open("/proc/mounts") as f:
            if not any(line.split()[2] == "hugetlbfs" for line in f):
                return 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("HugePages_Free:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def eal_cleanup():
    """Release DPDK's memory and remove this process's huge page files, so
    runs with many file prefixes do not leak huge pages."""
    global _eal_args, _pool
    if _eal_args is None:
        return
    prefix = None
    if "--file-prefix" in _eal_args:
        prefix = _eal_args[_eal_args.index("--file-prefix") + 1]
    primary = rte_eal_process_type() == RTE_PROC_PRIMARY
    rte_eal_cleanup()
    _eal_args = None
    _pool = NULL
    if primary and prefix:
        remove_runtime_files(prefix)


def remove_runtime_files(prefix):
    """What a primary process leaves: huge page files and its runtime
    directory under /var/run/dpdk."""
    for path in glob.glob(f"/dev/hugepages/{prefix}map_*"):
        try:
            os.unlink(path)
        except OSError:
            pass
    shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)


def pool_counts():
    """(available, in use) mbufs of the packet pool: tests assert they balance."""
    if _pool == NULL:
        return (0, 0)
    return (rte_mempool_avail_count(_pool), rte_mempool_in_use_count(_pool))


def pool_info():
    """The packet pool: its socket, size, per-lcore cache size, mbufs
    available (in its ring and in every lcore's cache, as
    rte_mempool_avail_count counts them), in use, and cached (the caches'
    part of the available); None before eal_init."""
    if _pool == NULL:
        return None
    cdef unsigned lcore, cached = 0
    cdef rte_mempool_cache *cache
    for lcore in range(RTE_MAX_LCORE):
        cache = rte_mempool_default_cache(_pool, lcore)
        if cache != NULL:
            cached += cache.len
    return {"socket": _pool.socket_id, "size": _pool.size, "cache_size": _pool.cache_size,
            "available": rte_mempool_avail_count(_pool),
            "in_use": rte_mempool_in_use_count(_pool), "cached": cached}


def pool_churn(unsigned rounds, unsigned burst=32):
    """Take `burst` mbufs from the packet pool and give them back, `rounds`
    times, from this thread (through its lcore's cache where it has one);
    returns the TSC cycles a round took.  What a NIC's rx refill and tx
    free cost a worker, for BENCHMARKS.md (the ring ports of the benches
    allocate and free nothing once their packets go round)."""
    cdef rte_mbuf *bufs[512]
    cdef unsigned i, failed = 0
    cdef uint64_t t0
    if _pool == NULL or not 0 < burst <= 512:
        raise FastPathError(f"pool_churn: no packet pool, or burst {burst} not 1 to 512")
    with nogil:
        t0 = rte_get_tsc_cycles()
        for i in range(rounds):
            if rte_pktmbuf_alloc_bulk(_pool, bufs, burst) != 0:
                failed += 1
                continue
            rte_pktmbuf_free_bulk(bufs, burst)
        t0 = rte_get_tsc_cycles() - t0
    if failed:
        raise FastPathError(f"pool_churn: the pool had no {burst} mbufs free {failed} times")
    return t0 / max(rounds, 1)


# ------------------------------------------------------------ NUMA sockets

def pool_socket(port_sockets, own):
    """The socket the packet pool goes on, given the ports' sockets (in
    port order, -1 where DPDK does not know one: a vdev, a machine without
    NUMA) and `own` (rte_socket_id() of the thread that starts the EAL):
    the socket most ports are on, a tie going to the lowest port's; `own`
    when no port's is known.  With ports on several sockets, those on the
    others reach the pool across the interconnect: one pool per socket
    would avoid it (not done: one pool is what the NF processes look up)."""
    known = [s for s in port_sockets if s >= 0]
    if not known:
        return own
    return max(known, key=lambda s: (known.count(s), -known.index(s)))


cdef int port_socket(uint16_t port_id) noexcept nogil:
    """A port's NUMA socket, this thread's where DPDK does not know it."""
    cdef int socket = rte_eth_dev_socket_id(port_id)
    return rte_socket_id() if socket == SOCKET_ID_ANY else socket


def ports_socket():
    """pool_socket of the ports the EAL found."""
    sockets = [rte_eth_dev_socket_id(p) for p in range(RTE_MAX_ETHPORTS)
               if rte_eth_dev_is_valid_port(p)]
    return pool_socket(sockets, rte_socket_id())


# ------------------------------------------------------------------ lcores

cdef object _launched = {}          # EAL worker lcore -> the callable it runs
cdef object _failed = {}            # EAL worker lcore -> what its callable raised
_launch_lock = threading.Lock()
_registered = threading.local()     # .lcore: the lcore register_thread gave this thread
cdef unsigned _registrations = 0


cdef int _trampoline(void *arg) noexcept nogil:
    """What an EAL worker lcore runs: the Python callable `arg`, with the
    GIL (which the fast path's loop gives up while it runs)."""
    with gil:
        try:
            (<object>arg)()
        except BaseException as err:
            _failed[rte_lcore_id()] = err
    return 0


def lcore_id():
    """This thread's lcore, None where it is none (LCORE_ID_ANY)."""
    cdef unsigned lcore = rte_lcore_id()
    return None if lcore == LCORE_ID_ANY else lcore


def worker_lcores():
    """{lcore: [cores it runs on]} of the EAL's worker lcores (its core
    list but the main lcore, which is the thread that started the EAL):
    `-l 0-2` gives {1: [1], 2: [2]}; `--lcores 0@0,1@0,2@1` {1: [0], 2: [1]}."""
    out = {}
    cdef cpu_set_t cpus
    cdef int cpu
    cdef unsigned lcore = rte_get_next_lcore(<unsigned>-1, 1, 0)
    while lcore < RTE_MAX_LCORE:
        cpus = rte_lcore_cpuset(lcore)
        out[lcore] = [cpu for cpu in range(CPU_SETSIZE) if CPU_ISSET(cpu, &cpus)]
        lcore = rte_get_next_lcore(lcore, 1, 0)
    return out


def launch(unsigned lcore, fn):
    """Run `fn()` on the EAL's worker lcore `lcore` (rte_eal_remote_launch);
    False if that lcore runs something already.  wait_lcore waits for it
    and raises what it raised.  Launches from several threads are
    serialised here (DPDK's check of the lcore's state and its launch are
    not one step)."""
    if lcore not in worker_lcores():
        raise FastPathError(f"lcore {lcore} is not a worker lcore of this EAL "
                            f"(its worker lcores: {sorted(worker_lcores()) or 'none'})")
    with _launch_lock:
        if lcore in _launched or rte_eal_get_lcore_state(lcore) != LCORE_WAIT:
            return False
        _launched[lcore] = fn
        if rte_eal_remote_launch(_trampoline, <void *>fn, lcore) != 0:
            del _launched[lcore]
            return False
    return True


def lcore_busy(unsigned lcore):
    """True while the EAL worker lcore `lcore` runs what launch gave it."""
    return rte_eal_get_lcore_state(lcore) == LCORE_RUNNING


def wait_lcore(unsigned lcore, double poll=0.0005):
    """Wait (without spinning: DPDK's rte_eal_wait_lcore does) until the
    callable launched on `lcore` returned; re-raise what it raised."""
    if lcore not in _launched:
        return
    while lcore_busy(lcore):
        time.sleep(poll)
    rte_eal_wait_lcore(lcore)
    with _launch_lock:
        del _launched[lcore]
    err = _failed.pop(lcore, None)
    if err is not None:
        raise err


class LcoreThread:
    """A thread's handle (start, is_alive, join) on `target()` run on the
    EAL's worker lcore `lcore` (launch): a loop there takes and frees mbufs
    through that lcore's cache of the packet pool (a plain thread has none:
    every mbuf through the pool's shared ring), and no thread registers,
    which would turn multi-process off (register_thread).  join(timeout)
    returns when it ended or the time is up, as threading's does; what
    `target` raised is logged."""

    def __init__(self, lcore, target, name="lcore"):
        self.lcore, self.target, self.name = lcore, target, name
        self._started = False

    def start(self):
        if not launch(self.lcore, self.target):
            raise FastPathError(f"{self.name}: lcore {self.lcore} runs something already")
        self._started = True

    def is_alive(self):
        return self._started and lcore_busy(self.lcore)

    def join(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive():
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.0005)
        if self._started:
            self._started = False
            try:
                wait_lcore(self.lcore)
            except Exception:
                log.exception("%s on lcore %d failed", self.name, self.lcore)


def register_thread():
    """Make this thread an lcore (rte_thread_register): it then has an lcore
    id and its own cache of the packet pool.  Returns the lcore id (this
    thread's own if it is one already), None where DPDK refused: the
    message is logged.

    DPDK turns multi-process off for good once a thread registers (and
    refuses to register once a secondary has attached): no NF process can
    attach to this EAL afterwards.  The rule: register only threads of a
    fast path that takes no NF processes (host_agent.workers: more than one
    worker refuses them), in a process whose other fast paths take none
    either (the agent and the bench run one fast path a process; the
    tests' in-process EAL runs without huge pages, which NF processes
    need).  multiprocess_off says whether this process did it."""
    global _registrations
    cdef unsigned lcore = rte_lcore_id()
    if lcore != LCORE_ID_ANY:
        return lcore
    if rte_thread_register() != 0:
        log.warning("no lcore for thread %s: %s", threading.current_thread().name,
                    rte_strerror(rte_errno).decode())
        return None
    _registrations += 1
    _registered.lcore = rte_lcore_id()
    return _registered.lcore


def unregister_thread():
    """Give back the lcore register_thread gave this thread, its cache
    flushed into the pool first (so no mbuf waits in a cache nobody uses)."""
    if getattr(_registered, "lcore", None) is None:
        return
    flush_cache()
    rte_thread_unregister()
    _registered.lcore = None


def multiprocess_off():
    """True once a thread of this process registered as an lcore: NF
    processes (DPDK secondaries) can no longer attach (register_thread)."""
    return _registrations > 0


def cache_count(lcore=None):
    """mbufs in the packet pool's cache of `lcore` (default: this thread's),
    None where it has none (not an lcore, or no pool)."""
    cdef rte_mempool_cache *cache
    cdef unsigned which = rte_lcore_id() if lcore is None else lcore
    if _pool == NULL:
        return None
    cache = rte_mempool_default_cache(_pool, which)
    return None if cache == NULL else cache.len


def flush_cache():
    """Put what this thread's lcore keeps in its cache back in the pool's
    ring; returns how many mbufs (0 where it has no cache)."""
    cdef rte_mempool_cache *cache
    cdef unsigned n
    if _pool == NULL:
        return 0
    cache = rte_mempool_default_cache(_pool, rte_lcore_id())
    if cache == NULL:
        return 0
    n = cache.len
    rte_mempool_cache_flush(cache, _pool)
    return n


cdef rte_hash *new_hash(str what, uint32_t entries, uint32_t key_len,
                        rte_hash_function hash_func=NULL) except NULL:
    """An rte_hash for this process.  Its name is unique across the host's
    processes (DPDK keeps hash names in memory the NF processes share) and
    within DPDK's 31 characters.  `hash_func`: the keys' hash (NULL:
    DPDK's CRC32C over the whole key), for a table whose users have each
    key's hash at hand already (rte_hash_lookup_with_hash_bulk)."""
    global _table_seq
    cdef rte_hash_parameters params
    cdef rte_hash *h
    _table_seq += 1
    name = f"{what[:12]}_{os.getpid()}_{_table_seq}".encode()
    memset(&params, 0, sizeof(params))
    params.name = name
    params.entries = entries
    params.key_len = key_len
    params.socket_id = rte_socket_id()
    params.hash_func = hash_func
    h = rte_hash_create(&params)
    if h == NULL:
        raise dpdk_error(f"{what}: rte_hash_create of {entries} entries")
    return h
