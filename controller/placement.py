"""Placement: which hosts run which NF instances, and which share of each
chain hop each instance serves, minimising DESIGN.md's placement cost.

The cost of chain c (rate r_c) is r_c times the distance its traffic
travels: ingress -> NF_1 -> .. -> NF_k -> egress.  Between two consecutive
hops split over several hosts, a host running both keeps its traffic local
and the rest takes the cheapest transportation (min-cost flow) onto the
next hop's per-host shares (`transport`).  `cost()` computes exactly that;
`controller.plans` gives every host the per-source weights of the same
transportation, so the plans forward as the cost assumes.

How it places (a heuristic; `onvm bench placement` measures it against an
exact MILP):
  * chains in decreasing rate; each chain as one or more "strands" of rate
    q (q at most one instance's capacity: a chain whose rate needs several
    instances is split over strands);
  * a strand is routed by Viterbi over layers (one per NF) of candidate
    hosts: a host is a candidate if an instance of the NF there has q
    spare, or if it has the cores for a new one.  Transitions cost q *
    d(host, host'); hosts under one switch share their distances, so a
    layer step is a (switches x switches) array operation, not hosts^2;
  * ties go to sharing an existing instance, then to the least loaded host;
  * a chain hop uses at most one instance per host (a plan's hop names one
    local instance);
  * then rip-up-and-reroute passes over the chains while the cost drops.

Re-placement (`place(previous=..., exclude_hosts=...)`,
`replace_after_host_loss`) keeps every surviving instance and assignment
where it is and routes only what is missing: the shares lost with a host,
and chains that are new or changed.  An unchanged chain is never moved.

Not here: the Placement model and its cost (`controller.placecost`),
reading files (`controller.topology`), per-host plans and weights
(`controller.plans`), OpenFlow (`controller.flows`).
"""
from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import sys
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from controller import fabric, pausing
from controller.placecost import (  # noqa: F401  (Instance, Placement, cost, transport: re-exported)
    Instance, Placement, chain_cost, cost, egress_places, places_of, transport)

log = logging.getLogger("onvm.placement")

TOL = 1e-6            # Mpps below this is nothing (avoids slivers of shares)
MAX_ID = 65534        # plan instance ids are 1..65534
MAX_BAN_TRIES = 16    # conflict re-routes per strand before giving up
IMPROVE_WORK = 400_000  # rip-up passes run while chains * hosts * passes <= this


class PlacementError(ValueError):
    """The chains cannot be placed; the message names the chain, the NF and
    what is short."""


# --- the solver -------------------------------------------------------------

def _same_route(a, b):
    return (a.ingress, egress_places(a), tuple(a.nfs)) == (b.ingress, egress_places(b), tuple(b.nfs))


class _Solver:
    """Mutable placement state with numpy arrays over hosts, ordered by
    switch so hosts of one switch are contiguous (for np.minimum.reduceat)."""

    def __init__(self, topo, exclude_hosts=(), tick=pausing.no_pause, drained=()):
        self.topo = topo
        self.tick = tick        # called per chain adopted, routed or weighed (pausing.every)
        self.graph = fabric.build_graph(topo)
        self.excluded = set(exclude_hosts)
        # Drained hosts take no instance and keep none, but unlike excluded
        # ones they are alive: their draining instances stay reserved.
        self.drained = set(drained)
        self.table = fabric.DistanceTable(self.graph, places_of(topo))
        rows = self.table.row
        order = sorted(range(len(topo.hosts)),
                       key=lambda i: (rows[topo.hosts[i].switch], i))
        self.hosts = [topo.hosts[i] for i in order]
        self.hidx = {h.name: i for i, h in enumerate(self.hosts)}
        hrows = sorted({rows[h.switch] for h in self.hosts})
        local = {r: i for i, r in enumerate(hrows)}
        self.hrows = np.array(hrows, dtype=int)
        self.hsw = np.array([local[rows[h.switch]] for h in self.hosts], dtype=int)
        self.starts = np.array([i for i in range(len(self.hosts))
                                if i == 0 or self.hsw[i] != self.hsw[i - 1]], dtype=int)
        self.ends = np.append(self.starts[1:], len(self.hosts))
        sw = self.table.matrix()
        # Two different hosts: switch distance plus both host cables.
        self.d_hosts = sw[np.ix_(self.hrows, self.hrows)] + 2.0
        self.cores = np.array([h.cores for h in self.hosts], dtype=float)
        self.free = self.cores.copy()
        self.allowed = np.array([h.name not in self.excluded and h.name not in self.drained
                                 for h in self.hosts])
        self.instances: Dict[Tuple[str, int], Instance] = {}
        self.by_type_host: Dict[Tuple[str, int], List[Tuple[str, int]]] = {}
        self.best_spare = {t: np.zeros(len(self.hosts)) for t in topo.nfs}
        self.assign: Dict[str, List[Dict[Tuple[str, int], float]]] = {}
        self.remaining: Dict[str, List[float]] = {}
        self._vec_cache: Dict[str, np.ndarray] = {}
        self.chain_by_name = {c.name: c for c in topo.chains}
        self.draining: Dict[Tuple[str, int], Instance] = {}

    def reserve(self, draining):
        """Instances draining (Placement.draining) keep their cores and ids
        on hosts still in use; those of excluded or unknown hosts are gone."""
        for key, inst in sorted(draining.items()):
            h = self.hidx.get(inst.host)
            if h is None or inst.host in self.excluded or inst.nf not in self.topo.nfs:
                continue
            self.draining[key] = inst
            self.free[h] -= self.topo.nfs[inst.nf].cores

    # -- instances and assignments

    def _refresh_spare(self, nf, h):
        keys = self.by_type_host.get((nf, h), ())
        mpps = self.topo.nfs[nf].mpps
        self.best_spare[nf][h] = max((mpps - self.instances[k].load for k in keys),
                                     default=0.0)

    def _new_instance(self, nf, h, ident=None):
        host = self.hosts[h].name
        if ident is None:
            taken = {k[1] for (t, hh), keys in self.by_type_host.items() if hh == h
                     for k in keys} | {i for (hh, i) in self.draining if hh == host}
            ident = next(i for i in range(1, MAX_ID + 1) if i not in taken)
        inst = Instance(host, ident, nf)
        self.instances[inst.key] = inst
        self.by_type_host.setdefault((nf, h), []).append(inst.key)
        self.free[h] -= self.topo.nfs[nf].cores
        self._refresh_spare(nf, h)
        return inst

    def _drop_instance(self, inst):
        h = self.hidx[inst.host]
        del self.instances[inst.key]
        self.by_type_host[(inst.nf, h)].remove(inst.key)
        self.free[h] += self.topo.nfs[inst.nf].cores
        self._refresh_spare(inst.nf, h)

    def _use(self, inst, chain, j, q):
        users = inst.users
        users[(chain.name, j)] = users.get((chain.name, j), 0.0) + q
        hop = self.assign[chain.name][j]
        hop[inst.key] = hop.get(inst.key, 0.0) + q
        self.remaining[chain.name][j] -= q
        self._refresh_spare(inst.nf, self.hidx[inst.host])

    def _unassign_chain(self, chain):
        """Take a chain off its instances; drop instances left unused.
        Returns what is needed to put it back exactly (`_restore`)."""
        dropped = []
        for j, hop in enumerate(self.assign.get(chain.name, [])):
            for key in hop:
                inst = self.instances[key]
                inst.users.pop((chain.name, j), None)
                if not inst.users:
                    dropped.append((inst.nf, inst.host, inst.id))
                    self._drop_instance(inst)
                else:
                    self._refresh_spare(inst.nf, self.hidx[inst.host])
        old = self.assign.get(chain.name)
        self.assign[chain.name] = [dict() for _ in chain.nfs]
        self.remaining[chain.name] = [chain.mpps] * len(chain.nfs)
        return old, dropped

    def _restore(self, chains, saved):
        """Undo: put `chains` back exactly as `saved` (from _unassign_chain,
        in the same order) had them, with the same instance ids."""
        for chain in chains:
            self._unassign_chain(chain)
        for _, dropped in saved:
            for nf, host, ident in dropped:
                self._new_instance(nf, self.hidx[host], ident)
        for chain, (old, _) in zip(chains, saved):
            for j, hop in enumerate(old):
                for key, q in hop.items():
                    self._use(self.instances[key], chain, j, q)

    def load_previous(self, previous, chains):
        """Adopt instances and assignments of `previous` that survive."""
        old_chains = {c.name: c for c in previous.topo.chains}
        for key, inst in sorted(previous.instances.items()):
            if inst.host in self.hidx and inst.host not in self.excluded \
                    and inst.host not in self.drained \
                    and inst.nf in self.topo.nfs:
                self._new_instance(inst.nf, self.hidx[inst.host], inst.id)
        kept = {}
        for chain in chains:
            self.tick()
            old = old_chains.get(chain.name)
            self.assign[chain.name] = [dict() for _ in chain.nfs]
            self.remaining[chain.name] = [chain.mpps] * len(chain.nfs)
            if old is None or not _same_route(old, chain):
                continue
            scale = chain.mpps / old.mpps
            for j, hop in enumerate(previous.hops[chain.name]):
                for key, share in hop:
                    if key in self.instances:
                        self._use(self.instances[key], chain, j, share * chain.mpps)
            kept[chain.name] = scale
        for key in [k for k, i in self.instances.items() if not i.users]:
            self._drop_instance(self.instances[key])
        for chain in chains:
            if chain.name in kept and kept[chain.name] < 1 and chain.autoscale is not None:
                self._scale_in(chain)       # autoscaled: fewer instances (otherwise kept)
        for chain in chains:
            # A rate rise the kept instances cannot carry: re-place the chain.
            if chain.name in kept and any(
                    self.topo.nfs[self.instances[k].nf].mpps < self.instances[k].load - TOL
                    for hop in self.assign[chain.name] for k in hop):
                log.debug("chain %s: rate %.3f Mpps no longer fits its instances; "
                          "re-placing the chain", chain.name, chain.mpps)
                self._unassign_chain(chain)
        return {c.name for c in chains if c.name not in kept}

    def _scale_in(self, chain):
        """A chain's rate fell: at each hop with more instances than its
        rate needs, the instances that serve only this hop and carry the
        least give their share to the others (which have the room), and
        go; the rest of their flows' instances stay as they are."""
        for j, hop in enumerate(self.assign[chain.name]):
            cap = self.topo.nfs[chain.nfs[j]].mpps
            need = max(1, math.ceil(chain.mpps / cap - 1e-9))
            own = sorted((q, k) for k, q in hop.items()
                         if set(self.instances[k].users) == {(chain.name, j)})
            while len(hop) > need and own:
                q, key = own.pop(0)
                rest = [k for k in hop if k != key]
                room = {k: cap - self.instances[k].load for k in rest}
                if sum(max(0.0, r) for r in room.values()) < q - TOL:
                    break
                victim = self.instances[key]
                self._unuse(victim, chain, j, q)
                for k in rest:
                    part = q * max(0.0, room[k]) / sum(max(0.0, r) for r in room.values())
                    if part > 0:
                        self._use(self.instances[k], chain, j, part)
                log.info("chain %s: rate %.3g Mpps needs %d %s instance(s) at hop %d: "
                         "%s#%d on %s goes", chain.name, chain.mpps, need, chain.nfs[j],
                         j + 1, victim.nf, victim.id, victim.host)

    # -- distances as vectors over hosts

    def _place_vec(self, place):
        """d(place, host) for every host, as an array."""
        vec = self._vec_cache.get(place)
        if vec is None:
            row = self.table.row[self.table.switch[place]]
            sw = self.table.matrix()[row, self.hrows]
            vec = sw[self.hsw] + self.table.end[place] + 1.0
            if place in self.hidx:
                vec = vec.copy()
                vec[self.hidx[place]] = 0.0
            self._vec_cache[place] = vec
        return vec

    def _dist_vec(self, dist):
        total = sum(dist.values())
        return sum(self._place_vec(p) * (w / total) for p, w in dist.items())

    def _hop_dist(self, chain, j):
        """{place: weight} of hop j, or of the ingress/egress beyond the ends."""
        if j < 0:
            return {chain.ingress: 1.0}
        if j >= len(chain.nfs):
            return egress_places(chain)
        out: Dict[str, float] = {}
        for (host, _), q in self.assign[chain.name][j].items():
            out[host] = out.get(host, 0.0) + q
        return out

    # -- one strand

    def _candidates(self, chain, j, q, banned=()):
        """Mask of hosts that can take q of hop j, and tie-break penalties."""
        nf = self.topo.nfs[chain.nfs[j]]
        share = self.best_spare[nf.name] >= q - TOL
        new = (self.free >= nf.cores) & (nf.mpps >= q - TOL)
        for key in self.assign[chain.name][j]:
            h = self.hidx[key[0]]
            # This hop already has an instance here: only that one may grow.
            spare = nf.mpps - self.instances[key].load
            share[h] = spare >= q - TOL
            new[h] = False
        mask = (share | new) & self.allowed
        for bj, bh in banned:
            if bj == j:
                mask[bh] = False
        util = (self.cores - self.free) / np.maximum(self.cores, 1)
        pen = np.where(share, 0.5 * util, 1.0 + util + nf.cores / np.maximum(self.cores, 1))
        return mask, pen

    def _viterbi(self, chain, layers, q, src, sink, banned=()):
        """(cheapest host per layer, its cost) for a strand of rate q, or
        None.  `banned`: (layer, host index) pairs not to use."""
        eps = q * 1e-4 / (len(layers) + 1)
        mask, pen = self._candidates(chain, layers[0], q, banned)
        v = np.where(mask, q * self._dist_vec(src) + eps * pen, np.inf)
        history = []
        for j in layers[1:]:
            best_sw = np.minimum.reduceat(v, self.starts)
            through = (best_sw[:, None] + q * self.d_hosts).min(axis=0)
            history.append((v, best_sw))
            mask, pen = self._candidates(chain, j, q, banned)
            v = np.where(mask, np.minimum(v, through[self.hsw]) + eps * pen, np.inf)
        end = v + q * self._dist_vec(sink)
        h = int(np.argmin(end))
        total = float(end[h])
        if not np.isfinite(total):
            return None
        path = [h]
        for v_prev, best_sw in reversed(history):
            col = best_sw + q * self.d_hosts[:, self.hsw[h]]
            s = int(np.argmin(col))
            if v_prev[h] > col[s]:
                lo, hi = self.starts[s], self.ends[s]
                h = lo + int(np.argmin(v_prev[lo:hi]))
            path.append(h)
        return path[::-1], total

    def _take(self, chain, j, h, q):
        """Give q of hop j to host h: grow this hop's instance there, or the
        tightest-fitting instance of the NF there, or a new one."""
        nf = self.topo.nfs[chain.nfs[j]]
        host = self.hosts[h].name
        mine = [k for k in self.assign[chain.name][j] if k[0] == host]
        if mine:
            inst = self.instances[mine[0]]
            if nf.mpps - inst.load < q - TOL:
                return None
            self._use(inst, chain, j, q)
            return inst
        fits = [self.instances[k] for k in self.by_type_host.get((nf.name, h), ())
                if nf.mpps - self.instances[k].load >= q - TOL]
        if fits:
            inst = min(fits, key=lambda i: (nf.mpps - i.load, i.id))
            log.debug("chain %s hop %d (%s): tries sharing %s#%d (%.3f Mpps spare)",
                     chain.name, j + 1, nf.name, host, inst.id, nf.mpps - inst.load)
        elif self.free[h] >= nf.cores and nf.mpps >= q - TOL:
            inst = self._new_instance(nf.name, h)
            log.debug("chain %s hop %d (%s): tries a new instance %s#%d (%d of %d "
                      "cores free before)", chain.name, j + 1, nf.name, host, inst.id,
                      self.free[h] + nf.cores, self.cores[h])
        else:
            return None
        self._use(inst, chain, j, q)
        return inst

    def _unuse(self, inst, chain, j, q):
        """Undo `_use`; an instance left with no user goes away."""
        users = inst.users
        users[(chain.name, j)] -= q
        if users[(chain.name, j)] <= TOL:
            del users[(chain.name, j)]
        hop = self.assign[chain.name][j]
        hop[inst.key] -= q
        if hop[inst.key] <= TOL:
            del hop[inst.key]
        self.remaining[chain.name][j] += q
        if not users:
            self._drop_instance(inst)
        else:
            self._refresh_spare(inst.nf, self.hidx[inst.host])

    def _commit(self, chain, layers, path, q):
        """Take the path's hosts layer by layer.  Returns None, or the
        (layer, host) that could not take q because an earlier layer of the
        same strand used what it counted on (e.g. the last free cores); the
        strand is then undone."""
        taken = []
        for j, h in zip(layers, path):
            inst = self._take(chain, j, h, q)
            if inst is None:
                for inst_, j_ in reversed(taken):
                    self._unuse(inst_, chain, j_, q)
                return (j, h)
            taken.append((inst, j))
        return None

    def _strand(self, chain, layers, q, src, sink):
        """Route and commit one strand; False if no route exists.

        Viterbi judges each layer alone, so two layers may count on the same
        last cores of a host.  Such a conflict bans either the later layer
        or one of the earlier ones on that host, and the strand is routed
        again: best-first over ban sets (more bans never cost less), so the
        first conflict-free path found is the cheapest one."""
        heap, seen, tried = [], set(), 0
        first = self._viterbi(chain, layers, q, src, sink, ())
        if first is None:
            return False
        heapq.heappush(heap, (first[1], 0, (), first[0]))
        while heap and tried < MAX_BAN_TRIES:
            _, _, banned, path = heapq.heappop(heap)
            tried += 1
            conflict = self._commit(chain, layers, path, q)
            if conflict is None:
                return True
            j, h = conflict
            pos = layers.index(j)
            culprits = [(jj, h) for jj, hh in zip(layers[:pos], path[:pos]) if hh == h]
            for ban in [(j, h)] + culprits:
                more = tuple(sorted(set(banned) | {ban}))
                if more in seen:
                    continue
                seen.add(more)
                found = self._viterbi(chain, layers, q, src, sink, more)
                if found is not None:
                    heapq.heappush(heap, (found[1], len(seen), more, found[0]))
        if not heap:
            return False
        return self._strand_greedy(chain, layers, q, src, sink)

    def _strand_greedy(self, chain, layers, q, src, sink):
        """Fallback when many hosts have a core or two to spare: keep the
        layers that fit and route the rest on from the last one taken."""
        found = self._viterbi(chain, layers, q, src, sink, ())
        if found is None:
            return False
        path = found[0]
        taken = []
        for pos, (j, h) in enumerate(zip(layers, path)):
            inst = self._take(chain, j, h, q)
            if inst is not None:
                taken.append((inst, j))
                continue
            if pos and self._strand_greedy(chain, layers[pos:], q,
                                   {self.hosts[path[pos - 1]].name: 1.0}, sink):
                return True
            for inst_, j_ in reversed(taken):
                self._unuse(inst_, chain, j_, q)
            return False
        return True

    def _max_q(self, chain, j):
        nf = self.topo.nfs[chain.nfs[j]]
        mask, _ = self._candidates(chain, j, TOL)
        spare = np.where(mask, self.best_spare[nf.name], 0.0)
        for key in self.assign[chain.name][j]:
            h = self.hidx[key[0]]
            spare[h] = nf.mpps - self.instances[key].load if self.allowed[h] else 0.0
        best = float(spare.max()) if len(spare) else 0.0
        if ((self.free >= nf.cores) & self.allowed).any():
            best = max(best, nf.mpps)
        return best

    def _error(self, chain, layers):
        short = [j for j in layers if self._max_q(chain, j) < TOL]
        if not short:
            return PlacementError(
                f"chain {chain.name!r}: no host with capacity for "
                f"{', '.join(chain.nfs[j] for j in layers)} is reachable from "
                f"ingress {chain.ingress!r} and egress {chain.egress!r}")
        j = short[0]
        nf = self.topo.nfs[chain.nfs[j]]
        left = self.remaining[chain.name][j]
        need = sum(math.ceil(self.remaining[chain.name][i] / self.topo.nfs[chain.nfs[i]].mpps
                             - 1e-9) * self.topo.nfs[chain.nfs[i]].cores for i in layers)
        free = int(self.free[self.allowed].clip(min=0).sum())
        why = (f"short by {need - free} cores (needs {need}, {free} free)"
               if need > free else
               f"{free} cores are free but no host has {nf.cores} free")
        return PlacementError(
            f"chain {chain.name!r} hop {j + 1} ({nf.name}): {left:.3f} Mpps "
            f"unplaced; no {nf.name} instance has spare capacity and {why}")

    # -- chains

    def route_missing(self, chain):
        """Place whatever of `chain` is not placed yet, strand by strand."""
        self.tick()
        rem = self.remaining[chain.name]
        while True:
            todo = [j for j, r in enumerate(rem) if r > TOL]
            if not todo:
                return
            run = [todo[0]]
            while run[-1] + 1 in todo:
                run.append(run[-1] + 1)
            q = min(min(rem[j] for j in run),
                    min(self.topo.nfs[chain.nfs[j]].mpps for j in run))
            src, sink = self._hop_dist(chain, run[0] - 1), self._hop_dist(chain, run[-1] + 1)
            if self._strand(chain, run, q, src, sink):
                continue
            # No host takes a whole strand of q: place what the scarcest
            # layer can still take, and go round again for the rest.
            q = min(q, min(self._max_q(chain, j) for j in run))
            if q < TOL or not self._strand(chain, run, q, src, sink):
                raise self._error(chain, run)

    def chain_cost(self, chain):
        dists = [self._hop_dist(chain, j) for j in range(len(chain.nfs))]
        return chain_cost(chain, dists, self.table.d)

    def _ideal(self, chain):
        """d(ingress, h) + d(h, egress) for every host: a chain's cost per
        Mpps if all its NFs ran on h."""
        return self._place_vec(chain.ingress) + self._dist_vec(egress_places(chain))

    def _try_group(self, group):
        """Ruin and recreate: take `group` off, place it again in its order;
        keep the result only if the group's cost drops."""
        before = sum(self.chain_cost(c) for c in group)
        saved = [self._unassign_chain(c) for c in group]
        try:
            for chain in group:
                self.route_missing(chain)
            after = sum(self.chain_cost(c) for c in group)
        except PlacementError:
            after = math.inf
        if after < before - 1e-9 * max(1.0, before):
            log.debug("chains %s: re-placed together (%s first), cost %.3f -> %.3f",
                     ", ".join(c.name for c in group), group[0].name, before, after)
            return True
        self._restore(group, saved)
        return False

    def _victims(self, chain, hosts, movable):
        """Chains in `movable` (names) using the hosts, biggest first."""
        names = set()
        for h in hosts:
            for keys in (self.by_type_host.get((t, h), ()) for t in self.topo.nfs):
                for key in keys:
                    names.update(n for n, _ in self.instances[key].users)
        names.discard(chain.name)
        names &= movable
        return sorted((self.chain_by_name[n] for n in names),
                      key=lambda c: (-c.mpps, c.spi))

    def improve(self, chains):
        """Local search.  For each chain that pays more than it would on its
        ideal host, clear the few hosts nearest its ideal (by distance level)
        of the chains using them, place this chain first and the others after;
        keep it if the total cost drops.  A bounded number of passes, so the
        result does not depend on the machine's speed."""
        passes = IMPROVE_WORK // max(1, len(chains) * len(self.hosts))
        movable = {c.name for c in chains}
        for _ in range(min(passes, 4)):
            better = 0
            for chain in self._by_excess(chains):
                ideal = self._ideal(chain)
                best = ideal[self.allowed].min()
                for level in (0.0, 2.0):
                    hosts = [int(h) for h in np.flatnonzero(
                        (ideal <= best + level) & self.allowed)][:4]
                    if self._try_group([chain] + self._victims(chain, hosts, movable)):
                        better += 1
                        break
            if not better:
                break

    def _by_excess(self, chains):
        """Chains paying more than their ideal-host cost, worst first."""
        out = []
        for chain in chains:
            self.tick()
            ideal = self._ideal(chain)[self.allowed].min() * chain.mpps
            excess = self.chain_cost(chain) - ideal
            if excess > 1e-9:
                out.append((-excess, chain.spi, chain))
        return [c for _, _, c in sorted(out, key=lambda t: t[:2])]

    def result(self):
        hops = {}
        for chain in self.topo.chains:
            per_hop = []
            for hop in self.assign[chain.name]:
                total = sum(hop.values())
                per_hop.append([(key, q / total) for key, q in sorted(hop.items())])
            hops[chain.name] = per_hop
        return Placement(self.topo, dict(sorted(self.instances.items())), hops,
                         self.draining)


def place(topo, previous=None, exclude_hosts=(), say=True, pause=None, drained=()):
    """Place every chain of `topo`; returns a Placement or raises
    PlacementError.

    With `previous` (a Placement), instances on hosts still present and not
    in `exclude_hosts` stay where they are with their ids, and unchanged
    chains keep their assignments; only lost shares and new or changed
    chains are placed; its draining instances (Placement.draining) keep
    their cores and ids and pass on to the result.  The outcome is logged once (`say_placed`); the
    search's trial steps only at DEBUG.  `say=False` for a trial (checking
    a request): nothing is logged at INFO.  `pause` is called every few
    chains (controller.pausing), so a controller can yield while it places.
    `drained`: hosts that keep no instance and get none, though alive: what
    they ran is placed elsewhere (the caller drains the old instances).
    """
    solver = _Solver(topo, exclude_hosts, pausing.every(pausing.PLACE_CHAINS, pause),
                     drained)
    chains = list(topo.chains)
    for chain in chains:
        for place_ in (chain.ingress, *egress_places(chain)):
            if place_ not in solver.table.row and place_ not in solver.table.switch:
                raise PlacementError(f"chain {chain.name!r}: {place_!r} is not in "
                                     f"topology {topo.name!r}")
    if previous is not None:
        solver.reserve(previous.draining)
        fresh = solver.load_previous(previous, chains)
    else:
        fresh = {c.name for c in chains}
        for chain in chains:
            solver.assign[chain.name] = [dict() for _ in chain.nfs]
            solver.remaining[chain.name] = [chain.mpps] * len(chain.nfs)
    order = sorted(chains, key=lambda c: (-c.mpps, c.spi))
    for chain in order:
        solver.route_missing(chain)
    solver.improve([c for c in order if c.name in fresh])
    result = solver.result()
    if say:
        say_placed(result, previous)
    return result


def say_placed(placement, previous=None):
    """Log, one line per chain, where the chains that `placement` places
    differently from `previous` (all, without it) run now; returns the lines
    (none when INFO is not logged: the cost is not computed for nobody)."""
    if not log.isEnabledFor(logging.INFO):
        return []
    lines = []
    for chain in placement.topo.chains:
        hops = placement.hops[chain.name]
        if previous is not None and previous.hops.get(chain.name) == hops:
            continue
        where = "; ".join(
            f"{nf} on " + ", ".join(f"{h}#{i}" + ("" if len(hop) == 1 else f" {q:.0%}")
                                    for (h, i), q in hop)
            for nf, hop in zip(chain.nfs, hops))
        lines.append(f"chain {chain.name} ({chain.mpps:g} Mpps): {where}")
    if lines:
        lines.append(f"placement cost {cost(placement.topo, placement):.3f} traffic "
                     f"hops (Mpps x links)")
    for line in lines:
        log.info("%s", line)
    return lines


def place_what_fits(topo, chains, previous=None, exclude_hosts=(), unplaced=None,
                    pause=None, drained=()):
    """Place `chains` on `topo`'s hosts: all of them if they fit, else chain
    by chain, keeping those that fit.  Returns (placement or None, placed
    chains, {name: reason} of the chains left out).

    `unplaced` ({name: reason} the caller got last time) only shapes the
    log: a chain placed now that was left out before is logged as such, so
    a person sees the cluster catch up when hosts come or chains change.
    Callers run this again on every host or chain change; nothing here
    remembers a refusal.  `pause` and `drained` as for `place`."""
    unplaced = unplaced or {}
    try:
        result = place(topo.with_chains(chains), previous=previous,
                       exclude_hosts=exclude_hosts, say=False, pause=pause,
                       drained=drained) if chains else None
        kept, refused = list(chains), {}
    except PlacementError as err:
        log.warning("cannot place all %d chains (%s); placing them one by one",
                    len(chains), err)
        kept, refused, result = [], {}, None
        for chain in chains:
            try:
                result = place(topo.with_chains(kept + [chain]), previous=previous,
                               exclude_hosts=exclude_hosts, say=False, pause=pause,
                               drained=drained)
                kept.append(chain)
            except PlacementError as why:
                refused[chain.name] = str(why)
                if unplaced.get(chain.name) != str(why):
                    log.warning("chain %s not placed: %s", chain.name, why)
    for chain in kept:
        if chain.name in unplaced:
            log.info("chain %s placed now (it was not: %s)", chain.name,
                     unplaced[chain.name])
    if result is not None:
        say_placed(result, previous)
    return result, kept, refused


def replace_after_host_loss(topo, placement, lost_host, pause=None):
    """Re-place what `lost_host` ran; every other instance stays put."""
    log.info("host %s lost: re-placing the %d instances it ran", lost_host,
             sum(1 for i in placement.instances.values() if i.host == lost_host))
    return place(topo, previous=placement, exclude_hosts=(lost_host,), pause=pause)


def move_instance(topo, placement, host, instance_id, to_host, say=True):
    """A new Placement in which instance `instance_id` of `host` runs on
    `to_host` instead: same NF type, the same chain hops and shares, a new
    id (the lowest free one on `to_host`); every other instance stays as it
    is.  `placement` is not changed.  Raises PlacementError, naming what is
    wrong, when there is no such instance, `to_host` is not a host of `topo`
    or is `host`, lacks the cores, or already serves one of the instance's
    chain hops (a hop has at most one instance a host).  `say=False` for a
    trial (checking a request): the move is then not logged."""
    old = placement.instances.get((host, instance_id))
    if old is None:
        raise PlacementError(f"host {host} runs no instance {instance_id}")
    if to_host == host:
        raise PlacementError(f"{old.nf}#{instance_id} already runs on {host}")
    try:
        room = topo.host(to_host).cores - placement.cores_used().get(to_host, 0)
    except KeyError:
        raise PlacementError(f"{to_host} is not a host of topology {topo.name}") from None
    need = topo.nfs[old.nf].cores
    if room < need:
        raise PlacementError(f"{to_host} has {room} free cores; {old.nf} needs {need}")
    served = {(h, ident) for (chain, j) in old.users
              for (h, ident), _ in placement.hops[chain][j]}
    clash = sorted(key for key in served if key[0] == to_host)
    if clash:
        raise PlacementError(f"{to_host} already serves a hop of {old.nf}#{instance_id} "
                             f"with instance {clash[0][1]}")
    taken = {ident for (h, ident) in list(placement.instances) + list(placement.draining)
             if h == to_host}
    new_id = next(i for i in range(1, MAX_ID + 1) if i not in taken)
    moved = Instance(to_host, new_id, old.nf, dict(old.users))
    instances = {k: dataclasses.replace(v, users=dict(v.users))
                 for k, v in placement.instances.items() if k != old.key}
    instances[moved.key] = moved
    hops = {chain: [sorted(((moved.key if key == old.key else key), share)
                           for key, share in hop) for hop in per_hop]
            for chain, per_hop in placement.hops.items()}
    result = Placement(placement.topo, dict(sorted(instances.items())), hops,
                       placement.draining)
    if not say:
        return result
    used = result.cores_used()
    log.info("moving %s#%d from %s to %s, where it runs as %s#%d: it serves %s "
             "with the same shares; %s now uses %d of %d cores, %s %d of %d",
             old.nf, instance_id, host, to_host, old.nf, new_id,
             ", ".join(f"chain {c} hop {j + 1} ({q:.3f} Mpps)"
                       for (c, j), q in sorted(old.users.items())) or "no chain",
             to_host, used[to_host], topo.host(to_host).cores,
             host, used.get(host, 0), topo.host(host).cores)
    return result


# --- onvm place ---------------------------------------------------------------

def describe(placement, solve_ms):
    """The plan as text for people."""
    topo = placement.topo
    lines = []
    for chain in topo.chains:
        lines.append(f"chain {chain.name} (SPI {chain.spi}, {chain.mpps:g} Mpps): "
                     f"{chain.ingress} -> ... -> {chain.egress}")
        for j, nf in enumerate(chain.nfs):
            where = ", ".join(f"{host}#{ident} {share:.0%}"
                              for (host, ident), share in placement.hops[chain.name][j])
            lines.append(f"  {j + 1}. {nf:<10} {where}")
    lines.append("hosts (cores used / cores):")
    used = placement.cores_used()
    for host in topo.hosts:
        if used[host.name]:
            lines.append(f"  {host.name:<10} {used[host.name]}/{host.cores}")
    lines.append(f"cost: {cost(topo, placement):.3f} traffic hops (Mpps x links)")
    lines.append(f"solved in {solve_ms:.1f} ms")
    return "\n".join(lines)


def cli_place(args):
    """`onvm place --topology FILE [--json]`."""
    import json

    from controller.topology import TopologyError, load_topology
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(name)s: %(message)s")
    try:
        topo = load_topology(args.topology)
    except TopologyError as err:
        print(err, file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        placement = place(topo)
    except PlacementError as err:
        print(f"{args.topology}: {err}", file=sys.stderr)
        return 1
    solve_ms = (time.perf_counter() - start) * 1000
    if args.json:
        print(json.dumps(placement.to_json(solve_ms), indent=2))
    else:
        print(describe(placement, solve_ms))
    return 0
