"""controller.plans: every plan passes contracts.plan.check_plan, and a
walker that follows the hops host to host visits each chain's NFs in order
and carries exactly the placement's shares."""
import dataclasses
import glob
import json
import os
import re

import pytest

from controller import placement, plans, topogen
from controller.topology import load_topology
from contracts.model import Chain, Edge, Host, Link, NFType, Switch, Topology
from contracts.plan import PlanError, check_plan, load_plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def walk(topo, host_plans, chain, start):
    """Follow a packet of `chain` from `start` (a host) at SI 255.  Returns
    [(nf type, host)] visited, the end entry, and {(si, host): mass} of one
    unit of traffic spread by the remote weights."""
    by_host = {name: {(h["spi"], h["si"]): h for h in p["hops"]}
               for name, p in host_plans.items()}
    types = {name: {i["id"]: i["nf"] for i in p["instances"]}
             for name, p in host_plans.items()}
    label_of = {h.name: h.label for h in topo.hosts}
    visits, ends, mass = [], [], {}

    def go(host, si, weight, seen):
        hop = by_host[host].get((chain.spi, si))
        assert hop is not None, f"{host} has no hop for SPI {chain.spi} SI {si}"
        if "local" in hop:
            mass[(si, host)] = mass.get((si, host), 0.0) + weight
            seen = seen + [(types[host][hop["local"]], host)]
            go(host, si - 1, weight, seen)
        elif "remote" in hop:
            assert "local" not in hop
            total = sum(p["weight"] for p in hop["remote"])
            for peer in hop["remote"]:
                assert peer["host"] != host, "remote to itself"
                assert peer["label"] == label_of[peer["host"]]
                go(peer["host"], si, weight * peer["weight"] / total, seen)
        else:
            visits.append(seen)
            ends.append(hop["end"])

    go(start, 255, 1.0, [])
    return visits, ends, mass


def check_all(topo, plan, generation=3):
    out = plans.host_plans(topo, plan, generation)
    assert set(out) == {h.name for h in topo.hosts}
    for name, p in out.items():
        check_plan(p)
        host = topo.host(name)
        assert (p["generation"], p["node_label"], p["mac"]) == (generation, host.label, host.mac)
        assert p["classifiers"] == [] and p["uplink"] == 0
    groups = plans.ingress_groups(topo, plan)
    for chain in topo.chains:
        want_mac = plans.egress_mac(topo, chain.egress)
        spread = {}
        for start, weight in groups[chain.name]:
            visits, ends, mass = walk(topo, out, chain, start)
            for seen in visits:
                assert [t for t, _ in seen] == list(chain.nfs), chain.name
            assert all((e["port"], e["dst_mac"]) == (0, want_mac) for e in ends)
            for key, m in mass.items():
                spread[key] = spread.get(key, 0.0) + weight * m
        # The weights carry exactly the placement's share to every host.
        for j in range(len(chain.nfs)):
            for host, share in plan.shares(chain.name, j).items():
                assert spread[(255 - j, host)] == pytest.approx(share, abs=1e-5), \
                    (chain.name, j, host)
    return out


def test_fat_tree_plans_walk_every_chain():
    topo = topogen.fat_tree(4, chains=24)
    check_all(topo, placement.place(topo))


def test_leaf_spine_plans_walk_every_chain():
    topo = topogen.leaf_spine(2, 4, 2, chains=12)
    check_all(topo, placement.place(topo))


def split_topo(cores=3, chains=None):
    """Rates that force split hops: 16 Mpps through fw (8) and ids (6)."""
    switches = (Switch("spine", 1), Switch("leaf1", 2), Switch("leaf2", 3))
    links = (Link("leaf1", 9, "spine", 1, 10.0), Link("leaf2", 9, "spine", 2, 10.0))
    hosts = tuple(Host(f"h{i + 1}", f"leaf{i % 2 + 1}", i + 1, f"02:00:00:00:00:{i + 1:02x}",
                       f"10.0.0.{i + 1}/24", cores, 16 + i) for i in range(8))
    catalog = {"fw": NFType("fw", 1, 8.0, "rules/fw.rules"), "ids": NFType("ids", 2, 6.0)}
    chains = chains or (Chain("big", "internet", "wan", {"ipv4_dst": "10.1.0.0/16"},
                    ("fw", "ids"), 16.0, 16),
              Chain("small", "internet", "h3", {"ipv4_dst": "10.2.0.0/16"},
                    ("ids", "fw"), 1.0, 17))
    edges = (Edge("internet", "spine", 10), Edge("wan", "leaf2", 10))
    return Topology("split", switches, hosts, links, edges, catalog, chains)


def test_split_chains_walk_with_weights_that_match_shares():
    topo = split_topo()
    plan = placement.place(topo)
    assert len(plan.hops["big"][1]) >= 3, "ids must be split"
    out = check_all(topo, plan)
    fw = [i for p in out.values() for i in p["instances"] if i["nf"] == "fw"]
    assert fw and all(i["config"] == {"rules": "rules/fw.rules"} and i["mode"] == "inline"
                      for i in fw)


def test_load_lowers_a_busy_hosts_weight():
    # fw fits one host; ids (2 cores, 6 Mpps) must go to two other hosts.
    topo = split_topo(cores=2, chains=(Chain("fan", "internet", "wan", {"ipv4_dst": "10.3.0.0/16"},
                                             ("fw", "ids"), 7.0, 16),))
    check_all(topo, placement.place(topo))
    plan = placement.place(topo)
    calm = plans.host_plans(topo, plan, 1)
    source, hop = next((h, hop) for h, p in calm.items() for hop in p["hops"]
                       if "remote" in hop and len(hop["remote"]) > 1)
    busy = hop["remote"][0]["host"]
    loaded = plans.host_plans(topo, plan, 1, load={busy: 1.0})
    after = next(x for x in loaded[source]["hops"]
                 if (x["spi"], x["si"]) == (hop["spi"], hop["si"]))
    before_w = {p["host"]: p["weight"] for p in hop["remote"]}
    after_w = {p["host"]: p["weight"] for p in after["remote"]}
    assert after_w[busy] < before_w[busy]
    assert sum(after_w.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(w > 0 for w in after_w.values())


def test_instance_ids_survive_a_host_loss():
    topo = topogen.fat_tree(4, chains=24)
    plan = placement.place(topo)
    before = plans.host_plans(topo, plan, 1)
    lost = max(plan.cores_used().items(), key=lambda kv: (kv[1], kv[0]))[0]
    again = placement.replace_after_host_loss(topo, plan, lost)
    after = check_all(topo, again)
    assert after[lost]["instances"] == [] and after[lost]["hops"] == []
    for host, p in before.items():
        if host == lost:
            continue
        old = {i["id"]: i["nf"] for i in p["instances"]}
        new = {i["id"]: i["nf"] for i in after[host]["instances"]}
        assert all(new.get(i) == nf for i, nf in old.items()), host


def test_edge_mac_is_stable_unicast_and_local():
    mac = plans.edge_mac("internet")
    assert mac == plans.edge_mac("internet") != plans.edge_mac("wan")
    assert re.fullmatch(r"06(:[0-9a-f]{2}){5}", mac)
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01


def agent_stats(host, instances):
    """Stats as host_agent.agent publishes them: {iid: (nf, mpps or None)}."""
    insts = {}
    for iid, (nf, mpps) in instances.items():
        insts[str(iid)] = {"nf": nf, "rx": 1000, "tx": 990, "drops": 0}
        if mpps is not None:
            insts[str(iid)]["mpps"] = mpps
    return {"ports": {"0": {"rx": 5, "tx": 5, "rx_mpps": 0.1, "tx_mpps": 0.1}},
            "instances": insts, "host": host, "time": 1.0, "plan_error": None}


def fan_topo_and_plan():
    """fw on one host, ids split over two others: remote hops with 2 peers."""
    topo = split_topo(cores=2, chains=(Chain("fan", "internet", "wan", {"ipv4_dst": "10.3.0.0/16"},
                                             ("fw", "ids"), 7.0, 16),))
    return topo, placement.place(topo)


def test_host_load_is_reported_mpps_over_placed_capacity(caplog):
    topo, plan = fan_topo_and_plan()
    on = {}
    for inst in plan.instances.values():
        on.setdefault(inst.host, []).append(inst)
    (fw_host, fw), = [(h, i[0]) for h, i in on.items() if i[0].nf == "fw"]
    ids_hosts = sorted(h for h, i in on.items() if i[0].nf == "ids")
    idle = next(h.name for h in topo.hosts if h.name not in on)
    stats = {fw_host: agent_stats(fw_host, {fw.id: ("fw", 2.0)}),        # 2 of 8 Mpps
             ids_hosts[0]: agent_stats(ids_hosts[0], {1: ("ids", 60.0)}),  # over: clipped
             ids_hosts[1]: agent_stats(ids_hosts[1], {1: ("ids", None)}),  # first publication
             idle: agent_stats(idle, {})}
    caplog.set_level("WARNING", logger="controller.plans")
    warned = set()
    load = plans.host_load(stats, topo, plan, warned)
    assert load == {fw_host: pytest.approx(0.25), ids_hosts[0]: 1.0}
    assert f"stats of {ids_hosts[1]} not used" in caplog.text
    assert 'instance 1 has no numeric "mpps"' in caplog.text
    caplog.clear()
    assert plans.host_load(stats, topo, plan, warned) == load
    assert caplog.text == "", "a problem is logged once"
    bad = {fw_host: "garbage", ids_hosts[0]: {"instances": []}}
    assert plans.host_load(bad, topo, plan, warned) == {}
    assert plans.host_load(None, topo, plan) == {} and plans.host_load(stats, topo, None) == {}


def test_raw_agent_stats_through_host_load_shift_remote_weights():
    topo, plan = fan_topo_and_plan()
    calm = plans.host_plans(topo, plan, 1)
    source, hop = next((h, hop) for h, p in calm.items() for hop in p["hops"]
                       if "remote" in hop and len(hop["remote"]) > 1)
    busy = hop["remote"][0]["host"]
    raw = {busy: agent_stats(busy, {i.id: (i.nf, 6.0) for i in plan.instances.values()
                                    if i.host == busy})}
    with pytest.raises(TypeError):      # what chain_manager used to pass
        plans.host_plans(topo, plan, 1, load=raw)
    loaded = plans.host_plans(topo, plan, 1, load=plans.host_load(raw, topo, plan))
    after = next(x for x in loaded[source]["hops"] if (x["spi"], x["si"]) == (hop["spi"], hop["si"]))
    before_w = {p["host"]: p["weight"] for p in hop["remote"]}
    after_w = {p["host"]: p["weight"] for p in after["remote"]}
    assert after_w[busy] < before_w[busy]


SHIPPED = sorted(glob.glob(os.path.join(REPO, "topologies", "*.yaml")))


def start_every_nf(topo):
    """What an agent does with a plan: make every instance's NF from the
    plan's config.  An NF that refuses makes the agent refuse the plan."""
    from host_agent.harness import ensure_eal
    from nflib.api import make_nf
    ensure_eal()
    out = plans.host_plans(topo, placement.place(topo), 1)
    made = set()
    for host, plan in sorted(out.items()):
        for inst in plan["instances"]:
            nf = make_nf(inst)
            # an NF that took its config reports counters; a rule NF has rules
            assert isinstance(nf.counters(), dict), (host, inst)
            if inst["nf"] in ("firewall", "ids"):
                assert len(nf.rules) > 0, (host, inst)
            made.add(inst["nf"])
    assert made == {nf for chain in topo.chains for nf in chain.nfs}
    # every catalog type, used by a chain or not, starts from its config
    for name, nf_type in sorted(topo.nfs.items()):
        make_nf({"nf": name, "config": plans._config(nf_type)})


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.basename(str(p)))
def test_every_nf_of_a_shipped_topology_starts_from_its_plan(path):
    start_every_nf(load_topology(path))


def test_every_nf_of_a_generated_topology_starts_from_its_plan():
    """Straight from the generator, no file in between: its catalog's
    configs are paths an agent opens as they are."""
    topo = topogen.leaf_spine(2, 4, 2, chains=12)
    assert {nf for c in topo.chains for nf in c.nfs} >= {"firewall", "ids", "lb", "nat"}
    start_every_nf(topo)


def test_catalog_config_becomes_what_the_nf_takes():
    assert plans._config(NFType("ids", 2, 3.0, "/r/web.rules")) == {"rules": "/r/web.rules"}
    assert plans._config(NFType("lb", 1, 9.0, "/r/lb.yaml")) == {"file": "/r/lb.yaml"}
    assert plans._config(NFType("nat", 1, 9.0, "/r/NAT.JSON")) == {"file": "/r/NAT.JSON"}
    assert plans._config(NFType("monitor", 1, 9.0)) == {}


def _good_plan():
    return {"host": "h1", "generation": 7, "node_label": 16, "mac": "02:00:00:00:00:01",
            "instances": [{"id": 1, "nf": "forward"}],
            "classifiers": [{"spi": 16, "match": {"ipv4_dst": "10.0.1.0/24"}}],
            "hops": [{"spi": 16, "si": 255, "local": 1},
                     {"spi": 16, "si": 254, "end": {"port": 0,
                                                    "dst_mac": "02:00:00:00:00:04"}}]}


def test_a_plan_with_three_errors_reports_all_three_by_key_path():
    plan = _good_plan()
    assert check_plan(plan) is plan
    plan["mac"] = "02:00:00:00:01"
    plan["classifiers"][0]["match"]["tcp_dst"] = 70000
    plan["hops"][1]["end"]["dst_mac"] = "zz"
    with pytest.raises(PlanError) as err:
        check_plan(plan)
    assert err.value.errors == [
        "plan.mac: must be a MAC address like 02:00:00:00:00:01, not '02:00:00:00:01'",
        "plan.classifiers[0].match.tcp_dst: must be 0..65535",
        "plan.hops[1].end.dst_mac: must be a MAC address like 02:00:00:00:00:01, not 'zz'",
    ]
    assert str(err.value) == "\n".join(err.value.errors)


def test_a_plan_missing_fields_names_each_and_checks_the_rest():
    plan = _good_plan()
    del plan["generation"], plan["mac"]
    plan["hops"][0]["si"] = 0
    with pytest.raises(PlanError) as err:
        check_plan(plan)
    assert err.value.errors == ["plan: missing field 'generation'",
                                "plan: missing field 'mac'",
                                "plan.hops[0].si: must be an integer 1..255"]


def test_a_plan_file_names_the_file_before_each_key_path(tmp_path):
    plan = _good_plan()
    plan["hops"][0]["local"] = 9
    plan["instances"][0]["mode"] = "threads"
    path = tmp_path / "h1.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(PlanError) as err:
        load_plan(path)
    assert err.value.errors == [
        f"{path}: plan.instances[0].mode: must be one of ('inline', 'process')",
        f"{path}: plan.hops[0].local: names instance 9, which the plan does not run"]
    path.write_text("{\n  \"host\": \n}")
    with pytest.raises(PlanError) as err:
        load_plan(path)
    assert err.value.errors == [f"{path}:3: Expecting value"]


# --- symmetric chains, pools, NAT slices (issue 9) ---------------------------

SERVED = os.path.join(REPO, "tests", "served.yaml")


def served_topo():
    return load_topology(SERVED)


def hops_of(out):
    return {name: {(h["spi"], h["si"]): h for h in p["hops"]} for name, p in out.items()}


def test_a_symmetric_chain_gets_a_reverse_path_through_the_same_hosts():
    topo = served_topo()
    web = topo.chain("web")
    assert web.symmetric and not topo.chain("plain").symmetric
    placed = placement.place(topo)
    assert len(placed.hops["web"][0]) == 2 and len(placed.hops["web"][1]) == 2, \
        "nat and monitor each need two instances: the pins have work to do"
    out = check_all(topo, placed)
    rspi, k = web.spi | (1 << 19), 3
    # The reply path: reverse NF order, ends at the ingress edge.
    back = dataclasses.replace(web, spi=rspi)
    on = [placed.shares("web", j) for j in range(k)]
    for start in on[k - 1]:
        visits, ends, _ = walk(topo, out, back, start)
        assert all([t for t, _ in seen] == ["lb", "monitor", "nat"] for seen in visits)
        assert all(e == {"port": 0, "dst_mac": plans.edge_mac("internet")} for e in ends)
    hops = hops_of(out)
    for host, by_key in hops.items():
        for (spi, si), hop in by_key.items():
            if spi == web.spi and "end" in hop:
                assert hop["end"]["reply"] == rspi
                assert hop["end"]["servers"] == [
                    {"ip": "10.0.1.10", "mac": "02:00:00:00:01:10"},
                    {"ip": "10.0.1.11", "mac": "02:00:00:00:01:11"}]
            if spi == web.spi and "local" in hop:
                i = 255 - si
                if i == 0:
                    assert "reverse" not in hop
                else:       # pin where the reply goes after this NF
                    assert hop["reverse"] == {"spi": rspi, "si": 255 - k + i}
                    assert (rspi, 255 - k + i) in by_key, host
            if spi == rspi and 256 - k <= si <= 254:
                forward_nf = k - 1 - (255 - si)
                assert hop["pinned"] == [
                    {"host": h, "label": topo.host(h).label, "mac": topo.host(h).mac}
                    for h in sorted(on[forward_nf]) if h != host], (host, si)
            elif spi == rspi:
                assert "pinned" not in hop
            if spi == topo.chain("plain").spi:
                assert "reverse" not in hop and "reply" not in hop.get("end", {})
    assert not any(spi == topo.chain("plain").spi | (1 << 19)
                   for by_key in hops.values() for spi, _ in by_key)


def test_nat_instances_own_disjoint_slices_and_lb_gets_the_pool():
    topo = served_topo()
    placed = placement.place(topo)
    out = plans.host_plans(topo, placed, 1)
    nats = {(h, i["id"]): i["config"] for h, p in out.items() for i in p["instances"]
            if i["nf"] == "nat"}
    assert sorted(c["slice"] for c in nats.values()) == [0, 1]
    for config in nats.values():
        n = config["slice"]
        assert config["slices"] == 16
        assert config["port_range"] == [1024 + n * 4032, 1024 + (n + 1) * 4032 - 1]
        assert config["external_ip"] == "198.51.100.1" and "file" not in config
    lbs = [i["config"] for p in out.values() for i in p["instances"] if i["nf"] == "lb"]
    assert lbs and all(c["vip"] == "10.0.1.100" and c["backends"] == [
        {"name": "web1", "ip": "10.0.1.10", "mac": "02:00:00:00:01:10"},
        {"name": "web2", "ip": "10.0.1.11", "mac": "02:00:00:00:01:11"}] for c in lbs)
    # The caller's slices are kept, whatever they are.
    keep = {key: 7 + n for n, key in enumerate(sorted(nats))}
    again = plans.host_plans(topo, placed, 2, slices=keep)
    assert {(h, i["id"]): i["config"]["slice"] for h, p in again.items()
            for i in p["instances"] if i["nf"] == "nat"} == keep
    assert plans.nat_slices(topo, placed, previous=keep) == keep


def test_every_nf_of_a_served_topology_starts_from_its_plan():
    start_every_nf(served_topo())


def test_an_lb_of_pools_with_several_addresses_balances_without_a_vip(caplog):
    topo = served_topo()
    web = topo.chain("web")
    other = dataclasses.replace(web, name="cart", spi=18, match={"ipv4_dst": "10.0.1.101/32"},
                                nfs=("lb",), mpps=0.1)
    topo = topo.with_chains([web, other])
    out = plans.host_plans(topo, placement.place(topo), 1)
    both = [i["config"] for p in out.values() for i in p["instances"] if i["nf"] == "lb"]
    assert both and all("vip" not in c and len(c["backends"]) == 2 for c in both)
    assert "lb serving chains cart, web: they name several destination addresses" \
        in caplog.text


def test_a_host_classifier_on_ipv6_is_refused_by_name():
    """The host classifier (rte_acl) matches IPv4: an IPv6 match in a
    plan's classifier is an error, not a rule that would match anything."""
    plan = _good_plan()
    plan["classifiers"][0]["match"] = {"ipv6_dst": "2001:db8:1::/48"}
    with pytest.raises(PlanError) as err:
        check_plan(plan)
    assert err.value.errors == ["plan.classifiers[0].match: a host classifier matches IPv4 "
                                "only (a chain's IPv6 match is classified at its ingress switch)"]
