"""controller.rulebook: the incremental compile equals a full recompute
(controller.flows.switch_rules), rule for rule, after every kind of change,
and recomputes only the parts a change touches."""
import dataclasses

import networkx as nx
import pytest

from controller import fabric, flows, placement, plans, topogen
from controller.livegraph import LiveFabric
from controller.rulebook import RuleBook
from test_fabric import topo_from_graph, with_servers


def full(topo, graph, groups):
    return flows.switch_rules(topo, graph, groups)


def same(a, b):
    """Rule for rule: the same dpids, flows in the same order, same groups."""
    assert sorted(a) == sorted(b)
    for dpid in a:
        assert a[dpid].flows == b[dpid].flows, dpid
        assert a[dpid].groups == b[dpid].groups, dpid


class Cluster:
    """A topology, its placement and a book; `step` applies one change and
    checks the book against the full compile."""

    def __init__(self, topo):
        self.topo = topo
        self.graph = fabric.build_graph(topo)
        self.placed = placement.place(topo)
        self.book = RuleBook()
        self.rules = self.check()

    def groups(self):
        return plans.ingress_groups(self.topo, self.placed)

    def check(self):
        got = self.book.compile(self.topo, self.graph, self.groups())
        want = full(self.topo, self.graph, self.groups())
        same(got, want)
        return got

    def step(self):
        """Compile again; returns the dpids whose rules changed, checked
        against the objects the book kept for the others."""
        before = self.rules
        self.rules = self.check()
        kept = {d for d in self.rules if self.rules[d] is before.get(d)}
        differ = {d for d in self.rules if d not in kept}
        assert set(self.book.changed) == differ
        for d in kept:                     # kept objects are really unchanged
            assert before[d].flows == self.rules[d].flows
        return differ


def busiest_host(placed):
    return max(placed.cores_used().items(), key=lambda kv: (kv[1], kv[0]))[0]


@pytest.fixture(params=["fat-tree-4", "leaf-spine"])
def cluster(request):
    if request.param == "fat-tree-4":
        return Cluster(with_servers(topogen.fat_tree(4, chains=24), 3))
    return Cluster(with_servers(topogen.leaf_spine(2, 4, 2, chains=6), 2))


def test_nothing_changed_recomputes_nothing(cluster):
    assert cluster.step() == set()
    assert cluster.book.counts == {}


def test_host_lost_and_back(cluster):
    lost = busiest_host(cluster.placed)
    cluster.placed = placement.replace_after_host_loss(cluster.topo, cluster.placed, lost)
    changed = cluster.step()
    ingress = {cluster.topo.switch(cluster.topo.edge(c.ingress).switch).dpid
               for c in cluster.topo.chains}
    assert changed <= ingress, "only ingress switches steer chains"
    assert "fabrics" not in cluster.book.counts and "switch_fabrics" not in cluster.book.counts
    cluster.placed = placement.place(cluster.topo, previous=cluster.placed)
    cluster.step()


def test_chain_added_changed_and_removed(cluster):
    topo = cluster.topo
    first, rest = topo.chains[0], topo.chains[1:]
    cluster.topo = topo.with_chains(rest)
    cluster.placed = placement.place(cluster.topo, previous=cluster.placed)
    cluster.step()
    cluster.topo = topo.with_chains(rest + (first,))
    cluster.placed = placement.place(cluster.topo, previous=cluster.placed)
    cluster.step()
    wider = dataclasses.replace(first, match=dict(first.match, ipv4_src="192.0.2.0/24"))
    cluster.topo = topo.with_chains(rest + (wider,))
    changed = cluster.step()
    assert changed == {topo.switch(topo.edge(first.ingress).switch).dpid}
    assert cluster.book.counts["chains"] == 1


def test_instance_added_by_a_higher_rate(cluster):
    first = cluster.topo.chains[0]
    faster = dataclasses.replace(first, mpps=first.mpps * 2)
    cluster.topo = cluster.topo.with_chains((faster,) + cluster.topo.chains[1:])
    cluster.placed = placement.place(cluster.topo, previous=cluster.placed)
    cluster.step()


def test_unplaced_chain_gets_its_drop_and_back(cluster):
    chain = cluster.topo.chains[0]
    groups = cluster.groups()
    groups.pop(chain.name)
    got = cluster.book.compile(cluster.topo, cluster.graph, groups)
    same(got, full(cluster.topo, cluster.graph, groups))
    assert cluster.book.counts["chains"] == 1
    dpid = cluster.topo.switch(cluster.topo.edge(chain.ingress).switch).dpid
    assert any(f.kind == "chain_drop" for f in got[dpid].flows)
    cluster.step()


def test_link_down_and_up_and_switch_gone_and_back(cluster):
    topo = cluster.topo
    live = LiveFabric(topo)
    link = topo.links[0]
    for changes in (lambda: live.port_status(link.a, link.a_port, False, "down"),
                    lambda: live.port_status(link.a, link.a_port, True, "up"),
                    lambda: live.switch_left(link.b),
                    lambda: live.switch_joined(link.b)):
        changes()
        # part by part, as LiveFabric.rules compiles a split fabric
        for switches, places in live.parts():
            part = dataclasses.replace(
                topo, switches=tuple(s for s in topo.switches if s.name in switches),
                hosts=tuple(h for h in topo.hosts if h.name in places),
                edges=tuple(e for e in topo.edges if e.name in places),
                chains=tuple(c for c in topo.chains if c.ingress in places))
            groups = {c: [(h, w) for h, w in m if h in places]
                      for c, m in cluster.groups().items()}
            same(cluster.book.compile(part, live.graph(), groups),
                 full(part, live.graph(), groups))
    assert cluster.book.counts["fabrics"] == 1
    cluster.graph = live.graph()
    cluster.check()          # all back: the same rules as a full compile


def test_every_small_graph_and_a_lost_host():
    checked = 0
    for small in nx.graph_atlas_g()[1:120]:
        if not nx.is_connected(small):
            continue
        topo = topo_from_graph(small)
        chain = topogen.fat_tree(4, chains=1).chains[0]
        topo = dataclasses.replace(
            topo, nfs={"firewall": topogen.fat_tree(4, chains=1).nfs["firewall"]},
            chains=(dataclasses.replace(chain, nfs=("firewall",), ingress="internet",
                                        egress=topo.hosts[-1].name, mpps=0.5),))
        if len(topo.hosts) < 2:
            continue           # nowhere to re-place to
        c = Cluster(topo)
        lost = busiest_host(c.placed)
        c.placed = placement.replace_after_host_loss(c.topo, c.placed, lost)
        c.step()
        checked += 1
    assert checked > 30
