"""Every switch's desired rules, kept up to date by parts: a change costs
in proportion to what it changes.

`controller.flows.switch_rules` is the definition: it computes every rule
of every switch from the topology, the (live) fabric graph and the hosts of
each chain's first NF.  `RuleBook.compile` returns exactly the same rules
(the tests compare them rule for rule after every kind of change) but keeps
what it computed and recomputes only

  - the fabric's part (transport rules and ECMP groups, plain L2/ARP and
    the servers' to_server rules, edge and server guards) when the fabric
    changed: another graph object, other hosts, edges, servers or switches; the part is kept per fabric state, so the parts of a
    split fabric (controller.livegraph compiles each part on its own) do
    not push each other out;
  - a chain's part (its classifier or chain_drop rule, steering, picks and
    sends at its ingress switch) when the chain, the hosts of its first NF
    or the ingress switch's way to those hosts changed;
  - a switch's list only when one of its parts changed: an unchanged
    switch gets the very same `SwitchRules` object as before, so a caller
    can skip diffing it (`changed` lists the dpids that did change).

A host's loss re-places its chains; only those chains' ingress switches
are recomputed.  Not here: placement (controller.placement), talking to
switches (controller.apps), the live view of the fabric (controller.livegraph).

The fabric is recognised by the graph object's identity plus the hosts,
edges, servers and switches: callers (LiveFabric) build a new graph when the fabric
changes and never change a graph in place.  The book keeps a reference to
each graph it knows, so an identity is never reused while it is cached.
"""
from __future__ import annotations

import collections
import dataclasses
import time
from typing import Dict, List, Tuple

from controller import flows, pausing
from controller.pausing import no_pause

FABRIC_STATES = 8     # fabric states kept: the parts of a split fabric, and one spare
CHAIN_PARTS = 1 << 16


@dataclasses.dataclass
class _Fabric:
    graph: object
    hosts: tuple
    edges: tuple
    servers: tuple
    switches: tuple
    routes: dict
    per_switch: dict = dataclasses.field(default_factory=dict)   # name -> _SwitchFabric


@dataclasses.dataclass(frozen=True)
class _SwitchFabric:
    drops: list          # edge and server guards (flows.guard_rules)
    transport: list
    groups: list
    how: dict            # host -> action toward it from this switch
    plain: list


@dataclasses.dataclass(frozen=True)
class _ChainPart:
    chain: object
    members: tuple
    how: tuple           # (host, action toward it, Host) for each member
    flows: list


class Stretches:
    """A pause for `RuleBook.compile` (and controller.livegraph's
    LiveFabric) that calls `yield_` (the Ryu app's: yield to the eventlet
    hub; a benchmark's: nothing) and measures, since `start()`, how often
    it was called and the longest stretch between two calls: how long the
    hub would have gone unserved."""

    def __init__(self, yield_=no_pause):
        self.yield_ = yield_
        self.start()

    def start(self):
        self.started = self.last = time.monotonic()
        self.count = 0
        self.longest = 0.0

    def __call__(self):
        now = time.monotonic()
        self.longest = max(self.longest, now - self.last)
        self.count += 1
        self.yield_()
        self.last = time.monotonic()

    def finish(self):
        """The time since the last call counts as a stretch too."""
        self.longest = max(self.longest, time.monotonic() - self.last)


class RuleBook:
    """Desired rules per switch, recomputed by parts (see the module
    docstring).  `compile` is the whole interface; `changed` (dpids whose
    rules differ from the previous compile of the same book) and `counts`
    (what the last compile recomputed) are for logs and benchmarks."""

    def __init__(self):
        self._fabrics: "collections.OrderedDict[tuple, _Fabric]" = collections.OrderedDict()
        self._chains: Dict[Tuple[str, str], _ChainPart] = {}
        self._assembled: Dict[int, tuple] = {}   # dpid -> (key, rules, parts...)
        self.changed: List[int] = []
        self.counts = collections.Counter()

    def compile(self, topo, graph, ingress_groups,
                pause=None) -> Dict[int, flows.SwitchRules]:
        """What `flows.switch_rules(topo, graph, ingress_groups)` returns.
        `pause`, when given, is called after the fabric's routes and after
        each switch, every pausing.CHAINS chains computed and every
        pausing.ROWS switches' ECMP next hops: the Ryu app passes one that
        yields to the eventlet hub (controller.livegraph.LiveFabric.pause), so
        a long compile never starves the OpenFlow channel or the REST API."""
        pause = pause or no_pause
        self.counts = collections.Counter()
        fabric = self._fabric(topo, graph, pause)
        pause()
        chain_done = pausing.every(pausing.CHAINS, pause)
        by_switch = collections.defaultdict(list)
        for chain in topo.chains:
            if chain.nfs:
                by_switch[topo.edge(chain.ingress).switch].append(chain)
        out, self.changed = {}, []
        for sw in topo.switches:
            part = self._switch_fabric(topo, fabric, sw.name)
            chain_parts = tuple(self._chain(topo, chain, sw.name, part.how,
                                            ingress_groups.get(chain.name), chain_done)
                                for chain in by_switch.get(sw.name, ()))
            key = (id(part),) + tuple(id(c) for c in chain_parts)
            held = self._assembled.get(sw.dpid)
            if held is not None and held[0] == key:
                out[sw.dpid] = held[1]
                continue
            rules = flows.assemble(part.drops, [f for c in chain_parts for f in c.flows],
                                   part.transport, part.plain, part.groups)
            # the parts stay referenced while their ids are in the key
            self._assembled[sw.dpid] = (key, rules, part, chain_parts)
            out[sw.dpid] = rules
            self.changed.append(sw.dpid)
            self.counts["switches"] += 1
            pause()
        return out

    # ------------------------------------------------------------- parts
    def _fabric(self, topo, graph, pause) -> _Fabric:
        key = (id(graph), hash(topo.hosts), hash(topo.edges), hash(topo.servers),
               hash(topo.switches))
        fabric = self._fabrics.get(key)
        if (fabric is not None and fabric.graph is graph and fabric.hosts == topo.hosts
                and fabric.edges == topo.edges and fabric.servers == topo.servers
                and fabric.switches == topo.switches):
            self._fabrics.move_to_end(key)
            return fabric
        fabric = _Fabric(graph, topo.hosts, topo.edges, topo.servers, topo.switches,
                         flows.routes(topo, graph, pause))
        self.counts["fabrics"] += 1
        self._fabrics[key] = fabric
        while len(self._fabrics) > FABRIC_STATES:
            self._fabrics.popitem(last=False)
        return fabric

    def _switch_fabric(self, topo, fabric, switch) -> _SwitchFabric:
        part = fabric.per_switch.get(switch)
        if part is None:
            transport, groups, how = flows.transport_rules(topo, fabric.routes, switch)
            part = _SwitchFabric(flows.edge_drops(topo, switch), transport, groups, how,
                                 flows.plain_rules(topo, fabric.routes, switch))
            fabric.per_switch[switch] = part
            self.counts["switch_fabrics"] += 1
        return part

    def _chain(self, topo, chain, switch, how, members, done) -> _ChainPart:
        members = tuple(members or ())
        toward = tuple((h, how.get(h), topo.host(h)) for h, _ in members)
        held = self._chains.get((chain.name, switch))
        if (held is not None and held.members == members and held.how == toward
                and held.chain == chain):
            return held
        part = _ChainPart(chain, members, toward,
                          flows.chain_rules(topo, chain, members, how))
        if len(self._chains) > CHAIN_PARTS:
            self._chains.clear()      # chains come and go by name: bound what is kept
        self._chains[(chain.name, switch)] = part
        self.counts["chains"] += 1
        done()
        return part
