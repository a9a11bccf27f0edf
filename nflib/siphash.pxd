# SipHash (Aumasson and Bernstein, 2012): a keyed hash whose outputs an
# attacker who does not know the 128-bit key can neither predict nor make
# collide, unlike CRC (linear: crc(a ^ b) = crc(a) ^ crc(b) whatever the
# seed, so a seeded CRC still collides where the unseeded one does).  For
# the NFs that index tables by attacker-chosen values (nfs/ddos.pyx: its
# count-min sketch rows).  SipHash-1-3 (one compression round per 8 bytes,
# three at the end: what Python and Rust hash their dicts with) costs 4
# rounds for an IPv4 address, 6 for an IPv6 one.  Inline, without the GIL.
from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef struct sipkey_t:
    uint64_t k0
    uint64_t k1


cdef inline uint64_t _rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline void _round(uint64_t *v) noexcept nogil:
    v[0] += v[1]; v[1] = _rotl(v[1], 13); v[1] ^= v[0]; v[0] = _rotl(v[0], 32)
    v[2] += v[3]; v[3] = _rotl(v[3], 16); v[3] ^= v[2]
    v[0] += v[3]; v[3] = _rotl(v[3], 21); v[3] ^= v[0]
    v[2] += v[1]; v[1] = _rotl(v[1], 17); v[1] ^= v[2]; v[2] = _rotl(v[2], 32)


cdef inline uint64_t _le64(const uint8_t *p, uint32_t n) noexcept nogil:
    """Up to 8 bytes as a little-endian number (the compiler makes one
    load of the 8-byte case)."""
    cdef uint64_t m = 0
    cdef uint32_t i
    for i in range(n):
        m |= (<uint64_t>p[i]) << (8 * i)
    return m


cdef inline uint64_t siphash(const sipkey_t *key, const uint8_t *p, uint32_t n,
                             int crounds, int drounds) noexcept nogil:
    """SipHash-c-d of the n bytes at p."""
    cdef uint64_t v[4]
    cdef uint64_t m
    cdef uint32_t i = 0
    cdef int r
    v[0] = key.k0 ^ 0x736f6d6570736575ULL
    v[1] = key.k1 ^ 0x646f72616e646f6dULL
    v[2] = key.k0 ^ 0x6c7967656e657261ULL
    v[3] = key.k1 ^ 0x7465646279746573ULL
    while i + 8 <= n:
        m = _le64(p + i, 8)
        v[3] ^= m
        for r in range(crounds):
            _round(v)
        v[0] ^= m
        i += 8
    m = _le64(p + i, n - i) | ((<uint64_t>n) << 56)
    v[3] ^= m
    for r in range(crounds):
        _round(v)
    v[0] ^= m
    v[2] ^= 0xff
    for r in range(drounds):
        _round(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


cdef inline uint64_t siphash13(const sipkey_t *key, const uint8_t *p, uint32_t n) noexcept nogil:
    return siphash(key, p, n, 1, 3)


cdef inline uint64_t splitmix64(uint64_t x) noexcept nogil:
    """A bijective mixer (Steele et al.): spreads a 64-bit seed over the
    key's second half."""
    x += 0x9e3779b97f4a7c15ULL
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL
    return x ^ (x >> 31)


cdef inline void sipkey_of_seed(uint64_t seed, sipkey_t *key) noexcept nogil:
    """The SipHash key of a 64-bit secret seed (64 bits of secret)."""
    key.k0 = seed
    key.k1 = splitmix64(seed)
