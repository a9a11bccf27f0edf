"""The load balancer on IPv6 through the real fast path: Maglev spreads
IPv6 flows over the backends' IPv6 addresses, each flow keeps its
backend, the destination (16 bytes) and the TCP/UDP/ICMPv6 checksum are
rewritten (checked by scapy), replies get the VIP back, IPv4 and IPv6
flows share one lb, a family without backends is dropped and counted,
state of both families moves, and a pool end picks the server by its
IPv6 address.  Packets come labelled, as the ingress switch sends an
IPv6 chain's packets (a host classifies IPv4 only)."""
import pytest
from scapy.all import ICMPv6EchoReply, ICMPv6EchoRequest, IP, IPv6, TCP, UDP, Ether, raw

from host_agent.harness import chain_plan
from nflib.api import NFConfigError, make_nf
from nfs.lb import parse_config
from test_nf_firewall_ipv6 import labelled
from test_nf_helpers import checksums_ok, harness, replan, tcp

VIP6 = "2001:db8:1::10"
VIP = "10.0.1.10"
CLIENT6 = "2001:db8:9::7"
POOL = [{"name": f"web{i}", "ip": f"10.0.2.{i}", "ip6": f"2001:db8:2::{i}",
         "mac": f"02:00:00:00:02:0{i}"} for i in range(1, 5)]
BY_IP6 = {b["ip6"]: b for b in POOL}


def config(out_port=None, backends=POOL, **kw):
    c = dict({"vip": VIP, "vip6": VIP6, "backends": backends, "table_size": 4093}, **kw)
    if out_port is not None:
        c["out_port"] = out_port
    return c


def tcp6(src, dst, sport, dport=80, flags="S", payload=b""):
    return labelled(IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags,
                                                 seq=1000) / payload)


def clients(n, flags="S"):
    return [tcp6(f"2001:db8:9::{1 + i % 200:x}", VIP6, 10000 + i, flags=flags)
            for i in range(n)]


def checksums6_ok(frame):
    """True if the L4 checksum of an IPv6 frame is right (scapy recomputes
    it on a copy with the checksum deleted)."""
    ip = Ether(frame)[IPv6]
    fresh = ip.copy()
    old = []
    for layer in (TCP, UDP, ICMPv6EchoRequest, ICMPv6EchoReply):
        if layer in ip:
            old.append((layer, ip[layer].cksum if layer not in (TCP, UDP) else ip[layer].chksum))
            if layer in (TCP, UDP):
                del fresh[layer].chksum
            else:
                del fresh[layer].cksum
    fresh = IPv6(raw(fresh))
    return bool(old) and all(
        value == (fresh[layer].chksum if layer in (TCP, UDP) else fresh[layer].cksum)
        for layer, value in old)


def from_backend(frame, flags="SA", payload=b""):
    """The backend's answer to an IPv6 frame the lb sent it, labelled."""
    ip = Ether(frame)[IPv6]
    l4 = (TCP(sport=ip[TCP].dport, dport=ip[TCP].sport, flags=flags, seq=7, ack=1001)
          if TCP in ip else UDP(sport=ip[UDP].dport, dport=ip[UDP].sport))
    return labelled(IPv6(src=ip.dst, dst=ip.src) / l4 / payload)


def test_ipv6_flows_spread_keep_their_backend_and_checksums():
    with harness([("lb", config())]) as h:
        replan(h, [("lb", config(out_port=h.out_port))])
        out = h.send(clients(400))
        assert len(out) == 400
        first, count = {}, {}
        for f in out:
            pkt = Ether(f)
            dst = pkt[IPv6].dst
            assert dst in BY_IP6 and pkt.dst == BY_IP6[dst]["mac"], pkt.summary()
            assert checksums6_ok(f), pkt.summary()
            first[(pkt[IPv6].src, pkt[TCP].sport)] = dst
            count[dst] = count.get(dst, 0) + 1
        assert sorted(count) == sorted(BY_IP6) and min(count.values()) > 50   # Maglev: near even
        broken = bytearray(out[0])
        broken[14 + 24 + 15] ^= 1                 # a bit of the new destination address
        assert not checksums6_ok(bytes(broken))
        again = h.send(clients(400, flags="A"))
        assert {(Ether(f)[IPv6].src, Ether(f)[TCP].sport): Ether(f)[IPv6].dst
                for f in again} == first           # each flow kept its backend
        c = h.nf(1).counters()
        assert (c["balanced6"], c["flows6"], c["balanced"], c["flows"]) == (800, 400, 0, 0)
        assert sum(b["packets"] for b in c["backends"]) == 800


def test_ipv6_replies_get_the_vip_back_with_right_checksums():
    with harness([("lb", config())]) as h:
        out = h.send([tcp6(CLIENT6, VIP6, 40000 + i) for i in range(30)])
        assert len(out) == 30 and VIP6 not in {Ether(f)[IPv6].dst for f in out}
        back = h.send([from_backend(f, "SA", b"HTTP/1.0 200 OK\r\n\r\nhello") for f in out])
        assert len(back) == 30
        for sent, got in zip(out, back):
            pkt = Ether(got)
            assert (pkt[IPv6].src, pkt[TCP].sport) == (VIP6, 80)
            assert (pkt[IPv6].dst, pkt[TCP].dport) == (CLIENT6, Ether(sent)[TCP].sport)
            assert checksums6_ok(got)
        udp_out = h.send([labelled(IPv6(src=CLIENT6, dst=VIP6) / UDP(sport=5353, dport=53)
                                   / b"query")])
        udp_back = h.send([from_backend(udp_out[0], payload=b"answer")])
        assert Ether(udp_back[0])[IPv6].src == VIP6 and checksums6_ok(udp_back[0])
        ping = h.send([labelled(IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest(id=7))])
        assert Ether(ping[0])[IPv6].dst in BY_IP6 and checksums6_ok(ping[0])
        c = h.nf(1).counters()
        assert (c["replies6"], c["reply_flows6"], c["balanced6"]) == (31, 32, 32)
        assert c["replies"] == 0


def test_one_lb_serves_both_families_each_over_its_backends():
    pool = [dict(POOL[0]), {k: v for k, v in POOL[1].items() if k != "ip"},
            {k: v for k, v in POOL[2].items() if k != "ip6"}]
    with harness([("lb", config(backends=pool))]) as h:
        v6 = {Ether(f)[IPv6].dst for f in h.send(clients(100))}
        v4 = {Ether(f)[IP].dst for f in h.send([tcp(f"192.0.2.{1 + i}", VIP, 10000 + i, 80)
                                                 for i in range(100)])}
        assert v6 == {POOL[0]["ip6"], POOL[1]["ip6"]}
        assert v4 == {POOL[0]["ip"], POOL[2]["ip"]}
        c = h.nf(1).counters()
        assert (c["balanced"], c["balanced6"]) == (100, 100)
        assert {b["name"]: (b["ip"], b["ip6"]) for b in c["backends"]}["web2"] == \
            (None, POOL[1]["ip6"])
        h.nf(1).add_backend("web9", None, "02:00:00:00:02:09", ip6="2001:db8:2::9")
        new = [tcp6(CLIENT6, VIP6, 20000 + i) for i in range(200)]
        assert "2001:db8:2::9" in {Ether(f)[IPv6].dst for f in h.send(new)}
        assert {Ether(f)[IP].dst for f in h.send(                  # web9 has no ip
            [tcp("192.0.2.9", VIP, 20000 + i, 80) for i in range(200)])} == v4


def test_ipv6_without_ipv6_backends_is_dropped_and_other_addresses_pass():
    v4_only = [{k: v for k, v in b.items() if k != "ip6"} for b in POOL]
    with harness([("lb", config(backends=v4_only))]) as h:
        assert h.send(clients(3)) == []                          # fail closed
        other = h.send([tcp6(CLIENT6, "2001:db8:1::99", 40000)])   # not the VIP
        assert Ether(other[0])[IPv6].dst == "2001:db8:1::99"
        c = h.nf(1).counters()
        assert (c["no_backend6"], c["not_vip6"], c["balanced6"]) == (3, 1, 0)


def test_an_ipv4_only_lb_has_no_ipv6_tables_and_drops_ipv6():
    v4_only = {"vip": VIP, "table_size": 4093,
               "backends": [{k: v for k, v in b.items() if k != "ip6"} for b in POOL]}
    with harness([("lb", v4_only)]) as h:
        assert h.send(clients(2) + [tcp6(CLIENT6, "2001:db8:1::99", 40000)]) == []
        c = h.nf(1).counters()
        assert (c["no_backend6"], c["flows6"]) == (3, 0) and "flow_table6" not in c
        with pytest.raises(NFConfigError) as err:
            h.nf(1).add_backend("web9", None, "02:00:00:00:02:09", ip6="2001:db8:2::9")
        assert str(err.value) == ("lb: backend 'web9' has an ip6, but this lb serves IPv4 "
                                  "only (its config named no ip6 backend nor a vip6)")
        assert h.nf(1).export_chunk(1 << 32, 10) == (None, [])


def test_state_of_both_families_moves_with_replies():
    with harness([("lb", config())]) as h:
        out6 = h.send([tcp6(CLIENT6, VIP6, 40000 + i) for i in range(40)])
        out4 = h.send([tcp("192.0.2.7", VIP, 40000 + i, 80) for i in range(10)])
        cursor, chunks = 0, []
        while cursor is not None:                   # as host_agent.replicas reads it
            cursor, chunk = h.nf(1).export_chunk(cursor, 7)
            chunks += chunk
        state = h.nf(1).state_of(chunks)
        whole = h.nf(1).export_state()
    assert [(f["key"], f["backend"]) for f in state["flows"]] == \
        [(f["key"], f["backend"]) for f in whole["flows"]]
    keys = [f["key"] for f in state["flows"]]
    assert len(keys) == 50 and sum(":" in k[1] for k in keys) == 40
    with harness([("lb", config(backends=list(reversed(POOL))))]) as h2:
        assert h2.nf(1).import_state(state) == 50
        c = h2.nf(1).counters()
        assert (c["flows6"], c["reply_flows6"], c["flows"]) == (40, 40, 10)
        back = h2.send([from_backend(f) for f in out6])
        assert [Ether(f)[IPv6].src for f in back] == [VIP6] * 40
        assert all(map(checksums6_ok, back))
        again = h2.send([tcp6(CLIENT6, VIP6, 40000 + i, flags="A") for i in range(40)])
        assert [Ether(f)[IPv6].dst for f in again] == [Ether(f)[IPv6].dst for f in out6]
        assert h2.nf(1).counters()["moved6"] == 0
        again4 = h2.send([tcp("192.0.2.7", VIP, 40000 + i, 80, "A") for i in range(10)])
        assert [Ether(f)[IP].dst for f in again4] == [Ether(f)[IP].dst for f in out4]
        assert all(map(checksums_ok, again4))


def test_a_pool_end_picks_the_server_by_its_ipv6_address():
    """The lb hands on (no out_port); the chain's end sends each packet to
    the MAC of the server whose ip6 is its destination (plans give pool
    ends their servers' ip6), and drops what no server has (no_server)."""
    with harness([("lb", config())]) as h:
        plan = chain_plan([("lb", config())], h.in_port, h.out_port, generation=2)
        plan["hops"][-1]["end"]["servers"] = [
            {k: b[k] for k in ("ip", "ip6", "mac")} for b in POOL[:3]]  # web4: not in the end
        h.manager.apply_plan(plan, make_nf)
        out = h.send(clients(200))
        assert 0 < len(out) < 200
        for f in out:
            pkt = Ether(f)
            assert pkt.dst == BY_IP6[pkt[IPv6].dst]["mac"] != POOL[3]["mac"]
        lost = h.nf(1).counters()["backends"][3]["packets"]
        assert lost == 200 - len(out) and h.manager.stats()["drops"]["no_server"] == lost


@pytest.mark.parametrize("bad,error", [
    ({"vip6": "10.0.1.10"}, "<lb config>: vip6: must be an IPv6 address, got '10.0.1.10'"),
    ({"backends": [{"name": "a", "mac": "02:00:00:00:00:02"}]},
     "<lb config>: backends[0]: needs an address: ip (IPv4), ip6 (IPv6) or both"),
    ({"backends": [{"name": "a", "ip": "2001:db8::1", "mac": "02:00:00:00:00:02"}]},
     "<lb config>: backends[0].ip: must be an IPv4 address, got '2001:db8::1'"),
    ({"backends": [{"name": "a", "ip6": "2001:db8::zz", "mac": "02:00:00:00:00:02"}]},
     "<lb config>: backends[0].ip6: must be an IPv6 address, got '2001:db8::zz'"),
])
def test_ipv6_config_errors_name_the_key(bad, error):
    with pytest.raises(NFConfigError) as err:
        parse_config(bad)
    assert str(err.value) == error
