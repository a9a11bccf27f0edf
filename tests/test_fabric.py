"""controller.fabric: the graph, distances and ECMP ports, checked against
networkx on every small graph of the atlas (as Faucet's stack tests do)."""
import dataclasses
import itertools

import networkx as nx
import pytest

from controller import fabric, topogen
from contracts.model import Edge, Host, Link, Server, Switch, Topology


def with_servers(topo, count):
    """`topo` with `count` application servers, one on each of the first
    switches that have hosts, on the port after the highest one used."""
    used = {}
    for sw, port in ([(h.switch, h.port) for h in topo.hosts]
                     + [(e.switch, e.port) for e in topo.edges]
                     + [(l.a, l.a_port) for l in topo.links]
                     + [(l.b, l.b_port) for l in topo.links]):
        used[sw] = max(used.get(sw, 0), port)
    switches = list(dict.fromkeys(h.switch for h in topo.hosts))[:count]
    servers = tuple(Server(f"web{i + 1}", sw, used[sw] + 1, f"02:00:00:00:0f:{i + 1:02x}",
                           f"10.200.0.{i + 1}/16") for i, sw in enumerate(switches))
    return dataclasses.replace(topo, servers=topo.servers + servers)


def topo_from_graph(g):
    """Switches = g's nodes (links in g's edge order), one host per switch,
    one edge on the first switch, one server on the last."""
    nodes = sorted(g.nodes())
    switches = tuple(Switch(f"s{n}", n + 1) for n in nodes)
    ports = {n: itertools.count(10) for n in nodes}
    links = tuple(Link(f"s{a}", next(ports[a]), f"s{b}", next(ports[b]), 10.0)
                  for a, b in sorted(g.edges()))
    hosts = tuple(Host(f"h{n}", f"s{n}", 1, f"02:00:00:00:00:{n + 1:02x}",
                       f"10.0.0.{n + 1}/24", 4, 16 + n) for n in nodes)
    edges = (Edge("internet", f"s{nodes[0]}", 2),) if nodes else ()
    servers = ((Server("web", f"s{nodes[-1]}", 3, "02:00:00:00:01:00", "10.0.1.1/24"),)
               if nodes else ())
    return Topology("atlas", switches, hosts, links, edges, {}, (), servers=servers)


def atlas(max_nodes=6):
    return [g for g in nx.graph_atlas_g()[1:] if g.number_of_nodes() <= max_nodes]


def test_graph_has_kinds_ports_and_gbps():
    g = fabric.build_graph(topo_from_graph(nx.path_graph(2)))
    assert g.nodes["s0"] == {"kind": "switch", "dpid": 1}
    assert g.nodes["h1"] == {"kind": "host", "switch": "s1"}
    assert g.nodes["internet"]["kind"] == "edge"
    assert g.nodes["web"] == {"kind": "server", "switch": "s1"}
    assert g.edges["web", "s1"]["ports"] == {"s1": 3}
    assert g.edges["h1", "s1"]["ports"] == {"s1": 1}
    assert g.edges["s0", "s1"] == {"ports": {"s0": 10, "s1": 10}, "gbps": 10.0}
    assert fabric.switch_of(g, "h1") == "s1" and fabric.switch_of(g, "s0") == "s0"


def test_graph_is_deterministic():
    topo = topogen.fat_tree(4)
    a, b = fabric.build_graph(topo), fabric.build_graph(topo)
    assert list(a.nodes(data=True)) == list(b.nodes(data=True))
    assert list(a.edges(data=True)) == list(b.edges(data=True))


def test_parallel_links_are_kept_for_ecmp():
    topo = topo_from_graph(nx.path_graph(2))
    topo = dataclasses.replace(topo, links=topo.links + (Link("s0", 20, "s1", 20, 10.0),))
    g = fabric.build_graph(topo)
    assert fabric.ecmp_ports(g, "s0", "h1") == (10, 20)


def test_hop_distances_match_networkx_on_every_small_graph():
    checked = 0
    for small in atlas():
        topo = topo_from_graph(small)
        g = fabric.build_graph(topo)
        places = [h.name for h in topo.hosts] + ["internet", "web"]
        got = fabric.hop_distances(g, places)
        for a in places:
            lengths = nx.single_source_shortest_path_length(g, a)
            for b in places:
                if b in lengths:
                    assert got[(a, b)] == lengths[b], (small.edges(), a, b)
                else:
                    assert (a, b) not in got, "no path must be absent"
                checked += 1
    assert checked > 1000


def test_ecmp_ports_are_exactly_the_shortest_path_first_hops():
    for small in atlas(5):
        topo = topo_from_graph(small)
        g = fabric.build_graph(topo)
        sw_only = g.subgraph(s.name for s in topo.switches)
        for target in [h.name for h in topo.hosts] + ["internet"]:
            own = fabric.switch_of(g, target)
            table = fabric.ecmp_table(g, target)
            for sw in topo.switches:
                ports = fabric.ecmp_ports(g, sw.name, target)
                assert ports == table.get(sw.name, ())
                if sw.name == own:
                    assert ports == (g.edges[sw.name, target]["ports"][sw.name],)
                    continue
                if not nx.has_path(sw_only, sw.name, own):
                    assert ports == ()
                    continue
                firsts = {p[1] for p in nx.all_shortest_paths(sw_only, sw.name, own)}
                want = sorted(g.edges[sw.name, n]["ports"][sw.name] for n in firsts)
                assert list(ports) == want


def test_ecmp_on_fat_tree_spreads_over_both_uplinks():
    g = fabric.build_graph(topogen.fat_tree(4))
    # A top-of-rack switch reaches a host in another pod over both aggs.
    far = next(n for n, d in g.nodes(data=True)
               if d["kind"] == "host" and d["switch"].startswith("pod4"))
    assert len(fabric.ecmp_ports(g, "pod1-tor1", far)) == 2


def test_graph_without_link_and_switch():
    g = fabric.build_graph(topo_from_graph(nx.cycle_graph(4)))
    assert fabric.hop_distances(g, ["h0", "h1"])[("h0", "h1")] == 3
    cut = fabric.graph_without(g, ("s0", "s1"))
    assert fabric.hop_distances(cut, ["h0", "h1"])[("h0", "h1")] == 5
    assert g.has_edge("s0", "s1"), "the original graph is not changed"
    gone = fabric.graph_without(g, "s2")
    assert "s2" not in gone and "h2" not in gone and "h1" in gone


def test_distances_on_k16_fat_tree():
    topo = topogen.fat_tree(16)
    g = fabric.build_graph(topo)
    places = [h.name for h in topo.hosts] + [e.name for e in topo.edges]
    table = fabric.DistanceTable(g, places)
    assert table.d("h1", "h1") == 0
    assert table.d("h1", "h2") == 2          # same top-of-rack switch
    assert table.d("h1", topo.hosts[-1].name) == 6   # another pod
    d = fabric.hop_distances(g, places)
    assert len(d) == len(places) ** 2


@pytest.mark.parametrize("missing,want", [("h1", 4), (("s0", "s1"), None)])
def test_cut_off_places_have_no_distance(missing, want):
    g = fabric.build_graph(topo_from_graph(nx.path_graph(3)))
    cut = fabric.graph_without(g, missing)
    d = fabric.hop_distances(cut, ["h0", "h2"])
    assert d.get(("h0", "h2")) == want
    assert fabric.ecmp_ports(cut, "s2", "h0") == (() if want is None else (10,))


def _ecmp_cases():
    for small in atlas(6):
        g = fabric.build_graph(topo_from_graph(small))
        yield g
        for link in list(g.edges())[:2]:
            if all(g.nodes[n]["kind"] == "switch" for n in link):
                yield fabric.graph_without(g, link)
    yield fabric.build_graph(with_servers(topogen.fat_tree(4), 3))
    yield fabric.build_graph(with_servers(topogen.leaf_spine(2, 4, 2), 2))
    yield fabric.graph_without(fabric.build_graph(with_servers(topogen.fat_tree(4), 3)),
                               "pod1-agg1")


def test_ecmp_tables_equal_ecmp_table_for_every_target():
    """The fast all-targets computation gives, target by target, exactly
    the readable single-target definition (cut links and switches too)."""
    checked = 0
    for g in _ecmp_cases():
        targets = sorted(n for n, d in g.nodes(data=True) if d["kind"] != "switch")
        together = fabric.ecmp_tables(g, targets)
        assert sorted(together) == targets
        for target in targets:
            assert together[target] == fabric.ecmp_table(g, target), target
            checked += 1
    assert checked > 1000
