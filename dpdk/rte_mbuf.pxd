# Packet buffers and pools (rte_mbuf.h, rte_mempool.h) and the shared shim.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t

cdef extern from "rte_mempool.h" nogil:
    struct rte_mempool:
        int socket_id
        uint32_t size
        uint32_t cache_size
    struct rte_mempool_cache:
        uint32_t size
        uint32_t len
    # NULL where the pool has no caches or lcore_id is LCORE_ID_ANY
    rte_mempool_cache *rte_mempool_default_cache(rte_mempool *mp, unsigned lcore_id)
    void rte_mempool_cache_flush(rte_mempool_cache *cache, rte_mempool *mp)
    rte_mempool *rte_mempool_lookup(const char *name)
    unsigned rte_mempool_avail_count(const rte_mempool *mp)
    unsigned rte_mempool_in_use_count(const rte_mempool *mp)
    void rte_mempool_free(rte_mempool *mp)

cdef extern from "rte_mbuf.h" nogil:
    struct rte_mbuf:
        uint16_t data_len
        uint32_t pkt_len
        uint16_t port
        uint16_t nb_segs
        uint16_t data_off
    rte_mempool *rte_pktmbuf_pool_create(const char *name, unsigned n,
        unsigned cache_size, uint16_t priv_size, uint16_t data_room_size,
        int socket_id)
    rte_mbuf *rte_pktmbuf_alloc(rte_mempool *mp)
    int rte_pktmbuf_alloc_bulk(rte_mempool *pool, rte_mbuf **mbufs, unsigned count)
    void rte_pktmbuf_free(rte_mbuf *m)
    void rte_pktmbuf_free_bulk(rte_mbuf **mbufs, unsigned count)
    char *rte_pktmbuf_prepend(rte_mbuf *m, uint16_t len)
    char *rte_pktmbuf_append(rte_mbuf *m, uint16_t len)
    char *rte_pktmbuf_adj(rte_mbuf *m, uint16_t len)
    uint16_t rte_pktmbuf_headroom(const rte_mbuf *m)
    uint16_t RTE_MBUF_DEFAULT_BUF_SIZE

cdef extern from "shim.h" nogil:
    int ONVM_FLOW_ENTRIES
    uint8_t ONVM_ACTION_DROP
    uint8_t ONVM_ACTION_NEXT
    uint8_t ONVM_ACTION_TONF
    uint8_t ONVM_ACTION_OUT

    struct onvm_flow_key:
        uint8_t proto
        uint8_t family
        uint32_t src
        uint32_t dst
        uint16_t sport
        uint16_t dport

    struct onvm_meta:
        onvm_flow_key key
        uint32_t flow_hash
        int32_t flow_id
        uint32_t spi
        uint16_t hop
        uint16_t destination
        uint8_t si
        uint8_t action
        uint16_t l3_off
        uint16_t in_port
        uint16_t nf_hops
        uint16_t l4_off
        uint32_t flow_gen

    onvm_meta *onvm_meta_of(rte_mbuf *m)
    uint8_t *onvm_mtod(rte_mbuf *m)
