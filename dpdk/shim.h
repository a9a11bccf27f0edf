/* Small C shims for what Cython cannot express: DPDK's type-taking macros,
 * and the structs the fast path and the NFs share (per-packet metadata kept
 * in the mbuf's private area, the flow key, the ACL rule layout). */
#ifndef ONVM_SHIM_H
#define ONVM_SHIM_H

#include <stdint.h>
#include <rte_mbuf.h>
#include <rte_acl.h>

/* Flow ids are 0 .. ONVM_FLOW_ENTRIES - 1 (the agent's default flow table
 * size, --flow-entries), and NFs may keep per-flow state in arrays of this
 * size (calloc'd: pages are touched only as flows come). */
#define ONVM_FLOW_ENTRIES 1048576

/* 8 bytes read from memory of any type (host_agent/keytab.pxd compares
 * keys a word at a time): GCC keeps such a load after the writes of the
 * key's fields, as it need not for a plain uint64_t. */
typedef uint64_t __attribute__((__may_alias__)) onvm_u64_any;

/* Verdicts an NF gives a packet (OpenNetVM's actions). */
#define ONVM_ACTION_DROP 0
#define ONVM_ACTION_NEXT 1   /* next NF of the chain: SI - 1 */
#define ONVM_ACTION_TONF 2   /* to the local instance in `destination` */
#define ONVM_ACTION_OUT  3   /* out of port `destination`, unchanged */

/* 5-tuple in network byte order; also the rte_hash key and the rte_acl input.
 * IPv6 addresses are folded to 32-bit digests (family = 6). */
struct onvm_flow_key {
    uint8_t  proto;
    uint8_t  family;
    uint8_t  pad[2];
    uint32_t src;
    uint32_t dst;
    uint16_t sport;
    uint16_t dport;
};

/* Per-packet metadata in the mbuf's private area, like OpenNetVM's. */
struct onvm_meta {
    struct onvm_flow_key key;
    uint32_t flow_hash;    /* CRC of key: picks remote hosts and instances */
    int32_t  flow_id;      /* position in the host's flow table, -1 if none */
    uint32_t spi;
    uint16_t hop;          /* index of the current hop in the plan tables */
    uint16_t destination;  /* port or instance, with OUT / TONF */
    uint8_t  si;
    uint8_t  action;
    uint16_t l3_off;       /* offset of the IP header in the frame */
    uint16_t in_port;
    uint16_t nf_hops;      /* NFs visited on this host (loop guard) */
    uint16_t l4_off;       /* offset of the TCP/UDP/ICMP header, 0 if none
                            * (a non-first IPv4 fragment) */
    uint32_t flow_gen;     /* the flow's incarnation at flow_id (ids are reused
                            * as flows age out): (flow_id, flow_gen) names one
                            * flow for the host's life; never 0 with a flow_id */
};

static inline struct onvm_meta *onvm_meta_of(struct rte_mbuf *m) {
    return (struct onvm_meta *)rte_mbuf_to_priv(m);
}

static inline uint8_t *onvm_mtod(struct rte_mbuf *m) {
    return rte_pktmbuf_mtod(m, uint8_t *);
}

/* Five ACL fields: proto, src, dst, sport, dport over struct onvm_flow_key. */
RTE_ACL_RULE_DEF(onvm_acl_rule, 5);

static inline void onvm_acl_field_u8(struct onvm_acl_rule *r, int i, uint8_t v, uint8_t m) {
    r->field[i].value.u8 = v; r->field[i].mask_range.u8 = m;
}
static inline void onvm_acl_field_u32(struct onvm_acl_rule *r, int i, uint32_t v, uint32_t m) {
    r->field[i].value.u32 = v; r->field[i].mask_range.u32 = m;
}
static inline void onvm_acl_field_u16(struct onvm_acl_rule *r, int i, uint16_t lo, uint16_t hi) {
    r->field[i].value.u16 = lo; r->field[i].mask_range.u16 = hi;
}



/* The manager reads its tables pointer once per burst; the control thread
 * swaps it.  Atomic so a burst sees the old tables or the new, never a mix. */
static inline void *onvm_load_ptr(void **p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void onvm_store_ptr(void **p, void *v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint64_t onvm_load_u64(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void onvm_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void onvm_pause(void) { __builtin_ia32_pause(); }
#endif
