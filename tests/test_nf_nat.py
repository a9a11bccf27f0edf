"""Source NAT through the real fast path: outbound packets get the external
address and a port per protocol, replies find their mapping and go back,
ICMP echo by identifier, unknown inbound dropped, state moves."""
import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether

from nflib.api import NFConfigError
from nfs.nat import NAT
from test_nf_helpers import checksums_ok, harness, ping, tcp, udp, wait_for

EXT = "198.51.100.1"
CONFIG = {"external_ip": EXT, "internal": "10.0.0.0/8", "port_range": [40000, 40009]}


def ip_of(frame):
    return Ether(frame)[IP]


def test_round_trip_tcp_udp_icmp():
    with harness([("nat", CONFIG)]) as h:
        out = h.send([tcp("10.0.0.5", "203.0.113.9", 3333, 80),
                      udp("10.0.0.6", "203.0.113.9", 3333, 53, b"q"),
                      ping("10.0.0.7", "203.0.113.9", ident=77)])
        assert len(out) == 3 and all(checksums_ok(f) for f in out)
        t, u, i = (ip_of(f) for f in out)
        assert (t.src, u.src, i.src) == (EXT, EXT, EXT)
        assert 40000 <= t[TCP].sport <= 40009 and 40000 <= u[UDP].sport <= 40009
        # Same port number may serve TCP and UDP: pools are per protocol.
        assert t[TCP].sport == u[UDP].sport == 40000 and i[ICMP].id == 40000
        back = h.send([tcp("203.0.113.9", EXT, 80, t[TCP].sport, "SA"),
                       udp("203.0.113.9", EXT, 53, u[UDP].sport, b"a"),
                       ping("203.0.113.9", EXT, ident=i[ICMP].id, type_=0)])
        assert len(back) == 3 and all(checksums_ok(f) for f in back)
        t2, u2, i2 = (ip_of(f) for f in back)
        assert (t2.dst, t2[TCP].dport) == ("10.0.0.5", 3333)
        assert (u2.dst, u2[UDP].dport) == ("10.0.0.6", 3333)
        assert (i2.dst, i2[ICMP].id) == ("10.0.0.7", 77)
        c = h.nf(1).counters()
        assert c["tcp"]["mappings"] == c["udp"]["mappings"] == c["icmp"]["mappings"] == 1
        assert c["tcp"]["out"] == c["tcp"]["in"] == 1


def test_mapping_is_reused_and_pool_exhaustion_drops():
    with harness([("nat", CONFIG)]) as h:
        first = ip_of(h.send([udp("10.0.0.5", "203.0.113.1", 1000, 53)])[0])[UDP].sport
        again = ip_of(h.send([udp("10.0.0.5", "203.0.113.2", 1000, 53)])[0])[UDP].sport
        assert first == again        # endpoint-independent mapping
        out = h.send([udp("10.0.1.1", "203.0.113.1", 2000 + i, 53) for i in range(12)])
        assert len(out) == 9         # ten ports, one already taken
        c = h.nf(1).counters()["udp"]
        assert c["mappings"] == 10 and c["exhausted"] == 3 and c["use"] == 1.0


def test_unknown_inbound_dropped_other_traffic_passes():
    with harness([("nat", CONFIG)]) as h:
        out = h.send([tcp("203.0.113.9", EXT, 80, 40005, "SA"),
                      ping("203.0.113.9", EXT, ident=5, type_=3),
                      udp("192.0.2.1", "192.0.2.2", 1, 2)])
        assert len(out) == 1 and ip_of(out[0]).src == "192.0.2.1"
        c = h.nf(1).counters()
        assert c["tcp"]["no_mapping"] == 1 and c["icmp"]["no_mapping"] == 1 and c["passed"] == 1


def test_mappings_expire():
    with harness([("nat", dict(CONFIG, timeouts={"udp": 0.2}))]) as h:
        p = ip_of(h.send([udp("10.0.0.5", "203.0.113.1", 1000, 53)])[0])[UDP].sport
        wait_for(lambda: h.nf(1).counters()["udp"]["mappings"] == 0, "the mapping expiring")
        assert h.send([udp("203.0.113.1", EXT, 53, p)]) == []
        assert h.nf(1).counters()["udp"]["mappings"] == 0


def test_export_import_keeps_replies_flowing():
    with harness([("nat", CONFIG)]) as h:
        port = ip_of(h.send([tcp("10.0.0.5", "203.0.113.9", 3333, 80)])[0])[TCP].sport
        state = h.nf(1).export_state()
    assert [m["internal"] for m in state["mappings"]] == [["10.0.0.5", 3333]]
    with harness([("nat", CONFIG)]) as h2:
        assert h2.nf(1).import_state(state) == 1
        back = h2.send([tcp("203.0.113.9", EXT, 80, port, "A")])
        assert (ip_of(back[0]).dst, ip_of(back[0])[TCP].dport) == ("10.0.0.5", 3333)
        # and the same internal endpoint keeps its port outbound
        out = h2.send([tcp("10.0.0.5", "203.0.113.9", 3333, 80, "A")])
        assert ip_of(out[0])[TCP].sport == port
        with pytest.raises(NFConfigError, match="state is for external address 198.51.100.1"):
            NAT(dict(CONFIG, external_ip="198.51.100.2")).import_state(state)


def test_config_errors():
    with pytest.raises(NFConfigError) as err:
        NAT({"internal": "10.0.0.0/8", "port_range": [2000, 1000], "timeouts": {"tcp": 0, "sctp": 5}})
    assert str(err.value).splitlines() == [
        "<nat config>: missing key 'external_ip'",
        "<nat config>: port_range: must be [LOW, HIGH] within 1-65535, got [2000, 1000]",
        "<nat config>: timeouts.sctp: unknown key; known: icmp, tcp, udp",
        "<nat config>: timeouts.tcp: must be a positive number, got 0",
    ]
    with pytest.raises(NFConfigError, match=r"^<nat config>: external_ip: 10.1.2.3 is inside the internal network 10.0.0.0/8$"):
        NAT({"external_ip": "10.1.2.3", "internal": "10.0.0.0/8"})


def test_aged_mappings_free_their_ports_for_new_endpoints():
    with harness([("nat", dict(CONFIG, timeouts={"udp": 0.2}))]) as h:
        first = h.send([udp("10.0.1.1", "203.0.113.1", 2000 + i, 53) for i in range(10)])
        assert sorted(ip_of(f)[UDP].sport for f in first) == list(range(40000, 40010))
        assert h.send([udp("10.0.1.2", "203.0.113.1", 3000, 53)]) == []    # pool exhausted
        wait_for(lambda: h.nf(1).counters()["udp"]["mappings"] == 0, "the mappings expiring")
        later = h.send([udp("10.0.2.1", "203.0.113.1", 4000 + i, 53) for i in range(10)])
        assert sorted(ip_of(f)[UDP].sport for f in later) == list(range(40000, 40010))
        c = h.nf(1).counters()
        assert c["udp"]["mappings"] == 10 and c["udp"]["exhausted"] == 1
        assert c["flow_table"]["inserts"] == 20 and c["flow_table"]["full"] == 0
