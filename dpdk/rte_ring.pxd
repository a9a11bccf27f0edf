# Lock-free rings between the manager and NF processes (rte_ring.h).
cdef extern from "rte_ring.h" nogil:
    struct rte_ring:
        pass
    unsigned RING_F_SP_ENQ
    unsigned RING_F_SC_DEQ
    rte_ring *rte_ring_create(const char *name, unsigned count, int socket_id,
                              unsigned flags)
    rte_ring *rte_ring_lookup(const char *name)
    void rte_ring_free(rte_ring *r)
    unsigned rte_ring_enqueue_burst(rte_ring *r, void * const *obj_table,
                                    unsigned n, unsigned *free_space)
    unsigned rte_ring_dequeue_burst(rte_ring *r, void **obj_table,
                                    unsigned n, unsigned *available)
    unsigned rte_ring_count(const rte_ring *r)
    unsigned rte_ring_get_capacity(const rte_ring *r)
