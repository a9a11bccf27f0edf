"""The firewall on IPv6 through the real fast path: rules with IPv6
prefixes, rules with no address for both families, first match wins, the
default counted apart for IPv6, and two flows whose addresses' digests
collide (the 5-tuple NFs read holds 32-bit digests of IPv6 addresses):
the host's flow table keys whole addresses, so they are two flows, and
the firewall judges each by its own address.  Packets come
labelled, as the ingress switch sends an IPv6 chain's packets (a host
classifies IPv4 only)."""
from scapy.all import ICMPv6EchoRequest, IP, IPv6, TCP, UDP, Ether
from scapy.contrib.mpls import MPLS

from contracts.wire import SI_FIRST
from host_agent.harness import HOST_MAC, NODE_LABEL, SPI
from ipv6crc import collide
from test_nf_helpers import harness

RULES = """
deny  tcp   2001:db8:bad::/48 any              any any
allow tcp   any               2001:db8:1::/48  any 80
allow icmp6 any               any
allow tcp   any               10.0.1.0/24      any 80
allow udp   any               any              any 53
default deny
"""
CLIENT = "2001:db8:9::7"


def labelled(packet):
    """`packet` (from IP up) as the chain's ingress switch sends it."""
    return bytes(Ether(dst=HOST_MAC, type=0x8847) / MPLS(label=NODE_LABEL, s=0, ttl=64)
                 / MPLS(label=SPI, s=0, ttl=64) / MPLS(label=SI_FIRST, s=1, ttl=64) / packet)


def tcp6(src, dst, dport=80, sport=40000):
    return labelled(IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S"))


def hits(h):
    return [r["hits"] for r in h.nf(1).counters()["rules"]]


def test_ipv6_rules_decide_ipv6_packets_and_ipv4_rules_ipv4_ones():
    with harness([("firewall", {"rules_text": RULES})]) as h:
        cases = [  # (frame, passes, rule hit: 1-based, 0 default)
            (tcp6(CLIENT, "2001:db8:1::5"), True, 2),
            (tcp6("2001:db8:bad::7", "2001:db8:1::5"), False, 1),
            (tcp6(CLIENT, "2001:db8:2::5"), False, 0),            # outside the prefix
            (tcp6(CLIENT, "2001:db8:1::5", dport=443), False, 0),
            (labelled(IPv6(src=CLIENT, dst="2001:db8:2::5") / ICMPv6EchoRequest()), True, 3),
            (labelled(IPv6(src=CLIENT, dst="2001:db8:2::5") / UDP(sport=5353, dport=53)),
             True, 5),                                                 # no address: both
            (labelled(IP(src="192.0.2.7", dst="10.0.1.5") / TCP(sport=40000, dport=80)),
             True, 4),
            (bytes(Ether(dst=HOST_MAC) / IP(src="192.0.2.7", dst="10.0.2.5")
                   / UDP(sport=5353, dport=53)), True, 5),             # classified here
        ]
        for frame, passes, rule in cases:
            before, defaults = hits(h), h.nf(1).counters()["default"]
            for _ in range(2):          # the second packet: the flow's cached answer
                assert len(h.send([frame])) == (1 if passes else 0), Ether(frame).summary()
            want = [n + (2 if i == rule - 1 else 0) for i, n in enumerate(before)]
            assert hits(h) == want, Ether(frame).summary()
            assert h.nf(1).counters()["default"] == defaults + (2 if rule == 0 else 0)
        c = h.nf(1).counters()
        assert (c["ipv6"], c["ipv6_default"]) == (12, 4)


def test_an_address_whose_digest_collides_is_a_flow_of_its_own():
    """An attacker in a denied /48 picks the last 64 bits of its address so
    that its digest equals an allowed client's: the packets' 5-tuples (as
    NFs read them) are equal, yet the host's flow table, keyed on whole
    addresses, gives the attacker an entry of its own, and the firewall
    judges it by its own address."""
    attacker = collide(CLIENT, "2001:db8:bad::")
    assert attacker.startswith("2001:db8:bad:") and attacker != CLIENT
    with harness([("firewall", {"rules_text": RULES})]) as h:
        allowed, forged = tcp6(CLIENT, "2001:db8:1::5"), tcp6(attacker, "2001:db8:1::5")
        assert len(h.send([allowed])) == 1
        inserts = h.stats()["flow_table"]["inserts"]
        assert h.send([forged]) == []
        assert h.stats()["flow_table"]["inserts"] == inserts + 1, \
            "the forged flow shared the allowed flow's entry"
        assert len(h.send([allowed])) == 1 and h.send([forged]) == []
        assert h.stats()["flow_table"]["inserts"] == inserts + 1
        assert hits(h)[:2] == [2, 2]


def test_ddos_blocks_an_ipv6_syn_flood_and_not_its_neighbour():
    """ddos counts IPv6 SYNs per source (the source's digest) as it counts
    IPv4 ones: a source over the threshold is blocked, another source of
    the same /64 is not."""
    config = {"syn_threshold": 20, "packet_threshold": 100000, "window": 10.0}
    with harness([("ddos", config)]) as h:
        flood = [tcp6("2001:db8:9::66", "2001:db8:1::5", sport=1000 + i) for i in range(40)]
        out = h.send(flood)
        c = h.nf(1).counters()
        assert c["blocked_syn_flood"] == 1 and len(out) == 20 and c["dropped"] == 20
        assert len(h.send([tcp6("2001:db8:9::67", "2001:db8:1::5")])) == 1


def test_ipv6_rule_errors_name_the_line():
    from nfs.configs import NFConfigError
    from nfs.fwrules import parse_rules
    rules, _ = parse_rules("allow tcp any 2001:db8::/32 any 80\nallow udp any any", "fw.rules")
    assert [r.family for r in rules] == [6, 0]
    text = ("allow tcp 10.0.0.0/8 2001:db8::/32 any 80\n"
            "deny tcp 2001:db8::/129 any\n"
            "allow tcp 2001:db8::zz any\n")
    try:
        parse_rules(text, "fw.rules")
    except NFConfigError as err:
        lines = str(err).splitlines()
    else:
        raise AssertionError("bad rules loaded")
    assert lines[0].startswith("fw.rules:1: source 10.0.0.0/8 and destination 2001:db8::/32 "
                               "are not of one family")
    assert lines[1].startswith("fw.rules:2: bad address:") and "129" in lines[1]
    assert lines[2].startswith("fw.rules:3: bad address:") and "zz" in lines[2]


STATEFUL = """
allow tcp 10.0.0.0/8 any any 80
allow tcp 2001:db8:9::/48 any any 443
allow udp 2001:db8:9::/48 any any 53
default deny
"""
SERVER = "2001:db8:1::5"


def tcp6_flags(src, dst, sport, dport, flags):
    return labelled(IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))


def test_stateful_firewall_tracks_ipv6_connections_by_their_whole_addresses():
    """firewall-stateful opens IPv6 connections as it opens IPv4 ones: a
    reply passes without a rule; an attacker whose address's digest equals
    the server's, sending the reply's ports, is no reply; the connections
    move with the instance (export/import)."""
    attacker = collide(SERVER, "2001:db8:bad::")
    with harness([("firewall-stateful", {"rules_text": STATEFUL})]) as h:
        assert len(h.send([tcp6_flags(CLIENT, SERVER, 40000, 443, "S")])) == 1
        assert len(h.send([tcp6_flags(SERVER, CLIENT, 443, 40000, "SA")])) == 1
        assert h.send([tcp6_flags(attacker, CLIENT, 443, 40000, "SA")]) == []
        assert h.send([tcp6_flags(SERVER, CLIENT, 443, 40001, "SA")]) == []   # no such connection
        c = h.nf(1).counters()
        assert (c["opened"], c["replies"], c["dropped"]) == (1, 1, 2), c
        assert c["connections"] == c["connections6"] == 1
        assert c["flow_table6"]["inserts"] == 1
        v4 = labelled(IP(src="10.0.0.5", dst="192.0.2.80") / TCP(sport=4000, dport=80, flags="S"))
        assert len(h.send([v4])) == 1
        state = h.nf(1).export_state()
    assert sorted(k["key"] for k in state["connections"]) == [
        [6, "10.0.0.5", "192.0.2.80", 4000, 80], [6, CLIENT, SERVER, 40000, 443]]
    with harness([("firewall-stateful", {"rules_text": STATEFUL})]) as h2:
        assert h2.nf(1).import_state(state) == 2
        assert len(h2.send([tcp6_flags(SERVER, CLIENT, 443, 40000, "A")])) == 1
        back4 = labelled(IP(src="192.0.2.80", dst="10.0.0.5") / TCP(sport=80, dport=4000, flags="A"))
        assert len(h2.send([back4])) == 1
        c = h2.nf(1).counters()
        assert (c["replies"], c["connections"], c["connections6"]) == (2, 2, 1)
