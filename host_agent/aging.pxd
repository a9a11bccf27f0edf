# Tables whose entries age: a key table (host_agent/keytab.pxd) plus, per
# position, one 16-byte record of its last use (TSC, 0: free) and of the
# owner's value for it (at the start of a larger record of the owner's: the
# flow table's 64-byte flow line, host_agent/flowline.pxd), so that a
# looked-up position costs one cache line.  A sweep checks a
# bounded number of positions per call, round robin, and deletes those
# idle longer than `idle` cycles, so the loop that owns the table never
# stalls on a full scan.  Used by the manager for the flow table and the
# pin table (host_agent.manager).
# Not here: what a record's value means (its owner says: a pin's label, a
# flow's first hop), the NFs' tables (nflib.flowtab).
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t
from dpdk.rte_hash cimport rte_hash_function
from nflib.nf cimport huge_zeroed, free_huge_zeroed
from host_agent.keytab cimport keytab_t, kt_add, kt_del, kt_find, kt_key, kt_init, kt_free

cdef struct aged_rec_t:
    uint64_t seen           # TSC of last use, 0 if free
    uint32_t value          # the owner's: a pin's label, a flow's first hop
    uint32_t stamp          # the owner's: which tables `value` holds for (0: none)


cdef struct aged_t:
    keytab_t keys           # key -> position (host_agent/keytab.pxd)
    uint8_t *recs           # per position, `stride` bytes apart (aged_rec)
    uint32_t stride         # sizeof(aged_rec_t), or the owner's record that begins with one
    uint32_t entries
    uint32_t cursor         # the sweep's next position
    uint64_t idle           # cycles an entry may stay unused
    uint64_t sweep_gap      # cycles between two positions the sweep checks (aged_timing; 0: unpaced)
    uint64_t sweep_at       # when the next position is due
    uint64_t live, inserts, expired, full


cdef inline aged_rec_t *aged_rec(aged_t *a, uint32_t pos) noexcept nogil:
    return <aged_rec_t *>(a.recs + <size_t>pos * a.stride)


cdef inline int32_t aged_add(aged_t *a, const void *key, uint64_t now,
                             bint *added=NULL) noexcept nogil:
    """Add (or find) `key`, marked used at `now`; -1 (counted `full`) if
    there is no room (a full table is only looked up, never inserted into:
    a failing cuckoo insert costs microseconds).  `added`, if given: set
    true if the key was new."""
    cdef int32_t pos
    cdef aged_rec_t *rec
    if added != NULL:
        added[0] = False
    if a.live >= a.entries:
        pos = kt_find(&a.keys, key)         # already there: a full table still has it
        if pos >= 0:
            aged_rec(a, pos).seen = now
            return pos
        a.full += 1
        return -1
    pos = kt_add(&a.keys, key)
    if pos < 0:
        a.full += 1
        return -1
    rec = aged_rec(a, pos)
    if rec.seen == 0:
        a.inserts += 1
        a.live += 1
        rec.stamp = 0
        if added != NULL:
            added[0] = True
    rec.seen = now
    return pos


cdef inline int32_t aged_find(aged_t *a, const void *key, uint64_t now) noexcept nogil:
    """Position of `key`, marked used at `now`; -1 if none."""
    cdef int32_t pos = kt_find(&a.keys, key)
    if pos < 0:
        return -1
    aged_rec(a, pos).seen = now
    return pos


cdef inline void aged_set(aged_t *a, const void *key, uint32_t value, uint64_t now) noexcept nogil:
    """Add `key` (or find it) with `value`; counted `full` if there is no room."""
    cdef int32_t pos = aged_add(a, key, now)
    if pos >= 0:
        aged_rec(a, pos).value = value


cdef inline void aged_timing(aged_t *a, uint64_t hz, double idle_seconds,
                             double pass_seconds=1.0, double min_rate=65536):
    """Entries idle `idle_seconds` are deleted; the sweep checks each
    position once every `pass_seconds`, or a quarter of `idle_seconds` if
    that is shorter (and at least `min_rate` positions a second, so that a
    small table is swept at once): an entry is deleted at most that long
    after its time, and a loop at ten million packets a second does not
    read the whole table ten times a second."""
    a.idle = <uint64_t>(max(0.0, idle_seconds) * hz)
    if idle_seconds > 0:
        pass_seconds = min(pass_seconds, idle_seconds / 4)
    a.sweep_gap = max(1, <uint64_t>(hz / max(a.entries / pass_seconds, min_rate)))


cdef inline void aged_sweep(aged_t *a, uint64_t now, unsigned step) noexcept nogil:
    """Delete the entries idle longer than `a.idle` among the positions due
    by now (aged_timing), at most `step`."""
    cdef unsigned i
    cdef uint32_t pos
    cdef uint64_t seen, due, one_pass = <uint64_t>a.entries * a.sweep_gap
    if a.sweep_gap:
        if now < a.sweep_at:
            return
        if now - a.sweep_at > one_pass:     # idle, or the clock moved: one pass behind at most
            a.sweep_at = now - one_pass
        due = (now - a.sweep_at) // a.sweep_gap + 1
        if due < step:
            step = <unsigned>due
        a.sweep_at += step * a.sweep_gap
    for i in range(step):
        pos = a.cursor
        a.cursor = pos + 1 if pos + 1 < a.entries else 0
        seen = aged_rec(a, pos).seen
        if seen == 0 or now - seen <= a.idle or seen > now:
            continue
        kt_del(&a.keys, kt_key(&a.keys, pos))
        aged_rec(a, pos).seen = 0
        a.live -= 1
        a.expired += 1


cdef inline int aged_init(aged_t *a, str what, entries, uint32_t key_len,
                          rte_hash_function hash_func=NULL,
                          uint32_t stride=sizeof(aged_rec_t)) except -1:
    """An empty aging table of `entries`, each position's record `stride`
    bytes (an aged_rec_t first, zeroed)."""
    if not 8 <= entries < (1 << 31):
        raise ValueError(f"{what}: entries must be 8 .. 2**31 - 1, not {entries}")
    kt_init(&a.keys, what, entries, key_len, hash_func)
    a.entries = entries
    a.stride = stride
    a.recs = <uint8_t *>huge_zeroed(<size_t>entries * stride)
    if a.recs == NULL:
        raise MemoryError(f"{what}: {entries} entries")
    return 0


cdef inline void aged_free(aged_t *a) noexcept:
    kt_free(&a.keys)
    a.live = 0


cdef inline void aged_free_records(aged_t *a) noexcept:
    free_huge_zeroed(a.recs, <size_t>a.entries * a.stride)
    a.recs = NULL


cdef inline dict aged_report(aged_t *a):
    """The table's figures for stats and Prometheus (host_agent.metrics)."""
    return {"entries": a.live, "size": a.entries, "inserts": a.inserts,
            "expired": a.expired, "full": a.full}
