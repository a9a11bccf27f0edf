/* Receive-side scaling for worker cores (host_agent.workers): a port with
 * several rx queues spreads IPv4/IPv6 TCP, UDP and other IP flows over
 * them by a Toeplitz hash with the symmetric key (0x6d5a repeated: a flow
 * and its reply hash alike, so both reach one worker).  A shim because
 * rte_eth_conf's RSS settings sit in an anonymous struct Cython cannot
 * name.  Returns the hash types the port takes (0: it has no RSS, and the
 * port is left as it was). */
#ifndef ONVM_RSS_H
#define ONVM_RSS_H

#include <rte_ethdev.h>

static uint8_t onvm_rss_key[40] = {
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
};

static inline uint64_t onvm_conf_rss(uint16_t port_id, struct rte_eth_conf *conf)
{
    struct rte_eth_dev_info info;
    uint64_t hf = RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP;
    if (rte_eth_dev_info_get(port_id, &info) != 0)
        return 0;
    hf &= info.flow_type_rss_offloads;
    if (hf == 0)
        return 0;
    conf->rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
    conf->rx_adv_conf.rss_conf.rss_key = onvm_rss_key;
    conf->rx_adv_conf.rss_conf.rss_key_len = sizeof(onvm_rss_key);
    conf->rx_adv_conf.rss_conf.rss_hf = hf;
    return hf;
}

#endif
