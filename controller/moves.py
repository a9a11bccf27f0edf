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
snapshot within `timeout` seconds gets the same (logged).

Draining (`Drains`) closes the race of flows that start between A's
snapshot and the switch to B: the old instance is not stopped at the
switch but drains, for `drain_seconds` or until the flow count its agent
reports is 0: it stays in A's plan ("draining": true) and in every hop
that named it with weight 0, so the flows pinned to it (those that opened
after the snapshot included) finish on it, and new flows go to B.  A nat
hands over no snapshot (a mapping's port is in A's slice, which B does not
own): B takes a free slice and A keeps its own until it goes.  Instances
that a re-placement takes away (scale-in, a chain re-placed) drain the
same way; those of a lost host do not (nothing runs there).

Not here: plans (controller.plans writes draining instances with weight
0), slices (controller.natslices), the fast path (a weight-0 peer gets no
hash slot, host_agent.tables; pins keep their host while it is listed).

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
DRAIN_SECONDS = 30.0    # how long an instance moved away or scaled in drains at most
MIN_DRAIN_SECONDS = 2.0  # a flow count of 0 ends a drain only after this (fresh stats)
DRAINED_NFS = frozenset(("firewall-stateful", "ids", "lb", "nat"))  # their flows have state
# An instance of another NF (no flow state) that goes still runs this long,
# listed by no hop before it (controller.plans: a draining instance of an NF
# without flow state is "retiring"), so that what was in flight toward it
# when the hosts before it took their new plans still finds it.
RETIRE_SECONDS = 2.0
NO_HANDOVER = frozenset(("nat",))   # their snapshot cannot serve the successor's slice
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

    def __init__(self, store, clock=time.monotonic, timeout=MOVE_TIMEOUT,
                 drain_seconds=DRAIN_SECONDS):
        self.store = store
        self.clock = clock
        self.timeout = timeout
        self.drain_seconds = drain_seconds
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
        for (host, iid), move in self.pending.items():
            if self._hands_none(move):
                continue
            inst = plan_instance(plans.get(host), iid)
            if inst is not None:
                inst["export"] = True
        for (host, iid), landing in list(self.landing.items()):
            inst = plan_instance(plans.get(host), iid)
            if inst is None or self._landed(host, iid, landing):
                del self.landing[(host, iid)]       # landed, or gone with its host
            else:
                inst["state"] = landing[0]
        return plans

    def _landed(self, host, iid, landing):
        """True once `host` applied a plan that gave instance `iid` its state."""
        done = applied_carrying(self.store, host, iid, "state", landing)
        if done:
            log.info("%s applied plan generation %d: instance %d runs with its moved "
                     "state; later plans leave the state out", host, landing[1], iid)
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
            if not self._hands_none(move):
                self.landing[new_key] = [state, None]
            self.handed[key] = new_key
            placement = moved
        return placement

    def _hands_none(self, move):
        """True for a move whose old instance drains with all its flows and
        gives its successor no snapshot (NO_HANDOVER)."""
        return move.nf in NO_HANDOVER and self.drain_seconds > 0

    def _snapshot(self, move):
        """A's snapshot for `move` (None: its NF has none), or _NO_STATE
        while it is not there yet."""
        if self._hands_none(move):
            log.info("move of %s#%d from %s to %s: no snapshot (its mappings use "
                     "ports of its own slice); it drains on %s with its flows, %s "
                     "starts with a free slice", move.nf, move.instance, move.host,
                     move.to, move.host, move.to)
            return None
        plan = self.store.get_plan(move.host)
        inst = plan_instance(plan, move.instance)
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


def applied_carrying(store, host, iid, field, record):
    """True once `host` applied a plan whose instance `iid` carried `field`
    (a moved state, an adoption).  `record[1]` keeps the generation of the
    first stored plan seen carrying it (None until then)."""
    if record[1] is None:
        stored = store.get_plan(host)
        if field in (plan_instance(stored, iid) or {}):
            record[1] = stored["generation"]
    applied = store.get_applied(host)
    return record[1] is not None and applied is not None and applied >= record[1]


def plan_instance(plan, iid):
    for inst in (plan or {}).get("instances", ()):
        if inst.get("id") == iid:
            return inst
    return None


# --- draining ---------------------------------------------------------------

def flow_count(inst_stats):
    """The flows an instance's NF holds, from its agent's stats entry
    (instances[ID]: its "counters"), or None when its NF reports none:
    firewall-stateful "connections", lb and ids "flows", nat its mappings."""
    counters = (inst_stats or {}).get("counters") if isinstance(inst_stats, dict) else None
    if not isinstance(counters, dict):
        return None
    for name in ("connections", "flows"):
        if isinstance(counters.get(name), int):
            return counters[name]
    maps = [v.get("mappings") for v in counters.values() if isinstance(v, dict)]
    maps = [m for m in maps if isinstance(m, int)]
    return sum(maps) if maps else None


@dataclasses.dataclass
class Drain:
    inst: object            # placecost.Instance, its users as they were
    since: float
    until: float
    why: str                # "move nat#2 h3->h5" / "scale-in"

    def describe(self, now):
        return {"host": self.inst.host, "instance": self.inst.id, "nf": self.inst.nf,
                "why": self.why, "left_s": round(max(0.0, self.until - now), 1)}


class Drains:
    """The instances draining: which, since when, why.  Pure deciding code
    over Placements (their `draining`) and the agents' stats; the core
    calls `begin` after each re-placement and `due` at each step."""

    def __init__(self, seconds=DRAIN_SECONDS):
        self.seconds = seconds
        self.active = {}        # (host, id) -> Drain

    def begin(self, before, after, now, alive, stats, handed=None, drained=()):
        """`after` with the instances of `before` that it drops drained
        (those of stateful NFs on hosts in `alive`; `handed`: {old key:
        new key} of moves; `drained`: hosts an operator drained), and
        without drains that ended by themselves (their host lost).  Logs
        every decision."""
        handed = handed or {}
        draining = dict(after.draining)
        for key in sorted(set(self.active) - set(draining)):
            drain = self.active.pop(key)
            log.warning("%s#%d on %s stops draining (%s): its host is lost", drain.inst.nf,
                        key[1], key[0], drain.why)
        gone = sorted(set(before.instances if before else ()) - set(after.instances)
                      - set(draining))
        for key in gone:
            inst = before.instances[key]
            why = (f"move {inst.nf}#{key[1]} {key[0]}->{handed[key][0]}" if key in handed
                   else f"host {inst.host} drained" if inst.host in drained
                   else "scale-in")
            if inst.host not in alive:
                continue            # lost with its host: nothing runs there
            reason = ("draining is off" if self.seconds <= 0 else
                      None if any(c in after.hops for c, _ in inst.users) else
                      "no chain it served is placed any more")
            if reason:
                log.info("%s: %s#%d on %s stops now (%s)", why, inst.nf, key[1], key[0],
                         reason)
                continue
            draining[key] = inst
            if inst.nf not in DRAINED_NFS:
                retire = min(self.seconds, RETIRE_SECONDS)
                self.active[key] = Drain(inst, now, now + retire, why)
                log.info("%s: %s#%d on %s retires: %s holds no flow state, so no hop "
                         "sends it anything more, and it stops in %g s (what is in "
                         "flight toward it still finds it)", why, inst.nf, key[1], key[0],
                         inst.nf, retire)
                continue
            flows = flow_count(((stats.get(inst.host) or {}).get("instances") or {})
                               .get(str(key[1])))
            self.active[key] = Drain(inst, now, now + self.seconds, why)
            log.info("%s: draining %s#%d on %s for %g s, %s pinned flows; new flows go "
                     "to %s", why, inst.nf, key[1], key[0], self.seconds,
                     "?" if flows is None else flows,
                     f"{handed[key][0]}#{handed[key][1]}" if key in handed
                     else "the hop's other instances")
            self._warn_local(after, inst)
        return after.with_draining(draining)

    def take_over(self, placement, now):
        """A new leader's drains: those of `placement` (read back from the
        stored plans, controller.takeover), each timed from `now` as a new
        one would be (when the old leader began it is not stored); the
        drains this controller decided while standing by are dropped."""
        self.active = {}
        for key, inst in sorted((placement.draining if placement else {}).items()):
            left = self.seconds if inst.nf in DRAINED_NFS else min(self.seconds,
                                                                   RETIRE_SECONDS)
            self.active[key] = Drain(inst, now, now + left, "taken over from the stored plans")
            log.info("%s#%d on %s drains in the stored plans: it goes on draining for "
                     "%g s", inst.nf, key[1], key[0], left)

    @staticmethod
    def _warn_local(placement, inst):
        """A host that runs the hop before the draining one keeps handing it
        its new flows (a plan hop is local or remote, never both)."""
        for (chain, j) in sorted(inst.users):
            if j == 0 or chain not in placement.hops:
                continue
            if any(h == inst.host for (h, _), _ in placement.hops[chain][j - 1]):
                log.warning("chain %s: %s runs hop %d and the draining %s#%d of hop %d: "
                            "its new flows of that hop keep going to the draining "
                            "instance (local), so those still open when the drain ends "
                            "are cut", chain, inst.host, j, inst.nf, inst.id, j + 1)

    def due(self, now, stats):
        """{key: why} of the drains over: their time is up, or their agent
        reports no flow left (after MIN_DRAIN_SECONDS, so the stats are of
        the drain)."""
        out = {}
        for key, drain in sorted(self.active.items()):
            inst_stats = ((stats.get(key[0]) or {}).get("instances") or {}).get(str(key[1]))
            flows = flow_count(inst_stats)
            if now >= drain.until:
                out[key] = (f"after {now - drain.since:.0f} s, "
                            f"{'?' if flows is None else flows} flows left")
            elif flows == 0 and now - drain.since >= MIN_DRAIN_SECONDS:
                out[key] = f"no flow left after {now - drain.since:.1f} s"
        return out

    def end(self, placement, ended, slices=None):
        """`placement` without the drains `ended` ({key: why}); logs each."""
        draining = dict(placement.draining)
        for key, why in sorted(ended.items()):
            drain = self.active.pop(key, None)
            inst = draining.pop(key, None)
            if inst is None:
                continue
            slice_ = (slices or {}).get(key)
            log.info("%s: drain of %s#%d on %s over (%s): removed%s",
                     drain.why if drain else "drain", inst.nf, key[1], key[0], why,
                     "" if slice_ is None else f", port slice {slice_} free")
        return placement.with_draining(draining)

    def next_end(self):
        """The clock time the first drain is over at, or None."""
        return min((d.until for d in self.active.values()), default=None)

    def status(self, now):
        return [d.describe(now) for _, d in sorted(self.active.items())]
