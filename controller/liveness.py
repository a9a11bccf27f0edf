"""Which hosts the controller believes lost, and why: the policy that tells
"hosts died" from "I could not see them".  Pure: no Ryu, no store, no
clock; every input and `decide` take the time `now` (seconds, monotonic).

    live = Liveness(grace_s=5.0)
    live.leadership_gained(now)                  # a grace period starts
    live.key_put("h1", now)                      # /onvm/hosts/h1 written
    live.key_gone("h1", now)                     # its lease expired or it was deleted
    live.keys_now({"h1", "h2"}, now)             # or: what store.hosts() lists now
    live.port("h1", up=False, now=now)           # the host's switch port
    live.port("h1", False, now, why="...")       #   (why: another reason no switch reaches it)
    live.store_unreachable(now); live.store_reachable(now)   # our own store outage
    live.probe("h1", reachable=True, now=now)    # probes of its fast path
    live.probe("h1", False, now, why="...")      #   (controller.probing), why on a change
    d = live.decide(now)
    d.alive  -> frozenset: hosts to serve (keys present, or held)
    d.lost   -> {host: reason}: believed lost now; re-place what they ran
    d.held   -> {host: reason}: key gone, but not believed lost (yet)
    d.notes  -> [str]: what changed since the last decide, for the log

The rules (DESIGN.md, "Faults"):
  - The data plane's word is final: a host whose switch port is down, or
    whose fast path does not answer probes (controller.probing: the
    controller's probes through the host's switch port), is lost at once,
    however many go at once.  A probe verdict is fresh for
    `probe_max_age_s`; its source repeats it while it holds.
  - A key that vanishes is believed only while the store and this
    controller are healthy: during our own store outage and for `grace_s`
    after it ends, and for `grace_s` after we gained leadership, a host
    whose key vanished is held, not lost (agents register again as soon as
    the store answers; the watch may deliver a burst of stale deletes).
  - A key that vanished is believed only once it has been gone `settle_s`,
    so that keys vanishing together are judged together (next rule).
  - A host whose key vanished but whose fast path still answers probes
    (a fresh verdict, at most `probe_max_age_s` old) is held: it forwards.
  - Large disruption (as Kubernetes' node lifecycle controller stops
    evicting when a zone is mostly unhealthy): when at least `min_hosts`
    hosts and more than `disruption_share` of the known hosts (every host
    whose key was ever seen) vanished within `window_s` of each other
    without data-plane evidence, none of them is evicted; the mode ends
    when the hosts vanished without evidence fall back to the threshold or
    below (they came back, or the data plane gave evidence).
  - Otherwise a host whose key is gone is lost.  A lost host stays lost
    until its key is put again and its port is not down.

Not here: reading the store or the switches (the Ryu app feeds the
inputs), re-placing chains (`controller.placement`), the rules.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, FrozenSet, List, Optional, Tuple


@dataclasses.dataclass
class _Host:
    seen: bool = False                  # its key was there once: a known host
    key: bool = False
    gone_at: Optional[float] = None     # when its key vanished (None: present)
    port_up: Optional[bool] = None      # None: no word from the switch yet
    port_why: str = ""                  # why it is down, if not its port
    probe: Optional[Tuple[bool, float]] = None   # (reachable, when)
    probe_why: str = ""                 # what the prober said at the last change
    state: str = "unknown"              # "alive", "held", "lost", "unknown"
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Decision:
    alive: FrozenSet[str]
    lost: Dict[str, str]
    held: Dict[str, str]
    notes: List[str]


class Liveness:
    """See the module docstring."""

    def __init__(self, grace_s=5.0, settle_s=2.0, disruption_share=1 / 3,
                 window_s=5.0, min_hosts=3, probe_max_age_s=5.0):
        self.grace_s = grace_s
        self.settle_s = settle_s
        self.disruption_share = disruption_share
        self.window_s = window_s
        self.min_hosts = min_hosts
        self.probe_max_age_s = probe_max_age_s
        self.hosts: Dict[str, _Host] = {}
        self.outage_since: Optional[float] = None
        self.grace_until = float("-inf")
        self.grace_why = ""
        self.disrupted = False
        self.disruption = ""                # why, while disrupted
        self._notes: List[str] = []

    # ------------------------------------------------------------ inputs
    def _host(self, name):
        return self.hosts.setdefault(name, _Host())

    def key_put(self, host, now):
        h = self._host(host)
        h.seen, h.key, h.gone_at = True, True, None

    def key_gone(self, host, now):
        h = self._host(host)
        if h.key:
            h.key, h.gone_at = False, now

    def keys_now(self, present, now):
        """The host keys the store lists now (`store.hosts()`), for a
        caller that polls rather than watches: key_put / key_gone by diff."""
        present = set(present)
        for name in present:
            self.key_put(name, now)
        for name, h in self.hosts.items():
            if h.key and name not in present:
                self.key_gone(name, now)

    def port(self, host, up, now, why=None):
        """No switch reaches `host` (not `up`): its switch port is down,
        unless `why` says otherwise."""
        h = self._host(host)
        h.port_up, h.port_why = bool(up), why or ""

    def probe(self, host, reachable, now, why=None):
        """The probes' verdict on `host` now; `why` (the prober's words)
        when it changed, else the last one stands."""
        h = self._host(host)
        h.probe = (bool(reachable), now)
        if why is not None:
            h.probe_why = why

    def store_unreachable(self, now):
        if self.outage_since is None:
            self.outage_since = now
            self._notes.append("the store is out of reach: hosts whose keys vanish "
                               "are held, not lost, until it answers and for "
                               f"{self.grace_s:g} s after")

    def store_reachable(self, now):
        if self.outage_since is not None:
            self._grace(now, f"the store answers again after {now - self.outage_since:.1f} s")
            self.outage_since = None

    def leadership_gained(self, now):
        self._grace(now, "this controller gained leadership")

    def _grace(self, now, why):
        self.grace_until = max(self.grace_until, now + self.grace_s)
        self.grace_why = why
        self._notes.append(f"{why}: vanished host keys are not believed for "
                           f"{self.grace_s:g} s")

    # ----------------------------------------------------------- the verdict
    def decide(self, now) -> Decision:
        """Every host's state now; notes say what changed since the last call."""
        self._update_disruption(now)
        alive, lost, held = set(), {}, {}
        for name in sorted(self.hosts):
            h = self.hosts[name]
            state, reason = self._judge(h, now)
            if state == "alive":
                alive.add(name)
            elif state == "held":
                alive.add(name)
                held[name] = reason
            elif state == "lost":
                lost[name] = reason
            self._note_change(name, h, state, reason)
        notes, self._notes = self._notes, []
        return Decision(frozenset(alive), lost, held, notes)

    def _judge(self, h, now):
        if not h.seen:
            return "unknown", ""            # never registered: nothing to lose
        if h.port_up is False:
            return "lost", h.port_why or "its switch port is down"
        fresh = h.probe is not None and now - h.probe[1] <= self.probe_max_age_s
        if fresh and not h.probe[0]:
            return "lost", "probes fail" + (f": {h.probe_why}" if h.probe_why else "")
        if h.key:
            return "alive", ""
        if h.state == "lost":
            return "lost", h.reason
        if fresh and h.probe[0]:
            return "held", "its key is gone but its fast path answers probes"
        if self.outage_since is not None:
            return "held", "its key vanished while the store is out of reach"
        if now < self.grace_until:
            return "held", (f"its key vanished within {self.grace_s:g} s of: "
                            f"{self.grace_why}")
        if now - h.gone_at < self.settle_s:
            return "held", (f"its key vanished less than {self.settle_s:g} s ago: "
                            "waiting to tell one host's loss from many")
        if self.disrupted:
            return "held", self.disruption
        return "lost", ("its key expired or was deleted while the store and "
                        "this controller were healthy")

    def _note_change(self, name, h, state, reason):
        if state == h.state and reason == h.reason:
            return
        before = h.state
        h.state, h.reason = state, reason
        if state == "lost":
            self._notes.append(f"host {name} lost: {reason}")
        elif state == "held":
            self._notes.append(f"host {name} not believed lost: {reason}")
        elif state == "alive" and before in ("held", "lost"):
            self._notes.append(f"host {name} alive again (key present"
                               f"{', port up' if h.port_up else ''})")

    def _vanished(self, now):
        """Hosts whose key is gone with no data-plane word against them,
        not already lost: the ones a large disruption protects."""
        out = []
        for h in self.hosts.values():
            if h.key or not h.seen or h.state == "lost" or h.port_up is False:
                continue
            if h.probe is not None and not h.probe[0] \
                    and now - h.probe[1] <= self.probe_max_age_s:
                continue
            out.append(h.gone_at)
        return sorted(out)

    def _update_disruption(self, now):
        known = sum(1 for h in self.hosts.values() if h.seen)
        gone = self._vanished(now)
        over = lambda n: n >= self.min_hosts and n > self.disruption_share * known
        # the most keys that vanished within window_s of each other
        burst, first = 0, 0
        for last, at in enumerate(gone):
            while at - gone[first] > self.window_s:
                first += 1
            burst = max(burst, last - first + 1)
        if not self.disrupted and over(burst):
            self.disrupted = True
            self.disruption = (f"large disruption: {burst} of {known} known hosts lost "
                               "their keys together without data-plane evidence; "
                               "nothing is evicted")
            self._notes.append(
                f"large disruption: {burst} of {known} known hosts lost their keys "
                f"within {self.window_s:g} s with no data-plane evidence (switch port "
                f"down, failed probes); more likely a fault of the store or of this "
                f"controller than of the hosts: evicting none of them until they "
                f"come back or the data plane says they are down")
        elif self.disrupted and not over(len(gone)):
            self.disrupted = False
            self._notes.append(f"large disruption over: {len(gone)} of {known} known "
                               f"hosts without keys and without data-plane evidence")
