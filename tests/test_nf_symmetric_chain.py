"""One host runs a symmetric chain's two directions through the *same* NF
objects: forward firewall-stateful, ids, nat, lb; replies lb, nat, ids,
firewall-stateful.  Each NF keys its flows by the packet's bytes as they
reach it, so a reply that nat and lb rewrote on this host still finds the
firewall's connection and the IDS's reply stream; the client sees the
VIP answer, the backend sees the NAT's external address."""
from scapy.all import IP, TCP, Ether, raw

from contracts.plan import check_plan
from contracts.wire import SI_FIRST
from host_agent.harness import HOST_MAC, NODE_LABEL, OUT_MAC
from nflib.api import make_nf
from test_nf_helpers import checksums_ok, harness, tcp

EXT, VIP = "198.51.100.1", "10.0.1.10"
POOL = [{"name": f"web{i}", "ip": f"10.0.2.{i}", "mac": f"02:00:00:00:02:0{i}"} for i in (1, 2)]
NFS = [("firewall-stateful", {"rules_text": f"allow tcp any {VIP}/32 any 80\ndefault deny\n"}),
       ("ids", {"rules_text": 'drop ip any any -> any any (msg:"GPL ATTACK_RESPONSE id check '
                              'returned root"; content:"uid=0|28|root|29|"; sid:2100498;)\n'}),
       ("nat", {"external_ip": EXT, "internal": "172.16.0.0/12", "port_range": [30000, 39999]}),
       ("lb", {"vip": VIP, "backends": POOL, "table_size": 251})]
FWD, REV = 16, 17


def both_ways(in_port, out_port):
    """Forward SPI 16 runs instances 1..4 for packets to the VIP; SPI 17
    runs 4..1 for packets from the pool (the reverse path)."""
    instances = [{"id": i + 1, "nf": nf, "config": config, "mode": "inline"}
                 for i, (nf, config) in enumerate(NFS)]
    end = {"port": out_port, "dst_mac": OUT_MAC}
    hops = [{"spi": FWD, "si": SI_FIRST - i, "local": i + 1} for i in range(4)]
    hops += [{"spi": REV, "si": SI_FIRST - i, "local": 4 - i} for i in range(4)]
    hops += [{"spi": FWD, "si": SI_FIRST - 4, "end": end}, {"spi": REV, "si": SI_FIRST - 4, "end": end}]
    return check_plan({
        "host": "harness", "generation": 2, "node_label": NODE_LABEL, "mac": HOST_MAC,
        "instances": instances, "uplink": out_port, "hops": hops,
        "classifiers": [{"spi": FWD, "match": {"ipv4_dst": f"{VIP}/32"}},
                        {"spi": REV, "match": {"ipv4_src": "10.0.2.0/24"}}]})


def answer(frame, flags, payload=b"", seq=900, ack=0):
    ip = Ether(frame)[IP]
    return raw(Ether(dst=HOST_MAC) / IP(src=ip.dst, dst=ip.src)
               / TCP(sport=ip[TCP].dport, dport=ip[TCP].sport, flags=flags, seq=seq, ack=ack) / payload)


def test_connections_go_both_ways_through_the_same_instances():
    with harness([("forward", None)]) as h:
        h.manager.apply_plan(both_ways(h.in_port, h.out_port), make_nf)
        clients = [(f"172.16.0.{i + 1}", 40000 + i) for i in range(20)]
        syns = h.send([tcp(c, VIP, p, 80, "S", seq=100) for c, p in clients])
        assert len(syns) == 20
        assert all(Ether(f)[IP].src == EXT for f in syns)          # the backend sees the NAT
        assert {Ether(f)[IP].dst for f in syns} == {"10.0.2.1", "10.0.2.2"}
        synacks = h.send([answer(f, "SA", seq=900, ack=101) for f in syns])
        assert len(synacks) == 20 and all(map(checksums_ok, synacks))
        got = sorted((Ether(f)[IP].src, Ether(f)[TCP].sport, Ether(f)[IP].dst, Ether(f)[TCP].dport)
                     for f in synacks)
        assert got == sorted((VIP, 80, c, p) for c, p in clients)
        acks = h.send([tcp(c, VIP, p, 80, "PA", b"GET / HTTP/1.0\r\n\r\n", seq=101, ack=901)
                       for c, p in clients])
        assert [Ether(f)[IP].dst for f in acks] == [Ether(f)[IP].dst for f in syns]
        # One server answers with a root shell's id: the IDS drops that reply.
        replies = h.send([answer(f, "PA", b"uid=0(root) gid=0(root)" if i == 0 else b"200 OK",
                                 seq=901, ack=119) for i, f in enumerate(acks)])
        assert len(replies) == 19
        fw, ids, nat, lb = (h.nf(i).counters() for i in (1, 2, 3, 4))
        assert fw["opened"] == 20 and fw["replies"] == 39 and fw["invalid"] == 0
        assert ids["dropped"] == 1 and ids["flows"] >= 39
        assert nat["tcp"]["out"] == 40 and nat["tcp"]["in"] == 40
        assert lb["balanced"] == 40 and lb["replies"] == 40
        # A SYN-ACK no client asked for: nat knows no such port.
        assert h.send([raw(Ether(dst=HOST_MAC) / IP(src="10.0.2.1", dst=EXT)
                           / TCP(sport=80, dport=39999, flags="SA"))]) == []


def test_a_stateless_firewall_judges_the_tuple_the_packet_carries_now():
    """lb then firewall on one host: the firewall's rules see the VIP that lb
    put back as the reply's source, not the backend address the packet
    arrived with (its rules name only the VIP)."""
    rules = (f"allow tcp any {VIP}/32 any 80\nallow tcp {VIP}/32 any 80 any\n"
             "default deny\n")
    instances = [{"id": 1, "nf": "firewall", "config": {"rules_text": rules}, "mode": "inline"},
                 {"id": 2, "nf": "lb", "config": NFS[3][1], "mode": "inline"}]
    with harness([("forward", None)]) as h:
        end = {"port": h.out_port, "dst_mac": OUT_MAC}
        plan = check_plan({
            "host": "harness", "generation": 2, "node_label": NODE_LABEL, "mac": HOST_MAC,
            "instances": instances, "uplink": h.out_port,
            "hops": [{"spi": FWD, "si": SI_FIRST, "local": 1},
                     {"spi": FWD, "si": SI_FIRST - 1, "local": 2},
                     {"spi": FWD, "si": SI_FIRST - 2, "end": end},
                     {"spi": REV, "si": SI_FIRST, "local": 2},
                     {"spi": REV, "si": SI_FIRST - 1, "local": 1},
                     {"spi": REV, "si": SI_FIRST - 2, "end": end}],
            "classifiers": [{"spi": FWD, "match": {"ipv4_dst": f"{VIP}/32"}},
                            {"spi": REV, "match": {"ipv4_src": "10.0.2.0/24"}}]})
        h.manager.apply_plan(plan, make_nf)
        syns = h.send([tcp("172.16.0.9", VIP, 41000 + i, 80, "S", seq=7) for i in range(8)])
        assert len(syns) == 8
        replies = h.send([answer(f, "SA", seq=900, ack=8) for f in syns])
        assert len(replies) == 8
        assert {Ether(f)[IP].src for f in replies} == {VIP}
        fw = h.nf(1).counters()
        assert fw["dropped"] == 0 and fw["passed"] == 16
