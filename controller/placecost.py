"""The placement's model and its cost: which instances serve which share
of each chain hop (`Placement`, `Instance`), and DESIGN.md's placement
cost of that: each chain's rate times the distance its traffic travels,
with the transportation between consecutive hops (`transport`) that the
plans (controller.plans) give the hosts as remote weights.

Pure and fast: the solver (controller.placement) calls `chain_cost` in
its search, the plans call `transport` for weights, `onvm bench
placement` compares `cost` of the heuristic with an exact MILP.

Not here: finding a placement (controller.placement), per-host plans
(controller.plans), distances themselves (controller.fabric).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Tuple

import numpy as np
from scipy.optimize import linprog

from controller import fabric

@dataclasses.dataclass
class Instance:
    """One NF instance: `id` is unique on its host (a plan's instance id)."""
    host: str
    id: int
    nf: str
    users: Dict[Tuple[str, int], float] = dataclasses.field(default_factory=dict)

    @property
    def key(self):
        return (self.host, self.id)

    @property
    def load(self):
        """Mpps it serves, over every (chain, hop) that uses it."""
        return sum(self.users.values())


class Placement:
    """The outcome of `place`.

    instances: {(host, id): Instance}
    hops: {chain name: [[((host, id), share), ...] per NF in chain order]}
          shares of one hop sum to 1; a hop has at most one instance per host.
    draining: {(host, id): Instance} moved away or scaled in, still
          running for their pinned flows with share 0 (`users`: the
          (chain, hop)s they served; controller.moves.Drains decides when
          they go).  They hold their cores and ids; they cost nothing.
    """

    def __init__(self, topo, instances, hops, draining=None):
        self.topo = topo
        self.instances = instances
        self.hops = hops
        self.draining = dict(draining or {})

    def with_draining(self, draining):
        """The same placement with `draining` ({key: Instance}) instead."""
        return Placement(self.topo, self.instances, self.hops, draining)

    def draining_at(self, chain, j):
        """{host: id} of the instances draining from hop j of `chain` (a
        model.Chain) on hosts where no instance of this placement serves
        that hop (there the running one takes the hop)."""
        serving = {host for (host, _), _ in self.hops.get(chain.name, [[]] * (j + 1))[j]}
        out = {}
        for (host, ident), inst in sorted(self.draining.items()):
            if (chain.name, j) in inst.users and chain.nfs[j] == inst.nf \
                    and host not in serving and host not in out:
                out[host] = ident
        return out

    def shares(self, chain_name, j):
        """{host: share} of hop j (0-based NF index) of a chain."""
        out: Dict[str, float] = {}
        for (host, _), share in self.hops[chain_name][j]:
            out[host] = out.get(host, 0.0) + share
        return out

    def cores_used(self):
        """{host: cores} given to instances (draining ones too), every
        topology host listed."""
        used = {h.name: 0 for h in self.topo.hosts}
        for inst in list(self.instances.values()) + list(self.draining.values()):
            used[inst.host] = used.get(inst.host, 0) + self.topo.nfs[inst.nf].cores
        return used

    def to_json(self, solve_ms):
        """DESIGN.md's `onvm place --json` object."""
        chains = {}
        for chain in self.topo.chains:
            chains[chain.name] = [
                {"nf": nf, "instances": [{"host": host, "share": round(share, 6)}
                                         for (host, _), share in self.hops[chain.name][j]]}
                for j, nf in enumerate(chain.nfs)]
        used = self.cores_used()
        hosts = {h.name: {"cores_used": used[h.name], "cores": h.cores}
                 for h in self.topo.hosts}
        return {"chains": chains,
                "cost": {"traffic_hops": round(cost(self.topo, self), 6)},
                "hosts": hosts, "solve_ms": round(solve_ms, 3)}


# --- the cost ---------------------------------------------------------------

def transport(src, dst, dist):
    """How traffic split as `src` {place: share} after one hop reaches the
    next hop split as `dst` {place: share}, and at what cost per unit.

    This is what the plans do (controller.plans): a host that runs both hops
    keeps all its traffic local (a plan's hop is local or remote, never
    both); everything else takes the cheapest transportation (per-unit cost
    dist(a, b)) onto what the next hop's places can still take.  Returns
    (cost, {(a, b): flow}); flows sum to 1.
    """
    tot_a, tot_b = sum(src.values()), sum(dst.values())
    if not tot_a or not tot_b:
        return 0.0, {}
    src = {a: s / tot_a for a, s in src.items()}
    room = {b: s / tot_b for b, s in dst.items()}
    flows = {}
    for a, s in src.items():
        if a in room:
            flows[(a, a)] = s
            room[a] = max(0.0, room[a] - s)
    rest = {a: s for a, s in src.items() if a not in dst and s > 0}
    room = {b: r for b, r in room.items() if r > 1e-12}
    if len(rest) == 1:
        flows.update(_fill_nearest(*next(iter(rest.items())), room, dist))
    elif rest:
        flows.update(_transport_lp(rest, room, dist))
    total = 0.0
    for (a, b), f in flows.items():
        if f > 0:
            total += f * dist(a, b)
    return total, flows


def _fill_nearest(a, supply, room, dist):
    """One source: fill the nearest places first (exact for one source)."""
    flows = {}
    for b in sorted(room, key=lambda b: (dist(a, b), b)):
        f = min(supply, room[b])
        if f > 1e-12:
            flows[(a, b)] = f
            supply -= f
    if supply > 1e-9:  # rounding only: room always covers the supply
        b = min(room, key=lambda b: (dist(a, b), b))
        flows[(a, b)] = flows.get((a, b), 0.0) + supply
    return flows


def _transport_lp(rest, room, dist):
    a_list, b_list = list(rest), list(room)
    n, m = len(a_list), len(b_list)
    c = np.array([dist(a, b) for a in a_list for b in b_list], dtype=float)
    if np.isinf(c).any():
        return {(a_list[0], b_list[0]): math.inf}
    a_eq = np.zeros((n, n * m))
    for i in range(n):
        a_eq[i, i * m:(i + 1) * m] = 1
    a_ub = np.zeros((m, n * m))
    for k in range(m):
        a_ub[k, k::m] = 1
    # Room covers supply; the slack absorbs rounding.
    b_ub = [room[b] + 1e-9 for b in b_list]
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[rest[a] for a in a_list],
                  bounds=(0, None), method="highs")
    if res.status != 0:
        raise RuntimeError(f"transportation LP failed: {res.message}")
    return {(a_list[i], b_list[k]): float(res.x[i * m + k])
            for i in range(n) for k in range(m) if res.x[i * m + k] > 1e-12}


def places_of(topo):
    """Every place a distance is asked for: hosts, edges and servers."""
    return ([h.name for h in topo.hosts] + [e.name for e in topo.edges]
            + [s.name for s in topo.servers])


def egress_places(chain):
    """{place: share} where a chain's traffic leaves: its egress, or its
    pool's servers evenly (the lb spreads new flows over them)."""
    if chain.pool:
        return {name: 1.0 / len(chain.pool) for name in chain.pool}
    return {chain.egress: 1.0}


def chain_cost(chain, dists, dist):
    """r * traffic hops of one chain given its per-hop {host: share} list."""
    places = [{chain.ingress: 1.0}] + list(dists) + [egress_places(chain)]
    total = 0.0
    for a, b in zip(places, places[1:]):
        total += transport(a, b, dist)[0]
    return chain.mpps * total


def distance_fn(topo, graph=None):
    graph = graph if graph is not None else fabric.build_graph(topo)
    return fabric.DistanceTable(graph, places_of(topo)).d


def cost(topo, placement):
    """DESIGN.md's placement cost of `placement`, computed from scratch."""
    dist = distance_fn(topo)
    return sum(chain_cost(c, [placement.shares(c.name, j) for j in range(len(c.nfs))], dist)
               for c in topo.chains)
