"""Which hosts a switch's departure does not make lost, yet.

A switch "leaves" when its OpenFlow connection to this controller drops.
That is no word from the data plane: the switch may still forward, or
come back in a second (ovs-vswitchd restarted: the chaos suite's
`ovs_restarted` evicted every host, re-placing every stateful NF, for a
fabric that was back 1 s later).  So a host cut off only because its
switch left is not believed lost for `grace_s` (as Kubernetes' node
lifecycle controller waits a grace period for a node that stops
reporting).  While every switch is gone the fault is likelier this
controller's own (its network, its process starved): nobody is believed
lost, however long it lasts (Kubernetes' "full disruption" stops
evicting), and the switches still gone when the first one comes back get
a fresh grace.  A port a switch reports down, and probes that fail, stay
final (controller.liveness); routing around a switch that left does not
wait (controller.livegraph).

A switch that comes back ends its grace (`joined`), and in the same
breath the live fabric reaches its hosts again: the core reads who is cut
from the live fabric at each judgement (controller.core._cut), never from
a list kept since the last fabric event.  It once did, and that list was
brought up to date only after the rule compile of the switch's return,
which yields to the eventlet hub: a step of the loop that ran inside it
found the switch's hosts cut with their grace over, and evicted them for
a switch that was back (the chaos suite's `ovs_restarted`, the two hosts
of one leaf, about one restart in five).  Its probes are no evidence either
until its rules are back (controller.probing: sessions start again at
each connection).

    grace = SwitchGrace(["leaf1", "leaf2"], switch_of, grace_s=3.0)
    grace.left("leaf1", now); grace.joined("leaf1", now)
    grace.excused(cut, now)  -> {host: why}: cut, not lost (yet)
    grace.why_cut(host, now) -> why a cut host no longer is (None: not its switch)

Pure: no Ryu, no store, no clock.  Not here: the fabric's graph
(controller.livegraph), liveness (controller.liveness).
"""
from typing import Callable, Dict, Iterable, Optional

SWITCH_GRACE_S = 3.0


class SwitchGrace:
    def __init__(self, switches: Iterable[str], switch_of: Callable[[str], Optional[str]],
                 grace_s: float = SWITCH_GRACE_S):
        self.switches = set(switches)
        self.switch_of = switch_of          # a place -> its switch (None: not judged)
        self.grace_s = grace_s
        self.gone_at: Dict[str, float] = {}     # switch -> when it left (still gone)

    def all_gone(self) -> bool:
        return bool(self.switches) and self.switches <= set(self.gone_at)

    def left(self, switch, now):
        self.gone_at.setdefault(switch, now)

    def joined(self, switch, now):
        was_all_gone = self.all_gone()
        self.gone_at.pop(switch, None)
        if was_all_gone:
            # this controller's reach is back: the others get their grace now
            for name in self.gone_at:
                self.gone_at[name] = now

    def excused(self, cut: Iterable[str], now) -> Dict[str, str]:
        """The places of `cut` (no switch reaches them) whose own switch
        left less than grace_s ago, or while every switch is gone, with
        why."""
        everything = self.all_gone()
        out = {}
        for place in cut:
            switch = self.switch_of(place)
            since = self.gone_at.get(switch) if switch is not None else None
            if since is None:
                continue
            if everything:
                out[place] = (f"every switch's connection to this controller dropped "
                              f"(its own fault, likelier): not believed lost until "
                              f"they are back")
            elif now - since < self.grace_s:
                out[place] = (f"its switch {switch} left {now - since:.1f} s ago "
                              f"(a dropped OpenFlow connection, no word from the data "
                              f"plane): not believed lost for {self.grace_s:g} s")
        return out

    def why_cut(self, place, now) -> Optional[str]:
        """Why `place`, cut off and not excused, is: its switch left and
        its grace is over; None when its switch is not gone (its own
        cable is down)."""
        switch = self.switch_of(place)
        since = self.gone_at.get(switch) if switch is not None else None
        if since is None:
            return None
        return (f"its switch {switch} left {now - since:.1f} s ago and is not back "
                f"(its {self.grace_s:g} s grace is over)")
