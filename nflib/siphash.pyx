# cython: language_level=3
"""Python access to nflib/siphash.pxd's keyed hash, for tests and tools:
the NFs cimport the inline functions."""
from libc.stdint cimport uint8_t, uint64_t
from nflib.siphash cimport sipkey_t, siphash as _siphash, sipkey_of_seed


def siphash(uint64_t k0, uint64_t k1, bytes data, int crounds=1, int drounds=3):
    """SipHash-c-d (default 1-3) of `data` under key (k0, k1), each 64
    bits little-endian as the reference's 16-byte key reads them."""
    cdef sipkey_t key
    key.k0, key.k1 = k0, k1
    return _siphash(&key, <const uint8_t *>data, len(data), crounds, drounds)


def seed_key(uint64_t seed):
    """(k0, k1): the key sipkey_of_seed makes of a 64-bit seed."""
    cdef sipkey_t key
    sipkey_of_seed(seed, &key)
    return key.k0, key.k1
