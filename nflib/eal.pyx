# cython: language_level=3
"""DPDK's EAL in this process (the agent as primary, an NF process as
secondary) and the packet pool the host's processes share; the named DPDK
objects every process makes (rte_hash) get names unique on the host.

Not here: ports (host_agent.ports), the manager's loop (host_agent.manager).
"""
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memset
from libc.stdlib cimport malloc, free
from dpdk.rte_eal cimport *
from dpdk.rte_mbuf cimport *
from dpdk.rte_hash cimport *
from dpdk.rte_ethdev cimport rte_eth_dev_count_avail

import glob
import os
import shutil

cdef extern from "shim.h" nogil:
    int ONVM_META_SIZE "sizeof(struct onvm_meta)"

POOL_NAME = b"onvm_pktmbuf_pool"

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
    program name first) and create the packet pool (a secondary process
    finds the primary's).  Returns the number of ports found.  A second
    call with the same args does nothing."""
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
    cdef uint16_t priv_size = (ONVM_META_SIZE + 7) & ~7
    if rte_eal_process_type() == RTE_PROC_PRIMARY:
        _pool = rte_pktmbuf_pool_create(POOL_NAME, pool_size, 256, priv_size,
                                        RTE_MBUF_DEFAULT_BUF_SIZE, rte_socket_id())
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


cdef rte_hash *new_hash(str what, uint32_t entries, uint32_t key_len) except NULL:
    """An rte_hash for this process.  Its name is unique across the host's
    processes (DPDK keeps hash names in memory the NF processes share) and
    within DPDK's 31 characters."""
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
    h = rte_hash_create(&params)
    if h == NULL:
        raise dpdk_error(f"{what}: rte_hash_create of {entries} entries")
    return h
