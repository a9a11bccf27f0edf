# DPDK EAL, lcore, launch and memory declarations (rte_eal.h, rte_lcore.h,
# rte_launch.h, rte_errno.h, rte_memory.h).
from libc.stdint cimport uint64_t

cdef extern from "rte_eal.h" nogil:
    int rte_eal_init(int argc, char **argv)
    int rte_eal_cleanup()
    int rte_eal_process_type()
    int RTE_PROC_PRIMARY
    int RTE_PROC_SECONDARY

cdef extern from "rte_errno.h" nogil:
    int rte_errno
    const char *rte_strerror(int errnum)

cdef extern from "sched.h" nogil:
    ctypedef struct cpu_set_t:
        pass
    int CPU_SETSIZE
    int CPU_ISSET(int cpu, cpu_set_t *cpus)

cdef extern from "rte_lcore.h" nogil:
    unsigned LCORE_ID_ANY
    unsigned RTE_MAX_LCORE
    unsigned rte_lcore_id()
    int rte_socket_id()
    unsigned rte_get_main_lcore()
    unsigned rte_lcore_count()
    unsigned rte_get_next_lcore(unsigned i, int skip_main, int wrap)
    int rte_lcore_to_cpu_id(int lcore_id)
    cpu_set_t rte_lcore_cpuset(unsigned lcore_id)     # the cores it may run on
    unsigned rte_lcore_to_socket_id(unsigned lcore_id)
    # A non-EAL thread as an lcore (not experimental in 22.11).  It turns
    # DPDK's multi-process off: see nflib.eal.register_thread.
    int rte_thread_register()
    void rte_thread_unregister()

cdef extern from "rte_launch.h" nogil:
    ctypedef int (*lcore_function_t)(void *)
    enum rte_lcore_state_t:
        LCORE_WAIT "WAIT"
        LCORE_RUNNING "RUNNING"
    int rte_eal_remote_launch(lcore_function_t f, void *arg, unsigned worker_id)
    rte_lcore_state_t rte_eal_get_lcore_state(unsigned worker_id)
    int rte_eal_wait_lcore(unsigned worker_id)

cdef extern from "rte_memory.h" nogil:
    int SOCKET_ID_ANY

cdef extern from "rte_cycles.h" nogil:
    uint64_t rte_get_tsc_cycles()
    uint64_t rte_get_tsc_hz()
    void rte_delay_us_block(unsigned us)

cdef extern from "rte_dev.h" nogil:
    int rte_dev_probe(const char *devargs)

cdef extern from "rte_malloc.h" nogil:
    void *rte_zmalloc(const char *type, size_t size, unsigned align)
    void rte_free(void *ptr)
