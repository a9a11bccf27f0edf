"""Rule compilation (controller.flows) checked by pushing packets through the
compiled tables with controller.ofsim: chains, how their flows spread over
the first NF's hosts and stay pinned across a scale-out, transport, edge
filtering, plain reachability, table sizes, and the resync diff."""
import dataclasses
import itertools

import pytest

from controller import flows
from controller.fabric import build_graph
from controller.flows import ActualFlow, FlowError, diff, diff_groups, switch_rules
from controller.ofsim import INJECTED, FabricSim, rule_kinds, hrw_slot
from controller.plans import edge_mac
from controller.topology import parse_topology
from contracts.model import Server

LEAF_SPINE = """
name: test-leaf-spine
switches:
  - {name: spine1, dpid: 0x101}
  - {name: spine2, dpid: 0x102}
  - {name: leaf1, dpid: 0x201}
  - {name: leaf2, dpid: 0x202}
  - {name: leaf3, dpid: 0x203}
hosts:
  - {name: h1, switch: leaf1, port: 3, mac: "02:00:00:00:00:01", ip: 10.0.0.1/24, cores: 4}
  - {name: h2, switch: leaf1, port: 4, mac: "02:00:00:00:00:02", ip: 10.0.0.2/24, cores: 4}
  - {name: h3, switch: leaf2, port: 3, mac: "02:00:00:00:00:03", ip: 10.0.0.3/24, cores: 4}
  - {name: h4, switch: leaf2, port: 4, mac: "02:00:00:00:00:04", ip: 10.0.0.4/24, cores: 4}
  - {name: h5, switch: leaf3, port: 3, mac: "02:00:00:00:00:05", ip: 10.0.0.5/24, cores: 4}
  - {name: h6, switch: leaf3, port: 4, mac: "02:00:00:00:00:06", ip: 10.0.0.6/24, cores: 4}
links:
  - {a: leaf1, a_port: 1, b: spine1, b_port: 1, gbps: 40}
  - {a: leaf1, a_port: 2, b: spine2, b_port: 1, gbps: 40}
  - {a: leaf2, a_port: 1, b: spine1, b_port: 2, gbps: 40}
  - {a: leaf2, a_port: 2, b: spine2, b_port: 2, gbps: 40}
  - {a: leaf3, a_port: 1, b: spine1, b_port: 3, gbps: 40}
  - {a: leaf3, a_port: 2, b: spine2, b_port: 3, gbps: 40}
edges:
  - {name: internet, switch: spine1, port: 10}
  - {name: campus, switch: leaf1, port: 9}
nfs:
  firewall: {cores: 1, mpps: 8, config: generic-fw.rules}
  ids: {cores: 1, mpps: 4, config: generic-ids.rules}
  monitor: {cores: 1, mpps: 14}
chains:
  - name: web
    ingress: internet
    egress: h4
    match: {ipv4_dst: 10.0.1.0/24, ip_proto: 6, tcp_dst: 80}
    nfs: [firewall, ids]
    mpps: 2.0
  - name: mail
    ingress: campus
    egress: internet
    match: {ipv4_dst: 10.0.2.0/24, ip_proto: 6, tcp_dst: 25}
    nfs: [monitor]
    mpps: 1.0
"""

INGRESS = {"web": [("h3", 1.0), ("h5", 3.0)], "mail": [("h1", 1.0)]}


@pytest.fixture(scope="module")
def topo():
    return parse_topology(LEAF_SPINE, "test_flows.py:LEAF_SPINE")


@pytest.fixture(scope="module")
def graph(topo):
    return build_graph(topo)


@pytest.fixture(scope="module")
def rules(topo, graph):
    return switch_rules(topo, graph, INGRESS)


@pytest.fixture(scope="module")
def fabric(topo, rules):
    return FabricSim(topo, rules)


def tcp_packet(dst, dport, sport=40000, src="192.0.2.7"):
    return {"eth_src": "02:aa:00:00:00:01", "eth_dst": "02:aa:00:00:00:02",
            "eth_type": 0x0800, "ipv4_src": src, "ipv4_dst": dst, "ip_ttl": 30,
            "ip_proto": 6, "tcp_src": sport, "tcp_dst": dport}


def labelled(label, spi=16, si=254, ethertype=0x8847, eth_dst="02:00:00:00:00:99"):
    stack = [{"label": label, "tc": 0, "ttl": 64, "bos": 0},
             {"label": spi, "tc": 0, "ttl": 64, "bos": 0},
             {"label": si, "tc": 0, "ttl": 64, "bos": 1}]
    return {"eth_src": "02:00:00:00:00:01", "eth_dst": eth_dst,
            "eth_type": 0x0800, "mpls_ethertype": ethertype, "mpls": stack}


# ------------------------------------------------------------------ chains

@pytest.mark.parametrize("chain_name,dst,dport",
                         [("web", "10.0.1.9", 80), ("mail", "10.0.2.3", 25)])
def test_chain_packets_reach_a_first_nf_host_with_the_exact_stack(
        topo, fabric, chain_name, dst, dport):
    chain = topo.chain(chain_name)
    seen = set()
    for sport in range(1000, 1200):
        exits = fabric.from_edge(chain.ingress, tcp_packet(dst, dport, sport))
        assert len(exits) == 1, exits
        out = exits[0]
        host = topo.host(out.name)
        assert out.kind == "host" and host.name in dict(INGRESS[chain_name])
        assert [(e["label"], e["bos"], e["ttl"], e["tc"]) for e in out.packet["mpls"]] == [
            (host.label, 0, 64, 0), (chain.spi, 0, 64, 0), (255, 1, 64, 0)]
        assert out.packet["eth_dst"] == host.mac
        assert out.packet["ipv4_dst"] == dst and out.packet["ip_ttl"] == 30
        assert rule_kinds(out.trace)[0] == "classifier"
        # past the ingress switch, switches look at the transport label only
        ingress = topo.edge(chain.ingress).switch
        assert {k for sw, _, k in out.trace if sw != ingress} <= {"next", "transport"}
        seen.add(host.name)
    assert seen == set(dict(INGRESS[chain_name])), "flows never used a host"


def _web_flows(count, base=0):
    return [tcp_packet("10.0.1.9", 80, sport=2000 + base + i, src=f"192.0.2.{(base + i) % 250}")
            for i in range(count)]


def _hosts_of(fabric, packets, edge="internet"):
    where = {}
    for packet in packets:
        exits = fabric.from_edge(edge, packet)
        assert len(exits) == 1 and exits[0].kind == "host", exits
        where[(packet["ipv4_src"], packet["tcp_src"])] = exits[0].name
    return where


def test_first_packets_spread_by_weight_and_later_ones_follow_the_pin(topo, rules):
    fabric = FabricSim(topo, rules)
    packets = _web_flows(400)
    first = _hosts_of(fabric, packets)
    share = sum(h == "h5" for h in first.values()) / len(first)
    assert 0.65 <= share <= 0.85, f"h5 (weight 3 of 4) got {share:.2f} of the flows"
    trace = fabric.from_edge("internet", packets[0])[0].trace
    assert [k for sw, _, k in trace if sw == "spine1"] == \
        ["classifier", "pin", "steer", "send"], "a second packet must take its pin"
    assert _hosts_of(fabric, packets) == first


def test_pick_slots_follow_ingress_weights(topo, rules):
    spine1 = rules[topo.switch("spine1").dpid]
    spi = topo.chain("web").spi
    labels = [a[2] for f in spine1.flows if f.kind == "pick" and dict(f.match)["reg1"] == spi
              for a in f.actions if a[:2] == ("set_field", "reg0")]
    assert len(labels) == flows.SLOTS
    assert {lab: labels.count(lab) for lab in set(labels)} == \
        {topo.host("h3").label: 4, topo.host("h5").label: 12}


def test_slot_hosts():
    assert flows.slot_hosts([("a", 1.0), ("b", 1.0)], 4) == ["a", "a", "b", "b"]
    assert flows.slot_hosts([("a", 0.01), ("b", 1.0)], 4) == ["a", "b", "b", "b"]
    many = [(f"h{i}", 1.0) for i in range(20)]
    assert flows.slot_hosts(many, 16) == [h for h, _ in many]


def test_scale_out_keeps_running_flows_and_gives_new_ones_to_the_new_host(topo, graph, rules):
    fabric = FabricSim(topo, rules)
    old = _web_flows(200)
    before = _hosts_of(fabric, old)
    grown = dict(INGRESS, web=INGRESS["web"] + [("h6", 2.0)])
    fabric.reprogram(switch_rules(topo, graph, grown))   # the resync keeps pins
    assert _hosts_of(fabric, old) == before, "a running flow changed its host"
    new = _hosts_of(fabric, _web_flows(200, base=1000))
    assert sum(h == "h6" for h in new.values()) >= 50, "the new host gets no new flow"
    # without pins the hash alone would have moved running flows
    fabric.switches["spine1"].expire_pins()
    assert _hosts_of(fabric, old) != before


def test_a_flow_pinned_to_a_host_that_left_is_picked_again(topo, graph, rules):
    fabric = FabricSim(topo, rules)
    old = _web_flows(100)
    before = _hosts_of(fabric, old)
    assert "h3" in before.values()
    fabric.reprogram(switch_rules(topo, graph, dict(INGRESS, web=[("h5", 1.0)])))
    after = _hosts_of(fabric, old)
    assert set(after.values()) == {"h5"}
    pins = fabric.switches["spine1"].learned.values()
    assert {p.actions for p in pins} == {(("set_field", "reg0", topo.host("h5").label),)}


def test_pins_are_learned_per_five_tuple_at_the_ingress_only(topo, rules):
    fabric = FabricSim(topo, rules)
    _hosts_of(fabric, _web_flows(10))
    pins = list(fabric.switches["spine1"].learned.values())
    assert len(pins) == 10
    assert all(p.table == flows.TABLE_PINS and p.priority == flows.PRIO_PIN for p in pins)
    assert {f for f, _ in pins[0].match} == {"reg1", "eth_type", "ipv4_src", "ipv4_dst",
                                              "ip_proto", "tcp_src", "tcp_dst"}
    assert all(not sw.learned for name, sw in fabric.switches.items() if name != "spine1")


def test_hrw_slot_is_symmetric_and_in_range():
    a = tcp_packet("10.0.1.9", 80, sport=4242, src="192.0.2.1")
    b = dict(a, ipv4_src=a["ipv4_dst"], ipv4_dst=a["ipv4_src"], tcp_src=80, tcp_dst=4242)
    assert hrw_slot(a, 16) == hrw_slot(b, 16)
    assert {hrw_slot(p, 16) for p in _web_flows(300)} == set(range(16))


def test_traffic_in_no_chain_is_not_labelled(topo, fabric):
    packet = dict(tcp_packet("10.0.0.4", 443), eth_dst="02:00:00:00:00:04")
    exits = fabric.from_edge("internet", packet)
    assert [(e.kind, e.name) for e in exits] == [("host", "h4")]
    assert "mpls" not in exits[0].packet


def test_classifier_only_at_the_ingress_switch(topo, rules):
    at = {sw.name: sum(1 for f in rules[sw.dpid].flows if f.kind == "classifier")
          for sw in topo.switches}
    assert at == {"spine1": 1, "leaf1": 1, "spine2": 0, "leaf2": 0, "leaf3": 0}


# --------------------------------------------------------------- transport

def test_transport_reaches_every_host_from_every_switch(topo, fabric):
    for sw, host in itertools.product(topo.switches, topo.hosts):
        for flow_id in range(8):   # several flows: every ECMP choice must work
            packet = labelled(host.label, eth_dst=host.mac)
            packet["ipv4_dst"] = f"10.9.0.{flow_id}"
            exits = fabric.send(sw.name, INJECTED, packet)
            assert [(e.kind, e.name) for e in exits] == [("host", host.name)], \
                f"from {sw.name} to {host.name}"
            assert [e["label"] for e in exits[0].packet["mpls"]] == [host.label, 16, 254]
            assert set(rule_kinds(exits[0].trace)) == {"next", "transport"}


def test_transport_uses_ecmp_groups_where_there_is_a_choice(topo, rules):
    leaf1 = rules[topo.switch("leaf1").dpid]
    h3 = topo.host("h3")
    rule = next(f for f in leaf1.flows if f.kind == "transport"
                and dict(f.match)["mpls_label"] == h3.label)
    assert rule.actions == (("group", h3.label),)
    group = next(g for g in leaf1.groups if g.group_id == h3.label)
    assert sorted(b.actions for b in group.buckets) == [(("output", 1),), (("output", 2),)]


def test_unknown_transport_label_is_dropped(fabric):
    exits = fabric.send("leaf1", INJECTED, labelled(999))
    assert exits == []


# ------------------------------------------------------------ edge filter

@pytest.mark.parametrize("ethertype", [0x8847, 0x8848])
@pytest.mark.parametrize("edge", ["internet", "campus"])
def test_forged_mpls_at_an_edge_port_is_dropped(topo, fabric, edge, ethertype):
    h1 = topo.host("h1")
    forged = labelled(h1.label, spi=topo.chain("web").spi, si=253,
                      ethertype=ethertype, eth_dst=h1.mac)
    edge_sw = topo.edge(edge).switch
    trace = []
    assert fabric.switches[edge_sw].process(forged, topo.edge(edge).port, trace) == []
    assert rule_kinds(trace) == ["edge_drop"]
    assert fabric.from_edge(edge, forged) == []


def test_hosts_may_send_mpls(topo, fabric):
    h6 = topo.host("h6")
    exits = fabric.from_host("h1", labelled(h6.label, eth_dst=h6.mac))
    assert [(e.kind, e.name) for e in exits] == [("host", "h6")]


# ------------------------------------------------------------------- plain

def test_l2_reaches_every_host_and_edge_from_every_place(topo, fabric):
    targets = [(h.mac, "host", h.name) for h in topo.hosts] + \
              [(edge_mac(e.name), "edge", e.name) for e in topo.edges]
    for src, (mac, kind, name) in itertools.product(topo.hosts, targets):
        if name == src.name:
            continue
        packet = dict(tcp_packet("10.0.0.200", 443), eth_dst=mac)
        exits = fabric.from_host(src.name, packet)
        assert [(e.kind, e.name) for e in exits] == [(kind, name)], f"{src.name} -> {name}"


def test_arp_goes_to_the_owner_of_the_target_address_only(topo, fabric):
    for asker, owner in itertools.product(["internet", "campus"], topo.hosts):
        request = {"eth_src": "02:aa:00:00:00:01", "eth_dst": "ff:ff:ff:ff:ff:ff",
                   "eth_type": 0x0806, "arp_tpa": owner.ip.split("/")[0]}
        exits = fabric.from_edge(asker, request)
        assert [(e.kind, e.name) for e in exits] == [("host", owner.name)]
    unknown = {"eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806, "arp_tpa": "10.0.0.250"}
    assert fabric.from_host("h1", unknown) == []


# -------------------------------------------------------------- table size

def _more_chains(topo, count):
    base = topo.chain("web")
    extra = []
    for i in range(count):
        edge = ("internet", "campus")[i % 2]
        extra.append(base.__class__(
            name=f"c{i}", ingress=edge, egress="h2",
            match={"ipv4_dst": f"10.1.{i}.0/24", "ip_proto": 17, "udp_dst": 53},
            nfs=("monitor",), mpps=0.1, spi=100 + i))
    return topo.with_chains(topo.chains + tuple(extra))


PER_CHAIN_KINDS = {"classifier", "steer", "pick", "send"}


def test_rule_count_does_not_grow_with_chains(topo, graph, rules):
    big = _more_chains(topo, 40)
    groups = dict(INGRESS, **{c.name: [("h2", 1.0), ("h6", 1.0)] for c in big.chains[2:]})
    grown = switch_rules(big, graph, groups)
    for sw in topo.switches:
        before, after = rules[sw.dpid], grown[sw.dpid]
        chains = [c for c in big.chains if big.edge(c.ingress).switch == sw.name]
        assert sum(f.kind == "classifier" for f in after.flows) == len(chains)
        # per chain, at its ingress switch only: classifier, SLOTS picks, and
        # a steer and a send rule per first-NF host plus the steer that picks
        assert sum(f.kind in PER_CHAIN_KINDS for f in after.flows) == sum(
            1 + flows.SLOTS + 1 + 2 * len(groups[c.name]) for c in chains), sw.name
        shared = lambda rs: [f for f in rs.flows if f.kind not in PER_CHAIN_KINDS]
        assert shared(after) == shared(before), sw.name
        assert after.groups == before.groups, sw.name


def test_transport_rules_scale_with_hosts(topo, rules):
    for sw in topo.switches:
        assert sum(f.kind == "transport" for f in rules[sw.dpid].flows) == len(topo.hosts)


# ----------------------------------------------------------------- errors

def test_a_match_without_its_prerequisite_names_chain_and_field(topo, graph):
    bad = topo.with_chains([topo.chain("web").__class__(
        name="bad", ingress="internet", egress="h2", match={"tcp_dst": 80},
        nfs=("monitor",), mpps=0.1, spi=40)])
    with pytest.raises(FlowError, match=r"chain bad: match\.tcp_dst: needs ip_proto in 6"):
        switch_rules(bad, graph, {"bad": [("h1", 1.0)]})


# ------------------------------------------------------------------- diff

def _as_actual(spec):
    return ActualFlow(spec.table, spec.priority, spec.cookie, spec.match)


def test_diff_of_a_switch_in_the_desired_state_is_empty(topo, rules):
    desired = rules[topo.switch("leaf1").dpid].flows
    assert diff(desired, [_as_actual(s) for s in desired]) == ([], [])


def test_diff_finds_missing_stale_changed_and_foreign_rules(topo, rules):
    desired = rules[topo.switch("leaf1").dpid].flows
    actual = [_as_actual(s) for s in desired]
    missing = desired[3]
    del actual[3]
    changed = desired[7]
    actual[6] = ActualFlow(changed.table, changed.priority,
                           (flows.APP_ID << 48) | (flows.KINDS[changed.kind] << 40) | 1,
                           changed.match)
    stale = ActualFlow(1, 3000, desired[0].cookie ^ 1,
                       flows.canonical_match({"eth_type": 0x8847, "mpls_label": 4242}))
    foreign = ActualFlow(0, 100, 0, flows.canonical_match({"in_port": 7}))
    adds, deletes = diff(desired, actual + [stale, foreign])
    assert set(adds) == {missing, changed}
    assert deletes == [stale, foreign]   # changed is replaced by its add, not deleted


def test_cookies_say_onvm_and_kind_and_differ_by_content(topo, rules):
    all_flows = [f for r in rules.values() for f in r.flows]
    assert all(flows.is_onvm_cookie(f.cookie) for f in all_flows)
    assert all(flows.cookie_kind(f.cookie) == f.kind for f in all_flows)
    assert not flows.is_onvm_cookie(0) and flows.cookie_kind(0x1234) is None
    per_switch = [r.flows for r in rules.values()]
    for fl in per_switch:
        assert len({f.cookie for f in fl}) == len(fl)


def test_diff_groups():
    g = lambda gid: flows.GroupSpec(gid, "select", (flows.Bucket(1, (("output", 1),)),))
    result = diff_groups([g(16), g(17)], [17, 99])
    assert result == ([g(16)], [g(17)], [99])


# ------------------------------------------------------------ fail-closed

def _chain_drops(rules):
    return [f for f in rules.flows if f.kind == "chain_drop"]


def _to_a_host(dst, dport, host):
    """A chain packet addressed (at L2) to a host: what plain forwarding
    would deliver if the chain's classifier were missing."""
    return dict(tcp_packet(dst, dport), eth_dst=host.mac)


@pytest.mark.parametrize("groups", [{"mail": [("h1", 1.0)]},
                                    {"mail": [("h1", 1.0)], "web": []}],
                         ids=["absent", "no-hosts"])
def test_a_chain_without_placed_nfs_is_dropped_at_its_ingress(topo, graph, groups):
    rules = switch_rules(topo, graph, groups)
    fabric = FabricSim(topo, rules)
    spine1 = topo.switch("spine1")
    drops = _chain_drops(rules[spine1.dpid])
    assert [dict(d.match)["in_port"] for d in drops] == [topo.edge("internet").port]
    assert drops[0].actions == () and drops[0].goto is None
    assert flows.cookie_kind(drops[0].cookie) == "chain_drop"
    assert not [f for f in rules[spine1.dpid].flows if f.kind == "classifier"]
    h4 = topo.host("h4")
    for sport in range(1000, 1050):
        packet = dict(_to_a_host("10.0.1.9", 80, h4), tcp_src=sport)
        trace = []
        assert fabric.switches["spine1"].process(packet, topo.edge("internet").port,
                                                 trace) == []
        assert rule_kinds(trace) == ["chain_drop"]
        assert fabric.from_edge("internet", packet) == []
    # traffic in no chain still reaches h4, and the placed chain its NF host
    exits = fabric.from_edge("internet", _to_a_host("10.0.1.9", 443, h4))
    assert [(e.kind, e.name) for e in exits] == [("host", "h4")]
    exits = fabric.from_edge("campus", tcp_packet("10.0.2.3", 25))
    assert [(e.kind, e.name) for e in exits] == [("host", "h1")]


def test_the_drop_takes_the_classifiers_place_and_leaves_with_placement(topo, graph):
    unplaced = switch_rules(topo, graph, {})
    placed = switch_rules(topo, graph, INGRESS)
    for sw in topo.switches:
        drops = {f.key for f in _chain_drops(unplaced[sw.dpid])}
        classifiers = {f.key for f in placed[sw.dpid].flows if f.kind == "classifier"}
        assert drops == classifiers, sw.name
        assert not _chain_drops(placed[sw.dpid])
    # a resync from one to the other replaces the rule in place (same key)
    spine1 = topo.switch("spine1").dpid
    adds, deletes = diff(placed[spine1].flows,
                         [_as_actual(s) for s in unplaced[spine1].flows])
    assert any(a.kind == "classifier" for a in adds)
    assert not any(d.key in {f.key for f in _chain_drops(unplaced[spine1])} for d in deletes)


def test_a_chain_without_nfs_has_nothing_to_skip_and_stays_plain(topo, graph):
    bare = topo.with_chains([topo.chain("web").__class__(
        name="bare", ingress="internet", egress="h4",
        match={"ipv4_dst": "10.0.1.0/24"}, nfs=(), mpps=0.1, spi=50)])
    rules = switch_rules(bare, graph, {})
    assert not [f for r in rules.values() for f in r.flows
                if f.kind in ("chain_drop", "classifier")]


def test_live_fabric_drops_a_chain_whose_first_nf_hosts_are_all_cut_off(topo):
    from controller.livegraph import LiveFabric
    live = LiveFabric(topo)
    spine1 = topo.switch("spine1").dpid
    h3, h5, h4 = topo.host("h3"), topo.host("h5"), topo.host("h4")
    assert not _chain_drops(live.rules(topo, INGRESS)[spine1])
    live.port_status(h3.switch, h3.port, False, "link down")
    assert not _chain_drops(live.rules(topo, INGRESS)[spine1])
    live.port_status(h5.switch, h5.port, False, "link down")
    rules = live.rules(topo, INGRESS)
    assert [dict(f.match)["in_port"] for f in _chain_drops(rules[spine1])] == \
        [topo.edge("internet").port]
    fabric = FabricSim(topo, rules)
    assert fabric.from_edge("internet", _to_a_host("10.0.1.9", 80, h4)) == []
    exits = fabric.from_edge("internet", _to_a_host("10.0.1.9", 443, h4))
    assert [(e.kind, e.name) for e in exits] == [("host", "h4")]
    live.port_status(h5.switch, h5.port, True, "link up")
    assert not _chain_drops(live.rules(topo, INGRESS)[spine1])


ONE_SWITCH = """
name: one-switch
switches:
  - {name: s1, dpid: 0x301}
hosts:
  - {name: h1, switch: s1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.0.1/24, cores: 4}
  - {name: h2, switch: s1, port: 2, mac: "02:00:00:00:00:02", ip: 10.0.0.2/24, cores: 4}
edges:
  - {name: internet, switch: s1, port: 3}
nfs:
  firewall: {cores: 1, mpps: 8, config: generic-fw.rules}
chains:
  - name: web
    ingress: internet
    egress: h2
    match: {ipv4_dst: 10.0.1.0/24, ip_proto: 6, tcp_dst: 80}
    nfs: [firewall]
    mpps: 1.0
"""

OFCTL_FIELDS = {"ipv4_dst": "nw_dst", "ipv4_src": "nw_src", "ip_proto": "nw_proto",
                "eth_type": "dl_type", "eth_dst": "dl_dst"}


def _ofctl_flow(spec):
    """A FlowSpec of the kinds a switch without placed chains holds, in
    ovs-ofctl's syntax (the controller sends the same through Ryu)."""
    fields = []
    for name, value in spec.match:
        if isinstance(value, tuple):
            value = "/".join(value)
        fields.append(f"{OFCTL_FIELDS.get(name, name)}={value}")
    actions = []
    for action in spec.actions:
        assert action[0] == "output", spec
        actions.append(f"output:{action[1]}")
    if spec.goto is not None:
        actions.append(f"goto_table:{spec.goto}")
    return (f"cookie={spec.cookie:#x},table={spec.table},priority={spec.priority},"
            + ",".join(fields) + " actions=" + (",".join(actions) or "drop"))


def _one_switch_in_ovs(ovs, bridge_name, tmp_path, text):
    """A real OVS bridge holding the rules of the one switch of topology
    `text` with no NF placed (ports 1..3 internal): (topo, rules, bridge)."""
    topo = parse_topology(text, "test_flows.py:ONE_SWITCH")
    rules = switch_rules(topo, build_graph(topo), {})[0x301]
    bridge = ovs.add_bridge(bridge_name, dpid=0x301)
    for port in (1, 2, 3):
        name = f"{bridge_name}{port}"
        ovs.vsctl("add-port", bridge, name, "--", "set", "Interface", name,
                  "type=internal", f"ofport_request={port}")
    flow_file = tmp_path / "flows.txt"
    flow_file.write_text("\n".join(_ofctl_flow(f) for f in rules.flows
                                   if f.kind != "learn") + "\n")
    ovs.ofctl("add-flows", bridge, str(flow_file))
    return topo, rules, bridge


ONE_SWITCH6 = ONE_SWITCH.replace("{ipv4_dst: 10.0.1.0/24, ip_proto: 6, tcp_dst: 80}",
                                 '{ipv6_dst: "2001:db8:1::/48", ip_proto: 6, tcp_dst: 80}')
# family -> (topology, trace of a TCP packet {dst} {port}, chain dst, other dst, IP layer)
FAMILIES = {
    4: (ONE_SWITCH, "tcp,nw_src=192.0.2.7,nw_dst={dst}", "10.0.1.9", "10.0.0.2", "IP"),
    6: (ONE_SWITCH6, "tcp6,ipv6_src=2001:db8:9::7,ipv6_dst={dst}", "2001:db8:1::9",
        "2001:db8:2::9", "IPv6"),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ovs_drops_a_chain_packet_with_no_placed_nf_instead_of_forwarding_it(
        ovs, run_prefix, tmp_path, family):
    """Real OVS, the rules of a switch whose chain (IPv4 or IPv6) has no NF
    placed: a chain packet addressed to h2 (plain L2 would deliver it) is
    dropped by the chain_drop rule, which counts it; other traffic to h2
    (another port, or for IPv6 another prefix) is delivered."""
    text, trace, dst, other_dst, layer = FAMILIES[family]
    topo, rules, bridge = _one_switch_in_ovs(ovs, f"{run_prefix}f{family}", tmp_path, text)
    drop = _chain_drops(rules)[0]
    assert dict(drop.match)["eth_type"] == (0x0800 if family == 4 else 0x86DD)
    h2 = topo.host("h2")
    packet = ("in_port=3,dl_src=02:aa:00:00:00:01,dl_dst=" + h2.mac + "," + trace
              + ",tcp_src=40000,tcp_dst={port}")
    chain = ovs.appctl("ofproto/trace", bridge, packet.format(dst=dst, port=80))
    assert "Datapath actions: drop" in chain and f"cookie {drop.cookie:#x}" in chain, chain
    for other in (packet.format(dst=dst, port=443), packet.format(dst=other_dst, port=80)):
        other = ovs.appctl("ofproto/trace", bridge, other)
        assert "output:2" in other and "Datapath actions: drop" not in other, other
    # a real frame through the pipeline: the drop rule's counter counts it
    from scapy.layers import inet, inet6
    from scapy.layers.l2 import Ether
    ip = getattr(inet if family == 4 else inet6, layer)
    src = "192.0.2.7" if family == 4 else "2001:db8:9::7"
    frame = bytes(Ether(src="02:aa:00:00:00:01", dst=h2.mac)
                  / ip(src=src, dst=dst) / inet.TCP(sport=40000, dport=80))
    for _ in range(3):
        ovs.ofctl("packet-out", bridge, f"in_port=3 packet={frame.hex()} actions=table")
    counted = ovs.ofctl("dump-flows", bridge, f"cookie={drop.cookie:#x}/-1")
    assert "n_packets=3," in counted, counted


# ------------------------------------------------------------------ servers

WEB1 = Server("web1", "leaf2", 5, "02:00:00:00:01:10", "10.0.1.10/24")
WEB2 = Server("web2", "leaf3", 5, "02:00:00:00:01:11", "10.0.1.11/24")


@pytest.fixture(scope="module")
def served(topo):
    """The test fabric with two servers, and its switches as ofsim."""
    topo = dataclasses.replace(topo, servers=(WEB1, WEB2))
    return topo, FabricSim(topo, switch_rules(topo, build_graph(topo), INGRESS))


SERVER6 = "2001:db8:1::10"          # web1's IPv6 address (a server's own business)


def _forward(src_host, server, l4="tcp", sport=40000, dport=80, src="192.0.2.7", family=4):
    """What a chain's end sends a server: untagged, from its host's MAC."""
    if family == 6:
        packet = {"eth_src": src_host.mac, "eth_dst": server.mac, "eth_type": 0x86dd,
                  "ipv6_src": "2001:db8:9::7", "ipv6_dst": SERVER6,
                  "ip_proto": {"tcp": 6, "udp": 17, "ip": 58}[l4]}
        if l4 != "ip":
            packet.update({f"{l4}_src": sport, f"{l4}_dst": dport})
        return packet
    packet = {"eth_src": src_host.mac, "eth_dst": server.mac, "eth_type": 0x0800,
              "ipv4_src": src, "ipv4_dst": server.ip.split("/")[0], "ip_ttl": 30,
              "ip_proto": {"tcp": 6, "udp": 17, "ip": 1}[l4]}
    if l4 != "ip":
        packet.update({f"{l4}_src": sport, f"{l4}_dst": dport})
    return packet


def _reply(forward):
    """The server's answer to `forward`: addresses and ports swapped."""
    ip = "ipv6" if "ipv6_src" in forward else "ipv4"
    back = dict(forward, eth_src=forward["eth_dst"], eth_dst="02:00:00:00:01:ff",
                **{f"{ip}_src": forward[f"{ip}_dst"], f"{ip}_dst": forward[f"{ip}_src"]})
    for l4 in ("tcp", "udp"):
        if f"{l4}_src" in forward:
            back[f"{l4}_src"], back[f"{l4}_dst"] = forward[f"{l4}_dst"], forward[f"{l4}_src"]
    return back


def _learned(fabric, switch, kind="reply_pin"):
    return [s for s in fabric.switches[switch].learned.values() if s.kind == kind]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("l4", ["tcp", "udp", "ip"])
@pytest.mark.parametrize("sender", ["h1", "h4", "h5"])
def test_a_servers_reply_goes_back_untagged_to_the_host_that_sent_the_flow(
        served, l4, sender, family):
    """h1 and h5 are behind spines, h4 shares web1's switch: the forward
    packet (IPv4 or IPv6) reaches web1 and writes a reply rule; the
    reversed packet from web1 leaves at the sender with eth_dst = its MAC,
    untagged."""
    topo, fabric = served
    fabric.switches["leaf2"].expire_pins()
    host = topo.host(sender)
    forward = _forward(host, WEB1, l4, family=family)
    exits = fabric.from_host(sender, forward)
    assert [(e.kind, e.name) for e in exits] == [("server", "web1")]
    assert exits[0].packet["eth_dst"] == WEB1.mac and "mpls" not in exits[0].packet
    assert rule_kinds(exits[0].trace)[-1] == "to_server"
    learned = _learned(fabric, "leaf2")
    assert len(learned) == 1 and learned[0].table == flows.TABLE_REPLY
    assert learned[0].actions[0] == ("set_field", "eth_dst", host.mac)
    back = fabric.from_server("web1", _reply(forward))
    assert [(e.kind, e.name) for e in back] == [("host", sender)]
    assert back[0].packet["eth_dst"] == host.mac and "mpls" not in back[0].packet
    assert rule_kinds(back[0].trace)[:2] == ["server_in", "reply_pin"]
    # only the reply of that very flow passes: another port or protocol is dropped
    other = _reply(_forward(host, WEB1, "udp" if l4 == "tcp" else "tcp", sport=40001,
                            family=family))
    assert fabric.from_server("web1", other) == []


def test_the_reply_follows_the_host_that_sent_the_flow_last(served):
    topo, fabric = served
    fabric.switches["leaf3"].expire_pins()
    for sender in ("h1", "h3"):
        forward = _forward(topo.host(sender), WEB2, sport=50000)
        fabric.from_host(sender, forward)
        back = fabric.from_server("web2", _reply(forward))
        assert [(e.kind, e.name) for e in back] == [("host", sender)]
    assert len(_learned(fabric, "leaf3")) == 1


def test_a_server_packet_that_answers_nothing_is_dropped_and_counted(served):
    topo, fabric = served
    fabric.switches["leaf2"].expire_pins()
    unsolicited = _reply(_forward(topo.host("h1"), WEB1, sport=41000))
    unsolicited["eth_dst"] = topo.host("h1").mac      # L2 would deliver it
    trace = []
    assert fabric.switches["leaf2"].process(unsolicited, WEB1.port, trace) == []
    assert trace == [("leaf2", flows.TABLE_ADMIT, "server_in"),
                     ("leaf2", flows.TABLE_REPLY, "miss")]


@pytest.mark.parametrize("ethertype", [0x8847, 0x8848])
def test_forged_mpls_from_a_server_is_dropped(served, ethertype):
    topo, fabric = served
    for host in topo.hosts:     # a label stack for any host and chain
        trace = []
        packet = labelled(host.label, ethertype=ethertype, eth_dst=host.mac)
        assert fabric.switches["leaf2"].process(packet, WEB1.port, trace) == []
        assert rule_kinds(trace) == ["edge_drop"]


@pytest.mark.parametrize("packet, kinds", [
    ({"eth_type": 0x88cc}, ["server_drop"]),                # LLDP, or any other EtherType
    # IPv6 that answers no flow (neighbour discovery included): table 8's miss
    ({"eth_type": 0x86dd, "ipv6_src": SERVER6, "ipv6_dst": "ff02::1:ff00:1",
      "ip_proto": 58}, ["server_in", "miss"]),
])
def test_a_server_sends_nothing_but_replies_and_arp(served, packet, kinds):
    """Fail closed: whatever a server sends that is neither the reply of a
    learned flow nor ARP is dropped at its switch and counted, even toward
    an address plain L2 would reach (an edge's)."""
    topo, fabric = served
    packet = dict(packet, eth_src=WEB1.mac, eth_dst=edge_mac(topo.edges[0].name))
    trace = []
    assert fabric.switches["leaf2"].process(packet, WEB1.port, trace) == []
    assert rule_kinds(trace) == kinds


def test_arp_and_l2_reach_every_server_from_every_place(served):
    topo, fabric = served
    places = ([("host", h.name) for h in topo.hosts] + [("edge", e.name) for e in topo.edges])
    for kind, name in places:
        for server in topo.servers:
            ip = server.ip.split("/")[0]
            send = fabric.from_host if kind == "host" else fabric.from_edge
            arp = {"eth_src": "02:aa:00:00:00:01", "eth_dst": "ff:ff:ff:ff:ff:ff",
                   "eth_type": 0x0806, "arp_tpa": ip}
            l2 = {"eth_src": "02:aa:00:00:00:01", "eth_dst": server.mac, "eth_type": 0x9000}
            for packet in (arp, l2):
                assert [(e.kind, e.name) for e in send(name, packet)] == \
                    [("server", server.name)], (name, packet)
    # a server's ARP goes to the owner of the target address
    arp = {"eth_src": WEB1.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806,
           "arp_tpa": topo.host("h6").ip.split("/")[0]}
    assert [(e.kind, e.name) for e in fabric.from_server("web1", arp)] == [("host", "h6")]


def test_to_server_rules_only_on_the_servers_switch(served):
    topo, _ = served
    rules = switch_rules(topo, build_graph(topo), INGRESS)
    for sw in topo.switches:
        kinds = [f.kind for f in rules[sw.dpid].flows]
        own = [s for s in topo.servers if s.switch == sw.name]
        assert kinds.count("to_server") == 6 * len(own), sw.name      # IPv4, IPv6
        assert kinds.count("server_in") == 3 * len(own), sw.name     # IPv4, IPv6, ARP
        assert kinds.count("server_drop") == len(own), sw.name
        assert kinds.count("l2") == len(topo.hosts) + len(topo.edges) + len(topo.servers)


LEARNED_MATCHES = {
    "pin": {"reg1": 16, "eth_type": 0x0800, "ipv4_src": "192.0.2.1", "ipv4_dst": "10.0.1.9",
            "ip_proto": 6, "tcp_src": 1234, "tcp_dst": 80},
    "reply_pin": {"in_port": 5, "eth_type": 0x0800, "ipv4_src": "10.0.1.10",
                  "ipv4_dst": "192.0.2.7", "ip_proto": 6, "tcp_src": 80, "tcp_dst": 1234}}


@pytest.mark.parametrize("kind,table,other_table", [
    ("pin", flows.TABLE_PINS, flows.TABLE_STEER),
    ("reply_pin", flows.TABLE_REPLY, flows.TABLE_PINS)])
def test_diff_leaves_learned_rules_but_not_impostors(served, kind, table, other_table):
    """What the switch learned (pins, reply rules) stays; the same match
    with a foreign cookie, or the learned cookie in another table, goes."""
    topo, _ = served
    desired = switch_rules(topo, build_graph(topo), INGRESS)[topo.switch("leaf2").dpid].flows
    actual = [_as_actual(s) for s in desired]
    match = flows.canonical_match(LEARNED_MATCHES[kind])
    cookie = flows.learned_cookie(kind)
    learned = ActualFlow(table, 100, cookie, match)
    foreign = ActualFlow(table, 100, 0, match)
    elsewhere = ActualFlow(other_table, 100, cookie, match)
    assert flows.cookie_kind(learned.cookie) == kind
    assert cookie == {"pin": flows.pin_cookie(), "reply_pin": flows.reply_cookie()}[kind]
    assert diff(desired, actual + [learned, foreign, elsewhere]) == ([], [foreign, elsewhere])


# -------------------------------------------------------------------- IPv6

WEB6 = """
  - name: web6
    ingress: internet
    egress: h4
    match: {ipv6_dst: "2001:db8:1::/48", ip_proto: 6, tcp_dst: 80}
    nfs: [firewall]
    mpps: 1.0
"""


def tcp6_packet(dst, dport, sport=40000, src="2001:db8:9::7", eth_dst="02:aa:00:00:00:02"):
    return {"eth_src": "02:aa:00:00:00:01", "eth_dst": eth_dst, "eth_type": 0x86DD,
            "ipv6_src": src, "ipv6_dst": dst, "ip_ttl": 30, "ip_proto": 6,
            "tcp_src": sport, "tcp_dst": dport}


def test_an_ipv6_chain_is_classified_by_its_ipv6_match_at_its_ingress():
    """A chain matching ipv6_dst: its IPv6 packets are labelled for a first
    NF host, IPv6 packets outside its prefix and IPv4 packets of the same
    port are not its own, and the IPv4 chain beside it is unchanged."""
    topo = parse_topology(LEAF_SPINE + WEB6, "test_flows.py:LEAF_SPINE+WEB6")
    web6 = topo.chain("web6")
    assert not web6.symmetric, "the way back is learned for IPv4 only"
    fabric = FabricSim(topo, switch_rules(topo, build_graph(topo),
                                          dict(INGRESS, web6=[("h3", 1.0), ("h5", 1.0)])))
    seen = set()
    for sport in range(1000, 1100):
        exits = fabric.from_edge("internet", tcp6_packet("2001:db8:1::9", 80, sport))
        assert len(exits) == 1 and exits[0].kind == "host", exits
        assert [e["label"] for e in exits[0].packet["mpls"]][1:] == [web6.spi, 255]
        assert rule_kinds(exits[0].trace)[:3] == ["classifier", "miss", "steer"]
        again = fabric.from_edge("internet", tcp6_packet("2001:db8:1::9", 80, sport))
        assert rule_kinds(again[0].trace)[:2] == ["classifier", "pin"], "pinned on IPv6"
        assert again[0].name == exits[0].name
        seen.add(exits[0].name)
    assert seen == {"h3", "h5"}
    other = fabric.from_edge("internet", tcp6_packet("2001:db8:2::9", 80,
                                                     eth_dst="02:00:00:00:00:04"))
    assert [(e.kind, e.name) for e in other] == [("host", "h4")]
    assert "mpls" not in other[0].packet
    v4 = fabric.from_edge("internet", tcp_packet("10.0.1.9", 80))
    assert [e["label"] for e in v4[0].packet["mpls"]][1] == topo.chain("web").spi


@pytest.mark.parametrize("match,extra,error", [
    ('{ipv6_dst: "2001:db8:1::/48", ipv4_src: 10.0.0.0/8}', "",
     r"match\.ipv6_dst: cannot be matched with ipv4_src"),
    ('{ipv6_dst: "2001:db8::zz"}', "", r"match\.ipv6_dst: .*zz"),
    ('{ipv6_dst: "2001:db8:1::/48", eth_type: 2048}', "",
     r"match\.ipv6_dst: needs eth_type 0x86dd"),
    ('{ipv6_dst: "2001:db8:1::/48"}', "", r"nfs\[1\]: ids handles IPv4 only"),
])
def test_a_wrong_ipv6_match_is_named_with_its_line(match, extra, error):
    text = _web6_to_a_server(match, extra, "ids" in error)
    with pytest.raises(Exception, match=r"test\.yaml:\d+.*" + error):
        parse_topology(text, "test.yaml")


def _web6_to_a_server(match, extra="", ids=False):
    text = LEAF_SPINE + (WEB6 if not ids else
                         WEB6.replace("nfs: [firewall]", "nfs: [firewall, ids]")).replace(
        'match: {ipv6_dst: "2001:db8:1::/48", ip_proto: 6, tcp_dst: 80}', f"match: {match}")
    text = text.replace("egress: h4\n    match: " + match, "egress: web9\n    match: " + match)
    text += extra
    return text + "\nservers:\n  - {name: web9, switch: leaf2, port: 5, " \
                  "mac: \"02:00:00:00:01:19\", ip: 10.0.1.19/24}\n"


def test_an_ipv6_chain_to_a_server_is_symmetric():
    """Its replies come back as IPv4 ones do (the server's switch learns
    IPv6 reply rules, the hosts pin IPv6 flows)."""
    topo = parse_topology(_web6_to_a_server('{ipv6_dst: "2001:db8:1::/48"}',
                                            "\n    symmetric: true"), "test.yaml")
    assert topo.chain("web6").symmetric is True
