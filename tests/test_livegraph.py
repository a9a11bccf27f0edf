"""controller.livegraph: sequences of fabric events -> the live graph and the
rules over it, checked by pushing labelled packets through the rules
(controller.ofsim) and, generatively, over random event sequences."""
import random

import pytest

from controller import flows, topogen
from controller.fabric import build_graph
from controller.livegraph import LiveFabric, describe, lldp_punt, rule_changes
from controller.ofsim import FabricSim
from test_fabric import with_servers


@pytest.fixture
def topo():
    return with_servers(topogen.leaf_spine(2, 2, 2, chains=2), 1)


def link_between(topo, a, b):
    return next(l for l in topo.links if {l.a, l.b} == {a, b})


def file_rules(topo, groups=None):
    return flows.switch_rules(topo, build_graph(topo), groups or {})


def labelled(label):
    return {"eth_src": "02:00:00:00:00:01", "eth_dst": "02:00:00:00:00:99",
            "eth_type": 0x0800, "mpls_ethertype": 0x8847,
            "mpls": [{"label": label, "tc": 0, "ttl": 64, "bos": 1}]}


def out_ports(rules):
    """Every port a switch's transport and plain rules may send out of."""
    ports = {a[1] for f in rules.flows if f.kind in ("transport", "l2", "arp")
             for a in f.actions if a[0] == "output"}
    ports |= {a[1] for g in rules.groups for b in g.buckets for a in b.actions}
    return ports


def sim(topo, rules):
    empty = flows.SwitchRules([], [])
    return FabricSim(topo, {sw.dpid: rules.get(sw.dpid, empty) for sw in topo.switches})


def assert_parts_reach_their_hosts(topo, live, rules):
    """From every live switch, a packet labelled for any host of its part
    comes out at that host and nowhere else."""
    fabric = sim(topo, rules)
    for switches, places in live.parts():
        for sw in switches:
            for host in topo.hosts:
                exits = fabric.send(sw, 0xFFFFFFFE, labelled(host.label))
                got = [(e.kind, e.name) for e in exits]
                want = [("host", host.name)] if host.name in places else []
                assert got == want, (sw, host.name, live.ports_down, live.gone)


def assert_no_rule_uses_a_down_port(topo, live, rules):
    for sw in topo.switches:
        if sw.dpid in rules:
            used = out_ports(rules[sw.dpid])
            down = {p for s, p in live.ports_down if s == sw.name}
            assert not used & down, (sw.name, used & down)


def test_nothing_down_gives_the_files_rules(topo):
    live = LiveFabric(topo)
    assert live.rules(topo, {}) == file_rules(topo)
    assert live.unreachable() == [] and len(live.parts()) == 1


def test_a_spine_link_down_is_routed_around_and_back(topo):
    live = LiveFabric(topo)
    link = link_between(topo, "leaf1", "spine1")
    before = live.rules(topo, {})
    changes = live.port_status(link.a, link.a_port, False, "link down")
    assert [c.text for c in changes] == [
        f"link {link.a}:{link.a_port} - {link.b}:{link.b_port} down "
        f"(port {link.a}:{link.a_port} link down)"]
    assert changes[0].effect == "routing around it"
    assert not live.graph().has_edge("leaf1", "spine1")
    rules = live.rules(topo, {})
    assert_no_rule_uses_a_down_port(topo, live, rules)
    assert link.b_port not in out_ports(rules[topo.switch("spine1").dpid])
    assert_parts_reach_their_hosts(topo, live, rules)
    kinds, touched = rule_changes(before, rules)
    assert kinds["transport"] > 0 and len(touched) >= 2
    # by hand: leaf1 and leaf2 reach the other leaf's two hosts over spine2
    # alone (2 transport rules each, their 2 ECMP groups go), spine1 reaches
    # leaf1's hosts through leaf2 (2); ARP and L2 follow, for leaf1's
    # server web1 too (on spine1 and leaf2), and spine2's L2 toward the
    # internet edge on spine1 moves to leaf2.
    assert describe(before, rules) == ("6 transport rules and 4 ECMP groups "
                                       "(and 8 arp, 11 l2) change on 4 switches")
    assert describe(rules, rules) == "no rule changes"
    up = live.port_status(link.a, link.a_port, True, "link up")
    assert up[0].effect == "routing over it again"
    assert live.rules(topo, {}) == before


def test_a_repeated_event_changes_nothing(topo):
    live = LiveFabric(topo)
    link = topo.links[0]
    assert live.port_status(link.b, link.b_port, False, "deleted")
    assert live.port_status(link.b, link.b_port, False, "link down") == []
    assert live.port_status(link.b, link.b_port, True, "added up")
    assert live.port_status(link.b, link.b_port, True, "up") == []
    assert live.switch_joined("spine1") == [], "a switch never gone does not come back"


def test_a_cut_off_leaf_forms_its_own_part(topo):
    live = LiveFabric(topo)
    for spine in ("spine1", "spine2"):
        link = link_between(topo, "leaf1", spine)
        live.port_status(link.b, link.b_port, False, "deleted")
    parts = live.parts()
    assert len(parts) == 2
    leaf_part = next(p for p in parts if "leaf1" in p[0])
    assert leaf_part == (("leaf1",), tuple(h.name for h in topo.hosts if h.switch == "leaf1")
                         + tuple(s.name for s in topo.servers if s.switch == "leaf1"))
    rules = live.rules(topo, {})
    assert_parts_reach_their_hosts(topo, live, rules)
    assert live.unreachable() == []


def test_a_host_whose_cable_is_down_is_unreachable_and_has_no_rules(topo):
    live = LiveFabric(topo)
    host = topo.hosts[0]
    changes = live.port_status(host.switch, host.port, False, "link down")
    assert changes[0].text == f"host {host.name}'s cable at {host.switch}:{host.port} " \
                              "down (link down)"
    assert live.unreachable() == [host.name]
    rules = live.rules(topo, {})
    for r in rules.values():
        assert not [f for f in r.flows if dict(f.match).get("mpls_label") == host.label]
    assert_parts_reach_their_hosts(topo, live, rules)


def test_chains_lose_classifier_hosts_they_cannot_reach(topo):
    live = LiveFabric(topo)
    chain = topo.chains[0]
    ingress = topo.edge(chain.ingress)
    h1, h2 = topo.hosts[0], topo.hosts[2]
    groups = {chain.name: [(h1.name, 1.0), (h2.name, 1.0)]}
    live.port_status(h1.switch, h1.port, False, "link down")
    rules = live.rules(topo, groups)[topo.switch(ingress.switch).dpid]
    sends = {dict(f.match)[flows.REG_HOST] for f in rules.flows if f.kind == "send"}
    assert sends == {h2.label}
    live.port_status(h2.switch, h2.port, False, "link down")
    rules = live.rules(topo, groups)[topo.switch(ingress.switch).dpid]
    assert not [f for f in rules.flows if f.kind in ("classifier", "send")]


def test_an_edge_port_down_keeps_its_mpls_drops(topo):
    live = LiveFabric(topo)
    edge = topo.edges[0]
    dpid = topo.switch(edge.switch).dpid
    drops = sorted(f.key for f in file_rules(topo)[dpid].flows if f.kind == "edge_drop")
    live.port_status(edge.switch, edge.port, False, "deleted")
    assert edge.name in live.unreachable()
    rules = live.rules(topo, {})[dpid]
    assert sorted(f.key for f in rules.flows if f.kind == "edge_drop") == drops
    assert not [f for f in rules.flows if dict(f.match).get("eth_dst") == edge.name]


def test_a_server_port_down_keeps_its_guards_and_loses_its_rules(topo):
    """A server cut off keeps its MPLS drops and its server_in/drop rules (so a
    port coming back is never open), and loses ARP, L2 and to_server."""
    live = LiveFabric(topo)
    server = topo.servers[0]
    dpid = topo.switch(server.switch).dpid
    guards = lambda rules: sorted(f.key for f in rules.flows
                                  if f.kind in ("edge_drop", "server_in", "server_drop"))
    before = file_rules(topo)[dpid]
    assert len([f for f in before.flows if f.kind == "server_in"]) == 3     # IPv4, IPv6, ARP
    assert len([f for f in before.flows if f.kind == "server_drop"]) == 1
    live.port_status(server.switch, server.port, False, "link down")
    assert server.name in live.unreachable()
    rules = live.rules(topo, {})[dpid]
    assert guards(rules) == guards(before)
    assert not [f for f in rules.flows if f.kind == "to_server"
                or dict(f.match).get("eth_dst") == server.mac]
    live.port_status(server.switch, server.port, True, "link up")
    assert live.rules(topo, {})[dpid] == before


def test_a_switch_that_left_gets_no_rules_and_comes_back(topo):
    live = LiveFabric(topo)
    before = live.rules(topo, {})
    assert live.switch_left("leaf2")[0].text.startswith("switch leaf2 left")
    rules = live.rules(topo, {})
    assert topo.switch("leaf2").dpid not in rules
    assert live.unreachable() == [h.name for h in topo.hosts if h.switch == "leaf2"]
    assert_parts_reach_their_hosts(topo, live, rules)
    assert live.switch_joined("leaf2")[0].text == "switch leaf2 is back"
    assert live.rules(topo, {}) == before


def test_lldp_loss_of_a_file_link_is_a_link_down(topo):
    live = LiveFabric(topo)
    link = link_between(topo, "leaf2", "spine2")
    a, b = (link.a, link.a_port), (link.b, link.b_port)
    changes = live.lldp_link(a, b, False)
    assert changes[0].routing and "lost by LLDP" in changes[0].text
    assert live.lldp_link(b, a, False) == [], "the other direction: same link"
    assert not live.graph().has_edge("leaf2", "spine2")
    assert live.lldp_link(a, b, True)[0].text.endswith("seen again by LLDP")
    assert live.graph().has_edge("leaf2", "spine2")
    assert live.lldp_link(a, b, True) == []


def test_lldp_links_the_file_lacks_are_noted_not_routed(topo):
    live = LiveFabric(topo)
    before = live.rules(topo, {})
    changes = live.lldp_link(("leaf1", 40), ("leaf2", 41), True)
    assert [c.routing for c in changes] == [False]
    assert changes[0].text == (
        f"LLDP found link leaf1:40 -> leaf2:41 that {topo.source} does not have "
        "(leaf1:40 has nothing; leaf2:41 has nothing): not routed over")
    assert live.lldp_link(("leaf1", 40), ("leaf2", 41), True) == []
    assert not live.graph().has_edge("leaf1", "leaf2")
    assert live.rules(topo, {}) == before


def test_an_unknown_port_is_a_note(topo):
    changes = LiveFabric(topo).port_status("leaf1", 99, False, "link down")
    assert [c.routing for c in changes] == [False]
    assert "has nothing on this port" in changes[0].text


@pytest.mark.parametrize("seed", range(8))
def test_random_event_sequences_route_around_and_undo_to_the_file(seed):
    """Any mix of link, cable and switch failures: no rule uses a down port,
    every switch reaches exactly the hosts of its part, and undoing every
    event gives back the file's rules."""
    rng = random.Random(seed)
    topo = with_servers(topogen.leaf_spine(3, 4, 2), 2)
    live = LiveFabric(topo)
    original = live.rules(topo, {})
    ports = [(l.a, l.a_port) for l in topo.links] + [(l.b, l.b_port) for l in topo.links]
    ports += [(h.switch, h.port) for h in topo.hosts] + [(s.switch, s.port) for s in topo.servers]
    switches = [s.name for s in topo.switches]
    for _ in range(12):
        if rng.random() < 0.75:
            sw, port = rng.choice(ports)
            live.port_status(sw, port, rng.random() < 0.4, "test")
        elif rng.random() < 0.5:
            live.switch_left(rng.choice(switches))
        else:
            live.switch_joined(rng.choice(switches))
        rules = live.rules(topo, {})
        assert_no_rule_uses_a_down_port(topo, live, rules)
        assert_parts_reach_their_hosts(topo, live, rules)
    for sw, port in sorted(live.ports_down):
        live.port_status(sw, port, True, "test")
    for sw in sorted(live.gone):
        live.switch_joined(sw)
    assert live.rules(topo, {}) == original


def test_observing_links_puts_the_lldp_punt_on_every_live_switch(topo):
    live = LiveFabric(topo)
    live.switch_left("spine2")
    rules = live.rules(topo, {}, lldp=True)
    plain = live.rules(topo, {})
    assert set(rules) == set(plain) and len(rules) == len(topo.switches) - 1
    for dpid, r in rules.items():
        assert r.flows == [lldp_punt()] + plain[dpid].flows
    punt = lldp_punt()
    assert flows.cookie_kind(punt.cookie) is None and flows.is_onvm_cookie(punt.cookie)
    assert punt.cookie not in {f.cookie for r in plain.values() for f in r.flows}


@pytest.mark.parametrize("seed", range(4))
def test_rules_kept_by_parts_equal_a_fresh_compile_after_any_events(seed):
    """LiveFabric compiles through controller.rulebook, which keeps parts
    between calls: after any mix of fabric events and first-NF host
    changes, its rules are those a fresh LiveFabric in the same state
    computes from nothing."""
    rng = random.Random(seed)
    topo = with_servers(topogen.leaf_spine(3, 4, 2, chains=3), 2)
    hosts = [h.name for h in topo.hosts]
    live = LiveFabric(topo)
    ports = [(l.a, l.a_port) for l in topo.links] + [(h.switch, h.port) for h in topo.hosts]
    ports += [(s.switch, s.port) for s in topo.servers]
    for _ in range(10):
        if rng.random() < 0.6:
            sw, port = rng.choice(ports)
            live.port_status(sw, port, rng.random() < 0.4, "test")
        else:
            sw = rng.choice(topo.switches).name
            (live.switch_left if rng.random() < 0.5 else live.switch_joined)(sw)
        groups = {c.name: [(h, 1.0) for h in sorted(rng.sample(hosts, rng.randint(0, 2)))]
                  for c in topo.chains}
        fresh = LiveFabric(topo)
        fresh.ports_down, fresh.gone = set(live.ports_down), set(live.gone)
        assert live.rules(topo, groups) == fresh.rules(topo, groups)
