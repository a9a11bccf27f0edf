"""The fabric as it is now: the topology file's graph minus what OpenFlow
says is gone, and the rules that route around it.

`LiveFabric` takes the events the Ryu app sees (port status, a switch
leaving or coming back, links LLDP finds or loses) as plain arguments and
returns what changed, in words; `rules()` compiles `controller.flows` over
the live graph.  What is live:

  - a link between switches is down when its port is down or deleted on
    either end, or when LLDP reported it deleted (until LLDP sees it again);
  - a host's, edge's or server's cable is down when its switch port is;
  - a switch that left is gone with its cables until it reconnects (a
    switch never seen is not "gone": at start-up the file is trusted);
  - links LLDP finds that the file does not have are noted, never routed
    over: the file is the intended fabric, a surprise cable is a mistake.

When the fabric splits, each part gets rules for the hosts, edges and
servers it can reach; one cut off from every switch gets none (its transport
label then meets the table's miss rule and is dropped, counted).  This
module only decides: it neither talks to switches nor places chains (a cut
off host keeps its NFs; host liveness is the agents' leases).
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Dict, List, NamedTuple, Tuple

import networkx as nx

from controller import flows
from controller.fabric import build_graph
from controller.rulebook import RuleBook

Port = Tuple[str, int]          # (switch name, port number)
OFPP_CONTROLLER = 0xFFFFFFFD
LLDP_KIND = 0xFF                # a cookie kind controller.flows does not use


class Change(NamedTuple):
    """One thing that changed; `routing` is False for notes that leave the
    live graph as it was (a surprise LLDP link); `effect` says what the
    routing does about it."""
    text: str
    routing: bool
    effect: str = ""


AROUND, AGAIN = "routing around it", "routing over it again"


def port_name(port: Port) -> str:
    return f"{port[0]}:{port[1]}"


def link_name(link) -> str:
    return f"link {link.a}:{link.a_port} - {link.b}:{link.b_port}"


class LiveFabric:
    """The live view of one topology's fabric (see the module docstring)."""

    def __init__(self, topo):
        self.topo = topo
        self.ports_down = set()     # (switch, port) down or deleted
        self.gone = set()           # switches that left
        self.lldp_lost = set()      # file links (frozenset of two Ports) LLDP lost
        self.lldp_extra = set()     # LLDP links the file lacks (frozenset of Ports)
        self.role = {}              # (switch, port) -> ("link", Link) | (kind, name)
        for link in topo.links:
            self.role[(link.a, link.a_port)] = ("link", link)
            self.role[(link.b, link.b_port)] = ("link", link)
        for host in topo.hosts:
            self.role[(host.switch, host.port)] = ("host", host.name)
        for edge in topo.edges:
            self.role[(edge.switch, edge.port)] = ("edge", edge.name)
        for server in topo.servers:
            self.role[(server.switch, server.port)] = ("server", server.name)
        self._graph = None
        self._cut = (None, [])      # (the live graph, who it leaves unreachable)
        self.book = RuleBook()      # recompiles only the parts a change touches
        # Set by the Ryu app to a callable that yields to the eventlet hub:
        # `rules` then calls it between switches (see `rules`).  None: no
        # yielding, and no other caller can come in between.
        self.pause = None
        self._turns = set()         # tickets of the compiles asked for, not done
        self._ticket = 0
        self._in_flight = None      # the ticket compiling now

    # ---------------------------------------------------------- the events
    def add_host(self, topo, host):
        """`host` joined (controller.joins): `topo` is the topology with it."""
        self.topo = topo
        self.role[(host.switch, host.port)] = ("host", host.name)
        self._graph = None
        self.book = RuleBook()      # every switch's transport rules change

    def port_status(self, switch: str, port: int, up: bool, why: str) -> List[Change]:
        """A port went down (`why`: "link down", "deleted", ...) or up."""
        key = (switch, port)
        role = self.role.get(key)
        if role is None:
            return [Change(f"port {port_name(key)} {why}: the topology file "
                           f"{self.topo.source} has nothing on this port", False)]
        if up == (key not in self.ports_down):
            return []                       # a repeat: nothing changed
        if up:
            self.ports_down.discard(key)
        else:
            self.ports_down.add(key)
        self._graph = None
        state = "up" if up else "down"
        kind, what = role
        effect = AGAIN if up else AROUND
        if kind == "link":
            return [Change(f"{link_name(what)} {state} (port {port_name(key)} {why})",
                           True, effect)]
        return [Change(f"{kind} {what}'s cable at {port_name(key)} {state} ({why})",
                       True, effect)]

    def switch_left(self, switch: str) -> List[Change]:
        if switch in self.gone:
            return []
        self.gone.add(switch)
        self._graph = None
        return [Change(f"switch {switch} left: its links and cables are down "
                       f"until it reconnects", True, AROUND)]

    def switch_joined(self, switch: str) -> List[Change]:
        if switch not in self.gone:
            return []
        self.gone.discard(switch)
        self._graph = None
        return [Change(f"switch {switch} is back", True, AGAIN)]

    def lldp_link(self, src: Port, dst: Port, present: bool) -> List[Change]:
        """LLDP found (`present`) or lost the link src -> dst."""
        pair = frozenset((src, dst))
        link = self._file_link(src, dst)
        if link is None:
            return self._lldp_surprise(src, dst, pair, present)
        if present == (pair not in self.lldp_lost):
            return []
        if present:
            self.lldp_lost.discard(pair)
            text, effect = f"{link_name(link)} seen again by LLDP", AGAIN
        else:
            self.lldp_lost.add(pair)
            text, effect = f"{link_name(link)} lost by LLDP: treated as down", AROUND
        self._graph = None
        return [Change(text, True, effect)]

    def _file_link(self, src, dst):
        kind, link = self.role.get(src, (None, None))
        if kind != "link":
            return None
        ends = {(link.a, link.a_port), (link.b, link.b_port)}
        return link if ends == {src, dst} else None

    def _lldp_surprise(self, src, dst, pair, present):
        if not present:
            self.lldp_extra.discard(pair)
            return [Change(f"LLDP link {port_name(src)} -> {port_name(dst)} gone "
                           f"(the file does not have it either)", False)]
        if pair in self.lldp_extra:
            return []
        self.lldp_extra.add(pair)
        says = "; ".join(f"{port_name(p)} has {self._role_words(p)}" for p in (src, dst))
        return [Change(f"LLDP found link {port_name(src)} -> {port_name(dst)} that "
                       f"{self.topo.source} does not have ({says}): not routed over",
                       False)]

    def _role_words(self, port):
        kind, what = self.role.get(port, (None, None))
        if kind is None:
            return "nothing"
        return link_name(what) if kind == "link" else f"{kind} {what}"

    # ------------------------------------------------------------ the view
    def link_up(self, link) -> bool:
        ends = ((link.a, link.a_port), (link.b, link.b_port))
        return (not any(end in self.ports_down for end in ends)
                and frozenset(ends) not in self.lldp_lost
                and link.a not in self.gone and link.b not in self.gone)

    def graph(self) -> nx.Graph:
        """The live graph: every node of the file's graph (a cut-off host or
        edge stays as a node without edges), only the cables that are up."""
        if self._graph is None:
            live = dataclasses.replace(
                self.topo, links=tuple(l for l in self.topo.links if self.link_up(l)))
            g = build_graph(live)
            for name, data in list(g.nodes(data=True)):
                if data["kind"] == "switch" and name in self.gone:
                    g.remove_edges_from(list(g.edges(name)))
                elif data["kind"] != "switch":
                    port = (data["switch"], g.edges[name, data["switch"]]["ports"]
                            [data["switch"]]) if g.has_edge(name, data["switch"]) else None
                    if port is None or port in self.ports_down:
                        g.remove_edges_from(list(g.edges(name)))
            self._graph = g
        return self._graph

    def parts(self) -> List[Tuple[Tuple[str, ...], Tuple[str, ...]]]:
        """The fabric's connected parts as (switches, hosts, edges and servers), the
        switches that left excluded, in file order; places cut off from
        every switch are in no part."""
        g = self.graph()
        order = {name: i for i, name in enumerate(g.nodes)}
        switches = [n for n, d in g.nodes(data=True)
                    if d["kind"] == "switch" and n not in self.gone]
        out = []
        for comp in nx.connected_components(g.subgraph(switches)):
            places = [n for s in comp for n in g.neighbors(s)
                      if g.nodes[n]["kind"] != "switch"]
            out.append((tuple(sorted(comp, key=order.get)),
                        tuple(sorted(places, key=order.get))))
        return sorted(out, key=lambda part: order[part[0][0]])

    def unreachable(self) -> List[str]:
        """Hosts, edges and servers no switch reaches, in file order (kept
        with the live graph it was read from: the core asks at every
        judgement of its hosts)."""
        g = self.graph()
        if self._cut[0] is not g:
            reached = {p for _, places in self.parts() for p in places}
            self._cut = (g, [n for n, d in g.nodes(data=True)
                             if d["kind"] != "switch" and n not in reached])
        return list(self._cut[1])

    # ----------------------------------------------------------- the rules
    def rules(self, topo, ingress_groups, lldp=False) -> Dict[int, flows.SwitchRules]:
        """controller.flows.switch_rules over the live graph for `topo` (the
        file's topology with every chain asked for, placed or not: those
        without a group get their chain_drop), part by part; switches that
        left get none.  Compiled by controller.rulebook, so a host's loss
        recomputes only its chains' rules.  The MPLS drops on an edge port
        stay while the edge's cable is down, so a port coming back is never
        open; so do a server port's (and its server_in rule: what it sends
        meets only the learned replies).  With `lldp` (ryu.topology observing links) every switch also
        sends LLDP to the controller (see LldpPunt).

        With `pause` set, the compile yields between switches, so another
        caller (a port status while the loop compiles) may ask meanwhile.
        The newest call supersedes the one in flight: that one stops at its
        next pause, the newest compiles, then the older one compiles again
        for its own inputs (mostly cache hits by then).  Two compiles never
        interleave on the rule book."""
        if self.pause is None:
            return self._rules(topo, ingress_groups, lldp, None)
        self._ticket += 1
        mine = self._ticket
        self._turns.add(mine)
        try:
            while True:
                while self._in_flight is not None or max(self._turns) != mine:
                    self.pause()
                self._in_flight = mine
                try:
                    return self._rules(topo, ingress_groups, lldp,
                                       lambda: self._pause_unless_superseded(mine))
                except Superseded:
                    pass
                finally:
                    self._in_flight = None
        finally:
            self._turns.discard(mine)

    def _pause_unless_superseded(self, mine):
        self.pause()
        if max(self._turns) != mine:
            raise Superseded()

    def _rules(self, topo, ingress_groups, lldp, pause):
        out = {}
        for switches, places in self.parts():
            part = _restrict(topo, set(switches), set(places))
            groups = _reachable_groups(ingress_groups, set(places))
            for dpid, rules in self.book.compile(part, self.graph(), groups,
                                                 pause=pause).items():
                rules = _with_edge_drops(topo, part, rules, dpid)
                if lldp:
                    rules = flows.SwitchRules([lldp_punt()] + rules.flows, rules.groups)
                out[dpid] = rules
        return out


class Superseded(Exception):
    """A compile in flight stopped for a newer one (LiveFabric.rules)."""


@dataclasses.dataclass(frozen=True)
class LldpPunt(flows.FlowSpec):
    """The rule ryu.topology.switches puts on every switch it sees (LLDP to
    the controller, table 0, above all else) but with an onvm cookie: Ryu
    installs it with cookie 0 once, on connect, and the resync deletes every
    foreign rule, so without it LLDP stops, every link times out and would
    count as lost.  Its cookie kind is LLDP_KIND (controller.flows has no
    kind for it)."""

    @property
    def cookie(self) -> int:
        return (flows.APP_ID << 48) | (LLDP_KIND << 40)


def lldp_punt() -> LldpPunt:
    match = flows.canonical_match({"eth_type": 0x88CC, "eth_dst": "01:80:c2:00:00:0e"})
    return LldpPunt(flows.TABLE_ADMIT, 0xFFFF, "lldp", match,
                    (("output", OFPP_CONTROLLER),))


def _restrict(topo, switches, places):
    edges = tuple(e for e in topo.edges if e.name in places)
    names = {e.name for e in edges}
    return dataclasses.replace(
        topo, switches=tuple(s for s in topo.switches if s.name in switches),
        hosts=tuple(h for h in topo.hosts if h.name in places), edges=edges,
        servers=tuple(s for s in topo.servers if s.name in places),
        chains=tuple(c for c in topo.chains if c.ingress in names))


def _reachable_groups(ingress_groups, places):
    """Each chain's first-NF hosts that its ingress can still reach; a chain
    with none left is left out, so controller.flows gives it its chain_drop
    rule (fail-closed: its traffic is dropped at the ingress, never
    forwarded around its NFs)."""
    out = {}
    for chain, members in ingress_groups.items():
        left = [(h, w) for h, w in members if h in places]
        if left:
            out[chain] = left
    return out


def _with_edge_drops(topo, part, rules, dpid):
    """The guard rules (controller.flows.guard_rules) of the edges and
    servers of this switch that the part lost."""
    switch = next(s.name for s in topo.switches if s.dpid == dpid)
    kept = {p.name for p in part.edges + part.servers}
    drops = flows.guard_rules([e for e in topo.edges if e.name not in kept],
                              [s for s in topo.servers if s.name not in kept], switch)
    return flows.SwitchRules(drops + list(rules.flows), rules.groups)


# ------------------------------------------------------- what a change does

def _by_key(rules):
    return {f.key: (f.cookie, f.kind) for f in rules.flows}


def rule_changes(before, after) -> Tuple[Counter, List[int]]:
    """Rules that differ between two {dpid: SwitchRules}: a Counter by rule
    kind (added, removed or with other actions: one each; a select group
    that differs counts as "group") and the sorted dpids whose rules differ."""
    kinds, touched = Counter(), []
    empty = flows.SwitchRules([], [])
    for dpid in sorted(set(before) | set(after)):
        old, new = before.get(dpid, empty), after.get(dpid, empty)
        if old == new:      # mostly the very same specs: no cookie hashed
            continue
        a, b = _by_key(old), _by_key(new)
        changed = Counter((a.get(k) or b.get(k))[1] for k in set(a) | set(b)
                          if a.get(k) != b.get(k))
        groups = {g.group_id for g in set(old.groups) ^ set(new.groups)}
        if groups:
            changed["group"] += len(groups)
        if changed:
            touched.append(dpid)
            kinds += changed
    return kinds, touched


def describe(before, after) -> str:
    """'12 transport rules and 4 ECMP groups (and 9 l2) change on 3
    switches': transport first, as that is what routing around is about."""
    kinds, touched = rule_changes(before, after)
    if not touched:
        return "no rule changes"
    transport, groups = kinds.pop("transport", 0), kinds.pop("group", 0)
    others = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    return (f"{transport} transport rules and {groups} ECMP groups "
            f"{'(and ' + others + ') ' if others else ''}"
            f"change on {len(touched)} switches")
