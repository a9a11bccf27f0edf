# A flow table for NFs: DPDK rte_hash from a fixed-size key (usually struct
# onvm_flow_key) to a position, with an expiry time per position.  Each NF
# keeps its own per-flow values in arrays indexed by that position.
from libc.stdint cimport uint32_t, int32_t, uint64_t
from dpdk.rte_hash cimport rte_hash

cdef struct ftab_t:
    rte_hash *h
    uint64_t *expires      # per position: TSC after which the entry is dead
    uint32_t entries
    uint32_t key_len
    uint32_t cursor        # where the next sweep goes on (rte_hash_iterate)
    uint64_t sweep_gap     # TSC cycles between two sweeps of a full table
    uint64_t next_sweep
    uint64_t inserts       # entries added
    uint64_t expired       # entries removed because their time was up
    uint64_t full          # inserts refused: table full of live entries

cdef ftab_t *ftab_new(str what, uint32_t entries, uint32_t key_len) except NULL
cdef void ftab_free(ftab_t *t) noexcept
cdef int32_t ftab_find(ftab_t *t, const void *key, uint64_t now) noexcept nogil
cdef int32_t ftab_insert(ftab_t *t, const void *key, uint64_t expires, uint64_t now) noexcept nogil
cdef void ftab_delete(ftab_t *t, const void *key) noexcept nogil
cdef unsigned ftab_sweep(ftab_t *t, uint64_t now, unsigned step) noexcept nogil
cdef uint32_t ftab_live(ftab_t *t, uint64_t now) noexcept nogil
cdef dict ftab_report(ftab_t *t, uint64_t now)
cdef list ftab_chunk(ftab_t *t, uint32_t *cursor, unsigned count, uint64_t now, bint *done)
