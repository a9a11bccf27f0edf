# Ports (rte_ethdev.h, rte_eth_ring.h).
from libc.stdint cimport uint16_t, uint64_t, uint8_t
from dpdk.rte_mbuf cimport rte_mbuf, rte_mempool
from dpdk.rte_ring cimport rte_ring

cdef extern from "rte_ethdev.h" nogil:
    struct rte_ether_addr:
        uint8_t addr_bytes[6]
    struct rte_eth_conf:
        pass
    struct rte_eth_stats:
        uint64_t ipackets
        uint64_t opackets
        uint64_t imissed
        uint64_t ierrors
        uint64_t oerrors
        uint64_t rx_nombuf
    uint16_t rte_eth_dev_count_avail()
    int rte_eth_dev_is_valid_port(uint16_t port_id)
    int rte_eth_dev_socket_id(uint16_t port_id)     # -1 (SOCKET_ID_ANY): not known
    int rte_eth_dev_configure(uint16_t port_id, uint16_t nb_rx_queue,
                              uint16_t nb_tx_queue, const rte_eth_conf *eth_conf)
    int rte_eth_rx_queue_setup(uint16_t port_id, uint16_t rx_queue_id,
                               uint16_t nb_rx_desc, unsigned socket_id,
                               const void *rx_conf, rte_mempool *mb_pool)
    int rte_eth_tx_queue_setup(uint16_t port_id, uint16_t tx_queue_id,
                               uint16_t nb_tx_desc, unsigned socket_id,
                               const void *tx_conf)
    int rte_eth_dev_start(uint16_t port_id)
    int rte_eth_dev_stop(uint16_t port_id)
    int rte_eth_dev_close(uint16_t port_id)
    int rte_eth_promiscuous_enable(uint16_t port_id)
    int rte_eth_macaddr_get(uint16_t port_id, rte_ether_addr *mac_addr)
    int rte_eth_dev_get_name_by_port(uint16_t port_id, char *name)
    int rte_eth_dev_get_port_by_name(const char *name, uint16_t *port_id)
    int rte_eth_stats_get(uint16_t port_id, rte_eth_stats *stats)
    uint16_t rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                              rte_mbuf **rx_pkts, uint16_t nb_pkts)
    uint16_t rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                              rte_mbuf **tx_pkts, uint16_t nb_pkts)
    int RTE_MAX_ETHPORTS
    int RTE_ETH_NAME_MAX_LEN

cdef extern from "rte_eth_ring.h" nogil:
    int rte_eth_from_rings(const char *name, rte_ring * const *rx_queues,
                           unsigned nb_rx_queues, rte_ring * const *tx_queues,
                           unsigned nb_tx_queues, unsigned numa_node)
