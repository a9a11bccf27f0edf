# cython: language_level=3
"""The key table under the host's aging tables (host_agent/aging.pxd: the
flow table and the pin table): fixed-size keys to positions 0 .. entries-1,
by bucketized cuckoo hashing, built for the loop's bulk lookup of a burst.

Why not rte_hash, which this used before: measured on this machine
(BENCHMARKS.md, "The flow table's own key table"), rte_hash's bulk lookup
of 48-byte keys cost 20 to 35 CPU cycles a key with the table in cache
and 40 to 55 at a million keys, where touching one random cache line of
a 64 MB table costs 6.  It reads both of a key's buckets every time, and
its key slots (8-byte header and key) cross cache lines.  Here:

- a bucket is one 64-byte line of 8 slots, each a 16-bit tag (0: empty)
  and the position of its key;
- there are twice as many slots as entries (at most half full), so a key
  nearly always sits in its first bucket, and the lookup reads a second
  bucket only when the first holds no match;
- each key has a line of its own (`stride` bytes, 64 for 48-byte keys);
- a bulk lookup asks for all first buckets, then for the keys their tags
  point at, then compares: two waves of misses, which overlap.

A key's two buckets: `hash & mask`, and that XOR a value of its tag, so
either is found from the other and the tag (no key read when a key is
moved).  Inserting into two full buckets moves keys along a path found by
a breadth-first search (bounded), as cuckoo hashing does.

One thread writes and reads (the loop that owns the table); nothing here
is safe to call from two threads at once.
Not here: aging, the per-position records (aging.pxd).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from libc.string cimport memcpy, memcmp
from dpdk.rte_hash cimport rte_hash_crc, rte_hash_function
from nflib.nf cimport huge_zeroed, free_huge_zeroed, rte_prefetch0

cdef extern from *:
    int __builtin_ctz(unsigned int x) nogil

cdef extern from "shim.h" nogil:
    ctypedef uint64_t onvm_u64_any      # a uint64_t that may alias anything

cdef enum:
    KT_SLOTS = 8            # slots per bucket: one cache line with their positions
    KT_BULK = 64            # keys one kt_lookup_bulk takes, at most
    KT_QUEUE = 256          # buckets the insert's path search visits, at most


cdef struct kt_bucket_t:
    uint16_t tag[KT_SLOTS]  # 0: the slot is empty
    uint32_t pos[KT_SLOTS]
    uint8_t pad[16]


cdef struct keytab_t:
    kt_bucket_t *buckets
    uint8_t *keys           # position p's key at keys + p * stride
    uint32_t *free          # free positions, a stack
    uint32_t nfree
    uint32_t mask           # buckets - 1
    uint32_t entries
    uint32_t key_len
    uint32_t stride
    rte_hash_function hash_func   # the keys' hash (kt_init: key_crc if none given)
    uint64_t moves          # keys moved to make room (cuckoo)
    uint64_t paths          # ... along this many paths (more moves than paths: longer ones)


cdef struct kt_node_t:      # the insert's path search (kt_make_room)
    uint32_t bucket
    int32_t parent          # the node whose slot `slot` moves here, -1 for a root
    uint32_t slot


cdef inline uint32_t key_crc(const void *key, uint32_t key_len, uint32_t init) noexcept nogil:
    """CRC32C of the whole key (rte_hash's default hash)."""
    return rte_hash_crc(key, key_len, init)


cdef inline uint32_t kt_hash(keytab_t *k, const void *key) noexcept nogil:
    """The key's hash, always through the table's function pointer: a
    call GCC cannot see into, so the caller's writes of the key are done
    before it is read (DPDK's rte_hash_crc reads keys 8 bytes at a time
    through uint64_t pointers; inlined beside the writes, GCC -O3 hashed
    the bytes from before them)."""
    return k.hash_func(key, k.key_len, 0)


cdef inline uint16_t kt_tag(uint32_t h) noexcept nogil:
    cdef uint16_t t = <uint16_t>(h >> 16)
    return t if t else 1


cdef inline uint32_t kt_other(keytab_t *k, uint32_t b, uint16_t tag) noexcept nogil:
    """The key's other bucket, from either of its two and its tag."""
    return (b ^ (((<uint32_t>tag * 0x5bd1e995U) & k.mask) | 1)) & k.mask


cdef inline uint8_t *kt_key(keytab_t *k, uint32_t pos) noexcept nogil:
    return k.keys + <size_t>pos * k.stride


cdef inline bint kt_same(keytab_t *k, uint32_t pos, const void *key) noexcept nogil:
    cdef const onvm_u64_any *a
    cdef const onvm_u64_any *b
    cdef uint64_t d = 0
    cdef uint32_t i
    if k.key_len & 7:
        return memcmp(kt_key(k, pos), key, k.key_len) == 0
    a = <const onvm_u64_any *>kt_key(k, pos)
    b = <const onvm_u64_any *>key
    for i in range(k.key_len >> 3):
        d |= a[i] ^ b[i]
    return d == 0


cdef inline unsigned kt_match(kt_bucket_t *bk, uint16_t tag) noexcept nogil:
    """Bit s set where slot s has `tag`: no branch on the bucket's bytes,
    which a bulk lookup reads before they have arrived (a mispredicted
    branch there would throw away the loads issued after it)."""
    cdef unsigned s, m = 0
    for s in range(KT_SLOTS):
        m |= (<unsigned>(bk.tag[s] == tag)) << s
    return m


cdef inline int kt_slot_of(keytab_t *k, kt_bucket_t *bk, uint16_t tag, const void *key) noexcept nogil:
    cdef int s
    for s in range(KT_SLOTS):
        if bk.tag[s] == tag and kt_same(k, bk.pos[s], key):
            return s
    return -1


cdef inline int kt_empty_slot(kt_bucket_t *bk) noexcept nogil:
    cdef int s
    for s in range(KT_SLOTS):
        if bk.tag[s] == 0:
            return s
    return -1


cdef inline int kt_locate(keytab_t *k, const void *key, uint32_t h,
                          uint32_t *bucket) noexcept nogil:
    """The slot of `key` (hash `h`) in its first bucket or else its other
    one, that bucket in `bucket`; -1 if it is not in the table."""
    cdef uint16_t tag = kt_tag(h)
    cdef uint32_t b = h & k.mask
    cdef int s = kt_slot_of(k, &k.buckets[b], tag, key)
    if s < 0:
        b = kt_other(k, b, tag)
        s = kt_slot_of(k, &k.buckets[b], tag, key)
    bucket[0] = b
    return s


cdef inline int32_t kt_find_with_hash(keytab_t *k, const void *key, uint32_t h) noexcept nogil:
    """`key`'s position, -1 if it is not in the table."""
    cdef uint32_t b
    cdef int s = kt_locate(k, key, h, &b)
    return <int32_t>k.buckets[b].pos[s] if s >= 0 else -1


cdef inline int32_t kt_find(keytab_t *k, const void *key) noexcept nogil:
    return kt_find_with_hash(k, key, kt_hash(k, key))


cdef inline void kt_lookup_bulk(keytab_t *k, const void **keys, const uint32_t *hashes,
                                unsigned n, int32_t *pos) noexcept nogil:
    """Positions of `n` (at most KT_BULK) keys with their hashes, -1 for
    those not in the table: all first buckets asked for, then the keys
    their tags name, then compared."""
    cdef uint32_t b[KT_BULK]
    cdef kt_bucket_t *bk
    cdef unsigned i, m
    cdef uint32_t cand
    for i in range(n):
        b[i] = hashes[i] & k.mask
        rte_prefetch0(&k.buckets[b[i]])
    for i in range(n):
        bk = &k.buckets[b[i]]
        m = kt_match(bk, kt_tag(hashes[i]))
        cand = bk.pos[__builtin_ctz(m | (1 << KT_SLOTS)) & (KT_SLOTS - 1)]
        rte_prefetch0(kt_key(k, cand))      # slot 0's if none matched: harmless
        pos[i] = <int32_t>cand if m else -1
    for i in range(n):
        # The first candidate is nearly always the key; if not, the rest
        # of the first bucket and the other bucket.
        if pos[i] < 0 or not kt_same(k, <uint32_t>pos[i], keys[i]):
            pos[i] = kt_find_with_hash(k, keys[i], hashes[i])


cdef inline void kt_lookup_keys(keytab_t *k, const void **keys, unsigned n,
                                int32_t *pos) noexcept nogil:
    """kt_lookup_bulk of keys whose hashes the caller does not have."""
    cdef uint32_t hashes[KT_BULK]
    cdef unsigned i
    for i in range(n):
        hashes[i] = kt_hash(k, keys[i])
    kt_lookup_bulk(k, keys, hashes, n, pos)


cdef inline int kt_make_room(keytab_t *k, uint32_t b1, uint32_t b2, uint32_t *bucket) noexcept nogil:
    """Free a slot in bucket b1 or b2 by moving keys to their other
    buckets along the shortest path found (breadth first, KT_QUEUE buckets
    at most); the freed slot's index, its bucket in `bucket`, or -1."""
    cdef kt_node_t q[KT_QUEUE]
    cdef unsigned head = 0, tail = 2
    cdef int32_t node, parent
    cdef uint32_t s, slot, alt
    cdef int e
    cdef kt_bucket_t *bk
    cdef kt_bucket_t *to
    q[0].bucket, q[0].parent, q[0].slot = b1, -1, 0
    q[1].bucket, q[1].parent, q[1].slot = b2, -1, 0
    while head < tail:
        node = <int32_t>head
        head += 1
        bk = &k.buckets[q[node].bucket]
        for s in range(KT_SLOTS):
            alt = kt_other(k, q[node].bucket, bk.tag[s])
            e = kt_empty_slot(&k.buckets[alt])
            if e >= 0:
                # Move along the path, from its end: each key to its other bucket.
                to = &k.buckets[alt]
                to.tag[e], to.pos[e] = bk.tag[s], bk.pos[s]
                k.moves += 1
                slot = s
                while q[node].parent >= 0:
                    parent = q[node].parent
                    to = &k.buckets[q[node].bucket]
                    bk = &k.buckets[q[parent].bucket]
                    to.tag[slot], to.pos[slot] = bk.tag[q[node].slot], bk.pos[q[node].slot]
                    k.moves += 1
                    slot = q[node].slot
                    node = parent
                k.buckets[q[node].bucket].tag[slot] = 0
                k.paths += 1
                bucket[0] = q[node].bucket
                return <int>slot
            if tail < KT_QUEUE:
                q[tail].bucket, q[tail].parent, q[tail].slot = alt, node, s
                tail += 1
    return -1


cdef inline int32_t kt_add(keytab_t *k, const void *key) noexcept nogil:
    """`key`'s position, added if it was not there; -1 if there is no
    room (no free position, or no path to a free slot)."""
    cdef uint32_t h = kt_hash(k, key)
    cdef uint16_t tag = kt_tag(h)
    cdef uint32_t b1 = h & k.mask
    cdef uint32_t b2 = kt_other(k, b1, tag)
    cdef uint32_t b
    cdef int32_t pos = kt_find_with_hash(k, key, h)
    cdef int s
    if pos >= 0:
        return pos
    if k.nfree == 0:
        return -1
    b = b1
    s = kt_empty_slot(&k.buckets[b1])
    if s < 0:
        b = b2
        s = kt_empty_slot(&k.buckets[b2])
    if s < 0:
        s = kt_make_room(k, b1, b2, &b)
        if s < 0:
            return -1
    k.nfree -= 1
    pos = <int32_t>k.free[k.nfree]
    memcpy(kt_key(k, <uint32_t>pos), key, k.key_len)
    k.buckets[b].pos[s] = <uint32_t>pos
    k.buckets[b].tag[s] = tag
    return pos


cdef inline int32_t kt_del(keytab_t *k, const void *key) noexcept nogil:
    """Delete `key`; its position (free again), -1 if it was not there."""
    cdef uint32_t b, pos
    cdef int s = kt_locate(k, key, kt_hash(k, key), &b)
    if s < 0:
        return -1
    pos = k.buckets[b].pos[s]
    k.buckets[b].tag[s] = 0
    k.free[k.nfree] = pos
    k.nfree += 1
    return <int32_t>pos


cdef inline int kt_init(keytab_t *k, str what, uint32_t entries, uint32_t key_len,
                        rte_hash_function hash_func) except -1:
    """An empty table of `entries` keys of `key_len` bytes."""
    cdef uint32_t nb = 2, i
    if entries < 1 or key_len < 1 or key_len > 256:
        raise ValueError(f"{what}: {entries} entries of {key_len}-byte keys")
    while <uint64_t>nb * KT_SLOTS < <uint64_t>entries * 2:
        nb <<= 1
    k.stride = 8
    while k.stride < key_len:
        k.stride <<= 1
    k.mask, k.entries, k.key_len = nb - 1, entries, key_len
    k.hash_func = hash_func if hash_func != NULL else key_crc
    k.moves = k.paths = 0
    k.buckets = <kt_bucket_t *>huge_zeroed(<size_t>nb * sizeof(kt_bucket_t))
    k.keys = <uint8_t *>huge_zeroed(<size_t>entries * k.stride)
    k.free = <uint32_t *>huge_zeroed(<size_t>entries * sizeof(uint32_t))
    if k.buckets == NULL or k.keys == NULL or k.free == NULL:
        kt_free(k)
        raise MemoryError(f"{what}: {entries} entries")
    for i in range(entries):            # positions taken from 0 up
        k.free[i] = entries - 1 - i
    k.nfree = entries
    return 0


cdef inline void kt_free(keytab_t *k) noexcept nogil:
    free_huge_zeroed(k.buckets, <size_t>(k.mask + 1) * sizeof(kt_bucket_t))
    free_huge_zeroed(k.keys, <size_t>k.entries * k.stride)
    free_huge_zeroed(k.free, <size_t>k.entries * sizeof(uint32_t))
    k.buckets, k.keys, k.free, k.nfree = NULL, NULL, NULL, 0
