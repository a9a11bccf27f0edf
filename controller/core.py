"""The cluster's deciding core: one plain object that takes what happens
(agents registering or lost, chains stored, stats, switches and ports
coming and going, move requests, leadership, the time) and returns what to
do about it (plans written, switch rules to bring about, and why, in the
log).  Faucet's valves_manager/valve habit: no Ryu, no eventlet, no clock
of its own (`now` is an argument), so tests drive it step by step with a
`memory://` store and a fake clock.

    core = ClusterCore(topology, store, leader=election)
    core.store_changed(key)                 # a watch saw /onvm/hosts/... change
    decisions = core.step(now, leading)     # re-place, write plans
    decisions.sync                          # {dpid: SwitchRules} to bring about
    diff = core.switch_diff(dpid, rules, flows_there, group_ids_there)
    core.switch_synced(dpid, rules, diff)   # after the barrier

Store I/O: the core takes the store object and writes plans itself,
rather than returning writes for the shell to perform.  A plan write is a
compare-and-set guarded by leadership whose answer (the generation, or
NotLeader) decides what happens next, and a move reads the store
(snapshots, applied generations) between decisions; returning writes
would cut every such step in two.  The store is already a plain object
with a `memory://` backend, so the core stays testable without a server.

It implements `controller.view.ClusterView`, the interface of the REST API.

Retired chains (deleted with their traffic held, controller.view): stored
under `/onvm/chains/<name>` with `"retired": true`, read back from the
store at every re-placement like any chain (so a restarted or newly
leading controller holds them too), never placed, but in `asked`: with no
placed NF, controller.flows gives each its chain_drop rule at its ingress.

Chains with an autoscale policy are placed at the rate their measured
load asks (controller.autoscale, decided when stats are); the instances of
a lost host are adopted by their replacements (controller.adoptions).
A controller that gains leadership starts from the placement the stored
plans run (controller.takeover), not from the one it made standing by.

Not here: Ryu events and OpenFlow messages (`controller.apps.chain_manager`,
`controller.ofmsgs`), placement (`controller.placement`), plans
(`controller.plans`), rules (`controller.flows`, `controller.livegraph`),
moves (`controller.moves`), scaling decisions (`controller.autoscale`),
heirs (`controller.adoptions`), the election itself (`contracts.store`).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Dict, List, NamedTuple, Optional

from contracts.model import Chain
from contracts.statsum import PUBLISH_S
from contracts.store import CHAINS, HOSTS, JOINED, STATS, NotLeader, StoreError
from controller import flows, joins, natslices, takeover
from controller.chains import Scope, chains_from_store, is_retired
from controller.livegraph import LiveFabric, describe
from controller.liveness import Liveness
from controller.adoptions import ALIAS_SECONDS, Adoptions
from controller.autoscale import Autoscaler
from controller.moves import DRAIN_SECONDS, Drains, MoveError, Moves
from controller.probing import PROBE_SRC_MAC
from controller.switchgrace import SwitchGrace
from controller.placement import PlacementError, move_instance, place, place_what_fits
from controller.plans import (ddos_seed_from, host_load, host_plans, ingress_groups,
                              nat_slices, new_ddos_seed)
from controller.view import ClusterView, chain_to_json

log = logging.getLogger("onvm.core")

STATS_REPLAN_SECONDS = 1.0     # stats while a move waits for its snapshot: re-place
STATS_DECIDE_SECONDS = PUBLISH_S  # else: re-weigh plans on the kept summaries, once a period
# A vanished host key is believed after this long, so that keys vanishing
# together (a store outage) are judged together (controller.liveness).
SETTLE_SECONDS = 1.0
UNREAD = object()       # store_changed without the value: read it
DIRTY_KINDS = ((HOSTS, "hosts"), (CHAINS, "chains"), (STATS, "stats"), (JOINED, "hosts"))


def _slices_text(slices):
    return ", ".join(f"{h}#{i}: {n}" for (h, i), n in sorted(slices.items()))


def same_plan(stored, plan):
    """Equal but for the generation: no need to write it again."""
    if stored is None:
        return False
    strip = lambda p: {k: v for k, v in p.items() if k != "generation"}
    return strip(stored) == strip(plan)


class SwitchDiff(NamedTuple):
    """What one switch lacks and holds too much: controller.flows diffs."""
    flows: flows.FlowDiff
    groups: flows.GroupDiff


@dataclasses.dataclass
class Decisions:
    """What one `step` decided.  Plans are already written (see the module
    docstring); `sync` is for the shell to bring about."""
    replaced: List[str] = dataclasses.field(default_factory=list)      # why it re-placed
    written: Dict[str, int] = dataclasses.field(default_factory=dict)  # host -> generation
    deleted: List[str] = dataclasses.field(default_factory=list)       # plans removed
    sync: Dict[int, flows.SwitchRules] = dataclasses.field(default_factory=dict)


class ClusterCore(ClusterView):
    """The cluster's state machine; see the module docstring."""

    def __init__(self, topology, store, leader=None, lldp=False, liveness=None,
                 drain_seconds=DRAIN_SECONDS, pps_per_mpps=1e6):
        """`leader`: the Election whose leadership guards plan writes (None:
        unguarded, for tests); `lldp`: switches also punt LLDP to the
        controller (ryu.topology observes links); `liveness`: the policy
        that decides which hosts are lost (controller.liveness.Liveness
        with its defaults when None); `drain_seconds`: how long an instance
        moved away or scaled in keeps serving its pinned flows (0: it stops
        at once; controller.moves.Drains); `pps_per_mpps`: packets a second
        the agents measure for a declared Mpps (10^6; the emulation's scale
        there), for controller.autoscale."""
        self.topo = topology
        self.store = store
        self.leader = leader
        self.lldp = lldp
        self.now = 0.0
        self.fabric = LiveFabric(topology)
        self.current = None             # the Placement in force, of self.placed
        self.placed = topology.with_chains([])
        self.asked = topology.with_chains([])  # every chain users asked for
        self.solve_ms = 0.0             # how long the last placement took
        self.alive = set()
        self.liveness = liveness if liveness is not None else Liveness(settle_s=SETTLE_SECONDS)
        self.held = {}                  # host -> why its vanished key is not believed
        self.drained = set()            # hosts an operator drained (drain_host)
        self.unplaced = {}              # chain name -> why it could not be placed
        self.stats_warned = set()       # (host, problem) of stats already logged
        self.dirty = {"hosts", "chains"}
        self.registered = {}            # {host: its /onvm/hosts/ body}, as last read
        self.joined_stale = True        # /onvm/joined/ to read again (changed, or never read)
        self.pending_joins = {}         # {host: mac} of unknown hosts waiting to join
        self.refused = {}               # host -> (body, why) of joins refused
        self.join_noted = set()         # what about joining was logged already
        self.mover = Moves(store, clock=lambda: self.now, drain_seconds=drain_seconds)
        self.drains = Drains(drain_seconds)
        self.adopter = Adoptions(store)  # heirs of a lost host's stateful instances
        self.autoscaler = Autoscaler(pps_per_mpps)   # chains' rates from measured load
        self.wanted = []                # the chains asked for, as declared
        self.fabric_cut = []            # hosts and edges no switch reaches
        self.grace = SwitchGrace((sw.name for sw in topology.switches),
                                 lambda host: self.topo.host(host).switch)
        self.excused = {}               # cut hosts not believed lost (switchgrace): why
        self.last_stats_replan = None
        self.stats_seen = None          # {host: stats summary}, from the watch after one read
        self.leading = False
        self.connected = set()          # dpids of the switches connected now
        self.programmed = {}            # dpid -> SwitchRules last handed out
        self._desired_cache = None
        self.desired = self._desired()
        self.names = {sw.dpid: sw.name for sw in topology.switches}
        self.known = frozenset(h.name for h in topology.hosts)
        self.scope = Scope.of(topology)
        self.nat_slices = {}            # (host, id) -> NAT port slice, kept (natslices)
        self.ddos_seed = None           # the ddos sketches' secret, kept (plans.ddos_seed_from)
        self.taking_over = False        # a new leader adopts the stored placement (controller.takeover)

    # ------------------------------------------------------------ inputs
    def store_changed(self, key, value=UNREAD):
        """A watched key changed (to `value`, None: deleted): mark what it
        touches for the next step; a host's stats summary is kept as is
        (read here when the watch did not pass it), decided on once a period."""
        if key.startswith(STATS) and self.stats_seen is not None:
            host = key[len(STATS):]
            if value is UNREAD:
                value = self.store.get_stats(host)
            if value is None:
                self.stats_seen.pop(host, None)
            else:
                self.stats_seen[host] = value
        if key.startswith(JOINED):
            self.joined_stale = True
        for prefix, what in DIRTY_KINDS:
            if key.startswith(prefix):
                self.dirty.add(what)

    def step(self, now, leading) -> Decisions:
        """Follow leadership, re-place when an input changed, write plans
        (leader only), and say which switches need their rules brought
        about.  Raises what the store raises; what was pending stays
        pending, so the next step does it again."""
        self.now = now
        out = Decisions()
        if leading and not self.leading:
            log.info("I lead now%s: writing plans and programming %d connected "
                     "switches", f" ({self.leader.name})" if self.leader else "",
                     len(self.connected))
            self.liveness.leadership_gained(now)
            self._seed_chains()
            stored = self.store.plans()
            self.nat_slices = natslices.from_plans(stored)
            self.ddos_seed = ddos_seed_from(stored)     # None: _write_plans draws one
            if self.nat_slices:
                log.info("NAT port slices read back from the stored plans: %s",
                         _slices_text(self.nat_slices))
            self.taking_over = True     # the stored placement, adopted at the re-placement below
            self.dirty |= {"hosts", "chains"}
            self.programmed.clear()
        elif self.leading and not leading:
            log.warning("I no longer lead: stop writing plans and programming "
                        "switches; standing by")
        self.leading = leading
        # A pending move waits for a snapshot and a drain for its flows to end:
        # both read the stats sooner and take the re-placing path.
        period = STATS_REPLAN_SECONDS if self.mover.pending or self.drains.active \
            else STATS_DECIDE_SECONDS
        due_stats = "stats" in self.dirty and (
            self.last_stats_replan is None or now - self.last_stats_replan >= period)
        if due_stats and self.stats_seen and self.autoscaler.decide(
                now, self.wanted, self.topo.nfs, self.current, self.stats_seen):
            self.dirty.add("chains")    # a chain scaled out or in: re-place it
        if self.drains.active and now >= self.drains.next_end():
            self.dirty.add("moves")     # a drain's time is up
        if self.held and self._judged_alive(self.liveness.decide(now)) != self.alive:
            self.dirty.add("hosts")     # a held host's time ran out, or it is back
        if self.excused and self.grace.excused(self.excused, now).keys() != self.excused.keys():
            self.dirty.add("hosts")     # a cut host's grace ran out (controller.switchgrace)
        if due_stats and not self.mover.pending and not self.drains.active \
                and not self.dirty & {"hosts", "chains", "moves"}:
            self.dirty.discard("stats")     # stats re-weigh plans; only a move re-places
            self.last_stats_replan = now
            if self.leading and self.current is not None:
                self._write_plans(out)
        elif self.dirty & {"hosts", "chains", "moves"} or due_stats:
            pending = set(self.dirty)
            self.dirty.clear()
            try:
                self._replace(sorted(pending), out)
            except StoreError:
                self.liveness.store_unreachable(now)
                self.dirty |= pending
                raise
            except Exception:
                self.dirty |= pending
                raise
            self.liveness.store_reachable(now)
            self.last_stats_replan = now
        if self.leading:
            out.sync = self._to_sync()
        return out

    # ------------------------------------------------------- re-placement
    def _dead(self):
        return tuple(h.name for h in self.topo.hosts if h.name not in self.alive)

    def _seed_chains(self):
        """First leader of a fresh store: the topology file's chains."""
        if self.store.chains() or self.store.plans():
            return
        for chain in self.topo.chains:
            self.store.put_chain(chain_to_json(chain))
        log.info("store had no chains: put the %d chains of %s",
                 len(self.topo.chains), self.topo.source)

    def _judged_alive(self, decision):
        """The hosts that serve by `decision` (controller.liveness): known,
        reached by a switch; its notes go to the log."""
        for note in decision.notes:
            log.warning("%s", note)
        self.held = dict(decision.held)
        return (set(decision.alive) & self.known) - self._cut()

    def _cut(self):
        """Known hosts no switch reaches, but those controller.switchgrace
        excuses (their switch only left, and lately).  Read from the live
        fabric, never from a copy: a switch's grace and its place in the
        fabric change together, with no yield to the hub in between."""
        cut = set(self.fabric.unreachable()) & self.known
        excused = self.grace.excused(cut, self.now)
        for name in sorted(set(excused) - set(self.excused)):
            log.warning("host %s cut off but not believed lost: %s", name, excused[name])
        self.excused = excused
        return cut - set(excused)

    def _refresh_alive(self):
        """Who serves now, by controller.liveness's rules: a host whose key
        vanished is not believed lost while the store or this controller
        was not healthy, or when too many vanish at once; a host no switch
        reaches is lost at once (a server that fails takes its link down
        long before its lease ends)."""
        self.registered = self.store.hosts()
        registered = set(self.registered)
        self._adopt_joined()
        self._note_joins()
        cut = self._cut()
        self.liveness.keys_now(registered & self.known, self.now)
        for name in self.known:     # why: its switch gone past its grace, else its port
            self.liveness.port(name, name not in cut, self.now, self.grace.why_cut(name, self.now))
        decision = self.liveness.decide(self.now)
        alive = self._judged_alive(decision)
        for name in sorted(alive - self.alive):
            log.info("host %s is alive (agent registered, reachable)", name)
        for name in sorted(self.alive - alive):
            if name in cut:
                log.warning("host %s lost: no switch reaches it (%s)", name,
                            self.grace.why_cut(name, self.now) or "its link is down")
            else:
                log.warning("host %s lost: %s", name, decision.lost.get(
                    name, f"its {HOSTS + name} key expired or was deleted"))
        lost = self.alive - alive
        self.alive = alive
        return lost

    def _note_joins(self):
        """Which unknown registered hosts wait to join (controller.joins);
        a refused one waits again only once its registration changed."""
        pending = joins.joining(self.topo, self.registered)
        for name, (body, _) in list(self.refused.items()):
            if self.registered.get(name) == body:
                pending.pop(name, None)
            else:
                del self.refused[name]
        for name in sorted(set(self.registered) - self.known - set(pending)):
            if name in self.refused:
                continue
            self._note_once(("no mac", name), "agent %s registered in %s without a "
                            "well-formed mac (%r): it cannot join, ignored", name, HOSTS,
                            (self.registered[name] or {}).get("mac"))
        for name in sorted(set(pending) - set(self.pending_joins)):
            log.info("host %s (%s) registered but %s has no such host: waiting to "
                     "join; probing the switches' free ports for it", name,
                     pending[name], self.topo.source)
        self.pending_joins = pending

    def _adopt_joined(self):
        """Hosts that joined earlier (/onvm/joined/, written when one joined,
        by this controller or another): in the model without probing, so a
        new leader keeps their plans.  A record that no longer fits the
        topology (its name, address or port taken since) is logged once
        and left alone.  Read at the first step and when the watch saw the
        prefix change."""
        if not self.joined_stale:
            return
        records = self.store.joined() or {}
        self.joined_stale = False
        for name, rec in sorted(records.items()):
            if name in self.known or not isinstance(rec, dict):
                continue
            body = {k: rec.get(k) for k in ("mac", "ip", "cores", "label")}
            try:
                host = joins.admit(self.topo, name, body, rec.get("switch"), rec.get("port"))
            except (joins.JoinRefused, TypeError, ValueError) as err:
                self._note_once(("joined", name, str(err)), "host %s joined earlier "
                                "(%s%s) but cannot be taken in now: %s", name, JOINED, name,
                                err)
                continue
            self._take_in(host)
            log.info("host %s joined earlier (%s%s): at %s port %d, node label %d",
                     name, JOINED, name, host.switch, host.port, host.label)

    def _take_in(self, host):
        self.topo = joins.with_host(self.topo, host)
        self.fabric.add_host(self.topo, host)
        self.known = self.known | {host.name}
        self.scope = Scope.of(self.topo)
        self.pending_joins.pop(host.name, None)
        self.dirty.add("hosts")

    def _note_once(self, key, *args):
        if key not in self.join_noted:
            self.join_noted.add(key)
            log.warning(*args)

    def host_answered(self, dpid, port, mac):
        """A probe answer for `mac` came from `port` of switch `dpid`, a
        port nobody has in the topology (controller.apps.probes): the host
        that joined there (controller.joins), or None (refused: logged,
        nothing changed)."""
        switch = self.switch_name(dpid)
        if switch is None or not joins.is_free_port(self.topo, switch, port):
            return None
        name = joins.pair(self.pending_joins, mac)
        if name is None:
            if len(self.pending_joins) > 1:
                self._note_once(("many", frozenset(self.pending_joins)),
                                "hosts %s wait to join at once: an answer at %s port %d "
                                "cannot tell which is there, so none joins until one is "
                                "left waiting", ", ".join(sorted(self.pending_joins)),
                                switch, port)
            return None
        body = self.registered.get(name)
        try:
            host = joins.admit(self.topo, name, body, switch, port)
        except joins.JoinRefused as err:
            log.warning("join refused, nothing changed: %s", err)
            self.refused[name] = (body, str(err))
            self.pending_joins.pop(name, None)
            return None
        self._take_in(host)
        try:
            self.store.put_joined(host.name, {
                "switch": host.switch, "port": host.port, "mac": host.mac, "ip": host.ip,
                "cores": host.cores, "label": host.label})
        except StoreError as err:
            log.warning("host %s joined, but %s%s was not written (%s): a new leader "
                        "finds it again by its probes", host.name, JOINED, host.name, err)
        log.info("host %s joined at %s port %d: mac %s, ip %s, %d cores, node label %d "
                 "(%s); chains may be placed on it from now", host.name, switch, port,
                 host.mac, host.ip, host.cores, host.label,
                 "the label it asked for" if body.get("label") is not None
                 else "the lowest free label")
        return host

    def _replace(self, reasons, out):
        out.replaced = list(reasons)
        lost = self._refresh_alive()
        bodies = self.store.chains()
        wanted = list(chains_from_store(bodies, self.scope).values())
        retired = list(chains_from_store(bodies, self.scope, retired=True).values())
        # Rules cover every chain asked for: one not placed (no host alive,
        # or no room, or retired) gets controller.flows' chain_drop at its
        # ingress, so its traffic is dropped, never forwarded around its NFs.
        edges = {e.name for e in self.topo.edges}
        self.asked = self.topo.with_chains(
            sorted((c for c in wanted + retired if c.ingress in edges),
                   key=lambda c: c.spi))
        self.wanted = wanted
        chains = self.autoscaler.effective(wanted) if self.alive else []
        if self.taking_over and self.leading and self._take_over(self.store.plans(), chains):
            reasons = ["leadership"] + [r for r in reasons if r not in ("hosts", "chains")]
        self.taking_over = False
        stats = self.store.stats()
        if self.current is not None and self.drains.active:
            ended = self.drains.due(self.now, stats)
            if ended:
                self.current = self.drains.end(self.current, ended, self.nat_slices)
        before = self.current
        # Every host or chain change re-places all wanted chains, so a chain
        # refused while few hosts were up is tried again as more come.
        start = time.perf_counter()
        self._make_room(chains)
        placement, kept, self.unplaced = place_what_fits(
            self.topo, chains, previous=self.current, exclude_hosts=self._dead(),
            unplaced=self.unplaced, pause=self.fabric.pause, drained=self.drained)
        reverted = [n for n, why in sorted(self.unplaced.items())
                    if self.autoscaler.revert(n, why)]
        if reverted:
            chains = self.autoscaler.effective(wanted)      # scaling never unplaces
            placement, kept, self.unplaced = place_what_fits(
                self.topo, chains, previous=self.current, exclude_hosts=self._dead(),
                unplaced=self.unplaced, pause=self.fabric.pause, drained=self.drained)
        self.autoscaler.settled(c.name for c in kept)
        self.solve_ms = (time.perf_counter() - start) * 1000
        self.placed = self.topo.with_chains(kept)
        if placement is not None:       # a move whose state A published lands now
            placement = self.mover.land(self.placed, placement)
            # what it takes away drains (moved, scaled in), unless its host is lost
            placement = self.drains.begin(before, placement, self.now, self.alive, stats,
                                          self.mover.handed, self.drained)
        elif self.drains.active and before is not None:
            self.drains.end(before, {k: "nothing is placed" for k in self.drains.active})
        self.current = placement
        self._log_instances(before, placement, lost, reasons)
        self.adopter.pick(before, placement, lost, self.now)
        try:
            self._assign_slices()
        except natslices.SlicesExhausted as err:
            log.error("plans not written: %s", err)
            return
        if self.leading:
            self._write_plans(out)

    def _take_over(self, stored, chains):
        """A new leader starts from the placement the stored plans run
        (controller.takeover), not from the one it computed standing by:
        the old leader decided things it never saw (drains, moves, its own
        liveness verdicts).  The re-placement that follows moves only what
        runs on a host that is down, or a chain that changed.  True when
        the stored plans ran a chain."""
        asked = self.topo.with_chains(chains)
        placement = takeover.adopt(asked, stored, self.current)
        self.current = placement
        self.drains.take_over(placement, self.now)
        self.adopter.pending = {k: v for k, v in takeover.adopting(stored).items()
                                if placement is not None and k in placement.instances}
        self.adopter.aliases = takeover.aliases(asked, stored, self.now + ALIAS_SECONDS)
        return placement is not None

    def _make_room(self, chains):
        """A drain never costs a chain its place: when `chains` fit only
        with the cores draining instances hold, those drains end now."""
        if self.current is None or not self.current.draining or not chains:
            return
        topo, dead = self.topo.with_chains(chains), self._dead()
        try:
            place(topo, previous=self.current, exclude_hosts=dead, say=False,
                  pause=self.fabric.pause, drained=self.drained)
            return
        except PlacementError:
            pass
        freed = self.current.with_draining({})
        try:
            place(topo, previous=freed, exclude_hosts=dead, say=False,
                  pause=self.fabric.pause, drained=self.drained)
        except PlacementError:
            return                  # no fit either way: the drains go on
        log.warning("the chains fit only with the cores of the draining instances: "
                    "ending their drains now (the flows still on them are cut)")
        self.current = self.drains.end(
            self.current, {k: "cut short: its cores are needed"
                           for k in self.current.draining}, self.nat_slices)

    def _assign_slices(self):
        """Each nat instance keeps its port slice; a moved one's passes to
        its successor; new ones take the lowest free (controller.natslices).
        With nothing placed they stay as they are (a new leader's, read
        back from the plans, wait for its first placement)."""
        if self.current is None:
            return
        before = self.nat_slices
        handed = {**self.mover.handed, **self.adopter.handed}
        try:
            self.nat_slices = nat_slices(self.placed, self.current, before, handed)
        except natslices.SlicesExhausted as err:
            drained = {k: "cut short: no free NAT port slice for a new instance"
                       for k, i in self.current.draining.items() if i.nf == natslices.NAT}
            if not drained:
                raise
            log.error("%s; ending the drain of %s now so that no two instances share "
                      "a port (their open flows are cut)", err,
                      ", ".join(f"nat#{i} on {h}" for h, i in sorted(drained)))
            self.current = self.drains.end(self.current, drained, before)
            self.nat_slices = nat_slices(self.placed, self.current, before, handed)
        for old, new in sorted(self.mover.handed.items()):
            if old not in before:
                continue
            if old in self.current.draining:
                log.info("nat#%d moved from %s to %s#%d takes port slice %d; the "
                         "draining nat#%d keeps slice %d until it goes", old[1], old[0],
                         new[0], new[1], self.nat_slices.get(new, -1), old[1],
                         self.nat_slices.get(old, -1))
            else:
                log.info("nat#%d moved from %s to %s#%d keeps port slice %d", old[1],
                         old[0], new[0], new[1], self.nat_slices.get(new, -1))
        fresh = {k: n for k, n in self.nat_slices.items() if before.get(k) != n
                 and k not in self.mover.handed.values()}
        if fresh:
            log.info("NAT port slices given: %s", _slices_text(fresh))

    def _log_instances(self, before, after, lost, reasons):
        old = before.instances if before else {}
        new = after.instances if after else {}
        why = ", ".join(f"{h} lost" for h in sorted(lost)) or \
            ("taking over as leader" if reasons[:1] == ["leadership"] else
             "change in " + "/".join(reasons))
        used = after.cores_used() if after else {}
        for key in sorted(set(new) - set(old)):
            inst = new[key]
            host = self.topo.host(inst.host)
            log.info("placed %s#%d on %s: %s; %s now uses %d of %d cores, serves "
                     "%.2f Mpps of it", inst.nf, inst.id, inst.host, why, inst.host,
                     used.get(inst.host, 0), host.cores, inst.load)
        for key in sorted(set(old) - set(new) - set(after.draining if after else ())):
            inst = old[key]
            log.info("removed %s#%d from %s: %s", inst.nf, inst.id, inst.host,
                     self._why_gone(inst, after, why, lost))

    def _why_gone(self, inst, after, why, lost):
        """Why an instance left the placement, as precisely as known."""
        if inst.host in lost:
            return why
        if inst.host not in self.alive:
            return f"{why}; {inst.host} is not serving"
        if inst.host in self.drained:
            return f"{why}; {inst.host} is drained"
        gone = sorted({c for c, _ in inst.users} - set(after.hops if after else ()))
        if gone:
            return f"{why}; chain {', '.join(gone)} is not placed any more"
        return f"{why}; its chains were placed again (changed, or their rate no longer fits)"

    def _write_plans(self, out):
        if self.stats_seen is None:
            self.stats_seen = self.store.stats()
        load = host_load(self.stats_seen, self.placed, self.current,
                         self.stats_warned) if self.current else {}
        stored = self.store.plans()
        generation = 1 + max([p.get("generation", 0) for p in stored.values()] or [0])
        if self.ddos_seed is None:
            self.ddos_seed = ddos_seed_from(stored)
            if self.ddos_seed is None:
                self.ddos_seed = new_ddos_seed()
        plans = self.adopter.mark(self.mover.mark(
            host_plans(self.placed, self.current, generation, load, self.nat_slices,
                       pause=self.fabric.pause, ddos_seed=self.ddos_seed)
            if self.current else {}),
            self.placed, self.now, self.alive)
        try:
            for host in sorted(self.alive):
                plan = plans.get(host) or self._idle_plan(host, generation)
                if same_plan(stored.get(host), plan):
                    continue
                gen = self.store.put_plan(host, plan, leader=self.leader)
                out.written[host] = gen
                log.info("wrote plan generation %d for %s: %d instances, %d hops",
                         gen, host, len(plan.get("instances", [])),
                         len(plan.get("hops", [])))
            for host in sorted(set(stored) - self.alive):
                self.store.delete_plan(host)
                out.deleted.append(host)
                log.info("deleted the plan of %s: host not alive", host)
        except NotLeader as err:
            log.warning("stopped writing plans: %s", err)

    def _idle_plan(self, name, generation):
        host = self.topo.host(name)
        return {"host": name, "generation": generation, "node_label": host.label,
                "mac": host.mac, "instances": [], "classifiers": [], "hops": []}

    # ---------------------------------------------------------- switches
    def _desired(self):
        """Every switch's rules for the current placement and live fabric,
        computed again only when one of their inputs changed (0.3 s on a
        k=8 fat tree; the shell steps four times a second)."""
        fab = self.fabric
        inputs = (self.asked, self.placed, self.current, frozenset(fab.ports_down),
                  frozenset(fab.gone), frozenset(fab.lldp_lost),
                  frozenset(self.pending_joins), self.topo)
        cached = self._desired_cache
        if cached is not None and all(a is b or a == b for a, b in zip(cached[0], inputs)):
            return cached[1]
        groups = ingress_groups(self.placed, self.current) if self.current else {}
        rules = fab.rules(self.asked, groups, lldp=self.lldp)
        if self.pending_joins:          # probe answers from free ports: joins
            extra = joins.join_punts(rules, PROBE_SRC_MAC)
            rules = {dpid: flows.SwitchRules(r.flows + extra[dpid], r.groups)
                     for dpid, r in rules.items()}
        self._desired_cache = (inputs, rules)
        return rules

    def _to_sync(self):
        """{dpid: rules} of connected switches whose rules changed since
        they were last handed out; they count as programmed from now on
        (`sync_failed` takes that back)."""
        self.desired = desired = self._desired()
        todo = {}
        for dpid in sorted(self.connected):
            if dpid in desired and self.programmed.get(dpid) != desired[dpid]:
                self.programmed[dpid] = todo[dpid] = desired[dpid]
        return todo

    def switch_name(self, dpid) -> Optional[str]:
        return self.names.get(dpid)

    def switch_connected(self, dpid) -> bool:
        """A switch reached MAIN state; False (warned) for one the topology
        lacks, which is then never programmed."""
        name = self.switch_name(dpid)
        if name is None:
            log.warning("switch dpid %#x connected but %s has no such switch: not "
                        "programmed", dpid or 0, self.topo.source)
            return False
        log.info("switch %s (dpid %#x) connected", name, dpid)
        self.connected.add(dpid)
        self.programmed.pop(dpid, None)     # resync on every connect
        self.grace.joined(name, self.now)
        self.fabric_changed(self.fabric.switch_joined(name))
        return True

    def switch_left(self, dpid):
        if dpid not in self.connected:
            return
        self.connected.discard(dpid)
        self.programmed.pop(dpid, None)
        name = self.switch_name(dpid)
        self.grace.left(name, self.now)
        log.warning("switch %s (dpid %#x) left: traffic through it stops until it "
                    "reconnects", name, dpid)
        self.fabric_changed(self.fabric.switch_left(name))

    def port_status(self, dpid, port_no, up, why):
        """A port status: `why` in words ("link down", "deleted", "up")."""
        name = self.switch_name(dpid)
        if name is not None:        # else warned about when it connected
            self.fabric_changed(self.fabric.port_status(name, port_no, up, why))

    def lldp_link(self, src, dst, present):
        """LLDP found (`present`) or lost a link; src, dst: (dpid, port)."""
        ports = [(self.switch_name(dpid) or f"dpid {dpid:#x}", port)
                 for dpid, port in (src, dst)]
        self.fabric_changed(self.fabric.lldp_link(*ports, present))

    def switch_diff(self, dpid, rules, actual, group_ids) -> SwitchDiff:
        """What to send a switch holding flows `actual` (flows.ActualFlow)
        and groups `group_ids` so that it holds exactly `rules`."""
        return SwitchDiff(flows.diff(rules.flows, actual),
                          flows.diff_groups(rules.groups, group_ids))

    def switch_synced(self, dpid, rules, diff: SwitchDiff):
        stale = [flows.cookie_kind(e.cookie) or f"foreign cookie {e.cookie:#x}"
                 for e in diff.flows.deletes]
        log.info("switch %s synced: %d rules and %d groups wanted; added %d rules, "
                 "deleted %d (%s), groups +%d ~%d -%d", self.switch_name(dpid),
                 len(rules.flows), len(rules.groups), len(diff.flows.adds),
                 len(diff.flows.deletes), ", ".join(sorted(set(stale))) or "none",
                 len(diff.groups.adds), len(diff.groups.modifies),
                 len(diff.groups.deletes))

    def sync_failed(self, dpid, err):
        """A sync did not finish (the switch went away mid-way): the next
        step hands the switch's rules out again."""
        self.programmed.pop(dpid, None)
        log.error("switch %s: sync failed, will retry: %s", self.switch_name(dpid), err)

    def fabric_changed(self, changes):
        """Log what a fabric event changed and what that does to the rules;
        hosts cut off (or back) are re-placed at the next step."""
        routing = [c for c in changes if c.routing]
        for change in changes:
            if not change.routing:
                log.warning("%s", change.text)
        if not routing:
            return
        # who is cut first: the rule compile below yields to the hub, where
        # the loop may step (and judges hosts by the live fabric, _cut)
        cut_before = set(self.fabric_cut)
        self.fabric_cut = self.fabric.unreachable()
        for name in self.fabric_cut:
            if name not in cut_before:
                log.warning("%s unreachable: no switch reaches it now%s",
                            self._place_name(name), "; re-placing what it ran, unless "
                            "its switch only left (below)" if name in self.known else "")
        for name in sorted(cut_before - set(self.fabric_cut)):
            log.info("%s reachable again", self._place_name(name))
        if (cut_before ^ set(self.fabric_cut)) & self.known:
            self.dirty.add("hosts")
        before, self.desired = self.desired, self._desired()
        impact = describe(before, self.desired)
        for change in routing:
            log.warning("%s: %s; %s", change.text, change.effect, impact)
        parts = self.fabric.parts()
        if len(parts) > 1:
            log.warning("the fabric is split in %d parts: %s", len(parts),
                        " | ".join(", ".join(sw) for sw, _ in parts))

    def _place_name(self, name):
        """'host h1' or 'edge internet'."""
        return f"{self.fabric.graph().nodes[name]['kind']} {name}"

    # ----------------------------------------------- ClusterView (REST API)
    def topology(self):
        return self.topo

    def hosts(self):
        registered = self.store.hosts()
        plans = self.store.plans()
        out = {}
        for host in self.topo.hosts:
            plan = plans.get(host.name)
            out[host.name] = {
                "topology": dataclasses.asdict(host),
                "alive": host.name in registered,
                "serving": host.name in self.alive,
                "info": registered.get(host.name),
                "plan_generation": plan.get("generation") if plan else None,
                "applied_generation": self.store.get_applied(host.name),
                "drained": host.name in self.drained,
            }
        for name in sorted(set(registered) - set(out)):
            out[name] = {"topology": None, "alive": True, "serving": False,
                         "info": registered[name], "plan_generation": None,
                         "applied_generation": self.store.get_applied(name)}
        return out

    def chains(self):
        return chains_from_store(self.store.chains(), self.scope)

    def retired_chains(self):
        return chains_from_store(self.store.chains(), self.scope, retired=True)

    def chain(self, name):
        return self.store.get_chain(name)

    def check_chains(self, chains):
        """The placement `chains` (model.Chain) would get now, on the hosts
        alive now; raises PlacementError; changes nothing."""
        topo = self.topo.with_chains(list(chains))
        placed = place(topo, previous=self.current, exclude_hosts=self._dead(), say=False,
                       drained=self.drained)
        try:
            nat_slices(topo, placed, self.nat_slices)
        except natslices.SlicesExhausted as err:
            raise PlacementError(str(err)) from None
        return placed

    def put_chain(self, chain):
        others = [c for n, c in self.chains().items() if n != chain.name]
        self.check_chains(others + [chain])
        self.store.put_chain(chain_to_json(chain))
        self.dirty.add("chains")

    def retire_chain(self, name):
        chains = self.chains()
        if name not in chains:
            return False
        self.check_chains(c for n, c in chains.items() if n != name)
        chain = chains[name]
        self.store.put_chain(chain_to_json(chain, retired=True))
        self.dirty.add("chains")
        log.warning("chain %s retired: placed nowhere from now on; its traffic "
                    "(ingress %s, match %s) is dropped and counted at its ingress "
                    "(chain_drop) until an operator releases it; SPI %d stays "
                    "reserved", name, chain.ingress, dict(chain.match), chain.spi)
        return True

    def delete_chain(self, name):
        was = self.store.get_chain(name)
        self.check_chains(c for n, c in self.chains().items() if n != name)
        gone = self.store.delete_chain(name)
        self.dirty.add("chains")
        if gone:
            log.warning("chain %s deleted%s: its traffic takes plain forwarding to "
                        "its destination, through none of its NFs", name,
                        " (it was retired)" if is_retired(was) else "")
        return gone

    def placement(self):
        return self.current.to_json(self.solve_ms) if self.current else None

    def autoscaling(self):
        return {"chains": {c.name: {"declared_mpps": c.mpps,
                                    "placed_mpps": self.autoscaler.rate(c),
                                    "policy": c.autoscale}
                           for c in self.wanted},
                "decisions": [{"time": t, "chain": c, "from_mpps": a, "to_mpps": b,
                               "why": why} for t, c, a, b, why in self.autoscaler.decisions]}

    def stats(self):
        return self.store.stats()

    # ----------------------------------------------------------- draining
    def drain_host(self, name):
        """Take every instance off host `name` (alive, it keeps forwarding
        what its draining instances still carry) and give it none until
        undrain_host.  Raises KeyError for an unknown host, PlacementError
        when the chains do not fit on the other hosts (nothing changes).
        Kept in this controller only: a new leader starts with none."""
        if name not in {h.name for h in self.topo.hosts}:
            raise KeyError(name)
        if name in self.drained:
            return False
        drained = self.drained | {name}
        if self.placed.chains:
            place(self.placed, previous=self.current, exclude_hosts=self._dead(),
                  say=False, drained=drained)
        self.drained = drained
        self.dirty.add("hosts")
        log.warning("host %s drained: its %d instances go to other hosts (their "
                    "flows drain on it), and it takes none until undrained", name,
                    sum(1 for i in (self.current.instances.values() if self.current else ())
                        if i.host == name))
        return True

    def undrain_host(self, name):
        """Host `name` takes instances again; KeyError for an unknown host."""
        if name not in {h.name for h in self.topo.hosts}:
            raise KeyError(name)
        if name not in self.drained:
            return False
        self.drained.discard(name)
        self.dirty.add("hosts")
        log.info("host %s undrained: it takes instances again", name)
        return True

    def request_move(self, host, instance, to):
        self._check_move_slices(host, instance, to)
        move = self.mover.request(self.placed, self.current, self.alive,
                                   host, instance, to)
        self.dirty.add("moves")
        return move

    def _check_move_slices(self, host, instance, to):
        """A nat that will drain keeps its slice while its successor needs
        one: refuse the move (409) when no slice is free for it."""
        inst = self.current.instances.get((host, instance)) if self.current else None
        if inst is None or inst.nf != natslices.NAT or self.drains.seconds <= 0:
            return
        try:
            moved = move_instance(self.placed, self.current, host, instance, to, say=False)
        except PlacementError:
            return                  # Moves.request names what is wrong
        trial = moved.with_draining({**moved.draining, inst.key: inst})
        try:
            nat_slices(self.placed, trial, self.nat_slices)
        except natslices.SlicesExhausted as err:
            raise MoveError(409, f"move: nat#{instance} keeps its port slice while it "
                                 f"drains on {host}, and its successor on {to} needs "
                                 f"one of its own: {err}") from None

    def moves(self):
        return dict(self.mover.status(), draining=self.drains.status(self.now))
