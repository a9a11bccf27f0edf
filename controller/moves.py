"""Planned moves: one NF instance taken from host A to host B with its state
(the lb's flow -> backend map, the NAT table), so its flows go on.

    POST /onvm/v1/moves {"host": A, "instance": ID, "to": B}   (rest_api)
      -> Moves.request        checks, remembers the move
      -> Moves.mark           A's next plan marks the instance "export": true
    A's agent snapshots the NF (export_state()) and publishes the snapshot
    in /onvm/stats/A: instances[ID]["state"], ["state_generation"].
      -> Moves.land           once the snapshot of a plan that carried the
                              mark is there: the placement with the instance
                              on B (placement.move_instance)
      -> Moves.mark           B's plan gives the new instance "state"; A's
                              plan no longer has it; hops before it and the
                              ingress now point at B (controller.plans does
                              that from the placement)
    B's agent imports the state before its new tables carry packets.

The state rides in B's plan until B's agent has applied a plan that carried
it (/onvm/applied/B), then is left out again.  An NF without export_state()
publishes "state": null and moves without state; an A that publishes no
snapshot within `timeout` seconds gets the same (logged).  Flows that start
between A's snapshot and the switch to B are not carried.

Plain deciding code over the store and the placement: no Ryu, no
OpenFlow; the cluster core (controller.core) calls it (a `Moves` per
controller, clocked by the core's `now`) and writes what it returns.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

from controller.placement import PlacementError, move_instance

log = logging.getLogger("onvm.moves")

MOVE_TIMEOUT = 10.0     # seconds to wait for A's snapshot before moving without
_NO_STATE = object()


class MoveError(Exception):
    """A move we refuse: an HTTP status (400, 404, 409) and why."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass
class Move:
    host: str
    instance: int
    nf: str
    to: str
    asked: float                         # clock time of the request
    marked: Optional[int] = None         # first generation of A's plan with the mark

    def describe(self):
        return {"host": self.host, "instance": self.instance, "nf": self.nf,
                "to": self.to, "export_generation": self.marked}


def check_move(topo, placement, alive, host, instance_id, to):
    """The instance to move, or MoveError naming what is wrong.  `alive`:
    the hosts whose agents are registered."""
    names = {h.name for h in topo.hosts}
    for field, name in (("host", host), ("to", to)):
        if name not in names:
            raise MoveError(404, f"move.{field}: {name!r} is not a host of topology "
                                 f"{topo.name}")
    if host == to:
        raise MoveError(400, f"move.to: instance {instance_id} already runs on {host}")
    inst = placement.instances.get((host, instance_id)) if placement else None
    if inst is None:
        running = sorted(i for (h, i) in (placement.instances if placement else ()) if h == host)
        raise MoveError(404, f"move.instance: {host} runs no instance {instance_id} "
                             f"(it runs: {', '.join(map(str, running)) or 'none'})")
    for field, name in (("host", host), ("to", to)):
        if name not in alive:
            raise MoveError(409, f"move.{field}: {name} is not alive (no agent registered)")
    try:
        move_instance(topo, placement, host, instance_id, to, say=False)
    except PlacementError as err:
        raise MoveError(409, f"move.to: {err}") from None
    return inst


class Moves:
    """The controller's moves in progress; see the module docstring."""

    def __init__(self, store, clock=time.monotonic, timeout=MOVE_TIMEOUT):
        self.store = store
        self.clock = clock
        self.timeout = timeout
        self.pending = {}       # (host, instance id) -> Move
        self.landing = {}       # (to, new id) -> [state, generation of B's plan carrying it]
        self.handed = {}        # (A, old id) -> (B, new id) of the last `land`

    def request(self, topo, placement, alive, host, instance_id, to):
        """Check and remember a move; returns its description.  Nothing is
        written here: the next plans the caller writes carry the mark."""
        if (host, instance_id) in self.pending:
            raise MoveError(409, f"move: instance {instance_id} of {host} is moving "
                                 f"already (to {self.pending[(host, instance_id)].to})")
        if (host, instance_id) in self.landing:
            raise MoveError(409, f"move: instance {instance_id} of {host} has just "
                                 "moved there and has not taken its state yet")
        inst = check_move(topo, placement, alive, host, instance_id, to)
        move = Move(host, instance_id, inst.nf, to, self.clock())
        self.pending[(host, instance_id)] = move
        log.info("move asked: %s#%d from %s to %s; asking %s for a snapshot of its "
                 "state first", inst.nf, instance_id, host, to, host)
        return move.describe()

    def status(self):
        return {"moving": [m.describe() for _, m in sorted(self.pending.items())],
                "landing": [{"host": h, "instance": i}
                            for (h, i) in sorted(self.landing)]}

    # -- what the plans carry ------------------------------------------------
    def mark(self, plans):
        """Add to `plans` ({host: plan}, about to be written) the export
        marks of pending moves and the states of landed ones; returns them."""
        for (host, iid) in self.pending:
            inst = _instance(plans.get(host), iid)
            if inst is not None:
                inst["export"] = True
        for (host, iid), landing in list(self.landing.items()):
            inst = _instance(plans.get(host), iid)
            if inst is None or self._landed(host, iid, landing):
                del self.landing[(host, iid)]       # landed, or gone with its host
            else:
                inst["state"] = landing[0]
        return plans

    def _landed(self, host, iid, landing):
        """True once `host` applied a plan that gave instance `iid` its state."""
        if landing[1] is None:
            stored = self.store.get_plan(host)
            if "state" in (_instance(stored, iid) or {}):
                landing[1] = stored["generation"]
        applied = self.store.get_applied(host)
        done = landing[1] is not None and applied is not None and applied >= landing[1]
        if done:
            log.info("%s applied plan generation %d: instance %d runs with its moved "
                     "state; later plans leave the state out", host, applied, iid)
        return done

    # -- the switch ------------------------------------------------------------
    def land(self, topo, placement):
        """The placement with every move whose snapshot is in moved to its
        new host (or `placement` itself when none is ready); `handed` says
        which instance became which (what the old one owned passes on)."""
        self.handed = {}
        for key in sorted(self.pending):
            move = self.pending[key]
            state = self._snapshot(move)
            if state is _NO_STATE:
                continue
            del self.pending[key]
            try:
                moved = move_instance(topo, placement, move.host, move.instance, move.to)
            except PlacementError as err:
                log.warning("move of %s#%d from %s to %s given up: %s", move.nf,
                            move.instance, move.host, move.to, err)
                continue
            new_key, = set(moved.instances) - set(placement.instances)
            self.landing[new_key] = [state, None]
            self.handed[key] = new_key
            placement = moved
        return placement

    def _snapshot(self, move):
        """A's snapshot for `move` (None: its NF has none), or _NO_STATE
        while it is not there yet."""
        plan = self.store.get_plan(move.host)
        inst = _instance(plan, move.instance)
        if move.marked is None and inst is not None and inst.get("export"):
            move.marked = plan["generation"]
        waited = self.clock() - move.asked
        if move.marked is not None:
            stats = self.store.get_stats(move.host) or {}
            got = (stats.get("instances") or {}).get(str(move.instance)) or {}
            gen = got.get("state_generation")
            if "state" in got and isinstance(gen, int) and gen >= move.marked:
                self._log_snapshot(move, got["state"], gen, waited)
                return got["state"]
        if waited < self.timeout:
            return _NO_STATE
        log.warning("move of %s#%d from %s to %s: no snapshot from %s within %g s "
                    "(its agent did not publish one); moving without state: its "
                    "flows start anew", move.nf, move.instance, move.host, move.to,
                    move.host, self.timeout)
        return None

    @staticmethod
    def _log_snapshot(move, state, gen, waited):
        if state is None:
            log.warning("move of %s#%d from %s to %s: its NF exports no state; "
                        "moving without (its flows start anew)", move.nf,
                        move.instance, move.host, move.to)
        else:
            log.info("move of %s#%d from %s to %s: snapshot of plan generation %d "
                     "in after %.2f s; switching to %s", move.nf, move.instance,
                     move.host, move.to, gen, waited, move.to)


def _instance(plan, iid):
    for inst in (plan or {}).get("instances", ()):
        if inst.get("id") == iid:
            return inst
    return None
