# What other Cython modules (the NFs in nfs/) use of the fast path: the NF
# batch interface and the ACL classifier.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from dpdk.rte_mbuf cimport rte_mbuf
from dpdk.rte_acl cimport rte_acl_ctx
from dpdk.rte_hash cimport rte_hash

# An NF's batch handler: reads the packets, writes each one's verdict into
# its metadata (onvm_meta(m).action / .destination).  Runs without the GIL.
ctypedef void (*nf_batch_fn)(void *ctx, rte_mbuf **pkts, unsigned n) noexcept nogil


cdef class NativeNF:
    """Base of NFs written in Cython: subclasses set batch_fn and batch_ctx."""
    cdef nf_batch_fn batch_fn
    cdef void *batch_ctx


cdef class Acl:
    """An rte_acl context over struct onvm_flow_key; result = rule index + 1."""
    cdef rte_acl_ctx *ctx
    cdef readonly int nrules
    cdef void classify(self, const uint8_t **data, uint32_t *results,
                       unsigned n) noexcept nogil


cdef rte_hash *new_hash(str what, uint32_t entries, uint32_t key_len) except NULL
