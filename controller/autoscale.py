"""Autoscaling: a chain with an `autoscale` policy runs as many instances
as its measured traffic needs, not as many as its declared rate asks.

A chain's declared `mpps` is where it starts.  Every time the agents'
stats are decided on (controller.core, a few seconds apart), `Autoscaler.
decide` measures each such chain at each of its hops: the Mpps the hop's
instances report (instances[ID]["mpps"] in /onvm/stats/HOST; of an
instance shared with chains that are not autoscaled, what it measures
beyond their placed rates), in the
declared scale (`pps_per_mpps`: 10^6 on real hosts, the emulation's
scale there), over what the hop's instances can carry (their count times
the catalog's `mpps` of the NF).  The busiest hop decides:

  * above `high` (default 0.8) for `hot_s` seconds: scale out;
  * below `low` (default 0.3) for `cold_s` seconds: scale in;
  * never twice within `cooldown_s`, and only when the instance count of
    some hop changes; each hop keeps `min`..`max` instances.

Scaling sets the chain's rate the placement works with (its *effective*
rate) to the measured rate over the middle of the band, (high + low) / 2,
so a chain lands near 55 % utilisation; the placement adds instances
where its cost says (existing ones stay), or takes some away, and those
drain (controller.moves.Drains: their flows finish there, lb and nat
state handed over).  Every decision is logged with the measurement that
made it.  A chain whose declared rate changes (PUT) starts again from it.  A rate
the placement cannot place (no room for the instances) is taken back
(`revert`): scaling never costs a chain its place.

Policy, in the topology file or a REST chain body:
    autoscale: {min: 1, max: 4, high: 0.8, low: 0.3,
                hot_s: 3, cold_s: 20, cooldown_s: 10}      # all optional
A chain without `autoscale` is never scaled by measurement.

Plain deciding code over the stats and the placement: no Ryu, no store.
Not here: where instances go (controller.placement), draining
(controller.moves), the stats' shape (contracts.statsum).
"""
from __future__ import annotations

import dataclasses
import logging
import math

log = logging.getLogger("onvm.autoscale")

DEFAULTS = {"min": 1, "max": 8, "high": 0.8, "low": 0.3,
            "hot_s": 3.0, "cold_s": 20.0, "cooldown_s": 10.0}
INTEGERS = ("min", "max")
SHARES = ("high", "low")
SECONDS = ("hot_s", "cold_s", "cooldown_s")
MAX_INSTANCES = 64


def check_policy(value, report):
    """Report (path, message) what is wrong with an `autoscale` value;
    returns whether it is right."""
    ok = True

    def bad(path, message):
        nonlocal ok
        ok = False
        report(path, message)
    if not isinstance(value, dict):
        bad((), "must be a mapping of min, max, high, low, hot_s, cold_s, cooldown_s "
                 f"(all optional), not {value!r}")
        return False
    for key in sorted(set(value) - set(DEFAULTS)):
        bad((key,), f"unknown key; known: {', '.join(DEFAULTS)}")
    for key in INTEGERS:
        if key in value and not (isinstance(value[key], int) and not isinstance(value[key], bool)
                                 and 1 <= value[key] <= MAX_INSTANCES):
            bad((key,), f"must be an integer 1..{MAX_INSTANCES}, not {value[key]!r}")
    for key in SHARES:
        if key in value and not (_number(value[key]) and 0 < value[key] < 1):
            bad((key,), f"must be a share of capacity between 0 and 1, not {value[key]!r}")
    for key in SECONDS:
        if key in value and not (_number(value[key]) and 0 <= value[key] <= 3600):
            bad((key,), f"must be 0..3600 seconds, not {value[key]!r}")
    if ok:
        p = {**DEFAULTS, **value}
        if p["min"] > p["max"]:
            bad(("min",), f"must not exceed max ({p['max']}), is {p['min']}")
        if p["low"] >= p["high"]:
            bad(("low",), f"must be below high ({p['high']}), is {p['low']}")
    return ok


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def policy(chain):
    """The chain's policy with its defaults, or None without `autoscale`."""
    if chain.autoscale is None:
        return None
    return {**DEFAULTS, **chain.autoscale}


@dataclasses.dataclass
class _State:
    declared: float             # the declared rate this state started from
    rate: float                 # the effective rate
    previous: float = None      # the rate before the last change (revert)
    hot_since: float = None
    cold_since: float = None
    changed: float = -math.inf


class Autoscaler:
    """Effective rates of the autoscaled chains; see the module docstring."""

    def __init__(self, pps_per_mpps=1e6):
        self.pps_per_mpps = pps_per_mpps
        self.state = {}         # chain name -> _State
        self.decisions = []     # (time, chain, old rate, new rate, why), the last 100

    def rate(self, chain):
        """The rate the placement uses for `chain` (its declared one unless
        it is scaled)."""
        st = self.state.get(chain.name)
        if policy(chain) is None or st is None or st.declared != chain.mpps:
            return chain.mpps
        return st.rate

    def effective(self, chains):
        """`chains` with their effective rates."""
        return [dataclasses.replace(c, mpps=self.rate(c)) if self.rate(c) != c.mpps else c
                for c in chains]

    def decide(self, now, chains, catalog, placement, stats):
        """Look at the measurements (`stats`: {host: summary}) of the
        autoscaled `chains` (as declared) as placed in `placement`
        (`catalog`: the topology's NF types); returns the names of the
        chains whose effective rate changed (re-place them)."""
        changed = []
        names = {c.name for c in chains}
        for name in [n for n in self.state if n not in names]:
            del self.state[name]
        if placement is None or not stats:
            return changed
        scaled = {c.name for c in chains if policy(c) is not None}
        for chain in chains:
            pol = policy(chain)
            if pol is None or chain.name not in placement.hops:
                self.state.pop(chain.name, None)
                continue
            st = self.state.get(chain.name)
            if st is None or st.declared != chain.mpps:
                st = self.state[chain.name] = _State(chain.mpps, chain.mpps)
            hops = self._hops(catalog, placement, chain, stats, scaled)
            if hops is None:
                continue            # not every instance reported yet
            if self._step(now, catalog, chain, pol, st, hops):
                changed.append(chain.name)
        return changed

    def _hops(self, catalog, placement, chain, stats, scaled):
        """[(nf, instances, measured declared-Mpps, capacity)] per hop, or
        None when an instance's measurement is missing.  An instance shared
        with chains that are not autoscaled carries their placed rates (they
        are sent as declared); what it measures beyond them is the
        autoscaled chains', split by their placed shares."""
        out = []
        for j, hop in enumerate(placement.hops[chain.name]):
            nf = chain.nfs[j]
            load = 0.0
            for (host, iid), _share in hop:
                inst = placement.instances.get((host, iid))
                got = ((stats.get(host) or {}).get("instances") or {}).get(str(iid))
                mpps = (got or {}).get("mpps")
                if inst is None or not _number(mpps):
                    return None
                fixed = sum(q for (c, _), q in inst.users.items() if c not in scaled)
                ours = sum(q for (c, _), q in inst.users.items() if c in scaled)
                part = inst.users.get((chain.name, j), 0.0) / ours if ours > 0 else 1.0
                measured = max(0.0, mpps) * 1e6 / self.pps_per_mpps
                load += max(0.0, measured - fixed) * part
            out.append((nf, len(hop), load, len(hop) * catalog[nf].mpps))
        return out

    def _step(self, now, catalog, chain, pol, st, hops):
        util, busiest = max((load / cap if cap > 0 else 0.0, j)
                            for j, (_, _, load, cap) in enumerate(hops))
        measured = max(load for _, _, load, _ in hops)
        if util > pol["high"]:
            st.cold_since = None
            st.hot_since = now if st.hot_since is None else st.hot_since
            waited, want = now - st.hot_since, pol["hot_s"]
        elif util < pol["low"]:
            st.hot_since = None
            st.cold_since = now if st.cold_since is None else st.cold_since
            waited, want = now - st.cold_since, pol["cold_s"]
        else:
            st.hot_since = st.cold_since = None
            return False
        if waited < want or now - st.changed < pol["cooldown_s"]:
            return False
        rate = self._clamp(catalog, chain, pol, measured / ((pol["high"] + pol["low"]) / 2))
        counts = [math.ceil(rate / catalog[nf].mpps - 1e-9) for nf, _, _, _ in hops]
        if counts == [n for _, n, _, _ in hops]:
            return False            # no hop would change: nothing to do
        nf, n, load, cap = hops[busiest]
        why = (f"measured {measured:.3g} Mpps; hop {busiest + 1} ({nf}) carries "
               f"{load:.3g} of its {n} instance(s)' {cap:.3g} Mpps ({util:.0%}, "
               f"{'above' if util > pol['high'] else 'below'} "
               f"{pol['high'] if util > pol['high'] else pol['low']:.0%} for {waited:.1f} s)")
        log.info("scaling chain %s %s: %s; rate %.3g -> %.3g Mpps, instances per hop %s -> %s",
                 chain.name, "out" if util > pol["high"] else "in", why, st.rate, rate,
                 [n for _, n, _, _ in hops], counts)
        self.decisions = (self.decisions + [(now, chain.name, st.rate, rate, why)])[-100:]
        st.previous, st.rate, st.changed = st.rate, rate, now
        st.hot_since = st.cold_since = None
        return True

    def settled(self, placed):
        """The chains `placed` (names) run at their rates: no revert for them."""
        for name in placed:
            if name in self.state:
                self.state[name].previous = None

    def revert(self, name, why):
        """The placement could not place chain `name` at the rate its last
        scaling set: back to the rate before (logged); False when the
        chain was not just scaled (its failure is not ours to undo)."""
        st = self.state.get(name)
        if st is None or st.previous is None:
            return False
        log.warning("scaling chain %s to %.3g Mpps refused: it does not fit (%s); "
                    "staying at %.3g Mpps", name, st.rate, why, st.previous)
        st.rate, st.previous = st.previous, None
        return True

    @staticmethod
    def _clamp(catalog, chain, pol, rate):
        """`rate`, within what keeps every hop at min..max instances."""
        caps = [catalog[nf].mpps for nf in chain.nfs]
        high = pol["max"] * min(caps)
        low = (pol["min"] - 1) * max(caps) + 1e-6 if pol["min"] > 1 else 1e-6
        return min(high, max(low, rate))
