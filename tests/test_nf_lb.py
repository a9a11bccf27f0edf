"""The load balancer through the real fast path: Maglev spreads flows,
rewrites MAC and IP with right checksums, a flow keeps its backend while
the pool changes, only a removed backend's flows move, state moves."""
import pytest
from scapy.all import IP, Ether

from nflib.api import NFConfigError
from nfs.lb import LoadBalancer, parse_config
from test_nf_helpers import checksums_ok, harness, replan, tcp, udp

VIP = "10.0.1.10"
POOL = [{"name": f"web{i}", "ip": f"10.0.2.{i}", "mac": f"02:00:00:00:02:0{i}"} for i in range(1, 5)]


def lb_config(out_port=None, backends=POOL):
    config = {"vip": VIP, "backends": backends, "table_size": 4093}
    if out_port is not None:
        config["out_port"] = out_port
    return config


def flows(n):
    return [tcp(f"192.0.2.{1 + i % 200}", VIP, 10000 + i, 80, flags="A") for i in range(n)]


def backend_of(frames):
    """{(src, sport): backend ip} of the frames that came out."""
    return {(Ether(f)[IP].src, Ether(f)[IP].sport): Ether(f)[IP].dst for f in frames}


def test_maglev_spreads_rewrites_and_keeps_checksums():
    with harness([("lb", lb_config())]) as h:
        replan(h, [("lb", lb_config(out_port=h.out_port))])
        out = h.send(flows(400))
        assert len(out) == 400
        by_ip = {}
        for f in out:
            pkt = Ether(f)
            n = int(pkt[IP].dst.rsplit(".", 1)[1])
            assert pkt.dst == f"02:00:00:00:02:0{n}"
            assert checksums_ok(f)
            by_ip[n] = by_ip.get(n, 0) + 1
        assert sorted(by_ip) == [1, 2, 3, 4]
        assert min(by_ip.values()) > 50           # Maglev is near even
        broken = bytearray(out[0])
        broken[30] ^= 1                           # a bit of the new dst IP
        assert not checksums_ok(bytes(broken))
        c = h.nf(1).counters()
        assert c["balanced"] == 400 and c["flows"] == 400
        assert sum(b["packets"] for b in c["backends"]) == 400


def test_not_vip_passes_untouched_and_udp_zero_checksum_kept():
    with harness([("lb", lb_config())]) as h:
        other = udp("192.0.2.1", "10.9.9.9", 5, 53, b"x")
        out = h.send([other])
        assert Ether(out[0])[IP].dst == "10.9.9.9"
        assert h.nf(1).counters()["not_vip"] == 1


def test_removed_backend_moves_only_its_own_flows_and_added_one_moves_none():
    with harness([("lb", lb_config())]) as h:
        frames = flows(300)
        before = backend_of(h.send(frames))
        lb = h.nf(1)
        lb.remove_backend("web2")
        after = backend_of(h.send(frames))
        for flow, ip in before.items():
            if ip == "10.0.2.2":
                assert after[flow] != "10.0.2.2"
            else:
                assert after[flow] == ip, f"flow {flow} moved though its backend stayed"
        assert lb.counters()["moved"] == sum(1 for ip in before.values() if ip == "10.0.2.2")
        lb.add_backend("web5", "10.0.2.5", "02:00:00:00:02:05")
        again = backend_of(h.send(frames))
        assert again == after
        fresh = backend_of(h.send([tcp("198.51.100.7", VIP, 2000 + i, 80) for i in range(200)]))
        assert "10.0.2.5" in fresh.values()
        assert "10.0.2.2" not in fresh.values()


def test_export_import_keeps_flows_on_another_instance():
    with harness([("lb", lb_config())]) as h:
        frames = flows(200)
        before = backend_of(h.send(frames))
        state = h.nf(1).export_state()
        assert len(state["flows"]) == 200
    # Another instance whose pool was listed in another order: Maglev alone
    # would differ for some flows; the imported map keeps each one.
    pool = list(reversed(POOL)) + [{"name": "web9", "ip": "10.0.2.9", "mac": "02:00:00:00:02:09"}]
    with harness([("lb", lb_config(backends=pool))]) as h2:
        assert h2.nf(1).import_state(state) == 200
        assert backend_of(h2.send(frames)) == before


def test_config_errors_name_the_key():
    bad = {"vip": "10.0.1", "table_size": 1000,
           "backends": [{"name": "a", "ip": "10.0.2.1", "mac": "zz"},
                        {"name": "a", "ip": "10.0.2.2", "mac": "02:00:00:00:00:02", "weight": 2}]}
    with pytest.raises(NFConfigError) as err:
        LoadBalancer(bad)
    assert str(err.value).splitlines() == [
        "<lb config>: vip: must be an IPv4 address, got '10.0.1'",
        "<lb config>: table_size: must be a prime between 7 and 65537 (Maglev), got 1000",
        "<lb config>: backends[0].mac: must be a MAC address like 02:00:00:00:00:01, not 'zz'",
        "<lb config>: backends[1].weight: unknown key; known: ip, ip6, mac, name",
        "<lb config>: backends[1].name: backend 'a' is named twice",
    ]


def test_config_file_errors_have_lines(tmp_path):
    path = tmp_path / "lb.yaml"
    path.write_text("vip: 10.0.1.10\nbackends:\n  - name: web1\n    ip: 10.0.2.300\n"
                    "    mac: 02:00:00:00:02:01\nflow_timeout: -5\n")
    with pytest.raises(NFConfigError) as err:
        parse_config({"file": str(path)})
    assert str(err.value).splitlines() == [
        f"{path}:6: flow_timeout: must be a positive number, got -5",
        f"{path}:4: backends[0].ip: must be an IPv4 address, got '10.0.2.300'",
    ]
