"""IPv6 addresses whose digest collides, as an attacker would make them:
the host's flow key holds rte_hash_crc (CRC32-C, init 0, no final
inversion) of each IPv6 address, which is linear, so an address of any
/64 can be given the digest of any other address by choosing its last 64
bits.  Used to show that per-flow caches compare the full addresses.
Not here: the fast path's own digest (host_agent/parser.pxd)."""
import ipaddress


def crc32c(data, crc=0):
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc


def _bit(bit):
    y = bytearray(16)
    y[8 + bit // 8] = 1 << (bit % 8)
    return bytes(y)


def collide(victim, prefix):
    """An address in /64 `prefix` (an address of it) whose CRC32-C is that
    of address `victim`."""
    want = crc32c(ipaddress.IPv6Address(victim).packed)
    base = ipaddress.IPv6Address(prefix).packed[:8] + bytes(8)
    need = want ^ crc32c(base)          # crc(base ^ z) = crc(base) ^ crc(z)
    basis = {}                          # top bit -> (crc value, bits of z)
    for bit in range(64):
        v, combo = crc32c(_bit(bit)), 1 << bit
        while v and v.bit_length() - 1 in basis:
            bv, bc = basis[v.bit_length() - 1]
            v, combo = v ^ bv, combo ^ bc
        if v:
            basis[v.bit_length() - 1] = (v, combo)
    combo = 0
    while need:
        bv, bc = basis[need.bit_length() - 1]
        need, combo = need ^ bv, combo ^ bc
    z = bytearray(16)
    for bit in range(64):
        if combo >> bit & 1:
            z[8 + bit // 8] |= 1 << (bit % 8)
    out = bytes(a ^ b for a, b in zip(base, z))
    assert crc32c(out) == want
    return str(ipaddress.IPv6Address(out))
