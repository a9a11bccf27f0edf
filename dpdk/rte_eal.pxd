# DPDK EAL, lcore and memory declarations (rte_eal.h, rte_lcore.h, rte_errno.h).
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

cdef extern from "rte_lcore.h" nogil:
    unsigned rte_lcore_id()
    int rte_socket_id()

cdef extern from "rte_cycles.h" nogil:
    uint64_t rte_get_tsc_cycles()
    uint64_t rte_get_tsc_hz()
    void rte_delay_us_block(unsigned us)

cdef extern from "rte_dev.h" nogil:
    int rte_dev_probe(const char *devargs)

cdef extern from "rte_malloc.h" nogil:
    void *rte_zmalloc(const char *type, size_t size, unsigned align)
    void rte_free(void *ptr)
