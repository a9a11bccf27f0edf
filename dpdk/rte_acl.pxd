# Packet classification (rte_acl.h) with the five-field rule of shim.h.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t

cdef extern from "rte_acl.h" nogil:
    struct rte_acl_ctx:
        pass
    struct rte_acl_field_def:
        uint8_t type
        uint8_t size
        uint8_t field_index
        uint8_t input_index
        uint32_t offset
    struct rte_acl_config:
        uint32_t num_categories
        uint32_t num_fields
        rte_acl_field_def defs[64]
        size_t max_size
    struct rte_acl_param:
        const char *name
        int socket_id
        uint32_t rule_size
        uint32_t max_rule_num
    struct rte_acl_rule_data:
        uint32_t category_mask
        int32_t priority
        uint32_t userdata
    uint8_t RTE_ACL_FIELD_TYPE_MASK
    uint8_t RTE_ACL_FIELD_TYPE_RANGE
    uint8_t RTE_ACL_FIELD_TYPE_BITMASK
    rte_acl_ctx *rte_acl_create(const rte_acl_param *param)
    void rte_acl_free(rte_acl_ctx *ctx)
    int rte_acl_add_rules(rte_acl_ctx *ctx, const void *rules, uint32_t num)
    int rte_acl_build(rte_acl_ctx *ctx, const rte_acl_config *cfg)
    int rte_acl_classify(const rte_acl_ctx *ctx, const uint8_t **data,
                         uint32_t *results, uint32_t num, uint32_t categories)

cdef extern from "shim.h" nogil:
    struct onvm_acl_rule:
        rte_acl_rule_data data
    int RTE_ACL_RULE_SZ(int)
    void onvm_acl_field_u8(onvm_acl_rule *r, int i, uint8_t v, uint8_t m)
    void onvm_acl_field_u32(onvm_acl_rule *r, int i, uint32_t v, uint32_t m)
    void onvm_acl_field_u16(onvm_acl_rule *r, int i, uint16_t lo, uint16_t hi)
