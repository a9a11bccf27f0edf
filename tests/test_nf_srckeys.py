"""Issue 12: ratelimit and ddos key a source by its whole address, and the
ddos sketch hashes with a secret seed, through the real fast path.

The fast path's flow key holds a 32-bit CRC digest of an IPv6 address,
which an attacker can make equal to a victim's (tests/ipv6crc.py): keyed
by it, the attacker would empty the victim's ratelimit bucket and get
the victim blocked by ddos.  And ddos's sketch rows used a CRC under
fixed public seeds, so an attacker could pick IPv4 sources sharing the
victim's counter in every row (CRC is affine: the seeds change nothing)
and get the victim blocked; under a secret keyed hash they scatter.
IPv6 packets come labelled, as the ingress switch sends them."""
import ipaddress
import logging

import pytest
from scapy.all import IP, IPv6, TCP, UDP, Ether

from nflib.siphash import seed_key, siphash
from nfs.ddos import DDoSFilter
from ipv6crc import collide, crc32c
from test_nf_firewall_ipv6 import labelled
from test_nf_helpers import harness, udp

SRV, SRV6 = "10.0.1.5", "2001:db8:1::5"
VICTIM6 = "2001:db8:9::10"
ATTACKER6 = collide(VICTIM6, "2001:db8:66::")


def udp6(src, sport=1000):
    return labelled(IPv6(src=src, dst=SRV6) / UDP(sport=sport, dport=53))


def syn6(src, sport):
    return labelled(IPv6(src=src, dst=SRV6) / TCP(sport=sport, dport=80, flags="S"))


def sources(frames):
    out = {}
    for f in frames:
        p = Ether(f)
        src = str(ipaddress.ip_address(p[IPv6].src if IPv6 in p else p[IP].src))
        out[src] = out.get(src, 0) + 1
    return out


def test_the_two_ipv6_sources_share_a_digest():
    # the premise of the tests below: keyed by meta.key.src they were one
    assert ATTACKER6 != VICTIM6
    assert crc32c(ipaddress.IPv6Address(ATTACKER6).packed) == \
        crc32c(ipaddress.IPv6Address(VICTIM6).packed)


def test_ratelimit_gives_ipv6_sources_of_one_digest_a_bucket_each():
    with harness([("ratelimit", {"rate": 10, "burst": 5})]) as h:
        out = h.send([udp6(ATTACKER6)] * 20 + [udp6(VICTIM6)] * 3)
        assert sources(out) == {ATTACKER6: 5, VICTIM6: 3}
        c = h.nf(1).counters()
        assert (c["passed"], c["dropped"], c["sources"], c["no_source"]) == (8, 15, 2, 0)


def test_ratelimit_keeps_ipv4_and_ipv6_apart():
    # ::c000:201 holds 192.0.2.1's four bytes: a whole key with its family
    # keeps them two sources
    with harness([("ratelimit", {"rate": 10, "burst": 2})]) as h:
        out = h.send([udp("192.0.2.1", SRV, 1, 2)] * 4 + [udp6("::c000:201")] * 4)
        assert sources(out) == {"192.0.2.1": 2, "::c000:201": 2}


def test_ddos_blocks_the_ipv6_attacker_not_the_victim_of_its_digest(caplog):
    config = {"window": 5, "packet_threshold": 100, "hold": 30}
    with caplog.at_level(logging.WARNING, logger="onvm.nf.ddos"):
        with harness([("ddos", config)]) as h:
            out = sources(h.send([udp6(ATTACKER6, 1000 + i) for i in range(150)]))
            assert out == {ATTACKER6: 100}
            assert sources(h.send([udp6(VICTIM6, 2000 + i) for i in range(20)])) == {VICTIM6: 20}
            c = h.nf(1).counters()
            assert [(b["src"], b["reason"]) for b in c["blocked"]] == [(ATTACKER6, "heavy_hitter")]
            assert c["dropped"] == 50 and c["passed"] == 120
            assert h.send([udp6(ATTACKER6)]) == []
    assert any(f"blocking {ATTACKER6} for 30.0 s: heavy_hitter" in r.getMessage()
               for r in caplog.records)


def test_a_block_moved_to_another_instance_keeps_the_whole_address():
    """What the agents exchange (blocked_raw -> block, nflib.sharing): the
    attacker's IPv6 address whole, so the peer drops it and not the
    victim of its digest; an older agent's IPv4 number is taken too."""
    config = {"window": 5, "syn_threshold": 10, "hold": 30}
    with harness([("ddos", config)]) as a, harness([("ddos", config)]) as b:
        a.send([syn6(ATTACKER6, 3000 + i) for i in range(20)])
        raw = a.nf(1).blocked_raw()
        assert [(src, reason) for src, _left, reason in raw] == [(ATTACKER6, 0)]
        old_agent = int.from_bytes(bytes([198, 51, 100, 9]), "little")
        peer = b.nf(1)
        for src, left, reason in raw + [[old_agent, 30.0, 1]]:
            assert peer.block(src, left, reason)
        assert not peer.block(ATTACKER6, 5.0, 0), "blocked already"
        assert [(x["src"], x["reason"]) for x in peer.blocked()] == [
            ("198.51.100.9", "heavy_hitter"), (ATTACKER6, "syn_flood")]
        assert b.send([syn6(ATTACKER6, 1)]) == []
        assert sources(b.send([syn6(VICTIM6, 1), udp("198.51.100.9", SRV, 1, 2),
                               udp("198.51.100.10", SRV, 1, 2)])) == \
            {VICTIM6: 1, "198.51.100.10": 1}
        assert peer.counters()["sharing"]["merged_blocks"] == 2
        with pytest.raises(ValueError, match="ddos: block: source 'nope' is no IPv4 or IPv6"):
            peer.block("nope", 1.0, 0)


# --- the sketch's hash ---------------------------------------------------------

OLD_SEEDS = [(0x9e3779b9 * (r + 1)) & 0xffffffff for r in range(4)]   # before issue 12


def old_columns(src, width):
    """The counter of IPv4 `src` in each row under the old fixed seeds:
    rte_hash_crc(&src, 4, seed) % width."""
    packed = ipaddress.IPv4Address(src).packed
    return [crc32c(packed, seed) % width for seed in OLD_SEEDS]


def colliding_sources(victim, width, count):
    """IPv4 sources sharing `victim`'s counter in every row under the old
    seeds, as an attacker finds them: CRC is linear, so the difference d
    = src ^ victim only needs crc32c(d) = 0 mod width (width a power of
    two), whatever the seed."""
    v = int(ipaddress.IPv4Address(victim))
    out = []
    for d in range(1, 1 << 24):
        if crc32c(d.to_bytes(4, "big")) % width == 0:
            out.append(str(ipaddress.IPv4Address(v ^ d)))
            if len(out) == count:
                return out
    raise AssertionError("no such sources")


def test_sources_chosen_to_collide_under_the_old_seeds_no_longer_block_the_victim(caplog):
    width, threshold = 1024, 100
    victim = "192.0.2.10"
    attackers = colliding_sources(victim, width, 25)
    # under the old hash, each shares the victim's counter in all 4 rows:
    # 25 x 5 packets would have put the victim over 100 with its first
    assert all(old_columns(a, width) == old_columns(victim, width) for a in attackers)
    config = {"window": 30, "packet_threshold": threshold, "hold": 30, "width": width}
    flood = [udp(a, SRV, 1000 + k, 53) for k in range(5) for a in attackers]
    with caplog.at_level(logging.WARNING, logger="onvm.nf.ddos"):
        with harness([("ddos", config)]) as h:
            passed = len(h.send(flood))
            assert sources(h.send([udp(victim, SRV, 5000 + i, 80) for i in range(20)])) == \
                {victim: 20}
            assert passed == len(flood), "each attacker is under the threshold"
            c = h.nf(1).counters()
            assert c["blocked"] == [] and c["dropped"] == 0
            # what the filter does: its columns differ from the old ones,
            # and the attackers scatter over them
            nf = h.nf(1)
            mine = nf.columns(victim)
            assert mine != [r * width + col for r, col in enumerate(old_columns(victim, width))]
            assert max(sum(nf.columns(a)[r] == mine[r] for a in attackers)
                       for r in range(4)) < 10
    assert not any("blocking" in r.getMessage() for r in caplog.records)


def test_the_row_hash_is_siphash_1_3_under_the_seed():
    # the reference's test vectors (SipHash-2-4, key 00..0f) hold for the
    # same code at 2-4, and the filter's columns are its 1-3 under the seed
    k = bytes(range(16))
    k0, k1 = int.from_bytes(k[:8], "little"), int.from_bytes(k[8:], "little")
    assert siphash(k0, k1, b"", 2, 4) == 0x726fdb47dd0e0e31
    assert siphash(k0, k1, bytes(range(15)), 2, 4) == 0xa129ca6149be45e5
    seed, width = 0x0123456789abcdef, 1000
    nf = DDoSFilter({"seed": seed, "width": width, "depth": 3})
    assert nf.seed == seed
    for src, packed in (("192.0.2.1", bytes([192, 0, 2, 1])),
                        (VICTIM6, ipaddress.IPv6Address(VICTIM6).packed)):
        h = siphash(*seed_key(seed), packed)
        h1, h2 = h & 0xffffffff, (h >> 32) | 1
        assert nf.columns(src) == [r * width + (((h1 + r * h2) & 0xffffffff) * width >> 32)
                                   for r in range(3)]
    assert DDoSFilter({"seed": seed + 1, "width": width}).columns("192.0.2.1")[:3] != \
        nf.columns("192.0.2.1")


def test_without_a_seed_the_ddos_instances_of_a_process_draw_one(caplog):
    with caplog.at_level(logging.WARNING, logger="onvm.nf.ddos"):
        a, b = DDoSFilter({}), DDoSFilter({"width": 64})
    assert a.seed == b.seed and isinstance(a.seed, int) and a.config["seed"] is None
    assert a.columns("2001:db8::1")[0] == DDoSFilter({"seed": a.seed}).columns("2001:db8::1")[0]
