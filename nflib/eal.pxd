# DPDK's EAL and the packet pool of this process, for the other modules of
# nflib and host_agent.
from libc.stdint cimport uint16_t, uint32_t
from dpdk.rte_mbuf cimport rte_mempool
from dpdk.rte_hash cimport rte_hash, rte_hash_function

cdef rte_mempool *packet_pool() noexcept nogil
cdef int port_socket(uint16_t port_id) noexcept nogil
cdef rte_hash *new_hash(str what, uint32_t entries, uint32_t key_len,
                        rte_hash_function hash_func=*) except NULL
