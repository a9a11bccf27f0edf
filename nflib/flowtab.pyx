# cython: language_level=3
"""Flow tables for the NFs: DPDK's rte_hash from a key to a position, plus
an expiry time per position.  The NFs keep their per-flow values in arrays
indexed by position; an entry whose time is up reads as absent and is
removed when seen, or by a sweep when the table is full: a new flow that
finds no room checks the next SWEEP_STEP entries (round robin over the
table, at most one sweep per `sweep_gap`, 100 us) and removes the expired
ones, so a full table never makes a packet pay for a full scan (nor for a
failing cuckoo insert), and a flow that still finds no room is counted
`full` and handled untracked by its NF, alone.  ftab_report() is what the
NFs' counters say of their tables (entries, size, inserts, expired, full).

Written by the packet loop only; Python reads it (export_state) while the
instance does not run.  Not a connection tracker: the NFs decide what a
flow is and how long it lives."""
from libc.stdint cimport uint32_t, int32_t, uint64_t, intptr_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from dpdk.rte_hash cimport *
from dpdk.rte_eal cimport rte_get_tsc_hz
from nflib.eal cimport new_hash

from nflib.eal import eal_running

DEF SWEEP_STEP = 256       # entries a new flow that finds no room checks


cdef ftab_t *ftab_new(str what, uint32_t entries, uint32_t key_len) except NULL:
    cdef ftab_t *t = <ftab_t *>calloc(1, sizeof(ftab_t))
    if t == NULL:
        raise MemoryError()
    try:
        t.h = new_hash(what, entries, key_len)
    except BaseException:
        ftab_free(t)
        raise
    t.expires = <uint64_t *>calloc(entries + 1, sizeof(uint64_t))
    if t.expires == NULL:
        ftab_free(t)
        raise MemoryError(f"{what}: cannot create a flow table of {entries} entries")
    t.entries = entries
    t.key_len = key_len
    t.sweep_gap = rte_get_tsc_hz() // 10000
    return t


cdef void ftab_free(ftab_t *t) noexcept:
    if t == NULL:
        return
    # After rte_eal_cleanup (e.g. `onvm bench` ending while the manager
    # still holds its NFs) DPDK's memory is gone and with it the table.
    if t.h != NULL and eal_running():
        rte_hash_free(t.h)
    free(t.expires)
    free(t)


cdef int32_t ftab_find(ftab_t *t, const void *key, uint64_t now) noexcept nogil:
    """Position of a live entry, or -1 (an expired entry is removed)."""
    cdef int32_t pos = rte_hash_lookup(t.h, key)
    if pos < 0:
        return -1
    if t.expires[pos] <= now:
        rte_hash_del_key(t.h, key)
        t.expired += 1
        return -1
    return pos


cdef int32_t ftab_insert(ftab_t *t, const void *key, uint64_t expires, uint64_t now) noexcept nogil:
    """Add (or refresh) an entry; -1 if the table is full of live entries."""
    cdef int32_t pos = -1
    if <uint32_t>rte_hash_count(t.h) >= t.entries:
        # Full: a failing cuckoo insert costs microseconds, so none is
        # tried unless the key is there or a sweep (at most one per
        # sweep_gap) made room.
        pos = rte_hash_lookup(t.h, key)
        if pos < 0 and (now < t.next_sweep or not ftab_sweep(t, now, SWEEP_STEP)):
            t.next_sweep = now + t.sweep_gap
            t.full += 1
            return -1
    if pos < 0:
        pos = rte_hash_add_key(t.h, key)
        if pos < 0:
            t.full += 1
            return -1
    if t.expires[pos] <= now:       # a new entry (or a dead one given new life)
        t.inserts += 1
    t.expires[pos] = expires
    return pos


cdef void ftab_delete(ftab_t *t, const void *key) noexcept nogil:
    cdef int32_t pos = rte_hash_del_key(t.h, key)
    if pos >= 0:
        t.expires[pos] = 0


cdef unsigned ftab_sweep(ftab_t *t, uint64_t now, unsigned step) noexcept nogil:
    """Remove the expired entries among the next `step` live ones (round
    robin); returns how many."""
    cdef const void *key
    cdef void *data
    cdef int32_t pos
    cdef unsigned i, n = 0
    for i in range(step):
        pos = rte_hash_iterate(t.h, &key, &data, &t.cursor)
        if pos < 0:
            t.cursor = 0
            break
        if t.expires[pos] <= now:
            rte_hash_del_key(t.h, key)
            n += 1
    t.expired += n
    return n


cdef uint32_t ftab_live(ftab_t *t, uint64_t now) noexcept nogil:
    cdef const void *key
    cdef void *data
    cdef uint32_t nxt = 0, n = 0
    cdef int32_t pos
    while True:
        pos = rte_hash_iterate(t.h, &key, &data, &nxt)
        if pos < 0:
            break
        if t.expires[pos] > now:
            n += 1
    return n


cdef list ftab_chunk(ftab_t *t, uint32_t *cursor, unsigned count, uint64_t now, bint *done):
    """Up to `count` live entries from `cursor` on (rte_hash_iterate's,
    moved on): [(position, key bytes, TSC cycles left)]; `done` once the
    table's end is reached.  For reading a table in chunks while its loop
    stands still between them (host_agent.replicas): an entry added or
    removed between two chunks may be missed or seen twice."""
    cdef const void *key
    cdef void *data
    cdef int32_t pos
    cdef unsigned n = 0
    out = []
    done[0] = False
    while n < count:
        pos = rte_hash_iterate(t.h, &key, &data, cursor)
        if pos < 0:
            done[0] = True
            break
        n += 1
        if t.expires[pos] > now:
            out.append((pos, (<const char *>key)[:t.key_len], t.expires[pos] - now))
    return out


cdef dict ftab_report(ftab_t *t, uint64_t now):
    """The table's figures for an NF's counters."""
    return {"entries": ftab_live(t, now), "size": t.entries, "inserts": t.inserts,
            "expired": t.expired, "full": t.full}
