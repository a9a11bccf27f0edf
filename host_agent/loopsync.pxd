# How Python and the manager's loop thread meet: the atomics of dpdk/shim.h,
# and hold (the loop stands still between two iterations while Python reads
# NF tables in chunks, host_agent.replicas): microseconds, where stopping
# the loop's thread takes a thread's start.
# Not here: the loop itself (host_agent.manager).
from libc.stdint cimport uint64_t
from dpdk.rte_eal cimport rte_get_tsc_cycles

cdef extern from "shim.h" nogil:
    void *onvm_load_ptr(void **p)
    void onvm_store_ptr(void **p, void *v)
    uint64_t onvm_load_u64(uint64_t *p)
    void onvm_store_u64(uint64_t *p, uint64_t v)
    void onvm_pause()


cdef inline bint hold_wait(uint64_t *flag, uint64_t *held, bint *running,
                           uint64_t deadline) noexcept nogil:
    """Ask the loop to stand still (`flag`) and wait until it does (`held`)
    or does not run; False (the ask taken back) if TSC `deadline` passed."""
    onvm_store_u64(flag, 1)
    while onvm_load_u64(held) == 0 and running[0]:
        if rte_get_tsc_cycles() > deadline:
            onvm_store_u64(flag, 0)
            return False
        onvm_pause()
    return True


cdef inline void hold_point(uint64_t *flag, uint64_t *held, uint64_t *stop) noexcept nogil:
    """In the loop, between iterations: stand still while asked to (and
    not asked to stop)."""
    if onvm_load_u64(flag):
        onvm_store_u64(held, 1)
        while onvm_load_u64(flag) and onvm_load_u64(stop) == 0:
            onvm_pause()
        onvm_store_u64(held, 0)
