"""An IPv6 chain through lb to a pool (issue 12): servers' optional `ip6`
in the topology (FILE:LINE errors), the chain refused unless every server
of its pool has one, the lb instances' backends and `vip6`, the pool
end's servers with their ip6, and check_plan's errors on them."""
import os

import pytest

from contracts.plan import PlanError, check_plan
from controller import placement, plans
from controller.chains import RequestError, chain_from_json
from controller.topology import TopologyError, dump_topology, parse_topology
from test_plans import _good_plan, start_every_nf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPO, "tests", "served6.yaml")      # configs from the rule library
VIP6 = "2001:db8:1::100"
TEXT = f"""\
name: served6
switches:
  - {{name: spine, dpid: 1}}
  - {{name: leaf1, dpid: 2}}
  - {{name: leaf2, dpid: 3}}
hosts:
  - {{name: h1, switch: leaf1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.0.1/24, cores: 2}}
  - {{name: h2, switch: leaf2, port: 1, mac: "02:00:00:00:00:02", ip: 10.0.0.2/24, cores: 2}}
links:
  - {{a: leaf1, a_port: 9, b: spine, b_port: 1}}
  - {{a: leaf2, a_port: 9, b: spine, b_port: 2}}
edges:
  - {{name: internet, switch: spine, port: 10}}
servers:
  - {{name: web1, switch: leaf2, port: 5, mac: "02:00:00:00:01:10", ip: 10.0.1.10/24, ip6: "2001:db8:2::10"}}
  - {{name: web2, switch: leaf2, port: 6, mac: "02:00:00:00:01:11", ip: 10.0.1.11/24, ip6: "2001:db8:2::11/64"}}
  - {{name: db, switch: leaf2, port: 7, mac: "02:00:00:00:01:12", ip: 10.0.1.12/24}}
nfs:
  monitor: {{cores: 1, mpps: 1}}
  lb: {{cores: 1, mpps: 2, config: generic-lb.yaml}}
  nat: {{cores: 1, mpps: 1, config: nat.yaml}}
chains:
  - name: web6
    ingress: internet
    egress: [web1, web2]
    match: {{ipv6_dst: "{VIP6}/128", ip_proto: 6, tcp_dst: 80}}
    nfs: [monitor, lb]
    mpps: 0.5
"""


def topo(text=TEXT):
    return parse_topology(text, SOURCE)


def refused(text):
    with pytest.raises(TopologyError) as err:
        topo(text)
    return [e.replace(SOURCE, "t.yaml") for e in err.value.errors]


def test_servers_carry_their_ip6_and_a_dump_reads_back_the_same():
    t = topo()
    assert [s.ip6 for s in t.servers] == ["2001:db8:2::10", "2001:db8:2::11/64", None]
    assert parse_topology(dump_topology(t), SOURCE) == t


def test_a_bad_or_taken_ip6_is_named_with_its_line():
    bad = TEXT.replace('ip6: "2001:db8:2::10"', 'ip6: "10.0.9.9"')
    assert refused(bad) == ["t.yaml:15: server web1: ip6 must be an IPv6 address, like "
                            "2001:db8:1::10, not '10.0.9.9'"]
    taken = TEXT.replace('ip6: "2001:db8:2::11/64"', 'ip6: "2001:db8:2::10"')
    assert refused(taken) == ["t.yaml:16: server web2: address 2001:db8:2::10 is already "
                              "used by server web1 (line 15)"]


def test_an_ipv6_chain_through_lb_needs_ip6_on_every_server_of_its_pool():
    with_db = TEXT.replace("egress: [web1, web2]", "egress: [web1, db]")
    assert refused(with_db) == [
        "t.yaml:25: chain web6: egress[1]: server db has no ip6: an IPv6 chain through lb "
        "needs an IPv6 address for every server of its pool (give db an ip6)"]
    one = TEXT.replace("egress: [web1, web2]", "egress: web1")
    assert refused(one) == [
        "t.yaml:25: chain web6: egress: an IPv6 chain through lb must end at a pool of "
        "servers with ip6 (the lb balances over their IPv6 addresses), not server web1"]
    nat = TEXT.replace("nfs: [monitor, lb]", "nfs: [nat, lb]")
    assert refused(nat) == [
        "t.yaml:27: chain web6: nfs[0]: nat handles IPv4 only (it translates IPv4 addresses): "
        "an IPv6 chain through it would pass its packets untouched"]
    body = {"name": "shop6", "ingress": "internet", "egress": ["web2", "db"],
            "match": {"ipv6_dst": "2001:db8:1::101/128"}, "nfs": ["lb"], "mpps": 0.1}
    with pytest.raises(RequestError) as err:
        chain_from_json(body, topo(), [])
    assert err.value.errors == [
        "chain.egress[1]: server db has no ip6: an IPv6 chain through lb needs an IPv6 "
        "address for every server of its pool (give db an ip6)"]
    assert chain_from_json(dict(body, egress=["web2", "web1"]), topo(), []).pool == (
        "web2", "web1")


def test_lb_instances_get_ip6_backends_and_vip6_and_the_end_lists_ip6():
    t = topo()
    out = plans.host_plans(t, placement.place(t), 1)
    lbs = [i["config"] for p in out.values() for i in p["instances"] if i["nf"] == "lb"]
    assert lbs and all(c["vip6"] == VIP6 and c["backends"] == [
        {"name": "web1", "ip": "10.0.1.10", "ip6": "2001:db8:2::10", "mac": "02:00:00:00:01:10"},
        {"name": "web2", "ip": "10.0.1.11", "ip6": "2001:db8:2::11", "mac": "02:00:00:00:01:11"}]
        for c in lbs)
    ends = [h["end"] for p in out.values() for h in p["hops"]
            if "end" in h and h["spi"] == t.chain("web6").spi]
    assert ends and all(e["servers"] == [
        {"ip": "10.0.1.10", "mac": "02:00:00:00:01:10", "ip6": "2001:db8:2::10"},
        {"ip": "10.0.1.11", "mac": "02:00:00:00:01:11", "ip6": "2001:db8:2::11"}] for e in ends)
    start_every_nf(t)


def _with_servers(servers):
    plan = _good_plan()
    end = next(h for h in plan["hops"] if "end" in h)
    end["end"]["servers"] = servers
    return plan


def test_check_plan_takes_a_server_ip6_and_names_a_bad_one():
    good = [{"ip": "10.0.1.10", "mac": "02:00:00:00:01:10", "ip6": "2001:db8:2::10"},
            {"ip": "10.0.1.11", "mac": "02:00:00:00:01:11"}]
    check_plan(_with_servers(good))
    plan = _with_servers([dict(good[0], ip6="10.0.1.99"), dict(good[1], ip6="2001:db8:2::10")])
    where = next(i for i, h in enumerate(plan["hops"]) if "end" in h)
    with pytest.raises(PlanError) as err:
        check_plan(plan)
    assert err.value.errors == [
        f"plan.hops[{where}].end.servers[0].ip6: must be an IPv6 address, not '10.0.1.99'"]
    plan = _with_servers([good[0], dict(good[1], ip6="2001:db8:2::10")])
    with pytest.raises(PlanError) as err:
        check_plan(plan)
    assert err.value.errors == [
        f"plan.hops[{where}].end.servers[1].ip6: duplicate server address 2001:db8:2::10"]


def test_an_lb_of_ipv4_chains_only_gets_no_ip6_backends():
    """So it makes no IPv6 tables (nfs/lb.pyx), though its servers have ip6."""
    t = topo(TEXT.replace(f'ipv6_dst: "{VIP6}/128"', "ipv4_dst: 10.0.1.100/32"))
    out = plans.host_plans(t, placement.place(t), 1)
    lbs = [i["config"] for p in out.values() for i in p["instances"] if i["nf"] == "lb"]
    assert lbs and all(c["vip"] == "10.0.1.100" and "vip6" not in c and
                       [sorted(b) for b in c["backends"]] == [["ip", "mac", "name"]] * 2
                       for c in lbs)
