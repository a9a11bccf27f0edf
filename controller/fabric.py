"""The fabric as a graph: switches, hosts, edges and servers as nodes,
cables as graph edges, and the distances and equal-cost next hops the
controller derives from it.

Node names are the topology's names.  Every node has `kind` ("switch",
"host", "edge" or "server"); switches also carry `dpid`, the others
(leaves) carry `switch` (the one switch they hang off).  A leaf's cable to
its switch carries `ports={switch: port}`; a link between switches carries
`ports={a: a_port, b: b_port}` and `gbps` (a second cable between the same
two switches goes to `parallel`, a list of further `ports` dicts).

Distances are DESIGN.md's d(a, b): links on a shortest path, a leaf's own
cable counted, 0 for the same place.  Hosts, edges and servers are leaves,
so d is the switch-to-switch distance plus one per host/edge end, which is
what makes `hop_distances` and `DistanceTable` cheap on a k=16 fat-tree.
"No path" is data: such pairs are simply absent / `math.inf`.

This module neither reads topology files (`controller.topology`) nor talks
to switches (`controller.apps`); the live view (ports down, switches that
left, links LLDP lost) is `controller.livegraph`, and `graph_without` gives
what-if copies for placement.
"""
from __future__ import annotations

import math

import networkx as nx
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path

LEAF_KINDS = ("host", "edge", "server")


def build_graph(topo):
    """The fabric of `topo` (a contracts.model.Topology) as a networkx.Graph.

    Nodes and edges are added in file order, so two builds of the same
    topology iterate identically.
    """
    g = nx.Graph(name=topo.name)
    for sw in topo.switches:
        g.add_node(sw.name, kind="switch", dpid=sw.dpid)
    for host in topo.hosts:
        g.add_node(host.name, kind="host", switch=host.switch)
        g.add_edge(host.name, host.switch, ports={host.switch: host.port})
    for kind, leaves in (("edge", topo.edges), ("server", topo.servers)):
        for leaf in leaves:
            g.add_node(leaf.name, kind=kind, switch=leaf.switch)
            g.add_edge(leaf.name, leaf.switch, ports={leaf.switch: leaf.port})
    for link in topo.links:
        ports = {link.a: link.a_port, link.b: link.b_port}
        if g.has_edge(link.a, link.b):
            # nx.Graph holds one edge per pair; keep further cables as data
            # so ECMP can still spread over them.
            g.edges[link.a, link.b].setdefault("parallel", []).append(ports)
        else:
            g.add_edge(link.a, link.b, ports=ports, gbps=link.gbps)
    return g


def switch_of(graph, place):
    """The switch a leaf (host, edge, server) hangs off; a switch is its own."""
    data = graph.nodes[place]
    if data["kind"] == "switch":
        return place
    return data["switch"]


def _end(graph, place):
    """Links between a place and its switch: 1 for leaves."""
    return 1 if graph.nodes[place]["kind"] in LEAF_KINDS else 0


def graph_without(graph, node_or_link):
    """A copy of `graph` without a node (a name) or a link ((a, b) pair).

    Removing a switch also removes the hosts, edges and servers that hung off it
    only through it: they are cut off, and a cut-off host is a lost host.
    """
    g = graph.copy()
    if isinstance(node_or_link, tuple):
        a, b = node_or_link
        if g.has_edge(a, b):
            g.remove_edge(a, b)
        return g
    if node_or_link not in g:
        return g
    orphans = []
    if g.nodes[node_or_link]["kind"] == "switch":
        orphans = [n for n in g.neighbors(node_or_link)
                   if g.nodes[n]["kind"] in LEAF_KINDS]
    g.remove_nodes_from([node_or_link] + orphans)
    return g


def _switch_matrix(graph):
    """Sorted switch names and the sparse adjacency of the switch subgraph."""
    switches = sorted(n for n, d in graph.nodes(data=True) if d["kind"] == "switch")
    index = {s: i for i, s in enumerate(switches)}
    rows, cols = [], []
    for a, b in graph.edges():
        if a in index and b in index:
            rows += [index[a], index[b]]
            cols += [index[b], index[a]]
    n = len(switches)
    adj = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return switches, index, adj


class DistanceTable:
    """d(a, b) for every pair of `places`, stored switch to switch.

    One breadth-first search per distinct switch that a place hangs off
    (scipy's C implementation), never one per host: hosts under one switch
    share their distances.  `d(a, b)` is O(1); `matrix()` gives the
    switch-level array for vectorised use (see controller.placement).
    """

    def __init__(self, graph, places):
        self.graph = graph
        switches, index, adj = _switch_matrix(graph)
        self.places = list(places)
        self.switch = {p: switch_of(graph, p) for p in self.places}
        self.end = {p: _end(graph, p) for p in self.places}
        self.rows = sorted({self.switch[p] for p in self.places}, key=index.get)
        self.row = {s: i for i, s in enumerate(self.rows)}
        if self.rows and adj.shape[0]:
            full = shortest_path(adj, method="D", unweighted=True,
                                 indices=[index[s] for s in self.rows])
            cols = [index[s] for s in self.rows]
            self._sw = full[:, cols]
        else:
            self._sw = np.zeros((len(self.rows), len(self.rows)))

    def matrix(self):
        """Switch-to-switch distances between `rows` (inf where cut off)."""
        return self._sw

    def switch_distance(self, sa, sb):
        return self._sw[self.row[sa], self.row[sb]]

    def d(self, a, b):
        """Links between places a and b; math.inf when there is no path."""
        if a == b:
            return 0
        s = self._sw[self.row[self.switch[a]], self.row[self.switch[b]]]
        if math.isinf(s):
            return math.inf
        return int(s) + self.end[a] + self.end[b]


def hop_distances(graph, places):
    """{(a, b): d(a, b)} for all ordered pairs of `places` that are connected.

    d counts a host's (or edge's) cable to its switch and is 0 for a == b.
    Pairs without a path are absent.  For large clusters prefer
    `DistanceTable`, which does not materialise every pair.
    """
    table = DistanceTable(graph, places)
    out = {}
    for a in table.places:
        for b in table.places:
            dist = table.d(a, b)
            if not math.isinf(dist):
                out[(a, b)] = dist
    return out


def _ports_toward(graph, switch, neighbor):
    data = graph.edges[switch, neighbor]
    ports = [data["ports"][switch]]
    ports += [p[switch] for p in data.get("parallel", ())]
    return ports


def ecmp_table(graph, target):
    """{switch: tuple of out ports} toward `target` (host, edge or server) from
    every switch that can reach it, over all shortest paths.

    One breadth-first search for all switches: use this, not `ecmp_ports`
    in a loop, when compiling rules for a whole fabric.  At the target's own
    switch the only port is the one to the target.  Paths never pass through
    hosts or edges.
    """
    own = switch_of(graph, target)
    sub = graph.subgraph(n for n, d in graph.nodes(data=True) if d["kind"] == "switch")
    if own not in sub:
        return {}
    dist = nx.single_source_shortest_path_length(sub, own)
    table = {own: tuple(_ports_toward(graph, own, target))}
    for sw, dsw in dist.items():
        if sw == own:
            continue
        ports = []
        for nb in sub.neighbors(sw):
            if dist.get(nb) == dsw - 1:
                ports += _ports_toward(graph, sw, nb)
        table[sw] = tuple(sorted(ports))
    return table


def ecmp_tables(graph, targets, pause=None):
    """{target: {switch: tuple of out ports}} for every target: what
    `ecmp_table(graph, target)` gives for each, computed together.

    One breadth-first search per switch for the whole fabric (scipy's C
    implementation on the switch adjacency), and one table of next hops per
    switch that a target hangs off, shared by every target under it (each
    target's table is that shared table plus its own switch's port to it).
    This is what compiling a 1024-host fabric's rules needs; `ecmp_table`
    stays the readable definition the tests compare against.  `pause`, if
    given, is called after every row (controller.pausing).
    """
    switches, index, adj = _switch_matrix(graph)
    owns = {}
    for target in targets:
        own = switch_of(graph, target)
        owns[target] = own if own in index else None
    wanted = sorted({own for own in owns.values() if own is not None}, key=index.get)
    toward = {}
    if wanted:
        dist = shortest_path(adj, method="D", unweighted=True,
                             indices=[index[s] for s in wanted])
        ports = {}      # (switch, neighbour): out ports, in graph order
        for a, b in graph.edges():
            if a in index and b in index:
                ports[a, b] = _ports_toward(graph, a, b)
                ports[b, a] = _ports_toward(graph, b, a)
        neighbours = {s: [nb for nb in graph.neighbors(s) if nb in index] for s in switches}
        if pause is not None:
            pause()
        for row, own in enumerate(wanted):
            toward[own] = _next_hops(own, dist[row], switches, index, neighbours, ports)
            if pause is not None:
                pause()
    result = {}
    for target, own in owns.items():
        if own is None:
            result[target] = {}
            continue
        table = dict(toward[own])
        table[own] = tuple(_ports_toward(graph, own, target))
        result[target] = table
    return result


def _next_hops(own, d, switches, index, neighbours, ports):
    """{switch: out ports toward `own`} from `d`, the distances to `own`."""
    table = {}
    for sw in switches:
        dsw = d[index[sw]]
        if sw == own or math.isinf(dsw):
            continue
        out = []
        for nb in neighbours[sw]:
            if d[index[nb]] == dsw - 1:
                out += ports[sw, nb]
        table[sw] = tuple(sorted(out))
    return table


def ecmp_ports(graph, switch, target):
    """Out ports on `switch` toward `target` over all shortest paths, sorted;
    () when there is no path."""
    return ecmp_table(graph, target).get(switch, ())
