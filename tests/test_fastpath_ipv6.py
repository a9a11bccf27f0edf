"""The parser walks IPv6 extension headers to the real protocol and ports
(through the real fast path, with a firewall that denies TCP port 22 and
allows the rest): a header in front of TCP does not hide its port, a later
fragment has none, and a header chain cut short or too long is dropped
and counted as bad_ipv6."""
import pytest
from scapy.all import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                       IPv6ExtHdrRouting, TCP, raw)
from scapy.layers.ipsec import AH

from test_nf_firewall_ipv6 import labelled
from test_nf_helpers import harness

RULES = "deny tcp any any any 22\ndefault allow"
SRC, DST = "2001:db8:9::7", "2001:db8:1::5"


def ssh(*headers, sport=40000):
    packet = IPv6(src=SRC, dst=DST)
    for h in headers:
        packet = packet / h
    return packet / TCP(sport=sport, dport=22, flags="S")


@pytest.mark.parametrize("name,packet", [
    ("plain", ssh()),
    ("hop-by-hop", ssh(IPv6ExtHdrHopByHop())),
    ("hop-by-hop, routing, destination options", ssh(
        IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(addresses=["2001:db8::1"]), IPv6ExtHdrDestOpt())),
    ("first fragment", ssh(IPv6ExtHdrFragment(offset=0, m=1, id=7))),
    ("authentication header", ssh(AH(nh=6, payloadlen=4, spi=9, icv=b"\0" * 12))),
])
def test_an_extension_header_does_not_hide_the_port(name, packet):
    with harness([("firewall", {"rules_text": RULES})]) as h:
        assert h.send([labelled(packet)]) == [], name
        assert h.nf(1).counters()["rules"][0]["hits"] == 1


def test_a_later_fragment_has_no_ports_and_passes_by_the_rules():
    later = IPv6(src=SRC, dst=DST) / IPv6ExtHdrFragment(offset=100, m=0, id=7, nh=6) / (b"x" * 40)
    with harness([("firewall", {"rules_text": RULES})]) as h:
        assert len(h.send([labelled(later)])) == 1
        assert h.nf(1).counters()["rules"][0]["hits"] == 0


def test_extension_headers_cut_short_or_too_many_are_dropped_as_bad_ipv6():
    cut = raw(labelled(ssh(IPv6ExtHdrDestOpt())))
    cut = cut[:-20 - 8 + 4]                    # ends inside the destination options
    long_chain = ssh(*[IPv6ExtHdrDestOpt() for _ in range(9)])
    lying = bytearray(raw(labelled(ssh(IPv6ExtHdrHopByHop()))))
    lying[14 + 12 + 40 + 1] = 200              # hop-by-hop's length: 1608 bytes
    with harness([("firewall", {"rules_text": RULES})]) as h:
        for frame in (cut, labelled(long_chain), bytes(lying)):
            before = h.stats()["drops"]["bad_ipv6"]
            assert h.send([frame]) == []
            assert h.stats()["drops"]["bad_ipv6"] == before + 1
        assert h.nf(1).counters()["passed"] == h.nf(1).counters()["dropped"] == 0
        eight = ssh(*[IPv6ExtHdrDestOpt() for _ in range(8)])     # the most walked
        assert h.send([labelled(eight)]) == [] and h.nf(1).counters()["dropped"] == 1
